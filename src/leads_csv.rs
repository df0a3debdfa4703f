//! Leads as CSV, both ways: a file's header mapped to the lead's columns and the fields the
//! funnels declare (by name, with common aliases, or `--map`), each row read into a lead or
//! refused with the reason that names its column; and a lead written back as a row. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{Email, Lead, Tag};
use crate::funnel::FieldKind;
use crate::funnel::parse::check_field_value;
use crate::store::{ImportRow, LeadInput};

/// The fields a lead may be given, with their types ([`crate::funnel::settable_fields`]).
pub type Fields = BTreeMap<String, Vec<FieldKind>>;

/// What a column of the file fills.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Email,
    FirstName,
    Timezone,
    Tags,
    /// `unsubscribed` (or `cleaned`, `bounced`, …) keeps the address from being mailed.
    Consent,
    Field(String),
    Ignored,
}

/// The longest value taken, in characters.
const MAX_VALUE: usize = 4096;

/// Column names taken for the lead's own columns, after [`normal`].
const ALIASES: [(&str, Target); 13] = [
    ("email", Target::Email),
    ("e_mail", Target::Email),
    ("email_address", Target::Email),
    ("mail", Target::Email),
    ("first_name", Target::FirstName),
    ("firstname", Target::FirstName),
    ("name", Target::FirstName),
    ("timezone", Target::Timezone),
    ("time_zone", Target::Timezone),
    ("tags", Target::Tags),
    ("consent", Target::Consent),
    ("status", Target::Consent),
    ("subscription_status", Target::Consent),
];

/// A header as compared: trimmed, lower-case, spaces and dashes as `_`.
fn normal(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .to_lowercase()
        .replace([' ', '-'], "_")
}

/// How a file's columns become a lead.
#[derive(Debug, Clone)]
pub struct Mapping {
    targets: Vec<(String, Target)>,
    fields: Fields,
}

