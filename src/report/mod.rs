//! Funnel analytics as pure functions of the store's rows, a period and a time — no IO, no
//! clock — so the CLI (and later the API and the dashboard) show the same figures.
//!
//! The stage report: for each stage in the funnel's order, the leads that came in, where they
//! went (the next stages, the outcomes they exited with), who is still there; conversion to the
//! next stage and from funnel entry; the revenue and average check of the stage's offer; time in
//! stage; and the funnel's length from entry to `converted`. Leads are counted by **entry
//! cohort** (a run counts in the period it entered the funnel, its later progress credited
//! there) or in the **calendar** view (each stage entry counts in the period it happened).

pub mod ab;
pub mod attribution;
pub mod emails;
pub mod forecast;
pub mod render;
pub mod request;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{EnrollmentId, LeadId, RunStatus};
use crate::funnel::Funnel;
use crate::store::{Replay, ReportRows, VisitRow};
use crate::tally::{ALL, Figures, Tally};

/// How leads are assigned to the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cohort {
    /// A run counts when it entered the funnel; what it did later is credited to that period.
    Entry,
    /// Each stage entry, purchase and exit counts when it happened.
    Calendar,
}

/// A share with its counts: `part` of `whole`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub part: u64,
    pub whole: u64,
    /// Per cent, rounded to 0.1; `None` when `whole` is 0.
    pub percent: Option<f64>,
}

impl Rate {
    pub fn of(part: u64, whole: u64) -> Rate {
        let percent = (whole > 0).then(|| (part as f64 * 1000.0 / whole as f64).round() / 10.0);
        Rate {
            part,
            whole,
            percent,
        }
    }
}

/// The median and 90th percentile of some durations, in seconds (nearest rank); `None` for
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

impl Spread {
    /// From (value, how many) pairs in increasing order of value.
    pub fn of_histogram(pairs: &[(i64, u64)]) -> Spread {
        let n: u64 = pairs.iter().map(|(_, c)| c).sum();
        let rank = |p: f64| -> Option<i64> {
            let k = ((p * n as f64).ceil() as u64).clamp(1, n.max(1));
            let mut seen = 0;
            pairs.iter().find_map(|(v, c)| {
                seen += c;
                (seen >= k).then_some(*v)
            })
        };
        Spread {
            count: n,
            p50_seconds: rank(0.5),
            p90_seconds: rank(0.9),
        }
    }

