//! The OpenSSL libraries the TLS uprobes cover (`ssl_write.rs` in the kernel programs). A
//! uprobe is set on a file (its inode), so each libssl is attached once, whichever processes
//! map it and whenever they start: the node's own (`/proc/1/root`'s library directories, found
//! at start) and every other one a process maps (a container's image brings its own), found in
//! `/proc/PID/maps`: every process at start, then each new process for its first
//! `YOUNG_SCANS` scans (a library loaded later by `dlopen`, as Python's `ssl` module does, is
//! seen while the process is young). Only OpenSSL's `libssl.so*` (1.1.1 and 3: `SSL_write_ex`);
//! other TLS stacks (Go's crypto/tls, rustls, a BoringSSL linked into Envoy, NSS's `libssl3.so`)
//! are not covered (docs/known-limits.md).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::{runtimes::RuntimePattern, status::Snapshot};

/// How often new processes' mappings are looked at.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// How many scans a new process's mappings are read in (its first ~30 s).
const YOUNG_SCANS: u8 = 15;
/// At most this many processes' mappings are read per scan (a fork storm waits its turn).
const MAPS_PER_SCAN: usize = 512;
/// The node's library directories, under `/proc/1/root`.
const LIBRARY_DIRS: [&str; 7] = [
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/lib",
    "lib64",
    "lib",
];

/// A file's identity: device major, minor and inode (as `/proc/PID/maps` gives them).
type FileKey = (u32, u32, u64);

/// A uprobe program and whether it attached to a library (Err: why not); the link of an
/// attach to one process (kept to detach it when the process exits).
pub type ProgramResult = (&'static str, Result<Option<UProbeLinkId>, UProbeError>);

/// One uprobe program's attach to one library at the hook selection.
pub type LibraryAttach = (
    Library,
    &'static str,
    Result<Option<UProbeLinkId>, UProbeError>,
);

/// Which processes' OpenSSL calls the uprobes see (`--tls-processes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every process of the node: each libssl file attached once, for all that map it.
    All,
    /// Processes whose executable's name matches: each attached on its own (the breakpoints
    /// are only in those processes), from the watcher's first scan after it maps libssl.
    Processes(Vec<RuntimePattern>),
}

impl Scope {
    /// Whether process `pid` is in scope (its executable's name, else its `comm`).
    fn selects(&self, pid: i32) -> bool {
        let Self::Processes(patterns) = self else {
            return true;
        };
        let name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .or_else(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .unwrap_or_default();
        let name = name.trim_end().trim_end_matches(" (deleted)");
        patterns.iter().any(|p| p.matches(name))
    }

    /// Whether processes are attached one by one.
    fn per_process(&self) -> bool {
        matches!(self, Self::Processes(_))
    }
}

/// Why uprobes did not attach to a library.
#[derive(Debug, Error)]
pub enum UProbeError {
    #[error("{0}: not in the kernel object")]
    Missing(String),
    /// A program's attach failed (the error and its causes, one line).
    #[error("{0}")]
    Attach(String),
    #[error("process id {0} is not one")]
    Pid(i32),
    /// None of the programs attached: each one's reason.
    #[error("{0}")]
    NoneAttached(String),
}

impl From<ProgramError> for UProbeError {
    fn from(e: ProgramError) -> Self {
        Self::Attach(super::attach::with_sources(&e))
    }
}

/// Whether a file name is OpenSSL's libssl (`libssl.so`, `libssl.so.3`, `libssl.so.1.1`; not
/// NSS's `libssl3.so`).
fn is_libssl(name: &str) -> bool {
    name == "libssl.so" || name.starts_with("libssl.so.")
}

/// A libssl to attach: where the agent opens it and its identity.
#[derive(Debug, Clone)]
pub struct Library {
    /// The path the agent opens (through `/proc/PID/root` for a process's view).
    pub path: PathBuf,
    pub key: FileKey,
    /// The one process it is attached for (`Scope::Processes`); None: every process.
    pub pid: Option<i32>,
}

impl Library {
    /// What is attached once: the file, for one process or all.
    fn attach_key(&self) -> AttachKey {
        (self.key, self.pid)
    }
}

/// A file's attach: for one process, or every process.
type AttachKey = (FileKey, Option<i32>);

/// The node's libssl files in its library directories, seen through `/proc/1/root` (the
/// node's root when the agent shares its PID namespace) and the agent's own root (symlinks to
/// one file, and one file seen both ways, count once).
pub fn node_libraries() -> Vec<Library> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<Library> = Vec::new();
    let dirs = ["/proc/1/root", "/"]
        .into_iter()
        .flat_map(|root| LIBRARY_DIRS.map(|d| Path::new(root).join(d)));
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_str().is_some_and(is_libssl) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let dev = meta.dev();
            let key = (libc::major(dev), libc::minor(dev), meta.ino());
            if !out.iter().any(|l| l.key == key) {
                out.push(Library {
                    path,
                    key,
                    pid: None,
                });
            }
        }
    }
    out
}

