//! The only module that talks to the database (sea-orm). It returns domain types; the
//! differences between SQLite and PostgreSQL live here and nowhere else.

mod admin;
mod batch;
mod counts;
mod enrollments;
pub mod entities;
mod import;
mod mails;
mod outbox;
mod report;
mod signups;
mod sql;

pub use admin::FailedHook;
pub use counts::{Counted, Edge, Grouping, ReportData, ReportRead, Scope};
pub use enrollments::{
    ClosedVisit, EnrollmentRow, FactRows, MAX_CLAIMS, MessageKind, NewMessage, NewRun, OpenedVisit,
    OutboxRow, Position, RunBefore, RunState, RunUpdate, RunWrites, StageVisit, Waiting,
};
pub use import::{Import, ImportRow, Imported};
pub use outbox::{MessageOrigin, Outbox, Outgoing, OutgoingHook, file_name};
pub use report::{
    EmailRow, LiveRow, MilestoneRow, Observations, PurchaseRow, Replay, ReportNeeds, ReportRows,
    RunRow, TouchRow, TrackRow, VisitRow,
};
pub use signups::NewSignup;

/// What the suppressions keep of an address: `sha256:` and the hex SHA-256 of the address as
/// stored (lower-cased domain, trimmed). The one place it is made: every write and lookup of
/// a suppression goes through it, so after an erase no table holds the address, and whoever
/// has the address can still tell it must not be mailed.
pub fn suppression_key(address: &str) -> String {
    use sha2::Digest as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(address.as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for b in digest {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 15)]));
    }
    key
}

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, Statement, TransactionTrait, Value,
};
use thiserror::Error;

use crate::domain::{Consent, Email, Event, EventKind, FunnelId, Lead, LeadId, Tag};
use entities::{event, lead, lead_tag, touch};
use sql::Params;

/// Errors a caller may want to tell apart.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("unsupported database URL \"{0}\": use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("database migration failed: {0}")]
    Migrate(DbErr),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database engine is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to the application database.
#[derive(Clone)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes too).
    pub(crate) db: DatabaseConnection,
    /// SQLite: the one connection this process writes on, in turn; PostgreSQL: `db`.
    pub(crate) wdb: DatabaseConnection,
    pub(crate) backend: Backend,
    /// SQLite: this process's writers take turns here, in order, rather than in SQLite's
    /// busy handler (which sleeps up to 100 ms between tries). `None` on PostgreSQL.
    writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    /// The zone whose days the report counters are kept in (`report_timezone`).
    pub(crate) zone: chrono_tz::Tz,
    /// The lead fields each run's origin keeps, as they were when it entered
    /// (`report_fields`), so the counters are kept per their values too.
    pub(crate) fields: std::sync::Arc<[String]>,
    /// How many lead ids a report or a recount reads at a time ([`report::LEAD_RANGE`]).
    lead_range: i64,
    /// The lifecycle events project-wide webhooks are called for: queued in the transaction
    /// that writes what they tell.
    pub(crate) subscriptions: std::sync::Arc<[Subscription]>,
}

/// A project-wide webhook's subscription to lifecycle events.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub webhook: String,
    pub events: Vec<crate::domain::Lifecycle>,
    /// Only these funnels' events (empty: every funnel's); a purchase or an unsubscribe is the
    /// lead's, of no funnel, and always goes.
    pub funnels: Vec<String>,
}

impl Subscription {
    fn wants(&self, e: crate::domain::Lifecycle, funnel: Option<&str>) -> bool {
        self.events.contains(&e)
            && (self.funnels.is_empty()
                || funnel.is_none_or(|f| self.funnels.iter().any(|x| x == f)))
    }
}

/// The addresses among `emails` not stored as leads yet, read in the write transaction that is
/// about to store them — only when a webhook subscribes to `lead.created` (else none, and no
/// read).
pub(crate) async fn not_stored(
    txn: &sea_orm::DatabaseTransaction,
    backend: Backend,
    subs: &[Subscription],
    emails: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    if !subs
        .iter()
        .any(|s| s.events.contains(&crate::domain::Lifecycle::LeadCreated))
    {
        return Ok(out);
    }
    out.extend(emails.iter().map(|e| e.to_string()));
    for chunk in emails.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let mut list = String::new();
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                list.push_str(", ");
            }
            list.push_str(&q.p(e.to_string()));
        }
        let rest = format!("FROM leads WHERE email IN ({list})");
        let stored: Vec<(String,)> = sql::select_packed(txn, q, "email", &rest).await?;
        for (e,) in stored {
            out.remove(&e);
        }
    }
    Ok(out)
}

/// Queues the `lead.created` calls of these new leads (lead, address) in `txn`.
pub(crate) async fn created(
    txn: &sea_orm::DatabaseTransaction,
    backend: Backend,
    subs: &[Subscription],
    new: &[(LeadId, &str)],
    at: i64,
) -> Result<()> {
    let mut calls = Vec::new();
    for (lead, email) in new {
        let mut detail = serde_json::Map::new();
        detail.insert("email".into(), (*email).into());
        let h = Happened {
            event: crate::domain::Lifecycle::LeadCreated,
            lead: *lead,
            run: None,
            funnel: None,
            stage: None,
            key: lead.0.to_string(),
            detail,
        };
        calls.extend(subscribed_calls(subs, h, at));
    }
    queue_calls(txn, backend, calls).await
}

/// The columns of an outbox row, in the order [`subscribed_calls`] and the round's writes give
/// them.
pub(crate) const MESSAGE_COLUMNS: &str = "(kind, lead_id, enrollment_id, funnel_id, stage_id, step_id, template, send_key, recipient, payload, status, attempts, next_attempt_at, created_at, marks)";

/// Inserts the outbox rows of subscribed calls; a call already queued (its send key) stays.
async fn queue_calls(
    txn: &sea_orm::DatabaseTransaction,
    backend: Backend,
    calls: Vec<Vec<sea_orm::Value>>,
) -> Result<()> {
    sql::insert_rows(
        txn,
        backend,
        &format!("messages {MESSAGE_COLUMNS}"),
        "ON CONFLICT (send_key) DO NOTHING",
        calls,
    )
    .await
}

/// One lifecycle event of a lead, as the webhooks subscribed to it are told.
pub(crate) struct Happened<'a> {
    pub event: crate::domain::Lifecycle,
    pub lead: LeadId,
    pub run: Option<i64>,
    pub funnel: Option<&'a str>,
    pub stage: Option<&'a str>,
    /// Unique to the event, so each webhook is called once for it.
    pub key: String,
    /// What the call says besides the lead.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The outbox rows (as `batch::write_runs` inserts them) of the webhook calls `subs` want for
