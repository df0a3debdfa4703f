//! Enrollments, their durable wake-ups and leases, and the one-transaction commit of a
//! transition: new state, stage history, outbox rows and lead changes together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, Statement,
    TransactionTrait, Value,
};

use super::entities::{
    enrollment, event, funnel_version, lead, lead_tag, message, stage_history, suppression,
};
use super::{Backend, Result, Store, StoreError, from_ms, ms, parse_fields};
use crate::domain::{LeadId, StageId};
use crate::engine::{Effect, Enrollment, LeadFacts, Status, Transition};
use crate::funnel::Outcome;

/// An enrollment as stored: which lead, which funnel version, and the engine's state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEnrollment {
    pub id: i64,
    pub lead: LeadId,
    pub funnel: String,
    pub version: i32,
    pub entered_at: DateTime<Utc>,
    /// The step id stored with the state, to find the step again in another funnel version.
    pub step_id: Option<String>,
    /// The id of the last event of the lead this enrollment has consumed.
    pub events_seen: i64,
    pub state: Enrollment,
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

fn status_parts(s: Status) -> (&'static str, Option<&'static str>) {
    match s {
        Status::Unconfirmed => ("unconfirmed", None),
        Status::Active => ("active", None),
        Status::Exited(o) => ("exited", Some(o.name())),
    }
}

fn to_stored(m: enrollment::Model) -> Result<StoredEnrollment> {
    let status = match (m.status.as_str(), m.outcome.as_deref()) {
        ("unconfirmed", _) => Status::Unconfirmed,
        ("active", _) => Status::Active,
        ("exited", Some(o)) => Status::Exited(
            Outcome::ALL
                .iter()
                .find(|(n, _)| *n == o)
                .map(|(_, o)| *o)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("enrollment {} has outcome \"{o}\"", m.id))
                })?,
        ),
        (other, _) => {
            return Err(StoreError::Corrupt(format!(
                "enrollment {} has status \"{other}\"",
                m.id
            )));
        }
    };
    Ok(StoredEnrollment {
        id: m.id,
        lead: LeadId(m.lead_id),
        funnel: m.funnel_id,
        version: m.funnel_version,
        entered_at: from_ms(m.entered_at),
        step_id: m.step_id,
        events_seen: m.events_seen,
        state: Enrollment {
            status,
            stage: StageId::parse(&m.stage_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            step: usize::try_from(m.step_index).unwrap_or(0),
            stage_entered_at: from_ms(m.stage_entered_at),
            stage_entry: u32::try_from(m.stage_entry).unwrap_or(0),
            deadline: m.deadline_at.map(from_ms),
            wake_at: m.wake_at.map(from_ms),
        },
    })
}

/// Claims are plain UPDATE … RETURNING, in two passes that each use their own index: due
/// timers (`wake_at`, earliest first), then enrollments an event arrived for (`pending_at`).
/// PostgreSQL skips rows another node holds locked.
fn claim_sql(backend: Backend, pending: bool, limit: u64) -> String {
    let (p, lock) = match backend {
        Backend::Sqlite => (["?", "?", "?", "?"], ""),
        Backend::Postgres => (["$1", "$2", "$3", "$4"], " FOR UPDATE SKIP LOCKED"),
    };
    let which = if pending {
        format!(
            "pending_at IS NOT NULL AND pending_at <= {} AND status IN ('active', 'unconfirmed')",
            p[2]
        )
    } else {
        format!("wake_at <= {} AND status = 'active'", p[2])
    };
    let order = if pending { "pending_at" } else { "wake_at" };
    format!(
        "UPDATE enrollments SET lease_owner = {}, lease_until = {}, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM enrollments WHERE {which} \
         AND (lease_until IS NULL OR lease_until < {}) ORDER BY {order} LIMIT {limit}{lock}) RETURNING *",
        p[0], p[1], p[3]
    )
}

impl Store {
    fn sql_backend(&self) -> sea_orm::DbBackend {
        self.db.get_database_backend()
    }

