//! `wecom-gateway simulate`: a local loop for people writing agents. The gateway runs in this
//! process with the configured agent, a memory store and a built-in stand-in for the WeCom API, so
//! a production configuration can never reach real members, robots or a shared queue. TEXT goes in
//! as a genuine encrypted, signed callback over HTTP, and every message that would go to WeCom is
//! printed as the JSON body WeCom would receive.
//!
//! The configured allowlist applies (one rule, [`crate::allowlist::Allowlist::allows`]): a member
//! it refuses is refused here with how to allow them, unless `allow_anyone` asks otherwise. The
//! exit code says how it went: a refused member, a callback answered 4xx/5xx or a failed agent
//! is an error, so a script can tell.
//!
//! `--url` instead sends a signed callback (or, with `--verify`, the URL check the admin console's
//! Save button makes) to a running gateway, and says what its answer means.
//!
//! Must never: talk to the real WeCom API, or print a secret.

pub mod aibot;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::{Config, StoreKind};
use crate::crypto::MsgCrypt;
use crate::store::Store;
use crate::Application;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// The app the member writes to (by name); the first configured app by default.
    pub app: Option<String>,
    pub user: String,
    /// An image to send (a member's photo), served by the stand-in's media/get.
    pub image: Option<PathBuf>,
    pub text: String,
    pub interactive: bool,
    /// Let any member through, whatever the configured allowlist says (the old behaviour).
    pub allow_anyone: bool,
    /// Write to this AI bot (by name) instead of an app.
    pub aibot: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Startup(#[from] crate::StartupError),
    /// The configured allowlist refuses the member: WeCom's messages from them would be
    /// acknowledged and never reach the agent.
    #[error("{user:?} is not on the allowlist: the gateway acknowledges their messages and never passes them to the agent. {}", how_to_allow(.user))]
    NotAllowed { user: String },
    /// Something went wrong for the member: the callback was refused, or the agent failed.
    #[error("{0}")]
    Failed(String),
}

/// What `--url` saw: the line to print, and whether it means success.
#[derive(Debug, Clone)]
pub struct Answer {
    pub said: String,
    /// False on a 4xx/5xx, an answer that is not the gateway's, or a member the local
    /// configuration refuses.
    pub success: bool,
}

/// How an operator lets `user` through.
fn how_to_allow(user: &str) -> String {
    format!("To allow them, add {user:?} to allowed_users (WECOM_CALLBACK_ALLOWED_USERS), or allow everyone with allowed_users: [\"*\"] or allow_all_users: true; or pass --allow-anyone to simulate anyway")
}

/// Whether `config`'s allowlist lets `user` talk to `app`'s agent (or `allow_anyone` says so).
fn allowed(config: &Config, app: &crate::config::AppConfig, sim: &Simulation) -> bool {
    sim.allow_anyone || config.allowlist.allows(&app.corp_id, &sim.user)
}

fn now() -> String {
    crate::outbound::upload::unix_now().to_string()
}

