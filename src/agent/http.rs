//! The http agent: POST the turn as JSON to a URL. A 200 with `{"reply": "..."}`,
//! `{"replies": [...]}` or `{"messages": [...]}` is the answer; a 202 or 204 means the agent will answer later through
//! `POST /api/v1/send`. A 200 may also stream its answer (`text/event-stream`, or
//! `application/x-ndjson`: one JSON object per line), shown on the turn's `partial` as it comes.
//!
//! Owns: what a streamed answer's objects mean (`delta`, `text`, an answer document, `error`).
//! Framing is `stream`'s.
//!
//! Must never: retry a 4xx (the agent refused the request) or a stream that broke midway (part of
//! it may have been shown), take a stream that stopped before `data: [DONE]` for a whole answer,
//! or log the configured header values.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::stream::{excerpt, Format, Frames, StreamError, MAX_ANSWER_BYTES};
use super::turn::{answer_from, is_answer, Agent, AgentError, Partial, SetupError, Turn};
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

    async fn once(
        &self,
        body: &Value,
        partial: Option<&Partial>,
    ) -> Result<Vec<AppMessage>, (bool, AgentError)> {
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
        if let Some(format) = stream_format(&response) {
            let timeout = self.config.timeout.as_secs();
            let frames = Frames::new(response, format, MAX_ANSWER_BYTES);
            let read = streamed(frames, format, partial).await.map_err(|e| {
                let e = match e.is_timeout() {
                    true => AgentError::Timeout(timeout),
                    false => AgentError::Failed(format!("agent's streamed answer: {e}")),
                };
                (false, e)
            })?;
            return match read {
                Streamed::Document(doc) => answer_from(&doc).map_err(|e| (false, e)),
                Streamed::Text(text) if text.trim().is_empty() => Ok(Vec::new()),
                Streamed::Text(text) => Ok(vec![AppMessage::text(text.trim())]),
            };
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
                |_| self.once(&body, turn.partial),
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

/// Whether a 200 streams its answer, and how: by its `Content-Type`.
fn stream_format(response: &reqwest::Response) -> Option<Format> {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE)?;
    let media = value.to_str().ok()?.split(';').next()?.trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        Some(Format::Sse)
    } else if media.eq_ignore_ascii_case("application/x-ndjson") {
        Some(Format::Lines)
    } else {
        None
    }
}

/// What a streamed answer came to.
enum Streamed {
    /// The last answer document it carried.
    Document(Value),
    /// No document: the text it wrote.
    Text(String),
}

/// A streamed answer, read to its end: each object is `{"delta": "more"}` (added to the text),
/// `{"text": "all so far"}` (replaces it), an answer document (the answer, the last one winning)
/// or `{"error": ...}` (the agent failed). The answer is the last document if one came, else the
/// text as one text reply. An SSE stream ends at `data: [DONE]`; a line stream at the body's end.
async fn streamed(
    mut frames: Frames,
    format: Format,
    partial: Option<&Partial>,
) -> Result<Streamed, StreamError> {
    let mut text = String::new();
    let mut document = None;
    let sse = format == Format::Sse;
    loop {
        let Some(event) = frames.next().await? else {
            if sse {
                return Err(StreamError::Truncated);
            }
            break;
        };
        match event.name.as_deref() {
            None | Some("message") => {}
            Some("error") => return Err(StreamError::Server(excerpt(&event.data))),
            Some(_) => continue, // progress and the like: not part of the answer
        }
        if sse && event.data.trim() == "[DONE]" {
            break;
        }
        let broken = |why: String| StreamError::Broken {
            line: event.line,
            why,
        };
        let doc: Value =
            serde_json::from_str(&event.data).map_err(|e| broken(format!("not JSON ({e})")))?;
        if !doc.is_object() {
            return Err(broken("not a JSON object".into()));
        }
        if let Some(error) = doc.get("error").filter(|e| !e.is_null()) {
            let message = error.get("message").unwrap_or(error);
            let message = message
                .as_str()
                .map_or_else(|| message.to_string(), str::to_owned);
            return Err(StreamError::Server(excerpt(&message)));
        }
        if is_answer(&doc) {
            document = Some(doc);
            continue;
        }
        let (whole, more) = (doc.get("text"), doc.get("delta"));
        let (whole, more) = (whole.and_then(Value::as_str), more.and_then(Value::as_str));
        let grown = whole.map_or(text.len() + more.map_or(0, str::len), str::len);
        if grown > MAX_ANSWER_BYTES {
            return Err(StreamError::TooLarge(MAX_ANSWER_BYTES));
        }
        match (whole, more) {
            (Some(so_far), _) => {
                text.clear();
                text.push_str(so_far);
                if let Some(partial) = partial {
                    partial.set(so_far);
                }
            }
            (None, Some(more)) => {
                text.push_str(more);
                if let Some(partial) = partial {
                    partial.push(more);
                }
            }
            (None, None) => return Err(broken(
                "has none of \"delta\" (a string), \"text\" (a string), an answer document's keys or \"error\"".into(),
            )),
        }
    }
    Ok(document.map_or(Streamed::Text(text), Streamed::Document))
}
