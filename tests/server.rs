//! The HTTP server on port 0 with a real client and a temporary database.

use autofunnel::server::{AppState, serve};
use autofunnel::store::Store;
use tokio::net::TcpListener;

type Running = tokio::task::JoinHandle<std::io::Result<()>>;

/// The real server on port 0: its address, its stop switch and its task.
async fn start(
    state: AppState,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Running,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

#[tokio::test]
async fn healthz_answers_ok_while_the_database_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let funnel = |id: &str| {
        (
            format!("funnels/{id}.yaml"),
            "name: F\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
             stages:\n  - id: s\n    steps:\n      - exit: completed\n"
                .to_string(),
        )
    };
    let files = [funnel("one"), funnel("two")];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let p = crate::util::project_of(dir.path(), &files);
    let rt = crate::util::engine(&store, &p, chrono::Utc::now()).await;
    let (addr, stop, server) = start(AppState {
        secret: std::sync::Arc::from(&b"k"[..]),
        ..crate::util::off(&rt)
    })
    .await;
    let resp = crate::util::http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["funnels"], 2);
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["scheduler"]["lag_seconds"], 0.0);
    assert_eq!(
        body["outbox"],
        serde_json::json!({ "queued": 0, "sending": 0, "oldest_due_seconds": 0.0 })
    );
    assert_eq!(body["problems"], serde_json::json!([]));
    let missing = crate::util::http()
        .get(format!("http://{addr}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A scheduler two hours behind its timers and an email due as long: still 200, `degraded`,
/// both named.
#[tokio::test]
async fn healthz_says_degraded_when_work_is_overdue() {
    use autofunnel::domain::{Consent, Email};
    use autofunnel::store::LeadInput;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let p = crate::util::project_of(
        dir.path(),
        &[
            (
                "funnels/welcome.yaml",
                "name: Welcome\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hello\n      - wait: 1h\n      - exit: completed\n",
            ),
            ("templates/welcome/hello.subject", "Hello"),
            ("templates/welcome/hello.html", "<p>Hello</p>"),
        ],
    );
    let then = chrono::Utc::now() - chrono::Duration::hours(2);
    let rt = autofunnel::runtime::Runtime::new(store.clone(), p.funnels.clone(), "node-a", then)
        .await
        .unwrap();
    let lead = store
        .import_leads(
            &[(
                Email::parse("anna@example.com").unwrap(),
                LeadInput::default(),
            )],
            Consent::Confirmed,
            then,
        )
        .await
        .unwrap()[0];
    rt.enroll(lead, &crate::util::fid("welcome"), then)
        .await
        .unwrap();
    let rt = std::sync::Arc::new(rt);
    let (addr, stop, server) = start(AppState {
        secret: std::sync::Arc::from(&b"k"[..]),
        ..crate::util::off(&rt)
    })
    .await;
    let resp = crate::util::http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    let lag = body["scheduler"]["lag_seconds"].as_f64().unwrap();
    assert!((3590.0..3700.0).contains(&lag), "{body}");
    assert_eq!(body["outbox"]["queued"], 1);
    let waited = body["outbox"]["oldest_due_seconds"].as_f64().unwrap();
    assert!((7190.0..7300.0).contains(&waited), "{body}");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("scheduler") && problems.contains("email"),
        "{problems}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

fn signed(secret: &[u8], ts: i64, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bounce and complaint reports: signed and fresh ones suppress the address and reach the
/// engine once; forged, stale or malformed ones are refused and change nothing.
#[tokio::test]
async fn delivery_reports_are_verified_then_suppress() {
    use autofunnel::domain::Email;
    use autofunnel::runtime::Runtime;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let rt = Arc::new(
        Runtime::new(store.clone(), vec![], "node", now)
            .await
            .unwrap(),
    );
    let anna = Email::parse("anna@example.com").unwrap();
    let lead = store
        .upsert_lead(&anna, Default::default(), now)
        .await
        .unwrap();
    let secret: &[u8] = b"hooks secret 1234";
    let (addr, stop, server) = start(AppState {
        hooks_secret: Some(Arc::from(secret)),
        secret: std::sync::Arc::from(&b"k"[..]),
        ..crate::util::off(&rt)
    })
    .await;
    let client = crate::util::http();
    let post = |body: &'static str, ts: i64, sig: String| {
        client
            .post(format!("http://{addr}/hooks/delivery"))
            .header("X-Autofunnel-Timestamp", ts.to_string())
            .header("X-Autofunnel-Signature", sig)
            .body(body)
            .send()
    };
    let ts = now.timestamp();
    let bounce = r#"{"type": "bounce", "email": "Anna@Example.com", "id": "evt-1"}"#;
    // Forged, stale and malformed reports: refused, nothing stored.
    let forged = post(bounce, ts, signed(b"wrong", ts, bounce))
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let stale = post(bounce, ts - 3600, signed(secret, ts - 3600, bounce))
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let odd = r#"{"type": "delivered", "email": "anna@example.com"}"#;
    let resp = post(odd, ts, signed(secret, ts, odd)).await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "type");
    assert!(store.lead_events(lead.id).await.unwrap().is_empty());
    // A good one, twice (providers retry): one event, the address suppressed.
    for _ in 0..2 {
        let ok = post(bounce, ts, signed(secret, ts, bounce)).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let kinds: Vec<String> = store
        .lead_events(lead.id)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["bounced"]);
    assert!(!rt.lead_facts(lead.id, now).await.unwrap().mailable);
    // A complaint about an address with no lead yet suppresses it for when one arrives.
    let complaint = r#"{"type": "complaint", "email": "boris@example.com"}"#;
    let ok = post(complaint, ts, signed(secret, ts, complaint))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let boris = store
        .upsert_lead(
            &Email::parse("boris@example.com").unwrap(),
            Default::default(),
            now,
        )
        .await
        .unwrap();
    assert!(!rt.lead_facts(boris.id, now).await.unwrap().mailable);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Regression: a connection that sent half a request head was kept open for ever. Now a
/// request's head must arrive within `HEADER_TIMEOUT`, and a kept-alive connection idle that
/// long is closed too. The clock is tokio's, paused: the timeouts pass without waiting.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    use autofunnel::server::HEADER_TIMEOUT;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let rt = std::sync::Arc::new(
        autofunnel::runtime::Runtime::new(store.clone(), vec![], "node", chrono::Utc::now())
            .await
            .unwrap(),
    );
    let (addr, stop, server) = start(crate::util::off(&rt)).await;
    tokio::time::pause();
    // Half a head, then nothing: cut off once the header timeout has passed, not before.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(HEADER_TIMEOUT * 6, slow.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the half-sent request was still open");
    assert!(
        started.elapsed() >= HEADER_TIMEOUT,
        "closed before the timeout"
    );
    // A whole request is answered; the connection then idles, and is closed.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(HEADER_TIMEOUT * 6, idle.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the idle kept-alive connection was still open"
    );
    tokio::time::resume();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
