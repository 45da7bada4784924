//! Load script: durable acknowledgements per second on the POST callback path.
//!
//! Starts the gateway in-process (SQLite store in a temporary directory, synchronous=FULL, an agent
//! that never answers so only the ack path is measured), pre-encrypts N distinct text callbacks,
//! posts them with C concurrent connections, then posts the same N again (every one a dedup hit).
//! Client and server share the machine, so the figures are a lower bound for the server alone.
//!
//!     cargo run --release --example loadtest -- [REQUESTS] [CONCURRENCY]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wecom_gateway::config::Config;
use wecom_gateway::crypto::MsgCrypt;
use wecom_gateway::Application;

const CORP: &str = "ww1436e0e65a779aee";
const TOKEN: &str = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo";
const KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let requests: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let env = [
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("CORP_ID", CORP.to_owned()),
        ("CORP_SECRET", "unused".to_owned()),
        ("AGENT_ID", "1000002".to_owned()),
        ("TOKEN", TOKEN.to_owned()),
        ("ENCODING_AES_KEY", KEY.to_owned()),
        ("ALLOW_ALL_USERS", "true".to_owned()),
        ("API_BASE_URL", "http://127.0.0.1:9".to_owned()),
        ("WORKERS", "1".to_owned()),
        ("SHUTDOWN_GRACE_SECS", "0".to_owned()),
        ("DATA_DIR", dir.path().display().to_string()),
        // An agent that never answers: only the acknowledgement path is measured.
        ("AGENT__DELAY_MS", "3600000".to_owned()),
    ]
    .map(|(k, v)| (format!("WECOM_CALLBACK_{k}"), v));
    let (config, _) = Config::load(None, env)?;
    let app = Application::build(config).await?;
    let base = format!("http://{}/wecom/callback", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));

    let crypt = MsgCrypt::new(TOKEN, KEY, CORP)?;
    let callbacks: Arc<Vec<(String, String)>> = Arc::new(
        (0..requests)
            .map(|n| {
                let xml = format!(
                    "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[user{}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[帮我看看明天上午的会议安排 #{n}]]></Content><MsgId>{}</MsgId><AgentID>1000002</AgentID></xml>",
                    n % 1000,
                    7_000_000_000_000_000_000u64 + n as u64
                );
                let e = crypt.encrypt_msg(&xml, "1700000000", &n.to_string(), rand::random());
                let url = format!("{base}?msg_signature={}&timestamp={}&nonce={}", e.msg_signature, e.timestamp, e.nonce);
                (url, e.to_callback_xml(CORP, "1000002"))
            })
            .collect(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;

    println!(
        "requests: {requests}, concurrency: {concurrency}, store: SQLite WAL synchronous=FULL"
    );
    for round in ["new messages (durable insert)", "same again (dedup hits)"] {
        let started = Instant::now();
        let latencies: Vec<Duration> = futures::stream::iter(0..requests)
            .map(|i| {
                let (http, callbacks) = (http.clone(), callbacks.clone());
                async move {
                    let (url, body) = &callbacks[i];
                    let t = Instant::now();
                    let status = http
                        .post(url)
                        .body(body.clone())
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    assert_eq!(status.ok(), Some(200), "request {i} not acknowledged");
                    t.elapsed()
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let mut sorted = latencies;
        sorted.sort();
        let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        println!(
            "{round}: {:.0} acks/s ({requests} in {:.2} s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            requests as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            sorted[sorted.len() - 1].as_secs_f64() * 1e3,
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}
