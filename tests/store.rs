//! The storage schema and the store on real SQLite and real PostgreSQL: migrations apply, are
//! idempotent, and the tables keep their promises (one lead per email, one event per key).

use std::future::Future;

use autofunnel::domain::{Email, Event, EventKind, Tag};
use autofunnel::store::{Backend, LeadInput, NewEvent, Recorded, Store};
use chrono::{TimeZone, Utc};
use sea_orm::{ConnectionTrait, Database};

use crate::util::on_both_backends;
use crate::util::postgres_url;

const MIGRATIONS: [&str; 29] = [
    "m20261123_000001_init",
    "m20261124_000002_stage_entry",
    "m20261124_000003_pending_events",
    "m20261124_000004_lead_lease",
    "m20261124_000005_unstarted_signups",
    "m20261129_000006_milestones",
    "m20261129_000007_report_indexes",
    "m20261129_000008_report_counts",
    "m20261129_000009_email_marks",
    "m20261204_000010_exact_report_counts",
    "m20261205_000011_range_reads",
    "m20261206_000012_consents",
    "m20261206_000013_score_decay",
    "m20261206_000014_window_report_counts",
    "m20261206_000015_consent_text_hash",
    "m20261206_000016_hashed_suppressions",
    "m20261206_000017_ab_report_counts",
    "m20261206_000018_refund_report_counts",
    "m20261206_000019_counters_by_metric",
    "m20261206_000020_hot_tables",
    "m20261207_000021_hour_report_counts",
    "m20261207_000022_window_origin_report_counts",
    "m20261207_000023_order_events_index",
    "m20261207_000024_lookback_report_counts",
    "m20261207_000025_long_hour_windows_report_counts",
    "m20261207_000026_mail_window_report_counts",
    "m20261207_000027_counters_by_view",
    "m20261207_000028_failed_webhooks_index",
    "m20261207_000029_calendar_and_mail_hour_windows_report_counts",
];

const TABLES: [&str; 16] = [
    "consents",
    "email_links",
    "enrollments",
    "events",
    "funnel_versions",
    "lead_tags",
    "leads",
    "messages",
    "milestones",
    "pending_entries",
    "report_counts",
    "report_hours",
    "stage_history",
    "store_settings",
    "suppressions",
    "touches",
];

/// Runs `body` against a fresh SQLite file.
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/nested/test.db", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    body(store).await;
}

/// Runs `body` against a fresh PostgreSQL database, dropped afterwards.
pub async fn on_postgres<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    on_postgres_url(test, |db_url| async move {
        let store = Store::connect(&db_url).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        body(store.clone()).await;
        store.close().await.unwrap();
    })
    .await
}

/// Runs `body` with the URL of a fresh PostgreSQL database, dropped afterwards (for a test
/// that runs the binary on it).
pub async fn on_postgres_url<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = postgres_url(test) else {
        return;
    };
    let name = format!(
        "af_test_{}_{}",
        std::process::id(),
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let admin = Database::connect(&url)
        .await
        .expect("PostgreSQL from AUTOFUNNEL_TEST_POSTGRES_URL");
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db_url = match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("AUTOFUNNEL_TEST_POSTGRES_URL needs a database part: {url}"),
    };
    body(db_url).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
}

async fn migrations_apply_once(store: Store) {
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied, MIGRATIONS);
    let tables: Vec<String> = store
        .tables()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t != "seaql_migrations")
        .collect();
    assert_eq!(tables, TABLES);
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "second run applied something"
    );
    assert_eq!(store.applied_migrations().await.unwrap(), MIGRATIONS);
}

/// Nodes started together on one PostgreSQL database (a deployment rolling out) migrate one
/// after the other: every node's start succeeds and each migration is applied once.
#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    on_postgres_url("nodes_starting_together_migrate_once", |url| async move {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(Store::connect(&url).await.unwrap());
        }
        let applied = futures_util::future::join_all(stores.iter().map(|s| s.migrate())).await;
        let applied: Vec<Vec<String>> = applied
            .into_iter()
            .map(|a| a.expect("every node's migrate succeeds"))
            .collect();
        let first: Vec<&Vec<String>> = applied.iter().filter(|a| !a.is_empty()).collect();
        assert_eq!(
            first,
            vec![&MIGRATIONS.iter().map(|m| m.to_string()).collect::<Vec<_>>()]
        );
        assert_eq!(stores[3].applied_migrations().await.unwrap(), MIGRATIONS);
        for s in stores {
            s.close().await.unwrap();
        }
    })
    .await
}

