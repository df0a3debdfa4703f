//! Webhook benchmark: N webhook calls queued by a funnel's `webhook:` step (N leads enrolled),
//! delivered by `Hooks::drain` (what `run` does) into a receiver on 127.0.0.1 that answers 200 at once (in this
//! process); next to it, in the same run, `wrk` posting a body of the same size to the same
//! receiver with the same number of connections: the reference.
//!
//! `cargo bench --bench webhooks -- [N] [--connections C] [postgres://…]` (defaults 20,000
//! calls, 16 connections, SQLite in a temporary folder). Needs `wrk` (Debian package `wrk`).

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use autofunnel::delivery::webhook::Hooks;
use autofunnel::domain::{Consent, Email, FunnelId};
use autofunnel::funnel::{self, Sink};
use autofunnel::runtime::Runtime;
use autofunnel::store::{LeadInput, Store};
use chrono::{TimeZone, Utc};

/// The allocator of the `autofunnel` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The end of a phase: callgrind dumps its counts on entering it (`valgrind --tool=callgrind
/// --dump-before='*phase_done*'`), so the delivery is counted by itself.
#[inline(never)]
fn phase_done(phase: &str, items: u64) {
    eprintln!("{phase}: {}", std::hint::black_box(items));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    let args = common::args();
    let n = common::count(&args).unwrap_or(20_000);
    let connections: usize = common::flag(&args, "--connections").unwrap_or(16);
    let pg = args.iter().find(|a| a.starts_with("postgres")).cloned();
    let wrk = common::tool("wrk")?;

    // The receiver: 200 at once, counting what it got.
    let got = Arc::new(AtomicU64::new(0));
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |_body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    got.fetch_add(1, Ordering::Relaxed);
                    ""
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let db = pg
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let store = Store::connect(&db).await?;
    store.migrate().await?;
    let text = format!(
        "name: Bench\nentry: {{ api: true }}\nwebhooks:\n  crm:\n    url: \"{url}\"\n\
         stages:\n  - id: won\n    steps:\n      - webhook: crm\n      - wait: 30d\n      - exit: completed\n"
    );
    let file = Path::new("funnels/bench.yaml");
    let mut sink = Sink::new(file);
    let f = funnel::parse_text(file, &text, &mut sink).expect("the bench funnel parses");
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap();
    let rt = Runtime::new(store.clone(), vec![f.clone()], "bench", t0).await?;
    let id = FunnelId::parse("bench")?;
    let run_id = std::process::id();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let leads: Vec<(Email, LeadInput)> = chunk
            .iter()
            .map(|i| {
                let e = Email::parse(&format!("lead{i}-{run_id}@bench.example.com"))
                    .expect("valid address");
                (e, LeadInput::default())
            })
            .collect();
        let ids = store.import_leads(&leads, Consent::Confirmed, t0).await?;
        rt.enroll_many(&ids, &id, t0).await?;
    }
    while rt.tick(t0).await? > 0 {}
    let project = Arc::new(autofunnel::project::Project {
        funnels: vec![f],
        templates: Default::default(),
    });
    let hooks = Hooks::new(store.outbox(), project).with_per_endpoint(connections);
    println!("{n} webhook calls queued; {connections} in flight at most");
    phase_done("queued", n as u64);

    let started = Instant::now();
    let cpu0 = common::cpu_seconds();
    let t = hooks.drain(t0).await?;
    anyhow::ensure!(t.retried + t.failed == 0, "calls failed: {t:?}");
    let delivered = t.delivered;
    phase_done("delivered", delivered as u64);
    let secs = started.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds() - cpu0;
    let ours = delivered as f64 / secs;
    println!(
        "autofunnel: {delivered} calls delivered in {secs:.2} s = {ours:.0} calls/s \
         ({:.1} µs CPU each, the receiver's included); the receiver got {}",
        cpu / delivered.max(1) as f64 * 1e6,
        got.load(Ordering::Relaxed)
    );

    // The reference: wrk posting a body of the same size with as many connections.
    let body = "x".repeat(420);
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{body}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let out = Command::new(wrk)
        .args(["-t2", &format!("-c{connections}"), "-d5s", "-s"])
        .arg(&script)
        .arg(&url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let reference: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk said: {text}"))?;
    println!(
        "wrk, same receiver, {connections} connections: {reference:.0} requests/s; \
         autofunnel makes {:.0} % of it",
        ours / reference * 100.0
    );
    Ok(())
}
