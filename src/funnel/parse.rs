//! Lowers a YAML tree into a typed [`Funnel`], reporting every unknown key, wrong type and bad
//! value in one pass. Cross-references between parts (stages, templates, products) are left to
//! `validate`, which sees the whole parsed funnel.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, NaiveDateTime};

use super::diag::{Pos, Sink, did_you_mean};
use super::model::*;
use super::time::{Cron, Duration, FieldTime, FrequencyCap, parse_timezone};
use super::yaml::{Key, Node, Value};
use crate::domain::{
    EventName, FieldName, FormId, FunnelId, InvalidValue, Mailbox, ProductId, StageId, StepId, Tag,
    TemplateName, WebhookId,
};

/// Parses one funnel file. Returns `None` when the file is too broken to be checked further;
/// diagnostics land in `sink` either way.
pub fn parse_funnel(file: &Path, root: &Node, sink: &mut Sink) -> Option<Funnel> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    if matches!(root.value, Value::Null) {
        sink.error(
            root.pos,
            "the funnel file is empty: it needs at least `stages`",
        );
        return None;
    }
    let m = Map::new(sink, root, "funnel", TOP_KEYS)?;

    let id = match m.get("id") {
        Some(n) => {
            let id = ident(sink, n, FunnelId::parse)?;
            if id.as_str() != stem {
                sink.error(
                    n.pos,
                    format!("funnel id \"{id}\" must match its file name \"{stem}.yaml\""),
                );
            }
            Located {
                pos: n.pos,
                value: id,
            }
        }
        None => match FunnelId::parse(&stem) {
            Ok(id) => Located {
                pos: Pos::START,
                value: id,
            },
            Err(e) => {
                sink.error(Pos::START, format!("the file name gives no funnel id: {e}"));
                return None;
            }
        },
    };
    let name = m
        .get("name")
        .and_then(|n| string(sink, n))
        .map(str::to_string);
    let _ = m.get("description").and_then(|n| string(sink, n));
    let from = m.get("from").and_then(|n| mailbox(sink, n));
    let reply_to = m.get("reply_to").and_then(|n| mailbox(sink, n));
    let postal_address = m.get("postal_address").and_then(|n| {
        let text = string(sink, n)?.trim();
        if text.is_empty() {
            sink.error(n.pos, "postal_address is empty: give the address your emails are sent from, or leave the key out");
            return None;
        }
        Some(text.to_string())
    });
    let expired_offer = m.get("expired_offer").and_then(|n| {
        let url = string(sink, n)?;
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            sink.error(
                n.pos,
                format!("expired_offer: \"{url}\" is not an http(s) address"),
            );
            return None;
        }
        Some(Located {
            pos: n.pos,
            value: url.to_string(),
        })
    });
    let timezone = match m.get("timezone") {
        Some(n) => string(sink, n)
            .and_then(|s| parse_timezone(s).map_err(|e| sink.error(n.pos, e)).ok())
            .unwrap_or(chrono_tz::UTC),
        None => chrono_tz::UTC,
    };
    let language = match m.get("language") {
        Some(n) => string(sink, n)
            .and_then(|s| {
                crate::locale::Language::parse(s)
                    .ok_or_else(|| {
                        sink.error(
                            n.pos,
                            format!("language: \"{s}\" is not one the emails can be written in (en or ru)"),
                        )
                    })
                    .ok()
            })
            .unwrap_or_default(),
        None => crate::locale::Language::default(),
    };
    let send_window = m.get("send_window").and_then(|n| {
        let s = string(sink, n)?;
        let c = Cron::parse(s)
            .map_err(|e| sink.error(n.pos, format!("send_window: {e}")))
            .ok()?;
        Some(Located {
            pos: n.pos,
            value: c,
        })
    });
    let frequency_cap = m.get("frequency_cap").and_then(|n| {
        let s = string(sink, n)?;
        FrequencyCap::parse(s)
            .map_err(|e| sink.error(n.pos, e))
            .ok()
    });
    let products = m
        .get("products")
        .map(|n| parse_products(sink, n))
        .unwrap_or_default();
    let fields = m
        .get("fields")
        .map(|n| parse_fields(sink, n))
        .unwrap_or_default();
    let webhooks = m
        .get("webhooks")
        .map(|n| parse_webhooks(sink, n))
        .unwrap_or_default();
    let scoring = m.get("scoring").and_then(|n| parse_scoring(sink, n));
    let on = m
        .get("on")
        .map(|n| parse_transitions(sink, n))
        .unwrap_or_default();
    let entry = match m.get("entry") {
        Some(n) => parse_entry(sink, n),
        None => {
            sink.error(
                root.pos,
                "the funnel has no `entry`: say how leads get in (form, event, tag or api)",
            );
            None
        }
    };
    let stages = match m.get("stages") {
        Some(n) => parse_stages(sink, n),
        None => {
            sink.error(root.pos, "the funnel has no `stages`");
            Vec::new()
        }
    };
    m.done();

    Some(Funnel {
        file: file.to_path_buf(),
        name: name.unwrap_or_else(|| id.value.to_string()),
        id,
        from,
        reply_to,
        postal_address,
        expired_offer,
        timezone,
        language,
        send_window,
        frequency_cap,
        entry: entry.unwrap_or(Entry {
            pos: root.pos,
            triggers: Vec::new(),
            double_opt_in: None,
            re_entry: ReEntry::Never,
        }),
        products,
        fields,
        webhooks,
        scoring,
        on,
        stages,
    })
}

