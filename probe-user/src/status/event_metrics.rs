//! The metric families of the events themselves (counted in the kernel, labelled with the pod
//! they belong to): their label sets and how they are registered. Filled by `counts/`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, exemplar::CounterWithExemplar, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The pod an event belongs to; every label empty for events outside any pod (host processes,
/// resets no pod's socket or namespace owns). Never ports, addresses, PIDs or trace IDs: the
/// number of series follows the number of pods, not of connections.
#[derive(Clone, Debug, Default, Hash, Eq, EncodeLabelSet)]
#[expect(
    clippy::derived_hash_with_manual_eq,
    reason = "eq is the derived comparison, field by field, only without memcmp on empty text"
)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `deployment`, `statefulset`, `daemonset`, `job`, `cronjob`, `replicaset`; empty for a
    /// bare pod.
    pub workload_kind: String,
    pub workload: String,
}

/// Equal text, with empty text compared without `memcmp`: glibc 2.36's AVX-512 `memcmp` reads
/// an empty `String`'s dangling pointer through a masked load, which costs a microcode assist
/// (about 100 ns here, against 1 ns for one byte). Every series lookup of a host process's
/// event compares five empty pod labels.
pub fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_bytes() == b.as_bytes())
}

impl PartialEq for PodLabels {
    fn eq(&self, other: &Self) -> bool {
        same_text(&self.namespace, &other.namespace)
            && same_text(&self.pod, &other.pod)
            && same_text(&self.container, &other.container)
            && same_text(&self.workload_kind, &other.workload_kind)
            && same_text(&self.workload, &other.workload)
    }
}

impl PodLabels {
    /// The top-level workload among a pod's owners (semantic-convention keys such as
    /// `k8s.deployment.name`): the Deployment rather than its ReplicaSet, the CronJob rather
    /// than its Job; as (kind, name).
    pub fn top_workload<'a>(
        owners: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (String, String) {
        let (kind, name) = Self::top_workload_ref(owners);
        (kind.to_owned(), name.to_owned())
    }

    /// `top_workload` without copying: ("", "") for a bare pod.
    pub fn top_workload_ref<'a>(
        owners: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (&'a str, &'a str) {
        const RANK: [&str; 6] = [
            "deployment",
            "statefulset",
            "daemonset",
            "cronjob",
            "job",
            "replicaset",
        ];
        owners
            .into_iter()
            .filter_map(|(key, name)| {
                let kind = key.strip_prefix("k8s.")?.strip_suffix(".name")?;
                let rank = RANK.iter().position(|k| *k == kind)?;
                Some((rank, kind, name))
            })
            .min_by_key(|(rank, _, _)| *rank)
            .map(|(_, kind, name)| (kind, name))
            .unwrap_or_default()
    }

    /// No label at all: the node's own processes (and the kernel), one series per family's
    /// labels, never capped.
    pub fn is_node(&self) -> bool {
        self.parts().iter().all(|p| p.is_empty())
    }

    /// The labels' values in order.
    pub fn parts(&self) -> [&str; 5] {
        [
            &self.namespace,
            &self.pod,
            &self.container,
            &self.workload_kind,
            &self.workload,
        ]
    }
}

