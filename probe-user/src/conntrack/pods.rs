//! Pods' network namespaces, watched like `--conntrack-netns` ones while the pods exist: a pod
//! whose namespace has netfilter rules (a service mesh sidecar's redirects, a NetworkPolicy
//! implementation in the pod) has a conntrack table of its own, with its own timeouts. Every
//! few seconds the pods of this node that are not on the host network are looked up (their
//! namespaces through their containers' processes); a new one gets a watcher, a gone one's
//! watcher is stopped. Expiries there carry the namespace's inode, which the Kubernetes
//! enrichment turns into the pod.

use std::{collections::HashMap, time::Instant};

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::enrich::k8s::{
    K8sCache,
    cgroup::{CgroupPaths, cgroup2_root},
    netns::PodNetns,
};

/// How often the pods' namespaces are looked for.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);

struct Watching {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    report: WatchReport,
}

/// Follows the pods until the agent stops; `fixed` are the namespaces watched from the start
/// (shown in the status next to the pods').
pub(super) async fn follow(
    config: ConntrackConfig,
    cache: Arc<K8sCache>,
    fixed: Vec<WatchReport>,
    out: Out,
    state: Arc<AgentState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cgroups = CgroupPaths::new(cgroup2_root());
    let mut netns = PodNetns::new("/proc");
    let fixed_inodes: Vec<u32> = fixed.iter().filter_map(|r| r.inode).collect();
    let mut watching: HashMap<u32, Watching> = HashMap::new();
    // Namespaces whose watcher failed, not retried while they exist (the error is shown).
    let mut failed: HashMap<u32, WatchReport> = HashMap::new();
    loop {
        let pods: Vec<(u32, u32, String)> = {
            let idx = cache.indexes.read().unwrap_or_else(|e| e.into_inner());
            let on_pod_network = |uid: &str| idx.pods.get(uid).is_some_and(|p| !p.host_network);
            netns
                .all(&mut cgroups, on_pod_network, Instant::now())
                .into_iter()
                .filter(|(inode, _, _)| !fixed_inodes.contains(inode))
                .filter_map(|(inode, pid, uid)| {
                    let pod = idx.pods.get(&uid)?;
                    Some((inode, pid, format!("pod {}/{}", pod.namespace, pod.name)))
                })
                .collect()
        };
        let current: Vec<u32> = pods.iter().map(|(inode, _, _)| *inode).collect();
        let gone: Vec<_> = watching
            .extract_if(|inode, _| !current.contains(inode))
            .collect();
        for (inode, w) in gone {
            info!(
                netns = w.report.netns,
                inode, "conntrack: the pod is gone; its watch ends"
            );
            let _ = w.stop.send(true);
            let _ = w.task.await;
        }
        failed.retain(|inode, _| current.contains(inode));
        for (inode, pid, label) in pods {
            if watching.contains_key(&inode) || failed.contains_key(&inode) {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            match start_one(&config, &label, Some(path), out.clone(), stop_rx).await {
                Ok((_, task)) => {
                    info!(
                        netns = label,
                        inode, "conntrack: watching the pod's destroy events"
                    );
                    let report = WatchReport {
                        netns: label,
                        inode: Some(inode),
                        subscribed: true,
                        error: None,
                    };
                    let w = Watching {
                        stop: stop_tx,
                        task,
                        report,
                    };
                    watching.insert(inode, w);
                }
                Err(e) => {
                    warn!("conntrack: {e}; expiries in that pod's namespace will not be seen");
                    let report = WatchReport {
                        netns: label,
                        inode: Some(inode),
                        subscribed: false,
                        error: Some(e.to_string()),
                    };
                    failed.insert(inode, report);
                }
            }
        }
        let mut reports = fixed.clone();
        reports.extend(watching.values().map(|w| w.report.clone()));
        reports.extend(failed.values().cloned());
        state.set_conntrack(reports);
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            for w in watching.into_values() {
                let _ = w.stop.send(true);
                let _ = w.task.await;
            }
            return;
        }
    }
}
