//! The openai agent: an OpenAI-compatible `/chat/completions` endpoint (OpenAI, DeepSeek, Qwen, vLLM,
//! Ollama, ...), with per-user conversation history kept in the gateway's store.
//!
//! Owns: the chat commands (/reset, /new, /help), how history is bounded (turns and characters),
//! how non-text messages become text for the model, and the `/chat/completions` call the hermes
//! agent shares. What an answer's text becomes (text and images) is `answer_text`'s.
//!
//! Must never: log or echo the API key, or mix one user's history into another's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::answer_text;
use super::stream::{join, Deltas, StreamError, MAX_ANSWER_BYTES};
use super::turn::{Agent, AgentError, SetupError, Turn};
use crate::conversation::{Fetched, MediaInfo};
use crate::message::MessageKind;
use crate::store::{History, HistoryEntry, Role};
use crate::wecom::AppMessage;

pub const HELP: &str = "可用命令 Commands:\n/reset 或 /new — 清空对话历史，开始新的对话 (start over)\n/help — 显示本帮助 (this help)";
pub const RESET_DONE: &str = "已清空对话历史，我们重新开始吧。(Conversation cleared.)";

/// An OpenAI-compatible `/chat/completions` endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Up to and including `/v1`, e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub timeout: Duration,
    /// Past exchanges (a question and its answer) sent with each request.
    pub history_turns: usize,
    /// And at most this many characters of them.
    pub history_chars: usize,
    /// Send images to the model as image parts (many models refuse them, so off by default).
    pub vision: bool,
}

/// check-config's lines for a model API (openai and hermes agents): whether there is an API key,
/// never the key.
pub(crate) fn api_lines(
    base_url: &str,
    model: &str,
    api_key: Option<&SecretString>,
    timeout: Duration,
) -> Vec<String> {
    let key = if api_key.is_some() { "'****'" } else { "none" };
    vec![
        format!("base_url: {base_url}"),
        format!("model: {model}"),
        format!("api_key: {key}"),
        format!("timeout_secs: {}", timeout.as_secs()),
    ]
}

/// The HTTP client for a model API: the agent's timeout bounds a whole turn.
pub(crate) fn api_client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("wecom-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SetupError::Client)
}

impl OpenAiConfig {
    /// check-config's lines: whether there is an API key, never the key.
    pub(crate) fn shown(&self) -> Vec<String> {
        let (key, timeout) = (self.api_key.as_ref(), self.timeout);
        let mut lines = api_lines(&self.base_url, &self.model, key, timeout);
        lines.extend([
            format!("history_turns: {}", self.history_turns),
            format!("history_chars: {}", self.history_chars),
            format!("vision: {}", self.vision),
        ]);
        lines
    }
}

pub struct OpenAiAgent {
    http: reqwest::Client,
    config: OpenAiConfig,
    store: Arc<dyn History>,
    /// Text-like files up to this size go to the model inline (`media.inline_text_bytes`).
    inline_text_bytes: u64,
    /// An answer's images by path are sent from these (`media.agent_dirs`).
    agent_dirs: Vec<PathBuf>,
}

/// Whether a received file is text the model can read inline.
fn is_text(media: &MediaInfo) -> bool {
    let content_type = media.content_type.as_deref().unwrap_or("");
    let ext = (media.file_name.as_deref())
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    content_type.starts_with("text/")
        || ["application/json", "application/csv", "application/x-yaml"].contains(&content_type)
        || ext.is_some_and(|e| {
            ["txt", "md", "csv", "json", "log", "yaml", "yml", "tsv"].contains(&e.as_str())
        })
}

