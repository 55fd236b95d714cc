//! `trainyard serve`: the service (steps as local processes or Kubernetes Jobs, Git-notes
//! reports) over SQLite or PostgreSQL, optionally with health endpoints and leader election
//! among replicas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use trainyard::artifacts::ArtifactStore;
use trainyard::config::Config;
use trainyard::execute::kubernetes::ClusterSettings;
use trainyard::execute::{Executor, JobEvent, KubernetesExecutor, LocalExecutor};
use trainyard::leader::{Election, Leadership};
use trainyard::report::AnyForge;
use trainyard::report::github::{GithubAuth, GithubConfig, GithubForge};
use trainyard::report::notes::NotesForge;
use trainyard::runtime::{Parts, Runtime};
use trainyard::server::{self, AppState, Webhooks};
use trainyard::source::{BranchWatcher, Repo, discover};
use trainyard::spec::check::{resolve_params, typed_params};
use trainyard::store::{FOLLOWED_CURSOR, NewRun, RunState, Store, Trigger};

use super::views::DATA_DIR;
use super::{
    EXIT_INVALID, ElectionArgs, ExecutorKind, GithubArgs, LogFormat, RunArgs, ServeArgs,
    policy_config,
};

/// Runs the service until interrupted, or once with `--once`.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether `repo` names a remote repository rather than a directory.
fn is_url(repo: &str) -> bool {
    repo.contains("://") || repo.starts_with("git@")
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    // Handled from the start, so that stopping a service that is still starting is graceful
    // too; `--once` keeps the default (ctrl-c ends it at once).
    let shutdown = (!args.once).then(shutdown_signal).transpose()?;
    let remote = args.repo.clone().filter(|r| is_url(r));
    // The followed repository (a work tree, or the bare cache of a remote) and the data
    // directory: by default `.trainyard` at the work tree's root, or in the current
    // directory for a remote.
    let (work_tree, data_dir) = match &remote {
        None => {
            let start = PathBuf::from(args.repo.as_deref().unwrap_or("."));
            let (found, _) = discover(&start)?;
            let data_dir = args.store.data_dir_from(found.root())?;
            (Some(found), data_dir)
        }
        Some(_) => {
            let data_dir = args
                .store
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DATA_DIR));
            (None, data_dir)
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Steps run in their checkout but get paths under the data directory: make it absolute.
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot read {}", data_dir.display()))?;
    let repo = match (work_tree, &remote) {
        (Some(found), _) => found,
        (None, Some(url)) => Repo::cache_of(url, &data_dir.join("repo.git"))
            .with_context(|| format!("cannot clone {url}"))?,
        (None, None) => anyhow::bail!("no repository to follow"),
    };
    let database = args.store.database_in(&data_dir)?;
    let artifacts_at = args.store.artifacts_in(&data_dir)?;
    let store = Store::connect(&database)
        .await
        .with_context(|| format!("cannot open the database {database}"))?;
    let artifacts = ArtifactStore::open(&artifacts_at)?;
    // Created once in the database (or named by --instance), before anything is created
    // elsewhere under it.
    let installation = store
        .installation(args.instance.as_deref())
        .await
        .context("cannot settle this installation's identity")?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    // One client for everything that talks to the cluster (the executor, the election).
    let cluster = if args.executor == ExecutorKind::Kubernetes || args.election.leader_election {
        Some(cluster_client(&who_of(&installation)).await?)
    } else {
        None
    };
    let setting = |artifacts: ArtifactStore, cluster: Option<kube::Client>| Setting {
        store,
        artifacts,
        repo,
        data_dir: data_dir.clone(),
        cluster,
        installation: installation.clone(),
    };
    match args.executor {
        ExecutorKind::Local => {
            let executor = LocalExecutor::new(artifacts.clone(), data_dir.join("work"), events_tx);
            drive(
                args,
                executor,
                events,
                setting(artifacts, cluster),
                shutdown,
            )
            .await
        }
        ExecutorKind::Kubernetes => {
            let path = args
                .cluster_config
                .clone()
                .context("--executor kubernetes needs --cluster-config FILE")?;
            let settings = ClusterSettings::load(&path)?;
            let client = cluster
                .clone()
                .context("the Kubernetes executor needs a cluster client")?;
            let executor = KubernetesExecutor::new(
                client,
                &installation,
                settings,
                artifacts.clone(),
                artifacts_at.clone(),
                events_tx,
            )?;
            drive(
                args,
                executor,
                events,
                setting(artifacts, cluster),
                shutdown,
            )
            .await
        }
    }
}

