//! The dashboard's session: a cookie the server signs with the project secret (no session
//! table), the token each of its forms carries against cross-site posts, and the one-time
//! value that ties the login form to the browser that fetched it. Pure: the caller gives the
//! time and the randomness.

use hmac::{KeyInit, Mac};

use crate::tokens::constant_time_eq;

/// The session cookie's name.
pub const COOKIE: &str = "af_session";
/// The login form's cookie (double submit: the form's hidden value must equal it).
pub const LOGIN_COOKIE: &str = "af_login";
/// How long a session lasts, in seconds (12 hours): a marketer's working day.
pub const LIFETIME_SECS: i64 = 12 * 3_600;

fn mac(secret: &[u8], purpose: &str, text: &str) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    m.update(purpose.as_bytes());
    m.update(b"|");
    m.update(text.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// A new session's cookie value, valid until `now + LIFETIME_SECS`: `expiry.nonce.signature`.
pub fn issue(secret: &[u8], nonce: &[u8; 16], now: i64) -> String {
    let payload = format!("{}.{}", now + LIFETIME_SECS, hex::encode(nonce));
    let sig = mac(secret, "dashboard-session", &payload);
    format!("{payload}.{sig}")
}

/// Whether a cookie value is a session this server signed that has not expired.
pub fn valid(secret: &[u8], value: &str, now: i64) -> bool {
    let Some((payload, sig)) = value.rsplit_once('.') else {
        return false;
    };
    let expected = mac(secret, "dashboard-session", payload);
    if !constant_time_eq(sig.as_bytes(), expected.as_bytes()) {
        return false;
    }
    payload
        .split_once('.')
        .and_then(|(expiry, _)| expiry.parse::<i64>().ok())
        .is_some_and(|expiry| now < expiry)
}

/// What is kept of a signed-out session: its SHA-256 in hex (not the cookie itself).
pub fn id(session: &str) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in sha2::Sha256::digest(session.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The token the session's forms carry: bound to the session, so a page of another site
/// cannot know it.
pub fn csrf(secret: &[u8], session: &str) -> String {
    mac(secret, "dashboard-csrf", session)
}

/// Whether a form's token is the session's.
pub fn csrf_ok(secret: &[u8], session: &str, given: &str) -> bool {
    constant_time_eq(csrf(secret, session).as_bytes(), given.as_bytes())
}

/// A cookie header value: `HttpOnly`, `SameSite=Strict`, for the dashboard's paths only, and
/// `Secure` when the server is reached over https. `max_age` 0 removes it.
pub fn cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The value of cookie `name` in a `Cookie` header.
pub fn read<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_signed_expires_and_binds_its_forms() {
        let s = issue(b"k", &[7; 16], 1_000);
        assert!(valid(b"k", &s, 1_000));
        assert!(valid(b"k", &s, 1_000 + LIFETIME_SECS - 1));
        assert!(!valid(b"k", &s, 1_000 + LIFETIME_SECS), "expired");
        assert!(!valid(b"other", &s, 1_000), "another secret");
        let forged = s.replacen(&(1_000 + LIFETIME_SECS).to_string(), "9999999999", 1);
        assert!(!valid(b"k", &forged, 1_000), "a longer life is not signed");
        assert!(!valid(b"k", "", 1_000) && !valid(b"k", "a.b", 1_000));
        let t = csrf(b"k", &s);
        assert!(csrf_ok(b"k", &s, &t));
        let other = issue(b"k", &[8; 16], 1_000);
        assert!(!csrf_ok(b"k", &other, &t), "another session's token");
        assert_eq!(read("a=1; af_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(read("af_session_old=1", COOKIE), None);
        assert!(cookie(COOKIE, "v", 60, true).ends_with("HttpOnly; SameSite=Strict; Secure"));
    }
}
