//! Cross-checks a parsed funnel: every name it uses must exist, every stage must be reachable,
//! no step may follow an unconditional `goto`/`exit`, and no cycle of stages may spin without
//! a wait. Pure: the caller says which templates, forms and webhooks exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::diag::{Pos, Sink, did_you_mean};
use super::model::*;
use super::parse::check_field_value;
use crate::domain::{FieldName, FormId, StageId};

/// What exists outside the funnel file itself.
#[derive(Debug, Default)]
pub struct Context {
    /// Templates found in the funnel's folder.
    pub templates: BTreeSet<String>,
    /// Every form some funnel of the project declares.
    pub forms: BTreeSet<String>,
    /// Webhooks declared in the settings file (funnels may declare their own).
    pub webhooks: BTreeSet<String>,
    /// Whether the settings give a default sender.
    pub default_from: bool,
}

pub fn validate(f: &Funnel, cx: &Context, sink: &mut Sink) {
    let stage_ids = check_stage_ids(f, sink);
    let names = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
    let stage_names: Vec<String> = stage_ids.keys().cloned().collect();
    let template_names = names(&cx.templates);
    let product_names: Vec<String> = f.products.keys().map(|p| p.to_string()).collect();
    let mut field_kinds: BTreeMap<String, FieldKind> = BUILTIN_FIELDS
        .iter()
        .map(|(n, k, _)| (n.to_string(), *k))
        .collect();
    field_kinds.extend(f.fields.iter().map(|(n, d)| (n.to_string(), d.kind)));

    let mut v = Checker {
        sink,
        stages: &stage_names,
        templates: &template_names,
        products: &product_names,
        fields: &field_kinds,
        forms: cx.forms.iter().cloned().collect(),
        webhooks: f
            .webhooks
            .keys()
            .map(|w| w.to_string())
            .chain(cx.webhooks.iter().cloned())
            .collect(),
        emits: Emits {
            mql: false,
            sql: false,
        },
    };
    if let Some(s) = &f.scoring {
        v.emits = Emits {
            mql: s.mql.is_some(),
            sql: s.sql.is_some(),
        };
        for r in &s.rules {
            v.event(&r.on);
        }
    }
    if let Some(t) = &f.entry.double_opt_in {
        v.template(t);
    }
    for t in &f.on {
        v.transition(t);
    }
    let mut sends = false;
    for stage in &f.stages {
        if let Some(o) = &stage.offer {
            v.product(o);
        }
        for t in &stage.on {
            v.transition(t);
        }
        for step in &stage.steps {
            if let Some(g) = &step.guard {
                v.condition(g);
            }
            sends |= matches!(step.action, Action::Send(_));
            v.action(stage, &step.action, step.pos);
        }
        check_unreachable_steps(stage, v.sink);
        check_timed_sends(f, stage, v.sink);
    }
    if (sends || f.entry.double_opt_in.is_some()) && f.from.is_none() && !cx.default_from {
        v.sink.error(f.id.pos, "the funnel sends email but has no `from`: add a sender like `from: \"Anna <anna@example.com>\"`");
    }
    check_reachability(f, v.sink);
    check_instant_cycles(f, v.sink);
}

/// A send timed to a moment (right after a `wait_until` on a lead's date or time field, or
/// on the deadline, at or before it) closer to it than the send window's longest closed
/// stretch or the frequency cap's period: either can hold the email past the moment ("starts
/// in an hour" arriving the next morning). Warned, with the way out (`urgent: true`).
fn check_timed_sends(f: &Funnel, stage: &Stage, sink: &mut Sink) {
    let window = f
        .send_window
        .as_ref()
        .map(|w| (longest_closed(&w.value), "the send window"));
    let cap = f.frequency_cap.map(|c| {
        let secs = i64::try_from(c.per.as_secs()).unwrap_or(i64::MAX);
        (secs, "the frequency cap")
    });
    let Some((hold, by)) = [window, cap].into_iter().flatten().max() else {
        return;
    };
    let mut timed: Option<String> = None;
    for step in &stage.steps {
        let before = |offset_secs: i64| offset_secs <= 0 && -offset_secs < hold;
        match &step.action {
            Action::WaitUntil(WaitUntil::Field { field, offset_secs }) => {
                timed = before(*offset_secs)
                    .then(|| moment(&format!("lead.{}", field.value), *offset_secs));
            }
            Action::WaitUntil(WaitUntil::Deadline { offset_secs }) => {
                timed = before(*offset_secs).then(|| moment("the deadline", *offset_secs));
            }
            Action::Send(_) if !step.urgent => {
                if let Some(at) = timed.take() {
                    let d = super::time::Duration::from_secs(hold.unsigned_abs());
                    sink.warning(
                        step.pos,
                        format!(
                            "this email is timed to {at}, but {by} can hold an email for up to \
                             {d}, past that moment; add `urgent: true` if it must go on time"
                        ),
                    );
                }
            }
            Action::Wait(_) | Action::WaitUntil(_) | Action::Goto(_) | Action::Exit(_) => {
                timed = None;
            }
            _ => {}
        }
    }
}

