//! Events from other systems through the real server: `POST /api/v1/events` (bearer token,
//! batches, purchases counted once per order id, the engine moved) and the signed
//! `POST /hooks/purchase`; every bad input names its field and stores nothing.

use std::path::Path;
use std::sync::Arc;

use autofunnel::domain::Email;
use autofunnel::domain::RunStatus;
use autofunnel::funnel::Outcome;
use autofunnel::project;
use autofunnel::server::AppState;
use autofunnel::store::Store;
use chrono::Utc;
use serde_json::{Value, json};

use crate::util::{Server, on_both_backends, project_of};

const TOKEN: &str = "api token of 16+ chars";
const HOOKS: &[u8] = b"hooks secret 1234";

fn project(dir: &Path) -> Arc<project::Project> {
    project_of(
        dir,
        &[(
            "funnels/course.yaml",
            "name: Course\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 products:\n  course: { name: Course, price: 49, currency: EUR }\n\
                 on:\n  - { event: purchase, product: course, exit: converted }\n\
                 stages:\n  - id: pitch\n    offer: course\n    steps:\n      - wait: 30d\n      - exit: not_converted\n",
        )],
    )
}

fn signed(ts: i64, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOKS).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn events_api(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            hooks_secret: Some(Arc::from(HOOKS)),
            api_token: Some(Arc::from(TOKEN)),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let api = format!("{base}/api/v1/events");
    let post = |body: Value| client.post(&api).bearer_auth(TOKEN).json(&body).send();

    // Without the token: 401, nothing stored.
    let r = client
        .post(&api)
        .json(&json!({ "email": "a@example.com", "event": "webinar_attended" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&api)
        .bearer_auth("wrong token, 16+ chars")
        .json(&json!({ "email": "a@example.com", "event": "webinar_attended" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let anna = Email::parse("anna@example.com").unwrap();
    assert!(store.lead_by_email(&anna).await.unwrap().is_none());

    // A custom event for an unknown address creates the lead.
    let r = post(json!({ "email": "anna@example.com", "event": "webinar_attended" }))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "accepted": 1, "duplicates": 0 })
    );
    let lead = store.lead_by_email(&anna).await.unwrap().unwrap().id;
    rt.enroll(lead, &crate::util::fid("course"), now)
        .await
        .unwrap();

    // A batch: the same order twice counts once, and the purchase ends the funnel converted.
    let purchase = json!({ "lead": lead.0, "event": "purchase", "order_id": "A-1",
                           "product": "course", "amount": 49.0, "currency": "EUR" });
    let r = post(json!({ "events": [purchase.clone(), purchase.clone()] }))
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "accepted": 1, "duplicates": 1 })
    );
    let e = &store
        .enrollments_of(lead, &crate::util::fid("course"))
        .await
        .unwrap()[0];
    assert_eq!(e.state.status, RunStatus::Exited(Outcome::Converted));
    let events = store.lead_events(lead).await.unwrap();
    let bought: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "purchase")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(bought.len(), 1);
    assert_eq!(bought[0]["amount"], 49.0);
    assert_eq!(bought[0]["currency"], "EUR");
    assert_eq!(bought[0]["product"], "course");

    // Bad input names the field; a batch with one bad event stores none of it.
    let stored = store.lead_events(lead).await.unwrap().len();
    let cases = [
        (
            json!({ "events": [
            { "lead": lead.0, "event": "webinar_attended", "id": "w-2" },
            { "email": "not an address", "event": "webinar_attended" } ] }),
            "events[1].email",
        ),
        (
            json!({ "lead": lead.0, "event": "purchase", "product": "course" }),
            "order_id",
        ),
        (
            json!({ "lead": lead.0, "event": "purchase", "order_id": "B-1" }),
            "product",
        ),
        (
            json!({ "lead": lead.0, "event": "purchase", "order_id": "B-1", "product": "course",
                 "amount": -3 }),
            "amount",
        ),
        (
            json!({ "lead": lead.0, "event": "purchase", "order_id": "B-1", "product": "course",
                 "currency": "euro" }),
            "currency",
        ),
        (json!({ "lead": lead.0, "event": "Bad Name" }), "event"),
        (json!({ "lead": lead.0, "event": "unsubscribed" }), "event"),
        (json!({ "event": "x" }), "email"),
        (
            json!({ "lead": lead.0, "event": "x", "occurred_at": "yesterday" }),
            "occurred_at",
        ),
        (
            json!({ "events": vec![json!({ "lead": lead.0, "event": "x" }); 1001] }),
            "events",
        ),
        // A lead that does not exist: refused naming the event, and the new address before
        // it is not created either (all or nothing).
        (
            json!({ "events": [
            { "email": "carol@example.com", "event": "webinar_attended" },
            { "lead": 424242, "event": "webinar_attended" } ] }),
            "events[1].lead",
        ),
        (json!({ "lead": -5, "event": "x" }), "lead"),
        (
            json!({ "event": "x", "events": [{ "lead": lead.0, "event": "x" }] }),
            "events",
        ),
        (
            json!({ "lead": lead.0, "event": "x", "id": "a\u{0}b" }),
            "id",
        ),
        (
            json!({ "lead": lead.0, "event": "x", "id": "y".repeat(201) }),
            "id",
        ),
    ];
    for (body, field) in cases {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["field"], field, "{body}");
    }
    let carol = Email::parse("carol@example.com").unwrap();
    assert!(store.lead_by_email(&carol).await.unwrap().is_none());
    let r = client
        .post(&api)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(store.lead_events(lead).await.unwrap().len(), stored);

    // The signed purchase webhook: counted once per order; forged or stale ones refused.
    let hook = format!("{base}/hooks/purchase");
    let body = json!({ "order_id": "SHOP-77", "email": "bob@example.com", "product": "course",
                       "amount": 49, "currency": "EUR" })
    .to_string();
    let send = |ts: i64, sig: String, body: String| {
        client
            .post(&hook)
            .header("x-autofunnel-timestamp", ts.to_string())
            .header("x-autofunnel-signature", sig)
            .body(body)
            .send()
    };
    let ts = Utc::now().timestamp();
    for want in ["ok", "duplicate"] {
        let r = send(ts, signed(ts, &body), body.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], want);
    }
    let bob = Email::parse("bob@example.com").unwrap();
    let bob = store.lead_by_email(&bob).await.unwrap().unwrap().id;
    let kinds: Vec<String> = store
        .lead_events(bob)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["purchase"]);
    let other = body.replace("SHOP-77", "SHOP-78");
    let r = send(ts, signed(ts, &body), other).await.unwrap();
    assert_eq!(r.status(), 401);
    let old = ts - 600;
    let r = send(old, signed(old, &body), body.clone()).await.unwrap();
    assert_eq!(r.status(), 401);
    let missing = json!({ "order_id": "SHOP-79", "email": "bob@example.com" }).to_string();
    let r = send(ts, signed(ts, &missing), missing).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(store.lead_events(bob).await.unwrap().len(), 1);

    server.stop().await;
}

