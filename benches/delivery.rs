//! Delivery benchmark: N emails queued by the engine are composed (templates rendered for each
//! lead) and sent over SMTP to postfix's `smtp-sink` on loopback, next to the raw rate of
//! `smtp-source` into the same sink, measured in the same run.
//!
//! `cargo bench --bench delivery -- [MESSAGES] [--connections C] [--no-tracking]` (defaults
//! 100,000 and 32; tracked links and the open pixel are on unless `--no-tracking`).
//! Needs `smtp-sink` and `smtp-source` (Debian package `postfix`; the daemon need not run).

#[path = "common.rs"]
mod common;
use common::peak_rss_mb;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use autofunnel::delivery::{Sender, Transport, smtp};
use autofunnel::domain::{Consent, Email};
use autofunnel::runtime::Runtime;
use autofunnel::store::{LeadInput, Store};
use chrono::{TimeZone, Utc};

/// The allocator of the `autofunnel` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    let args = common::args();
    let connections = common::flag(&args, "--connections").unwrap_or(32);
    let n = common::count(&args).unwrap_or(100_000);
    let tracking = !args.iter().any(|a| a == "--no-tracking");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
    let mut sink = Command::new(common::tool("smtp-sink")?);
    if root {
        sink.args(["-u", "nobody"]);
    }
    let mut sink = sink
        .args([addr.as_str(), "1000"])
        .stdout(Stdio::null())
        .spawn()?;
    // Wait until the sink accepts connections (bounded).
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let start = Instant::now();
    let status = Command::new(common::tool("smtp-source")?)
        .args(["-d", "-s", "20", "-m", &n.to_string(), "-l", "2000", &addr])
        .status()?;
    anyhow::ensure!(status.success(), "smtp-source failed");
    let raw = n as f64 / start.elapsed().as_secs_f64();
    println!("reference: smtp-source -d -s 20 -m {n} -l 2000 → {raw:.0} msg/s");

    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}/bench.db", dir.path().display())).await?;
    store.migrate().await?;
    let p = common::example_project()?;
    // Monday 10:00 in Moscow: inside the course funnel's send window.
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap();
    let rt = Arc::new(Runtime::new(store.clone(), p.funnels.clone(), "bench", t0).await?);
    let input = LeadInput {
        first_name: Some("Анна".into()),
        timezone: Some(chrono_tz::Europe::Moscow),
        ..Default::default()
    };
    let course = autofunnel::domain::FunnelId::parse("relationships-course")?;
    for c in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let leads: Vec<(Email, LeadInput)> = c
            .iter()
            .map(|i| {
                (
                    Email::parse(&format!("lead{i}@bench.example.com")).expect("address"),
                    input.clone(),
                )
            })
            .collect();
        let ids = store.import_leads(&leads, Consent::Confirmed, t0).await?;
        for ids in ids.chunks(1_000) {
            rt.enroll_many(ids, &course, t0).await?;
        }
    }
    let target = smtp::Target::parse(&format!("smtp://{addr}")).map_err(anyhow::Error::msg)?;
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::smtp(target, connections),
        "https://go.example.com",
        b"bench secret, 16+ chars",
    )
    .with_tracking(tracking, tracking);
    let start = Instant::now();
    let cpu = common::cpu_seconds();
    let t = sender.drain(t0).await?;
    let cpu = common::cpu_seconds() - cpu;
    anyhow::ensure!(
        t.failed == 0 && t.retried == 0,
        "unexpected failures: {t:?}"
    );
    let sent = t.sent;
    let secs = start.elapsed().as_secs_f64();
    let ours = sent as f64 / secs;
    println!(
        "autofunnel: {sent} emails outbox → rendered{} → SMTP ({connections} connections) in {secs:.1} s = {ours:.0} msg/s ({:.0} % of the reference)",
        if tracking { " with tracking" } else { "" },
        100.0 * ours / raw
    );
    println!(
        "CPU: {cpu:.1} s of autofunnel's own over {secs:.1} s ({:.0} µs per email, {:.2} cores)",
        cpu * 1e6 / sent as f64,
        cpu / secs
    );
    println!("outbox: {:?}", store.outbox_counts().await?);
    println!("peak RSS: {:.1} MB", peak_rss_mb());
    let _ = sink.kill();
    let _ = sink.wait();
    Ok(())
}
