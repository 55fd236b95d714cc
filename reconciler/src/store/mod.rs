//! The single source of truth: pipeline versions, schedules, ticks, runs, steps, artifacts,
//! model versions, the report outbox and the queue of forge events, in SQLite (default) or
//! PostgreSQL through one code path. Every method that changes state does so in one transaction, and repeating a call
//! with the same input changes nothing, so each loop can crash at any line and resume from
//! what the database says.

mod cache;
mod commits;
mod events;
mod installation;
mod intents;
mod outbox;
mod pulls;
mod registry;
mod runs;
mod schedules;
mod signal;
mod types;

#[cfg(test)]
mod tests;

pub use commits::FOLLOWED_CURSOR;
pub use events::ForgeEventRow;
pub use installation::{MAX_INSTALLATION_LEN, is_installation_name};
pub use intents::{BACKFILL_REASON, Refused};
pub use pulls::PullRequestRow;
pub use signal::RequestSignals;
pub use types::*;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Row, SqlSafeStr, Transaction};
use thiserror::Error;

/// Errors from the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error(
        "unsupported database URL scheme {scheme:?}: use sqlite://PATH, a file path, or postgres://"
    )]
    UnsupportedUrl {
        /// The scheme found (the URL itself may hold a password and is not repeated).
        scheme: String,
    },
    /// The database could not be reached, or refused or failed a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migrating the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value this version cannot read (written by a newer version, or edited by
    /// hand). Only the row it is in is affected: every list the store returns reads each row
    /// on its own.
    #[error("the stored {table} row {row} cannot be read: column {column} {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key (an id, a name, `pipeline@version`).
        row: String,
        /// The column.
        column: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value could not be turned into its stored form; nothing was written.
    #[error("cannot store {what}: {reason}")]
    Encode {
        /// What was being stored.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A row the call refers to does not exist.
    #[error("{what} {key} not found")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// The schedule is unknown or retired, so no tick of it may be recorded.
    #[error("schedule {0} is unknown or retired")]
    ScheduleNotActive(String),
    /// The call's input contradicts itself; nothing was written.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Results of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether trying again may help: the database unreachable, busy or shutting a
    /// connection, a transaction that lost a race. A row that cannot be read, a call that
    /// contradicts the data, or a schema this version does not know stays as it is.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => !matches!(
                error,
                sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnIndexOutOfBounds { .. }
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Configuration(_)
                    | sqlx::Error::InvalidArgument(_)
            ),
            _ => false,
        }
    }
}

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL, foreign keys on).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// How long a SQLite writer waits for another writer's transaction before failing.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// Handle on the database; cheap to clone (a shared connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// How requests written through this handle reach a running service.
    announce: signal::Announce,
}

