//! The write gate: the write hooks (the table's on-demand capabilities) are attached only
//! while a process or a cgroup is selected for capture. Any syscall tracepoint puts every
//! task of the node on the kernel's traced-syscall path, so a node with no Wasm runtime pays
//! nothing for them.
//!
//! The hooks are proven at load (the selection attaches them), then detached. A runtime's
//! exec puts a record in the SELECTIONS ring buffer, which wakes this thread at once; it
//! attaches the programs (still loaded: no second verification) and reports how long after
//! the exec the hooks were in place. What the runtime wrote before that is not seen: the
//! window is in `/health/status` (`write_hooks`) and docs/architecture.md. Wasm pod cgroups count as
//! selected too. The hooks are detached again `LINGER` after the last selected process
//! exited.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{
        FEntry, FExit, KProbe, Program as AyaProgram, ProgramError, RawTracePoint, TracePoint,
        fentry::FEntryLink, fexit::FExitLink, kprobe::KProbeLink,
        raw_trace_point::RawTracePointLink, trace_point::TracePointLink,
    },
};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::Serialize;
use tracing::{info, warn};

use super::{attach::LinkId, hooks::Attach};
use crate::status::Snapshot;

/// How often the thread looks at the selection without a wake-up (a Wasm pod's cgroup, the
/// last selected process gone); a runtime's exec wakes it at once.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the hooks stay attached after the last selected process or cgroup went away.
const LINGER: Duration = Duration::from_secs(5);

/// An attached program's link; dropping it detaches the program (it stays loaded).
#[expect(dead_code, reason = "held for its Drop")]
pub(super) enum Link {
    Raw(RawTracePointLink),
    TracePoint(TracePointLink),
    FEntry(FEntryLink),
    FExit(FExitLink),
    KProbe(KProbeLink),
}

/// What the status document shows under `write_hooks`.
#[derive(Debug, Clone, Default, Serialize)]
struct Report {
    /// "attached" or "detached".
    state: &'static str,
    programs: Vec<&'static str>,
    attaches: u64,
    detaches: u64,
    /// From the exec that selected a runtime to the hooks in place, for the last and the
    /// slowest attach a selection woke (the window in which a new runtime's output is missed).
    last_attach_after_exec_us: Option<u64>,
    max_attach_after_exec_us: Option<u64>,
    error: Option<String>,
}

/// The gate's report, shown as it is when the status document is asked for.
#[derive(Debug, Default)]
pub struct GateStatus(Mutex<Report>);

impl Snapshot for GateStatus {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(&*self.0.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }
}

