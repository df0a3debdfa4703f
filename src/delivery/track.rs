//! Click and open tracking: every http(s) link of an email becomes a signed redirect
//! (`/r/<token>`) that names the message, the link and its target, and an open pixel
//! (`/o/<token>`) names the message. The target is inside the signed token, so only addresses
//! that were in a message are ever redirect targets, and a tampered or foreign token is refused.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::tokens::{Click, open_token};

/// How one email's links are treated.
pub struct Tracker<'a> {
    /// Public address of the server, without a trailing slash.
    pub base: &'a str,
    pub secret: &'a [u8],
    pub message: i64,
    /// The offer's deadline (Unix seconds) when the email is sent from a stage with one.
    pub expires: Option<i64>,
    /// Links become tracked redirects (`track_clicks`).
    pub track: bool,
    /// The hosts links may lead to (lowercase): a link to any other host — one built from a
    /// lead's data — is taken out of the email, so the seller's domain never sends readers
    /// where a stranger's form said. `None`: any host.
    pub hosts: Option<&'a std::collections::HashSet<String>>,
}

/// The outcome of [`Tracker::links`]: the new HTML, each kept address with what replaces it
/// (its tracked redirect, or itself), and the addresses taken out.
pub struct Links {
    pub html: String,
    pub tracked: HashMap<String, String>,
    pub removed: std::collections::HashSet<String>,
}

/// The lowercase host of an http(s) address.
pub fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .and_then(|u| {
            u.host_str()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        })
}

static ANCHOR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)<a\s[^>]*>").expect("regex"));
static TEXT_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"https?://[^\s<>"'\]\)]+"#).expect("regex"));

/// One attribute of a tag: its name, its value as written (quotes removed, not decoded), and
/// where the whole attribute, leading space included, sits in the tag.
struct Attr<'t> {
    name: &'t str,
    value: &'t str,
    span: std::ops::Range<usize>,
}

/// The attributes of an opening tag such as `<a href="x" data-link=buy>`.
fn attributes(tag: &str) -> Vec<Attr<'_>> {
    let b = tag.as_bytes();
    let end = tag.len() - usize::from(tag.ends_with('>'));
    // Past the tag name.
    let mut i = b
        .iter()
        .position(|c| c.is_ascii_whitespace())
        .unwrap_or(end);
    let mut out = Vec::new();
    while i < end {
        let start = i;
        while i < end && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let name_at = i;
        while i < end && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'/' | b'>') {
            i += 1;
        }
        if i == name_at {
            i += 1;
            continue;
        }
        let name = &tag[name_at..i];
        let mut j = i;
        while j < end && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let mut value = "";
        if j < end && b[j] == b'=' {
            j += 1;
            while j < end && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < end && (b[j] == b'"' || b[j] == b'\'') {
                let q = b[j];
                let close = b[j + 1..end]
                    .iter()
                    .position(|&c| c == q)
                    .map_or(end, |k| j + 1 + k);
                value = &tag[j + 1..close];
                i = (close + 1).min(end);
            } else {
                let v = j;
                while j < end && !b[j].is_ascii_whitespace() {
                    j += 1;
                }
                value = &tag[v..j];
                i = j;
            }
        }
        out.push(Attr {
            name,
            value,
            span: start..i,
        });
    }
    out
}

