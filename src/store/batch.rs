//! Multi-row statements for a scheduler round: a round's enrollments are updated, and its
//! history, outbox and tag rows inserted, in a handful of statements whatever the batch size.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use sea_orm::{Statement, Value};

use super::entities::{lead, lead_tag};
use super::{Backend, ClosedVisit, Result, RunBefore, RunWrites, ms, parse_fields};
use crate::domain::{EnrollmentId, FunnelId, LeadId, Outcome, RunStatus, StageId};
use crate::tally::{FUNNEL, Mail, Reached, Run, Tally, mail};

/// Rows per statement: keeps every statement far below both backends' parameter limits.
pub(super) const ROWS: usize = 512;

/// Bound values of one statement and their placeholders, in the order they appear.
pub(super) struct Params {
    backend: Backend,
    pub(super) values: Vec<Value>,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Params {
        Params {
            backend,
            values: Vec::new(),
        }
    }

    /// Binds a value and returns its placeholder.
    pub(super) fn p(&mut self, v: impl Into<Value>) -> String {
        let mut out = String::new();
        self.push(&mut out, v.into());
        out
    }

    /// Binds a value and writes its placeholder to `out`.
    fn push(&mut self, out: &mut String, v: Value) {
        self.values.push(v);
        match self.backend {
            Backend::Sqlite => out.push('?'),
            Backend::Postgres => {
                use std::fmt::Write as _;
                let _ = write!(out, "${}", self.values.len());
            }
        }
    }

    /// The placeholders of an `IN (…)` list of ids, padded as [`padded`] pads it.
    pub(super) fn list(&mut self, ids: &[i64]) -> String {
        let mut out = String::with_capacity(ids.len().next_power_of_two() * 4);
        for (i, id) in padded(ids.iter().copied()).into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.push(&mut out, id.into());
        }
        out
    }

    /// A parenthesised row of placeholders, written to `out`.
    fn row(&mut self, out: &mut String, vs: Vec<Value>) {
        out.push('(');
        for (i, v) in vs.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.push(out, v);
        }
        out.push(')');
    }

    /// The rows of a `VALUES` list, padded with rows of NULLs to the next power of two: a
    /// statement has one of a few shapes, so the prepared-statement cache keeps hitting (and
    /// stays small) whatever the batch size. A padding row's first column is NULL, so it
    /// matches nothing in an UPDATE and is filtered out of an INSERT … SELECT.
    pub(super) fn values(&mut self, rows: Vec<Vec<Value>>) -> String {
        let pad = rows
            .first()
            .map(|r| r.iter().map(Value::as_null).collect::<Vec<_>>());
        let n = rows.len().next_power_of_two();
        let width = rows.first().map_or(0, Vec::len);
        let mut out = String::with_capacity(n * (width * 6 + 4));
        let mut written = 0;
        for r in rows {
            if written > 0 {
                out.push_str(", ");
            }
            self.row(&mut out, r);
            written += 1;
        }
        while let Some(p) = pad.as_ref().filter(|_| written < n) {
            out.push_str(", ");
            self.row(&mut out, p.clone());
            written += 1;
        }
        out
    }

    pub(super) fn statement(self, sql: String) -> Statement {
        let b = match self.backend {
            Backend::Sqlite => sea_orm::DbBackend::Sqlite,
            Backend::Postgres => sea_orm::DbBackend::Postgres,
        };
        Statement::from_sql_and_values(b, sql, self.values)
    }
}

/// An `IN (…)` list padded to the next power of two by repeating its last item, for the
/// same reason as [`Params::values`]: few statement shapes.
pub(super) fn padded<T: Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    if let Some(last) = v.last().cloned() {
        v.resize(v.len().next_power_of_two(), last);
    }
    v
}

/// `INSERT INTO {head} SELECT * FROM (VALUES …) AS v WHERE v.column1 IS NOT NULL {tail}`:
/// padded rows (see [`Params::values`]) are left out.
pub(super) fn insert_sql(head: &str, values: &str, tail: &str) -> String {
    format!(
        "INSERT INTO {head} SELECT * FROM (VALUES {values}) AS v WHERE v.column1 IS NOT NULL {tail}"
    )
}

