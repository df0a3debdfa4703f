//! Payment providers' notifications (`POST /hooks/pay/{name}`) read into purchases and
//! refunds. One adapter per provider verifies a notification the way the provider documents
//! it, reads the payment out of it and says what the provider must be answered; this module
//! turns a payment into the purchases the funnels see (its item mapped to a product, the
//! currency checked against the product's, keyed by the provider's payment id so a repeated
//! notification counts once). Pure: the server does the IO (YooKassa's re-read through its
//! API, storing the events).

pub mod cloudpayments;
pub mod prodamus;
pub mod robokassa;
pub mod stripe;
pub mod tbank;
pub mod yookassa;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use serde_json::Value;

use crate::domain::{Email, Money};
use crate::settings::PaymentSettings;

/// A payment provider whose notifications autofunnel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    YooKassa,
    CloudPayments,
    Prodamus,
    Robokassa,
    TBank,
    Stripe,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::YooKassa,
        Provider::CloudPayments,
        Provider::Prodamus,
        Provider::Robokassa,
        Provider::TBank,
        Provider::Stripe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::YooKassa => "yookassa",
            Provider::CloudPayments => "cloudpayments",
            Provider::Prodamus => "prodamus",
            Provider::Robokassa => "robokassa",
            Provider::TBank => "tbank",
            Provider::Stripe => "stripe",
        }
    }

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// One `[payments.NAME]` account, ready to verify notifications.
#[derive(Debug, Clone)]
pub struct Account {
    /// The table's name: the last part of `/hooks/pay/NAME`.
    pub name: String,
    pub provider: Provider,
    /// The verifying key, read from `secret_env`.
    pub secret: Option<String>,
    /// Why notifications cannot be verified, if so (its secret is not set): they are
    /// answered 503 so the provider retries once it is.
    pub unusable: Option<String>,
    pub products: BTreeMap<String, String>,
    /// The currency of providers whose notifications name none.
    pub currency: String,
    pub shop_id: Option<String>,
    pub allowed: Vec<ipnet::IpNet>,
    pub api_url: String,
    pub terminal_key: Option<String>,
    pub hash: robokassa::Hash,
    /// Stripe: seconds a signature's timestamp may be from now.
    pub tolerance: i64,
}

/// The accounts by name.
pub type Accounts = BTreeMap<String, Account>;

/// The accounts `[payments.*]` configures, each secret read through `env`. A setting that
/// cannot work is an error naming it; an unset secret makes the account unusable (said by
/// [`Account::unusable`]), not the server.
pub fn accounts(
    settings: &BTreeMap<String, PaymentSettings>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Accounts, String> {
    let mut out = Accounts::new();
    for (name, s) in settings {
        let at = format!("payments.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{at}: a name uses letters, digits, - and _ (it is part of the URL)"
            ));
        }
        let kind = s.provider.as_deref().unwrap_or(name);
        let provider = Provider::parse(kind).ok_or_else(|| {
            format!(
                "{at}: no provider \"{kind}\" (one of {}; set `provider` when the name is another)",
                Provider::ALL.map(Provider::as_str).join(", ")
            )
        })?;
        let currency = s.currency.clone().unwrap_or_else(|| "RUB".into());
        if !is_currency(&currency) {
            return Err(format!(
                "{at}.currency: \"{currency}\" is not an ISO 4217 code such as RUB"
            ));
        }
        let allowed = match &s.allowed_ips {
            Some(list) => list
                .iter()
                .map(|t| {
                    t.parse::<ipnet::IpNet>()
                        .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            format!("{at}.allowed_ips: \"{t}\" is not an address or a CIDR")
                        })
                })
                .collect::<Result<_, _>>()?,
            None => yookassa::published_ranges(),
        };
        let hash = match s.hash.as_deref() {
            None => robokassa::Hash::Md5,
            Some(h) => robokassa::Hash::parse(h).ok_or_else(|| {
                format!("{at}.hash: \"{h}\" is not md5, sha1, sha256, sha384 or sha512")
            })?,
        };
        let secret = s
            .secret_env
            .as_deref()
            .and_then(env)
            .filter(|v| !v.is_empty());
        let unusable = match (&s.secret_env, &secret) {
            (_, Some(_)) => None,
            // YooKassa signs nothing: its addresses are the check, the key only re-reads.
            _ if provider == Provider::YooKassa => None,
            (None, None) => Some(format!(
                "{at}: set `secret_env` to the variable that holds its key"
            )),
            (Some(v), None) => Some(format!("{at}: the variable {v} (its key) is not set")),
        };
        out.insert(
            name.clone(),
            Account {
                name: name.clone(),
                provider,
                secret,
                unusable,
                products: s.products.clone(),
                currency,
                shop_id: s.shop_id.clone(),
                allowed,
                api_url: s
                    .api_url
                    .clone()
                    .unwrap_or_else(|| yookassa::API_URL.into())
                    .trim_end_matches('/')
                    .to_string(),
                terminal_key: s.terminal_key.clone(),
                hash,
                tolerance: s.tolerance_seconds.unwrap_or(300).min(86_400) as i64,
            },
        );
    }
    Ok(out)
}

