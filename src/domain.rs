//! Domain values as newtypes, parsed once at the edge ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a piece of text is not a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidValue {
    #[error("{what} \"{text}\" must start with a letter and use only a-z, 0-9, '-' and '_'")]
    Identifier { what: &'static str, text: String },
    #[error("\"{0}\" is not an e-mail address")]
    Email(String),
}

/// Lower-case identifiers with letters, digits, `-` and `_`, starting with a letter; at most 64.
fn check_identifier(what: &'static str, text: &str) -> Result<(), InvalidValue> {
    let mut chars = text.chars();
    let ok = text.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::Identifier {
            what,
            text: text.to_string(),
        })
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this kind of name is called in messages.
            pub const WHAT: &'static str = $what;

            pub fn parse(text: &str) -> Result<Self, InvalidValue> {
                check_identifier($what, text)?;
                Ok(Self(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// A funnel's id: its file name without `.yaml`, and the folder of its templates.
    FunnelId,
    "funnel id"
);
identifier!(
    /// A stage's id, unique within its funnel.
    StageId,
    "stage id"
);
identifier!(
    /// A step's id, unique within its stage; leads in flight keep their place by it.
    StepId,
    "step id"
);
identifier!(
    /// An email template's name: `templates/<funnel>/<name>.{subject,html,txt}`.
    TemplateName,
    "template name"
);
identifier!(
    /// A product that can be offered and purchased.
    ProductId,
    "product id"
);
identifier!(
    /// A landing-page form that posts signups to `/f/<form>`.
    FormId,
    "form id"
);
identifier!(
    /// A named outgoing webhook.
    WebhookId,
    "webhook name"
);
identifier!(
    /// A tag on a lead.
    Tag,
    "tag"
);
identifier!(
    /// A field of a lead (`first_name`, `city`, …).
    FieldName,
    "field name"
);
identifier!(
    /// The name of a tracked event (`purchase`, `click`, or a custom one).
    EventName,
    "event name"
);

/// A lead's database id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeadId(pub i64);

impl fmt::Display for LeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An enrollment's database id: one run of one lead through one funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EnrollmentId(pub i64);

impl fmt::Display for EnrollmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a run ended; analytics count these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Converted,
    NotConverted,
    Completed,
    Unsubscribed,
    Disqualified,
    /// Taken out through the admin API; never written in a funnel.
    Removed,
}

impl Outcome {
    /// The outcomes an `exit:` step may name.
    pub const ALL: [(&'static str, Outcome); 5] = [
        ("converted", Outcome::Converted),
        ("not_converted", Outcome::NotConverted),
        ("completed", Outcome::Completed),
        ("unsubscribed", Outcome::Unsubscribed),
        ("disqualified", Outcome::Disqualified),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Converted => "converted",
            Outcome::NotConverted => "not_converted",
            Outcome::Completed => "completed",
            Outcome::Unsubscribed => "unsubscribed",
            Outcome::Disqualified => "disqualified",
            Outcome::Removed => "removed",
        }
    }

    /// The outcome a stored name stands for, `removed` included.
    pub fn from_name(name: &str) -> Option<Outcome> {
        if name == "removed" {
            return Some(Outcome::Removed);
        }
        Outcome::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| *o)
    }
}

/// Where one run of a lead through a funnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Waiting for the double opt-in click.
    Unconfirmed,
    Active,
    Exited(Outcome),
}

impl RunStatus {
    /// Whether the run can still act (not exited).
    pub fn is_live(self) -> bool {
        !matches!(self, RunStatus::Exited(_))
    }
}

/// The kind of a tracked event: one the engine knows by name, or a custom one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    Purchase,
    Click,
    Open,
    Signup,
    /// The double opt-in link was followed.
    Confirmed,
    Unsubscribed,
    Bounced,
    Complained,
    /// Emitted by scoring when the score crosses a threshold.
    Mql,
    Sql,
    /// Takes the lead out of one funnel (`Event::funnel`); from the admin API.
    Removed,
    Custom(EventName),
}

