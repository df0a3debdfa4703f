//! Email templates: `templates/<funnel>/<name>.subject`, `.html` (or `.mjml`) and an optional
//! `.txt`, rendered with tera; files whose name starts with `_` are layouts and partials, in the
//! funnel's folder or shared in `templates/` itself. Rendering turns MJML into HTML, inlines CSS
//! for mail clients and derives the text part from the HTML when there is no `.txt`. Loading
//! reports missing parts and syntax errors; rendering reports an undefined variable with the
//! template file, line and column, so `check` can point at it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::domain::TemplateName;
use crate::funnel::diag::{Diagnostic, Pos, Severity};
use crate::funnel::read_text;

/// The files of one email: extension, what it is called in messages.
pub const PARTS: [(&str, &str); 4] = [
    ("subject", "subject"),
    ("html", "HTML part"),
    ("mjml", "MJML part"),
    ("txt", "text part"),
];

/// Width of text parts derived from HTML.
const TEXT_WIDTH: usize = 78;

/// The email templates of one funnel folder, parsed.
pub struct TemplateSet {
    dir: PathBuf,
    tera: tera::Tera,
    /// Every usable template name with the parts found for it.
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

/// A file of the folder: (path, name without extension, extension).
fn files_of(dir: &Path) -> Vec<(PathBuf, String, &'static str)> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let file_name = path.file_name()?.to_str()?.to_string();
            let (name, ext) = file_name.rsplit_once('.')?;
            let part = PARTS.iter().map(|(e, _)| *e).find(|e| *e == ext)?;
            Some((path.clone(), name.to_string(), part))
        })
        .collect()
}

