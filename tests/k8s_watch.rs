//! Root e2e: the agent's Kubernetes watches against an API server fake that misbehaves the way
//! real servers and proxies do: a watch line that never ends costs bounded memory and is
//! retried; a 410 Gone at a watch's start relists (kube's watcher alone would retry the stale
//! resourceVersion for ever); a 410 on every watch relists with a growing delay, not once a
//! second.

use std::time::{Duration, Instant};

use probe_tests::*;

const NODE: &str = "node-w";

fn service(name: &str, ip: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip]}
    })
}

fn start(fake: &KubeFake, dir: &TempDir) -> Probe {
    let kubeconfig = fake.kubeconfig(&dir.0);
    Probe::start_with_env(
        &["--node-name", NODE, "--conntrack", "false"],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    )
}

/// The agent's `kubernetes` status document.
fn kubernetes(probe: &Probe) -> Value {
    let doc: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    doc["kubernetes"].clone()
}

/// Waits (up to 60 s) until the status satisfies `ok`.
fn wait_status(probe: &Probe, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k = kubernetes(probe);
        if ok(&k) {
            return k;
        }
        assert!(Instant::now() < deadline, "{what}: {k:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_watch_line_that_never_ends_is_cut_and_retried() {
    if !require_root("k8s_watch::a_watch_line_that_never_ends_is_cut_and_retried") {
        return;
    }
    let dir = TempDir::new("k8s-endless");
    let fake = KubeFake::start();
    fake.apply("services", service("redis", "10.96.0.15"));
    // The first watch of Services streams 150 MiB without a newline.
    fake.endless_line("services", 150 << 20);
    let probe = start(&fake, &dir);
    let before = status_kib(probe.pid(), "VmHWM");
    let k = wait_status(&probe, "the endless line was not cut", |k| {
        k["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("watch event line of more than 4194304 bytes"))
    });
    assert_eq!(k["connected"], false, "{k:#}");
    // Retried after the backoff: a watch that works (the fake replays no history: the change
    // is made once the new watch is open), and what changes arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.watchers("services") == 0 {
        assert!(Instant::now() < deadline, "no new watch of Services");
        std::thread::sleep(Duration::from_millis(50));
    }
    fake.apply("services", service("web", "10.96.0.20"));
    wait_status(&probe, "the watch did not recover", |k| {
        k["services"] == 2 && k["connected"] == true
    });
    let grew = status_kib(probe.pid(), "VmHWM").saturating_sub(before) / 1024;
    assert!(
        grew < 32,
        "the agent's peak RSS grew by {grew} MiB on a 150 MiB line"
    );
    probe.stop();
}

#[test]
fn a_410_at_the_watchs_start_relists() {
    if !require_root("k8s_watch::a_410_at_the_watchs_start_relists") {
        return;
    }
    let dir = TempDir::new("k8s-gone-at-start");
    let fake = KubeFake::start();
    fake.apply("services", service("redis", "10.96.0.15"));
    // The first list of Services answers with a resourceVersion compaction already removed:
    // the watch from it is refused with HTTP 410.
    fake.stale_lists("services", 1);
    let probe = start(&fake, &dir);
    wait_status(&probe, "no 410 seen", |k| {
        k["last_error"].as_str().is_some_and(|e| e.contains("410"))
    });
    // A Service created after that is known: the agent listed again and watches.
    fake.apply("services", service("web", "10.96.0.20"));
    wait_status(&probe, "the agent did not relist after the 410", |k| {
        k["services"] == 2
    });
    assert_eq!(fake.lists("services"), 2, "{:#?}", fake.requests());
    probe.stop();
}

#[test]
fn a_410_on_every_watch_relists_with_a_growing_delay() {
    if !require_root("k8s_watch::a_410_on_every_watch_relists_with_a_growing_delay") {
        return;
    }
    let dir = TempDir::new("k8s-always-gone");
    let fake = KubeFake::start();
    fake.apply("services", service("redis", "10.96.0.15"));
    fake.always_gone("services");
    let probe = start(&fake, &dir);
    wait_status(&probe, "no 410 seen", |k| {
        k["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("too old resource version"))
    });
    let first = fake.lists("services");
    std::thread::sleep(Duration::from_secs(12));
    let relists = fake.lists("services") - first;
    // Waits of 1, 2, 4, 8 s (±10 %): at most 4 relists in 12 s (once a second: 12).
    assert!(
        (2..=4).contains(&relists),
        "{relists} relists in 12 s: {:#?}",
        fake.requests()
    );
    probe.stop();
}
