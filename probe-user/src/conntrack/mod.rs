//! Conntrack expiries and settings, per watched network namespace. No BPF hook into conntrack
//! loads on the target kernels (and there is no conntrack tracepoint), so expiries come from
//! ctnetlink DESTROY events: an established TCP entry destroyed without FIN/RST ran out its
//! timeout. Entries expire lazily (at the flow's next packet or the GC pass), which is also when
//! the event arrives.
//!
//! Each namespace gets an OS thread that enters it (`setns`), creates the netlink socket there
//! (a socket stays in the namespace it was created in) and then re-reads the namespace's
//! conntrack sysctls periodically (/proc/sys/net shows the reading thread's namespace); an
//! async task reads the socket.

mod destroys;
pub mod netlink;
mod pods;
pub mod settings;

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use netlink_sys::Socket;
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, info, warn};

use self::{
    destroys::read_destroys,
    netlink::{Destroyed, NETLINK_NETFILTER, NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_UPDATE},
    settings::{ConntrackSettings, FullAlarm, SYSCTL_DIR, Settings},
};
use crate::{
    enrich::Enricher,
    model::{Body, ConntrackExpiry, Evidence, Finding, Other},
    pipeline::{Counters, Event},
    status::AgentState,
};

/// Socket receive buffer asked for (SO_RCVBUFFORCE, else SO_RCVBUF capped by rmem_max).
const RCVBUF_BYTES: i32 = 8 << 20;

