//! autofunnel: a self-hosted marketing-automation engine. Funnels are YAML files in
//! `funnels/`, emails are tera templates in `templates/`, leads and their state live in SQLite
//! or PostgreSQL.
//!
//! Layout, from the bottom up (ARCHITECTURE.md has the code map and the invariants; the
//! `tidy` test keeps the boundaries):
//! - [`domain`]: newtypes and plain values everything else passes around.
//! - [`funnel`], [`templates`], [`project`]: the funnel language and email templates, read and
//!   checked as a whole project; [`settings`], the one `Settings` struct.
//! - [`engine`]: the pure state machine of one enrollment, and its simulation ([`simulate`],
//!   [`plan`] print what it would do).
//! - [`runtime`]: durable enrollments between the engine and the store: lead facts from rows,
//!   effects into rows, the scheduler loop, signups by group commit.
//! - [`report`]: funnel analytics, pure functions of the store's rows and a period;
//!   [`tally`], the report counters the store keeps with the facts they count.
//! - [`store`]: the database, and the only code that touches it.
//! - [`delivery`]: the sender that drains the outbox over SMTP or into `.eml` files;
//!   [`tokens`], the signed tokens in the links of emails.
//! - [`server`]: the HTTP side of `autofunnel run`; [`metrics`], what `/metrics` shows;
//!   [`dashboard`], the pages the server shows a signed-in marketer, made from the reports.
//! - [`cli`]: the command line; `main.rs` only sets the [`allocator`] and calls [`cli::main`]. [`scaffold`]: the
//!   starter project written by `autofunnel init`.

pub mod allocator;
pub mod cli;
pub mod context;
pub mod dashboard;
pub mod delivery;
pub mod domain;
pub mod engine;
pub mod funnel;
pub mod leads_csv;
pub mod locale;
pub mod metrics;
pub mod outbound;
pub mod payments;
pub mod plan;
pub mod project;
pub mod report;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod settings;
pub mod simulate;
pub mod store;
pub mod tally;
pub mod templates;
pub mod tokens;
pub mod transfer;
