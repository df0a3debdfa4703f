//! The outbox as the sender sees it, through the narrow [`Outbox`] handle: messages claimed
//! with a lease (one attempt in flight per message), then marked sent, queued again for a
//! later attempt, failed, or bounced. The read side (depth, origin of a tracked message) is on
//! [`Store`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
};

use super::entities::{enrollment, event, message, suppression};
use super::mails;
use super::sql::Params;
use super::{Backend, Result, Store, from_ms, ms, payload_of};
use crate::domain::{Email, EnrollmentId, Event, EventKind, FunnelId, Lead, LeadId, Outcome};
use crate::tally::MailWhat;

/// An email waiting to be sent, as claimed by the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub id: i64,
    pub lead: LeadId,
    pub enrollment: Option<EnrollmentId>,
    pub funnel: Option<FunnelId>,
    pub stage: Option<String>,
    pub template: Option<String>,
    pub send_key: String,
    pub recipient: String,
    /// Attempts made so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// A webhook call waiting to be made, as claimed by the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingHook {
    pub id: i64,
    pub lead: LeadId,
    pub funnel: Option<FunnelId>,
    pub stage: Option<String>,
    pub step: Option<String>,
    /// The funnel's `webhooks:` entry it calls.
    pub webhook: Option<String>,
    /// The lifecycle event of a subscription's call (`stage.entered`, …), with what the call
    /// says of it; none for a funnel's `webhook:` step.
    pub event: Option<String>,
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Attempts made so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOrigin {
    pub lead: LeadId,
    pub funnel: Option<FunnelId>,
    pub template: Option<String>,
}

/// What the sender may do with the database: claim due emails, read what composing them
/// needs, and record each attempt's outcome. Nothing else.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
}

impl Store {
    /// The sender's handle on the outbox.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            store: self.clone(),
        }
    }
}

/// The file an email is written to in the outbox folder (the embedded transport): its send
/// key made a file name.
pub fn file_name(send_key: &str) -> String {
    format!("{}.eml", send_key.replace([':', '/'], "_"))
}

