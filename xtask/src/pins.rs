//! Hook-named root test files run once per candidate hook of what they are named after, each
//! run with its hook pinned (`PROBE_HOOKS`, the agent's `--hooks`): a kernel that would pick
//! another candidate still has this one proven where it attaches. A pin that does not attach
//! on a kernel is not run there: the run says "not attachable" with the kernel's reason (from
//! `probe --check-kernel` with the same pins; in a guest, one check per layer of pins that
//! agree), loudly, and the summary counts it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command};

use crate::tables::FileResult;

/// File stem -> (label, pins): the label names the run (`ksys_write@kprobe`).
const PINNED: &[(&str, &[(&str, &str)])] = &[
    (
        "do_writev",
        &[
            ("fexit", "wasm_writev=fexit,write_result=fexit"),
            ("kprobe", "wasm_writev=kprobe,write_result=kretprobe"),
        ],
    ),
    (
        "ksys_write",
        &[
            ("fexit", "wasm_write=fexit,write_result=fexit"),
            ("kprobe", "wasm_write=kprobe,write_result=kretprobe"),
        ],
    ),
    (
        "sys_enter_write",
        &[(
            "tracepoint",
            "wasm_write=tracepoint,write_result=tracepoint",
        )],
    ),
    (
        "sys_enter_writev",
        &[(
            "tracepoint",
            "wasm_writev=tracepoint,write_result=tracepoint",
        )],
    ),
    (
        "sys_exit_write",
        &[(
            "tracepoint",
            "write_result=tracepoint,wasm_write=tracepoint",
        )],
    ),
    (
        "sys_exit_writev",
        &[(
            "tracepoint",
            "write_result=tracepoint,wasm_writev=tracepoint",
        )],
    ),
    (
        "sock_recv_length",
        &[
            ("raw-tp", "http_request_received=raw-tp"),
            ("fentry", "http_request_received=fentry"),
            ("kprobe", "http_request_received=kprobe"),
        ],
    ),
    (
        "ssl_read",
        &[("uprobe", "http_request_tls_received=uprobe")],
    ),
    ("ssl_write", &[("uprobe", "http_request_tls=uprobe")]),
    ("tcp_v4_err", ICMP),
    ("tcp_v6_err", ICMP),
    ("tcp_v4_send_reset", UNOWNED),
    ("tcp_v6_send_reset", UNOWNED),
    (
        "tcp_sendmsg_locked",
        &[
            ("raw-tp", "http_request_head=raw-tp"),
            ("fentry", "http_request_head=fentry"),
            ("kprobe", "http_request_head=kprobe"),
        ],
    ),
];

const ICMP: &[(&str, &str)] = &[
    ("fentry", "connect_icmp=fentry"),
    ("kprobe", "connect_icmp=kprobe"),
];

const UNOWNED: &[(&str, &str)] = &[
    ("tracepoint", "reset_sent_unowned=tracepoint"),
    ("fentry", "reset_sent_unowned=fentry"),
    ("kprobe", "reset_sent_unowned=kprobe"),
];

/// One run of a test file: its label in the summary and the pins it runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub label: String,
    pub hooks: Option<&'static str>,
}

/// The runs of the file `stem`: one per pinned candidate, or one unpinned.
pub fn runs(stem: &str) -> Vec<Run> {
    match PINNED.iter().find(|(s, _)| *s == stem) {
        Some((_, pins)) => pins
            .iter()
            .map(|(label, hooks)| Run {
                label: format!("{stem}@{label}"),
                hooks: Some(hooks),
            })
            .collect(),
        None => vec![Run {
            label: stem.to_owned(),
            hooks: None,
        }],
    }
}

/// The line a run that is not attachable prints (and `tables::parse` reads).
pub const NOT_ATTACHABLE: &str = "xtask: not attachable on this kernel:";

