//! Support for the end-to-end tests of the `trainyard` binary: finding (and building) it and
//! the static `trainyard-launch`, running it with a time limit, reading its JSON output,
//! creating the directories and Git repositories it reads, and running `trainyard serve` as a
//! long-lived child that a test can stop gracefully or kill outright while it reads the
//! service's store.
//!
//! Every fallible helper returns [`Result`], so tests can return [`TestResult`] and use `?`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use trainyard::store::{RunRow, Store};

pub mod cluster;

/// Any error a helper can return.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The result of a helper.
pub type Result<T, E = Error> = std::result::Result<T, E>;
/// What a test returns, so that it can use `?`.
pub type TestResult = Result<()>;

/// An image reference pinned by digest, as the platform policy requires.
pub const PINNED_IMAGE: &str = "docker.io/library/python@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea";

/// How long one run of the binary may take before it is killed and the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The root of the Cargo workspace (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sample repository shipped with the project.
pub fn examples_repo() -> PathBuf {
    workspace_root().join("examples-repo")
}

/// The `trainyard` binary, built on first use.
///
/// Cargo only sets `CARGO_BIN_EXE_<name>` for integration tests of the package that owns
/// the binary, and this package is a different one; guessing `target/debug/trainyard` would
/// break with `CARGO_TARGET_DIR`, a configured `build.target-dir` or a stale binary. So the
/// first call runs `cargo build -p trainyard --bin trainyard` (with the `cargo` that runs the
/// tests, from the `CARGO` variable) and takes the executable's path from Cargo's JSON
/// messages: the binary is current and its path is the one Cargo really wrote. Later calls,
/// from any thread, reuse the result. Each test binary (one per file under `tests/`) builds
/// once; when nothing changed that takes a fraction of a second, but it may wait on Cargo's
/// lock of the target directory while another build holds it.
///
/// Setting `TRAINYARD_BIN` to the path of an already built binary skips the build (to test
/// a release build, for instance).
pub fn trainyard_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("TRAINYARD_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => build_binary("trainyard", "trainyard", None, None).map_err(|e| e.to_string()),
    })
    .as_deref()
    .map_err(|e| Error::from(e.clone()))
}

/// The target the in-pod launcher is built for: statically linked, so it runs in any image.
pub const LAUNCHER_TARGET: &str = "x86_64-unknown-linux-musl";

/// The `trainyard-launch` binary that step pods run, built on first use as the image builds
/// it: static, for [`LAUNCHER_TARGET`], in the target directory of the test run (see
/// [`trainyard_bin`] for why Cargo is asked). The tests that play kubelet run this binary,
/// so they exercise what the image ships.
///
/// Setting `TRAINYARD_LAUNCH_BIN` to the path of an already built launcher skips the build.
pub fn launcher_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("TRAINYARD_LAUNCH_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => build_binary(
            "trainyard-launch",
            "trainyard-launch",
            Some(LAUNCHER_TARGET),
            Some(LAUNCHER_PROFILE),
        )
        .map_err(|e| e.to_string()),
    })
    .as_deref()
    .map_err(|e| Error::from(e.clone()))
}

/// The Cargo profile tests build the launcher with: unoptimized like `dev`, but without
/// debug info. Every step pod of a test copies the launcher, so its size is paid per pod
/// (about 100 MB with debug info; a suite of 150 pods would copy 15 GB).
pub const LAUNCHER_PROFILE: &str = "launcher-test";

