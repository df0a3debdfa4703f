//! What the reports read, as plain rows: a funnel's runs, their stage visits, and what their
//! leads did. Each report says which rows it needs; each kind is one query that selects only
//! the columns used and finds the funnel's leads in the database (no list of ids sent back and
//! forth). The figures are computed by `report`, not here.

use rustc_hash::FxHashMap as HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, QueryResult, Statement, StreamTrait, Value};

use super::sql::{self, Leads, Params};
use super::{Backend, Result, Store, StoreError, event_of, from_ms, ms, parse_fields};
use crate::domain::{EnrollmentId, EventKind, FunnelId, LeadId, Outcome, RunStatus, StageId};
use crate::tally::{
    self, Fact, LeadRun, Mail, MailFacts, Order, Reached, Run, RunFacts, Sent, Tally, Touch,
    Tracked, Visit,
};

/// One run of a lead through the funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub enrollment: EnrollmentId,
    pub lead: LeadId,
    pub entered_at: DateTime<Utc>,
    pub status: RunStatus,
    pub exited_at: Option<DateTime<Utc>>,
    /// Where its lead came from when it began ([`crate::tally::origin`]).
    pub origin: String,
}

/// One stage visit of a run: when it began and ended, why, and where it led.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitRow {
    pub enrollment: EnrollmentId,
    pub stage: StageId,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    /// `goto: STAGE`, `event: NAME`, `exit: OUTCOME`, …
    pub reason: Option<String>,
    pub next: Option<StageId>,
}

/// A purchase by a lead of the funnel, or a refund.
#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseRow {
    pub lead: LeadId,
    /// A `refund` event: money given back (its amount) on a purchase of the product.
    pub refund: bool,
    pub product: Option<String>,
    pub amount: Option<crate::domain::Money>,
    pub currency: Option<String>,
    pub at: DateTime<Utc>,
}

/// A touch: where a lead came from, once (a signup's UTM parameters and form, …).
#[derive(Debug, Clone, PartialEq)]
pub struct TouchRow {
    pub lead: LeadId,
    pub at: DateTime<Utc>,
    pub channel: String,
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub form: Option<String>,
}

/// An email a funnel queued.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailRow {
    /// Its outbox row.
    pub id: i64,
    pub lead: LeadId,
    pub enrollment: Option<EnrollmentId>,
    pub stage: Option<String>,
    /// The step that sent it (none for the double opt-in confirmation).
    pub step: Option<String>,
    pub template: String,
    /// `queued`, `sending`, `sent`, `failed`, `suppressed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// A variant of an A/B split, as it was marked when queued ([`tally::mark::VARIANT`]).
    pub variant: bool,
}

/// What tracked events left on an email ([`ReportRows::marks`]).
#[derive(Debug, Clone, Default)]
pub struct Marks<'a> {
    /// Its [`tally::mark`]s, those set when it was queued among them.
    pub bits: i64,
    /// When the event that first left each event's mark came.
    pub at: Vec<(i64, DateTime<Utc>)>,
    /// The links clicked in it, each with its first click.
    pub links: Vec<(&'a str, DateTime<Utc>)>,
}

/// A tracked event marking an email ([`ReportRows::marking`]).
#[derive(Debug, Clone, Copy)]
pub struct Marking<'a> {
    /// The event's index in [`ReportRows::tracking`].
    pub tracked: usize,
    /// The email's in [`ReportRows::emails`].
    pub email: usize,
    /// The [`tally::mark`] it leaves.
    pub bit: i64,
    /// The link clicked.
    pub link: Option<&'a str>,
}

/// A tracked event of a funnel's lead: click, open, unsubscribe, bounce, complaint.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackRow {
    pub lead: LeadId,
    pub kind: EventKind,
    /// The email it names (a tracked link, the open pixel, a bounce from the sender).
    pub message: Option<i64>,
    pub template: Option<String>,
    pub link: Option<String>,
    pub at: DateTime<Utc>,
}

/// A score threshold a run's lead crossed (`mql` or `sql`).
#[derive(Debug, Clone, PartialEq)]
pub struct MilestoneRow {
    pub enrollment: EnrollmentId,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
}

/// A run in a stage now (an active run's open visit): what a forecast goes on from.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub stage: String,
    /// When it entered the stage.
    pub since: DateTime<Utc>,
    /// When the run entered the funnel.
    pub entered_at: DateTime<Utc>,
}

/// What a forecast goes on from: the observed cohort's figures (entry view, all runs), each
/// run in a stage now, and the funnel's first entry.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub figures: tally::Figures,
    pub live: Vec<LiveRow>,
    pub first: Option<DateTime<Utc>>,
}

