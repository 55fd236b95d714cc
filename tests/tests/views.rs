//! End-to-end tests of the read-only views `runs`, `runs show`, `logs`, `schedules` and
//! `models`: a store is seeded through the library, then the binary reads it.

use std::path::{Path, PathBuf};

use chrono::{
    DateTime, Datelike as _, Local, SecondsFormat, TimeDelta, TimeZone as _, Timelike as _, Utc,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use trainyard::artifacts::{ArtifactStore, log_key, output_key};
use trainyard::spec::model::Document;
use trainyard::spec::parse_file;
use trainyard::store::{
    ApplyCommit, AttemptOutcome, AttemptState, CommitOutcome, ModelState, NewArtifact, NewAttempt,
    NewModelVersion, NewReport, NewRun, NewTick, PipelineUpsert, RunState, ScheduleUpsert, Store,
    TickOutcome, Trigger,
};
use trainyard_tests::{Repo, Result, Run, TestResult, temp_dir, trainyard};

/// The commit every seeded run is pinned to.
const COMMIT: &str = "c0ffee0123456789abcdef0123456789abcdef01";
/// The version (content hash) of the `churn` pipeline.
const CHURN_VERSION: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// The version of the `iris` pipeline.
const IRIS_VERSION: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
/// The log of the first, failed attempt of `train`.
const FIRST_LOG: &str = "loading dataset\nCUDA error: out of memory\n";
/// The log of the second attempt of `train`; it ends without a newline, as a killed
/// process's log does.
const SECOND_LOG: &str = "epoch 1 loss=0.52\nepoch 2 loss=0.31 ✓\nKilled";

/// When the seeded commit was applied.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .unwrap_or_default()
}

/// `t0()` plus `millis` milliseconds.
fn at(millis: i64) -> DateTime<Utc> {
    t0() + TimeDelta::milliseconds(millis)
}

/// A time as the text views show it.
fn local(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// The ids of the seeded runs, in creation order.
struct Ids {
    /// `churn`, started by the commit; `prepare` succeeded, `train` failed twice.
    churn_change: i64,
    /// `iris`, manual, succeeded; it trained `iris-tree` version 1.
    iris_manual: i64,
    /// `churn`, from a tick of `churn-nightly`, succeeded; `churn-classifier` version 1,
    /// `champion`.
    churn_scheduled: i64,
    /// `churn`, manual, succeeded; its model was rejected.
    churn_rejected: i64,
    /// `churn`, manual, succeeded; `churn-classifier` version 2, `candidate`.
    churn_candidate: i64,
    /// `churn`, manual, with `prepare` running.
    churn_running: i64,
}

/// A data directory holding a seeded store, and the directory the binary runs in (which is
/// not in a Git repository).
struct Fixture {
    dir: TempDir,
    ids: Ids,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = temp_dir()?;
        let ids = seed(&dir.path().join("data"))?;
        Ok(Fixture { dir, ids })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `trainyard ARGS --data-dir DATA`.
    fn run(&self, args: &[&str]) -> Result<Run> {
        let data = self.data_dir();
        let data = data.to_str().ok_or("the data directory is not UTF-8")?;
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", data]);
        trainyard(self.dir.path(), &all)
    }

    /// Runs the view and returns its standard output, which must come with exit status 0.
    fn text(&self, args: &[&str]) -> Result<String> {
        let run = self.run(args)?;
        assert_eq!(run.code, Some(0), "{run}");
        Ok(run.stdout)
    }

    /// Runs the view with `--format json` and parses its output.
    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let run = self.run(&all)?;
        assert_eq!(run.code, Some(0), "{run}");
        run.json()
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()).into())
}

fn new_run(pipeline: &str, version: &str, trigger: Trigger, steps: &[&str]) -> NewRun {
    NewRun {
        pipeline: pipeline.to_owned(),
        pipeline_version: version.to_owned(),
        commit_sha: COMMIT.to_owned(),
        trigger,
        schedule: None,
        scheduled_at: None,
        params: [
            ("epochs".to_owned(), json!(3)),
            ("lr".to_owned(), json!(0.01)),
        ]
        .into(),
        steps: steps.iter().map(|s| (*s).to_owned()).collect(),
        finally: Vec::new(),
        no_cache: false,
    }
}

