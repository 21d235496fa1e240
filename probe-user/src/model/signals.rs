//! Signal and `si_code` names (uapi constants, from libc where it has them), the `--signals`
//! list, and the origin of a signal (a kernel fault or a user-space sender).

use serde::Serialize;

/// Signals whose default action dumps core: the default `--signals` set.
pub const CORE_SIGNALS: &str =
    "SIGQUIT,SIGILL,SIGTRAP,SIGABRT,SIGBUS,SIGFPE,SIGSEGV,SIGXCPU,SIGXFSZ,SIGSYS";

const NAMES: [(i32, &str); 31] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSYS, "SIGSYS"),
];

/// "SIGSEGV", or "SIG<n>" for real-time and unknown signals.
pub fn signal_name(signal: u32) -> String {
    NAMES
        .iter()
        .find(|(n, _)| *n as u32 == signal)
        .map_or_else(|| format!("SIG{signal}"), |(_, name)| (*name).to_owned())
}

/// Accepts "SIGSEGV", "segv" or "11".
pub fn signal_number(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u32>() {
        return (1..64).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    NAMES
        .iter()
        .find(|(_, name)| *name == full)
        .map(|(n, _)| *n as u32)
}

/// Why a signal list is refused.
#[derive(Debug, thiserror::Error)]
pub enum SignalListError {
    #[error("unknown signal {0:?} (use names like SIGSEGV or numbers 1-63)")]
    Unknown(String),
    #[error("the list is empty")]
    Empty,
}

/// Parses a comma-separated signal list into a bit mask (bit n = signal n).
pub fn parse_signal_mask(list: &str) -> Result<u64, SignalListError> {
    let mut mask = 0u64;
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let n =
            signal_number(part).ok_or_else(|| SignalListError::Unknown(part.trim().to_owned()))?;
        mask |= 1 << n;
    }
    if mask == 0 {
        return Err(SignalListError::Empty);
    }
    Ok(mask)
}

/// Who raised the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The kernel: a fault (si_code > 0) or SI_KERNEL (e.g. RLIMIT_CPU's SIGXCPU).
    Kernel,
    /// A task: kill, tgkill, sigqueue, abort, raise (si_code <= 0).
    User,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::User => "user",
        }
    }
}

const SI_KERNEL: i32 = 0x80;

pub fn origin(si_code: i32) -> Origin {
    if si_code > 0 || si_code == SI_KERNEL {
        Origin::Kernel
    } else {
        Origin::User
    }
}

/// The uapi name of `si_code` for `signal` ("SEGV_MAPERR", "SI_TKILL"...), or its number.
pub fn si_code_name(signal: u32, si_code: i32) -> String {
    let generic = match si_code {
        0 => Some("SI_USER"),
        SI_KERNEL => Some("SI_KERNEL"),
        -1 => Some("SI_QUEUE"),
        -2 => Some("SI_TIMER"),
        -3 => Some("SI_MESGQ"),
        -4 => Some("SI_ASYNCIO"),
        -5 => Some("SI_SIGIO"),
        -6 => Some("SI_TKILL"),
        -7 => Some("SI_DETHREAD"),
        -60 => Some("SI_ASYNCNL"),
        _ => None,
    };
    if let Some(name) = generic {
        return name.to_owned();
    }
    let table: &[&str] = match signal as i32 {
        libc::SIGSEGV => &[
            "SEGV_MAPERR",
            "SEGV_ACCERR",
            "SEGV_BNDERR",
            "SEGV_PKUERR",
            "SEGV_ACCADI",
            "SEGV_ADIDERR",
            "SEGV_ADIPERR",
            "SEGV_MTEAERR",
            "SEGV_MTESERR",
            "SEGV_CPERR",
        ],
        libc::SIGBUS => &[
            "BUS_ADRALN",
            "BUS_ADRERR",
            "BUS_OBJERR",
            "BUS_MCEERR_AR",
            "BUS_MCEERR_AO",
        ],
        libc::SIGFPE => &[
            "FPE_INTDIV",
            "FPE_INTOVF",
            "FPE_FLTDIV",
            "FPE_FLTOVF",
            "FPE_FLTUND",
            "FPE_FLTRES",
            "FPE_FLTINV",
            "FPE_FLTSUB",
            "FPE_FLTUNK",
            "FPE_CONDTRAP",
        ],
        libc::SIGILL => &[
            "ILL_ILLOPC",
            "ILL_ILLOPN",
            "ILL_ILLADR",
            "ILL_ILLTRP",
            "ILL_PRVOPC",
            "ILL_PRVREG",
            "ILL_COPROC",
            "ILL_BADSTK",
            "ILL_BADIADDR",
        ],
        libc::SIGTRAP => &[
            "TRAP_BRKPT",
            "TRAP_TRACE",
            "TRAP_BRANCH",
            "TRAP_HWBKPT",
            "TRAP_UNK",
            "TRAP_PERF",
        ],
        libc::SIGSYS => &["SYS_SECCOMP", "SYS_USER_DISPATCH"],
        _ => &[],
    };
    usize::try_from(si_code - 1)
        .ok()
        .and_then(|i| table.get(i))
        .map_or_else(|| si_code.to_string(), |name| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(signal_number("SIGSEGV"), Some(11));
        assert_eq!(signal_number("abrt"), Some(6));
        assert_eq!(signal_number("7"), Some(7));
        assert_eq!(signal_number("64"), None);
        assert_eq!(signal_number("SIGNOPE"), None);
    }

    #[test]
    fn default_mask_is_the_core_dumping_signals() {
        let mask = parse_signal_mask(CORE_SIGNALS).unwrap();
        let set: Vec<u32> = (1..64).filter(|n| mask & (1 << n) != 0).collect();
        assert_eq!(set, vec![3, 4, 5, 6, 7, 8, 11, 24, 25, 31]);
        assert!(
            parse_signal_mask("SIGSEGV,SIGBOGUS")
                .unwrap_err()
                .to_string()
                .contains("SIGBOGUS")
        );
        assert!(parse_signal_mask("").is_err());
    }

    #[test]
    fn si_code_names_depend_on_the_signal() {
        assert_eq!(si_code_name(11, 1), "SEGV_MAPERR");
        assert_eq!(si_code_name(11, 2), "SEGV_ACCERR");
        assert_eq!(si_code_name(7, 1), "BUS_ADRALN");
        assert_eq!(si_code_name(8, 1), "FPE_INTDIV");
        assert_eq!(si_code_name(6, -6), "SI_TKILL");
        assert_eq!(si_code_name(11, 0), "SI_USER");
        assert_eq!(si_code_name(24, 0x80), "SI_KERNEL");
        assert_eq!(si_code_name(11, 42), "42");
        assert_eq!(si_code_name(11, -99), "-99");
    }

    #[test]
    fn origin_from_si_code() {
        assert_eq!(origin(1), Origin::Kernel);
        assert_eq!(origin(0x80), Origin::Kernel);
        assert_eq!(origin(0), Origin::User);
        assert_eq!(origin(-6), Origin::User);
    }
}
