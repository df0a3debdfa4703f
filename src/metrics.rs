//! What `GET /metrics` shows, in Prometheus text format (prometheus-client): counters kept in
//! memory by the server and the sender since the process started, and gauges read from the
//! database when scraped (outbox depth, wake-up lag).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The process's metrics; shared by the server and the sender.
pub struct Metrics {
    registry: Registry,
    pub signups: Counter,
    pub events: Counter,
    pub emails_sent: Counter,
    pub emails_retried: Counter,
    pub emails_failed: Counter,
    pub emails_suppressed: Counter,
    pub webhooks_delivered: Counter,
    pub webhooks_retried: Counter,
    pub webhooks_failed: Counter,
    outbox_queued: Gauge,
    outbox_sending: Gauge,
    wake_lag: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("autofunnel");
        let m = Metrics {
            signups: Counter::default(),
            events: Counter::default(),
            emails_sent: Counter::default(),
            emails_retried: Counter::default(),
            emails_failed: Counter::default(),
            emails_suppressed: Counter::default(),
            webhooks_delivered: Counter::default(),
            webhooks_retried: Counter::default(),
            webhooks_failed: Counter::default(),
            outbox_queued: Gauge::default(),
            outbox_sending: Gauge::default(),
            wake_lag: Gauge::default(),
            registry: Registry::default(),
        };
        let counters = [
            ("signups", "Landing-page signups stored", &m.signups),
            (
                "events",
                "Events received (API, webhooks, clicks, opens)",
                &m.events,
            ),
            (
                "emails_sent",
                "Emails accepted by the transport",
                &m.emails_sent,
            ),
            (
                "emails_retried",
                "Send attempts that failed transiently and were queued again",
                &m.emails_retried,
            ),
            ("emails_failed", "Emails given up", &m.emails_failed),
            (
                "emails_suppressed",
                "Queued emails dropped because the address was suppressed",
                &m.emails_suppressed,
            ),
            (
                "webhooks_delivered",
                "Webhook calls answered with 2xx",
                &m.webhooks_delivered,
            ),
            (
                "webhooks_retried",
                "Webhook calls that failed transiently and were queued again",
                &m.webhooks_retried,
            ),
            (
                "webhooks_failed",
                "Webhook calls given up (the dead letters)",
                &m.webhooks_failed,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "outbox_queued",
            "Emails waiting for an attempt",
            m.outbox_queued.clone(),
        );
        registry.register(
            "outbox_sending",
            "Emails with an attempt in flight",
            m.outbox_sending.clone(),
        );
        registry.register(
            "wake_lag_seconds",
            "How long the most overdue timer has been due",
            m.wake_lag.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text a scrape gets, with the gauges read from the database now.
    pub async fn render(
        &self,
        store: &crate::store::Store,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<String> {
        let (queued, sending) = store.outbox_depth().await?;
        self.outbox_queued.set(queued);
        self.outbox_sending.set(sending);
        let lag = store
            .next_wake()
            .await?
            .map(|w| (now - w).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.wake_lag.set(lag);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
