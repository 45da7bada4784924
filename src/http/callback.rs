//! WeCom's callback URL: `GET` is the URL-verification handshake, `POST` delivers encrypted messages.
//!
//! Owns: reading the query (percent-decoded exactly once, `+` kept), picking the app, mapping each
//! failed check to a status code and a log line that names the check.
//!
//! Must never: wait for the agent before answering, answer 200 for something not queued, or log a
//! secret or a message body.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use percent_encoding::percent_decode_str;

use super::error::HttpError;
use super::retries::Recent;
use super::state::AppState;
use crate::app::App;
use crate::conversation::Channel;
use crate::crypto::CryptoError;
use crate::message::{Envelope, InboundMessage};
use crate::store::{NewJob, Pushed};

/// A refused callback: which check refused it and why. WeCom sees the status alone; the log says
/// which check and why (with no secrets in either).
pub(super) struct Reject {
    pub(super) check: Check,
    pub(super) error: HttpError,
}

/// The checks a callback passes, in order. Each names itself in the log (`check=`) and counts as
/// one `result` of `wecom_gateway_callbacks_total`; the status and the log level come from the
/// [`HttpError`] (the client's mistake is a 4xx and a warning, the server's a 5xx and an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Query,
    Replay,
    Signature,
    Decrypt,
    CorpId,
    Body,
    Envelope,
    Message,
    Store,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Query => "query",
            Check::Replay => "replay",
            Check::Signature => "signature",
            Check::Decrypt => "decrypt",
            Check::CorpId => "corp_id",
            Check::Body => "body",
            Check::Envelope => "envelope",
            Check::Message => "message",
            Check::Store => "store",
        }
    }

    /// What a refusal by this check counts as.
    fn outcome(self) -> Outcome {
        match self {
            Check::Signature => Outcome::BadSignature,
            Check::Decrypt | Check::CorpId => Outcome::DecryptError,
            Check::Replay => Outcome::Replayed,
            Check::Store => Outcome::StoreError,
            Check::Query | Check::Body | Check::Envelope | Check::Message => Outcome::Malformed,
        }
    }
}

pub(super) fn bad(check: Check, reason: impl Into<String>) -> Reject {
    Reject {
        check,
        error: HttpError::BadRequest(reason.into()),
    }
}

/// What became of a callback: the `result` label of `wecom_gateway_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Duplicate,
    Denied,
    BadSignature,
    DecryptError,
    Malformed,
    TooLarge,
    Replayed,
    StoreError,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::Duplicate,
        Outcome::Denied,
        Outcome::BadSignature,
        Outcome::DecryptError,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::Replayed,
        Outcome::StoreError,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::Denied => "denied",
            Outcome::BadSignature => "bad_signature",
            Outcome::DecryptError => "decrypt_error",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::Replayed => "replayed",
            Outcome::StoreError => "store_error",
        }
    }

    /// Count it, through a handle made once per outcome (no lookup per callback).
    fn count(self) {
        static COUNTERS: LazyLock<Vec<Counter>> = LazyLock::new(|| {
            Outcome::ALL
                .iter()
                .map(|o| {
                    crate::metrics::counter(crate::metrics::CALLBACKS, &[("result", o.label())])
                })
                .collect()
        });
        if let Some(counter) = COUNTERS.get(self as usize) {
            counter.increment(1);
        }
    }
}

/// Counts callbacks the body limit refused before any handler ran.
pub async fn count_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Outcome::TooLarge.count();
    }
    response
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        self.error.log("callback", self.check.name());
        self.error.status().into_response()
    }
}

/// The signed query parameters every callback carries (and the URL check's `echostr`), borrowed
/// from the query where no percent-decoding was needed.
pub(super) struct Signed<'q> {
    pub(super) msg_signature: Cow<'q, str>,
    pub(super) timestamp: Cow<'q, str>,
    pub(super) nonce: Cow<'q, str>,
    pub(super) echostr: Option<Cow<'q, str>>,
}

