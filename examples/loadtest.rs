//! Load script: durable acknowledgements per second on the POST callback path.
//!
//! Default mode: starts the gateway in-process (SQLite store in a temporary directory,
//! synchronous=FULL, an agent that never answers so only the ack path is measured), pre-encrypts N
//! distinct text callbacks, posts them with C concurrent connections, then posts the same N again
//! (every one a dedup hit). Client and server share the machine, so the figures are a lower bound
//! for the server alone.
//!
//!     cargo run --release --example loadtest -- [REQUESTS] [CONCURRENCY]
//!
//! Target mode: posts to gateways that are already running (e.g. replicas of `wecom-gateway serve`
//! sharing one PostgreSQL store), callback i to target i mod T; in the second round callback i goes
//! to target (i + 1) mod T, so with several targets every dedup hit is a retry landing on another
//! replica than the first delivery. The targets must be configured with the CORP, TOKEN, KEY and
//! agent id 1000002 below (see bench/pg_replicas.sh). MsgIds start at a per-run random base so
//! runs against the same database are new messages; `--msgid-base N` fixes it.
//!
//!     loadtest REQUESTS CONCURRENCY --target http://127.0.0.1:18001,http://127.0.0.1:18002
//!
//! Emit mode: writes REQUESTS signed callbacks, one per line as `PATH?QUERY<TAB>BODY`, for an
//! outside load generator (bench/callbacks.sh feeds them to wrk), and exits. They are signed with
//! the current time, so they must be posted within the gateway's replay_window (300 s default).
//!
//!     loadtest REQUESTS --emit FILE
//!
//! `--cpu` also prints, per round, the CPU time used by every process on the machine grouped by
//! name (from /proc; Linux only), e.g. how the two cores were split between PostgreSQL, the
//! replicas and this client. `--cpu-pids P1,P2,...` (implies `--cpu`) names the processes under
//! test (the replicas, the postmaster): those, their children and this client are shown by name,
//! everything else on the machine as "other processes".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wecom_gateway::config::Config;
use wecom_gateway::crypto::MsgCrypt;
use wecom_gateway::Application;

const CORP: &str = "ww1436e0e65a779aee";
const TOKEN: &str = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo";
const KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

/// Per live process: (name, parent pid, CPU seconds used so far, user + system), from /proc.
fn cpu_by_pid() -> BTreeMap<u32, (String, u32, f64)> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After "pid (comm) ": state is field 0, ppid field 1, utime field 11, stime field 12.
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(pid, (comm, t(1) as u32, (t(11) + t(12)) / tick));
    }
    out
}

