//! Multi-row statements for a scheduler round: a round's enrollments are updated, and its
//! history, outbox and tag rows inserted, in a handful of statements whatever the batch size.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use chrono::{DateTime, Utc};
use sea_orm::Value;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter};

use super::sql::{Params, ROWS, chunks, insert_packed, insert_rows, select_packed};

use super::counts::{self, Counting};
use super::entities::{lead, lead_tag};
use super::{Backend, ClosedVisit, Result, RunBefore, RunWrites, ms, parse_fields};
use crate::domain::{EnrollmentId, FunnelId, LeadId, Outcome, RunStatus, StageId};
use crate::tally::{self, FUNNEL, Fact, Mail, MailWhat, Reached, Run};

/// One applied transition whose rows are to be written.
pub(super) struct Written<'a> {
    pub enrollment: EnrollmentId,
    pub lead: LeadId,
    pub funnel: &'a FunnelId,
    pub writes: &'a RunWrites,
    /// The run before the transition; `new` when the transition began it.
    pub before: &'a RunBefore,
    pub new: bool,
    /// Its status after the transition.
    pub status: RunStatus,
}

/// Writes what the transitions did, a statement per kind of row: visits closed that were
/// opened before, new visits, outbox rows (once per send key), tags, then lead field and
/// score changes, and what they add to the report counters.
pub(super) async fn write_runs(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    subs: &[super::Subscription],
    items: &[Written<'_>],
    now: DateTime<Utc>,
) -> Result<()> {
    let t = ms(now);
    let mut closed: Vec<Vec<Value>> = Vec::new();
    let mut visits: Vec<Vec<Value>> = Vec::new();
    let mut messages: Vec<Vec<Value>> = Vec::new();
    let mut tags: BTreeMap<(i64, String), bool> = BTreeMap::new();
    let mut milestones: Vec<Vec<Value>> = Vec::new();
    let mut pending: Vec<Vec<Value>> = Vec::new();
    let mut counting = Counting::new(zone);
    let mut closing: FxHashMap<(i64, &str), (&Written, &ClosedVisit)> = FxHashMap::default();
    // Stages runs entered for the first time: their earlier emails reached them.
    let mut firsts: FxHashMap<i64, (&Written, Vec<&str>)> = FxHashMap::default();
    let runs: FxHashMap<i64, &Written> = items.iter().map(|w| (w.enrollment.0, w)).collect();
    for w in items {
        let id = w.enrollment.0;
        let b = w.before;
        let run = Run {
            funnel: w.funnel.as_str(),
            entered_at: b.entered_at,
            origin: &b.origin,
        };
        let mut reached = Reached::parse(&b.reached);
        if w.new {
            let unconfirmed = w.status == RunStatus::Unconfirmed;
            counting.count(Fact::Entered { run, unconfirmed });
        } else if b.status == RunStatus::Unconfirmed && w.status != RunStatus::Unconfirmed {
            counting.count(Fact::Confirmed { run });
        }
        for c in &w.writes.closed {
            closing.insert((id, c.stage.as_str()), (w, c));
        }
        for v in &w.writes.opened {
            let stage = v.stage.as_str();
            let first = reached.enter(stage);
            if first.is_some() {
                firsts.entry(id).or_insert((w, Vec::new())).1.push(stage);
            }
            counting.count(Fact::Opened {
                run,
                stage,
                at: now,
                first,
            });
            if let Some((reason, next)) = &v.exit {
                counting.count(Fact::Closed {
                    run,
                    stage,
                    entered: now,
                    at: now,
                    next: next.as_ref().map(StageId::as_str),
                    reason: Some(reason),
                });
            }
        }
        for k in &w.writes.milestones {
            if reached.cross(k.as_str()) {
                let kind = k.as_str();
                counting.count(Fact::Milestone { run, kind, at: now });
            }
        }
        if w.status == RunStatus::Exited(Outcome::Converted) && (w.new || b.status.is_live()) {
            counting.count(Fact::Converted { run, at: now });
        }
        for e in &w.writes.entries {
            pending.push(vec![w.lead.0.into(), e.clone().into(), t.into()]);
        }
        for k in &w.writes.milestones {
            milestones.push(vec![
                id.into(),
                w.lead.0.into(),
                w.funnel.to_string().into(),
                k.as_str().into(),
                t.into(),
            ]);
        }
        for c in &w.writes.closed {
            closed.push(vec![
                id.into(),
                c.stage.to_string().into(),
                c.reason.clone().into(),
                c.next.as_ref().map(|n| n.to_string()).into(),
            ]);
        }
        for v in &w.writes.opened {
            let (exited, reason, next) = match &v.exit {
                Some((r, n)) => (Some(t), Some(r.clone()), n.as_ref().map(|n| n.to_string())),
                None => (None, None, None),
            };
            visits.push(vec![
                id.into(),
                w.lead.0.into(),
                w.funnel.to_string().into(),
                v.stage.to_string().into(),
                t.into(),
                exited.into(),
                reason.into(),
                next.into(),
            ]);
        }
        if !subs.is_empty() {
            subscribed(subs, w, t, &mut messages);
        }
        for m in &w.writes.messages {
            // A run's first email of a split step is the A/B unit.
            let first = match (&m.kind, &m.stage, m.variant) {
                (super::MessageKind::Email, Some(stage), true) => {
                    reached.send(stage.as_str(), m.step.as_str())
                }
                _ => false,
            };
            let marks = match (m.variant, first) {
                (false, _) => 0,
                (true, false) => tally::mark::VARIANT,
                (true, true) => tally::mark::VARIANT | tally::mark::FIRST,
            };
            messages.push(vec![
                m.kind.as_str().into(),
                w.lead.0.into(),
                Some(id).into(),
                Some(w.funnel.to_string()).into(),
                m.stage.as_ref().map(|s| s.to_string()).into(),
                Some(m.step.to_string()).into(),
                m.template.as_ref().map(|t| t.to_string()).into(),
                m.send_key.clone().into(),
                m.recipient.clone().into(),
                m.payload.to_string().into(),
                "queued".into(),
                0i32.into(),
                Some(t).into(),
                t.into(),
                marks.into(),
            ]);
        }
        debug_assert_eq!(reached.text(), reached_after(&b.reached, w.writes));
        for (tag, on) in &w.writes.tags {
            tags.insert((w.lead.0, tag.to_string()), *on);
        }
        if !w.writes.fields.is_empty() || w.writes.score != 0 || w.writes.scored {
            update_lead(
                txn,
                w.lead,
                &w.writes.fields,
                (w.writes.score, w.writes.scored),
                now,
            )
            .await?;
        }
    }
    for chunk in chunks(closed) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        let sql = format!(
            "UPDATE stage_history SET exited_at = {t}, exit_reason = v.column3, next_stage_id = v.column4 \
             FROM (VALUES {values}) AS v WHERE stage_history.enrollment_id = v.column1 \
             AND stage_history.stage_id = v.column2 AND stage_history.exited_at IS NULL \
             RETURNING stage_history.enrollment_id, stage_history.stage_id, stage_history.entered_at"
        );
        // Each visit closed is counted with the time it began.
        for r in txn.query_all_raw(q.statement(sql)).await? {
            let (id, stage): (i64, String) = (r.try_get_by_index(0)?, r.try_get_by_index(1)?);
            if let Some((w, c)) = closing.get(&(id, stage.as_str())) {
                counting.count(Fact::Closed {
                    run: w.run(),
                    stage: &stage,
                    entered: super::from_ms(r.try_get_by_index(2)?),
                    at: now,
                    next: c.next.as_ref().map(StageId::as_str),
                    reason: Some(&c.reason),
                });
            }
        }
    }
    insert_rows(
        txn,
        backend,
        "stage_history (enrollment_id, lead_id, funnel_id, stage_id, entered_at, exited_at, exit_reason, next_stage_id)",
        "",
        visits,
    )
    .await?;
    // Each email queued counts once: a send key already there inserts nothing.
    // (id, run, stage, step, template, kind, marks) of each message inserted.
    type Queued = (
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i64,
    );
    let mut queued: Vec<Queued> = insert_packed(
        txn,
        backend,
        "messages",
        super::MESSAGE_COLUMNS,
        "ON CONFLICT (send_key) DO NOTHING",
        messages,
        "id, enrollment_id, stage_id, step_id, template, kind, marks",
    )
    .await?;
    queued.sort_unstable_by_key(|q| q.0);
    // Runs sent their first A/B variant now: its template joins their origin.
    let mut moved: Vec<counts::Moved> = Vec::new();
    let mut moving: FxHashSet<i64> = FxHashSet::default();
    for (_, run, _, _, template, kind, marks) in &queued {
        if let (true, Some(w)) = (kind == "email", run.and_then(|id| runs.get(&id)))
            && Mail::split_marks(*marks).1
            && tally::origin_variant(&w.before.origin).is_none()
            && moving.insert(w.enrollment.0)
        {
            moved.push(counts::Moved {
                run: w.enrollment.0,
                lead: w.lead,
                funnel: w.funnel,
                origin: tally::with_variant(
                    &w.before.origin,
                    template.as_deref().unwrap_or_default(),
                ),
            });
        }
    }
    for (_, run, stage, step, template, kind, marks) in queued {
        if let (true, Some(w)) = (kind == "email", run.and_then(|id| runs.get(&id))) {
            let mail = Mail {
                stage: stage.as_deref().unwrap_or(FUNNEL),
                template: template.as_deref().unwrap_or_default(),
                queued_at: now,
                step: step.as_deref(),
                first: Mail::split_marks(marks).0,
                variant: Mail::split_marks(marks).1,
            };
            let (run, what) = (w.run(), MailWhat::Queued);
            counting.count(Fact::Mail {
                run,
                mail,
                what,
                at: now,
                n: 1,
            });
        }
    }
    reached_by_mails(txn, backend, &firsts, now, &mut counting).await?;
    counting.write(txn, backend).await?;
    insert_rows(
        txn,
        backend,
        "milestones (enrollment_id, lead_id, funnel_id, kind, occurred_at)",
        "",
        milestones,
    )
    .await?;
    insert_rows(
        txn,
        backend,
        "pending_entries (lead_id, trigger, created_at)",
        "",
        pending,
    )
    .await?;
    let (add, remove): (Vec<_>, Vec<_>) = tags.into_iter().partition(|(_, on)| *on);
    insert_rows(
        txn,
        backend,
        "lead_tags (lead_id, tag, created_at)",
        "ON CONFLICT (lead_id, tag) DO NOTHING",
        add.into_iter()
            .map(|((l, tag), _)| vec![l.into(), tag.into(), t.into()])
            .collect(),
    )
    .await?;
    for ((l, tag), _) in remove {
        lead_tag::Entity::delete_many()
            .filter(lead_tag::Column::LeadId.eq(l))
            .filter(lead_tag::Column::Tag.eq(tag))
            .exec(txn)
            .await?;
    }
    // Last: the replay reads every row this write made (milestones too).
    counts::move_origins(txn, backend, zone, &moved).await
}

