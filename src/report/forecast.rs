//! What-if: leads per stage, conversions and revenue over the next days, projected from the
//! funnel's observed stage conversions, times in stage and inflow, with an 80% interval; and
//! the same under changed conversions (`tripwire=+20%`), side by side.
//!
//! The projection follows the observed moves between stages in the funnel's order (a move back
//! to an earlier stage is left out): a lead arriving on day `a` reaches a stage at `a` plus the
//! median times in the stages before it, with the product of the rates along the way. The
//! leads already in the funnel go on from the stage they are in, after what is left of its
//! median time. Times in stage are Kaplan–Meier medians: a visit not ended yet is censored,
//! not left out (which would bias them low). The observed inflow is per day of the funnel's
//! life when it is younger than the days observed. The
//! interval is Monte Carlo: each draw takes every stage's rates from a Dirichlet over its
//! observed counts, each offer's order rate from a Beta, and the inflow from a Poisson around
//! the observed rate (a given `--inflow` is taken as exact); the 10th and 90th percentiles of
//! 2,000 draws (a fixed seed, so the same data gives the same interval). A rate observed as 0 or
//! 1 has no spread, so with such inputs and a given inflow the interval is the projection.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Beta, Distribution, Gamma, Poisson};
use serde::Serialize;

use super::{Cohort, ReportError};
use crate::funnel::Funnel;
use crate::store::{LiveRow, Observations, ReportRows};
use crate::tally::{Tally, View, metric};

/// Draws behind each interval.
pub const DRAWS: usize = 2000;

/// How a stage's conversion is changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// `+20%`: the stage's conversions (moves on, `converted` exits, orders) × 1.2.
    Relative(f64),
    /// `35%`: the stage's conversion to the next stages set to 35%.
    Absolute(f64),
}

/// A change of the scenario: `{"stage": "tripwire", "relative": 1.2}` or `{"stage": "main",
/// "absolute": 0.35}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageChange {
    pub stage: String,
    #[serde(flatten)]
    pub change: Change,
}

/// What to project: how far, from what inflow, with which changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scenario {
    pub days: i64,
    /// Leads entering per day; `None` takes the observed rate.
    pub inflow: Option<f64>,
    pub changes: Vec<(String, Change)>,
    /// Days of history the rates are read from.
    pub observe_days: i64,
}

fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

impl Scenario {
    /// `days` (default 30), `inflow` (`200/day`, `1400/week`, `6000/month`, or a number per
    /// day), `set` (`STAGE=+20%`, `STAGE=-10%`, `STAGE=35%`), `observe` (days of history,
    /// default 90). An error names the parameter.
    pub fn parse(
        days: Option<&str>,
        inflow: Option<&str>,
        set: &[String],
        observe: Option<&str>,
    ) -> Result<Scenario, (&'static str, String)> {
        let whole = |param: &'static str, text: Option<&str>, default: i64, max: i64| match text {
            None => Ok(default),
            Some(t) => {
                let t = t.trim();
                match t.strip_suffix('d').unwrap_or(t).parse::<i64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err((param, format!("a whole number of days from 1 to {max}"))),
                }
            }
        };
        let days = whole("days", days, 30, 366)?;
        let observe_days = whole("observe", observe, 90, 3660)?;
        let inflow = match inflow {
            None => None,
            Some(t) => {
                let (n, per) = t.split_once('/').unwrap_or((t, "day"));
                let per = match per.trim() {
                    "day" | "d" => 1.0,
                    "week" | "w" => 7.0,
                    "month" | "m" => 30.0,
                    _ => f64::NAN,
                };
                match number(n) {
                    Some(n) if (0.0..=1e7).contains(&n) && per.is_finite() => Some(n / per),
                    _ => {
                        return Err((
                            "inflow",
                            "leads per day, week or month, like 200/day or 1400/week".into(),
                        ));
                    }
                }
            }
        };
        let mut changes = Vec::new();
        for s in set {
            let bad = || {
                (
                    "set",
                    format!("\"{s}\": write STAGE=+20%, STAGE=-10% or STAGE=35%"),
                )
            };
            let (stage, change) = s.split_once('=').ok_or_else(bad)?;
            let pct = change.trim().strip_suffix('%').ok_or_else(bad)?;
            let relative = pct.starts_with(['+', '-']);
            let v = number(pct).ok_or_else(bad)?;
            let change = if relative {
                if v <= -100.0 || v > 10_000.0 {
                    return Err(("set", format!("\"{s}\": a change from -99% to +10000%")));
                }
                Change::Relative(1.0 + v / 100.0)
            } else {
                if !(0.0..=100.0).contains(&v) {
                    return Err(("set", format!("\"{s}\": a conversion from 0% to 100%")));
                }
                Change::Absolute(v / 100.0)
            };
            changes.push((stage.trim().to_string(), change));
        }
        Ok(Scenario {
            days,
            inflow,
            changes,
            observe_days,
        })
    }
}

