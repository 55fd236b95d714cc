//! Telling a running service that another process (the command line) wrote a request, so
//! that it acts at once without polling: PostgreSQL's `NOTIFY`, which reaches every replica
//! listening, and on SQLite, whose writers share one machine, a write to a file beside the
//! database that the service watches. A signal carries nothing: the request is in the store,
//! and a signal lost (a listener reconnecting, a service not running) only delays it to the
//! next start or wake, as every loop reads the store afresh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Result, Store, StoreError};

/// The PostgreSQL channel requests are announced on.
const CHANNEL: &str = "trainyard_requests";

/// The statement that announces on [`CHANNEL`], sent as a simple query (`NOTIFY` takes no
/// parameters and is no statement to prepare).
const NOTIFY: &str = "NOTIFY trainyard_requests";

/// How a store announces requests.
#[derive(Clone)]
pub(super) enum Announce {
    /// An in-memory database: no other process can write to it.
    Nowhere,
    /// This file, beside a SQLite database, is written after each request.
    File(PathBuf),
    /// `NOTIFY` on [`CHANNEL`] of the server at this URL.
    Postgres(String),
}

/// Names the way, not the URL: it may hold a password.
impl std::fmt::Debug for Announce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Announce::Nowhere => f.write_str("Nowhere"),
            Announce::File(path) => f.debug_tuple("File").field(path).finish(),
            Announce::Postgres(_) => f.write_str("Postgres(NOTIFY)"),
        }
    }
}

impl Announce {
    /// How the database at `url` (as resolved by the store) announces.
    pub(super) fn for_url(backend: super::Backend, url: &str) -> Result<Announce> {
        match backend {
            super::Backend::Postgres => Ok(Announce::Postgres(url.to_owned())),
            super::Backend::Sqlite => Ok(match super::sqlite_sidecar(url, ".requests")? {
                Some(file) => Announce::File(file),
                None => Announce::Nowhere,
            }),
        }
    }
}

/// Completes once for each burst of requests announced since the last call, and once when
/// listening begins (what was announced before is in the store). Dropping it stops listening.
#[derive(Debug)]
pub struct RequestSignals {
    signals: mpsc::Receiver<()>,
    /// Keeps the file watch alive.
    _watcher: Option<notify::RecommendedWatcher>,
    /// The PostgreSQL listener's task, stopped with this.
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl RequestSignals {
    /// Waits for the next announcement; never completes for a store nobody else can write.
    pub async fn announced(&mut self) {
        if self.signals.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for RequestSignals {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

impl Store {
    /// Tells a running service that a request was committed. A failure is logged, not
    /// returned: the request is stored, and the service acts on it at its next wake or start.
    pub(super) async fn announce_request(&self) {
        let result = match &self.announce {
            Announce::Nowhere => Ok(()),
            Announce::File(path) => tokio::fs::write(path, b"requested\n")
                .await
                .map_err(|e| format!("writing {}: {e}", path.display())),
            Announce::Postgres(_) => sqlx::raw_sql(NOTIFY)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(
                %error,
                "the request is stored, but a running service could not be told: \
                 it acts on it at its next pass"
            );
        }
    }

    /// Listens for requests other processes announce.
    pub async fn request_signals(&self) -> Result<RequestSignals> {
        let (tx, signals) = mpsc::channel(1);
        let mut out = RequestSignals {
            signals,
            _watcher: None,
            listener: None,
        };
        match &self.announce {
            Announce::Nowhere => {}
            Announce::File(path) => out._watcher = Some(watch_file(path, tx)?),
            Announce::Postgres(url) => out.listener = Some(tokio::spawn(listen(url.clone(), tx))),
        }
        Ok(out)
    }
}

/// Watches the directory of `path` for writes to `path` (the directory, not the file, so
/// that a file removed and written again is still seen). Opening or reading the file, and
/// every other file there (the database and its journal), wake nothing.
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    use notify::event::{AccessKind, AccessMode, EventKind};
    let watch_error =
        |e: notify::Error| StoreError::Invalid(format!("watching {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned);
    let listening = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let written = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if written && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            // A full channel already holds a wake-up; one is enough.
            let _ = tx.try_send(());
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let _ = listening.try_send(());
    Ok(watcher)
}

/// Listens on [`CHANNEL`] of the server at `url` and forwards notifications until the
/// receiver is gone. Connecting (at first, and again after an error) counts as a
/// notification, since what was announced while nobody listened is in the store; so does a
/// lost connection, which the listener re-opens at its next call. A server that cannot be
/// reached is tried again with backoff, never given up.
async fn listen(url: String, tx: mpsc::Sender<()>) {
    const FIRST_DELAY: Duration = Duration::from_secs(1);
    let mut delay = FIRST_DELAY;
    while !tx.is_closed() {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot listen for requests");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        delay = FIRST_DELAY;
        let _ = tx.try_send(());
        loop {
            match listener.try_recv().await {
                Ok(_) => {
                    // A full channel already holds a wake-up; one is enough.
                    let _ = tx.try_send(());
                }
                Err(error) => {
                    tracing::warn!(%error, "listening for requests failed; listening again");
                    break;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Backend;

    #[test]
    fn the_notify_statement_names_the_channel_listened_on() {
        assert_eq!(NOTIFY.strip_prefix("NOTIFY "), Some(CHANNEL));
    }

    #[test]
    fn a_sqlite_file_announces_beside_it_and_memory_nowhere() {
        let file = Announce::for_url(Backend::Sqlite, "sqlite:/data/ty.db?mode=rwc").expect("url");
        assert!(matches!(file, Announce::File(p) if p == Path::new("/data/ty.db.requests")));
        let memory = Announce::for_url(Backend::Sqlite, "sqlite::memory:").expect("url");
        assert!(matches!(memory, Announce::Nowhere));
        let server = Announce::for_url(Backend::Postgres, "postgres://u:secret@db/x").expect("url");
        assert!(!format!("{server:?}").contains("secret"), "{server:?}");
    }
}
