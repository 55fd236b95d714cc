//! The runtime's sub-reconcilers over a real Git repository and a real SQLite store, with an
//! executor whose steps "run elsewhere" and do what each test says: accept, refuse, lose.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use git2::{Repository, Signature};
use sqlx::Connection as _;

use super::*;
use crate::artifacts::{self, ArtifactStore};
use crate::execute::launcher::SourceMarker;
use crate::execute::{ExecError, JobState, StepJob, StepSource};
use crate::report::ForgeEvent;
use crate::report::notes::NotesForge;
use crate::store::{AttemptState, RunRow, StepState};

const IMAGE: &str =
    "reg.example.com/ml@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

/// An executor whose steps run elsewhere. It keeps the state of every job it accepted;
/// tests refuse submissions, lose jobs or end them.
#[derive(Clone, Default)]
struct Remote {
    /// Jobs created, in order: a name submitted again is not created again.
    created: Arc<Mutex<Vec<StepJob>>>,
    /// The state of each job it has, by name.
    jobs: Arc<Mutex<HashMap<String, JobState>>>,
    /// How many submissions to fail as the cluster failing, before accepting again.
    refuse: Arc<AtomicUsize>,
    /// Every submission, accepted or not.
    calls: Arc<AtomicUsize>,
    /// When set, a submission returns only once this many are in flight together.
    together: Option<Arc<tokio::sync::Barrier>>,
    /// How many submissions to carry out and then answer with an error, as when the
    /// connection drops after the create took effect.
    lose_answer: Arc<AtomicUsize>,
}

impl Remote {
    fn created(&self) -> Vec<StepJob> {
        self.created.lock().expect("lock").clone()
    }

    fn set(&self, name: &str, state: Option<JobState>) {
        let mut jobs = self.jobs.lock().expect("lock");
        match state {
            Some(state) => jobs.insert(name.to_owned(), state),
            None => jobs.remove(name),
        };
    }
}

impl Executor for Remote {
    async fn submit(&self, job: StepJob) -> Result<(), ExecError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Err(ExecError::Cluster {
                what: format!("creating job {:?}", job.name),
                reason: "connection refused".to_owned(),
            });
        }
        let new = self
            .jobs
            .lock()
            .expect("lock")
            .insert(job.name.clone(), JobState::Pending)
            .is_none();
        if new {
            self.created.lock().expect("lock").push(job);
        }
        if let Some(barrier) = &self.together {
            barrier.wait().await;
        }
        let lost = self
            .lose_answer
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(ExecError::Cluster {
                what: format!("creating job {:?}", job_name_of(&self.created())),
                reason: "connection closed before message completed".to_owned(),
            });
        }
        Ok(())
    }
    async fn observe(&self, name: &str) -> Result<Option<JobState>, ExecError> {
        Ok(self.jobs.lock().expect("lock").get(name).cloned())
    }
    async fn cancel(&self, name: &str) -> Result<(), ExecError> {
        self.set(name, Some(JobState::Cancelled));
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
        Ok(self.jobs.lock().expect("lock").keys().cloned().collect())
    }
}

fn commit_all(repo: &Repository, message: &str) -> String {
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
        .expect("commit")
        .to_string()
}

/// A pipeline of `steps` (each `run: [./train.sh]`) that runs on change, with `retries`.
fn pipeline(name: &str, steps: &[&str], retries: u32) -> String {
    let steps: String = steps
        .iter()
        .map(|s| format!("    - {{name: {s}, run: [./train.sh], retries: {retries}}}\n"))
        .collect();
    format!(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: team-a}}\n\
         spec:\n  image: {IMAGE}\n  triggers: {{on_change: true}}\n  steps:\n{steps}"
    )
}

