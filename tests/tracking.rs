//! Rendering and tracking end to end: a funnel whose email extends a shared layout with a
//! `<style>` and has no text part is sent to `.eml` files; the parsed email has its CSS inlined,
//! a derived text part, signed redirects and an open pixel; following them through the real
//! server records `click` and `open` events, and after the offer's deadline the link leads to
//! the funnel's expired-offer page. Tampered tokens are refused.

use std::path::Path;
use std::sync::Arc;

use autofunnel::delivery::{Sender, Transport};
use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::project;
use autofunnel::runtime::Runtime;
use autofunnel::server::AppState;
use autofunnel::store::{LeadInput, Store};
use chrono::{Duration, Utc};
use mail_parser::MessageParser;

use crate::util::{Server, on_both_backends, project_of};

const FUNNEL: &str = r#"
name: Promo
from: "Shop <shop@example.com>"
expired_offer: https://shop.example.com/ended
entry: { api: true }
products:
  course: { name: "Yoga course", price: 49, currency: EUR }
stages:
  - id: offer
    offer: course
    deadline: 3d
    steps:
      - send: offer
      - wait: 30d
      - exit: completed
"#;

const LAYOUT: &str = r#"<html><head><style>p { color: #333333; } @media (max-width: 600px) { p { font-size: 18px; } }</style></head>
<body>{% block body %}{% endblock body %}<p>Shop, 1 Main St</p></body></html>"#;

const OFFER: &str = r#"{% extends "_layout.html" %}{% block body %}
<p>Hello {{ lead.first_name }}, {{ offer.name }} for {{ offer.price }} {{ offer.currency }}.</p>
<p><a href="https://shop.example.com/buy?course=yoga&amp;plan=full" data-link="buy">Buy now</a>
or read <a href="https://blog.example.com/why-yoga/" data-expires="never">why yoga</a>.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>{% endblock body %}"#;

fn project(dir: &Path) -> Arc<project::Project> {
    project_of(
        dir,
        &[
            ("funnels/promo.yaml", FUNNEL),
            ("templates/_layout.html", LAYOUT),
            ("templates/promo/offer.html", OFFER),
            (
                "templates/promo/offer.subject",
                "{{ offer.name }}: the offer",
            ),
        ],
    )
}

/// The parts of the one `.eml` file written for `lead`'s email.
fn email_of(outbox: &Path, name: &str) -> (String, String) {
    let file = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .find(|b| String::from_utf8_lossy(b).contains(name))
        .unwrap_or_else(|| panic!("no email to {name}"));
    let m = MessageParser::default().parse(&file).unwrap();
    assert_eq!(m.subject(), Some("Yoga course: the offer"));
    (
        m.body_html(0).unwrap().into_owned(),
        m.body_text(0).unwrap().into_owned(),
    )
}

/// Every tracked redirect in `html`, in order.
fn redirects(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        .filter(|h| h.contains("/r/"))
        .collect()
}

async fn lead(store: &Store, email: &str, name: &str) -> LeadId {
    let input = LeadInput {
        first_name: Some(name.into()),
        ..Default::default()
    };
    store
        .import_leads(
            &[(Email::parse(email).unwrap(), input)],
            Consent::Confirmed,
            Utc::now(),
        )
        .await
        .unwrap()[0]
}