/// The longest a send window stays closed, in seconds (by the minute, over two weeks, so a
/// weekend that spans the week's end counts whole).
fn longest_closed(w: &super::time::Cron) -> i64 {
    use chrono::TimeZone as _;
    let Some(start) = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single() else {
        return 0;
    };
    let (mut run, mut longest) = (0i64, 0i64);
    for m in 0..2 * 7 * 24 * 60 {
        if w.contains(chrono_tz::UTC, start + chrono::Duration::minutes(m)) {
            run = 0;
        } else {
            run += 60;
            longest = longest.max(run);
        }
    }
    longest
}

/// `lead.webinar_at - 1h`, as a message says it.
fn moment(anchor: &str, offset_secs: i64) -> String {
    let d = super::time::Duration::from_secs(offset_secs.unsigned_abs());
    match offset_secs.signum() {
        0 => anchor.to_string(),
        -1 => format!("{anchor} - {d}"),
        _ => format!("{anchor} + {d}"),
    }
}

fn check_stage_ids(f: &Funnel, sink: &mut Sink) -> BTreeMap<String, Pos> {
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    for s in &f.stages {
        if let Some(first) = seen.get(s.id.value.as_str()) {
            sink.error(
                s.id.pos,
                format!(
                    "duplicate stage id \"{}\" (first used at line {})",
                    s.id.value, first.line
                ),
            );
        } else {
            seen.insert(s.id.value.to_string(), s.id.pos);
        }
    }
    seen
}

struct Emits {
    mql: bool,
    sql: bool,
}

struct Checker<'a, 's> {
    sink: &'s mut Sink,
    stages: &'a [String],
    templates: &'a [String],
    products: &'a [String],
    fields: &'a BTreeMap<String, FieldKind>,
    forms: Vec<String>,
    webhooks: Vec<String>,
    emits: Emits,
}

fn known(list: &[String], name: &str) -> bool {
    list.iter().any(|s| s == name)
}

impl Checker<'_, '_> {
    fn unknown(&mut self, pos: Pos, what: &str, name: &str, among: &[String]) {
        let hint = did_you_mean(name, among.iter().map(String::as_str));
        self.sink
            .error(pos, format!("unknown {what} \"{name}\"{hint}"));
    }

    fn stage(&mut self, s: &Located<StageId>) {
        if !known(self.stages, s.value.as_str()) {
            self.unknown(s.pos, "stage", s.value.as_str(), self.stages);
        }
    }

    fn template(&mut self, t: &Located<crate::domain::TemplateName>) {
        if !known(self.templates, t.value.as_str()) {
            self.unknown(t.pos, "template", t.value.as_str(), self.templates);
        }
    }

    fn product(&mut self, p: &Located<crate::domain::ProductId>) {
        if !known(self.products, p.value.as_str()) {
            self.unknown(p.pos, "product", p.value.as_str(), self.products);
        }
    }

    fn form(&mut self, fm: &Located<FormId>) {
        if !known(&self.forms, fm.value.as_str()) {
            let forms = self.forms.clone();
            self.unknown(fm.pos, "form", fm.value.as_str(), &forms);
        }
    }

    fn field(&mut self, f: &Located<FieldName>) -> Option<FieldKind> {
        let kind = self.fields.get(f.value.as_str()).copied();
        if kind.is_none() {
            let names: Vec<String> = self.fields.keys().cloned().collect();
            let hint = did_you_mean(f.value.as_str(), names.iter().map(String::as_str));
            self.sink.error(
                f.pos,
                format!(
                    "unknown field \"{}\"{hint}: declare it under `fields:`",
                    f.value
                ),
            );
        }
        kind
    }

