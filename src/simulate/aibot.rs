//! `simulate --aibot NAME`: play a member writing to an AI bot. The gateway runs in this process
//! with the bot's configuration and a built-in stand-in for WeCom's long-connection endpoint (a
//! WebSocket server on 127.0.0.1): it takes the subscription, pushes the member's message, and
//! prints each frame the gateway answers with (the stream's updates as they come, then its
//! finish) as the JSON WeCom would receive.
//!
//! Must never: connect to WeCom, or print the bot's Secret.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::Message;

use super::{tempfile_dir, SimulateError, Simulation};
use crate::aibot::frame::{self, Incoming};
use crate::aibot::settings::Mode;
use crate::config::{Config, StoreKind};
use crate::Application;

/// The stand-in's socket to the gateway: pushes go out on it, and every frame that comes in is
/// answered and printed. A finished stream (or a message sent) is counted on `done`.
async fn stand_in(
    done: mpsc::UnboundedSender<()>,
) -> Result<
    (
        SocketAddr,
        Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
    ),
    SimulateError,
> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| SimulateError::Setup(format!("cannot start the AI-bot stand-in: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimulateError::Setup(e.to_string()))?;
    let outbox: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>> = Arc::default();
    let current = outbox.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let done = done.clone();
            let current = current.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(out) = rx.recv() => {
                            if sink.send(Message::text(out)).await.is_err() { return; }
                        }
                        message = stream.next() => {
                            let Some(Ok(Message::Text(text))) = message else { return };
                            let Ok(Incoming::Push { cmd, req_id, body }) = Incoming::parse(&text) else { continue };
                            let answer = json!({"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"});
                            if sink.send(Message::text(answer.to_string())).await.is_err() { return; }
                            match cmd.as_str() {
                                frame::SUBSCRIBE => *current.lock().await = Some(tx.clone()),
                                frame::PING => {}
                                _ => {
                                    print(&json!({"cmd": cmd, "body": body}));
                                    // One answer's end: its bubble finished (what follows it is
                                    // printed as it comes, before the next message's frames).
                                    if body["stream"]["finish"] == true {
                                        let _ = done.send(());
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    Ok((addr, outbox))
}

fn print(frame: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{frame}");
    let _ = out.flush();
}

/// Run the gateway in-process with bot `name` and play the member.
pub async fn run(mut config: Config, sim: Simulation, name: &str) -> Result<(), SimulateError> {
    let bot = config
        .aibots
        .iter()
        .find(|b| b.name == name)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = config.aibots.iter().map(|b| b.name.as_str()).collect();
            SimulateError::Setup(format!(
                "no AI bot named {name:?} is configured (configured: {known:?})"
            ))
        })?;
    if !sim.allow_anyone && !bot.allowlist.allows("", &sim.user) {
        return Err(SimulateError::NotAllowed {
            user: sim.user.clone(),
        });
    }
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (ws, outbox) = stand_in(done_tx).await?;
    let data = tempfile_dir()?;
    // Never the real thing: a memory store, the stand-in, only this bot, loopback only.
    config.store = StoreKind::Memory;
    config.data_dir = data.clone();
    config.api_base_url = "http://127.0.0.1:9".into();
    config.host = std::net::IpAddr::from([127, 0, 0, 1]);
    config.port = 0;
    config.metrics_listen = None;
    config.bots.clear();
    config.apps.clear();
    config.aibot.ws_url = format!("ws://{ws}");
    let mut bot = bot;
    bot.mode = Mode::LongConnection {
        secret: "simulated".into(),
    };
    bot.allowlist.allow_all |= sim.allow_anyone;
    config.aibots = vec![bot.clone()];
    config.media.public_url = None;
    let gateway = Application::build(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway.run_until(async {
        let _ = stopped.await;
    }));
    let failed_before = crate::metrics::total(crate::metrics::AGENT_FAILURES);
    let mut failures = Vec::new();
    let texts: Vec<String> = match sim.interactive {
        false => vec![sim.text.clone()],
        true => {
            let mut lines = Vec::new();
            let stdin = std::io::stdin();
            for line in std::io::BufRead::lines(stdin.lock()).map_while(Result::ok) {
                if !line.trim().is_empty() {
                    lines.push(line);
                }
            }
            lines
        }
    };
    for (n, text) in texts.iter().enumerate() {
        let tx = wait_connected(&outbox).await?;
        let body = json!({
            "msgid": format!("simulated-{n}-{}", hex::encode(rand::random::<[u8; 4]>())),
            "aibotid": bot.bot_id, "chattype": "single", "from": {"userid": sim.user},
            "msgtype": "text", "text": {"content": text},
        });
        let req_id = format!("simulated-{n}");
        let push =
            json!({"cmd": frame::MESSAGE_CALLBACK, "headers": {"req_id": req_id}, "body": body});
        let _ = tx.send(push.to_string());
        // The answer's end: its stream finished (or, past it, a message sent).
        if tokio::time::timeout(Duration::from_secs(3600), done.recv())
            .await
            .is_err()
        {
            failures.push("no answer within an hour".to_owned());
        }
    }
    let _ = stop.send(());
    super::finish(running, &data, failures, failed_before).await
}

/// The socket of the gateway's subscription, once it has subscribed.
async fn wait_connected(
    outbox: &Mutex<Option<mpsc::UnboundedSender<String>>>,
) -> Result<mpsc::UnboundedSender<String>, SimulateError> {
    for _ in 0..500 {
        if let Some(tx) = outbox.lock().await.clone() {
            return Ok(tx);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(SimulateError::Setup(
        "the gateway did not connect to the AI-bot stand-in".into(),
    ))
}