/// Everything a funnel report reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRows {
    pub funnel: String,
    pub runs: Vec<RunRow>,
    pub visits: Vec<VisitRow>,
    pub purchases: Vec<PurchaseRow>,
    /// The leads' touches, oldest first.
    pub touches: Vec<TouchRow>,
    /// Each lead's fields (`first_name` among them), for slices by field.
    pub fields: Vec<(LeadId, serde_json::Map<String, serde_json::Value>)>,
    /// The funnel's emails, oldest first.
    pub emails: Vec<EmailRow>,
    /// Its leads' clicks, opens, unsubscribes, bounces and complaints, oldest first.
    pub tracking: Vec<TrackRow>,
    /// The runs' score milestones, oldest first.
    pub milestones: Vec<MilestoneRow>,
}

/// Which rows a report reads besides the runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportNeeds {
    /// Each run's origin (its first touch, kept fields and variant): for the counters kept by
    /// it and the slices made from it.
    pub origins: bool,
    pub visits: bool,
    pub purchases: bool,
    pub touches: bool,
    pub fields: bool,
    pub emails: bool,
    pub tracking: bool,
    pub milestones: bool,
}

impl ReportNeeds {
    /// Every kind of row.
    pub const ALL: ReportNeeds = ReportNeeds {
        origins: true,
        visits: true,
        purchases: true,
        touches: true,
        fields: true,
        emails: true,
        tracking: true,
        milestones: true,
    };
}

/// How many lead ids a report or a recount reads at a time.
/// Two ranges are in memory at a time (one read ahead); 10,000 takes a row-path report's peak
/// 30-40 % below that of 20,000 at the same speed (BENCHMARKS.md).
pub const LEAD_RANGE: i64 = 10_000;

impl Store {
    /// `sql` with `$1`, `$2`, … as the backend writes parameters (each used once, in order).
    pub(super) fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let sql = match self.backend {
            Backend::Postgres => sql.to_string(),
            Backend::Sqlite => {
                let mut out = String::with_capacity(sql.len());
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                        while chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        };
        Statement::from_sql_and_values(self.db.get_database_backend(), sql, values)
    }

    /// Runs `sql` and hands each row to `f` as it comes (rows are not gathered first).
    pub(super) async fn each(
        &self,
        sql: &str,
        values: Vec<Value>,
        mut f: impl FnMut(QueryResult) -> Result<()>,
    ) -> Result<()> {
        use futures_util::TryStreamExt as _;
        let mut rows = self.db.stream_raw(self.statement(sql, values)).await?;
        while let Some(r) = rows.try_next().await? {
            f(r)?;
        }
        Ok(())
    }

    /// The funnel's runs that entered before `until`, and the rows of `needs` about them.
    pub async fn report_rows(
        &self,
        funnel: &FunnelId,
        until: DateTime<Utc>,
        needs: ReportNeeds,
    ) -> Result<ReportRows> {
        self.rows_of(funnel, until, needs, &Leads::All).await
    }

    /// [`Store::report_rows`] a range of lead ids at a time ([`LEAD_RANGE`]): each range's
    /// rows are handed to `each` and dropped, so a report over a million leads holds one range
    /// in memory, not the funnel.
    pub async fn each_range(
        &self,
        funnel: &FunnelId,
        until: DateTime<Utc>,
        needs: ReportNeeds,
        each: impl FnMut(ReportRows),
    ) -> Result<()> {
        let left = self.lead_ranges(funnel).await?;
        self.ranges(funnel, until, needs, left).each(each).await
    }

