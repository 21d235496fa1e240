//! The Kubernetes keys of a record (OpenTelemetry semantic convention names).

use std::collections::BTreeMap;

use serde::Serialize;

/// Kubernetes keys of a record; absent (not null) when the event is not a pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct K8sAttrs {
    #[serde(rename = "k8s.cluster.name", skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(rename = "k8s.node.name", skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(rename = "k8s.namespace.name", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(rename = "k8s.pod.name", skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(rename = "k8s.pod.uid", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(rename = "k8s.container.name", skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(rename = "container.id", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(rename = "container.runtime", skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    /// `k8s.deployment.name`, `k8s.replicaset.name`, `k8s.statefulset.name`,
    /// `k8s.daemonset.name`, `k8s.job.name`, `k8s.cronjob.name`.
    #[serde(flatten)]
    pub workload: BTreeMap<&'static str, String>,
    #[serde(rename = "k8s.pod.labels", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "peer.k8s.namespace.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_namespace: Option<String>,
    #[serde(rename = "peer.k8s.pod.name", skip_serializing_if = "Option::is_none")]
    pub peer_pod_name: Option<String>,
    #[serde(
        rename = "peer.k8s.service.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_service_name: Option<String>,
    /// The workload of a peer pod on this node (`peer.k8s.deployment.name`, ...).
    #[serde(flatten)]
    pub peer_workload: BTreeMap<String, String>,
}

impl K8sAttrs {
    /// The keys as attributes (the node's name is the record's `k8s.node.name`); pod labels as
    /// `k8s.pod.label.<name>`.
    pub fn attributes(&self, a: &mut super::Attrs) {
        a.opt_str("k8s.cluster.name", self.cluster_name.as_deref());
        a.opt_str("k8s.namespace.name", self.namespace.as_deref());
        a.opt_str("k8s.pod.name", self.pod_name.as_deref());
        a.opt_str("k8s.pod.uid", self.pod_uid.as_deref());
        a.opt_str("k8s.container.name", self.container_name.as_deref());
        a.opt_str("container.id", self.container_id.as_deref());
        a.opt_str("container.runtime", self.container_runtime.as_deref());
        for (k, v) in &self.workload {
            a.push(k, super::AttrRef::Str(v));
        }
        for (k, v) in &self.labels {
            a.prefixed("k8s.pod.label.", k, super::AttrRef::Str(v));
        }
        a.opt_str("peer.k8s.namespace.name", self.peer_namespace.as_deref());
        a.opt_str("peer.k8s.pod.name", self.peer_pod_name.as_deref());
        a.opt_str("peer.k8s.service.name", self.peer_service_name.as_deref());
        for (k, v) in &self.peer_workload {
            a.push(k, super::AttrRef::Str(v));
        }
    }
}
