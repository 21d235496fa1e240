//! The real kube client and reflectors against an HTTP fake of the API server
//! (`probe_tests::KubeFake`): list, chunked watch streams, resourceVersions, bookmarks, and a
//! 410 Gone that forces a relist. The cache must follow adds, updates and deletes.

use std::time::{Duration, Instant};

use probe_tests::KubeFake;
use serde_json::json;

use super::*;

const NODE: &str = "node-3";

fn pod(name: &str, uid: &str, node: &str, ip: &str, image_tag: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "payments", "uid": uid,
            "labels": {"app": "redis-client", "pod-template-hash": "7c9f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "redis-client-7c9f", "uid": "rs", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": format!("redis:{image_tag}"),
            "env": [{"name": "SECRET", "value": "trimmed"}]}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{"name": "app", "containerID": format!("containerd://{}", "a".repeat(64)),
                "image": "redis", "imageID": "", "ready": true, "restartCount": 0}]}
    })
}

async fn until(what: &str, cache: &K8sCache, cond: impl Fn(&Indexes) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cond(&cache.indexes.read().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; status {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_cache_follows_list_watch_bookmarks_and_a_relist() {
    let fake = KubeFake::start();
    fake.apply(
        "pods",
        pod("redis-client-1", "uid-1", NODE, "10.1.0.5", "7"),
    );
    fake.apply("pods", pod("elsewhere", "uid-x", "node-9", "10.9.0.5", "7"));
    fake.apply(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "redis", "namespace": "payments", "uid": "s1"},
            "spec": {"clusterIP": "10.96.0.15", "clusterIPs": ["10.96.0.15"]}}),
    );
    fake.apply(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "redis-abc", "namespace": "payments", "uid": "e1",
                "labels": {"kubernetes.io/service-name": "redis"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.2.0.9"],
                "targetRef": {"kind": "Pod", "name": "redis-0", "namespace": "payments"}}]}),
    );
    fake.apply(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "uid": "n", "labels": {"alpha.eksctl.io/cluster-name": "prod-eu"}}}),
    );
    let dir = std::env::temp_dir();
    // SAFETY: this test binary's only use of KUBECONFIG; set before the client reads it.
    unsafe { std::env::set_var("KUBECONFIG", fake.kubeconfig(&dir)) };

    let cache = K8sCache::new();
    let (_stop_tx, stop_rx) = tokio_watch::channel(false);
    let tasks = start(
        K8sConfig {
            node: NODE.into(),
            cluster_name: None,
            labels: vec!["app".into()],
            wasm_runtime_classes: vec![],
        },
        cache.clone(),
        stop_rx,
    )
    .await;
    assert_eq!(tasks.len(), 4, "three watches and the node read");
    assert!(
        wait_synced(&cache, Duration::from_secs(20)).await,
        "{:?}",
        cache.status()
    );

    // The initial list: this node's pod only, trimmed; the Service; the backend.
    {
        let idx = cache.indexes.read().unwrap();
        assert_eq!(
            idx.pods.len(),
            1,
            "the field selector keeps other nodes' pods out"
        );
        let p = &idx.pods["uid-1"];
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str()),
            ("redis-client-1", "payments")
        );
        assert_eq!(
            p.workload,
            vec![
                ("k8s.replicaset.name", "redis-client-7c9f".to_owned()),
                ("k8s.deployment.name", "redis-client".to_owned())
            ]
        );
        assert_eq!(p.containers["a".repeat(64).as_str()].0, "app");
        assert_eq!(&*idx.services[&"10.96.0.15".parse().unwrap()].name, "redis");
        assert_eq!(
            idx.backends[&"10.2.0.9".parse().unwrap()]
                .pod_name
                .as_deref(),
            Some("redis-0")
        );
    }
    let requests = fake.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("GET /api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName%3Dnode-3")
            && !r.contains("watch=")),
        "{requests:#?}"
    );
    until("the pod watch", &cache, |_| fake.watchers("pods") == 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.status().cluster_name.is_none() {
        assert!(
            Instant::now() < deadline,
            "no cluster name from the node labels"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.status().cluster_name.as_deref(), Some("prod-eu"));

    // Watch: add, update, bookmark, delete.
    fake.apply(
        "pods",
        pod("redis-client-2", "uid-2", NODE, "10.1.0.6", "7"),
    );
    until("the added pod", &cache, |i| i.pods.contains_key("uid-2")).await;
    fake.apply(
        "pods",
        pod("redis-client-2", "uid-2", NODE, "10.1.0.7", "8"),
    );
    until("the updated pod IP", &cache, |i| {
        i.pod_by_ip.contains_key(&"10.1.0.7".parse().unwrap())
            && !i.pod_by_ip.contains_key(&"10.1.0.6".parse().unwrap())
    })
    .await;
    fake.bookmark("pods", "Pod");
    fake.delete("pods", "payments", "redis-client-1");
    until("the deleted pod", &cache, |i| !i.pods.contains_key("uid-1")).await;
    let watches_before = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .count();
    let bookmarked = fake
        .requests()
        .iter()
        .any(|r| r.contains("allowWatchBookmarks=true"));
    assert!(bookmarked, "the client asks for bookmarks");

    // 410 Gone: the client must relist; a pod added meanwhile shows up through the list.
    let lists = |f: &KubeFake| {
        f.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
            .count()
    };
    let lists_before = lists(&fake);
    fake.expire_history("pods");
    fake.apply(
        "pods",
        pod("redis-client-3", "uid-3", NODE, "10.1.0.8", "7"),
    );
    until("the pod seen through the relist", &cache, |i| {
        i.pods.contains_key("uid-3")
    })
    .await;
    assert!(
        lists(&fake) > lists_before,
        "no relist after 410 Gone: {:#?}",
        fake.requests()
    );
    // ...and then watches again from the new list's resourceVersion.
    until("a new watch after the relist", &cache, |_| {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
            .count()
            > watches_before
    })
    .await;
    let idx = cache.indexes.read().unwrap();
    let mut uids: Vec<&String> = idx.pods.keys().collect();
    uids.sort();
    assert_eq!(uids, ["uid-2", "uid-3"]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_api_server_leaves_enrichment_off_and_says_why() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = std::env::temp_dir().join(format!("kubeconfig-unreachable-{}", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: x\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&path).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let cache = K8sCache::new();
    let (_tx, rx) = tokio_watch::channel(false);
    let (reader, writer) = kube::runtime::reflector::store::<Pod>();
    let pods = watch::Pods {
        reader,
        writer,
        labels: Vec::new(),
        wasm_classes: Vec::new(),
    };
    let task = tokio::spawn(watch::run_watch(
        "pods",
        Api::<Pod>::all(client),
        watcher::Config::default(),
        cache.clone(),
        rx,
        pods,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.status().last_error.is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = cache.status();
    assert_eq!(status.state, "error");
    assert!(
        status.last_error.as_deref().unwrap().contains("onnect"),
        "{status:?}"
    );
    task.abort();
    let _ = std::fs::remove_file(path);
}

/// Log lines written while the test's subscriber is the default.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_api_server_outage_is_a_few_lines_with_backoff_then_recovery() {
    // Nothing listens on the port for the first minute: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("k8s-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(KubeFake::kubeconfig_for(addr, &dir)).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    // The agent's own filter at its default level, for the whole test process (a scoped
    // subscriber misses callsites other tests hit first); this test's lines name its port.
    let logs = Captured::default();
    let sink = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter(crate::config::values::env_filter("info"))
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("the only test that sets a global subscriber");
    let ours = format!("127.0.0.1:{}", addr.port());
    let text_of = |logs: &Captured| {
        String::from_utf8(logs.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|l| l.contains(&ours))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let up = prometheus_client::metrics::gauge::Gauge::default();
    let cache = K8sCache::with_gauge(up.clone());
    let (_stop_tx, stop_rx) = tokio_watch::channel(false);
    let tasks = start_with(
        config,
        K8sConfig {
            node: NODE.into(),
            cluster_name: Some("c".into()),
            labels: vec![],
            wasm_runtime_classes: vec![],
        },
        cache.clone(),
        stop_rx,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let status = cache.status();
    let text = text_of(&logs);
    // Three watches retrying at 1, 2, 4, 8, 16, 30 s: at most 7 attempts each in a minute;
    // a retry loop without backoff makes hundreds.
    assert!(
        (3..=21).contains(&status.watch_errors),
        "{} failed requests in 60 s: {status:?}",
        status.watch_errors
    );
    assert!(!status.connected && up.get() == 0, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("onnect")),
        "{status:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() <= 3
            && lines
                .iter()
                .filter(|l| l.contains("does not answer"))
                .count()
                == 1,
        "an outage of a minute logged as:\n{text}"
    );

    // The API server comes back where it was: the caches sync within one capped backoff.
    let fake = KubeFake::start_on(addr);
    fake.apply(
        "pods",
        pod("redis-client-1", "uid-1", NODE, "10.1.0.5", "7"),
    );
    assert!(
        wait_synced(&cache, Duration::from_secs(40)).await,
        "{:?}",
        cache.status()
    );
    // Connected once every watch answered: one that failed again meanwhile (a request on a
    // connection from before the outage) answers after its next backoff, at most 30 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !cache.status().connected {
        assert!(Instant::now() < deadline, "{:?}", cache.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.get(), 1);
    assert!(cache.indexes.read().unwrap().pods.contains_key("uid-1"));
    let text = text_of(&logs);
    assert_eq!(
        text.matches("answers again").count(),
        1,
        "the recovery is one line:\n{text}"
    );
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(dir);
}