const TOP_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "from",
    "reply_to",
    "postal_address",
    "expired_offer",
    "timezone",
    "language",
    "send_window",
    "frequency_cap",
    "entry",
    "products",
    "fields",
    "webhooks",
    "scoring",
    "on",
    "stages",
];

/// A mapping being read: unknown keys are reported when it is created, so every key a caller
/// asks for afterwards is one of `allowed`.
struct Map<'a> {
    entries: &'a [(Key, Node)],
}

impl<'a> Map<'a> {
    fn new(sink: &mut Sink, node: &'a Node, what: &str, allowed: &[&str]) -> Option<Map<'a>> {
        let Value::Map(entries) = &node.value else {
            sink.error(
                node.pos,
                format!("{what}: expected a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                sink.error(
                    key.pos,
                    format!(
                        "unknown key \"{}\" in {what}{}",
                        key.name,
                        hint(&key.name, allowed)
                    ),
                );
            }
        }
        Some(Map { entries })
    }

    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k.pos)
    }

    /// Marks the end of reading; kept so every reader reads the same way.
    fn done(self) {}
}

/// A did-you-mean, or the list of allowed keys when nothing is close.
fn hint(wrong: &str, allowed: &[&str]) -> String {
    let close = did_you_mean(wrong, allowed.iter().copied());
    if close.is_empty() {
        format!(" (expected one of: {})", allowed.join(", "))
    } else {
        close
    }
}

fn string<'a>(sink: &mut Sink, node: &'a Node) -> Option<&'a str> {
    match &node.value {
        Value::Str(s) => Some(s),
        other => {
            sink.error(
                node.pos,
                format!("expected a string, found {}", other.kind()),
            );
            None
        }
    }
}

/// A scalar read as text: names like `2024` or `true` are still names.
fn scalar_text(sink: &mut Sink, node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            sink.error(node.pos, format!("expected a name, found {}", other.kind()));
            None
        }
    }
}

fn ident<T>(
    sink: &mut Sink,
    node: &Node,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
) -> Option<T> {
    let s = scalar_text(sink, node)?;
    parse(&s)
        .map_err(|e| sink.error(node.pos, e.to_string()))
        .ok()
}

fn located<T>(
    sink: &mut Sink,
    node: &Node,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
) -> Option<Located<T>> {
    ident(sink, node, parse).map(|value| Located {
        pos: node.pos,
        value,
    })
}

fn int(sink: &mut Sink, node: &Node) -> Option<i64> {
    match &node.value {
        Value::Int(i) => Some(*i),
        other => {
            sink.error(
                node.pos,
                format!("expected a whole number, found {}", other.kind()),
            );
            None
        }
    }
}

fn duration(sink: &mut Sink, node: &Node) -> Option<Duration> {
    let s = scalar_text(sink, node)?;
    Duration::parse(&s)
        .map_err(|e| sink.error(node.pos, e))
        .ok()
}

fn mailbox(sink: &mut Sink, node: &Node) -> Option<Mailbox> {
    let s = string(sink, node)?;
    Mailbox::parse(s)
        .map_err(|e| sink.error(node.pos, format!("bad sender: {e}")))
        .ok()
}

fn seq<'a>(sink: &mut Sink, node: &'a Node, what: &str) -> &'a [Node] {
    match &node.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        other => {
            sink.error(
                node.pos,
                format!("{what}: expected a list, found {}", other.kind()),
            );
            &[]
        }
    }
}

/// One name or a list of names.
fn one_or_many<T>(
    sink: &mut Sink,
    node: &Node,
    parse: impl Fn(&str) -> Result<T, InvalidValue> + Copy,
) -> Vec<T> {
    match &node.value {
        Value::Seq(items) => items.iter().filter_map(|n| ident(sink, n, parse)).collect(),
        _ => ident(sink, node, parse).into_iter().collect(),
    }
}

/// A scalar as a JSON value (for `set`, conditions and samples).
fn json_scalar(sink: &mut Sink, node: &Node) -> Option<serde_json::Value> {
    match &node.value {
        Value::Null => Some(serde_json::Value::Null),
        Value::Bool(b) => Some((*b).into()),
        Value::Int(i) => Some((*i).into()),
        Value::Float(f) => Some((*f).into()),
        Value::Str(s) => Some(s.clone().into()),
        other => {
            sink.error(
                node.pos,
                format!("expected a single value, found {}", other.kind()),
            );
            None
        }
    }
}

/// The entries of a mapping keyed by names (`products:`, `fields:`, `webhooks:`), with each
/// key read as its newtype; bad keys are reported and left out.
fn named_entries<'a, T>(
    sink: &mut Sink,
    node: &'a Node,
    what: &str,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
) -> Vec<(T, &'a Key, &'a Node)> {
    let Value::Map(entries) = &node.value else {
        sink.error(
            node.pos,
            format!("{what}: expected a mapping, found {}", node.value.kind()),
        );
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|(key, value)| match parse(&key.name) {
            Ok(id) => Some((id, key, value)),
            Err(e) => {
                sink.error(key.pos, e.to_string());
                None
            }
        })
        .collect()
}

