//! Per email and per link: how many were queued and accepted by the relay, unique opens and
//! clicks, click-to-open, the unsubscribes, bounces and complaints that followed, and how many
//! of the leads who got the email reached the next stage. Opens are inflated by mail-privacy
//! proxies that fetch every image, so clicks and conversions are what to judge an email by.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cohort, Rate};
use crate::funnel::Funnel;
use crate::tally::{FUNNEL, Figures, View, mail, metric};

/// What the report says about opens, in every output.
pub const OPENS_NOTE: &str = "Opens are inflated by mail-privacy proxies (Apple Mail and others \
fetch every image), so judge an email by its clicks and conversions.";

/// One email's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailFigures {
    pub template: String,
    /// The stage that sends it (none for the double opt-in confirmation).
    pub stage: Option<String>,
    /// An email that has figures but that its stage no longer sends (the stage or the send
    /// was removed or renamed in the funnel's file).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Queued for a lead (each send once).
    pub queued: u64,
    /// Accepted by the relay (or written to the outbox folder).
    pub accepted: u64,
    pub failed: u64,
    /// Emails opened at least once, of those accepted.
    pub opened: Rate,
    /// Emails with a link clicked at least once, of those accepted.
    pub clicked: Rate,
    /// Clicked among those opened.
    pub click_to_open: Rate,
    /// Emails after which their lead unsubscribed, bounced or complained before the funnel
    /// sent another.
    pub unsubscribed: u64,
    pub bounced: u64,
    pub complained: u64,
    /// Of the emails queued, those whose run entered the stage after the email's stage (in the
    /// funnel's order) for the first time after getting it.
    pub next_stage: Option<Rate>,
    /// Per link name: the emails with it clicked, and of those, the ones whose run entered
    /// the next stage after getting the email.
    pub links: BTreeMap<String, LinkFigures>,
}

/// One link of an email.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkFigures {
    /// Emails with the link clicked (each email is one lead's).
    pub clicked: u64,
    /// Of them, those whose run entered the next stage after getting the email.
    pub next_stage: Option<Rate>,
}

/// The per-email report of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailReport {
    pub funnel: String,
    pub cohort: Cohort,
    /// The time zone its days are in.
    pub tz: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub note: &'static str,
    pub emails: Vec<EmailFigures>,
}

/// The per-email report of `f` from its counters summed over `[from, to)`: emails of runs
/// that entered in the period (entry cohort) or emails queued in it (calendar). Emails are
/// listed in the funnel's stage order (the double opt-in confirmation first), then by name.
pub fn email_report(
    f: &Funnel,
    fig: &Figures,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> EmailReport {
    let view = match cohort {
        Cohort::Entry => View::Entry,
        Cohort::Calendar => View::Calendar,
    };
    // (stage, template) → what → how many.
    let mut found: BTreeMap<(String, String), BTreeMap<String, i64>> = BTreeMap::new();
    for (stage, m, sum) in fig.of_view(view) {
        let Some(rest) = m.strip_prefix(metric::MAIL) else {
            continue;
        };
        let Some((template, what)) = rest.split_once('\u{1f}') else {
            continue;
        };
        *found
            .entry((stage.to_string(), template.to_string()))
            .or_default()
            .entry(what.to_string())
            .or_default() += sum.n;
    }
    let position = |stage: &str| {
        f.stages
            .iter()
            .position(|s| s.id.value.as_str() == stage)
            .map_or(0, |i| i + 1)
    };
    let mut keys: Vec<&(String, String)> = found.keys().collect();
    keys.sort_by_key(|(stage, template)| (position(stage), template.clone()));
    let emails = keys
        .into_iter()
        .map(|key| {
            let what = &found[key];
            let n = |w: &str| what.get(w).copied().unwrap_or(0).max(0) as u64;
            let (stage, template) = key;
            let stage = (stage != FUNNEL).then(|| stage.clone());
            let accepted = n(mail::ACCEPTED);
            let (opened, clicked) = (n(mail::OPENED), n(mail::CLICKED));
            let next = stage.as_deref().and_then(|s| {
                let i = f.stages.iter().position(|x| x.id.value.as_str() == s)?;
                Some(f.stages.get(i + 1)?.id.value.to_string())
            });
            let removed = stage.as_deref().is_some_and(|st| {
                !f.stages.iter().any(|s| {
                    s.id.value.as_str() == st
                        && s.steps.iter().any(|step| match &step.action {
                            crate::funnel::Action::Send(send) => send
                                .templates()
                                .iter()
                                .any(|t| t.value.as_str() == template),
                            _ => false,
                        })
                })
            });
            EmailFigures {
                template: template.clone(),
                stage,
                removed,
                queued: n(mail::QUEUED),
                accepted,
                failed: n(mail::FAILED),
                opened: Rate::of(opened, accepted),
                clicked: Rate::of(clicked, accepted),
                click_to_open: Rate::of(clicked, opened),
                unsubscribed: n(mail::UNSUBSCRIBED),
                bounced: n(mail::BOUNCED),
                complained: n(mail::COMPLAINED),
                next_stage: next
                    .as_ref()
                    .map(|next| Rate::of(n(&mail::reached(next)), n(mail::QUEUED))),
                links: what
                    .iter()
                    .filter_map(|(w, c)| {
                        let name = w.strip_prefix(mail::LINK)?;
                        (!name.contains('\u{1f}') && *c > 0).then_some((name, *c as u64))
                    })
                    .map(|(name, clicked)| {
                        let next_stage = next.as_ref().map(|next| {
                            let reached =
                                format!("{}{name}\u{1f}{}", mail::LINK, mail::reached(next));
                            Rate::of(n(&reached), clicked)
                        });
                        (
                            name.to_string(),
                            LinkFigures {
                                clicked,
                                next_stage,
                            },
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    EmailReport {
        funnel: f.id.value.to_string(),
        cohort,
        tz: "UTC".into(),
        from,
        to,
        note: OPENS_NOTE,
        emails,
    }
}