/// what happened, queued at `at`.
pub(crate) fn subscribed_calls(
    subs: &[Subscription],
    h: Happened,
    at: i64,
) -> Vec<Vec<sea_orm::Value>> {
    subs.iter()
        .filter(|s| s.wants(h.event, h.funnel))
        .map(|s| {
            let mut payload = h.detail.clone();
            payload.insert("webhook".into(), s.webhook.clone().into());
            payload.insert("event".into(), h.event.as_str().into());
            vec![
                "webhook".into(),
                h.lead.0.into(),
                h.run.into(),
                h.funnel.map(str::to_string).into(),
                h.stage.map(str::to_string).into(),
                Option::<String>::None.into(),
                Option::<String>::None.into(),
                format!("sub:{}:{}:{}", s.webhook, h.event.as_str(), h.key).into(),
                String::new().into(),
                serde_json::Value::Object(payload).to_string().into(),
                "queued".into(),
                0i32.into(),
                Some(at).into(),
                at.into(),
                0i64.into(),
            ]
        })
        .collect()
}

/// A write transaction, holding the writer's turn until it commits or is dropped.
pub(crate) struct Write {
    txn: sea_orm::DatabaseTransaction,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for Write {
    type Target = sea_orm::DatabaseTransaction;
    fn deref(&self) -> &sea_orm::DatabaseTransaction {
        &self.txn
    }
}

impl Write {
    pub(crate) async fn commit(self) -> Result<()> {
        self.txn.commit().await?;
        Ok(())
    }
}

/// What the API or a form knows about a lead when it arrives.
#[derive(Debug, Clone, Default)]
pub struct LeadInput {
    pub first_name: Option<String>,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub timezone: Option<chrono_tz::Tz>,
}

/// Where a signup came from: UTM parameters, referrer, landing page, form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTouch {
    pub channel: String,
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
    pub referrer: Option<String>,
    pub landing_url: Option<String>,
    pub form: Option<String>,
}

/// A tracked event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub lead: Option<LeadId>,
    pub event: Event,
    /// Makes a repeated delivery (the same order, the same click) count once.
    pub idempotency_key: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// The lead an event from another system names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadRef {
    Id(LeadId),
    /// A new address becomes a lead.
    Email(Email),
}

/// One event of a batch from another system.
#[derive(Debug, Clone)]
pub struct BatchEvent {
    pub who: LeadRef,
    pub event: Event,
    pub idempotency_key: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// Where the event came from (UTM parameters, a tracked click), recorded as a touch at
    /// the event's time when the event is new.
    pub touch: Option<NewTouch>,
    /// Lead fields the event sets (checked by the caller), written with it when it is new:
    /// `first_name` to its column, the others into the lead's fields.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A stored event of a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub lead: LeadId,
    pub event: Event,
}

/// The JSON an event's details are kept in (`events.payload`): only the keys it has.
pub(crate) fn payload_of(e: &Event) -> serde_json::Value {
    let mut p = serde_json::Map::new();
    for (k, v) in [
        ("product", &e.product),
        ("template", &e.template),
        ("link", &e.link),
        ("form", &e.form),
        ("currency", &e.currency),
    ] {
        if let Some(v) = v {
            p.insert(k.into(), v.clone().into());
        }
    }
    if let Some(f) = &e.funnel {
        p.insert("funnel".into(), f.as_str().into());
    }
    if let Some(a) = e.amount {
        p.insert("amount".into(), a.units().into());
    }
    if let Some(m) = e.message {
        p.insert("message".into(), m.into());
    }
    serde_json::Value::Object(p)
}

fn touch_row(lead: LeadId, t: NewTouch, at: DateTime<Utc>) -> touch::ActiveModel {
    touch::ActiveModel {
        id: NotSet,
        lead_id: Set(lead.0),
        occurred_at: Set(ms(at)),
        channel: Set(t.channel),
        source: Set(t.source),
        medium: Set(t.medium),
        campaign: Set(t.campaign),
        term: Set(t.term),
        content: Set(t.content),
        referrer: Set(t.referrer),
        landing_url: Set(t.landing_url),
        form_id: Set(t.form),
    }
}

/// Inserts touches, each (lead, when in ms, the touch), a statement per [`sql::ROWS`].
pub(super) async fn insert_touches(
    txn: &sea_orm::DatabaseTransaction,
    backend: Backend,
    touches: Vec<(LeadId, i64, NewTouch)>,
) -> Result<()> {
    let rows = touches
        .into_iter()
        .map(|(lead, at, t)| {
            vec![
                lead.0.into(),
                at.into(),
                t.channel.into(),
                t.source.into(),
                t.medium.into(),
                t.campaign.into(),
                t.term.into(),
                t.content.into(),
                t.referrer.into(),
                t.landing_url.into(),
                t.form.into(),
            ]
        })
        .collect();
    sql::insert_rows(
        txn,
        backend,
        "touches (lead_id, occurred_at, channel, source, medium, campaign, term, content, \
         referrer, landing_url, form_id)",
        "",
        rows,
    )
    .await
}

/// An event's payload as [`payload_of`] writes it, read without building a JSON tree (reports
/// and rounds read millions).
#[derive(Default, serde::Deserialize)]
struct Payload {
    product: Option<String>,
    template: Option<String>,
    link: Option<String>,
    form: Option<String>,
    funnel: Option<String>,
    amount: Option<f64>,
    currency: Option<String>,
    message: Option<i64>,
}

impl Payload {
    /// Any JSON object: a key of another type than [`payload_of`] writes counts as absent.
    fn lenient(text: &str) -> Payload {
        let p: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Payload {
            product: s("product"),
            template: s("template"),
            link: s("link"),
            form: s("form"),
            funnel: s("funnel"),
            amount: p.get("amount").and_then(|v| v.as_f64()),
            currency: s("currency"),
            message: p.get("message").and_then(|v| v.as_i64()),
        }
    }
}

/// An event from its stored kind and payload.
pub(crate) fn event_of(id: i64, kind: &str, payload: &str) -> Result<Event> {
    let kind =
        EventKind::parse(kind).map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?;
    let p: Payload = serde_json::from_str(payload).unwrap_or_else(|_| Payload::lenient(payload));
    Ok(Event {
        product: p.product,
        template: p.template,
        link: p.link,
        form: p.form,
        funnel: p.funnel.and_then(|f| FunnelId::parse(&f).ok()),
        amount: p.amount.and_then(crate::domain::Money::of_units),
        currency: p.currency,
        message: p.message,
        ..Event::of(kind)
    })
}

/// An event stored without its funnels started (see [`Store::unstarted_events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Unstarted {
    pub id: i64,
    pub lead: LeadId,
    pub event: Event,
    pub received_at: DateTime<Utc>,
}

