//! Delivery: the sender drains the outbox the engine fills. Each round claims due emails with
//! a lease (one attempt in flight per message), composes each for its lead, hands it to the
//! transport — SMTP through a pool of connections, or `.eml` files in the outbox folder — and
//! records the outcome: sent; a transient failure retried with exponential backoff and jitter;
//! a permanent one failed, the address suppressed and a `bounced` event fed to the engine.

pub mod compose;
pub mod smtp;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};

use crate::engine::Event;
use crate::project::Project;
use crate::runtime::Runtime;
use crate::store::Outgoing;

/// How long a claimed message is reserved for its attempt.
pub const LEASE: Duration = Duration::minutes(5);
/// Messages claimed per round.
pub const BATCH: u64 = 200;
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
}

/// Where emails go.
pub enum Transport {
    /// The embedded default: each email as `<send-key>.eml` in this folder.
    Folder(PathBuf),
    Smtp(smtp::Pool),
}

impl Transport {
    async fn send(
        &self,
        name: &str,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Outcome {
        match self {
            Transport::Folder(dir) => {
                let file = dir.join(format!("{name}.eml"));
                match tokio::fs::write(&file, bytes).await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => Outcome::Transient(format!("cannot write {}: {e}", file.display())),
                }
            }
            Transport::Smtp(pool) => pool.send(envelope, bytes).await,
        }
    }
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
    runtime: Arc<Runtime>,
    project: RwLock<Arc<Project>>,
    transport: Transport,
    base_url: String,
    secret: Vec<u8>,
}

/// A round's tally.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

impl Sender {
    pub fn new(
        runtime: Arc<Runtime>,
        project: Arc<Project>,
        transport: Transport,
        base_url: &str,
        secret: &[u8],
    ) -> Sender {
        Sender {
            runtime,
            project: RwLock::new(project),
            transport,
            base_url: base_url.to_string(),
            secret: secret.to_vec(),
        }
    }

    /// Templates and funnels after a reload.
    pub fn reload(&self, project: Arc<Project>) {
        *self.project.write().unwrap_or_else(|e| e.into_inner()) = project;
    }

    /// Claims due messages and sends them, as many at once as the transport allows.
    pub async fn round(&self, now: DateTime<Utc>) -> anyhow::Result<Tally> {
        let store = self.runtime.store();
        let claimed = store.claim_messages(now, LEASE, BATCH).await?;
        let mut tally = Tally::default();
        let sends = claimed.iter().map(|m| self.attempt(m, now));
        // The transport bounds how many are in flight (the SMTP pool's connections).
        let outcomes = futures_util::future::join_all(sends).await;
        for (m, outcome) in claimed.iter().zip(outcomes) {
            match outcome? {
                Outcome::Sent => {
                    store.message_sent(m.id, now).await?;
                    tally.sent += 1;
                }
                Outcome::Transient(e) if m.attempts < MAX_ATTEMPTS => {
                    tracing::warn!(message = m.id, attempt = m.attempts, error = %e, "send failed; will retry");
                    store
                        .message_retry(m.id, next_attempt(now, m.attempts, m.id), &e)
                        .await?;
                    tally.retried += 1;
                }
                Outcome::Transient(e) => {
                    tracing::error!(message = m.id, error = %e, "send failed; no attempts left");
                    store.message_failed(m.id, &e).await?;
                    tally.failed += 1;
                }
                Outcome::Permanent(e) => {
                    tracing::warn!(message = m.id, to = %m.recipient, error = %e, "address refused; suppressed");
                    store.message_failed(m.id, &e).await?;
                    let bounced = Event {
                        template: m.template.clone(),
                        ..Event::named("bounced")
                    };
                    self.runtime
                        .event(m.lead, bounced, Some(format!("bounce:{}", m.send_key)), now)
                        .await?;
                    tally.failed += 1;
                }
            }
        }
        Ok(tally)
    }

    async fn attempt(&self, m: &Outgoing, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
        let store = self.runtime.store();
        let email = {
            let Some(lead) = store.lead(m.lead).await? else {
                return Ok(Outcome::Permanent(format!(
                    "lead {} no longer exists",
                    m.lead
                )));
            };
            let deadline = store.message_deadline(m.id).await?;
            let project = self
                .project
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let funnel_id = m.funnel.clone().unwrap_or_default();
            let (Some(f), Some(t)) = (
                project
                    .funnels
                    .iter()
                    .find(|f| f.id.value.as_str() == funnel_id),
                project.templates.get(&funnel_id),
            ) else {
                return Ok(Outcome::Transient(format!(
                    "funnel \"{funnel_id}\" is not loaded"
                )));
            };
            let links = compose::Links {
                base_url: &self.base_url,
                secret: &self.secret,
            };
            match compose::compose(m, f, t, &lead, deadline, &links, now) {
                Ok(e) => e,
                Err(e) => return Ok(Outcome::Permanent(e.to_string())),
            }
        };
        let name = m.send_key.replace([':', '/'], "_");
        Ok(self
            .transport
            .send(&name, email.envelope(), &email.formatted())
            .await)
    }

    /// Sends until `shutdown`: at once after a full round, else every second.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let full = match self.round(Utc::now()).await {
                Ok(t) => t.sent + t.retried + t.failed >= BATCH as usize,
                Err(e) => {
                    tracing::error!(error = %e, "sender round failed; retrying");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}
