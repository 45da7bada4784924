//! Configuration: built-in defaults < config.yaml < `WECOM_CALLBACK_*` environment, then validation.
//!
//! figment layers the sources into one tree of values; [`Check`] reads each key from it as text,
//! applies the key's rule and default, and collects every problem at once, each naming its field
//! and, for an environment value, its variable.
//!
//! Must never: print or `Debug` a secret (corp_secret, token, encoding_aes_key, robot keys, API
//! tokens), or invent rules WeCom does not have (legacy `wx` corp ids and short tokens are valid).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Format, Serialized, Yaml};
use figment::value::{Dict, Value};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};

use crate::bots::{webhook_key, Bot, REDACTED_WEBHOOK};
use crate::crypto::{AesKey, CryptoError};
pub use crate::inbox::postgres::PostgresUrl;
use crate::outbound::ratelimit::Limit;
use crate::outbound::retry::RetryPolicy;

pub use crate::agent::config::{
    AgentConfig, AgentKind, CommandAgentConfig, HttpAgentConfig, OpenAiConfig,
};

pub const ENV_PREFIX: &str = "WECOM_CALLBACK_";
pub const DEFAULT_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// Existing deployments keep the keys under this nesting; it is read as if it were the top level.
const NESTED_PATH: &str = "platforms.wecom_callback.extra";
/// Lists in the environment are comma-separated (`WECOM_CALLBACK_ALLOWED_USERS=alice,bob`).
const COMMA: fn(char) -> bool = |c| c == ',';
/// An app's WeCom keys: the top level's single app, or an `apps:` entry's.
const APP_KEYS: &str = "corp_id corp_secret agent_id token encoding_aes_key";
/// The other top-level keys (`platforms` is the nested layout's root).
const TOP_KEYS: &str = "host port path allowed_users allow_all_users api_base_url apps workers \
    queue_capacity max_body_bytes shutdown_grace_secs http_timeout_secs store data_dir \
    retention_days max_store_mb lease_secs agent bots api api_tokens limits retry platforms";

/// One WeCom self-built application (自建应用). `Debug` hides the secrets.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// SQLite file under `data_dir`: survives restarts and crashes (the default).
    Sqlite,
    /// In memory only: lost on restart. For tests and throw-away setups.
    Memory,
    /// A PostgreSQL database shared by several replicas.
    Postgres(PostgresUrl),
}

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
    /// Largest size of the SQLite store in MiB; 0 = no limit. When full, callbacks get 503.
    pub max_store_mb: u64,
    /// PostgreSQL store: a job held by a replica that stopped renewing its lease this long is
    /// taken over by another.
    pub lease_secs: u64,
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
                let error = in_file(&"not found or not a regular file");
                return Err(ConfigErrors(vec![error]));
            }
            let yaml = Figment::from(Yaml::file_exact(path));
            figment = figment.merge(yaml.clone());
            if yaml.find_value(NESTED_PATH).is_ok() {
                figment = figment.merge(yaml.focus(NESTED_PATH));
            }
        }
        // Not figment's own `Env`: it reads the process environment and parses values (the token
        // "0123" would become 123). Here `__` nests (`AGENT__KIND` is `agent.kind`), values stay text.
        let vars = env.iter().filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let var = figment::util::nest(&key.replace("__", "."), Value::from(value.clone()));
            var.into_dict().filter(|_| key != "config")
        });
        let figment = vars.fold(figment, |all, var| all.merge(Serialized::globals(var)));
        let root: Dict = (figment.extract())
            .map_err(|e| ConfigErrors(e.into_iter().map(|e| in_file(&e)).collect()))?;
        let mut check = Check {
            env,
            ..Check::default()
        };
        let config = validate(&mut check, root);
        let (errors, warnings) = (check.errors, check.warnings);
        if !errors.is_empty() {
            let warnings = warnings.iter().map(|w| format!("warning: {w}"));
            return Err(ConfigErrors(errors.into_iter().chain(warnings).collect()));
        }
        let loaded = Loaded {
            config_file: file,
            warnings,
        };
        Ok((config, loaded))
    }

    /// The configuration as YAML with every secret replaced, for `check-config` and logs.
    pub fn redacted(&self) -> String {
        let (c, mut out) = (self, String::new());
        let limits = |l: &[Limit]| {
            l.iter()
                .map(Limit::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let store = match &c.store {
            StoreKind::Sqlite => "sqlite".to_owned(),
            StoreKind::Memory => "memory".to_owned(),
            StoreKind::Postgres(url) => url.redacted(),
        };
        let api_off = match c.api_tokens.is_empty() {
            true => " (the /api endpoints are off)",
            false => "",
        };
        let _ = writeln!(out, "host: {}\nport: {}\npath: {}", c.host, c.port, c.path);
        let _ = writeln!(out, "api_base_url: {}", c.api_base_url);
        let _ = writeln!(out, "allow_all_users: {}", c.allowlist.allow_all);
        let _ = writeln!(out, "allowed_users: {:?}", c.allowlist.users);
        let _ = writeln!(out, "workers: {}", c.workers);
        let _ = writeln!(out, "queue_capacity: {}", c.queue_capacity);
        let _ = writeln!(out, "max_body_bytes: {}", c.max_body_bytes);
        let _ = writeln!(out, "shutdown_grace_secs: {}", c.shutdown_grace_secs);
        let _ = writeln!(out, "http_timeout_secs: {}", c.http_timeout_secs);
        let _ = writeln!(out, "store: {store}\ndata_dir: {}", c.data_dir.display());
        let _ = writeln!(out, "retention_days: {}", c.retention_days);
        let _ = writeln!(out, "max_store_mb: {}", c.max_store_mb);
        let _ = writeln!(out, "lease_secs: {}", c.lease_secs);
        let _ = write!(out, "agent:\n{}api:\n", c.agent.redacted("  "));
        let _ = writeln!(out, "  tokens: {} configured{api_off}", c.api_tokens.len());
        let _ = writeln!(out, "limits:\n  member: [{}]", limits(&c.member_limits));
        let _ = writeln!(out, "  bot: [{}]\nretry:", limits(&c.bot_limits));
        let _ = writeln!(out, "  max_attempts: {}", c.retry.max_attempts);
        let _ = writeln!(out, "  base_ms: {}", c.retry.base.as_millis());
        let _ = writeln!(out, "  max_ms: {}\nbots:", c.retry.max.as_millis());
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
            if let Some(agent) = &app.agent {
                let _ = write!(out, "    agent:\n{}", agent.redacted("      "));
            }
        }
        out
    }
}

