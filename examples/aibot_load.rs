//! Load script for AI bots' streamed replies: how soon the member sees the bubble, and how many
//! stream updates the gateway sustains for many conversations at once.
//!
//! Starts the gateway in-process (SQLite store in a temporary directory, one AI bot) against a
//! stand-in for WeCom's long-connection endpoint on 127.0.0.1, which answers every frame at once
//! and notes when each arrives. An agent that streams writes a piece every 20 ms for SECONDS; the
//! stand-in pushes CONVERSATIONS messages from as many members at once. Reported: the time from
//! a push to its first frame (the placeholder) and to the first frame showing the agent's words,
//! and the stream updates per second while every conversation is streaming (each conversation is
//! paced by `aibot.update_ms`, UPDATE_MS here).
//!
//!     cargo run --release --example aibot_load -- [CONVERSATIONS] [SECONDS] [UPDATE_MS]
//!
//! `WECOM_CALLBACK_*` variables set when it runs override its settings (`WECOM_CALLBACK_STORE=memory`
//! shows what the store's durable writes cost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wecom_gateway::agent::{Agent, AgentError, Turn};
use wecom_gateway::wecom::AppMessage;
use wecom_gateway::Application;

/// Writes a piece every 20 ms for `for_how_long`, showing each on the bubble.
struct Streaming {
    for_how_long: Duration,
}

#[async_trait]
impl Agent for Streaming {
    fn name(&self) -> &str {
        "streaming"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let started = Instant::now();
        let mut text = String::new();
        let mut n = 0;
        while started.elapsed() < self.for_how_long {
            tokio::time::sleep(Duration::from_millis(20)).await;
            n += 1;
            let piece = format!("词{n} ");
            text.push_str(&piece);
            if let Some(partial) = turn.partial {
                partial.push(&piece);
            }
        }
        Ok(vec![AppMessage::text(text)])
    }
}

/// When each reply's frames arrived, by req_id: (at, is the placeholder, finished).
type Seen = Arc<Mutex<HashMap<String, Vec<(Instant, bool, bool)>>>>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (conversations, seconds, update_ms) = (arg(0, 100) as usize, arg(1, 10), arg(2, 500));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let (push_tx, push_rx) = mpsc::unbounded_channel::<String>();
    let push_rx = Arc::new(tokio::sync::Mutex::new(push_rx));
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel::<()>();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let Ok(socket) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (mut sink, mut stream) = socket.split();
                let (seen, pushes, subscribed) =
                    (seen.clone(), push_rx.clone(), subscribed_tx.clone());
                tokio::spawn(async move {
                    let mut pushes = pushes.lock().await;
                    loop {
                        tokio::select! {
                            Some(out) = pushes.recv() => {
                                if sink.send(Message::text(out)).await.is_err() { return; }
                            }
                            message = stream.next() => {
                                let Some(Ok(Message::Text(text))) = message else { return };
                                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                                let req_id = frame["headers"]["req_id"].as_str().unwrap_or("").to_owned();
                                let answer = json!({"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"});
                                if sink.send(Message::text(answer.to_string())).await.is_err() { return; }
                                match frame["cmd"].as_str() {
                                    Some("aibot_subscribe") => { let _ = subscribed.send(()); }
                                    Some("aibot_respond_msg") => {
                                        let stream = &frame["body"]["stream"];
                                        let placeholder = stream["content"] == "思考中…";
                                        let finished = stream["finish"] == true;
                                        let mut seen = seen.lock().unwrap();
                                        seen.entry(req_id).or_default().push((Instant::now(), placeholder, finished));
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                });
            }
        });
    }

    let dir = std::env::temp_dir().join(format!("wecom-aibot-load-{}", std::process::id()));
    let env = [
        ("WECOM_CALLBACK_AIBOT_ID", "aib-load".to_owned()),
        ("WECOM_CALLBACK_AIBOT_SECRET", "load-secret".to_owned()),
        ("WECOM_CALLBACK_AIBOT__WS_URL", format!("ws://{ws}")),
        ("WECOM_CALLBACK_AIBOT__UPDATE_MS", update_ms.to_string()),
        ("WECOM_CALLBACK_ALLOW_ALL_USERS", "true".to_owned()),
        ("WECOM_CALLBACK_HOST", "127.0.0.1".to_owned()),
        ("WECOM_CALLBACK_PORT", "0".to_owned()),
        ("WECOM_CALLBACK_METRICS_LISTEN", "off".to_owned()),
        ("WECOM_CALLBACK_WORKERS", (conversations + 8).to_string()),
        ("WECOM_CALLBACK_DATA_DIR", dir.display().to_string()),
    ];
    // WECOM_CALLBACK_* variables set when it runs win (WECOM_CALLBACK_STORE=memory, say).
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("WECOM_CALLBACK_")));
    let (config, _) = wecom_gateway::config::Config::load(None, env).expect("config");
    let agent = Arc::new(Streaming {
        for_how_long: Duration::from_secs(seconds),
    });
    let app = Application::build_with_agent(config, agent)
        .await
        .expect("build");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    subscribed.recv().await;

    let mut pushed_at = HashMap::new();
    for n in 0..conversations {
        let req_id = format!("load-{n}");
        let body = json!({"msgid": format!("m-{n}"), "aibotid": "aib-load", "chattype": "single",
            "from": {"userid": format!("user{n}")}, "msgtype": "text", "text": {"content": "写点什么"}});
        let push =
            json!({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": body});
        pushed_at.insert(req_id, Instant::now());
        let _ = push_tx.send(push.to_string());
    }
    // Every conversation finished (or a generous bound).
    let deadline = Instant::now() + Duration::from_secs(seconds * 3 + 30);
    loop {
        let done = seen
            .lock()
            .unwrap()
            .values()
            .filter(|f| f.iter().any(|x| x.2))
            .count();
        if done == conversations || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let mut first = Vec::new();
    let mut words = Vec::new();
    let mut all: Vec<Instant> = Vec::new();
    for (req_id, at) in &pushed_at {
        let frames = seen.get(req_id).cloned().unwrap_or_default();
        if let Some(f) = frames.first() {
            first.push(f.0.duration_since(*at));
        }
        if let Some(f) = frames.iter().find(|f| !f.1) {
            words.push(f.0.duration_since(*at));
        }
        all.extend(frames.iter().filter(|f| !f.1 && !f.2).map(|f| f.0));
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    all.sort();
    // The steady window: from the last conversation's first update to the first one's finish.
    let rate = match (all.first(), all.last()) {
        (Some(a), Some(b)) if b > a => all.len() as f64 / b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let finished = seen.values().filter(|f| f.iter().any(|x| x.2)).count();
    println!(
        "conversations: {conversations}, agent writes for {seconds} s, aibot.update_ms {update_ms}"
    );
    println!("finished: {finished}/{conversations}");
    println!(
        "push -> first frame (placeholder): p50 {:?}, p99 {:?}",
        pct(&mut first, 0.5),
        pct(&mut first, 0.99)
    );
    println!(
        "push -> first frame with the agent's words: p50 {:?}, p99 {:?}",
        pct(&mut words, 0.5),
        pct(&mut words, 0.99)
    );
    println!(
        "stream updates: {} in all, {:.1}/s sustained ({:.2}/s per conversation; the pace allows {:.2})",
        all.len(),
        rate,
        rate / conversations as f64,
        1000.0 / update_ms as f64
    );
    let _ = stop.send(());
    let _ = running.await;
    let _ = std::fs::remove_dir_all(&dir);
}
