//! Unfinished runs → step attempts: each pass reads every unfinished run with its steps and
//! open attempts (three queries), asks the executor what it has now, and moves each run on
//! its own: records attempts that ended, hands attempts the executor never accepted to it
//! again, starts the steps that are ready, and ends runs that failed or were cancelled (runs
//! whose steps all succeeded are the registry loop's). A run with finally steps first ends
//! its DAG (recording how), then starts its finally steps, then ends (see [`run_state`]).
//!
//! Nothing here trusts what this process did before. An attempt the store records whose job
//! the executor does not have is handed over again (idempotent by name) while its cause may
//! pass, and fails with the executor's words once it has waited longer than the configured
//! deadline; an attempt the executor accepted and then lost ends with what is known of why.
//! The attempts a pass starts are recorded in one transaction before any is handed over, so
//! a crash between the two leaves attempts the next pass hands over, never steps that run
//! twice.

mod cache;
mod prepare;

use cache::Reuse;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;

use super::job;
use super::{Backoff, ObjectError, Pass, Stop, backfill, finish_run, instant_of};
use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::execute::{ExecError, Executor, JobEvent, JobState, StepJob};
use crate::report::bodies::started_run_reports;
use crate::source::Repo;
use crate::spec::model::instance_of;
use crate::spec::{Pipeline, Settings};
use crate::store::{
    AttemptOutcome, AttemptState, NewArtifact, NewAttempt, OpenAttempt, RunRow, RunState, RunWork,
    StepState, StepWork, Store, StoreError,
};

/// How many submissions are in flight at once; more only queue on the executor's own limits
/// (the cluster client's rate limit).
const SUBMITS_AT_ONCE: usize = 64;
/// Longest wait before a failed attempt is retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How often runs with attempts in flight are looked at without an event, in case one was
/// missed: the executor's events are the fast path, this pass the level check.
const RESYNC: Duration = Duration::from_secs(30);
/// How long a shutdown waits for stopped local steps to be gone.
const STOPPED: Duration = Duration::from_secs(5);

/// A run's pinned pipeline version, with the file that declared it.
struct Pinned {
    pipeline: Arc<Pipeline>,
    file: String,
}

/// An attempt to hand to the executor in this pass: new, or recorded and not accepted yet.
struct Handover {
    job: StepJob,
    /// Whether the attempt is new (recorded in this pass, before the handover).
    new: bool,
    /// The run, for a run whose first attempt this is.
    starts_run: Option<RunRow>,
    /// The step's cache key, for a new attempt that may become a cache entry.
    cache_key: Option<String>,
}

/// The sub-reconciler of runs.
pub(super) struct Runs<E: Executor> {
    store: Store,
    executor: E,
    artifacts: ArtifactStore,
    repo: Repo,
    subdir: String,
    data_dir: PathBuf,
    installation: String,
    instance: Option<String>,
    max_parallel: usize,
    submit_deadline: Duration,
    /// Pinned pipeline versions, immutable once stored: read once.
    pinned: HashMap<(String, String), Arc<Pinned>>,
    /// Repository settings at each commit runs are pinned to.
    settings: HashMap<String, Arc<Settings>>,
    /// Key prefixes of source trees known to be whole in the artifact store, by commit.
    uploaded: HashMap<String, String>,
    /// Digests of the folders steps run in, by commit and pipeline file (see `cache`).
    folders: HashMap<(String, String), Option<String>>,
    /// What the executor said of jobs since the last pass, by name.
    noted: HashMap<String, JobState>,
    backoff: Backoff,
    /// When each job not accepted yet may be handed over again.
    pub(super) handover_at: HashMap<String, tokio::time::Instant>,
    /// Whether the executor's jobs were checked for ones no run here owns since acting began.
    foreign_checked: bool,
    /// Backfilled runs waiting for their turn in this pass.
    held: HashSet<i64>,
    /// When a backfilled run of each schedule last got its turn (only pacing: forgetting it
    /// starts one run early).
    backfill_turns: HashMap<String, tokio::time::Instant>,
    errors: u64,
}

