//! The pages behind the links in emails that people read: `/u/{token}` (unsubscribe: this
//! funnel or everything, RFC 8058 one-click) and `/c/{token}` (double opt-in). A `GET` only
//! shows a page; a `POST` acts, so a link scanner's fetch changes nothing.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::error::{Page, html_escape};
use crate::domain::{ConsentAct, Email, Event, EventKind, FunnelId, LeadId};
use crate::tokens::{LeadLink, verify_lead_token};

/// Which funnel an unsubscribe link came from (`?f=`), offered as "this funnel" on the page.
#[derive(serde::Deserialize, Default)]
pub struct FunnelParam {
    f: Option<String>,
}

/// The lead a token names, with their address.
async fn lead_of(
    state: &AppState,
    purpose: LeadLink,
    token: &str,
) -> Result<(LeadId, Email), Page> {
    let id = verify_lead_token(&state.secret, purpose, token).ok_or_else(Page::bad_link)?;
    let leads = state.runtime.store().leads(&[id]).await?;
    let lead = leads.get(&id).ok_or_else(|| {
        Page::new(
            StatusCode::NOT_FOUND,
            "Nothing to do",
            "This address is no longer on any list here.",
        )
    })?;
    Ok((id, lead.email.clone()))
}

/// A running funnel's id and display name, from a `?f=` or `scope=` value.
fn running(state: &AppState, id: Option<&str>) -> Option<(FunnelId, String)> {
    let id = FunnelId::parse(id?).ok()?;
    let name = state.runtime.funnels().get(&id)?.funnel.name.clone();
    Some((id, name))
}

/// `GET /u/{token}`: the unsubscribe page: stop this funnel's emails or all of them. Shows what
/// is already stopped; changes nothing by itself (link scanners fetch pages).
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<FunnelParam>,
) -> Result<Response, Page> {
    let (_, email) = lead_of(&state, LeadLink::Unsubscribe, &token).await?;
    let scopes = state
        .runtime
        .store()
        .suppressions_of(&email)
        .await
        .unwrap_or_default();
    if scopes.iter().any(|s| s == "*") {
        return Ok(Page::new(
            StatusCode::OK,
            "You are unsubscribed",
            format!(
                "{} gets no more emails from us.",
                html_escape(email.as_str())
            ),
        )
        .into_response());
    }
    let mut buttons = String::new();
    if let Some((f, name)) = running(&state, q.f.as_deref()) {
        if scopes.iter().any(|s| s == f.as_str()) {
            buttons.push_str(&format!(
                "<p>You no longer get emails about «{}».</p>",
                html_escape(&name)
            ));
        } else {
            buttons.push_str(&format!(
                "<p><button name=\"scope\" value=\"{}\">Stop emails about «{}»</button></p>",
                html_escape(f.as_str()),
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
    Ok((StatusCode::OK, Html(body)).into_response())
}

/// `POST /u/{token}`: unsubscribes at once. The RFC 8058 one-click body
/// (`List-Unsubscribe=One-Click`) and `scope=*` stop all mail; `scope=<funnel>` only that
/// funnel's. The choice is kept: later enrollments send nothing to a stopped address.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Page, Page> {
    let (id, email) = lead_of(&state, LeadLink::Unsubscribe, &token).await?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .and_then(|(_, v)| running(&state, Some(v)));
    let now = chrono::Utc::now();
    let rt = &state.runtime;
    let what = match &scope {
        Some((funnel, name)) => {
            rt.store()
                .suppress_in(&email, Some(funnel), EventKind::Unsubscribed.as_str(), now)
                .await?;
            // The run in that funnel ends as unsubscribed; the lead's other funnels go on.
            let key = format!("unsubscribed:{}:{funnel}", id.0);
            let e = Event {
                funnel: Some(funnel.clone()),
                ..Event::of(EventKind::Unsubscribed)
            };
            rt.event(id, e, Some(key), now).await?;
            format!("You will get no more emails about «{}».", html_escape(name))
        }
        None => {
            let key = format!("unsubscribed:{}", id.0);
            rt.event(id, Event::of(EventKind::Unsubscribed), Some(key), now)
                .await?;
            "You will get no more emails from us.".to_string()
        }
    };
    let one_click = form.iter().any(|(k, _)| k == "List-Unsubscribe");
    let source = match (&scope, one_click) {
        (Some((funnel, _)), _) => format!("unsubscribe page: {funnel}"),
        (None, true) => "one-click unsubscribe".to_string(),
        (None, false) => "unsubscribe page: everything".to_string(),
    };
    let who = super::signup::requester(peer.ip(), &headers, &state.trusted_proxies);
    rt.store()
        .record_consent(&[(id, ConsentAct::Withdrawn, Some(source), who)], now)
        .await?;
    Ok(Page::new(StatusCode::OK, "You are unsubscribed", what))
}

/// `GET /c/{token}`: the double opt-in page. The person presses its button, which posts the
/// confirmation: a link scanner's fetch confirms nothing, and neither does one that runs
/// scripts (the page has none).
pub async fn confirm_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, Page> {
    lead_of(&state, LeadLink::Confirm, &token).await?;
    let body = "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Confirm your address</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em\"><h1>Confirm your address</h1>\
         <p>Press the button to confirm that you asked for these emails.</p>\
         <form method=\"post\"><button>Yes, send me the emails</button></form></body></html>";
    Ok((StatusCode::OK, Html(body)).into_response())
}

/// `POST /c/{token}`: records the `confirmed` event once; the lead's funnels start.
pub async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Result<Page, Page> {
    let (id, _) = lead_of(&state, LeadLink::Confirm, &token).await?;
    let key = format!("confirmed:{}", id.0);
    let now = chrono::Utc::now();
    state
        .runtime
        .event(id, Event::of(EventKind::Confirmed), Some(key), now)
        .await?;
    // The first confirmation is the proof; a second press of the button adds nothing.
    if !state
        .runtime
        .store()
        .has_consent(id, ConsentAct::Confirmed)
        .await?
    {
        let who = super::signup::requester(peer.ip(), &headers, &state.trusted_proxies);
        let source = Some("double opt-in link".to_string());
        state
            .runtime
            .store()
            .record_consent(&[(id, ConsentAct::Confirmed, source, who)], now)
            .await?;
    }
    Ok(Page::new(
        StatusCode::OK,
        "Thank you",
        "Your address is confirmed. The first email is on its way.",
    ))
}
