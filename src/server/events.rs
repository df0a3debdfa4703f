//! Tracked events from other systems: `POST /api/v1/events` (bearer `api_token`; one event or a
//! batch of up to 1,000). The same reading serves the signed purchase webhook
//! ([`super::hooks::purchase`]). A purchase's order id is its idempotency key, so a repeated
//! delivery counts once. The whole request is checked before anything is stored: a rejected
//! request stores nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Api;
use super::error::ApiError;
use super::input::{self, max};
use crate::domain::{Email, Event, EventKind, LeadId, Money};
use crate::funnel::FieldKind;
use crate::funnel::parse::check_field_value;
use crate::runtime::Runtime;
use crate::store::{BatchEvent, LeadRef, NewTouch};

/// Events in one request, at most.
pub const MAX_BATCH: usize = 1000;

/// One event, checked.
pub struct Incoming {
    /// Where it stands in the request (`events[3]`, or empty for a single event).
    place: String,
    who: LeadRef,
    event: Event,
    key: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
    touch: Option<NewTouch>,
    fields: serde_json::Map<String, Value>,
}

/// The lead fields an event may set: `first_name`, the built-in fields and each field a
/// running funnel declares, with the types it is declared with.
pub type Catalog = std::collections::BTreeMap<String, Vec<FieldKind>>;

/// The fields the running funnels may be given.
pub fn catalog(rt: &Runtime) -> Catalog {
    let funnels = rt.funnels();
    crate::funnel::settable_fields(funnels.values().map(|r| &r.funnel))
}