fn parse_products(sink: &mut Sink, node: &Node) -> BTreeMap<ProductId, Product> {
    let mut out = BTreeMap::new();
    for (id, key, value) in named_entries(sink, node, "products", ProductId::parse) {
        let Some(m) = Map::new(sink, value, "product", &["name", "price", "currency"]) else {
            continue;
        };
        let name = m
            .get("name")
            .and_then(|n| string(sink, n))
            .map(str::to_string);
        let price = match m.get("price") {
            Some(n) => match n.value {
                Value::Int(i) if i >= 0 => Some(i as f64),
                Value::Float(f) if f >= 0.0 && f.is_finite() => Some(f),
                _ => {
                    sink.error(n.pos, "price: expected a number of 0 or more");
                    None
                }
            },
            None => {
                sink.error(key.pos, format!("product \"{id}\" has no price"));
                None
            }
        };
        let currency = match m.get("currency") {
            Some(n) => string(sink, n).and_then(|c| {
                if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) {
                    Some(c.to_string())
                } else {
                    sink.error(
                        n.pos,
                        format!("currency \"{c}\": expected a 3-letter ISO code like RUB or USD"),
                    );
                    None
                }
            }),
            None => {
                sink.error(key.pos, format!("product \"{id}\" has no currency"));
                None
            }
        };
        m.done();
        if let (Some(price), Some(currency)) = (price, currency) {
            out.insert(
                id.clone(),
                Product {
                    id,
                    name,
                    price,
                    currency,
                },
            );
        }
    }
    out
}

fn parse_fields(sink: &mut Sink, node: &Node) -> BTreeMap<FieldName, FieldDef> {
    let mut out = BTreeMap::new();
    for (name, key, value) in named_entries(sink, node, "fields", FieldName::parse) {
        if BUILTIN_FIELDS.iter().any(|(n, _, _)| *n == name.as_str()) {
            sink.error(
                key.pos,
                format!("field \"{name}\" is built in and needs no declaration"),
            );
            continue;
        }
        let Some(m) = Map::new(sink, value, "field", &["type", "sample"]) else {
            continue;
        };
        let kind = match m.get("type") {
            Some(n) => string(sink, n).and_then(|t| match t {
                "text" => Some(FieldKind::Text),
                "number" => Some(FieldKind::Number),
                "bool" => Some(FieldKind::Bool),
                "date" => Some(FieldKind::Date),
                "datetime" => Some(FieldKind::DateTime),
                other => {
                    sink.error(
                        n.pos,
                        format!(
                            "unknown field type \"{other}\"{}",
                            hint(other, &["text", "number", "bool", "date", "datetime"])
                        ),
                    );
                    None
                }
            }),
            None => Some(FieldKind::Text),
        };
        let Some(kind) = kind else { continue };
        let sample = match m.get("sample") {
            Some(n) => {
                let v = json_scalar(sink, n);
                if let Some(v) = &v
                    && let Err(e) = check_field_value(kind, v)
                {
                    sink.error(n.pos, format!("sample of \"{name}\": {e}"));
                }
                v.unwrap_or(serde_json::Value::Null)
            }
            None => default_sample(kind),
        };
        m.done();
        out.insert(name.clone(), FieldDef { name, kind, sample });
    }
    out
}

fn default_sample(kind: FieldKind) -> serde_json::Value {
    match kind {
        FieldKind::Text => "sample".into(),
        FieldKind::Number => 1.into(),
        FieldKind::Bool => true.into(),
        FieldKind::Date => "2026-01-15".into(),
        FieldKind::DateTime => "2026-01-15T19:00".into(),
    }
}

/// Whether `value` fits a field of `kind`; dates are `YYYY-MM-DD`, date-times an instant with
/// its offset or a wall time in the lead's zone ([`FieldTime`]).
pub fn check_field_value(kind: FieldKind, value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value as J;
    let ok = match (kind, value) {
        (_, J::Null) => true,
        (FieldKind::Text, J::String(_)) => true,
        (FieldKind::Number, J::Number(_)) => true,
        (FieldKind::Bool, J::Bool(_)) => true,
        (FieldKind::Date, J::String(s)) => matches!(FieldTime::parse(s), Some(FieldTime::Date(_))),
        (FieldKind::DateTime, J::String(s)) => matches!(
            FieldTime::parse(s),
            Some(FieldTime::Instant(_) | FieldTime::Local(_))
        ),
        _ => false,
    };
    match kind {
        _ if ok => Ok(()),
        FieldKind::Date => Err(format!("expected a date like 2026-01-15, found {value}")),
        FieldKind::DateTime => Err(format!(
            "expected a date and time like 2026-01-15T19:00:00+03:00 or 2026-01-15T19:00 (in the lead's time zone), found {value}"
        )),
        _ => Err(format!("expected a {} value, found {value}", kind.name())),
    }
}

fn parse_webhooks(sink: &mut Sink, node: &Node) -> BTreeMap<WebhookId, Webhook> {
    let mut out = BTreeMap::new();
    for (id, key, value) in named_entries(sink, node, "webhooks", WebhookId::parse) {
        let Some(m) = Map::new(sink, value, "webhook", &["url", "secret_env"]) else {
            continue;
        };
        let url = match m.get("url") {
            Some(n) => string(sink, n).and_then(|u| match check_url(u) {
                Ok(()) => Some(u.to_string()),
                Err(e) => {
                    sink.error(n.pos, e);
                    None
                }
            }),
            None => {
                sink.error(key.pos, format!("webhook \"{id}\" has no url"));
                None
            }
        };
        let secret_env = m.get("secret_env").and_then(|n| {
            let s = string(sink, n)?;
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                Some(s.to_string())
            } else {
                sink.error(
                    n.pos,
                    format!(
                        "secret_env \"{s}\": expected an environment variable name like CRM_SECRET"
                    ),
                );
                None
            }
        });
        m.done();
        if let Some(url) = url {
            out.insert(
                id.clone(),
                Webhook {
                    id,
                    url,
                    secret_env,
                },
            );
        }
    }
    out
}

