//! The starter projects written by `autofunnel init DIR [--example course|welcome]`: settings,
//! a funnel, its templates and consent text, all passing `check`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// (path inside the project, contents) of the welcome series; its first four (the settings,
/// `.gitignore` and the shared email layout, the repository's own) start every example.
pub const FILES: [(&str, &str); 9] = [
    ("autofunnel.toml", include_str!("scaffold/autofunnel.toml")),
    (".gitignore", include_str!("scaffold/gitignore")),
    (
        "templates/_layout.html",
        include_str!("../templates/_layout.html"),
    ),
    (
        "templates/_layout.txt",
        include_str!("../templates/_layout.txt"),
    ),
    (
        "legal/newsletter-v1.txt",
        include_str!("scaffold/legal/newsletter-v1.txt"),
    ),
    (
        "funnels/welcome.yaml",
        include_str!("scaffold/funnels/welcome.yaml"),
    ),
    (
        "templates/welcome/welcome.subject",
        include_str!("scaffold/templates/welcome/welcome.subject"),
    ),
    (
        "templates/welcome/welcome.html",
        include_str!("scaffold/templates/welcome/welcome.html"),
    ),
    (
        "templates/welcome/welcome.txt",
        include_str!("scaffold/templates/welcome/welcome.txt"),
    ),
];

/// Which starter project `init` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Example {
    /// The course seller's funnel: a free book (lead magnet, double opt-in) → a webinar for a
    /// symbolic price (tripwire) → the full course (main product) → upsells, with its emails
    /// and consent text — the repository's own `relationships-course`.
    #[default]
    Course,
    /// A welcome series: one form, a welcome email, a follow-up.
    Welcome,
}

/// The course example's files, as the repository has them (one copy: the example funnels
/// `check` and the tests run on).
static COURSE_TEMPLATES: include_dir::Dir<'_> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/templates/relationships-course");

/// (path inside the project, contents) of an example.
pub fn files(example: Example) -> Vec<(String, &'static str)> {
    let common = FILES[..4].iter().map(|(p, b)| (p.to_string(), *b));
    match example {
        Example::Welcome => FILES.iter().map(|(p, b)| (p.to_string(), *b)).collect(),
        Example::Course => {
            let mut out: Vec<(String, &'static str)> = common.collect();
            out.push((
                "funnels/relationships-course.yaml".into(),
                include_str!("../funnels/relationships-course.yaml"),
            ));
            out.push((
                "legal/free-book-v1.txt".into(),
                include_str!("../legal/free-book-v1.txt"),
            ));
            out.push((
                "templates/landing/free-book.html".into(),
                include_str!("../templates/landing/free-book.html"),
            ));
            for f in COURSE_TEMPLATES.files() {
                if let Some(body) = f.contents_utf8() {
                    let name = f.path().display();
                    out.push((format!("templates/relationships-course/{name}"), body));
                }
            }
            out.sort();
            out
        }
    }
}

/// Writes the starter project into `dir`, refusing to overwrite anything.
pub fn init(dir: &Path, example: Example) -> anyhow::Result<Vec<PathBuf>> {
    let files = files(example);
    let existing: Vec<String> = files
        .iter()
        .map(|(p, _)| dir.join(p))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!("not overwriting existing files: {}", existing.join(", "));
    }
    let mut written = Vec::new();
    for (rel, body) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