/// Parse the raw query. Values are percent-decoded exactly once and `+` stays `+`: an echostr holds
/// base64 `+` characters, which form-decoding would wrongly turn into spaces. A parameter given
/// twice counts the first time.
pub(super) fn signed_query(raw: Option<&str>) -> Result<Signed<'_>, Reject> {
    let [mut msg_signature, mut timestamp, mut nonce, mut echostr] = [None, None, None, None];
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            // AI bots' callbacks have been seen with the other two spellings.
            "msg_signature" | "msgsignature" | "signature" => &mut msg_signature,
            "timestamp" => &mut timestamp,
            "nonce" => &mut nonce,
            "echostr" => &mut echostr,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        let v = percent_decode_str(v).decode_utf8().map_err(|_| {
            bad(
                Check::Query,
                format!("query parameter {k:?} is not UTF-8 after percent-decoding"),
            )
        })?;
        *slot = Some(v);
    }
    Ok(Signed {
        msg_signature: required(msg_signature, "msg_signature")?,
        timestamp: required(timestamp, "timestamp")?,
        nonce: required(nonce, "nonce")?,
        echostr,
    })
}

fn required<'q>(value: Option<Cow<'q, str>>, name: &'static str) -> Result<Cow<'q, str>, Reject> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad(Check::Query, format!("missing query parameter {name}")))
}

/// Refuse a callback whose signed timestamp is further than `window` from the gateway's clock
/// (zero: no window), so a recorded callback cannot be played back later.
pub(super) fn check_fresh(timestamp: &str, window: std::time::Duration) -> Result<(), Reject> {
    if window.is_zero() {
        return Ok(());
    }
    let sent: i64 = timestamp.trim().parse().map_err(|_| {
        bad(
            Check::Replay,
            format!("timestamp {timestamp:?} is not a number"),
        )
    })?;
    let skew = crate::outbound::upload::unix_now().saturating_sub(sent);
    if skew.unsigned_abs() > window.as_secs() {
        let (by, way) = match skew > 0 {
            true => (skew, "behind"),
            false => (skew.saturating_neg(), "ahead of"),
        };
        return Err(Reject {
            check: Check::Replay,
            error: HttpError::Forbidden(format!(
                "the callback's timestamp is {by} s {way} this server's clock, outside replay_window ({} s): a replayed callback, or a server clock that is off (check NTP)",
                window.as_secs()
            )),
        });
    }
    Ok(())
}

fn crypto_reject(e: &CryptoError) -> Reject {
    let check = match e {
        CryptoError::ValidateCorpId => Check::CorpId,
        _ => Check::Decrypt,
    };
    bad(check, e.to_string())
}

/// A callback whose signature verified: decrypted, or (with `recent`) known to be stored already.
enum Opened {
    Plain(std::sync::Arc<App>, Vec<u8>),
    Stored(std::sync::Arc<App>),
}

/// Try the candidate apps in order: the first whose token signs the ciphertext and whose key decrypts
/// it wins. A signature that matches no app is 403; one that matches but does not decrypt is 400.
/// With `recent`, a verified signature this process already stored is not decrypted again.
fn open(
    candidates: Vec<std::sync::Arc<App>>,
    signed: &Signed,
    encrypt: &str,
    recent: Option<&Recent>,
) -> Result<Opened, Reject> {
    let mut decrypt_error = None;
    for app in candidates {
        // The current token and key, then (during a rotation) the previous ones.
        let sets = std::iter::once(&app.crypt).chain(app.previous.as_ref());
        for (n, crypt) in sets.enumerate() {
            let (sig, ts, nonce) = (&signed.msg_signature, &signed.timestamp, &signed.nonce);
            if crypt.verify(sig, ts, nonce, encrypt).is_err() {
                continue;
            }
            if recent.is_some_and(|r| r.has_signature(sig)) {
                app.verified_with(n > 0);
                return Ok(Opened::Stored(app));
            }
            match crypt.decrypt(encrypt) {
                Ok(plain) => {
                    app.verified_with(n > 0);
                    return Ok(Opened::Plain(app, plain));
                }
                Err(e) => decrypt_error = Some(e),
            }
        }
    }
    Err(match decrypt_error {
        Some(e) => crypto_reject(&e),
        None => Reject {
            check: Check::Signature,
            error: HttpError::Forbidden(
                "msg_signature does not match any configured app's token (-40001)".into(),
            ),
        },
    })
}

