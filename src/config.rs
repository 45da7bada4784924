//! Configuration: built-in defaults < config.yaml < `WECOM_CALLBACK_*` environment, then validation.
//!
//! Owns: every configuration key, its default, where it may come from, and what makes it valid.
//! Validation reports every problem at once, each naming its field (`apps[1].encoding_aes_key: ...`).
//!
//! Must never: print or `Debug` a secret (corp_secret, token, encoding_aes_key), or invent rules WeCom
//! does not have (legacy `wx` corp ids and short tokens are valid).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Yaml};
use figment::value::Value;
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};

use crate::bots::{webhook_key, Bot, REDACTED_WEBHOOK};
use crate::crypto::AesKey;
use crate::outbound::ratelimit::Limit;
use crate::outbound::retry::RetryPolicy;

pub const ENV_PREFIX: &str = "WECOM_CALLBACK_";
pub const DEFAULT_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// Existing deployments keep the keys under this nesting; it is read as if it were the top level.
const NESTED_PATH: &str = "platforms.wecom_callback.extra";

const TOP_LEVEL_KEYS: &[&str] = &[
    "host",
    "port",
    "path",
    "corp_id",
    "corp_secret",
    "agent_id",
    "token",
    "encoding_aes_key",
    "allowed_users",
    "allow_all_users",
    "api_base_url",
    "apps",
    "workers",
    "queue_capacity",
    "max_body_bytes",
    "shutdown_grace_secs",
    "http_timeout_secs",
    "store",
    "data_dir",
    "retention_days",
    "max_store_mb",
    "agent",
    "bots",
    "api",
    "api_tokens",
    "limits",
    "retry",
    "platforms",
];
const BOT_KEYS: &[&str] = &["name", "webhook_url", "secret"];
const API_KEYS: &[&str] = &["tokens"];
const LIMIT_KEYS: &[&str] = &["member", "bot"];
const RETRY_KEYS: &[&str] = &["max_attempts", "base_ms", "max_ms"];
const APP_KEYS: &[&str] = &[
    "agent",
    "name",
    "corp_id",
    "corp_secret",
    "agent_id",
    "token",
    "encoding_aes_key",
];

/// One WeCom self-built application (自建应用).
#[derive(Clone)]
pub struct AppConfig {
    pub name: String,
    pub corp_id: String,
    pub corp_secret: SecretString,
    pub agent_id: u64,
    pub token: SecretString,
    pub encoding_aes_key: SecretString,
    /// This app's own agent, overriding the `agent:` section.
    pub agent: Option<AgentConfig>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("name", &self.name)
            .field("corp_id", &self.corp_id)
            .field("corp_secret", &"[redacted]")
            .field("agent_id", &self.agent_id)
            .field("token", &"[redacted]")
            .field("encoding_aes_key", &"[redacted]")
            .field("agent", &self.agent.as_ref().map(AgentConfig::kind_name))
            .finish()
    }
}

/// Who may talk to the agent. Entries are `user` (any corp) or `corp_id:user`, compared
/// case-insensitively because WeCom UserIDs are.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub allow_all: bool,
    pub users: Vec<String>,
}

impl Allowlist {
    pub fn allows(&self, corp_id: &str, user_id: &str) -> bool {
        self.allow_all
            || self.users.iter().any(|entry| match entry.split_once(':') {
                Some((corp, user)) => {
                    corp.eq_ignore_ascii_case(corp_id) && user.eq_ignore_ascii_case(user_id)
                }
                None => entry.eq_ignore_ascii_case(user_id),
            })
    }
}

/// Where acknowledged messages are kept until answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite file under `data_dir`: survives restarts and crashes (the default).
    Sqlite,
    /// In memory only: lost on restart. For tests and throw-away setups.
    Memory,
}

