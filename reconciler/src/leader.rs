//! Leader election among replicas of the service, on a `coordination.k8s.io/v1` Lease: which
//! replica may act (apply commits, fire ticks, drive runs, deliver reports) right now.
//!
//! Written here rather than taken from a crate: the one we used (kube-lease-manager) polled
//! the Lease, so a standby noticed a release only at its next read (seconds later) and a
//! leader sent a read about every second besides its renewals. This loop follows the Lease
//! with one watch instead, in the way client-go's leader election decides:
//!
//! * Every replica watches the Lease. A standby takes it (one `update` carrying the
//!   resourceVersion it saw, so only one replica can win) as soon as the watch shows it
//!   released, or once the record has not changed for a whole lease duration by the
//!   standby's own clock (the holder died). Measuring "unchanged for a duration" on the local
//!   clock, as client-go does, makes the takeover independent of clock skew between nodes.
//! * The holder renews with one `update` every `duration − grace`, and acts only until half a
//!   grace before its last renewal (timed from before the request went out) would expire. A
//!   holder cut off from the API server therefore stops acting before any standby can have
//!   seen the record unchanged for a full duration; only the rate of the clocks matters.
//! * Stepping down writes the Lease with no holder, which every standby's watch sees at once.
//!
//! The holder's traffic is one request per renewal plus the watch it keeps open.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The API access election needs, as (API group, resource, verbs): the Lease is followed
/// with a list and a watch, created when missing, and taken, renewed and released with
/// `update` (which carries the resourceVersion read, so two replicas cannot both win).
pub const REQUIRED_RULES: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["list", "watch", "create", "update"],
)];

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
    /// How long before expiry the holder renews; also the margin by which a holder stops
    /// acting before a standby may take over.
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

    /// How long after a renewal sent at `sent` the holder may act.
    fn acting_until(&self, sent: Instant) -> Instant {
        sent + self.duration - self.grace / 2
    }

    /// When the holder renews after a renewal sent at `sent`.
    fn renew_at(&self, sent: Instant) -> Instant {
        sent + (self.duration - self.grace)
    }

    /// How long to wait before trying again after a request failed.
    fn retry_after(&self) -> Duration {
        (self.grace / 4).max(Duration::from_millis(250))
    }
}

/// This replica's part in an election: whether it may act, kept current by a background task.
pub struct Leadership {
    acting: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Joins the election: starts following the Lease and contending for it.
    pub async fn join(client: Client, election: Election) -> Result<Leadership, Error> {
        election.seconds()?;
        let (acting_tx, acting) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
        let task = tokio::spawn(contend(election, leases, acting_tx, stopped));
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

/// What this replica knows of the Lease, from its watch and its own writes.
#[derive(Debug, Default)]
struct Seen {
    /// The first list has been read: `lease` is what the API server holds.
    synced: bool,
    /// The Lease as last seen; `None` while it does not exist.
    lease: Option<Lease>,
    /// When the Lease last changed (a new resourceVersion), by this replica's clock.
    changed_at: Option<Instant>,
    /// The Lease a relist is reading, until it is done.
    relisting: Option<Option<Lease>>,
}

impl Seen {
    /// Takes in what the API server answered or the watch showed; reports a change.
    fn saw(&mut self, lease: Option<Lease>, now: Instant) -> bool {
        let version =
            |l: &Option<Lease>| l.as_ref().and_then(|l| l.metadata.resource_version.clone());
        let changed = version(&lease) != version(&self.lease) || self.changed_at.is_none();
        if changed {
            self.changed_at = Some(now);
        }
        self.lease = lease;
        changed
    }

    /// Takes in one event of the watch; reports whether the Lease changed.
    fn apply(&mut self, event: watcher::Event<Lease>, now: Instant) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(None);
                false
            }
            watcher::Event::InitApply(lease) => {
                self.relisting = Some(Some(lease));
                false
            }
            watcher::Event::InitDone => {
                let lease = self.relisting.take().flatten();
                self.synced = true;
                self.saw(lease, now)
            }
            watcher::Event::Apply(lease) => self.saw(Some(lease), now),
            watcher::Event::Delete(_) => self.saw(None, now),
        }
    }

    /// The holder the Lease names, if any.
    fn holder(&self) -> Option<&str> {
        self.lease
            .as_ref()?
            .spec
            .as_ref()?
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty())
    }
}

/// This replica's hold on the Lease, from its last successful write.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Acting stops here unless a renewal succeeds first.
    until: Instant,
    /// The next renewal is due here.
    renew_at: Instant,
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing until the watch shows something, or until the given moment.
    Wait(Option<Instant>),
    /// The Lease does not exist: create it, held by this replica.
    Create,
    /// The Lease is free or expired: take it.
    Take,
    /// Renew the Lease this replica holds.
    Renew,
}