/// Why the gate could not attach the write hooks.
#[derive(Debug, thiserror::Error)]
enum GateError {
    #[error("{program}: not in the kernel object")]
    Missing { program: &'static str },
    #[error("{program} on {attach}: {source}")]
    Attach {
        program: &'static str,
        attach: Attach,
        source: Box<ProgramError>,
    },
}

/// The on-demand programs, their links while attached, and what tells the gate to open.
pub struct WriteGate {
    pub(super) ebpf: Arc<Mutex<Ebpf>>,
    pub(super) programs: Vec<(&'static str, Attach)>,
    pub(super) links: Vec<Link>,
    pub(super) pids: BpfHashMap<MapData, u32, u32>,
    pub(super) selections: RingBuf<MapData>,
}

/// Takes the link the selection made (attached), so the gate owns it.
pub(super) fn take_link(program: &mut AyaProgram, id: LinkId) -> Result<Link, ProgramError> {
    Ok(match (program, id) {
        (AyaProgram::RawTracePoint(p), LinkId::Raw(id)) => Link::Raw(p.take_link(id)?),
        (AyaProgram::TracePoint(p), LinkId::TracePoint(id)) => Link::TracePoint(p.take_link(id)?),
        (AyaProgram::FEntry(p), LinkId::FEntry(id)) => Link::FEntry(p.take_link(id)?),
        (AyaProgram::FExit(p), LinkId::FExit(id)) => Link::FExit(p.take_link(id)?),
        (AyaProgram::KProbe(p), LinkId::KProbe(id)) => Link::KProbe(p.take_link(id)?),
        _ => return Err(ProgramError::NotAttached),
    })
}

fn attach_one(program: &mut AyaProgram, attach: Attach) -> Result<Link, ProgramError> {
    Ok(match attach {
        Attach::RawTracepoint(tp) => {
            let p: &mut RawTracePoint = program.try_into()?;
            let id = p.attach(tp)?;
            Link::Raw(p.take_link(id)?)
        }
        Attach::Tracepoint(category, tp) => {
            let p: &mut TracePoint = program.try_into()?;
            let id = p.attach(category, tp)?;
            Link::TracePoint(p.take_link(id)?)
        }
        Attach::FEntry(_) => {
            let p: &mut FEntry = program.try_into()?;
            let id = p.attach()?;
            Link::FEntry(p.take_link(id)?)
        }
        Attach::FExit(_) => {
            let p: &mut FExit = program.try_into()?;
            let id = p.attach()?;
            Link::FExit(p.take_link(id)?)
        }
        Attach::KProbe(function) | Attach::KRetProbe(function) => {
            let p: &mut KProbe = program.try_into()?;
            let id = p.attach(function, 0)?;
            Link::KProbe(p.take_link(id)?)
        }
        // Never on demand: attached per library (`loader/libssl.rs`).
        Attach::UProbe(_) | Attach::URetProbe(_) => return Err(ProgramError::NotAttached),
    })
}

impl WriteGate {
    fn attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Whether any process is selected (one `get_next_key`).
    fn any_selected_pid(&self) -> bool {
        matches!(self.pids.keys().next(), Some(Ok(_)))
    }

    fn attach(&mut self) -> Result<(), GateError> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        for &(program, attach) in &self.programs {
            let p = ebpf
                .program_mut(program)
                .ok_or(GateError::Missing { program })?;
            let link = attach_one(p, attach).map_err(|e| GateError::Attach {
                program,
                attach,
                source: Box::new(e),
            })?;
            self.links.push(link);
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.links.clear();
    }
}

/// The gate's thread; stopping it detaches the hooks.
pub struct GateThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GateThread {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The gauges the gate keeps: attached (0/1) and attaches; and the agent's program reports,
/// which follow every attach and detach (`probe_program_attached`, /health/status).
pub struct GateMetrics {
    pub attached: Gauge,
    pub attaches: Counter,
    pub state: Arc<crate::status::AgentState>,
}

impl GateMetrics {
    fn set(&self, programs: &[&str], attached: bool) {
        self.attached.set(i64::from(attached));
        self.state.set_on_demand(programs, attached);
    }
}

/// Runs the gate: `wasm_cgroups` is the number of Wasm pod cgroups the agent captures.
pub fn spawn(
    mut gate: WriteGate,
    wasm_cgroups: Arc<AtomicUsize>,
    status: Arc<GateStatus>,
    metrics: GateMetrics,
) -> std::io::Result<GateThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    // Proven attached by the selection; a cold node detaches them before the agent is ready.
    let mut wanted_at = None;
    {
        let mut r = status.0.lock().unwrap_or_else(|e| e.into_inner());
        r.programs = gate.programs.iter().map(|(name, _)| *name).collect();
        if gate.any_selected_pid() || wasm_cgroups.load(Ordering::Relaxed) > 0 {
            r.state = "attached";
            metrics.set(&r.programs, true);
            wanted_at = Some(Instant::now());
        } else {
            gate.detach();
            r.state = "detached";
            metrics.set(&r.programs, false);
        }
    }
    let thread = std::thread::Builder::new()
        .name("write-gate".into())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let exec = wait_for_selection(&mut gate);
                let now = Instant::now();
                let want =
                    exec.is_some() || gate.any_selected_pid() || wasm_cgroups.load(Ordering::Relaxed) > 0;
                if want {
                    wanted_at = Some(now);
                }
                let mut r = status.0.lock().unwrap_or_else(|e| e.into_inner());
                if want && !gate.attached() {
                    match gate.attach() {
                        Ok(()) => {
                            r.attaches += 1;
                            r.state = "attached";
                            r.error = None;
                            metrics.set(&r.programs, true);
                            metrics.attaches.inc();
                            match exec {
                                Some(at) => {
                                    let us = crate::clock::boottime_ns().saturating_sub(at) / 1000;
                                    r.last_attach_after_exec_us = Some(us);
                                    r.max_attach_after_exec_us =
                                        Some(r.max_attach_after_exec_us.unwrap_or(0).max(us));
                                    info!("write hooks attached {us} µs after a runtime's exec");
                                }
                                None => info!("write hooks attached: a Wasm pod or runtime is on the node"),
                            }
                        }
                        Err(e) => {
                            let e = e.to_string();
                            gate.detach();
                            if r.error.as_deref() != Some(e.as_str()) {
                                warn!("attaching the write hooks: {e}; Wasm output is not captured until it works");
                            }
                            r.error = Some(e);
                        }
                    }
                } else if !want
                    && gate.attached()
                    && wanted_at.is_none_or(|t| now.duration_since(t) >= LINGER)
                {
                    gate.detach();
                    r.detaches += 1;
                    r.state = "detached";
                    metrics.set(&r.programs, false);
                    info!("write hooks detached: no Wasm runtime or pod left on the node");
                }
            }
            gate.detach();
            let programs: Vec<&str> = gate.programs.iter().map(|(name, _)| *name).collect();
            metrics.set(&programs, false);
            info!("write gate stopped");
        })?;
    Ok(GateThread {
        stop,
        thread: Some(thread),
    })
}