    pub fn of(mut secs: Vec<i64>) -> Spread {
        secs.sort_unstable();
        let rank = |p: f64| -> Option<i64> {
            let n = secs.len();
            (n > 0).then(|| secs[((p * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        Spread {
            count: secs.len() as u64,
            p50_seconds: rank(0.5),
            p90_seconds: rank(0.9),
        }
    }
}

/// Money taken for one offer, per currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revenue {
    pub currency: String,
    pub orders: u64,
    /// What the orders brought, less what was given back on them (`refunded`).
    pub total: f64,
    /// The average check: total / orders (0 without orders).
    pub average: f64,
    /// Refunds of those orders (entry cohort), or made in the period (calendar view).
    pub refunds: u64,
    /// The money they gave back.
    pub refunded: f64,
}

/// Orders and refunds of one currency (or one product in one currency), summed exactly.
#[derive(Debug, Clone, Copy, Default)]
struct Takings {
    orders: u64,
    bought: crate::tally::Micros,
    refunds: u64,
    refunded: crate::tally::Micros,
}

impl Takings {
    /// Adds a `buy␟…` or `refund␟…` counter.
    fn add(&mut self, refund: bool, sum: crate::tally::Sum) {
        let n = u64::try_from(sum.n).unwrap_or(0);
        if refund {
            self.refunds += n;
            self.refunded.0 += sum.total.0;
        } else {
            self.orders += n;
            self.bought.0 += sum.total.0;
        }
    }

    /// What was kept: bought less refunded, in units.
    fn net(&self) -> f64 {
        crate::tally::Micros(self.bought.0 - self.refunded.0).units()
    }
}

impl Revenue {
    /// Orders and refunds per currency, as revenue lines.
    fn per_currency(by: BTreeMap<String, Takings>) -> Vec<Revenue> {
        by.into_iter()
            .map(|(currency, t)| Revenue {
                currency,
                orders: t.orders,
                total: t.net(),
                average: if t.orders > 0 {
                    t.net() / t.orders as f64
                } else {
                    0.0
                },
                refunds: t.refunds,
                refunded: t.refunded.units(),
            })
            .collect()
    }
}

/// The `buy␟PRODUCT␟CURRENCY` and `refund␟PRODUCT␟CURRENCY` counters of one stage (or of
/// [`FUNNEL`]): (product, currency, is a refund, sum), counters of no order left out.
fn takings<'a>(
    fig: &'a Figures,
    v: crate::tally::View,
    stage: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str, bool, crate::tally::Sum)> + 'a {
    use crate::tally::metric;
    [(metric::BUY, false), (metric::REFUND, true)]
        .into_iter()
        .flat_map(move |(prefix, refund)| {
            fig.with_prefix(v, stage, prefix)
                .filter_map(move |(k, sum)| {
                    let (product, currency) = k.split_once('\u{1f}')?;
                    (sum.n > 0).then_some((product, currency, refund, sum))
                })
        })
}

/// One stage's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub kind: Option<&'static str>,
    pub offer: Option<String>,
    /// A stage that has figures but is no longer in the funnel's file (removed or renamed):
    /// its history is shown after the file's stages (its offer is not known: all its orders
    /// count).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Leads (runs) that entered the stage.
    pub leads_in: u64,
    /// Where they went next: stage id → leads.
    pub moved_on: BTreeMap<String, u64>,
    /// How they left the funnel from here: outcome → leads.
    pub exited: BTreeMap<String, u64>,
    /// Still in the stage now.
    pub still_there: u64,
    /// Entry cohort: runs that reached the next stage in the funnel's order, of those in this
    /// one. Calendar view: visits of this stage that ended in the period by moving on to the
    /// next stage, of all its visits that ended in the period (moved on or exited).
    pub to_next: Option<Rate>,
    /// In this stage, of those who entered the funnel (entry cohort only: in the calendar
    /// view the stage's entries are not a part of the period's funnel entries).
    pub from_entry: Option<Rate>,
    /// Purchases of the stage's offer by the leads that were in it, after they entered it.
    pub revenue: Vec<Revenue>,
    /// Of those purchases, the ones that came without an amount (counted apart from
    /// `revenue`, whose average check they would pull down).
    pub orders_without_amount: u64,
    pub time_in_stage: Spread,
}

/// A funnel's report for a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelReport {
    pub funnel: String,
    pub name: String,
    pub cohort: Cohort,
    /// The time zone its days, weeks and months are in.
    pub tz: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Runs that entered the funnel in the period.
    pub entered: u64,
    /// Of those, runs still waiting for the double opt-in click (in no stage yet).
    pub awaiting_confirmation: u64,
    /// Entry cohort: of those, runs that exited `converted` (by the time of the report).
    /// Calendar view: runs that exited `converted` in the period, of all the runs that left
    /// the funnel from a stage in the period.
    pub converted: Rate,
    pub stages: Vec<StageReport>,
    /// From funnel entry to the `converted` exit, of the conversions counted in `converted`.
    pub length_to_converted: Spread,
    /// Leads that reached the funnel's scoring thresholds, when it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qualified: Option<Qualified>,
    /// Every order of the funnel's runs (made while the run was the lead's latest in the
    /// funnel), whatever the product — an offer of a stage or not — per currency.
    pub revenue: Vec<Revenue>,
    /// Entry cohort: that revenue per run that entered, per currency (none in the calendar
    /// view, whose orders are not the period's entries').
    pub revenue_per_lead: Vec<(String, f64)>,
    /// The same orders per product and currency, most revenue first.
    pub products: Vec<ProductSales>,
    /// Of those orders, the ones without an amount (not in `revenue`).
    pub orders_without_amount: u64,
}

