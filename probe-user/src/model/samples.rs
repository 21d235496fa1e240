//! One record of every written kind, for the renderers' tests.

use super::*;

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

pub fn k8s() -> K8sAttrs {
    K8sAttrs {
        namespace: Some("payments".into()),
        pod_name: Some("redis-client-1".into()),
        node_name: Some("node-3".into()),
        workload: [("k8s.deployment.name", "redis-client".to_owned())].into(),
        labels: [("app".to_owned(), "redis-client".to_owned())].into(),
        ..K8sAttrs::default()
    }
}

fn record(body: Body) -> Record {
    Record {
        time_unix_nano: 1_000_000_000,
        kind: body.kind(),
        node: "node-3".into(),
        common: Common {
            ktime_ns: 5,
            netns: Some(1),
            cgroup_id: Some(2),
            pid: Some(7),
            tid: Some(8),
            comm: Some("redis-cli".into()),
        },
        body,
        k8s: Some(Box::new(k8s())),
        trace: None,
        span: super::OwnSpan::UNASSIGNED,
    }
}

pub fn reset() -> Record {
    record(Body::TcpReset(TcpReset {
        direction: Direction::Sent,
        family: Family::Ipv4,
        saddr: ip("10.0.0.1"),
        sport: 5000,
        daddr: ip("10.96.0.15"),
        dport: 6379,
        tcp_state: Some("CLOSE".into()),
        reason: Some("TCP_ABORT_ON_LINGER".into()),
        socket_cookie: Some(9),
    }))
}

pub fn core_signal() -> Record {
    record(Body::CoreSignal(Box::new(CoreSignal {
        signal: 11,
        signal_name: "SIGSEGV".into(),
        origin: signals::Origin::Kernel,
        si_code: "SEGV_MAPERR".into(),
        sender_pid: None,
        sender_comm: None,
        sender_tid: None,
        result: "delivered".into(),
        handler: Some(Handler::Default),
        core_dumped: Some(false),
        core_suppressed_by: Some("rlimit_core=0".into()),
        rlimit_core: Some(RlimitCore(u64::MAX)),
        dumpable: Some(1),
        core_pattern: Some("core".into()),
        core_uses_pid: Some(false),
        exit_code: Some(139),
    })))
}

pub fn expiry() -> Record {
    let mut r = record(Body::ConntrackExpiry(Box::new(ConntrackExpiry {
        netns_path: "host".into(),
        proto: "tcp".into(),
        tcp_state: Some("ESTABLISHED".into()),
        orig_saddr: ip("10.0.0.1"),
        orig_sport: 5000,
        orig_daddr: ip("10.96.0.15"),
        orig_dport: 6379,
        reply_saddr: ip("10.0.2.2"),
        reply_sport: 6379,
        reply_daddr: ip("10.0.0.1"),
        reply_dport: 5000,
        timeout_s: Some(3),
        timeout_sysctl: Some("nf_conntrack_tcp_timeout_established".into()),
        established_for_s: Some(7.5),
        zone: 0,
        mark: 0,
        status: vec!["ASSURED".into(), "DST_NAT".into()],
        conntrack_id: Some(1),
        orig_packets: None,
        orig_bytes: None,
        reply_packets: None,
        reply_bytes: None,
        start_unix_nano: Some(1),
        stop_unix_nano: None,
        destroyed_unix_nano: None,
    })));
    r.common = Common::none();
    r.k8s = None;
    r
}

pub fn drop() -> Record {
    record(Body::PacketDrop(Box::new(PacketDrop {
        family: Family::Ipv4,
        saddr: ip("10.0.0.1"),
        sport: 5000,
        daddr: ip("10.96.0.15"),
        dport: 6379,
        reason: Some("NETFILTER_DROP".into()),
        count: 4,
        key: probe_common::DropKey {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            family: 2,
            _pad: 0,
            reason: 0,
            netns: 0,
        },
    })))
}

pub fn wasm() -> Record {
    record(Body::WasmOutput(Box::new(WasmOutput {
        stream: Stream::Stdout,
        runtime: "wasmtime".into(),
        text: "hi".into(),
        data_b64: None,
        partial: false,
        truncated: false,
        write_result: Some(3),
        fd_target: Some("pipe".into()),
    })))
}

pub fn finding() -> Record {
    let mut r = record(Body::Finding(Box::new(Finding {
        finding: "conntrack_expiry_reset",
        summary: "the cause".into(),
        evidence: vec![
            Evidence::Record(Box::new(expiry())),
            Evidence::Record(Box::new(reset())),
        ],
        netns_path: Some("host".into()),
        saddr: Some(ip("10.0.0.1")),
        sport: Some(5000),
        daddr: Some(ip("10.96.0.15")),
        dport: Some(6379),
        backend_addr: Some(ip("10.0.2.2")),
        backend_port: Some(6379),
        timeout_s: Some(3),
        timeout_sysctl: Some("nf_conntrack_tcp_timeout_established".into()),
        established_for_s: Some(7.5),
    })));
    r.common = Common::none();
    r
}

pub fn loss() -> Record {
    let mut r = record(Body::Loss(Loss {
        source: LossSource::Ringbuf,
        count: 17,
        lost_kind: Some("tcp_reset"),
    }));
    r.common = Common::none();
    r.k8s = None;
    r
}

/// Every written kind (but those carried as [`Body::Other`]).
pub fn all() -> Vec<Record> {
    vec![
        reset(),
        core_signal(),
        expiry(),
        drop(),
        wasm(),
        finding(),
        loss(),
    ]
}