/// An absolute http(s) URL with a host.
pub fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !u.chars().any(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!(
            "bad URL \"{u}\": expected an absolute http:// or https:// address"
        )),
    }
}

fn parse_scoring(sink: &mut Sink, node: &Node) -> Option<Scoring> {
    let m = Map::new(sink, node, "scoring", &["rules", "decay", "mql", "sql"])?;
    let mut rules = Vec::new();
    if let Some(n) = m.get("rules") {
        for item in seq(sink, n, "scoring rules") {
            let Some(r) = Map::new(
                sink,
                item,
                "scoring rule",
                &[EVENT_KEYS, &["points"]].concat(),
            ) else {
                continue;
            };
            let on = parse_event_match(sink, item, &r);
            let points = match r.get("points") {
                Some(p) => int(sink, p),
                None => {
                    sink.error(item.pos, "scoring rule has no `points`");
                    None
                }
            };
            r.done();
            if let (Some(on), Some(points)) = (on, points) {
                rules.push(ScoreRule { on, points });
            }
        }
    }
    let decay = m.get("decay").and_then(|n| {
        let d = Map::new(sink, n, "decay", &["points", "every"])?;
        let points = d.get("points").and_then(|p| int(sink, p));
        let every = d.get("every").and_then(|e| duration(sink, e));
        if d.get("points").is_none() || d.get("every").is_none() {
            sink.error(
                n.pos,
                "decay needs `points` and `every`, like { points: 5, every: 30d }",
            );
        }
        d.done();
        Some(Decay {
            points: points?,
            every: every?,
        })
    });
    let mql = m.get("mql").and_then(|n| int(sink, n));
    let sql = m.get("sql").and_then(|n| int(sink, n));
    if let (Some(q), Some(s), Some(pos)) = (mql, sql, m.key_pos("sql"))
        && s <= q
    {
        sink.error(
            pos,
            format!("the sql threshold ({s}) must be above the mql threshold ({q})"),
        );
    }
    m.done();
    Some(Scoring {
        rules,
        decay,
        mql,
        sql,
    })
}

fn parse_entry(sink: &mut Sink, node: &Node) -> Option<Entry> {
    let m = Map::new(
        sink,
        node,
        "entry",
        &["form", "event", "tag", "api", "double_opt_in", "re_entry"],
    )?;
    let errors_before = sink.diagnostics.len();
    let mut triggers = Vec::new();
    if let Some(n) = m.get("form") {
        let forms: Vec<&Node> = match &n.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![n],
        };
        for f in forms {
            if let Some(form) = parse_form(sink, f) {
                triggers.push(Located {
                    pos: f.pos,
                    value: EntryTrigger::Form(form),
                });
            }
        }
    }
    if let Some(n) = m.get("event") {
        for e in one_or_many(sink, n, EventName::parse) {
            if EventPattern::BUILTIN.contains(&e.as_str()) && e.as_str() != "purchase" {
                sink.error(n.pos, format!("entry on the built-in event \"{e}\" is not possible: use a form, a tag or a custom event"));
            }
            triggers.push(Located {
                pos: n.pos,
                value: EntryTrigger::Event(e),
            });
        }
    }
    if let Some(n) = m.get("tag") {
        for t in one_or_many(sink, n, Tag::parse) {
            triggers.push(Located {
                pos: n.pos,
                value: EntryTrigger::Tag(t),
            });
        }
    }
    if let Some(n) = m.get("api") {
        match n.value {
            Value::Bool(true) => triggers.push(Located {
                pos: n.pos,
                value: EntryTrigger::Api,
            }),
            Value::Bool(false) => {}
            _ => sink.error(
                n.pos,
                format!("api: expected true or false, found {}", n.value.kind()),
            ),
        }
    }
    if triggers.is_empty() && sink.diagnostics.len() == errors_before {
        sink.error(
            node.pos,
            "entry names no way in: add a form, an event, a tag or `api: true`",
        );
    }
    let double_opt_in = m
        .get("double_opt_in")
        .and_then(|n| located(sink, n, TemplateName::parse));
    let re_entry = match m.get("re_entry") {
        Some(n) => scalar_text(sink, n)
            .and_then(|s| match s.as_str() {
                "never" => Some(ReEntry::Never),
                "always" => Some(ReEntry::Always),
                other => match other.strip_prefix("after ") {
                    Some(d) => Duration::parse(d).map(ReEntry::After).map_err(|e| sink.error(n.pos, e)).ok(),
                    None => {
                        sink.error(n.pos, format!("re_entry \"{other}\": expected never, always, or after <duration> (like \"after 30d\")"));
                        None
                    }
                },
            })
            .unwrap_or(ReEntry::Never),
        None => ReEntry::Never,
    };
    m.done();
    Some(Entry {
        pos: node.pos,
        triggers,
        double_opt_in,
        re_entry,
    })
}