async fn links_are_tracked_and_offers_expire(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let now = Utc::now();
    let long_ago = now - Duration::days(10);
    let rt = Arc::new(
        Runtime::new(store.clone(), p.funnels.clone(), "node-a", long_ago)
            .await
            .unwrap(),
    );
    // Late entered ten days ago (its three-day offer is over); Fresh enters now.
    let late = lead(&store, "late@example.com", "Late").await;
    let fresh = lead(&store, "fresh@example.com", "Fresh <b>").await;
    rt.enroll_many(&[late], &crate::util::fid("promo"), long_ago)
        .await
        .unwrap();
    rt.enroll_many(&[fresh], &crate::util::fid("promo"), now)
        .await
        .unwrap();
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let secret = b"tracking secret";
    let (listener, base) = Server::bind().await;
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(outbox.clone()),
        &base,
        secret,
    );
    assert_eq!(sender.drain(now).await.unwrap().sent, 2);

    let (html, text) = email_of(&outbox, "fresh@example.com");
    // Layout applied, CSS inlined (media query kept), lead value escaped.
    assert!(html.contains("Shop, 1 Main St"), "{html}");
    assert!(html.contains(r#"<p style="color: #333333;">"#), "{html}");
    assert!(html.contains("@media"), "{html}");
    assert!(html.contains("Fresh &lt;b&gt;"), "{html}");
    // Two tracked links, the unsubscribe link left alone, the pixel before </body>.
    let links = redirects(&html);
    assert_eq!(links.len(), 2, "{html}");
    assert!(links.iter().all(|l| l.starts_with(&format!("{base}/r/"))));
    assert!(html.contains(&format!("{base}/u/")), "{html}");
    assert!(!html.contains("data-link"), "{html}");
    let pixel = html
        .split(&format!("src=\"{base}/o/"))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(|t| format!("{base}/o/{t}"))
        .unwrap_or_else(|| panic!("no pixel in {html}"));
    // The derived text part carries the same tracked links.
    assert!(text.contains("Hello Fresh <b>, Yoga course"), "{text}");
    for l in &links {
        assert!(text.contains(l.as_str()), "{l} not in {text}");
    }

    let server = Server::start(
        listener,
        AppState {
            secret: Arc::from(&secret[..]),
            ..crate::util::off(&rt)
        },
    );
    let client = crate::util::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let location = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string())
    };

    // A live offer: the link leads to its own target, twice, but one click event is kept.
    for _ in 0..2 {
        let r = get(links[0].clone()).await;
        assert_eq!(r.status(), 302);
        assert_eq!(
            location(&r).as_deref(),
            Some("https://shop.example.com/buy?course=yoga&plan=full")
        );
    }
    let r = get(pixel.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert!(r.bytes().await.unwrap().starts_with(b"GIF89a"));
    let events = store.lead_events(fresh).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["click", "open"], "{events:?}");
    assert_eq!(events[0].1["link"], "buy");
    assert_eq!(events[0].1["template"], "offer");
    assert_eq!(events[1].1["template"], "offer");
    // The click is a touch (once, as the click event): channel email, the funnel as campaign,
    // the email as content.
    let touches = store.touches_of(fresh).await.unwrap();
    let clicks: Vec<_> = touches.iter().filter(|t| t.channel == "email").collect();
    assert_eq!(clicks.len(), 1, "{touches:?}");
    assert_eq!(
        (clicks[0].campaign.as_deref(), clicks[0].content.as_deref()),
        (
            Some(rt.funnels().keys().next().unwrap().as_str()),
            Some("offer")
        )
    );
    // The engine sees the click: the condition `clicked: offer` now holds for this lead.
    let facts = rt.lead_facts(fresh, now).await.unwrap();
    assert!(
        facts
            .clicked
            .iter()
            .any(|(t, l)| t == "offer" && l == "buy"),
        "{:?}",
        facts.clicked
    );

    // The expired offer: the buy link goes to the funnel's page, the blog link still works.
    let (late_html, _) = email_of(&outbox, "late@example.com");
    let late_links = redirects(&late_html);
    let r = get(late_links[0].clone()).await;
    assert_eq!(
        location(&r).as_deref(),
        Some("https://shop.example.com/ended")
    );
    let r = get(late_links[1].clone()).await;
    assert_eq!(
        location(&r).as_deref(),
        Some("https://blog.example.com/why-yoga/")
    );

    // Tampered, foreign or made-up tokens are refused and record nothing.
    let before = store.lead_events(fresh).await.unwrap().len();
    let token = links[0].rsplit('/').next().unwrap();
    let (payload, sig) = token.split_once('.').unwrap();
    let mut other = payload.to_string();
    let flip = if other.ends_with('A') { "B" } else { "A" };
    other.replace_range(other.len() - 1.., flip);
    for bad in [
        format!("{base}/r/{other}.{sig}"),
        format!("{base}/r/{payload}.AAAAAAAAAAAAAAAAAAAAAA"),
        format!("{base}/r/not-a-token"),
    ] {
        let r = get(bad).await;
        assert_eq!(r.status(), 403);
        assert_eq!(location(&r), None);
    }
    assert_eq!(get(format!("{base}/o/1.AAAA.gif")).await.status(), 404);
    // A HEAD from a link scanner follows the link but is not a click.
    let r = client.head(links[1].clone()).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(store.lead_events(fresh).await.unwrap().len(), before);

    server.stop().await;
}

on_both_backends! {
    tracked_links => links_are_tracked_and_offers_expire,
}
