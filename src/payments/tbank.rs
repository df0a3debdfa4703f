//! T-Bank (Т-Банк, formerly Tinkoff) internet acquiring. A notification is JSON with a
//! `Token`: SHA-256 (hex) of the values of its top-level fields but `Token` and the nested
//! `Data`/`Receipt` objects, with `Password` (the terminal's) added, concatenated in the order
//! of their names (`true`/`false` for booleans). It is taken by answering `OK`. `CONFIRMED` is
//! a payment (`Amount` in kopecks), `REFUNDED`/`PARTIAL_REFUNDED` a refund; other statuses
//! record nothing. The buyer and the item are `Data.Email` and `Data.product`: pass them in
//! `DATA` when starting the payment and turn on sending DATA in notifications.
//!
//! Reference: tbank.ru/kassa/dev/payments, "Уведомления" (the notification and its statuses)
//! and "Подпись запроса" (the Token).

use serde_json::Value;

use super::{Account, Line, Notice, Notification, PayError, Payment, Refund};
use super::{currency, json_object, key, same_hex, text};
use crate::domain::Money;

/// The text the token is the SHA-256 of.
pub fn signed_text(v: &Value, password: &str) -> String {
    let mut fields: Vec<(&str, String)> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "Token")
        .filter_map(|(k, v)| {
            Some((
                k.as_str(),
                match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                },
            ))
        })
        .collect();
    fields.push(("Password", password.to_string()));
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields.into_iter().map(|(_, v)| v).collect()
}

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let password = std::str::from_utf8(key(account)?).unwrap_or_default();
    let v = json_object(n.body)?;
    let sent = text(&v, "Token").ok_or_else(|| PayError::Forged("Token is missing".into()))?;
    use sha2::Digest as _;
    if !same_hex(
        &sent,
        &sha2::Sha256::digest(signed_text(&v, password).as_bytes()),
    ) {
        return Err(PayError::Forged(
            "Token does not match under the terminal's password".into(),
        ));
    }
    if let Some(terminal) = &account.terminal_key
        && text(&v, "TerminalKey").as_deref() != Some(terminal.as_str())
    {
        return Err(PayError::Forged(format!(
            "the notification is not for terminal {terminal}"
        )));
    }
    let status = text(&v, "Status").unwrap_or_default();
    if v.get("Success") != Some(&Value::Bool(true)) {
        return Ok(Notice::Ignored(format!("{status}, not a success")));
    }
    let payment = text(&v, "PaymentId")
        .filter(|i| i.len() <= 32)
        .ok_or_else(|| PayError::Malformed("PaymentId: missing".into()))?;
    let amount = v
        .get("Amount")
        .and_then(Value::as_i64)
        .and_then(|k| Money::of_minor(k, 2))
        .ok_or_else(|| PayError::Malformed("Amount: missing or not kopecks".into()))?;
    let data = v.get("Data").cloned().unwrap_or_default();
    let email = text(&data, "Email").or_else(|| text(&data, "email"));
    let currency = currency("currency", &account.currency)?;
    match status.as_str() {
        "CONFIRMED" => Ok(Notice::Paid(Payment {
            id: payment,
            email,
            lines: vec![Line {
                item: text(&data, "product").or_else(|| text(&data, "Product")),
                amount,
            }],
            currency,
            at: None,
        })),
        "REFUNDED" | "PARTIAL_REFUNDED" => Ok(Notice::Refunded(Refund {
            id: format!("{payment}:{status}:{}", amount.0),
            payment,
            email,
            amount: Some(amount),
            currency: Some(currency),
            at: None,
        })),
        other => Ok(Notice::Ignored(format!("the payment is {other}"))),
    }
}
