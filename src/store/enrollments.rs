//! Enrollments, their durable wake-ups and leases, and the one-transaction commit of a round:
//! new states, stage history, outbox rows and lead changes together. The rows come ready-made
//! from the runtime; nothing here knows the engine or its effects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Value,
};

use super::batch::{self, Written};
use super::entities::{
    enrollment, event, funnel_version, lead, message, stage_history, suppression,
};
use super::sql::{self, Params};
use super::{
    Backend, Result, Store, StoreError, StoredEvent, Write, event_of, from_ms, ms, to_lead,
};
use crate::domain::{
    Email, EnrollmentId, EventKind, FunnelId, Lead, LeadId, Outcome, RunStatus, StageId, StepId,
    Tag, TemplateName,
};

/// Where a run stands, as stored: status, stage, step, stage entry and timers.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub status: RunStatus,
    pub stage: StageId,
    /// Index of the step the lead stands at.
    pub step: usize,
    /// The id of that step, to find it again in another version of the funnel.
    pub step_id: Option<String>,
    pub stage_entered_at: DateTime<Utc>,
    /// Counts stage entries (send keys include it).
    pub stage_entry: u32,
    pub deadline: Option<DateTime<Utc>>,
    /// The durable timer.
    pub wake_at: Option<DateTime<Utc>>,
}

/// An enrollment as stored: which lead, which funnel version, and where the run stands.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRow {
    pub id: EnrollmentId,
    pub lead: LeadId,
    pub funnel: FunnelId,
    pub version: i32,
    pub entered_at: DateTime<Utc>,
    /// The id of the last event of the lead this enrollment has consumed.
    pub events_seen: i64,
    pub state: RunState,
    /// Where the lead came from when the run began ([`crate::tally::origin`]).
    pub origin: Option<String>,
    /// Stages entered and milestones crossed ([`crate::tally::Reached`]).
    pub reached: String,
}

impl EnrollmentRow {
    /// What the run is before a transition, for the report counters.
    pub fn before(&self) -> RunBefore {
        RunBefore {
            entered_at: self.entered_at,
            origin: self.origin.clone().unwrap_or_default(),
            reached: self.reached.clone(),
            status: self.state.status,
            stage_entered_at: self.state.stage_entered_at,
        }
    }
}

/// A run as it was before a transition: what its report counters need.
#[derive(Debug, Clone, PartialEq)]
pub struct RunBefore {
    pub entered_at: DateTime<Utc>,
    pub origin: String,
    pub reached: String,
    pub status: RunStatus,
    /// When the visit the transition may close began.
    pub stage_entered_at: DateTime<Utc>,
}

/// A stage visit a transition closed that an earlier one opened.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedVisit {
    pub stage: StageId,
    pub reason: String,
    pub next: Option<StageId>,
}

/// A stage visit a transition opened; `exit` is set when the same transition also left it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedVisit {
    pub stage: StageId,
    /// Why it was left, and for which stage.
    pub exit: Option<(String, Option<StageId>)>,
}

/// What an outbox row carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Email,
    Webhook,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Email => "email",
            MessageKind::Webhook => "webhook",
        }
    }
}

/// An outbox row to queue; its send key makes a repeated transition queue nothing new.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub kind: MessageKind,
    /// A variant of an A/B `split` (kept with the email: [`crate::tally::mark::VARIANT`]).
    pub variant: bool,
    pub stage: Option<StageId>,
    pub step: StepId,
    pub template: Option<TemplateName>,
    pub send_key: String,
    pub recipient: String,
    pub payload: serde_json::Value,
}

/// Everything one transition writes besides the enrollment row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunWrites {
    pub closed: Vec<ClosedVisit>,
    pub opened: Vec<OpenedVisit>,
    pub messages: Vec<NewMessage>,
    /// Tags added (`true`) or removed (`false`), in order.
    pub tags: Vec<(Tag, bool)>,
    /// Lead fields set, in order.
    pub fields: Vec<(String, serde_json::Value)>,
    /// Points added to the lead's score (less what decayed).
    pub score: i64,
    /// Points were added: the score's time is now.
    pub scored: bool,
    /// Score thresholds crossed (`mql`, `sql`), for the reports.
    pub milestones: Vec<EventKind>,
    /// The tags and events it produced that a running funnel's entry names (`tag:NAME`,
    /// `event:KIND`): kept (`pending_entries`) in the same transaction until those funnels
    /// have started ([`Store::entries_started`]), so a stop in between loses no start.
    pub entries: Vec<String>,
}

/// A new enrollment to store with its first transition.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub lead: LeadId,
    pub funnel: FunnelId,
    pub version: i32,
    pub state: RunState,
    pub writes: RunWrites,
}

