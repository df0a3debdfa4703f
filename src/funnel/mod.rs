//! The funnel language: YAML files in `funnels/` read into typed, checked [`Funnel`]s.
//!
//! `yaml` reads the located tree, `parse` lowers it to the `model`, `validate` checks the
//! references between its parts; `time` holds durations, cron and time zones; `diag` the
//! compiler-style diagnostics. Nothing here does IO except [`load_file`].

pub mod diag;
pub mod model;
pub mod parse;
pub mod print;
pub mod time;
pub mod validate;
pub mod yaml;

use std::path::Path;

pub use diag::{Diagnostic, Pos, Severity, Sink};
pub use model::*;

/// Reads, parses and lowers one funnel file; cross-checks are left to the caller (they need
/// the templates and the other funnels). `None` when the file cannot be understood at all.
pub fn load_file(display_path: &Path, path: &Path, sink: &mut Sink) -> Option<Funnel> {
    let text = match crate::templates::read_text(path) {
        Ok(t) => t,
        Err(e) => {
            sink.error(Pos::START, e);
            return None;
        }
    };
    parse_text(display_path, &text, sink)
}

/// Parses funnel source text as if it came from `file`.
pub fn parse_text(file: &Path, text: &str, sink: &mut Sink) -> Option<Funnel> {
    match yaml::parse(text) {
        Ok(root) => parse::parse_funnel(file, &root, sink),
        Err(e) => {
            sink.error(e.pos, e.message);
            None
        }
    }
}
