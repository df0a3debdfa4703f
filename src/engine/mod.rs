//! The pure engine core: `step(funnel, enrollment, lead, input, now) -> Transition`.
//!
//! No IO, no clock, no async: time is an input and the next wake-up an output, so the runtime
//! and `simulate` drive the same code, and tests move a virtual clock. Effects are data; only
//! the caller carries them out.

pub mod sim;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value as Json;

use crate::domain::{
    Event, EventKind, Outcome, RunStatus, StageId, StepId, Tag, TemplateName, WebhookId,
};
use crate::funnel::{
    Action, CompareOp, Condition, EventMatch, EventPattern, Funnel, IfPast, Send, Stage, Target,
    WaitUntil,
};

/// Where one lead stands in one funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub status: RunStatus,
    pub stage: StageId,
    /// Index of the step the lead stands at (the next to run, or the one it waits on).
    pub step: usize,
    pub stage_entered_at: DateTime<Utc>,
    /// Counts stage entries, so a stage entered twice sends its emails twice, once each.
    pub stage_entry: u32,
    pub deadline: Option<DateTime<Utc>>,
    /// When a timer input is due; `None` while the lead waits for events only.
    pub wake_at: Option<DateTime<Utc>>,
}

/// What the engine knows of the lead when it steps: a snapshot the caller loads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeadFacts {
    /// Seeds the A/B variant so a lead always gets the same one.
    pub id: i64,
    pub timezone: Option<Tz>,
    pub fields: BTreeMap<String, Json>,
    pub tags: BTreeSet<String>,
    /// The score as stored; [`Run::score_now`] is what it is worth after decay.
    pub score: i64,
    /// When the score last changed.
    pub scored_at: Option<DateTime<Utc>>,
    /// (template, link) pairs the lead clicked.
    pub clicked: BTreeSet<(String, String)>,
    pub opened: BTreeSet<String>,
    pub purchased: BTreeSet<String>,
    /// False once the lead unsubscribed, bounced or complained: nothing is mailed then.
    pub mailable: bool,
    /// Funnels the lead unsubscribed from: those send nothing more, the others go on.
    pub muted: BTreeSet<String>,
    /// When emails went to this lead, from any funnel (for the frequency cap).
    pub sent_at: Vec<DateTime<Utc>>,
    /// The lead already confirmed their address: double opt-in does not ask again.
    pub confirmed: bool,
}

impl LeadFacts {
    /// Takes in what an event tells about the lead, for guards evaluated from now on.
    pub fn observe(&mut self, e: &Event) {
        match e.kind {
            EventKind::Purchase => self.purchased.extend(e.product.clone()),
            EventKind::Click => {
                if let Some(t) = &e.template {
                    self.clicked
                        .insert((t.clone(), e.link.clone().unwrap_or_default()));
                }
            }
            EventKind::Open => self.opened.extend(e.template.clone()),
            ref k if k.stops_mail() && e.funnel.is_none() => self.mailable = false,
            _ => {}
        }
    }

    /// Takes in what a transition did to the lead, so the lead's next transition (another of
    /// their funnels in the same round) sees it: sends for the frequency cap, tags, fields, score.
    pub fn absorb(&mut self, effects: &[Effect], now: DateTime<Utc>) {
        for e in effects {
            match e {
                // The double opt-in confirmation is transactional: outside the frequency cap.
                Effect::SendEmail { key, .. } if counts_for_cap(key) => self.sent_at.push(now),
                Effect::Tag(t) => {
                    self.tags.insert(t.to_string());
                }
                Effect::Untag(t) => {
                    self.tags.remove(t.as_str());
                }
                Effect::SetField { field, value } => {
                    self.fields.insert(field.clone(), value.clone());
                }
                Effect::AddScore(n) => {
                    self.score += n;
                    self.scored_at = Some(now);
                }
                Effect::Decayed(n) => self.score -= n,
                _ => {}
            }
        }
    }

    /// The lead's address, as stored among the fields.
    pub fn email(&self) -> Option<String> {
        self.fields
            .get("email")
            .and_then(|e| e.as_str())
            .map(str::to_string)
    }
}

/// The key, step id and template slot of the double opt-in confirmation: a transactional
/// email, sent before the first stage and outside the frequency cap.
pub const DOUBLE_OPT_IN: &str = "double-opt-in";

