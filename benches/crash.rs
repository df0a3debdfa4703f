//! Crash benchmark, as an operator would try it: a client posts N `join` events (each a new
//! address) in batches to a real `autofunnel run` whose funnel enters on that event and sends at
//! once over SMTP into postfix's `smtp-sink` on loopback; the process is killed with SIGKILL and
//! restarted K times, S seconds apart, while the client retries each refused batch until it is
//! accepted. Afterwards: leads, leads without their run, leads with more than one run or first
//! email (what was in flight at a kill), events never processed.
//!
//! `cargo bench --bench crash -- [EVENTS] [--kills K] [--gap S] [--batch B] [--database URL]`
//! (defaults 20,000 events, 4 kills, 2 s, batches of 500, a fresh SQLite file; a PostgreSQL
//! database is emptied first). Needs `smtp-sink` (Debian package `postfix`).

#[path = "common.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use sea_orm::Database;

const TOKEN: &str = "crash bench api token";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::delivery::webhook::install_tls();
    let args = common::args();
    let n = common::count(&args).unwrap_or(20_000);
    let kills: usize = common::flag(&args, "--kills").unwrap_or(4);
    let gap: f64 = common::flag(&args, "--gap").unwrap_or(2.0);
    let size: usize = common::flag(&args, "--batch").unwrap_or(500);
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let smtp = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
    let mut sink = Command::new(common::tool("smtp-sink")?);
    if root {
        sink.args(["-u", "nobody"]);
    }
    let _sink = common::Node {
        child: sink
            .args([format!("127.0.0.1:{smtp}").as_str(), "1000"])
            .stdout(Stdio::null())
            .spawn()?,
    };
    let files = [
        (
            "autofunnel.toml".to_string(),
            format!("api_token = \"{TOKEN}\"\nsmtp_url = \"smtp://127.0.0.1:{smtp}\"\n"),
        ),
        (
            "funnels/join.yaml".into(),
            "name: Join\nfrom: \"Shop <shop@example.com>\"\nentry: { event: join }\n\
             stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n"
                .into(),
        ),
        ("templates/join/hello.subject".into(), "Welcome".into()),
        (
            "templates/join/hello.html".into(),
            "<p>Hello {{ lead.email }}</p>".into(),
        ),
    ];
    for (path, text) in &files {
        let p = project.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(&project))?;
        std::fs::write(p, text)?;
    }
    let url = common::database_url(&args, &project.join("bench.db")).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = dir.path().join("server.log");
    println!(
        "crash: {n} join events in batches of {size} to autofunnel run ({}), SIGKILL and restart {kills} times {gap} s apart; SMTP into smtp-sink",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let mut server = common::start_run(&project, &url, port, &log).await?;
    // The client: each batch posted until it is accepted, retried after any error.
    let retries = Arc::new(AtomicUsize::new(0));
    let client = {
        let retries = retries.clone();
        tokio::spawn(async move {
            autofunnel::delivery::webhook::install_tls();
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            for b in 0..n.div_ceil(size) {
                let events: Vec<serde_json::Value> = (b * size..((b + 1) * size).min(n))
                    .map(|i| serde_json::json!({ "email": format!("l{i}@crash.test"), "event": "join" }))
                    .collect();
                let body = serde_json::json!({ "events": events });
                loop {
                    let r = client
                        .post(format!("http://127.0.0.1:{port}/api/v1/events"))
                        .bearer_auth(TOKEN)
                        .json(&body)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            anyhow::Ok(())
        })
    };
    let begun = Instant::now();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        if client.is_finished() {
            println!("  the client finished before kill {}", k + 1);
            break;
        }
        Command::new("kill")
            .args(["-KILL", &server.child.id().to_string()])
            .status()?;
        let _ = server.child.wait();
        server = common::start_run(&project, &url, port, &log).await?;
    }
    client.await??;
    let posting = begun.elapsed().as_secs_f64();
    // Let the last process finish what it started, then stop it as systemd would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    let status = server.child.wait()?;
    if !status.success() {
        bail!("autofunnel run stopped with {status}");
    }
    let db = Database::connect(&url).await?;
    let leads = common::query_count(&db, "SELECT COUNT(*) FROM leads").await?;
    let events =
        common::query_count(&db, "SELECT COUNT(*) FROM events WHERE kind = 'join'").await?;
    let unprocessed = common::query_count(
        &db,
        "SELECT COUNT(*) FROM events WHERE processed_at IS NULL",
    )
    .await?;
    let runs = common::query_count(&db, "SELECT COUNT(*) FROM enrollments").await?;
    let without = common::query_count(
        &db,
        "SELECT COUNT(*) FROM leads l WHERE NOT EXISTS \
         (SELECT 1 FROM enrollments e WHERE e.lead_id = l.id)",
    )
    .await?;
    let twice = common::query_count(
        &db,
        "SELECT COUNT(*) FROM (SELECT lead_id FROM enrollments GROUP BY lead_id \
         HAVING COUNT(*) > 1) x",
    )
    .await?;
    let mails = common::query_count(&db, "SELECT COUNT(*) FROM messages").await?;
    let sent =
        common::query_count(&db, "SELECT COUNT(*) FROM messages WHERE status = 'sent'").await?;
    println!(
        "  {posting:.1} s posting, {} batches retried",
        retries.load(Ordering::Relaxed)
    );
    println!(
        "  {leads} leads, {events} join events ({unprocessed} unprocessed), {runs} runs; \
         leads without their run: {without}; leads with more than one run: {twice}"
    );
    println!("  {mails} emails queued, {sent} sent");
    if leads != n as i64 || without != 0 || unprocessed != 0 {
        bail!("leads were lost");
    }
    println!("  no lead lost");
    Ok(())
}
