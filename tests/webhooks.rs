//! Outbound webhooks against a real HTTP receiver on 127.0.0.1: delivered and signed (the
//! signature checked by Python's `hmac`, an independent implementation), a 500 and a 429
//! with `Retry-After` tried again when due, a 410 failed for good, listed as a dead letter and
//! queued again, a receiver that does not answer in time tried again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use autofunnel::delivery::webhook::{HookTally, Hooks};
use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::store::{LeadInput, Store};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::util::{fid, on_both_backends, project_of};

/// The signing secret, in an environment variable no other test reads.
const SECRET_ENV: &str = "AUTOFUNNEL_TEST_WEBHOOK_SECRET";
/// `whsec_` and the base64 of the key `test-webhook-key`.
const SECRET: &str = "whsec_dGVzdC13ZWJob29rLWtleQ==";

/// What the receiver got: each request's headers and body, in order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, String)>>>);

/// A receiver whose answer depends on the lead's address and on how often it called before:
/// `ok` 200; `flaky` 500 then 200; `busy` 429 with `Retry-After: 120` then 200; `gone` 410
/// then (once queued again by hand) 200; `slow` answers after two seconds.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (got, seen) = (got.clone(), seen.clone());
                async move {
                    got.0.lock().unwrap().push((headers, body.clone()));
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let email = v["data"]["lead"]["email"].as_str().unwrap_or_default();
                    let who = email.split('@').next().unwrap_or_default().to_string();
                    let n = {
                        let mut s = seen.lock().unwrap();
                        let n = s.entry(who.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let mut h = HeaderMap::new();
                    let status = match (who.as_str(), n) {
                        ("flaky", 1) => StatusCode::INTERNAL_SERVER_ERROR,
                        ("busy", 1) => {
                            h.insert("retry-after", "120".parse().unwrap());
                            StatusCode::TOO_MANY_REQUESTS
                        }
                        ("gone", 1) => StatusCode::GONE,
                        ("slow", 1) => {
                            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                            StatusCode::OK
                        }
                        _ => StatusCode::OK,
                    };
                    (status, h, "")
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap()
}

/// Python's `hmac` over `id.timestamp.body` with the key after `whsec_`.
fn python_signature(id: &str, ts: &str, body: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; k=base64.b64decode(sys.argv[1][6:]); \
             m=(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.argv[4]).encode(); \
             print('v1,'+base64.b64encode(hmac.new(k,m,hashlib.sha256).digest()).decode())",
            SECRET,
            id,
            ts,
            body,
        ])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn webhooks_go_out(store: Store) {
    store.migrate().await.unwrap();
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var(SECRET_ENV, SECRET) };
    let (url, got) = receiver().await;
    let funnel = format!(
        r#"name: CRM
from: "Shop <shop@example.com>"
entry: {{ api: true }}
webhooks:
  crm:
    url: "{url}"
    secret_env: {SECRET_ENV}
stages:
  - id: won
    steps:
      - webhook: crm
      - wait: 30d
      - exit: converted
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/crm.yaml", &funnel)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let leads: Vec<(Email, LeadInput)> = ["ok", "flaky", "busy", "gone", "slow"]
        .iter()
        .map(|w| {
            let e = Email::parse(&format!("{w}@example.com")).unwrap();
            (e, LeadInput::default())
        })
        .collect();
    let ids: Vec<LeadId> = store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap();
    rt.enroll_many(&ids, &fid("crm"), t0()).await.unwrap();
    while rt.tick(t0()).await.unwrap() > 0 {}
    let hooks = Hooks::with_timeout(
        store.outbox(),
        p.clone(),
        std::time::Duration::from_millis(500),
    );
    let tally = |delivered, retried, failed| HookTally {
        delivered,
        retried,
        failed,
    };

    assert_eq!(hooks.round(t0()).await.unwrap(), tally(1, 3, 1));
    {
        let got = got.0.lock().unwrap();
        assert_eq!(got.len(), 5, "one call per lead");
        let (h, body) = got
            .iter()
            .find(|(_, b)| b.contains("ok@example.com"))
            .unwrap();
        let header = |k: &str| h.get(k).unwrap().to_str().unwrap().to_string();
        let (id, ts) = (header("webhook-id"), header("webhook-timestamp"));
        assert_eq!(ts, t0().timestamp().to_string());
        assert_eq!(
            header("webhook-signature"),
            python_signature(&id, &ts, body),
            "signed the Standard Webhooks way"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["id"],
            id.as_str(),
            "the body carries the id to drop a repeat"
        );
        assert_eq!(v["data"]["webhook"], "crm");
        assert_eq!(v["data"]["funnel"], "crm");
        assert_eq!(v["data"]["stage"], "won");
        assert_eq!(v["data"]["lead"]["id"], ids[0].0);
    }
    // Nothing is due 30 seconds later: the 500 and the timeout wait their backoff (a minute,
    // up to a fifth more), the 429 its two minutes.
    let at = |s: i64| t0() + Duration::seconds(s);
    assert_eq!(hooks.round(at(30)).await.unwrap(), tally(0, 0, 0));
    assert_eq!(hooks.round(at(100)).await.unwrap(), tally(2, 0, 0));
    assert_eq!(hooks.round(at(121)).await.unwrap(), tally(1, 0, 0));
    assert_eq!(got.0.lock().unwrap().len(), 8);

    // The 410 is a dead letter; queued again, it goes.
    let failed = store.failed_webhooks(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(store.failed_webhook_count().await.unwrap(), 1);
    assert_eq!(failed[0].lead, ids[3].0);
    assert_eq!(failed[0].last_error.as_deref(), Some("HTTP 410"));
    assert!(store.retry_webhook(failed[0].id, at(200)).await.unwrap());
    assert!(
        !store.retry_webhook(failed[0].id, at(200)).await.unwrap(),
        "only a failed call is queued again"
    );
    assert_eq!(hooks.round(at(200)).await.unwrap(), tally(1, 0, 0));
    assert!(store.failed_webhooks(10).await.unwrap().is_empty());
    assert_eq!(store.failed_webhook_count().await.unwrap(), 0);
    assert_eq!(
        hooks.round(at(3600)).await.unwrap(),
        tally(0, 0, 0),
        "each call once"
    );
    // The lead's export lists the calls made about it (and no email for them).
    let record = store.export_lead(ids[3]).await.unwrap().unwrap();
    let calls = record["webhooks"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{record}");
    assert_eq!(
        (
            &calls[0]["webhook"],
            &calls[0]["stage"],
            &calls[0]["status"]
        ),
        (
            &serde_json::json!("crm"),
            &serde_json::json!("won"),
            &serde_json::json!("sent")
        )
    );
    assert_eq!(record["emails"], serde_json::json!([]));
}

/// A CRM mirrors each lead without a step in the funnel: a project-wide webhook subscribed to
/// `stage.entered`, `funnel.exited` and `purchase` is called for each, queued in the
/// transaction that writes what it tells.
async fn lifecycle_mirrored(store: Store) {
    use autofunnel::domain::{Event, EventKind, Lifecycle};
    store.migrate().await.unwrap();
    let (url, got) = receiver().await;
    let store = store.with_subscriptions(vec![autofunnel::store::Subscription {
        webhook: "crm".into(),
        events: vec![
            Lifecycle::StageEntered,
            Lifecycle::FunnelExited,
            Lifecycle::Purchase,
        ],
        funnels: Vec::new(),
    }]);
    let funnel = r#"name: Course
from: "Shop <shop@example.com>"
entry: { api: true }
products:
  course: { price: 100, currency: EUR }
stages:
  - id: lead
    on: [{ event: purchase, product: course, goto: bought }]
    steps:
      - wait: 30d
      - exit: not_converted
  - id: bought
    steps:
      - exit: converted
"#;
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/course.yaml", funnel)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let mia = Email::parse("mia@example.com").unwrap();
    let ids = store
        .import_leads(&[(mia, LeadInput::default())], Consent::Confirmed, t0())
        .await
        .unwrap();
    rt.enroll_many(&ids, &fid("course"), t0()).await.unwrap();
    while rt.tick(t0()).await.unwrap() > 0 {}
    let later = t0() + Duration::hours(1);
    let buy = Event {
        product: Some("course".into()),
        amount: autofunnel::domain::Money::of_units(100.0),
        currency: Some("EUR".into()),
        ..Event::of(EventKind::Purchase)
    };
    rt.event(ids[0], buy, Some("order-1".into()), later)
        .await
        .unwrap();
    while rt.tick(later).await.unwrap() > 0 {}
    let shared = std::collections::BTreeMap::from([(
        "crm".to_string(),
        autofunnel::settings::WebhookSettings {
            url,
            secret_env: None,
            events: vec!["stage.entered".into()],
            funnels: Vec::new(),
        },
    )]);
    let hooks = Hooks::new(store.outbox(), p.clone()).with_shared(&shared);
    assert_eq!(hooks.round(later).await.unwrap().delivered, 4);
    let mut seen: Vec<String> = got
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            let d = &v["data"];
            assert_eq!(d["lead"]["email"], "mia@example.com");
            let what = d["stage"]
                .as_str()
                .or(d["outcome"].as_str())
                .or(d["product"].as_str())
                .unwrap_or_default();
            format!("{} {what}", v["type"].as_str().unwrap())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "funnel.exited converted",
            "purchase course",
            "stage.entered bought",
            "stage.entered lead",
        ]
    );
    assert_eq!(
        hooks.round(later).await.unwrap(),
        HookTally::default(),
        "once each"
    );
    // A new address from a signup or an event is a `lead.created`; a known one is not.
    let store = store.with_subscriptions(vec![autofunnel::store::Subscription {
        webhook: "crm".into(),
        events: vec![Lifecycle::LeadCreated],
        funnels: Vec::new(),
    }]);
    let signup = |e: &str| autofunnel::store::NewSignup {
        email: Email::parse(e).unwrap(),
        input: LeadInput::default(),
        touch: autofunnel::store::NewTouch {
            channel: "form".into(),
            ..Default::default()
        },
        form: "optin".into(),
        requester: Default::default(),
        consent_text: None,
    };
    store
        .record_signups(
            &[signup("new@example.com"), signup("mia@example.com")],
            later,
        )
        .await
        .unwrap();
    let batch = ["from-shop@example.com", "mia@example.com"]
        .iter()
        .map(|e| autofunnel::store::BatchEvent {
            who: autofunnel::store::LeadRef::Email(Email::parse(e).unwrap()),
            event: Event::of(EventKind::parse("visited").unwrap()),
            idempotency_key: None,
            occurred_at: later,
            touch: None,
            fields: Default::default(),
        })
        .collect();
    store.record_batch(batch, &[], later).await.unwrap();
    got.0.lock().unwrap().clear();
    assert_eq!(hooks.round(later).await.unwrap().delivered, 2);
    let mut created: Vec<String> = got
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(v["type"], "lead.created");
            v["data"]["lead"]["email"].as_str().unwrap().to_string()
        })
        .collect();
    created.sort();
    assert_eq!(created, ["from-shop@example.com", "new@example.com"]);
}