impl TemplateSet {
    /// Reads every template in `dir`, and the shared layouts beside it; problems come back as
    /// diagnostics, and templates with problems are left out of the set. A missing folder is an
    /// empty set.
    pub fn load(dir: &Path) -> (TemplateSet, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![".html", ".mjml"]);
        let mut set = TemplateSet {
            dir: dir.to_path_buf(),
            tera,
            found: BTreeMap::new(),
            sources: BTreeMap::new(),
            on_disk: Default::default(),
        };
        if !dir.is_dir() {
            return (set, diags);
        }
        // Layouts: shared ones first, so the funnel's own of the same name win.
        let mut layouts: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
        let shared = dir.parent().map(files_of).unwrap_or_default();
        for (path, name, ext) in shared.into_iter().chain(files_of(dir)) {
            if name.starts_with('_') {
                match read_text(&path) {
                    Ok(source) => {
                        layouts.insert(format!("{name}.{ext}"), (path, source));
                    }
                    Err(e) => diags.push(diag(&path, Pos::START, e)),
                }
            }
        }
        set.add_layouts(layouts, &mut diags);
        for (path, name, part) in files_of(dir) {
            if name.starts_with('_') {
                continue;
            }
            if let Err(e) = TemplateName::parse(&name) {
                diags.push(diag(
                    &path,
                    Pos::START,
                    format!("bad template file name: {e}"),
                ));
                continue;
            }
            set.on_disk.entry(name.clone()).or_default().push(part);
            let source = match read_text(&path) {
                Ok(s) => s,
                Err(e) => {
                    diags.push(diag(&path, Pos::START, e));
                    continue;
                }
            };
            let key = format!("{name}.{part}");
            if let Err(msg) = set.add(&key, &path, source) {
                diags.push(msg);
                continue;
            }
            set.found.entry(name).or_default().push(part);
        }
        for (name, parts) in &set.on_disk {
            let file = |ext: &str| dir.join(format!("{name}.{ext}"));
            let at = file(parts[0]);
            if !parts.contains(&"subject") {
                diags.push(diag(
                    &at,
                    Pos::START,
                    format!(
                        "template \"{name}\" has no subject: add {}",
                        file("subject").display()
                    ),
                ));
            }
            match (parts.contains(&"html"), parts.contains(&"mjml")) {
                (false, false) => diags.push(diag(
                    &at,
                    Pos::START,
                    format!(
                        "template \"{name}\" has no HTML part: add {} (or {})",
                        file("html").display(),
                        file("mjml").display()
                    ),
                )),
                (true, true) => diags.push(diag(
                    &file("mjml"),
                    Pos::START,
                    format!(
                        "template \"{name}\" has both an HTML and an MJML part: keep one of {} and {}",
                        file("html").display(),
                        file("mjml").display()
                    ),
                )),
                _ => {}
            }
        }
        // Usable: a subject and one body, all parsed (a part that failed was reported where it
        // failed, a missing one above).
        let on_disk = &set.on_disk;
        set.found.retain(|name, parsed| {
            let all = &on_disk[name];
            parsed.len() == all.len()
                && parsed.contains(&"subject")
                && (parsed.contains(&"html") != parsed.contains(&"mjml"))
        });
        (set, diags)
    }

    /// Adds layouts parents first; one whose parent is missing or broken is reported.
    fn add_layouts(
        &mut self,
        mut pending: BTreeMap<String, (PathBuf, String)>,
        diags: &mut Vec<Diagnostic>,
    ) {
        loop {
            let ready: Vec<String> = pending
                .iter()
                .filter(|(key, (_, source))| {
                    match tera::Template::new(key, None, source).map(|t| t.parent) {
                        Ok(Some(parent)) => !pending.contains_key(&parent),
                        _ => true,
                    }
                })
                .map(|(k, _)| k.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            for key in ready {
                let (path, source) = pending.remove(&key).expect("listed");
                if let Err(d) = self.add(&key, &path, source) {
                    diags.push(d);
                }
            }
        }
        for (key, (path, _)) in pending {
            diags.push(diag(
                &path,
                Pos::START,
                format!("layout \"{key}\" extends itself through its parents"),
            ));
        }
    }

    /// Parses one file into tera, refusing it (and leaving tera as it was) when it does not
    /// parse or extends a layout that is not loaded.
    fn add(&mut self, key: &str, path: &Path, source: String) -> Result<(), Diagnostic> {
        let parsed = tera::Template::new(key, None, &source).map_err(|e| {
            let (pos, msg) = parse_error(&e);
            diag(path, pos, format!("template syntax error: {msg}"))
        })?;
        if let Some(parent) = parsed.parent.as_deref()
            && !self.sources.contains_key(parent)
        {
            let pos = source
                .find(parent)
                .map(|i| pos_of(&source, i))
                .unwrap_or(Pos::START);
            return Err(diag(
                path,
                pos,
                format!(
                    "extends \"{parent}\", which is not a layout here: put {parent} in {} or in {}",
                    self.dir.display(),
                    self.dir.parent().unwrap_or(&self.dir).display()
                ),
            ));
        }
        // Cannot fail now: it parsed and its parent is loaded.
        self.tera.add_raw_template(key, &source).map_err(|e| {
            let (pos, msg) = parse_error(&e);
            diag(path, pos, format!("template error: {msg}"))
        })?;
        self.sources
            .insert(key.to_string(), (path.to_path_buf(), source));
        Ok(())
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

    /// The hosts of every literal http(s) link in these templates (and their layouts),
    /// lowercase: the hosts the seller wrote links to, which emails may always lead to.
    pub fn link_hosts(&self) -> BTreeSet<String> {
        static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"(?i)https?://[a-z0-9.\-]+(?::[0-9]+)?").expect("regex")
        });
        self.sources
            .values()
            .flat_map(|(_, src)| URL.find_iter(src).map(|m| m.as_str().to_string()))
            .filter_map(|u| {
                url::Url::parse(&u)
                    .ok()?
                    .host_str()
                    .map(str::to_ascii_lowercase)
            })
            .collect()
    }

    /// Warnings for links whose address a template takes from a lead's data
    /// (`href="{{ lead.cart_url }}"`): such a link stays in an email only when its host is an
    /// allowed one (`link_hosts`).
    pub fn data_links(&self) -> Vec<Diagnostic> {
        static HREF: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r#"(?i)href\s*=\s*["']?\s*(?:https?://)?\{\{-?\s*lead\."#)
                .expect("regex")
        });
        let mut out = Vec::new();
        for (path, src) in self.sources.values() {
            for m in HREF.find_iter(src) {
                out.push(Diagnostic {
                    file: path.clone(),
                    pos: pos_of(src, m.start()),
                    severity: Severity::Warning,
                    message: "this link's address comes from the lead's data: it is kept in an \
                              email only if its host is linked literally in a template or listed \
                              in `link_hosts` (settings), else it is taken out; set `link_hosts`"
                        .into(),
                });
            }
        }
        out
    }

    /// Warnings for a lead field printed without a fallback (`{{ lead.first_name }}`): a lead
    /// who never gave it gets nothing there ("Hi  from …"). A field printed with
    /// `default(value=…)`, one the template tests (`{% if lead.first_name %}`), and the address
    /// (always there) are fine.
    pub fn unguarded_fields(&self) -> Vec<Diagnostic> {
        static PRINTED: std::sync::LazyLock<regex::Regex> =
            std::sync::LazyLock::new(|| regex::Regex::new(r"\{\{-?([^}]*)-?\}\}").expect("regex"));
        static FIELD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"\blead\.([A-Za-z_][A-Za-z0-9_]*)").expect("regex")
        });
        let mut out = Vec::new();
        for (path, src) in self.sources.values() {
            for p in PRINTED.captures_iter(src) {
                let (whole, inner) = (p.get(0).expect("match"), &p[1]);
                if inner.contains("default(") {
                    continue;
                }
                for f in FIELD.captures_iter(inner) {
                    let name = &f[1];
                    let tested = format!("if lead.{name}");
                    if matches!(name, "email" | "id") || src.contains(&tested) {
                        continue;
                    }
                    out.push(Diagnostic {
                        file: path.clone(),
                        pos: pos_of(src, whole.start()),
                        severity: Severity::Warning,
                        message: format!(
                            "`lead.{name}` has no fallback: a lead without it gets nothing here; \
                             write `{{{{ lead.{name} | default(value=\"…\") }}}}` or test it with \
                             `{{% if lead.{name} %}}`"
                        ),
                    });
                }
            }
        }
        out
    }

    pub fn contains(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }

    /// Renders the subject, the HTML (from MJML if that is the body, else with its `<style>`
    /// rules inlined) and the text (derived from the HTML when there is no `.txt`); the first
    /// failing part is reported with its place.
    pub fn render(&self, name: &str, context: &tera::Context) -> Result<Rendered, Diagnostic> {
        let parts = self.found.get(name).ok_or_else(|| {
            diag(
                &self.dir.join(name),
                Pos::START,
                format!("template \"{name}\" does not exist"),
            )
        })?;
        let part = |ext: &str| -> Result<String, Diagnostic> {
            let key = format!("{name}.{ext}");
            let (path, source) = &self.sources[&key];
            self.tera.render(&key, context).map_err(|e| {
                let (pos, msg) = render_error(&e, source);
                diag(path, pos, msg)
            })
        };
        let at = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        // MJML places its own styles; HTML written by hand gets its `<style>` rules inlined.
        let html = if parts.contains(&"mjml") {
            mjml_to_html(&part("mjml")?).map_err(|e| diag(&at("mjml"), Pos::START, e))?
        } else {
            let html = part("html")?;
            if html.contains("<style") || html.contains("<STYLE") {
                inline_css(&html).map_err(|e| diag(&at("html"), Pos::START, e))?
            } else {
                html
            }
        };
        let text = if parts.contains(&"txt") {
            part("txt")?
        } else {
            text_of(&html)
        };
        Ok(Rendered {
            subject: part("subject")?.trim().to_string(),
            html,
            text,
        })
    }
}

