//! The values the store takes and returns: inputs named `New…`, rows named `…Row`, and the
//! closed sets of states stored as text. JSON columns are typed: definitions are the spec's
//! documents, params and metrics are maps, and report and event payloads are whatever type
//! the caller writes and reads them as (`P`), so the store stays below the modules that
//! define them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::registry::GateCheck;
use crate::spec::check::Params;
use crate::spec::{Pipeline, Schedule};

/// Declares an enum stored as a fixed lowercase word, with its conversions both ways.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The word stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Reads a stored word; `None` for a word this version does not know.
            pub fn from_stored(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_enum! {
    /// Whether a commit on the followed branch was applied.
    pub enum CommitOutcome {
        /// Its documents are now the declared state.
        Applied => "applied",
        /// It failed validation or policy; the declared state stayed as it was.
        Rejected => "rejected",
    }
}

stored_enum! {
    /// What started a run.
    pub enum Trigger {
        /// A schedule's tick.
        Schedule => "schedule",
        /// The pipeline's definition changed on the followed branch (`on_change`).
        Change => "change",
        /// A person, through the CLI or API.
        Manual => "manual",
        /// A pull request asked for a preview of its version.
        Preview => "preview",
        /// `trainyard backfill` asked for a past fire time of a schedule.
        Backfill => "backfill",
    }
}

stored_enum! {
    /// Where a run is in its life.
    pub enum RunState {
        /// Created; no step has started.
        Pending => "pending",
        /// At least one step attempt has started.
        Running => "running",
        /// Every step succeeded or was skipped.
        Succeeded => "succeeded",
        /// A step failed for good, or the run could not go on.
        Failed => "failed",
        /// Stopped on request.
        Cancelled => "cancelled",
    }
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

stored_enum! {
    /// Where a step is in its life.
    pub enum StepState {
        /// Not started, or waiting for its next attempt after a failure.
        Waiting => "waiting",
        /// An attempt is running.
        Running => "running",
        /// Its last attempt succeeded.
        Succeeded => "succeeded",
        /// Its last attempt failed and no retry is left.
        Failed => "failed",
        /// Stopped on request.
        Cancelled => "cancelled",
        /// Will not run, because a step it needs did not succeed or the run ended.
        Skipped => "skipped",
    }
}

stored_enum! {
    /// Where one attempt of a step is.
    pub enum AttemptState {
        /// Submitted to the executor and not finished.
        Running => "running",
        /// Exited successfully.
        Succeeded => "succeeded",
        /// Exited unsuccessfully, timed out, or was lost.
        Failed => "failed",
        /// Stopped on request.
        Cancelled => "cancelled",
        /// Not run: it reused the outputs of an earlier attempt with the same cache key.
        Cached => "cached",
    }
}

stored_enum! {
    /// What became of a schedule's tick.
    pub enum TickOutcome {
        /// A run was started for it.
        Fired => "fired",
        /// It was due but deliberately not run (concurrency, pause).
        Skipped => "skipped",
        /// It passed without a chance to run (downtime beyond the deadline or catch-up).
        Missed => "missed",
    }
}

stored_enum! {
    /// Whether a trained model passed its gate.
    pub enum ModelState {
        /// Passed; it received the next version number.
        Accepted => "accepted",
        /// Failed the gate; recorded without a version.
        Rejected => "rejected",
    }
}

stored_enum! {
    /// What a report writes on the forge.
    pub enum ReportKind {
        /// A commit status; the key is its context.
        Status => "status",
        /// A comment edited in place; the key is its hidden marker.
        Comment => "comment",
        /// A check run; the key is its name.
        CheckRun => "check_run",
    }
}

stored_enum! {
    /// Where a report is in the outbox.
    pub enum ReportState {
        /// Waiting for (another) delivery attempt.
        Pending => "pending",
        /// The forge accepted it.
        Delivered => "delivered",
        /// A newer report for the same commit, kind and key replaced it before delivery.
        Superseded => "superseded",
        /// The forge refused it for good.
        Failed => "failed",
    }
}

/// A pipeline version declared by a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineUpsert {
    /// `metadata.name`.
    pub name: String,
    /// Content hash of the definition.
    pub version: String,
    /// File that declares it, relative to the tracked path.
    pub file: String,
    /// The document.
    pub definition: Arc<Pipeline>,
}

/// A schedule declared by a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleUpsert {
    /// `metadata.name`.
    pub name: String,
    /// Pipeline it starts.
    pub pipeline: String,
    /// Content hash of the schedule document.
    pub version: String,
    /// File that declares it, relative to the tracked path.
    pub file: String,
    /// The document.
    pub definition: Arc<Schedule>,
    /// `spec.suspend`.
    pub suspended: bool,
}