/// The value of `pod` in the overflow series of a family (`--metrics-max-series` reached).
pub const OVERFLOW_POD: &str = "_overflow";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabels {
    /// `sent` or `received`.
    pub direction: &'static str,
    /// `enum sk_rst_reason` name (`NO_SOCKET`...), `unknown` where the kernel gives none.
    pub reason: String,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectLabels {
    /// `refused`, `timed_out`, `unreachable`, `failed` or `unknown`.
    pub outcome: &'static str,
    /// The socket's errno name (`ETIMEDOUT`...), `none` when the application closed it first,
    /// `unknown` where the kernel's error cannot be read.
    pub error: String,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetransmitLabels {
    /// The socket's TCP state (`ESTABLISHED`, `SYN_SENT`, ...), `unknown` where it cannot be
    /// named.
    pub state: String,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// `SIGSEGV`...
    pub signal: String,
    /// `kernel` (a fault) or `user` (kill, abort...).
    pub origin: &'static str,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `enum skb_drop_reason` name, `unknown` where the kernel gives none.
    pub reason: String,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, Eq, EncodeLabelSet)]
#[expect(
    clippy::derived_hash_with_manual_eq,
    reason = "eq is the derived comparison, field by field, only without memcmp on empty text"
)]
pub struct ExpiryLabels {
    /// The sysctl whose timeout ended the entry (`nf_conntrack_tcp_timeout_established`...).
    pub timeout_sysctl: String,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

impl PartialEq for ExpiryLabels {
    fn eq(&self, other: &Self) -> bool {
        same_text(&self.timeout_sysctl, &other.timeout_sysctl) && self.pod == other.pod
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// `conntrack_expiry_reset`, `conntrack_expiry_drop`, `conntrack_table_full`.
    pub finding: &'static str,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub signal: String,
    /// `core_written`, `no_core` (the process died without one), `survived` (handled or
    /// ignored), `unknown` (it outlived `--core-wait`).
    pub outcome: &'static str,
    #[prometheus(flatten)]
    pub pod: PodLabels,
}

/// An OpenMetrics exemplar: the span of a recent event of the series that was exported in
/// full (hex, as Tempo and Grafana read them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanExemplar {
    pub trace_id: String,
    pub span_id: String,
}

/// A counter of events whose exemplar links to one of them.
pub type EventCounter = CounterWithExemplar<SpanExemplar>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabel {
    pub metric: &'static str,
}

/// Names (without the `probe_` prefix and the `_total` suffix) of the event families.
pub mod names {
    pub const TCP_RESETS: &str = "tcp_resets";
    pub const TCP_CONNECT_FAILURES: &str = "tcp_connect_failures";
    pub const TCP_RETRANSMITS: &str = "tcp_retransmits";
    pub const CORE_SIGNALS: &str = "core_signals";
    pub const WASM_OUTPUT_WRITES: &str = "wasm_output_writes";
    pub const PACKET_DROPS: &str = "packet_drops";
    pub const CONNTRACK_EXPIRIES: &str = "conntrack_expiries";
    pub const FINDINGS: &str = "findings";
    pub const CORE_SIGNAL_OUTCOMES: &str = "core_signal_outcomes";
    /// Registered as `wasm_output` with the unit bytes (the same name on /metrics).
    pub const WASM_OUTPUT_BYTES: &str = "wasm_output_bytes";

    /// A family's description (/metrics HELP, the OTLP metric's description).
    pub fn help(family: &str) -> &'static str {
        match family {
            TCP_RESETS => {
                "TCP resets sent and received, counted in the kernel (exact whatever the ring buffer lost), by direction, reason and pod"
            }
            TCP_CONNECT_FAILURES => {
                "TCP connects that ended without reaching ESTABLISHED, counted in the kernel, by outcome, the socket's error and pod"
            }
            TCP_RETRANSMITS => {
                "TCP segments sent again, counted in the kernel (no record each), by the socket's TCP state and pod"
            }
            CORE_SIGNALS => {
                "Core-dumping signals generated for a process, counted in the kernel, by signal, origin and pod"
            }
            WASM_OUTPUT_WRITES => {
                "Writes of captured Wasm runtimes to stdout/stderr, counted in the kernel, by stream and pod"
            }
            PACKET_DROPS => {
                "TCP packets the kernel dropped, counted in the kernel per flow and reason, by reason and pod"
            }
            CONNTRACK_EXPIRIES => {
                "Established TCP conntrack entries that timed out (destroyed without FIN or RST), by the timeout's sysctl and the pod whose namespace held them"
            }
            FINDINGS => "Findings (observations joined into a cause), by finding and pod",
            CORE_SIGNAL_OUTCOMES => {
                "Core-dumping signals by what became of the process (core_written, no_core, survived, unknown), by signal and pod"
            }
            WASM_OUTPUT_BYTES => {
                "Bytes captured Wasm runtimes wrote to stdout/stderr, counted in the kernel, by stream and pod"
            }
            _ => "",
        }
    }
}

