//! The default agent: proves the path end to end without any model behind it.

use std::time::Duration;

use async_trait::async_trait;

use super::turn::{Agent, AgentError, Turn};
use crate::message::MessageKind;
use crate::wecom::AppMessage;

/// Replies to text with exactly the same text, and to anything else with a description of it.
/// An optional delay makes it a stand-in for a slow agent.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent {
    pub delay: Duration,
}

#[async_trait]
impl Agent for EchoAgent {
    fn name(&self) -> &str {
        "echo"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(vec![AppMessage::text(match &turn.message.kind {
            MessageKind::Text { content } => content.clone(),
            _ => format!("Received: {}", turn.message.describe()),
        })])
    }
}