impl EventKind {
    const NAMED: [(&'static str, EventKind); 11] = [
        ("purchase", EventKind::Purchase),
        ("click", EventKind::Click),
        ("open", EventKind::Open),
        ("signup", EventKind::Signup),
        ("confirmed", EventKind::Confirmed),
        ("unsubscribed", EventKind::Unsubscribed),
        ("bounced", EventKind::Bounced),
        ("complained", EventKind::Complained),
        ("mql", EventKind::Mql),
        ("sql", EventKind::Sql),
        ("removed", EventKind::Removed),
    ];

    /// A built-in kind by its name, else a custom event name.
    pub fn parse(text: &str) -> Result<EventKind, InvalidValue> {
        match EventKind::NAMED.iter().find(|(n, _)| *n == text) {
            Some((_, k)) => Ok(k.clone()),
            None => EventName::parse(text).map(EventKind::Custom),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Custom(n) => n.as_str(),
            known => EventKind::NAMED
                .iter()
                .find(|(_, k)| k == known)
                .map(|(n, _)| *n)
                .unwrap_or_default(),
        }
    }

    /// The name of the event a refund is (a payment provider's, or one a shop posts):
    /// reports take its money back off the purchase it refunds.
    pub const REFUND: &'static str = "refund";

    /// A refund: money given back on a purchase.
    pub fn is_refund(&self) -> bool {
        matches!(self, EventKind::Custom(name) if name.as_str() == Self::REFUND)
    }

    /// After this event no funnel mails the address again.
    pub fn stops_mail(&self) -> bool {
        matches!(
            self,
            EventKind::Unsubscribed | EventKind::Bounced | EventKind::Complained
        )
    }

    /// The consent this event gives the lead: a double opt-in click confirms, an unsubscribe
    /// withdraws.
    pub fn consent(&self) -> Option<Consent> {
        match self {
            EventKind::Confirmed => Some(Consent::Confirmed),
            EventKind::Unsubscribed => Some(Consent::Unsubscribed),
            _ => None,
        }
    }

    /// Recorded only by the engine itself: from the links in emails, delivery reports and the
    /// admin API. Other systems may not post them.
    pub fn is_internal(&self) -> bool {
        self.stops_mail() || matches!(self, EventKind::Confirmed | EventKind::Removed)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money, exact: whole millionths of a currency unit, so sums of orders are the
/// same in whatever order they are made (an amount with more decimals is rounded to six).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl Money {
    /// The largest amount taken: a thousand billion units.
    pub const MAX_UNITS: f64 = 1e12;

    /// `units` of a currency, if it is a finite amount from 0 to [`Money::MAX_UNITS`].
    pub fn of_units(units: f64) -> Option<Money> {
        (units.is_finite() && (0.0..=Money::MAX_UNITS).contains(&units))
            .then(|| Money((units * 1e6).round() as i64))
    }

    /// A decimal amount as providers write it (`"2.00"`, `"1490"`), exactly; `None` for
    /// anything else, a negative amount, more than six decimals or more than
    /// [`Money::MAX_UNITS`].
    pub fn parse(text: &str) -> Option<Money> {
        let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 13 || frac.len() > 6 || !digits(whole) || !digits(frac)
        {
            return None;
        }
        let units: i64 = whole.parse().ok()?;
        let micros: i64 = format!("{frac:0<6}").parse().ok()?;
        (units as f64 <= Money::MAX_UNITS).then_some(Money(units * 1_000_000 + micros))
    }

    /// `minor` units of a currency with `exponent` decimals (kopecks: 2; yen: 0).
    pub fn of_minor(minor: i64, exponent: u32) -> Option<Money> {
        let scale = 10i64.checked_pow(6u32.checked_sub(exponent)?)?;
        let m = minor.checked_mul(scale)?;
        (minor >= 0 && m as f64 <= Money::MAX_UNITS * 1e6).then_some(Money(m))
    }

    /// In units (for JSON and display).
    pub fn units(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// A tracked event with what it is about, as stored and as the engine matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub product: Option<String>,
    pub template: Option<String>,
    pub link: Option<String>,
    pub form: Option<String>,
    /// The funnel a `removed` event takes the lead out of; for `unsubscribed`, the one funnel
    /// the lead stopped (from its unsubscribe page), the others going on.
    pub funnel: Option<FunnelId>,
    /// A purchase's value, kept for revenue reports (the engine does not match on it).
    pub amount: Option<Money>,
    pub currency: Option<String>,
    /// The outbox row a tracked open or click (its link's token) or a bounce is about.
    pub message: Option<i64>,
}

impl Event {
    /// An event of this kind about nothing in particular.
    pub fn of(kind: EventKind) -> Event {
        Event {
            kind,
            product: None,
            template: None,
            link: None,
            form: None,
            funnel: None,
            amount: None,
            currency: None,
            message: None,
        }
    }
}

/// An e-mail address, trimmed and lower-cased so one person is one lead (providers treat the
/// local part case-insensitively in practice, and so do marketers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, InvalidValue> {
        let t = text.trim();
        let bad = || InvalidValue::Email(text.to_string());
        let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[],;:\"@\\".contains(c));
        let domain_ok = domain.len() <= 253
            && domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Email(format!(
                "{}@{}",
                local.to_lowercase(),
                domain.to_lowercase()
            )))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(v: Email) -> String {
        v.0
    }
}

/// A sender or recipient: an address with an optional display name (`Anna <anna@example.com>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub email: Email,
}

impl Mailbox {
    pub fn parse(text: &str) -> Result<Mailbox, InvalidValue> {
        let t = text.trim();
        match (t.rfind('<'), t.ends_with('>')) {
            (Some(open), true) => {
                let name = t[..open].trim().trim_matches('"').trim();
                let email = Email::parse(&t[open + 1..t.len() - 1])?;
                Ok(Mailbox {
                    name: (!name.is_empty()).then(|| name.to_string()),
                    email,
                })
            }
            _ => Ok(Mailbox {
                name: None,
                email: Email::parse(t)?,
            }),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} <{}>", self.email),
            None => self.email.fmt(f),
        }
    }
}