    /// [`Store::each_range`] of the leads of the runs that entered the funnel within one of
    /// `windows` (`[from, to)` each) — and, when `activity`, of those with anything the
    /// calendar view files within one (a stage entered or left, a score milestone, an order or
    /// a refund, and an email queued when `needs` has emails): the rows of those leads (all
    /// their runs, whose orders are shared among them), read as [`lists_and_ranges`] says.
    pub async fn each_range_around(
        &self,
        funnel: &FunnelId,
        until: DateTime<Utc>,
        needs: ReportNeeds,
        windows: &[(DateTime<Utc>, DateTime<Utc>)],
        activity: bool,
        each: impl FnMut(ReportRows),
    ) -> Result<()> {
        // Windows that touch are read as one (a report by day in another zone has two a day,
        // end to end).
        let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = windows.to_vec();
        merged.sort();
        merged.dedup_by(|next, last| {
            let touch = next.0 <= last.1;
            if touch {
                last.1 = last.1.max(next.1);
            }
            touch
        });
        // The leads with rows of each kind in a window, as a query's `FROM …` (its values
        // bound in `q` in the order they appear).
        type Rest = fn(&mut Params, &str, i64, i64) -> String;
        let mut kinds: Vec<Rest> = vec![|q, f, a, b| {
            let f = q.p(f);
            let w = between(q, "entered_at", a, b);
            format!("FROM enrollments WHERE funnel_id = {f} AND {w}")
        }];
        if activity {
            kinds.push(|q, f, a, b| {
                let f = q.p(f);
                let (entered, left) = (
                    between(q, "entered_at", a, b),
                    between(q, "exited_at", a, b),
                );
                format!("FROM stage_history WHERE funnel_id = {f} AND (({entered}) OR ({left}))")
            });
            kinds.push(|q, f, a, b| {
                let f = q.p(f);
                let w = between(q, "occurred_at", a, b);
                format!("FROM milestones WHERE funnel_id = {f} AND {w}")
            });
            // Events have no funnel: orders by leads with a run of it (found by the lead's
            // runs, an index lookup each).
            kinds.push(|q, f, a, b| {
                let w = between(q, "occurred_at", a, b);
                format!(
                    "FROM events WHERE kind IN ('purchase', 'refund') AND {w} AND EXISTS \
                     (SELECT 1 FROM enrollments r WHERE r.lead_id = events.lead_id \
                     AND r.funnel_id = {})",
                    q.p(f)
                )
            });
            if needs.emails {
                kinds.push(|q, f, a, b| {
                    let f = q.p(f);
                    let w = between(q, "created_at", a, b);
                    format!("FROM messages WHERE funnel_id = {f} AND kind = 'email' AND {w}")
                });
            }
        }
        let mut ids: Vec<i64> = Vec::new();
        for (from, to) in &merged {
            for rest in &kinds {
                let mut q = Params::new(self.backend);
                let rest = rest(&mut q, funnel.as_str(), ms(*from), ms(*to));
                let some: Vec<(i64,)> = sql::select_packed(&self.db, q, "lead_id", &rest).await?;
                ids.extend(some.into_iter().map(|(id,)| id));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let left = lists_and_ranges(&ids, self.lead_range);
        self.ranges(funnel, until, needs, left).each(each).await
    }

    /// The rows of each range of the funnel's leads in turn, the next range read on a task of
    /// its own while the caller counts the one before (the database's work and the counting
    /// on two cores instead of one after the other).
    pub(super) fn ranges(
        &self,
        funnel: &FunnelId,
        until: DateTime<Utc>,
        needs: ReportNeeds,
        left: Vec<Leads>,
    ) -> Ranges {
        let mut out = Ranges {
            store: self.clone(),
            funnel: funnel.clone(),
            until,
            needs,
            left: left.into_iter(),
            ahead: None,
        };
        out.ahead = out.read_next();
        out
    }

    /// The funnel's active runs, each in the stage it is in, and the funnel's first entry:
    /// with the counters, all a forecast reads.
    pub async fn in_flight(
        &self,
        funnel: &FunnelId,
    ) -> Result<(Vec<LiveRow>, Option<DateTime<Utc>>)> {
        let mut q = Params::new(self.backend);
        let rest = format!(
            "FROM enrollments WHERE funnel_id = {} AND status = 'active'",
            q.p(funnel.as_str())
        );
        let rows: Vec<(String, i64, i64)> =
            sql::select_packed(&self.db, q, "stage_id, stage_entered_at, entered_at", &rest)
                .await?;
        let live = rows
            .into_iter()
            .map(|(stage, since, entered_at)| LiveRow {
                stage,
                since: from_ms(since),
                entered_at: from_ms(entered_at),
            })
            .collect();
        let mut first = None;
        self.each(
            "SELECT MIN(entered_at) FROM enrollments WHERE funnel_id = $1",
            vec![funnel.as_str().into()],
            |r| {
                first = r.try_get_by_index::<Option<i64>>(0)?.map(from_ms);
                Ok(())
            },
        )
        .await?;
        Ok((live, first))
    }

    /// Reads `n` lead ids at a time instead of [`LEAD_RANGE`] (tests cross many ranges so).
    pub fn with_lead_range(mut self, n: i64) -> Store {
        self.lead_range = n.max(1);
        self
    }

    /// The funnel's lead ids cut into ranges `[first, end)` of [`LEAD_RANGE`] ids.
    pub(super) async fn lead_ranges(&self, funnel: &FunnelId) -> Result<Vec<Leads>> {
        let mut span: Option<(i64, i64)> = None;
        self.each(
            "SELECT MIN(lead_id), MAX(lead_id) FROM enrollments WHERE funnel_id = $1",
            vec![funnel.as_str().into()],
            |r| {
                let low: Option<i64> = r.try_get_by_index(0)?;
                let high: Option<i64> = r.try_get_by_index(1)?;
                span = low.zip(high);
                Ok(())
            },
        )
        .await?;
        let mut out = Vec::new();
        if let Some((mut first, high)) = span {
            while first <= high {
                let end = first.saturating_add(self.lead_range);
                out.push(Leads::Range(first, end));
                first = end;
            }
        }
        Ok(out)
    }

    /// [`Store::report_rows`] of the runs of `leads` only. Each kind of row comes packed in
    /// one answer ([`sql::select_packed`]) and is put in order here.
    pub(super) async fn rows_of(
        &self,
        funnel: &FunnelId,
        until: DateTime<Utc>,
        needs: ReportNeeds,
        leads: &Leads,
    ) -> Result<ReportRows> {
        rows_on(&self.db, self.backend, funnel, until, needs, leads).await
    }
}

/// [`Store::rows_of`] on a connection or a transaction (which sees its own writes).
pub(super) async fn rows_on(
    db: &impl ConnectionTrait,
    backend: Backend,
    funnel: &FunnelId,
    until: DateTime<Utc>,
    needs: ReportNeeds,
    leads: &Leads,
) -> Result<ReportRows> {
    let mut out = ReportRows {
        funnel: funnel.to_string(),
        ..ReportRows::default()
    };
    // The funnel's rows from before `until` (by the column `time`), of the range of leads.
    let of_funnel = |q: &mut Params, time: &str| {
        let mut w = format!(
            "funnel_id = {} AND {time} < {}",
            q.p(funnel.as_str()),
            q.p(ms(until))
        );
        w.push_str(&leads.filter(q));
        w
    };

    let mut q = Params::new(backend);
    let rest = format!("FROM enrollments WHERE {}", of_funnel(&mut q, "entered_at"));
    // A run's origin is a long text: read only when something is counted by it.
    let origin = if needs.origins { "origin" } else { "NULL" };
    type RunCols = (
        i64,
        i64,
        i64,
        String,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let cols = format!("id, lead_id, entered_at, status, outcome, exited_at, {origin}");
    let mut runs: Vec<RunCols> = sql::select_packed(db, q, &cols, &rest).await?;
    runs.sort_unstable_by_key(|r| r.0);
    for (id, lead, entered_at, status, outcome, exited_at, origin) in runs {
        let status = match (status.as_str(), outcome.as_deref()) {
            ("exited", Some(o)) => {
                RunStatus::Exited(Outcome::from_name(o).ok_or_else(|| {
                    StoreError::Corrupt(format!("enrollment {id}: outcome \"{o}\""))
                })?)
            }
            ("unconfirmed", _) => RunStatus::Unconfirmed,
            _ => RunStatus::Active,
        };
        out.runs.push(RunRow {
            enrollment: EnrollmentId(id),
            lead: LeadId(lead),
            entered_at: from_ms(entered_at),
            status,
            exited_at: exited_at.map(from_ms),
            origin: match origin {
                Some(o) => o,
                None if needs.origins => crate::tally::origin([None; 5]),
                None => String::new(),
            },
        });
    }
    if needs.visits {
        let mut q = Params::new(backend);
        let rest = match leads {
            Leads::All => format!(
                "FROM stage_history WHERE {}",
                of_funnel(&mut q, "entered_at")
            ),
            // Some leads' visits are found through their runs (stage_history has no
            // index by lead).
            _ => {
                let until = q.p(ms(until));
                let funnel = q.p(funnel.as_str());
                format!(
                    "FROM stage_history WHERE entered_at < {until} AND enrollment_id IN \
                         (SELECT id FROM enrollments WHERE funnel_id = {funnel}{})",
                    leads.filter(&mut q)
                )
            }
        };
        type VisitCols = (
            i64,
            i64,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let mut visits: Vec<VisitCols> = sql::select_packed(
            db,
            q,
            "id, enrollment_id, stage_id, entered_at, exited_at, exit_reason, next_stage_id",
            &rest,
        )
        .await?;
        visits.sort_unstable_by_key(|v| v.0);
        for (_, run, stage, entered_at, exited_at, reason, next) in visits {
            let Ok(stage) = StageId::parse(&stage) else {
                continue;
            };
            out.visits.push(VisitRow {
                enrollment: EnrollmentId(run),
                stage,
                entered_at: from_ms(entered_at),
                exited_at: exited_at.map(from_ms),
                reason,
                next: next.and_then(|s| StageId::parse(&s).ok()),
            });
        }
    }
    if needs.emails {
        let mut q = Params::new(backend);
        let rest = format!(
            "FROM messages WHERE kind = 'email' AND {}",
            of_funnel(&mut q, "created_at")
        );
        type EmailCols = (
            i64,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            String,
            i64,
            Option<String>,
            i64,
        );
        let mut emails: Vec<EmailCols> = sql::select_packed(
            db,
            q,
            "id, lead_id, enrollment_id, stage_id, template, status, created_at, step_id, marks",
            &rest,
        )
        .await?;
        emails.sort_unstable_by_key(|e| e.0);
        for (id, lead, run, stage, template, status, created_at, step, marks) in emails {
            out.emails.push(EmailRow {
                id,
                lead: LeadId(lead),
                enrollment: run.map(EnrollmentId),
                stage,
                step,
                template: template.unwrap_or_default(),
                status,
                created_at: from_ms(created_at),
                variant: marks & tally::mark::VARIANT != 0,
            });
        }
    }
    if needs.milestones {
        let mut q = Params::new(backend);
        let rest = format!("FROM milestones WHERE {}", of_funnel(&mut q, "occurred_at"));
        let mut rows: Vec<(i64, i64, String, i64)> =
            sql::select_packed(db, q, "id, enrollment_id, kind, occurred_at", &rest).await?;
        rows.sort_unstable_by_key(|r| (r.3, r.0));
        for (_, run, kind, at) in rows {
            if let Ok(kind) = EventKind::parse(&kind) {
                out.milestones.push(MilestoneRow {
                    enrollment: EnrollmentId(run),
                    kind,
                    at: from_ms(at),
                });
            }
        }
    }
    // The funnel's leads, as a subquery.
    let of_leads = |q: &mut Params| {
        format!(
            "SELECT lead_id FROM enrollments WHERE {}",
            of_funnel(q, "entered_at")
        )
    };
    // Each event of the funnel's leads whose kind is one of `kinds` (quoted SQL literals),
    // oldest first; one whose payload cannot be read is left out.
    let events = async |kinds: &str| -> Result<Vec<(LeadId, crate::domain::Event, DateTime<Utc>)>> {
        let mut q = Params::new(backend);
        let rest = format!(
            "FROM events WHERE kind IN ({kinds}) AND lead_id IN ({})",
            of_leads(&mut q)
        );
        let mut rows: Vec<(i64, i64, String, String, i64)> =
            sql::select_packed(db, q, "id, lead_id, kind, payload, occurred_at", &rest).await?;
        rows.sort_unstable_by_key(|r| (r.4, r.0));
        Ok(rows
            .into_iter()
            .filter_map(|(id, lead, kind, payload, at)| {
                let ev = event_of(id, &kind, &payload).ok()?;
                Some((LeadId(lead), ev, from_ms(at)))
            })
            .collect())
    };
    if needs.purchases {
        for (lead, ev, at) in events("'purchase', 'refund'").await? {
            out.purchases.push(PurchaseRow {
                lead,
                refund: ev.kind.is_refund(),
                product: ev.product,
                amount: ev.amount,
                currency: ev.currency,
                at,
            });
        }
    }
    if needs.tracking {
        let kinds = "'click', 'open', 'unsubscribed', 'bounced', 'complained'";
        for (lead, ev, at) in events(kinds).await? {
            out.tracking.push(TrackRow {
                lead,
                kind: ev.kind,
                message: ev.message,
                template: ev.template,
                link: ev.link,
                at,
            });
        }
    }
    if needs.touches {
        let mut q = Params::new(backend);
        let rest = format!("FROM touches WHERE lead_id IN ({})", of_leads(&mut q));
        type TouchCols = (
            i64,
            i64,
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let mut rows: Vec<TouchCols> = sql::select_packed(
            db,
            q,
            "id, lead_id, occurred_at, channel, source, medium, campaign, form_id",
            &rest,
        )
        .await?;
        rows.sort_unstable_by_key(|r| (r.2, r.0));
        for (_, lead, at, channel, source, medium, campaign, form) in rows {
            out.touches.push(TouchRow {
                lead: LeadId(lead),
                at: from_ms(at),
                channel,
                source,
                medium,
                campaign,
                form,
            });
        }
    }
    if needs.fields {
        let mut q = Params::new(backend);
        let rest = format!("FROM leads WHERE id IN ({})", of_leads(&mut q));
        let mut rows: Vec<(i64, String, Option<String>, Option<String>)> =
            sql::select_packed(db, q, "id, fields, first_name, timezone", &rest).await?;
        rows.sort_unstable_by_key(|r| r.0);
        for (id, fields, first_name, timezone) in rows {
            let mut fields = parse_fields(&fields).unwrap_or_default();
            if let Some(n) = first_name {
                fields.insert("first_name".into(), n.into());
            }
            if let Some(z) = timezone {
                fields.insert("timezone".into(), z.into());
            }
            out.fields.push((LeadId(id), fields));
        }
    }
    Ok(out)
}

/// `COL >= a AND COL < b`, the bounds bound in `q`.
fn between(q: &mut Params, col: &str, a: i64, b: i64) -> String {
    format!("{col} >= {} AND {col} < {}", q.p(a), q.p(b))
}

/// The reads that take the leads `ids` (in order): a range of `range` ids where they are at
/// least one in [`DENSE`] of it, else lists of up to `range` ids. Reading a list is dearer
/// per lead than reading a range (a lookup each, in no order), so a range whose ids are mostly
/// wanted is read whole.
fn lists_and_ranges(ids: &[i64], range: i64) -> Vec<Leads> {
    let mut out = Vec::new();
    let mut list: Vec<i64> = Vec::new();
    for bucket in ids.chunk_by(|a, b| a.div_euclid(range) == b.div_euclid(range)) {
        if bucket.len() as i64 * DENSE >= range {
            let first = bucket[0].div_euclid(range) * range;
            out.push(Leads::Range(first, first.saturating_add(range)));
            continue;
        }
        list.extend_from_slice(bucket);
        if list.len() as i64 >= range {
            out.push(Leads::List(std::mem::take(&mut list)));
        }
    }
    if !list.is_empty() {
        out.push(Leads::List(list));
    }
    out
}

/// See [`lists_and_ranges`]. At an eighth (the hours around each day of a zone three hours
/// from the counters') lists made the same report in 15.2 G instructions, ranges in 24.6 G
/// (BENCHMARKS.md, 2026-12-07).
const DENSE: i64 = 4;

/// A funnel's rows a range of leads at a time, one range read ahead ([`Store::ranges`]).
pub(super) struct Ranges {
    store: Store,
    funnel: FunnelId,
    until: DateTime<Utc>,
    needs: ReportNeeds,
    left: std::vec::IntoIter<Leads>,
    ahead: Option<tokio::task::JoinHandle<Result<ReportRows>>>,
}

impl Ranges {
    fn read_next(&mut self) -> Option<tokio::task::JoinHandle<Result<ReportRows>>> {
        let range = self.left.next()?;
        let (store, funnel) = (self.store.clone(), self.funnel.clone());
        let (until, needs) = (self.until, self.needs);
        Some(tokio::spawn(async move {
            store.rows_of(&funnel, until, needs, &range).await
        }))
    }

    /// Hands each range's rows to `each` in turn.
    async fn each(mut self, mut each: impl FnMut(ReportRows)) -> Result<()> {
        while let Some(rows) = self.next().await? {
            each(rows);
        }
        Ok(())
    }

    /// The next range's rows; `None` after the last.
    pub(super) async fn next(&mut self) -> Result<Option<ReportRows>> {
        let Some(read) = self.ahead.take() else {
            return Ok(None);
        };
        self.ahead = self.read_next();
        match read.await {
            Ok(rows) => rows.map(Some),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Corrupt(format!("a report's read stopped: {e}"))),
        }
    }
}

impl Drop for Ranges {
    fn drop(&mut self) {
        if let Some(read) = &self.ahead {
            read.abort();
        }
    }
}

/// Which of the facts of a funnel's stored rows [`ReportRows::replay`] makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// Each run's entry, stage visits, milestones and conversion.
    pub runs: bool,
    /// Orders credited to the stages of runs.
    pub orders: bool,
    /// Orders shared among touches.
    pub attribution: bool,
    /// What became of each email.
    pub mails: bool,
}

impl Replay {
    /// Every fact: what the store's counters hold.
    pub const ALL: Replay = Replay {
        runs: true,
        orders: true,
        attribution: true,
        mails: true,
    };
}

impl ReportRows {
    /// Counts the rows into `tally` as the writes that stored them counted them: the same
    /// facts, made by the same rules, through [`Tally::count`]. Each run counts under the
    /// origin `origin_of` gives it, when given (else its own); orders are shared among touches
    /// in every lookback. Returns what each run has reached.
    pub fn replay(
        &self,
        tally: &mut Tally,
        what: Replay,
        origin_of: Option<&dyn Fn(&RunRow) -> String>,
    ) -> Vec<(EnrollmentId, Reached)> {
        let origins: Vec<String> = match origin_of {
            Some(of) => self.runs.iter().map(of).collect(),
            None => Vec::new(),
        };
        let runs = self.run_facts(&origins);
        let mut facts: Vec<Fact> = Vec::new();
        let mut reached = Vec::new();
        let mut marks = if what.mails || what.orders {
            self.marks()
        } else {
            Default::default()
        };
        let index: HashMap<EnrollmentId, usize> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.enrollment, i))
            .collect();
        // Each email as its counters see it, with the run it is of (none for an email of no
        // run read).
        let mails: Vec<Option<(usize, Mail)>> = if what.mails || what.orders {
            self.emails
                .iter()
                .zip(&marks)
                .map(|(e, m)| {
                    let k = *e.enrollment.and_then(|run| index.get(&run))?;
                    let mail = Mail {
                        stage: e.stage.as_deref().unwrap_or(tally::FUNNEL),
                        template: &e.template,
                        queued_at: e.created_at,
                        step: e.step.as_deref(),
                        first: m.bits & tally::mark::FIRST != 0,
                        variant: e.variant,
                    };
                    Some((k, mail))
                })
                .collect()
        } else {
            Vec::new()
        };
        if what.runs {
            for (r, f) in self.runs.iter().zip(&runs) {
                reached.push((r.enrollment, f.facts(&mut facts)));
                for fact in facts.drain(..) {
                    tally.count(&fact);
                }
            }
        }
        if what.orders || what.attribution {
            let mut first_mails: Vec<Vec<Mail>> = vec![Vec::new(); self.runs.len()];
            for (k, m) in mails.iter().flatten().filter(|(_, m)| m.first) {
                first_mails[*k].push(*m);
            }
            let mut by_lead: HashMap<LeadId, Vec<LeadRun>> = HashMap::default();
            for ((r, f), mails) in self.runs.iter().zip(&runs).zip(first_mails) {
                by_lead.entry(r.lead).or_default().push(LeadRun {
                    run: f.run,
                    firsts: f.firsts(),
                    mails,
                });
            }
            let mut touches: HashMap<LeadId, Vec<Touch>> = HashMap::default();
            for t in &self.touches {
                touches.entry(t.lead).or_default().push(Touch {
                    at: t.at,
                    channel: &t.channel,
                    source: t.source.as_deref(),
                    campaign: t.campaign.as_deref(),
                });
            }
            let mut facts: Vec<Fact> = Vec::new();
            fn order_of(p: &PurchaseRow) -> Order<'_> {
                Order::of(p.product.as_deref(), p.currency.as_deref(), p.amount, p.at)
            }
            // Each lead's orders, oldest first: what its refunds are matched to.
            let mut bought: HashMap<LeadId, Vec<Order>> = HashMap::default();
            for p in self.purchases.iter().filter(|p| !p.refund) {
                bought.entry(p.lead).or_default().push(order_of(p));
            }
            for p in &self.purchases {
                let Some(lead_runs) = by_lead.get(&p.lead) else {
                    continue;
                };
                let order = order_of(p);
                let order = if p.refund {
                    let before = bought.get(&p.lead).map(Vec::as_slice).unwrap_or_default();
                    order.refund_of(before)
                } else {
                    order
                };
                let ts = touches.get(&p.lead).map(Vec::as_slice).unwrap_or_default();
                tally::order_facts(&self.funnel, lead_runs, ts, order, &mut facts);
                for fact in facts.drain(..) {
                    let wanted = match fact {
                        Fact::Bought { .. } | Fact::BoughtAfter { .. } => what.orders,
                        _ => what.attribution,
                    };
                    if wanted {
                        tally.count(&fact);
                    }
                }
            }
        }
        if what.mails {
            let firsts: Vec<Vec<(&str, DateTime<Utc>)>> =
                runs.iter().map(RunFacts::firsts).collect();
            for (i, (e, m)) in self.emails.iter().zip(&mails).enumerate() {
                let Some((k, mail)) = m else {
                    continue;
                };
                let marked = std::mem::take(&mut marks[i]);
                let m = MailFacts {
                    mail: *mail,
                    status: &e.status,
                    marks: marked.bits,
                    marked_at: marked.at,
                    links: marked.links,
                };
                tally::mail_facts(runs[*k].run, &m, &firsts[*k], &mut facts);
                for fact in facts.drain(..) {
                    tally.count(&fact);
                }
            }
        }
        if what.runs {
            // The steps each run sent an email from.
            let at: HashMap<EnrollmentId, usize> = reached
                .iter()
                .enumerate()
                .map(|(i, (r, _))| (*r, i))
                .collect();
            for e in self.emails.iter().filter(|e| e.variant) {
                if let (Some(i), Some(stage), Some(step)) = (
                    e.enrollment.and_then(|r| at.get(&r)),
                    e.stage.as_deref(),
                    e.step.as_deref(),
                ) {
                    reached[*i].1.send(stage, step);
                }
            }
        }
        reached
    }