/// Everything one commit of the followed branch changes, written in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyCommit<P> {
    /// The commit.
    pub sha: String,
    /// When it is applied; new schedules and resumed ones become active from this instant.
    pub at: DateTime<Utc>,
    /// Applied, or rejected (then only the commit row and `reports` are written).
    pub outcome: CommitOutcome,
    /// One line for people: what changed, or why it was rejected.
    pub summary: String,
    /// Pipelines added or changed.
    pub pipelines: Vec<PipelineUpsert>,
    /// Pipelines no longer declared.
    pub retire_pipelines: Vec<String>,
    /// Schedules declared (new, changed or unchanged).
    pub schedules: Vec<ScheduleUpsert>,
    /// Schedules no longer declared.
    pub retire_schedules: Vec<String>,
    /// Runs the commit starts (pipelines with `on_change`).
    pub runs: Vec<NewRun>,
    /// Reports about the commit.
    pub reports: Vec<NewReport<P>>,
}

/// The result of applying a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// False when the commit had been applied before; nothing was written this time.
    pub first_time: bool,
    /// Runs the commit created (the first time it was applied), in the order given.
    pub run_ids: Vec<i64>,
}

/// A run to create, with its steps waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline version the run is pinned to.
    pub pipeline_version: String,
    /// Commit the version comes from.
    pub commit_sha: String,
    /// What started it.
    pub trigger: Trigger,
    /// The schedule, for scheduled runs (must exist).
    pub schedule: Option<String>,
    /// The tick's time, for scheduled runs.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Resolved parameters.
    pub params: Params,
    /// Step names in definition order.
    pub steps: Vec<String>,
    /// Finally step names in definition order.
    pub finally: Vec<String>,
    /// Run every step, reusing nothing from the step cache (what they make refreshes it).
    pub no_cache: bool,
}

impl NewRun {
    /// The run of `pipeline` at `version` from `commit`, with its steps waiting: the one way
    /// every trigger builds a run.
    pub fn of(
        pipeline: &Pipeline,
        version: &str,
        commit: &str,
        trigger: Trigger,
        params: Params,
    ) -> NewRun {
        NewRun {
            pipeline: pipeline.metadata.name.clone(),
            pipeline_version: version.to_owned(),
            commit_sha: commit.to_owned(),
            trigger,
            schedule: None,
            scheduled_at: None,
            params,
            // A matrix step is one step row per instance.
            steps: pipeline
                .spec
                .steps
                .iter()
                .flat_map(|s| s.instance_names())
                .collect(),
            finally: pipeline
                .spec
                .finally
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            no_cache: false,
        }
    }

    /// This run, started by `schedule`'s tick at `at`.
    pub fn for_tick(mut self, schedule: &str, at: DateTime<Utc>) -> NewRun {
        self.schedule = Some(schedule.to_owned());
        self.scheduled_at = Some(at);
        self
    }
}

/// A report to deliver to the forge.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReport<P> {
    /// Commit the report is about.
    pub commit_sha: String,
    /// Status or comment.
    pub kind: ReportKind,
    /// Status context or comment marker; only the newest pending report per
    /// (commit, kind, key) is delivered.
    pub key: String,
    /// What the report module needs to write it.
    pub payload: P,
}

/// A tick of a schedule and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTick {
    /// The tick's time.
    pub scheduled_at: DateTime<Utc>,
    /// Fired, skipped or missed.
    pub outcome: TickOutcome,
    /// Why it was skipped or missed.
    pub reason: Option<String>,
    /// The run a fired tick starts; created only if the tick is new.
    pub run: Option<NewRun>,
}

/// What `record_ticks` did with one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTick {
    /// The tick's time.
    pub scheduled_at: DateTime<Utc>,
    /// False when the tick had been recorded before; nothing was written for it.
    pub new: bool,
    /// The tick's run: the one just created, or the one recorded before.
    pub run_id: Option<i64>,
}

/// An output a step attempt uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// Output name.
    pub output: String,
    /// Where it is stored.
    pub uri: String,
    /// Hex sha256 of its content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// How a step attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    /// Succeeded, failed or cancelled (`Running` is refused).
    pub state: AttemptState,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// The process's exit code, when there was one.
    pub exit_code: Option<i32>,
    /// Why it ended so, for people.
    pub message: Option<String>,
    /// When the next attempt may start: for a failure with retries left, or an attempt the
    /// service's shutdown stopped. The step then waits instead of taking the attempt's
    /// state.
    pub retry_at: Option<DateTime<Utc>>,
    /// Outputs uploaded; a later attempt's output replaces an earlier one of the same name.
    pub artifacts: Vec<NewArtifact>,
    /// For a failure: whether it counts against the step's retries. The service stopping
    /// under a step, or the cluster refusing its Job for a while, is not the step's failure.
    pub charged: bool,
}

