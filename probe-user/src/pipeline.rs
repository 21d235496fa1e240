//! The event pipeline: ring buffer (via tokio `AsyncFd`) -> checked decode -> bounded channel
//! (`try_send`, drops counted) -> enrichment -> sinks. Losses from every source are turned into
//! periodic `loss` records, and a final one at shutdown, so nothing is lost silently.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use probe_common::LOSS_SLOTS;
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::debug;

use crate::{
    decode::{Common, Decoded, Kind, SymbolTables, decode},
    enrich::{
        Enricher, boottime_ns,
        conntrack::FlowCorrelator,
        core_signal::CoreJoin,
        drops::DropTotals,
        k8s::attrs::{K8sEnricher, Verdict},
        trace_context::TraceContexts,
        wasm_output::WasmAssembler,
    },
    export::Sink,
    model::{Body, Finding, Loss, LossSource, Record, WasmOutput},
    status::{AgentState, KindLabel, LossLabel},
};

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
    /// Events dropped because the channel to the sinks was full.
    pub channel_drops: AtomicU64,
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

/// Reads the ring buffer until `shutdown` turns true, then drains what is left and returns
/// (dropping the sender, which ends the consumer).
pub async fn read_events(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Decoded>,
    tables: Arc<SymbolTables>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns the ring buffer,
    // and `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| PipelineError::Poll(e.into()))?;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            // Below the wake-up threshold the kernel does not notify: poll.
            _ = poll.tick() => {
                drain(fd.get_mut(), &tx, &tables, &counters, usize::MAX);
            }
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(PipelineError::Poll)?;
                if drain(guard.get_inner_mut(), &tx, &tables, &counters, BATCH) {
                    guard.clear_ready();
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                drain(fd.get_mut(), &tx, &tables, &counters, usize::MAX);
                return Ok(());
            }
        }
        // Let the consumer (on the same thread) take this batch.
        tokio::task::yield_now().await;
    }
}

/// How often the reader looks at the ring buffer without being woken (the kernel wakes it
/// only once a sixteenth of the buffer is unread): the bound on added latency.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Records handled per wake-up before the reader yields.
const BATCH: usize = 1024;

