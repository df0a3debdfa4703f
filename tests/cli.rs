//! The `autofunnel` binary as a user runs it: `init`, `check`, `migrate` and `run`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::root;

fn autofunnel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autofunnel"));
    c.env_remove("AUTOFUNNEL_DATABASE_URL")
        .env_remove("AUTOFUNNEL_LISTEN");
    c
}

#[test]
fn init_scaffolds_a_project_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = autofunnel()
        .args(["init", "--example", "welcome"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = autofunnel()
        .arg("-C")
        .arg(dir.path())
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.trim(),
        "ok: 1 funnel and 1 template checked, 0 warnings"
    );
    // A second init refuses to overwrite.
    let again = autofunnel()
        .args(["init", "--example", "welcome"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwriting"));
}

/// `init` without `--example` writes the course funnel the product is named for: lead magnet
/// → tripwire → main product → upsell, its emails, landing page and consent text; it passes
/// `check` (the one warning: its CRM webhook's secret is not set here).
#[test]
fn init_writes_the_course_funnel_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = autofunnel().arg("init").arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "funnels/relationships-course.yaml",
        "legal/free-book-v1.txt",
        "templates/relationships-course/confirm.html",
        "templates/relationships-course/webinar-starting.subject",
        "templates/landing/free-book.html",
    ] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    let out = autofunnel()
        .arg("-C")
        .arg(dir.path())
        .arg("check")
        .env("CRM_WEBHOOK_SECRET", "whsec_Y3Jt")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.trim().ends_with("0 warnings"), "{stdout}");
    let funnel =
        std::fs::read_to_string(dir.path().join("funnels/relationships-course.yaml")).unwrap();
    for kind in ["lead_magnet", "tripwire", "main_product", "upsell"] {
        assert!(funnel.contains(&format!("kind: {kind}")), "{kind}");
    }
}

#[test]
fn check_exits_1_with_compiler_style_lines() {
    let out = autofunnel()
        .current_dir(root())
        .args(["check", "tests/corpus/funnels/unknown-names.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tests/corpus/funnels/unknown-names.yaml:15:15: unknown template \"webinar-ofer\" (did you mean \"webinar-offer\"?)"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().ends_with("in 1 funnel"),
        "{stdout}"
    );
}

#[test]
fn check_of_the_examples_exits_0() {
    let out = autofunnel()
        .current_dir(root())
        .arg("check")
        .env("SALES_ALERT_SECRET", "whsec_c2FsZXM=")
        .env("CRM_WEBHOOK_SECRET", "whsec_Y3Jt")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: 4 funnels and "), "{stdout}");
    // Without a webhook's secret its calls would go unsigned: a warning, not an error.
    let out = autofunnel()
        .current_dir(root())
        .arg("check")
        .env_remove("SALES_ALERT_SECRET")
        .env("CRM_WEBHOOK_SECRET", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "warning: webhook \"crm-customer\": secret_env CRM_WEBHOOK_SECRET is not set here"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("2 warnings"), "{stdout}");
}

#[test]
fn check_of_a_missing_path_says_so() {
    let out = autofunnel()
        .args(["check", "/nonexistent/funnel.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/funnel.yaml: no such file or folder")
    );
}

/// `autofunnel -C DIR migrate`, which must succeed: what it printed.
fn migrate_in(dir: &std::path::Path) -> String {
    let out = autofunnel()
        .arg("-C")
        .arg(dir)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn migrate_creates_the_sqlite_database_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let first = migrate_in(dir.path());
    assert!(
        first
            .contains("applied m20261123_000001_init\napplied m20261124_000002_stage_entry\napplied m20261124_000003_pending_events\napplied m20261124_000004_lead_lease\napplied m20261124_000005_unstarted_signups")
    );
    assert!(dir.path().join("autofunnel.db").exists());
    assert!(migrate_in(dir.path()).contains("up to date"));
}

/// The migrations that bring report counters count them from the rows, by the zone and the
/// fields the settings name: once — no second recount for `report_fields` right after. A
/// change of the fields later counts them again, and says so.
#[test]
fn an_upgrade_counts_the_counters_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("autofunnel.toml");
    let migrate = || migrate_in(dir.path());
    let again = "counted the report counters again";
    std::fs::write(&settings, "report_fields = [\"region\"]\n").unwrap();
    let first = migrate();
    assert!(
        first.contains("applied m20261207_000021_hour_report_counts"),
        "{first}"
    );
    assert!(!first.contains(again), "{first}");
    std::fs::write(&settings, "report_fields = [\"plan\"]\n").unwrap();
    let changed = migrate();
    assert!(changed.contains(again), "{changed}");
    assert!(!migrate().contains(again));
}

