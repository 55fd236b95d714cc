//! The running service: one reconcile loop that applies the followed branch's head, fires
//! due ticks, drives runs step by step through an `Executor`, registers models behind their
//! gates, and delivers reports through a `Forge`.
//!
//! Every pass reads its work from the store and writes each outcome back in one
//! transaction, so a crash at any point loses nothing and repeats nothing: on restart the
//! loop picks up where the store says it was. Attempts that were running when the service
//! stopped are followed again if the executor still has them (Jobs on a cluster outlive the
//! service), and otherwise failed as interrupted and retried per the step's `retries`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use git2::Repository;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc::UnboundedReceiver;
use trainyard_policies::PolicyConfig;

use crate::apply::{self, status_report};
use crate::artifacts::{self, ArtifactStore};
use crate::definitions::{Definitions, DefinitionsError};
use crate::execute::launcher::SourceMarker;
use crate::execute::{
    ExecError, Executor, JobEvent, JobState, StepInput, StepJob, StepOutput, StepSource, job_name,
};
use crate::pulls::{self, Pulls, PullsError};
use crate::registry;
use crate::report::{self, Forge, ForgeError, Report, StatusState};
use crate::schedule::{self, ActiveRuns, TickAction};
use crate::server::Heartbeat;
use crate::source::{Snapshot, SourceError};
use crate::spec::catalog::Entry;
use crate::spec::check::resolve_params;
use crate::spec::cron::{CronSchedule, parse_timezone};
use crate::spec::template::{self, Reference};
use crate::spec::units::parse_duration;
use crate::spec::{Catalog, Pipeline, Schedule};
use crate::store::{
    AttemptOutcome, AttemptState, FOLLOWED_CURSOR, ModelState, NewArtifact, NewModelVersion,
    NewRun, NewTick, PullRequestRow, RunRow, RunState, StepRow, StepState, Store, StoreError,
    TickOutcome, Trigger,
};
use crate::webhook::{ForgeEvent, PrAction};

/// Longest wait before a failed attempt is retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Reports delivered per pass.
const REPORTS_PER_PASS: u32 = 50;
/// How often a standby replica beats while it waits to lead.
const STANDBY_BEAT: Duration = Duration::from_secs(5);
/// Forge events read from the queue at a time.
const FORGE_EVENT_BATCH: u32 = 100;

/// Errors that stop a pass of the loop.
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
    /// The executor failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The artifact store failed.
    #[error(transparent)]
    Artifacts(#[from] artifacts::Error),
    /// Git failed (resolving the branch, exporting a commit).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// A file or directory of the data directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The repository could not be watched for new commits.
    #[error("cannot watch the repository: {0}")]
    Watch(String),
    /// A pull request event could not be handled now.
    #[error(transparent)]
    Pulls(PullsError),
    /// A stored definition no longer reads as a document of this version.
    #[error("stored definition of {what} is unreadable: {reason}")]
    Stored {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
}

/// How many step submissions a pass has in flight at once; more only queue on the
/// executor's own limits (the cluster client's rate limit).
const SUBMITS_AT_ONCE: usize = 64;

/// Where the service reads, what it follows, and how much it runs at once.
#[derive(Debug, Clone)]
pub struct Config {
    /// The followed repository: a work tree, or the bare cache of `remote`.
    pub repo: PathBuf,
    /// URL the bare cache at `repo` is fetched from before each look at the branch.
    pub remote: Option<String>,
    /// Branch to follow; `None` follows the branch HEAD points at.
    pub branch: Option<String>,
    /// Tracked directory relative to the repository root (`""` for the root).
    pub subdir: String,
    /// Where checkouts of run commits are kept.
    pub data_dir: PathBuf,
    /// Prefix of status contexts, when several services follow one repository.
    pub instance: Option<String>,
    /// This installation's identity, in the names and labels of its Jobs and the keys of
    /// its outputs (see `execute::is_instance`).
    pub installation: String,
    /// Steps running at once, across runs.
    pub max_parallel_steps: usize,
    /// Platform policy settings.
    pub policy: PolicyConfig,
}

/// A stored schedule read back, with its cron (`None` if it no longer parses).
type ParsedSchedule = (Schedule, Option<CronSchedule>);

/// The service: its state lives in the store; this holds what a pass needs at hand.
pub struct Service<E: Executor, F: Forge> {
    config: Config,
    store: Store,
    executor: E,
    events: UnboundedReceiver<JobEvent>,
    forge: F,
    artifacts: ArtifactStore,
    definitions: Definitions,
    /// The declared state: the last applied commit's documents, with the last good version
    /// of failing files.
    declared: Catalog,
    snapshot: Option<Snapshot>,
    /// Jobs this process submitted, by name: (run, step, attempt).
    jobs: HashMap<String, (i64, String, u32)>,
    /// Pipeline definitions by (name, version), as runs pin them, with their file.
    pipelines: HashMap<(String, String), (Arc<Pipeline>, String)>,
    /// Schedules by (name, version), parsed with their cron once.
    schedules: HashMap<(String, String), Arc<ParsedSchedule>>,
    /// Key prefixes of source trees known to be completely in the artifact store, by the
    /// commit they were read from.
    uploaded_sources: HashMap<String, String>,
    /// When the leader next looks at the branch head.
    next_poll: tokio::time::Instant,
    /// Beats while the loop turns (the health endpoint reads it).
    heartbeat: Heartbeat,
    /// Whether jobs no run of this database owns were looked for since acting began.
    foreign_jobs_checked: bool,
    /// Notified when the HTTP server stores a forge event (a webhook delivery).
    wake: Arc<tokio::sync::Notify>,
    /// Whether forge events may be waiting in the store since the loop last looked.
    forge_events_waiting: bool,
    /// Plans pull requests and answers their commands.
    pulls: Pulls,
}

/// What a `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceOutcome {
    /// The commit applied.
    pub commit: String,
    /// Runs it drove, with their final state.
    pub runs: Vec<(i64, RunState)>,
}

impl<E: Executor, F: Forge> Service<E, F> {
    /// A service over its parts; the declared state is read back from the store.
    pub async fn new(
        config: Config,
        store: Store,
        executor: E,
        events: UnboundedReceiver<JobEvent>,
        forge: F,
        artifacts: ArtifactStore,
    ) -> Result<Self, RuntimeError> {
        let definitions = Definitions::new(config.policy.clone())?;
        let config_policy = config.policy.clone();
        let declared = declared_state(&store).await?;
        Ok(Service {
            config,
            store,
            executor,
            events,
            forge,
            artifacts,
            definitions,
            declared,
            snapshot: None,
            jobs: HashMap::new(),
            pipelines: HashMap::new(),
            schedules: HashMap::new(),
            uploaded_sources: HashMap::new(),
            next_poll: tokio::time::Instant::now(),
            heartbeat: Heartbeat::default(),
            foreign_jobs_checked: false,
            wake: Arc::new(tokio::sync::Notify::new()),
            forge_events_waiting: true,
            pulls: Pulls::new(config_policy)?,
        })
    }