/// A funnel entered by an event starts when the API posts it; the new run does not see the
/// lead's earlier events (last month's purchase does not convert this cart), only later ones.
async fn event_entry(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[(
            "funnels/cart.yaml",
            "name: Cart\nfrom: \"Shop <shop@example.com>\"\nentry: { event: checkout_started, re_entry: always }\n\
             on:\n  - { event: purchase, exit: converted }\n\
             stages:\n  - id: remind\n    steps:\n      - wait: 1d\n      - exit: not_converted\n",
        )],
    );
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            api_token: Some(Arc::from(TOKEN)),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let post = |body: Value| {
        let r = client
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(TOKEN)
            .json(&body);
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    post(
        json!({ "email": "anna@example.com", "event": "purchase", "order_id": "1",
                 "product": "mug" }),
    )
    .await;
    let lead = store
        .lead_by_email(&Email::parse("anna@example.com").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    assert!(
        store
            .enrollments_of(lead, &crate::util::fid("cart"))
            .await
            .unwrap()
            .is_empty()
    );
    post(json!({ "email": "anna@example.com", "event": "checkout_started" })).await;
    post(json!({ "email": "anna@example.com", "event": "page_viewed" })).await;
    let runs = store
        .enrollments_of(lead, &crate::util::fid("cart"))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state.status, RunStatus::Active, "{:?}", runs[0]);
    post(
        json!({ "email": "anna@example.com", "event": "purchase", "order_id": "2",
                 "product": "mug" }),
    )
    .await;
    let runs = store
        .enrollments_of(lead, &crate::util::fid("cart"))
        .await
        .unwrap();
    assert_eq!(runs[0].state.status, RunStatus::Exited(Outcome::Converted));
    server.stop().await;
}