/// Runs `cargo build` for binary `bin` of `package` (for `target`, or the host; with
/// `profile`, or `dev`) and returns the executable Cargo reports.
fn build_binary(
    package: &str,
    bin: &str,
    target: Option<&str>,
    profile: Option<&str>,
) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let mut command = Command::new(&cargo);
    command
        .current_dir(&root)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args([
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json-render-diagnostics",
        ]);
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    if let Some(profile) = profile {
        command.args(["--profile", profile]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        let hint = match target {
            Some(target) => format!(
                " (building for {target} needs `rustup target add {target}` and, for ring's C \
                 code, `apt-get install musl-tools`)"
            ),
            None => String::new(),
        };
        return Err(format!(
            "building {bin} failed ({}){hint}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo build reported no {bin} executable").into())
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// The exit status (`None` when a signal ended the process).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall-clock time the run took.
    pub elapsed: Duration,
}

impl Run {
    /// Standard output parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .map_err(|e| format!("stdout is not JSON ({e}):\n{}", self.stdout).into())
    }

    /// The `diagnostics` of JSON output (of `validate` or `plan`).
    pub fn diagnostics(&self) -> Result<Vec<Diagnostic>> {
        let json = self.json()?;
        let list = json["diagnostics"]
            .as_array()
            .ok_or_else(|| format!("no diagnostics array in:\n{}", self.stdout))?;
        list.iter().map(Diagnostic::from_json).collect()
    }

    /// The last line of standard output (the summary of text output), without its newline.
    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// One diagnostic of JSON output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `error` or `warning`.
    pub severity: String,
    /// Path relative to the validated directory.
    pub file: String,
    /// 1-based line, 0 for the whole file.
    pub line: u64,
    /// 1-based column in characters, 0 for the whole file.
    pub column: u64,
    /// The check's stable identifier.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is a hint.
    pub hint: Option<String>,
}

impl Diagnostic {
    fn from_json(value: &Value) -> Result<Diagnostic> {
        let text = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("diagnostic without {key}: {value}"))
        };
        let number = |key: &str| {
            value[key]
                .as_u64()
                .ok_or_else(|| format!("diagnostic without {key}: {value}"))
        };
        Ok(Diagnostic {
            severity: text("severity")?,
            file: text("file")?,
            line: number("line")?,
            column: number("column")?,
            code: text("code")?,
            message: text("message")?,
            hint: value["hint"].as_str().map(str::to_owned),
        })
    }

    /// `file:line:col code`, the part of a diagnostic most assertions compare.
    pub fn place(&self) -> String {
        format!("{}:{}:{} {}", self.file, self.line, self.column, self.code)
    }
}

/// Runs `trainyard` with `args` in `dir` and waits for it, at most [`RUN_LIMIT`].
///
/// The configuration variables are cleared so that the caller's environment neither changes
/// the verdicts nor points the binary at another store.
pub fn trainyard<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Result<Run> {
    let mut command = Command::new(trainyard_bin()?);
    command
        .current_dir(dir)
        .args(args)
        .env_remove("TRAINYARD_POLICY_CONFIG")
        .env_remove("TRAINYARD_DATABASE_URL")
        .env_remove("TRAINYARD_ARTIFACTS")
        .env_remove("TRAINYARD_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_limit(command, RUN_LIMIT)
}

/// Runs `command`, killing it when it takes longer than `limit`.
fn run_with_limit(mut command: Command, limit: Duration) -> Result<Run> {
    let started = Instant::now();
    let mut child = command.spawn()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                // A read error only shortens the captured output.
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            return Err(format!("trainyard did not finish within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let join = |h: std::thread::JoinHandle<String>| {
        h.join().map_err(|_| Error::from("output reader panicked"))
    };
    Ok(Run {
        code: status.code(),
        stdout: join(stdout)?,
        stderr: join(stderr)?,
        elapsed,
    })
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("trainyard-e2e-")
        .tempdir()?)
}

/// Writes `content` to `path` under `root`, creating parent directories.
pub fn write(root: &Path, path: &str, content: impl AsRef<[u8]>) -> Result<()> {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&full, content).map_err(|e| format!("cannot write {}: {e}", full.display()))?;
    Ok(())
}

/// `text` with the one occurrence of `from` replaced by `to`; an error when `from` does not
/// occur exactly once, so that fixtures fail loudly when the text they adjust changes.
pub fn replaced(text: &str, from: &str, to: &str) -> Result<String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!("{from:?} occurs {n} times, not once, in:\n{text}").into()),
    }
}

/// The 1-based line and column (in characters) where the first occurrence of `needle`
/// starts in `text`, as diagnostics count them.
pub fn position(text: &str, needle: &str) -> Result<(u64, u64)> {
    let offset = text
        .find(needle)
        .ok_or_else(|| format!("{needle:?} does not occur in:\n{text}"))?;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    Ok((u64::try_from(line)?, u64::try_from(column)?))
}

