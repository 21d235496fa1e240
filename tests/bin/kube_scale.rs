//! The API server fake (harness/kube_fake.rs) filled for `cargo xtask bench`: `kube_scale
//! SERVICES SLICES DIR` serves SERVICES Services and SLICES EndpointSlices (three endpoints
//! each, spread over the Services), writes a kubeconfig into DIR and prints
//! `{"kubeconfig": PATH}`. Then each line `update N RATE` on stdin changes N EndpointSlices
//! (one endpoint's address each) at RATE per second and prints `{"updated": N}`.

use std::io::{BufRead as _, Write as _};

use probe_tests::KubeFake;
use serde_json::json;

fn ip(i: usize, salt: usize) -> String {
    let n = i * 4 + salt;
    format!(
        "10.{}.{}.{}",
        100 + (n >> 16) % 100,
        (n >> 8) & 255,
        n & 255
    )
}

fn slice(i: usize, services: usize, generation: usize) -> serde_json::Value {
    let svc = format!("svc-{}", i % services);
    let endpoints: Vec<serde_json::Value> = (0..3)
        .map(|e| {
            let addr = if e == 0 { ip(i, 3 + generation % 2) } else { ip(i, e) };
            json!({"addresses": [addr], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": format!("{svc}-pod-{e}"), "namespace": "bench"}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-{i}"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "endpoints": endpoints})
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (services, slices): (usize, usize) = (
        args[1].parse().expect("SERVICES"),
        args[2].parse().expect("SLICES"),
    );
    let dir = std::path::PathBuf::from(&args[3]);
    let fake = KubeFake::start();
    fake.extend(
        "services",
        (0..services)
            .map(|i| {
                json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc-{i}"), "namespace": "bench",
                                "labels": {"app": format!("svc-{i}")}},
                   "spec": {"clusterIP": format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255),
                            "clusterIPs": [format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255)],
                            "ports": [{"port": 80, "protocol": "TCP"}]}})
            })
            .collect(),
    );
    fake.extend(
        "endpointslices",
        (0..slices).map(|i| slice(i, services, 0)).collect(),
    );
    let kubeconfig = fake.kubeconfig(&dir);
    println!("{}", json!({"kubeconfig": kubeconfig}));
    let mut generation = 0;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["update", n, rate] = words.as_slice() {
            let (n, rate): (usize, u32) = (n.parse().expect("N"), rate.parse().expect("RATE"));
            let interval = std::time::Duration::from_secs(1) / rate.max(1);
            let start = std::time::Instant::now();
            for k in 0..n {
                if let Some(wait) =
                    (start + interval * k as u32).checked_duration_since(std::time::Instant::now())
                {
                    std::thread::sleep(wait);
                }
                generation += 1;
                fake.apply(
                    "endpointslices",
                    slice(k * 7919 % slices, services, generation),
                );
            }
            println!("{}", json!({"updated": n}));
            let _ = std::io::stdout().flush();
        }
    }
}
