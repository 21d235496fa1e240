//! The consumer: each event through the stages (enrich::Stage) into records, records through
//! the Kubernetes hold-back and the sinks, then back to the stages (the findings correlator
//! keeps what it joins); timed work, loss
//! reports and the drain at shutdown.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::debug;

use super::{Event, LossTracker, PipelineError, timer::TimerFd};
use crate::{
    enrich::{
        Enricher, Stage, TICK_EVERY,
        k8s::attrs::{K8sEnricher, Verdict},
    },
    export::Sink,
    model::{Body, Record},
    status::AgentState,
};

/// The consumer's stateful parts.
pub struct Stages {
    pub enricher: Enricher,
    pub sink: Box<dyn Sink>,
    pub losses: LossTracker,
    pub loss_interval: Duration,
    /// The event path, in order: each event is offered to these until one takes it.
    pub stages: Vec<Box<dyn Stage>>,
    pub k8s: K8sEnricher,
    /// Records of pods the Kubernetes cache does not know yet, with their deadline.
    pub held: std::collections::VecDeque<(Instant, Record)>,
    /// The kernel's map of captured cgroups, and what the agent put there.
    pub wasm_cgroups: Option<Box<dyn WasmCgroupMap>>,
    pub fed_wasm_cgroups: std::collections::HashSet<u64>,
    /// How many cgroups are captured, for the write gate (hooks attached while any is).
    pub wasm_cgroup_count: Arc<std::sync::atomic::AtomicUsize>,
    /// How long the records left at shutdown may wait for room in a queued output.
    pub drain_for: Duration,
    /// The `probe_events_total` counter of each kind (no label allocation per record).
    pub event_counters: Vec<(&'static str, prometheus_client::metrics::counter::Counter)>,
    /// The kernel's exact event counts into the metrics per pod.
    pub counts: Option<crate::counts::EventCounter>,
    /// Each record's span ID, and the OTLP budget.
    pub spans: super::spans::SpanChooser,
    /// How often the event metrics go to the outputs that export them (OTLP), and when they
    /// last did.
    pub metrics_every: Duration,
    pub metrics_sent: Option<Instant>,
    pub state: Arc<AgentState>,
}

/// What the consumer is built from; the rest of [`Stages`] is its own state.
pub struct StagesConfig {
    pub spans: super::spans::SpanChooser,
    pub enricher: Enricher,
    pub sink: Box<dyn Sink>,
    pub losses: LossTracker,
    pub drain_for: Duration,
    pub loss_interval: Duration,
    pub stages: Vec<Box<dyn Stage>>,
    pub k8s: K8sEnricher,
    pub wasm_cgroups: Option<Box<dyn WasmCgroupMap>>,
    pub wasm_cgroup_count: Arc<std::sync::atomic::AtomicUsize>,
    pub counts: Option<crate::counts::EventCounter>,
    pub metrics_every: Duration,
    pub state: Arc<AgentState>,
}

impl Stages {
    pub fn new(c: StagesConfig) -> Self {
        Self {
            enricher: c.enricher,
            sink: c.sink,
            losses: c.losses,
            loss_interval: c.loss_interval,
            stages: c.stages,
            k8s: c.k8s,
            held: std::collections::VecDeque::new(),
            wasm_cgroups: c.wasm_cgroups,
            fed_wasm_cgroups: std::collections::HashSet::new(),
            wasm_cgroup_count: c.wasm_cgroup_count,
            drain_for: c.drain_for,
            event_counters: Body::WRITTEN_KINDS
                .iter()
                .map(|&kind| (kind, c.state.metrics.event_counter(kind)))
                .collect(),
            counts: c.counts,
            spans: c.spans,
            metrics_every: c.metrics_every,
            metrics_sent: Some(Instant::now()),
            state: c.state,
        }
    }
}

/// The kernel map of cgroups whose processes' stdout/stderr is captured.
pub trait WasmCgroupMap: Send {
    fn add(&mut self, id: u64) -> Result<(), aya::maps::MapError>;
    fn remove(&mut self, id: u64) -> Result<(), aya::maps::MapError>;
}

impl WasmCgroupMap for crate::loader::WasmCgroups {
    fn add(&mut self, id: u64) -> Result<(), aya::maps::MapError> {
        self.cgroups
            .insert(id, probe_common::RUNTIME_BY_CGROUP, 0)?;
        self.entries += 1;
        self.count.set(0, self.entries, 0)
    }
    fn remove(&mut self, id: u64) -> Result<(), aya::maps::MapError> {
        self.cgroups.remove(&id)?;
        self.entries = self.entries.saturating_sub(1);
        self.count.set(0, self.entries, 0)
    }
}

/// How long a record waits for its pod to reach the cache.
const HOLD_FOR: Duration = Duration::from_secs(2);
/// Records held at once; beyond that they go out unenriched.
const HOLD_MAX: usize = 4096;

impl Stages {
    /// Enriches with Kubernetes metadata (holding records whose pod is not cached yet), then
    /// writes.
    fn write(&mut self, mut records: Vec<Record>) -> std::io::Result<()> {
        self.write_at(&mut records, Instant::now())
    }