/// `processed_at` of a new event: none yet when a funnel's entry names its kind.
fn processed(kind: &EventKind, starting: &[EventKind], now: DateTime<Utc>) -> Option<i64> {
    (!starting.contains(kind)).then_some(ms(now))
}

/// The row a lookup by a unique key finds. Not sea-orm's `one`, which binds `LIMIT ?`: SQLite
/// plans such a statement again every time its limit is bound (about 90,000 instructions a
/// lookup, BENCHMARKS.md), where a statement without one is planned once and kept.
pub(crate) async fn unique<E>(
    select: sea_orm::Select<E>,
    db: &impl ConnectionTrait,
) -> Result<Option<E::Model>>
where
    E: EntityTrait,
    E::Model: Send + Sync,
{
    Ok(select.all(db).await?.into_iter().next())
}

/// What newly stored events do at once, in the transaction that stores them: the leads' live
/// runs are marked to be fed them, a confirmation or an unsubscribe sets the lead's consent,
/// an event that stops mail suppresses the address for every funnel, and the report counters
/// count orders and what tracked events say of emails.
async fn took_effect(
    txn: &sea_orm::DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    subs: &[Subscription],
    new: &[(LeadId, &Event, DateTime<Utc>)],
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut leads: Vec<i64> = new.iter().map(|(l, _, _)| l.0).collect();
    leads.sort_unstable();
    leads.dedup();
    for chunk in leads.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let at = q.p(ms(now));
        let list = q.list(chunk);
        let sql = format!(
            "UPDATE enrollments SET pending_at = {at} WHERE lead_id IN ({list}) \
             AND status IN ('active', 'unconfirmed')"
        );
        txn.execute_raw(q.statement(sql)).await?;
    }
    for (lead, e, _) in new {
        // Unsubscribed from one funnel: that funnel's suppression is the caller's; the lead's
        // consent and its other funnels stay as they are.
        let everywhere = e.funnel.is_none();
        if let Some(consent) = e.kind.consent().filter(|_| everywhere) {
            let mut q = Params::new(backend);
            let (c, at, id) = (q.p(consent.as_str()), q.p(ms(now)), q.p(lead.0));
            let sql = format!("UPDATE leads SET consent = {c}, updated_at = {at} WHERE id = {id}");
            txn.execute_raw(q.statement(sql)).await?;
        }
        if e.kind.stops_mail() && everywhere {
            // No funnel mails this address again, whatever its own transitions say.
            let mut q = Params::new(backend);
            let id = q.p(lead.0);
            let sql = format!("SELECT email FROM leads WHERE id = {id}");
            if let Some(r) = txn.query_one_raw(q.statement(sql)).await? {
                let address: String = r.try_get_by_index(0)?;
                let mut q = Params::new(backend);
                let (key, reason, at) = (
                    q.p(suppression_key(&address)),
                    q.p(e.kind.as_str()),
                    q.p(ms(now)),
                );
                let sql = format!(
                    "INSERT INTO suppressions (email, scope, reason, created_at) \
                     VALUES ({key}, '*', {reason}, {at}) ON CONFLICT (email, scope) DO NOTHING"
                );
                txn.execute_raw(q.statement(sql)).await?;
            }
        }
    }
    if !subs.is_empty() {
        // A purchase or an unsubscribe, for the webhooks subscribed to it.
        let mut calls = Vec::new();
        for ((lead, e, _), id) in new.iter().zip(ids) {
            let which = match e.kind {
                EventKind::Purchase => crate::domain::Lifecycle::Purchase,
                EventKind::Unsubscribed => crate::domain::Lifecycle::Unsubscribed,
                _ => continue,
            };
            let mut detail = serde_json::Map::new();
            for (k, v) in [("product", &e.product), ("currency", &e.currency)] {
                if let Some(v) = v {
                    detail.insert(k.into(), v.clone().into());
                }
            }
            if let Some(a) = e.amount {
                detail.insert("amount".into(), a.units().into());
            }
            let key = id.to_string();
            let h = Happened {
                event: which,
                lead: *lead,
                run: None,
                // A funnel-scoped unsubscribe names its funnel.
                funnel: e.funnel.as_ref().map(FunnelId::as_str),
                stage: None,
                key,
                detail,
            };
            calls.extend(subscribed_calls(subs, h, ms(now)));
        }
        queue_calls(txn, backend, calls).await?;
    }
    counts::count_orders(txn, backend, zone, new).await?;
    mails::count_tracking(txn, backend, zone, new).await?;
    Ok(())
}

/// Whether an event was stored now or had been stored before under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New(i64),
    Duplicate,
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// The connections a process keeps to PostgreSQL unless `database_connections` says
/// otherwise: a scheduler round, a sender round, the webhook calls and the HTTP requests each
/// hold one at a time, with room for reports read beside them.
pub const POOL: u32 = 16;

/// Names of the migrations the database `c` has, oldest first (none before the first).
async fn applied_in(c: &impl ConnectionTrait) -> Result<Vec<String>> {
    let backend = c.get_database_backend();
    // Asked first: in a PostgreSQL transaction a failed query would end it.
    let exists = match backend {
        sea_orm::DatabaseBackend::Postgres => {
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename = 'seaql_migrations'"
        }
        _ => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'"
        }
    };
    let n: i64 = match c
        .query_one_raw(Statement::from_string(backend, exists))
        .await?
    {
        Some(r) => r.try_get_by_index(0)?,
        None => 0,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = c
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "version").ok())
        .collect())
}

