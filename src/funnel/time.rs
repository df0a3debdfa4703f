//! Time values of the funnel language: durations (`2d3h`), standard 5-field cron expressions
//! with POSIX weekdays, time zones and frequency caps. All pure parsing; nothing reads a clock.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::diag::did_you_mean;

/// A non-negative length of time, kept in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

const UNITS: [(char, u64); 5] = [
    ('w', 604_800),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];
/// Longer waits than ten years are almost certainly typos.
const MAX_SECONDS: u64 = 10 * 366 * 86_400;

impl Duration {
    pub fn from_secs(secs: u64) -> Duration {
        Duration(secs)
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// Parses `30m`, `24h`, `2d`, `1w`, `2d3h`, `1h30m` (units w, d, h, m, s).
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "bad duration \"{text}\": write a number and a unit, like 30m, 24h, 2d, 1w or 2d3h"
            )
        };
        if t.is_empty() {
            return Err(bad());
        }
        let mut total: u64 = 0;
        let mut number = String::new();
        let mut last_unit: Option<usize> = None;
        for c in t.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = UNITS.iter().position(|(u, _)| *u == c).ok_or_else(bad)?;
            if number.is_empty() || last_unit.is_some_and(|l| l >= unit) {
                return Err(bad());
            }
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(UNITS[unit].1)
                .and_then(|v| v.checked_add(total))
                .ok_or_else(bad)?;
            number.clear();
            last_unit = Some(unit);
        }
        if !number.is_empty() || last_unit.is_none() {
            return Err(bad());
        }
        if total > MAX_SECONDS {
            return Err(format!("duration \"{text}\" is longer than ten years"));
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, secs) in UNITS {
            if rest >= secs {
                write!(f, "{}{unit}", rest / secs)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

/// A standard 5-field cron expression (minute hour day-of-month month day-of-week), weekdays
/// 0–7 with 0 and 7 for Sunday, or names. When both day fields are restricted either may match,
/// as in POSIX cron; the `cron` crate would AND them, so such an expression becomes two schedules.
#[derive(Debug, Clone)]
pub struct Cron {
    source: String,
    schedules: Vec<cron::Schedule>,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Cron) -> bool {
        self.source == other.source
    }
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "bad cron expression \"{text}\": expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        }
        let dow = posix_weekdays(fields[4])
            .map_err(|e| format!("bad cron expression \"{text}\": {e}"))?;
        let (min, hour, dom, mon) = (fields[0], fields[1], fields[2], fields[3]);
        let variants: Vec<String> = if dom != "*" && dow != "*" {
            vec![
                format!("0 {min} {hour} {dom} {mon} *"),
                format!("0 {min} {hour} * {mon} {dow}"),
            ]
        } else {
            vec![format!("0 {min} {hour} {dom} {mon} {dow}")]
        };
        let schedules = variants
            .iter()
            .map(|v| cron::Schedule::from_str(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                // The crate prints the translated expression and a caret; its last line says why.
                let why = e.to_string();
                let why = why
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid")
                    .trim()
                    .to_string();
                format!("bad cron expression \"{text}\": {why}")
            })?;
        Ok(Cron {
            source: text.trim().to_string(),
            schedules,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first firing strictly after `after`, read on the wall clock of `tz`.
    ///
    /// Daylight-saving changes: a firing in the spring gap moves to the next valid minute, and
    /// a firing in the repeated autumn hour happens once, at its first occurrence.
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut local = after.with_timezone(&tz).naive_local();
        // Each round moves past one candidate that is not after `after`; two rounds cover the
        // repeated hour, the rest is a guard against schedules with no future firing.
        for _ in 0..4 {
            let naive = self
                .schedules
                .iter()
                .filter_map(|s| s.after(&Utc.from_utc_datetime(&local)).next())
                .min()?
                .naive_utc();
            let at = match tz.from_local_datetime(&naive) {
                LocalResult::Single(t) => t,
                LocalResult::Ambiguous(first, _) => first,
                LocalResult::None => first_valid_minute(tz, naive)?,
            }
            .with_timezone(&Utc);
            if at > after {
                return Some(at);
            }
            local = naive;
        }
        None
    }

    /// Whether the minute of `at`, on the wall clock of `tz`, matches the expression.
    pub fn contains(&self, tz: Tz, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&tz).naive_local();
        let minute = local
            .with_second(0)
            .and_then(|l| l.with_nanosecond(0))
            .unwrap_or(local);
        let probe = Utc.from_utc_datetime(&minute);
        self.schedules.iter().any(|s| s.includes(probe))
    }

    /// `at` itself when it matches, else the next matching minute.
    pub fn next_open(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.contains(tz, at) {
            Some(at)
        } else {
            self.next_after(tz, at)
        }
    }

    /// The schedules whose union is this expression.
    pub fn schedules(&self) -> &[cron::Schedule] {
        &self.schedules
    }
}

/// The first wall-clock minute at or after `naive` that exists in `tz` (spring gaps last at
/// most a few hours).
fn first_valid_minute(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Tz>> {
    (1..=24 * 60).find_map(|m| {
        match tz.from_local_datetime(&(naive + chrono::Duration::minutes(m))) {
            LocalResult::Single(t) => Some(t),
            LocalResult::Ambiguous(t, _) => Some(t),
            LocalResult::None => None,
        }
    })
}

/// Rewrites a POSIX day-of-week field (0/7 = Sunday) with names, which the `cron` crate reads
/// the same way; a range ending in 7 (`5-7`) is split because Sunday is first there.
fn posix_weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let name = |s: &str| -> Result<String, String> {
        match s.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(NAMES[n].to_string()),
            Ok(n) => Err(format!("day of week {n} is out of range 0-7")),
            Err(_) => Ok(s.to_string()),
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let converted = match range.split_once('-') {
            Some((a, "7")) if step.is_none() && a != "0" && a != "7" => {
                format!("{}-Sat,Sun", name(a)?)
            }
            Some((a, b)) => format!("{}-{}", name(a)?, name(b)?),
            None => name(range)?,
        };
        parts.push(match step {
            Some(s) => format!("{converted}/{s}"),
            None => converted,
        });
    }
    Ok(parts.join(","))
}

/// Parses an IANA time zone name such as `Europe/Moscow`, suggesting the closest on a typo.
/// A time a lead's field holds: a `date` (`2026-01-15`, midnight in the lead's zone) or a
/// `datetime` — an instant with its offset (`2026-01-15T19:00:00+03:00`, RFC 3339) or a wall
/// time in the lead's zone (`2026-01-15T19:00`, `2026-01-15 19:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldTime {
    Date(chrono::NaiveDate),
    Instant(DateTime<chrono::FixedOffset>),
    Local(NaiveDateTime),
}

