//! The reports API, behind the admin token: `GET /api/v1/reports/funnels/{id}` answers the
//! same JSON as `autofunnel report FUNNEL --format json`, with the same parameters.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, ApiPath, ApiQuery};
use crate::domain::FunnelId;
use crate::report::{Cohort, FunnelReport, funnel_report};

#[derive(serde::Deserialize)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    cohort: Option<String>,
}

/// A time parameter: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn time(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    crate::report::parse_time(text)
        .ok_or_else(|| ApiError::invalid(name, "a date (2026-11-01) or an RFC 3339 time"))
}

/// `GET /api/v1/reports/funnels/{id}?from=&to=&cohort=entry|calendar`.
pub async fn funnel(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<FunnelReport>, ApiError> {
    let funnels = state.runtime.funnels();
    let running = FunnelId::parse(&id)
        .ok()
        .and_then(|id| funnels.get(&id))
        .ok_or_else(|| ApiError::not_found("id", "no such funnel is running"))?;
    let now = Utc::now();
    let to =
        q.to.as_deref()
            .map(|t| time("to", t))
            .transpose()?
            .unwrap_or(now);
    let from = q
        .from
        .as_deref()
        .map(|t| time("from", t))
        .transpose()?
        .unwrap_or(to - chrono::Duration::days(30));
    let cohort = match q.cohort.as_deref() {
        None | Some("entry") => Cohort::Entry,
        Some("calendar") => Cohort::Calendar,
        Some(_) => return Err(ApiError::invalid("cohort", "`entry` or `calendar`")),
    };
    if from >= to {
        return Err(ApiError::invalid(
            "from",
            "the period is empty: `from` is not before `to`",
        ));
    }
    let rows = state
        .runtime
        .store()
        .report_rows(&running.funnel.id.value, to.min(now))
        .await?;
    let report = funnel_report(&running.funnel, &rows, cohort, from, to, now)
        .map_err(|e| ApiError::invalid("from", e.to_string()))?;
    Ok(Json(report))
}
