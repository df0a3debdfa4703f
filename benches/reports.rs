//! Reports benchmark: a course funnel (opt-in → tripwire → main course → upsell) with N leads
//! (default 1,000,000), ten events each, their stage history, emails, touches and score
//! milestones, written by bulk inserts; then each report is timed as `autofunnel report` makes
//! it (the store's reads and the pure computation), next to `SELECT count(*)` over the same
//! tables as the floor.
//!
//! `cargo bench --bench reports -- [LEADS] [postgres://…] [--keep DIR] [--recount]` (SQLite in a
//! temporary folder by default; `--keep DIR` writes the database into DIR and reuses it when it
//! is there; `--recount` makes a reused database's counters again; `--only TEXT` times only the
//! reports whose name contains TEXT); `--pages N` instead times the dashboard's pages through
//! the real server, N requests each, signed in as a browser is.

#[path = "common.rs"]
mod common;
use common::{peak_rss_mb, reset_peak_rss};

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use autofunnel::funnel::{self, Sink};
use autofunnel::report::request::{Answer, Params, Request, What};
use autofunnel::store::{ReportRead, Store};
use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::{ConnectionTrait, Database};

const FUNNEL: &str = r#"name: Course
from: "School <school@example.com>"
entry: { form: course }
products:
  guide: { price: 0, currency: EUR }
  mini: { price: 9, currency: EUR }
  course: { price: 290, currency: EUR }
  coaching: { price: 990, currency: EUR }
scoring:
  rules:
    - { event: click, points: 10 }
    - { event: open, points: 2 }
  mql: 20
  sql: 50
stages:
  - id: optin
    kind: lead_magnet
    offer: mini
    on: [{ event: purchase, product: mini, goto: tripwire }]
    steps:
      - send: welcome
      - wait: 7d
      - exit: not_converted
  - id: tripwire
    kind: tripwire
    offer: course
    on: [{ event: purchase, product: course, goto: main }]
    steps:
      - send:
          split: [tripwire, tripwire-b]
      - wait: 7d
      - exit: not_converted
  - id: main
    kind: main_product
    offer: coaching
    on: [{ event: purchase, product: coaching, goto: upsell }]
    steps:
      - send: course
      - wait: 7d
      - exit: not_converted
  - id: upsell
    kind: upsell
    steps:
      - send: coaching
      - wait: 3d
      - exit: converted
"#;

const SOURCES: [&str; 8] = [
    "google",
    "facebook",
    "youtube",
    "telegram",
    "vk",
    "newsletter",
    "partner",
    "direct",
];
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "centre"];
const STAGES: [(&str, &str, f64); 4] = [
    ("optin", "mini", 9.0),
    ("tripwire", "course", 290.0),
    ("main", "coaching", 990.0),
    ("upsell", "", 0.0),
];
/// The chance a lead moves on from each stage.
const ON: [f64; 3] = [0.35, 0.3, 0.4];

/// A small, fast, seeded generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }
}

/// Rows of one table, flushed as multi-row INSERTs of literal values.
struct Table {
    head: &'static str,
    rows: Vec<String>,
    written: u64,
}

impl Table {
    fn new(head: &'static str) -> Table {
        Table {
            head,
            rows: Vec::with_capacity(1000),
            written: 0,
        }
    }

