//! Configuration: built-in defaults < config.yaml < `WECOM_CALLBACK_*` environment, then validation.
//!
//! Owns: every configuration key, its default, where it may come from, and what makes it valid.
//! figment layers the sources into serde-derived settings whose fields keep what was given; the
//! parsing newtypes below (one per rule) turn them into [`Config`]. Every problem is reported at
//! once, each naming its field and, for an environment value, its variable.
//!
//! Must never: print or `Debug` a secret (corp_secret, token, encoding_aes_key, robot keys, API
//! tokens), or invent rules WeCom does not have (legacy `wx` corp ids and short tokens are valid).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::SecretString;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

use crate::agent::config::AgentSettings;
pub use crate::allowlist::Allowlist;
pub use crate::app::AppConfig;
use crate::bots::{webhook_key, Bot, REDACTED_WEBHOOK};
use crate::crypto::{AesKey, CryptoError};
pub use crate::http::state::ApiToken;
use crate::logging::LogFormat;
use crate::ratelimit::Limit;
use crate::retry::RetryPolicy;
pub use crate::store::{PostgresUrl, StoreKind};

pub use crate::agent::{
    AgentConfig, AgentKind, CommandAgentConfig, HermesConfig, HttpAgentConfig, OpenAiConfig,
};

pub const ENV_PREFIX: &str = "WECOM_CALLBACK_";
pub const DEFAULT_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// Existing deployments keep the keys under this nesting; it is read as if it were the top level.
const NESTED_PATH: &str = "platforms.wecom_callback.extra";
/// The figment metadata name of [`EnvVars`], by which errors find values that came from there.
const ENV_SOURCE: &str = "WECOM_CALLBACK_* environment";

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

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            agent_dirs: Vec::new(),
            max_bytes: 20 << 20,
            public_url: None,
            inline_text_bytes: 64 << 10,
            url_expires: Duration::from_secs(3600),
        }
    }
}

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Where `/metrics` is served (Prometheus text); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub log_format: crate::logging::LogFormat,
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

