//! The HTTP side of `autofunnel run` (axum). `serve(listener, state, shutdown)` takes a bound
//! listener so tests start it on port 0.

pub mod admin;
pub mod events;
pub mod signup;

use std::future::Future;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use serde_json::json;
use tokio::net::TcpListener;

use crate::delivery::track;
use crate::domain::Email;
use crate::engine::Event;
use crate::runtime::Runtime;
use crate::store::Store;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Number of funnels loaded at start, shown by /healthz.
    pub funnels: usize,
    /// The engine, for endpoints that feed it events.
    pub runtime: Option<Arc<Runtime>>,
    /// Key that signs delivery reports (`hooks_secret`); unset, that endpoint answers 404.
    pub hooks_secret: Option<Arc<[u8]>>,
    /// Key that signs the links in emails (`secret`).
    pub secret: Arc<[u8]>,
    /// Counters shown by `/metrics`, shared with the sender.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Bearer token of the admin API (`admin_token`); unset, it answers 404.
    pub admin_token: Option<Arc<str>>,
    /// Bearer token of the API (`api_token`); unset, the API answers 404.
    pub api_token: Option<Arc<str>>,
    /// Signups per IP address (`signups_per_ip_per_minute`); `None`, no limit.
    pub signup_limit: Option<Arc<signup::Limiter>>,
}

/// Largest API body: a batch of 1,000 events.
const API_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Largest signup body: a form is a few fields.
const SIGNUP_BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/hooks/delivery", post(delivery_report))
        .route("/hooks/purchase", post(events::purchase_hook))
        .route("/api/v1/leads", get(admin::find))
        .route(
            "/api/v1/leads/{id}",
            get(admin::export).delete(admin::erase),
        )
        .route("/api/v1/leads/{id}/tags", post(admin::tag))
        .route("/api/v1/leads/{id}/tags/{tag}", delete(admin::untag))
        .route("/api/v1/leads/{id}/enroll", post(admin::enroll))
        .route("/api/v1/leads/{id}/remove", post(admin::remove))
        .route("/openapi.json", get(openapi_json))
        .route("/openapi.yaml", get(openapi_yaml))
        .route("/api/v1/funnels", get(admin::funnels))
        .route(
            "/api/v1/events",
            post(events::api_events).layer(axum::extract::DefaultBodyLimit::max(API_BODY_LIMIT)),
        )
        .route(
            "/f/{form}",
            post(signup::signup)
                .options(signup::preflight)
                .layer(axum::extract::DefaultBodyLimit::max(SIGNUP_BODY_LIMIT)),
        )
        .route("/r/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .route("/c/{token}", get(confirm_page).post(confirm))
        .route("/o/{token}", get(open))
        .with_state(state)
}

/// How far a signed request's timestamp may be from now.
const REPLAY_WINDOW_SECS: i64 = 300;

fn error(status: StatusCode, field: &str, message: &str) -> axum::response::Response {
    (status, Json(json!({ "error": message, "field": field }))).into_response()
}

/// `POST /hooks/delivery`: a bounce or complaint reported by the mail provider, signed with
/// `hooks_secret`: header `X-Autofunnel-Timestamp` (Unix seconds, within 5 minutes) and
/// `X-Autofunnel-Signature` = hex HMAC-SHA256 of `"{timestamp}.{body}"`. Body:
/// `{"type": "bounce" | "complaint", "email": "…", "id": "provider event id"}`.
async fn delivery_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if let Some(r) = verify_signed(&state, &headers, &body, "delivery reports") {
        return r;
    }
    let Ok(report) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "", "the body is not JSON");
    };
    let kind = match report.get("type").and_then(|t| t.as_str()) {
        Some("bounce") => "bounced",
        Some("complaint") => "complained",
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "type",
                "must be \"bounce\" or \"complaint\"",
            );
        }
    };
    let Some(email) = report
        .get("email")
        .and_then(|e| e.as_str())
        .and_then(|e| Email::parse(e).ok())
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
            "missing or not an email address",
        );
    };
    let id = report
        .get("id")
        .and_then(|i| i.as_str())
        .map(|i| format!("hook:{kind}:{i}"));
    let now = chrono::Utc::now();
    let lead = match state.store.lead_by_email(&email).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "", &e.to_string()),
    };
    let result = match (lead, &state.runtime) {
        (Some(l), Some(rt)) => rt
            .event(l.id, Event::named(kind), id, now)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => state
            .store
            .suppress_email(&email, kind, now)
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "suppressed": email.as_str() })),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "", &e),
    }
}

