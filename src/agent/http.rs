//! The http agent: POST the turn as JSON to a URL. A 200 with `{"reply": "..."}`,
//! `{"replies": [...]}` or `{"messages": [...]}` is the answer; a 202 or 204 means the agent will answer later through
//! `POST /api/v1/send`.
//!
//! Must never: retry a 4xx (the agent refused the request), or log the configured header values.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::turn::{answer_from, Agent, AgentError, SetupError, Turn};
use crate::retry::RetryPolicy;
use crate::wecom::AppMessage;

/// POST the turn as JSON to `url`.
#[derive(Debug, Clone)]
pub struct HttpAgentConfig {
    pub url: String,
    pub timeout: Duration,
    /// Extra tries on transport errors and HTTP 5xx.
    pub retries: u32,
    /// Sent with every request (e.g. an Authorization header); values are secrets.
    pub headers: Vec<(String, SecretString)>,
}

impl HttpAgentConfig {
    /// check-config's lines: header names, never their values.
    pub(crate) fn shown(&self) -> Vec<String> {
        let (url, timeout) = (&self.url, self.timeout.as_secs());
        let mut lines = vec![format!("url: {url}"), format!("timeout_secs: {timeout}")];
        lines.push(format!("retries: {}", self.retries));
        let headers = self
            .headers
            .iter()
            .map(|(name, _)| format!("headers.{name}: '****'"));
        lines.extend(headers);
        lines
    }
}

pub struct HttpAgent {
    http: reqwest::Client,
    config: HttpAgentConfig,
    retry: RetryPolicy,
}

/// The wait before the first retry of a failed agent call; it doubles, up to `RETRY_MAX`.
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl HttpAgent {
    pub fn new(config: HttpAgentConfig) -> Result<Self, SetupError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| SetupError::HeaderName(name.clone()))?;
            let mut value = HeaderValue::from_str(value.expose_secret())
                .map_err(|_| SetupError::HeaderValue(name.to_string()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .default_headers(headers)
            .user_agent(concat!("wecom-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::Client)?;
        let retry = RetryPolicy {
            max_attempts: config.retries + 1,
            base: RETRY_BASE,
            max: RETRY_MAX,
        };
        Ok(HttpAgent {
            http,
            config,
            retry,
        })
    }

    async fn once(&self, body: &Value) -> Result<Vec<AppMessage>, (bool, AgentError)> {
        let response = match self.http.post(&self.config.url).json(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err((false, AgentError::Timeout(self.config.timeout.as_secs())))
            }
            Err(e) => {
                return Err((
                    true,
                    AgentError::Failed(format!("cannot reach the agent: {}", e.without_url())),
                ))
            }
        };
        let status = response.status();
        match status.as_u16() {
            200 => {}
            // Accepted: the agent answers later through the push API.
            202 | 204 => return Ok(Vec::new()),
            code => {
                let retry = status.is_server_error();
                let text = response.text().await.unwrap_or_default();
                let excerpt: String = text.chars().take(200).collect();
                return Err((
                    retry,
                    AgentError::Failed(format!("agent answered HTTP {code}: {excerpt}")),
                ));
            }
        }
        let doc: Value = response.json().await.map_err(|e| {
            (
                false,
                AgentError::Failed(format!(
                    "agent's 200 answer is not JSON: {}",
                    e.without_url()
                )),
            )
        })?;
        answer_from(&doc).map_err(|e| (false, e))
    }
}

#[async_trait]
impl Agent for HttpAgent {
    fn name(&self) -> &str {
        "http"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let body = turn.to_json();
        let (result, _) = self
            .retry
            .run(
                |_| self.once(&body),
                |(retryable, _)| *retryable,
                |(_, e), attempt, delay| {
                    tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "http agent failed; retrying");
                    true
                },
            )
            .await;
        result.map_err(|(_, e)| e)
    }
}
