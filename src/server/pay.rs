//! `POST /hooks/pay/{name}`: a payment provider's notification to the `[payments.NAME]`
//! account, read by [`crate::payments`] and recorded as purchases (a refund as a `refund`
//! event), each once per provider payment id; answered with exactly what the provider
//! expects. A refused notification is answered with an error (401 forged, 400 malformed, 422
//! not recordable as the settings stand, 503 not configured) so that the provider retries it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::AppState;
use super::error::ApiError;
use crate::domain::{Event, EventKind, EventName};
use crate::payments::{self, Account, Accounts, Catalog, Notice, PayError, Provider};
use crate::runtime::Runtime;
use crate::store::{BatchEvent, LeadRef};

/// The payment accounts and what reading their notifications needs.
pub struct Payments {
    pub accounts: Accounts,
    /// Re-reads a YooKassa payment through its API.
    pub http: reqwest::Client,
}

impl Payments {
    pub fn new(accounts: Accounts) -> Arc<Payments> {
        Arc::new(Payments {
            accounts,
            http: crate::outbound::http_client(std::time::Duration::from_secs(10)),
        })
    }
}

fn refusal(account: &Account, e: PayError) -> ApiError {
    match e {
        PayError::Forged(m) => ApiError::unauthorized("", m),
        PayError::Malformed(m) => ApiError::malformed("", m),
        PayError::Invalid { field, message } => {
            tracing::warn!(
                account = account.name,
                "a {} notification was refused ({field}: {message}); it is taken when the provider retries after the settings are fixed",
                account.provider.as_str()
            );
            ApiError::invalid(&field, message)
        }
    }
}

/// The products the running funnels declare, with their currencies.
fn catalog(rt: &Runtime) -> Catalog {
    let mut out: Catalog = BTreeMap::new();
    for r in rt.funnels().values() {
        for (id, p) in &r.funnel.products {
            out.entry(id.to_string())
                .or_default()
                .insert(p.currency.clone());
        }
    }
    out
}

pub async fn notification(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pay = &state.payments;
    let account = pay
        .accounts
        .get(&name)
        .ok_or_else(|| ApiError::not_found("name", "no [payments.NAME] account has this name"))?;
    if let Some(why) = &account.unusable {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            why.clone(),
        ));
    }
    let now = Utc::now();
    let n = payments::Notification {
        headers: &headers,
        body: &body,
        query: query.as_deref(),
        from: super::signup::visitor(peer.ip(), &headers, &state.trusted_proxies),
        now,
    };
    let mut notice = payments::read(account, &n).map_err(|e| refusal(account, e))?;
    if account.provider == Provider::YooKassa {
        notice = reread(pay, account, notice).await?;
    }
    let rt = &state.runtime;
    let events: Vec<BatchEvent> = match &notice {
        Notice::Paid(p) => account
            .purchases(p, &catalog(rt))
            .map_err(|e| refusal(account, e))?
            .into_iter()
            .map(|b| BatchEvent {
                who: LeadRef::Email(b.email),
                event: Event {
                    product: Some(b.product),
                    amount: Some(b.amount),
                    currency: Some(b.currency),
                    ..Event::of(EventKind::Purchase)
                },
                idempotency_key: Some(b.key),
                occurred_at: b.at.unwrap_or(now).min(now),
                touch: None,
                fields: Default::default(),
            })
            .collect(),
        Notice::Refunded(r) => {
            let bought = rt
                .store()
                .event_by_key(&payments::purchase_key(&account.name, &r.payment))
                .await?;
            let who = match (&bought, &r.email) {
                (Some(b), _) if rt.store().missing_leads(&[b.lead]).await?.is_empty() => {
                    LeadRef::Id(b.lead)
                }
                (_, Some(e)) => {
                    LeadRef::Email(account.email(Some(e)).map_err(|e| refusal(account, e))?)
                }
                _ => {
                    return Err(refusal(
                        account,
                        payments::invalid(
                            "payment",
                            format!(
                                "a refund of payment {} that was never recorded, and no email to name the buyer",
                                r.payment
                            ),
                        ),
                    ));
                }
            };
            let bought = bought.map(|b| b.event);
            vec![BatchEvent {
                who,
                event: Event {
                    product: bought.as_ref().and_then(|b| b.product.clone()),
                    amount: r.amount.or(bought.as_ref().and_then(|b| b.amount)),
                    currency: r
                        .currency
                        .clone()
                        .or(bought.as_ref().and_then(|b| b.currency.clone())),
                    ..Event::of(EventKind::Custom(
                        EventName::parse(EventKind::REFUND).expect("a valid event name"),
                    ))
                },
                idempotency_key: Some(payments::refund_key(&account.name, &r.id)),
                occurred_at: r.at.unwrap_or(now).min(now),
                touch: None,
                fields: Default::default(),
            }]
        }
        Notice::Ignored(why) => {
            tracing::debug!(
                account = account.name,
                "notification recorded nothing: {why}"
            );
            Vec::new()
        }
    };
    if !events.is_empty() {
        let stored = rt
            .record_batch(events, now)
            .await
            .map_err(|e| ApiError::unavailable("the payment could not be stored", e))?;
        let new = stored.iter().filter(|(_, new)| *new).count();
        state.metrics.events.inc_by(new as u64);
    }
    let reply = payments::reply(account.provider, &notice);
    Ok(([(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response())
}

/// A YooKassa payment or refund as its API tells it, when the account has the credentials to
/// ask; the notification's own word otherwise.
async fn reread(pay: &Payments, account: &Account, notice: Notice) -> Result<Notice, ApiError> {
    let (Some(shop), Some(key)) = (&account.shop_id, &account.secret) else {
        return Ok(notice);
    };
    let Some((path, event)) = payments::yookassa::api_path(&notice) else {
        return Ok(notice);
    };
    let unavailable = |e: &dyn std::fmt::Display| ApiError::unavailable("YooKassa's API", e);
    let answer = pay
        .http
        .get(format!("{}{path}", account.api_url))
        .basic_auth(shop, Some(key))
        .send()
        .await
        .map_err(|e| unavailable(&e))?;
    if !answer.status().is_success() {
        return Err(unavailable(&format!("it answered {}", answer.status())));
    }
    let object: serde_json::Value = answer.json().await.map_err(|e| unavailable(&e))?;
    payments::yookassa::notice(event, &object).map_err(|e| refusal(account, e))
}
