//! Leader election among replicas of the service, on a `coordination.k8s.io/v1` Lease: which
//! replica may act (apply commits, fire ticks, drive runs, deliver reports) right now.
//!
//! kube-lease-manager takes and renews the Lease. It announces when it gains the Lease and
//! when it sees another holder, but not when it merely fails to renew: a replica cut off
//! from the API server would go on believing it leads while another takes over. So a
//! replica here acts only while the Lease, as last read back, shows it as holder with a
//! renewal recent enough that no other replica can have taken it yet: it stops acting half
//! a grace period before its Lease could expire, which leaves half a grace period for clock
//! skew between nodes (another replica takes an expired Lease by its own clock).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The API access election needs, as (API group, resource, verbs): kube-lease-manager reads
/// the Lease (`get`), creates it when missing (`create`), and takes, renews and releases it
/// with strategic-merge and server-side-apply patches (`patch`; it never sends `update`).
/// The check of the Lease's holder below is a `get` too.
pub const REQUIRED_RULES: &[(&str, &str, &[&str])] =
    &[("coordination.k8s.io", "leases", &["get", "create", "patch"])];

/// Errors starting an election.
#[derive(Debug, Error)]
pub enum Error {
    /// The lease duration and grace do not fit together.
    #[error(
        "invalid lease timing: the grace ({grace}s) must be at least 1s and shorter than the duration ({duration}s)"
    )]
    Timing {
        /// The lease duration, in seconds.
        duration: u64,
        /// The grace, in seconds.
        grace: u64,
    },
    /// The Lease could not be read or created.
    #[error("cannot take part in leader election on lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What the API server or the client said.
        source: LeaseManagerError,
    },
}

/// Which Lease to contend for, as whom, and for how long a holder keeps it.
#[derive(Debug, Clone)]
pub struct Election {
    /// Name of the Lease.
    pub lease: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity; must differ between replicas (the pod's name).
    pub identity: String,
    /// How long a Lease stays valid after its holder last renewed it.
    pub duration: Duration,
    /// How long before expiry the holder renews; also the clock skew tolerated between nodes.
    pub grace: Duration,
}

impl Election {
    /// Whole seconds of (duration, grace), checked as the Lease needs them.
    fn seconds(&self) -> Result<(u64, u64), Error> {
        let (duration, grace) = (self.duration.as_secs(), self.grace.as_secs());
        if grace == 0 || grace >= duration {
            return Err(Error::Timing { duration, grace });
        }
        Ok((duration, grace))
    }

    /// How often the holder reads the Lease back: often enough to see each renewal (every
    /// duration − grace) well before it stops acting (at duration − grace/2).
    fn check_interval(&self) -> Duration {
        (self.grace / 4).max(Duration::from_millis(250))
    }

    /// Until when a holder whose last renewal was at `renewed` may act: half a grace before
    /// the Lease expires; `None` if that moment has passed.
    fn acting_until(&self, renewed: SystemTime) -> Option<Instant> {
        let deadline = renewed + self.duration - self.grace / 2;
        let left = deadline.duration_since(SystemTime::now()).ok()?;
        Some(Instant::now() + left)
    }
}

/// This replica's part in an election: whether it may act, kept current by a background task.
pub struct Leadership {
    acting: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Joins the election: makes sure the Lease exists and starts contending for it.
    pub async fn join(client: Client, election: Election) -> Result<Leadership, Error> {
        let (duration, grace) = election.seconds()?;
        let name = format!("{}/{}", election.namespace, election.lease);
        let manager = LeaseManagerBuilder::new(client.clone(), &election.lease)
            .with_namespace(&election.namespace)
            .with_parameters(LeaseParams::new(&election.identity, duration, grace))
            .build()
            .await
            .map_err(|source| Error::Lease {
                lease: name.clone(),
                source,
            })?;
        let (held, manager_task) = manager.watch().await;
        let (acting_tx, acting) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
        let task = tokio::spawn(async move {
            follow(election, leases, held, acting_tx, stopped).await;
            // Dropping the manager's channel (in `follow`) makes it release the Lease, so
            // another replica takes over at once instead of after expiry.
            match manager_task.await {
                Ok(Ok(_)) => tracing::info!(lease = %name, "released the lease"),
                Ok(Err(error)) => {
                    tracing::warn!(lease = %name, %error, "releasing the lease failed; it expires on its own")
                }
                Err(error) => tracing::warn!(lease = %name, %error, "the lease manager failed"),
            }
        });
        Ok(Leadership { acting, stop, task })
    }

