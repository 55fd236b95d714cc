//! One suite, run against a fresh SQLite file and a fresh PostgreSQL schema.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::{AnyConnection, AssertSqlSafe, Connection};

use super::*;
use crate::registry::{GateCheck, Limit};
use crate::report::ForgeEvent;
use crate::spec::model::Document;
use crate::spec::{Pipeline, Schedule, parse_file};

/// No reports, for calls that take some.
const NO_REPORTS: &[NewReport<Value>] = &[];

/// Conveniences of the suite over the store's calls.
impl Store {
    /// One attempt recorded, as a pass records many.
    async fn start_attempt(
        &self,
        run_id: i64,
        step: &str,
        attempt: u32,
        job: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let new = self
            .start_attempts(
                &[NewAttempt {
                    run_id,
                    step: step.to_owned(),
                    attempt,
                    job: job.to_owned(),
                    cache_key: None,
                }],
                at,
            )
            .await?;
        Ok(new.first().copied().unwrap_or(false))
    }

    /// The unfinished runs, oldest first.
    async fn unfinished_runs(&self) -> Result<Vec<RunRow>> {
        self.unfinished_work()
            .await?
            .into_iter()
            .map(|(_, work)| work.map(|w| w.run))
            .collect()
    }

    /// The due reports, read as JSON.
    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ReportRow<Value>>> {
        self.due_reports(now, limit)
            .await?
            .into_iter()
            .map(|(_, row)| row)
            .collect()
    }

    /// Every run listed, each read.
    async fn runs_listed(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
        self.list_runs(pipeline, limit).await?.into_iter().collect()
    }
}

/// The one document of `yaml`.
fn document(yaml: &str) -> Document {
    let parsed = parse_file(yaml.as_bytes());
    match parsed.documents.into_iter().next() {
        Some(doc) => doc.document,
        None => panic!("no document in {yaml}: {:?}", parsed.findings),
    }
}

/// Pipeline `name` with steps `prepare` and `train`, told apart by `tag` (its description).
fn pipeline_doc(name: &str, tag: &str) -> Arc<Pipeline> {
    match document(&format!(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t, \
         description: {tag}}}\nspec: {{image: i, params: {{epochs: {{type: int, default: 3}}}}, \
         steps: [{{name: prepare, run: [x]}}, {{name: train, needs: [prepare], run: [y]}}]}}\n"
    )) {
        Document::Pipeline(p) => p,
        other => panic!("a pipeline, got {other:?}"),
    }
}

/// Schedule `name` of pipeline `churn`, told apart by `tag` (its description).
fn schedule_doc(name: &str, tag: &str) -> Arc<Schedule> {
    match document(&format!(
        "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}, description: {tag}}}\n\
         spec: {{pipeline: churn, cron: '0 2 * * *'}}\n"
    )) {
        Document::Schedule(s) => s,
        other => panic!("a schedule, got {other:?}"),
    }
}

/// The params `{epochs: 3}`.
fn epochs() -> crate::spec::check::Params {
    [("epochs".to_owned(), json!(3))].into()
}

/// PostgreSQL the suite runs against; CI provides it, so an unreachable server fails the run.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Overrides [`DEFAULT_POSTGRES_URL`].
const POSTGRES_URL_VAR: &str = "TRAINYARD_TEST_POSTGRES_URL";

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await.expect("connect to SQLite");
    assert_eq!(store.backend(), Backend::Sqlite);
    test(store.clone()).await;
    store.close().await;
}

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    sqlx::any::install_default_drivers();
    let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let mut admin = AnyConnection::connect(&base)
        .await
        .expect("PostgreSQL must be reachable for the store tests");
    let nanos = Utc::now().timestamp_subsec_nanos();
    let schema = format!(
        "store_test_{}_{}_{nanos}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .expect("create the test schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    // The test runs in its own task so that a failing assertion still drops the schema.
    let outcome = tokio::spawn(async move {
        let store = Store::connect(&url).await.expect("connect to PostgreSQL");
        assert_eq!(store.backend(), Backend::Postgres);
        test(store.clone()).await;
        store.close().await;
    })
    .await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("drop the test schema");
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

/// Runs each named `async fn(Store)` once per backend, as `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_sqlite(super::$test).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_postgres(super::$test).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_run_twice_safely,
    replicas_starting_together_agree_on_one_installation,
    applying_a_commit_twice_changes_nothing,
    a_rejected_commit_records_only_itself_and_its_reports,
    pipeline_versions_are_kept_and_the_current_one_follows_the_branch,
    schedules_follow_their_declarations,
    a_tick_is_recorded_once,
    a_batch_records_each_schedule_once_and_skips_retired_ones,
    a_batch_larger_than_one_statement_gives_every_tick_its_own_run,
    concurrent_recorders_of_one_tick_create_one_run,
    ticks_refuse_runs_that_do_not_belong_to_them,
    attempts_start_and_finish_once,
    a_retried_step_waits_and_a_late_attempt_leaves_the_step_alone,
    finishing_runs_counts_failures_and_pauses_the_schedule,
    cancelling_and_skipping_leave_finished_work_alone,
    model_versions_increment_only_when_accepted,
    the_outbox_delivers_only_the_newest_report_per_context,
    delivery_retries_and_failures_are_recorded,
    a_commit_that_fails_midway_leaves_nothing,
    a_tick_that_fails_midway_leaves_nothing,
    views_list_newest_first,
    pull_requests_are_replaced_by_what_the_forge_says_last,
    a_comment_starts_one_preview_pinned_to_its_head_version,
    a_check_run_button_starts_one_preview_per_pipeline,
    check_run_reports_are_kept_and_superseded_like_statuses,
    a_report_waiting_for_its_retry_holds_back_newer_ones,
    a_delivery_recorded_twice_stores_one_event,
    a_refused_delivery_is_recorded_finished_and_never_handed_out,
    pending_events_come_in_order_and_finished_ones_do_not,
    concurrent_recorders_of_one_delivery_store_one_event,
    delivery_ids_must_be_sensible,
    cancel_and_retry_refuse_what_does_not_fit_and_tell_the_service,
    a_retry_keeps_succeeded_steps_and_numbers_attempts_on,
    a_backfill_fires_each_time_once_alongside_live_ticks,
    the_cache_holds_current_succeeded_attempts_and_a_reuse_is_recorded_once,
);

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid time")
        + chrono::Duration::seconds(seconds)
}

fn commit(sha: &str, at: DateTime<Utc>) -> ApplyCommit<Value> {
    ApplyCommit {
        sha: sha.to_owned(),
        at,
        outcome: CommitOutcome::Applied,
        summary: format!("apply {sha}"),
        pipelines: Vec::new(),
        retire_pipelines: Vec::new(),
        schedules: Vec::new(),
        retire_schedules: Vec::new(),
        runs: Vec::new(),
        reports: Vec::new(),
    }
}

fn pipeline(name: &str, version: &str) -> PipelineUpsert {
    PipelineUpsert {
        name: name.to_owned(),
        version: version.to_owned(),
        file: format!("pipelines/{name}.yaml"),
        definition: pipeline_doc(name, version),
    }
}

fn schedule(name: &str, version: &str, suspended: bool) -> ScheduleUpsert {
    ScheduleUpsert {
        name: name.to_owned(),
        pipeline: "churn".to_owned(),
        version: version.to_owned(),
        file: "schedules.yaml".to_owned(),
        definition: schedule_doc(name, version),
        suspended,
    }
}

fn change_run(sha: &str) -> NewRun {
    NewRun {
        pipeline: "churn".to_owned(),
        pipeline_version: "v1".to_owned(),
        commit_sha: sha.to_owned(),
        trigger: Trigger::Change,
        schedule: None,
        scheduled_at: None,
        params: epochs(),
        steps: vec!["prepare".to_owned(), "train".to_owned()],
        finally: Vec::new(),
        no_cache: false,
    }
}

fn scheduled_run(schedule: &str, at: DateTime<Utc>) -> NewRun {
    NewRun {
        trigger: Trigger::Schedule,
        schedule: Some(schedule.to_owned()),
        scheduled_at: Some(at),
        ..change_run("c1")
    }
}

fn fired(schedule: &str, at: DateTime<Utc>) -> NewTick {
    NewTick {
        scheduled_at: at,
        outcome: TickOutcome::Fired,
        reason: None,
        run: Some(scheduled_run(schedule, at)),
    }
}

fn status(sha: &str, context: &str, state: &str) -> NewReport<Value> {
    NewReport {
        commit_sha: sha.to_owned(),
        kind: ReportKind::Status,
        key: context.to_owned(),
        payload: json!({"state": state}),
    }
}

/// A store holding commit `c1` with pipeline `churn` and schedule `nightly`, applied at t(0).
async fn with_nightly(store: &Store) {
    let mut first = commit("c1", t(0));
    first.pipelines.push(pipeline("churn", "v1"));
    first.schedules.push(schedule("nightly", "s1", false));
    store.apply_commit(&first).await.expect("apply c1");
}

async fn run_count(store: &Store) -> usize {
    store
        .runs_listed(None, 1000)
        .await
        .expect("list runs")
        .len()
}

async fn migrations_run_twice_safely(store: Store) {
    with_nightly(&store).await;
    migrator(store.backend())
        .run(&store.pool)
        .await
        .expect("a second migration run succeeds");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&store.pool)
        .await
        .expect("count applied migrations");
    assert_eq!(
        applied, 8,
        "init, forge events, pull requests, level-triggered, check runs, backfill, finally, cache"
    );
    assert!(
        store
            .current_pipeline("churn")
            .await
            .expect("read")
            .is_some(),
        "data survives the second run"
    );
}

