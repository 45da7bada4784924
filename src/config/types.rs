//! The validated configuration the service runs with, and what loading it reports.
//!
//! Owns: the shapes only. What each key is (default, rule, reload) is in `keys.rs`; reading it, in
//! `build.rs`. Must never: derive `Debug` over a secret that is not a `SecretString`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::AgentConfig;
use crate::aibot::settings::{AiBotConfig, AiBotSettings};
use crate::allowlist::Allowlist;
use crate::api_token::ApiToken;
use crate::app::AppConfig;
use crate::bots::Bot;
use crate::logging::LogFormat;
use crate::ratelimit::Limit;
use crate::retry::RetryPolicy;
use crate::store::StoreKind;

/// `media:`: files agents send and receive.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Directories an agent's `path` may name; none by default, so only `base64` works.
    pub agent_dirs: Vec<PathBuf>,
    /// Largest file a member may send that is downloaded (WeCom's own file limit: 20 MiB).
    pub max_bytes: u64,
    /// Where agents reach the gateway, for media links; by default the listener's address.
    pub public_url: Option<String>,
    /// Text-like files up to this size are given to the openai agent inline.
    pub inline_text_bytes: u64,
    /// How long a media link works.
    pub url_expires: Duration,
}

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Where `/metrics` is served (Prometheus text); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub path: String,
    pub apps: Vec<AppConfig>,
    pub allowlist: Allowlist,
    pub api_base_url: String,
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// Callbacks whose signed timestamp is further than this from the clock are refused (zero: off).
    pub replay_window: Duration,
    pub http_timeout_secs: u64,
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// Finished messages and their dedup keys are deleted after this many days.
    pub retention_days: u64,
    /// Largest size of the message store in MiB; 0 = no limit. When full, callbacks get 503.
    pub max_store_mb: u64,
    /// SQLite store: new callbacks and pushes get 503 while data_dir's filesystem has less than
    /// this many MiB free, so accepted work can finish; 0 = off.
    pub min_free_mb: u64,
    /// PostgreSQL store: a job held by a replica that stopped renewing its lease this long is
    /// taken over by another.
    pub lease_secs: u64,
    pub agent: AgentConfig,
    /// Group robots by name.
    pub bots: Vec<Bot>,
    /// Bearer tokens for /api; the API is off when there are none.
    pub api_tokens: Vec<ApiToken>,
    /// Per app member (WeCom: 30 a minute, 1000 an hour).
    pub member_limits: Vec<Limit>,
    /// Per group robot (WeCom: 20 a minute).
    pub bot_limits: Vec<Limit>,
    pub retry: RetryPolicy,
    pub media: MediaConfig,
    /// WeCom AI bots (智能机器人), by name.
    pub aibots: Vec<AiBotConfig>,
    /// `aibot:`: what every AI bot shares.
    pub aibot: AiBotSettings,
}

/// Where the configuration came from, for the start-up log.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub config_file: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// Every problem found, one line each; the warnings (unknown keys...) follow as `warning: ...`
/// lines, since a misspelt key is often the cause of an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);
