//! A report request as the command line and the API take it: the same parameter names, the
//! same checks and the same answer, so `autofunnel report … --format json` and
//! `GET /api/v1/reports/funnels/{id}/…` agree to the byte.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::ab::{AbReport, ab_report};
use super::attribution::{AttributionReport, Model, attribution_of, credit, credit_tally};
use super::emails::{EmailReport, email_report};
use super::forecast::{ForecastFold, ForecastReport, Scenario};
use super::{
    Cohort, FunnelReport, ReportError, Slice, SliceKey, check_field_in, field_names, replay_by,
    replay_runs, report_of, runs_tally, slices_of,
};
use crate::funnel::Funnel;
use crate::store::{
    Counted, Edge, Grouping, ReportData, ReportNeeds, ReportRead, ReportRows, Scope,
};
use crate::tally::{ALL, Figures, Tally, View, day_in};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Funnel,
    Emails,
    Ab,
    Attribution,
    Forecast,
}

impl What {
    /// The parameters this report reads (others are refused, so a typo is not ignored).
    fn takes(self) -> &'static [&'static str] {
        match self {
            What::Funnel => &["from", "to", "cohort", "by", "window", "slice", "tz"],
            What::Emails | What::Ab => &["from", "to", "cohort", "window", "tz"],
            What::Attribution => &["from", "to", "model", "lookback", "tz"],
            What::Forecast => &["days", "inflow", "set", "observe", "tz"],
        }
    }
}

/// The parameters as text, before they are checked. Lists (`slice`, `set`) are repeated on
/// the command line and comma-separated in a query string.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub from: Option<String>,
    pub to: Option<String>,
    pub cohort: Option<String>,
    pub by: Option<String>,
    pub window: Option<String>,
    #[serde(default, deserialize_with = "comma_list")]
    pub slice: Vec<String>,
    pub model: Option<String>,
    pub lookback: Option<String>,
    pub days: Option<String>,
    pub inflow: Option<String>,
    #[serde(default, deserialize_with = "comma_list")]
    pub set: Vec<String>,
    pub observe: Option<String>,
    /// The time zone days, weeks and months are counted in (an IANA name); UTC when none.
    pub tz: Option<String>,
}

fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let text = String::deserialize(d)?;
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

impl Params {
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, set) in [
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
            ("cohort", self.cohort.is_some()),
            ("by", self.by.is_some()),
            ("window", self.window.is_some()),
            ("slice", !self.slice.is_empty()),
            ("model", self.model.is_some()),
            ("lookback", self.lookback.is_some()),
            ("days", self.days.is_some()),
            ("inflow", self.inflow.is_some()),
            ("set", !self.set.is_empty()),
            ("observe", self.observe.is_some()),
            ("tz", self.tz.is_some()),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }
}

/// A parameter that cannot be read: which one, and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{param}`: {message}")]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        param,
        message: message.into(),
    }
}

/// Periods a funnel report is broken into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Day,
    /// Weeks from Monday (ISO 8601).
    Week,
    Month,
}

impl By {
    /// The first day of the period holding the day `d`.
    fn first_day(self, d: chrono::NaiveDate) -> chrono::NaiveDate {
        match self {
            By::Day => d,
            By::Week => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
            By::Month => d.with_day(1).unwrap_or(d),
        }
    }

    /// The start of the period holding `t`, in `tz`.
    fn floor(self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        super::midnight_in(self.first_day(t.with_timezone(&tz).date_naive()), tz)
    }

    /// The start of the period after the one holding `t`, in `tz`.
    fn next(self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let first = self.first_day(t.with_timezone(&tz).date_naive());
        let next = match self {
            By::Day => first + Duration::days(1),
            By::Week => first + Duration::weeks(1),
            By::Month => first
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(first + Duration::days(31)),
        };
        super::midnight_in(next, tz)
    }

    /// `[from, to)` cut at the period boundaries in `tz` (the first and last periods
    /// clipped).
    pub fn periods(
        self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: Tz,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut out = Vec::new();
        let mut start = from;
        while start < to {
            let end = self.next(start, tz).min(to);
            out.push((start, end));
            start = end;
        }
        out
    }
}

/// At most this many periods in one report.
pub const MAX_PERIODS: usize = 400;

