//! HTTP calls to the WeCom server API with per-app cached access tokens.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, Call};
use super::media::MediaType;
use super::payload::{AppMessage, BotMessage, Recipients};
use super::token::{AccessToken, TokenCache};

/// What WeCom said about an accepted message/send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReceipt {
    pub msgid: Option<String>,
    /// Recipients WeCom could not deliver to (`invaliduser`), lowercased by WeCom; empty if none.
    pub invalid_users: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// A file ready to upload: its bytes, the name WeCom shows, and its content type.
#[derive(Clone)]
pub struct Upload {
    pub bytes: Vec<u8>,
    pub file_name: String,
    pub content_type: &'static str,
}

impl Upload {
    /// The multipart body WeCom's upload calls take: the file in the field `media`.
    fn form(&self) -> reqwest::multipart::Form {
        let part = || {
            reqwest::multipart::Part::bytes(self.bytes.clone()).file_name(self.file_name.clone())
        };
        let typed = part()
            .mime_str(self.content_type)
            .unwrap_or_else(|_| part());
        reqwest::multipart::Form::new().part("media", typed)
    }
}

fn media_id(answer: &serde_json::Map<String, Value>, call: &str) -> Result<String, ApiError> {
    let id = answer.get("media_id").and_then(Value::as_str);
    id.filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Decode(format!("{call} answer has no media_id")))
}

/// What the client needs of one app to call the API for it: its names, its secret, its token
/// cache. The runtime app (`crate::app::App`) implements it; the client knows nothing else of it.
pub trait AppAccess: Send + Sync {
    /// The app's name in the configuration, for logs and metrics.
    fn name(&self) -> &str;
    fn corp_id(&self) -> &str;
    /// Sent to gettoken only.
    fn corp_secret(&self) -> &str;
    fn agent_id(&self) -> u64;
    fn tokens(&self) -> &TokenCache;
}

/// A client for one WeCom API base URL (the real one, a proxy, or a test fake).
#[derive(Clone)]
pub struct WecomClient {
    http: reqwest::Client,
    base_url: String,
}