/// A trained model and its gate decision.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModelVersion<P> {
    /// Registered model name.
    pub model: String,
    /// The run that trained it; commit, pipeline version and params are copied from it.
    pub run_id: i64,
    /// Accepted or rejected.
    pub state: ModelState,
    /// The metrics the run produced.
    pub metrics: BTreeMap<String, f64>,
    /// Each gate rule with its result.
    pub gates: Vec<GateCheck>,
    /// Why it was rejected, one line per failed rule.
    pub reasons: Vec<String>,
    /// Where the model artifact is stored.
    pub artifact_uri: String,
    /// Hex sha256 of the model artifact.
    pub artifact_sha256: String,
    /// For a model of a matrix step: the instance its `select` picked.
    pub selected: Option<Selected>,
    /// Alias to move to this version when accepted.
    pub promote: Option<String>,
    /// When it was registered.
    pub at: DateTime<Utc>,
    /// Reports about the registration.
    pub reports: Vec<NewReport<P>>,
}

/// A pipeline version with its definition.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRow {
    /// Pipeline name.
    pub name: String,
    /// Content hash.
    pub version: String,
    /// Commit that first applied this version.
    pub commit_sha: String,
    /// File that declared it.
    pub file: String,
    /// The document.
    pub definition: Arc<Pipeline>,
    /// When this version was first applied.
    pub created_at: DateTime<Utc>,
}

/// A schedule as the database knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// `metadata.name`.
    pub name: String,
    /// Pipeline it starts.
    pub pipeline: String,
    /// Content hash of the schedule document.
    pub version: String,
    /// The document.
    pub definition: Arc<Schedule>,
    /// Commit that declared this version.
    pub commit_sha: String,
    /// File that declares it.
    pub file: String,
    /// Ticks at or before this instant never fire (creation, resumption from suspend).
    pub active_since: DateTime<Utc>,
    /// The newest tick recorded.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Set when too many runs failed in a row; ticks are skipped until it is cleared.
    pub paused_at: Option<DateTime<Utc>>,
    /// Scheduled runs that failed since the last success.
    pub consecutive_failures: u32,
    /// Set when the schedule is no longer declared.
    pub retired_at: Option<DateTime<Utc>>,
    /// Why the schedule cannot fire until a commit changes it (Flux's Stalled), if it
    /// cannot.
    pub stalled: Option<Stalled>,
}

/// A permanent problem recorded on an object, shown to people until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Since when.
    pub at: DateTime<Utc>,
    /// Why, in words.
    pub reason: String,
}

/// A recorded tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRow {
    /// Row id.
    pub id: i64,
    /// Schedule name.
    pub schedule: String,
    /// The tick's time.
    pub scheduled_at: DateTime<Utc>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Fired, skipped or missed.
    pub outcome: TickOutcome,
    /// Why it was skipped or missed.
    pub reason: Option<String>,
    /// The run it started.
    pub run_id: Option<i64>,
}

/// A run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Run id.
    pub id: i64,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline version it is pinned to.
    pub pipeline_version: String,
    /// Commit the version comes from.
    pub commit_sha: String,
    /// What started it.
    pub trigger: Trigger,
    /// The schedule, for scheduled runs.
    pub schedule: Option<String>,
    /// The tick's time, for scheduled runs.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Resolved parameters.
    pub params: Params,
    /// Where it is.
    pub state: RunState,
    /// Why it ended so, for people.
    pub message: Option<String>,
    /// Someone asked to stop it (since its DAG ended, if it has finally steps: a cancel
    /// that ended the DAG is in `dag_state`).
    pub cancel_requested: bool,
    /// How its DAG ended, once it did, for a run with finally steps.
    pub dag_state: Option<RunState>,
    /// Whether it runs every step, reusing nothing from the step cache (what they make
    /// refreshes it).
    pub no_cache: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunRow {
    /// The row run `id` has just after `run` was created at `at`, before anything started.
    pub fn queued(id: i64, run: &NewRun, at: DateTime<Utc>) -> RunRow {
        RunRow {
            id,
            pipeline: run.pipeline.clone(),
            pipeline_version: run.pipeline_version.clone(),
            commit_sha: run.commit_sha.clone(),
            trigger: run.trigger,
            schedule: run.schedule.clone(),
            scheduled_at: run.scheduled_at,
            params: run.params.clone(),
            state: RunState::Pending,
            message: None,
            cancel_requested: false,
            dag_state: None,
            no_cache: run.no_cache,
            created_at: at,
            started_at: None,
            finished_at: None,
        }
    }
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// Run id.
    pub run_id: i64,
    /// Step name.
    pub name: String,
    /// Whether it is a finally step (it starts once the DAG has ended).
    pub finally: bool,
    /// Where it is.
    pub state: StepState,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts that failed and count against the step's retries.
    pub failures: u32,
    /// Executor job of the current attempt.
    pub job: Option<String>,
    /// When the next attempt may start, after a failure with retries left.
    pub retry_at: Option<DateTime<Utc>>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// Why the last attempt ended so, or why the step was skipped.
    pub message: Option<String>,
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    /// Run id.
    pub run_id: i64,
    /// Step name.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Executor job name.
    pub job: String,
    /// Where it is.
    pub state: AttemptState,
    /// When it was recorded, before it was handed to the executor.
    pub created_at: DateTime<Utc>,
    /// When the executor accepted it (the Job was created, the process spawned).
    pub submitted_at: Option<DateTime<Utc>>,
    /// When its program began to run (after queueing, scheduling, pulling the image).
    pub running_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The process's exit code.
    pub exit_code: Option<i32>,
    /// Why it ended so.
    pub message: Option<String>,
    /// For a cached attempt: the attempt whose outputs it reused.
    pub reused: Option<AttemptId>,
}