/// A caller stopped mid-round (its round dropped while calls are in flight, as a kill would
/// leave them) repeats, after the round's lease, only the calls it had not recorded, with the
/// same `webhook-id`; every call is made, none is lost.
async fn stopped_mid_round(store: Store) {
    store.migrate().await.unwrap();
    let (url, got) = receiver().await;
    let funnel = format!(
        "name: CRM\nentry: {{ api: true }}\nwebhooks:\n  crm:\n    url: \"{url}\"\n\
         stages:\n  - id: won\n    steps:\n      - webhook: crm\n      - wait: 30d\n      - exit: completed\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/crm.yaml", &funnel)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    // `slow` answers after two seconds: the round is stopped while it waits.
    let leads: Vec<(Email, LeadInput)> = (0..6)
        .map(|i| {
            let who = if i == 0 {
                "slow".to_string()
            } else {
                format!("ok{i}")
            };
            let e = Email::parse(&format!("{who}@example.com")).unwrap();
            (e, LeadInput::default())
        })
        .collect();
    let ids = store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap();
    rt.enroll_many(&ids, &fid("crm"), t0()).await.unwrap();
    while rt.tick(t0()).await.unwrap() > 0 {}
    let hooks = Hooks::new(store.outbox(), p.clone());
    let stopped =
        tokio::time::timeout(std::time::Duration::from_millis(300), hooks.round(t0())).await;
    assert!(
        stopped.is_err(),
        "the round was stopped with a call in flight"
    );
    // The lease outlasts the slowest round: 200 calls to one URL, 8 at a time, each up to
    // 10 s, and a minute more.
    assert_eq!(hooks.lease(), Duration::seconds(25 * 10 + 60));
    // The calls already answered were made, not recorded: within the lease nothing is due.
    assert_eq!(hooks.round(t0()).await.unwrap(), HookTally::default());
    let later = t0() + hooks.lease() + Duration::seconds(1);
    let again = hooks.round(later).await.unwrap();
    assert_eq!(
        again.delivered, 6,
        "every call of the stopped round, made again"
    );
    assert_eq!(hooks.round(later).await.unwrap(), HookTally::default());
    // Each lead's call arrived at most twice, every repeat with the first one's id.
    let got = got.0.lock().unwrap();
    let mut ids_seen: HashMap<String, Vec<String>> = HashMap::new();
    for (h, body) in got.iter() {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let email = v["data"]["lead"]["email"].as_str().unwrap().to_string();
        let id = h.get("webhook-id").unwrap().to_str().unwrap().to_string();
        ids_seen.entry(email).or_default().push(id);
    }
    assert_eq!(ids_seen.len(), 6, "no call lost");
    for (lead, calls) in &ids_seen {
        assert!(calls.len() <= 2, "{lead}: {calls:?}");
        assert!(calls.iter().all(|c| *c == calls[0]), "{lead}: {calls:?}");
    }
}

on_both_backends! {
    go_out => webhooks_go_out,
    mirrored => lifecycle_mirrored,
    stopped => stopped_mid_round,
}

/// A call that keeps failing is given up a day after it was queued.
#[test]
fn given_up_after_a_day() {
    use autofunnel::delivery::webhook::{Called, outcome};
    let h = autofunnel::store::OutgoingHook {
        id: 7,
        lead: LeadId(1),
        funnel: None,
        stage: None,
        step: None,
        webhook: Some("crm".into()),
        event: None,
        detail: Default::default(),
        attempts: 3,
        created_at: t0(),
    };
    assert!(matches!(outcome(503, None, &h, t0()), Called::Later(..)));
    assert_eq!(
        outcome(400, None, &h, t0()),
        Called::Failed("HTTP 400".into())
    );
    let late = t0() + Duration::hours(23) + Duration::minutes(59);
    assert!(matches!(
        outcome(503, Some("3600"), &h, late),
        Called::Failed(why) if why.contains("given up")
    ));
    assert_eq!(
        outcome(429, Some("60"), &h, t0()),
        Called::Later(Some(t0() + Duration::seconds(60)), "HTTP 429".into())
    );
    assert_eq!(outcome(204, None, &h, t0()), Called::Delivered);
}
