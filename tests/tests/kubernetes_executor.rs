//! The shared executor suite against the Kubernetes backend: real `kube` client and
//! watchers, the stand-in API server, and its kubelet running each pod's init and main
//! containers as local processes, so the real static `trainyard-launch` moves inputs and
//! outputs.

use std::time::Duration;

use tokio::sync::mpsc;
use trainyard::artifacts::ArtifactStore;
use trainyard::execute::KubernetesExecutor;
use trainyard::execute::kubernetes::ClusterSettings;
use trainyard::execute::kubernetes::manifest::IMAGE_BINARY;
use trainyard::execute::suite::{self, Harness};
use trainyard_testkit::kube::ApiServer;
use trainyard_tests::launcher_bin;

/// A Kubernetes executor over a fresh stand-in cluster whose kubelet runs the real launcher;
/// everything lives as long as the returned guards.
async fn kubernetes_harness() -> (Harness<KubernetesExecutor>, ApiServer, tempfile::TempDir) {
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
