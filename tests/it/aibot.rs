//! WeCom AI bots (智能机器人) over the long connection, against the test double of WeCom's
//! endpoint (`support::aibot`): subscribing and reconnecting, streamed replies that grow while
//! the agent writes, groups and mentions, the allowlists, and what the member sees when the
//! bubble cannot be finished.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use wecom_gateway::agent::{Agent, AgentError, Turn};
use wecom_gateway::aibot::settings::{AiBotConfig, Chats, GroupSession, Mode};
use wecom_gateway::config::{Allowlist, Config};
use wecom_gateway::wecom::AppMessage;

use crate::support::aibot::*;
use crate::support::*;

pub const BOT_ID: &str = "aib-test-1";
pub const SECRET: &str = "aibot-secret-value-1";

/// A bot on `fake`, open to everyone and every group, with an in-process config.
pub fn aibot_config(fake: &FakeAiBot) -> Config {
    fake.add_bot(BOT_ID, SECRET);
    let mut config = config(&[], "http://127.0.0.1:9");
    config.aibots.push(AiBotConfig {
        name: "helper".into(),
        bot_id: BOT_ID.into(),
        mode: Mode::LongConnection {
            secret: SECRET.into(),
        },
        allowlist: Allowlist {
            allow_all: true,
            users: vec![],
        },
        chats: Chats {
            all: true,
            ids: vec![],
        },
        group_session: GroupSession::Member,
        welcome: Some("你好，我是助手".into()),
        agent: None,
    });
    config.aibot.ws_url = fake.url();
    config.aibot.update_every = Duration::from_millis(50);
    config
}

/// An agent that writes its answer in pieces, each only once the test lets it (a permit per
/// piece): the test sees each update before the next piece exists.
pub struct Writing {
    pub pieces: Vec<String>,
    pub gate: Arc<Semaphore>,
}

#[async_trait]
impl Agent for Writing {
    fn name(&self) -> &str {
        "writing"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        for piece in &self.pieces {
            self.gate.acquire().await.map_err(|e| AgentError::Failed(e.to_string()))?.forget();
            if let Some(partial) = turn.partial {
                partial.push(piece);
            }
        }
        Ok(vec![AppMessage::text(self.pieces.concat())])
    }
}

#[tokio::test]
async fn a_message_gets_a_streamed_reply_that_grows_while_the_agent_writes() {
    let fake = FakeAiBot::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let pieces: Vec<String> = ["第一段。", "第二段。", "第三段。"].map(String::from).to_vec();
    let agent = Writing { pieces: pieces.clone(), gate: gate.clone() };
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(agent)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;

    let sent = fake.inject_text(BOT_ID, "zhangsan", "写三段").await;
    // The placeholder at once, then each piece as it is written: the bubble grows.
    let mut expected = vec!["思考中…".to_owned()];
    wait_for_updates(&fake, &sent.req_id, &expected).await;
    let mut so_far = String::new();
    for piece in &pieces {
        gate.add_permits(1);
        so_far.push_str(piece);
        expected.push(so_far.clone());
        wait_for_updates(&fake, &sent.req_id, &expected).await;
    }
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert_eq!(bubble.content, pieces.concat());
    assert_eq!(fake.bubbles(&sent.req_id).len(), 1, "one bubble");
    let finishes = fake
        .replies(&sent.req_id)
        .iter()
        .filter(|r| r["stream"]["finish"] == true)
        .count();
    assert_eq!(finishes, 1, "finished once");
    assert!(fake.pushed("zhangsan").is_empty(), "nothing sent beside the bubble");
    app.stop().await;
}

/// Wait until the bubble's accepted updates are `expected` (in order, the last the newest).
async fn wait_for_updates(fake: &FakeAiBot, req_id: &str, expected: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Counted first: a frame that lands after the check below is waited for, not missed.
        let seen = fake.frames().len();
        let updates = fake.stream_updates(req_id);
        if updates.last() == expected.last() {
            // Every update is one the member was meant to see, in order.
            let mut want = expected.iter();
            for update in &updates {
                assert!(want.any(|w| w == update), "unexpected update {update:?}; expected {expected:?}, got {updates:?}");
            }
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("updates {updates:?}, waiting for {expected:?}");
        }
        fake.wait_for_frames(seen + 1, |_| true).await;
    }
}
