//! Report counters: what each stored [`Fact`] (a run entering, a stage visit opened or closed,
//! a conversion, a score milestone, an order, what became of an email) adds to its funnel's
//! figures, summed per day.
//!
//! Every write transaction turns the rows it wrote into facts and [`Tally::count`] turns facts
//! into counters — the one place that does — so a report reads a few hundred sums instead of
//! every row. Replaying stored rows (a recount, or a report that needs the rows themselves: a
//! conversion window, a slice by a lead field, a period that does not start at midnight) makes
//! the same facts with the same rules ([`Reached`], [`order_facts`], [`marked`],
//! [`reached_by`]) and counts them into periods instead of days. Either way the figures come
//! from one place and agree. Pure: no IO, no clock.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::domain::Money;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// Which time a counter is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    /// The day the run entered the funnel (entry cohorts).
    Entry,
    /// The day the counted thing happened (the calendar view).
    Calendar,
    /// The entry view of what happened this many days after the run entered ([`days_after`]):
    /// a conversion window of `d` whole days is the sum of these up to `d`. Kept for all runs
    /// together and per origin (a window sliced by source, field or variant), up to
    /// [`WITHIN_DAYS`].
    Within(u16),
    /// The same by the hours after entry ([`hours_after`]), up to [`WITHIN_HOURS`]: a window
    /// of whole hours.
    WithinHours(u16),
    /// The calendar view of what happened this many days after its run entered
    /// ([`days_after`]), up to [`WITHIN_DAYS`], for all runs together: a window of whole days
    /// in the calendar view is the sum of these up to it.
    CalendarWithin(u16),
    /// The entry view of all runs together filed by the hour (UTC) the run entered, the key's
    /// `day` being hours since 1970: the hours at the ends of a period in another zone, or
    /// starting or ending within a day, are read from these instead of the rows.
    EntryHour,
    /// The calendar view of all runs together filed by the hour it happened.
    CalendarHour,
}

/// Both views, for what counts in each.
const BOTH: [View; 2] = [View::Entry, View::Calendar];

/// The longest conversion window, in days, the counters answer (a longer one reads the rows).
pub const WITHIN_DAYS: u16 = 90;

/// The longest conversion window of whole hours the counters answer (41 days and 15 hours:
/// the most a view's three-digit name holds, so the names of a window's hours sort in order).
pub const WITHIN_HOURS: u16 = 999;

const HOUR_MS: i64 = 3_600_000;

/// The days from `entered` to `at`, rounded up (0 for `at` not after `entered`): what happened
/// at `at` is within a window of `d` whole days of `entered` exactly when this is at most `d`.
pub fn days_after(entered: DateTime<Utc>, at: DateTime<Utc>) -> i64 {
    units_after(entered, at, 24 * HOUR_MS)
}

/// [`days_after`] in hours.
pub fn hours_after(entered: DateTime<Utc>, at: DateTime<Utc>) -> i64 {
    units_after(entered, at, HOUR_MS)
}

fn units_after(entered: DateTime<Utc>, at: DateTime<Utc>, unit_ms: i64) -> i64 {
    let ms = (at - entered).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms + unit_ms - 1) / unit_ms
    }
}

/// The hours since 1970-01-01 00:00 UTC of a time: the `day` of the hourly views.
pub fn hour_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3_600)
}

/// Whether `t` is a whole hour (UTC), where the hourly counters can begin or end a sum.
pub fn on_the_hour(t: DateTime<Utc>) -> bool {
    t.timestamp_millis().rem_euclid(HOUR_MS) == 0
}

impl View {
    /// Its name in the counters' table: `entry`, `calendar`, `entry+007` (the days padded, so
    /// the names of a window's days sort between `entry+000` and the window's).
    pub fn name(self) -> String {
        match self {
            View::Entry => "entry".into(),
            View::Calendar => "calendar".into(),
            View::Within(d) => format!("entry+{d:03}"),
            View::WithinHours(h) => format!("entry+h{h:03}"),
            View::CalendarWithin(d) => format!("calendar+{d:03}"),
            View::EntryHour => "entry@hour".into(),
            View::CalendarHour => "calendar@hour".into(),
        }
    }

    /// Whether its counters are kept by the hour (all runs together, apart from the others):
    /// the views by the hour and by the hours after entry.
    pub fn by_the_hour(self) -> bool {
        matches!(
            self,
            View::EntryHour | View::CalendarHour | View::WithinHours(_)
        )
    }

    /// The view the hourly view files by the hour (the entry or the calendar view).
    pub fn by_hour(self) -> Option<View> {
        match self {
            View::Entry => Some(View::EntryHour),
            View::Calendar => Some(View::CalendarHour),
            _ => None,
        }
    }

    /// What a view's counters are summed as in a report: a window's hours or days after entry
    /// and the entry view by the hour as the entry view, the calendar view by the hour as the
    /// calendar view.
    pub fn summed_as(self) -> View {
        match self {
            View::Within(_) | View::WithinHours(_) | View::EntryHour => View::Entry,
            View::CalendarHour | View::CalendarWithin(_) => View::Calendar,
            v => v,
        }
    }

    pub fn parse(text: &str) -> Option<View> {
        match text {
            "entry" => Some(View::Entry),
            "calendar" => Some(View::Calendar),
            "entry@hour" => Some(View::EntryHour),
            "calendar@hour" => Some(View::CalendarHour),
            _ => {
                let (d, view): (&str, fn(u16) -> View) = match text.strip_prefix("entry+") {
                    Some(d) => match d.strip_prefix('h') {
                        Some(h) => (h, View::WithinHours),
                        None => (d, View::Within),
                    },
                    None => (text.strip_prefix("calendar+")?, View::CalendarWithin),
                };
                (d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| d.parse().ok().map(view))
                    .flatten()
            }
        }
    }
}

/// Funnel-wide figures are filed under this stage.
pub const FUNNEL: &str = "";
/// The origin of the counters of all runs together.
pub const ALL: &str = "";

/// The names of the counters.
pub mod metric {
    /// Runs that entered the funnel (funnel-wide, entry view).
    pub const ENTERED: &str = "entered";
    /// Runs waiting for the double opt-in click (funnel-wide, entry view; down on the click).
    pub const UNCONFIRMED: &str = "unconfirmed";
    /// Runs that exited `converted` (funnel-wide; the calendar view files them when they did).
    pub const CONVERTED: &str = "converted";
    /// `length:SECONDS`: runs that took this long from entry to `converted` (quantized).
    pub const LENGTH: &str = "length:";
    /// Runs that entered the stage for the first time.
    pub const IN: &str = "in";
    /// Visits of the stage not left yet.
    pub const OPEN: &str = "open";
    /// `next:STAGE`: visits left for this stage.
    pub const NEXT: &str = "next:";
    /// `exit:OUTCOME`: visits left by leaving the funnel.
    pub const EXIT: &str = "exit:";
    /// `time:SECONDS`: visits that lasted this long (quantized).
    pub const TIME: &str = "time:";
    /// `with:STAGE`: runs that reached both this stage and that one, counted under whichever
    /// they reached second (entry view).
    pub const WITH: &str = "with:";
    /// `buy␟PRODUCT␟CURRENCY`: orders (and their total) by leads whose run had entered the
    /// stage before buying, each credited to one run ([`super::order_facts`]); under
    /// [`super::FUNNEL`], every order of the funnel's runs, whatever the product.
    pub const BUY: &str = "buy\u{1f}";
    /// `unpriced␟PRODUCT`: orders with no amount, by leads whose run had entered the stage
    /// before buying (counted apart, so they do not pull the average check down).
    pub const UNPRICED: &str = "unpriced\u{1f}";
    /// `refund␟PRODUCT␟CURRENCY`: refunds of orders credited here ([`super::Order::refunded`]),
    /// and the money given back, filed when they were made (calendar view).
    pub const REFUND: &str = "refund\u{1f}";
    /// Orders by the funnel's leads (funnel-wide, calendar view).
    pub const PURCHASES: &str = "purchases";
    /// `unattributed␟DDD`: of those, orders with no touch in a lookback of DDD days or more,
    /// less those with one: the orders with no touch in a lookback of `L` days are the sum of
    /// these up to `L`.
    pub const UNATTRIBUTED: &str = "unattributed\u{1f}";
    /// `credit␟[[MODEL, CHANNEL, SOURCE, CAMPAIGN, CURRENCY], DAYS]`: what the share of orders
    /// (CURRENCY null) or of their revenue a touch earned under a model changes by when the
    /// lookback reaches DAYS days, in `total` (`n`: the orders it gets a share of from then
    /// on): its credit in a lookback of `L` days is the sum of these up to `L`.
    pub const CREDIT: &str = "credit\u{1f}";
    /// `mail␟TEMPLATE␟WHAT`: what happened to the emails of a template sent from the stage,
    /// filed under the day the run entered (entry view) or the email was queued (calendar):
    /// WHAT is one of [`super::mail`]'s names, `link␟NAME` (emails with that link clicked),
    /// `reached␟STAGE` (emails whose run entered that stage for the first time after them) or
    /// `link␟NAME␟reached␟STAGE` (both).
    pub const MAIL: &str = "mail\u{1f}";
    /// `ab␟STEP␟TEMPLATE␟WHAT`: the A/B figures of the emails a `split` step sent from the
    /// stage ([`super::mark::VARIANT`]), filed like the per-email counters (the run's entry, or the day the email was queued): WHAT
    /// is one of [`super::ab`]'s names.
    pub const AB: &str = "ab\u{1f}";
}

