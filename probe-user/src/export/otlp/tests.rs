//! The exporter's span names and attributes, and the dashboard's queries against them.

use std::collections::BTreeSet;

use opentelemetry::InstrumentationScope;
use serde_json::{Value, json};

use super::convert::{attributes, span_name, spans};
use crate::{
    enrich::k8s::attrs::K8sAttrs,
    model::{Body, Finding, Record},
};

/// One record of every kind that becomes a span, in its JSON form (README contract).
fn samples() -> Vec<Value> {
    let k8s = json!({"k8s.namespace.name": "payments", "k8s.pod.name": "redis-client-1",
        "k8s.deployment.name": "redis-client", "k8s.node.name": "node-3",
        "k8s.pod.labels": {"app": "redis-client"}});
    let mut out = vec![
        json!({"kind": "tcp_reset", "node": "node-3", "pid": 7, "comm": "redis-cli", "netns": 1,
            "cgroup_id": 2, "direction": "sent", "family": "ipv4", "saddr": "10.0.0.1",
            "sport": 5000, "daddr": "10.96.0.15", "dport": 6379, "tcp_state": "CLOSE",
            "reason": "TCP_ABORT_ON_LINGER", "socket_cookie": 9}),
        json!({"kind": "core_signal", "node": "node-3", "pid": 7, "signal": 11,
            "signal_name": "SIGSEGV", "core_dumped": false, "core_suppressed_by": "rlimit_core=0"}),
        json!({"kind": "conntrack_expiry", "node": "node-3", "orig_saddr": "10.0.0.1",
            "orig_sport": 5000, "orig_daddr": "10.96.0.15", "orig_dport": 6379,
            "reply_saddr": "10.0.2.2", "reply_sport": 6379, "timeout_s": 3}),
        json!({"kind": "packet_drop", "node": "node-3", "family": "ipv4", "saddr": "10.0.0.1",
            "sport": 5000, "daddr": "10.96.0.15", "dport": 6379, "reason": "NETFILTER_DROP", "count": 4}),
        json!({"kind": "wasm_output", "node": "node-3", "stream": "stdout", "runtime": "wasmtime",
            "text": "hi"}),
        json!({"kind": "finding", "node": "node-3", "finding": "conntrack_expiry_reset",
            "timeout_s": 3, "saddr": "10.0.0.1", "sport": 5000, "daddr": "10.96.0.15", "dport": 6379}),
    ];
    for r in &mut out {
        for (k, v) in k8s.as_object().unwrap() {
            r[k] = v.clone();
        }
    }
    out
}

fn emitted() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut attrs = BTreeSet::new();
    for r in samples() {
        match span_name(&r) {
            Some(n) => names.insert(n.to_owned()),
            None => names.insert(format!("finding.{}", r["finding"].as_str().unwrap())),
        };
        for kv in attributes(&r) {
            attrs.insert(format!("span.{}", kv.key));
        }
    }
    let resource = super::resource("node-probe", "node-3", Some("prod"), &[]);
    for (k, _) in resource.iter() {
        attrs.insert(format!("resource.{k}"));
    }
    (names, attrs)
}

/// `span.x.y` / `resource.x.y` identifiers and `name = "..."` / `name =~ "..."` values of a
/// TraceQL query.
fn query_terms(q: &str) -> (Vec<String>, Vec<String>) {
    let mut idents = Vec::new();
    for prefix in ["span.", "resource."] {
        let mut rest = q;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(tail.len());
            idents.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    let mut names = Vec::new();
    let mut rest = q;
    while let Some(i) = rest.find("name =") {
        let tail = &rest[i..];
        // `service.name = ...` is an attribute, not the span name.
        if rest[..i].ends_with('.') {
            rest = &tail[6..];
            continue;
        }
        let open = tail.find('"').unwrap() + 1;
        let close = open + tail[open..].find('"').unwrap();
        names.push(tail[open..close].to_owned());
        rest = &tail[close..];
    }
    (idents, names)
}

#[test]
fn every_name_and_attribute_the_dashboard_queries_is_emitted() {
    let dashboard: Value = serde_json::from_str(include_str!(
        "../../../../deploy/grafana/dashboards/node-probe.json"
    ))
    .unwrap();
    let (names, attrs) = emitted();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let q = target["query"].as_str().unwrap();
            let (idents, span_names) = query_terms(q);
            for ident in idents {
                assert!(
                    attrs.contains(&ident),
                    "{ident} (panel {:?}) is not emitted; emitted: {attrs:#?}",
                    panel["title"]
                );
                checked += 1;
            }
            for n in span_names {
                let hit = match n.strip_suffix(".*") {
                    Some(prefix) => names.iter().any(|e| e.starts_with(prefix)),
                    None => names.contains(&n),
                };
                assert!(
                    hit,
                    "span name {n:?} (panel {:?}) is not emitted: {names:?}",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 20,
        "the dashboard queries almost nothing ({checked})"
    );
}

#[test]
fn a_finding_is_a_parent_span_with_its_evidence_as_children() {
    let evidence = samples()
        .into_iter()
        .filter(|r| r["kind"] == "conntrack_expiry" || r["kind"] == "tcp_reset")
        .map(|mut r| {
            r["time_unix_nano"] = json!(1_000_000_000u64);
            r
        })
        .collect();
    let record = Record {
        time_unix_nano: 2_000_000_000,
        kind: "finding",
        node: "node-3".into(),
        common: crate::decode::Common::none(),
        body: Body::Finding(Finding {
            finding: "conntrack_expiry_reset",
            summary: "the cause".into(),
            evidence,
            netns_path: None,
            saddr: None,
            sport: None,
            daddr: None,
            dport: None,
            backend_addr: None,
            backend_port: None,
            timeout_s: Some(3),
            timeout_sysctl: None,
            established_for_s: None,
        }),
        k8s: Some(Box::new(K8sAttrs::default())),
        trace: None,
    };
    let out = spans(&record, &InstrumentationScope::builder("t").build());
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].name, "finding.conntrack_expiry_reset");
    let trace = out[0].span_context.trace_id();
    let parent = out[0].span_context.span_id();
    let children: Vec<&str> = out[1..].iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(children, ["tcp.reset.sent", "conntrack.expiry"]);
    for child in &out[1..] {
        assert_eq!(child.span_context.trace_id(), trace);
        assert_eq!(child.parent_span_id, parent);
        assert_eq!(
            child.start_time,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)
        );
    }
    let layers: Vec<String> = out[1..]
        .iter()
        .map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "isolation.layer")
                .unwrap()
                .value
                .to_string()
        })
        .collect();
    assert_eq!(layers, ["kernel.tcp", "kernel.netfilter"]);
}