    fn target(&mut self, t: &Target) {
        if let Target::Goto(s) = t {
            self.stage(s);
        }
    }

    fn transition(&mut self, t: &Transition) {
        self.event(&t.on);
        if let Some(g) = &t.guard {
            self.condition(g);
        }
        self.target(&t.target);
    }

    fn event(&mut self, e: &EventMatch) {
        match &e.event {
            EventPattern::Purchase { product: Some(p) } => self.product(p),
            EventPattern::Click {
                template: Some(t), ..
            }
            | EventPattern::Open { template: Some(t) } => self.template(t),
            EventPattern::Signup { form: Some(f) } => self.form(f),
            EventPattern::Mql if !self.emits.mql => self.sink.error(
                e.pos,
                "the event \"mql\" never happens: set a threshold with `scoring: { mql: 50 }`",
            ),
            EventPattern::Sql if !self.emits.sql => self.sink.error(
                e.pos,
                "the event \"sql\" never happens: set a threshold with `scoring: { sql: 100 }`",
            ),
            _ => {}
        }
    }

    fn condition(&mut self, c: &Condition) {
        match c {
            Condition::Clicked { template, .. } | Condition::Opened(template) => {
                self.template(template)
            }
            Condition::Purchased(p) => self.product(p),
            Condition::Field { field, op, value } => {
                if let Some(kind) = self.field(field)
                    && !matches!(op, CompareOp::Exists)
                    && let Err(e) = check_field_value(kind, value)
                {
                    self.sink
                        .error(field.pos, format!("field \"{}\": {e}", field.value));
                }
            }
            Condition::Not(inner) => self.condition(inner),
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| self.condition(c)),
            Condition::HasTag(_) | Condition::Score { .. } => {}
        }
    }

    fn action(&mut self, stage: &Stage, a: &Action, pos: Pos) {
        match a {
            Action::Send(s) => s.templates().into_iter().for_each(|t| self.template(t)),
            Action::Goto(s) => self.stage(s),
            Action::WaitUntil(WaitUntil::Deadline { .. }) if stage.deadline.is_none() => {
                self.sink.error(
                    pos,
                    format!(
                        "wait_until uses the deadline, but stage \"{}\" has no `deadline`",
                        stage.id.value
                    ),
                );
            }
            Action::WaitUntil(WaitUntil::Field { field, .. }) => {
                if let Some(kind) = self.field(field)
                    && !matches!(kind, FieldKind::Date | FieldKind::DateTime)
                {
                    self.sink.error(
                        field.pos,
                        format!(
                            "wait_until needs a date or datetime field, but \"{}\" is {}",
                            field.value,
                            kind.name()
                        ),
                    );
                }
            }
            Action::Set(pairs) => {
                for (field, value) in pairs {
                    if field.value.as_str() == "email" {
                        self.sink
                            .error(field.pos, "a step cannot change a lead's email");
                    } else if let Some(kind) = self.field(field)
                        && let Err(e) = check_field_value(kind, value)
                    {
                        self.sink
                            .error(field.pos, format!("field \"{}\": {e}", field.value));
                    }
                }
            }
            Action::AssignSession(session) => {
                if let Some(kind) = self.field(&session.field)
                    && kind != FieldKind::DateTime
                {
                    self.sink.error(
                        session.field.pos,
                        format!(
                            "assign_session writes a session time: \"{}\" must be a datetime field, not {}",
                            session.field.value,
                            kind.name()
                        ),
                    );
                }
            }
            Action::Webhook(w) if !known(&self.webhooks, w.value.as_str()) => {
                let hint = did_you_mean(w.value.as_str(), self.webhooks.iter().map(String::as_str));
                self.sink.error(
                    w.pos,
                    format!("unknown webhook \"{}\"{hint}: define it under `webhooks:` in the funnel or the settings", w.value),
                );
            }
            _ => {}
        }
    }
}

/// Whether a step always ends the stage's sequence.
fn ends_sequence(step: &Step) -> bool {
    step.guard.is_none() && matches!(step.action, Action::Goto(_) | Action::Exit(_))
}

