//! YooKassa (ЮKassa). A notification is JSON — `{"type": "notification", "event":
//! "payment.succeeded", "object": {payment}}` — and unsigned: it is taken only from YooKassa's
//! published addresses (`allowed_ips`), and when the shop id and secret key are set the
//! payment (or refund) is re-read through the API and that answer is what counts. Any 200
//! answer takes it. The buyer's email and the product come from the payment's `metadata`
//! (`email`, `product`; else the `description` is the item), as the shop sets them when it
//! creates the payment.
//!
//! Reference: yookassa.ru/developers/using-api/webhooks ("Входящие уведомления": the events,
//! the IP addresses, the answer) and /developers/api ("Объект платежа", "Объект возврата").

use std::net::IpAddr;

use serde_json::Value;

use super::{Account, Line, Notice, Notification, PayError, Payment, Refund};
use super::{amount, currency, json_object, text};

/// The API a payment is re-read from.
pub const API_URL: &str = "https://api.yookassa.ru/v3";

/// The addresses YooKassa sends notifications from, as its documentation lists them.
pub const PUBLISHED: [&str; 7] = [
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.156.11/32",
    "77.75.156.35/32",
    "77.75.154.128/25",
    "2a02:5180::/32",
];

pub fn published_ranges() -> Vec<ipnet::IpNet> {
    PUBLISHED
        .iter()
        .map(|r| r.parse().expect("a published range"))
        .collect()
}

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let from = match n.from {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(n.from),
        v4 => v4,
    };
    if !account.allowed.iter().any(|net| net.contains(&from)) {
        return Err(PayError::Forged(format!(
            "{from} is not among the addresses YooKassa sends from (`allowed_ips`)"
        )));
    }
    let v = json_object(n.body)?;
    let event = text(&v, "event").ok_or_else(|| PayError::Malformed("event: missing".into()))?;
    let object = v
        .get("object")
        .filter(|o| o.is_object())
        .ok_or_else(|| PayError::Malformed("object: missing".into()))?;
    notice(&event, object)
}

/// What `event` says of `object`: a payment or a refund, from a notification or the API.
pub fn notice(event: &str, object: &Value) -> Result<Notice, PayError> {
    match event {
        "payment.succeeded" => payment(object),
        "refund.succeeded" => refund(object),
        other => Ok(Notice::Ignored(format!("{other} records nothing"))),
    }
}

/// The API path a notice is re-read from.
pub fn api_path(notice: &Notice) -> Option<(String, &'static str)> {
    match notice {
        Notice::Paid(p) => Some((format!("/payments/{}", p.id), "payment.succeeded")),
        Notice::Refunded(r) => Some((format!("/refunds/{}", r.id), "refund.succeeded")),
        Notice::Ignored(_) => None,
    }
}

fn id(o: &Value, key: &str) -> Result<String, PayError> {
    text(o, key)
        .filter(|i| i.len() <= 64)
        .ok_or_else(|| PayError::Malformed(format!("object.{key}: missing")))
}

fn at(o: &Value, keys: &[&str]) -> Option<chrono::DateTime<chrono::Utc>> {
    keys.iter().find_map(|k| {
        chrono::DateTime::parse_from_rfc3339(&text(o, k)?)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    })
}

fn payment(o: &Value) -> Result<Notice, PayError> {
    let status = text(o, "status").unwrap_or_default();
    if status != "succeeded" {
        return Ok(Notice::Ignored(format!("the payment is {status}")));
    }
    let money = o.get("amount").cloned().unwrap_or_default();
    let metadata = o.get("metadata").cloned().unwrap_or_default();
    Ok(Notice::Paid(Payment {
        id: id(o, "id")?,
        email: text(&metadata, "email"),
        lines: vec![Line {
            item: text(&metadata, "product").or_else(|| text(o, "description")),
            amount: amount("object.amount.value", money.get("value"))?,
        }],
        currency: currency(
            "object.amount.currency",
            &text(&money, "currency").unwrap_or_default(),
        )?,
        at: at(o, &["captured_at", "created_at"]),
    }))
}

fn refund(o: &Value) -> Result<Notice, PayError> {
    let status = text(o, "status").unwrap_or_default();
    if status != "succeeded" {
        return Ok(Notice::Ignored(format!("the refund is {status}")));
    }
    let money = o.get("amount").cloned().unwrap_or_default();
    Ok(Notice::Refunded(Refund {
        id: id(o, "id")?,
        payment: id(o, "payment_id")?,
        email: None,
        amount: Some(amount("object.amount.value", money.get("value"))?),
        currency: Some(currency(
            "object.amount.currency",
            &text(&money, "currency").unwrap_or_default(),
        )?),
        at: at(o, &["created_at"]),
    }))
}