/// A transition of a leased enrollment to commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUpdate {
    pub id: EnrollmentId,
    pub lead: LeadId,
    pub funnel: FunnelId,
    pub version: i32,
    /// The id of the last event fed in this transition (or the one already seen).
    pub events_seen: i64,
    pub state: RunState,
    pub writes: RunWrites,
    pub before: RunBefore,
}

/// What a round needs to know of some leads, as stored: the leads, the suppressions of their
/// addresses (`*` or a funnel id), their tags, their events of the kinds asked for and the
/// emails queued to them since a time (with send keys).
#[derive(Debug, Clone, Default)]
pub struct FactRows {
    pub leads: Vec<Lead>,
    pub suppressions: Vec<(Email, String)>,
    pub tags: Vec<(LeadId, String)>,
    pub events: Vec<StoredEvent>,
    pub sent: Vec<(LeadId, DateTime<Utc>, String)>,
}

/// A stage entry or exit, as kept in `stage_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct StageVisit {
    pub stage: String,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub exit_reason: Option<String>,
    pub next_stage: Option<String>,
}

/// An outbox row, as tests and reports see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub kind: String,
    pub send_key: String,
    pub template: Option<String>,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
}

fn status_parts(s: RunStatus) -> (&'static str, Option<&'static str>) {
    match s {
        RunStatus::Unconfirmed => ("unconfirmed", None),
        RunStatus::Active => ("active", None),
        RunStatus::Exited(o) => ("exited", Some(o.name())),
    }
}

/// The columns of `enrollments` a run is read from, in [`RunColumns`]' order.
const RUN_COLUMNS: &str = "id, lead_id, funnel_id, funnel_version, stage_id, step_id, \
     step_index, status, wake_at, deadline_at, stage_entered_at, stage_entry, entered_at, \
     outcome, events_seen, origin, reached";

/// A row of [`RUN_COLUMNS`] as [`sql::select_packed`] reads it.
#[derive(Debug, serde::Deserialize)]
struct RunColumns {
    id: i64,
    lead_id: i64,
    funnel_id: String,
    funnel_version: i32,
    stage_id: String,
    step_id: Option<String>,
    step_index: i32,
    status: String,
    wake_at: Option<i64>,
    deadline_at: Option<i64>,
    stage_entered_at: i64,
    stage_entry: i32,
    entered_at: i64,
    outcome: Option<String>,
    events_seen: i64,
    origin: Option<String>,
    reached: String,
}

fn to_row(m: RunColumns) -> Result<EnrollmentRow> {
    let corrupt = |what: String| StoreError::Corrupt(format!("enrollment {}: {what}", m.id));
    let status = match (m.status.as_str(), m.outcome.as_deref()) {
        ("unconfirmed", _) => RunStatus::Unconfirmed,
        ("active", _) => RunStatus::Active,
        ("exited", Some(o)) => RunStatus::Exited(
            Outcome::from_name(o).ok_or_else(|| corrupt(format!("outcome \"{o}\"")))?,
        ),
        (other, _) => return Err(corrupt(format!("status \"{other}\""))),
    };
    Ok(EnrollmentRow {
        id: EnrollmentId(m.id),
        lead: LeadId(m.lead_id),
        funnel: FunnelId::parse(&m.funnel_id).map_err(|e| corrupt(e.to_string()))?,
        version: m.funnel_version,
        entered_at: from_ms(m.entered_at),
        events_seen: m.events_seen,
        state: RunState {
            status,
            stage: StageId::parse(&m.stage_id).map_err(|e| corrupt(e.to_string()))?,
            step: usize::try_from(m.step_index).unwrap_or(0),
            step_id: m.step_id,
            stage_entered_at: from_ms(m.stage_entered_at),
            stage_entry: u32::try_from(m.stage_entry).unwrap_or(0),
            deadline: m.deadline_at.map(from_ms),
            wake_at: m.wake_at.map(from_ms),
        },
        origin: m.origin,
        reached: m.reached,
    })
}

/// Live enrollments with work to do at `now`: a due timer, or an event not yet fed.
fn has_work(q: &mut Params, now: i64) -> String {
    format!(
        "((wake_at <= {} AND status = 'active') OR (pending_at IS NOT NULL AND pending_at <= {} \
         AND status IN ('active', 'unconfirmed'))) AND attempts < {}",
        q.p(now),
        q.p(now),
        q.p(MAX_CLAIMS)
    )
}

/// Claims of an enrollment in a row that ended without a commit (its round failed, or its
/// worker died) before it is parked: left out of every claim, so one run that cannot be
/// committed never holds up the others again. A commit resets the count.
pub const MAX_CLAIMS: i32 = 10;

