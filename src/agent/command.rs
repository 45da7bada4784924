//! The command agent: run a program per message with the turn as JSON on stdin; its stdout is the
//! reply. No shell is involved, so nothing in a message can become a command. While it runs, its
//! complete lines of plain text are shown on the turn's `partial` (the text so far).
//!
//! Must never: pass the gateway's environment (its secrets) to the program, leave it running after
//! its timeout, or let it fill memory (what is kept of stdout and stderr is capped; the rest is
//! read and thrown away, so a chatty program never blocks on a full pipe).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::turn::{answer_from, is_answer, Agent, AgentError, Partial, Turn};
use crate::wecom::AppMessage;

/// Most reply bytes read from the program; more is an error rather than a memory problem.
const MAX_STDOUT: u64 = 1024 * 1024;
/// Most stderr bytes kept for the log.
const MAX_STDERR: u64 = 64 * 1024;
/// Variables passed through from the gateway's environment so ordinary programs work.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Run `program` per message with the turn as JSON on stdin; stdout is the reply. `Debug` shows
/// the names of `env`, not its values (an API key for the script, say).
#[derive(Clone)]
pub struct CommandAgentConfig {
    pub program: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    /// Added to a minimal environment (PATH, HOME, LANG): the gateway's own variables, secrets
    /// included, are not passed on.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

impl std::fmt::Debug for CommandAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("CommandAgentConfig")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("env", &env)
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

impl CommandAgentConfig {
    /// check-config's lines: the names of `env`, never its values.
    pub(crate) fn shown(&self) -> Vec<String> {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        let mut lines = vec![format!("program: {}", self.program)];
        lines.push(format!("args: {:?}", self.args));
        lines.push(format!("timeout_secs: {}", self.timeout.as_secs()));
        lines.push(format!("env: {names:?} (values hidden)"));
        let dir = self.working_dir.as_ref();
        lines.extend(dir.map(|d| format!("working_dir: {}", d.display())));
        lines
    }
}

pub struct CommandAgent {
    config: CommandAgentConfig,
}

impl CommandAgent {
    pub fn new(config: CommandAgentConfig) -> Self {
        CommandAgent { config }
    }
}

#[async_trait]
impl Agent for CommandAgent {
    fn name(&self) -> &str {
        "command"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let c = &self.config;
        let mut cmd = Command::new(&c.program);
        cmd.args(&c.args)
            .env_clear()
            .envs(
                PASSED_THROUGH
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &c.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| AgentError::Failed(format!("cannot start {}: {e}", c.program)))?;
        let input = serde_json::to_vec(&turn.to_json()).unwrap_or_default();
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            // Write, read and wait together: a program that answers before reading all its input,
            // or writes a lot, must not deadlock on a full pipe.
            let write = async {
                if let Some(mut stdin) = stdin.take() {
                    // A program that ignores its input closes the pipe early; that is its business.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let (_, out, err) = tokio::join!(
                write,
                read_stdout(stdout, MAX_STDOUT, turn.partial),
                read_capped(stderr, MAX_STDERR)
            );
            let status = child.wait().await;
            (status, out, err)
        };
        let finished = tokio::time::timeout(c.timeout, run).await;
        let Ok((status, (out, out_cut), (err, err_cut))) = finished else {
            // Kill and reap it, so no stray process outlives its turn.
            let _ = child.kill().await;
            return Err(AgentError::Timeout(c.timeout.as_secs()));
        };
        if err_cut > 0 {
            tracing::warn!(program = %c.program, kept = err.len(), cut = err_cut, "agent wrote more to stderr than is kept; the rest was read and dropped");
        }
        let stderr_text = String::from_utf8_lossy(&err);
        for line in stderr_text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(50)
        {
            tracing::warn!(program = %c.program, line = ?line, "agent stderr");
        }
        let status =
            status.map_err(|e| AgentError::Failed(format!("waiting for {}: {e}", c.program)))?;
        if !status.success() {
            let last = stderr_text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(AgentError::Failed(format!(
                "{} exited with {status}: {last}",
                c.program
            )));
        }
        if out_cut > 0 {
            return Err(AgentError::Failed(format!(
                "{} wrote {} bytes to stdout, more than the {MAX_STDOUT} a reply may have",
                c.program,
                out.len() as u64 + out_cut
            )));
        }
        let text = String::from_utf8(out).map_err(|_| {
            AgentError::Failed(format!("{} wrote output that is not UTF-8", c.program))
        })?;
        let text = text.trim();
        // A JSON answer document (as the http agent's) when stdout is one; plain text otherwise.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(doc) if is_answer(&doc) => answer_from(&doc),
            _ if text.is_empty() => Ok(Vec::new()),
            _ => Ok(vec![AppMessage::text(text)]),
        }
    }
}

/// Read stdout to its end as `read_capped` does, showing on `partial` the text of its complete
/// lines as each arrives. Output that begins with `{` is taken for an answer document being
/// written and is not shown (the member would see raw JSON); nor is output that is not UTF-8.
async fn read_stdout(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: u64,
    partial: Option<&Partial>,
) -> (Vec<u8>, u64) {
    let Some(partial) = partial else {
        // Nothing to show: read it whole.
        return read_capped(pipe, cap).await;
    };
    let Some(mut pipe) = pipe else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::new();
    let mut shown_to = 0;
    let mut chunk = vec![0; 8192];
    loop {
        let room = usize::try_from(cap).unwrap_or(usize::MAX) - kept.len();
        let n = match pipe.read(&mut chunk[..room.min(8192)]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        kept.extend_from_slice(&chunk[..n]);
        // Up to and including the last newline: the complete lines.
        let complete = kept
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        if complete > shown_to {
            shown_to = complete;
            if let Ok(text) = std::str::from_utf8(&kept[..complete]) {
                let text = text.trim();
                if !text.starts_with('{') {
                    partial.set(text);
                }
            }
        }
    }
    let dropped = tokio::io::copy(&mut pipe, &mut tokio::io::sink())
        .await
        .unwrap_or(0);
    (kept, dropped)
}

/// Read `pipe` to its end, keeping the first `cap` bytes; returns them and how many more were
/// read and dropped. Reading on past the cap is what lets the program finish writing and exit.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: u64) -> (Vec<u8>, u64) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::new();
    let _ = (&mut pipe).take(cap).read_to_end(&mut kept).await;
    let dropped = tokio::io::copy(&mut pipe, &mut tokio::io::sink())
        .await
        .unwrap_or(0);
    (kept, dropped)
}

/// Why a command agent's `program` cannot run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotRunnable {
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    #[error("is not a file")]
    NotAFile,
    #[error("is not executable (chmod +x)")]
    NotExecutable,
    #[error("is not an executable found on PATH")]
    NotOnPath,
}

/// Whether `program` names an executable file: a path (a relative one from `working_dir`, where
/// the program runs), or a name found on `PATH`.
pub(crate) fn executable(
    program: &str,
    working_dir: Option<&std::path::Path>,
) -> Result<(), NotRunnable> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match working_dir {
            Some(dir) if !program.starts_with('/') => dir.join(program),
            _ => std::path::PathBuf::from(program),
        };
        let path = path.as_path();
        return match std::fs::metadata(path) {
            Err(e) => Err(NotRunnable::Unreadable(e)),
            Ok(m) if !m.is_file() => Err(NotRunnable::NotAFile),
            Ok(_) if !runnable(path) => Err(NotRunnable::NotExecutable),
            Ok(_) => Ok(()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path).any(|dir| runnable(&dir.join(program))) {
        true => Ok(()),
        false => Err(NotRunnable::NotOnPath),
    }
}
