//! Simulation on a virtual clock: one lead, a script of events at virtual times, the real
//! engine, and the timeline it produces. `autofunnel simulate` and the engine tests use it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::{Effect, Enrollment, Input, LeadFacts, new_enrollment, step};
use crate::domain::{Event, EventKind, RunStatus};
use crate::funnel::Funnel;
use crate::funnel::time::Duration as Span;

/// One scripted input at an offset from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Scripted {
    pub after: Span,
    pub input: Input,
}

/// Parses `2d3h purchase webinar-ticket; 4d click course-offer/buy; 1h confirm`.
///
/// Events: `purchase PRODUCT`, `click TEMPLATE[/LINK]`, `open TEMPLATE`, `signup FORM`,
/// `confirm` (the double opt-in click), `unsubscribed`, `bounced`, `complained`, or any custom
/// event name.
pub fn parse_script(text: &str) -> Result<Vec<Scripted>, String> {
    let mut out = Vec::new();
    for (i, part) in text.split([';', '\n']).map(str::trim).enumerate() {
        if part.is_empty() || part.starts_with('#') {
            continue;
        }
        let mut words = part.split_whitespace();
        let (Some(at), Some(name)) = (words.next(), words.next()) else {
            return Err(format!(
                "script entry {} \"{part}\": write it like \"2d3h purchase course\"",
                i + 1
            ));
        };
        let after =
            Span::parse(at).map_err(|e| format!("script entry {} \"{part}\": {e}", i + 1))?;
        let arg = words.next().map(str::to_string);
        if let Some(extra) = words.next() {
            return Err(format!(
                "script entry {} \"{part}\": unexpected \"{extra}\"",
                i + 1
            ));
        }
        let need = |what: &str| -> Result<String, String> {
            arg.clone().ok_or_else(|| {
                format!("script entry {} \"{part}\": `{name}` needs a {what}", i + 1)
            })
        };
        let input = match name {
            "confirm" | "confirmed" => Input::Confirmed,
            "purchase" => Input::Event(Event {
                product: Some(need("product")?),
                ..Event::of(EventKind::Purchase)
            }),
            "click" => {
                let a = need("template")?;
                let (t, l) = match a.split_once('/') {
                    Some((t, l)) => (t.to_string(), Some(l.to_string())),
                    None => (a, None),
                };
                Input::Event(Event {
                    template: Some(t),
                    link: l,
                    ..Event::of(EventKind::Click)
                })
            }
            "open" => Input::Event(Event {
                template: Some(need("template")?),
                ..Event::of(EventKind::Open)
            }),
            "signup" => Input::Event(Event {
                form: Some(need("form")?),
                ..Event::of(EventKind::Signup)
            }),
            other => {
                if arg.is_some() {
                    return Err(format!(
                        "script entry {} \"{part}\": `{other}` takes no argument",
                        i + 1
                    ));
                }
                let kind = EventKind::parse(other)
                    .map_err(|e| format!("script entry {} \"{part}\": {e}", i + 1))?;
                Input::Event(Event::of(kind))
            }
        };
        out.push(Scripted { after, input });
    }
    out.sort_by_key(|s| s.after);
    Ok(out)
}

/// Reads a lead from `id=7 timezone=Europe/Moscow first_name=Anna city=Moscow`: `id` and
/// `timezone` are the lead's own, every other pair a field (numbers read as numbers).
pub fn parse_lead(spec: &str) -> Result<LeadFacts, String> {
    let mut lead = LeadFacts {
        id: 1,
        mailable: true,
        ..LeadFacts::default()
    };
    for pair in spec.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("lead \"{pair}\": write fields as key=value"))?;
        match k {
            "id" => {
                lead.id = v
                    .parse()
                    .map_err(|_| format!("lead id \"{v}\" is not a number"))?
            }
            "timezone" => lead.timezone = Some(crate::funnel::time::parse_timezone(v)?),
            _ => {
                let value = v
                    .parse::<f64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| v.into());
                lead.fields.insert(k.to_string(), value);
            }
        }
    }
    Ok(lead)
}

/// One line of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub at: DateTime<Utc>,
    pub stage: String,
    pub what: String,
}

/// An email the simulated run sent, with what the lead's email would be made from then.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEmail {
    pub at: DateTime<Utc>,
    pub stage: String,
    pub template: String,
    /// The stage's deadline as the run had it.
    pub deadline: Option<DateTime<Utc>>,
    /// The lead's fields at that moment (a field a step set before is there).
    pub fields: BTreeMap<String, serde_json::Value>,
    pub score: i64,
}

/// The result of a simulation.
pub struct Run {
    pub lines: Vec<Line>,
    /// Each email sent, in the order of the timeline's `send` lines.
    pub emails: Vec<SimEmail>,
    pub state: Enrollment,
    pub lead: LeadFacts,
}