/// `GET {path}`: answer the verification handshake with the bare decrypted echostr.
pub async fn verify_url(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let signed = match signed_query(raw.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Some(echostr) = signed.echostr.as_deref().filter(|e| !e.is_empty()) else {
        return bad(Check::Query, "missing query parameter echostr").into_response();
    };
    let opened = open(state.apps.candidates(None, None), &signed, echostr, None)
        .and_then(|opened| check_fresh(&signed.timestamp, state.replay_window).map(|()| opened));
    match opened {
        Ok(Opened::Stored(_)) => bad(Check::Decrypt, "echostr was not decrypted").into_response(),
        Ok(Opened::Plain(app, plain)) => match String::from_utf8(plain) {
            Ok(text) => {
                tracing::info!(app = %app.config.name, "callback URL verified");
                (StatusCode::OK, text).into_response()
            }
            Err(_) => bad(Check::Decrypt, "echostr plaintext is not UTF-8").into_response(),
        },
        Err(r) => r.into_response(),
    }
}

/// `POST {path}`: verify, decrypt, parse, queue, and answer 200 with an empty body at once.
pub async fn receive(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    static ACK_SECONDS: LazyLock<Histogram> =
        LazyLock::new(|| crate::metrics::histogram(crate::metrics::ACK_SECONDS, &[]));
    let started = std::time::Instant::now();
    let (response, outcome) = match accept(&state, raw.as_deref(), &body).await {
        Ok(outcome) => (StatusCode::OK.into_response(), outcome),
        Err(r) => {
            let outcome = r.check.outcome();
            (r.into_response(), outcome)
        }
    };
    outcome.count();
    ACK_SECONDS.record(started.elapsed().as_secs_f64());
    response
}

/// Queue the callback; `Ok`, `Duplicate` or `Denied` (acknowledged, not for the agent).
async fn accept(state: &AppState, raw_query: Option<&str>, body: &[u8]) -> Result<Outcome, Reject> {
    let signed = signed_query(raw_query)?;
    let body = std::str::from_utf8(body).map_err(|_| bad(Check::Body, "body is not UTF-8"))?;
    let envelope = Envelope::parse(body)
        .map_err(|e| bad(Check::Envelope, format!("callback XML (-40002): {e}")))?;
    let candidates = state.apps.candidates(
        envelope.to_user_name.as_deref(),
        envelope.agent_id.as_deref(),
    );
    let opened = open(candidates, &signed, &envelope.encrypt, Some(&state.recent))?;
    check_fresh(&signed.timestamp, state.replay_window)?;
    let (app, plain) = match opened {
        Opened::Plain(app, plain) => (app, plain),
        Opened::Stored(app) => {
            tracing::debug!(app = %app.config.name, "repeated callback (a WeCom retry): acknowledged, ignored");
            return Ok(Outcome::Duplicate);
        }
    };
    if let Some(agent_id) = envelope.agent_id.as_deref() {
        state.agent_ids.check(&app, agent_id);
    }
    let xml = std::str::from_utf8(&plain)
        .map_err(|_| bad(Check::Message, "decrypted message is not UTF-8"))?;
    let message = InboundMessage::parse(xml)
        .map_err(|e| bad(Check::Message, format!("decrypted message: {e}")))?;

    let corp_id = &app.config.corp_id;
    let user_id = &message.from_user_name;
    // User-controlled text is logged with `?` (quoted, escaped): a UserID holding a newline or a
    // terminal escape cannot forge a log line.
    let user_key = format!("{corp_id}:{user_id}");
    if !state.allowlist.get().allows(corp_id, user_id) {
        tracing::warn!(app = %app.config.name, user = ?user_key, msg_type = ?message.msg_type,
            "message from a user who is not on the allowlist: acknowledged, not passed to the agent");
        return Ok(Outcome::Denied);
    }
    let dedup_key = message.dedup_key(corp_id, app.config.agent_id);
    let outcome = match state.recent.has_key(&dedup_key) {
        true => Pushed::Duplicate,
        false => {
            let job = NewJob {
                channel: Channel::App(app.config.name.clone()),
                dedup_key: dedup_key.clone(),
                user_key: user_key.clone(),
                payload: xml.to_owned(),
            };
            // Not the client's fault, and WeCom retries a non-200: 503 (full, busy) or 500 (a
            // write failed), never a 200 for something not recorded.
            let pushed = state.store.push(job).await.map_err(|e| Reject {
                check: Check::Store,
                error: e.into(),
            })?;
            state.recent.stored(&signed.msg_signature, dedup_key);
            pushed
        }
    };
    match outcome {
        Pushed::Queued => {
            tracing::debug!(app = %app.config.name, user = ?user_key, "callback queued");
            Ok(Outcome::Ok)
        }
        Pushed::Duplicate => {
            // Debug, not info: a retry storm after an outage would otherwise write a line per
            // retry; wecom_gateway_callbacks_total{result="duplicate"} counts them.
            tracing::debug!(app = %app.config.name, user = ?user_key, "duplicate callback (a WeCom retry): acknowledged, ignored");
            Ok(Outcome::Duplicate)
        }
    }
}