/// A checked request.
#[derive(Debug, Clone)]
pub struct Request {
    pub what: What,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub cohort: Cohort,
    pub by: Option<By>,
    /// Only what a run did within this time of entering the funnel counts.
    pub window: Option<Duration>,
    pub slices: Vec<SliceKey>,
    pub model: Model,
    pub lookback: Duration,
    pub scenario: Scenario,
    /// The zone days, weeks and months are counted in.
    pub tz: Tz,
}

fn whole_days(param: &'static str, text: &str, max: i64) -> Result<i64, ParamError> {
    let t = text.trim();
    let t = t.strip_suffix('d').unwrap_or(t);
    match t.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            param,
            format!("a whole number of days from 1 to {max}"),
        )),
    }
}

impl Request {
    /// Checks `p` for the report `what`, made at `now`.
    pub fn parse(what: What, p: &Params, now: DateTime<Utc>) -> Result<Request, ParamError> {
        if let Some(extra) = p.given().into_iter().find(|n| !what.takes().contains(n)) {
            return Err(bad(
                extra,
                format!(
                    "this report does not take it (it takes {})",
                    what.takes().join(", ")
                ),
            ));
        }
        let tz: Tz = match p.tz.as_deref() {
            None => chrono_tz::UTC,
            Some(z) => z.trim().parse().map_err(|_| {
                // The name is said back as given, cut short: no echo of a huge value.
                let shown: String = z.chars().take(64).collect();
                bad(
                    "tz",
                    format!("no time zone {shown:?}: an IANA name such as Europe/Moscow, or UTC"),
                )
            })?,
        };
        let time = |param: &'static str, t: &str| {
            super::parse_time_in(t, tz)
                .ok_or_else(|| bad(param, "a date (2026-11-01) or an RFC 3339 time"))
        };
        let to =
            p.to.as_deref()
                .map(|t| time("to", t))
                .transpose()?
                .unwrap_or(now);
        let from = p
            .from
            .as_deref()
            .map(|t| time("from", t))
            .transpose()?
            // Whole days: from midnight (in the zone) 30 days before `to`.
            .unwrap_or_else(|| By::Day.floor(to - Duration::days(30), tz));
        if from >= to {
            return Err(bad(
                "from",
                format!(
                    "the period is empty: {} is not before `to` ({})",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ),
            ));
        }
        let cohort = match p.cohort.as_deref() {
            None | Some("entry") => Cohort::Entry,
            Some("calendar") => Cohort::Calendar,
            Some(_) => return Err(bad("cohort", "`entry` or `calendar`")),
        };
        let by = match p.by.as_deref() {
            None => None,
            Some("day") => Some(By::Day),
            Some("week") => Some(By::Week),
            Some("month") => Some(By::Month),
            Some(_) => return Err(bad("by", "`day`, `week` or `month`")),
        };
        if let Some(b) = by
            && b.periods(from, to, tz).len() > MAX_PERIODS
        {
            return Err(bad(
                "by",
                format!("more than {MAX_PERIODS} periods: take a longer period or a shorter span"),
            ));
        }
        let window = match p.window.as_deref() {
            None => None,
            Some(w) => {
                let d = crate::funnel::time::Duration::parse(w).map_err(|e| bad("window", e))?;
                if d.as_secs() == 0 {
                    return Err(bad("window", "a conversion window longer than zero"));
                }
                Some(Duration::seconds(d.as_secs() as i64))
            }
        };
        let mut slices = Vec::new();
        for s in &p.slice {
            slices.push(SliceKey::parse(s).map_err(|e| bad("slice", e))?);
        }
        let model = match p.model.as_deref() {
            None => Model::Linear,
            Some(m) => Model::parse(m).map_err(|e| bad("model", e))?,
        };
        let lookback = match p.lookback.as_deref() {
            None => Duration::days(30),
            Some(l) => Duration::days(whole_days(
                "lookback",
                l,
                crate::tally::LOOKBACK_DAYS.into(),
            )?),
        };
        let scenario = Scenario::parse(
            p.days.as_deref(),
            p.inflow.as_deref(),
            &p.set,
            p.observe.as_deref(),
        )
        .map_err(|(param, message)| bad(param, message))?;
        Ok(Request {
            what,
            from,
            to,
            cohort,
            by,
            window,
            slices,
            model,
            lookback,
            scenario,
            tz,
        })
    }

    /// The rows the report reads.
    pub fn needs(&self) -> ReportNeeds {
        let none = ReportNeeds::default();
        match self.what {
            What::Funnel => ReportNeeds {
                // A slice by a lead field groups by its value now, not by the origin.
                origins: self.slices.iter().any(|k| !matches!(k, SliceKey::Field(_))),
                visits: true,
                purchases: true,
                milestones: true,
                fields: self.slices.iter().any(|k| matches!(k, SliceKey::Field(_))),
                ..none
            },
            What::Emails => ReportNeeds {
                visits: true,
                emails: true,
                tracking: true,
                ..none
            },
            What::Ab => ReportNeeds {
                visits: true,
                emails: true,
                tracking: true,
                purchases: true,
                ..none
            },
            What::Attribution => ReportNeeds {
                purchases: true,
                touches: true,
                ..none
            },
            What::Forecast => ReportNeeds {
                visits: true,
                purchases: true,
                ..none
            },
        }
    }
}

