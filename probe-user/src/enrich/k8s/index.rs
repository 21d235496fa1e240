//! What the watches know, indexed for the enricher: pods of this node by UID, IP and container
//! id; Services by cluster IP; EndpointSlice endpoints (backends anywhere in the cluster) by
//! address. Built from the reflector stores; objects are trimmed as they arrive.

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

/// A Service, by one of its cluster IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
}

/// An endpoint of a Service: the pod behind an address (anywhere in the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub pod_name: Option<String>,
    pub namespace: String,
    pub service: Option<String>,
}

#[derive(Debug, Default)]
pub struct Indexes {
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub pod_by_ip: HashMap<IpAddr, Arc<PodInfo>>,
    pub services: HashMap<IpAddr, ServiceInfo>,
    pub backends: HashMap<IpAddr, Backend>,
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

    pub fn set_services(&mut self, services: &[Arc<Service>]) {
        self.services.clear();
        for svc in services {
            let (Some(name), Some(spec)) = (&svc.metadata.name, &svc.spec) else {
                continue;
            };
            let namespace = svc.metadata.namespace.clone().unwrap_or_default();
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter());
            for ip in ips.filter_map(|s| s.parse::<IpAddr>().ok()) {
                self.services.insert(
                    ip,
                    ServiceInfo {
                        name: name.clone(),
                        namespace: namespace.clone(),
                    },
                );
            }
        }
    }

    pub fn set_endpoint_slices(&mut self, slices: &[Arc<EndpointSlice>]) {
        self.backends.clear();
        for slice in slices {
            let namespace = slice.metadata.namespace.clone().unwrap_or_default();
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .cloned();
            for ep in slice.endpoints.iter().flatten() {
                let pod_name = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    self.backends.insert(
                        addr,
                        Backend {
                            pod_name: pod_name.clone(),
                            namespace: namespace.clone(),
                            service: service.clone(),
                        },
                    );
                }
            }
        }
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

pub fn trim_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    svc.metadata.annotations = None;
    svc.status = None;
}

pub fn trim_endpoint_slice(slice: &mut EndpointSlice) {
    slice.metadata.managed_fields = None;
    slice.metadata.annotations = None;
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
}