async fn applying_a_commit_twice_changes_nothing(store: Store) {
    let mut first = commit("c1", t(0));
    first.pipelines.push(pipeline("churn", "v1"));
    first.schedules.push(schedule("nightly", "s1", false));
    first.runs.push(change_run("c1"));
    first
        .reports
        .push(status("c1", "trainyard/apply", "success"));

    let applied = store.apply_commit(&first).await.expect("first apply");
    assert!(applied.first_time);
    assert_eq!(applied.run_ids.len(), 1);

    let mut again = first.clone();
    again.at = t(60);
    let repeated = store.apply_commit(&again).await.expect("second apply");
    assert_eq!(
        repeated,
        Applied {
            first_time: false,
            run_ids: applied.run_ids.clone()
        }
    );
    assert_eq!(run_count(&store).await, 1);
    assert_eq!(
        store
            .reports_of_commit::<Value>("c1")
            .await
            .expect("reports")
            .len(),
        1
    );
    assert_eq!(
        store
            .cursor(FOLLOWED_CURSOR)
            .await
            .expect("cursor")
            .as_deref(),
        Some("c1")
    );
    let nightly = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly exists");
    assert_eq!(
        nightly.active_since,
        t(0),
        "the repeat did not move the schedule"
    );

    let run = store
        .run(applied.run_ids[0])
        .await
        .expect("read")
        .expect("run exists");
    assert_eq!(run.state, RunState::Pending);
    assert_eq!(run.trigger, Trigger::Change);
    assert_eq!(run.params, epochs());
    assert_eq!(run.created_at, t(0));
    let steps = store.steps(run.id).await.expect("steps");
    let names: Vec<_> = steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        names,
        [
            ("prepare", StepState::Waiting),
            ("train", StepState::Waiting)
        ]
    );
}

async fn a_rejected_commit_records_only_itself_and_its_reports(store: Store) {
    with_nightly(&store).await;
    let mut bad = commit("c2", t(10));
    bad.outcome = CommitOutcome::Rejected;
    bad.pipelines.push(pipeline("churn", "v2"));
    let refused = store.apply_commit(&bad).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );

    bad.pipelines.clear();
    bad.reports.push(status("c2", "trainyard/apply", "failure"));
    let applied = store
        .apply_commit(&bad)
        .await
        .expect("record the rejection");
    assert!(applied.first_time);
    assert!(applied.run_ids.is_empty());
    assert_eq!(
        store
            .cursor(FOLLOWED_CURSOR)
            .await
            .expect("cursor")
            .as_deref(),
        Some("c2")
    );
    let current = store
        .current_pipeline("churn")
        .await
        .expect("read")
        .expect("churn");
    assert_eq!(current.version, "v1");
    assert_eq!(
        store
            .reports_of_commit::<Value>("c2")
            .await
            .expect("reports")
            .len(),
        1
    );
}

async fn pipeline_versions_are_kept_and_the_current_one_follows_the_branch(store: Store) {
    with_nightly(&store).await;
    let mut second = commit("c2", t(10));
    second.pipelines.push(pipeline("churn", "v2"));
    store.apply_commit(&second).await.expect("apply c2");

    let current = store
        .current_pipeline("churn")
        .await
        .expect("read")
        .expect("churn");
    assert_eq!(
        (current.version.as_str(), current.commit_sha.as_str()),
        ("v2", "c2")
    );
    assert_eq!(
        current.definition.metadata.description.as_deref(),
        Some("v2")
    );
    assert_eq!(current.created_at, t(10));
    let all: Vec<PipelineRow> = store
        .current_pipelines()
        .await
        .expect("read")
        .into_iter()
        .collect::<Result<_>>()
        .expect("rows");
    let listed: Vec<(&str, &str)> = all
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    assert!(
        listed.contains(&("churn", "v2")) && !listed.contains(&("churn", "v1")),
        "{listed:?}"
    );
    let first = store
        .pipeline_version("churn", "v1")
        .await
        .expect("read")
        .expect("v1 kept");
    assert_eq!((first.commit_sha.as_str(), first.created_at), ("c1", t(0)));

    // Declaring the same version again keeps the commit that introduced it.
    let mut third = commit("c3", t(20));
    third.pipelines.push(pipeline("churn", "v2"));
    store.apply_commit(&third).await.expect("apply c3");
    let current = store
        .current_pipeline("churn")
        .await
        .expect("read")
        .expect("churn");
    assert_eq!(current.commit_sha, "c2");

    let mut fourth = commit("c4", t(30));
    fourth.retire_pipelines.push("churn".to_owned());
    store.apply_commit(&fourth).await.expect("apply c4");
    assert_eq!(store.current_pipeline("churn").await.expect("read"), None);
    assert!(
        store
            .pipeline_version("churn", "v2")
            .await
            .expect("read")
            .is_some()
    );

    // Coming back re-points it, with its lineage intact.
    let mut fifth = commit("c5", t(40));
    fifth.pipelines.push(pipeline("churn", "v1"));
    store.apply_commit(&fifth).await.expect("apply c5");
    let current = store
        .current_pipeline("churn")
        .await
        .expect("read")
        .expect("churn");
    assert_eq!(
        (current.version.as_str(), current.commit_sha.as_str()),
        ("v1", "c1")
    );
}

async fn schedules_follow_their_declarations(store: Store) {
    with_nightly(&store).await;
    let created = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(created.active_since, t(0));
    assert_eq!(
        (created.version.as_str(), created.commit_sha.as_str()),
        ("s1", "c1")
    );
    store
        .record_ticks("nightly", &[fired("nightly", t(100))])
        .await
        .expect("record a tick");

    let mut unchanged = commit("c2", t(200));
    unchanged.schedules.push(schedule("nightly", "s1", false));
    store.apply_commit(&unchanged).await.expect("apply c2");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(
        row,
        ScheduleRow {
            last_tick_at: Some(t(100)),
            ..created.clone()
        }
    );

    let mut changed = commit("c3", t(300));
    changed.schedules.push(schedule("nightly", "s2", false));
    store.apply_commit(&changed).await.expect("apply c3");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(
        (row.version.as_str(), row.commit_sha.as_str()),
        ("s2", "c3")
    );
    assert_eq!(row.definition.metadata.description.as_deref(), Some("s2"));
    assert_eq!(
        row.last_tick_at,
        Some(t(100)),
        "a change keeps the tick history"
    );
    assert_eq!(row.active_since, t(0));

    let mut suspend = commit("c4", t(400));
    suspend.schedules.push(schedule("nightly", "s3", true));
    store.apply_commit(&suspend).await.expect("apply c4");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert!(row.suspended);
    assert_eq!(
        row.active_since,
        t(0),
        "suspending does not move active_since"
    );

    let mut resume = commit("c5", t(500));
    resume.schedules.push(schedule("nightly", "s4", false));
    store.apply_commit(&resume).await.expect("apply c5");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert!(!row.suspended);
    assert_eq!(
        row.active_since,
        t(500),
        "the suspended period is not replayed"
    );

    let mut retire = commit("c6", t(600));
    retire.retire_schedules.push("nightly".to_owned());
    store.apply_commit(&retire).await.expect("apply c6");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(row.retired_at, Some(t(600)));
    assert!(store.active_schedules().await.expect("list").is_empty());
    let refused = store
        .record_ticks("nightly", &[fired("nightly", t(700))])
        .await;
    assert!(
        matches!(refused, Err(StoreError::ScheduleNotActive(_))),
        "{refused:?}"
    );
    assert_eq!(
        run_count(&store).await,
        1,
        "a retired schedule starts nothing"
    );

    let mut back = commit("c7", t(800));
    back.schedules.push(schedule("nightly", "s4", false));
    store.apply_commit(&back).await.expect("apply c7");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!((row.retired_at, row.active_since), (None, t(800)));
    let active = store.active_schedules().await.expect("list");
    assert_eq!(active.len(), 1);
}

async fn a_batch_larger_than_one_statement_gives_every_tick_its_own_run(store: Store) {
    const SCHEDULES: usize = 1_100;
    let names: Vec<String> = (0..SCHEDULES).map(|i| format!("s{i:04}")).collect();
    let mut first = commit("c1", t(0));
    first.pipelines.push(pipeline("churn", "v1"));
    for name in &names {
        first.schedules.push(schedule(name, "s1", false));
    }
    store.apply_commit(&first).await.expect("apply c1");
    // Every third schedule recorded its tick before (a pass that crashed after committing).
    let mut before = Vec::new();
    for name in names.iter().step_by(3) {
        let recorded = store
            .record_ticks(name, &[fired(name, t(100))])
            .await
            .expect("record before");
        before.push((name.clone(), recorded[0].run_id));
    }
    let skipped = NewTick {
        scheduled_at: t(50),
        outcome: TickOutcome::Skipped,
        reason: Some("a run is active".to_owned()),
        run: None,
    };
    let batch: Vec<(String, Vec<NewTick>)> = names
        .iter()
        .map(|name| (name.clone(), vec![skipped.clone(), fired(name, t(100))]))
        .collect();
    let recorded = store.record_ticks_batch(&batch).await.expect("record");
    assert_eq!(recorded.len(), SCHEDULES);
    let mut runs = std::collections::HashSet::new();
    for ((name, _), ticks) in batch.iter().zip(&recorded) {
        let ticks = ticks.as_ref().expect("every schedule is active");
        assert_eq!(ticks.len(), 2, "{name}");
        assert!(
            ticks[0].new && ticks[0].run_id.is_none(),
            "{name}: {ticks:?}"
        );
        let run_id = ticks[1].run_id.expect("a fired tick has a run");
        assert!(
            runs.insert(run_id),
            "{name}: run {run_id} is another tick's"
        );
        let earlier = before.iter().find(|(n, _)| n == name);
        assert_eq!(ticks[1].new, earlier.is_none(), "{name}");
        if let Some((_, earlier)) = earlier {
            assert_eq!(
                Some(run_id),
                *earlier,
                "{name} keeps the run recorded before"
            );
        }
        let run = store.run(run_id).await.expect("read").expect("run");
        assert_eq!(
            (run.schedule.as_deref(), run.scheduled_at),
            (Some(name.as_str()), Some(t(100)))
        );
        let last = store.last_tick(name).await.expect("read").expect("tick");
        assert_eq!(last.run_id, Some(run_id), "{name}: the tick links its run");
    }
    let listed = store.runs_listed(None, 5_000).await.expect("list runs");
    assert_eq!(listed.len(), SCHEDULES, "one run per tick, none more");
    let steps = store
        .steps(*runs.iter().max().expect("runs"))
        .await
        .expect("steps");
    let expected = scheduled_run("s0000", t(100)).steps;
    assert_eq!(
        steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        expected
    );

    // The first steps of all of them start in one call, and every run is running.
    let attempts: Vec<NewAttempt> = runs
        .iter()
        .map(|id| NewAttempt {
            run_id: *id,
            step: expected[0].clone(),
            attempt: 1,
            job: format!("job-{id}"),
            cache_key: None,
        })
        .collect();
    let started = store
        .start_attempts(&attempts, t(200))
        .await
        .expect("start");
    assert!(started.iter().all(|new| *new));
    let again = store
        .start_attempts(&attempts, t(201))
        .await
        .expect("again");
    assert!(again.iter().all(|new| !*new), "an attempt starts once");
    for id in runs.iter().take(50) {
        let run = store.run(*id).await.expect("read").expect("run");
        assert_eq!(run.state, RunState::Running);
        let attempts = store.attempts(*id).await.expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].job, format!("job-{id}"));
    }
}

