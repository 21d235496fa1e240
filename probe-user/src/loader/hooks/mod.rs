//! The hook table: each capability of the probe with its hooks in order of preference. The
//! loader attaches, per capability, the first candidate whose programs all load and attach on
//! this kernel (an attach test, not a program-type test: a kernel may accept the program type
//! and still refuse the attach point). What no candidate provides is reported with every
//! candidate's failure: program, hook and the kernel's reason.

use std::{collections::HashMap, fmt};

use thiserror::Error;

use super::offsets::PreemptError;

mod table;
pub use self::table::CAPABILITIES;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// fentry on a kernel function (BPF trampoline).
    FEntry(&'static str),
    /// fexit on a kernel function: its arguments and return value.
    FExit(&'static str),
    /// A raw tracepoint, by name.
    RawTracepoint(&'static str),
    /// A classic tracepoint: category, name.
    Tracepoint(&'static str, &'static str),
    /// A kprobe on a kernel function.
    KProbe(&'static str),
    /// A kretprobe on a kernel function (its return value).
    KRetProbe(&'static str),
    /// A uprobe on a function of OpenSSL's libssl, in every copy of the library the node has
    /// (`loader/libssl.rs`).
    UProbe(&'static str),
    /// A uretprobe on such a function (its return).
    URetProbe(&'static str),
}

impl Attach {
    /// Whether the program is a BPF trampoline (fentry/fexit: needs the kernel's BTF).
    pub fn is_trampoline(&self) -> bool {
        matches!(self, Self::FEntry(_) | Self::FExit(_))
    }
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FEntry(func) => write!(f, "fentry {func}"),
            Self::FExit(func) => write!(f, "fexit {func}"),
            Self::RawTracepoint(name) => write!(f, "raw_tp {name}"),
            Self::Tracepoint(cat, name) => write!(f, "tracepoint {cat}:{name}"),
            Self::KProbe(func) => write!(f, "kprobe {func}"),
            Self::KRetProbe(func) => write!(f, "kretprobe {func}"),
            Self::UProbe(func) => write!(f, "uprobe libssl:{func}"),
            Self::URetProbe(func) => write!(f, "uretprobe libssl:{func}"),
        }
    }
}

/// A program of the kernel object and where it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub attach: Attach,
}

pub(super) const fn prog(name: &'static str, attach: Attach) -> Program {
    Program { name, attach }
}

/// What the kernel must show before a candidate counts (besides its programs attaching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requires {
    Nothing,
    /// A field of a tracepoint record (category, name, field), read from its tracefs format.
    Field(&'static str, &'static str, &'static str),
    /// The per-CPU preempt count located through BTF (read by the programs when an event
    /// fires; a candidate without programs).
    PreemptCount,
    /// Another capability, earlier in the table, with a hook: its programs do the rest of the
    /// work (the TLS uprobes hand request heads to the TCP send and receive hooks).
    Capability(&'static str),
}

/// Kinds of hook, for `--avoid-hooks` (a kernel whose fentry or kprobes misbehave, or a test
/// that proves the next candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookKind {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
    RawTp,
    Tracepoint,
    Uprobe,
    PreemptCount,
}

impl HookKind {
    fn of(attach: &Attach) -> Self {
        match attach {
            Attach::FEntry(_) => Self::Fentry,
            Attach::FExit(_) => Self::Fexit,
            Attach::KProbe(_) => Self::Kprobe,
            Attach::KRetProbe(_) => Self::Kretprobe,
            Attach::RawTracepoint(_) => Self::RawTp,
            Attach::Tracepoint(..) => Self::Tracepoint,
            Attach::UProbe(_) | Attach::URetProbe(_) => Self::Uprobe,
        }
    }

    /// The flag value, as clap spells it.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// One way to provide a capability: every program must attach.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub programs: &'static [Program],
    pub requires: Requires,
}

impl Candidate {
    /// The hook as users read it: "fentry tcp_v4_send_reset + fentry tcp_v6_send_reset".
    pub fn hook(&self) -> String {
        let hooks: Vec<String> = self.programs.iter().map(|p| p.attach.to_string()).collect();
        let mut text = hooks.join(" + ");
        match self.requires {
            Requires::Field(_, _, field) => text.push_str(&format!(" (field {field})")),
            Requires::PreemptCount => text.push_str("preempt count (per-CPU, no program)"),
            Requires::Nothing | Requires::Capability(_) => {}
        }
        text
    }

    /// Its kind, as `--hooks` names it: the kind of its first program (the preempt count
    /// for the candidate without programs).
    pub fn kind(&self) -> HookKind {
        self.programs
            .first()
            .map_or(HookKind::PreemptCount, |p| HookKind::of(&p.attach))
    }

    /// The kinds of hook it uses.
    fn kinds(&self) -> impl Iterator<Item = HookKind> + '_ {
        let preempt = (self.requires == Requires::PreemptCount).then_some(HookKind::PreemptCount);
        self.programs
            .iter()
            .map(|p| HookKind::of(&p.attach))
            .chain(preempt)
    }
}

/// Which flag can switch a capability off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Always,
    /// `--capture-bytes 0` (any syscall tracepoint slows every syscall of the node).
    Capture,
    /// `--http-trace-context false`.
    HttpTraceContext,
}

#[derive(Debug, Clone, Copy)]
pub struct Capability {
    pub name: &'static str,
    /// What users lose without it, for the warning.
    pub lost: &'static str,
    pub switch: Switch,
    /// Attached only while a process or cgroup is selected for capture (the write hooks:
    /// any syscall tracepoint slows every syscall of the node). The selection still proves
    /// at load that the hook attaches, then the write gate detaches it until needed.
    pub on_demand: bool,
    pub candidates: &'static [Candidate],
}

/// Why one program did not attach, or why a candidate did not count.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HookError {
    #[error("{program}: not in the kernel object")]
    Missing { program: &'static str },
    #[error("{program} on {hook}: rejected by the verifier: {reason}")]
    Rejected {
        program: &'static str,
        hook: String,
        reason: String,
    },
    #[error("{program} on {hook}: does not load: {reason}")]
    Load {
        program: &'static str,
        hook: String,
        reason: String,
    },
    #[error("{program} on {hook}: does not attach: {reason}")]
    Attach {
        program: &'static str,
        hook: String,
        reason: String,
    },
    #[error("{hook}: {reason}")]
    Unusable { hook: String, reason: String },
    /// Attached, then detached with the other program of its hook, which failed.
    #[error("detached: another program of its hook failed")]
    Detached,
    /// Left out by `--hooks` (not the kernel's doing).
    #[error("{hook}: not tried: --hooks {pin}")]
    NotPinned { hook: String, pin: HookPin },
}

/// What the selection needs from the kernel (the real one in `mod.rs`, a fake in tests).
pub trait Kernel {
    fn attach(&mut self, program: &Program) -> Result<(), HookError>;
    /// Detaches and unloads a program attached earlier.
    fn detach(&mut self, program: &Program);
    /// Detaches an attached program (it stays loaded) and attaches it again, as the write
    /// gate does: some kernels refuse the second attach (fentry/fexit before 5.13).
    fn reattach(&mut self, program: &Program) -> Result<(), HookError>;
    /// Whether the tracepoint record has the field (Err: the format could not be read).
    fn has_field(&self, category: &str, name: &str, field: &str) -> Result<bool, FormatError>;
    /// Whether the programs were given the preempt count's location (Err: why not).
    fn preempt_count(&self) -> Result<(), PreemptError>;
}

/// Why a tracepoint's format is not known.
#[derive(Debug, Clone, Error)]
pub enum FormatError {
    #[error("the format of {0} was not read")]
    NotRead(String),
    #[error(transparent)]
    Tracefs(std::sync::Arc<super::tracefs::TracefsError>),
}

/// The outcome for one capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityStatus {
    pub capability: &'static str,
    pub lost: &'static str,
    /// The hook used, with its programs; None when no candidate worked or it is disabled.
    pub chosen: Option<(String, Vec<&'static str>)>,
    /// Each candidate that failed before the chosen one (or all of them), in order.
    pub failures: Vec<HookError>,
    /// Switched off by a flag (the flag's text).
    pub disabled: Option<&'static str>,
}

impl CapabilityStatus {
    /// The kernel's last word, for the one-line warning.
    pub fn reason(&self) -> String {
        if let Some(flag) = self.disabled {
            return format!("disabled by {flag}");
        }
        // The kernel's word on a pinned candidate, not the candidates the pin left out.
        let kernel = self
            .failures
            .iter()
            .rev()
            .find(|e| !matches!(e, HookError::NotPinned { .. }));
        match kernel.or(self.failures.last()) {
            Some(e) => e.to_string(),
            None => "no candidate hook".into(),
        }
    }
}

/// Why a `--hooks` entry is refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("`{0}`: expected CAPABILITY=KIND")]
    Form(String),
    #[error("`{name}`: no such capability (one of: {known})")]
    Capability { name: String, known: String },
    #[error("`{kind}`: {capability} has no such hook (its kinds: {kinds})")]
    Kind {
        kind: String,
        capability: &'static str,
        kinds: String,
    },
}

