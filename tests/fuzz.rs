//! Bounded fuzzing in the suite: arbitrary signups against the real server (every one refused
//! with a 4xx and nothing stored, or stored and its email accepted by a real SMTP server),
//! and arbitrary input to the funnel parser, the template renderer and every token decoder
//! (no panic). Cases come from proptest's deterministic runner, so a failure repeats.

use autofunnel::delivery::{Sender, Transport, smtp};
use autofunnel::domain::Email;
use autofunnel::store::Store;
use chrono::Utc;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::util::{Server, on_both_backends, project_of};

on_both_backends! {
    arbitrary_signups => arbitrary_signups_are_refused_or_delivered,
}

/// A field name: the ones with a meaning, ordinary ones, and arbitrary text.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["first_name", "name", "timezone", "utm_source", "utm_campaign",
            "referrer", "landing_url", "city", "cart_url", "website", "plan_2"]).prop_map(String::from),
        1 => "[a-z_]{1,70}",
        1 => any::<String>(),
    ]
}

/// A value's bytes: arbitrary text of every Unicode class, control characters, invalid UTF-8,
/// and now and then a long one (up to 100 KB).
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => any::<String>().prop_map(String::into_bytes),
        2 => "[a-zA-Zа-яА-Я0-9 .,'-]{0,40}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec!["Anna\r\nBcc: x@example.net", "a\u{0}b", "\u{1b}[31mred",
            "Europe/Berlin", "Mars/Base", "https://evil.example.net/x", "\u{202e}gnp.exe"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => (1usize..100_000).prop_map(|n| vec![b'x'; n]),
    ]
}

/// A runner with a fixed seed: the same cases every run, so a failure repeats.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        ..Config::default()
    };
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    TestRunner::new_with_rng(config, rng)
}

fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Any map of field → arbitrary value posted to `/f/{form}` is refused with a 4xx and nothing
/// stored, or stored and its email composed and accepted by the SMTP server; the server never
/// answers 5xx.
async fn arbitrary_signups_are_refused_or_delivered(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    store.migrate().await.unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/fuzz.yaml",
                "name: Fuzz\nfrom: \"Shop <shop@example.com>\"\nentry: { form: fuzz }\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hello\n      - exit: completed\n",
            ),
            (
                "templates/fuzz/hello.subject",
                "Hi {{ lead.first_name }} from {{ lead.city | default(value='') }}",
            ),
            (
                "templates/fuzz/hello.html",
                "<p>Hi {{ lead.first_name }}, {{ lead.city | default(value='') }}</p>\
                 <a href=\"{{ lead.cart_url | default(value='https://shop.example.com/') }}\">Cart</a>",
            ),
        ],
    );
    let rt = crate::util::engine(&store, &p, Utc::now()).await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(listener, crate::util::off(&rt));
    let client = crate::util::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut runner = runner(200);
    let case = prop::collection::vec((name(), value()), 0..6);
    let (mut refused, mut stored) = (0, Vec::new());
    for i in 0..200 {
        let fields = case.new_tree(&mut runner).unwrap().current();
        let address = format!("fuzz{i}@example.com");
        // Every other case as JSON (which carries only valid UTF-8: invalid bytes are sent
        // replaced), the others form-encoded byte by byte.
        let (body, kind) = if i % 2 == 0 {
            let mut body = format!("email={}", percent(address.as_bytes()));
            for (k, v) in &fields {
                body.push_str(&format!("&{}={}", percent(k.as_bytes()), percent(v)));
            }
            (body, "application/x-www-form-urlencoded")
        } else {
            let mut map = serde_json::Map::new();
            for (k, v) in &fields {
                map.insert(k.clone(), String::from_utf8_lossy(v).into_owned().into());
            }
            map.insert("email".into(), address.clone().into());
            (
                serde_json::Value::Object(map).to_string(),
                "application/json",
            )
        };
        let size = body.len();
        let sent = client
            .post(format!("{base}/f/fuzz"))
            .header("content-type", kind)
            .body(body)
            .send()
            .await;
        let status = match sent {
            Ok(r) => r.status().as_u16(),
            // Over the 64 KiB limit the server may answer 413 and close before the client has
            // written the whole body: the client then sees the connection reset.
            Err(_) if size > 64 * 1024 => 413,
            Err(e) => panic!("case {i}: {e}"),
        };
        let lead = store
            .lead_by_email(&Email::parse(&address).unwrap())
            .await
            .unwrap();
        match status {
            400..=499 => {
                refused += 1;
                assert!(
                    lead.is_none(),
                    "case {i}: refused ({status}) but stored: {fields:?}"
                );
            }
            200..=399 => {
                let honeypot = fields
                    .iter()
                    .any(|(k, v)| k == "website" && !String::from_utf8_lossy(v).trim().is_empty());
                assert!(
                    lead.is_some() || honeypot,
                    "case {i}: {status} but not stored"
                );
                stored.extend(lead);
            }
            _ => panic!("case {i}: answered {status} to {fields:?}"),
        }
    }
    server.stop().await;
    // Every stored signup's email is made and accepted.
    let (port, got) = crate::delivery::smtp_server().await;
    let target = smtp::Target::parse(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::smtp(target, 2),
        "https://go.example.com",
        b"fuzz test secret",
    );
    let tally = sender.drain(Utc::now()).await.unwrap();
    assert_eq!(tally.sent, stored.len(), "{tally:?}");
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert_eq!(got.lock().unwrap().len(), stored.len());
    eprintln!(
        "fuzzed signups: {} stored and delivered, {refused} refused",
        stored.len()
    );
    assert!(
        refused > 0 && !stored.is_empty(),
        "the cases should cover both outcomes"
    );
}