/// Lead fields posted with an event (`fields`) are stored with it, before the steps the event
/// starts run: the cart reminder sent at once has the cart in it. A field no running funnel
/// declares, or a value of the wrong type, is refused naming it, and nothing is stored.
async fn event_fields(store: Store) {
    use autofunnel::delivery::{Sender, Transport};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/cart.yaml",
                "name: Cart\nfrom: \"Shop <shop@example.com>\"\nentry: { event: checkout_started }\n\
                 fields:\n  cart_url: { type: text, sample: \"https://shop.example.com/c/1\" }\n\
                 \x20 cart_total: { type: number, sample: 10 }\n\
                 stages:\n  - id: remind\n    steps:\n      - send: reminder\n      - wait: 1d\n      - exit: not_converted\n",
            ),
            (
                "templates/cart/reminder.subject",
                "Your cart of {{ lead.cart_total }} EUR",
            ),
            ("templates/cart/reminder.html", "<p>Finish your order.</p>"),
        ],
    );
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            api_token: Some(Arc::from(TOKEN)),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let post = async |body: Value| {
        let r = client
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (status, answer) = post(
        json!({ "email": "bob@example.com", "event": "checkout_started",
                   "fields": { "cart_ulr": "https://shop.example.com/c/9" } }),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "fields.cart_ulr", "{answer}");
    let (status, answer) = post(json!({ "events": [
        { "email": "bob@example.com", "event": "checkout_started" },
        { "email": "bob@example.com", "event": "checkout_started",
          "fields": { "cart_total": "lots" } } ] }))
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "events[1].fields.cart_total", "{answer}");
    let bob = Email::parse("bob@example.com").unwrap();
    assert!(
        store.lead_by_email(&bob).await.unwrap().is_none(),
        "nothing stored"
    );

    let (status, answer) = post(
        json!({ "email": "anna@example.com", "event": "checkout_started",
                   "fields": { "cart_url": "https://shop.example.com/c/8812", "cart_total": 59.9,
                               "first_name": "Anna" } }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let anna = store
        .lead_by_email(&Email::parse("anna@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(anna.first_name.as_deref(), Some("Anna"));
    assert_eq!(anna.fields["cart_url"], "https://shop.example.com/c/8812");
    assert_eq!(anna.fields["cart_total"], 59.9);
    while rt.tick(Utc::now()).await.unwrap() > 0 {}
    let outbox = dir.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox.clone()),
        "http://127.0.0.1:1",
        b"event fields test secret",
    );
    assert_eq!(sender.drain(Utc::now()).await.unwrap().sent, 1);
    let file = std::fs::read_dir(&outbox).unwrap().next().unwrap().unwrap();
    let eml = std::fs::read_to_string(file.path()).unwrap();
    assert!(
        eml.contains("Subject: Your cart of 59.9 EUR"),
        "the step the event started sees the fields it set: {eml}"
    );
    server.stop().await;
}

/// A process that stops between storing a batch of entry events and starting their funnels
/// loses no lead: the next start (`resume_entries`, which `run` calls before it serves) starts
/// each one's funnel once, and a run that had started before the stop is not started again,
/// even where the funnel allows re-entry. What the live path took whole is not found again.
async fn entries_after_a_stop(store: Store) {
    use autofunnel::domain::{Event, EventKind, LeadId};
    use autofunnel::store::{BatchEvent, LeadRef};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/join.yaml",
                "name: Join\nfrom: \"Shop <shop@example.com>\"\nentry: { event: join, re_entry: always }\n\
                 stages:\n  - id: welcome\n    steps:\n      - send: hello\n      - wait: 30d\n",
            ),
            ("templates/join/hello.subject", "Welcome"),
            ("templates/join/hello.html", "<p>Hello</p>"),
        ],
    );
    let t = Utc::now();
    let join = EventKind::parse("join").unwrap();
    let batch = |from: usize, to: usize| -> Vec<BatchEvent> {
        (from..to)
            .map(|i| BatchEvent {
                fields: Default::default(),
                who: LeadRef::Email(Email::parse(&format!("l{i}@example.com")).unwrap()),
                event: Event::of(join.clone()),
                idempotency_key: None,
                occurred_at: t,
                touch: None,
            })
            .collect()
    };
    // Stored by a process that stopped before it started their funnels.
    let stopped = store
        .record_batch(batch(0, 40), std::slice::from_ref(&join), t)
        .await
        .unwrap();
    let stopped: Vec<LeadId> = stopped.into_iter().map(|(l, _)| l).collect();
    let rt = crate::util::engine(&store, &p, t).await;
    // Half of them it had started, but stopped before marking their events.
    rt.enroll_many(&stopped[..20], &crate::util::fid("join"), t)
        .await
        .unwrap();
    // A batch the live path took whole.
    let live = rt.record_batch(batch(40, 60), t).await.unwrap();
    let leads: Vec<LeadId> = stopped
        .iter()
        .copied()
        .chain(live.iter().map(|(l, _)| *l))
        .collect();
    assert_eq!(leads.len(), 60);
    let restart = t + chrono::Duration::seconds(5);
    assert_eq!(rt.resume_entries(restart, restart).await.unwrap(), 40);
    for lead in &leads {
        let runs = store
            .enrollments_of(*lead, &crate::util::fid("join"))
            .await
            .unwrap();
        assert_eq!(runs.len(), 1, "lead {lead}: {runs:?}");
        assert_eq!(
            store.outbox_of(*lead).await.unwrap().len(),
            1,
            "lead {lead}"
        );
    }
    assert_eq!(rt.resume_entries(restart, restart).await.unwrap(), 0);
}

