//! `POST /f/{form}`: landing-page signups. Form-encoded or JSON; the email validated; name,
//! time zone and other fields stored on the lead (the same email updates it); UTM parameters,
//! referrer and landing page recorded as a touch; a filled honeypot field answered as a
//! success and dropped; every funnel whose `entry` names the form started (double opt-in sends
//! its confirmation first). HTML forms get a 303 to the form's thank-you page, `fetch()`
//! callers JSON; browsers on the form's `cors` origins may read the answer.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiPath, Page};
use super::input::{self, max};
use crate::domain::{Email, FunnelId, Requester, ShownText};
use crate::store::{LeadInput, NewSignup, NewTouch};

/// Addresses the limiter remembers at most; past that, forgotten ones are pruned and, if that
/// is not enough (a flood from many addresses), the table starts afresh.
const MAX_TRACKED: usize = 100_000;
/// The table is pruned of addresses whose quota has refilled every this many signups.
const PRUNE_EVERY: u64 = 4_096;

/// Signups per visitor, per minute (`signups_per_ip_per_minute`). A visitor is an IPv4
/// address or an IPv6 /64; behind `trusted_proxies` it is the address those proxies name.
pub struct Limiter {
    quota: governor::Quota,
    table: std::sync::RwLock<governor::DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<ipnet::IpNet>,
    checked: std::sync::atomic::AtomicU64,
}

/// A limiter allowing `per_minute` signups per visitor (bursts up to that many); `None` for 0.
pub fn limiter(per_minute: u32) -> Option<Arc<Limiter>> {
    limiter_behind(per_minute, Vec::new())
}

/// [`limiter`] for a server behind the `trusted` reverse proxies.
pub fn limiter_behind(per_minute: u32, trusted: Vec<ipnet::IpNet>) -> Option<Arc<Limiter>> {
    NonZeroU32::new(per_minute).map(|n| {
        let quota = governor::Quota::per_minute(n);
        Arc::new(Limiter {
            quota,
            table: std::sync::RwLock::new(governor::RateLimiter::keyed(quota)),
            trusted,
            checked: std::sync::atomic::AtomicU64::new(0),
        })
    })
}

