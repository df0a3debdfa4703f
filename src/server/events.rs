//! Tracked events from other systems: `POST /api/v1/events` (bearer `api_token`; one event or a
//! batch of up to 1,000) and `POST /hooks/purchase` (a shop's or payment provider's purchase,
//! signed like the delivery reports). A purchase's order id is its idempotency key, so a
//! repeated delivery counts once. The whole request is checked before anything is stored: a
//! rejected request stores nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, error, verify_signed};
use crate::domain::{Email, LeadId};
use crate::engine::Event;
use crate::runtime::Runtime;
use crate::store::LeadInput;

/// Events in one request, at most.
pub const MAX_BATCH: usize = 1000;

/// One event, checked.
struct Incoming {
    who: Who,
    event: Event,
    key: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
}

enum Who {
    Lead(LeadId),
    Email(Email),
}

/// A refusal naming the field: status, field, message.
type Bad = (StatusCode, String, String);

fn bad(field: &str, message: &str) -> Bad {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        field.to_string(),
        message.to_string(),
    )
}

/// Reads one event object; `at` names it in errors (`events[3]`).
fn parse(v: &Value, at: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Incoming, Bad> {
    let field = |k: &str| format!("{at}{}{k}", if at.is_empty() { "" } else { "." });
    let Value::Object(o) = v else {
        return Err(bad(at, "must be an object"));
    };
    let text = |k: &str| -> Result<Option<String>, Bad> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) if s.len() <= 200 => Ok(Some(s.trim().to_string())),
            Some(Value::String(_)) => Err(bad(&field(k), "longer than 200 characters")),
            Some(_) => Err(bad(&field(k), "must be a string")),
        }
    };
    let name = text("event")?.ok_or_else(|| bad(&field("event"), "missing"))?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad(
            &field("event"),
            "event names are lowercase letters, digits, _ and -",
        ));
    }
    if [
        "confirmed",
        "unsubscribed",
        "bounced",
        "complained",
        "removed",
    ]
    .contains(&name.as_str())
    {
        return Err(bad(
            &field("event"),
            "this event comes from the links in emails, the delivery reports or the admin API",
        ));
    }
    let who = match (o.get("lead"), text("email")?) {
        (Some(Value::Number(n)), _) => Who::Lead(LeadId(
            n.as_i64()
                .ok_or_else(|| bad(&field("lead"), "must be a lead id"))?,
        )),
        (Some(_), _) => return Err(bad(&field("lead"), "must be a lead id")),
        (None, Some(e)) => {
            Who::Email(Email::parse(&e).map_err(|err| bad(&field("email"), &err.to_string()))?)
        }
        (None, None) => return Err(bad(&field("email"), "give `email` or `lead`")),
    };
    let amount = match o.get("amount") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(a) if a >= 0.0 && a.is_finite() => Some(a),
            _ => return Err(bad(&field("amount"), "must be a number ≥ 0")),
        },
        Some(_) => return Err(bad(&field("amount"), "must be a number")),
    };
    let currency = text("currency")?;
    if let Some(c) = &currency
        && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(bad(&field("currency"), "an ISO 4217 code such as EUR"));
    }
    let at_time = match text("occurred_at")? {
        Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map_err(|_| {
                bad(
                    &field("occurred_at"),
                    "an RFC 3339 time such as 2026-11-24T10:00:00Z",
                )
            })?
            .with_timezone(&chrono::Utc)
            .min(now),
        None => now,
    };
    let product = text("product")?;
    let key = if name == "purchase" {
        let order = text("order_id")?.ok_or_else(|| {
            bad(
                &field("order_id"),
                "a purchase needs its order id (it makes a repeated delivery count once)",
            )
        })?;
        if product.is_none() {
            return Err(bad(&field("product"), "a purchase names its product"));
        }
        Some(format!("purchase:{order}"))
    } else {
        text("id")?.map(|i| format!("api:{name}:{i}"))
    };
    Ok(Incoming {
        who,
        event: Event {
            product,
            amount,
            currency,
            ..Event::named(&name)
        },
        key,
        at: at_time,
    })
}

/// Stores checked events and feeds them to the engine; a lead named by email is created when
/// new. Returns (accepted, duplicates).
async fn store_all(rt: &Runtime, events: Vec<Incoming>) -> anyhow::Result<(usize, usize)> {
    let (mut accepted, mut duplicates) = (0, 0);
    let now = chrono::Utc::now();
    for e in events {
        let lead = match e.who {
            Who::Lead(id) => id,
            Who::Email(email) => match rt.store().lead_by_email(&email).await? {
                Some(l) => l.id,
                None => {
                    rt.store()
                        .upsert_lead(&email, LeadInput::default(), now)
                        .await?
                        .id
                }
            },
        };
        match rt.event_at(lead, e.event, e.key, e.at, now).await? {
            true => accepted += 1,
            false => duplicates += 1,
        }
    }
    Ok((accepted, duplicates))
}

fn refuse((status, field, message): Bad) -> Response {
    error(status, &field, &message)
}

/// `POST /api/v1/events` with `Authorization: Bearer <api_token>`: one event object, or
/// `{"events": [ … ]}` with up to 1,000.
pub async fn api_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = &state.api_token else {
        return error(
            StatusCode::NOT_FOUND,
            "",
            "the API is not enabled (set api_token)",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given
        .is_some_and(|g| crate::delivery::track::constant_time_eq(g.as_bytes(), token.as_bytes()));
    if !ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "missing or wrong bearer token",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "", "the body is not JSON");
    };
    let now = chrono::Utc::now();
    let parsed: Result<Vec<Incoming>, Bad> = match v.get("events") {
        Some(Value::Array(list)) if list.len() > MAX_BATCH => Err(bad(
            "events",
            &format!("at most {MAX_BATCH} events in one request"),
        )),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, e)| parse(e, &format!("events[{i}]"), now))
            .collect(),
        Some(_) => Err(bad("events", "must be a list")),
        None => parse(&v, "", now).map(|e| vec![e]),
    };
    let events = match parsed {
        Ok(e) => e,
        Err(b) => return refuse(b),
    };
    let Some(rt) = &state.runtime else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "the engine is not running",
        );
    };
    match store_all(rt, events).await {
        Ok((accepted, duplicates)) => {
            state.metrics.events.inc_by(accepted as u64);
            (
                StatusCode::OK,
                Json(json!({ "accepted": accepted, "duplicates": duplicates })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store events");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "the events could not be stored; try again",
            )
        }
    }
}

/// `POST /hooks/purchase`, signed like `/hooks/delivery`: `{"order_id", "email", "product",
/// "amount", "currency", "occurred_at"}`.
pub async fn purchase_hook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = verify_signed(&state, &headers, &body, "purchase webhooks") {
        return r;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "", "the body is not JSON");
    };
    if let Value::Object(o) = &mut v {
        o.insert("event".into(), json!("purchase"));
    }
    let e = match parse(&v, "", chrono::Utc::now()) {
        Ok(e) => e,
        Err(b) => return refuse(b),
    };
    let Some(rt) = &state.runtime else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "the engine is not running",
        );
    };
    match store_all(rt, vec![e]).await {
        Ok((accepted, duplicates)) => {
            state.metrics.events.inc_by(accepted as u64);
            (
                StatusCode::OK,
                Json(json!({ "status": if duplicates > 0 { "duplicate" } else { "ok" } })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store a purchase");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "the purchase could not be stored; try again",
            )
        }
    }
}
