//! What the benchmarks that run the release binary share: the service process with its CPU
//! time and peak memory read from `/proc`, a PostgreSQL schema of its own, and a commit of a
//! work tree.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use git2::{Repository, Signature};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The service process; killed if the bench fails while it runs.
pub struct ServiceProcess(pub Child);

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ServiceProcess {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name, which may contain spaces.
        let rest = stat.rsplit_once(')').ok_or("unreadable stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(ticks as f64 / per_second as f64)
    }

    /// Peak resident memory in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .ok_or("no VmHWM")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("unreadable VmHWM")?
            .parse()?)
    }

    /// Stops the service as Kubernetes would (SIGTERM) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: signals the child this bench started and has not yet reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while self.0.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err("the service did not stop within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

pub fn commit(repo: &Repository) -> Result<()> {
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = Signature::now("bench", "bench@example.com")?;
    repo.commit(Some("HEAD"), &sig, &sig, "bench", &tree, &[])?;
    Ok(())
}

/// A PostgreSQL schema of its own, dropped by [`drop_schema`].
pub async fn create_schema() -> Result<String> {
    use sqlx::Connection as _;
    let schema = format!(
        "bench_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let mut connection = sqlx::PgConnection::connect(POSTGRES).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await?;
    Ok(schema)
}

pub async fn drop_schema(schema: &str) -> Result<()> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(POSTGRES).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut connection)
        .await?;
    Ok(())
}

pub fn path_text(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| "paths are UTF-8".into())
}
