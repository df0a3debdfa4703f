//! The reports API, behind the admin token: `GET /api/v1/reports/funnels/{id}` and its
//! `/emails`, `/ab`, `/attribution` and `/forecast` answer the same JSON as `autofunnel report
//! FUNNEL --format json` (and `--emails`, `--ab`, `--attribution`, `autofunnel forecast`), with
//! the same parameters, checked by the same code. One report is computed at a time, off the
//! async workers: a report that reads rows holds much memory and CPU for a while, and a few at
//! once must neither exhaust the machine nor stall the requests the server is there for.

use axum::Json;
use axum::extract::State;
use chrono::Utc;

use tokio::sync::Semaphore;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, ApiPath, ApiQuery};
use crate::domain::FunnelId;
use crate::report::request::{Answer, Params, Request, What};
use crate::runtime::report::{self, ReportFailed};

/// Reports being computed from the rows: one at a time, the others wait their turn (each
/// takes CPU for seconds at a million leads). Reports from counters take milliseconds and go
/// at once.
static COMPUTING: Semaphore = Semaphore::const_new(1);

async fn report(
    state: AppState,
    id: String,
    what: What,
    mut params: Params,
) -> Result<Json<Answer>, ApiError> {
    if params.tz.is_none() {
        params.tz = Some(state.report_zone.name().to_string());
    }
    let funnel = running_funnel(&state, &id)?;
    // The report is as of the request's arrival, however long it waits for its turn.
    let now = Utc::now();
    let req =
        Request::parse(what, &params, now).map_err(|e| ApiError::invalid(e.param, e.message))?;
    Ok(Json(compute(&state, &funnel, req, now).await?))
}

/// The running funnel `id` names, or the refusal saying there is none (404).
pub fn running_funnel(state: &AppState, id: &str) -> Result<crate::funnel::Funnel, ApiError> {
    let funnels = state.runtime.funnels();
    FunnelId::parse(id)
        .ok()
        .and_then(|id| funnels.get(&id))
        .map(|r| r.funnel.clone())
        .ok_or_else(|| ApiError::not_found("id", "no such funnel is running"))
}

/// Makes a report as the API and the dashboard do: off the async workers, one at a time when
/// it reads rows.
pub async fn compute(
    state: &AppState,
    funnel: &crate::funnel::Funnel,
    req: Request,
    now: chrono::DateTime<Utc>,
) -> Result<Answer, ApiError> {
    let mut out = compute_all(state, funnel, vec![req], now).await?;
    out.pop()
        .ok_or_else(|| ApiError::unavailable("reports", "no answer"))
}

/// [`compute`] for several reports of one funnel (a dashboard page's), made together: from one
/// read of the counters when they share its days (`report::make_all`).
pub async fn compute_all(
    state: &AppState,
    funnel: &crate::funnel::Funnel,
    reqs: Vec<Request>,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<Answer>, ApiError> {
    let (store, funnel) = (state.runtime.store().clone(), funnel.clone());
    let rows = reqs.iter().any(|r| {
        use crate::store::ReportRead;
        // Rows, or the rows of some hours beside the counters (as many as the whole
        // period's, for a report by day in another zone).
        matches!(
            r.read(now, store.zone()),
            ReportRead::Rows(_) | ReportRead::Parts { .. }
        )
    });
    let _turn = match rows {
        true => Some(
            COMPUTING
                .acquire()
                .await
                .map_err(|e| ApiError::unavailable("reports", e))?,
        ),
        false => None,
    };
    // Off the async workers: the rows a report counts take CPU for a while.
    let handle = tokio::runtime::Handle::current();
    let made = tokio::task::spawn_blocking(move || {
        handle.block_on(report::make_all(&store, &funnel, &reqs, now))
    })
    .await
    .map_err(|e| ApiError::unavailable("reports", e))?;
    match made {
        Ok(a) => Ok(a),
        Err(ReportFailed::Report(e)) => Err(ApiError::invalid(e.param(), e.to_string())),
        Err(ReportFailed::Store(e)) => Err(e.into()),
    }
}

/// `GET /api/v1/reports/funnels/{id}?from=&to=&cohort=&by=&window=&slice=`.
pub async fn funnel(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<Answer>, ApiError> {
    report(state, id, What::Funnel, q).await
}

/// `GET /api/v1/reports/funnels/{id}/emails?from=&to=&cohort=&window=`.
pub async fn emails(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<Answer>, ApiError> {
    report(state, id, What::Emails, q).await
}

/// `GET /api/v1/reports/funnels/{id}/ab?from=&to=&cohort=&window=`.
pub async fn ab(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<Answer>, ApiError> {
    report(state, id, What::Ab, q).await
}

/// `GET /api/v1/reports/funnels/{id}/attribution?from=&to=&model=&lookback=`.
pub async fn attribution(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<Answer>, ApiError> {
    report(state, id, What::Attribution, q).await
}

/// `GET /api/v1/reports/funnels/{id}/forecast?days=&inflow=&set=&observe=`.
pub async fn forecast(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Params>,
) -> Result<Json<Answer>, ApiError> {
    report(state, id, What::Forecast, q).await
}
