//! What the admin API reads and erases: everything stored about one lead, and each funnel's
//! counts.

use serde_json::{Value, json};

use super::entities::{consent, enrollment, event, message, suppression};
use super::{Result, Store, from_ms};
use crate::domain::LeadId;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

impl Store {
    /// Everything stored about a lead, as JSON: the lead, tags, touches, events, enrollments,
    /// emails and suppressions of its address. `None` when there is no such lead.
    pub async fn export_lead(&self, id: LeadId) -> Result<Option<Value>> {
        let Some(lead) = self.leads(&[id]).await?.remove(&id) else {
            return Ok(None);
        };
        let tags: Vec<String> = self
            .lead_tags(id)
            .await?
            .iter()
            .map(|t| t.to_string())
            .collect();
        let touches: Vec<Value> = self
            .touches_of(id)
            .await?
            .into_iter()
            .map(|t| {
                json!({ "channel": t.channel, "source": t.source, "medium": t.medium,
                        "campaign": t.campaign, "term": t.term, "content": t.content,
                        "referrer": t.referrer, "landing_url": t.landing_url, "form": t.form })
            })
            .collect();
        let events: Vec<Value> = event::Entity::find()
            .filter(event::Column::LeadId.eq(id.0))
            .order_by_asc(event::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|e| {
                json!({ "event": e.kind,
                        "data": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
                        "occurred_at": from_ms(e.occurred_at) })
            })
            .collect();
        let mut enrollments: Vec<Value> = Vec::new();
        for e in enrollment::Entity::find()
            .filter(enrollment::Column::LeadId.eq(id.0))
            .order_by_asc(enrollment::Column::Id)
            .all(&self.db)
            .await?
        {
            // Each stage the run entered and left, and why it left.
            let history: Vec<Value> = self
                .stage_history(crate::domain::EnrollmentId(e.id))
                .await?
                .into_iter()
                .map(|v| {
                    json!({ "stage": v.stage, "entered_at": v.entered_at,
                            "exited_at": v.exited_at, "reason": v.exit_reason,
                            "next_stage": v.next_stage })
                })
                .collect();
            enrollments.push(json!({ "funnel": e.funnel_id, "version": e.funnel_version,
                    "stage": e.stage_id, "status": e.status, "outcome": e.outcome,
                    "entered_at": from_ms(e.entered_at),
                    "exited_at": e.exited_at.map(from_ms), "history": history }));
        }
        let messages = message::Entity::find()
            .filter(message::Column::LeadId.eq(id.0))
            .order_by_asc(message::Column::Id)
            .all(&self.db)
            .await?;
        // The webhook calls made about the lead: which webhook, when, and how they went.
        let webhooks: Vec<Value> = messages
            .iter()
            .filter(|m| m.kind == "webhook")
            .map(|m| {
                let webhook = serde_json::from_str::<Value>(&m.payload)
                    .ok()
                    .and_then(|p| p.get("webhook")?.as_str().map(str::to_string));
                json!({ "funnel": m.funnel_id, "stage": m.stage_id, "step": m.step_id,
                        "webhook": webhook, "status": m.status,
                        "created_at": from_ms(m.created_at), "sent_at": m.sent_at.map(from_ms),
                        "attempts": m.attempts, "error": m.last_error })
            })
            .collect();
        // What became of each email: its marks, and the links clicked in it.
        let mut q = super::sql::Params::new(self.backend);
        let rest = format!("FROM messages WHERE lead_id = {}", q.p(id.0));
        let marks: std::collections::HashMap<i64, i64> =
            super::sql::select_packed::<(i64, i64)>(&self.db, q, "id, marks", &rest)
                .await?
                .into_iter()
                .collect();
        let mut q = super::sql::Params::new(self.backend);
        let rest = format!(
            "FROM email_links l JOIN messages m ON m.id = l.message_id WHERE m.lead_id = {}",
            q.p(id.0)
        );
        let mut links: std::collections::HashMap<i64, Vec<String>> =
            std::collections::HashMap::new();
        for (message, link) in
            super::sql::select_packed::<(i64, String)>(&self.db, q, "l.message_id, l.link", &rest)
                .await?
        {
            links.entry(message).or_default().push(link);
        }
        let emails: Vec<Value> = messages
            .into_iter()
            .filter(|m| m.kind == "email")
            .map(|m| {
                let marked = |bit| marks.get(&m.id).is_some_and(|x| x & bit != 0);
                let mut clicked = links.remove(&m.id).unwrap_or_default();
                clicked.sort();
                json!({ "funnel": m.funnel_id, "template": m.template, "status": m.status,
                        "to": m.recipient, "created_at": from_ms(m.created_at),
                        "sent_at": m.sent_at.map(from_ms), "attempts": m.attempts,
                        "error": m.last_error,
                        "opened": marked(crate::tally::mark::OPENED),
                        "clicked": marked(crate::tally::mark::CLICKED), "links": clicked })
            })
            .collect();
        let suppressions: Vec<Value> = suppression::Entity::find()
            .filter(suppression::Column::Email.eq(super::suppression_key(lead.email.as_str())))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| json!({ "scope": s.scope, "reason": s.reason, "at": from_ms(s.created_at) }))
            .collect();
        let consents: Vec<Value> = consent::Entity::find()
            .filter(consent::Column::LeadId.eq(id.0))
            .order_by_asc(consent::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|c| {
                json!({ "status": c.status, "source": c.source, "text_version": c.text_version, "text_sha256": c.text_sha256,
                        "ip": c.ip, "user_agent": c.user_agent, "at": from_ms(c.recorded_at) })
            })
            .collect();
        // The score thresholds the lead crossed, per funnel (`mql`, `sql`).
        let mut q = super::sql::Params::new(self.backend);
        let sql = format!(
            "SELECT funnel_id, kind, occurred_at FROM milestones WHERE lead_id = {} ORDER BY id",
            q.p(id.0)
        );
        let milestones: Vec<Value> = self
            .db
            .query_all_raw(q.statement(sql))
            .await?
            .iter()
            .map(|r| {
                Ok(json!({ "funnel": r.try_get_by_index::<String>(0)?,
                           "kind": r.try_get_by_index::<String>(1)?,
                           "at": from_ms(r.try_get_by_index::<i64>(2)?) }))
            })
            .collect::<Result<_>>()?;
        Ok(Some(json!({
            "lead": {
                "id": lead.id.0, "email": lead.email.as_str(), "first_name": lead.first_name,
                "fields": lead.fields, "timezone": lead.timezone.map(|t| t.name().to_string()),
                "consent": lead.consent.as_str(), "score": lead.score, "created_at": lead.created_at,
                "tags": tags,
            },
            "touches": touches,
            "events": events,
            "enrollments": enrollments,
            "emails": emails,
            "webhooks": webhooks,
            "suppressions": suppressions,
            "consents": consents,
            "milestones": milestones,
        })))
    }

    /// Deletes a lead and everything about them (tags, touches, events, enrollments and their
    /// history, emails and their clicked links, and what they added to the report counters).
    /// A suppression of the address is kept, so an address that asked not to be mailed is not
    /// mailed if it signs up again unasked. Returns the names of the files its emails were
    /// written to in the outbox folder (the embedded transport), for the caller to delete;
    /// `None` when there was no lead.
    pub async fn erase_lead(&self, id: LeadId) -> Result<Option<Vec<String>>> {
        // What the lead added to the report counters goes with it.
        let counters = self.counters_of_lead(id).await?;
        // One transaction: a failure part-way erases nothing. Children first: the same on a
        // database whose foreign keys do not cascade.
        // The files its emails were written to in the outbox folder, for the caller to delete.
        let files: Vec<String> = message::Entity::find()
            .filter(message::Column::LeadId.eq(id.0))
            .filter(message::Column::Kind.eq("email"))
            .all(&self.db)
            .await?
            .iter()
            .map(|m| super::outbox::file_name(&m.send_key))
            .collect();
        let txn = self.write().await?;
        super::counts::forget(&txn, self.backend, &counters).await?;
        let history = "DELETE FROM stage_history WHERE enrollment_id IN \
                       (SELECT id FROM enrollments WHERE lead_id = $1)";
        let links = "DELETE FROM email_links WHERE message_id IN \
                     (SELECT id FROM messages WHERE lead_id = $1)";
        for sql in [
            history,
            links,
            "DELETE FROM enrollments WHERE lead_id = $1",
            "DELETE FROM messages WHERE lead_id = $1",
            "DELETE FROM events WHERE lead_id = $1",
            "DELETE FROM touches WHERE lead_id = $1",
            "DELETE FROM milestones WHERE lead_id = $1",
            "DELETE FROM lead_tags WHERE lead_id = $1",
            "DELETE FROM consents WHERE lead_id = $1",
        ] {
            let sql = match self.backend {
                super::Backend::Sqlite => sql.replace("$1", "?"),
                super::Backend::Postgres => sql.to_string(),
            };
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                self.db.get_database_backend(),
                sql,
                [id.0.into()],
            ))
            .await?;
        }
        let gone = super::entities::lead::Entity::delete_by_id(id.0)
            .exec(&*txn)
            .await?;
        txn.commit().await?;
        Ok((gone.rows_affected > 0).then_some(files))
    }

    /// Per funnel and status: how many enrollments, and how many emails.
    pub async fn funnel_counts(&self) -> Result<Vec<(String, String, String, i64)>> {
        let mut out = Vec::new();
        for (what, sql) in [
            (
                "enrollments",
                "SELECT funnel_id, status, COUNT(*) FROM enrollments GROUP BY funnel_id, status",
            ),
            (
                "emails",
                "SELECT funnel_id, status, COUNT(*) FROM messages WHERE funnel_id IS NOT NULL \
                 GROUP BY funnel_id, status",
            ),
        ] {
            let rows = self
                .db
                .query_all_raw(sea_orm::Statement::from_string(
                    self.db.get_database_backend(),
                    sql,
                ))
                .await?;
            for r in rows {
                out.push((
                    what.to_string(),
                    r.try_get_by_index::<String>(0)?,
                    r.try_get_by_index::<String>(1)?,
                    r.try_get_by_index::<i64>(2)?,
                ));
            }
        }
        Ok(out)
    }
}