impl FieldTime {
    /// Years 1 to 9999 only, as RFC 3339 writes them (so an offset added to one cannot run
    /// past what a time can hold).
    pub fn parse(text: &str) -> Option<FieldTime> {
        use chrono::Datelike;
        let text = text.trim();
        let t = if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            FieldTime::Date(d)
        } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            FieldTime::Instant(t)
        } else {
            [
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%dT%H:%M",
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .map(FieldTime::Local)?
        };
        let year = match t {
            FieldTime::Date(d) => d.year(),
            FieldTime::Instant(t) => t.year(),
            FieldTime::Local(t) => t.year(),
        };
        (1..=9999).contains(&year).then_some(t)
    }

    /// The instant it names for a lead in `tz` (a wall time that does not exist there, in a
    /// spring-forward gap, is moved on by the hour the clocks skip: 02:30 → 03:30).
    pub fn instant(self, tz: Tz) -> Option<DateTime<Utc>> {
        let local = |t: NaiveDateTime| match tz.from_local_datetime(&t) {
            LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => Some(x.with_timezone(&Utc)),
            LocalResult::None => tz
                .from_local_datetime(&(t + chrono::Duration::hours(1)))
                .earliest()
                .map(|x| x.with_timezone(&Utc)),
        };
        match self {
            FieldTime::Date(d) => local(d.and_hms_opt(0, 0, 0)?),
            FieldTime::Instant(t) => Some(t.with_timezone(&Utc)),
            FieldTime::Local(t) => local(t),
        }
    }
}

