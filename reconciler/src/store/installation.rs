//! The installation's identity: created once in the database, carried in the name and labels
//! of everything it creates elsewhere, so that two installations (or a fresh database in the
//! same namespace) never take each other's work for their own.

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{Result, Store, StoreError, millis};

/// Longest identity: it is part of every Kubernetes Job name (at most 63 characters).
pub const MAX_INSTALLATION_LEN: usize = 20;

/// Whether `name` can be an installation's identity: 1 to 20 of `[a-z0-9-]`, not starting
/// or ending with `-` (a piece of a DNS label).
pub fn is_installation_name(name: &str) -> bool {
    (1..=MAX_INSTALLATION_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Store {
    /// This installation's identity. The first call records it: `named` when given (the
    /// service's `--instance`), else eight hexadecimal characters made up now. Later calls
    /// return what was recorded; naming another identity than the recorded one is refused,
    /// since the work this database knows carries the recorded one.
    pub async fn installation(&self, named: Option<&str>) -> Result<String> {
        if let Some(name) = named
            && !is_installation_name(name)
        {
            return Err(StoreError::Invalid(format!(
                "instance name {name:?} must be 1 to {MAX_INSTALLATION_LEN} of a-z, 0-9 and -, \
                 not starting or ending with -"
            )));
        }
        let candidate = match named {
            Some(name) => name.to_owned(),
            None => made_up(),
        };
        let mut tx = self.write().await?;
        if self.backend == super::Backend::Postgres {
            // Replicas starting together on an empty database would each see no row under
            // READ COMMITTED, record their own, and act as two installations: their Jobs and
            // artifacts named apart, each taking the other's for gone. The lock makes the
            // second wait for the first's commit and read its row. (SQLite's BEGIN IMMEDIATE
            // already admits one writer at a time.)
            sqlx::raw_sql("LOCK TABLE installation IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let mut ids = recorded(&mut tx).await?;
        if ids.is_empty() {
            sqlx::query("INSERT INTO installation (id, created_at) VALUES ($1, $2)")
                .bind(&candidate)
                .bind(millis(Utc::now()))
                .execute(&mut *tx)
                .await?;
            ids = recorded(&mut tx).await?;
        }
        let Some(recorded) = ids.first().cloned() else {
            return Err(StoreError::NotFound {
                what: "installation",
                key: candidate,
            });
        };
        if ids.len() > 1 {
            // Two starts raced on an empty database: the older row wins, for both.
            sqlx::query("DELETE FROM installation WHERE id <> $1")
                .bind(&recorded)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        match named {
            Some(name) if name != recorded => Err(StoreError::Invalid(format!(
                "this database belongs to installation {recorded:?}, not {name:?}: start with \
                 --instance {recorded} (or give this installation a database of its own)"
            ))),
            _ => Ok(recorded),
        }
    }
}

/// The identities recorded, oldest first (one, but for a race on an empty database).
async fn recorded(conn: &mut sqlx::AnyConnection) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM installation ORDER BY created_at, id")
            .fetch_all(conn)
            .await?,
    )
}

/// Eight hexadecimal characters that differ between installations: a hash of the time, the
/// process and the host.
fn made_up() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let seed = format!(
        "{}-{}-{host}",
        Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        std::process::id()
    );
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}