async fn a_batch_records_each_schedule_once_and_skips_retired_ones(store: Store) {
    let mut first = commit("c1", t(0));
    first.pipelines.push(pipeline("churn", "v1"));
    for name in ["a", "b", "gone"] {
        first.schedules.push(schedule(name, "s1", false));
    }
    store.apply_commit(&first).await.expect("apply c1");
    let mut second = commit("c2", t(10));
    second.retire_schedules.push("gone".to_owned());
    store.apply_commit(&second).await.expect("apply c2");
    let batch = vec![
        ("a".to_owned(), vec![fired("a", t(100))]),
        ("gone".to_owned(), vec![fired("gone", t(100))]),
        ("b".to_owned(), vec![fired("b", t(100)), fired("b", t(101))]),
    ];
    let first = store
        .record_ticks_batch(&batch)
        .await
        .expect("record batch");
    assert_eq!(first.len(), 3);
    assert!(first[1].is_none(), "a retired schedule records nothing");
    let b = first[2].as_ref().expect("b is active");
    assert!(b.iter().all(|tick| tick.new && tick.run_id.is_some()));
    assert_eq!(run_count(&store).await, 3);
    let again = store
        .record_ticks_batch(&batch)
        .await
        .expect("record again");
    assert!(again[0].as_ref().expect("a").iter().all(|tick| !tick.new));
    assert_eq!(
        run_count(&store).await,
        3,
        "recording the same ticks again creates no run"
    );
}

async fn a_tick_is_recorded_once(store: Store) {
    with_nightly(&store).await;
    let skipped = NewTick {
        scheduled_at: t(50),
        outcome: TickOutcome::Skipped,
        reason: Some("a run is active".to_owned()),
        run: None,
    };
    let first = store
        .record_ticks("nightly", &[skipped.clone(), fired("nightly", t(100))])
        .await
        .expect("record ticks");
    assert_eq!(first.len(), 2);
    assert_eq!((first[0].new, first[0].run_id), (true, None));
    assert!(first[1].new);
    let run_id = first[1].run_id.expect("the fired tick has a run");

    let again = store
        .record_ticks("nightly", &[fired("nightly", t(100))])
        .await
        .expect("record again");
    assert_eq!(
        again,
        [RecordedTick {
            scheduled_at: t(100),
            new: false,
            run_id: Some(run_id)
        }]
    );
    assert_eq!(run_count(&store).await, 1);
    let run = store.run(run_id).await.expect("read").expect("run");
    assert_eq!(
        (run.trigger, run.schedule.as_deref(), run.scheduled_at),
        (Trigger::Schedule, Some("nightly"), Some(t(100)))
    );
    assert_eq!(
        store
            .active_runs_of_schedule("nightly")
            .await
            .expect("runs"),
        [run_id]
    );

    let last = store
        .last_tick("nightly")
        .await
        .expect("read")
        .expect("a tick");
    assert_eq!(
        (last.scheduled_at, last.outcome, last.run_id),
        (t(100), TickOutcome::Fired, Some(run_id))
    );
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(row.last_tick_at, Some(t(100)));

    // An older tick recorded later does not move last_tick_at back.
    let missed = NewTick {
        scheduled_at: t(20),
        outcome: TickOutcome::Missed,
        reason: Some("past the starting deadline".to_owned()),
        run: None,
    };
    store
        .record_ticks("nightly", &[missed])
        .await
        .expect("record a missed tick");
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(row.last_tick_at, Some(t(100)));
    assert_eq!(store.ticks("nightly", 10).await.expect("ticks").len(), 3);
}

async fn concurrent_recorders_of_one_tick_create_one_run(store: Store) {
    with_nightly(&store).await;
    for round in 1..=5 {
        let at = t(round * 100);
        let recorders: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.record_ticks("nightly", &[fired("nightly", at)]).await },
                )
            })
            .collect();
        let mut results = Vec::new();
        for recorder in recorders {
            let recorded = recorder.await.expect("the task ran").expect("record ticks");
            results.extend(recorded);
        }
        assert_eq!(
            results.iter().filter(|r| r.new).count(),
            1,
            "round {round}: {results:?}"
        );
        assert_eq!(results[0].run_id, results[1].run_id);
        assert!(results[0].run_id.is_some());
    }
    assert_eq!(store.ticks("nightly", 100).await.expect("ticks").len(), 5);
    assert_eq!(run_count(&store).await, 5);
}

async fn ticks_refuse_runs_that_do_not_belong_to_them(store: Store) {
    with_nightly(&store).await;
    let without_run = NewTick {
        run: None,
        ..fired("nightly", t(100))
    };
    let other_schedule = NewTick {
        run: Some(scheduled_run("weekly", t(100))),
        ..fired("nightly", t(100))
    };
    let skipped_with_run = NewTick {
        outcome: TickOutcome::Skipped,
        ..fired("nightly", t(100))
    };
    for tick in [without_run, other_schedule, skipped_with_run] {
        let refused = store.record_ticks("nightly", &[tick]).await;
        assert!(
            matches!(refused, Err(StoreError::Invalid(_))),
            "{refused:?}"
        );
    }
    assert!(store.ticks("nightly", 10).await.expect("ticks").is_empty());
    let unknown = store
        .record_ticks("weekly", &[fired("weekly", t(100))])
        .await;
    assert!(
        matches!(unknown, Err(StoreError::ScheduleNotActive(_))),
        "{unknown:?}"
    );
}

fn outcome(state: AttemptState, at: DateTime<Utc>) -> AttemptOutcome {
    AttemptOutcome {
        state,
        at,
        exit_code: Some(if state == AttemptState::Succeeded {
            0
        } else {
            1
        }),
        message: None,
        retry_at: None,
        artifacts: Vec::new(),
        charged: true,
    }
}

async fn attempts_start_and_finish_once(store: Store) {
    with_nightly(&store).await;
    let run_id = store
        .create_run(&change_run("c1"))
        .await
        .expect("create run");
    assert!(
        store
            .start_attempt(run_id, "prepare", 1, "job-1-prepare-1", t(10))
            .await
            .expect("start")
    );
    assert!(
        !store
            .start_attempt(run_id, "prepare", 1, "job-other", t(20))
            .await
            .expect("start again"),
        "a repeated start is refused"
    );
    let run = store.run(run_id).await.expect("read").expect("run");
    assert_eq!(
        (run.state, run.started_at),
        (RunState::Running, Some(t(10)))
    );
    let steps = store.steps(run_id).await.expect("steps");
    assert_eq!(steps[0].state, StepState::Running);
    assert_eq!(
        (steps[0].attempt, steps[0].job.as_deref()),
        (1, Some("job-1-prepare-1"))
    );

    let mut done = outcome(AttemptState::Succeeded, t(30));
    done.artifacts.push(NewArtifact {
        output: "dataset".to_owned(),
        uri: "file:///artifacts/1/prepare/dataset".to_owned(),
        sha256: "ab".repeat(32),
        size: 1234,
    });
    assert!(
        store
            .finish_attempt(run_id, "prepare", 1, &done)
            .await
            .expect("finish")
    );
    let mut late = outcome(AttemptState::Failed, t(40));
    late.artifacts.clear();
    assert!(
        !store
            .finish_attempt(run_id, "prepare", 1, &late)
            .await
            .expect("finish again"),
        "a repeated finish is refused"
    );
    let steps = store.steps(run_id).await.expect("steps");
    assert_eq!(steps[0].state, StepState::Succeeded);
    assert_eq!(
        (
            steps[0].started_at,
            steps[0].finished_at,
            steps[0].exit_code
        ),
        (Some(t(10)), Some(t(30)), Some(0))
    );
    let artifacts = store.artifacts(run_id).await.expect("artifacts");
    assert_eq!(artifacts.len(), 1);
    assert_eq!(
        (
            artifacts[0].output.as_str(),
            artifacts[0].size,
            artifacts[0].created_at
        ),
        ("dataset", 1234, t(30))
    );

    let attempts = store.attempts(run_id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].state,
            attempts[0].job.as_str(),
            attempts[0].finished_at
        ),
        (AttemptState::Succeeded, "job-1-prepare-1", Some(t(30)))
    );

    let unknown = store.finish_attempt(run_id, "train", 1, &done).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound { .. })),
        "{unknown:?}"
    );
    let no_step = store
        .start_attempt(run_id, "evaluate", 1, "job", t(50))
        .await;
    assert!(
        matches!(no_step, Err(StoreError::NotFound { .. })),
        "{no_step:?}"
    );
}

