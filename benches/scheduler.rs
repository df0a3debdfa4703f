//! Scheduler benchmark on the course-seller funnel (`relationships-course`), with the delivery
//! side only counting (the outbox is filled, nothing is sent):
//!
//! 1. import N confirmed leads and enroll them in batches of 1,000, each batch `1000 / RATE`
//!    seconds of funnel time after the previous one (each enrollment queues `book-delivery`
//!    and waits 2 days);
//! 2. **paced**: the runtime's own loop runs on a clock that starts when the first 2-day timer
//!    is due and goes at real speed, so RATE timers per second fall due; each lead moves to
//!    the tripwire stage and is offered the webinar. Lag is the time from a timer being due to
//!    the round that claimed it (the round's clock is stored as the enrollment's `updated_at`);
//! 3. **backlog**: a day later every lead's next timer is due at once and rounds drain them
//!    as fast as they can (`webinar-reminder`): the scheduler's capacity.
//!
//! `cargo bench --bench scheduler -- [LEADS] [--rate R] [postgres://…] [--processes K]`
//! (defaults: 1,000,000 leads, 20,000 timers/s, SQLite in a temporary folder); with
//! `--processes K` the backlog is drained by K processes at once (PostgreSQL).

#[path = "common.rs"]
mod common;
use common::peak_rss_mb;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::funnel::{self, Sink};
use autofunnel::runtime::Runtime;
use autofunnel::store::{LeadInput, Store};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// [`percentile`] of values given in order, each with how many times it counts.
fn weighted_percentile(sorted: &[(f64, usize)], p: f64) -> f64 {
    let total: usize = sorted.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return f64::NAN;
    }
    let k = ((total - 1) as f64 * p).round() as usize;
    let mut seen = 0;
    for (v, n) in sorted {
        seen += n;
        if seen > k {
            return *v;
        }
    }
    f64::NAN
}

const CHUNK: usize = 1_000;

