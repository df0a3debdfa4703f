//! The runtime of `autofunnel run`: durable enrollments driven by the pure engine. Timers are
//! the indexed `wake_at` column; due enrollments are claimed in batches with a lease, stepped,
//! and committed one transaction per transition; the loop sleeps until the next wake-up or a
//! notification that an earlier one was written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;

use crate::domain::{Consent, LeadId, Tag};
use crate::engine::{self, Event, Input, LeadFacts, Status, Transition};
use crate::funnel::{EntryTrigger, Funnel, ReEntry, print};
use crate::store::{
    Committed, NewEnrollment, NewEvent, NewSignup, Recorded, Store, StoredEnrollment,
};

/// How long a claimed enrollment is reserved for its worker; a worker that dies loses it then.
pub const LEASE: Duration = Duration::seconds(30);
/// Enrollments claimed per round.
pub const BATCH: u64 = 500;
/// The longest the loop sleeps without looking at the database (other nodes may add work).
const MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A funnel as the runtime runs it, with its stored version.
pub struct Running {
    pub funnel: Funnel,
    pub version: i32,
}

/// What an enrollment request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    New(i64),
    /// The lead is in this funnel now.
    AlreadyIn(i64),
    /// The funnel's `re_entry` policy refuses another run.
    NotAgain,
}

/// Errors a caller may branch on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no funnel \"{0}\" is loaded")]
    UnknownFunnel(String),
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
    signups: std::sync::Mutex<Vec<QueuedSignup>>,
    /// Held by whoever commits a group of signups.
    committing: tokio::sync::Mutex<()>,
}

/// Where a queued signup's answer goes.
type Answer = tokio::sync::oneshot::Sender<Result<LeadId, String>>;

/// A queued signup's answer: its lead, once stored.
pub struct SignupTicket(tokio::sync::oneshot::Receiver<Result<LeadId, String>>);

/// A signup in the queue, with the funnels its form starts and where its answer goes.
struct QueuedSignup {
    signup: NewSignup,
    funnels: Vec<String>,
    done: Answer,
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