/// A webhook call given up on: its last error, for the admin to read and retry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailedHook {
    pub id: i64,
    pub lead: i64,
    pub funnel: Option<String>,
    pub stage: Option<String>,
    pub step: Option<String>,
    pub webhook: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub queued_at: chrono::DateTime<chrono::Utc>,
}

/// The failed webhook calls, in the words of their partial index
/// (`idx_messages_failed_webhooks`): literal values, as the planner matches them to it.
const FAILED_WEBHOOKS: &str = "kind = 'webhook' AND status = 'failed'";

impl Store {
    /// The webhook calls given up on (the dead letters), newest first, at most `limit`.
    pub async fn failed_webhooks(&self, limit: u64) -> Result<Vec<FailedHook>> {
        let rows = message::Entity::find()
            .filter(sea_orm::sea_query::Expr::cust(FAILED_WEBHOOKS))
            .order_by_desc(message::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| {
                let webhook = serde_json::from_str::<Value>(&m.payload)
                    .ok()
                    .and_then(|p| p.get("webhook")?.as_str().map(str::to_string));
                FailedHook {
                    id: m.id,
                    lead: m.lead_id,
                    funnel: m.funnel_id,
                    stage: m.stage_id,
                    step: m.step_id,
                    webhook,
                    attempts: m.attempts,
                    last_error: m.last_error,
                    queued_at: from_ms(m.created_at),
                }
            })
            .collect())
    }

    /// How many webhook calls were given up on.
    pub async fn failed_webhook_count(&self) -> Result<u64> {
        let mut n = 0;
        let sql = format!("SELECT COUNT(*) FROM messages WHERE {FAILED_WEBHOOKS}");
        self.each(&sql, Vec::new(), |r| {
            n = r.try_get_by_index::<i64>(0)?;
            Ok(())
        })
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Queues a failed webhook call again for an attempt at `now`, its attempts counted from
    /// zero. `false` when there is no such failed call.
    pub async fn retry_webhook(&self, id: i64, now: chrono::DateTime<chrono::Utc>) -> Result<bool> {
        let txn = self.write().await?;
        let done = message::Entity::update_many()
            .col_expr(
                message::Column::Status,
                sea_orm::sea_query::Expr::value("queued"),
            )
            .col_expr(
                message::Column::Attempts,
                sea_orm::sea_query::Expr::value(0),
            )
            .col_expr(
                message::Column::NextAttemptAt,
                sea_orm::sea_query::Expr::value(super::ms(now)),
            )
            .col_expr(
                message::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(Option::<i64>::None),
            )
            .filter(message::Column::Id.eq(id))
            .filter(message::Column::Kind.eq("webhook"))
            .filter(message::Column::Status.eq("failed"))
            .exec(&*txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        Ok(done > 0)
    }
}
