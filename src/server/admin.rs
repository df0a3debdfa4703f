//! The admin API, behind `Authorization: Bearer <admin_token>` (the [`Admin`] extractor): find
//! a lead, export everything about them, tag and untag them, enroll them in a funnel or take
//! them out, erase them, list the funnels with their counts, and list and retry the webhook
//! calls given up on.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, ApiPath, ApiQuery};
use crate::domain::{Email, FunnelId, LeadId, Tag};
use crate::runtime::Enrolled;

type Answer = Result<Json<Value>, ApiError>;

fn no_lead() -> ApiError {
    ApiError::not_found("id", "no such lead")
}

#[derive(serde::Deserialize)]
pub struct Find {
    email: Option<String>,
}

/// `GET /api/v1/leads?email=…`: the lead with that address, exported.
pub async fn find(_: Admin, State(state): State<AppState>, ApiQuery(q): ApiQuery<Find>) -> Answer {
    let email = q
        .email
        .ok_or_else(|| ApiError::invalid("email", "missing"))?;
    let email = Email::parse(&email).map_err(|e| ApiError::invalid("email", e.to_string()))?;
    let lead = state
        .runtime
        .store()
        .lead_by_email(&email)
        .await?
        .ok_or_else(|| ApiError::not_found("email", "no lead with this address"))?;
    export_of(&state, lead.id).await
}

async fn export_of(state: &AppState, id: LeadId) -> Answer {
    let v = state.runtime.store().export_lead(id).await?;
    v.map(Json).ok_or_else(no_lead)
}

/// `GET /api/v1/leads/{id}`: everything stored about the lead.
pub async fn export(_: Admin, State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Answer {
    export_of(&state, LeadId(id)).await
}

/// `DELETE /api/v1/leads/{id}`: erases the lead and everything about them.
pub async fn erase(_: Admin, State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Answer {
    if !erase_lead(&state, LeadId(id)).await? {
        return Err(no_lead());
    }
    Ok(Json(json!({ "status": "erased", "id": id })))
}

/// Erases a lead and, with the embedded transport, its email files; `false` when there is no
/// such lead. The API's and the dashboard's erase.
pub async fn erase_lead(state: &AppState, id: LeadId) -> Result<bool, ApiError> {
    let Some(files) = state.runtime.store().erase_lead(id).await? else {
        return Ok(false);
    };
    if let Some(dir) = &state.outbox_dir {
        for f in files {
            match std::fs::remove_file(dir.join(&f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(file = f, error = %e, "an erased lead's email file stays")
                }
            }
        }
    }
    Ok(true)
}

/// A JSON body's string field, or the refusal naming it.
fn field(body: &[u8], name: &str) -> Result<String, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::malformed("", "the body is not JSON"))?;
    v.get(name)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid(name, "missing or not a string"))
}

/// The lead the path names, if it exists.
async fn existing(state: &AppState, id: i64) -> Result<LeadId, ApiError> {
    let id = LeadId(id);
    if state.runtime.store().leads(&[id]).await?.contains_key(&id) {
        Ok(id)
    } else {
        Err(no_lead())
    }
}

/// The running funnel a `{"funnel": "…"}` body names.
fn running_funnel(state: &AppState, body: &[u8]) -> Result<FunnelId, ApiError> {
    let funnel = FunnelId::parse(&field(body, "funnel")?)
        .ok()
        .filter(|f| state.runtime.funnels().contains_key(f))
        .ok_or_else(|| ApiError::invalid("funnel", "no such funnel is running"))?;
    Ok(funnel)
}

fn done() -> Answer {
    Ok(Json(json!({ "status": "ok" })))
}

/// `POST /api/v1/leads/{id}/tags` `{"tag": "vip"}`: funnels entered by that tag start.
pub async fn tag(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> Answer {
    let lead = existing(&state, id).await?;
    let tag =
        Tag::parse(&field(&body, "tag")?).map_err(|e| ApiError::invalid("tag", e.to_string()))?;
    state.runtime.tag(lead, &tag, chrono::Utc::now()).await?;
    done()
}

/// `DELETE /api/v1/leads/{id}/tags/{tag}`.
pub async fn untag(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((id, tag)): ApiPath<(i64, String)>,
) -> Answer {
    let lead = existing(&state, id).await?;
    let tag = Tag::parse(&tag).map_err(|e| ApiError::invalid("tag", e.to_string()))?;
    state.runtime.untag(lead, &tag).await?;
    done()
}

/// `POST /api/v1/leads/{id}/enroll` `{"funnel": "…"}`: starts the funnel for the lead, under
/// its re-entry policy.
pub async fn enroll(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> Answer {
    let lead = existing(&state, id).await?;
    let funnel = running_funnel(&state, &body)?;
    Ok(Json(
        match state
            .runtime
            .enroll(lead, &funnel, chrono::Utc::now())
            .await?
        {
            Enrolled::New(e) => json!({ "status": "enrolled", "enrollment": e.0 }),
            Enrolled::AlreadyIn(e) => json!({ "status": "already in", "enrollment": e.0 }),
            Enrolled::NotAgain => json!({ "status": "not enrolled",
                "why": "the funnel's re_entry policy refuses another run" }),
        },
    ))
}

/// `POST /api/v1/leads/{id}/remove` `{"funnel": "…"}`: takes the lead out of the funnel (the
/// run ends with the outcome `removed`; what it had queued is not sent).
pub async fn remove(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> Answer {
    let lead = existing(&state, id).await?;
    let funnel = running_funnel(&state, &body)?;
    Ok(Json(
        match state
            .runtime
            .remove(lead, &funnel, chrono::Utc::now())
            .await?
        {
            Some(e) => json!({ "status": "removed", "enrollment": e.0 }),
            None => json!({ "status": "not in" }),
        },
    ))
}

/// `GET /api/v1/funnels`: each running funnel with its version and, by status, its
/// enrollments and emails.
pub async fn funnels(_: Admin, State(state): State<AppState>) -> Answer {
    let counts = state.runtime.store().funnel_counts().await?;
    let running = state.runtime.funnels();
    let list: Vec<Value> = running
        .iter()
        .map(|(id, r)| {
            let by = |what: &str| -> serde_json::Map<String, Value> {
                counts
                    .iter()
                    .filter(|(w, f, _, _)| w == what && f == id.as_str())
                    .map(|(_, _, status, n)| (status.clone(), json!(n)))
                    .collect()
            };
            json!({ "id": id.as_str(), "name": r.funnel.name, "version": r.version,
                    "enrollments": by("enrollments"), "emails": by("emails") })
        })
        .collect();
    Ok(Json(json!({ "funnels": list })))
}

#[derive(serde::Deserialize)]
pub struct Limit {
    limit: Option<u64>,
}

/// `GET /api/v1/webhooks/failed?limit=100`: the webhook calls given up on, newest first, with
/// their last error.
pub async fn failed_webhooks(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<Limit>,
) -> Answer {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "from 1 to 1000"));
    }
    let failed = state.runtime.store().failed_webhooks(limit).await?;
    Ok(Json(json!({ "failed": failed })))
}

/// `POST /api/v1/webhooks/failed/{id}/retry`: queues a failed call again, its attempts counted
/// from zero.
pub async fn retry_webhook(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Answer {
    if state.runtime.retry_webhook(id, chrono::Utc::now()).await? {
        Ok(Json(json!({ "status": "queued", "id": id })))
    } else {
        Err(ApiError::not_found(
            "id",
            "no failed webhook call with this id",
        ))
    }
}