/// An event's `fields`: each a declared field (or `first_name`) with a value of its type.
fn fields_of(
    v: Option<&Value>,
    field: &dyn Fn(&str) -> String,
    catalog: &Catalog,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let o = match v {
        None | Some(Value::Null) => return Ok(Default::default()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad(&field("fields"), "must be an object of lead fields")),
    };
    let mut out = serde_json::Map::new();
    for (k, value) in o {
        let at = field(&format!("fields.{k}"));
        if k == "first_name" {
            match value {
                Value::String(s) => {
                    out.insert(k.clone(), input::text(&at, s, max::SHORT)?.into());
                }
                _ => return Err(bad(&at, "must be a string")),
            }
            continue;
        }
        let Some(kinds) = catalog.get(k) else {
            let known: Vec<&str> = catalog.keys().map(String::as_str).collect();
            return Err(bad(
                &at,
                &format!(
                    "no such field: neither built in nor declared by a running funnel (the fields: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if let Value::String(s) = value {
            input::text(&at, s, max::LONG)?;
        }
        for kind in kinds {
            check_field_value(*kind, value).map_err(|e| bad(&at, &e))?;
        }
        out.insert(k.clone(), value.clone());
    }
    Ok(out)
}

fn bad(field: &str, message: &str) -> ApiError {
    ApiError::invalid(field, message)
}

/// Reads one event object; `at` names it in errors (`events[3]`).
pub fn parse(
    v: &Value,
    at: &str,
    now: chrono::DateTime<chrono::Utc>,
    catalog: &Catalog,
) -> Result<Incoming, ApiError> {
    let field = |k: &str| format!("{at}{}{k}", if at.is_empty() { "" } else { "." });
    let Value::Object(o) = v else {
        return Err(bad(at, "must be an object"));
    };
    let text_of = |k: &str, limit: usize| -> Result<Option<String>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => input::text(&field(k), s, limit).map(Some),
            Some(_) => Err(bad(&field(k), "must be a string")),
        }
    };
    let text = |k: &str| text_of(k, max::SHORT);
    let name = text("event")?.ok_or_else(|| bad(&field("event"), "missing"))?;
    let kind = EventKind::parse(&name).map_err(|_| {
        bad(
            &field("event"),
            "event names start with a letter and use lowercase letters, digits, _ and -",
        )
    })?;
    if kind.is_internal() {
        return Err(bad(
            &field("event"),
            "this event comes from the links in emails, the delivery reports or the admin API",
        ));
    }
    let who = match (o.get("lead"), text("email")?) {
        (Some(Value::Number(n)), _) => LeadRef::Id(LeadId(
            n.as_i64()
                .filter(|id| *id > 0)
                .ok_or_else(|| bad(&field("lead"), "must be a lead id"))?,
        )),
        (Some(_), _) => return Err(bad(&field("lead"), "must be a lead id")),
        (None, Some(e)) => {
            LeadRef::Email(Email::parse(&e).map_err(|err| bad(&field("email"), &err.to_string()))?)
        }
        (None, None) => return Err(bad(&field("email"), "give `email` or `lead`")),
    };
    let amount = match o.get("amount") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64().and_then(Money::of_units) {
            Some(a) => Some(a),
            None => return Err(bad(&field("amount"), "must be a number from 0 to 10^12")),
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
    let fields = fields_of(o.get("fields"), &field, catalog)?;
    // UTM parameters and a referrer make the event a touch, for attribution.
    let (source, medium, campaign, term, content, referrer) = (
        text("utm_source")?,
        text("utm_medium")?,
        text("utm_campaign")?,
        text("utm_term")?,
        text("utm_content")?,
        text_of("referrer", max::LONG)?,
    );
    let channel = text("channel")?;
    let touch = [
        &source, &medium, &campaign, &term, &content, &referrer, &channel,
    ]
    .iter()
    .any(|v| v.is_some())
    .then(|| NewTouch {
        // The channel given, else the medium, else a referral or an event from another
        // system.
        channel: channel
            .clone()
            .or_else(|| medium.clone())
            .unwrap_or_else(|| {
                if referrer.is_some() {
                    "referral"
                } else {
                    "event"
                }
                .into()
            }),
        source,
        medium,
        campaign,
        term,
        content,
        referrer,
        landing_url: None,
        form: None,
    });
    let key = if kind == EventKind::Purchase {
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
        place: at.to_string(),
        who,
        event: Event {
            product,
            amount,
            currency,
            ..Event::of(kind)
        },
        key,
        at: at_time,
        touch,
        fields,
    })
}

/// Stores checked events all or nothing and feeds them to the engine; a lead named by email
/// is created when new, a lead named by id must exist (else 422 naming the event). Returns
/// (accepted, duplicates).
pub async fn store_all(rt: &Runtime, events: Vec<Incoming>) -> Result<(usize, usize), ApiError> {
    let ids: Vec<LeadId> = events
        .iter()
        .filter_map(|e| match e.who {
            LeadRef::Id(id) => Some(id),
            LeadRef::Email(_) => None,
        })
        .collect();
    let missing = rt.store().missing_leads(&ids).await?;
    if let Some(e) = events
        .iter()
        .find(|e| matches!(e.who, LeadRef::Id(id) if missing.contains(&id)))
    {
        let field = if e.place.is_empty() {
            "lead".to_string()
        } else {
            format!("{}.lead", e.place)
        };
        return Err(bad(&field, "no such lead"));
    }
    let batch = events
        .into_iter()
        .map(|e| BatchEvent {
            who: e.who,
            event: e.event,
            idempotency_key: e.key,
            occurred_at: e.at,
            touch: e.touch,
            fields: e.fields,
        })
        .collect();
    let stored = rt
        .record_batch(batch, chrono::Utc::now())
        .await
        .map_err(|e| ApiError::unavailable("the events could not be stored", e))?;
    let accepted = stored.iter().filter(|(_, new)| *new).count();
    Ok((accepted, stored.len() - accepted))
}

/// `POST /api/v1/events` with `Authorization: Bearer <api_token>`: one event object, or
/// `{"events": [ … ]}` with up to 1,000.
pub async fn api_events(
    _: Api,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::malformed("", "the body is not JSON"))?;
    let now = chrono::Utc::now();
    let catalog = catalog(&state.runtime);
    if v.get("events").is_some() && v.as_object().is_some_and(|o| o.len() > 1) {
        return Err(bad(
            "events",
            "a batch holds only `events`: put every field inside its event",
        ));
    }
    let events: Vec<Incoming> = match v.get("events") {
        Some(Value::Array(list)) if list.len() > MAX_BATCH => {
            return Err(bad(
                "events",
                &format!("at most {MAX_BATCH} events in one request"),
            ));
        }
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, e)| parse(e, &format!("events[{i}]"), now, &catalog))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("events", "must be a list")),
        None => vec![parse(&v, "", now, &catalog)?],
    };
    let (accepted, duplicates) = store_all(&state.runtime, events).await?;
    state.metrics.events.inc_by(accepted as u64);
    Ok(Json(
        json!({ "accepted": accepted, "duplicates": duplicates }),
    ))
}