/// Waits up to CHECK_EVERY for SELECTIONS; the earliest exec time of what arrived.
fn wait_for_selection(gate: &mut WriteGate) -> Option<u64> {
    let mut fds = libc::pollfd {
        fd: gate.selections.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, its count, a timeout.
    unsafe { libc::poll(&mut fds, 1, CHECK_EVERY.as_millis() as i32) };
    let mut earliest: Option<u64> = None;
    while let Some(item) = gate.selections.next() {
        if item.len() >= size_of::<probe_common::Selection>() {
            // SAFETY: length checked; Selection is Pod (integers, no padding).
            let s: probe_common::Selection =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            earliest = Some(earliest.map_or(s.ktime_ns, |e| e.min(s.ktime_ns)));
        }
    }
    earliest
}

/// Starts the gate over the probe's on-demand programs and shows it in the status document;
/// None when there are none (capture off, or no write hook works on this kernel).
/// `wasm_cgroups` is the number of Wasm pod cgroups the agent captures (kept by the pipeline).
pub fn start(
    probe: &mut super::Probe,
    state: &Arc<crate::status::AgentState>,
    wasm_cgroups: Arc<AtomicUsize>,
) -> Option<GateThread> {
    let gate = match probe.write_gate() {
        Ok(Some(gate)) => gate,
        Ok(None) => return None,
        Err(e) => {
            warn!("{e}; the write hooks stay attached all the time");
            return None;
        }
    };
    let status = Arc::new(GateStatus::default());
    state.set_write_hooks(status.clone());
    let metrics = GateMetrics {
        attached: state.metrics.write_hooks_attached.clone(),
        attaches: state.metrics.write_hooks_attaches.clone(),
        state: state.clone(),
    };
    match spawn(gate, wasm_cgroups, status, metrics) {
        Ok(thread) => Some(thread),
        Err(e) => {
            warn!("starting the write gate thread: {e}; Wasm output is not captured");
            None
        }
    }
}
