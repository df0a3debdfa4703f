//! Money, moments and spans of time written as a reader of the email's language expects
//! them: `14 900 ₽` and `18 января, 19:00` in Russian, `€59.90` and `Sunday, 18 January,
//! 7 pm` in English. Pure.

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;

/// The language a funnel's emails are written in (`language:`), or a lead's (`language`
/// field), for what templates are given ready-written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Language {
    #[default]
    En,
    Ru,
}

impl Language {
    /// `en` or `ru` (a region after it, `ru-RU`, and any case are taken).
    pub fn parse(text: &str) -> Option<Language> {
        let code = text.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match code.as_str() {
            "en" => Some(Language::En),
            "ru" => Some(Language::Ru),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Ru => "ru",
        }
    }
}

/// The currency's sign, for those written with one.
fn sign(currency: &str) -> Option<&'static str> {
    Some(match currency.to_ascii_uppercase().as_str() {
        "RUB" => "₽",
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "UAH" => "₴",
        "KZT" => "₸",
        _ => return None,
    })
}

/// Digits of a whole number in groups of three, joined by `sep`.
fn grouped(n: u64, sep: &str) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 * sep.len());
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push_str(sep);
        }
        out.push(c);
    }
    out
}

/// A count as a reader writes it: `14,900` in English, `14 900` in Russian.
pub fn count(n: u64, lang: Language) -> String {
    match lang {
        Language::En => grouped(n, ","),
        Language::Ru => grouped(n, "\u{a0}"),
    }
}

/// A percentage to one decimal: `52.0%`, `52,0 %`; a dash when there is none.
pub fn percent(p: Option<f64>, lang: Language) -> String {
    match (p, lang) {
        (None, _) => "—".into(),
        (Some(p), Language::En) => format!("{p:.1}%"),
        (Some(p), Language::Ru) => format!("{p:.1}\u{a0}%").replace('.', ","),
    }
}

