//! The worker's part for AI bots: ask the agent while its answer streams into the reply's bubble,
//! record the answer, finish the bubble and send what follows (media, cards, the rest of a long
//! or late answer).
//!
//! Must never: ask the agent again for a message whose answer is recorded, or send a frame for a
//! bot this process does not hold.

use std::time::Duration;

use serde_json::json;

use super::{AgentHandle, Worker};
use crate::agent::{AgentError, Partial, Turn};
use crate::aibot::frame;
use crate::aibot::reply::{Bubble, SendError, Way};
use crate::aibot::settings::Mode;
use crate::aibot::stored::ReplyTo;
use crate::aibot::Bot;
use crate::message::{Event, MessageKind};
use crate::store::{Failure, Job, Outcome};
use crate::wecom::AppMessage;

impl Worker {
    pub(super) async fn handle_aibot(
        &self,
        handle: &AgentHandle,
        job: &Job,
        name: &str,
    ) -> Outcome {
        let Some(bot) = self.aibots.get(name) else {
            let error = format!("AI bot {name:?} is no longer configured");
            tracing::error!(job = job.id, user = ?job.user_key, "{error}; message dropped");
            return Outcome::Failed(error.into());
        };
        let to = crate::aibot::stored::reply_to(&job.message);
        let settings = &bot.settings;
        let way = match bot.config.mode {
            Mode::LongConnection { .. } => {
                // Only a connected bot can reply: wait for it (a connection that drops or is
                // refused comes back; the member's message waits, stored). If another replica
                // took the bot over meanwhile, the job goes back for it.
                if !bot.link.ready().await {
                    tracing::info!(job = job.id, aibot = %name, "another replica holds the AI bot now: the message is left for it");
                    return Outcome::Interrupted;
                }
                Way::Link(&bot.link)
            }
            Mode::Callback { .. } => Way::Polled {
                polls: &bot.polls,
                http: &bot.http,
            },
        };
        let mut bubble = Bubble::new(way, name, &*self.store, job, &to, settings.stream_for);
        let sorry = AppMessage::text(&handle.failure_message);
        let mut failure: Option<Failure> = None;
        let answer = match &job.reply {
            Some(recorded) => {
                tracing::info!(job = job.id, user = ?job.user_key, attempt = job.attempts, "resuming a recorded reply");
                recorded.iter().map(|c| c.message.clone()).collect()
            }
            None => {
                if bubble.resumed() {
                    tracing::info!(job = job.id, user = ?job.user_key, attempt = job.attempts, "the agent is asked again: its answer was cut short while it streamed");
                }
                match self
                    .ask_streaming(handle, &bot, job, &to, &mut bubble)
                    .await
                {
                    None => return Outcome::Interrupted,
                    Some(Ok(answer)) => answer,
                    Some(Err(cause)) => {
                        failure = Some(Failure::from(cause.to_string()));
                        vec![sorry.clone()]
                    }
                }
            }
        };
        if job.reply.is_none() && !answer.is_empty() {
            if let Err(e) = self.store.record_reply(job, &answer).await {
                if !e.logged_by_store() {
                    tracing::error!(job = job.id, error = %e, "cannot record the reply; sending it unrecorded");
                }
            }
        }
        let (text, others) = split_answer(answer);
        if text.is_empty() && others.is_empty() {
            if bubble.on_screen() {
                // A placeholder is on screen: the bubble must not stay "thinking".
                let _ = bubble.finish("…").await;
            }
            tracing::debug!(job = job.id, user = ?job.user_key, "agent gave no reply");
            return Outcome::Done;
        }
        if let Err(e) = bubble.finish(&text).await {
            if e.error == SendError::Standby {
                tracing::info!(job = job.id, aibot = %name, "another replica holds the AI bot now: it sends the rest of the reply");
                return Outcome::Interrupted;
            }
            // URL mode's one message after the bubble was used, or WeCom refused it.
            tracing::error!(job = job.id, aibot = %name, user = ?job.user_key, errcode = e.error.errcode(), error = %e, "the reply could not be delivered in full");
            return Outcome::Failed(Failure::send_failed(e.to_string(), e.error.errcode()));
        }
        for message in others {
            let sent = match &message {
                AppMessage::UpdateCard { update_card } => match &job.message.kind {
                    MessageKind::Event(Event::TemplateCard { .. }) => {
                        let body = json!({ "response_type": "update_template_card", "template_card": update_card });
                        bubble
                            .respond(frame::RESPOND_UPDATE, &body, "update_template_card")
                            .await
                    }
                    _ => Ok(()),
                },
                AppMessage::TemplateCard { template_card } => {
                    let body =
                        json!({ "msgtype": "template_card", "template_card": template_card });
                    bubble.reply(&body, "template_card").await
                }
                media if media.media_type().is_some() => {
                    let attached = match bot.config.mode {
                        Mode::LongConnection { .. } => {
                            crate::aibot::upload::attach(&bot.link, media, &self.outbound).await
                        }
                        Mode::Callback { .. } => Err(crate::aibot::upload::UploadError::UrlMode),
                    };
                    match attached {
                        Ok(body) => bubble.reply(&body, "media").await,
                        Err(e) => {
                            tracing::error!(job = job.id, aibot = %name, error = %e, "cannot send the agent's {} message", media.msgtype());
                            failure.get_or_insert(Failure::from(e.to_string()));
                            Ok(())
                        }
                    }
                }
                _ => Ok(()),
            };
            if let Err(e) = sent {
                tracing::error!(job = job.id, aibot = %name, errcode = e.error.errcode(), error = %e, "cannot send part of the reply");
                failure.get_or_insert(Failure::send_failed(e.to_string(), e.error.errcode()));
            }
        }
        match failure {
            Some(cause) => Outcome::Failed(cause),
            None => {
                tracing::info!(job = job.id, aibot = %name, user = ?job.user_key, "reply sent");
                Outcome::Done
            }
        }
    }

