//! Group-robot channels (群机器人): their identity, and the alert text formats sent to them.
//!
//! Owns: the one-line-per-part alert format and its Alertmanager rendering.
//!
//! Must never: reveal a robot's webhook key. `Debug` and `Display` show `...key=****`.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configured group robot.
#[derive(Clone)]
pub struct Bot {
    pub name: String,
    key: SecretString,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("name", &self.name)
            .field("webhook_url", &REDACTED_WEBHOOK)
            .finish()
    }
}

/// How a webhook URL is shown anywhere it must be shown.
pub const REDACTED_WEBHOOK: &str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=****";

impl Bot {
    pub fn new(name: impl Into<String>, key: SecretString) -> Self {
        Bot {
            name: name.into(),
            key,
        }
    }

    /// The webhook key, for the one call that must send it.
    pub fn key(&self) -> &str {
        self.key.expose_secret()
    }
}

/// Why a robot's webhook URL was refused; never the URL itself, whose key is the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error(
        "must be the robot's webhook URL, https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
    )]
    NotAUrl,
    #[error("has no key=... parameter; copy the whole webhook URL from the robot's settings")]
    NoKey,
}

/// Pull the `key` out of a robot's webhook URL (`.../cgi-bin/webhook/send?key=...`).
pub fn webhook_key(webhook_url: &str) -> Result<String, WebhookUrlError> {
    let url = url::Url::parse(webhook_url.trim()).map_err(|_| WebhookUrlError::NotAUrl)?;
    url.query_pairs()
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .ok_or(WebhookUrlError::NoKey)
}

/// A notification for a group: `[SEVERITY] subject` / body / `source: ...` / `dedupe: ...`.
/// (The push API reads its fields from its own request body.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alert {
    pub severity: Option<String>,
    pub subject: String,
    pub body: String,
    pub source: String,
    pub dedupe_key: String,
}

impl Alert {
    /// The alert as robot text, one line per part, empty parts left out; severity upper case,
    /// INFO when not given.
    pub fn text(&self) -> String {
        let severity = self
            .severity
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("INFO")
            .to_uppercase();
        let mut lines = vec![match self.subject.trim() {
            "" => format!("[{severity}]"),
            subject => format!("[{severity}] {subject}"),
        }];
        if !self.body.trim().is_empty() {
            lines.push(self.body.trim_end().to_owned());
        }
        if !self.source.trim().is_empty() {
            lines.push(format!("source: {}", self.source.trim()));
        }
        if !self.dedupe_key.trim().is_empty() {
            lines.push(format!("dedupe: {}", self.dedupe_key.trim()));
        }
        lines.join("\n")
    }
}

/// The body Prometheus Alertmanager POSTs to a webhook receiver (version 4).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    pub alerts: Vec<AlertmanagerAlert>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AlertmanagerAlert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl AlertmanagerPayload {
    /// One alert group as one notification:
    ///
    /// ```text
    /// [CRITICAL] FIRING: HighLatency (2 firing, 1 resolved)
    /// FIRING instance=node-01: p99 latency above 1s
    /// FIRING instance=node-03: p99 latency above 1s
    /// RESOLVED instance=node-02: p99 latency above 1s
    /// source: alertmanager
    /// dedupe: {}:{alertname="HighLatency"}
    /// ```
    ///
    /// The severity is the group's `severity` label in upper case (WARNING without one); a group with
    /// nothing firing is headed `[RESOLVED]`. Each alert line shows the labels that set it apart
    /// from the group and its summary (or description). Firing alerts come first.
    pub fn to_alert(&self) -> Alert {
        let name = self
            .group_labels
            .get("alertname")
            .or_else(|| self.common_labels.get("alertname"))
            .cloned()
            .unwrap_or_else(|| "alerts".into());
        let is_firing = |a: &&AlertmanagerAlert| a.status.eq_ignore_ascii_case("firing");
        let firing = self.alerts.iter().filter(is_firing).count();
        let resolved = self.alerts.len() - firing;
        let (severity, subject) = if firing > 0 {
            let severity = self
                .common_labels
                .get("severity")
                .cloned()
                .unwrap_or_else(|| "warning".into());
            let counts = if resolved > 0 {
                format!("{firing} firing, {resolved} resolved")
            } else {
                format!("{firing} firing")
            };
            (severity, format!("FIRING: {name} ({counts})"))
        } else {
            ("resolved".into(), format!("{name} ({resolved} resolved)"))
        };
        let line = |a: &AlertmanagerAlert| {
            let labels: Vec<String> = a
                .labels
                .iter()
                .filter(|(k, _)| !self.common_labels.contains_key(*k) && *k != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let summary = ["summary", "description"]
                .iter()
                .find_map(|k| {
                    a.annotations
                        .get(*k)
                        .or_else(|| self.common_annotations.get(*k))
                })
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            let mut out = if is_firing(&a) {
                "FIRING".to_owned()
            } else {
                "RESOLVED".to_owned()
            };
            if !labels.is_empty() {
                out.push(' ');
                out.push_str(&labels.join(" "));
            }
            if !summary.is_empty() {
                out.push_str(": ");
                out.push_str(&summary);
            }
            out
        };
        let body: Vec<String> = self
            .alerts
            .iter()
            .filter(is_firing)
            .chain(self.alerts.iter().filter(|a| !is_firing(a)))
            .map(line)
            .collect();
        Alert {
            severity: Some(severity),
            subject,
            body: body.join("\n"),
            source: "alertmanager".into(),
            dedupe_key: self.group_key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_matches_the_documented_example() {
        let alert = Alert {
            severity: Some("critical".into()),
            subject: "node-01 swap_high".into(),
            body: "swap_in_pages > 1000 for 5m".into(),
            source: "alert".into(),
            dedupe_key: "alert:swap_high:device=7".into(),
        };
        assert_eq!(
            alert.text(),
            "[CRITICAL] node-01 swap_high\nswap_in_pages > 1000 for 5m\nsource: alert\ndedupe: alert:swap_high:device=7"
        );
        assert_eq!(
            Alert {
                subject: "disk ok".into(),
                ..Alert::default()
            }
            .text(),
            "[INFO] disk ok"
        );
    }

    #[test]
    fn webhook_key_is_extracted_or_the_problem_named() {
        assert_eq!(
            webhook_key("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc-123").unwrap(),
            "abc-123"
        );
        assert!(
            webhook_key("https://qyapi.weixin.qq.com/cgi-bin/webhook/send")
                .unwrap_err()
                .to_string()
                .contains("key=")
        );
        assert!(webhook_key("not a url").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let bot = Bot::new("ops", SecretString::from("s3cret-key"));
        assert!(!format!("{bot:?}").contains("s3cret-key"));
    }
}