/// A repository with `files` under `ml/`, committed.
struct Fixture {
    dir: tempfile::TempDir,
    repo: Repository,
    artifacts: ArtifactStore,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo_dir = dir.path().join("repo");
        let repo = Repository::init(&repo_dir).expect("init");
        for (path, text) in files {
            let full = repo_dir.join("ml").join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("dirs");
            std::fs::write(full, text).expect("write");
        }
        commit_all(&repo, "first");
        let artifacts =
            ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8")).expect("store");
        Fixture {
            dir,
            repo,
            artifacts,
        }
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn database(&self, data: &str) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join(data).join("db").display()
        )
    }

    /// A service over this repository with its own data directory `data`.
    async fn service(
        &self,
        data: &str,
        executor: Remote,
        configure: impl FnOnce(&mut Config),
    ) -> Runtime<Remote, NotesForge> {
        let data_dir = self.dir.path().join(data);
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let store = Store::connect(&self.database(data)).await.expect("store");
        let (_tx, job_events) = tokio::sync::mpsc::unbounded_channel();
        let installation = store.installation(None).await.expect("installation");
        let mut config = Config::new(data_dir, installation);
        config.subdir = "ml".to_owned();
        configure(&mut config);
        let repo = Repo::open(&self.repo_dir()).expect("repo");
        Runtime::new(Parts {
            config,
            forge: NotesForge::new(repo.clone()),
            repo,
            store,
            executor,
            job_events,
            artifacts: self.artifacts.clone(),
        })
        .await
        .expect("service")
    }

    /// Runs `sql` on the store of data directory `data`, as a person editing it would.
    async fn sql(&self, data: &str, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database(data))
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .expect("run the statement");
    }
}

