use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    decode::connect::Outcome,
    enrich::k8s::index::{service_entry, slice_entry},
    model::{Family, Other, samples},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A connect from 10.0.0.1:`sport` to 10.96.0.15:6379 that ended with `outcome`.
fn connect(sport: u16, outcome: Outcome, syns: u32) -> Record {
    let mut r = samples::reset();
    r.body = Body::Other(Other::new(ConnectFailure {
        outcome,
        closed_by: "kernel",
        error: Some(
            match outcome {
                Outcome::Refused => "ECONNREFUSED",
                _ => "ETIMEDOUT",
            }
            .into(),
        ),
        icmp_error: None,
        syns: Some(syns),
        icmp_type: None,
        icmp_code: None,
        icmp: None,
        family: Family::Ipv4,
        saddr: ip("10.0.0.1"),
        sport,
        daddr: ip("10.96.0.15"),
        dport: 6379,
        socket_cookie: None,
    }));
    r.kind = "connect_failure";
    r
}

/// `count` packets of 10.0.0.1:`sport` -> 10.96.0.15:6379 dropped for `reason`.
fn dropped(sport: u16, reason: &str, count: u64) -> Record {
    let mut r = samples::drop();
    let Body::PacketDrop(d) = &mut r.body else {
        unreachable!()
    };
    d.sport = sport;
    d.reason = Some(reason.into());
    d.count = count;
    r
}

fn findings(stage: &mut ConnectCauses, at: Instant) -> Vec<Finding> {
    let mut out = Vec::new();
    stage.on_tick(at, &Enricher::fixed("node-a", 0), &mut out);
    out.into_iter()
        .map(|r| match r.body {
            Body::Finding(f) => *f,
            other => panic!("not a finding: {other:?}"),
        })
        .collect()
}

fn written(stage: &mut ConnectCauses, record: Record, now: Instant) {
    assert!(
        stage.on_written(record, now).is_some(),
        "the stage passes every record on"
    );
}

#[test]
fn the_drops_of_a_connects_flow_name_its_cause_after_the_grace() {
    let mut stage = ConnectCauses::new(None, "node-a".into());
    let t0 = Instant::now();
    written(&mut stage, dropped(40000, "NETFILTER_DROP", 1), t0);
    written(&mut stage, dropped(40001, "NETFILTER_DROP", 5), t0);
    written(&mut stage, connect(40000, Outcome::TimedOut, 3), t0);
    // The last SYNs' drops arrive after the connect's record, within the grace.
    written(
        &mut stage,
        dropped(40000, "NETFILTER_DROP", 2),
        t0 + Duration::from_secs(1),
    );
    assert!(stage.pending(t0));
    assert_eq!(stage.tick_within(t0), GRACE);
    assert_eq!(
        stage.tick_within(t0 + GRACE - Duration::from_millis(10)),
        TICK_FLOOR,
        "not a wake-up per failure"
    );
    assert!(findings(&mut stage, t0 + GRACE - Duration::from_millis(1)).is_empty());
    let f = findings(&mut stage, t0 + GRACE);
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = &f[0];
    assert_eq!(f.finding, "connect_dropped");
    assert_eq!(
        (f.saddr, f.sport, f.daddr, f.dport),
        (
            Some(ip("10.0.0.1")),
            Some(40000),
            Some(ip("10.96.0.15")),
            Some(6379)
        )
    );
    assert_eq!(
        f.summary,
        "connect from payments/redis-client-1 to 10.96.0.15:6379 timed_out after 3 SYNs \
         (ETIMEDOUT): 3 packets of the flow were dropped on node node-a by netfilter (a \
         firewall rule or a NetworkPolicy) (NETFILTER_DROP ×3)."
    );
    let Evidence::Values(v) = &f.evidence[1] else {
        panic!("{:?}", f.evidence)
    };
    assert_eq!(v["drops"], serde_json::json!({"NETFILTER_DROP": 3}));
    assert_eq!(
        f.evidence[0].record().map(|r| r.kind),
        Some("connect_failure")
    );
    assert!(!stage.pending(t0 + GRACE));
}

#[test]
fn a_connect_the_kernel_ended_without_a_task_or_pod_is_named_by_its_own_end() {
    let mut stage = ConnectCauses::new(None, "node-a".into());
    let t0 = Instant::now();
    let mut c = connect(40000, Outcome::TimedOut, 2);
    c.k8s = None;
    c.common.pid = None;
    c.common.comm = None;
    written(&mut stage, dropped(40000, "NETFILTER_DROP", 2), t0);
    written(&mut stage, c, t0);
    let f = findings(&mut stage, t0 + GRACE);
    assert!(
        f[0].summary
            .starts_with("connect from 10.0.0.1:40000 to 10.96.0.15:6379 timed_out"),
        "{}",
        f[0].summary
    );
}