    /// Puts a lead into a funnel, following its re-entry policy.
    pub async fn enroll(
        &self,
        lead: LeadId,
        funnel: &str,
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
        funnel: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enrolled>, RuntimeError> {
        let (out, triggers) = self.enroll_only(leads, funnel, now).await?;
        self.start_entries(triggers, now).await?;
        Ok(out)
    }

    /// Queues a landing-page signup (lead, touch, `signup` event) that starts `funnels`, the
    /// form's; [`Runtime::signup_stored`] commits it. Queued at once (no `await`), so a
    /// shutdown's [`Runtime::settle`] sees it.
    pub fn queue_signup(&self, signup: NewSignup, funnels: Vec<String>) -> SignupTicket {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.signups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(QueuedSignup {
                signup,
                funnels,
                done,
            });
        SignupTicket(answer)
    }

    /// Waits until the queued signup is stored and its funnels started. Signups arriving
    /// together are written together: whoever finds no commit under way commits everything
    /// queued so far (group commit); the others wait for their answer. Run it in a task of its
    /// own: a caller that goes away mid-commit must not stop the commit others wait for.
    pub async fn signup_stored(&self, ticket: SignupTicket) -> Result<LeadId, RuntimeError> {
        let mut answer = ticket.0;
        let turn = self.committing.lock().await;
        if let Ok(r) = answer.try_recv() {
            return r.map_err(RuntimeError::Signup);
        }
        let queued = std::mem::take(&mut *self.signups.lock().unwrap_or_else(|e| e.into_inner()));
        let (signups, rest): (Vec<NewSignup>, Vec<_>) = queued
            .into_iter()
            .map(|q| (q.signup, (q.funnels, q.done)))
            .unzip();
        match self.commit_signups(&signups, &rest, Utc::now()).await {
            Ok(leads) => {
                for ((_, done), lead) in rest.into_iter().zip(leads) {
                    let _ = done.send(Ok(lead));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, signups = signups.len(), "cannot store signups");
                for (_, done) in rest {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
        drop(turn);
        match answer.try_recv() {
            Ok(r) => r.map_err(RuntimeError::Signup),
            Err(_) => Err(RuntimeError::Signup("no answer for this signup".into())),
        }
    }

    /// Starts the funnels of signups stored more than a minute ago whose funnels never
    /// started (the process stopped between the two transactions of a group); returns how
    /// many signups it found. The scheduler loop calls it every minute.
    pub async fn resume_signups(&self, now: DateTime<Utc>) -> Result<usize, RuntimeError> {
        let _turn = self.committing.lock().await;
        let found = self
            .store
            .unstarted_signups(now - Duration::minutes(1), 10_000)
            .await?;
        if found.is_empty() {
            return Ok(0);
        }
        let funnels = self.funnels();
        let mut by_funnel: BTreeMap<&str, Vec<LeadId>> = BTreeMap::new();
        for (lead, form) in &found {
            for (id, r) in funnels.iter() {
                if r.funnel.entry.forms().any(|f| f.id.as_str() == form) {
                    by_funnel.entry(id).or_default().push(*lead);
                }
            }
        }
        for (f, leads) in by_funnel {
            self.enroll_many(&leads, f, now).await?;
        }
        let leads: Vec<LeadId> = found.iter().map(|(l, _)| *l).collect();
        self.store.signups_started(&leads, now).await?;
        tracing::warn!(
            signups = found.len(),
            "started the funnels of signups stored before the process stopped"
        );
        Ok(found.len())
    }

    /// Waits until no signup is queued or being committed: at shutdown, after the server
    /// stopped taking requests, so every signup it answered or was storing starts its funnels.
    pub async fn settle(&self) {
        loop {
            {
                let _turn = self.committing.lock().await;
                if self
                    .signups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                {
                    return;
                }
            }
            // Queued signups are committed by their own tasks.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// One group of signups: stored in one transaction, then each funnel started for its
    /// leads in one more.
    async fn commit_signups(
        &self,
        signups: &[NewSignup],
        funnels: &[(Vec<String>, Answer)],
        now: DateTime<Utc>,
    ) -> Result<Vec<LeadId>, RuntimeError> {
        let leads = self.store.record_signups(signups, now).await?;
        // Runs the leads were in already are fed the event by the scheduler.
        self.wake.notify_one();
        let by_event = leads
            .iter()
            .map(|l| (*l, Trigger::Event("signup".into())))
            .collect();
        self.start_entries(by_event, now).await?;
        let mut by_funnel: BTreeMap<&str, Vec<LeadId>> = BTreeMap::new();
        for ((fs, _), lead) in funnels.iter().zip(&leads) {
            for f in fs {
                by_funnel.entry(f).or_default().push(*lead);
            }
        }
        for (f, leads) in by_funnel {
            match self.enroll_many(&leads, f, now).await {
                // Reloaded away since the form was read: the signup is kept, nothing starts.
                Err(RuntimeError::UnknownFunnel(_)) | Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        self.store.signups_started(&leads, now).await?;
        Ok(leads)
    }

    /// Tags a lead; the funnels whose entry is that tag start for them.
    pub async fn tag(
        &self,
        lead: LeadId,
        tag: &Tag,
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        self.store.tag_lead(lead, tag, now).await?;
        self.start_entries(vec![(lead, Trigger::Tag(tag.to_string()))], now)
            .await
    }

    /// Starts, for each lead, the funnels whose `entry` names the tag or event: then for the
    /// tags and events their first steps produce, up to `MAX_CHAIN` links deep.
    async fn start_entries(
        &self,
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
                    next.extend(self.enroll_only(&leads, id, now).await?.1);
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
        leads: &[LeadId],
        funnel: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Enrolled>, Vec<(LeadId, Trigger)>), RuntimeError> {
        let funnels = self.funnels();
        let r = funnels
            .get(funnel)
            .ok_or_else(|| RuntimeError::UnknownFunnel(funnel.to_string()))?;
        let mut before: HashMap<LeadId, Vec<StoredEnrollment>> = HashMap::new();
        for e in self.store.enrollments_of_many(leads, funnel).await? {
            before.entry(e.lead).or_default().push(e);
        }
        let facts = self.store.lead_facts_many(leads, now).await?;
        let mut decided: HashMap<LeadId, Enrolled> = HashMap::new();
        let mut fresh: Vec<(LeadId, Transition)> = Vec::new();
        for &lead in leads {
            if decided.contains_key(&lead) {
                continue;
            }
            let runs = before.get(&lead).map(Vec::as_slice).unwrap_or_default();
            if let Some(live) = runs
                .iter()
                .find(|e| !matches!(e.state.status, Status::Exited(_)))
            {
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
            decided.insert(lead, Enrolled::New(0));
            fresh.push((lead, t));
        }
        let items: Vec<NewEnrollment> = fresh
            .iter()
            .map(|(lead, t)| NewEnrollment {
                lead: *lead,
                funnel,
                version: r.version,
                step_id: step_id(&r.funnel, t),
                transition: t,
                recipient: facts.get(lead).and_then(LeadFacts::email),
            })
            .collect();
        let ids = self.store.enroll_many(&items, now).await?;
        for ((lead, _), id) in fresh.iter().zip(ids) {
            decided.insert(*lead, Enrolled::New(id));
        }
        if !fresh.is_empty() {
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

    /// Takes the lead out of the funnel: its live run ends with the outcome `removed` (through
    /// a stored `removed` event, so whichever node holds the run ends it). `None` when the lead
    /// is not in the funnel.
    pub async fn remove(
        &self,
        lead: LeadId,
        funnel: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, RuntimeError> {
        let live = self
            .store
            .enrollments_of_many(&[lead], funnel)
            .await?
            .into_iter()
            .find(|e| !matches!(e.state.status, Status::Exited(_)));
        let Some(live) = live else {
            return Ok(None);
        };
        let e = Event {
            funnel: Some(funnel.to_string()),
            ..Event::named(engine::REMOVED)
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
        let mut payload = serde_json::json!({ "product": e.product, "template": e.template, "link": e.link, "form": e.form });
        if e.funnel.is_some() {
            payload["funnel"] = serde_json::json!(e.funnel);
        }
        if e.amount.is_some() || e.currency.is_some() {
            payload["amount"] = serde_json::json!(e.amount);
            payload["currency"] = serde_json::json!(e.currency);
        }
        let stored = NewEvent {
            lead: Some(lead),
            kind: e.name.clone(),
            payload,
            idempotency_key: key,
            occurred_at,
        };
        if self.store.record_event(stored, now).await? == Recorded::Duplicate {
            return Ok(None);
        }
        match e.name.as_str() {
            "confirmed" => {
                self.store
                    .set_consent(lead, Consent::Confirmed, now)
                    .await?
            }
            "unsubscribed" => {
                self.store
                    .set_consent(lead, Consent::Unsubscribed, now)
                    .await?
            }
            _ => {}
        }
        if ["unsubscribed", "bounced", "complained"].contains(&e.name.as_str()) {
            // No funnel mails this address again, whatever its own transitions say.
            self.store.suppress(lead, &e.name, now).await?;
        }
        // Durable first: whoever holds these enrollments now, a round will feed them the event.
        self.store.mark_pending(lead, now).await?;
        let claimed = self
            .store
            .claim_for_lead(lead, &self.owner, now, LEASE)
            .await?;
        let seen = self.step_and_commit(&claimed, now, false).await?;
        self.start_entries(vec![(lead, Trigger::Event(e.name))], now)
            .await?;
        self.wake.notify_one();
        Ok(Some(seen))
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
        claimed: &[StoredEnrollment],
        now: DateTime<Utc>,
        timers: bool,
    ) -> Result<usize, RuntimeError> {
        if claimed.is_empty() {
            return Ok(0);
        }
        let funnels = self.funnels();
        let leads: Vec<LeadId> = claimed.iter().map(|c| c.lead).collect();
        // A lead with several enrollments in the round: each sees what the previous did.
        let mut facts = self.store.lead_facts_many(&leads, now).await?;
        let oldest_seen = claimed.iter().map(|c| c.events_seen).min().unwrap_or(0);
        let events = self.store.events_after(&leads, oldest_seen).await?;
        let mut stepped = Vec::with_capacity(claimed.len());
        for c in claimed {
            let Some(r) = funnels.get(&c.funnel) else {
                tracing::warn!(enrollment = c.id, funnel = %c.funnel, "funnel not loaded; enrollment left as it is");
                continue;
            };
            let Some(lead) = facts.get_mut(&c.lead) else {
                continue;
            };
            let mut state = resume(&r.funnel, c);
            let mut effects = Vec::new();
            let mut seen = c.events_seen;
            for e in events
                .iter()
                .filter(|e| e.lead == c.lead && e.id > c.events_seen)
            {
                let input = if e.event.name == "confirmed" && state.status == Status::Unconfirmed {
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
            let t = Transition { state, effects };
            let id = step_id(&r.funnel, &t);
            let to = lead.email();
            stepped.push((c, t, id, r.version, to, seen));
        }
        let items: Vec<Committed> = stepped
            .iter()
            .map(|(c, t, id, v, to, seen)| Committed {
                enrollment: c,
                events_seen: *seen,
                recipient: to.clone(),
                step_id: id.clone(),
                version: *v,
                transition: t,
            })
            .collect();
        let n = self
            .store
            .commit_many(&self.owner, &items, &leads, now)
            .await?;
        self.committed.fetch_add(n as u64, Ordering::Relaxed);
        let triggers = stepped
            .iter()
            .flat_map(|(c, t, ..)| triggers_of(c.lead, &t.effects))
            .collect();
        self.start_entries(triggers, now).await?;
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
                if let Err(e) = self.resume_signups(clock()).await {
                    tracing::error!(error = %e, "cannot resume stored signups; retrying");
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
                Ok(Some(at)) => (at - clock()).to_std().unwrap_or_default().min(MAX_IDLE),
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
pub type Funnels = BTreeMap<String, Running>;

/// How many funnels deep tags and events may start one another in one go.
const MAX_CHAIN: usize = 8;

/// What may start a funnel whose `entry` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    Tag(String),
    Event(String),
}

impl Trigger {
    fn starts(&self, entry: &EntryTrigger) -> bool {
        match (self, entry) {
            (Trigger::Tag(t), EntryTrigger::Tag(e)) => e.as_str() == t,
            (Trigger::Event(n), EntryTrigger::Event(e)) => e.as_str() == n,
            _ => false,
        }
    }
}

/// The tags a transition added and the events it emitted, as triggers for the lead.
fn triggers_of(lead: LeadId, effects: &[engine::Effect]) -> Vec<(LeadId, Trigger)> {
    effects
        .iter()
        .filter_map(|e| match e {
            engine::Effect::Tag(t) => Some((lead, Trigger::Tag(t.to_string()))),
            engine::Effect::Emitted(n) => Some((lead, Trigger::Event(n.clone()))),
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
            .funnel_version(f.id.value.as_str(), &hash, &source, now)
            .await?;
        running.insert(f.id.value.to_string(), Running { funnel: f, version });
    }
    Ok(running)
}

/// The stored step id of a transition's resulting position, so another version of the funnel
/// can find the step again.
fn step_id(f: &Funnel, t: &Transition) -> Option<String> {
    f.stage(t.state.stage.as_str())
        .and_then(|s| s.steps.get(t.state.step))
        .map(|s| s.id.to_string())
}

/// The state to step from: where the funnel was edited, the step is found again by its id.
fn resume(f: &Funnel, c: &StoredEnrollment) -> engine::Enrollment {
    let mut state = c.state.clone();
    if let (Some(id), Some(stage)) = (&c.step_id, f.stage(state.stage.as_str()))
        && stage
            .steps
            .get(state.step)
            .is_none_or(|s| s.id.as_str() != id)
        && let Some(i) = stage.steps.iter().position(|s| s.id.as_str() == id)
    {
        state.step = i;
    }
    state
}
