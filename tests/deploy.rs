//! The manifests in deploy/ against what the real binary says it needs
//! (`probe --print-requirements`): host paths mounted, API resources granted (no more, no
//! less), capabilities of the least-privilege variant, probes on the real endpoints, and a
//! ConfigMap the binary accepts. No root needed.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use probe_tests::*;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document under deploy/, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![deploy_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                for doc in serde_norway::Deserializer::from_str(&text) {
                    let value: Value = serde::Deserialize::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    out.push((path.clone(), value));
                }
            }
        }
    }
    out
}

fn find<'a>(docs: &'a [(PathBuf, Value)], file: &str, kind: &str) -> &'a Value {
    docs.iter()
        .find(|(p, v)| p.ends_with(file) && v["kind"] == kind)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {kind} in {file}"))
}

fn requirements() -> Value {
    let out = run_probe(&["--print-requirements"]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn kustomizations_reference_existing_files() {
    let docs = documents();
    for (path, doc) in docs.iter().filter(|(_, d)| d["kind"] == "Kustomization") {
        let dir = path.parent().unwrap();
        for r in doc["resources"].as_array().unwrap() {
            let target = dir.join(r.as_str().unwrap());
            assert!(
                target.exists(),
                "{}: {} is missing",
                path.display(),
                target.display()
            );
        }
        for p in doc["patches"].as_array().into_iter().flatten() {
            assert!(dir.join(p["path"].as_str().unwrap()).is_file());
        }
    }
    match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(out) if out.status.success() => {
            for dir in [deploy_dir(), deploy_dir().join("least-privilege")] {
                let out = Command::new("kubectl")
                    .arg("kustomize")
                    .arg(&dir)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        _ => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"\n!!!!! deploy: kubectl is not installed: `kubectl kustomize deploy` not run (the references were checked) !!!!!\n",
            );
        }
    }
}

#[test]
fn daemonset_mounts_every_host_path_the_agent_reads() {
    let docs = documents();
    let req = requirements();
    let ds = find(&docs, "base/daemonset.yaml", "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], req["host_pid"]);
    assert_eq!(pod["hostNetwork"], req["host_network"]);
    let container = &pod["containers"][0];
    for path in strings(&req["host_paths"]) {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["hostPath"]["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"));
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == volume["name"] && m["mountPath"] == path.as_str()),
            "{path} is not mounted at the same path in the container"
        );
    }
    let node_name = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/health/live"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/health/ready"
    );
    assert_eq!(container["ports"][0]["name"], "metrics");
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();

    // The ConfigMap is valid for the real binary, and listens where the probes look.
    let cm = find(&docs, "base/configmap.yaml", "ConfigMap");
    let toml_text = cm["data"]["probe.toml"].as_str().unwrap();
    let dir = TempDir::new("configmap");
    let file = dir.0.join("probe.toml");
    std::fs::write(&file, toml_text).unwrap();
    let config = print_config(&file, &[]);
    // Dual-stack: kubelet probes on IPv4 and IPv6 nodes.
    assert_eq!(config["http-addr"], format!("[::]:{port}"));
    // No host path the agent does not read.
    let allowed: BTreeSet<String> = strings(&req["host_paths"])
        .union(&strings(&req["optional_host_paths"]))
        .cloned()
        .collect();
    for v in pod["volumes"].as_array().unwrap() {
        if let Some(path) = v["hostPath"]["path"].as_str() {
            assert!(
                allowed.contains(path),
                "hostPath {path} is mounted but never read"
            );
        }
    }
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    let env_config = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PROBE_CONFIG")
        .unwrap();
    assert_eq!(
        env_config["value"],
        format!("{}/probe.toml", mount["mountPath"].as_str().unwrap())
    );

    let svc = find(&docs, "base/service.yaml", "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_reads() {
    let docs = documents();
    let role = find(&docs, "base/clusterrole.yaml", "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for verb in strings(&rule["verbs"]) {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "verb {verb}"
            );
        }
        granted.extend(strings(&rule["resources"]));
    }
    assert_eq!(granted, strings(&requirements()["api_resources"]));
    let binding = find(&docs, "base/clusterrolebinding.yaml", "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let ds = find(&docs, "base/daemonset.yaml", "DaemonSet");
    assert_eq!(
        binding["subjects"][0]["name"],
        ds["spec"]["template"]["spec"]["serviceAccountName"]
    );
}

#[test]
fn least_privilege_variant_has_the_capabilities_and_is_not_privileged() {
    let docs = documents();
    let patch = find(&docs, "least-privilege/capabilities.yaml", "DaemonSet");
    let sc = &patch["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // Exactly what the agent says it needs, each with its use.
    let req = requirements();
    let added = strings(&sc["capabilities"]["add"]);
    assert_eq!(added, strings(&req["capabilities"]));
    for cap in &added {
        assert!(
            req["capability_uses"][cap].is_string(),
            "{cap} has no stated use"
        );
    }
    let troubleshooting = std::fs::read_to_string(deploy_dir().join("TROUBLESHOOTING.md")).unwrap();
    for cap in &added {
        assert!(
            troubleshooting.contains(&format!("`CAP_{cap}`")),
            "TROUBLESHOOTING.md does not say what CAP_{cap} is for"
        );
    }
}

#[test]
fn prometheus_scrapes_the_daemonsets_metrics_port() {
    let docs = documents();
    let ds = find(&docs, "base/daemonset.yaml", "DaemonSet");
    let pod = &ds["spec"]["template"];
    let pm = find(&docs, "prometheus/podmonitor.yaml", "PodMonitor");
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod["metadata"]["labels"][k], *v, "PodMonitor selects {k}");
    }
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let ports = &pod["spec"]["containers"][0]["ports"];
    let named = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .unwrap_or_else(|| panic!("no container port named {port}"));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        named["containerPort"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
}