impl Store {
    /// Opens the database at `url`; a SQLite file and its folder are created when missing.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_pooled(url, POOL).await
    }

    /// [`Store::connect`] keeping `connections` open to PostgreSQL (at least 2); SQLite keeps
    /// its own: four readers and one writer.
    pub async fn connect_pooled(url: &str, connections: u32) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        if backend == Backend::Sqlite
            && let Some(parent) = url
                .strip_prefix("sqlite://")
                .map(|p| p.split('?').next().unwrap_or(p))
                .and_then(|p| Path::new(p).parent())
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        let open = |connections: u32| {
            let mut opts = ConnectOptions::new(url.to_string());
            opts.sqlx_logging(false)
                .acquire_timeout(Duration::from_secs(10))
                .max_connections(connections);
            if backend == Backend::Sqlite {
                // WAL lets readers run beside the one writer; the busy timeout queues writers
                // of other processes instead of failing them.
                opts.map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                        // Padded multi-row statements come in a few dozen shapes across the
                        // signups, the scheduler and the sender; with fewer cache slots than
                        // shapes every statement was prepared again (signups 4,900/s →
                        // 6,500/s going from 16 to 64). A large round's program costs up to
                        // ~1 MB.
                        .statement_cache_capacity(64)
                        .foreign_keys(true)
                        .create_if_missing(true)
                });
            } else {
                // Tables grow from empty, so a generic plan cached while they were small (a
                // sequential scan) would stay for the life of the connection: plan each
                // execution.
                opts.map_sqlx_postgres_opts(|o| {
                    o.options([("plan_cache_mode", "force_custom_plan")])
                });
            }
            async move {
                Database::connect(opts)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact(url),
                        source,
                    })
            }
        };
        let (db, wdb, writer) = match backend {
            // This process's writes take turns anyway: on one connection of their own, whose
            // prepared statements stay warm, instead of each statement being prepared again on
            // whichever of the readers' connections it lands.
            Backend::Sqlite => (
                open(4).await?,
                open(1).await?,
                Some(std::sync::Arc::new(tokio::sync::Mutex::new(()))),
            ),
            Backend::Postgres => {
                let db = open(connections.max(2)).await?;
                (db.clone(), db, None)
            }
        };
        Ok(Store {
            db,
            wdb,
            backend,
            writer,
            zone: chrono_tz::UTC,
            fields: std::sync::Arc::from(Vec::new()),
            lead_range: report::LEAD_RANGE,
            subscriptions: std::sync::Arc::from(Vec::new()),
        })
    }

    /// A write transaction: on SQLite it takes the write lock at `BEGIN` (`IMMEDIATE`), so it
    /// waits its turn instead of failing at its first write when another writer went first.
    pub(crate) async fn write(&self) -> Result<Write> {
        let turn = self.turn().await;
        let txn = self
            .wdb
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(Write { txn, _turn: turn })
    }

    /// Runs `f` in the write transaction held open `on`, or in one of its own that commits
    /// when `f` succeeds: what calls a store function inside a caller's transaction commits
    /// with the rest of it.
    pub(crate) async fn in_write<T>(
        &self,
        on: Option<&Write>,
        f: impl AsyncFnOnce(&Write) -> Result<T>,
    ) -> Result<T> {
        match on {
            Some(w) => f(w).await,
            None => {
                let w = self.write().await?;
                let out = f(&w).await?;
                w.commit().await?;
                Ok(out)
            }
        }
    }

    /// The dashboard sessions signed out before they expire: each session's SHA-256 (hex) and
    /// when it would have expired (Unix seconds), so a restarted process keeps refusing them.
    pub async fn signed_out_sessions(&self) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        self.each(
            "SELECT value FROM store_settings WHERE name = 'signed_out_sessions'",
            Vec::new(),
            |r| {
                let text: String = r.try_get_by_index(0)?;
                out = serde_json::from_str(&text).unwrap_or_default();
                Ok(())
            },
        )
        .await?;
        Ok(out)
    }

    /// Records a session signed out (its SHA-256, hex) until it would have expired; those
    /// expired by `now` are forgotten. Returns what is kept.
    pub async fn sign_out_session(
        &self,
        session: &str,
        until: i64,
        now: i64,
    ) -> Result<HashMap<String, i64>> {
        let w = self.write().await?;
        let mut q = Params::new(self.backend);
        let rest = "FROM store_settings WHERE name = 'signed_out_sessions'";
        let kept: Vec<(String,)> = sql::select_packed(&*w, q, "value", rest).await?;
        let mut out: HashMap<String, i64> = kept
            .first()
            .and_then(|(t,)| serde_json::from_str(t).ok())
            .unwrap_or_default();
        out.retain(|_, until| *until > now);
        out.insert(session.to_string(), until);
        q = Params::new(self.backend);
        let value = q.p(serde_json::to_string(&out).unwrap_or_default());
        let sql = format!(
            "INSERT INTO store_settings (name, value) VALUES ('signed_out_sessions', {value}) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        );
        w.execute_raw(q.statement(sql)).await?;
        w.commit().await?;
        Ok(out)
    }

    /// This process's turn to write (SQLite), held until dropped; nothing on PostgreSQL.
    pub(crate) async fn turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.writer {
            Some(w) => Some(w.clone().lock_owned().await),
            None => None,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens the database at `url` for reading only when it is there: `None` for a SQLite
    /// file that does not exist (none is created) or a database no migration has been applied
    /// to.
    pub async fn open_existing(url: &str) -> Result<Option<Store>> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" || !Path::new(path).exists() {
                return Ok(None);
            }
        }
        let store = Store::connect(url).await?;
        let applied = store.applied_migrations().await.unwrap_or_default();
        Ok((!applied.is_empty()).then_some(store))
    }

    /// Writes a copy of the SQLite database into `file` (which must not exist) while others
    /// go on reading and writing it: `VACUUM INTO` reads one snapshot in a read transaction,
    /// so the copy is the database as one commit left it, compacted. Returns how many leads
    /// and runs the copy holds. PostgreSQL is backed up with its own tools (`pg_dump`).
    pub async fn backup(&self, file: &Path) -> Result<(i64, i64)> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Corrupt(
                "a PostgreSQL database is backed up with pg_dump".into(),
            ));
        }
        let target = file.to_string_lossy().to_string();
        self.db
            .execute_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                "VACUUM INTO ?",
                [target.clone().into()],
            ))
            .await?;
        // The copy read back as it is: nothing written to it, no journal left beside it.
        let copy = Database::connect(format!("sqlite://{target}?mode=ro")).await?;
        let count = async |sql: &str| -> Result<i64> {
            let r = copy
                .query_one_raw(Statement::from_string(sea_orm::DbBackend::Sqlite, sql))
                .await?;
            Ok(match r {
                Some(r) => r.try_get_by_index(0)?,
                None => 0,
            })
        };
        let checked: String = match copy
            .query_one_raw(Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "PRAGMA quick_check",
            ))
            .await?
        {
            Some(r) => r.try_get_by_index(0)?,
            None => String::new(),
        };
        if checked != "ok" {
            return Err(StoreError::Corrupt(format!(
                "the copy in {target} does not check: {checked}"
            )));
        }
        let counts = (
            count("SELECT COUNT(*) FROM leads").await?,
            count("SELECT COUNT(*) FROM enrollments").await?,
        );
        copy.close().await?;
        Ok(counts)
    }

    /// The migrations of this build the database has not had yet, oldest first (read only:
    /// nothing is created).
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        Ok(Migrator::get_pending_migrations_read_only(&self.db)
            .await
            .map_err(StoreError::Migrate)?
            .iter()
            .map(|m| m.name().to_string())
            .collect())
    }

    /// Applies every pending migration; returns the names of those applied now.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let applied = self.migrate_schema().await?;
        // Suppressions kept the address until they were keyed by its hash: key the rows
        // stored before.
        if applied.iter().any(|m| m.ends_with("_hashed_suppressions")) {
            self.hash_suppressions().await?;
        }
        Ok(applied)
    }

    /// Rewrites the suppressions that still hold an address to hold its key.
    async fn hash_suppressions(&self) -> Result<()> {
        use entities::suppression;
        use sea_orm::QuerySelect as _;
        let rows: Vec<(i64, String)> = suppression::Entity::find()
            .select_only()
            .column(suppression::Column::Id)
            .column(suppression::Column::Email)
            .filter(suppression::Column::Email.not_like("sha256:%"))
            .into_tuple()
            .all(&self.db)
            .await?;
        let txn = self.write().await?;
        for (id, address) in rows {
            suppression::Entity::update_many()
                .col_expr(
                    suppression::Column::Email,
                    sea_orm::sea_query::Expr::value(suppression_key(&address)),
                )
                .filter(suppression::Column::Id.eq(id))
                .exec(&*txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// The PostgreSQL advisory lock migrations are applied under (any number unlikely to be
    /// another application's).
    const MIGRATION_LOCK: i64 = 0x6175_746f_6675_6e6c;

    async fn migrate_schema(&self) -> Result<Vec<String>> {
        let (before, after) = match self.backend {
            // Nodes started together migrate one after the other: each takes the same lock
            // in the transaction its migrations run in, and the ones after the first find
            // nothing left to do (and say so: only the first recounts).
            Backend::Postgres => {
                let txn = self.db.begin().await?;
                txn.execute_unprepared(&format!(
                    "SELECT pg_advisory_xact_lock({})",
                    Self::MIGRATION_LOCK
                ))
                .await?;
                let before = applied_in(&txn).await?;
                Migrator::up(&txn, None)
                    .await
                    .map_err(StoreError::Migrate)?;
                let after = applied_in(&txn).await?;
                txn.commit().await?;
                (before, after)
            }
            Backend::Sqlite => {
                let before = applied_in(&self.db).await?;
                Migrator::up(&self.db, None)
                    .await
                    .map_err(StoreError::Migrate)?;
                (before, applied_in(&self.db).await?)
            }
        };
        let applied: Vec<String> = after.into_iter().filter(|m| !before.contains(m)).collect();
        // The report counters (and the emails' marks) came with these migrations: count the rows
        // stored before them.
        if applied
            .iter()
            .any(|m| m.ends_with("_report_counts") || m.ends_with("_email_marks"))
        {
            // Said before it starts: nothing else is done (a server does not listen) until
            // it ends.
            tracing::info!(
                "the new version keeps other report counters: counting them again from the \
                 stored rows (about a millisecond a run: minutes for a million)"
            );
            self.recount(Utc::now()).await?;
        }
        Ok(applied)
    }

    /// Names of the migrations the database has, oldest first.
    pub async fn applied_migrations(&self) -> Result<Vec<String>> {
        applied_in(&self.db).await
    }

    /// Every row of one of [`Store::tables`], each column as text (a number written out,
    /// null as empty): what an audit reads to see what is stored — nothing is left of an
    /// erased lead, say.
    pub async fn table_text(&self, table: &str) -> Result<Vec<Vec<(String, String)>>> {
        if !self.tables().await?.iter().any(|t| t == table) {
            return Err(StoreError::Corrupt(format!("no table {table}")));
        }
        let sql = format!("SELECT * FROM {table}");
        let rows = self
            .db
            .query_all_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                r.column_names()
                    .into_iter()
                    .map(|c| {
                        let text = r
                            .try_get::<Option<String>>("", &c)
                            .map(Option::unwrap_or_default)
                            .or_else(|_| {
                                r.try_get::<Option<i64>>("", &c)
                                    .map(|v| v.map(|n| n.to_string()).unwrap_or_default())
                            })
                            .or_else(|_| {
                                r.try_get::<Option<f64>>("", &c)
                                    .map(|v| v.map(|n| n.to_string()).unwrap_or_default())
                            })
                            .unwrap_or_default();
                        (c, text)
                    })
                    .collect()
            })
            .collect())
    }

    /// Names of the application's tables.
    pub async fn tables(&self) -> Result<Vec<String>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Backend::Postgres => {
                "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String>("", "name").ok())
            .collect())
    }

    /// Creates the lead, or updates the one with that email: given values win, fields merge.
    pub async fn upsert_lead(
        &self,
        email: &Email,
        input: LeadInput,
        now: DateTime<Utc>,
    ) -> Result<Lead> {
        let _turn = self.turn().await;
        let existing = unique(
            lead::Entity::find().filter(lead::Column::Email.eq(email.as_str())),
            &self.wdb,
        )
        .await?;
        let model = match existing {
            Some(old) => {
                let mut fields = parse_fields(&old.fields)?;
                fields.extend(input.fields);
                let am = lead::ActiveModel {
                    id: Set(old.id),
                    first_name: Set(input.first_name.or(old.first_name)),
                    fields: Set(serde_json::Value::Object(fields).to_string()),
                    timezone: Set(input
                        .timezone
                        .map(|t| t.name().to_string())
                        .or(old.timezone)),
                    updated_at: Set(ms(now)),
                    ..Default::default()
                };
                lead::Entity::update(am).exec(&self.wdb).await?
            }
            None => {
                let am = lead::ActiveModel {
                    id: NotSet,
                    email: Set(email.as_str().to_string()),
                    first_name: Set(input.first_name),
                    fields: Set(serde_json::Value::Object(input.fields).to_string()),
                    timezone: Set(input.timezone.map(|t| t.name().to_string())),
                    consent: Set(Consent::Pending.as_str().to_string()),
                    score: Set(0),
                    scored_at: NotSet,
                    created_at: Set(ms(now)),
                    updated_at: Set(ms(now)),
                    lease_owner: NotSet,
                    lease_until: NotSet,
                };
                // A concurrent insert of the same email loses the race quietly and is re-read.
                lead::Entity::insert(am)
                    .on_conflict(
                        OnConflict::column(lead::Column::Email)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(&self.wdb)
                    .await?;
                unique(
                    lead::Entity::find().filter(lead::Column::Email.eq(email.as_str())),
                    &self.wdb,
                )
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("lead {email} vanished after insert")))?
            }
        };
        to_lead(model)
    }

    /// Many leads by id, in one query per 512.
    pub async fn leads(&self, ids: &[LeadId]) -> Result<HashMap<LeadId, Lead>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(sql::ROWS) {
            let mut q = sql::Params::new(self.backend);
            let rest = format!(
                "FROM leads WHERE id IN ({})",
                q.list(&chunk.iter().map(|l| l.0).collect::<Vec<_>>())
            );
            let rows: Vec<lead::Model> =
                sql::select_packed(&self.db, q, LEAD_COLUMNS, &rest).await?;
            for m in rows {
                // One lead's unreadable row must not hold up the others.
                match to_lead(m) {
                    Ok(l) => {
                        out.insert(l.id, l);
                    }
                    Err(e) => tracing::error!(error = %e, "lead left out"),
                }
            }
        }
        Ok(out)
    }

    pub async fn lead_by_email(&self, email: &Email) -> Result<Option<Lead>> {
        let m = unique(
            lead::Entity::find().filter(lead::Column::Email.eq(email.as_str())),
            &self.db,
        )
        .await?;
        m.map(to_lead).transpose()
    }

    /// Adds a tag; tagging twice is one tag.
    pub async fn tag_lead(&self, id: LeadId, tag: &Tag, now: DateTime<Utc>) -> Result<()> {
        self.tag_lead_starting(id, tag, false, now).await
    }

    /// [`Store::tag_lead`]; when the tag `starts` a running funnel, the start is kept as a
    /// pending entry in the same transaction (see [`RunWrites::entries`]).
    pub async fn tag_lead_starting(
        &self,
        id: LeadId,
        tag: &Tag,
        starts: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let txn = self.write().await?;
        let am = lead_tag::ActiveModel {
            lead_id: Set(id.0),
            tag: Set(tag.to_string()),
            created_at: Set(ms(now)),
        };
        lead_tag::Entity::insert(am)
            .on_conflict(
                OnConflict::columns([lead_tag::Column::LeadId, lead_tag::Column::Tag])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&*txn)
            .await?;
        if starts {
            let sql =
                "INSERT INTO pending_entries (lead_id, trigger, created_at) VALUES ($1, $2, $3)";
            let values = vec![id.0.into(), format!("tag:{tag}").into(), ms(now).into()];
            txn.execute_raw(self.statement(sql, values)).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// The pending entries of these leads made at `now` (by the writes whose starts were just
    /// made) have started: they go. Older ones stay for [`Store::pending_entries`].
    pub(crate) async fn entries_started(
        &self,
        on: Option<&Write>,
        leads: &[LeadId],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
        ids.sort_unstable();
        ids.dedup();
        self.in_write(on, async |txn| {
            for chunk in ids.chunks(sql::ROWS) {
                let mut q = Params::new(self.backend);
                let list = q.list(chunk);
                let at = q.p(ms(now));
                let sql = format!(
                    "DELETE FROM pending_entries WHERE lead_id IN ({list}) AND created_at = {at}"
                );
                txn.execute_raw(q.statement(sql)).await?;
            }
            Ok(())
        })
        .await
    }

    /// Pending entries made before `before`, oldest first: (id, lead, trigger, made at).
    pub async fn pending_entries(
        &self,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(i64, LeadId, String, DateTime<Utc>)>> {
        let mut out = Vec::new();
        self.each(
            "SELECT id, lead_id, trigger, created_at FROM pending_entries WHERE created_at < $1 \
             ORDER BY id LIMIT $2",
            vec![ms(before).into(), (limit as i64).into()],
            |r| {
                out.push((
                    r.try_get_by_index(0)?,
                    LeadId(r.try_get_by_index(1)?),
                    r.try_get_by_index(2)?,
                    from_ms(r.try_get_by_index(3)?),
                ));
                Ok(())
            },
        )
        .await?;
        Ok(out)
    }

    /// These pending entries are done with.
    pub async fn pending_done(&self, ids: &[i64]) -> Result<()> {
        let txn = self.write().await?;
        for chunk in ids.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let list = q.list(chunk);
            let sql = format!("DELETE FROM pending_entries WHERE id IN ({list})");
            txn.execute_raw(q.statement(sql)).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Removes a tag; a tag the lead does not have is no error.
    pub async fn untag_lead(&self, id: LeadId, tag: &Tag) -> Result<()> {
        let _turn = self.turn().await;
        lead_tag::Entity::delete_many()
            .filter(lead_tag::Column::LeadId.eq(id.0))
            .filter(lead_tag::Column::Tag.eq(tag.to_string()))
            .exec(&self.wdb)
            .await?;
        Ok(())
    }

    pub async fn lead_tags(&self, id: LeadId) -> Result<Vec<Tag>> {
        let rows = lead_tag::Entity::find()
            .filter(lead_tag::Column::LeadId.eq(id.0))
            .order_by_asc(lead_tag::Column::Tag)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|r| Tag::parse(&r.tag).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    /// Records where a lead came from.
    pub async fn record_touch(&self, lead: LeadId, t: NewTouch, now: DateTime<Utc>) -> Result<()> {
        let _turn = self.turn().await;
        touch::Entity::insert(touch_row(lead, t, now))
            .exec_without_returning(&self.wdb)
            .await?;
        Ok(())
    }

    /// The touches of a lead, oldest first.
    pub async fn touches_of(&self, lead: LeadId) -> Result<Vec<NewTouch>> {
        Ok(touch::Entity::find()
            .filter(touch::Column::LeadId.eq(lead.0))
            .order_by_asc(touch::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|t| NewTouch {
                channel: t.channel,
                source: t.source,
                medium: t.medium,
                campaign: t.campaign,
                term: t.term,
                content: t.content,
                referrer: t.referrer,
                landing_url: t.landing_url,
                form: t.form_id,
            })
            .collect())
    }

    /// Stores an event once per idempotency key, with what it does at once in the same
    /// transaction ([`took_effect`]). An event of a kind in `starting` (one a funnel's entry
    /// names) is stored unprocessed: [`Store::events_started`] marks it once its funnels have
    /// started, and until then [`Store::unstarted_events`] finds it again after a crash.
    pub async fn record_event(
        &self,
        e: NewEvent,
        starting: &[EventKind],
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let txn = self.write().await?;
        let am = event::ActiveModel {
            id: NotSet,
            lead_id: Set(e.lead.map(|l| l.0)),
            kind: Set(e.event.kind.as_str().to_string()),
            payload: Set(payload_of(&e.event).to_string()),
            idempotency_key: Set(e.idempotency_key.clone()),
            occurred_at: Set(ms(e.occurred_at)),
            received_at: Set(ms(now)),
            processed_at: Set(processed(&e.event.kind, starting, now)),
        };
        let res = event::Entity::insert(am)
            .on_conflict(
                OnConflict::column(event::Column::IdempotencyKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec(&*txn)
            .await;
        let id = match res {
            Ok(r) => r.last_insert_id,
            Err(DbErr::RecordNotInserted) => return Ok(Recorded::Duplicate),
            Err(e) => return Err(e.into()),
        };
        if let Some(lead) = e.lead {
            took_effect(
                &txn,
                self.backend,
                self.zone,
                &self.subscriptions,
                &[(lead, &e.event, e.occurred_at)],
                &[id],
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(Recorded::New(id))
    }

    /// Stores a batch of events from another system all or nothing, in one transaction: a
    /// lead is created for each address not known yet, each event is stored once per
    /// idempotency key (unprocessed when its kind is in `starting`, as in
    /// [`Store::record_event`]), with what it does at once ([`took_effect`]). Returns each
    /// event's lead and its id when it was new, in order. Every `LeadRef::Id` must exist (the
    /// caller checks with [`Store::missing_leads`]); one that does not fails the whole batch.
    pub async fn record_batch(
        &self,
        events: Vec<BatchEvent>,
        starting: &[EventKind],
        now: DateTime<Utc>,
    ) -> Result<Vec<(LeadId, Option<i64>)>> {
        let txn = self.write().await?;
        let t = ms(now);
        // The leads named by address, found or created, a few statements for the batch.
        let mut emails: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for b in &events {
            if let LeadRef::Email(e) = &b.who
                && seen.insert(e.as_str())
            {
                emails.push(e.as_str());
            }
        }
        let by_email = self.leads_of_emails(&txn, &emails, t).await?;
        let leads: Vec<LeadId> = events
            .iter()
            .map(|b| match &b.who {
                LeadRef::Id(id) => Ok(*id),
                LeadRef::Email(e) => by_email
                    .get(e.as_str())
                    .copied()
                    .ok_or_else(|| StoreError::Corrupt(format!("lead {e} vanished after insert"))),
            })
            .collect::<Result<_>>()?;
        // Each idempotency key stored once: the first of the batch, unless stored before.
        let keys: Vec<&str> = events
            .iter()
            .filter_map(|b| b.idempotency_key.as_deref())
            .collect();
        let mut taken: HashSet<String> = HashSet::new();
        for chunk in keys.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let list: Vec<String> = chunk.iter().map(|k| q.p(k.to_string())).collect();
            let rest = format!("FROM events WHERE idempotency_key IN ({})", list.join(", "));
            let stored: Vec<(String,)> =
                sql::select_packed(&*txn, q, "idempotency_key", &rest).await?;
            taken.extend(stored.into_iter().map(|(k,)| k));
        }
        let fresh: Vec<bool> = events
            .iter()
            .map(|b| match &b.idempotency_key {
                Some(k) => taken.insert(k.clone()),
                None => true,
            })
            .collect();
        let rows: Vec<Vec<Value>> = events
            .iter()
            .zip(&leads)
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|((b, lead), _)| {
                vec![
                    lead.0.into(),
                    b.event.kind.as_str().into(),
                    payload_of(&b.event).to_string().into(),
                    b.idempotency_key.clone().into(),
                    ms(b.occurred_at).into(),
                    t.into(),
                    processed(&b.event.kind, starting, now).into(),
                ]
            })
            .collect();
        // A key another node stored meanwhile (PostgreSQL) is skipped, not an error.
        let inserted: Vec<(i64, Option<String>)> = sql::insert_packed(
            &txn,
            self.backend,
            "events",
            "(lead_id, kind, payload, idempotency_key, occurred_at, received_at, processed_at)",
            "ON CONFLICT (idempotency_key) DO NOTHING",
            rows,
            "id, idempotency_key",
        )
        .await?;
        let mut by_key: HashMap<String, i64> = HashMap::new();
        // Ids are handed out in the order the rows were given: the events without a key take
        // theirs in that order.
        let mut unkeyed: Vec<i64> = Vec::new();
        for (id, key) in inserted {
            match key {
                Some(k) => {
                    by_key.insert(k, id);
                }
                None => unkeyed.push(id),
            }
        }
        unkeyed.sort_unstable();
        let mut unkeyed = unkeyed.into_iter();
        let mut out = Vec::with_capacity(events.len());
        // The new events, for the counters.
        let mut new: Vec<(LeadId, Event, DateTime<Utc>)> = Vec::new();
        let mut new_ids: Vec<i64> = Vec::new();
        let mut touches: Vec<(LeadId, i64, NewTouch)> = Vec::new();
        for ((b, lead), is_new) in events.into_iter().zip(leads).zip(fresh) {
            let id = match (&b.idempotency_key, is_new) {
                (_, false) => None,
                (Some(k), true) => by_key.get(k).copied(),
                (None, true) => Some(unkeyed.next().ok_or_else(|| {
                    StoreError::Corrupt("an event of the batch was not stored".into())
                })?),
            };
            out.push((lead, id));
            let Some(id) = id else { continue };
            new.push((lead, b.event, b.occurred_at));
            new_ids.push(id);
            let mut fields = b.fields;
            if let Some(name) = fields.remove("first_name") {
                lead::Entity::update_many()
                    .col_expr(
                        lead::Column::FirstName,
                        sea_orm::sea_query::Expr::value(name.as_str().map(str::to_string)),
                    )
                    .filter(lead::Column::Id.eq(lead.0))
                    .exec(&*txn)
                    .await?;
            }
            if !fields.is_empty() {
                let set: Vec<(String, serde_json::Value)> = fields.into_iter().collect();
                batch::update_lead(&txn, lead, &set, (0, false), now).await?;
            }
            if let Some(tc) = b.touch {
                touches.push((lead, ms(b.occurred_at), tc));
            }
        }
        insert_touches(&txn, self.backend, touches).await?;
        let new: Vec<_> = new.iter().map(|(l, e, at)| (*l, e, *at)).collect();
        took_effect(
            &txn,
            self.backend,
            self.zone,
            &self.subscriptions,
            &new,
            &new_ids,
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(out)
    }

    /// The leads of these addresses, each created (consent `pending`, no fields) when not
    /// stored yet, with `lead.created` calls for those subscribed.
    async fn leads_of_emails(
        &self,
        txn: &Write,
        emails: &[&str],
        at: i64,
    ) -> Result<HashMap<String, LeadId>> {
        let mut out: HashMap<String, LeadId> = HashMap::new();
        let find = async |out: &mut HashMap<String, LeadId>, emails: &[&str]| -> Result<()> {
            for chunk in emails.chunks(sql::ROWS) {
                let mut q = Params::new(self.backend);
                let list: Vec<String> = chunk.iter().map(|e| q.p(e.to_string())).collect();
                let rest = format!("FROM leads WHERE email IN ({})", list.join(", "));
                let found: Vec<(i64, String)> =
                    sql::select_packed(&**txn, q, "id, email", &rest).await?;
                out.extend(found.into_iter().map(|(id, e)| (e, LeadId(id))));
            }
            Ok(())
        };
        find(&mut out, emails).await?;
        let missing: Vec<&str> = emails
            .iter()
            .filter(|e| !out.contains_key(**e))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let rows: Vec<Vec<Value>> = missing
            .iter()
            .map(|e| {
                vec![
                    e.to_string().into(),
                    "{}".into(),
                    Consent::Pending.as_str().into(),
                    0i64.into(),
                    at.into(),
                    at.into(),
                ]
            })
            .collect();
        // An address another node stored meanwhile (PostgreSQL) is found again below.
        let inserted: Vec<(i64, String)> = sql::insert_packed(
            txn,
            self.backend,
            "leads",
            "(email, fields, consent, score, created_at, updated_at)",
            "ON CONFLICT (email) DO NOTHING",
            rows,
            "id, email",
        )
        .await?;
        out.extend(inserted.iter().map(|(id, e)| (e.clone(), LeadId(*id))));
        if !self.subscriptions.is_empty() && !inserted.is_empty() {
            let new: Vec<(LeadId, &str)> = inserted
                .iter()
                .map(|(id, e)| (LeadId(*id), e.as_str()))
                .collect();
            created(txn, self.backend, &self.subscriptions, &new, at).await?;
        }
        let raced: Vec<&str> = missing
            .into_iter()
            .filter(|e| !out.contains_key(*e))
            .collect();
        find(&mut out, &raced).await?;
        Ok(out)
    }

    /// Marks these events processed: the funnels they enter have started.
    pub(crate) async fn events_started(
        &self,
        on: Option<&Write>,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.in_write(on, async |txn| {
            for chunk in ids.chunks(sql::ROWS) {
                let mut q = Params::new(self.backend);
                let at = q.p(ms(now));
                let list = q.list(chunk);
                let sql = format!(
                    "UPDATE events SET processed_at = {at} WHERE processed_at IS NULL AND id IN ({list})"
                );
                txn.execute_raw(q.statement(sql)).await?;
            }
            Ok(())
        })
        .await
    }

    /// Events received before `before` whose funnels never started (the process stopped
    /// after storing them), in id order after `after`, at most `limit`.
    pub async fn unstarted_events(
        &self,
        before: DateTime<Utc>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<Unstarted>> {
        let mut q = Params::new(self.backend);
        let (b, a, n) = (q.p(ms(before)), q.p(after), q.p(limit as i64));
        let sql = format!(
            "SELECT id, lead_id, kind, payload, received_at FROM events WHERE processed_at IS NULL \
             AND received_at < {b} AND id > {a} AND lead_id IS NOT NULL ORDER BY id LIMIT {n}"
        );
        let mut out = Vec::new();
        for r in self.db.query_all_raw(q.statement(sql)).await? {
            let id: i64 = r.try_get_by_index(0)?;
            let kind: String = r.try_get_by_index(2)?;
            let payload: String = r.try_get_by_index(3)?;
            out.push(Unstarted {
                id,
                lead: LeadId(r.try_get_by_index(1)?),
                event: event_of(id, &kind, &payload)?,
                received_at: from_ms(r.try_get_by_index(4)?),
            });
        }
        Ok(out)
    }

    /// Which of these lead ids name no lead.
    pub async fn missing_leads(&self, ids: &[LeadId]) -> Result<Vec<LeadId>> {
        let found = self.leads(ids).await?;
        Ok(ids
            .iter()
            .filter(|i| !found.contains_key(i))
            .copied()
            .collect())
    }

    /// Events of a lead, oldest first, as (kind, payload).
    pub async fn lead_events(&self, id: LeadId) -> Result<Vec<(String, serde_json::Value)>> {
        let rows = event::Entity::find()
            .filter(event::Column::LeadId.eq(id.0))
            .order_by_asc(event::Column::OccurredAt)
            .order_by_asc(event::Column::Id)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|r| {
                let payload = serde_json::from_str(&r.payload)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((r.kind, payload))
            })
            .collect()
    }

    /// On SQLite, which one process serves, every claim still held was held by a process
    /// that stopped without giving it back (a kill, a crash): its emails and webhook calls in
    /// flight, its runs and leads are made free at once, so the restarted process takes them
    /// up now instead of when their leases lapse. Returns how many rows were freed. On
    /// PostgreSQL, which several nodes may serve, a node's claims lapse with their leases.
    pub async fn release_stale_claims(&self) -> Result<u64> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let txn = self.write().await?;
        let mut freed = 0;
        for sql in [
            "UPDATE messages SET lease_until = 0 WHERE status = 'sending' AND lease_until > 0",
            "UPDATE enrollments SET lease_until = 0 WHERE lease_until > 0",
            "UPDATE leads SET lease_until = 0 WHERE lease_until > 0",
        ] {
            freed += txn
                .execute_raw(Statement::from_string(self.db.get_database_backend(), sql))
                .await?
                .rows_affected();
        }
        txn.commit().await?;
        Ok(freed)
    }

    /// The event stored under an idempotency key (a provider's payment), if any.
    pub async fn event_by_key(&self, key: &str) -> Result<Option<StoredEvent>> {
        let Some(r) = unique(
            event::Entity::find().filter(event::Column::IdempotencyKey.eq(key)),
            &self.db,
        )
        .await?
        else {
            return Ok(None);
        };
        let Some(lead) = r.lead_id else {
            return Ok(None);
        };
        Ok(Some(StoredEvent {
            id: r.id,
            lead: LeadId(lead),
            event: event_of(r.id, &r.kind, &r.payload)?,
        }))
    }

    /// Refreshes the planner's statistics (PostgreSQL `ANALYZE`; SQLite `PRAGMA optimize`).
    pub async fn analyze(&self) -> Result<()> {
        let sql = match self.backend {
            Backend::Sqlite => "PRAGMA optimize",
            Backend::Postgres => "ANALYZE",
        };
        self.db
            .execute_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await?;
        Ok(())
    }

    pub async fn close(self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            self.wdb.close().await?;
        }
        self.db.close().await?;
        Ok(())
    }
}

pub(crate) fn parse_fields(text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Corrupt(format!(
            "lead fields are not a JSON object: {text}"
        ))),
    }
}

/// A lead's columns in the order of `lead::Model`'s fields, to read it packed.
pub(crate) const LEAD_COLUMNS: &str = "id, email, first_name, fields, timezone, consent, score, \
     scored_at, created_at, updated_at, lease_owner, lease_until";

fn to_lead(m: lead::Model) -> Result<Lead> {
    Ok(Lead {
        id: LeadId(m.id),
        email: Email::parse(&m.email).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        first_name: m.first_name,
        fields: parse_fields(&m.fields)?,
        timezone: m.timezone.and_then(|t| t.parse().ok()),
        consent: Consent::parse(&m.consent)
            .ok_or_else(|| StoreError::Corrupt(format!("consent \"{}\"", m.consent)))?,
        score: m.score,
        scored_at: m.scored_at.map(from_ms),
        created_at: from_ms(m.created_at),
    })
}

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://a.db"), "sqlite://a.db");
    }
}