/// HTML from MJML markup.
fn mjml_to_html(source: &str) -> Result<String, String> {
    let parsed = mrml::parse(source).map_err(|e| format!("MJML: {e}"))?;
    parsed
        .element
        .render(&mrml::prelude::render::RenderOptions::default())
        .map_err(|e| format!("MJML: {e}"))
}

/// `<style>` rules moved into `style` attributes, as mail clients that drop `<head>` need;
/// media queries stay in a `<style>` for the clients that read them.
fn inline_css(html: &str) -> Result<String, String> {
    css_inline::CSSInliner::options()
        .load_remote_stylesheets(false)
        .keep_at_rules(true)
        .build()
        .inline(html)
        .map_err(|e| format!("cannot inline CSS: {e}"))
}

/// A plain-text rendering of an HTML part: paragraphs, lists and links kept (as numbered
/// references).
pub fn text_of(html: &str) -> String {
    html2text::from_read(html.as_bytes(), TEXT_WIDTH).unwrap_or_default()
}

fn pos_of(source: &str, at: usize) -> Pos {
    let before = &source[..at];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() as u32 + 1;
    Pos::new(line, col)
}

fn diag(path: &Path, pos: Pos, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        pos,
        severity: Severity::Error,
        message,
    }
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
                return Some(pos_of(source, at));
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
    fn mjml_bodies_render_to_html_with_a_derived_text_part() {
        let dir = tempfile::tempdir().unwrap();
        let funnel = dir.path().join("promo");
        std::fs::create_dir(&funnel).unwrap();
        std::fs::write(funnel.join("hi.subject"), "Hi {{ name }}").unwrap();
        std::fs::write(
            funnel.join("hi.mjml"),
            "<mjml><mj-body><mj-section><mj-column><mj-text>Hello {{ name }}</mj-text>\
             <mj-button href=\"https://example.com/go\">Go</mj-button></mj-column></mj-section></mj-body></mjml>",
        )
        .unwrap();
        let (set, diags) = TemplateSet::load(&funnel);
        assert!(diags.is_empty(), "{diags:?}");
        let mut cx = tera::Context::new();
        cx.insert("name", "<Ann>");
        let r = set.render("hi", &cx).unwrap();
        assert_eq!(r.subject, "Hi <Ann>");
        assert!(r.html.starts_with("<!doctype html>"), "{}", r.html);
        assert!(r.html.contains("Hello &lt;Ann&gt;"), "{}", r.html);
        assert!(r.html.contains("href=\"https://example.com/go\""));
        assert!(r.text.contains("Hello <Ann>"), "{}", r.text);
        assert!(r.text.contains("https://example.com/go"), "{}", r.text);
    }

    #[test]
    fn literal_link_hosts_and_links_from_lead_data() {
        let dir = tempfile::tempdir().unwrap();
        let funnel = dir.path().join("cart");
        std::fs::create_dir(&funnel).unwrap();
        std::fs::write(funnel.join("nudge.subject"), "Your cart").unwrap();
        std::fs::write(
            funnel.join("nudge.html"),
            "<p><a href=\"https://Shop.Example.com/help\">Help</a> \
             <a href=\"{{ lead.cart_url }}\">Cart</a> <a href=\"{{ unsubscribe_url }}\">Stop</a> \
             <a href='https://{{ lead.domain }}/x'>Yours</a> https://blog.example.org:8080/p</p>",
        )
        .unwrap();
        let (set, diags) = TemplateSet::load(&funnel);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            set.link_hosts(),
            ["blog.example.org", "shop.example.com"]
                .map(String::from)
                .into()
        );
        let warned: Vec<String> = set.data_links().iter().map(|d| d.to_string()).collect();
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(
            warned[0].contains(
                "nudge.html:1:56: warning: this link's address comes from the lead's data"
            ),
            "{warned:?}"
        );
    }

    #[test]
    fn finds_variables_in_tags_only() {
        let src = "Hello lead.name\n<p>{{ lead.first_name }} {{ lead.name }}</p>";
        assert_eq!(find_in_tags(src, "lead.name"), Some(Pos::new(2, 29)));
        assert_eq!(find_in_tags(src, "lead.first"), None);
    }
}