/// A notification as it arrived.
pub struct Notification<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The URL's query (CloudPayments: `?type=check` for its check notifications).
    pub query: Option<&'a str>,
    /// The address it came from (behind trusted proxies, the one they name).
    pub from: IpAddr,
    pub now: DateTime<Utc>,
}

impl Notification<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a notification says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Paid(Payment),
    Refunded(Refund),
    /// Nothing to record (a payment not finished yet, a check before it): answered all the
    /// same, so the provider does not retry.
    Ignored(String),
}

/// A payment that went through.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// The provider's payment id.
    pub id: String,
    pub email: Option<String>,
    /// What was bought: one line, or several (a Prodamus cart).
    pub lines: Vec<Line>,
    pub currency: String,
    pub at: Option<DateTime<Utc>>,
}

/// One item of a payment and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The provider's name of the item, mapped to a product by [`Account::products`].
    pub item: Option<String>,
    pub amount: Money,
}

/// A payment given back, in whole or in part.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    /// The provider's refund id.
    pub id: String,
    /// The payment it gives back.
    pub payment: String,
    pub email: Option<String>,
    pub amount: Option<Money>,
    pub currency: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// A refused notification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayError {
    /// Not from the provider: a signature that does not match, a stale timestamp, an address
    /// outside its ranges.
    #[error("{0}")]
    Forged(String),
    /// Not a notification this provider sends.
    #[error("{0}")]
    Malformed(String),
    /// From the provider but not recordable as it stands (no email, an unknown product, a
    /// currency the product is not priced in): answered with an error so the provider
    /// retries after the settings are fixed.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> PayError {
    PayError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The answer a provider expects for a notification it need not send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub content_type: &'static str,
    pub body: String,
}

/// Reads a notification to `account`: verified, then what it says.
pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let notice = match account.provider {
        Provider::YooKassa => yookassa::read(account, n),
        Provider::CloudPayments => cloudpayments::read(account, n),
        Provider::Prodamus => prodamus::read(account, n),
        Provider::Robokassa => robokassa::read(account, n),
        Provider::TBank => tbank::read(account, n),
        Provider::Stripe => stripe::read(account, n),
    }?;
    printable(&notice)?;
    Ok(notice)
}

/// Every text a notice carries (ids, email, items) is one printable line of reasonable length:
/// a control character or a NUL never reaches a key or a stored event.
fn printable(notice: &Notice) -> Result<(), PayError> {
    let texts: Vec<(&str, &str)> = match notice {
        Notice::Paid(p) => {
            let mut t = vec![("payment id", p.id.as_str())];
            t.extend(p.email.as_deref().map(|e| ("email", e)));
            t.extend(
                p.lines
                    .iter()
                    .filter_map(|l| l.item.as_deref())
                    .map(|i| ("item", i)),
            );
            t
        }
        Notice::Refunded(r) => {
            let mut t = vec![
                ("refund id", r.id.as_str()),
                ("payment id", r.payment.as_str()),
            ];
            t.extend(r.email.as_deref().map(|e| ("email", e)));
            t
        }
        Notice::Ignored(_) => Vec::new(),
    };
    match texts
        .iter()
        .find(|(_, t)| t.chars().count() > 1000 || t.chars().any(char::is_control))
    {
        Some((what, _)) => Err(PayError::Malformed(format!(
            "{what}: control characters, or longer than 1,000 characters"
        ))),
        None => Ok(()),
    }
}

