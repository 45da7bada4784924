//! Agent configuration: the `agent:` section (and `apps[i].agent:` overrides), read and validated
//! with every problem named.
//!
//! Must never: print a header value or API key (they are secrets).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;
use secrecy::SecretString;

use crate::config::Reader;

pub const DEFAULT_ACK_MESSAGE: &str = "收到，正在处理…";
pub const DEFAULT_FAILURE_MESSAGE: &str = "抱歉，处理这条消息时出错了，请稍后再试。";
/// The environment variable the openai agent reads its key from when `api_key_env` is not set.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

pub const AGENT_KEYS: &[&str] = &[
    "kind",
    "delay_ms",
    "url",
    "timeout_secs",
    "retries",
    "headers",
    "program",
    "args",
    "env",
    "working_dir",
    "base_url",
    "model",
    "api_key",
    "api_key_env",
    "system_prompt",
    "temperature",
    "max_tokens",
    "history_turns",
    "history_chars",
    "ack_after",
    "ack_message",
    "failure_message",
];

/// Which agent answers, and how the chat feels around it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub kind: AgentKind,
    /// echo only: wait this long before answering (simulates a slow agent).
    pub delay_ms: u64,
    /// Send `ack_message` once if the agent has not answered after this long.
    pub ack_after: Option<Duration>,
    pub ack_message: String,
    /// Sent instead of silence when the agent fails or times out.
    pub failure_message: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: AgentKind::Echo,
            delay_ms: 0,
            ack_after: None,
            ack_message: DEFAULT_ACK_MESSAGE.into(),
            failure_message: DEFAULT_FAILURE_MESSAGE.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum AgentKind {
    Echo,
    Http(HttpAgentConfig),
    Command(CommandAgentConfig),
    Openai(OpenAiConfig),
}

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

/// Run `program` per message with the turn as JSON on stdin; stdout is the reply.
#[derive(Debug, Clone)]
pub struct CommandAgentConfig {
    pub program: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    /// Added to a minimal environment (PATH, HOME, LANG): the gateway's own variables, secrets
    /// included, are not passed on.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

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
}

impl AgentConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            AgentKind::Echo => "echo",
            AgentKind::Http(_) => "http",
            AgentKind::Command(_) => "command",
            AgentKind::Openai(_) => "openai",
        }
    }

    /// YAML lines (indented by `indent`) with secrets hidden.
    pub fn redacted(&self, indent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{indent}kind: {}", self.kind_name());
        match &self.kind {
            AgentKind::Echo => {
                let _ = writeln!(out, "{indent}delay_ms: {}", self.delay_ms);
            }
            AgentKind::Http(c) => {
                let _ = writeln!(out, "{indent}url: {}", c.url);
                let _ = writeln!(out, "{indent}timeout_secs: {}", c.timeout.as_secs());
                let _ = writeln!(out, "{indent}retries: {}", c.retries);
                for (name, _) in &c.headers {
                    let _ = writeln!(out, "{indent}headers.{name}: '****'");
                }
            }
            AgentKind::Command(c) => {
                let _ = writeln!(out, "{indent}program: {}", c.program);
                let _ = writeln!(out, "{indent}args: {:?}", c.args);
                let _ = writeln!(out, "{indent}timeout_secs: {}", c.timeout.as_secs());
                let names: Vec<&str> = c.env.iter().map(|(k, _)| k.as_str()).collect();
                let _ = writeln!(out, "{indent}env: {names:?} (values hidden)");
                if let Some(d) = &c.working_dir {
                    let _ = writeln!(out, "{indent}working_dir: {}", d.display());
                }
            }
            AgentKind::Openai(c) => {
                let _ = writeln!(out, "{indent}base_url: {}", c.base_url);
                let _ = writeln!(out, "{indent}model: {}", c.model);
                let key = if c.api_key.is_some() {
                    "'****'"
                } else {
                    "none"
                };
                let _ = writeln!(out, "{indent}api_key: {key}");
                let _ = writeln!(out, "{indent}timeout_secs: {}", c.timeout.as_secs());
                let _ = writeln!(out, "{indent}history_turns: {}", c.history_turns);
                let _ = writeln!(out, "{indent}history_chars: {}", c.history_chars);
            }
        }
        match self.ack_after {
            Some(d) => {
                let _ = writeln!(out, "{indent}ack_after: {}", d.as_secs_f64());
            }
            None => {
                let _ = writeln!(out, "{indent}ack_after: off");
            }
        }
        out
    }
}

