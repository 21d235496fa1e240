//! Root e2e: the event metrics as a real Prometheus sees them. Two pods that a real containerd
//! runs (CRI, as the kubelet asks for them), described by the kube fake: one storms (refused
//! connects on its own loopback for 3 s, as fast as it goes, counting them), the other makes a
//! single refused connect during the storm and crashes. Debian's Prometheus scrapes the agent every second with exemplar storage
//! on: the resets per pod are exact, an exemplar's trace is a span the OTLP receiver got, the
//! quiet pod's reset arrives in full (JSON and OTLP) though the storm is folded, `promtool`
//! accepts `/metrics`, and every Prometheus query of the shipped dashboard parses and returns
//! data (the quiet pod also writes a Wasm line, and a conntrack entry of its namespace expires
//! before a reset on its flow: an expiry, a drop or two and a finding).

use std::time::{Duration, Instant};

use probe_tests::{
    containerd::{Containerd, IMAGE},
    cri,
    prometheus::{Prometheus, dashboard_queries, promtool, repo_file},
    *,
};

const NODE: &str = "node-prom";
const NAMESPACE: &str = "shop";
const STORM_POD: &str = "cart-api-7d4f9c-storm";
const QUIET_POD: &str = "checkout-6b8d5f-quiet";
/// How long the storming pod refuses connects (each is two resets: the pod's kernel sends
/// one, its socket receives it).
const STORM_MS: u64 = 3000;
/// Below the ephemeral range: a client port never equals them (no self-connect).
const STORM_PORT: u16 = 7120;
const QUIET_PORT: u16 = 7121;
const WAIT: Duration = Duration::from_secs(60);
const WASM_LINE: &str = "served from a wasm container";

struct Pod {
    name: &'static str,
    uid: String,
    ip: String,
    netns: String,
    /// (container name, its ID).
    containers: Vec<(&'static str, String)>,
}

fn run_pod(
    ctd: &mut Containerd,
    name: &'static str,
    n: u8,
    specs: &[(&'static str, Vec<String>)],
    extra_mounts: &[cri::Mount],
) -> Pod {
    let uid = format!("{:08x}-{n:04x}-4b6a-9c2f-5e8d3a1b0c4f", std::process::id());
    let config = cri::pod_sandbox(name, NAMESPACE, &uid, name, &ctd.dir.join("pods"));
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let sandbox = ctd.run_pod(&config);
    let mut mounts = vec![
        cri::mount(std::path::Path::new("/usr"), "/usr"),
        cri::mount(
            std::path::Path::new(env!("CARGO_BIN_EXE_crasher")),
            "/probe/crasher",
        ),
    ];
    mounts.extend_from_slice(extra_mounts);
    let containers = specs
        .iter()
        .map(|(cname, cmd)| {
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let id = ctd.create(
                &sandbox,
                &config,
                cri::container(cname, IMAGE, &cmd, &mounts),
            );
            (*cname, id)
        })
        .collect();
    Pod {
        name,
        uid,
        ip: ctd.pod_ip(&sandbox),
        netns: ctd.pod_netns(&sandbox, &config),
        containers,
    }
}

impl Pod {
    fn id(&self, container: &str) -> &str {
        &self
            .containers
            .iter()
            .find(|(n, _)| *n == container)
            .unwrap()
            .1
    }

    /// The API server's view: a Deployment's pod (through its ReplicaSet).
    fn describe(&self) -> Value {
        let rs = self.name.rsplit_once('-').unwrap().0;
        let deployment = rs.rsplit_once('-').unwrap().0;
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, id)| {
                serde_json::json!({"name": name, "containerID": format!("containerd://{id}"),
                    "image": IMAGE, "imageID": "", "ready": true, "restartCount": 0})
            })
            .collect();
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "uid": self.uid,
                "labels": {"app": deployment},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": rs, "uid": format!("rs-{}", self.uid), "controller": true}]},
            "spec": {"nodeName": NODE, "containers": self.containers.iter()
                .map(|(name, _)| serde_json::json!({"name": name, "image": IMAGE}))
                .collect::<Vec<_>>()},
            "status": {"podIP": self.ip, "podIPs": [{"ip": self.ip}],
                "containerStatuses": statuses}
        })
    }
}

