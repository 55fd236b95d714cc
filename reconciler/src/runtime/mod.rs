//! The running service: six sub-reconcilers run in order, each over its own objects, and this
//! module, which owns leadership, the loop's sleep and shutdown, and nothing else.
//!
//! - [`follow`]: the followed branch → applied commits (the declared state);
//! - [`events`]: queued forge events → pull request plans, comment commands, previews;
//! - [`ticks`]: declared schedules → ticks and the runs they fire, exactly once;
//! - [`runs`]: unfinished runs → step attempts handed to the executor and their outcomes;
//! - [`register`]: runs whose steps all succeeded → model versions behind their gates;
//! - [`deliver`]: the outbox → the forge.
//!
//! Each is level-triggered, as kube-runtime controllers and Flux's sub-reconcilers are: a
//! pass derives what to do from the store and from what the executor observes now, never
//! from what this process remembers doing, so a crash, a restart or a lost lease at any line
//! changes nothing but timing. Every object is reconciled on its own: a transient error
//! requeues that object with backoff, a permanent one is recorded on its row where people
//! look, and neither stops the others. A pass answers when it wants to run again; the loop
//! sleeps until the earliest of those, a tick, a webhook, a job event, a moved branch or a
//! request the command line announced (run, retry, cancel, backfill: see
//! [`crate::store::RequestSignals`]), so an idle service does nothing at all.

mod backfill;
mod deliver;
mod events;
mod follow;
mod job;
mod register;
mod runs;
mod ticks;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use thiserror::Error;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::definitions::{Definitions, DefinitionsError, SharedDefinitions};
use crate::execute::{Executor, JobEvent};
use crate::metrics::Metrics;
use crate::pulls::Pulls;
use crate::report::bodies::finished_run_reports;
use crate::report::{self, Forge, StatusState, status_report};
use crate::source::{BranchWatcher, Repo, SourceError};
use crate::store::{RunState, Store, StoreError};

/// Errors that stop the service from starting, or `--once` from finishing.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The repository could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Definitions could not be evaluated.
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
}

impl RuntimeError {
    /// Whether trying again later may help.
    fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Store(error) => error.is_transient(),
            RuntimeError::Source(error) => error.is_transient(),
            RuntimeError::Definitions(DefinitionsError::Source(error)) => error.is_transient(),
            RuntimeError::Definitions(_) => false,
        }
    }
}

/// Why reconciling one object failed, as kube-runtime's `error_policy` sees it: a transient
/// error requeues the object with backoff; a permanent one is recorded on its row (a run
/// fails with it, a schedule stalls with it) and shown where people look.
#[derive(Debug)]
enum ObjectError {
    /// Trying again may help (the store, the executor or the artifact store failed).
    Transient(String),
    /// The object cannot go on, for this reason.
    Permanent(String),
}

impl From<StoreError> for ObjectError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            ObjectError::Transient(error.to_string())
        } else {
            ObjectError::Permanent(error.to_string())
        }
    }
}

impl From<SourceError> for ObjectError {
    fn from(error: SourceError) -> Self {
        if error.is_transient() {
            ObjectError::Transient(error.to_string())
        } else {
            ObjectError::Permanent(error.to_string())
        }
    }
}

/// The executor failing to answer is transient; a job it refuses is handled where it is
/// submitted.
impl From<crate::execute::ExecError> for ObjectError {
    fn from(error: crate::execute::ExecError) -> Self {
        ObjectError::Transient(error.to_string())
    }
}

/// The artifact store failing to answer is transient; what is missing from it is said
/// where it is looked for.
impl From<crate::artifacts::Error> for ObjectError {
    fn from(error: crate::artifacts::Error) -> Self {
        ObjectError::Transient(error.to_string())
    }
}

/// Wakes the loop from outside (the HTTP server after storing a webhook delivery), so that
/// forge events are taken at once instead of at the next poll. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// Says forge events are waiting.
    pub fn forge_events(&self) {
        self.0.notify_one();
    }

    /// Completes when forge events were said to be waiting.
    pub(crate) async fn notified(&self) {
        self.0.notified().await;
    }
}

