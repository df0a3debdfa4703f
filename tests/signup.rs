//! `POST /f/{form}` through the real server with a real client: HTML forms and `fetch()`, the
//! same email twice, the touch, double opt-in, CORS, the honeypot, and every bad input storing
//! nothing.

use std::path::Path;
use std::sync::Arc;

use autofunnel::domain::Email;
use autofunnel::project;
use autofunnel::runtime::Runtime;
use autofunnel::server::{AppState, signup};
use autofunnel::store::Store;
use chrono::Utc;

use crate::util::{Server, on_both_backends, project_of};

fn project(dir: &Path) -> Arc<project::Project> {
    let files = [
        (
            "funnels/book.yaml",
            "name: Free book\nfrom: \"Shop <shop@example.com>\"\n\
             entry:\n  form:\n    id: free-book\n    thank_you: https://example.com/thanks\n    cors: [\"https://landing.example.com\"]\n  double_opt_in: confirm\n\
             stages:\n  - id: book\n    steps:\n      - send: book\n      - wait: 7d\n      - exit: completed\n",
        ),
        ("templates/book/confirm.subject", "Please confirm"),
        (
            "templates/book/confirm.html",
            "<a href=\"{{ confirm_url }}\">Confirm</a>",
        ),
        ("templates/book/book.subject", "Your book"),
        ("templates/book/book.html", "<p>Here it is</p>"),
    ];
    project_of(dir, &files)
}