/// Whether the pinned capabilities of `hooks` have a hook on this kernel: Err(the
/// `--check-kernel` lines of those that have none, with the kernel's reasons).
pub fn attachable(bin: &Path, hooks: &str) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--check-kernel")
        .env("PROBE_HOOKS", hooks)
        .output()
        .map_err(|e| format!("running {} --check-kernel: {e}", bin.display()))?;
    unpinned_lines(&String::from_utf8_lossy(&out.stdout), hooks)
}

/// The capabilities `hooks` (CAPABILITY=KIND,...) pins.
fn capabilities(hooks: &str) -> impl Iterator<Item = &str> {
    hooks.split(',').map(capability)
}

/// The `--check-kernel` rows of `hooks`' capabilities that say NONE.
pub fn unpinned_lines(table: &str, hooks: &str) -> Result<(), String> {
    let mut missing = String::new();
    for capability in capabilities(hooks) {
        for line in table.lines() {
            let mut cols = line.split_whitespace();
            if cols.next() == Some(capability) && cols.next() == Some("NONE") {
                let _ = writeln!(missing, "{}", line.trim());
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// Capability -> the capability it needs (the agent's `Requires::Capability` in
/// `probe-user/src/loader/hooks/table.rs`; a unit test reads them there). A pinned run of the
/// first leaves the second to the kernel's default: it cannot share a check with a run that
/// pins the second (its pin there, say a raw tracepoint the kernel lacks, would take the first
/// down with it).
const NEEDS: &[(&str, &str)] = &[
    ("http_request_tls", "http_request_head"),
    ("http_request_tls_received", "http_request_received"),
];

/// The capability of a pin (`CAPABILITY=KIND`).
fn capability(pin: &str) -> &str {
    pin.split('=').next().unwrap_or(pin)
}

/// Whether `pins` can be checked together with `layer`: no capability pinned to two kinds,
/// and no capability one side needs pinned by the other side alone.
fn agrees(layer: &[&str], pins: &[&str]) -> bool {
    let pinned = |set: &[&str], cap: &str| set.iter().any(|p| capability(p) == cap);
    let needed_unpinned = |a: &[&str], b: &[&str]| {
        a.iter().any(|p| {
            NEEDS
                .iter()
                .any(|(c, need)| *c == capability(p) && !pinned(a, need) && pinned(b, need))
        })
    };
    pins.iter().all(|pin| {
        layer
            .iter()
            .all(|held| capability(held) != capability(pin) || held == pin)
    }) && !needed_unpinned(layer, pins)
        && !needed_unpinned(pins, layer)
}

/// The pins of `runs` merged into as few `--hooks` lists as agree (a capability pinned to
/// one kind in each, see [`agrees`]): one `--check-kernel` per list answers for every run in
/// it, where a check per run cost a full load of the agent each (seconds in an emulated guest).
pub fn layers<'a>(runs: impl IntoIterator<Item = &'a str>) -> Vec<Vec<&'a str>> {
    let mut layers: Vec<Vec<&str>> = Vec::new();
    for hooks in runs {
        let pins: Vec<&str> = hooks.split(',').collect();
        let agrees = |layer: &Vec<&str>| agrees(layer, &pins);
        match layers.iter_mut().find(|l| agrees(l)) {
            Some(layer) => {
                for pin in pins {
                    if !layer.contains(&pin) {
                        layer.push(pin);
                    }
                }
            }
            None => layers.push(pins),
        }
    }
    layers
}

/// The guest's `--check-kernel` with the pins of `layer`, into `table` (a shell path).
pub fn guest_check(layer: &[&str], table: &str) -> String {
    let hooks = crate::e2e::shell_quote(&layer.join(","));
    format!("PROBE_HOOKS={hooks} \"$PROBE_BIN\" --check-kernel > {table} 2>&1")
}

/// The check in the guest's shell: when a capability `hooks` pins has no hook in `table` (the
/// check of the layer that holds them), writes the loud line and the rows to `log` instead of
/// running `run` (a shell command).
pub fn guest_run(hooks: &str, table: &str, log: &str, run: &str) -> String {
    let caps: Vec<&str> = capabilities(hooks).collect();
    let pattern = format!("^({}) +NONE", caps.join("|"));
    let hooks = crate::e2e::shell_quote(hooks);
    let pattern = crate::e2e::shell_quote(&pattern);
    format!(
        "rows=$(grep -E {pattern} {table})\n\
         if [ -n \"$rows\" ]; then\n\
         printf '\\n!!!!! {NOT_ATTACHABLE} --hooks %s !!!!!\\n%s\\n' {hooks} \"$rows\" > {log}\n\
         else\n\
         export PROBE_HOOKS={hooks}\n\
         {run}\n\
         unset PROBE_HOOKS\n\
         fi"
    )
}

/// capability=kind x kernel: `passed` where a run pinned to it passed, `FAILED` where one
/// failed, `not attachable` where it does not attach, `-` where it did not run.
pub fn candidate_summary(columns: &[(String, BTreeMap<String, FileResult>)]) -> String {
    // Each pin with the runs that hold it, in the table's order.
    let mut pins: Vec<(&str, Vec<String>)> = Vec::new();
    for (stem, runs) in PINNED {
        for (label, hooks) in *runs {
            for pin in hooks.split(',') {
                let run = format!("{stem}@{label}");
                match pins.iter_mut().find(|(p, _)| *p == pin) {
                    Some((_, runs)) => runs.push(run),
                    None => pins.push((pin, vec![run])),
                }
            }
        }
    }
    // Grouped by capability, candidates in the table's order.
    pins.sort_by_key(|(pin, _)| pin.split('=').next().unwrap_or_default().to_owned());
    let mut out = crate::tables::header(
        "hook candidates, pinned (--hooks) in the hook-named test files",
        ("capability=kind", 32),
        columns,
    );
    for (pin, runs) in pins {
        let _ = write!(out, "{pin:<32}");
        for (_, results) in columns {
            let got: Vec<&FileResult> = runs.iter().filter_map(|r| results.get(r)).collect();
            let cell = if got.is_empty() {
                "-"
            } else if got.iter().any(|r| !r.ok()) {
                "FAILED"
            } else if got
                .iter()
                .any(|r| !r.not_attachable && r.unsupported == 0 && r.passed > 0)
            {
                "passed"
            } else if got.iter().all(|r| r.not_attachable) {
                "not attachable"
            } else if got
                .iter()
                .all(|r| r.passed + r.unsupported + r.skipped == 0)
            {
                // A filter left none of its tests.
                "not run"
            } else {
                "unsupported"
            };
            let _ = write!(out, " {cell:>24}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_named_files_run_once_per_candidate() {
        assert_eq!(
            runs("ksys_write"),
            vec![
                Run {
                    label: "ksys_write@fexit".into(),
                    hooks: Some("wasm_write=fexit,write_result=fexit")
                },
                Run {
                    label: "ksys_write@kprobe".into(),
                    hooks: Some("wasm_write=kprobe,write_result=kretprobe")
                },
            ]
        );
        assert_eq!(
            runs("folding"),
            vec![Run {
                label: "folding".into(),
                hooks: None
            }]
        );
    }

    /// Every candidate of the table lands in a layer with no capability pinned twice, and
    /// the whole table needs one layer per candidate of the capability with the most, and one
    /// for the TLS pins (they leave the plaintext capabilities they need unpinned).
    #[test]
    fn pins_merge_into_layers_that_agree() {
        let all: Vec<&str> = PINNED
            .iter()
            .flat_map(|(_, runs)| runs.iter().map(|(_, hooks)| *hooks))
            .collect();
        let layers = layers(all.iter().copied());
        assert_eq!(layers.len(), 4, "{layers:?}");
        for hooks in &all {
            let holder = layers
                .iter()
                .filter(|l| hooks.split(',').all(|p| l.contains(&p)))
                .count();
            assert!(holder >= 1, "{hooks} is in no layer: {layers:?}");
        }
        for layer in &layers {
            let mut caps: Vec<&str> = layer.iter().map(|p| p.split('=').next().unwrap()).collect();
            caps.sort();
            let n = caps.len();
            caps.dedup();
            assert_eq!(caps.len(), n, "a capability pinned twice in {layer:?}");
        }
        assert_eq!(
            super::layers(["a=x,b=y", "a=z", "b=y,c=w", "a=x"]),
            [vec!["a=x", "b=y", "c=w"], vec!["a=z"]]
        );
    }

    /// A TLS pin leaves the plaintext capability it needs to the kernel: it never lands in a
    /// layer that pins that one (the layer's raw tracepoint, absent on 5.10-6.12, made the TLS
    /// runs "not attachable" there), and a layer that pins both together still agrees.
    #[test]
    fn a_pin_never_shares_a_check_with_a_pin_of_what_it_needs() {
        assert_eq!(
            super::layers([
                "http_request_head=raw-tp",
                "http_request_tls=uprobe",
                "wasm_write=fexit",
            ]),
            [
                vec!["http_request_head=raw-tp", "wasm_write=fexit"],
                vec!["http_request_tls=uprobe"]
            ]
        );
        assert_eq!(
            super::layers([
                "http_request_tls=uprobe,http_request_head=fentry",
                "http_request_head=fentry",
                "http_request_head=kprobe",
            ]),
            [
                vec!["http_request_tls=uprobe", "http_request_head=fentry"],
                vec!["http_request_head=kprobe"]
            ]
        );
    }

    /// NEEDS is the agent's table: every `Requires::Capability` of table.rs, under the
    /// capability whose candidate says it.
    #[test]
    fn needs_are_the_agents_requirements() {
        let table = include_str!("../../probe-user/src/loader/hooks/table.rs");
        let mut found = Vec::new();
        let mut current = "";
        for line in table.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("name: \"") {
                current = name.trim_end_matches("\",");
            }
            if let Some(need) = line.strip_prefix("requires: Requires::Capability(\"") {
                found.push((current, need.trim_end_matches("\"),")));
            }
        }
        assert_eq!(found, NEEDS);
    }

    #[test]
    fn a_pinned_capability_without_a_hook_is_found_in_the_table() {
        let table = "capability            hook      note\n\
                     reset_sent            tracepoint tcp:tcp_send_reset\n\
                     reset_sent_unowned    NONE      TCP resets ...: kprobe: does not attach\n\
                     reset_reason          NONE      resets will carry no reason\n";
        assert_eq!(
            unpinned_lines(table, "reset_sent_unowned=kprobe"),
            Err("reset_sent_unowned    NONE      TCP resets ...: kprobe: does not attach\n".into())
        );
        assert_eq!(unpinned_lines(table, "reset_sent=tracepoint"), Ok(()));
    }

    #[test]
    fn candidates_are_passed_failed_or_not_attachable_per_kernel() {
        let passed = FileResult {
            passed: 1,
            ..FileResult::default()
        };
        let failed = FileResult {
            failed: 1,
            ..passed.clone()
        };
        let absent = FileResult {
            not_attachable: true,
            ..FileResult::default()
        };
        let host: BTreeMap<String, FileResult> = [
            ("tcp_v4_send_reset@tracepoint", passed.clone()),
            ("tcp_v6_send_reset@tracepoint", passed.clone()),
            ("tcp_v4_send_reset@kprobe", absent.clone()),
            ("tcp_v6_send_reset@kprobe", absent),
            ("tcp_v4_send_reset@fentry", passed),
            ("tcp_v6_send_reset@fentry", failed),
            ("tcp_v4_err@fentry", FileResult::default()),
            ("tcp_v6_err@fentry", FileResult::default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let table = candidate_summary(&[("host".into(), host)]);
        let row = |pin: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("{pin} ")))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(
            row("reset_sent_unowned=tracepoint").as_deref(),
            Some("passed")
        );
        assert_eq!(
            row("reset_sent_unowned=kprobe").as_deref(),
            Some("not attachable")
        );
        assert_eq!(row("reset_sent_unowned=fentry").as_deref(), Some("FAILED"));
        assert_eq!(row("http_request_head=kprobe").as_deref(), Some("-"));
        assert_eq!(row("connect_icmp=fentry").as_deref(), Some("not run"));
    }
}
