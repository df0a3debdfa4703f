//! The starter project written by `autofunnel init DIR`: settings, one funnel and its
//! templates, all passing `check`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// (path inside the project, contents).
pub const FILES: [(&str, &str); 7] = [
    ("autofunnel.toml", include_str!("scaffold/autofunnel.toml")),
    (".gitignore", include_str!("scaffold/gitignore")),
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

/// Writes the starter project into `dir`, refusing to overwrite anything.
pub fn init(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let existing: Vec<String> = FILES
        .iter()
        .map(|(p, _)| dir.join(p))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!("not overwriting existing files: {}", existing.join(", "));
    }
    let mut written = Vec::new();
    for (rel, body) in FILES {
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
