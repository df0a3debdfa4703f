//! The admin API through the real server: find, export, tag, enroll, list funnels, erase;
//! without the token nothing is shown or changed.

use std::path::Path;
use std::sync::Arc;

use autofunnel::delivery::{Sender, Transport};
use autofunnel::domain::{Consent, Email};
use autofunnel::project;
use autofunnel::server::AppState;
use autofunnel::store::{LeadInput, Store};
use chrono::Utc;
use serde_json::{Value, json};

use crate::util::{Server, on_both_backends, project_of};

const ADMIN: &str = "admin token, 16+ chars";

fn project(dir: &Path) -> Arc<project::Project> {
    project_of(
        dir,
        &[
            (
                "funnels/welcome.yaml",
                "name: Welcome\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hello\n      - wait: 7d\n      - exit: completed\n",
            ),
            ("templates/welcome/hello.subject", "Hello"),
            ("templates/welcome/hello.html", "<p>Hello</p>"),
        ],
    )
}

async fn admin_api(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let (listener, base) = Server::bind().await;
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let server = Server::start(
        listener,
        AppState {
            admin_token: Some(Arc::from(ADMIN)),
            outbox_dir: Some(Arc::from(outbox.as_path())),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let email = Email::parse("anna@example.com").unwrap();
    let id = store
        .import_leads(
            &[(email.clone(), LeadInput::default())],
            Consent::Confirmed,
            now,
        )
        .await
        .unwrap()[0]
        .0;

    // No token, a wrong one: refused, nothing changed.
    for token in [None, Some("wrong token of 16+ chars")] {
        let mut r = client.delete(format!("{base}/api/v1/leads/{id}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
    assert!(store.lead_by_email(&email).await.unwrap().is_some());

    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    use reqwest::Method;
    let r = call(
        Method::POST,
        &format!("/api/v1/leads/{id}/enroll"),
        Some(json!({ "funnel": "welcome" })),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "enrolled");
    let r = call(
        Method::POST,
        &format!("/api/v1/leads/{id}/enroll"),
        Some(json!({ "funnel": "welcome" })),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "already in");
    let r = call(
        Method::POST,
        &format!("/api/v1/leads/{id}/enroll"),
        Some(json!({ "funnel": "nope" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let r = call(
        Method::POST,
        &format!("/api/v1/leads/{id}/tags"),
        Some(json!({ "tag": "vip" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        Method::POST,
        &format!("/api/v1/leads/{id}/tags"),
        Some(json!({ "tag": "not a tag!" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);

    // Find by address: the export holds the tag, the enrollment and the queued email.
    let r = call(Method::GET, "/api/v1/leads?email=anna%40example.com", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["lead"]["id"], id);
    assert_eq!(v["lead"]["tags"], json!(["vip"]));
    assert_eq!(v["enrollments"][0]["funnel"], "welcome");
    assert_eq!(v["enrollments"][0]["history"][0]["stage"], "hello");
    assert_eq!(v["enrollments"][0]["history"][0]["exited_at"], Value::Null);
    assert_eq!(v["emails"][0]["template"], "hello");
    let r = call(
        Method::GET,
        "/api/v1/leads?email=nobody%40example.com",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    let r = call(Method::GET, "/api/v1/funnels", None).await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["funnels"][0]["id"], "welcome");
    assert_eq!(v["funnels"][0]["enrollments"]["active"], 1);
    assert_eq!(v["funnels"][0]["emails"]["queued"], 1);

    // Another lead's email, and both written to the outbox folder.
    let bob = Email::parse("bob@example.com").unwrap();
    let bob_id = store
        .import_leads(
            &[(bob.clone(), LeadInput::default())],
            Consent::Confirmed,
            now,
        )
        .await
        .unwrap()[0];
    rt.enroll(bob_id, &crate::util::fid("welcome"), now)
        .await
        .unwrap();
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox.clone()),
        &base,
        b"k",
    );
    assert_eq!(sender.round(Utc::now()).await.unwrap().sent, 2);
    let files = || -> Vec<String> {
        std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    };
    assert_eq!(files().len(), 2);

    // Erase: the lead and everything about them are gone, their email file too.
    let r = call(Method::DELETE, &format!("/api/v1/leads/{id}"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(store.lead_by_email(&email).await.unwrap().is_none());
    let left = files();
    assert_eq!(left.len(), 1);
    assert!(left[0].contains("bob@example.com") && !left[0].contains("anna@"));
    let r = call(Method::GET, &format!("/api/v1/leads/{id}"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = call(Method::DELETE, &format!("/api/v1/leads/{id}"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = call(Method::GET, "/api/v1/funnels", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["funnels"][0]["enrollments"], json!({ "active": 1 }));
    assert_eq!(v["funnels"][0]["emails"], json!({ "sent": 1 }));

    server.stop().await;
}

/// Taking a lead out of a funnel ends the run (`removed`) and drops the email it had queued;
/// a tag given through the API starts the funnel entered by that tag; untagging removes it.
async fn remove_and_tags(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/welcome.yaml",
                "name: Welcome\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hello\n      - wait: 7d\n      - exit: completed\n",
            ),
            (
                "funnels/vip.yaml",
                "name: VIP\nfrom: \"Shop <shop@example.com>\"\nentry: { tag: vip }\n\
                 stages:\n  - id: vip\n    steps:\n      - wait: 7d\n      - exit: completed\n",
            ),
            ("templates/welcome/hello.subject", "Hello"),
            ("templates/welcome/hello.html", "<p>Hello</p>"),
        ],
    );
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            admin_token: Some(Arc::from(ADMIN)),
            ..crate::util::off(&rt)
        },
    );
    let id = store
        .import_leads(
            &[(
                Email::parse("anna@example.com").unwrap(),
                LeadInput::default(),
            )],
            Consent::Confirmed,
            now,
        )
        .await
        .unwrap()[0]
        .0;
    let client = crate::util::http();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    use reqwest::Method;
    let welcome = json!({ "funnel": "welcome" });
    let v = call(
        Method::POST,
        format!("/api/v1/leads/{id}/enroll"),
        Some(welcome.clone()),
    )
    .await;
    assert_eq!(v["status"], "enrolled");
    let v = call(
        Method::POST,
        format!("/api/v1/leads/{id}/remove"),
        Some(welcome.clone()),
    )
    .await;
    assert_eq!(v["status"], "removed");
    let v = call(Method::GET, format!("/api/v1/leads/{id}"), None).await;
    assert_eq!(v["enrollments"][0]["status"], "exited", "{v}");
    assert_eq!(v["enrollments"][0]["outcome"], "removed", "{v}");
    assert_eq!(
        v["events"].as_array().unwrap().last().unwrap()["event"],
        "removed"
    );
    // The welcome email queued before the removal never goes out.
    let outbox = dir.path().join("outbox");
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox.clone()),
        &base,
        b"link secret",
    );
    let tally = sender.drain(Utc::now()).await.unwrap();
    assert_eq!((tally.sent, tally.suppressed), (0, 1), "{tally:?}");
    assert!(!outbox.exists() || std::fs::read_dir(&outbox).unwrap().next().is_none());
    let v = call(
        Method::POST,
        format!("/api/v1/leads/{id}/remove"),
        Some(welcome),
    )
    .await;
    assert_eq!(v, json!({ "status": "not in" }));

    // The tag starts the VIP funnel; untagging takes the tag away (the run goes on).
    call(
        Method::POST,
        format!("/api/v1/leads/{id}/tags"),
        Some(json!({ "tag": "vip" })),
    )
    .await;
    let v = call(Method::GET, format!("/api/v1/leads/{id}"), None).await;
    let funnels: Vec<&str> = v["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["funnel"].as_str().unwrap())
        .collect();
    assert_eq!(funnels, ["welcome", "vip"], "{v}");
    assert_eq!(v["lead"]["tags"], json!(["vip"]));
    call(Method::DELETE, format!("/api/v1/leads/{id}/tags/vip"), None).await;
    let v = call(Method::GET, format!("/api/v1/leads/{id}"), None).await;
    assert_eq!(v["lead"]["tags"], json!([]));
    server.stop().await;
}

on_both_backends! {
    admin => admin_api,
    remove => remove_and_tags,
}