/// Moves up to `limit` records from the ring buffer to the channel; true when it is empty.
fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Decoded>,
    tables: &SymbolTables,
    counters: &Counters,
    limit: usize,
) -> bool {
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return true;
        };
        match decode(&item, tables) {
            Ok(event) => {
                if tx.try_send(event).is_err() {
                    counters.channel_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                debug!("dropping a kernel record: {e}");
                counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    false
}

/// Totals of kernel-side losses per slot (slot = event kind).
pub trait KernelLosses: Send {
    fn totals(&self) -> Vec<u64>;
}

impl KernelLosses for PerCpuArray<MapData, u64> {
    fn totals(&self) -> Vec<u64> {
        (0..LOSS_SLOTS)
            .map(|slot| {
                self.get(&slot, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Turns loss counters into `loss` records holding the increase since the previous poll.
pub struct LossTracker {
    kernel: Box<dyn KernelLosses>,
    counters: Arc<Counters>,
    last: HashMap<(LossSource, u32), u64>,
    outputs: Vec<Arc<crate::export::queued::Output>>,
}

impl LossTracker {
    pub fn new(kernel: Box<dyn KernelLosses>, counters: Arc<Counters>) -> Self {
        Self {
            kernel,
            counters,
            last: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// Counts what a queued output loses as `source: <its name>`.
    pub fn watch_output(&mut self, output: Arc<crate::export::queued::Output>) {
        self.outputs.push(output);
    }

    pub fn poll(&mut self) -> Vec<Loss> {
        let mut current: Vec<(LossSource, u32, u64)> = self
            .kernel
            .totals()
            .into_iter()
            .enumerate()
            .map(|(slot, total)| (LossSource::Ringbuf, slot as u32, total))
            .collect();
        current.push((
            LossSource::Channel,
            u32::MAX,
            self.counters.channel_drops.load(Ordering::Relaxed),
        ));
        current.push((
            LossSource::Decode,
            u32::MAX,
            self.counters.decode_errors.load(Ordering::Relaxed),
        ));
        current.push((
            LossSource::Netlink,
            NETLINK_SLOT,
            self.counters.netlink_overruns.load(Ordering::Relaxed),
        ));
        for o in &self.outputs {
            current.push((
                LossSource::Output(o.name),
                u32::MAX,
                o.lost.load(Ordering::Relaxed),
            ));
        }
        current
            .into_iter()
            .filter_map(|(source, slot, total)| {
                let last = self.last.insert((source, slot), total).unwrap_or(0);
                (total > last).then(|| Loss {
                    source,
                    count: total - last,
                    lost_kind: slot_kind(slot),
                })
            })
            .collect()
    }
}

fn slot_kind(slot: u32) -> Option<&'static str> {
    if slot == NETLINK_SLOT {
        return Some("conntrack_expiry");
    }
    match Kind::try_from(slot).ok()? {
        Kind::TcpReset => Some("tcp_reset"),
        Kind::CoreSignal => Some("core_signal"),
        Kind::ProcessExit => Some("process_exit"),
        Kind::WasmWrite => Some("wasm_write"),
        Kind::WasmWriteResult => Some("wasm_write_result"),
        Kind::PacketDrop => Some("packet_drop"),
        Kind::HttpRequest => Some("http_request"),
    }
}

/// The consumer's stateful parts.
pub struct Stages {
    pub enricher: Enricher,
    pub sink: Box<dyn Sink>,
    pub losses: LossTracker,
    pub loss_interval: Duration,
    pub core_join: CoreJoin,
    pub wasm: WasmAssembler,
    pub drops: DropTotals,
    pub flows: FlowCorrelator,
    pub k8s: K8sEnricher,
    /// Records of pods the Kubernetes cache does not know yet, with their deadline.
    pub held: std::collections::VecDeque<(Instant, Record)>,
    /// The kernel's map of captured cgroups, and what the agent put there.
    pub wasm_cgroups: Option<Box<dyn WasmCgroupMap>>,
    pub fed_wasm_cgroups: std::collections::HashSet<u64>,
    pub traces: TraceContexts,
    /// How long the records left at shutdown may wait for room in a queued output.
    pub drain_for: Duration,
    /// The agent's own HTTP endpoint: its traffic makes no records.
    pub own: Option<crate::enrich::own_traffic::OwnEndpoint>,
    /// The `probe_events_total` counter of each kind (no label allocation per record).
    pub event_counters: HashMap<&'static str, prometheus_client::metrics::counter::Counter>,
    pub state: Arc<AgentState>,
}

/// The kernel map of cgroups whose processes' stdout/stderr is captured.
pub trait WasmCgroupMap: Send {
    fn add(&mut self, id: u64) -> Result<(), String>;
    fn remove(&mut self, id: u64) -> Result<(), String>;
}

impl WasmCgroupMap for crate::loader::WasmCgroups {
    fn add(&mut self, id: u64) -> Result<(), String> {
        self.insert(id, probe_common::RUNTIME_BY_CGROUP, 0)
            .map_err(|e| e.to_string())
    }
    fn remove(&mut self, id: u64) -> Result<(), String> {
        aya::maps::HashMap::remove(self, &id).map_err(|e| e.to_string())
    }
}

/// How long a record waits for its pod to reach the cache.
const HOLD_FOR: Duration = Duration::from_secs(2);
/// Records held at once; beyond that they go out unenriched.
const HOLD_MAX: usize = 4096;

impl Stages {
    /// Enriches with Kubernetes metadata (holding records whose pod is not cached yet), then
    /// writes.
    fn write(&mut self, records: Vec<Record>) -> std::io::Result<()> {
        let now = Instant::now();
        let mut ready = Vec::with_capacity(records.len());
        for mut record in records {
            match self.k8s.enrich(&mut record, now) {
                Verdict::PodNotCached(_) if self.held.len() < HOLD_MAX => {
                    self.held.push_back((now + HOLD_FOR, record));
                }
                _ => ready.push(record),
            }
        }
        self.emit(ready, now)
    }

    /// Held records whose pod arrived, or whose wait is over (`all`: every one, at shutdown).
    fn release_held(&mut self, now: Instant, all: bool) -> std::io::Result<()> {
        let mut out = Vec::new();
        let mut keep = std::collections::VecDeque::new();
        while let Some((deadline, mut record)) = self.held.pop_front() {
            let verdict = self.k8s.enrich(&mut record, now);
            if verdict == Verdict::Done || all || now >= deadline {
                out.push(record);
            } else {
                keep.push_back((deadline, record));
            }
        }
        self.held = keep;
        self.emit(out, now)
    }

    fn emit(&mut self, mut records: Vec<Record>, now: Instant) -> std::io::Result<()> {
        for record in &mut records {
            self.traces.apply(record, now);
        }
        for record in records {
            self.sink.write(&record)?;
            let state = &self.state;
            self.event_counters
                .entry(record.kind)
                .or_insert_with(|| {
                    state
                        .metrics
                        .events
                        .get_or_create(&KindLabel {
                            kind: record.kind.into(),
                        })
                        .clone()
                })
                .inc();
            // Last: the correlator keeps the records it needs (moved, not copied).
            self.flows.observe(record, now);
        }
        Ok(())
    }

    /// Loss records for what was lost since the last report, then a flush.
    fn report_losses(&mut self) -> std::io::Result<()> {
        self.state.metrics.conntrack_destroys_without_state.set(
            self.losses
                .counters
                .conntrack_destroys_without_state
                .load(Ordering::Relaxed) as i64,
        );
        let mut records = Vec::new();
        for loss in self.losses.poll() {
            let labels = LossLabel {
                source: loss.source.name().into(),
                kind: loss.lost_kind.unwrap_or("unknown").into(),
            };
            self.state
                .metrics
                .losses
                .get_or_create(&labels)
                .inc_by(loss.count);
            records.push(self.enricher.agent_record(Body::Loss(loss)));
        }
        self.write(records)?;
        self.sink.flush()
    }

    fn wasm_records(&self, lines: Vec<(Common, WasmOutput)>) -> Vec<Record> {
        lines
            .into_iter()
            .map(|(common, line)| {
                self.enricher.kernel_event(Decoded {
                    common,
                    body: Body::WasmOutput(line),
                })
            })
            .collect()
    }

    fn handle(&mut self, event: Decoded) -> std::io::Result<()> {
        if self
            .own
            .is_some_and(|own| own.owns(event.common.netns, &event.body))
        {
            self.state.metrics.own_traffic_skipped.inc();
            return Ok(());
        }
        let records = match event.body {
            Body::ProcessExit(exit) => {
                let mut records = self.core_join.on_exit(event.common.pid, exit);
                if let Some(pid) = event.common.pid {
                    let lines = self.wasm.on_exit(pid);
                    records.extend(self.wasm_records(lines));
                }
                records
            }
            Body::HttpRequest(req) => {
                self.traces.on_request(&req, Instant::now());
                Vec::new()
            }
            Body::WasmWrite(chunk) => {
                self.wasm.on_chunk(event.common, chunk);
                Vec::new()
            }
            Body::WasmWriteResult(r) => {
                let lines =
                    self.wasm
                        .on_result(&event.common, r.fd, r.result, r.fd_kind, Instant::now());
                self.wasm_records(lines)
            }
            Body::PacketDrop(drop) => self
                .drops
                .on_event(event.common, drop, Instant::now())
                .map(|(common, drop)| {
                    self.enricher.kernel_event(Decoded {
                        common,
                        body: Body::PacketDrop(drop),
                    })
                })
                .into_iter()
                .collect(),
            Body::CoreSignal(_) => self
                .core_join
                .on_signal(self.enricher.kernel_event(event), Instant::now())
                .into_iter()
                .collect(),
            _ => vec![self.enricher.kernel_event(event)],
        };
        self.write(records)
    }

    /// Timed work: core signals whose wait ran out, idle Wasm lines, drop tails, findings,
    /// records waiting for their pod.
    fn timed(&mut self, now: Instant) -> std::io::Result<()> {
        self.release_held(now, false)?;
        self.feed_wasm_cgroups(now);
        let mut due = self.core_join.expire(now);
        let idle = self.wasm.flush_idle(now);
        due.extend(self.wasm_records(idle));
        for (common, drop) in self.drops.sweep(now, boottime_ns()) {
            due.push(self.enricher.kernel_event(Decoded {
                common,
                body: Body::PacketDrop(drop),
            }));
        }
        self.write(due)?;
        let findings = self.flows.due(now, self.enricher.node());
        let records = self.finding_records(findings);
        self.write(records)?;
        self.state
            .metrics
            .conntrack_flows_evicted
            .inner()
            .store(self.flows.evictions, Ordering::Relaxed);
        self.sink.flush()
    }

    fn finding_records(&self, findings: Vec<(Option<u32>, Finding)>) -> Vec<Record> {
        findings
            .into_iter()
            .map(|(netns, f)| {
                let mut r = self.enricher.agent_record(Body::Finding(f));
                r.common.netns = netns;
                r
            })
            .collect()
    }

    /// Keeps the kernel's captured cgroups equal to the Wasm pods' container cgroups.
    fn feed_wasm_cgroups(&mut self, now: Instant) {
        let Some(map) = self.wasm_cgroups.as_mut() else {
            return;
        };
        let Some(want) = self.k8s.wasm_cgroups(now) else {
            return;
        };
        for id in want.difference(&self.fed_wasm_cgroups) {
            if let Err(e) = map.add(*id) {
                tracing::warn!("capturing Wasm pod cgroup {id}: {e}");
            }
        }
        for id in self.fed_wasm_cgroups.difference(&want) {
            if let Err(e) = map.remove(*id) {
                debug!("releasing cgroup {id}: {e}");
            }
        }
        self.k8s.set_wasm_cgroup_count(want.len());
        self.fed_wasm_cgroups = want;
    }

    fn timed_work_pending(&self, now: Instant) -> bool {
        self.core_join.pending() > 0
            || self.wasm.buffered() > 0
            || self.flows.pending() > 0
            || self.drops.active(now)
            || !self.held.is_empty()
            || !self.fed_wasm_cgroups.is_empty()
            || self.k8s.has_wasm_pods()
    }

    fn update_gauges(&self, queue_depth: usize) {
        let m = &self.state.metrics;
        m.queue_depth
            .set(i64::try_from(queue_depth).unwrap_or(i64::MAX));
        m.pending_core_signals
            .set(i64::try_from(self.core_join.pending()).unwrap_or(i64::MAX));
    }
}

/// Writes events to the sink until the channel closes, with a loss report every
/// `loss_interval` and a final one at the end. Core signals wait in the join for their
/// target's exit.
pub async fn consume(
    mut rx: mpsc::Receiver<Decoded>,
    mut stages: Stages,
) -> Result<(), PipelineError> {
    let result = consume_loop(&mut rx, &mut stages).await;
    if let Err(e) = &result {
        stages
            .state
            .set_exporter_state("failed", Some(e.to_string()));
    }
    result
}

async fn consume_loop(
    rx: &mut mpsc::Receiver<Decoded>,
    stages: &mut Stages,
) -> Result<(), PipelineError> {
    let mut tick = tokio::time::interval(stages.loss_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let mut join_tick = tokio::time::interval(Duration::from_millis(250));
    join_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => stages.report_losses().map_err(PipelineError::Sink)?,
            _ = join_tick.tick(), if stages.timed_work_pending(Instant::now()) => {
                stages.timed(Instant::now()).map_err(PipelineError::Sink)?;
                stages.update_gauges(rx.len());
            }
            event = rx.recv() => {
                let Some(event) = event else { break };
                stages.handle(event).map_err(PipelineError::Sink)?;
                if rx.is_empty() {
                    stages.sink.flush().map_err(PipelineError::Sink)?;
                }
                stages.update_gauges(rx.len());
            }
        }
    }
    // The last records and the final loss report wait for room in a queued output.
    stages
        .sink
        .finish(std::time::Instant::now() + stages.drain_for);
    let mut held = stages.core_join.drain();
    let lines = stages.wasm.drain();
    held.extend(stages.wasm_records(lines));
    stages.write(held).map_err(PipelineError::Sink)?;
    let tail: Vec<Record> = stages
        .drops
        .final_sweep(Instant::now(), boottime_ns())
        .into_iter()
        .map(|(common, drop)| {
            stages.enricher.kernel_event(Decoded {
                common,
                body: Body::PacketDrop(drop),
            })
        })
        .collect();
    stages.write(tail).map_err(PipelineError::Sink)?;
    // Findings with evidence go out now instead of after their grace period.
    let findings = stages.flows.due(
        Instant::now() + Duration::from_secs(3600),
        stages.enricher.node(),
    );
    let records = stages.finding_records(findings);
    stages.write(records).map_err(PipelineError::Sink)?;
    stages
        .release_held(Instant::now(), true)
        .map_err(PipelineError::Sink)?;
    stages.report_losses().map_err(PipelineError::Sink)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Scripted(Arc<Mutex<Vec<u64>>>);
    impl KernelLosses for Scripted {
        fn totals(&self) -> Vec<u64> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn loss_records_carry_deltas_per_source() {
        let kernel = Arc::new(Mutex::new(vec![0, 5, 0]));
        let counters = Arc::new(Counters::default());
        let mut t = LossTracker::new(Box::new(Scripted(kernel.clone())), counters.clone());
        assert_eq!(
            t.poll(),
            vec![Loss {
                source: LossSource::Ringbuf,
                count: 5,
                lost_kind: Some("tcp_reset")
            }]
        );
        assert_eq!(t.poll(), vec![]);
        kernel.lock().unwrap()[1] = 8;
        counters.channel_drops.store(3, Ordering::Relaxed);
        counters.decode_errors.store(1, Ordering::Relaxed);
        assert_eq!(
            t.poll(),
            vec![
                Loss {
                    source: LossSource::Ringbuf,
                    count: 3,
                    lost_kind: Some("tcp_reset")
                },
                Loss {
                    source: LossSource::Channel,
                    count: 3,
                    lost_kind: None
                },
                Loss {
                    source: LossSource::Decode,
                    count: 1,
                    lost_kind: None
                },
            ]
        );
    }
}