async fn a_retried_step_waits_and_a_late_attempt_leaves_the_step_alone(store: Store) {
    with_nightly(&store).await;
    let run_id = store
        .create_run(&change_run("c1"))
        .await
        .expect("create run");
    store
        .start_attempt(run_id, "train", 1, "job-a1", t(10))
        .await
        .expect("start 1");
    let mut failed = outcome(AttemptState::Failed, t(20));
    failed.message = Some("out of memory".to_owned());
    failed.retry_at = Some(t(80));
    assert!(
        store
            .finish_attempt(run_id, "train", 1, &failed)
            .await
            .expect("finish 1")
    );
    let train = &store.steps(run_id).await.expect("steps")[1];
    assert_eq!(
        (train.state, train.retry_at, train.finished_at),
        (StepState::Waiting, Some(t(80)), None)
    );
    assert_eq!(
        (train.attempt, train.message.as_deref()),
        (1, Some("out of memory"))
    );

    store
        .start_attempt(run_id, "train", 2, "job-a2", t(90))
        .await
        .expect("start 2");
    let train = &store.steps(run_id).await.expect("steps")[1];
    assert_eq!(
        (train.state, train.attempt, train.retry_at),
        (StepState::Running, 2, None)
    );
    assert_eq!(
        (train.started_at, train.message.as_deref()),
        (Some(t(10)), None)
    );

    // Attempt 3 starts while attempt 2 is still believed running (lost job); attempt 2
    // reporting late must not overwrite the step.
    store
        .start_attempt(run_id, "train", 3, "job-a3", t(100))
        .await
        .expect("start 3");
    let mut late = outcome(AttemptState::Failed, t(110));
    late.artifacts.push(NewArtifact {
        output: "model".to_owned(),
        uri: "file:///artifacts/late".to_owned(),
        sha256: "ef".repeat(32),
        size: 1,
    });
    assert!(
        store
            .finish_attempt(run_id, "train", 2, &late)
            .await
            .expect("finish 2")
    );
    let train = &store.steps(run_id).await.expect("steps")[1];
    assert_eq!((train.state, train.attempt), (StepState::Running, 3));
    assert!(
        store.artifacts(run_id).await.expect("artifacts").is_empty(),
        "a superseded attempt's outputs are not recorded"
    );

    let retry_success = AttemptOutcome {
        retry_at: Some(t(200)),
        ..outcome(AttemptState::Succeeded, t(120))
    };
    let refused = store
        .finish_attempt(run_id, "train", 3, &retry_success)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    assert!(
        store
            .finish_attempt(run_id, "train", 3, &outcome(AttemptState::Failed, t(130)))
            .await
            .expect("finish 3")
    );
    let train = &store.steps(run_id).await.expect("steps")[1];
    assert_eq!(
        (train.state, train.finished_at, train.exit_code),
        (StepState::Failed, Some(t(130)), Some(1))
    );
    let states: Vec<_> = store
        .attempts(run_id)
        .await
        .expect("attempts")
        .iter()
        .map(|a| a.state)
        .collect();
    assert_eq!(states, [AttemptState::Failed; 3]);
}

async fn finishing_runs_counts_failures_and_pauses_the_schedule(store: Store) {
    with_nightly(&store).await;
    let ticks: Vec<_> = (1..=5).map(|i| fired("nightly", t(i * 100))).collect();
    let recorded = store
        .record_ticks("nightly", &ticks)
        .await
        .expect("record ticks");
    let runs: Vec<i64> = recorded.iter().map(|r| r.run_id.expect("a run")).collect();
    let streak = async |store: &Store| {
        let row = store
            .schedule("nightly")
            .await
            .expect("read")
            .expect("nightly");
        (row.consecutive_failures, row.paused_at)
    };

    let report = [status("c1", "trainyard/run", "failure")];
    assert!(
        store
            .finish_run(
                runs[0],
                RunState::Failed,
                "train failed",
                t(1000),
                &report,
                Some(2)
            )
            .await
            .expect("finish")
    );
    assert_eq!(streak(&store).await, (1, None));
    assert!(
        !store
            .finish_run(
                runs[0],
                RunState::Failed,
                "ended",
                t(1001),
                &report,
                Some(2)
            )
            .await
            .expect("finish again"),
        "a finished run stays as it was"
    );
    assert_eq!(
        streak(&store).await,
        (1, None),
        "a repeated finish is not counted"
    );
    assert_eq!(
        store
            .reports_of_commit::<Value>("c1")
            .await
            .expect("reports")
            .len(),
        1
    );
    let run = store.run(runs[0]).await.expect("read").expect("run");
    assert_eq!(
        (run.state, run.message.as_deref(), run.finished_at),
        (RunState::Failed, Some("train failed"), Some(t(1000)))
    );

    store
        .finish_run(
            runs[1],
            RunState::Succeeded,
            "ended",
            t(1100),
            NO_REPORTS,
            Some(2),
        )
        .await
        .expect("finish");
    assert_eq!(streak(&store).await, (0, None));
    store
        .finish_run(
            runs[2],
            RunState::Failed,
            "ended",
            t(1200),
            NO_REPORTS,
            Some(2),
        )
        .await
        .expect("finish");
    store
        .finish_run(
            runs[3],
            RunState::Cancelled,
            "ended",
            t(1300),
            NO_REPORTS,
            Some(2),
        )
        .await
        .expect("finish");
    assert_eq!(
        streak(&store).await,
        (1, None),
        "a cancellation is not a failure"
    );
    store
        .finish_run(
            runs[4],
            RunState::Failed,
            "ended",
            t(1400),
            NO_REPORTS,
            Some(2),
        )
        .await
        .expect("finish");
    assert_eq!(streak(&store).await, (2, Some(t(1400))));
    assert!(
        store
            .active_runs_of_schedule("nightly")
            .await
            .expect("runs")
            .is_empty()
    );

    let refused = store
        .finish_run(
            runs[4],
            RunState::Running,
            "ended",
            t(1500),
            NO_REPORTS,
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let unknown = store
        .finish_run(9999, RunState::Failed, "ended", t(1500), NO_REPORTS, None)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound { .. })),
        "{unknown:?}"
    );

    assert!(
        store
            .set_schedule_paused("nightly", None)
            .await
            .expect("resume")
    );
    assert_eq!(streak(&store).await, (0, None));
    assert!(
        store
            .set_schedule_paused("nightly", Some(t(1600)))
            .await
            .expect("pause")
    );
    assert!(
        store
            .set_schedule_paused("nightly", Some(t(1700)))
            .await
            .expect("pause again")
    );
    assert_eq!(
        streak(&store).await,
        (0, Some(t(1600))),
        "the first pause time is kept"
    );
    assert!(
        !store
            .set_schedule_paused("weekly", None)
            .await
            .expect("unknown schedule")
    );

    // Runs not started by the schedule do not touch its streak.
    let manual = store
        .create_run(&NewRun {
            trigger: Trigger::Manual,
            ..scheduled_run("nightly", t(0))
        })
        .await
        .expect("create");
    store
        .finish_run(
            manual,
            RunState::Failed,
            "ended",
            t(1800),
            NO_REPORTS,
            Some(1),
        )
        .await
        .expect("finish");
    assert_eq!(streak(&store).await, (0, Some(t(1600))));
}

async fn cancelling_and_skipping_leave_finished_work_alone(store: Store) {
    with_nightly(&store).await;
    let run_id = store
        .create_run(&change_run("c1"))
        .await
        .expect("create run");
    store
        .start_attempt(run_id, "prepare", 1, "job", t(10))
        .await
        .expect("start");
    assert!(store.request_cancel(run_id).await.expect("cancel"));
    assert!(
        store
            .run(run_id)
            .await
            .expect("read")
            .expect("run")
            .cancel_requested
    );
    let names = ["prepare".to_owned(), "train".to_owned()];
    assert_eq!(
        store
            .skip_steps(run_id, &names, "run cancelled")
            .await
            .expect("skip"),
        1
    );
    let steps = store.steps(run_id).await.expect("steps");
    assert_eq!(steps[0].state, StepState::Running);
    assert_eq!(
        (steps[1].state, steps[1].message.as_deref()),
        (StepState::Skipped, Some("run cancelled"))
    );
    store
        .finish_run(
            run_id,
            RunState::Cancelled,
            "ended",
            t(20),
            NO_REPORTS,
            None,
        )
        .await
        .expect("finish");
    assert!(!store.request_cancel(run_id).await.expect("cancel finished"));
    assert!(
        store
            .unfinished_runs()
            .await
            .expect("unfinished")
            .is_empty()
    );
}

fn model(run_id: i64, state: ModelState, auc: f64, at: DateTime<Utc>) -> NewModelVersion<Value> {
    NewModelVersion {
        model: "churn-classifier".to_owned(),
        run_id,
        state,
        metrics: BTreeMap::from([("auc".to_owned(), auc)]),
        gates: vec![GateCheck {
            metric: "auc".to_owned(),
            bound: "min 0.8".to_owned(),
            limit: Limit::Min(0.8),
            value: Some(auc),
            passed: auc >= 0.8,
            detail: format!("auc {auc} against min 0.8"),
        }],
        reasons: if state == ModelState::Rejected {
            vec![format!("auc {auc} < 0.8")]
        } else {
            Vec::new()
        },
        artifact_uri: format!("file:///artifacts/{run_id}/train/model"),
        artifact_sha256: "cd".repeat(32),
        selected: None,
        promote: Some("champion".to_owned()),
        at,
        reports: vec![status("c1", "trainyard/model", state.as_str())],
    }
}

async fn model_versions_increment_only_when_accepted(store: Store) {
    with_nightly(&store).await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(
            store
                .create_run(&change_run("c1"))
                .await
                .expect("create run"),
        );
    }
    assert_eq!(
        store
            .register_model(&model(runs[0], ModelState::Accepted, 0.85, t(10)))
            .await
            .expect("register"),
        Some(1)
    );
    assert_eq!(
        store
            .register_model(&model(runs[1], ModelState::Rejected, 0.70, t(20)))
            .await
            .expect("register"),
        None
    );
    assert_eq!(
        store
            .register_model(&model(runs[2], ModelState::Accepted, 0.90, t(30)))
            .await
            .expect("register"),
        Some(2)
    );
    assert_eq!(
        store
            .register_model(&model(runs[2], ModelState::Accepted, 0.90, t(40)))
            .await
            .expect("register again"),
        Some(2),
        "a run registers its model once"
    );

    let champion = store
        .alias("churn-classifier", "champion")
        .await
        .expect("read")
        .expect("champion");
    assert_eq!((champion.version, champion.run_id), (Some(2), runs[2]));
    assert_eq!(
        (
            champion.commit_sha.as_str(),
            champion.pipeline.as_str(),
            champion.pipeline_version.as_str()
        ),
        ("c1", "churn", "v1")
    );
    assert_eq!(champion.params, epochs());
    assert_eq!(champion.metrics, BTreeMap::from([("auc".to_owned(), 0.9)]));
    assert_eq!(
        store.aliases("churn-classifier").await.expect("aliases"),
        [("champion".to_owned(), 2)]
    );

    let versions = store
        .models(Some("churn-classifier"))
        .await
        .expect("models");
    let listed: Vec<_> = versions.iter().map(|m| (m.version, m.state)).collect();
    assert_eq!(
        listed,
        [
            (Some(2), ModelState::Accepted),
            (None, ModelState::Rejected),
            (Some(1), ModelState::Accepted)
        ]
    );
    assert_eq!(versions[1].reasons, ["auc 0.7 < 0.8"]);
    assert_eq!(
        store
            .reports_of_commit::<Value>("c1")
            .await
            .expect("reports")
            .len(),
        3
    );

    let mut no_reason = model(runs[3], ModelState::Rejected, 0.5, t(50));
    no_reason.reasons.clear();
    let refused = store.register_model(&no_reason).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let unknown_run = store
        .register_model(&model(9999, ModelState::Accepted, 0.9, t(60)))
        .await;
    assert!(
        matches!(unknown_run, Err(StoreError::NotFound { .. })),
        "{unknown_run:?}"
    );

    let mut other = model(runs[3], ModelState::Accepted, 0.95, t(70));
    other.model = "churn-regressor".to_owned();
    other.promote = None;
    assert_eq!(
        store.register_model(&other).await.expect("register"),
        Some(1),
        "versions count per model"
    );
    assert!(
        store
            .aliases("churn-regressor")
            .await
            .expect("aliases")
            .is_empty()
    );
    assert_eq!(store.models(None).await.expect("models").len(), 4);
    assert_eq!(
        store
            .alias("churn-regressor", "champion")
            .await
            .expect("read"),
        None
    );
}

