//! Settings: one struct, layered from defaults, `autofunnel.toml` and `AUTOFUNNEL_*`
//! environment variables, and passed explicitly to whatever needs it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The name of the settings file looked for in the project folder.
pub const FILE_NAME: &str = "autofunnel.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `sqlite://autofunnel.db?mode=rwc` or `postgres://user@host/db`.
    pub database_url: String,
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Public address of the server, used in links inside emails.
    pub base_url: String,
    pub funnels_dir: PathBuf,
    pub templates_dir: PathBuf,
    /// Where the embedded default transport writes `.eml` files when no SMTP is configured.
    pub outbox_dir: PathBuf,
    /// Sender for funnels that name none.
    pub from: Option<String>,
    /// Webhooks that any funnel may call by name.
    pub webhooks: BTreeMap<String, WebhookSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    /// Environment variable that holds the signing secret.
    pub secret_env: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            database_url: "sqlite://autofunnel.db?mode=rwc".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            base_url: "http://127.0.0.1:8080".into(),
            funnels_dir: "funnels".into(),
            templates_dir: "templates".into(),
            outbox_dir: "outbox".into(),
            from: None,
            webhooks: BTreeMap::new(),
        }
    }
}

/// Top-level keys that environment variables may set (`AUTOFUNNEL_DATABASE_URL`, …).
const ENV_KEYS: [&str; 7] = [
    "database_url",
    "listen",
    "base_url",
    "funnels_dir",
    "templates_dir",
    "outbox_dir",
    "from",
];

impl Settings {
    /// Loads `config` if given (it must exist), else `<project>/autofunnel.toml` if present;
    /// environment variables win over the file. Relative paths are taken from the project folder.
    pub fn load(project: &Path, config: Option<&Path>) -> anyhow::Result<Settings> {
        let file = match config {
            Some(c) => {
                if !c.is_file() {
                    bail!("settings file {} does not exist", c.display());
                }
                Some(c.to_path_buf())
            }
            None => Some(project.join(FILE_NAME)).filter(|p| p.is_file()),
        };
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = &file {
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(
            Env::prefixed("AUTOFUNNEL_")
                .filter(|k| ENV_KEYS.contains(&k.as_str().to_lowercase().as_str())),
        );
        let mut s: Settings = fig.extract().with_context(|| match &file {
            Some(f) => format!("bad settings in {} or AUTOFUNNEL_* variables", f.display()),
            None => "bad settings in AUTOFUNNEL_* variables".to_string(),
        })?;
        let base = file.as_deref().and_then(Path::parent).unwrap_or(project);
        for dir in [&mut s.funnels_dir, &mut s.templates_dir, &mut s.outbox_dir] {
            if dir.is_relative() {
                *dir = join_clean(base, dir);
            }
        }
        s.database_url = sqlite_relative_to(&s.database_url, base);
        Ok(s)
    }
}

/// `base/rel`, without a leading `./` so messages show `funnels/x.yaml`.
pub fn join_clean(base: &Path, rel: &Path) -> PathBuf {
    if base.as_os_str().is_empty() || base == Path::new(".") {
        rel.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// A relative SQLite path is taken from the project folder, like every other path.
fn sqlite_relative_to(url: &str, base: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') && !rest.is_empty() => {
            format!("sqlite://{}", join_clean(base, Path::new(rest)).display())
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_nothing_installed() {
        let s = Settings::default();
        assert!(s.database_url.starts_with("sqlite://"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.outbox_dir, PathBuf::from("outbox"));
    }

    #[test]
    fn file_values_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "listen = \"127.0.0.1:9000\"\nfrom = \"Anna <anna@example.com>\"\n[webhooks.crm]\nurl = \"https://crm.example.com/h\"\n",
        )
        .unwrap();
        let s = Settings::load(dir.path(), None).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.funnels_dir, dir.path().join("funnels"));
        assert_eq!(
            s.database_url,
            format!("sqlite://{}/autofunnel.db?mode=rwc", dir.path().display())
        );
        assert_eq!(s.webhooks["crm"].url, "https://crm.example.com/h");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = format!("{:#}", Settings::load(dir.path(), None).unwrap_err());
        assert!(err.contains("lisen"), "{err}");
    }
}
