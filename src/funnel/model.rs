//! The typed funnel: what a checked funnel file means. Built by `parse`, cross-checked by
//! `validate`; every name here has already been read as its newtype.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use chrono_tz::Tz;

use super::diag::Pos;
use super::time::{Cron, Duration, FrequencyCap};
use crate::domain::{
    EventName, FieldName, FormId, FunnelId, Mailbox, ProductId, StageId, StepId, Tag, TemplateName,
    WebhookId,
};

/// A value with the place in the funnel file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub pos: Pos,
    pub value: T,
}

/// One funnel file, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Funnel {
    pub file: PathBuf,
    pub id: Located<FunnelId>,
    pub name: String,
    pub from: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    /// The sender's postal address, which bulk-mail rules (CAN-SPAM, 38-ФЗ) want in every
    /// email's footer: `sender.address` in templates.
    pub postal_address: Option<String>,
    /// Where links of an offer lead once its deadline has passed (else a built-in page).
    pub expired_offer: Option<Located<String>>,
    /// The zone used for leads that have none.
    pub timezone: Tz,
    /// The language its emails are written in (`en` by default): how money, dates and time
    /// left are written for its templates.
    pub language: crate::locale::Language,
    pub send_window: Option<Located<Cron>>,
    pub frequency_cap: Option<FrequencyCap>,
    pub entry: Entry,
    pub products: BTreeMap<ProductId, Product>,
    pub fields: BTreeMap<FieldName, FieldDef>,
    pub webhooks: BTreeMap<WebhookId, Webhook>,
    pub scoring: Option<Scoring>,
    /// Transitions that apply in every stage.
    pub on: Vec<Transition>,
    pub stages: Vec<Stage>,
}

impl Funnel {
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id.value.as_str() == id)
    }
}

/// How leads get into the funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub pos: Pos,
    pub triggers: Vec<Located<EntryTrigger>>,
    /// Confirmation template; the lead starts only once its link is clicked.
    pub double_opt_in: Option<Located<TemplateName>>,
    pub re_entry: ReEntry,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EntryTrigger {
    Form(Form),
    Event(EventName),
    Tag(Tag),
    Api,
}

/// A landing-page form: signups POST to `/f/<id>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    pub id: FormId,
    /// Where an HTML form is sent after a signup.
    pub thank_you: Option<String>,
    /// Origins allowed to post from a browser's fetch().
    pub cors: Vec<String>,
    /// The consent text the form shows, recorded with each signup it takes.
    pub consent: Option<ConsentText>,
}

/// A consent text: a file of the project (`legal/newsletter-v3.txt`, from the project folder)
/// and, once the project has read it, the SHA-256 of its content — the proof of which words
/// a lead agreed to.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentText {
    pub path: String,
    pub pos: Pos,
    /// Hex; `None` until the project has read the file.
    pub sha256: Option<String>,
}

impl Entry {
    /// The landing-page forms that start this funnel.
    pub fn forms(&self) -> impl Iterator<Item = &Form> {
        self.triggers.iter().filter_map(|t| match &t.value {
            EntryTrigger::Form(f) => Some(f),
            _ => None,
        })
    }
}

/// Whether a lead that already went through the funnel may start it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReEntry {
    Never,
    Always,
    /// Again once this long has passed since the previous entry.
    After(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: ProductId,
    pub name: Option<String>,
    /// In the currency's main unit, as a marketer writes it (490 RUB).
    pub price: f64,
    pub currency: String,
}

/// A lead field that templates, conditions and `set` may use.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: FieldName,
    pub kind: FieldKind,
    /// The value `check` renders templates with.
    pub sample: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Number,
    Bool,
    Date,
    /// An instant (`2026-01-15T19:00:00+03:00`) or a wall time in the lead's zone
    /// (`2026-01-15T19:00`): a webinar's start.
    DateTime,
}

impl FieldKind {
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Text => "text",
            FieldKind::Number => "number",
            FieldKind::Bool => "bool",
            FieldKind::Date => "date",
            FieldKind::DateTime => "datetime",
        }
    }
}

/// An outgoing webhook: a signed POST of the lead and the step to a URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: WebhookId,
    pub url: String,
    /// Environment variable holding the signing secret (secrets never live in the repo).
    pub secret_env: Option<String>,
}

/// Points per event, decay, and the thresholds that emit `mql` and `sql` events.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    pub rules: Vec<ScoreRule>,
    pub decay: Option<Decay>,
    pub mql: Option<i64>,
    pub sql: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRule {
    pub on: EventMatch,
    pub points: i64,
}

/// Lose `points` every `every` without activity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    pub points: i64,
    pub every: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub id: Located<StageId>,
    pub kind: Option<StageKind>,
    pub offer: Option<Located<ProductId>>,
    /// Evergreen: per lead, counted from entering the stage.
    pub deadline: Option<Duration>,
    pub on: Vec<Transition>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    LeadMagnet,
    Tripwire,
    MainProduct,
    Upsell,
    Downsell,
    Nurture,
    Retention,
}