impl Mapping {
    /// The mapping of `header`: `maps` (`COLUMN=TARGET`, an empty target to leave a column
    /// out) first, then the lead's columns by name or alias, then declared fields by name.
    /// An error names the problem: no email column, a `--map` naming no column or no target,
    /// two columns for one target.
    pub fn new(header: &[&str], fields: &Fields, maps: &[String]) -> Result<Mapping, String> {
        let mut chosen: BTreeMap<String, Target> = BTreeMap::new();
        for m in maps {
            let (column, target) = m.split_once('=').ok_or_else(|| {
                format!("--map {m}: write COLUMN=FIELD (or COLUMN= to leave it out)")
            })?;
            if !header.iter().any(|h| normal(h) == normal(column)) {
                return Err(format!(
                    "--map {m}: the file has no column \"{column}\" (its columns: {})",
                    header.join(", ")
                ));
            }
            let t = normal(target);
            let target = if t.is_empty() {
                Target::Ignored
            } else if let Some((_, builtin)) = ALIASES.iter().find(|(a, _)| *a == t) {
                builtin.clone()
            } else if fields.contains_key(&t) {
                Target::Field(t)
            } else {
                return Err(format!(
                    "--map {m}: no field \"{target}\" (email, first_name, timezone, tags, consent, or a declared field: {})",
                    if fields.is_empty() {
                        "none".to_string()
                    } else {
                        fields.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ));
            };
            chosen.insert(normal(column), target);
        }
        let mut targets = Vec::new();
        for h in header {
            let n = normal(h);
            let target = chosen.get(&n).cloned().unwrap_or_else(|| {
                if let Some((_, t)) = ALIASES.iter().find(|(a, _)| *a == n) {
                    t.clone()
                } else if fields.contains_key(&n) {
                    Target::Field(n.clone())
                } else {
                    Target::Ignored
                }
            });
            if target != Target::Ignored
                && let Some((other, _)) = targets.iter().find(|(_, t)| *t == target)
            {
                return Err(format!(
                    "columns \"{other}\" and \"{h}\" both fill {}: leave one out with --map \"{h}=\"",
                    describe(&target)
                ));
            }
            targets.push((h.to_string(), target));
        }
        if !targets.iter().any(|(_, t)| *t == Target::Email) {
            return Err(format!(
                "no email column (the columns: {}); name it email or map it with --map COLUMN=email",
                header.join(", ")
            ));
        }
        Ok(Mapping {
            targets,
            fields: fields.clone(),
        })
    }

    /// The columns left out.
    pub fn ignored(&self) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|(_, t)| *t == Target::Ignored)
            .map(|(h, _)| h.as_str())
            .collect()
    }

    /// A row as a lead, with `tags` added; the reason, naming its column, when it is refused.
    pub fn row(&self, record: &[&str], tags: &[Tag]) -> Result<ImportRow, String> {
        let mut email = None;
        let mut input = LeadInput::default();
        let mut row_tags: Vec<Tag> = tags.to_vec();
        let mut unsubscribed = false;
        for ((column, target), value) in self.targets.iter().zip(record) {
            let value = value.trim();
            if value.is_empty() || *target == Target::Ignored {
                continue;
            }
            let bad = |why: String| format!("column \"{column}\": {why}");
            if value.chars().count() > MAX_VALUE {
                return Err(bad(format!("longer than {MAX_VALUE} characters")));
            }
            if value
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(bad("holds control characters".into()));
            }
            match target {
                Target::Email => {
                    email = Some(Email::parse(value).map_err(|e| bad(e.to_string()))?);
                }
                Target::FirstName => input.first_name = Some(value.to_string()),
                Target::Timezone => {
                    input.timezone = Some(value.parse().map_err(|_| {
                        bad(format!(
                            "\"{value}\" is not a time zone such as Europe/Moscow"
                        ))
                    })?);
                }
                Target::Tags => {
                    for t in value
                        .split([',', ';'])
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                    {
                        // Another service's "VIP Clients" is the tag vip-clients here.
                        let t = t.to_lowercase().replace([' ', '.', '/'], "-");
                        let tag = Tag::parse(&t).map_err(|e| bad(e.to_string()))?;
                        if !row_tags.contains(&tag) {
                            row_tags.push(tag);
                        }
                    }
                }
                Target::Consent => {
                    unsubscribed = matches!(
                        value.to_lowercase().as_str(),
                        "unsubscribed" | "cleaned" | "bounced" | "complained" | "suppressed"
                    );
                }
                Target::Field(name) => {
                    let kinds = &self.fields[name];
                    let v = typed(kinds[0], value).map_err(bad)?;
                    for k in kinds {
                        check_field_value(*k, &v).map_err(bad)?;
                    }
                    input.fields.insert(name.clone(), v);
                }
                Target::Ignored => {}
            }
        }
        let email = email.ok_or_else(|| "no email address".to_string())?;
        Ok(ImportRow {
            email,
            input,
            tags: row_tags,
            unsubscribed,
        })
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Email => "email".into(),
        Target::FirstName => "first_name".into(),
        Target::Timezone => "timezone".into(),
        Target::Tags => "tags".into(),
        Target::Consent => "consent".into(),
        Target::Field(f) => format!("field {f}"),
        Target::Ignored => "nothing".into(),
    }
}

/// A CSV text as a value of `kind`: numbers with a `.` or `,` decimal mark, booleans as
/// true/false, yes/no, 1/0, dates as `YYYY-MM-DD`, `DD.MM.YYYY` or a date and time.
fn typed(kind: FieldKind, text: &str) -> Result<Value, String> {
    match kind {
        FieldKind::Text => Ok(Value::String(text.to_string())),
        FieldKind::Number => {
            let t = text.replace([' ', '\u{a0}'], "");
            let t = if t.contains('.') {
                t
            } else {
                t.replace(',', ".")
            };
            t.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("expected a number, found \"{text}\""))
        }
        FieldKind::Bool => match text.to_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "да" => Ok(Value::Bool(true)),
            "false" | "no" | "n" | "0" | "нет" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, found \"{text}\"")),
        },
        FieldKind::Date => {
            let day = text.get(..10).unwrap_or(text);
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .or_else(|_| chrono::NaiveDate::parse_from_str(day, "%d.%m.%Y"))
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .map_err(|_| format!("expected a date like 2026-01-15, found \"{text}\""))
        }
        FieldKind::DateTime => {
            let value = Value::String(text.to_string());
            check_field_value(kind, &value).map(|()| value)
        }
    }
}

