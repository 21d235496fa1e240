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
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::status::Snapshot;

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

/// A uprobe program and whether it attached to a library (Err: why not).
type ProgramResult = (&'static str, Result<(), UProbeError>);

/// Why uprobes did not attach to a library.
#[derive(Debug, Error)]
pub enum UProbeError {
    #[error("{0}: not in the kernel object")]
    Missing(String),
    /// A program's attach failed (the error and its causes, one line).
    #[error("{0}")]
    Attach(String),
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
}

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
                out.push(Library { path, key });
            }
        }
    }
    out
}

/// The libssl files process `pid` maps, as seen through its root.
pub fn mapped_libraries(pid: i32) -> Vec<Library> {
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
        });
    }
    out
}

/// One library as the status document shows it.
#[derive(Debug, Clone, Serialize)]
struct Covered {
    path: String,
    /// The uprobe programs attached to it.
    programs: Vec<&'static str>,
    /// Why a program did not attach (e.g. an OpenSSL without `SSL_write_ex`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The libraries attached so far (`tls_libraries` in the status document; `--check-kernel`).
#[derive(Debug, Default)]
pub struct Coverage {
    seen: Mutex<(HashSet<FileKey>, Vec<Covered>)>,
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
    pub fn from_selection(
        uprobes: Vec<(Library, &'static str, Result<(), UProbeError>)>,
        started: HashSet<i32>,
    ) -> Self {
        let coverage = Self {
            started: Mutex::new(started),
            ..Self::default()
        };
        let mut libs: Vec<(Library, Vec<ProgramResult>)> = Vec::new();
        for (lib, program, result) in uprobes {
            match libs.iter_mut().find(|(l, _)| l.key == lib.key) {
                Some((_, results)) => results.push((program, result)),
                None => libs.push((lib, vec![(program, result)])),
            }
        }
        for (lib, results) in libs {
            let _ = coverage.record(&lib, &results);
        }
        coverage
    }

    /// The processes the start read (once: the watcher's seed).
    fn take_started(&self) -> HashSet<i32> {
        std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `key` is new (and now taken).
    fn claim(&self, key: FileKey) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0.insert(key)
    }

    /// The covered libraries, one line each, for `--check-kernel`.
    pub fn lines(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.1
            .iter()
            .map(|c| match (&c.error, c.programs.is_empty()) {
                (None, _) => format!("{} ({})", c.path, c.programs.join(", ")),
                (Some(e), true) => format!("{} (not attached: {e})", c.path),
                (Some(e), false) => format!("{} ({}; {e})", c.path, c.programs.join(", ")),
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
        if !self.claim(lib.key) {
            return Ok(());
        }
        let results: Vec<_> = programs
            .iter()
            .map(|&(name, symbol)| (name, attach_one(ebpf, name, symbol, &lib.path)))
            .collect();
        self.record(lib, &results)
    }

    /// Shows what attaching `lib` gave (symbol, result): Err with the reasons when nothing
    /// attached.
    pub fn record(&self, lib: &Library, results: &[ProgramResult]) -> Result<(), UProbeError> {
        let programs: Vec<&'static str> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| *s)
            .collect();
        let errors: Vec<String> = results
            .iter()
            .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{s}: {e}")))
            .collect();
        let attached = !programs.is_empty();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0.insert(lib.key);
        seen.1.push(Covered {
            path: lib.path.display().to_string(),
            programs,
            error: error.clone(),
        });
        match (attached, error) {
            (false, Some(e)) => Err(UProbeError::NoneAttached(e)),
            _ => Ok(()),
        }
    }
}

/// Attaches program `name` (a loaded uprobe) to `symbol` in the library at `path`.
pub(super) fn attach_one(
    ebpf: &mut Ebpf,
    name: &str,
    symbol: &str,
    path: &Path,
) -> Result<(), UProbeError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| UProbeError::Missing(name.to_string()))?;
    let p: &mut UProbe = program.try_into()?;
    p.attach(symbol, path, UProbeScope::AllProcesses)?;
    Ok(())
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
                    for lib in scan(&mut young) {
                        let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
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

/// The libraries of processes that are new or young; `young` keeps each process's scans left.
fn scan(young: &mut HashMap<i32, u8>) -> Vec<Library> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
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
        read += 1;
        out.extend(mapped_libraries(*pid));
    }
    out
}

/// What the start found: the node's libssl files and the processes whose mappings it read.
#[derive(Clone, Default)]
pub struct Start {
    pub libraries: Vec<Library>,
    pub pids: HashSet<i32>,
}

/// Every libssl the node has now: its library directories and what every process maps.
pub fn at_start() -> Start {
    let mut start = Start {
        libraries: node_libraries(),
        pids: HashSet::new(),
    };
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            start.pids.insert(pid);
            for lib in mapped_libraries(pid) {
                if !start.libraries.iter().any(|l| l.key == lib.key) {
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
        };
        let refused = || Err(UProbeError::Attach("symbol not found".to_owned()));
        let coverage = Coverage::from_selection(
            vec![
                (lib("/usr/lib/libssl.so.3", 7), "ssl_write", Ok(())),
                (
                    lib("/proc/9/root/usr/lib/libssl.so.1.1", 8),
                    "ssl_write",
                    Ok(()),
                ),
                (lib("/usr/lib/libssl.so.3", 7), "ssl_write_ex", Ok(())),
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
        assert!(!coverage.claim((8, 1, 7)));
        assert!(coverage.claim((8, 1, 10)));
        let snapshot = coverage.snapshot();
        assert_eq!(
            snapshot[0]["programs"],
            serde_json::json!(["ssl_write", "ssl_write_ex"])
        );
        assert_eq!(snapshot[2]["programs"], serde_json::json!([]));
        assert_eq!(snapshot[2]["error"], "ssl_write: symbol not found");
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