impl<E: Executor> Runs<E> {
    pub(super) fn new(
        store: Store,
        executor: E,
        artifacts: ArtifactStore,
        repo: Repo,
        config: &Config,
    ) -> Self {
        Runs {
            store,
            executor,
            artifacts,
            repo,
            subdir: config.subdir.clone(),
            data_dir: config.data_dir.clone(),
            installation: config.installation.clone(),
            instance: config.instance.clone(),
            max_parallel: config.max_parallel_steps.max(1),
            submit_deadline: config.submit_deadline,
            pinned: HashMap::new(),
            settings: HashMap::new(),
            uploaded: HashMap::new(),
            folders: HashMap::new(),
            noted: HashMap::new(),
            backoff: Backoff::default(),
            handover_at: HashMap::new(),
            foreign_checked: false,
            held: HashSet::new(),
            backfill_turns: HashMap::new(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Keeps what the executor pushed, for the next pass.
    pub(super) fn note(&mut self, event: JobEvent) {
        self.noted.insert(event.name, event.state);
    }

    /// Forgets what this process knew from acting earlier, for a replica taking over.
    pub(super) fn take_over(&mut self) {
        self.noted.clear();
        self.backoff.clear();
        self.handover_at.clear();
        self.foreign_checked = false;
    }

    /// Moves every unfinished run on once.
    pub(super) async fn reconcile(&mut self, stop: &Stop) -> Pass {
        self.pass(stop, true).await.0
    }

    /// Records what the executor says of the attempts in flight, and starts nothing (a
    /// shutdown's last passes); returns how many attempts are still in flight here.
    pub(super) async fn record_outcomes(&mut self, stop: &Stop) -> usize {
        self.pass(stop, false).await.1
    }

    /// Whether steps run on this machine, and so end with the service.
    pub(super) fn runs_here(&self) -> bool {
        self.executor.runs_here()
    }

    async fn pass(&mut self, stop: &Stop, starting: bool) -> (Pass, usize) {
        let mut pass = Pass::default();
        if starting && !self.foreign_checked {
            self.report_foreign_jobs().await;
        }
        let work = match self.store.unfinished_work().await {
            Ok(work) => work,
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed("runs");
                tracing::error!(%error, retry_in = ?delay, "reading the unfinished runs failed");
                pass.again_after(delay);
                return (pass, 0);
            }
        };
        self.backoff.succeeded("runs");
        let noted = std::mem::take(&mut self.noted);
        let in_flight = work
            .iter()
            .filter_map(|(_, w)| w.as_ref().ok())
            .flat_map(|w| &w.steps)
            .filter(|s| s.open.is_some())
            .count();
        let mut budget = if starting {
            self.max_parallel.saturating_sub(in_flight)
        } else {
            0
        };
        let mut handovers = Vec::new();
        let now = Utc::now();
        if starting {
            self.take_turns(&work, &mut pass).await;
        }
        for (id, work) in work {
            if stop.requested() {
                break;
            }
            let key = format!("run-{id}");
            let outcome = match work {
                Ok(work) => {
                    self.reconcile_run(
                        &work,
                        &noted,
                        now,
                        starting,
                        &mut budget,
                        &mut handovers,
                        &mut pass,
                    )
                    .await
                }
                Err(error) => Err(ObjectError::from(error)),
            };
            match outcome {
                Ok(()) => self.backoff.succeeded(&key),
                Err(ObjectError::Transient(why)) => {
                    self.errors += 1;
                    let delay = self.backoff.failed(&key);
                    tracing::warn!(run = id, reason = %why, retry_in = ?delay, "run requeued");
                    pass.again_after(delay);
                }
                Err(ObjectError::Permanent(why)) => {
                    self.errors += 1;
                    tracing::error!(run = id, reason = %why, "run cannot go on");
                    let message = format!("run {id} cannot go on: {why}");
                    match finish_run(
                        &self.store,
                        self.instance.as_deref(),
                        id,
                        RunState::Failed,
                        &message,
                    )
                    .await
                    {
                        Ok(_) => pass.changed = true,
                        Err(error) => {
                            let delay = self.backoff.failed(&key);
                            tracing::error!(run = id, %error, retry_in = ?delay, "failing the run failed");
                            pass.again_after(delay);
                        }
                    }
                }
            }
        }
        // What the executor said of jobs this pass did not look at stays for the next one.
        for (name, state) in noted {
            if state.is_terminal() {
                self.noted.entry(name).or_insert(state);
            }
        }
        if !handovers.is_empty() && !stop.requested() {
            self.hand_over(handovers, &mut pass).await;
        }
        if in_flight > 0 {
            pass.again_after(RESYNC);
        }
        (pass, in_flight)
    }

    /// Moves one run on; what it starts goes to `handovers`.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_run(
        &mut self,
        work: &RunWork,
        noted: &HashMap<String, JobState>,
        now: DateTime<Utc>,
        starting: bool,
        budget: &mut usize,
        handovers: &mut Vec<Handover>,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        let run = &work.run;
        let pinned = self.pinned(run).await?;
        let succeeded = succeeded_steps(&work.steps);
        let dag_end = run.dag_state.map(|state| job::DagEnd {
            state,
            succeeded: &succeeded,
        });
        let mut ended = false;
        for step in &work.steps {
            let Some(open) = &step.open else { continue };
            if run.cancel_requested {
                self.executor.cancel(&open.job).await?;
            }
            let seen = match noted.get(&open.job) {
                Some(state) => Some(state.clone()),
                None => self.executor.observe(&open.job).await?,
            };
            match seen {
                Some(state) if state.is_terminal() => {
                    // The executor had it, so it was accepted, at the latest now: an
                    // answer to the submit that never arrived (a dropped connection after
                    // the create) does not leave the attempt looking never submitted.
                    if open.submitted_at.is_none() {
                        self.store
                            .mark_submitted(&[(run.id, step.step.name.clone(), open.attempt)], now)
                            .await?;
                    }
                    self.finish_attempt(run, &pinned.pipeline, step, open, state, now)
                        .await?;
                    ended = true;
                }
                Some(JobState::Running { since }) => {
                    if open.running_at.is_none() {
                        self.store
                            .mark_running(run.id, &step.step.name, open.attempt, since)
                            .await?;
                    }
                }
                Some(_) => {
                    if open.submitted_at.is_none() {
                        self.store
                            .mark_submitted(&[(run.id, step.step.name.clone(), open.attempt)], now)
                            .await?;
                    }
                }
                None if open.submitted_at.is_some()
                    && self.executor.recheck(&open.job).await?.is_some() =>
                {
                    // The executor's view was behind; it has the job now.
                    pass.again_after(Duration::ZERO);
                }
                None if open.submitted_at.is_some() => {
                    let lost = JobState::Failed {
                        exit_code: None,
                        reason: self.lost_reason().to_owned(),
                    };
                    self.finish_attempt(run, &pinned.pipeline, step, open, lost, now)
                        .await?;
                    ended = true;
                }
                None => {
                    let waited = (now - open.created_at).to_std().unwrap_or_default();
                    if waited > self.submit_deadline || run.cancel_requested {
                        let reason = if run.cancel_requested {
                            "cancelled before it was started".to_owned()
                        } else {
                            format!(
                                "could not be started within {}s: {}",
                                self.submit_deadline.as_secs(),
                                open.message
                                    .as_deref()
                                    .unwrap_or("the executor did not accept it")
                            )
                        };
                        let state = if run.cancel_requested {
                            JobState::Cancelled
                        } else {
                            JobState::Failed {
                                exit_code: None,
                                reason,
                            }
                        };
                        self.finish_attempt(run, &pinned.pipeline, step, open, state, now)
                            .await?;
                        ended = true;
                    } else {
                        let due = self.handover_at.get(&open.job).copied();
                        if !starting {
                            // A shutdown hands nothing over; the next start does.
                        } else if due.is_none_or(|at| at <= tokio::time::Instant::now()) {
                            let end = dag_end.as_ref().filter(|_| step.step.finally);
                            let job = self
                                .job(run, &pinned, &step.step.name, open.attempt, end)
                                .await?;
                            match job {
                                Ok(job) => handovers.push(Handover {
                                    job,
                                    new: false,
                                    starts_run: None,
                                    cache_key: None,
                                }),
                                Err(why) => return Err(ObjectError::Permanent(why)),
                            }
                        } else if let Some(at) = due {
                            pass.again_at(at);
                        }
                    }
                }
            }
        }
        if ended {
            // The steps changed under this pass: the next one decides on what they are now.
            pass.changed = true;
            pass.again_after(Duration::ZERO);
            return Ok(());
        }
        let (dag, finally): (Vec<&StepWork>, Vec<&StepWork>) =
            work.steps.iter().partition(|s| !s.step.finally);
        let Some(dag_state) = run.dag_state else {
            return self
                .move_dag(
                    run, &pinned, &dag, &finally, &succeeded, now, budget, handovers, pass,
                )
                .await;
        };
        let any_open = finally.iter().any(|s| s.open.is_some());
        if run.cancel_requested {
            self.skip_waiting(run, &finally, "the run was cancelled", pass)
                .await?;
        } else if finally.iter().any(|s| s.step.state == StepState::Waiting) {
            if !self.held.contains(&run.id) {
                // Finally steps have no needs: every waiting one is ready.
                let ready = finally.iter().copied();
                self.start_ready(
                    run,
                    &pinned,
                    ready,
                    dag_end.as_ref(),
                    now,
                    budget,
                    handovers,
                    pass,
                )
                .await?;
            }
            return Ok(());
        }
        if any_open {
            return Ok(());
        }
        let dag_failed = dag.iter().find(|s| s.step.state == StepState::Failed);
        let finally_failed = finally.iter().find(|s| s.step.state == StepState::Failed);
        let Some(state) = run_state(dag_state, run.cancel_requested, finally_failed.is_some())
        else {
            // Every step succeeded: the registry loop completes the run.
            return Ok(());
        };
        let mut why: Vec<String> = Vec::new();
        if state == RunState::Cancelled {
            why.push("cancelled".to_owned());
        }
        if let Some(step) = dag_failed.filter(|_| state == RunState::Failed) {
            why.push(failed_message("step", step));
        }
        if let Some(step) = finally_failed {
            why.push(failed_message("finally step", step));
        }
        self.end_run(run, state, &why.join("; "), pass).await
    }

    /// Moves the DAG of a run on: ends it when a step failed or the run was cancelled, once
    /// nothing runs, and starts the steps whose needs succeeded. A run with finally steps
    /// ends its DAG instead of itself (see [`Store::record_dag_end`]).
    #[allow(clippy::too_many_arguments)]
    async fn move_dag(
        &mut self,
        run: &RunRow,
        pinned: &Pinned,
        dag: &[&StepWork],
        finally: &[&StepWork],
        succeeded: &HashSet<&str>,
        now: DateTime<Utc>,
        budget: &mut usize,
        handovers: &mut Vec<Handover>,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        let any_open = dag.iter().any(|s| s.open.is_some());
        let failed = dag.iter().find(|s| s.step.state == StepState::Failed);
        if run.cancel_requested || failed.is_some() {
            let why = if run.cancel_requested {
                "the run was cancelled"
            } else {
                "an earlier step failed"
            };
            self.skip_waiting(run, dag, why, pass).await?;
            if any_open {
                return Ok(());
            }
            let (state, message) = match failed {
                Some(step) if !run.cancel_requested => {
                    (RunState::Failed, failed_message("step", step))
                }
                _ => (RunState::Cancelled, "cancelled".to_owned()),
            };
            if finally.is_empty() {
                return self.end_run(run, state, &message, pass).await;
            }
            return self.end_dag(run, state, pass).await;
        }
        if self.held.contains(&run.id) {
            // A backfilled run waiting for its turn.
            return Ok(());
        }
        if !finally.is_empty() && dag.iter().all(|s| s.step.state == StepState::Succeeded) {
            return self.end_dag(run, RunState::Succeeded, pass).await;
        }
        let mut ready = Vec::new();
        // Instances a matrix step with max_parallel may still start, by step.
        let mut slots: HashMap<&str, usize> = HashMap::new();
        for step in dag {
            let Some(definition) = pinned.pipeline.spec.step(&step.step.name) else {
                return Err(ObjectError::Permanent(format!(
                    "its pipeline version declares no step {:?}",
                    step.step.name
                )));
            };
            if !definition
                .needs
                .iter()
                .all(|n| succeeded.contains(n.as_str()))
            {
                continue;
            }
            if let Some(limit) = definition.max_parallel
                && step.step.state == StepState::Waiting
            {
                let name = definition.name.as_str();
                let left = slots.entry(name).or_insert_with(|| {
                    let running = dag
                        .iter()
                        .filter(|s| instance_of(&s.step.name).0 == name)
                        .filter(|s| s.open.is_some() || s.step.state == StepState::Running)
                        .count();
                    usize::try_from(limit)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(running)
                });
                if *left == 0 {
                    continue;
                }
                *left -= 1;
            }
            ready.push(*step);
        }
        self.start_ready(
            run,
            pinned,
            ready.into_iter(),
            None,
            now,
            budget,
            handovers,
            pass,
        )
        .await
    }

    /// Records that the DAG of `run` ended as `state`; its finally steps start next pass.
    async fn end_dag(
        &self,
        run: &RunRow,
        state: RunState,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        if self
            .store
            .record_dag_end(run.id, state, run.cancel_requested)
            .await?
        {
            tracing::info!(run = run.id, pipeline = %run.pipeline, dag = %state, "the DAG ended; the finally steps start");
        }
        pass.changed = true;
        pass.again_after(Duration::ZERO);
        Ok(())
    }

    /// Ends `run` as `state`.
    async fn end_run(
        &self,
        run: &RunRow,
        state: RunState,
        message: &str,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        if finish_run(
            &self.store,
            self.instance.as_deref(),
            run.id,
            state,
            message,
        )
        .await?
        {
            tracing::info!(run = run.id, pipeline = %run.pipeline, %state, "{message}");
        }
        pass.changed = true;
        Ok(())
    }

    /// Skips the waiting ones of `steps`, saying `why`.
    async fn skip_waiting(
        &self,
        run: &RunRow,
        steps: &[&StepWork],
        why: &str,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        let waiting: Vec<String> = steps
            .iter()
            .filter(|s| s.step.state == StepState::Waiting)
            .map(|s| s.step.name.clone())
            .collect();
        if !waiting.is_empty() {
            self.store.skip_steps(run.id, &waiting, why).await?;
            pass.changed = true;
        }
        Ok(())
    }

    /// Starts the waiting ones of `ready` (steps free to start) whose retry is due, within
    /// `budget`; `dag_end` is set for finally steps.
    #[allow(clippy::too_many_arguments)]
    async fn start_ready(
        &mut self,
        run: &RunRow,
        pinned: &Pinned,
        ready: impl Iterator<Item = &StepWork>,
        dag_end: Option<&job::DagEnd<'_>>,
        now: DateTime<Utc>,
        budget: &mut usize,
        handovers: &mut Vec<Handover>,
        pass: &mut Pass,
    ) -> Result<(), ObjectError> {
        let mut starts_run = run.state == RunState::Pending;
        for step in ready.filter(|s| s.step.state == StepState::Waiting) {
            if let Some(at) = step.step.retry_at.filter(|at| *at > now) {
                pass.again_at(instant_of(at, now));
                continue;
            }
            if *budget == 0 {
                // A slot frees when an attempt ends, which wakes this loop.
                break;
            }
            let attempt = step.step.attempt + 1;
            let cache_key = match self
                .reuse(run, pinned, &step.step.name, attempt, now)
                .await?
            {
                Reuse::Reused => {
                    if starts_run {
                        self.report_started(run).await;
                        starts_run = false;
                    }
                    pass.changed = true;
                    pass.again_after(Duration::ZERO);
                    continue;
                }
                Reuse::Run { key } => key,
            };
            match self
                .job(run, pinned, &step.step.name, attempt, dag_end)
                .await?
            {
                Ok(job) => {
                    handovers.push(Handover {
                        job,
                        new: true,
                        starts_run: starts_run.then(|| run.clone()),
                        cache_key,
                    });
                    starts_run = false;
                    *budget -= 1;
                }
                Err(why) => {
                    let message = format!("cannot be started: {why}");
                    tracing::error!(run = run.id, step = %step.step.name, reason = %why, "step cannot be started");
                    self.store
                        .fail_step(run.id, &step.step.name, &message, now)
                        .await?;
                    pass.changed = true;
                    pass.again_after(Duration::ZERO);
                }
            }
        }
        Ok(())
    }

    /// Decides which backfilled runs wait for their turn in this pass (see [`backfill`]),
    /// reading the concurrency of the schedules they belong to.
    async fn take_turns(&mut self, work: &[(i64, Result<RunWork, StoreError>)], pass: &mut Pass) {
        let runs: Vec<&RunRow> = work
            .iter()
            .filter_map(|(_, w)| w.as_ref().ok())
            .map(|w| &w.run)
            .collect();
        let mut limits = HashMap::new();
        for run in runs.iter().filter(|run| backfill::is_waiting(run)) {
            let Some(name) = run.schedule.as_deref() else {
                continue;
            };
            if limits.contains_key(name) {
                continue;
            }
            let limit = match self.store.schedule(name).await {
                Ok(Some(row)) => backfill::limit(row.definition.spec.concurrency),
                Ok(None) => 1,
                Err(error) => {
                    // Its backfilled runs wait for a pass that can read it.
                    self.errors += 1;
                    tracing::warn!(schedule = %name, %error, "reading a schedule for its backfill failed");
                    0
                }
            };
            limits.insert(name.to_owned(), limit);
        }
        let now = tokio::time::Instant::now();
        let turns = &self.backfill_turns;
        let (held, starting) = backfill::turns(&runs, &limits, |schedule| {
            turns
                .get(schedule)
                .is_none_or(|at| now.duration_since(*at) >= backfill::SPACING)
        });
        for schedule in starting {
            self.backfill_turns.insert(schedule.to_owned(), now);
        }
        if !held.is_empty() {
            pass.again_after(backfill::SPACING);
        }
        self.held = held;
    }

    /// Records new attempts in one transaction, hands them and the ones waiting for it to
    /// the executor several at once, and records which were accepted.
    async fn hand_over(&mut self, handovers: Vec<Handover>, pass: &mut Pass) {
        let now = Utc::now();
        let new: Vec<NewAttempt> = handovers
            .iter()
            .filter(|h| h.new)
            .map(|h| NewAttempt {
                run_id: h.job.run_id,
                step: h.job.step.clone(),
                attempt: h.job.attempt,
                job: h.job.name.clone(),
                cache_key: h.cache_key.clone(),
            })
            .collect();
        let recorded = match self.store.start_attempts(&new, now).await {
            Ok(recorded) => recorded,
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed("start");
                tracing::error!(%error, retry_in = ?delay, "recording the attempts to start failed; nothing was started");
                pass.again_after(delay);
                return;
            }
        };
        self.backoff.succeeded("start");
        let mut recorded = recorded.into_iter();
        let mut jobs = Vec::new();
        for handover in handovers {
            if handover.new {
                // One recorded before (by a pass that crashed) is handed over by the next
                // pass, which finds it not accepted.
                if !recorded.next().unwrap_or(false) {
                    continue;
                }
                pass.changed = true;
                tracing::info!(run = handover.job.run_id, step = %handover.job.step, attempt = handover.job.attempt, job = %handover.job.name, "step started");
                if let Some(run) = &handover.starts_run {
                    self.report_started(run).await;
                }
            }
            if self.executor.runs_here()
                && handover.job.resources.as_ref().is_some_and(|r| r.gpu > 0)
            {
                tracing::warn!(run = handover.job.run_id, step = %handover.job.step, "GPU request not honoured: the local executor runs steps on this machine");
            }
            jobs.push(handover.job);
        }
        let executor = &self.executor;
        let results: Vec<(StepJob, Result<(), ExecError>)> = futures::stream::iter(jobs)
            .map(|job| async move {
                let result = executor.submit(job.clone()).await;
                (job, result)
            })
            .buffer_unordered(SUBMITS_AT_ONCE)
            .collect()
            .await;
        let mut accepted = Vec::new();
        for (job, result) in results {
            match result {
                Ok(()) => {
                    self.handover_at.remove(&job.name);
                    self.backoff.succeeded(&job.name);
                    accepted.push((job.run_id, job.step.clone(), job.attempt));
                }
                Err(error @ (ExecError::InvalidJob { .. } | ExecError::Foreign { .. })) => {
                    self.errors += 1;
                    // Trying again creates the same refused Job, or meets the same foreign
                    // one: the attempt fails with the executor's words.
                    let reason = match &error {
                        ExecError::InvalidJob { reason, .. } => {
                            format!("the executor refused it: {reason}")
                        }
                        other => other.to_string(),
                    };
                    let outcome = failure(reason, None, true, None);
                    if let Err(error) = self
                        .store
                        .finish_attempt(job.run_id, &job.step, job.attempt, &outcome)
                        .await
                    {
                        tracing::error!(job = %job.name, %error, "recording a refused attempt failed");
                    }
                    pass.changed = true;
                    pass.again_after(Duration::ZERO);
                }
                Err(error) => {
                    self.errors += 1;
                    let delay = self.backoff.failed(&job.name);
                    let message = format!("not started yet, trying again: {error}");
                    tracing::warn!(job = %job.name, %error, retry_in = ?delay, "the executor did not accept a step; it is handed over again");
                    self.handover_at
                        .insert(job.name.clone(), tokio::time::Instant::now() + delay);
                    if let Err(error) = self
                        .store
                        .note_submit_problem(job.run_id, &job.step, job.attempt, &message)
                        .await
                    {
                        tracing::error!(job = %job.name, %error, "recording why a step waits failed");
                    }
                    pass.again_after(delay);
                }
            }
        }
        if let Err(error) = self.store.mark_submitted(&accepted, Utc::now()).await {
            // The next pass finds them in the executor and records it then.
            tracing::warn!(%error, "recording accepted attempts failed");
            pass.again_after(Duration::from_secs(1));
        }
    }