/// The header of an export with these field columns.
pub fn header(fields: &[String]) -> Vec<String> {
    let mut h: Vec<String> = [
        "email",
        "first_name",
        "timezone",
        "consent",
        "score",
        "created_at",
        "tags",
    ]
    .map(str::to_string)
    .to_vec();
    h.extend(fields.iter().cloned());
    h
}

/// A lead as a row of an export under [`header`]`(fields)`.
pub fn row(lead: &Lead, tags: &[Tag], fields: &[String]) -> Vec<String> {
    let mut r = vec![
        lead.email.as_str().to_string(),
        lead.first_name.clone().unwrap_or_default(),
        lead.timezone
            .map(|t| t.name().to_string())
            .unwrap_or_default(),
        lead.consent.as_str().to_string(),
        lead.score.to_string(),
        lead.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(","),
    ];
    for f in fields {
        r.push(match lead.fields.get(f) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        [
            ("city".to_string(), vec![FieldKind::Text]),
            ("age".to_string(), vec![FieldKind::Number]),
            ("webinar_at".to_string(), vec![FieldKind::Date]),
        ]
        .into()
    }

    #[test]
    fn columns_by_name_alias_and_map() {
        let m = Mapping::new(
            &["Email Address", "First Name", "City", "Возраст", "Notes"],
            &fields(),
            &["Возраст=age".into()],
        )
        .unwrap();
        assert_eq!(m.ignored(), ["Notes"]);
        let r = m
            .row(&["Ann@Example.com", "Ann", "Kazan", "31,5", "x"], &[])
            .unwrap();
        assert_eq!(r.email.as_str(), "ann@example.com");
        assert_eq!(r.input.first_name.as_deref(), Some("Ann"));
        assert_eq!(r.input.fields["city"], "Kazan");
        assert_eq!(r.input.fields["age"], 31.5);
        let e = m
            .row(&["b@example.com", "", "", "old", ""], &[])
            .unwrap_err();
        assert_eq!(e, "column \"Возраст\": expected a number, found \"old\"");
        let e = m.row(&["not an address", "", "", "", ""], &[]).unwrap_err();
        assert!(e.starts_with("column \"Email Address\": "), "{e}");
    }

    #[test]
    fn a_header_that_cannot_work_says_why() {
        let e = Mapping::new(&["name", "phone"], &fields(), &[]).unwrap_err();
        assert!(e.starts_with("no email column"), "{e}");
        let e = Mapping::new(&["email", "mail"], &fields(), &[]).unwrap_err();
        assert!(e.contains("both fill email"), "{e}");
        let e = Mapping::new(&["email"], &fields(), &["phone=city".into()]).unwrap_err();
        assert!(e.contains("no column \"phone\""), "{e}");
        let e = Mapping::new(&["email", "x"], &fields(), &["x=shoe_size".into()]).unwrap_err();
        assert!(e.contains("no field \"shoe_size\""), "{e}");
    }

    #[test]
    fn dates_tags_and_unsubscribed() {
        let m = Mapping::new(&["email", "webinar_at", "tags", "status"], &fields(), &[]).unwrap();
        let r = m
            .row(
                &[
                    "a@example.com",
                    "15.01.2026",
                    "VIP Clients; b2b",
                    "Unsubscribed",
                ],
                &[Tag::parse("imported").unwrap()],
            )
            .unwrap();
        assert_eq!(r.input.fields["webinar_at"], "2026-01-15");
        let tags: Vec<&str> = r.tags.iter().map(Tag::as_str).collect();
        assert_eq!(tags, ["imported", "vip-clients", "b2b"]);
        let e = m.row(&["a@example.com", "", "2026", ""], &[]).unwrap_err();
        assert!(e.starts_with("column \"tags\": tag \"2026\""), "{e}");
        assert!(r.unsubscribed);
    }
}
