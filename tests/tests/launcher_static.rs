//! The launcher runs in any image: `trainyard-launch`, built for musl as the image builds it,
//! is a static executable, and it runs a real step inside a root filesystem that holds
//! nothing but a static busybox and the launcher itself (no libc, no `/dev`, no `/etc`, no
//! CA bundle), against the real S3 server the other tests use, under
//! `unshare --user --map-root-user --mount --fork chroot`.
//!
//! Needs `unshare` and `chroot` (util-linux, coreutils), `/bin/busybox` from Debian's
//! `busybox-static`, the `x86_64-unknown-linux-musl` Rust target and `musl-gcc`
//! (`musl-tools`); a missing one fails the test with what to install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use trainyard::artifacts::{self, ArtifactStore};
use trainyard::execute::kubernetes::manifest::job_dir;
use trainyard::execute::launcher::{self, SourceMarker};
use trainyard::execute::{ProducedArtifact, StepInput, StepJob, StepOutput, StepSource, job_name};
use trainyard_testkit::s3::S3Server;
use trainyard_tests::{RUN_LIMIT, Result, TestResult, launcher_bin};

/// Where Debian's `busybox-static` installs its static busybox.
const BUSYBOX: &str = "/bin/busybox";

/// ELF program header type of the dynamic loader's path: present in every executable that
/// needs a dynamic loader (and so a libc in the root), absent in a static one.
const PT_INTERP: u32 = 3;

/// Whether the ELF executable `bytes` asks for a dynamic loader (has a PT_INTERP program
/// header); an error when it is no 64-bit little-endian ELF file.
fn needs_loader(bytes: &[u8]) -> Result<bool> {
    let field = |at: usize, len: usize| -> Result<&[u8]> {
        bytes
            .get(at..at + len)
            .ok_or_else(|| format!("the ELF file ends before byte {}", at + len).into())
    };
    if field(0, 4)? != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    // EI_CLASS 2: 64-bit; EI_DATA 1: little-endian (x86-64).
    if field(4, 2)? != [2, 1] {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| -> Result<u16> { Ok(u16::from_le_bytes(field(at, 2)?.try_into()?)) };
    let u64_at = |at: usize| -> Result<u64> { Ok(u64::from_le_bytes(field(at, 8)?.try_into()?)) };
    let program_headers = usize::try_from(u64_at(0x20)?)?;
    let entry_size = usize::from(u16_at(0x36)?);
    let entries = usize::from(u16_at(0x38)?);
    for index in 0..entries {
        let at = program_headers + index * entry_size;
        let kind = u32::from_le_bytes(field(at, 4)?.try_into()?);
        if kind == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

fn require_static(path: &Path, install_hint: &str) -> Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("cannot read {}: {error}; {install_hint}", path.display()))?;
    if needs_loader(&bytes)? {
        return Err(format!(
            "{} is dynamically linked (it has a PT_INTERP program header); {install_hint}",
            path.display()
        )
        .into());
    }
    Ok(())
}

/// The path of `program` on this machine's `PATH`; fails with what to install when there is
/// none.
fn require_tool(program: &str, package: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("`{program}` is not on PATH: install {package}").into())
}

/// The tools that confine a process to a root.
struct Confine {
    unshare: PathBuf,
    chroot: PathBuf,
}

impl Confine {
    fn find() -> Result<Self> {
        require_static(Path::new(BUSYBOX), "install busybox-static")?;
        Ok(Confine {
            unshare: require_tool("unshare", "util-linux")?,
            chroot: require_tool("chroot", "coreutils")?,
        })
    }

    /// `unshare … chroot <root> <program> <args>`: a new user and mount namespace, root
    /// mapped to the caller (so it works without privileges), the process confined to
    /// `root`, with only `env` in its environment.
    fn command(
        &self,
        root: &Path,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Command {
        let mut command = Command::new(&self.unshare);
        command
            .args(["--user", "--map-root-user", "--mount", "--fork"])
            .arg(&self.chroot)
            .arg(root)
            .arg(program)
            .args(args)
            // Nothing from this machine: the step sees only what the pod spec would set.
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// Runs `command` to its end, killing it after [`RUN_LIMIT`].
fn run_limited(mut command: Command) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > RUN_LIMIT {
            child.kill()?;
            let output = child.wait_with_output()?;
            return Err(format!(
                "still running after {RUN_LIMIT:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// A root holding only `/bin/busybox` and `/trainyard-launch`.
fn bare_root(launcher: &Path) -> Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("bin"))?;
    std::fs::copy(BUSYBOX, root.path().join("bin/busybox"))?;
    std::fs::copy(launcher, root.path().join("trainyard-launch"))?;
    Ok(root)
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir)?.to_owned());
            }
        }
    }
    found.sort();
    Ok(found)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_elf_check_tells_a_dynamic_executable_from_a_static_one() -> TestResult {
    // This test executable is linked against the host's glibc.
    let this = std::fs::read(std::env::current_exe()?)?;
    assert!(needs_loader(&this)?, "a glibc executable needs its loader");
    require_static(Path::new(BUSYBOX), "install busybox-static")?;
    assert!(
        needs_loader(b"#!/bin/sh\n").is_err(),
        "a script is no ELF file"
    );
    Ok(())
}

#[test]
fn the_launcher_is_a_static_executable() -> TestResult {
    require_static(
        launcher_bin()?,
        "the launcher must be built for x86_64-unknown-linux-musl with no C library linked in",
    )
}

