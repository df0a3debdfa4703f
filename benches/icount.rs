//! A fixed small workload for counting instructions (`benches/icount.sh` runs it under
//! callgrind): on the example project and a SQLite file, phase by phase,
//!
//! 1. `setup`: migrate, load the project, import N confirmed leads;
//! 2. `enroll`: enroll them in the course funnel, 500 at a time (each queues `book-delivery`);
//! 3. `rounds`: two days later, scheduler rounds until none is due (each lead moves to the
//!    tripwire stage: one transition each);
//! 4. `emails`: the sender drains the outbox into `.eml` files;
//! 5. `signups`: N landing-page signups to `free-book`, queued and committed in groups of 100
//!    (on the wall clock: the signup path reads it);
//! 6. `plain`: the N leads enrolled, 500 at a time, in a one-stage funnel whose first step
//!    sends an email;
//! 7. `splits`: the same in one whose first step is an A/B split (each run's first variant
//!    moves its counters to the origin that keeps it): the difference is what a split costs.
//!
//! `cargo bench --bench icount -- [N] --until PHASE` runs the phases up to PHASE and prints how
//! many items each handled. Each phase ends in [`phase_done`], on entering which callgrind
//! dumps and zeroes its counts (`--dump-before`), so one run counts every phase by itself.
//! Single-threaded and on a fixed clock and folder, so the same code gives nearly the same
//! count run after run.

#[path = "common.rs"]
mod common;

use autofunnel::delivery::{Sender, Transport};
use autofunnel::domain::{Consent, Email, FunnelId};
use autofunnel::runtime::Runtime;
use autofunnel::store::{LeadInput, NewSignup, NewTouch, Store};
use chrono::{Duration, TimeZone, Utc};

/// The allocator of the `autofunnel` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PHASES: [&str; 7] = [
    "setup", "enroll", "rounds", "emails", "signups", "plain", "splits",
];

/// The one-stage funnels of the `plain` and `splits` phases: `SEND` is their first step's.
const MINI: &str = r#"name: NAME
from: "School <school@example.com>"
entry: { api: true }
stages:
  - id: offer
    steps:
      - send: SEND
      - wait: 7d
      - exit: not_converted
"#;

/// The end of a phase, with how many items it handled: printed, and the function callgrind
/// dumps its counts before (`benches/icount.sh`).
#[inline(never)]
fn phase_done(phase: &str, items: usize) {
    println!("{phase}: {}", std::hint::black_box(items));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    let args = common::args();
    let n = common::count(&args).unwrap_or(2_000);
    let until: String = common::flag(&args, "--until").unwrap_or_else(|| "splits".into());
    let last = PHASES
        .iter()
        .position(|p| *p == until)
        .ok_or_else(|| anyhow::anyhow!("--until takes one of {PHASES:?}"))?;
    let dir = std::env::temp_dir().join(format!("autofunnel-icount-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("outbox"))?;
    let store = Store::connect(&format!("sqlite://{}/icount.db", dir.display())).await?;
    store.migrate().await?;
    let p = common::example_project()?;
    // Monday 10:00 in Moscow: inside the course funnel's send window.
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap();
    let mut funnels = p.funnels.clone();
    for (name, send) in [
        ("plain", "offer-a"),
        ("splits", "{ split: [offer-a, offer-b] }"),
    ] {
        let path = std::path::PathBuf::from(format!("funnels/{name}.yaml"));
        let text = MINI.replace("NAME", name).replace("SEND", send);
        let mut sink = autofunnel::funnel::Sink::new(&path);
        let f = autofunnel::funnel::parse_text(&path, &text, &mut sink)
            .ok_or_else(|| anyhow::anyhow!("the {name} funnel does not parse"))?;
        funnels.push(f);
    }
    let rt = Runtime::new(store.clone(), funnels, "icount", t0).await?;
    let input = LeadInput {
        first_name: Some("Анна".into()),
        timezone: Some(chrono_tz::Europe::Moscow),
        ..Default::default()
    };
    let leads: Vec<(Email, LeadInput)> = (0..n)
        .map(|i| {
            let e = Email::parse(&format!("lead{i}@icount.example.com")).expect("an address");
            (e, input.clone())
        })
        .collect();
    let ids = store.import_leads(&leads, Consent::Confirmed, t0).await?;
    phase_done("setup", n);
    let course = FunnelId::parse("relationships-course")?;
    if last >= 1 {
        for c in ids.chunks(500) {
            rt.enroll_many(c, &course, t0).await?;
        }
        phase_done("enroll", n);
    }
    if last >= 2 {
        let due = t0 + Duration::days(2) + Duration::minutes(1);
        let mut items = 0;
        loop {
            let done = rt.tick(due).await?;
            if done == 0 {
                break;
            }
            items += done;
        }
        phase_done("rounds", items);
    }
    if last >= 3 {
        let sender = Sender::new(
            store.outbox(),
            p.clone(),
            Transport::Folder(dir.join("outbox")),
            "https://go.example.com",
            b"icount secret, 16+ chars",
        );
        let t = sender.drain(t0 + Duration::days(3)).await?;
        anyhow::ensure!(t.failed == 0, "emails failed: {t:?}");
        phase_done("emails", t.sent);
    }
    if last >= 4 {
        let funnels = vec![course.clone()];
        for group in (0..n).collect::<Vec<_>>().chunks(100) {
            let tickets: Vec<_> = group
                .iter()
                .map(|i| {
                    let signup = NewSignup {
                        email: Email::parse(&format!("visitor{i}@icount.example.com"))
                            .expect("an address"),
                        input: LeadInput::default(),
                        touch: NewTouch {
                            channel: "form".into(),
                            source: Some("icount".into()),
                            form: Some("free-book".into()),
                            ..Default::default()
                        },
                        form: "free-book".into(),
                        requester: Default::default(),
                        consent_text: None,
                    };
                    rt.queue_signup(signup, funnels.clone())
                })
                .collect();
            for t in tickets {
                rt.signup_stored(t).await?;
            }
        }
        phase_done("signups", n);
    }
    for (i, name) in [(5, "plain"), (6, "splits")] {
        if last >= i {
            let funnel = FunnelId::parse(name)?;
            for c in ids.chunks(500) {
                rt.enroll_many(c, &funnel, t0).await?;
            }
            phase_done(name, n);
        }
    }
    store.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
