//! Applies the caches to records: the pod an event belongs to (by cgroup id, then pid, then
//! its network namespace, then its local address) and, for network events, the peer's pod or
//! Service. Keys are spelled as OpenTelemetry semantic conventions spell them; the peer's carry
//! a `peer.` prefix.

use std::{sync::Arc, time::Instant};

use super::{
    K8sCache, cgroup,
    index::{Indexes, PodInfo},
    netns::PodNetns,
};
use crate::{
    model::{End, Record},
    status::event_metrics::PodLabels,
};

pub use crate::model::K8sAttrs;

/// Why a record is held back.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// The event's cgroup is a pod's that the cache does not know yet: hold it briefly.
    PodNotCached(String),
}

pub struct K8sEnricher {
    cache: Arc<K8sCache>,
    cgroups: cgroup::CgroupPaths,
    netns: PodNetns,
    last_wasm_scan: Option<Instant>,
}

/// How often the cgroups of Wasm pods are looked for (new containers, removed ones).
const WASM_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl K8sEnricher {
    pub fn new(cache: Arc<K8sCache>, cgroup_root: std::path::PathBuf) -> Self {
        Self {
            cache,
            cgroups: cgroup::CgroupPaths::new(cgroup_root),
            netns: PodNetns::new("/proc"),
            last_wasm_scan: None,
        }
    }

    /// Whether any pod of this node is a Wasm pod.
    pub fn has_wasm_pods(&self) -> bool {
        self.cache
            .has_wasm_pods
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cgroup ids of the Wasm pods' containers as they exist now; None when it is not
    /// time to look again yet.
    pub fn wasm_cgroups(&mut self, now: Instant) -> Option<std::collections::HashSet<u64>> {
        if self
            .last_wasm_scan
            .is_some_and(|t| now.duration_since(t) < WASM_SCAN_EVERY)
        {
            return None;
        }
        self.last_wasm_scan = Some(now);
        let idx = self.cache.indexes.read().unwrap_or_else(|e| e.into_inner());
        if !idx.pods.values().any(|p| p.wasm) {
            return Some(Default::default());
        }
        self.cgroups.refresh(now);
        let ids = self
            .cgroups
            .known_ids()
            .filter_map(|(id, path)| {
                let c = cgroup::parse(path)?;
                c.container_id.as_ref()?;
                idx.pods.get(&c.pod_uid).filter(|p| p.wasm).map(|_| *id)
            })
            .collect();
        Some(ids)
    }

    pub fn set_wasm_cgroup_count(&self, n: usize) {
        self.cache
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wasm_cgroups = n;
    }

    /// Looks up cgroup `id`'s path now, while the cgroup exists, for a record that is
    /// enriched later (a core-dumping signal waits for its target's exit, and a crashed
    /// container's cgroup is removed soon after it).
    pub fn remember_cgroup(&mut self, id: u64, now: Instant) {
        if self.active() {
            self.cgroups.note(id, now);
        }
    }

    /// Whether the caches have anything to offer (enrichment on and synced once).
    pub fn active(&self) -> bool {
        self.cache.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn enrich(&mut self, record: &mut Record, now: Instant) -> Verdict {
        if !self.active() {
            return Verdict::Done;
        }
        let idx = self.cache.indexes.read().unwrap_or_else(|e| e.into_inner());
        let mut attrs = K8sAttrs::default();
        let mut subject: Option<Arc<PodInfo>> = None;
        // 1. The task's or socket's cgroup.
        let path = record
            .common
            .cgroup_id
            .and_then(|id| self.cgroups.path(id, now))
            .or_else(|| {
                let pid = record.common.pid?;
                self.cgroups.path_of_pid(pid, now)
            });
        if let Some(c) = path.as_deref().and_then(cgroup::parse) {
            let Some((pod, known)) = pod_of_cgroup(&idx, &c) else {
                return Verdict::PodNotCached(c.pod_uid);
            };
            if let Some(id) = &c.container_id {
                attrs.container_id = Some(id.clone());
                attrs.container_name = known.map(|(name, _)| name.clone());
                attrs.container_runtime = known
                    .and_then(|(_, r)| r.clone())
                    .or(c.runtime.map(str::to_owned));
            }
            subject = Some(pod.clone());
        }
        // 2. The network namespace: an event no pod's task or socket owns (built in softirq)
        // that happened in a pod's network.
        if subject.is_none()
            && let Some(netns) = record.common.netns
        {
            subject = pod_of_netns(&mut self.netns, &mut self.cgroups, &idx, netns, now);
        }
        // 3. The local address of a network event, 4. its peer.
        let flow = record.body.flow();
        let (local, peer) = match flow {
            Some(f) => {
                let (local, peer) = match f.local {
                    End::Src => (f.src, f.dst),
                    // A packet leaving or arriving: the pod's end is its local one.
                    End::Either
                        if !idx.pod_by_ip.contains_key(&f.dst.0)
                            && idx.pod_by_ip.contains_key(&f.src.0) =>
                    {
                        (f.src, f.dst)
                    }
                    End::Either => (f.dst, f.src),
                };
                (Some(local), Some(peer))
            }
            None => (None, None),
        };
        if subject.is_none() {
            subject = local.and_then(|(ip, _)| idx.pod_by_ip.get(&ip).cloned());
        }
        if let Some((ip, _port)) = peer {
            if let Some(svc) = idx.services.get(&ip) {
                attrs.peer_service_name = Some(svc.name.to_string());
                attrs.peer_namespace = Some(svc.namespace.to_string());
            } else if let Some(pod) = idx.pod_by_ip.get(&ip) {
                attrs.peer_pod_name = Some(pod.name.clone());
                attrs.peer_namespace = Some(pod.namespace.clone());
                attrs.peer_workload = pod
                    .workload
                    .iter()
                    .map(|(k, v)| (format!("peer.{k}"), v.clone()))
                    .collect();
            } else if let Some(b) = idx.backends.get(&ip) {
                attrs.peer_pod_name = b.pod_name.as_deref().map(str::to_owned);
                attrs.peer_namespace = Some(b.namespace.to_string());
                attrs.peer_service_name = b.service.as_deref().map(str::to_owned);
            }
        }
        // A DNAT'ed flow: the backend that really served it.
        if let Some(backend) = flow.and_then(|f| f.served_by)
            && attrs.peer_pod_name.is_none()
        {
            if let Some(pod) = idx.pod_by_ip.get(&backend) {
                attrs.peer_pod_name = Some(pod.name.clone());
            } else if let Some(b) = idx.backends.get(&backend) {
                attrs.peer_pod_name = b.pod_name.as_deref().map(str::to_owned);
            }
        }
        if let Some(pod) = &subject {
            attrs.namespace = Some(pod.namespace.clone());
            attrs.pod_name = Some(pod.name.clone());
            attrs.pod_uid = Some(pod.uid.clone());
            attrs.workload = pod.workload.iter().cloned().collect();
            attrs.labels = pod.labels.clone();
        }
        if attrs != K8sAttrs::default() {
            attrs.node_name = Some(record.node.to_string());
            attrs.cluster_name = self
                .cache
                .cluster_name
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            record.k8s = Some(Box::new(attrs));
        }
        Verdict::Done
    }

    /// The pod (and container) a cgroup, else a network namespace (0: none), belongs to: the
    /// labels of the event metrics, as `enrich` finds a record's pod.
    pub fn owner(&mut self, cgroup_id: u64, netns: u32, now: Instant) -> Owner {
        if !self.active() {
            return Owner::None;
        }
        let idx = self.cache.indexes.read().unwrap_or_else(|e| e.into_inner());
        let path = (cgroup_id != 0)
            .then(|| self.cgroups.path(cgroup_id, now))
            .flatten();
        let mut container = String::new();
        let mut pod = None;
        if let Some(c) = path.as_deref().and_then(cgroup::parse) {
            let Some((known, container_known)) = pod_of_cgroup(&idx, &c) else {
                return Owner::NotCached;
            };
            if let Some((name, _)) = container_known {
                container.clone_from(name);
            }
            pod = Some(known.clone());
        }
        if pod.is_none() && netns != 0 {
            pod = pod_of_netns(&mut self.netns, &mut self.cgroups, &idx, netns, now);
        }
        match pod {
            Some(p) => Owner::Pod(pod_labels(&p, container)),
            None => Owner::None,
        }
    }
}

/// A container as the pod spec names it: (name, runtime from the id's scheme).
type KnownContainer = (String, Option<String>);

/// The pod of a container's (or pod's) cgroup, and what the pod spec says of the container
/// (name, runtime); None when the cache does not know the pod yet.
fn pod_of_cgroup<'i>(
    idx: &'i Indexes,
    c: &cgroup::ContainerCgroup,
) -> Option<(&'i Arc<PodInfo>, Option<&'i KnownContainer>)> {
    let pod = idx.pods.get(&c.pod_uid)?;
    let container = c
        .container_id
        .as_ref()
        .and_then(|id| pod.containers.get(id));
    Some((pod, container))
}

/// The pod of a network namespace (not the host's: pods on the host network share it).
fn pod_of_netns(
    netns_index: &mut PodNetns,
    cgroups: &mut cgroup::CgroupPaths,
    idx: &Indexes,
    netns: u32,
    now: Instant,
) -> Option<Arc<PodInfo>> {
    let on_pod_network = |uid: &str| idx.pods.get(uid).is_some_and(|p| !p.host_network);
    netns_index
        .pod_uid(netns, cgroups, on_pod_network, now)
        .and_then(|uid| idx.pods.get(&uid).cloned())
}

/// Whom events belong to, for their metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Pod(PodLabels),
    /// A pod's cgroup whose pod the cache does not know yet.
    NotCached,
    /// No pod (the host, or enrichment off).
    None,
}