impl Config {
    /// Load from an optional YAML file and the given environment (`(name, value)` pairs; the binary
    /// passes `std::env::vars()`, tests pass their own). The file path, if not given, comes from
    /// `WECOM_CALLBACK_CONFIG`. A missing file named explicitly is an error.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Loaded), ConfigErrors> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let file = file.map(Path::to_path_buf).or_else(|| {
            let path = env.get(&format!("{ENV_PREFIX}CONFIG"))?;
            Some(PathBuf::from(path)).filter(|_| !path.is_empty())
        });
        let in_file = |e: &dyn Display| match &file {
            Some(path) => format!("config file {}: {e}", path.display()),
            None => e.to_string(),
        };
        let mut figment = Figment::new();
        if let Some(path) = file.as_deref() {
            if !path.is_file() {
                return Err(ConfigErrors(vec![in_file(
                    &"not found or not a regular file",
                )]));
            }
            let yaml = Figment::from(Yaml::file_exact(path));
            figment = figment.merge(yaml.clone());
            if yaml.find_value(NESTED_PATH).is_ok() {
                figment = figment.merge(yaml.focus(NESTED_PATH));
            }
        }
        let figment = figment.merge(EnvVars::new(&env));
        let settings: Settings = (figment.extract())
            .map_err(|e| ConfigErrors(e.into_iter().map(|e| in_file(&e)).collect()))?;
        let mut check = Check {
            figment: &figment,
            env: &env,
            errors: vec![],
            warnings: vec![],
        };
        let config = settings.validate(&mut check);
        let (mut errors, warnings) = (check.errors, check.warnings);
        if !errors.is_empty() {
            errors.extend(warnings.iter().map(|w| format!("warning: {w}")));
            return Err(ConfigErrors(errors));
        }
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
        let (c, mut out) = (self, String::new());
        let limits = |l: &[Limit]| {
            l.iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let store = match &c.store {
            StoreKind::Sqlite => "sqlite".to_owned(),
            StoreKind::Memory => "memory".to_owned(),
            StoreKind::Postgres(url) => url.redacted(),
        };
        let api_off = if c.api_tokens.is_empty() {
            " (the /api endpoints are off)"
        } else {
            ""
        };
        let _ = writeln!(out, "host: {}\nport: {}\npath: {}", c.host, c.port, c.path);
        let metrics = c
            .metrics_listen
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        let _ = writeln!(out, "metrics_listen: {metrics}");
        let format = format!("{:?}", c.log_format).to_ascii_lowercase();
        let _ = writeln!(out, "log_format: {format}");
        let _ = writeln!(out, "api_base_url: {}", c.api_base_url);
        let _ = writeln!(out, "allow_all_users: {}", c.allowlist.allow_all);
        let _ = writeln!(out, "allowed_users: {:?}", c.allowlist.users);
        let _ = writeln!(out, "workers: {}", c.workers);
        let _ = writeln!(out, "queue_capacity: {}", c.queue_capacity);
        let _ = writeln!(out, "max_body_bytes: {}", c.max_body_bytes);
        let _ = writeln!(out, "shutdown_grace_secs: {}", c.shutdown_grace_secs);
        let _ = writeln!(out, "replay_window: {}", c.replay_window.as_secs());
        let _ = writeln!(out, "http_timeout_secs: {}", c.http_timeout_secs);
        let _ = writeln!(out, "store: {store}\ndata_dir: {}", c.data_dir.display());
        let _ = writeln!(out, "retention_days: {}", c.retention_days);
        let _ = writeln!(out, "max_store_mb: {}", c.max_store_mb);
        let _ = writeln!(out, "lease_secs: {}", c.lease_secs);
        let _ = write!(out, "agent:\n{}api:\n", c.agent.redacted("  "));
        let broadcast = c.api_tokens.iter().filter(|t| t.broadcast).count();
        let broadcast = match broadcast {
            0 => String::new(),
            n => format!(", {n} with scope broadcast"),
        };
        let tokens = c.api_tokens.len();
        let _ = writeln!(out, "  tokens: {tokens} configured{broadcast}{api_off}");
        let _ = writeln!(out, "limits:\n  member: [{}]", limits(&c.member_limits));
        let _ = writeln!(out, "  bot: [{}]\nretry:", limits(&c.bot_limits));
        let _ = writeln!(out, "  max_attempts: {}", c.retry.max_attempts);
        let _ = writeln!(out, "  base_ms: {}", c.retry.base.as_millis());
        let _ = writeln!(out, "  max_ms: {}", c.retry.max.as_millis());
        let m = &c.media;
        let _ = writeln!(out, "media:\n  agent_dirs: {:?}", m.agent_dirs);
        let _ = writeln!(out, "  max_bytes: {}", m.max_bytes);
        let public_url = m.public_url.as_deref();
        let _ = writeln!(
            out,
            "  public_url: {}",
            public_url.unwrap_or("(the listener)")
        );
        let _ = writeln!(out, "  inline_text_bytes: {}", m.inline_text_bytes);
        let _ = writeln!(
            out,
            "  url_expires_secs: {}\nbots:",
            m.url_expires.as_secs()
        );
        for bot in &c.bots {
            let _ = writeln!(out, "  - name: {}", bot.name);
            let _ = writeln!(out, "    webhook_url: {REDACTED_WEBHOOK}");
        }
        out.push_str("apps:\n");
        for app in &c.apps {
            let _ = writeln!(out, "  - name: {}\n    corp_id: {}", app.name, app.corp_id);
            let _ = writeln!(out, "    agent_id: {}", app.agent_id);
            out.push_str(
                "    corp_secret: '****'\n    token: '****'\n    encoding_aes_key: '****'\n",
            );
            if app.previous_token.is_some() {
                out.push_str("    previous_token: '****'\n");
            }
            if app.previous_encoding_aes_key.is_some() {
                out.push_str("    previous_encoding_aes_key: '****'\n");
            }
            if let Some(agent) = &app.agent {
                let _ = write!(out, "    agent:\n{}", agent.redacted("      "));
            }
        }
        out
    }
}

/// The `WECOM_CALLBACK_*` variables given to `load` as a figment provider: `__` nests
/// (`AGENT__KIND` is `agent.kind`) and values stay text. figment's own `Env` cannot do this: it
/// reads the process environment itself and parses values (the token "0123" would become 123).
struct EnvVars(Dict);

impl EnvVars {
    fn new(env: &BTreeMap<String, String>) -> Self {
        let vars = env.iter().filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let var = figment::util::nest(&key.replace("__", "."), Value::from(value.clone()));
            var.into_dict().filter(|_| key != "config")
        });
        EnvVars(vars.fold(Dict::new(), |mut all, var| {
            merge(&mut all, var);
            all
        }))
    }
}

/// `WECOM_CALLBACK_AGENT__KIND` and `..._AGENT__URL` both land in the one `agent` section.
fn merge(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, section)), Value::Dict(_, more)) => merge(section, more),
            (_, value) => drop(into.insert(key, value)),
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        // Names a value's variable in errors: keys `agent`, `kind` are WECOM_CALLBACK_AGENT__KIND.
        Metadata::named(ENV_SOURCE).interpolater(|_, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Global, self.0.clone())]))
    }
}

// ---------------------------------------------------------------- settings, as given

/// Keys nobody reads, kept to warn about them.
pub(crate) type Unknown = BTreeMap<String, IgnoredAny>;

