//! The event families counted from records rather than the kernel map: what only the agent
//! knows (a core signal's outcome after the exit, conntrack expiries from netlink, findings)
//! or what the kernel already counts exactly per flow (packet drops: each record carries the
//! kernel's count since the previous one). Labelled with the record's pod keys.

use super::series::{SeriesKey, SeriesTag, fingerprint};
use crate::{
    decode::connect::ConnectFailure,
    model::{Body, CoreSignal, Direction, K8sAttrs, Record, Stream},
    status::event_metrics::{DropLabels, ExpiryLabels, FindingLabels, OutcomeLabels, PodLabels},
};

/// The fingerprint (`SeriesKey::fingerprint`) of the series the kernel counts a written
/// record's event in (resets, core signals, Wasm output), for its exemplar; computed without
/// copying a label, as it is paid per record.
pub fn kernel_series_fingerprint(record: &Record) -> Option<u64> {
    let pod = pod_parts(record.k8s.as_deref());
    Some(match &record.body {
        Body::TcpReset(r) => {
            let direction = match r.direction {
                Direction::Sent => "sent",
                Direction::Received => "received",
            };
            fingerprint(
                SeriesTag::Reset,
                &[direction, r.reason.as_deref().unwrap_or("unknown")],
                pod,
            )
        }
        Body::CoreSignal(c) => {
            fingerprint(SeriesTag::Signal, &[&c.signal_name, c.origin.name()], pod)
        }
        Body::Other(o) if let Some(c) = o.downcast_ref::<ConnectFailure>() => {
            let error = c.error.as_deref().unwrap_or(match c.closed_by {
                "application" => "none",
                _ => "unknown",
            });
            fingerprint(SeriesTag::Connect, &[c.outcome.name(), error], pod)
        }
        Body::WasmOutput(w) => {
            let stream = match w.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            fingerprint(SeriesTag::Wasm, &[stream], pod)
        }
        _ => return None,
    })
}

/// The series a written record counts in, and by how much; None for the other kinds.
pub fn series_of(record: &Record) -> Option<(SeriesKey, u64)> {
    // The pod's labels are copied only for the kinds counted here (not per reset).
    let pod = || pod_labels(record.k8s.as_deref());
    Some(match &record.body {
        Body::PacketDrop(d) => (
            SeriesKey::Drop(DropLabels {
                reason: d.reason.as_deref().unwrap_or("unknown").to_owned(),
                pod: pod(),
            }),
            d.count,
        ),
        Body::ConntrackExpiry(x) => (
            SeriesKey::Expiry(ExpiryLabels {
                timeout_sysctl: x.timeout_sysctl.clone().unwrap_or_default(),
                pod: pod(),
            }),
            1,
        ),
        Body::Finding(f) => (
            SeriesKey::Finding(FindingLabels {
                finding: f.finding,
                pod: pod(),
            }),
            1,
        ),
        Body::CoreSignal(c) => (
            SeriesKey::Outcome(OutcomeLabels {
                signal: c.signal_name.clone(),
                outcome: outcome(c),
                pod: pod(),
            }),
            1,
        ),
        _ => return None,
    })
}

/// What became of the signalled process.
fn outcome(c: &CoreSignal) -> &'static str {
    match (c.core_dumped, c.exit_code) {
        (Some(true), _) => "core_written",
        (Some(false), Some(_)) => "no_core",
        (Some(false), None) => "survived",
        (None, _) => "unknown",
    }
}

/// A record's pod keys as metric labels (all empty outside any pod).
fn pod_labels(k8s: Option<&K8sAttrs>) -> PodLabels {
    let [namespace, pod, container, workload_kind, workload] = pod_parts(k8s).map(str::to_owned);
    PodLabels {
        namespace,
        pod,
        container,
        workload_kind,
        workload,
    }
}

/// `pod_labels`' values, borrowed.
fn pod_parts(k8s: Option<&K8sAttrs>) -> [&str; 5] {
    let Some(k) = k8s.filter(|k| k.pod_name.is_some()) else {
        return [""; 5];
    };
    let (workload_kind, workload) =
        PodLabels::top_workload_ref(k.workload.iter().map(|(key, n)| (*key, n.as_str())));
    [
        k.namespace.as_deref().unwrap_or_default(),
        k.pod_name.as_deref().unwrap_or_default(),
        k.container_name.as_deref().unwrap_or_default(),
        workload_kind,
        workload,
    ]
}
