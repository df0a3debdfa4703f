//! Outbound webhooks: the calls a funnel's `webhook:` steps queue are claimed from the outbox
//! with a lease, like emails, and POSTed as JSON signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `id.timestamp.body`, the key from the webhook's `secret_env`). A 2xx answer is delivered;
//! 429, 5xx, a timeout or a refused connection are tried again with exponential backoff and
//! jitter (or when `Retry-After` says) for up to a day; any other answer fails the call for
//! good. Failed calls are the dead letters the admin API lists and queues again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use hmac::{KeyInit, Mac};
use tokio::sync::Semaphore;

use crate::domain::Lead;
use crate::metrics::Metrics;
use crate::project::Project;
use crate::store::{Outbox, OutgoingHook};

/// How long a claimed call is reserved for its attempt, at least ([`Hooks::lease`]).
pub const LEASE: Duration = Duration::minutes(2);
/// Calls claimed per round.
pub const BATCH: u64 = 200;
/// Rounds in flight at once in [`Hooks::drain`].
pub const PIPELINES: usize = 2;
/// How long a call is tried before it is given up.
pub const GIVE_UP_AFTER: Duration = Duration::hours(24);
/// The longest an answer is waited for, by default.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What became of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Called {
    Delivered,
    /// Try again, not before this time.
    Later(Option<DateTime<Utc>>, String),
    Failed(String),
}

/// A round's tally.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HookTally {
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

/// Calls the webhooks the outbox holds.
pub struct Hooks {
    outbox: Outbox,
    project: RwLock<Arc<Project>>,
    client: reqwest::Client,
    /// The project-wide webhooks of `autofunnel.toml` (`[webhooks.NAME]`), for steps that name
    /// one their funnel does not declare.
    shared: Vec<crate::funnel::model::Webhook>,
    metrics: Option<Arc<Metrics>>,
    /// Per URL, the calls that may be in flight.
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_endpoint: usize,
    /// The longest an answer is waited for.
    timeout: std::time::Duration,
}

/// The Standard Webhooks signature of `body`: `v1,` and the base64 HMAC-SHA256 of
/// `id.timestamp.body` under `secret` (a `whsec_` secret is base64 after its prefix; any other
/// is used as it is).
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    format!("v1,{sig}")
}

/// The JSON a call posts: the message id (the receiver's key to drop a repeat), the webhook,
/// funnel, stage and step, and the lead; a subscription's details after them (none of them
/// replacing a key above). Written straight to text, as many calls a second make it.
pub fn body(h: &OutgoingHook, lead: Option<&Lead>, now: DateTime<Utc>) -> String {
    use serde::ser::{SerializeMap, Serializer};

    struct LeadOf<'a>(&'a Lead);
    impl serde::Serialize for LeadOf<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let l = self.0;
            let mut m = s.serialize_map(Some(5))?;
            m.serialize_entry("id", &l.id.0)?;
            m.serialize_entry("email", l.email.as_str())?;
            m.serialize_entry("first_name", &l.first_name)?;
            m.serialize_entry("fields", &l.fields)?;
            m.serialize_entry("score", &l.score)?;
            m.end()
        }
    }
    struct Data<'a>(&'a OutgoingHook, Option<&'a Lead>);
    const OWN: [&str; 6] = ["webhook", "funnel", "stage", "step", "queued_at", "lead"];
    impl serde::Serialize for Data<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Data(h, lead) = self;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("webhook", &h.webhook)?;
            m.serialize_entry("funnel", &h.funnel.as_ref().map(|f| f.as_str()))?;
            m.serialize_entry("stage", &h.stage)?;
            m.serialize_entry("step", &h.step)?;
            let queued = h
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            m.serialize_entry("queued_at", &queued)?;
            m.serialize_entry("lead", &lead.map(LeadOf))?;
            for (k, v) in &h.detail {
                if !OWN.contains(&k.as_str()) {
                    m.serialize_entry(k, v)?;
                }
            }
            m.end()
        }
    }
    let mut out = Vec::with_capacity(512);
    let mut json = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut m = json.serialize_map(Some(4))?;
        m.serialize_entry("id", &message_id(h))?;
        m.serialize_entry("type", h.event.as_deref().unwrap_or("funnel.webhook"))?;
        m.serialize_entry(
            "timestamp",
            &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )?;
        m.serialize_entry("data", &Data(h, lead))?;
        m.end()
    })();
    // Writing JSON into memory fails only on a map key that is not text, which none is.
    debug_assert!(written.is_ok());
    String::from_utf8(out).unwrap_or_default()
}

/// The id a call keeps across its attempts (`webhook-id`).
fn message_id(h: &OutgoingHook) -> String {
    format!("msg_{}", h.id)
}

