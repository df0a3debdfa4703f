//! What a template sees: the variables of one lead's email, made in this one place for the
//! sender, `check` (a sample lead) and `simulate` (the simulated lead as it is then).

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::Lead;
use crate::funnel::Funnel;
use crate::tokens::{LeadLink, lead_token};

/// The lead's unsubscribe page, offering to stop this funnel's emails or all of them (a
/// one-click POST to it stops all).
pub fn unsubscribe_url(base: &str, secret: &[u8], lead: &Lead, f: &Funnel) -> String {
    format!(
        "{base}/u/{}?f={}",
        lead_token(secret, LeadLink::Unsubscribe, lead.id),
        f.id.value.as_str()
    )
}

/// A lead made of its fields (`email` and `first_name` among them, a sample address when
/// there is none), as `check` and `simulate` make the lead they render for.
pub fn lead_of_fields(
    id: i64,
    fields: impl IntoIterator<Item = (String, serde_json::Value)>,
    timezone: Option<chrono_tz::Tz>,
    score: i64,
    created_at: DateTime<Utc>,
) -> Lead {
    let mut fields: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
    let mut text = |name: &str| match fields.remove(name) {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let email = text("email")
        .and_then(|e| crate::domain::Email::parse(&e).ok())
        .or_else(|| crate::domain::Email::parse("anna@example.com").ok())
        .expect("a sample address");
    let first_name = text("first_name");
    Lead {
        id: crate::domain::LeadId(id),
        email,
        first_name,
        fields,
        timezone,
        consent: crate::domain::Consent::Confirmed,
        score,
        scored_at: None,
        created_at,
    }
}

/// The template context of a lead's email from `stage` at `now`: the lead's fields (a
/// missing one null, so `default` takes its place), the funnel, the stage's offer with its
/// price written out and its deadline with the time left, in the email's language; its
/// unsubscribe and confirmation links signed with `secret`.
pub fn context(
    f: &Funnel,
    stage: Option<&str>,
    lead: &Lead,
    deadline: Option<DateTime<Utc>>,
    base_url: &str,
    secret: &[u8],
    now: DateTime<Utc>,
) -> tera::Context {
    let mut fields = lead.fields.clone();
    fields.insert("email".into(), json!(lead.email.as_str()));
    fields.insert("first_name".into(), json!(lead.first_name));
    fields.insert("score".into(), json!(lead.score));
    fields.entry("tags").or_insert(json!([]));
    // A field the lead never gave (or gave empty) is null: it renders empty rather than
    // failing the email, and `| default(value="friend")` takes its place.
    for (name, _, _) in crate::funnel::BUILTIN_FIELDS {
        fields.entry(name).or_insert(serde_json::Value::Null);
    }
    for name in f.fields.keys() {
        fields
            .entry(name.as_str().to_string())
            .or_insert(serde_json::Value::Null);
    }
    for v in fields.values_mut() {
        if v.as_str().is_some_and(|s| s.trim().is_empty()) {
            *v = serde_json::Value::Null;
        }
    }
    let base = base_url.trim_end_matches('/');
    let mut cx = tera::Context::new();
    cx.insert("lead", &fields);
    // Money, the deadline and the time left as the email's language writes them: the lead's
    // `language` when it is one the emails can be written in, else the funnel's.
    let lang = fields
        .get("language")
        .and_then(|v| v.as_str())
        .and_then(crate::locale::Language::parse)
        .unwrap_or(f.language);
    cx.insert(
        "funnel",
        &json!({ "id": f.id.value.as_str(), "name": f.name, "language": lang.code() }),
    );
    cx.insert("unsubscribe_url", &unsubscribe_url(base, secret, lead, f));
    cx.insert(
        "confirm_url",
        &format!(
            "{base}/c/{}",
            lead_token(secret, LeadLink::Confirm, lead.id)
        ),
    );
    let from = f.from.as_ref();
    cx.insert(
        "sender",
        &json!({
            "name": from.and_then(|m| m.name.clone()),
            "email": from.map(|m| m.email.as_str()),
            "address": f.postal_address,
        }),
    );
    if let Some(s) = stage.and_then(|s| f.stage(s)) {
        cx.insert(
            "stage",
            &json!({ "id": s.id.value.as_str(), "kind": s.kind.map(|k| k.name()) }),
        );
        if let Some(p) = s.offer.as_ref().and_then(|o| f.products.get(&o.value)) {
            let price_text = crate::locale::money(p.price, &p.currency, lang);
            cx.insert("offer", &json!({ "id": p.id.as_str(), "name": p.name, "price": p.price, "currency": p.currency, "price_text": price_text }));
        }
        if s.deadline.is_some() {
            let tz = lead.timezone.unwrap_or(f.timezone);
            let at = deadline.unwrap_or(now);
            cx.insert(
                "deadline",
                &json!({
                    "at": crate::locale::moment(at.with_timezone(&tz), lang),
                    "left": crate::locale::span(at - now, lang),
                }),
            );
        }
    }
    cx
}
