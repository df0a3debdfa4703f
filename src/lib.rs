//! autofunnel: a self-hosted marketing-automation engine. Funnels are YAML files in
//! `funnels/`, emails are tera templates in `templates/`, leads and their state live in SQLite
//! or PostgreSQL.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! - [`domain`]: newtypes for the values everything else passes around.
//! - [`funnel`]: the funnel language — located YAML, typed model, diagnostics, validation.
//! - [`templates`]: loading and rendering email templates.
//! - [`project`]: a project folder checked as a whole (what `check` and `run` load).
//! - [`settings`]: the one `Settings` struct, from file and environment.
//! - [`store`]: the database, and the only code that touches it.
//! - [`server`]: the HTTP side of `autofunnel run`.
//! - [`metrics`]: counters and gauges for `GET /metrics`.
//! - [`cli`]: the command line; `main.rs` only calls [`cli::main`].
//! - [`scaffold`]: the starter project written by `autofunnel init`.
//! - [`engine`]: the pure state machine of one enrollment, and its simulation.
//! - [`simulate`]: `autofunnel simulate`, the timeline of a virtual lead.
//! - [`delivery`]: the sender that drains the outbox over SMTP or into `.eml` files.
//! - [`tokens`]: the signed tokens in the links of emails.

pub mod cli;
pub mod delivery;
pub mod domain;
pub mod engine;
pub mod funnel;
pub mod metrics;
pub mod plan;
pub mod project;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod settings;
pub mod simulate;
pub mod store;
pub mod templates;
pub mod tokens;