impl Outbox {
    /// Leases up to `limit` emails due for an attempt, oldest due first. A message whose
    /// sender died mid-attempt (`sending` with a lapsed lease) is queued again first, so it is
    /// attempted again — unless it has had `max_attempts` already: then it is parked as
    /// `failed`, so a message that kills its sender cannot come back forever. The claim walks
    /// the `(status, next_attempt_at)` index in order: no sort, however deep the backlog.
    pub async fn claim(
        &self,
        max_attempts: i32,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<Outgoing>> {
        let store = &self.store;
        let txn = store.write().await?;
        let reason = format!(
            "parked: {max_attempts} attempts ended without an outcome (the sender stopped each time)"
        );
        let parked_rows: Vec<mails::Columns> = super::sql::update_packed(
            &txn,
            store.backend,
            "messages",
            |q| {
                format!(
                    "status = 'failed', lease_until = NULL, last_error = {}",
                    q.p(reason.clone())
                )
            },
            |q| {
                format!(
                    "status = 'sending' AND lease_until < {} AND attempts >= {}",
                    q.p(ms(now)),
                    q.p(max_attempts)
                )
            },
            mails::COLUMNS,
            None,
        )
        .await?;
        let parked = parked_rows.len();
        mails::count_status(
            &txn,
            store.backend,
            store.zone,
            parked_rows,
            MailWhat::Failed,
        )
        .await?;
        if parked > 0 {
            tracing::error!(
                messages = parked,
                "messages parked after {max_attempts} unfinished attempts"
            );
        }
        let mut q = Params::new(store.backend);
        let lapsed = q.p(ms(now));
        let sql = format!(
            "UPDATE messages SET status = 'queued', lease_until = NULL \
             WHERE status = 'sending' AND lease_until < {lapsed}"
        );
        txn.execute_raw(q.statement(sql)).await?;
        let mut q = Params::new(store.backend);
        let until = q.p(ms(now + lease));
        let due = q.p(ms(now));
        let n = q.p(limit as i64);
        let lock = match store.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        // Only what the sender uses (not the payload), read by position.
        let sql = format!(
            "UPDATE messages SET status = 'sending', lease_until = {until}, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM messages WHERE status = 'queued' \
             AND next_attempt_at <= {due} AND kind = 'email' \
             ORDER BY next_attempt_at LIMIT {n}{lock}) \
             RETURNING id, lead_id, enrollment_id, funnel_id, stage_id, template, send_key, \
             recipient, attempts, created_at"
        );
        let mut out: Vec<Outgoing> = Vec::new();
        for r in txn.query_all_raw(q.statement(sql)).await? {
            let funnel: Option<String> = r.try_get_by_index(3)?;
            out.push(Outgoing {
                id: r.try_get_by_index(0)?,
                lead: LeadId(r.try_get_by_index(1)?),
                enrollment: r.try_get_by_index::<Option<i64>>(2)?.map(EnrollmentId),
                funnel: funnel.and_then(|f| FunnelId::parse(&f).ok()),
                stage: r.try_get_by_index(4)?,
                template: r.try_get_by_index(5)?,
                send_key: r.try_get_by_index(6)?,
                recipient: r.try_get_by_index(7)?,
                attempts: r.try_get_by_index(8)?,
                created_at: from_ms(r.try_get_by_index(9)?),
            });
        }
        out.sort_by_key(|m| m.id);
        txn.commit().await?;
        Ok(out)
    }

    /// Leases up to `limit` webhook calls due for an attempt (or whose attempt's lease
    /// lapsed: the sender stopped mid-call), oldest due first.
    pub async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<OutgoingHook>> {
        let store = &self.store;
        let txn = store.write().await?;
        let lock = match store.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        // Calls whose attempt's lease lapsed are due again. Then the due calls in the order
        // of the status index (one ordered range, not every queued call sorted each round).
        let mut q = Params::new(store.backend);
        let sql = format!(
            "UPDATE messages SET status = 'queued', lease_until = NULL \
             WHERE status = 'sending' AND kind = 'webhook' AND lease_until < {}",
            q.p(ms(now))
        );
        txn.execute_raw(q.statement(sql)).await?;
        type Row = (
            i64,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i32,
            i64,
        );
        // Read packed, in one answer; `attempts` as the update leaves it.
        let rows: Vec<Row> = super::sql::update_packed(
            &txn,
            store.backend,
            "messages",
            |q| {
                format!(
                    "status = 'sending', lease_until = {}, attempts = attempts + 1",
                    q.p(ms(now + lease))
                )
            },
            |q| {
                format!(
                    "id IN (SELECT id FROM messages WHERE status = 'queued' \
                     AND next_attempt_at <= {} AND kind = 'webhook' \
                     ORDER BY next_attempt_at LIMIT {}{lock})",
                    q.p(ms(now)),
                    q.p(limit as i64)
                )
            },
            "id, lead_id, funnel_id, stage_id, step_id, payload, attempts, created_at",
            Some("id, lead_id, funnel_id, stage_id, step_id, payload, attempts + 1, created_at"),
        )
        .await?;
        let mut out: Vec<OutgoingHook> = Vec::new();
        for (id, lead, funnel, stage, step, payload, attempts, created_at) in rows {
            let mut detail = match payload.map(|p| serde_json::from_str(&p)) {
                Some(Ok(serde_json::Value::Object(o))) => o,
                _ => serde_json::Map::new(),
            };
            let mut take = |k: &str| match detail.remove(k) {
                Some(serde_json::Value::String(s)) => Some(s),
                _ => None,
            };
            let (webhook, event) = (take("webhook"), take("event"));
            // A step's call keeps its funnel and version out of the body.
            if event.is_none() {
                detail.clear();
            }
            out.push(OutgoingHook {
                id,
                lead: LeadId(lead),
                funnel: funnel.and_then(|f| FunnelId::parse(&f).ok()),
                stage,
                step,
                webhook,
                event,
                detail,
                attempts,
                created_at: from_ms(created_at),
            });
        }
        out.sort_by_key(|m| m.id);
        txn.commit().await?;
        Ok(out)
    }

    /// The leads these messages go to, to compose them for.
    pub async fn leads(&self, ids: &[LeadId]) -> Result<HashMap<LeadId, Lead>> {
        self.store.leads(ids).await
    }

    /// These messages went out: each counts as accepted once.
    pub async fn sent(&self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        let store = &self.store;
        let txn = store.write().await?;
        for chunk in ids.chunks(super::sql::ROWS) {
            let rows: Vec<mails::Columns> = super::sql::update_packed(
                &txn,
                store.backend,
                "messages",
                |q| {
                    format!(
                        "status = 'sent', lease_until = NULL, sent_at = {}",
                        q.p(ms(now))
                    )
                },
                |q| format!("id IN ({}) AND status <> 'sent'", q.list(chunk)),
                mails::COLUMNS,
                None,
            )
            .await?;
            mails::count_status(&txn, store.backend, store.zone, rows, MailWhat::Accepted).await?;
        }
        txn.commit().await
    }

    /// A transient failure: try again at `at`.
    pub async fn retry(&self, id: i64, at: DateTime<Utc>, error: &str) -> Result<()> {
        self.finish(id, "queued", Some(ms(at)), error).await
    }

    /// A permanent failure (or the last attempt): the message is not tried again.
    pub async fn failed(&self, id: i64, error: &str) -> Result<()> {
        self.finish(id, "failed", None, error).await
    }

    /// Not sent because its address was suppressed after it was queued.
    pub async fn suppressed(&self, id: i64) -> Result<()> {
        self.finish(id, "suppressed", None, "address suppressed")
            .await
    }

    async fn finish(&self, id: i64, status: &str, next: Option<i64>, error: &str) -> Result<()> {
        let txn = self.store.write().await?;
        finish(
            &txn,
            self.store.backend,
            self.store.zone,
            id,
            status,
            next,
            error,
        )
        .await?;
        txn.commit().await
    }

    /// The address refused the message for good: in one transaction the message fails, the
    /// address is suppressed everywhere, and a `bounced` event (once per message) is stored
    /// with the lead's live runs marked to be fed it, so the engine hears of it in its next
    /// round, whichever node runs it.
    pub async fn bounced(&self, m: &Outgoing, error: &str, now: DateTime<Utc>) -> Result<()> {
        let store = &self.store;
        let txn = store.write().await?;
        finish(&txn, store.backend, store.zone, m.id, "failed", None, error).await?;
        if let Ok(email) = Email::parse(&m.recipient) {
            suppression::Entity::insert(suppression::ActiveModel {
                id: sea_orm::ActiveValue::NotSet,
                email: sea_orm::ActiveValue::Set(super::suppression_key(email.as_str())),
                scope: sea_orm::ActiveValue::Set("*".into()),
                reason: sea_orm::ActiveValue::Set(EventKind::Bounced.as_str().into()),
                created_at: sea_orm::ActiveValue::Set(ms(now)),
            })
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    suppression::Column::Email,
                    suppression::Column::Scope,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&*txn)
            .await?;
        }
        let e = Event {
            template: m.template.clone(),
            message: Some(m.id),
            ..Event::of(EventKind::Bounced)
        };
        let stored = event::Entity::insert(event::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
            lead_id: sea_orm::ActiveValue::Set(Some(m.lead.0)),
            kind: sea_orm::ActiveValue::Set(e.kind.as_str().into()),
            payload: sea_orm::ActiveValue::Set(payload_of(&e).to_string()),
            idempotency_key: sea_orm::ActiveValue::Set(Some(format!("bounce:{}", m.send_key))),
            occurred_at: sea_orm::ActiveValue::Set(ms(now)),
            received_at: sea_orm::ActiveValue::Set(ms(now)),
            processed_at: sea_orm::ActiveValue::Set(Some(ms(now))),
        })
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(event::Column::IdempotencyKey)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&*txn)
        .await?;
        if stored > 0 {
            let new = [(m.lead, &e, now)];
            mails::count_tracking(&txn, store.backend, store.zone, &new).await?;
        }
        enrollment::Entity::update_many()
            .col_expr(enrollment::Column::PendingAt, Expr::value(ms(now)))
            .filter(enrollment::Column::LeadId.eq(m.lead.0))
            .filter(enrollment::Column::Status.is_in(["active", "unconfirmed"]))
            .exec(&*txn)
            .await?;
        txn.commit().await
    }

    /// Which of these messages must not go: to an address suppressed everywhere or in their
    /// funnel, or from a run taken out of its funnel.
    pub async fn suppressed_among(&self, messages: &[Outgoing]) -> Result<HashSet<i64>> {
        // Each recipient's key, the same key for the same address.
        let keys: Vec<String> = messages
            .iter()
            .map(|m| super::suppression_key(&m.recipient))
            .collect();
        let mut scopes: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in keys.chunks(super::sql::ROWS) {
            for s in suppression::Entity::find()
                .filter(suppression::Column::Email.is_in(super::sql::padded(chunk.iter().cloned())))
                .all(&self.store.db)
                .await?
            {
                scopes.entry(s.email).or_default().push(s.scope);
            }
        }
        // A run taken out of its funnel through the admin API sends nothing it had queued.
        let ids: Vec<i64> = messages
            .iter()
            .filter_map(|m| m.enrollment)
            .map(|e| e.0)
            .collect();
        let mut removed: HashSet<i64> = HashSet::new();
        for chunk in ids.chunks(super::sql::ROWS) {
            let rows: Vec<i64> = enrollment::Entity::find()
                .select_only()
                .column(enrollment::Column::Id)
                .filter(enrollment::Column::Id.is_in(super::sql::padded(chunk.iter().copied())))
                .filter(enrollment::Column::Outcome.eq(Outcome::Removed.name()))
                .into_tuple()
                .all(&self.store.db)
                .await?;
            removed.extend(rows);
        }
        Ok(messages
            .iter()
            .zip(&keys)
            .filter(|(m, key)| {
                m.enrollment.is_some_and(|e| removed.contains(&e.0))
                    || scopes.get(*key).is_some_and(|s| {
                        s.iter().any(|s| {
                            s == "*" || Some(s.as_str()) == m.funnel.as_ref().map(FunnelId::as_str)
                        })
                    })
            })
            .map(|(m, _)| m.id)
            .collect())
    }

    /// The stage deadlines of these messages' enrollments, as they stand now.
    pub async fn deadlines_of(&self, messages: &[Outgoing]) -> Result<HashMap<i64, DateTime<Utc>>> {
        let ids: Vec<i64> = messages
            .iter()
            .filter_map(|m| m.enrollment)
            .map(|e| e.0)
            .collect();
        let mut by_enrollment = HashMap::new();
        for chunk in ids.chunks(super::sql::ROWS) {
            let rows: Vec<(i64, i64)> = enrollment::Entity::find()
                .select_only()
                .columns([enrollment::Column::Id, enrollment::Column::DeadlineAt])
                .filter(enrollment::Column::Id.is_in(super::sql::padded(chunk.iter().copied())))
                .filter(enrollment::Column::DeadlineAt.is_not_null())
                .into_tuple()
                .all(&self.store.db)
                .await?;
            by_enrollment.extend(rows.into_iter().map(|(id, d)| (id, from_ms(d))));
        }
        Ok(messages
            .iter()
            .filter_map(|m| Some((m.id, *by_enrollment.get(&m.enrollment?.0)?)))
            .collect())
    }
}