/// Whether an email with this effect key counts towards the frequency cap: everything but the
/// double opt-in confirmation.
pub fn counts_for_cap(key: &str) -> bool {
    key != DOUBLE_OPT_IN
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Enroll,
    /// The double opt-in link was clicked.
    Confirmed,
    /// `wake_at` has come.
    Timer,
    Event(Event),
}

/// What the caller must do; each is data, carried out after the state is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    EnterStage {
        stage: StageId,
    },
    LeaveStage {
        stage: StageId,
        reason: String,
    },
    SendEmail {
        template: TemplateName,
        step: StepId,
        key: String,
        /// The email is a variant of an A/B `split`.
        variant: bool,
    },
    CallWebhook {
        webhook: WebhookId,
        step: StepId,
        key: String,
    },
    Tag(Tag),
    Untag(Tag),
    SetField {
        field: String,
        value: Json,
    },
    AddScore(i64),
    /// Points the score lost to the funnel's decay since it last changed, taken off before
    /// new points are added.
    Decayed(i64),
    /// The score crossed a threshold; the matching event was already handled.
    Emitted(EventKind),
    Exit(Outcome),
    /// Why the lead is held (for `simulate`): "send window", "frequency cap", "wait", …
    Held {
        until: DateTime<Utc>,
        why: String,
    },
    /// A step that did nothing, and why ("guard false", "lead is not mailable", …).
    Skipped {
        step: StepId,
        why: String,
    },
}

/// The result of one step of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: Enrollment,
    pub effects: Vec<Effect>,
}

/// Steps run per input at most; `check` rejects loops without waits, and this bounds
/// conditional ones.
const MAX_STEPS_PER_INPUT: usize = 1_000;

/// A fresh enrollment before its first input.
pub fn new_enrollment(f: &Funnel, now: DateTime<Utc>) -> Enrollment {
    let first = f
        .stages
        .first()
        .map(|s| s.id.value.clone())
        .unwrap_or_else(|| StageId::parse("none").expect("identifier"));
    Enrollment {
        status: RunStatus::Active,
        stage: first,
        step: 0,
        stage_entered_at: now,
        stage_entry: 0,
        deadline: None,
        wake_at: None,
    }
}

/// Advances one enrollment by one input. Pure: the same arguments give the same transition.
pub fn step(
    f: &Funnel,
    state: &Enrollment,
    lead: &LeadFacts,
    input: &Input,
    now: DateTime<Utc>,
) -> Transition {
    let mut m = Machine {
        f,
        st: state.clone(),
        lead: lead.clone(),
        fx: Vec::new(),
        now,
        budget: MAX_STEPS_PER_INPUT,
    };
    if let RunStatus::Exited(_) = m.st.status {
        return m.done();
    }
    match input {
        Input::Enroll => {
            if let Some(t) = f.entry.double_opt_in.as_ref().filter(|_| !lead.confirmed) {
                m.st.status = RunStatus::Unconfirmed;
                m.st.wake_at = None;
                if m.mailable() {
                    m.fx.push(Effect::SendEmail {
                        template: t.value.clone(),
                        step: StepId::parse(DOUBLE_OPT_IN).expect("identifier"),
                        key: DOUBLE_OPT_IN.into(),
                        variant: false,
                    });
                }
            } else {
                let first = m.st.stage.clone();
                m.enter(&first);
                m.run();
            }
        }
        Input::Confirmed => {
            if m.st.status == RunStatus::Unconfirmed {
                m.st.status = RunStatus::Active;
                let first = m.st.stage.clone();
                m.enter(&first);
                m.run();
            }
        }
        Input::Timer => {
            if m.st.status == RunStatus::Active && m.st.wake_at.is_some_and(|w| w <= now) {
                m.st.wake_at = None;
                // A wait that has run out is done; a held send is tried again.
                if m.current().is_some_and(|s| s.action.waits()) {
                    m.st.step += 1;
                }
                m.run();
            }
        }
        Input::Event(e) => m.event(e),
    }
    m.done()
}

struct Machine<'a> {
    f: &'a Funnel,
    st: Enrollment,
    lead: LeadFacts,
    fx: Vec<Effect>,
    now: DateTime<Utc>,
    budget: usize,
}

