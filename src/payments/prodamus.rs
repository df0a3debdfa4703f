//! Prodamus. A notification is a form (`products[0][name]=…`, the fields of the payment) with
//! a `Sign` header: HMAC-SHA256 (hex) under the secret key over the data as Prodamus's own
//! library writes it — every value a string, keys sorted at every level, PHP's `json_encode`
//! with unescaped Unicode (and `/` escaped). A 200 answer takes it. Each product of the cart
//! is a purchase (its `name` the item, its `sum` the amount); the buyer is `customer_email`.
//!
//! Reference: help.prodamus.ru, "Уведомления об оплате" (the fields, `payment_status`) and
//! "Проверка подписи" (the Hmac class of its PHP library).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Account, Line, Notice, Notification, PayError, Payment};
use super::{amount, currency, form, hmac_sha256, json_object, key, same_hex, text};

/// The data of a notification: nested by its bracketed keys, every value a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Text(String),
    Map(BTreeMap<String, Data>),
}

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let key = key(account)?;
    let data = if n.body.trim_ascii_start().starts_with(b"{") {
        of_json(&json_object(n.body)?)
    } else {
        of_form(&form(n.body))
    };
    let sent = n
        .header("sign")
        .ok_or_else(|| PayError::Forged("the Sign header is missing".into()))?;
    if !same_hex(sent, &hmac_sha256(key, signed_text(&data).as_bytes())) {
        return Err(PayError::Forged(
            "Sign does not match the data under the secret key".into(),
        ));
    }
    let v = to_json(&data);
    match text(&v, "payment_status").as_deref() {
        Some("success") => {}
        other => {
            return Ok(Notice::Ignored(format!(
                "the payment is {}",
                other.unwrap_or("without a status")
            )));
        }
    }
    let lines = match v.get("products") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Line {
                    item: text(p, "name"),
                    amount: amount(&format!("products[{i}][sum]"), p.get("sum"))?,
                })
            })
            .collect::<Result<_, PayError>>()?,
        _ => vec![Line {
            item: None,
            amount: amount("sum", v.get("sum"))?,
        }],
    };
    Ok(Notice::Paid(Payment {
        id: text(&v, "order_id")
            .filter(|i| i.len() <= 64)
            .ok_or_else(|| PayError::Malformed("order_id: missing".into()))?,
        email: text(&v, "customer_email"),
        lines,
        currency: currency(
            "currency",
            &text(&v, "currency").unwrap_or_else(|| account.currency.clone()),
        )?,
        at: text(&v, "date")
            .and_then(|d| chrono::DateTime::parse_from_rfc3339(&d).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
    }))
}

/// A form's pairs nested by their bracketed keys (`products[0][name]`).
pub fn of_form(pairs: &[(String, String)]) -> Data {
    let mut root = BTreeMap::new();
    for (k, v) in pairs {
        let mut path: Vec<&str> = Vec::new();
        let (head, mut rest) = k.split_once('[').map_or((k.as_str(), ""), |(h, r)| (h, r));
        path.push(head);
        while let Some((part, after)) = rest.split_once(']') {
            path.push(part);
            rest = after.strip_prefix('[').unwrap_or(after);
        }
        insert(&mut root, &path, v.clone());
    }
    Data::Map(root)
}

fn insert(map: &mut BTreeMap<String, Data>, path: &[&str], value: String) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.to_string(), Data::Text(value));
        }
        [first, rest @ ..] => {
            let slot = map
                .entry(first.to_string())
                .or_insert_with(|| Data::Map(BTreeMap::new()));
            if let Data::Text(_) = slot {
                *slot = Data::Map(BTreeMap::new());
            }
            if let Data::Map(m) = slot {
                insert(m, rest, value);
            }
        }
    }
}

/// JSON data with every value made a string (as the library's `strval` does).
pub fn of_json(v: &Value) -> Data {
    match v {
        Value::Object(o) => Data::Map(o.iter().map(|(k, v)| (k.clone(), of_json(v))).collect()),
        Value::Array(a) => Data::Map(
            a.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), of_json(v)))
                .collect(),
        ),
        Value::String(s) => Data::Text(s.clone()),
        Value::Bool(true) => Data::Text("1".into()),
        Value::Bool(false) | Value::Null => Data::Text(String::new()),
        Value::Number(n) => Data::Text(n.to_string()),
    }
}

/// Keys `0`, `1`, … in order: a PHP list, written as a JSON array.
fn list(m: &BTreeMap<String, Data>) -> Option<Vec<&Data>> {
    let mut items: Vec<(usize, &Data)> = m
        .iter()
        .map(|(k, v)| Some((k.parse::<usize>().ok().filter(|_| !k.starts_with('+'))?, v)))
        .collect::<Option<_>>()?;
    items.sort_by_key(|(i, _)| *i);
    items
        .iter()
        .enumerate()
        .all(|(want, (i, _))| want == *i)
        .then(|| items.into_iter().map(|(_, v)| v).collect())
}

/// The text the signature is made over.
pub fn signed_text(d: &Data) -> String {
    let mut out = String::new();
    write(d, &mut out);
    out
}

fn write(d: &Data, out: &mut String) {
    match d {
        Data::Text(s) => php_string(s, out),
        Data::Map(m) => match list(m) {
            Some(items) => {
                out.push('[');
                for (i, v) in items.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            None => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    php_string(k, out);
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
        },
    }
}

/// A string as PHP's `json_encode(…, JSON_UNESCAPED_UNICODE)` writes it.
fn php_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn to_json(d: &Data) -> Value {
    match d {
        Data::Text(s) => Value::String(s.clone()),
        Data::Map(m) => match list(m) {
            Some(items) => Value::Array(items.into_iter().map(to_json).collect()),
            None => Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_text_is_php_json_of_sorted_strings() {
        let d = of_form(&[
            ("sum".into(), "1000.00".into()),
            ("products[1][name]".into(), "Б".into()),
            ("products[0][name]".into(), "Курс \"A/B\"".into()),
            ("order_id".into(), "7".into()),
        ]);
        assert_eq!(
            signed_text(&d),
            r#"{"order_id":"7","products":[{"name":"Курс \"A\/B\""},{"name":"Б"}],"sum":"1000.00"}"#
        );
        // JSON numbers and booleans become the strings PHP's strval makes.
        let j = of_json(&serde_json::json!({"b": true, "a": 5, "c": [1.5]}));
        assert_eq!(signed_text(&j), r#"{"a":"5","b":"1","c":["1.5"]}"#);
    }
}