/// What the A/B counters of a step's template name. The unit is the run's first email of
/// the step ([`super::mark::FIRST`]): a run that loops back to the step is one run.
pub mod ab {
    /// Every email of the step with this template.
    pub const SENDS: &str = "sends";
    /// Runs whose first email of the step had this template.
    pub const RUNS: &str = "runs";
    /// Of them, those whose first email of the step was clicked.
    pub const CLICKED: &str = "clicked";
    /// `reached␟STAGE`: those whose run entered the stage for the first time after it.
    pub const REACHED: &str = "reached\u{1f}";
    /// `buy␟PRODUCT␟CURRENCY`: orders (and their total) credited to the email's stage of the
    /// run after it was queued; `unpriced␟PRODUCT`: those with no amount.
    pub const BUY: &str = "buy\u{1f}";
    pub const UNPRICED: &str = "unpriced\u{1f}";
}

/// What can happen to an email, as the per-email counters name it.
pub mod mail {
    /// Queued for its lead (each send once).
    pub const QUEUED: &str = "queued";
    /// Accepted by the relay (or written to the outbox folder).
    pub const ACCEPTED: &str = "accepted";
    /// Given up on (a permanent refusal, or the last attempt).
    pub const FAILED: &str = "failed";
    pub const OPENED: &str = "opened";
    pub const CLICKED: &str = "clicked";
    /// Its lead unsubscribed before the funnel sent another email.
    pub const UNSUBSCRIBED: &str = "unsubscribed";
    pub const BOUNCED: &str = "bounced";
    pub const COMPLAINED: &str = "complained";
    /// `link␟NAME`: a link of that name was clicked in it; `link␟NAME␟reached␟STAGE`: that,
    /// and its run entered the stage for the first time after it was queued.
    pub const LINK: &str = "link\u{1f}";
    /// `reached␟STAGE`: its run entered that stage for the first time after it was queued
    /// (later than the instant it was queued).
    pub const REACHED: &str = "reached\u{1f}";

    /// The name of the counter of emails whose run went on to `stage`.
    pub fn reached(stage: &str) -> String {
        format!("{REACHED}{stage}")
    }
}

/// A counter: one figure of a funnel, for one day (or period), one view and one origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub funnel: String,
    pub view: View,
    /// Days since 1970-01-01 (UTC), or the index of a period when replaying rows.
    pub day: i64,
    /// Where the run's lead came from ([`origin`]), or [`ALL`].
    pub origin: String,
    /// A stage id, or [`FUNNEL`].
    pub stage: String,
    pub metric: String,
}

/// An amount kept exact: whole millionths of a unit (of a currency, or of one order's
/// credit), so the same facts sum to the same figure in whatever order they are added — the
/// counters kept as facts are written and those made again from the rows agree to the unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl Micros {
    /// The nearest amount to `x` units.
    pub fn of(x: f64) -> Micros {
        Micros((x * 1e6).round() as i64)
    }

    /// In units.
    pub fn units(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// A counter's value: how many, and a sum of money (or of credit) for orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    pub n: i64,
    pub total: Micros,
}

impl Sum {
    pub fn add(&mut self, other: Sum) {
        self.n += other.n;
        self.total.0 += other.total.0;
    }
}

/// The run a fact belongs to, as the counters see it.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub funnel: &'a str,
    pub entered_at: DateTime<Utc>,
    /// The run's [`origin`].
    pub origin: &'a str,
}

/// What a run's lead came from — the first touch's channel, source, medium, campaign and form
/// — as one text (a JSON array), so runs can be counted per origin and sliced by any part.
pub fn origin(parts: [Option<&str>; 5]) -> String {
    serde_json::to_string(&parts.map(|p| p.map(key_part))).unwrap_or_default()
}

/// The most bytes of a text from outside (a touch's UTM parameter, a kept field's value, a
/// product) a counter's key holds: PostgreSQL refuses to index a key of more than about 2,700
/// bytes, and with every such part of an origin and a metric cut to this, a key stays under it
/// whatever the texts (a UTM parameter may hold 200 characters of four bytes each).
pub const KEY_PART_BYTES: usize = 100;