fn parse_form(sink: &mut Sink, node: &Node) -> Option<Form> {
    if let Value::Map(_) = node.value {
        let m = Map::new(sink, node, "form", &["id", "thank_you", "cors", "consent"])?;
        let id = match m.get("id") {
            Some(n) => ident(sink, n, FormId::parse),
            None => {
                sink.error(node.pos, "form has no `id`");
                None
            }
        };
        let thank_you = m.get("thank_you").and_then(|n| {
            let u = string(sink, n)?;
            check_url(u).map_err(|e| sink.error(n.pos, e)).ok()?;
            Some(u.to_string())
        });
        let mut cors = Vec::new();
        if let Some(n) = m.get("cors") {
            for o in seq(sink, n, "cors") {
                if let Some(s) = string(sink, o) {
                    match check_url(s) {
                        Ok(()) => cors.push(s.trim_end_matches('/').to_string()),
                        Err(e) => sink.error(o.pos, e),
                    }
                }
            }
        }
        let consent = m.get("consent").and_then(|n| {
            let path = string(sink, n)?;
            check_consent_path(path)
                .map_err(|e| sink.error(n.pos, e))
                .ok()?;
            Some(ConsentText {
                path: path.to_string(),
                pos: n.pos,
                sha256: None,
            })
        });
        m.done();
        Some(Form {
            id: id?,
            thank_you,
            cors,
            consent,
        })
    } else {
        let id = ident(sink, node, FormId::parse)?;
        Some(Form {
            id,
            thank_you: None,
            cors: Vec::new(),
            consent: None,
        })
    }
}

/// A consent text's path: relative, inside the project folder, plain characters.
fn check_consent_path(path: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    let plain = path.chars().all(|c| !c.is_control()) && !path.contains('\\');
    if path.trim().is_empty()
        || !plain
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "consent: \"{path}\" is not a file of the project (a path such as legal/newsletter-v3.txt, from the project folder)"
        ));
    }
    Ok(())
}

fn parse_stages(sink: &mut Sink, node: &Node) -> Vec<Stage> {
    let items = seq(sink, node, "stages");
    if items.is_empty() && matches!(node.value, Value::Seq(_) | Value::Null) {
        sink.error(node.pos, "the funnel has no stages");
    }
    items
        .iter()
        .filter_map(|item| parse_stage(sink, item))
        .collect()
}

fn parse_stage(sink: &mut Sink, node: &Node) -> Option<Stage> {
    let m = Map::new(
        sink,
        node,
        "stage",
        &["id", "name", "kind", "offer", "deadline", "on", "steps"],
    )?;
    let id = match m.get("id") {
        Some(n) => located(sink, n, StageId::parse),
        None => {
            sink.error(node.pos, "stage has no `id`");
            None
        }
    };
    let _ = m.get("name").and_then(|n| string(sink, n));
    let kind = m.get("kind").and_then(|n| {
        let s = string(sink, n)?;
        let kind = StageKind::ALL
            .iter()
            .find(|(k, _)| *k == s)
            .map(|(_, k)| *k);
        if kind.is_none() {
            let names: Vec<&str> = StageKind::ALL.iter().map(|(k, _)| *k).collect();
            sink.error(
                n.pos,
                format!("unknown stage kind \"{s}\"{}", hint(s, &names)),
            );
        }
        kind
    });
    let offer = m
        .get("offer")
        .and_then(|n| located(sink, n, ProductId::parse));
    let deadline = m.get("deadline").and_then(|n| duration(sink, n));
    let on = m
        .get("on")
        .map(|n| parse_transitions(sink, n))
        .unwrap_or_default();
    let steps = match m.get("steps") {
        Some(n) => parse_steps(sink, n),
        None => Vec::new(),
    };
    m.done();
    Some(Stage {
        id: id?,
        kind,
        offer,
        deadline,
        on,
        steps,
    })
}

const ACTIONS: &[&str] = &[
    "send",
    "wait",
    "wait_until",
    "goto",
    "exit",
    "tag",
    "untag",
    "set",
    "score",
    "webhook",
    "assign_session",
];

fn parse_steps(sink: &mut Sink, node: &Node) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut seen: HashMap<String, Pos> = HashMap::new();
    for item in seq(sink, node, "steps") {
        let allowed = [ACTIONS, &["id", "if", "urgent", "if_past"]].concat();
        let Some(m) = Map::new(sink, item, "step", &allowed) else {
            continue;
        };
        let Value::Map(entries) = &item.value else {
            continue;
        };
        let actions: Vec<&(Key, Node)> = entries
            .iter()
            .filter(|(k, _)| ACTIONS.contains(&k.name.as_str()))
            .collect();
        let (key, value) = match actions.as_slice() {
            [one] => (&one.0, &one.1),
            [] => {
                // An unknown key (already reported, like `sned:`) is most likely the action.
                if entries
                    .iter()
                    .all(|(k, _)| allowed.contains(&k.name.as_str()))
                {
                    sink.error(
                        item.pos,
                        format!("step has no action: expected one of {}", ACTIONS.join(", ")),
                    );
                }
                continue;
            }
            [first, second, ..] => {
                sink.error(
                    second.0.pos,
                    format!(
                        "step has both `{}` and `{}`: write each action as its own step",
                        first.0.name, second.0.name
                    ),
                );
                continue;
            }
        };
        let guard = m.get("if").and_then(|n| parse_condition(sink, n));
        let urgent = match m.get("urgent").map(|n| (n.pos, &n.value)) {
            None | Some((_, Value::Bool(false))) => false,
            Some((pos, Value::Bool(true))) => {
                if key.name != "send" {
                    sink.error(
                        pos,
                        "`urgent` is for a `send` step: only an email can be urgent",
                    );
                }
                true
            }
            Some((pos, _)) => {
                sink.error(pos, "`urgent` is true or false");
                false
            }
        };
        let if_past = m.get("if_past").and_then(|n| {
            if key.name != "wait_until" {
                sink.error(
                    n.pos,
                    "`if_past` is for a `wait_until` step: what to do when its moment has passed",
                );
            }
            let t = string(sink, n)?;
            let found = IfPast::ALL
                .iter()
                .find(|(name, _)| *name == t)
                .map(|(_, p)| *p);
            if found.is_none() {
                let names: Vec<&str> = IfPast::ALL.iter().map(|(n, _)| *n).collect();
                sink.error(n.pos, format!("unknown if_past \"{t}\"{}", hint(t, &names)));
            }
            found
        });
        let explicit_id = m.get("id").and_then(|n| located(sink, n, StepId::parse));
        let Some(action) = parse_action(sink, key, value) else {
            continue;
        };
        let keyword = action.keyword();
        let n = {
            let c = counts.entry(keyword).or_default();
            *c += 1;
            *c
        };
        let id = match explicit_id {
            Some(id) => {
                if let Some(prev) = seen.get(id.value.as_str()) {
                    sink.error(
                        id.pos,
                        format!(
                            "duplicate step id \"{}\" (first used at line {})",
                            id.value, prev.line
                        ),
                    );
                    continue;
                }
                id.value
            }
            None => derived_step_id(&action, n, &seen),
        };
        seen.insert(id.to_string(), item.pos);
        m.done();
        steps.push(Step {
            pos: item.pos,
            id,
            guard,
            action,
            urgent,
            if_past,
        });
    }
    steps
}