impl Store {
    /// Connects and brings the schema up to date.
    ///
    /// `url` is `sqlite://PATH` or `sqlite:PATH` (the file is created if missing, its
    /// directory is not), a bare file path (same), or `postgres://…` / `postgresql://…`.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = resolve_url(url)?;
        let options: AnyConnectOptions = url.parse()?;
        let announce = signal::Announce::for_url(backend, &url)?;
        if backend == Backend::Sqlite {
            // journal_mode is stored in the file, and switching it needs an exclusive lock
            // that busy_timeout does not wait for: set it once, before the pool exists.
            let mut conn = options.connect().await?;
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
        }
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        let busy = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
                        sqlx::query(sqlx::AssertSqlSafe(busy))
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        // sqlx's migrator takes an advisory lock on PostgreSQL and none on SQLite, where
        // processes opening one file at once would each apply the same migration (the loser
        // failing on a column that exists): they take turns on a lock file beside it.
        let lock = match backend {
            Backend::Sqlite => match sqlite_sidecar(&url, ".migrating")? {
                Some(path) => Some(lock_file(path).await?),
                None => None,
            },
            Backend::Postgres => None,
        };
        let migrated = migrator(backend).run(&pool).await;
        drop(lock);
        migrated?;
        Ok(Store {
            pool,
            backend,
            announce,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a trivial query: whether the database answers at all (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction.
    ///
    /// SQLite's default transaction takes the write lock at its first write, and a reader that
    /// later writes fails at once instead of waiting; `BEGIN IMMEDIATE` takes the lock up front
    /// so concurrent writers queue on busy_timeout. PostgreSQL locks rows as they are written.
    async fn write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

/// The schema migrations of one backend, embedded in the binary.
fn migrator(backend: Backend) -> Migrator {
    let (init, forge_events, pulls, level, checks, backfill, finally, cache) = match backend {
        Backend::Sqlite => (
            include_str!("../../migrations/sqlite/0001_init.sql"),
            include_str!("../../migrations/sqlite/0002_forge_events.sql"),
            include_str!("../../migrations/sqlite/0003_pulls.sql"),
            include_str!("../../migrations/sqlite/0004_level_triggered.sql"),
            include_str!("../../migrations/sqlite/0005_check_runs.sql"),
            include_str!("../../migrations/sqlite/0006_backfill.sql"),
            include_str!("../../migrations/sqlite/0007_finally.sql"),
            include_str!("../../migrations/sqlite/0008_cache.sql"),
        ),
        Backend::Postgres => (
            include_str!("../../migrations/postgres/0001_init.sql"),
            include_str!("../../migrations/postgres/0002_forge_events.sql"),
            include_str!("../../migrations/postgres/0003_pulls.sql"),
            include_str!("../../migrations/postgres/0004_level_triggered.sql"),
            include_str!("../../migrations/postgres/0005_check_runs.sql"),
            include_str!("../../migrations/postgres/0006_backfill.sql"),
            include_str!("../../migrations/postgres/0007_finally.sql"),
            include_str!("../../migrations/postgres/0008_cache.sql"),
        ),
    };
    let with_tx = |version, name: &'static str, sql: &'static str, no_tx: bool| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            sql.into_sql_str(),
            no_tx,
        )
    };
    let migration = |version, name, sql| with_tx(version, name, sql, false);
    Migrator::with_migrations(vec![
        migration(1, "init", init),
        migration(2, "forge_events", forge_events),
        migration(3, "pulls", pulls),
        migration(4, "level_triggered", level),
        migration(5, "check_runs", checks),
        // SQLite's copy of `runs` switches foreign keys off, which only works outside a
        // transaction: that migration brings its own.
        with_tx(6, "backfill", backfill, backend == Backend::Sqlite),
        migration(7, "finally", finally),
        migration(8, "cache", cache),
    ])
}

/// The file named `suffix` beside the SQLite database at `url` (`trainyard.db.requests`),
/// for a database in a file.
fn sqlite_sidecar(url: &str, suffix: &str) -> Result<Option<std::path::PathBuf>> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    Ok(Some(name.into()))
}

/// Opens `path` (created if missing) and holds an exclusive lock on it until the file is
/// dropped; the operating system releases it if the process dies.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File> {
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await;
    match locked {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(error)) => Err(StoreError::Invalid(format!(
            "cannot lock the database for its migrations: {error}"
        ))),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Picks the backend and turns a bare path into a SQLite URL that creates the file.
fn resolve_url(url: &str) -> Result<(Backend, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let has_mode = rest
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("mode=")));
        let url = if has_mode {
            url.to_owned()
        } else if rest.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        return Ok((Backend::Sqlite, url));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(StoreError::UnsupportedUrl {
            scheme: scheme.to_owned(),
        });
    }
    Ok((
        Backend::Sqlite,
        format!("sqlite:{}?mode=rwc", percent_encode(url)),
    ))
}

