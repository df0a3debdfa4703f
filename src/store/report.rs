//! What the reports read, as plain rows: a funnel's runs, their stage visits, and the
//! purchases of the leads in them. The figures are computed by `report`, not here.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::{enrollment, event, lead, message, stage_history, touch};
use super::{Result, Store, StoreError, batch, event_of, from_ms, ms, parse_fields};
use crate::domain::{EnrollmentId, EventKind, FunnelId, LeadId, Outcome, RunStatus, StageId};

/// One run of a lead through the funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub enrollment: EnrollmentId,
    pub lead: LeadId,
    pub entered_at: DateTime<Utc>,
    pub status: RunStatus,
    pub exited_at: Option<DateTime<Utc>>,
}

/// One stage visit of a run: when it began and ended, why, and where it led.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitRow {
    pub enrollment: EnrollmentId,
    pub stage: StageId,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    /// `goto: STAGE`, `event: NAME`, `exit: OUTCOME`, …
    pub reason: Option<String>,
    pub next: Option<StageId>,
}

/// A purchase by a lead of the funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseRow {
    pub lead: LeadId,
    pub product: Option<String>,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    pub at: DateTime<Utc>,
}

/// A touch: where a lead came from, once (a signup's UTM parameters and form, …).
#[derive(Debug, Clone, PartialEq)]
pub struct TouchRow {
    pub lead: LeadId,
    pub at: DateTime<Utc>,
    pub channel: String,
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub form: Option<String>,
}

/// An email a funnel queued.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailRow {
    pub lead: LeadId,
    pub enrollment: Option<EnrollmentId>,
    pub stage: Option<String>,
    pub template: String,
    /// `queued`, `sending`, `sent`, `failed`, `suppressed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// A tracked event of a funnel's lead: click, open, unsubscribe, bounce, complaint.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackRow {
    pub lead: LeadId,
    pub kind: EventKind,
    pub template: Option<String>,
    pub link: Option<String>,
    pub at: DateTime<Utc>,
}

/// A score threshold a run's lead crossed (`mql` or `sql`).
#[derive(Debug, Clone, PartialEq)]
pub struct MilestoneRow {
    pub enrollment: EnrollmentId,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
}

/// Everything a funnel report reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRows {
    pub runs: Vec<RunRow>,
    pub visits: Vec<VisitRow>,
    pub purchases: Vec<PurchaseRow>,
    /// The leads' touches, oldest first.
    pub touches: Vec<TouchRow>,
    /// Each lead's fields (`first_name` among them), for slices by field.
    pub fields: Vec<(LeadId, serde_json::Map<String, serde_json::Value>)>,
    /// The funnel's emails, oldest first.
    pub emails: Vec<EmailRow>,
    /// Its leads' clicks, opens, unsubscribes, bounces and complaints, oldest first.
    pub tracking: Vec<TrackRow>,
    /// The runs' score milestones, oldest first.
    pub milestones: Vec<MilestoneRow>,
}

