//! The health, status and metrics endpoints (`--http-addr`), on their own thread.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::{oneshot, watch};
use tracing::info;

use super::AgentError;
use crate::{
    config::Cli,
    status::{
        self, AgentState,
        http::{HttpError, Limits},
    },
};

pub struct Endpoints {
    /// Where they listen (their traffic makes no records).
    pub listening: Option<SocketAddr>,
    /// The server's end.
    pub done: Option<oneshot::Receiver<Result<(), HttpError>>>,
}

impl Endpoints {
    pub fn start(
        cli: &Cli,
        state: &Arc<AgentState>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, AgentError> {
        let Some(addr) = cli.http_addr.0 else {
            return Ok(Self {
                listening: None,
                done: None,
            });
        };
        let limits = Limits {
            max: cli.http_max_connections as usize,
            idle: cli.http_idle_timeout,
            header: cli
                .http_idle_timeout
                .min(std::time::Duration::from_secs(10)),
        };
        let (local, done) = status::http::spawn(addr, limits, state.clone(), stop)?;
        info!("http: listening on {local} (/health/live, /health/ready, /health/status, /metrics)");
        Ok(Self {
            listening: Some(local),
            done: Some(done),
        })
    }
}
