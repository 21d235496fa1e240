//! The event metrics as OTLP: one `Metric` per family, a cumulative monotonic `Sum` with a
//! point per series (its labels as attributes, its exemplar's span). Named as the collector's
//! Prometheus translation gives back the names of /metrics: `probe.tcp.resets` (unit
//! `{event}`) is `probe_tcp_resets_total`, `probe.wasm.output` (unit `By`) is
//! `probe_wasm_output_bytes_total`.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Exemplar, Metric, NumberDataPoint, Sum, exemplar, metric::Data,
        number_data_point,
    },
};

use crate::{
    model::{MetricFamily, MetricPoint, MetricsSnapshot},
    status::event_metrics::names,
};

/// The OTLP name of a family of /metrics.
pub fn name(family: &str) -> String {
    if family == names::WASM_OUTPUT_BYTES {
        return "probe.wasm.output".to_owned();
    }
    format!("probe.{}", family.replace('_', "."))
}

/// One `Metric` per family of the snapshot.
pub fn metrics(snapshot: &MetricsSnapshot) -> Vec<Metric> {
    snapshot
        .families
        .iter()
        .map(|f| family(f, snapshot.time_unix_nano))
        .collect()
}

fn family(f: &MetricFamily, time_unix_nano: u64) -> Metric {
    Metric {
        name: name(f.name),
        description: f.description.to_owned(),
        unit: f.unit.to_owned(),
        data: Some(Data::Sum(Sum {
            data_points: f.points.iter().map(|p| point(p, time_unix_nano)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn point(p: &MetricPoint, time_unix_nano: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: p
            .labels
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_owned(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(v.clone())),
                }),
                ..KeyValue::default()
            })
            .collect(),
        start_time_unix_nano: p.start_unix_nano,
        time_unix_nano,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(p.value).unwrap_or(i64::MAX),
        )),
        exemplars: p
            .exemplar
            .iter()
            .map(|(span, at)| Exemplar {
                time_unix_nano: *at,
                value: Some(exemplar::Value::AsInt(1)),
                span_id: span.span_id.to_vec(),
                trace_id: span.trace_id.to_vec(),
                ..Exemplar::default()
            })
            .collect(),
        ..NumberDataPoint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanRef;

    #[test]
    fn a_family_is_a_cumulative_monotonic_sum_with_each_series_and_its_exemplar() {
        let snapshot = MetricsSnapshot {
            time_unix_nano: 2_000,
            families: vec![MetricFamily {
                name: names::TCP_RESETS,
                description: names::help(names::TCP_RESETS),
                unit: "{event}",
                points: vec![MetricPoint {
                    labels: vec![("direction", "sent".into()), ("pod", "web-1".into())],
                    start_unix_nano: 1_000,
                    value: 41_230,
                    exemplar: Some((
                        SpanRef {
                            trace_id: [7; 16],
                            span_id: [8; 8],
                        },
                        1_500,
                    )),
                }],
            }],
        };
        let m = &metrics(&snapshot)[0];
        assert_eq!(m.name, "probe.tcp.resets");
        assert_eq!(m.unit, "{event}");
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("a sum: {m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(41_230)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1_000, 2_000));
        assert_eq!(p.attributes[1].key, "pod");
        assert_eq!(p.exemplars[0].span_id, vec![8; 8]);
        assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
        assert_eq!(name(names::WASM_OUTPUT_BYTES), "probe.wasm.output");
        assert_eq!(
            name(names::CORE_SIGNAL_OUTCOMES),
            "probe.core.signal.outcomes"
        );
    }
}
