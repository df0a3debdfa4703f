//! The report counters (`report_counts`, and `report_hours` for those kept by the hour; see [`crate::tally`]): added in the transactions
//! that write what they count, read as sums over a period, and made again from the stored rows
//! (after the upgrade that brought them, or on demand).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::sql::{self, Params};
use super::{Backend, Replay, ReportNeeds, Result, Store, StoreError};
use crate::domain::{Event, EventKind, FunnelId, LeadId};
use crate::tally::{self, Fact, Figures, LeadRun, Mail, Micros, Order, Run, Sum, Tally, Touch};

/// What one write transaction adds to the stored counters: each [`Fact`] goes in as the write
/// makes it from the rows it wrote, [`Tally::count`] says what it adds, and
/// [`Counting::write`] adds that to the stored counters in the same transaction. Besides a
/// recount and an erase, this is the one way counters are written.
pub(super) struct Counting(Tally);

impl Counting {
    pub(super) fn new(zone: chrono_tz::Tz) -> Counting {
        Counting(Tally::by_day(zone))
    }

    pub(super) fn count(&mut self, fact: Fact) {
        self.0.count(&fact);
    }

    pub(super) async fn write(self, txn: &DatabaseTransaction, backend: Backend) -> Result<()> {
        write(txn, backend, &self.0).await
    }
}

/// Adds a tally's counters to the stored ones.
async fn write(txn: &DatabaseTransaction, backend: Backend, t: &Tally) -> Result<()> {
    if t.is_empty() {
        return Ok(());
    }
    add(txn, backend, t.counters()).await
}

/// Adds these counters to the stored ones (those that add nothing left out).
async fn add(
    txn: &DatabaseTransaction,
    backend: Backend,
    counters: Vec<(tally::Key, Sum)>,
) -> Result<()> {
    // Those kept by the hour go to a table of their own (all runs together: no origin).
    let (mut days, mut hours): (Vec<Vec<Value>>, Vec<Vec<Value>>) = (Vec::new(), Vec::new());
    for (k, s) in counters {
        if s.n == 0 && s.total.0 == 0 {
            continue;
        }
        let hourly = k.view.by_the_hour();
        let mut row: Vec<Value> = vec![k.funnel.into()];
        if !hourly {
            row.push(k.origin.into());
        }
        row.extend([
            k.day.into(),
            k.view.name().into(),
            k.stage.into(),
            k.metric.into(),
            s.n.into(),
            s.total.0.into(),
        ]);
        if hourly { &mut hours } else { &mut days }.push(row);
    }
    if !days.is_empty() {
        sql::insert_rows(
            txn,
            backend,
            "report_counts (funnel_id, origin, day, view, stage, metric, n, total)",
            "ON CONFLICT (funnel_id, origin, view, stage, metric, day) DO UPDATE SET \
             n = report_counts.n + excluded.n, total = report_counts.total + excluded.total",
            days,
        )
        .await?;
    }
    if !hours.is_empty() {
        sql::insert_rows(
            txn,
            backend,
            "report_hours (funnel_id, day, view, stage, metric, n, total)",
            "ON CONFLICT (funnel_id, view, day, stage, metric) DO UPDATE SET \
             n = report_hours.n + excluded.n, total = report_hours.total + excluded.total",
            hours,
        )
        .await?;
    }
    Ok(())
}

/// The rules the runs' origins are made by: the first touch, the kept fields and the first
/// A/B variant. Stored counters whose origins were made otherwise are made again.
const ORIGINS: &str = "touch+fields+variant, parts of 100 bytes";

/// A run that got its first A/B variant in a write: the run, its lead and funnel, and its
/// origin with the variant ([`tally::with_variant`]).
pub(super) struct Moved<'a> {
    pub run: i64,
    pub lead: LeadId,
    pub funnel: &'a FunnelId,
    pub origin: String,
}

