//! The report counters (`report_counts`, see [`crate::tally`]): added in the transactions
//! that write what they count, read as sums over a period, and made again from the stored rows
//! (after the upgrade that brought them, or on demand).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::batch::{self, Params};
use super::{Backend, ReportNeeds, Result, Store};
use crate::domain::{Event, EventKind, FunnelId, LeadId};
use crate::tally::{self, Figures, Order, Run, Sum, Tally, Touch};

/// Counts new orders: each purchase of a product is credited to every run of its lead that
/// had entered a stage before it, under that stage; and each purchase is shared among its
/// lead's touches for attribution.
pub(super) async fn count_orders(
    txn: &DatabaseTransaction,
    backend: Backend,
    orders: &[(LeadId, &Event, DateTime<Utc>)],
) -> Result<()> {
    let orders: Vec<_> = orders
        .iter()
        .filter(|(_, e, _)| e.kind == EventKind::Purchase)
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    let mut tally = Tally::by_day();
    let mut leads: Vec<i64> = orders.iter().map(|(l, _, _)| l.0).collect();
    leads.sort_unstable();
    leads.dedup();
    for chunk in leads.chunks(batch::ROWS) {
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let sql = format!(
            "SELECT e.lead_id, e.funnel_id, e.entered_at, e.origin, h.stage_id, MIN(h.entered_at) \
             FROM enrollments e JOIN stage_history h ON h.enrollment_id = e.id \
             WHERE e.lead_id IN ({}) \
             GROUP BY e.id, e.lead_id, e.funnel_id, e.entered_at, e.origin, h.stage_id",
            list
        );
        for r in txn.query_all_raw(q.statement(sql)).await? {
            let lead: i64 = r.try_get_by_index(0)?;
            let funnel: String = r.try_get_by_index(1)?;
            let origin: Option<String> = r.try_get_by_index(3)?;
            let run = Run {
                funnel: &funnel,
                entered_at: super::from_ms(r.try_get_by_index(2)?),
                origin: origin.as_deref().unwrap_or_default(),
            };
            let stage: String = r.try_get_by_index(4)?;
            let since = super::from_ms(r.try_get_by_index(5)?);
            for (_, e, at) in orders.iter().filter(|(l, _, _)| l.0 == lead) {
                if since < *at && e.product.is_some() {
                    let o = order_of(e, *at);
                    tally.purchase(&run, &stage, o.product, o.currency, o.amount, o.at);
                }
            }
        }
    }
    attribute(txn, backend, &orders, &leads, &mut tally).await?;
    batch::write_counts(txn, backend, &tally).await
}

/// Shares new orders among their leads' touches, for each funnel the lead had entered by then
/// (as [`super::ReportRows::attribute`] does from the rows).
async fn attribute(
    txn: &DatabaseTransaction,
    backend: Backend,
    orders: &[&(LeadId, &Event, DateTime<Utc>)],
    leads: &[i64],
    tally: &mut Tally,
) -> Result<()> {
    for chunk in leads.chunks(batch::ROWS) {
        let list = |q: &mut Params| q.list(chunk);
        let mut q = Params::new(backend);
        let sql = format!(
            "SELECT lead_id, funnel_id, MIN(entered_at) FROM enrollments WHERE lead_id IN ({}) \
             GROUP BY lead_id, funnel_id",
            list(&mut q)
        );
        let mut entered: Vec<(i64, String, DateTime<Utc>)> = Vec::new();
        for r in txn.query_all_raw(q.statement(sql)).await? {
            entered.push((
                r.try_get_by_index(0)?,
                r.try_get_by_index(1)?,
                super::from_ms(r.try_get_by_index(2)?),
            ));
        }
        let mut q = Params::new(backend);
        let sql = format!(
            "SELECT lead_id, occurred_at, channel, source, campaign FROM touches \
             WHERE lead_id IN ({}) ORDER BY lead_id, occurred_at, id",
            list(&mut q)
        );
        type Row = (DateTime<Utc>, String, Option<String>, Option<String>);
        let mut touches: HashMap<i64, Vec<Row>> = HashMap::new();
        for r in txn.query_all_raw(q.statement(sql)).await? {
            touches.entry(r.try_get_by_index(0)?).or_default().push((
                super::from_ms(r.try_get_by_index(1)?),
                r.try_get_by_index(2)?,
                r.try_get_by_index(3)?,
                r.try_get_by_index(4)?,
            ));
        }
        for (lead, funnel, since) in &entered {
            let ts: Vec<Touch> = touches
                .get(lead)
                .into_iter()
                .flatten()
                .map(|(at, channel, source, campaign)| Touch {
                    at: *at,
                    channel,
                    source: source.as_deref(),
                    campaign: campaign.as_deref(),
                })
                .collect();
            for (_, e, at) in orders
                .iter()
                .filter(|(l, _, at)| l.0 == *lead && *since <= *at)
            {
                tally.attribute(funnel, &order_of(e, *at), &ts, tally::LOOKBACK);
            }
        }
    }
    Ok(())
}