fn check_unreachable_steps(stage: &Stage, sink: &mut Sink) {
    if let Some(i) = stage.steps.iter().position(ends_sequence)
        && let Some(next) = stage.steps.get(i + 1)
    {
        sink.error(
            next.pos,
            format!(
                "step \"{}\" can never run: the step before it always leaves the stage (`{}`)",
                next.id,
                stage.steps[i].action.keyword()
            ),
        );
    }
}

/// Stages a stage may move to, by steps or by its own transitions.
fn successors(stage: &Stage) -> impl Iterator<Item = &StageId> {
    let by_steps = stage.steps.iter().filter_map(|s| match &s.action {
        Action::Goto(t) => Some(&t.value),
        _ => None,
    });
    let by_events = stage.on.iter().filter_map(|t| match &t.target {
        Target::Goto(s) => Some(&s.value),
        Target::Exit(_) => None,
    });
    by_steps.chain(by_events)
}

/// Stages by id; a duplicated id (already reported) means its first stage.
fn first_by_id(f: &Funnel) -> HashMap<&str, &Stage> {
    let mut index = HashMap::new();
    for s in &f.stages {
        index.entry(s.id.value.as_str()).or_insert(s);
    }
    index
}

fn check_reachability(f: &Funnel, sink: &mut Sink) {
    let Some(first) = f.stages.first() else {
        return;
    };
    let index = first_by_id(f);
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = vec![first.id.value.as_str()];
    // Funnel-wide transitions can fire from any stage.
    for t in &f.on {
        if let Target::Goto(s) = &t.target {
            todo.push(s.value.as_str());
        }
    }
    while let Some(id) = todo.pop() {
        if !reached.insert(id) {
            continue;
        }
        if let Some(stage) = index.get(id) {
            todo.extend(successors(stage).map(StageId::as_str));
        }
    }
    for s in &f.stages {
        if !reached.contains(s.id.value.as_str()) {
            sink.error(
                s.id.pos,
                format!(
                    "stage \"{}\" is never reached: no `goto` or event transition leads to it",
                    s.id.value
                ),
            );
        }
    }
}

/// Stages reached from `stage` without passing a `wait` or `wait_until` step.
fn instant_successors(stage: &Stage) -> Vec<&Located<StageId>> {
    let mut out = Vec::new();
    for step in &stage.steps {
        if step.action.waits() {
            break;
        }
        if let Action::Goto(t) = &step.action {
            out.push(t);
        }
        if ends_sequence(step) {
            break;
        }
    }
    out
}

fn check_instant_cycles(f: &Funnel, sink: &mut Sink) {
    let index = first_by_id(f);
    // Depth-first search with colours; every cycle is reported once, at its first stage.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: HashMap<&str, Colour> = index.keys().map(|k| (*k, Colour::White)).collect();
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in &f.stages {
        if colour[start.id.value.as_str()] != Colour::White {
            continue;
        }
        let mut path: Vec<&str> = Vec::new();
        let mut stack: Vec<(&str, usize)> = vec![(start.id.value.as_str(), 0)];
        while let Some((id, i)) = stack.pop() {
            if i == 0 {
                colour.insert(id, Colour::Grey);
                path.push(id);
            }
            let next = index
                .get(id)
                .map(|s| instant_successors(s))
                .unwrap_or_default();
            if let Some(t) = next.get(i) {
                stack.push((id, i + 1));
                let to = t.value.as_str();
                match colour.get(to).copied() {
                    Some(Colour::White) => stack.push((to, 0)),
                    Some(Colour::Grey) => {
                        let from = path.iter().position(|p| *p == to).unwrap_or(0);
                        let cycle: Vec<String> =
                            path[from..].iter().map(|s| s.to_string()).collect();
                        let mut key = cycle.clone();
                        key.sort();
                        if reported.insert(key) {
                            let mut shown = cycle.clone();
                            shown.push(to.to_string());
                            sink.error(
                                t.pos,
                                format!(
                                    "stages {} form a loop with no wait: a lead would spin forever; add a `wait` or `wait_until`",
                                    shown.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" → ")
                                ),
                            );
                        }
                    }
                    _ => {}
                }
            } else {
                colour.insert(id, Colour::Black);
                path.pop();
            }
        }
    }
}