/// A scalar as text (YAML may give a token or an agent id as a number), or the kind of value found
/// instead. Never fails to deserialize, so one bad value cannot hide the others.
pub(crate) struct Text(Result<String, &'static str>);

impl From<&Value> for Text {
    fn from(value: &Value) -> Self {
        let number = |n: &figment::value::Num| {
            let int = n.to_u128().map(|v| v.to_string());
            int.or_else(|| n.to_i128().map(|v| v.to_string()))
                .or_else(|| n.to_f64().map(|v| v.to_string()))
        };
        Text(match value {
            Value::String(_, s) => Ok(s.clone()),
            Value::Char(_, c) => Ok(c.to_string()),
            Value::Bool(_, b) => Ok(b.to_string()),
            Value::Num(_, n) => number(n).ok_or("a number"),
            Value::Empty(..) => Ok(String::new()),
            other => Err(kind(other)),
        })
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text::from(&<Value as Deserialize>::deserialize(d)?))
    }
}

/// A list, or one text value to be split (the environment's form).
pub(crate) enum List {
    One(Text),
    Many(Vec<Text>),
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match <Value as Deserialize>::deserialize(d)? {
            Value::Array(_, items) => List::Many(items.iter().map(Text::from).collect()),
            other => List::One(Text::from(&other)),
        })
    }
}

/// A section (or a list of them) shaped like `T`, or the kind of value found instead.
pub(crate) struct Field<T>(pub(crate) Result<T, &'static str>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = <Value as Deserialize>::deserialize(d)?;
        Ok(Field(T::deserialize(&value).map_err(|_| kind(&value))))
    }
}

/// What a value is, for errors: never the value itself, which may be a secret.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a text value",
        Value::Bool(..) => "true or false",
        Value::Num(..) => "a number",
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
        Value::Empty(..) => "nothing",
    }
}

/// The top-level keys, for suggestions when one is misspelt.
#[rustfmt::skip]
const TOP_LEVEL_KEYS: &[&str] = &[
    "host", "port", "path", "metrics_listen", "log_format", "name", "corp_id", "corp_secret",
    "agent_id", "token", "encoding_aes_key", "previous_token", "previous_encoding_aes_key",
    "allowed_users", "allow_all_users", "api_base_url", "apps", "workers", "queue_capacity",
    "max_body_bytes", "shutdown_grace_secs", "replay_window", "http_timeout_secs", "store",
    "data_dir", "retention_days", "max_store_mb", "lease_secs", "agent", "bots", "api",
    "api_tokens", "limits", "retry", "media",
];

#[derive(Deserialize)]
struct Settings {
    host: Option<Text>,
    port: Option<Text>,
    path: Option<Text>,
    metrics_listen: Option<Text>,
    log_format: Option<Text>,
    #[serde(flatten)]
    single_app: AppKeys,
    /// The single app's name (Hermes's `extra.name`); `default` when not given.
    name: Option<Text>,
    allowed_users: Option<List>,
    allow_all_users: Option<Text>,
    api_base_url: Option<Text>,
    apps: Option<Field<Vec<Field<AppSettings>>>>,
    workers: Option<Text>,
    queue_capacity: Option<Text>,
    max_body_bytes: Option<Text>,
    shutdown_grace_secs: Option<Text>,
    replay_window: Option<Text>,
    http_timeout_secs: Option<Text>,
    store: Option<Text>,
    data_dir: Option<Text>,
    retention_days: Option<Text>,
    max_store_mb: Option<Text>,
    lease_secs: Option<Text>,
    agent: Option<Field<AgentSettings>>,
    bots: Option<Field<Vec<Field<BotSettings>>>>,
    api: Option<Field<ApiSettings>>,
    api_tokens: Option<List>,
    limits: Option<Field<LimitSettings>>,
    retry: Option<Field<RetrySettings>>,
    media: Option<Field<MediaSettings>>,
    /// The nested layout's root, read through [`NESTED_PATH`] instead.
    #[serde(rename = "platforms")]
    _platforms: Option<IgnoredAny>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// An app's WeCom keys: the top level's single app, or an `apps:` entry's.
#[derive(Deserialize)]
struct AppKeys {
    corp_id: Option<Text>,
    corp_secret: Option<Text>,
    agent_id: Option<Text>,
    token: Option<Text>,
    encoding_aes_key: Option<Text>,
    previous_token: Option<Text>,
    previous_encoding_aes_key: Option<Text>,
}

#[derive(Deserialize)]
struct AppSettings {
    name: Option<Text>,
    agent: Option<Field<AgentSettings>>,
    #[serde(flatten)]
    keys: AppKeys,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct BotSettings {
    name: Option<Text>,
    webhook_url: Option<Text>,
    secret: Option<IgnoredAny>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize, Default)]
struct ApiSettings {
    /// Text (comma-separated), or a list of tokens and `{token, scopes}` entries.
    tokens: Option<Value>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize, Default)]
struct LimitSettings {
    member: Option<List>,
    bot: Option<List>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize, Default)]