/// A projected figure: the projection from the observed rates, and the 80% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub expected: f64,
    pub low: f64,
    pub high: f64,
}

/// The baseline and the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pair<T> {
    pub baseline: T,
    pub scenario: T,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageForecast {
    pub stage: String,
    pub kind: Option<&'static str>,
    /// Leads observed in the stage.
    pub observed_leads: u64,
    /// Leads in the stage now, of any entry date: projected on from where they stand.
    pub in_flight: u64,
    /// The median days in the stage (Kaplan–Meier over the observed visits, those not ended
    /// yet censored; when more than half are still going, the longest seen so far).
    pub days_in_stage: f64,
    /// Per cent of the stage's leads that moved on to a later stage or exited `converted`.
    pub conversion: Pair<Option<f64>>,
    /// Median days from funnel entry to reaching the stage.
    pub reached_after_days: f64,
    pub leads: Pair<Estimate>,
    pub orders: Pair<Estimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevenueForecast {
    pub currency: String,
    pub revenue: Pair<Estimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastReport {
    pub funnel: String,
    pub name: String,
    /// The time zone its days are shown in.
    pub tz: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub days: i64,
    /// The period the rates were read from (entry cohort).
    pub observed_from: DateTime<Utc>,
    pub observed_to: DateTime<Utc>,
    pub observed_entered: u64,
    pub inflow_per_day: f64,
    /// `given` or `observed`.
    pub inflow_source: &'static str,
    pub changes: Vec<StageChange>,
    pub stages: Vec<StageForecast>,
    /// Runs exiting `converted`.
    pub conversions: Pair<Estimate>,
    pub revenue: Vec<RevenueForecast>,
    pub method: &'static str,
}

const METHOD: &str = "projection from the observed stage conversions, median times in stage and \
inflow, for the leads to come and for those in flight from where they stand; median time in \
stage by Kaplan-Meier (visits not ended yet are censored); observed inflow over the days \
observed, or over the funnel's age when it is younger; 80% interval: 10th to 90th percentile \
of 2,000 Monte Carlo draws (stage rates from a Dirichlet over their counts, order rates from a \
Beta, observed inflow as Poisson)";

/// A stage as observed: its leads, where they went (forward only), and its orders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub leads: f64,
    /// (stage index, leads) moved on to a later stage.
    pub moves: Vec<(usize, f64)>,
    /// Exited `converted`.
    pub converted: f64,
    /// Orders of the stage's offer, at most one per lead.
    pub orders: f64,
    /// Average check per currency, and each currency's share of the orders.
    pub checks: Vec<(String, f64, f64)>,
    /// Median days in the stage (Kaplan–Meier: visits not ended yet count as censored).
    pub days_in: f64,
    /// Leads in the stage now (of any entry date), and the mean days they have been there.
    pub in_flight: f64,
    pub in_flight_days: f64,
}

/// The rates of one draw (or the observed point), with the scenario's changes applied.
#[derive(Debug, Clone)]
struct Rates {
    moves: Vec<Vec<(usize, f64)>>,
    converted: Vec<f64>,
    orders: Vec<f64>,
}

/// Figures of one projection: leads and orders per stage, conversions, revenue per currency.
#[derive(Debug, Clone, PartialEq)]
pub struct Projected {
    pub leads: Vec<f64>,
    pub orders: Vec<f64>,
    pub conversions: f64,
    pub revenue: BTreeMap<String, f64>,
    /// Days from entry to reaching each stage.
    pub reached: Vec<f64>,
}

fn point(st: &[Observed]) -> Rates {
    let share = |x: f64, n: f64| if n > 0.0 { (x / n).min(1.0) } else { 0.0 };
    Rates {
        moves: st
            .iter()
            .map(|s| {
                s.moves
                    .iter()
                    .map(|(j, x)| (*j, share(*x, s.leads)))
                    .collect()
            })
            .collect(),
        converted: st.iter().map(|s| share(s.converted, s.leads)).collect(),
        orders: st.iter().map(|s| share(s.orders, s.leads)).collect(),
    }
}

fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
    if shape <= 0.0 {
        return 0.0;
    }
    Gamma::new(shape, 1.0).map_or(shape, |g| g.sample(rng))
}