pub use crate::agent::config::{
    AgentConfig, AgentKind, CommandAgentConfig, HttpAgentConfig, OpenAiConfig,
};

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub path: String,
    pub apps: Vec<AppConfig>,
    pub allowlist: Allowlist,
    pub api_base_url: String,
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub http_timeout_secs: u64,
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// Finished messages and their dedup keys are deleted after this many days.
    pub retention_days: u64,
    /// Largest size of the message store in MiB; 0 = no limit. When full, callbacks get 500.
    pub max_store_mb: u64,
    pub agent: AgentConfig,
    /// Group robots by name.
    pub bots: Vec<Bot>,
    /// Bearer tokens for /api; the API is off when there are none.
    pub api_tokens: Vec<SecretString>,
    /// Per app member (WeCom: 30 a minute, 1000 an hour).
    pub member_limits: Vec<Limit>,
    /// Per group robot (WeCom: 20 a minute).
    pub bot_limits: Vec<Limit>,
    pub retry: RetryPolicy,
}

/// Where the configuration came from, for the start-up log.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub config_file: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// Every problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

fn defaults() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("host", Value::from("0.0.0.0")),
        ("port", Value::from(8645u16)),
        ("path", Value::from("/wecom/callback")),
        ("allow_all_users", Value::from(false)),
        ("api_base_url", Value::from(DEFAULT_API_BASE_URL)),
        ("workers", Value::from(4u32)),
        ("queue_capacity", Value::from(1024u32)),
        ("max_body_bytes", Value::from(65536u32)),
        ("shutdown_grace_secs", Value::from(30u32)),
        ("http_timeout_secs", Value::from(10u32)),
        ("store", Value::from("sqlite")),
        ("data_dir", Value::from("./data")),
        ("retention_days", Value::from(7u32)),
        ("max_store_mb", Value::from(0u32)),
    ])
}

impl Config {
    /// Load from an optional YAML file and the given environment (`(name, value)` pairs; the binary
    /// passes `std::env::vars()`, tests pass their own). The file path, if not given, comes from
    /// `WECOM_CALLBACK_CONFIG`. A missing file named explicitly is an error.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Loaded), ConfigErrors> {
        // Environment values stay strings: figment's own Env provider would turn a token like
        // "0123" into the number 123.
        let process_env: BTreeMap<String, String> = env.into_iter().collect();
        let env: BTreeMap<String, String> = process_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .filter_map(|(k, v)| {
                k.strip_prefix(ENV_PREFIX)
                    .map(|rest| (rest.to_ascii_lowercase(), v))
            })
            .collect();
        let file = file.map(Path::to_path_buf).or_else(|| {
            env.get("config")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });

        let mut figment = Figment::from(Serialized::defaults(defaults()));
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigErrors(vec![format!(
                    "config file {}: not found or not a regular file",
                    path.display()
                )]));
            }
            let yaml = Figment::from(Yaml::file_exact(path));
            figment = figment.merge(yaml.clone());
            if yaml.find_value(NESTED_PATH).is_ok() {
                figment = figment.merge(yaml.focus(NESTED_PATH));
            }
        }
        // `A__B` in a variable name is the key `b` inside the section `a` (WECOM_CALLBACK_AGENT__KIND).
        let mut env_values: BTreeMap<String, Value> = BTreeMap::new();
        for (key, value) in env.into_iter().filter(|(k, _)| k != "config") {
            let parts: Vec<&str> = key.split("__").collect();
            insert_nested(&mut env_values, &parts, value);
        }
        figment = figment.merge(Serialized::globals(env_values));

        let root: BTreeMap<String, Value> = figment.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| match &file {
                        Some(p) => format!("config file {}: {e}", p.display()),
                        None => e.to_string(),
                    })
                    .collect(),
            )
        })?;
        let (config, warnings) = from_values(&root, &process_env)?;
        Ok((
            config,
            Loaded {
                config_file: file,
                warnings,
            },
        ))
    }

    /// The configuration as YAML with every secret replaced, for `check-config` and logs.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "host: {}", self.host);
        let _ = writeln!(out, "port: {}", self.port);
        let _ = writeln!(out, "path: {}", self.path);
        let _ = writeln!(out, "api_base_url: {}", self.api_base_url);
        let _ = writeln!(out, "allow_all_users: {}", self.allowlist.allow_all);
        let _ = writeln!(out, "allowed_users: {:?}", self.allowlist.users);
        let _ = writeln!(out, "workers: {}", self.workers);
        let _ = writeln!(out, "queue_capacity: {}", self.queue_capacity);
        let _ = writeln!(out, "max_body_bytes: {}", self.max_body_bytes);
        let _ = writeln!(out, "shutdown_grace_secs: {}", self.shutdown_grace_secs);
        let _ = writeln!(out, "http_timeout_secs: {}", self.http_timeout_secs);
        let store = match self.store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        };
        let _ = writeln!(out, "store: {store}");
        let _ = writeln!(out, "data_dir: {}", self.data_dir.display());
        let _ = writeln!(out, "retention_days: {}", self.retention_days);
        let _ = writeln!(out, "max_store_mb: {}", self.max_store_mb);
        let _ = writeln!(out, "agent:");
        out.push_str(&self.agent.redacted("  "));
        let _ = writeln!(out, "api:");
        let _ = writeln!(
            out,
            "  tokens: {} configured{}",
            self.api_tokens.len(),
            if self.api_tokens.is_empty() {
                " (the /api endpoints are off)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "limits:");
        let show = |l: &[Limit]| {
            l.iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "  member: [{}]", show(&self.member_limits));
        let _ = writeln!(out, "  bot: [{}]", show(&self.bot_limits));
        let _ = writeln!(out, "retry:");
        let _ = writeln!(out, "  max_attempts: {}", self.retry.max_attempts);
        let _ = writeln!(out, "  base_ms: {}", self.retry.base.as_millis());
        let _ = writeln!(out, "  max_ms: {}", self.retry.max.as_millis());
        let _ = writeln!(out, "bots:");
        for bot in &self.bots {
            let _ = writeln!(out, "  - name: {}", bot.name);
            let _ = writeln!(out, "    webhook_url: {REDACTED_WEBHOOK}");
        }
        let _ = writeln!(out, "apps:");
        for app in &self.apps {
            let _ = writeln!(out, "  - name: {}", app.name);
            let _ = writeln!(out, "    corp_id: {}", app.corp_id);
            let _ = writeln!(out, "    agent_id: {}", app.agent_id);
            let _ = writeln!(out, "    corp_secret: '****'");
            let _ = writeln!(out, "    token: '****'");
            let _ = writeln!(out, "    encoding_aes_key: '****'");
            if let Some(agent) = &app.agent {
                let _ = writeln!(out, "    agent:");
                out.push_str(&agent.redacted("      "));
            }
        }
        out
    }
}

/// A mapping section (`agent:`, `api:`, ...), empty when absent; anything else is an error.
fn section(
    root: &BTreeMap<String, Value>,
    key: &str,
    known: &[&str],
    r: &mut Reader<'_>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Value> {
    match root.get(key) {
        None | Some(Value::Empty(..)) => BTreeMap::new(),
        Some(Value::Dict(_, d)) => {
            warn_unknown(d, known, &format!("{key}."), warnings);
            d.clone()
        }
        Some(other) => {
            r.err(key, format!("must be a mapping, got {}", other.to_actual()));
            BTreeMap::new()
        }
    }
}

fn read_limits(
    map: &BTreeMap<String, Value>,
    key: &str,
    r: &mut Reader<'_>,
    default: Vec<Limit>,
) -> Vec<Limit> {
    if !map.contains_key(key) {
        return default;
    }
    let field = format!("limits.{key}");
    let mut limits = Vec::new();
    for (i, text) in r.list(map, key, &field).into_iter().enumerate() {
        match Limit::parse(&text) {
            Ok(l) => limits.push(l),
            Err(e) => r.err(&format!("{field}[{i}]"), e),
        }
    }
    if limits.is_empty() {
        default
    } else {
        limits
    }
}

fn read_bots(
    root: &BTreeMap<String, Value>,
    r: &mut Reader<'_>,
    warnings: &mut Vec<String>,
) -> Vec<Bot> {
    let list = match root.get("bots") {
        None | Some(Value::Empty(..)) => return Vec::new(),
        Some(Value::Array(_, list)) => list,
        Some(other) => {
            r.err("bots", format!("must be a list, got {}", other.to_actual()));
            return Vec::new();
        }
    };
    let mut bots: Vec<Bot> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let prefix = format!("bots[{i}].");
        let Value::Dict(_, d) = v else {
            r.err(
                &format!("bots[{i}]"),
                format!("must be a mapping, got {}", v.to_actual()),
            );
            continue;
        };
        warn_unknown(d, BOT_KEYS, &prefix, warnings);
        if d.contains_key("secret") {
            warnings.push(format!(
                "{prefix}secret: WeCom group robots have no signing secret; the field is ignored"
            ));
        }
        let name = r.required(d, "name", &format!("{prefix}name"));
        let key = r
            .required(d, "webhook_url", &format!("{prefix}webhook_url"))
            .and_then(|url| match webhook_key(&url) {
                Ok(key) => Some(key),
                Err(e) => {
                    // Never echo the URL: it is the robot's password.
                    r.err(&format!("{prefix}webhook_url"), e);
                    None
                }
            });
        if let (Some(name), Some(key)) = (name, key) {
            if let Some(j) = bots.iter().position(|b| b.name == name) {
                r.err(
                    &format!("{prefix}name"),
                    format!("{name:?} is already used by bots[{j}]"),
                );
            }
            bots.push(Bot::new(name, SecretString::from(key)));
        }
    }
    bots
}

