//! Where events come from besides the kernel programs' ring buffer reader: conntrack
//! (ctnetlink per watched namespace) and the Kubernetes API (the pod cache the records are
//! enriched from).

use std::sync::Arc;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::info;

use super::kernel::Kernel;
use crate::{
    config::{Cli, KubeMode},
    conntrack,
    enrich::{
        self, Enricher,
        k8s::{K8sCache, K8sConfig},
    },
    pipeline::{self, Counters, Event, PipelineError},
    status::AgentState,
};

/// What the sources write into: the pipeline's channel, its counters, the enricher (one
/// clock offset for the kernel's events and the conntrack records).
pub struct Into {
    pub tx: mpsc::Sender<Event>,
    pub counters: Arc<Counters>,
    pub enricher: Enricher,
}

pub struct Sources {
    pub reader: JoinHandle<Result<(), PipelineError>>,
    pub conntrack: Vec<JoinHandle<()>>,
    pub kubernetes: Vec<JoinHandle<()>>,
    pub k8s_cache: Arc<K8sCache>,
}

impl Sources {
    pub async fn start(
        cli: &Cli,
        state: &Arc<AgentState>,
        node: &str,
        kernel: &Kernel,
        ring: pipeline::EventRing,
        into: Into,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let k8s_cache = K8sCache::with_gauge(state.metrics.kubernetes_up.clone());
        state.set_kubernetes(k8s_cache.clone());
        let kubernetes = match cli.kubernetes {
            KubeMode::Off => {
                info!("kubernetes: enrichment off (--kubernetes off)");
                Vec::new()
            }
            KubeMode::Auto => {
                let config = K8sConfig {
                    node: node.to_owned(),
                    cluster_name: cli.cluster_name.clone(),
                    labels: cli.k8s_pod_labels.clone(),
                    wasm_runtime_classes: cli.wasm_runtime_classes.clone(),
                };
                enrich::k8s::start(config, k8s_cache.clone(), stop.clone()).await
            }
        };
        // Pods' namespaces are followed while enrichment runs (a cluster configuration was
        // found).
        let follow_pods = cli.conntrack_pods && !kubernetes.is_empty();
        let config = conntrack::ConntrackConfig {
            host: cli.conntrack,
            netns: cli.conntrack_netns.clone(),
            settings_interval: cli.conntrack_settings_interval,
            timestamps: cli.conntrack_timestamps,
        };
        let conntrack = conntrack::start(
            &config,
            into.tx.clone(),
            into.counters.clone(),
            into.enricher,
            state.clone(),
            stop.clone(),
            follow_pods.then(|| k8s_cache.clone()),
        )
        .await;
        let reader = tokio::spawn(pipeline::read_events(
            ring,
            into.tx,
            kernel.tables.clone(),
            into.counters,
            cli.read_delay,
            stop,
        ));
        Self {
            reader,
            conntrack,
            kubernetes,
            k8s_cache,
        }
    }
}