    /// `write` with the consumer's clock of this burst; leaves `records` empty (a buffer the
    /// caller reuses).
    fn write_at(&mut self, records: &mut Vec<Record>, now: Instant) -> std::io::Result<()> {
        let (k8s, held) = (&mut self.k8s, &mut self.held);
        // Taken out in place: the records that go out now are not moved into another vector.
        let mut room = HOLD_MAX.saturating_sub(held.len());
        let hold = records.extract_if(.., |record| {
            let verdict = k8s.enrich(record, now);
            let wait = room > 0 && matches!(verdict, Verdict::PodNotCached(_));
            room -= usize::from(wait);
            wait
        });
        held.extend(hold.map(|record| (now + HOLD_FOR, record)));
        self.emit(records, now)
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
        self.emit(&mut out, now)
    }

    fn emit(&mut self, records: &mut Vec<Record>, now: Instant) -> std::io::Result<()> {
        for record in records.iter_mut() {
            for stage in &mut self.stages {
                stage.on_record(record, now);
            }
        }
        for mut record in records.drain(..) {
            record.span = self.spans.choose(&record, now);
            if record.span.is_over_budget() {
                self.state.metrics.otlp_over_budget.inc();
            }
            if let Some(counts) = &mut self.counts {
                counts.count_record(&record, now);
            }
            self.sink.write(&record)?;
            self.count_event(record.kind);
            // After the sinks: stages that keep records (the findings correlator) take them.
            let mut record = Some(record);
            for stage in self.stages.iter_mut().filter(|s| s.wants_written()) {
                let Some(r) = record.take() else { break };
                record = stage.on_written(r, now);
            }
        }
        Ok(())
    }

    /// `probe_events_total{kind}` one up: a short list of the kinds seen (about ten), no
    /// hashing per record.
    fn count_event(&mut self, kind: &'static str) {
        let known = self.event_counters.iter().position(|(k, _)| *k == kind);
        let i = known.unwrap_or_else(|| {
            let counter = self.state.metrics.event_counter(kind);
            self.event_counters.push((kind, counter));
            self.event_counters.len() - 1
        });
        self.event_counters[i].1.inc();
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
            let kind = loss.lost_kind.unwrap_or("unknown");
            (self.state.metrics).count_loss(loss.source.name(), kind, loss.count);
            records.push(self.enricher.agent_record(Body::Loss(loss)));
        }
        self.write(records)?;
        self.sink.flush()
    }

    /// Offers a kernel event to the stages in order; one that no stage takes is a record as
    /// it is. Records of other sources go out as they are. `out`: an empty buffer, left empty.
    fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Record>) -> std::io::Result<()> {
        let event = match event {
            Event::Kernel(event) => event,
            Event::Record(record) => {
                out.push(*record);
                return self.write_at(out, now);
            }
        };
        let mut event = Some(event);
        for stage in &mut self.stages {
            match event.take_if(|e| stage.wants(e)) {
                Some(e) => {
                    // What a stage makes may go out later (a core signal at its target's
                    // exit, a Wasm line at its end), after the runtime removed the container's
                    // cgroup: its path is looked up now, while it exists.
                    if let Some(id) = e.common.cgroup_id {
                        self.k8s.remember_cgroup(id, now);
                    }
                    event = stage.on_event(e, &self.enricher, out);
                }
                None if event.is_none() => break,
                None => {}
            }
        }
        if let Some(e) = event {
            out.push(self.enricher.kernel_event(e));
        }
        self.write_at(out, now)
    }

    /// Timed work: records waiting for their pod, the Wasm pods' cgroups, each stage's due
    /// records (core signals whose wait ran out, idle Wasm lines, drop tails, findings).
    fn timed(&mut self, now: Instant) -> std::io::Result<()> {
        self.release_held(now, false)?;
        self.feed_wasm_cgroups(now);
        for i in 0..self.stages.len() {
            if self.stages[i].pending(now) {
                let mut out = Vec::new();
                self.stages[i].on_tick(now, &self.enricher, &mut out);
                self.write(out)?;
            }
        }
        self.sink.flush()
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
        self.wasm_cgroup_count.store(want.len(), Ordering::Relaxed);
        self.fed_wasm_cgroups = want;
    }

    /// The kernel's event counts into the metrics, labelled with their pods.
    /// Then, every `metrics_every` (and at the end: `last`), their snapshot to the outputs
    /// that export metrics.
    fn sweep_counts(&mut self, now: Instant, last: bool) {
        let Some(counts) = &mut self.counts else {
            return;
        };
        counts.sweep(&mut self.k8s, now);
        let due = self
            .metrics_sent
            .is_none_or(|t| now.duration_since(t) >= self.metrics_every);
        if (due || last) && self.sink.wants_metrics() {
            self.metrics_sent = Some(now);
            self.sink.metrics(&counts.snapshot());
        }
    }

    /// How soon timed work is due, if any is pending.
    fn timed_work_due(&self, now: Instant) -> Option<Duration> {
        let joins =
            !self.held.is_empty() || !self.fed_wasm_cgroups.is_empty() || self.k8s.has_wasm_pods();
        let stages = self.stages.iter().filter(|s| s.pending(now));
        stages
            .map(|s| s.tick_within(now))
            .chain(joins.then_some(TICK_EVERY))
            .min()
    }

    fn update_gauges(&self, queue_depth: usize) {
        let m = &self.state.metrics;
        m.queue_depth
            .set(i64::try_from(queue_depth).unwrap_or(i64::MAX));
        for stage in &self.stages {
            stage.report(&self.state);
        }
    }
}