/// A `/chat/completions` answer: its text and the response's headers (Hermes names the session
/// it used in one).
pub(crate) struct Completion {
    /// The answer's text (`choices[0].message.content`, or the streamed deltas joined), trimmed.
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

/// One `/chat/completions` call, streamed (`stream: true` is added to `body`): the answer's text,
/// trimmed, and the response's headers. A server that ignores `stream` and answers
/// `application/json` is read as a whole answer (`choices[0].message.content`). Shared by the
/// openai and hermes agents; the key and headers are never logged.
///
/// The client's timeout bounds the whole call, body included: when it strikes, the response is
/// dropped and its connection closed, which is what makes a streaming server (Hermes) stop the
/// run instead of finishing it into the member's session.
pub(crate) async fn chat_completion(
    http: &reqwest::Client,
    url: &str,
    key: Option<&SecretString>,
    body: &Value,
    headers: &[(&str, String)],
    timeout: Duration,
    partial: Option<&crate::agent::Partial>,
) -> Result<Completion, AgentError> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let mut request = http.post(url).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key.expose_secret());
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let timed_out = || AgentError::Timeout(timeout.as_secs());
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            timed_out()
        } else {
            AgentError::Failed(format!("cannot reach the model API: {}", e.without_url()))
        }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    if !status.is_success() {
        // An error page may be anything: its message is shown only when it is JSON.
        let doc = whole_json(response, ERROR_BYTES)
            .await
            .unwrap_or(Value::Null);
        let message = doc["error"]["message"].as_str().unwrap_or("");
        let message = message.chars().take(200).collect::<String>();
        return Err(AgentError::Failed(format!(
            "model API answered HTTP {}: {message}",
            status.as_u16()
        )));
    }
    let unread = |e: StreamError| match e.is_timeout() {
        true => timed_out(),
        false => AgentError::Failed(format!("model API answer: {e}")),
    };
    let streamed = (response.headers().get(reqwest::header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let answer = if streamed {
        let deltas = Deltas::new(response, MAX_ANSWER_BYTES);
        join(deltas, MAX_ANSWER_BYTES, partial)
            .await
            .map_err(unread)?
    } else {
        let doc = whole_json(response, MAX_ANSWER_BYTES)
            .await
            .map_err(unread)?;
        let content = doc["choices"][0]["message"]["content"].as_str();
        content.map(str::to_owned).ok_or_else(|| {
            AgentError::Failed("model API answer has no choices[0].message.content".into())
        })?
    };
    Ok(Completion {
        text: answer.trim().to_owned(),
        headers,
    })
}

/// How much of an error answer is read for its message.
const ERROR_BYTES: usize = 64 << 10;

/// A body that is not a stream, as JSON (`Null` when it is not JSON: an error page), read up to
/// `limit` bytes.
async fn whole_json(mut response: reqwest::Response, limit: usize) -> Result<Value, StreamError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(StreamError::body)? {
        if bytes.len() + chunk.len() > limit {
            return Err(StreamError::TooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

impl OpenAiAgent {
    pub fn new(
        config: OpenAiConfig,
        store: Arc<dyn History>,
        inline_text_bytes: u64,
        agent_dirs: Vec<PathBuf>,
    ) -> Result<Self, SetupError> {
        let http = api_client(config.timeout)?;
        Ok(OpenAiAgent {
            http,
            config,
            store,
            inline_text_bytes,
            agent_dirs,
        })
    }

    /// The user's message for the model: the text, plus the received file when the model can take
    /// it (an image with `vision`, a text file within `media.inline_text_bytes`).
    async fn content(&self, text: &str, media: Option<&Fetched>) -> Value {
        let Some(info) = media.filter(|m| m.error.is_none()).map(|m| &m.info) else {
            return json!(text);
        };
        let (Some(path), Some(size)) = (&info.path, info.size) else {
            return json!(text);
        };
        if info.kind == "image" && self.config.vision {
            if let Ok(bytes) = tokio::fs::read(path).await {
                let content_type = info.content_type.as_deref().unwrap_or("image/jpeg");
                let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                let url = format!("data:{content_type};base64,{data}");
                return json!([
                    { "type": "text", "text": text },
                    { "type": "image_url", "image_url": { "url": url } },
                ]);
            }
        } else if is_text(info) && size <= self.inline_text_bytes {
            if let Ok(Ok(contents)) = tokio::fs::read(path).await.map(String::from_utf8) {
                let name = info.file_name.as_deref().unwrap_or("file");
                return json!(format!("{text}\n\n--- {name} ---\n{contents}"));
            }
        }
        json!(text)
    }

    fn storage(e: impl std::fmt::Display) -> AgentError {
        AgentError::Failed(format!("conversation history: {e}"))
    }

    /// The stored history, newest kept, within the turn and character bounds.
    async fn bounded_history(&self, user_key: &str) -> Result<Vec<HistoryEntry>, AgentError> {
        let mut entries = self
            .store
            .history(user_key, self.config.history_turns * 2)
            .await
            .map_err(Self::storage)?;
        let mut total: usize = entries.iter().map(|e| e.content.chars().count()).sum();
        while total > self.config.history_chars && !entries.is_empty() {
            total -= entries.remove(0).content.chars().count();
        }
        // Never start with a dangling answer.
        while entries.first().is_some_and(|e| e.role != Role::User) {
            entries.remove(0);
        }
        Ok(entries)
    }
}

#[async_trait]
impl Agent for OpenAiAgent {
    fn name(&self) -> &str {
        "openai"
    }

    /// A model sees a card click as `[card click] KEY`; other events mean nothing to it.
    fn takes_event(&self, event: &str) -> bool {
        event == "template_card_event"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let text = match &turn.message.kind {
            MessageKind::Text { content } => content.clone(),
            // The model sees a short description of what arrived (e.g. "[image] https://...").
            _ => turn.message.describe(),
        };
        match text.trim() {
            "/reset" | "/new" => {
                self.store
                    .clear_history(turn.user_key)
                    .await
                    .map_err(Self::storage)?;
                return Ok(vec![AppMessage::text(RESET_DONE)]);
            }
            "/help" => return Ok(vec![AppMessage::text(HELP)]),
            _ => {}
        }
        let mut messages = Vec::new();
        if let Some(prompt) = &self.config.system_prompt {
            messages.push(json!({ "role": "system", "content": prompt }));
        }
        for e in self.bounded_history(turn.user_key).await? {
            messages.push(json!({ "role": e.role.as_str(), "content": e.content }));
        }
        let content = self.content(&text, turn.media).await;
        messages.push(json!({ "role": "user", "content": content }));
        let mut body = json!({ "model": self.config.model, "messages": messages });
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.config.max_tokens {
            body["max_tokens"] = json!(m);
        }
        let url = format!("{}/chat/completions", self.config.base_url);
        let key = self.config.api_key.as_ref();
        let timeout = self.config.timeout;
        let answer = chat_completion(&self.http, &url, key, &body, &[], timeout, turn.partial)
            .await?
            .text;
        if answer.is_empty() {
            return Ok(Vec::new());
        }
        let replies = answer_text::messages(&answer, &self.agent_dirs);
        self.store
            .append_history(
                turn.user_key,
                vec![
                    HistoryEntry {
                        role: Role::User,
                        content: text,
                    },
                    HistoryEntry {
                        role: Role::Assistant,
                        content: answer_text::history_text(&replies),
                    },
                ],
                self.config.history_turns * 2,
            )
            .await
            .map_err(Self::storage)?;
        Ok(replies)
    }
}
