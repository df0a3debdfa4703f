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
    /// PostgreSQL: the connections this process keeps open (its pool). Every node keeps its
    /// own, so nodes × this stays under the server's `max_connections`. SQLite: unused.
    pub database_connections: u32,
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
    /// Payment providers whose notifications `POST /hooks/pay/{name}` takes.
    pub payments: BTreeMap<String, PaymentSettings>,
    /// `smtp://host:port` (plain, for a relay on localhost) or
    /// `smtp+starttls://user:pass@host:587`; unset, emails go to `outbox_dir` as `.eml` files.
    pub smtp_url: Option<String>,
    /// Certificates (PEM) to trust besides the public roots, for a relay with its own CA.
    pub smtp_ca_file: Option<PathBuf>,
    /// DKIM: the selector (`<selector>._domainkey.<domain>` holds the public key), the signing
    /// domain, and the private key file (RSA PKCS#1 PEM, or a base64 Ed25519 key). All three
    /// or none.
    pub dkim_selector: Option<String>,
    pub dkim_domain: Option<String>,
    pub dkim_key_file: Option<PathBuf>,
    /// SMTP connections kept open and used at once.
    pub smtp_connections: usize,
    /// Webhook calls in flight to one URL at once.
    pub webhook_concurrency: usize,
    /// At most this many emails per second (unset: as fast as the transport takes them).
    pub send_rate: Option<f64>,
    /// Bearer token for the admin API (`/api/v1/leads…`, `/api/v1/funnels`); unset, it is off.
    pub admin_token: Option<String>,
    /// Bearer token for `/api/v1/events`; unset, the events API is off.
    pub api_token: Option<String>,
    /// Signups one IP address may make per minute (`POST /f/{form}`); 0 turns the limit off.
    /// IPv6 addresses count per /64, the block one subscriber gets.
    pub signups_per_ip_per_minute: u32,
    /// Reverse proxies (CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the visitor; from anyone else those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Links in emails become signed redirects that record clicks.
    pub track_clicks: bool,
    /// Emails carry a pixel that records opens.
    pub track_opens: bool,
    /// Hosts links in emails may lead to besides the server's own and those the templates
    /// link to literally; a link built from lead data to any other host is taken out.
    pub link_hosts: Vec<String>,
    /// Key that signs unsubscribe and confirmation links; unset, one is generated once and
    /// kept in `secret_file`.
    pub secret: Option<String>,
    pub secret_file: PathBuf,
    /// Key shared with the mail provider to sign bounce and complaint reports sent to
    /// `POST /hooks/delivery`; unset, that endpoint is off.
    pub hooks_secret: Option<String>,
    /// The time zone reports count days, weeks and months in (an IANA name such as
    /// `Europe/Moscow`), unless a report asks for another with `--tz` / `tz`.
    pub report_timezone: String,
    /// Lead fields the report counters are kept by (as each run's lead had them when it
    /// entered), so a report sliced by one of them (`field:NAME`) reads the counters rather
    /// than every row. At most [`MAX_REPORT_FIELDS`]; a change makes the counters again.
    pub report_fields: Vec<String>,
    /// The dashboard's language (`en` or `ru`); unset, the browser's.
    pub ui_language: Option<String>,
    /// The project folder: files the funnels name (consent texts) are taken from it.
    #[serde(skip)]
    pub project_dir: PathBuf,
}

/// Webhook calls in flight to one URL at once, by default, so one slow receiver cannot hold
/// every call.
pub const WEBHOOK_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    /// Environment variable that holds the signing secret.
    pub secret_env: Option<String>,
    /// Lifecycle events it is called for, of every funnel (`lead.created`, `stage.entered`,
    /// `funnel.exited`, `purchase`, `unsubscribed`, `mql`, `sql`).
    #[serde(default)]
    pub events: Vec<String>,
    /// Only these funnels' stage, exit and score events (empty: every funnel's).
    #[serde(default)]
    pub funnels: Vec<String>,
}