/// The funnel report with its periods and slices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelAnswer {
    #[serde(flatten)]
    pub report: FunnelReport,
    /// The conversion window, when one was set: only what a run did within it of entering
    /// the funnel counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<By>,
    /// Each period of `by`, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub periods: Option<Vec<FunnelReport>>,
    /// Each group of each slice key, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<Slice>>,
}

/// Any report's answer, serialised as that report.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Funnel(Box<FunnelAnswer>),
    Emails(EmailReport),
    Ab(AbReport),
    Attribution(AttributionReport),
    Forecast(ForecastReport),
}

impl Request {
    /// The request as counters kept by the lead fields `kept` answer it: a slice by one of
    /// them reads the values the runs' origins hold ([`SliceKey::kept_by`]).
    pub fn kept_by(&self, kept: &[String]) -> Request {
        Request {
            slices: self
                .slices
                .iter()
                .map(|k| k.clone().kept_by(kept))
                .collect(),
            ..self.clone()
        }
    }

    /// The funnel report of the entry cohorts a forecast made at `now` observes: its rates'
    /// figures.
    pub fn observed_cohort(&self, now: DateTime<Utc>) -> Request {
        Request {
            what: What::Funnel,
            from: super::forecast::observed_from(&self.scenario, now, self.tz),
            to: now,
            cohort: Cohort::Entry,
            by: None,
            window: None,
            slices: Vec::new(),
            ..self.clone()
        }
    }

    /// The counters' view of the conversion window, when the counters keep it: whole days
    /// ([`crate::tally::WITHIN_DAYS`] at most), and on entry cohorts whole hours too
    /// ([`crate::tally::WITHIN_HOURS`] at most).
    fn window_view(&self) -> Option<View> {
        let ms = self.window?.num_milliseconds();
        let whole = |unit: i64, most: u16| {
            u16::try_from(ms / unit)
                .ok()
                .filter(|n| ms % unit == 0 && *n <= most)
        };
        let days = whole(86_400_000, crate::tally::WITHIN_DAYS);
        match self.cohort {
            Cohort::Entry => days
                .map(View::Within)
                .or_else(|| whole(3_600_000, crate::tally::WITHIN_HOURS).map(View::WithinHours)),
            Cohort::Calendar => days.map(View::CalendarWithin),
        }
    }

