//! Loads the kernel programs: resolves kernel layouts at load time (BTF for struct members,
//! tracefs `format` files for tracepoint records), sets them as globals, and attaches each
//! program on its own so one missing hook does not stop the others.

mod attach;
pub mod btf;
pub mod gate;
pub mod hooks;
pub mod libssl;
pub mod offsets;
mod report;
mod requirements;
pub mod tracefs;

pub use self::{report::check_kernel, requirements::requirements};

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        MapData, PerCpuArray, PerCpuValues, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    util::nr_cpus,
};
use probe_common::{
    AgentConfig, ConnectLayout, EXE_NAME_LEN, KernelOffsets, PreemptLayout, RecvLayout,
    RetransmitLayout, SOFTIRQ_UNKNOWN, SendLayout, SkbOffsets, TaskOffsets, TcpResetLayout,
    WriteLayout, globals, maps,
};
use thiserror::Error;
use tracing::{debug, warn};

use self::{
    attach::AyaKernel,
    btf::Btf,
    hooks::{CAPABILITIES, CapabilityStatus, Switches},
    offsets::{
        PreemptError, connect_layout, kernel_offsets, recv_layout, reset_layout, retransmit_layout,
        running_preempt_layout, send_layout, skb_offsets, task_offsets, write_layout,
    },
    tracefs::{Format, TracefsError},
};
use crate::{decode::SymbolTables, runtimes::RuntimePattern};

/// The kernel object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Kernel BTF; its directory is what a container needs mounted from the host.
pub const VMLINUX_BTF_DIR: &str = "/sys/kernel/btf";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error(
        "this agent was built without its kernel programs (AYA_BUILD_SKIP=1); rebuild it with the BPF toolchain (`cargo xtask setup`)"
    )]
    NoKernelPrograms,
    #[error("ring buffer size {0} is invalid: it must be a power of two and at least 4096")]
    RingBufSize(u32),
    #[error("loading the kernel object failed: {0} (are you root, with CAP_BPF and CAP_PERFMON?)")]
    Load(#[source] aya::EbpfError),
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name}: {what}: {source}")]
    MapUpdate {
        name: &'static str,
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("counting possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}

/// Loader settings from the command line.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub ringbuf_bytes: u32,
    /// Signals to report (bit n = signal n).
    pub signal_mask: u64,
    /// Bytes per captured chunk of a Wasm runtime's writes; 0 disables capture.
    pub capture_bytes: u32,
    pub wasm_runtimes: Vec<RuntimePattern>,
    /// Read HTTP/1.x request heads on the TCP send path (for their traceparent).
    pub http_trace_context: bool,
    /// Whose OpenSSL calls the TLS uprobes see (`--tls-processes`).
    pub tls_scope: libssl::Scope,
    /// `--avoid-hooks`.
    pub avoid_hooks: Vec<hooks::HookKind>,
    /// `--hooks`.
    pub hook_pins: Vec<hooks::HookPin>,
    /// `--verifier-log verbose`: the verifier's instruction trace too.
    pub verbose_verifier: bool,
    /// Resets per fold key, CPU and window sent in full (0: no folding), and the window.
    pub fold_first: u32,
    pub fold_window: std::time::Duration,
}

impl LoaderConfig {
    /// The flags that switch capabilities off or choose their hooks.
    fn switches(&self) -> Switches {
        Switches {
            capture: self.capture_bytes != 0,
            http_trace_context: self.http_trace_context,
            avoid: self.avoid_hooks.clone(),
            pins: self.hook_pins.clone(),
        }
    }
}

/// Whether a program is attached, and why not.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub hook: String,
    pub result: Result<(), hooks::HookError>,
}