    /// Applies the head, runs what it started (and any run already waiting, such as a
    /// queued manual run) to completion, delivers every report, and returns the commit and
    /// the final state of those runs.
    pub async fn run_once(&mut self) -> Result<OnceOutcome, RuntimeError> {
        let (commit, mut started) = self.apply_head().await?;
        for run in self.store.unfinished_runs().await? {
            if !started.contains(&run.id) {
                started.push(run.id);
            }
        }
        started.sort_unstable();
        loop {
            if self.drive_runs().await? == 0 {
                break;
            }
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(1), self.events.recv()).await
            {
                self.on_event(event).await?;
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event).await?;
            }
        }
        self.deliver_all().await?;
        let mut runs = Vec::new();
        for id in started {
            if let Some(run) = self.store.run(id).await? {
                runs.push((id, run.state));
            }
        }
        Ok(OnceOutcome { commit, runs })
    }

    /// Follows the branch until `shutdown` completes: applies new commits (checked every
    /// `poll`), fires ticks, drives runs and delivers reports. A failing pass is logged and
    /// retried on the next one: an unreachable repository or database changes nothing.
    /// `watch`, when given, wakes the loop to apply a commit as soon as the branch moves.
    ///
    /// With `leadership` (`None`: always the leader) the loop acts only while it says
    /// `true`. Losing it stops the loop at once, even mid-pass: every step of a pass is
    /// written so that stopping anywhere is as harmless as a crash. Gaining it starts from
    /// what the store says, since another replica has acted meanwhile.
    pub async fn serve(
        &mut self,
        poll: Duration,
        mut watch: Option<BranchWatcher>,
        mut leadership: Option<tokio::sync::watch::Receiver<bool>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut leading = leadership.is_none();
        loop {
            self.heartbeat.beat();
            if !leading {
                tokio::select! {
                    () = gained(&mut leadership) => match self.reload().await {
                        Ok(()) => leading = true,
                        Err(error) => {
                            tracing::error!(%error, "reading the store to take over failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                    // Outcomes of jobs started while leading: the leader reads them from
                    // the store and the executor.
                    Some(_) = self.events.recv() => {}
                    () = tokio::time::sleep(STANDBY_BEAT) => {}
                    () = &mut shutdown => return,
                }
                continue;
            }
            // A shutdown waits for the pass to end; a lost lease does not.
            let wake = tokio::select! {
                biased;
                () = lost(&mut leadership) => None,
                wake = self.turn(poll) => Some(wake),
            };
            let Some(wake) = wake else {
                leading = false;
                self.stand_by();
                continue;
            };
            let until = (tokio::time::Instant::now() + wake).min(self.next_poll);
            let moved = async {
                match watch.as_mut() {
                    Some(watcher) => watcher.changes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                Some(()) = moved => self.next_poll = tokio::time::Instant::now(),
                () = self.wake.notified() => self.forge_events_waiting = true,
                Some(event) = self.events.recv() => {
                    if let Err(error) = self.on_event(event).await {
                        tracing::error!(%error, "recording a step's outcome failed");
                    }
                }
                () = lost(&mut leadership) => {
                    leading = false;
                    self.stand_by();
                }
                () = &mut shutdown => return,
            }
        }
    }

    /// Applies the head when `poll` is due and runs a pass; returns how long the loop may
    /// sleep.
    async fn turn(&mut self, poll: Duration) -> Duration {
        if !self.foreign_jobs_checked
            && let Err(error) = self.report_foreign_jobs().await
        {
            tracing::error!(%error, "listing the executor's jobs failed");
        }
        if self.forge_events_waiting {
            match self.take_forge_events().await {
                Ok(()) => self.forge_events_waiting = false,
                Err(error) => tracing::error!(%error, "reading forge events failed"),
            }
        }
        if tokio::time::Instant::now() >= self.next_poll {
            if let Err(error) = self.apply_head().await {
                tracing::error!(%error, "applying the branch head failed");
            }
            self.next_poll = tokio::time::Instant::now() + poll;
        }
        match self.pass().await {
            Ok(wake) => wake,
            Err(error) => {
                tracing::error!(%error, "reconcile pass failed");
                Duration::from_secs(1)
            }
        }
    }

    /// Handles the queued forge events in the order they came: a push of the followed branch
    /// (any branch, when following HEAD's) makes the loop look at the branch at once; pull
    /// requests and comments go to [`pulls::Pulls`]. An event is finished once handled; one
    /// the forge could not help with now (a rate limit) stops the batch, to be taken up again
    /// in order on a later pass.
    async fn take_forge_events(&mut self) -> Result<(), RuntimeError> {
        for (id, event) in self.store.pending_forge_events(FORGE_EVENT_BATCH).await? {
            let now = Utc::now();
            let handled = match event {
                ForgeEvent::Ping => Ok(()),
                ForgeEvent::Push { branch, after } => {
                    let followed = self.config.branch.as_ref().is_none_or(|b| *b == branch);
                    if followed {
                        tracing::info!(%branch, %after, "push webhook: looking at the branch now");
                        self.next_poll = tokio::time::Instant::now();
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
                    self.pulls
                        .on_pull_request(&self.config, &self.store, &pr, now)
                        .await
                }
                ForgeEvent::Comment {
                    pr,
                    comment_id,
                    author,
                    body,
                } => {
                    self.pulls
                        .on_comment(
                            &self.config,
                            &self.store,
                            &self.forge,
                            pr,
                            comment_id,
                            &author,
                            &body,
                            now,
                        )
                        .await
                }
            };
            match handled {
                Ok(()) => {}
                Err(PullsError::Store(error)) => return Err(error.into()),
                Err(error @ PullsError::Forge(_)) => {
                    tracing::warn!(event = id, %error, "forge event waits for the forge");
                    return Err(RuntimeError::Pulls(error));
                }
                // The repository or the definitions cannot be read for this event: waiting
                // does not help, and it must not hold up the events after it.
                Err(error) => tracing::error!(event = id, %error, "forge event dropped"),
            }
            self.store.finish_forge_event(id, Utc::now()).await?;
        }
        Ok(())
    }

    /// A handle that wakes the loop; notified by whoever stores forge events, so that a
    /// webhook is acted on at once instead of at the next poll.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Stops following this process's jobs on losing the lease: the next leader follows
    /// them through the store.
    fn stand_by(&mut self) {
        tracing::info!(jobs = self.jobs.len(), "standing by: no longer acting");
        self.jobs.clear();
    }

    /// Forgets what this process knew from acting earlier, for a replica taking over: the
    /// declared state as the store has it now, the head to be applied again, and no jobs
    /// of its own (those running are followed through the store).
    async fn reload(&mut self) -> Result<(), RuntimeError> {
        self.declared = declared_state(&self.store).await?;
        self.snapshot = None;
        self.jobs.clear();
        self.next_poll = tokio::time::Instant::now();
        self.foreign_jobs_checked = false;
        self.forge_events_waiting = true;
        Ok(())
    }

    /// Reports the executor's jobs whose run this database does not know (another
    /// installation's in the same namespace, or left from a database that was replaced) and
    /// leaves them alone: deleting work nobody here started is not this service's call.
    /// Returns their names.
    pub async fn report_foreign_jobs(&mut self) -> Result<Vec<String>, RuntimeError> {
        let mut foreign = Vec::new();
        for name in self.executor.known_jobs().await? {
            let known = match crate::execute::run_of_job(&self.config.installation, &name) {
                Some(run) => self.store.run(run).await?.is_some(),
                None => false,
            };
            if !known {
                tracing::warn!(job = %name, "a job labelled as Trainyard's belongs to no run in this database; left alone");
                foreign.push(name);
            }
        }
        self.foreign_jobs_checked = true;
        Ok(foreign)
    }

    /// The loop's heartbeat: beats while the loop turns, leading or standing by.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// One pass of the loop besides applying commits; returns how long it may sleep.
    async fn pass(&mut self) -> Result<Duration, RuntimeError> {
        let now = Utc::now();
        let next_tick = self.fire_ticks(now).await?;
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event).await?;
        }
        let unfinished = self.drive_runs().await?;
        self.deliver_reports(Utc::now()).await?;
        let mut wake = Duration::from_secs(5);
        if unfinished > 0 {
            wake = wake.min(Duration::from_millis(500));
        }
        if let Some(next) = next_tick {
            wake = wake.min((next - Utc::now()).to_std().unwrap_or_default());
        }
        Ok(wake)
    }

    /// Applies the followed branch's head (again, harmlessly, if it was applied before) and
    /// returns it with the runs it started the first time.
    pub async fn apply_head(&mut self) -> Result<(String, Vec<i64>), RuntimeError> {
        if let Some(url) = &self.config.remote {
            tokio::task::block_in_place(|| fetch(&self.config.repo, url))?;
        }
        let repo = Repository::open(&self.config.repo)?;
        let head = match &self.config.branch {
            Some(branch) => repo
                .find_branch(branch, git2::BranchType::Local)?
                .get()
                .peel_to_commit()?,
            None => repo.head()?.peel_to_commit()?,
        };
        let sha = head.id().to_string();
        drop(head);
        let seen = self
            .snapshot
            .as_ref()
            .and_then(|s| s.commit)
            .map(|c| c.to_string());
        if seen.as_deref() == Some(sha.as_str()) {
            return Ok((sha, Vec::new()));
        }
        let now = Utc::now();
        let snapshot = match self.snapshot.take() {
            Some(previous) => previous.advance(&sha, &self.config.subdir)?,
            None => Snapshot::at_revision(repo, &sha, &self.config.subdir)?,
        };
        let evaluation = tokio::task::block_in_place(|| self.definitions.evaluate(&snapshot, now))?;
        self.snapshot = Some(snapshot);
        let decision = apply::decide(
            &sha,
            now,
            &self.declared,
            &evaluation,
            self.config.instance.as_deref(),
        );
        let applied = self.store.apply_commit(&decision.apply).await?;
        self.declared = decision.declared;
        tracing::info!(commit = %sha, outcome = %decision.apply.outcome, runs = applied.run_ids.len(), "applied {}", decision.apply.summary);
        Ok((
            sha,
            if applied.first_time {
                applied.run_ids
            } else {
                Vec::new()
            },
        ))
    }

    /// Records due ticks of every active schedule, all in one transaction; returns the next
    /// time one is due.
    async fn fire_ticks(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, RuntimeError> {
        let head = self.store.cursor(FOLLOWED_CURSOR).await?;
        let mut active: HashMap<String, Vec<i64>> = HashMap::new();
        for run in self.store.unfinished_runs().await? {
            if let Some(schedule) = run.schedule {
                active.entry(schedule).or_default().push(run.id);
            }
        }
        let mut targets: HashMap<String, Option<(crate::store::PipelineRow, Pipeline)>> =
            HashMap::new();
        let mut next: Option<DateTime<Utc>> = None;
        let mut batch = Vec::new();
        for row in self.store.active_schedules().await? {
            let key = (row.name.clone(), row.version.clone());
            if !self.schedules.contains_key(&key) {
                let schedule: Schedule =
                    serde_json::from_value(row.definition.clone()).map_err(|e| {
                        RuntimeError::Stored {
                            what: format!("schedule {}", row.name),
                            reason: e.to_string(),
                        }
                    })?;
                let cron = parse_timezone(&schedule.spec.timezone)
                    .ok()
                    .and_then(|tz| CronSchedule::new(&schedule.spec.cron, tz).ok());
                self.schedules
                    .insert(key.clone(), Arc::new((schedule, cron)));
            }
            let Some(parsed) = self.schedules.get(&key).cloned() else {
                continue;
            };
            let (schedule, cron) = parsed.as_ref();
            let Some(cron) = cron.as_ref().filter(|_| !schedule.spec.suspend) else {
                continue;
            };
            let since = row
                .last_tick_at
                .map_or(row.active_since, |t| t.max(row.active_since));
            let running = active.get(&row.name).cloned().unwrap_or_default();
            let decisions = schedule::decide(
                &schedule.spec,
                cron,
                since,
                now,
                ActiveRuns {
                    count: running.len(),
                },
                row.paused_at.is_some(),
            )
            .map_err(|e| RuntimeError::Stored {
                what: format!("schedule {}", row.name),
                reason: e.to_string(),
            })?;
            if let Some(at) = schedule::next_fire_after(cron, now, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            if decisions.is_empty() {
                continue;
            }
            if !targets.contains_key(&schedule.spec.pipeline) {
                let target = match self.store.current_pipeline(&schedule.spec.pipeline).await? {
                    Some(target) => {
                        let definition: Pipeline =
                            serde_json::from_value(target.definition.clone()).map_err(|e| {
                                RuntimeError::Stored {
                                    what: format!("pipeline {}", target.name),
                                    reason: e.to_string(),
                                }
                            })?;
                        Some((target, definition))
                    }
                    None => None,
                };
                targets.insert(schedule.spec.pipeline.clone(), target);
            }
            let target = targets
                .get(&schedule.spec.pipeline)
                .and_then(Option::as_ref);
            let mut ticks = Vec::with_capacity(decisions.len());
            for decision in decisions {
                let (outcome, reason, fire) = match decision.action {
                    TickAction::Fire => (TickOutcome::Fired, None, true),
                    TickAction::FireReplacing => {
                        for id in &running {
                            self.store.request_cancel(*id).await?;
                        }
                        (
                            TickOutcome::Fired,
                            Some("replaced the active run".to_owned()),
                            true,
                        )
                    }
                    TickAction::Skip(reason) => (TickOutcome::Skipped, Some(reason), false),
                    TickAction::Miss(reason) => (TickOutcome::Missed, Some(reason), false),
                };
                let run = match (target, fire, &head) {
                    (Some((row_of, definition)), true, Some(head)) => {
                        resolve_params(definition, &schedule.spec.params)
                            .ok()
                            .map(|params| NewRun {
                                pipeline: row_of.name.clone(),
                                pipeline_version: row_of.version.clone(),
                                commit_sha: head.clone(),
                                trigger: Trigger::Schedule,
                                schedule: Some(row.name.clone()),
                                scheduled_at: Some(decision.at),
                                params: serde_json::to_value(params).unwrap_or(Value::Null),
                                steps: definition
                                    .spec
                                    .steps
                                    .iter()
                                    .map(|s| s.name.clone())
                                    .collect(),
                            })
                    }
                    _ => None,
                };
                let (outcome, reason) = match (&run, fire) {
                    (None, true) => (
                        TickOutcome::Skipped,
                        Some(format!(
                            "pipeline {} is not declared",
                            schedule.spec.pipeline
                        )),
                    ),
                    _ => (outcome, reason),
                };
                ticks.push(NewTick {
                    scheduled_at: decision.at,
                    outcome,
                    reason,
                    run,
                });
            }
            batch.push((row.name.clone(), ticks));
        }
        if !batch.is_empty() {
            self.store.record_ticks_batch(&batch).await?;
        }
        Ok(next)
    }

    /// Moves every unfinished run forward once (starting the steps that are ready) and
    /// returns how many runs are unfinished.
    pub async fn drive_runs(&mut self) -> Result<usize, RuntimeError> {
        let runs = self.store.unfinished_runs().await?;
        let mut steps_by_run = Vec::with_capacity(runs.len());
        let mut running = 0;
        for run in &runs {
            let steps = self.store.steps(run.id).await?;
            running += steps
                .iter()
                .filter(|s| s.state == StepState::Running)
                .count();
            steps_by_run.push(steps);
        }
        let mut budget = self.config.max_parallel_steps.saturating_sub(running);
        let mut started = Vec::new();
        for (run, steps) in runs.iter().zip(steps_by_run) {
            self.drive(run, &steps, &mut budget, &mut started).await?;
            // Submitting in batches as they fill lets the first Jobs of a busy second
            // start while later attempts are still being recorded.
            if started.len() >= SUBMITS_AT_ONCE {
                self.submit_all(std::mem::take(&mut started)).await?;
            }
        }
        self.submit_all(started).await?;
        Ok(self.store.unfinished_runs().await?.len())
    }

    /// Submits the attempts a pass recorded, several at once: one after the other, a
    /// second in which a thousand schedules fire would wait on a thousand round trips to
    /// the cluster before its last run's first step exists. Every submission is tried; the
    /// first failure is returned.
    async fn submit_all(&self, jobs: Vec<StepJob>) -> Result<(), RuntimeError> {
        let executor = &self.executor;
        let results: Vec<Result<(), ExecError>> = futures::stream::iter(jobs)
            .map(|job| executor.submit(job))
            .buffer_unordered(SUBMITS_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(())
    }

    async fn drive(
        &mut self,
        run: &RunRow,
        steps: &[StepRow],
        budget: &mut usize,
        started: &mut Vec<StepJob>,
    ) -> Result<(), RuntimeError> {
        let now = Utc::now();
        let pipeline = self.pipeline(&run.pipeline, &run.pipeline_version).await?;
        let mut finished_earlier = false;
        for step in steps.iter().filter(|s| s.state == StepState::Running) {
            let Some(job) = &step.job else { continue };
            if !self.jobs.contains_key(job) {
                // Started by an earlier process (or another replica): follow it if the
                // executor still has it, fail it as interrupted if not.
                let outcome = match self.executor.observe(job).await? {
                    None => Some(JobState::Failed {
                        exit_code: None,
                        reason: "interrupted: the service stopped while it ran".to_owned(),
                    }),
                    Some(state) if state.is_terminal() => Some(state),
                    Some(_) => {
                        tracing::info!(run = run.id, step = %step.name, %job, "following a step started earlier");
                        self.jobs
                            .insert(job.clone(), (run.id, step.name.clone(), step.attempt));
                        None
                    }
                };
                if let Some(state) = outcome {
                    finished_earlier = true;
                    self.finish_attempt(run.id, &pipeline, &step.name, step.attempt, state)
                        .await?;
                }
            }
            if run.cancel_requested {
                self.executor.cancel(job).await?;
            }
        }
        // Only finishing an attempt started earlier changed the steps since they were read.
        let reread;
        let steps = if finished_earlier {
            reread = self.store.steps(run.id).await?;
            &reread
        } else {
            steps
        };
        let any_running = steps.iter().any(|s| s.state == StepState::Running);
        let failed = steps.iter().find(|s| s.state == StepState::Failed);
        if run.cancel_requested || failed.is_some() {
            let waiting: Vec<String> = steps
                .iter()
                .filter(|s| s.state == StepState::Waiting)
                .map(|s| s.name.clone())
                .collect();
            if !waiting.is_empty() {
                let why = if run.cancel_requested {
                    "the run was cancelled"
                } else {
                    "an earlier step failed"
                };
                self.store.skip_steps(run.id, &waiting, why).await?;
            }
            if !any_running {
                let (state, message) = match failed {
                    Some(step) if !run.cancel_requested => (
                        RunState::Failed,
                        format!(
                            "step {} failed: {}",
                            step.name,
                            step.message.as_deref().unwrap_or("no reason given")
                        ),
                    ),
                    _ => (RunState::Cancelled, "cancelled".to_owned()),
                };
                self.finish_run(run, state, &message).await?;
            }
            return Ok(());
        }
        if steps.iter().all(|s| s.state == StepState::Succeeded) {
            return self.complete(run, &pipeline).await;
        }
        let succeeded: Vec<&str> = steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .map(|s| s.name.as_str())
            .collect();
        for step in steps.iter().filter(|s| s.state == StepState::Waiting) {
            if *budget == 0 {
                break;
            }
            let Some(definition) = pipeline.spec.steps.iter().find(|d| d.name == step.name) else {
                continue;
            };
            let ready = definition
                .needs
                .iter()
                .all(|n| succeeded.contains(&n.as_str()));
            if !ready || step.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            started.extend(
                self.launch(run, &pipeline, &step.name, step.attempt + 1)
                    .await?,
            );
            *budget -= 1;
        }
        Ok(())
    }

    /// Starts one attempt of a step: records it and returns the job to submit (none if the
    /// attempt was recorded before). Recorded first, submitted after, so a crash between
    /// the two leaves an attempt the next pass finds interrupted and retries.
    async fn launch(
        &mut self,
        run: &RunRow,
        pipeline: &Pipeline,
        step: &str,
        attempt: u32,
    ) -> Result<Option<StepJob>, RuntimeError> {
        let name = job_name(&self.config.installation, run.id, step, attempt);
        if !self
            .store
            .start_attempt(run.id, step, attempt, &name, Utc::now())
            .await?
        {
            return Ok(None);
        }
        if run.state == RunState::Pending {
            // The run starts now: a preview's comment says so.
            let reports = pulls::started_run_reports(&self.store, run).await?;
            if !reports.is_empty() {
                self.store.enqueue_reports(&reports, Utc::now()).await?;
            }
        }
        let (_, file) = self.pinned(&run.pipeline, &run.pipeline_version).await?;
        let source = if self.executor.runs_here() {
            None
        } else {
            let prefix = self.upload_source(&run.commit_sha).await?;
            Some(StepSource {
                prefix,
                dir: Path::new(&file)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .to_owned(),
            })
        };
        let job = self.job(run, pipeline, &file, step, attempt, &name, source)?;
        if self.executor.runs_here() && job.resources.as_ref().is_some_and(|r| r.gpu > 0) {
            tracing::warn!(
                run = run.id,
                step,
                "GPU request not honoured: the local executor runs steps on this machine"
            );
        }
        self.jobs
            .insert(name.clone(), (run.id, step.to_owned(), attempt));
        tracing::info!(run = run.id, step, attempt, job = %name, "step started");
        Ok(Some(job))
    }

    /// The job of one attempt: argv and env rendered, inputs and outputs placed. With a
    /// `source` the step runs in its folder of that upload, otherwise in the run's checkout.
    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        run: &RunRow,
        pipeline: &Pipeline,
        file: &str,
        step: &str,
        attempt: u32,
        name: &str,
        source: Option<StepSource>,
    ) -> Result<StepJob, RuntimeError> {
        let definition = pipeline
            .spec
            .steps
            .iter()
            .find(|d| d.name == step)
            .ok_or_else(|| RuntimeError::Stored {
                what: format!("run {}", run.id),
                reason: format!("no step {step}"),
            })?;
        let job_dir = self.executor.job_dir(name);
        let workdir = match &source {
            Some(source) => job_dir.join("src").join(&source.dir),
            None => self
                .checkout(&run.commit_sha)?
                .join(&self.config.subdir)
                .join(Path::new(file).parent().unwrap_or(Path::new(""))),
        };
        let outputs: Vec<StepOutput> = definition
            .outputs
            .iter()
            .map(|o| StepOutput {
                name: o.clone(),
                path: job_dir.join("outputs").join(o),
                key: artifacts::output_key(&self.config.installation, run.id, step, o),
            })
            .collect();
        let mut inputs: Vec<StepInput> = Vec::new();
        let scheduled = run.scheduled_at.unwrap_or_else(Utc::now).to_rfc3339();
        let mut render = |text: &str| -> String {
            let pieces = template::parse(text)
                .unwrap_or_else(|_| vec![template::Piece::Text(text.to_owned())]);
            let rendered: Result<String, ()> = template::render(&pieces, |reference| {
                Ok(match reference {
                    Reference::Param(p) => match run.params.get(p) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    },
                    Reference::Output(o) => job_dir.join("outputs").join(o).display().to_string(),
                    Reference::StepOutput { step: from, output } => {
                        let path = job_dir.join("inputs").join(from).join(output);
                        if !inputs.iter().any(|i| i.path == path) {
                            inputs.push(StepInput {
                                key: artifacts::output_key(
                                    &self.config.installation,
                                    run.id,
                                    from,
                                    output,
                                ),
                                path: path.clone(),
                            });
                        }
                        path.display().to_string()
                    }
                    Reference::RunId => run.id.to_string(),
                    Reference::RunScheduledTime => scheduled.clone(),
                })
            });
            rendered.unwrap_or_default()
        };
        let argv: Vec<String> = definition.run.iter().map(|a| render(a)).collect();
        let env: BTreeMap<String, String> = definition
            .env
            .iter()
            .map(|(k, v)| (k.clone(), render(v)))
            .collect();
        let timeout = definition
            .timeout
            .as_deref()
            .or(self.declared.settings.default_timeout.as_deref())
            .and_then(|t| parse_duration(t).ok());
        let image = definition
            .image
            .clone()
            .or_else(|| pipeline.spec.image.clone())
            .or_else(|| self.declared.settings.image.clone())
            .unwrap_or_default();
        let labels = BTreeMap::from([
            ("trainyard.dev/run".to_owned(), run.id.to_string()),
            ("trainyard.dev/pipeline".to_owned(), run.pipeline.clone()),
            ("trainyard.dev/step".to_owned(), step.to_owned()),
        ]);
        let mut annotations = BTreeMap::from([
            ("trainyard.dev/commit".to_owned(), run.commit_sha.clone()),
            (
                "trainyard.dev/version".to_owned(),
                run.pipeline_version.clone(),
            ),
        ]);
        if let Some(schedule) = &run.schedule {
            annotations.insert("trainyard.dev/schedule".to_owned(), schedule.clone());
        }
        Ok(StepJob {
            name: name.to_owned(),
            instance: self.config.installation.clone(),
            run_id: run.id,
            step: step.to_owned(),
            attempt,
            argv,
            env,
            image,
            resources: definition.resources.clone(),
            timeout,
            job_dir,
            workdir,
            source,
            inputs,
            outputs,
            log_key: artifacts::log_key(name),
            labels,
            annotations,
            secrets: definition.env_from_secrets.clone(),
        })
    }

    /// Uploads the followed directory's tree at `commit` for steps that run elsewhere, once:
    /// keys are addressed by the tree's id, and a marker written after the last file makes
    /// every later run and step of the same tree reuse the upload. Returns the key prefix.
    ///
    /// Every blob is stored with its Git path; executables are listed in the marker (object
    /// stores keep no file modes). Symbolic links and submodules are skipped: a link may
    /// point anywhere on the service's machine, which the pod cannot see.
    async fn upload_source(&mut self, commit: &str) -> Result<String, RuntimeError> {
        if let Some(prefix) = self.uploaded_sources.get(commit) {
            return Ok(prefix.clone());
        }
        let repo = Repository::open(&self.config.repo)?;
        let (tree_id, files) = {
            let root = repo.find_commit(git2::Oid::from_str(commit)?)?.tree()?;
            let tree = if self.config.subdir.is_empty() {
                root
            } else {
                root.get_path(Path::new(&self.config.subdir))?
                    .to_object(&repo)?
                    .peel_to_tree()?
            };
            (tree.id().to_string(), source_files(&tree)?)
        };
        let prefix = artifacts::source_prefix(&tree_id);
        let marker_key = artifacts::source_marker_key(&prefix);
        if self.artifacts.exists(&marker_key).await? {
            self.uploaded_sources
                .insert(commit.to_owned(), prefix.clone());
            return Ok(prefix);
        }
        let mut marker = SourceMarker::default();
        for file in &files {
            let key = artifacts::source_key(&prefix, &file.path);
            // libgit2 holds a packed blob whole in memory anyway; the copy ends its borrow of
            // the repository before the upload awaits.
            let content = repo.find_blob(file.blob)?.content().to_vec();
            self.artifacts.put_bytes(&key, content).await?;
            if file.executable {
                marker.executables.push(key);
            }
        }
        let marker = serde_json::to_vec(&marker).map_err(|e| RuntimeError::Stored {
            what: format!("source marker {marker_key}"),
            reason: e.to_string(),
        })?;
        self.artifacts.put_bytes(&marker_key, marker).await?;
        tracing::info!(tree = %tree_id, files = files.len(), "uploaded the step source");
        self.uploaded_sources
            .insert(commit.to_owned(), prefix.clone());
        Ok(prefix)
    }

    /// The run's commit exported once into the data directory (steps run in it, so a run
    /// always sees the files of its own commit).
    fn checkout(&self, commit: &str) -> Result<PathBuf, RuntimeError> {
        let target = self.config.data_dir.join("checkouts").join(commit);
        if target.is_dir() {
            return Ok(target);
        }
        let partial = self
            .config
            .data_dir
            .join("checkouts")
            .join(format!("{commit}.partial"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { path, source }
        };
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let repo = Repository::open(&self.config.repo)?;
        let tree = repo.find_commit(git2::Oid::from_str(commit)?)?.tree()?;
        let mut options = git2::build::CheckoutBuilder::new();
        options.target_dir(&partial).force().recreate_missing(true);
        repo.checkout_tree(tree.as_object(), Some(&mut options))?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        Ok(target)
    }

    /// Records the outcome of a job this process submitted.
    async fn on_event(&mut self, event: JobEvent) -> Result<(), RuntimeError> {
        if !event.state.is_terminal() {
            return Ok(());
        }
        let Some((run_id, step, attempt)) = self.jobs.remove(&event.name) else {
            return Ok(());
        };
        let Some(run) = self.store.run(run_id).await? else {
            return Ok(());
        };
        let pipeline = self.pipeline(&run.pipeline, &run.pipeline_version).await?;
        tracing::info!(run = run_id, step = %step, attempt, state = ?event.state, "step finished");
        self.finish_attempt(run_id, &pipeline, &step, attempt, event.state)
            .await
    }

    async fn finish_attempt(
        &mut self,
        run_id: i64,
        pipeline: &Pipeline,
        step: &str,
        attempt: u32,
        state: JobState,
    ) -> Result<(), RuntimeError> {
        let now = Utc::now();
        let retries = pipeline
            .spec
            .steps
            .iter()
            .find(|d| d.name == step)
            .map_or(0, |d| d.retries);
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
            },
            JobState::Failed { exit_code, reason } => {
                let retry_at = (attempt <= retries).then(|| {
                    let delay =
                        Duration::from_secs(2u64.saturating_pow(attempt)).min(MAX_RETRY_DELAY);
                    now + chrono::Duration::from_std(delay).unwrap_or_default()
                });
                AttemptOutcome {
                    state: AttemptState::Failed,
                    at: now,
                    exit_code,
                    message: Some(reason),
                    retry_at,
                    artifacts: Vec::new(),
                }
            }
            JobState::Cancelled | JobState::Pending | JobState::Running { .. } => AttemptOutcome {
                state: AttemptState::Cancelled,
                at: now,
                exit_code: None,
                message: Some("cancelled".to_owned()),
                retry_at: None,
                artifacts: Vec::new(),
            },
        };
        self.store
            .finish_attempt(run_id, step, attempt, &outcome)
            .await?;
        Ok(())
    }

    /// Registers the model (when the pipeline has one) and finishes the run as succeeded.
    async fn complete(&mut self, run: &RunRow, pipeline: &Pipeline) -> Result<(), RuntimeError> {
        let mut message = format!("run {} succeeded", run.id);
        if let Some(model) = &pipeline.spec.model {
            let stored = self.store.artifacts(run.id).await?;
            let find = |reference: &str| {
                let parts: Vec<&str> = reference.split('.').collect();
                match parts.as_slice() {
                    ["steps", step, "outputs", output] => stored
                        .iter()
                        .find(|a| a.step == *step && a.output == *output),
                    _ => None,
                }
            };
            let artifact = find(&model.artifact);
            let metrics_bytes = match model.metrics.as_deref().and_then(find) {
                Some(a) => self
                    .artifacts
                    .get_bytes(&artifacts::output_key(
                        &self.config.installation,
                        run.id,
                        &a.step,
                        &a.output,
                    ))
                    .await?
                    .unwrap_or_default(),
                None => b"{}".to_vec(),
            };
            let mut baselines = BTreeMap::new();
            for alias in model.gate.iter().filter_map(|g| g.not_worse_than.as_ref()) {
                if let Some(version) = self.store.alias(&model.name, alias).await? {
                    baselines.insert(alias.clone(), version.metrics);
                }
            }
            let gates = registry::evaluate_metrics_file(model, &metrics_bytes, &baselines);
            let metrics = registry::parse_metrics(&metrics_bytes)
                .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            let summary = registry::describe(&gates);
            if run.trigger == Trigger::Preview {
                // A preview shows how its model would fare against the champion, but never
                // registers it: no version, no alias moves.
                let verdict = if gates.passed {
                    "would be accepted"
                } else {
                    "would be rejected"
                };
                message.push_str(&format!(
                    "; model {} {verdict} (preview, not registered): {summary}",
                    model.name
                ));
                return self.finish_run(run, RunState::Succeeded, &message).await;
            }
            let (state, description) = if gates.passed {
                let promoted = model
                    .promote
                    .as_ref()
                    .map(|a| format!(", now {a}"))
                    .unwrap_or_default();
                (
                    StatusState::Success,
                    format!("accepted{promoted}: {summary}"),
                )
            } else {
                (StatusState::Failure, format!("rejected: {summary}"))
            };
            message.push_str(&format!("; model {} {description}", model.name));
            let context =
                report::context(self.config.instance.as_deref(), "model", Some(&model.name));
            let registration = NewModelVersion {
                model: model.name.clone(),
                run_id: run.id,
                state: if gates.passed {
                    ModelState::Accepted
                } else {
                    ModelState::Rejected
                },
                metrics,
                gates: serde_json::to_value(&gates.checks).unwrap_or(Value::Null),
                reasons: gates
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| c.detail.clone())
                    .collect(),
                artifact_uri: artifact.map(|a| a.uri.clone()).unwrap_or_default(),
                artifact_sha256: artifact.map(|a| a.sha256.clone()).unwrap_or_default(),
                promote: model.promote.clone().filter(|_| gates.passed),
                at: Utc::now(),
                reports: vec![status_report(
                    &run.commit_sha,
                    &context,
                    state,
                    &description,
                )],
            };
            self.store.register_model(&registration).await?;
        }
        self.finish_run(run, RunState::Succeeded, &message).await
    }

    /// Finishes a run with its status report; a schedule's failures count toward pausing it.
    async fn finish_run(
        &mut self,
        run: &RunRow,
        state: RunState,
        message: &str,
    ) -> Result<(), RuntimeError> {
        let context = report::context(self.config.instance.as_deref(), "run", Some(&run.pipeline));
        let status = if state == RunState::Succeeded {
            StatusState::Success
        } else {
            StatusState::Failure
        };
        let mut reports = vec![status_report(&run.commit_sha, &context, status, message)];
        reports.extend(pulls::finished_run_reports(&self.store, run, state, message).await?);
        let pause_after = match &run.schedule {
            Some(name) => self
                .store
                .schedule(name)
                .await?
                .and_then(|row| serde_json::from_value::<Schedule>(row.definition).ok())
                .and_then(|s| s.spec.pause_after_failures),
            None => None,
        };
        if self
            .store
            .finish_run(
                run.id,
                state,
                Some(message),
                Utc::now(),
                &reports,
                pause_after,
            )
            .await?
        {
            tracing::info!(run = run.id, pipeline = %run.pipeline, state = %state, "{message}");
        }
        Ok(())
    }

    /// The definition a run is pinned to, and the file it was declared in.
    async fn pinned(
        &mut self,
        name: &str,
        version: &str,
    ) -> Result<(Arc<Pipeline>, String), RuntimeError> {
        let key = (name.to_owned(), version.to_owned());
        if let Some(found) = self.pipelines.get(&key) {
            return Ok(found.clone());
        }
        let row = self
            .store
            .pipeline_version(name, version)
            .await?
            .ok_or_else(|| RuntimeError::Stored {
                what: format!("pipeline {name}"),
                reason: format!("version {version} is not stored"),
            })?;
        let pipeline: Pipeline =
            serde_json::from_value(row.definition).map_err(|e| RuntimeError::Stored {
                what: format!("pipeline {name}"),
                reason: e.to_string(),
            })?;
        let found = (Arc::new(pipeline), row.file);
        self.pipelines.insert(key, found.clone());
        Ok(found)
    }

    async fn pipeline(&mut self, name: &str, version: &str) -> Result<Arc<Pipeline>, RuntimeError> {
        Ok(self.pinned(name, version).await?.0)
    }

    /// Delivers due reports once; failures are rescheduled (transient) or recorded
    /// (permanent). Returns how many were attempted.
    async fn deliver_reports(&mut self, now: DateTime<Utc>) -> Result<usize, RuntimeError> {
        let due = self.store.due_reports(now, REPORTS_PER_PASS).await?;
        for row in &due {
            let parsed: Result<Report, _> = serde_json::from_value(row.payload.clone());
            let outcome = match parsed {
                Ok(report) => report::deliver(&self.forge, &report).await.map(|_| ()),
                Err(e) => Err(ForgeError::Permanent {
                    message: format!("unreadable report: {e}"),
                }),
            };
            match outcome {
                Ok(()) => {
                    self.store.mark_delivered(row.id, Utc::now()).await?;
                }
                Err(ForgeError::Transient {
                    message,
                    retry_after,
                }) => {
                    let delay = report::backoff(row.attempts, retry_after);
                    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.store.mark_retry(row.id, at, &message).await?;
                    // The rest waits behind it (reports arrive in order), and a rate limit
                    // would refuse them too.
                    break;
                }
                Err(ForgeError::Permanent { message }) => {
                    tracing::warn!(report = row.id, %message, "report cannot be delivered");
                    self.store.mark_failed(row.id, &message).await?;
                }
            }
        }
        Ok(due.len())
    }

    /// Delivers until nothing is due (a transient failure waits for its retry time).
    async fn deliver_all(&mut self) -> Result<(), RuntimeError> {
        for _ in 0..20 {
            if self.deliver_reports(Utc::now()).await? == 0
                && self
                    .store
                    .due_reports(Utc::now() + chrono::Duration::minutes(10), 1)
                    .await?
                    .is_empty()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }
}

/// A file of a source tree to upload.
struct SourceFile {
    /// Its path from the tree's root, `/`-separated, as Git stores it.
    path: Vec<u8>,
    blob: git2::Oid,
    executable: bool,
}

/// Every regular file under `tree`; links and submodules are left out (and logged).
fn source_files(tree: &git2::Tree<'_>) -> Result<Vec<SourceFile>, RuntimeError> {
    let mut files = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let mode = entry.filemode();
        if entry.kind() != Some(git2::ObjectType::Blob) {
            if entry.kind() == Some(git2::ObjectType::Commit) {
                tracing::warn!(path = %format!("{root}{}", String::from_utf8_lossy(entry.name_bytes())), "submodule not uploaded with the step source");
            }
            return git2::TreeWalkResult::Ok;
        }
        let mut path = root.as_bytes().to_vec();
        path.extend_from_slice(entry.name_bytes());
        if mode == i32::from(git2::FileMode::Link) {
            tracing::warn!(path = %String::from_utf8_lossy(&path), "symbolic link not uploaded with the step source");
            return git2::TreeWalkResult::Ok;
        }
        files.push(SourceFile {
            path,
            blob: entry.id(),
            executable: mode == i32::from(git2::FileMode::BlobExecutable),
        });
        git2::TreeWalkResult::Ok
    })?;
    Ok(files)
}