async fn the_outbox_delivers_only_the_newest_report_per_context(store: Store) {
    with_nightly(&store).await;
    let run_id = store
        .create_run(&change_run("c1"))
        .await
        .expect("create run");
    let reports = [
        status("c1", "trainyard/run", "pending"),
        status("c1", "trainyard/run", "running"),
        status("c1", "trainyard/apply", "success"),
    ];
    store
        .finish_run(run_id, RunState::Succeeded, "ended", t(10), &reports, None)
        .await
        .expect("finish");
    let mut last = commit("c2", t(20));
    last.reports.push(status("c1", "trainyard/run", "success"));
    last.reports.push(NewReport {
        kind: ReportKind::Comment,
        ..status("c1", "trainyard/run", "comment body")
    });
    store.apply_commit(&last).await.expect("apply c2");

    let due = store.due(t(30), 10).await.expect("due");
    let delivered: Vec<_> = due
        .iter()
        .map(|r| (r.kind, r.key.as_str(), r.payload["state"].as_str()))
        .collect();
    assert_eq!(
        delivered,
        [
            (ReportKind::Status, "trainyard/apply", Some("success")),
            (ReportKind::Status, "trainyard/run", Some("success")),
            (ReportKind::Comment, "trainyard/run", Some("comment body")),
        ]
    );
    let states: Vec<_> = store
        .reports_of_commit::<Value>("c1")
        .await
        .expect("reports")
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(
        states,
        [
            ReportState::Superseded,
            ReportState::Superseded,
            ReportState::Pending,
            ReportState::Pending,
            ReportState::Pending
        ]
    );
    assert!(
        store.due(t(5), 10).await.expect("due").is_empty(),
        "nothing is due before it was enqueued"
    );
    assert_eq!(
        store.due(t(30), 1).await.expect("due").len(),
        1,
        "the limit holds"
    );
}

async fn delivery_retries_and_failures_are_recorded(store: Store) {
    let mut first = commit("c1", t(0));
    first.reports.push(status("c1", "a", "success"));
    first.reports.push(status("c1", "b", "success"));
    first.reports.push(status("c1", "c", "success"));
    store.apply_commit(&first).await.expect("apply");
    let due = store.due(t(1), 10).await.expect("due");
    let [a, b, c] = [due[0].id, due[1].id, due[2].id];

    assert!(store.mark_retry(a, t(60), "HTTP 502").await.expect("retry"));
    assert!(
        store
            .mark_failed(b, "HTTP 422: description too long")
            .await
            .expect("fail")
    );
    assert!(store.mark_delivered(c, t(2)).await.expect("deliver"));
    assert!(
        store.due(t(59), 10).await.expect("due").is_empty(),
        "a retry waits"
    );
    let due = store.due(t(60), 10).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].id, due[0].attempts, due[0].last_error.as_deref()),
        (a, 1, Some("HTTP 502"))
    );

    assert!(
        !store
            .mark_delivered(b, t(61))
            .await
            .expect("deliver a failed report")
    );
    assert!(
        !store
            .mark_retry(c, t(61), "late")
            .await
            .expect("retry a delivered report")
    );
    assert!(store.mark_delivered(a, t(62)).await.expect("deliver"));
    let rows = store
        .reports_of_commit::<Value>("c1")
        .await
        .expect("reports");
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.state, r.attempts, r.delivered_at))
        .collect();
    assert_eq!(
        summary,
        [
            (ReportState::Delivered, 2, Some(t(62))),
            (ReportState::Failed, 1, None),
            (ReportState::Delivered, 1, Some(t(2))),
        ]
    );
    assert_eq!(
        rows[1].last_error.as_deref(),
        Some("HTTP 422: description too long")
    );
}

async fn a_commit_that_fails_midway_leaves_nothing(store: Store) {
    let mut broken = commit("c1", t(0));
    broken.pipelines.push(pipeline("churn", "v1"));
    broken.schedules.push(schedule("nightly", "s1", false));
    broken.runs.push(change_run("c1"));
    // The second run's duplicate step breaks the steps' primary key after everything above
    // has been written.
    let mut duplicate = change_run("c1");
    duplicate.steps.push("train".to_owned());
    broken.runs.push(duplicate);
    broken
        .reports
        .push(status("c1", "trainyard/apply", "success"));

    let failed = store.apply_commit(&broken).await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    assert_eq!(store.cursor(FOLLOWED_CURSOR).await.expect("cursor"), None);
    assert_eq!(store.current_pipeline("churn").await.expect("read"), None);
    assert_eq!(
        store.pipeline_version("churn", "v1").await.expect("read"),
        None
    );
    assert_eq!(store.schedule("nightly").await.expect("read"), None);
    assert_eq!(run_count(&store).await, 0);
    assert!(
        store
            .reports_of_commit::<Value>("c1")
            .await
            .expect("reports")
            .is_empty()
    );

    broken.runs.pop();
    let applied = store
        .apply_commit(&broken)
        .await
        .expect("apply the fixed commit");
    assert!(applied.first_time, "the failed attempt left no commit row");
    assert_eq!(run_count(&store).await, 1);
}

async fn a_tick_that_fails_midway_leaves_nothing(store: Store) {
    with_nightly(&store).await;
    let mut broken = fired("nightly", t(200));
    if let Some(run) = broken.run.as_mut() {
        run.steps.push("prepare".to_owned());
    }
    let failed = store
        .record_ticks("nightly", &[fired("nightly", t(100)), broken])
        .await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    assert!(store.ticks("nightly", 10).await.expect("ticks").is_empty());
    assert_eq!(run_count(&store).await, 0);
    let row = store
        .schedule("nightly")
        .await
        .expect("read")
        .expect("nightly");
    assert_eq!(row.last_tick_at, None);

    let recorded = store
        .record_ticks("nightly", &[fired("nightly", t(100))])
        .await
        .expect("record");
    assert!(recorded[0].new, "the failed attempt left no tick");
}

async fn views_list_newest_first(store: Store) {
    with_nightly(&store).await;
    let mut other = change_run("c1");
    other.pipeline = "fraud".to_owned();
    let first = store.create_run(&change_run("c1")).await.expect("create");
    let second = store.create_run(&other).await.expect("create");
    let third = store.create_run(&change_run("c1")).await.expect("create");
    let ids = |runs: Vec<RunRow>| runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.runs_listed(None, 10).await.expect("list")),
        [third, second, first]
    );
    assert_eq!(
        ids(store.runs_listed(Some("churn"), 10).await.expect("list")),
        [third, first]
    );
    assert_eq!(
        ids(store.runs_listed(None, 2).await.expect("list")),
        [third, second]
    );
    assert_eq!(
        ids(store.unfinished_runs().await.expect("list")),
        [first, second, third]
    );

    let ticks: Vec<_> = (1..=3)
        .map(|i| NewTick {
            scheduled_at: t(i * 100),
            outcome: TickOutcome::Missed,
            reason: Some("down".to_owned()),
            run: None,
        })
        .collect();
    store.record_ticks("nightly", &ticks).await.expect("record");
    let listed: Vec<_> = store
        .ticks("nightly", 2)
        .await
        .expect("ticks")
        .iter()
        .map(|t| t.scheduled_at)
        .collect();
    assert_eq!(listed, [t(300), t(200)]);
    assert_eq!(store.last_tick("weekly").await.expect("read"), None);
}

#[tokio::test]
async fn sqlite_files_use_wal_and_foreign_keys() {
    on_sqlite(|store: Store| async move {
        let mut conn = store.pool.acquire().await.expect("a connection");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("journal mode");
        assert_eq!(journal, "wal");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .expect("foreign keys");
        assert_eq!(foreign_keys, 1);
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .expect("busy timeout");
        assert_eq!(busy, i64::from(SQLITE_BUSY_TIMEOUT_MS));
    })
    .await;
}

#[tokio::test]
async fn a_bare_path_names_a_sqlite_file_that_survives_reconnecting() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("my data #1.db");
    let path_text = path.to_str().expect("a UTF-8 path");
    let store = Store::connect(path_text).await.expect("connect by path");
    with_nightly(&store).await;
    store.close().await;
    assert!(path.is_file(), "the file is created where the path says");

    let again = Store::connect(path_text).await.expect("reconnect");
    assert!(
        again
            .current_pipeline("churn")
            .await
            .expect("read")
            .is_some()
    );
    again.close().await;
}