/// A person the engine knows by e-mail address.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    pub id: LeadId,
    pub email: Email,
    pub first_name: Option<String>,
    /// Every other field, as sent by forms or set by steps.
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub timezone: Option<chrono_tz::Tz>,
    pub consent: Consent,
    pub score: i64,
    /// When the score last changed: a funnel's decay counts from it.
    pub scored_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Whether a lead may be mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consent {
    /// Signed up; waiting for the double opt-in click where a funnel asks for one.
    Pending,
    Confirmed,
    Unsubscribed,
}

impl Consent {
    pub fn as_str(self) -> &'static str {
        match self {
            Consent::Pending => "pending",
            Consent::Confirmed => "confirmed",
            Consent::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(s: &str) -> Option<Consent> {
        [Consent::Pending, Consent::Confirmed, Consent::Unsubscribed]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// What a consent record proves: consent given (a form), confirmed (the double opt-in link, or
/// an import of leads confirmed elsewhere) or withdrawn (an unsubscribe, a complaint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentAct {
    Given,
    Confirmed,
    Withdrawn,
}

impl ConsentAct {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentAct::Given => "given",
            ConsentAct::Confirmed => "confirmed",
            ConsentAct::Withdrawn => "withdrawn",
        }
    }
}

/// The consent text a form showed: its file in the project and the SHA-256 (hex) of its
/// content then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownText {
    pub file: String,
    pub sha256: String,
}

/// Who acted, as the request showed them: the consent record's address and browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(StageId::parse("lead_magnet").is_ok());
        assert!(StageId::parse("webinar-2").is_ok());
        assert!(StageId::parse("Lead").is_err());
        assert!(StageId::parse("2nd").is_err());
        assert!(StageId::parse("").is_err());
        assert!(StageId::parse("a b").is_err());
    }

    #[test]
    fn amounts_as_providers_write_them() {
        assert_eq!(Money::parse("2.00"), Some(Money(2_000_000)));
        assert_eq!(Money::parse("14900"), Some(Money(14_900_000_000)));
        assert_eq!(Money::parse("0.000001"), Some(Money(1)));
        for bad in ["", "-1", "1e3", "1.0000001", "1,5", ".5", "99999999999999"] {
            assert_eq!(Money::parse(bad), None, "{bad}");
        }
        assert_eq!(Money::of_minor(1_490_000, 2), Some(Money(14_900_000_000)));
        assert_eq!(Money::of_minor(14900, 0), Money::parse("14900"));
        assert_eq!(Money::of_minor(1, 3), Some(Money(1_000)));
        assert_eq!(Money::of_minor(-1, 2), None);
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Anna@Example.COM ").unwrap().as_str(),
            "anna@example.com"
        );
        assert_eq!(
            Email::parse("Анна@Пример.рф").unwrap().as_str(),
            "анна@пример.рф"
        );
        for bad in [
            "",
            "anna",
            "anna@",
            "@example.com",
            "an na@example.com",
            "anna@example",
            "a..b@x.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn event_kinds_round_trip() {
        for (name, kind) in EventKind::NAMED {
            assert_eq!(EventKind::parse(name).unwrap(), kind);
            assert_eq!(kind.as_str(), name);
        }
        let custom = EventKind::parse("webinar_attended").unwrap();
        assert_eq!(custom.as_str(), "webinar_attended");
        assert!(!custom.is_internal());
        assert!(EventKind::parse("Bad Name").is_err());
        assert!(EventKind::Bounced.stops_mail() && EventKind::Removed.is_internal());
    }

    #[test]
    fn mailboxes() {
        let m = Mailbox::parse("Анна Петрова <anna@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Анна Петрова"));
        assert_eq!(m.email.as_str(), "anna@example.com");
        assert_eq!(Mailbox::parse("anna@example.com").unwrap().name, None);
        assert!(Mailbox::parse("Anna <anna>").is_err());
    }
}

/// What a project-wide webhook may subscribe to (`events = [...]` under `[webhooks.NAME]`), so
/// a CRM mirrors each lead's progress without a step in any funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// A new address became a lead (a signup, an event naming it).
    LeadCreated,
    /// A run entered a stage.
    StageEntered,
    /// A run left its funnel (with its outcome).
    FunnelExited,
    Purchase,
    Unsubscribed,
    /// The lead crossed a funnel's `mql` score.
    Mql,
    /// The lead crossed a funnel's `sql` score.
    Sql,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 7] = [
        Lifecycle::LeadCreated,
        Lifecycle::StageEntered,
        Lifecycle::FunnelExited,
        Lifecycle::Purchase,
        Lifecycle::Unsubscribed,
        Lifecycle::Mql,
        Lifecycle::Sql,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::LeadCreated => "lead.created",
            Lifecycle::StageEntered => "stage.entered",
            Lifecycle::FunnelExited => "funnel.exited",
            Lifecycle::Purchase => "purchase",
            Lifecycle::Unsubscribed => "unsubscribed",
            Lifecycle::Mql => "mql",
            Lifecycle::Sql => "sql",
        }
    }

    pub fn parse(text: &str) -> Option<Lifecycle> {
        Lifecycle::ALL.into_iter().find(|l| l.as_str() == text)
    }
}