/// What the service runs over, whichever executor runs its steps.
struct Setting {
    store: Store,
    artifacts: ArtifactStore,
    /// The followed repository (a work tree, or the bare cache of a remote).
    repo: Repo,
    data_dir: PathBuf,
    /// The cluster's client, when steps run there or replicas elect a leader.
    cluster: Option<kube::Client>,
    /// This installation's identity.
    installation: String,
}

/// A client for the cluster kube infers, as kubectl does: KUBECONFIG, ~/.kube/config, or
/// the service account of the pod the service runs in; its requests name `who` (the pod or
/// the installation) in their User-Agent.
async fn cluster_client(who: &str) -> Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("cannot find a Kubernetes cluster (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let agent = trainyard::user_agent(who);
    let value = http::HeaderValue::from_str(&agent)
        .with_context(|| format!("{agent:?} cannot be a User-Agent"))?;
    config.headers.push((http::header::USER_AGENT, value));
    // kube's own retry layer retries 429, 503 and 504 up to 15 times with delays growing to
    // minutes, beneath every call: one create could then take longer than an outage, and
    // the loop would wait on it instead of requeueing. Every call of the executor retries
    // itself, boundedly and honouring Retry-After; the watches and the election have their
    // own backoff.
    config.default_retry = false;
    kube::Client::try_from(config).context("cannot build a client for the Kubernetes cluster")
}

/// Who this replica is, for its User-Agent: the pod's name, or the installation.
fn who_of(installation: &str) -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| installation.to_owned())
}

/// `OWNER/NAME` split in two; `None` when it is not that shape.
fn owner_and_name(full_name: &str) -> Option<(&str, &str)> {
    full_name
        .split_once('/')
        .filter(|(owner, repo)| !owner.is_empty() && !repo.is_empty() && !repo.contains('/'))
}

/// GitHub when a repository is named, else Git notes in the followed repository.
fn choose_forge(args: &GithubArgs, repo: &Repo, installation: &str) -> Result<AnyForge> {
    let Some(full_name) = &args.github_repo else {
        return Ok(NotesForge::new(repo.clone()).into());
    };
    let (owner, repo) = owner_and_name(full_name)
        .with_context(|| format!("--github-repo {full_name:?} is not OWNER/NAME"))?;
    let auth = match (&args.github_app_id, &args.github_token_file) {
        (Some(app_id), _) => {
            let key_file = args
                .github_private_key_file
                .as_ref()
                .context("--github-app-id needs --github-private-key-file FILE")?;
            let private_key_pem = std::fs::read_to_string(key_file).with_context(|| {
                format!("cannot read the GitHub App key {}", key_file.display())
            })?;
            let installation_id = args
                .github_installation_id
                .context("--github-app-id needs --github-installation-id N")?;
            GithubAuth::App {
                app_id: *app_id,
                private_key_pem,
                installation_id,
            }
        }
        (None, Some(file)) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the GitHub token {}", file.display()))?;
            GithubAuth::Token(token.trim().to_owned())
        }
        (None, None) => match std::env::var("GITHUB_TOKEN") {
            Ok(token) if !token.trim().is_empty() => GithubAuth::Token(token.trim().to_owned()),
            _ => anyhow::bail!(
                "--github-repo needs a token (--github-token-file FILE or GITHUB_TOKEN) or a \
                 GitHub App (--github-app-id, --github-private-key-file, \
                 --github-installation-id)"
            ),
        },
    };
    if let GithubAuth::Token(token) = &auth
        && token.is_empty()
    {
        anyhow::bail!("the GitHub token is empty");
    }
    let mut config = GithubConfig::new(owner, repo, auth);
    config.api_url = args.github_api_url.clone();
    config.public_url = args.public_url.clone();
    config.login = args.github_login.clone();
    config.user_agent = trainyard::user_agent(&who_of(installation));
    let forge = GithubForge::new(config).context("cannot set up reporting to GitHub")?;
    tracing::info!(repository = %forge.repository(), "reporting to GitHub");
    Ok(forge.into())
}