    async fn push(&mut self, db: &impl ConnectionTrait, row: String) -> anyhow::Result<()> {
        self.rows.push(row);
        if self.rows.len() >= 500 {
            self.flush(db).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, db: &impl ConnectionTrait) -> anyhow::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let sql = format!("INSERT INTO {} VALUES {}", self.head, self.rows.join(","));
        db.execute_unprepared(&sql).await?;
        self.written += self.rows.len() as u64;
        self.rows.clear();
        Ok(())
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Writes `n` leads and everything they did; returns the number of rows per table.
async fn seed(url: &str, n: u64, t0: DateTime<Utc>, now: DateTime<Utc>) -> anyhow::Result<String> {
    // One connection, so the transactions below hold; the tables are flushed in any order, so
    // foreign keys are checked by nothing while seeding.
    let mut opts = sea_orm::ConnectOptions::new(url.to_string());
    opts.max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(opts).await?;
    if url.starts_with("sqlite") {
        db.execute_unprepared("PRAGMA synchronous = OFF").await?;
        db.execute_unprepared("PRAGMA foreign_keys = OFF").await?;
    } else {
        db.execute_unprepared("SET session_replication_role = replica")
            .await?;
    }
    let mut leads = Table::new(
        "leads (id, email, first_name, fields, timezone, consent, score, created_at, updated_at)",
    );
    let mut runs = Table::new(
        "enrollments (id, lead_id, funnel_id, funnel_version, stage_id, step_index, status, \
         stage_entered_at, entered_at, exited_at, outcome, updated_at)",
    );
    let mut visits = Table::new(
        "stage_history (enrollment_id, lead_id, funnel_id, stage_id, entered_at, exited_at, \
         exit_reason, next_stage_id)",
    );
    let mut events = Table::new(
        "events (lead_id, kind, payload, idempotency_key, occurred_at, received_at, processed_at)",
    );
    let mut emails = Table::new(
        "messages (kind, lead_id, enrollment_id, funnel_id, stage_id, step_id, template, \
         send_key, recipient, payload, status, attempts, created_at, sent_at, marks)",
    );
    let mut touches = Table::new(
        "touches (lead_id, occurred_at, channel, source, medium, campaign, content, form_id)",
    );
    let mut milestones =
        Table::new("milestones (enrollment_id, lead_id, funnel_id, kind, occurred_at)");
    let started = Instant::now();
    let day = Duration::days(1).num_milliseconds() as f64;
    let mut txn_rows = 0u64;
    db.execute_unprepared("BEGIN").await?;
    for id in 1..=n {
        let mut r = Rng(id.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let span = (now - t0).num_milliseconds() as f64;
        let entered = ms(t0) + (r.unit() * span) as i64;
        let source = r.pick(&SOURCES);
        let region = r.pick(&REGIONS);
        let email = format!("lead{id}@example.com");
        // The path: how far the lead got, and when it entered each stage.
        let mut at = vec![entered];
        let mut t = entered;
        for p in ON {
            if r.unit() >= p {
                break;
            }
            t += ((0.2 + r.unit() * 3.0) * day) as i64;
            if t > ms(now) {
                break;
            }
            at.push(t);
        }
        let last = at.len() - 1;
        let end = at[last] + (if last == 3 { 3.0 } else { 7.0 } * day) as i64;
        let (status, outcome, exited) = if end > ms(now) {
            ("'active'", "NULL".to_string(), None)
        } else if last == 3 {
            ("'exited'", "'converted'".to_string(), Some(end))
        } else {
            ("'exited'", "'not_converted'".to_string(), Some(end))
        };
        let null = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
        let score = if r.unit() < 0.3 { 25 } else { 4 };
        leads
            .push(
                &db,
                format!(
                    "({id}, '{email}', 'Lead', '{{\"region\":\"{region}\"}}', 'Europe/Berlin', \
                     'confirmed', {score}, {entered}, {entered})"
                ),
            )
            .await?;
        runs.push(
            &db,
            format!(
                "({id}, {id}, 'course', 1, '{}', 0, {status}, {}, {entered}, {}, {outcome}, {})",
                STAGES[last].0,
                at[last],
                null(exited),
                exited.unwrap_or(at[last])
            ),
        )
        .await?;
        let mut n_events = 0;
        let mut ev = |kind: &str, payload: String, at: i64| {
            n_events += 1;
            format!("({id}, '{kind}', '{payload}', NULL, {at}, {at}, {at})")
        };
        let mut ev_rows = vec![ev("signup", "{\"form\":\"course\"}".into(), entered)];
        for (i, s) in at.iter().enumerate() {
            let (stage, product, price) = STAGES[i];
            let (out, reason, next) = if i < last {
                (
                    Some(at[i + 1]),
                    "'event: purchase'".to_string(),
                    format!("'{}'", STAGES[i + 1].0),
                )
            } else {
                match exited {
                    Some(x) => (
                        Some(x),
                        format!("'exit: {}'", outcome.trim_matches('\'')),
                        "NULL".into(),
                    ),
                    None => (None, "NULL".into(), "NULL".into()),
                }
            };
            visits
                .push(
                    &db,
                    format!(
                        "({id}, {id}, 'course', '{stage}', {s}, {}, {reason}, {next})",
                        null(out)
                    ),
                )
                .await?;
            if i < last {
                ev_rows.push(ev(
                    "purchase",
                    format!(
                        "{{\"product\":\"{product}\",\"amount\":{price},\"currency\":\"EUR\"}}"
                    ),
                    at[i + 1],
                ));
            }
            // Two emails per stage: the offer and a reminder a day later; the tripwire's offer
            // is an A/B split (half the leads get `tripwire-b`), marked as queued.
            let b = stage == "tripwire" && id % 2 == 1;
            let offer = if b {
                format!("{stage}-b")
            } else {
                stage.to_string()
            };
            for (k, template) in [(0, offer), (1, format!("{stage}-reminder"))] {
                // The split's first email is marked as queued, under the step id the funnel
                // file gives it.
                let (marks, step) = if stage == "tripwire" && k == 0 {
                    (96, "split-tripwire".to_string())
                } else {
                    (0, format!("s{k}"))
                };
                let sent = s + k * day as i64;
                if sent > ms(now) {
                    continue;
                }
                emails
                    .push(
                        &db,
                        format!(
                            "('email', {id}, {id}, 'course', '{stage}', '{step}', '{template}', \
                             '{id}:v1:course:{stage}:1:s{k}', '{email}', '{{}}', 'sent', 1, \
                             {sent}, {sent}, {marks})"
                        ),
                    )
                    .await?;
                if r.unit() < 0.5 {
                    ev_rows.push(ev(
                        "open",
                        format!("{{\"template\":\"{template}\"}}"),
                        sent + 3_600_000,
                    ));
                    if r.unit() < 0.3 {
                        let click = sent + 4_000_000;
                        ev_rows.push(ev(
                            "click",
                            format!("{{\"template\":\"{template}\",\"link\":\"buy\"}}"),
                            click,
                        ));
                        touches
                            .push(
                                &db,
                                format!(
                                    "({id}, {click}, 'email', NULL, 'email', 'course', '{template}', NULL)"
                                ),
                            )
                            .await?;
                    }
                }
            }
        }
        // Page views fill the lead's ten events.
        while ev_rows.len() < 10 {
            let t = entered + (r.unit() * 5.0 * day) as i64;
            ev_rows.push(ev("page_view", "{}".into(), t));
        }
        for e in ev_rows {
            events.push(&db, e).await?;
        }
        touches
            .push(
                &db,
                format!("({id}, {entered}, 'form', '{source}', 'cpc', 'autumn', NULL, 'course')"),
            )
            .await?;
        if score >= 20 {
            milestones
                .push(
                    &db,
                    format!("({id}, {id}, 'course', 'mql', {})", entered + 86_400_000),
                )
                .await?;
        }
        txn_rows += 1;
        if txn_rows >= 20_000 {
            for t in [
                &mut leads,
                &mut runs,
                &mut visits,
                &mut events,
                &mut emails,
                &mut touches,
                &mut milestones,
            ] {
                t.flush(&db).await?;
            }
            db.execute_unprepared("COMMIT").await?;
            db.execute_unprepared("BEGIN").await?;
            txn_rows = 0;
            if id % 100_000 == 0 {
                eprintln!(
                    "  {id} leads, {} events written ({:.0} s)",
                    events.written,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let mut summary = String::new();
    for t in [
        &mut leads,
        &mut runs,
        &mut visits,
        &mut events,
        &mut emails,
        &mut touches,
        &mut milestones,
    ] {
        t.flush(&db).await?;
        let name = t.head.split_whitespace().next().unwrap_or_default();
        let _ = write!(summary, "{name} {}, ", t.written);
    }
    db.execute_unprepared("COMMIT").await?;
    if url.starts_with("postgres") {
        db.execute_unprepared("ANALYZE").await?;
        db.execute_unprepared(
            "SELECT setval(pg_get_serial_sequence('leads', 'id'), (SELECT max(id) FROM leads))",
        )
        .await?;
    } else {
        db.execute_unprepared("ANALYZE").await?;
    }
    let _ = write!(summary, "in {:.0} s", started.elapsed().as_secs_f64());
    db.close().await?;
    Ok(summary)
}

/// The floor: `SELECT count(*)` over the tables the reports read.
async fn floor(url: &str) -> anyhow::Result<(f64, String)> {
    let db = Database::connect(url).await?;
    let started = Instant::now();
    let mut out = String::new();
    for t in [
        "enrollments",
        "stage_history",
        "events",
        "messages",
        "touches",
        "report_counts",
        "report_hours",
    ] {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT count(*) FROM {t}"),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no count"))?;
        let n: i64 = row.try_get_by_index(0)?;
        let _ = write!(out, "{t} {n}, ");
    }
    let secs = started.elapsed().as_secs_f64();
    db.close().await?;
    Ok((secs, out))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::args();
    let n = common::count(&args).unwrap_or(1_000_000) as u64;
    let pg = args.iter().find(|a| a.starts_with("postgres")).cloned();
    let keep: Option<String> = common::flag(&args, "--keep");
    let dir = tempfile::tempdir()?;
    let folder = keep
        .clone()
        .unwrap_or_else(|| dir.path().display().to_string());
    std::fs::create_dir_all(&folder)?;
    let file = format!("{folder}/reports-{n}.db");
    let reuse = pg.is_none() && Path::new(&file).exists();
    let url = pg
        .clone()
        .unwrap_or_else(|| format!("sqlite://{file}?mode=rwc"));
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
    let kept = vec!["region".to_string()];
    let t0 = now - Duration::days(90);
    // The fields set before migrating, as `autofunnel run` does: an upgrade's recount (and the
    // seed's) makes the counters as they are kept, once.
    let mut store = Store::connect(&url).await?.with_fields(&kept);
    let started = Instant::now();
    let applied = store.migrate().await?;
    if reuse {
        eprintln!("reusing {file}");
        if applied
            .iter()
            .any(|m| m.ends_with("_report_counts") || m.ends_with("_email_marks"))
        {
            println!(
                "counters made from the stored rows on the upgrade: {:.1} s",
                started.elapsed().as_secs_f64()
            );
        } else if args.iter().any(|a| a == "--recount") {
            let started = Instant::now();
            let runs = store.recount(now).await?;
            println!(
                "counters made again from the rows (--recount): {runs} runs in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    } else {
        eprintln!("seeding {n} leads into {}", pg.as_deref().unwrap_or(&file));
        let summary = seed(&url, n, t0, now).await?;
        eprintln!("seeded: {summary}");
        // Bulk inserts bypass the counters: they are made from the rows, as on an upgrade.
        let started = Instant::now();
        let runs = store.recount(now).await?;
        println!(
            "counters made from the seeded rows (recount): {runs} runs in {:.1} s; peak RSS so far {:.0} MB",
            started.elapsed().as_secs_f64(),
            peak_rss_mb()
        );
    }
    // The counters kept by the region too (`report_fields`), made again when they were not.
    let started = Instant::now();
    if store.count_in(chrono_tz::UTC, &kept, now).await? {
        println!(
            "counters made again by report_fields = {kept:?}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let path = Path::new("funnels/course.yaml");
    let mut sink = Sink::new(path);
    let f = funnel::parse_text(path, FUNNEL, &mut sink).expect("the bench funnel parses");

    let (floor_s, counts) = floor(&url).await?;
    println!("rows: {counts}");
    println!(
        "floor: SELECT count(*) over those six tables: {:.3} s",
        floor_s
    );
    let from = t0.format("%Y-%m-%d").to_string();
    let to = now.format("%Y-%m-%d").to_string();
    let period = |f: &dyn Fn(&mut Params)| {
        let mut p = Params {
            from: Some(from.clone()),
            to: Some(to.clone()),
            ..Params::default()
        };
        f(&mut p);
        p
    };
    let cases: Vec<(&str, What, Params)> = vec![
        (
            "funnel report (90 days, entry cohorts)",
            What::Funnel,
            period(&|_| {}),
        ),
        (
            "a period starting within a day (counters, and the rows of the first day's runs)",
            What::Funnel,
            period(&|p| p.from = Some(format!("{}T00:00:01Z", from))),
        ),
        (
            "calendar view (--cohort calendar)",
            What::Funnel,
            period(&|p| p.cohort = Some("calendar".into())),
        ),
        (
            "weekly cohorts (--by week)",
            What::Funnel,
            period(&|p| p.by = Some("week".into())),
        ),
        (
            "slice by utm_source",
            What::Funnel,
            period(&|p| p.slice = vec!["utm_source".into()]),
        ),
        (
            "weekly cohorts sliced by utm_source (counters per origin and day, summed into weeks)",
            What::Funnel,
            period(&|p| {
                p.by = Some("week".into());
                p.slice = vec!["utm_source".into()];
            }),
        ),
        (
            "attribution (linear, 30-day lookback)",
            What::Attribution,
            period(&|p| p.model = Some("linear".into())),
        ),
        (
            "attribution (linear, 7-day lookback: counters of every lookback)",
            What::Attribution,
            period(&|p| {
                p.model = Some("linear".into());
                p.lookback = Some("7".into());
            }),
        ),
        (
            "funnel report in Europe/Moscow (--tz: counters of the whole UTC days, and by the hour of the hours around)",
            What::Funnel,
            period(&|p| p.tz = Some("Europe/Moscow".into())),
        ),
        (
            "calendar view in Europe/Moscow (counters of the whole UTC days, and by the hour of the hours around)",
            What::Funnel,
            period(&|p| {
                p.tz = Some("Europe/Moscow".into());
                p.cohort = Some("calendar".into());
            }),
        ),
        (
            "by day in Europe/Moscow (counters of the whole UTC days, and by the hour of every day's hours around)",
            What::Funnel,
            period(&|p| {
                p.tz = Some("Europe/Moscow".into());
                p.by = Some("day".into());
            }),
        ),
        (
            "by day in Europe/Moscow sliced by utm_source (counters of the whole UTC days, rows of every day's hours around)",
            What::Funnel,
            period(&|p| {
                p.tz = Some("Europe/Moscow".into());
                p.by = Some("day".into());
                p.slice = vec!["utm_source".into()];
            }),
        ),
        (
            "slice by variant (counters: each run's origin keeps its variant)",
            What::Funnel,
            period(&|p| p.slice = vec!["variant".into()]),
        ),
        (
            "slice by field:region (counters: a field kept, report_fields)",
            What::Funnel,
            period(&|p| p.slice = vec!["field:region".into()]),
        ),
        (
            "slice by field:region, the last 30 days (counters: a field kept)",
            What::Funnel,
            period(&|p| {
                p.from = Some(
                    (now - chrono::Duration::days(30))
                        .format("%Y-%m-%d")
                        .to_string(),
                );
                p.slice = vec!["field:region".into()];
            }),
        ),
        (
            "slice by field:region, not kept (rows: its value now)",
            What::Funnel,
            period(&|p| p.slice = vec!["field:region".into()]),
        ),
        (
            "7-day conversion window (--window 7d: counters by the days after entry)",
            What::Funnel,
            period(&|p| p.window = Some("7d".into())),
        ),
        (
            "36-hour conversion window (--window 36h: counters by the hours after entry)",
            What::Funnel,
            period(&|p| p.window = Some("36h".into())),
        ),
        (
            "calendar view with a 7-day window (counters by the days after entry)",
            What::Funnel,
            period(&|p| {
                p.cohort = Some("calendar".into());
                p.window = Some("7d".into());
            }),
        ),
        (
            "7-day conversion window sliced by utm_source (--window 7d --slice utm_source)",
            What::Funnel,
            period(&|p| {
                p.window = Some("7d".into());
                p.slice = vec!["utm_source".into()];
            }),
        ),
        (
            "200-hour conversion window (--window 200h: counters by the hours after entry)",
            What::Funnel,
            period(&|p| p.window = Some("200h".into())),
        ),
        ("A/B (--ab)", What::Ab, period(&|_| {})),
        (
            "forecast (counters and the runs in flight)",
            What::Forecast,
            Params::default(),
        ),
        (
            "forecast in Europe/Moscow (counters of the whole UTC days and by the hour of the hours around, the runs in flight)",
            What::Forecast,
            Params {
                tz: Some("Europe/Moscow".into()),
                ..Params::default()
            },
        ),
        ("per email", What::Emails, period(&|_| {})),
        (
            "per email, calendar view",
            What::Emails,
            period(&|p| p.cohort = Some("calendar".into())),
        ),
        (
            "A/B, calendar view",
            What::Ab,
            period(&|p| p.cohort = Some("calendar".into())),
        ),
        (
            "per email with a 7-day window (counters by the days after entry)",
            What::Emails,
            period(&|p| p.window = Some("7d".into())),
        ),
        (
            "A/B with a 7-day window (counters by the days after entry)",
            What::Ab,
            period(&|p| p.window = Some("7d".into())),
        ),
        (
            "36-hour window sliced by utm_source (rows: the hours after entry are kept for all runs only)",
            What::Funnel,
            period(&|p| {
                p.window = Some("36h".into());
                p.slice = vec!["utm_source".into()];
            }),
        ),
        (
            "per email with a 36-hour window (counters by the hours after entry)",
            What::Emails,
            period(&|p| p.window = Some("36h".into())),
        ),
        (
            "A/B with a 36-hour window (counters by the hours after entry)",
            What::Ab,
            period(&|p| p.window = Some("36h".into())),
        ),
        (
            "per email, calendar view with a 7-day window (counters by the days after entry)",
            What::Emails,
            period(&|p| {
                p.cohort = Some("calendar".into());
                p.window = Some("7d".into());
            }),
        ),
        (
            "per email, a period starting within a day (counters, and the rows of the first day's runs)",
            What::Emails,
            period(&|p| p.from = Some(format!("{}T00:00:01Z", from))),
        ),
        (
            "calendar view with a 36-hour window (rows: the calendar view is kept by the days after entry only)",
            What::Funnel,
            period(&|p| {
                p.cohort = Some("calendar".into());
                p.window = Some("36h".into());
            }),
        ),
        (
            "calendar view with a 7-day window sliced by utm_source (rows: kept for all runs only)",
            What::Funnel,
            period(&|p| {
                p.cohort = Some("calendar".into());
                p.window = Some("7d".into());
                p.slice = vec!["utm_source".into()];
            }),
        ),
        (
            "1000-hour window (rows: past 999 hours and not whole days)",
            What::Funnel,
            period(&|p| p.window = Some("1000h".into())),
        ),
        (
            "forecast in Asia/Kolkata (counters of the days, the rows of the runs that entered in the half hours around)",
            What::Forecast,
            Params {
                tz: Some("Asia/Kolkata".into()),
                ..Params::default()
            },
        ),
    ];
    if let Some(rounds) = common::flag::<usize>(&args, "--pages") {
        pages(&store, f, rounds.max(1)).await?;
        store.close().await?;
        return Ok(());
    }
    // `--only TEXT`: the reports whose name contains TEXT (to profile one).
    let only: Option<String> = common::flag(&args, "--only");
    for (name, what, params) in cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let req = Request::parse(what, &params, now).map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = if name.contains("not kept") {
            store.clone().with_fields(&[])
        } else {
            store.clone()
        };
        reset_peak_rss();
        let reads = match req.kept_by(store.kept_fields()).read(now, store.zone()) {
            ReportRead::Counts(_) => "counters",
            ReportRead::Parts { .. } => "counters, and the rows of the hours around",
            ReportRead::Rows(_) => "rows, a range of leads at a time",
            ReportRead::Forecast(_) => "counters and the runs in flight",
        };
        let started = Instant::now();
        let a = autofunnel::runtime::report::make(&store, &f, &req, now).await?;
        let secs = started.elapsed().as_secs_f64();
        let check = match &a {
            Answer::Funnel(r) => format!(
                "entered {}, converted {}{}",
                r.report.entered,
                r.report.converted.part,
                match &r.slices {
                    Some(s) => format!(
                        ", slices {:?}",
                        s.iter()
                            .map(|s| (s.value.as_str(), s.report.entered))
                            .take(4)
                            .collect::<Vec<_>>()
                    ),
                    None => String::new(),
                }
            ),
            Answer::Ab(r) => {
                let vs = r.splits.iter().flat_map(|s| &s.variants);
                format!(
                    "{} splits, (variant, sends, runs) {:?}",
                    r.splits.len(),
                    vs.map(|v| (v.template.as_str(), v.sends, v.leads))
                        .collect::<Vec<_>>()
                )
            }
            Answer::Emails(r) => format!(
                "{} emails, {} queued, {} opened, {} clicked",
                r.emails.len(),
                r.emails.iter().map(|e| e.queued).sum::<u64>(),
                r.emails.iter().map(|e| e.opened.part).sum::<u64>(),
                r.emails.iter().map(|e| e.clicked.part).sum::<u64>()
            ),
            Answer::Attribution(r) => format!("{} purchases", r.purchases),
            Answer::Forecast(r) => format!(
                "observed {}, in flight {}, days in stage {:?}, converted {}",
                r.observed_entered,
                r.stages.iter().map(|s| s.in_flight).sum::<u64>(),
                r.stages.iter().map(|s| s.days_in_stage).collect::<Vec<_>>(),
                r.conversions.baseline.expected
            ),
        };
        println!(
            "{name}: {secs:.3} s ({reads}); {check}; peak RSS {:.0} MB",
            peak_rss_mb()
        );
    }
    store.close().await?;
    Ok(())
}

/// The dashboard's pages through the real server (`autofunnel::server::serve` on loopback) over
/// the seeded database, `rounds` requests each, one after the other, signed in as a browser
/// is: the time to the whole answer (p50, p99, the slowest) and the page's weight.
async fn pages(store: &Store, f: funnel::Funnel, rounds: usize) -> anyhow::Result<()> {
    use reqwest::header::{COOKIE, SET_COOKIE};
    use std::sync::Arc;
    const TOKEN: &str = "bench admin token, 16+ chars";
    let funnel = f.id.value.to_string();
    let rt = autofunnel::runtime::Runtime::new(store.clone(), vec![f], "bench", Utc::now()).await?;
    let state = autofunnel::server::AppState {
        admin_token: Some(Arc::from(TOKEN)),
        ..autofunnel::server::AppState::new(Arc::new(rt), b"bench link secret")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(autofunnel::server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    autofunnel::delivery::webhook::install_tls();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(name))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no {name} cookie"))
    };
    let r = c.get(format!("{base}/dashboard/login")).send().await?;
    let login = cookie(&r, "af_login=")?;
    let page = r.text().await?;
    let form = page
        .split("name=\"form\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no sign-in form"))?
        .to_string();
    let r = c
        .post(format!("{base}/dashboard/login"))
        .header(COOKIE, &login)
        .form(&[("form", form.as_str()), ("token", TOKEN)])
        .send()
        .await?;
    let session = cookie(&r, "af_session=")?;
    println!("dashboard pages through the server, {rounds} requests each, one at a time:");
    let d = format!("/dashboard/funnels/{funnel}");
    let paths = [
        ("overview", "/dashboard".to_string()),
        ("funnel, 30 days, entry cohorts", d.clone()),
        (
            "funnel, 90 days, calendar view",
            format!("{d}?days=90&cohort=calendar"),
        ),
        ("cohorts (12 weeks)", format!("{d}/cohorts")),
        ("sources by utm_source", format!("{d}/slices?by=utm_source")),
        ("attribution", format!("{d}/attribution")),
        ("what-if", format!("{d}/whatif")),
        ("funnel map", format!("{d}/map")),
    ];
    for (name, path) in paths {
        let mut times = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for _ in 0..rounds {
            let started = Instant::now();
            let r = c
                .get(format!("{base}{path}"))
                .header(COOKIE, &session)
                .send()
                .await?;
            if !r.status().is_success() {
                anyhow::bail!("{path}: {}", r.status());
            }
            bytes = r.bytes().await?.len();
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let at =
            |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "  {name} ({path}): p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms; {:.1} KB",
            at(0.5),
            at(0.99),
            times[times.len() - 1],
            bytes as f64 / 1024.0
        );
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}
