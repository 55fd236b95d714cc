//! Requests from the command line → the loops that act on them: `trainyard run`, `retry`,
//! `cancel` and `backfill` write their intent to the store and bump the requests cursor;
//! this loop reads that cursor once a poll (one query) and, when it moved, makes the ticks
//! and runs loops due at once. A service started after a request needs none of this: every
//! loop is due at start and finds the request in the store.

use std::time::Duration;

use super::{Backoff, Pass};
use crate::store::{REQUESTS_CURSOR, Store};

/// The sub-reconciler of requests.
pub(super) struct Requests {
    store: Store,
    /// The cursor's value last read; `None` before the first read.
    seen: Option<Option<String>>,
    poll: Duration,
    backoff: Backoff,
    errors: u64,
}

impl Requests {
    pub(super) fn new(store: Store, poll: Duration) -> Self {
        Requests {
            store,
            seen: None,
            poll,
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Says whether a request came since the last pass; asks to look again in a poll.
    pub(super) async fn reconcile(&mut self) -> Pass {
        let mut pass = Pass::default();
        match self.store.cursor(REQUESTS_CURSOR).await {
            Ok(value) => {
                self.backoff.succeeded("requests");
                pass.changed = moved(&mut self.seen, value);
                pass.again_after(self.poll);
            }
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed("requests").max(self.poll);
                tracing::warn!(%error, retry_in = ?delay, "reading the requests cursor failed");
                pass.again_after(delay);
            }
        }
        pass
    }
}

/// Records `value` as seen; whether it differs from what was seen before (the first read
/// counts as a change: a request may have come while the service started).
fn moved(seen: &mut Option<Option<String>>, value: Option<String>) -> bool {
    let changed = seen.as_ref() != Some(&value);
    *seen = Some(value);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_moved_cursor_is_a_change() {
        let mut seen = None;
        assert!(moved(&mut seen, None), "the first read");
        assert!(!moved(&mut seen, None));
        assert!(moved(&mut seen, Some("1".to_owned())));
        assert!(!moved(&mut seen, Some("1".to_owned())));
        assert!(moved(&mut seen, Some("2".to_owned())));
    }
}
