//! `POST /f/{form}`: landing-page signups. Form-encoded or JSON; the email validated; name,
//! time zone and other fields stored on the lead (the same email updates it); UTM parameters,
//! referrer and landing page recorded as a touch; a filled honeypot field answered as a
//! success and dropped; every funnel whose `entry` names the form started (double opt-in sends
//! its confirmation first). HTML forms get a 303 to the form's thank-you page, `fetch()`
//! callers JSON; browsers on the form's `cors` origins may read the answer.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, error, page};
use crate::domain::Email;
use crate::store::{LeadInput, NewSignup, NewTouch};

/// Signups per IP address, per minute.
pub type Limiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// A limiter allowing `per_minute` signups per address (bursts up to that many); `None` for 0.
pub fn limiter(per_minute: u32) -> Option<Arc<Limiter>> {
    NonZeroU32::new(per_minute)
        .map(|n| Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(n))))
}

/// The name of the hidden field people never fill and bots do.
pub const HONEYPOT: &str = "website";
/// Fields with a meaning of their own; every other one is stored on the lead.
const RESERVED: [&str; 12] = [
    "email",
    "first_name",
    "name",
    "timezone",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer",
    "landing_url",
    HONEYPOT,
];
const MAX_FIELDS: usize = 50;
const MAX_VALUE: usize = 2_000;

/// The funnels started by `form`, with its thank-you page and allowed origins.
struct Target {
    funnels: Vec<String>,
    thank_you: Option<String>,
    cors: Vec<String>,
}

fn target(state: &AppState, form: &str) -> Option<Target> {
    let funnels = state.runtime.as_ref()?.funnels();
    let mut t = Target {
        funnels: Vec::new(),
        thank_you: None,
        cors: Vec::new(),
    };
    for (id, r) in funnels.iter() {
        for f in r.funnel.entry.forms().filter(|f| f.id.as_str() == form) {
            t.funnels.push(id.clone());
            t.thank_you = t.thank_you.take().or_else(|| f.thank_you.clone());
            t.cors.extend(f.cors.iter().cloned());
        }
    }
    (!t.funnels.is_empty()).then_some(t)
}

/// The allowed origin of this request, to echo in `Access-Control-Allow-Origin`.
fn allowed_origin(headers: &HeaderMap, t: &Target) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    t.cors.iter().any(|c| c == o).then(|| origin.clone())
}

fn with_cors(mut r: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// `OPTIONS /f/{form}`: the CORS preflight for `fetch()` with a JSON body.
pub async fn preflight(
    State(state): State<AppState>,
    Path(form): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(t) = target(&state, &form) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match allowed_origin(&headers, &t) {
        Some(o) => {
            let mut r = with_cors(StatusCode::NO_CONTENT.into_response(), Some(o));
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        None => StatusCode::FORBIDDEN.into_response(),
    }
}

/// A refused body: status, field, message.
type Bad = (StatusCode, String, String);

/// The submitted fields as strings, from a form-encoded or JSON body.
fn fields_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Bad> {
    let bad = |status, field: &str, message: String| (status, field.to_string(), message);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return serde_urlencoded::from_bytes(body)
            .map_err(|e| bad(StatusCode::BAD_REQUEST, "", format!("bad form body: {e}")));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            "",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let Value::Object(map) = v else {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            "the body must be a JSON object of fields".into(),
        ));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            Value::Null => Ok((k, String::new())),
            _ => Err(bad(
                StatusCode::UNPROCESSABLE_ENTITY,
                &k,
                "must be a string, number or boolean".into(),
            )),
        })
        .collect()
}

/// Whether the caller wants JSON back (`fetch()` with JSON, or `Accept: application/json`).
fn wants_json(headers: &HeaderMap) -> bool {
    let has = |h: header::HeaderName, v: &str| {
        headers
            .get(h)
            .and_then(|x| x.to_str().ok())
            .is_some_and(|x| x.contains(v))
    };
    has(header::CONTENT_TYPE, "application/json") || has(header::ACCEPT, "application/json")
}

