//! One watch of a resource, as client-go's reflector does it: list, then watch from the list's
//! resourceVersion; a 410 Gone relists (inside the stream, kube's watcher does; at the watch's
//! start, where kube's watcher would retry the stale resourceVersion for ever, a new session
//! lists again); every failure waits (1 s doubling to 30 s, with jitter), and the wait only
//! starts over after [`HEALTHY`] without a failure, so a server that answers the list and fails
//! the watch gets a growing delay, not a request loop. Each event goes to the resource's
//! [`Handler`], which updates the shared indexes.

use std::{
    fmt::Debug,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    runtime::{reflector, watcher},
};
use tokio::sync::watch as tokio_watch;
use tracing::info;

use super::{
    K8sCache, K8sStatus,
    health::Backoff,
    index::{self, Indexes, ServiceEntry, SliceEntry},
};

/// How long a watch must go without a failure before its backoff starts over (client-go's
/// reflector: 2 minutes).
pub const HEALTHY: Duration = Duration::from_secs(120);

/// What a resource's events do to the indexes.
pub trait Handler<K>: Send + 'static {
    /// One event of the watch (`Init` starts a relist, `InitDone` ends it).
    fn on_event(&mut self, event: watcher::Event<K>, cache: &K8sCache);
}

/// Runs the watch of `name` until `stop`.
pub async fn run_watch<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    cache: Arc<K8sCache>,
    mut stop: tokio_watch::Receiver<bool>,
    mut handler: impl Handler<K>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let mut backoff = Backoff::default();
    let mut last_failure: Option<Instant> = None;
    loop {
        let stream = watcher(api.clone(), config.clone());
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = stop.wait_for(|s| *s) => return,
            };
            let restart = match next {
                None => return,
                Some(Ok(event)) => {
                    // `Init` comes before every (re)list, also one about to fail: no answer.
                    if !matches!(event, watcher::Event::Init) {
                        if last_failure.is_none_or(|t| t.elapsed() >= HEALTHY) {
                            backoff.reset();
                        }
                        cache.watch_answered(name);
                    }
                    handler.on_event(event, &cache);
                    false
                }
                Some(Err(e)) => {
                    let gone_at_start = matches!(
                        &e,
                        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410
                    );
                    cache.watch_failed(name, e.to_string());
                    last_failure = Some(Instant::now());
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    gone_at_start
                }
            };
            if restart {
                info!(
                    watch = name,
                    "kubernetes: the watch's resourceVersion is gone (410): listing again"
                );
                break;
            }
        }
    }
}

/// After a change: counts, flags and the synced state in the status.
fn changed(cache: &K8sCache, name: &'static str, idx: &Indexes, st: &mut K8sStatus) {
    let (services, slices) = idx.counts();
    st.pods = idx.pods.len();
    st.services = services;
    st.endpoints = slices;
    cache.active.store(true, Ordering::Relaxed);
    cache
        .has_wasm_pods
        .store(idx.pods.values().any(|p| p.wasm), Ordering::Relaxed);
    st.synced.insert(name);
    if st.synced.len() == 3 && st.state != "synced" {
        info!("kubernetes: caches synced");
        st.state = "synced".into();
    }
}

fn update(cache: &K8sCache, name: &'static str, f: impl FnOnce(&mut Indexes)) {
    let mut idx = cache.indexes.write().unwrap_or_else(|e| e.into_inner());
    f(&mut idx);
    cache.set_status(|st| changed(cache, name, &idx, st));
}

/// The pods of this node: a reflector store (trimmed objects), the pod indexes rebuilt from it
/// after each change (a node runs at most a few hundred pods).
pub struct Pods {
    pub reader: reflector::Store<Pod>,
    pub writer: reflector::store::Writer<Pod>,
    pub labels: Vec<String>,
    pub wasm_classes: Vec<String>,
}

impl Handler<Pod> for Pods {
    fn on_event(&mut self, event: watcher::Event<Pod>, cache: &K8sCache) {
        let event = event.modify(index::trim_pod);
        self.writer.apply_watcher_event(&event);
        if matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
            return;
        }
        let all = self.reader.state();
        update(cache, "pods", |idx| {
            idx.set_pods(&all, &self.labels, &self.wasm_classes);
        });
    }
}

/// A cluster-wide resource kept as compact index entries, updated per event.
pub trait Compact: Sized {
    type Entry: Send + 'static;
    const NAME: &'static str;
    fn entry(&self) -> Option<Self::Entry>;
    fn key(&self) -> Option<String>;
    fn apply(idx: &mut Indexes, entry: Self::Entry);
    fn delete(idx: &mut Indexes, key: &str);
    fn replace(idx: &mut Indexes, all: Vec<Self::Entry>);
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    Some(format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref()?
    ))
}

impl Compact for Service {
    type Entry = ServiceEntry;
    const NAME: &'static str = "services";
    fn entry(&self) -> Option<ServiceEntry> {
        index::service_entry(self)
    }
    fn key(&self) -> Option<String> {
        key_of(&self.metadata)
    }
    fn apply(idx: &mut Indexes, entry: ServiceEntry) {
        idx.apply_service(entry);
    }
    fn delete(idx: &mut Indexes, key: &str) {
        idx.delete_service(key);
    }
    fn replace(idx: &mut Indexes, all: Vec<ServiceEntry>) {
        idx.replace_services(all);
    }
}

impl Compact for EndpointSlice {
    type Entry = SliceEntry;
    const NAME: &'static str = "endpointslices";
    fn entry(&self) -> Option<SliceEntry> {
        index::slice_entry(self)
    }
    fn key(&self) -> Option<String> {
        key_of(&self.metadata)
    }
    fn apply(idx: &mut Indexes, entry: SliceEntry) {
        idx.apply_slice(entry);
    }
    fn delete(idx: &mut Indexes, key: &str) {
        idx.delete_slice(key);
    }
    fn replace(idx: &mut Indexes, all: Vec<SliceEntry>) {
        idx.replace_slices(all);
    }
}

/// The handler of a [`Compact`] resource: a relist's entries are built aside and swapped in
/// at its end; later events change one object's entries.
pub struct CompactIndex<K: Compact> {
    staging: Vec<K::Entry>,
}

impl<K: Compact> Default for CompactIndex<K> {
    fn default() -> Self {
        Self {
            staging: Vec::new(),
        }
    }
}

impl<K: Compact + Send + 'static> Handler<K> for CompactIndex<K> {
    fn on_event(&mut self, event: watcher::Event<K>, cache: &K8sCache) {
        match event {
            watcher::Event::Init => self.staging.clear(),
            watcher::Event::InitApply(obj) => self.staging.extend(obj.entry()),
            watcher::Event::InitDone => {
                let all = std::mem::take(&mut self.staging);
                update(cache, K::NAME, |idx| K::replace(idx, all));
            }
            watcher::Event::Apply(obj) => {
                if let Some(entry) = obj.entry() {
                    update(cache, K::NAME, |idx| K::apply(idx, entry));
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(key) = obj.key() {
                    update(cache, K::NAME, |idx| K::delete(idx, &key));
                }
            }
        }
    }
}
