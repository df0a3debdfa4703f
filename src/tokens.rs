//! Signed tokens in the links of emails: tracked clicks (`/r/`), the open pixel (`/o/`), and
//! the unsubscribe (`/u/`) and double opt-in (`/c/`) pages of a lead. Each is HMAC-SHA256
//! over its purpose and data, truncated to 16 bytes; a forged, altered or foreign token does
//! not verify. Also the constant-time comparison bearer tokens use.

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use crate::domain::LeadId;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 keyed with `secret`, its key blocks hashed once per thread and secret: each
/// signature then hashes its own message only (two SHA-256 blocks for a short one, not four;
/// an email signs several links).
fn keyed(secret: &[u8]) -> HmacSha256 {
    thread_local! {
        static KEYED: std::cell::RefCell<Option<(Vec<u8>, HmacSha256)>> =
            const { std::cell::RefCell::new(None) };
    }
    KEYED.with(|k| {
        let mut k = k.borrow_mut();
        if let Some((s, m)) = k.as_ref()
            && s == secret
        {
            return m.clone();
        }
        let m = HmacSha256::new_from_slice(secret).expect("any key length");
        *k = Some((secret.to_vec(), m.clone()));
        m
    })
}

/// The first 16 bytes of HMAC-SHA256 over `"{purpose}:{data}"`.
pub fn sign(secret: &[u8], purpose: &str, data: &[u8]) -> [u8; 16] {
    let mut m = keyed(secret);
    m.update(purpose.as_bytes());
    m.update(b":");
    m.update(data);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Whether `sig` is the signature of `data`, compared in constant time.
pub fn verify(secret: &[u8], purpose: &str, data: &[u8], sig: &str) -> bool {
    let Ok(sig) = B64.decode(sig) else {
        return false;
    };
    constant_time_eq(&sig, &sign(secret, purpose, data))
}

/// Whether two byte strings are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tracked link as its token carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The outbox row of the email the link was in.
    pub message: i64,
    /// The link's name: its `data-link` attribute, else its host and path.
    pub link: String,
    /// Where it leads.
    pub url: String,
    /// Unix seconds after which the link leads to the funnel's expired-offer page.
    pub expires: Option<i64>,
}

impl Click {
    /// The signed token of this link.
    pub fn token(&self, secret: &[u8]) -> String {
        let expires = self.expires.map(|e| e.to_string()).unwrap_or_default();
        let payload = format!("{}\n{expires}\n{}\n{}", self.message, self.link, self.url);
        let sig = sign(secret, "r", payload.as_bytes());
        format!("{}.{}", B64.encode(payload), B64.encode(sig))
    }

    /// The link a token names, if its signature holds.
    pub fn verify(secret: &[u8], token: &str) -> Option<Click> {
        let (payload, sig) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        if !verify(secret, "r", &payload, sig) {
            return None;
        }
        let payload = String::from_utf8(payload).ok()?;
        let mut parts = payload.splitn(4, '\n');
        let message = parts.next()?.parse().ok()?;
        let expires = match parts.next()? {
            "" => None,
            e => Some(e.parse().ok()?),
        };
        Some(Click {
            message,
            expires,
            link: parts.next()?.to_string(),
            url: parts.next()?.to_string(),
        })
    }
}

/// The open pixel's token for a message.
pub fn open_token(secret: &[u8], message: i64) -> String {
    let sig = sign(secret, "o", message.to_string().as_bytes());
    format!("{message}.{}", B64.encode(sig))
}

/// The message an open token names, if its signature holds.
pub fn verify_open(secret: &[u8], token: &str) -> Option<i64> {
    let token = token.strip_suffix(".gif").unwrap_or(token);
    let (message, sig) = token.split_once('.')?;
    verify(secret, "o", message.as_bytes(), sig).then(|| message.parse().ok())?
}

/// What a lead's link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadLink {
    /// `/u/{token}`: the unsubscribe page.
    Unsubscribe,
    /// `/c/{token}`: the double opt-in confirmation.
    Confirm,
}

impl LeadLink {
    fn purpose(self) -> &'static str {
        match self {
            LeadLink::Unsubscribe => "u",
            LeadLink::Confirm => "c",
        }
    }
}

/// A signed token naming a lead for one purpose.
pub fn lead_token(secret: &[u8], purpose: LeadLink, lead: LeadId) -> String {
    let sig = sign(secret, purpose.purpose(), lead.0.to_string().as_bytes());
    format!("{}.{}", lead.0, B64.encode(sig))
}

/// The lead a token names, if its signature holds for this purpose.
pub fn verify_lead_token(secret: &[u8], purpose: LeadLink, token: &str) -> Option<LeadId> {
    let (lead, sig) = token.split_once('.')?;
    let id: i64 = lead.parse().ok()?;
    verify(secret, purpose.purpose(), lead.as_bytes(), sig).then_some(LeadId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_tokens_verify_only_unaltered_and_for_their_purpose() {
        let t = lead_token(b"secret", LeadLink::Unsubscribe, LeadId(42));
        let u = LeadLink::Unsubscribe;
        assert_eq!(verify_lead_token(b"secret", u, &t), Some(LeadId(42)));
        assert_eq!(verify_lead_token(b"other", u, &t), None);
        assert_eq!(verify_lead_token(b"secret", LeadLink::Confirm, &t), None);
        let forged = t.replacen("42.", "43.", 1);
        assert_eq!(verify_lead_token(b"secret", u, &forged), None);
        assert_eq!(verify_lead_token(b"secret", u, "garbage"), None);
    }

    #[test]
    fn a_key_kept_signs_as_a_fresh_one_whatever_secret_came_before() {
        let fresh = |secret: &[u8], data: &[u8]| {
            let mut m = HmacSha256::new_from_slice(secret).unwrap();
            m.update(b"r:");
            m.update(data);
            m.finalize().into_bytes()[..16].to_vec()
        };
        let cases: [(&[u8], &[u8]); 4] = [
            (b"one secret", b"a"),
            (b"another secret", b"b"),
            (b"one secret", b"c"),
            (b"one secret", b"c"),
        ];
        for (secret, data) in cases {
            assert_eq!(sign(secret, "r", data).to_vec(), fresh(secret, data));
        }
        assert_ne!(
            sign(b"one secret", "r", b"a"),
            sign(b"another secret", "r", b"a")
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"token-1234", b"token-1234"));
        assert!(!constant_time_eq(b"token-1234", b"token-1235"));
        assert!(!constant_time_eq(b"token", b"token-1234"));
    }
}
