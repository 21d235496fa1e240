//! HTTP endpoints: /health/live, /health/ready, /health/status (JSON), /metrics.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use thiserror::Error;
use tokio::{net::TcpListener, sync::watch};

use super::AgentState;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("--http-addr {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/health/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached or stopping\n",
        )
    }
}

async fn status(State(state): State<Arc<AgentState>>) -> Json<serde_json::Value> {
    Json(state.status())
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Binds `addr` (errors name the flag) and returns the bound address and the server future.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<AgentState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, impl Future<Output = Result<(), HttpError>>), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let serve = async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(HttpError::Serve)
    };
    Ok((local, serve))
}