impl Tracker<'_> {
    /// Rewrites every http(s) link of `html` that does not already point at this server into a
    /// tracked redirect; `data-link="name"` names a link, `data-track="off"` leaves it alone,
    /// `data-expires="never"` keeps it working after the offer's deadline. A link to a host
    /// not allowed loses its `href` (its text stays).
    pub fn links(&self, html: &str) -> Links {
        let mut map = HashMap::new();
        let mut removed = std::collections::HashSet::new();
        let mut out = String::with_capacity(html.len() + 512);
        let mut last = 0;
        for m in ANCHOR.find_iter(html) {
            out.push_str(&html[last..m.start()]);
            last = m.end();
            let tag = m.as_str();
            let attrs = attributes(tag);
            let mut href = None;
            let (mut name, mut track, mut expires) = (None, true, true);
            for a in &attrs {
                match a.name.to_ascii_lowercase().as_str() {
                    "href" => href = Some(a),
                    "data-link" => name = Some(unescape(a.value)),
                    "data-track" => track = !a.value.eq_ignore_ascii_case("off"),
                    "data-expires" => expires = !a.value.eq_ignore_ascii_case("never"),
                    _ => {}
                }
            }
            let url = href.map(|h| unescape(h.value));
            let web = url.as_ref().filter(|url| {
                let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
                (lower.starts_with("http://") || lower.starts_with("https://"))
                    && !url.starts_with(self.base)
            });
            let refused = web.filter(|url| !self.allowed(url));
            if let Some(url) = refused {
                tracing::warn!(message = self.message, host = ?host_of(url), "link to a host not in link_hosts taken out");
                removed.insert(url.clone());
            }
            let tracked = web.filter(|_| refused.is_none() && self.track && track);
            let replacement = tracked.map(|url| {
                let click = Click {
                    message: self.message,
                    link: name.clone().unwrap_or_else(|| default_name(url)),
                    url: url.clone(),
                    expires: self.expires.filter(|_| expires),
                };
                let to = format!("{}/r/{}", self.base, click.token(self.secret));
                map.insert(url.clone(), to.clone());
                to
            });
            // The tag again, without the tracking attributes and with the new target (or none).
            let mut at = 0;
            for a in &attrs {
                let lower = a.name.to_ascii_lowercase();
                let ours = ["data-link", "data-track", "data-expires"].contains(&lower.as_str());
                let swap = lower == "href" && (replacement.is_some() || refused.is_some());
                if ours || swap {
                    out.push_str(&tag[at..a.span.start]);
                    at = a.span.end;
                }
                if swap && let Some(to) = &replacement {
                    out.push_str(" href=\"");
                    out.push_str(&escape_attr(to));
                    out.push('"');
                }
            }
            out.push_str(&tag[at..]);
        }
        out.push_str(&html[last..]);
        Links {
            html: out,
            tracked: map,
            removed,
        }
    }

    /// Whether a link may lead to this address.
    fn allowed(&self, url: &str) -> bool {
        match self.hosts {
            None => true,
            Some(hosts) => host_of(url).is_some_and(|h| hosts.contains(&h)),
        }
    }

    /// The text part with each address that was tracked in the HTML part replaced by its
    /// tracked one, and every address to a host not allowed taken out.
    pub fn text(&self, text: &str, links: &Links) -> String {
        if links.tracked.is_empty() && links.removed.is_empty() && self.hosts.is_none() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len() + 512);
        let mut last = 0;
        for m in TEXT_URL.find_iter(text) {
            let url = m.as_str().trim_end_matches(['.', ',', ';', ':', '!', '?']);
            let to = match links.tracked.get(url) {
                Some(t) => Some(t.as_str()),
                None if links.removed.contains(url)
                    || (!url.starts_with(self.base) && !self.allowed(url)) =>
                {
                    Some("[link removed]")
                }
                None => None,
            };
            if let Some(t) = to {
                out.push_str(&text[last..m.start()]);
                out.push_str(t);
                last = m.start() + url.len();
            }
        }
        out.push_str(&text[last..]);
        out
    }

    /// The HTML with the open pixel just before `</body>` (or at the end).
    pub fn pixel(&self, html: &str) -> String {
        let img = format!(
            "<img src=\"{}/o/{}.gif\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
            self.base,
            open_token(self.secret, self.message)
        );
        let at = html
            .rfind("</body>")
            .or_else(|| html.rfind("</BODY>"))
            .unwrap_or(html.len());
        format!("{}{img}{}", &html[..at], &html[at..])
    }
}

/// `example.com/webinar` for `https://www.example.com/webinar/?utm=x`.
fn default_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let rest = rest.strip_prefix("www.").unwrap_or(rest);
    rest.trim_end_matches('/').replace('\n', "").to_string()
}

