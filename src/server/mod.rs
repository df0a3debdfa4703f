//! The HTTP side of `autofunnel run` (axum). `serve(listener, state, shutdown)` takes a bound
//! listener so tests start it on port 0. One file per concern:
//!
//! - [`signup`]: `POST /f/{form}`, landing-page signups.
//! - [`events`]: `POST /api/v1/events`, tracked events from other systems.
//! - [`hooks`]: signed webhooks: delivery reports and purchases.
//! - [`links`]: tracked clicks and the open pixel.
//! - [`pages`]: the unsubscribe and double opt-in pages.
//! - [`admin`]: the admin API.
//! - [`health`]: `/healthz`, `/metrics`, `/openapi.*`.
//! - [`error`], [`input`] and [`auth`]: the refusals every handler answers with, the checks
//!   every text passes at the edge, bearer tokens and signatures.
//!
//! Handlers change nothing themselves: every write goes through the [`Runtime`], reads
//! through its store.

pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod health;
pub mod hooks;
pub mod input;
pub mod links;
pub mod pages;
pub mod signup;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::runtime::Runtime;

pub use health::OPENAPI_YAML;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine: every write goes through it; reads through its store.
    pub runtime: Arc<Runtime>,
    /// Key that signs webhooks from other systems (`hooks_secret`); unset, they answer 404.
    pub hooks_secret: Option<Arc<[u8]>>,
    /// Key that signs the links in emails (`secret`).
    pub secret: Arc<[u8]>,
    /// Counters shown by `/metrics`, shared with the sender.
    pub metrics: Arc<Metrics>,
    /// Bearer token of the admin API (`admin_token`); unset, it answers 404.
    pub admin_token: Option<Arc<str>>,
    /// Bearer token of the API (`api_token`); unset, the API answers 404.
    pub api_token: Option<Arc<str>>,
    /// Signups per IP address (`signups_per_ip_per_minute`); `None`, no limit.
    pub signup_limit: Option<Arc<signup::Limiter>>,
}

impl AppState {
    /// The state of a server over `runtime` with every token, secret and limit off but the
    /// link secret; set what is needed with struct update syntax.
    pub fn new(runtime: Arc<Runtime>, secret: &[u8]) -> AppState {
        AppState {
            runtime,
            hooks_secret: None,
            secret: Arc::from(secret),
            metrics: Arc::default(),
            admin_token: None,
            api_token: None,
            signup_limit: None,
        }
    }
}

/// Largest API body: a batch of 1,000 events.
const API_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Largest signup body: a form is a few fields.
const SIGNUP_BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi_json))
        .route("/openapi.yaml", get(health::openapi_yaml))
        .route("/hooks/delivery", post(hooks::delivery_report))
        .route("/hooks/purchase", post(hooks::purchase))
        .route("/api/v1/leads", get(admin::find))
        .route(
            "/api/v1/leads/{id}",
            get(admin::export).delete(admin::erase),
        )
        .route("/api/v1/leads/{id}/tags", post(admin::tag))
        .route("/api/v1/leads/{id}/tags/{tag}", delete(admin::untag))
        .route("/api/v1/leads/{id}/enroll", post(admin::enroll))
        .route("/api/v1/leads/{id}/remove", post(admin::remove))
        .route("/api/v1/funnels", get(admin::funnels))
        .route(
            "/api/v1/events",
            post(events::api_events).layer(DefaultBodyLimit::max(API_BODY_LIMIT)),
        )
        .route(
            "/f/{form}",
            post(signup::signup)
                .options(signup::preflight)
                .layer(DefaultBodyLimit::max(SIGNUP_BODY_LIMIT)),
        )
        .route("/r/{token}", get(links::click))
        .route("/o/{token}", get(links::open))
        .route(
            "/u/{token}",
            get(pages::unsubscribe_page).post(pages::unsubscribe),
        )
        .route("/c/{token}", get(pages::confirm_page).post(pages::confirm))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
