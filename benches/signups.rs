//! Signup benchmark: `wrk` posts landing-page signups, each with its own address, to a real
//! `autofunnel run` (scheduler and sender running, the welcome starter project, welcome email
//! to the outbox folder) for D seconds, and prints signups/s, the latencies and the CPU a
//! signup cost the server (its welcome email's included), wrk and PostgreSQL; then the
//! database is checked: every signup stored exactly once (one lead, one `signup` event, one
//! touch, one enrollment).
//!
//! `cargo bench --bench signups -- [--seconds D] [--connections C] [--threads T]
//! [--send-rate R] [--database URL]` (defaults 60 s, 32 connections, 1 wrk thread, the sender
//! unthrottled, a fresh SQLite file). With `--database
//! postgres://…` the database is emptied first. Needs `wrk` (Debian package `wrk`).

#[path = "common.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::Database;

/// Each wrk thread numbers its own addresses, so no two requests share one.
const SCRIPT: &str = r#"
local counter = 0
local threads = {}
local id = 0
function setup(thread)
  id = id + 1
  thread:set("tid", id)
  table.insert(threads, thread)
end
function init(args)
  ok = 0
  bad = 0
end
function request()
  counter = counter + 1
  local body = "email=w" .. tid .. "-" .. counter .. "%40bench.test&first_name=Bench&utm_source=wrk&timezone=Europe%2FBerlin"
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded", ["Accept"] = "application/json"}, body)
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    b = b + t:get("bad")
  end
  io.write(string.format("OK %d\nBAD %d\n", o, b))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("P%s %.3f\n", p, latency:percentile(p) / 1000.0))
  end
end
"#;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Status code of `GET path`, or `None` while nothing listens.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn value(out: &str, key: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .with_context(|| format!("wrk printed no `{key}`:\n{out}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::args();
    let seconds: u64 = common::flag(&args, "--seconds").unwrap_or(60);
    let connections: usize = common::flag(&args, "--connections").unwrap_or(32);
    let threads: usize = common::flag(&args, "--threads").unwrap_or(1);
    let send_rate: Option<f64> = common::flag(&args, "--send-rate");
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let bin = env!("CARGO_BIN_EXE_autofunnel");
    let init = Command::new(bin)
        .args(["init", "--example", "welcome"])
        .arg(&project)
        .output()?;
    if !init.status.success() {
        bail!(
            "autofunnel init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let url = common::database_url(&args, &project.join("bench.db")).await?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let mut cmd = Command::new(bin);
    if let Some(r) = send_rate {
        cmd.env("AUTOFUNNEL_SEND_RATE", r.to_string());
    }
    let mut server = Server(
        cmd.arg("--project")
            .arg(&project)
            .arg("run")
            .env("AUTOFUNNEL_DATABASE_URL", &url)
            .env("AUTOFUNNEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUTOFUNNEL_BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("AUTOFUNNEL_SIGNUPS_PER_IP_PER_MINUTE", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start autofunnel run")?,
    );
    let started = Instant::now();
    while get_status(port, "/healthz") != Some(200) {
        if let Some(s) = server.0.try_wait()? {
            bail!(
                "autofunnel run exited ({s}): {}",
                std::fs::read_to_string(dir.path().join("server.log"))?
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("autofunnel run did not answer /healthz within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = dir.path().join("signup.lua");
    std::fs::write(&script, SCRIPT)?;
    let backend = if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let sending = match send_rate {
        Some(r) => format!("sender at send_rate {r}/s"),
        None => "sender unthrottled".to_string(),
    };
    println!(
        "signups: wrk -t{threads} -c{connections} -d{seconds}s against autofunnel run on {backend} \
         (starter project: each signup queues a welcome email; scheduler running, {sending})"
    );
    let server_cpu0 = common::cpu_seconds_of_command("autofunnel");
    let db_cpu0 = common::cpu_seconds_of_command("postgres");
    let wrk_cpu0 = common::children_cpu_seconds();
    let out = Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".into(),
            "-s".into(),
            script.display().to_string(),
            format!("http://127.0.0.1:{port}/f/welcome"),
        ])
        .output()
        .context("cannot run wrk: install the Debian package `wrk`")?;
    let server_cpu = common::cpu_seconds_of_command("autofunnel") - server_cpu0;
    let wrk_cpu = common::children_cpu_seconds() - wrk_cpu0;
    let db_cpu = common::cpu_seconds_of_command("postgres") - db_cpu0;
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let ok = value(&out, "OK")?;
    let bad = value(&out, "BAD")?;
    let rps = value(&out, "Requests/sec:")?;
    println!(
        "  {:.0} signups/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        ok / seconds as f64,
        value(&out, "P50")?,
        value(&out, "P90")?,
        value(&out, "P99 ")?,
        value(&out, "P99.9")?,
    );
    println!("  wrk: {rps:.0} requests/s, {ok} answered 200, {bad} otherwise");
    println!(
        "  CPU per signup: autofunnel run {:.1} µs ({:.2} cores), wrk {:.1} µs ({:.2} cores)",
        server_cpu / ok * 1e6,
        server_cpu / seconds as f64,
        wrk_cpu / ok * 1e6,
        wrk_cpu / seconds as f64
    );
    if backend == "PostgreSQL" {
        println!(
            "  CPU per signup in PostgreSQL (every `postgres` process): {:.1} µs ({:.2} cores)",
            db_cpu / ok * 1e6,
            db_cpu / seconds as f64
        );
    }
    println!(
        "  autofunnel run peak RSS {:.0} MB",
        common::peak_rss_mb_of(&server.0.id().to_string())
    );
    // The server stops like it would under systemd; requests still in flight then end.
    Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status()?;
    let status = server.0.wait()?;
    if !status.success() {
        bail!("autofunnel run stopped with {status}");
    }
    let db = Database::connect(&url).await?;
    let leads = common::query_count(
        &db,
        "SELECT COUNT(*) FROM leads WHERE email LIKE '%@bench.test'",
    )
    .await?;
    let distinct = common::query_count(
        &db,
        "SELECT COUNT(DISTINCT email) FROM leads WHERE email LIKE '%@bench.test'",
    )
    .await?;
    let not_once = |table: &str, filter: &str| {
        format!(
            "SELECT COUNT(*) FROM leads l WHERE l.email LIKE '%@bench.test' AND \
             (SELECT COUNT(*) FROM {table} x WHERE x.lead_id = l.id {filter}) <> 1"
        )
    };
    let events = common::query_count(&db, &not_once("events", "AND x.kind = 'signup'")).await?;
    let touches = common::query_count(&db, &not_once("touches", "")).await?;
    let enrollments = common::query_count(&db, &not_once("enrollments", "")).await?;
    println!(
        "  stored: {leads} leads ({distinct} distinct addresses); leads without exactly one \
         signup event {events}, touch {touches}, enrollment {enrollments}"
    );
    // Requests wrk cut off at the end may have been stored without wrk counting their answer.
    let unanswered = leads - ok as i64;
    println!("  stored but unanswered when wrk stopped: {unanswered} (at most {connections})");
    if distinct != leads
        || events + touches + enrollments != 0
        || unanswered < 0
        || unanswered > connections as i64
        || bad > 0.0
    {
        bail!("signups were lost, refused or stored twice");
    }
    println!("  every signup stored exactly once");
    Ok(())
}
