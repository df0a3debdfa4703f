//! Events API benchmark: a client posts batches of events to the real HTTP server
//! (`autofunnel::server::serve` on loopback, one runtime over a fresh database) one batch after
//! the other, in three phases of N events each: `join` for new addresses (each starts the
//! funnel and queues its first email), `upgrade` for those leads (each moves its lead to the
//! next stage, which queues an email), and `pageview` (stored, nothing listens). Prints each
//! phase's events per second, its batch latencies and the CPU an event cost the process (the
//! server's work and the client's, which builds and posts the batches), then checks the
//! database: every lead has one run, in the stage its event moved it to, and no event is left
//! unprocessed.
//!
//! `cargo bench --bench events -- [EVENTS] [--batch B] [--database URL]` (defaults 20,000
//! events, batches of 1,000, a fresh SQLite file; a PostgreSQL database is emptied first).

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use sea_orm::Database;

/// The allocator of the `autofunnel` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "events bench api token";

const FUNNEL: &str = "name: Join\nfrom: \"Shop <shop@example.com>\"\nentry: { event: join }\n\
stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n    on:\n      \
- { event: upgrade, goto: paid }\n  - id: paid\n    steps:\n      - send: thanks\n      - wait: 30d\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    autofunnel::delivery::webhook::install_tls();
    let args = common::args();
    let n = common::count(&args).unwrap_or(20_000);
    let size: usize = common::flag(&args, "--batch").unwrap_or(1_000);
    let dir = tempfile::tempdir()?;
    let url = common::database_url(&args, &dir.path().join("bench.db")).await?;
    let mut sink = autofunnel::funnel::diag::Sink::new(Path::new("join.yaml"));
    let funnel = autofunnel::funnel::parse_text(Path::new("join.yaml"), FUNNEL, &mut sink)
        .ok_or_else(|| anyhow::anyhow!("the bench funnel does not parse"))?;
    let store = autofunnel::store::Store::connect(&url).await?;
    store.migrate().await?;
    let rt =
        autofunnel::runtime::Runtime::new(store.clone(), vec![funnel], "bench", chrono::Utc::now())
            .await?;
    let state = autofunnel::server::AppState {
        api_token: Some(Arc::from(TOKEN)),
        ..autofunnel::server::AppState::new(Arc::new(rt), b"bench link secret")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/api/v1/events", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(autofunnel::server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    println!(
        "events: {n} events a phase in batches of {size}, one batch at a time, to the events API ({})",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!("| events | events/s | batch p50 | batch p99 | slowest | CPU per event |");
    println!("|---|---|---|---|---|---|");
    for (what, kind) in [
        ("start the funnel (`join`, new addresses)", "join"),
        ("move a lead (`upgrade`)", "upgrade"),
        ("only stored (`pageview`)", "pageview"),
    ] {
        let mut took = Vec::new();
        let begun = Instant::now();
        let cpu0 = common::cpu_seconds();
        for b in 0..n.div_ceil(size) {
            let events: Vec<serde_json::Value> = (b * size..((b + 1) * size).min(n))
                .map(|i| serde_json::json!({ "email": format!("l{i}@events.test"), "event": kind }))
                .collect();
            let body = serde_json::json!({ "events": events });
            let t = Instant::now();
            let r = client
                .post(&base)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await?;
            let status = r.status();
            if !status.is_success() {
                bail!("batch {b} of {kind}: {status} {}", r.text().await?);
            }
            r.bytes().await?;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let secs = begun.elapsed().as_secs_f64();
        let cpu = common::cpu_seconds() - cpu0;
        took.sort_by(f64::total_cmp);
        let at = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
        println!(
            "| {what} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} µs |",
            n as f64 / secs,
            at(0.5),
            at(0.99),
            took.last().copied().unwrap_or(0.0),
            cpu / n as f64 * 1e6
        );
    }
    let _ = stop.send(());
    let _ = server.await;
    let db = Database::connect(&url).await?;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { common::query_count(&db, sql).await }
    };
    let leads = count("SELECT COUNT(*) FROM leads").await?;
    let events = count("SELECT COUNT(*) FROM events").await?;
    let unprocessed = count("SELECT COUNT(*) FROM events WHERE processed_at IS NULL").await?;
    let runs = count("SELECT COUNT(*) FROM enrollments").await?;
    let paid = count("SELECT COUNT(*) FROM enrollments WHERE stage_id = 'paid'").await?;
    let mails = count("SELECT COUNT(*) FROM messages").await?;
    println!(
        "  {leads} leads, {events} events ({unprocessed} unprocessed), {runs} runs ({paid} in `paid`), {mails} emails queued; peak RSS {:.0} MB",
        common::peak_rss_mb()
    );
    let n = n as i64;
    if leads != n || runs != n || paid != n || events != 3 * n || mails != 2 * n || unprocessed != 0
    {
        bail!("the database does not hold what was posted");
    }
    Ok(())
}