impl std::fmt::Debug for WecomClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WecomClient")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl WecomClient {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("wecom-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::from_reqwest)?;
        Ok(WecomClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The app's cached access token, fetching one (once, however many callers wait) if needed.
    pub async fn access_token(&self, app: &dyn AppAccess) -> Result<AccessToken, ApiError> {
        app.tokens().get(|| self.fetch_token(app)).await
    }

    async fn fetch_token(&self, app: &dyn AppAccess) -> Result<(String, u64), ApiError> {
        let url = format!("{}/cgi-bin/gettoken", self.base_url);
        let request = self
            .http
            .get(url)
            .query(&[("corpid", app.corp_id()), ("corpsecret", app.corp_secret())]);
        let body = read(Call::GetToken, request.send().await).await;
        let result = if body.is_ok() { "ok" } else { "error" };
        crate::metrics::count(
            crate::metrics::TOKEN_FETCHES,
            &[("app", app.name()), ("result", result)],
        );
        if let Err(e) = &body {
            app.tokens().set_problem(Some(e.clone()));
        }
        let body = body?;
        app.tokens().set_problem(None);
        let token = body
            .rest
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Decode("gettoken answer has no access_token".into()))?;
        let expires_in = body
            .rest
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(7200);
        tracing::info!(app = %app.name(), expires_in, "fetched a new access token");
        Ok((token.to_owned(), expires_in))
    }

    /// POST `body` to `path?access_token=...`.
    pub async fn post_json(
        &self,
        app: &dyn AppAccess,
        path: &str,
        body: &Value,
    ) -> Result<serde_json::Map<String, Value>, ApiError> {
        let url = format!("{}{}", self.base_url, path);
        self.with_token(app, || self.http.post(&url).json(body))
            .await
    }

    /// Upload a file with media/upload; WeCom's `media_id` for it (valid for 3 days).
    pub async fn upload_media(
        &self,
        app: &dyn AppAccess,
        kind: MediaType,
        file: &Upload,
    ) -> Result<String, ApiError> {
        let url = format!("{}/cgi-bin/media/upload", self.base_url);
        let request = || {
            let form = file.form();
            self.http
                .post(&url)
                .query(&[("type", kind.as_str())])
                .multipart(form)
        };
        media_id(&self.with_token(app, request).await?, "media/upload")
    }

    /// Upload a file for a group robot (webhook/upload_media, authenticated by the robot's key);
    /// the robot's media_id for it (valid for 3 days).
    pub async fn upload_bot_media(&self, key: &str, file: &Upload) -> Result<String, ApiError> {
        let url = format!("{}/cgi-bin/webhook/upload_media", self.base_url);
        let request = self.http.post(url).query(&[("key", key), ("type", "file")]);
        let body = read(Call::Webhook, request.multipart(file.form()).send().await).await?;
        media_id(&body.rest, "webhook/upload_media")
    }

    /// Make the request built by `request` with the app's access token. A stale-token errcode
    /// drops the token and retries once.
    async fn with_token(
        &self,
        app: &dyn AppAccess,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<serde_json::Map<String, Value>, ApiError> {
        let answer = |sent| async move { read(Call::WithToken, sent).await.map(|e| e.rest) };
        self.token_loop(app, request, answer).await
    }

    /// Fetch a file a member sent (media/get, valid for 3 days): the response, its body not yet
    /// read, so the caller can stream it. WeCom answers errors as JSON instead of the file.
    pub async fn get_media(
        &self,
        app: &dyn AppAccess,
        media_id: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}/cgi-bin/media/get", self.base_url);
        let request = || {
            let query = [("media_id", media_id)];
            self.http.get(&url).query(&query).timeout(timeout)
        };
        let answer = |sent: Result<reqwest::Response, reqwest::Error>| async move {
            let response = sent.map_err(ApiError::from_reqwest)?;
            // A file comes as an attachment; an error is a bare JSON (or text/plain) body.
            let headers = response.headers();
            let content_type = headers.get(reqwest::header::CONTENT_TYPE);
            let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
            let error_body = !headers.contains_key(reqwest::header::CONTENT_DISPOSITION)
                && ["application/json", "text/plain"]
                    .iter()
                    .any(|t| content_type.starts_with(t));
            if response.status().is_success() && !error_body {
                return Ok(response);
            }
            read(Call::WithToken, Ok(response)).await?;
            Err(ApiError::Decode(
                "media/get answered JSON instead of the file".into(),
            ))
        };
        self.token_loop(app, request, answer).await
    }

    /// Send the request built by `request` with the app's access token, and `answer` the
    /// response. A stale-token errcode drops the token and retries once.
    async fn token_loop<T, F, Fut>(
        &self,
        app: &dyn AppAccess,
        request: impl Fn() -> reqwest::RequestBuilder,
        answer: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Result<reqwest::Response, reqwest::Error>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut retried = false;
        loop {
            let token = self.access_token(app).await?;
            let sent = request().query(&[("access_token", token.expose())]).send();
            match answer(sent.await).await {
                Err(e) if !retried && e.is_stale_token() => {
                    tracing::warn!(app = %app.name(), errcode = e.errcode(), "access token rejected; fetching a new one and retrying once");
                    app.tokens().invalidate(&token).await;
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// Send one message (already within WeCom's limits: see `AppMessage::into_pieces`) with
    /// message/send, or appchat/send for a group chat. `resend`: an earlier attempt may have been
    /// delivered, so ask WeCom to drop an identical copy.
    pub async fn send_app(
        &self,
        app: &dyn AppAccess,
        to: &Recipients,
        message: &AppMessage,
        resend: bool,
    ) -> Result<SendReceipt, ApiError> {
        let body = message.body(to, app.agent_id(), resend);
        let rest = self.post_json(app, to.path(), &body).await?;
        let invalid_users = rest
            .get("invaliduser")
            .and_then(Value::as_str)
            .map(|s| {
                s.split('|')
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(SendReceipt {
            msgid: rest.get("msgid").and_then(Value::as_str).map(str::to_owned),
            invalid_users,
        })
    }

    /// Withdraw a message the app sent (message/recall; within 24 hours of sending).
    pub async fn recall(&self, app: &dyn AppAccess, msgid: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "msgid": msgid });
        self.post_json(app, "/cgi-bin/message/recall", &body)
            .await
            .map(drop)
    }

    /// Post one message to a group robot. The key is the robot's only credential: it goes into the
    /// query string and nowhere else (errors carry no URL).
    pub async fn send_bot(&self, key: &str, message: &BotMessage) -> Result<(), ApiError> {
        let url = format!("{}/cgi-bin/webhook/send", self.base_url);
        let request = self
            .http
            .post(url)
            .query(&[("key", key)])
            .json(&message.body());
        read(Call::Webhook, request.send().await).await?;
        Ok(())
    }
}

/// Read `call`'s answer: non-2xx is an HTTP error, a non-zero errcode is an error even with HTTP 200.
async fn read(
    call: Call,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Envelope, ApiError> {
    let response = response.map_err(ApiError::from_reqwest)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ApiError::Http {
            status: status.as_u16(),
        });
    }
    let body: Envelope = response.json().await.map_err(ApiError::from_reqwest)?;
    if body.errcode != 0 {
        return Err(ApiError::WeCom {
            call,
            errcode: body.errcode,
            errmsg: body.errmsg,
        });
    }
    Ok(body)
}
