//! Delivery: the sender drains the outbox the engine fills. Each round claims due emails with
//! a lease (one attempt in flight per message), composes each for its lead, hands it to the
//! transport — SMTP through a pool of connections, or `.eml` files in the outbox folder — and
//! records the outcome through its [`Outbox`] handle: sent; a transient failure retried with
//! exponential backoff and jitter; a permanent one failed, the address suppressed and a
//! `bounced` event stored for the engine's next round. The sender knows nothing of the
//! runtime.

pub mod compose;
pub mod rate;
pub mod smtp;
pub mod track;
pub mod webhook;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};

use crate::metrics::Metrics;
use crate::project::Project;
use crate::store::{Outbox, Outgoing};

/// How long a claimed message is reserved for its attempt.
pub const LEASE: Duration = Duration::minutes(5);
/// Messages claimed per round.
pub const BATCH: u64 = 1000;
/// Rounds in flight at once in [`Sender::drain`].
pub const PIPELINES: usize = 2;
/// The recorder writes at once when this many acceptances wait, else after [`GROUP_WAIT`]
/// (group commit: one write for the messages accepted in that moment, not one per message).
const GROUP: usize = 256;
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
/// Attempts before a message that keeps failing transiently is given up.
pub const MAX_ATTEMPTS: i32 = 8;
/// The first retry waits this long; each later one twice the previous, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::minutes(1);
const MAX_BACKOFF: Duration = Duration::hours(6);

/// What a transport says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// 4xx, a dropped connection, a timeout: try again later.
    Transient(String),
    /// 5xx: the address does not take mail.
    Permanent(String),
    /// The email could not be made (a template that fails for this lead, no sender): the
    /// message fails, the address stays mailable.
    Broken(String),
}

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    /// The embedded default: each email as `<send-key>.eml` in this folder.
    Folder(PathBuf),
    Smtp(Arc<smtp::Pool>),
}

impl Transport {
    /// SMTP through a pool of `connections`.
    pub fn smtp(target: smtp::Target, connections: usize) -> Transport {
        Transport::Smtp(Arc::new(smtp::Pool::new(target, connections)))
    }