/// Moves the counters of runs that got their first A/B variant to the origin that keeps it,
/// in the transaction that queued the variant: their leads' rows of the funnel, read in the
/// transaction (its own writes too), are replayed with the runs' origins as stored and as
/// moved — all that differs is the moved runs' counters per origin — and the difference is
/// added; then the runs' origins are written.
pub(super) async fn move_origins(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    moved: &[Moved<'_>],
) -> Result<()> {
    const NEEDS: ReportNeeds = ReportNeeds {
        origins: true,
        visits: true,
        purchases: true,
        milestones: true,
        touches: false,
        fields: false,
        emails: false,
        tracking: false,
    };
    const PER_ORIGIN: Replay = Replay {
        runs: true,
        orders: true,
        attribution: false,
        mails: false,
    };
    let mut by_funnel: BTreeMap<&FunnelId, Vec<&Moved>> = BTreeMap::new();
    for m in moved {
        by_funnel.entry(m.funnel).or_default().push(m);
    }
    for (funnel, moved) in by_funnel {
        let mut leads: Vec<i64> = moved.iter().map(|m| m.lead.0).collect();
        leads.sort_unstable();
        leads.dedup();
        let far = DateTime::<Utc>::MAX_UTC;
        let rows =
            super::report::rows_on(txn, backend, funnel, far, NEEDS, &sql::Leads::List(leads))
                .await?;
        let to: HashMap<i64, &str> = moved.iter().map(|m| (m.run, m.origin.as_str())).collect();
        let mut before = Tally::by_day(zone);
        rows.replay(&mut before, PER_ORIGIN, None);
        let mut after = Tally::by_day(zone);
        let origin_of = |r: &super::RunRow| {
            to.get(&r.enrollment.0)
                .map_or_else(|| r.origin.clone(), |o| o.to_string())
        };
        rows.replay(&mut after, PER_ORIGIN, Some(&origin_of));
        let mut diff: BTreeMap<tally::Key, Sum> = after.counters().into_iter().collect();
        for (k, s) in before.negated().counters() {
            diff.entry(k).or_default().add(s);
        }
        add(txn, backend, diff.into_iter().collect()).await?;
        let rows: Vec<Vec<Value>> = moved
            .iter()
            .map(|m| vec![m.run.into(), m.origin.clone().into()])
            .collect();
        set_enrollments(txn, backend, "origin", rows).await?;
    }
    Ok(())
}

/// Counts new orders ([`tally::order_facts`]): each lead's runs of every funnel, with the
/// first time each entered each stage, and the lead's touches, are read in the transaction
/// that stores the orders.
pub(super) async fn count_orders(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    orders: &[(LeadId, &Event, DateTime<Utc>)],
) -> Result<()> {
    let orders: Vec<_> = orders
        .iter()
        .filter(|(_, e, _)| e.kind == EventKind::Purchase || e.kind.is_refund())
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    let mut leads: Vec<i64> = orders.iter().map(|(l, _, _)| l.0).collect();
    leads.sort_unstable();
    leads.dedup();
    for chunk in leads.chunks(sql::ROWS) {
        if backend == Backend::Postgres {
            // A run's origin changes when it gets its first A/B variant ([`move_origins`], in
            // the transaction that holds the run): wait for that to commit, so an order is
            // counted under the origin the run has then.
            let mut q = Params::new(backend);
            let sql = format!(
                "SELECT id FROM enrollments WHERE lead_id IN ({}) ORDER BY id FOR SHARE",
                q.list(chunk)
            );
            txn.execute_raw(q.statement(sql)).await?;
        }
        // (lead, funnel) → runs: (run id, funnel, entered, origin, [(stage, first entry)]).
        type RunRow = (String, DateTime<Utc>, String, Vec<(String, DateTime<Utc>)>);
        let mut runs: HashMap<(i64, String), Vec<(i64, RunRow)>> = HashMap::new();
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let sql = format!(
            "SELECT e.lead_id, e.id, e.funnel_id, e.entered_at, e.origin, h.stage_id, \
             MIN(h.entered_at) FROM enrollments e \
             LEFT JOIN stage_history h ON h.enrollment_id = e.id \
             WHERE e.lead_id IN ({list}) \
             GROUP BY e.id, e.lead_id, e.funnel_id, e.entered_at, e.origin, h.stage_id \
             ORDER BY e.id"
        );
        for r in txn.query_all_raw(q.statement(sql)).await? {
            let (lead, id, funnel): (i64, i64, String) = (
                r.try_get_by_index(0)?,
                r.try_get_by_index(1)?,
                r.try_get_by_index(2)?,
            );
            let of_lead = runs.entry((lead, funnel.clone())).or_default();
            if of_lead.last().is_none_or(|(last, _)| *last != id) {
                let origin: Option<String> = r.try_get_by_index(4)?;
                let entered = super::from_ms(r.try_get_by_index(3)?);
                of_lead.push((
                    id,
                    (funnel, entered, origin.unwrap_or_default(), Vec::new()),
                ));
            }
            let stage: Option<String> = r.try_get_by_index(5)?;
            let since: Option<i64> = r.try_get_by_index(6)?;
            if let (Some(stage), Some(since), Some((_, run))) = (stage, since, of_lead.last_mut()) {
                run.3.push((stage, super::from_ms(since)));
            }
        }
        // Each run's first email of each step (the A/B unit): (run, stage, step, template, queued).
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let rest = format!(
            "FROM messages WHERE lead_id IN ({list}) AND kind = 'email' \
             AND enrollment_id IS NOT NULL AND stage_id IS NOT NULL AND (marks & {}) <> 0",
            tally::mark::FIRST
        );
        type FirstMail = (i64, String, Option<String>, Option<String>, i64);
        let first_rows: Vec<FirstMail> = sql::select_packed(
            txn,
            q,
            "enrollment_id, stage_id, step_id, template, created_at",
            &rest,
        )
        .await?;
        let mut first_mails: HashMap<i64, Vec<Mail>> = HashMap::new();
        for (run, stage, step, template, at) in &first_rows {
            first_mails.entry(*run).or_default().push(Mail {
                stage,
                template: template.as_deref().unwrap_or_default(),
                queued_at: super::from_ms(*at),
                step: step.as_deref(),
                first: true,
                variant: true,
            });
        }
        let mut q = Params::new(backend);
        let sql = format!(
            "SELECT lead_id, occurred_at, channel, source, campaign FROM touches \
             WHERE lead_id IN ({}) ORDER BY lead_id, occurred_at, id",
            q.list(chunk)
        );
        type TouchRow = (DateTime<Utc>, String, Option<String>, Option<String>);
        let mut touch_rows: HashMap<i64, Vec<TouchRow>> = HashMap::new();
        for r in txn.query_all_raw(q.statement(sql)).await? {
            touch_rows.entry(r.try_get_by_index(0)?).or_default().push((
                super::from_ms(r.try_get_by_index(1)?),
                r.try_get_by_index(2)?,
                r.try_get_by_index(3)?,
                r.try_get_by_index(4)?,
            ));
        }
        let touches: HashMap<i64, Vec<Touch>> = touch_rows
            .iter()
            .map(|(lead, ts)| {
                let ts = ts
                    .iter()
                    .map(|(at, channel, source, campaign)| Touch {
                        at: *at,
                        channel,
                        source: source.as_deref(),
                        campaign: campaign.as_deref(),
                    })
                    .collect();
                (*lead, ts)
            })
            .collect();
        // A refund's lead's purchases, oldest first: what it is matched to.
        let refunding: Vec<i64> = orders
            .iter()
            .filter(|(l, e, _)| e.kind.is_refund() && chunk.contains(&l.0))
            .map(|(l, _, _)| l.0)
            .collect();
        let mut purchases: HashMap<i64, Vec<(crate::domain::Event, DateTime<Utc>)>> =
            HashMap::new();
        if !refunding.is_empty() {
            let mut q = Params::new(backend);
            let rest = format!(
                "FROM events WHERE kind = 'purchase' AND lead_id IN ({})",
                q.list(&refunding)
            );
            let mut rows: Vec<(i64, i64, String, i64)> =
                sql::select_packed(txn, q, "id, lead_id, payload, occurred_at", &rest).await?;
            rows.sort_unstable_by_key(|r| (r.3, r.0));
            for (id, lead, payload, at) in rows {
                let e = super::event_of(id, EventKind::Purchase.as_str(), &payload)?;
                purchases
                    .entry(lead)
                    .or_default()
                    .push((e, super::from_ms(at)));
            }
        }
        let mut counting = Counting::new(zone);
        let mut facts: Vec<Fact> = Vec::new();
        for ((lead, funnel), of_lead) in &runs {
            let lead_runs: Vec<LeadRun> = of_lead
                .iter()
                .map(|(id, (funnel, entered_at, origin, firsts))| LeadRun {
                    run: Run {
                        funnel,
                        entered_at: *entered_at,
                        origin,
                    },
                    firsts: firsts.iter().map(|(s, at)| (s.as_str(), *at)).collect(),
                    mails: first_mails.get(id).cloned().unwrap_or_default(),
                })
                .collect();
            let ts = touches.get(lead).map(Vec::as_slice).unwrap_or_default();
            let bought: Vec<Order> = purchases
                .get(lead)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|(e, at)| {
                    Order::of(e.product.as_deref(), e.currency.as_deref(), e.amount, *at)
                })
                .collect();
            for (_, e, at) in orders.iter().filter(|(l, _, _)| l.0 == *lead) {
                let order = Order::of(e.product.as_deref(), e.currency.as_deref(), e.amount, *at);
                let order = if e.kind.is_refund() {
                    order.refund_of(&bought)
                } else {
                    order
                };
                tally::order_facts(funnel, &lead_runs, ts, order, &mut facts);
                facts.drain(..).for_each(|f| counting.count(f));
            }
        }
        counting.write(txn, backend).await?;
    }
    Ok(())
}

