//! The admin API, behind `Authorization: Bearer <admin_token>`: find a lead, export everything
//! about them, tag and untag them, enroll them in a funnel or take them out, erase them, and
//! list the funnels with their counts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, error};
use crate::domain::{Email, LeadId, Tag};
use crate::runtime::Enrolled;

/// `None` when the request carries the admin token, else the refusal.
fn refused(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.admin_token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "",
            "the admin API is not enabled (set admin_token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given
        .is_some_and(|g| crate::delivery::track::constant_time_eq(g.as_bytes(), token.as_bytes()));
    (!ok).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "missing or wrong bearer token",
        )
    })
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin request failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "",
        "the database did not answer; try again",
    )
}

fn no_lead() -> Response {
    error(StatusCode::NOT_FOUND, "id", "no such lead")
}

#[derive(serde::Deserialize)]
pub struct Find {
    email: Option<String>,
}

/// `GET /api/v1/leads?email=…`: the lead with that address, exported.
pub async fn find(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Find>,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let Some(email) = q.email else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "email", "missing");
    };
    let email = match Email::parse(&email) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "email", &e.to_string()),
    };
    match state.store.lead_by_email(&email).await {
        Ok(Some(l)) => export_of(&state, l.id).await,
        Ok(None) => error(StatusCode::NOT_FOUND, "email", "no lead with this address"),
        Err(e) => unavailable(e),
    }
}

async fn export_of(state: &AppState, id: LeadId) -> Response {
    match state.store.export_lead(id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => no_lead(),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/v1/leads/{id}`: everything stored about the lead.
pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    export_of(&state, LeadId(id)).await
}

/// `DELETE /api/v1/leads/{id}`: erases the lead and everything about them.
pub async fn erase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    match state.store.erase_lead(LeadId(id)).await {
        Ok(true) => Json(json!({ "status": "erased", "id": id })).into_response(),
        Ok(false) => no_lead(),
        Err(e) => unavailable(e),
    }
}

/// A JSON body's string field, or the refusal naming it.
fn field(body: &[u8], name: &str) -> Result<String, (StatusCode, String, String)> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            String::new(),
            "the body is not JSON".to_string(),
        )
    })?;
    v.get(name)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                name.to_string(),
                "missing or not a string".to_string(),
            )
        })
}

/// The lead the path names, once the token is checked and the lead found; else the refusal.
async fn lead_for(state: &AppState, headers: &HeaderMap, id: i64) -> Result<LeadId, Response> {
    if let Some(r) = refused(state, headers) {
        return Err(r);
    }
    let id = LeadId(id);
    match state.store.leads(&[id]).await {
        Ok(l) if l.contains_key(&id) => Ok(id),
        Ok(_) => Err(no_lead()),
        Err(e) => Err(unavailable(e)),
    }
}

fn done() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `POST /api/v1/leads/{id}/tags` `{"tag": "vip"}`: funnels entered by that tag start.
pub async fn tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let lead = match lead_for(&state, &headers, id).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let tag = match field(&body, "tag") {
        Ok(t) => t,
        Err((s, f, m)) => return error(s, &f, &m),
    };
    let tag = match Tag::parse(&tag) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "tag", &e.to_string()),
    };
    let tagged = match &state.runtime {
        Some(rt) => rt.tag(lead, &tag, chrono::Utc::now()).await,
        None => state
            .store
            .tag_lead(lead, &tag, chrono::Utc::now())
            .await
            .map_err(Into::into),
    };
    match tagged {
        Ok(()) => done(),
        Err(e) => unavailable(e),
    }
}

/// `POST /api/v1/leads/{id}/enroll` `{"funnel": "…"}`: starts the funnel for the lead, under
/// its re-entry policy.
pub async fn enroll(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let lead = match lead_for(&state, &headers, id).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (rt, funnel) = match running_funnel(&state, &body) {
        Ok(x) => x,
        Err((s, f, m)) => return error(s, &f, &m),
    };
    match rt.enroll(lead, &funnel, chrono::Utc::now()).await {
        Ok(Enrolled::New(e)) => {
            Json(json!({ "status": "enrolled", "enrollment": e })).into_response()
        }
        Ok(Enrolled::AlreadyIn(e)) => {
            Json(json!({ "status": "already in", "enrollment": e })).into_response()
        }
        Ok(Enrolled::NotAgain) => Json(json!({ "status": "not enrolled",
            "why": "the funnel's re_entry policy refuses another run" }))
        .into_response(),
        Err(e) => unavailable(e),
    }
}

/// `DELETE /api/v1/leads/{id}/tags/{tag}`.
pub async fn untag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, tag)): Path<(i64, String)>,
) -> Response {
    let lead = match lead_for(&state, &headers, id).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let tag = match Tag::parse(&tag) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "tag", &e.to_string()),
    };
    match state.store.untag_lead(lead, &tag).await {
        Ok(()) => done(),
        Err(e) => unavailable(e),
    }
}

/// `POST /api/v1/leads/{id}/remove` `{"funnel": "…"}`: takes the lead out of the funnel (the
/// run ends with the outcome `removed`; what it had queued is not sent).
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let lead = match lead_for(&state, &headers, id).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (rt, funnel) = match running_funnel(&state, &body) {
        Ok(x) => x,
        Err((s, f, m)) => return error(s, &f, &m),
    };
    match rt.remove(lead, &funnel, chrono::Utc::now()).await {
        Ok(Some(e)) => Json(json!({ "status": "removed", "enrollment": e })).into_response(),
        Ok(None) => Json(json!({ "status": "not in" })).into_response(),
        Err(e) => unavailable(e),
    }
}

/// The engine and the running funnel a `{"funnel": "…"}` body names, or the refusal.
fn running_funnel(
    state: &AppState,
    body: &[u8],
) -> Result<(std::sync::Arc<crate::runtime::Runtime>, String), (StatusCode, String, String)> {
    let funnel = field(body, "funnel")?;
    let Some(rt) = &state.runtime else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            String::new(),
            "the engine is not running".into(),
        ));
    };
    if !rt.funnels().contains_key(&funnel) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "funnel".into(),
            "no such funnel is running".into(),
        ));
    }
    Ok((rt.clone(), funnel))
}

/// `GET /api/v1/funnels`: each running funnel with its version and, by status, its
/// enrollments and emails.
pub async fn funnels(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let counts = match state.store.funnel_counts().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let running = state
        .runtime
        .as_ref()
        .map(|rt| rt.funnels())
        .unwrap_or_default();
    let list: Vec<Value> = running
        .iter()
        .map(|(id, r)| {
            let by = |what: &str| -> serde_json::Map<String, Value> {
                counts
                    .iter()
                    .filter(|(w, f, _, _)| w == what && f == id)
                    .map(|(_, _, status, n)| (status.clone(), json!(n)))
                    .collect()
            };
            json!({ "id": id, "name": r.funnel.name, "version": r.version,
                    "enrollments": by("enrollments"), "emails": by("emails") })
        })
        .collect();
    Json(json!({ "funnels": list })).into_response()
}