/// What an answer means, given when the call was first queued.
pub fn outcome(
    status: u16,
    retry_after: Option<&str>,
    h: &OutgoingHook,
    now: DateTime<Utc>,
) -> Called {
    if (200..300).contains(&status) {
        return Called::Delivered;
    }
    let why = format!("HTTP {status}");
    if status == 429 || status == 408 || status >= 500 {
        let at = retry_after.and_then(|v| retry_at(v, now));
        return later(h, now, at, why);
    }
    Called::Failed(why)
}

/// A transient failure: again at `at` (or after the backoff), unless the call is a day old.
fn later(h: &OutgoingHook, now: DateTime<Utc>, at: Option<DateTime<Utc>>, why: String) -> Called {
    let next = at.unwrap_or_else(|| super::next_attempt(now, h.attempts, h.id));
    if next - h.created_at > GIVE_UP_AFTER {
        return Called::Failed(format!("{why}; given up after {} attempts", h.attempts));
    }
    Called::Later(Some(next), why)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_at(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<i64>() {
        return Some(now + Duration::seconds(secs.clamp(0, 86_400)));
    }
    DateTime::parse_from_rfc2822(v)
        .ok()
        .map(|t| t.with_timezone(&Utc).max(now))
}

pub use crate::outbound::{http_client, install_tls};

impl Hooks {
    pub fn new(outbox: Outbox, project: Arc<Project>) -> Hooks {
        Hooks::with_timeout(outbox, project, TIMEOUT)
    }

    /// Waits `timeout` for each answer instead of [`TIMEOUT`].
    pub fn with_timeout(
        outbox: Outbox,
        project: Arc<Project>,
        timeout: std::time::Duration,
    ) -> Hooks {
        let client = http_client(timeout);
        Hooks {
            outbox,
            project: RwLock::new(project),
            client,
            shared: Vec::new(),
            metrics: None,
            endpoints: Mutex::new(HashMap::new()),
            per_endpoint: crate::settings::WEBHOOK_CONCURRENCY,
            timeout,
        }
    }

    /// How long a round's calls are reserved for: [`LEASE`], or as long as the round could
    /// take when all its calls go to one slow URL — each waiting its turn among
    /// `per_endpoint`, then the whole timeout — and a minute more. A lease that lapsed while
    /// its call was still going would let another node make the call again.
    pub fn lease(&self) -> Duration {
        let turns = BATCH.div_ceil(self.per_endpoint as u64);
        let worst = u32::try_from(turns)
            .ok()
            .and_then(|t| self.timeout.checked_mul(t))
            .and_then(|d| Duration::from_std(d).ok())
            .unwrap_or(GIVE_UP_AFTER);
        (worst + Duration::minutes(1)).max(LEASE)
    }

    /// At most `n` calls in flight to one URL (`webhook_concurrency`).
    pub fn with_per_endpoint(mut self, n: usize) -> Hooks {
        self.per_endpoint = n.max(1);
        self
    }

    /// The project-wide webhooks (`[webhooks.NAME]` in `autofunnel.toml`).
    pub fn with_shared(
        mut self,
        webhooks: &std::collections::BTreeMap<String, crate::settings::WebhookSettings>,
    ) -> Hooks {
        self.shared = webhooks
            .iter()
            .filter_map(|(name, w)| {
                Some(crate::funnel::model::Webhook {
                    id: crate::domain::WebhookId::parse(name).ok()?,
                    url: w.url.clone(),
                    secret_env: w.secret_env.clone(),
                })
            })
            .collect();
        self
    }

    /// Counts what it delivers in these metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Hooks {
        self.metrics = Some(metrics);
        self
    }

    /// Funnels after a reload.
    pub fn reload(&self, project: Arc<Project>) {
        *self.project.write().unwrap_or_else(|e| e.into_inner()) = project;
    }

    fn endpoint(&self, url: &str) -> Arc<Semaphore> {
        let mut all = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(url.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
            .clone()
    }

    /// Claims the calls due at `now`, makes them (each URL at most `per_endpoint` at a time)
    /// and records the outcomes: the delivered ones in one write at the end (a crash before it
    /// repeats at most the round's calls, each with its `webhook-id`).
    pub async fn round(&self, now: DateTime<Utc>) -> anyhow::Result<HookTally> {
        let claimed = self.outbox.claim_webhooks(now, self.lease(), BATCH).await?;
        if claimed.is_empty() {
            return Ok(HookTally::default());
        }
        let ids: Vec<_> = claimed.iter().map(|h| h.lead).collect();
        let leads = Arc::new(self.outbox.leads(&ids).await?);
        let project = self
            .project
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut tasks = Vec::with_capacity(claimed.len());
        // Each address parsed once a round, not once a call.
        let mut urls: HashMap<String, Result<reqwest::Url, String>> = HashMap::new();
        for h in claimed {
            // The funnel's own webhook of that name, else the project-wide one.
            let named = h.webhook.as_deref().unwrap_or_default();
            let target = h
                .funnel
                .as_ref()
                .and_then(|f| project.funnels.iter().find(|x| x.id.value == *f))
                .and_then(|f| f.webhooks.iter().find(|(k, _)| k.as_str() == named))
                .map(|(_, w)| w)
                .or_else(|| self.shared.iter().find(|w| w.id.as_str() == named))
                .cloned();
            let Some(w) = target else {
                let why = format!(
                    "no webhook \"{}\" in funnel \"{}\" now",
                    h.webhook.as_deref().unwrap_or_default(),
                    h.funnel.as_ref().map(|f| f.as_str()).unwrap_or_default()
                );
                tasks.push(tokio::spawn(async move { (h, Called::Failed(why)) }));
                continue;
            };
            let url = match urls.get(&w.url) {
                Some(url) => url.clone(),
                None => {
                    let url = reqwest::Url::parse(&w.url).map_err(|e| format!("bad address: {e}"));
                    urls.insert(w.url.clone(), url.clone());
                    url
                }
            };
            let url = match url {
                Ok(url) => url,
                Err(why) => {
                    tasks.push(tokio::spawn(async move { (h, Called::Failed(why)) }));
                    continue;
                }
            };
            let (client, leads, gate) = (self.client.clone(), leads.clone(), self.endpoint(&w.url));
            tasks.push(tokio::spawn(async move {
                let _turn = gate.acquire_owned().await;
                let called = call(&client, &w, url, &h, leads.get(&h.lead), now).await;
                (h, called)
            }));
        }
        let mut tally = HookTally::default();
        let mut delivered = Vec::new();
        for t in tasks {
            let Ok((h, called)) = t.await else { continue };
            match called {
                Called::Delivered => {
                    delivered.push(h.id);
                    tally.delivered += 1;
                }
                Called::Later(at, why) => {
                    let at = at.unwrap_or_else(|| super::next_attempt(now, h.attempts, h.id));
                    self.outbox.retry(h.id, at, &why).await?;
                    tally.retried += 1;
                }
                Called::Failed(why) => {
                    tracing::warn!(message = h.id, webhook = ?h.webhook, error = %why, "webhook call failed");
                    self.outbox.failed(h.id, &why).await?;
                    tally.failed += 1;
                }
            }
        }
        // One write for the round's delivered calls: recording each as it is delivered (the
        // email sender's group commit) repeated fewer after a kill but made the calls 10-20 %
        // slower (BENCHMARKS.md).
        if !delivered.is_empty() {
            self.outbox.sent(&delivered, now).await?;
        }
        if let Some(m) = &self.metrics {
            m.webhooks_delivered.inc_by(tally.delivered as u64);
            m.webhooks_retried.inc_by(tally.retried as u64);
            m.webhooks_failed.inc_by(tally.failed as u64);
        }
        Ok(tally)
    }

    /// Makes every call due at `now`: [`PIPELINES`] rounds at once, so one round's claim and
    /// record overlap another's calls in flight.
    pub async fn drain(&self, now: DateTime<Utc>) -> anyhow::Result<HookTally> {
        let one = || async {
            let mut total = HookTally::default();
            loop {
                let t = self.round(now).await?;
                total.delivered += t.delivered;
                total.retried += t.retried;
                total.failed += t.failed;
                if t.delivered + t.retried + t.failed == 0 {
                    return anyhow::Ok(total);
                }
            }
        };
        let mut total = HookTally::default();
        for t in futures_util::future::join_all((0..PIPELINES).map(|_| one())).await {
            let t = t?;
            total.delivered += t.delivered;
            total.retried += t.retried;
            total.failed += t.failed;
        }
        Ok(total)
    }

    /// Calls until `shutdown`: every call due, then a look again every second.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.drain(Utc::now()).await {
                tracing::error!(error = %e, "webhook round failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}

/// One attempt of one call.
async fn call(
    client: &reqwest::Client,
    w: &crate::funnel::model::Webhook,
    url: reqwest::Url,
    h: &OutgoingHook,
    lead: Option<&Lead>,
    now: DateTime<Utc>,
) -> Called {
    let body = body(h, lead, now);
    let id = message_id(h);
    let ts = now.timestamp();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string());
    if let Some(secret) = w
        .secret_env
        .as_deref()
        .and_then(|v| std::env::var(v).ok())
        .filter(|s| !s.is_empty())
    {
        req = req.header(
            "webhook-signature",
            signature(&secret, &id, ts, body.as_bytes()),
        );
    }
    match req.body(body).send().await {
        Ok(answer) => {
            let retry_after = answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            outcome(answer.status().as_u16(), retry_after.as_deref(), h, now)
        }
        Err(e) => {
            let why = if e.is_timeout() {
                "no answer in time".to_string()
            } else {
                format!("cannot call: {e}")
            };
            later(h, now, None, why)
        }
    }
}
