//! Engine tests as data: a funnel, a lead and a script of events on a virtual clock give a
//! timeline, compared with `tests/engine/<case>.timeline` (`UPDATE_EXPECT=1` rewrites it).
//! Property tests check the invariants over random scripts.

use std::path::Path;

use autofunnel::domain::RunStatus;
use autofunnel::engine::sim::{self, Scripted};
use autofunnel::engine::{Effect, Input, LeadFacts, new_enrollment, step};
use autofunnel::funnel::{self, Funnel, Sink};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use crate::util::{expect_file, root};

struct Case {
    funnel: Funnel,
    lead: LeadFacts,
    start: DateTime<Utc>,
    script: Vec<Scripted>,
    horizon: funnel::time::Duration,
}

fn load_funnel(path: &Path, text: &str) -> Funnel {
    let mut sink = Sink::new(path);
    let f = funnel::parse_text(path, text, &mut sink);
    assert!(sink.diagnostics.is_empty(), "{:#?}", sink.diagnostics);
    f.unwrap()
}

fn load_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let (head, inline) = match text.split_once("\n---\n") {
        Some((h, f)) => (h, Some(f)),
        None => (text.as_str(), None),
    };
    let header = |key: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let funnel = match (header("funnel"), inline) {
        (Some(file), _) => {
            let p = root().join(&file);
            load_funnel(Path::new(&file), &std::fs::read_to_string(p).unwrap())
        }
        (None, Some(yaml)) => load_funnel(&path.with_extension("yaml"), yaml),
        (None, None) => panic!("{}: no funnel", path.display()),
    };
    Case {
        funnel,
        lead: sim::parse_lead(&header("lead").unwrap_or_default()).unwrap(),
        start: DateTime::parse_from_rfc3339(&header("start").unwrap())
            .unwrap()
            .with_timezone(&Utc),
        script: sim::parse_script(&header("script").unwrap_or_default()).unwrap(),
        horizon: funnel::time::Duration::parse(&header("horizon").unwrap_or("90d".into())).unwrap(),
    }
}

#[test]
fn timelines() {
    let dir = root().join("tests/engine");
    let mut n = 0;
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    cases.sort();
    for path in cases {
        let case = load_case(&path);
        let tz = case.lead.timezone.unwrap_or(case.funnel.timezone);
        let run = sim::simulate(
            &case.funnel,
            case.lead.clone(),
            case.start,
            &case.script,
            case.horizon,
        );
        let text = format!("# times in {}\n{}", tz.name(), sim::render(&run.lines, tz));
        expect_file(&path.with_extension("timeline"), &text);
        n += 1;
    }
    assert!(n >= 10, "only {n} cases");
}

#[test]
fn script_errors_say_what_and_where() {
    assert!(
        sim::parse_script("2d purchase")
            .unwrap_err()
            .contains("`purchase` needs a product")
    );
    assert!(
        sim::parse_script("soon click x")
            .unwrap_err()
            .contains("bad duration \"soon\"")
    );
    assert!(
        sim::parse_script("1d; 2d open a")
            .unwrap_err()
            .contains("script entry 1")
    );
    assert_eq!(
        sim::parse_script("4d click a/b; 1d confirm").unwrap().len(),
        2
    );
}

#[test]
fn a_ninety_day_funnel_simulates_instantly() {
    let case = load_case(&root().join("tests/engine/course-buys-everything.case"));
    let run = sim::simulate(
        &case.funnel,
        case.lead,
        case.start,
        &case.script,
        funnel::time::Duration::parse("90d").unwrap(),
    );
    assert_eq!(
        run.state.status,
        RunStatus::Exited(funnel::Outcome::Converted)
    );
}

fn example(name: &str) -> Funnel {
    let file = format!("funnels/{name}.yaml");
    load_funnel(
        Path::new(&file),
        &std::fs::read_to_string(root().join(&file)).unwrap(),
    )
}

/// Scripts of up to 12 events from a vocabulary that fits the example funnels.
fn scripts() -> impl Strategy<Value = Vec<(u64, usize)>> {
    prop::collection::vec((0u64..40 * 24 * 60, 0usize..EVENTS.len()), 0..12)
}

const EVENTS: [&str; 12] = [
    "confirm",
    "purchase webinar-ticket",
    "purchase course",
    "purchase consulting",
    "purchase mini-kurs",
    "click webinar-offer",
    "open proposal",
    "unsubscribed",
    "presentation_booked",
    "proposal_requested",
    "proposal_accepted",
    "bounced",
];

fn script_of(raw: &[(u64, usize)]) -> Vec<Scripted> {
    let text: Vec<String> = raw
        .iter()
        .map(|(m, e)| format!("{m}m {}", EVENTS[*e]))
        .collect();
    sim::parse_script(&text.join(";")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Nothing is sent after unsubscribe; no step's send key repeats; a live enrollment
    /// always has a wake-up or waits for an event at the end of its stage.
    #[test]
    fn invariants_hold_for_any_script(raw in scripts(), which in 0usize..4, id in 0i64..1000) {
        let name = ["relationships-course", "abandoned-cart", "b2b-follow-up", "yoga-course-ru"][which];
        let f = example(name);
        let start = DateTime::parse_from_rfc3339("2026-11-23T07:00:00Z").unwrap().with_timezone(&Utc);
        let script = script_of(&raw);
        let mut lead = LeadFacts { id, mailable: true, ..LeadFacts::default() };
        lead.fields.insert("start_kursa".into(), "2026-12-20".into());
        let mut state = new_enrollment(&f, start);
        let mut now = start;
        let mut keys = std::collections::BTreeSet::new();
        let mut unsubscribed = false;
        let mut inputs: Vec<(DateTime<Utc>, Input)> =
            script.iter().map(|s| (start + Duration::seconds(s.after.as_secs() as i64), s.input.clone())).collect();
        inputs.reverse();
        let mut input = Input::Enroll;
        for _ in 0..10_000 {
            let t = step(&f, &state, &lead, &input, now);
            if let Input::Event(e) = &input
                && ["unsubscribed", "bounced"].contains(&e.kind.as_str())
            {
                unsubscribed = true;
                lead.mailable = false;
            }
            for fx in &t.effects {
                if let Effect::SendEmail { key, .. } = fx {
                    prop_assert!(!unsubscribed, "sent {key} after unsubscribe");
                    prop_assert!(keys.insert(key.clone()), "step ran twice: {key}");
                    lead.sent_at.push(now);
                }
            }
            state = t.state;
            if state.status == RunStatus::Active && state.wake_at.is_none() {
                let stage = f.stage(state.stage.as_str()).unwrap();
                prop_assert!(state.step >= stage.steps.len(), "stuck at {}#{} with no wake-up", state.stage, state.step);
            }
            let next_event = inputs.last().map(|(t, _)| *t);
            match (next_event, state.wake_at.filter(|_| state.status == RunStatus::Active)) {
                (Some(e), Some(w)) if w < e => { now = w; input = Input::Timer; }
                (Some(e), _) => { now = e.max(now); input = inputs.pop().unwrap().1; }
                (None, Some(w)) => { now = w; input = Input::Timer; }
                (None, None) => break,
            }
        }
    }
}