    /// A preview's comment says its run has started.
    async fn report_started(&self, run: &RunRow) {
        let started = RunRow {
            state: RunState::Running,
            ..run.clone()
        };
        let reports = match started_run_reports(&self.store, &started).await {
            Ok(reports) => reports,
            Err(error) => {
                tracing::warn!(run = run.id, %error, "building the started comment failed");
                return;
            }
        };
        if !reports.is_empty()
            && let Err(error) = self.store.enqueue_reports(&reports, Utc::now()).await
        {
            tracing::warn!(run = run.id, %error, "enqueueing the started comment failed");
        }
    }

    /// Records how an attempt ended: a failure with retries left makes the step wait for
    /// its next attempt.
    async fn finish_attempt(
        &self,
        run: &RunRow,
        pipeline: &Pipeline,
        step: &StepWork,
        open: &OpenAttempt,
        state: JobState,
        now: DateTime<Utc>,
    ) -> Result<(), ObjectError> {
        let retries = pipeline.spec.step(&step.step.name).map_or(0, |d| d.retries);
        let outcome = match state {
            JobState::Succeeded { artifacts } => AttemptOutcome {
                state: AttemptState::Succeeded,
                at: now,
                exit_code: Some(0),
                message: None,
                retry_at: None,
                artifacts: artifacts
                    .into_iter()
                    .map(|a| NewArtifact {
                        output: a.output,
                        uri: a.uri,
                        sha256: a.sha256,
                        size: a.size,
                    })
                    .collect(),
                charged: false,
            },
            JobState::Failed { exit_code, reason } => {
                let failures = step.step.failures + 1;
                let retry_at = (failures <= retries).then(|| {
                    let delay =
                        Duration::from_secs(2u64.saturating_pow(failures)).min(MAX_RETRY_DELAY);
                    now + chrono::Duration::from_std(delay).unwrap_or_default()
                });
                failure(reason, exit_code, true, retry_at)
            }
            JobState::Cancelled | JobState::Pending | JobState::Running { .. } => AttemptOutcome {
                state: AttemptState::Cancelled,
                at: now,
                exit_code: None,
                message: Some("cancelled".to_owned()),
                retry_at: None,
                artifacts: Vec::new(),
                charged: false,
            },
        };
        tracing::info!(run = run.id, step = %step.step.name, attempt = open.attempt, state = %outcome.state, "step attempt ended");
        self.store
            .finish_attempt(run.id, &step.step.name, open.attempt, &outcome)
            .await?;
        Ok(())
    }

