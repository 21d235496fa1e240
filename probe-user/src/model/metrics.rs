//! A snapshot of the event metrics (the families of `/metrics`), as the OTLP output exports
//! them: cumulative monotonic sums, one point per series, with the series' exemplar.

use super::SpanRef;

/// The event families at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// When it was taken (wall clock, ns).
    pub time_unix_nano: u64,
    pub families: Vec<MetricFamily>,
}

/// One family: `name` as on /metrics without `probe_` and `_total` (`tcp_resets`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM unit (`{event}`, `By`).
    pub unit: &'static str,
    pub points: Vec<MetricPoint>,
}

/// One series: its labels, the count since `start_unix_nano`, and its exemplar.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub labels: Vec<(&'static str, String)>,
    pub start_unix_nano: u64,
    pub value: u64,
    /// A recent event of the series exported in full: its span, and its time.
    pub exemplar: Option<(SpanRef, u64)>,
}
