//! Prometheus metrics, kept by the `metrics` crate's process-wide recorder and rendered by
//! `metrics-exporter-prometheus` for the `metrics_listen` listener.
//!
//! Owns: the recorder (installed on first use), every metric's name, kind and help text (`METRICS`,
//! the one list), the histogram buckets, and the upkeep that keeps histogram samples bounded
//! between scrapes.
//!
//! Must never: put a secret, a message or a user id in a label (labels are apps, agents, results,
//! errcodes and kinds only). Hot paths hold handles (`counter`, `histogram`) made once, so
//! recording is an atomic add with no lock and no allocation.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds: from an acknowledgement (milliseconds) to an agent turn (minutes).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

/// How often histogram samples recorded since the last upkeep are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the gateway exports: name, kind, help.
const METRICS: &[(&str, Kind, &str)] = &[
    (CALLBACKS, Kind::Counter, "Message callbacks (POST) by result: ok, duplicate, denied (not on the allowlist), bad_signature, decrypt_error, malformed, too_large, replayed, store_error."),
    (ACK_SECONDS, Kind::Histogram, "Time from a callback's arrival to its answer."),
    (KEY_SET, Kind::Counter, "Callbacks verified during a key rotation, by the token/key set that verified them."),
    (RATE_LIMIT_WAITS, Kind::Counter, "Sends held back to stay within WeCom's rate limits."),
    (WECOM_CALLS, Kind::Counter, "Sends to WeCom (message/send, appchat/send, robot webhooks) by errcode; none: no answer or HTTP error."),
    (RETRIES, Kind::Counter, "Sends tried again after a failure that may heal."),
    (TOKEN_FETCHES, Kind::Counter, "Access tokens fetched with gettoken, per app."),
    (AGENT_SECONDS, Kind::Histogram, "How long agents took to answer."),
    (AGENT_FAILURES, Kind::Counter, "Agent turns that failed, by kind."),
    (INBOX_IN_PROGRESS, Kind::Gauge, "Messages being handled by this process's workers."),
    (INBOX_WAITING, Kind::Gauge, "Messages waiting in this process's window (with SQLite, more may wait on disk)."),
    (AIBOT_MESSAGES, Kind::Counter, "Messages and events AI bots received, by bot and result: queued, duplicate, ignored (allowlist, group, no mention), unreadable, store_failed."),
    (AIBOT_FRAMES, Kind::Counter, "Stream frames AI bots' replies sent, by bot and result: ok, refused (the bubble ends; the rest goes as a message), no_answer."),
];

pub const CALLBACKS: &str = "wecom_gateway_callbacks_total";
pub const ACK_SECONDS: &str = "wecom_gateway_ack_seconds";
pub const KEY_SET: &str = "wecom_gateway_callback_key_set_total";
pub const RATE_LIMIT_WAITS: &str = "wecom_gateway_rate_limit_waits_total";
pub const WECOM_CALLS: &str = "wecom_gateway_wecom_calls_total";
pub const RETRIES: &str = "wecom_gateway_retries_total";
pub const TOKEN_FETCHES: &str = "wecom_gateway_token_fetches_total";
pub const AGENT_SECONDS: &str = "wecom_gateway_agent_seconds";
pub const AGENT_FAILURES: &str = "wecom_gateway_agent_failures_total";
pub const INBOX_IN_PROGRESS: &str = "wecom_gateway_inbox_in_progress";
pub const INBOX_WAITING: &str = "wecom_gateway_inbox_waiting";
pub const AIBOT_MESSAGES: &str = "wecom_gateway_aibot_messages_total";
pub const AIBOT_FRAMES: &str = "wecom_gateway_aibot_frames_total";

/// The recorder, installed on first use. If the embedding program installed another recorder
/// first, that one receives the gateway's metrics and this handle renders nothing.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
            Ok(b) => b,
            // Only an empty bucket list is refused; BUCKETS is not empty.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        for (name, kind, help) in METRICS {
            match kind {
                Kind::Counter => metrics::describe_counter!(*name, *help),
                Kind::Gauge => metrics::describe_gauge!(*name, *help),
                Kind::Histogram => metrics::describe_histogram!(*name, *help),
            }
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            });
        handle
    })
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect()
}

/// A counter handle, for code that counts often: keep it, and `increment(1)` costs one atomic add.
pub fn counter(name: &'static str, pairs: &[(&'static str, &str)]) -> Counter {
    recorder();
    metrics::counter!(name, labels(pairs))
}

/// A histogram handle, for code that records often.
pub fn histogram(name: &'static str, pairs: &[(&'static str, &str)]) -> Histogram {
    recorder();
    metrics::histogram!(name, labels(pairs))
}

/// Add one to a counter whose labels vary (an app, an errcode): looked up by name and labels.
pub fn count(name: &'static str, pairs: &[(&'static str, &str)]) {
    counter(name, pairs).increment(1);
}

/// Set a gauge.
pub fn gauge(name: &'static str, value: f64) {
    recorder();
    metrics::gauge!(name).set(value);
}

/// Record a duration in a histogram whose labels vary.
pub fn observe(name: &'static str, pairs: &[(&'static str, &str)], took: Duration) {
    histogram(name, pairs).record(took.as_secs_f64());
}

/// A counter's sum over all its labels in this process (`simulate` reads AGENT_FAILURES to say
/// in its exit code that the agent failed).
pub fn total(name: &str) -> f64 {
    render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Everything, in Prometheus's text exposition format.
pub fn render() -> String {
    recorder().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_help_labels_and_buckets() {
        count(RETRIES, &[]);
        let calls = counter(WECOM_CALLS, &[("call", "robot"), ("errcode", "a\"b")]);
        calls.increment(1);
        calls.increment(1);
        gauge(INBOX_WAITING, 3.0);
        observe(AGENT_SECONDS, &[("agent", "t")], Duration::from_millis(20));
        let text = render();
        for present in [
            "# HELP wecom_gateway_retries_total Sends tried again after a failure that may heal.\n",
            "# TYPE wecom_gateway_retries_total counter\n",
            "wecom_gateway_retries_total 1\n",
            "wecom_gateway_wecom_calls_total{call=\"robot\",errcode=\"a\\\"b\"} 2\n",
            "# TYPE wecom_gateway_inbox_waiting gauge\n",
            "wecom_gateway_inbox_waiting 3\n",
            "# TYPE wecom_gateway_agent_seconds histogram\n",
            "wecom_gateway_agent_seconds_bucket{agent=\"t\",le=\"0.01\"} 0\n",
            "wecom_gateway_agent_seconds_bucket{agent=\"t\",le=\"0.025\"} 1\n",
            "wecom_gateway_agent_seconds_bucket{agent=\"t\",le=\"+Inf\"} 1\n",
            "wecom_gateway_agent_seconds_count{agent=\"t\"} 1\n",
        ] {
            assert!(text.contains(present), "no {present:?} in:\n{text}");
        }
    }
}