fn crasher(args: &[&str]) -> Vec<String> {
    std::iter::once("/probe/crasher")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

#[test]
fn prometheus_sees_exact_resets_per_pod_with_exemplars_of_exported_spans() {
    if !require_root(
        "prometheus::prometheus_sees_exact_resets_per_pod_with_exemplars_of_exported_spans",
    ) {
        return;
    }
    let started = Instant::now();
    let mut ctd = Containerd::start("prom");
    let storm_to = format!("127.0.0.1:{STORM_PORT}");
    let quiet_to = format!("127.0.0.1:{QUIET_PORT}");
    let storm = run_pod(
        &mut ctd,
        STORM_POD,
        1,
        &[(
            "storm",
            crasher(&["refuse-for", &STORM_MS.to_string(), &storm_to]),
        )],
        &[],
    );
    let programs = TempDir::new("prom-programs");
    let wat = programs.0.join("hello.wat");
    std::fs::write(
        &wat,
        wat_writer(&[(1, format!("{WASM_LINE}\n").into_bytes())]),
    )
    .unwrap();
    let quiet = run_pod(
        &mut ctd,
        QUIET_POD,
        2,
        &[
            ("once", crasher(&["refuse", "1", &quiet_to])),
            ("crash", crasher(&["segv"])),
            (
                "wasm",
                ["/probe/wasmtime", "run", "/probe/hello.wat"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ],
        &[
            cri::mount(&wasmtime_bin(), "/probe/wasmtime"),
            cri::mount(&wat, "/probe/hello.wat"),
        ],
    );
    let fake = KubeFake::start();
    fake.apply("pods", storm.describe());
    fake.apply("pods", quiet.describe());
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let kubeconfig = fake.kubeconfig(&ctd.dir);
    let endpoint = format!("http://{}", receiver.grpc);
    let mut probe = Probe::start_with_env(
        &[
            "--node-name",
            NODE,
            "--conntrack",
            "false",
            "--conntrack-settings-interval",
            "500ms",
            "--output",
            "json,otlp",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-batch-delay",
            "100ms",
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let agent = probe.http_addr();
    wait_synced(agent, 2, WAIT);
    let prometheus = Prometheus::start(agent, NODE);

    // The storm, and the quiet pod's single reset while it runs.
    ctd.start_container(storm.id("storm"));
    std::thread::sleep(Duration::from_millis(300));
    ctd.start_container(quiet.id("once"));
    let mut outputs = Vec::new();
    for (pod, name) in [(&storm, "storm"), (&quiet, "once")] {
        let status = ctd.wait_exited(pod.id(name), WAIT);
        let output = std::fs::read_to_string(&status.log_path).unwrap_or_default();
        assert_eq!(status.exit_code, 0, "{name}: {status:?}: {output}");
        outputs.push(output);
    }
    // The CRI log line `<time> stdout F refused N`.
    let refused: u64 = outputs[0]
        .lines()
        .find_map(|l| l.split("refused ").nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the storm's count: {:?}", outputs[0]));
    assert!(refused > 100, "a storm of {refused} connects");
    eprintln!("prometheus: the storming pod made {refused} refused connects");
    ctd.start_container(quiet.id("crash"));
    assert_eq!(ctd.wait_exited(quiet.id("crash"), WAIT).exit_code, 128 + 11);
    // The agent's own counts per pod first (exact), then Prometheus' view of them. (Other
    // resets on the node, e.g. of connections the test's own clients drop, count without
    // pod labels.)
    for (pod, want) in [(STORM_POD, 2 * refused), (QUIET_POD, 2)] {
        let label = format!("pod=\"{pod}\"");
        assert_eq!(
            wait_metric(agent, "probe_tcp_resets_total", &[&label], want),
            want,
            "{pod}"
        );
    }
    let by_pod = wait_query(
        &prometheus,
        &format!(
            r#"sum by (namespace, pod) (probe_tcp_resets_total{{node="{NODE}",namespace="{NAMESPACE}"}})"#
        ),
        |r| {
            r.len() == 2
                && value_of(r, STORM_POD) == Some((2 * refused) as f64)
                && value_of(r, QUIET_POD) == Some(2.0)
        },
    );
    for series in &by_pod {
        assert_eq!(series["metric"]["namespace"], NAMESPACE, "{by_pod:#?}");
    }

    // The quiet pod's reset in full, both directions, in JSON and OTLP.
    let on_port = |r: &Value, port: u16| {
        r["kind"] == "tcp_reset" && (r["sport"] == port || r["dport"] == port)
    };
    for dir in ["sent", "received"] {
        let r = probe
            .wait_for(WAIT, |r| on_port(r, QUIET_PORT) && r["direction"] == dir)
            .unwrap_or_else(|| panic!("the quiet pod's {dir} reset is not in the JSON output"));
        assert_eq!(r["k8s.pod.name"], QUIET_POD, "{r:#}");
    }
    for name in ["tcp.reset.sent", "tcp.reset.received"] {
        receiver.wait_for(&format!("the quiet pod's {name} span"), |s| {
            s["name"] == name
                && (s["attributes"]["network.local.port"] == QUIET_PORT
                    || s["attributes"]["network.peer.port"] == QUIET_PORT)
        });
    }

    // Each pod's series carries an exemplar naming a span the receiver got.
    for pod in [STORM_POD, QUIET_POD] {
        let exemplar = wait_exemplar(&prometheus, pod, started.elapsed());
        let (trace_id, span_id) = (
            exemplar["labels"]["trace_id"].as_str().unwrap().to_owned(),
            exemplar["labels"]["span_id"].as_str().unwrap().to_owned(),
        );
        let span = receiver.wait_for(&format!("the span of {pod}'s exemplar"), |s| {
            s["signal"] == "span" && s["trace_id"] == trace_id && s["span_id"] == span_id
        });
        assert!(
            span["name"].as_str().unwrap().starts_with("tcp.reset."),
            "{span:#}"
        );
        assert_eq!(span["attributes"]["k8s.pod.name"], pod, "{span:#}");
    }

    // A Wasm line (the write hooks kept open, as in cri_pods), and a conntrack entry of the
    // quiet pod that expires, then a reset on its flow: an expiry and a finding.
    let warm = WarmRuntime::start(&probe);
    ctd.start_container(quiet.id("wasm"));
    assert_eq!(ctd.wait_exited(quiet.id("wasm"), WAIT).exit_code, 0);
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "wasm_output" && r["text"] == WASM_LINE
        })
        .expect("the Wasm line");
    drop(warm);
    let label = format!("pod {NAMESPACE}/{QUIET_POD}");
    let (_, _client, server) =
        expire_in_the_pods_conntrack(&mut probe, &quiet.netns, &quiet.ip, &label);
    let server = socket2::Socket::from(server);
    server.set_linger(Some(Duration::ZERO)).unwrap();
    drop(server);
    probe
        .wait_for(WAIT, |r| r["kind"] == "finding")
        .expect("a finding of the expiry and the reset");

    // The exposition passes promtool's lint. (The shipped scrape config is not checked here:
    // Debian builds Prometheus without Kubernetes service discovery, which it uses.)
    promtool(&["check", "metrics"], &http_get(agent, "/metrics").2);

    // Every Prometheus query of the shipped dashboard parses and returns data: this test made
    // an event of each family they read.
    let queries = dashboard_queries(&repo_file("deploy/grafana/dashboards/node-probe.json"));
    assert!(queries.len() >= 6, "{queries:?}");
    for (title, expr) in &queries {
        let result = wait_query(&prometheus, expr, |r| !r.is_empty());
        eprintln!("prometheus: {title}: {} series", result.len());
    }
    drop(prometheus);
    let _ = probe.stop();
}

fn value_of(result: &[Value], pod: &str) -> Option<f64> {
    result
        .iter()
        .find(|s| s["metric"]["pod"] == pod)
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// Queries until `done` holds (scrapes come every second); the last result either way.
fn wait_query(p: &Prometheus, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = p.query(promql);
        if done(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: {result:#?}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_exemplar(p: &Prometheus, pod: &str, since: Duration) -> Value {
    let selector = format!(r#"probe_tcp_resets_total{{pod="{pod}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = p.exemplars(&selector, since + Duration::from_secs(60));
        if let Some(e) = found
            .iter()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .last()
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no exemplar for {selector}: {found:#?}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