/// Runs the service with `executor` until `shutdown` completes, or once without one.
async fn drive<E: Executor>(
    args: ServeArgs,
    executor: E,
    events: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
    setting: Setting,
    shutdown: Option<impl std::future::Future<Output = ()> + Send + 'static>,
) -> Result<ExitCode> {
    let Setting {
        store,
        artifacts,
        repo,
        data_dir,
        cluster,
        installation,
    } = setting;
    let forge = choose_forge(&args.github, &repo, &installation)?;
    let config = Config {
        branch: args.branch.clone(),
        subdir: args.path.trim_matches('/').to_owned(),
        data_dir: data_dir.clone(),
        instance: args.instance.clone(),
        installation,
        max_parallel_steps: args.max_parallel_steps.max(1),
        policy: policy_config(&args.common)?,
        poll: Duration::from_secs(args.poll_seconds.max(1)),
        submit_deadline: Duration::from_secs(args.submit_deadline_seconds.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
    };
    let remote = repo.remote().map(str::to_owned);
    let git_dir = repo.git_dir();
    let webhook_secret = webhook_secret(
        args.webhook_secret_file.as_deref(),
        std::env::var_os(WEBHOOK_SECRET_VAR),
    )?;
    if webhook_secret.is_some() && args.listen.is_none() && !args.once {
        anyhow::bail!("webhooks are served over HTTP: give --listen ADDR too");
    }
    let webhook_repo = match (
        &webhook_secret,
        &args.webhook_repo,
        &args.github.github_repo,
    ) {
        (None, _, _) => None,
        (Some(_), Some(name), _) | (Some(_), None, Some(name)) => Some(
            owner_and_name(name)
                .map(|_| name.clone())
                .with_context(|| format!("--webhook-repo {name:?} is not OWNER/NAME"))?,
        ),
        (Some(_), None, None) => anyhow::bail!(
            "webhooks need the repository they are for, so that deliveries for others are \
             refused: give --webhook-repo OWNER/NAME (or --github-repo)"
        ),
    };
    let mut service = Runtime::new(Parts {
        config,
        repo,
        store: store.clone(),
        executor,
        job_events: events,
        forge,
        artifacts,
    })
    .await?;
    if let Some(shutdown) = shutdown {
        let (stopping, stop) = tokio::sync::watch::channel(false);
        // Health first: a replica waiting for the API server or the Lease is alive.
        let http = match args.listen {
            Some(address) => {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address}"))?;
                let mut state = AppState::new(service.health(), store, service.metrics());
                if let (Some(secret), Some(repository)) = (webhook_secret, webhook_repo) {
                    state = state.with_webhooks(Webhooks::new(secret, repository, service.wake()));
                }
                tracing::info!(
                    address = %listener.local_addr()?,
                    webhooks = state.webhooks.is_some(),
                    "serving /healthz, /readyz and /metrics"
                );
                let routes = server::router(state);
                let mut stop = stop.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                };
                Some(tokio::spawn(server::serve(listener, routes, stopped)))
            }
            None => None,
        };
        let leadership = match (args.election.leader_election, cluster) {
            (true, Some(client)) => Some(join_election(client, &args.election).await?),
            _ => None,
        };
        // Without file events (some network file systems), polling alone follows the branch;
        // a remote repository is always polled.
        let watch = match remote {
            Some(_) => None,
            None => match BranchWatcher::new(&git_dir) {
                Ok(watch) => Some(watch),
                Err(error) => {
                    tracing::warn!(%error, "watching the repository failed; polling only");
                    None
                }
            },
        };
        service
            .serve(
                watch,
                leadership.as_ref().map(Leadership::subscribe),
                shutdown,
            )
            .await;
        // The loop has stopped acting: only now may another replica take over.
        if let Some(leadership) = leadership {
            leadership.step_down().await;
        }
        let _ = stopping.send(true);
        if let Some(http) = http {
            http.await.context("the HTTP server failed")??;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = service.run_once().await?;
    let short = &outcome.commit[..outcome.commit.len().min(12)];
    if outcome.runs.is_empty() {
        println!("{short}: applied; no run to start.");
    }
    for (id, state) in &outcome.runs {
        println!("{short}: run {id} {state}");
    }
    let git = match &remote {
        Some(_) => format!("git --git-dir {} ", git_dir.display()),
        None => "git ".to_owned(),
    };
    println!(
        "See: {git}log --notes=trainyard -1 {short}    trainyard runs    trainyard models    (state in {})",
        data_dir.display()
    );
    let all_succeeded = outcome
        .runs
        .iter()
        .all(|(_, state)| *state == RunState::Succeeded);
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

/// Environment variable holding the webhook secret itself (as a Kubernetes Secret is often
/// handed to a container), instead of a file.
const WEBHOOK_SECRET_VAR: &str = "TRAINYARD_WEBHOOK_SECRET";

/// The webhook secret from `--webhook-secret-file` or the environment's value, if any; a
/// file's trailing line break (as editors and `echo` leave) is not part of it.
fn webhook_secret(file: Option<&Path>, env: Option<std::ffi::OsString>) -> Result<Option<Vec<u8>>> {
    let from_env = env.filter(|value| !value.is_empty());
    let secret = match (file, from_env) {
        (Some(_), Some(_)) => anyhow::bail!(
            "give the webhook secret once: --webhook-secret-file or {WEBHOOK_SECRET_VAR}, not both"
        ),
        (Some(path), None) => {
            let mut secret = std::fs::read(path).with_context(|| {
                format!("cannot read the webhook secret from {}", path.display())
            })?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            secret
        }
        (None, Some(value)) => value.into_encoded_bytes(),
        (None, None) => return Ok(None),
    };
    if secret.is_empty() {
        anyhow::bail!("the webhook secret is empty: anyone could sign deliveries");
    }
    Ok(Some(secret))
}

/// A future that completes on SIGINT (ctrl-c) or SIGTERM (how Kubernetes stops a pod).
/// The handlers are installed at once: a signal that comes before the future is first
/// polled (while the service starts) still stops it gracefully instead of killing it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("interrupted: stopping"),
        }
    })
}

