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

/// What an erase leaves: nothing that holds the address or the lead's id, in any table or in
/// the outbox folder, but the key of its suppression (`sha256:` of the address). The lead
/// signed up through the form (touch, event, consent given with its text, address and
/// browser), was sent an email (written to the outbox folder), bought, and unsubscribed with
/// one click (suppression, consent withdrawn) before being erased through the admin API.
async fn erase_leaves_only_the_suppression_key(store: Store) {
    use autofunnel::tokens::{self, LeadLink};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/club.yaml",
                "name: Club\nfrom: \"Shop <shop@example.com>\"\n\
                 entry: { form: { id: join, consent: legal/club-v1.txt } }\n\
                 stages:\n  - id: in\n    steps:\n      - send: hello\n      - wait: 7d\n      - exit: completed\n",
            ),
            ("legal/club-v1.txt", "I agree to the Club's letters."),
            (
                "templates/club/hello.subject",
                "Hello {{ lead.first_name }}",
            ),
            (
                "templates/club/hello.html",
                "<p>Hello, {{ lead.email }}</p>",
            ),
        ],
    );
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let (listener, base) = Server::bind().await;
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    const SECRET: &[u8] = b"erase secret";
    let server = Server::start(
        listener,
        AppState {
            admin_token: Some(Arc::from(ADMIN)),
            outbox_dir: Some(Arc::from(outbox.as_path())),
            secret: Arc::from(SECRET),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let address = "zoe.erase-me@example.org";
    for who in [address, "kept@example.org"] {
        let r = client
            .post(format!("{base}/f/join"))
            .form(&[("email", who), ("first_name", "Zoe"), ("utm_source", "ads")])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success() || r.status().is_redirection());
    }
    while rt.tick(Utc::now()).await.unwrap() > 0 {}
    let id = store
        .lead_by_email(&Email::parse(address).unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox.clone()),
        &base,
        SECRET,
    );
    assert_eq!(sender.round(Utc::now()).await.unwrap().sent, 2);
    let order = autofunnel::domain::Event {
        product: Some("course".into()),
        ..autofunnel::domain::Event::of(autofunnel::domain::EventKind::Purchase)
    };
    rt.event(id, order, None, Utc::now()).await.unwrap();
    let u = format!(
        "{base}/u/{}",
        tokens::lead_token(SECRET, LeadLink::Unsubscribe, id)
    );
    let r = client
        .post(&u)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let with_address = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                std::fs::read_to_string(e.as_ref().unwrap().path())
                    .unwrap()
                    .contains(address)
            })
            .count()
    };
    assert_eq!(with_address(&outbox), 1, "the lead's email was written");

    let r = client
        .delete(format!("{base}/api/v1/leads/{}", id.0))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;

    // Every table, every row, every column.
    let key = autofunnel::store::suppression_key(address);
    let mut keys_left = 0;
    for table in store.tables().await.unwrap() {
        for row in store.table_text(&table).await.unwrap() {
            for (c, text) in row {
                assert!(
                    !text.to_lowercase().contains("erase-me"),
                    "{table}.{c} still holds the address: {text}"
                );
                let is_lead = c == "lead_id" || (table == "leads" && c == "id");
                assert!(
                    !(is_lead && text == id.0.to_string()),
                    "{table}.{c} still names the lead {}",
                    id.0
                );
                if text == key {
                    assert_eq!((table.as_str(), c.as_str()), ("suppressions", "email"));
                    keys_left += 1;
                }
            }
        }
    }
    assert_eq!(
        keys_left, 1,
        "the suppression is kept, by the key of the address"
    );
    assert_eq!(with_address(&outbox), 0, "the lead's email file is gone");
    // The other lead is untouched, and the address signing up again is not mailed.
    assert!(
        store
            .lead_by_email(&Email::parse("kept@example.org").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    let again = Email::parse(address).unwrap();
    assert_eq!(store.suppressions_of(&again).await.unwrap(), ["*"]);
}

on_both_backends! {
    admin => admin_api,
    remove => remove_and_tags,
    erase_everything => erase_leaves_only_the_suppression_key,
}
