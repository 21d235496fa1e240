//! What the watches know, indexed for the enricher: pods of this node by UID, IP and container
//! id (rebuilt from the pod store: a node's pods are few); Services by cluster IP and
//! EndpointSlice endpoints (backends anywhere in the cluster) by address, kept as compact
//! entries only (no object is stored) and updated per event: the cost of a Service or
//! EndpointSlice change does not grow with the cluster. A relist builds the new entries aside
//! and swaps them in whole.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// A pod of this node, as the enricher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// (semantic-convention key, name): ("k8s.deployment.name", "redis-client"), ...
    pub workload: Vec<(&'static str, String)>,
    /// Selected labels (`--k8s-pod-labels`).
    pub labels: BTreeMap<String, String>,
    /// container id -> (container name, runtime from the id's scheme).
    pub containers: HashMap<String, (String, Option<String>)>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub runtime_class: Option<String>,
    /// A Wasm pod: its RuntimeClass is one of `--wasm-runtime-classes`, or it carries crun's
    /// `module.wasm.image/variant` annotation. Its cgroups are fed to the capture map.
    pub wasm: bool,
}

/// crun's annotation for a Wasm container image.
pub const WASM_ANNOTATION: &str = "module.wasm.image/variant";

/// A Service, by one of its cluster IPs (the names shared by all its IPs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// An endpoint of a Service: the pod behind an address (anywhere in the cluster). The
/// namespace, Service and owning slice are shared by the slice's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub pod_name: Option<Box<str>>,
    pub namespace: Arc<str>,
    pub service: Option<Arc<str>>,
    /// `namespace/name` of the EndpointSlice that lists it.
    pub slice: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Indexes {
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub pod_by_ip: HashMap<IpAddr, Arc<PodInfo>>,
    pub services: HashMap<IpAddr, ServiceInfo>,
    pub backends: HashMap<IpAddr, Backend>,
    /// The cluster IPs of each Service and the addresses of each EndpointSlice, by
    /// `namespace/name`: what an update or a delete removes.
    service_ips: HashMap<Arc<str>, Box<[IpAddr]>>,
    slice_addrs: HashMap<Arc<str>, SliceKept>,
    /// Ready endpoints of each Service (`namespace/name`), summed over its EndpointSlices;
    /// a Service with none has no entry.
    ready_by_service: HashMap<Arc<str>, usize>,
}

/// What the index remembers of an EndpointSlice to take it out again.
#[derive(Debug)]
struct SliceKept {
    addrs: Box<[IpAddr]>,
    /// Its Service (`namespace/name`) and how many of its endpoints are ready.
    service: Option<Arc<str>>,
    ready: usize,
}

/// A Service as the index keeps it: its key, names and cluster IPs.
pub struct ServiceEntry {
    key: Arc<str>,
    info: ServiceInfo,
    ips: Box<[IpAddr]>,
}

/// An EndpointSlice as the index keeps it: its key and its endpoints.
pub struct SliceEntry {
    key: Arc<str>,
    backends: Vec<(IpAddr, Backend)>,
    /// Its Service's `namespace/name`, and its endpoints that are ready (a condition left
    /// unset counts as ready, as the API says consumers should take it).
    service: Option<Arc<str>>,
    ready: usize,
}

fn object_key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Arc<str>> {
    Some(
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref()?
        )
        .into(),
    )
}

/// What the index keeps of a Service (None without a name).
pub fn service_entry(svc: &Service) -> Option<ServiceEntry> {
    let key = object_key(&svc.metadata)?;
    let name: Arc<str> = svc.metadata.name.as_deref()?.into();
    let namespace: Arc<str> = svc.metadata.namespace.as_deref().unwrap_or_default().into();
    let spec = svc.spec.as_ref();
    let mut ips: Vec<IpAddr> = spec
        .into_iter()
        .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.iter()))
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    Some(ServiceEntry {
        key,
        info: ServiceInfo { name, namespace },
        ips: ips.into(),
    })
}

/// What the index keeps of an EndpointSlice (None without a name).
pub fn slice_entry(slice: &EndpointSlice) -> Option<SliceEntry> {
    let key = object_key(&slice.metadata)?;
    let namespace: Arc<str> = slice
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .into();
    let service: Option<Arc<str>> = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .map(|s| s.as_str().into());
    let mut backends = Vec::new();
    let mut ready = 0;
    for ep in slice.endpoints.iter().flatten() {
        let is_ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
        ready += usize::from(is_ready && !ep.addresses.is_empty());
        let pod_name: Option<Box<str>> = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.as_deref())
            .map(Into::into);
        for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            backends.push((
                addr,
                Backend {
                    pod_name: pod_name.clone(),
                    namespace: namespace.clone(),
                    service: service.clone(),
                    slice: key.clone(),
                },
            ));
        }
    }
    let service = service.map(|name| format!("{namespace}/{name}").into());
    Some(SliceEntry {
        key,
        backends,
        service,
        ready,
    })
}

