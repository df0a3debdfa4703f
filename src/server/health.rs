//! Operations: `GET /healthz` (the database, the scheduler's lag, the outbox), `GET /metrics`
//! (Prometheus) and the API's own description at `/openapi.json` and `/openapi.yaml`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(state.runtime.store(), chrono::Utc::now())
        .await
        .map_err(|e| ApiError::unavailable("the metrics could not be read", e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The description of this API (`docs/openapi.yaml`).
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// `GET /openapi.yaml`.
pub async fn openapi_yaml() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

/// `GET /openapi.json`: the same description as JSON.
pub async fn openapi_json() -> Result<Response, ApiError> {
    static JSON: std::sync::OnceLock<Result<serde_json::Value, String>> =
        std::sync::OnceLock::new();
    match JSON.get_or_init(|| serde_saphyr::from_str(OPENAPI_YAML).map_err(|e| e.to_string())) {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            e.clone(),
        )),
    }
}

/// A scheduler further behind its timers than this makes the node `degraded`.
const LAG_LIMIT_SECS: f64 = 60.0;
/// An email waiting longer than this for its attempt makes the node `degraded`.
const OUTBOX_LIMIT_SECS: f64 = 600.0;

/// `GET /healthz`: the database, the scheduler's lag and the outbox. 200 `ok` or `degraded`
/// (with the problems named), 503 when the database does not answer.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    let down = |e: crate::store::StoreError| {
        let body = json!({ "status": "unavailable", "version": env!("CARGO_PKG_VERSION"),
                           "database": { "ok": false, "error": e.to_string() },
                           "problems": ["the database does not answer"] });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    let store = state.runtime.store();
    if let Err(e) = store.ping().await {
        return down(e);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let seconds_since = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let (wake, depth, oldest) = match tokio::try_join!(
        store.next_wake(),
        store.outbox_depth(),
        store.oldest_queued()
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
        "funnels": state.runtime.funnels().len(),
        "database": { "ok": true, "latency_ms": (latency_ms * 100.0).round() / 100.0 },
        "scheduler": { "lag_seconds": lag },
        "outbox": { "queued": depth.0, "sending": depth.1, "oldest_due_seconds": waiting },
        "problems": problems,
    }))
    .into_response()
}
