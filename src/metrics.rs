//! Prometheus metrics: counters, gauges and histograms kept in one process-wide registry and
//! rendered in Prometheus's text format for the `metrics_listen` listener.
//!
//! Owns: metric names, their help text and label sets. Must never: put a secret, a message or a
//! user id in a label (labels are apps, results, errcodes and kinds only).
//!
//! Hand-written rather than the `metrics` crate: that crate and its Prometheus exporter are not
//! available to this build (no network at build time); this is the small subset the gateway uses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Histogram buckets, in seconds: from an acknowledgement (milliseconds) to an agent turn (minutes).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    /// (name, labels) → value.
    counters: BTreeMap<(&'static str, String), u64>,
    gauges: BTreeMap<(&'static str, String), f64>,
    histograms: BTreeMap<(&'static str, String), Histogram>,
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    let lock = REGISTRY.get_or_init(Mutex::default).lock();
    lock.unwrap_or_else(|p| p.into_inner())
}

/// `{a="x",b="y"}`, values escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Add to a counter.
pub fn count(name: &'static str, help: &'static str, pairs: &[(&str, &str)]) {
    let mut r = registry();
    r.help.entry(name).or_insert((help, "counter"));
    *r.counters.entry((name, labels(pairs))).or_default() += 1;
}

/// Set a gauge.
pub fn gauge(name: &'static str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
    let mut r = registry();
    r.help.entry(name).or_insert((help, "gauge"));
    r.gauges.insert((name, labels(pairs)), value);
}

/// Record a duration in a histogram.
pub fn observe(name: &'static str, help: &'static str, pairs: &[(&str, &str)], took: Duration) {
    let mut r = registry();
    r.help.entry(name).or_insert((help, "histogram"));
    let h = r.histograms.entry((name, labels(pairs))).or_default();
    if h.counts.is_empty() {
        h.counts = vec![0; BUCKETS.len()];
    }
    let secs = took.as_secs_f64();
    for (i, bound) in BUCKETS.iter().enumerate() {
        if secs <= *bound {
            h.counts[i] += 1;
        }
    }
    h.sum += secs;
    h.count += 1;
}

/// Everything, in Prometheus's text exposition format.
pub fn render() -> String {
    let r = registry();
    let mut out = String::new();
    let mut described = std::collections::BTreeSet::new();
    let mut describe = |out: &mut String, name: &'static str| {
        if described.insert(name) {
            let (help, kind) = r.help.get(name).copied().unwrap_or(("", "untyped"));
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
    };
    for ((name, l), v) in &r.counters {
        describe(&mut out, name);
        let _ = writeln!(out, "{name}{l} {v}");
    }
    for ((name, l), v) in &r.gauges {
        describe(&mut out, name);
        let _ = writeln!(out, "{name}{l} {v}");
    }
    for ((name, l), h) in &r.histograms {
        describe(&mut out, name);
        // The bucket label joins the others: {a="x",le="0.5"}.
        let with_le = |le: &str| match l.strip_suffix('}') {
            Some(open) => format!("{open},le=\"{le}\"}}"),
            None => format!("{{le=\"{le}\"}}"),
        };
        for (bound, n) in BUCKETS.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{} {n}", with_le(&bound.to_string()));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", with_le("+Inf"), h.count);
        let _ = writeln!(out, "{name}_sum{l} {}\n{name}_count{l} {}", h.sum, h.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_labels_and_buckets() {
        count("t_calls_total", "Calls.", &[("result", "ok")]);
        count("t_calls_total", "Calls.", &[("result", "ok")]);
        count("t_calls_total", "Calls.", &[("result", "a\"b")]);
        gauge("t_queued", "Queued.", &[], 3.0);
        observe(
            "t_seconds",
            "Latency.",
            &[("app", "x")],
            Duration::from_millis(20),
        );
        let text = render();
        assert!(text.contains("# TYPE t_calls_total counter\n"), "{text}");
        assert!(text.contains("t_calls_total{result=\"ok\"} 2\n"), "{text}");
        assert!(
            text.contains("t_calls_total{result=\"a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("t_queued 3\n"), "{text}");
        assert!(
            text.contains("t_seconds_bucket{app=\"x\",le=\"0.01\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{app=\"x\",le=\"0.025\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{app=\"x\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_count{app=\"x\"} 1\n"), "{text}");
    }
}