struct MediaSettings {
    agent_dirs: Option<List>,
    max_bytes: Option<Text>,
    public_url: Option<Text>,
    inline_text_bytes: Option<Text>,
    url_expires_secs: Option<Text>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize, Default)]
struct RetrySettings {
    max_attempts: Option<Text>,
    base_ms: Option<Text>,
    max_ms: Option<Text>,
    #[serde(flatten)]
    unknown: Unknown,
}

// ---------------------------------------------------------------- rules: text to value, each once

/// How a setting's text (trimmed, not empty) becomes a value, or the reason it cannot.
pub(crate) trait Rule<T>: FnOnce(&str) -> Result<T, String> {}
impl<T, F: FnOnce(&str) -> Result<T, String>> Rule<T> for F {}

/// An absolute http:// or https:// URL, as given.
pub(crate) struct HttpUrl(pub(crate) String);

impl HttpUrl {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(HttpUrl(text.to_owned())),
            _ => Err(format!("must be an http:// or https:// URL, got {text:?}")),
        }
    }
    /// Without a trailing `/`: paths are appended to a base.
    pub(crate) fn base(self) -> String {
        self.0.trim_end_matches('/').to_owned()
    }
}

/// A corp id (`ww…`, or a legacy `wx…`): any text without spaces.
struct CorpId(String);

impl CorpId {
    fn parse(text: &str) -> Result<Self, String> {
        let spaced = text.contains(char::is_whitespace);
        (!spaced)
            .then(|| CorpId(text.to_owned()))
            .ok_or_else(|| "must not contain spaces".into())
    }
}

/// A callback EncodingAESKey, decoded once here to check it (the crypto module owns the rule).
struct EncodingAesKey(SecretString);

impl EncodingAesKey {
    fn parse(text: &str) -> Result<Self, String> {
        match AesKey::from_encoding_aes_key(text) {
            Ok(_) => Ok(EncodingAesKey(SecretString::from(text))),
            // The reason without the WXBizMsgCrypt code, which means nothing in a config file.
            Err(CryptoError::IllegalAesKey(reason)) => Err(reason),
            Err(other) => Err(other.to_string()),
        }
    }
}

/// A group robot's webhook URL, kept as its key: the robot's only credential, never echoed.
struct WebhookUrl(SecretString);

impl WebhookUrl {
    fn parse(text: &str) -> Result<Self, String> {
        webhook_key(text).map(|key| WebhookUrl(SecretString::from(key)))
    }
}

/// A whole number from `min` to `max`.
pub(crate) fn num<T: FromStr + PartialOrd + Display>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> {
    move |text| match text.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!(
            "must be a whole number from {min} to {max}, got {text:?}"
        )),
    }
}

/// Whole seconds from `min` to `max`.
pub(crate) fn secs(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |text| num(min, max)(text).map(Duration::from_secs)
}

pub(crate) fn text(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text))
}

fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("must be an IP address such as 0.0.0.0 or ::, got {text:?}"))
}

fn callback_path(text: &str) -> Result<String, String> {
    match text {
        "/health" => Err("must not be /health, which the gateway serves itself".into()),
        p if p.starts_with('/') && !p.contains(['?', '#', ' ']) => Ok(p.to_owned()),
        p => Err(format!(
            "must start with / and contain no ?, # or spaces, got {p:?}"
        )),
    }
}

pub(crate) fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("must be true or false, got {text:?}")),
    }
}

// ---------------------------------------------------------------- validation

