//! Enrichment: turns decoded kernel events into records with wall-clock time, the node name
//! and node settings that explain them (core_pattern); Kubernetes metadata (`k8s/`), the
//! conntrack joins, drop counts, core-signal and Wasm line assembly.

pub mod connect;
pub mod conntrack;
pub mod core_signal;
pub mod drops;
pub mod folds;
pub mod http2;
pub mod k8s;
pub mod own_traffic;
mod recent;
pub mod trace_context;
pub mod wasm_output;

use crate::{
    decode::{Common, Decoded},
    model::{Body, Record},
};

/// How often timed work (joins, held records) runs while any is pending.
pub const TICK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// One step of the event path. The pipeline offers each event to its stages in order: a stage
/// takes it (returns `None`, having pushed the records it makes of it now to `out`, if any) or
/// passes it on, observed or not. Records a stage makes later come from `on_tick` (within
/// `tick_within` while it has `pending` work: [`TICK_EVERY`] unless the stage says
/// otherwise) and, at shutdown, from `drain`. An event no stage
/// takes becomes one record as it is. A new event kind needs its ABI struct (probe-common),
/// its decode (decode/), its record body (model/) and, when it is more than one record per
/// event, one stage file here.
pub trait Stage: Send {
    /// Whether `on_event` is to be offered this event (by reference: the event is moved into
    /// `on_event` only when the stage has something to do with it).
    fn wants(&self, _event: &Decoded) -> bool {
        true
    }
    fn on_event(&mut self, event: Decoded, cx: &Enricher, out: &mut Vec<Record>)
    -> Option<Decoded>;
    fn pending(&self, _now: std::time::Instant) -> bool {
        false
    }
    /// How soon its pending work wants the next `on_tick`: a timer wake-up costs more than
    /// tens of records, so a stage whose work is due once a second says so.
    fn tick_within(&self, _now: std::time::Instant) -> std::time::Duration {
        TICK_EVERY
    }
    fn on_tick(&mut self, _now: std::time::Instant, _cx: &Enricher, _out: &mut Vec<Record>) {}
    fn drain(&mut self, _cx: &Enricher, _out: &mut Vec<Record>) {}
    /// Every record on its way out (whichever stage made it), before the sinks.
    fn on_record(&mut self, _record: &mut Record, _now: std::time::Instant) {}
    /// Whether the stage wants the records after the sinks (`on_written`): the others are
    /// not handed (moved) every record.
    fn wants_written(&self) -> bool {
        false
    }
    /// Every record after the sinks wrote it, in stage order, for a stage that wants them: one
    /// that keeps it (moved, not copied) returns `None`.
    fn on_written(&mut self, record: Record, _now: std::time::Instant) -> Option<Record> {
        Some(record)
    }
    /// Its gauges in the status document and metrics (after each batch).
    fn report(&self, _state: &crate::status::AgentState) {}
}

/// What the event stages are built from.
pub struct StageConfig {
    /// The agent's HTTP endpoint, whose traffic makes no records.
    pub own_endpoint: Option<std::net::SocketAddr>,
    pub own_skipped: prometheus_client::metrics::counter::Counter,
    /// Request heads taken by the trace tie.
    pub http_requests: prometheus_client::metrics::counter::Counter,
    /// Records left out of any trace because their process served several requests then.
    pub trace_ties_ambiguous: prometheus_client::metrics::counter::Counter,
    /// HTTP/2 header blocks decoded, tables that became unknown, uninstrumented connections.
    pub http2: http2::Http2Counters,
    pub wasm_runtimes: Vec<String>,
    pub wasm_line_idle: std::time::Duration,
    /// The most bytes of one Wasm output record.
    pub wasm_line_max: usize,
    pub core_wait: std::time::Duration,
    pub core_join_capacity: usize,
    /// Connections whose request context is kept.
    pub flows: usize,
    pub drop_flows: Option<Box<dyn drops::DropMap>>,
    /// The kernel's storm-folding counts, and the names of reset reasons for the summaries.
    pub folds: Option<Box<dyn folds::FoldMap>>,
    pub tables: std::sync::Arc<crate::decode::SymbolTables>,
    /// Conntrack expiries joined with what followed, when a namespace is watched: the window
    /// and the number of expired flows remembered.
    pub conntrack_flows: Option<(std::time::Duration, usize)>,
    /// The Kubernetes cache, for the Services connects fail to, and the node's name.
    pub k8s: Option<std::sync::Arc<k8s::K8sCache>>,
    pub node: std::sync::Arc<str>,
}