/// One product's orders in one currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductSales {
    pub product: String,
    pub currency: String,
    pub orders: u64,
    /// What they brought, less what was given back.
    pub total: f64,
    pub refunds: u64,
    pub refunded: f64,
}

/// Marketing- and sales-qualified leads: runs whose lead crossed the funnel's `mql` / `sql`
/// score (entry cohort: the period's runs, whenever they crossed; calendar: crossings in the
/// period), of the runs that entered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Qualified {
    pub mql: Option<Rate>,
    pub sql: Option<Rate>,
}

/// Why a report cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the period is empty: `from` ({from}) is not before `to` ({to})")]
    EmptyPeriod { from: String, to: String },
    #[error("no stage \"{stage}\" in this funnel{} (its stages are: {})",
        crate::funnel::diag::did_you_mean(stage, known.iter().map(String::as_str)), known.join(", "))]
    UnknownStage { stage: String, known: Vec<String> },
    #[error("no lead of this funnel has the field \"{field}\"{}{}",
        crate::funnel::diag::did_you_mean(field, known.iter().map(String::as_str)),
        if known.is_empty() { String::new() } else { format!(" (their fields are: {})", known.join(", ")) })]
    UnknownField { field: String, known: Vec<String> },
}

impl ReportError {
    /// The request parameter the error is about.
    pub fn param(&self) -> &'static str {
        match self {
            ReportError::EmptyPeriod { .. } => "from",
            ReportError::UnknownStage { .. } => "set",
            ReportError::UnknownField { .. } => "slice",
        }
    }
}

/// A report's period `[from, to)`: an empty one is refused.
pub(crate) fn check_period(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), ReportError> {
    if from >= to {
        return Err(ReportError::EmptyPeriod {
            from: from.to_rfc3339(),
            to: to.to_rfc3339(),
        });
    }
    Ok(())
}

