//! The example funnels in `funnels/` pass `check`, and the Russian funnel renders non-ASCII
//! subjects, bodies and sender names intact.

use autofunnel::project::{self, sample_context};
use autofunnel::settings::Settings;

use crate::util::root;

#[test]
fn example_project_passes_check() {
    let settings = Settings::load(&root(), None).unwrap();
    let (loaded, report) = project::check(&settings, None);
    let shown: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(loaded.is_some(), "{shown:#?}");
    assert_eq!(report.errors(), 0);
    let loaded = loaded.unwrap();
    let ids: Vec<&str> = loaded.funnels.iter().map(|f| f.id.value.as_str()).collect();
    assert_eq!(
        ids,
        [
            "abandoned-cart",
            "b2b-follow-up",
            "relationships-course",
            "yoga-course-ru"
        ]
    );
}

#[test]
fn russian_funnel_renders_cyrillic_end_to_end() {
    let settings = Settings::load(&root(), None).unwrap();
    let (loaded, _) = project::check(&settings, None);
    let loaded = loaded.expect("examples pass check");
    let f = loaded
        .funnels
        .iter()
        .find(|f| f.id.value.as_str() == "yoga-course-ru")
        .unwrap();
    assert_eq!(
        f.from.as_ref().unwrap().name.as_deref(),
        Some("Мария Иванова")
    );
    assert_eq!(f.name, "Курс йоги для начинающих");
    let stage = f.stage("mini-kurs").unwrap();
    let cx = sample_context(f, Some(stage), &settings);
    let r = loaded.templates["yoga-course-ru"]
        .render("predlozhenie-mini-kursa", &cx)
        .unwrap();
    assert_eq!(r.subject, "Мини-курс «Спина без боли» — всего 990\u{a0}₽");
    assert!(r.text.contains("Понравился урок?"), "{}", r.text);
    // HTML escaping leaves Cyrillic and guillemets alone.
    assert!(r.html.contains("Мини-курс «Спина без боли»"), "{}", r.html);
}

#[test]
fn lead_values_are_escaped_in_html_only() {
    let settings = Settings::load(&root(), None).unwrap();
    let (loaded, _) = project::check(&settings, None);
    let loaded = loaded.unwrap();
    let f = loaded
        .funnels
        .iter()
        .find(|f| f.id.value.as_str() == "relationships-course")
        .unwrap();
    let mut cx = sample_context(f, f.stage("lead_magnet"), &settings);
    cx.insert(
        "lead",
        &serde_json::json!({ "first_name": "<script>alert(1)</script>" }),
    );
    let set = &loaded.templates["relationships-course"];
    let r = set.render("webinar-ticket", &cx).unwrap();
    assert!(r.html.contains("&lt;script&gt;"), "{}", r.html);
    assert!(!r.html.contains("<script>"));
}

/// Money, the deadline and the time left are written in the funnel's language, or in the
/// lead's when it has one: the English course funnel's tripwire offer for a lead whose
/// `language` is `ru`, and for one without.
#[test]
fn money_and_deadlines_follow_the_email_language() {
    use chrono::TimeZone as _;
    let settings = Settings::load(&root(), None).unwrap();
    let (loaded, _) = project::check(&settings, None);
    let loaded = loaded.unwrap();
    let f = loaded
        .funnels
        .iter()
        .find(|f| f.id.value.as_str() == "relationships-course")
        .unwrap();
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 16, 16, 0, 0).unwrap();
    let deadline = chrono::Utc.with_ymd_and_hms(2026, 1, 18, 16, 0, 0).unwrap();
    let moscow: chrono_tz::Tz = "Europe/Moscow".parse().unwrap();
    let said = |language: Option<&str>| {
        let mut fields = vec![("email".to_string(), "olga@example.com".into())];
        if let Some(l) = language {
            fields.push(("language".to_string(), l.into()));
        }
        let lead = autofunnel::context::lead_of_fields(7, fields, Some(moscow), 0, now);
        let cx = autofunnel::context::context(
            f,
            Some("tripwire"),
            &lead,
            Some(deadline),
            "https://example.com",
            b"k",
            now,
        )
        .into_json();
        (
            cx["offer"]["price_text"].as_str().unwrap().to_string(),
            cx["deadline"]["at"].as_str().unwrap().to_string(),
            cx["deadline"]["left"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        said(None),
        (
            "490 RUB".to_string(),
            "Sunday, 18 January, 7 pm".to_string(),
            "2 days".to_string()
        )
    );
    assert_eq!(
        said(Some("ru")),
        (
            "490\u{a0}₽".to_string(),
            "18 января, 19:00".to_string(),
            "2 дня".to_string()
        )
    );
}

/// Every email of every example extends the shared layout (`templates/_layout.*`): the HTML
/// and the text part both end with why the reader gets it, the funnel's postal address and
/// the unsubscribe link, in the funnel's language — what bulk-mail rules want in each one.
#[test]
fn every_example_email_has_the_footer_bulk_mail_rules_want() {
    use autofunnel::funnel::{Action, Send};
    let settings = Settings::load(&root(), None).unwrap();
    let (loaded, _) = project::check(&settings, None);
    let loaded = loaded.unwrap();
    let mut checked = 0;
    for f in &loaded.funnels {
        let address = f.postal_address.as_deref().expect("every example has one");
        let unsubscribe = match f.language.code() {
            "ru" => "Отписаться",
            _ => "Unsubscribe",
        };
        let set = &loaded.templates[f.id.value.as_str()];
        // Each email with the stage that sends it (the double opt-in confirmation none).
        let mut sent: Vec<(Option<&autofunnel::funnel::Stage>, String)> = Vec::new();
        if let Some(t) = &f.entry.double_opt_in {
            sent.push((None, t.value.to_string()));
        }
        for stage in &f.stages {
            for step in &stage.steps {
                if let Action::Send(send) = &step.action {
                    let names: Vec<String> = match send {
                        Send::Template(t) => vec![t.value.to_string()],
                        Send::Split(ts) => ts.iter().map(|t| t.value.to_string()).collect(),
                    };
                    sent.extend(names.into_iter().map(|n| (Some(stage), n)));
                }
            }
        }
        for (stage, name) in sent {
            let cx = sample_context(f, stage, &settings);
            let r = set.render(&name, &cx).unwrap();
            let url = cx
                .get("unsubscribe_url")
                .and_then(|u| u.as_str())
                .unwrap()
                .to_string();
            for (part, body) in [("html", &r.html), ("text", &r.text)] {
                let tail = &body[body.len().saturating_sub(800)..];
                assert!(
                    tail.contains(address) && tail.contains(&url) && tail.contains(unsubscribe),
                    "{}/{name} ({part}) ends without the footer:\n{body}",
                    f.id.value
                );
            }
            assert!(r.html.contains("<html lang=") && r.html.contains("class=\"footer\""));
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} emails");
}