/// An unsubscribe is honoured by the transaction that stores it: the address is suppressed for
/// every funnel and the lead's consent withdrawn, with nothing left for a later step to do.
async fn unsubscribe_in_one_transaction(store: Store) {
    use autofunnel::domain::{Consent, Event, EventKind};
    use autofunnel::store::NewEvent;
    store.migrate().await.unwrap();
    let t = Utc::now();
    let email = Email::parse("anna@example.com").unwrap();
    let lead = store
        .upsert_lead(&email, Default::default(), t)
        .await
        .unwrap()
        .id;
    let e = NewEvent {
        lead: Some(lead),
        event: Event::of(EventKind::Unsubscribed),
        idempotency_key: None,
        occurred_at: t,
    };
    store.record_event(e, &[], t).await.unwrap();
    assert_eq!(
        store.suppressions_of(&email).await.unwrap(),
        vec!["*".to_string()]
    );
    let stored = store.lead_by_email(&email).await.unwrap().unwrap();
    assert_eq!(stored.consent, Consent::Unsubscribed);
}

on_both_backends! {
    events_and_purchases => events_api,
    entry_by_event => event_entry,
    fields_with_events => event_fields,
    entries_survive_a_stop => entries_after_a_stop,
    unsubscribe_stored_with_its_effects => unsubscribe_in_one_transaction,
}

/// A funnel started by a tag another funnel's step adds is kept as a pending entry in the
/// transaction that adds the tag: the normal path starts it and clears the entry; a process
/// that stopped after storing the tag (here the store's half of tagging a lead, the start
/// never made) has it started by the next process's `resume_pending`, once, even under
/// `re_entry: always`.
async fn chained_entries_after_a_stop(store: Store) {
    use autofunnel::domain::{Consent, Tag};
    use autofunnel::store::LeadInput;
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/welcome.yaml",
                "name: Welcome\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: hello\n    steps:\n      - tag: vip\n      - wait: 7d\n",
            ),
            (
                "funnels/vip.yaml",
                "name: VIP\nfrom: \"Shop <shop@example.com>\"\nentry: { tag: vip, re_entry: always }\n\
                 stages:\n  - id: vip\n    steps:\n      - wait: 7d\n",
            ),
        ],
    );
    let t = Utc::now();
    let leads: Vec<(Email, LeadInput)> = ["a@example.com", "b@example.com"]
        .iter()
        .map(|e| (Email::parse(e).unwrap(), LeadInput::default()))
        .collect();
    let ids = store
        .import_leads(&leads, Consent::Confirmed, t)
        .await
        .unwrap();
    let (a, b) = (ids[0], ids[1]);
    let rt = crate::util::engine(&store, &p, t).await;
    let vip = crate::util::fid("vip");
    let far = t + chrono::Duration::days(1);
    // The normal path: the step tags the lead, the VIP funnel starts, nothing stays pending.
    rt.enroll_many(&[a], &crate::util::fid("welcome"), t)
        .await
        .unwrap();
    assert_eq!(
        store.enrollments_of_many(&[a], &vip).await.unwrap().len(),
        1
    );
    assert!(store.pending_entries(far, 100).await.unwrap().is_empty());
    // A stop after the tag was stored with its pending entry, before the start.
    store
        .tag_lead_starting(b, &Tag::parse("vip").unwrap(), true, t)
        .await
        .unwrap();
    assert!(
        store
            .enrollments_of_many(&[b], &vip)
            .await
            .unwrap()
            .is_empty()
    );
    let later = t + chrono::Duration::seconds(5);
    let rt2 = crate::util::engine(&store, &p, later).await;
    assert_eq!(rt2.resume_pending(later, later).await.unwrap(), 1);
    assert_eq!(
        store.enrollments_of_many(&[b], &vip).await.unwrap().len(),
        1
    );
    assert!(store.pending_entries(far, 100).await.unwrap().is_empty());
    // Taken once: a second resume finds nothing, and a kept entry whose funnel the lead
    // entered since (a stop after the start, before the entry was cleared) starts nothing.
    assert_eq!(rt2.resume_pending(later, later).await.unwrap(), 0);
    store
        .tag_lead_starting(a, &Tag::parse("vip").unwrap(), true, t)
        .await
        .unwrap();
    assert_eq!(rt2.resume_pending(later, later).await.unwrap(), 1);
    assert_eq!(
        store.enrollments_of_many(&[a], &vip).await.unwrap().len(),
        1
    );
    drop(rt);
}

