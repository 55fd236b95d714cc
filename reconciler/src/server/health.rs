//! Liveness, readiness and metrics: the loop is not stuck in a pass; the store answers; what
//! the loops counted, as OpenMetrics text.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// How long readiness waits for the store before it answers "not ready".
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.busy_for() {
        Some(busy) if busy > state.pass_bound => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stuck: a pass of the service loop has run for {}s (bound {}s)\n",
                busy.as_secs(),
                state.pass_bound.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok\n".to_owned()),
    }
}

pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
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

/// The service's metrics, in the OpenMetrics text format Prometheus scrapes.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
