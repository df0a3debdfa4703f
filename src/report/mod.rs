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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{EnrollmentId, LeadId, Outcome, RunStatus};
use crate::funnel::Funnel;
use crate::store::{ReportRows, VisitRow};

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
    pub total: f64,
    /// The average check: total / orders.
    pub average: f64,
}

/// One stage's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub kind: Option<&'static str>,
    pub offer: Option<String>,
    /// Leads (runs) that entered the stage.
    pub leads_in: u64,
    /// Where they went next: stage id → leads.
    pub moved_on: BTreeMap<String, u64>,
    /// How they left the funnel from here: outcome → leads.
    pub exited: BTreeMap<String, u64>,
    /// Still in the stage now.
    pub still_there: u64,
    /// Reached the next stage in the funnel's order, of those in this one.
    pub to_next: Option<Rate>,
    /// In this stage, of those who entered the funnel.
    pub from_entry: Rate,
    /// Purchases of the stage's offer by the leads that were in it, after they entered it.
    pub revenue: Vec<Revenue>,
    pub time_in_stage: Spread,
}

/// A funnel's report for a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelReport {
    pub funnel: String,
    pub name: String,
    pub cohort: Cohort,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Runs that entered the funnel in the period.
    pub entered: u64,
    /// Of those, runs still waiting for the double opt-in click (in no stage yet).
    pub awaiting_confirmation: u64,
    /// Of those, runs that exited `converted` (by the time of the report).
    pub converted: Rate,
    pub stages: Vec<StageReport>,
    /// From funnel entry to the `converted` exit.
    pub length_to_converted: Spread,
    /// Leads that reached the funnel's scoring thresholds, when it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qualified: Option<Qualified>,
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

/// The period a report covers, how leads are assigned to it, and the time it is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub cohort: Cohort,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Window {
    pub fn new(
        cohort: Cohort,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Window, ReportError> {
        if from >= to {
            return Err(ReportError::EmptyPeriod {
                from: from.to_rfc3339(),
                to: to.to_rfc3339(),
            });
        }
        Ok(Window {
            cohort,
            from,
            to,
            now,
        })
    }

    /// Whether a time falls in the period (and has happened).
    pub fn within(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to && t <= self.now
    }

    /// The runs that entered the funnel in the period.
    pub fn cohort_runs(&self, rows: &ReportRows) -> HashSet<EnrollmentId> {
        rows.runs
            .iter()
            .filter(|r| self.within(r.entered_at))
            .map(|r| r.enrollment)
            .collect()
    }

    /// Whether an email counts: one of the cohort's runs (entry) or queued in the period
    /// (calendar).
    pub fn counts_email(
        &self,
        e: &crate::store::EmailRow,
        cohort_runs: &HashSet<EnrollmentId>,
    ) -> bool {
        e.created_at <= self.now
            && match self.cohort {
                Cohort::Entry => e.enrollment.is_some_and(|r| cohort_runs.contains(&r)),
                Cohort::Calendar => self.within(e.created_at),
            }
    }
}

/// The runs that entered each stage, by stage id.
pub(crate) fn entered_by_stage(rows: &ReportRows) -> HashMap<&str, BTreeSet<EnrollmentId>> {
    let mut out: HashMap<&str, BTreeSet<EnrollmentId>> = HashMap::new();
    for v in &rows.visits {
        out.entry(v.stage.as_str())
            .or_default()
            .insert(v.enrollment);
    }
    out
}

