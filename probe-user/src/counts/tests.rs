use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use probe_common::{CountKey, CountValue, REASON_NONE, direction, kind};

use super::{CountMap, EventCounter, Limits, Owners};
use crate::{
    decode::SymbolTables,
    enrich::k8s::attrs::Owner,
    status::event_metrics::{EventMetrics, PodLabels, ResetLabels, StreamLabels},
};

#[derive(Clone, Default)]
struct FakeMap(Arc<Mutex<Vec<(CountKey, CountValue)>>>);

impl FakeMap {
    fn set(&self, key: CountKey, events: u64, bytes: u64) {
        let mut m = self.0.lock().unwrap();
        m.retain(|(k, _)| *k != key);
        m.push((key, CountValue { events, bytes }));
    }
    fn evict(&self, key: CountKey) {
        self.0.lock().unwrap().retain(|(k, _)| *k != key);
    }
}

impl CountMap for FakeMap {
    fn read_into(&self, out: &mut Vec<(CountKey, CountValue)>) {
        out.extend(self.0.lock().unwrap().iter().copied());
    }
}

/// cgroup id n belongs to pod "p{n}" of namespace "ns" (a Deployment's); 999 to a pod not
/// cached yet; others to no pod.
struct FakeOwners;

impl Owners for FakeOwners {
    fn owner(&mut self, cgroup_id: u64, _netns: u32, _now: Instant) -> Owner {
        match cgroup_id {
            999 => Owner::NotCached,
            1..=100_000 => Owner::Pod(pod(cgroup_id)),
            _ => Owner::None,
        }
    }
}

fn pod(n: u64) -> PodLabels {
    PodLabels {
        namespace: "ns".into(),
        pod: format!("p{n}"),
        container: "c".into(),
        workload_kind: "deployment".into(),
        workload: "web".into(),
    }
}

fn reset_key(cgroup_id: u64, dir: u16) -> CountKey {
    CountKey {
        cgroup_id,
        netns: 0,
        kind: kind::TCP_RESET,
        a: u32::from(dir),
        b: 2,
    }
}

fn tables() -> Arc<SymbolTables> {
    let mut t = SymbolTables::default();
    t.reset_reasons.insert(2, "NO_SOCKET".into());
    Arc::new(t)
}

fn counter(max_series: usize) -> (EventCounter, FakeMap, EventMetrics) {
    let map = FakeMap::default();
    let metrics = EventMetrics::default();
    let limits = Limits {
        max_series,
        idle: Duration::from_secs(3600),
    };
    let c = EventCounter::new(Box::new(map.clone()), tables(), metrics.clone(), limits);
    (c, map, metrics)
}

fn resets(m: &EventMetrics, pod_labels: PodLabels, dir: &'static str) -> u64 {
    m.tcp_resets
        .get(&ResetLabels {
            direction: dir,
            reason: "NO_SOCKET".into(),
            pod: pod_labels,
        })
        .map_or(0, |c| c.get().0)
}

#[test]
fn sweeps_add_exactly_what_the_kernel_counted_per_pod_and_direction() {
    let (mut c, map, m) = counter(100);
    let t = Instant::now();
    map.set(reset_key(1, direction::SENT), 41_230, 0);
    map.set(reset_key(2, direction::SENT), 1, 0);
    map.set(reset_key(2, direction::RECEIVED), 3, 0);
    c.sweep(&mut FakeOwners, t);
    map.set(reset_key(1, direction::SENT), 50_000, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(1));
    c.sweep(&mut FakeOwners, t + Duration::from_secs(2));
    assert_eq!(resets(&m, pod(1), "sent"), 50_000);
    assert_eq!(resets(&m, pod(2), "sent"), 1);
    assert_eq!(resets(&m, pod(2), "received"), 3);
    assert_eq!(m.series.get(), 3);
}

#[test]
fn a_key_evicted_and_counted_again_from_zero_adds_its_new_count() {
    let (mut c, map, m) = counter(100);
    let t = Instant::now();
    map.set(reset_key(1, direction::SENT), 10, 0);
    c.sweep(&mut FakeOwners, t);
    map.evict(reset_key(1, direction::SENT));
    c.sweep(&mut FakeOwners, t + Duration::from_secs(1));
    map.set(reset_key(1, direction::SENT), 4, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(2));
    assert_eq!(resets(&m, pod(1), "sent"), 14);
    // Recreated between two sweeps: a total below the counted one starts again from 0.
    map.set(reset_key(1, direction::SENT), 2, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(3));
    assert_eq!(resets(&m, pod(1), "sent"), 16);
}