    /// Sends composed emails, in parallel where the transport allows, and records each one
    /// sent as soon as it is accepted (a recorder writes whatever has been accepted since its
    /// last write, so a crash can only repeat the few in flight). Outcomes in order.
    async fn send_all(
        &self,
        outbox: &Outbox,
        emails: Vec<(i64, String, lettre::Message)>,
        limit: Option<Arc<rate::RateLimit>>,
        now: DateTime<Utc>,
    ) -> Vec<Outcome> {
        // Files: written one after another on one blocking thread, then recorded at once (a
        // file rewritten after a crash is the same file: its name is the send key).
        if let (Transport::Folder(dir), None) = (self, &limit) {
            let dir = dir.clone();
            let written = tokio::task::spawn_blocking(move || {
                emails
                    .into_iter()
                    .map(|(id, name, email)| {
                        let file = dir.join(&name);
                        match std::fs::write(&file, email.formatted()) {
                            Ok(()) => (id, Outcome::Sent),
                            Err(e) => (
                                id,
                                Outcome::Transient(format!("cannot write {}: {e}", file.display())),
                            ),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let sent: Vec<i64> = written
                .iter()
                .filter(|(_, o)| *o == Outcome::Sent)
                .map(|(id, _)| *id)
                .collect();
            if let Err(e) = outbox.sent(&sent, now).await {
                tracing::error!(error = %e, count = sent.len(), "cannot record sent messages");
            }
            return written.into_iter().map(|(_, o)| o).collect();
        }
        let (accepted, mut to_record) = tokio::sync::mpsc::unbounded_channel::<i64>();
        let recorder = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while to_record.recv_many(&mut ids, 512).await > 0 {
                    // Group commit: a moment for more acceptances to join this write.
                    if ids.len() < GROUP {
                        tokio::time::sleep(GROUP_WAIT).await;
                        while ids.len() < 512 {
                            match to_record.try_recv() {
                                Ok(id) => ids.push(id),
                                Err(_) => break,
                            }
                        }
                    }
                    if let Err(e) = outbox.sent(&ids, now).await {
                        // Sent but not recorded: they will be sent again after their lease.
                        tracing::error!(error = %e, count = ids.len(), "cannot record sent messages");
                    }
                    ids.clear();
                }
            })
        };
        let tasks: Vec<_> = emails
            .into_iter()
            .map(|(id, name, email)| {
                let transport = self.clone();
                let (limit, accepted) = (limit.clone(), accepted.clone());
                tokio::spawn(async move {
                    if let Some(l) = limit {
                        l.acquire().await;
                    }
                    let outcome = match transport {
                        Transport::Folder(dir) => {
                            let file = dir.join(&name);
                            match tokio::fs::write(&file, email.formatted()).await {
                                Ok(()) => Outcome::Sent,
                                Err(e) => Outcome::Transient(format!(
                                    "cannot write {}: {e}",
                                    file.display()
                                )),
                            }
                        }
                        // The pool's permits bound the connections in use.
                        Transport::Smtp(pool) => {
                            pool.send(email.envelope(), &email.formatted()).await
                        }
                    };
                    if outcome == Outcome::Sent {
                        let _ = accepted.send(id);
                    }
                    outcome
                })
            })
            .collect();
        drop(accepted);
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(
                t.await
                    .unwrap_or_else(|e| Outcome::Transient(format!("send task: {e}"))),
            );
        }
        let _ = recorder.await;
        out
    }
}

/// A DKIM signer from the key's text: RSA (PKCS#1 PEM, `-----BEGIN RSA PRIVATE KEY-----`) or
/// Ed25519 (the 32-byte key in base64).
pub fn dkim(
    selector: &str,
    domain: &str,
    key: &str,
) -> Result<lettre::message::dkim::DkimConfig, String> {
    use lettre::message::dkim::{
        DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
        DkimSigningKey,
    };
    use lettre::message::header::HeaderName;
    let key = key.trim();
    let algorithm = if key.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        DkimSigningAlgorithm::Rsa
    } else if key.starts_with("-----") {
        return Err(
            "the DKIM key must be RSA in PKCS#1 PEM (BEGIN RSA PRIVATE KEY) or a base64 Ed25519 key"
                .into(),
        );
    } else {
        DkimSigningAlgorithm::Ed25519
    };
    let key = DkimSigningKey::new(key, algorithm).map_err(|e| format!("bad DKIM key: {e}"))?;
    // relaxed/relaxed survives the refolding relays do; the list headers are signed because
    // RFC 8058 one-click unsubscribe counts only when DKIM covers them. Not Content-Type:
    // lettre 0.11.23 signs before the multipart's Content-Type joins the headers, so a
    // signature over it never verifies (dkimpy says so; the test `dkim_verifies_with_dkimpy`).
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "MIME-Version",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect();
    Ok(DkimConfig::new(
        selector.to_string(),
        domain.to_string(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

/// When attempt `attempts` (1-based) failed transiently, the next one: exponential backoff with
/// up to 20 % jitter, stable per message so a crowd of failures spreads out.
pub fn next_attempt(now: DateTime<Utc>, attempts: i32, message: i64) -> DateTime<Utc> {
    let exp = FIRST_BACKOFF * 2i32.saturating_pow(attempts.clamp(1, 20) as u32 - 1);
    let base = exp.min(MAX_BACKOFF);
    let jitter = crate::engine::fnv1a(&message.to_le_bytes()) % 1000;
    now + base + base * jitter as i32 / 5000
}

/// Drains the outbox.
pub struct Sender {
    outbox: Outbox,
    project: RwLock<Arc<Project>>,
    transport: Transport,
    base_url: Arc<str>,
    secret: Arc<[u8]>,
    /// Tracked links and the open pixel (`track_clicks`, `track_opens`).
    track: (bool, bool),
    dkim: Option<Arc<lettre::message::dkim::DkimConfig>>,
    metrics: Option<Arc<Metrics>>,
    limit: Option<Arc<rate::RateLimit>>,
    /// `link_hosts` from the settings.
    extra_hosts: Vec<String>,
    /// Where links may lead: the server's host, `link_hosts` and every host the templates link
    /// to literally. Rebuilt with the project.
    hosts: RwLock<Arc<std::collections::HashSet<String>>>,
}

/// A round's tally.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    /// Dropped because the address was suppressed after the email was queued.
    pub suppressed: usize,
}

impl Sender {
    pub fn new(
        outbox: Outbox,
        project: Arc<Project>,
        transport: Transport,
        base_url: &str,
        secret: &[u8],
    ) -> Sender {
        let hosts = allowed_hosts(base_url, &[], &project);
        Sender {
            outbox,
            extra_hosts: Vec::new(),
            hosts: RwLock::new(Arc::new(hosts)),
            project: RwLock::new(project),
            transport,
            base_url: Arc::from(base_url),
            secret: Arc::from(secret),
            track: (true, true),
            dkim: None,
            metrics: None,
            limit: None,
        }
    }

    /// Counts what it sends in these metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Sender {
        self.metrics = Some(metrics);
        self
    }

    /// Signs every email with DKIM.
    pub fn with_dkim(mut self, dkim: Option<lettre::message::dkim::DkimConfig>) -> Sender {
        self.dkim = dkim.map(Arc::new);
        self
    }

    /// Whether links become tracked redirects and an open pixel is added (both by default).
    pub fn with_tracking(mut self, clicks: bool, opens: bool) -> Sender {
        self.track = (clicks, opens);
        self
    }

    /// Sends at most `per_second` messages per second (`send_rate`).
    pub fn with_rate(mut self, per_second: Option<f64>) -> Sender {
        self.limit = per_second.and_then(rate::RateLimit::new).map(Arc::new);
        self
    }

    /// Hosts links in emails may lead to besides the server's and those the templates link
    /// to literally (`link_hosts`).
    pub fn with_link_hosts(mut self, hosts: &[String]) -> Sender {
        self.extra_hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let project = self
            .project
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = allowed_hosts(&self.base_url, &self.extra_hosts, &project);
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        self
    }

    /// Templates and funnels after a reload.
    pub fn reload(&self, project: Arc<Project>) {
        let all = allowed_hosts(&self.base_url, &self.extra_hosts, &project);
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        *self.project.write().unwrap_or_else(|e| e.into_inner()) = project;
    }

    /// Claims due messages and sends them, as many at once as the transport allows.
    pub async fn round(&self, now: DateTime<Utc>) -> anyhow::Result<Tally> {
        let outbox = &self.outbox;
        let mut claimed = outbox.claim(MAX_ATTEMPTS, now, LEASE, self.batch()).await?;
        if claimed.is_empty() {
            return Ok(Tally::default());
        }
        // Queued before the address was suppressed (an unsubscribe, a bounce): never sent.
        let suppressed = outbox.suppressed_among(&claimed).await?;
        for id in &suppressed {
            outbox.suppressed(*id).await?;
        }
        claimed.retain(|m| !suppressed.contains(&m.id));
        let mut tally = Tally {
            suppressed: suppressed.len(),
            ..Tally::default()
        };
        let ids: Vec<_> = claimed.iter().map(|m| m.lead).collect();
        let leads = outbox.leads(&ids).await?;
        let deadlines = outbox.deadlines_of(&claimed).await?;
        let project = self
            .project
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Compose every email first (CPU, on a blocking thread: the server and the scheduler
        // share the async workers), then send them all (network).
        let (base_url, secret, track, dkim) = (
            self.base_url.clone(),
            self.secret.clone(),
            self.track,
            self.dkim.clone(),
        );
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let work = claimed.clone();
        let composed: Vec<Result<lettre::Message, Outcome>> =
            tokio::task::spawn_blocking(move || {
                let links = compose::Links {
                    base_url: &base_url,
                    secret: &secret,
                    clicks: track.0,
                    opens: track.1,
                    hosts: Some(&hosts),
                };
                work.iter()
                    .map(|m| {
                        let lead = leads.get(&m.lead);
                        let deadline = deadlines.get(&m.id).copied();
                        // One email that cannot be made fails alone, whatever goes wrong.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            compose_email(m, lead, deadline, &project, &links, dkim.as_deref(), now)
                        }))
                        .unwrap_or_else(|p| {
                            let why = p
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or_else(|| p.downcast_ref::<&str>().copied())
                                .unwrap_or("unknown");
                            Err(Outcome::Broken(format!(
                                "composing the email failed: {why}"
                            )))
                        })
                    })
                    .collect()
            })
            .await?;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(claimed.len());
        let mut emails = Vec::new();
        for (m, c) in claimed.iter().zip(composed) {
            match c {
                Ok(email) => {
                    outcomes.push(None);
                    emails.push((m.id, crate::store::file_name(&m.send_key), email));
                }
                Err(o) => outcomes.push(Some(o)),
            }
        }
        let mut sent_outcomes = self
            .transport
            .send_all(outbox, emails, self.limit.clone(), now)
            .await
            .into_iter();
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| sent_outcomes.next())
                    .unwrap_or_else(|| Outcome::Transient("no outcome".into()))
            })
            .collect();
        for (m, outcome) in claimed.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent => tally.sent += 1,
                Outcome::Transient(e) if m.attempts < MAX_ATTEMPTS => {
                    tracing::warn!(message = m.id, attempt = m.attempts, error = %e, "send failed; will retry");
                    outbox
                        .retry(m.id, next_attempt(now, m.attempts, m.id), &e)
                        .await?;
                    tally.retried += 1;
                }
                Outcome::Transient(e) => {
                    tracing::error!(message = m.id, error = %e, "send failed; no attempts left");
                    outbox.failed(m.id, &e).await?;
                    tally.failed += 1;
                }
                Outcome::Broken(e) => {
                    tracing::error!(message = m.id, error = %e, "cannot compose the email");
                    outbox.failed(m.id, &e).await?;
                    tally.failed += 1;
                }
                Outcome::Permanent(e) => {
                    tracing::warn!(message = m.id, to = %m.recipient, error = %e, "address refused; suppressed");
                    outbox.bounced(m, &e, now).await?;
                    tally.failed += 1;
                }
            }
        }
        Ok(tally)
    }

    /// Messages claimed per round: [`BATCH`], or under a `send_rate` about two seconds' worth,
    /// so a round ends soon and a stop is not held up by sends waiting for their slot.
    fn batch(&self) -> u64 {
        match &self.limit {
            Some(l) => (l.per_second() * 2.0).ceil().clamp(1.0, BATCH as f64) as u64,
            None => BATCH,
        }
    }

    /// Sends everything due at `now`, with [`PIPELINES`] rounds in flight so composing and
    /// database work of one overlap the network of another. Returns the total.
    pub async fn drain(&self, now: DateTime<Utc>) -> anyhow::Result<Tally> {
        self.drain_until(now, &AtomicBool::new(false)).await
    }

    /// [`Sender::drain`], starting no new round once `stop` is set.
    async fn drain_until(&self, now: DateTime<Utc>, stop: &AtomicBool) -> anyhow::Result<Tally> {
        let one = || async {
            let mut total = Tally::default();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return anyhow::Ok(total);
                }
                let t = self.round(now).await?;
                total.sent += t.sent;
                total.retried += t.retried;
                total.failed += t.failed;
                total.suppressed += t.suppressed;
                if t.sent + t.retried + t.failed + t.suppressed == 0 {
                    return anyhow::Ok(total);
                }
            }
        };
        let all = futures_util::future::join_all((0..PIPELINES).map(|_| one())).await;
        let mut total = Tally::default();
        for t in all {
            let t = t?;
            total.sent += t.sent;
            total.retried += t.retried;
            total.failed += t.failed;
            total.suppressed += t.suppressed;
        }
        if let Some(m) = &self.metrics {
            m.emails_sent.inc_by(total.sent as u64);
            m.emails_retried.inc_by(total.retried as u64);
            m.emails_failed.inc_by(total.failed as u64);
            m.emails_suppressed.inc_by(total.suppressed as u64);
        }
        Ok(total)
    }

    /// Sends until `shutdown`: drains what is due, then looks again every second.
    /// A stop lets the rounds in flight finish (what they send is recorded) and starts none.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = AtomicBool::new(false);
        let stopped = tokio::sync::Notify::new();
        let watch = async {
            shutdown.await;
            stop.store(true, Ordering::Relaxed);
            stopped.notify_one();
        };
        let work = async {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = self.drain_until(Utc::now(), &stop).await {
                    tracing::error!(error = %e, "sender round failed; retrying");
                }
                tokio::select! {
                    _ = stopped.notified() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        };
        tokio::join!(watch, work);
    }
}

