//! The dashboard's HTTP side (`/dashboard…`): sign in with the admin token, a signed session
//! cookie, CSRF-checked forms, and the pages `crate::dashboard` makes from the reports, which
//! are computed here as the reports API computes them. Off (404) when no `admin_token` is set.

use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::reports::compute;
use crate::dashboard::{
    self, Frame, FunnelDay, FunnelFigures, Health, NavItem, View, i18n, session,
};
use crate::domain::FunnelId;
use crate::locale::Language;
use crate::report::Cohort;
use crate::report::request::{Answer, Params, Request, What};
use crate::tokens::constant_time_eq;

/// What every dashboard answer carries: no caching, no framing, nothing loaded from anywhere
/// (the page is its own styles and inline SVG), no referrer.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (k, v) in set {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn html(status: StatusCode, body: String) -> Response {
    secured((status, axum::response::Html(body)).into_response())
}

/// The language to speak to this browser.
fn language(state: &AppState, headers: &HeaderMap) -> Language {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    i18n::choose(state.ui_language, accept)
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::read(h, name))
}

fn off() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "<!doctype html><title>Not enabled</title><p>The dashboard is not enabled (set admin_token).</p>".into(),
    )
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // Without the system's randomness a login form is refused at its check, not forged.
    let _ = getrandom::fill(&mut n);
    n
}

/// A signed-in request: its session cookie, valid. Anything else is sent to the sign-in page.
pub struct Signed {
    session: String,
    lang: Language,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if state.admin_token.is_none() {
            return Err(off());
        }
        let now = Utc::now().timestamp();
        let signed_out = |s: &str| {
            state
                .signed_out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&session::id(s))
        };
        match cookie_of(&parts.headers, session::COOKIE) {
            Some(s) if session::valid(&state.secret, s, now) && !signed_out(s) => Ok(Signed {
                session: s.to_string(),
                lang: language(state, &parts.headers),
            }),
            _ => Err(secured(Redirect::to("/dashboard/login").into_response())),
        }
    }
}

impl Signed {
    /// What every page of this session shows around its own: its words, the sign-out form's
    /// token, the running funnels.
    fn frame(&self, state: &AppState) -> Frame {
        Frame {
            t: i18n::strings(self.lang),
            lang: self.lang,
            csrf: session::csrf(&state.secret, &self.session),
            nav: nav(state),
        }
    }
}

/// Adds a `Set-Cookie` to an answer.
fn set_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn nav(state: &AppState) -> Vec<NavItem> {
    state
        .runtime
        .funnels()
        .values()
        .map(|r| NavItem {
            id: r.funnel.id.value.to_string(),
            name: r.funnel.name.clone(),
        })
        .collect()
}

/// `GET /dashboard/login`: the sign-in form, tied to this browser by a one-time value.
pub async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.admin_token.is_none() {
        return off();
    }
    login_page(&state, &headers, StatusCode::OK, None)
}

fn login_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let form = hex::encode(nonce());
    let t = i18n::strings(language(state, headers));
    let r = html(status, dashboard::login_page(t, &form, error));
    set_cookie(
        r,
        &session::cookie(session::LOGIN_COOKIE, &form, 600, state.https),
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    form: String,
    #[serde(default)]
    token: String,
}