    /// What the report reads at `now`. The counters, kept per day of the zone `counted_in`,
    /// answer the funnel report unless sliced by a lead field not kept (with a conversion
    /// window of whole days, sliced or not; of whole hours, or in the calendar view of whole
    /// days, unsliced), attribution over any lookback, the per-email and A/B reports (with a
    /// window of whole days or hours; in the calendar view of whole days) and the forecast
    /// (with the runs in flight). Over whole days of that zone (from midnight to midnight or
    /// to now) they read the counters alone; over other hours (a period in another zone, or
    /// starting or ending within a day) the counters of the days from the midnight nearest
    /// each period's start to the one nearest its end, and for the hours between, added where
    /// the days fall short and taken off where they reach past, all runs' counters by the hour
    /// (unsliced, the hours beginning and ending on the hour) or else the rows of the leads
    /// with something in them ([`ReportRead::Parts`]; for the forecast, those of its observed
    /// cohort, [`Request::observed_cohort`]; attribution reads all its rows then). Every other
    /// report reads the rows.
    pub fn read(&self, now: DateTime<Utc>, counted_in: Tz) -> ReportRead {
        let counted = match self.what {
            What::Funnel => {
                // Entry cohorts' windows of whole days are kept per origin too, the others for
                // all runs together only.
                let window = self.window.is_none()
                    || match self.window_view() {
                        Some(View::Within(_)) => true,
                        Some(_) => self.slices.is_empty(),
                        None => false,
                    };
                window && !self.slices.iter().any(SliceKey::from_rows)
            }
            What::Emails | What::Ab => self.window.is_none() || self.window_view().is_some(),
            What::Attribution | What::Forecast => true,
        };
        if !counted {
            return ReportRead::Rows(self.needs());
        }
        let periods = match (self.what, self.by) {
            // The forecast observes the entry cohorts from a midnight of its zone up to now.
            (What::Forecast, _) => vec![(
                super::forecast::observed_from(&self.scenario, now, self.tz),
                now,
            )],
            (_, None) => vec![(self.from, self.to)],
            (_, Some(b)) => b.periods(self.from, self.to, self.tz),
        };
        // Each period's days of the counters' zone (those up to now, when the period ends
        // later: the counters hold nothing after now) and the hours where they differ.
        let day = |t| day_in(t, counted_in);
        let start = |d: i64| {
            super::midnight_in(chrono::NaiveDate::default() + Duration::days(d), counted_in)
        };
        let mut days = Vec::with_capacity(periods.len());
        let mut edges = Vec::new();
        // The midnight nearest to `t` (the earlier on a tie): a period's days run from the one
        // nearest its start to the one nearest its end, so at most half a day of rows is read
        // at either end, added where the days fall short and taken off where they reach past.
        let nearest = |t: DateTime<Utc>| {
            let d = day(t);
            if t - start(d) <= start(d + 1) - t {
                d
            } else {
                d + 1
            }
        };
        for (i, (a, b)) in periods.into_iter().enumerate() {
            let first = nearest(a);
            let end = if b >= now { day(now) + 1 } else { nearest(b) };
            if first < end {
                days.push((first, end));
                // The hours from `x` to `y` are the period's and not the days' (added); from
                // `y` to `x`, the days' and not the period's (taken off).
                let mut edge = |x: DateTime<Utc>, y: DateTime<Utc>| {
                    let (from, to, sign) = if x < y { (x, y, 1) } else { (y, x, -1) };
                    if from < to && from <= now {
                        edges.push(Edge {
                            period: i as i64,
                            from,
                            to,
                            sign,
                        });
                    }
                };
                edge(a, start(first));
                if b < now {
                    edge(start(end), b);
                }
            } else {
                days.push((first, first));
                edges.push(Edge {
                    period: i as i64,
                    from: a,
                    to: b,
                    sign: 1,
                });
            }
        }
        let counts = Counted {
            from_day: days.first().map_or(0, |d| d.0),
            to_day: days.iter().map(|d| d.1).max().unwrap_or(0),
            grouping: match self.by {
                None => Grouping::Whole,
                Some(_) => Grouping::Periods(days),
            },
            origins: super::apart(&self.slices),
            hours: Vec::new(),
            scope: Scope {
                view: match (self.what, self.cohort, self.window_view()) {
                    (What::Forecast, _, _) => View::Entry,
                    (What::Attribution, _, _) | (_, Cohort::Calendar, None) => View::Calendar,
                    (_, _, Some(w)) => w,
                    (_, Cohort::Entry, None) => View::Entry,
                },
                entry_totals: self.what == What::Funnel && self.cohort == Cohort::Calendar,
                prefix: match self.what {
                    What::Emails => Some(crate::tally::metric::MAIL),
                    What::Ab => Some(crate::tally::metric::AB),
                    _ => None,
                },
            },
        };
        // All runs' counters are kept by the hour too: hours at the ends that begin and end
        // on the hour are read from those.
        let hourly = counts.origins.is_none()
            && counts.scope.view.by_hour().is_some()
            && edges
                .iter()
                .all(|e| crate::tally::on_the_hour(e.from) && crate::tally::on_the_hour(e.to));
        let counts = match (edges.is_empty(), hourly) {
            (true, _) => counts,
            (false, true) => Counted {
                hours: edges,
                ..counts
            },
            (false, false) if self.what == What::Attribution => {
                return ReportRead::Rows(self.needs());
            }
            (false, false) => {
                // A report's figures are sums over runs: an entry cohort's, each filed under
                // its entry; the calendar view's, each fact filed when it happened. The
                // forecast's hours around are its observed cohort's.
                let needs = match self.what {
                    What::Forecast => self.observed_cohort(now).needs(),
                    _ => self.needs(),
                };
                return ReportRead::Parts {
                    counts,
                    edges,
                    needs,
                };
            }
        };
        match self.what {
            What::Forecast => ReportRead::Forecast(counts),
            _ => ReportRead::Counts(counts),
        }
    }
}