/// Collects every problem while the settings are validated.
pub(crate) struct Check<'a> {
    figment: &'a Figment,
    /// The process environment given to `load`, for `api_key_env`.
    pub(crate) env: &'a BTreeMap<String, String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Check<'_> {
    /// `field: reason`, plus the variable when the value came from the environment: that is
    /// where the user has to look.
    fn line(&self, field: &str, reason: impl Display) -> String {
        let path = field.strip_suffix(']').and_then(|f| f.rsplit_once('['));
        let path = path.map_or(field, |(path, _)| path);
        match self.figment.find_metadata(path) {
            Some(md) if md.name == ENV_SOURCE => {
                let var = md.interpolate(&Profile::Global, &path.split('.').collect::<Vec<_>>());
                format!("{field}: {reason} (from {var})")
            }
            _ => format!("{field}: {reason}"),
        }
    }
    pub(crate) fn err(&mut self, field: &str, reason: impl Display) {
        let line = self.line(field, reason);
        self.errors.push(line);
    }
    fn warn(&mut self, field: &str, reason: impl Display) {
        let line = self.line(field, reason);
        self.warnings.push(line);
    }
    pub(crate) fn unknown(&mut self, prefix: &str, keys: &Unknown) {
        self.unknown_near(prefix, keys, &[]);
    }
    /// As [`Check::unknown`], naming the nearest of the `known` keys: a misspelt key (or
    /// `WECOM_CALLBACK_*` variable) is a common reason a setting seems ignored.
    pub(crate) fn unknown_near(&mut self, prefix: &str, keys: &Unknown, known: &[&str]) {
        for key in keys.keys() {
            let field = format!("{prefix}{key}");
            let near = (known.iter())
                .map(|k| (strsim::jaro_winkler(key, k), *k))
                .filter(|(score, _)| *score > 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let from_env =
                (self.figment.find_metadata(&field)).is_some_and(|m| m.name == ENV_SOURCE);
            let reason = match near {
                Some((_, k)) if from_env => {
                    let var = format!("{prefix}{k}")
                        .replace('.', "__")
                        .to_ascii_uppercase();
                    format!("unknown key, ignored; did you mean {ENV_PREFIX}{var}?")
                }
                Some((_, k)) => format!("unknown key, ignored; did you mean {prefix}{k}?"),
                None => "unknown key, ignored".to_owned(),
            };
            self.warn(&field, reason);
        }
    }
    /// The text, trimmed; an error for a list or a mapping.
    pub(crate) fn text(&mut self, field: &str, value: Text) -> Option<String> {
        let error = |kind| format!("expected a text value, got {kind}");
        value
            .0
            .map(|t| t.trim().to_owned())
            .map_err(|kind| self.err(field, error(kind)))
            .ok()
    }
    /// A value that may be left out: None when absent or empty, or invalid (error recorded).
    pub(crate) fn opt<T>(&mut self, field: &str, v: Option<Text>, rule: impl Rule<T>) -> Option<T> {
        let text = self.text(field, v?).filter(|t| !t.is_empty())?;
        rule(&text).map_err(|e| self.err(field, e)).ok()
    }
    /// As [`Check::opt`], with `default` when absent (or invalid: the error is recorded).
    pub(crate) fn get<T>(
        &mut self,
        field: &str,
        v: Option<Text>,
        default: T,
        rule: impl Rule<T>,
    ) -> T {
        self.opt(field, v, rule).unwrap_or(default)
    }
    /// A value that must be given: as [`Check::opt`], and an error when absent or empty.
    pub(crate) fn req<T>(&mut self, field: &str, v: Option<Text>, rule: impl Rule<T>) -> Option<T> {
        match v.map(|v| self.text(field, v)) {
            None => self.err(field, "is required"),
            Some(Some(t)) if t.is_empty() => self.err(field, "must not be empty"),
            Some(t) => return rule(&t?).map_err(|e| self.err(field, e)).ok(),
        }
        None
    }
    /// A list's items (trimmed), or one text value cut into items by `split`; each item checked.
    pub(crate) fn list<T>(
        &mut self,
        field: &str,
        v: Option<List>,
        split: fn(&str) -> Vec<String>,
        rule: impl Rule<T> + Copy,
    ) -> Vec<T> {
        let items = match v {
            None => Vec::new(),
            Some(List::One(t)) => self.text(field, t).map(|t| split(&t)).unwrap_or_default(),
            Some(List::Many(items)) => (items.into_iter().enumerate())
                .filter_map(|(i, t)| self.text(&format!("{field}[{i}]"), t))
                .collect(),
        };
        (items.iter().enumerate())
            .filter_map(|(i, t)| {
                rule(t)
                    .map_err(|e| self.err(&format!("{field}[{i}]"), e))
                    .ok()
            })
            .collect()
    }
    /// A list, or comma-separated text (the environment's form); empty items dropped.
    pub(crate) fn names<T>(
        &mut self,
        field: &str,
        v: Option<List>,
        rule: impl Rule<T> + Copy,
    ) -> Vec<T> {
        let split = |t: &str| {
            t.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        self.list(field, v, split, rule)
    }
    /// A section's settings; None when absent or not a mapping (error recorded).
    pub(crate) fn mapping<T>(&mut self, field: &str, v: Option<Field<T>>) -> Option<T> {
        let error = |kind| format!("must be a mapping, got {kind}");
        v?.0.map_err(|kind| self.err(field, error(kind))).ok()
    }
    /// A list of mappings, each with its field name (`bots[1]`).
    fn entries<T>(&mut self, field: &str, v: Option<Field<Vec<Field<T>>>>) -> Vec<(String, T)> {
        let list = v.map_or(Ok(Vec::new()), |v| v.0);
        let list = list.map_err(|kind| self.err(field, format!("must be a list, got {kind}")));
        (list.unwrap_or_default().into_iter().enumerate())
            .filter_map(|(i, entry)| {
                let field = format!("{field}[{i}]");
                self.mapping(&field, Some(entry)).map(|t| (field, t))
            })
            .collect()
    }
}

impl Settings {
    fn validate(self, c: &mut Check<'_>) -> Config {
        let s = self;
        c.unknown_near("", &s.unknown, TOP_LEVEL_KEYS);
        let agent = crate::agent::config::validate(c, "agent", s.agent, None);
        let single_name = c.opt("name", s.name, text);
        // Group robots and the push API work without any app.
        let robots_only = s.bots.is_some() || s.api.is_some() || s.api_tokens.is_some();
        let single = (single_name, s.single_app);
        let apps = validate_apps(c, single, s.apps, &agent, robots_only);
        let bots = validate_bots(c, s.bots);
        let api = c.mapping("api", s.api).unwrap_or_default();
        c.unknown("api.", &api.unknown);
        let mut api_tokens = api_tokens(c, api.tokens);
        let plain = c.names("api_tokens", s.api_tokens, secret);
        api_tokens.extend(plain.into_iter().map(ApiToken::from));
        let limits = c.mapping("limits", s.limits).unwrap_or_default();
        c.unknown("limits.", &limits.unknown);
        // Defaults are WeCom's own limits, kept when none is given.
        let member_limits = Some(c.names("limits.member", limits.member, Limit::parse))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(crate::outbound::default_member_limits);
        let bot_limits = Some(c.names("limits.bot", limits.bot, Limit::parse))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(crate::outbound::default_bot_limits);
        let media = c.mapping("media", s.media).unwrap_or_default();
        c.unknown("media.", &media.unknown);
        let d = MediaConfig::default();
        let media = MediaConfig {
            agent_dirs: c.names("media.agent_dirs", media.agent_dirs, |d| {
                Ok(PathBuf::from(d))
            }),
            max_bytes: c.get(
                "media.max_bytes",
                media.max_bytes,
                d.max_bytes,
                num(1, 1 << 30),
            ),
            public_url: c
                .opt("media.public_url", media.public_url, HttpUrl::parse)
                .map(HttpUrl::base),
            inline_text_bytes: c.get(
                "media.inline_text_bytes",
                media.inline_text_bytes,
                d.inline_text_bytes,
                num(0, 16 << 20),
            ),
            url_expires: c.get(
                "media.url_expires_secs",
                media.url_expires_secs,
                d.url_expires,
                secs(60, 7 * 86_400),
            ),
        };
        let retry = c.mapping("retry", s.retry).unwrap_or_default();
        c.unknown("retry.", &retry.unknown);
        let ms = |max| move |t: &str| num(1, max)(t).map(Duration::from_millis);
        let default = RetryPolicy::default();
        let base = c.get("retry.base_ms", retry.base_ms, default.base, ms(3_600_000));
        let max = c.get("retry.max_ms", retry.max_ms, default.max, ms(86_400_000));
        let max_attempts = c.get(
            "retry.max_attempts",
            retry.max_attempts,
            default.max_attempts,
            num(1, 100),
        );
        let config = Config {
            host: c.get("host", s.host, IpAddr::from([0, 0, 0, 0]), ip),
            port: c.get("port", s.port, 8645, num(0, u16::MAX)),
            // LOG_FORMAT too, as other tools spell it.
            log_format: match s.log_format {
                Some(v) => c.get("log_format", Some(v), Default::default(), |t| {
                    LogFormat::parse(t).map_err(|e| e.to_string())
                }),
                None => {
                    let var = c.env.get("LOG_FORMAT").map(|v| Text(Ok(v.clone())));
                    c.get("LOG_FORMAT", var, Default::default(), |t| {
                        LogFormat::parse(t).map_err(|e| e.to_string())
                    })
                }
            },
            metrics_listen: c.get(
                "metrics_listen",
                s.metrics_listen,
                Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9645))),
                |t| match t.to_ascii_lowercase().as_str() {
                    "off" | "none" | "false" => Ok(None),
                    _ => t.parse().map(Some).map_err(|_| {
                        format!("must be ADDRESS:PORT such as 127.0.0.1:9645 or 0.0.0.0:9645, or off, got {t:?}")
                    }),
                },
            ),
            path: c.get("path", s.path, "/wecom/callback".into(), callback_path),
            apps,
            allowlist: allowlist(c, s.allowed_users, s.allow_all_users),
            api_base_url: (c.opt("api_base_url", s.api_base_url, HttpUrl::parse))
                .map_or_else(|| DEFAULT_API_BASE_URL.into(), HttpUrl::base),
            workers: c.get("workers", s.workers, 64, num(1, 1024)),
            queue_capacity: c.get("queue_capacity", s.queue_capacity, 1024, num(1, 1_000_000)),
            max_body_bytes: c.get(
                "max_body_bytes",
                s.max_body_bytes,
                65536,
                num(1024, 16 << 20),
            ),
            shutdown_grace_secs: c.get(
                "shutdown_grace_secs",
                s.shutdown_grace_secs,
                30,
                num(0, 86_400),
            ),
            replay_window: c.get(
                "replay_window",
                s.replay_window,
                Duration::from_secs(300),
                secs(0, 7 * 86_400),
            ),
            http_timeout_secs: c.get("http_timeout_secs", s.http_timeout_secs, 10, num(1, 600)),
            store: c.get("store", s.store, StoreKind::Sqlite, StoreKind::parse),
            data_dir: c.get("data_dir", s.data_dir, "./data".into(), |d| {
                Ok(PathBuf::from(d))
            }),
            retention_days: c.get("retention_days", s.retention_days, 7, num(1, 3650)),
            max_store_mb: c.get("max_store_mb", s.max_store_mb, 0, num(0, 1 << 30)),
            lease_secs: c.get("lease_secs", s.lease_secs, 30, num(5, 3600)),
            agent,
            bots,
            api_tokens,
            member_limits,
            bot_limits,
            retry: RetryPolicy {
                max_attempts,
                base,
                max: max.max(base),
            },
            media,
        };
        let allowlist = &config.allowlist;
        if !config.apps.is_empty() && !allowlist.allow_all && allowlist.users.is_empty() {
            c.warn(
                "allowed_users",
                "is empty and allow_all_users is false: nobody may talk to the agent (their messages are acknowledged and dropped); list UserIDs, or * for everyone",
            );
        }
        config
    }
}