impl Indexes {
    pub fn set_pods(&mut self, pods: &[Arc<Pod>], labels: &[String], wasm_classes: &[String]) {
        self.pods.clear();
        self.pod_by_ip.clear();
        for pod in pods {
            let Some(info) = pod_info(pod, labels, wasm_classes) else {
                continue;
            };
            let info = Arc::new(info);
            if !info.host_network {
                for ip in &info.ips {
                    self.pod_by_ip.insert(*ip, info.clone());
                }
            }
            self.pods.insert(info.uid.clone(), info);
        }
    }

    /// A Service added or changed: its old cluster IPs out, its current ones in.
    pub fn apply_service(&mut self, entry: ServiceEntry) {
        self.delete_service(&entry.key);
        for ip in &entry.ips {
            self.services.insert(*ip, entry.info.clone());
        }
        self.service_ips.insert(entry.key, entry.ips);
    }

    /// A Service deleted: its cluster IPs out (unless another Service holds one now).
    pub fn delete_service(&mut self, key: &str) {
        let Some(ips) = self.service_ips.remove(key) else {
            return;
        };
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        for ip in ips.iter() {
            if self
                .services
                .get(ip)
                .is_some_and(|s| &*s.name == name && &*s.namespace == namespace)
            {
                self.services.remove(ip);
            }
        }
    }

    /// Every Service at once (a relist): the entries replace what was there.
    pub fn replace_services(&mut self, entries: Vec<ServiceEntry>) {
        self.services.clear();
        self.service_ips.clear();
        for e in entries {
            self.apply_service(e);
        }
        self.services.shrink_to_fit();
        self.service_ips.shrink_to_fit();
    }

    /// An EndpointSlice added or changed: its old addresses out, its endpoints in.
    pub fn apply_slice(&mut self, entry: SliceEntry) {
        self.delete_slice(&entry.key);
        let addrs: Box<[IpAddr]> = entry.backends.iter().map(|(ip, _)| *ip).collect();
        for (ip, backend) in entry.backends {
            self.backends.insert(ip, backend);
        }
        if let Some(service) = &entry.service
            && entry.ready > 0
        {
            *self.ready_by_service.entry(service.clone()).or_default() += entry.ready;
        }
        self.slice_addrs.insert(
            entry.key,
            SliceKept {
                addrs,
                service: entry.service,
                ready: entry.ready,
            },
        );
    }

    /// An EndpointSlice deleted: the addresses it (still) owns out.
    pub fn delete_slice(&mut self, key: &str) {
        let Some(kept) = self.slice_addrs.remove(key) else {
            return;
        };
        for ip in kept.addrs.iter() {
            if self.backends.get(ip).is_some_and(|b| &*b.slice == key) {
                self.backends.remove(ip);
            }
        }
        if let Some(service) = &kept.service
            && let Some(n) = self.ready_by_service.get_mut(service)
        {
            *n = n.saturating_sub(kept.ready);
            if *n == 0 {
                self.ready_by_service.remove(service);
            }
        }
    }

    /// The ready endpoints of the Service `namespace/name` over all its EndpointSlices.
    pub fn ready_endpoints(&self, namespace: &str, name: &str) -> usize {
        self.ready_by_service
            .get(format!("{namespace}/{name}").as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Every EndpointSlice at once (a relist).
    pub fn replace_slices(&mut self, entries: Vec<SliceEntry>) {
        self.backends.clear();
        self.slice_addrs.clear();
        self.ready_by_service.clear();
        for e in entries {
            self.apply_slice(e);
        }
        self.backends.shrink_to_fit();
        self.slice_addrs.shrink_to_fit();
        self.ready_by_service.shrink_to_fit();
    }

    /// Services and EndpointSlices known (objects, not addresses).
    pub fn counts(&self) -> (usize, usize) {
        (self.service_ips.len(), self.slice_addrs.len())
    }
}

/// Drops what the agent never reads, so the caches stay small.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.retain(|k, _| k.contains("wasm"));
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
        for c in &mut spec.containers {
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
            c.args = None;
            c.command = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
    }
}

fn pod_info(pod: &Pod, wanted_labels: &[String], wasm_classes: &[String]) -> Option<PodInfo> {
    let m = &pod.metadata;
    let labels_all = m.labels.clone().unwrap_or_default();
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let all = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten());
        for cs in all {
            if let Some((scheme, id)) = cs.container_id.as_deref().and_then(|c| c.split_once("://"))
            {
                // The CRI's scheme names the runtime: containerd, cri-o, docker.
                let runtime = scheme;
                containers.insert(id.to_owned(), (cs.name.clone(), Some(runtime.to_owned())));
            }
        }
    }
    let ips = pod
        .status
        .as_ref()
        .map(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.clone())
                .chain(s.pod_ip.iter().cloned())
                .filter_map(|ip| ip.parse().ok())
                .collect::<Vec<IpAddr>>()
        })
        .unwrap_or_default();
    let spec = pod.spec.as_ref();
    let runtime_class = spec.and_then(|s| s.runtime_class_name.clone());
    let wasm = runtime_class
        .as_ref()
        .is_some_and(|c| wasm_classes.iter().any(|w| w == c))
        || m.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(WASM_ANNOTATION));
    Some(PodInfo {
        name: m.name.clone()?,
        namespace: m.namespace.clone().unwrap_or_default(),
        uid: m.uid.clone()?,
        workload: workload(pod, &labels_all),
        labels: labels_all
            .into_iter()
            .filter(|(k, _)| wanted_labels.iter().any(|w| w == k))
            .collect(),
        containers,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        runtime_class,
        wasm,
    })
}