/// Where links in emails may lead: the host of `base_url`, `extra` (`link_hosts`) and every
/// host the project's templates link to literally.
fn allowed_hosts(
    base_url: &str,
    extra: &[String],
    project: &Project,
) -> std::collections::HashSet<String> {
    let mut hosts: std::collections::HashSet<String> = project.link_hosts().into_iter().collect();
    hosts.extend(extra.iter().cloned());
    hosts.extend(track::host_of(base_url));
    hosts
}

/// The email of a claimed message, or why it cannot be made.
fn compose_email(
    m: &Outgoing,
    lead: Option<&crate::domain::Lead>,
    deadline: Option<DateTime<Utc>>,
    project: &Project,
    links: &compose::Links<'_>,
    dkim: Option<&lettre::message::dkim::DkimConfig>,
    now: DateTime<Utc>,
) -> Result<lettre::Message, Outcome> {
    let Some(lead) = lead else {
        return Err(Outcome::Broken(format!("lead {} no longer exists", m.lead)));
    };
    let Some(funnel_id) = &m.funnel else {
        return Err(Outcome::Broken("the message names no funnel".into()));
    };
    let (Some(f), Some(t)) = (
        project.funnels.iter().find(|f| &f.id.value == funnel_id),
        project.templates.get(funnel_id.as_str()),
    ) else {
        return Err(Outcome::Transient(format!(
            "funnel \"{funnel_id}\" is not loaded"
        )));
    };
    let mut email = compose::compose(m, f, t, lead, deadline, links, now)
        .map_err(|e| Outcome::Broken(e.to_string()))?;
    if let Some(d) = dkim {
        email.sign(d);
    }
    Ok(email)
}