impl Limiter {
    /// Whether the visitor behind this request may sign up now; counts the signup if so.
    pub fn allow(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        let n = self
            .checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 || self.tracked() > MAX_TRACKED {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            table.retain_recent();
            if table.len() > MAX_TRACKED {
                tracing::warn!(
                    "signups from over {MAX_TRACKED} addresses within a minute; limits start afresh"
                );
                *table = governor::RateLimiter::keyed(self.quota);
            }
            table.shrink_to_fit();
        }
        let visitor = bucket(visitor(peer, headers, &self.trusted));
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.check_key(&visitor).is_ok()
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.table.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Who sent a request, for a consent record: the visitor's address and their browser's
/// `User-Agent` (one printable line, 512 characters at most).
pub fn requester(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Requester {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(512)
                .collect::<String>()
        })
        .filter(|v| !v.trim().is_empty());
    Requester {
        ip: Some(visitor(peer, headers, trusted).to_string()),
        user_agent,
    }
}

/// The visitor's address: the peer's, or, when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` (else `Forwarded: for=`) that is not a trusted proxy itself.
pub fn visitor(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        for part in v.to_str().unwrap_or_default().split(',') {
            if let Ok(ip) = part.trim().parse::<IpAddr>() {
                chain.push(canonical(ip));
            }
        }
    }
    if chain.is_empty() {
        for v in headers.get_all(header::FORWARDED) {
            for element in v.to_str().unwrap_or_default().split(',') {
                for pair in element.split(';') {
                    let Some((k, val)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    if !k.eq_ignore_ascii_case("for") {
                        continue;
                    }
                    let val = val.trim_matches('"');
                    // `for="[2001:db8::1]:4711"` or `for=192.0.2.60:4711` or a bare address.
                    let host = match val.strip_prefix('[') {
                        Some(rest) => rest.split(']').next().unwrap_or_default(),
                        None => val
                            .split(':')
                            .next()
                            .filter(|_| val.matches(':').count() <= 1)
                            .unwrap_or(val),
                    };
                    if let Ok(ip) = host.parse::<IpAddr>() {
                        chain.push(canonical(ip));
                    }
                }
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// An IPv4-mapped IPv6 address as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a visitor is counted under: an IPv4 address, or the /64 of an IPv6 one.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(seg))
        }
        v4 => v4,
    }
}

/// The name of the hidden field people never fill and bots do.
pub const HONEYPOT: &str = "website";
/// Fields with a meaning of their own; every other one is stored on the lead.
const RESERVED: [&str; 12] = [
    "email",
    "first_name",
    "name",
    "timezone",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer",
    "landing_url",
    HONEYPOT,
];
const MAX_FIELDS: usize = 50;

/// The funnels started by `form`, with its thank-you page and allowed origins.
struct Target {
    funnels: Vec<FunnelId>,
    thank_you: Option<String>,
    cors: Vec<String>,
    /// The consent text the form shows.
    consent: Option<ShownText>,
}

fn target(state: &AppState, form: &str) -> Option<Target> {
    let funnels = state.runtime.funnels();
    let mut t = Target {
        funnels: Vec::new(),
        thank_you: None,
        cors: Vec::new(),
        consent: None,
    };
    for (id, r) in funnels.iter() {
        for f in r.funnel.entry.forms().filter(|f| f.id.as_str() == form) {
            t.funnels.push(id.clone());
            t.thank_you = t.thank_you.take().or_else(|| f.thank_you.clone());
            t.cors.extend(f.cors.iter().cloned());
            if let Some(c) = &f.consent
                && let Some(sha256) = &c.sha256
            {
                t.consent = Some(ShownText {
                    file: c.path.clone(),
                    sha256: sha256.clone(),
                });
            }
        }
    }
    (!t.funnels.is_empty()).then_some(t)
}

/// The allowed origin of this request, to echo in `Access-Control-Allow-Origin`.
fn allowed_origin(headers: &HeaderMap, t: &Target) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    t.cors.iter().any(|c| c == o).then(|| origin.clone())
}

fn with_cors(mut r: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// `OPTIONS /f/{form}`: the CORS preflight for `fetch()` with a JSON body.
pub async fn preflight(
    State(state): State<AppState>,
    Path(form): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(t) = target(&state, &form) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match allowed_origin(&headers, &t) {
        Some(o) => {
            let mut r = with_cors(StatusCode::NO_CONTENT.into_response(), Some(o));
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        None => StatusCode::FORBIDDEN.into_response(),
    }
}

/// The submitted fields as strings, from a form-encoded or JSON body.
fn fields_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return input::form(body);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed("", format!("the body is not JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::invalid(
            "",
            "the body must be a JSON object of fields",
        ));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            Value::Null => Ok((k, String::new())),
            _ => Err(ApiError::invalid(&k, "must be a string, number or boolean")),
        })
        .collect()
}

/// Whether the caller wants JSON back (`fetch()` with JSON, or `Accept: application/json`).
fn wants_json(headers: &HeaderMap) -> bool {
    let has = |h: header::HeaderName, v: &str| {
        headers
            .get(h)
            .and_then(|x| x.to_str().ok())
            .is_some_and(|x| x.contains(v))
    };
    has(header::CONTENT_TYPE, "application/json") || has(header::ACCEPT, "application/json")
}

/// A signup read from the submitted fields; `None` when a bot filled the honeypot.
fn read(
    fields: &[(String, String)],
    headers: &HeaderMap,
    form: &str,
    requester: Requester,
) -> Result<Option<NewSignup>, ApiError> {
    let raw = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    if raw(HONEYPOT).is_some() {
        return Ok(None);
    }
    // Every field is checked, reserved or not: one line of text within its length.
    let get = |name: &str, max: usize| -> Result<Option<String>, ApiError> {
        raw(name).map(|v| input::text(name, v, max)).transpose()
    };
    let email = get("email", max::EMAIL)?
        .ok_or_else(|| ApiError::invalid("email", "missing"))
        .and_then(|e| Email::parse(&e).map_err(|e| ApiError::invalid("email", e.to_string())))?;
    let timezone = get("timezone", max::TIMEZONE)?
        .map(|z| {
            z.parse::<chrono_tz::Tz>().map_err(|_| {
                ApiError::invalid("timezone", "not an IANA time zone (like Europe/Berlin)")
            })
        })
        .transpose()?;
    let mut extra = serde_json::Map::new();
    for (k, v) in fields {
        if RESERVED.contains(&k.as_str()) || v.trim().is_empty() {
            continue;
        }
        let name_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(ApiError::invalid(
                k,
                "field names are lowercase letters, digits and _ (at most 64)",
            ));
        }
        extra.insert(k.clone(), Value::String(input::text(k, v, max::LONG)?));
    }
    if extra.len() > MAX_FIELDS {
        return Err(ApiError::invalid(
            "",
            format!("more than {MAX_FIELDS} fields"),
        ));
    }
    let first_name = match get("first_name", max::NAME)? {
        Some(n) => Some(n),
        None => get("name", max::NAME)?,
    };
    let input = LeadInput {
        first_name,
        fields: extra,
        timezone,
    };
    // The Referer header is the browser's, not the visitor's choice: kept only when clean.
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| input::text("Referer", v, max::LONG).ok())
        .filter(|v| !v.is_empty());
    let touch = NewTouch {
        channel: "form".into(),
        source: get("utm_source", max::SHORT)?,
        medium: get("utm_medium", max::SHORT)?,
        campaign: get("utm_campaign", max::SHORT)?,
        term: get("utm_term", max::SHORT)?,
        content: get("utm_content", max::SHORT)?,
        referrer: get("referrer", max::LONG)?.or(referer),
        landing_url: get("landing_url", max::LONG)?,
        form: Some(form.to_string()),
    };
    Ok(Some(NewSignup {
        email,
        input,
        touch,
        form: form.to_string(),
        requester,
        consent_text: None,
    }))
}