async fn leads_are_unique_by_email(store: Store) {
    store.migrate().await.unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    let email = Email::parse("Anna@Example.com").unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert("city".into(), "Москва".into());
    let first = store
        .upsert_lead(
            &email,
            LeadInput {
                first_name: Some("Анна".into()),
                fields,
                timezone: Some(chrono_tz::Europe::Moscow),
            },
            t0,
        )
        .await
        .unwrap();
    let mut more = serde_json::Map::new();
    more.insert("plan".into(), "pro".into());
    let second = store
        .upsert_lead(
            &Email::parse("anna@EXAMPLE.com").unwrap(),
            LeadInput {
                fields: more,
                ..Default::default()
            },
            t0,
        )
        .await
        .unwrap();
    assert_eq!(first.id, second.id, "the same email made two leads");
    assert_eq!(second.first_name.as_deref(), Some("Анна"));
    assert_eq!(second.fields["city"], "Москва");
    assert_eq!(second.fields["plan"], "pro");
    assert_eq!(second.timezone, Some(chrono_tz::Europe::Moscow));
    assert_eq!(second.created_at, t0);
    let found = store.lead_by_email(&email).await.unwrap().unwrap();
    assert_eq!(found, second);
    assert!(
        store
            .lead_by_email(&Email::parse("nobody@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    let vip = Tag::parse("vip").unwrap();
    store.tag_lead(first.id, &vip, t0).await.unwrap();
    store.tag_lead(first.id, &vip, t0).await.unwrap();
    store
        .tag_lead(first.id, &Tag::parse("buyer").unwrap(), t0)
        .await
        .unwrap();
    let tags: Vec<String> = store
        .lead_tags(first.id)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(tags, ["buyer", "vip"]);
}

async fn events_are_stored_once_per_key(store: Store) {
    store.migrate().await.unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    let lead = store
        .upsert_lead(
            &Email::parse("buyer@example.com").unwrap(),
            LeadInput::default(),
            t0,
        )
        .await
        .unwrap();
    let purchase = |order: &str| NewEvent {
        lead: Some(lead.id),
        event: Event {
            product: Some("course".into()),
            amount: autofunnel::domain::Money::of_units(14900.0),
            ..Event::of(EventKind::Purchase)
        },
        idempotency_key: Some(format!("purchase:{order}")),
        occurred_at: t0,
    };
    assert!(matches!(
        store.record_event(purchase("A-1"), &[], t0).await.unwrap(),
        Recorded::New(_)
    ));
    assert_eq!(
        store.record_event(purchase("A-1"), &[], t0).await.unwrap(),
        Recorded::Duplicate
    );
    assert!(matches!(
        store.record_event(purchase("A-2"), &[], t0).await.unwrap(),
        Recorded::New(_)
    ));
    // Events without a key never collide.
    let click = NewEvent {
        lead: Some(lead.id),
        event: Event::of(EventKind::Click),
        idempotency_key: None,
        occurred_at: t0,
    };
    assert!(matches!(
        store.record_event(click.clone(), &[], t0).await.unwrap(),
        Recorded::New(_)
    ));
    assert!(matches!(
        store.record_event(click, &[], t0).await.unwrap(),
        Recorded::New(_)
    ));
    let kinds: Vec<String> = store
        .lead_events(lead.id)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["purchase", "purchase", "click", "click"]);
}

#[tokio::test]
async fn unsupported_database_urls_are_refused() {
    let err = Store::connect("mysql://localhost/x").await.err().unwrap();
    assert!(
        err.to_string().contains("unsupported database URL"),
        "{err}"
    );
}

on_both_backends! {
    migrations => migrations_apply_once,
    leads_unique_by_email => leads_are_unique_by_email,
    events_once_per_key => events_are_stored_once_per_key,
}

/// A database from before suppressions were keyed: the migration that keys them rewrites the
/// addresses stored before into their keys, and mail to the address stays stopped.
#[tokio::test]
async fn suppressions_stored_before_are_keyed_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    // As it stood before: the address itself, and no record of the migration.
    let raw = Database::connect(&url).await.unwrap();
    for sql in [
        "INSERT INTO suppressions (email, scope, reason, created_at) VALUES ('old@example.com', '*', 'unsubscribed', 0)",
        "DELETE FROM seaql_migrations WHERE version = 'm20261206_000016_hashed_suppressions'",
    ] {
        raw.execute_unprepared(sql).await.unwrap();
    }
    raw.close().await.unwrap();
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied, ["m20261206_000016_hashed_suppressions"]);
    let rows: Vec<String> = store
        .table_text("suppressions")
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .filter(|(c, _)| c == "email")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        rows,
        [autofunnel::store::suppression_key("old@example.com")]
    );
    let old = Email::parse("old@example.com").unwrap();
    assert_eq!(store.suppressions_of(&old).await.unwrap(), ["*"]);
}

