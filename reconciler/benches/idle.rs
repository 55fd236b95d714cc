//! Benchmark of an idle service: the release binary with nothing due, in local mode on the
//! example repository (after its commit's run has finished) and in cluster mode
//! (`--executor kubernetes`, PostgreSQL, the stand-in API server) with schedules due once a
//! year. Measures the share of a core it uses, its reconcile passes per minute (from its own
//! `/metrics`) and, in cluster mode, the API requests it makes. Run with
//! `cargo bench -p trainyard --bench idle`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use git2::Repository;
use trainyard_testkit::kube::ApiServer;

mod support;
use support::{POSTGRES, Result, ServiceProcess, commit, create_schema, drop_schema, path_text};

/// How long the idle service is watched.
const WATCHED: Duration = Duration::from_secs(60);
/// How long the service may take to apply the commit and finish what it starts.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str =
    "reg.example.com/ml@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

/// What one mode measured over [`WATCHED`].
struct Idle {
    mode: &'static str,
    cpu_seconds: f64,
    passes: u64,
    api_requests: Option<usize>,
    peak_rss_kib: u64,
}

/// `GET path` on 127.0.0.1:`port`, the body of a 200.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{path}: {head}").into());
    }
    Ok(body.to_owned())
}

/// The sum of the service's `trainyard_reconcile_passes_total` samples.
fn passes(port: u16) -> Result<u64> {
    let mut total = 0;
    for line in http_get(port, "/metrics")?.lines() {
        if let Some(rest) = line.strip_prefix("trainyard_reconcile_passes_total") {
            total += rest.rsplit(' ').next().ok_or("no value")?.parse::<u64>()?;
        }
    }
    Ok(total)
}

/// Waits until a few seconds pass without a pass (the commit applied, its run finished and
/// reported), then watches the service for [`WATCHED`].
fn watch(
    mode: &'static str,
    service: &ServiceProcess,
    port: u16,
    api: Option<&ApiServer>,
) -> Result<Idle> {
    let started = Instant::now();
    let mut last = None;
    loop {
        if started.elapsed() > SETTLE_LIMIT {
            return Err(format!("{mode}: the service never settled").into());
        }
        std::thread::sleep(Duration::from_secs(3));
        let now = passes(port).ok();
        if now.is_some() && now == last && now > Some(0) {
            break;
        }
        last = now;
    }
    if let Some(api) = api {
        api.clear_requests();
    }
    let (cpu_before, passes_before) = (service.cpu_seconds()?, passes(port)?);
    std::thread::sleep(WATCHED);
    Ok(Idle {
        mode,
        cpu_seconds: service.cpu_seconds()? - cpu_before,
        passes: passes(port)? - passes_before,
        api_requests: api.map(|api| api.requests().len()),
        peak_rss_kib: service.peak_rss_kib()?,
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn spawn(args: &[&str], log: &Path, env: &[(&str, &Path)]) -> Result<ServiceProcess> {
    let log = std::fs::File::create(log)?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainyard"));
    command
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("TRAINYARD_POLICY_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    Ok(ServiceProcess(command.spawn()?))
}

fn local() -> Result<Idle> {
    let dir = tempfile::tempdir()?;
    let repo_dir = dir.path().join("repo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples-repo"),
        &repo_dir,
    )?;
    commit(&Repository::init(&repo_dir)?)?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let service = spawn(
        &[
            "--repo",
            path_text(&repo_dir)?,
            "--data-dir",
            path_text(&data)?,
            "--listen",
            &listen,
        ],
        &dir.path().join("service.log"),
        &[],
    )?;
    let idle = watch("local, example repository", &service, port, None)?;
    service.stop()?;
    Ok(idle)
}

async fn cluster() -> Result<Idle> {
    let dir = tempfile::tempdir()?;
    let api = ApiServer::start().await?;
    api.create_namespace("trainyard")?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let settings = dir.path().join("cluster.yaml");
    std::fs::write(
        &settings,
        "namespace: trainyard\nimage: registry.example.com/trainyard:bench\n",
    )?;
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    std::fs::write(
        repo_dir.join("p.yaml"),
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: p, owner: team-a}}\n\
             spec:\n  image: {IMAGE}\n  triggers: {{on_change: false}}\n  \
             steps: [{{name: s, run: [\"true\"]}}]\n"
        ),
    )?;
    let mut schedules = String::new();
    for i in 0..3 {
        schedules.push_str(&format!(
            "---\napiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: yearly-{i}}}\n\
             spec: {{pipeline: p, cron: '0 0 1 1 *'}}\n"
        ));
    }
    std::fs::write(repo_dir.join("schedules.yaml"), schedules)?;
    commit(&Repository::init(&repo_dir)?)?;
    let schema = create_schema().await?;
    let database = format!("{POSTGRES}?options=-c%20search_path%3D{schema}");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let outcome = (|| {
        let service = spawn(
            &[
                "--repo",
                path_text(&repo_dir)?,
                "--data-dir",
                path_text(&dir.path().join("data"))?,
                "--database",
                &database,
                "--artifacts",
                path_text(dir.path())?,
                "--executor",
                "kubernetes",
                "--cluster-config",
                path_text(&settings)?,
                "--listen",
                &listen,
            ],
            &dir.path().join("service.log"),
            &[("KUBECONFIG", &kubeconfig)],
        )?;
        let idle = watch(
            "cluster, PostgreSQL, 3 schedules",
            &service,
            port,
            Some(&api),
        )?;
        service.stop()?;
        Ok(idle)
    })();
    drop_schema(&schema).await?;
    outcome
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let measured = [local()?, runtime.block_on(cluster())?];
    println!(
        "\n| mode | CPU over {} s | share of a core | passes per minute | API requests per minute | peak RSS |",
        WATCHED.as_secs()
    );
    println!("|---|---|---|---|---|---|");
    let minutes = WATCHED.as_secs_f64() / 60.0;
    for m in measured {
        println!(
            "| {} | {:.2} s | {:.2} % | {:.1} | {} | {} MiB |",
            m.mode,
            m.cpu_seconds,
            100.0 * m.cpu_seconds / WATCHED.as_secs_f64(),
            m.passes as f64 / minutes,
            m.api_requests
                .map_or("—".to_owned(), |n| format!("{:.1}", n as f64 / minutes)),
            m.peak_rss_kib / 1024
        );
    }
    Ok(())
}