#[test]
fn a_dynamic_executable_cannot_run_in_the_bare_root() -> TestResult {
    let confine = Confine::find()?;
    let root = bare_root(launcher_bin()?)?;
    // The root really holds no libc: this glibc test executable cannot start in it.
    std::fs::copy(std::env::current_exe()?, root.path().join("dynamic"))?;
    let output =
        run_limited(confine.command(root.path(), "/dynamic", &["--list".to_owned()], &[]))?;
    assert!(
        !output.status.success(),
        "a glibc executable ran without glibc"
    );
    // And the harness itself works: busybox runs in it.
    let output = run_limited(confine.command(
        root.path(),
        "/bin/busybox",
        &["sh".to_owned(), "-c".to_owned(), "echo inside".to_owned()],
        &[],
    ))?;
    assert!(
        output.status.success(),
        "busybox does not run under unshare + chroot (user namespaces disabled?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "inside\n");
    Ok(())
}

/// The step's source: a script run through busybox, executable as Git would mark it.
const SCRIPT: &str = "#!/bin/busybox sh\nset -e\necho \"training on $(/bin/busybox cat \"$1\")\"\necho warning >&2\nprintf 'model of %s' \"$(/bin/busybox cat \"$1\")\" > \"$2\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_launcher_runs_a_step_against_s3_in_a_root_with_nothing_but_busybox()
-> TestResult {
    let confine = Confine::find()?;
    let launcher = launcher_bin()?;
    require_static(launcher, "build it for x86_64-unknown-linux-musl")?;
    let root = bare_root(launcher)?;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = S3Server::start()?;
    let env = server.env();
    let url = format!("{}/static", server.url());
    let store = ArtifactStore::open_with_env(&url, env.clone())?;

    // The source and input, as the service and an earlier step leave them.
    let (run, step) = (5, "train");
    let name = job_name("test", run, step, 1);
    let prefix = artifacts::source_prefix("c0ffee");
    let script_key = artifacts::source_key(&prefix, b"churn/train.sh");
    store
        .put_bytes(&script_key, SCRIPT.as_bytes().to_vec())
        .await?;
    let marker = SourceMarker {
        executables: vec![script_key],
    };
    store
        .put_bytes(
            &artifacts::source_marker_key(&prefix),
            serde_json::to_vec(&marker)?,
        )
        .await?;
    let input_key = artifacts::output_key("test", run, "prepare", "dataset");
    store.put_bytes(&input_key, b"rows".to_vec()).await?;

    // The job as the Kubernetes executor hands it to the pod, paths as the pod sees them.
    let dir = job_dir(&name);
    let input = dir.join("inputs/prepare/dataset");
    let output = dir.join("outputs/model");
    let job = StepJob {
        log_key: artifacts::log_key(&name),
        name,
        instance: "test".to_owned(),
        run_id: run,
        step: step.to_owned(),
        attempt: 1,
        argv: vec![
            "./train.sh".to_owned(),
            input.display().to_string(),
            output.display().to_string(),
        ],
        env: BTreeMap::new(),
        image: "busybox".to_owned(),
        resources: None,
        timeout: None,
        job_dir: dir.clone(),
        workdir: dir.join("src/churn"),
        source: Some(StepSource {
            prefix,
            dir: PathBuf::from("churn"),
        }),
        inputs: vec![StepInput {
            key: input_key,
            path: input,
        }],
        outputs: vec![StepOutput {
            name: "model".to_owned(),
            path: output,
            key: artifacts::output_key("test", run, step, "model"),
        }],
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        secrets: Vec::new(),
    };
    let mut args = launcher::launch_args(&job, &url);
    args.termination_log = Some(PathBuf::from("/termination-log"));

    let command = confine.command(root.path(), "/trainyard-launch", &args.to_args(), &env);
    let ran = tokio::task::spawn_blocking(move || run_limited(command)).await??;
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "the launch failed ({}): stdout {stdout:?}, stderr {stderr:?}",
        ran.status
    );
    assert_eq!(
        stdout, "training on rows\n",
        "the program's output reaches the pod log"
    );
    assert_eq!(stderr, "warning\n");
    assert!(
        !root.path().join("termination-log").exists(),
        "no termination message on success"
    );

    let model = b"model of rows";
    assert_eq!(
        store.get_bytes(&job.outputs[0].key).await?.as_deref(),
        Some(&model[..])
    );
    assert_eq!(
        launcher::outcome(&store, &job).await?,
        Some(vec![ProducedArtifact {
            output: "model".to_owned(),
            uri: store.uri(&job.outputs[0].key),
            sha256: sha256_hex(model),
            size: model.len() as u64,
        }]),
        "the manifest lists the output with its sha256"
    );
    let log = store
        .get_bytes(&job.log_key)
        .await?
        .ok_or("no stored log")?;
    let log = String::from_utf8(log)?;
    assert!(log.contains("training on rows\n"), "{log:?}");
    assert!(log.contains("warning\n"), "{log:?}");

    // Everything the launch wrote stayed inside the root, under the job's directory.
    let relative_job_dir = dir.strip_prefix("/")?;
    let mut expected = vec![
        PathBuf::from("bin/busybox"),
        PathBuf::from("trainyard-launch"),
        relative_job_dir.join("inputs/prepare/dataset"),
        relative_job_dir.join("outputs/model"),
        relative_job_dir.join("src/churn/train.sh"),
        relative_job_dir.join("step.log"),
    ];
    expected.sort();
    assert_eq!(files_under(root.path())?, expected);
    Ok(())
}