impl StageKind {
    pub const ALL: [(&'static str, StageKind); 7] = [
        ("lead_magnet", StageKind::LeadMagnet),
        ("tripwire", StageKind::Tripwire),
        ("main_product", StageKind::MainProduct),
        ("upsell", StageKind::Upsell),
        ("downsell", StageKind::Downsell),
        ("nurture", StageKind::Nurture),
        ("retention", StageKind::Retention),
    ];

    pub fn name(self) -> &'static str {
        StageKind::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }
}

/// An event that moves a lead out of its current step sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub pos: Pos,
    pub on: EventMatch,
    pub guard: Option<Condition>,
    pub target: Target,
}

/// Where a transition or a step sends the lead.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Goto(Located<StageId>),
    Exit(Outcome),
}

/// Which events match: a kind and the filters that kind allows.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMatch {
    pub pos: Pos,
    pub event: EventPattern,
}

/// Which events a transition or scoring rule reacts to: a kind, with optional filters.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPattern {
    Purchase {
        product: Option<Located<ProductId>>,
    },
    /// A click on a link in a message; both filters optional.
    Click {
        template: Option<Located<TemplateName>>,
        link: Option<String>,
    },
    Open {
        template: Option<Located<TemplateName>>,
    },
    Signup {
        form: Option<Located<FormId>>,
    },
    Confirmed,
    Unsubscribed,
    Bounced,
    Complained,
    /// Emitted by scoring when the score crosses a threshold.
    Mql,
    Sql,
    Custom(EventName),
}

impl EventPattern {
    /// Built-in event names, in the order the reference lists them.
    pub const BUILTIN: [&'static str; 10] = [
        "purchase",
        "click",
        "open",
        "signup",
        "confirmed",
        "unsubscribed",
        "bounced",
        "complained",
        "mql",
        "sql",
    ];

    pub fn name(&self) -> &str {
        match self {
            EventPattern::Purchase { .. } => "purchase",
            EventPattern::Click { .. } => "click",
            EventPattern::Open { .. } => "open",
            EventPattern::Signup { .. } => "signup",
            EventPattern::Confirmed => "confirmed",
            EventPattern::Unsubscribed => "unsubscribed",
            EventPattern::Bounced => "bounced",
            EventPattern::Complained => "complained",
            EventPattern::Mql => "mql",
            EventPattern::Sql => "sql",
            EventPattern::Custom(n) => n.as_str(),
        }
    }

    /// The kind of event this pattern matches.
    pub fn kind(&self) -> crate::domain::EventKind {
        use crate::domain::EventKind as K;
        match self {
            EventPattern::Purchase { .. } => K::Purchase,
            EventPattern::Click { .. } => K::Click,
            EventPattern::Open { .. } => K::Open,
            EventPattern::Signup { .. } => K::Signup,
            EventPattern::Confirmed => K::Confirmed,
            EventPattern::Unsubscribed => K::Unsubscribed,
            EventPattern::Bounced => K::Bounced,
            EventPattern::Complained => K::Complained,
            EventPattern::Mql => K::Mql,
            EventPattern::Sql => K::Sql,
            EventPattern::Custom(n) => K::Custom(n.clone()),
        }
    }
}

pub use crate::domain::Outcome;

/// One step of a stage, run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub pos: Pos,
    /// Explicit, or derived from the action (`send-webinar-offer`, `wait-2`).
    pub id: StepId,
    pub guard: Option<Condition>,
    pub action: Action,
    /// `urgent: true` on a `send`: it goes out now, held by neither the send window nor the
    /// frequency cap (and still counted in the cap): "the webinar starts now".
    pub urgent: bool,
    /// `if_past:` on a `wait_until`, when written ([`Step::if_past`] gives the default).
    pub if_past: Option<IfPast>,
}

/// What a `wait_until` does when its moment has already passed (or the lead has no value for
/// its field) as the lead reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfPast {
    /// The steps after it up to the next wait, `goto` or `exit` are skipped: the reminder of
    /// a moment gone is not sent late.
    Skip,
    /// It goes on at once.
    Send,
    /// The lead leaves the funnel, `not_converted`.
    Exit,
}

impl IfPast {
    pub const ALL: [(&'static str, IfPast); 3] = [
        ("skip", IfPast::Skip),
        ("send", IfPast::Send),
        ("exit", IfPast::Exit),
    ];

    pub fn name(self) -> &'static str {
        IfPast::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("skip", |(n, _)| n)
    }
}

