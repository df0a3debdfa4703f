//! Landing-page signups by group commit: a signup is queued without an `await`; whoever finds
//! no commit under way stores everything queued (one transaction), starts the forms' funnels,
//! and answers each waiting visitor.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Runtime, RuntimeError, Trigger};
use crate::domain::{EventKind, FunnelId, LeadId};
use crate::store::NewSignup;

/// Where a queued signup's answer goes.
pub(super) type Answer = tokio::sync::oneshot::Sender<Result<LeadId, String>>;

/// A queued signup's answer: its lead, once stored.
pub struct SignupTicket(tokio::sync::oneshot::Receiver<Result<LeadId, String>>);

/// A signup in the queue, with the funnels its form starts and where its answer goes.
pub(super) struct QueuedSignup {
    signup: NewSignup,
    funnels: Vec<FunnelId>,
    done: Answer,
}

impl Runtime {
    /// Queues a landing-page signup (lead, touch, `signup` event) that starts `funnels`, the
    /// form's; [`Runtime::signup_stored`] commits it. Queued at once (no `await`), so a
    /// shutdown's [`Runtime::settle`] sees it.
    pub fn queue_signup(&self, signup: NewSignup, funnels: Vec<FunnelId>) -> SignupTicket {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.signups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(QueuedSignup {
                signup,
                funnels,
                done,
            });
        SignupTicket(answer)
    }

    /// Waits until the queued signup is stored and its funnels started. Signups arriving
    /// together are written together: whoever finds no commit under way commits everything
    /// queued so far (group commit); the others wait for their answer. Run it in a task of its
    /// own: a caller that goes away mid-commit must not stop the commit others wait for.
    pub async fn signup_stored(&self, ticket: SignupTicket) -> Result<LeadId, RuntimeError> {
        let mut answer = ticket.0;
        let turn = self.committing.lock().await;
        if let Ok(r) = answer.try_recv() {
            return r.map_err(RuntimeError::Signup);
        }
        let queued = std::mem::take(&mut *self.signups.lock().unwrap_or_else(|e| e.into_inner()));
        let (signups, rest): (Vec<NewSignup>, Vec<_>) = queued
            .into_iter()
            .map(|q| (q.signup, (q.funnels, q.done)))
            .unzip();
        let now = Utc::now();
        let stored = self.store_group(&signups, now).await;
        let started: Vec<(LeadId, &[FunnelId])> = stored
            .iter()
            .zip(&rest)
            .filter_map(|(r, (funnels, _))| Some((*r.as_ref().ok()?, funnels.as_slice())))
            .collect();
        if let Err(e) = self.start_signups(&started, now).await {
            // Stored for good: `resume_entries` starts their funnels within a minute.
            tracing::error!(error = %e, signups = started.len(), "signups stored; starting their funnels failed");
        }
        for (r, (_, done)) in stored.into_iter().zip(rest) {
            let _ = done.send(r);
        }
        drop(turn);
        match answer.try_recv() {
            Ok(r) => r.map_err(RuntimeError::Signup),
            Err(_) => Err(RuntimeError::Signup("no answer for this signup".into())),
        }
    }

    /// Waits until no signup is queued or being committed: at shutdown, after the server
    /// stopped taking requests, so every signup it answered or was storing starts its funnels.
    pub async fn settle(&self) {
        loop {
            {
                let _turn = self.committing.lock().await;
                if self
                    .signups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                {
                    return;
                }
            }
            // Queued signups are committed by their own tasks.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stores a group of signups in one transaction; when the database refuses it, each
    /// signup alone, so one that cannot be stored fails only itself. Each signup's lead or
    /// why it was not stored, in order.
    async fn store_group(
        &self,
        signups: &[NewSignup],
        now: DateTime<Utc>,
    ) -> Vec<Result<LeadId, String>> {
        match self.store.record_signups(signups, now).await {
            Ok(leads) => return leads.into_iter().map(Ok).collect(),
            Err(e) if signups.len() == 1 => {
                tracing::error!(error = %e, "cannot store a signup");
                return vec![Err(e.to_string())];
            }
            Err(e) => {
                tracing::warn!(error = %e, signups = signups.len(), "a group of signups was refused; storing each alone");
            }
        }
        let mut out = Vec::with_capacity(signups.len());
        for s in signups {
            out.push(
                match self
                    .store
                    .record_signups(std::slice::from_ref(s), now)
                    .await
                {
                    Ok(mut l) => l.pop().ok_or_else(|| "no lead stored".to_string()),
                    Err(e) => {
                        tracing::error!(error = %e, form = %s.form, "cannot store a signup");
                        Err(e.to_string())
                    }
                },
            );
        }
        out
    }

    /// Starts, for stored signups, the funnels that enter on `signup` and each form's own
    /// funnels; then marks the signups started.
    async fn start_signups(
        &self,
        stored: &[(LeadId, &[FunnelId])],
        now: DateTime<Utc>,
    ) -> Result<(), RuntimeError> {
        if stored.is_empty() {
            return Ok(());
        }
        // Runs the leads were in already are fed the event by the scheduler.
        self.wake.notify_one();
        let by_event = stored
            .iter()
            .map(|(l, _)| (*l, Trigger::Event(EventKind::Signup)))
            .collect();
        self.start_entries(by_event, now).await?;
        let mut by_funnel: BTreeMap<&FunnelId, Vec<LeadId>> = BTreeMap::new();
        for (lead, fs) in stored {
            for f in fs.iter() {
                by_funnel.entry(f).or_default().push(*lead);
            }
        }
        for (f, leads) in by_funnel {
            match self.enroll_many(&leads, f, now).await {
                // Reloaded away since the form was read: the signup is kept, nothing starts.
                Err(RuntimeError::UnknownFunnel(_)) | Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        let leads: Vec<LeadId> = stored.iter().map(|(l, _)| *l).collect();
        self.store.signups_started(&leads, now).await?;
        Ok(())
    }
}
