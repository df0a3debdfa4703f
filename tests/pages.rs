//! The pages behind the links in every email, through the real server: double opt-in
//! confirmation (`/c/…`) and unsubscribe (`/u/…`: this funnel, everything, RFC 8058 one-click).
//! What is stopped stays stopped, and emails already queued for a stopped address are dropped.

use std::path::Path;
use std::sync::Arc;

use autofunnel::delivery::{Sender, Transport};
use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::project;
use autofunnel::server::AppState;
use autofunnel::store::{LeadInput, Store};
use autofunnel::tokens::{self, LeadLink};
use chrono::Utc;

use crate::util::{Server, on_both_backends, project_of};

const SECRET: &[u8] = b"pages secret";

fn project(dir: &Path) -> Arc<project::Project> {
    let files = [
        (
            "funnels/news.yaml",
            "name: Weekly news\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true, double_opt_in: confirm }\n\
             stages:\n  - id: welcome\n    steps:\n      - send: welcome\n      - wait: 7d\n      - exit: completed\n",
        ),
        (
            "funnels/promo.yaml",
            "name: Spring sale\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
             stages:\n  - id: sale\n    steps:\n      - wait: 1d\n      - send: sale\n      - wait: 7d\n      - exit: completed\n",
        ),
        ("templates/news/confirm.subject", "Please confirm"),
        (
            "templates/news/confirm.html",
            "<p><a href=\"{{ confirm_url }}\">Confirm</a></p>",
        ),
        ("templates/news/welcome.subject", "Welcome"),
        (
            "templates/news/welcome.html",
            "<p>Hi</p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>",
        ),
        ("templates/promo/sale.subject", "Sale"),
        (
            "templates/promo/sale.html",
            "<p>Sale</p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>",
        ),
    ];
    project_of(dir, &files)
}

async fn lead(store: &Store, email: &str, consent: Consent) -> LeadId {
    store
        .import_leads(
            &[(Email::parse(email).unwrap(), LeadInput::default())],
            consent,
            Utc::now(),
        )
        .await
        .unwrap()[0]
}

fn templates(rows: &[autofunnel::store::OutboxRow]) -> Vec<String> {
    rows.iter().filter_map(|r| r.template.clone()).collect()
}

