//! Email templates: `templates/<funnel>/<name>.subject`, `.html` and `.txt`, rendered with tera.
//! Loading reports missing parts and syntax errors; rendering reports an undefined variable with
//! the template file, line and column, so `check` can point at it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::domain::TemplateName;
use crate::funnel::diag::{Diagnostic, Pos, Severity};

/// The three files of one email.
pub const PARTS: [(&str, &str); 3] = [
    ("subject", "subject"),
    ("html", "HTML part"),
    ("txt", "text part"),
];

/// The email templates of one funnel folder, parsed.
pub struct TemplateSet {
    dir: PathBuf,
    tera: tera::Tera,
    /// Every template name with the parts found for it.
    found: BTreeMap<String, Vec<&'static str>>,
    sources: BTreeMap<String, (PathBuf, String)>,
    /// Every part found on disk, parsed or not, by template name.
    on_disk: BTreeMap<String, Vec<&'static str>>,
}

/// One email rendered for one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl TemplateSet {
    /// Reads every template in `dir`; problems come back as diagnostics, and templates with
    /// problems are left out of the set. A missing folder is an empty set.
    pub fn load(dir: &Path) -> (TemplateSet, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut set = TemplateSet {
            dir: dir.to_path_buf(),
            tera: tera::Tera::default(),
            found: BTreeMap::new(),
            sources: BTreeMap::new(),
            on_disk: Default::default(),
        };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect(),
            Err(_) => return (set, diags),
        };
        files.sort();
        for path in files {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let Some((name, ext)) = file_name.rsplit_once('.') else {
                continue;
            };
            let Some(part) = PARTS.iter().map(|(e, _)| *e).find(|e| *e == ext) else {
                continue;
            };
            if let Err(e) = TemplateName::parse(name) {
                diags.push(diag(
                    &path,
                    Pos::START,
                    format!("bad template file name: {e}"),
                ));
                continue;
            }
            set.on_disk.entry(name.to_string()).or_default().push(part);
            let source = match read_text(&path) {
                Ok(s) => s,
                Err(e) => {
                    diags.push(diag(&path, Pos::START, e));
                    continue;
                }
            };
            let key = format!("{name}.{ext}");
            // tera escapes HTML in templates whose name ends in .html, and nothing else.
            if let Err(e) = set.tera.add_raw_template(&key, &source) {
                let (pos, msg) = parse_error(&e);
                diags.push(diag(&path, pos, format!("template syntax error: {msg}")));
                continue;
            }
            set.sources.insert(key, (path.clone(), source));
            set.found.entry(name.to_string()).or_default().push(part);
        }
        for (name, parts) in &set.on_disk {
            for (ext, what) in PARTS.iter().filter(|(e, _)| !parts.contains(e)) {
                diags.push(diag(
                    &dir.join(format!("{name}.{}", parts[0])),
                    Pos::START,
                    format!(
                        "template \"{name}\" has no {what}: add {}",
                        dir.join(format!("{name}.{ext}")).display()
                    ),
                ));
            }
        }
        // Usable: all parts present and parsed (a part that failed was reported where it failed).
        set.found.retain(|_, parsed| parsed.len() == PARTS.len());
        (set, diags)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of every template with at least one file, complete or not; problems with the
    /// incomplete ones are reported at their files.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        self.on_disk.keys().map(String::as_str)
    }

    /// Names of the complete templates.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.found.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }

    /// Renders all three parts; the first failing part is reported with its place.
    pub fn render(&self, name: &str, context: &tera::Context) -> Result<Rendered, Diagnostic> {
        let part = |ext: &str| -> Result<String, Diagnostic> {
            let key = format!("{name}.{ext}");
            let (path, source) = self.sources.get(&key).ok_or_else(|| {
                diag(
                    &self.dir.join(&key),
                    Pos::START,
                    format!("template \"{name}\" does not exist"),
                )
            })?;
            self.tera.render(&key, context).map_err(|e| {
                let (pos, msg) = render_error(&e, source);
                diag(path, pos, msg)
            })
        };
        Ok(Rendered {
            subject: part("subject")?.trim().to_string(),
            html: part("html")?,
            text: part("txt")?,
        })
    }
}

fn diag(path: &Path, pos: Pos, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        pos,
        severity: Severity::Error,
        message,
    }
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

/// All messages of an error and its sources, innermost last.
fn chain(e: &tera::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

/// tera prints parse errors with a ` --> line:col` marker and a caret picture.
fn parse_error(e: &tera::Error) -> (Pos, String) {
    let all = chain(e).join("\n");
    let pos = all
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .and_then(|lc| lc.split_once(':'))
        .and_then(|(l, c)| Some(Pos::new(l.trim().parse().ok()?, c.trim().parse().ok()?)))
        .unwrap_or(Pos::START);
    let msg = all
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("= "))
        .map(|l| l.trim_start_matches("= ").to_string())
        .next()
        .unwrap_or_else(|| all.lines().next().unwrap_or("invalid template").to_string());
    (pos, msg)
}

/// Finds where the failing variable is used, since tera does not say.
fn render_error(e: &tera::Error, source: &str) -> (Pos, String) {
    let msgs = chain(e);
    let inner = msgs.last().cloned().unwrap_or_default();
    if let Some(var) = inner
        .split('`')
        .nth(1)
        .filter(|_| inner.starts_with("Variable `"))
    {
        let pos = find_in_tags(source, var).unwrap_or(Pos::START);
        return (pos, format!("undefined variable `{var}`"));
    }
    let first = inner
        .split(" while rendering")
        .next()
        .unwrap_or(&inner)
        .to_string();
    (Pos::START, first)
}

/// The first place `needle` appears inside a `{{ }}` or `{% %}` tag.
fn find_in_tags(source: &str, needle: &str) -> Option<Pos> {
    let mut offset = 0;
    while let Some(open) = source[offset..].find(['{']).map(|i| offset + i) {
        let rest = &source[open..];
        let close = if rest.starts_with("{{") {
            rest.find("}}")
        } else if rest.starts_with("{%") {
            rest.find("%}")
        } else {
            None
        };
        if let Some(close) = close {
            let tag = &rest[..close];
            if let Some(i) = find_word(tag, needle) {
                let at = open + i;
                let before = &source[..at];
                let line = before.matches('\n').count() as u32 + 1;
                let col = before.rsplit('\n').next().unwrap_or("").chars().count() as u32 + 1;
                return Some(Pos::new(line, col));
            }
            offset = open + close;
        } else {
            offset = open + 1;
        }
    }
    None
}

/// `needle` as a whole name (not part of a longer one like `lead.first_name_x`).
fn find_word(hay: &str, needle: &str) -> Option<usize> {
    let is_name = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    hay.match_indices(needle).map(|(i, _)| i).find(|&i| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_variables_in_tags_only() {
        let src = "Hello lead.name\n<p>{{ lead.first_name }} {{ lead.name }}</p>";
        assert_eq!(find_in_tags(src, "lead.name"), Some(Pos::new(2, 29)));
        assert_eq!(find_in_tags(src, "lead.first"), None);
    }
}