/// The rows the counters are made from.
const RECOUNT: ReportNeeds = ReportNeeds {
    origins: true,
    visits: true,
    purchases: true,
    milestones: true,
    touches: true,
    fields: false,
    emails: true,
    tracking: true,
};

/// Writes the counters of some leads' rows, what each run has reached, and each email's marks
/// and clicked links; returns how many runs were counted.
async fn recount_rows(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    rows: &super::ReportRows,
) -> Result<u64> {
    let mut tally = Tally::by_day(zone);
    let reached: Vec<Vec<Value>> = rows
        .replay(&mut tally, Replay::ALL, None)
        .into_iter()
        .map(|(run, r)| vec![run.0.into(), r.text().into()])
        .collect();
    write(txn, backend, &tally).await?;
    let runs = reached.len() as u64;
    set_enrollments(txn, backend, "reached", reached).await?;
    let mut marked: Vec<Vec<Value>> = Vec::new();
    let mut clicked: Vec<Vec<Value>> = Vec::new();
    for (e, m) in rows.emails.iter().zip(rows.marks()) {
        if m.bits != 0 {
            marked.push(vec![e.id.into(), m.bits.into()]);
        }
        for (l, _) in m.links {
            clicked.push(vec![e.id.into(), l.to_string().into()]);
        }
    }
    for chunk in sql::chunks(marked) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        let sql = format!(
            "UPDATE messages SET marks = v.column2 FROM (VALUES {values}) AS v \
             WHERE messages.id = v.column1"
        );
        txn.execute_raw(q.statement(sql)).await?;
    }
    sql::insert_rows(
        txn,
        backend,
        "email_links (message_id, link)",
        "ON CONFLICT (message_id, link) DO NOTHING",
        clicked,
    )
    .await?;
    Ok(runs)
}

/// Which counters a report reads: those of one view (with, for the calendar view of the funnel
/// report, the funnel-wide counters of entry cohorts — entries, conversions, lengths), and for
/// the per-email and A/B reports only the counters whose names begin with theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub view: tally::View,
    pub entry_totals: bool,
    /// Only the metrics that begin with this ([`tally::metric::MAIL`], [`tally::metric::AB`]).
    pub prefix: Option<&'static str>,
}

/// How the days of a period are grouped: all together, or into periods of these days
/// (`[first, end)` each, in order, not overlapping; days between two are not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    Whole,
    Periods(Vec<(i64, i64)>),
}

/// A read of the counters: the days `[from_day, to_day)` grouped, all runs together and each
/// origin (as `origins` tells them apart) too when there are slices, the metrics of `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub from_day: i64,
    pub to_day: i64,
    pub grouping: Grouping,
    pub origins: Option<tally::Apart>,
    pub scope: Scope,
    /// Hours at the ends of the periods, each beginning and ending on the hour, read from all
    /// runs' counters by the hour ([`tally::View::EntryHour`], [`tally::View::CalendarHour`]).
    pub hours: Vec<Edge>,
}

/// Hours where a report's period and the whole days of the counters it reads differ (a period
/// in another zone than theirs, or starting or ending within a day), read from the rows of the
/// leads with something in them (entry cohorts: runs that entered then; the calendar view:
/// anything it files then) and added to the figures of the period `period` (`sign` 1: hours of
/// the period the days leave out) or taken off them (-1: hours of the days outside the period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub period: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sign: i64,
}

impl Edge {
    /// The hours `edges` cover, cut at every edge's ends into pieces that do not overlap, in
    /// order (two periods' edges can share hours: one's added, the other's taken off).
    pub fn pieces(edges: &[Edge]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut cuts: Vec<DateTime<Utc>> = edges.iter().flat_map(|e| [e.from, e.to]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|w| (w[0], w[1]))
            .filter(|p| edges.iter().any(|e| e.covers(*p)))
            .collect()
    }

    /// Whether the edge holds the piece (`from`, `to`) of [`Edge::pieces`].
    pub fn covers(&self, (from, to): (DateTime<Utc>, DateTime<Utc>)) -> bool {
        self.from <= from && to <= self.to
    }