/// The stand-in for the WeCom API: tokens for anyone, every message printed, uploads accepted,
/// and `image` served as the member's media.
async fn stand_in(image: Option<Vec<u8>>) -> Result<SocketAddr, SimulateError> {
    let print = |body: Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{body}");
        let _ = out.flush();
        Json(json!({"errcode": 0, "errmsg": "ok", "msgid": "simulated"}))
    };
    let image = Arc::new(image);
    let router = Router::new()
        .route(
            "/cgi-bin/gettoken",
            get(|| async {
                Json(json!({"errcode": 0, "access_token": "simulated", "expires_in": 7200}))
            }),
        )
        .route(
            "/cgi-bin/message/send",
            post(move |Json(b): Json<Value>| async move { print(b) }),
        )
        .route(
            "/cgi-bin/appchat/send",
            post(move |Json(b): Json<Value>| async move { print(b) }),
        )
        .route(
            "/cgi-bin/message/update_template_card",
            post(move |Json(b): Json<Value>| async move { print(b) }),
        )
        .route(
            "/cgi-bin/message/recall",
            post(|| async { Json(json!({"errcode": 0, "errmsg": "ok"})) }),
        )
        .route(
            "/cgi-bin/media/upload",
            post(|| async { Json(json!({"errcode": 0, "media_id": "simulated-upload"})) }),
        )
        .route(
            "/cgi-bin/media/get",
            get(
                move |Query(_): Query<std::collections::HashMap<String, String>>| {
                    let image = image.clone();
                    async move {
                        use axum::response::IntoResponse;
                        match image.as_ref() {
                            Some(bytes) => (
                                [
                                    (axum::http::header::CONTENT_TYPE, "image/jpeg"),
                                    (
                                        axum::http::header::CONTENT_DISPOSITION,
                                        "attachment; filename=\"photo.jpg\"",
                                    ),
                                ],
                                bytes.clone(),
                            )
                                .into_response(),
                            None => Json(json!({"errcode": 40007, "errmsg": "invalid media_id"}))
                                .into_response(),
                        }
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| SimulateError::Setup(format!("cannot start the WeCom stand-in: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

/// A member's message as WeCom would send it: the callback query and body.
fn callback(
    crypt: &MsgCrypt,
    corp_id: &str,
    agent_id: u64,
    user: &str,
    xml_body: &str,
) -> (String, String) {
    let xml = format!(
        "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{}</CreateTime>{xml_body}<MsgId>{}</MsgId><AgentID>{agent_id}</AgentID></xml>",
        now(),
        rand::random::<u32>()
    );
    let nonce = rand::random::<u32>().to_string();
    let e = crypt.encrypt_msg(&xml, &now(), &nonce, rand::random());
    let query = format!(
        "msg_signature={}&timestamp={}&nonce={}",
        e.msg_signature, e.timestamp, e.nonce
    );
    (query, e.to_callback_xml(corp_id, &agent_id.to_string()))
}

fn text_body(text: &str) -> String {
    format!("<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{text}]]></Content>")
}

/// Run the gateway in-process and play the member.
pub async fn run(mut config: Config, sim: Simulation) -> Result<(), SimulateError> {
    let image =
        match &sim.image {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                SimulateError::Setup(format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
    let app = match &sim.app {
        Some(name) => config.apps.iter().find(|a| &a.name == name),
        None => config.apps.first(),
    };
    let app = app.cloned().ok_or_else(|| {
        SimulateError::Setup(match &sim.app {
            Some(name) => format!("no app named {name:?} is configured"),
            None => "no WeCom app is configured: simulate plays a member writing to one".into(),
        })
    })?;
    if !allowed(&config, &app, &sim) {
        return Err(SimulateError::NotAllowed {
            user: sim.user.clone(),
        });
    }
    let wecom = stand_in(image.clone()).await?;
    let data = tempfile_dir()?;
    // Never the real thing: a memory store, the stand-in, no robots, loopback only.
    config.store = StoreKind::Memory;
    config.data_dir = data.clone();
    config.api_base_url = format!("http://{wecom}");
    config.host = std::net::IpAddr::from([127, 0, 0, 1]);
    config.port = 0;
    config.metrics_listen = None;
    config.bots.clear();
    // The configured allowlist stays, so the gateway decides as it would in production.
    config.allowlist.allow_all |= sim.allow_anyone;
    config.shutdown_grace_secs = config.shutdown_grace_secs.max(3600);
    config.media.public_url = None;
    let gateway = Application::build(config.clone()).await?;
    let addr = gateway.local_addr();
    let store = gateway.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway.run_until(async {
        let _ = stopped.await;
    }));
    let crypt = MsgCrypt::new(app.token(), app.encoding_aes_key(), &app.corp_id)
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}{}", config.path);
    let send = |body: String| {
        let (query, envelope) = callback(&crypt, &app.corp_id, app.agent_id, &sim.user, &body);
        let request = http.post(format!("{url}?{query}")).body(envelope);
        async move {
            let status = request.send().await.map(|r| r.status().as_u16());
            eprintln!(
                "# callback answered {}",
                status
                    .as_ref()
                    .map_or_else(|e| e.to_string(), |s| s.to_string())
            );
            match status {
                Ok(200) => None,
                Ok(s) => Some(format!("the callback was answered {s}: {}", meaning(s))),
                Err(e) => Some(format!("the callback was not answered: {e}")),
            }
        }
    };
    // Every failure seen, said once at the end (a conversation goes on after one).
    let mut failures: Vec<String> = Vec::new();
    let failed_before = crate::metrics::total(crate::metrics::AGENT_FAILURES);
    if image.is_some() {
        failures.extend(send("<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[https://wework.qpic.cn/simulated]]></PicUrl><MediaId><![CDATA[simulated-image]]></MediaId>".into()).await);
        settle(&*store).await;
    }
    if !sim.text.is_empty() {
        failures.extend(send(text_body(&sim.text)).await);
        settle(&*store).await;
    }
    if sim.interactive {
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        loop {
            eprint!("{}> ", sim.user);
            let Ok(Some(line)) = lines.next_line().await else {
                break;
            };
            if line.trim().is_empty() {
                continue;
            }
            failures.extend(send(text_body(&line)).await);
            settle(&*store).await;
        }
    }
    let _ = stop.send(());
    finish(running, &data, failures, failed_before).await
}

/// The end of a simulation: the gateway stopped, its data removed, and every failure seen (the
/// agent's counted since `failed_before`) said at once.
pub(crate) async fn finish(
    running: tokio::task::JoinHandle<Result<(), crate::StartupError>>,
    data: &std::path::Path,
    mut failures: Vec<String>,
    failed_before: f64,
) -> Result<(), SimulateError> {
    let result = running
        .await
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    let _ = std::fs::remove_dir_all(data);
    result?;
    let agent_failures = crate::metrics::total(crate::metrics::AGENT_FAILURES) - failed_before;
    if agent_failures > 0.0 {
        failures.push(format!(
            "the agent failed {agent_failures} time(s) (the member got the failure message; the log says why)"
        ));
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(SimulateError::Failed(failures.join("; "))),
    }
}

/// Wait until every queued message has been handled (and its replies printed).
async fn settle(store: &dyn Store) {
    // The callback is queued before it is answered; the job leaves the store once handled.
    while !store.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tempfile_dir() -> Result<PathBuf, SimulateError> {
    let dir = std::env::temp_dir().join(format!(
        "wecom-gateway-simulate-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| SimulateError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// `--url`: one signed callback (or the URL check) to a running gateway; what its answer means.
pub async fn remote(
    url: &str,
    config: &Config,
    sim: &Simulation,
    verify: bool,
) -> Result<Answer, SimulateError> {
    let app = match &sim.app {
        Some(name) => config.apps.iter().find(|a| &a.name == name),
        None => config.apps.first(),
    }
    .ok_or_else(|| SimulateError::Setup("the app to sign for is not configured".into()))?;
    let crypt = MsgCrypt::new(app.token(), app.encoding_aes_key(), &app.corp_id)
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let (status, body, success) = if verify {
        let echo = rand::random::<u64>().to_string();
        let echostr = crypt.encrypt(echo.as_bytes(), rand::random());
        let (ts, nonce) = (now(), rand::random::<u32>().to_string());
        let sig = crypt.sign(&ts, &nonce, &echostr);
        let echostr =
            percent_encoding::utf8_percent_encode(&echostr, percent_encoding::NON_ALPHANUMERIC);
        let answer = http
            .get(format!(
                "{url}{sep}msg_signature={sig}&timestamp={ts}&nonce={nonce}&echostr={echostr}"
            ))
            .send()
            .await
            .map_err(|e| {
                SimulateError::Setup(format!("{url} did not answer: {}", e.without_url()))
            })?;
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        let ok = status == 200 && text == echo;
        let meaning = if ok {
            "the URL check passes: the admin console's Save will succeed".to_owned()
        } else if status == 200 {
            format!("answered 200 but not with the decrypted echostr (got {} bytes): is this the gateway?", text.len())
        } else {
            meaning(status)
        };
        (status, meaning, ok)
    } else {
        let (query, envelope) = callback(
            &crypt,
            &app.corp_id,
            app.agent_id,
            &sim.user,
            &text_body(&sim.text),
        );
        let answer = http
            .post(format!("{url}{sep}{query}"))
            .body(envelope)
            .send()
            .await
            .map_err(|e| {
                SimulateError::Setup(format!("{url} did not answer: {}", e.without_url()))
            })?;
        let status = answer.status().as_u16();
        // The gateway answers 200 to a member it drops too (WeCom would otherwise retry), so a
        // 200 says nothing about the allowlist: only the local configuration can be asked.
        let refused_here = !allowed(config, app, sim);
        let meaning = match status {
            200 if refused_here => format!(
                "accepted (200); whether the member is allowed is decided by the gateway's allowlist. The local configuration's allowlist refuses {:?}: a gateway with the same one acknowledges their messages and never passes them to the agent. {}",
                sim.user,
                how_to_allow(&sim.user)
            ),
            200 => "accepted (200); whether the member is allowed is decided by the gateway's allowlist".to_owned(),
            s => meaning(s),
        };
        (status, meaning, status == 200 && !refused_here)
    };
    Ok(Answer {
        said: format!("HTTP {status}: {body}"),
        success,
    })
}

/// What a gateway's refusal means, in the operator's words.
fn meaning(status: u16) -> String {
    match status {
        403 => "refused: the signature does not match (token differs), or the clock is off by more than replay_window".into(),
        400 => "refused: the message could not be read (EncodingAESKey or corp_id differ)".into(),
        404 => "not found: the path is not the gateway's callback path".into(),
        413 => "refused: larger than max_body_bytes".into(),
        503 => "try later: the gateway's store is full or unreachable".into(),
        s => format!("unexpected answer {s}: is a proxy in between?"),
    }
}
