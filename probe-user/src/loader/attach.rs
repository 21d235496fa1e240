//! Loading and attaching the kernel object's programs on the running kernel, for the hook
//! selection (`hooks::select`): one `Kernel` implementation over aya.

use std::{collections::HashMap, sync::Arc};

use aya::{
    Ebpf,
    programs::{
        FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint, UProbe,
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use tracing::{debug, warn};

use super::{
    ProgramStatus,
    btf::Btf,
    hooks::{self, Attach, FormatError, HookError, Kernel},
    libssl,
    offsets::PreemptError,
    tracefs::{Format, TracefsError},
};

/// The running kernel, for the hook selection: loads and attaches programs of the object.
pub(super) struct AyaKernel<'a> {
    pub(super) ebpf: &'a mut Ebpf,
    pub(super) formats: &'a HashMap<&'static str, Result<Format, Arc<TracefsError>>>,
    /// The kernel's BTF as the offsets read it (None: the kernel has none).
    pub(super) kernel_btf: Option<&'a Btf>,
    /// Kernel BTF for fentry programs, parsed on first use.
    pub(super) btf: Option<Result<aya::Btf, Arc<aya::BtfError>>>,
    /// Whether the programs know where the preempt count is (Err: why not).
    pub(super) preempt: Result<(), PreemptError>,
    pub(super) tried: Vec<ProgramStatus>,
    /// The link of each attached program (the write gate takes the on-demand ones).
    pub(super) links: HashMap<&'static str, LinkId>,
    /// The node's libssl files, found at the first uprobe's attach.
    pub(super) libssl: Option<libssl::Start>,
    /// `--tls-processes`.
    pub(super) tls_scope: &'a libssl::Scope,
    /// What each uprobe's attach to each library gave (library, program, result).
    pub(super) uprobes: Vec<libssl::LibraryAttach>,
}

/// The link of an attached program, by program type.
#[derive(Debug)]
pub(super) enum LinkId {
    Raw(RawTracePointLinkId),
    TracePoint(TracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
    KProbe(KProbeLinkId),
}

impl AyaKernel<'_> {
    fn attach_inner(&mut self, program: &hooks::Program) -> Result<(), HookError> {
        let name = program.name;
        let hook = program.attach.to_string();
        let loading = |e: ProgramError| load_error(name, &hook, e);
        let attaching = |e: ProgramError| HookError::Attach {
            program: name,
            hook: hook.clone(),
            reason: with_sources(&e),
        };
        let started = std::time::Instant::now();
        if program.attach.is_trampoline() && self.btf.is_none() {
            self.btf = Some(aya::Btf::from_sys_fs().map_err(Arc::new));
        }
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(HookError::Missing { program: name })?;
        match program.attach {
            Attach::RawTracepoint(tp) => {
                // A tracepoint the kernel lacks is not worth a verification (seconds under
                // emulation, on every start). Tracepoints of modules are not in vmlinux's
                // BTF: every raw tracepoint of the object is the kernel image's own.
                if self.kernel_btf.is_some_and(|b| !b.declares_tracepoint(tp)) {
                    return Err(HookError::Unusable {
                        hook,
                        reason: format!(
                            "no such tracepoint on this kernel (its BTF has no btf_trace_{tp})"
                        ),
                    });
                }
                let p: &mut RawTracePoint = prog.try_into().map_err(loading)?;
                p.load().map_err(loading)?;
                let id = p.attach(tp).map_err(attaching)?;
                self.links.insert(name, LinkId::Raw(id));
            }
            Attach::Tracepoint(category, tp) => {
                if let Some(Err(e)) = self.formats.get(tp) {
                    return Err(HookError::Unusable {
                        hook,
                        reason: e.to_string(),
                    });
                }
                let p: &mut TracePoint = prog.try_into().map_err(loading)?;
                p.load().map_err(loading)?;
                let id = p.attach(category, tp).map_err(attaching)?;
                self.links.insert(name, LinkId::TracePoint(id));
            }
            Attach::FEntry(function) | Attach::FExit(function) => {
                let btf = match &self.btf {
                    Some(Ok(btf)) => btf,
                    Some(Err(e)) => {
                        return Err(HookError::Unusable {
                            hook,
                            reason: format!("kernel BTF: {e}"),
                        });
                    }
                    None => unreachable!("parsed above"),
                };
                if let Attach::FEntry(_) = program.attach {
                    let p: &mut FEntry = prog.try_into().map_err(loading)?;
                    p.load(function, btf).map_err(loading)?;
                    let id = p.attach().map_err(attaching)?;
                    self.links.insert(name, LinkId::FEntry(id));
                } else {
                    let p: &mut FExit = prog.try_into().map_err(loading)?;
                    p.load(function, btf).map_err(loading)?;
                    let id = p.attach().map_err(attaching)?;
                    self.links.insert(name, LinkId::FExit(id));
                }
            }
            // A kretprobe is a KProbe program whose kind (from its section) says "return".
            Attach::KProbe(function) | Attach::KRetProbe(function) => {
                let p: &mut KProbe = prog.try_into().map_err(loading)?;
                p.load().map_err(loading)?;
                let id = p.attach(function, 0).map_err(attaching)?;
                self.links.insert(name, LinkId::KProbe(id));
            }
            // A uretprobe is a UProbe program whose kind (from its section) says "return".
            Attach::UProbe(symbol) | Attach::URetProbe(symbol) => {
                let p: &mut UProbe = prog.try_into().map_err(loading)?;
                p.load().map_err(loading)?;
                self.attach_libraries(name, symbol, &hook)?;
            }
        }
        debug!(program = name, elapsed = ?started.elapsed(), "verified and attached");
        Ok(())
    }
}

impl AyaKernel<'_> {
    /// Attaches uprobe `name` (loaded) to `symbol` in each libssl of the node. Proven when one
    /// attaches, or when the node has none yet (the watcher attaches those that appear);
    /// refused when every library refused it.
    fn attach_libraries(
        &mut self,
        name: &'static str,
        symbol: &'static str,
        hook: &str,
    ) -> Result<(), HookError> {
        let libs = self
            .libssl
            .get_or_insert_with(|| libssl::at_start(self.tls_scope))
            .libraries
            .clone();
        let mut reasons = Vec::new();
        for lib in libs {
            let result = libssl::attach_one(self.ebpf, name, symbol, &lib);
            if let Err(e) = &result {
                reasons.push(format!("{}: {e}", lib.path.display()));
            }
            self.uprobes.push((lib, name, result));
        }
        let attached = self.uprobes.iter().any(|(_, p, r)| *p == name && r.is_ok());
        if attached || reasons.is_empty() {
            return Ok(());
        }
        Err(HookError::Attach {
            program: name,
            hook: hook.to_owned(),
            reason: reasons.join("; "),
        })
    }

    /// Detaches `program` (still loaded) and attaches it again.
    fn reattach_inner(&mut self, program: &hooks::Program) -> Result<(), HookError> {
        let name = program.name;
        let failed = |e: ProgramError| HookError::Attach {
            program: name,
            hook: program.attach.to_string(),
            reason: format!(
                "attaches once but not again after a detach (the write gate detaches it while \
                 no runtime is on the node): {}",
                with_sources(&e)
            ),
        };
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(HookError::Missing { program: name })?;
        let Some(link) = self.links.remove(name) else {
            return Ok(());
        };
        let again = match (prog, link, program.attach) {
            (aya::programs::Program::FEntry(p), LinkId::FEntry(id), _) => {
                p.detach(id).and_then(|()| p.attach()).map(LinkId::FEntry)
            }
            (aya::programs::Program::FExit(p), LinkId::FExit(id), _) => {
                p.detach(id).and_then(|()| p.attach()).map(LinkId::FExit)
            }
            (
                aya::programs::Program::KProbe(p),
                LinkId::KProbe(id),
                Attach::KProbe(f) | Attach::KRetProbe(f),
            ) => p
                .detach(id)
                .and_then(|()| p.attach(f, 0))
                .map(LinkId::KProbe),
            (
                aya::programs::Program::TracePoint(p),
                LinkId::TracePoint(id),
                Attach::Tracepoint(category, tp),
            ) => p
                .detach(id)
                .and_then(|()| p.attach(category, tp))
                .map(LinkId::TracePoint),
            (
                aya::programs::Program::RawTracePoint(p),
                LinkId::Raw(id),
                Attach::RawTracepoint(tp),
            ) => p.detach(id).and_then(|()| p.attach(tp)).map(LinkId::Raw),
            (_, link, _) => {
                self.links.insert(name, link);
                return Ok(());
            }
        };
        let id = again.map_err(failed)?;
        self.links.insert(name, id);
        Ok(())
    }
}

