//! End-to-end test that an idle `trainyard serve` sleeps: once the example repository's
//! commit is applied, its run finished and its reports written, with nothing due for hours,
//! the service makes no reconcile pass while it waits. Passes are counted through the
//! `trainyard_reconcile_passes_total` counters of its own `/metrics`.

use std::time::Duration;

use trainyard::store::RunState;
use trainyard_tests::{DataDir, Repo, Result, Service, TestResult, free_port, http_get, wait_for};

/// How long the idle service is watched.
const WATCHED: Duration = Duration::from_secs(6);

/// The sum of every `trainyard_reconcile_passes_total` sample of an OpenMetrics text.
fn passes(metrics: &str) -> Result<u64> {
    let mut total = 0;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("trainyard_reconcile_passes_total") {
            let value = rest
                .rsplit(' ')
                .next()
                .ok_or_else(|| format!("a sample without a value: {line}"))?;
            total += value.parse::<u64>().map_err(|e| format!("{line}: {e}"))?;
        }
    }
    Ok(total)
}

/// The service's pass count, read from `/metrics` on `port`.
fn passes_at(port: u16) -> Result<u64> {
    let (status, body) = http_get(port, "/metrics")?;
    if status != 200 {
        return Err(format!("/metrics answered {status}: {body}").into());
    }
    passes(&body)
}

#[tokio::test]
async fn an_idle_service_makes_no_passes() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    let data = DataDir::new()?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    // The default poll (5 s) is shorter than the watch: a local repository is watched, not
    // polled, so even the poll must not wake the loop.
    let service = Service::start(repo.path(), &data, &["--listen", &listen])?;
    let store = data.store().await?;
    wait_for(
        Duration::from_secs(180),
        "the commit's run finishes",
        async || {
            let runs = store.list_runs(None, 10).await?;
            Ok(runs
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
                .iter()
                .any(|run| matches!(run.state, RunState::Succeeded | RunState::Failed)))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    // Registration and reporting follow the run within a pass or two; then nothing is due
    // until the nightly tick.
    let mut before = passes_at(port)?;
    wait_for(Duration::from_secs(30), "the passes settle", async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = passes_at(port)?;
        let settled = now == before;
        before = now;
        Ok(settled)
    })
    .await?;
    tokio::time::sleep(WATCHED).await;
    let after = passes_at(port)?;
    assert!(
        before > 0,
        "the counter counts: the commit was applied in a pass"
    );
    assert_eq!(
        after - before,
        0,
        "an idle service made {} passes in {WATCHED:?}\n{}",
        after - before,
        data.service_output()
    );
    drop(service);
    Ok(())
}

#[test]
fn pass_samples_are_summed_across_reconcilers() -> TestResult {
    let text = "# TYPE trainyard_reconcile_passes counter\n\
        trainyard_reconcile_passes_total{reconciler=\"follow\"} 3\n\
        trainyard_reconcile_passes_total{reconciler=\"runs\"} 4\n\
        trainyard_reconcile_errors_total{reconciler=\"runs\"} 9\n";
    assert_eq!(passes(text)?, 7);
    Ok(())
}
