//! An outbox row becomes an email: the template rendered for its lead (HTML escaped by tera,
//! subject and names encoded by lettre), a stable Message-ID, and one-click unsubscribe headers.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use lettre::message::header::{self, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use super::track;
use crate::domain::Lead;
use crate::funnel::Funnel;
use crate::store::Outgoing;
use crate::templates::TemplateSet;

/// Why an email could not be made: the message fails, nothing is sent.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("funnel \"{0}\" is not loaded")]
    NoFunnel(String),
    #[error("the funnel has no sender: set `from` in the funnel or in autofunnel.toml")]
    NoSender,
    #[error("{0}")]
    Render(String),
    #[error("bad address: {0}")]
    Address(String),
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// What a composed email needs besides the row, the lead and the funnel.
pub struct Links<'a> {
    /// Public address of the server (links in emails).
    pub base_url: &'a str,
    /// Key that signs unsubscribe, confirmation and tracking tokens.
    pub secret: &'a [u8],
    /// Links become tracked redirects (`track_clicks`).
    pub clicks: bool,
    /// An open pixel is added (`track_opens`).
    pub opens: bool,
    /// Hosts links may lead to; links to others are taken out (`link_hosts`). `None`: any.
    pub hosts: Option<&'a std::collections::HashSet<String>>,
}

#[derive(Clone)]
struct ListUnsubscribe(String);

impl header::Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

#[derive(Clone)]
struct ListUnsubscribePost;

impl header::Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}

/// Text fit for one header line: control characters (line breaks included) become spaces,
/// runs of spaces one, and it is at most 998 characters long.
fn one_line(text: &str) -> String {
    if is_one_line(text) {
        return text.to_string();
    }
    made_one_line(text)
}

/// [`one_line`] the long way, for text that needs changing.
fn made_one_line(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    spaced
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(998)
        .collect()
}

/// Whether [`one_line`] leaves `text` as it is: at most 998 bytes (so characters), no
/// control character or line separator, no space but single ones between words.
fn is_one_line(text: &str) -> bool {
    if text.len() > 998 {
        return false;
    }
    let mut after_space = true;
    for c in text.chars() {
        if c == ' ' {
            if after_space {
                return false;
            }
            after_space = true;
        } else if c.is_whitespace() || c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            return false;
        } else {
            after_space = false;
        }
    }
    !after_space || text.is_empty()
}

/// A display name for an address header: one line, at most 100 characters; `None` when
/// nothing is left.
fn display_name(name: &str) -> Option<String> {
    let n: String = one_line(name).chars().take(100).collect();
    (!n.is_empty()).then_some(n)
}

/// Builds the email of an outbox row for its lead.
pub fn compose(
    row: &Outgoing,
    f: &Funnel,
    templates: &TemplateSet,
    lead: &Lead,
    deadline: Option<DateTime<Utc>>,
    links: &Links<'_>,
    now: DateTime<Utc>,
) -> Result<lettre::Message, ComposeError> {
    let from = f.from.as_ref().ok_or(ComposeError::NoSender)?;
    let template = row.template.as_deref().unwrap_or_default();
    let stage = row.stage.as_deref();
    let cx = crate::context::context(f, stage, lead, deadline, links.base_url, links.secret, now);
    let mut r = templates
        .render(template, &cx)
        .map_err(|d| ComposeError::Render(d.to_string()))?;
    let tracker = track::Tracker {
        base: links.base_url.trim_end_matches('/'),
        secret: links.secret,
        message: row.id,
        expires: deadline.map(|d| d.timestamp()),
        track: links.clicks,
        hosts: links.hosts,
    };
    if links.clicks || links.hosts.is_some() {
        let found = tracker.links(&r.html);
        r.text = tracker.text(&r.text, &found);
        r.html = found.html;
    }
    if links.opens {
        r.html = tracker.pixel(&r.html);
    }
    let addr = |e: &str| {
        e.parse::<lettre::Address>()
            .map_err(|err| ComposeError::Address(format!("{e}: {err}")))
    };
    let (from_addr, to_addr) = (addr(from.email.as_str())?, addr(&row.recipient)?);
    // Given, so lettre need not parse it back out of the headers it just wrote.
    let envelope = lettre::address::Envelope::new(Some(from_addr.clone()), vec![to_addr.clone()])
        .map_err(|e| ComposeError::Build(e.to_string()))?;
    let sender = Mailbox::new(from.name.as_deref().and_then(display_name), from_addr);
    let to = Mailbox::new(lead.first_name.as_deref().and_then(display_name), to_addr);
    let domain = from
        .email
        .as_str()
        .rsplit('@')
        .next()
        .unwrap_or("localhost");
    let id = crate::engine::fnv1a(row.send_key.as_bytes());
    let base = links.base_url.trim_end_matches('/');
    let unsubscribe = format!(
        "<{}>, <mailto:{}?subject=unsubscribe>",
        crate::context::unsubscribe_url(base, links.secret, lead, f),
        from.email.as_str()
    );
    lettre::Message::builder()
        .envelope(envelope)
        .from(sender)
        .to(to)
        .subject(one_line(&r.subject))
        .message_id(Some(format!("<{id:016x}.{}@{domain}>", row.id)))
        .date(SystemTime::from(now))
        .header(ListUnsubscribe(unsubscribe))
        .header(ListUnsubscribePost)
        .multipart(MultiPart::alternative_plain_html(r.text, r.html))
        .map_err(|e| ComposeError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// What the quick check lets through is what the long way would make of it.
        #[test]
        fn text_left_as_is_is_already_one_line(text in "[a-z \\t\\n\u{a0}\u{2028}\u{7f}é]{0,12}") {
            if is_one_line(&text) {
                proptest::prop_assert_eq!(made_one_line(&text), text.clone());
            }
            proptest::prop_assert!(is_one_line(&one_line(&text)));
        }
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(one_line(&"a".repeat(2_000)).len(), 998);
        assert!(is_one_line("Ваш подарок: книга"));
        assert!(!is_one_line(" leading"));
    }
}