async fn confirm_and_unsubscribe(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let metrics = Arc::new(autofunnel::metrics::Metrics::default());
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            secret: Arc::from(SECRET),
            metrics: metrics.clone(),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();

    // Double opt-in: the page does not confirm by itself; the POST does, once.
    let ann = lead(&store, "ann@example.com", Consent::Pending).await;
    rt.enroll_many(&[ann], &crate::util::fid("news"), now)
        .await
        .unwrap();
    assert_eq!(templates(&store.outbox_of(ann).await.unwrap()), ["confirm"]);
    let c = format!(
        "{base}/c/{}",
        tokens::lead_token(SECRET, LeadLink::Confirm, ann)
    );
    let page = client.get(&c).send().await.unwrap();
    assert_eq!(page.status(), 200);
    // A person presses the button: the page runs no script, and no other site may frame it.
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\""));
    assert!(!html.contains("<script"), "{html}");
    assert!(!rt.lead_facts(ann, now).await.unwrap().confirmed);
    for _ in 0..2 {
        let r = client.post(&c).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(rt.lead_facts(ann, now).await.unwrap().confirmed);
    assert_eq!(
        templates(&store.outbox_of(ann).await.unwrap()),
        ["confirm", "welcome"]
    );
    let confirmations = store
        .lead_events(ann)
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "confirmed")
        .count();
    assert_eq!(confirmations, 1);

    // Unsubscribe from one funnel: the other goes on; the queued email of the stopped one is
    // dropped by the sender, and the choice is shown on the next visit.
    let bob = lead(&store, "bob@example.com", Consent::Confirmed).await;
    rt.enroll_many(&[bob], &crate::util::fid("news"), now)
        .await
        .unwrap();
    rt.enroll_many(&[bob], &crate::util::fid("promo"), now)
        .await
        .unwrap();
    let u = format!(
        "{base}/u/{}",
        tokens::lead_token(SECRET, LeadLink::Unsubscribe, bob)
    );
    let page = client
        .get(format!("{u}?f=news"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Stop emails about «Weekly news»"), "{page}");
    assert!(page.contains("Stop all emails"), "{page}");
    let r = client
        .post(format!("{u}?f=news"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=news")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("«Weekly news»"));
    let bob_email = Email::parse("bob@example.com").unwrap();
    assert_eq!(store.suppressions_of(&bob_email).await.unwrap(), ["news"]);
    let facts = rt.lead_facts(bob, now).await.unwrap();
    assert!(facts.mailable && facts.muted.contains("news"));
    // That funnel's run ended as unsubscribed (its history says so); the promo goes on, and
    // Bob's consent is still his.
    let news = store
        .enrollments_of(bob, &crate::util::fid("news"))
        .await
        .unwrap();
    assert_eq!(
        news[0].state.status,
        autofunnel::domain::RunStatus::Exited(autofunnel::domain::Outcome::Unsubscribed)
    );
    let record = store.export_lead(bob).await.unwrap().unwrap();
    let news_run = record["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["funnel"] == "news")
        .unwrap();
    assert_eq!(
        news_run["history"][0]["reason"], "exit: unsubscribed",
        "{news_run}"
    );
    let promo = store
        .enrollments_of(bob, &crate::util::fid("promo"))
        .await
        .unwrap();
    assert!(promo[0].state.status.is_live());
    let bob_lead = store.lead_by_email(&bob_email).await.unwrap().unwrap();
    assert_eq!(bob_lead.consent, Consent::Confirmed);
    let page = client
        .get(format!("{u}?f=news"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("You no longer get emails about «Weekly news»"),
        "{page}"
    );
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let sender = Sender::new(store.outbox(), p, Transport::Folder(outbox), &base, SECRET)
        .with_metrics(metrics.clone());
    let tally = sender.drain(Utc::now()).await.unwrap();
    // Ann's confirmation and welcome go out; Bob's welcome (news) is dropped.
    assert_eq!((tally.sent, tally.suppressed), (2, 1), "{tally:?}");

    // The promo funnel still mails Bob a day later; then the one-click POST (RFC 8058) stops
    // everything, and the engine hears `unsubscribed`.
    let later = now + chrono::Duration::days(1) + chrono::Duration::minutes(1);
    rt.tick(later).await.unwrap();
    assert!(templates(&store.outbox_of(bob).await.unwrap()).contains(&"sale".to_string()));
    let r = client
        .post(&u)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut scopes = store.suppressions_of(&bob_email).await.unwrap();
    scopes.sort();
    assert_eq!(scopes, ["*", "news"]);
    assert!(!rt.lead_facts(bob, later).await.unwrap().mailable);
    let tally = sender.drain(later).await.unwrap();
    assert_eq!((tally.sent, tally.suppressed), (0, 1), "{tally:?}");
    let page = client.get(&u).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("gets no more emails"), "{page}");
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "autofunnel_emails_sent_total 2",
        "autofunnel_emails_suppressed_total 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }

    // Forged or foreign tokens change nothing.
    for bad in [
        format!("{base}/u/{}.AAAAAAAAAAAAAAAAAAAAAA", ann.0),
        format!(
            "{base}/c/{}",
            tokens::lead_token(SECRET, LeadLink::Unsubscribe, ann)
        ),
        format!(
            "{base}/u/{}",
            tokens::lead_token(b"another key", LeadLink::Unsubscribe, ann)
        ),
    ] {
        assert_eq!(client.post(&bad).send().await.unwrap().status(), 403);
        assert_eq!(client.get(&bad).send().await.unwrap().status(), 403);
    }
    let ann_email = Email::parse("ann@example.com").unwrap();
    assert!(store.suppressions_of(&ann_email).await.unwrap().is_empty());

    server.stop().await;
}

/// The consent ledger through the real pages: the form's consent given (its form, the
/// visitor's address and browser, the consent text the form declares and the SHA-256 of its
/// words), the double opt-in confirmed once however often the button is pressed, the
/// one-click unsubscribe withdrawn; the admin export shows all three.
async fn consent_ledger(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/club.yaml",
                "name: Club\nfrom: \"Shop <shop@example.com>\"\n\
                 entry: { form: { id: join, consent: legal/club-v2.txt }, double_opt_in: confirm }\n\
                 stages:\n  - id: in\n    steps:\n      - wait: 7d\n      - exit: completed\n",
            ),
            ("legal/club-v2.txt", CLUB_TEXT),
            ("templates/club/confirm.subject", "Please confirm"),
            (
                "templates/club/confirm.html",
                "<p><a href=\"{{ confirm_url }}\">Confirm</a></p>",
            ),
        ],
    );
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            secret: Arc::from(SECRET),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http_builder()
        .user_agent("Mozilla/5.0 (X11; Linux) Firefox/140.0")
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/f/join"))
        .form(&[("email", "dana@example.com")])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "{}",
        r.status()
    );
    let dana = store
        .lead_by_email(&Email::parse("dana@example.com").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let c = format!(
        "{base}/c/{}",
        tokens::lead_token(SECRET, LeadLink::Confirm, dana)
    );
    for _ in 0..2 {
        assert_eq!(client.post(&c).send().await.unwrap().status(), 200);
    }
    let u = format!(
        "{base}/u/{}",
        tokens::lead_token(SECRET, LeadLink::Unsubscribe, dana)
    );
    let r = client
        .post(&u)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let record = store.export_lead(dana).await.unwrap().unwrap();
    let ledger: Vec<(String, String, String, String)> = record["consents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("source"), s("ip"), s("user_agent"))
        })
        .collect();
    let ua = "Mozilla/5.0 (X11; Linux) Firefox/140.0".to_string();
    let row = |a: &str, b: &str| {
        (
            a.to_string(),
            b.to_string(),
            "127.0.0.1".to_string(),
            ua.clone(),
        )
    };
    assert_eq!(
        ledger,
        [
            row("given", "form:join"),
            row("confirmed", "double opt-in link"),
            row("withdrawn", "one-click unsubscribe"),
        ]
    );
    // Which words were agreed to: the text's file and the SHA-256 of its content, on the
    // consent given through the form only.
    let texts: Vec<(Option<&str>, Option<&str>)> = record["consents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text_version"].as_str(), c["text_sha256"].as_str()))
        .collect();
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(CLUB_TEXT.as_bytes()))
    };
    assert_eq!(
        texts,
        [
            (Some("legal/club-v2.txt"), Some(sha.as_str())),
            (None, None),
            (None, None)
        ]
    );
    server.stop().await;
}

/// The consent text of the club's form.
const CLUB_TEXT: &str = "I agree to receive the Club's letters about its courses and offers. \
I can unsubscribe at any time with the link in every letter.\n";

on_both_backends! {
    consent_ledger => consent_ledger,
    confirm_and_unsubscribe_pages => confirm_and_unsubscribe,
}