pub fn parse_timezone(text: &str) -> Result<Tz, String> {
    Tz::from_str(text.trim()).map_err(|_| {
        let exact = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|z| z.name().eq_ignore_ascii_case(text.trim()));
        match exact {
            Some(z) => format!(
                "unknown time zone \"{text}\" (did you mean \"{}\"?)",
                z.name()
            ),
            None => format!(
                "unknown time zone \"{text}\"{}; use an IANA name like Europe/Moscow",
                did_you_mean(text, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()))
            ),
        }
    })
}

/// At most `count` emails per `per` to one lead, across all of its funnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub count: u32,
    pub per: Duration,
}

impl FrequencyCap {
    /// Parses `2 per 24h`.
    pub fn parse(text: &str) -> Result<FrequencyCap, String> {
        let bad = || format!("bad frequency cap \"{text}\": write it like \"2 per 24h\"");
        let (count, per) = text.split_once(" per ").ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!(
                "frequency cap \"{text}\" would never let an email out"
            ));
        }
        let per = Duration::parse(per)?;
        if per.as_secs() == 0 {
            return Err(bad());
        }
        // Every send of the period is read for each lead a round steps: a year at most.
        if per.as_secs() > 366 * 86_400 {
            return Err(format!(
                "frequency cap \"{text}\": the period can be a year (366d) at most"
            ));
        }
        Ok(FrequencyCap { count, per })
    }
}