/// Decides the next step from what is known.
fn next_step(election: &Election, seen: &Seen, hold: Option<Hold>, now: Instant) -> Step {
    if !seen.synced {
        return Step::Wait(None);
    }
    let Some(_) = &seen.lease else {
        return Step::Create;
    };
    match (seen.holder(), hold) {
        (Some(holder), Some(hold)) if holder == election.identity => {
            if now >= hold.renew_at {
                Step::Renew
            } else {
                Step::Wait(Some(hold.renew_at))
            }
        }
        // Free, or named as this replica without a hold (a write whose answer was lost,
        // or this identity before a restart): take it, to act only after a write succeeds.
        (None, _) => Step::Take,
        (Some(holder), _) if holder == election.identity => Step::Take,
        (Some(_), _) => {
            let changed = seen.changed_at.unwrap_or(now);
            let expires = changed + election.duration;
            if now >= expires {
                Step::Take
            } else {
                Step::Wait(Some(expires))
            }
        }
    }
}

/// The Lease held by this replica, renewed at `now`: `base` with its holder, times and
/// transitions set.
fn held_by(election: &Election, base: Option<&Lease>, now: Timestamp) -> Lease {
    let mut lease = base.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(election.lease.clone()),
            namespace: Some(election.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if previous.as_deref() != Some(election.identity.as_str()) {
        spec.acquire_time = Some(MicroTime(now));
        if previous.is_some() || spec.lease_transitions.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.holder_identity = Some(election.identity.clone());
    spec.lease_duration_seconds = i32::try_from(election.duration.as_secs()).ok();
    spec.renew_time = Some(MicroTime(now));
    spec.lease_transitions.get_or_insert(0);
    lease
}

/// Follows the Lease and contends for it until `stop` is set, publishing whether this
/// replica may act; then releases the Lease if it holds it.
async fn contend(
    election: Election,
    leases: Api<Lease>,
    acting: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", election.lease));
    let mut events = watcher(leases.clone(), config).default_backoff().boxed();
    let mut seen = Seen::default();
    let mut hold: Option<Hold> = None;
    // After a failed write: not again before this, unless the Lease changes meanwhile.
    let mut not_before: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if hold.is_some_and(|h| now >= h.until || seen.holder() != Some(&election.identity)) {
            hold = None;
        }
        publish(&acting, &election, hold.is_some());
        let step = next_step(&election, &seen, hold, now);
        let mut wake = match step {
            Step::Wait(at) => at,
            _ => Some(not_before.unwrap_or(now).max(now)),
        };
        if let Some(h) = hold {
            wake = Some(wake.map_or(h.until, |w| w.min(h.until)));
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if seen.apply(event, Instant::now()) {
                        not_before = None;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(lease = %election.lease, %error, "watching the lease failed; retrying");
                }
                None => {
                    tracing::error!(lease = %election.lease, "the lease watch ended; standing by");
                    break;
                }
            },
            () = sleep_until(wake) => {
                if matches!(step, Step::Wait(_)) {
                    continue;
                }
                let sent = Instant::now();
                let lease = held_by(&election, seen.lease.as_ref(), Timestamp::now());
                let write = async {
                    if step == Step::Create {
                        leases.create(&PostParams::default(), &lease).await
                    } else {
                        leases.replace(&election.lease, &PostParams::default(), &lease).await
                    }
                };
                // A write gets half a grace at most, and never outlasts the hold: a
                // renewal hanging on a stalled connection must not keep the holder acting.
                let mut deadline = sent + election.grace / 2;
                if let Some(h) = hold {
                    deadline = deadline.min(h.until);
                }
                let Ok(answer) = tokio::time::timeout_at(deadline, write).await else {
                    tracing::warn!(lease = %election.lease, ?step, "writing the lease took too long");
                    not_before = Some(Instant::now());
                    continue;
                };
                match answer {
                    Ok(written) => {
                        seen.saw(Some(written), Instant::now());
                        hold = Some(Hold {
                            until: election.acting_until(sent),
                            renew_at: election.renew_at(sent),
                        });
                        not_before = None;
                    }
                    Err(error) => {
                        // A conflict means the Lease changed since it was read: the watch
                        // brings the new one. A hold stays until it runs out on its own: no
                        // other replica can take the Lease before then.
                        let lost_race = matches!(&error, kube::Error::Api(status)
                            if status.is_conflict() || status.is_already_exists());
                        if lost_race {
                            tracing::debug!(lease = %election.lease, ?step, "the lease changed meanwhile");
                        } else {
                            tracing::warn!(lease = %election.lease, ?step, %error, "writing the lease failed");
                        }
                        not_before = Some(Instant::now() + election.retry_after());
                    }
                }
            }
        }
    }
    acting.send_replace(false);
    if hold.is_some() || seen.holder() == Some(&election.identity) {
        release(&election, &leases, seen.lease).await;
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Says whether this replica may act, logging each change.
fn publish(acting: &watch::Sender<bool>, election: &Election, may_act: bool) {
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
}

/// Writes the Lease with no holder, so a standby's watch sees it free at once.
async fn release(election: &Election, leases: &Api<Lease>, lease: Option<Lease>) {
    let Some(mut lease) = lease else { return };
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    match leases
        .replace(&election.lease, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %election.lease, "released the lease"),
        Err(error) => {
            tracing::warn!(lease = %election.lease, %error, "releasing the lease failed; it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_testkit::kube::ApiServer;

    const NS: &str = "default";

    fn election(identity: &str) -> Election {
        Election {
            lease: "trainyard".to_owned(),
            namespace: NS.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }

    fn lease(holder: Option<&str>, version: &str) -> Lease {
        let mut lease = held_by(&election("x"), None, Timestamp::now());
        lease.metadata.resource_version = Some(version.to_owned());
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = holder.map(str::to_owned);
        }
        lease
    }

    fn synced(lease: Option<Lease>, changed_at: Instant) -> Seen {
        Seen {
            synced: true,
            lease,
            changed_at: Some(changed_at),
            relisting: None,
        }
    }

    #[test]
    fn a_grace_as_long_as_the_lease_is_refused() {
        let mut timing = election("a");
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
        assert_eq!(election("a").seconds().unwrap(), (15, 5));
    }

    #[test]
    fn the_holder_renews_every_duration_minus_grace_and_acts_until_half_a_grace_before_expiry() {
        let e = election("a");
        let sent = Instant::now();
        assert_eq!(e.renew_at(sent) - sent, Duration::from_secs(10));
        assert_eq!(e.acting_until(sent) - sent, Duration::from_millis(12_500));
        // A standby takes over a full duration after it last saw a change, which is after
        // the renewal was sent: the holder stopped acting half a grace before.
        assert!(e.acting_until(sent) + e.grace / 2 <= sent + e.duration);
    }

    #[test]
    fn nothing_is_decided_before_the_first_list() {
        let seen = Seen::default();
        assert_eq!(
            next_step(&election("a"), &seen, None, Instant::now()),
            Step::Wait(None)
        );
    }

    #[test]
    fn a_missing_lease_is_created_and_a_free_one_taken() {
        let now = Instant::now();
        let e = election("a");
        assert_eq!(next_step(&e, &synced(None, now), None, now), Step::Create);
        let free = synced(Some(lease(None, "7")), now);
        assert_eq!(next_step(&e, &free, None, now), Step::Take);
        let empty = synced(Some(lease(Some(""), "7")), now);
        assert_eq!(next_step(&e, &empty, None, now), Step::Take);
    }

    #[test]
    fn another_holders_lease_is_taken_only_a_full_duration_after_it_last_changed() {
        let e = election("a");
        let changed = Instant::now();
        let seen = synced(Some(lease(Some("b"), "7")), changed);
        assert_eq!(
            next_step(&e, &seen, None, changed + Duration::from_secs(14)),
            Step::Wait(Some(changed + e.duration))
        );
        assert_eq!(next_step(&e, &seen, None, changed + e.duration), Step::Take);
    }

    #[test]
    fn the_holder_waits_for_its_renewal_time_then_renews() {
        let e = election("a");
        let now = Instant::now();
        let seen = synced(Some(lease(Some("a"), "7")), now);
        let hold = Hold {
            until: e.acting_until(now),
            renew_at: e.renew_at(now),
        };
        assert_eq!(
            next_step(&e, &seen, Some(hold), now),
            Step::Wait(Some(hold.renew_at))
        );
        assert_eq!(next_step(&e, &seen, Some(hold), hold.renew_at), Step::Renew);
        // Named as holder without a hold of its own (a restart): it takes it again first.
        assert_eq!(next_step(&e, &seen, None, now), Step::Take);
    }

    #[test]
    fn a_change_is_a_new_resource_version_and_a_relist_of_the_same_lease_is_none() {
        let start = Instant::now();
        let mut seen = Seen::default();
        seen.apply(watcher::Event::Init, start);
        seen.apply(watcher::Event::InitApply(lease(Some("b"), "7")), start);
        assert!(!seen.synced, "not synced before the list is done");
        assert!(seen.apply(watcher::Event::InitDone, start));
        assert_eq!(seen.holder(), Some("b"));
        let later = start + Duration::from_secs(3);
        seen.apply(watcher::Event::Init, later);
        seen.apply(watcher::Event::InitApply(lease(Some("b"), "7")), later);
        assert!(!seen.apply(watcher::Event::InitDone, later));
        assert_eq!(seen.changed_at, Some(start));
        assert!(seen.apply(watcher::Event::Apply(lease(Some("b"), "8")), later));
        assert_eq!(seen.changed_at, Some(later));
        assert!(seen.apply(watcher::Event::Delete(lease(Some("b"), "8")), later));
        assert!(seen.lease.is_none());
    }

    #[test]
    fn taking_from_another_holder_counts_a_transition_and_renewing_does_not() {
        let e = election("a");
        let mut theirs = lease(Some("b"), "7");
        if let Some(spec) = theirs.spec.as_mut() {
            spec.lease_transitions = Some(2);
        }
        let taken = held_by(&e, Some(&theirs), Timestamp::now());
        let spec = taken.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        let renewed = held_by(&e, Some(&taken), Timestamp::now());
        assert_eq!(renewed.spec.unwrap().lease_transitions, Some(3));
    }

    fn client(server: &ApiServer) -> Client {
        let config = kube::Config::new(server.url().parse().expect("server URL"));
        Client::try_from(config).expect("client")
    }

    async fn until_acting(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|a| *a == want))
            .await
            .expect("in time")
            .expect("the election runs");
    }

    fn lease_writes(server: &ApiServer) -> usize {
        server
            .requests()
            .iter()
            .filter(|r| r.resource == "leases" && r.verb != "watch" && r.verb != "list")
            .count()
    }

    #[tokio::test]
    async fn one_replica_leads_renews_with_one_request_each_time_and_hands_over_on_release() {
        let server = ApiServer::start().await.expect("stand-in API server");
        let timing = |identity| Election {
            duration: Duration::from_secs(4),
            grace: Duration::from_secs(2),
            ..election(identity)
        };
        let a = Leadership::join(client(&server), timing("a"))
            .await
            .unwrap();
        let mut a_acting = a.subscribe();
        until_acting(&mut a_acting, true).await;
        let b = Leadership::join(client(&server), timing("b"))
            .await
            .unwrap();
        let mut b_acting = b.subscribe();

        // Over 5 s the holder renews twice or three times (every 2 s), one request each; the
        // standby, watching, sends nothing.
        let before = lease_writes(&server);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let writes = lease_writes(&server) - before;
        assert!((2..=3).contains(&writes), "{writes} lease requests in 5 s");
        assert!(*a_acting.borrow() && !*b_acting.borrow());
        let lease = server.get("leases", NS, "trainyard").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "a");

        // The release is seen through the watch: the standby takes over well within the
        // second, long before the 4 s the Lease would take to expire.
        a.step_down().await;
        let released = Instant::now();
        assert!(!*a_acting.borrow());
        until_acting(&mut b_acting, true).await;
        let takeover = released.elapsed();
        assert!(
            takeover < Duration::from_secs(1),
            "took over after {takeover:?}"
        );
        let lease = server.get("leases", NS, "trainyard").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        b.step_down().await;
    }

    #[tokio::test]
    async fn a_holder_cut_off_from_the_api_server_stops_acting_before_the_lease_expires() {
        let server = ApiServer::start().await.expect("stand-in API server");
        let e = Election {
            duration: Duration::from_secs(3),
            grace: Duration::from_secs(2),
            ..election("a")
        };
        let a = Leadership::join(client(&server), e).await.unwrap();
        let mut acting = a.subscribe();
        until_acting(&mut acting, true).await;
        let renewed = server.get("leases", NS, "trainyard").unwrap()["spec"]["renewTime"].clone();
        // Every renewal from now on fails.
        server.fail_next(10_000, 503, None);
        let cut = Instant::now();
        until_acting(&mut acting, false).await;
        // It stopped by the last renewal's time + duration − grace/2 = 2 s, before a
        // standby could take over (3 s after it saw the last renewal).
        assert!(
            cut.elapsed() < Duration::from_secs(3),
            "{:?}",
            cut.elapsed()
        );
        server.clear_faults();
        until_acting(&mut acting, true).await;
        let lease = server.get("leases", NS, "trainyard").unwrap();
        assert_ne!(lease["spec"]["renewTime"], renewed, "it renewed again");
        a.step_down().await;
    }
}