fn insert_nested(map: &mut BTreeMap<String, Value>, path: &[&str], value: String) {
    match path {
        [] => {}
        [leaf] => {
            map.insert((*leaf).to_owned(), Value::from(value));
        }
        [section, rest @ ..] => {
            let entry = map
                .entry((*section).to_owned())
                .or_insert_with(|| Value::from(figment::value::Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(figment::value::Dict::new());
            }
            if let Value::Dict(_, dict) = entry {
                insert_nested(dict, rest, value);
            }
        }
    }
}

/// Reads typed values out of figment's value tree, recording a named error for each bad one.
pub(crate) struct Reader<'a> {
    errors: &'a mut Vec<String>,
}

impl Reader<'_> {
    pub(crate) fn err(&mut self, field: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{field}: {msg}"));
    }

    /// Any scalar as text: YAML may give a token or agent id as a number.
    pub(crate) fn string(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Option<String> {
        match map.get(key)? {
            Value::String(_, s) => Some(s.trim().to_owned()),
            Value::Char(_, c) => Some(c.to_string()),
            Value::Bool(_, b) => Some(b.to_string()),
            Value::Num(_, n) => n
                .to_u128()
                .map(|v| v.to_string())
                .or_else(|| n.to_i128().map(|v| v.to_string()))
                .or_else(|| n.to_f64().map(|v| v.to_string())),
            Value::Empty(..) => None,
            other => {
                self.err(
                    field,
                    format!("expected a text value, got {}", other.to_actual()),
                );
                None
            }
        }
    }

    pub(crate) fn required(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Option<String> {
        match self.string(map, key, field) {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                self.err(field, "must not be empty");
                None
            }
            None => {
                if !map.contains_key(key) || matches!(map.get(key), Some(Value::Empty(..))) {
                    self.err(field, "is required");
                }
                None
            }
        }
    }

    pub(crate) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
        min: T,
        max: T,
    ) -> Option<T> {
        let text = self.string(map, key, field)?;
        match text.parse::<T>() {
            Ok(v) if v >= min && v <= max => Some(v),
            _ => {
                self.err(
                    field,
                    format!("must be a whole number from {min} to {max}, got {text:?}"),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Option<bool> {
        let text = self.string(map, key, field)?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" | "" => Some(false),
            _ => {
                self.err(field, format!("must be true or false, got {text:?}"));
                None
            }
        }
    }

    /// A list, or a comma-separated string (the environment's form); items trimmed, empty ones
    /// dropped.
    pub(crate) fn list(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Vec<String> {
        self.items(map, key, field, |s| {
            s.split(',').map(str::to_owned).collect()
        })
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
    }

    /// A list kept as given (program arguments may hold commas), or a string split at whitespace.
    pub(crate) fn list_raw(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Vec<String> {
        self.items(map, key, field, |s| {
            s.split_whitespace().map(str::to_owned).collect()
        })
    }

    /// A list's items as text, or a single text value cut into items by `split`.
    fn items(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
        split: fn(&str) -> Vec<String>,
    ) -> Vec<String> {
        match map.get(key) {
            None | Some(Value::Empty(..)) => Vec::new(),
            Some(Value::Array(_, values)) => values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let one = BTreeMap::from([(String::new(), v.clone())]);
                    self.string(&one, "", &format!("{field}[{i}]"))
                })
                .collect(),
            Some(_) => self
                .string(map, key, field)
                .map(|s| split(&s))
                .unwrap_or_default(),
        }
    }

    /// A mapping of names to text values (headers, environment variables).
    pub(crate) fn map(
        &mut self,
        map: &BTreeMap<String, Value>,
        key: &str,
        field: &str,
    ) -> Vec<(String, String)> {
        match map.get(key) {
            None | Some(Value::Empty(..)) => Vec::new(),
            Some(Value::Dict(_, d)) => d
                .keys()
                .filter_map(|k| {
                    self.string(d, k, &format!("{field}.{k}"))
                        .map(|v| (k.clone(), v))
                })
                .collect(),
            Some(other) => {
                self.err(
                    field,
                    format!(
                        "must be a mapping of names to values, got {}",
                        other.to_actual()
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn warn_unknown(
    map: &BTreeMap<String, Value>,
    known: &[&str],
    prefix: &str,
    warnings: &mut Vec<String>,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            warnings.push(format!("{prefix}{key}: unknown key, ignored"));
        }
    }
}

/// Agent settings an app entry may override, and what it inherits.
struct AgentContext<'a> {
    global: Option<&'a AgentConfig>,
    env: &'a BTreeMap<String, String>,
}

fn app_from(
    map: &BTreeMap<String, Value>,
    prefix: &str,
    default_name: Option<&str>,
    r: &mut Reader<'_>,
    warnings: &mut Vec<String>,
    agents: &AgentContext<'_>,
) -> Option<AppConfig> {
    let f = |k: &str| format!("{prefix}{k}");
    let name = match default_name {
        Some(n) => Some(n.to_owned()),
        None => r.required(map, "name", &f("name")),
    };
    let corp_id = r.required(map, "corp_id", &f("corp_id"));
    if let Some(id) = &corp_id {
        if id.chars().any(char::is_whitespace) {
            r.err(&f("corp_id"), "must not contain spaces");
        }
    }
    let corp_secret = r.required(map, "corp_secret", &f("corp_secret"));
    let agent_id = r.required(map, "agent_id", &f("agent_id")).and_then(|s| {
        s.parse::<u64>().ok().or_else(|| {
            r.err(
                &f("agent_id"),
                format!("must be the numeric AgentId, got {s:?}"),
            );
            None
        })
    });
    let token = r.required(map, "token", &f("token"));
    let key = r.required(map, "encoding_aes_key", &f("encoding_aes_key"));
    if let Some(k) = &key {
        if let Err(e) = AesKey::from_encoding_aes_key(k) {
            // The crypto module owns the key rule; report its reason without the code suffix.
            let reason = match e {
                crate::crypto::CryptoError::IllegalAesKey(reason) => reason,
                other => other.to_string(),
            };
            r.err(&f("encoding_aes_key"), reason);
        }
    }
    // The single-app layout's agent is the global one; only an apps[] entry may have its own.
    let agent = match (default_name, map.get("agent")) {
        (None, Some(v)) => Some(crate::agent::config::read(
            Some(v),
            &f("agent"),
            r,
            warnings,
            agents.env,
            agents.global,
        )?),
        _ => None,
    };
    Some(AppConfig {
        agent,
        name: name?,
        corp_id: corp_id?,
        corp_secret: SecretString::from(corp_secret?),
        agent_id: agent_id?,
        token: SecretString::from(token?),
        encoding_aes_key: SecretString::from(
            key.filter(|k| AesKey::from_encoding_aes_key(k).is_ok())?,
        ),
    })
}

fn from_values(
    root: &BTreeMap<String, Value>,
    process_env: &BTreeMap<String, String>,
) -> Result<(Config, Vec<String>), ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    warn_unknown(root, TOP_LEVEL_KEYS, "", &mut warnings);
    let mut r = Reader {
        errors: &mut errors,
    };

    let host = r.required(root, "host", "host").and_then(|h| {
        h.parse::<IpAddr>().ok().or_else(|| {
            r.err(
                "host",
                format!("must be an IP address such as 0.0.0.0 or ::, got {h:?}"),
            );
            None
        })
    });
    let port = r.number::<u16>(root, "port", "port", 0, u16::MAX);
    let path = r.required(root, "path", "path").and_then(|p| {
        if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
            r.err(
                "path",
                format!("must start with / and contain no ?, # or spaces, got {p:?}"),
            );
            None
        } else if p == "/health" {
            r.err(
                "path",
                "must not be /health, which the gateway serves itself",
            );
            None
        } else {
            Some(p)
        }
    });
    let api_base_url = r
        .required(root, "api_base_url", "api_base_url")
        .and_then(|u| match url::Url::parse(&u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                Some(u.trim_end_matches('/').to_owned())
            }
            _ => {
                r.err(
                    "api_base_url",
                    format!("must be an http:// or https:// URL, got {u:?}"),
                );
                None
            }
        });
    let workers = r.number::<usize>(root, "workers", "workers", 1, 1024);
    let queue_capacity = r.number::<usize>(root, "queue_capacity", "queue_capacity", 1, 1_000_000);
    let max_body_bytes = r.number::<usize>(
        root,
        "max_body_bytes",
        "max_body_bytes",
        1024,
        16 * 1024 * 1024,
    );
    let shutdown_grace_secs = r.number::<u64>(
        root,
        "shutdown_grace_secs",
        "shutdown_grace_secs",
        0,
        86_400,
    );
    let http_timeout_secs = r.number::<u64>(root, "http_timeout_secs", "http_timeout_secs", 1, 600);
    let allow_all = r
        .boolean(root, "allow_all_users", "allow_all_users")
        .unwrap_or(false);
    let store =
        r.required(root, "store", "store")
            .and_then(|s| match s.to_ascii_lowercase().as_str() {
                "sqlite" => Some(StoreKind::Sqlite),
                "memory" => Some(StoreKind::Memory),
                _ => {
                    r.err("store", format!("must be sqlite or memory, got {s:?}"));
                    None
                }
            });
    let data_dir = r.required(root, "data_dir", "data_dir").map(PathBuf::from);
    let retention_days = r.number::<u64>(root, "retention_days", "retention_days", 1, 3650);
    let max_store_mb = r.number::<u64>(root, "max_store_mb", "max_store_mb", 0, 1 << 30);
    let agent = crate::agent::config::read(
        root.get("agent"),
        "agent",
        &mut r,
        &mut warnings,
        process_env,
        None,
    );
    let agents = AgentContext {
        global: agent.as_ref(),
        env: process_env,
    };
    let bots = read_bots(root, &mut r, &mut warnings);
    let api = section(root, "api", API_KEYS, &mut r, &mut warnings);
    let mut api_tokens = r.list(&api, "tokens", "api.tokens");
    api_tokens.extend(r.list(root, "api_tokens", "api_tokens"));
    let limits = section(root, "limits", LIMIT_KEYS, &mut r, &mut warnings);
    let member_limits = read_limits(
        &limits,
        "member",
        &mut r,
        crate::outbound::default_member_limits(),
    );
    let bot_limits = read_limits(
        &limits,
        "bot",
        &mut r,
        crate::outbound::default_bot_limits(),
    );
    let retry_map = section(root, "retry", RETRY_KEYS, &mut r, &mut warnings);
    let default_retry = RetryPolicy::default();
    let retry = (|| {
        let max_attempts = match retry_map.contains_key("max_attempts") {
            true => r.number::<u32>(&retry_map, "max_attempts", "retry.max_attempts", 1, 100)?,
            false => default_retry.max_attempts,
        };
        let base_ms = match retry_map.contains_key("base_ms") {
            true => r.number::<u64>(&retry_map, "base_ms", "retry.base_ms", 1, 3_600_000)?,
            false => default_retry.base.as_millis() as u64,
        };
        let max_ms = match retry_map.contains_key("max_ms") {
            true => r.number::<u64>(&retry_map, "max_ms", "retry.max_ms", 1, 86_400_000)?,
            false => default_retry.max.as_millis() as u64,
        };
        Some(RetryPolicy {
            max_attempts,
            base: std::time::Duration::from_millis(base_ms),
            max: std::time::Duration::from_millis(max_ms.max(base_ms)),
        })
    })();
    let users = r.list(root, "allowed_users", "allowed_users");
    for (i, u) in users.iter().enumerate() {
        if u.split(':').count() > 2 || u.starts_with(':') || u.ends_with(':') {
            r.err(
                &format!("allowed_users[{i}]"),
                format!("must be user or corp_id:user, got {u:?}"),
            );
        }
    }

    let single_keys = [
        "corp_id",
        "corp_secret",
        "agent_id",
        "token",
        "encoding_aes_key",
    ];
    let mut apps = Vec::new();
    match root.get("apps") {
        Some(Value::Array(_, list)) if !list.is_empty() => {
            if single_keys.iter().any(|k| root.contains_key(*k)) {
                warnings.push(
                    "apps: is set, so the single-app keys (corp_id, corp_secret, agent_id, token, encoding_aes_key) are ignored"
                        .into(),
                );
            }
            for (i, v) in list.iter().enumerate() {
                let prefix = format!("apps[{i}].");
                match v {
                    Value::Dict(_, d) => {
                        warn_unknown(d, APP_KEYS, &prefix, &mut warnings);
                        if let Some(app) =
                            app_from(d, &prefix, None, &mut r, &mut warnings, &agents)
                        {
                            apps.push(app);
                        }
                    }
                    other => r.err(
                        &format!("apps[{i}]"),
                        format!("must be a mapping, got {}", other.to_actual()),
                    ),
                }
            }
        }
        Some(Value::Array(..)) => {
            r.err("apps", "is empty: list at least one app or remove the key")
        }
        Some(Value::Empty(..)) | None => {
            if single_keys.iter().any(|k| root.contains_key(*k)) {
                if let Some(app) =
                    app_from(root, "", Some("default"), &mut r, &mut warnings, &agents)
                {
                    apps.push(app);
                }
            } else {
                r.err(
                    "apps",
                    format!(
                        "no WeCom app configured: set {ENV_PREFIX}CORP_ID, {ENV_PREFIX}CORP_SECRET, {ENV_PREFIX}AGENT_ID, {ENV_PREFIX}TOKEN and {ENV_PREFIX}ENCODING_AES_KEY, or an apps: list in config.yaml"
                    ),
                );
            }
        }
        Some(other) => r.err("apps", format!("must be a list, got {}", other.to_actual())),
    }
    for (i, app) in apps.iter().enumerate() {
        for (j, earlier) in apps[..i].iter().enumerate() {
            if app.name == earlier.name {
                r.err(
                    &format!("apps[{i}].name"),
                    format!("{:?} is already used by apps[{j}]", app.name),
                );
            }
            if app.corp_id == earlier.corp_id && app.agent_id == earlier.agent_id {
                r.err(
                    &format!("apps[{i}].agent_id"),
                    format!(
                        "corp {} agent {} is already configured as apps[{j}]",
                        app.corp_id, app.agent_id
                    ),
                );
            }
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    // Every None below recorded an error above, so this else is not reached; stay total anyway.
    let (
        Some(host),
        Some(port),
        Some(path),
        Some(api_base_url),
        Some(workers),
        Some(queue_capacity),
        Some(max_body_bytes),
        Some(shutdown_grace_secs),
        Some(http_timeout_secs),
        Some(store),
        Some(data_dir),
        Some(retention_days),
        Some(max_store_mb),
        Some(agent),
        Some(retry),
    ) = (
        host,
        port,
        path,
        api_base_url,
        workers,
        queue_capacity,
        max_body_bytes,
        shutdown_grace_secs,
        http_timeout_secs,
        store,
        data_dir,
        retention_days,
        max_store_mb,
        agent,
        retry,
    )
    else {
        return Err(ConfigErrors(vec!["configuration is incomplete".into()]));
    };
    let config = Config {
        host,
        port,
        path,
        apps,
        allowlist: Allowlist { allow_all, users },
        api_base_url,
        workers,
        queue_capacity,
        max_body_bytes,
        shutdown_grace_secs,
        http_timeout_secs,
        store,
        data_dir,
        retention_days,
        max_store_mb,
        agent,
        bots,
        api_tokens: api_tokens.into_iter().map(SecretString::from).collect(),
        member_limits,
        bot_limits,
        retry,
    };
    Ok((config, warnings))
}

impl AppConfig {
    /// The secret values, for the few places that must send them (gettoken) or key crypto with them.
    pub fn corp_secret(&self) -> &str {
        self.corp_secret.expose_secret()
    }
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }
    pub fn encoding_aes_key(&self) -> &str {
        self.encoding_aes_key.expose_secret()
    }
}
