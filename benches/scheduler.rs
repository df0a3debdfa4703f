//! Scheduler benchmark: enroll N leads into the abandoned-cart funnel, then fire all their
//! first timers (due at once) and drain them. Prints enrollments/s, transitions/s, the wake-up
//! lag (from the moment all became due to each one's claim) p50/p99, and peak RSS.
//!
//! `cargo bench --bench scheduler -- [LEADS] [postgres://…]` (default 20000 leads, SQLite in a
//! temporary folder).

use std::path::Path;
use std::time::Instant;

use autofunnel::domain::Email;
use autofunnel::funnel::{self, Sink};
use autofunnel::runtime::Runtime;
use autofunnel::store::{LeadInput, Store};
use chrono::{Duration, TimeZone, Utc};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let pg = args.iter().find(|a| a.starts_with("postgres")).cloned();
    let dir = tempfile::tempdir()?;
    let url = pg
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    let file = Path::new("funnels/abandoned-cart.yaml");
    let mut sink = Sink::new(file);
    let f = funnel::parse_text(file, &std::fs::read_to_string(file)?, &mut sink)
        .expect("example funnel parses");
    let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
    let rt = Runtime::new(store.clone(), vec![f], "bench", t0).await?;
    let run_id = std::process::id();

    let start = Instant::now();
    for i in 0..n {
        let email = Email::parse(&format!("lead{i}-{run_id}@bench.example.com"))
            .map_err(|e| anyhow::anyhow!(e))?;
        let lead = store.upsert_lead(&email, LeadInput::default(), t0).await?;
        rt.enroll(lead.id, "abandoned-cart", t0).await?;
    }
    let enroll_secs = start.elapsed().as_secs_f64();

    // Every first timer is due at t0 + 1h; drain them as the scheduler does.
    let due = t0 + Duration::hours(1);
    let start = Instant::now();
    let mut lags = Vec::with_capacity(n);
    let mut transitions = 0;
    loop {
        let claimed_at = start.elapsed().as_secs_f64();
        let done = rt.tick(due).await?;
        if done == 0 {
            break;
        }
        lags.extend(std::iter::repeat_n(claimed_at, done));
        transitions += done;
    }
    let drain_secs = start.elapsed().as_secs_f64();
    lags.sort_by(f64::total_cmp);
    let backend = if pg.is_some() { "postgres" } else { "sqlite" };
    println!("backend={backend} leads={n}");
    println!(
        "enroll: {:.0} enrollments/s ({enroll_secs:.1} s, lead upsert + enroll each)",
        n as f64 / enroll_secs
    );
    println!(
        "timers: {transitions} transitions in {drain_secs:.2} s = {:.0} transitions/s",
        transitions as f64 / drain_secs
    );
    println!(
        "wake-up lag: p50 {:.3} s, p99 {:.3} s",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99)
    );
    println!("peak RSS: {:.1} MB", peak_rss_mb());
    Ok(())
}