/// The one document of `yaml`.
fn document(yaml: &str) -> Result<Document> {
    let parsed = parse_file(yaml.as_bytes());
    match parsed.documents.into_iter().next() {
        Some(doc) => Ok(doc.document),
        None => Err(format!("no document in {yaml}: {:?}", parsed.findings).into()),
    }
}

fn schedule(
    name: &str,
    pipeline: &str,
    cron: &str,
    timezone: &str,
    suspend: bool,
) -> Result<ScheduleUpsert> {
    Ok(ScheduleUpsert {
        name: name.to_owned(),
        pipeline: pipeline.to_owned(),
        version: format!("{name}-v1"),
        file: "schedules.yaml".to_owned(),
        definition: match document(&format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\n\
             spec: {{pipeline: {pipeline}, cron: '{cron}', timezone: {timezone}, suspend: {suspend}}}\n"
        ))? {
            Document::Schedule(schedule) => schedule,
            other => return Err(format!("a schedule, not {other:?}").into()),
        },
        suspended: suspend,
    })
}

fn model(
    name: &str,
    run_id: i64,
    state: ModelState,
    metrics: &[(&str, f64)],
) -> NewModelVersion<Value> {
    NewModelVersion {
        model: name.to_owned(),
        run_id,
        state,
        metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        gates: Vec::new(),
        reasons: Vec::new(),
        artifact_uri: format!("file:///artifacts/runs/{run_id}/train/model"),
        artifact_sha256: "ab".repeat(32),
        selected: None,
        promote: None,
        at: Utc::now(),
        reports: Vec::new(),
    }
}

fn outcome(state: AttemptState, at: DateTime<Utc>, exit_code: i32) -> AttemptOutcome {
    AttemptOutcome {
        state,
        at,
        exit_code: Some(exit_code),
        message: None,
        retry_at: None,
        artifacts: Vec::new(),
        charged: true,
    }
}

/// Records one attempt as the service does before handing it over.
async fn start(
    store: &Store,
    run_id: i64,
    step: &str,
    attempt: u32,
    job: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    let attempt = NewAttempt {
        run_id,
        step: step.to_owned(),
        attempt,
        job: job.to_owned(),
        cache_key: None,
    };
    store.start_attempts(&[attempt], at).await?;
    store
        .mark_submitted(&[(run_id, step.to_owned(), attempt_number(job))], at)
        .await?;
    Ok(())
}

/// The attempt number a seeded job name ends with.
fn attempt_number(job: &str) -> u32 {
    job.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// No reports.
const NO_REPORTS: &[NewReport<Value>] = &[];

/// Seeds a store in `data` the way the service would fill it.
fn seed(data: &Path) -> Result<Ids> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(seed_store(data))
}

