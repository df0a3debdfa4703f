//! The HTTP side of `autofunnel run` (axum). `serve(listener, state, shutdown)` takes a bound
//! listener so tests start it on port 0. One file per concern:
//!
//! - [`signup`]: `POST /f/{form}`, landing-page signups.
//! - [`events`]: `POST /api/v1/events`, tracked events from other systems.
//! - [`hooks`]: signed webhooks: delivery reports and purchases.
//! - [`pay`]: payment providers' notifications.
//! - [`links`]: tracked clicks and the open pixel.
//! - [`pages`]: the unsubscribe and double opt-in pages.
//! - [`admin`]: the admin API; [`reports`]: funnel reports for it.
//! - [`dashboard`]: the dashboard's sign-in, session and pages.
//! - [`health`]: `/healthz`, `/metrics`, `/openapi.*`.
//! - [`error`], [`input`] and [`auth`]: the refusals every handler answers with, the checks
//!   every text passes at the edge, bearer tokens and signatures.
//!
//! Handlers change nothing themselves: every write goes through the [`Runtime`], reads
//! through its store.

pub mod admin;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod health;
pub mod hooks;
pub mod input;
pub mod links;
pub mod pages;
pub mod pay;
pub mod reports;
pub mod signup;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::Request;
use axum::routing::{delete, get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower_http::timeout::RequestBodyTimeoutLayer;

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
    /// The zone reports count days in unless a request names one (`report_timezone`).
    pub report_zone: chrono_tz::Tz,
    /// The payment provider accounts (`[payments.*]`).
    pub payments: Arc<pay::Payments>,
    /// Reverse proxies (`trusted_proxies`) whose forwarding headers name the visitor: for the
    /// consent records' addresses and a payment provider's sender.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The folder emails are written to when no SMTP is set (`outbox_dir`): an erased lead's
    /// files are deleted from it.
    pub outbox_dir: Option<Arc<std::path::Path>>,
    /// The dashboard's language (`ui_language`); `None`, the browser's.
    pub ui_language: Option<crate::locale::Language>,
    /// The server is reached over https (`base_url`): the dashboard's cookies are `Secure`.
    pub https: bool,
    /// Dashboard sessions signed out before they expire (`session::id` → expiry), so a copied
    /// cookie stops working at sign-out; kept in the database too
    /// ([`AppState::remembering_sign_outs`] reads them at start).
    pub signed_out: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
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
            report_zone: chrono_tz::UTC,
            payments: pay::Payments::new(Default::default()),
            trusted_proxies: Arc::from(Vec::new()),
            outbox_dir: None,
            ui_language: None,
            https: false,
            signed_out: Arc::default(),
        }
    }

    /// The same state with the dashboard sessions signed out before (by this process or
    /// another one) refused.
    pub async fn remembering_sign_outs(self) -> Result<AppState, crate::store::StoreError> {
        let kept = self.runtime.store().signed_out_sessions().await?;
        self.signed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(kept);
        Ok(self)
    }
}

/// Largest API body: a batch of 1,000 events.
const API_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Largest signup body: a form is a few fields.
const SIGNUP_BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/dashboard", get(dashboard::overview))
        .route(
            "/dashboard/login",
            get(dashboard::login_form).post(dashboard::login),
        )
        .route("/dashboard/logout", post(dashboard::logout))
        .route("/dashboard/funnels/{id}", get(dashboard::funnel))
        .route("/dashboard/funnels/{id}/map", get(dashboard::map))
        .route("/dashboard/funnels/{id}/cohorts", get(dashboard::cohorts))
        .route("/dashboard/funnels/{id}/slices", get(dashboard::slices))
        .route("/dashboard/funnels/{id}/whatif", get(dashboard::whatif))
        .route(
            "/dashboard/funnels/{id}/attribution",
            get(dashboard::attribution),
        )
        .route("/dashboard/leads", get(dashboard::leads))
        .route("/dashboard/leads/{id}", get(dashboard::lead))
        .route(
            "/dashboard/leads/{id}/erase",
            get(dashboard::erase_form).post(dashboard::erase),
        )
        .route(
            "/dashboard/leads/{id}/{action}",
            post(dashboard::lead_action),
        )
        .route(
            "/dashboard/funnels/{id}/{file}",
            get(dashboard::funnel_download),
        )
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi_json))
        .route("/openapi.yaml", get(health::openapi_yaml))
        .route("/hooks/delivery", post(hooks::delivery_report))
        .route("/hooks/purchase", post(hooks::purchase))
        .route("/hooks/pay/{name}", post(pay::notification))
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
        .route("/api/v1/webhooks/failed", get(admin::failed_webhooks))
        .route(
            "/api/v1/webhooks/failed/{id}/retry",
            post(admin::retry_webhook),
        )
        .route("/api/v1/reports/funnels/{id}", get(reports::funnel))
        .route("/api/v1/reports/funnels/{id}/emails", get(reports::emails))
        .route("/api/v1/reports/funnels/{id}/ab", get(reports::ab))
        .route(
            "/api/v1/reports/funnels/{id}/attribution",
            get(reports::attribution),
        )
        .route(
            "/api/v1/reports/funnels/{id}/forecast",
            get(reports::forecast),
        )
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
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: no content sniffing, no referrer leaving the server, and no
/// page of ours inside someone else's frame (the unsubscribe and confirm buttons cannot be
/// clickjacked); HTML pages run no script and post only to this server.
async fn security_headers(mut r: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    r
}

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// A request's head must arrive within this long — the first request's, and each next one's
/// on a kept-alive connection, which is therefore closed after this long idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive within this long.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// At a stop, requests in flight get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` completes, then finishes the requests in flight. Each connection
/// is HTTP/1.1 with the timeouts above; past [`MAX_CONNECTIONS`] new ones are closed at once,
/// so slow or idle clients cannot hold the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Each connection holds a receiver; the stop is a send, and the drain is done when the
    // last receiver is gone.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "over {MAX_CONNECTIONS} connections; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopped anyway");
    }
    Ok(())
}