impl Store {
    /// The version number of this funnel source: the latest one if unchanged, else a new one.
    pub async fn funnel_version(
        &self,
        funnel: &FunnelId,
        hash: &str,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<i32> {
        let _turn = self.turn().await;
        let latest = funnel_version::Entity::find()
            .filter(funnel_version::Column::FunnelId.eq(funnel.as_str()))
            .order_by_desc(funnel_version::Column::Version)
            .one(&self.wdb)
            .await?;
        if let Some(l) = &latest
            && l.hash == hash
        {
            return Ok(l.version);
        }
        let version = latest.map(|l| l.version + 1).unwrap_or(1);
        funnel_version::Entity::insert(funnel_version::ActiveModel {
            id: NotSet,
            funnel_id: Set(funnel.to_string()),
            version: Set(version),
            hash: Set(hash.to_string()),
            source: Set(source.to_string()),
            created_at: Set(ms(now)),
        })
        .on_conflict(
            OnConflict::columns([
                funnel_version::Column::FunnelId,
                funnel_version::Column::Version,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&self.wdb)
        .await?;
        Ok(version)
    }

    /// Every enrollment of a lead in a funnel, oldest first.
    pub async fn enrollments_of(
        &self,
        lead: LeadId,
        funnel: &FunnelId,
    ) -> Result<Vec<EnrollmentRow>> {
        self.enrollments_of_many(&[lead], funnel).await
    }

    /// Every enrollment of these leads in a funnel, oldest first.
    pub async fn enrollments_of_many(
        &self,
        leads: &[LeadId],
        funnel: &FunnelId,
    ) -> Result<Vec<EnrollmentRow>> {
        self.enrollments_of_many_in(None, leads, funnel).await
    }

    /// [`Store::enrollments_of_many`] as a write transaction held open sees them.
    pub(crate) async fn enrollments_of_many_in(
        &self,
        on: Option<&Write>,
        leads: &[LeadId],
        funnel: &FunnelId,
    ) -> Result<Vec<EnrollmentRow>> {
        match on {
            Some(w) => self.enrollments_on(&**w, leads, funnel).await,
            None => self.enrollments_on(&self.db, leads, funnel).await,
        }
    }

    async fn enrollments_on(
        &self,
        db: &impl ConnectionTrait,
        leads: &[LeadId],
        funnel: &FunnelId,
    ) -> Result<Vec<EnrollmentRow>> {
        let mut out = Vec::new();
        for chunk in leads.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let ids: Vec<i64> = chunk.iter().map(|l| l.0).collect();
            let rest = format!(
                "FROM enrollments WHERE lead_id IN ({}) AND funnel_id = {}",
                q.list(&ids),
                q.p(funnel.as_str())
            );
            let rows: Vec<RunColumns> = sql::select_packed(db, q, RUN_COLUMNS, &rest).await?;
            for m in rows {
                out.push(to_row(m)?);
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Stores new enrollments with their first transitions (state, history, outbox) in one
    /// transaction; returns their ids in the order given. A new run starts after the lead's
    /// past events (its event cursor is the lead's newest event), so an old purchase cannot
    /// end it.
    pub async fn enroll_many(
        &self,
        items: &[NewRun],
        now: DateTime<Utc>,
    ) -> Result<Vec<EnrollmentId>> {
        self.in_write(None, async |w| self.enroll_on(w, items, now).await)
            .await
    }

    /// [`Store::enroll_many`] in a write transaction held open (`None`: its own).
    pub(crate) async fn enroll_many_in(
        &self,
        on: Option<&Write>,
        items: &[NewRun],
        now: DateTime<Utc>,
    ) -> Result<Vec<EnrollmentId>> {
        self.in_write(on, async |w| self.enroll_on(w, items, now).await)
            .await
    }

    async fn enroll_on(
        &self,
        txn: &Write,
        items: &[NewRun],
        now: DateTime<Utc>,
    ) -> Result<Vec<EnrollmentId>> {
        let mut ids: HashMap<(i64, &str), i64> = HashMap::new();
        let mut origins: HashMap<i64, String> = HashMap::new();
        for chunk in items.chunks(sql::ROWS) {
            // Where each lead came from: its first touch so far, and the kept fields.
            let leads: Vec<LeadId> = chunk.iter().map(|n| n.lead).collect();
            let touches = super::counts::first_touches(txn, self.backend, &leads).await?;
            let fields =
                super::counts::kept_fields(txn, self.backend, &self.fields, &leads).await?;
            for l in &leads {
                let o = super::counts::run_origin(&touches, &fields, &self.fields, l.0, ms(now));
                origins.insert(l.0, o);
            }
            let leads: Vec<i64> = chunk.iter().map(|n| n.lead.0).collect();
            let mut q = Params::new(self.backend);
            let list = q.list(&leads);
            let rest = format!(
                "FROM (SELECT lead_id, MAX(id) AS last FROM events WHERE lead_id IN ({list}) GROUP BY lead_id) AS e"
            );
            let last_event: HashMap<i64, i64> =
                sql::select_packed::<(i64, i64)>(&**txn, q, "e.lead_id, e.last", &rest)
                    .await?
                    .into_iter()
                    .collect();
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .map(|n| {
                    let st = &n.state;
                    let (status, outcome) = status_parts(st.status);
                    vec![
                        n.lead.0.into(),
                        n.funnel.to_string().into(),
                        n.version.into(),
                        st.stage.to_string().into(),
                        st.step_id.clone().into(),
                        (st.step as i32).into(),
                        status.into(),
                        st.wake_at.map(ms).into(),
                        st.deadline.map(ms).into(),
                        ms(st.stage_entered_at).into(),
                        (st.stage_entry as i32).into(),
                        ms(now).into(),
                        (!st.status.is_live()).then(|| ms(now)).into(),
                        outcome.map(str::to_string).into(),
                        0i32.into(),
                        ms(now).into(),
                        last_event.get(&n.lead.0).copied().unwrap_or(0).into(),
                        origins.get(&n.lead.0).cloned().unwrap_or_default().into(),
                        batch::reached_after("", &n.writes).into(),
                    ]
                })
                .collect();
            let inserted: Vec<(i64, i64, String)> = sql::insert_packed(
                txn,
                self.backend,
                "enrollments",
                "(lead_id, funnel_id, funnel_version, stage_id, step_id, step_index, \
                 status, wake_at, deadline_at, stage_entered_at, stage_entry, entered_at, exited_at, \
                 outcome, attempts, updated_at, events_seen, origin, reached)",
                "",
                rows,
                "id, lead_id, funnel_id",
            )
            .await?;
            let mine: HashMap<(i64, &str), &str> = chunk
                .iter()
                .map(|n| ((n.lead.0, n.funnel.as_str()), n.funnel.as_str()))
                .collect();
            for (id, lead, funnel) in inserted {
                if let Some(f) = mine.get(&(lead, funnel.as_str())) {
                    ids.insert((lead, *f), id);
                }
            }
        }
        let mut out = Vec::with_capacity(items.len());
        let befores: Vec<RunBefore> = items
            .iter()
            .map(|n| RunBefore {
                entered_at: now,
                origin: origins.get(&n.lead.0).cloned().unwrap_or_default(),
                reached: String::new(),
                status: n.state.status,
                stage_entered_at: now,
            })
            .collect();
        let mut written = Vec::with_capacity(items.len());
        for (n, before) in items.iter().zip(&befores) {
            let id = *ids.get(&(n.lead.0, n.funnel.as_str())).ok_or_else(|| {
                StoreError::Corrupt(format!("enrollment of lead {} was not stored", n.lead))
            })?;
            out.push(EnrollmentId(id));
            written.push(Written {
                enrollment: EnrollmentId(id),
                lead: n.lead,
                funnel: &n.funnel,
                writes: &n.writes,
                before,
                new: true,
                status: n.state.status,
            });
        }
        let subs = self.subscriptions.clone();
        batch::write_runs(txn, self.backend, self.zone, &subs, &written, now).await?;
        Ok(out)
    }

    /// Leases up to `limit` leads with work to do and their enrollments that have it: due
    /// timers first (earliest first, on the `wake_at` index), then enrollments an event arrived
    /// for (on the `pending_at` index). A lead held by any worker — this one included — is
    /// skipped, so two workers never step one lead; PostgreSQL skips rows being claimed.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<EnrollmentRow>> {
        let txn = self.write().await?;
        let (now_ms, until) = (ms(now), ms(now + lease));
        let mut leads: Vec<i64> = Vec::new();
        for pending in [false, true] {
            let left = limit.saturating_sub(leads.len() as u64);
            if left == 0 {
                break;
            }
            let lock = match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            };
            let claimed: Vec<(i64,)> = sql::update_packed(
                &txn,
                self.backend,
                "leads",
                |q| format!("lease_owner = {}, lease_until = {}", q.p(owner), q.p(until)),
                |q| {
                    let which = if pending {
                        format!(
                            "pending_at IS NOT NULL AND pending_at <= {} \
                             AND status IN ('active', 'unconfirmed') AND attempts < {}",
                            q.p(now_ms),
                            q.p(MAX_CLAIMS)
                        )
                    } else {
                        format!(
                            "wake_at <= {} AND status = 'active' AND attempts < {}",
                            q.p(now_ms),
                            q.p(MAX_CLAIMS)
                        )
                    };
                    let order = if pending { "pending_at" } else { "wake_at" };
                    let free_enrollment = q.p(now_ms);
                    let n = q.p(left as i64);
                    let free_lead = q.p(now_ms);
                    format!(
                        "id IN (SELECT l.id FROM leads l WHERE l.id IN (SELECT lead_id FROM \
                         enrollments WHERE {which} AND (lease_until IS NULL OR lease_until < \
                         {free_enrollment}) ORDER BY {order} LIMIT {n}) AND (l.lease_until IS \
                         NULL OR l.lease_until < {free_lead}){lock})"
                    )
                },
                "id",
                None,
            )
            .await?;
            leads.extend(claimed.into_iter().map(|(id,)| id));
        }
        let mut rows = self
            .lease_runs(&txn, owner, now_ms, until, &leads, |q| has_work(q, now_ms))
            .await?;
        txn.commit().await?;
        rows.sort_by_key(|e| (e.state.wake_at, e.id));
        Ok(rows)
    }

    /// Leases the leads and their live enrollments, to feed them events. A lead another worker
    /// holds is skipped: its events wait, marked pending, for a round.
    pub async fn claim_for_leads(
        &self,
        leads: &[LeadId],
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<EnrollmentRow>> {
        let txn = self.write().await?;
        let (now_ms, until) = (ms(now), ms(now + lease));
        let mut ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut held: Vec<i64> = Vec::new();
        for chunk in ids.chunks(sql::ROWS) {
            let claimed: Vec<(i64,)> = sql::update_packed(
                &txn,
                self.backend,
                "leads",
                |q| format!("lease_owner = {}, lease_until = {}", q.p(owner), q.p(until)),
                |q| {
                    let list = q.list(chunk);
                    format!(
                        "id IN ({list}) AND (lease_until IS NULL OR lease_until < {})",
                        q.p(now_ms)
                    )
                },
                "id",
                None,
            )
            .await?;
            held.extend(claimed.into_iter().map(|(id,)| id));
        }
        let mut rows = self
            .lease_runs(&txn, owner, now_ms, until, &held, |q| {
                format!(
                    "status IN ('active', 'unconfirmed') AND attempts < {}",
                    q.p(MAX_CLAIMS)
                )
            })
            .await?;
        txn.commit().await?;
        rows.sort_by_key(|e| e.id);
        Ok(rows)
    }

    /// Leases the enrollments of the `held` leads that `which` picks (a condition written
    /// with the statement's parameters), and lets go at once of the held leads that have none:
    /// another worker finished their work in the meantime.
    async fn lease_runs(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        now_ms: i64,
        until: i64,
        held: &[i64],
        which: impl Fn(&mut Params) -> String,
    ) -> Result<Vec<EnrollmentRow>> {
        let mut rows: Vec<EnrollmentRow> = Vec::new();
        for chunk in held.chunks(sql::ROWS) {
            let leased: Vec<RunColumns> = sql::update_packed(
                txn,
                self.backend,
                "enrollments",
                |q| {
                    format!(
                        "lease_owner = {}, lease_until = {}, attempts = attempts + 1",
                        q.p(owner),
                        q.p(until)
                    )
                },
                |q| {
                    let list = q.list(chunk);
                    let which = which(q);
                    let free = q.p(now_ms);
                    format!(
                        "lead_id IN ({list}) AND {which} \
                         AND (lease_until IS NULL OR lease_until < {free})"
                    )
                },
                RUN_COLUMNS,
                None,
            )
            .await?;
            for m in leased {
                rows.push(to_row(m)?);
            }
        }
        let busy: HashSet<i64> = rows.iter().map(|e| e.lead.0).collect();
        let idle: Vec<LeadId> = held
            .iter()
            .filter(|l| !busy.contains(l))
            .map(|l| LeadId(*l))
            .collect();
        self.release_leads(txn, owner, &idle).await?;
        Ok(rows)
    }

    /// Lets go of leads this worker holds.
    async fn release_leads(
        &self,
        db: &impl ConnectionTrait,
        owner: &str,
        leads: &[LeadId],
    ) -> Result<()> {
        for chunk in leads.chunks(sql::ROWS) {
            lead::Entity::update_many()
                .col_expr(
                    lead::Column::LeaseOwner,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(lead::Column::LeaseUntil, Expr::value(Option::<i64>::None))
                .filter(lead::Column::Id.is_in(sql::padded(chunk.iter().map(|l| l.0))))
                .filter(lead::Column::LeaseOwner.eq(owner))
                .exec(db)
                .await?;
        }
        Ok(())
    }

    /// Commits the transitions of a scheduler round in one transaction and lets go of the
    /// round's `leads`; each transition is applied only if the claim the round made still
    /// stands: its enrollment is held by `owner` with the lease ending `until`. The
    /// enrollment's event cursor moves to the last event it was fed, and its pending mark is
    /// cleared unless a newer event of the lead is stored.
    /// Returns how many were applied.
    pub async fn commit_many(
        &self,
        owner: &str,
        until: DateTime<Utc>,
        items: &[RunUpdate],
        leads: &[LeadId],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let txn = self.write().await?;
        let mut applied: BTreeSet<i64> = BTreeSet::new();
        let t = ms(now);
        for chunk in items.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .map(|c| {
                    let st = &c.state;
                    let (status, outcome) = status_parts(st.status);
                    vec![
                        c.id.0.into(),
                        c.version.into(),
                        st.stage.to_string().into(),
                        st.step_id.clone().into(),
                        (st.step as i32).into(),
                        status.into(),
                        outcome.map(str::to_string).into(),
                        st.wake_at.map(ms).into(),
                        st.deadline.map(ms).into(),
                        ms(st.stage_entered_at).into(),
                        (st.stage_entry as i32).into(),
                        (!st.status.is_live()).then_some(t).into(),
                        c.events_seen.into(),
                        batch::reached_after(&c.before.reached, &c.writes).into(),
                        owner.into(),
                        ms(until).into(),
                    ]
                })
                .collect();
            let values = q.values(rows);
            // Fencing: only the claim this round made is written, its owner and the end of
            // its lease (the token: a later claim by the same owner ends later). Both are
            // columns of each row, not parameters: PostgreSQL, whose statistics see
            // `lease_owner` nearly always null, planned a constant owner as a filter matching
            // one row and scanned every run once per row of the batch (170 ms a round at
            // 20,000 runs; BENCHMARKS.md).
            let sql = format!(
                "UPDATE enrollments SET funnel_version = v.column2, stage_id = v.column3, \
                 step_id = v.column4, step_index = v.column5, status = v.column6, outcome = v.column7, \
                 wake_at = v.column8, deadline_at = v.column9, stage_entered_at = v.column10, \
                 stage_entry = v.column11, exited_at = v.column12, events_seen = v.column13, \
                 reached = v.column14, \
                 lease_owner = NULL, lease_until = NULL, updated_at = {t}, attempts = 0, \
                 pending_at = CASE WHEN enrollments.pending_at IS NULL THEN NULL \
                   WHEN EXISTS (SELECT 1 FROM events WHERE events.lead_id = enrollments.lead_id \
                   AND events.id > v.column13) THEN enrollments.pending_at ELSE NULL END \
                 FROM (VALUES {values}) AS v \
                 WHERE enrollments.id = v.column1 AND enrollments.lease_owner = v.column15 \
                 AND enrollments.lease_until = v.column16 \
                 RETURNING enrollments.id"
            );
            for r in txn.query_all_raw(q.statement(sql)).await? {
                applied.insert(r.try_get_by_index(0)?);
            }
        }
        let written: Vec<Written> = items
            .iter()
            .filter(|c| applied.contains(&c.id.0))
            .map(|c| Written {
                enrollment: c.id,
                lead: c.lead,
                funnel: &c.funnel,
                writes: &c.writes,
                before: &c.before,
                new: false,
                status: c.state.status,
            })
            .collect();
        let subs = self.subscriptions.clone();
        batch::write_runs(&txn, self.backend, self.zone, &subs, &written, now).await?;
        self.release_leads(&*txn, owner, leads).await?;
        txn.commit().await?;
        Ok(written.len())
    }

    /// What a round needs to know of these leads (see [`FactRows`]): their events of the
    /// given kinds, and the emails queued to them since `sent_since` (none when `None`). A few
    /// queries per 512 leads, whatever their number.
    pub async fn fact_rows(
        &self,
        ids: &[LeadId],
        kinds: &[EventKind],
        sent_since: Option<DateTime<Utc>>,
    ) -> Result<FactRows> {
        self.fact_rows_in(None, ids, kinds, sent_since).await
    }

    /// [`Store::fact_rows`] as a write transaction held open sees them.
    pub(crate) async fn fact_rows_in(
        &self,
        on: Option<&Write>,
        ids: &[LeadId],
        kinds: &[EventKind],
        sent_since: Option<DateTime<Utc>>,
    ) -> Result<FactRows> {
        let mut out = FactRows::default();
        let raw: Vec<i64> = ids
            .iter()
            .map(|l| l.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let kinds: Vec<&str> = kinds.iter().map(EventKind::as_str).collect();
        for chunk in raw.chunks(sql::ROWS) {
            match on {
                Some(w) => {
                    self.fact_rows_chunk(&**w, chunk, &kinds, sent_since, &mut out)
                        .await?
                }
                None => {
                    self.fact_rows_chunk(&self.db, chunk, &kinds, sent_since, &mut out)
                        .await?
                }
            }
        }
        Ok(out)
    }

    async fn fact_rows_chunk(
        &self,
        db: &impl ConnectionTrait,
        ids: &[i64],
        kinds: &[&str],
        sent_since: Option<DateTime<Utc>>,
        out: &mut FactRows,
    ) -> Result<()> {
        let mut q = Params::new(self.backend);
        let list = q.list(ids);
        let leads: Vec<lead::Model> = sql::select_packed(
            db,
            q,
            super::LEAD_COLUMNS,
            &format!("FROM leads WHERE id IN ({list})"),
        )
        .await?;
        let emails: Vec<String> = leads.iter().map(|l| l.email.clone()).collect();
        for l in leads {
            // One lead's unreadable row must not hold up the others' round.
            match to_lead(l) {
                Ok(l) => out.leads.push(l),
                Err(e) => tracing::error!(error = %e, "lead left out of a round"),
            }
        }
        let keys: HashMap<String, String> = emails
            .into_iter()
            .map(|e| (super::suppression_key(&e), e))
            .collect();
        for s in suppression::Entity::find()
            .filter(suppression::Column::Email.is_in(sql::padded(keys.keys().cloned())))
            .all(db)
            .await?
        {
            if let Some(email) = keys.get(&s.email).and_then(|e| Email::parse(e).ok()) {
                out.suppressions.push((email, s.scope));
            }
        }
        let mut q = Params::new(self.backend);
        let list = q.list(ids);
        let tags: Vec<(i64, String)> = sql::select_packed(
            db,
            q,
            "lead_id, tag",
            &format!("FROM lead_tags WHERE lead_id IN ({list})"),
        )
        .await?;
        out.tags
            .extend(tags.into_iter().map(|(lead, tag)| (LeadId(lead), tag)));
        if !kinds.is_empty() {
            for ev in event::Entity::find()
                .filter(event::Column::LeadId.is_in(sql::padded(ids.iter().copied())))
                .filter(event::Column::Kind.is_in(kinds.iter().copied()))
                .order_by_asc(event::Column::Id)
                .all(db)
                .await?
            {
                let Some(lead) = ev.lead_id else { continue };
                match event_of(ev.id, &ev.kind, &ev.payload) {
                    Ok(event) => out.events.push(StoredEvent {
                        id: ev.id,
                        lead: LeadId(lead),
                        event,
                    }),
                    Err(e) => tracing::error!(error = %e, "event left out of a round"),
                }
            }
        }
        if let Some(since) = sent_since {
            // Only what a frequency cap counts: not the payloads.
            let sent: Vec<(i64, i64, String)> = message::Entity::find()
                .select_only()
                .columns([
                    message::Column::LeadId,
                    message::Column::CreatedAt,
                    message::Column::SendKey,
                ])
                .filter(message::Column::LeadId.is_in(sql::padded(ids.iter().copied())))
                .filter(message::Column::Kind.eq(MessageKind::Email.as_str()))
                .filter(message::Column::CreatedAt.gt(ms(since)))
                .into_tuple()
                .all(db)
                .await?;
            for (lead, at, key) in sent {
                out.sent.push((LeadId(lead), from_ms(at), key));
            }
        }
        Ok(())
    }

    /// The earliest wake-up of any live enrollment, for the scheduler to sleep until.
    pub async fn next_wake(&self) -> Result<Option<DateTime<Utc>>> {
        let e = enrollment::Entity::find()
            .filter(enrollment::Column::Status.eq("active"))
            .filter(enrollment::Column::WakeAt.is_not_null())
            .order_by_asc(enrollment::Column::WakeAt)
            .one(&self.db)
            .await?;
        Ok(e.and_then(|e| e.wake_at).map(from_ms))
    }

    /// The outbox rows of a lead, oldest first.
    pub async fn outbox_of(&self, lead: LeadId) -> Result<Vec<OutboxRow>> {
        Ok(message::Entity::find()
            .filter(message::Column::LeadId.eq(lead.0))
            .order_by_asc(message::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| OutboxRow {
                kind: m.kind,
                send_key: m.send_key,
                template: m.template,
                recipient: m.recipient,
                created_at: from_ms(m.created_at),
            })
            .collect())
    }

    /// The stage visits of an enrollment, in order.
    pub async fn stage_history(&self, enrollment: EnrollmentId) -> Result<Vec<StageVisit>> {
        Ok(stage_history::Entity::find()
            .filter(stage_history::Column::EnrollmentId.eq(enrollment.0))
            .order_by_asc(stage_history::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|h| StageVisit {
                stage: h.stage_id,
                entered_at: from_ms(h.entered_at),
                exited_at: h.exited_at.map(from_ms),
                exit_reason: h.exit_reason,
                next_stage: h.next_stage_id,
            })
            .collect())
    }
}

/// Live runs standing at one step of a funnel, and the earliest of their wake-ups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub funnel: String,
    pub stage: String,
    pub step_id: Option<String>,
    /// `active`, or `unconfirmed` (waiting for the double opt-in click).
    pub status: String,
    pub runs: i64,
    pub next_wake: Option<DateTime<Utc>>,
}

/// How many live enrollments of a funnel stand at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub stage: String,
    pub step_id: Option<String>,
    pub step_index: i32,
    pub version: i32,
    pub leads: i64,
}

impl Store {
    /// The canonical source of the newest stored version of a funnel.
    pub async fn latest_funnel_version(&self, funnel: &FunnelId) -> Result<Option<(i32, String)>> {
        Ok(funnel_version::Entity::find()
            .filter(funnel_version::Column::FunnelId.eq(funnel.as_str()))
            .order_by_desc(funnel_version::Column::Version)
            .one(&self.db)
            .await?
            .map(|v| (v.version, v.source)))
    }

    /// Where every funnel's live runs wait, per stage, step and status (one query).
    pub async fn waiting(&self) -> Result<Vec<Waiting>> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT funnel_id, stage_id, step_id, status, COUNT(*), MIN(wake_at) \
                 FROM enrollments WHERE status IN ('active', 'unconfirmed') \
                 GROUP BY funnel_id, stage_id, step_id, status ORDER BY 1, 2, 3, 4",
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Waiting {
                    funnel: r.try_get_by_index(0)?,
                    stage: r.try_get_by_index(1)?,
                    step_id: r.try_get_by_index(2)?,
                    status: r.try_get_by_index(3)?,
                    runs: r.try_get_by_index(4)?,
                    next_wake: r.try_get_by_index::<Option<i64>>(5)?.map(from_ms),
                })
            })
            .collect()
    }

    /// Where the live enrollments of a funnel stand, counted per stage and step.
    pub async fn live_positions(&self, funnel: &FunnelId) -> Result<Vec<Position>> {
        let mut counts: BTreeMap<(String, Option<String>, i32, i32), i64> = BTreeMap::new();
        let rows = enrollment::Entity::find()
            .filter(enrollment::Column::FunnelId.eq(funnel.as_str()))
            .filter(enrollment::Column::Status.is_in(["active", "unconfirmed"]))
            .all(&self.db)
            .await?;
        for r in rows {
            *counts
                .entry((r.stage_id, r.step_id, r.step_index, r.funnel_version))
                .or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((stage, step_id, step_index, version), leads)| Position {
                stage,
                step_id,
                step_index,
                version,
                leads,
            })
            .collect())
    }
}