/// The event families, and how many series they hold.
#[derive(Clone, Default)]
pub struct EventMetrics {
    pub tcp_resets: Family<ResetLabels, EventCounter>,
    pub tcp_connect_failures: Family<ConnectLabels, EventCounter>,
    pub tcp_retransmits: Family<RetransmitLabels, EventCounter>,
    pub core_signals: Family<SignalLabels, EventCounter>,
    pub wasm_output_writes: Family<StreamLabels, EventCounter>,
    pub wasm_output_bytes: Family<StreamLabels, EventCounter>,
    pub packet_drops: Family<DropLabels, EventCounter>,
    pub conntrack_expiries: Family<ExpiryLabels, EventCounter>,
    pub findings: Family<FindingLabels, EventCounter>,
    pub core_signal_outcomes: Family<OutcomeLabels, EventCounter>,
    /// Series with pod labels across the families (the overflow series not included).
    pub series: Gauge,
    /// Events counted in an overflow series because the cap was reached, by family.
    pub series_overflow: Family<MetricLabel, Counter>,
    /// Series removed after `--metrics-series-idle` without an event.
    pub series_expired: Counter,
}

impl EventMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            names::TCP_RESETS,
            names::help(names::TCP_RESETS),
            self.tcp_resets.clone(),
        );
        registry.register(
            names::TCP_CONNECT_FAILURES,
            names::help(names::TCP_CONNECT_FAILURES),
            self.tcp_connect_failures.clone(),
        );
        registry.register(
            names::TCP_RETRANSMITS,
            names::help(names::TCP_RETRANSMITS),
            self.tcp_retransmits.clone(),
        );
        registry.register(
            names::CORE_SIGNALS,
            names::help(names::CORE_SIGNALS),
            self.core_signals.clone(),
        );
        registry.register(
            names::WASM_OUTPUT_WRITES,
            names::help(names::WASM_OUTPUT_WRITES),
            self.wasm_output_writes.clone(),
        );
        // The unit makes the name `wasm_output_bytes`.
        registry.register_with_unit(
            "wasm_output",
            names::help(names::WASM_OUTPUT_BYTES),
            prometheus_client::registry::Unit::Bytes,
            self.wasm_output_bytes.clone(),
        );
        registry.register(
            names::PACKET_DROPS,
            names::help(names::PACKET_DROPS),
            self.packet_drops.clone(),
        );
        registry.register(
            names::CONNTRACK_EXPIRIES,
            names::help(names::CONNTRACK_EXPIRIES),
            self.conntrack_expiries.clone(),
        );
        registry.register(
            names::FINDINGS,
            names::help(names::FINDINGS),
            self.findings.clone(),
        );
        registry.register(
            names::CORE_SIGNAL_OUTCOMES,
            names::help(names::CORE_SIGNAL_OUTCOMES),
            self.core_signal_outcomes.clone(),
        );
        registry.register(
            "metric_series",
            "Series with pod labels in the event metrics (at most --metrics-max-series)",
            self.series.clone(),
        );
        registry.register(
            "metric_series_overflow",
            "Events counted in a family's overflow series (pod=\"_overflow\") because --metrics-max-series was reached, by family",
            self.series_overflow.clone(),
        );
        registry.register(
            "metric_series_expired",
            "Event series removed after --metrics-series-idle without an event",
            self.series_expired.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, pod: &str) -> PodLabels {
        PodLabels {
            namespace: namespace.into(),
            pod: pod.into(),
            ..PodLabels::default()
        }
    }

    /// The hand-written comparison (no memcmp on empty text) is the derived one: every field,
    /// empty or not.
    #[test]
    fn pod_labels_are_equal_exactly_when_every_label_is() {
        assert!(same_text("", ""));
        assert!(same_text("web", "web"));
        assert!(!same_text("", "w"));
        assert!(!same_text("web", "wed"));
        assert_eq!(PodLabels::default(), PodLabels::default());
        assert_eq!(pod("ns", "p1"), pod("ns", "p1"));
        assert_ne!(pod("ns", "p1"), pod("ns", "p2"));
        assert_ne!(pod("ns", ""), pod("", "ns"));
        let mut other = pod("ns", "p1");
        other.workload = "web".into();
        assert_ne!(pod("ns", "p1"), other);
        let expiry = |sysctl: &str| ExpiryLabels {
            timeout_sysctl: sysctl.into(),
            pod: pod("ns", "p1"),
        };
        assert_eq!(expiry(""), expiry(""));
        assert_ne!(expiry(""), expiry("nf_conntrack_tcp_timeout_established"));
    }
}