/// The funnel parser, on arbitrary text and on mutations of a real funnel: diagnostics, never a
/// panic.
#[test]
fn the_funnel_parser_never_panics() {
    let real =
        std::fs::read_to_string(crate::util::root().join("funnels/relationships-course.yaml"))
            .unwrap();
    let mut runner = runner(300);
    let mutated =
        (0..real.len(), any::<String>(), 0usize..40).prop_map(move |(at, insert, cut)| {
            let mut at = at;
            while !real.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + cut).min(real.len());
            while !real.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{insert}{}", &real[..at], &real[end..])
        });
    let text = prop_oneof![any::<String>(), "[ \\-:a-z{}\\[\\]\n]{0,300}", mutated];
    runner
        .run(&text, |t| {
            let mut sink = autofunnel::funnel::Sink::new(std::path::Path::new("f.yaml"));
            let _ = autofunnel::funnel::parse_text(std::path::Path::new("f.yaml"), &t, &mut sink);
            Ok(())
        })
        .unwrap();
}

/// Every token decoder, on arbitrary text and on real tokens with a byte changed: no panic, and
/// nothing but an unaltered token verifies.
#[test]
fn token_decoders_never_panic_or_accept_forgeries() {
    use autofunnel::domain::LeadId;
    use autofunnel::tokens::{
        Click, LeadLink, lead_token, open_token, verify_lead_token, verify_open,
    };
    let secret = b"token fuzz secret";
    let click = Click {
        message: 7,
        link: "buy".into(),
        url: "https://shop.example.com/buy".into(),
        expires: Some(1_900_000_000),
    }
    .token(secret);
    let real = [
        click.clone(),
        open_token(secret, 7),
        lead_token(secret, LeadLink::Unsubscribe, LeadId(7)),
        lead_token(secret, LeadLink::Confirm, LeadId(7)),
    ];
    let mut runner = runner(500);
    let changed =
        (0usize..4, any::<prop::sample::Index>(), any::<char>()).prop_map(move |(k, at, c)| {
            let t: Vec<char> = real[k].chars().collect();
            let i = at.index(t.len());
            let mut t2 = t.clone();
            t2[i] = c;
            (
                t.into_iter().collect::<String>(),
                t2.into_iter().collect::<String>(),
            )
        });
    runner
        .run(&(any::<String>(), changed), |(junk, (orig, forged))| {
            for t in [&junk, &forged] {
                let _ = Click::verify(secret, t);
                let _ = verify_open(secret, t);
                let _ = verify_lead_token(secret, LeadLink::Unsubscribe, t);
                let _ = verify_lead_token(secret, LeadLink::Confirm, t);
            }
            if forged != orig {
                prop_assert!(Click::verify(secret, &forged).is_none() || forged == click);
                prop_assert!(
                    verify_open(secret, &forged) != Some(7)
                        || forged.strip_suffix(".gif") == Some(&orig)
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Templates rendered with arbitrary lead data: an email or a template error, never a panic.
#[test]
fn templates_render_any_lead_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            (
                "funnels/t.yaml",
                "name: T\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: s\n    steps:\n      - send: hi\n      - exit: completed\n",
            ),
            ("templates/t/hi.subject", "Hi {{ lead.first_name }}"),
            (
                "templates/t/hi.html",
                "<p>{{ lead.first_name | upper }} {{ lead.note | default(value='') | truncate(length=20) }}</p>",
            ),
        ],
    );
    let set = &p.templates["t"];
    let mut runner = runner(300);
    runner
        .run(&(any::<String>(), any::<String>()), |(name, note)| {
            let mut cx = tera::Context::new();
            cx.insert(
                "lead",
                &serde_json::json!({ "first_name": name, "note": note }),
            );
            let _ = set.render("hi", &cx);
            Ok(())
        })
        .unwrap();
}
