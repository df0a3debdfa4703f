//! The runtime of `autofunnel run`: durable enrollments driven by the pure engine, between
//! the engine and the store. Timers are the indexed `wake_at` column; due enrollments are
//! claimed in batches with a lease, stepped, and a round is committed in one transaction; the
//! loop sleeps until the next wake-up or a notification that an earlier one was written.
//!
//! - [`facts`]: the engine's view of a lead, built from the store's rows (mailable, the
//!   frequency-cap window, what events tell).
//! - [`effects`]: a transition as the rows the store writes (visits, outbox rows and their
//!   send keys, tags, fields).
//! - [`signups`]: landing-page signups by group commit.
//! - [`report`]: a report made against the store (counters, or rows a range of leads at a
//!   time).

pub mod effects;
pub mod facts;
pub mod report;
mod signups;

pub use signups::SignupTicket;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;

use crate::domain::{EnrollmentId, Event, EventKind, FunnelId, LeadId, RunStatus, Tag};
use crate::engine::{self, Input, LeadFacts};
use crate::funnel::{EntryTrigger, Funnel, ReEntry, print};
use crate::store::{
    BatchEvent, EnrollmentRow, NewEvent, NewRun, Recorded, RunUpdate, Store, Unstarted, Write,
};

/// How long a claimed enrollment is reserved for its worker; a worker that dies loses it then.
pub const LEASE: Duration = Duration::seconds(30);
/// Enrollments claimed per round.
pub const BATCH: u64 = 500;
/// The longest the loop sleeps without looking at the database (other nodes may add work).
const MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// After a round that was not full, the next one waits at least this long: timers coming due
/// one by one are taken a few dozen at a time instead of a round each, whose fixed cost (a
/// claim, a commit) would otherwise be paid per timer and fall behind a steady stream.
const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(20);

/// A funnel as the runtime runs it, with its stored version.
pub struct Running {
    pub funnel: Funnel,
    pub version: i32,
}

/// What an enrollment request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    New(EnrollmentId),
    /// The lead is in this funnel now.
    AlreadyIn(EnrollmentId),
    /// The funnel's `re_entry` policy refuses another run.
    NotAgain,
}

/// Errors a caller may branch on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no funnel \"{0}\" is loaded")]
    UnknownFunnel(FunnelId),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the signup could not be stored: {0}")]
    Signup(String),
}