/// An event's order, as the counters see it.
pub(super) fn order_of(e: &Event, at: DateTime<Utc>) -> Order<'_> {
    Order {
        product: e.product.as_deref().unwrap_or_default(),
        currency: e.currency.as_deref().unwrap_or("—"),
        amount: e.amount.unwrap_or(0.0),
        at,
    }
}

/// The rows the counters are made from.
const RECOUNT: ReportNeeds = ReportNeeds {
    visits: true,
    purchases: true,
    milestones: true,
    touches: true,
    fields: false,
    emails: true,
    tracking: true,
};

/// How many lead ids [`Store::recount`] reads at a time.
const RECOUNT_LEADS: i64 = 20_000;

/// Writes the counters of some leads' rows, what each run has reached, and each email's marks
/// and clicked links; returns how many runs were counted.
async fn recount_rows(
    txn: &DatabaseTransaction,
    backend: Backend,
    rows: &super::ReportRows,
) -> Result<u64> {
    let mut tally = Tally::by_day();
    let mut reached: Vec<Vec<Value>> = Vec::new();
    for facts in rows.run_facts() {
        let r = tally.replay(&facts.facts);
        reached.push(vec![facts.enrollment.0.into(), r.text().into()]);
    }
    rows.attribute(&mut tally, tally::LOOKBACK);
    rows.replay_mails(&mut tally);
    batch::write_counts(txn, backend, &tally).await?;
    set_enrollments(txn, backend, "reached", reached.clone()).await?;
    let (marks, links) = rows.marks();
    let mut marked: Vec<Vec<Value>> = Vec::new();
    let mut clicked: Vec<Vec<Value>> = Vec::new();
    for ((e, m), ls) in rows.emails.iter().zip(marks).zip(links) {
        if m != 0 {
            marked.push(vec![e.id.into(), m.into()]);
        }
        for l in ls {
            clicked.push(vec![e.id.into(), l.to_string().into()]);
        }
    }
    for chunk in batch::chunks(marked) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        let sql = format!(
            "UPDATE messages SET marks = v.column2 FROM (VALUES {values}) AS v \
             WHERE messages.id = v.column1"
        );
        txn.execute_raw(q.statement(sql)).await?;
    }
    batch::insert_rows(
        txn,
        backend,
        "email_links (message_id, link)",
        "ON CONFLICT (message_id, link) DO NOTHING",
        clicked,
    )
    .await?;
    Ok(reached.len() as u64)
}

/// Which counters a report reads: those of one view (with, for the calendar view of the funnel
/// report, the funnel-wide counters of entry cohorts — entries, conversions, lengths), and for
/// the per-email report only the email counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub view: tally::View,
    pub entry_totals: bool,
    pub mail_only: bool,
}

/// How the days of a period are grouped: all together, or into periods starting on these
/// days (the first is the period's first day).
#[derive(Debug, Clone)]
pub enum Grouping {
    Whole,
    Periods(Vec<i64>),
}