/// The funnel report from figures per (period, origin): the whole period, each period of
/// `by`, and the slices by first touch; `more` are slices already made (by lead fields).
fn funnel_answer(
    f: &Funnel,
    req: &Request,
    figs: &BTreeMap<(i64, String), Figures>,
    more: Vec<(usize, Vec<Slice>)>,
) -> FunnelAnswer {
    let (from, to, cohort) = (req.from, req.to, req.cohort);
    let mut whole = Figures::default();
    let mut by_origin: BTreeMap<String, Figures> = BTreeMap::new();
    for ((_, origin), fig) in figs {
        if origin == ALL {
            whole.merge(fig);
        } else {
            by_origin.entry(origin.clone()).or_default().merge(fig);
        }
    }
    let periods = req.by.map(|b| {
        b.periods(from, to, req.tz)
            .into_iter()
            .enumerate()
            .map(|(i, (a, z))| {
                let fig = figs.get(&(i as i64, ALL.to_string()));
                report_of(f, fig.unwrap_or(&Figures::default()), cohort, a, z)
            })
            .collect()
    });
    let mut slices: Vec<Vec<Slice>> = req
        .slices
        .iter()
        .map(|k| match k {
            k if k.from_rows() => Vec::new(),
            k => slices_of(f, &by_origin, k, cohort, from, to),
        })
        .collect();
    for (i, s) in more {
        slices[i] = s;
    }
    FunnelAnswer {
        report: report_of(f, &whole, cohort, from, to),
        window_seconds: req.window.map(|w| w.num_seconds()),
        by: req.by,
        periods,
        slices: (!req.slices.is_empty()).then(|| slices.into_iter().flatten().collect()),
    }
}

/// The report `req` asks for of `f`, from what the store read for it ([`Request::read`]),
/// as it stands at `now`.
pub fn answer(
    f: &Funnel,
    data: &ReportData,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Answer, ReportError> {
    Ok(zoned(answer_of(f, data, req, now)?, req))
}

/// The answer with the request's time zone named in every report it holds.
fn zoned(mut a: Answer, req: &Request) -> Answer {
    let tz = req.tz.name().to_string();
    match &mut a {
        Answer::Funnel(fa) => {
            fa.report.tz = tz.clone();
            for p in fa.periods.iter_mut().flatten() {
                p.tz = tz.clone();
            }
            for s in fa.slices.iter_mut().flatten() {
                s.report.tz = tz.clone();
            }
        }
        Answer::Emails(r) => r.tz = tz,
        Answer::Ab(r) => r.tz = tz,
        Answer::Attribution(r) => r.tz = tz,
        Answer::Forecast(r) => r.tz = tz,
    }
    a
}

/// A report made from rows read a range of leads at a time: each range is counted as it comes — everything a report counts of a run (its visits, emails, clicks,
/// its lead's orders and touches) is its own lead's — and dropped, so memory stays bounded
/// however many leads the funnel has.
pub struct Fold<'a> {
    f: &'a Funnel,
    req: &'a Request,
    counting: Counting,
    /// Whether any run was read, and the fields the leads have (a slice by a field no lead has
    /// is refused).
    any_runs: bool,
    fields: BTreeSet<String>,
    /// What of the runs' origins the request's slices tell apart, and each origin read as what
    /// it folds into ([`crate::tally::Apart::fold`]).
    apart: Option<crate::tally::Apart>,
    folded: std::cell::RefCell<rustc_hash::FxHashMap<String, String>>,
}