/// Replaces the one occurrence of `from` in the file at `path` under `root` with `to` (see
/// [`replaced`]).
pub fn edit(root: &Path, path: &str, from: &str, to: &str) -> Result<()> {
    let full = root.join(path);
    let text = std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    let text = replaced(&text, from, to).map_err(|e| format!("{path}: {e}"))?;
    write(root, path, text)
}

/// A temporary directory holding `files` (path, content).
pub fn work_tree<C: AsRef<[u8]>>(files: &[(&str, C)]) -> Result<TempDir> {
    let dir = temp_dir()?;
    for (path, content) in files {
        write(dir.path(), path, content)?;
    }
    Ok(dir)
}

/// Copies the directory `from` into `to` (which may exist), skipping `.git`. Symlinks are
/// copied as the files they point at.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A temporary copy of the sample repository (not a Git repository).
pub fn examples_copy() -> Result<TempDir> {
    let dir = temp_dir()?;
    copy_dir(&examples_repo(), dir.path())?;
    Ok(dir)
}

/// A Git repository in a temporary directory, with helpers to write files and commit them.
pub struct Repo {
    dir: TempDir,
    repo: git2::Repository,
}

impl Repo {
    /// An empty repository (no commits).
    pub fn new() -> Result<Repo> {
        let dir = temp_dir()?;
        let repo = git2::Repository::init(dir.path())?;
        Ok(Repo { dir, repo })
    }

    /// A repository whose first commit holds `files` (path, content).
    pub fn with_files<C: AsRef<[u8]>>(files: &[(&str, C)]) -> Result<Repo> {
        let repo = Repo::new()?;
        for (path, content) in files {
            repo.write(path, content)?;
        }
        repo.commit("first")?;
        Ok(repo)
    }

    /// A repository whose working tree is a copy of the sample repository, not committed
    /// yet (so that a test can adjust it first).
    pub fn from_examples() -> Result<Repo> {
        let repo = Repo::new()?;
        copy_dir(&examples_repo(), repo.path())?;
        Ok(repo)
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of the working tree.
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> Result<()> {
        write(self.path(), path, content)
    }

    /// Replaces the one occurrence of `from` in a file of the working tree (see [`edit`]).
    pub fn edit(&self, path: &str, from: &str, to: &str) -> Result<()> {
        edit(self.path(), path, from, to)
    }

    /// Deletes a file of the working tree.
    pub fn remove(&self, path: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.path().join(path))?)
    }

    /// Stages every change of the working tree (new, modified and deleted files) and
    /// commits it on `HEAD`; returns the commit id.
    pub fn commit(&self, message: &str) -> Result<git2::Oid> {
        let mut index = self.repo.index()?;
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"], None)?;
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let signature = git2::Signature::now("Trainyard Tests", "tests@example.com")?;
        let parent = match self.repo.head() {
            Ok(head) => Some(head.peel_to_commit()?),
            Err(e) if e.code() == git2::ErrorCode::UnbornBranch => None,
            Err(e) => return Err(e.into()),
        };
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        Ok(self.repo.commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )?)
    }
}

/// How long a service may take to stop after SIGINT before the test fails.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The state directory of `trainyard serve` (database, artifacts, checkouts, and the
/// service's output), removed when dropped.
///
/// Dropping it prints what every service started on it wrote: the test harness shows a
/// test's output only when the test fails, which is when that output explains the failure.
pub struct DataDir {
    dir: TempDir,
    /// A PostgreSQL schema, when the store is PostgreSQL rather than SQLite.
    postgres: Option<String>,
    /// Whether the schema is this directory's own, dropped with it.
    owns_schema: bool,
}

/// The PostgreSQL server the tests use (trust authentication, database `test`).
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

impl DataDir {
    /// A fresh, empty data directory; the store is SQLite inside it.
    pub fn new() -> Result<DataDir> {
        Ok(DataDir {
            dir: temp_dir()?,
            postgres: None,
            owns_schema: false,
        })
    }