impl Store {
    /// The funnel's runs that entered before `until`, their visits and their leads' purchases.
    pub async fn report_rows(&self, funnel: &FunnelId, until: DateTime<Utc>) -> Result<ReportRows> {
        let mut out = ReportRows::default();
        let runs = enrollment::Entity::find()
            .filter(enrollment::Column::FunnelId.eq(funnel.as_str()))
            .filter(enrollment::Column::EnteredAt.lt(ms(until)))
            .order_by_asc(enrollment::Column::Id)
            .all(&self.db)
            .await?;
        for m in runs {
            let status = match (m.status.as_str(), m.outcome.as_deref()) {
                ("exited", Some(o)) => {
                    RunStatus::Exited(Outcome::from_name(o).ok_or_else(|| {
                        StoreError::Corrupt(format!("enrollment {}: outcome \"{o}\"", m.id))
                    })?)
                }
                ("unconfirmed", _) => RunStatus::Unconfirmed,
                _ => RunStatus::Active,
            };
            out.runs.push(RunRow {
                enrollment: EnrollmentId(m.id),
                lead: LeadId(m.lead_id),
                entered_at: from_ms(m.entered_at),
                status,
                exited_at: m.exited_at.map(from_ms),
            });
        }
        for h in stage_history::Entity::find()
            .filter(stage_history::Column::FunnelId.eq(funnel.as_str()))
            .filter(stage_history::Column::EnteredAt.lt(ms(until)))
            .order_by_asc(stage_history::Column::Id)
            .all(&self.db)
            .await?
        {
            let Ok(stage) = StageId::parse(&h.stage_id) else {
                continue;
            };
            out.visits.push(VisitRow {
                enrollment: EnrollmentId(h.enrollment_id),
                stage,
                entered_at: from_ms(h.entered_at),
                exited_at: h.exited_at.map(from_ms),
                reason: h.exit_reason,
                next: h.next_stage_id.and_then(|s| StageId::parse(&s).ok()),
            });
        }
        for m in message::Entity::find()
            .filter(message::Column::FunnelId.eq(funnel.as_str()))
            .filter(message::Column::Kind.eq("email"))
            .filter(message::Column::CreatedAt.lt(ms(until)))
            .order_by_asc(message::Column::Id)
            .all(&self.db)
            .await?
        {
            out.emails.push(EmailRow {
                lead: LeadId(m.lead_id),
                enrollment: m.enrollment_id.map(EnrollmentId),
                stage: m.stage_id,
                template: m.template.unwrap_or_default(),
                status: m.status,
                created_at: from_ms(m.created_at),
            });
        }
        let sql = match self.backend {
            super::Backend::Sqlite => {
                "SELECT enrollment_id, kind, occurred_at FROM milestones \
                 WHERE funnel_id = ? AND occurred_at < ? ORDER BY occurred_at, id"
            }
            super::Backend::Postgres => {
                "SELECT enrollment_id, kind, occurred_at FROM milestones \
                 WHERE funnel_id = $1 AND occurred_at < $2 ORDER BY occurred_at, id"
            }
        };
        for r in self
            .db
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                self.db.get_database_backend(),
                sql,
                [funnel.as_str().into(), ms(until).into()],
            ))
            .await?
        {
            let (id, kind, at): (i64, String, i64) = (
                r.try_get_by_index(0)?,
                r.try_get_by_index(1)?,
                r.try_get_by_index(2)?,
            );
            if let Ok(kind) = EventKind::parse(&kind) {
                out.milestones.push(MilestoneRow {
                    enrollment: EnrollmentId(id),
                    kind,
                    at: from_ms(at),
                });
            }
        }
        let mut leads: Vec<i64> = out.runs.iter().map(|r| r.lead.0).collect();
        leads.sort_unstable();
        leads.dedup();
        for chunk in leads.chunks(batch::ROWS) {
            for e in event::Entity::find()
                .filter(event::Column::LeadId.is_in(batch::padded(chunk.iter().copied())))
                .filter(event::Column::Kind.eq(EventKind::Purchase.as_str()))
                .all(&self.db)
                .await?
            {
                let Ok(ev) = event_of(e.id, &e.kind, &e.payload) else {
                    continue;
                };
                out.purchases.push(PurchaseRow {
                    lead: LeadId(e.lead_id.unwrap_or_default()),
                    product: ev.product,
                    amount: ev.amount,
                    currency: ev.currency,
                    at: from_ms(e.occurred_at),
                });
            }
            for t in touch::Entity::find()
                .filter(touch::Column::LeadId.is_in(batch::padded(chunk.iter().copied())))
                .order_by_asc(touch::Column::OccurredAt)
                .order_by_asc(touch::Column::Id)
                .all(&self.db)
                .await?
            {
                out.touches.push(TouchRow {
                    lead: LeadId(t.lead_id),
                    at: from_ms(t.occurred_at),
                    channel: t.channel,
                    source: t.source,
                    medium: t.medium,
                    campaign: t.campaign,
                    form: t.form_id,
                });
            }
            for e in event::Entity::find()
                .filter(event::Column::LeadId.is_in(batch::padded(chunk.iter().copied())))
                .filter(
                    event::Column::Kind.is_in(
                        [
                            EventKind::Click,
                            EventKind::Open,
                            EventKind::Unsubscribed,
                            EventKind::Bounced,
                            EventKind::Complained,
                        ]
                        .map(|k| k.as_str().to_string()),
                    ),
                )
                .order_by_asc(event::Column::OccurredAt)
                .all(&self.db)
                .await?
            {
                let Ok(ev) = event_of(e.id, &e.kind, &e.payload) else {
                    continue;
                };
                out.tracking.push(TrackRow {
                    lead: LeadId(e.lead_id.unwrap_or_default()),
                    kind: ev.kind,
                    template: ev.template,
                    link: ev.link,
                    at: from_ms(e.occurred_at),
                });
            }
            for l in lead::Entity::find()
                .filter(lead::Column::Id.is_in(batch::padded(chunk.iter().copied())))
                .all(&self.db)
                .await?
            {
                let mut fields = parse_fields(&l.fields).unwrap_or_default();
                if let Some(n) = l.first_name {
                    fields.insert("first_name".into(), n.into());
                }
                if let Some(z) = l.timezone {
                    fields.insert("timezone".into(), z.into());
                }
                out.fields.push((LeadId(l.id), fields));
            }
        }
        Ok(out)
    }
}