/// The libssl files process `pid` maps, as seen through its root (attached for it alone when
/// `own`).
pub fn mapped_libraries(pid: i32, own: bool) -> Vec<Library> {
    let Ok(maps) = procfs::process::Process::new(pid).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    let mut out: Vec<Library> = Vec::new();
    for map in maps {
        let procfs::process::MMapPath::Path(path) = &map.pathname else {
            continue;
        };
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_libssl)
        {
            continue;
        }
        let key = (map.dev.0 as u32, map.dev.1 as u32, map.inode);
        if out.iter().any(|l| l.key == key) {
            continue;
        }
        let inside = path.strip_prefix("/").unwrap_or(path);
        out.push(Library {
            path: Path::new(&format!("/proc/{pid}/root")).join(inside),
            key,
            pid: own.then_some(pid),
        });
    }
    out
}

/// One library as the status document shows it.
#[derive(Debug, Clone, Serialize)]
struct Covered {
    path: String,
    /// The one process it is attached for (`--tls-processes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    /// The uprobe programs attached to it.
    programs: Vec<&'static str>,
    /// Why a program did not attach (e.g. an OpenSSL without `SSL_write_ex`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The libraries attached so far (`tls_libraries` in the status document; `--check-kernel`).
#[derive(Debug, Default)]
pub struct Coverage {
    seen: Mutex<(HashSet<AttachKey>, Vec<Covered>)>,
    /// The links of the attaches to one process, by process (detached when it exits).
    links: Mutex<HashMap<i32, Vec<(&'static str, UProbeLinkId)>>>,
    /// The processes the start read, until the watcher takes them.
    started: Mutex<HashSet<i32>>,
}

impl Snapshot for Coverage {
    fn snapshot(&self) -> serde_json::Value {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(&seen.1).unwrap_or_default()
    }
}

impl Coverage {
    /// The coverage the hook selection made: each library's results (library, program,
    /// result) grouped.
    /// `started`: the processes whose mappings the start read (the watcher skips them).
    pub fn from_selection(uprobes: Vec<LibraryAttach>, started: HashSet<i32>) -> Self {
        let coverage = Self {
            started: Mutex::new(started),
            ..Self::default()
        };
        let mut libs: Vec<(Library, Vec<ProgramResult>)> = Vec::new();
        for (lib, program, result) in uprobes {
            match libs
                .iter_mut()
                .find(|(l, _)| l.attach_key() == lib.attach_key())
            {
                Some((_, results)) => results.push((program, result)),
                None => libs.push((lib, vec![(program, result)])),
            }
        }
        for (lib, results) in libs {
            let _ = coverage.record(&lib, results);
        }
        coverage
    }

    /// The processes the start read (once: the watcher's seed).
    fn take_started(&self) -> HashSet<i32> {
        std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `key` is new (and now taken).
    fn claim(&self, key: AttachKey) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0.insert(key)
    }

    /// The covered libraries, one line each, for `--check-kernel`.
    pub fn lines(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.1
            .iter()
            .map(|c| {
                let path = match c.pid {
                    Some(pid) => format!("{} (process {pid})", c.path),
                    None => c.path.clone(),
                };
                match (&c.error, c.programs.is_empty()) {
                    (None, _) => format!("{path} ({})", c.programs.join(", ")),
                    (Some(e), true) => format!("{path} (not attached: {e})"),
                    (Some(e), false) => format!("{path} ({}; {e})", c.programs.join(", ")),
                }
            })
            .collect()
    }

    /// Attaches `programs` (program, symbol; loaded) to `lib` unless it was seen: Err with
    /// the reasons when none attached.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        programs: &[(&'static str, &'static str)],
        lib: &Library,
    ) -> Result<(), UProbeError> {
        if !self.claim(lib.attach_key()) {
            return Ok(());
        }
        let results: Vec<_> = programs
            .iter()
            .map(|&(name, symbol)| (name, attach_one(ebpf, name, symbol, lib)))
            .collect();
        self.record(lib, results)
    }