    /// A fresh, empty data directory whose store is a new schema of the PostgreSQL test
    /// database, dropped when the directory is.
    pub async fn postgres() -> Result<DataDir> {
        use sqlx::Connection as _;
        let schema = format!(
            "e2e_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let mut connection = sqlx::PgConnection::connect(POSTGRES).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut connection)
            .await?;
        Ok(DataDir {
            dir: temp_dir()?,
            postgres: Some(schema),
            owns_schema: true,
        })
    }

    /// Another fresh data directory on the same database, as a second replica of a service
    /// has: its own files and output, the same store. The schema stays this one's.
    pub fn sharing_database(&self) -> Result<DataDir> {
        Ok(DataDir {
            dir: temp_dir()?,
            postgres: self.postgres.clone(),
            owns_schema: false,
        })
    }

    /// The database URL the services of this directory use.
    pub fn database(&self) -> String {
        match &self.postgres {
            Some(schema) => format!("{POSTGRES}?options=-c%20search_path%3D{schema}"),
            None => format!("sqlite://{}/trainyard.db", self.path().display()),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The store of the services started on this directory.
    ///
    /// Opening it creates the database and its schema when no service has yet, so a test
    /// may open it first and read it while services start and die: a service then finds the
    /// schema in place instead of racing the test to create it.
    pub async fn store(&self) -> Result<Store> {
        Ok(Store::connect(&self.database()).await?)
    }

    /// Standard output and standard error of every service started on this directory, in
    /// the order they were started.
    pub fn service_output(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.path().join(name))
                .unwrap_or_else(|e| format!("({name} unreadable: {e})\n"))
        };
        format!(
            "--- service stdout\n{}--- service stderr\n{}",
            read(SERVICE_STDOUT),
            read(SERVICE_STDERR)
        )
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        eprintln!(
            "data directory {}\n{}",
            self.path().display(),
            self.service_output()
        );
        if let Some(schema) = self.postgres.take().filter(|_| self.owns_schema) {
            // Drop runs inside the test's runtime, which cannot be blocked on: a thread of
            // its own removes the schema. A failure only leaves a schema behind.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    use sqlx::Connection as _;
                    let mut connection = sqlx::PgConnection::connect(POSTGRES).await.ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                        .execute(&mut connection)
                        .await
                        .ok()
                })
            });
            let _ = dropped.join();
        }
    }
}

/// File of the data directory that collects the services' standard output.
const SERVICE_STDOUT: &str = "serve.stdout";
/// File of the data directory that collects the services' standard error (their log).
const SERVICE_STDERR: &str = "serve.stderr";

/// A running `trainyard serve --repo R --data-dir D`. Its output is appended to files of the
/// data directory (see [`DataDir::service_output`]). Dropping it kills it, so a failing
/// test leaves no service behind.
pub struct Service {
    child: Child,
}

impl Service {
    /// Starts the service following the repository at `repo` with its state in `data`, with
    /// `args` added to the command line (such as `--poll-seconds 1`).
    ///
    /// The configuration variables are cleared so that the caller's environment does not
    /// point the service at other state or policies.
    pub fn start(repo: &Path, data: &DataDir, args: &[&str]) -> Result<Service> {
        Service::start_with_env(repo, data, args, &[])
    }