pub struct Runtime {
    store: Store,
    /// Swapped whole on reload; a round keeps the map it started with.
    funnels: RwLock<Arc<Funnels>>,
    owner: String,
    wake: Arc<Notify>,
    /// Transitions committed by this runtime since it started.
    committed: AtomicU64,
    /// Signups waiting for the next group commit.
    signups: std::sync::Mutex<Vec<signups::QueuedSignup>>,
    /// Held by whoever commits a group of signups.
    committing: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// Registers each funnel's version (a new one when its canonical text changed).
    pub async fn new(
        store: Store,
        funnels: Vec<Funnel>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<Runtime, RuntimeError> {
        let running = register(&store, funnels, now).await?;
        Ok(Runtime {
            store,
            funnels: RwLock::new(Arc::new(running)),
            owner: owner.to_string(),
            wake: Arc::new(Notify::new()),
            committed: AtomicU64::new(0),
            signups: std::sync::Mutex::new(Vec::new()),
            committing: tokio::sync::Mutex::new(()),
        })
    }

    /// Replaces the running funnels (already checked) with new versions; leads in flight go on
    /// by stage and step id from their next input.
    pub async fn reload(
        &self,
        funnels: Vec<Funnel>,
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        let running = register(&self.store, funnels, now).await?;
        *self.funnels.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(running);
        self.wake.notify_one();
        Ok(())
    }

    /// The funnels running now.
    pub fn funnels(&self) -> Arc<Funnels> {
        self.funnels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many transitions this runtime has committed since it started.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the engine knows of a lead at `now`.
    pub async fn lead_facts(
        &self,
        lead: LeadId,
        now: DateTime<Utc>,
    ) -> Result<LeadFacts, RuntimeError> {
        self.lead_facts_many(&[lead], now)
            .await?
            .remove(&lead)
            .ok_or_else(|| {
                crate::store::StoreError::Corrupt(format!("lead {lead} does not exist")).into()
            })
    }

    /// The facts of many leads, in a few queries whatever their number (a scheduler round).
    pub async fn lead_facts_many(
        &self,
        leads: &[LeadId],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LeadId, LeadFacts>, RuntimeError> {
        self.lead_facts_in(None, leads, now).await
    }

    /// [`Runtime::lead_facts_many`] as a write transaction held open sees them.
    async fn lead_facts_in(
        &self,
        on: Option<&Write>,
        leads: &[LeadId],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LeadId, LeadFacts>, RuntimeError> {
        let since = facts::sent_since(&self.funnels(), now);
        let rows = self
            .store
            .fact_rows_in(on, leads, &facts::FACT_EVENTS, since)
            .await?;
        Ok(facts::lead_facts(rows))
    }

    /// Puts a lead into a funnel, following its re-entry policy.
    pub async fn enroll(
        &self,
        lead: LeadId,
        funnel: &FunnelId,
        now: DateTime<Utc>,
    ) -> Result<Enrolled, RuntimeError> {
        let mut out = self.enroll_many(&[lead], funnel, now).await?;
        Ok(out.pop().unwrap_or(Enrolled::NotAgain))
    }

    /// Puts many leads into a funnel at once (an import, a batch of signups), each following
    /// the re-entry policy; one transaction for all of them. A lead given twice is enrolled once.
    /// Funnels entered by a tag or event the first steps produce start too.
    pub async fn enroll_many(
        &self,
        leads: &[LeadId],
        funnel: &FunnelId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enrolled>, RuntimeError> {
        self.enroll_many_in(None, leads, funnel, now).await
    }

    /// [`Runtime::enroll_many`] in a write transaction held open (`None`: a transaction per
    /// write); a caller holding one wakes the scheduler once it has committed.
    async fn enroll_many_in(
        &self,
        on: Option<&Write>,
        leads: &[LeadId],
        funnel: &FunnelId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enrolled>, RuntimeError> {
        let (out, triggers) = self.enroll_only(on, leads, funnel, now).await?;
        self.start_entries_kept(on, triggers, now).await?;
        Ok(out)
    }

    /// Tags a lead; the funnels whose entry is that tag start for them.
    pub async fn tag(
        &self,
        lead: LeadId,
        tag: &Tag,
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        let trigger = Trigger::Tag(tag.clone());
        let starts = self.starts_a_funnel(&trigger);
        self.store.tag_lead_starting(lead, tag, starts, now).await?;
        self.start_entries_kept(None, vec![(lead, trigger)], now)
            .await
    }

    /// Removes a tag from a lead; a tag the lead does not have is no error.
    pub async fn untag(&self, lead: LeadId, tag: &Tag) -> Result<(), RuntimeError> {
        Ok(self.store.untag_lead(lead, tag).await?)
    }

    /// Whether a running funnel's entry names this tag or event.
    fn starts_a_funnel(&self, t: &Trigger) -> bool {
        self.funnels()
            .iter()
            .any(|(_, r)| r.funnel.entry.triggers.iter().any(|e| t.starts(&e.value)))
    }

    /// The pending entries a write keeps for these triggers of one lead ([`RunWrites::entries`]).
    fn entries_of(&self, triggers: &[(LeadId, Trigger)]) -> Vec<String> {
        let mut out: Vec<String> = triggers
            .iter()
            .filter(|(_, t)| self.starts_a_funnel(t))
            .map(|(_, t)| t.text())
            .collect();
        out.dedup();
        out
    }

    /// [`Runtime::start_entries`], then the pending entries the writes kept for them go.
    async fn start_entries_kept(
        &self,
        on: Option<&Write>,
        pending: Vec<(LeadId, Trigger)>,
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        // Only triggers that start a funnel were kept.
        let leads: Vec<LeadId> = pending
            .iter()
            .filter(|(_, t)| self.starts_a_funnel(t))
            .map(|(l, _)| *l)
            .collect();
        self.start_entries(on, pending, now).await?;
        if !leads.is_empty() {
            self.store.entries_started(on, &leads, now).await?;
        }
        Ok(())
    }

    /// Starts the funnels of the pending entries kept before `before` that a stopped process
    /// never started (or never cleared): for each, the funnels whose entry names it that the
    /// lead has not entered since, following their re-entry policy. Returns how many entries
    /// were taken.
    pub async fn resume_pending(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, RuntimeError> {
        const PAGE: u64 = 5_000;
        let mut taken = 0;
        loop {
            let page = self.store.pending_entries(before, PAGE).await?;
            if page.is_empty() {
                break;
            }
            taken += page.len();
            let funnels = self.funnels();
            let mut by_funnel: BTreeMap<&FunnelId, Vec<(LeadId, DateTime<Utc>)>> = BTreeMap::new();
            for (_, lead, text, at) in &page {
                let Some(t) = Trigger::parse(text) else {
                    continue;
                };
                for (id, r) in funnels.iter() {
                    if r.funnel.entry.triggers.iter().any(|e| t.starts(&e.value)) {
                        by_funnel.entry(id).or_default().push((*lead, *at));
                    }
                }
            }
            let mut kept = BTreeSet::new();
            for (f, pending) in by_funnel {
                let leads: Vec<LeadId> = pending.iter().map(|(l, _)| *l).collect();
                let mut entered: HashMap<LeadId, DateTime<Utc>> = HashMap::new();
                for e in self.store.enrollments_of_many(&leads, f).await? {
                    let at = entered.entry(e.lead).or_insert(e.entered_at);
                    *at = (*at).max(e.entered_at);
                }
                let mut todo: Vec<LeadId> = pending
                    .iter()
                    .filter(|(l, at)| entered.get(l).is_none_or(|e| *e < *at))
                    .map(|(l, _)| *l)
                    .collect();
                todo.sort_unstable();
                todo.dedup();
                for lead in todo {
                    if let Err(e) = self.enroll_many(&[lead], f, now).await {
                        tracing::error!(lead = %lead, funnel = %f, error = %e, "cannot start a kept entry's funnel; trying again in a minute");
                        kept.insert(lead);
                    }
                }
            }
            let done: Vec<i64> = page
                .iter()
                .filter(|(_, l, _, _)| !kept.contains(l))
                .map(|(id, _, _, _)| *id)
                .collect();
            self.store.pending_done(&done).await?;
            if done.len() < page.len() || (page.len() as u64) < PAGE {
                break;
            }
        }
        Ok(taken)
    }

    /// Starts, for each lead, the funnels whose `entry` names the tag or event: then for the
    /// tags and events their first steps produce, up to `MAX_CHAIN` links deep.
    async fn start_entries(
        &self,
        on: Option<&Write>,
        mut pending: Vec<(LeadId, Trigger)>,
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        for _ in 0..MAX_CHAIN {
            if pending.is_empty() {
                return Ok(());
            }
            let funnels = self.funnels();
            let mut next = Vec::new();
            for (id, r) in funnels.iter() {
                let leads: Vec<LeadId> = pending
                    .iter()
                    .filter(|(_, t)| r.funnel.entry.triggers.iter().any(|e| t.starts(&e.value)))
                    .map(|(l, _)| *l)
                    .collect();
                if !leads.is_empty() {
                    next.extend(self.enroll_only(on, &leads, id, now).await?.1);
                }
            }
            pending = next;
        }
        if !pending.is_empty() {
            tracing::warn!(
                "funnels entered by tags or events start each other more than {MAX_CHAIN} deep; stopped there"
            );
        }
        Ok(())
    }

    /// [`Runtime::enroll_many`] without starting other funnels; also returns the tags and
    /// events the new runs produced.
    async fn enroll_only(
        &self,
        on: Option<&Write>,
        leads: &[LeadId],
        funnel: &FunnelId,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Enrolled>, Vec<(LeadId, Trigger)>), RuntimeError> {
        let funnels = self.funnels();
        let r = funnels
            .get(funnel)
            .ok_or_else(|| RuntimeError::UnknownFunnel(funnel.clone()))?;
        let mut before: HashMap<LeadId, Vec<EnrollmentRow>> = HashMap::new();
        for e in self.store.enrollments_of_many_in(on, leads, funnel).await? {
            before.entry(e.lead).or_default().push(e);
        }
        let facts = self.lead_facts_in(on, leads, now).await?;
        let mut decided: HashMap<LeadId, Enrolled> = HashMap::new();
        let mut fresh: Vec<(LeadId, engine::Transition)> = Vec::new();
        for &lead in leads {
            if decided.contains_key(&lead) {
                continue;
            }
            let runs = before.get(&lead).map(Vec::as_slice).unwrap_or_default();
            if let Some(live) = runs.iter().find(|e| e.state.status.is_live()) {
                decided.insert(lead, Enrolled::AlreadyIn(live.id));
                continue;
            }
            if let Some(last) = runs.last() {
                let again = match r.funnel.entry.re_entry {
                    ReEntry::Never => false,
                    ReEntry::Always => true,
                    ReEntry::After(d) => {
                        now >= last.entered_at + Duration::seconds(d.as_secs() as i64)
                    }
                };
                if !again {
                    decided.insert(lead, Enrolled::NotAgain);
                    continue;
                }
            }
            let Some(f) = facts.get(&lead) else {
                return Err(crate::store::StoreError::Corrupt(format!(
                    "lead {lead} does not exist"
                ))
                .into());
            };
            let t = engine::step(
                &r.funnel,
                &engine::new_enrollment(&r.funnel, now),
                f,
                &Input::Enroll,
                now,
            );
            decided.insert(lead, Enrolled::New(EnrollmentId(0)));
            fresh.push((lead, t));
        }
        let items: Vec<NewRun> = fresh
            .iter()
            .map(|(lead, t)| NewRun {
                lead: *lead,
                funnel: funnel.clone(),
                version: r.version,
                state: effects::state_row(&r.funnel, &t.state),
                writes: crate::store::RunWrites {
                    entries: self.entries_of(&triggers_of(*lead, &t.effects)),
                    ..effects::writes(
                        *lead,
                        funnel,
                        (r.version, now),
                        &facts
                            .get(lead)
                            .and_then(LeadFacts::email)
                            .unwrap_or_default(),
                        &t.effects,
                    )
                },
            })
            .collect();
        let ids = self.store.enroll_many_in(on, &items, now).await?;
        for ((lead, _), id) in fresh.iter().zip(ids) {
            decided.insert(*lead, Enrolled::New(id));
        }
        if on.is_none() && !fresh.is_empty() {
            self.wake.notify_one();
        }
        let triggers = fresh
            .iter()
            .flat_map(|(lead, t)| triggers_of(*lead, &t.effects))
            .collect();
        let out = leads
            .iter()
            .map(|l| decided.get(l).cloned().unwrap_or(Enrolled::NotAgain))
            .collect();
        Ok((out, triggers))
    }

    /// Queues a failed webhook call (a dead letter) again, for an attempt now; `false` when
    /// there is no such failed call.
    pub async fn retry_webhook(&self, id: i64, now: DateTime<Utc>) -> Result<bool, RuntimeError> {
        Ok(self.store.retry_webhook(id, now).await?)
    }

    /// Takes the lead out of the funnel: its live run ends with the outcome `removed` (through
    /// a stored `removed` event, so whichever node holds the run ends it). `None` when the lead
    /// is not in the funnel.
    pub async fn remove(
        &self,
        lead: LeadId,
        funnel: &FunnelId,
        now: DateTime<Utc>,
    ) -> Result<Option<EnrollmentId>, RuntimeError> {
        let live = self
            .store
            .enrollments_of_many(&[lead], funnel)
            .await?
            .into_iter()
            .find(|e| e.state.status.is_live());
        let Some(live) = live else {
            return Ok(None);
        };
        let e = Event {
            funnel: Some(funnel.clone()),
            ..Event::of(EventKind::Removed)
        };
        self.record(lead, e, None, now, now).await?;
        Ok(Some(live.id))
    }

    /// Stores an event once, then feeds it to the lead's live enrollments. Returns how many
    /// enrollments saw it; a duplicate (same idempotency key) is seen by none.
    pub async fn event(
        &self,
        lead: LeadId,
        e: Event,
        key: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<usize, RuntimeError> {
        Ok(self.record(lead, e, key, now, now).await?.unwrap_or(0))
    }

    /// An event that happened at `occurred_at` (reported later by another system); `false`
    /// when its idempotency key was seen before.
    pub async fn event_at(
        &self,
        lead: LeadId,
        e: Event,
        key: Option<String>,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, RuntimeError> {
        Ok(self.record(lead, e, key, occurred_at, now).await?.is_some())
    }

    /// Stores the event once and feeds it; `None` for a duplicate, else how many enrollments
    /// saw it.
    async fn record(
        &self,
        lead: LeadId,
        e: Event,
        key: Option<String>,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<usize>, RuntimeError> {
        let kind = e.kind.clone();
        let stored = NewEvent {
            lead: Some(lead),
            event: e,
            idempotency_key: key,
            occurred_at,
        };
        let starting = self.starting();
        let Recorded::New(id) = self.store.record_event(stored, &starting, now).await? else {
            return Ok(None);
        };
        let seen = self.feed(&[lead], now).await?;
        if starting.contains(&kind) {
            self.start_events(vec![(lead, Trigger::Event(kind))], &[id], now)
                .await?;
        }
        Ok(Some(seen))
    }

    /// Stores a batch of events from another system all or nothing (leads created for new
    /// addresses), feeds them to the leads' live runs in one round, then starts the funnels
    /// they enter. Returns each event's lead and whether it was new; a duplicate (same
    /// idempotency key) is fed to nobody.
    pub async fn record_batch(
        &self,
        events: Vec<BatchEvent>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(LeadId, bool)>, RuntimeError> {
        let starting = self.starting();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.event.kind.clone()).collect();
        let stored = self.store.record_batch(events, &starting, now).await?;
        // Stored for good: feeding is best effort, and a round feeds whatever is left pending.
        let fed: Vec<LeadId> = stored
            .iter()
            .filter(|(_, id)| id.is_some())
            .map(|(l, _)| *l)
            .collect();
        if let Err(e) = self.feed(&fed, now).await {
            tracing::warn!(error = %e, "events stored; the next round feeds them");
        }
        let mut entries = Vec::new();
        let mut ids = Vec::new();
        for ((lead, id), kind) in stored.iter().zip(kinds) {
            if let Some(id) = id
                && starting.contains(&kind)
            {
                entries.push((*lead, Trigger::Event(kind)));
                ids.push(*id);
            }
        }
        // Stored for good: what is not started here, `resume_entries` starts later.
        match self.start_events(entries, &ids, now).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, events = ids.len(), "events stored; starting their funnels failed, trying again in a minute")
            }
        }
        self.wake.notify_one();
        Ok(stored
            .into_iter()
            .map(|(l, id)| (l, id.is_some()))
            .collect())
    }

    /// The event kinds a running funnel's entry names: such an event is stored unprocessed
    /// until the funnels it enters have started.
    fn starting(&self) -> Vec<EventKind> {
        let mut kinds: Vec<EventKind> = Vec::new();
        for r in self.funnels().values() {
            for t in &r.funnel.entry.triggers {
                if let EntryTrigger::Event(name) = &t.value
                    && let Ok(k) = EventKind::parse(name.as_str())
                    && !kinds.contains(&k)
                {
                    kinds.push(k);
                }
            }
        }
        kinds
    }

    /// Starts the funnels of events received before `before` whose funnels never started (the
    /// process stopped between storing them and starting their funnels): the funnels their
    /// kind enters and, for a signup, its form's. A funnel the lead already entered at or after
    /// the event was received is not started again. Returns how many events it found; one
    /// whose funnel cannot start stays unprocessed for the next call. `run` calls it at start
    /// for everything stored before, and every minute for what is older than a minute.
    pub async fn resume_entries(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, RuntimeError> {
        const PAGE: u64 = 5_000;
        let (mut after, mut found) = (0, 0);
        loop {
            let page = self.store.unstarted_events(before, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            found += page.len();
            let funnels = self.funnels();
            let mut by_funnel: BTreeMap<&FunnelId, Vec<&Unstarted>> = BTreeMap::new();
            for u in &page {
                let kind = Trigger::Event(u.event.kind.clone());
                for (id, r) in funnels.iter() {
                    let by_kind = r
                        .funnel
                        .entry
                        .triggers
                        .iter()
                        .any(|t| kind.starts(&t.value));
                    let by_form = u.event.kind == EventKind::Signup
                        && r.funnel
                            .entry
                            .forms()
                            .any(|f| Some(f.id.as_str()) == u.event.form.as_deref());
                    if by_kind || by_form {
                        by_funnel.entry(id).or_default().push(u);
                    }
                }
            }
            let mut failed: BTreeSet<i64> = BTreeSet::new();
            for (f, events) in by_funnel {
                let leads: Vec<LeadId> = events.iter().map(|u| u.lead).collect();
                // Each lead's latest entry into this funnel.
                let mut entered: HashMap<LeadId, DateTime<Utc>> = HashMap::new();
                for e in self.store.enrollments_of_many(&leads, f).await? {
                    let at = entered.entry(e.lead).or_insert(e.entered_at);
                    *at = (*at).max(e.entered_at);
                }
                let todo: Vec<&Unstarted> = events
                    .into_iter()
                    .filter(|u| entered.get(&u.lead).is_none_or(|at| *at < u.received_at))
                    .collect();
                let leads: Vec<LeadId> = todo.iter().map(|u| u.lead).collect();
                if leads.is_empty() || self.enroll_many(&leads, f, now).await.is_ok() {
                    continue;
                }
                // One lead whose run cannot start does not hold back the others.
                for u in todo {
                    if let Err(e) = self.enroll_many(&[u.lead], f, now).await {
                        tracing::error!(lead = %u.lead, funnel = %f, error = %e, "cannot start a stored event's funnel; trying again in a minute");
                        failed.insert(u.id);
                    }
                }
            }
            let started: Vec<i64> = page
                .iter()
                .map(|u| u.id)
                .filter(|id| !failed.contains(id))
                .collect();
            self.store.events_started(None, &started, now).await?;
            tracing::warn!(
                events = started.len(),
                "started the funnels of events stored before the process stopped"
            );
            if (page.len() as u64) < PAGE {
                break;
            }
        }
        Ok(found)
    }

    /// Starts the funnels these stored events enter and marks the events processed, in one
    /// commit: a stop at any instant leaves them either started or for `resume_entries`.
    async fn start_events(
        &self,
        entries: Vec<(LeadId, Trigger)>,
        events: &[i64],
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        if events.is_empty() {
            return Ok(());
        }
        let w = self.store.write().await?;
        self.start_entries(Some(&w), entries, now).await?;
        self.store.events_started(Some(&w), events, now).await?;
        w.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Feeds the leads' live runs the events they have not seen, in one round (a lead another
    /// worker holds is left to its round); returns how many runs were stepped.
    async fn feed(&self, leads: &[LeadId], now: DateTime<Utc>) -> Result<usize, RuntimeError> {
        if leads.is_empty() {
            return Ok(0);
        }
        let claimed = self
            .store
            .claim_for_leads(leads, &self.owner, now, LEASE)
            .await?;
        self.step_and_commit(&claimed, now, false).await
    }

    /// Claims a batch of due or pending enrollments, steps each, and commits the round in one
    /// transaction; returns how many transitions were committed.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, RuntimeError> {
        let due = self.store.claim_due(&self.owner, now, LEASE, BATCH).await?;
        self.step_and_commit(&due, now, true).await
    }

    /// Feeds each claimed enrollment the events it has not seen, in order, then its timer if
    /// due, and commits all of them in one transaction.
    async fn step_and_commit(
        &self,
        claimed: &[EnrollmentRow],
        now: DateTime<Utc>,
        timers: bool,
    ) -> Result<usize, RuntimeError> {
        if claimed.is_empty() {
            return Ok(0);
        }
        let funnels = self.funnels();
        let leads: Vec<LeadId> = claimed.iter().map(|c| c.lead).collect();
        // A lead with several enrollments in the round: each sees what the previous did.
        let mut facts = self.lead_facts_many(&leads, now).await?;
        let oldest_seen = claimed.iter().map(|c| c.events_seen).min().unwrap_or(0);
        let events = self.store.events_after(&leads, oldest_seen).await?;
        let mut items = Vec::with_capacity(claimed.len());
        let mut triggers = Vec::new();
        for c in claimed {
            let Some(r) = funnels.get(&c.funnel) else {
                tracing::warn!(enrollment = %c.id, funnel = %c.funnel, "funnel not loaded; enrollment left as it is");
                continue;
            };
            let Some(lead) = facts.get_mut(&c.lead) else {
                continue;
            };
            let mut state = facts::resume(&r.funnel, c);
            let mut effects = Vec::new();
            let mut seen = c.events_seen;
            for e in events
                .iter()
                .filter(|e| e.lead == c.lead && e.id > c.events_seen)
            {
                let input = if e.event.kind == EventKind::Confirmed
                    && state.status == RunStatus::Unconfirmed
                {
                    Input::Confirmed
                } else {
                    Input::Event(e.event.clone())
                };
                let t = engine::step(&r.funnel, &state, lead, &input, now);
                lead.absorb(&t.effects, now);
                state = t.state;
                effects.extend(t.effects);
                seen = e.id;
            }
            if timers {
                let t = engine::step(&r.funnel, &state, lead, &Input::Timer, now);
                lead.absorb(&t.effects, now);
                state = t.state;
                effects.extend(t.effects);
            }
            let own = triggers_of(c.lead, &effects);
            let entries = self.entries_of(&own);
            triggers.extend(own);
            let to = lead.email().unwrap_or_default();
            items.push(RunUpdate {
                id: c.id,
                lead: c.lead,
                funnel: c.funnel.clone(),
                version: r.version,
                events_seen: seen,
                before: c.before(),
                state: effects::state_row(&r.funnel, &state),
                writes: crate::store::RunWrites {
                    entries,
                    ..effects::writes(c.lead, &c.funnel, (r.version, c.entered_at), &to, &effects)
                },
            });
        }
        let n = match self
            .store
            .commit_many(&self.owner, now + LEASE, &items, &leads, now)
            .await
        {
            Ok(n) => n,
            // One run whose rows the database refuses must not hold up the round: each is
            // committed alone, and the one that fails again waits for its lease to run out
            // (after `MAX_CLAIMS` such claims it is parked).
            Err(e) if items.len() > 1 => {
                tracing::warn!(error = %e, transitions = items.len(), "a round was refused; committing each transition alone");
                let mut n = 0;
                for item in &items {
                    match self
                        .store
                        .commit_many(
                            &self.owner,
                            now + LEASE,
                            std::slice::from_ref(item),
                            &[item.lead],
                            now,
                        )
                        .await
                    {
                        Ok(k) => n += k,
                        Err(e) => {
                            tracing::error!(enrollment = %item.id, lead = %item.lead, error = %e, "cannot commit this run's transition")
                        }
                    }
                }
                n
            }
            Err(e) => return Err(e.into()),
        };
        self.committed.fetch_add(n as u64, Ordering::Relaxed);
        self.start_entries_kept(None, triggers, now).await?;
        Ok(n)
    }

    /// Steps due enrollments until `shutdown` completes: after each busy round at once,
    /// otherwise sleeping until the next wake-up, a notification, or `MAX_IDLE`.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        self.run_with_clock(Utc::now, shutdown).await
    }

    /// [`Runtime::run`] on the given clock (benchmarks map a virtual calendar onto real time).
    pub async fn run_with_clock(
        &self,
        clock: impl Fn() -> DateTime<Utc>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut resumed: Option<DateTime<Utc>> = None;
        loop {
            if resumed.is_none_or(|r| clock() - r >= Duration::minutes(1)) {
                resumed = Some(clock());
                let now = clock();
                if let Err(e) = self.resume_entries(now - Duration::minutes(1), now).await {
                    tracing::error!(error = %e, "cannot start the funnels of stored events; retrying");
                }
                if let Err(e) = self.resume_pending(now - Duration::minutes(1), now).await {
                    tracing::error!(error = %e, "cannot start the funnels of kept entries; retrying");
                }
            }
            let busy = match self.tick(clock()).await {
                Ok(n) => n as u64 >= BATCH,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler round failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            let sleep = match self.store.next_wake().await {
                Ok(Some(at)) => (at - clock())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(MIN_GAP, MAX_IDLE),
                _ => MAX_IDLE,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// Running funnels by id.
pub type Funnels = BTreeMap<FunnelId, Running>;

/// How many funnels deep tags and events may start one another in one go.
const MAX_CHAIN: usize = 8;

/// What may start a funnel whose `entry` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    Tag(Tag),
    Event(EventKind),
}

impl Trigger {
    /// As a pending entry keeps it: `tag:NAME` or `event:KIND`.
    fn text(&self) -> String {
        match self {
            Trigger::Tag(t) => format!("tag:{t}"),
            Trigger::Event(k) => format!("event:{}", k.as_str()),
        }
    }

    fn parse(text: &str) -> Option<Trigger> {
        if let Some(t) = text.strip_prefix("tag:") {
            return Tag::parse(t).ok().map(Trigger::Tag);
        }
        EventKind::parse(text.strip_prefix("event:")?)
            .ok()
            .map(Trigger::Event)
    }

    fn starts(&self, entry: &EntryTrigger) -> bool {
        match (self, entry) {
            (Trigger::Tag(t), EntryTrigger::Tag(e)) => e == t,
            (Trigger::Event(k), EntryTrigger::Event(e)) => e.as_str() == k.as_str(),
            _ => false,
        }
    }
}

/// The tags a transition added and the events it emitted, as triggers for the lead.
fn triggers_of(lead: LeadId, effects: &[engine::Effect]) -> Vec<(LeadId, Trigger)> {
    effects
        .iter()
        .filter_map(|e| match e {
            engine::Effect::Tag(t) => Some((lead, Trigger::Tag(t.clone()))),
            engine::Effect::Emitted(k) => Some((lead, Trigger::Event(k.clone()))),
            _ => None,
        })
        .collect()
}

/// Stores each funnel's version: the latest if its canonical text is unchanged, else a new one.
async fn register(
    store: &Store,
    funnels: Vec<Funnel>,
    now: DateTime<Utc>,
) -> Result<Funnels, RuntimeError> {
    let mut running = BTreeMap::new();
    for f in funnels {
        let source = print::to_yaml(&f);
        let hash = format!("{:016x}", engine::fnv1a(source.as_bytes()));
        let version = store
            .funnel_version(&f.id.value, &hash, &source, now)
            .await?;
        running.insert(f.id.value.clone(), Running { funnel: f, version });
    }
    Ok(running)
}