/// `POST /f/{form}`.
pub async fn signup(
    State(state): State<AppState>,
    ApiPath(form): ApiPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = target(&state, &form) else {
        return ApiError::not_found("form", "no funnel starts with this form").into_response();
    };
    let origin = allowed_origin(&headers, &t);
    let answer = match accept(&state, &t, &form, peer, &headers, &body).await {
        // The same answer whether the address was new, known, or a bot's: a form tells
        // nobody who is on the list.
        Ok(_) if wants_json(&headers) => Json(json!({ "status": "ok" })).into_response(),
        Ok(_) => match &t.thank_you {
            Some(url) => {
                (StatusCode::SEE_OTHER, [(header::LOCATION, url.as_str())]).into_response()
            }
            None => Page::new(
                StatusCode::OK,
                "Thank you",
                "You are signed up. Please check your inbox.",
            )
            .into_response(),
        },
        Err(e) => e.into_response(),
    };
    with_cors(answer, origin)
}

/// Limits, reads and stores one signup; its lead, or `None` for a bot (the honeypot), which
/// is told all went well and kept nowhere.
async fn accept(
    state: &AppState,
    t: &Target,
    form: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<crate::domain::LeadId>, ApiError> {
    if let Some(l) = &state.signup_limit
        && !l.allow(peer.ip(), headers)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            "too many signups from this address; try again in a minute",
        ));
    }
    let fields = fields_of(headers, body)?;
    let who = requester(peer.ip(), headers, &state.trusted_proxies);
    let Some(mut signup) = read(&fields, headers, form, who)? else {
        return Ok(None);
    };
    signup.consent_text = t.consent.clone();
    // A task of its own: a visitor who leaves mid-commit does not stop the others' signups.
    let rt = state.runtime.clone();
    let ticket = rt.queue_signup(signup, t.funnels.clone());
    let stored = tokio::spawn(async move { rt.signup_stored(ticket).await })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match stored {
        Ok(lead) => {
            state.metrics.signups.inc();
            Ok(Some(lead))
        }
        Err(e) => {
            tracing::error!(error = %e, form = ?form, "cannot store a signup");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "the signup could not be stored; try again",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_visitor_is_named_only_by_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.2")]);
        // A stranger's header is ignored; a trusted proxy's chain is read from the right.
        assert_eq!(
            visitor("192.0.2.1".parse().unwrap(), &xff, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            visitor(proxy, &xff, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(visitor(proxy, &xff, &[]), proxy);
        let fwd = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(
            visitor(proxy, &fwd, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let junk = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(visitor(proxy, &junk, &trusted), proxy);
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_stays_bounded() {
        let l = limiter(2).unwrap();
        let none = HeaderMap::new();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(l.allow(a, &none));
        assert!(l.allow(b, &none));
        assert!(!l.allow(a, &none), "the same /64 shares one quota");
        assert!(l.allow("2001:db8:1:3::1".parse().unwrap(), &none));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(l.allow(mapped, &none) && l.allow("192.0.2.1".parse().unwrap(), &none));
        assert!(!l.allow(mapped, &none), "IPv4-mapped is the IPv4 address");
        for i in 0..(MAX_TRACKED as u32 + 10) {
            l.allow(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), &none);
        }
        assert!(l.tracked() <= MAX_TRACKED + 1, "{}", l.tracked());
    }
}