/// A readable, stable id for a step written without `id:`.
fn derived_step_id(action: &Action, n: usize, seen: &HashMap<String, Pos>) -> StepId {
    let base = match action {
        Action::Send(Send::Template(t)) => format!("send-{}", t.value),
        Action::Send(Send::Split(ts)) => {
            format!(
                "split-{}",
                ts.first().map(|t| t.value.as_str()).unwrap_or("ab")
            )
        }
        Action::Goto(s) => format!("goto-{}", s.value),
        Action::Exit(o) => format!("exit-{}", o.name()),
        Action::Webhook(w) => format!("webhook-{}", w.value),
        other => format!("{}-{n}", other.keyword().replace('_', "-")),
    };
    let mut id = base.clone();
    let mut k = 2;
    while seen.contains_key(&id) {
        id = format!("{base}-{k}");
        k += 1;
    }
    // Every part above is an identifier, and so is the joined id.
    StepId::parse(&id).unwrap_or_else(|_| StepId::parse("step").expect("a literal identifier"))
}

fn parse_action(sink: &mut Sink, key: &Key, node: &Node) -> Option<Action> {
    match key.name.as_str() {
        "send" => parse_send(sink, node).map(Action::Send),
        "wait" => duration(sink, node).map(Action::Wait),
        "wait_until" => parse_wait_until(sink, node).map(Action::WaitUntil),
        "goto" => located(sink, node, StageId::parse).map(Action::Goto),
        "exit" => outcome(sink, node).map(Action::Exit),
        "tag" => Some(Action::Tag(one_or_many(sink, node, Tag::parse))),
        "untag" => Some(Action::Untag(one_or_many(sink, node, Tag::parse))),
        "set" => {
            let Value::Map(entries) = &node.value else {
                sink.error(
                    node.pos,
                    format!(
                        "set: expected a mapping of field: value, found {}",
                        node.value.kind()
                    ),
                );
                return None;
            };
            let mut out = Vec::new();
            for (k, v) in entries {
                let field = FieldName::parse(&k.name)
                    .map_err(|e| sink.error(k.pos, e.to_string()))
                    .ok();
                let value = json_scalar(sink, v);
                if let (Some(f), Some(v)) = (field, value) {
                    out.push((
                        Located {
                            pos: k.pos,
                            value: f,
                        },
                        v,
                    ));
                }
            }
            Some(Action::Set(out))
        }
        "score" => int(sink, node).map(Action::Score),
        "webhook" => located(sink, node, WebhookId::parse).map(Action::Webhook),
        "assign_session" => parse_session(sink, node).map(Action::AssignSession),
        _ => None,
    }
}

fn parse_send(sink: &mut Sink, node: &Node) -> Option<Send> {
    match &node.value {
        Value::Map(_) => {
            let m = Map::new(sink, node, "send", &["split"])?;
            let Some(split) = m.get("split") else {
                sink.error(
                    node.pos,
                    "send: write a template name, or `split: [a, b]` for an A/B test",
                );
                return None;
            };
            let variants: Vec<Located<TemplateName>> = seq(sink, split, "split")
                .iter()
                .filter_map(|n| located(sink, n, TemplateName::parse))
                .collect();
            if variants.len() < 2 && matches!(split.value, Value::Seq(_)) {
                sink.error(split.pos, "split needs at least two templates");
            }
            m.done();
            Some(Send::Split(variants))
        }
        _ => located(sink, node, TemplateName::parse).map(Send::Template),
    }
}

fn outcome(sink: &mut Sink, node: &Node) -> Option<Outcome> {
    let s = scalar_text(sink, node)?;
    let found = Outcome::ALL.iter().find(|(n, _)| *n == s).map(|(_, o)| *o);
    if found.is_none() {
        let names: Vec<&str> = Outcome::ALL.iter().map(|(n, _)| *n).collect();
        sink.error(
            node.pos,
            format!("unknown outcome \"{s}\"{}", hint(&s, &names)),
        );
    }
    found
}