    /// What the leads' tracked events mark on the funnel's emails (per email, in the order of
    /// [`ReportRows::emails`]), as the store marks them when the events come
    /// ([`tally::marked`]), the first event to leave a mark or click a link leaving it.
    pub fn marks(&self) -> Vec<Marks<'_>> {
        let mut marks = vec![Marks::default(); self.emails.len()];
        // A split's variants, and each run's first email of each split step, as they were
        // marked when queued.
        let mut sent_from: std::collections::HashSet<(EnrollmentId, &str, &str)> =
            Default::default();
        for (e, m) in self.emails.iter().zip(marks.iter_mut()) {
            if !e.variant {
                continue;
            }
            m.bits |= tally::mark::VARIANT;
            if let (Some(run), Some(stage), Some(step)) =
                (e.enrollment, e.stage.as_deref(), e.step.as_deref())
                && sent_from.insert((run, stage, step))
            {
                m.bits |= tally::mark::FIRST;
            }
        }
        for Marking {
            tracked,
            email,
            bit,
            link,
        } in self.marking()
        {
            let (m, at) = (&mut marks[email], self.tracking[tracked].at);
            if m.bits & bit == 0 {
                m.bits |= bit;
                m.at.push((bit, at));
            }
            if let Some(l) = link
                && !m.links.iter().any(|(k, _)| *k == l)
            {
                m.links.push((l, at));
            }
        }
        marks
    }

    /// Each tracked event that marks one of the funnel's emails ([`tally::marked`]).
    pub fn marking(&self) -> Vec<Marking<'_>> {
        let mut by_lead: HashMap<LeadId, Vec<usize>> = HashMap::default();
        for (i, e) in self.emails.iter().enumerate() {
            by_lead.entry(e.lead).or_default().push(i);
        }
        let sent: HashMap<LeadId, Vec<Sent>> = by_lead
            .iter()
            .map(|(lead, ix)| {
                let s = ix
                    .iter()
                    .map(|&i| Sent {
                        id: self.emails[i].id,
                        template: &self.emails[i].template,
                        queued_at: self.emails[i].created_at,
                    })
                    .collect();
                (*lead, s)
            })
            .collect();
        let mut out = Vec::new();
        for (n, t) in self.tracking.iter().enumerate() {
            let (Some(ix), Some(sent)) = (by_lead.get(&t.lead), sent.get(&t.lead)) else {
                continue;
            };
            let tracked = Tracked {
                kind: &t.kind,
                message: t.message,
                template: t.template.as_deref(),
                link: t.link.as_deref(),
                at: t.at,
            };
            if let Some((k, bit, link)) = tally::marked(sent, &tracked) {
                out.push(Marking {
                    tracked: n,
                    email: ix[k],
                    bit,
                    link,
                });
            }
        }
        out
    }

    /// Each run with its visits (in the order they were written) and milestones, under the
    /// origin of the same place in `origins` (its own when there is none).
    fn run_facts<'a>(&'a self, origins: &'a [String]) -> Vec<RunFacts<'a>> {
        let mut visits: HashMap<EnrollmentId, Vec<Visit>> = HashMap::default();
        for v in &self.visits {
            visits.entry(v.enrollment).or_default().push(Visit {
                stage: v.stage.as_str(),
                entered_at: v.entered_at,
                exited_at: v.exited_at,
                reason: v.reason.as_deref(),
                next: v.next.as_ref().map(StageId::as_str),
            });
        }
        let mut milestones: HashMap<EnrollmentId, Vec<(&str, DateTime<Utc>)>> = HashMap::default();
        for m in &self.milestones {
            milestones
                .entry(m.enrollment)
                .or_default()
                .push((m.kind.as_str(), m.at));
        }
        self.runs
            .iter()
            .enumerate()
            .map(|(i, r)| RunFacts {
                run: Run {
                    funnel: &self.funnel,
                    entered_at: r.entered_at,
                    origin: origins.get(i).unwrap_or(&r.origin),
                },
                unconfirmed: r.status == RunStatus::Unconfirmed,
                converted_at: match r.status {
                    RunStatus::Exited(Outcome::Converted) => r.exited_at,
                    _ => None,
                },
                visits: visits.remove(&r.enrollment).unwrap_or_default(),
                milestones: milestones.remove(&r.enrollment).unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_leads_are_listed_and_dense_ones_read_by_range() {
        // Ranges of 32 ids, dense from 8 wanted (a quarter): 0..32 holds two (sparse),
        // 32..64 eight, 64..96 seven (sparse), 96..128 nine.
        let ids = [
            3, 9, 33, 34, 35, 36, 40, 44, 50, 60, 65, 66, 67, 68, 69, 70, 71, 96, 97, 98, 99, 100,
            101, 102, 103, 127,
        ];
        assert_eq!(
            lists_and_ranges(&ids, 32),
            vec![
                Leads::Range(32, 64),
                Leads::Range(96, 128),
                Leads::List(vec![3, 9, 65, 66, 67, 68, 69, 70, 71]),
            ]
        );
        // Lists are cut at the range's size.
        let sparse: Vec<i64> = (0..40).map(|i| i * 100).collect();
        let reads = lists_and_ranges(&sparse, 32);
        assert_eq!(reads.len(), 2);
        assert!(matches!(&reads[0], Leads::List(l) if l.len() == 32));
        assert!(lists_and_ranges(&[], 32).is_empty());
    }
}