async fn signups(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let url = format!("{base}/f/free-book");
    let server = Server::start(
        listener,
        AppState {
            secret: Arc::from(&b"signup secret"[..]),
            signup_limit: signup::limiter(13),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |body: &str| {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
    };

    // An HTML form: 303 to the thank-you page; lead, touch and the confirmation email stored.
    let r = form(
        "email=Anna%40Example.com&first_name=Anna&timezone=Europe%2FBerlin&city=Berlin\
                  &utm_source=newsletter&utm_medium=email&utm_campaign=spring&website=",
    )
    .header("referer", "https://landing.example.com/book")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "https://example.com/thanks");
    let anna = store
        .lead_by_email(&Email::parse("anna@example.com").unwrap())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(anna.first_name.as_deref(), Some("Anna"));
    assert_eq!(anna.timezone, Some(chrono_tz::Europe::Berlin));
    assert_eq!(anna.fields["city"], "Berlin");
    let touches = store.touches_of(anna.id).await.unwrap();
    assert_eq!(touches.len(), 1);
    assert_eq!(touches[0].source.as_deref(), Some("newsletter"));
    assert_eq!(touches[0].campaign.as_deref(), Some("spring"));
    assert_eq!(
        touches[0].referrer.as_deref(),
        Some("https://landing.example.com/book")
    );
    assert_eq!(touches[0].form.as_deref(), Some("free-book"));
    let sent: Vec<_> = store
        .outbox_of(anna.id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.template)
        .collect();
    assert_eq!(sent, ["confirm"], "double opt-in asks first");

    // fetch() with JSON from an allowed origin: JSON back, CORS header; the same email (any
    // case) adds what the lead lacks (a new field, a second touch), changes nothing it has
    // (name, time zone, city: anyone can post a form) and starts nothing twice.
    let r = client
        .post(&url)
        .header("origin", "https://landing.example.com")
        .json(&serde_json::json!({ "email": "ANNA@example.com", "plan": "pro",
                                   "first_name": "Mallory", "city": "Evil", "timezone": "Asia/Tokyo" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://landing.example.com"
    );
    let known: serde_json::Value = r.json().await.unwrap();
    let again = store.lead_by_email(&anna.email).await.unwrap().unwrap();
    assert_eq!(again.fields["plan"], "pro");
    assert_eq!(again.fields["city"], "Berlin");
    assert_eq!(again.first_name.as_deref(), Some("Anna"));
    assert_eq!(again.timezone, Some(chrono_tz::Europe::Berlin));
    // A new address gets the very same answer: the form tells nobody who is on the list.
    let r = client
        .post(&url)
        .json(&serde_json::json!({ "email": "newcomer@example.com" }))
        .send()
        .await
        .unwrap();
    let new: serde_json::Value = r.json().await.unwrap();
    assert_eq!(known, new);
    assert_eq!(new, serde_json::json!({ "status": "ok" }));
    assert_eq!(store.touches_of(anna.id).await.unwrap().len(), 2);
    assert_eq!(store.outbox_of(anna.id).await.unwrap().len(), 1);
    // The preflight answers allowed origins only.
    let pre = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    assert_eq!(
        pre("https://landing.example.com").await.unwrap().status(),
        204
    );
    assert_eq!(pre("https://evil.example.net").await.unwrap().status(), 403);

    // A bot fills the honeypot: told all is well, nothing kept.
    let r = form("email=bot%40spam.example&website=http%3A%2F%2Fspam")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let bot = Email::parse("bot@spam.example").unwrap();
    assert!(store.lead_by_email(&bot).await.unwrap().is_none());

    // Bad input: the field named, nothing stored.
    let bad = [
        ("email=not-an-email", 422, "email"),
        ("first_name=Nobody", 422, "email"),
        (
            "email=x%40example.com&timezone=Mars%2FBase",
            422,
            "timezone",
        ),
        ("email=x%40example.com&Bad-Name=1", 422, "Bad-Name"),
        // Text is one line of printable UTF-8 within its length.
        ("email=x%40example.com&first_name=A%0Ab", 422, "first_name"),
        ("email=x%40example.com&city=a%00b", 422, "city"),
        ("email=x%40example.com&first_name=%FF%FE", 400, "first_name"),
        (
            "email=x%40example.com&utm_source=a%E2%80%A8b",
            422,
            "utm_source",
        ),
    ];
    for (body, status, field) in bad {
        let r = form(body).send().await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["field"], field, "{body}");
    }
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = form(&format!(
        "email=x%40example.com&note={}",
        "a".repeat(70_000)
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let x = Email::parse("x@example.com").unwrap();
    assert!(store.lead_by_email(&x).await.unwrap().is_none());
    let r = client
        .post(url.replace("free-book", "no-such-form"))
        .body("email=y%40example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // /metrics: the three stored signups, two confirmation emails waiting, the timer not late.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "autofunnel_signups_total 3",
        "autofunnel_outbox_queued 2",
        "autofunnel_outbox_sending 0",
        "autofunnel_emails_sent_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE autofunnel_wake_lag_seconds gauge"),
        "{metrics}"
    );

    // Thirteen signups a minute per address: the fourteenth request is refused, and stores
    // nothing.
    let mut last = 0;
    for i in 0..3 {
        last = form(&format!("email=late{i}%40example.com"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    let late = Email::parse("late2@example.com").unwrap();
    assert!(store.lead_by_email(&late).await.unwrap().is_none());

    server.stop().await;
}

/// 200 signups at once, 40 of them a second signup of an address: every request answered,
/// each address one lead with its merged fields, one touch and one `signup` event per request,
/// one enrollment and one confirmation email per lead.
async fn concurrent_signups(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let url = format!("{base}/f/free-book");
    let server = Server::start(
        listener,
        AppState {
            secret: Arc::from(&b"signup secret"[..]),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http();
    let requests = (0..200).map(|i| {
        // Addresses 0..40 sign up twice: first with a city, then with a plan.
        let (n, field) = if i < 160 {
            (i, "city")
        } else {
            (i - 160, "plan")
        };
        let body =
            serde_json::json!({ "email": format!("p{n}@example.com"), field: format!("v{i}") });
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap(), 200);
    }
    for n in 0..160 {
        let lead = store
            .lead_by_email(&Email::parse(&format!("p{n}@example.com")).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("p{n} was not stored"));
        let twice = n < 40;
        assert_eq!(lead.fields["city"], format!("v{n}"));
        if twice {
            assert_eq!(lead.fields["plan"], format!("v{}", n + 160));
        }
        let touches = store.touches_of(lead.id).await.unwrap().len();
        let signups = store
            .lead_events(lead.id)
            .await
            .unwrap()
            .iter()
            .filter(|(k, _)| k == "signup")
            .count();
        let want = if twice { 2 } else { 1 };
        assert_eq!((touches, signups), (want, want), "p{n}");
        assert_eq!(
            store
                .enrollments_of(lead.id, &crate::util::fid("book"))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.outbox_of(lead.id).await.unwrap().len(), 1, "p{n}");
    }
    server.stop().await;
}

/// A signup stored by a process that stopped before its form's funnels started: a minute
/// later the scheduler's resume starts them, once.
async fn resumed_signups(store: Store) {
    use autofunnel::store::{LeadInput, NewSignup, NewTouch};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let t = Utc::now();
    let rt = Runtime::new(store.clone(), p.funnels.clone(), "node-a", t)
        .await
        .unwrap();
    let signup = NewSignup {
        email: Email::parse("anna@example.com").unwrap(),
        input: LeadInput::default(),
        touch: NewTouch {
            channel: "form".into(),
            form: Some("free-book".into()),
            ..Default::default()
        },
        form: "free-book".into(),
        requester: Default::default(),
        consent_text: None,
    };
    let lead = store.record_signups(&[signup], t).await.unwrap()[0];
    let minute = chrono::Duration::minutes(1);
    // Too recent: it may still be on its way in this or another process.
    assert_eq!(
        rt.resume_entries(t - minute / 2, t + minute / 2)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .enrollments_of(lead, &crate::util::fid("book"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        rt.resume_entries(t + minute, t + minute * 2).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .enrollments_of(lead, &crate::util::fid("book"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rt.resume_entries(t + minute * 2, t + minute * 3)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .enrollments_of(lead, &crate::util::fid("book"))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A signup the database refuses fails alone: the rest of its group is stored. PostgreSQL
/// refuses text with a NUL byte (the HTTP edge refuses it first; here the signup is queued
/// directly, as if that check had missed it); SQLite stores it, so there all five succeed.
async fn a_refused_signup_fails_alone(store: Store) {
    use autofunnel::store::{LeadInput, NewSignup, NewTouch};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let book = vec![crate::util::fid("book")];
    let tickets: Vec<_> = (0..5)
        .map(|i| {
            let name = if i == 2 { "Bad\u{0}Name" } else { "Good" };
            let signup = NewSignup {
                email: Email::parse(&format!("g{i}@example.com")).unwrap(),
                input: LeadInput {
                    first_name: Some(name.into()),
                    ..LeadInput::default()
                },
                touch: NewTouch {
                    channel: "form".into(),
                    form: Some("free-book".into()),
                    ..NewTouch::default()
                },
                form: "free-book".into(),
                requester: Default::default(),
                consent_text: None,
            };
            rt.queue_signup(signup, book.clone())
        })
        .collect();
    // All five are queued before the first commit starts: one group.
    let answers = futures_util::future::join_all(tickets.into_iter().map(|t| {
        let rt = rt.clone();
        tokio::spawn(async move { rt.signup_stored(t).await })
    }))
    .await;
    let postgres = store.backend() == autofunnel::store::Backend::Postgres;
    for (i, a) in answers.into_iter().enumerate() {
        let ok = a.unwrap().is_ok();
        assert_eq!(ok, !(postgres && i == 2), "signup {i}");
        let lead = store
            .lead_by_email(&Email::parse(&format!("g{i}@example.com")).unwrap())
            .await
            .unwrap();
        assert_eq!(lead.is_some(), ok, "signup {i}");
        if let Some(l) = lead {
            assert_eq!(
                store.touches_of(l.id).await.unwrap().len(),
                1,
                "stored once"
            );
            assert_eq!(store.enrollments_of(l.id, &book[0]).await.unwrap().len(), 1);
        }
    }
}

/// A signup and the funnels it starts commit together: once answered, its lead has its run
/// and its `signup` event is processed — nothing is left for a stopped process to leave
/// half-done. When the database refuses the runs (a trigger makes it, as a fault would), the
/// signup is still stored, unstarted, and the resume a minute later starts its funnel once.
async fn signup_commits_with_its_funnels(url: String) {
    use autofunnel::store::{LeadInput, NewSignup, NewTouch};
    use sea_orm::{ConnectionTrait, Database};
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let t = Utc::now();
    let rt = crate::util::engine(&store, &p, t).await;
    let book = crate::util::fid("book");
    let signup = |name: &str| NewSignup {
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        input: LeadInput::default(),
        touch: NewTouch {
            channel: "form".into(),
            form: Some("free-book".into()),
            ..Default::default()
        },
        form: "free-book".into(),
        requester: Default::default(),
        consent_text: None,
    };
    let sign = |names: &[&str]| {
        let tickets: Vec<_> = names
            .iter()
            .map(|n| rt.queue_signup(signup(n), vec![book.clone()]))
            .collect();
        let rt = rt.clone();
        async move {
            let mut leads = Vec::new();
            for t in tickets {
                leads.push(rt.signup_stored(t).await.unwrap());
            }
            leads
        }
    };
    let far = t + chrono::Duration::days(1);
    let unstarted = || async { store.unstarted_events(far, 0, 100).await.unwrap().len() };
    let anna = sign(&["anna"]).await[0];
    assert_eq!(store.enrollments_of(anna, &book).await.unwrap().len(), 1);
    assert_eq!(
        unstarted().await,
        0,
        "its event is processed in the same commit"
    );

    let raw = Database::connect(&url).await.unwrap();
    let postgres = store.backend() == autofunnel::store::Backend::Postgres;
    let (refuse, allow) = if postgres {
        (
            vec![
                "CREATE FUNCTION no_runs() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no runs today'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER no_runs BEFORE INSERT ON enrollments FOR EACH ROW EXECUTE FUNCTION no_runs()",
            ],
            "DROP TRIGGER no_runs ON enrollments",
        )
    } else {
        (
            vec![
                "CREATE TRIGGER no_runs BEFORE INSERT ON enrollments BEGIN SELECT RAISE(ABORT, 'no runs today'); END",
            ],
            "DROP TRIGGER no_runs",
        )
    };
    for sql in refuse {
        raw.execute_unprepared(sql).await.unwrap();
    }
    // A group of two, both refused their runs: each is stored alone, unstarted.
    let refused = sign(&["boris", "vera"]).await;
    for lead in &refused {
        assert!(store.enrollments_of(*lead, &book).await.unwrap().is_empty());
        assert_eq!(store.touches_of(*lead).await.unwrap().len(), 1);
    }
    assert_eq!(unstarted().await, 2);
    raw.execute_unprepared(allow).await.unwrap();
    raw.close().await.unwrap();
    let minute = chrono::Duration::minutes(1);
    let later = Utc::now() + minute;
    assert_eq!(rt.resume_entries(later, later).await.unwrap(), 2);
    assert_eq!(rt.resume_entries(later, later).await.unwrap(), 0);
    for lead in refused.iter().chain([&anna]) {
        assert_eq!(store.enrollments_of(*lead, &book).await.unwrap().len(), 1);
    }
    assert_eq!(unstarted().await, 0);
}

#[tokio::test]
async fn signup_commits_with_its_funnels_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db?mode=rwc", dir.path().display());
    signup_commits_with_its_funnels(url).await;
}

#[tokio::test]
async fn signup_commits_with_its_funnels_postgres() {
    crate::store::on_postgres_url("signup_commits", signup_commits_with_its_funnels).await;
}

on_both_backends! {
    refused_signup_alone => a_refused_signup_fails_alone,
    form_signups => signups,
    signups_at_once => concurrent_signups,
    signups_resumed => resumed_signups,
}