/// What a [`Fold`] sums, per report.
enum Counting {
    /// The funnel report: the runs into the report's periods (and per first touch when a
    /// slice asks), and per slice made from the rows (a lead field, the variant) its position
    /// among the request's slices and the runs by the slice's origins. No `tally` when a
    /// slice's would count the same: one period, no first touches — the slice's counters of
    /// all runs together are the report's (every run is counted there, whatever its origin).
    Runs {
        tally: Option<Tally>,
        slices: Vec<(usize, Tally)>,
    },
    /// The per-email report: what became of each email.
    Mails(Tally),
    /// Attribution: orders shared among touches in the lookback.
    Credit(Tally),
    /// The A/B report: what came of each split's emails, and the orders after them.
    Ab(Tally),
    Forecast(ForecastFold),
}

impl<'a> Fold<'a> {
    /// A fold for `req`, checked as of `now` (what happens after `now` is not counted: rows
    /// are read up to it).
    pub fn new(
        f: &'a Funnel,
        req: &'a Request,
        now: DateTime<Utc>,
    ) -> Result<Fold<'a>, ReportError> {
        Fold::over(f, req, now, None)
    }

    /// A fold for `req` that counts into `periods` instead of the request's own ([`Fold::edges`]
    /// reads what it counted).
    pub fn of_edges(
        f: &'a Funnel,
        req: &'a Request,
        now: DateTime<Utc>,
        edges: &[Edge],
    ) -> Result<Fold<'a>, ReportError> {
        Fold::over(f, req, now, Some(Edge::pieces(edges)))
    }

    fn over(
        f: &'a Funnel,
        req: &'a Request,
        now: DateTime<Utc>,
        periods: Option<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
    ) -> Result<Fold<'a>, ReportError> {
        let apart = super::apart(&req.slices);
        let (from, to) = (req.from, req.to);
        super::check_period(from, to)?;
        let whole = || periods.clone().unwrap_or_else(|| vec![(from, to)]);
        // A conversion window: what happened within it of its run's entry, as the counters
        // keep it (`Tally::within`).
        // Entry cohorts read the entry view only; the calendar view reads the entry view's
        // totals too.
        let within = |t: Tally| {
            let t = match req.cohort {
                Cohort::Entry => t.only(View::Entry),
                Cohort::Calendar => t,
            };
            match req.window {
                Some(w) => t.within(w),
                None => t,
            }
        };
        let counting = match req.what {
            What::Emails => Counting::Mails(within(Tally::in_periods(whole(), false))),
            What::Attribution => Counting::Credit(credit_tally(from, to, now)),
            What::Ab => Counting::Ab(within(Tally::in_periods(whole(), false))),
            What::Forecast => Counting::Forecast(ForecastFold::new(&req.scenario, now, req.tz)?),
            _ => {
                let of_edges = periods.is_some();
                let periods = match (&periods, req.by) {
                    (Some(p), _) => p.clone(),
                    (None, Some(b)) => b.periods(from, to, req.tz),
                    (None, None) => vec![(from, to)],
                };
                let touch = apart.is_some();
                let slices: Vec<(usize, Tally)> = req
                    .slices
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| k.from_rows())
                    .map(|(i, _)| (i, within(runs_tally(&[(from, to)], now, true))))
                    .collect();
                let shared = !of_edges && !touch && !slices.is_empty() && periods == [(from, to)];
                Counting::Runs {
                    tally: (!shared).then(|| within(runs_tally(&periods, now, touch))),
                    slices,
                }
            }
        };
        Ok(Fold {
            f,
            req,
            counting,
            any_runs: false,
            fields: BTreeSet::new(),
            apart,
            folded: Default::default(),
        })
    }

    /// Counts one range of leads' rows.
    pub fn add(&mut self, rows: &ReportRows) {
        let req = self.req;
        // The funnel, per-email and A/B reports' window is their tallies' (as the counters
        // keep it); attribution's and the forecast's, the rows as they stood.
        let windowed;
        let rows = match req.window {
            Some(w) if matches!(self.counting, Counting::Credit(_) | Counting::Forecast(_)) => {
                windowed = super::windowed(rows, w);
                &windowed
            }
            _ => rows,
        };
        self.any_runs |= !rows.runs.is_empty();
        match &mut self.counting {
            Counting::Ab(tally) => {
                let ab = crate::store::Replay {
                    mails: true,
                    orders: true,
                    ..Default::default()
                };
                rows.replay(tally, ab, None);
            }
            Counting::Forecast(fc) => fc.add(rows),
            Counting::Mails(tally) => {
                let mails = crate::store::Replay {
                    mails: true,
                    ..Default::default()
                };
                rows.replay(tally, mails, None);
            }
            Counting::Credit(tally) => credit(rows, tally),
            Counting::Runs { tally, slices } => {
                for (i, t) in slices.iter_mut() {
                    let key = &req.slices[*i];
                    // The names the leads have are wanted only to refuse a field no lead
                    // has: gathered until one has it.
                    if matches!(key, SliceKey::Field(name) if !self.fields.contains(name)) {
                        self.fields.extend(field_names(rows));
                    }
                    replay_by(rows, key, t);
                }
                if let Some(tally) = tally {
                    let (apart, folded) = (&self.apart, &self.folded);
                    let origin = |r: &crate::store::RunRow| {
                        let mut folded = folded.borrow_mut();
                        if let Some(f) = folded.get(&r.origin) {
                            return f.clone();
                        }
                        let f = apart
                            .as_ref()
                            .map_or_else(String::new, |a| a.fold(&r.origin));
                        folded.insert(r.origin.clone(), f.clone());
                        f
                    };
                    replay_runs(
                        rows,
                        tally,
                        apart
                            .is_some()
                            .then_some(&origin as &dyn Fn(&crate::store::RunRow) -> String),
                    );
                }
            }
        }
    }

    /// The entry view of what a fold made by [`Fold::of_edges`] counted, added to `figs` (the
    /// counters' figures per period and origin) under each edge's period.
    pub fn edges(self, edges: &[Edge], figs: &mut BTreeMap<(i64, String), Figures>) {
        let tally = match &self.counting {
            Counting::Runs {
                tally: Some(tally), ..
            }
            | Counting::Mails(tally)
            | Counting::Ab(tally) => tally,
            Counting::Runs { tally: None, .. } | Counting::Credit(_) | Counting::Forecast(_) => {
                return;
            }
        };
        // The entry view of the runs that entered in the hours (the calendar view's entry
        // totals among them); the calendar view when what happened in them was read.
        let calendar = self.req.cohort == Cohort::Calendar;
        Edge::spread(edges, crate::tally::figures(tally), figs, |view| {
            view == View::Entry || (view == View::Calendar && calendar)
        });
    }

    /// The report of every range counted.
    pub fn finish(self) -> Result<Answer, ReportError> {
        let (f, req) = (self.f, self.req);
        let (from, to, cohort) = (req.from, req.to, req.cohort);
        let whole = |tally: &Tally| {
            crate::tally::figures(tally)
                .remove(&(0, ALL.to_string()))
                .unwrap_or_default()
        };
        let a = match self.counting {
            Counting::Ab(tally) => Answer::Ab(ab_report(f, &whole(&tally), cohort, from, to)),
            Counting::Forecast(fc) => Answer::Forecast(fc.finish(f, &req.scenario)?),
            Counting::Mails(tally) => {
                Answer::Emails(email_report(f, &whole(&tally), cohort, from, to))
            }
            Counting::Credit(tally) => Answer::Attribution(attribution_of(
                f,
                &whole(&tally),
                req.model,
                req.lookback,
                from,
                to,
            )),
            Counting::Runs { tally, slices } => {
                let mut more = Vec::new();
                for (i, t) in &slices {
                    let key = &req.slices[*i];
                    check_field_in(self.any_runs, &self.fields, key)?;
                    let by_origin = crate::tally::figures(t)
                        .into_iter()
                        .map(|((_, o), fig)| (o, fig))
                        .collect();
                    more.push((*i, slices_of(f, &by_origin, key, cohort, from, to)));
                }
                let figs = match &tally {
                    Some(t) => crate::tally::figures(t),
                    // The first slice's counters of all runs together.
                    None => slices.first().map_or_else(BTreeMap::new, |(_, t)| {
                        crate::tally::figures(t)
                            .into_iter()
                            .filter(|((_, o), _)| o == ALL)
                            .collect()
                    }),
                };
                Answer::Funnel(Box::new(funnel_answer(f, req, &figs, more)))
            }
        };
        Ok(zoned(a, req))
    }
}