/// An email of a run read by [`reached_by_mails`]: (message, run, stage, step, template,
/// queued at, marks, a link clicked in it).
type EarlierMail = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<String>,
);

/// The calls project-wide webhooks subscribed to a run's lifecycle want for one transition: a
/// stage entered, the funnel left, a score threshold crossed.
fn subscribed(subs: &[super::Subscription], w: &Written, t: i64, out: &mut Vec<Vec<Value>>) {
    use crate::domain::Lifecycle;
    let (id, funnel) = (w.enrollment.0, Some(w.funnel.as_str()));
    let happened = |event, stage, key: String, detail| super::Happened {
        event,
        lead: w.lead,
        run: Some(id),
        funnel,
        stage,
        key,
        detail,
    };
    let detail = |k: &str, v: &str| {
        let mut d = serde_json::Map::new();
        d.insert(k.into(), v.into());
        d
    };
    for v in &w.writes.opened {
        let stage = v.stage.as_str();
        let h = happened(
            Lifecycle::StageEntered,
            Some(stage),
            format!("{id}:{stage}:{t}"),
            detail("stage", stage),
        );
        out.extend(super::subscribed_calls(subs, h, t));
    }
    if let RunStatus::Exited(o) = w.status
        && (w.new || w.before.status.is_live())
    {
        let h = happened(
            Lifecycle::FunnelExited,
            None,
            id.to_string(),
            detail("outcome", o.name()),
        );
        out.extend(super::subscribed_calls(subs, h, t));
    }
    for k in &w.writes.milestones {
        if let Some(e) =
            Lifecycle::parse(k.as_str()).filter(|e| matches!(e, Lifecycle::Mql | Lifecycle::Sql))
        {
            let h = happened(e, None, id.to_string(), serde_json::Map::new());
            out.extend(super::subscribed_calls(subs, h, t));
        }
    }
}

