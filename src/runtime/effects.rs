//! A transition as the rows the store writes: the engine's state as columns, and its effects
//! as stage visits, outbox rows with their send keys, tag, field and score changes. The store
//! writes these without knowing the engine.

use chrono::{DateTime, Utc};

use crate::domain::{FunnelId, LeadId, StageId};
use crate::engine::{self, Effect};
use crate::funnel::Funnel;
use crate::store::{ClosedVisit, MessageKind, NewMessage, OpenedVisit, RunState, RunWrites};

/// The stored send key of an effect: the lead, the funnel version and when the run entered
/// (ms) before the engine's key (`funnel:stage:entry:step`), so each send happens once per run
/// and stage entry — a transition made again after a stop writes the same key — while a lead's
/// later run of the funnel (re-entry) sends its own emails.
pub fn send_key(lead: LeadId, version: i32, run: DateTime<Utc>, key: &str) -> String {
    format!("{}:v{version}.{}:{key}", lead.0, run.timestamp_millis())
}

/// The engine's key inside a stored send key.
pub fn engine_key(send_key: &str) -> &str {
    send_key.splitn(3, ':').nth(2).unwrap_or(send_key)
}

/// The stage an engine key names (`funnel:stage:entry:step`); `None` for the double opt-in
/// confirmation, which comes before any stage.
fn stage_of(key: &str) -> Option<StageId> {
    key.split(':').nth(1).and_then(|s| StageId::parse(s).ok())
}

/// The engine's state as the columns stored, with the id of the step it stands at (so another
/// version of the funnel finds the step again).
pub fn state_row(f: &Funnel, st: &engine::Enrollment) -> RunState {
    RunState {
        status: st.status,
        stage: st.stage.clone(),
        step: st.step,
        step_id: f
            .stage(st.stage.as_str())
            .and_then(|s| s.steps.get(st.step))
            .map(|s| s.id.to_string()),
        stage_entered_at: st.stage_entered_at,
        stage_entry: st.stage_entry,
        deadline: st.deadline,
        wake_at: st.wake_at,
    }
}

/// The rows one transition of `lead`'s run in `funnel` (version `version`, entered at `run`)
/// writes. `recipient` is the lead's address, for the outbox rows.
pub fn writes(
    lead: LeadId,
    funnel: &FunnelId,
    (version, run): (i32, DateTime<Utc>),
    recipient: &str,
    effects: &[Effect],
) -> RunWrites {
    let mut w = RunWrites::default();
    for (i, fx) in effects.iter().enumerate() {
        match fx {
            Effect::EnterStage { stage } => w.opened.push(OpenedVisit {
                stage: stage.clone(),
                exit: None,
            }),
            Effect::LeaveStage { stage, reason } => {
                let next = effects[i + 1..].iter().find_map(|f| match f {
                    Effect::EnterStage { stage } => Some(stage.clone()),
                    _ => None,
                });
                // A visit opened by this same transition is closed before it is written.
                match w
                    .opened
                    .iter_mut()
                    .rev()
                    .find(|v| v.stage == *stage && v.exit.is_none())
                {
                    Some(v) => v.exit = Some((reason.clone(), next)),
                    None => w.closed.push(ClosedVisit {
                        stage: stage.clone(),
                        reason: reason.clone(),
                        next,
                    }),
                }
            }
            Effect::SendEmail {
                template,
                step,
                key,
                variant,
            } => w.messages.push(NewMessage {
                kind: MessageKind::Email,
                variant: *variant,
                stage: stage_of(key),
                step: step.clone(),
                template: Some(template.clone()),
                send_key: send_key(lead, version, run, key),
                recipient: recipient.to_string(),
                payload: serde_json::json!({ "funnel": funnel.as_str(), "version": version,
                                             "template": template.as_str() }),
            }),
            Effect::CallWebhook { webhook, step, key } => w.messages.push(NewMessage {
                kind: MessageKind::Webhook,
                variant: false,
                stage: stage_of(key),
                step: step.clone(),
                template: None,
                send_key: send_key(lead, version, run, key),
                recipient: recipient.to_string(),
                payload: serde_json::json!({ "funnel": funnel.as_str(), "version": version,
                                             "webhook": webhook.as_str() }),
            }),
            Effect::Tag(t) => w.tags.push((t.clone(), true)),
            Effect::Untag(t) => w.tags.push((t.clone(), false)),
            Effect::SetField { field, value } => w.fields.push((field.clone(), value.clone())),
            Effect::AddScore(n) => {
                w.score += n;
                w.scored = true;
            }
            Effect::Decayed(n) => w.score -= n,
            Effect::Emitted(kind) => w.milestones.push(kind.clone()),
            Effect::Exit(_) | Effect::Held { .. } | Effect::Skipped { .. } => {}
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_keys_hold_the_engine_key() {
        let run = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        let k = send_key(LeadId(7), 3, run, "course:tripwire:1:offer");
        assert_eq!(k, "7:v3.1790000000123:course:tripwire:1:offer");
        assert_eq!(engine_key(&k), "course:tripwire:1:offer");
        // Stored before runs were in the key: read the same.
        assert_eq!(
            engine_key("7:v3:course:tripwire:1:offer"),
            "course:tripwire:1:offer"
        );
        assert_eq!(
            engine_key(&send_key(LeadId(7), 3, run, engine::DOUBLE_OPT_IN)),
            "double-opt-in"
        );
        assert_eq!(
            stage_of("course:tripwire:1:offer").unwrap().as_str(),
            "tripwire"
        );
        assert_eq!(stage_of(engine::DOUBLE_OPT_IN), None);
    }

    #[test]
    fn a_stage_entered_and_left_in_one_transition_is_one_closed_visit() {
        let s = |n: &str| StageId::parse(n).unwrap();
        let fx = [
            Effect::LeaveStage {
                stage: s("a"),
                reason: "goto".into(),
            },
            Effect::EnterStage { stage: s("b") },
            Effect::LeaveStage {
                stage: s("b"),
                reason: "goto".into(),
            },
            Effect::EnterStage { stage: s("c") },
        ];
        let w = writes(
            LeadId(1),
            &FunnelId::parse("f").unwrap(),
            (1, Utc::now()),
            "a@b.io",
            &fx,
        );
        assert_eq!(
            w.closed,
            [ClosedVisit {
                stage: s("a"),
                reason: "goto".into(),
                next: Some(s("b"))
            }]
        );
        assert_eq!(
            w.opened,
            [
                OpenedVisit {
                    stage: s("b"),
                    exit: Some(("goto".into(), Some(s("c"))))
                },
                OpenedVisit {
                    stage: s("c"),
                    exit: None
                }
            ]
        );
    }
}