#[tokio::test]
async fn reports_queued_before_check_runs_survive_the_upgrade_and_check_runs_are_taken() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(&url).await.expect("a database");
    let full = migrator(Backend::Sqlite);
    let before: Vec<Migration> = full
        .migrations
        .iter()
        .filter(|m| m.version < 5)
        .cloned()
        .collect();
    Migrator::with_migrations(before)
        .run(&old)
        .await
        .expect("the schema before check runs");
    sqlx::query(
        "INSERT INTO outbox (commit_sha, kind, report_key, payload, state, attempts,
             next_attempt_at, created_at)
         VALUES ('c1', 'status', 'trainyard/validate', '{\"kind\":\"status\"}', 'pending', 2,
             0, 0)",
    )
    .execute(&old)
    .await
    .expect("a queued status");
    old.close().await;

    let store = Store::connect(&url).await.expect("upgraded");
    let due = store.due_reports::<Value>(t(1), 10).await.expect("due");
    assert_eq!(due.len(), 1, "the queued status is still there");
    let row = due[0].1.as_ref().expect("readable");
    assert_eq!((row.kind, row.attempts), (ReportKind::Status, 2));
    let check = NewReport {
        commit_sha: "c1".to_owned(),
        kind: ReportKind::CheckRun,
        key: "trainyard/validate".to_owned(),
        payload: json!({"kind": "check_run"}),
    };
    store
        .enqueue_reports(&[check], t(2))
        .await
        .expect("the new kind is taken");
    let due = store.due_reports::<Value>(t(3), 10).await.expect("due");
    assert_eq!(due.len(), 2);
    assert!(due[1].0 > due[0].0, "ids keep growing after the copy");
    store.close().await;
}

#[tokio::test]
async fn runs_steps_and_ticks_survive_the_copy_of_runs_and_backfilled_runs_are_taken() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(&url).await.expect("a database");
    let before: Vec<Migration> = migrator(Backend::Sqlite)
        .migrations
        .iter()
        .filter(|m| m.version < 6)
        .cloned()
        .collect();
    Migrator::with_migrations(before)
        .run(&old)
        .await
        .expect("the schema before backfills");
    for statement in [
        "INSERT INTO commits (sha, applied_at, outcome, summary) VALUES ('c1', 0, 'applied', 's')",
        "INSERT INTO schedules (name, pipeline, version, definition, commit_sha, file,
             active_since, suspended) VALUES ('nightly', 'churn', 's1', '{}', 'c1', 'f', 0, 0)",
        "INSERT INTO runs (id, pipeline, pipeline_version, commit_sha, triggered_by, schedule,
             scheduled_at, params, state, cancel_requested, created_at)
         VALUES (7, 'churn', 'v1', 'c1', 'schedule', 'nightly', 5, '{}', 'failed', 0, 0)",
        "INSERT INTO steps (run_id, name, ordinal, state, attempt) VALUES (7, 'train', 0, 'failed', 1)",
        "INSERT INTO ticks (schedule, scheduled_at, recorded_at, outcome, run_id)
         VALUES ('nightly', 5, 5, 'fired', 7)",
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&old)
            .await
            .expect(statement);
    }
    old.close().await;

    let store = Store::connect(&url).await.expect("upgraded");
    let run = store.run(7).await.expect("read").expect("the run is kept");
    assert_eq!(
        (run.trigger, run.state),
        (Trigger::Schedule, RunState::Failed)
    );
    assert_eq!(store.steps(7).await.expect("steps").len(), 1);
    assert_eq!(
        store.ticks("nightly", 10).await.expect("ticks")[0].run_id,
        Some(7)
    );
    let mut conn = store.pool.acquire().await.expect("a connection");
    let broken: Vec<AnyRow> = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut *conn)
        .await
        .expect("check");
    assert!(broken.is_empty(), "every reference still holds");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .expect("foreign keys");
    assert_eq!(foreign_keys, 1, "foreign keys are on again");
    drop(conn);
    let orphan = sqlx::query(
        "INSERT INTO steps (run_id, name, ordinal, state, attempt) VALUES (99, 'x', 0, 'waiting', 0)",
    )
    .execute(&store.pool)
    .await;
    assert!(orphan.is_err(), "steps still refer to runs");
    let recorded = store
        .record_backfill(
            "nightly",
            vec![NewRun {
                trigger: Trigger::Backfill,
                ..scheduled_run("nightly", t(1))
            }],
        )
        .await
        .expect("backfill")
        .expect("accepted");
    assert!(
        recorded[0].run_id.is_some_and(|id| id > 7),
        "ids keep growing after the copy: {recorded:?}"
    );
    store.close().await;
}

#[test]
fn database_urls_pick_their_backend() {
    let resolved = |url: &str| resolve_url(url).expect("a supported URL");
    assert_eq!(resolved("postgres://u@h/db").0, Backend::Postgres);
    assert_eq!(resolved("postgresql://u@h/db").0, Backend::Postgres);
    assert_eq!(
        resolved("sqlite://data/t.db"),
        (Backend::Sqlite, "sqlite://data/t.db?mode=rwc".to_owned())
    );
    assert_eq!(resolved("sqlite:t.db?mode=ro").1, "sqlite:t.db?mode=ro");
    assert_eq!(
        resolved("/var/lib/a b.db").1,
        "sqlite:/var/lib/a%20b.db?mode=rwc"
    );
    let refused = resolve_url("mysql://u:secret@h/db");
    match refused {
        Err(StoreError::UnsupportedUrl { scheme }) => assert_eq!(scheme, "mysql"),
        other => panic!("expected an unsupported URL, got {other:?}"),
    }
}

fn pull(number: u64, head: &str, open: bool) -> PullRequestRow {
    PullRequestRow {
        number,
        head_sha: head.to_owned(),
        head_ref: "feature".to_owned(),
        base_ref: "main".to_owned(),
        from_fork: false,
        author: "alice".to_owned(),
        open,
    }
}

async fn pull_requests_are_replaced_by_what_the_forge_says_last(store: Store) {
    assert_eq!(store.pull_request(7).await.expect("read"), None);
    store
        .upsert_pull_request(&pull(7, "h1", true), t(0))
        .await
        .expect("record");
    let moved = PullRequestRow {
        from_fork: true,
        ..pull(7, "h2", false)
    };
    store
        .upsert_pull_request(&moved, t(1))
        .await
        .expect("record");
    assert_eq!(store.pull_request(7).await.expect("read"), Some(moved));
    assert_eq!(store.pull_request(8).await.expect("read"), None);
}