    /// Adds the figures of each piece of [`Edge::pieces`] (`per_piece`, keyed by the piece's
    /// index and the origin) to the period of every edge that covers it, with the edge's sign:
    /// the views `keep` says only.
    pub fn spread(
        edges: &[Edge],
        per_piece: BTreeMap<(i64, String), Figures>,
        figs: &mut BTreeMap<(i64, String), Figures>,
        keep: impl Fn(tally::View) -> bool,
    ) {
        let pieces = Edge::pieces(edges);
        for ((i, origin), fig) in per_piece {
            let Some(piece) = usize::try_from(i).ok().and_then(|i| pieces.get(i)) else {
                continue;
            };
            for edge in edges.iter().filter(|e| e.covers(*piece)) {
                let into = figs.entry((edge.period, origin.clone())).or_default();
                for (view, stage, metric, sum) in fig.iter() {
                    if keep(view) {
                        let signed = Sum {
                            n: sum.n * edge.sign,
                            total: Micros(sum.total.0 * edge.sign),
                        };
                        into.add(view, stage, metric, signed);
                    }
                }
            }
        }
    }
}

/// The index of the period of `periods` (`[first, end)` each, in order, not overlapping)
/// that `day` falls in, if any.
fn period_of(periods: &[(i64, i64)], day: i64) -> Option<usize> {
    let i = periods.partition_point(|&(_, end)| end <= day);
    periods
        .get(i)
        .filter(|&&(first, _)| first <= day)
        .map(|_| i)
}

/// The sums of one counter per period from its days packed as text, `DAY N TOTAL` after one
/// another, space-separated ([`Store::report_figures`]); days outside every period left out.
fn sums_by_period(periods: &[(i64, i64)], packed: &str) -> Result<Vec<(usize, Sum)>> {
    let bad = || {
        let start: String = packed.chars().take(60).collect();
        StoreError::Corrupt(format!("a report counter's days: \"{start}…\""))
    };
    let mut out: Vec<(usize, Sum)> = Vec::new();
    let mut words = packed.split_ascii_whitespace().map(str::parse::<i64>);
    while let Some(day) = words.next() {
        let mut next = || words.next().and_then(|w| w.ok()).ok_or_else(bad);
        let (day, n, total) = (day.map_err(|_| bad())?, next()?, next()?);
        let Some(period) = period_of(periods, day) else {
            continue;
        };
        let sum = Sum {
            n,
            total: Micros(total),
        };
        match out.iter_mut().find(|(p, _)| *p == period) {
            Some((_, s)) => s.add(sum),
            None => out.push((period, sum)),
        }
    }
    Ok(out)
}

impl Store {
    /// The counters of `funnel` that `c` reads.
    pub async fn counted(
        &self,
        funnel: &FunnelId,
        c: &Counted,
    ) -> Result<BTreeMap<(i64, String), Figures>> {
        let (from, to) = (c.from_day, c.to_day);
        let mut figs = self
            .report_figures(
                funnel,
                from,
                to,
                &c.grouping,
                c.origins.as_ref(),
                Some(c.scope),
            )
            .await?;
        if !c.hours.is_empty() {
            let per_piece = self.hour_figures(funnel, &c.hours, c.scope).await?;
            Edge::spread(&c.hours, per_piece, &mut figs, |_| true);
        }
        Ok(figs)
    }

