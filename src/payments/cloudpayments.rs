//! CloudPayments. A notification is a form (or JSON, as set in its back office) signed in the
//! `Content-HMAC` header: base64 of HMAC-SHA256 over the body with the API secret
//! (`X-Content-HMAC` is the same over the URL-decoded body; either is taken). It is taken by
//! answering `{"code":0}`. Point its Pay, Confirm and Refund notifications at the URL (a Check
//! notification may be sent too, with `?type=check`: it is answered, not recorded). The buyer
//! is `Email` (else `Data.email`, else an `AccountId` that is an address); the item is
//! `Data.product`, else the payment's `Description`.
//!
//! Reference: developers.cloudpayments.ru, "Уведомления" (Pay, Confirm, Refund; "Проверка
//! уведомлений" for the HMAC; the answer codes).

use base64::Engine as _;
use serde_json::Value;

use super::{Account, Line, Notice, Notification, PayError, Payment, Refund};
use super::{amount, currency, form, hmac_sha256, json_object, key, same, text};

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let key = key(account)?;
    let signed = |header: &str, body: &[u8]| {
        n.header(header).is_some_and(|sent| {
            base64::engine::general_purpose::STANDARD
                .decode(sent.trim())
                .is_ok_and(|sent| same(&sent, &hmac_sha256(key, body)))
        })
    };
    let plus_as_space: Vec<u8> = n
        .body
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded = percent_encoding::percent_decode(&plus_as_space).collect::<Vec<u8>>();
    if !signed("content-hmac", n.body) && !signed("x-content-hmac", &decoded) {
        return Err(PayError::Forged(
            "Content-HMAC does not match the body under the API secret".into(),
        ));
    }
    let v = if n.body.trim_ascii_start().starts_with(b"{") {
        json_object(n.body)?
    } else {
        Value::Object(
            form(n.body)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    };
    let kind = n
        .query
        .and_then(|q| form(q.as_bytes()).into_iter().find(|(k, _)| k == "type"))
        .map(|(_, t)| t.to_ascii_lowercase());
    let refund = v.get("PaymentTransactionId").is_some()
        || text(&v, "OperationType").as_deref() == Some("Refund");
    match kind.as_deref() {
        Some("check") => return Ok(Notice::Ignored("a check, before the payment".into())),
        Some("fail" | "cancel" | "recurrent") => {
            return Ok(Notice::Ignored(format!(
                "a {} notification",
                kind.unwrap_or_default()
            )));
        }
        Some("refund") => return refund_of(&v),
        _ if refund => return refund_of(&v),
        _ => {}
    }
    match text(&v, "Status").as_deref() {
        Some("Completed") => {}
        Some(other) => return Ok(Notice::Ignored(format!("the payment is {other}"))),
        None => return Err(PayError::Malformed("Status: missing".into())),
    }
    let data = data(&v);
    Ok(Notice::Paid(Payment {
        id: id(&v, "TransactionId")?,
        email: buyer(&v, &data),
        lines: vec![Line {
            item: text(&data, "product").or_else(|| text(&v, "Description")),
            amount: amount("Amount", v.get("Amount"))?,
        }],
        currency: currency(
            "Currency",
            &text(&v, "Currency").unwrap_or_else(|| account.currency.clone()),
        )?,
        at: at(&v),
    }))
}

fn refund_of(v: &Value) -> Result<Notice, PayError> {
    Ok(Notice::Refunded(Refund {
        id: id(v, "TransactionId")?,
        payment: id(v, "PaymentTransactionId")?,
        email: buyer(v, &data(v)),
        amount: Some(amount("Amount", v.get("Amount"))?),
        currency: text(v, "Currency")
            .map(|c| currency("Currency", &c))
            .transpose()?,
        at: at(v),
    }))
}

fn id(v: &Value, key: &str) -> Result<String, PayError> {
    text(v, key)
        .filter(|i| i.len() <= 64)
        .ok_or_else(|| PayError::Malformed(format!("{key}: missing")))
}

/// `Data`: the JSON the payment was made with (a string in a form, an object in JSON).
fn data(v: &Value) -> Value {
    match v.get("Data") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
        Some(o @ Value::Object(_)) => o.clone(),
        _ => Value::Null,
    }
}

fn buyer(v: &Value, data: &Value) -> Option<String> {
    text(v, "Email")
        .or_else(|| text(data, "email"))
        .or_else(|| text(v, "AccountId").filter(|a| a.contains('@')))
}

/// `DateTime`, UTC as `yyyy-MM-dd HH:mm:ss`.
fn at(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(&text(v, "DateTime")?, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}