async fn a_comment_starts_one_preview_pinned_to_its_head_version(store: Store) {
    with_nightly(&store).await;
    let version = pipeline("churn", "v9");
    let run = NewRun {
        pipeline_version: "v9".to_owned(),
        trigger: Trigger::Preview,
        ..change_run("head1")
    };
    let comment = |id: i64| {
        vec![NewReport {
            commit_sha: "head1".to_owned(),
            kind: ReportKind::Comment,
            key: format!("run-{id}"),
            payload: json!({"run": id}),
        }]
    };
    let (id, first) = store
        .create_preview(41, 7, &version, &run, comment, t(5))
        .await
        .expect("preview");
    let (again, second) = store
        .create_preview(41, 7, &version, &run, comment, t(6))
        .await
        .expect("preview again");
    assert!(first && !second);
    assert_eq!(again, id, "one run per comment");
    assert_eq!(store.preview_of_comment(41).await.expect("read"), Some(id));
    assert_eq!(store.preview_of_comment(42).await.expect("read"), None);
    assert_eq!(
        store.pull_request_of_preview(id).await.expect("read"),
        Some(7)
    );
    let stored = store.run(id).await.expect("read").expect("the run");
    assert_eq!(
        (
            stored.trigger,
            stored.pipeline_version.as_str(),
            stored.commit_sha.as_str()
        ),
        (Trigger::Preview, "v9", "head1")
    );
    let pinned = store
        .pipeline_version("churn", "v9")
        .await
        .expect("read")
        .expect("the head's version is found for the run");
    assert_eq!(pinned.commit_sha, "head1");
    assert_eq!(
        store
            .current_pipeline("churn")
            .await
            .expect("read")
            .map(|p| p.version),
        Some("v1".to_owned()),
        "the followed branch still declares its own version"
    );
    let reports = store
        .reports_of_commit::<Value>("head1")
        .await
        .expect("reports");
    assert_eq!(reports.len(), 1, "the reports are enqueued once");
    assert_eq!(reports[0].key, format!("run-{id}"));
    let wrong = NewRun {
        trigger: Trigger::Manual,
        ..run.clone()
    };
    assert!(matches!(
        store
            .create_preview(43, 7, &version, &wrong, comment, t(7))
            .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn a_check_run_button_starts_one_preview_per_pipeline(store: Store) {
    with_nightly(&store).await;
    let version = pipeline("churn", "v9");
    let run = NewRun {
        pipeline_version: "v9".to_owned(),
        trigger: Trigger::Preview,
        ..change_run("head1")
    };
    let none = |_: i64| Vec::<NewReport<Value>>::new();
    let (id, first) = store
        .create_action_preview(900, 7, &version, &run, none, t(5))
        .await
        .expect("preview");
    let (again, second) = store
        .create_action_preview(900, 7, &version, &run, none, t(6))
        .await
        .expect("preview again");
    assert!(first && !second);
    assert_eq!(again, id, "one run per check run and pipeline");
    // A comment with the same number is another asker.
    let (other, third) = store
        .create_preview(900, 7, &version, &run, none, t(7))
        .await
        .expect("a comment's preview");
    assert!(third && other != id);
    assert_eq!(
        store.previews_of_check_run(900).await.expect("read"),
        vec![id]
    );
    assert_eq!(
        store.pull_request_of_preview(id).await.expect("read"),
        Some(7)
    );
    assert_eq!(
        store.pull_request_of_preview(other).await.expect("read"),
        Some(7)
    );
}

async fn check_run_reports_are_kept_and_superseded_like_statuses(store: Store) {
    let check = |title: &str| NewReport {
        commit_sha: "head1".to_owned(),
        kind: ReportKind::CheckRun,
        key: "trainyard/validate".to_owned(),
        payload: json!({"kind": "check_run", "title": title}),
    };
    store
        .enqueue_reports(&[check("first"), check("second")], t(1))
        .await
        .expect("enqueued");
    let due = store.due_reports::<Value>(t(2), 10).await.expect("due");
    assert_eq!(due.len(), 1, "the newer one supersedes the older");
    let (_, row) = &due[0];
    let row = row.as_ref().expect("readable");
    assert_eq!(row.kind, ReportKind::CheckRun);
    assert_eq!(row.payload["title"], "second");
}

fn push_event(after: &str) -> ForgeEvent {
    ForgeEvent::Push {
        branch: "main".to_owned(),
        after: after.to_owned(),
    }
}

async fn a_delivery_recorded_twice_stores_one_event(store: Store) {
    let first = push_event(&"a".repeat(40));
    assert!(
        store
            .record_forge_event("d-1", &first, t(0))
            .await
            .expect("record")
    );
    // A replay carries the same id, whatever its body says now.
    assert!(
        !store
            .record_forge_event("d-1", &push_event(&"b".repeat(40)), t(1))
            .await
            .expect("record again")
    );
    let pending = store
        .pending_forge_events::<ForgeEvent>(10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.as_ref().ok(), Some(&first));
    // Still a duplicate once handled: a late redelivery must not run it again.
    store
        .finish_forge_event(pending[0].0, "handled", t(2))
        .await
        .expect("finish");
    assert!(
        !store
            .record_forge_event("d-1", &first, t(3))
            .await
            .expect("record after finishing")
    );
    assert!(
        store
            .pending_forge_events::<ForgeEvent>(10)
            .await
            .expect("pending")
            .is_empty()
    );
}

async fn a_refused_delivery_is_recorded_finished_and_never_handed_out(store: Store) {
    let event = push_event(&"a".repeat(40));
    let why = "refused: sent for mallory/ml, not the followed octo/ml";
    assert!(
        store
            .record_refused_forge_event("d-1", &event, why, t(0))
            .await
            .expect("record")
    );
    assert!(
        store
            .pending_forge_events::<ForgeEvent>(10)
            .await
            .expect("pending")
            .is_empty(),
        "the loop never sees it"
    );
    // Its id is taken: the same delivery cannot be queued later.
    assert!(
        !store
            .record_forge_event("d-1", &event, t(1))
            .await
            .expect("record again")
    );
    store
        .record_forge_event("d-2", &event, t(2))
        .await
        .expect("record another");
    let history: Vec<_> = store
        .forge_event_history(10)
        .await
        .expect("history")
        .into_iter()
        .map(|row| row.expect("readable"))
        .collect();
    let shown: Vec<_> = history
        .iter()
        .map(|row| {
            (
                row.delivery.as_str(),
                row.finished_at,
                row.outcome.as_deref(),
            )
        })
        .collect();
    assert_eq!(shown, [("d-2", None, None), ("d-1", Some(t(0)), Some(why))]);
}

async fn pending_events_come_in_order_and_finished_ones_do_not(store: Store) {
    use crate::report::PrAction;
    let events = [
        push_event(&"a".repeat(40)),
        ForgeEvent::PullRequest {
            action: PrAction::Closed { merged: true },
            number: 3,
            head_sha: "c".repeat(40),
            head_ref: "tune".to_owned(),
            base_ref: "main".to_owned(),
            from_fork: false,
            author: "alice".to_owned(),
        },
        ForgeEvent::Comment {
            pr: 3,
            comment_id: u64::MAX,
            author: "bob".to_owned(),
            body: "/trainyard run train lr=\"0.1 0.2\"\n\u{1F680}".to_owned(),
        },
    ];
    for (n, event) in events.iter().enumerate() {
        let recorded = store
            .record_forge_event(&format!("d-{n}"), event, t(n as i64))
            .await
            .expect("record");
        assert!(recorded);
    }
    let pending = store
        .pending_forge_events::<ForgeEvent>(10)
        .await
        .expect("pending");
    let got: Vec<ForgeEvent> = pending
        .iter()
        .map(|(_, e)| e.as_ref().expect("readable").clone())
        .collect();
    assert_eq!(got, events);
    assert!(pending.windows(2).all(|w| w[0].0 < w[1].0));
    let first_two = store
        .pending_forge_events::<ForgeEvent>(2)
        .await
        .expect("pending");
    assert_eq!(first_two.len(), 2);
    store
        .finish_forge_event(pending[1].0, "handled", t(10))
        .await
        .expect("finish");
    store
        .finish_forge_event(pending[1].0, "handled", t(11))
        .await
        .expect("finishing twice is fine");
    let left: Vec<_> = store
        .pending_forge_events::<ForgeEvent>(10)
        .await
        .expect("pending")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![pending[0].0, pending[2].0]);
    match store
        .finish_forge_event(pending[2].0 + 100, "handled", t(12))
        .await
    {
        Err(StoreError::NotFound { what, .. }) => assert_eq!(what, "forge event"),
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn concurrent_recorders_of_one_delivery_store_one_event(store: Store) {
    let recorders = (0..8).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .record_forge_event("same-delivery", &push_event(&format!("{n:040}")), t(n))
                .await
                .expect("record")
        })
    });
    let mut stored = 0;
    for recorder in recorders.collect::<Vec<_>>() {
        if recorder.await.expect("the recorder finishes") {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(
        store
            .pending_forge_events::<ForgeEvent>(10)
            .await
            .expect("pending")
            .len(),
        1
    );
}

async fn delivery_ids_must_be_sensible(store: Store) {
    for delivery in [String::new(), "x".repeat(201)] {
        match store
            .record_forge_event(&delivery, &push_event(&"a".repeat(40)), t(0))
            .await
        {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("expected invalid input, got {other:?}"),
        }
    }
    assert!(
        store
            .pending_forge_events::<ForgeEvent>(10)
            .await
            .expect("pending")
            .is_empty()
    );
}

async fn a_report_waiting_for_its_retry_holds_back_newer_ones(store: Store) {
    let mut first = commit("c1", t(0));
    first.reports.push(status("c1", "a", "success"));
    first.reports.push(status("c1", "b", "success"));
    store.apply_commit(&first).await.expect("apply");
    let due = store.due(t(1), 10).await.expect("due");
    let [a, b] = [due[0].id, due[1].id];
    assert!(
        store
            .mark_retry(a, t(30), "HTTP 403: secondary rate limit")
            .await
            .expect("retry")
    );
    assert!(
        store.due(t(2), 10).await.expect("due").is_empty(),
        "b was written after a, so it waits for a"
    );
    let due: Vec<i64> = store
        .due(t(30), 10)
        .await
        .expect("due")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, [a, b], "both in order once a is due again");
    let mut newer = commit("c2", t(31));
    newer.reports.push(status("c1", "a", "failure"));
    store.apply_commit(&newer).await.expect("apply");
    assert!(store.mark_retry(b, t(90), "HTTP 502").await.expect("retry"));
    let due: Vec<i64> = store
        .due(t(32), 10)
        .await
        .expect("due")
        .iter()
        .map(|r| r.id)
        .collect();
    assert!(
        due.is_empty(),
        "the newer report of a waits behind b: {due:?}"
    );
}

async fn cancel_and_retry_refuse_what_does_not_fit_and_tell_the_service(store: Store) {
    with_nightly(&store).await;
    let mut signals = store.request_signals().await.expect("listen");
    announced(&mut signals, "listening began").await;
    // What the command line writes reaches the listener through the database (NOTIFY) or
    // the file beside it (SQLite), whichever handle wrote it.
    let cli = store.clone();
    let run_id = cli.create_run(&change_run("c1")).await.expect("create");
    announced(&mut signals, "a queued run tells the service").await;
    assert_eq!(
        store.cancel_run(run_id + 1).await.expect("cancel"),
        Err(Refused::UnknownRun(run_id + 1))
    );
    assert_eq!(
        store.retry_run(run_id).await.expect("retry"),
        Err(Refused::NotFinished {
            id: run_id,
            state: RunState::Pending
        })
    );
    assert_eq!(cli.cancel_run(run_id).await.expect("cancel"), Ok(()));
    announced(&mut signals, "a cancel tells the service").await;
    assert_eq!(store.cancel_run(run_id).await.expect("cancel"), Ok(()));
    let run = store.run(run_id).await.expect("read").expect("run");
    assert!(run.cancel_requested);
    store
        .finish_run(run_id, RunState::Succeeded, "done", t(20), NO_REPORTS, None)
        .await
        .expect("finish");
    assert_eq!(
        store.cancel_run(run_id).await.expect("cancel"),
        Err(Refused::AlreadyFinished {
            id: run_id,
            state: RunState::Succeeded
        })
    );
    assert_eq!(
        store.retry_run(run_id).await.expect("retry"),
        Err(Refused::NothingToRetry {
            id: run_id,
            state: RunState::Succeeded
        })
    );
}

/// Waits for an announcement on `signals`, failing after a while with `what`.
async fn announced(signals: &mut crate::store::RequestSignals, what: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(10), signals.announced())
        .await
        .unwrap_or_else(|_| panic!("{what}: no announcement within 10 s"));
}