fn stop() -> Stop {
    Stop::never().1
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
    let f = Fixture::new(&[("notes.txt", "one")]);
    let first = f
        .repo
        .head()
        .expect("head")
        .target()
        .expect("id")
        .to_string();
    // Polls once an hour: only the webhook can make it look at the branch again.
    let mut service = f
        .service("data", Remote::default(), |c| {
            c.poll = Duration::from_secs(3600)
        })
        .await;
    let store = service.store.clone();
    let wake = service.wake();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        service
            .serve(None, None, async {
                let _ = stopped.await;
            })
            .await;
    });
    assert!(
        wait_for_head(&store, &first).await,
        "the first pass applies the head"
    );
    std::fs::write(f.repo_dir().join("ml/notes.txt"), "two").expect("write");
    let second = commit_all(&f.repo, "second");
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
    wake.forge_events();
    assert!(
        wait_for_head(&store, &second).await,
        "the push is applied at once"
    );
    assert!(
        store
            .pending_forge_events::<ForgeEvent>(10)
            .await
            .expect("pending")
            .is_empty(),
        "the push event is finished"
    );
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("the loop stops")
        .expect("the loop ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_run_elsewhere_get_the_followed_tree_uploaded_once_by_its_id() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new(&[
        ("churn/pipeline.yaml", &pipeline("churn", &["a", "b"], 0)),
        ("churn/train.sh", "#!/bin/sh\necho hi\n"),
        ("my data_1.csv", "x,y\n"),
    ]);
    let script = f.repo_dir().join("ml/churn/train.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(f.repo_dir().join("outside.txt"), "not followed").expect("write outside");
    let head = commit_all(&f.repo, "modes");

    let first = Remote::default();
    let mut service1 = f.service("data1", first.clone(), |_| {}).await;
    service1.follow.apply_head().await.expect("apply");
    service1.runs.reconcile(&stop()).await;

    let jobs = first.created();
    assert_eq!(jobs.len(), 2, "both steps start: {jobs:?}");
    let tree_id = f
        .repo
        .find_commit(git2::Oid::from_str(&head).expect("oid"))
        .expect("commit")
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
    let mut keys = f.artifacts.list(&prefix).await.expect("list");
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
    let marker = f
        .artifacts
        .get_bytes(&artifacts::source_marker_key(&prefix))
        .await
        .expect("get")
        .expect("the marker is written");
    let marker: SourceMarker = serde_json::from_slice(&marker).expect("marker");
    assert_eq!(marker.executables, vec![script_key.clone()]);

    // A change outside the followed directory makes a new commit with the same tree: a
    // second service (nothing remembered in memory) reuses the upload instead of repeating
    // it, which removing one of its files shows.
    std::fs::write(f.repo_dir().join("outside.txt"), "changed").expect("write outside");
    let second_commit = commit_all(&f.repo, "second");
    let removed = artifacts::source_key(&prefix, b"my data_1.csv");
    std::fs::remove_file(f.dir.path().join("store").join(&removed))
        .expect("remove one uploaded file");
    let second = Remote::default();
    let mut service2 = f.service("data2", second.clone(), |_| {}).await;
    let applied = service2.follow.apply_head().await.expect("apply");
    assert_eq!(applied, second_commit, "a new commit");
    service2.runs.reconcile(&stop()).await;
    let jobs = second.created();
    assert!(!jobs.is_empty());
    for job in &jobs {
        assert_eq!(
            job.source.as_ref().map(|s| s.prefix.as_str()),
            Some(prefix.as_str())
        );
    }
    assert_eq!(
        f.artifacts.get_bytes(&removed).await.expect("get"),
        None,
        "not uploaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_submits_the_steps_it_starts_at_once_rather_than_one_after_another() {
    let f = Fixture::new(&[("pipeline.yaml", &pipeline("wide", &["a", "b", "c"], 0))]);
    // Each submission waits for the other two: submitted one after another, the first
    // would wait forever.
    let executor = Remote {
        together: Some(Arc::new(tokio::sync::Barrier::new(3))),
        ..Remote::default()
    };
    let mut service = f.service("data", executor.clone(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    tokio::time::timeout(Duration::from_secs(20), service.runs.reconcile(&stop()))
        .await
        .expect("the three submissions were in flight together");
    let mut names: Vec<String> = executor.created().iter().map(|j| j.step.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert!(
        attempts.iter().all(|a| a.submitted_at.is_some()),
        "all three recorded as accepted: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_executor_refuses_is_handed_over_again_until_it_is_created_once() {
    let f = Fixture::new(&[("pipeline.yaml", &pipeline("p", &["a"], 0))]);
    let executor = Remote::default();
    executor.refuse.store(3, Ordering::SeqCst);
    let mut service = f.service("data", executor.clone(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    for refused in 1..=3 {
        service.runs.reconcile(&stop()).await;
        let steps = service.store.steps(1).await.expect("steps");
        assert_eq!(
            (steps[0].state, steps[0].attempt),
            (StepState::Running, 1),
            "still the first attempt after {refused} refusals"
        );
        let message = steps[0].message.as_deref().unwrap_or_default();
        assert!(
            message.contains("not started yet") && message.contains("connection refused"),
            "the step says why it waits: {message}"
        );
        // The backoff has passed.
        service.runs.handover_at.clear();
    }
    service.runs.reconcile(&stop()).await;
    assert_eq!(executor.calls.load(Ordering::SeqCst), 4);
    assert_eq!(executor.created().len(), 1, "created exactly once");
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert_eq!(attempts.len(), 1, "no attempt charged: {attempts:?}");
    assert!(attempts[0].submitted_at.is_some());
    assert_eq!(
        attempts[0].message, None,
        "the problem is cleared once it is over"
    );
}

/// The name of the last job created.
fn job_name_of(created: &[StepJob]) -> String {
    created.last().map(|j| j.name.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_create_answer_was_lost_and_that_ended_is_recorded_as_submitted() {
    let f = Fixture::new(&[("pipeline.yaml", &pipeline("p", &["a"], 0))]);
    let executor = Remote::default();
    executor.lose_answer.store(1, Ordering::SeqCst);
    let mut service = f.service("data", executor.clone(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    service.runs.reconcile(&stop()).await;
    let job = job_name_of(&executor.created());
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert_eq!(
        attempts[0].submitted_at, None,
        "its create was not answered"
    );
    // The Job ran and ended before the service learned it exists.
    executor.set(&job, Some(JobState::Succeeded { artifacts: vec![] }));
    service.runs.reconcile(&stop()).await;
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(
        attempts[0].submitted_at.is_some() && attempts[0].finished_at.is_some(),
        "an attempt that ended was submitted: {attempts:?}"
    );
    assert_eq!(attempts[0].message, None, "{attempts:?}");
    assert_eq!(executor.created().len(), 1, "created exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_never_accepted_within_the_deadline_fails_with_the_executors_words() {
    let f = Fixture::new(&[("pipeline.yaml", &pipeline("p", &["a"], 1))]);
    let executor = Remote::default();
    executor.refuse.store(usize::MAX, Ordering::SeqCst);
    let mut service = f
        .service("data", executor.clone(), |c| {
            c.submit_deadline = Duration::from_millis(200);
        })
        .await;
    service.follow.apply_head().await.expect("apply");
    service.runs.reconcile(&stop()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.runs.reconcile(&stop()).await;
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert_eq!(attempts[0].state, AttemptState::Failed);
    let reason = attempts[0].message.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("could not be started within")
            && reason.contains("creating job")
            && reason.contains("connection refused"),
        "{reason}"
    );
    let steps = service.store.steps(1).await.expect("steps");
    assert_eq!(
        (steps[0].state, steps[0].failures),
        (StepState::Waiting, 1),
        "retried per its retries"
    );
    assert!(executor.created().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_executor_accepted_and_lost_ends_with_what_is_known_of_why() {
    let f = Fixture::new(&[("pipeline.yaml", &pipeline("p", &["a"], 0))]);
    let executor = Remote::default();
    let mut service = f.service("data", executor.clone(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    service.runs.reconcile(&stop()).await;
    let job = executor.created()[0].name.clone();
    executor.set(&job, Some(JobState::Running { since: Utc::now() }));
    service.runs.reconcile(&stop()).await;
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert!(
        attempts[0].running_at.is_some(),
        "its running time is recorded"
    );
    executor.set(&job, None);
    service.runs.reconcile(&stop()).await;
    let attempts = service.store.attempts(1).await.expect("attempts");
    assert_eq!(attempts[0].state, AttemptState::Failed);
    assert!(
        attempts[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("gone from the cluster")),
        "{attempts:?}"
    );
    service.runs.reconcile(&stop()).await;
    let run = service.store.run(1).await.expect("read").expect("run");
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.message
            .as_deref()
            .is_some_and(|m| m.contains("gone from the cluster")),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_pinned_definition_cannot_be_read_fails_and_the_others_go_on() {
    let f = Fixture::new(&[
        ("a.yaml", &pipeline("broken", &["a"], 0)),
        ("b.yaml", &pipeline("fine", &["a"], 0)),
    ]);
    let executor = Remote::default();
    let mut service = f.service("data", executor.clone(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    f.sql(
        "data",
        "UPDATE pipeline_versions SET definition = '{\"spec\": 1}' WHERE pipeline = 'broken'",
    )
    .await;
    service.runs.reconcile(&stop()).await;
    let runs: Vec<RunRow> = service
        .store
        .list_runs(None, 10)
        .await
        .expect("runs")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("readable runs");
    let broken = runs
        .iter()
        .find(|r| r.pipeline == "broken")
        .expect("broken");
    let fine = runs.iter().find(|r| r.pipeline == "fine").expect("fine");
    assert_eq!(broken.state, RunState::Failed);
    let message = broken.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("pipeline_versions") && message.contains("definition"),
        "the reason names the row and the column: {message}"
    );
    assert_eq!(fine.state, RunState::Running);
    assert_eq!(executor.created().len(), 1, "the fine run's step started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_that_cannot_be_read_stalls_and_the_others_fire() {
    let schedule = |name: &str| {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\n\
             spec: {{pipeline: p, cron: '* * * * * *'}}\n"
        )
    };
    let f = Fixture::new(&[
        (
            "p.yaml",
            &pipeline("p", &["a"], 0).replace("on_change: true", "on_change: false"),
        ),
        (
            "s.yaml",
            &format!("{}---\n{}", schedule("good"), schedule("bad")),
        ),
    ]);
    let mut service = f.service("data", Remote::default(), |_| {}).await;
    service.follow.apply_head().await.expect("apply");
    f.sql(
        "data",
        "UPDATE schedules SET definition = 'not json' WHERE name = 'bad'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pass = service.ticks.reconcile(Utc::now(), &stop()).await;
    assert!(pass.changed, "the good schedule fired");
    assert!(pass.next.is_some(), "and says when it is due next");
    let good = service.store.ticks("good", 10).await.expect("ticks");
    assert!(
        good.iter().any(|t| t.run_id.is_some()),
        "a tick of the good schedule started a run: {good:?}"
    );
    assert!(
        service
            .store
            .ticks("bad", 10)
            .await
            .expect("ticks")
            .is_empty()
    );
    let stalled = service
        .store
        .stall_of("bad")
        .await
        .expect("read")
        .expect("stalled");
    assert!(
        stalled.reason.contains("cannot be read") && stalled.reason.contains("definition"),
        "{}",
        stalled.reason
    );
    assert!(
        service
            .store
            .stall_of("good")
            .await
            .expect("read")
            .is_none(),
        "only the bad one"
    );
}
