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
    let text = match read_text(path) {
        Ok(t) => t,
        Err(e) => {
            sink.error(Pos::START, e);
            return None;
        }
    };
    parse_text(display_path, &text, sink)
}

/// Reads a file that must be UTF-8 text of a sane size.
pub fn read_text(path: &Path) -> Result<String, String> {
    const MAX: u64 = 1024 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX {
        return Err(format!(
            "file is {} bytes; at most {MAX} are allowed",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if let Some(i) = bytes.iter().position(|b| *b == 0) {
        return Err(format!("not a text file (binary data at byte {i})"));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
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
