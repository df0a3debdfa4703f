//! The served OpenAPI description against the real server: every answer the tests provoke must
//! be documented for its path, method and status, with its content type, and a JSON body must
//! validate against the documented schema; every documented answer must be provoked (but 503,
//! which needs a database that stops answering).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::project;
use autofunnel::server::{AppState, signup};
use autofunnel::store::{LeadInput, Store};
use autofunnel::tokens::{self, LeadLink};
use chrono::Utc;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::util::{Server, on_both_backends, project_of};

const SECRET: &[u8] = b"openapi link secret";
const HOOKS: &[u8] = b"openapi hooks secret";
const API: &str = "api token, 16+ characters";
const ADMIN: &str = "admin token, 16+ characters";

/// The description, and which answers the tests have checked against it.
struct Contract {
    spec: Value,
    seen: Mutex<BTreeSet<String>>,
}

impl Contract {
    fn new() -> Contract {
        let spec: Value = serde_saphyr::from_str(autofunnel::server::OPENAPI_YAML)
            .expect("docs/openapi.yaml is YAML");
        assert_eq!(spec["openapi"], "3.1.0");
        Contract {
            spec,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// `#/components/...` resolved.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .spec
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("unresolved {r}")),
            None => v,
        }
    }

    /// Sends the request and checks its answer against the description of `template`; returns
    /// the status and the body.
    async fn call(&self, method: Method, template: &str, req: RequestBuilder) -> (u16, Vec<u8>) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let mime = r.headers().get(reqwest::header::CONTENT_TYPE).map(|c| {
            c.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_string()
        });
        let body = r.bytes().await.unwrap().to_vec();
        let m = method.as_str().to_lowercase();
        let what = format!("{} {template} {status}", method.as_str());
        let op = &self.spec["paths"][template][&m];
        assert!(
            op.is_object(),
            "{what}: the path or method is not documented"
        );
        let doc = self.resolve(&op["responses"][status.to_string()]);
        assert!(doc.is_object(), "{what}: this status is not documented");
        match doc.get("content") {
            None => assert!(
                body.is_empty(),
                "{what}: documented without a body, answered {}",
                String::from_utf8_lossy(&body)
            ),
            Some(content) => {
                let mime = mime.unwrap_or_else(|| panic!("{what}: no Content-Type"));
                let media = &content[&mime];
                assert!(
                    media.is_object(),
                    "{what}: Content-Type {mime} is not documented"
                );
                if mime == "application/json" {
                    let v: Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
                    self.validate(&what, &media["schema"], &v);
                }
            }
        }
        self.seen.lock().unwrap().insert(what);
        (status, body)
    }

    fn validate(&self, what: &str, schema: &Value, v: &Value) {
        let mut root = schema.clone();
        root.as_object_mut()
            .expect("a schema object")
            .insert("components".into(), self.spec["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the documented schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer {v} does not match the description: {errors:?}"
        );
    }

    /// Every documented answer but 503 was checked.
    fn assert_all_seen(&self) {
        let seen = self.seen.lock().unwrap();
        let mut missing = Vec::new();
        for (path, ops) in self.spec["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for status in responses.keys().filter(|s| *s != "503") {
                    let key = format!("{} {path} {status}", method.to_uppercase());
                    if !seen.contains(&key) {
                        missing.push(key);
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented but never checked: {missing:#?}"
        );
    }
}

fn project(dir: &Path) -> Arc<project::Project> {
    project_of(
        dir,
        &[
            (
                "funnels/welcome.yaml",
                "name: Welcome\nfrom: \"Shop <shop@example.com>\"\n\
                 entry:\n  form:\n    id: welcome\n    thank_you: \"https://example.com/thanks\"\n    cors: [\"https://example.com\"]\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hello\n      - wait: 7d\n      - exit: completed\n",
            ),
            (
                "funnels/news.yaml",
                "name: News\nfrom: \"Shop <shop@example.com>\"\nentry: { form: news }\n\
                 stages:\n  - id: news\n    steps:\n      - wait: 30d\n      - exit: completed\n",
            ),
            (
                "funnels/crm.yaml",
                "name: CRM\nentry: { api: true }\n\
                 webhooks:\n  crm:\n    url: \"http://127.0.0.1:9/hook\"\n\
                 stages:\n  - id: won\n    steps:\n      - webhook: crm\n      - wait: 30d\n      - exit: completed\n",
            ),
            ("templates/welcome/hello.subject", "Hello"),
            ("templates/welcome/hello.html", "<p>Hello</p>"),
        ],
    )
}

fn signed(req: RequestBuilder, body: &str) -> RequestBuilder {
    use hmac::{KeyInit, Mac};
    let ts = Utc::now().timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOKS).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    req.header("X-Autofunnel-Timestamp", ts.to_string())
        .header("X-Autofunnel-Signature", sig)
        .header("Content-Type", "application/json")
        .body(body.to_string())
}

const STRIPE: &str = "whsec_openapi contract";

fn stripe_account() -> Arc<autofunnel::server::pay::Payments> {
    let settings = autofunnel::settings::PaymentSettings {
        secret_env: Some("STRIPE".into()),
        products: [("Course".to_string(), "course".to_string())].into(),
        ..Default::default()
    };
    let accounts =
        autofunnel::payments::accounts(&[("stripe".to_string(), settings)].into(), &|_| {
            Some(STRIPE.to_string())
        })
        .unwrap();
    autofunnel::server::pay::Payments::new(accounts)
}

async fn openapi(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let state = AppState {
        hooks_secret: Some(Arc::from(HOOKS)),
        secret: Arc::from(SECRET),
        signup_limit: signup::limiter(12),
        api_token: Some(Arc::from(API)),
        admin_token: Some(Arc::from(ADMIN)),
        payments: stripe_account(),
        ..crate::util::off(&rt)
    };
    // The same server with every token and secret unset.
    let bare = AppState {
        hooks_secret: None,
        api_token: None,
        admin_token: None,
        signup_limit: None,
        ..state.clone()
    };
    let (listener, base) = Server::bind().await;
    let server = Server::start(listener, state);
    let (listener, off) = Server::bind().await;
    let off_server = Server::start(listener, bare);
    let c = crate::util::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let k = Contract::new();
    let (get, post, delete, options) = (Method::GET, Method::POST, Method::DELETE, Method::OPTIONS);

    // The description itself.
    let (_, json_spec) = k
        .call(
            get.clone(),
            "/openapi.json",
            c.get(format!("{base}/openapi.json")),
        )
        .await;
    assert_eq!(serde_json::from_slice::<Value>(&json_spec).unwrap(), k.spec);
    k.call(
        get.clone(),
        "/openapi.yaml",
        c.get(format!("{base}/openapi.yaml")),
    )
    .await;
    let (_, health) = k
        .call(get.clone(), "/healthz", c.get(format!("{base}/healthz")))
        .await;
    let health: Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["funnels"], 3);
    k.call(get.clone(), "/metrics", c.get(format!("{base}/metrics")))
        .await;

    // Signups.
    let f = "/f/{form}";
    let signup = |form: &str| c.post(format!("{base}/f/{form}"));
    k.call(
        post.clone(),
        f,
        signup("welcome").json(&json!({"email": "anna@example.com", "first_name": "Anna"})),
    )
    .await;
    let anna = store
        .lead_by_email(&Email::parse("anna@example.com").unwrap())
        .await
        .unwrap()
        .expect("stored")
        .id
        .0;
    // A webhook call given up on: its funnel's webhook is gone from the project the caller has.
    let hooked = store
        .import_leads(
            &[(
                Email::parse("hook@example.com").unwrap(),
                Default::default(),
            )],
            autofunnel::domain::Consent::Confirmed,
            Utc::now(),
        )
        .await
        .unwrap();
    rt.enroll_many(&hooked, &crate::util::fid("crm"), Utc::now())
        .await
        .unwrap();
    while rt.tick(Utc::now()).await.unwrap() > 0 {}
    let none = Arc::new(autofunnel::project::Project {
        funnels: Vec::new(),
        templates: Default::default(),
    });
    let hooks = autofunnel::delivery::webhook::Hooks::new(store.outbox(), none);
    assert_eq!(hooks.round(Utc::now()).await.unwrap().failed, 1);
    let dead = store.failed_webhooks(1).await.unwrap()[0].id;
    let failed = "/api/v1/webhooks/failed";
    let retry = "/api/v1/webhooks/failed/{id}/retry";
    assert_eq!(
        k.call(
            post.clone(),
            f,
            signup("welcome").form(&[("email", "ben@example.com")])
        )
        .await
        .0,
        303
    );
    assert_eq!(
        k.call(
            post.clone(),
            f,
            signup("news").form(&[("email", "cleo@example.com")])
        )
        .await
        .0,
        200
    );
    let bad = [
        (
            signup("welcome")
                .header("Content-Type", "application/json")
                .body("{"),
            400,
        ),
        (signup("nope").form(&[("email", "a@example.com")]), 404),
        (
            signup("welcome").form(&[("notes", "x".repeat(70_000))]),
            413,
        ),
        (
            signup("welcome").json(&json!({"email": "not an address"})),
            422,
        ),
    ];
    for (req, status) in bad {
        assert_eq!(k.call(post.clone(), f, req).await.0, status);
    }
    let mut limited = false;
    for _ in 0..20 {
        let req = signup("news").json(&json!({"email": "dan@example.com"}));
        if k.call(post.clone(), f, req).await.0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the per-IP limit never answered 429");
    let preflight = |form: &str, origin: &str| {
        c.request(options.clone(), format!("{base}/f/{form}"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
    };
    for (req, status) in [
        (preflight("welcome", "https://example.com"), 204),
        (preflight("welcome", "https://evil.example"), 403),
        (preflight("nope", "https://example.com"), 404),
    ] {
        assert_eq!(k.call(options.clone(), f, req).await.0, status);
    }

    // The events API.
    let ev = "/api/v1/events";
    let events = |url: &str, token: Option<&str>| {
        let r = c.post(format!("{url}/api/v1/events"));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let (_, b) = k
        .call(
            post.clone(),
            ev,
            events(&base, Some(API)).json(&json!({"events": [
                {"event": "purchase", "email": "anna@example.com", "order_id": "A-1",
                 "product": "course", "amount": 49.0, "currency": "EUR"},
                {"event": "webinar_attended", "lead": anna, "utm_source": "youtube",
                 "utm_medium": "video", "utm_campaign": "autumn"}]})),
        )
        .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        json!({"accepted": 2, "duplicates": 0})
    );
    let big = json!({ "events": vec![json!({"event": "x", "email": "a@example.com", "id": "y".repeat(200)}); 12_000] });
    for (req, status) in [
        (
            events(&base, Some(API))
                .header("Content-Type", "application/json")
                .body("[1,"),
            400,
        ),
        (
            events(&base, Some("wrong token, 16+ chars")).json(&json!({})),
            401,
        ),
        (events(&off, Some(API)).json(&json!({})), 404),
        (events(&base, Some(API)).json(&big), 413),
        (
            events(&base, Some(API)).json(&json!({"event": "Bad Name!"})),
            422,
        ),
    ] {
        assert_eq!(k.call(post.clone(), ev, req).await.0, status);
    }

    // The reports: every one answers its document, and refuses what it does not take.
    let as_admin =
        |m: Method, url: &str, path: &str| c.request(m, format!("{url}{path}")).bearer_auth(ADMIN);
    let now = Utc::now();
    let period = format!(
        "from={}&to={}",
        (now - chrono::Duration::days(1)).format("%Y-%m-%d"),
        (now + chrono::Duration::days(1)).format("%Y-%m-%d")
    );
    for (suffix, good, wrong) in [
        (
            "",
            format!("{period}&by=day&window=7d&slice=utm_source,field:first_name"),
            "by=year",
        ),
        ("/emails", format!("{period}&cohort=calendar"), "window=0d"),
        ("/ab", period.clone(), "cohort=sideways"),
        (
            "/attribution",
            format!("{period}&model=first&lookback=14"),
            "model=u-shaped",
        ),
        (
            "/forecast",
            "days=14&inflow=70/week&set=hello=%2B20%25".to_string(),
            "set=nosuch=%2B10%25",
        ),
    ] {
        let template = format!("/api/v1/reports/funnels/{{id}}{suffix}");
        let at = |id: &str, q: &str| format!("/api/v1/reports/funnels/{id}{suffix}?{q}");
        let (status, b) = k
            .call(
                get.clone(),
                &template,
                as_admin(get.clone(), &base, &at("welcome", &good)),
            )
            .await;
        assert_eq!(status, 200, "{suffix}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["funnel"], "welcome", "{suffix}");
        let (status, b) = k
            .call(
                get.clone(),
                &template,
                as_admin(get.clone(), &base, &at("welcome", wrong)),
            )
            .await;
        assert_eq!(status, 422, "{suffix}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        let param = wrong.split('=').next().unwrap();
        assert_eq!(v["field"], param, "{suffix}");
        // Every report takes a zone; an unknown one is 422 naming `tz`.
        let (status, b) = k
            .call(
                get.clone(),
                &template,
                as_admin(get.clone(), &base, &at("welcome", "tz=Europe/Moscow")),
            )
            .await;
        assert_eq!(status, 200, "{suffix}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["tz"], "Europe/Moscow", "{suffix}");
        let (status, b) = k
            .call(
                get.clone(),
                &template,
                as_admin(get.clone(), &base, &at("welcome", "tz=Mars/Olympus")),
            )
            .await;
        assert_eq!(status, 422, "{suffix}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["field"], "tz", "{suffix}");
        for (req, status) in [
            (
                as_admin(get.clone(), &base, &at("welcome", "colour=red")),
                400,
            ),
            (c.get(format!("{base}{}", at("welcome", ""))), 401),
            (as_admin(get.clone(), &base, &at("nosuch", "")), 404),
        ] {
            assert_eq!(
                k.call(get.clone(), &template, req).await.0,
                status,
                "{suffix}"
            );
        }
    }
    // The event with UTM fields is a touch.
    let (_, b) = k
        .call(
            get.clone(),
            "/api/v1/leads/{id}",
            as_admin(get.clone(), &base, &format!("/api/v1/leads/{anna}")),
        )
        .await;
    let lead: Value = serde_json::from_slice(&b).unwrap();
    let touch = lead["touches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "youtube")
        .unwrap_or_else(|| panic!("no touch from the event: {lead}"));
    assert_eq!(
        (&touch["channel"], &touch["campaign"]),
        (&json!("video"), &json!("autumn"))
    );

    // Signed webhooks.
    let purchase = r#"{"order_id": "B-7", "email": "ben@example.com", "product": "course"}"#;
    let hp = "/hooks/purchase";
    let hook = |url: &str, path: &str| c.post(format!("{url}{path}"));
    let (_, b) = k
        .call(post.clone(), hp, signed(hook(&base, hp), purchase))
        .await;
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["status"], "ok");
    for (req, status) in [
        (signed(hook(&base, hp), "not json"), 400),
        (hook(&base, hp).body(purchase), 401),
        (signed(hook(&off, hp), purchase), 404),
        (signed(hook(&base, hp), r#"{"order_id": "C-1"}"#), 422),
    ] {
        assert_eq!(k.call(post.clone(), hp, req).await.0, status);
    }
    let hd = "/hooks/delivery";
    let report = r#"{"type": "bounce", "email": "cleo@example.com", "id": "evt-1"}"#;
    k.call(post.clone(), hd, signed(hook(&base, hd), report))
        .await;
    for (req, status) in [
        (signed(hook(&base, hd), "{"), 400),
        (hook(&base, hd).body(report), 401),
        (signed(hook(&off, hd), report), 404),
        (signed(hook(&base, hd), r#"{"type": "spam"}"#), 422),
    ] {
        assert_eq!(k.call(post.clone(), hd, req).await.0, status);
    }

    // A payment provider's notification (a Stripe account: see tests/payments.rs for all).
    let pay = "/hooks/pay/{name}";
    let event = |product: &str| {
        json!({ "id": "evt_1", "type": "checkout.session.completed", "created": 1764580000,
            "data": { "object": { "id": "cs_1", "payment_intent": "pi_1", "payment_status": "paid",
            "amount_total": 4900, "currency": "eur", "metadata": { "product": product },
            "customer_details": { "email": "dan@example.com" } } } })
        .to_string()
    };
    let stripe = |body: String| {
        use hmac::{KeyInit, Mac};
        let t = Utc::now().timestamp();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(STRIPE.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        c.post(format!("{base}/hooks/pay/stripe"))
            .header("stripe-signature", format!("t={t},v1={sig}"))
            .body(body)
    };
    for (req, status) in [
        (stripe(event("Course")), 200),
        (stripe("[]".into()), 400),
        (
            c.post(format!("{base}/hooks/pay/stripe"))
                .body(event("Course")),
            401,
        ),
        (
            c.post(format!("{base}/hooks/pay/paypal"))
                .body(event("Course")),
            404,
        ),
        (stripe(event("Other")), 422),
    ] {
        assert_eq!(k.call(post.clone(), pay, req).await.0, status);
    }

    // The links in emails.
    let link = |expires: Option<i64>| {
        tokens::Click {
            message: 999_999,
            link: "offer".into(),
            url: "https://example.com/offer".into(),
            expires,
        }
        .token(SECRET)
    };
    let r = "/r/{token}";
    for (token, status) in [
        (link(None), 302),
        (link(Some(1)), 410),
        ("forged.token".to_string(), 403),
    ] {
        assert_eq!(
            k.call(get.clone(), r, c.get(format!("{base}/r/{token}")))
                .await
                .0,
            status
        );
    }
    let o = "/o/{token}";
    let pixel = tokens::open_token(SECRET, 999_999);
    k.call(get.clone(), o, c.get(format!("{base}/o/{pixel}.gif")))
        .await;
    k.call(get.clone(), o, c.get(format!("{base}/o/1.forged.gif")))
        .await;
    let gone = store
        .import_leads(
            &[(
                Email::parse("gone@example.com").unwrap(),
                LeadInput::default(),
            )],
            Consent::Confirmed,
            Utc::now(),
        )
        .await
        .unwrap()[0];
    store.erase_lead(gone).await.unwrap();
    for (purpose, path, template) in [
        (LeadLink::Unsubscribe, "u", "/u/{token}"),
        (LeadLink::Confirm, "c", "/c/{token}"),
    ] {
        let tokens = [
            (tokens::lead_token(SECRET, purpose, LeadId(anna)), 200),
            ("forged".to_string(), 403),
            (tokens::lead_token(SECRET, purpose, gone), 404),
        ];
        for (token, status) in tokens {
            let url = format!("{base}/{path}/{token}");
            assert_eq!(k.call(get.clone(), template, c.get(&url)).await.0, status);
            let req = c.post(&url).form(&[("scope", "news")]);
            assert_eq!(k.call(post.clone(), template, req).await.0, status);
        }
    }

    // The admin API.
    let admin =
        |m: Method, url: &str, path: &str| c.request(m, format!("{url}{path}")).bearer_auth(ADMIN);
    let lead = "/api/v1/leads/{id}";
    let leads = "/api/v1/leads";
    let (_, b) = k
        .call(
            get.clone(),
            leads,
            admin(get.clone(), &base, "/api/v1/leads?email=anna@example.com"),
        )
        .await;
    let export: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(export["lead"]["id"], anna);
    for (req, status) in [
        (
            c.get(format!("{base}/api/v1/leads?email=anna@example.com")),
            401,
        ),
        (
            admin(get.clone(), &base, "/api/v1/leads?email=zed@example.com"),
            404,
        ),
        (admin(get.clone(), &base, "/api/v1/leads?email=zed"), 422),
        (
            admin(
                get.clone(),
                &base,
                "/api/v1/leads?email=a@b.io&email=c@d.io",
            ),
            400,
        ),
    ] {
        assert_eq!(k.call(get.clone(), leads, req).await.0, status);
    }
    let tags = "/api/v1/leads/{id}/tags";
    let untag = "/api/v1/leads/{id}/tags/{tag}";
    let enroll = "/api/v1/leads/{id}/enroll";
    let remove = "/api/v1/leads/{id}/remove";
    let report = "/api/v1/reports/funnels/{id}";
    let me = format!("/api/v1/leads/{anna}");
    let nobody = "/api/v1/leads/424242";
    let body = |req: RequestBuilder, v: Value| req.json(&v);
    let raw = |req: RequestBuilder| req.header("Content-Type", "application/json").body("{");
    let calls: Vec<(Method, &str, RequestBuilder, u16)> = vec![
        (get.clone(), lead, admin(get.clone(), &base, &me), 200),
        (
            get.clone(),
            lead,
            admin(get.clone(), &base, "/api/v1/leads/x"),
            400,
        ),
        (get.clone(), lead, c.get(format!("{base}{me}")), 401),
        (get.clone(), lead, admin(get.clone(), &base, nobody), 404),
        (
            post.clone(),
            tags,
            body(
                admin(post.clone(), &base, &format!("{me}/tags")),
                json!({"tag": "vip"}),
            ),
            200,
        ),
        (
            post.clone(),
            tags,
            raw(admin(post.clone(), &base, &format!("{me}/tags"))),
            400,
        ),
        (
            post.clone(),
            tags,
            c.post(format!("{base}{me}/tags"))
                .json(&json!({"tag": "vip"})),
            401,
        ),
        (
            post.clone(),
            tags,
            body(
                admin(post.clone(), &base, &format!("{nobody}/tags")),
                json!({"tag": "vip"}),
            ),
            404,
        ),
        (
            post.clone(),
            tags,
            body(
                admin(post.clone(), &base, &format!("{me}/tags")),
                json!({"tag": "Not A Tag!"}),
            ),
            422,
        ),
        (
            delete.clone(),
            untag,
            admin(delete.clone(), &base, &format!("{me}/tags/vip")),
            200,
        ),
        (
            delete.clone(),
            untag,
            admin(delete.clone(), &base, "/api/v1/leads/x/tags/vip"),
            400,
        ),
        (
            delete.clone(),
            untag,
            c.delete(format!("{base}{me}/tags/vip")),
            401,
        ),
        (
            delete.clone(),
            untag,
            admin(delete.clone(), &base, &format!("{nobody}/tags/vip")),
            404,
        ),
        (
            delete.clone(),
            untag,
            admin(delete.clone(), &base, &format!("{me}/tags/Not%20A%20Tag")),
            422,
        ),
        (
            post.clone(),
            enroll,
            body(
                admin(post.clone(), &base, &format!("{me}/enroll")),
                json!({"funnel": "news"}),
            ),
            200,
        ),
        (
            post.clone(),
            enroll,
            raw(admin(post.clone(), &base, &format!("{me}/enroll"))),
            400,
        ),
        (
            post.clone(),
            enroll,
            c.post(format!("{base}{me}/enroll"))
                .json(&json!({"funnel": "news"})),
            401,
        ),
        (
            post.clone(),
            enroll,
            body(
                admin(post.clone(), &base, &format!("{nobody}/enroll")),
                json!({"funnel": "news"}),
            ),
            404,
        ),
        (
            post.clone(),
            enroll,
            body(
                admin(post.clone(), &base, &format!("{me}/enroll")),
                json!({"funnel": "nope"}),
            ),
            422,
        ),
        (
            post.clone(),
            remove,
            body(
                admin(post.clone(), &base, &format!("{me}/remove")),
                json!({"funnel": "news"}),
            ),
            200,
        ),
        (
            post.clone(),
            remove,
            raw(admin(post.clone(), &base, &format!("{me}/remove"))),
            400,
        ),
        (
            post.clone(),
            remove,
            c.post(format!("{base}{me}/remove"))
                .json(&json!({"funnel": "news"})),
            401,
        ),
        (
            post.clone(),
            remove,
            body(
                admin(post.clone(), &base, &format!("{nobody}/remove")),
                json!({"funnel": "news"}),
            ),
            404,
        ),
        (
            post.clone(),
            remove,
            body(
                admin(post.clone(), &base, &format!("{me}/remove")),
                json!({"funnel": "nope"}),
            ),
            422,
        ),
        (
            get.clone(),
            "/api/v1/funnels",
            admin(get.clone(), &base, "/api/v1/funnels"),
            200,
        ),
        (get.clone(), failed, admin(get.clone(), &base, failed), 200),
        (
            get.clone(),
            failed,
            admin(get.clone(), &base, &format!("{failed}?limit=x")),
            400,
        ),
        (get.clone(), failed, c.get(format!("{base}{failed}")), 401),
        (get.clone(), failed, admin(get.clone(), &off, failed), 404),
        (
            get.clone(),
            failed,
            admin(get.clone(), &base, &format!("{failed}?limit=0")),
            422,
        ),
        (
            post.clone(),
            retry,
            admin(post.clone(), &base, &format!("{failed}/{dead}/retry")),
            200,
        ),
        (
            post.clone(),
            retry,
            admin(post.clone(), &base, &format!("{failed}/x/retry")),
            400,
        ),
        (
            post.clone(),
            retry,
            c.post(format!("{base}{failed}/{dead}/retry")),
            401,
        ),
        (
            post.clone(),
            retry,
            admin(post.clone(), &base, &format!("{failed}/424242/retry")),
            404,
        ),
        (
            get.clone(),
            "/api/v1/funnels",
            c.get(format!("{base}/api/v1/funnels")),
            401,
        ),
        (
            get.clone(),
            "/api/v1/funnels",
            admin(get.clone(), &off, "/api/v1/funnels"),
            404,
        ),
        (
            get.clone(),
            report,
            admin(
                get.clone(),
                &base,
                "/api/v1/reports/funnels/welcome?from=2026-01-01&cohort=calendar",
            ),
            200,
        ),
        (
            get.clone(),
            report,
            admin(
                get.clone(),
                &base,
                "/api/v1/reports/funnels/welcome?cohort=a&cohort=b",
            ),
            400,
        ),
        (
            get.clone(),
            report,
            c.get(format!("{base}/api/v1/reports/funnels/welcome")),
            401,
        ),
        (
            get.clone(),
            report,
            admin(get.clone(), &base, "/api/v1/reports/funnels/nosuch"),
            404,
        ),
        (
            get.clone(),
            report,
            admin(
                get.clone(),
                &base,
                "/api/v1/reports/funnels/welcome?from=2026-12-01&to=2026-11-01",
            ),
            422,
        ),
        (
            delete.clone(),
            lead,
            admin(delete.clone(), &base, "/api/v1/leads/x"),
            400,
        ),
        (delete.clone(), lead, c.delete(format!("{base}{me}")), 401),
        (
            delete.clone(),
            lead,
            admin(delete.clone(), &base, nobody),
            404,
        ),
        (delete.clone(), lead, admin(delete.clone(), &base, &me), 200),
    ];
    for (m, template, req, status) in calls {
        let (got, b) = k.call(m.clone(), template, req).await;
        assert_eq!(
            got,
            status,
            "{m} {template}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    assert!(
        store
            .lead_by_email(&Email::parse("anna@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    k.assert_all_seen();
    server.stop().await;
    off_server.stop().await;
}

on_both_backends! {
    contract => openapi,
}