fn beta(rng: &mut StdRng, x: f64, n: f64) -> f64 {
    if n <= 0.0 || x <= 0.0 {
        return 0.0;
    }
    if x >= n {
        return 1.0;
    }
    Beta::new(x, n - x).map_or(x / n, |b| b.sample(rng))
}

fn draw(st: &[Observed], rng: &mut StdRng) -> Rates {
    let mut r = Rates {
        moves: Vec::with_capacity(st.len()),
        converted: Vec::with_capacity(st.len()),
        orders: Vec::with_capacity(st.len()),
    };
    for s in st {
        // A Dirichlet over (each move, converted, the rest) from the observed counts.
        let taken: f64 = s.moves.iter().map(|(_, x)| x).sum::<f64>() + s.converted;
        let moves: Vec<(usize, f64)> = s.moves.iter().map(|(j, x)| (*j, gamma(rng, *x))).collect();
        let conv = gamma(rng, s.converted);
        let rest = gamma(rng, (s.leads - taken).max(0.0));
        let total = moves.iter().map(|(_, g)| g).sum::<f64>() + conv + rest;
        let norm = |g: f64| if total > 0.0 { g / total } else { 0.0 };
        r.moves
            .push(moves.into_iter().map(|(j, g)| (j, norm(g))).collect());
        r.converted.push(norm(conv));
        r.orders.push(beta(rng, s.orders, s.leads));
    }
    r
}

/// Applies the scenario's changes: the changed stage's good outcomes scaled, never past 100%.
fn change(r: &mut Rates, changes: &[(usize, Change)]) {
    for (i, c) in changes {
        let i = *i;
        let forward: f64 = r.moves[i].iter().map(|(_, p)| p).sum();
        let factor = match *c {
            Change::Relative(f) => f,
            Change::Absolute(target) if forward > 0.0 => target / forward,
            Change::Absolute(target) => {
                // Nothing moved on yet: the target goes to the next stage in order.
                r.moves[i] = vec![(i + 1, target)];
                1.0
            }
        };
        for m in &mut r.moves[i] {
            m.1 *= factor;
        }
        r.converted[i] *= factor;
        r.orders[i] = (r.orders[i] * factor).min(1.0);
        let good: f64 = r.moves[i].iter().map(|(_, p)| p).sum::<f64>() + r.converted[i];
        if good > 1.0 {
            for m in &mut r.moves[i] {
                m.1 /= good;
            }
            r.converted[i] /= good;
        }
    }
}

