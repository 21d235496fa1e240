//! Loads the kernel programs: resolves kernel layouts at load time (BTF for struct members,
//! tracefs `format` files for tracepoint records), sets them as globals, and attaches each
//! program on its own so one missing hook does not stop the others.

pub mod btf;
pub mod offsets;
pub mod tracefs;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{RawTracePoint, TracePoint},
    util::nr_cpus,
};
use probe_common::{
    AgentConfig, KernelOffsets, SOFTIRQ_UNKNOWN, TaskOffsets, TcpResetLayout, globals, maps,
};
use thiserror::Error;
use tracing::{debug, warn};

use self::{
    btf::Btf,
    offsets::{kernel_offsets, reset_layout, task_offsets},
    tracefs::Format,
};
use crate::decode::SymbolTables;

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
}

/// Loader settings from the command line.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub ringbuf_bytes: u32,
    /// Signals to report (bit n = signal n).
    pub signal_mask: u64,
}

/// Whether a program is attached, and why not.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub hook: &'static str,
    pub result: Result<(), String>,
}

/// Loaded programs; dropping it detaches every program.
pub struct Probe {
    ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub tables: SymbolTables,
}

/// Raw tracepoint programs, each named after its tracepoint, in attach order: softirq
/// tracking before the programs that ask for it, the exit hook before the signal hook that
/// fills its watch list.
const RAW_TRACEPOINTS: [&str; 4] = [
    "softirq_entry",
    "softirq_exit",
    "sched_process_exit",
    "signal_generate",
];

/// The tracepoint programs: (program/function name, category, tracepoint).
const TRACEPOINTS: [(&str, &str, &str); 2] = [
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];

impl Probe {
    pub fn load(config: &LoaderConfig) -> Result<Self, LoaderError> {
        if OBJECT.is_empty() {
            return Err(LoaderError::NoKernelPrograms);
        }
        let size = config.ringbuf_bytes;
        check_ringbuf_bytes(size)?;
        let tracefs = tracefs::ensure_mounted().map_err(|e| e.to_string());
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
        debug!(?offsets, ?task, "kernel offsets from BTF");

        let formats: Vec<Result<Format, String>> = TRACEPOINTS
            .iter()
            .map(|(_, category, name)| {
                tracefs.clone()?;
                Format::read(category, name).map_err(|e| e.to_string())
            })
            .collect();
        let layout_of = |i: usize| {
            formats[i]
                .as_ref()
                .map_or(TcpResetLayout::ABSENT, reset_layout)
        };
        let (send_layout, receive_layout) = (layout_of(0), layout_of(1));
        debug!(?send_layout, ?receive_layout, "tracepoint layouts");

        let agent = AgentConfig {
            agent_tgid: std::process::id(),
            _reserved: 0,
            signal_mask: config.signal_mask,
        };
        let ebpf = EbpfLoader::new()
            .override_global(globals::AGENT, &agent, true)
            .override_global(globals::KERNEL_OFFSETS, &offsets, true)
            .override_global(globals::TASK_OFFSETS, &task, true)
            .override_global(globals::SEND_RESET_LAYOUT, &send_layout, true)
            .override_global(globals::RECEIVE_RESET_LAYOUT, &receive_layout, true)
            .map_max_entries(maps::EVENTS, size)
            .load(OBJECT)
            .map_err(LoaderError::Load)?;

        let tables = SymbolTables::resolve(btf.as_ref(), formats[0].as_ref().ok());
        let mut probe = Self {
            ebpf,
            programs: Vec::new(),
            tables,
        };
        if let Err(e) = probe.seed_softirq_state() {
            warn!("{e}; resets will name no task");
        }
        for name in RAW_TRACEPOINTS {
            let result = probe.attach_raw_tracepoint(name);
            probe.programs.push(ProgramStatus {
                program: name,
                hook: name,
                result,
            });
        }
        for (i, (program, category, name)) in TRACEPOINTS.iter().enumerate() {
            let result = match &formats[i] {
                Err(e) => Err(e.clone()),
                Ok(_) => probe.attach_tracepoint(program, category, name),
            };
            probe.programs.push(ProgramStatus {
                program,
                hook: name,
                result,
            });
        }
        Ok(probe)
    }

    /// Marks every CPU's softirq state unknown until the softirq hooks have run there.
    fn seed_softirq_state(&mut self) -> Result<(), String> {
        let map = self
            .ebpf
            .map_mut(maps::IN_SOFTIRQ)
            .ok_or_else(|| format!("map {} missing", maps::IN_SOFTIRQ))?;
        let mut array: PerCpuArray<_, u32> =
            PerCpuArray::try_from(map).map_err(|e| format!("map {}: {e}", maps::IN_SOFTIRQ))?;
        let cpus = nr_cpus().map_err(|(_, e)| format!("counting possible CPUs: {e}"))?;
        let values = PerCpuValues::try_from(vec![SOFTIRQ_UNKNOWN; cpus])
            .map_err(|e| format!("per-CPU values: {e}"))?;
        array
            .set(0, values, 0)
            .map_err(|e| format!("seeding {}: {e}", maps::IN_SOFTIRQ))
    }

    fn attach_raw_tracepoint(&mut self, name: &str) -> Result<(), String> {
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the kernel object"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        prog.load().map_err(|e| format!("loading {name}: {e}"))?;
        prog.attach(name)
            .map_err(|e| format!("attaching {name} to raw tracepoint {name}: {e}"))?;
        Ok(())
    }

    fn attach_tracepoint(
        &mut self,
        program: &str,
        category: &str,
        name: &str,
    ) -> Result<(), String> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing from the kernel object"))?
            .try_into()
            .map_err(|e| format!("{program}: {e}"))?;
        prog.load().map_err(|e| format!("loading {program}: {e}"))?;
        prog.attach(category, name)
            .map_err(|e| format!("attaching {program} to {category}:{name}: {e}"))?;
        Ok(())
    }

    pub fn attached(&self) -> usize {
        self.programs.iter().filter(|p| p.result.is_ok()).count()
    }

    /// Takes the event ring buffer out (it outlives the programs, so it can be drained after
    /// they are detached).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoaderError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(LoaderError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| LoaderError::Map {
            name: maps::EVENTS,
            source,
        })
    }

    pub fn take_losses(&mut self) -> Result<PerCpuArray<MapData, u64>, LoaderError> {
        let map = self
            .ebpf
            .take_map(maps::LOSSES)
            .ok_or(LoaderError::MissingMap(maps::LOSSES))?;
        PerCpuArray::try_from(map).map_err(|source| LoaderError::Map {
            name: maps::LOSSES,
            source,
        })
    }
}

/// The kernel wants a power-of-two multiple of the page size.
pub fn check_ringbuf_bytes(size: u32) -> Result<(), LoaderError> {
    if size.is_power_of_two() && size >= 4096 {
        Ok(())
    } else {
        Err(LoaderError::RingBufSize(size))
    }
}
