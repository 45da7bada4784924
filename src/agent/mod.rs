//! Agents: whatever answers a member's message. The trait is the whole contract between the gateway
//! and an agent backend; `build` turns configuration into one.
//!
//! Must never: send to WeCom itself (the worker does), see messages that are not chat turns, or pass
//! the gateway's secrets to an agent.

pub mod answer_text;
pub mod command;
pub mod echo;
pub mod hermes;
pub mod http;
pub mod openai;
pub mod stream;
pub mod turn;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::History;

pub use command::CommandAgentConfig;
pub use echo::EchoAgent;
pub use hermes::HermesConfig;
pub use http::HttpAgentConfig;
pub use openai::OpenAiConfig;
pub use turn::{Agent, AgentError, Partial, SetupError, Turn};

pub const DEFAULT_ACK_MESSAGE: &str = "收到，正在处理…";
pub const DEFAULT_FAILURE_MESSAGE: &str = "抱歉，处理这条消息时出错了，请稍后再试。";
/// Which agent answers, and how the chat feels around it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub kind: AgentKind,
    /// echo only: wait this long before answering (simulates a slow agent).
    pub delay_ms: u64,
    /// Send `ack_message` once if the agent has not answered after this long.
    pub ack_after: Option<Duration>,
    pub ack_message: String,
    /// Withdraw the receipt (message/recall) once the reply is out.
    pub ack_recall: bool,
    /// Sent instead of silence when the agent fails or times out.
    pub failure_message: String,
    /// Which events (besides menu clicks, always) reach the agent.
    pub events: Events,
}

/// `agent.events`: `all`, `none`, or a list of event names as WeCom spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Events {
    All,
    Only(Vec<String>),
}

impl Default for Events {
    /// Clicks on the cards the agent sent: the answer to a card it asked.
    fn default() -> Self {
        Events::Only(vec!["template_card_event".into()])
    }
}

impl Events {
    pub fn allows(&self, event: &str) -> bool {
        match self {
            Events::All => true,
            Events::Only(names) => names.iter().any(|n| n.eq_ignore_ascii_case(event)),
        }
    }
}

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Events::All => f.write_str("all"),
            Events::Only(names) if names.is_empty() => f.write_str("none"),
            Events::Only(names) => write!(f, "{names:?}"),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: AgentKind::Echo,
            delay_ms: 0,
            ack_after: None,
            ack_message: DEFAULT_ACK_MESSAGE.into(),
            ack_recall: false,
            failure_message: DEFAULT_FAILURE_MESSAGE.into(),
            events: Events::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum AgentKind {
    Echo,
    Http(HttpAgentConfig),
    Command(CommandAgentConfig),
    Openai(OpenAiConfig),
    Hermes(HermesConfig),
}

impl AgentConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            AgentKind::Echo => "echo",
            AgentKind::Http(_) => "http",
            AgentKind::Command(_) => "command",
            AgentKind::Openai(_) => "openai",
            AgentKind::Hermes(_) => "hermes",
        }
    }

    /// What would make this agent fail at its first message, found before it starts (for
    /// `check-config`): an openai agent with no key for a model API that is not on this network,
    /// a command whose program is not an executable file.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.kind {
            AgentKind::Openai(c) if c.api_key.is_none() && !is_local(&c.base_url) => {
                problems.push(format!(
                    "kind openai has no API key for {}: set api_key, or api_key_env to a variable that is set (default OPENAI_API_KEY)",
                    c.base_url
                ))
            }
            AgentKind::Command(c) => {
                if let Err(why) = command::executable(&c.program, c.working_dir.as_deref()) {
                    problems.push(format!("program {:?}: {why}", c.program));
                }
            }
            _ => {}
        }
        problems
    }

    /// check-config's YAML lines for this agent (indented by `indent`), secrets hidden.
    pub fn redacted(&self, indent: &str) -> String {
        let mut lines = vec![format!("kind: {}", self.kind_name())];
        match &self.kind {
            AgentKind::Echo => lines.push(format!("delay_ms: {}", self.delay_ms)),
            AgentKind::Http(c) => lines.extend(c.shown()),
            AgentKind::Command(c) => lines.extend(c.shown()),
            AgentKind::Openai(c) => lines.extend(c.shown()),
            AgentKind::Hermes(c) => lines.extend(c.shown()),
        }
        let ack_after = self.ack_after.map(|d| d.as_secs_f64().to_string());
        lines.push(format!(
            "ack_after: {}",
            ack_after.as_deref().unwrap_or("off")
        ));
        if self.ack_recall {
            lines.push("ack_recall: true".into());
        }
        lines.push(format!("events: {}", self.events));
        lines
            .iter()
            .map(|line| format!("{indent}{line}\n"))
            .collect()
    }
}

/// A model API on this machine or a private network (Ollama, vLLM) may need no key.
fn is_local(base_url: &str) -> bool {
    let Some(host) = url::Url::parse(base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => host == "localhost" || !host.contains('.') || host.ends_with(".local"),
    }
}

/// The agent a configuration describes. `store` keeps per-user state (conversation history).
/// `inline_text_bytes` is `media.inline_text_bytes`, for agents that read received text files;
/// `agent_dirs` is `media.agent_dirs`, for model agents whose answers name images there.
pub fn build(
    config: &AgentConfig,
    store: Arc<dyn History>,
    inline_text_bytes: u64,
    agent_dirs: &[PathBuf],
) -> Result<Arc<dyn Agent>, SetupError> {
    Ok(match &config.kind {
        AgentKind::Echo => Arc::new(EchoAgent {
            delay: Duration::from_millis(config.delay_ms),
        }),
        AgentKind::Http(c) => Arc::new(http::HttpAgent::new(c.clone())?),
        AgentKind::Command(c) => Arc::new(command::CommandAgent::new(c.clone())),
        AgentKind::Openai(c) => Arc::new(openai::OpenAiAgent::new(
            c.clone(),
            store,
            inline_text_bytes,
            agent_dirs.to_vec(),
        )?),
        AgentKind::Hermes(c) => Arc::new(hermes::HermesAgent::new(
            c.clone(),
            store,
            agent_dirs.to_vec(),
        )?),
    })
}
