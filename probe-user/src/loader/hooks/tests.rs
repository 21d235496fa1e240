//! Hook selection against a fake kernel: candidates in order, first success wins, shared
//! programs attach once, partial candidates are undone, failures carry program, hook and
//! the kernel's reason.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::loader::offsets::PreemptError;

/// A kernel that refuses what it is told to, the way real ones do.
#[derive(Default)]
struct FakeKernel {
    refuse: HashMap<&'static str, HookError>,
    fields: HashSet<(&'static str, &'static str)>,
    attached: Vec<&'static str>,
    attempts: Vec<&'static str>,
    detached: Vec<&'static str>,
    refuse_reattach: HashMap<&'static str, HookError>,
    reattached: Vec<&'static str>,
    /// Why the preempt count cannot be located (None: it can).
    no_preempt_count: Option<PreemptError>,
}

impl FakeKernel {
    fn verifier_rejects(mut self, program: &'static str, hook: &str, reason: &str) -> Self {
        self.refuse.insert(
            program,
            HookError::Rejected {
                program,
                hook: hook.into(),
                reason: reason.into(),
            },
        );
        self
    }

    fn no_attach(mut self, program: &'static str, hook: &str, reason: &str) -> Self {
        self.refuse.insert(
            program,
            HookError::Attach {
                program,
                hook: hook.into(),
                reason: reason.into(),
            },
        );
        self
    }
}

impl Kernel for FakeKernel {
    fn attach(&mut self, program: &Program) -> Result<(), HookError> {
        self.attempts.push(program.name);
        if let Some(e) = self.refuse.get(program.name) {
            return Err(e.clone());
        }
        self.attached.push(program.name);
        Ok(())
    }

    fn detach(&mut self, program: &Program) {
        self.attached.retain(|p| *p != program.name);
        self.detached.push(program.name);
    }

    fn reattach(&mut self, program: &Program) -> Result<(), HookError> {
        self.reattached.push(program.name);
        match self.refuse_reattach.get(program.name) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn has_field(&self, _category: &str, name: &str, field: &str) -> Result<bool, FormatError> {
        Ok(self.fields.iter().any(|(n, f)| *n == name && *f == field))
    }

    fn preempt_count(&self) -> Result<(), PreemptError> {
        self.no_preempt_count.clone().map_or(Ok(()), Err)
    }
}

const ALL_ON: Switches = Switches {
    capture: true,
    http_trace_context: true,
    avoid: Vec::new(),
    pins: Vec::new(),
};

fn status<'a>(all: &'a [CapabilityStatus], name: &str) -> &'a CapabilityStatus {
    all.iter()
        .find(|s| s.capability == name)
        .unwrap_or_else(|| panic!("no capability {name}"))
}

fn chosen(all: &[CapabilityStatus], name: &str) -> Option<String> {
    status(all, name)
        .chosen
        .as_ref()
        .map(|(hook, _)| hook.clone())
}

#[test]
fn first_candidate_that_attaches_wins() {
    let mut kernel = FakeKernel::default().no_attach(
        "tcp_sendmsg_locked",
        "raw_tp tcp_sendmsg_locked",
        "No such file or directory (os error 2)",
    );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    assert_eq!(
        chosen(&all, "http_request_head").as_deref(),
        Some("fentry tcp_sendmsg_locked + raw_tp tcp_destroy_sock")
    );
    let s = status(&all, "http_request_head");
    assert_eq!(
        s.failures,
        vec![HookError::Attach {
            program: "tcp_sendmsg_locked",
            hook: "raw_tp tcp_sendmsg_locked".into(),
            reason: "No such file or directory (os error 2)".into(),
        }]
    );
    // The kprobe was never tried: fentry won.
    assert!(!kernel.attempts.contains(&"tcp_sendmsg_locked_kprobe"));
}

