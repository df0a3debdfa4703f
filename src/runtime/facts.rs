//! What the engine knows of a lead, built from the store's plain rows. The rules of who may be
//! mailed, which sends count towards a frequency cap and how far back they matter, and what a
//! stored event tells about a lead live here and nowhere else.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::Funnels;
use crate::domain::{Consent, EventKind, LeadId};
use crate::engine::{self, LeadFacts};
use crate::funnel::Funnel;
use crate::store::{EnrollmentRow, FactRows};

/// The events whose traces guards read (clicked, opened, purchased).
pub const FACT_EVENTS: [EventKind; 3] = [EventKind::Click, EventKind::Open, EventKind::Purchase];

/// How far back sent emails matter: the longest frequency-cap period among the running
/// funnels; `None` when no funnel has a cap (nothing to load then).
pub fn cap_window(funnels: &Funnels) -> Option<Duration> {
    funnels
        .values()
        .filter_map(|r| r.funnel.frequency_cap.as_ref())
        .map(|c| {
            let secs = i64::try_from(c.per.as_secs()).unwrap_or(i64::MAX);
            Duration::try_seconds(secs).unwrap_or(Duration::MAX)
        })
        .max()
}

/// The facts of each lead in `rows`.
pub fn lead_facts(rows: FactRows) -> HashMap<LeadId, LeadFacts> {
    let mut out: HashMap<LeadId, LeadFacts> = HashMap::with_capacity(rows.leads.len());
    let mut by_email: HashMap<String, LeadId> = HashMap::with_capacity(rows.leads.len());
    for l in rows.leads {
        let mut fields: std::collections::BTreeMap<String, serde_json::Value> =
            l.fields.into_iter().collect();
        fields.insert("email".into(), l.email.as_str().into());
        if let Some(n) = &l.first_name {
            fields.insert("first_name".into(), n.clone().into());
        }
        by_email.insert(l.email.as_str().to_string(), l.id);
        out.insert(
            l.id,
            LeadFacts {
                id: l.id.0,
                timezone: l.timezone,
                fields,
                score: l.score,
                scored_at: l.scored_at,
                mailable: l.consent != Consent::Unsubscribed,
                confirmed: l.consent == Consent::Confirmed,
                ..LeadFacts::default()
            },
        );
    }
    // Scope `*` stops all mail to the address; a funnel id only that funnel's.
    for (email, scope) in rows.suppressions {
        let Some(f) = by_email.get(email.as_str()).and_then(|l| out.get_mut(l)) else {
            continue;
        };
        if scope == "*" {
            f.mailable = false;
        } else {
            f.muted.insert(scope);
        }
    }
    for (lead, tag) in rows.tags {
        if let Some(f) = out.get_mut(&lead) {
            f.tags.insert(tag);
        }
    }
    for e in rows.events {
        if let Some(f) = out.get_mut(&e.lead) {
            f.observe(&e.event);
        }
    }
    for (lead, at, send_key) in rows.sent {
        if let Some(f) = out.get_mut(&lead)
            && engine::counts_for_cap(super::effects::engine_key(&send_key))
        {
            f.sent_at.push(at);
        }
    }
    out
}

/// The oldest send a round must see for `funnels`' frequency caps, at `now`.
pub fn sent_since(funnels: &Funnels, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cap_window(funnels).map(|w| {
        now.checked_sub_signed(w)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    })
}

/// The engine's state of a stored run. Where the funnel was edited, the step is found again
/// by its id.
pub fn resume(f: &Funnel, row: &EnrollmentRow) -> engine::Enrollment {
    let st = &row.state;
    let mut step = st.step;
    if let (Some(id), Some(stage)) = (&st.step_id, f.stage(st.stage.as_str()))
        && stage.steps.get(step).is_none_or(|s| s.id.as_str() != id)
        && let Some(i) = stage.steps.iter().position(|s| s.id.as_str() == id)
    {
        step = i;
    }
    engine::Enrollment {
        status: st.status,
        stage: st.stage.clone(),
        step,
        stage_entered_at: st.stage_entered_at,
        stage_entry: st.stage_entry,
        deadline: st.deadline,
        wake_at: st.wake_at,
    }
}