/// An error and its causes, one line ("`bpf_raw_tracepoint_open` failed: Invalid argument").
pub(super) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A load failure: the verifier's reason when it has one, the system error otherwise.
fn load_error(program: &'static str, hook: &str, e: ProgramError) -> HookError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                HookError::Load {
                    program,
                    hook: hook.into(),
                    reason: io_error.to_string(),
                }
            } else {
                debug!(program, "verifier log:\n{log}");
                HookError::Rejected {
                    program,
                    hook: hook.into(),
                    reason: hooks::verifier_reason(&log),
                }
            }
        }
        other => HookError::Load {
            program,
            hook: hook.into(),
            reason: with_sources(&other),
        },
    }
}

impl Kernel for AyaKernel<'_> {
    fn attach(&mut self, program: &hooks::Program) -> Result<(), HookError> {
        let result = self.attach_inner(program);
        self.tried.push(ProgramStatus {
            program: program.name,
            hook: program.attach.to_string(),
            result: result.clone(),
        });
        result
    }

    fn detach(&mut self, program: &hooks::Program) {
        self.links.remove(program.name);
        if let Some(p) = self.ebpf.program_mut(program.name) {
            let unloaded = match p {
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::RawTracePoint(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                aya::programs::Program::UProbe(p) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = unloaded {
                warn!(program = program.name, "detaching: {e}");
            }
        }
        for t in self.tried.iter_mut().filter(|t| t.program == program.name) {
            t.result = Err(HookError::Detached);
        }
    }

    fn reattach(&mut self, program: &hooks::Program) -> Result<(), HookError> {
        let result = self.reattach_inner(program);
        if let Err(e) = &result {
            for t in self.tried.iter_mut().filter(|t| t.program == program.name) {
                t.result = Err(e.clone());
            }
        }
        result
    }

    fn has_field(&self, _category: &str, name: &str, field: &str) -> Result<bool, FormatError> {
        match self.formats.get(name) {
            Some(Ok(format)) => Ok(format.offset(field).is_some()),
            Some(Err(e)) => Err(FormatError::Tracefs(e.clone())),
            None => Err(FormatError::NotRead(name.to_owned())),
        }
    }

    fn preempt_count(&self) -> Result<(), PreemptError> {
        self.preempt.clone()
    }
}
