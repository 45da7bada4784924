//! The push API for alerting systems and other services, under /api/v1, behind bearer tokens.
//!
//! Owns: request validation (400 naming the problem), 401/404/202 semantics, and turning requests
//! into stored deliveries.
//!
//! Must never: accept a request without a valid token, answer 202 for something not stored, or echo
//! a token or webhook key.

use axum::body::Bytes;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::error::HttpError;
use super::state::AppState;
use crate::bots::{Alert, AlertmanagerPayload};
use crate::conversation::Push;
use crate::store::{FailedId, StoreError};
use crate::wecom::{AppMessage, BotMessage, Recipients, TextCard};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/notify/{bot}", post(notify))
        .route("/alertmanager/{bot}", post(alertmanager))
        .route("/send", post(send))
        .route("/deliveries/{id}", get(delivery))
        .route("/failed", get(failed))
        .route("/failed/{id}/retry", post(retry_failed))
        .fallback(|| async { ApiFailure(HttpError::NotFound("no such endpoint".into())) })
        .layer(middleware::from_fn_with_state(state, authenticate))
}

/// What the caller's token allows, for the handlers.
#[derive(Debug, Clone, Copy)]
struct Caller {
    broadcast: bool,
}

/// An error answer of the API: logged, then sent as JSON.
pub(super) struct ApiFailure(pub(super) HttpError);

impl From<HttpError> for ApiFailure {
    fn from(e: HttpError) -> Self {
        ApiFailure(e)
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        ApiFailure(e.into())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        self.0.log("api request", "api");
        self.0.json_response()
    }
}

fn bad_request(msg: impl Into<String>) -> ApiFailure {
    ApiFailure(HttpError::BadRequest(msg.into()))
}

fn not_found(msg: impl Into<String>) -> ApiFailure {
    ApiFailure(HttpError::NotFound(msg.into()))
}

fn accepted(ids: Vec<i64>) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "ids": ids })),
    )
        .into_response()
}

/// Parse a JSON body; serde's message names the field and position.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Every token is compared, in constant time, so timing says nothing about which one nearly matched.
    let tokens = state.api_tokens.get();
    if tokens.is_empty() {
        return HttpError::NotFound("the push API is off: no api.tokens are configured".into())
            .json_response();
    }
    let (ok, broadcast) = tokens.iter().fold((false, false), |(ok, b), t| {
        let matched = bool::from(
            t.token
                .expose_secret()
                .as_bytes()
                .ct_eq(presented.as_bytes()),
        );
        (ok | matched, b | (matched & t.broadcast))
    });
    if !ok || presented.is_empty() {
        tracing::warn!(path = ?request.uri().path(), "api request without a valid bearer token");
        return HttpError::Unauthorized.json_response();
    }
    let mut request = request;
    request.extensions_mut().insert(Caller { broadcast });
    next.run(request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    dedupe_key: String,
    #[serde(default)]
    mentioned_list: Vec<String>,
    #[serde(default)]
    mentioned_mobile_list: Vec<String>,
    /// `text` (default) or `markdown`.
    #[serde(default)]
    format: Option<String>,
    /// Instead of an alert: items of the flat schema a robot can send (text, markdown, image,
    /// file, news, template_card).
    #[serde(default)]
    messages: Option<Vec<serde_json::Value>>,
}

async fn submit_to_bot(
    state: &AppState,
    bot: &str,
    messages: Vec<BotMessage>,
) -> Result<Response, ApiFailure> {
    if !state.dispatcher.bots().contains_key(bot) {
        return Err(not_found(format!("no robot named {bot:?} is configured")));
    }
    let mut pushes = Vec::new();
    for message in messages {
        let pieces = message
            .into_pieces()
            .map_err(|e| bad_request(e.to_string()))?;
        pushes.extend(pieces.into_iter().map(|message| Push::Bot {
            bot: bot.to_owned(),
            message,
        }));
    }
    Ok(accepted(state.dispatcher.submit(pushes).await?))
}

