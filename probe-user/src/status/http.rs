//! HTTP endpoints: /health/live, /health/ready, /health/status (JSON), /metrics.
//!
//! Health and metrics answer anyone who reaches the address (kubelet probes, Prometheus).
//! `/health/status` carries the effective configuration and answers loopback clients only
//! (`kubectl port-forward`, `kubectl exec ... curl localhost`): a DaemonSet on
//! `hostNetwork` would otherwise show it on every node IP.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{ConnectInfo, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use thiserror::Error;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};

use super::AgentState;
pub use super::http_conn::Limits;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("--http-addr {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the HTTP thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The endpoints on their own thread and runtime: a kubelet probe is answered while the
/// event pipeline is busy with a burst (on the agent's runtime it would wait for the
/// consumer's turn). Returns the bound address and a receiver of the server's end.
pub fn spawn(
    addr: SocketAddr,
    limits: Limits,
    state: Arc<AgentState>,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, oneshot::Receiver<Result<(), HttpError>>), HttpError> {
    let (bound_tx, bound_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(HttpError::Thread(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match bind(addr, limits, state, stop).await {
                    Ok((local, serve)) => {
                        let _ = bound_tx.send(Ok(local));
                        let _ = done_tx.send(serve.await);
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(HttpError::Thread)?;
    let local = bound_rx.recv().map_err(|_| {
        HttpError::Thread(std::io::Error::other(
            "the HTTP thread ended before binding",
        ))
    })??;
    Ok((local, done_rx))
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

async fn status(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> axum::response::Response {
    // IPv4-mapped IPv6 as IPv4: a `[::]` listener sees IPv4 clients as ::ffff:a.b.c.d.
    if !peer.ip().to_canonical().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "/health/status answers loopback clients only: use kubectl port-forward or \
             kubectl exec (health: /health/live, /health/ready; metrics: /metrics)\n",
        )
            .into_response();
    }
    Json(state.status()).into_response()
}

/// OpenMetrics (with exemplars) to a scraper that asks for it, as Prometheus does; the
/// classic text format to anything else.
async fn metrics(
    State(state): State<Arc<AgentState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let text = state.metrics.encode();
    if super::exposition::wants_openmetrics(accept) {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            super::exposition::classic(&text),
        )
    }
}

/// Binds `addr` (errors name the flag) and returns the bound address and the server future.
async fn bind(
    addr: SocketAddr,
    limits: Limits,
    state: Arc<AgentState>,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, impl Future<Output = Result<(), HttpError>>), HttpError> {
    let listener = match TcpListener::bind(addr).await {
        // `[::]` (every address, both families) on a node booted with IPv6 disabled: every
        // IPv4 address instead, rather than no health endpoint at all.
        Err(e)
            if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(
                "--http-addr {addr}: IPv6 is disabled on this node ({e}); listening on {v4}"
            );
            TcpListener::bind(v4)
                .await
                .map_err(|source| HttpError::Bind { addr: v4, source })?
        }
        other => other.map_err(|source| HttpError::Bind { addr, source })?,
    };
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let metrics = state.metrics.http_connections.clone();
    let serve = async move {
        super::http_conn::serve(listener, router(state), limits, metrics, stop).await;
        Ok(())
    };
    Ok((local, serve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_answers_loopback_clients_only() {
        let state = Arc::new(AgentState::new(serde_json::json!({}), vec![]));
        for (peer, code) in [
            ("127.0.0.1:40000", StatusCode::OK),
            ("[::1]:40000", StatusCode::OK),
            ("[::ffff:127.0.0.1]:40000", StatusCode::OK),
            ("10.0.3.7:40000", StatusCode::FORBIDDEN),
            ("[fd00::7]:40000", StatusCode::FORBIDDEN),
            ("[::ffff:10.0.3.7]:40000", StatusCode::FORBIDDEN),
        ] {
            let response = status(State(state.clone()), ConnectInfo(peer.parse().unwrap())).await;
            assert_eq!(response.status(), code, "{peer}");
        }
    }
}
