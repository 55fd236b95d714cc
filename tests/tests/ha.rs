//! Failover of `trainyard serve --leader-election`: two replicas of the real binary on one
//! PostgreSQL store and one repository, electing a leader on a Lease of the stand-in
//! Kubernetes API server (which allows only what the deployed Role grants). Exactly one
//! acts; when it is killed the other takes over within the lease duration, when it stops it
//! hands over within a second, and a schedule firing every second gets exactly one run per
//! tick, none lost, none repeated.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use trainyard::store::{RunState, Store, TickOutcome, TickRow};
use trainyard_testkit::kube::ApiServer;
use trainyard_tests::{
    DataDir, PINNED_IMAGE, Repo, Result, Service, TestResult, free_port, http_get, wait_for,
    workspace_root,
};

const NAMESPACE: &str = "trainyard";
const LEASE: &str = "trainyard";
const SCHEDULE: &str = "every-second";
/// Lease duration and grace of the replicas, in seconds.
const DURATION: u64 = 4;
const GRACE: u64 = 2;

fn repo() -> Result<Repo> {
    Repo::with_files(&[(
        "tick.yaml",
        format!(
            "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: tick, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  steps:
    - name: nap
      retries: 1
      run: [sleep, \"0.3\"]
---
apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {{name: {SCHEDULE}}}
spec:
  pipeline: tick
  cron: \"* * * * * *\"
  catchup: all
  max_catchup: 1000
  concurrency: allow
"
        ),
    )])
}

/// The rules of the deployed Role, as the stand-in enforces them.
fn deployed_rules() -> Result<Value> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/base/role.yaml"))?;
    let role: Value = serde_saphyr::from_str(&text)?;
    Ok(role["rules"].clone())
}

struct Replica {
    port: u16,
    data: DataDir,
    service: Option<Service>,
}

impl Replica {
    fn start(name: &'static str, repo: &Repo, data: DataDir, kubeconfig: &Path) -> Result<Replica> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let (duration, grace) = (DURATION.to_string(), GRACE.to_string());
        let service = Service::start_with_env(
            repo.path(),
            &data,
            &[
                "--poll-seconds",
                "1",
                "--listen",
                &listen,
                "--leader-election",
                "--namespace",
                NAMESPACE,
                "--lease-duration-seconds",
                &duration,
                "--lease-grace-seconds",
                &grace,
            ],
            &[
                ("KUBECONFIG", kubeconfig.to_str().ok_or("path")?),
                ("POD_NAME", name),
            ],
        )?;
        Ok(Replica {
            port,
            data,
            service: Some(service),
        })
    }

    /// The replica's log.
    fn log(&self) -> String {
        self.data.service_output()
    }

    /// Both health endpoints answer 200.
    fn healthy(&self) -> Result<bool> {
        Ok(http_get(self.port, "/healthz")?.0 == 200 && http_get(self.port, "/readyz")?.0 == 200)
    }
}

