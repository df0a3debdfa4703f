//! Landing-page signups written in groups: one transaction stores a whole batch of them (the
//! leads created or updated, a touch and a `signup` event each), so a busy form costs a few
//! statements per batch rather than per signup.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::sql::{self, Params};
use super::{Backend, LeadInput, NewTouch, Result, Store, StoreError, Write, ms};
use crate::domain::{Consent, ConsentAct, Email, EventKind, LeadId, Requester, ShownText};

/// One signup as the form delivered it.
#[derive(Debug, Clone)]
pub struct NewSignup {
    pub email: Email,
    pub input: LeadInput,
    pub touch: NewTouch,
    pub form: String,
    /// Who sent the form: the consent it gives is recorded with their address and browser.
    pub requester: Requester,
    /// The consent text the form shows, when its funnel declares one.
    pub consent_text: Option<ShownText>,
}

impl Store {
    /// Stores the signups in one transaction and returns each one's lead, in order. A new
    /// address creates its lead (consent `pending`); a known one only gains what it lacks (a
    /// name, a time zone, fields it has not got): a form anyone can post never changes what is
    /// stored. Each signup adds a touch and a `signup` event; the lead's live
    /// enrollments are marked to be fed the event.
    ///
    /// Their `signup` events are stored unprocessed: whoever starts the forms' funnels marks
    /// them, and `Runtime::resume_entries` starts what a stopped process did not.
    pub async fn record_signups(
        &self,
        signups: &[NewSignup],
        now: DateTime<Utc>,
    ) -> Result<Vec<LeadId>> {
        self.in_write(None, async |w| {
            self.record_signups_in(w, signups, false, now).await
        })
        .await
    }

    /// [`Store::record_signups`] in a write transaction the caller holds open and commits
    /// with the runs the signups start; `started` stores their events as processed, so the
    /// commit that stores a signup is the one that starts its funnels.
    pub(crate) async fn record_signups_in(
        &self,
        txn: &Write,
        signups: &[NewSignup],
        started: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<LeadId>> {
        // One row per address, the later signup's values winning.
        let mut merged: Vec<(&Email, LeadInput)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for s in signups {
            match at.get(s.email.as_str()) {
                Some(&i) => {
                    // The first signup of the address in the group counts, as if stored first.
                    let m = &mut merged[i].1;
                    m.first_name = m.first_name.take().or(s.input.first_name.clone());
                    m.timezone = m.timezone.or(s.input.timezone);
                    for (k, v) in &s.input.fields {
                        m.fields.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                None => {
                    at.insert(s.email.as_str(), merged.len());
                    merged.push((&s.email, s.input.clone()));
                }
            }
        }
        // An anonymous form may add what a lead lacks, never change what it has: the stored
        // values win over the submitted ones.
        let merge_fields = match self.backend {
            Backend::Sqlite => "json_patch(excluded.fields, leads.fields)",
            Backend::Postgres => "(excluded.fields::jsonb || leads.fields::jsonb)::text",
        };
        let t = ms(now);
        let emails: Vec<&str> = merged.iter().map(|(e, _)| e.as_str()).collect();
        let fresh = super::not_stored(txn, self.backend, &self.subscriptions, &emails).await?;
        let mut ids: HashMap<String, i64> = HashMap::new();
        for chunk in merged.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .map(|(email, input)| {
                    vec![
                        email.as_str().into(),
                        input.first_name.clone().into(),
                        serde_json::Value::Object(input.fields.clone())
                            .to_string()
                            .into(),
                        input.timezone.map(|z| z.name().to_string()).into(),
                        Consent::Pending.as_str().into(),
                        0i64.into(),
                        t.into(),
                        t.into(),
                    ]
                })
                .collect();
            let values = q.values(rows);
            let sql = sql::insert_sql(
                "leads (email, first_name, fields, timezone, consent, score, created_at, updated_at)",
                &values,
                &format!(
                    "ON CONFLICT (email) DO UPDATE SET \
                     first_name = COALESCE(leads.first_name, excluded.first_name), \
                     timezone = COALESCE(leads.timezone, excluded.timezone), \
                     fields = {merge_fields}, updated_at = excluded.updated_at \
                     RETURNING id, email"
                ),
            );
            for r in txn.query_all_raw(q.statement(sql)).await? {
                ids.insert(r.try_get_by_index(1)?, r.try_get_by_index(0)?);
            }
        }
        if !fresh.is_empty() {
            let new: Vec<(LeadId, &str)> = emails
                .iter()
                .filter(|e| fresh.contains(**e))
                .filter_map(|e| Some((LeadId(*ids.get(*e)?), *e)))
                .collect();
            super::created(txn, self.backend, &self.subscriptions, &new, t).await?;
        }
        let leads: Vec<LeadId> = signups
            .iter()
            .map(|s| {
                ids.get(s.email.as_str())
                    .map(|&i| LeadId(i))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("the lead {} was not stored", s.email))
                    })
            })
            .collect::<Result<_>>()?;
        let touches = signups
            .iter()
            .zip(&leads)
            .map(|(s, l)| (*l, t, s.touch.clone()))
            .collect();
        super::insert_touches(txn, self.backend, touches).await?;
        // The consent each form gives, on record.
        let proofs = signups
            .iter()
            .zip(&leads)
            .map(|(s, l)| {
                let source = Some(format!("form:{}", s.form));
                let text = s.consent_text.as_ref();
                super::import::proof_row(*l, ConsentAct::Given, source, &s.requester, text, t)
            })
            .collect();
        super::import::insert_proofs(txn, self.backend, proofs).await?;
        let events: Vec<Vec<Value>> = signups
            .iter()
            .zip(&leads)
            .map(|(s, l)| {
                vec![
                    l.0.into(),
                    EventKind::Signup.as_str().into(),
                    serde_json::json!({ "form": s.form }).to_string().into(),
                    t.into(),
                    t.into(),
                    started.then_some(t).into(),
                ]
            })
            .collect();
        sql::insert_rows(
            txn,
            self.backend,
            "events (lead_id, kind, payload, occurred_at, received_at, processed_at)",
            "",
            events,
        )
        .await?;
        // Runs the leads are in already see the event in the scheduler's next round.
        let mut unique: Vec<i64> = ids.values().copied().collect();
        unique.sort_unstable();
        for chunk in unique.chunks(sql::ROWS) {
            let mut q = Params::new(self.backend);
            let at = q.p(t);
            let list = q.list(chunk);
            let sql = format!(
                "UPDATE enrollments SET pending_at = {at} WHERE lead_id IN ({}) \
                 AND status IN ('active', 'unconfirmed')",
                list
            );
            txn.execute_raw(q.statement(sql)).await?;
        }
        Ok(leads)
    }
}
