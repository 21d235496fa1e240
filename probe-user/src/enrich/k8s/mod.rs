//! Kubernetes enrichment: every event knows its pod. kube-rs reflectors watch the pods of this
//! node (field selector `spec.nodeName`), Services and EndpointSlices (cluster-wide), trimmed as
//! they arrive, with backoff and relists; indexes built from the stores map cgroup ids,
//! addresses and Service IPs to pods, Services and workloads. No cluster configuration or no
//! reachable API server means enrichment off (or waiting), never a stopped agent.

pub mod attrs;
pub mod cgroup;
mod client;
pub mod index;
pub mod netns;
mod watch;

pub mod health;

use std::{
    sync::{Arc, Mutex, RwLock, atomic::AtomicBool},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{reflector, watcher},
};
use serde::Serialize;
use tokio::sync::watch as tokio_watch;
use tracing::{info, warn};

use self::{health::Health, index::Indexes};

/// Node labels that carry the cluster's name on managed platforms (eksctl, AKS).
pub const CLUSTER_NAME_LABELS: [&str; 2] = [
    "alpha.eksctl.io/cluster-name",
    "kubernetes.azure.com/cluster",
];

#[derive(Debug, Clone)]
pub struct K8sConfig {
    pub node: String,
    pub cluster_name: Option<String>,
    /// Pod labels copied onto events.
    pub labels: Vec<String>,
    /// RuntimeClasses whose pods run Wasm.
    pub wasm_runtime_classes: Vec<String>,
}

/// What /health/status shows about the caches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct K8sStatus {
    /// `off` (no cluster configuration), `connecting`, `synced`, `error`.
    pub state: String,
    pub server: Option<String>,
    pub node: Option<String>,
    pub cluster_name: Option<String>,
    pub pods: usize,
    pub services: usize,
    pub endpoints: usize,
    /// cgroups of Wasm pods in the kernel's capture map.
    pub wasm_cgroups: usize,
    /// Resources whose first list has been applied.
    pub synced: std::collections::BTreeSet<&'static str>,
    /// Whether the API server answers the watches now.
    pub connected: bool,
    /// Failed list/watch requests since start (each followed by a backoff of 1 s doubling to
    /// 30 s).
    pub watch_errors: u64,
    pub last_error: Option<String>,
}

/// Shared between the watch tasks (writers) and the enricher (reader).
pub struct K8sCache {
    pub indexes: RwLock<Indexes>,
    pub status: Mutex<K8sStatus>,
    pub cluster_name: RwLock<Option<String>>,
    /// Cheap flags for the per-event path: some cache has data; some pod is a Wasm pod.
    pub active: AtomicBool,
    pub has_wasm_pods: AtomicBool,
    /// Logs the API server's state changes (not every failed request).
    health: Mutex<Health>,
    /// `probe_kubernetes_up`: 1 while every watch is answered.
    up: prometheus_client::metrics::gauge::Gauge,
}

impl crate::status::Snapshot for K8sCache {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(self.status()).unwrap_or_default()
    }
}

impl K8sCache {
    #[cfg(test)]
    pub fn new() -> Arc<Self> {
        Self::with_gauge(prometheus_client::metrics::gauge::Gauge::default())
    }

    /// A cache that keeps `up` (the `probe_kubernetes_up` gauge) current.
    pub fn with_gauge(up: prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        Arc::new(Self {
            health: Mutex::new(Health::default()),
            up,
            indexes: RwLock::new(Indexes::default()),
            status: Mutex::new(K8sStatus {
                state: "off".into(),
                ..K8sStatus::default()
            }),
            cluster_name: RwLock::new(None),
            active: AtomicBool::new(false),
            has_wasm_pods: AtomicBool::new(false),
        })
    }

    /// A watch got an answer: logs the recovery once every watch is answered again.
    fn watch_answered(&self, name: &'static str) {
        let all_up = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answered(name);
        if all_up {
            self.up.set(1);
            self.set_status(|s| s.connected = true);
        }
    }