#[test]
fn a_refused_connect_or_one_without_drops_makes_no_finding() {
    let mut stage = ConnectCauses::new(None, "node-a".into());
    let t0 = Instant::now();
    // The SYN a closed port refuses is dropped as NO_SOCKET: the refusal says it all.
    written(&mut stage, dropped(40000, "NO_SOCKET", 1), t0);
    written(&mut stage, connect(40000, Outcome::Refused, 1), t0);
    assert!(
        !stage.pending(t0),
        "a refused connect is judged at once, not kept"
    );
    written(&mut stage, connect(40002, Outcome::TimedOut, 2), t0);
    assert!(findings(&mut stage, t0 + GRACE).is_empty());
    assert!(!stage.pending(t0 + GRACE));
}

fn cache_with_redis(ready: &[&str]) -> Arc<K8sCache> {
    let cache = K8sCache::new();
    let svc = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "redis", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.15", "clusterIPs": ["10.96.0.15"]}
    }))
    .unwrap();
    let endpoints: Vec<serde_json::Value> = ready
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
        .chain(std::iter::once(
            serde_json::json!({"addresses": ["10.2.0.99"], "conditions": {"ready": false}}),
        ))
        .collect();
    let slice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "redis-x1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "redis"}},
        "addressType": "IPv4", "endpoints": endpoints
    }))
    .unwrap();
    {
        let mut idx = cache.indexes.write().unwrap();
        idx.apply_service(service_entry(&svc).unwrap());
        idx.apply_slice(slice_entry(&slice).unwrap());
    }
    cache
}

#[test]
fn a_service_without_ready_endpoints_is_named_whatever_the_outcome() {
    let cache = cache_with_redis(&[]);
    let mut stage = ConnectCauses::new(Some(cache.clone()), "node-a".into());
    let t0 = Instant::now();
    written(&mut stage, connect(40000, Outcome::Refused, 2), t0);
    let c = {
        let r = connect(40000, Outcome::Refused, 2);
        let Body::Other(o) = &r.body else {
            unreachable!()
        };
        o.downcast_ref::<ConnectFailure>().unwrap().clone()
    };
    assert_eq!(
        stage.cause(&c, t0),
        Cause {
            service: Some(("shop".into(), "redis".into(), 0)),
            drops: BTreeMap::new(),
        },
        "an endpoint that is not ready is not counted"
    );
    // Refused: nothing more can arrive, the finding is due at once.
    assert_eq!(stage.tick_within(t0), Duration::ZERO);
    let f = findings(&mut stage, t0);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(!stage.pending(t0));
    assert_eq!(f[0].finding, "connect_service_no_endpoints");
    assert_eq!(
        f[0].summary,
        "connect from payments/redis-client-1 to 10.96.0.15:6379 (Service shop/redis, 0 \
         ready endpoints) refused after 2 SYNs (ECONNREFUSED): the Service shop/redis has no \
         ready endpoints: check its selector and whether its pods are ready."
    );
    let Evidence::Values(v) = &f[0].evidence[1] else {
        panic!("{:?}", f[0].evidence)
    };
    assert_eq!(v["service"], "shop/redis");
    assert_eq!(v["ready_endpoints"], 0);
}

#[test]
fn a_service_with_ready_endpoints_is_no_cause_but_drops_still_are() {
    let mut stage = ConnectCauses::new(Some(cache_with_redis(&["10.2.0.9"])), "node-a".into());
    let t0 = Instant::now();
    written(&mut stage, connect(40000, Outcome::Refused, 1), t0);
    written(&mut stage, dropped(40001, "NETFILTER_DROP", 2), t0);
    written(&mut stage, connect(40001, Outcome::TimedOut, 2), t0);
    let f = findings(&mut stage, t0 + GRACE);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].finding, "connect_dropped");
    assert_eq!(f[0].sport, Some(40001));
}

#[test]
fn a_flood_of_failures_is_judged_at_once_beyond_the_pending_bound() {
    let mut stage = ConnectCauses::new(None, "node-a".into());
    let t0 = Instant::now();
    written(&mut stage, dropped(1, "NETFILTER_DROP", 1), t0);
    for port in 1..=(PENDING_MAX as u16 + 1) {
        written(&mut stage, connect(port, Outcome::TimedOut, 1), t0);
    }
    // The oldest (port 1, whose drop is known) goes out before its grace.
    let f = findings(&mut stage, t0);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].sport, Some(1));
    assert_eq!(stage.pending.len(), PENDING_MAX);
}
