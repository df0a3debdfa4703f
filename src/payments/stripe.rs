//! Stripe. An event is JSON signed in `Stripe-Signature: t=…,v1=…`: HMAC-SHA256 (hex) under
//! the endpoint's signing secret (`whsec_…`) over `t.body`; a timestamp further than the
//! tolerance (300 s) from now is refused, so a captured event cannot be replayed later. Any
//! 2xx answer takes it. `checkout.session.completed` (paid) and
//! `checkout.session.async_payment_succeeded` are payments, keyed by their payment intent (so
//! `payment_intent.succeeded`, also read, counts the same payment once); `charge.refunded` is
//! a refund. Amounts are in the currency's smallest unit. The item is `metadata.product`, else
//! the Payment Link (`plink_…`) or the description; the buyer is the customer's email.
//!
//! Reference: docs.stripe.com/webhooks ("Verify webhook signatures manually", "Preventing
//! replay attacks"), /api/checkout/sessions/object, /api/payment_intents/object,
//! /api/charges/object, /currencies ("Zero-decimal currencies").

use serde_json::Value;

use super::{Account, Line, Notice, Notification, PayError, Payment, Refund};
use super::{currency, hmac_sha256, json_object, key, same_hex, text};
use crate::domain::Money;

/// Currencies Stripe counts in whole units, and those with three decimals.
const ZERO_DECIMAL: [&str; 16] = [
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];
const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];

/// An amount in `currency`'s smallest unit.
fn minor(field: &str, v: Option<&Value>, currency: &str) -> Result<Money, PayError> {
    let exponent = if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    };
    v.and_then(Value::as_i64)
        .and_then(|m| Money::of_minor(m, exponent))
        .ok_or_else(|| PayError::Malformed(format!("{field}: missing or not an amount")))
}

/// Checks `Stripe-Signature` against the body; the timestamp within `tolerance` seconds.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), PayError> {
    let mut at = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => at = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.push(s),
            _ => {}
        }
    }
    let at = at.ok_or_else(|| PayError::Forged("Stripe-Signature has no timestamp".into()))?;
    let mut signed = format!("{at}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = hmac_sha256(secret, &signed);
    if !signatures.iter().any(|s| same_hex(s, &expected)) {
        return Err(PayError::Forged(
            "Stripe-Signature does not match the body under the signing secret".into(),
        ));
    }
    if (now - at).abs() > tolerance {
        return Err(PayError::Forged(format!(
            "Stripe-Signature was made {}s from now, more than the {tolerance}s tolerated (a replay?)",
            now - at
        )));
    }
    Ok(())
}

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let header = n
        .header("stripe-signature")
        .ok_or_else(|| PayError::Forged("the Stripe-Signature header is missing".into()))?;
    verify(
        header,
        n.body,
        key(account)?,
        n.now.timestamp(),
        account.tolerance,
    )?;
    let v = json_object(n.body)?;
    let kind = text(&v, "type").unwrap_or_default();
    let o = v
        .pointer("/data/object")
        .filter(|o| o.is_object())
        .ok_or_else(|| PayError::Malformed("data.object: missing".into()))?;
    let at = v
        .get("created")
        .and_then(Value::as_i64)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    let cur = || currency("currency", &text(o, "currency").unwrap_or_default());
    let metadata = o.get("metadata").cloned().unwrap_or_default();
    let id = |k: &str| text(o, k).filter(|i| i.len() <= 255);
    match kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if text(o, "payment_status").as_deref() != Some("paid") {
                return Ok(Notice::Ignored("the session is not paid yet".into()));
            }
            let currency = cur()?;
            Ok(Notice::Paid(Payment {
                id: id("payment_intent")
                    .or_else(|| id("id"))
                    .ok_or_else(|| PayError::Malformed("data.object.id: missing".into()))?,
                email: o
                    .pointer("/customer_details/email")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| text(o, "customer_email")),
                lines: vec![Line {
                    item: text(&metadata, "product").or_else(|| text(o, "payment_link")),
                    amount: minor("data.object.amount_total", o.get("amount_total"), &currency)?,
                }],
                currency,
                at,
            }))
        }
        "payment_intent.succeeded" => {
            let currency = cur()?;
            Ok(Notice::Paid(Payment {
                id: id("id")
                    .ok_or_else(|| PayError::Malformed("data.object.id: missing".into()))?,
                email: text(o, "receipt_email").or_else(|| text(&metadata, "email")),
                lines: vec![Line {
                    item: text(&metadata, "product").or_else(|| text(o, "description")),
                    amount: minor(
                        "data.object.amount_received",
                        o.get("amount_received"),
                        &currency,
                    )?,
                }],
                currency,
                at,
            }))
        }
        "charge.refunded" => {
            let currency = cur()?;
            let last = o.pointer("/refunds/data/0");
            Ok(Notice::Refunded(Refund {
                id: last
                    .and_then(|r| text(r, "id"))
                    .or_else(|| text(&v, "id"))
                    .ok_or_else(|| PayError::Malformed("id: missing".into()))?,
                payment: id("payment_intent")
                    .or_else(|| id("id"))
                    .ok_or_else(|| PayError::Malformed("data.object.id: missing".into()))?,
                email: o
                    .pointer("/billing_details/email")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| text(o, "receipt_email")),
                amount: Some(match last {
                    Some(r) => minor("refunds.data[0].amount", r.get("amount"), &currency)?,
                    None => minor(
                        "data.object.amount_refunded",
                        o.get("amount_refunded"),
                        &currency,
                    )?,
                }),
                currency: Some(currency),
                at,
            }))
        }
        other => Ok(Notice::Ignored(format!("{other} records nothing"))),
    }
}