/// Joins the election on the Lease through `client`.
async fn join_election(client: kube::Client, args: &ElectionArgs) -> Result<Leadership> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = match &args.leader_identity {
        Some(identity) => identity.clone(),
        None => format!("{}-{}", hostname()?, std::process::id()),
    };
    tracing::info!(lease = %args.lease_name, %namespace, %identity, "joining leader election");
    let election = Election {
        lease: args.lease_name.clone(),
        namespace,
        identity,
        duration: Duration::from_secs(args.lease_duration_seconds),
        grace: Duration::from_secs(args.lease_grace_seconds),
    };
    Ok(Leadership::join(client, election).await?)
}

/// This machine's host name (a pod's name inside Kubernetes).
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the host name")?;
    Ok(name.trim().to_owned())
}

/// `trainyard run`: writes a pending manual run to the store, pinned to the pipeline's
/// current version and the followed commit; the service drives it like any other run.
pub fn queue(args: RunArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let database = args.store.database()?;
        let store = Store::connect(&database).await.with_context(|| format!("cannot open the database {database}"))?;
        let Some(row) = store.current_pipeline(&args.pipeline).await? else {
            eprintln!("trainyard: pipeline {:?} is not declared on the followed branch (the service applies commits: trainyard serve)", args.pipeline);
            return Ok(ExitCode::from(EXIT_INVALID));
        };
        let pipeline = row.definition.as_ref();
        let mut given = BTreeMap::new();
        for param in &args.params {
            let Some((name, text)) = param.split_once('=') else {
                anyhow::bail!("--param {param:?} is not NAME=VALUE");
            };
            given.insert(name.to_owned(), text.to_owned());
        }
        let given = typed_params(pipeline, &given);
        let params = match resolve_params(pipeline, &given) {
            Ok(params) => params,
            Err(problems) => {
                for problem in problems {
                    let hint = problem.hint.map(|h| format!(" ({h})")).unwrap_or_default();
                    eprintln!("trainyard: {}{hint}", problem.message);
                }
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        };
        let commit = store.cursor(FOLLOWED_CURSOR).await?.context("no commit has been applied yet")?;
        let run = NewRun {
            no_cache: args.no_cache,
            ..NewRun::of(pipeline, &row.version, &commit, Trigger::Manual, params)
        };
        let id = store.create_run(&run).await?;
        println!("run {id} of {} queued; the service starts it (trainyard serve, or serve --once)", row.name);
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_secret_file_loses_its_trailing_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, " s3cret \r\n").unwrap();
        assert_eq!(
            webhook_secret(Some(&path), None).unwrap(),
            Some(b" s3cret ".to_vec())
        );
    }

    #[test]
    fn a_webhook_secret_comes_from_the_environment_or_nowhere() {
        assert_eq!(
            webhook_secret(None, Some("from-env".into())).unwrap(),
            Some(b"from-env".to_vec())
        );
        assert_eq!(webhook_secret(None, None).unwrap(), None);
        assert_eq!(webhook_secret(None, Some("".into())).unwrap(), None);
    }

    #[test]
    fn an_empty_missing_or_doubly_given_webhook_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = webhook_secret(Some(&empty), None).unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        let missing = dir.path().join("missing");
        let error = webhook_secret(Some(&missing), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read the webhook secret"), "{error}");
        std::fs::write(&empty, "x").unwrap();
        let error = webhook_secret(Some(&empty), Some("y".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not both"), "{error}");
    }
}