/// Writes events to the sink until the channel closes, with a loss report every
/// `loss_interval` and a final one at the end. Core signals wait in the join for their
/// target's exit.
pub async fn consume(
    mut rx: mpsc::Receiver<Event>,
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

/// Events taken from the channel at once, handled on one reading of the clock.
const RECV_BATCH: usize = 64;

async fn consume_loop(
    rx: &mut mpsc::Receiver<Event>,
    stages: &mut Stages,
) -> Result<(), PipelineError> {
    let mut tick = tokio::time::interval(stages.loss_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    // Timed work (joins, held records) when due (`TICK_EVERY` while any is pending), and the
    // kernel's counts each second: timerfds, one wake-up each (see `timer`).
    let join = TimerFd::new().map_err(PipelineError::Poll)?;
    let mut join_at: Option<Instant> = None;
    let counts_tick = TimerFd::every(crate::counts::SWEEP_EVERY).map_err(PipelineError::Poll)?;
    let mut now = Instant::now();
    let (mut batch, mut out) = (Vec::with_capacity(RECV_BATCH), Vec::new());
    loop {
        // Armed for the earliest due work (a due time sooner than the armed one re-arms).
        if let Some(due) = stages.timed_work_due(now)
            && join_at.is_none_or(|at| now + due < at)
        {
            join.arm(due).map_err(PipelineError::Poll)?;
            join_at = Some(now + due);
        }
        tokio::select! {
            biased;
            _ = tick.tick() => stages.report_losses().map_err(PipelineError::Sink)?,
            ticked = counts_tick.expired(), if stages.counts.is_some() => {
                ticked.map_err(PipelineError::Poll)?;
                now = Instant::now();
                stages.sweep_counts(now, false);
            }
            expired = join.expired(), if join_at.is_some() => {
                expired.map_err(PipelineError::Poll)?;
                join_at = None;
                now = Instant::now();
                stages.timed(now).map_err(PipelineError::Sink)?;
                stages.update_gauges(rx.len());
            }
            taken = rx.recv_many(&mut batch, RECV_BATCH) => {
                if taken == 0 {
                    break;
                }
                // The clock is read once per batch, not per event: what it times (holds,
                // joins, windows) is seconds.
                now = Instant::now();
                let bytes: usize = batch.iter().map(Event::payload_bytes).sum();
                stages
                    .losses
                    .counters
                    .channel_bytes
                    .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                for event in batch.drain(..) {
                    stages.handle(event, now, &mut out).map_err(PipelineError::Sink)?;
                }
                // Once per burst, not per event.
                if rx.is_empty() {
                    stages.sink.flush().map_err(PipelineError::Sink)?;
                    stages.update_gauges(0);
                }
            }
        }
    }
    // The last records and the final loss report wait for room in a queued output.
    stages
        .sink
        .finish(std::time::Instant::now() + stages.drain_for);
    for i in 0..stages.stages.len() {
        let mut out = Vec::new();
        stages.stages[i].drain(&stages.enricher, &mut out);
        stages.write(out).map_err(PipelineError::Sink)?;
    }
    stages
        .release_held(Instant::now(), true)
        .map_err(PipelineError::Sink)?;
    stages.sweep_counts(Instant::now(), true);
    stages.report_losses().map_err(PipelineError::Sink)
}
