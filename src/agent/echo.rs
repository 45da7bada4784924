//! The default agent: proves the path end to end without any model behind it.

use async_trait::async_trait;

use super::{Agent, AgentError, Turn};
use crate::message::MessageKind;

/// Replies to text with exactly the same text, and to anything else with a description of it.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent;

#[async_trait]
impl Agent for EchoAgent {
    fn name(&self) -> &str {
        "echo"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Option<String>, AgentError> {
        Ok(Some(match &turn.message.kind {
            MessageKind::Text { content } => content.clone(),
            _ => format!("Received: {}", turn.message.describe()),
        }))
    }
}