// ---------------------------------------------------------------- reading values

/// One mapping of the configuration, and the name its keys carry in errors (`apps[1]`).
#[derive(Default)]
pub(crate) struct Section {
    name: String,
    dict: Dict,
}

impl Section {
    /// `key`'s name in errors (`apps[1].token`).
    pub(crate) fn field(&self, key: &str) -> String {
        match self.name.as_str() {
            "" => key.to_owned(),
            name => format!("{name}.{key}"),
        }
    }
    /// The value at `key`; a YAML null counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.dict
            .get(key)
            .filter(|v| !matches!(v, Value::Empty(..)))
    }
}

/// How a setting's text (trimmed, not empty) becomes a value, or the reason it cannot.
pub(crate) trait Rule<T>: FnOnce(&str) -> Result<T, String> {}
impl<T, F: FnOnce(&str) -> Result<T, String>> Rule<T> for F {}

/// Reads settings and collects every problem; one bad value never hides the others.
#[derive(Default)]
pub(crate) struct Check {
    /// The environment given to `load`: for `api_key_env`, and to name variables in errors.
    pub(crate) env: BTreeMap<String, String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Check {
    /// `field: reason`, plus the variable when the value came from the environment (which beats
    /// the file, so its variable being set is enough): that is where the user has to look.
    fn line(&self, field: &str, reason: impl Display) -> String {
        let path = field.strip_suffix(']').and_then(|f| f.rsplit_once('['));
        let path = path.map_or(field, |(path, _)| path).replace('.', "__");
        let var = format!("{ENV_PREFIX}{path}").to_ascii_uppercase();
        // Variables below it (`..._APPS__X`) make a mapping that came from the environment too.
        let given = |name: &String| {
            let below = |rest: &str| rest.is_empty() || rest.starts_with("__");
            let upper = name.to_ascii_uppercase();
            name.starts_with(ENV_PREFIX) && upper.strip_prefix(&var).is_some_and(below)
        };
        match self.env.keys().any(given) {
            true => format!("{field}: {reason} (from {var})"),
            false => format!("{field}: {reason}"),
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
    /// The value as trimmed text (YAML may give a token or an agent id as a number); None when
    /// absent, or a list or mapping (error recorded).
    pub(crate) fn text(&mut self, field: &str, value: Option<&Value>) -> Option<String> {
        let text = match value? {
            Value::String(_, s) => s.clone(),
            Value::Char(_, c) => c.to_string(),
            Value::Bool(_, b) => b.to_string(),
            Value::Num(_, n) => (n.to_u128().map(|v| v.to_string()))
                .or_else(|| n.to_i128().map(|v| v.to_string()))
                .or_else(|| n.to_f64().map(|v| v.to_string()))
                .unwrap_or_default(),
            Value::Empty(..) => String::new(),
            other => {
                self.err(field, format!("expected a text value, got {}", kind(other)));
                return None;
            }
        };
        Some(text.trim().to_owned())
    }
    /// A value that may be left out: None when absent or empty, or invalid (error recorded).
    pub(crate) fn opt<T>(&mut self, s: &Section, key: &str, rule: impl Rule<T>) -> Option<T> {
        let field = s.field(key);
        let text = self.text(&field, s.get(key)).filter(|t| !t.is_empty())?;
        self.apply(&field, &text, rule)
    }
    /// The rule's value, or None with its error recorded.
    fn apply<T>(&mut self, field: &str, text: &str, rule: impl Rule<T>) -> Option<T> {
        rule(text).map_err(|e| self.err(field, e)).ok()
    }
    /// As [`Check::opt`], with `default` when absent (or invalid: the error is recorded).
    pub(crate) fn get<T>(&mut self, s: &Section, key: &str, default: T, rule: impl Rule<T>) -> T {
        self.opt(s, key, rule).unwrap_or(default)
    }
    /// A value that must be given: as [`Check::opt`], and an error when absent or empty.
    pub(crate) fn req<T>(&mut self, s: &Section, key: &str, rule: impl Rule<T>) -> Option<T> {
        let field = s.field(key);
        match s.get(key).map(|v| self.text(&field, Some(v))) {
            None => self.err(&field, "is required"),
            Some(Some(t)) if t.is_empty() => self.err(&field, "must not be empty"),
            Some(t) => return self.apply(&field, &t?, rule),
        }
        None
    }
    /// A list's items, or one text value cut at `sep` (the environment's form) with empty items
    /// dropped; each item checked and named (`allowed_users[1]`).
    pub(crate) fn list<T>(
        &mut self,
        s: &Section,
        key: &str,
        sep: fn(char) -> bool,
        rule: impl Rule<T> + Copy,
    ) -> Vec<T> {
        let field = s.field(key);
        let items: Vec<String> = match s.get(key) {
            Some(Value::Array(_, items)) => (items.iter().enumerate())
                .filter_map(|(i, v)| self.text(&format!("{field}[{i}]"), Some(v)))
                .collect(),
            v => (self.text(&field, v).unwrap_or_default().split(sep))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Into::into)
                .collect(),
        };
        (items.iter().enumerate())
            .filter_map(|(i, t)| self.apply(&format!("{field}[{i}]"), t, rule))
            .collect()
    }
    /// A mapping; None when absent or something else (error recorded).
    pub(crate) fn mapping(&mut self, field: &str, value: Option<&Value>) -> Option<Dict> {
        match value? {
            Value::Dict(_, dict) => Some(dict.clone()),
            other => {
                self.err(field, format!("must be a mapping, got {}", kind(other)));
                None
            }
        }
    }
    /// The section at `key`, warning about keys not in `known` (space-separated).
    pub(crate) fn section(&mut self, s: &Section, key: &str, known: &str) -> Option<Section> {
        self.section_at(s.field(key), s.get(key), known)
    }
    fn section_at(&mut self, name: String, value: Option<&Value>, known: &str) -> Option<Section> {
        let section = Section {
            dict: self.mapping(&name, value)?,
            name,
        };
        let known = |key: &&String| known.split_whitespace().any(|k| k == *key);
        for key in section.dict.keys().filter(|k| !known(k)) {
            self.warn(&section.field(key), "unknown key, ignored");
        }
        Some(section)
    }
    /// A list of sections, each named by its place (`bots[1]`).
    fn entries(&mut self, s: &Section, key: &str, known: &str) -> Vec<Section> {
        let field = s.field(key);
        match s.get(key) {
            None => vec![],
            Some(Value::Array(_, items)) => (items.iter().enumerate())
                .filter_map(|(i, v)| self.section_at(format!("{field}[{i}]"), Some(v), known))
                .collect(),
            Some(other) => {
                self.err(&field, format!("must be a list, got {}", kind(other)));
                vec![]
            }
        }
    }
}

/// What a value is, for errors: never the value itself, which may be a secret.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a text value",
        Value::Bool(..) => "true or false",
        Value::Num(..) => "a number",
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
        Value::Empty(..) => "nothing",
    }
}