/// Who may talk to the agent. `*` in the list means everyone (as in Hermes). With neither key
/// set, Hermes's gateway-wide `GATEWAY_ALLOWED_USERS` / `GATEWAY_ALLOW_ALL_USERS` apply.
fn allowlist(c: &mut Check<'_>, users: Option<List>, all: Option<Text>) -> Allowlist {
    let (users, all, (users_field, all_field)) = match (users, all) {
        (None, None) => {
            let var = |name: &str| c.env.get(name).map(|v| Text(Ok(v.clone())));
            let names = ("GATEWAY_ALLOWED_USERS", "GATEWAY_ALLOW_ALL_USERS");
            (var(names.0).map(List::One), var(names.1), names)
        }
        (users, all) => (users, all, ("allowed_users", "allow_all_users")),
    };
    let mut list = Allowlist {
        allow_all: c.get(all_field, all, false, boolean),
        users: c.names(users_field, users, Allowlist::entry),
    };
    if list.users.iter().any(|u| u == "*") {
        list.allow_all = true;
        list.users.retain(|u| u != "*");
    }
    list
}

/// The `apps:` list, or else the single app of the top-level keys; no app at all is an error.
fn validate_apps(
    c: &mut Check<'_>,
    (single_name, single): (Option<String>, AppKeys),
    listed: Option<Field<Vec<Field<AppSettings>>>>,
    global: &AgentConfig,
    robots_only: bool,
) -> Vec<AppConfig> {
    let single_keys = [
        &single.corp_id,
        &single.corp_secret,
        &single.agent_id,
        &single.token,
    ];
    let has_single = single_keys.iter().any(|k| k.is_some()) || single.encoding_aes_key.is_some();
    let mut apps = Vec::new();
    match listed {
        None if has_single => {
            let name = single_name.unwrap_or_else(|| "default".into());
            apps.extend(app(c, "", Some(name), single, None))
        }
        None if robots_only => c.warn(
            "apps",
            "no WeCom app configured: running for group robots and the push API only (callbacks are refused)",
        ),
        None => {
            let vars =
                ["CORP_ID", "CORP_SECRET", "AGENT_ID", "TOKEN"].map(|v| ENV_PREFIX.to_owned() + v);
            let reason = format!(
                "no WeCom app configured: set {} and {ENV_PREFIX}ENCODING_AES_KEY, or an apps: list in config.yaml",
                vars.join(", ")
            );
            c.err("apps", reason)
        }
        Some(Field(Ok(list))) if list.is_empty() => {
            c.err("apps", "is empty: list at least one app or remove the key")
        }
        listed => {
            if has_single {
                let keys = "corp_id, corp_secret, agent_id, token, encoding_aes_key";
                c.warn(
                    "apps",
                    format!("is set, so the single-app keys ({keys}) are ignored"),
                );
            }
            for (f, entry) in c.entries("apps", listed) {
                c.unknown(&format!("{f}."), &entry.unknown);
                let name = c.req(&format!("{f}.name"), entry.name, text);
                let agent = (entry.agent).map(|a| {
                    crate::agent::config::validate(c, &format!("{f}.agent"), Some(a), Some(global))
                });
                apps.extend(app(c, &format!("{f}."), name, entry.keys, agent));
            }
        }
    }
    for (i, app) in apps.iter().enumerate() {
        for (j, earlier) in apps[..i].iter().enumerate() {
            if app.name == earlier.name {
                let reason = format!("{:?} is already used by apps[{j}]", app.name);
                c.err(&format!("apps[{i}].name"), reason);
            }
            if (&app.corp_id, app.agent_id) == (&earlier.corp_id, earlier.agent_id) {
                let (corp, agent) = (&app.corp_id, app.agent_id);
                let reason =
                    format!("corp {corp} agent {agent} is already configured as apps[{j}]");
                c.err(&format!("apps[{i}].agent_id"), reason);
            }
        }
    }
    apps
}

