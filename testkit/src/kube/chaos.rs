//! Faults at random: a share of all requests answered 500, 429 with `Retry-After`, or with
//! a dropped connection (before the request takes effect, or after, so that the answer is
//! lost), drawn from a seed so that a failing run can be replayed.

use std::sync::Mutex;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;

/// What a drawn fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Draw {
    /// Answered normally.
    Pass,
    /// `500 InternalError`, the request not applied.
    InternalError,
    /// `429 TooManyRequests` with `Retry-After: 1`, the request not applied.
    TooManyRequests,
    /// The connection drops before the request takes effect.
    DropBefore,
    /// The request takes effect, then the connection drops before the answer.
    DropAfter,
}

/// The random faults of a server: a seeded generator and the share of requests hit.
#[derive(Debug, Default)]
pub(crate) struct Chaos {
    state: Mutex<Option<(fastrand::Rng, f64)>>,
}

impl Chaos {
    /// From now on, `rate` of all requests (0.0–1.0) get a fault drawn from `seed`.
    pub(crate) fn start(&self, seed: u64, rate: f64) {
        *self.lock() = Some((fastrand::Rng::with_seed(seed), rate.clamp(0.0, 1.0)));
    }

    /// No more random faults.
    pub(crate) fn stop(&self) {
        *self.lock() = None;
    }

    /// The fault for the next request. The same seed gives the same sequence of draws;
    /// which request meets which draw depends on the order requests arrive in.
    pub(crate) fn draw(&self) -> Draw {
        let mut state = self.lock();
        let Some((rng, rate)) = state.as_mut() else {
            return Draw::Pass;
        };
        if rng.f64() >= *rate {
            return Draw::Pass;
        }
        match rng.u8(0..4) {
            0 => Draw::InternalError,
            1 => Draw::TooManyRequests,
            2 => Draw::DropBefore,
            _ => Draw::DropAfter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(fastrand::Rng, f64)>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response whose body fails at once: the server closes the connection without a
/// complete answer, as when a connection drops.
pub(crate) fn dropped() -> Response {
    let body = Body::from_stream(futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by the test"))
    }));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(chaos: &Chaos, n: usize) -> Vec<Draw> {
        (0..n).map(|_| chaos.draw()).collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_faults_at_about_the_rate_asked() {
        let (a, b) = (Chaos::default(), Chaos::default());
        a.start(42, 0.2);
        b.start(42, 0.2);
        let (first, second) = (draws(&a, 10_000), draws(&b, 10_000));
        assert_eq!(first, second);
        let hit = first.iter().filter(|d| **d != Draw::Pass).count();
        assert!((1_800..=2_200).contains(&hit), "{hit} of 10000");
        for kind in [
            Draw::InternalError,
            Draw::TooManyRequests,
            Draw::DropBefore,
            Draw::DropAfter,
        ] {
            assert!(first.contains(&kind), "{kind:?} never drawn");
        }
        let other = Chaos::default();
        other.start(43, 0.2);
        assert_ne!(draws(&other, 10_000), first);
    }

    #[test]
    fn without_chaos_or_after_it_stops_every_request_passes() {
        let chaos = Chaos::default();
        assert!(draws(&chaos, 100).iter().all(|d| *d == Draw::Pass));
        chaos.start(1, 1.0);
        assert!(draws(&chaos, 100).iter().all(|d| *d != Draw::Pass));
        chaos.stop();
        assert!(draws(&chaos, 100).iter().all(|d| *d == Draw::Pass));
    }
}