impl Machine<'_> {
    /// Whether this funnel may mail the lead.
    fn mailable(&self) -> bool {
        self.lead.mailable && !self.lead.muted.contains(self.f.id.value.as_str())
    }

    fn done(self) -> Transition {
        Transition {
            state: self.st,
            effects: self.fx,
        }
    }

    fn tz(&self) -> Tz {
        self.lead.timezone.unwrap_or(self.f.timezone)
    }

    fn stage(&self) -> Option<&Stage> {
        self.f.stage(self.st.stage.as_str())
    }

    fn current(&self) -> Option<&crate::funnel::Step> {
        self.stage().and_then(|s| s.steps.get(self.st.step))
    }

    fn enter(&mut self, id: &StageId) {
        self.st.stage = id.clone();
        self.st.step = 0;
        self.st.stage_entered_at = self.now;
        self.st.stage_entry += 1;
        self.st.wake_at = None;
        self.st.deadline = self
            .f
            .stage(id.as_str())
            .and_then(|s| s.deadline)
            .map(|d| self.now + Duration::seconds(d.as_secs() as i64));
        self.fx.push(Effect::EnterStage { stage: id.clone() });
    }

    fn leave(&mut self, reason: String) {
        self.fx.push(Effect::LeaveStage {
            stage: self.st.stage.clone(),
            reason,
        });
    }

    fn exit(&mut self, o: Outcome) {
        self.leave(format!("exit: {}", o.name()));
        self.st.status = RunStatus::Exited(o);
        self.st.wake_at = None;
        self.fx.push(Effect::Exit(o));
    }

    fn target(&mut self, t: &Target, reason: String) {
        match t {
            Target::Goto(s) => {
                self.leave(reason);
                self.enter(&s.value);
                self.run();
            }
            Target::Exit(o) => self.exit(*o),
        }
    }

    /// Runs steps from the current one until the lead waits, exits, or runs out of steps.
    fn run(&mut self) {
        while self.st.status == RunStatus::Active {
            if self.budget == 0 {
                let until = self.now + Duration::minutes(1);
                self.st.wake_at = Some(until);
                self.fx.push(Effect::Held {
                    until,
                    why: "step limit reached in one go".into(),
                });
                return;
            }
            self.budget -= 1;
            let Some(step) = self.current().cloned() else {
                self.st.wake_at = None; // out of steps: only events move the lead now
                return;
            };
            if let Some(g) = &step.guard
                && !self.holds(g)
            {
                self.fx.push(Effect::Skipped {
                    step: step.id.clone(),
                    why: "condition is false".into(),
                });
                self.st.step += 1;
                continue;
            }
            match &step.action {
                Action::Send(send) => {
                    if !self.mailable() {
                        self.fx.push(Effect::Skipped {
                            step: step.id.clone(),
                            why: "lead is not mailable".into(),
                        });
                    } else if let Some((until, why)) = self.send_held().filter(|_| !step.urgent) {
                        self.hold(until, why);
                        return;
                    } else {
                        let template = self.pick(send, &step.id);
                        self.lead.sent_at.push(self.now);
                        let key = self.key(&step.id);
                        self.fx.push(Effect::SendEmail {
                            template,
                            step: step.id.clone(),
                            key,
                            variant: matches!(send, Send::Split(_)),
                        });
                    }
                }
                Action::Wait(d) => {
                    let until = self.now + Duration::seconds(d.as_secs() as i64);
                    self.hold(until, format!("wait {d}"));
                    return;
                }
                Action::WaitUntil(w) => {
                    // (whether the moment is known, what the timeline says) when it is not ahead.
                    let missed = match self.until(w) {
                        Some(until) if until > self.now => {
                            self.hold(until, format!("wait_until {}", describe(w)));
                            return;
                        }
                        Some(until) if until == self.now => None,
                        Some(_) => Some((true, format!("wait_until {} has passed", describe(w)))),
                        None => Some((false, format!("no time for wait_until {}", describe(w)))),
                    };
                    if let Some((known, why)) = missed {
                        match step.if_past() {
                            // A moment passed goes on at once; one that cannot be known says
                            // so and goes on.
                            IfPast::Send => {
                                if !known {
                                    self.fx.push(Effect::Skipped {
                                        step: step.id.clone(),
                                        why,
                                    });
                                }
                            }
                            IfPast::Exit => {
                                self.fx.push(Effect::Skipped {
                                    step: step.id.clone(),
                                    why,
                                });
                                self.exit(Outcome::NotConverted);
                                return;
                            }
                            IfPast::Skip => {
                                // The steps that were for that moment, up to the next wait,
                                // `goto` or `exit`.
                                self.fx.push(Effect::Skipped {
                                    step: step.id.clone(),
                                    why: why.clone(),
                                });
                                self.st.step += 1;
                                while let Some(next) = self.current().filter(|s| {
                                    !s.action.waits()
                                        && !matches!(s.action, Action::Goto(_) | Action::Exit(_))
                                }) {
                                    self.fx.push(Effect::Skipped {
                                        step: next.id.clone(),
                                        why: why.clone(),
                                    });
                                    self.st.step += 1;
                                }
                                continue;
                            }
                        }
                    }
                }
                Action::Goto(s) => {
                    let reason = format!("goto: {}", s.value);
                    self.leave(reason);
                    self.enter(&s.value);
                    continue;
                }
                Action::Exit(o) => {
                    self.exit(*o);
                    return;
                }
                Action::Tag(tags) => {
                    for t in tags {
                        self.lead.tags.insert(t.to_string());
                        self.fx.push(Effect::Tag(t.clone()));
                    }
                }
                Action::Untag(tags) => {
                    for t in tags {
                        self.lead.tags.remove(t.as_str());
                        self.fx.push(Effect::Untag(t.clone()));
                    }
                }
                Action::Set(pairs) => {
                    for (field, value) in pairs {
                        self.lead
                            .fields
                            .insert(field.value.to_string(), value.clone());
                        self.fx.push(Effect::SetField {
                            field: field.value.to_string(),
                            value: value.clone(),
                        });
                    }
                }
                Action::AssignSession(session) => {
                    // The first session at least `min_lead_time` away (one exactly that far
                    // counts), in the lead's zone, written with the zone's offset.
                    let tz = self.tz();
                    let earliest = self.now
                        + Duration::seconds(session.min_lead_time.as_secs() as i64)
                        - Duration::seconds(1);
                    match session.schedule.next_after(tz, earliest) {
                        Some(at) => {
                            let value = serde_json::Value::from(
                                at.with_timezone(&tz)
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                            );
                            let field = session.field.value.to_string();
                            self.lead.fields.insert(field.clone(), value.clone());
                            self.fx.push(Effect::SetField { field, value });
                        }
                        None => self.fx.push(Effect::Skipped {
                            step: step.id.clone(),
                            why: format!("no session in \"{}\"", session.schedule.source()),
                        }),
                    }
                }
                Action::Score(n) => {
                    let entry = self.st.stage_entry;
                    self.add_score(*n);
                    if self.st.stage_entry != entry || self.st.status != RunStatus::Active {
                        return; // a threshold event moved the lead, and that run went on from there
                    }
                }
                Action::Webhook(w) => {
                    let key = self.key(&step.id);
                    self.fx.push(Effect::CallWebhook {
                        webhook: w.value.clone(),
                        step: step.id.clone(),
                        key,
                    });
                }
            }
            self.st.step += 1;
        }
    }

    fn hold(&mut self, until: DateTime<Utc>, why: String) {
        self.st.wake_at = Some(until);
        self.fx.push(Effect::Held { until, why });
    }

    /// The idempotency key of a step's side effect: one per stage entry.
    fn key(&self, step: &StepId) -> String {
        format!(
            "{}:{}:{}:{}",
            self.f.id.value, self.st.stage, self.st.stage_entry, step
        )
    }

    /// A/B: the variant depends only on the lead and the step, so it never changes.
    fn pick(&self, send: &Send, step: &StepId) -> TemplateName {
        match send {
            Send::Template(t) => t.value.clone(),
            Send::Split(ts) => {
                let h = fnv1a(format!("{}:{}:{}", self.lead.id, self.f.id.value, step).as_bytes());
                ts[(h % ts.len() as u64) as usize].value.clone()
            }
        }
    }

    /// When a send must wait: outside the send window, or over the frequency cap.
    fn send_held(&self) -> Option<(DateTime<Utc>, String)> {
        let tz = self.tz();
        if let Some(w) = &self.f.send_window
            && !w.value.contains(tz, self.now)
        {
            let open = w.value.next_open(tz, self.now)?;
            return Some((open, format!("send window \"{}\"", w.value.source())));
        }
        if let Some(cap) = self.f.frequency_cap {
            let per = Duration::seconds(cap.per.as_secs() as i64);
            let mut recent: Vec<DateTime<Utc>> = self
                .lead
                .sent_at
                .iter()
                .copied()
                .filter(|t| *t > self.now - per && *t <= self.now)
                .collect();
            if recent.len() >= cap.count as usize {
                recent.sort();
                let until = recent[recent.len() - cap.count as usize] + per;
                return Some((until, format!("frequency cap {cap}")));
            }
        }
        None
    }

    fn until(&self, w: &WaitUntil) -> Option<DateTime<Utc>> {
        let tz = self.tz();
        match w {
            WaitUntil::Cron(c) => c.next_after(tz, self.now),
            WaitUntil::Deadline { offset_secs } => self
                .st
                .deadline
                .map(|d| d + Duration::seconds(*offset_secs)),
            WaitUntil::Field { field, offset_secs } => {
                let text = self.lead.fields.get(field.value.as_str())?.as_str()?;
                let at = crate::funnel::time::FieldTime::parse(text)?.instant(tz)?;
                at.checked_add_signed(Duration::seconds(*offset_secs))
            }
            WaitUntil::At(t) => Some(t.with_timezone(&Utc)),
            WaitUntil::Local(t) => tz
                .from_local_datetime(t)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The lead's score now: the funnel's `scoring.decay` taken off for every full period
    /// since the score last changed, down to 0 at most (decay on read; nothing sweeps).
    fn score_now(&self) -> i64 {
        let l = &self.lead;
        let decay = self.f.scoring.as_ref().and_then(|s| s.decay);
        match (decay, l.scored_at) {
            (Some(d), Some(at)) if l.score > 0 && d.points > 0 && self.now > at => {
                let every = i64::try_from(d.every.as_secs()).unwrap_or(i64::MAX).max(1);
                let periods = (self.now - at).num_seconds() / every;
                (l.score - d.points.saturating_mul(periods)).max(0)
            }
            _ => l.score,
        }
    }

    fn add_score(&mut self, n: i64) {
        let before = self.score_now();
        if before != self.lead.score {
            self.fx.push(Effect::Decayed(self.lead.score - before));
        }
        self.lead.score = before + n;
        self.lead.scored_at = Some(self.now);
        self.fx.push(Effect::AddScore(n));
        if let Some(s) = &self.f.scoring {
            for (kind, threshold) in [(EventKind::Mql, s.mql), (EventKind::Sql, s.sql)] {
                if let Some(t) = threshold
                    && before < t
                    && self.lead.score >= t
                {
                    self.fx.push(Effect::Emitted(kind.clone()));
                    if self.st.status == RunStatus::Active {
                        self.transition(&Event::of(kind));
                    }
                }
            }
        }
    }

    fn event(&mut self, e: &Event) {
        // Taken out through the admin API: only the named funnel's run ends, whatever it says.
        if e.kind == EventKind::Removed {
            if e.funnel.as_ref() == Some(&self.f.id.value) {
                self.exit(Outcome::Removed);
            }
            return;
        }
        // Unsubscribed from one funnel (its page): that funnel's run ends; others go on.
        if e.kind == EventKind::Unsubscribed && e.funnel.is_some() {
            if e.funnel.as_ref() == Some(&self.f.id.value) {
                self.exit(Outcome::Unsubscribed);
            }
            return;
        }
        // Facts the event itself establishes count for guards evaluated now.
        self.lead.observe(e);
        if self.st.status == RunStatus::Unconfirmed {
            // Before confirmation only leaving the funnel is possible.
            if e.kind.stops_mail() {
                self.exit(Outcome::Unsubscribed);
            }
            return;
        }
        // The event's own transition comes first; the points it earns (and the `mql`/`sql`
        // events they may emit) count from wherever that left the lead.
        self.transition(e);
        let points: i64 = self
            .f
            .scoring
            .iter()
            .flat_map(|s| s.rules.iter())
            .filter(|r| matches(&r.on, e))
            .map(|r| r.points)
            .sum();
        if points != 0 && self.st.status == RunStatus::Active {
            self.add_score(points);
        }
    }

    /// The first matching transition of the stage, else of the funnel, fires.
    fn transition(&mut self, e: &Event) {
        let stage_on = self.stage().map(|s| s.on.clone()).unwrap_or_default();
        let found = stage_on
            .iter()
            .chain(self.f.on.iter())
            .find(|t| matches(&t.on, e) && t.guard.as_ref().is_none_or(|g| self.holds(g)))
            .cloned();
        if let Some(t) = found {
            self.target(&t.target, format!("event: {}", e.kind));
        }
    }

    fn holds(&self, c: &Condition) -> bool {
        let l = &self.lead;
        match c {
            Condition::Clicked { template, link } => l.clicked.iter().any(|(t, k)| {
                t == template.value.as_str() && link.as_ref().is_none_or(|want| want == k)
            }),
            Condition::Opened(t) => l.opened.contains(t.value.as_str()),
            Condition::HasTag(t) => l.tags.contains(t.as_str()),
            Condition::Purchased(p) => l.purchased.contains(p.value.as_str()),
            Condition::Field { field, op, value } => {
                compare(l.fields.get(field.value.as_str()), *op, value)
            }
            Condition::Score { op, value } => compare(
                Some(&Json::from(self.score_now())),
                *op,
                &Json::from(*value),
            ),
            Condition::Not(inner) => !self.holds(inner),
            Condition::All(cs) => cs.iter().all(|c| self.holds(c)),
            Condition::Any(cs) => cs.iter().any(|c| self.holds(c)),
        }
    }
}

/// Whether an event matches a transition's or a scoring rule's event filter.
pub fn matches(m: &EventMatch, e: &Event) -> bool {
    let same =
        |want: Option<&str>, got: &Option<String>| want.is_none_or(|w| got.as_deref() == Some(w));
    m.event.kind() == e.kind
        && match &m.event {
            EventPattern::Purchase { product } => {
                same(product.as_ref().map(|p| p.value.as_str()), &e.product)
            }
            EventPattern::Click { template, link } => {
                same(template.as_ref().map(|t| t.value.as_str()), &e.template)
                    && same(link.as_deref(), &e.link)
            }
            EventPattern::Open { template } => {
                same(template.as_ref().map(|t| t.value.as_str()), &e.template)
            }
            EventPattern::Signup { form } => same(form.as_ref().map(|f| f.value.as_str()), &e.form),
            _ => true,
        }
}

fn compare(have: Option<&Json>, op: CompareOp, want: &Json) -> bool {
    let present = have.is_some_and(|h| !h.is_null());
    if op == CompareOp::Exists {
        return present == want.as_bool().unwrap_or(true);
    }
    let Some(have) = have.filter(|_| present) else {
        return op == CompareOp::Ne;
    };
    let num = |v: &Json| v.as_f64();
    match op {
        CompareOp::Eq => have == want || (num(have).is_some() && num(have) == num(want)),
        CompareOp::Ne => !(have == want || (num(have).is_some() && num(have) == num(want))),
        CompareOp::Contains => match (have.as_str(), want.as_str()) {
            (Some(h), Some(w)) => h.to_lowercase().contains(&w.to_lowercase()),
            _ => false,
        },
        CompareOp::Gt | CompareOp::Gte | CompareOp::Lt | CompareOp::Lte => {
            let ord = match (num(have), num(want)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => match (have.as_str(), want.as_str()) {
                    (Some(a), Some(b)) => Some(a.cmp(b)), // dates as YYYY-MM-DD compare as text
                    _ => None,
                },
            };
            let Some(ord) = ord else { return false };
            match op {
                CompareOp::Gt => ord.is_gt(),
                CompareOp::Gte => ord.is_ge(),
                CompareOp::Lt => ord.is_lt(),
                _ => ord.is_le(),
            }
        }
        CompareOp::Exists => unreachable!("handled above"),
    }
}

fn describe(w: &WaitUntil) -> String {
    match w {
        WaitUntil::Cron(c) => format!("\"{}\"", c.source()),
        other => crate::funnel::print::wait_until(other),
    }
}

/// FNV-1a: a stable hash (std's is seeded per process), for A/B variants.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
