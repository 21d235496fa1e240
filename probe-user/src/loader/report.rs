//! What the hook selection tells users: reports for /health/status and /metrics, the startup
//! log (a WARN per capability with no working hook, naming what is lost and why), and the
//! `--check-kernel` table.

use std::fmt::Write as _;

use tracing::{error, info, warn};

use super::{LoaderConfig, Probe, hooks::CapabilityStatus};
use crate::status::{CapabilityReport, ProgramReport};

impl Probe {
    pub fn program_reports(&self) -> Vec<ProgramReport> {
        self.programs
            .iter()
            .map(|p| ProgramReport {
                program: p.program.into(),
                hook: p.hook.clone(),
                attached: p.result.is_ok(),
                on_demand: false,
                error: p.result.as_ref().err().map(ToString::to_string),
            })
            .collect()
    }

    pub fn capability_reports(&self) -> Vec<CapabilityReport> {
        self.capabilities.iter().map(report).collect()
    }

    /// One log line per capability: the hook (INFO), or what is lost and why (WARN).
    pub fn log_capabilities(&self) {
        for c in &self.capabilities {
            match (&c.chosen, c.disabled) {
                (Some((hook, _)), _) => info!(capability = c.capability, hook, "hook"),
                (None, Some(flag)) => info!(capability = c.capability, "disabled by {flag}"),
                (None, None) => warn!(
                    capability = c.capability,
                    "{}: no hook works on this kernel: {}",
                    c.lost,
                    c.reason()
                ),
            }
        }
    }

    /// Capabilities with no working hook (disabled ones excluded).
    pub fn missing_capabilities(&self) -> usize {
        self.capabilities
            .iter()
            .filter(|c| c.chosen.is_none() && c.disabled.is_none())
            .count()
    }

    /// The `--check-kernel` table.
    pub fn capability_table(&self) -> String {
        table(&self.capabilities)
    }
}

fn report(c: &CapabilityStatus) -> CapabilityReport {
    CapabilityReport {
        capability: c.capability.into(),
        hook: c.chosen.as_ref().map(|(hook, _)| hook.clone()),
        programs: c
            .chosen
            .as_ref()
            .map(|(_, p)| p.iter().map(|p| (*p).to_owned()).collect())
            .unwrap_or_default(),
        error: c
            .chosen
            .is_none()
            .then(|| format!("{}: {}", c.lost, c.reason())),
        tried: c.failures.iter().map(ToString::to_string).collect(),
    }
}

/// capability | hook (or "-", "NONE") | note: the failures before the chosen hook, or why
/// none works. Columns are separated by at least two spaces (hooks never contain two).
pub fn table(caps: &[CapabilityStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<22}  {:<56}  note", "capability", "hook");
    for c in caps {
        let (hook, note) = match (&c.chosen, c.disabled) {
            (Some((hook, _)), _) => (
                hook.clone(),
                c.failures
                    .iter()
                    .map(|e| format!("not {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (None, Some(flag)) => ("-".to_owned(), format!("disabled by {flag}")),
            (None, None) => (
                "NONE".to_owned(),
                format!(
                    "{}: {}",
                    c.lost,
                    c.failures
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
        };
        let _ = writeln!(out, "{:<22}  {:<56}  {note}", c.capability, hook);
    }
    out
}

/// `--check-kernel`: load and attach everything, print the capability table, detach.
pub fn check_kernel(config: &LoaderConfig) -> std::process::ExitCode {
    match Probe::load(config) {
        Ok(probe) => {
            print!("{}", probe.capability_table());
            if let Some(tls) = &probe.tls {
                let libs = tls.lines();
                println!("TLS libraries with uprobes: {}", libs.len());
                for lib in libs {
                    println!("  {lib}");
                }
            }
            let missing = probe.missing_capabilities();
            if missing == 0 {
                println!("every capability has a hook on this kernel");
                std::process::ExitCode::SUCCESS
            } else {
                println!("{missing} capability(ies) without a hook on this kernel");
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
