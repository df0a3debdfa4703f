//! The links in emails that lead somewhere: `GET /r/{token}` (a tracked click, redirected to
//! the signed target) and `GET /o/{token}` (the open pixel). Neither shows an error to a
//! reader beyond a refused token; a failure to record is logged.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::Page;
use crate::domain::{Event, EventKind, LeadId};
use crate::store::{BatchEvent, LeadRef, NewTouch};
use crate::tokens::{Click, verify_open};

/// `GET /r/{token}`: a tracked link. Records a `click` event (the first per message and link;
/// a `HEAD` from a link scanner records nothing) and redirects to the link's target, or, once
/// the offer's deadline has passed, to the funnel's `expired_offer` page. A token that does not
/// verify is refused: no address outside a sent message is ever a target.
pub async fn click(
    State(state): State<AppState>,
    method: Method,
    Path(token): Path<String>,
) -> Result<Response, Page> {
    let click = Click::verify(&state.secret, &token).ok_or_else(Page::bad_link)?;
    let now = chrono::Utc::now();
    let origin = match state.runtime.store().message_origin(click.message).await {
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
            message: Some(click.message),
            ..Event::of(EventKind::Click)
        };
        // A click is a touch too: channel email, the funnel as campaign, the email as content.
        let touch = NewTouch {
            channel: "email".into(),
            medium: Some("email".into()),
            campaign: o.funnel.as_ref().map(|f| f.to_string()),
            content: o.template.clone(),
            ..NewTouch::default()
        };
        let click = BatchEvent {
            fields: Default::default(),
            who: LeadRef::Id(o.lead),
            event: e,
            idempotency_key: Some(format!("click:{}:{}", click.message, click.link)),
            occurred_at: now,
            touch: Some(touch),
        };
        match state.runtime.record_batch(vec![click], now).await {
            Ok(stored) => {
                state
                    .metrics
                    .events
                    .inc_by(stored.iter().filter(|(_, new)| *new).count() as u64);
            }
            Err(err) => tracing::error!(error = %err, "cannot record a click"),
        }
    }
    if click.expires.is_some_and(|d| now.timestamp() > d) {
        let elsewhere = origin.as_ref().and_then(|o| {
            let funnels = state.runtime.funnels();
            let f = funnels.get(o.funnel.as_ref()?)?;
            f.funnel.expired_offer.as_ref().map(|u| u.value.clone())
        });
        return match elsewhere {
            Some(url) => Ok(redirect(&url)),
            None => Err(Page::new(
                StatusCode::GONE,
                "This offer has ended",
                "The offer this link was for has ended.",
            )),
        };
    }
    Ok(redirect(&click.url))
}

/// `GET /o/{token}.gif`: the open pixel. Records an `open` event (the first per message) and
/// answers a transparent 1×1 GIF that is never cached.
pub async fn open(
    State(state): State<AppState>,
    method: Method,
    Path(token): Path<String>,
) -> Response {
    let Some(message) = verify_open(&state.secret, &token) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::HEAD {
        match state.runtime.store().message_origin(message).await {
            Ok(Some(o)) => {
                let e = Event {
                    template: o.template.clone(),
                    message: Some(message),
                    ..Event::of(EventKind::Open)
                };
                let now = chrono::Utc::now();
                record(&state, o.lead, e, format!("open:{message}"), now).await;
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

/// Feeds a tracking event to the engine; a failure is logged, never shown to the reader.
async fn record(
    state: &AppState,
    lead: LeadId,
    e: Event,
    key: String,
    now: chrono::DateTime<chrono::Utc>,
) {
    match state.runtime.event(lead, e, Some(key), now).await {
        Ok(_) => {
            state.metrics.events.inc();
        }
        Err(err) => tracing::error!(error = %err, "cannot record a tracking event"),
    }
}

fn redirect(url: &str) -> Response {
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
