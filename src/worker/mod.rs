//! The worker pool: takes jobs from the store, asks the agent, records the reply, and sends it
//! through the app the member wrote to, split into pieces WeCom accepts, in order.
//!
//! AI bots' replies stream instead (`aibot.rs`).
//!
//! Must never: ask the agent again for a message whose reply is already recorded, send a chunk
//! before the reply is recorded (when the store works), or let one failed job stop the pool.

mod aibot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentError, Events, Turn};
use crate::app::{App, Apps};
use crate::config::{AgentConfig, Config};
use crate::conversation::Channel;
use crate::message::{Event, MessageKind};
use crate::outbound::{NotAttached, Outbound, Undelivered};
use crate::received::Received;
use crate::store::{Chunk, ChunkState, Failure, Job, Outcome, Store};
use crate::wecom::{AppMessage, Recipients};

/// An agent with the chat settings around it.
pub struct AgentHandle {
    pub agent: Arc<dyn Agent>,
    /// Send `ack_message` once if the agent is still working after this long.
    pub ack_after: Option<Duration>,
    pub ack_message: String,
    /// Withdraw the receipt once the reply is out.
    pub ack_recall: bool,
    /// Sent instead of silence when the agent fails or times out.
    pub failure_message: String,
    /// Which events reach the agent.
    pub events: Events,
}

impl AgentHandle {
    pub fn new(agent: Arc<dyn Agent>, settings: &AgentConfig) -> Self {
        AgentHandle {
            agent,
            ack_after: settings.ack_after,
            ack_message: settings.ack_message.clone(),
            ack_recall: settings.ack_recall,
            failure_message: settings.failure_message.clone(),
            events: settings.events.clone(),
        }
    }
}

/// The agent for each app: its own if configured, else the default.
pub struct Agents {
    pub default: Arc<AgentHandle>,
    pub by_app: HashMap<String, Arc<AgentHandle>>,
    /// AI bots' own agents, by bot name.
    pub by_aibot: HashMap<String, Arc<AgentHandle>>,
}

impl Agents {
    /// The agents a configuration names (or `given`, for every app), with their chat settings.
    pub fn build(
        config: &Config,
        given: Option<Arc<dyn Agent>>,
        store: &Arc<dyn Store>,
    ) -> Result<Agents, crate::agent::SetupError> {
        if let Some(agent) = given {
            return Ok(Agents {
                default: Arc::new(AgentHandle::new(agent, &config.agent)),
                by_app: HashMap::new(),
                by_aibot: HashMap::new(),
            });
        }
        let build = |settings: &AgentConfig| {
            let media = &config.media;
            let (inline, dirs) = (media.inline_text_bytes, &media.agent_dirs);
            crate::agent::build(settings, store.clone(), inline, dirs)
                .map(|a| Arc::new(AgentHandle::new(a, settings)))
        };
        let mut by_app = HashMap::new();
        for app in &config.apps {
            if let Some(own) = &app.agent {
                by_app.insert(app.name.clone(), build(own)?);
            }
        }
        let mut by_aibot = HashMap::new();
        for bot in &config.aibots {
            if let Some(own) = &bot.agent {
                by_aibot.insert(bot.name.clone(), build(own)?);
            }
        }
        Ok(Agents {
            default: build(&config.agent)?,
            by_app,
            by_aibot,
        })
    }

    /// The agent that answers in `channel`: an app's own, or the default.
    pub fn for_channel(&self, channel: &Channel) -> &AgentHandle {
        match channel {
            Channel::App(app) => self.by_app.get(app).unwrap_or(&self.default),
            Channel::AiBot(bot) => self.by_aibot.get(bot).unwrap_or(&self.default),
        }
    }
}

/// Jobs being handled by this process's workers, for `/metrics`.
pub static IN_PROGRESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    /// Replaced by a reload; a job keeps the agent it started with.
    pub agents: crate::live::Live<Agents>,
    pub outbound: Arc<Outbound>,
    pub apps: Apps,
    /// Fetches the files members send, before the agent is asked.
    pub received: Arc<Received>,
    /// The AI bots this process serves, with their connections.
    pub aibots: crate::aibot::Bots,
}