/// `--hooks CAPABILITY=KIND`: the capability tries only its candidates of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookPin {
    pub capability: &'static str,
    pub kind: HookKind,
}

impl fmt::Display for HookPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.capability, self.kind.name())
    }
}

impl HookPin {
    /// Parses `CAPABILITY=KIND` against the hook table: the capability exists and has a
    /// candidate of that kind (the error names the kinds it has).
    pub fn parse(text: &str, table: &[Capability]) -> Result<Self, PinError> {
        let (name, kind) = text
            .split_once('=')
            .ok_or_else(|| PinError::Form(text.to_owned()))?;
        let cap = table
            .iter()
            .find(|c| c.name == name.trim())
            .ok_or_else(|| PinError::Capability {
                name: name.to_owned(),
                known: table.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            })?;
        let kinds: Vec<HookKind> = cap.candidates.iter().map(Candidate::kind).collect();
        let kind = <HookKind as clap::ValueEnum>::from_str(kind.trim(), true)
            .ok()
            .filter(|k| kinds.contains(k))
            .ok_or_else(|| PinError::Kind {
                kind: kind.to_owned(),
                capability: cap.name,
                kinds: kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(Self {
            capability: cap.name,
            kind,
        })
    }
}

/// Flags that switch capabilities off or choose their hooks.
#[derive(Debug, Clone)]
pub struct Switches {
    pub capture: bool,
    pub http_trace_context: bool,
    /// `--avoid-hooks`: candidates using these kinds are not tried.
    pub avoid: Vec<HookKind>,
    /// `--hooks`: capabilities that try only their candidates of one kind.
    pub pins: Vec<HookPin>,
}

impl Switches {
    /// The kind `--hooks` pins `capability` to, if any.
    fn pinned(&self, capability: &str) -> Option<HookPin> {
        self.pins
            .iter()
            .find(|p| p.capability == capability)
            .copied()
    }

    /// Whether `tcp:tcp_send_reset` reports resets without a full socket where the kernel
    /// passes them to it: not when `reset_sent_unowned` is pinned to a function hook, which
    /// then reports them (never twice).
    pub fn unowned_from_tracepoint(&self) -> bool {
        self.pinned("reset_sent_unowned")
            .is_none_or(|p| p.kind == HookKind::Tracepoint)
    }

    /// Whether the preempt count may stand for the softirq hooks (neither avoided nor pinned
    /// away from).
    pub fn preempt_count_allowed(&self, table: &[Capability]) -> bool {
        let uses_it = |name: &str| {
            table.iter().any(|c| {
                c.name == name
                    && c.candidates
                        .iter()
                        .any(|k| k.requires == Requires::PreemptCount)
            })
        };
        !self.avoid.contains(&HookKind::PreemptCount)
            && self
                .pins
                .iter()
                .all(|p| p.kind == HookKind::PreemptCount || !uses_it(p.capability))
    }
}

/// Attaches, per capability, the first candidate that works. A program shared by several
/// capabilities is attached once; its result is reused.
pub fn select(
    table: &[Capability],
    switches: &Switches,
    kernel: &mut impl Kernel,
) -> Vec<CapabilityStatus> {
    let mut results: HashMap<&'static str, Result<(), HookError>> = HashMap::new();
    let mut out = Vec::new();
    for cap in table {
        let disabled = match cap.switch {
            Switch::Capture if !switches.capture => Some("--capture-bytes 0"),
            Switch::HttpTraceContext if !switches.http_trace_context => {
                Some("--http-trace-context false")
            }
            _ => None,
        };
        let mut status = CapabilityStatus {
            capability: cap.name,
            lost: cap.lost,
            chosen: None,
            failures: Vec::new(),
            disabled,
        };
        let pin = switches.pinned(cap.name);
        if disabled.is_none() {
            for candidate in cap.candidates {
                if let Some(pin) = pin.filter(|p| p.kind != candidate.kind()) {
                    status.failures.push(HookError::NotPinned {
                        hook: candidate.hook(),
                        pin,
                    });
                    continue;
                }
                if let Some(kind) = candidate.kinds().find(|k| switches.avoid.contains(k)) {
                    status.failures.push(HookError::Unusable {
                        hook: candidate.hook(),
                        reason: format!("avoided by --avoid-hooks {}", kind.name()),
                    });
                    continue;
                }
                if let Some(e) = missing_capability(candidate, &out) {
                    status.failures.push(e);
                    continue;
                }
                match try_candidate(candidate, cap.on_demand, kernel, &mut results) {
                    Ok(()) => {
                        let names = candidate.programs.iter().map(|p| p.name).collect();
                        status.chosen = Some((candidate.hook(), names));
                        break;
                    }
                    Err(e) => status.failures.push(e),
                }
            }
        }
        out.push(status);
    }
    out
}

/// Why `candidate` cannot be used: the capability it requires (selected before it, in
/// `done`) has no hook.
fn missing_capability(candidate: &Candidate, done: &[CapabilityStatus]) -> Option<HookError> {
    let Requires::Capability(name) = candidate.requires else {
        return None;
    };
    let hooked = done
        .iter()
        .any(|s| s.capability == name && s.chosen.is_some());
    (!hooked).then(|| HookError::Unusable {
        hook: candidate.hook(),
        reason: format!("needs {name}, which has no hook"),
    })
}

fn try_candidate(
    candidate: &Candidate,
    on_demand: bool,
    kernel: &mut impl Kernel,
    results: &mut HashMap<&'static str, Result<(), HookError>>,
) -> Result<(), HookError> {
    if let Requires::Field(category, name, field) = candidate.requires {
        let hook = format!("tracepoint {category}:{name}");
        match kernel.has_field(category, name, field) {
            Ok(true) => {}
            Ok(false) => {
                return Err(HookError::Unusable {
                    hook,
                    reason: format!("its record has no `{field}` field on this kernel"),
                });
            }
            Err(e) => {
                return Err(HookError::Unusable {
                    hook,
                    reason: e.to_string(),
                });
            }
        }
    }
    if candidate.requires == Requires::PreemptCount {
        kernel.preempt_count().map_err(|e| HookError::Unusable {
            hook: candidate.hook(),
            reason: e.to_string(),
        })?;
    }
    let mut attached_now = Vec::new();
    for program in candidate.programs {
        let result = results
            .entry(program.name)
            .or_insert_with(|| {
                let r = kernel.attach(program);
                if r.is_ok() {
                    attached_now.push(*program);
                }
                r
            })
            .clone();
        if let Err(e) = result {
            // All or nothing: what this candidate attached goes again.
            for p in attached_now {
                kernel.detach(&p);
                results.remove(p.name);
            }
            return Err(e);
        }
    }
    // The write gate detaches and attaches on-demand programs: proven here too.
    if on_demand {
        for program in &attached_now {
            if let Err(e) = kernel.reattach(program) {
                for p in &attached_now {
                    kernel.detach(p);
                    results.remove(p.name);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The reason in a verifier log: its last line that is not a statistics line.
pub fn verifier_reason(log: &str) -> String {
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("max_states_per_insn")
        })
        .unwrap_or("(empty verifier log)")
        .to_owned()
}

#[cfg(test)]
mod tests;