/// `POST /api/v1/notify/{bot}`: one alert to a group robot.
async fn notify(
    State(state): State<AppState>,
    Path(bot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let req: NotifyBody = parse(&body)?;
    if !state.dispatcher.bots().contains_key(&bot) {
        return Err(not_found(format!("no robot named {bot:?} is configured")));
    }
    if let Some(items) = req.messages {
        if !req.subject.is_empty() || !req.body.is_empty() || items.is_empty() {
            return Err(bad_request(
                "give either subject/body (an alert) or messages (a non-empty list), not both",
            ));
        }
        let mut messages = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = |e: &dyn std::fmt::Display| bad_request(format!("messages[{i}].{e}"));
            let message = AppMessage::from_item(item).map_err(|e| at(&e))?;
            let message = state.dispatcher.outbound().bot_message(message).await;
            let message = message.map_err(|why| {
                at(&format!(
                    "{}: {why}",
                    item["msgtype"].as_str().unwrap_or("")
                ))
            })?;
            messages.push(message);
        }
        return submit_to_bot(&state, &bot, messages).await;
    }
    if req.subject.trim().is_empty() && req.body.trim().is_empty() {
        return Err(bad_request("subject or body is required"));
    }
    let content = Alert {
        severity: req.severity,
        subject: req.subject,
        body: req.body,
        source: req.source,
        dedupe_key: req.dedupe_key,
    }
    .text();
    let message = match req.format.as_deref().unwrap_or("text") {
        "text" => BotMessage::Text {
            content,
            mentioned_list: req.mentioned_list,
            mentioned_mobile_list: req.mentioned_mobile_list,
        },
        "markdown" => BotMessage::Markdown { content },
        other => {
            return Err(bad_request(format!(
                "format: must be text or markdown, got {other:?}"
            )))
        }
    };
    submit_to_bot(&state, &bot, vec![message]).await
}

