//! Chaos benchmark: N `autofunnel run` processes on one PostgreSQL under a steady load of
//! signups, purchase events and timers, delivering into an SMTP sink on loopback that records
//! every message it accepts. While the load runs, a random node is SIGKILLed and restarted
//! every few seconds, PostgreSQL is restarted once (`pg_ctlcluster … restart`) and the sink is
//! stopped for a while. Then the nodes drain what is left and stop, and the ledger is checked
//! against the sink: no accepted signup without its lead and run, no run left unfinished, no
//! step skipped, every email accepted by the sink once — duplicates counted and compared with
//! what was claimed for sending at each kill — and nothing stuck in `sending`.
//!
//! `cargo bench --bench chaos -- --database postgres://…/chaos [--nodes 3] [--seconds 90]
//! [--rate 60] [--kill-every 8] [--sink-down 30] [--drain 480] [--no-pg-restart] [--sample S]`
//! With `--nodes 1` and no `--database` it runs one node on a SQLite file; `--kill-every 0
//! --sink-down 0 --sample 60` makes it a soak (no faults, each node's RSS, lag and queue every
//! minute).
//! (the database is emptied first; PostgreSQL is restarted through `pg_ctlcluster`, so run it
//! as a user allowed to do that). Loopback only; every phase is bounded in time.

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use sea_orm::Database;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const TOKEN: &str = "chaos bench api token";

const FUNNEL: &str = "name: Chaos
from: \"Shop <shop@example.com>\"
entry: { form: chaos }
stages:
  - id: welcome
    on: [{ event: purchase, goto: buyer }]
    steps:
      - send: hello
      - wait: 4s
      - send: reminder
      - wait: 4s
      - exit: not_converted
  - id: buyer
    steps:
      - send: thanks
      - exit: converted
";

/// What the sink accepted: copies per outbox row (from the Message-ID), and messages whose
/// Message-ID named no row.
#[derive(Default)]
struct Received {
    copies: Mutex<HashMap<i64, u32>>,
    foreign: AtomicUsize,
}

/// The outbox row a Message-ID (`<HEX.ROW@domain>`) names.
fn row_of(header: &str) -> Option<i64> {
    let id = header.trim().strip_prefix('<')?;
    let (_, rest) = id.split_once('.')?;
    rest.split_once('@')?.0.parse().ok()
}

/// One SMTP session: every command answered 250 but DATA, whose message is recorded before
/// the 250 that accepts it.
async fn session(stream: tokio::net::TcpStream, got: Arc<Received>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 chaos sink\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let cmd = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        if cmd.starts_with("EHLO") {
            w.write_all(b"250-chaos sink\r\n250 8BITMIME\r\n").await?;
        } else if cmd == "DATA" {
            w.write_all(b"354 go on\r\n").await?;
            let mut row = None;
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                if row.is_none()
                    && let Some((name, value)) = text.split_once(':')
                    && name.eq_ignore_ascii_case("message-id")
                {
                    row = Some(row_of(value));
                }
            }
            match row.flatten() {
                Some(id) => *got.copies.lock().unwrap().entry(id).or_default() += 1,
                None => {
                    got.foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
            w.write_all(b"250 accepted\r\n").await?;
        } else if cmd == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"250 ok\r\n").await?;
        }
    }
}

/// The sink listening on `port` until the returned set is dropped or aborted (connections too).
async fn sink(port: u16, got: Arc<Received>) -> anyhow::Result<JoinSet<()>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut sessions = JoinSet::new();
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            sessions.spawn(session(s, got.clone()));
            while sessions.try_join_next().is_some() {}
        }
    });
    Ok(set)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Posts `body` to `path` on the nodes in turn from `first`, until one accepts it or
