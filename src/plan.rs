//! `autofunnel plan`: before a changed funnel goes live, what happens to the leads in flight.
//! Leads keep their place by stage id and step id; this says, per place, whether the step is
//! still there, moved, or gone, and where the lead goes on then — exactly what the runtime
//! will do.

use std::fmt::Write as _;

use crate::funnel::{Funnel, print};
use crate::store::{Position, Store};

/// What becomes of the leads at one place when the new version goes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The step is where it was.
    Stays,
    /// The step is still there, at another index: the lead stays on it.
    Moved { from: usize, to: usize },
    /// The step is gone: the lead goes on with the step now at its index, if any.
    StepGone { continues_at: Option<String> },
    /// The stage is gone: the lead stays stranded until an event transition moves it.
    StageGone,
}

/// The plan for one funnel.
pub struct FunnelPlan {
    pub funnel: String,
    /// The stored version and whether the files differ from it.
    pub stored: Option<i32>,
    pub changed: bool,
    pub places: Vec<(Position, Fate)>,
}

/// What the runtime will do with the leads at `p` under `f`.
pub fn fate(f: &Funnel, p: &Position) -> Fate {
    let Some(stage) = f.stage(&p.stage) else {
        return Fate::StageGone;
    };
    let index = usize::try_from(p.step_index).unwrap_or(0);
    let Some(id) = &p.step_id else {
        // No step id: the lead stood past the last step, waiting for events.
        return Fate::Stays;
    };
    match stage.steps.iter().position(|s| s.id.as_str() == id) {
        Some(i) if i == index => Fate::Stays,
        Some(i) => Fate::Moved { from: index, to: i },
        None => Fate::StepGone {
            continues_at: stage.steps.get(index).map(|s| s.id.to_string()),
        },
    }
}

/// Compares each loaded funnel with its stored version and places its live leads.
pub async fn plan(store: &Store, funnels: &[Funnel]) -> crate::store::Result<Vec<FunnelPlan>> {
    let mut out = Vec::new();
    for f in funnels {
        let id = &f.id.value;
        let stored = store.latest_funnel_version(id).await?;
        let changed = stored
            .as_ref()
            .is_none_or(|(_, source)| *source != print::to_yaml(f));
        let places = store.live_positions(id).await?.into_iter().map(|p| {
            let fate = fate(f, &p);
            (p, fate)
        });
        out.push(FunnelPlan {
            funnel: id.to_string(),
            stored: stored.map(|(v, _)| v),
            changed,
            places: places.collect(),
        });
    }
    Ok(out)
}

/// The plan as text; `affected` counts the leads whose step moved, vanished or lost its stage.
pub fn render(plans: &[FunnelPlan]) -> (String, i64) {
    let mut out = String::new();
    let mut affected = 0;
    for p in plans {
        let live: i64 = p.places.iter().map(|(pos, _)| pos.leads).sum();
        let state = match (p.stored, p.changed) {
            (None, _) => "new funnel".to_string(),
            (Some(v), false) => format!("unchanged since version {v}"),
            (Some(v), true) => format!("changed since version {v}"),
        };
        let _ = writeln!(out, "{}: {state}, {} in flight", p.funnel, leads(live));
        for (pos, fate) in &p.places {
            let at = format!(
                "{}/{}",
                pos.stage,
                pos.step_id.as_deref().unwrap_or("(end)")
            );
            let what = match fate {
                Fate::Stays => continue,
                Fate::Moved { from, to } => format!(
                    "step moved from #{} to #{}; they stay on it",
                    from + 1,
                    to + 1
                ),
                Fate::StepGone {
                    continues_at: Some(next),
                } => format!("step is gone; they go on at \"{next}\""),
                Fate::StepGone { continues_at: None } => {
                    "step is gone; they wait at the end of the stage for an event".to_string()
                }
                Fate::StageGone => format!(
                    "stage \"{}\" is gone; they stay stranded until an event moves them",
                    pos.stage
                ),
            };
            affected += pos.leads;
            let _ = writeln!(out, "  {} at {at}: {what}", leads(pos.leads));
        }
    }
    let _ = writeln!(out, "{} affected", leads(affected));
    (out, affected)
}

fn leads(n: i64) -> String {
    format!("{n} lead{}", if n == 1 { "" } else { "s" })
}