/// Where `arrivals` leads, spread evenly over `days`, stand at the end under `rates`.
fn project(st: &[Observed], rates: &Rates, arrivals: f64, days: f64) -> Projected {
    let n = st.len();
    let mut reach = vec![0.0; n];
    let mut delay_sum = vec![0.0; n];
    let mut reached = vec![0.0; n];
    if n > 0 {
        reach[0] = 1.0;
    }
    for i in 0..n {
        if i > 0 && reach[i] > 0.0 {
            reached[i] = delay_sum[i] / reach[i];
        }
        for (j, p) in &rates.moves[i] {
            if *j > i && *j < n {
                reach[*j] += reach[i] * p;
                delay_sum[*j] += reach[i] * p * (reached[i] + st[i].days_in);
            }
        }
    }
    // The share of the arrivals that has had `after` days to get somewhere by the end.
    let within = |after: f64| {
        if days > 0.0 {
            ((days - after) / days).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let mut out = Projected {
        leads: vec![0.0; n],
        orders: vec![0.0; n],
        conversions: 0.0,
        revenue: BTreeMap::new(),
        reached: reached.clone(),
    };
    for i in 0..n {
        out.leads[i] = arrivals * reach[i] * within(reached[i]);
        let done = arrivals * reach[i] * within(reached[i] + st[i].days_in);
        out.conversions += done * rates.converted[i];
        out.orders[i] = done * rates.orders[i];
    }
    // The leads in flight, from where they stand: each stage's leads finish it after what is
    // left of its median time, then go on as new arrivals there would.
    for s in 0..n {
        let here = st[s].in_flight;
        if here <= 0.0 {
            continue;
        }
        let mut share = vec![0.0; n];
        let mut at = vec![0.0; n];
        share[s] = 1.0;
        for i in s..n {
            let left = if i == s {
                (st[i].days_in - st[i].in_flight_days).max(0.0)
            } else {
                st[i].days_in
            };
            if share[i] <= 0.0 {
                continue;
            }
            if i > s {
                at[i] /= share[i];
                if at[i] <= days {
                    out.leads[i] += here * share[i];
                }
            }
            if at[i] + left <= days {
                let done = here * share[i];
                out.conversions += done * rates.converted[i];
                out.orders[i] += done * rates.orders[i];
            }
            for (j, p) in &rates.moves[i] {
                if *j > i && *j < n {
                    share[*j] += share[i] * p;
                    at[*j] += share[i] * p * (at[i] + left);
                }
            }
        }
    }
    for (stage, orders) in st.iter().zip(&out.orders) {
        for (currency, check, part) in &stage.checks {
            *out.revenue.entry(currency.clone()).or_default() += orders * part * check;
        }
    }
    out
}

/// The median of durations some of which are censored (`(days, ended, how many)`; a visit not
/// ended yet is known only to last at least that long): the Kaplan–Meier estimate, the first
/// duration at which the estimated share still going falls to a half or below. `None` when it
/// never does (most visits are still going): the median is not known yet.
pub fn km_median(mut durations: Vec<(f64, bool, u64)>) -> Option<f64> {
    // Ends before censorings at the same time, as the estimator takes them.
    durations.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut at_risk: f64 = durations.iter().map(|d| d.2 as f64).sum();
    let mut surviving = 1.0;
    let mut i = 0;
    while i < durations.len() {
        let t = durations[i].0;
        let (mut ended, mut gone) = (0.0, 0.0);
        while i < durations.len() && durations[i].0 == t {
            let n = durations[i].2 as f64;
            if durations[i].1 {
                ended += n;
            }
            gone += n;
            i += 1;
        }
        if ended > 0.0 && at_risk > 0.0 {
            surviving *= 1.0 - ended / at_risk;
            if surviving <= 0.5 {
                return Some(t);
            }
        }
        at_risk -= gone;
    }
    None
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[rank]
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// The projection and its interval, for the baseline and the scenario: pure, seeded.
pub fn simulate(
    st: &[Observed],
    changes: &[(usize, Change)],
    inflow: f64,
    inflow_given: bool,
    observed_days: f64,
    days: f64,
) -> (Pair<Projected>, Pair<Vec<Projected>>) {
    let base = point(st);
    let mut scen = base.clone();
    change(&mut scen, changes);
    let arrivals = inflow * days;
    let expected = Pair {
        baseline: project(st, &base, arrivals, days),
        scenario: project(st, &scen, arrivals, days),
    };
    let mut rng = StdRng::seed_from_u64(0x5eed_f0ca);
    let (mut b, mut s) = (Vec::with_capacity(DRAWS), Vec::with_capacity(DRAWS));
    for _ in 0..DRAWS {
        let arrivals = if inflow_given || arrivals <= 0.0 {
            arrivals
        } else {
            // The observed rate is uncertain (Gamma over the entries seen), the month's
            // arrivals Poisson around it.
            let rate = gamma(&mut rng, inflow * observed_days) / observed_days.max(1.0);
            Poisson::new(rate * days).map_or(rate * days, |p| p.sample(&mut rng))
        };
        let r = draw(st, &mut rng);
        let mut rs = r.clone();
        change(&mut rs, changes);
        b.push(project(st, &r, arrivals, days));
        s.push(project(st, &rs, arrivals, days));
    }
    (
        expected,
        Pair {
            baseline: b,
            scenario: s,
        },
    )
}

fn estimate(
    expected: f64,
    draws: &[Projected],
    f: impl Fn(&Projected) -> f64,
    places: i32,
) -> Estimate {
    let v: Vec<f64> = draws.iter().map(f).collect();
    Estimate {
        expected: round(expected, places),
        low: round(percentile(v.clone(), 0.1).min(expected), places),
        high: round(percentile(v, 0.9).max(expected), places),
    }
}

/// The start of the days a forecast observes: midnight (in `tz`) of the day `observe_days`
/// before `now`, so whole days are observed and the store's counters can answer.
pub fn observed_from(sc: &Scenario, now: DateTime<Utc>, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let day = (now - Duration::days(sc.observe_days))
        .with_timezone(&tz)
        .date_naive();
    super::midnight_in(day, tz)
}

/// The forecast counted from rows one range of leads at a time: the observed cohort's runs
/// counted as the store counts them, the runs in a stage now, and the first entry — all of
/// them a run's own, or sums. The same [`Observations`] as the store's counters give.
#[derive(Debug, Clone)]
pub struct ForecastFold {
    observed_from: DateTime<Utc>,
    now: DateTime<Utc>,
    tally: Tally,
    live: Vec<LiveRow>,
    first: Option<DateTime<Utc>>,
}

fn days_of(d: Duration) -> f64 {
    d.num_seconds().max(0) as f64 / 86_400.0
}

impl ForecastFold {
    pub fn new(
        sc: &Scenario,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Result<ForecastFold, ReportError> {
        let observed_from = observed_from(sc, now, tz);
        super::check_period(observed_from, now)?;
        Ok(ForecastFold {
            observed_from,
            now,
            tally: super::runs_tally(&[(observed_from, now)], now, false),
            live: Vec::new(),
            first: None,
        })
    }

    /// Counts one range of leads' rows.
    pub fn add(&mut self, rows: &ReportRows) {
        let now = self.now;
        super::replay_runs(rows, &mut self.tally, None);
        let active: std::collections::HashMap<crate::domain::EnrollmentId, DateTime<Utc>> = rows
            .runs
            .iter()
            .filter(|run| run.status == crate::domain::RunStatus::Active)
            .map(|run| (run.enrollment, run.entered_at))
            .collect();
        for v in &rows.visits {
            if v.entered_at <= now
                && v.exited_at.is_none_or(|x| x > now)
                && let Some(entered_at) = active.get(&v.enrollment)
            {
                self.live.push(LiveRow {
                    stage: v.stage.to_string(),
                    since: v.entered_at,
                    entered_at: *entered_at,
                });
            }
        }
        if let Some(first) = rows.runs.iter().map(|run| run.entered_at).min() {
            self.first = Some(self.first.map_or(first, |f| f.min(first)));
        }
    }

    /// The forecast of every range counted.
    pub fn finish(self, f: &Funnel, sc: &Scenario) -> Result<ForecastReport, ReportError> {
        let figures = crate::tally::figures(&self.tally)
            .remove(&(0, crate::tally::ALL.to_string()))
            .unwrap_or_default();
        let seen = Observations {
            figures,
            live: self.live,
            first: self.first,
        };
        forecast_of(f, sc, self.observed_from, self.now, &seen)
    }
}

/// The forecast of `f` at `now` from what was observed since `observed_from` (its rows'
/// [`ForecastFold`] or the store's counters). Times in stage: Kaplan–Meier over the observed
/// cohort's visits, the ended ones as their counters keep them (quantized) and those still
/// going censored at the same grid.
pub fn forecast_of(
    f: &Funnel,
    sc: &Scenario,
    observed_from: DateTime<Utc>,
    now: DateTime<Utc>,
    seen: &Observations,
) -> Result<ForecastReport, ReportError> {
    let r = super::report_of(f, &seen.figures, Cohort::Entry, observed_from, now);
    // Per stage: the runs there now and the days they have been there in all; the cohort's
    // visits still going, by quantized seconds.
    let mut flight: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut going: BTreeMap<(&str, i64), u64> = BTreeMap::new();
    for l in &seen.live {
        let fl = flight.entry(l.stage.as_str()).or_default();
        fl.0 += 1.0;
        fl.1 += days_of(now - l.since);
        if l.entered_at >= observed_from && l.entered_at < now {
            let secs = crate::tally::quantize((now - l.since).num_seconds());
            *going.entry((l.stage.as_str(), secs)).or_default() += 1;
        }
    }
    let index: BTreeMap<&str, usize> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.stage.as_str(), i))
        .collect();
    let mut changes = Vec::new();
    for (stage, c) in &sc.changes {
        let i = *index
            .get(stage.as_str())
            .ok_or_else(|| ReportError::UnknownStage {
                stage: stage.clone(),
                known: r.stages.iter().map(|s| s.stage.clone()).collect(),
            })?;
        changes.push((i, *c));
    }
    let st: Vec<Observed> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let orders: u64 = s.revenue.iter().map(|m| m.orders).sum();
            let (in_flight, total_days) = flight.get(s.stage.as_str()).copied().unwrap_or_default();
            Observed {
                leads: s.leads_in as f64,
                moves: s
                    .moved_on
                    .iter()
                    .filter_map(|(to, n)| index.get(to.as_str()).map(|j| (*j, *n as f64)))
                    .filter(|(j, _)| *j > i)
                    .collect(),
                converted: s.exited.get("converted").copied().unwrap_or(0) as f64,
                orders: orders.min(s.leads_in) as f64,
                checks: s
                    .revenue
                    .iter()
                    .map(|m| {
                        (
                            m.currency.clone(),
                            m.average,
                            m.orders as f64 / orders as f64,
                        )
                    })
                    .collect(),
                // Not known yet when more than half the visits are still going: the
                // longest seen so far, ended or not, a lower bound.
                days_in: {
                    let day = |secs: i64| secs as f64 / 86_400.0;
                    let mut visits: Vec<(f64, bool, u64)> = seen
                        .figures
                        .histogram(View::Entry, &s.stage, metric::TIME)
                        .into_iter()
                        .map(|(secs, n)| (day(secs), true, n))
                        .collect();
                    visits.extend(
                        going
                            .range((s.stage.as_str(), i64::MIN)..=(s.stage.as_str(), i64::MAX))
                            .map(|((_, secs), n)| (day(*secs), false, *n)),
                    );
                    let longest = visits.iter().map(|v| v.0).fold(0.0, f64::max);
                    km_median(visits).unwrap_or(longest)
                },
                in_flight,
                in_flight_days: if in_flight > 0.0 {
                    total_days / in_flight
                } else {
                    0.0
                },
            }
        })
        .collect();
    // The inflow over the days observed — or over the funnel's age, when it is younger.
    let age = seen.first.map_or(0.0, |first| days_of(now - first));
    let observed_days = days_of(now - observed_from).min(age.max(1.0));
    let (inflow, given) = match sc.inflow {
        Some(n) => (n, true),
        None => (r.entered as f64 / observed_days, false),
    };
    let days = sc.days as f64;
    let (exp, draws) = simulate(&st, &changes, inflow, given, observed_days, days);
    let pair = |f: &dyn Fn(&Projected) -> f64, places| Pair {
        baseline: estimate(f(&exp.baseline), &draws.baseline, f, places),
        scenario: estimate(f(&exp.scenario), &draws.scenario, f, places),
    };
    let scen = {
        let mut s = point(&st);
        change(&mut s, &changes);
        s
    };
    let base = point(&st);
    let stages = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let forward = |rt: &Rates| {
                (st[i].leads > 0.0 || changes.iter().any(|(c, _)| *c == i)).then(|| {
                    let forward: f64 = rt.moves[i].iter().map(|(_, p)| p).sum();
                    round((forward + rt.converted[i]) * 100.0, 1) + 0.0
                })
            };
            StageForecast {
                stage: s.stage.clone(),
                kind: s.kind,
                observed_leads: s.leads_in,
                in_flight: st[i].in_flight as u64,
                days_in_stage: round(st[i].days_in, 2),
                conversion: Pair {
                    baseline: forward(&base),
                    scenario: forward(&scen),
                },
                reached_after_days: round(exp.baseline.reached[i], 1),
                leads: pair(&|p: &Projected| p.leads[i], 1),
                orders: pair(&|p: &Projected| p.orders[i], 1),
            }
        })
        .collect();
    let currencies: Vec<String> = exp.baseline.revenue.keys().cloned().collect();
    let revenue = currencies
        .into_iter()
        .map(|c| {
            let key = c.clone();
            RevenueForecast {
                currency: c,
                revenue: pair(
                    &move |p: &Projected| p.revenue.get(&key).copied().unwrap_or(0.0),
                    2,
                ),
            }
        })
        .collect();
    Ok(ForecastReport {
        funnel: r.funnel,
        name: r.name,
        tz: r.tz,
        from: now,
        to: now + Duration::days(sc.days),
        days: sc.days,
        observed_from,
        observed_to: now,
        observed_entered: r.entered,
        inflow_per_day: round(inflow, 2),
        inflow_source: if given { "given" } else { "observed" },
        changes: sc
            .changes
            .iter()
            .map(|(stage, change)| StageChange {
                stage: stage.clone(),
                change: *change,
            })
            .collect(),
        stages,
        conversions: pair(&|p: &Projected| p.conversions, 1),
        revenue,
        method: METHOD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage of 50 observed leads whose orders are checks of 49 EUR.
    fn stage(moves: Vec<(usize, f64)>, converted: f64, orders: f64, days_in: f64) -> Observed {
        Observed {
            leads: 50.0,
            moves,
            converted,
            orders,
            checks: if orders > 0.0 {
                vec![("EUR".into(), 49.0, 1.0)]
            } else {
                vec![]
            },
            days_in,
            ..Observed::default()
        }
    }

    /// A three-stage chain where every rate was observed as 0 or 1 and the inflow is given:
    /// no spread, so the interval is the projection, which is worked out by hand. 100 leads a
    /// day for 30 days; stage 0 holds a lead 2 days and all move on; stage 1 holds 3 days, all
    /// buy (49 a check) and move on; stage 2 holds 5 days and all exit converted. Reaching
    /// stage 1 takes 2 days, so 3,000 × 28/30 = 2,800 are there; stage 2 takes 5 days: 2,500;
    /// orders count at the end of stage 1 (5 days): 2,500 × 49 = 122,500; conversions at the
    /// end of stage 2 (10 days): 2,000.
    #[test]
    fn zero_variance_inputs_give_the_projection_exactly() {
        let st = vec![
            stage(vec![(1, 50.0)], 0.0, 0.0, 2.0),
            stage(vec![(2, 50.0)], 0.0, 50.0, 3.0),
            stage(vec![], 50.0, 0.0, 5.0),
        ];
        let (exp, draws) = simulate(&st, &[], 100.0, true, 90.0, 30.0);
        let e = &exp.baseline;
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&e.leads, &[3000.0, 2800.0, 2500.0]), "{:?}", e.leads);
        assert!(close(&e.orders, &[0.0, 2500.0, 0.0]), "{:?}", e.orders);
        assert!(close(&[e.conversions], &[2000.0]));
        assert!(close(&[e.revenue["EUR"]], &[122_500.0]));
        for d in draws.baseline.iter().chain(&draws.scenario) {
            assert_eq!(d, e);
        }
    }

    /// Leads in flight go on from where they stand: with no new leads (inflow 0), 10 leads
    /// one day into stage 1 (3 days, all buy at 49 and move on) finish it 2 days from now,
    /// reach stage 2 then and exit converted 5 days later, within the 30 days; 4 leads in
    /// stage 2 for 6 days (more than its median) finish at once.
    #[test]
    fn leads_in_flight_go_on_from_where_they_stand() {
        let mut st = vec![
            stage(vec![(1, 50.0)], 0.0, 0.0, 2.0),
            stage(vec![(2, 50.0)], 0.0, 50.0, 3.0),
            stage(vec![], 50.0, 0.0, 5.0),
        ];
        st[1].in_flight = 10.0;
        st[1].in_flight_days = 1.0;
        st[2].in_flight = 4.0;
        st[2].in_flight_days = 6.0;
        let (exp, _) = simulate(&st, &[], 0.0, true, 90.0, 30.0);
        let e = &exp.baseline;
        assert_eq!(e.leads, [0.0, 0.0, 10.0], "the 10 reach stage 2");
        assert_eq!(e.orders, [0.0, 10.0, 0.0]);
        assert_eq!(e.conversions, 14.0);
        assert_eq!(e.revenue["EUR"], 490.0);
        // Over 4 days the 10 reach stage 2 (day 2) but do not finish it (day 7).
        let (short, _) = simulate(&st, &[], 0.0, true, 90.0, 4.0);
        assert_eq!(short.baseline.leads[2], 10.0);
        assert_eq!(short.baseline.conversions, 4.0);
    }

    /// Kaplan–Meier against the median of the finished visits: two of five visits ended (after
    /// 1 and 2 days), three still going after 10; the finished ones' median (1.5 days) is far
    /// too low, and the estimate says the median is not known yet. With the ends and
    /// censorings of the textbook case it is the duration where the share still going first
    /// falls to a half.
    #[test]
    fn times_in_stage_count_the_visits_still_going() {
        let going = vec![(1.0, true, 1), (2.0, true, 1), (10.0, false, 3)];
        assert_eq!(km_median(going), None);
        // 1 ends (0.75 left), 2 ends (0.75 × 2/3 = 0.5): the median is 2.
        let some = vec![
            (1.0, true, 1),
            (2.0, true, 1),
            (3.0, false, 1),
            (4.0, true, 1),
        ];
        assert_eq!(km_median(some), Some(2.0));
        // A censoring at 1 leaves 3 at risk; 2 ends (2/3), 3 ends (1/3): the median is 3.
        let censored = vec![
            (1.0, false, 1),
            (2.0, true, 1),
            (3.0, true, 1),
            (4.0, true, 1),
        ];
        assert_eq!(km_median(censored), Some(3.0));
        assert_eq!(km_median(Vec::new()), None);
    }

    /// Half of stage 0 moves on; `+20%` makes it 60%, `90%` makes it 90%; the interval holds
    /// the projection and has spread.
    #[test]
    fn a_changed_conversion_moves_the_scenario_only() {
        let st = vec![
            Observed {
                leads: 200.0,
                moves: vec![(1, 100.0)],
                days_in: 1.0,
                ..Observed::default()
            },
            Observed {
                leads: 100.0,
                converted: 30.0,
                ..Observed::default()
            },
        ];
        let (exp, draws) = simulate(&st, &[(0, Change::Relative(1.2))], 10.0, false, 90.0, 31.0);
        assert_eq!(exp.baseline.leads[1], 10.0 * 30.0 * 0.5);
        assert!((exp.scenario.leads[1] - 10.0 * 30.0 * 0.6).abs() < 1e-9);
        let e = estimate(exp.baseline.leads[1], &draws.baseline, |p| p.leads[1], 1);
        assert!(e.low < e.expected && e.expected < e.high, "{e:?}");
        let (abs, _) = simulate(&st, &[(0, Change::Absolute(0.9))], 10.0, true, 90.0, 31.0);
        assert!((abs.scenario.leads[1] - 10.0 * 30.0 * 0.9).abs() < 1e-9);
    }

    #[test]
    fn scenarios_read_like_people_write_them() {
        let s = Scenario::parse(
            Some("14"),
            Some("1400/week"),
            &["tripwire=+20%".into(), "main=35%".into()],
            None,
        )
        .unwrap();
        assert_eq!((s.days, s.inflow, s.observe_days), (14, Some(200.0), 90));
        assert_eq!(s.changes[0], ("tripwire".into(), Change::Relative(1.2)));
        assert_eq!(s.changes[1], ("main".into(), Change::Absolute(0.35)));
        for (days, inflow, set) in [
            (Some("0"), None, None),
            (None, Some("lots"), None),
            (None, Some("5/year"), None),
            (None, None, Some("tripwire+20%")),
            (None, None, Some("tripwire=150%")),
            (None, None, Some("tripwire=-100%")),
        ] {
            let set: Vec<String> = set.into_iter().map(String::from).collect();
            assert!(Scenario::parse(days, inflow, &set, None).is_err());
        }
    }
}
