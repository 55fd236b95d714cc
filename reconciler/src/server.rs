//! The service's HTTP server: the routes every replica answers, leader or not: liveness
//! (`/healthz`: the service's loop is turning), readiness (`/readyz`: the store answers)
//! and, when a secret is configured, GitHub's webhooks (`/webhooks/github`: checked, queued
//! in the store, and the loop woken; the work happens there, not in the request).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::store::{Store, StoreError};
use crate::webhook::{self, ForgeEvent};

/// Path of the liveness endpoint.
pub const HEALTHZ: &str = "/healthz";
/// Path of the readiness endpoint.
pub const READYZ: &str = "/readyz";
/// Path GitHub delivers webhooks to.
pub const GITHUB_WEBHOOK: &str = "/webhooks/github";
/// Largest webhook body accepted. GitHub caps payloads at 25 MB, but the events Trainyard
/// reads are a few kilobytes; a push listing thousands of commits is the largest seen.
pub const WEBHOOK_BODY_LIMIT: usize = 5 * 1024 * 1024;

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
    /// The store, for readiness and the event queue.
    pub store: Store,
    /// Webhooks, when a secret is configured; without one the route is not mounted.
    pub webhooks: Option<Webhooks>,
}

/// What the webhook route needs: the shared secret, and the loop to wake.
#[derive(Clone)]
pub struct Webhooks {
    secret: Arc<[u8]>,
    wake: Arc<Notify>,
}

impl Webhooks {
    /// Webhooks signed with `secret`; each stored event notifies `wake` (the service's
    /// [`wake_handle`](crate::runtime::Service::wake_handle)).
    pub fn new(secret: impl Into<Arc<[u8]>>, wake: Arc<Notify>) -> Self {
        Webhooks {
            secret: secret.into(),
            wake,
        }
    }
}

/// Keeps the secret out of logs.
impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over the service's heartbeat and store, with the default bound.
    pub fn new(heartbeat: Heartbeat, store: Store) -> Self {
        AppState {
            heartbeat,
            heartbeat_bound: HEARTBEAT_BOUND,
            store,
            webhooks: None,
        }
    }

    /// The same state with the webhook route on.
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz));
    if state.webhooks.is_some() {
        router = router.route(
            GITHUB_WEBHOOK,
            post(github_webhook).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        );
    }
    router.with_state(state)
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

