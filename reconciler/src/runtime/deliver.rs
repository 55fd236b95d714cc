//! The outbox → the forge: due reports delivered oldest first, each on its own. A transient
//! refusal (a rate limit, an outage) waits for its retry and holds back the reports after it,
//! so the forge never shows a newer state before an older one; a permanent one is recorded
//! with the forge's words; a report that cannot be read is recorded as failed with why.
//!
//! A shutdown interrupts a delivery in flight: the report stays pending and is delivered
//! after the restart (statuses and sticky comments are upserts, so delivering it twice
//! shows it once).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Backoff, Pass, RuntimeError, Stop};
use crate::report::{self, Forge, ForgeError, Report};
use crate::store::Store;

/// Reports delivered per pass; more are due at once after it.
const PER_PASS: u32 = 50;
/// How long a report may take to deliver before it counts as a transient failure.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The sub-reconciler of the outbox.
pub(super) struct Deliver<F: Forge> {
    store: Store,
    forge: Arc<F>,
    backoff: Backoff,
    errors: u64,
}

impl<F: Forge> Deliver<F> {
    pub(super) fn new(store: Store, forge: Arc<F>) -> Self {
        Deliver {
            store,
            forge,
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Delivers the reports due now; asks to run again when the next one is due.
    pub(super) async fn reconcile(&mut self, stop: &Stop) -> Pass {
        let mut pass = Pass::default();
        match self.deliver_due(stop).await {
            Ok(more) => {
                self.backoff.succeeded("outbox");
                if more {
                    pass.again_after(Duration::ZERO);
                }
            }
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed("outbox");
                tracing::error!(%error, retry_in = ?delay, "delivering reports failed");
                pass.again_after(delay);
                return pass;
            }
        }
        match self.store.next_report_due().await {
            Ok(Some(at)) => pass.again_at(super::instant_of(at, Utc::now())),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "reading when the next report is due failed");
                pass.again_after(self.backoff.failed("outbox"));
            }
        }
        pass
    }

    /// Delivers until nothing is due now or a report waits for its retry, for `--once`.
    pub(super) async fn drain(&mut self, stop: &Stop) -> Result<(), RuntimeError> {
        for _ in 0..20 {
            if !self.deliver_due(stop).await? {
                let soon = Utc::now() + chrono::Duration::minutes(10);
                let pending = self.store.next_report_due().await?;
                if pending.is_none_or(|at| at > soon) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// One batch of due reports; returns whether a full batch was delivered (more may be
    /// due at once).
    async fn deliver_due(&mut self, stop: &Stop) -> Result<bool, RuntimeError> {
        let due = self
            .store
            .due_reports::<Report>(Utc::now(), PER_PASS)
            .await?;
        let full = due.len() == PER_PASS as usize;
        for (id, row) in due {
            if stop.requested() {
                return Ok(false);
            }
            let row = match row {
                Ok(row) => row,
                Err(error) => {
                    self.errors += 1;
                    tracing::error!(report = id, %error, "a report cannot be read; recorded as failed");
                    self.store.mark_failed(id, &error.to_string()).await?;
                    continue;
                }
            };
            let mut stopping = stop.clone();
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(DELIVERY_TIMEOUT, report::deliver(self.forge.as_ref(), &row.payload)) => match outcome {
                    Ok(outcome) => outcome.map(|_| ()),
                    Err(_) => Err(ForgeError::Transient {
                        message: format!("the forge did not answer within {}s", DELIVERY_TIMEOUT.as_secs()),
                        retry_after: None,
                    }),
                },
                () = stopping.wait() => return Ok(false),
            };
            match outcome {
                Ok(()) => {
                    self.store.mark_delivered(id, Utc::now()).await?;
                }
                Err(ForgeError::Transient {
                    message,
                    retry_after,
                }) => {
                    self.errors += 1;
                    let delay = report::backoff(row.attempts, retry_after);
                    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.store.mark_retry(id, at, &message).await?;
                    // The rest waits behind it (reports arrive in order), and a rate limit
                    // would refuse them too.
                    return Ok(false);
                }
                Err(ForgeError::Permanent { message }) => {
                    self.errors += 1;
                    tracing::warn!(report = id, %message, "report cannot be delivered");
                    self.store.mark_failed(id, &message).await?;
                }
            }
        }
        Ok(full)
    }
}