/// Which attempt of which step of which run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptId {
    /// Run id.
    pub run_id: i64,
    /// Step name.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// A succeeded attempt whose outputs a new attempt with the same cache key may reuse.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The attempt.
    pub attempt: AttemptId,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The outputs its step recorded.
    pub artifacts: Vec<ArtifactRow>,
}

/// A stored output of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    /// Run id.
    pub run_id: i64,
    /// Step name.
    pub step: String,
    /// Output name.
    pub output: String,
    /// Where it is stored.
    pub uri: String,
    /// Hex sha256 of its content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// The instance of a matrix step whose model was registered, and its values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selected {
    /// The instance's step name in the run (`train.3`).
    pub step: String,
    /// Its matrix values.
    pub values: BTreeMap<String, serde_json::Value>,
}

/// A registered model version, accepted or rejected, with its lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersionRow {
    /// Row id.
    pub id: i64,
    /// Registered model name.
    pub model: String,
    /// Version number; `None` when rejected.
    pub version: Option<i64>,
    /// Run that trained it.
    pub run_id: i64,
    /// Accepted or rejected.
    pub state: ModelState,
    /// The metrics the run produced.
    pub metrics: BTreeMap<String, f64>,
    /// Each gate rule with its result.
    pub gates: Vec<GateCheck>,
    /// Why it was rejected.
    pub reasons: Vec<String>,
    /// Where the model artifact is stored.
    pub artifact_uri: String,
    /// Hex sha256 of the model artifact.
    pub artifact_sha256: String,
    /// For a model of a matrix step: the instance its `select` picked.
    pub selected: Option<Selected>,
    /// Commit the run was pinned to.
    pub commit_sha: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline version the run was pinned to.
    pub pipeline_version: String,
    /// The run's resolved parameters.
    pub params: Params,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A report in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow<P> {
    /// Row id; delivery follows it.
    pub id: i64,
    /// Commit the report is about.
    pub commit_sha: String,
    /// Status or comment.
    pub kind: ReportKind,
    /// Status context or comment marker.
    pub key: String,
    /// What the report module needs to write it.
    pub payload: P,
    /// Where it is.
    pub state: ReportState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it may be tried next.
    pub next_attempt_at: DateTime<Utc>,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the forge accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An attempt of a step that has not ended, as the run loop follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAttempt {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Executor job name.
    pub job: String,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When the executor accepted it, if it has.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When its program began to run, if it has.
    pub running_at: Option<DateTime<Utc>>,
    /// The last problem handing it to the executor, while it is not accepted.
    pub message: Option<String>,
}

/// A step of an unfinished run, with its open attempt when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWork {
    /// The step.
    pub step: StepRow,
    /// Its attempt that has not ended, if any.
    pub open: Option<OpenAttempt>,
}

/// An unfinished run with everything the run loop needs to move it, read in a fixed number
/// of queries however many runs there are.
#[derive(Debug, Clone, PartialEq)]
pub struct RunWork {
    /// The run.
    pub run: RunRow,
    /// Its steps in definition order.
    pub steps: Vec<StepWork>,
}

/// An attempt to record before it is handed to the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    /// Run id.
    pub run_id: i64,
    /// Step name.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Executor job name.
    pub job: String,
    /// The step's cache key, for a cached step: a later attempt with the same key may
    /// reuse this one's outputs once it has succeeded.
    pub cache_key: Option<String>,
}