/// Ends an attempt: `status`, the next attempt's time if any, the error. A message failed
/// here counts as failed (once: a failed message is not changed again).
async fn finish(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    id: i64,
    status: &str,
    next: Option<i64>,
    error: &str,
) -> Result<()> {
    let rows: Vec<mails::Columns> = super::sql::update_packed(
        txn,
        backend,
        "messages",
        |q| {
            let mut set = format!(
                "status = {}, lease_until = NULL, sent_at = NULL, last_error = {}",
                q.p(status),
                q.p(error)
            );
            if let Some(n) = next {
                set.push_str(&format!(", next_attempt_at = {}", q.p(n)));
            }
            set
        },
        |q| format!("id = {} AND status <> 'failed'", q.p(id)),
        mails::COLUMNS,
        None,
    )
    .await?;
    if status == "failed" {
        mails::count_status(txn, backend, zone, rows, MailWhat::Failed).await?;
    }
    Ok(())
}

impl Store {
    /// The lead, funnel and template of a message, for its tracked links and pixel; `None` once
    /// the message (or its lead) is gone.
    pub async fn message_origin(&self, id: i64) -> Result<Option<MessageOrigin>> {
        Ok(super::unique(message::Entity::find_by_id(id), &self.db)
            .await?
            .map(|m| MessageOrigin {
                lead: LeadId(m.lead_id),
                funnel: m.funnel_id.and_then(|f| FunnelId::parse(&f).ok()),
                template: m.template,
            }))
    }

    /// Emails waiting for an attempt and with one in flight (read through the status index).
    pub async fn outbox_depth(&self) -> Result<(i64, i64)> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT status, COUNT(*) AS n FROM messages \
                 WHERE status IN ('queued', 'sending') GROUP BY status",
            ))
            .await?;
        let (mut queued, mut sending) = (0, 0);
        for r in rows {
            let (status, n): (String, i64) = (r.try_get_by_index(0)?, r.try_get_by_index(1)?);
            match status.as_str() {
                "queued" => queued = n,
                _ => sending = n,
            }
        }
        Ok((queued, sending))
    }

    /// When the longest-waiting queued email became due for its attempt.
    pub async fn oldest_queued(&self) -> Result<Option<DateTime<Utc>>> {
        let row: Option<Option<i64>> = message::Entity::find()
            .select_only()
            .column_as(message::Column::NextAttemptAt.min(), "m")
            .filter(message::Column::Status.eq("queued"))
            .filter(message::Column::Kind.eq("email"))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(row.flatten().map(from_ms))
    }

    /// How many messages wait in each state, for reports and metrics.
    pub async fn outbox_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT status, COUNT(*) AS n FROM messages GROUP BY status ORDER BY status",
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
            .collect()
    }
}
