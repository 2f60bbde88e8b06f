//! Reading strait's `/metrics` (Prometheus text format) just enough to take counters.

/// One sample: metric name, label text (without braces), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `strait_xds_responses_total`.
    pub name: String,
    /// Labels as written, e.g. `type="CDS"`.
    pub labels: String,
    /// Value.
    pub value: f64,
}

/// Every sample of `text`; comments and unreadable lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value,
            })
        })
        .collect()
}

/// The sum of the samples named `name` whose labels contain `label` (empty: all).
pub fn value(samples: &[Sample], name: &str, label: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.labels.contains(label))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms() {
        let text = "# HELP strait_pushes Pushes.\n# TYPE strait_pushes counter\nstrait_pushes_total 7\n\
                    strait_xds_responses_total{type=\"CDS\"} 3\nstrait_xds_responses_total{type=\"EDS\"} 5\n\
                    strait_push_duration_seconds_sum 0.25\nstrait_push_duration_seconds_bucket{le=\"+Inf\"} 7\n";
        let s = parse(text);
        assert_eq!(value(&s, "strait_pushes_total", ""), 7.0);
        assert_eq!(value(&s, "strait_xds_responses_total", ""), 8.0);
        assert_eq!(value(&s, "strait_xds_responses_total", "type=\"EDS\""), 5.0);
        assert_eq!(value(&s, "strait_push_duration_seconds_sum", ""), 0.25);
        assert_eq!(value(&s, "missing", ""), 0.0);
    }
}