    /// Detaches the uprobes of the processes not in `live` (they exited).
    fn detach_exited(&self, ebpf: &mut Ebpf, live: &HashSet<i32>) {
        let gone: Vec<(i32, Vec<(&'static str, UProbeLinkId)>)> = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            let pids: Vec<i32> = links
                .keys()
                .filter(|p| !live.contains(p))
                .copied()
                .collect();
            pids.into_iter()
                .filter_map(|p| Some((p, links.remove(&p)?)))
                .collect()
        };
        for (pid, links) in gone {
            for (name, link) in links {
                let detached = ebpf
                    .program_mut(name)
                    .and_then(|p| <&mut UProbe>::try_from(p).ok())
                    .map(|p| p.detach(link));
                if let Some(Err(e)) = detached {
                    warn!(pid, program = name, "detaching a TLS uprobe: {e}");
                }
            }
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.0.retain(|(_, p)| *p != Some(pid));
            seen.1.retain(|c| c.pid != Some(pid));
        }
    }

    /// Shows what attaching `lib` gave (symbol, result): Err with the reasons when nothing
    /// attached.
    pub fn record(&self, lib: &Library, results: Vec<ProgramResult>) -> Result<(), UProbeError> {
        let mut programs: Vec<&'static str> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut links = Vec::new();
        for (name, result) in results {
            match result {
                Ok(link) => {
                    programs.push(name);
                    links.extend(link.map(|l| (name, l)));
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        if let (Some(pid), false) = (lib.pid, links.is_empty()) {
            let mut all = self.links.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(pid).or_default().extend(links);
        }
        let attached = !programs.is_empty();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0.insert(lib.attach_key());
        seen.1.push(Covered {
            path: lib.path.display().to_string(),
            pid: lib.pid,
            programs,
            error: error.clone(),
        });
        match (attached, error) {
            (false, Some(e)) => Err(UProbeError::NoneAttached(e)),
            _ => Ok(()),
        }
    }
}

/// Attaches program `name` (a loaded uprobe) to `symbol` in `lib` (for its one process, whose
/// link is returned, or for all).
pub(super) fn attach_one(
    ebpf: &mut Ebpf,
    name: &str,
    symbol: &str,
    lib: &Library,
) -> Result<Option<UProbeLinkId>, UProbeError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| UProbeError::Missing(name.to_string()))?;
    let p: &mut UProbe = program.try_into()?;
    match lib.pid {
        Some(pid) => {
            let pid = u32::try_from(pid)
                .ok()
                .and_then(std::num::NonZeroU32::new)
                .ok_or(UProbeError::Pid(pid))?;
            let link = p.attach(symbol, &lib.path, UProbeScope::OneProcess(pid))?;
            Ok(Some(link))
        }
        None => {
            p.attach(symbol, &lib.path, UProbeScope::AllProcesses)?;
            Ok(None)
        }
    }
}

/// The thread that attaches the libraries new processes map.
pub struct Watcher {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching: `programs` are attached to each new library.
    pub fn start(
        ebpf: Arc<Mutex<Ebpf>>,
        programs: Vec<(&'static str, &'static str)>,
        coverage: Arc<Coverage>,
        scope: Scope,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tls-libraries".into())
            .spawn(move || {
                // Processes the start read are done; any other is young, even one that began
                // between the start's reading and the first scan.
                let mut young: HashMap<i32, u8> = coverage
                    .take_started()
                    .into_iter()
                    .map(|p| (p, 0))
                    .collect();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SCAN_EVERY) {
                    let (libs, live) = scan(&mut young, &scope);
                    let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
                    if scope.per_process() {
                        coverage.detach_exited(&mut ebpf, &live);
                    }
                    for lib in libs {
                        match coverage.attach(&mut ebpf, &programs, &lib) {
                            Ok(()) => {}
                            Err(e) => warn!(library = %lib.path.display(), "TLS uprobes: {e}"),
                        }
                    }
                }
                info!("TLS library watcher stopped");
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (within a scan).
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The libraries of processes that are new or young and in `scope`, and the processes that
/// live; `young` keeps each process's scans left.
fn scan(young: &mut HashMap<i32, u8>, scope: &Scope) -> (Vec<Library>, HashSet<i32>) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (Vec::new(), HashSet::new());
    };
    let pids: HashSet<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    young.retain(|pid, _| pids.contains(pid));
    for pid in &pids {
        young.entry(*pid).or_insert(YOUNG_SCANS);
    }
    let mut out = Vec::new();
    let mut read = 0;
    for (pid, scans) in young.iter_mut() {
        if *scans == 0 || read == MAPS_PER_SCAN {
            continue;
        }
        *scans -= 1;
        if !scope.selects(*pid) {
            continue;
        }
        read += 1;
        out.extend(mapped_libraries(*pid, scope.per_process()));
    }
    (out, pids)
}

/// What the start found: the node's libssl files and the processes whose mappings it read.
#[derive(Clone, Default)]
pub struct Start {
    pub libraries: Vec<Library>,
    pub pids: HashSet<i32>,
}

/// Every libssl the node has now: its library directories and what every process maps; in
/// `Scope::Processes`, what each process in scope maps, for it alone.
pub fn at_start(scope: &Scope) -> Start {
    let mut start = Start {
        libraries: match scope {
            Scope::All => node_libraries(),
            Scope::Processes(_) => Vec::new(),
        },
        pids: HashSet::new(),
    };
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            start.pids.insert(pid);
            if !scope.selects(pid) {
                continue;
            }
            for lib in mapped_libraries(pid, scope.per_process()) {
                if !start
                    .libraries
                    .iter()
                    .any(|l| l.attach_key() == lib.attach_key())
                {
                    start.libraries.push(lib);
                }
            }
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_names_only() {
        for name in ["libssl.so", "libssl.so.3", "libssl.so.1.1"] {
            assert!(is_libssl(name), "{name}");
        }
        for name in ["libssl3.so", "libssl.a", "libcrypto.so.3", "libssl"] {
            assert!(!is_libssl(name), "{name}");
        }
    }

    /// The selection's results, one library per file whatever the order: a library where one
    /// program attached is covered (the other's reason kept), one where none did is not.
    #[test]
    fn coverage_groups_the_selection_by_file() {
        let lib = |path: &str, ino| Library {
            path: path.into(),
            key: (8, 1, ino),
            pid: None,
        };
        let refused = || Err(UProbeError::Attach("symbol not found".to_owned()));
        let coverage = Coverage::from_selection(
            vec![
                (lib("/usr/lib/libssl.so.3", 7), "ssl_write", Ok(None)),
                (
                    lib("/proc/9/root/usr/lib/libssl.so.1.1", 8),
                    "ssl_write",
                    Ok(None),
                ),
                (lib("/usr/lib/libssl.so.3", 7), "ssl_write_ex", Ok(None)),
                (
                    lib("/proc/9/root/usr/lib/libssl.so.1.1", 8),
                    "ssl_write_ex",
                    refused(),
                ),
                (lib("/opt/libssl.so", 9), "ssl_write", refused()),
            ],
            HashSet::from([1, 9]),
        );
        assert_eq!(coverage.take_started(), HashSet::from([1, 9]));
        assert!(coverage.take_started().is_empty());
        assert_eq!(
            coverage.lines(),
            [
                "/usr/lib/libssl.so.3 (ssl_write, ssl_write_ex)",
                "/proc/9/root/usr/lib/libssl.so.1.1 (ssl_write; ssl_write_ex: symbol not found)",
                "/opt/libssl.so (not attached: ssl_write: symbol not found)",
            ]
        );
        // Seen files are not attached again (the watcher's scans find them over and over).
        assert!(!coverage.claim(((8, 1, 7), None)));
        assert!(coverage.claim(((8, 1, 10), None)));
        // The same file for one process (`--tls-processes`) is an attach of its own.
        assert!(coverage.claim(((8, 1, 7), Some(9))));
        let snapshot = coverage.snapshot();
        assert_eq!(
            snapshot[0]["programs"],
            serde_json::json!(["ssl_write", "ssl_write_ex"])
        );
        assert_eq!(snapshot[2]["programs"], serde_json::json!([]));
        assert_eq!(snapshot[2]["error"], "ssl_write: symbol not found");
    }

    /// `--tls-processes`: a process is in scope by its executable's name (this test's own:
    /// the test binary, `probe-<hash>`).
    #[test]
    fn a_scope_selects_processes_by_executable_name() {
        let me = std::process::id() as i32;
        let scope = |list: &str| Scope::Processes(crate::runtimes::parse_runtimes(list).unwrap());
        assert!(Scope::All.selects(me));
        assert!(scope("nginx,probe*").selects(me));
        assert!(!scope("nginx,probe").selects(me));
        assert!(
            !scope("nginx").selects(i32::MAX),
            "a process that does not exist"
        );
        assert!(scope("x").per_process() && !Scope::All.per_process());
    }

    /// This test's own process maps no libssl; a process that does (the system's, when the
    /// machine has one) is found with the file's identity.
    #[test]
    fn node_libraries_are_files_once() {
        let libs = node_libraries();
        let keys: HashSet<FileKey> = libs.iter().map(|l| l.key).collect();
        assert_eq!(keys.len(), libs.len());
        for l in &libs {
            assert!(std::fs::metadata(&l.path).is_ok_and(|m| m.is_file()));
        }
    }
}