#[test]
fn counts_of_a_pod_not_cached_wait_then_count_without_pod_labels() {
    let (mut c, map, m) = counter(100);
    let t = Instant::now();
    map.set(reset_key(999, direction::SENT), 5, 0);
    c.sweep(&mut FakeOwners, t);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(4));
    assert_eq!(resets(&m, PodLabels::default(), "sent"), 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(5));
    assert_eq!(resets(&m, PodLabels::default(), "sent"), 5);
    // Outside any pod: empty pod labels, counted at once.
    map.set(reset_key(200_000, direction::SENT), 2, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(6));
    assert_eq!(resets(&m, PodLabels::default(), "sent"), 7);
}

#[test]
fn beyond_the_cap_a_family_counts_in_its_overflow_series() {
    let (mut c, map, m) = counter(2);
    let t = Instant::now();
    for n in 1..=5 {
        map.set(reset_key(n, direction::SENT), n * 10, 0);
    }
    c.sweep(&mut FakeOwners, t);
    let overflow = PodLabels {
        pod: "_overflow".into(),
        ..PodLabels::default()
    };
    let own = (1..=5)
        .filter(|&n| resets(&m, pod(n), "sent") == n * 10)
        .count();
    assert_eq!(own, 2);
    let total: u64 = (1..=5).map(|n| resets(&m, pod(n), "sent")).sum::<u64>()
        + resets(&m, overflow.clone(), "sent");
    assert_eq!(total, 150);
    assert_eq!(m.series.get(), 2);
    let overflowed = m
        .series_overflow
        .get(&crate::status::event_metrics::MetricLabel {
            metric: "tcp_resets",
        })
        .unwrap()
        .get();
    assert_eq!(overflowed, resets(&m, overflow, "sent"));
}

#[test]
fn the_nodes_own_series_is_not_capped_by_a_storm_in_pods() {
    let (mut c, map, m) = counter(2);
    let t = Instant::now();
    for n in 1..=5 {
        map.set(reset_key(n, direction::SENT), 1, 0);
    }
    c.sweep(&mut FakeOwners, t);
    // After the cap is reached, a reset outside any pod still has its own series.
    map.set(reset_key(200_000, direction::SENT), 7, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(1));
    assert_eq!(resets(&m, PodLabels::default(), "sent"), 7);
    let overflow = PodLabels {
        pod: "_overflow".into(),
        ..PodLabels::default()
    };
    assert_eq!(resets(&m, overflow, "sent"), 3);
    assert_eq!(m.series.get(), 2);
}

#[test]
fn idle_series_are_removed_and_free_their_place() {
    let map = FakeMap::default();
    let m = EventMetrics::default();
    let limits = Limits {
        max_series: 1,
        idle: Duration::from_secs(60),
    };
    let mut c = EventCounter::new(Box::new(map.clone()), tables(), m.clone(), limits);
    let t = Instant::now();
    map.set(reset_key(1, direction::SENT), 1, 0);
    c.sweep(&mut FakeOwners, t);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(61));
    assert!(
        m.tcp_resets
            .get(&ResetLabels {
                direction: "sent",
                reason: "NO_SOCKET".into(),
                pod: pod(1),
            })
            .is_none()
    );
    assert_eq!(m.series.get(), 0);
    assert_eq!(m.series_expired.get(), 1);
    map.set(reset_key(2, direction::SENT), 3, 0);
    c.sweep(&mut FakeOwners, t + Duration::from_secs(62));
    assert_eq!(resets(&m, pod(2), "sent"), 3);
}

#[test]
fn wasm_output_counts_writes_and_bytes_per_stream() {
    let (mut c, map, m) = counter(100);
    let key = |fd| CountKey {
        cgroup_id: 7,
        netns: 0,
        kind: kind::WASM_WRITE_RESULT,
        a: fd,
        b: 0,
    };
    map.set(key(1), 3, 120);
    map.set(key(2), 1, 9);
    c.sweep(&mut FakeOwners, Instant::now());
    let labels = |stream| StreamLabels {
        stream,
        pod: pod(7),
    };
    assert_eq!(
        m.wasm_output_writes.get(&labels("stdout")).unwrap().get().0,
        3
    );
    assert_eq!(
        m.wasm_output_bytes.get(&labels("stdout")).unwrap().get().0,
        120
    );
    assert_eq!(
        m.wasm_output_bytes.get(&labels("stderr")).unwrap().get().0,
        9
    );
}