    /// Why an attempt the executor accepted and no longer has ended: steps that run here end
    /// with the service; a Job is gone from the cluster only if it was deleted, or removed
    /// after it finished while no replica watched.
    fn lost_reason(&self) -> &'static str {
        if self.executor.runs_here() {
            crate::execute::INTERRUPTED
        } else {
            "its Job is gone from the cluster (deleted, or removed after it finished while the \
             service was away)"
        }
    }

    /// Reports the executor's jobs whose run this database does not know (left from a
    /// database that was replaced) and leaves them alone: deleting work nobody here started
    /// is not this service's call.
    async fn report_foreign_jobs(&mut self) {
        let jobs = match self.executor.known_jobs().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::error!(%error, "listing the executor's jobs failed");
                return;
            }
        };
        for name in jobs {
            let known = match crate::execute::run_of_job(&self.installation, &name) {
                Some(run) => match self.store.run(run).await {
                    Ok(found) => found.is_some(),
                    Err(error) => {
                        tracing::error!(%error, "checking whose job {name} is failed");
                        return;
                    }
                },
                None => false,
            };
            if !known {
                tracing::warn!(job = %name, "a job labelled as Trainyard's belongs to no run in this database; left alone");
            }
        }
        self.foreign_checked = true;
    }

    /// Stops the steps that run on this machine and records each attempt as interrupted by
    /// the shutdown: the step runs again at the next start, and the attempt does not count
    /// against its retries.
    pub(super) async fn interrupt_local_steps(&mut self) {
        if !self.executor.runs_here() {
            return;
        }
        let work = match self.store.unfinished_work().await {
            Ok(work) => work,
            Err(error) => {
                tracing::error!(%error, "reading the steps in flight at shutdown failed; the next start finds them interrupted");
                return;
            }
        };
        let open: Vec<(i64, String, OpenAttempt)> = work
            .into_iter()
            .filter_map(|(_, w)| w.ok())
            .flat_map(|w| {
                let id = w.run.id;
                w.steps
                    .into_iter()
                    .filter_map(move |s| s.open.map(|o| (id, s.step.name, o)))
            })
            .collect();
        for (_, _, attempt) in &open {
            if let Err(error) = self.executor.cancel(&attempt.job).await {
                tracing::warn!(job = %attempt.job, %error, "stopping a step at shutdown failed");
            }
        }
        let deadline = tokio::time::Instant::now() + STOPPED;
        for (_, _, attempt) in &open {
            while !matches!(self.executor.observe(&attempt.job).await, Ok(Some(s)) if s.is_terminal())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let now = Utc::now();
        for (run, step, attempt) in open {
            let outcome = AttemptOutcome {
                state: AttemptState::Cancelled,
                at: now,
                exit_code: None,
                message: Some(
                    "interrupted: the service shut down while it ran; it runs again, and this \
                     attempt does not count against its retries"
                        .to_owned(),
                ),
                retry_at: Some(now),
                artifacts: Vec::new(),
                charged: false,
            };
            match self
                .store
                .finish_attempt(run, &step, attempt.attempt, &outcome)
                .await
            {
                Ok(_) => {
                    tracing::info!(run, step = %step, "step stopped by the shutdown; it runs again at the next start")
                }
                Err(error) => {
                    tracing::error!(run, step = %step, %error, "recording a step stopped by the shutdown failed")
                }
            }
        }
    }
}