/// Whether the loop is stuck, for liveness: the time since the pass in progress began. A loop
/// asleep between passes is alive however long it sleeps (until the next tick, for hours).
#[derive(Debug, Clone)]
pub struct LoopHealth {
    origin: Instant,
    /// Milliseconds after `origin`, plus one, at which the running pass began; 0 when idle.
    busy_since: Arc<AtomicU64>,
}

impl Default for LoopHealth {
    fn default() -> Self {
        LoopHealth {
            origin: Instant::now(),
            busy_since: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl LoopHealth {
    /// A pass began.
    pub fn busy(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.busy_since.store(now + 1, Ordering::Relaxed);
    }

    /// The pass ended.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the pass in progress has run; `None` between passes.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }
}

/// What one pass of a sub-reconciler came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pass {
    /// Whether it wrote something the loops after it read (a commit applied, a run created
    /// or finished, a report enqueued): they run in this same pass of the loop.
    changed: bool,
    /// When it wants to run again (an object requeued, the next tick, the next poll); `None`
    /// until something wakes it.
    next: Option<Instant>,
}

impl Pass {
    /// Asks for another pass at `at`, keeping an earlier one.
    fn again_at(&mut self, at: Instant) {
        self.next = Some(self.next.map_or(at, |n| n.min(at)));
    }

    /// Asks for another pass after `delay`.
    fn again_after(&mut self, delay: Duration) {
        self.again_at(Instant::now() + delay);
    }
}

/// Per-object backoff for transient errors, as kube-runtime's `error_policy` decides the
/// requeue: 1 s, 2 s, 4 s … up to five minutes, reset by a success.
#[derive(Debug, Default)]
struct Backoff {
    failures: HashMap<String, u32>,
}

/// Longest wait before an object that failed is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Backoff {
    /// Records a failure of `key`; returns how long to wait before trying it again.
    fn failed(&mut self, key: &str) -> Duration {
        let failures = self.failures.entry(key.to_owned()).or_insert(0);
        let delay = Duration::from_secs(1u64 << (*failures).min(9)).min(MAX_BACKOFF);
        *failures += 1;
        delay
    }

    /// Records that `key` reconciled; its next failure waits a second again.
    fn succeeded(&mut self, key: &str) {
        self.failures.remove(key);
    }

    /// Forgets every object, for a replica taking over.
    fn clear(&mut self) {
        self.failures.clear();
    }
}

/// Set once a shutdown has begun; passes look at it between objects and start nothing new.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A stop that never comes (`--once`, tests).
    fn never() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a shutdown has begun.
    async fn wait(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Completes when the command line announced a request; never without a listener.
async fn announced(requests: &mut Option<crate::store::RequestSignals>) {
    match requests {
        Some(signals) => signals.announced().await,
        None => std::future::pending().await,
    }
}

/// The sub-reconcilers, in the order a pass of the loop runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Loop {
    Follow,
    Events,
    Ticks,
    Runs,
    Register,
    Deliver,
}

impl Loop {
    const ALL: [Loop; 6] = [
        Loop::Follow,
        Loop::Events,
        Loop::Ticks,
        Loop::Runs,
        Loop::Register,
        Loop::Deliver,
    ];

    fn name(self) -> &'static str {
        match self {
            Loop::Follow => "follow",
            Loop::Events => "forge_events",
            Loop::Ticks => "ticks",
            Loop::Runs => "runs",
            Loop::Register => "register",
            Loop::Deliver => "deliver",
        }
    }

    /// The loops that read what this one writes.
    fn downstream(self) -> &'static [Loop] {
        match self {
            Loop::Follow => &[Loop::Ticks, Loop::Runs, Loop::Deliver],
            Loop::Events => &[Loop::Runs, Loop::Deliver],
            Loop::Ticks => &[Loop::Runs, Loop::Deliver],
            Loop::Runs => &[Loop::Register, Loop::Deliver],
            Loop::Register => &[Loop::Deliver],
            Loop::Deliver => &[],
        }
    }
}