    /// A list or watch request failed: one WARN when the API server goes away, a reminder at
    /// most once a minute while it stays away, the error in the status.
    fn watch_failed(&self, name: &'static str, error: String) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed(name, &error);
        self.up.set(0);
        self.set_status(|st| {
            st.connected = false;
            st.watch_errors += 1;
            if st.state != "synced" {
                st.state = "error".into();
            }
            st.last_error = Some(error);
        });
    }

    fn set_status(&self, f: impl FnOnce(&mut K8sStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn status(&self) -> K8sStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Connects (KUBECONFIG, ~/.kube/config or the in-cluster service account) and starts the
/// watches. Without a configuration, logs one line and leaves enrichment off.
pub async fn start(
    config: K8sConfig,
    cache: Arc<K8sCache>,
    stop: tokio_watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let kube_config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            info!("kubernetes: enrichment off: no cluster configuration ({e})");
            return Vec::new();
        }
    };
    start_with(kube_config, config, cache, stop)
}

/// [`start`] with a given client configuration.
pub fn start_with(
    kube_config: kube::Config,
    config: K8sConfig,
    cache: Arc<K8sCache>,
    stop: tokio_watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let server = kube_config.cluster_url.to_string();
    let client = match client::build(kube_config) {
        Ok(c) => c,
        Err(e) => {
            warn!("kubernetes: enrichment off: cannot build a client for {server}: {e}");
            cache.set_status(|s| {
                s.state = "error".into();
                s.last_error = Some(e.to_string());
            });
            return Vec::new();
        }
    };
    info!(
        server,
        node = config.node,
        "kubernetes: watching pods of this node, Services, EndpointSlices"
    );
    *cache
        .cluster_name
        .write()
        .unwrap_or_else(|e| e.into_inner()) = config.cluster_name.clone();
    cache
        .health
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .server = server.clone();
    cache.set_status(|s| {
        s.state = "connecting".into();
        s.server = Some(server);
        s.node = Some(config.node.clone());
        s.cluster_name = config.cluster_name.clone();
    });
    let mut tasks = Vec::new();
    if config.cluster_name.is_none() {
        tasks.push(tokio::spawn(cluster_name_from_node(
            client.clone(),
            config.node.clone(),
            cache.clone(),
        )));
    }
    let pods_cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node));
    let (reader, writer) = reflector::store::<Pod>();
    let pods = watch::Pods {
        reader,
        writer,
        labels: config.labels.clone(),
        wasm_classes: config.wasm_runtime_classes.clone(),
    };
    tasks.push(tokio::spawn(watch::run_watch(
        "pods",
        Api::<Pod>::all(client.clone()),
        pods_cfg,
        cache.clone(),
        stop.clone(),
        pods,
    )));
    tasks.push(tokio::spawn(watch::run_watch(
        "services",
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        cache.clone(),
        stop.clone(),
        watch::CompactIndex::<Service>::default(),
    )));
    tasks.push(tokio::spawn(watch::run_watch(
        "endpointslices",
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
        cache,
        stop,
        watch::CompactIndex::<EndpointSlice>::default(),
    )));
    tasks
}

/// `k8s.cluster.name` from well-known node labels, when no `--cluster-name` was given.
async fn cluster_name_from_node(client: Client, node: String, cache: Arc<K8sCache>) {
    let api = Api::<Node>::all(client);
    match api.get(&node).await {
        Ok(n) => {
            let labels = n.metadata.labels.unwrap_or_default();
            let name = CLUSTER_NAME_LABELS
                .iter()
                .find_map(|k| labels.get(*k).cloned());
            if let Some(name) = &name {
                info!(
                    cluster = name,
                    "kubernetes: cluster name from the node's labels"
                );
            }
            cache.set_status(|s| s.cluster_name = name.clone());
            *cache
                .cluster_name
                .write()
                .unwrap_or_else(|e| e.into_inner()) = name;
        }
        Err(e) => warn!("kubernetes: reading node {node} for the cluster name: {e}"),
    }
}

/// Waits up to `limit` for the pod cache's first sync (tests and start-up).
#[allow(dead_code)]
pub async fn wait_synced(cache: &K8sCache, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cache.status().state == "synced" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests;
