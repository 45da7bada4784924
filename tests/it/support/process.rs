//! The real binary as a child process: start it, read its log, stop or kill it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{APP_A, WAIT};

pub const BIN: &str = env!("CARGO_BIN_EXE_wecom-gateway");

/// Environment for a gateway with no app yet on 127.0.0.1:0 (metrics too) with `data_dir` and
/// debug logs: nothing from the test's own environment. Tests add an app, or a config file.
pub fn bare_env(cmd: &mut Command, api_base_url: &str, data_dir: &std::path::Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .env("WECOM_CALLBACK_DATA_DIR", data_dir)
        .env("WECOM_CALLBACK_HOST", "127.0.0.1")
        .env("WECOM_CALLBACK_PORT", "0")
        .env("WECOM_CALLBACK_METRICS_LISTEN", "127.0.0.1:0")
        .env("WECOM_CALLBACK_API_BASE_URL", api_base_url);
}

/// Environment for a single-app gateway (app A) on 127.0.0.1:0 with `data_dir`, debug logs, and
/// only `zhangsan` allowed. Tests add or override variables.
pub fn gateway_env(cmd: &mut Command, api_base_url: &str, data_dir: &std::path::Path) {
    bare_env(cmd, api_base_url, data_dir);
    cmd.env("WECOM_CALLBACK_CORP_ID", APP_A.corp_id)
        .env("WECOM_CALLBACK_CORP_SECRET", APP_A.secret)
        .env("WECOM_CALLBACK_AGENT_ID", APP_A.agent_id.to_string())
        .env("WECOM_CALLBACK_TOKEN", APP_A.token)
        .env("WECOM_CALLBACK_ENCODING_AES_KEY", APP_A.aes_key)
        .env("WECOM_CALLBACK_ALLOWED_USERS", "zhangsan");
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    logged: Arc<tokio::sync::Notify>,
    /// Ends when stderr closes: after it, the log holds every line the process wrote.
    reader: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Start the binary and wait for its "listening on ADDR" line. Every stderr line is kept.
    pub async fn start(cmd: &mut Command) -> Gateway {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        let notify = logged.clone();
        let reader = tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(tx) = tx.take() {
                        // Text logs end the address at a space, JSON logs at the closing quote.
                        let addr = rest.split(|c: char| c.is_whitespace() || c == '"').next();
                        let _ = tx.send(addr.unwrap_or("").to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
                notify.notify_waiters();
            }
        });
        let addr = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("gateway did not start:\n{}", log.lock().unwrap().join("\n")),
        };
        Gateway {
            child,
            addr,
            log,
            logged,
            reader,
        }
    }

    /// Wait until a log line contains every one of `parts`; fail after `WAIT`.
    pub async fn wait_for_log(&self, parts: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.logged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no log line with {parts:?}:\n{}", self.log());
            }
        }
    }

    /// Where this gateway serves `/metrics`, from its start-up log.
    pub fn metrics_url(&self) -> String {
        let log = self.log();
        let rest = log.split("metrics on ").nth(1);
        let url = rest.and_then(|r| r.split(|c: char| c.is_whitespace() || c == '"').next());
        url.expect("the gateway logs where its metrics are")
            .to_owned()
    }

    pub fn callback_url(&self, query: &str) -> String {
        format!("http://{}/wecom/callback?{query}", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then wait for a successful exit.
    pub async fn terminate(mut self) -> String {
        let pid = self.child.id().expect("pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait");
        assert!(status.success(), "exit status {status:?}\n{}", self.log());
        self.full_log().await
    }

    /// The whole log, once the process has closed stderr.
    async fn full_log(self) -> String {
        let _ = tokio::time::timeout(WAIT, self.reader).await;
        let lines = self.log.lock().unwrap().join("\n");
        lines
    }

    /// SIGKILL: the process dies on the spot, as in a crash or an OOM kill.
    pub async fn kill9(mut self) -> String {
        self.child.kill().await.expect("kill -9");
        self.full_log().await
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}