impl Worker {
    /// Take and handle jobs until the store closes. Each job runs in a task of its own, so a
    /// panic (in an agent, say) fails that job alone: it is recorded as failed with the panic's
    /// message, its user's lane is freed, and this worker takes the next job.
    pub async fn run(self) {
        while let Some(job) = self.store.next().await {
            IN_PROGRESS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let worker = self.clone();
            let task_job = job.clone();
            let mut task = AbortOnDrop(tokio::spawn(async move { worker.handle(&task_job).await }));
            let outcome = match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => {
                    let why = panic_message(e.into_panic());
                    tracing::error!(job = job.id, user = ?job.user_key, "handling the message panicked: {why}; it is marked failed");
                    Outcome::Failed(format!("panicked: {why}").into())
                }
                Err(_) => Outcome::Interrupted,
            };
            self.store.finish(&job, outcome).await;
            IN_PROGRESS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn handle(&self, job: &Job) -> Outcome {
        let msg = &job.message;
        let agents = self.agents.get();
        let handle = agents.for_channel(&job.channel);
        if let (false, MessageKind::Event(event)) = (msg.is_chat_turn(), &msg.kind) {
            let name = event.name();
            if !handle.events.allows(name) || !handle.agent.takes_event(name) {
                tracing::debug!(job = job.id, user = ?job.user_key, event = name, "an event the agent does not take (agent.events); no reply");
                return Outcome::Done;
            }
        }
        // Where the reply leaves: the app the member wrote to, or the AI bot, whose replies
        // stream.
        let name = match &job.channel {
            Channel::App(name) => name,
            Channel::AiBot(bot) => return self.handle_aibot(handle, job, bot).await,
        };
        let Some(app) = self.apps.by_name(name) else {
            let error = format!("app {name:?} is no longer configured");
            tracing::error!(job = job.id, user = ?job.user_key, "{error}; message dropped");
            return Outcome::Failed(error.into());
        };
        let app: &App = &app;
        let sorry = AppMessage::text(&handle.failure_message);
        // The receipt sent while the agent worked (by this try or an earlier one), if it is to
        // be withdrawn once the reply is out.
        let mut receipt = job.receipt.clone().filter(|_| handle.ack_recall);
        // Set when the agent or one of its messages failed: the member gets the failure message,
        // the job is marked failed.
        let mut failure: Option<Failure> = None;
        let chunks = match &job.reply {
            Some(recorded) => {
                let left = recorded
                    .iter()
                    .filter(|c| c.state != ChunkState::Sent)
                    .count();
                tracing::info!(job = job.id, user = ?job.user_key, attempt = job.attempts, left, "resuming a recorded reply");
                recorded.clone()
            }
            None => {
                tracing::debug!(job = job.id, user = ?job.user_key, attempt = job.attempts, agent = handle.agent.name(), "asking the agent");
                let replies = match self.ask(handle, app, job, &mut receipt).await {
                    None => return Outcome::Interrupted,
                    Some(Ok(replies)) => replies,
                    Some(Err(cause)) => {
                        failure = Some(Failure::from(cause.to_string()));
                        vec![sorry.clone()]
                    }
                };
                let mut pieces = Vec::new();
                for reply in replies {
                    let msgtype = reply.msgtype();
                    match reply.into_pieces() {
                        Ok(more) => pieces.extend(more),
                        // An empty text is no message; anything else the member is told about.
                        Err(_) if msgtype == "text" => {}
                        Err(e) => {
                            tracing::error!(job = job.id, user = ?job.user_key, error = %e, "the agent's {msgtype} message is not within WeCom's limits; the member gets the failure message in its place");
                            failure.get_or_insert_with(|| Failure::from(e.to_string()));
                            if !pieces.contains(&sorry) {
                                pieces.push(sorry.clone());
                            }
                        }
                    }
                }
                if pieces.is_empty() {
                    tracing::debug!(job = job.id, user = ?job.user_key, "agent gave no reply");
                    self.withdraw(app, job, receipt).await;
                    return Outcome::Done;
                }
                if let Err(e) = self.store.record_reply(job, &pieces).await {
                    // Deliver anyway: a lost answer is worse than a rare double after a crash.
                    if !e.logged_by_store() {
                        tracing::error!(job = job.id, error = %e, "cannot record the reply; sending it unrecorded");
                    }
                }
                (pieces.into_iter().enumerate())
                    .map(|(seq, message)| Chunk {
                        seq,
                        message,
                        state: ChunkState::Unsent,
                    })
                    .collect::<Vec<_>>()
            }
        };
        let total = chunks.len();
        // The member is told once per reply that something could not be sent, however many items.
        let mut told = chunks
            .iter()
            .any(|c| c.message == sorry && c.state == ChunkState::Sent);
        // One reply at a time per member: pushes to the same member wait until this one is out.
        let member = Recipients::Member(msg.from_user_name.clone());
        let _turn = self
            .outbound
            .lock(&Outbound::recipients_key(app, &member))
            .await;
        for chunk in chunks.iter().filter(|c| c.state != ChunkState::Sent) {
            let mut message = chunk.message.clone();
            // Why this item cannot be sent; the failure message goes in its place.
            let mut failed: Option<Failure> = None;
            if let AppMessage::UpdateCard { update_card } = &message {
                let why = match &msg.kind {
                    MessageKind::Event(Event::TemplateCard { response_code, .. }) => self
                        .outbound
                        .update_card(app, &msg.from_user_name, response_code, update_card)
                        .await
                        .err(),
                    _ => {
                        tracing::warn!(job = job.id, user = ?job.user_key, "update_card answers a click on a card (template_card_event) only; ignored");
                        None
                    }
                };
                failed = match why {
                    None => None,
                    Some(Undelivered::Stopped) => return Outcome::Interrupted,
                    Some(Undelivered::Failed(f)) => Some(Failure::wecom(
                        format!("update_template_card: {f}"),
                        f.error.errcode(),
                    )),
                };
            } else if message.media_type().is_some() {
                match self.upload(app, job, chunk.seq, &mut message).await {
                    Ok(()) => {}
                    Err(NotAttached::Stopped) => return Outcome::Interrupted,
                    Err(e) => failed = Some(Failure::wecom(e.to_string(), e.errcode())),
                }
            }
            if let Some(why) = failed {
                tracing::error!(job = job.id, app = %app.config.name, user = ?job.user_key, piece = chunk.seq + 1, of = total, errcode = why.errcode, error = %why.reason, "cannot send the agent's {} message; the member gets the failure message in its place", message.msgtype());
                failure.get_or_insert(why);
                message = sorry.clone();
            }
            let done =
                matches!(message, AppMessage::UpdateCard { .. }) || (message == sorry && told);
            if done {
                if let Err(e) = self.store.mark_sent(job, chunk.seq).await {
                    if !e.logged_by_store() {
                        tracing::error!(job = job.id, seq = chunk.seq, error = %e, "cannot record a sent chunk");
                    }
                }
                continue;
            }
            told |= message == sorry;
            // Recorded before WeCom is called: if the process dies before the answer is recorded,
            // the next try knows this chunk may have arrived and asks WeCom to drop a duplicate.
            if let Err(e) = self.store.mark_started(job, chunk.seq).await {
                if !e.logged_by_store() {
                    tracing::warn!(job = job.id, seq = chunk.seq, error = %e, "cannot record that a chunk is being sent");
                }
            }
            let resend = chunk.state == ChunkState::Started;
            match self.outbound.send_app(app, &member, &message, resend).await {
                Ok((receipt, _attempts)) => {
                    if !receipt.invalid_users.is_empty() {
                        tracing::warn!(job = job.id, app = %app.config.name, invalid_users = ?receipt.invalid_users, "WeCom could not deliver to some recipients");
                    }
                    if let Err(e) = self.store.mark_sent(job, chunk.seq).await {
                        if !e.logged_by_store() {
                            tracing::error!(job = job.id, seq = chunk.seq, error = %e, "cannot record a sent chunk");
                        }
                    }
                }
                Err(Undelivered::Stopped) => {
                    tracing::info!(job = job.id, user = ?job.user_key, "shutting down: WeCom's rate limit holds the rest of this reply past the grace period; it is sent after the next start");
                    return Outcome::Interrupted;
                }
                Err(Undelivered::Failed(failure)) => {
                    // Later pieces are not sent: a reply with a hole in the middle reads worse than
                    // one that stops.
                    tracing::error!(job = job.id, app = %app.config.name, user = ?job.user_key, piece = chunk.seq + 1, of = total, errcode = failure.error.errcode(), error = %failure, "message/send failed");
                    // The reply stays recorded: a retry resends what is left of it.
                    return Outcome::Failed(Failure::send_failed(
                        format!("piece {} of {total}: {failure}", chunk.seq + 1),
                        failure.error.errcode(),
                    ));
                }
            }
        }
        self.withdraw(app, job, receipt).await;
        match failure {
            Some(cause) => {
                tracing::info!(job = job.id, user = ?job.user_key, "failure message sent");
                Outcome::Failed(cause)
            }
            None => {
                tracing::info!(job = job.id, app = %app.config.name, user = ?job.user_key, pieces = total, "reply sent");
                Outcome::Done
            }
        }
    }

    /// Give a media message its media_id, recording a new upload so that a send after a crash
    /// does not upload again.
    async fn upload(
        &self,
        app: &App,
        job: &Job,
        seq: usize,
        message: &mut AppMessage,
    ) -> Result<(), NotAttached> {
        if self.outbound.attach_media(app, message).await? {
            if let Err(e) = self.store.record_upload(job, seq, message).await {
                if !e.logged_by_store() {
                    tracing::warn!(job = job.id, seq, error = %e, "cannot record an upload's media_id; a resend would upload again");
                }
            }
        }
        Ok(())
    }

    /// Ask the agent; if it is still working after `ack_after`, tell the member once that the
    /// message arrived. Errors come back as the cause, already logged.
    /// Fetch the message's media, then ask the agent, sending the receipt if that takes longer
    /// than `ack_after` (the download counts: the member is waiting either way). An earlier try's
    /// recorded receipt is not sent again. `None` when the gateway is stopping.
    async fn ask(
        &self,
        handle: &AgentHandle,
        app: &App,
        job: &Job,
        receipt: &mut Option<String>,
    ) -> Option<Result<Vec<AppMessage>, AgentError>> {
        let msg = &job.message;
        let answer = async {
            let media = self.received.fetch(&self.outbound, app, msg).await?;
            let turn = Turn {
                channel: &job.channel,
                corp_id: &app.config.corp_id,
                user_id: &msg.from_user_name,
                user_key: &job.user_key,
                message: msg,
                media: media.as_ref(),
                chat_id: None,
                partial: None,
            };
            Some(self.call_agent(handle, job, turn).await)
        };
        tokio::pin!(answer);
        let result = match handle.ack_after.filter(|_| receipt.is_none()) {
            None => answer.await,
            Some(after) => tokio::select! {
                result = &mut answer => result,
                () = tokio::time::sleep(after) => {
                    *receipt = self.send_receipt(handle, app, job).await;
                    answer.await
                }
            },
        };
        result
    }

    /// The agent's answer to `turn`, timed and counted by agent and channel; a failure logged.
    async fn call_agent(
        &self,
        handle: &AgentHandle,
        job: &Job,
        turn: Turn<'_>,
    ) -> Result<Vec<AppMessage>, AgentError> {
        let started = std::time::Instant::now();
        let answer = handle.agent.reply(turn).await;
        let agent = handle.agent.name();
        let channel = job.channel.kind();
        crate::metrics::observe(
            crate::metrics::AGENT_SECONDS,
            &[("agent", agent), ("channel", channel)],
            started.elapsed(),
        );
        if let Err(e) = &answer {
            let kind = match e {
                AgentError::Timeout(_) => "timeout",
                AgentError::Failed(_) => "failed",
            };
            crate::metrics::count(
                crate::metrics::AGENT_FAILURES,
                &[("agent", agent), ("kind", kind), ("channel", channel)],
            );
            tracing::error!(job = job.id, user = ?job.user_key, agent, error = %e, "agent failed; sending the failure message");
        }
        answer
    }

    /// With `ack_recall`, take back the receipt now that the reply is out (or there is none).
    async fn withdraw(&self, app: &App, job: &Job, receipt: Option<String>) {
        let Some(msgid) = receipt else {
            return;
        };
        match self.outbound.recall(app, &msgid).await {
            Ok(()) => tracing::debug!(job = job.id, user = ?job.user_key, "receipt withdrawn"),
            Err(Undelivered::Failed(e)) => {
                tracing::warn!(job = job.id, user = ?job.user_key, error = %e, "cannot withdraw the receipt (message/recall works within 24 hours)")
            }
            Err(Undelivered::Stopped) => {
                tracing::info!(job = job.id, user = ?job.user_key, "shutting down: the receipt is not withdrawn")
            }
        }
    }

    /// Tell the member the agent is working on it. With `ack_recall`, the receipt's msgid, kept in
    /// the store so that it is withdrawn even if the gateway restarts before the reply is out.
    async fn send_receipt(&self, handle: &AgentHandle, app: &App, job: &Job) -> Option<String> {
        let member = Recipients::Member(job.message.from_user_name.clone());
        let _turn = self
            .outbound
            .lock(&Outbound::recipients_key(app, &member))
            .await;
        let receipt = AppMessage::text(&handle.ack_message);
        match self.outbound.send_app(app, &member, &receipt, false).await {
            Ok((sent, _)) => {
                tracing::debug!(job = job.id, user = ?job.user_key, "receipt sent: the agent is taking a while");
                let msgid = sent.msgid.filter(|_| handle.ack_recall)?;
                if let Err(e) = self.store.record_receipt(job, &msgid).await {
                    if !e.logged_by_store() {
                        tracing::warn!(job = job.id, error = %e, "cannot record the receipt; it is withdrawn unless the gateway restarts first");
                    }
                }
                Some(msgid)
            }
            Err(e) => {
                tracing::warn!(job = job.id, user = ?job.user_key, error = ?e, "cannot send the receipt");
                None
            }
        }
    }
}

/// A job's task ends with its worker: a worker stopped at shutdown (or in a test's simulated
/// crash) must not leave the job running on its own.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