/// A time as people and the API give it: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// The stage report of `f` over `[from, to)`, as the rows stand at `now`.
pub fn funnel_report(
    f: &Funnel,
    rows: &ReportRows,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<FunnelReport, ReportError> {
    let w = Window::new(cohort, from, to, now)?;
    let within = |t: DateTime<Utc>| w.within(t);
    let entered_runs: Vec<_> = rows.runs.iter().filter(|r| within(r.entered_at)).collect();
    let cohort_runs: HashSet<EnrollmentId> = entered_runs.iter().map(|r| r.enrollment).collect();
    let lead_of: HashMap<EnrollmentId, LeadId> =
        rows.runs.iter().map(|r| (r.enrollment, r.lead)).collect();
    // The visits that count — the cohort's (entry) or those that began in the period
    // (calendar) — by stage, in one pass.
    let mut by_stage: HashMap<&str, Vec<&VisitRow>> = HashMap::new();
    for v in rows
        .visits
        .iter()
        .filter(|v| v.entered_at <= now)
        .filter(|v| match cohort {
            Cohort::Entry => cohort_runs.contains(&v.enrollment),
            Cohort::Calendar => within(v.entered_at),
        })
    {
        by_stage.entry(v.stage.as_str()).or_default().push(v);
    }
    let runs_of: HashMap<&str, HashSet<EnrollmentId>> = by_stage
        .iter()
        .map(|(s, vs)| (*s, vs.iter().map(|v| v.enrollment).collect()))
        .collect();
    let none = HashSet::new();
    let runs_in = |stage: &str| runs_of.get(stage).unwrap_or(&none);
    let entered = entered_runs.len() as u64;
    let mut stages = Vec::with_capacity(f.stages.len());
    for (i, s) in f.stages.iter().enumerate() {
        let id = s.id.value.as_str();
        let visits: &[&VisitRow] = by_stage.get(id).map_or(&[], Vec::as_slice);
        let here = runs_in(id);
        let mut moved_on: BTreeMap<String, u64> = BTreeMap::new();
        let mut exited: BTreeMap<String, u64> = BTreeMap::new();
        let mut still_there = 0;
        let mut durations = Vec::new();
        for v in visits {
            match (&v.exited_at, &v.next, v.reason.as_deref()) {
                (None, _, _) => still_there += 1,
                (Some(_), Some(next), _) => *moved_on.entry(next.to_string()).or_default() += 1,
                (Some(_), None, Some(r)) => {
                    let outcome = r.strip_prefix("exit: ").unwrap_or(r);
                    *exited.entry(outcome.to_string()).or_default() += 1;
                }
                (Some(_), None, None) => *exited.entry("unknown".into()).or_default() += 1,
            }
            if let Some(out) = v.exited_at {
                durations.push((out - v.entered_at).num_seconds());
            }
        }
        let to_next = f.stages.get(i + 1).map(|next| {
            let there = runs_in(next.id.value.as_str());
            match cohort {
                Cohort::Entry => {
                    Rate::of(here.intersection(there).count() as u64, here.len() as u64)
                }
                Cohort::Calendar => Rate::of(there.len() as u64, here.len() as u64),
            }
        });
        let revenue = s
            .offer
            .as_ref()
            .map(|offer| {
                revenue_of(
                    rows,
                    visits,
                    &lead_of,
                    offer.value.as_str(),
                    cohort,
                    &within,
                )
            })
            .unwrap_or_default();
        stages.push(StageReport {
            stage: id.to_string(),
            kind: s.kind.map(|k| k.name()),
            offer: s.offer.as_ref().map(|o| o.value.to_string()),
            leads_in: here.len() as u64,
            moved_on,
            exited,
            still_there,
            to_next,
            from_entry: Rate::of(here.len() as u64, entered),
            revenue,
            time_in_stage: Spread::of(durations),
        });
    }
    let converted: Vec<i64> = entered_runs
        .iter()
        .filter(|r| r.status == RunStatus::Exited(Outcome::Converted))
        .filter_map(|r| r.exited_at.map(|x| (x - r.entered_at).num_seconds()))
        .collect();
    let qualified = f.scoring.as_ref().and_then(|s| {
        let count = |kind: crate::domain::EventKind| {
            let runs: HashSet<EnrollmentId> = rows
                .milestones
                .iter()
                .filter(|m| m.kind == kind && m.at <= now)
                .filter(|m| match cohort {
                    Cohort::Entry => cohort_runs.contains(&m.enrollment),
                    Cohort::Calendar => within(m.at),
                })
                .map(|m| m.enrollment)
                .collect();
            Rate::of(runs.len() as u64, entered)
        };
        (s.mql.is_some() || s.sql.is_some()).then(|| Qualified {
            mql: s.mql.map(|_| count(crate::domain::EventKind::Mql)),
            sql: s.sql.map(|_| count(crate::domain::EventKind::Sql)),
        })
    });
    Ok(FunnelReport {
        funnel: f.id.value.to_string(),
        name: f.name.clone(),
        cohort,
        from,
        to,
        entered,
        awaiting_confirmation: entered_runs
            .iter()
            .filter(|r| r.status == RunStatus::Unconfirmed)
            .count() as u64,
        converted: Rate::of(converted.len() as u64, entered),
        stages,
        length_to_converted: Spread::of(converted),
        qualified,
    })
}

/// The rows as they stood `window` after each run entered the funnel: later stage entries,
/// exits, purchases and milestones are left out (a stage left later is still there).
pub fn windowed(rows: &ReportRows, window: chrono::Duration) -> ReportRows {
    let limit: HashMap<EnrollmentId, DateTime<Utc>> = rows
        .runs
        .iter()
        .map(|r| (r.enrollment, r.entered_at + window))
        .collect();
    let mut first_entry: HashMap<LeadId, DateTime<Utc>> = HashMap::new();
    for r in &rows.runs {
        let e = first_entry.entry(r.lead).or_insert(r.entered_at);
        *e = (*e).min(r.entered_at);
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
                first_entry
                    .get(&p.lead)
                    .is_some_and(|e| p.at <= *e + window)
            })
            .cloned()
            .collect(),
        milestones: rows
            .milestones
            .iter()
            .filter(|m| !late(&m.enrollment, m.at))
            .cloned()
            .collect(),
        ..rows.clone()
    }
}