/// Loaded programs; dropping it detaches every program.
pub struct Probe {
    /// Shared with the write gate, which attaches and detaches the on-demand programs.
    ebpf: Arc<Mutex<Ebpf>>,
    /// The links of the attached programs (the write gate takes the on-demand ones).
    links: HashMap<&'static str, attach::LinkId>,
    /// Every program the selection tried, attached or not.
    pub programs: Vec<ProgramStatus>,
    /// Per capability: the hook chosen, or why none.
    pub capabilities: Vec<CapabilityStatus>,
    pub tables: SymbolTables,
    /// The libssl files the TLS uprobes cover (None: the capability has no hook).
    pub tls: Option<Arc<libssl::Coverage>>,
    /// Whose OpenSSL calls they see.
    tls_scope: libssl::Scope,
}

/// The tracepoint formats the loader reads: record layouts and field checks of the table.
const FORMATS: [(&str, &str); 8] = [
    ("tcp", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset"),
    ("syscalls", "sys_exit_write"),
    ("syscalls", "sys_exit_writev"),
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_writev"),
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_retransmit_skb"),
];

impl Probe {
    pub fn load(config: &LoaderConfig) -> Result<Self, LoaderError> {
        if OBJECT.is_empty() {
            return Err(LoaderError::NoKernelPrograms);
        }
        let size = config.ringbuf_bytes;
        check_ringbuf_bytes(size)?;
        requirements::raise_memlock();
        let tracefs = tracefs::ensure_mounted().map_err(Arc::new);
        let btf = match Btf::from_file(Path::new(VMLINUX_BTF)) {
            Ok(btf) => Some(btf),
            Err(e) => {
                warn!(
                    "kernel BTF unavailable ({e}): socket cgroup, netns, cookie and TCP state names will be missing"
                );
                None
            }
        };
        let offsets = btf.as_ref().map_or(KernelOffsets::ABSENT, kernel_offsets);
        let task = btf.as_ref().map_or(TaskOffsets::ABSENT, task_offsets);
        let skb = btf.as_ref().map_or(SkbOffsets::ABSENT, skb_offsets);
        let send = btf.as_ref().map_or(SendLayout::ABSENT, send_layout);
        let recv = btf.as_ref().map_or(RecvLayout::ABSENT, recv_layout);
        if btf.is_some() && send.msg_iter == probe_common::ABSENT {
            warn!(
                "this kernel's msghdr/iov_iter layout is not one the send hook reads: requests' traceparent headers will not be seen"
            );
        }
        let preempt = if !config.switches().preempt_count_allowed(hooks::CAPABILITIES) {
            Err(PreemptError::Avoided)
        } else {
            btf.as_ref()
                .ok_or(PreemptError::NoBtf)
                .and_then(running_preempt_layout)
        };
        debug!(
            ?offsets,
            ?task,
            ?skb,
            ?preempt,
            ?recv,
            "kernel offsets from BTF"
        );

        let formats: HashMap<&str, Result<Format, Arc<TracefsError>>> = FORMATS
            .iter()
            .map(|(category, name)| {
                let format = tracefs
                    .clone()
                    .and_then(|()| Format::read(category, name).map_err(Arc::new));
                (*name, format)
            })
            .collect();
        let format = |name: &str| formats.get(name).and_then(|f| f.as_ref().ok());
        let reset = |name| format(name).map_or(TcpResetLayout::ABSENT, reset_layout);
        let (send_layout, receive_layout) = (reset("tcp_send_reset"), reset("tcp_receive_reset"));
        let write = |enter, exit, buf, count| {
            format(enter).map_or(WriteLayout::ABSENT, |f| {
                write_layout(f, format(exit), buf, count)
            })
        };
        let connect_l = format("inet_sock_set_state")
            .map_or(ConnectLayout::ABSENT, |f| connect_layout(f, btf.as_ref()));
        let retransmit_l =
            format("tcp_retransmit_skb").map_or(RetransmitLayout::ABSENT, retransmit_layout);
        let write_l = write("sys_enter_write", "sys_exit_write", "buf", "count");
        let writev_l = write("sys_enter_writev", "sys_exit_writev", "vec", "vlen");
        debug!(
            ?send_layout,
            ?receive_layout,
            ?write_l,
            ?writev_l,
            ?connect_l,
            ?retransmit_l,
            "tracepoint layouts"
        );

        let agent = AgentConfig {
            agent_tgid: std::process::id(),
            capture_bytes: config.capture_bytes,
            signal_mask: config.signal_mask,
            // A sixteenth of the buffer: a burst wakes the reader well before it is full.
            wakeup_bytes: size / 16,
            fold_first: config.fold_first,
            fold_window_ns: u64::try_from(config.fold_window.as_nanos()).unwrap_or(u64::MAX),
        };
        // The verifier's reason and statistics by default: on kernels whose log keeps its
        // start, a verbose log of a program with a loop overflows and loses the reason at its end.
        let log = if config.verbose_verifier {
            aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS
        } else {
            aya::VerifierLogLevel::STATS
        };
        let ebpf = EbpfLoader::new()
            .verifier_log_level(log)
            .override_global(globals::AGENT, &agent, true)
            .override_global(globals::KERNEL_OFFSETS, &offsets, true)
            .override_global(globals::TASK_OFFSETS, &task, true)
            .override_global(globals::SKB_OFFSETS, &skb, true)
            .override_global(globals::SEND_LAYOUT, &send, true)
            .override_global(globals::RECV_LAYOUT, &recv, true)
            .override_global(
                globals::PREEMPT_LAYOUT,
                preempt.as_ref().unwrap_or(&PreemptLayout::ABSENT),
                true,
            )
            .override_global(globals::SEND_RESET_LAYOUT, &send_layout, true)
            .override_global(
                globals::SEND_RESET_UNOWNED,
                &u32::from(config.switches().unowned_from_tracepoint()),
                true,
            )
            .override_global(globals::RECEIVE_RESET_LAYOUT, &receive_layout, true)
            .override_global(globals::WRITE_LAYOUT, &write_l, true)
            .override_global(globals::WRITEV_LAYOUT, &writev_l, true)
            .override_global(globals::CONNECT_LAYOUT, &connect_l, true)
            .override_global(globals::RETRANSMIT_LAYOUT, &retransmit_l, true)
            .map_max_entries(maps::EVENTS, size)
            .load(OBJECT)
            .map_err(LoaderError::Load)?;

        let tables = SymbolTables::resolve(btf.as_ref(), format("tcp_send_reset"));
        let mut probe = Self {
            ebpf: Arc::new(Mutex::new(ebpf)),
            links: HashMap::new(),
            programs: Vec::new(),
            capabilities: Vec::new(),
            tables,
            tls: None,
            tls_scope: config.tls_scope.clone(),
        };
        if let Err(e) = probe.seed_softirq_state() {
            warn!("{e}; resets will name no task");
        }
        if let Err(e) = probe.set_runtimes(&config.wasm_runtimes) {
            warn!("{e}; no Wasm runtime will be recognised at exec");
        }
        let switches = config.switches();
        let mut ebpf = probe.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let mut kernel = AyaKernel {
            ebpf: &mut ebpf,
            formats: &formats,
            kernel_btf: btf.as_ref(),
            btf: None,
            preempt: preempt.map(drop),
            tried: Vec::new(),
            links: HashMap::new(),
            libssl: None,
            tls_scope: &config.tls_scope,
            uprobes: Vec::new(),
        };
        let capabilities = hooks::select(CAPABILITIES, &switches, &mut kernel);
        let (programs, links) = (kernel.tried, kernel.links);
        if !uprobe_programs(&capabilities).is_empty() {
            let started = kernel.libssl.map(|s| s.pids).unwrap_or_default();
            let coverage = libssl::Coverage::from_selection(kernel.uprobes, started);
            probe.tls = Some(Arc::new(coverage));
        }
        drop(ebpf);
        probe.capabilities = capabilities;
        probe.programs = programs;
        probe.links = links;
        Ok(probe)
    }

    fn ebpf(&self) -> MutexGuard<'_, Ebpf> {
        self.ebpf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The write gate over the on-demand programs that attached (None when there are none:
    /// capture disabled, or no hook of this kernel works). It takes their links and the maps
    /// that tell it when to open.
    pub fn write_gate(&mut self) -> Result<Option<gate::WriteGate>, LoaderError> {
        let mut programs = Vec::new();
        for cap in CAPABILITIES.iter().filter(|c| c.on_demand) {
            let chosen = self
                .capabilities
                .iter()
                .find(|s| s.capability == cap.name)
                .and_then(|s| s.chosen.as_ref());
            let Some((_, names)) = chosen else { continue };
            for candidate in cap.candidates {
                for p in candidate.programs {
                    if names.contains(&p.name) && !programs.iter().any(|(n, _)| *n == p.name) {
                        programs.push((p.name, p.attach));
                    }
                }
            }
        }
        if programs.is_empty() {
            return Ok(None);
        }
        let mut links = Vec::new();
        {
            let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
            for (name, _) in &programs {
                let (Some(id), Some(program)) = (self.links.remove(name), ebpf.program_mut(name))
                else {
                    continue;
                };
                match gate::take_link(program, id) {
                    Ok(link) => links.push(link),
                    Err(e) => warn!(program = name, "taking its link for the write gate: {e}"),
                }
            }
        }
        Ok(Some(gate::WriteGate {
            ebpf: self.ebpf.clone(),
            programs,
            links,
            pids: self.take(maps::WASM_PIDS)?,
            selections: self.take(maps::SELECTIONS)?,
        }))
    }

    /// Loads the runtime patterns into the exec matcher (index = position in the list).
    fn set_runtimes(&mut self, runtimes: &[RuntimePattern]) -> Result<(), LoaderError> {
        let name = maps::WASM_RUNTIMES;
        let mut ebpf = self.ebpf();
        let map = ebpf.map_mut(name).ok_or(LoaderError::MissingMap(name))?;
        let mut trie: LpmTrie<_, [u8; EXE_NAME_LEN], u32> =
            LpmTrie::try_from(map).map_err(|source| LoaderError::Map { name, source })?;
        for (i, pattern) in runtimes.iter().enumerate() {
            let (bits, data) = pattern.key();
            trie.insert(&Key::new(bits, data), i as u32, 0)
                .map_err(|source| LoaderError::MapUpdate {
                    name,
                    what: format!("adding runtime {}", pattern.name),
                    source,
                })?;
        }
        Ok(())
    }

    /// Marks every CPU's softirq state unknown until the softirq hooks have run there.
    fn seed_softirq_state(&mut self) -> Result<(), LoaderError> {
        let name = maps::IN_SOFTIRQ;
        let mut ebpf = self.ebpf();
        let map = ebpf.map_mut(name).ok_or(LoaderError::MissingMap(name))?;
        let mut array: PerCpuArray<_, u32> =
            PerCpuArray::try_from(map).map_err(|source| LoaderError::Map { name, source })?;
        let cpus = nr_cpus().map_err(|(_, e)| LoaderError::Cpus(e))?;
        let values =
            PerCpuValues::try_from(vec![SOFTIRQ_UNKNOWN; cpus]).map_err(LoaderError::Cpus)?;
        array
            .set(0, values, 0)
            .map_err(|source| LoaderError::MapUpdate {
                name,
                what: "seeding every CPU's state".into(),
                source,
            })
    }

    /// Starts the thread that attaches the TLS uprobes to the libssl files new processes map
    /// (None when no TLS capability has a hook).
    pub fn tls_watcher(&self) -> Option<libssl::Watcher> {
        let coverage = self.tls.clone()?;
        let programs = uprobe_programs(&self.capabilities);
        libssl::Watcher::start(
            self.ebpf.clone(),
            programs,
            coverage,
            self.tls_scope.clone(),
        )
            .map_err(|e| warn!("starting the TLS library watcher: {e}; libssl files that appear later are not covered"))
            .ok()
    }

    pub fn attached(&self) -> usize {
        self.programs.iter().filter(|p| p.result.is_ok()).count()
    }

    /// Takes the event ring buffer out (it outlives the programs, so it can be drained after
    /// they are detached).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoaderError> {
        self.take(maps::EVENTS)
    }

    /// Takes the reader's switch out (`maps::READER_POLLING`): 1 while it reads on a timer.
    pub fn take_reader_polling(&mut self) -> Result<aya::maps::Array<MapData, u32>, LoaderError> {
        self.take(maps::READER_POLLING)
    }

    /// Takes the drop aggregation map out, for the agent's read of totals after the last
    /// record of a flow.
    pub fn take_drop_flows(&mut self) -> Result<DropFlows, LoaderError> {
        self.take(maps::DROP_FLOWS)
    }

    /// Takes the exact event counts out, for the metrics of the events.
    pub fn take_event_counts(&mut self) -> Result<EventCounts, LoaderError> {
        self.take(maps::EVENT_COUNTS)
    }

    /// Takes the storm-folding counts out, for the summaries.
    pub fn take_folds(&mut self) -> Result<Folds, LoaderError> {
        self.take(maps::FOLDS)
    }

    /// Takes the map of cgroups whose processes are captured (fed for Wasm pods) and its
    /// entry count.
    pub fn take_wasm_cgroups(&mut self) -> Result<WasmCgroups, LoaderError> {
        Ok(WasmCgroups {
            cgroups: self.take(maps::WASM_CGROUPS)?,
            count: self.take(maps::WASM_CGROUP_COUNT)?,
            entries: 0,
        })
    }

    pub fn take_losses(&mut self) -> Result<PerCpuArray<MapData, u64>, LoaderError> {
        self.take(maps::LOSSES)
    }

    /// Takes map `name` out of the object (it outlives the programs) as a typed map.
    fn take<T>(&mut self, name: &'static str) -> Result<T, LoaderError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf()
            .take_map(name)
            .ok_or(LoaderError::MissingMap(name))?;
        T::try_from(map).map_err(|source| LoaderError::Map { name, source })
    }
}

/// cgroup id -> runtime index (`maps::WASM_CGROUPS`), and how many there are
/// (`maps::WASM_CGROUP_COUNT`).
pub struct WasmCgroups {
    pub cgroups: aya::maps::HashMap<MapData, u64, u32>,
    pub count: aya::maps::Array<MapData, u32>,
    pub entries: u32,
}

/// The in-kernel drop aggregation (`maps::DROP_FLOWS`).
pub type DropFlows =
    aya::maps::PerCpuHashMap<MapData, probe_common::DropKey, probe_common::DropCount>;

/// The kernel's exact event counts (`maps::EVENT_COUNTS`).
pub type EventCounts =
    aya::maps::PerCpuHashMap<MapData, probe_common::CountKey, probe_common::CountValue>;

/// The kernel's storm folding per key (`maps::FOLDS`).
pub type Folds = aya::maps::PerCpuHashMap<MapData, probe_common::FoldKey, probe_common::FoldWindow>;

/// The kernel wants a power-of-two multiple of the page size.
pub fn check_ringbuf_bytes(size: u32) -> Result<(), LoaderError> {
    if size.is_power_of_two() && size >= 4096 {
        Ok(())
    } else {
        Err(LoaderError::RingBufSize(size))
    }
}

/// The uprobe programs of the capabilities that chose them: (program, function).
fn uprobe_programs(capabilities: &[CapabilityStatus]) -> Vec<(&'static str, &'static str)> {
    let chosen: Vec<&'static str> = capabilities
        .iter()
        .filter_map(|c| c.chosen.as_ref())
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    CAPABILITIES
        .iter()
        .flat_map(|c| c.candidates.iter().flat_map(|k| k.programs.iter()))
        .filter(|p| chosen.contains(&p.name))
        .filter_map(|p| match p.attach {
            hooks::Attach::UProbe(f) | hooks::Attach::URetProbe(f) => Some((p.name, f)),
            _ => None,
        })
        .collect()
}