/// The workload that owns the pod, from its controller owner reference. A ReplicaSet named
/// `<deployment>-<pod-template-hash>` belongs to that Deployment; a Job named `<cronjob>-<n>`
/// (n: the schedule time in minutes, 8+ digits) to that CronJob. Both are the names the
/// controllers give; no extra API reads.
pub fn workload(pod: &Pod, labels: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return Vec::new();
    };
    let name = owner.name.clone();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let mut out = vec![("k8s.replicaset.name", name.clone())];
            if let Some(hash) = labels.get("pod-template-hash")
                && let Some(dep) = name.strip_suffix(&format!("-{hash}"))
            {
                out.push(("k8s.deployment.name", dep.to_owned()));
            }
            out
        }
        "StatefulSet" => vec![("k8s.statefulset.name", name)],
        "DaemonSet" => vec![("k8s.daemonset.name", name)],
        "Job" => {
            let mut out = vec![("k8s.job.name", name.clone())];
            if let Some((cron, n)) = name.rsplit_once('-')
                && n.len() >= 8
                && n.bytes().all(|b| b.is_ascii_digit())
            {
                out.push(("k8s.cronjob.name", cron.to_owned()));
            }
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn workloads_from_owner_references() {
        let owned = |kind: &str, name: &str, hash: Option<&str>| {
            let mut labels = serde_json::Map::new();
            if let Some(h) = hash {
                labels.insert("pod-template-hash".into(), h.into());
            }
            let p = pod(
                serde_json::json!({"metadata": {"name": "p", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                    "uid": "u", "controller": true}]}}),
            );
            let labels = p.metadata.labels.clone().unwrap_or_default();
            workload(&p, &labels)
        };
        assert_eq!(
            owned("ReplicaSet", "redis-client-7c9f5d", Some("7c9f5d")),
            vec![
                ("k8s.replicaset.name", "redis-client-7c9f5d".to_owned()),
                ("k8s.deployment.name", "redis-client".to_owned())
            ]
        );
        assert_eq!(
            owned("ReplicaSet", "bare-rs", None),
            vec![("k8s.replicaset.name", "bare-rs".to_owned())]
        );
        assert_eq!(
            owned("StatefulSet", "db", None),
            vec![("k8s.statefulset.name", "db".to_owned())]
        );
        assert_eq!(
            owned("DaemonSet", "agent", None),
            vec![("k8s.daemonset.name", "agent".to_owned())]
        );
        assert_eq!(
            owned("Job", "backup-29012345", None),
            vec![
                ("k8s.job.name", "backup-29012345".to_owned()),
                ("k8s.cronjob.name", "backup".to_owned())
            ]
        );
        assert_eq!(
            owned("Job", "migrate-1", None),
            vec![("k8s.job.name", "migrate-1".to_owned())]
        );
    }

    #[test]
    fn pods_index_by_uid_ip_and_container() {
        let p = Arc::new(pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "secret-ish": "x"}},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
                "containerStatuses": [{"name": "app", "containerID": "containerd://abc",
                    "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        })));
        let host = Arc::new(pod(serde_json::json!({
            "metadata": {"name": "node-agent", "namespace": "kube-system", "uid": "u-2"},
            "spec": {"hostNetwork": true, "containers": [{"name": "a"}]},
            "status": {"podIP": "192.168.0.10"}
        })));
        let mut idx = Indexes::default();
        idx.set_pods(&[p, host], &["app".to_owned()], &[]);
        let web = &idx.pods["u-1"];
        assert_eq!(web.name, "web-1");
        assert_eq!(web.labels, BTreeMap::from([("app".into(), "web".into())]));
        assert_eq!(
            web.containers["abc"],
            ("app".to_owned(), Some("containerd".to_owned()))
        );
        assert_eq!(
            idx.pod_by_ip[&"fd00::5".parse::<IpAddr>().unwrap()].uid,
            "u-1"
        );
        assert!(
            !idx.pod_by_ip
                .contains_key(&"192.168.0.10".parse::<IpAddr>().unwrap()),
            "host-network pods share the node's address: not a pod identity"
        );
        assert!(idx.pods.contains_key("u-2"));
    }

    fn service(ns: &str, name: &str, ips: &[&str]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ips.first(), "clusterIPs": ips}
        }))
        .unwrap()
    }

    fn slice(ns: &str, name: &str, svc: &str, eps: &[(&str, &str)]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = eps
            .iter()
            .map(|(ip, pod)| {
                serde_json::json!({"addresses": [ip],
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns,
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn services_change_one_at_a_time() {
        let mut idx = Indexes::default();
        idx.apply_service(
            service_entry(&service("shop", "redis", &["10.96.0.15", "fd00::15"])).unwrap(),
        );
        idx.apply_service(service_entry(&service("shop", "web", &["10.96.0.20"])).unwrap());
        assert_eq!(&*idx.services[&ip("fd00::15")].name, "redis");
        assert_eq!(idx.counts(), (2, 0));
        // Its cluster IP changes: the old one is gone, the other Service untouched.
        idx.apply_service(service_entry(&service("shop", "redis", &["10.96.0.16"])).unwrap());
        assert!(!idx.services.contains_key(&ip("10.96.0.15")));
        assert!(!idx.services.contains_key(&ip("fd00::15")));
        assert_eq!(&*idx.services[&ip("10.96.0.16")].name, "redis");
        assert_eq!(&*idx.services[&ip("10.96.0.20")].name, "web");
        // Deleted: its IP goes, unless another Service took it meanwhile.
        idx.apply_service(service_entry(&service("other", "taker", &["10.96.0.20"])).unwrap());
        idx.delete_service("shop/web");
        assert_eq!(&*idx.services[&ip("10.96.0.20")].name, "taker");
        idx.delete_service("shop/redis");
        assert!(!idx.services.contains_key(&ip("10.96.0.16")));
        assert_eq!(idx.counts(), (1, 0));
        // A relist replaces everything.
        idx.replace_services(vec![
            service_entry(&service("a", "b", &["10.96.1.1"])).unwrap(),
        ]);
        assert_eq!(idx.services.len(), 1);
        assert_eq!(&*idx.services[&ip("10.96.1.1")].namespace, "a");
    }

    #[test]
    fn endpoint_slices_own_their_addresses() {
        let mut idx = Indexes::default();
        idx.apply_slice(
            slice_entry(&slice(
                "shop",
                "redis-abc",
                "redis",
                &[("10.2.0.9", "redis-0"), ("10.2.0.10", "redis-1")],
            ))
            .unwrap(),
        );
        let b = &idx.backends[&ip("10.2.0.9")];
        assert_eq!(
            (b.pod_name.as_deref(), &*b.namespace, b.service.as_deref()),
            (Some("redis-0"), "shop", Some("redis"))
        );
        // The slice changes: redis-1 left.
        idx.apply_slice(
            slice_entry(&slice(
                "shop",
                "redis-abc",
                "redis",
                &[("10.2.0.9", "redis-0")],
            ))
            .unwrap(),
        );
        assert!(!idx.backends.contains_key(&ip("10.2.0.10")));
        // An address another slice lists now stays when the first slice is deleted.
        idx.apply_slice(
            slice_entry(&slice(
                "shop",
                "redis-def",
                "redis",
                &[("10.2.0.9", "redis-0")],
            ))
            .unwrap(),
        );
        assert_eq!(idx.ready_endpoints("shop", "redis"), 2, "one in each slice");
        idx.delete_slice("shop/redis-abc");
        assert_eq!(&*idx.backends[&ip("10.2.0.9")].slice, "shop/redis-def");
        assert_eq!(idx.ready_endpoints("shop", "redis"), 1);
        idx.delete_slice("shop/redis-def");
        assert!(idx.backends.is_empty());
        assert_eq!(idx.ready_endpoints("shop", "redis"), 0);
        assert!(idx.ready_by_service.is_empty());
        assert_eq!(idx.counts(), (0, 0));
    }
}
