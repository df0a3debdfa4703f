//! The HTTP side's two refusals: [`ApiError`], the JSON `{"error", "field"}` the APIs and
//! webhooks answer with, and [`Page`], the small HTML page people who followed a link see.
//! Handlers return `Result<_, ApiError>` (or `Page`) and use `?`; the status is chosen here.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::runtime::RuntimeError;
use crate::store::StoreError;

/// A refused or failed API request: the status, the field (or header) it is about — empty for
/// the request as a whole — and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// 400: the body or a path parameter cannot be read.
    pub fn malformed(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, field, message)
    }

    /// 422: a field is missing or wrong.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, field, message)
    }

    /// 404.
    pub fn not_found(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, field, message)
    }

    /// 401: a missing or wrong credential, named by `field`.
    pub fn unauthorized(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, field, message)
    }

    /// 503: the database (or the engine) failed. The cause goes to the log, not to the caller.
    pub fn unavailable(what: &str, cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{what}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            format!("{what}; try again"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Every refused input is counted in the log (`refused` lines), where a run under
        // attack or a broken integration shows.
        if self.status.is_client_error() {
            // Debug-formatted: a field name or message carrying a stranger's text cannot forge
            // log lines (line breaks come out escaped).
            tracing::info!(status = self.status.as_u16(), field = ?self.field, reason = ?self.message, "refused");
        }
        let body = json!({ "error": self.message, "field": self.field });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::unavailable("the database did not answer", e)
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        match e {
            RuntimeError::UnknownFunnel(f) => {
                ApiError::invalid("funnel", format!("no funnel \"{f}\" is running"))
            }
            other => ApiError::unavailable("the request could not be stored", other),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::malformed("path", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::malformed("query", e.body_text())
    }
}

/// A path parameter; one that does not parse is refused as [`ApiError`] (400, JSON).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(v) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// Query parameters; ones that do not parse are refused as [`ApiError`] (400, JSON).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// A small HTML page for people who followed a link: a title and one paragraph. `text` is
/// HTML; escape what comes from data.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub title: &'static str,
    pub text: String,
}

impl Page {
    pub fn new(status: StatusCode, title: &'static str, text: impl Into<String>) -> Page {
        Page {
            status,
            title,
            text: text.into(),
        }
    }

    /// 403: the link's token does not verify.
    pub fn bad_link() -> Page {
        Page::new(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "This link is damaged or was not made here.",
        )
    }

    /// 503, after logging the cause.
    pub fn unavailable(cause: impl std::fmt::Display) -> Page {
        tracing::error!(error = %cause, "a page could not be answered");
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "We could not answer right now. Please try again in a minute.",
        )
    }
}

impl From<StoreError> for Page {
    fn from(e: StoreError) -> Page {
        Page::unavailable(e)
    }
}

impl From<RuntimeError> for Page {
    fn from(e: RuntimeError) -> Page {
        Page::unavailable(e)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
             <body style=\"font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em\"><h1>{title}</h1><p>{text}</p></body></html>",
            title = self.title,
            text = self.text
        );
        (self.status, Html(body)).into_response()
    }
}

/// Text made safe to put into HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
