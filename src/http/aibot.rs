//! URL mode of AI bots (`/wecom/aibot/{name}`): WeCom's JSON callbacks, encrypted as the
//! self-built app's are but with an empty receive id. `GET` is the URL check; `POST` delivers a
//! message (stored, then answered at once with a stream bubble showing the placeholder) or polls
//! a bubble's content (stream refresh), answered from what the worker has written so far.
//!
//! Must never: answer 200 for a message that is not stored, wait for the agent, or log a secret
//! or a message's text.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::callback::{bad, check_fresh, signed_query, Check, Reject, Signed};
use super::error::HttpError;
use super::state::AppState;
use crate::aibot::callback_body::{CallbackBody, PassiveReply};
use crate::aibot::inbound::{Content, Event, Inbound};
use crate::aibot::polls::Polled;
use crate::aibot::receive::{take, Arrival, NotTaken, Taken};
use crate::aibot::settings::Mode;
use crate::aibot::Bot;
use crate::crypto::MsgCrypt;

/// The bot `name` in URL mode and its crypt, or 404.
fn bot(state: &AppState, name: &str) -> Result<(std::sync::Arc<Bot>, MsgCrypt), Reject> {
    let not_found = || Reject {
        check: Check::Query,
        error: HttpError::NotFound(format!("no AI bot {name:?} in URL mode is configured")),
    };
    let bot = state.aibots.get(name).ok_or_else(not_found)?;
    let Mode::Callback {
        token,
        encoding_aes_key,
    } = &bot.config.mode
    else {
        return Err(not_found());
    };
    use secrecy::ExposeSecret;
    // AI bots' callbacks carry an empty receive id.
    let crypt = MsgCrypt::new(token.expose_secret(), encoding_aes_key.expose_secret(), "")
        .map_err(|e| bad(Check::Decrypt, e.to_string()))?;
    Ok((bot, crypt))
}

fn open(crypt: &MsgCrypt, signed: &Signed, encrypt: &str) -> Result<Vec<u8>, Reject> {
    let (sig, ts, nonce) = (&signed.msg_signature, &signed.timestamp, &signed.nonce);
    crypt.verify(sig, ts, nonce, encrypt).map_err(|_| Reject {
        check: Check::Signature,
        error: HttpError::Forbidden(
            "msg_signature does not match the AI bot's token (-40001)".into(),
        ),
    })?;
    crypt
        .decrypt(encrypt)
        .map_err(|e| bad(Check::Decrypt, e.to_string()))
}

/// A bubble's id is this and the message's msgid.
const BUBBLE_PREFIX: &str = "m";

/// What bubble `id` shows: this process's own (it opened it), else the progress the store
/// keeps for its message (another replica's, or this process's before a restart), else, for a
/// message the store does not know, finished and empty, so WeCom stops polling.
async fn polled(state: &AppState, bot: &Bot, id: &str, placeholder: &str) -> Polled {
    if let Some(own) = bot.polls.get(id) {
        return own;
    }
    let msgid = id.strip_prefix(BUBBLE_PREFIX).unwrap_or(id);
    let key = crate::aibot::stored::dedup_key(&bot.config.bot_id, msgid);
    match state.store.streamed(&key).await {
        Ok(Some(Some(streamed))) if streamed.id == id => Polled {
            content: match streamed.shown.is_empty() {
                true => placeholder.to_owned(),
                false => streamed.shown,
            },
            finished: streamed.finished,
            abandoned: false,
        },
        // Stored, and no word of the answer yet.
        Ok(Some(_)) => Polled {
            content: placeholder.to_owned(),
            finished: false,
            abandoned: false,
        },
        Ok(None) => bot.polls.poll(id),
        // The store cannot say now: the bubble as it was, WeCom asks again.
        Err(e) => {
            if !e.logged_by_store() {
                tracing::warn!(aibot = %bot.config.name, error = %e, "cannot read a bubble's progress for WeCom's poll");
            }
            Polled {
                content: placeholder.to_owned(),
                finished: false,
                abandoned: false,
            }
        }
    }
}

