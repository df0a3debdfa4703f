//! Robokassa. Its Result URL is called with a form — `OutSum`, `InvId`, `SignatureValue`,
//! `EMail` and the shop's own `Shp_…` parameters — signed with the hash chosen in its technical
//! settings (MD5 by default) over `OutSum:InvId:Password#2[:Shp_a=…:Shp_b=…]`, the `Shp_`
//! parameters in alphabetical order; hex, any case. It is taken by answering `OK{InvId}`. The
//! item is `Shp_product` (pass it when starting the payment); the buyer is `EMail` (else
//! `Shp_email`); the amount is in the shop's currency (`currency`, default RUB).
//!
//! Reference: docs.robokassa.ru, "Оповещение об оплате на ResultURL" and "Пользовательские
//! параметры" (the Shp_ parameters in the signature).

use md5::Digest as _;

use super::{Account, Line, Notice, Notification, PayError, Payment};
use super::{amount, currency, form, key, same_hex};

/// The hash a shop's signatures use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn parse(name: &str) -> Option<Hash> {
        Some(match name.to_ascii_lowercase().as_str() {
            "md5" => Hash::Md5,
            "sha1" => Hash::Sha1,
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            _ => return None,
        })
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Md5 => md5::Md5::digest(data).to_vec(),
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// The text a notification's signature is made over, with Password #2.
pub fn signed_text(pairs: &[(String, String)], password: &str) -> Option<String> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let mut text = format!("{}:{}:{password}", get("OutSum")?, get("InvId")?);
    let mut shp: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k.len() > 4 && k[..4].eq_ignore_ascii_case("shp_"))
        .collect();
    shp.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in shp {
        text.push_str(&format!(":{k}={v}"));
    }
    Some(text)
}

pub fn read(account: &Account, n: &Notification) -> Result<Notice, PayError> {
    let password = std::str::from_utf8(key(account)?).unwrap_or_default();
    let pairs = form(n.body);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let signed = signed_text(&pairs, password)
        .ok_or_else(|| PayError::Malformed("OutSum and InvId are required".into()))?;
    let sent = get("SignatureValue")
        .ok_or_else(|| PayError::Forged("SignatureValue is missing".into()))?;
    if !same_hex(&sent, &account.hash.digest(signed.as_bytes())) {
        return Err(PayError::Forged(
            "SignatureValue does not match under Password #2".into(),
        ));
    }
    let id = get("InvId")
        .filter(|i| i.len() <= 32 && i.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| PayError::Malformed("InvId: not an invoice number".into()))?;
    Ok(Notice::Paid(Payment {
        id,
        email: get("EMail").or_else(|| get("Shp_email")),
        lines: vec![Line {
            item: get("Shp_product"),
            amount: amount(
                "OutSum",
                get("OutSum").map(serde_json::Value::String).as_ref(),
            )?,
        }],
        currency: currency("currency", &account.currency)?,
        at: None,
    }))
}