/// One app from its keys; `prefix` names them in errors (`apps[1].`, or nothing at the top level).
fn app(
    c: &mut Check<'_>,
    prefix: &str,
    name: Option<String>,
    keys: AppKeys,
    agent: Option<AgentConfig>,
) -> Option<AppConfig> {
    let f = |key: &str| format!("{prefix}{key}");
    let corp_id = c.req(&f("corp_id"), keys.corp_id, CorpId::parse);
    let corp_secret = c.req(&f("corp_secret"), keys.corp_secret, secret);
    let agent_id = c.req(&f("agent_id"), keys.agent_id, |t| {
        t.parse()
            .map_err(|_| format!("must be the numeric AgentId, got {t:?}"))
    });
    let token = c.req(&f("token"), keys.token, secret);
    let key = c.req(
        &f("encoding_aes_key"),
        keys.encoding_aes_key,
        EncodingAesKey::parse,
    );
    let previous_token = c.opt(&f("previous_token"), keys.previous_token, secret);
    let previous_key = c.opt(
        &f("previous_encoding_aes_key"),
        keys.previous_encoding_aes_key,
        EncodingAesKey::parse,
    );
    if previous_token.is_some() || previous_key.is_some() {
        let which = match (&previous_token, &previous_key) {
            (Some(_), Some(_)) => "previous_token and previous_encoding_aes_key",
            (Some(_), None) => "previous_token",
            _ => "previous_encoding_aes_key",
        };
        c.warn(
            &f(which.split(' ').next().unwrap_or(which)),
            format!("callbacks signed with the previous set are accepted too, for a key rotation: remove {which} once the admin console uses the new values"),
        );
    }
    Some(AppConfig {
        name: name?,
        corp_id: corp_id?.0,
        corp_secret: corp_secret?,
        agent_id: agent_id?,
        token: token?,
        encoding_aes_key: key?.0,
        previous_token,
        previous_encoding_aes_key: previous_key.map(|k| k.0),
        agent,
    })
}