/// `GET /r/{token}`: a tracked link. Records a `click` event (the first per message and link;
/// a `HEAD` from a link scanner records nothing) and redirects to the link's target, or, once
/// the offer's deadline has passed, to the funnel's `expired_offer` page. A token that does not
/// verify is refused: no address outside a sent message is ever a target.
async fn click(
    State(state): State<AppState>,
    method: Method,
    Path(token): Path<String>,
) -> axum::response::Response {
    let Some(click) = track::Click::verify(&state.secret, &token) else {
        return page(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "This link is damaged or was not made here.",
        );
    };
    let now = chrono::Utc::now();
    let origin = match state.store.message_origin(click.message).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot look up a clicked message");
            None
        }
    };
    if method != Method::HEAD
        && let Some(o) = &origin
    {
        let e = Event {
            template: o.template.clone(),
            link: Some(click.link.clone()),
            ..Event::named("click")
        };
        let key = format!("click:{}:{}", click.message, click.link);
        record(&state, o.lead, e, key, now).await;
    }
    if click.expires.is_some_and(|d| now.timestamp() > d) {
        let elsewhere = origin.as_ref().and_then(|o| {
            let funnels = state.runtime.as_ref()?.funnels();
            let f = funnels.get(o.funnel.as_deref()?)?;
            f.funnel.expired_offer.as_ref().map(|u| u.value.clone())
        });
        return match elsewhere {
            Some(url) => redirect(&url),
            None => page(
                StatusCode::GONE,
                "This offer has ended",
                "The offer this link was for has ended.",
            ),
        };
    }
    redirect(&click.url)
}

/// `GET /o/{token}.gif`: the open pixel. Records an `open` event (the first per message) and
/// answers a transparent 1×1 GIF that is never cached.
async fn open(
    State(state): State<AppState>,
    method: Method,
    Path(token): Path<String>,
) -> axum::response::Response {
    let Some(message) = track::verify_open(&state.secret, &token) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::HEAD {
        match state.store.message_origin(message).await {
            Ok(Some(o)) => {
                let e = Event {
                    template: o.template.clone(),
                    ..Event::named("open")
                };
                record(
                    &state,
                    o.lead,
                    e,
                    format!("open:{message}"),
                    chrono::Utc::now(),
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot look up an opened message"),
        }
    }
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (
                header::CACHE_CONTROL,
                "no-store, no-cache, must-revalidate, max-age=0",
            ),
        ],
        GIF,
    )
        .into_response()
}

/// Which funnel an unsubscribe link came from (`?f=`), offered as "this funnel" on the page.
#[derive(serde::Deserialize, Default)]
struct FunnelParam {
    f: Option<String>,
}

/// The lead an unsubscribe or confirmation token names, with their address.
async fn lead_of(
    state: &AppState,
    purpose: &str,
    token: &str,
) -> Result<(crate::domain::LeadId, Email), axum::response::Response> {
    let refused = || {
        page(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "This link is damaged or was not made here.",
        )
    };
    let id = crate::delivery::compose::verify_token(&state.secret, purpose, token)
        .map(crate::domain::LeadId)
        .ok_or_else(refused)?;
    let leads = state.store.leads(&[id]).await.map_err(|e| {
        tracing::error!(error = %e, "cannot look up a lead");
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "We cannot answer right now. Please try again in a minute.",
        )
    })?;
    let lead = leads.get(&id).ok_or_else(|| {
        page(
            StatusCode::NOT_FOUND,
            "Nothing to do",
            "This address is no longer on any list here.",
        )
    })?;
    Ok((id, lead.email.clone()))
}

/// The funnel's display name, when the server knows it.
fn funnel_name(state: &AppState, id: &str) -> Option<String> {
    let funnels = state.runtime.as_ref()?.funnels();
    funnels.get(id).map(|f| f.funnel.name.clone())
}