/// The answer that tells the provider the notification was taken.
pub fn reply(provider: Provider, notice: &Notice) -> Reply {
    let (content_type, body) = match (provider, notice) {
        (Provider::CloudPayments, _) => ("application/json", r#"{"code":0}"#.to_string()),
        (Provider::Robokassa, Notice::Paid(p)) => {
            ("text/plain; charset=utf-8", format!("OK{}", p.id))
        }
        (Provider::TBank, _) => ("text/plain; charset=utf-8", "OK".to_string()),
        (Provider::Prodamus, _) => ("text/plain; charset=utf-8", "success".to_string()),
        _ => ("application/json", r#"{"received":true}"#.to_string()),
    };
    Reply { content_type, body }
}

/// The currencies each product the running funnels declare is priced in.
pub type Catalog = BTreeMap<String, BTreeSet<String>>;

/// A purchase to record from a payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    /// `purchase:NAME:PAYMENT` (`…:PAYMENT:LINE` for a payment of several lines).
    pub key: String,
    pub email: Email,
    pub product: String,
    pub amount: Money,
    pub currency: String,
    pub at: Option<DateTime<Utc>>,
}

/// The idempotency key of a payment's purchase (its first line's, for several).
pub fn purchase_key(account: &str, payment: &str) -> String {
    format!("purchase:{account}:{payment}")
}

/// The idempotency key of a refund.
pub fn refund_key(account: &str, refund: &str) -> String {
    format!("refund:{account}:{refund}")
}

impl Account {
    /// The purchases a payment makes: each line's item mapped to a product and its currency
    /// checked; the buyer's email required.
    pub fn purchases(&self, p: &Payment, catalog: &Catalog) -> Result<Vec<Purchase>, PayError> {
        let email = self.email(p.email.as_deref())?;
        let several = p.lines.len() > 1;
        p.lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let base = purchase_key(&self.name, &p.id);
                Ok(Purchase {
                    key: if several && i > 0 {
                        format!("{base}:{i}")
                    } else {
                        base
                    },
                    email: email.clone(),
                    product: self.product(line.item.as_deref(), &p.currency, catalog)?,
                    amount: line.amount,
                    currency: p.currency.clone(),
                    at: p.at,
                })
            })
            .collect()
    }

    /// The buyer as a lead's address.
    pub fn email(&self, email: Option<&str>) -> Result<Email, PayError> {
        let e = email.map(str::trim).filter(|e| !e.is_empty()).ok_or_else(|| {
            invalid(
                "email",
                format!(
                    "the notification carries no buyer's email (see the README's [payments.{}] for where {} puts it)",
                    self.name,
                    self.provider.as_str()
                ),
            )
        })?;
        Email::parse(e).map_err(|err| invalid("email", err.to_string()))
    }

    fn product(
        &self,
        item: Option<&str>,
        currency: &str,
        catalog: &Catalog,
    ) -> Result<String, PayError> {
        let item = item.map(str::trim).filter(|i| !i.is_empty()).ok_or_else(|| {
            invalid(
                "product",
                "the notification names no item (see the README for where each provider puts it)",
            )
        })?;
        let product = match self.products.get(item) {
            Some(p) => p.clone(),
            None if catalog.contains_key(item) => item.to_string(),
            None => {
                return Err(invalid(
                    "product",
                    format!(
                        "\"{item}\" is no product: map it to one in [payments.{}.products] (the funnels declare: {})",
                        self.name,
                        if catalog.is_empty() {
                            "none".to_string()
                        } else {
                            catalog.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
        };
        if let Some(priced) = catalog.get(&product)
            && !priced.contains(currency)
        {
            return Err(invalid(
                "currency",
                format!(
                    "the payment is in {currency} but product {product} is priced in {}",
                    priced.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(product)
    }
}

/// An ISO 4217-looking code.
pub(crate) fn is_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// A currency as a provider writes it (`rub`, `RUB`), upper-cased and checked.
pub(crate) fn currency(field: &str, c: &str) -> Result<String, PayError> {
    let c = c.trim().to_ascii_uppercase();
    if is_currency(&c) {
        Ok(c)
    } else {
        Err(PayError::Malformed(format!(
            "{field}: \"{c}\" is not a currency code"
        )))
    }
}

/// An amount written as a decimal string or a JSON number.
pub(crate) fn amount(field: &str, v: Option<&Value>) -> Result<Money, PayError> {
    let m = match v {
        Some(Value::String(s)) => Money::parse(s),
        Some(Value::Number(n)) => Money::parse(&n.to_string()),
        _ => None,
    };
    m.ok_or_else(|| PayError::Malformed(format!("{field}: missing or not an amount")))
}

/// A text field of a JSON object (a number is taken as its digits).
pub(crate) fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// HMAC-SHA256 of `data` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Equal bytes, compared in constant time.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A hex digest as sent (either case) equal to `digest`.
pub(crate) fn same_hex(sent: &str, digest: &[u8]) -> bool {
    same(
        sent.trim().to_ascii_lowercase().as_bytes(),
        hex::encode(digest).as_bytes(),
    )
}

/// A form body's pairs, in order.
pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The body as a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<Value, PayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(PayError::Malformed("the body is not a JSON object".into())),
    }
}

/// The verifying key, when the account has one.
pub(crate) fn key(account: &Account) -> Result<&[u8], PayError> {
    account.secret.as_deref().map(str::as_bytes).ok_or_else(|| {
        PayError::Forged(format!(
            "[payments.{}] has no key to verify with",
            account.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(provider: &str) -> Account {
        let mut settings = BTreeMap::new();
        settings.insert(
            "shop".to_string(),
            PaymentSettings {
                provider: Some(provider.into()),
                secret_env: Some("KEY".into()),
                products: [("Course Pro".to_string(), "course".to_string())].into(),
                ..Default::default()
            },
        );
        accounts(&settings, &|_| Some("k".into()))
            .unwrap()
            .remove("shop")
            .unwrap()
    }

    #[test]
    fn items_map_to_products_priced_in_the_currency() {
        let a = account("stripe");
        let catalog: Catalog = [("course".to_string(), ["RUB".to_string()].into())].into();
        let pay = |item: &str, currency: &str| Payment {
            id: "p1".into(),
            email: Some("Ann@Example.com".into()),
            lines: vec![Line {
                item: Some(item.into()),
                amount: Money::parse("490").unwrap(),
            }],
            currency: currency.into(),
            at: None,
        };
        let got = a.purchases(&pay("Course Pro", "RUB"), &catalog).unwrap();
        assert_eq!(got[0].product, "course");
        assert_eq!(got[0].key, "purchase:shop:p1");
        assert_eq!(got[0].email.as_str(), "ann@example.com");
        // A declared product id needs no entry.
        assert_eq!(
            a.purchases(&pay("course", "RUB"), &catalog).unwrap()[0].product,
            "course"
        );
        let e = a.purchases(&pay("Другое", "RUB"), &catalog).unwrap_err();
        assert!(
            matches!(&e, PayError::Invalid { field, .. } if field == "product"),
            "{e}"
        );
        let e = a.purchases(&pay("course", "USD"), &catalog).unwrap_err();
        assert_eq!(
            e.to_string(),
            "currency: the payment is in USD but product course is priced in RUB"
        );
    }

    #[test]
    fn control_characters_never_reach_a_key() {
        let paid = |id: &str| {
            Notice::Paid(Payment {
                id: id.into(),
                email: None,
                lines: vec![],
                currency: "RUB".into(),
                at: None,
            })
        };
        assert!(printable(&paid("pi_123")).is_ok());
        assert!(matches!(
            printable(&paid("pi\u{0}1")),
            Err(PayError::Malformed(_))
        ));
        assert!(matches!(
            printable(&paid("a\r\nb")),
            Err(PayError::Malformed(_))
        ));
    }

    #[test]
    fn a_bad_setting_names_itself_and_an_unset_key_only_the_account() {
        let mut settings = BTreeMap::new();
        settings.insert("cp".to_string(), PaymentSettings::default());
        let e = accounts(&settings, &|_| None).unwrap_err();
        assert!(e.starts_with("payments.cp: no provider \"cp\""), "{e}");
        settings.insert(
            "cp".to_string(),
            PaymentSettings {
                provider: Some("cloudpayments".into()),
                secret_env: Some("CP_SECRET".into()),
                ..Default::default()
            },
        );
        let a = accounts(&settings, &|_| None).unwrap();
        assert_eq!(
            a["cp"].unusable.as_deref(),
            Some("payments.cp: the variable CP_SECRET (its key) is not set")
        );
    }
}