#[test]
fn run_refuses_funnels_that_fail_check_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("funnels")).unwrap();
    std::fs::write(dir.path().join("funnels/broken.yaml"), "name: [\n").unwrap();
    let out = autofunnel()
        .arg("-C")
        .arg(dir.path())
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("funnels/broken.yaml:"), "{stderr}");
    assert!(!dir.path().join("autofunnel.db").exists());
}

/// Kills the child if the test fails half-way, so no server outlives its test.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `autofunnel run` on a fresh `init` project, port 0; its log lines arrive on the channel.
fn start_run() -> (tempfile::TempDir, Reap, mpsc::Receiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    autofunnel()
        .args(["init", "--example", "welcome"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (child, rx) = spawn_run(dir.path());
    (dir, child, rx)
}

/// `autofunnel run` on the project in `dir`, port 0; its log lines arrive on the channel.
fn spawn_run(dir: &std::path::Path) -> (Reap, mpsc::Receiver<String>) {
    spawn_run_on(dir, None, &[])
}

/// [`spawn_run`] on the database at `url` (else the project's), with `args` after `run`.
fn spawn_run_on(
    dir: &std::path::Path,
    url: Option<&str>,
    args: &[&str],
) -> (Reap, mpsc::Receiver<String>) {
    let mut command = autofunnel();
    command
        .arg("-C")
        .arg(dir)
        .arg("run")
        .args(args)
        .env("AUTOFUNNEL_LISTEN", "127.0.0.1:0")
        .env("AUTOFUNNEL_LOG", "info")
        .stderr(Stdio::piped());
    if let Some(url) = url {
        command.env("AUTOFUNNEL_DATABASE_URL", url);
    }
    let mut child = Reap(command.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The address the server logged it listens on.
fn listening(rx: &mpsc::Receiver<String>) -> String {
    let line = wait_for_line(rx, "addr=");
    let rest = line.split("addr=").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

/// `visitors` visitors post the `book` form at `addr`, `each` signups each with addresses
/// `{tag}c{visitor}i{n}@example.com`, until one is refused or the server is gone; each
/// address the server answered arrives on the channel, which closes when all have stopped.
fn sign_up(
    addr: &str,
    tag: &str,
    visitors: usize,
    each: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let client = crate::util::http();
    let (tx, acks) = tokio::sync::mpsc::unbounded_channel::<String>();
    for c in 0..visitors {
        let (client, addr, tx, tag) = (
            client.clone(),
            addr.to_string(),
            tx.clone(),
            tag.to_string(),
        );
        tokio::spawn(async move {
            for i in 0..each {
                let email = format!("{tag}c{c}i{i}@example.com");
                let r = client
                    .post(format!("http://{addr}/f/book"))
                    .json(&serde_json::json!({ "email": email }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        if tx.send(email).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
    acks
}

/// The project of the signup tests: a form `book` whose funnel sends at once.
const BOOK: [(&str, &str); 4] = [
    ("autofunnel.toml", "signups_per_ip_per_minute = 1000000\n"),
    (
        "funnels/book.yaml",
        "name: Book\nfrom: \"Shop <shop@example.com>\"\n\
         entry:\n  form:\n    id: book\n    thank_you: https://example.com/thanks\n\
         stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n",
    ),
    ("templates/book/hello.subject", "Welcome"),
    ("templates/book/hello.html", "<p>Hello</p>"),
];

fn write_files(root: &std::path::Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A command refused with exit 2, its message naming `why`.
fn refused(out: &std::process::Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

/// What `GET /healthz` of the server at `addr` answers.
fn healthz(rt: &tokio::runtime::Runtime, addr: &str) -> serde_json::Value {
    rt.block_on(async {
        crate::util::http()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// The one number `sql` asks the database for.
async fn count_in(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let st = Statement::from_string(db.get_database_backend(), sql.to_string());
    let row = db.query_one_raw(st).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// The addresses of the leads stored.
async fn emails_in<T: FromIterator<String>>(db: &sea_orm::DatabaseConnection) -> T {
    use sea_orm::{ConnectionTrait, Statement};
    let st = Statement::from_string(db.get_database_backend(), "SELECT email FROM leads");
    let rows = db.query_all_raw(st).await.unwrap();
    rows.iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect()
}

/// The signups stored in the database at `url`, checked whole: every lead has its run and its
/// first email, and no `signup` event is left unprocessed (`what` names the moment on failure).
/// Returns the leads' addresses and the open connection for more checks.
async fn signups_whole(
    url: &str,
    what: &str,
) -> (
    std::collections::HashSet<String>,
    sea_orm::DatabaseConnection,
) {
    let db = sea_orm::Database::connect(url).await.unwrap();
    let leads = count_in(&db, "SELECT count(*) FROM leads").await;
    let runs = count_in(&db, "SELECT count(DISTINCT lead_id) FROM enrollments").await;
    let mailed = count_in(&db, "SELECT count(DISTINCT lead_id) FROM messages").await;
    let unstarted = count_in(
        &db,
        "SELECT count(*) FROM events WHERE kind = 'signup' AND processed_at IS NULL",
    )
    .await;
    assert_eq!(
        (runs, mailed, unstarted),
        (leads, leads, 0),
        "{what}: {leads} leads"
    );
    (emails_in(&db).await, db)
}

/// Killed with SIGKILL while batches of entry events pour in, `autofunnel run` loses no lead:
/// after the restart every lead the events created has its run and its first email queued, and
/// every event the API accepted has its lead.
#[test]
fn a_kill_mid_batch_loses_no_lead() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (
            "autofunnel.toml",
            "api_token = \"api token of 16+ chars\"\n",
        ),
        (
            "funnels/join.yaml",
            "name: Join\nfrom: \"Shop <shop@example.com>\"\nentry: { event: join }\n\
             stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n",
        ),
        ("templates/join/hello.subject", "Welcome"),
        ("templates/join/hello.html", "<p>Hello</p>"),
    ];
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut child, rx) = spawn_run(dir.path());
    let addr = listening(&rx);
    // Four clients post batches of 250 new addresses until the process is killed.
    let accepted: Vec<String> = rt.block_on(async {
        let client = crate::util::http();
        let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        for c in 0..4 {
            let (client, addr, tx) = (client.clone(), addr.clone(), tx.clone());
            tokio::spawn(async move {
                for b in 0..40 {
                    let emails: Vec<String> = (0..250)
                        .map(|i| format!("c{c}b{b}i{i}@example.com"))
                        .collect();
                    let events: Vec<serde_json::Value> = emails
                        .iter()
                        .map(|e| serde_json::json!({ "email": e, "event": "join" }))
                        .collect();
                    let r = client
                        .post(format!("http://{addr}/api/v1/events"))
                        .bearer_auth("api token of 16+ chars")
                        .json(&serde_json::json!({ "events": events }))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            if tx.send(emails).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
        drop(tx);
        let mut accepted = Vec::new();
        while let Some(batch) = acks.recv().await {
            accepted.extend(batch);
            if accepted.len() >= 2_000 {
                // Batches of the other clients are on their way in.
                Command::new("kill")
                    .args(["-KILL", &child.0.id().to_string()])
                    .status()
                    .unwrap();
                break;
            }
        }
        accepted
    });
    let _ = child.0.wait();
    assert!(
        accepted.len() >= 2_000,
        "{} events accepted",
        accepted.len()
    );
    // The restart starts what was stored before it, then serves.
    let (mut child, rx) = spawn_run(dir.path());
    let addr = listening(&rx);
    let url = format!("sqlite://{}", dir.path().join("autofunnel.db").display());
    rt.block_on(async {
        let health = crate::util::http()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert!(health.status().is_success());
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let count = |sql: &'static str| count_in(&db, sql);
        let leads = count("SELECT count(*) FROM leads").await;
        let runs = count("SELECT count(DISTINCT lead_id) FROM enrollments").await;
        let mailed = count("SELECT count(DISTINCT lead_id) FROM messages").await;
        assert!(leads >= accepted.len() as i64, "{leads} leads");
        assert_eq!(runs, leads, "leads without their run");
        assert_eq!(mailed, leads, "leads without their first email");
        let unstarted = count("SELECT count(*) FROM events WHERE processed_at IS NULL").await;
        assert_eq!(unstarted, 0);
        let known: std::collections::HashSet<String> = emails_in(&db).await;
        let lost: Vec<&String> = accepted.iter().filter(|e| !known.contains(*e)).collect();
        assert!(lost.is_empty(), "accepted, then lost: {lost:?}");
        db.close().await.unwrap();
    });
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    stopped_cleanly(&mut child, &rx);
}

/// Killed with SIGKILL while landing-page signups pour in, `autofunnel run` leaves no signup
/// half-done: before any restart, every stored lead has its run in the form's funnel and its
/// first email, every `signup` event is processed (a signup commits with the funnels it
/// starts), and every signup the server answered is stored.
#[test]
fn a_kill_mid_signups_leaves_none_unstarted() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &BOOK);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("autofunnel.db").display());
    let mut accepted: Vec<String> = Vec::new();
    for round in 0..5 {
        let (mut child, rx) = spawn_run(dir.path());
        let addr = listening(&rx);
        // Eight visitors sign up until the process is killed, after 200 answers.
        let answered: Vec<String> = rt.block_on(async {
            let mut acks = sign_up(&addr, &format!("r{round}"), 8, 1_000);
            let mut answered = Vec::new();
            while let Some(email) = acks.recv().await {
                answered.push(email);
                if answered.len() >= 200 {
                    Command::new("kill")
                        .args(["-KILL", &child.0.id().to_string()])
                        .status()
                        .unwrap();
                    break;
                }
            }
            answered
        });
        let _ = child.0.wait();
        assert!(
            answered.len() >= 200,
            "round {round}: {} answered",
            answered.len()
        );
        accepted.extend(answered);
        // The database as the killed process left it, before any restart.
        rt.block_on(async {
            let (known, db) = signups_whole(&url, &format!("round {round}")).await;
            let lost: Vec<&String> = accepted.iter().filter(|e| !known.contains(*e)).collect();
            assert!(lost.is_empty(), "answered, then lost: {lost:?}");
            db.close().await.unwrap();
        });
    }
}

/// Killed with SIGKILL while a funnel's webhook calls go out, `autofunnel run` makes every
/// call after the restart (those the killed process had claimed taken back at the start), and
/// repeats at most the calls that were in flight (the rounds it had claimed: `BATCH` ×
/// `PIPELINES`), each with the `webhook-id` it had.
#[test]
fn a_kill_mid_delivery_repeats_at_most_the_calls_in_flight() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    const LEADS: usize = 2_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The receiver: each call's webhook-id, counted.
    let got: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let receiver = {
        let got = got.clone();
        axum::Router::new().route(
            "/crm",
            axum::routing::post(move |h: axum::http::HeaderMap| {
                let got = got.clone();
                async move {
                    let id = h["webhook-id"].to_str().unwrap().to_string();
                    *got.lock().unwrap().entry(id).or_default() += 1;
                    ""
                }
            }),
        )
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let crm = format!("http://{}/crm", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, receiver).await });
    let dir = tempfile::tempdir().unwrap();
    let funnel = format!(
        "name: Join\nentry: {{ event: join }}\nwebhooks:\n  crm: {{ url: \"{crm}\" }}\n\
         stages:\n  - id: customer\n    steps:\n      - webhook: crm\n      - wait: 30d\n"
    );
    for (path, text) in [
        (
            "autofunnel.toml",
            "api_token = \"api token of 16+ chars\"\n".to_string(),
        ),
        ("funnels/join.yaml", funnel),
    ] {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let (mut child, rx) = spawn_run(dir.path());
    let addr = listening(&rx);
    let distinct = |got: &Mutex<HashMap<String, u32>>| got.lock().unwrap().len();
    rt.block_on(async {
        let client = crate::util::http();
        for b in 0..LEADS / 250 {
            let events: Vec<serde_json::Value> = (0..250)
                .map(|i| serde_json::json!({ "email": format!("b{b}i{i}@example.com"), "event": "join" }))
                .collect();
            let r = client
                .post(format!("http://{addr}/api/v1/events"))
                .bearer_auth("api token of 16+ chars")
                .json(&serde_json::json!({ "events": events }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        // Killed once some calls have gone out and the rest are going.
        while distinct(&got) < 200 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    let _ = child.0.wait();
    let before = distinct(&got);
    let (mut child, rx) = spawn_run(dir.path());
    let _ = listening(&rx);
    rt.block_on(async {
        let all = async {
            while distinct(&got) < LEADS {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        // The restarted process takes back what the killed one had claimed at once, well
        // before its lease would lapse.
        let lease = autofunnel::delivery::webhook::LEASE.num_seconds() as u64;
        tokio::time::timeout(Duration::from_secs(lease / 2), all)
            .await
            .unwrap_or_else(|_| panic!("{} of {LEADS} calls made", distinct(&got)));
    });
    let counts = got.lock().unwrap().clone();
    let repeated: u32 = counts.values().map(|n| n - 1).sum();
    let in_flight = autofunnel::delivery::webhook::BATCH as u32
        * autofunnel::delivery::webhook::PIPELINES as u32;
    eprintln!("kill after {before} calls; {repeated} repeated");
    assert!(before < LEADS, "the kill came after every call ({before})");
    assert!(
        repeated <= in_flight,
        "{repeated} calls repeated, more than the {in_flight} in flight"
    );
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    stopped_cleanly(&mut child, &rx);
}

/// Waits for the child to exit; a failure shows what it logged since.
fn stopped_cleanly(child: &mut Reap, rx: &mpsc::Receiver<String>) {
    let status = child.0.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "autofunnel run exited with {status}:\n{}",
        rest.join("\n")
    );
}

/// The next line of the child's log that contains `needle` (a minute at most).
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// The main job on the embedded defaults: it migrates a fresh SQLite file, creates the outbox,
/// answers /healthz, and stops cleanly on SIGTERM.
#[test]
fn run_serves_healthz_on_the_embedded_defaults_and_stops_on_sigterm() {
    let (dir, mut child, rx) = start_run();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("autofunnel run did not start");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = healthz(&rt, &addr);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["funnels"], 1);
    assert!(dir.path().join("autofunnel.db").exists());
    assert!(dir.path().join("outbox").is_dir());
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn simulate_prints_the_timeline_with_subjects_and_renders_emails() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = autofunnel()
        .current_dir(root())
        .args([
            "simulate",
            "yoga-course-ru",
            "--lead",
            "timezone=Europe/Moscow first_name=Ольга start_kursa=2026-12-07",
            "--script",
            "1m confirm; 1d2h purchase mini-kurs; 2d purchase polnyj-kurs",
            "--start",
            "2026-11-23T10:00:00+03:00",
            "--horizon",
            "30d",
            "--render",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("send besplatnyj-urok  «Ваш бесплатный урок йоги»"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(send window \"* 9-21 * * *\")"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("4 emails; exited converted;"),
        "{stdout}"
    );
    let first = std::fs::read_to_string(out_dir.path().join("002-besplatnyj-urok.txt")).unwrap();
    assert!(
        first.contains("Subject: Ваш бесплатный урок йоги"),
        "{first}"
    );
    assert!(first.contains("Здравствуйте, Ольга!"), "{first}");
    // What the lead did not give is a sample, and the output says so.
    assert!(
        stdout.contains("sample values, for what --lead does not give: email=anna@example.com"),
        "{stdout}"
    );
}

/// `simulate --render` makes each email as the sender would at that moment: the run's own
/// deadline and the time left to it when the email goes (held by the send window to 09:00,
/// an hour before the deadline), not a sample.
#[test]
fn simulate_renders_the_runs_own_deadline() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = autofunnel()
        .current_dir(root())
        .args([
            "simulate",
            "relationships-course",
            "--lead",
            "timezone=Europe/Moscow first_name=Olga",
            "--script",
            "1m confirm",
            "--start",
            "2026-11-23T10:00:00+03:00",
            "--horizon",
            "20d",
            "--render",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("send webinar-last-chance  «Last chance: 6 hours left»"),
        "{stdout}"
    );
    let reminder =
        std::fs::read_to_string(out_dir.path().join("004-webinar-reminder.txt")).unwrap();
    assert!(
        reminder.contains("costs 490 RUB until Saturday, 28 November, 10:01 am."),
        "{reminder}"
    );
}

#[test]
fn simulate_names_the_funnels_when_one_is_unknown() {
    let out = autofunnel()
        .current_dir(root())
        .args(["simulate", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no funnel \"nope\"; the project has: abandoned-cart, b2b-follow-up"),
        "{stderr}"
    );
}

/// An edited funnel file is checked and loaded without a signal.
#[test]
fn edited_funnels_are_reloaded_without_a_signal() {
    let (dir, mut child, rx) = start_run();
    let wait_for = |needle: &str| wait_for_line(&rx, needle);
    wait_for("autofunnel is running");
    // Each funnel is named at the start with where its forms post and what it has in flight.
    let loaded = wait_for("funnel loaded");
    assert!(
        loaded.contains("/f/welcome") && loaded.contains("in_flight=0"),
        "{loaded}"
    );
    let funnel = dir.path().join("funnels/welcome.yaml");
    let good = std::fs::read_to_string(&funnel).unwrap();
    std::fs::write(&funnel, good.replace("wait: 2d", "wait: 30h")).unwrap();
    wait_for("funnel or template files changed");
    wait_for("reloaded");
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    stopped_cleanly(&mut child, &rx);
}

/// SIGHUP re-reads the funnels: a broken edit is refused and the running version stays; a good
/// one is loaded.
#[test]
fn sighup_reloads_funnels_that_pass_check_only() {
    let (dir, mut child, rx) = start_run();
    let wait_for = |needle: &str| wait_for_line(&rx, needle);
    wait_for("autofunnel is running");
    let pid = child.0.id().to_string();
    let funnel = dir.path().join("funnels/welcome.yaml");
    let good = std::fs::read_to_string(&funnel).unwrap();
    std::fs::write(&funnel, good.replace("send: welcome", "send: welcom")).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(wait_for("unknown template").contains("did you mean \"welcome\""));
    wait_for("the running funnels stay");
    std::fs::write(&funnel, good.replace("wait: 2d", "wait: 3d")).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    wait_for("reloaded");
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    stopped_cleanly(&mut child, &rx);
}

/// `autofunnel report` on a fresh project: a table for an empty period, and a clear message
/// with exit 2 for an unknown funnel, a bad date, a period that ends before it begins, or an
/// unknown option value.
#[test]
fn report_reads_a_funnel_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let init = autofunnel()
        .args(["init", "--example", "welcome"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    let run = |verb: &str, args: &[&str]| {
        autofunnel()
            .arg("-C")
            .arg(dir.path())
            .arg(verb)
            .args(args)
            .env(
                "AUTOFUNNEL_DATABASE_URL",
                format!("sqlite://{}/r.db?mode=rwc", dir.path().display()),
            )
            .output()
            .unwrap()
    };
    let report = |args: &[&str]| run("report", args);
    let out = report(&["welcome", "--from", "2026-11-01", "--to", "2026-11-08"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "entry cohort: leads who entered the funnel from 2026-11-01 00:00 to 2026-11-08 00:00"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("entered 0"), "{stdout}");
    let json = report(&["welcome", "--format", "json", "--cohort", "calendar"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["cohort"], "calendar");
    let sliced = report(&[
        "welcome",
        "--format",
        "json",
        "--slice",
        "utm_source",
        "--slice",
        "field:city",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&sliced.stdout).unwrap();
    assert_eq!(v["funnel"], "welcome");
    assert_eq!(v["slices"], serde_json::json!([]), "no leads, no groups");
    for (args, says) in [
        (
            vec!["nosuch"],
            "no funnel \"nosuch\" (the funnels are: welcome)",
        ),
        (
            vec!["welcome", "--from", "yesterday"],
            "--from: a date (2026-11-01) or an RFC 3339 time",
        ),
        (
            vec!["welcome", "--from", "2026-11-08", "--to", "2026-11-01"],
            "the period is empty",
        ),
    ] {
        let out = report(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        report(&["welcome", "--format", "pdf"]).status.code(),
        Some(2)
    );
    // The funnel chart for slides: an SVG image of the same report.
    let svg = report(&["welcome", "--format", "svg"]);
    assert!(svg.status.success());
    let svg = String::from_utf8(svg.stdout).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"")
            && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(
        svg.contains(">welcome</text>") || svg.contains(">entered</text>"),
        "{svg}"
    );
    let refused = report(&["welcome", "--emails", "--format", "svg"]);
    assert_eq!(refused.status.code(), Some(2));
    // Periods and a conversion window: an empty funnel still answers every week.
    let weekly = report(&[
        "welcome",
        "--from",
        "2026-11-02",
        "--to",
        "2026-11-16",
        "--by",
        "week",
        "--window",
        "7d",
        "--format",
        "json",
    ]);
    assert!(
        weekly.status.success(),
        "{}",
        String::from_utf8_lossy(&weekly.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&weekly.stdout).unwrap();
    assert_eq!(v["periods"].as_array().unwrap().len(), 2);
    assert_eq!(v["window_seconds"], 7 * 86_400);
    // The forecast: a table with its method, and its own refusals.
    let forecast = |args: &[&str]| run("forecast", args);
    let out = forecast(&["welcome", "--inflow", "50/day", "--set", "welcome=+20%"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("inflow 50.0 leads/day (given)"), "{stdout}");
    assert!(stdout.contains("scenario: welcome +20%"), "{stdout}");
    assert!(stdout.contains("method: "), "{stdout}");
    // Every report answers in CSV too (the forecast is a table or JSON).
    for args in [
        vec!["welcome", "--ab", "--format", "csv"],
        vec!["welcome", "--attribution", "linear", "--format", "csv"],
        vec!["welcome", "--emails", "--format", "csv"],
    ] {
        let out = report(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("funnel,"),
            "{args:?}"
        );
    }
    for (verb, args, says) in [
        (
            "forecast",
            vec!["welcome", "--set", "nosuch=+5%"],
            "--set: no stage \"nosuch\"",
        ),
        (
            "forecast",
            vec!["welcome", "--days", "0"],
            "--days: a whole number of days",
        ),
        (
            "forecast",
            vec!["welcome", "--inflow", "many"],
            "--inflow: leads per day",
        ),
        (
            "forecast",
            vec!["welcome", "--format", "csv"],
            "answers as a table or JSON",
        ),
        (
            "report",
            vec!["welcome", "--by", "year"],
            "--by: `day`, `week` or `month`",
        ),
        (
            "report",
            vec!["welcome", "--window", "soon"],
            "--window: bad duration",
        ),
        (
            "report",
            vec!["welcome", "--tz", "Mars/Olympus"],
            "--tz: no time zone \"Mars/Olympus\"",
        ),
        (
            "forecast",
            vec!["welcome", "--tz", "Moscow"],
            "--tz: no time zone \"Moscow\"",
        ),
    ] {
        let out = run(verb, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{verb} {args:?}: {stderr}");
    }
}

/// Read commands never make or migrate the database: with none yet, `report`, `forecast` and
/// `plan` answer empty with one line on stderr saying so, and no file appears; once made,
/// the report carries no log lines; a database behind this build is refused with what to run,
/// and left as it was. A closed stdout (`| head`) ends a command quietly.
#[test]
fn read_commands_never_migrate() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        autofunnel()
            .args(["init", "--example", "welcome"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let db = dir.path().join("r.db");
    let run = |args: &[&str]| {
        autofunnel()
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .env(
                "AUTOFUNNEL_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", db.display()),
            )
            .env_remove("AUTOFUNNEL_LOG")
            .output()
            .unwrap()
    };
    for args in [
        vec!["report", "welcome"],
        vec!["report", "welcome", "--format", "json"],
        vec!["forecast", "welcome"],
        vec!["plan"],
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("no database yet at sqlite://"),
            "{stderr}"
        );
        assert!(!db.exists(), "{args:?} made the database");
    }
    let json = run(&["report", "welcome", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["entered"], 0);
    assert!(run(&["migrate"]).status.success());
    let out = run(&["report", "welcome"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("welcome — "));
    let verbose = run(&["-v", "report", "welcome"]);
    assert!(verbose.status.success());
    // A database one migration behind: refused, and still behind afterwards.
    let forget = "DELETE FROM seaql_migrations WHERE version = \
                  (SELECT MAX(version) FROM seaql_migrations)";
    let sqlite = |sql: &str| {
        let c = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                          r=c.execute(sys.argv[2]).fetchall(); c.commit(); print(r)",
            ])
            .arg(&db)
            .arg(sql)
            .output()
            .unwrap();
        String::from_utf8_lossy(&c.stdout).trim().to_string()
    };
    sqlite(forget);
    let count = "SELECT COUNT(*) FROM seaql_migrations";
    let before = sqlite(count);
    for args in [
        vec!["report", "welcome"],
        vec!["forecast", "welcome"],
        vec!["plan"],
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is behind this autofunnel"), "{stderr}");
        assert!(stderr.contains("run `autofunnel migrate`"), "{stderr}");
    }
    assert_eq!(sqlite(count), before, "nothing migrated");
    // `| true`: the pipe is closed before the report is written; no panic.
    assert!(run(&["migrate"]).status.success());
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' -C '{}' report welcome --by day --from 2025-01-01 | true",
            env!("CARGO_BIN_EXE_autofunnel"),
            dir.path().display()
        ))
        .env(
            "AUTOFUNNEL_DATABASE_URL",
            format!("sqlite://{}", db.display()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `autofunnel backup FILE` while `autofunnel run` takes signups: the copy is one consistent
/// snapshot (every lead in it with its run, first email and processed signup, whatever was
/// being written at its moment), holds every signup answered before it began, never
/// overwrites a file, and a project whose database is the copy runs and serves it.
#[test]
fn backup_while_running_restores_whole() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &BOOK);
    let backup = dir.path().join("backup.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut child, rx) = spawn_run(dir.path());
    let addr = listening(&rx);
    // Four visitors sign up; after 100 answers the backup is taken while they go on.
    let (before, after) = rt.block_on(async {
        let mut acks = sign_up(&addr, "", 4, 250);
        let mut answered = Vec::new();
        while answered.len() < 100 {
            answered.push(acks.recv().await.expect("the visitors stopped early"));
        }
        let (project, file) = (dir.path().to_path_buf(), backup.clone());
        let out = tokio::task::spawn_blocking(move || {
            autofunnel()
                .arg("-C")
                .arg(project)
                .arg("backup")
                .arg(file)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("backed up "), "{stdout}");
        let mut rest = Vec::new();
        while let Some(e) = acks.recv().await {
            rest.push(e);
        }
        (answered, rest)
    });
    assert_eq!(before.len() + after.len(), 1000);
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    stopped_cleanly(&mut child, &rx);
    // A backup never overwrites: the file stays as it was.
    let taken = std::fs::read(&backup).unwrap();
    let out = autofunnel()
        .arg("-C")
        .arg(dir.path())
        .arg("backup")
        .arg(&backup)
        .output()
        .unwrap();
    refused(&out, "exists");
    assert_eq!(std::fs::read(&backup).unwrap(), taken);
    // Restored: the copy as a new project's database.
    let restored = tempfile::tempdir().unwrap();
    write_files(restored.path(), &BOOK);
    std::fs::copy(&backup, restored.path().join("autofunnel.db")).unwrap();
    let url = format!(
        "sqlite://{}",
        restored.path().join("autofunnel.db").display()
    );
    let leads: std::collections::HashSet<String> = rt.block_on(async {
        let (known, db) = signups_whole(&url, "the copy").await;
        db.close().await.unwrap();
        known
    });
    let missing: Vec<&String> = before.iter().filter(|e| !leads.contains(*e)).collect();
    assert!(
        missing.is_empty(),
        "answered before the backup, not in it: {missing:?}"
    );
    // The restored project runs on the copy and serves its leads.
    let (mut child, rx) = spawn_run(restored.path());
    let addr = listening(&rx);
    let health = healthz(&rt, &addr);
    assert_eq!(health["status"], "ok");
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    stopped_cleanly(&mut child, &rx);
    let out = autofunnel()
        .arg("-C")
        .arg(restored.path())
        .args(["export", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(rows, leads.len() + 1, "a header and a row per lead");
}

/// SIGTERM while signups pour in: `autofunnel run` answers what it took in, stores each signup
/// it answered with its run and first email, finishes the emails it was sending, and exits 0
/// holding nothing — no email left `sending`, no run or lead still claimed — so another process
/// (or node) takes everything up at once.
#[test]
fn sigterm_finishes_what_is_in_flight_and_lets_claims_go() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &BOOK);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut child, rx) = spawn_run(dir.path());
    let addr = listening(&rx);
    let answered: Vec<String> = rt.block_on(async {
        let mut acks = sign_up(&addr, "", 8, 1_000);
        let mut answered = Vec::new();
        while let Some(e) = acks.recv().await {
            answered.push(e);
            if answered.len() == 300 {
                Command::new("kill")
                    .args(["-TERM", &child.0.id().to_string()])
                    .status()
                    .unwrap();
            }
        }
        answered
    });
    assert!(answered.len() >= 300, "{} answered", answered.len());
    stopped_cleanly(&mut child, &rx);
    let url = format!("sqlite://{}", dir.path().join("autofunnel.db").display());
    rt.block_on(async {
        let (stored, db) = signups_whole(&url, "after SIGTERM").await;
        assert_eq!(
            stored.len(),
            answered.len(),
            "every signup answered, stored once"
        );
        let count = |sql: &'static str| count_in(&db, sql);
        let sending = count("SELECT count(*) FROM messages WHERE status = 'sending'").await;
        let claimed_runs = count("SELECT count(*) FROM enrollments WHERE lease_until > 0").await;
        let claimed_leads = count("SELECT count(*) FROM leads WHERE lease_until > 0").await;
        assert_eq!(
            (sending, claimed_runs, claimed_leads),
            (0, 0, 0),
            "claims left behind: emails sending, runs, leads"
        );
        db.close().await.unwrap();
    });
}

/// `--role` splits `autofunnel run` among processes sharing one PostgreSQL database: signups
/// posted to a process that only serves HTTP are stored with their funnels started there, and
/// a second process that only schedules and sends delivers their emails; on SQLite, which one
/// process serves, a split is refused before anything starts.
#[test]
fn roles_split_the_work_among_processes() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &BOOK);
    let out = autofunnel()
        .arg("-C")
        .arg(dir.path())
        .args(["run", "--role", "http"])
        .env("AUTOFUNNEL_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    refused(&out, "PostgreSQL");
    assert!(
        !dir.path().join("autofunnel.db").exists(),
        "nothing started"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(crate::store::on_postgres_url("roles", |url| async move {
        let (mut web, web_log) = spawn_run_on(dir.path(), Some(&url), &["--role", "http"]);
        let addr = listening(&web_log);
        // Started once the first has migrated the database.
        let (mut work, work_log) =
            spawn_run_on(dir.path(), Some(&url), &["--role", "scheduler,sender"]);
        let line = wait_for_line(&work_log, "autofunnel is running");
        assert!(line.contains("addr=-"), "{line}");
        let mut acks = sign_up(&addr, "", 4, 5);
        let mut answered = Vec::new();
        while let Some(e) = acks.recv().await {
            answered.push(e);
        }
        assert_eq!(answered.len(), 20);
        use sea_orm::{ConnectionTrait, Database, Statement};
        let db = Database::connect(&url).await.unwrap();
        let sent = "SELECT count(*) FROM messages WHERE status = 'sent'";
        let mut n = 0;
        for _ in 0..600 {
            n = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sent))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index::<i64>(0)
                .unwrap();
            if n == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(n, 20, "the sending process delivered every first email");
        let files = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .count();
        assert_eq!(files, 20);
        db.close().await.unwrap();
        for (child, log) in [(&mut web, &web_log), (&mut work, &work_log)] {
            Command::new("kill")
                .args(["-TERM", &child.0.id().to_string()])
                .status()
                .unwrap();
            stopped_cleanly(child, log);
        }
    }));
}