/// `GET /wecom/aibot/{name}`: the URL check; answered with the bare decrypted echostr.
pub async fn verify_url(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let verified = (|| {
        let (bot, crypt) = bot(&state, &name)?;
        let signed = signed_query(raw.as_deref())?;
        let echostr = (signed.echostr.as_deref())
            .filter(|e| !e.is_empty())
            .ok_or_else(|| bad(Check::Query, "missing query parameter echostr"))?;
        let plain = open(&crypt, &signed, echostr)?;
        check_fresh(&signed.timestamp, state.replay_window)?;
        let text = String::from_utf8(plain)
            .map_err(|_| bad(Check::Decrypt, "echostr plaintext is not UTF-8"))?;
        tracing::info!(aibot = %bot.config.name, "AI bot callback URL verified");
        Ok::<_, Reject>(text)
    })();
    match verified {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `POST /wecom/aibot/{name}`: a message (stored, answered with its bubble) or a poll of a bubble.
pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    match answer(&state, &name, raw.as_deref(), &body).await {
        Ok(response) => response,
        Err(r) => r.into_response(),
    }
}

async fn answer(
    state: &AppState,
    name: &str,
    raw: Option<&str>,
    body: &[u8],
) -> Result<Response, Reject> {
    let (bot, crypt) = bot(state, name)?;
    let signed = signed_query(raw)?;
    let envelope = CallbackBody::parse(body).map_err(|e| bad(Check::Envelope, e.to_string()))?;
    let plain = open(&crypt, &signed, &envelope.encrypt)?;
    check_fresh(&signed.timestamp, state.replay_window)?;
    let doc: Value = serde_json::from_slice(&plain).map_err(|e| {
        bad(
            Check::Message,
            format!("decrypted message is not JSON: {e}"),
        )
    })?;
    let inbound = Inbound::from_value(&doc)
        .map_err(|e| bad(Check::Message, format!("decrypted message: {e}")))?;
    let reply = |plaintext: &Value| {
        let now = crate::outbound::upload::unix_now().to_string();
        let sealed = PassiveReply::build(
            &crypt,
            &plaintext.to_string(),
            &now,
            &signed.nonce,
            rand::random(),
        );
        (
            [(header::CONTENT_TYPE, "application/json")],
            sealed.to_json(),
        )
            .into_response()
    };
    let placeholder = match bot.settings.placeholder.as_str() {
        "" => "…",
        text => text,
    };
    // WeCom polls a bubble it was answered with: what it shows now.
    if let Content::StreamRefresh { id } = &inbound.content {
        let polled = polled(state, &bot, id, placeholder).await;
        return Ok(reply(&crate::aibot::frame::stream(
            id,
            &polled.content,
            polled.finished,
        )));
    }
    if let (Content::Event(Event::EnterChat), Some(text)) = (&inbound.content, &bot.config.welcome)
    {
        // Not for the agent: the welcome is the passive answer.
        return Ok(reply(
            &json!({ "msgtype": "text", "text": { "content": text } }),
        ));
    }
    // The bubble's id is the message's: WeCom's retry of the callback gets the same bubble, and
    // a poll names the message whose progress the store keeps.
    let stream_id = format!("{BUBBLE_PREFIX}{}", inbound.msgid);
    // Opened before the message is stored: a worker that takes it at once finds its bubble here.
    let events = matches!(inbound.content, Content::Event(_));
    let polled = (!events).then(|| bot.polls.open(&stream_id, placeholder));
    let taken = take(
        &bot,
        &*state.store,
        &doc,
        Arrival::Posted {
            stream_id: &stream_id,
        },
    )
    .await;
    match taken {
        Ok(Taken::Ignored) => Ok(StatusCode::OK.into_response()),
        // An event is answered with an empty 200; a message with its bubble, as it stands.
        Ok(Taken::Queued | Taken::Duplicate) => match polled {
            None => Ok(StatusCode::OK.into_response()),
            Some(polled) => Ok(reply(&crate::aibot::frame::stream(
                &stream_id,
                &polled.content,
                polled.finished,
            ))),
        },
        Err(NotTaken::Unreadable(why)) => Err(bad(Check::Message, why)),
        // Not WeCom's fault: 503 (full, unreachable) or 500, and WeCom tries again.
        Err(NotTaken::Store(e)) => Err(Reject {
            check: Check::Store,
            error: e.into(),
        }),
    }
}