    /// [`Service::start`] with variables added to the service's environment (such as
    /// `KUBECONFIG`, or `POD_NAME` as the downward API sets it).
    pub fn start_with_env(
        repo: &Path,
        data: &DataDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Service> {
        Service::start_in(repo, repo.as_os_str(), data, args, env)
    }

    /// Starts the service following the remote repository at `url` (it keeps a bare cache
    /// in the data directory), run from directory `cwd`.
    pub fn start_following(
        url: &str,
        cwd: &Path,
        data: &DataDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Service> {
        Service::start_in(cwd, std::ffi::OsStr::new(url), data, args, env)
    }

    fn start_in(
        cwd: &Path,
        repo: &std::ffi::OsStr,
        data: &DataDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Service> {
        let append = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data.path().join(name))
        };
        let stdout = append(SERVICE_STDOUT)?;
        let mut stderr = append(SERVICE_STDERR)?;
        writeln!(
            stderr,
            "=== trainyard serve {} started at {}",
            args.join(" "),
            chrono::Utc::now().to_rfc3339()
        )?;
        let child = Command::new(trainyard_bin()?)
            .current_dir(cwd)
            .arg("serve")
            .arg("--repo")
            .arg(repo)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--database")
            .arg(data.database())
            .args(args)
            .env_remove("TRAINYARD_POLICY_CONFIG")
            .env_remove("TRAINYARD_DATA_DIR")
            .env_remove("TRAINYARD_DATABASE_URL")
            .env_remove("TRAINYARD_ARTIFACTS")
            .env("RUST_LOG", "info")
            // The log goes to a file that people read when a test fails.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        Ok(Service { child })
    }

    /// Kills the service with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill_hard(mut self) -> Result<()> {
        // On Unix `Child::kill` sends SIGKILL: no handler runs and nothing is flushed.
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Interrupts the service with SIGINT, as ctrl-c does, and waits for it to exit, at most
    /// [`STOP_LIMIT`]; returns its exit code (`None` when a signal ended it).
    pub fn stop(mut self) -> Result<Option<i32>> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill only sends a signal. The child has not been waited for, so its pid
        // still names it and cannot have been reused by another process.
        if unsafe { libc::kill(pid, libc::SIGINT) } == -1 {
            return Err(std::io::Error::last_os_error().into());
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if started.elapsed() > STOP_LIMIT {
                return Err(
                    format!("the service did not stop within {STOP_LIMIT:?} of SIGINT").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // After kill_hard or stop the child is reaped and these do nothing; otherwise a test
        // failed while the service ran, and that failure is the one worth reporting.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The identity the service created for the installation whose SQLite store is `database`
/// (a fresh database makes up a new one: its Jobs and output keys carry it).
pub fn installation_of(database: &Path) -> Result<String> {
    let url = format!("sqlite://{}", database.display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = Store::connect(&url).await?;
            let id = store.installation(None).await?;
            store.close().await;
            Ok(id)
        })
}

/// Polls `check` every 50 ms until it answers true; an error naming `what` if it has not
/// within `limit`, or as soon as it fails.
pub async fn wait_for(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a run of the suite's short pipelines may take on a loaded machine.
pub const RUN_FINISH_LIMIT: Duration = Duration::from_secs(60);

/// `trainyard ARGS --data-dir D --database URL` in the repository, as a person runs it next
/// to the service started on `data`.
pub fn cli(repo: &Repo, data: &DataDir, args: &[&str]) -> Result<Run> {
    let data_dir = data.path().to_string_lossy().into_owned();
    let database = data.database();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--data-dir",
        data_dir.as_str(),
        "--database",
        database.as_str(),
    ]);
    trainyard(repo.path(), &all)
}

/// The newest run of `pipeline`, once there is one.
pub async fn newest_run(store: &Store, pipeline: &str) -> Result<i64> {
    let mut id = None;
    wait_for(RUN_FINISH_LIMIT, "a run was created", async || {
        id = match store.list_runs(Some(pipeline), 1).await?.pop() {
            Some(run) => Some(run?.id),
            None => None,
        };
        Ok(id.is_some())
    })
    .await?;
    id.ok_or_else(|| "no run".into())
}

/// Waits until run `id` has finished; the run as it ended. A timeout shows what the
/// services on `data` said.
pub async fn finished(store: &Store, id: i64, data: &DataDir) -> Result<RunRow> {
    let mut found = None;
    wait_for(
        RUN_FINISH_LIMIT,
        &format!("run {id} finished"),
        async || {
            found = store.run(id).await?;
            Ok(found.as_ref().is_some_and(|r| r.state.is_finished()))
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", data.service_output()))?;
    found.ok_or_else(|| "no run".into())
}

/// Whether process `pid` exists (as anything but a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a service's `--listen`.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` over plain HTTP/1.1 at 127.0.0.1:`port`; the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
