//! The per-email counters of what happens to an email after it is queued: accepted by the
//! relay or failed (counted where the outbox records it), and opened, clicked, unsubscribed
//! after, bounced or complained about (counted where the tracked event is stored, on the email
//! [`tally::about`] names). Marks kept on the email (`messages.marks`, `email_links`) make each
//! count once per email, whichever transaction comes first.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::counts::Counting;
use super::sql::{self, Params};
use super::{Backend, Result, from_ms};
use crate::domain::{Event, LeadId};
use crate::tally::{self, FUNNEL, Fact, Mail, MailWhat, Run, Sent, Tracked};

/// The columns of `messages` a [`MailRow`] is read from, for `SELECT` and `RETURNING`.
pub(super) const COLUMNS: &str =
    "id, lead_id, enrollment_id, funnel_id, stage_id, template, created_at, kind, step_id, marks";

/// An email as its counters need it.
#[derive(Debug, Clone)]
pub(super) struct MailRow {
    id: i64,
    lead: i64,
    run: i64,
    funnel: String,
    stage: Option<String>,
    template: String,
    queued_at: DateTime<Utc>,
    step: Option<String>,
    /// Its run's first email of the split step ([`tally::mark::FIRST`]).
    first: bool,
    /// A split's variant ([`tally::mark::VARIANT`]).
    variant: bool,
}

/// A row of [`COLUMNS`] as [`sql::select_packed`] reads it.
pub(super) type Columns = (
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
    Option<String>,
    i64,
);

impl MailRow {
    /// The email of a row of [`COLUMNS`]; `None` for another kind of message or one of no run.
    fn of(r: Columns) -> Option<MailRow> {
        let (id, lead, run, funnel, stage, template, queued_at, kind, step, marks) = r;
        let (Some(run), Some(funnel), "email") = (run, funnel, kind.as_str()) else {
            return None;
        };
        Some(MailRow {
            id,
            lead,
            run,
            funnel,
            stage,
            template: template.unwrap_or_default(),
            queued_at: from_ms(queued_at),
            step,
            first: Mail::split_marks(marks).0,
            variant: Mail::split_marks(marks).1,
        })
    }

    fn mail(&self) -> Mail<'_> {
        Mail {
            stage: self.stage.as_deref().unwrap_or(FUNNEL),
            template: &self.template,
            queued_at: self.queued_at,
            step: self.step.as_deref(),
            first: self.first,
            variant: self.variant,
        }
    }
}