impl Store {
    /// Where mail to this address is stopped: `*` (everywhere) or funnel ids.
    pub async fn suppressions_of(&self, email: &Email) -> Result<Vec<String>> {
        Ok(suppression::Entity::find()
            .filter(suppression::Column::Email.eq(super::suppression_key(email.as_str())))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| s.scope)
            .collect())
    }

    /// Stops all mail to an address, whether a lead has it or not (yet).
    pub async fn suppress_email(
        &self,
        email: &Email,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.suppress_in(email, None, reason, now).await
    }

    /// Stops mail to an address from one funnel (`Some(funnel)`) or from all of them.
    pub async fn suppress_in(
        &self,
        email: &Email,
        funnel: Option<&FunnelId>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _turn = self.turn().await;
        suppression::Entity::insert(suppression::ActiveModel {
            id: NotSet,
            email: Set(super::suppression_key(email.as_str())),
            scope: Set(funnel.map_or("*", FunnelId::as_str).to_string()),
            reason: Set(reason.to_string()),
            created_at: Set(ms(now)),
        })
        .on_conflict(
            OnConflict::columns([suppression::Column::Email, suppression::Column::Scope])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.wdb)
        .await?;
        Ok(())
    }

    /// The events of these leads newer than `after` (an event id), oldest first.
    pub async fn events_after(&self, leads: &[LeadId], after: i64) -> Result<Vec<StoredEvent>> {
        let ids: Vec<i64> = leads
            .iter()
            .map(|l| l.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for chunk in ids.chunks(sql::ROWS) {
            // Read packed: one answer for the chunk instead of a row at a time.
            let mut q = sql::Params::new(self.backend);
            let rest = format!(
                "FROM events WHERE lead_id IN ({}) AND id > {}",
                q.list(chunk),
                q.p(after)
            );
            let rows: Vec<(i64, i64, String, String)> =
                sql::select_packed(&self.db, q, "id, lead_id, kind, payload", &rest).await?;
            for (id, lead, kind, payload) in rows {
                out.push(StoredEvent {
                    id,
                    lead: LeadId(lead),
                    event: event_of(id, &kind, &payload)?,
                });
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }
}