async fn seed_store(data: &Path) -> Result<Ids> {
    std::fs::create_dir_all(data)?;
    let store = Store::connect(utf8(&data.join("trainyard.db"))?).await?;
    let artifacts = ArtifactStore::open(utf8(&data.join("artifacts"))?)?;

    let pipeline = |name: &str, version: &str| -> Result<PipelineUpsert> {
        let yaml = format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\n\
             spec: {{image: i, steps: [{{name: prepare, run: [x]}}, {{name: train, run: [y]}}, {{name: fit, run: [z]}}]}}\n"
        );
        Ok(PipelineUpsert {
            name: name.to_owned(),
            version: version.to_owned(),
            file: format!("pipelines/{name}.yaml"),
            definition: match document(&yaml)? {
                Document::Pipeline(pipeline) => pipeline,
                other => return Err(format!("a pipeline, not {other:?}").into()),
            },
        })
    };
    let applied = store
        .apply_commit(&ApplyCommit {
            sha: COMMIT.to_owned(),
            at: t0(),
            outcome: CommitOutcome::Applied,
            summary: "add churn and iris".to_owned(),
            pipelines: vec![
                pipeline("churn", CHURN_VERSION)?,
                pipeline("iris", IRIS_VERSION)?,
            ],
            retire_pipelines: Vec::new(),
            schedules: vec![
                schedule(
                    "churn-nightly",
                    "churn",
                    "0 2 * * *",
                    "Europe/Berlin",
                    false,
                )?,
                schedule("iris-hourly", "iris", "@hourly", "UTC", false)?,
                schedule("iris-weekly", "iris", "@weekly", "UTC", true)?,
                schedule("iris-yearly", "iris", "0 0 1 1 *", "UTC", false)?,
            ],
            retire_schedules: Vec::new(),
            runs: vec![new_run(
                "churn",
                CHURN_VERSION,
                Trigger::Change,
                &["prepare", "train"],
            )],
            reports: NO_REPORTS.to_vec(),
        })
        .await?;
    let churn_change = *applied.run_ids.first().ok_or("the commit started no run")?;

    // prepare: one attempt of 4.1 s with an output.
    start(
        &store,
        churn_change,
        "prepare",
        1,
        "job-prepare-1",
        at(1_000),
    )
    .await?;
    let dataset = artifacts
        .put_bytes(
            &output_key("default", churn_change, "prepare", "dataset"),
            vec![7; 1536],
        )
        .await?;
    let mut prepared = outcome(AttemptState::Succeeded, at(5_100), 0);
    prepared.artifacts = vec![NewArtifact {
        output: "dataset".to_owned(),
        uri: dataset.uri,
        sha256: dataset.sha256,
        size: dataset.size,
    }];
    store
        .finish_attempt(churn_change, "prepare", 1, &prepared)
        .await?;
    // train: a failed attempt that is retried, then one that fails for good, 2m03s in all.
    start(&store, churn_change, "train", 1, "job-train-1", at(6_000)).await?;
    let mut first = outcome(AttemptState::Failed, at(10_000), 1);
    first.message = Some("CUDA error: out of memory".to_owned());
    first.retry_at = Some(at(20_000));
    store
        .finish_attempt(churn_change, "train", 1, &first)
        .await?;
    start(&store, churn_change, "train", 2, "job-train-2", at(20_000)).await?;
    let mut second = outcome(AttemptState::Failed, at(129_000), 137);
    second.message = Some("killed: out of memory\nsee the log".to_owned());
    store
        .finish_attempt(churn_change, "train", 2, &second)
        .await?;
    store
        .finish_run(
            churn_change,
            RunState::Failed,
            "step train failed",
            at(130_000),
            NO_REPORTS,
            None,
        )
        .await?;
    for (attempt, log) in [(1, FIRST_LOG), (2, SECOND_LOG)] {
        artifacts
            .put_bytes(&log_key(&format!("job-train-{attempt}")), log.into())
            .await?;
    }

    let iris_manual = store
        .create_run(&new_run("iris", IRIS_VERSION, Trigger::Manual, &["fit"]))
        .await?;

    // churn-nightly: a skipped tick, then a fired one, the newest.
    let mut nightly = new_run(
        "churn",
        CHURN_VERSION,
        Trigger::Schedule,
        &["prepare", "train"],
    );
    nightly.schedule = Some("churn-nightly".to_owned());
    nightly.scheduled_at = Some(at(86_400_000 - 8 * 3_600_000));
    let ticks = store
        .record_ticks(
            "churn-nightly",
            &[
                NewTick {
                    scheduled_at: at(-8 * 3_600_000),
                    outcome: TickOutcome::Skipped,
                    reason: Some("a run of this schedule is active".to_owned()),
                    run: None,
                },
                NewTick {
                    scheduled_at: at(86_400_000 - 8 * 3_600_000),
                    outcome: TickOutcome::Fired,
                    reason: None,
                    run: Some(nightly),
                },
            ],
        )
        .await?;
    let churn_scheduled = ticks
        .iter()
        .find_map(|tick| tick.run_id)
        .ok_or("the fired tick started no run")?;
    store
        .record_ticks(
            "iris-hourly",
            &[NewTick {
                scheduled_at: at(3_600_000),
                outcome: TickOutcome::Skipped,
                reason: Some("paused after 3 failed runs".to_owned()),
                run: None,
            }],
        )
        .await?;
    store
        .set_schedule_paused("iris-hourly", Some(at(3_000_000)))
        .await?;

    let churn_rejected = store
        .create_run(&new_run(
            "churn",
            CHURN_VERSION,
            Trigger::Manual,
            &["train"],
        ))
        .await?;
    let churn_candidate = store
        .create_run(&new_run(
            "churn",
            CHURN_VERSION,
            Trigger::Manual,
            &["train"],
        ))
        .await?;
    for id in [
        iris_manual,
        churn_scheduled,
        churn_rejected,
        churn_candidate,
    ] {
        store
            .finish_run(
                id,
                RunState::Succeeded,
                "succeeded",
                Utc::now(),
                NO_REPORTS,
                None,
            )
            .await?;
    }

    let mut champion = model(
        "churn-classifier",
        churn_scheduled,
        ModelState::Accepted,
        &[("auc", 0.91), ("loss", 0.2)],
    );
    champion.promote = Some("champion".to_owned());
    store.register_model(&champion).await?;
    let mut rejected = model(
        "churn-classifier",
        churn_rejected,
        ModelState::Rejected,
        &[("auc", 0.7)],
    );
    rejected.reasons = vec!["auc 0.7 is below the minimum 0.8".to_owned()];
    store.register_model(&rejected).await?;
    let mut candidate = model(
        "churn-classifier",
        churn_candidate,
        ModelState::Accepted,
        &[("auc", 0.93), ("loss", 0.18)],
    );
    candidate.promote = Some("candidate".to_owned());
    store.register_model(&candidate).await?;
    store
        .register_model(&model(
            "iris-tree",
            iris_manual,
            ModelState::Accepted,
            &[("accuracy", 0.97)],
        ))
        .await?;

    let churn_running = store
        .create_run(&new_run(
            "churn",
            CHURN_VERSION,
            Trigger::Manual,
            &["prepare", "train"],
        ))
        .await?;
    start(
        &store,
        churn_running,
        "prepare",
        1,
        "job-running-1",
        Utc::now(),
    )
    .await?;

    store.close().await;
    Ok(Ids {
        churn_change,
        iris_manual,
        churn_scheduled,
        churn_rejected,
        churn_candidate,
        churn_running,
    })
}