/// `deadline - 6h`, `lead.birthday - 1d`, `2026-12-01T10:00:00+03:00`, `2026-12-01 10:00`, or
/// a 5-field cron expression.
fn parse_session(sink: &mut Sink, node: &Node) -> Option<Session> {
    let m = Map::new(
        sink,
        node,
        "assign_session",
        &["schedule", "min_lead_time", "field"],
    )?;
    let schedule = match m.get("schedule") {
        Some(n) => string(sink, n).and_then(|t| {
            Cron::parse(t)
                .map_err(|e| sink.error(n.pos, format!("schedule: {e}")))
                .ok()
        }),
        None => {
            sink.error(
                node.pos,
                "assign_session needs `schedule`: the sessions as cron, like \"0 11,20 * * *\"",
            );
            None
        }
    };
    let min_lead_time = match m.get("min_lead_time") {
        Some(n) => duration(sink, n),
        None => Some(Duration::from_secs(0)),
    };
    let field = match m.get("field") {
        Some(n) => located(sink, n, FieldName::parse),
        None => {
            sink.error(
                node.pos,
                "assign_session needs `field`: the datetime field the session is written to",
            );
            None
        }
    };
    m.done();
    Some(Session {
        schedule: schedule?,
        min_lead_time: min_lead_time?,
        field: field?,
    })
}

fn parse_wait_until(sink: &mut Sink, node: &Node) -> Option<WaitUntil> {
    let text = string(sink, node)?.trim();
    let offset = |rest: &str| -> Result<i64, String> {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(0);
        }
        let (sign, d) = if let Some(d) = rest.strip_prefix('-') {
            (-1, d)
        } else if let Some(d) = rest.strip_prefix('+') {
            (1, d)
        } else {
            return Err(format!(
                "bad offset \"{rest}\": write it like \"- 6h\" or \"+ 1d\""
            ));
        };
        Ok(sign * Duration::parse(d)?.as_secs() as i64)
    };
    if let Some(rest) = text.strip_prefix("deadline") {
        return offset(rest)
            .map(|offset_secs| WaitUntil::Deadline { offset_secs })
            .map_err(|e| sink.error(node.pos, e))
            .ok();
    }
    if let Some(rest) = text.strip_prefix("lead.") {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '+' || c == '-')
            .unwrap_or(rest.len());
        let (name, rest) = rest.split_at(end);
        // `-` may be part of a field name; an offset always has a space before its sign.
        let name = name.trim();
        let field = FieldName::parse(name)
            .map_err(|e| sink.error(node.pos, e.to_string()))
            .ok()?;
        return offset(rest)
            .map(|offset_secs| WaitUntil::Field {
                field: Located {
                    pos: node.pos,
                    value: field,
                },
                offset_secs,
            })
            .map_err(|e| sink.error(node.pos, e))
            .ok();
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(WaitUntil::At(at));
    }
    if let Ok(local) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M") {
        return Some(WaitUntil::Local(local));
    }
    if text.split_whitespace().count() == 5 {
        return Cron::parse(text)
            .map(WaitUntil::Cron)
            .map_err(|e| sink.error(node.pos, e))
            .ok();
    }
    sink.error(
        node.pos,
        format!("wait_until \"{text}\": expected a cron expression (\"0 19 * * Thu\"), \"deadline - 6h\", \"lead.<date or datetime field> - 1h\", or a time like \"2026-12-01 10:00\""),
    );
    None
}

fn parse_transitions(sink: &mut Sink, node: &Node) -> Vec<Transition> {
    let mut out = Vec::new();
    for item in seq(sink, node, "on") {
        let allowed = [EVENT_KEYS, &["if", "goto", "exit"]].concat();
        let Some(m) = Map::new(sink, item, "transition", &allowed) else {
            continue;
        };
        let on = parse_event_match(sink, item, &m);
        let guard = m.get("if").and_then(|n| parse_condition(sink, n));
        let target = match (m.get("goto"), m.get("exit")) {
            (Some(g), None) => located(sink, g, StageId::parse).map(Target::Goto),
            (None, Some(e)) => outcome(sink, e).map(Target::Exit),
            (Some(_), Some(_)) => {
                sink.error(
                    item.pos,
                    "transition has both `goto` and `exit`: choose one",
                );
                None
            }
            (None, None) => {
                sink.error(
                    item.pos,
                    "transition needs `goto: <stage>` or `exit: <outcome>`",
                );
                None
            }
        };
        m.done();
        if let (Some(on), Some(target)) = (on, target) {
            out.push(Transition {
                pos: item.pos,
                on,
                guard,
                target,
            });
        }
    }
    out
}

/// Keys that describe which events match, shared by transitions and scoring rules.
const EVENT_KEYS: &[&str] = &["event", "product", "template", "link", "form"];

fn parse_event_match(sink: &mut Sink, node: &Node, m: &Map) -> Option<EventMatch> {
    let Some(ev) = m.get("event") else {
        sink.error(
            node.pos,
            "missing `event`: name the event that triggers this",
        );
        return None;
    };
    let name = ident(sink, ev, EventName::parse)?;
    let filters = ["product", "template", "link", "form"];
    let allowed: &[&str] = match name.as_str() {
        "purchase" => &["product"],
        "click" => &["template", "link"],
        "open" => &["template"],
        "signup" => &["form"],
        _ => &[],
    };
    for f in filters {
        if !allowed.contains(&f)
            && let Some(p) = m.key_pos(f)
        {
            sink.error(p, format!("`{f}` does not apply to the event \"{name}\""));
        }
    }
    let template = m
        .get("template")
        .and_then(|n| located(sink, n, TemplateName::parse));
    let event = match name.as_str() {
        "purchase" => EventPattern::Purchase {
            product: m
                .get("product")
                .and_then(|n| located(sink, n, ProductId::parse)),
        },
        "click" => EventPattern::Click {
            template,
            link: m.get("link").and_then(|n| scalar_text(sink, n)),
        },
        "open" => EventPattern::Open { template },
        "signup" => EventPattern::Signup {
            form: m.get("form").and_then(|n| located(sink, n, FormId::parse)),
        },
        "confirmed" => EventPattern::Confirmed,
        "unsubscribed" => EventPattern::Unsubscribed,
        "bounced" => EventPattern::Bounced,
        "complained" => EventPattern::Complained,
        "mql" => EventPattern::Mql,
        "sql" => EventPattern::Sql,
        _ => EventPattern::Custom(name),
    };
    Some(EventMatch { pos: ev.pos, event })
}