impl Step {
    /// What the step does when its moment has passed: as written, else `skip` for a lead
    /// field's moment (a webinar reminder) and `send` for the others.
    pub fn if_past(&self) -> IfPast {
        match (&self.if_past, &self.action) {
            (Some(p), _) => *p,
            (None, Action::WaitUntil(WaitUntil::Field { .. })) => IfPast::Skip,
            _ => IfPast::Send,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Send),
    Wait(Duration),
    WaitUntil(WaitUntil),
    Goto(Located<StageId>),
    Exit(Outcome),
    Tag(Vec<Tag>),
    Untag(Vec<Tag>),
    Set(Vec<(Located<FieldName>, serde_json::Value)>),
    /// `assign_session`: the lead's `datetime` field set to the nearest session of a schedule.
    AssignSession(Session),
    Score(i64),
    Webhook(Located<WebhookId>),
}

impl Action {
    /// The step's keyword, as written in YAML.
    pub fn keyword(&self) -> &'static str {
        match self {
            Action::Send(_) => "send",
            Action::Wait(_) => "wait",
            Action::WaitUntil(_) => "wait_until",
            Action::Goto(_) => "goto",
            Action::Exit(_) => "exit",
            Action::Tag(_) => "tag",
            Action::Untag(_) => "untag",
            Action::Set(_) => "set",
            Action::Score(_) => "score",
            Action::Webhook(_) => "webhook",
            Action::AssignSession(_) => "assign_session",
        }
    }

    /// Whether the step holds the lead until time passes.
    pub fn waits(&self) -> bool {
        matches!(self, Action::Wait(_) | Action::WaitUntil(_))
    }
}

/// One template, or an A/B split whose variant is stable per lead.
#[derive(Debug, Clone, PartialEq)]
pub enum Send {
    Template(Located<TemplateName>),
    Split(Vec<Located<TemplateName>>),
}

impl Send {
    pub fn templates(&self) -> Vec<&Located<TemplateName>> {
        match self {
            Send::Template(t) => vec![t],
            Send::Split(ts) => ts.iter().collect(),
        }
    }
}

/// Sessions of an evergreen (auto-)webinar: `assign_session` sets `field` to the first firing
/// of `schedule`, in the lead's time zone, at least `min_lead_time` away.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub schedule: Cron,
    pub min_lead_time: Duration,
    pub field: Located<FieldName>,
}

/// The moment a `wait_until` step waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitUntil {
    /// The next firing of a cron expression, in the lead's time zone.
    Cron(Cron),
    /// The stage's deadline, shifted by `offset_secs` (negative: before it).
    Deadline { offset_secs: i64 },
    /// A `date` or `datetime` field of the lead, shifted (`lead.webinar_at - 1h`).
    Field {
        field: Located<FieldName>,
        offset_secs: i64,
    },
    /// A fixed instant with its zone.
    At(DateTime<FixedOffset>),
    /// A wall-clock time in the lead's zone.
    Local(NaiveDateTime),
}

/// A guard on a step or a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Clicked {
        template: Located<TemplateName>,
        link: Option<String>,
    },
    Opened(Located<TemplateName>),
    HasTag(Tag),
    Field {
        field: Located<FieldName>,
        op: CompareOp,
        value: serde_json::Value,
    },
    Score {
        op: CompareOp,
        value: i64,
    },
    Purchased(Located<ProductId>),
    Not(Box<Condition>),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    Exists,
}

impl CompareOp {
    pub const ALL: [(&'static str, CompareOp); 8] = [
        ("eq", CompareOp::Eq),
        ("ne", CompareOp::Ne),
        ("gt", CompareOp::Gt),
        ("gte", CompareOp::Gte),
        ("lt", CompareOp::Lt),
        ("lte", CompareOp::Lte),
        ("contains", CompareOp::Contains),
        ("exists", CompareOp::Exists),
    ];
}

/// The lead fields kept in a lead's `fields` (all but `email` and `first_name`, which are
/// its own columns) that other systems may set: the built-in ones and those `funnels`
/// declare, each with the types it has (a field two funnels declare differently has both).
pub fn settable_fields<'a>(
    funnels: impl IntoIterator<Item = &'a Funnel>,
) -> std::collections::BTreeMap<String, Vec<FieldKind>> {
    let mut out = std::collections::BTreeMap::new();
    for (name, kind, _) in BUILTIN_FIELDS {
        if name != "email" && name != "first_name" {
            out.insert(name.to_string(), vec![kind]);
        }
    }
    for f in funnels {
        for (name, def) in &f.fields {
            let kinds: &mut Vec<FieldKind> = out.entry(name.to_string()).or_default();
            if !kinds.contains(&def.kind) {
                kinds.push(def.kind);
            }
        }
    }
    out
}

/// Fields every lead has, whether or not a funnel declares them.
pub const BUILTIN_FIELDS: [(&str, FieldKind, &str); 8] = [
    ("email", FieldKind::Text, "anna@example.com"),
    ("first_name", FieldKind::Text, "Anna"),
    ("last_name", FieldKind::Text, "Petrova"),
    ("phone", FieldKind::Text, "+7 900 000-00-00"),
    ("company", FieldKind::Text, "Example LLC"),
    ("city", FieldKind::Text, "Moscow"),
    ("country", FieldKind::Text, "RU"),
    // No sample: a lead's `language` picks the language of its emails, a sample must not.
    ("language", FieldKind::Text, ""),
];