    /// Ask the agent, showing its answer in the bubble as it writes (at most one update per
    /// `aibot.update_ms`), after the placeholder. `None` when the gateway is stopping.
    async fn ask_streaming(
        &self,
        handle: &AgentHandle,
        bot: &Bot,
        job: &Job,
        to: &ReplyTo,
        bubble: &mut Bubble<'_>,
    ) -> Option<Result<Vec<AppMessage>, AgentError>> {
        let settings = &bot.settings;
        // An event's req_id takes no stream (a card click is answered with its card update).
        let event = matches!(job.message.kind, MessageKind::Event(_));
        if !event && !bubble.on_screen() {
            bubble.placeholder(&settings.placeholder).await;
        }
        let (partial, mut written) = Partial::new();
        let msg = &job.message;
        let answer = async {
            let media = self.received.fetch_aibot(msg, bot.url_mode_key()).await?;
            let turn = Turn {
                channel: &job.channel,
                corp_id: "",
                user_id: &msg.from_user_name,
                user_key: &job.user_key,
                message: msg,
                media: media.as_ref(),
                chat_id: to.chat_id.as_deref(),
                partial: Some(&partial),
            };
            Some(self.call_agent(handle, job, turn).await)
        };
        tokio::pin!(answer);
        // The first words show at once (the placeholder does not count); later updates at most
        // one per `aibot.update_ms`, each with all that was written meanwhile.
        let every = settings.update_every;
        let mut last: Option<tokio::time::Instant> = None;
        // Now and then, even with nothing new: a bubble past its time is finished.
        let mut clock = tokio::time::interval(Duration::from_secs(1));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                result = &mut answer => return result,
                Ok(()) = written.changed(), if !event => {
                    if let Some(at) = last {
                        tokio::select! {
                            biased;
                            result = &mut answer => return result,
                            () = tokio::time::sleep_until(at + every) => {}
                        }
                    }
                    let text = written.borrow_and_update().clone();
                    bubble.show(&text).await;
                    last = Some(tokio::time::Instant::now());
                }
                _ = clock.tick(), if !event => bubble.show("").await,
            }
        }
    }
}

/// The answer as one text (texts and markdown joined, cards and news as links) and the items
/// that go as messages of their own (media, cards).
fn split_answer(answer: Vec<AppMessage>) -> (String, Vec<AppMessage>) {
    let mut texts = Vec::new();
    let mut others = Vec::new();
    for message in answer {
        match message {
            AppMessage::Text { content } | AppMessage::Markdown { content } => {
                if !content.trim().is_empty() {
                    texts.push(content);
                }
            }
            AppMessage::Textcard(card) => {
                texts.push(format!(
                    "**{}**\n{}\n[{}]({})",
                    card.title,
                    card.description,
                    card.btntxt.as_deref().unwrap_or("详情"),
                    card.url
                ));
            }
            AppMessage::News { articles } => {
                for a in articles {
                    texts.push(format!("[{}]({})", a.title, a.url));
                }
            }
            other => others.push(other),
        }
    }
    (texts.join("\n\n"), others)
}
