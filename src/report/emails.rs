//! Per email and per link: how many were queued and accepted by the relay, unique opens and
//! clicks, click-to-open, the unsubscribes, bounces and complaints that followed, and how many
//! of the leads who got the email reached the next stage. Opens are inflated by mail-privacy
//! proxies that fetch every image, so clicks and conversions are what to judge an email by.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cohort, Rate, ReportError, Window, entered_by_stage};
use crate::domain::{EnrollmentId, EventKind, LeadId};
use crate::funnel::Funnel;
use crate::store::{EmailRow, ReportRows};

/// What the report says about opens, in every output.
pub const OPENS_NOTE: &str = "Opens are inflated by mail-privacy proxies (Apple Mail and others \
fetch every image), so judge an email by its clicks and conversions.";

/// One email's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailFigures {
    pub template: String,
    /// The stage that sends it (none for the double opt-in confirmation).
    pub stage: Option<String>,
    /// Queued for a lead (each send once).
    pub queued: u64,
    /// Accepted by the relay (or written to the outbox folder).
    pub accepted: u64,
    pub failed: u64,
    /// Leads who opened it at least once.
    pub opened: Rate,
    /// Leads who clicked a link in it at least once.
    pub clicked: Rate,
    /// Clicks among those who opened.
    pub click_to_open: Rate,
    /// Leads who unsubscribed, bounced or complained after this email and before the next one
    /// the funnel sent them.
    pub unsubscribed: u64,
    pub bounced: u64,
    pub complained: u64,
    /// Of the leads who got it, those who went on to the stage after its stage.
    pub next_stage: Option<Rate>,
    /// Unique clicking leads per link name.
    pub links: BTreeMap<String, u64>,
}

/// The per-email report of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailReport {
    pub funnel: String,
    pub cohort: Cohort,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub note: &'static str,
    pub emails: Vec<EmailFigures>,
}

/// The per-email report of `f` over `[from, to)`: emails of runs that entered in the period
/// (entry cohort) or emails queued in it (calendar).
pub fn email_report(
    f: &Funnel,
    rows: &ReportRows,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<EmailReport, ReportError> {
    let w = Window::new(cohort, from, to, now)?;
    let cohort_runs = w.cohort_runs(rows);
    let counted: Vec<&EmailRow> = rows
        .emails
        .iter()
        .filter(|e| w.counts_email(e, &cohort_runs))
        .collect();
    // Each lead's emails from this funnel in order, to know which one came before an event.
    let mut by_lead: HashMap<LeadId, Vec<&EmailRow>> = HashMap::new();
    for e in rows.emails.iter() {
        by_lead.entry(e.lead).or_default().push(e);
    }
    let last_before = |lead: LeadId, at: DateTime<Utc>| -> Option<&str> {
        by_lead
            .get(&lead)?
            .iter()
            .filter(|e| e.created_at <= at)
            .max_by_key(|e| e.created_at)
            .map(|e| e.template.as_str())
    };
    // Each tracked event once, under the email it is about: the one it names, or (for
    // unsubscribes and complaints, which name none) the last one before it.
    // With each, its link when the event names its email (a click does).
    type About<'a> = Vec<(LeadId, Option<Option<&'a str>>)>;
    let mut about: HashMap<(&str, EventKind), About> = HashMap::new();
    for t in &rows.tracking {
        let template = match t.template.as_deref() {
            Some(tpl) => Some(tpl),
            None => last_before(t.lead, t.at),
        };
        if let Some(tpl) = template {
            about
                .entry((tpl, t.kind.clone()))
                .or_default()
                .push((t.lead, t.template.is_some().then_some(t.link.as_deref())));
        }
    }
    // Runs that entered each stage.
    let entered = entered_by_stage(rows);
    let next_of = |stage: &str| -> Option<&str> {
        let i = f.stages.iter().position(|s| s.id.value.as_str() == stage)?;
        f.stages.get(i + 1).map(|s| s.id.value.as_str())
    };
    let mut order: Vec<(Option<String>, String)> = Vec::new();
    let mut groups: BTreeMap<(Option<String>, String), Vec<&EmailRow>> = BTreeMap::new();
    for e in &counted {
        let k = (e.stage.clone(), e.template.clone());
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(e);
    }
    let mut emails = Vec::new();
    for key in order {
        let sent = &groups[&key];
        let (stage, template) = key;
        let leads: BTreeSet<LeadId> = sent.iter().map(|e| e.lead).collect();
        let events = |kind: EventKind| {
            about
                .get(&(template.as_str(), kind))
                .into_iter()
                .flatten()
                .filter(|(lead, _)| leads.contains(lead))
        };
        let track =
            |kind: EventKind| -> BTreeSet<LeadId> { events(kind).map(|(lead, _)| *lead).collect() };
        let opened = track(EventKind::Open);
        let clicked = track(EventKind::Click);
        let mut links: BTreeMap<String, BTreeSet<LeadId>> = BTreeMap::new();
        for (lead, named) in events(EventKind::Click) {
            if let Some(link) = named {
                links
                    .entry(link.unwrap_or_default().to_string())
                    .or_default()
                    .insert(*lead);
            }
        }
        let accepted = sent.iter().filter(|e| e.status == "sent").count() as u64;
        let next_stage = stage.as_deref().and_then(next_of).map(|next| {
            let runs: BTreeSet<EnrollmentId> = sent.iter().filter_map(|e| e.enrollment).collect();
            let there = entered.get(next).cloned().unwrap_or_default();
            Rate::of(runs.intersection(&there).count() as u64, runs.len() as u64)
        });
        let (unsubscribed, bounced, complained) = (
            track(EventKind::Unsubscribed).len() as u64,
            track(EventKind::Bounced).len() as u64,
            track(EventKind::Complained).len() as u64,
        );
        emails.push(EmailFigures {
            template: template.clone(),
            stage,
            queued: sent.len() as u64,
            accepted,
            failed: sent.iter().filter(|e| e.status == "failed").count() as u64,
            opened: Rate::of(opened.len() as u64, leads.len() as u64),
            clicked: Rate::of(clicked.len() as u64, leads.len() as u64),
            click_to_open: Rate::of(
                clicked.intersection(&opened).count() as u64,
                opened.len() as u64,
            ),
            unsubscribed,
            bounced,
            complained,
            next_stage,
            links: links
                .into_iter()
                .map(|(k, v)| (k, v.len() as u64))
                .collect(),
        });
    }
    Ok(EmailReport {
        funnel: f.id.value.to_string(),
        cohort,
        from,
        to,
        note: OPENS_NOTE,
        emails,
    })
}