/// The allocator of the `autofunnel` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    let args = common::args();
    if let Some(url) = common::flag::<String>(&args, "--drain") {
        return drain(&url, &args).await;
    }
    let rate: f64 = common::flag(&args, "--rate").unwrap_or(20_000.0);
    let n = common::count(&args).unwrap_or(1_000_000);
    let pg = args.iter().find(|a| a.starts_with("postgres")).cloned();
    let dir = tempfile::tempdir()?;
    let url = pg
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    let file = Path::new("funnels/relationships-course.yaml");
    let mut sink = Sink::new(file);
    let f = funnel::parse_text(file, &std::fs::read_to_string(file)?, &mut sink)
        .expect("example funnel parses");
    // Monday 10:00 in Moscow: inside the funnel's send window.
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap();
    let rt = Arc::new(Runtime::new(store.clone(), vec![f], "bench", t0).await?);
    let run_id = std::process::id();
    let backend = if pg.is_some() { "postgres" } else { "sqlite" };
    println!("backend={backend} leads={n} rate={rate}/s");

    let start = Instant::now();
    let mut leads: Vec<LeadId> = Vec::with_capacity(n);
    let input = LeadInput {
        timezone: Some(chrono_tz::Europe::Moscow),
        ..Default::default()
    };
    for c in (0..n).collect::<Vec<_>>().chunks(10 * CHUNK) {
        let batch: Vec<(Email, LeadInput)> = c
            .iter()
            .map(|i| {
                let e = Email::parse(&format!("lead{i}-{run_id}@bench.example.com"))
                    .expect("valid address");
                (e, input.clone())
            })
            .collect();
        leads.extend(store.import_leads(&batch, Consent::Confirmed, t0).await?);
    }
    let import_secs = start.elapsed().as_secs_f64();
    analyze(&store).await?;
    println!(
        "import: {:.0} leads/s ({import_secs:.1} s)",
        n as f64 / import_secs
    );

    let gap = Duration::microseconds((CHUNK as f64 / rate * 1e6) as i64);
    let start = Instant::now();
    let cpu0 = common::cpu_seconds();
    let mut analyzed = 0;
    for (k, c) in leads.chunks(CHUNK).enumerate() {
        rt.enroll_many(c, &course(), t0 + gap * k as i32).await?;
        // Autovacuum analyzes a table each time it grew by a tenth.
        let enrolled = (k + 1) * CHUNK;
        if enrolled >= analyzed + analyzed / 10 + CHUNK {
            analyze(&store).await?;
            analyzed = enrolled;
        }
    }
    let enroll_secs = start.elapsed().as_secs_f64();
    let enroll_cpu = common::cpu_seconds() - cpu0;
    println!(
        "enroll: {:.0} enrollments/s ({enroll_secs:.1} s, batches of {CHUNK}, each queues book-delivery; {:.1} µs CPU each)",
        n as f64 / enroll_secs,
        enroll_cpu / n as f64 * 1e6
    );
    println!("peak RSS after enrolling: {:.1} MB", peak_rss_mb());
    analyze(&store).await?;

    // Paced: the runtime's loop on a clock that starts when the first timer is due.
    let due0 = t0 + Duration::days(2);
    if let Some(k) = common::flag::<usize>(&args, "--processes") {
        // Every first timer due at once, drained by K processes instead.
        let all_due = due0 + Duration::seconds((n as f64 / rate) as i64 + 60);
        return processes(&url, k.max(1), all_due, n).await;
    }
    let origin = Instant::now();
    let paced_cpu0 = common::cpu_seconds();
    let clock = move || due0 + Duration::from_std(origin.elapsed()).unwrap_or_default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.run_with_clock(clock, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let before = rt.committed();
    while rt.committed() - before < n as u64 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let paced_secs = origin.elapsed().as_secs_f64();
    let paced_cpu = common::cpu_seconds() - paced_cpu0;
    let _ = stop_tx.send(());
    runner.await?;
    let mut lags = lags(&store, &leads, Duration::days(2)).await?;
    // What the bench keeps for its figures (8 bytes a lead each) is let go before the backlog,
    // so the peak RSS is the scheduler's, not the bench's bookkeeping.
    drop(leads);
    lags.sort_by(f64::total_cmp);
    println!(
        "paced: {n} timers due at {rate:.0}/s: {n} transitions in {paced_secs:.2} s = {:.0} transitions/s, \
         {:.1} µs CPU each; wake-up lag p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        n as f64 / paced_secs,
        paced_cpu / n as f64 * 1e6,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    drop(lags);

    // Backlog: a day later every lead's reminder timer is due at once.
    // Each reminder is due a day after its first timer was handled, which the paced phase's
    // clock did by `paced_secs` at the latest (not by the last due time: a run handled late
    // waits from then).
    let all_due = due0 + Duration::days(1) + Duration::seconds(paced_secs.ceil() as i64 + 60);
    let start = Instant::now();
    let drain_cpu0 = common::cpu_seconds();
    let mut transitions = 0;
    // Each round's lag and how many transitions it made: the rounds come in order of lag.
    let mut round_lags: Vec<(f64, usize)> = Vec::new();
    loop {
        let claimed_at = start.elapsed().as_secs_f64();
        let done = rt.tick(all_due).await?;
        if done == 0 {
            break;
        }
        round_lags.push((claimed_at, done));
        transitions += done;
    }
    let drain_secs = start.elapsed().as_secs_f64();
    let drain_cpu = common::cpu_seconds() - drain_cpu0;
    anyhow::ensure!(
        transitions == n,
        "the backlog drained {transitions} timers, not the {n} reminders"
    );
    println!(
        "backlog: {transitions} timers due at once drained in {drain_secs:.2} s = {:.0} transitions/s, \
         {:.1} µs CPU each; lag p50 {:.3} s, p99 {:.3} s",
        transitions as f64 / drain_secs,
        drain_cpu / transitions as f64 * 1e6,
        weighted_percentile(&round_lags, 0.5),
        weighted_percentile(&round_lags, 0.99)
    );
    println!("peak RSS: {:.1} MB", peak_rss_mb());
    Ok(())
}

/// The backlog drained by `k` processes of this bench at once (`--drain`), each a runtime of
/// its own on the same database, as `autofunnel run` nodes are: the throughput they get
/// together and each, and the CPU a transition costs in them and in the database server.
async fn processes(url: &str, k: usize, due: DateTime<Utc>, n: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server0 = common::cpu_seconds_of_command("postgres");
    let children: Vec<std::process::Child> = (0..k)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--drain", url, "--due", &due.to_rfc3339(), "--owner"])
                .arg(format!("bench-{i}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0u64;
    let mut cpu = 0.0;
    // From the processes' start to the last round that did something in any of them.
    let mut wall: f64 = 0.0;
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (done, secs, used): (u64, f64, f64) = text
            .split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect::<Vec<_>>()
            .get(..3)
            .map(|v| (v[0] as u64, v[1], v[2]))
            .ok_or_else(|| anyhow::anyhow!("process {i} said: {text}"))?;
        println!(
            "  process {i}: {done} transitions in {secs:.2} s = {:.0}/s, {:.1} µs CPU each",
            done as f64 / secs,
            used / done.max(1) as f64 * 1e6
        );
        total += done;
        cpu += used;
        wall = wall.max(secs);
    }
    let server = common::cpu_seconds_of_command("postgres") - server0;
    println!(
        "backlog, {k} processes: {total} of {n} timers drained in {wall:.2} s = {:.0} transitions/s; \
         CPU per transition {:.1} µs in the processes + {:.1} µs in PostgreSQL",
        total as f64 / wall,
        cpu / total.max(1) as f64 * 1e6,
        server / total.max(1) as f64 * 1e6
    );
    Ok(())
}

/// One process of [`processes`]: rounds until nothing is due; prints the transitions, the
/// seconds and the CPU seconds it used.
async fn drain(url: &str, args: &[String]) -> anyhow::Result<()> {
    let due: DateTime<Utc> = common::flag::<String>(args, "--due")
        .and_then(|d| DateTime::parse_from_rfc3339(&d).ok())
        .ok_or_else(|| anyhow::anyhow!("--drain needs --due RFC3339"))?
        .with_timezone(&Utc);
    let owner: String = common::flag(args, "--owner").unwrap_or_else(|| "bench".into());
    let store = Store::connect(url).await?;
    let file = Path::new("funnels/relationships-course.yaml");
    let mut sink = Sink::new(file);
    let f = funnel::parse_text(file, &std::fs::read_to_string(file)?, &mut sink)
        .expect("example funnel parses");
    let rt = Runtime::new(store, vec![f], &owner, due).await?;
    let start = Instant::now();
    let cpu0 = common::cpu_seconds();
    let mut done = 0usize;
    // Until a second without work (another process may hold the last claims); the time and
    // CPU are taken at the last round that did something.
    let (mut last, mut cpu) = (start, cpu0);
    while last.elapsed() < std::time::Duration::from_secs(1) {
        let n = rt.tick(due).await?;
        if n == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        }
        done += n;
        (last, cpu) = (Instant::now(), common::cpu_seconds());
    }
    println!(
        "{done} {:.3} {:.3}",
        (last - start).as_secs_f64(),
        cpu - cpu0
    );
    Ok(())
}

/// PostgreSQL on this machine runs with autovacuum off; a server in service analyzes its
/// tables as they grow. Do what autovacuum would (after each tenth of growth), so plans see
/// the tables' real sizes; without statistics a 512-id `IN` list is planned as a full scan.
async fn analyze(store: &Store) -> anyhow::Result<()> {
    if store.backend() == autofunnel::store::Backend::Postgres {
        store.analyze().await?;
    }
    Ok(())
}

/// For each lead, the claim time of its tripwire transition minus the time its timer was due
/// (entry + `wait`), in seconds.
async fn lags(store: &Store, leads: &[LeadId], wait: Duration) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(leads.len());
    for c in leads.chunks(CHUNK) {
        for e in store.enrollments_of_many(c, &course()).await? {
            let due: DateTime<Utc> = e.entered_at + wait;
            out.push((e.state.stage_entered_at - due).as_seconds_f64());
        }
    }
    Ok(out)
}

/// The benchmarked funnel's id.
fn course() -> autofunnel::domain::FunnelId {
    autofunnel::domain::FunnelId::parse("relationships-course").expect("a funnel id")
}