/// `GET /u/{token}`: the unsubscribe page: stop this funnel's emails or all of them. Shows what
/// is already stopped; changes nothing by itself (link scanners fetch pages).
async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<FunnelParam>,
) -> axum::response::Response {
    let (_, email) = match lead_of(&state, "u", &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let scopes = state
        .store
        .suppressions_of(&email)
        .await
        .unwrap_or_default();
    if scopes.iter().any(|s| s == "*") {
        return page(
            StatusCode::OK,
            "You are unsubscribed",
            &format!(
                "{} gets no more emails from us.",
                html_escape(email.as_str())
            ),
        );
    }
    let funnel = q.f.as_deref().filter(|f| funnel_name(&state, f).is_some());
    let mut buttons = String::new();
    if let Some(f) = funnel {
        let name = funnel_name(&state, f).unwrap_or_default();
        if scopes.iter().any(|s| s == f) {
            buttons.push_str(&format!(
                "<p>You no longer get emails about «{}».</p>",
                html_escape(&name)
            ));
        } else {
            buttons.push_str(&format!(
                "<p><button name=\"scope\" value=\"{}\">Stop emails about «{}»</button></p>",
                html_escape(f),
                html_escape(&name)
            ));
        }
    }
    buttons.push_str("<p><button name=\"scope\" value=\"*\">Stop all emails</button></p>");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Unsubscribe</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em\"><h1>Unsubscribe</h1>\
         <p>Which emails should {} stop getting?</p><form method=\"post\">{buttons}</form></body></html>",
        html_escape(email.as_str())
    );
    (StatusCode::OK, Html(body)).into_response()
}

/// `POST /u/{token}`: unsubscribes at once. The RFC 8058 one-click body
/// (`List-Unsubscribe=One-Click`) and `scope=*` stop all mail; `scope=<funnel>` only that
/// funnel's. The choice is kept: later enrollments send nothing to a stopped address.
async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> axum::response::Response {
    let (id, email) = match lead_of(&state, "u", &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .filter(|s| *s != "*" && funnel_name(&state, s).is_some());
    let now = chrono::Utc::now();
    let result = match scope {
        Some(funnel) => state
            .store
            .suppress_in(&email, Some(funnel), "unsubscribed", now)
            .await
            .map_err(|e| e.to_string()),
        None => match &state.runtime {
            Some(rt) => rt
                .event(
                    id,
                    Event::named("unsubscribed"),
                    Some(format!("unsubscribed:{}", id.0)),
                    now,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => state
                .store
                .suppress_email(&email, "unsubscribed", now)
                .await
                .map_err(|e| e.to_string()),
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot unsubscribe");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "We could not record this right now. Please try again in a minute.",
        );
    }
    let what = match scope.and_then(|f| funnel_name(&state, f)) {
        Some(name) => format!(
            "You will get no more emails about «{}».",
            html_escape(&name)
        ),
        None => "You will get no more emails from us.".to_string(),
    };
    page(StatusCode::OK, "You are unsubscribed", &what)
}

/// `GET /c/{token}`: the double opt-in page. A button (pressed by a small script for people
/// whose browser runs it) posts the confirmation, so a link scanner's fetch confirms nothing.
async fn confirm_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> axum::response::Response {
    if let Err(r) = lead_of(&state, "c", &token).await {
        return r;
    }
    let body = "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Confirm your address</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em\"><h1>Confirm your address</h1>\
         <form method=\"post\" id=\"c\"><button>Yes, send me the emails</button></form>\
         <script>document.getElementById('c').submit()</script></body></html>";
    (StatusCode::OK, Html(body)).into_response()
}

/// `POST /c/{token}`: records the `confirmed` event once; the lead's funnels start.
async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> axum::response::Response {
    let (id, _) = match lead_of(&state, "c", &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(rt) = &state.runtime else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "We cannot answer right now. Please try again in a minute.",
        );
    };
    let now = chrono::Utc::now();
    match rt
        .event(
            id,
            Event::named("confirmed"),
            Some(format!("confirmed:{}", id.0)),
            now,
        )
        .await
    {
        Ok(_) => page(
            StatusCode::OK,
            "Thank you",
            "Your address is confirmed. The first email is on its way.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot record a confirmation");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "We could not record this right now. Please try again in a minute.",
            )
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Feeds a tracking event to the engine; a failure is logged, never shown to the reader.
async fn record(
    state: &AppState,
    lead: crate::domain::LeadId,
    e: Event,
    key: String,
    now: chrono::DateTime<chrono::Utc>,
) {
    let result = match &state.runtime {
        Some(rt) => rt
            .event(lead, e, Some(key), now)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => {
            let stored = crate::store::NewEvent {
                lead: Some(lead),
                kind: e.name.clone(),
                payload: json!({ "template": e.template, "link": e.link }),
                idempotency_key: Some(key),
                occurred_at: now,
            };
            state
                .store
                .record_event(stored, now)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => state.metrics.events.inc(),
        Err(err) => {
            tracing::error!(error = %err, "cannot record a tracking event");
            0
        }
    };
}

fn redirect(url: &str) -> axum::response::Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
    )
        .into_response()
}

/// A small HTML page for people who followed a link.
fn page(status: StatusCode, title: &str, text: &str) -> axum::response::Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em\"><h1>{title}</h1><p>{text}</p></body></html>"
    );
    (status, Html(body)).into_response()
}