async fn a_retry_keeps_succeeded_steps_and_numbers_attempts_on(store: Store) {
    with_nightly(&store).await;
    let run_id = store.create_run(&change_run("c1")).await.expect("create");
    store
        .start_attempt(run_id, "prepare", 1, "job-p1", t(10))
        .await
        .expect("start");
    store
        .finish_attempt(
            run_id,
            "prepare",
            1,
            &outcome(AttemptState::Succeeded, t(11)),
        )
        .await
        .expect("finish prepare");
    store
        .start_attempt(run_id, "train", 1, "job-t1", t(12))
        .await
        .expect("start");
    store
        .finish_attempt(run_id, "train", 1, &outcome(AttemptState::Failed, t(13)))
        .await
        .expect("finish train");
    store
        .finish_run(
            run_id,
            RunState::Failed,
            "train failed",
            t(14),
            NO_REPORTS,
            None,
        )
        .await
        .expect("finish run");
    assert_eq!(
        store.retry_run(run_id).await.expect("retry"),
        Ok(vec!["train".to_owned()])
    );
    let run = store.run(run_id).await.expect("read").expect("run");
    assert_eq!(run.state, RunState::Running, "it had started");
    assert_eq!((run.message, run.finished_at), (None, None));
    assert_eq!(run.started_at, Some(t(10)), "its start is kept");
    let steps = store.steps(run_id).await.expect("steps");
    assert_eq!(
        (steps[0].state, steps[0].attempt),
        (StepState::Succeeded, 1),
        "the succeeded step is kept"
    );
    assert_eq!(
        (steps[1].state, steps[1].attempt, steps[1].failures),
        (StepState::Waiting, 1, 0),
        "the failed step waits with its retries afresh"
    );
    assert_eq!(
        store.retry_run(run_id).await.expect("retry"),
        Err(Refused::NotFinished {
            id: run_id,
            state: RunState::Running
        })
    );
    assert!(
        store
            .start_attempt(run_id, "train", 2, "job-t2", t(20))
            .await
            .expect("start again"),
        "the next attempt is a new one"
    );
    let attempts = store.attempts(run_id).await.expect("attempts");
    let train: Vec<(u32, AttemptState)> = attempts
        .iter()
        .filter(|a| a.step == "train")
        .map(|a| (a.attempt, a.state))
        .collect();
    assert_eq!(
        train,
        [(1, AttemptState::Failed), (2, AttemptState::Running)]
    );
    // A run cancelled before it started is pending again.
    let never = store.create_run(&change_run("c1")).await.expect("create");
    store
        .cancel_run(never)
        .await
        .expect("cancel")
        .expect("accepted");
    let names = ["prepare".to_owned(), "train".to_owned()];
    store
        .skip_steps(never, &names, "cancelled")
        .await
        .expect("skip");
    store
        .finish_run(
            never,
            RunState::Cancelled,
            "cancelled",
            t(30),
            NO_REPORTS,
            None,
        )
        .await
        .expect("finish");
    assert_eq!(
        store.retry_run(never).await.expect("retry"),
        Ok(names.to_vec())
    );
    let run = store.run(never).await.expect("read").expect("run");
    assert_eq!(
        (run.state, run.cancel_requested),
        (RunState::Pending, false)
    );
    // A run that could not go on leaves steps waiting: they start again too.
    let stuck = store.create_run(&change_run("c1")).await.expect("create");
    store
        .finish_run(
            stuck,
            RunState::Failed,
            "cannot go on",
            t(40),
            NO_REPORTS,
            None,
        )
        .await
        .expect("finish");
    assert_eq!(
        store.retry_run(stuck).await.expect("retry"),
        Ok(names.to_vec())
    );
    let run = store.run(stuck).await.expect("read").expect("run");
    assert_eq!(run.state, RunState::Pending);
}

fn backfilled(schedule: &str, at: DateTime<Utc>) -> NewRun {
    NewRun {
        trigger: Trigger::Backfill,
        ..scheduled_run(schedule, at)
    }
}

async fn a_backfill_fires_each_time_once_alongside_live_ticks(store: Store) {
    with_nightly(&store).await;
    let live = store
        .record_ticks("nightly", &[fired("nightly", t(50))])
        .await
        .expect("live tick");
    let live_run = live[0].run_id.expect("a run");
    let recorded = store
        .record_backfill(
            "nightly",
            vec![backfilled("nightly", t(25)), backfilled("nightly", t(50))],
        )
        .await
        .expect("backfill")
        .expect("accepted");
    assert!(recorded[0].new && recorded[0].run_id.is_some());
    assert_eq!(
        (recorded[1].new, recorded[1].run_id),
        (false, Some(live_run)),
        "the live tick's time is not fired again"
    );
    let backfill_run = recorded[0].run_id.expect("a run");
    let run = store.run(backfill_run).await.expect("read").expect("run");
    assert_eq!(
        (run.trigger, run.scheduled_at, run.state),
        (Trigger::Backfill, Some(t(25)), RunState::Pending)
    );
    let again = store
        .record_backfill("nightly", vec![backfilled("nightly", t(25))])
        .await
        .expect("backfill")
        .expect("accepted");
    assert!(!again[0].new, "a second backfill fires nothing");
    assert_eq!(run_count(&store).await, 2);
    let row = store.schedule("nightly").await.expect("read").expect("row");
    assert_eq!(
        row.last_tick_at,
        Some(t(50)),
        "live ticks go on from theirs"
    );
    assert_eq!(
        store
            .tick_times_between("nightly", t(0), t(40))
            .await
            .expect("times"),
        [t(25)].into()
    );
    let active = store.active_runs_by_schedule().await.expect("active");
    assert_eq!(
        active.get("nightly"),
        Some(&vec![live_run]),
        "a backfilled run waiting for its turn holds no live tick up"
    );
    assert_eq!(
        store
            .record_backfill("weekly", vec![backfilled("weekly", t(5))])
            .await
            .expect("backfill"),
        Err(Refused::UnknownSchedule("weekly".to_owned()))
    );
    assert!(
        store
            .record_backfill("nightly", vec![scheduled_run("nightly", t(5))])
            .await
            .is_err(),
        "a live run is not a backfill"
    );
}

async fn replicas_starting_together_agree_on_one_installation(store: Store) {
    const REPLICAS: usize = 8;
    for round in 0..5 {
        sqlx::query("DELETE FROM installation")
            .execute(&store.pool)
            .await
            .expect("empty");
        // A connection open for each replica, so that their transactions overlap.
        let warm = futures::future::join_all((0..REPLICAS).map(|_| store.pool.acquire())).await;
        drop(warm);
        let barrier = Arc::new(tokio::sync::Barrier::new(REPLICAS));
        let starts: Vec<_> = (0..REPLICAS)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.installation(None).await
                })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for start in starts {
            ids.insert(start.await.expect("joins").expect("installation"));
        }
        assert_eq!(ids.len(), 1, "round {round}: one identity for all: {ids:?}");
        let recorded = store.installation(None).await.expect("again");
        assert!(ids.contains(&recorded), "{recorded} is the one recorded");
    }
}

/// Starts attempt 1 of `step` in `run_id` under cache key `key`.
async fn start_keyed(store: &Store, run_id: i64, step: &str, key: &str, at: DateTime<Utc>) {
    let attempt = NewAttempt {
        run_id,
        step: step.to_owned(),
        attempt: 1,
        job: format!("job-{run_id}-{step}-1"),
        cache_key: Some(key.to_owned()),
    };
    let started = store.start_attempts(&[attempt], at).await.expect("start");
    assert_eq!(started, [true]);
}

async fn the_cache_holds_current_succeeded_attempts_and_a_reuse_is_recorded_once(store: Store) {
    with_nightly(&store).await;
    let failed = store.create_run(&change_run("c1")).await.expect("run");
    start_keyed(&store, failed, "prepare", "k", t(10)).await;
    assert_eq!(
        store.cache_entry("k", None).await.expect("read"),
        None,
        "running"
    );
    let outcome_failed = outcome(AttemptState::Failed, t(20));
    assert!(
        store
            .finish_attempt(failed, "prepare", 1, &outcome_failed)
            .await
            .expect("finish")
    );
    assert_eq!(
        store.cache_entry("k", None).await.expect("read"),
        None,
        "a failure is no entry"
    );

    let made = store.create_run(&change_run("c1")).await.expect("run");
    start_keyed(&store, made, "prepare", "k", t(25)).await;
    let mut done = outcome(AttemptState::Succeeded, t(30));
    done.artifacts.push(NewArtifact {
        output: "dataset".to_owned(),
        uri: "file:///artifacts/2/prepare/dataset".to_owned(),
        sha256: "cd".repeat(32),
        size: 99,
    });
    assert!(
        store
            .finish_attempt(made, "prepare", 1, &done)
            .await
            .expect("finish")
    );
    let entry = store
        .cache_entry("k", None)
        .await
        .expect("read")
        .expect("an entry");
    let made_by = AttemptId {
        run_id: made,
        step: "prepare".to_owned(),
        attempt: 1,
    };
    assert_eq!((&entry.attempt, entry.finished_at), (&made_by, t(30)));
    assert_eq!(entry.artifacts.len(), 1);
    assert_eq!(entry.artifacts[0].sha256, "cd".repeat(32));
    assert_eq!(
        store.cache_entry("k", Some(t(31))).await.expect("read"),
        None,
        "too old"
    );
    assert!(
        store
            .cache_entry("k", Some(t(30)))
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(store.cache_entry("other", None).await.expect("read"), None);

    let reusing = store.create_run(&change_run("c1")).await.expect("run");
    let job = format!("job-{reusing}-prepare-1");
    let cached = AttemptId {
        run_id: reusing,
        step: "prepare".to_owned(),
        attempt: 1,
    };
    assert!(
        store
            .record_cached(&cached, &job, "k", &entry, t(40))
            .await
            .expect("record")
    );
    assert!(
        !store
            .record_cached(&cached, &job, "k", &entry, t(41))
            .await
            .expect("record again"),
        "a reuse is recorded once"
    );
    let run = store.run(reusing).await.expect("read").expect("run");
    assert_eq!(
        (run.state, run.started_at),
        (RunState::Running, Some(t(40)))
    );
    let steps = store.steps(reusing).await.expect("steps");
    assert_eq!(
        (steps[0].state, steps[0].attempt),
        (StepState::Succeeded, 1)
    );
    assert_eq!(steps[1].state, StepState::Waiting);
    let attempts = store.attempts(reusing).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::Cached);
    assert_eq!(attempts[0].reused.as_ref(), Some(&made_by));
    assert_eq!(attempts[0].finished_at, Some(t(40)));
    let artifacts = store.artifacts(reusing).await.expect("artifacts");
    assert_eq!(
        artifacts
            .iter()
            .map(|a| (a.output.as_str(), a.uri.as_str(), a.sha256.clone(), a.size))
            .collect::<Vec<_>>(),
        [(
            "dataset",
            "file:///artifacts/2/prepare/dataset",
            "cd".repeat(32),
            99
        )]
    );
    // A cached attempt is no entry of its own: the one that ran stays the entry.
    let again = store
        .cache_entry("k", None)
        .await
        .expect("read")
        .expect("entry");
    assert_eq!(again.attempt, made_by);
    // Only a cached attempt may name one it reused.
    let refused = sqlx::query("UPDATE step_attempts SET reused_run = NULL WHERE run_id = $1")
        .bind(reusing)
        .execute(&store.pool)
        .await;
    assert!(
        refused.is_err(),
        "a cached attempt must name what it reused"
    );
}

/// Processes opening one new SQLite file at once all come up: their migrations take turns
/// instead of applying the same one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_a_new_sqlite_file_at_once_all_migrate_it() {
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/trainyard.db", dir.path().display());
        let barrier = Arc::new(tokio::sync::Barrier::new(6));
        let opening: Vec<_> = (0..6)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    Store::connect(&url).await.map(drop)
                })
            })
            .collect();
        for open in opening {
            let opened = open.await.expect("no panic");
            assert!(opened.is_ok(), "round {round}: {opened:?}");
        }
    }
}