/// An attribute value with HTML character references decoded.
fn unescape(v: &str) -> String {
    if !v.contains('&') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                    .and_then(|n| n.ok())
                    .and_then(char::from_u32),
            }?;
            Some((c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_attr(v: &str) -> String {
    v.replace('&', "&amp;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::verify_open;

    fn tracker(expires: Option<i64>) -> Tracker<'static> {
        Tracker {
            base: "https://mail.example.com",
            secret: b"key",
            message: 7,
            expires,
            track: true,
            hosts: None,
        }
    }

    #[test]
    fn links_become_signed_redirects_to_their_own_target() {
        let html = r#"<p><a href="https://shop.example.com/buy?a=1&amp;b=2" data-link="buy" class="btn">Buy</a>
<a href='https://www.example.com/blog/' data-expires="never">Blog</a>
<a href="mailto:hi@example.com">Mail</a> <a href="https://mail.example.com/u/1.x">Unsubscribe</a>
<a data-track="off" href="https://example.com/raw">Raw</a></p>"#;
        let t = tracker(Some(1_900_000_000));
        let Links {
            html: out,
            tracked: map,
            ..
        } = t.links(html);
        assert_eq!(map.len(), 2, "{out}");
        assert!(!out.contains("data-link") && !out.contains("data-track"));
        assert!(out.contains(r#"class="btn""#));
        assert!(out.contains(r#"href="mailto:hi@example.com""#));
        assert!(out.contains(r#"href="https://mail.example.com/u/1.x""#));
        assert!(out.contains(r#"href="https://example.com/raw""#));
        let buy = &map["https://shop.example.com/buy?a=1&b=2"];
        let token = buy.strip_prefix("https://mail.example.com/r/").unwrap();
        let click = Click::verify(b"key", token).unwrap();
        assert_eq!(
            click,
            Click {
                message: 7,
                link: "buy".into(),
                url: "https://shop.example.com/buy?a=1&b=2".into(),
                expires: Some(1_900_000_000),
            }
        );
        let blog = &map["https://www.example.com/blog/"];
        let click = Click::verify(b"key", blog.rsplit('/').next().unwrap()).unwrap();
        assert_eq!(
            (click.link.as_str(), click.expires),
            ("example.com/blog", None)
        );
        // Another key, or one changed byte, and the token is refused.
        assert_eq!(Click::verify(b"other", token), None);
        let mut forged = token.to_string();
        forged.replace_range(3..4, if &token[3..4] == "A" { "B" } else { "A" });
        assert_eq!(Click::verify(b"key", &forged), None);
    }

    #[test]
    fn attributes_in_any_spelling() {
        let t = tracker(None);
        let html = "<A HREF = https://example.com/x?a=1&amp;b=2 target=_blank>x</A><abbr title=\"y\">y</abbr><a name=top>";
        let Links {
            html: out,
            tracked: map,
            ..
        } = t.links(html);
        let tracked = &map["https://example.com/x?a=1&b=2"];
        assert_eq!(
            out,
            format!(
                "<A href=\"{tracked}\" target=_blank>x</A><abbr title=\"y\">y</abbr><a name=top>"
            )
        );
    }

    #[test]
    fn text_links_follow_the_html_ones_and_the_pixel_goes_before_body_end() {
        let t = tracker(None);
        let links = t.links(r#"<body><a href="https://example.com/a">A</a></body>"#);
        let text = t.text(
            "Go: https://example.com/a. Or https://example.com/ab (other).",
            &links,
        );
        let html = links.html;
        assert!(text.starts_with("Go: https://mail.example.com/r/"));
        assert!(text.contains(". Or https://example.com/ab (other)."));
        let with_pixel = t.pixel(&html);
        assert!(with_pixel.ends_with(".gif\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\"></body>"));
        let token = with_pixel
            .split("/o/")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(verify_open(b"key", token), Some(7));
        assert_eq!(verify_open(b"key", "8.AAAA"), None);
    }

    #[test]
    fn links_to_hosts_not_allowed_are_taken_out() {
        let hosts: std::collections::HashSet<String> =
            ["shop.example.com".to_string()].into_iter().collect();
        let t = Tracker {
            hosts: Some(&hosts),
            ..tracker(None)
        };
        let html = r#"<a href="https://shop.example.com/cart">Cart</a> <a href="https://evil.example.net/x" class="b">Evil</a> <a href="https://shop.example.com@evil.example.net/">Tricky</a> <a data-track="off" href="https://evil.example.net/y">Raw</a> <a href="https://mail.example.com/u/1.x">Unsubscribe</a>"#;
        let links = t.links(html);
        assert_eq!(links.tracked.len(), 1);
        assert!(links.tracked.contains_key("https://shop.example.com/cart"));
        assert!(!links.html.contains("evil.example.net"), "{}", links.html);
        assert!(
            links.html.contains(r#"<a class="b">Evil</a>"#),
            "{}",
            links.html
        );
        assert!(links.html.contains("https://mail.example.com/u/1.x"));
        let text = t.text(
            "Cart: https://shop.example.com/cart Evil: https://evil.example.net/x Other: https://other.example.org/z",
            &links,
        );
        assert!(
            text.starts_with("Cart: https://mail.example.com/r/"),
            "{text}"
        );
        assert!(
            text.contains("Evil: [link removed] Other: [link removed]"),
            "{text}"
        );
        assert_eq!(
            host_of("https://Shop.Example.com.:8443/a"),
            Some("shop.example.com".into())
        );
        assert_eq!(host_of("javascript:alert(1)"), None);
    }
}