/// `deadline` passes (a node down or failing: the next one is tried); whether one did. A
/// request refused as bad (4xx) is an error of the bench.
async fn post(
    client: &reqwest::Client,
    ports: &[u16],
    first: usize,
    path: &str,
    body: &serde_json::Value,
    deadline: Instant,
    retries: &AtomicUsize,
) -> anyhow::Result<bool> {
    let mut i = first;
    while Instant::now() < deadline {
        let port = ports[i % ports.len()];
        let r = client
            .post(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .json(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(true),
            Ok(r) if r.status().is_client_error() => {
                bail!("{path} refused {body}: {} {}", r.status(), r.text().await?)
            }
            _ => {}
        }
        retries.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

fn write_project(project: &Path, smtp: u16) -> anyhow::Result<()> {
    let mut files = vec![
        (
            "autofunnel.toml".to_string(),
            format!("api_token = \"{TOKEN}\"\nsmtp_url = \"smtp://127.0.0.1:{smtp}\"\n"),
        ),
        ("funnels/chaos.yaml".into(), FUNNEL.into()),
    ];
    for t in ["hello", "reminder", "thanks"] {
        files.push((format!("templates/chaos/{t}.subject"), t.to_string()));
        files.push((
            format!("templates/chaos/{t}.html"),
            format!("<p>{t}, {{{{ lead.email }}}}</p>"),
        ));
    }
    for (path, text) in &files {
        let p = project.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(project))?;
        std::fs::write(p, text)?;
    }
    Ok(())
}

/// The PostgreSQL cluster of this machine (`VERSION main`), restarted as an operator would.
fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: cannot restart PostgreSQL")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .context("no cluster under /etc/postgresql")?;
    let ok = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()?
        .success();
    if !ok {
        bail!("pg_ctlcluster {version} main restart failed");
    }
    Ok(())
}

/// Messages claimed for sending now (on every node): what a kill now can send twice at most.
async fn in_flight(url: &str) -> i64 {
    match Database::connect(url).await {
        Ok(db) => common::query_count(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'sending'",
        )
        .await
        .unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::delivery::webhook::install_tls();
    let args = common::args();
    let nodes_n: usize = common::flag(&args, "--nodes").unwrap_or(3).max(1);
    if nodes_n > 1 && common::flag::<String>(&args, "--database").is_none() {
        bail!("several nodes need --database postgres://… (a database this bench may empty)");
    }
    let seconds: u64 = common::flag(&args, "--seconds").unwrap_or(90);
    let rate: u64 = common::flag(&args, "--rate").unwrap_or(60).max(1);
    let kill_every: f64 = common::flag(&args, "--kill-every").unwrap_or(8.0);
    let sink_down: u64 = common::flag(&args, "--sink-down").unwrap_or(30);
    let drain: u64 = common::flag(&args, "--drain").unwrap_or(480);
    let sample: Option<u64> = common::flag(&args, "--sample");
    let mut pg_restart = !args.iter().any(|a| a == "--no-pg-restart");

    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let smtp = free_port()?;
    write_project(&project, smtp)?;
    let url = common::database_url(&args, &project.join("soak.db")).await?;
    pg_restart &= url.starts_with("postgres");
    let got = Arc::new(Received::default());
    let mut sink_task = Some(sink(smtp, got.clone()).await?);

    let ports: Vec<u16> = (0..nodes_n)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let logs: Vec<PathBuf> = (0..nodes_n)
        .map(|i| dir.path().join(format!("node{i}.log")))
        .collect();
    println!(
        "chaos: {nodes_n} nodes on {}, {seconds} s of {rate} signups/s (a third of them \
         buy), SIGKILL a random node every {kill_every} s (0: never), {} the SMTP sink down \
         {sink_down} s",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        if pg_restart {
            "PostgreSQL restarted once,"
        } else {
            "no PostgreSQL restart,"
        }
    );
    // All at once, as a deployment starts them.
    let mut nodes: Vec<Option<common::Node>> = futures_util::future::try_join_all(
        (0..nodes_n).map(|i| common::start_run(&project, &url, ports[i], &logs[i])),
    )
    .await?
    .into_iter()
    .map(Some)
    .collect();

    // The load: `rate` signups a second spread over the nodes; a third of the leads buy.
    let retries = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let bought = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    let load_end = begun + Duration::from_secs(seconds);
    let load = {
        let (ports, retries, accepted, refused, bought) = (
            ports.clone(),
            retries.clone(),
            accepted.clone(),
            refused.clone(),
            bought.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut posts = JoinSet::new();
            let mut i = 0usize;
            while Instant::now() < load_end {
                tick.tick().await;
                let (client, ports, retries, accepted, refused, bought) = (
                    client.clone(),
                    ports.clone(),
                    retries.clone(),
                    accepted.clone(),
                    refused.clone(),
                    bought.clone(),
                );
                posts.spawn(async move {
                    let email = format!("l{i}@chaos.test");
                    // A signup still refused after this long counts as refused: the
                    // visitor gave up.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let body = serde_json::json!({ "email": email });
                    if !post(&client, &ports, i, "/f/chaos", &body, deadline, &retries).await? {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return anyhow::Ok(());
                    }
                    accepted.lock().unwrap().push(email.clone());
                    if i.is_multiple_of(3) {
                        tokio::time::sleep(Duration::from_millis(300 + (i as u64 * 397) % 7000))
                            .await;
                        let body = serde_json::json!({ "events": [
                            { "email": email, "event": "purchase", "product": "course",
                              "order_id": format!("o{i}"), "amount": 49, "currency": "EUR" }
                        ]});
                        let deadline = Instant::now() + Duration::from_secs(60);
                        if post(
                            &client,
                            &ports,
                            i + 1,
                            "/api/v1/events",
                            &body,
                            deadline,
                            &retries,
                        )
                        .await?
                        {
                            bought.fetch_add(1, Ordering::Relaxed);
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    anyhow::Ok(())
                });
                while let Some(r) = posts.try_join_next() {
                    r??;
                }
                i += 1;
            }
            while let Some(r) = posts.join_next().await {
                r??;
            }
            anyhow::Ok(i)
        })
    };

    // The faults, on a schedule inside the load.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0usize;
    let mut in_flight_at_kills = 0i64;
    let mut pg_done = !pg_restart;
    let mut sink_stopped: Option<Instant> = None;
    let mut sink_done = sink_down == 0;
    let never = begun + Duration::from_secs(seconds + 86_400);
    let kill_gap = |from: Instant| {
        if kill_every > 0.0 {
            from + Duration::from_secs_f64(kill_every)
        } else {
            never
        }
    };
    let mut next_kill = kill_gap(begun);
    // `--sample S`: every S seconds each node's resident memory, the scheduler's lag and the
    // emails waiting, as `/healthz` gives them (a soak's figures).
    let mut next_sample = sample.map(|s| begun + Duration::from_secs(s.max(1)));
    let mut samples: Vec<(f64, f64, f64, i64)> = Vec::new();
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut faults: Vec<String> = Vec::new();
    while Instant::now() < load_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = begun.elapsed().as_secs_f64();
        if Instant::now() >= next_kill {
            let k = rng.random_range(0..nodes_n);
            in_flight_at_kills += in_flight(&url).await;
            if let Some(mut n) = nodes[k].take() {
                Command::new("kill")
                    .args(["-KILL", &n.child.id().to_string()])
                    .status()?;
                let _ = n.child.wait();
            }
            kills += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            nodes[k] = Some(common::start_run(&project, &url, ports[k], &logs[k]).await?);
            next_kill = kill_gap(Instant::now());
        }
        if let Some(at) = next_sample.filter(|at| Instant::now() >= *at) {
            next_sample = Some(at + Duration::from_secs(sample.unwrap_or(60).max(1)));
            for (i, n) in nodes.iter().enumerate() {
                let Some(n) = n else { continue };
                let rss = common::rss_mb_of(&n.child.id().to_string());
                let h: serde_json::Value = match health
                    .get(format!("http://127.0.0.1:{}/healthz", ports[i]))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
                let lag = h["scheduler"]["lag_seconds"].as_f64().unwrap_or(f64::NAN);
                let queued = h["outbox"]["queued"].as_i64().unwrap_or(-1);
                println!(
                    "  t={t:.0} s node {i}: RSS {rss:.1} MB, scheduler lag {lag:.3} s, emails \
                     queued {queued}"
                );
                samples.push((t, rss, lag, queued));
            }
        }
        if !pg_done && t >= seconds as f64 / 3.0 {
            let at = Instant::now();
            restart_postgres()?;
            faults.push(format!(
                "PostgreSQL restarted at {t:.0} s ({:.1} s)",
                at.elapsed().as_secs_f64()
            ));
            pg_done = true;
        }
        if !sink_done && sink_stopped.is_none() && t >= seconds as f64 / 2.0 {
            if let Some(mut s) = sink_task.take() {
                s.abort_all();
                while s.join_next().await.is_some() {}
            }
            sink_stopped = Some(Instant::now());
            faults.push(format!("SMTP sink stopped at {t:.0} s for {sink_down} s"));
        }
        if let Some(at) = sink_stopped
            && at.elapsed() >= Duration::from_secs(sink_down)
        {
            sink_task = Some(sink(smtp, got.clone()).await?);
            sink_stopped = None;
            sink_done = true;
        }
    }
    let posted = load.await??;
    if !samples.is_empty() {
        let max =
            |f: fn(&(f64, f64, f64, i64)) -> f64| samples.iter().map(f).fold(f64::MIN, f64::max);
        let half = samples.len() / 2;
        let first_rss = samples[..half.max(1)]
            .iter()
            .map(|s| s.1)
            .fold(f64::MIN, f64::max);
        println!(
            "  samples: RSS peak {:.1} MB (first half {first_rss:.1} MB), lag peak {:.3} s, \
             emails queued peak {:.0}",
            max(|s| s.1),
            max(|s| s.2),
            max(|s| s.3 as f64)
        );
    }
    if sink_task.is_none() {
        sink_task = Some(sink(smtp, got.clone()).await?);
    }
    let load_s = begun.elapsed().as_secs_f64();
    let accepted: Vec<String> = std::mem::take(&mut *accepted.lock().unwrap());
    println!(
        "  load: {posted} signups posted in {load_s:.0} s, {} accepted, {} signups or purchases \
         given up; {} requests retried on another node; {kills} kills; {}",
        accepted.len(),
        refused.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        faults.join("; ")
    );

    // Drain: until every run has finished and no email is waiting (bounded).
    let db = Database::connect(&url).await?;
    let drained = Instant::now();
    loop {
        let open = common::query_count(
            &db,
            "SELECT (SELECT COUNT(*) FROM enrollments WHERE status <> 'exited') + \
             (SELECT COUNT(*) FROM messages WHERE status IN ('queued', 'sending'))",
        )
        .await
        .unwrap_or(i64::MAX);
        if open == 0 {
            break;
        }
        if drained.elapsed() > Duration::from_secs(drain) {
            println!("  not drained after {drain} s: {open} runs and emails still open");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drain_s = drained.elapsed().as_secs_f64();
    for n in nodes.iter_mut().flatten() {
        Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status()?;
        let status = n.child.wait()?;
        if !status.success() {
            bail!("a node stopped with {status}");
        }
    }
    drop(sink_task);

    // The ledger.
    let mut problems: Vec<String> = Vec::new();
    let q = |sql: &'static str| common::query_count(&db, sql);
    let leads = q("SELECT COUNT(*) FROM leads").await?;
    let runs = q("SELECT COUNT(*) FROM enrollments").await?;
    let lost = {
        let known: std::collections::HashSet<String> = {
            use sea_orm::ConnectionTrait as _;
            db.query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT l.email FROM leads l JOIN enrollments e ON e.lead_id = l.id",
            ))
            .await?
            .iter()
            .filter_map(|r| r.try_get_by_index::<String>(0).ok())
            .collect()
        };
        accepted.iter().filter(|e| !known.contains(*e)).count()
    };
    let without = q("SELECT COUNT(*) FROM leads l WHERE NOT EXISTS \
         (SELECT 1 FROM enrollments e WHERE e.lead_id = l.id)")
    .await?;
    let unfinished = q("SELECT COUNT(*) FROM enrollments WHERE status <> 'exited'").await?;
    // Runs against the sets of runs that got each email, each set made once (messages have
    // no index by run: a lookup per run would read them all for each).
    let no_hello = q(
        "SELECT COUNT(*) FROM enrollments e LEFT JOIN (SELECT DISTINCT \
         enrollment_id FROM messages WHERE template = 'hello') m ON m.enrollment_id = e.id \
         WHERE m.enrollment_id IS NULL",
    )
    .await?;
    let no_reminder = q(
        "SELECT COUNT(*) FROM enrollments e LEFT JOIN (SELECT DISTINCT \
         enrollment_id FROM messages WHERE template = 'reminder') m ON m.enrollment_id = e.id \
         WHERE e.outcome = 'not_converted' AND m.enrollment_id IS NULL",
    )
    .await?;
    let no_thanks = q(
        "SELECT COUNT(*) FROM (SELECT DISTINCT enrollment_id FROM stage_history \
         WHERE stage_id = 'buyer') b LEFT JOIN (SELECT DISTINCT enrollment_id FROM messages \
         WHERE template = 'thanks') m ON m.enrollment_id = b.enrollment_id \
         WHERE m.enrollment_id IS NULL",
    )
    .await?;
    let twice_queued = q(
        "SELECT COUNT(*) FROM (SELECT enrollment_id, template FROM messages \
         GROUP BY enrollment_id, template HAVING COUNT(*) > 1) x",
    )
    .await?;
    let purchases = q("SELECT COUNT(*) FROM events WHERE kind = 'purchase'").await?;
    let unprocessed = q("SELECT COUNT(*) FROM events WHERE processed_at IS NULL").await?;
    let converted = q("SELECT COUNT(*) FROM enrollments WHERE outcome = 'converted'").await?;
    let by_status: BTreeMap<String, i64> = {
        use sea_orm::ConnectionTrait as _;
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT status, COUNT(*) FROM messages GROUP BY status",
        ))
        .await?
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get_by_index::<String>(0).ok()?,
                r.try_get_by_index::<i64>(1).ok()?,
            ))
        })
        .collect()
    };
    let sent_ids: Vec<i64> = {
        use sea_orm::ConnectionTrait as _;
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM messages WHERE status = 'sent'",
        ))
        .await?
        .iter()
        .filter_map(|r| r.try_get_by_index::<i64>(0).ok())
        .collect()
    };
    let copies = got.copies.lock().unwrap().clone();
    let never_arrived = sent_ids
        .iter()
        .filter(|id| !copies.contains_key(id))
        .count();
    let sent_set: std::collections::HashSet<i64> = sent_ids.iter().copied().collect();
    let unknown = copies.keys().filter(|id| !sent_set.contains(id)).count()
        + got.foreign.load(Ordering::Relaxed);
    let duplicates: u64 = copies
        .values()
        .map(|c| u64::from(c.saturating_sub(1)))
        .sum();
    println!(
        "  drained in {drain_s:.0} s; {leads} leads, {runs} runs ({converted} converted); \
         {purchases} purchases stored of {} accepted; emails by status {by_status:?}; the sink \
         accepted {} messages",
        bought.load(Ordering::Relaxed),
        copies.values().map(|c| u64::from(*c)).sum::<u64>()
    );
    println!(
        "  ledger: accepted signups without their lead and run {lost}, leads without a run \
         {without}, runs unfinished {unfinished}, steps skipped (hello {no_hello}, reminder \
         {no_reminder}, thanks {no_thanks}), a step queued twice {twice_queued}, sent but not \
         in the sink {never_arrived}, in the sink but not sent {unknown}, stuck in sending {}",
        by_status.get("sending").copied().unwrap_or(0)
    );
    println!(
        "  duplicates in the sink: {duplicates} (claimed for sending at the kills: \
         {in_flight_at_kills})"
    );
    for (what, n) in [
        ("accepted signups lost", lost as i64),
        (
            "accepted purchases not stored",
            bought.load(Ordering::Relaxed) as i64 - purchases,
        ),
        ("events never processed", unprocessed),
        ("leads without a run", without),
        ("runs unfinished", unfinished),
        ("hello skipped", no_hello),
        ("reminder skipped", no_reminder),
        ("thanks skipped", no_thanks),
        ("steps queued twice", twice_queued),
        ("sent but never accepted by the sink", never_arrived as i64),
        ("accepted by the sink but not sent", unknown as i64),
        (
            "stuck in sending",
            by_status.get("sending").copied().unwrap_or(0),
        ),
        (
            "duplicates beyond what was in flight",
            (duplicates as i64 - in_flight_at_kills).max(0),
        ),
    ] {
        if n > 0 {
            problems.push(format!("{what}: {n}"));
        }
    }
    if !problems.is_empty() {
        for (n, log) in logs.iter().enumerate() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            println!("  node {n} log (last lines): {tail:#?}");
        }
        bail!("the ledger does not hold: {}", problems.join("; "));
    }
    println!("  the ledger holds");
    Ok(())
}