    /// All runs' counters by the hour over each piece of `edges` ([`Edge::pieces`], each on
    /// the hour), keyed by the piece's index, as the views of `scope` they are kept for. One
    /// read per piece, each a range of the key (hours come before the metric in it).
    async fn hour_figures(
        &self,
        funnel: &FunnelId,
        edges: &[Edge],
        scope: Scope,
    ) -> Result<BTreeMap<(i64, String), Figures>> {
        let mut out: BTreeMap<(i64, String), Figures> = BTreeMap::new();
        let Some(hourly) = scope.view.by_hour() else {
            return Ok(out);
        };
        for (piece, (from, to)) in Edge::pieces(edges).into_iter().enumerate() {
            let mut values: Vec<Value> = vec![
                funnel.as_str().into(),
                hourly.name().into(),
                tally::View::EntryHour.name().into(),
                tally::hour_of(from).into(),
                tally::hour_of(to).into(),
            ];
            // The calendar view's entry totals: the entry view's funnel-wide counters.
            let mut which = if scope.entry_totals {
                " AND (view = $6 OR stage = '')".to_string()
            } else {
                " AND view = $6".to_string()
            };
            values.push(hourly.name().into());
            if let Some(prefix) = scope.prefix {
                values.push(prefix.into());
                let len = prefix.chars().count();
                which.push_str(&format!(" AND substr(metric, 1, {len}) = $7"));
            }
            let sql = format!(
                "SELECT view, stage, metric, CAST(SUM(n) AS BIGINT), CAST(SUM(total) AS BIGINT) \
                 FROM report_hours WHERE funnel_id = $1 AND view IN ($2, $3) \
                 AND day >= $4 AND day < $5{which} GROUP BY view, stage, metric"
            );
            let into = out
                .entry((piece as i64, tally::ALL.to_string()))
                .or_default();
            self.each(&sql, values, |r| {
                let Some(view) = tally::View::parse(&r.try_get_by_index::<String>(0)?) else {
                    return Ok(());
                };
                let n: i64 = r.try_get_by_index::<Option<i64>>(3)?.unwrap_or(0);
                let total = Micros(r.try_get_by_index::<Option<i64>>(4)?.unwrap_or(0));
                into.add(
                    view.summed_as(),
                    &r.try_get_by_index::<String>(1)?,
                    &r.try_get_by_index::<String>(2)?,
                    Sum { n, total },
                );
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// The counters of `funnel` over the days `[from_day, to_day)`, summed per period of
    /// `grouping` (numbered from 0) and per origin: all runs together ([`tally::ALL`]), and
    /// each origin too when `origins` says what of them to tell apart ([`tally::Apart::fold`]:
    /// the origins that are one to it are summed as they are read); those of `scope` only,
    /// when given.
    pub async fn report_figures(
        &self,
        funnel: &FunnelId,
        from_day: i64,
        to_day: i64,
        grouping: &Grouping,
        origins: Option<&tally::Apart>,
        scope: Option<Scope>,
    ) -> Result<BTreeMap<(i64, String), Figures>> {
        // A window of whole hours reads the counters kept by the hour (all runs together).
        let hourly = scope.is_some_and(|s| s.view.by_the_hour());
        let (table, origin, cond, group) = match (hourly, origins.is_some()) {
            (true, _) => ("report_hours", "'' AS origin", "1 = 1", ""),
            (false, true) => ("report_counts", "origin", "1 = 1", "origin, "),
            (false, false) => ("report_counts", "origin", "origin = ''", "origin, "),
        };
        let mut values: Vec<Value> = vec![funnel.as_str().into(), from_day.into(), to_day.into()];
        // The view and the email prefix are values made here, bound all the same.
        let which = match scope {
            None => String::new(),
            Some(s) => {
                let mut w = match s.view {
                    // A conversion window: the entry view of what happened up to its days
                    // after entry.
                    // Each of the days as a view of the key: the origin after it is held too
                    // (a range of views is walked through every origin).
                    tally::View::Within(days) => {
                        let list: Vec<String> = (0..=days)
                            .map(|d| {
                                values.push(tally::View::Within(d).name().into());
                                format!("${}", values.len())
                            })
                            .collect();
                        format!(" AND view IN ({})", list.join(", "))
                    }
                    // The hours' table has no origin: a range of its views is tight.
                    tally::View::WithinHours(_) => {
                        values.push(tally::View::WithinHours(0).name().into());
                        values.push(s.view.name().into());
                        " AND view BETWEEN $4 AND $5".to_string()
                    }
                    // The calendar view's (all runs together), with (for the funnel report) the
                    // entry view's funnel-wide counters of the same window.
                    tally::View::CalendarWithin(days) => {
                        let mut views: Vec<tally::View> =
                            (0..=days).map(tally::View::CalendarWithin).collect();
                        if s.entry_totals {
                            views.extend((0..=days).map(tally::View::Within));
                        }
                        let list: Vec<String> = views
                            .iter()
                            .map(|v| {
                                values.push(v.name().into());
                                format!("${}", values.len())
                            })
                            .collect();
                        values.push(tally::View::Calendar.name().into());
                        format!(
                            " AND view IN ({}) AND (substr(view, 1, 8) = ${} OR stage = '')",
                            list.join(", "),
                            values.len()
                        )
                    }
                    view if s.entry_totals => {
                        for v in [view, tally::View::Entry, view] {
                            values.push(v.name().into());
                        }
                        " AND view IN ($4, $5) AND (view = $6 OR stage = '')".to_string()
                    }
                    view => {
                        values.push(view.name().into());
                        " AND view = $4".to_string()
                    }
                };
                if let Some(prefix) = s.prefix {
                    values.push(prefix.into());
                    let len = prefix.chars().count();
                    w.push_str(&format!(
                        " AND substr(metric, 1, {len}) = ${}",
                        values.len()
                    ));
                }
                w
            }
        };
        // Grouped in the primary key's order (view, origin, stage, metric, then day: one view
        // of every origin is a range of the key), each counter is summed as the key is read,
        // with no sort. Into periods, each counter's days come packed in one text, `DAY N
        // TOTAL …`, and are summed into them here: grouping by the period in SQL sorts every
        // row read (SQLite cannot see that a period grows with the day), and a row per day costs
        // more to read than its text (BENCHMARKS.md, 2026-12-07).
        let sums = match grouping {
            Grouping::Whole => "CAST(SUM(n) AS BIGINT), CAST(SUM(total) AS BIGINT)",
            Grouping::Periods(_) => match self.backend {
                Backend::Sqlite => "group_concat(day || ' ' || n || ' ' || total, ' '), NULL",
                Backend::Postgres => "string_agg(day || ' ' || n || ' ' || total, ' '), NULL",
            },
        };
        let sql = format!(
            "SELECT {origin}, view, stage, metric, {sums} \
             FROM {table} WHERE funnel_id = $1 AND {cond} AND day >= $2 AND day < $3{which} \
             GROUP BY view, {group}stage, metric"
        );
        // Per counter — the origin as folded (numbered), the view, stage and metric — its sum
        // in each period it has days in: a row adds to its counter's sums, and the periods'
        // figures are made once at the end (origins folded into one come as rows apart).
        let periods = match grouping {
            Grouping::Whole => 1,
            Grouping::Periods(p) => p.len(),
        };
        let mut names: Vec<String> = Vec::new();
        let mut numbers: rustc_hash::FxHashMap<String, usize> = Default::default();
        type Counter = (usize, tally::View, String, String);
        let mut counters: rustc_hash::FxHashMap<Counter, Vec<Option<Sum>>> = Default::default();
        self.each(&sql, values, |r| {
            let Some(view) = tally::View::parse(&r.try_get_by_index::<String>(1)?) else {
                return Ok(());
            };
            // The days or hours after entry of a window's counters as the entry view.
            let view = view.summed_as();
            let (origin, stage, metric): (String, String, String) = (
                r.try_get_by_index(0)?,
                r.try_get_by_index(2)?,
                r.try_get_by_index(3)?,
            );
            let sums = match grouping {
                Grouping::Whole => vec![(
                    0,
                    Sum {
                        n: r.try_get_by_index::<Option<i64>>(4)?.unwrap_or(0),
                        total: Micros(r.try_get_by_index::<Option<i64>>(5)?.unwrap_or(0)),
                    },
                )],
                Grouping::Periods(periods) => {
                    sums_by_period(periods, &r.try_get_by_index::<String>(4)?)?
                }
            };
            let number = match numbers.get(&origin) {
                Some(n) => *n,
                None => {
                    let name = origins.map_or_else(|| origin.clone(), |a| a.fold(&origin));
                    let n = match names.iter().position(|x| *x == name) {
                        Some(n) => n,
                        None => {
                            names.push(name);
                            names.len() - 1
                        }
                    };
                    numbers.insert(origin, n);
                    n
                }
            };
            let per = counters
                .entry((number, view, stage, metric))
                .or_insert_with(|| vec![None; periods]);
            for (period, sum) in sums {
                match per.get_mut(period) {
                    Some(Some(s)) => s.add(sum),
                    Some(slot) => *slot = Some(sum),
                    None => {}
                }
            }
            Ok(())
        })
        .await?;
        let mut out: BTreeMap<(i64, String), Figures> = BTreeMap::new();
        for ((number, view, stage, metric), per) in counters {
            for (period, sum) in per.into_iter().enumerate() {
                if let Some(sum) = sum {
                    out.entry((period as i64, names[number].clone()))
                        .or_default()
                        .add(view, &stage, &metric, sum);
                }
            }
        }
        Ok(out)
    }

    /// Where a funnel's runs stand now, from its counters summed over every day: the visits
    /// of each stage not left yet (the calendar view's open visits) — its live runs per stage —
    /// and the runs waiting for the double opt-in click. No scan of the runs themselves.
    pub async fn standing(&self, funnel: &FunnelId) -> Result<(BTreeMap<String, i64>, i64)> {
        // Two reads, each a range of the key (funnel, view, origin, …): with an OR of the
        // views, SQLite walks every counter of the funnel.
        let sql = "SELECT stage, metric, CAST(SUM(n) AS BIGINT) FROM report_counts \
                   WHERE funnel_id = $1 AND view = $2 AND origin = '' AND metric = $3 \
                   GROUP BY stage, metric \
                   UNION ALL SELECT stage, metric, CAST(SUM(n) AS BIGINT) FROM report_counts \
                   WHERE funnel_id = $4 AND view = $5 AND origin = '' AND stage = '' \
                   AND metric = $6 GROUP BY stage, metric";
        let values: Vec<Value> = vec![
            funnel.as_str().into(),
            tally::View::Calendar.name().into(),
            tally::metric::OPEN.into(),
            funnel.as_str().into(),
            tally::View::Entry.name().into(),
            tally::metric::UNCONFIRMED.into(),
        ];
        let mut open = BTreeMap::new();
        let mut unconfirmed = 0;
        self.each(sql, values, |r| {
            let stage: String = r.try_get_by_index(0)?;
            let metric: String = r.try_get_by_index(1)?;
            let n: i64 = r.try_get_by_index::<Option<i64>>(2)?.unwrap_or(0);
            if metric == tally::metric::UNCONFIRMED {
                unconfirmed += n;
            } else {
                open.insert(stage, n);
            }
            Ok(())
        })
        .await?;
        Ok((open, unconfirmed))
    }

    /// Makes every report counter again from the stored rows, and each run's origin (when it
    /// has none) and what it has reached, and each email's marks and clicked links. Leads are
    /// read a range of ids at a time, so memory stays bounded however many there are. Returns
    /// how many runs were counted.
    pub async fn recount(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut funnels: Vec<String> = Vec::new();
        self.each(
            "SELECT DISTINCT funnel_id FROM enrollments",
            Vec::new(),
            |r| {
                funnels.push(r.try_get_by_index(0)?);
                Ok(())
            },
        )
        .await?;
        let again =
            self.fields != self.counters_fields().await?.into() || !self.origins_current().await?;
        self.set_origins(again).await?;
        let txn = self.write().await?;
        txn.execute_unprepared("DELETE FROM report_counts").await?;
        txn.execute_unprepared("DELETE FROM report_hours").await?;
        txn.execute_unprepared("DELETE FROM email_links").await?;
        txn.execute_unprepared("UPDATE messages SET marks = 0 WHERE marks <> 0")
            .await?;
        let mut runs = 0;
        for f in funnels {
            let Ok(funnel) = FunnelId::parse(&f) else {
                continue;
            };
            let left = self.lead_ranges(&funnel).await?;
            let mut ranges = self.ranges(&funnel, now, RECOUNT, left);
            while let Some(rows) = ranges.next().await? {
                runs += recount_rows(&txn, self.backend, self.zone, &rows).await?;
            }
        }
        // The zone and the fields the counters are now kept by.
        let sql = "INSERT INTO store_settings (name, value) VALUES ($1, $2) \
                   ON CONFLICT (name) DO UPDATE SET value = excluded.value";
        let fields = serde_json::to_string(&self.fields[..]).unwrap_or_default();
        for (name, value) in [
            ("counters_zone", self.zone.name().into()),
            ("counters_fields", fields),
            ("counters_origins", ORIGINS.into()),
        ] {
            txn.execute_raw(self.statement(sql, vec![name.into(), value.into()]))
                .await?;
        }
        txn.commit().await?;
        Ok(runs)
    }

    /// A value kept in `store_settings`.
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        let mut value = None;
        self.each(
            "SELECT value FROM store_settings WHERE name = $1",
            vec![name.into()],
            |r| {
                value = Some(r.try_get_by_index::<String>(0)?);
                Ok(())
            },
        )
        .await?;
        Ok(value)
    }

    /// The zone whose days the stored counters are in (UTC when none was recorded).
    pub async fn counters_zone(&self) -> Result<chrono_tz::Tz> {
        let zone = self.setting("counters_zone").await?;
        Ok(zone.and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC))
    }

    /// The lead fields the stored counters are kept by (none when none was recorded).
    pub async fn counters_fields(&self) -> Result<Vec<String>> {
        let fields = self.setting("counters_fields").await?;
        Ok(fields
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or_default())
    }

    /// Whether the runs' origins were made by this build's rules ([`ORIGINS`]): else a
    /// recount makes them again.
    async fn origins_current(&self) -> Result<bool> {
        Ok(self.setting("counters_origins").await?.as_deref() == Some(ORIGINS))
    }

    /// Keeps the counters per day of `zone` and per value of the lead `fields` from now on:
    /// when they are kept otherwise, they are made again from the rows (a recount) — each
    /// run's origin taking the fields' values its lead has now, when the fields changed.
    /// Returns whether they were.
    pub async fn count_in(
        &mut self,
        zone: chrono_tz::Tz,
        fields: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.zone = zone;
        self.fields = fields.into();
        if self.counters_zone().await? == zone
            && self.counters_fields().await? == fields
            && self.origins_current().await?
        {
            return Ok(false);
        }
        tracing::info!(
            zone = %zone,
            ?fields,
            "the report counters are kept otherwise: counting them again from the rows \
             (minutes for a million runs)"
        );
        self.recount(now).await?;
        Ok(true)
    }

    /// Reads the counters as they were kept: in their zone, by their fields (for a process
    /// that only reads).
    pub async fn read_counters_as_kept(&mut self) -> Result<()> {
        self.zone = self.counters_zone().await?;
        self.fields = self.counters_fields().await?.into();
        Ok(())
    }

    /// The lead fields this handle's counters are kept by (see [`Store::count_in`]).
    pub fn kept_fields(&self) -> &[String] {
        &self.fields
    }

    /// This handle keeps and reads the counters per day of `zone` (no recount: see
    /// [`Store::count_in`]).
    pub fn with_zone(mut self, zone: chrono_tz::Tz) -> Store {
        self.zone = zone;
        self
    }

    /// This handle keeps and reads the counters by these lead fields (no recount: see
    /// [`Store::count_in`]; a handle that writes must keep them as they are stored).
    pub fn with_fields(mut self, fields: &[String]) -> Store {
        self.fields = fields.into();
        self
    }

    /// Queues the calls of these project-wide webhooks' subscriptions with what they tell.
    pub fn with_subscriptions(mut self, subs: Vec<super::Subscription>) -> Store {
        self.subscriptions = std::sync::Arc::from(subs);
        self
    }

    /// The zone whose days this handle keeps and reads the counters in.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.zone
    }

    /// Gives each run without an origin (`all`: every run) the first touch of its lead up to
    /// the run's entry, the kept fields' values its lead has now, and the A/B variant it got
    /// first.
    async fn set_origins(&self, all: bool) -> Result<()> {
        let mut todo: Vec<(i64, i64, i64)> = Vec::new();
        let which = if all { "" } else { "WHERE origin IS NULL " };
        self.each(
            &format!("SELECT id, lead_id, entered_at FROM enrollments {which}ORDER BY id"),
            Vec::new(),
            |r| {
                todo.push((
                    r.try_get_by_index(0)?,
                    r.try_get_by_index(1)?,
                    r.try_get_by_index(2)?,
                ));
                Ok(())
            },
        )
        .await?;
        let txn = self.write().await?;
        for chunk in todo.chunks(sql::ROWS) {
            let leads: Vec<LeadId> = chunk.iter().map(|(_, l, _)| LeadId(*l)).collect();
            let touches = first_touches(&txn, self.backend, &leads).await?;
            let fields = kept_fields(&txn, self.backend, &self.fields, &leads).await?;
            // Each run's first A/B variant, found by its lead (messages are indexed by lead).
            let mut q = Params::new(self.backend);
            let ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
            let rest = format!(
                "FROM messages WHERE lead_id IN ({}) AND kind = 'email' AND (marks & {}) <> 0",
                q.list(&ids),
                tally::mark::VARIANT
            );
            let mut sent: Vec<(i64, Option<i64>, Option<String>)> =
                sql::select_packed(&*txn, q, "id, enrollment_id, template", &rest).await?;
            sent.sort_unstable();
            let mut variants: HashMap<i64, String> = HashMap::new();
            for (_, run, template) in sent {
                if let Some(run) = run {
                    variants.entry(run).or_insert(template.unwrap_or_default());
                }
            }
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .map(|(id, lead, at)| {
                    let o = run_origin(&touches, &fields, &self.fields, *lead, *at);
                    let o = match variants.get(id) {
                        Some(t) => tally::with_variant(&o, t),
                        None => o,
                    };
                    vec![(*id).into(), o.into()]
                })
                .collect();
            set_enrollments(&txn, self.backend, "origin", rows).await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// Sets one column of enrollments from (id, value) rows, a statement per [`sql::ROWS`].
async fn set_enrollments(
    txn: &DatabaseTransaction,
    backend: Backend,
    column: &'static str,
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    for chunk in sql::chunks(rows) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        let sql = format!(
            "UPDATE enrollments SET {column} = v.column2 FROM (VALUES {values}) AS v \
             WHERE enrollments.id = v.column1"
        );
        txn.execute_raw(q.statement(sql)).await?;
    }
    Ok(())
}

/// The origin of a run of `lead` entering at `at` (ms): the lead's first touch up to then
/// (as [`first_touches`] read them) and the values of the `kept` fields (as [`kept_fields`]
/// read them).
pub(super) fn run_origin(
    touches: &HashMap<i64, Vec<(i64, TouchParts)>>,
    fields: &HashMap<i64, serde_json::Map<String, serde_json::Value>>,
    kept: &[String],
    lead: i64,
    at: i64,
) -> String {
    let parts = touches
        .get(&lead)
        .and_then(|ts| ts.iter().find(|(t, _)| *t <= at))
        .map_or([None; 5], |(_, p)| p.each_ref().map(|p| p.as_deref()));
    let values: Vec<(&str, Option<String>)> = kept
        .iter()
        .map(|name| {
            let v = fields.get(&lead).and_then(|f| tally::field_value(f, name));
            (name.as_str(), v)
        })
        .collect();
    tally::origin_with(parts, &values)
}

/// The lead fields of `leads` (none read when no field is `kept`).
pub(super) async fn kept_fields(
    txn: &DatabaseTransaction,
    backend: Backend,
    kept: &[String],
    leads: &[LeadId],
) -> Result<HashMap<i64, serde_json::Map<String, serde_json::Value>>> {
    if kept.is_empty() || leads.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Params::new(backend);
    let ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
    let rest = format!("FROM leads WHERE id IN ({})", q.list(&ids));
    let rows: Vec<(i64, String)> = sql::select_packed(txn, q, "id, fields", &rest).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, text)| Some((id, serde_json::from_str(&text).ok()?)))
        .collect())
}