/// How a run whose DAG ended as `dag` ends once its finally steps have, or `None` when it
/// succeeded (the registry loop completes it): a cancel, before or during the finally
/// steps, makes it cancelled; otherwise a failed DAG makes it failed, and a failed finally
/// step makes a succeeded DAG's run failed.
/// The DAG steps of a run that succeeded, by name: a matrix step once every instance did.
fn succeeded_steps(steps: &[StepWork]) -> HashSet<&str> {
    let mut all: HashMap<&str, bool> = HashMap::new();
    for step in steps.iter().filter(|s| !s.step.finally) {
        let ok = all.entry(instance_of(&step.step.name).0).or_insert(true);
        *ok &= step.step.state == StepState::Succeeded;
    }
    all.into_iter()
        .filter_map(|(name, ok)| ok.then_some(name))
        .collect()
}

fn run_state(dag: RunState, cancel_requested: bool, finally_failed: bool) -> Option<RunState> {
    if cancel_requested || dag == RunState::Cancelled {
        Some(RunState::Cancelled)
    } else if dag == RunState::Failed || finally_failed {
        Some(RunState::Failed)
    } else {
        None
    }
}

/// `"{what} NAME failed: why"`, of a failed step.
fn failed_message(what: &str, step: &StepWork) -> String {
    format!(
        "{what} {} failed: {}",
        step.step.name,
        step.step.message.as_deref().unwrap_or("no reason given")
    )
}

