//! The service's HTTP server: the routes every replica answers, leader or not: liveness
//! (`/healthz`: the service's loop is not stuck in a pass), readiness (`/readyz`: the store
//! answers) and, when a secret is configured, GitHub's webhooks (`/webhooks/github`:
//! checked, queued in the store, and the loop woken; the work happens there, not in the
//! request).

mod health;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::runtime::{LoopHealth, Wake};
use crate::store::Store;

/// Path of the liveness endpoint.
pub const HEALTHZ: &str = "/healthz";
/// Path of the readiness endpoint.
pub const READYZ: &str = "/readyz";
/// Path of the Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// Path GitHub delivers webhooks to.
pub const GITHUB_WEBHOOK: &str = "/webhooks/github";
/// Largest webhook body accepted. GitHub caps payloads at 25 MB, but the events Trainyard
/// reads are a few kilobytes; a push listing thousands of commits is the largest seen.
pub const WEBHOOK_BODY_LIMIT: usize = 5 * 1024 * 1024;

/// How long one pass of the loop may take before the process counts as stuck: well above a
/// slow pass. A loop asleep between passes is alive however long it sleeps.
pub const PASS_BOUND: Duration = Duration::from_secs(120);

/// Errors of the HTTP server.
#[derive(Debug, Error)]
pub enum Error {
    /// The listening socket failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// What the routes read.
#[derive(Debug, Clone)]
pub struct AppState {
    /// How the loop is doing, for liveness.
    pub health: LoopHealth,
    /// Longest pass that still counts as alive.
    pub pass_bound: Duration,
    /// The store, for readiness and the event queue.
    pub store: Store,
    /// The service's metrics.
    pub metrics: Metrics,
    /// Webhooks, when a secret is configured; without one the route is not mounted.
    pub webhooks: Option<Webhooks>,
}

/// What the webhook route needs: the shared secret, the repository whose events are acted
/// on, and the loop to wake.
#[derive(Clone)]
pub struct Webhooks {
    secret: Arc<[u8]>,
    repository: String,
    wake: Wake,
}

impl Webhooks {
    /// Webhooks signed with `secret` for the GitHub repository `repository` (`OWNER/NAME`);
    /// each stored event wakes the service's loop. Deliveries for other repositories are
    /// recorded as refused.
    pub fn new(secret: impl Into<Arc<[u8]>>, repository: impl Into<String>, wake: Wake) -> Self {
        Webhooks {
            secret: secret.into(),
            repository: repository.into(),
            wake,
        }
    }
}

/// Keeps the secret out of logs.
impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("secret", &"<redacted>")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over the loop's health, the store and the metrics, with the default bound.
    pub fn new(health: LoopHealth, store: Store, metrics: Metrics) -> Self {
        AppState {
            health,
            pass_bound: PASS_BOUND,
            store,
            metrics,
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
        .route(HEALTHZ, get(health::healthz))
        .route(READYZ, get(health::readyz))
        .route(METRICS, get(health::metrics));
    if state.webhooks.is_some() {
        router = router.route(
            GITHUB_WEBHOOK,
            post(webhooks::github_webhook).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ForgeEvent;
    use crate::server::webhooks::{self as webhook};

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

    fn state(store: Store) -> AppState {
        AppState::new(LoopHealth::default(), store, Metrics::default())
    }

    #[tokio::test]
    async fn a_sleeping_loop_is_healthy_and_one_stuck_in_a_pass_is_not() {
        let (_dir, store) = store().await;
        let health = LoopHealth::default();
        let mut state = AppState::new(health.clone(), store, Metrics::default());
        state.pass_bound = Duration::from_millis(300);
        let (address, _stop) = start(state).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            get(address, HEALTHZ).await,
            (200, "ok\n".to_owned()),
            "asleep between passes, however long"
        );
        health.busy();
        assert_eq!(get(address, HEALTHZ).await.0, 200, "a pass just began");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (status, body) = get(address, HEALTHZ).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("stuck:"), "{body}");
        health.idle();
        assert_eq!(get(address, HEALTHZ).await.0, 200);
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let (_dir, store) = store().await;
        let metrics = Metrics::default();
        metrics.pass("runs");
        let (address, _stop) = start(AppState::new(LoopHealth::default(), store, metrics)).await;
        let (status, body) = get(address, METRICS).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("trainyard_reconcile_passes_total{reconciler=\"runs\"} 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_store() {
        let (_dir, store) = store().await;
        let (address, _stop) = start(state(store.clone())).await;
        assert_eq!(get(address, READYZ).await, (200, "ready\n".to_owned()));
        store.close().await;
        let (status, body) = get(address, READYZ).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("not ready: the store failed:"), "{body}");
    }

    #[tokio::test]
    async fn an_unknown_path_is_not_found() {
        let (_dir, store) = store().await;
        let (address, _stop) = start(state(store)).await;
        assert_eq!(get(address, "/nope").await.0, 404);
    }

    #[tokio::test]
    async fn shutting_down_closes_the_listener() {
        let (_dir, store) = store().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(state(store)), async {
            let _ = stopped.await;
        }));
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
    async fn hooked() -> (tempfile::TempDir, Store, Wake, Router) {
        let (dir, store) = store().await;
        let wake = Wake::default();
        let state = state(store.clone()).with_webhooks(Webhooks::new(
            SECRET.to_vec(),
            "octo/ml",
            wake.clone(),
        ));
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
    async fn woken(wake: &Wake) -> bool {
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
        let pending = store.pending_forge_events::<ForgeEvent>(10).await.unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|(_, e)| e.as_ref().expect("readable").clone())
                .collect::<Vec<_>>(),
            vec![ForgeEvent::Push {
                branch: "main".to_owned(),
                after: SHA.to_owned()
            }]
        );
        let replay = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(replay, (200, "duplicate delivery\n".to_owned()));
        assert!(!woken(&wake).await, "a replay wakes nothing");
        assert_eq!(
            store
                .pending_forge_events::<ForgeEvent>(10)
                .await
                .unwrap()
                .len(),
            1
        );
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
        assert!(
            store
                .pending_forge_events::<ForgeEvent>(10)
                .await
                .unwrap()
                .is_empty()
        );
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
        assert!(
            store
                .pending_forge_events::<ForgeEvent>(10)
                .await
                .unwrap()
                .is_empty()
        );
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
        assert!(
            store
                .pending_forge_events::<ForgeEvent>(10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_as_too_large() {
        let (_dir, store, _wake, router) = hooked().await;
        let body = vec![b' '; WEBHOOK_BODY_LIMIT + 1];
        let signature = webhook::sign(SECRET, &body);
        let (status, _) = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(status, 413);
        assert!(
            store
                .pending_forge_events::<ForgeEvent>(10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn without_a_secret_there_is_no_webhook_route() {
        let (_dir, store) = store().await;
        let router = router(state(store));
        let body = push_body();
        let signature = webhook::sign(SECRET, &body);
        let (status, _) = deliver(&router, Some("push"), Some("d-1"), Some(signature), body).await;
        assert_eq!(status, 404);
    }
}