/// Runs `lead` through `f` from `start` for at most `horizon`, feeding `script`.
pub fn simulate(
    f: &Funnel,
    mut lead: LeadFacts,
    start: DateTime<Utc>,
    script: &[Scripted],
    horizon: Span,
) -> Run {
    let end = start + Duration::seconds(horizon.as_secs() as i64);
    let mut state = new_enrollment(f, start);
    let mut lines = Vec::new();
    let mut emails = Vec::new();
    let mut pending = script.iter().peekable();
    let mut now = start;
    let mut input = Input::Enroll;
    // Bounded: every round consumes a script entry or moves the clock to a later wake-up.
    for _ in 0..100_000 {
        let t = step(f, &state, &lead, &input, now);
        record(&mut lines, &mut lead, &state, &t.effects, now, &input);
        // Each email with the stage it was sent from and that stage's deadline.
        let mut at_stage = state.stage.to_string();
        for e in &t.effects {
            match e {
                Effect::EnterStage { stage } => at_stage = stage.to_string(),
                Effect::SendEmail { template, .. } => emails.push(SimEmail {
                    at: now,
                    stage: at_stage.clone(),
                    template: template.to_string(),
                    deadline: if at_stage == t.state.stage.as_str() {
                        t.state.deadline
                    } else if at_stage == state.stage.as_str() {
                        state.deadline
                    } else {
                        None
                    },
                    fields: lead.fields.clone(),
                    score: lead.score,
                }),
                _ => {}
            }
        }
        state = t.state;
        let next_event = pending
            .peek()
            .map(|s| start + Duration::seconds(s.after.as_secs() as i64));
        let next_timer = state.wake_at.filter(|_| state.status == RunStatus::Active);
        let (at, next) = match (next_event, next_timer) {
            (Some(e), Some(w)) if w < e => (w, Input::Timer),
            (Some(e), _) => (
                e,
                pending
                    .next()
                    .map(|s| s.input.clone())
                    .unwrap_or(Input::Timer),
            ),
            (None, Some(w)) => (w, Input::Timer),
            (None, None) => break,
        };
        if at > end {
            break;
        }
        now = at.max(now);
        input = next;
    }
    Run {
        lines,
        emails,
        state,
        lead,
    }
}

/// Applies effects to the simulated lead and writes them as timeline lines.
fn record(
    lines: &mut Vec<Line>,
    lead: &mut LeadFacts,
    before: &Enrollment,
    fx: &[Effect],
    now: DateTime<Utc>,
    input: &Input,
) {
    let mut stage = before.stage.to_string();
    let mut push = |stage: &str, what: String| {
        lines.push(Line {
            at: now,
            stage: stage.to_string(),
            what,
        })
    };
    match input {
        Input::Event(e) => {
            let mut what = format!("event {}", e.kind);
            for v in [&e.product, &e.template, &e.link, &e.form]
                .into_iter()
                .flatten()
            {
                let _ = write!(what, " {v}");
            }
            push(&stage, what);
            lead.observe(e);
        }
        Input::Confirmed => push(&stage, "double opt-in confirmed".into()),
        Input::Enroll => push(&stage, "enrolled".into()),
        Input::Timer => {}
    }
    let mut score = lead.score;
    lead.absorb(fx, now);
    for e in fx {
        match e {
            Effect::EnterStage { stage: s } => {
                stage = s.to_string();
                push(&stage, "enter stage".into());
            }
            Effect::LeaveStage { reason, .. } => push(&stage, format!("leave stage ({reason})")),
            Effect::SendEmail { template, .. } => push(&stage, format!("send {template}")),
            Effect::CallWebhook { webhook, .. } => push(&stage, format!("webhook {webhook}")),
            Effect::Tag(t) => push(&stage, format!("tag {t}")),
            Effect::Untag(t) => push(&stage, format!("untag {t}")),
            Effect::SetField { field, value } => push(&stage, format!("set {field} = {value}")),
            Effect::AddScore(n) => {
                score += n;
                push(&stage, format!("score {n:+} = {score}"));
            }
            Effect::Decayed(n) => {
                score -= n;
                push(&stage, format!("score decayed -{n} = {score}"));
            }
            Effect::Emitted(kind) => push(&stage, format!("emit {kind}")),
            Effect::Exit(o) => push(&stage, format!("exit {}", o.name())),
            Effect::Held { until, why } => {
                push(&stage, format!("hold until {} ({why})", until.to_rfc3339()))
            }
            Effect::Skipped { step, why } => push(&stage, format!("skip {step} ({why})")),
        }
    }
}

/// The timeline as text, times on the lead's wall clock: `Mon 2026-11-23 13:00  stage  what`.
pub fn render(lines: &[Line], tz: Tz) -> String {
    let width = lines
        .iter()
        .map(|l| l.stage.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let what = match l.what.strip_prefix("hold until ") {
            Some(rest) => {
                let (at, why) = rest.split_once(' ').unwrap_or((rest, ""));
                let at = DateTime::parse_from_rfc3339(at)
                    .map(|t| t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|_| at.to_string());
                format!("hold until {at} {why}")
            }
            None => l.what.clone(),
        };
        let _ = writeln!(
            out,
            "{}  {:width$}  {what}",
            l.at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"),
            l.stage
        );
    }
    out
}
