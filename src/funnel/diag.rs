//! Diagnostics: a problem found in a project file, with file, line and column, printed the way
//! compilers print them (`funnels/x.yaml:14:9: unknown template "webinar-ofer" (did you mean …)`).

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: u32, col: u32) -> Pos {
        Pos {
            line: line.max(1),
            col: col.max(1),
        }
    }
}

/// How bad a diagnostic is: errors fail `check`, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file.display(),
            self.pos.line,
            self.pos.col
        )?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Collects the diagnostics of one file.
#[derive(Debug)]
pub struct Sink {
    file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: &Path) -> Sink {
        Sink {
            file: file.to_path_buf(),
            diagnostics: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, Severity::Error, message.into());
    }

    pub fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, Severity::Warning, message.into());
    }

    fn push(&mut self, pos: Pos, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            pos,
            severity,
            message,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// ` (did you mean "x"?)` when one of `candidates` is close to `wrong`, else an empty string.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .filter(|c| *c != wrong)
        .map(|c| {
            (
                strsim::damerau_levenshtein(&wrong.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, c)| (*d, c.to_string()));
    match best {
        Some((_, c)) => format!(" (did you mean \"{c}\"?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["webinar-offer", "webinar-reminder", "course-offer-a"];
        assert_eq!(
            did_you_mean("webinar-ofer", names),
            " (did you mean \"webinar-offer\"?)"
        );
        assert_eq!(did_you_mean("newsletter", names), "");
        assert_eq!(did_you_mean("webinar-offer", names), "");
    }

    #[test]
    fn prints_like_a_compiler() {
        let d = Diagnostic {
            file: PathBuf::from("funnels/x.yaml"),
            pos: Pos::new(14, 9),
            severity: Severity::Error,
            message: "unknown stage \"upsel\"".into(),
        };
        assert_eq!(
            d.to_string(),
            "funnels/x.yaml:14:9: unknown stage \"upsel\""
        );
    }
}