/// Counts, for each run that entered stages for the first time now, its emails that reached
/// them ([`tally::reached_by`]; a new run has none).
async fn reached_by_mails(
    txn: &DatabaseTransaction,
    backend: Backend,
    firsts: &FxHashMap<i64, (&Written<'_>, Vec<&str>)>,
    now: DateTime<Utc>,
    counting: &mut Counting,
) -> Result<()> {
    let mut leads: Vec<i64> = firsts
        .values()
        .filter(|(w, _)| !w.new)
        .map(|(w, _)| w.lead.0)
        .collect();
    leads.sort_unstable();
    leads.dedup();
    for chunk in leads.chunks(ROWS) {
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        // An email with its clicked links is a row per link (one with none).
        let rest = format!(
            "FROM messages m LEFT JOIN email_links l ON l.message_id = m.id \
             WHERE m.lead_id IN ({list}) AND m.kind = 'email' AND m.enrollment_id IS NOT NULL"
        );
        let rows: Vec<EarlierMail> = select_packed(
            txn,
            q,
            "m.id, m.enrollment_id, m.stage_id, m.step_id, m.template, m.created_at, m.marks, l.link",
            &rest,
        )
        .await?;
        let mut seen: FxHashSet<i64> = FxHashSet::default();
        for (message, id, stage, step, template, created_at, marks, link) in &rows {
            let Some((w, stages)) = firsts.get(id).filter(|(w, _)| !w.new) else {
                continue;
            };
            let mail = Mail {
                stage: stage.as_deref().unwrap_or(FUNNEL),
                template: template.as_deref().unwrap_or_default(),
                queued_at: super::from_ms(*created_at),
                step: step.as_deref(),
                first: Mail::split_marks(*marks).0,
                variant: Mail::split_marks(*marks).1,
            };
            let first_row = seen.insert(*message);
            for s in stages.iter().filter(|s| tally::reached_by(&mail, s, now)) {
                let run = w.run();
                if first_row {
                    let what = MailWhat::Reached(s);
                    counting.count(Fact::Mail {
                        run,
                        mail,
                        what,
                        at: now,
                        n: 1,
                    });
                }
                if let Some(link) = link.as_deref() {
                    // Reached now, after the click.
                    let what = MailWhat::LinkReached { link, stage: s };
                    counting.count(Fact::Mail {
                        run,
                        mail,
                        what,
                        at: now,
                        n: 1,
                    });
                }
            }
        }
    }
    Ok(())
}

impl Written<'_> {
    /// The run as its counters see it.
    fn run(&self) -> Run<'_> {
        Run {
            funnel: self.funnel.as_str(),
            entered_at: self.before.entered_at,
            origin: &self.before.origin,
        }
    }
}