    /// Whether this replica may act, now and as it changes (`true` = leader).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.acting.clone()
    }

    /// Stops acting and releases the Lease. Call it after the service stopped acting.
    pub async fn step_down(self) {
        let _ = self.stop.send(true);
        // A release that hangs must not hold up shutdown: the Lease then simply expires.
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("releasing the lease took too long; it expires on its own");
        }
    }
}

/// Publishes whether this replica may act until `stop` is set: while the manager says it
/// holds the Lease, and the Lease read back confirms a renewal recent enough.
async fn follow(
    election: Election,
    leases: Api<Lease>,
    mut held: watch::Receiver<bool>,
    acting: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut holds = *held.borrow_and_update();
    let mut until: Option<Instant> = None;
    let mut next_check = Instant::now();
    loop {
        let may_act = holds && until.is_some_and(|u| Instant::now() < u);
        acting.send_if_modified(|current| {
            if *current == may_act {
                return false;
            }
            *current = may_act;
            if may_act {
                tracing::info!(identity = %election.identity, lease = %election.lease, "became the leader");
            } else {
                tracing::warn!(identity = %election.identity, lease = %election.lease, "not the leader: standing by");
            }
            true
        });
        let wake = match (holds, until) {
            (true, Some(u)) if may_act => next_check.min(u),
            (true, _) => next_check,
            (false, _) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            changed = held.changed() => {
                if changed.is_err() {
                    tracing::error!(lease = %election.lease, "the lease manager stopped; standing by");
                    break;
                }
                holds = *held.borrow_and_update();
                until = None;
                next_check = Instant::now();
            }
            () = tokio::time::sleep_until(wake) => {
                if holds && Instant::now() >= next_check {
                    next_check = Instant::now() + election.check_interval();
                    match leases.get(&election.lease).await {
                        Ok(lease) => until = confirmed_until(&election, &lease),
                        // Keep the last confirmation: it runs out on its own in time.
                        Err(error) => tracing::warn!(lease = %election.lease, %error, "cannot read the lease back"),
                    }
                }
            }
        }
    }
    acting.send_replace(false);
}

/// Until when the Lease as read lets this replica act: `None` unless it names this replica
/// as holder with a renewal time.
fn confirmed_until(election: &Election, lease: &Lease) -> Option<Instant> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return None;
    }
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    election.acting_until(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;

    fn election() -> Election {
        Election {
            lease: "trainyard".to_owned(),
            namespace: "trainyard".to_owned(),
            identity: "replica-a".to_owned(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }

    fn lease(holder: &str, renewed_ago: Duration) -> Lease {
        let renewed = Timestamp::try_from(SystemTime::now() - renewed_ago).unwrap();
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_grace_as_long_as_the_lease_is_refused() {
        let mut timing = election();
        timing.grace = timing.duration;
        assert!(matches!(
            timing.seconds(),
            Err(Error::Timing {
                duration: 15,
                grace: 15
            })
        ));
        timing.grace = Duration::ZERO;
        assert!(timing.seconds().is_err());
        assert_eq!(election().seconds().unwrap(), (15, 5));
    }

    #[test]
    fn a_fresh_renewal_lets_the_holder_act_until_half_a_grace_before_expiry() {
        let until = confirmed_until(&election(), &lease("replica-a", Duration::from_secs(1)))
            .expect("a fresh renewal confirms the holder");
        let left = until - Instant::now();
        // Renewed 1 s ago, expires in 14 s: acting stops 2.5 s before that.
        assert!(
            left > Duration::from_millis(11_000) && left <= Duration::from_millis(11_500),
            "{left:?}"
        );
    }

    #[test]
    fn a_renewal_older_than_duration_minus_half_grace_confirms_nothing() {
        assert!(
            confirmed_until(&election(), &lease("replica-a", Duration::from_secs(13))).is_none()
        );
    }

    #[test]
    fn another_holder_confirms_nothing() {
        assert!(confirmed_until(&election(), &lease("replica-b", Duration::ZERO)).is_none());
        assert!(confirmed_until(&election(), &Lease::default()).is_none());
    }

    #[test]
    fn the_holder_reads_the_lease_back_several_times_per_renewal() {
        let e = election();
        // Renewals come every duration − grace = 10 s; acting lasts 12.5 s past each.
        assert!(e.check_interval() * 4 <= e.duration - e.grace);
        assert!(e.check_interval() < e.grace / 2);
    }
}
