//! Who may call what: bearer tokens for the events API (`api_token`) and the admin API
//! (`admin_token`) as extractors, and the signature of webhooks from other systems
//! (`hooks_secret`). A handler that takes [`Admin`] or [`Api`] runs only for the right token.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use hmac::{KeyInit, Mac};

use super::AppState;
use super::error::ApiError;
use crate::tokens::constant_time_eq;

/// Which token an API takes, and what an unset one means.
pub trait Realm {
    fn token(state: &AppState) -> Option<&str>;
    /// The refusal when the token is not configured (the API is off).
    const OFF: &'static str;
}

/// The admin API's token (`admin_token`).
pub struct AdminRealm;
impl Realm for AdminRealm {
    fn token(state: &AppState) -> Option<&str> {
        state.admin_token.as_deref()
    }
    const OFF: &'static str = "the admin API is not enabled (set admin_token)";
}

/// The events API's token (`api_token`).
pub struct ApiRealm;
impl Realm for ApiRealm {
    fn token(state: &AppState) -> Option<&str> {
        state.api_token.as_deref()
    }
    const OFF: &'static str = "the API is not enabled (set api_token)";
}

/// Proof that the request carried `Authorization: Bearer <token>` of realm `R`: 404 when the
/// API is off, 401 when the token is missing or wrong (compared in constant time).
pub struct Bearer<R>(PhantomData<R>);

/// A request with the admin token.
pub type Admin = Bearer<AdminRealm>;
/// A request with the API token.
pub type Api = Bearer<ApiRealm>;

impl<R: Realm> FromRequestParts<AppState> for Bearer<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = R::token(state) else {
            return Err(ApiError::not_found("", R::OFF));
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            Ok(Bearer(PhantomData))
        } else {
            Err(ApiError::unauthorized(
                "Authorization",
                "missing or wrong bearer token",
            ))
        }
    }
}

/// How far a signed request's timestamp may be from now.
const REPLAY_WINDOW_SECS: i64 = 300;

/// Checks a signed webhook: `X-Autofunnel-Timestamp` (Unix seconds, within 5 minutes) and
/// `X-Autofunnel-Signature` = hex HMAC-SHA256 of `"{timestamp}.{body}"` with `hooks_secret`.
/// `what` names the hooks in the refusal when no secret is set (404).
pub fn verify_signed(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<(), ApiError> {
    let Some(secret) = state.hooks_secret.as_deref() else {
        return Err(ApiError::not_found(
            "",
            format!("{what} are not enabled (set hooks_secret)"),
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(ts) = header("x-autofunnel-timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(ApiError::unauthorized(
            "X-Autofunnel-Timestamp",
            "missing or not a number",
        ));
    };
    let age = chrono::Utc::now().timestamp().checked_sub(ts);
    if age.is_none_or(|a| a.checked_abs().is_none_or(|a| a > REPLAY_WINDOW_SECS)) {
        return Err(ApiError::unauthorized(
            "X-Autofunnel-Timestamp",
            "outside the 5-minute window",
        ));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let given = header("x-autofunnel-signature").and_then(hex_decode);
    if given.is_none_or(|g| mac.verify_slice(&g).is_err()) {
        return Err(ApiError::unauthorized(
            "X-Autofunnel-Signature",
            "signature does not match",
        ));
    }
    Ok(())
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