/// Purchases of `offer` by the leads of these visits, made after the visit began (and, in the
/// calendar view, within the period); each order once.
fn revenue_of(
    rows: &ReportRows,
    visits: &[&VisitRow],
    lead_of: &HashMap<EnrollmentId, LeadId>,
    offer: &str,
    cohort: Cohort,
    within: &impl Fn(DateTime<Utc>) -> bool,
) -> Vec<Revenue> {
    let mut first_visit: HashMap<LeadId, DateTime<Utc>> = HashMap::new();
    for v in visits {
        if let Some(lead) = lead_of.get(&v.enrollment) {
            let at = first_visit.entry(*lead).or_insert(v.entered_at);
            *at = (*at).min(v.entered_at);
        }
    }
    let mut by_currency: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for p in &rows.purchases {
        let counts = p.product.as_deref() == Some(offer)
            && first_visit.get(&p.lead).is_some_and(|at| p.at >= *at)
            && (cohort == Cohort::Entry || within(p.at));
        if counts {
            let e = by_currency
                .entry(p.currency.clone().unwrap_or_else(|| "—".into()))
                .or_default();
            e.0 += 1;
            e.1 += p.amount.unwrap_or(0.0);
        }
    }
    by_currency
        .into_iter()
        .map(|(currency, (orders, total))| Revenue {
            currency,
            orders,
            total,
            average: total / orders as f64,
        })
        .collect()
}

/// What a report can be sliced by: the lead's first touch, or one of its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum SliceKey {
    Channel,
    Source,
    Medium,
    Campaign,
    Form,
    /// `field:NAME`: any lead field (`region`, `manager`, …).
    Field(String),
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
            other => match other.strip_prefix("field:") {
                Some(name) if crate::domain::FieldName::parse(name).is_ok() => {
                    SliceKey::Field(name.to_string())
                }
                _ => {
                    return Err(format!(
                        "cannot slice by \"{text}\": use utm_source, utm_medium, utm_campaign, channel, form or field:NAME"
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
            SliceKey::Field(n) => format!("field:{n}"),
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

/// The value a lead has for a slice key; `(none)` when it has none.
fn slice_value(rows: &ReportRows, key: &SliceKey) -> HashMap<LeadId, String> {
    let mut out = HashMap::new();
    match key {
        SliceKey::Field(name) => {
            for (lead, fields) in &rows.fields {
                let v = match fields.get(name) {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(serde_json::Value::Null) | None => continue,
                    Some(serde_json::Value::String(_)) => continue,
                    Some(v) => v.to_string(),
                };
                out.insert(*lead, v);
            }
        }
        _ => {
            // The first touch of each lead: the one that brought it (touches come oldest first).
            let mut seen = BTreeSet::new();
            for o in rows.touches.iter().filter(|t| seen.insert(t.lead)) {
                let v = match key {
                    SliceKey::Channel => Some(o.channel.clone()),
                    SliceKey::Source => o.source.clone(),
                    SliceKey::Medium => o.medium.clone(),
                    SliceKey::Campaign => o.campaign.clone(),
                    SliceKey::Form => o.form.clone(),
                    SliceKey::Field(_) => None,
                };
                if let Some(v) = v {
                    out.insert(o.lead, v);
                }
            }
        }
    }
    out
}

/// The report of each group of leads sharing a value of `key`, largest group first (leads
/// without a value last, as `(none)`).
pub fn sliced_reports(
    f: &Funnel,
    rows: &ReportRows,
    key: &SliceKey,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Slice>, ReportError> {
    const NONE: &str = "(none)";
    if let SliceKey::Field(name) = key
        && !rows.runs.is_empty()
        && !rows.fields.iter().any(|(_, f)| f.contains_key(name))
    {
        let known: BTreeSet<&String> = rows.fields.iter().flat_map(|(_, f)| f.keys()).collect();
        return Err(ReportError::UnknownField {
            field: name.clone(),
            known: known.into_iter().cloned().collect(),
        });
    }
    let values = slice_value(rows, key);
    let value_of = |lead: &LeadId| values.get(lead).map_or(NONE, String::as_str);
    let run_lead: HashMap<EnrollmentId, LeadId> =
        rows.runs.iter().map(|r| (r.enrollment, r.lead)).collect();
    let groups: BTreeSet<&str> = rows.runs.iter().map(|r| value_of(&r.lead)).collect();
    let mut out = Vec::new();
    for g in groups {
        let part = ReportRows {
            runs: rows
                .runs
                .iter()
                .filter(|r| value_of(&r.lead) == g)
                .cloned()
                .collect(),
            visits: rows
                .visits
                .iter()
                .filter(|v| {
                    run_lead
                        .get(&v.enrollment)
                        .is_some_and(|l| value_of(l) == g)
                })
                .cloned()
                .collect(),
            purchases: rows
                .purchases
                .iter()
                .filter(|p| value_of(&p.lead) == g)
                .cloned()
                .collect(),
            milestones: rows
                .milestones
                .iter()
                .filter(|m| {
                    run_lead
                        .get(&m.enrollment)
                        .is_some_and(|l| value_of(l) == g)
                })
                .cloned()
                .collect(),
            ..ReportRows::default()
        };
        out.push(Slice {
            key: key.clone(),
            value: g.to_string(),
            report: funnel_report(f, &part, cohort, from, to, now)?,
        });
    }
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
    Ok(out)
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