/// Escapes a file path for a SQLite URL, which is percent-decoded before use.
fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Rows written by one multi-row statement: few round trips for a busy second, and well
/// under the bind parameters both databases allow (SQLite 32,766, PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// The `VALUES` rows of a multi-row statement: `row` repeated `rows` times, each `?` in it
/// numbered as the next `$n` parameter. Both databases read `$n`; the text is built only from
/// the templates in this module, never from input.
fn value_rows(rows: usize, row: &str) -> String {
    let mut out = String::with_capacity(rows * (row.len() + 8));
    let mut n = 0;
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        for c in row.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// Milliseconds since the epoch, the stored form of every time.
fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn opt_millis(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(millis)
}

/// The stored form of a typed JSON column.
fn to_json<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// One row being read: every failure to read a column names the table, the row and the
/// column, so a corrupt value is found and fixed where it is.
struct Cells<'r> {
    row: &'r AnyRow,
    table: &'static str,
    key: String,
}

impl<'r> Cells<'r> {
    fn new(row: &'r AnyRow, table: &'static str, key: impl std::fmt::Display) -> Self {
        Cells {
            row,
            table,
            key: key.to_string(),
        }
    }

    fn corrupt(&self, column: &'static str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            row: self.key.clone(),
            column,
            reason: reason.to_string(),
        }
    }

    /// Any column sqlx can decode as `T`.
    fn get<T>(&self, column: &'static str) -> Result<T>
    where
        T: for<'a> sqlx::Decode<'a, Any> + sqlx::Type<Any>,
    {
        self.row
            .try_get(column)
            .map_err(|e| self.corrupt(column, e))
    }

    /// A required time.
    fn time(&self, column: &'static str) -> Result<DateTime<Utc>> {
        let ms: i64 = self.get(column)?;
        DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| self.corrupt(column, format!("{ms} is out of the time range")))
    }

    /// A nullable time.
    fn opt_time(&self, column: &'static str) -> Result<Option<DateTime<Utc>>> {
        let ms: Option<i64> = self.get(column)?;
        ms.map(|ms| {
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| self.corrupt(column, format!("{ms} is out of the time range")))
        })
        .transpose()
    }

    /// A JSON text column decoded into its type.
    fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, format!("is not valid: {e}")))
    }

    /// A nullable JSON text column.
    fn opt_json<T: DeserializeOwned>(&self, column: &'static str) -> Result<Option<T>> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| self.corrupt(column, format!("is not valid: {e}")))
        })
        .transpose()
    }

    /// A 0/1 flag.
    fn flag(&self, column: &'static str) -> Result<bool> {
        Ok(self.get::<i64>(column)? != 0)
    }

    /// A non-negative counter.
    fn count(&self, column: &'static str) -> Result<u32> {
        let value: i64 = self.get(column)?;
        u32::try_from(value).map_err(|e| self.corrupt(column, format!("{value}: {e}")))
    }

    /// A non-negative 64-bit number (sizes, pull request and comment numbers).
    fn unsigned(&self, column: &'static str) -> Result<u64> {
        let value: i64 = self.get(column)?;
        u64::try_from(value).map_err(|e| self.corrupt(column, format!("{value}: {e}")))
    }

    /// A nullable exit code.
    fn exit_code(&self, column: &'static str) -> Result<Option<i32>> {
        let code: Option<i64> = self.get(column)?;
        code.map(|code| {
            i32::try_from(code).map_err(|e| self.corrupt(column, format!("{code}: {e}")))
        })
        .transpose()
    }

    /// One of a stored enum's words.
    fn word<T>(&self, column: &'static str, from_stored: fn(&str) -> Option<T>) -> Result<T> {
        let text: String = self.get(column)?;
        from_stored(&text).ok_or_else(|| self.corrupt(column, format!("holds unknown {text:?}")))
    }

    /// One of a stored enum's words, or NULL.
    fn opt_word<T>(
        &self,
        column: &'static str,
        from_stored: fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| {
            from_stored(&text)
                .ok_or_else(|| self.corrupt(column, format!("holds unknown {text:?}")))
        })
        .transpose()
    }
}