#[derive(Debug, Error)]
pub enum ConntrackError {
    #[error("opening network namespace {path}: {source}")]
    OpenNetns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path} (setns; needs CAP_SYS_ADMIN): {source}")]
    Setns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "subscribing to ctnetlink destroy events in {netns}: {source} (needs CAP_NET_ADMIN and a kernel with nf_conntrack_netlink)"
    )]
    Subscribe {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrack is not available in {netns}: {SYSCTL_DIR}: {source}")]
    NoConntrack {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the watcher thread for {0} ended before it was set up")]
    Thread(String),
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct ConntrackConfig {
    /// The agent's own namespace (the host's, in a hostNetwork DaemonSet).
    pub host: bool,
    /// More namespaces, by path (/run/netns/NAME, /proc/PID/ns/net).
    pub netns: Vec<PathBuf>,
    pub settings_interval: Duration,
    /// Turn on `nf_conntrack_timestamp` where it is off, so expiries carry their age.
    pub timestamps: bool,
}

impl ConntrackConfig {
    fn watches(&self) -> Vec<(String, Option<PathBuf>)> {
        let mut out = Vec::new();
        if self.host {
            out.push(("host".to_owned(), None));
        }
        out.extend(
            self.netns
                .iter()
                .map(|p| (p.display().to_string(), Some(p.clone()))),
        );
        out
    }
}

/// TCP states remembered per namespace where DESTROY events carry none.
const UPDATE_STATES: std::num::NonZeroUsize = std::num::NonZeroUsize::new(65536).expect("nonzero");

pub use crate::status::WatchReport;

/// Where records go: the pipeline's channel, as records of this source (a full channel is
/// counted as a channel drop).
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    enricher: Enricher,
}

impl Out {
    fn send(&self, netns_inode: u32, body: Body) -> bool {
        let mut record = self.enricher.agent_record(body);
        record.common.netns = Some(netns_inode);
        match self.tx.try_send(Event::Record(Box::new(record))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.channel_drops.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Starts a watcher per namespace; returns when each is subscribed or has failed (failures
/// are logged with their cause and shown in /health/status; the others run on). With `pods`,
/// the pods' namespaces are followed too (`pods.rs`).
pub async fn start(
    config: &ConntrackConfig,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    enricher: Enricher,
    state: Arc<AgentState>,
    stop: watch::Receiver<bool>,
    pods: Option<Arc<crate::enrich::k8s::K8sCache>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let out = Out {
        tx,
        counters,
        enricher,
    };
    let mut tasks = Vec::new();
    let mut reports = Vec::new();
    for (label, path) in config.watches() {
        match start_one(config, &label, path, out.clone(), stop.clone()).await {
            Ok((inode, task)) => {
                info!(netns = label, inode, "conntrack: watching destroy events");
                reports.push(WatchReport {
                    netns: label,
                    inode: Some(inode),
                    subscribed: true,
                    error: None,
                });
                tasks.push(task);
            }
            Err(e) => {
                warn!("conntrack: {e}; expiries in that namespace will not be seen");
                reports.push(WatchReport {
                    netns: label,
                    inode: None,
                    subscribed: false,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    state.set_conntrack(reports.clone());
    if let Some(cache) = pods {
        let follow = pods::follow(config.clone(), cache, reports, out, state, stop);
        tasks.push(tokio::spawn(follow));
    }
    tasks
}

struct Setup {
    socket: Socket,
    inode: u32,
    settings: Arc<Mutex<Settings>>,
}

async fn start_one(
    config: &ConntrackConfig,
    label: &str,
    path: Option<PathBuf>,
    out: Out,
    stop: watch::Receiver<bool>,
) -> Result<(u32, tokio::task::JoinHandle<()>), ConntrackError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread_label = label.to_owned();
    let (interval, timestamps) = (config.settings_interval, config.timestamps);
    let thread_out = out.clone();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name("conntrack-netns".into())
        .spawn(move || {
            let setup = enter_and_subscribe(&thread_label, path, timestamps);
            let shared = setup.as_ref().ok().map(|s| (s.inode, s.settings.clone()));
            if ready_tx.send(setup).is_err() {
                return;
            }
            if let Some((inode, settings)) = shared {
                watch_settings(
                    &thread_label,
                    inode,
                    &settings,
                    interval,
                    &thread_out,
                    &thread_stop,
                );
            }
        })
        .map_err(|e| ConntrackError::Thread(format!("{label}: {e}")))?;
    let setup = ready_rx
        .await
        .map_err(|_| ConntrackError::Thread(label.to_owned()))??;
    let inode = setup.inode;
    let task = tokio::spawn(read_destroys(label.to_owned(), setup, out, stop));
    Ok((inode, task))
}

/// In the watcher thread: enter the namespace, subscribe, read the settings once.
fn enter_and_subscribe(
    label: &str,
    path: Option<PathBuf>,
    timestamps: bool,
) -> Result<Setup, ConntrackError> {
    if let Some(path) = &path {
        let file = File::open(path).map_err(|source| ConntrackError::OpenNetns {
            path: path.display().to_string(),
            source,
        })?;
        // SAFETY: a valid fd; setns changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(ConntrackError::Setns {
                path: path.display().to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let inode = netns_inode().unwrap_or(0);
    let mut current = Settings::read(std::path::Path::new(SYSCTL_DIR)).map_err(|source| {
        ConntrackError::NoConntrack {
            netns: label.to_owned(),
            source,
        }
    })?;
    if timestamps && current.0.get("nf_conntrack_timestamp").map(String::as_str) == Some("0") {
        match std::fs::write(format!("{SYSCTL_DIR}/nf_conntrack_timestamp"), "1") {
            Ok(()) => {
                info!(
                    netns = label,
                    "conntrack: enabled net.netfilter.nf_conntrack_timestamp (expiries carry established_for_s; --conntrack-timestamps false leaves it)"
                );
                current
                    .0
                    .insert("nf_conntrack_timestamp".into(), "1".into());
            }
            Err(e) => warn!(
                netns = label,
                "conntrack: cannot enable nf_conntrack_timestamp ({e}); established_for_s will be null"
            ),
        }
    }
    let socket = subscribe().map_err(|source| ConntrackError::Subscribe {
        netns: label.to_owned(),
        source,
    })?;
    Ok(Setup {
        socket,
        inode,
        settings: Arc::new(Mutex::new(current)),
    })
}

fn subscribe() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
    // Until a TCP DESTROY event shows that this kernel puts the TCP state in it (then this
    // membership is dropped), NEW/UPDATE events keep each entry's last TCP state.
    socket.add_membership(NFNLGRP_CONNTRACK_UPDATE)?;
    let fd = socket.as_raw_fd();
    let size = RCVBUF_BYTES;
    // SAFETY: setsockopt with a pointer to an int of the right size.
    let forced = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        socket.set_rx_buf_sz(size)?;
    }
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// The inode of the calling thread's network namespace.
fn netns_inode() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    u32::try_from(meta.ino()).ok()
}

/// In the watcher thread: the first `conntrack_settings` record, then one per change, and a
/// finding when the table fills up. Ends when the agent stops.
fn watch_settings(
    label: &str,
    inode: u32,
    shared: &Mutex<Settings>,
    interval: Duration,
    out: &Out,
    stop: &watch::Receiver<bool>,
) {
    let mut alarm = FullAlarm::default();
    let mut last = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut first = true;
    loop {
        if first || {
            let now = Settings::read(std::path::Path::new(SYSCTL_DIR)).unwrap_or_default();
            let changed = now.differs_from(&last);
            last = now.clone();
            *shared.lock().unwrap_or_else(|e| e.into_inner()) = now;
            changed
        } {
            first = false;
            let body = Body::Other(Other::new(ConntrackSettings {
                netns_path: label.to_owned(),
                sysctls: last.to_json(),
            }));
            if !out.send(inode, body) {
                return;
            }
        }
        if let Some(ratio) = last.fill_ratio()
            && alarm.check(ratio)
            && !out.send(
                inode,
                Body::Finding(Box::new(table_full(label, &last, ratio))),
            )
        {
            return;
        }
        // Sleep in steps so the thread ends within a second of shutdown (nothing waits for
        // it), waking a quiet node's CPU once a second.
        let mut slept = Duration::ZERO;
        while slept < interval {
            if *stop.borrow() {
                return;
            }
            let step = Duration::from_secs(1).min(interval - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
}

fn table_full(label: &str, s: &Settings, ratio: f64) -> Finding {
    let count = s.get_u64("nf_conntrack_count").unwrap_or(0);
    let max = s.get_u64("nf_conntrack_max").unwrap_or(0);
    Finding {
        finding: "conntrack_table_full",
        summary: format!(
            "The conntrack table of {label} is {:.0} % full ({count} of net.netfilter.nf_conntrack_max={max}); \
             when it is full new connections are dropped. Raise nf_conntrack_max or shorten the timeouts that keep idle entries.",
            ratio * 100.0
        ),
        evidence: vec![Evidence::Values(
            [
                ("net.netfilter.nf_conntrack_count".to_owned(), count.into()),
                ("net.netfilter.nf_conntrack_max".to_owned(), max.into()),
            ]
            .into(),
        )],
        netns_path: Some(label.to_owned()),
        saddr: None,
        sport: None,
        daddr: None,
        dport: None,
        backend_addr: None,
        backend_port: None,
        timeout_s: None,
        timeout_sysctl: None,
        established_for_s: None,
    }
}
