//! Leads in bulk: an import from another service (new addresses added, known ones merged,
//! consent raised from pending only, tags added, the consent's proof recorded), the
//! suppressed addresses among some, and the pages an export reads.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseTransaction};
use sea_orm::{ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value};

use super::entities::{lead, lead_tag};
use super::sql::{self, Params};
use super::{Backend, LeadInput, Result, Store, ms};
use crate::domain::{Consent, ConsentAct, Email, Lead, LeadId, Requester, ShownText, Tag};

/// One lead of an import.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub email: Email,
    pub input: LeadInput,
    pub tags: Vec<Tag>,
    /// The address unsubscribed in the service it comes from: it is suppressed and its
    /// lead's consent is `unsubscribed`, whatever it was.
    pub unsubscribed: bool,
}

/// How an import treats what it is given.
#[derive(Debug, Clone, Copy)]
pub struct Import<'a> {
    /// A new lead's consent; a known lead's, when it is still pending and `update` is set.
    pub consent: Consent,
    /// A known address takes the values given (fields merged, the given ones winning); else
    /// it is kept as it is.
    pub update: bool,
    /// Where a confirmed consent came from, recorded as its proof.
    pub consent_source: Option<&'a str>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Each row's lead, in the order given.
    pub ids: Vec<LeadId>,
    /// The addresses given that had a lead before.
    pub known: HashSet<String>,
    /// The addresses given that were suppressed before.
    pub suppressed: HashSet<String>,
}

/// The rows with one per address: a later row's values win (fields merged), tags add up.
fn merged(rows: &[ImportRow]) -> Vec<ImportRow> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<ImportRow> = Vec::new();
    for r in rows {
        match at.get(r.email.as_str()) {
            Some(&i) => {
                let m = &mut out[i];
                if r.input.first_name.is_some() {
                    m.input.first_name = r.input.first_name.clone();
                }
                m.input.timezone = r.input.timezone.or(m.input.timezone);
                m.unsubscribed |= r.unsubscribed;
                m.input
                    .fields
                    .extend(r.input.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                for t in &r.tags {
                    if !m.tags.contains(t) {
                        m.tags.push(t.clone());
                    }
                }
            }
            None => {
                at.insert(r.email.as_str(), out.len());
                out.push(r.clone());
            }
        }
    }
    out
}

