//! Landing-page signups by group commit: a signup is queued without an `await`; whoever finds
//! no commit under way stores everything queued and starts the forms' funnels in one
//! transaction, and answers each waiting visitor.

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
        let mut signups = Vec::with_capacity(queued.len());
        let mut funnels = Vec::with_capacity(queued.len());
        let mut answers: Vec<Answer> = Vec::with_capacity(queued.len());
        for q in queued {
            signups.push(q.signup);
            funnels.push(q.funnels);
            answers.push(q.done);
        }
        let stored = self.store_group(&signups, &funnels, Utc::now()).await;
        for (r, done) in stored.into_iter().zip(answers) {
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

    /// Stores a group of signups and starts their funnels in one transaction; when the
    /// database refuses it, each signup alone, so one that cannot be stored fails only itself.
    /// A signup whose funnels cannot start is still stored, unstarted, for `resume_entries`.
    /// Each signup's lead or why it was not stored, in order.
    async fn store_group(
        &self,
        signups: &[NewSignup],
        funnels: &[Vec<FunnelId>],
        now: DateTime<Utc>,
    ) -> Vec<Result<LeadId, String>> {
        match self.signups_started(signups, funnels, now).await {
            Ok(leads) => return leads.into_iter().map(Ok).collect(),
            Err(e) if signups.len() == 1 => {
                return vec![self.store_unstarted(&signups[0], e, now).await];
            }
            Err(e) => {
                tracing::warn!(error = %e, signups = signups.len(), "a group of signups was refused; storing each alone");
            }
        }
        let mut out = Vec::with_capacity(signups.len());
        for (s, fs) in signups.iter().zip(funnels) {
            let one = (std::slice::from_ref(s), std::slice::from_ref(fs));
            out.push(match self.signups_started(one.0, one.1, now).await {
                Ok(mut l) => l.pop().ok_or_else(|| "no lead stored".to_string()),
                Err(e) => self.store_unstarted(s, e, now).await,
            });
        }
        out
    }

    /// The signups stored and their funnels started, committed together: the funnels that
    /// enter on `signup` and each form's own; the `signup` events stored processed.
    async fn signups_started(
        &self,
        signups: &[NewSignup],
        funnels: &[Vec<FunnelId>],
        now: DateTime<Utc>,
    ) -> Result<Vec<LeadId>, RuntimeError> {
        let w = self.store.write().await?;
        let leads = self.store.record_signups_in(&w, signups, true, now).await?;
        let by_event = leads
            .iter()
            .map(|l| (*l, Trigger::Event(EventKind::Signup)))
            .collect();
        self.start_entries(Some(&w), by_event, now).await?;
        let mut by_funnel: BTreeMap<&FunnelId, Vec<LeadId>> = BTreeMap::new();
        for (lead, fs) in leads.iter().zip(funnels) {
            for f in fs {
                by_funnel.entry(f).or_default().push(*lead);
            }
        }
        for (f, leads) in by_funnel {
            match self.enroll_many_in(Some(&w), &leads, f, now).await {
                // Reloaded away since the form was read: the signup is kept, nothing starts.
                Err(RuntimeError::UnknownFunnel(_)) | Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        w.commit().await?;
        // New runs, and runs the leads were in already to be fed the event.
        self.wake.notify_one();
        Ok(leads)
    }

    /// A signup whose funnels could not start with it (`why`), stored alone: kept for
    /// `resume_entries` to start them.
    async fn store_unstarted(
        &self,
        signup: &NewSignup,
        why: RuntimeError,
        now: DateTime<Utc>,
    ) -> Result<LeadId, String> {
        match self
            .store
            .record_signups(std::slice::from_ref(signup), now)
            .await
        {
            Ok(mut l) => {
                tracing::error!(error = %why, form = %signup.form, "signup stored; starting its funnels failed, trying again in a minute");
                self.wake.notify_one();
                l.pop().ok_or_else(|| "no lead stored".to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, form = %signup.form, "cannot store a signup");
                Err(e.to_string())
            }
        }
    }
}