/// A header's value as text, if present and readable.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Checks the signature before reading anything else, queues the event and wakes the loop.
/// GitHub waits at most ten seconds for an answer, so nothing slow happens here.
async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(webhooks) = &state.webhooks else {
        return (StatusCode::NOT_FOUND, "webhooks are off\n".to_owned());
    };
    // A value that is not text cannot be a hex signature; "" makes verify say so.
    let signature = headers
        .get("x-hub-signature-256")
        .map(|value| value.to_str().unwrap_or_default());
    if let Err(error) = webhook::verify(&webhooks.secret, signature, &body) {
        tracing::warn!(%error, "refused a webhook delivery");
        return (StatusCode::UNAUTHORIZED, format!("{error}\n"));
    }
    let Some(event) = header(&headers, "x-github-event") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event header\n".to_owned(),
        );
    };
    let Some(delivery) = header(&headers, "x-github-delivery") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery header\n".to_owned(),
        );
    };
    let parsed = match webhook::parse(event, &body) {
        Ok(Some(ForgeEvent::Ping)) => return (StatusCode::OK, "pong\n".to_owned()),
        Ok(Some(parsed)) => parsed,
        Ok(None) => return (StatusCode::OK, "ignored\n".to_owned()),
        Err(error) => {
            tracing::warn!(%error, %delivery, "refused a malformed webhook delivery");
            return (StatusCode::BAD_REQUEST, format!("{error}\n"));
        }
    };
    match state
        .store
        .record_forge_event(delivery, &parsed, chrono::Utc::now())
        .await
    {
        Ok(true) => {
            tracing::info!(%event, %delivery, "queued a webhook event");
            webhooks.wake.notify_one();
            (StatusCode::ACCEPTED, "queued\n".to_owned())
        }
        Ok(false) => (StatusCode::OK, "duplicate delivery\n".to_owned()),
        Err(StoreError::Invalid(problem)) => (StatusCode::BAD_REQUEST, format!("{problem}\n")),
        Err(error) => {
            tracing::error!(%error, %delivery, "queueing a webhook event failed");
            // 5xx: the delivery shows as failed in GitHub, where it can be redelivered.
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be queued; redeliver it later\n".to_owned(),
            )
        }
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

    const SECRET: &[u8] = b"webhook secret";
    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    fn push_body() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main",
            "after": SHA,
            "deleted": false,
            "repository": {"full_name": "octo/ml"},
            "sender": {"login": "octocat", "type": "User"}
        }))
        .unwrap()
    }

    /// A router with webhooks on, its store and the notify it wakes.
    async fn hooked() -> (tempfile::TempDir, Store, Arc<Notify>, Router) {
        let (dir, store) = store().await;
        let wake = Arc::new(Notify::new());
        let state = AppState::new(Heartbeat::default(), store.clone())
            .with_webhooks(Webhooks::new(SECRET.to_vec(), wake.clone()));
        (dir, store, wake, router(state))
    }

    /// Posts a delivery; `signature` None sends none. Returns the status and body.
    async fn deliver(
        router: &Router,
        event: Option<&str>,
        delivery: Option<&str>,
        signature: Option<String>,
        body: Vec<u8>,
    ) -> (u16, String) {
        use tower::ServiceExt as _;
        let mut request = axum::http::Request::post(GITHUB_WEBHOOK)
            .header("content-type", "application/json")
            .header("content-length", body.len());
        if let Some(event) = event {
            request = request.header("x-github-event", event);
        }
        if let Some(delivery) = delivery {
            request = request.header("x-github-delivery", delivery);
        }
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let request = request.body(axum::body::Body::from(body)).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether `wake` holds a notification, without waiting for one.
    async fn woken(wake: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_signed_push_is_queued_once_and_wakes_the_loop() {
        let (_dir, store, wake, router) = hooked().await;
        let body = push_body();
        let signature = webhook::sign(SECRET, &body);
        let first = deliver(
            &router,
            Some("push"),
            Some("d-1"),
            Some(signature.clone()),
            body.clone(),
        )
        .await;
        assert_eq!(first, (202, "queued\n".to_owned()));
        assert!(woken(&wake).await);
        let pending = store.pending_forge_events(10).await.unwrap();
        assert_eq!(
            pending.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            vec![ForgeEvent::Push {
                branch: "main".to_owned(),
                after: SHA.to_owned()
            }]
        );
        let replay = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(replay, (200, "duplicate delivery\n".to_owned()));
        assert!(!woken(&wake).await, "a replay wakes nothing");
        assert_eq!(store.pending_forge_events(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_bad_or_missing_signature_is_refused_and_stores_nothing() {
        let (_dir, store, wake, router) = hooked().await;
        let body = push_body();
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        for (signature, sent) in [
            (None, body.clone()),
            (Some(webhook::sign(b"other secret", &body)), body.clone()),
            (Some(webhook::sign(SECRET, &body)), tampered),
            (Some("sha256=xyz".to_owned()), body.clone()),
        ] {
            let (status, text) = deliver(&router, Some("push"), Some("d-1"), signature, sent).await;
            assert_eq!(status, 401, "{text}");
        }
        assert!(store.pending_forge_events(10).await.unwrap().is_empty());
        assert!(!woken(&wake).await);
        // The refusals did not use up the delivery id.
        let signature = webhook::sign(SECRET, &body);
        assert_eq!(
            deliver(&router, Some("push"), Some("d-1"), Some(signature), body)
                .await
                .0,
            202
        );
    }

    #[tokio::test]
    async fn ping_ignored_events_and_missing_headers_are_answered_without_storing() {
        let (_dir, store, _wake, router) = hooked().await;
        let ping = br#"{"zen": "Design for failure.", "hook_id": 1}"#.to_vec();
        let signed = |body: &[u8]| Some(webhook::sign(SECRET, body));
        assert_eq!(
            deliver(
                &router,
                Some("ping"),
                Some("d-1"),
                signed(&ping),
                ping.clone()
            )
            .await,
            (200, "pong\n".to_owned())
        );
        let star = br#"{"action": "created"}"#.to_vec();
        assert_eq!(
            deliver(
                &router,
                Some("star"),
                Some("d-2"),
                signed(&star),
                star.clone()
            )
            .await,
            (200, "ignored\n".to_owned())
        );
        let (status, text) = deliver(&router, None, Some("d-3"), signed(&ping), ping.clone()).await;
        assert_eq!(
            (status, text.as_str()),
            (400, "missing X-GitHub-Event header\n")
        );
        let (status, text) = deliver(&router, Some("ping"), None, signed(&ping), ping).await;
        assert_eq!(
            (status, text.as_str()),
            (400, "missing X-GitHub-Delivery header\n")
        );
        assert!(store.pending_forge_events(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_signed_but_malformed_payload_is_a_bad_request_naming_the_field() {
        let (_dir, store, _wake, router) = hooked().await;
        let body =
            serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "after": 7})).unwrap();
        let signature = webhook::sign(SECRET, &body);
        let (status, text) =
            deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(status, 400);
        assert_eq!(text, "malformed push payload: after is not a string\n");
        assert!(store.pending_forge_events(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_as_too_large() {
        let (_dir, store, _wake, router) = hooked().await;
        let body = vec![b' '; WEBHOOK_BODY_LIMIT + 1];
        let signature = webhook::sign(SECRET, &body);
        let (status, _) = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(status, 413);
        assert!(store.pending_forge_events(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_a_secret_there_is_no_webhook_route() {
        let (_dir, store) = store().await;
        let router = router(AppState::new(Heartbeat::default(), store));
        let body = push_body();
        let signature = webhook::sign(SECRET, &body);
        let (status, _) = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(status, 404);
    }
}