/// The words of the table row whose first word is `first`.
fn row<'a>(text: &'a str, first: &str) -> Result<Vec<&'a str>> {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&first))
        .ok_or_else(|| format!("no row {first:?} in\n{text}").into())
}

/// The line that starts with `start`.
fn line<'a>(text: &'a str, start: &str) -> Result<&'a str> {
    text.lines()
        .find(|line| line.starts_with(start))
        .ok_or_else(|| format!("no line starting with {start:?} in\n{text}").into())
}

/// The first word of each line after the header.
fn first_column(text: &str) -> Vec<&str> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[test]
fn runs_lists_the_newest_runs_first_with_trigger_state_commit_and_duration() -> TestResult {
    let fixture = Fixture::new()?;
    let ids = &fixture.ids;
    let text = fixture.text(&["runs"])?;
    let expected: Vec<String> = [
        ids.churn_running,
        ids.churn_candidate,
        ids.churn_rejected,
        ids.churn_scheduled,
        ids.iris_manual,
        ids.churn_change,
    ]
    .iter()
    .map(i64::to_string)
    .collect();
    assert_eq!(first_column(&text), expected, "{text}");

    let header = line(&text, "ID")?;
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "ID", "PIPELINE", "TRIGGER", "STATE", "COMMIT", "CREATED", "DURATION"
        ]
    );
    let created = local(t0());
    let change = ids.churn_change.to_string();
    assert_eq!(
        row(&text, &change)?,
        [
            change.as_str(),
            "churn",
            "change",
            "failed",
            "c0ffee012345",
            &created,
            "2m09s"
        ]
    );
    let scheduled = ids.churn_scheduled.to_string();
    assert_eq!(
        row(&text, &scheduled)?[..5],
        [
            scheduled.as_str(),
            "churn",
            "schedule",
            "churn-nightly",
            "succeeded"
        ]
    );
    // A run that never started has no duration.
    assert_eq!(row(&text, &scheduled)?.last(), Some(&"-"));
    assert_eq!(row(&text, &ids.churn_running.to_string())?[3], "running");

    // Columns line up: each value starts under its header.
    let change_line = text
        .lines()
        .find(|l| l.starts_with(&format!("{change} ")))
        .ok_or("no row of the change run")?;
    for (title, value) in [
        ("STATE", "failed"),
        ("COMMIT", "c0ffee012345"),
        ("DURATION", "2m09s"),
    ] {
        assert_eq!(
            header.find(title),
            change_line.find(value),
            "{title}:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn runs_can_be_filtered_by_pipeline_and_limited() -> TestResult {
    let fixture = Fixture::new()?;
    let ids = &fixture.ids;
    let text = fixture.text(&["runs", "--pipeline", "churn", "--limit", "3"])?;
    let expected: Vec<String> = [ids.churn_running, ids.churn_candidate, ids.churn_rejected]
        .iter()
        .map(i64::to_string)
        .collect();
    assert_eq!(first_column(&text), expected, "{text}");

    let iris = fixture.text(&["runs", "--pipeline", "iris"])?;
    assert_eq!(first_column(&iris), [ids.iris_manual.to_string()], "{iris}");

    assert_eq!(
        fixture.text(&["runs", "--pipeline", "nope"])?,
        "no runs of pipeline nope\n"
    );
    Ok(())
}

#[test]
fn runs_as_json_carry_the_full_rows() -> TestResult {
    let fixture = Fixture::new()?;
    let ids = &fixture.ids;
    let runs = fixture.json(&["runs"])?;
    let runs = runs.as_array().ok_or("not an array")?;
    assert_eq!(runs.len(), 6);
    let change = runs
        .iter()
        .find(|r| r["id"] == ids.churn_change)
        .ok_or("no change run")?;
    assert_eq!(
        change,
        &json!({
            "id": ids.churn_change,
            "pipeline": "churn",
            "pipeline_version": CHURN_VERSION,
            "commit": COMMIT,
            "trigger": "change",
            "schedule": null,
            "scheduled_at": null,
            "params": {"epochs": 3, "lr": 0.01},
            "state": "failed",
            "message": "step train failed",
            "cancel_requested": false,
            "created_at": "2026-03-02T09:00:00Z",
            "started_at": "2026-03-02T09:00:01Z",
            "finished_at": "2026-03-02T09:02:10Z",
            "duration_seconds": 129.0,
        })
    );
    let scheduled = runs
        .iter()
        .find(|r| r["id"] == ids.churn_scheduled)
        .ok_or("no scheduled run")?;
    assert_eq!(scheduled["schedule"], "churn-nightly");
    assert_eq!(scheduled["scheduled_at"], "2026-03-03T01:00:00Z");

    let limited = fixture.json(&["runs", "--limit", "2"])?;
    assert_eq!(limited.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn runs_show_prints_the_run_then_its_steps_then_its_artifacts() -> TestResult {
    let fixture = Fixture::new()?;
    let id = fixture.ids.churn_change.to_string();
    let text = fixture.text(&["runs", "show", &id])?;
    for expected in [
        format!("Run:      {id}"),
        "Pipeline: churn".to_owned(),
        "Version:  9f86d081884c".to_owned(),
        format!("Commit:   {COMMIT}"),
        "Trigger:  change".to_owned(),
        "Params:   epochs=3,lr=0.01".to_owned(),
        "State:    failed".to_owned(),
        "Message:  step train failed".to_owned(),
        format!("Created:  {}", local(t0())),
        format!("Started:  {}", local(at(1_000))),
        format!("Finished: {} (2m09s)", local(at(130_000))),
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "{expected:?} in\n{text}"
        );
    }
    assert_eq!(
        row(&text, "STEP")?,
        ["STEP", "STATE", "ATTEMPT", "DURATION", "EXIT", "MESSAGE"]
    );
    assert_eq!(
        row(&text, "prepare")?,
        ["prepare", "succeeded", "1", "4.1s", "0", "-"]
    );
    // Only the first line of a message fits in a row.
    assert_eq!(
        row(&text, "train")?,
        [
            "train",
            "failed",
            "2",
            "2m03s",
            "137",
            "killed:",
            "out",
            "of",
            "memory…"
        ]
    );
    let sha = fixture.json(&["runs", "show", &id])?["artifacts"][0]["sha256"]
        .as_str()
        .ok_or("no sha256")?
        .to_owned();
    let artifact = text
        .lines()
        .find(|l| l.starts_with("prepare ") && l.contains("dataset"))
        .ok_or_else(|| format!("no artifact row in\n{text}"))?;
    let words: Vec<&str> = artifact.split_whitespace().collect();
    assert_eq!(words[..5], ["prepare", "dataset", "1.5", "KiB", &sha[..12]]);
    assert!(
        words[5].starts_with("file://") && words[5].ends_with("/prepare/dataset"),
        "{artifact}"
    );
    // The steps table comes before the artifacts table.
    let steps_at = text.find("STEP  ").ok_or("no steps table")?;
    let artifacts_at = text.find("OUTPUT").ok_or("no artifacts table")?;
    assert!(steps_at < artifacts_at, "{text}");
    Ok(())
}

#[test]
fn runs_show_as_json_has_steps_with_their_attempts_and_artifacts() -> TestResult {
    let fixture = Fixture::new()?;
    let id = fixture.ids.churn_change.to_string();
    let detail = fixture.json(&["runs", "show", &id])?;
    assert_eq!(detail["run"]["id"], fixture.ids.churn_change);
    assert_eq!(detail["run"]["state"], "failed");
    let steps = detail["steps"].as_array().ok_or("no steps")?;
    let names: Vec<&Value> = steps.iter().map(|s| &s["name"]).collect();
    assert_eq!(names, [&json!("prepare"), &json!("train")]);
    let train = &steps[1];
    assert_eq!(train["duration_seconds"], 123.0);
    let attempts: Vec<Value> = train["attempts"]
        .as_array()
        .ok_or("no attempts")?
        .iter()
        .map(|a| json!([a["attempt"], a["state"], a["exit_code"], a["message"]]))
        .collect();
    assert_eq!(
        attempts,
        [
            json!([1, "failed", 1, "CUDA error: out of memory"]),
            json!([2, "failed", 137, "killed: out of memory\nsee the log"]),
        ]
    );
    let artifacts = detail["artifacts"].as_array().ok_or("no artifacts")?;
    assert_eq!(artifacts.len(), 1);
    assert_eq!(
        (
            &artifacts[0]["step"],
            &artifacts[0]["output"],
            &artifacts[0]["size"]
        ),
        (&json!("prepare"), &json!("dataset"), &json!(1536))
    );
    assert_eq!(artifacts[0]["sha256"].as_str().map(str::len), Some(64));
    // The global options may also come before `show`.
    let run = trainyard(
        fixture.dir.path(),
        &[
            "runs",
            "--format",
            "json",
            "--data-dir",
            utf8(&fixture.data_dir())?,
            "show",
            &id,
        ],
    )?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.json()?, detail);
    Ok(())
}

#[test]
fn an_unknown_run_id_exits_1() -> TestResult {
    let fixture = Fixture::new()?;
    for format in ["text", "json"] {
        let run = fixture.run(&["runs", "show", "42", "--format", format])?;
        assert_eq!(run.code, Some(1), "{run}");
        assert_eq!(run.stdout, "");
        assert!(run.stderr.contains("run 42 not found"), "{run}");
    }
    Ok(())
}

#[test]
fn list_options_with_runs_show_are_a_usage_error() -> TestResult {
    let fixture = Fixture::new()?;
    let run = fixture.run(&["runs", "--pipeline", "churn", "show", "1"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--pipeline"), "{run}");
    Ok(())
}

#[test]
fn logs_prints_the_latest_attempt_byte_for_byte() -> TestResult {
    let fixture = Fixture::new()?;
    let id = fixture.ids.churn_change.to_string();
    assert_eq!(fixture.text(&["logs", &id, "train"])?, SECOND_LOG);
    assert_eq!(
        fixture.text(&["logs", &id, "train", "--attempt", "1"])?,
        FIRST_LOG
    );
    Ok(())
}

#[test]
fn logs_of_what_does_not_exist_exit_1_saying_what_is_missing() -> TestResult {
    let fixture = Fixture::new()?;
    let change = fixture.ids.churn_change.to_string();
    let running = fixture.ids.churn_running.to_string();
    for (args, message) in [
        (vec!["logs", "42", "train"], "run 42 not found".to_owned()),
        (
            vec!["logs", &change, "trian"],
            format!(r#"run {change} has no step "trian"; its steps are prepare, train"#),
        ),
        (
            vec!["logs", &change, "train", "--attempt", "3"],
            format!(r#"step "train" of run {change} has no attempt 3; it has attempts 1 to 2"#),
        ),
        (
            vec!["logs", &change, "prepare"],
            format!(r#"no log stored for attempt 1 of step "prepare" of run {change}"#),
        ),
        (
            vec!["logs", &running, "prepare"],
            format!(
                r#"no log stored yet for attempt 1 of step "prepare" of run {running}: it is running"#
            ),
        ),
        (
            vec!["logs", &running, "train"],
            format!(r#"step "train" of run {running} has not started"#),
        ),
    ] {
        let run = fixture.run(&args)?;
        assert_eq!(run.code, Some(1), "{args:?}: {run}");
        assert_eq!(run.stdout, "", "{args:?}");
        assert!(run.stderr.contains(&message), "{message:?} in {run}");
    }
    Ok(())
}

#[test]
fn schedules_show_cron_next_fire_last_tick_and_state() -> TestResult {
    let fixture = Fixture::new()?;
    let text = fixture.text(&["schedules"])?;
    assert_eq!(
        first_column(&text),
        ["churn-nightly", "iris-hourly", "iris-weekly", "iris-yearly"],
        "{text}"
    );
    let now = Utc::now();
    let new_year = Utc
        .with_ymd_and_hms(now.year() + 1, 1, 1, 0, 0, 0)
        .single()
        .ok_or("no new year")?;
    assert_eq!(
        row(&text, "iris-yearly")?,
        [
            "iris-yearly",
            "iris",
            "0",
            "0",
            "1",
            "1",
            "*",
            "UTC",
            &local(new_year),
            "-",
            "-",
            "active"
        ]
    );
    let nightly = line(&text, "churn-nightly")?;
    let expected_tick = format!(
        "{}  fired (run {})",
        local(at(57_600_000)),
        fixture.ids.churn_scheduled
    );
    assert!(nightly.contains("0 2 * * *  Europe/Berlin"), "{text}");
    assert!(
        nightly.contains(&expected_tick),
        "{expected_tick:?} in\n{text}"
    );
    assert!(nightly.ends_with("  active"), "{text}");
    let hourly = line(&text, "iris-hourly")?;
    assert!(
        hourly.contains("skipped: paused after 3 failed runs"),
        "{text}"
    );
    assert!(
        hourly.ends_with(&format!("paused since {}", local(at(3_000_000)))),
        "{text}"
    );
    assert_eq!(
        row(&text, "iris-weekly")?,
        [
            "iris-weekly",
            "iris",
            "@weekly",
            "UTC",
            "-",
            "-",
            "-",
            "suspended"
        ]
    );
    Ok(())
}

#[test]
fn schedules_as_json_give_next_fire_times_in_utc() -> TestResult {
    let fixture = Fixture::new()?;
    let before = Utc::now();
    let schedules = fixture.json(&["schedules"])?;
    let after = Utc::now();
    let find = |name: &str| -> Result<&Value> {
        schedules
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == name))
            .ok_or_else(|| format!("no schedule {name} in {schedules:#}").into())
    };
    let yearly = find("iris-yearly")?;
    assert_eq!(
        yearly["next_fire"],
        format!("{}-01-01T00:00:00Z", before.year() + 1)
    );
    assert_eq!(yearly["last_tick"], Value::Null);

    // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer, within a day.
    let nightly = find("churn-nightly")?;
    let next: DateTime<Utc> = nightly["next_fire"]
        .as_str()
        .ok_or("no next fire")?
        .parse()?;
    assert!(
        next > before && next <= after + TimeDelta::days(1),
        "{next}"
    );
    assert!(
        (next.minute(), next.second()) == (0, 0) && [0, 1].contains(&next.hour()),
        "{next}"
    );
    assert_eq!(
        (&nightly["cron"], &nightly["timezone"]),
        (&json!("0 2 * * *"), &json!("Europe/Berlin"))
    );
    assert_eq!(nightly["state"], "active");
    assert_eq!(nightly["last_tick"]["outcome"], "fired");
    assert_eq!(nightly["last_tick"]["run_id"], fixture.ids.churn_scheduled);
    assert_eq!(nightly["last_tick"]["scheduled_at"], "2026-03-03T01:00:00Z");

    let weekly = find("iris-weekly")?;
    assert_eq!(
        (&weekly["state"], &weekly["next_fire"]),
        (&json!("suspended"), &Value::Null)
    );
    let hourly = find("iris-hourly")?;
    assert_eq!(hourly["state"], "paused");
    assert_eq!(hourly["paused_at"], "2026-03-02T09:50:00Z");
    assert_eq!(hourly["next_fire"], Value::Null);
    Ok(())
}

#[test]
fn models_show_versions_rejected_ones_and_aliases() -> TestResult {
    let fixture = Fixture::new()?;
    let ids = &fixture.ids;
    let text = fixture.text(&["models"])?;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(6).collect())
        .collect();
    let (candidate, rejected, champion, iris) = (
        ids.churn_candidate.to_string(),
        ids.churn_rejected.to_string(),
        ids.churn_scheduled.to_string(),
        ids.iris_manual.to_string(),
    );
    assert_eq!(
        rows,
        [
            vec![
                "churn-classifier",
                "2",
                "candidate",
                "auc=0.93,loss=0.18",
                "c0ffee012345",
                &candidate
            ],
            vec![
                "churn-classifier",
                "rejected",
                "-",
                "auc=0.7",
                "c0ffee012345",
                &rejected
            ],
            vec![
                "churn-classifier",
                "1",
                "champion",
                "auc=0.91,loss=0.2",
                "c0ffee012345",
                &champion
            ],
            vec![
                "iris-tree",
                "1",
                "-",
                "accuracy=0.97",
                "c0ffee012345",
                &iris
            ],
        ],
        "{text}"
    );
    assert_eq!(
        line(&text, "MODEL")?.split_whitespace().collect::<Vec<_>>(),
        [
            "MODEL", "VERSION", "ALIASES", "METRICS", "COMMIT", "RUN", "CREATED"
        ]
    );

    let one = fixture.text(&["models", "iris-tree"])?;
    assert_eq!(first_column(&one), ["iris-tree"], "{one}");

    let unknown = fixture.run(&["models", "nope"])?;
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(unknown.stderr.contains("model nope not found"), "{unknown}");
    Ok(())
}

#[test]
fn models_as_json_carry_state_aliases_reasons_and_lineage() -> TestResult {
    let fixture = Fixture::new()?;
    let models = fixture.json(&["models", "churn-classifier"])?;
    let summary: Vec<Value> = models
        .as_array()
        .ok_or("not an array")?
        .iter()
        .map(|m| {
            json!([
                m["version"],
                m["state"],
                m["aliases"],
                m["reasons"],
                m["run_id"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!([
                2,
                "accepted",
                ["candidate"],
                [],
                fixture.ids.churn_candidate
            ]),
            json!([
                null,
                "rejected",
                [],
                ["auc 0.7 is below the minimum 0.8"],
                fixture.ids.churn_rejected
            ]),
            json!([1, "accepted", ["champion"], [], fixture.ids.churn_scheduled]),
        ]
    );
    assert_eq!(models[0]["commit"], COMMIT);
    assert_eq!(models[0]["pipeline_version"], CHURN_VERSION);
    assert_eq!(models[0]["metrics"], json!({"auc": 0.93, "loss": 0.18}));
    Ok(())
}

#[test]
fn an_empty_data_dir_says_there_are_no_runs_yet_and_creates_no_database() -> TestResult {
    let dir = temp_dir()?;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let missing = dir.path().join("missing");
    for data in [&empty, &missing] {
        let data_arg = utf8(data)?;
        for view in ["runs", "schedules", "models"] {
            let run = trainyard(dir.path(), &[view, "--data-dir", data_arg])?;
            assert_eq!(run.code, Some(0), "{run}");
            assert_eq!(
                run.stdout,
                "no runs yet: start the service with `trainyard serve`\n"
            );
            let json = trainyard(
                dir.path(),
                &[view, "--data-dir", data_arg, "--format", "json"],
            )?;
            assert_eq!(json.code, Some(0), "{json}");
            assert_eq!(json.json()?, json!([]));
        }
        let show = trainyard(dir.path(), &["runs", "show", "1", "--data-dir", data_arg])?;
        assert_eq!(show.code, Some(1), "{show}");
        assert!(
            show.stderr.contains("run 1 not found (no runs yet"),
            "{show}"
        );
        let logs = trainyard(dir.path(), &["logs", "1", "train", "--data-dir", data_arg])?;
        assert_eq!(logs.code, Some(1), "{logs}");
    }
    assert_eq!(
        std::fs::read_dir(&empty)?.count(),
        0,
        "the empty data dir was written to"
    );
    assert!(!missing.exists(), "the missing data dir was created");
    Ok(())
}

#[test]
fn without_data_dir_the_views_read_dot_trainyard_at_the_repository_root() -> TestResult {
    let repo = Repo::with_files(&[("ml/README.md", "# pipelines\n")])?;
    let ids = seed(&repo.path().join(".trainyard"))?;
    let run = trainyard(&repo.path().join("ml"), &["runs", "--pipeline", "iris"])?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        first_column(&run.stdout),
        [ids.iris_manual.to_string()],
        "{run}"
    );

    let outside = temp_dir()?;
    let lost = trainyard(outside.path(), &["runs"])?;
    assert_eq!(lost.code, Some(2), "{lost}");
    assert!(lost.stderr.contains("pass --data-dir"), "{lost}");
    Ok(())
}