/// `POST /api/v1/alertmanager/{bot}`: an Alertmanager webhook; one robot message per alert group.
async fn alertmanager(
    State(state): State<AppState>,
    Path(bot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let payload: AlertmanagerPayload = parse(&body)?;
    if payload.alerts.is_empty() {
        return Err(bad_request("alerts: is empty"));
    }
    let message = BotMessage::Text {
        content: payload.to_alert().text(),
        mentioned_list: Vec::new(),
        mentioned_mobile_list: Vec::new(),
    };
    submit_to_bot(&state, &bot, vec![message]).await
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Users {
    One(String),
    Many(Vec<String>),
}

impl Users {
    /// The entries of a `|`-separated text or a list, trimmed, empty ones dropped.
    fn entries(users: Option<Users>) -> Vec<String> {
        let all = match users {
            None => Vec::new(),
            Some(Users::One(s)) => s.split('|').map(str::to_owned).collect(),
            Some(Users::Many(v)) => v,
        };
        (all.iter().map(|u| u.trim()))
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    touser: Option<Users>,
    /// Department ids (`|`-separated or a list): needs a token with scope broadcast.
    #[serde(default)]
    toparty: Option<Users>,
    /// Tag ids: needs a token with scope broadcast.
    #[serde(default)]
    totag: Option<Users>,
    /// A group chat the app created (appchat/send), instead of members.
    #[serde(default)]
    chatid: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    markdown: Option<String>,
    #[serde(default)]
    textcard: Option<TextCard>,
    /// Items as agents answer them (`AppMessage::from_item`), sent in order.
    #[serde(default)]
    messages: Option<Vec<serde_json::Value>>,
}

/// `POST /api/v1/send`: an app message to members (each delivered within their own rate limit),
/// to departments, tags or `@all` (tokens with scope broadcast), or to a group chat (`chatid`).
async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let req: SendBody = parse(&body)?;
    let users = Users::entries(req.touser);
    let (parties, tags) = (Users::entries(req.toparty), Users::entries(req.totag));
    let chatid = (req.chatid.as_deref().map(str::trim))
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    if let Some(entry) = users.iter().find(|u| u.contains('|')) {
        return Err(bad_request(format!(
            "touser: {entry:?} holds several UserIDs: write them as a list, or as one text a|b"
        )));
    }
    // `@all` in any spelling, with or without a corp, is everyone: a broadcast.
    let everyone = |u: &String| {
        let user = u.rsplit(':').next().unwrap_or(u);
        user.trim().eq_ignore_ascii_case("@all")
    };
    let broadcast = !parties.is_empty() || !tags.is_empty() || users.iter().any(everyone);
    match (&chatid, users.is_empty() && !broadcast) {
        (Some(_), false) => {
            return Err(bad_request(
                "give either chatid (a group chat) or touser/toparty/totag (members), not both",
            ))
        }
        (None, true) => {
            return Err(bad_request(
                "touser: at least one UserID is required (or toparty, totag, or chatid)",
            ))
        }
        _ => {}
    }
    if broadcast && !caller.broadcast {
        return Err(ApiFailure(HttpError::Forbidden(
            "this token may not send to departments, tags or @all: list it in api.tokens as {token: ..., scopes: [broadcast]}".into(),
        )));
    }
    // Problems are named by item when a list was given (`messages[2].image: ...`).
    let listed = req.messages.is_some();
    let at = |i: usize| match listed {
        true => format!("messages[{i}]."),
        false => String::new(),
    };
    let messages = match (req.text, req.markdown, req.textcard, req.messages) {
        (Some(content), None, None, None) => vec![AppMessage::Text { content }],
        (None, Some(content), None, None) => vec![AppMessage::Markdown { content }],
        (None, None, Some(card), None) => vec![AppMessage::Textcard(card)],
        (None, None, None, Some(items)) if !items.is_empty() => (items.iter().enumerate())
            .map(|(i, item)| {
                AppMessage::from_item(item).map_err(|e| bad_request(format!("messages[{i}].{e}")))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad_request(
            "exactly one of text, markdown, textcard or messages (a non-empty list) is required",
        )),
    };
    let mut pieces = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        if chatid.is_some() && matches!(message, AppMessage::TemplateCard { .. }) {
            return Err(bad_request(format!(
                "{}template_card: a group chat (appchat/send) does not take template cards",
                at(i)
            )));
        }
        let more = (message.into_pieces()).map_err(|e| bad_request(format!("{}{e}", at(i))))?;
        for piece in &more {
            let checked = state.dispatcher.outbound().check_media(piece).await;
            checked.map_err(|why| bad_request(format!("{}{}: {why}", at(i), piece.msgtype())))?;
        }
        pieces.extend(more);
    }
    let apps = state.dispatcher.apps();
    // The app named in the request, else the only app; with several and none named, each user's
    // stored route decides.
    let fixed = match &req.app {
        Some(name) => Some(
            apps.by_name(name)
                .ok_or_else(|| not_found(format!("no app named {name:?} is configured")))?
                .config
                .name
                .clone(),
        ),
        None => match apps.iter().collect::<Vec<_>>().as_slice() {
            [only] => Some(only.config.name.clone()),
            _ => None,
        },
    };
    // Resolve every recipient first, so a bad request stores nothing.
    let mut plan: Vec<(String, Recipients)> = Vec::new();
    if chatid.is_some() || broadcast {
        let Some(app) = fixed.as_deref().and_then(|name| apps.by_name(name)) else {
            return Err(bad_request(
                "app: required, several apps are configured (a group chat or a broadcast goes through one)",
            ));
        };
        let to = match chatid {
            Some(chatid) => Recipients::Chat(chatid),
            None => {
                let mut touser = Vec::new();
                for entry in &users {
                    let (_, user) = resolve(&state, apps, Some(&app.config.name), entry).await?;
                    touser.push(user);
                }
                Recipients::Many {
                    touser: touser.join("|"),
                    toparty: parties.join("|"),
                    totag: tags.join("|"),
                }
            }
        };
        plan.push((app.config.name.clone(), to));
    } else {
        for entry in &users {
            let (app, user) = resolve(&state, apps, fixed.as_deref(), entry).await?;
            plan.push((app, Recipients::Member(user)));
        }
    }
    // One submission: all recipients' pushes are stored together, or none is.
    let pushes = plan
        .into_iter()
        .flat_map(|(app, to)| {
            pieces.iter().map(move |message| Push::App {
                app: app.clone(),
                to: to.clone(),
                message: message.clone(),
            })
        })
        .collect();
    Ok(accepted(state.dispatcher.submit(pushes).await?))
}

/// The app and UserID one `touser` entry is sent to. `corp_id:user_id` names the corp; a bare
/// UserID is looked up in every corp, and one known in two corps is refused (409) rather than
/// guessed. `fixed` is the app the request named, or the only one configured.
async fn resolve(
    state: &AppState,
    apps: &crate::app::Apps,
    fixed: Option<&str>,
    entry: &str,
) -> Result<(String, String), ApiFailure> {
    let fixed = fixed.and_then(|name| apps.by_name(name));
    if entry.ends_with(':') || entry.starts_with(':') {
        return Err(bad_request(format!(
            "touser: {entry:?} must be a UserID or corp_id:user_id"
        )));
    }
    let Some((corp, user)) = entry.split_once(':') else {
        if let Some(app) = fixed {
            return Ok((app.config.name.clone(), entry.to_owned()));
        }
        let mut corps: Vec<String> = apps.iter().map(|a| a.config.corp_id.clone()).collect();
        corps.sort_unstable();
        corps.dedup();
        let mut found: Vec<(String, String)> = Vec::new();
        for corp in corps {
            if let Some(app) = state.store.route(&format!("{corp}:{entry}")).await? {
                found.push((corp, app));
            }
        }
        return match found.as_slice() {
            [] => Err(bad_request(format!(
                "app: required, several apps are configured and {entry:?} has not written to any"
            ))),
            [(_, app)] => Ok((app.clone(), entry.to_owned())),
            _ => {
                let known: Vec<String> = (found.iter())
                    .map(|(corp, app)| format!("{corp}:{entry} through app {app}"))
                    .collect();
                Err(ApiFailure(HttpError::Conflict(format!(
                    "touser: {entry:?} has written in more than one corp ({}); address one as corp_id:user_id",
                    known.join(", ")
                ))))
            }
        };
    };
    if let Some(app) = fixed {
        if app.config.corp_id != corp {
            return Err(bad_request(format!(
                "touser: {entry:?} is in corp {corp}, but app {:?} belongs to {}",
                app.config.name, app.config.corp_id
            )));
        }
        return Ok((app.config.name.clone(), user.to_owned()));
    }
    if let Some(app) = state.store.route(entry).await? {
        return Ok((app, user.to_owned()));
    }
    let mut of_corp = apps.iter().filter(|a| a.config.corp_id == corp);
    match (of_corp.next(), of_corp.next()) {
        (Some(only), None) => Ok((only.config.name.clone(), user.to_owned())),
        (None, _) => Err(bad_request(format!(
            "touser: no app of corp {corp} is configured ({entry:?})"
        ))),
        _ => Err(bad_request(format!(
            "app: required, corp {corp} has several apps and {entry:?} has not written to any"
        ))),
    }
}

/// `GET /api/v1/failed`: work that failed for good (newest first), with errcode and hint.
async fn failed(State(state): State<AppState>) -> Result<Response, ApiFailure> {
    let items = state.store.failed(1000).await?;
    let items: Vec<serde_json::Value> = items.iter().map(|i| i.report()).collect();
    Ok(Json(json!({ "failed": items })).into_response())
}

/// `POST /api/v1/failed/{id}/retry`: queue a failed job or delivery again (a job's recorded reply
/// is resent; the agent is not asked again). 202 with the new job's or delivery's id.
async fn retry_failed(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    use crate::dispatch::{retry, Retried};
    let which = FailedId::parse(&id).map_err(|e| bad_request(e.to_string()))?;
    let dispatcher = Some(&*state.dispatcher);
    match retry(&*state.store, dispatcher, which, caller.broadcast).await? {
        Retried::Queued(new) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "status": "accepted", "id": new })),
        )
            .into_response()),
        Retried::NotFound => Err(not_found(format!(
            "no failed {id} that was not retried already"
        ))),
        Retried::NeedsBroadcast => Err(ApiFailure(HttpError::Forbidden(format!(
            "{id} went to departments, tags or @all: retrying it needs a token with scopes: [broadcast]"
        )))),
    }
}

/// `GET /api/v1/deliveries/{id}`: what became of a push.
async fn delivery(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad_request(format!("delivery id must be a number, got {id:?}")))?;
    match state.store.delivery(id).await? {
        Some(status) => Ok(Json(status).into_response()),
        None => Err(not_found(format!("no delivery {id}"))),
    }
}