// ---------------------------------------------------------------- rules: text to value, each once

/// A rule from a reading of the text: `must be {what}, got "text"` when there is none.
pub(crate) fn must_be<T>(
    what: &'static str,
    read: impl Fn(&str) -> Option<T> + Copy,
) -> impl Fn(&str) -> Result<T, String> + Copy {
    move |text| read(text).ok_or_else(|| format!("must be {what}, got {text:?}"))
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

/// An absolute http:// or https:// URL, as given.
pub(crate) fn http_url(text: &str) -> Result<String, String> {
    let web = |url: &url::Url| matches!(url.scheme(), "http" | "https");
    let read = |t: &str| url::Url::parse(t).ok().filter(web).map(|_| t.to_owned());
    must_be("an http:// or https:// URL", read)(text)
}

/// As [`http_url`], without a trailing `/`: paths are appended to a base.
pub(crate) fn base_url(text: &str) -> Result<String, String> {
    http_url(text).map(|url| url.trim_end_matches('/').to_owned())
}

/// A callback EncodingAESKey, decoded once here to check it (the crypto module owns the rule).
fn aes_key(text: &str) -> Result<SecretString, String> {
    match AesKey::from_encoding_aes_key(text) {
        Ok(_) => Ok(SecretString::from(text)),
        // The reason without the WXBizMsgCrypt code, which means nothing in a config file.
        Err(CryptoError::IllegalAesKey(reason)) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

// ---------------------------------------------------------------- validation

fn validate(c: &mut Check, root: Dict) -> Config {
    let known = format!("{TOP_KEYS} {APP_KEYS}");
    let s = c.section_at(String::new(), Some(&Value::from(root)), &known);
    let s = s.unwrap_or_default();
    let ip = must_be("an IP address such as 0.0.0.0 or ::", |t| t.parse().ok());
    let path = |t: &str| match t {
        "/health" => Err("must not be /health, which the gateway serves itself".into()),
        p if p.starts_with('/') && !p.contains(['?', '#', ' ']) => Ok(p.to_owned()),
        p => Err(format!(
            "must start with / and contain no ?, # or spaces, got {p:?}"
        )),
    };
    let boolean = must_be("true or false", |t| match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    });
    let store = |t: &str| match t.to_ascii_lowercase().as_str() {
        "sqlite" => Ok(StoreKind::Sqlite),
        "memory" => Ok(StoreKind::Memory),
        _ => PostgresUrl::parse(t).map(StoreKind::Postgres),
    };
    let user = must_be("user or corp_id:user", |t| {
        let parts: Vec<&str> = t.split(':').collect();
        (parts.len() <= 2 && !parts.contains(&"")).then(|| t.to_owned())
    });
    let agent = crate::agent::config::validate(c, &s, "agent", None);
    let apps = validate_apps(c, &s, &agent);
    let bots = validate_bots(c, &s);
    let api = c.section(&s, "api", "tokens").unwrap_or_default();
    let mut api_tokens = c.list(&api, "tokens", COMMA, secret);
    api_tokens.extend(c.list(&s, "api_tokens", COMMA, secret));
    // Defaults are WeCom's own limits, kept when none is given.
    let limits = c.section(&s, "limits", "member bot").unwrap_or_default();
    let member_limits =
        Some(c.list(&limits, "member", COMMA, Limit::parse)).filter(|l| !l.is_empty());
    let bot_limits = Some(c.list(&limits, "bot", COMMA, Limit::parse)).filter(|l| !l.is_empty());
    let retry = c.section(&s, "retry", "max_attempts base_ms max_ms");
    let retry = retry.unwrap_or_default();
    let ms = |max| move |t: &str| num(1, max)(t).map(Duration::from_millis);
    let default = RetryPolicy::default();
    let base = c.get(&retry, "base_ms", default.base, ms(3_600_000));
    let max = c.get(&retry, "max_ms", default.max, ms(86_400_000));
    let max_attempts = c.get(&retry, "max_attempts", default.max_attempts, num(1, 100));
    Config {
        host: c.get(&s, "host", IpAddr::from([0, 0, 0, 0]), ip),
        port: c.get(&s, "port", 8645, num(0, u16::MAX)),
        path: c.get(&s, "path", "/wecom/callback".into(), path),
        apps,
        allowlist: Allowlist {
            allow_all: c.get(&s, "allow_all_users", false, boolean),
            users: c.list(&s, "allowed_users", COMMA, user),
        },
        api_base_url: c.get(&s, "api_base_url", DEFAULT_API_BASE_URL.into(), base_url),
        workers: c.get(&s, "workers", 4, num(1, 1024)),
        queue_capacity: c.get(&s, "queue_capacity", 1024, num(1, 1_000_000)),
        max_body_bytes: c.get(&s, "max_body_bytes", 65536, num(1024, 16 << 20)),
        shutdown_grace_secs: c.get(&s, "shutdown_grace_secs", 30, num(0, 86_400)),
        http_timeout_secs: c.get(&s, "http_timeout_secs", 10, num(1, 600)),
        store: c.get(&s, "store", StoreKind::Sqlite, store),
        data_dir: c.get(&s, "data_dir", "./data".into(), |d| Ok(PathBuf::from(d))),
        retention_days: c.get(&s, "retention_days", 7, num(1, 3650)),
        max_store_mb: c.get(&s, "max_store_mb", 0, num(0, 1 << 30)),
        lease_secs: c.get(&s, "lease_secs", 30, num(5, 3600)),
        agent,
        bots,
        api_tokens,
        member_limits: member_limits.unwrap_or_else(crate::outbound::default_member_limits),
        bot_limits: bot_limits.unwrap_or_else(crate::outbound::default_bot_limits),
        retry: RetryPolicy {
            max_attempts,
            base,
            max: max.max(base),
        },
    }
}

/// The `apps:` list, or else the single app of the top-level keys; no app at all is an error.
fn validate_apps(c: &mut Check, s: &Section, global: &AgentConfig) -> Vec<AppConfig> {
    let has_single = APP_KEYS.split(' ').any(|key| s.get(key).is_some());
    let mut apps = Vec::new();
    match s.get("apps") {
        None if has_single => apps.extend(app(c, s, Some("default".into()), None)),
        None => c.err(
            "apps",
            "no WeCom app configured: set WECOM_CALLBACK_CORP_ID, WECOM_CALLBACK_CORP_SECRET, \
            WECOM_CALLBACK_AGENT_ID, WECOM_CALLBACK_TOKEN and WECOM_CALLBACK_ENCODING_AES_KEY, \
            or an apps: list in config.yaml",
        ),
        Some(Value::Array(_, list)) if list.is_empty() => {
            c.err("apps", "is empty: list at least one app or remove the key")
        }
        Some(_) => {
            if has_single {
                let keys = APP_KEYS.replace(' ', ", ");
                let reason = format!("is set, so the single-app keys ({keys}) are ignored");
                c.warn("apps", reason);
            }
            for entry in c.entries(s, "apps", &format!("name agent {APP_KEYS}")) {
                let name = c.req(&entry, "name", text);
                let agent = (entry.get("agent").is_some())
                    .then(|| crate::agent::config::validate(c, &entry, "agent", Some(global)));
                apps.extend(app(c, &entry, name, agent));
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

/// One app from the WeCom keys of `s` (an `apps:` entry, or the top level).
fn app(
    c: &mut Check,
    s: &Section,
    name: Option<String>,
    agent: Option<AgentConfig>,
) -> Option<AppConfig> {
    // `ww…`, or a legacy `wx…`: any text without spaces.
    let corp_id = c.req(s, "corp_id", |t| match t.contains(char::is_whitespace) {
        true => Err("must not contain spaces".to_owned()),
        false => Ok(t.to_owned()),
    });
    let corp_secret = c.req(s, "corp_secret", secret);
    let agent_id = must_be("the numeric AgentId", |t| t.parse().ok());
    let agent_id = c.req(s, "agent_id", agent_id);
    let token = c.req(s, "token", secret);
    let encoding_aes_key = c.req(s, "encoding_aes_key", aes_key);
    Some(AppConfig {
        name: name?,
        corp_id: corp_id?,
        corp_secret: corp_secret?,
        agent_id: agent_id?,
        token: token?,
        encoding_aes_key: encoding_aes_key?,
        agent,
    })
}

fn validate_bots(c: &mut Check, s: &Section) -> Vec<Bot> {
    let mut bots: Vec<Bot> = Vec::new();
    for entry in c.entries(s, "bots", "name webhook_url secret") {
        if entry.get("secret").is_some() {
            let reason = "WeCom group robots have no signing secret; the field is ignored";
            c.warn(&entry.field("secret"), reason);
        }
        let name = c.req(&entry, "name", text);
        // The key is the robot's only credential: kept secret, and never echoed in errors.
        let key = c.req(&entry, "webhook_url", |t| {
            webhook_key(t).map(SecretString::from)
        });
        if let (Some(name), Some(key)) = (name, key) {
            if let Some(j) = bots.iter().position(|b| b.name == name) {
                let reason = format!("{name:?} is already used by bots[{j}]");
                c.err(&entry.field("name"), reason);
            }
            bots.push(Bot::new(name, key));
        }
    }
    bots
}