#[test]
fn families_are_named_and_labelled_as_documented_without_unbounded_labels() {
    let map = FakeMap::default();
    let state = crate::status::AgentState::new(serde_json::json!({}), Vec::new());
    let mut c = EventCounter::new(
        Box::new(map.clone()),
        tables(),
        state.metrics.event.clone(),
        Limits {
            max_series: 100,
            idle: Duration::from_secs(3600),
        },
    );
    map.set(reset_key(1, direction::SENT), 2, 0);
    map.set(
        CountKey {
            cgroup_id: 1,
            netns: 0,
            kind: kind::CORE_SIGNAL,
            a: 11,
            b: 1,
        },
        1,
        0,
    );
    map.set(
        CountKey {
            cgroup_id: 0,
            netns: 0,
            kind: kind::TCP_RESET,
            a: u32::from(direction::RECEIVED),
            b: REASON_NONE,
        },
        1,
        0,
    );
    map.set(
        CountKey {
            cgroup_id: 1,
            netns: 0,
            kind: kind::WASM_WRITE_RESULT,
            a: 2,
            b: 0,
        },
        1,
        6,
    );
    c.sweep(&mut FakeOwners, Instant::now());
    let text = state.metrics.encode();
    let pod = r#"namespace="ns",pod="p1",container="c",workload_kind="deployment",workload="web""#;
    let expected = [
        format!(r#"probe_tcp_resets_total{{direction="sent",reason="NO_SOCKET",{pod}}} 2"#),
        r#"probe_tcp_resets_total{direction="received",reason="unknown",namespace="",pod="",container="",workload_kind="",workload=""} 1"#.to_owned(),
        format!(r#"probe_core_signals_total{{signal="SIGSEGV",origin="kernel",{pod}}} 1"#),
        format!(r#"probe_wasm_output_writes_total{{stream="stderr",{pod}}} 1"#),
        format!(r#"probe_wasm_output_bytes_total{{stream="stderr",{pod}}} 6"#),
    ];
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    // No label of these families names a port, an address, a PID or a trace.
    for line in text.lines().filter(|l| {
        [
            "probe_tcp_resets",
            "probe_core_signals",
            "probe_wasm_output",
        ]
        .iter()
        .any(|f| l.starts_with(f))
    }) {
        for bad in ["port", "addr", "pid", "trace", "ip="] {
            assert!(!line.contains(bad), "{line}");
        }
    }
}

#[test]
fn records_count_in_the_families_the_agent_counts_itself() {
    use crate::model::samples;
    let (mut c, _, m) = counter(100);
    let now = Instant::now();
    for record in samples::all() {
        c.count_record(&record, now);
    }
    c.count_record(&samples::drop(), now);
    let pod = PodLabels {
        namespace: "payments".into(),
        pod: "redis-client-1".into(),
        container: String::new(),
        workload_kind: "deployment".into(),
        workload: "redis-client".into(),
    };
    use crate::status::event_metrics::{DropLabels, ExpiryLabels, FindingLabels, OutcomeLabels};
    let drops = m
        .packet_drops
        .get(&DropLabels {
            reason: "NETFILTER_DROP".into(),
            pod: pod.clone(),
        })
        .unwrap()
        .get()
        .0;
    assert_eq!(drops, 8, "each drop record adds its count");
    let findings = m
        .findings
        .get(&FindingLabels {
            finding: "conntrack_expiry_reset",
            pod: pod.clone(),
        })
        .unwrap()
        .get()
        .0;
    assert_eq!(findings, 1);
    let outcome = m
        .core_signal_outcomes
        .get(&OutcomeLabels {
            signal: "SIGSEGV".into(),
            outcome: "no_core",
            pod,
        })
        .map(|c| c.get().0);
    assert_eq!(outcome, Some(1));
    let expiries: u64 = [PodLabels::default()]
        .into_iter()
        .filter_map(|pod| {
            m.conntrack_expiries
                .get(&ExpiryLabels {
                    timeout_sysctl: "nf_conntrack_tcp_timeout_established".into(),
                    pod,
                })
                .map(|c| c.get().0)
        })
        .sum();
    assert_eq!(expiries, 1, "the sample expiry has no pod");
    // Resets, Wasm lines and loss records are not counted from records; the expiry's series
    // (no pod) is the node's own, not held against the cap.
    assert_eq!(m.series.get(), 3);
}

/// A reset record of pod p1 (as `FakeOwners` names cgroup 1) with its span chosen.
fn p1_reset(span: u64, time_unix_nano: u64) -> crate::model::Record {
    use crate::model::{K8sAttrs, OwnSpan, samples};
    let mut r = samples::reset();
    if let crate::model::Body::TcpReset(b) = &mut r.body {
        b.reason = Some("NO_SOCKET".into());
    }
    r.k8s = Some(Box::new(K8sAttrs {
        namespace: Some("ns".into()),
        pod_name: Some("p1".into()),
        container_name: Some("c".into()),
        workload: [("k8s.deployment.name", "web".to_owned())].into(),
        ..K8sAttrs::default()
    }));
    r.span = OwnSpan::from_random(span).unwrap();
    r.time_unix_nano = time_unix_nano;
    r
}

/// A counter whose families are the agent's (`/metrics`), for what the exposition shows.
fn exposed() -> (crate::status::AgentState, EventCounter, FakeMap) {
    let state = crate::status::AgentState::new(serde_json::json!({}), Vec::new());
    let map = FakeMap::default();
    let limits = Limits {
        max_series: 100,
        idle: Duration::from_secs(3600),
    };
    let m = state.metrics.event.clone();
    let c = EventCounter::new(Box::new(map.clone()), tables(), m, limits);
    (state, c, map)
}

/// Pod p1's sent resets with `total`, as `/metrics` shows them before any exemplar.
fn p1_sent(total: u64) -> String {
    format!(
        r#"probe_tcp_resets_total{{direction="sent",reason="NO_SOCKET",namespace="ns",pod="p1",container="c",workload_kind="deployment",workload="web"}} {total}"#
    )
}

/// The `/metrics` line of pod p1's sent resets with `total` (exemplar included).
fn p1_sent_line(state: &crate::status::AgentState, total: u64) -> String {
    let text = state.metrics.encode();
    let prefix = p1_sent(total);
    let line = text.lines().find(|l| l.starts_with(&prefix));
    line.unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
        .to_owned()
}

#[test]
fn a_series_exemplar_is_the_span_of_its_latest_full_record_and_stays() {
    let (state, mut c, map) = exposed();
    let now = Instant::now();
    c.count_record(&p1_reset(0xa1, 1_000), now);
    let latest = p1_reset(0xa2, 2_000);
    c.count_record(&latest, now);
    map.set(reset_key(1, direction::SENT), 5, 0);
    c.sweep(&mut FakeOwners, now);
    let (trace_id, span_id) = latest.span_ids().unwrap();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(&span_id), "00000000000000a2");
    let exemplar = format!(
        r#" # {{trace_id="{}",span_id="00000000000000a2"}}"#,
        hex(&trace_id)
    );
    let line = |total: u64| p1_sent_line(&state, total);
    assert!(line(5).contains(&exemplar), "{}", line(5));
    let shown = |l: String| l.split_once(" # ").map(|(_, e)| e.to_owned());
    let first = shown(line(5));
    // Folded resets (no record) add to the count; the exemplar stays the last full one's,
    // value and time unchanged (Prometheus takes a changed one at the same time for out of
    // order and drops it).
    map.set(reset_key(1, direction::SENT), 9, 0);
    c.sweep(&mut FakeOwners, now);
    assert!(line(9).contains(&exemplar), "{}", line(9));
    assert_eq!(shown(line(9)), first);
}

/// A record that arrives after the sweep that counted its event (one reset, read late) still
/// becomes its series' exemplar.
#[test]
fn a_record_after_its_count_is_still_the_exemplar() {
    let (state, mut c, map) = exposed();
    let now = Instant::now();
    map.set(reset_key(1, direction::SENT), 1, 0);
    c.sweep(&mut FakeOwners, now);
    let line = || p1_sent_line(&state, 1);
    assert_eq!(line(), p1_sent(1), "counted, no record yet: no exemplar");
    c.count_record(&p1_reset(0xb7, 1_000), now);
    c.sweep(&mut FakeOwners, now);
    assert!(
        line().contains(r#"span_id="00000000000000b7""#),
        "{}",
        line()
    );
}

#[test]
fn a_record_over_the_otlp_budget_is_never_an_exemplar() {
    let (mut c, map, m) = counter(100);
    let now = Instant::now();
    let mut r = p1_reset(0xa1, 1_000);
    r.span = crate::model::OwnSpan::OVER_BUDGET;
    c.count_record(&r, now);
    map.set(reset_key(1, direction::SENT), 1, 0);
    c.sweep(&mut FakeOwners, now);
    let labels = ResetLabels {
        direction: "sent",
        reason: "NO_SOCKET".into(),
        pod: pod(1),
    };
    let counter = m.tcp_resets.get(&labels).unwrap();
    let (value, exemplar) = counter.get();
    assert_eq!(value, 1);
    assert!(exemplar.is_none());
}

/// Connect failures count by outcome and error (the errno the socket ended with, `none` when
/// the application closed it first), per pod.
#[test]
fn connect_failures_count_by_outcome_and_error() {
    use crate::status::event_metrics::ConnectLabels;
    let (mut c, map, m) = counter(100);
    let key = |cgroup_id, error| CountKey {
        cgroup_id,
        netns: 0,
        kind: kind::CONNECT_FAILURE,
        a: error,
        b: 0,
    };
    map.set(key(1, libc::ETIMEDOUT as u32), 3, 0);
    map.set(key(1, 0), 2, 0);
    map.set(key(2, libc::EHOSTUNREACH as u32), 1, 0);
    c.sweep(&mut FakeOwners, Instant::now());
    let count = |n, outcome, error: &str| {
        m.tcp_connect_failures
            .get(&ConnectLabels {
                outcome,
                error: error.into(),
                pod: pod(n),
            })
            .map_or(0, |c| c.get().0)
    };
    assert_eq!(count(1, "timed_out", "ETIMEDOUT"), 3);
    assert_eq!(count(1, "timed_out", "none"), 2);
    assert_eq!(count(2, "unreachable", "EHOSTUNREACH"), 1);
    assert_eq!(m.series.get(), 3);
}

/// Retransmits are counted only (no record): by the socket's TCP state, per pod; a state
/// without a name is `unknown`, the family is on /metrics with its help.
#[test]
fn retransmits_count_by_tcp_state_per_pod() {
    use probe_common::COUNTED_TCP_RETRANSMIT;

    use crate::status::event_metrics::RetransmitLabels;
    let map = FakeMap::default();
    let state = crate::status::AgentState::new(serde_json::json!({}), Vec::new());
    let mut t = SymbolTables::default();
    t.tcp_states.insert(1, "ESTABLISHED".into());
    t.tcp_states.insert(2, "SYN_SENT".into());
    let mut c = EventCounter::new(
        Box::new(map.clone()),
        Arc::new(t),
        state.metrics.event.clone(),
        Limits {
            max_series: 100,
            idle: Duration::from_secs(3600),
        },
    );
    let key = |cgroup_id, tcp_state| CountKey {
        cgroup_id,
        netns: 0,
        kind: COUNTED_TCP_RETRANSMIT,
        a: tcp_state,
        b: 0,
    };
    map.set(key(1, 1), 40, 0);
    map.set(key(1, 2), 3, 0);
    map.set(key(2, 1), 7, 0);
    map.set(key(0, 99), 1, 0);
    c.sweep(&mut FakeOwners, Instant::now());
    let count = |pod_labels, tcp_state: &str| {
        state
            .metrics
            .event
            .tcp_retransmits
            .get(&RetransmitLabels {
                state: tcp_state.into(),
                pod: pod_labels,
            })
            .map_or(0, |c| c.get().0)
    };
    assert_eq!(count(pod(1), "ESTABLISHED"), 40);
    assert_eq!(count(pod(1), "SYN_SENT"), 3);
    assert_eq!(count(pod(2), "ESTABLISHED"), 7);
    assert_eq!(count(PodLabels::default(), "unknown"), 1);
    // A second sweep adds only what the kernel counted since.
    map.set(key(1, 1), 45, 0);
    c.sweep(&mut FakeOwners, Instant::now());
    assert_eq!(count(pod(1), "ESTABLISHED"), 45);
    let text = state.metrics.encode();
    assert!(
        text.contains("# HELP probe_tcp_retransmits TCP segments sent again"),
        "{text}"
    );
    let pod1 = r#"namespace="ns",pod="p1",container="c",workload_kind="deployment",workload="web""#;
    let line = format!(r#"probe_tcp_retransmits_total{{state="ESTABLISHED",{pod1}}} 45"#);
    assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
}