impl Store {
    /// The counters of `funnel` over the days `[from_day, to_day)`, summed per period of
    /// `grouping` (numbered from 0) and per origin: all runs together ([`tally::ALL`]), and
    /// each origin too when `per_origin`; those of `scope` only, when given.
    pub async fn report_figures(
        &self,
        funnel: &FunnelId,
        from_day: i64,
        to_day: i64,
        grouping: &Grouping,
        per_origin: bool,
        scope: Option<Scope>,
    ) -> Result<BTreeMap<(i64, String), Figures>> {
        // The boundaries are whole numbers made here, not text from outside.
        let period = match grouping {
            Grouping::Whole => "0".to_string(),
            Grouping::Periods(starts) => {
                let mut case = String::from("CASE");
                for (i, d) in starts.iter().enumerate().skip(1) {
                    case.push_str(&format!(" WHEN day < {d} THEN {}", i - 1));
                }
                format!("{case} ELSE {} END", starts.len().saturating_sub(1))
            }
        };
        let origin = if per_origin { "1 = 1" } else { "origin = ''" };
        let mut values: Vec<Value> = vec![funnel.as_str().into(), from_day.into(), to_day.into()];
        // The view and the email prefix are values made here, bound all the same.
        let which = match scope {
            None => String::new(),
            Some(s) => {
                values.push(s.view.as_str().into());
                let mut w = if s.entry_totals {
                    " AND (view = $4 OR (view = 'entry' AND stage = ''))".to_string()
                } else {
                    " AND view = $4".to_string()
                };
                if s.mail_only {
                    values.push(tally::metric::MAIL.into());
                    w.push_str(" AND substr(metric, 1, 5) = $5");
                }
                w
            }
        };
        let sql = format!(
            "SELECT CAST({period} AS BIGINT) AS period, origin, view, stage, metric, CAST(SUM(n) AS BIGINT), SUM(total) \
             FROM report_counts WHERE funnel_id = $1 AND {origin} AND day >= $2 AND day < $3{which} \
             GROUP BY 1, origin, view, stage, metric"
        );
        let mut out: BTreeMap<(i64, String), Figures> = BTreeMap::new();
        self.each(&sql, values, |r| {
            let Some(view) = tally::View::parse(&r.try_get_by_index::<String>(2)?) else {
                return Ok(());
            };
            let n: i64 = r.try_get_by_index::<Option<i64>>(5)?.unwrap_or(0);
            let total: f64 = r.try_get_by_index::<Option<f64>>(6)?.unwrap_or(0.0);
            out.entry((
                r.try_get_by_index::<i64>(0)?,
                r.try_get_by_index::<String>(1)?,
            ))
            .or_default()
            .add(
                view,
                &r.try_get_by_index::<String>(3)?,
                &r.try_get_by_index::<String>(4)?,
                Sum { n, total },
            );
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Makes every report counter again from the stored rows, and each run's origin (when it
    /// has none) and what it has reached, and each email's marks and clicked links. Leads are
    /// read a range of ids at a time, so memory stays bounded however many there are. Returns
    /// how many runs were counted.
    pub async fn recount(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut funnels: Vec<(String, i64, i64)> = Vec::new();
        self.each(
            "SELECT funnel_id, MIN(lead_id), MAX(lead_id) FROM enrollments GROUP BY funnel_id",
            Vec::new(),
            |r| {
                funnels.push((
                    r.try_get_by_index(0)?,
                    r.try_get_by_index(1)?,
                    r.try_get_by_index(2)?,
                ));
                Ok(())
            },
        )
        .await?;
        self.set_origins().await?;
        let txn = self.write().await?;
        txn.execute_unprepared("DELETE FROM report_counts").await?;
        txn.execute_unprepared("DELETE FROM email_links").await?;
        txn.execute_unprepared("UPDATE messages SET marks = 0 WHERE marks <> 0")
            .await?;
        let mut runs = 0;
        for (f, low, high) in funnels {
            let Ok(funnel) = FunnelId::parse(&f) else {
                continue;
            };
            let mut first = low;
            while first <= high {
                let end = first.saturating_add(RECOUNT_LEADS);
                let rows = self
                    .rows_of(&funnel, now, RECOUNT, Some((first, end)))
                    .await?;
                runs += recount_rows(&txn, self.backend, &rows).await?;
                first = end;
            }
        }
        txn.commit().await?;
        Ok(runs)
    }

    /// Gives each run without an origin the first touch of its lead up to the run's entry.
    async fn set_origins(&self) -> Result<()> {
        let mut todo: Vec<(i64, i64, i64)> = Vec::new();
        self.each(
            "SELECT id, lead_id, entered_at FROM enrollments WHERE origin IS NULL ORDER BY id",
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
        for chunk in todo.chunks(batch::ROWS) {
            let leads: Vec<LeadId> = chunk.iter().map(|(_, l, _)| LeadId(*l)).collect();
            let touches = first_touches(&txn, self.backend, &leads).await?;
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .map(|(id, lead, at)| {
                    let o = touches
                        .get(lead)
                        .and_then(|ts| ts.iter().find(|(t, _)| *t <= *at))
                        .map_or_else(none_origin, |(_, o)| o.clone());
                    vec![(*id).into(), o.into()]
                })
                .collect();
            set_enrollments(&txn, self.backend, "origin", rows).await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// Sets one column of enrollments from (id, value) rows, a statement per [`batch::ROWS`].
async fn set_enrollments(
    txn: &DatabaseTransaction,
    backend: Backend,
    column: &'static str,
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    for chunk in batch::chunks(rows) {
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

/// The origin of a run whose lead has no touch.
pub(super) fn none_origin() -> String {
    static NONE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| tally::origin([None; 5]));
    NONE.clone()
}

/// Each lead's touches as origins, oldest first, with their times (ms).
pub(super) async fn first_touches(
    txn: &DatabaseTransaction,
    backend: Backend,
    leads: &[LeadId],
) -> Result<HashMap<i64, Vec<(i64, String)>>> {
    let mut out: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    if leads.is_empty() {
        return Ok(out);
    }
    let mut q = Params::new(backend);
    let ids: Vec<i64> = leads.iter().map(|l| l.0).collect();
    let list = q.list(&ids);
    let sql = format!(
        "SELECT lead_id, occurred_at, channel, source, medium, campaign, form_id FROM touches \
         WHERE lead_id IN ({}) ORDER BY lead_id, occurred_at, id",
        list
    );
    for r in txn.query_all_raw(q.statement(sql)).await? {
        let parts: [Option<String>; 5] = [
            r.try_get_by_index::<Option<String>>(2)?,
            r.try_get_by_index(3)?,
            r.try_get_by_index(4)?,
            r.try_get_by_index(5)?,
            r.try_get_by_index(6)?,
        ];
        let o = tally::origin(parts.each_ref().map(|p| p.as_deref()));
        out.entry(r.try_get_by_index(0)?)
            .or_default()
            .push((r.try_get_by_index(1)?, o));
    }
    Ok(out)
}

/// What a report reads: the rows it needs, or the counters over whole days.
#[derive(Debug, Clone)]
pub enum ReportRead {
    Rows(ReportNeeds),
    Counts {
        from_day: i64,
        to_day: i64,
        grouping: Grouping,
        per_origin: bool,
        scope: Scope,
    },
}

/// What a report read.
#[derive(Debug, Clone)]
pub enum ReportData {
    Rows(super::ReportRows),
    /// Per (period, origin).
    Counts(BTreeMap<(i64, String), Figures>),
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
            ReportRead::Counts {
                from_day,
                to_day,
                grouping,
                per_origin,
                scope,
            } => ReportData::Counts(
                self.report_figures(
                    funnel,
                    *from_day,
                    *to_day,
                    grouping,
                    *per_origin,
                    Some(*scope),
                )
                .await?,
            ),
        })
    }
}

impl Store {
    /// What a lead's runs, orders and emails added to the counters, to take back out when the
    /// lead is erased (the figures then read as if the lead had never been).
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
        let mut tally = Tally::by_day();
        let far = DateTime::<Utc>::MAX_UTC;
        for f in funnels {
            let Ok(funnel) = FunnelId::parse(&f) else {
                continue;
            };
            let rows = self
                .rows_of(&funnel, far, RECOUNT, Some((lead.0, lead.0 + 1)))
                .await?;
            for r in rows.run_facts() {
                tally.replay(&r.facts);
            }
            rows.attribute(&mut tally, tally::LOOKBACK);
            rows.replay_mails(&mut tally);
        }
        Ok(tally.negated())
    }
}