/// `text` cut to at most [`KEY_PART_BYTES`] bytes, at a character's end.
pub fn key_part(text: &str) -> &str {
    let mut end = text.len().min(KEY_PART_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An [`origin`] that also holds, after its five parts, the values of the lead fields the
/// counters are kept by (`report_fields`) as the run's lead had them when it entered, so a
/// report sliced by one of them reads the counters ([`origin_field`]). Without such fields it
/// is the plain [`origin`].
/// A kept field's value is kept to its first [`KEY_PART_BYTES`] bytes: a counter's key holds
/// it (a lead field may hold 2,000 characters).
pub fn origin_with(parts: [Option<&str>; 5], fields: &[(&str, Option<String>)]) -> String {
    if fields.is_empty() {
        return origin(parts);
    }
    let kept: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(name, v)| {
            let v = v.as_deref().map(key_part);
            (name.to_string(), v.into())
        })
        .collect();
    let mut items: Vec<serde_json::Value> = parts.iter().map(|p| p.map(key_part).into()).collect();
    items.push(kept.into());
    serde_json::to_string(&items).unwrap_or_default()
}

/// The value of a kept lead field in an [`origin_with`] (none when the lead had none).
pub fn origin_field(text: &str, name: &str) -> Option<String> {
    let serde_json::Value::Array(mut items) = serde_json::from_str(text).ok()? else {
        return None;
    };
    match items.get_mut(5)?.get_mut(name)?.take() {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// The origin of a run that has got its first A/B variant — the template of its first email
/// of a `split` step — kept after the five parts and the kept fields, so a report sliced by the
/// variant reads the counters ([`origin_variant`]). When the variant comes, the run's counters
/// move from its origin before to this one.
pub fn with_variant(origin: &str, template: &str) -> String {
    let mut items = match serde_json::from_str(origin) {
        Ok(serde_json::Value::Array(items)) => items,
        _ => Vec::new(),
    };
    items.resize(5.max(items.len()), serde_json::Value::Null);
    if items.len() == 5 {
        items.push(serde_json::Map::new().into());
    }
    items.truncate(6);
    items.push(template.into());
    serde_json::to_string(&items).unwrap_or_default()
}

/// The A/B variant an origin holds ([`with_variant`]): none for a run not sent one yet.
pub fn origin_variant(text: &str) -> Option<String> {
    let serde_json::Value::Array(mut items) = serde_json::from_str(text).ok()? else {
        return None;
    };
    match items.get_mut(6)?.take() {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// A lead field's value as a report slices by it: text as it is, other values as JSON; none
/// for an empty text, null or no value.
pub fn field_value(
    fields: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<String> {
    match fields.get(name)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Null | serde_json::Value::String(_) => None,
        v => Some(v.to_string()),
    }
}

/// What of the runs' origins a report tells apart: the parts of the first touch, the kept
/// fields (`None`: every one) and the A/B variant its slices read. Origins that differ only
/// in what it does not read are one to it ([`Apart::fold`]): a report by `utm_source` sums
/// 8 sources as it reads, not 120 origins and then their sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apart {
    pub touch: [bool; 5],
    pub fields: Option<Vec<String>>,
    pub variant: bool,
}

/// Nothing told apart: every origin is one.
impl Default for Apart {
    fn default() -> Apart {
        Apart {
            touch: [false; 5],
            fields: Some(Vec::new()),
            variant: false,
        }
    }
}

impl Apart {
    /// Every origin apart, whole.
    pub const EVERY: Apart = Apart {
        touch: [true; 5],
        fields: None,
        variant: true,
    };

    /// `origin` with what is not told apart left out: an origin text still, whose touch
    /// parts, kept fields and variant that are told apart read as in `origin`
    /// ([`origin_parts`], [`origin_field`], [`origin_variant`]). [`ALL`] and a text that
    /// is not an origin stay as they are.
    pub fn fold(&self, origin: &str) -> String {
        use serde_json::Value;
        if origin == ALL || *self == Apart::EVERY {
            return origin.to_string();
        }
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(origin) else {
            return origin.to_string();
        };
        let mut out: Vec<Value> = (0..5)
            .map(|i| match items.get(i) {
                Some(v) if self.touch[i] => v.clone(),
                _ => Value::Null,
            })
            .collect();
        let fields: serde_json::Map<String, Value> = match items.get(5) {
            Some(Value::Object(m)) => m
                .iter()
                .filter(|(k, _)| self.fields.as_ref().is_none_or(|names| names.contains(k)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => serde_json::Map::new(),
        };
        let variant = items.get(6).filter(|_| self.variant).cloned();
        match variant {
            Some(v) if !v.is_null() => {
                out.push(fields.into());
                out.push(v);
            }
            _ if !fields.is_empty() => out.push(fields.into()),
            _ => {}
        }
        serde_json::to_string(&out).unwrap_or_default()
    }
}

/// The five parts of an [`origin`] (none for a text that is not one).
pub fn origin_parts(text: &str) -> [Option<String>; 5] {
    let mut out: [Option<String>; 5] = Default::default();
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) {
        for (o, v) in out.iter_mut().zip(items) {
            *o = v.as_str().map(str::to_string);
        }
    }
    out
}

/// Durations are kept on a grid that grows with them — the second under a minute, the minute
/// under an hour, 5 minutes under 6 hours, 15 minutes under a day, the hour under 4 days,
/// 3 hours under 2 weeks, 12 hours under 60 days, the day beyond — so a day's visits need a
/// few hundred counters at most, and round waits (`30m`, `2d`, `1w`) stay exact.
pub fn quantize(secs: i64) -> i64 {
    const GRID: [(i64, i64); 8] = [
        (60, 1),
        (3_600, 60),
        (6 * 3_600, 300),
        (86_400, 900),
        (4 * 86_400, 3_600),
        (14 * 86_400, 3 * 3_600),
        (60 * 86_400, 12 * 3_600),
        (i64::MAX, 86_400),
    ];
    let s = secs.max(0);
    let step = GRID
        .iter()
        .find(|(under, _)| s < *under)
        .map_or(86_400, |g| g.1);
    s - s % step
}

/// The days since 1970-01-01 of a time (UTC).
pub fn day_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}

/// The days since 1970-01-01 of the date a time falls on in `tz`.
pub fn day_in(t: DateTime<Utc>, tz: chrono_tz::Tz) -> i64 {
    if tz == chrono_tz::UTC {
        return day_of(t);
    }
    let date = t.with_timezone(&tz).date_naive();
    (date - chrono::NaiveDate::default()).num_days()
}

/// Keeps a text out of the counters' separators.
fn clean(text: &str, out: &mut String) {
    if text.contains('\u{1f}') {
        out.push_str(&text.replace('\u{1f}', " "));
    } else {
        out.push_str(text);
    }
}

/// A counter's name, typed; written as text only when it is numbered ([`Metric::write`]).
#[derive(Debug, Clone, Copy)]
enum Metric<'a> {
    /// One of [`metric`]'s plain names, or a score milestone's kind (`mql`).
    Plain(&'a str),
    Length(i64),
    Next(&'a str),
    /// The outcome (`converted`), from an exit reason `exit: OUTCOME`.
    Exit(&'a str),
    Time(i64),
    With(&'a str),
    Buy {
        product: &'a str,
        currency: &'a str,
    },
    Unpriced(&'a str),
    Refund {
        product: &'a str,
        currency: &'a str,
    },
    Credit {
        model: &'static str,
        touch: &'a Touch<'a>,
        currency: Option<&'a str>,
        /// The lookback in days from which the change counts.
        from: u16,
    },
    /// Orders with no touch in the lookback, from a lookback of this many days.
    Unattributed(u16),
    Mail {
        template: &'a str,
        what: MailWhat<'a>,
    },
    Ab {
        step: &'a str,
        template: &'a str,
        what: AbWhat<'a>,
    },
}

/// What an A/B counter counts ([`ab`]).
#[derive(Debug, Clone, Copy)]
enum AbWhat<'a> {
    Sends,
    Runs,
    Clicked,
    Reached(&'a str),
    Buy { product: &'a str, currency: &'a str },
    Unpriced(&'a str),
}

impl Metric<'_> {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        match *self {
            Metric::Plain(m) => out.push_str(m),
            Metric::Length(s) => {
                let _ = write!(out, "{}{s}", metric::LENGTH);
            }
            Metric::Next(stage) => {
                out.push_str(metric::NEXT);
                out.push_str(stage);
            }
            Metric::Exit(reason) => {
                out.push_str(metric::EXIT);
                out.push_str(reason.strip_prefix("exit: ").unwrap_or(reason));
            }
            Metric::Time(s) => {
                let _ = write!(out, "{}{s}", metric::TIME);
            }
            Metric::With(stage) => {
                out.push_str(metric::WITH);
                out.push_str(stage);
            }
            Metric::Buy { product, currency } => {
                out.push_str(metric::BUY);
                clean(key_part(product), out);
                out.push('\u{1f}');
                clean(currency, out);
            }
            Metric::Unpriced(product) => {
                out.push_str(metric::UNPRICED);
                clean(key_part(product), out);
            }
            Metric::Refund { product, currency } => {
                out.push_str(metric::REFUND);
                clean(key_part(product), out);
                out.push('\u{1f}');
                clean(currency, out);
            }
            Metric::Unattributed(from) => {
                let _ = write!(out, "{}{from:03}", metric::UNATTRIBUTED);
            }
            Metric::Credit {
                model,
                touch,
                currency,
                from,
            } => {
                let mut cur = String::new();
                if let Some(c) = currency {
                    clean(c, &mut cur);
                }
                let parts = [
                    Some(model),
                    Some(key_part(touch.channel)),
                    touch.source.map(key_part),
                    touch.campaign.map(key_part),
                    currency.map(|_| key_part(&cur)),
                ];
                out.push_str(metric::CREDIT);
                out.push_str(&serde_json::to_string(&(parts, from)).unwrap_or_default());
            }
            Metric::Mail { template, what } => {
                out.push_str(metric::MAIL);
                clean(template, out);
                out.push('\u{1f}');
                match what {
                    MailWhat::Queued => out.push_str(mail::QUEUED),
                    MailWhat::Accepted => out.push_str(mail::ACCEPTED),
                    MailWhat::Failed => out.push_str(mail::FAILED),
                    MailWhat::Marked(bit) => {
                        let name = mark::ALL.iter().find(|(b, _)| *b == bit);
                        out.push_str(name.map_or("", |(_, n)| n));
                    }
                    MailWhat::Link(name) => {
                        out.push_str(mail::LINK);
                        clean(name, out);
                    }
                    MailWhat::Reached(stage) => {
                        out.push_str(mail::REACHED);
                        out.push_str(stage);
                    }
                    MailWhat::LinkReached { link, stage } => {
                        out.push_str(mail::LINK);
                        clean(link, out);
                        out.push('\u{1f}');
                        out.push_str(mail::REACHED);
                        out.push_str(stage);
                    }
                }
            }
            Metric::Ab {
                step,
                template,
                what,
            } => {
                out.push_str(metric::AB);
                clean(step, out);
                out.push('\u{1f}');
                clean(template, out);
                out.push('\u{1f}');
                match what {
                    AbWhat::Sends => out.push_str(ab::SENDS),
                    AbWhat::Runs => out.push_str(ab::RUNS),
                    AbWhat::Clicked => out.push_str(ab::CLICKED),
                    AbWhat::Reached(stage) => {
                        out.push_str(ab::REACHED);
                        out.push_str(stage);
                    }
                    AbWhat::Buy { product, currency } => {
                        out.push_str(ab::BUY);
                        clean(key_part(product), out);
                        out.push('\u{1f}');
                        clean(currency, out);
                    }
                    AbWhat::Unpriced(product) => {
                        out.push_str(ab::UNPRICED);
                        clean(key_part(product), out);
                    }
                }
            }
        }
    }
}

/// Where counters are filed: by day (as stored), or into the periods of a report (facts
/// outside every period are left out).
#[derive(Debug, Clone)]
enum Filing {
    /// Days of this zone.
    Days(chrono_tz::Tz),
    Periods(Vec<(DateTime<Utc>, DateTime<Utc>)>),
}

/// A counter's key with its texts numbered: (view, day, funnel, origin, stage, metric).
type Slot = (View, i64, u32, u32, u32, u32);

/// Counters being summed.
#[derive(Debug, Clone)]
pub struct Tally {
    filing: Filing,
    /// Whether to add each counter to the run's origin as well as to [`ALL`].
    origins: bool,
    /// Each text of the keys once: a million runs add tens of millions of counters, and
    /// numbered texts keep that to hashing small keys.
    numbers: FxHashMap<String, u32>,
    texts: Vec<String>,
    sums: FxHashMap<Slot, Sum>,
    /// The number of [`ALL`], the origin every counter is also added to.
    all: u32,
    /// Where a metric's name is written before it is numbered.
    name: String,
    /// Only what happened within this long of its run's entry is counted (a report with a
    /// conversion window, from the rows).
    within: Option<Duration>,
    /// Only this view is counted (a report reading no other), when given.
    only: Option<View>,
}

impl Tally {
    fn new(filing: Filing, origins: bool) -> Tally {
        let mut t = Tally {
            filing,
            origins,
            numbers: FxHashMap::default(),
            texts: Vec::new(),
            sums: FxHashMap::default(),
            all: 0,
            name: String::new(),
            within: None,
            only: None,
        };
        t.all = t.number(ALL);
        t
    }

    /// Counters per day of `zone`, for all runs and per origin: what the store keeps.
    pub fn by_day(zone: chrono_tz::Tz) -> Tally {
        Tally::new(Filing::Days(zone), true)
    }

    /// Counters per period (the key's `day` is the period's index), for all runs and, when
    /// `origins`, per origin.
    pub fn in_periods(periods: Vec<(DateTime<Utc>, DateTime<Utc>)>, origins: bool) -> Tally {
        Tally::new(Filing::Periods(periods), origins)
    }

    /// Counts only what happened within `window` of its run's entry: the rows as they stood
    /// that long after each run entered (a stage left later is still there).
    pub fn within(mut self, window: Duration) -> Tally {
        self.within = Some(window);
        self
    }

    /// Counts `view` only: a report of entry cohorts reads nothing of the calendar view.
    pub fn only(mut self, view: View) -> Tally {
        self.only = Some(view);
        self
    }

    fn slot(&self, t: DateTime<Utc>) -> Option<i64> {
        match &self.filing {
            Filing::Days(zone) => Some(day_in(t, *zone)),
            Filing::Periods(ps) => {
                // Periods are in order and do not overlap.
                let i = ps.partition_point(|(_, b)| *b <= t);
                ps.get(i).filter(|(a, _)| t >= *a).map(|_| i as i64)
            }
        }
    }

    fn number(&mut self, text: &str) -> u32 {
        if let Some(n) = self.numbers.get(text) {
            return *n;
        }
        let n = self.texts.len() as u32;
        self.texts.push(text.to_string());
        self.numbers.insert(text.to_string(), n);
        n
    }

    /// The counters, in key order.
    pub fn counters(&self) -> Vec<(Key, Sum)> {
        let text = |n: u32| self.texts[n as usize].clone();
        let mut out: Vec<(Key, Sum)> = self
            .sums
            .iter()
            .map(|((view, day, funnel, origin, stage, metric), s)| {
                let key = Key {
                    funnel: text(*funnel),
                    view: *view,
                    day: *day,
                    origin: text(*origin),
                    stage: text(*stage),
                    metric: text(*metric),
                };
                (key, *s)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether no counter has been added.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        run: &Run,
        view: View,
        at: DateTime<Utc>,
        stage: &str,
        metric: Metric,
        n: i64,
        total: Micros,
    ) {
        self.add_in(run, &[view], (at, at), stage, metric, n, total);
    }

    /// [`Tally::add`] in each of `views`, the texts numbered once. `at` is (the time the
    /// calendar view files it under, the time it happened): they differ for a visit that stops
    /// being open, filed in the period it began and happening when it ends.
    #[allow(clippy::too_many_arguments)]
    fn add_in(
        &mut self,
        run: &Run,
        views: &[View],
        at: (DateTime<Utc>, DateTime<Utc>),
        stage: &str,
        metric: Metric,
        n: i64,
        total: Micros,
    ) {
        let (at, happened) = at;
        if self.within.is_some_and(|w| happened > run.entered_at + w) {
            return;
        }
        // What the store keeps of the entry view is kept by the days and by the hours after
        // entry too, for conversion windows; and all runs' counters by the hour as well as by
        // the day.
        let stored = matches!(self.filing, Filing::Days(_));
        let after = |units: i64, most: u16, view: fn(u16) -> View| {
            u16::try_from(units).ok().filter(|u| *u <= most).map(view)
        };
        let afters = [
            stored
                .then(|| {
                    after(
                        days_after(run.entered_at, happened),
                        WITHIN_DAYS,
                        View::Within,
                    )
                })
                .flatten(),
            stored
                .then(|| {
                    after(
                        hours_after(run.entered_at, happened),
                        WITHIN_HOURS,
                        View::WithinHours,
                    )
                })
                .flatten(),
        ];
        let mut name = std::mem::take(&mut self.name);
        name.clear();
        metric.write(&mut name);
        let (funnel, stage, metric) = (
            self.number(run.funnel),
            self.number(stage),
            self.number(&name),
        );
        self.name = name;
        let origin = (self.origins && !run.origin.is_empty()).then(|| self.number(run.origin));
        for &view in views.iter().filter(|v| self.only.is_none_or(|o| o == **v)) {
            let t = match view {
                View::Calendar => at,
                _ => run.entered_at,
            };
            let Some(day) = self.slot(t) else {
                continue;
            };
            if let Some(origin) = origin {
                let own = (view, day, funnel, origin, stage, metric);
                self.sums.entry(own).or_default().add(Sum { n, total });
            }
            let key = (view, day, funnel, self.all, stage, metric);
            self.sums.entry(key).or_default().add(Sum { n, total });
            if let Some(hourly) = view.by_hour().filter(|_| stored) {
                let key = (hourly, hour_of(t), funnel, self.all, stage, metric);
                self.sums.entry(key).or_default().add(Sum { n, total });
            }
            // The calendar view by the days after entry, all runs together.
            if let (View::Calendar, Some(View::Within(d))) = (view, afters[0]) {
                let key = (
                    View::CalendarWithin(d),
                    day,
                    funnel,
                    self.all,
                    stage,
                    metric,
                );
                self.sums.entry(key).or_default().add(Sum { n, total });
            }
            if view == View::Entry {
                for within in afters.into_iter().flatten() {
                    // The days after entry per origin as well (the hours after entry are kept
                    // by the hour, for all runs together only).
                    if let (Some(origin), View::Within(_)) = (origin, within) {
                        let own = (within, day, funnel, origin, stage, metric);
                        self.sums.entry(own).or_default().add(Sum { n, total });
                    }
                    let key = (within, day, funnel, self.all, stage, metric);
                    self.sums.entry(key).or_default().add(Sum { n, total });
                }
            }
        }
    }

    fn both(&mut self, run: &Run, at: DateTime<Utc>, stage: &str, metric: Metric, n: i64) {
        self.add_in(run, &BOTH, (at, at), stage, metric, n, Micros(0));
    }

    /// Every counter turned round: what to add to take these facts back out.
    pub fn negated(mut self) -> Tally {
        for s in self.sums.values_mut() {
            s.n = -s.n;
            s.total.0 = -s.total.0;
        }
        self
    }
}

/// What a write stored, as the counters see it. Each write transaction makes these from the
/// rows it wrote (its `RETURNING` rows), a replay of stored rows makes the same ones, and
/// [`Tally::count`] alone turns them into counters.
#[derive(Debug, Clone)]
pub enum Fact<'a> {
    /// A run entered the funnel (waiting for the double opt-in click when `unconfirmed`).
    Entered { run: Run<'a>, unconfirmed: bool },
    /// A run that was waiting for the double opt-in click is not any more.
    Confirmed { run: Run<'a> },
    /// A run entered `stage` at `at`; `first` holds, when it had never entered it before, the
    /// other stages it had reached ([`Reached::enter`]).
    Opened {
        run: Run<'a>,
        stage: &'a str,
        at: DateTime<Utc>,
        first: Option<Vec<String>>,
    },
    /// A run left `stage` (entered at `entered`) at `at`, for `next` or by `reason`
    /// (`exit: OUTCOME`, …).
    Closed {
        run: Run<'a>,
        stage: &'a str,
        entered: DateTime<Utc>,
        at: DateTime<Utc>,
        next: Option<&'a str>,
        reason: Option<&'a str>,
    },
    /// A run's lead crossed a score threshold (`mql`, `sql`) for the first time in the run
    /// ([`Reached::cross`]).
    Milestone {
        run: Run<'a>,
        kind: &'a str,
        at: DateTime<Utc>,
    },
    /// A run exited `converted` at `at`.
    Converted { run: Run<'a>, at: DateTime<Utc> },
    /// An order credited to a stage of a run ([`order_facts`]).
    Bought {
        run: Run<'a>,
        stage: &'a str,
        order: Order<'a>,
    },
    /// An order by a lead of `funnel`, shared among the lead's `touches` (oldest first) in
    /// every lookback up to [`LOOKBACK_DAYS`], by every model ([`order_facts`]).
    Ordered {
        funnel: &'a str,
        order: Order<'a>,
        touches: &'a [Touch<'a>],
    },
    /// An order credited to a stage of a run ([`order_facts`]) after the run's first email of
    /// a step there was queued: what that email's template (its A/B variant) brought.
    BoughtAfter {
        run: Run<'a>,
        mail: Mail<'a>,
        order: Order<'a>,
    },
    /// `what` happened to an email of `run` at `at` (`n` = 1), or is taken back (`n` = −1):
    /// filed under the email's queueing (its run's entry, in the entry view), and by when it
    /// happened under the days after the run's entry, for conversion windows. Its queueing,
    /// outcome and run are when it was queued; a mark or a link, the event that first left it;
    /// a stage reached, the run's first entry there; a link and a stage, the later of the two.
    Mail {
        run: Run<'a>,
        mail: Mail<'a>,
        what: MailWhat<'a>,
        at: DateTime<Utc>,
        n: i64,
    },
}

/// What happened to an email, as its counters name it ([`mail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailWhat<'a> {
    Queued,
    Accepted,
    Failed,
    /// A tracked event left this [`mark`] on it.
    Marked(i64),
    /// The link of this name was clicked in it.
    Link(&'a str),
    /// Its run entered this stage for the first time after it ([`reached_by`]).
    Reached(&'a str),
    /// Both: the link of this name was clicked in it, and its run reached this stage.
    LinkReached {
        link: &'a str,
        stage: &'a str,
    },
}

impl MailWhat<'_> {
    /// What an outbox status says of an email besides its being queued: `sent` is accepted,
    /// `failed` failed; any other status says nothing more.
    pub fn of_status(status: &str) -> Option<MailWhat<'static>> {
        match status {
            "sent" => Some(MailWhat::Accepted),
            "failed" => Some(MailWhat::Failed),
            _ => None,
        }
    }
}

impl Tally {
    /// Adds what a fact adds to the counters: the one place a counter is made.
    pub fn count(&mut self, fact: &Fact) {
        use View::Entry;
        match fact {
            Fact::Entered { run, unconfirmed } => {
                let at = run.entered_at;
                self.add(
                    run,
                    Entry,
                    at,
                    FUNNEL,
                    Metric::Plain(metric::ENTERED),
                    1,
                    Micros(0),
                );
                if *unconfirmed {
                    let m = Metric::Plain(metric::UNCONFIRMED);
                    self.add(run, Entry, at, FUNNEL, m, 1, Micros(0));
                }
            }
            Fact::Confirmed { run } => {
                let m = Metric::Plain(metric::UNCONFIRMED);
                self.add(run, Entry, run.entered_at, FUNNEL, m, -1, Micros(0));
            }
            Fact::Opened {
                run,
                stage,
                at,
                first,
            } => {
                if let Some(others) = first {
                    self.both(run, *at, stage, Metric::Plain(metric::IN), 1);
                    for other in others.iter().filter(|s| s != stage) {
                        self.add(run, Entry, *at, stage, Metric::With(other), 1, Micros(0));
                    }
                }
                self.both(run, *at, stage, Metric::Plain(metric::OPEN), 1);
            }
            Fact::Closed {
                run,
                stage,
                entered,
                at,
                next,
                reason,
            } => {
                let way = match (next, reason) {
                    (Some(n), _) => Metric::Next(n),
                    (None, Some(r)) => Metric::Exit(r),
                    (None, None) => Metric::Exit("unknown"),
                };
                let time = Metric::Time(quantize((*at - *entered).num_seconds()));
                let open = Metric::Plain(metric::OPEN);
                // A visit's calendar counters: it stops being open in the period it began
                // (so a period's open visits are those it opened and nobody has closed), and
                // its way out and its length count in the period it ended.
                self.add_in(run, &BOTH, (*entered, *at), stage, open, -1, Micros(0));
                for m in [way, time] {
                    self.add_in(run, &BOTH, (*at, *at), stage, m, 1, Micros(0));
                }
            }
            Fact::Milestone { run, kind, at } => {
                self.both(run, *at, FUNNEL, Metric::Plain(kind), 1);
            }
            Fact::Converted { run, at } => {
                let len = Metric::Length(quantize((*at - run.entered_at).num_seconds()));
                for m in [Metric::Plain(metric::CONVERTED), len] {
                    self.add_in(run, &BOTH, (*at, *at), FUNNEL, m, 1, Micros(0));
                }
            }
            Fact::Bought { run, stage, order } => {
                if let Some(at) = order.refunded {
                    let m = Metric::Refund {
                        product: order.product,
                        currency: order.currency,
                    };
                    let total = Micros(order.amount.map_or(0, |a| a.0));
                    self.add_in(run, &BOTH, (at, at), stage, m, 1, total);
                    return;
                }
                let (m, total) = match order.amount {
                    Some(a) => {
                        let m = Metric::Buy {
                            product: order.product,
                            currency: order.currency,
                        };
                        (m, Micros(a.0))
                    }
                    None => (Metric::Unpriced(order.product), Micros(0)),
                };
                self.add_in(run, &BOTH, (order.at, order.at), stage, m, 1, total);
            }
            Fact::Ordered {
                funnel,
                order,
                touches,
            } => self.attribute(funnel, order, touches),
            Fact::Mail {
                run,
                mail,
                what,
                at: happened,
                n,
            } => {
                // Email counters are kept for all runs together only (the per-email report is
                // not sliced by origin), which keeps them few.
                let run = Run {
                    origin: ALL,
                    ..*run
                };
                let m = Metric::Mail {
                    template: mail.template,
                    what: *what,
                };
                let (at, stage) = ((mail.queued_at, *happened), mail.stage);
                self.add_in(&run, &BOTH, at, stage, m, *n, Micros(0));
                // The A/B counters of a split: every email, and what came of the run's first.
                let Some(step) = mail.step.filter(|_| mail.variant) else {
                    return;
                };
                let ab = |what| Metric::Ab {
                    step,
                    template: mail.template,
                    what,
                };
                let first = |w| mail.first.then_some(w);
                let whats: [Option<AbWhat>; 2] = match *what {
                    MailWhat::Queued => [Some(AbWhat::Sends), first(AbWhat::Runs)],
                    MailWhat::Marked(mark::CLICKED) => [first(AbWhat::Clicked), None],
                    MailWhat::Reached(s) => [first(AbWhat::Reached(s)), None],
                    _ => [None, None],
                };
                for w in whats.into_iter().flatten() {
                    self.add_in(&run, &BOTH, at, stage, ab(w), *n, Micros(0));
                }
            }
            Fact::BoughtAfter { run, mail, order } => {
                let Some(step) = mail.step.filter(|_| mail.variant) else {
                    return;
                };
                let run = Run {
                    origin: ALL,
                    ..*run
                };
                let (what, total) = match order.amount {
                    Some(a) => {
                        let w = AbWhat::Buy {
                            product: order.product,
                            currency: order.currency,
                        };
                        (w, Micros(a.0))
                    }
                    None => (AbWhat::Unpriced(order.product), Micros(0)),
                };
                let m = Metric::Ab {
                    step,
                    template: mail.template,
                    what,
                };
                let at = (mail.queued_at, order.at);
                self.add_in(&run, &BOTH, at, mail.stage, m, 1, total);
            }
        }
    }

    /// An order shared among the touches before it; a refund takes its money back off the
    /// same touches, in the period it was made. The shares of every lookback up to
    /// [`LOOKBACK_DAYS`] at once: from the shortest that holds any touch, each lookback that
    /// takes in another one changes them, and each change is counted under the days it takes
    /// (the counters of a lookback are those of the days up to it, summed).
    fn attribute(&mut self, funnel: &str, o: &Order, touches: &[Touch]) {
        let when = o.refunded.unwrap_or(o.at);
        let run = Run {
            funnel,
            entered_at: when,
            origin: ALL,
        };
        let refund = o.refunded.is_some();
        let mut add = |m: Metric, n: i64, total: Micros| {
            if n != 0 || total.0 != 0 {
                self.add(&run, View::Calendar, when, FUNNEL, m, n, total)
            }
        };
        if !refund {
            add(Metric::Plain(metric::PURCHASES), 1, Micros(0));
        }
        // Each touch before the order with the shortest lookback that holds it, oldest first.
        let before: Vec<(u16, &Touch)> = touches
            .iter()
            .filter(|t| t.at <= o.at)
            .filter_map(|t| {
                let days = u16::try_from(days_after(t.at, o.at)).ok()?;
                (days <= LOOKBACK_DAYS).then_some((days, t))
            })
            .collect();
        let mut lookbacks: Vec<u16> = before.iter().map(|(d, _)| *d).collect();
        lookbacks.sort_unstable();
        lookbacks.dedup();
        if !refund {
            add(Metric::Unattributed(0), 1, Micros(0));
            if let Some(first) = lookbacks.first() {
                add(Metric::Unattributed(*first), -1, Micros(0));
            }
        }
        for (name, model) in Model::ALL {
            // Each touch's share (of the order, of its amount) in the lookback before.
            let mut had: Vec<Option<(Micros, Micros)>> = vec![None; before.len()];
            for &from in &lookbacks {
                let held: Vec<usize> = (0..before.len()).filter(|i| before[*i].0 <= from).collect();
                let ages: Vec<Duration> = held.iter().map(|i| o.at - before[*i].1.at).collect();
                for (&i, share) in held.iter().zip(weights(model, &ages)) {
                    let touch = before[i].1;
                    let credit = |currency| Metric::Credit {
                        model: name,
                        touch,
                        currency,
                        from,
                    };
                    let money = o
                        .amount
                        .map_or(Micros(0), |a| Micros((share * a.0 as f64).round() as i64));
                    let now = (Micros::of(share), money);
                    let (then, new) = match had[i] {
                        Some(t) => (t, 0),
                        None => ((Micros(0), Micros(0)), 1),
                    };
                    had[i] = Some(now);
                    if !refund {
                        add(credit(None), new, Micros(now.0.0 - then.0.0));
                    }
                    if o.amount.is_some() {
                        let change = now.1.0 - then.1.0;
                        if refund {
                            add(credit(Some(o.currency)), 0, Micros(-change));
                        } else {
                            add(credit(Some(o.currency)), new, Micros(change));
                        }
                    }
                }
            }
        }
    }
}

/// What a run has reached: the stages it entered, the score milestones it crossed (`@mql`)
/// and the steps it sent an email from (`#STAGE/STEP`), as the store keeps it
/// (comma-separated, in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached(Vec<String>);

impl Reached {
    pub fn parse(text: &str) -> Reached {
        Reached(
            text.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// Adds `item`; `false` when it was there already.
    fn insert(&mut self, item: &str) -> bool {
        if self.0.iter().any(|s| s == item) {
            return false;
        }
        self.0.push(item.to_string());
        true
    }

    /// The run enters `stage`: when it is the first time, the other stages it had reached
    /// (for [`Fact::Opened`]).
    pub fn enter(&mut self, stage: &str) -> Option<Vec<String>> {
        if !self.insert(stage) {
            return None;
        }
        Some(
            self.stages()
                .filter(|s| *s != stage)
                .map(str::to_string)
                .collect(),
        )
    }

    /// The run's lead crosses the score threshold `kind`: `true` the first time in the run.
    pub fn cross(&mut self, kind: &str) -> bool {
        self.insert(&format!("@{kind}"))
    }

    /// The run sends a split's email from `step` of `stage`: `true` the first time in the run.
    pub fn send(&mut self, stage: &str, step: &str) -> bool {
        self.insert(&format!("#{stage}/{step}"))
    }

    /// The stages reached, in order.
    pub fn stages(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with(['@', '#']))
    }

    pub fn text(&self) -> String {
        self.0.join(",")
    }
}

/// The counters of one report, summed over its period for one origin: view → stage → metric
/// → sum (nested, so a counter already there is found by its texts without copying them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures(BTreeMap<View, BTreeMap<String, BTreeMap<String, Sum>>>);

impl Figures {
    pub fn add(&mut self, view: View, stage: &str, metric: &str, s: Sum) {
        let stages = self.0.entry(view).or_default();
        let metrics = match stages.get_mut(stage) {
            Some(m) => m,
            None => stages.entry(stage.to_string()).or_default(),
        };
        match metrics.get_mut(metric) {
            Some(sum) => sum.add(s),
            None => {
                metrics.insert(metric.to_string(), s);
            }
        }
    }

    /// Adds another's counters to these.
    pub fn merge(&mut self, other: &Figures) {
        for (v, stages) in &other.0 {
            for (st, metrics) in stages {
                for (m, s) in metrics {
                    self.add(*v, st, m, *s);
                }
            }
        }
    }

    /// How many for one counter.
    pub fn n(&self, view: View, stage: &str, metric: &str) -> i64 {
        self.0
            .get(&view)
            .and_then(|s| s.get(stage))
            .and_then(|m| m.get(metric))
            .map_or(0, |s| s.n)
    }

    /// Every counter: (view, stage, metric, sum), in order.
    pub fn iter(&self) -> impl Iterator<Item = (View, &str, &str, Sum)> {
        self.0
            .keys()
            .flat_map(|v| self.of_view(*v).map(move |(st, m, s)| (*v, st, m, s)))
    }

    /// Every counter of one view: (stage, metric, sum), in order.
    pub fn of_view(&self, view: View) -> impl Iterator<Item = (&str, &str, Sum)> {
        self.0.get(&view).into_iter().flat_map(|stages| {
            stages.iter().flat_map(|(st, metrics)| {
                metrics
                    .iter()
                    .map(move |(m, s)| (st.as_str(), m.as_str(), *s))
            })
        })
    }

    /// The counters of a stage whose metric starts with `prefix`: (rest of the name, sum).
    pub fn with_prefix<'a>(
        &'a self,
        view: View,
        stage: &'a str,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, Sum)> + 'a {
        use std::ops::Bound;
        self.0
            .get(&view)
            .and_then(|s| s.get(stage))
            .into_iter()
            .flat_map(move |metrics| {
                metrics
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(move |(m, _)| m.starts_with(prefix))
                    .map(move |(m, s)| (&m[prefix.len()..], *s))
            })
    }

    /// The (value, count) pairs of a quantized distribution such as `time:`.
    pub fn histogram(&self, view: View, stage: &str, prefix: &str) -> Vec<(i64, u64)> {
        let mut out: Vec<(i64, u64)> = self
            .with_prefix(view, stage, prefix)
            .filter_map(|(v, s)| Some((v.parse().ok()?, u64::try_from(s.n).ok()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_unstable();
        out
    }
}

/// Sums a tally's counters per (day or period, origin) into [`Figures`].
pub fn figures(tally: &Tally) -> BTreeMap<(i64, String), Figures> {
    // By the numbers of the texts first: no key copied or sorted that `Figures` sorts anyway.
    let mut by: FxHashMap<(i64, u32), Figures> = FxHashMap::default();
    let text = |n: u32| tally.texts[n as usize].as_str();
    for ((view, day, _, origin, stage, metric), s) in &tally.sums {
        by.entry((*day, *origin))
            .or_default()
            .add(*view, text(*stage), text(*metric), *s);
    }
    by.into_iter()
        .map(|((day, origin), f)| ((day, text(origin).to_string()), f))
        .collect()
}

/// How a purchase's credit is shared among the touches before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// All to the first touch.
    #[serde(rename = "first")]
    FirstTouch,
    /// All to the last touch.
    #[serde(rename = "last")]
    LastTouch,
    /// Equal shares.
    Linear,
    /// Halved for every 7 days a touch came before the purchase.
    TimeDecay,
    /// 40 % to the first, 40 % to the last, 20 % shared by those between.
    #[serde(rename = "position")]
    PositionBased,
}

impl Model {
    pub const ALL: [(&'static str, Model); 5] = [
        ("first", Model::FirstTouch),
        ("last", Model::LastTouch),
        ("linear", Model::Linear),
        ("time_decay", Model::TimeDecay),
        ("position", Model::PositionBased),
    ];

    /// The model's name on the command line.
    pub fn name(self) -> &'static str {
        Model::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("linear")
    }

    pub fn parse(text: &str) -> Result<Model, String> {
        Model::ALL
            .iter()
            .find(|(n, _)| *n == text)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("no attribution model \"{text}\": use first, last, linear, time_decay or position")
            })
    }
}

/// Each touch's share of one conversion, in order; the shares sum to 1. `ages` are how long
/// before the purchase each touch came, oldest touch first.
pub fn weights(model: Model, ages: &[Duration]) -> Vec<f64> {
    let n = ages.len();
    if n == 0 {
        return Vec::new();
    }
    let raw: Vec<f64> = match model {
        Model::FirstTouch => (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
        Model::LastTouch => (0..n).map(|i| if i == n - 1 { 1.0 } else { 0.0 }).collect(),
        Model::Linear => vec![1.0; n],
        Model::TimeDecay => {
            let half_life = Duration::days(7).num_seconds() as f64;
            ages.iter()
                .map(|a| 0.5f64.powf(a.num_seconds().max(0) as f64 / half_life))
                .collect()
        }
        Model::PositionBased => match n {
            1 => vec![1.0],
            2 => vec![0.5, 0.5],
            _ => (0..n)
                .map(|i| {
                    if i == 0 || i == n - 1 {
                        0.4
                    } else {
                        0.2 / (n - 2) as f64
                    }
                })
                .collect(),
        },
    };
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

/// The lookback attribution shares orders among touches in when none is asked for.
pub const LOOKBACK: Duration = Duration::days(30);

/// The longest lookback, in days: the counters keep the shares of every lookback up to it.
pub const LOOKBACK_DAYS: u16 = 365;

/// A touch as attribution sees it.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    pub at: DateTime<Utc>,
    pub channel: &'a str,
    pub source: Option<&'a str>,
    pub campaign: Option<&'a str>,
}

/// An order as stored: product (empty for none), currency (`—` for none), amount (none when
/// the purchase gave none) and time.
#[derive(Debug, Clone, Copy)]
pub struct Order<'a> {
    pub product: &'a str,
    pub currency: &'a str,
    pub amount: Option<Money>,
    /// When it was bought: what decides the run, the stages and the touches it is credited to.
    pub at: DateTime<Utc>,
    /// A refund: when the money (`amount`, what was given back) was given back on this order.
    /// It is taken off what the purchase was credited to, in the period it was made.
    pub refunded: Option<DateTime<Utc>>,
}

impl<'a> Order<'a> {
    /// The order of a purchase's stored fields.
    pub fn of(
        product: Option<&'a str>,
        currency: Option<&'a str>,
        amount: Option<Money>,
        at: DateTime<Utc>,
    ) -> Order<'a> {
        Order {
            product: product.unwrap_or_default(),
            currency: currency.unwrap_or("—"),
            amount,
            at,
            refunded: None,
        }
    }

    /// A refund made at `self.at` of the lead's latest order of the same product at or before
    /// it among `bought` (oldest first): credited where that order was, with its amount and
    /// currency when the refund names none. A refund of nothing bought is credited as if the
    /// order had been made when it was refunded.
    pub fn refund_of(self, bought: &[Order<'a>]) -> Order<'a> {
        let at = self.at;
        let paid = bought
            .iter()
            .rev()
            .find(|o| o.refunded.is_none() && o.at <= at && o.product == self.product);
        Order {
            currency: match (self.currency, paid) {
                ("—", Some(p)) => p.currency,
                (c, _) => c,
            },
            amount: self.amount.or(paid.and_then(|p| p.amount)),
            at: paid.map_or(at, |p| p.at),
            refunded: Some(at),
            ..self
        }
    }
}

/// A run of a lead, with the first time it entered each stage: what an order is credited to.
#[derive(Debug, Clone)]
pub struct LeadRun<'a> {
    pub run: Run<'a>,
    /// Each stage it entered, with the first time it did.
    pub firsts: Vec<(&'a str, DateTime<Utc>)>,
    /// Its first email of each step ([`mark::FIRST`]).
    pub mails: Vec<Mail<'a>>,
}

/// The run of a lead's that something the lead did outside any run (an order) belongs to: of
/// `runs`, the latest to enter strictly before `at`.
pub fn run_at<T>(
    runs: &[T],
    entered: impl Fn(&T) -> DateTime<Utc>,
    at: DateTime<Utc>,
) -> Option<&T> {
    runs.iter()
        .filter(|r| entered(r) < at)
        .max_by_key(|r| entered(r))
}

/// What an order of a lead adds to one funnel, given the lead's runs of it (oldest first) and
/// touches (oldest first): it is the funnel's sale of the one run that was in the funnel when it
/// came — the latest to enter before it — filed under [`FUNNEL`]; when it names a product, it is
/// also credited to that run under every stage the run had entered before the order (strictly: an order made as a run enters a stage, or the funnel,
/// is what brought it there, not the stage's sale); and when the lead had entered the funnel
/// before it (strictly too: an order and an entry at the same instant are in no order the rows
/// can tell, so the order is not the funnel's), it is shared among the touches for attribution.
pub fn order_facts<'a>(
    funnel: &'a str,
    runs: &[LeadRun<'a>],
    touches: &'a [Touch<'a>],
    order: Order<'a>,
    out: &mut Vec<Fact<'a>>,
) {
    let current = run_at(runs, |r| r.run.entered_at, order.at);
    if let Some(r) = current {
        // The funnel's own sale, whatever the product.
        out.push(Fact::Bought {
            run: r.run,
            stage: FUNNEL,
            order,
        });
    }
    if let Some(r) = current.filter(|_| !order.product.is_empty()) {
        for (stage, since) in &r.firsts {
            if *since < order.at {
                out.push(Fact::Bought {
                    run: r.run,
                    stage,
                    order,
                });
                // What each of the stage's A/B variants the run was sent by then brought
                // (sales as made: refunds are not taken off an A/B test's figures).
                let sales = order.refunded.is_none();
                for mail in r.mails.iter().filter(|m| sales && m.stage == *stage) {
                    if mail.queued_at < order.at {
                        let (run, mail) = (r.run, *mail);
                        out.push(Fact::BoughtAfter { run, mail, order });
                    }
                }
            }
        }
    }
    if runs.iter().any(|r| r.run.entered_at < order.at) {
        out.push(Fact::Ordered {
            funnel,
            order,
            touches,
        });
    }
}

/// An email of a run, as the per-email counters see it.
#[derive(Debug, Clone, Copy)]
pub struct Mail<'a> {
    /// The stage that sent it, or [`FUNNEL`] (the double opt-in confirmation).
    pub stage: &'a str,
    pub template: &'a str,
    pub queued_at: DateTime<Utc>,
    /// The step that sent it (none for the double opt-in confirmation).
    pub step: Option<&'a str>,
    /// It is its run's first email of the step ([`mark::FIRST`]): the A/B unit.
    pub first: bool,
    /// It is a variant of an A/B split ([`mark::VARIANT`]): A/B counters are kept for it.
    pub variant: bool,
}

impl Mail<'_> {
    /// What its [`mark`]s say of it: (first of its step, a split's variant).
    pub fn split_marks(marks: i64) -> (bool, bool) {
        (marks & mark::FIRST != 0, marks & mark::VARIANT != 0)
    }
}

/// Whether an email reached `stage`, which its run first entered at `at`: a stage other than
/// its own, entered after it was queued (an entry in the same instant is not one the email
/// led to).
pub fn reached_by(mail: &Mail, stage: &str, at: DateTime<Utc>) -> bool {
    at > mail.queued_at && stage != mail.stage
}

/// What tracked events mark on an email, as bits kept with it (`messages.marks`), so each
/// counts once per email however often it happens.
pub mod mark {
    pub const OPENED: i64 = 1;
    pub const CLICKED: i64 = 2;
    pub const UNSUBSCRIBED: i64 = 4;
    pub const BOUNCED: i64 = 8;
    pub const COMPLAINED: i64 = 16;
    /// Not an event's: the email is its run's first of its `split` step (from its stage), set
    /// when it is queued ([`super::Reached::send`]) — what the A/B counters count a run by.
    pub const FIRST: i64 = 32;
    /// Not an event's: the email is a variant of an A/B `split`, set when it is queued — the
    /// emails the A/B counters are kept for.
    pub const VARIANT: i64 = 64;

    /// Each mark with its counter's name.
    pub const ALL: [(i64, &str); 5] = [
        (OPENED, super::mail::OPENED),
        (CLICKED, super::mail::CLICKED),
        (UNSUBSCRIBED, super::mail::UNSUBSCRIBED),
        (BOUNCED, super::mail::BOUNCED),
        (COMPLAINED, super::mail::COMPLAINED),
    ];

    /// The mark an event of this kind leaves on the email it is about.
    pub fn of(kind: &crate::domain::EventKind) -> Option<i64> {
        use crate::domain::EventKind as K;
        match kind {
            K::Open => Some(OPENED),
            K::Click => Some(CLICKED),
            K::Unsubscribed => Some(UNSUBSCRIBED),
            K::Bounced => Some(BOUNCED),
            K::Complained => Some(COMPLAINED),
            _ => None,
        }
    }
}

/// An email of a lead, as [`about`] chooses among them.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    /// Its outbox row.
    pub id: i64,
    pub template: &'a str,
    pub queued_at: DateTime<Utc>,
}

/// Which of a lead's emails from one funnel a tracked event is about: the one it names (a
/// tracked link or the open pixel name their email), else the latest one queued by the time
/// of the event — of the template it names, when it names one. `None` when there is none (or
/// the email it names is another funnel's).
pub fn about(
    emails: &[Sent],
    message: Option<i64>,
    template: Option<&str>,
    at: DateTime<Utc>,
) -> Option<usize> {
    if let Some(id) = message {
        return emails.iter().position(|e| e.id == id);
    }
    emails
        .iter()
        .enumerate()
        .filter(|(_, e)| e.queued_at <= at && template.is_none_or(|t| t == e.template))
        .max_by_key(|(_, e)| (e.queued_at, e.id))
        .map(|(i, _)| i)
}

/// A tracked event (open, click, unsubscribe, bounce, complaint) as it marks emails.
#[derive(Debug, Clone, Copy)]
pub struct Tracked<'a> {
    pub kind: &'a crate::domain::EventKind,
    pub message: Option<i64>,
    pub template: Option<&'a str>,
    pub link: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// What a tracked event marks among a lead's emails from one funnel: the email [`about`]
/// chooses, the [`mark`] it leaves, and the link it clicked. `None` for an event that marks
/// nothing, or no email.
pub fn marked<'a>(emails: &[Sent], t: &Tracked<'a>) -> Option<(usize, i64, Option<&'a str>)> {
    let bit = mark::of(t.kind)?;
    let i = about(emails, t.message, t.template, t.at)?;
    let link = t
        .link
        .filter(|_| *t.kind == crate::domain::EventKind::Click);
    Some((i, bit, link))
}

/// Everything stored about one run that its counters come from, but its lead's orders
/// ([`order_facts`]) and emails ([`mail_facts`]).
#[derive(Debug, Clone)]
pub struct RunFacts<'a> {
    pub run: Run<'a>,
    /// Still waiting for the double opt-in click.
    pub unconfirmed: bool,
    /// When it exited `converted`.
    pub converted_at: Option<DateTime<Utc>>,
    /// Its stage visits, in the order they began.
    pub visits: Vec<Visit<'a>>,
    /// Its score milestones (`mql`, `sql`), oldest first.
    pub milestones: Vec<(&'a str, DateTime<Utc>)>,
}

/// A stage visit as stored.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    pub stage: &'a str,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub reason: Option<&'a str>,
    pub next: Option<&'a str>,
}

impl<'a> RunFacts<'a> {
    /// The facts its transitions made when they were written, in order; and what the run has
    /// reached.
    pub fn facts(&self, out: &mut Vec<Fact<'a>>) -> Reached {
        let run = self.run;
        let mut reached = Reached::default();
        out.push(Fact::Entered {
            run,
            unconfirmed: self.unconfirmed,
        });
        for v in &self.visits {
            out.push(Fact::Opened {
                run,
                stage: v.stage,
                at: v.entered_at,
                first: reached.enter(v.stage),
            });
            if let Some(at) = v.exited_at {
                out.push(Fact::Closed {
                    run,
                    stage: v.stage,
                    entered: v.entered_at,
                    at,
                    next: v.next,
                    reason: v.reason,
                });
            }
        }
        for (kind, at) in &self.milestones {
            if reached.cross(kind) {
                out.push(Fact::Milestone { run, kind, at: *at });
            }
        }
        if let Some(at) = self.converted_at {
            out.push(Fact::Converted { run, at });
        }
        reached
    }

    /// The first time it entered each stage.
    pub fn firsts(&self) -> Vec<(&'a str, DateTime<Utc>)> {
        let mut first: Vec<(&str, DateTime<Utc>)> = Vec::new();
        for v in &self.visits {
            if !first.iter().any(|(s, _)| *s == v.stage) {
                first.push((v.stage, v.entered_at));
            }
        }
        first
    }
}

/// A stored email with everything its counters come from.
#[derive(Debug, Clone)]
pub struct MailFacts<'a> {
    pub mail: Mail<'a>,
    /// `sent` (accepted), `failed`, or another outbox status (counted as queued only).
    pub status: &'a str,
    /// Its [`mark`]s, and when the event that first left each of [`mark::ALL`] came.
    pub marks: i64,
    pub marked_at: Vec<(i64, DateTime<Utc>)>,
    /// The names of the links clicked in it, each with its first click.
    pub links: Vec<(&'a str, DateTime<Utc>)>,
}

/// The facts of a run's stored email, given the first time the run entered each stage: as
/// they were made when it was queued, when the outbox recorded its outcome, when tracked
/// events marked it, and when the run went on to a stage.
pub fn mail_facts<'a>(
    run: Run<'a>,
    f: &MailFacts<'a>,
    firsts: &[(&'a str, DateTime<Utc>)],
    out: &mut Vec<Fact<'a>>,
) {
    let mail = f.mail;
    let mut push = |what, at| {
        out.push(Fact::Mail {
            run,
            mail,
            what,
            at,
            n: 1,
        })
    };
    push(MailWhat::Queued, mail.queued_at);
    if let Some(w) = MailWhat::of_status(f.status) {
        push(w, mail.queued_at);
    }
    for (bit, _) in mark::ALL {
        if f.marks & bit != 0 {
            let at = f.marked_at.iter().find(|(b, _)| *b == bit);
            push(
                MailWhat::Marked(bit),
                at.map_or(mail.queued_at, |(_, t)| *t),
            );
        }
    }
    for (l, at) in &f.links {
        push(MailWhat::Link(l), *at);
    }
    for (stage, at) in firsts {
        if reached_by(&mail, stage, *at) {
            push(MailWhat::Reached(stage), *at);
            for (link, clicked) in &f.links {
                push(MailWhat::LinkReached { link, stage }, (*at).max(*clicked));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + h * 3_600, 0).unwrap()
    }

    #[test]
    fn origins_fold_to_what_a_report_tells_apart() {
        let parts = [
            Some("ads"),
            Some("google"),
            Some("cpc"),
            Some("spring"),
            Some("optin"),
        ];
        let fields = [
            ("region", Some("north".to_string())),
            ("plan", Some("pro".to_string())),
        ];
        let whole = with_variant(&origin_with(parts, &fields), "b.html");
        let by_source = Apart {
            touch: [false, true, false, false, false],
            ..Apart::default()
        };
        let source = by_source.fold(&whole);
        assert_eq!(source, origin([None, Some("google"), None, None, None]));
        // Origins that differ only in what is not told apart are one.
        let other = origin([Some("email"), Some("google"), None, None, None]);
        assert_eq!(by_source.fold(&other), source);
        let by_region_and_variant = Apart {
            fields: Some(vec!["region".into()]),
            variant: true,
            ..Apart::default()
        };
        let kept = by_region_and_variant.fold(&whole);
        assert_eq!(origin_field(&kept, "region").as_deref(), Some("north"));
        assert_eq!(origin_field(&kept, "plan"), None);
        assert_eq!(origin_variant(&kept).as_deref(), Some("b.html"));
        assert_eq!(origin_parts(&kept), <[Option<String>; 5]>::default());
        assert_eq!(Apart::EVERY.fold(&whole), whole);
        assert_eq!(by_source.fold(ALL), ALL);
    }

    #[test]
    fn a_run_through_two_stages() {
        let run = Run {
            funnel: "f",
            entered_at: at(0),
            origin: &origin([Some("signup"), Some("google"), None, None, Some("optin")]),
        };
        let mut t = Tally::by_day(chrono_tz::UTC);
        let mut reached = Reached::default();
        let order = Order::of(Some("book"), Some("USD"), Money::of_units(9.5), at(32));
        for fact in [
            Fact::Entered {
                run,
                unconfirmed: false,
            },
            Fact::Opened {
                run,
                stage: "a",
                at: at(0),
                first: reached.enter("a"),
            },
            Fact::Closed {
                run,
                stage: "a",
                entered: at(0),
                at: at(30),
                next: Some("b"),
                reason: Some("goto: b"),
            },
            Fact::Opened {
                run,
                stage: "b",
                at: at(30),
                first: reached.enter("b"),
            },
            Fact::Opened {
                run,
                stage: "a",
                at: at(31),
                first: reached.enter("a"),
            },
            Fact::Bought {
                run,
                stage: "a",
                order,
            },
        ] {
            t.count(&fact);
        }
        let f = figures(&t);
        let all = &f[&(day_of(at(0)), ALL.to_string())];
        assert_eq!(all.n(View::Entry, FUNNEL, metric::ENTERED), 1);
        assert_eq!(
            all.n(View::Entry, "a", metric::IN),
            1,
            "a second visit is not a new lead"
        );
        assert_eq!(all.n(View::Entry, "a", metric::OPEN), 1);
        assert_eq!(all.n(View::Entry, "b", "with:a"), 1);
        assert_eq!(
            all.histogram(View::Entry, "a", metric::TIME),
            vec![(108_000, 1)]
        );
        let buy: Vec<_> = all.with_prefix(View::Entry, "a", metric::BUY).collect();
        assert_eq!(buy.len(), 1);
        assert_eq!((buy[0].1.n, buy[0].1.total), (1, Micros(9_500_000)));
        assert_eq!(origin_parts(run.origin)[1].as_deref(), Some("google"));
        assert_eq!(
            f.keys().filter(|(_, o)| o == run.origin).count(),
            2,
            "the run's origin has its own counters, on both days"
        );
    }

    #[test]
    fn quantized_on_a_growing_grid() {
        assert_eq!(quantize(59), 59);
        assert_eq!(quantize(1_799), 1_740, "29m 59s: the minute");
        assert_eq!(quantize(18_659), 18_600, "5h 10m 59s: 5 minutes");
        assert_eq!(quantize(18_899), 18_600);
        assert_eq!(quantize(50_000), 49_500, "13h 53m: 15 minutes");
        assert_eq!(quantize(172_800), 172_800, "2d stays 2d");
        assert_eq!(quantize(273_601), 273_600, "3d 4h: the hour");
        assert_eq!(
            quantize(7 * 86_400 + 7_000),
            7 * 86_400,
            "a week and 2h: 3 hours"
        );
        assert_eq!(quantize(-5), 0);
    }
}
