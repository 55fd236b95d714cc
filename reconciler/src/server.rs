//! The service's HTTP server: the routes every replica answers, leader or not. For now
//! liveness (`/healthz`: the service's loop is turning) and readiness (`/readyz`: the
//! store answers); webhooks and the API join the same [`Router`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::store::Store;

/// Path of the liveness endpoint.
pub const HEALTHZ: &str = "/healthz";
/// Path of the readiness endpoint.
pub const READYZ: &str = "/readyz";

/// How long the loop may go without a heartbeat before the process counts as stuck: well
/// above the longest sleep of the loop (a few seconds) and a slow pass.
pub const HEARTBEAT_BOUND: Duration = Duration::from_secs(60);
/// How long readiness waits for the store before it answers "not ready".
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the HTTP server.
#[derive(Debug, Error)]
pub enum Error {
    /// The listening socket failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// When the service's loop last showed it was alive; cheap to clone and to beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// Records that the loop is alive now.
    pub fn beat(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation, if none).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// What the routes read.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The loop's heartbeat, for liveness.
    pub heartbeat: Heartbeat,
    /// Longest silence of the heartbeat that still counts as alive.
    pub heartbeat_bound: Duration,
    /// The store, for readiness.
    pub store: Store,
}

impl AppState {
    /// State over the service's heartbeat and store, with the default bound.
    pub fn new(heartbeat: Heartbeat, store: Store) -> Self {
        AppState {
            heartbeat,
            heartbeat_bound: HEARTBEAT_BOUND,
            store,
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    let age = state.heartbeat.age();
    if age <= state.heartbeat_bound {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stuck: the service loop has not turned for {}s (bound {}s)\n",
                age.as_secs(),
                state.heartbeat_bound.as_secs()
            ),
        )
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match tokio::time::timeout(STORE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store failed: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not answer within {}s\n",
                STORE_TIMEOUT.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/trainyard.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        (dir, store)
    }

    /// Starts the server on a free port; returns its address and a handle that stops it.
    async fn start(state: AppState) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router(state), async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    /// A plain HTTP/1.1 GET; returns the status code and the body.
    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap();
        (status, body)
    }

    #[tokio::test]
    async fn a_beating_loop_is_healthy_and_a_silent_one_is_not() {
        let (_dir, store) = store().await;
        let heartbeat = Heartbeat::default();
        let mut state = AppState::new(heartbeat.clone(), store);
        state.heartbeat_bound = Duration::from_millis(300);
        let (address, _stop) = start(state).await;
        heartbeat.beat();
        assert_eq!(get(address, HEALTHZ).await, (200, "ok\n".to_owned()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (status, body) = get(address, HEALTHZ).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("stuck:"), "{body}");
        heartbeat.beat();
        assert_eq!(get(address, HEALTHZ).await.0, 200);
    }

    #[tokio::test]
    async fn readiness_follows_the_store() {
        let (_dir, store) = store().await;
        let (address, _stop) = start(AppState::new(Heartbeat::default(), store.clone())).await;
        assert_eq!(get(address, READYZ).await, (200, "ready\n".to_owned()));
        store.close().await;
        let (status, body) = get(address, READYZ).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("not ready: the store failed:"), "{body}");
    }

    #[tokio::test]
    async fn an_unknown_path_is_not_found() {
        let (_dir, store) = store().await;
        let (address, _stop) = start(AppState::new(Heartbeat::default(), store)).await;
        assert_eq!(get(address, "/nope").await.0, 404);
    }

    #[tokio::test]
    async fn shutting_down_closes_the_listener() {
        let (_dir, store) = store().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router(AppState::new(Heartbeat::default(), store)),
            async {
                let _ = stopped.await;
            },
        ));
        assert_eq!(get(address, HEALTHZ).await.0, 200);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
}