fn answer_of(
    f: &Funnel,
    data: &ReportData,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Answer, ReportError> {
    let rows = match data {
        ReportData::Counts(figs) if req.what == What::Attribution => {
            let fig = figs.get(&(0, ALL.to_string())).cloned().unwrap_or_default();
            return Ok(Answer::Attribution(attribution_of(
                f,
                &fig,
                req.model,
                req.lookback,
                req.from,
                req.to,
            )));
        }
        ReportData::Counts(figs) if req.what == What::Emails => {
            let fig = figs.get(&(0, ALL.to_string())).cloned().unwrap_or_default();
            let (f, c) = (f, req.cohort);
            return Ok(Answer::Emails(email_report(f, &fig, c, req.from, req.to)));
        }
        ReportData::Counts(figs) if req.what == What::Ab => {
            let fig = figs.get(&(0, ALL.to_string())).cloned().unwrap_or_default();
            let (f, c) = (f, req.cohort);
            return Ok(Answer::Ab(ab_report(f, &fig, c, req.from, req.to)));
        }
        ReportData::Counts(figs) => {
            return Ok(Answer::Funnel(Box::new(funnel_answer(
                f,
                req,
                figs,
                Vec::new(),
            ))));
        }
        ReportData::Forecast(seen) => {
            let from = super::forecast::observed_from(&req.scenario, now, req.tz);
            let fc = super::forecast::forecast_of(f, &req.scenario, from, now, seen)?;
            return Ok(Answer::Forecast(fc));
        }
        ReportData::Rows(rows) => rows,
    };
    let (from, to) = (req.from, req.to);
    super::check_period(from, to)?;
    let mut fold = Fold::new(f, req, now)?;
    fold.add(rows);
    fold.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        super::super::parse_time(s).unwrap()
    }

    #[test]
    fn periods_cut_at_calendar_boundaries() {
        // 2026-11-04 is a Wednesday: the first week is clipped to start there.
        let weeks = By::Week.periods(t("2026-11-04"), t("2026-11-20"), chrono_tz::UTC);
        let starts: Vec<String> = weeks
            .iter()
            .map(|(a, _)| a.format("%F").to_string())
            .collect();
        assert_eq!(starts, ["2026-11-04", "2026-11-09", "2026-11-16"]);
        assert_eq!(weeks[2].1, t("2026-11-20"));
        let months = By::Month.periods(t("2026-01-15"), t("2026-03-02"), chrono_tz::UTC);
        assert_eq!(months.len(), 3);
        assert_eq!(months[1], (t("2026-02-01"), t("2026-03-01")));
        assert_eq!(
            By::Day
                .periods(t("2026-11-01"), t("2026-11-03"), chrono_tz::UTC)
                .len(),
            2
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let now = t("2026-11-29");
        let err = |what, p: Params| Request::parse(what, &p, now).unwrap_err().param;
        let p = |f: fn(&mut Params)| {
            let mut p = Params::default();
            f(&mut p);
            p
        };
        assert_eq!(
            err(What::Funnel, p(|p| p.from = Some("2026-12-01".into()))),
            "from"
        );
        assert_eq!(
            err(What::Funnel, p(|p| p.to = Some("tomorrow".into()))),
            "to"
        );
        assert_eq!(err(What::Funnel, p(|p| p.by = Some("year".into()))), "by");
        assert_eq!(
            err(What::Funnel, p(|p| p.window = Some("0d".into()))),
            "window"
        );
        assert_eq!(
            err(What::Funnel, p(|p| p.slice = vec!["colour".into()])),
            "slice"
        );
        assert_eq!(err(What::Emails, p(|p| p.by = Some("week".into()))), "by");
        assert_eq!(
            err(What::Attribution, p(|p| p.model = Some("u".into()))),
            "model"
        );
        assert_eq!(
            err(What::Forecast, p(|p| p.days = Some("0".into()))),
            "days"
        );
        let by_day = p(|p| {
            p.from = Some("2020-01-01".into());
            p.by = Some("day".into());
        });
        assert_eq!(err(What::Funnel, by_day), "by");
        assert!(Request::parse(What::Funnel, &Params::default(), now).is_ok());
    }
}