/// A touch's channel, source, medium, campaign and form ([`tally::origin`]'s parts).
pub(super) type TouchParts = [Option<String>; 5];

/// Each lead's touches, oldest first, with their times (ms).
pub(super) async fn first_touches(
    txn: &DatabaseTransaction,
    backend: Backend,
    leads: &[LeadId],
) -> Result<HashMap<i64, Vec<(i64, TouchParts)>>> {
    let mut out: HashMap<i64, Vec<(i64, TouchParts)>> = HashMap::new();
    if leads.is_empty() {
        return Ok(out);
    }
    let mut q = Params::new(backend);
    let ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
    let list = q.list(&ids);
    type Text = Option<String>;
    type Row = (i64, i64, i64, Text, Text, Text, Text, Text);
    let mut rows: Vec<Row> = sql::select_packed(
        txn,
        q,
        "lead_id, occurred_at, id, channel, source, medium, campaign, form_id",
        &format!("FROM touches WHERE lead_id IN ({list})"),
    )
    .await?;
    // Oldest first: by time, then as stored.
    rows.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    for (lead, at, _, channel, source, medium, campaign, form) in rows {
        let parts = [channel, source, medium, campaign, form];
        out.entry(lead).or_default().push((at, parts));
    }
    Ok(out)
}

/// What a report reads: the rows it needs, or the counters over whole days.
#[derive(Debug, Clone)]
pub enum ReportRead {
    Rows(ReportNeeds),
    Counts(Counted),
    /// The counters of the whole days, and the rows of the leads with something in the hours
    /// of `edges`: a report's figures are sums over runs (an entry cohort's each filed under its
    /// entry, the calendar view's each fact when it happened), so the two add up.
    Parts {
        counts: Counted,
        edges: Vec<Edge>,
        needs: ReportNeeds,
    },
    /// A forecast: the entry view of the observed days (all runs; in another zone with the
    /// hours around them by the hour), and the runs in flight.
    Forecast(Counted),
}