/// When each sub-reconciler is due next; `None`: not until something wakes it.
#[derive(Debug, Default)]
struct Due(HashMap<Loop, Instant>);

impl Due {
    fn now(&mut self, what: Loop) {
        self.0.insert(what, Instant::now());
    }

    fn all_now(&mut self) {
        for what in Loop::ALL {
            self.now(what);
        }
    }

    fn set(&mut self, what: Loop, at: Option<Instant>) {
        match at {
            Some(at) => self.0.insert(what, at),
            None => self.0.remove(&what),
        };
    }

    fn is_due(&self, what: Loop, now: Instant) -> bool {
        self.0.get(&what).is_some_and(|at| *at <= now)
    }

    fn earliest(&self) -> Option<Instant> {
        self.0.values().min().copied()
    }
}

/// What the service runs over.
pub struct Parts<E: Executor, F: Forge> {
    /// What the command line configured.
    pub config: Config,
    /// The followed repository.
    pub repo: Repo,
    /// The store.
    pub store: Store,
    /// Where steps run.
    pub executor: E,
    /// Job events the executor pushes (its constructor's channel).
    pub job_events: UnboundedReceiver<JobEvent>,
    /// Where reports go.
    pub forge: F,
    /// Where artifacts and logs are kept.
    pub artifacts: ArtifactStore,
}

/// What a `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceOutcome {
    /// The commit applied.
    pub commit: String,
    /// Runs it drove, with their final state.
    pub runs: Vec<(i64, RunState)>,
}

/// The service: the sub-reconcilers and the loop that runs them.
pub struct Runtime<E: Executor, F: Forge> {
    follow: follow::Follow,
    events: events::ForgeEvents<F>,
    ticks: ticks::Ticks,
    runs: runs::Runs<E>,
    register: register::Register,
    deliver: deliver::Deliver<F>,
    store: Store,
    job_events: UnboundedReceiver<JobEvent>,
    wake: Wake,
    health: LoopHealth,
    metrics: Metrics,
    due: Due,
    poll: Duration,
    shutdown_grace: Duration,
}