/// Adds `(email, what, when it happened)` to the counters, each run's entry time read here.
async fn count(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    counted: &[(&MailRow, MailWhat<'_>, DateTime<Utc>)],
) -> Result<()> {
    if counted.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<i64> = counted.iter().map(|(m, _, _)| m.run).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut runs: HashMap<i64, DateTime<Utc>> = HashMap::new();
    for chunk in ids.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let rest = format!("FROM enrollments WHERE id IN ({list})");
        let rows: Vec<(i64, i64)> = sql::select_packed(txn, q, "id, entered_at", &rest).await?;
        runs.extend(rows.into_iter().map(|(id, at)| (id, from_ms(at))));
    }
    let mut counting = Counting::new(zone);
    for (m, what, at) in counted {
        if let Some(entered_at) = runs.get(&m.run) {
            // Email counters are kept for all runs together: no origin needed.
            let run = Run {
                funnel: &m.funnel,
                entered_at: *entered_at,
                origin: tally::ALL,
            };
            let (mail, what, at) = (m.mail(), *what, *at);
            counting.count(Fact::Mail {
                run,
                mail,
                what,
                at,
                n: 1,
            });
        }
    }
    counting.write(txn, backend).await
}

/// Counts `what` (accepted, failed) for the emails of rows of [`COLUMNS`] an outbox update
/// changed, as of their queueing (as the rows replayed count an email's outcome).
pub(super) async fn count_status(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    rows: Vec<Columns>,
    what: MailWhat<'_>,
) -> Result<()> {
    let mails: Vec<MailRow> = rows.into_iter().filter_map(MailRow::of).collect();
    let counted: Vec<(&MailRow, MailWhat, DateTime<Utc>)> =
        mails.iter().map(|m| (m, what, m.queued_at)).collect();
    count(txn, backend, zone, &counted).await
}

/// Marks new tracked events (opens, clicks, unsubscribes, bounces, complaints) on the emails
/// they are about — in each funnel of the lead, as [`tally::marked`] says — and counts each
/// mark (and each link clicked) the first time it is made on an email.
pub(super) async fn count_tracking(
    txn: &DatabaseTransaction,
    backend: Backend,
    zone: chrono_tz::Tz,
    events: &[(LeadId, &Event, DateTime<Utc>)],
) -> Result<()> {
    let events: Vec<_> = events
        .iter()
        .filter(|(_, e, _)| tally::mark::of(&e.kind).is_some())
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let mut leads: Vec<i64> = events.iter().map(|(l, _, _)| l.0).collect();
    leads.sort_unstable();
    leads.dedup();
    // Each lead's emails per funnel, in the order they were queued.
    let mut emails: HashMap<(i64, String), Vec<MailRow>> = HashMap::new();
    for chunk in leads.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let rest = format!("FROM messages WHERE lead_id IN ({list}) AND kind = 'email'");
        let mut rows: Vec<Columns> = sql::select_packed(txn, q, COLUMNS, &rest).await?;
        rows.sort_unstable_by_key(|r| r.0);
        for m in rows.into_iter().filter_map(MailRow::of) {
            emails
                .entry((m.lead, m.funnel.clone()))
                .or_default()
                .push(m);
        }
    }
    let mut counted: Vec<(&MailRow, MailWhat, DateTime<Utc>)> = Vec::new();
    let mut clicked: Vec<(&MailRow, &str, DateTime<Utc>)> = Vec::new();
    for (lead, e, at) in events {
        let tracked = Tracked {
            kind: &e.kind,
            message: e.message,
            template: e.template.as_deref(),
            link: e.link.as_deref(),
            at: *at,
        };
        for ((l, _), mails) in &emails {
            if *l != lead.0 {
                continue;
            }
            let sent: Vec<Sent> = mails
                .iter()
                .map(|m| Sent {
                    id: m.id,
                    template: &m.template,
                    queued_at: m.queued_at,
                })
                .collect();
            let Some((i, bit, link)) = tally::marked(&sent, &tracked) else {
                continue;
            };
            let m = &mails[i];
            // The bit is one of a few constants: written in, not bound.
            let mut q = Params::new(backend);
            let sql = format!(
                "UPDATE messages SET marks = marks | {bit} WHERE id = {} AND (marks & {bit}) = 0",
                q.p(m.id),
            );
            if txn.execute_raw(q.statement(sql)).await?.rows_affected() > 0 {
                counted.push((m, MailWhat::Marked(bit), *at));
            }
            if let Some(link) = link {
                let mut q = Params::new(backend);
                let sql = format!(
                    "INSERT INTO email_links (message_id, link) VALUES ({}, {}) \
                     ON CONFLICT (message_id, link) DO NOTHING",
                    q.p(m.id),
                    q.p(link.to_string()),
                );
                if txn.execute_raw(q.statement(sql)).await?.rows_affected() > 0 {
                    counted.push((m, MailWhat::Link(link), *at));
                    clicked.push((m, link, *at));
                }
            }
        }
    }
    // A link clicked for the first time counts toward every stage its run has already
    // reached after the email ([`tally::reached_by`]); stages reached later count it then.
    let firsts = first_entries(txn, backend, clicked.iter().map(|(m, _, _)| m.run)).await?;
    for (m, link, clicked_at) in &clicked {
        let mail = m.mail();
        for (stage, at) in firsts.get(&m.run).into_iter().flatten() {
            if tally::reached_by(&mail, stage, *at) {
                let what = MailWhat::LinkReached { link, stage };
                counted.push((m, what, (*at).max(*clicked_at)));
            }
        }
    }
    count(txn, backend, zone, &counted).await
}

/// The first time each of these runs entered each stage.
async fn first_entries(
    txn: &DatabaseTransaction,
    backend: Backend,
    runs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Vec<(String, DateTime<Utc>)>>> {
    let mut ids: Vec<i64> = runs.collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out: HashMap<i64, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    for chunk in ids.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let list = q.list(chunk);
        let rest = format!(
            "FROM (SELECT enrollment_id, stage_id, MIN(entered_at) AS at FROM stage_history \
             WHERE enrollment_id IN ({list}) GROUP BY enrollment_id, stage_id) firsts"
        );
        let rows: Vec<(i64, String, i64)> =
            sql::select_packed(txn, q, "enrollment_id, stage_id, at", &rest).await?;
        for (run, stage, at) in rows {
            out.entry(run).or_default().push((stage, from_ms(at)));
        }
    }
    Ok(out)
}