/// What a report read.
#[derive(Debug, Clone)]
pub enum ReportData {
    Rows(super::ReportRows),
    /// Per (period, origin).
    Counts(BTreeMap<(i64, String), Figures>),
    Forecast(super::Observations),
}

impl Store {
    /// Reads what a report of `funnel` needs, up to `until` for rows.
    pub async fn read_report(
        &self,
        funnel: &FunnelId,
        read: &ReportRead,
        until: DateTime<Utc>,
    ) -> Result<ReportData> {
        Ok(match read {
            ReportRead::Rows(needs) => {
                ReportData::Rows(self.report_rows(funnel, until, *needs).await?)
            }
            ReportRead::Counts(c) | ReportRead::Parts { counts: c, .. } => {
                ReportData::Counts(self.counted(funnel, c).await?)
            }
            ReportRead::Forecast(c) => {
                let figures = self.counted(funnel, c).await?;
                ReportData::Forecast(self.observations(funnel, figures).await?)
            }
        })
    }

    /// What a forecast goes on from: `figures` (all runs', of the observed days) and the runs
    /// in flight.
    pub async fn observations(
        &self,
        funnel: &FunnelId,
        mut figures: BTreeMap<(i64, String), Figures>,
    ) -> Result<super::Observations> {
        let (live, first) = self.in_flight(funnel).await?;
        Ok(super::Observations {
            figures: figures
                .remove(&(0, tally::ALL.to_string()))
                .unwrap_or_default(),
            live,
            first,
        })
    }
}

