//! The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
//! OpenMetrics (`promtool check metrics`, curl): the OpenMetrics text the registry writes,
//! with each counter's HELP/TYPE named as its samples (`_total`), without `# UNIT`, `# EOF`
//! and exemplars (which only OpenMetrics carries).

/// Whether an `Accept` header asks for OpenMetrics (Prometheus does, first).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let q_zero = params.any(|p| p == "q=0" || p == "q=0.0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        })
    })
}

pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_owned());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {text}"));
            }
            // Label values are escaped: a sample's own text never holds " # ".
            None => out.push_str(line.split(" # ").next().unwrap_or(line)),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP probe_tcp_resets TCP resets.
# TYPE probe_tcp_resets counter
probe_tcp_resets_total{direction=\"sent\",pod=\"a\"} 3 # {trace_id=\"ab\",span_id=\"cd\"} 3.0 1796508752.1
# HELP probe_wasm_output_bytes Bytes.
# TYPE probe_wasm_output_bytes counter
# UNIT probe_wasm_output_bytes bytes
probe_wasm_output_bytes_total{stream=\"stdout\"} 12
# HELP probe_queue_depth Depth.
# TYPE probe_queue_depth gauge
probe_queue_depth 0
# EOF
";

    #[test]
    fn counters_are_named_as_their_samples_and_exemplars_left_out() {
        assert_eq!(
            classic(OPENMETRICS),
            "\
# HELP probe_tcp_resets_total TCP resets.
# TYPE probe_tcp_resets_total counter
probe_tcp_resets_total{direction=\"sent\",pod=\"a\"} 3
# HELP probe_wasm_output_bytes_total Bytes.
# TYPE probe_wasm_output_bytes_total counter
probe_wasm_output_bytes_total{stream=\"stdout\"} 12
# HELP probe_queue_depth Depth.
# TYPE probe_queue_depth gauge
probe_queue_depth 0
"
        );
    }

    #[test]
    fn prometheus_accept_header_gets_openmetrics_and_others_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(None));
    }
}
