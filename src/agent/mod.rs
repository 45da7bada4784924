//! Agents: whatever answers a member's message. The trait is the whole contract between the gateway
//! and an agent backend.
//!
//! Must never: send to WeCom itself (the worker does), or see messages that are not chat turns.

pub mod echo;

use async_trait::async_trait;

use crate::message::InboundMessage;

pub use echo::EchoAgent;

/// One member's message, as an agent sees it.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// Name of the app the member wrote to.
    pub app: &'a str,
    pub corp_id: &'a str,
    pub user_id: &'a str,
    /// `corp_id:user_id`: the key for per-user state such as conversation history.
    pub user_key: &'a str,
    pub message: &'a InboundMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("agent timed out after {0} s")]
    Timeout(u64),
    #[error("agent failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;
    /// The reply text for this turn, or `None` for no reply. May take minutes.
    async fn reply(&self, turn: Turn<'_>) -> Result<Option<String>, AgentError>;
}