/// An `IN (…)` list of texts.
fn texts(q: &mut Params, items: &[&str]) -> String {
    sql::padded(items.iter().copied())
        .into_iter()
        .map(|t| q.p(t))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Adds and merges many leads in one transaction (see [`Import`]). A new lead is announced
    /// to the webhooks subscribed to `lead.created`.
    pub async fn import(
        &self,
        rows: &[ImportRow],
        how: Import<'_>,
        now: DateTime<Utc>,
    ) -> Result<Imported> {
        let unique = merged(rows);
        let t = ms(now);
        let txn = self.write().await?;
        let mut ids: HashMap<String, i64> = HashMap::new();
        let mut new: Vec<(LeadId, String)> = Vec::new();
        let (mut known_before, mut suppressed_before) = (HashSet::new(), HashSet::new());
        for chunk in unique.chunks(sql::ROWS) {
            let emails: Vec<&str> = chunk.iter().map(|r| r.email.as_str()).collect();
            let known = known(&txn, self.backend, &emails).await?;
            let suppressed = among(&*txn, self.backend, Among::Suppressed, &emails).await?;
            let stored = insert(&txn, self.backend, chunk, &suppressed, how, t).await?;
            let mut proofs = Vec::new();
            let mut tags = Vec::new();
            let mut suppressions = Vec::new();
            for r in chunk {
                let Some(&id) = stored.get(r.email.as_str()) else {
                    continue;
                };
                let before = known.get(r.email.as_str());
                if before.is_none() {
                    new.push((LeadId(id), r.email.as_str().to_string()));
                }
                // A suppressed address is not confirmed by an import.
                let raised = !suppressed.contains(r.email.as_str())
                    && match before {
                        None => true,
                        Some(c) => how.update && c == Consent::Pending.as_str(),
                    };
                let act = if r.unsubscribed {
                    suppressions.push(vec![
                        super::suppression_key(r.email.as_str()).into(),
                        "*".into(),
                        Consent::Unsubscribed.as_str().into(),
                        t.into(),
                    ]);
                    Some(ConsentAct::Withdrawn)
                } else {
                    (raised && how.consent == Consent::Confirmed).then_some(ConsentAct::Confirmed)
                };
                if let Some(act) = act {
                    let source = how.consent_source.map(str::to_string);
                    proofs.push(proof_row(
                        LeadId(id),
                        act,
                        source,
                        &Requester::default(),
                        None,
                        t,
                    ));
                }
                for tag in &r.tags {
                    tags.push(vec![id.into(), tag.as_str().into(), t.into()]);
                }
            }
            insert_proofs(&txn, self.backend, proofs).await?;
            sql::insert_rows(
                &txn,
                self.backend,
                "lead_tags (lead_id, tag, created_at)",
                "ON CONFLICT (lead_id, tag) DO NOTHING",
                tags,
            )
            .await?;
            sql::insert_rows(
                &txn,
                self.backend,
                "suppressions (email, scope, reason, created_at)",
                "ON CONFLICT (email, scope) DO NOTHING",
                suppressions,
            )
            .await?;
            ids.extend(stored);
            known_before.extend(known.into_keys());
            suppressed_before.extend(suppressed);
        }
        let created: Vec<(LeadId, &str)> = new.iter().map(|(l, e)| (*l, e.as_str())).collect();
        super::created(&txn, self.backend, &self.subscriptions, &created, t).await?;
        txn.commit().await?;
        Ok(Imported {
            ids: rows
                .iter()
                .map(|r| LeadId(ids.get(r.email.as_str()).copied().unwrap_or_default()))
                .collect(),
            known: known_before,
            suppressed: suppressed_before,
        })
    }

    /// Adds many leads at once, confirmed as `consent` says; an address already stored keeps
    /// its lead as it is. Returns each address's lead id, in the order given.
    pub async fn import_leads(
        &self,
        leads: &[(Email, LeadInput)],
        consent: Consent,
        now: DateTime<Utc>,
    ) -> Result<Vec<LeadId>> {
        let rows: Vec<ImportRow> = leads
            .iter()
            .map(|(email, input)| ImportRow {
                email: email.clone(),
                input: input.clone(),
                tags: Vec::new(),
                unsubscribed: false,
            })
            .collect();
        let how = Import {
            consent,
            update: false,
            consent_source: None,
        };
        Ok(self.import(&rows, how, now).await?.ids)
    }

    /// Appends consent records (the ledger is never rewritten; erase takes a lead's with it).
    pub async fn record_consent(
        &self,
        records: &[(LeadId, ConsentAct, Option<String>, Requester)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let rows = records
            .iter()
            .map(|(lead, act, source, who)| {
                proof_row(*lead, *act, source.clone(), who, None, ms(now))
            })
            .collect();
        let txn = self.write().await?;
        insert_proofs(&txn, self.backend, rows).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Whether the lead's ledger has a record of this act.
    pub async fn has_consent(&self, lead: LeadId, act: ConsentAct) -> Result<bool> {
        use super::entities::consent;
        Ok(consent::Entity::find()
            .filter(consent::Column::LeadId.eq(lead.0))
            .filter(consent::Column::Status.eq(act.as_str()))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// The addresses among `emails` that are suppressed (for every funnel or one).
    pub async fn suppressed_among(&self, emails: &[&str]) -> Result<HashSet<String>> {
        self.among(Among::Suppressed, emails).await
    }

    /// The addresses among `emails` that have a lead.
    pub async fn stored_among(&self, emails: &[&str]) -> Result<HashSet<String>> {
        self.among(Among::Leads, emails).await
    }

    async fn among(&self, which: Among, emails: &[&str]) -> Result<HashSet<String>> {
        among(&self.db, self.backend, which, emails).await
    }

    /// The names of every field some lead has, sorted.
    pub async fn field_names(&self) -> Result<Vec<String>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT DISTINCT j.key FROM leads, json_each(leads.fields) AS j ORDER BY 1"
            }
            Backend::Postgres => {
                "SELECT DISTINCT k FROM leads, jsonb_object_keys(leads.fields::jsonb) AS k ORDER BY 1"
            }
        };
        let q = Params::new(self.backend);
        self.db
            .query_all_raw(q.statement(sql.to_string()))
            .await?
            .iter()
            .map(|r| Ok(r.try_get_by_index::<String>(0)?))
            .collect()
    }

    /// Up to `limit` leads after `after` in id order, each with its tags: a page of an export.
    pub async fn lead_page(&self, after: LeadId, limit: u64) -> Result<Vec<(Lead, Vec<Tag>)>> {
        let leads = lead::Entity::find()
            .filter(lead::Column::Id.gt(after.0))
            .order_by_asc(lead::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut tags: HashMap<i64, Vec<Tag>> = HashMap::new();
        if let (Some(first), Some(last)) = (leads.first(), leads.last()) {
            for t in lead_tag::Entity::find()
                .filter(lead_tag::Column::LeadId.between(first.id, last.id))
                .order_by_asc(lead_tag::Column::Tag)
                .all(&self.db)
                .await?
            {
                if let Ok(tag) = Tag::parse(&t.tag) {
                    tags.entry(t.lead_id).or_default().push(tag);
                }
            }
        }
        leads
            .into_iter()
            .map(|m| {
                let t = tags.remove(&m.id).unwrap_or_default();
                Ok((super::to_lead(m)?, t))
            })
            .collect()
    }
}

/// A `consents` row.
pub(super) fn proof_row(
    lead: LeadId,
    act: ConsentAct,
    source: Option<String>,
    who: &Requester,
    text: Option<&ShownText>,
    at: i64,
) -> Vec<Value> {
    vec![
        lead.0.into(),
        act.as_str().into(),
        source.into(),
        text.map(|t| t.file.clone()).into(),
        text.map(|t| t.sha256.clone()).into(),
        who.ip.clone().into(),
        who.user_agent.clone().into(),
        at.into(),
    ]
}

/// Inserts `consents` rows made by [`proof_row`].
pub(super) async fn insert_proofs(
    txn: &DatabaseTransaction,
    backend: Backend,
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    sql::insert_rows(
        txn,
        backend,
        "consents (lead_id, status, source, text_version, text_sha256, ip, user_agent, recorded_at)",
        "",
        rows,
    )
    .await
}

/// Which addresses [`among`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Among {
    /// Those with a lead.
    Leads,
    /// Those suppressed (by their [`super::suppression_key`]).
    Suppressed,
}

/// The addresses among `emails` that have a lead, or are suppressed.
async fn among(
    db: &impl ConnectionTrait,
    backend: Backend,
    which: Among,
    emails: &[&str],
) -> Result<HashSet<String>> {
    let (table, keys): (&str, HashMap<String, &str>) = match which {
        Among::Leads => (
            "leads",
            emails.iter().map(|e| (e.to_string(), *e)).collect(),
        ),
        Among::Suppressed => (
            "suppressions",
            emails
                .iter()
                .map(|e| (super::suppression_key(e), *e))
                .collect(),
        ),
    };
    let keys_in_order: Vec<&str> = keys.keys().map(String::as_str).collect();
    let mut out = HashSet::new();
    for chunk in keys_in_order.chunks(sql::ROWS) {
        let mut q = Params::new(backend);
        let list = texts(&mut q, chunk);
        let sql = format!("SELECT DISTINCT email FROM {table} WHERE email IN ({list})");
        for r in db.query_all_raw(q.statement(sql)).await? {
            if let Some(address) = keys.get(&r.try_get_by_index::<String>(0)?) {
                out.insert(address.to_string());
            }
        }
    }
    Ok(out)
}

/// The addresses among `emails` already stored, with their consent.
async fn known(
    txn: &DatabaseTransaction,
    backend: Backend,
    emails: &[&str],
) -> Result<HashMap<String, String>> {
    let mut q = Params::new(backend);
    let list = texts(&mut q, emails);
    let sql = format!("SELECT email, consent FROM leads WHERE email IN ({list})");
    txn.query_all_raw(q.statement(sql))
        .await?
        .iter()
        .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .collect()
}

/// Inserts a chunk of rows (one per address), merging into known addresses as `how` says;
/// returns each address's lead id.
async fn insert(
    txn: &DatabaseTransaction,
    backend: Backend,
    chunk: &[ImportRow],
    suppressed: &HashSet<String>,
    how: Import<'_>,
    t: i64,
) -> Result<HashMap<String, i64>> {
    let mut q = Params::new(backend);
    let rows: Vec<Vec<Value>> = chunk
        .iter()
        .map(|r| {
            vec![
                r.email.as_str().into(),
                r.input.first_name.clone().into(),
                serde_json::Value::Object(r.input.fields.clone())
                    .to_string()
                    .into(),
                r.input.timezone.map(|z| z.name().to_string()).into(),
                if r.unsubscribed {
                    Consent::Unsubscribed
                } else if suppressed.contains(r.email.as_str()) {
                    Consent::Pending
                } else {
                    how.consent
                }
                .as_str()
                .into(),
                0i64.into(),
                t.into(),
                t.into(),
            ]
        })
        .collect();
    let values = q.values(rows);
    let merge_fields = match backend {
        Backend::Sqlite => "json_patch(leads.fields, excluded.fields)",
        Backend::Postgres => "(leads.fields::jsonb || excluded.fields::jsonb)::text",
    };
    // Without an update, the no-op makes RETURNING answer for known addresses too.
    let update = if how.update {
        format!(
            "first_name = COALESCE(excluded.first_name, leads.first_name), \
             timezone = COALESCE(excluded.timezone, leads.timezone), \
             fields = {merge_fields}, \
             consent = CASE WHEN leads.consent = 'pending' OR excluded.consent = 'unsubscribed' \
                 THEN excluded.consent ELSE leads.consent END, \
             updated_at = excluded.updated_at"
        )
    } else {
        "email = excluded.email".to_string()
    };
    let sql = sql::insert_sql(
        "leads (email, first_name, fields, timezone, consent, score, created_at, updated_at)",
        &values,
        &format!("ON CONFLICT (email) DO UPDATE SET {update} RETURNING id, email"),
    );
    txn.query_all_raw(q.statement(sql))
        .await?
        .iter()
        .map(|r| Ok((r.try_get_by_index(1)?, r.try_get_by_index(0)?)))
        .collect()
}