/// The key is the standard SHA-256 in hex (FIPS 180-2's "abc"), so it can be checked
/// with any tool (`printf %s ADDRESS | sha256sum`).
#[test]
fn suppression_keys_are_plain_sha256() {
    assert_eq!(
        autofunnel::store::suppression_key("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// Waits (five seconds at most) until no other connection to the database is left: a
/// PostgreSQL backend adds its counts to the statistics as it exits.
async fn gone(admin: &sea_orm::DatabaseConnection) {
    let others = "SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    for _ in 0..500 {
        let n: i64 = admin
            .query_one_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                others,
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the store's connections did not close");
}

/// On PostgreSQL the hot paths reach the hot tables through their indexes: with 20,000 runs
/// stored and the statistics fresh, starting runs from events, moving leads on events, a
/// scheduler round of due timers and a sender's claim and sent marks make no sequential scan
/// of the runs, emails, events, leads, stage visits or counters (`pg_stat_user_tables`
/// counts them per table) when the planner scans only where no index serves
/// (`enable_seqscan = off`): every hot statement has an index to go by.
#[tokio::test]
async fn hot_paths_scan_no_hot_table_on_postgres() {
    use autofunnel::domain::LeadId;
    use autofunnel::store::{BatchEvent, LeadRef};
    const FUNNEL: &str = "name: Join\nfrom: \"Shop <shop@example.com>\"\nentry: { event: join }\n\
stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n    on:\n      \
- { event: upgrade, goto: paid }\n  - id: paid\n    steps:\n      - send: thanks\n      - wait: 30d\n";
    const HOT: [&str; 8] = [
        "enrollments",
        "messages",
        "events",
        "leads",
        "stage_history",
        "report_counts",
        "report_hours",
        "touches",
    ];
    on_postgres_url("hot_paths", |url| async move {
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let path = std::path::Path::new("join.yaml");
        let mut sink = autofunnel::funnel::diag::Sink::new(path);
        let funnel = autofunnel::funnel::parse_text(path, FUNNEL, &mut sink).unwrap();
        let id = funnel.id.value.clone();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let rt =
            autofunnel::runtime::Runtime::new(store.clone(), vec![funnel.clone()], "node-a", t0)
                .await
                .unwrap();
        let event = |who: LeadRef, kind: &str| BatchEvent {
            fields: Default::default(),
            who,
            event: Event::of(EventKind::parse(kind).unwrap()),
            idempotency_key: None,
            occurred_at: t0,
            touch: None,
        };
        let email = |i: usize| Email::parse(&format!("l{i}@example.com")).unwrap();
        // 20,000 runs, each with its first email, and the statistics taken.
        let mut leads: Vec<LeadId> = Vec::new();
        for chunk in (0..20_000).collect::<Vec<_>>().chunks(1_000) {
            let batch = chunk
                .iter()
                .map(|i| event(LeadRef::Email(email(*i)), "join"))
                .collect();
            let stored = rt.record_batch(batch, t0).await.unwrap();
            leads.extend(stored.into_iter().map(|(l, _)| l));
        }
        assert_eq!(store.enrollments_of(leads[0], &id).await.unwrap().len(), 1);
        store.analyze().await.unwrap();
        drop(rt);
        store.close().await.unwrap();
        // One connection, so the others are the store's.
        let mut one = sea_orm::ConnectOptions::new(url.clone());
        one.max_connections(1).sqlx_logging(false);
        let admin = Database::connect(one).await.unwrap();
        gone(&admin).await;
        admin
            .execute_unprepared("SELECT pg_stat_reset()")
            .await
            .unwrap();
        // The hot paths, on a process started afresh whose planner takes a sequential scan
        // only where no index serves (on tables this small it would rather scan anyway).
        let store = Store::connect(&format!("{url}?options=-c%20enable_seqscan%3Doff"))
            .await
            .unwrap();
        let rt = autofunnel::runtime::Runtime::new(store.clone(), vec![funnel], "node-a", t0)
            .await
            .unwrap();
        let t1 = t0 + chrono::Duration::hours(1);
        let moves = leads[..1_000]
            .iter()
            .map(|l| event(LeadRef::Id(*l), "upgrade"))
            .collect();
        rt.record_batch(moves, t1).await.unwrap();
        let starts = (20_000..21_000)
            .map(|i| event(LeadRef::Email(email(i)), "join"))
            .collect();
        rt.record_batch(starts, t1).await.unwrap();
        let outbox = store.outbox();
        let claimed = outbox
            .claim(8, t1, chrono::Duration::seconds(60), 500)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 500);
        let ids: Vec<i64> = claimed.iter().map(|m| m.id).collect();
        outbox.sent(&ids, t1).await.unwrap();
        let due = t0 + chrono::Duration::days(31);
        assert!(rt.tick(due).await.unwrap() > 0, "a round of due timers");
        drop(rt);
        store.close().await.unwrap();
        gone(&admin).await;
        let rows = admin
            .query_all_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                "SELECT relname::text, COALESCE(seq_scan, 0), COALESCE(idx_scan, 0) \
                 FROM pg_stat_user_tables",
            ))
            .await
            .unwrap();
        let mut scanned = Vec::new();
        let mut indexed = 0;
        for r in rows {
            let table: String = r.try_get_by_index(0).unwrap();
            let seq: i64 = r.try_get_by_index(1).unwrap();
            let idx: i64 = r.try_get_by_index(2).unwrap();
            if HOT.contains(&table.as_str()) {
                indexed += idx;
                if seq > 0 {
                    scanned.push(format!("{table}: {seq} sequential scans"));
                }
            }
        }
        assert!(
            indexed > 0,
            "the statistics hold the hot paths' index scans"
        );
        assert!(scanned.is_empty(), "{scanned:?}");
        admin.close().await.unwrap();
    })
    .await;
}