const CONDITIONS: &[&str] = &[
    "clicked",
    "opened",
    "tag",
    "field",
    "score",
    "purchased",
    "not",
    "all",
    "any",
];

fn parse_condition(sink: &mut Sink, node: &Node) -> Option<Condition> {
    let ops: Vec<&str> = CompareOp::ALL.iter().map(|(n, _)| *n).collect();
    let allowed = [CONDITIONS, &ops].concat();
    let m = Map::new(sink, node, "condition", &allowed)?;
    let Value::Map(entries) = &node.value else {
        return None;
    };
    let heads: Vec<&(Key, Node)> = entries
        .iter()
        .filter(|(k, _)| CONDITIONS.contains(&k.name.as_str()))
        .collect();
    let [(key, value)] = heads.as_slice() else {
        if heads.is_empty() {
            sink.error(
                node.pos,
                format!("condition: expected one of {}", CONDITIONS.join(", ")),
            );
        } else {
            sink.error(
                node.pos,
                "condition has several tests: combine them with `all: [...]` or `any: [...]`",
            );
        }
        return None;
    };
    let op_keys: Vec<&(Key, Node)> = entries
        .iter()
        .filter(|(k, _)| ops.contains(&k.name.as_str()))
        .collect();
    if key.name != "field"
        && let Some((k, _)) = op_keys.first()
    {
        sink.error(k.pos, format!("`{}` only goes with `field`", k.name));
    }
    let cond = match key.name.as_str() {
        "clicked" => match &value.value {
            Value::Map(_) => {
                let c = Map::new(sink, value, "clicked", &["template", "link"])?;
                let template = match c.get("template") {
                    Some(n) => located(sink, n, TemplateName::parse),
                    None => {
                        sink.error(
                            value.pos,
                            "clicked: name the `template` whose link was clicked",
                        );
                        None
                    }
                };
                let link = c.get("link").and_then(|n| scalar_text(sink, n));
                c.done();
                Condition::Clicked {
                    template: template?,
                    link,
                }
            }
            _ => Condition::Clicked {
                template: located(sink, value, TemplateName::parse)?,
                link: None,
            },
        },
        "opened" => Condition::Opened(located(sink, value, TemplateName::parse)?),
        "tag" => Condition::HasTag(ident(sink, value, Tag::parse)?),
        "purchased" => Condition::Purchased(located(sink, value, ProductId::parse)?),
        "field" => {
            let field = located(sink, value, FieldName::parse)?;
            let [(op_key, op_value)] = op_keys.as_slice() else {
                sink.error(
                    value.pos,
                    format!(
                        "field condition needs exactly one comparison: {}",
                        ops.join(", ")
                    ),
                );
                return None;
            };
            let op = CompareOp::ALL
                .iter()
                .find(|(n, _)| *n == op_key.name)
                .map(|(_, o)| *o)?;
            let v = json_scalar(sink, op_value)?;
            if op == CompareOp::Exists && !v.is_boolean() {
                sink.error(op_value.pos, "exists: expected true or false");
            }
            Condition::Field {
                field,
                op,
                value: v,
            }
        }
        "score" => {
            let Value::Map(cmp) = &value.value else {
                sink.error(value.pos, "score: write a comparison like { gte: 50 }");
                return None;
            };
            let [(k, v)] = cmp.as_slice() else {
                sink.error(
                    value.pos,
                    "score: write exactly one comparison like { gte: 50 }",
                );
                return None;
            };
            let op = CompareOp::ALL
                .iter()
                .find(|(n, o)| {
                    *n == k.name && !matches!(o, CompareOp::Contains | CompareOp::Exists)
                })
                .map(|(_, o)| *o);
            let Some(op) = op else {
                sink.error(
                    k.pos,
                    format!(
                        "unknown comparison \"{}\"{}",
                        k.name,
                        hint(&k.name, &["eq", "ne", "gt", "gte", "lt", "lte"])
                    ),
                );
                return None;
            };
            Condition::Score {
                op,
                value: int(sink, v)?,
            }
        }
        "not" => Condition::Not(Box::new(parse_condition(sink, value)?)),
        "all" | "any" => {
            let items = seq(sink, value, &key.name);
            if items.is_empty() {
                sink.error(
                    value.pos,
                    format!("{}: expected at least one condition", key.name),
                );
            }
            let conds: Vec<Condition> = items
                .iter()
                .filter_map(|n| parse_condition(sink, n))
                .collect();
            if conds.len() != items.len() {
                return None;
            }
            if key.name == "all" {
                Condition::All(conds)
            } else {
                Condition::Any(conds)
            }
        }
        _ => return None,
    };
    m.done();
    Some(cond)
}