/// One payment provider account: `[payments.NAME]`, its notifications posted to
/// `/hooks/pay/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// `yookassa`, `cloudpayments`, `prodamus`, `robokassa`, `tbank` or `stripe`; unset, the
    /// table's name.
    pub provider: Option<String>,
    /// Environment variable that holds the key notifications are verified with (YooKassa:
    /// the API secret key its payments are re-read with).
    pub secret_env: Option<String>,
    /// The provider's item (its product name, description or metadata, see the README) to a
    /// product id the funnels declare. An item that is itself a product id needs no entry.
    #[serde(default)]
    pub products: BTreeMap<String, String>,
    /// The currency of a provider whose notifications name none (Robokassa, T-Bank;
    /// default RUB).
    pub currency: Option<String>,
    /// YooKassa: the shop id, with `secret_env` the credentials its payments are re-read with.
    pub shop_id: Option<String>,
    /// YooKassa: addresses notifications may come from (default: its published ranges).
    pub allowed_ips: Option<Vec<String>>,
    /// YooKassa: its API (default `https://api.yookassa.ru/v3`).
    pub api_url: Option<String>,
    /// T-Bank: the terminal a notification must name.
    pub terminal_key: Option<String>,
    /// Robokassa: the signature's hash (`md5`, `sha1`, `sha256`, `sha384`, `sha512`; default
    /// md5), as set in its technical settings.
    pub hash: Option<String>,
    /// Stripe: how far a signature's timestamp may be from now, in seconds (default 300).
    pub tolerance_seconds: Option<u64>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            database_url: "sqlite://autofunnel.db?mode=rwc".into(),
            database_connections: crate::store::POOL,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            base_url: "http://127.0.0.1:8080".into(),
            funnels_dir: "funnels".into(),
            templates_dir: "templates".into(),
            outbox_dir: "outbox".into(),
            from: None,
            webhooks: BTreeMap::new(),
            payments: BTreeMap::new(),
            smtp_url: None,
            smtp_ca_file: None,
            dkim_selector: None,
            dkim_domain: None,
            dkim_key_file: None,
            smtp_connections: 4,
            webhook_concurrency: WEBHOOK_CONCURRENCY,
            send_rate: None,
            admin_token: None,
            api_token: None,
            signups_per_ip_per_minute: 30,
            trusted_proxies: Vec::new(),
            track_clicks: true,
            track_opens: true,
            link_hosts: Vec::new(),
            secret: None,
            secret_file: "autofunnel.secret".into(),
            hooks_secret: None,
            report_timezone: "UTC".into(),
            report_fields: Vec::new(),
            ui_language: None,
            project_dir: PathBuf::new(),
        }
    }
}

/// Top-level keys that environment variables may set (`AUTOFUNNEL_DATABASE_URL`, …).
const ENV_KEYS: [&str; 29] = [
    "database_url",
    "database_connections",
    "listen",
    "base_url",
    "funnels_dir",
    "templates_dir",
    "outbox_dir",
    "from",
    "smtp_url",
    "smtp_ca_file",
    "dkim_selector",
    "dkim_domain",
    "dkim_key_file",
    "smtp_connections",
    "webhook_concurrency",
    "send_rate",
    "admin_token",
    "api_token",
    "signups_per_ip_per_minute",
    "trusted_proxies",
    "track_clicks",
    "track_opens",
    "link_hosts",
    "secret",
    "secret_file",
    "hooks_secret",
    "report_timezone",
    "report_fields",
    "ui_language",
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
        s.project_dir = base.to_path_buf();
        for dir in [
            &mut s.funnels_dir,
            &mut s.templates_dir,
            &mut s.outbox_dir,
            &mut s.secret_file,
        ] {
            if dir.is_relative() {
                *dir = join_clean(base, dir);
            }
        }
        for file in [&mut s.smtp_ca_file, &mut s.dkim_key_file]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = join_clean(base, file);
            }
        }
        s.database_url = sqlite_relative_to(&s.database_url, base);
        s.report_zone()?;
        s.check_report_fields()?;
        s.ui_language()?;
        Ok(s)
    }
}

impl Settings {
    /// `ui_language` as a language (none: the browser's); another value is an error.
    pub fn ui_language(&self) -> anyhow::Result<Option<crate::locale::Language>> {
        self.ui_language
            .as_deref()
            .map(|l| {
                crate::locale::Language::parse(l).ok_or_else(|| {
                    anyhow::anyhow!(
                        "ui_language: \"{l}\" is not one the dashboard speaks (en or ru)"
                    )
                })
            })
            .transpose()
    }

    /// `report_timezone` as a zone; an unknown name is an error that names it.
    pub fn report_zone(&self) -> anyhow::Result<chrono_tz::Tz> {
        self.report_timezone.parse().map_err(|_| {
            anyhow::anyhow!(
                "report_timezone: no time zone \"{}\" (an IANA name such as Europe/Moscow, or UTC)",
                self.report_timezone
            )
        })
    }
}

/// The most lead fields the report counters are kept by: each multiplies the counters by
/// the number of its values.
pub const MAX_REPORT_FIELDS: usize = 4;

impl Settings {
    /// `report_fields`: field names, each once, at most [`MAX_REPORT_FIELDS`].
    fn check_report_fields(&self) -> anyhow::Result<()> {
        let fields = &self.report_fields;
        if fields.len() > MAX_REPORT_FIELDS {
            bail!(
                "report_fields: {} fields, at most {MAX_REPORT_FIELDS} (each multiplies the report counters by its values)",
                fields.len()
            );
        }
        for (i, name) in fields.iter().enumerate() {
            if let Err(e) = crate::domain::FieldName::parse(name) {
                bail!("report_fields: \"{name}\" is not a field name: {e}");
            }
            if fields[..i].contains(name) {
                bail!("report_fields: \"{name}\" is named twice");
            }
        }
        Ok(())
    }
}

/// The shortest secret or token accepted, in characters.
pub const MIN_SECRET: usize = 16;