/// Midnight at the start of the day `d` in `tz` (where a zone skips midnight, the day's first
/// instant).
pub fn midnight_in(d: chrono::NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
    use chrono::TimeZone as _;
    (0..24)
        .find_map(|h| {
            let t = d.and_hms_opt(h, 0, 0)?;
            tz.from_local_datetime(&t).earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

/// A time as people and the API give it: `YYYY-MM-DD` (midnight in `tz`) or RFC 3339.
pub fn parse_time_in(text: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| midnight_in(d, tz))
}

/// A time as people and the API give it: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    parse_time_in(text, chrono_tz::UTC)
}

/// The stage report of `f` from its counters summed over the period `[from, to)`.
pub fn report_of(
    f: &Funnel,
    fig: &Figures,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> FunnelReport {
    use crate::tally::{FUNNEL, View, metric};
    let v = match cohort {
        Cohort::Entry => View::Entry,
        Cohort::Calendar => View::Calendar,
    };
    let count = |view, stage: &str, m: &str| u64::try_from(fig.n(view, stage, m)).unwrap_or(0);
    let entered = count(View::Entry, FUNNEL, metric::ENTERED);
    let map = |stage: &str, prefix: &str| -> BTreeMap<String, u64> {
        fig.with_prefix(v, stage, prefix)
            .filter_map(|(k, s)| Some((k.to_string(), u64::try_from(s.n).ok().filter(|n| *n > 0)?)))
            .collect()
    };
    let sum = |stage: &str, prefix: &str| -> u64 {
        fig.with_prefix(v, stage, prefix)
            .map(|(_, s)| u64::try_from(s.n).unwrap_or(0))
            .sum()
    };
    // Visits of a stage that ended in the period (calendar view).
    let ended = |stage: &str| sum(stage, metric::NEXT) + sum(stage, metric::EXIT);
    // The file's stages in order, then those that have counters but left the file (removed
    // or renamed), by name.
    let mut places: Vec<(&str, Option<&crate::funnel::Stage>)> = f
        .stages
        .iter()
        .map(|s| (s.id.value.as_str(), Some(s)))
        .collect();
    let gone: std::collections::BTreeSet<&str> = fig
        .iter()
        .map(|(_, stage, _, _)| stage)
        .filter(|st| *st != FUNNEL && !f.stages.iter().any(|s| s.id.value.as_str() == *st))
        .collect();
    places.extend(gone.into_iter().map(|st| (st, None)));
    let mut stages = Vec::with_capacity(places.len());
    for (i, (id, s)) in places.iter().enumerate() {
        let id = *id;
        let leads_in = count(v, id, metric::IN);
        let next = s
            .and_then(|_| f.stages.get(i + 1))
            .map(|n| n.id.value.as_str());
        let to_next = next.map(|next| match cohort {
            // Runs that reached both, counted under whichever they reached second.
            Cohort::Entry => Rate::of(
                count(v, next, &format!("{}{id}", metric::WITH))
                    + count(v, id, &format!("{}{next}", metric::WITH)),
                leads_in,
            ),
            Cohort::Calendar => {
                Rate::of(count(v, id, &format!("{}{next}", metric::NEXT)), ended(id))
            }
        });
        let offer = s.and_then(|s| s.offer.as_ref()).map(|o| o.value.as_str());
        // The offer's orders; a removed stage's offer is not known: all its orders.
        let sold =
            |product: &str| offer.is_none_or(|o| o == product) && (offer.is_some() || s.is_none());
        let mut by_currency: BTreeMap<String, Takings> = BTreeMap::new();
        for (product, currency, refund, sum) in takings(fig, v, id) {
            if sold(product) {
                by_currency
                    .entry(currency.to_string())
                    .or_default()
                    .add(refund, sum);
            }
        }
        let unpriced: u64 = fig
            .with_prefix(v, id, metric::UNPRICED)
            .filter(|(product, _)| sold(product))
            .map(|(_, sum)| u64::try_from(sum.n).unwrap_or(0))
            .sum();
        stages.push(StageReport {
            stage: id.to_string(),
            kind: s.and_then(|s| s.kind).map(|k| k.name()),
            offer: offer.map(str::to_string),
            removed: s.is_none(),
            leads_in,
            moved_on: map(id, metric::NEXT),
            exited: map(id, metric::EXIT),
            still_there: count(v, id, metric::OPEN),
            to_next,
            from_entry: (cohort == Cohort::Entry).then(|| Rate::of(leads_in, entered)),
            revenue: Revenue::per_currency(by_currency),
            time_in_stage: Spread::of_histogram(&fig.histogram(v, id, metric::TIME)),
            orders_without_amount: unpriced,
        });
    }
    let qualified = f.scoring.as_ref().and_then(|s| {
        (s.mql.is_some() || s.sql.is_some()).then(|| Qualified {
            mql: s.mql.map(|_| Rate::of(count(v, FUNNEL, "mql"), entered)),
            sql: s.sql.map(|_| Rate::of(count(v, FUNNEL, "sql"), entered)),
        })
    });
    let mut by_currency: BTreeMap<String, Takings> = BTreeMap::new();
    let mut by_product: BTreeMap<(&str, &str), Takings> = BTreeMap::new();
    for (product, currency, refund, sum) in takings(fig, v, FUNNEL) {
        by_currency
            .entry(currency.to_string())
            .or_default()
            .add(refund, sum);
        by_product
            .entry((product, currency))
            .or_default()
            .add(refund, sum);
    }
    let mut products: Vec<ProductSales> = by_product
        .into_iter()
        .map(|((product, currency), t)| ProductSales {
            product: product.to_string(),
            currency: currency.to_string(),
            orders: t.orders,
            total: t.net(),
            refunds: t.refunds,
            refunded: t.refunded.units(),
        })
        .collect();
    products.sort_by(|a, b| b.total.total_cmp(&a.total));
    let revenue = Revenue::per_currency(by_currency);
    let revenue_per_lead = match cohort {
        Cohort::Entry if entered > 0 => revenue
            .iter()
            .map(|r| (r.currency.clone(), r.total / entered as f64))
            .collect(),
        _ => Vec::new(),
    };
    let orders_without_amount = fig
        .with_prefix(v, FUNNEL, metric::UNPRICED)
        .map(|(_, s)| u64::try_from(s.n).unwrap_or(0))
        .sum();
    FunnelReport {
        funnel: f.id.value.to_string(),
        name: f.name.clone(),
        cohort,
        tz: "UTC".into(),
        from,
        to,
        entered,
        awaiting_confirmation: count(View::Entry, FUNNEL, metric::UNCONFIRMED),
        converted: match cohort {
            Cohort::Entry => Rate::of(count(v, FUNNEL, metric::CONVERTED), entered),
            Cohort::Calendar => {
                let ids = || stages.iter().map(|s| s.stage.as_str());
                let exits = ids().map(|id| sum(id, metric::EXIT)).sum();
                let won = format!("{}converted", metric::EXIT);
                Rate::of(ids().map(|id| count(v, id, &won)).sum(), exits)
            }
        },
        stages,
        length_to_converted: Spread::of_histogram(&fig.histogram(v, FUNNEL, metric::LENGTH)),
        qualified,
        revenue,
        revenue_per_lead,
        products,
        orders_without_amount,
    }
}

/// A tally of runs into each of `periods`, cut at `now` (what has not happened yet is left
/// out), for all runs and, when `origins`, per origin.
pub fn runs_tally(
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
    now: DateTime<Utc>,
    origins: bool,
) -> Tally {
    let until = now + chrono::Duration::milliseconds(1);
    Tally::in_periods(
        periods.iter().map(|(a, b)| (*a, (*b).min(until))).collect(),
        origins,
    )
}

/// Counts the stored rows' runs and orders into `tally`, as the store counts them; each run
/// also under the origin `origin_of` gives it, when given.
pub fn replay_runs(
    rows: &ReportRows,
    tally: &mut Tally,
    origin_of: Option<&dyn Fn(&crate::store::RunRow) -> String>,
) {
    let runs = Replay {
        runs: true,
        orders: true,
        ..Replay::default()
    };
    rows.replay(tally, runs, origin_of);
}

/// The counters of the stored rows, as the store keeps them, summed into each of `periods`
/// (cut at `now`: what has not happened yet is left out): per period, [`ALL`] and each
/// origin `origin_of` gives a run (none when `None`).
pub fn figures_of_rows(
    rows: &ReportRows,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
    now: DateTime<Utc>,
    origin_of: Option<&dyn Fn(&crate::store::RunRow) -> String>,
) -> BTreeMap<(i64, String), Figures> {
    let mut tally = runs_tally(periods, now, origin_of.is_some());
    replay_runs(rows, &mut tally, origin_of);
    crate::tally::figures(&tally)
}

/// The stage report of `f` over `[from, to)`, from the stored rows as they stand at `now`.
pub fn funnel_report(
    f: &Funnel,
    rows: &ReportRows,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<FunnelReport, ReportError> {
    check_period(from, to)?;
    let fig = figures_of_rows(rows, &[(from, to)], now, None)
        .remove(&(0, ALL.to_string()))
        .unwrap_or_default();
    Ok(report_of(f, &fig, cohort, from, to))
}

/// The rows as they stood `window` after each run entered the funnel, for attribution and the
/// forecast (the other reports count a window in their tallies, `Tally::within`): later stage
/// entries, exits, purchases, milestones and emails are left out (a stage left later is still
/// there). Each is measured from its own run's entry — an order from the run it is credited
/// to ([`crate::tally::run_at`]) — as the counters of a conversion window measure it, so a
/// lead that entered again is judged by its second entry for what it did then.
pub fn windowed(rows: &ReportRows, window: chrono::Duration) -> ReportRows {
    let limit: HashMap<EnrollmentId, DateTime<Utc>> = rows
        .runs
        .iter()
        .map(|r| (r.enrollment, r.entered_at + window))
        .collect();
    let mut entries: HashMap<LeadId, Vec<DateTime<Utc>>> = HashMap::new();
    for r in &rows.runs {
        entries.entry(r.lead).or_default().push(r.entered_at);
    }
    let late = |run: &EnrollmentId, t: DateTime<Utc>| limit.get(run).is_none_or(|l| t > *l);
    ReportRows {
        runs: rows
            .runs
            .iter()
            .map(|r| match r.exited_at {
                Some(x) if late(&r.enrollment, x) => crate::store::RunRow {
                    status: RunStatus::Active,
                    exited_at: None,
                    ..r.clone()
                },
                _ => r.clone(),
            })
            .collect(),
        visits: rows
            .visits
            .iter()
            .filter(|v| !late(&v.enrollment, v.entered_at))
            .map(|v| match v.exited_at {
                Some(x) if late(&v.enrollment, x) => VisitRow {
                    exited_at: None,
                    reason: None,
                    next: None,
                    ..v.clone()
                },
                _ => v.clone(),
            })
            .collect(),
        purchases: rows
            .purchases
            .iter()
            .filter(|p| {
                entries.get(&p.lead).is_some_and(|e| {
                    crate::tally::run_at(e, |t| *t, p.at).is_some_and(|t| p.at <= *t + window)
                })
            })
            .cloned()
            .collect(),
        milestones: rows
            .milestones
            .iter()
            .filter(|m| !late(&m.enrollment, m.at))
            .cloned()
            .collect(),
        emails: rows
            .emails
            .iter()
            .filter(|e| e.enrollment.is_some_and(|r| !late(&r, e.created_at)))
            .cloned()
            .collect(),
        ..rows.clone()
    }
}

/// What a report can be sliced by: the lead's first touch, one of its fields, or the A/B
/// variant its run got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum SliceKey {
    Channel,
    Source,
    Medium,
    Campaign,
    Form,
    /// `field:NAME`: any lead field (`region`, `manager`, …), by its value now (from the rows).
    Field(String),
    /// `field:NAME` of a field the counters are kept by (`report_fields`): by its value when
    /// the run entered, which the run's origin holds ([`crate::tally::origin_with`]).
    Kept(String),
    /// The A/B variant a run got: the first email of a `split` step it was sent (which its
    /// origin keeps, [`crate::tally::with_variant`]).
    Variant,
}

impl SliceKey {
    /// `utm_source`, `utm_medium`, `utm_campaign`, `channel`, `form` or `field:NAME`.
    pub fn parse(text: &str) -> Result<SliceKey, String> {
        Ok(match text {
            "channel" => SliceKey::Channel,
            "utm_source" | "source" => SliceKey::Source,
            "utm_medium" | "medium" => SliceKey::Medium,
            "utm_campaign" | "campaign" => SliceKey::Campaign,
            "form" => SliceKey::Form,
            "variant" => SliceKey::Variant,
            other => match other.strip_prefix("field:") {
                Some(name) if crate::domain::FieldName::parse(name).is_ok() => {
                    SliceKey::Field(name.to_string())
                }
                _ => {
                    return Err(format!(
                        "cannot slice by \"{text}\": use utm_source, utm_medium, utm_campaign, channel, form, variant or field:NAME"
                    ));
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            SliceKey::Channel => "channel".into(),
            SliceKey::Source => "utm_source".into(),
            SliceKey::Medium => "utm_medium".into(),
            SliceKey::Campaign => "utm_campaign".into(),
            SliceKey::Form => "form".into(),
            SliceKey::Field(n) | SliceKey::Kept(n) => format!("field:{n}"),
            SliceKey::Variant => "variant".into(),
        }
    }

    /// Whether the slice is made from the rows: a lead field the counters are not kept by (the
    /// counters are kept per origin: the first touch, the kept fields and the A/B variant).
    /// Which of an origin's five parts ([`crate::tally::origin`]) the key is.
    fn touch_part(&self) -> Option<usize> {
        Some(match self {
            SliceKey::Channel => 0,
            SliceKey::Source => 1,
            SliceKey::Medium => 2,
            SliceKey::Campaign => 3,
            SliceKey::Form => 4,
            SliceKey::Field(_) | SliceKey::Kept(_) | SliceKey::Variant => return None,
        })
    }

    pub fn from_rows(&self) -> bool {
        matches!(self, SliceKey::Field(_))
    }

    /// The key as the counters kept by the lead fields `kept` answer it: `field:NAME` of one
    /// of them becomes [`SliceKey::Kept`].
    pub fn kept_by(self, kept: &[String]) -> SliceKey {
        match self {
            SliceKey::Field(n) if kept.contains(&n) => SliceKey::Kept(n),
            k => k,
        }
    }
}

impl From<SliceKey> for String {
    fn from(k: SliceKey) -> String {
        k.name()
    }
}

/// One slice of a report: the leads whose key has this value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slice {
    pub key: SliceKey,
    /// The value; `(none)` for leads without one.
    pub value: String,
    pub report: FunnelReport,
}

/// The origin given, in a slice by a field, to the runs whose lead has no value for it.
const NO_VALUE: &str = "\u{0}";

/// The value of a slice key for a run of this origin; `None` for none.
fn origin_value(key: &SliceKey, origin: &str) -> Option<String> {
    match key {
        SliceKey::Field(_) => (origin != NO_VALUE).then(|| origin.to_string()),
        SliceKey::Kept(name) => crate::tally::origin_field(origin, name),
        SliceKey::Variant => crate::tally::origin_variant(origin),
        k => crate::tally::origin_parts(origin)[k.touch_part()?].take(),
    }
}

/// What of the runs' origins slices by `keys` read; none when none reads an origin (a lead
/// field's value now comes from the rows).
pub fn apart(keys: &[SliceKey]) -> Option<crate::tally::Apart> {
    let mut out = crate::tally::Apart::default();
    for k in keys {
        if let Some(i) = k.touch_part() {
            out.touch[i] = true;
        }
        match k {
            SliceKey::Kept(name) => out.fields.get_or_insert_default().push(name.clone()),
            SliceKey::Variant => out.variant = true,
            _ => {}
        }
    }
    keys.iter().any(|k| !k.from_rows()).then_some(out)
}

/// Why a field cannot be sliced by: no lead of the funnel has it.
pub fn check_field(rows: &ReportRows, key: &SliceKey) -> Result<(), ReportError> {
    check_field_in(!rows.runs.is_empty(), &field_names(rows), key)
}

/// The names of the fields the rows' leads have.
pub fn field_names(rows: &ReportRows) -> BTreeSet<String> {
    rows.fields
        .iter()
        .flat_map(|(_, f)| f.keys())
        .cloned()
        .collect()
}

/// [`check_field`] given whether the funnel has runs and the fields its leads have.
pub fn check_field_in(
    any_runs: bool,
    known: &BTreeSet<String>,
    key: &SliceKey,
) -> Result<(), ReportError> {
    if let SliceKey::Field(name) = key
        && any_runs
        && !known.contains(name)
    {
        return Err(ReportError::UnknownField {
            field: name.clone(),
            known: known.iter().cloned().collect(),
        });
    }
    Ok(())
}

/// The figures per origin (as [`figures_of_rows`] or the store's counters give them) of one
/// period, grouped by the value of `key`, as reports: largest group first, leads without a
/// value last as `(none)`. For a field, the origins are the field's values.
pub fn slices_of(
    f: &Funnel,
    by_origin: &BTreeMap<String, Figures>,
    key: &SliceKey,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Slice> {
    const NONE: &str = "(none)";
    let mut groups: BTreeMap<String, Figures> = BTreeMap::new();
    for (origin, fig) in by_origin.iter().filter(|(o, _)| o.as_str() != ALL) {
        let value = origin_value(key, origin).unwrap_or_else(|| NONE.to_string());
        groups.entry(value).or_default().merge(fig);
    }
    let mut out: Vec<Slice> = groups
        .into_iter()
        .map(|(value, fig)| Slice {
            key: key.clone(),
            value,
            report: report_of(f, &fig, cohort, from, to),
        })
        .filter(|s| s.report.entered > 0 || s.report.stages.iter().any(|st| st.leads_in > 0))
        .collect();
    out.sort_by(|a, b| {
        (
            a.value == NONE,
            std::cmp::Reverse(a.report.entered),
            &a.value,
        )
            .cmp(&(
                b.value == NONE,
                std::cmp::Reverse(b.report.entered),
                &b.value,
            ))
    });
    out
}

/// The report of each group of leads sharing a value of `key`, from the stored rows.
pub fn sliced_reports(
    f: &Funnel,
    rows: &ReportRows,
    key: &SliceKey,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Slice>, ReportError> {
    check_period(from, to)?;
    check_field(rows, key)?;
    let by_origin = origin_figures(rows, key, &[(from, to)], now)
        .into_iter()
        .map(|((_, o), fig)| (o, fig))
        .collect();
    Ok(slices_of(f, &by_origin, key, cohort, from, to))
}

/// [`figures_of_rows`] with the origins a slice by `key` groups: the runs' own (the first
/// touches, the kept fields, the A/B variant), or the values of a lead field now.
pub fn origin_figures(
    rows: &ReportRows,
    key: &SliceKey,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> BTreeMap<(i64, String), Figures> {
    let mut tally = runs_tally(periods, now, true);
    replay_by(rows, key, &mut tally);
    crate::tally::figures(&tally)
}

/// Counts the rows' runs and orders into `tally` (made with origins), each run under the
/// origin a slice by `key` groups it by.
pub fn replay_by(rows: &ReportRows, key: &SliceKey, tally: &mut Tally) {
    match key {
        SliceKey::Field(name) => {
            let values: rustc_hash::FxHashMap<LeadId, String> = rows
                .fields
                .iter()
                .filter_map(|(l, fs)| Some((*l, crate::tally::field_value(fs, name)?)))
                .collect();
            let of = |r: &crate::store::RunRow| {
                values
                    .get(&r.lead)
                    .cloned()
                    .unwrap_or_else(|| NO_VALUE.to_string())
            };
            replay_runs(rows, tally, Some(&of))
        }
        _ => replay_runs(rows, tally, Some(&|r| r.origin.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_spreads() {
        assert_eq!(Rate::of(215, 520).percent, Some(41.3));
        assert_eq!(Rate::of(0, 0).percent, None);
        let s = Spread::of(vec![5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!((s.p50_seconds, s.p90_seconds), (Some(5), Some(9)));
        assert_eq!(Spread::of(vec![]).p50_seconds, None);
    }

    #[test]
    fn slice_keys() {
        assert_eq!(SliceKey::parse("utm_source").unwrap(), SliceKey::Source);
        assert_eq!(
            SliceKey::parse("field:region").unwrap(),
            SliceKey::Field("region".into())
        );
        assert!(
            SliceKey::parse("field:Bad Name")
                .unwrap_err()
                .contains("cannot slice by")
        );
        assert!(SliceKey::parse("colour").is_err());
    }
}