/// Completes when `leadership` says this replica leads (at once without an election); never
/// if the election stopped (stand by for good).
async fn gained(leadership: &mut Option<tokio::sync::watch::Receiver<bool>>) {
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
async fn lost(leadership: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match leadership {
        Some(receiver) => {
            let _ = receiver.wait_for(|leads| !*leads).await;
        }
        None => std::future::pending().await,
    }
}

/// Makes `cache` a bare clone of `url` if it is not one yet.
pub fn clone_cache(url: &str, cache: &Path) -> Result<(), RuntimeError> {
    if Repository::open_bare(cache).is_ok() {
        return Ok(());
    }
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(url, cache)?;
    Ok(())
}

/// Brings every branch of the bare cache up to date with `url`.
fn fetch(cache: &Path, url: &str) -> Result<(), RuntimeError> {
    let repo = Repository::open_bare(cache)?;
    let mut remote = repo.remote_anonymous(url)?;
    remote.fetch(&["+refs/heads/*:refs/heads/*"], None, None)?;
    Ok(())
}

/// Wakes the service when a local repository's branches move, so a commit is applied at
/// once rather than at the next poll.
pub struct BranchWatcher {
    _watcher: notify::RecommendedWatcher,
    changes: tokio::sync::mpsc::Receiver<()>,
}

impl BranchWatcher {
    /// Watches the references of the repository whose work tree is `repo`: `HEAD`,
    /// `packed-refs` and everything under `refs/heads`. Object writes are ignored.
    pub fn new(repo: &Path) -> Result<Self, RuntimeError> {
        use notify::Watcher as _;
        let git_dir = Repository::open(repo)?.path().to_path_buf();
        let (tx, changes) = tokio::sync::mpsc::channel(1);
        let heads = git_dir.join("refs").join("heads");
        let watched_heads = heads.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let relevant = event.paths.iter().any(|p| {
                    p.starts_with(&watched_heads)
                        || p.file_name()
                            .is_some_and(|n| n == "HEAD" || n == "packed-refs")
                });
                if relevant {
                    // A full channel already holds a wake-up; one is enough.
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| RuntimeError::Watch(e.to_string()))?;
        let mut watch = |path: &Path, mode| {
            watcher
                .watch(path, mode)
                .map_err(|e| RuntimeError::Watch(e.to_string()))
        };
        watch(&git_dir, notify::RecursiveMode::NonRecursive)?;
        if heads.is_dir() {
            watch(&heads, notify::RecursiveMode::Recursive)?;
        }
        Ok(BranchWatcher {
            _watcher: watcher,
            changes,
        })
    }
}

/// The declared state as the store has it, for a restarted service.
async fn declared_state(store: &Store) -> Result<Catalog, RuntimeError> {
    let mut catalog = Catalog::default();
    for row in store.current_pipelines().await? {
        let entry = stored_entry(
            "pipeline",
            &row.name,
            &row.file,
            &row.version,
            row.definition,
        )?;
        catalog
            .pipelines
            .insert(Arc::from(row.name.as_str()), entry);
    }
    for row in store.active_schedules().await? {
        let entry = stored_entry(
            "schedule",
            &row.name,
            &row.file,
            &row.version,
            row.definition,
        )?;
        catalog
            .schedules
            .insert(Arc::from(row.name.as_str()), entry);
    }
    Ok(catalog)
}

/// A catalog entry read back from a stored definition.
fn stored_entry<T: serde::de::DeserializeOwned>(
    kind: &str,
    name: &str,
    file: &str,
    version: &str,
    definition: Value,
) -> Result<Entry<T>, RuntimeError> {
    let value = serde_json::from_value(definition).map_err(|e| RuntimeError::Stored {
        what: format!("{kind} {name}"),
        reason: e.to_string(),
    })?;
    Ok(Entry {
        file: Arc::from(file),
        line: 0,
        version: Arc::from(version),
        value: Arc::new(value),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use git2::Signature;
    use trainyard_policies::PolicyConfig;

    use super::*;
    use crate::report::notes::NotesForge;

    const IMAGE: &str = "reg.example.com/ml@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

    /// An executor whose steps run elsewhere: it records what it is given and never finishes
    /// anything, which is all a test of what the runtime uploads needs.
    #[derive(Clone, Default)]
    struct Remote {
        submitted: Arc<Mutex<Vec<StepJob>>>,
        /// When set, a submission returns only once this many are in flight together.
        together: Option<Arc<tokio::sync::Barrier>>,
    }

    impl Executor for Remote {
        async fn submit(&self, job: StepJob) -> Result<(), ExecError> {
            self.submitted.lock().expect("lock").push(job);
            if let Some(barrier) = &self.together {
                barrier.wait().await;
            }
            Ok(())
        }
        async fn observe(&self, name: &str) -> Result<Option<JobState>, ExecError> {
            let known = self
                .submitted
                .lock()
                .expect("lock")
                .iter()
                .any(|j| j.name == name);
            Ok(known.then(|| JobState::Running { since: Utc::now() }))
        }
        async fn cancel(&self, _name: &str) -> Result<(), ExecError> {
            Ok(())
        }
        async fn logs(&self, _name: &str) -> Result<String, ExecError> {
            Ok(String::new())
        }
        fn job_dir(&self, name: &str) -> PathBuf {
            Path::new("/trainyard/work").join(name)
        }
        fn runs_here(&self) -> bool {
            false
        }
        async fn known_jobs(&self) -> Result<Vec<String>, ExecError> {
            Ok(self
                .submitted
                .lock()
                .expect("lock")
                .iter()
                .map(|j| j.name.clone())
                .collect())
        }
    }

    fn commit_all(repo: &Repository, message: &str) {
        let mut index = repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let sig = Signature::now("test", "test@example.com").expect("signature");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit");
    }

    async fn service(
        repo: &Path,
        data: &Path,
        artifacts: &ArtifactStore,
        executor: Remote,
    ) -> Service<Remote, NotesForge> {
        std::fs::create_dir_all(data).expect("data dir");
        let store = Store::connect(&format!("sqlite://{}", data.join("db").display()))
            .await
            .expect("store");
        let (_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let config = Config {
            repo: repo.to_owned(),
            remote: None,
            branch: None,
            subdir: "ml".to_owned(),
            data_dir: data.to_owned(),
            instance: None,
            installation: "test".to_owned(),
            max_parallel_steps: 8,
            policy: PolicyConfig::default(),
        };
        Service::new(
            config,
            store,
            executor,
            events,
            NotesForge::new(repo.to_owned()),
            artifacts.clone(),
        )
        .await
        .expect("service")
    }

    /// Waits up to ten seconds for the store to say `sha` is the applied head.
    async fn wait_for_head(store: &Store, sha: &str) -> bool {
        for _ in 0..100 {
            if store
                .cursor(crate::store::FOLLOWED_CURSOR)
                .await
                .expect("cursor")
                .as_deref()
                == Some(sha)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_push_webhook_makes_the_loop_apply_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo_dir = dir.path().join("repo");
        let repo = Repository::init(&repo_dir).expect("init");
        std::fs::create_dir_all(repo_dir.join("ml")).expect("dirs");
        std::fs::write(repo_dir.join("ml/notes.txt"), "one").expect("write");
        commit_all(&repo, "first");
        let head = |repo: &Repository| repo.head().expect("head").target().expect("id").to_string();
        let first = head(&repo);
        let artifacts =
            ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8")).expect("store");
        let mut service = service(
            &repo_dir,
            &dir.path().join("data"),
            &artifacts,
            Remote::default(),
        )
        .await;
        let store = service.store.clone();
        let wake = service.wake_handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Polls once an hour: only the webhook can make it look at the branch again. The
        // loop's future is not Send, so it runs beside the test in this task.
        let loop_ = service.serve(Duration::from_secs(3600), None, None, async {
            let _ = stopped.await;
        });
        let test = async {
            assert!(
                wait_for_head(&store, &first).await,
                "the first pass applies the head"
            );

            std::fs::write(repo_dir.join("ml/notes.txt"), "two").expect("write");
            commit_all(&repo, "second");
            let second = head(&repo);
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                store
                    .cursor(crate::store::FOLLOWED_CURSOR)
                    .await
                    .expect("cursor"),
                Some(first),
                "without a push nothing looks at the branch before the next poll"
            );
            let push = ForgeEvent::Push {
                branch: "main".to_owned(),
                after: second.clone(),
            };
            assert!(
                store
                    .record_forge_event("delivery-1", &push, Utc::now())
                    .await
                    .expect("record")
            );
            wake.notify_one();
            assert!(
                wait_for_head(&store, &second).await,
                "the push is applied at once"
            );
            assert!(
                store
                    .pending_forge_events(10)
                    .await
                    .expect("pending")
                    .is_empty(),
                "the push event is finished"
            );
            stop.send(()).expect("stop");
        };
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(loop_, test) })
            .await
            .expect("the test and the loop finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn steps_that_run_elsewhere_get_the_followed_tree_uploaded_once_by_its_id() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let repo_dir = dir.path().join("repo");
        let repo = Repository::init(&repo_dir).expect("init");
        std::fs::create_dir_all(repo_dir.join("ml/churn")).expect("dirs");
        std::fs::write(
            repo_dir.join("ml/churn/pipeline.yaml"),
            format!(
                "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: churn, owner: team-a}}\n\
                 spec:\n  image: {IMAGE}\n  triggers: {{on_change: true}}\n  steps:\n    \
                 - {{name: a, run: [./train.sh]}}\n    - {{name: b, run: [./train.sh]}}\n"
            ),
        )
        .expect("write pipeline");
        let script = repo_dir.join("ml/churn/train.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(repo_dir.join("ml/my data_1.csv"), "x,y\n").expect("write data");
        std::fs::write(repo_dir.join("outside.txt"), "not followed").expect("write outside");
        commit_all(&repo, "first");
        let artifacts =
            ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8")).expect("store");

        let first = Remote::default();
        let mut service1 = service(
            &repo_dir,
            &dir.path().join("data1"),
            &artifacts,
            first.clone(),
        )
        .await;
        service1.apply_head().await.expect("apply");
        service1.drive_runs().await.expect("drive");

        let jobs = first.submitted.lock().expect("lock").clone();
        assert_eq!(jobs.len(), 2, "both steps start: {jobs:?}");
        let head = repo.head().expect("head").peel_to_commit().expect("commit");
        let tree_id = head
            .tree()
            .expect("tree")
            .get_path(Path::new("ml"))
            .expect("ml")
            .id()
            .to_string();
        let prefix = artifacts::source_prefix(&tree_id);
        for job in &jobs {
            assert_eq!(
                job.source,
                Some(StepSource {
                    prefix: prefix.clone(),
                    dir: PathBuf::from("churn")
                })
            );
            assert_eq!(
                job.workdir,
                Path::new("/trainyard/work")
                    .join(&job.name)
                    .join("src/churn")
            );
        }
        let mut keys = artifacts.list(&prefix).await.expect("list");
        keys.sort();
        let script_key = artifacts::source_key(&prefix, b"churn/train.sh");
        assert_eq!(
            keys,
            vec![
                artifacts::source_key(&prefix, b"churn/pipeline.yaml"),
                script_key.clone(),
                artifacts::source_key(&prefix, b"my data_1.csv"),
            ]
        );
        let marker = artifacts
            .get_bytes(&artifacts::source_marker_key(&prefix))
            .await
            .expect("get")
            .expect("the marker is written");
        let marker: SourceMarker = serde_json::from_slice(&marker).expect("marker");
        assert_eq!(marker.executables, vec![script_key.clone()]);

        // A change outside the followed directory makes a new commit with the same tree: a
        // second service (nothing remembered in memory) reuses the upload instead of
        // repeating it, which removing one of its files shows.
        std::fs::write(repo_dir.join("outside.txt"), "changed").expect("write outside");
        commit_all(&repo, "second");
        let removed = artifacts::source_key(&prefix, b"my data_1.csv");
        let bytes_before = artifacts.get_bytes(&removed).await.expect("get");
        assert_eq!(bytes_before.as_deref(), Some(&b"x,y\n"[..]));
        std::fs::remove_file(dir.path().join("store").join(&removed))
            .expect("remove one uploaded file");
        let second = Remote::default();
        let mut service2 = service(
            &repo_dir,
            &dir.path().join("data2"),
            &artifacts,
            second.clone(),
        )
        .await;
        let (applied, runs) = service2.apply_head().await.expect("apply");
        assert_ne!(applied, head.id().to_string(), "a new commit");
        assert_eq!(runs.len(), 1, "the pipeline is new to this service's store");
        service2.drive_runs().await.expect("drive");
        let jobs = second.submitted.lock().expect("lock").clone();
        assert!(!jobs.is_empty());
        for job in &jobs {
            assert_eq!(
                job.source.as_ref().map(|s| s.prefix.as_str()),
                Some(prefix.as_str())
            );
        }
        assert_eq!(
            artifacts.get_bytes(&removed).await.expect("get"),
            None,
            "not uploaded again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_submits_the_steps_it_starts_at_once_rather_than_one_after_another() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo_dir = dir.path().join("repo");
        let repo = Repository::init(&repo_dir).expect("init");
        std::fs::create_dir_all(repo_dir.join("ml")).expect("dirs");
        std::fs::write(
            repo_dir.join("ml/pipeline.yaml"),
            format!(
                "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: wide, owner: team-a}}\n\
                 spec:\n  image: {IMAGE}\n  triggers: {{on_change: true}}\n  steps:\n    \
                 - {{name: a, run: [\"true\"]}}\n    - {{name: b, run: [\"true\"]}}\n    \
                 - {{name: c, run: [\"true\"]}}\n"
            ),
        )
        .expect("write pipeline");
        commit_all(&repo, "wide");
        let artifacts =
            ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8")).expect("store");
        // Each submission waits for the other two: submitted one after another, the first
        // would wait forever.
        let executor = Remote {
            together: Some(Arc::new(tokio::sync::Barrier::new(3))),
            ..Remote::default()
        };
        let mut service = service(
            &repo_dir,
            &dir.path().join("data"),
            &artifacts,
            executor.clone(),
        )
        .await;
        service.apply_head().await.expect("apply");
        tokio::time::timeout(Duration::from_secs(20), service.drive_runs())
            .await
            .expect("the three submissions were in flight together")
            .expect("drive");
        let mut names: Vec<String> = executor
            .submitted
            .lock()
            .expect("lock")
            .iter()
            .map(|j| j.step.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
