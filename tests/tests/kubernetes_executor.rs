//! The shared executor suite against the Kubernetes backend: real `kube` client and
//! watchers, the stand-in API server, and its kubelet running each pod's init and main
//! containers as local processes, so the real static `trainyard-launch` moves inputs and
//! outputs.

use std::time::Duration;

use tokio::sync::mpsc;
use trainyard::artifacts::ArtifactStore;
use trainyard::execute::kubernetes::ClusterSettings;
use trainyard::execute::kubernetes::manifest::IMAGE_BINARY;
use trainyard::execute::suite::{self, Harness};
use trainyard::execute::{Executor as _, JobState, KubernetesExecutor};
use trainyard_testkit::kube::ApiServer;
use trainyard_tests::launcher_bin;

/// A Kubernetes executor over a fresh stand-in cluster whose kubelet runs the real launcher;
/// everything lives as long as the returned guards.
async fn kubernetes_harness() -> (Harness<KubernetesExecutor>, ApiServer, tempfile::TempDir) {
    kubernetes_harness_with(|_| ()).await
}

/// [`kubernetes_harness`] with cluster settings changed by `change`.
async fn kubernetes_harness_with(
    change: impl FnOnce(&mut ClusterSettings),
) -> (Harness<KubernetesExecutor>, ApiServer, tempfile::TempDir) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = launcher_bin().expect("the trainyard-launch binary");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ApiServer::builder()
        .kubelet(dir.path().join("kubelet"))
        .start()
        .await
        .expect("stand-in cluster");
    server.map_path(IMAGE_BINARY, binary);
    let location = dir.path().join("artifacts");
    let location = location.to_str().expect("UTF-8 path").to_owned();
    let artifacts = ArtifactStore::open(&location).expect("artifact store");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let config = kube::Config::new(server.url().parse().expect("server URL"));
    let client = kube::Client::try_from(config).expect("client");
    let mut settings = ClusterSettings::new("trainyard:test");
    settings.pending_timeout = Duration::from_secs(10);
    change(&mut settings);
    let (events, received) = mpsc::unbounded_channel();
    let executor = KubernetesExecutor::new(
        client,
        suite::INSTANCE,
        settings,
        artifacts.clone(),
        location,
        events,
    )
    .expect("executor");
    executor.synced().await;
    (
        Harness::new(executor, received, artifacts, scratch),
        server,
        dir,
    )
}

macro_rules! kubernetes_suite {
    ($($test:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let (mut harness, _server, _dir) = kubernetes_harness().await;
            suite::$test(&mut harness).await;
        }
    )*};
}

kubernetes_suite!(
    a_step_that_succeeds_stores_its_output,
    a_failing_step_reports_its_exit_code_and_keeps_its_log,
    a_step_that_does_not_write_an_output_fails,
    inputs_arrive_at_their_paths_before_the_step_starts,
    a_missing_input_fails_the_step_before_it_starts,
    a_timeout_kills_the_whole_process_tree,
    cancelling_a_running_step_kills_its_tree_and_reports_cancelled,
    a_started_step_is_announced_running_with_its_start_then_its_end,
    submitting_the_same_name_twice_runs_the_command_once,
    logs_are_readable_while_running_and_after,
    an_unknown_name_is_not_observed_and_cancelling_it_is_harmless,
    argv_reaches_the_program_unchanged_without_a_shell,
    the_job_environment_is_added_to_the_services,
);

/// Whether process `pid` has ended (gone, or a zombie no one has reaped yet).
fn has_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_step_that_ignores_sigterm_is_cancelled_only_once_it_has_stopped() {
    let (mut h, server, _dir) =
        kubernetes_harness_with(|s| s.termination_grace_period_seconds = Some(2)).await;
    let pid_file = h.scratch_file("stubborn.pid");
    let job = h.job(
        "train",
        &[
            "sh",
            "-c",
            r#"trap '' TERM; echo $$ > "$1"; while :; do sleep 0.1; done"#,
            "sh",
            &pid_file,
        ],
    );
    h.submit(&job).await;
    let pid = suite::read_pid(&pid_file).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        h.executor.observe(&job.name).await.expect("observe"),
        Some(JobState::Running { .. })
    ) {
        assert!(tokio::time::Instant::now() < deadline, "the step never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The step shrugs off SIGTERM: it is cancelled when its grace is over and it was
    // killed, not when the Job's delete was answered.
    for _ in 0..3 {
        h.executor.cancel(&job.name).await.expect("cancel");
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!has_ended(pid), "SIGTERM is ignored for the grace");
    let state = h.executor.observe(&job.name).await.expect("observe");
    assert!(
        matches!(state, Some(JobState::Running { .. })),
        "still running while its pod stops, not {state:?}"
    );
    assert_eq!(h.wait(&job.name).await, JobState::Cancelled);
    assert!(has_ended(pid), "cancelled while the step still ran");
    assert!(
        server.list("pods", Some("default")).is_empty(),
        "cancelled while its pod was still there"
    );
    let deletes: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.verb == "delete" && r.resource == "jobs")
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [200], "one delete of the Job");
}