/// Read an agent section. `prefix` names it in errors (`agent`, `apps[1].agent`); `base` is the
/// global section an app's override inherits its chat settings from; `env` is the process
/// environment, for `api_key_env`.
pub(crate) fn read(
    value: Option<&Value>,
    prefix: &str,
    r: &mut Reader<'_>,
    warnings: &mut Vec<String>,
    env: &BTreeMap<String, String>,
    base: Option<&AgentConfig>,
) -> Option<AgentConfig> {
    let defaults = base.cloned().unwrap_or_default();
    let d: &BTreeMap<String, Value> = match value {
        None | Some(Value::Empty(..)) => return Some(defaults),
        Some(Value::Dict(_, d)) => d,
        Some(other) => {
            r.err(
                prefix,
                format!(
                    "must be a mapping such as {{kind: echo}}, got {}",
                    other.to_actual()
                ),
            );
            return None;
        }
    };
    for key in d.keys() {
        if !AGENT_KEYS.contains(&key.as_str()) {
            warnings.push(format!("{prefix}.{key}: unknown key, ignored"));
        }
    }
    let f = |k: &str| format!("{prefix}.{k}");
    let secs = |r: &mut Reader<'_>, key: &str, default: u64| -> Option<Duration> {
        if d.contains_key(key) {
            r.number::<u64>(d, key, &f(key), 1, 86_400)
                .map(Duration::from_secs)
        } else {
            Some(Duration::from_secs(default))
        }
    };
    let text = |r: &mut Reader<'_>, key: &str| r.string(d, key, &f(key)).filter(|s| !s.is_empty());

    let kind_name = text(r, "kind").unwrap_or_else(|| "echo".into());
    let kind = match kind_name.to_ascii_lowercase().as_str() {
        "echo" => Some(AgentKind::Echo),
        "http" => {
            let url = r
                .required(d, "url", &f("url"))
                .and_then(|u| match url::Url::parse(&u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") => Some(u),
                    _ => {
                        r.err(
                            &f("url"),
                            format!("must be an http:// or https:// URL, got {u:?}"),
                        );
                        None
                    }
                });
            let timeout = secs(r, "timeout_secs", 120);
            let retries = if d.contains_key("retries") {
                r.number::<u32>(d, "retries", &f("retries"), 0, 10)
            } else {
                Some(2)
            };
            let headers = r.map(d, "headers", &f("headers"));
            match (url, timeout, retries) {
                (Some(url), Some(timeout), Some(retries)) => {
                    Some(AgentKind::Http(HttpAgentConfig {
                        url,
                        timeout,
                        retries,
                        headers: headers
                            .into_iter()
                            .map(|(k, v)| (k, SecretString::from(v)))
                            .collect(),
                    }))
                }
                _ => None,
            }
        }
        "command" => {
            let program = r.required(d, "program", &f("program"));
            let args = r.list_raw(d, "args", &f("args"));
            let timeout = secs(r, "timeout_secs", 120);
            let env_vars = r.map(d, "env", &f("env"));
            let working_dir = text(r, "working_dir").map(PathBuf::from);
            match (program, timeout) {
                (Some(program), Some(timeout)) => Some(AgentKind::Command(CommandAgentConfig {
                    program,
                    args,
                    timeout,
                    env: env_vars,
                    working_dir,
                })),
                _ => None,
            }
        }
        "openai" => {
            let base_url = r.required(d, "base_url", &f("base_url")).and_then(|u| match url::Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") => Some(u.trim_end_matches('/').to_owned()),
                _ => {
                    r.err(&f("base_url"), format!("must be an http:// or https:// URL such as https://api.openai.com/v1, got {u:?}"));
                    None
                }
            });
            let model = r.required(d, "model", &f("model"));
            let api_key = match (text(r, "api_key"), text(r, "api_key_env")) {
                (Some(key), _) => Some(SecretString::from(key)),
                (None, Some(var)) => match env.get(&var).filter(|v| !v.is_empty()) {
                    Some(v) => Some(SecretString::from(v.clone())),
                    None => {
                        r.err(
                            &f("api_key_env"),
                            format!("the environment variable {var} is not set"),
                        );
                        None
                    }
                },
                (None, None) => env
                    .get(DEFAULT_API_KEY_ENV)
                    .filter(|v| !v.is_empty())
                    .map(|v| SecretString::from(v.clone())),
            };
            let temperature = text(r, "temperature").and_then(|t| match t.parse::<f64>() {
                Ok(v) if (0.0..=2.0).contains(&v) => Some(v),
                _ => {
                    r.err(
                        &f("temperature"),
                        format!("must be a number from 0 to 2, got {t:?}"),
                    );
                    None
                }
            });
            let max_tokens = if d.contains_key("max_tokens") {
                r.number::<u32>(d, "max_tokens", &f("max_tokens"), 1, 1_000_000)
            } else {
                None
            };
            let timeout = secs(r, "timeout_secs", 120);
            let history_turns = if d.contains_key("history_turns") {
                r.number::<usize>(d, "history_turns", &f("history_turns"), 0, 1000)
            } else {
                Some(10)
            };
            let history_chars = if d.contains_key("history_chars") {
                r.number::<usize>(d, "history_chars", &f("history_chars"), 0, 10_000_000)
            } else {
                Some(16_000)
            };
            let system_prompt = text(r, "system_prompt");
            match (base_url, model, timeout, history_turns, history_chars) {
                (
                    Some(base_url),
                    Some(model),
                    Some(timeout),
                    Some(history_turns),
                    Some(history_chars),
                ) => Some(AgentKind::Openai(OpenAiConfig {
                    base_url,
                    model,
                    api_key,
                    system_prompt,
                    temperature,
                    max_tokens,
                    timeout,
                    history_turns,
                    history_chars,
                })),
                _ => None,
            }
        }
        other => {
            r.err(
                &f("kind"),
                format!("must be echo, http, command or openai, got {other:?}"),
            );
            None
        }
    };
    let delay_ms = if d.contains_key("delay_ms") {
        r.number::<u64>(d, "delay_ms", &f("delay_ms"), 0, 86_400_000)?
    } else {
        0
    };
    let ack_after = match text(r, "ack_after") {
        None => defaults.ack_after,
        Some(t) => match t.parse::<f64>() {
            Ok(0.0) => None,
            Ok(v) if v > 0.0 && v <= 3600.0 => Some(Duration::from_secs_f64(v)),
            _ => {
                r.err(
                    &f("ack_after"),
                    format!("must be seconds from 0 (off) to 3600, got {t:?}"),
                );
                None
            }
        },
    };
    let ack_message = text(r, "ack_message").unwrap_or(defaults.ack_message);
    let failure_message = text(r, "failure_message").unwrap_or(defaults.failure_message);
    Some(AgentConfig {
        kind: kind?,
        delay_ms,
        ack_after,
        ack_message,
        failure_message,
    })
}
