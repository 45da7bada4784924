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
            self.gate
                .acquire()
                .await
                .map_err(|e| AgentError::Failed(e.to_string()))?
                .forget();
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
    let pieces: Vec<String> = ["第一段。", "第二段。", "第三段。"]
        .map(String::from)
        .to_vec();
    let agent = Writing {
        pieces: pieces.clone(),
        gate: gate.clone(),
    };
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
    assert!(
        fake.pushed("zhangsan").is_empty(),
        "nothing sent beside the bubble"
    );
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
                assert!(
                    want.any(|w| w == update),
                    "unexpected update {update:?}; expected {expected:?}, got {updates:?}"
                );
            }
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("updates {updates:?}, waiting for {expected:?}");
        }
        fake.wait_for_frames(seen + 1, |_| true).await;
    }
}

/// Echoes what the member wrote, with whom and where: `user@chat: text`.
pub struct Echo;

#[async_trait]
impl Agent for Echo {
    fn name(&self) -> &str {
        "echo-where"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let text = match &turn.message.kind {
            wecom_gateway::message::MessageKind::Text { content } => content.clone(),
            _ => turn.message.describe(),
        };
        let chat = turn.chat_id.unwrap_or("-");
        Ok(vec![AppMessage::text(format!(
            "{}@{chat}: {text}",
            turn.user_id
        ))])
    }
}

#[tokio::test]
async fn in_a_group_only_a_mention_reaches_the_agent_and_the_answer_goes_to_the_group() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibots[0].chats = Chats {
        all: false,
        ids: vec!["wrkGroup1".into()],
    };
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;

    let unmentioned = fake
        .inject_group_text(BOT_ID, "wrkGroup1", "lisi", "大家好")
        .await;
    let other_group = fake
        .inject_group_text(BOT_ID, "wrkOther", "lisi", "@助手 在吗")
        .await;
    let mentioned = fake
        .inject_group_text(BOT_ID, "wrkGroup1", "lisi", "@助手 今天开会吗")
        .await;
    let bubble = fake.wait_for_finished(&mentioned.req_id).await;
    assert_eq!(
        bubble.content, "lisi@wrkGroup1: 今天开会吗",
        "the mention is removed, the chat named"
    );
    // Received in order on one connection: the two before it were decided first.
    assert!(
        fake.replies(&unmentioned.req_id).is_empty(),
        "not mentioned: ignored"
    );
    assert!(
        fake.replies(&other_group.req_id).is_empty(),
        "a group not in allowed_chats: ignored"
    );
    app.stop().await;
}

#[tokio::test]
async fn members_not_on_the_bots_allowlist_are_not_answered() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibots[0].allowlist = Allowlist {
        allow_all: false,
        users: vec!["zhangsan".into()],
    };
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let refused = fake.inject_text(BOT_ID, "wangwu", "hi").await;
    let allowed = fake.inject_text(BOT_ID, "zhangsan", "hi").await;
    assert_eq!(
        fake.wait_for_finished(&allowed.req_id).await.content,
        "zhangsan@-: hi"
    );
    assert!(fake.replies(&refused.req_id).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_message_wecom_sends_twice_is_answered_once_and_opening_the_chat_gets_the_welcome() {
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let opened = fake.inject_enter_chat(BOT_ID, "zhangsan").await;
    let first = fake.inject_text(BOT_ID, "zhangsan", "once").await;
    let again = fake.inject_again(&first).await;
    let after = fake.inject_text(BOT_ID, "zhangsan", "after").await;
    fake.wait_for_finished(&after.req_id).await;
    assert_eq!(
        fake.wait_for_finished(&first.req_id).await.content,
        "zhangsan@-: once"
    );
    assert!(
        fake.replies(&again.req_id).is_empty(),
        "the second push of a msgid is not answered"
    );
    let welcome = fake.replies(&opened.req_id);
    assert_eq!(welcome.len(), 1, "{welcome:?}");
    assert_eq!(welcome[0]["text"]["content"], "你好，我是助手");
    app.stop().await;
}

#[tokio::test]
async fn after_a_dropped_connection_the_bot_subscribes_again_and_answers() {
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.drop_connection(BOT_ID);
    fake.wait_for_subscribed(BOT_ID, 2).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "back?").await;
    assert_eq!(
        fake.wait_for_finished(&sent.req_id).await.content,
        "zhangsan@-: back?"
    );
    let subscribes: Vec<_> = fake
        .frames()
        .into_iter()
        .filter(|f| f.cmd() == "aibot_subscribe")
        .collect();
    assert_eq!(subscribes.len(), 2);
    assert!(subscribes
        .iter()
        .all(|f| f.body()["secret"] == SECRET && f.body()["bot_id"] == BOT_ID));
    app.stop().await;
}

#[tokio::test]
async fn when_the_callbacks_req_id_is_refused_the_answer_goes_as_a_message() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibot.placeholder = String::new();
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.refuse_next("aibot_respond_msg", ERR_INVALID_REQ_ID, 1);
    let sent = fake.inject_text(BOT_ID, "zhangsan", "hello").await;
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(pushed, vec!["zhangsan@-: hello".to_owned()]);
    assert!(fake.bubble(&sent.req_id).is_none(), "no bubble was shown");
    app.stop().await;
}

#[tokio::test]
async fn an_answer_longer_than_a_bubble_finishes_it_full_and_sends_the_rest_once() {
    let fake = FakeAiBot::start().await;
    let long = format!("{}\n{}", "长".repeat(6000), "尾".repeat(2000));
    struct Long(String);
    #[async_trait]
    impl Agent for Long {
        fn name(&self) -> &str {
            "long"
        }
        async fn reply(&self, _: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
            Ok(vec![AppMessage::text(self.0.clone())])
        }
    }
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Long(long.clone()))).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "long please").await;
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert!(bubble.content.len() <= 20480, "{}", bubble.content.len());
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(
        format!("{}{}", bubble.content, pushed.concat()),
        long,
        "every byte once"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_that_fails_leaves_the_failure_message_in_the_bubble() {
    let fake = FakeAiBot::start().await;
    struct Failing;
    #[async_trait]
    impl Agent for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        async fn reply(&self, _: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
            Err(AgentError::Failed("model down".into()))
        }
    }
    let config = aibot_config(&fake);
    let sorry = config.agent.failure_message.clone();
    let app = TestApp::spawn_with_agent(config, Arc::new(Failing)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "hi").await;
    assert_eq!(fake.wait_for_finished(&sent.req_id).await.content, sorry);
    app.stop().await;
}