/// Inserts `rows`, a statement per [`ROWS`].
pub(super) async fn insert_rows(
    txn: &DatabaseTransaction,
    backend: Backend,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut q = Params::new(backend);
        let values = q.values(rows.by_ref().take(ROWS).collect());
        txn.execute_raw(q.statement(insert_sql(head, &values, tail)))
            .await?;
    }
    Ok(())
}

/// Inserts `rows` as [`insert_rows`] does, with a `RETURNING` clause in `tail`; returns the
/// rows it gives back.
pub(super) async fn insert_returning(
    txn: &DatabaseTransaction,
    backend: Backend,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Value>>,
) -> Result<Vec<sea_orm::QueryResult>> {
    let mut out = Vec::new();
    for chunk in chunks(rows) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        out.extend(
            txn.query_all_raw(q.statement(insert_sql(head, &values, tail)))
                .await?,
        );
    }
    Ok(out)
}

/// Chunks of at most [`ROWS`] rows, owned.
pub(super) fn chunks(rows: Vec<Vec<Value>>) -> Vec<Vec<Vec<Value>>> {
    let mut rows = rows.into_iter().peekable();
    let mut out = Vec::new();
    while rows.peek().is_some() {
        out.push(rows.by_ref().take(ROWS).collect());
    }
    out
}

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
    items: &[Written<'_>],
    now: DateTime<Utc>,
) -> Result<()> {
    let t = ms(now);
    let mut closed: Vec<Vec<Value>> = Vec::new();
    let mut visits: Vec<Vec<Value>> = Vec::new();
    let mut messages: Vec<Vec<Value>> = Vec::new();
    let mut tags: BTreeMap<(i64, String), bool> = BTreeMap::new();
    let mut milestones: Vec<Vec<Value>> = Vec::new();
    let mut tally = Tally::by_day();
    let mut closing: HashMap<(i64, &str), (&Written, &ClosedVisit)> = HashMap::new();
    // Stages runs entered for the first time: their earlier emails reached them.
    let mut firsts: HashMap<i64, (&Written, Vec<&str>)> = HashMap::new();
    let runs: HashMap<i64, &Written> = items.iter().map(|w| (w.enrollment.0, w)).collect();
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
            tally.entered(&run, w.status == RunStatus::Unconfirmed);
        } else if b.status == RunStatus::Unconfirmed && w.status != RunStatus::Unconfirmed {
            tally.confirmed(&run);
        }
        for c in &w.writes.closed {
            closing.insert((id, c.stage.as_str()), (w, c));
        }
        for v in &w.writes.opened {
            if !reached.stages().any(|s| s == v.stage.as_str()) {
                firsts
                    .entry(id)
                    .or_insert((w, Vec::new()))
                    .1
                    .push(v.stage.as_str());
            }
            tally.opened(&run, v.stage.as_str(), now, &mut reached);
            if let Some((reason, next)) = &v.exit {
                let next = next.as_ref().map(StageId::as_str);
                tally.closed(&run, v.stage.as_str(), now, now, next, Some(reason));
            }
        }
        for k in &w.writes.milestones {
            tally.milestone(&run, k.as_str(), now, &mut reached);
        }
        if w.status == RunStatus::Exited(Outcome::Converted) && (w.new || b.status.is_live()) {
            tally.converted(&run, now);
        }
        debug_assert_eq!(reached.text(), reached_after(&b.reached, w.writes));
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
        for m in &w.writes.messages {
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
            ]);
        }
        for (tag, on) in &w.writes.tags {
            tags.insert((w.lead.0, tag.to_string()), *on);
        }
        if !w.writes.fields.is_empty() || w.writes.score != 0 {
            update_lead(txn, w.lead, &w.writes.fields, w.writes.score, now).await?;
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
                let run = Run {
                    funnel: w.funnel.as_str(),
                    entered_at: w.before.entered_at,
                    origin: &w.before.origin,
                };
                let entered = super::from_ms(r.try_get_by_index(2)?);
                let next = c.next.as_ref().map(StageId::as_str);
                tally.closed(&run, &stage, entered, now, next, Some(&c.reason));
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
    for r in insert_returning(
        txn,
        backend,
        "messages (kind, lead_id, enrollment_id, funnel_id, stage_id, step_id, template, send_key, recipient, payload, status, attempts, next_attempt_at, created_at)",
        "ON CONFLICT (send_key) DO NOTHING RETURNING enrollment_id, stage_id, template, kind",
        messages,
    )
    .await?
    {
        let (kind, run): (String, Option<i64>) = (r.try_get_by_index(3)?, r.try_get_by_index(0)?);
        if let (true, Some(w)) = (kind == "email", run.and_then(|id| runs.get(&id))) {
            let (stage, template): (Option<String>, Option<String>) =
                (r.try_get_by_index(1)?, r.try_get_by_index(2)?);
            let m = Mail {
                stage: stage.as_deref().unwrap_or(FUNNEL),
                template: template.as_deref().unwrap_or_default(),
                queued_at: now,
            };
            tally.mail(&w.run(), &m, mail::QUEUED, 1);
        }
    }
    reached_by_mails(txn, backend, &firsts, now, &mut tally).await?;
    write_counts(txn, backend, &tally).await?;
    insert_rows(
        txn,
        backend,
        "milestones (enrollment_id, lead_id, funnel_id, kind, occurred_at)",
        "",
        milestones,
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
    Ok(())
}

/// Counts, for each run that entered stages for the first time, its emails queued before now
/// as having reached those stages (a new run has none).
async fn reached_by_mails(
    txn: &DatabaseTransaction,
    backend: Backend,
    firsts: &HashMap<i64, (&Written<'_>, Vec<&str>)>,
    now: DateTime<Utc>,
    tally: &mut Tally,
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
        let sql = format!(
            "SELECT enrollment_id, stage_id, template, created_at FROM messages \
             WHERE lead_id IN ({}) AND kind = 'email' AND enrollment_id IS NOT NULL \
             AND created_at < {}",
            list,
            q.p(ms(now))
        );
        for r in txn.query_all_raw(q.statement(sql)).await? {
            let Some((w, stages)) = firsts
                .get(&r.try_get_by_index::<i64>(0)?)
                .filter(|(w, _)| !w.new)
            else {
                continue;
            };
            let (stage, template): (Option<String>, Option<String>) =
                (r.try_get_by_index(1)?, r.try_get_by_index(2)?);
            let m = Mail {
                stage: stage.as_deref().unwrap_or(FUNNEL),
                template: template.as_deref().unwrap_or_default(),
                queued_at: super::from_ms(r.try_get_by_index(3)?),
            };
            for s in stages.iter().filter(|s| **s != m.stage) {
                tally.mail(&w.run(), &m, &mail::reached(s), 1);
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
        r.insert(v.stage.as_str());
    }
    for k in &w.milestones {
        r.insert(&format!("@{}", k.as_str()));
    }
    r.text()
}

/// Adds a tally's counters to the stored ones.
pub(super) async fn write_counts(
    txn: &DatabaseTransaction,
    backend: Backend,
    t: &Tally,
) -> Result<()> {
    let rows: Vec<Vec<Value>> = t
        .counters()
        .into_iter()
        .filter(|(_, s)| s.n != 0 || s.total != 0.0)
        .map(|(k, s)| {
            vec![
                k.funnel.into(),
                k.origin.into(),
                k.day.into(),
                k.view.as_str().into(),
                k.stage.into(),
                k.metric.into(),
                s.n.into(),
                s.total.into(),
            ]
        })
        .collect();
    insert_rows(
        txn,
        backend,
        "report_counts (funnel_id, origin, day, view, stage, metric, n, total)",
        "ON CONFLICT (funnel_id, origin, day, view, stage, metric) DO UPDATE SET \
         n = report_counts.n + excluded.n, total = report_counts.total + excluded.total",
        rows,
    )
    .await
}

/// Writes field changes and score points to a lead, inside the round's transaction.
async fn update_lead(
    txn: &DatabaseTransaction,
    id: LeadId,
    set: &[(String, serde_json::Value)],
    score: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut update = lead::Entity::update_many()
        .col_expr(lead::Column::UpdatedAt, Expr::value(ms(now)))
        .col_expr(
            lead::Column::Score,
            Expr::col(lead::Column::Score).add(score),
        );
    if !set.is_empty() {
        let mut fields = match lead::Entity::find_by_id(id.0).one(txn).await? {
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