/// The event path in order: the agent's own traffic out first; HTTP/2 header blocks decoded
/// into requests; request heads kept for the trace tie; Wasm chunks into lines (which also flushes a process's lines at its exit);
/// core signals joined with exits; drop totals into per-flow counts; folded resets into
/// summaries; after the sinks, connect failures joined with their drops and Service into
/// findings, and last conntrack expiries joined with the resets and drops that followed.
pub fn event_stages(c: StageConfig) -> Vec<Box<dyn Stage>> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    if let Some(listen) = c.own_endpoint {
        stages.push(Box::new(own_traffic::OwnTraffic {
            endpoint: own_traffic::OwnEndpoint::new(listen),
            skipped: c.own_skipped,
        }));
    }
    stages.push(Box::new(http2::Http2Headers::new(
        http2::CONNECTIONS,
        c.http2,
    )));
    stages.push(Box::new(trace_context::TraceContexts::new(
        c.flows,
        c.http_requests,
        c.trace_ties_ambiguous,
    )));
    stages.push(Box::new(wasm_output::WasmAssembler::new(
        c.wasm_runtimes,
        c.wasm_line_idle,
        c.wasm_line_max,
        wasm_output::proc_fd_resolver(),
    )));
    stages.push(Box::new(core_signal::CoreJoin::new(
        c.core_wait,
        c.core_join_capacity,
    )));
    stages.push(Box::new(drops::DropTotals::new(c.drop_flows)));
    stages.push(Box::new(folds::FoldTotals::new(c.folds, c.tables)));
    stages.push(Box::new(connect::ConnectCauses::new(c.k8s, c.node)));
    if let Some((window, capacity)) = c.conntrack_flows {
        stages.push(Box::new(conntrack::FlowCorrelator::new(window, capacity)));
    }
    stages
}

/// Adds node-level context to events.
#[derive(Debug, Clone)]
pub struct Enricher {
    node: std::sync::Arc<str>,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in ns, sampled at start.
    boot_to_wall_ns: i128,
}

impl Enricher {
    pub fn new(node: String) -> Self {
        Self {
            node: node.into(),
            boot_to_wall_ns: i128::from(crate::clock::now_ns(libc::CLOCK_REALTIME))
                - i128::from(crate::clock::now_ns(libc::CLOCK_BOOTTIME)),
        }
    }

    #[cfg(test)]
    pub fn fixed(node: &str, boot_to_wall_ns: i128) -> Self {
        Self {
            node: node.into(),
            boot_to_wall_ns,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Wall-clock ns of a kernel `bpf_ktime_get_boot_ns()` timestamp.
    pub fn wall_time(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.boot_to_wall_ns).unwrap_or(0)
    }

    /// Records of events a stage rebuilt from their parts (a Wasm line, a drop count).
    pub fn kernel_events<T>(
        &self,
        parts: impl IntoIterator<Item = (Common, T)>,
        body: fn(T) -> Body,
    ) -> impl Iterator<Item = Record> {
        parts.into_iter().map(move |(common, part)| {
            self.kernel_event(Decoded {
                common,
                body: body(part),
            })
        })
    }

    pub fn kernel_event(&self, mut event: Decoded) -> Record {
        if let Body::CoreSignal(c) = &mut event.body {
            c.core_pattern = read_sysctl("kernel/core_pattern");
            c.core_uses_pid = read_sysctl("kernel/core_uses_pid").map(|v| v != "0");
        }
        Record {
            time_unix_nano: self.wall_time(event.common.ktime_ns),
            kind: event.body.kind(),
            node: self.node.clone(),
            common: event.common,
            body: event.body,
            k8s: None,
            trace: None,
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }

    /// A record made by the agent itself (loss records), stamped now.
    pub fn agent_record(&self, body: Body) -> Record {
        Record {
            time_unix_nano: u64::try_from(crate::clock::now_ns(libc::CLOCK_REALTIME)).unwrap_or(0),
            kind: body.kind(),
            node: self.node.clone(),
            common: Common::none(),
            body,
            k8s: None,
            trace: None,
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }
}

/// A sysctl's value from /proc/sys, without the trailing newline.
pub fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()
        .map(|v| v.trim_end_matches('\n').to_owned())
}

/// Now on the kernel's event clock (CLOCK_BOOTTIME), for records made in userspace.
pub use crate::clock::boottime_ns;

/// The node name: `--node-name`/NODE_NAME, else the kernel's hostname.
pub fn default_node_name() -> String {
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let raw: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_to_wall_clock() {
        let e = Enricher::fixed("n1", 1_700_000_000_000_000_000);
        assert_eq!(e.wall_time(5), 1_700_000_000_000_000_005);
        let live = Enricher::new("n".into());
        let now = u64::try_from(crate::clock::now_ns(libc::CLOCK_REALTIME)).unwrap();
        let t = live.wall_time(u64::try_from(crate::clock::now_ns(libc::CLOCK_BOOTTIME)).unwrap());
        assert!(t.abs_diff(now) < 1_000_000_000, "{t} vs {now}");
    }
}