impl<E: Executor, F: Forge> Runtime<E, F> {
    /// A service over its parts; the declared state is read back from the store.
    pub async fn new(parts: Parts<E, F>) -> Result<Self, RuntimeError> {
        let Parts {
            config,
            repo,
            store,
            executor,
            job_events,
            forge,
            artifacts,
        } = parts;
        // Parsed files and verdicts outlive the process, so a restart parses what changed;
        // the cache is read on another core while the store hands back the declared state.
        let loading = {
            let (policy, dir) = (config.policy.clone(), config.data_dir.join("cache"));
            tokio::task::spawn_blocking(move || {
                Definitions::new(policy).map(|d| d.with_cache(&dir))
            })
        };
        let declared = follow::declared_state(&store).await?;
        let definitions = match loading.await {
            Ok(definitions) => SharedDefinitions::new(definitions?),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        let forge = Arc::new(forge);
        let follow = follow::Follow::new(
            repo.clone(),
            store.clone(),
            definitions.clone(),
            &config,
            declared,
        );
        let pulls = Pulls::new(repo.clone(), store.clone(), definitions, &config)
            .with_check_runs(forge.has_check_runs());
        let mut due = Due::default();
        due.all_now();
        Ok(Runtime {
            follow,
            events: events::ForgeEvents::new(store.clone(), pulls, forge.clone(), &config),
            ticks: ticks::Ticks::new(store.clone()),
            runs: runs::Runs::new(store.clone(), executor, artifacts.clone(), repo, &config),
            register: register::Register::new(store.clone(), artifacts, &config),
            deliver: deliver::Deliver::new(store.clone(), forge),
            store,
            job_events,
            wake: Wake::default(),
            health: LoopHealth::default(),
            metrics: Metrics::default(),
            due,
            poll: config.poll,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The handle that wakes the loop when forge events are stored.
    pub fn wake(&self) -> Wake {
        self.wake.clone()
    }

    /// The loop's health, for the liveness endpoint.
    pub fn health(&self) -> LoopHealth {
        self.health.clone()
    }

    /// The service's metrics, for `/metrics`.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Applies the head, runs what it started (and any run already waiting, such as a
    /// queued manual run) to completion, delivers every report, and returns the commit and
    /// the final state of those runs.
    pub async fn run_once(&mut self) -> Result<OnceOutcome, RuntimeError> {
        let (_stopper, stop) = Stop::never();
        let commit = self.follow.apply_head().await?;
        let mut started = self.store.unfinished_run_ids().await?;
        started.sort_unstable();
        loop {
            let now = Instant::now();
            self.due.now(Loop::Runs);
            self.due.now(Loop::Register);
            self.pass_of(&[Loop::Runs, Loop::Register], &stop).await;
            if self.store.unfinished_run_ids().await?.is_empty() {
                break;
            }
            let until = self
                .due
                .earliest()
                .map_or(now + Duration::from_secs(1), |at| {
                    at.min(now + Duration::from_secs(1))
                });
            tokio::select! {
                Some(event) = self.job_events.recv() => self.runs.note(event),
                () = tokio::time::sleep_until(until) => {}
            }
            while let Ok(event) = self.job_events.try_recv() {
                self.runs.note(event);
            }
        }
        self.deliver.drain(&stop).await?;
        let mut runs = Vec::new();
        for id in started {
            if let Some(run) = self.store.run(id).await? {
                runs.push((id, run.state));
            }
        }
        Ok(OnceOutcome { commit, runs })
    }

    /// Follows the branch until `shutdown` completes, running each sub-reconciler when it
    /// is due or something it reads changed. `watch`, when given, says when the branch may
    /// have moved; without it (a remote, or a file system without events) the branch is
    /// looked at every poll.
    ///
    /// With `leadership` (`None`: always the leader) the loop acts only while it says
    /// `true`. Losing it stops the pass at once: every write is its own transaction, so
    /// stopping anywhere is as harmless as a crash. Gaining it starts from what the store
    /// says, since another replica acted meanwhile.
    ///
    /// A shutdown starts nothing new, lets the pass in progress finish its writes (a report
    /// in flight to the forge is dropped, to be delivered after the restart), waits up to
    /// the configured grace for steps that run on this machine, and records those still
    /// running as interrupted by the shutdown, so the next start runs them again without
    /// counting it against their retries.
    pub async fn serve(
        &mut self,
        mut watch: Option<BranchWatcher>,
        mut leadership: Option<watch::Receiver<bool>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (stopper, stop) = Stop::never();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stopper.send(true);
        });
        let mut leading = leadership.is_none();
        self.metrics.leader.set(i64::from(leading));
        let mut waiting = stop.clone();
        let mut requests = match self.store.request_signals().await {
            Ok(signals) => Some(signals),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot listen for requests from the command line: they are acted on \
                     at the next pass that something else wakes"
                );
                None
            }
        };
        loop {
            if stop.requested() {
                break;
            }
            if !leading {
                tokio::select! {
                    () = gained(&mut leadership) => {
                        self.take_over().await;
                        leading = true;
                        self.metrics.leader.set(1);
                    }
                    // Outcomes of jobs started while leading: the leader reads them from the
                    // store and the executor.
                    Some(_) = self.job_events.recv() => {}
                    () = waiting.wait() => break,
                }
                continue;
            }
            if self.watch_less(&watch) {
                self.follow_every_poll();
            }
            let lost_it = tokio::select! {
                biased;
                () = lost(&mut leadership) => true,
                () = self.pass(&stop) => false,
            };
            if lost_it {
                leading = false;
                self.stand_by();
                continue;
            }
            let until = self.due.earliest();
            let sleep = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let moved = async {
                match watch.as_mut() {
                    Some(watcher) => watcher.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = moved => self.due.now(Loop::Follow),
                () = self.wake.notified() => self.due.now(Loop::Events),
                () = announced(&mut requests) => {
                    // A request may queue or cancel a run (runs) or backfill ticks (ticks).
                    self.due.now(Loop::Ticks);
                    self.due.now(Loop::Runs);
                }
                Some(event) = self.job_events.recv() => {
                    self.runs.note(event);
                    while let Ok(event) = self.job_events.try_recv() {
                        self.runs.note(event);
                    }
                    self.due.now(Loop::Runs);
                }
                () = lost(&mut leadership) => {
                    leading = false;
                    self.stand_by();
                }
                () = waiting.wait() => break,
            }
        }
        if leading {
            self.shut_down().await;
        }
    }

    /// Whether nothing says when the branch moves, so it must be polled.
    fn watch_less(&self, watch: &Option<BranchWatcher>) -> bool {
        watch.is_none() || self.follow.remote()
    }

    /// Makes sure the branch is looked at within a poll.
    fn follow_every_poll(&mut self) {
        let latest = Instant::now() + self.poll;
        match self.due.0.get(&Loop::Follow) {
            Some(at) if *at <= latest => {}
            _ => self.due.set(Loop::Follow, Some(latest)),
        }
    }

    /// One pass of the loop: every sub-reconciler that is due, in order.
    async fn pass(&mut self, stop: &Stop) {
        self.pass_of(&Loop::ALL, stop).await;
    }

    /// Runs those of `loops` that are due, in order; each that changed something makes the
    /// loops that read it due at once.
    async fn pass_of(&mut self, loops: &[Loop], stop: &Stop) {
        self.health.busy();
        for &what in loops {
            if stop.requested() {
                break;
            }
            if !self.due.is_due(what, Instant::now()) {
                continue;
            }
            self.metrics.pass(what.name());
            let pass = match what {
                Loop::Follow => self.follow.reconcile(stop).await,
                Loop::Events => {
                    let (pass, pushed) = self.events.reconcile(stop).await;
                    if pushed {
                        self.due.now(Loop::Follow);
                    }
                    pass
                }
                Loop::Ticks => self.ticks.reconcile(Utc::now(), stop).await,
                Loop::Runs => self.runs.reconcile(stop).await,
                Loop::Register => self.register.reconcile(stop).await,
                Loop::Deliver => self.deliver.reconcile(stop).await,
            };
            let errors = self.errors_of(what);
            self.metrics.failed(what.name(), errors);
            self.due.set(what, pass.next);
            if pass.changed {
                for &next in what.downstream() {
                    self.due.now(next);
                }
            }
        }
        self.health.idle();
    }

    /// How many objects `what` failed on in its last pass.
    fn errors_of(&mut self, what: Loop) -> u64 {
        match what {
            Loop::Follow => self.follow.take_errors(),
            Loop::Events => self.events.take_errors(),
            Loop::Ticks => self.ticks.take_errors(),
            Loop::Runs => self.runs.take_errors(),
            Loop::Register => self.register.take_errors(),
            Loop::Deliver => self.deliver.take_errors(),
        }
    }

    /// Stops acting on losing the lease: the next leader follows everything through the
    /// store.
    fn stand_by(&mut self) {
        tracing::info!("standing by: no longer acting");
        self.metrics.leader.set(0);
    }

    /// Forgets what this process knew from acting earlier, for a replica taking over: the
    /// declared state as the store has it now, and every loop due at once.
    async fn take_over(&mut self) {
        if let Err(error) = self.follow.reload().await {
            tracing::error!(%error, "reading the declared state to take over failed; following the branch rebuilds it");
        }
        self.runs.take_over();
        self.ticks.take_over();
        self.due.all_now();
    }

    /// What a shutdown does once the loop has stopped: steps that run on this machine get
    /// the grace period to finish, then are stopped and recorded as interrupted.
    async fn shut_down(&mut self) {
        let deadline = Instant::now() + self.shutdown_grace;
        let (_stopper, stop) = Stop::never();
        loop {
            // Outcomes that came in meanwhile are recorded first.
            while let Ok(event) = self.job_events.try_recv() {
                self.runs.note(event);
            }
            self.health.busy();
            let in_flight = self.runs.record_outcomes(&stop).await;
            self.health.idle();
            if !self.runs.runs_here() || in_flight == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                Some(event) = self.job_events.recv() => self.runs.note(event),
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.runs.interrupt_local_steps().await;
    }
}

/// The monotonic instant of wall-clock time `at`, a millisecond late so that a pass woken for
/// it finds it due.
fn instant_of(at: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> Instant {
    let ahead = (at - now).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + ahead + Duration::from_millis(1)
}

/// Ends run `id` as `state` with its reports: its commit status, and the comment a preview
/// or a merged change keeps. A scheduled run's failure counts toward pausing its schedule;
/// a schedule that cannot be read is stalled with the reason rather than pausing silently
/// never. Returns false if the run had already ended.
async fn finish_run(
    store: &Store,
    instance: Option<&str>,
    id: i64,
    state: RunState,
    message: &str,
) -> Result<bool, StoreError> {
    let Some(run) = store.run(id).await? else {
        return Ok(false);
    };
    let context = report::context(instance, "run", Some(&run.pipeline));
    let status = if state == RunState::Succeeded {
        StatusState::Success
    } else {
        StatusState::Failure
    };
    let mut reports = vec![status_report(&run.commit_sha, &context, status, message)];
    reports.extend(finished_run_reports(store, &run, state, message).await?);
    let pause_after = match &run.schedule {
        Some(name) => match store.schedule(name).await {
            Ok(row) => row.and_then(|row| row.definition.spec.pause_after_failures),
            Err(error @ StoreError::Corrupt { .. }) => {
                let why = format!(
                    "its stored definition cannot be read ({error}); the next commit that                      declares it repairs it"
                );
                store.stall_schedule(name, &why, Utc::now()).await?;
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    store
        .finish_run(id, state, message, Utc::now(), &reports, pause_after)
        .await
}

/// Completes when `leadership` says this replica leads (at once without an election); never
/// if the election stopped (stand by for good).
async fn gained(leadership: &mut Option<watch::Receiver<bool>>) {
    let Some(receiver) = leadership else {
        return;
    };
    if receiver.wait_for(|leads| *leads).await.is_err() {
        tracing::error!("leader election stopped; standing by");
        std::future::pending::<()>().await;
    }
}

/// Completes when `leadership` says this replica no longer leads, or the election stopped;
/// never without leadership (always the leader).
async fn lost(leadership: &mut Option<watch::Receiver<bool>>) {
    match leadership {
        Some(receiver) => {
            let _ = receiver.wait_for(|leads| !*leads).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn backoff_doubles_per_object_and_a_success_resets_it() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..4).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8]);
        assert_eq!(backoff.failed("b").as_secs(), 1, "objects back off apart");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a").as_secs(), 1);
        for _ in 0..20 {
            backoff.failed("c");
        }
        assert_eq!(backoff.failed("c"), MAX_BACKOFF);
    }

    #[test]
    fn a_loop_that_changed_something_makes_its_readers_due_and_others_wait() {
        let mut due = Due::default();
        let later = Instant::now() + Duration::from_secs(60);
        due.set(Loop::Ticks, Some(later));
        assert!(!due.is_due(Loop::Ticks, Instant::now()));
        assert!(!due.is_due(Loop::Runs, Instant::now()), "nothing woke it");
        for &next in Loop::Follow.downstream() {
            due.now(next);
        }
        assert!(due.is_due(Loop::Ticks, Instant::now()));
        assert!(due.is_due(Loop::Runs, Instant::now()));
        assert!(!due.is_due(Loop::Events, Instant::now()));
    }

    #[test]
    fn an_idle_loop_is_healthy_however_long_it_sleeps_and_a_long_pass_is_not() {
        let health = LoopHealth::default();
        assert_eq!(health.busy_for(), None);
        health.busy();
        assert!(
            health
                .busy_for()
                .is_some_and(|d| d < Duration::from_secs(5))
        );
        health.idle();
        assert_eq!(health.busy_for(), None);
    }
}