/// `POST /dashboard/login`: the admin token (compared in constant time) from the form this
/// browser fetched starts a session.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(token) = state.admin_token.as_deref() else {
        return off();
    };
    let t = i18n::strings(language(&state, &headers));
    let tied = cookie_of(&headers, session::LOGIN_COOKIE)
        .is_some_and(|c| !f.form.is_empty() && constant_time_eq(c.as_bytes(), f.form.as_bytes()));
    if !tied {
        return login_page(&state, &headers, StatusCode::FORBIDDEN, Some(t.stale_form));
    }
    if !constant_time_eq(f.token.trim().as_bytes(), token.as_bytes()) {
        tracing::warn!("dashboard sign-in with a wrong token");
        return login_page(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some(t.wrong_token),
        );
    }
    let value = session::issue(&state.secret, &nonce(), Utc::now().timestamp());
    let r = secured(Redirect::to("/dashboard").into_response());
    let r = set_cookie(
        r,
        &session::cookie(session::COOKIE, &value, session::LIFETIME_SECS, state.https),
    );
    set_cookie(
        r,
        &session::cookie(session::LOGIN_COOKIE, "", 0, state.https),
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /dashboard/logout`: ends the session (its cookie removed), with the session's token.
pub async fn logout(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !session::csrf_ok(&state.secret, &signed.session, &f.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            "<!doctype html><title>Refused</title><p>The form's token is missing or wrong.</p>"
                .into(),
        );
    }
    let now = Utc::now().timestamp();
    let (id, until) = (session::id(&signed.session), now + session::LIFETIME_SECS);
    // Kept in the database too, so a restart goes on refusing it; expired ones are refused
    // anyway, and forgotten.
    let kept = match state
        .runtime
        .store()
        .sign_out_session(&id, until, now)
        .await
    {
        Ok(kept) => kept,
        Err(e) => {
            tracing::error!(error = %e, "a signed-out session is kept by this process only");
            std::collections::HashMap::from([(id, until)])
        }
    };
    {
        let mut out = state.signed_out.lock().unwrap_or_else(|e| e.into_inner());
        out.retain(|_, until| *until > now);
        out.extend(kept);
    }
    let r = secured(Redirect::to("/dashboard/login").into_response());
    set_cookie(r, &session::cookie(session::COOKIE, "", 0, state.https))
}

fn failed(e: ApiError) -> Response {
    let text = crate::server::error::html_escape(&e.message);
    html(
        e.status,
        format!("<!doctype html><title>Cannot show this</title><p>{text}</p>"),
    )
}

/// `GET /dashboard`: the overview.
pub async fn overview(State(state): State<AppState>, signed: Signed) -> Response {
    let now = Utc::now();
    let tz = state.report_zone;
    let funnels = state.runtime.funnels();
    let store = state.runtime.store();
    type Day = (
        FunnelId,
        Vec<crate::report::FunnelReport>,
        u64,
        (Vec<(String, u64)>, u64),
    );
    let mut days: Vec<Day> = Vec::new();
    for (id, r) in funnels.iter() {
        let params = Params {
            from: Some(dashboard::period_start(now, 30, tz).to_rfc3339()),
            cohort: Some("calendar".into()),
            by: Some("day".into()),
            tz: Some(tz.name().into()),
            ..Params::default()
        };
        let week = Params {
            from: Some(dashboard::period_start(now, 7, tz).to_rfc3339()),
            cohort: Some("calendar".into()),
            tz: Some(tz.name().into()),
            ..Params::default()
        };
        let made = async {
            let days = Request::parse(What::Funnel, &params, now)
                .map_err(|e| ApiError::invalid(e.param, e.message))?;
            let mails = Request::parse(What::Emails, &week, now)
                .map_err(|e| ApiError::invalid(e.param, e.message))?;
            // Side by side, with the live runs per stage.
            futures_util::future::try_join(
                compute(&state, &r.funnel, days, now),
                compute(&state, &r.funnel, mails, now),
            )
            .await
        };
        let (made, standing) = futures_util::future::join(made, in_stage(&state, &r.funnel)).await;
        let standing = match standing {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        match made {
            Ok((Answer::Funnel(a), Answer::Emails(e))) => {
                let bounces = e.emails.iter().map(|x| x.bounced).sum();
                days.push((id.clone(), a.periods.unwrap_or_default(), bounces, standing));
            }
            Ok(_) => {}
            Err(e) => return failed(e),
        }
    }
    let items: Vec<FunnelDay> = days
        .iter()
        .filter_map(|(id, reports, _, (in_flight, awaiting))| {
            let f = &funnels.get(id)?.funnel;
            let (in_flight, awaiting) = (in_flight.clone(), *awaiting);
            Some(FunnelDay {
                funnel: f,
                days: reports,
                in_flight,
                awaiting,
            })
        })
        .collect();
    // The health figures as read, or the page says why they could not be (never a 0 that
    // reads as healthy).
    let read = async {
        let (queued, sending) = store.outbox_depth().await?;
        let next = store.next_wake().await?;
        let failed_webhooks = store.failed_webhook_count().await?;
        Ok::<_, crate::store::StoreError>((queued, sending, next, failed_webhooks))
    };
    let (queued, sending, next, failed_webhooks) = match read.await {
        Ok(h) => h,
        Err(e) => return failed(e.into()),
    };
    let health = Health {
        queued: queued.max(0) as u64,
        sending: sending.max(0) as u64,
        lag_secs: next.map_or(0.0, |w| (now - w).num_milliseconds().max(0) as f64 / 1000.0),
        failed_webhooks,
        bounces: days.iter().map(|d| d.2).sum(),
    };
    let frame = signed.frame(&state);
    html(
        StatusCode::OK,
        dashboard::overview_page(&frame, &items, &health, tz),
    )
}

#[derive(Deserialize, Default)]
pub struct ViewQuery {
    days: Option<u32>,
    cohort: Option<String>,
}

impl ViewQuery {
    fn view(&self) -> View {
        View {
            days: self.days.filter(|d| View::DAYS.contains(d)).unwrap_or(30),
            cohort: match self.cohort.as_deref() {
                Some("calendar") => Cohort::Calendar,
                _ => Cohort::Entry,
            },
        }
    }

    fn params(&self, state: &AppState) -> Params {
        let v = self.view();
        Params {
            from: Some(dashboard::period_start(Utc::now(), v.days, state.report_zone).to_rfc3339()),
            cohort: Some(
                match v.cohort {
                    Cohort::Entry => "entry",
                    Cohort::Calendar => "calendar",
                }
                .into(),
            ),
            tz: Some(state.report_zone.name().into()),
            ..Params::default()
        }
    }
}

/// Reports of one running funnel, each with the same parameters, as of now.
async fn reports_of(
    state: &AppState,
    id: &str,
    params: &Params,
    what: &[What],
) -> Result<(crate::funnel::Funnel, Vec<Answer>), ApiError> {
    let f = super::reports::running_funnel(state, id)?;
    let now = Utc::now();
    let mut reqs = Vec::with_capacity(what.len());
    for w in what {
        let req =
            Request::parse(*w, params, now).map_err(|e| ApiError::invalid(e.param, e.message))?;
        reqs.push(req);
    }
    // Together: a page's reports read the same counters.
    let out = super::reports::compute_all(state, &f, reqs, now).await?;
    Ok((f, out))
}

/// The funnel report `params` ask for of the running funnel `id`, alone.
async fn funnel_report(
    state: &AppState,
    id: &str,
    params: &Params,
) -> Result<
    (
        crate::funnel::Funnel,
        Box<crate::report::request::FunnelAnswer>,
    ),
    ApiError,
> {
    let (f, mut answers) = reports_of(state, id, params, &[What::Funnel]).await?;
    match answers.pop() {
        Some(Answer::Funnel(a)) => Ok((f, a)),
        _ => Err(ApiError::unavailable(
            "reports",
            "an answer of another kind",
        )),
    }
}

/// `GET /dashboard/funnels/{id}?days=7|30|90&cohort=entry|calendar`: a funnel's page.
pub async fn funnel(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let (f, answers) = match reports_of(
        &state,
        &id,
        &q.params(&state),
        &[What::Funnel, What::Emails, What::Ab],
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let [
        Answer::Funnel(report),
        Answer::Emails(emails),
        Answer::Ab(ab),
    ] = &answers[..]
    else {
        return failed(ApiError::unavailable(
            "reports",
            "an answer of another kind",
        ));
    };
    let frame = signed.frame(&state);
    let figures = FunnelFigures {
        funnel: &f,
        view: q.view(),
        report: &report.report,
        emails,
        ab,
    };
    html(StatusCode::OK, dashboard::funnel_page(&frame, &figures))
}

/// Live runs per stage of `f`, in the funnel's order, and the runs awaiting the double opt-in:
/// from its counters (`Store::standing`), not a scan of every run.
async fn in_stage(
    state: &AppState,
    f: &crate::funnel::Funnel,
) -> Result<(Vec<(String, u64)>, u64), ApiError> {
    let (open, unconfirmed) = state.runtime.store().standing(&f.id.value).await?;
    let per_stage = f
        .stages
        .iter()
        .map(|s| {
            let n = open.get(s.id.value.as_str()).copied().unwrap_or(0);
            (s.id.value.to_string(), n.max(0) as u64)
        })
        .collect();
    Ok((per_stage, unconfirmed.max(0) as u64))
}

/// `GET /dashboard/funnels/{id}/map`: the funnel map.
pub async fn map(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let running = match super::reports::running_funnel(&state, &id) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let counts = match in_stage(&state, &running).await {
        Ok((c, _)) => c,
        Err(e) => return failed(e),
    };
    let frame = signed.frame(&state);
    html(
        StatusCode::OK,
        dashboard::map_page(&frame, &running, &counts),
    )
}

/// `GET /dashboard/funnels/{id}/report.json` and `.csv`: the funnel page's report as the
/// reports API and `report --format csv` give it.
pub async fn funnel_download(
    State(state): State<AppState>,
    _: Signed,
    Path((id, file)): Path<(String, String)>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let csv = match file.as_str() {
        "report.json" => false,
        "report.csv" => true,
        _ => return failed(ApiError::not_found("file", "report.json or report.csv")),
    };
    let a = match funnel_report(&state, &id, &q.params(&state)).await {
        Ok((_, a)) => a,
        Err(e) => return failed(e),
    };
    let a = &*a;
    let (body, kind) = if csv {
        (
            crate::report::render::funnel_csv(a),
            "text/csv; charset=utf-8",
        )
    } else {
        (
            serde_json::to_string_pretty(a).unwrap_or_default(),
            "application/json",
        )
    };
    let mut r = secured((StatusCode::OK, body).into_response());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

#[derive(Deserialize, Default)]
pub struct LeadQuery {
    email: Option<String>,
    done: Option<String>,
}

/// `GET /dashboard/leads?email=`: find a lead by address (found: its page).
pub async fn leads(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<LeadQuery>,
) -> Response {
    let t = i18n::strings(signed.lang);
    let query = q.email.as_deref().unwrap_or("").trim().to_string();
    let mut message = (q.done.as_deref() == Some("erased")).then_some(t.erased);
    if !query.is_empty() {
        let found = match crate::domain::Email::parse(&query) {
            Ok(email) => match state.runtime.store().lead_by_email(&email).await {
                Ok(l) => l,
                Err(e) => return failed(e.into()),
            },
            Err(_) => None,
        };
        match found {
            Some(l) => {
                return secured(
                    Redirect::to(&format!("/dashboard/leads/{}", l.id.0)).into_response(),
                );
            }
            None => message = Some(t.no_such_lead),
        }
    }
    let frame = signed.frame(&state);
    let view = dashboard::LeadView {
        query: &query,
        message,
        done: None,
        export: None,
        funnels: &frame.nav,
        tz: state.report_zone,
    };
    let status = if message == Some(t.no_such_lead) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    html(status, dashboard::lead_page(&frame, &view))
}

/// What an action's `?done=` says, in the page's language.
fn done_text(t: &'static i18n::Strings, done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "tagged" => t.done_tagged,
        "enrolled" => t.done_enrolled,
        "already_in" => t.done_already_in,
        "not_again" => t.done_not_again,
        "removed" => t.done_removed,
        "not_in" => t.done_not_in,
        _ => return None,
    })
}

/// `GET /dashboard/leads/{id}`: the lead's page.
pub async fn lead(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Query(q): Query<LeadQuery>,
) -> Response {
    lead_answer(&state, &signed, id, q.done.as_deref(), None, StatusCode::OK).await
}

async fn lead_answer(
    state: &AppState,
    signed: &Signed,
    id: i64,
    done: Option<&str>,
    message: Option<&str>,
    status: StatusCode,
) -> Response {
    let t = i18n::strings(signed.lang);
    let export = match state
        .runtime
        .store()
        .export_lead(crate::domain::LeadId(id))
        .await
    {
        Ok(e) => e,
        Err(e) => return failed(e.into()),
    };
    let (status, message) = match (&export, message) {
        (None, _) => (StatusCode::NOT_FOUND, Some(t.no_such_lead)),
        (Some(_), m) => (status, m),
    };
    let frame = signed.frame(state);
    let query = export
        .as_ref()
        .and_then(|e| e["lead"]["email"].as_str())
        .unwrap_or("")
        .to_string();
    let view = dashboard::LeadView {
        query: &query,
        message,
        done: done_text(t, done),
        export: export.as_ref(),
        funnels: &frame.nav,
        tz: state.report_zone,
    };
    html(status, dashboard::lead_page(&frame, &view))
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    funnel: String,
    #[serde(default)]
    confirm: String,
}

fn refused(t: &i18n::Strings) -> Response {
    html(
        StatusCode::FORBIDDEN,
        format!(
            "<!doctype html><title>Refused</title><p>{}</p>",
            t.refused_form
        ),
    )
}

/// `POST /dashboard/leads/{id}/{action}` (`tag`, `enroll`, `remove`, `erase`), each with the
/// session's form token; done, back to the lead's page saying what was done.
pub async fn lead_action(
    State(state): State<AppState>,
    signed: Signed,
    Path((id, action)): Path<(i64, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(&state, &signed, id, &action, f).await
}

/// `POST /dashboard/leads/{id}/erase`: [`lead_action`]'s erase.
pub async fn erase(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(&state, &signed, id, "erase", f).await
}

async fn act(state: &AppState, signed: &Signed, id: i64, action: &str, f: ActionForm) -> Response {
    let t = i18n::strings(signed.lang);
    if !session::csrf_ok(&state.secret, &signed.session, &f.csrf) {
        return refused(t);
    }
    let lead = crate::domain::LeadId(id);
    let known = match state.runtime.store().leads(&[lead]).await {
        Ok(l) => l,
        Err(e) => return failed(e.into()),
    };
    let Some(found) = known.get(&lead) else {
        return lead_answer(state, signed, id, None, None, StatusCode::NOT_FOUND).await;
    };
    let now = Utc::now();
    let invalid = |m: String| lead_invalid(state, signed, id, m);
    let funnel = || {
        FunnelId::parse(f.funnel.trim())
            .ok()
            .filter(|x| state.runtime.funnels().contains_key(x))
    };
    let done = match action {
        "tag" => match crate::domain::Tag::parse(f.tag.trim()) {
            Ok(tag) => match state.runtime.tag(lead, &tag, now).await {
                Ok(()) => "tagged",
                Err(e) => return failed(e.into()),
            },
            Err(e) => return invalid(e.to_string()).await,
        },
        "enroll" => {
            let Some(fid) = funnel() else {
                return invalid("no such funnel is running".into()).await;
            };
            match state.runtime.enroll(lead, &fid, now).await {
                Ok(crate::runtime::Enrolled::New(_)) => "enrolled",
                Ok(crate::runtime::Enrolled::AlreadyIn(_)) => "already_in",
                Ok(crate::runtime::Enrolled::NotAgain) => "not_again",
                Err(e) => return failed(e.into()),
            }
        }
        "remove" => {
            let Some(fid) = funnel() else {
                return invalid("no such funnel is running".into()).await;
            };
            match state.runtime.remove(lead, &fid, now).await {
                Ok(Some(_)) => "removed",
                Ok(None) => "not_in",
                Err(e) => return failed(e.into()),
            }
        }
        "erase" => {
            if !f.confirm.trim().eq_ignore_ascii_case(found.email.as_str()) {
                return invalid(t.wrong_address.to_string()).await;
            }
            return match super::admin::erase_lead(state, lead).await {
                Ok(_) => secured(Redirect::to("/dashboard/leads?done=erased").into_response()),
                Err(e) => failed(e),
            };
        }
        _ => {
            return failed(ApiError::not_found(
                "action",
                "tag, enroll, remove or erase",
            ));
        }
    };
    secured(Redirect::to(&format!("/dashboard/leads/{id}?done={done}")).into_response())
}

async fn lead_invalid(state: &AppState, signed: &Signed, id: i64, message: String) -> Response {
    lead_answer(
        state,
        signed,
        id,
        None,
        Some(&message),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

/// `GET /dashboard/leads/{id}/erase`: the confirmation before erasing.
pub async fn erase_form(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Response {
    let lead = crate::domain::LeadId(id);
    let email = match state.runtime.store().leads(&[lead]).await {
        Ok(l) => l.get(&lead).map(|l| l.email.as_str().to_string()),
        Err(e) => return failed(e.into()),
    };
    let Some(email) = email else {
        return lead_answer(&state, &signed, id, None, None, StatusCode::NOT_FOUND).await;
    };
    let frame = signed.frame(&state);
    html(StatusCode::OK, dashboard::erase_page(&frame, id, &email))
}

/// `GET /dashboard/funnels/{id}/cohorts`: entry cohorts by week, the last 12 weeks.
pub async fn cohorts(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let tz = state.report_zone;
    let params = Params {
        from: Some(
            dashboard::period_start(Utc::now(), 7 * dashboard::COHORT_WEEKS as u32, tz)
                .to_rfc3339(),
        ),
        by: Some("week".into()),
        tz: Some(tz.name().into()),
        ..Params::default()
    };
    let (f, a) = match funnel_report(&state, &id, &params).await {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let frame = signed.frame(&state);
    let weeks = a.periods.unwrap_or_default();
    html(StatusCode::OK, dashboard::cohorts_page(&frame, &f, &weeks))
}

#[derive(Deserialize, Default)]
pub struct ModelQuery {
    model: Option<String>,
}

/// `GET /dashboard/funnels/{id}/attribution?model=`: the last 30 days' purchases credited to
/// their touches.
pub async fn attribution(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<ModelQuery>,
) -> Response {
    let tz = state.report_zone;
    let params = Params {
        from: Some(dashboard::period_start(Utc::now(), 30, tz).to_rfc3339()),
        model: Some(q.model.unwrap_or_else(|| "linear".into())),
        tz: Some(tz.name().into()),
        ..Params::default()
    };
    let (f, a) = match reports_of(&state, &id, &params, &[What::Attribution]).await {
        Ok((f, mut a)) => (f, a.remove(0)),
        Err(e) => return failed(e),
    };
    let Answer::Attribution(r) = a else {
        return failed(ApiError::unavailable(
            "reports",
            "an answer of another kind",
        ));
    };
    let frame = signed.frame(&state);
    html(StatusCode::OK, dashboard::attribution_page(&frame, &f, &r))
}

/// `GET /dashboard/funnels/{id}/whatif?days=&inflow=&set_STAGE=`: the forecast with the
/// changes tried; a value that cannot be used is named on the page.
pub async fn whatif(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let running = match super::reports::running_funnel(&state, &id) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let f = &running;
    let days = q
        .get("days")
        .map(|d| d.trim().to_string())
        .unwrap_or_default();
    let inflow = q
        .get("inflow")
        .map(|d| d.trim().to_string())
        .unwrap_or_default();
    let changes: Vec<(String, String)> = f
        .stages
        .iter()
        .filter_map(|s| {
            let v = q.get(&format!("set_{}", s.id.value))?.trim().to_string();
            (!v.is_empty()).then(|| (s.id.value.to_string(), v))
        })
        .collect();
    let set = changes
        .iter()
        .map(|(s, v)| {
            let signed_v = if v.starts_with(['-', '+']) {
                v.clone()
            } else {
                format!("+{v}")
            };
            format!("{s}={signed_v}%")
        })
        .collect();
    let params = Params {
        days: (!days.is_empty()).then(|| days.clone()),
        inflow: (!inflow.is_empty()).then(|| format!("{inflow}/day")),
        set,
        tz: Some(state.report_zone.name().into()),
        ..Params::default()
    };
    let now = Utc::now();
    let made = match Request::parse(What::Forecast, &params, now) {
        Ok(req) => compute(&state, f, req, now).await.map_err(|e| e.message),
        Err(e) => Err(format!("{}: {}", e.param, e.message)),
    };
    let (report, error, status) = match made {
        Ok(Answer::Forecast(r)) => (Some(r), None, StatusCode::OK),
        Ok(_) => (
            None,
            Some("an answer of another kind".to_string()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Err(m) => (None, Some(m), StatusCode::UNPROCESSABLE_ENTITY),
    };
    let frame = signed.frame(&state);
    let inputs = dashboard::WhatIfInputs {
        days: if days.is_empty() { "30" } else { &days },
        inflow: &inflow,
        changes: &changes,
        error: error.as_deref(),
    };
    html(
        status,
        dashboard::whatif_page(&frame, f, &inputs, report.as_ref()),
    )
}

#[derive(Deserialize, Default)]
pub struct SliceQuery {
    by: Option<String>,
}

/// `GET /dashboard/funnels/{id}/slices?by=utm_source`: the last 30 days' funnel per group.
pub async fn slices(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<SliceQuery>,
) -> Response {
    let keys = super::reports::running_funnel(&state, &id)
        .map(|f| dashboard::slice_keys(&f))
        .unwrap_or_default();
    let key =
        q.by.filter(|k| keys.contains(k))
            .unwrap_or_else(|| "utm_source".into());
    let tz = state.report_zone;
    let params = Params {
        from: Some(dashboard::period_start(Utc::now(), 30, tz).to_rfc3339()),
        slice: vec![key.clone()],
        tz: Some(tz.name().into()),
        ..Params::default()
    };
    let (f, a) = match funnel_report(&state, &id, &params).await {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let frame = signed.frame(&state);
    html(StatusCode::OK, dashboard::slices_page(&frame, &f, &key, &a))
}