/// What a run has reached after a transition ([`crate::tally::Reached`]): the stages it
/// entered and milestones it crossed, written with the run's row.
pub(super) fn reached_after(before: &str, w: &RunWrites) -> String {
    let mut r = Reached::parse(before);
    for v in &w.opened {
        r.enter(v.stage.as_str());
    }
    for k in &w.milestones {
        r.cross(k.as_str());
    }
    for m in w.messages.iter().filter(|m| m.variant) {
        if let (super::MessageKind::Email, Some(stage)) = (&m.kind, &m.stage) {
            r.send(stage.as_str(), m.step.as_str());
        }
    }
    r.text()
}

/// Writes field changes and score points to a lead, inside the round's transaction.
pub(super) async fn update_lead(
    txn: &DatabaseTransaction,
    id: LeadId,
    set: &[(String, serde_json::Value)],
    (score, scored): (i64, bool),
    now: DateTime<Utc>,
) -> Result<()> {
    let mut update = lead::Entity::update_many()
        .col_expr(lead::Column::UpdatedAt, Expr::value(ms(now)))
        .col_expr(
            lead::Column::Score,
            Expr::col(lead::Column::Score).add(score),
        );
    if scored {
        update = update.col_expr(lead::Column::ScoredAt, Expr::value(ms(now)));
    }
    if !set.is_empty() {
        let mut fields = match super::unique(lead::Entity::find_by_id(id.0), txn).await? {
            Some(l) => parse_fields(&l.fields)?,
            None => serde_json::Map::new(),
        };
        for (k, v) in set {
            fields.insert(k.clone(), v.clone());
        }
        update = update.col_expr(
            lead::Column::Fields,
            Expr::value(serde_json::Value::Object(fields).to_string()),
        );
    }
    update.filter(lead::Column::Id.eq(id.0)).exec(txn).await?;
    Ok(())
}