/// The metric labels of a pod: its top-level workload (the Deployment rather than its
/// ReplicaSet, the CronJob rather than its Job).
fn pod_labels(pod: &PodInfo, container: String) -> PodLabels {
    let (workload_kind, workload) =
        PodLabels::top_workload(pod.workload.iter().map(|(k, n)| (*k, n.as_str())));
    PodLabels {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        container,
        workload_kind,
        workload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_name_the_top_level_workload() {
        let pod = PodInfo {
            name: "web-7d9f-abcde".into(),
            namespace: "shop".into(),
            uid: "u1".into(),
            workload: vec![
                ("k8s.replicaset.name", "web-7d9f".into()),
                ("k8s.deployment.name", "web".into()),
            ],
            labels: Default::default(),
            containers: Default::default(),
            ips: Vec::new(),
            host_network: false,
            runtime_class: None,
            wasm: false,
        };
        assert_eq!(
            pod_labels(&pod, "app".into()),
            PodLabels {
                namespace: "shop".into(),
                pod: "web-7d9f-abcde".into(),
                container: "app".into(),
                workload_kind: "deployment".into(),
                workload: "web".into(),
            }
        );
        let bare = PodInfo {
            workload: Vec::new(),
            ..pod
        };
        let labels = pod_labels(&bare, String::new());
        assert_eq!(
            (labels.workload_kind.as_str(), labels.workload.as_str()),
            ("", "")
        );
    }
}