impl Settings {
    /// Every secret and token that is set is long enough to resist guessing: `secret`,
    /// `hooks_secret`, `api_token`, `admin_token` (at least [`MIN_SECRET`] characters, not
    /// only spaces), and the two tokens differ. Checked by `run` before anything starts.
    pub fn check_secrets(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("secret", &self.secret),
            ("hooks_secret", &self.hooks_secret),
            ("api_token", &self.api_token),
            ("admin_token", &self.admin_token),
        ] {
            if let Some(v) = value
                && (v.trim().chars().count() < MIN_SECRET)
            {
                bail!(
                    "`{key}` is too short: use at least {MIN_SECRET} characters (set it in {FILE_NAME} or AUTOFUNNEL_{})",
                    key.to_uppercase()
                );
            }
        }
        if self.api_token.is_some() && self.api_token == self.admin_token {
            bail!(
                "`api_token` and `admin_token` must differ: shops hold the first, admins the second"
            );
        }
        Ok(())
    }

    /// `trusted_proxies` as networks; a bad entry is an error naming it.
    pub fn trusted_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|t| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "`trusted_proxies`: \"{t}\" is not an address or a CIDR such as 10.0.0.0/8"
                        )
                    })
            })
            .collect()
    }

    /// The signing key: `secret` if set, else the contents of `secret_file`, created with 32
    /// random bytes the first time.
    pub fn secret_bytes(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(s) = &self.secret {
            if s.trim().chars().count() < MIN_SECRET {
                bail!("`secret` is too short: use at least {MIN_SECRET} characters");
            }
            return Ok(s.as_bytes().to_vec());
        }
        let file = &self.secret_file;
        if let Ok(text) = std::fs::read_to_string(file) {
            let key = text.trim();
            if key.chars().count() < MIN_SECRET {
                bail!(
                    "the secret in {} is too short: at least {MIN_SECRET} characters",
                    file.display()
                );
            }
            return Ok(key.as_bytes().to_vec());
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(file, format!("{key}\n"))
            .with_context(|| format!("cannot write the new secret to {}", file.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
        }
        Ok(key.into_bytes())
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
    fn report_fields_are_field_names_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
            Settings::load(dir.path(), None).map_err(|e| e.to_string())
        };
        let s = load("report_fields = [\"region\", \"plan\"]\n").unwrap();
        assert_eq!(s.report_fields, ["region", "plan"]);
        assert_eq!(
            load("report_fields = [\"region\", \"region\"]\n").unwrap_err(),
            "report_fields: \"region\" is named twice"
        );
        let e = load("report_fields = [\"my region\"]\n").unwrap_err();
        assert!(
            e.starts_with("report_fields: \"my region\" is not a field name"),
            "{e}"
        );
        let e = load("report_fields = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n").unwrap_err();
        assert!(e.starts_with("report_fields: 5 fields, at most 4"), "{e}");
    }

    #[test]
    fn the_dashboard_speaks_english_or_russian() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "ui_language = \"ru-RU\"\n").unwrap();
        let s = Settings::load(dir.path(), None).unwrap();
        assert_eq!(s.ui_language().unwrap(), Some(crate::locale::Language::Ru));
        std::fs::write(dir.path().join(FILE_NAME), "ui_language = \"klingon\"\n").unwrap();
        let e = Settings::load(dir.path(), None).unwrap_err().to_string();
        assert_eq!(
            e,
            "ui_language: \"klingon\" is not one the dashboard speaks (en or ru)"
        );
    }

    #[test]
    fn short_or_shared_secrets_are_refused_at_start() {
        let ok = Settings {
            secret: Some("a long enough link secret".into()),
            hooks_secret: Some("a long enough hooks secret".into()),
            api_token: Some("api-token-0123456789".into()),
            admin_token: Some("admin-token-0123456789".into()),
            ..Settings::default()
        };
        ok.check_secrets().unwrap();
        for (bad, key) in [
            (
                Settings {
                    hooks_secret: Some(String::new()),
                    ..ok.clone()
                },
                "hooks_secret",
            ),
            (
                Settings {
                    hooks_secret: Some("abc".into()),
                    ..ok.clone()
                },
                "hooks_secret",
            ),
            (
                Settings {
                    secret: Some(" ".repeat(40)),
                    ..ok.clone()
                },
                "secret",
            ),
            (
                Settings {
                    api_token: Some("short".into()),
                    ..ok.clone()
                },
                "api_token",
            ),
        ] {
            let e = bad.check_secrets().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}` is too short")), "{e}");
        }
        let same = Settings {
            admin_token: ok.api_token.clone(),
            ..ok.clone()
        };
        assert!(
            same.check_secrets()
                .unwrap_err()
                .to_string()
                .contains("must differ")
        );
    }

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load(dir.path(), None).unwrap();
        let first = s.secret_bytes().unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(s.secret_bytes().unwrap(), first);
        let short = Settings {
            secret: Some("short".into()),
            ..s
        };
        assert!(
            short
                .secret_bytes()
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
    }

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