/// `POST /f/{form}`.
pub async fn signup(
    State(state): State<AppState>,
    Path(form): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = target(&state, &form) else {
        return error(
            StatusCode::NOT_FOUND,
            "form",
            "no funnel starts with this form",
        );
    };
    let origin = allowed_origin(&headers, &t);
    let answer = |r: Response| with_cors(r, origin.clone());
    if let Some(l) = &state.signup_limit
        && l.check_key(&peer.ip()).is_err()
    {
        return answer(error(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            "too many signups from this address; try again in a minute",
        ));
    }
    let fields = match fields_of(&headers, &body) {
        Ok(f) => f,
        Err((status, field, message)) => return answer(error(status, &field, &message)),
    };
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let json = wants_json(&headers);
    let done = |lead: Option<i64>| {
        if json {
            Json(json!({ "status": "ok", "lead": lead })).into_response()
        } else {
            match &t.thank_you {
                Some(url) => {
                    (StatusCode::SEE_OTHER, [(header::LOCATION, url.as_str())]).into_response()
                }
                None => page(
                    StatusCode::OK,
                    "Thank you",
                    "You are signed up. Please check your inbox.",
                ),
            }
        }
    };
    // A bot filled the field people never see: it is told all went well, and nothing is kept.
    if get(HONEYPOT).is_some() {
        return answer(done(None));
    }
    let email = match get("email").map(Email::parse) {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            return answer(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "email",
                &e.to_string(),
            ));
        }
        None => return answer(error(StatusCode::UNPROCESSABLE_ENTITY, "email", "missing")),
    };
    let timezone = match get("timezone") {
        Some(z) => match z.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                return answer(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "timezone",
                    "not an IANA time zone (like Europe/Berlin)",
                ));
            }
        },
        None => None,
    };
    let mut extra = serde_json::Map::new();
    for (k, v) in &fields {
        if RESERVED.contains(&k.as_str()) || v.trim().is_empty() {
            continue;
        }
        let name_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return answer(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                k,
                "field names are lowercase letters, digits and _ (at most 64)",
            ));
        }
        if v.chars().count() > MAX_VALUE {
            return answer(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                k,
                &format!("longer than {MAX_VALUE} characters"),
            ));
        }
        extra.insert(k.clone(), Value::String(v.trim().to_string()));
    }
    if extra.len() > MAX_FIELDS {
        return answer(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            &format!("more than {MAX_FIELDS} fields"),
        ));
    }
    let input = LeadInput {
        first_name: get("first_name").or(get("name")).map(str::to_string),
        fields: extra,
        timezone,
    };
    let header_text = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let touch = NewTouch {
        channel: "form".into(),
        source: get("utm_source").map(str::to_string),
        medium: get("utm_medium").map(str::to_string),
        campaign: get("utm_campaign").map(str::to_string),
        term: get("utm_term").map(str::to_string),
        content: get("utm_content").map(str::to_string),
        referrer: get("referrer")
            .map(str::to_string)
            .or_else(|| header_text(header::REFERER)),
        landing_url: get("landing_url").map(str::to_string),
        form: Some(form.clone()),
    };
    let Some(rt) = state.runtime.clone() else {
        return answer(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "the engine is not running",
        ));
    };
    let signup = NewSignup {
        email,
        input,
        touch,
        form: form.clone(),
    };
    // A task of its own: a visitor who leaves mid-commit does not stop the others' signups.
    let funnels = t.funnels.clone();
    let ticket = rt.queue_signup(signup, funnels);
    let stored = tokio::spawn(async move { rt.signup_stored(ticket).await })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match stored {
        Ok(lead) => {
            state.metrics.signups.inc();
            answer(done(Some(lead.0)))
        }
        Err(e) => {
            tracing::error!(error = %e, form = %form, "cannot store a signup");
            answer(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "the signup could not be stored; try again",
            ))
        }
    }
}