/// An `api.tokens` entry with scopes.
#[derive(Deserialize)]
struct ScopedToken {
    token: Option<Text>,
    scopes: Option<List>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `api.tokens`: comma-separated text (the environment's form), or a list whose items are
/// tokens or `{token, scopes: [broadcast]}`.
fn api_tokens(c: &mut Check<'_>, v: Option<Value>) -> Vec<ApiToken> {
    let field = "api.tokens";
    let items = match v {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(text) => {
            let tokens = c.names(field, Some(List::One(Text::from(&text))), secret);
            return tokens.into_iter().map(ApiToken::from).collect();
        }
    };
    let scope = |s: &str| match s.to_ascii_lowercase().as_str() {
        "broadcast" => Ok(()),
        _ => Err(format!("must be broadcast, the only scope, got {s:?}")),
    };
    let mut tokens = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Value::Dict(..) = item else {
            tokens.extend(
                c.req(&f, Some(Text::from(item)), secret)
                    .map(ApiToken::from),
            );
            continue;
        };
        let Ok(entry) = ScopedToken::deserialize(item) else {
            c.err(&f, "must be a token, or a mapping {token, scopes}");
            continue;
        };
        c.unknown(&format!("{f}."), &entry.unknown);
        let token = c.req(&format!("{f}.token"), entry.token, secret);
        let scopes = c.names(&format!("{f}.scopes"), entry.scopes, scope);
        tokens.extend(token.map(|token| ApiToken {
            token,
            broadcast: !scopes.is_empty(),
        }));
    }
    tokens
}

fn validate_bots(c: &mut Check<'_>, listed: Option<Field<Vec<Field<BotSettings>>>>) -> Vec<Bot> {
    let mut bots: Vec<Bot> = Vec::new();
    for (f, entry) in c.entries("bots", listed) {
        c.unknown(&format!("{f}."), &entry.unknown);
        if entry.secret.is_some() {
            let reason = "WeCom group robots have no signing secret; the field is ignored";
            c.warn(&format!("{f}.secret"), reason);
        }
        let name = c.req(&format!("{f}.name"), entry.name, text);
        let key = c.req(
            &format!("{f}.webhook_url"),
            entry.webhook_url,
            WebhookUrl::parse,
        );
        if let (Some(name), Some(key)) = (name, key) {
            if let Some(j) = bots.iter().position(|b| b.name == name) {
                c.err(
                    &format!("{f}.name"),
                    format!("{name:?} is already used by bots[{j}]"),
                );
            }
            bots.push(Bot::new(name, key.0));
        }
    }
    bots
}