/// CPU used between two snapshots, by process name. With `ours` given, processes that are not in
/// it, not children of one in it and not this client are summed as "other processes".
fn cpu_split(
    before: &BTreeMap<u32, (String, u32, f64)>,
    after: &BTreeMap<u32, (String, u32, f64)>,
    ours: &[u32],
) -> Vec<(String, f64)> {
    let me = std::process::id();
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (comm, ppid, t)) in after {
        let d = t - before.get(pid).map(|b| b.2).unwrap_or(0.0);
        let name = if ours.is_empty() || *pid == me || ours.contains(pid) || ours.contains(ppid) {
            comm.clone()
        } else {
            "other processes".to_owned()
        };
        *by_name.entry(name).or_insert(0.0) += d;
    }
    let mut used: Vec<(String, f64)> = by_name.into_iter().filter(|(_, d)| *d >= 0.05).collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    let mut msgid_base: Option<u64> = None;
    let mut cpu = false;
    let mut ours: Vec<u32> = Vec::new();
    let mut emit: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--target" => {
                let list = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--target needs URLs"))?;
                targets.extend(
                    list.split(',')
                        .filter(|t| !t.is_empty())
                        .map(|t| t.trim_end_matches('/').to_owned()),
                );
            }
            "--msgid-base" => {
                let n = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--msgid-base needs N"))?;
                msgid_base = Some(n.parse()?);
            }
            "--cpu" => cpu = true,
            "--emit" => {
                emit = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--emit needs a file"))?,
                );
            }
            "--cpu-pids" => {
                cpu = true;
                let list = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--cpu-pids needs PIDs"))?;
                for pid in list.split(',').filter(|p| !p.is_empty()) {
                    ours.push(pid.parse()?);
                }
            }
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let requests: usize = positional
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let concurrency: usize = positional
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);

    // In-process gateway on SQLite unless targets were given.
    let mut local = None;
    let dir = tempfile::tempdir()?;
    let (bases, store): (Vec<String>, String) = if targets.is_empty() && emit.is_none() {
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
        local = Some((stop_tx, server));
        (vec![base], "SQLite WAL synchronous=FULL".to_owned())
    } else {
        let bases = targets
            .iter()
            .map(|t| format!("{t}/wecom/callback"))
            .collect::<Vec<_>>();
        let store = format!(
            "{} running gateway(s): {}",
            targets.len(),
            targets.join(", ")
        );
        (bases, store)
    };
    let msgid_base = match msgid_base {
        Some(n) => n,
        // The SQLite mode's fresh database keeps the old fixed ids; a shared database needs new ones.
        None if targets.is_empty() && emit.is_none() => 7_000_000_000_000_000_000u64,
        None => 7_000_000_000_000_000_000u64 + (rand::random::<u64>() % 1_000_000_000) * 1_000_000,
    };

    let crypt = MsgCrypt::new(TOKEN, KEY, CORP)?;
    // (query string, body) per callback; the target is chosen when it is posted.
    let callbacks: Arc<Vec<(String, String)>> = Arc::new(
        (0..requests)
            .map(|n| {
                let xml = format!(
                    "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[user{}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[帮我看看明天上午的会议安排 #{n}]]></Content><MsgId>{}</MsgId><AgentID>1000002</AgentID></xml>",
                    n % 1000,
                    msgid_base + n as u64
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let e = crypt.encrypt_msg(&xml, &now.to_string(), &n.to_string(), rand::random());
                let query = format!("?msg_signature={}&timestamp={}&nonce={}", e.msg_signature, e.timestamp, e.nonce);
                (query, e.to_callback_xml(CORP, "1000002"))
            })
            .collect(),
    );
    if let Some(file) = emit {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for (query, body) in callbacks.iter() {
            writeln!(out, "/wecom/callback{query}\t{body}")?;
        }
        out.flush()?;
        println!("{requests} signed callbacks written to {file}");
        return Ok(());
    }
    let bases = Arc::new(bases);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;

    println!("requests: {requests}, concurrency: {concurrency}, store: {store}");
    for (shift, round) in [
        (0, "new messages (durable insert)"),
        (1, "same again (dedup hits)"),
    ] {
        let cpu_before = cpu.then(cpu_by_pid);
        let started = Instant::now();
        let latencies: Vec<Duration> = futures::stream::iter(0..requests)
            .map(|i| {
                let (http, callbacks, bases) = (http.clone(), callbacks.clone(), bases.clone());
                async move {
                    let (query, body) = &callbacks[i];
                    let url = format!("{}{query}", bases[(i + shift) % bases.len()]);
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
        if let Some(before) = cpu_before {
            let used = cpu_split(&before, &cpu_by_pid(), &ours);
            let wall = elapsed.as_secs_f64();
            let parts: Vec<String> = used
                .iter()
                .map(|(name, d)| format!("{name} {d:.2} s ({:.0} %)", d / wall * 100.0))
                .collect();
            println!(
                "  CPU in {wall:.2} s wall (100 % = one core): {}",
                parts.join(", ")
            );
        }
    }
    if let Some((stop_tx, server)) = local {
        let _ = stop_tx.send(());
        let _ = server.await;
    }
    Ok(())
}
