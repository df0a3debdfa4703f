//! The outbox as the sender sees it: messages claimed with a lease (one attempt in flight per
//! message), then marked sent, queued again for a later attempt, or failed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::batch::Params;
use super::entities::{enrollment, message, suppression};
use super::{Backend, Result, Store, from_ms, ms};
use crate::domain::LeadId;

/// An email waiting to be sent, as claimed by the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub id: i64,
    pub lead: LeadId,
    pub enrollment: Option<i64>,
    pub funnel: Option<String>,
    pub stage: Option<String>,
    pub template: Option<String>,
    pub send_key: String,
    pub recipient: String,
    /// Attempts made so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOrigin {
    pub lead: LeadId,
    pub funnel: Option<String>,
    pub template: Option<String>,
}

impl Store {
    /// Leases up to `limit` emails due for an attempt, oldest due first. A message whose
    /// sender died mid-attempt (`sending` with a lapsed lease) is queued again first, so it is
    /// attempted again. The claim walks the `(status, next_attempt_at)` index in order: no sort,
    /// however deep the backlog.
    pub async fn claim_messages(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<Outgoing>> {
        let _turn = self.turn().await;
        let mut q = Params::new(self.backend);
        let lapsed = q.p(ms(now));
        let sql = format!(
            "UPDATE messages SET status = 'queued', lease_until = NULL \
             WHERE status = 'sending' AND lease_until < {lapsed}"
        );
        self.db.execute_raw(q.statement(sql)).await?;
        let mut q = Params::new(self.backend);
        let until = q.p(ms(now + lease));
        let due = q.p(ms(now));
        let n = q.p(limit as i64);
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE messages SET status = 'sending', lease_until = {until}, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM messages WHERE status = 'queued' \
             AND next_attempt_at <= {due} AND kind = 'email' \
             ORDER BY next_attempt_at LIMIT {n}{lock}) RETURNING *"
        );
        let mut out: Vec<Outgoing> = message::Entity::find()
            .from_raw_sql(q.statement(sql))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| Outgoing {
                id: m.id,
                lead: LeadId(m.lead_id),
                enrollment: m.enrollment_id,
                funnel: m.funnel_id,
                stage: m.stage_id,
                template: m.template,
                send_key: m.send_key,
                recipient: m.recipient,
                attempts: m.attempts,
                created_at: from_ms(m.created_at),
            })
            .collect();
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// These messages went out.
    pub async fn messages_sent(&self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        let _turn = self.turn().await;
        for chunk in ids.chunks(super::batch::ROWS) {
            message::Entity::update_many()
                .col_expr(message::Column::Status, Expr::value("sent"))
                .col_expr(
                    message::Column::LeaseUntil,
                    Expr::value(Option::<i64>::None),
                )
                .col_expr(message::Column::SentAt, Expr::value(ms(now)))
                .filter(message::Column::Id.is_in(super::batch::padded(chunk.iter().copied())))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// A transient failure: try again at `at`.
    pub async fn message_retry(&self, id: i64, at: DateTime<Utc>, error: &str) -> Result<()> {
        self.finish_message(id, "queued", None, Some(ms(at)), Some(error))
            .await
    }

    /// A permanent failure (or the last attempt): the message is not tried again.
    pub async fn message_failed(&self, id: i64, error: &str) -> Result<()> {
        self.finish_message(id, "failed", None, None, Some(error))
            .await
    }

    /// Not sent because its address was suppressed after it was queued.
    pub async fn message_suppressed(&self, id: i64) -> Result<()> {
        self.finish_message(id, "suppressed", None, None, Some("address suppressed"))
            .await
    }

    /// Which of these messages must not go: to an address suppressed everywhere or in their
    /// funnel, or from a run taken out of its funnel.
    pub async fn suppressed_among(&self, messages: &[Outgoing]) -> Result<HashSet<i64>> {
        let emails: Vec<String> = messages.iter().map(|m| m.recipient.clone()).collect();
        let mut scopes: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in emails.chunks(super::batch::ROWS) {
            for s in suppression::Entity::find()
                .filter(
                    suppression::Column::Email.is_in(super::batch::padded(chunk.iter().cloned())),
                )
                .all(&self.db)
                .await?
            {
                scopes.entry(s.email).or_default().push(s.scope);
            }
        }
        // A run taken out of its funnel through the admin API sends nothing it had queued.
        let ids: Vec<i64> = messages.iter().filter_map(|m| m.enrollment).collect();
        let mut removed: HashSet<i64> = HashSet::new();
        for chunk in ids.chunks(super::batch::ROWS) {
            let rows: Vec<i64> = enrollment::Entity::find()
                .select_only()
                .column(enrollment::Column::Id)
                .filter(enrollment::Column::Id.is_in(super::batch::padded(chunk.iter().copied())))
                .filter(enrollment::Column::Outcome.eq("removed"))
                .into_tuple()
                .all(&self.db)
                .await?;
            removed.extend(rows);
        }
        Ok(messages
            .iter()
            .filter(|m| {
                m.enrollment.is_some_and(|e| removed.contains(&e))
                    || scopes.get(&m.recipient).is_some_and(|s| {
                        s.iter()
                            .any(|s| s == "*" || Some(s.as_str()) == m.funnel.as_deref())
                    })
            })
            .map(|m| m.id)
            .collect())
    }

    async fn finish_message(
        &self,
        id: i64,
        status: &str,
        sent_at: Option<i64>,
        next: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        let _turn = self.turn().await;
        let mut u = message::Entity::update_many()
            .col_expr(message::Column::Status, Expr::value(status))
            .col_expr(
                message::Column::LeaseUntil,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(message::Column::SentAt, Expr::value(sent_at));
        if let Some(n) = next {
            u = u.col_expr(message::Column::NextAttemptAt, Expr::value(n));
        }
        if let Some(e) = error {
            u = u.col_expr(message::Column::LastError, Expr::value(e));
        }
        u.filter(message::Column::Id.eq(id)).exec(&self.db).await?;
        Ok(())
    }

    /// The lead, funnel and template of a message, for its tracked links and pixel; `None` once
    /// the message (or its lead) is gone.
    pub async fn message_origin(&self, id: i64) -> Result<Option<MessageOrigin>> {
        Ok(message::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(|m| MessageOrigin {
                lead: LeadId(m.lead_id),
                funnel: m.funnel_id,
                template: m.template,
            }))
    }

    /// The stage deadlines of these messages' enrollments, as they stand now.
    pub async fn deadlines_of(&self, messages: &[Outgoing]) -> Result<HashMap<i64, DateTime<Utc>>> {
        let ids: Vec<i64> = messages.iter().filter_map(|m| m.enrollment).collect();
        let mut by_enrollment = HashMap::new();
        for chunk in ids.chunks(super::batch::ROWS) {
            let rows: Vec<(i64, i64)> = enrollment::Entity::find()
                .select_only()
                .columns([enrollment::Column::Id, enrollment::Column::DeadlineAt])
                .filter(enrollment::Column::Id.is_in(super::batch::padded(chunk.iter().copied())))
                .filter(enrollment::Column::DeadlineAt.is_not_null())
                .into_tuple()
                .all(&self.db)
                .await?;
            by_enrollment.extend(rows.into_iter().map(|(id, d)| (id, from_ms(d))));
        }
        Ok(messages
            .iter()
            .filter_map(|m| Some((m.id, *by_enrollment.get(&m.enrollment?)?)))
            .collect())
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