fn holder(api: &ApiServer) -> Option<String> {
    api.get("leases", NAMESPACE, LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Fired ticks, oldest first.
async fn ticks(store: &Store) -> Result<Vec<TickRow>> {
    let mut ticks = store.ticks(SCHEDULE, 100_000).await?;
    ticks.reverse();
    Ok(ticks)
}

async fn ticks_after(store: &Store, at: DateTime<Utc>) -> Result<usize> {
    Ok(ticks(store)
        .await?
        .iter()
        .filter(|t| t.scheduled_at > at)
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_acts_and_the_other_takes_over_when_it_dies_losing_and_repeating_nothing()
-> TestResult {
    let api = ApiServer::builder().token("replica-token").start().await?;
    api.create_namespace(NAMESPACE)?;
    api.enforce_rbac(deployed_rules()?);
    let scratch = trainyard_tests::temp_dir()?;
    let kubeconfig = scratch.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let repo = repo()?;
    let data_a = DataDir::postgres().await?;
    let data_b = data_a.sharing_database()?;
    let store = data_a.store().await?;

    let mut a = Replica::start("replica-a", &repo, data_a, &kubeconfig)?;
    wait_for(Duration::from_secs(60), "replica-a leads", async || {
        Ok(holder(&api).as_deref() == Some("replica-a"))
    })
    .await?;
    let mut b = Replica::start("replica-b", &repo, data_b, &kubeconfig)?;
    wait_for(
        Duration::from_secs(60),
        "replica-b serves health",
        async || Ok(b.healthy().unwrap_or(false)),
    )
    .await?;
    let joined = Utc::now();
    wait_for(Duration::from_secs(60), "ticks while a leads", async || {
        Ok(ticks_after(&store, joined + chrono::TimeDelta::seconds(1)).await? >= 3)
    })
    .await?;
    assert_eq!(holder(&api).as_deref(), Some("replica-a"));
    assert!(b.healthy()?, "the standby is healthy and ready");
    let b_log = b.log();
    assert!(b_log.contains("joining leader election"), "{b_log}");
    for acting in ["became the leader", "step started", "applied "] {
        assert!(
            !b_log.contains(acting),
            "the standby acted ({acting}):\n{b_log}"
        );
        assert!(
            a.log().contains(acting),
            "the leader did not act ({acting})"
        );
    }

    // The leader dies as an OOM kill would: no release, the Lease must expire.
    a.service.take().ok_or("a is gone")?.kill_hard()?;
    let killed = Instant::now();
    let killed_at = Utc::now();
    wait_for(
        Duration::from_secs(DURATION + 6),
        "replica-b takes over",
        async || {
            assert!(
                b.healthy()?,
                "the standby stays healthy while it takes over"
            );
            Ok(holder(&api).as_deref() == Some("replica-b"))
        },
    )
    .await?;
    let takeover = killed.elapsed();
    eprintln!("replica-b took over {takeover:?} after replica-a was killed");
    assert!(
        takeover <= Duration::from_secs(DURATION + 3),
        "took over after {takeover:?}"
    );
    wait_for(
        Duration::from_secs(30),
        "ticks after the takeover",
        async || {
            Ok(ticks_after(
                &store,
                Utc::now().min(killed_at + chrono::TimeDelta::seconds(6)),
            )
            .await?
                >= 3)
        },
    )
    .await?;
    assert!(b.log().contains("became the leader"));
    wait_for(
        Duration::from_secs(60),
        "runs from before the kill finish",
        async || {
            for tick in ticks(&store).await? {
                let Some(id) = tick.run_id.filter(|_| tick.scheduled_at < killed_at) else {
                    continue;
                };
                if !store
                    .run(id)
                    .await?
                    .is_some_and(|run| run.state.is_finished())
                {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;

    // A third replica stands by, following the Lease through its watch.
    let mut c = Replica::start("replica-c", &repo, a.data.sharing_database()?, &kubeconfig)?;
    wait_for(
        Duration::from_secs(60),
        "replica-c watches the lease",
        async || {
            Ok(api.requests().iter().any(|r| {
                r.resource == "leases"
                    && r.verb == "watch"
                    && r.user_agent
                        .as_deref()
                        .is_some_and(|ua| ua.contains("replica-c"))
            }))
        },
    )
    .await?;
    // The leader's Lease traffic is one update per renewal (every DURATION − GRACE), and
    // the standby, watching, sends nothing but its watch.
    let lease_requests = |who: &str| {
        api.requests()
            .iter()
            .filter(|r| {
                r.resource == "leases"
                    && r.verb != "watch"
                    && r.user_agent.as_deref().is_some_and(|ua| ua.contains(who))
            })
            .count()
    };
    let (b_before, c_before) = (lease_requests("replica-b"), lease_requests("replica-c"));
    let window = 3 * (DURATION - GRACE);
    std::thread::sleep(Duration::from_secs(window));
    let b_sent = lease_requests("replica-b") - b_before;
    assert!(
        (2..=4).contains(&b_sent),
        "the leader sent {b_sent} Lease requests in {window} s"
    );
    assert_eq!(
        lease_requests("replica-c") - c_before,
        0,
        "the standby polled"
    );

    // B stops gracefully: it releases the Lease, and the standby's watch sees it at once,
    // long before the Lease would have expired.
    assert_eq!(b.service.take().ok_or("b is gone")?.stop()?, Some(0));
    let released = Instant::now();
    wait_for(
        Duration::from_secs(DURATION),
        "replica-c takes over",
        async || Ok(holder(&api).as_deref() == Some("replica-c")),
    )
    .await?;
    let handover = released.elapsed();
    eprintln!("replica-c took over {handover:?} after replica-b released the lease");
    assert!(
        handover < Duration::from_secs(1),
        "took over {handover:?} after the release"
    );
    assert_eq!(c.service.take().ok_or("c is gone")?.stop()?, Some(0));
    let released = api
        .get("leases", NAMESPACE, LEASE)
        .ok_or("the lease is gone")?;
    assert!(
        released["spec"]["holderIdentity"].is_null(),
        "a stopping leader releases the lease: {released}"
    );

    // One run per tick, one tick per second: none lost across the takeover, none repeated.
    let ticks = ticks(&store).await?;
    let seconds: Vec<i64> = ticks.iter().map(|t| t.scheduled_at.timestamp()).collect();
    let first = *seconds.first().ok_or("no ticks")?;
    let last = *seconds.last().ok_or("no ticks")?;
    assert_eq!(
        seconds,
        (first..=last).collect::<Vec<_>>(),
        "every second from the first tick to the last has exactly one tick"
    );
    assert!(
        last > killed_at.timestamp() + 2,
        "ticks continued after the kill"
    );
    let mut runs = BTreeSet::new();
    for tick in &ticks {
        assert_eq!(tick.outcome, TickOutcome::Fired, "{tick:?}");
        let run = tick.run_id.ok_or_else(|| format!("{tick:?} has no run"))?;
        assert!(runs.insert(run), "run {run} started by two ticks");
    }
    // Runs the dead leader was driving were finished by the new one.
    for id in runs {
        let run = store.run(id).await?.ok_or("run missing")?;
        if run.scheduled_at.is_some_and(|at| at < killed_at) {
            assert!(
                matches!(run.state, RunState::Succeeded),
                "run {id} before the kill ended {:?}: {:?}",
                run.state,
                run.message
            );
        }
    }
    drop(a);
    drop(b);
    drop(c);
    Ok(())
}