/// A failed attempt's outcome.
fn failure(
    reason: String,
    exit_code: Option<i32>,
    charged: bool,
    retry_at: Option<DateTime<Utc>>,
) -> AttemptOutcome {
    AttemptOutcome {
        state: AttemptState::Failed,
        at: Utc::now(),
        exit_code,
        message: Some(reason),
        retry_at,
        artifacts: Vec::new(),
        charged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StepRow;

    #[test]
    fn a_run_with_finally_steps_ends_as_its_dag_unless_a_finally_step_fails_a_succeeded_one() {
        use RunState::{Cancelled, Failed, Succeeded};
        assert_eq!(run_state(Succeeded, false, false), None);
        assert_eq!(run_state(Succeeded, false, true), Some(Failed));
        assert_eq!(run_state(Failed, false, false), Some(Failed));
        assert_eq!(run_state(Failed, false, true), Some(Failed));
        assert_eq!(run_state(Cancelled, false, false), Some(Cancelled));
        assert_eq!(run_state(Cancelled, false, true), Some(Cancelled));
    }

    #[test]
    fn a_cancel_while_finally_steps_run_makes_the_run_cancelled() {
        assert_eq!(
            run_state(RunState::Succeeded, true, false),
            Some(RunState::Cancelled)
        );
        assert_eq!(
            run_state(RunState::Failed, true, true),
            Some(RunState::Cancelled)
        );
    }

    fn step(name: &str, finally: bool, state: StepState) -> StepWork {
        StepWork {
            step: StepRow {
                run_id: 1,
                name: name.to_owned(),
                finally,
                state,
                attempt: 1,
                failures: 0,
                job: None,
                retry_at: None,
                started_at: None,
                finished_at: None,
                exit_code: None,
                message: None,
            },
            open: None,
        }
    }

    #[test]
    fn a_matrix_step_has_succeeded_once_every_instance_has() {
        use StepState::{Running, Succeeded};
        let steps = [
            step("prepare", false, Succeeded),
            step("train.0", false, Succeeded),
            step("train.1", false, Running),
            step("sweep.0", false, Succeeded),
            step("sweep.1", false, Succeeded),
            step("report", true, Succeeded),
        ];
        let mut done: Vec<&str> = succeeded_steps(&steps).into_iter().collect();
        done.sort_unstable();
        assert_eq!(
            done,
            ["prepare", "sweep"],
            "finally steps are not of the DAG"
        );
    }
}
