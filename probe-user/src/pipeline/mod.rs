//! The event pipeline: ring buffer (via tokio `AsyncFd`) -> checked decode -> bounded channel
//! (`try_send`, drops counted) -> enrichment -> sinks. Losses from every source are turned into
//! periodic `loss` records, and a final one at shutdown, so nothing is lost silently.

use std::sync::atomic::AtomicU64;

use thiserror::Error;

mod losses;
mod reader;
pub mod spans;
mod stages;
mod timer;

pub use self::{
    losses::LossTracker,
    reader::{EventRing, read_events},
    stages::{Stages, StagesConfig, WasmCgroupMap, consume},
};
use crate::{decode::Decoded, model::Record};

/// What the consumer's channel carries: kernel events (decoded from the ring buffer), which
/// go through the event stages, and records other sources made (ctnetlink: conntrack
/// expiries, settings and table findings), which go straight to the hold-back and the sinks.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "kernel events are the hot path: not boxed; the rare source records are"
)]
pub enum Event {
    Kernel(Decoded),
    Record(Box<Record>),
}

impl Event {
    /// The payload bytes the event carries beyond its fixed size (a Wasm write's chunk): what
    /// the channel's byte budget counts.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Self::Kernel(Decoded {
                body: crate::model::Body::WasmWrite(w),
                ..
            }) => w.data.len(),
            _ => 0,
        }
    }
}

/// Payload bytes the channel holds at most (its records are bounded by `--queue-size`): Wasm
/// chunks beyond it are dropped and counted like a full channel's.
pub const CHANNEL_PAYLOAD_MAX: usize = 32 << 20;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("polling the event ring buffer: {0}")]
    Poll(#[source] std::io::Error),
    #[error("writing to the output: {0}")]
    Sink(#[source] std::io::Error),
}

/// Counters shared by the pipeline stages.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events dropped because the channel to the sinks was full (in events, or in payload
    /// bytes: [`CHANNEL_PAYLOAD_MAX`]).
    pub channel_drops: AtomicU64,
    /// Payload bytes in the channel now.
    pub channel_bytes: std::sync::atomic::AtomicUsize,
    /// Records that failed the checked decode.
    pub decode_errors: AtomicU64,
    /// ctnetlink overruns (ENOBUFS): conntrack events the kernel could not queue for us.
    pub netlink_overruns: AtomicU64,
    /// TCP conntrack DESTROY events without the entry's TCP state (kernels whose destroy
    /// events carry none: an expiry cannot be told from other ends there).
    pub conntrack_destroys_without_state: AtomicU64,
}

/// Loss slot of netlink overruns (their events are conntrack expiries).
const NETLINK_SLOT: u32 = u32::MAX - 1;