    /// The version number of this funnel source: the latest one if unchanged, else a new one.
    pub async fn funnel_version(
        &self,
        funnel: &str,
        hash: &str,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<i32> {
        let latest = funnel_version::Entity::find()
            .filter(funnel_version::Column::FunnelId.eq(funnel))
            .order_by_desc(funnel_version::Column::Version)
            .one(&self.db)
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
        .exec_without_returning(&self.db)
        .await?;
        Ok(version)
    }

    /// Every enrollment of a lead in a funnel, oldest first.
    pub async fn enrollments_of(
        &self,
        lead: LeadId,
        funnel: &str,
    ) -> Result<Vec<StoredEnrollment>> {
        enrollment::Entity::find()
            .filter(enrollment::Column::LeadId.eq(lead.0))
            .filter(enrollment::Column::FunnelId.eq(funnel))
            .order_by_asc(enrollment::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_stored)
            .collect()
    }

    /// Stores a new enrollment with its first transition (state, history, outbox) at once.
    pub async fn enroll(
        &self,
        lead: LeadId,
        funnel: &str,
        version: i32,
        step_id: Option<String>,
        t: &Transition,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let txn = self.db.begin().await?;
        let (status, outcome) = status_parts(t.state.status);
        let st = &t.state;
        let res = enrollment::Entity::insert(enrollment::ActiveModel {
            id: NotSet,
            lead_id: Set(lead.0),
            funnel_id: Set(funnel.to_string()),
            funnel_version: Set(version),
            stage_id: Set(st.stage.to_string()),
            step_id: Set(step_id),
            step_index: Set(st.step as i32),
            status: Set(status.to_string()),
            wake_at: Set(st.wake_at.map(ms)),
            deadline_at: Set(st.deadline.map(ms)),
            stage_entered_at: Set(ms(st.stage_entered_at)),
            stage_entry: Set(st.stage_entry as i32),
            entered_at: Set(ms(now)),
            exited_at: Set(matches!(st.status, Status::Exited(_)).then(|| ms(now))),
            outcome: Set(outcome.map(str::to_string)),
            lease_owner: Set(None),
            lease_until: Set(None),
            attempts: Set(0),
            updated_at: Set(ms(now)),
            events_seen: Set(0),
            pending_at: Set(None),
        })
        .exec(&txn)
        .await?;
        let id = res.last_insert_id;
        apply_effects(
            &txn,
            Of {
                enrollment: id,
                lead,
                funnel,
                version,
            },
            &t.effects,
            None,
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(id)
    }

    /// Leases up to `limit` enrollments whose wake-up is due, earliest first.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<StoredEnrollment>> {
        let mut rows: Vec<StoredEnrollment> = Vec::new();
        for pending in [false, true] {
            let left = limit.saturating_sub(rows.len() as u64);
            if left == 0 {
                break;
            }
            let values: Vec<Value> = vec![
                owner.into(),
                ms(now + lease).into(),
                ms(now).into(),
                ms(now).into(),
            ];
            let stmt = Statement::from_sql_and_values(
                self.sql_backend(),
                claim_sql(self.backend, pending, left),
                values,
            );
            let claimed = enrollment::Entity::find()
                .from_raw_sql(stmt)
                .all(&self.db)
                .await?;
            for m in claimed {
                rows.push(to_stored(m)?);
            }
        }
        rows.sort_by_key(|e| (e.state.wake_at, e.id));
        Ok(rows)
    }

    /// Leases the lead's live enrollments that nobody else holds, to feed them an event.
    pub async fn claim_for_lead(
        &self,
        lead: LeadId,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(Vec<StoredEnrollment>, usize)> {
        let live = enrollment::Entity::find()
            .filter(enrollment::Column::LeadId.eq(lead.0))
            .filter(enrollment::Column::Status.is_in(["active", "unconfirmed"]))
            .order_by_asc(enrollment::Column::Id)
            .all(&self.db)
            .await?;
        let mut claimed = Vec::new();
        let mut busy = 0;
        for e in live {
            let res = enrollment::Entity::update_many()
                .col_expr(enrollment::Column::LeaseOwner, Expr::value(owner))
                .col_expr(enrollment::Column::LeaseUntil, Expr::value(ms(now + lease)))
                .filter(enrollment::Column::Id.eq(e.id))
                .filter(
                    enrollment::Column::LeaseUntil
                        .is_null()
                        .or(enrollment::Column::LeaseUntil.lt(ms(now))),
                )
                .exec(&self.db)
                .await?;
            if res.rows_affected == 1 {
                claimed.push(to_stored(e)?);
            } else {
                busy += 1;
            }
        }
        Ok((claimed, busy))
    }

    /// Commits a transition of a leased enrollment: state, history, outbox rows and lead changes
    /// in one transaction. `Ok(false)` when the lease was lost (another worker took over).
    pub async fn commit(
        &self,
        e: &StoredEnrollment,
        owner: &str,
        step_id: Option<String>,
        version: i32,
        t: &Transition,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = self
            .commit_many(
                owner,
                &[Committed {
                    enrollment: e,
                    events_seen: e.events_seen,
                    recipient: None,
                    step_id,
                    version,
                    transition: t,
                }],
                now,
            )
            .await?;
        Ok(done == 1)
    }

    /// Commits the transitions of a scheduler round in one transaction; each one is applied
    /// only if its lease still holds. Returns how many were applied.
    pub async fn commit_many(
        &self,
        owner: &str,
        items: &[Committed<'_>],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let txn = self.db.begin().await?;
        let mut applied = 0;
        for c in items {
            if commit_in(&txn, owner, c, now).await? {
                applied += 1;
            }
        }
        txn.commit().await?;
        Ok(applied)
    }

    /// What the engine needs to know of a lead at `now`.
    pub async fn lead_facts(&self, id: LeadId, now: DateTime<Utc>) -> Result<LeadFacts> {
        self.lead_facts_many(&[id], now)
            .await?
            .remove(&id)
            .ok_or_else(|| StoreError::Corrupt(format!("lead {id} does not exist")))
    }

    /// The facts of many leads in five queries, whatever their number (a scheduler round).
    pub async fn lead_facts_many(
        &self,
        ids: &[LeadId],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LeadId, LeadFacts>> {
        let mut out = HashMap::new();
        let raw: Vec<i64> = ids
            .iter()
            .map(|l| l.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in raw.chunks(500) {
            self.lead_facts_chunk(chunk, now, &mut out).await?;
        }
        Ok(out)
    }

    async fn lead_facts_chunk(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
        out: &mut HashMap<LeadId, LeadFacts>,
    ) -> Result<()> {
        let leads = lead::Entity::find()
            .filter(lead::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        let emails: Vec<String> = leads.iter().map(|l| l.email.clone()).collect();
        let suppressed: BTreeSet<String> = suppression::Entity::find()
            .filter(suppression::Column::Email.is_in(emails))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| s.email)
            .collect();
        for l in leads {
            let mut fields: BTreeMap<String, serde_json::Value> =
                parse_fields(&l.fields)?.into_iter().collect();
            fields.insert("email".into(), l.email.clone().into());
            if let Some(n) = &l.first_name {
                fields.insert("first_name".into(), n.clone().into());
            }
            out.insert(
                LeadId(l.id),
                LeadFacts {
                    id: l.id,
                    timezone: l.timezone.as_deref().and_then(|t| t.parse().ok()),
                    fields,
                    score: l.score,
                    mailable: !suppressed.contains(&l.email) && l.consent != "unsubscribed",
                    ..LeadFacts::default()
                },
            );
        }
        for t in lead_tag::Entity::find()
            .filter(lead_tag::Column::LeadId.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?
        {
            if let Some(f) = out.get_mut(&LeadId(t.lead_id)) {
                f.tags.insert(t.tag);
            }
        }
        let events = event::Entity::find()
            .filter(event::Column::LeadId.is_in(ids.iter().copied()))
            .filter(event::Column::Kind.is_in(["click", "open", "purchase"]))
            .all(&self.db)
            .await?;
        for ev in events {
            let Some(f) = ev.lead_id.and_then(|l| out.get_mut(&LeadId(l))) else {
                continue;
            };
            let p: serde_json::Value = serde_json::from_str(&ev.payload).unwrap_or_default();
            let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
            match ev.kind.as_str() {
                "click" => {
                    if let Some(t) = s("template") {
                        f.clicked.insert((t, s("link").unwrap_or_default()));
                    }
                }
                "open" => f.opened.extend(s("template")),
                _ => f.purchased.extend(s("product")),
            }
        }
        let sent = message::Entity::find()
            .filter(message::Column::LeadId.is_in(ids.iter().copied()))
            .filter(message::Column::Kind.eq("email"))
            .filter(message::Column::CreatedAt.gt(ms(now - Duration::days(31))))
            .filter(message::Column::SendKey.not_like("%:double-opt-in"))
            .all(&self.db)
            .await?;
        for m in sent {
            if let Some(f) = out.get_mut(&LeadId(m.lead_id)) {
                f.sent_at.push(from_ms(m.created_at));
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
    pub async fn stage_history(&self, enrollment: i64) -> Result<Vec<StageVisit>> {
        Ok(stage_history::Entity::find()
            .filter(stage_history::Column::EnrollmentId.eq(enrollment))
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

/// Writes what a transition did: stage history, outbox rows (once per send key) and lead
/// changes, inside the caller's transaction.
async fn apply_effects(
    txn: &DatabaseTransaction,
    of: Of<'_>,
    effects: &[Effect],
    mut email: Option<String>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Of {
        enrollment: enrollment_id,
        lead: lead_id,
        funnel,
        version,
    } = of;
    let mut fields: Option<serde_json::Map<String, serde_json::Value>> = None;
    let mut score = 0i64;
    for (i, fx) in effects.iter().enumerate() {
        match fx {
            Effect::EnterStage { stage } => {
                stage_history::Entity::insert(stage_history::ActiveModel {
                    id: NotSet,
                    enrollment_id: Set(enrollment_id),
                    lead_id: Set(lead_id.0),
                    funnel_id: Set(funnel.to_string()),
                    stage_id: Set(stage.to_string()),
                    entered_at: Set(ms(now)),
                    exited_at: Set(None),
                    exit_reason: Set(None),
                    next_stage_id: Set(None),
                })
                .exec_without_returning(txn)
                .await?;
            }
            Effect::LeaveStage { stage, reason } => {
                let next = effects[i + 1..].iter().find_map(|f| match f {
                    Effect::EnterStage { stage } => Some(stage.to_string()),
                    _ => None,
                });
                stage_history::Entity::update_many()
                    .col_expr(stage_history::Column::ExitedAt, Expr::value(ms(now)))
                    .col_expr(
                        stage_history::Column::ExitReason,
                        Expr::value(reason.clone()),
                    )
                    .col_expr(stage_history::Column::NextStageId, Expr::value(next))
                    .filter(stage_history::Column::EnrollmentId.eq(enrollment_id))
                    .filter(stage_history::Column::StageId.eq(stage.to_string()))
                    .filter(stage_history::Column::ExitedAt.is_null())
                    .exec(txn)
                    .await?;
            }
            Effect::SendEmail {
                template,
                step,
                key,
            } => {
                let to = recipient(txn, lead_id, &mut email).await?;
                let payload = serde_json::json!({ "funnel": funnel, "version": version, "template": template.as_str() });
                outbox(
                    txn,
                    "email",
                    lead_id,
                    enrollment_id,
                    funnel,
                    version,
                    step.as_str(),
                    Some(template.to_string()),
                    key,
                    to,
                    payload,
                    now,
                )
                .await?;
            }
            Effect::CallWebhook { webhook, step, key } => {
                let to = recipient(txn, lead_id, &mut email).await?;
                let payload = serde_json::json!({ "funnel": funnel, "version": version, "webhook": webhook.as_str() });
                outbox(
                    txn,
                    "webhook",
                    lead_id,
                    enrollment_id,
                    funnel,
                    version,
                    step.as_str(),
                    None,
                    key,
                    to,
                    payload,
                    now,
                )
                .await?;
            }
            Effect::Tag(tag) => {
                lead_tag::Entity::insert(lead_tag::ActiveModel {
                    lead_id: Set(lead_id.0),
                    tag: Set(tag.to_string()),
                    created_at: Set(ms(now)),
                })
                .on_conflict(
                    OnConflict::columns([lead_tag::Column::LeadId, lead_tag::Column::Tag])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            }
            Effect::Untag(tag) => {
                lead_tag::Entity::delete_many()
                    .filter(lead_tag::Column::LeadId.eq(lead_id.0))
                    .filter(lead_tag::Column::Tag.eq(tag.to_string()))
                    .exec(txn)
                    .await?;
            }
            Effect::SetField { field, value } => {
                if fields.is_none() {
                    let l = lead::Entity::find_by_id(lead_id.0).one(txn).await?;
                    fields = Some(match l {
                        Some(l) => parse_fields(&l.fields)?,
                        None => serde_json::Map::new(),
                    });
                }
                if let Some(f) = fields.as_mut() {
                    f.insert(field.clone(), value.clone());
                }
            }
            Effect::AddScore(n) => score += n,
            Effect::Emitted(_) | Effect::Exit(_) | Effect::Held { .. } | Effect::Skipped { .. } => {
            }
        }
    }
    if fields.is_some() || score != 0 {
        let mut update = lead::Entity::update_many()
            .col_expr(lead::Column::UpdatedAt, Expr::value(ms(now)))
            .col_expr(
                lead::Column::Score,
                Expr::col(lead::Column::Score).add(score),
            );
        if let Some(f) = fields {
            update = update.col_expr(
                lead::Column::Fields,
                Expr::value(serde_json::Value::Object(f).to_string()),
            );
        }
        update
            .filter(lead::Column::Id.eq(lead_id.0))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// The lead's address, read once per transaction.
async fn recipient(
    txn: &DatabaseTransaction,
    lead_id: LeadId,
    cache: &mut Option<String>,
) -> Result<String> {
    if cache.is_none() {
        let l = lead::Entity::find_by_id(lead_id.0)
            .one(txn)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("lead {lead_id} does not exist")))?;
        *cache = Some(l.email);
    }
    Ok(cache.clone().unwrap_or_default())
}

/// Queues an email or webhook; the send key makes a repeated transition queue nothing new.
#[allow(clippy::too_many_arguments)]
async fn outbox(
    txn: &DatabaseTransaction,
    kind: &str,
    lead_id: LeadId,
    enrollment_id: i64,
    funnel: &str,
    version: i32,
    step: &str,
    template: Option<String>,
    key: &str,
    recipient: String,
    payload: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    let stage = key.split(':').nth(1).map(str::to_string);
    message::Entity::insert(message::ActiveModel {
        id: NotSet,
        kind: Set(kind.to_string()),
        lead_id: Set(lead_id.0),
        enrollment_id: Set(Some(enrollment_id)),
        funnel_id: Set(Some(funnel.to_string())),
        stage_id: Set(stage),
        step_id: Set(Some(step.to_string())),
        template: Set(template),
        send_key: Set(format!("{}:v{version}:{key}", lead_id.0)),
        recipient: Set(recipient),
        payload: Set(payload.to_string()),
        status: Set("queued".to_string()),
        attempts: Set(0),
        next_attempt_at: Set(Some(ms(now))),
        lease_until: Set(None),
        last_error: Set(None),
        created_at: Set(ms(now)),
        sent_at: Set(None),
    })
    .on_conflict(
        OnConflict::column(message::Column::SendKey)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

/// Whose effects are being written.
#[derive(Clone, Copy)]
struct Of<'a> {
    enrollment: i64,
    lead: LeadId,
    funnel: &'a str,
    version: i32,
}

/// One transition to commit: the claimed enrollment, where it now stands, and what it did.
pub struct Committed<'a> {
    pub enrollment: &'a StoredEnrollment,
    /// The id of the last event fed in this transition (or the one already seen).
    pub events_seen: i64,
    /// The lead's address when the caller has it (saves a query per email).
    pub recipient: Option<String>,
    pub step_id: Option<String>,
    pub version: i32,
    pub transition: &'a Transition,
}

/// Applies one transition inside `txn` if `owner` still holds the enrollment's lease.
async fn commit_in(
    txn: &DatabaseTransaction,
    owner: &str,
    c: &Committed<'_>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (e, t, version, step_id) = (c.enrollment, c.transition, c.version, c.step_id.clone());
    let (status, outcome) = status_parts(t.state.status);
    let st = &t.state;
    let res = enrollment::Entity::update_many()
        .col_expr(enrollment::Column::FunnelVersion, Expr::value(version))
        .col_expr(
            enrollment::Column::StageId,
            Expr::value(st.stage.to_string()),
        )
        .col_expr(enrollment::Column::StepId, Expr::value(step_id))
        .col_expr(enrollment::Column::StepIndex, Expr::value(st.step as i32))
        .col_expr(enrollment::Column::Status, Expr::value(status))
        .col_expr(
            enrollment::Column::Outcome,
            Expr::value(outcome.map(str::to_string)),
        )
        .col_expr(enrollment::Column::WakeAt, Expr::value(st.wake_at.map(ms)))
        .col_expr(
            enrollment::Column::DeadlineAt,
            Expr::value(st.deadline.map(ms)),
        )
        .col_expr(
            enrollment::Column::StageEnteredAt,
            Expr::value(ms(st.stage_entered_at)),
        )
        .col_expr(
            enrollment::Column::StageEntry,
            Expr::value(st.stage_entry as i32),
        )
        .col_expr(
            enrollment::Column::ExitedAt,
            Expr::value(matches!(st.status, Status::Exited(_)).then(|| ms(now))),
        )
        .col_expr(
            enrollment::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            enrollment::Column::LeaseUntil,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(enrollment::Column::UpdatedAt, Expr::value(ms(now)))
        .filter(enrollment::Column::Id.eq(e.id))
        .filter(enrollment::Column::LeaseOwner.eq(owner))
        .exec(txn)
        .await?;
    if res.rows_affected != 1 {
        return Ok(false);
    }
    apply_effects(
        txn,
        Of {
            enrollment: e.id,
            lead: e.lead,
            funnel: &e.funnel,
            version,
        },
        &t.effects,
        c.recipient.clone(),
        now,
    )
    .await?;
    Ok(true)
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
    pub async fn latest_funnel_version(&self, funnel: &str) -> Result<Option<(i32, String)>> {
        Ok(funnel_version::Entity::find()
            .filter(funnel_version::Column::FunnelId.eq(funnel))
            .order_by_desc(funnel_version::Column::Version)
            .one(&self.db)
            .await?
            .map(|v| (v.version, v.source)))
    }

    /// Where the live enrollments of a funnel stand, counted per stage and step.
    pub async fn live_positions(&self, funnel: &str) -> Result<Vec<Position>> {
        let mut counts: BTreeMap<(String, Option<String>, i32, i32), i64> = BTreeMap::new();
        let rows = enrollment::Entity::find()
            .filter(enrollment::Column::FunnelId.eq(funnel))
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
    /// Stops all mail to the lead's address (`unsubscribed`, `bounced`, `complained`, …).
    pub async fn suppress(&self, lead: LeadId, reason: &str, now: DateTime<Utc>) -> Result<()> {
        let Some(l) = lead::Entity::find_by_id(lead.0).one(&self.db).await? else {
            return Ok(());
        };
        suppression::Entity::insert(suppression::ActiveModel {
            id: NotSet,
            email: Set(l.email),
            scope: Set("*".to_string()),
            reason: Set(reason.to_string()),
            created_at: Set(ms(now)),
        })
        .on_conflict(
            OnConflict::columns([suppression::Column::Email, suppression::Column::Scope])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Marks the lead's live enrollments as having an event to consume.
    pub async fn mark_pending(&self, lead: LeadId, now: DateTime<Utc>) -> Result<()> {
        enrollment::Entity::update_many()
            .col_expr(enrollment::Column::PendingAt, Expr::value(ms(now)))
            .filter(enrollment::Column::LeadId.eq(lead.0))
            .filter(enrollment::Column::Status.is_in(["active", "unconfirmed"]))
            .exec(&self.db)
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
        for chunk in ids.chunks(500) {
            let rows = event::Entity::find()
                .filter(event::Column::LeadId.is_in(chunk.iter().copied()))
                .filter(event::Column::Id.gt(after))
                .order_by_asc(event::Column::Id)
                .all(&self.db)
                .await?;
            for r in rows {
                let p: serde_json::Value = serde_json::from_str(&r.payload).unwrap_or_default();
                let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
                out.push(StoredEvent {
                    id: r.id,
                    lead: LeadId(r.lead_id.unwrap_or_default()),
                    event: crate::engine::Event {
                        name: r.kind.clone(),
                        product: s("product"),
                        template: s("template"),
                        link: s("link"),
                        form: s("form"),
                    },
                });
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }
}

/// A stored event, as the engine matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub lead: LeadId,
    pub event: crate::engine::Event,
}