impl Store {
    /// What a lead's runs, orders and emails added to the counters, to take back out when the
    /// lead is erased ([`forget`]): the figures then read as if the lead had never been.
    pub(super) async fn counters_of_lead(&self, lead: LeadId) -> Result<Tally> {
        let mut funnels: Vec<String> = Vec::new();
        self.each(
            "SELECT DISTINCT funnel_id FROM enrollments WHERE lead_id = $1",
            vec![lead.0.into()],
            |r| {
                funnels.push(r.try_get_by_index(0)?);
                Ok(())
            },
        )
        .await?;
        let mut tally = Tally::by_day(self.zone);
        let far = DateTime::<Utc>::MAX_UTC;
        for f in funnels {
            let Ok(funnel) = FunnelId::parse(&f) else {
                continue;
            };
            let rows = self
                .rows_of(&funnel, far, RECOUNT, &sql::Leads::List(vec![lead.0]))
                .await?;
            rows.replay(&mut tally, Replay::ALL, None);
        }
        Ok(tally.negated())
    }
}

/// Takes what [`Store::counters_of_lead`] found out of the stored counters, in the transaction
/// that erases the lead.
pub(super) async fn forget(
    txn: &DatabaseTransaction,
    backend: Backend,
    counters: &Tally,
) -> Result<()> {
    write(txn, backend, counters).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_days_are_summed_into_their_periods() {
        // Weeks from day 10: [10, 17), [17, 24); day 9 and day 30 fall outside both.
        let weeks = [(10, 17), (17, 24)];
        let sums = sums_by_period(&weeks, "9 5 0 10 1 100 16 2 200 17 4 0 30 7 0").unwrap();
        let got: Vec<(usize, i64, i64)> = sums.iter().map(|(p, s)| (*p, s.n, s.total.0)).collect();
        assert_eq!(got, vec![(0, 3, 300), (1, 4, 0)]);
        assert_eq!(period_of(&weeks, 24), None);
        assert_eq!(period_of(&[(0, 1), (5, 6)], 3), None);
        let err = sums_by_period(&weeks, "10 1").unwrap_err().to_string();
        assert!(err.contains("10 1"), "{err}");
    }
}