impl fmt::Display for FrequencyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.count, self.per)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_times_are_dates_instants_or_wall_times_in_the_leads_zone() {
        let moscow: Tz = "Europe/Moscow".parse().unwrap();
        let at = |s: &str, tz: Tz| FieldTime::parse(s).and_then(|t| t.instant(tz));
        let utc = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(at("2026-11-26", moscow), Some(utc("2026-11-25T21:00:00Z")));
        assert_eq!(
            at("2026-11-26T19:00", moscow),
            Some(utc("2026-11-26T16:00:00Z"))
        );
        assert_eq!(
            at("2026-11-26 19:00:30", moscow),
            Some(utc("2026-11-26T16:00:30Z"))
        );
        // An instant keeps its own offset, whatever the lead's zone.
        assert_eq!(
            at("2026-11-26T19:00:00+03:00", chrono_tz::UTC),
            Some(utc("2026-11-26T16:00:00Z"))
        );
        // 02:30 does not exist in Berlin on 29 March 2026: moved on by the skipped hour.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            at("2026-03-29T02:30", berlin),
            Some(utc("2026-03-29T01:30:00Z"))
        );
        for bad in [
            "tomorrow",
            "2026-13-01",
            "26.11.2026 19:00",
            "",
            "-0001-01-01T00:00",
            "+262142-12-31T23:59",
        ] {
            assert_eq!(FieldTime::parse(bad), None, "{bad}");
        }
    }

    use super::*;
    use chrono::{TimeZone, Utc};
    use chrono_tz::Europe::Berlin;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_firing_in_the_leads_zone() {
        let c = Cron::parse("0 19 * * Thu").unwrap();
        // Monday 2026-11-23 10:00 UTC → Thursday 19:00 Berlin (UTC+1) = 18:00 UTC.
        let next = c.next_after(Berlin, utc("2026-11-23T10:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-26T18:00:00Z"));
        // Strictly after: at the firing itself, the next one is a week later.
        assert_eq!(
            c.next_after(Berlin, next).unwrap(),
            utc("2026-12-03T18:00:00Z")
        );
    }

    #[test]
    fn spring_gap_moves_to_the_next_valid_minute() {
        // Berlin skips 02:00–03:00 on 2026-03-29; a 02:30 firing happens at 03:00 local.
        let c = Cron::parse("30 2 * * *").unwrap();
        let next = c.next_after(Berlin, utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-03-29T01:00:00Z"));
        assert_eq!(
            next.with_timezone(&Berlin).to_rfc3339(),
            "2026-03-29T03:00:00+02:00"
        );
        let after = c.next_after(Berlin, next).unwrap();
        assert_eq!(after, utc("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn autumn_repeat_fires_once() {
        // Berlin repeats 02:00–03:00 on 2026-10-25; a 02:30 firing happens once, the first time.
        let c = Cron::parse("30 2 * * *").unwrap();
        let first = c.next_after(Berlin, utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        let second = c.next_after(Berlin, first).unwrap();
        assert_eq!(second, utc("2026-10-26T01:30:00Z"));
        // Asked from inside the second 02:xx hour, the repeated firing is not given again.
        assert_eq!(
            c.next_after(Berlin, utc("2026-10-25T01:10:00Z")).unwrap(),
            second
        );
    }

    #[test]
    fn windows() {
        let w = Cron::parse("* 9-20 * * Mon-Sat").unwrap();
        // Sunday 2026-11-29 12:00 Berlin is closed; Monday 09:00 opens.
        let sunday = utc("2026-11-29T11:00:00Z");
        assert!(!w.contains(Berlin, sunday));
        assert_eq!(
            w.next_open(Berlin, sunday).unwrap(),
            utc("2026-11-30T08:00:00Z")
        );
        let monday = utc("2026-11-30T10:17:42Z");
        assert!(w.contains(Berlin, monday));
        assert_eq!(w.next_open(Berlin, monday).unwrap(), monday);
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("2d").unwrap().as_secs(), 172_800);
        assert_eq!(Duration::parse("2d3h").unwrap().as_secs(), 183_600);
        assert_eq!(Duration::parse("1h30m").unwrap().to_string(), "1h30m");
        assert_eq!(Duration::parse("90m").unwrap().to_string(), "1h30m");
        assert_eq!(Duration::parse("1w").unwrap().to_string(), "1w");
        for bad in [
            "",
            "2",
            "d",
            "2x",
            "3h2d",
            "2d2d",
            "-1d",
            "2 d",
            "99999999999w",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cron_uses_posix_weekdays() {
        // 2026-11-26 is a Thursday.
        let c = Cron::parse("0 19 * * 4").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let next = c.schedules()[0].after(&after).next().unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 26, 19, 0, 0).unwrap());
        let sunday = Cron::parse("0 10 * * 0").unwrap();
        let seven = Cron::parse("0 10 * * 7").unwrap();
        let a = sunday.schedules()[0].after(&after).next().unwrap();
        let b = seven.schedules()[0].after(&after).next().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap());
        assert!(Cron::parse("* 9-20 * * Mon-Sat").is_ok());
        assert!(Cron::parse("0 9 * * 5-7").is_ok());
        assert_eq!(Cron::parse("0 9 1 * Mon").unwrap().schedules().len(), 2);
    }

    #[test]
    fn bad_cron() {
        assert!(
            Cron::parse("0 19 * *")
                .unwrap_err()
                .contains("expected 5 fields")
        );
        assert!(Cron::parse("0 25 * * *").is_err());
        assert!(
            Cron::parse("0 9 * * 8")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn timezones() {
        assert!(parse_timezone("Europe/Moscow").is_ok());
        assert!(
            parse_timezone("europe/moscow")
                .unwrap_err()
                .contains("\"Europe/Moscow\"")
        );
        assert!(
            parse_timezone("Europe/Moskow")
                .unwrap_err()
                .contains("did you mean \"Europe/Moscow\"")
        );
    }

    #[test]
    fn caps() {
        let c = FrequencyCap::parse("2 per 24h").unwrap();
        assert_eq!((c.count, c.per.as_secs()), (2, 86_400));
        assert!(FrequencyCap::parse("0 per 1d").is_err());
        assert_eq!(
            FrequencyCap::parse("2 per 6w").unwrap().per.as_secs(),
            42 * 86_400
        );
        assert!(FrequencyCap::parse("1 per 366d").is_ok());
        assert!(
            FrequencyCap::parse("1 per 53w")
                .unwrap_err()
                .contains("a year (366d) at most")
        );
        assert!(FrequencyCap::parse("2/24h").is_err());
    }
}