#[test]
fn all_candidates_failing_reports_each_in_order() {
    let mut kernel = FakeKernel::default()
        .no_attach("tcp_sendmsg_locked", "raw_tp tcp_sendmsg_locked", "ENOENT")
        .verifier_rejects(
            "tcp_sendmsg_locked_fentry",
            "fentry tcp_sendmsg_locked",
            "Permission denied",
        )
        .no_attach(
            "tcp_sendmsg_locked_kprobe",
            "kprobe tcp_sendmsg_locked",
            "kprobes are not enabled",
        );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    let s = status(&all, "http_request_head");
    assert_eq!(s.chosen, None);
    let programs: Vec<&str> = s
        .failures
        .iter()
        .map(|e| match e {
            HookError::Attach { program, .. } | HookError::Rejected { program, .. } => *program,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        programs,
        [
            "tcp_sendmsg_locked",
            "tcp_sendmsg_locked_fentry",
            "tcp_sendmsg_locked_kprobe"
        ]
    );
    assert_eq!(
        s.reason(),
        "tcp_sendmsg_locked_kprobe on kprobe tcp_sendmsg_locked: does not attach: kprobes are not enabled"
    );
}

/// With no send hook, the TLS uprobes would hand request heads to nothing: they are not
/// loaded, and say why.
#[test]
fn a_capability_that_needs_another_without_a_hook_has_none() {
    let mut kernel = FakeKernel::default()
        .no_attach("tcp_sendmsg_locked", "raw_tp tcp_sendmsg_locked", "ENOENT")
        .no_attach(
            "tcp_sendmsg_locked_fentry",
            "fentry tcp_sendmsg_locked",
            "EPERM",
        )
        .no_attach(
            "tcp_sendmsg_locked_kprobe",
            "kprobe tcp_sendmsg_locked",
            "ENOENT",
        );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    let s = status(&all, "http_request_tls");
    assert_eq!(s.chosen, None);
    assert_eq!(
        s.failures,
        vec![HookError::Unusable {
            hook: "uprobe libssl:SSL_write + uprobe libssl:SSL_write_ex".into(),
            reason: "needs http_request_head, which has no hook".into(),
        }]
    );
    assert!(!kernel.attempts.contains(&"ssl_write"));
    // The receive side has its hook: its TLS uprobes are there.
    assert!(chosen(&all, "http_request_tls_received").is_some());
}

/// A capability another requires comes before it in the table (selection runs in order).
#[test]
fn required_capabilities_come_first() {
    for (i, cap) in CAPABILITIES.iter().enumerate() {
        for candidate in cap.candidates {
            if let Requires::Capability(name) = candidate.requires {
                assert!(
                    CAPABILITIES[..i].iter().any(|c| c.name == name),
                    "{} requires {name}, which is not before it",
                    cap.name
                );
            }
        }
    }
}

#[test]
fn a_field_requirement_moves_to_the_next_candidate() {
    // A kernel whose tcp_send_reset has no `reason` (before 6.10): the no-socket resets need
    // the function hooks; the reset itself still uses the tracepoint.
    let mut kernel = FakeKernel::default();
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    assert_eq!(
        chosen(&all, "reset_sent").as_deref(),
        Some("tracepoint tcp:tcp_send_reset")
    );
    assert_eq!(
        chosen(&all, "reset_sent_unowned").as_deref(),
        Some("fentry tcp_v4_send_reset + fentry tcp_v6_send_reset")
    );
    assert_eq!(chosen(&all, "reset_reason"), None);
    assert_eq!(
        status(&all, "reset_reason").reason(),
        "tracepoint tcp:tcp_send_reset: its record has no `reason` field on this kernel"
    );

    // With the field, the tracepoint covers both and no function hook is attached.
    let mut kernel = FakeKernel::default();
    kernel.fields.insert(("tcp_send_reset", "reason"));
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    assert_eq!(
        chosen(&all, "reset_sent_unowned").as_deref(),
        Some("tracepoint tcp:tcp_send_reset (field reason)")
    );
    assert!(chosen(&all, "reset_reason").is_some());
    assert!(!kernel.attempts.iter().any(|p| p.contains("send_reset_")));
}

#[test]
fn shared_programs_attach_once_and_failures_are_reused() {
    let mut kernel = FakeKernel::default().no_attach(
        "kfree_skb",
        "raw_tp kfree_skb",
        "Invalid argument (os error 22)",
    );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    assert_eq!(
        chosen(&all, "drops").as_deref(),
        Some("raw_tp kfree_skb"),
        "the reason-less program on the same tracepoint"
    );
    assert_eq!(
        status(&all, "drops").chosen.as_ref().map(|c| c.1.clone()),
        Some(vec!["kfree_skb_noreason"])
    );
    assert_eq!(chosen(&all, "drop_reason"), None);
    assert_eq!(
        kernel
            .attempts
            .iter()
            .filter(|p| **p == "kfree_skb")
            .count(),
        1
    );
    assert_eq!(
        kernel
            .attempts
            .iter()
            .filter(|p| **p == "tcp_send_reset")
            .count(),
        1
    );
}

#[test]
fn a_partial_candidate_is_undone() {
    // fentry works for IPv4 but not for IPv6: the IPv4 program goes again, kprobes take over.
    let mut kernel = FakeKernel::default().verifier_rejects(
        "tcp_v6_send_reset_fentry",
        "fentry tcp_v6_send_reset",
        "R1 invalid mem access 'scalar'",
    );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    assert_eq!(
        chosen(&all, "reset_sent_unowned").as_deref(),
        Some("kprobe tcp_v4_send_reset + kprobe tcp_v6_send_reset")
    );
    assert_eq!(kernel.detached, ["tcp_v4_send_reset_fentry"]);
    assert!(!kernel.attached.contains(&"tcp_v4_send_reset_fentry"));
}

#[test]
fn switched_off_capabilities_are_not_tried() {
    let mut kernel = FakeKernel::default();
    let all = select(
        CAPABILITIES,
        &Switches {
            capture: false,
            http_trace_context: false,
            avoid: Vec::new(),
            pins: Vec::new(),
        },
        &mut kernel,
    );
    for name in ["wasm_write", "wasm_writev", "write_result", "process_exec"] {
        assert_eq!(status(&all, name).disabled, Some("--capture-bytes 0"));
    }
    assert_eq!(
        status(&all, "http_request_head").reason(),
        "disabled by --http-trace-context false"
    );
    assert!(
        !kernel
            .attempts
            .iter()
            .any(|p| p.starts_with("sys_") || p.starts_with("tcp_sendmsg"))
    );
}

#[test]
fn every_program_of_the_table_is_named_once_with_one_hook() {
    let mut seen: HashMap<&str, Attach> = HashMap::new();
    for cap in CAPABILITIES {
        assert!(!cap.candidates.is_empty(), "{}", cap.name);
        for c in cap.candidates {
            for p in c.programs {
                if let Some(a) = seen.insert(p.name, p.attach) {
                    assert_eq!(a, p.attach, "{} attached two ways", p.name);
                }
            }
        }
    }
}

#[test]
fn verifier_reason_is_the_last_meaningful_line() {
    let log = "0: R1=ctx() R10=fp0\n; fun(dst, size, unsafe_ptr)\n324: (85) call bpf_probe_read_user#112\n\
               R2 min value is negative, either use unsigned or 'var &= const'\n\
               verification time 94800 usec\nstack depth 160+0\n\
               processed 4850 insns (limit 1000000) max_states_per_insn 5 total_states 80\n";
    assert_eq!(
        verifier_reason(log),
        "R2 min value is negative, either use unsigned or 'var &= const'"
    );
    assert_eq!(verifier_reason(""), "(empty verifier log)");
}

/// Write hooks are detached and attached again by the write gate: a trampoline that attaches
/// once but not twice (fentry/fexit before 5.13) loses to the kprobe, proven at load.
#[test]
fn an_on_demand_hook_must_attach_again_after_a_detach() {
    let mut kernel = FakeKernel::default();
    kernel.refuse_reattach.insert(
        "ksys_write_fexit",
        HookError::Attach {
            program: "ksys_write_fexit",
            hook: "fexit ksys_write".into(),
            reason: "attaches once but not again after a detach".into(),
        },
    );
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    let write = status(&all, "wasm_write");
    assert_eq!(
        write.chosen,
        Some(("kprobe ksys_write".to_owned(), vec!["ksys_write_kprobe"]))
    );
    assert!(
        write.failures[0]
            .to_string()
            .contains("not again after a detach")
    );
    assert!(kernel.detached.contains(&"ksys_write_fexit"));
    assert!(kernel.attached.contains(&"ksys_write_kprobe"));
    // Capabilities that are always attached are not put through it.
    assert!(!kernel.reattached.contains(&"tcp_v4_send_reset_fentry"));
    assert!(kernel.reattached.contains(&"ksys_write_kprobe"));
}

/// Softirq context comes from the kernel's preempt count where BTF locates it: no program at
/// all; else the softirq tracepoints.
#[test]
fn softirq_context_needs_no_program_where_the_preempt_count_is_located() {
    let mut kernel = FakeKernel::default();
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    let s = status(&all, "softirq_context");
    assert_eq!(
        s.chosen,
        Some(("preempt count (per-CPU, no program)".to_owned(), vec![]))
    );
    assert!(!kernel.attempts.iter().any(|p| p.starts_with("softirq")));

    let mut kernel = FakeKernel {
        no_preempt_count: Some(PreemptError::NoPerCpuVariables),
        ..FakeKernel::default()
    };
    let all = select(CAPABILITIES, &ALL_ON, &mut kernel);
    let s = status(&all, "softirq_context");
    assert_eq!(
        s.chosen.as_ref().map(|c| c.1.clone()),
        Some(vec!["softirq_entry", "softirq_exit"])
    );
    assert_eq!(
        s.failures[0].to_string(),
        "preempt count (per-CPU, no program): neither BTF nor /proc/kallsyms locates the \
         per-CPU variables runqueues and __preempt_count (or pcpu_hot)"
    );
}

/// `--avoid-hooks`: candidates of an avoided kind are skipped and say so.
#[test]
fn avoided_kinds_of_hook_are_not_tried() {
    let mut kernel = FakeKernel::default();
    let switches = Switches {
        avoid: vec![HookKind::Fentry, HookKind::PreemptCount],
        ..ALL_ON
    };
    let all = select(CAPABILITIES, &switches, &mut kernel);
    assert_eq!(
        chosen(&all, "reset_sent_unowned").as_deref(),
        Some("kprobe tcp_v4_send_reset + kprobe tcp_v6_send_reset")
    );
    assert_eq!(
        status(&all, "reset_sent_unowned").failures[1].to_string(),
        "fentry tcp_v4_send_reset + fentry tcp_v6_send_reset: avoided by --avoid-hooks fentry"
    );
    assert_eq!(
        chosen(&all, "softirq_context").as_deref(),
        Some("raw_tp softirq_entry + raw_tp softirq_exit")
    );
    assert!(!kernel.attempts.iter().any(|p| p.ends_with("_fentry")));
}

/// `--hooks CAPABILITY=KIND`: the pinned capability tries only its candidates of that kind,
/// even where an earlier one would attach; the others say why they were not tried.
#[test]
fn a_pinned_capability_tries_only_its_pinned_kind() {
    let mut kernel = FakeKernel::default();
    let pins = [
        "reset_sent_unowned=kprobe",
        "softirq_context=raw-tp",
        "http_request_head=fentry",
    ]
    .map(|p| HookPin::parse(p, CAPABILITIES).expect(p));
    let switches = Switches {
        pins: pins.to_vec(),
        ..ALL_ON
    };
    assert!(!switches.preempt_count_allowed(CAPABILITIES));
    assert!(ALL_ON.preempt_count_allowed(CAPABILITIES));
    // The function hook reports resets without a full socket, the tracepoint no longer.
    assert!(!switches.unowned_from_tracepoint());
    assert!(ALL_ON.unowned_from_tracepoint());
    let all = select(CAPABILITIES, &switches, &mut kernel);
    assert_eq!(
        chosen(&all, "reset_sent_unowned").as_deref(),
        Some("kprobe tcp_v4_send_reset + kprobe tcp_v6_send_reset")
    );
    assert_eq!(
        status(&all, "reset_sent_unowned").failures[0].to_string(),
        "tracepoint tcp:tcp_send_reset (field reason): not tried: --hooks reset_sent_unowned=kprobe"
    );
    assert_eq!(
        chosen(&all, "softirq_context").as_deref(),
        Some("raw_tp softirq_entry + raw_tp softirq_exit")
    );
    assert_eq!(
        chosen(&all, "http_request_head").as_deref(),
        Some("fentry tcp_sendmsg_locked + raw_tp tcp_destroy_sock")
    );
    // Capabilities without a pin keep their first choice.
    assert_eq!(
        chosen(&all, "reset_sent").as_deref(),
        Some("tracepoint tcp:tcp_send_reset")
    );
    assert!(!kernel.attempts.contains(&"tcp_sendmsg_locked"));
}

/// A pinned kind that does not attach leaves the capability without a hook (no fallback):
/// the kernel's reason is the last word.
#[test]
fn a_pin_that_does_not_attach_is_not_replaced() {
    let mut kernel = FakeKernel::default().no_attach(
        "ksys_write_kprobe",
        "kprobe ksys_write",
        "No such file or directory (os error 2)",
    );
    let switches = Switches {
        pins: vec![HookPin::parse("wasm_write=kprobe", CAPABILITIES).unwrap()],
        ..ALL_ON
    };
    let all = select(CAPABILITIES, &switches, &mut kernel);
    let s = status(&all, "wasm_write");
    assert_eq!(s.chosen, None);
    assert_eq!(
        s.reason(),
        "ksys_write_kprobe on kprobe ksys_write: does not attach: No such file or directory (os error 2)"
    );
    assert_eq!(
        s.failures.last().unwrap().to_string(),
        "tracepoint syscalls:sys_enter_write: not tried: --hooks wasm_write=kprobe"
    );
}

#[test]
fn hook_pins_are_checked_against_the_table() {
    let pin = HookPin::parse("drops=raw-tp", CAPABILITIES).unwrap();
    assert_eq!((pin.capability, pin.kind), ("drops", HookKind::RawTp));
    assert_eq!(pin.to_string(), "drops=raw-tp");
    assert_eq!(
        HookPin::parse("wasm_write=raw-tp", CAPABILITIES)
            .unwrap_err()
            .to_string(),
        "`raw-tp`: wasm_write has no such hook (its kinds: fexit, kprobe, tracepoint)"
    );
    assert!(
        HookPin::parse("nosuch=kprobe", CAPABILITIES)
            .unwrap_err()
            .to_string()
            .starts_with("`nosuch`: no such capability (one of: softirq_context, ")
    );
    assert_eq!(
        HookPin::parse("wasm_write", CAPABILITIES)
            .unwrap_err()
            .to_string(),
        "`wasm_write`: expected CAPABILITY=KIND"
    );
}
