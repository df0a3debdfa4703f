//! Webhooks other systems post, signed with `hooks_secret` (see [`super::auth::verify_signed`]):
//! `POST /hooks/delivery` (a bounce or complaint from the mail provider) and
//! `POST /hooks/purchase` (a shop's or payment provider's purchase).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::AppState;
use super::auth::verify_signed;
use super::error::ApiError;
use super::events::{parse, store_all};
use super::input::{self, max};
use crate::domain::{ConsentAct, Email, Event, EventKind};

/// `POST /hooks/delivery`. Body: `{"type": "bounce" | "complaint", "email": "…", "id":
/// "provider event id"}`. The address is suppressed (with or without a lead) and the lead's
/// runs hear `bounced` or `complained`, once per provider event id.
pub async fn delivery_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    verify_signed(&state, &headers, &body, "delivery reports")?;
    let report: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::malformed("", "the body is not JSON"))?;
    let kind = match report.get("type").and_then(|t| t.as_str()) {
        Some("bounce") => EventKind::Bounced,
        Some("complaint") => EventKind::Complained,
        _ => {
            return Err(ApiError::invalid(
                "type",
                "must be \"bounce\" or \"complaint\"",
            ));
        }
    };
    let email = report
        .get("email")
        .and_then(|e| e.as_str())
        .and_then(|e| Email::parse(e).ok())
        .ok_or_else(|| ApiError::invalid("email", "missing or not an email address"))?;
    let id = match report.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(i)) => {
            Some(format!("hook:{kind}:{}", input::text("id", i, max::SHORT)?))
        }
        Some(_) => return Err(ApiError::invalid("id", "must be a string")),
    };
    let now = chrono::Utc::now();
    let rt = &state.runtime;
    match rt.store().lead_by_email(&email).await? {
        Some(l) => {
            let complained = kind == EventKind::Complained;
            rt.event(l.id, Event::of(kind), id, now).await?;
            if complained && !rt.store().has_consent(l.id, ConsentAct::Withdrawn).await? {
                let source = Some("complaint to the mail provider".to_string());
                let who = crate::domain::Requester::default();
                rt.store()
                    .record_consent(&[(l.id, ConsentAct::Withdrawn, source, who)], now)
                    .await?;
            }
        }
        None => {
            rt.store()
                .suppress_email(&email, kind.as_str(), now)
                .await?
        }
    }
    Ok(Json(
        json!({ "status": "ok", "suppressed": email.as_str() }),
    ))
}

/// `POST /hooks/purchase`: `{"order_id", "email", "product", "amount", "currency",
/// "occurred_at"}`. The order id makes a repeated delivery count once.
pub async fn purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    verify_signed(&state, &headers, &body, "purchase webhooks")?;
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::malformed("", "the body is not JSON"))?;
    if let Value::Object(o) = &mut v {
        o.insert("event".into(), json!(EventKind::Purchase.as_str()));
    }
    let e = parse(
        &v,
        "",
        chrono::Utc::now(),
        &super::events::catalog(&state.runtime),
    )?;
    let (accepted, duplicates) = store_all(&state.runtime, vec![e]).await?;
    state.metrics.events.inc_by(accepted as u64);
    Ok(Json(json!({
        "status": if duplicates > 0 { "duplicate" } else { "ok" }
    })))
}
