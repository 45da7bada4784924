//! Agent configuration: the `agent:` section (and `apps[i].agent:` overrides), and what makes it
//! valid.
//!
//! Must never: print a header value or API key (they are secrets).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;
use secrecy::SecretString;

use crate::config::{base_url, http_url, kind, num, secs, text, Check, Section};

pub const DEFAULT_ACK_MESSAGE: &str = "收到，正在处理…";
pub const DEFAULT_FAILURE_MESSAGE: &str = "抱歉，处理这条消息时出错了，请稍后再试。";
/// The environment variable the openai agent reads its key from when `api_key_env` is not set.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// How long http, command and openai agents may take when `timeout_secs` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Run `program` per message with the turn as JSON on stdin; stdout is the reply. `Debug` shows
/// the names of `env`, not its values (an API key for the script, say).
#[derive(Clone)]
pub struct CommandAgentConfig {
    pub program: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    /// Added to a minimal environment (PATH, HOME, LANG): the gateway's own variables, secrets
    /// included, are not passed on.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

impl std::fmt::Debug for CommandAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("CommandAgentConfig")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("env", &env)
            .field("working_dir", &self.working_dir)
            .finish()
    }
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
        let mut out = format!("kind: {}\n", self.kind_name());
        let _ = match &self.kind {
            AgentKind::Echo => writeln!(out, "delay_ms: {}", self.delay_ms),
            AgentKind::Http(c) => {
                let _ = writeln!(out, "url: {}\ntimeout_secs: {}", c.url, c.timeout.as_secs());
                let _ = writeln!(out, "retries: {}", c.retries);
                (c.headers.iter()).try_for_each(|(name, _)| writeln!(out, "headers.{name}: '****'"))
            }
            AgentKind::Command(c) => {
                let _ = writeln!(out, "program: {}\nargs: {:?}", c.program, c.args);
                let _ = writeln!(out, "timeout_secs: {}", c.timeout.as_secs());
                let names: Vec<&str> = c.env.iter().map(|(k, _)| k.as_str()).collect();
                let _ = writeln!(out, "env: {names:?} (values hidden)");
                (c.working_dir.iter())
                    .try_for_each(|d| writeln!(out, "working_dir: {}", d.display()))
            }
            AgentKind::Openai(c) => {
                let _ = writeln!(out, "base_url: {}\nmodel: {}", c.base_url, c.model);
                let key = c.api_key.as_ref().map_or("none", |_| "'****'");
                let _ = writeln!(out, "api_key: {key}\ntimeout_secs: {}", c.timeout.as_secs());
                let _ = writeln!(out, "history_turns: {}", c.history_turns);
                writeln!(out, "history_chars: {}", c.history_chars)
            }
        };
        let ack_after = self.ack_after.map(|d| d.as_secs_f64().to_string());
        let _ = writeln!(out, "ack_after: {}", ack_after.as_deref().unwrap_or("off"));
        out.lines()
            .map(|line| format!("{indent}{line}\n"))
            .collect()
    }
}

/// Every key of an agent section; each kind reads the ones it uses, so an echo agent's stray
/// timeout_secs stays harmless.
const KEYS: &str = "kind delay_ms url timeout_secs retries headers program args env working_dir \
    base_url model api_key api_key_env system_prompt temperature max_tokens history_turns \
    history_chars ack_after ack_message failure_message";