/// Checks a signed webhook, answering the refusal if it fails: `X-Autofunnel-Timestamp` (Unix seconds, within 5 minutes) and
/// `X-Autofunnel-Signature` = hex HMAC-SHA256 of `"{timestamp}.{body}"` with `hooks_secret`.
fn verify_signed(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Option<axum::response::Response> {
    let Some(secret) = state.hooks_secret.clone() else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "",
            &format!("{what} are not enabled (set hooks_secret)"),
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(ts) = header("x-autofunnel-timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "X-Autofunnel-Timestamp",
            "missing or not a number",
        ));
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > REPLAY_WINDOW_SECS {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "X-Autofunnel-Timestamp",
            "outside the 5-minute window",
        ));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("any key length");
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let given = header("x-autofunnel-signature").and_then(hex_decode);
    if given.is_none_or(|g| mac.verify_slice(&g).is_err()) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "X-Autofunnel-Signature",
            "signature does not match",
        ));
    }
    None
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    match state.metrics.render(&state.store, chrono::Utc::now()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "", &e.to_string()),
    }
}

/// The description of this API (`docs/openapi.yaml`).
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// `GET /openapi.yaml`.
async fn openapi_yaml() -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

/// `GET /openapi.json`: the same description as JSON.
async fn openapi_json() -> axum::response::Response {
    static JSON: std::sync::OnceLock<Result<serde_json::Value, String>> =
        std::sync::OnceLock::new();
    match JSON.get_or_init(|| serde_saphyr::from_str(OPENAPI_YAML).map_err(|e| e.to_string())) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "", e),
    }
}

/// A scheduler further behind its timers than this makes the node `degraded`.
const LAG_LIMIT_SECS: f64 = 60.0;
/// An email waiting longer than this for its attempt makes the node `degraded`.
const OUTBOX_LIMIT_SECS: f64 = 600.0;

/// `GET /healthz`: the database, the scheduler's lag and the outbox. 200 `ok` or `degraded`
/// (with the problems named), 503 when the database does not answer.
async fn healthz(State(state): State<AppState>) -> axum::response::Response {
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    let down = |e: crate::store::StoreError| {
        let body = json!({ "status": "unavailable", "version": env!("CARGO_PKG_VERSION"),
                           "database": { "ok": false, "error": e.to_string() },
                           "problems": ["the database does not answer"] });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    if let Err(e) = state.store.ping().await {
        return down(e);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let seconds_since = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let (wake, depth, oldest) = match tokio::try_join!(
        state.store.next_wake(),
        state.store.outbox_depth(),
        state.store.oldest_queued()
    ) {
        Ok(x) => x,
        Err(e) => return down(e),
    };
    let lag = seconds_since(wake);
    let waiting = seconds_since(oldest);
    let mut problems = Vec::new();
    if lag > LAG_LIMIT_SECS {
        problems.push(format!("the scheduler is {lag:.0} s behind its timers"));
    }
    if waiting > OUTBOX_LIMIT_SECS {
        problems.push(format!(
            "an email has waited {waiting:.0} s for its attempt"
        ));
    }
    let status = if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    Json(json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "funnels": state.runtime.as_ref().map(|rt| rt.funnels().len()).unwrap_or(state.funnels),
        "database": { "ok": true, "latency_ms": (latency_ms * 100.0).round() / 100.0 },
        "scheduler": { "lag_seconds": lag },
        "outbox": { "queued": depth.0, "sending": depth.1, "oldest_due_seconds": waiting },
        "problems": problems,
    }))
    .into_response()
}
