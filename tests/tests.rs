//! The integration tests: one binary, one module per feature (ripgrep's layout).

mod admin;
mod bad_input;
mod browser;
mod check_corpus;
mod cli;
mod dashboard;
mod delivery;
mod engine;
mod events;
mod examples;
mod fuzz;
mod import;
mod openapi;
mod pages;
mod payments;
mod report;
mod roundtrip;
mod runtime;
mod server;
mod signup;
mod store;
mod tidy;
mod tracking;
mod util;
mod webhooks;