on_both_backends! {
    chained_entries_survive_a_stop => chained_entries_after_a_stop,
}

/// A batch of events is stored in a few statements for the whole batch: each event gets its
/// own id and lead back in order, whatever mix of known and new addresses, lead ids, keys
/// repeated in the batch or stored before, and events without a key it holds; the fields and
/// touches of the new events only are written.
async fn batch_in_few_statements(store: Store) {
    use autofunnel::domain::{Event, EventKind, LeadId};
    use autofunnel::store::{BatchEvent, LeadRef, NewTouch};
    store.migrate().await.unwrap();
    let t = Utc::now();
    let email = |s: &str| Email::parse(s).unwrap();
    let known = store
        .upsert_lead(&email("known@example.com"), Default::default(), t)
        .await
        .unwrap()
        .id;
    let ev = |who: LeadRef, kind: &str, key: Option<&str>| BatchEvent {
        fields: Default::default(),
        who,
        event: Event::of(EventKind::parse(kind).unwrap()),
        idempotency_key: key.map(str::to_string),
        occurred_at: t,
        touch: None,
    };
    // A key stored by an earlier batch.
    let first = store
        .record_batch(vec![ev(LeadRef::Id(known), "seen", Some("k-old"))], &[], t)
        .await
        .unwrap();
    assert!(first[0].1.is_some());
    let mut with_fields = ev(LeadRef::Email(email("new@example.com")), "joined", None);
    with_fields.fields = json!({ "first_name": "Nina", "city": "Kazan" })
        .as_object()
        .unwrap()
        .clone();
    with_fields.touch = Some(NewTouch {
        channel: "email".into(),
        source: Some("newsletter".into()),
        medium: None,
        campaign: None,
        term: None,
        content: None,
        referrer: None,
        landing_url: None,
        form: None,
    });
    let mut repeated = ev(
        LeadRef::Email(email("other@example.com")),
        "paid",
        Some("k-1"),
    );
    repeated.fields = json!({ "city": "Omsk" }).as_object().unwrap().clone();
    let batch = vec![
        ev(LeadRef::Email(email("other@example.com")), "a", None),
        ev(LeadRef::Id(known), "paid", Some("k-1")),
        with_fields,
        ev(LeadRef::Email(email("known@example.com")), "b", None),
        repeated,
        ev(LeadRef::Id(known), "seen", Some("k-old")),
        ev(LeadRef::Email(email("new@example.com")), "c", None),
    ];
    let out = store.record_batch(batch, &[], t).await.unwrap();
    let other = store
        .lead_by_email(&email("other@example.com"))
        .await
        .unwrap()
        .unwrap()
        .id;
    let new = store
        .lead_by_email(&email("new@example.com"))
        .await
        .unwrap()
        .unwrap();
    let leads: Vec<LeadId> = out.iter().map(|(l, _)| *l).collect();
    assert_eq!(leads, [other, known, new.id, known, other, known, new.id]);
    let stored: Vec<bool> = out.iter().map(|(_, id)| id.is_some()).collect();
    assert_eq!(stored, [true, true, true, true, false, false, true]);
    let mut ids: Vec<i64> = out.iter().filter_map(|(_, id)| *id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each new event has an id of its own: {ids:?}");
    // Each lead holds the events it was given, in order, under the ids handed back.
    let kinds = |l: LeadId| {
        let store = store.clone();
        async move {
            store
                .lead_events(l)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(kinds(known).await, ["seen", "paid", "b"]);
    assert_eq!(kinds(other).await, ["a"]);
    assert_eq!(kinds(new.id).await, ["joined", "c"]);
    // The fields and the touch of the new event; the repeated one's are not written.
    assert_eq!(new.first_name.as_deref(), Some("Nina"));
    assert_eq!(new.fields["city"], "Kazan");
    let o = store
        .lead_by_email(&email("other@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert!(o.fields.get("city").is_none(), "{:?}", o.fields);
    let touches = store.touches_of(new.id).await.unwrap();
    assert_eq!(touches.len(), 1);
    assert_eq!(touches[0].source.as_deref(), Some("newsletter"));
    assert!(store.touches_of(other).await.unwrap().is_empty());
}

on_both_backends! {
    a_batch_in_few_statements => batch_in_few_statements,
}