/// Validate the agent section at `key` of `parent` (`agent`, `apps[1].agent`); `base` is the global
/// agent an app's override inherits its chat settings from.
pub(crate) fn validate(
    c: &mut Check,
    parent: &Section,
    key: &str,
    base: Option<&AgentConfig>,
) -> AgentConfig {
    let inherited = base.cloned().unwrap_or_default();
    if let Some(v) = parent.get(key).filter(|v| !matches!(v, Value::Dict(..))) {
        let reason = format!("must be a mapping such as {{kind: echo}}, got {}", kind(v));
        c.err(&parent.field(key), reason);
        return inherited;
    }
    let Some(s) = c.section(parent, key, KEYS) else {
        return inherited;
    };
    let timeout = |c: &mut Check| c.get(&s, "timeout_secs", DEFAULT_TIMEOUT, secs(1, 86_400));
    let kind = c.opt(&s, "kind", |k| Ok(k.to_ascii_lowercase()));
    let kind = match kind.as_deref().unwrap_or("echo") {
        "echo" => AgentKind::Echo,
        "http" => AgentKind::Http(HttpAgentConfig {
            url: c.req(&s, "url", http_url).unwrap_or_default(),
            timeout: timeout(c),
            retries: c.get(&s, "retries", 2, num(0, 10)),
            headers: pairs(c, &s, "headers", SecretString::from),
        }),
        "command" => AgentKind::Command(CommandAgentConfig {
            program: c.req(&s, "program", text).unwrap_or_default(),
            // A list is kept as given (arguments may hold commas); text is split at whitespace.
            args: c.list(&s, "args", char::is_whitespace, text),
            timeout: timeout(c),
            env: pairs(c, &s, "env", String::from),
            working_dir: c.opt(&s, "working_dir", |d| Ok(PathBuf::from(d))),
        }),
        "openai" => {
            let env = c.env.clone();
            let from_env = |var: &str| env.get(var).filter(|v| !v.is_empty()).cloned();
            let unset = |var: &str| format!("the environment variable {var} is not set");
            let api_key = (c.opt(&s, "api_key", text))
                .or_else(|| c.opt(&s, "api_key_env", |v| from_env(v).ok_or_else(|| unset(v))))
                .or_else(|| from_env(DEFAULT_API_KEY_ENV));
            let temperature = |t: &str| match t.parse() {
                Ok(v) if (0.0..=2.0).contains(&v) => Ok(v),
                _ => Err(format!("must be a number from 0 to 2, got {t:?}")),
            };
            AgentKind::Openai(OpenAiConfig {
                base_url: c.req(&s, "base_url", base_url).unwrap_or_default(),
                model: c.req(&s, "model", text).unwrap_or_default(),
                api_key: api_key.map(SecretString::from),
                system_prompt: c.opt(&s, "system_prompt", text),
                temperature: c.opt(&s, "temperature", temperature),
                max_tokens: c.opt(&s, "max_tokens", num(1, 1_000_000)),
                timeout: timeout(c),
                history_turns: c.get(&s, "history_turns", 10, num(0, 1000)),
                history_chars: c.get(&s, "history_chars", 16_000, num(0, 10_000_000)),
            })
        }
        other => {
            let reason = format!("must be echo, http, command or openai, got {other:?}");
            c.err(&s.field("kind"), reason);
            AgentKind::Echo
        }
    };
    // Seconds, fractional; 0 turns the receipt off.
    let ack_after = |t: &str| match t.parse::<f64>() {
        Ok(0.0) => Ok(None),
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Some(Duration::from_secs_f64(v))),
        _ => Err(format!("must be seconds from 0 (off) to 3600, got {t:?}")),
    };
    AgentConfig {
        kind,
        delay_ms: c.get(&s, "delay_ms", 0, num(0, 86_400_000)),
        ack_after: c.get(&s, "ack_after", inherited.ack_after, ack_after),
        ack_message: c.get(&s, "ack_message", inherited.ack_message, text),
        failure_message: c.get(&s, "failure_message", inherited.failure_message, text),
    }
}

/// A mapping of names to text values (headers, environment variables); empty values are kept,
/// since an empty variable or header may be meant.
fn pairs<T>(c: &mut Check, s: &Section, key: &str, into: fn(String) -> T) -> Vec<(String, T)> {
    let field = s.field(key);
    let map = c.mapping(&field, s.get(key)).unwrap_or_default();
    let mut value = |name: &String, v| c.text(&format!("{field}.{name}"), Some(v)).map(into);
    (map.iter())
        .filter_map(|(name, v)| Some((name.clone(), value(name, v)?)))
        .collect()
}