/// An amount in `currency`: `14 900 ₽`, `59,90 €` (Russian: groups by a no-break space,
/// comma for the cents, the sign after); `€59.90`, `$10`, `14,900 RUB`… in English (the sign
/// before for the euro, the dollar and the pound, the code after for the others). Cents are
/// shown only when there are any.
pub fn money(amount: f64, currency: &str, lang: Language) -> String {
    let cents_total = (amount.abs() * 100.0).round() as u64;
    let (whole, cents) = (cents_total / 100, cents_total % 100);
    let minus = if amount < 0.0 && cents_total > 0 {
        "-"
    } else {
        ""
    };
    match lang {
        Language::Ru => {
            let mut n = grouped(whole, "\u{a0}");
            if cents > 0 {
                n.push_str(&format!(",{cents:02}"));
            }
            let unit = sign(currency).map_or_else(|| currency.to_string(), str::to_string);
            format!("{minus}{n}\u{a0}{unit}")
        }
        Language::En => {
            let mut n = grouped(whole, ",");
            if cents > 0 {
                n.push_str(&format!(".{cents:02}"));
            }
            match currency.to_ascii_uppercase().as_str() {
                "EUR" | "USD" | "GBP" => {
                    format!("{minus}{}{n}", sign(currency).unwrap_or(currency))
                }
                _ => format!("{minus}{n} {currency}"),
            }
        }
    }
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// Month names as a date says them in Russian (genitive: «18 января»).
const MONTHS_RU: [&str; 12] = [
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
];

/// A moment on the reader's clock: `18 января, 19:00`; `Sunday, 18 January, 7 pm` (and
/// `7:30 pm` when the minutes are not round).
pub fn moment(t: DateTime<Tz>, lang: Language) -> String {
    let month = t.month0() as usize;
    match lang {
        Language::Ru => format!(
            "{} {}, {:02}:{:02}",
            t.day(),
            MONTHS_RU[month],
            t.hour(),
            t.minute()
        ),
        Language::En => {
            let (pm, hour) = t.hour12();
            let clock = if t.minute() == 0 {
                format!("{hour} {}", if pm { "pm" } else { "am" })
            } else {
                format!("{hour}:{:02} {}", t.minute(), if pm { "pm" } else { "am" })
            };
            format!(
                "{}, {} {}, {clock}",
                t.format("%A"),
                t.day(),
                MONTHS_EN[month]
            )
        }
    }
}

/// The Russian form of a count's noun: one (1, 21, 101), few (2–4, 22–24) or many (5–20, 25…).
fn ru_plural(n: i64, forms: [&str; 3]) -> &str {
    let (ten, hundred) = (n % 10, n % 100);
    if ten == 1 && hundred != 11 {
        forms[0]
    } else if (2..=4).contains(&ten) && !(12..=14).contains(&hundred) {
        forms[1]
    } else {
        forms[2]
    }
}

/// Time left in words, in its largest whole unit from two days up, hours from one hour up,
/// else minutes: `3 days`, `1 hour`, `45 minutes`; `3 дня`, `1 час`, `45 минут`.
pub fn span(left: chrono::Duration, lang: Language) -> String {
    let left = left.max(chrono::Duration::zero());
    let (n, unit) = if left.num_hours() >= 48 {
        (left.num_days(), 0)
    } else if left.num_hours() >= 1 {
        (left.num_hours(), 1)
    } else {
        (left.num_minutes(), 2)
    };
    match lang {
        Language::En => {
            let word = ["day", "hour", "minute"][unit];
            format!("{n} {word}{}", if n == 1 { "" } else { "s" })
        }
        Language::Ru => {
            let forms = [
                ["день", "дня", "дней"],
                ["час", "часа", "часов"],
                ["минута", "минуты", "минут"],
            ][unit];
            format!("{n} {}", ru_plural(n, forms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn money_as_each_language_writes_it() {
        use Language::{En, Ru};
        assert_eq!(money(14900.0, "RUB", Ru), "14\u{a0}900\u{a0}₽");
        assert_eq!(money(490.0, "RUB", Ru), "490\u{a0}₽");
        assert_eq!(money(59.9, "EUR", Ru), "59,90\u{a0}€");
        assert_eq!(
            money(1234567.5, "XYZ", Ru),
            "1\u{a0}234\u{a0}567,50\u{a0}XYZ"
        );
        assert_eq!(money(59.9, "EUR", En), "€59.90");
        assert_eq!(money(10.0, "usd", En), "$10");
        assert_eq!(money(14900.0, "RUB", En), "14,900 RUB");
        assert_eq!(money(-5.0, "GBP", En), "-£5");
        assert_eq!(money(0.004, "EUR", En), "€0");
    }

    #[test]
    fn moments_and_spans_in_words() {
        let moscow: Tz = "Europe/Moscow".parse().unwrap();
        let t = moscow.with_ymd_and_hms(2026, 1, 18, 19, 0, 0).unwrap();
        assert_eq!(moment(t, Language::Ru), "18 января, 19:00");
        assert_eq!(moment(t, Language::En), "Sunday, 18 January, 7 pm");
        let half = moscow.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap();
        assert_eq!(moment(half, Language::En), "Sunday, 1 March, 9:30 am");
        let d = chrono::Duration::hours;
        let cases = [
            (d(1), "1 hour", "1 час"),
            (d(3), "3 hours", "3 часа"),
            (d(11), "11 hours", "11 часов"),
            (d(21), "21 hours", "21 час"),
            (d(47), "47 hours", "47 часов"),
            (d(48), "2 days", "2 дня"),
            (d(24 * 5), "5 days", "5 дней"),
            (d(24 * 21), "21 days", "21 день"),
            (chrono::Duration::minutes(1), "1 minute", "1 минута"),
            (chrono::Duration::minutes(12), "12 minutes", "12 минут"),
            (chrono::Duration::minutes(-5), "0 minutes", "0 минут"),
        ];
        for (left, en, ru) in cases {
            assert_eq!(span(left, Language::En), en);
            assert_eq!(span(left, Language::Ru), ru);
        }
        assert_eq!(Language::parse("ru-RU"), Some(Language::Ru));
        assert_eq!(Language::parse("EN"), Some(Language::En));
        assert_eq!(Language::parse("de"), None);
    }
}
