//! Queued forge events (webhook deliveries), oldest first: a push of the followed branch
//! makes the branch be looked at now; pull requests, comments and check run buttons go to
//! [`Pulls`].
//!
//! Each event is finished with what became of it. One the forge cannot help with now (a rate
//! limit) or the store cannot record now holds back the events after it, which are taken up
//! again in order after a backoff; one that can never be handled (it cannot be read, or its
//! commit is gone) is finished as dropped with the reason, and the rest go on.

use std::sync::Arc;

use chrono::Utc;

use super::{Backoff, Pass, Stop};
use crate::config::Config;
use crate::pulls::{Pulls, PullsError};
use crate::report::{Forge, ForgeEvent, PrAction};
use crate::store::{PullRequestRow, Store};

/// Forge events read from the queue at a time.
const BATCH: u32 = 100;
/// Backoff key of the queue: events are taken in order, so they wait together.
const QUEUE: &str = "queue";

/// The sub-reconciler of the forge event queue.
pub(super) struct ForgeEvents<F: Forge> {
    store: Store,
    pulls: Pulls,
    forge: Arc<F>,
    branch: Option<String>,
    backoff: Backoff,
    errors: u64,
}

impl<F: Forge> ForgeEvents<F> {
    pub(super) fn new(store: Store, pulls: Pulls, forge: Arc<F>, config: &Config) -> Self {
        ForgeEvents {
            store,
            pulls,
            forge,
            branch: config.branch.clone(),
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Handles the queued events; says whether one was a push of the followed branch.
    pub(super) async fn reconcile(&mut self, stop: &Stop) -> (Pass, bool) {
        let mut pass = Pass::default();
        let mut pushed = false;
        let pending = match self.store.pending_forge_events::<ForgeEvent>(BATCH).await {
            Ok(pending) => pending,
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed(QUEUE);
                tracing::error!(%error, retry_in = ?delay, "reading the forge event queue failed");
                pass.again_after(delay);
                return (pass, false);
            }
        };
        let full = pending.len() == BATCH as usize;
        for (id, event) in pending {
            if stop.requested() {
                return (pass, pushed);
            }
            let outcome = match event {
                Ok(event) => match self.handle(event, &mut pushed).await {
                    Ok(()) => "handled".to_owned(),
                    Err(error) if error.is_transient() => {
                        self.errors += 1;
                        let delay = self.backoff.failed(QUEUE);
                        tracing::warn!(event = id, %error, retry_in = ?delay, "a forge event waits; the events after it wait too");
                        pass.again_after(delay);
                        return (pass, pushed);
                    }
                    Err(error) => {
                        self.errors += 1;
                        tracing::error!(event = id, %error, "forge event dropped");
                        format!("dropped: {error}")
                    }
                },
                Err(error) => {
                    self.errors += 1;
                    tracing::error!(event = id, %error, "forge event cannot be read; dropped");
                    format!("dropped: {error}")
                }
            };
            pass.changed = true;
            if let Err(error) = self
                .store
                .finish_forge_event(id, &outcome, Utc::now())
                .await
            {
                self.errors += 1;
                let delay = self.backoff.failed(QUEUE);
                tracing::error!(event = id, %error, retry_in = ?delay, "recording a handled forge event failed");
                pass.again_after(delay);
                return (pass, pushed);
            }
        }
        self.backoff.succeeded(QUEUE);
        if full {
            pass.again_after(std::time::Duration::ZERO);
        }
        (pass, pushed)
    }

    /// Handles one event; `pushed` is set for a push of the followed branch (any branch,
    /// when following HEAD's).
    async fn handle(&mut self, event: ForgeEvent, pushed: &mut bool) -> Result<(), PullsError> {
        let now = Utc::now();
        match event {
            ForgeEvent::Ping => Ok(()),
            ForgeEvent::Push { branch, after } => {
                if self.branch.as_ref().is_none_or(|b| *b == branch) {
                    tracing::info!(%branch, %after, "push webhook: looking at the branch now");
                    *pushed = true;
                }
                Ok(())
            }
            ForgeEvent::PullRequest {
                action,
                number,
                head_sha,
                head_ref,
                base_ref,
                from_fork,
                author,
            } => {
                let pr = PullRequestRow {
                    number,
                    head_sha,
                    head_ref,
                    base_ref,
                    from_fork,
                    author,
                    open: !matches!(action, PrAction::Closed { .. }),
                };
                self.pulls.on_pull_request(&pr, now).await
            }
            ForgeEvent::Comment {
                pr,
                comment_id,
                author,
                body,
            } => {
                self.pulls
                    .on_comment(self.forge.as_ref(), pr, comment_id, &author, &body, now)
                    .await
            }
            ForgeEvent::CheckRunAction {
                check_run_id,
                head_sha,
                pr,
                identifier,
                sender,
            } => {
                self.pulls
                    .on_check_action(
                        self.forge.as_ref(),
                        check_run_id,
                        pr,
                        &head_sha,
                        &identifier,
                        &sender,
                        now,
                    )
                    .await
            }
        }
    }
}
