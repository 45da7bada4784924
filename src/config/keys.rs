//! What a key is ([`Key`]), and every configuration key, defined once: name (and so its `WECOM_CALLBACK_*` variable), rule
//! (and so its type), default (text, read by the same rule), fallback variable, how check-config
//! shows it (which is what hides a secret) and whether a reload applies it. The unknown-key
//! warnings, check-config's output ([`Config::redacted`]) and the reload report
//! ([`Config::not_applied`]) are derived from the lists below; `build.rs` reads each key into its
//! field. A table, laid out by hand (rustfmt skips this file).
//!
//! Must never: show a secret's value (secrets are `secret` or counted), or define a key a reload
//! does not apply without a shown value to compare (a test checks).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::rules::{self, num, secs, CorpId, EncodingAesKey, HttpUrl, Invalid, Ruled, WebhookUrl};
use super::types::{Config, MediaConfig};
use crate::aibot::settings::{AiBotConfig, GroupSession, Mode};
use crate::allowlist::Allowlist;
use crate::api_token::ApiToken;
use crate::app::AppConfig;
use crate::bots::{Bot, REDACTED_WEBHOOK};
use crate::store::StoreKind;
use crate::logging::LogFormat;
use crate::ratelimit::Limit;

pub const DEFAULT_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// WeCom's long-connection endpoint for AI bots.
pub const DEFAULT_AIBOT_WS_URL: &str = "wss://openws.work.weixin.qq.com";

/// The prefix of every variable; `__` separates a section from its key.
pub const ENV_PREFIX: &str = "WECOM_CALLBACK_";

/// Whether a reload (SIGHUP) applies a key's new value, or only names it as taking effect at the
/// next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload { Applied, Restart }

/// What a key is when it is not given (or given empty).
#[derive(Clone, Copy)]
pub(crate) enum Absent {
    Optional,
    Required,
    /// Text read by the key's rule like a given value, so a default is written as a user would.
    Default(&'static str),
}

/// How check-config shows a key of an `O` (the configuration, an app, a robot...).
pub(crate) enum Show<O> {
    /// Not by itself: shown by another key, or folded into one (`api_tokens` into `api.tokens`).
    Within,
    /// `key: value`.
    Value(fn(&O) -> String),
    /// `key:` over lines of its own, each starting with the indent given; `None` leaves it out.
    Lines(fn(&O, &str) -> Option<String>),
    /// A secret: `key: '****'` when it is set, never its value.
    Secret(fn(&O) -> bool),
}

/// One key of an `O`: its name (dotted inside a section: `retry.base_ms`), its rule (and so its
/// type), what it is when absent, a variable read when it is given nowhere, how it is shown, and
/// whether a reload applies it. Built by the `const fn`s below, from an optional key that a reload
/// applies and that is shown within another.
pub(crate) struct Key<T, O = Config> {
    pub(crate) name: &'static str,
    pub(crate) rule: fn(&str) -> Ruled<T>,
    pub(crate) absent: Absent,
    pub(crate) fallback: Option<&'static str>,
    pub(crate) show: Show<O>,
    pub(crate) reload: Reload,
    /// Whether a YAML number is this key's natural form (`port: 8645`); for every other key the
    /// reader warns about one, which may have lost a leading zero (`token: 0123`).
    pub(crate) number: bool,
}

impl<T, O> Key<T, O> {
    pub(crate) const fn new(name: &'static str, rule: fn(&str) -> Ruled<T>) -> Self {
        Key { name, rule, absent: Absent::Optional, fallback: None, show: Show::Within, reload: Reload::Applied, number: false }
    }
    pub(crate) const fn or(self, text: &'static str) -> Self { Key { absent: Absent::Default(text), ..self } }
    pub(crate) const fn required(self) -> Self { Key { absent: Absent::Required, ..self } }
    pub(crate) const fn fallback(self, var: &'static str) -> Self { Key { fallback: Some(var), ..self } }
    pub(crate) const fn without_fallback(self) -> Self { Key { fallback: None, ..self } }
    pub(crate) const fn restart(self) -> Self { Key { reload: Reload::Restart, ..self } }
    /// A number: a YAML number is what it expects, not a lossy form of text.
    pub(crate) const fn number(self) -> Self { Key { number: true, ..self } }
    pub(crate) const fn value(self, f: fn(&O) -> String) -> Self { Key { show: Show::Value(f), ..self } }
    pub(crate) const fn secret(self, set: fn(&O) -> bool) -> Self { Key { show: Show::Secret(set), ..self } }
    pub(crate) const fn lines(self, f: fn(&O, &str) -> Option<String>) -> Self {
        Key { show: Show::Lines(f), ..self }
    }
    /// The default by the key's rule; None without one (or one the rule refuses: a test rules
    /// that out).
    pub(crate) fn default_value(&self) -> Option<T> {
        match self.absent {
            Absent::Default(text) => (self.rule)(text).ok(),
            _ => None,
        }
    }
}

/// A key without its type, for the lists derived from the definitions.
pub(crate) trait About<O> {
    fn name(&self) -> &'static str;
    fn reload(&self) -> Reload;
    fn show(&self) -> &Show<O>;
    /// Whether the key has no default, or one its rule accepts (each item, for a list).
    #[cfg(test)]
    fn default_is_valid(&self) -> bool;
}

impl<T, O> About<O> for Key<T, O> {
    fn name(&self) -> &'static str { self.name }
    fn reload(&self) -> Reload { self.reload }
    fn show(&self) -> &Show<O> { &self.show }
    #[cfg(test)]
    fn default_is_valid(&self) -> bool {
        // Item by item: a list key's default is written as its environment variable would be.
        match self.absent {
            Absent::Default(text) => text.split(',').all(|t| (self.rule)(t.trim()).is_ok()),
            _ => true,
        }
    }
}

/// A key's variable: `WECOM_CALLBACK_` and its name, upper case, `__` after a section.
pub(crate) fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.replace('.', "__").to_ascii_uppercase())
}


type Text = String;
/// The rule of a key that is a section or a list of them, read by its own code.
fn nested(_: &str) -> Ruled<()> { Ok(()) }

// ------------------------------------------------------------ the top level, in check-config order

pub const HOST: Key<IpAddr> = Key::new("host", rules::ip).or("0.0.0.0").restart()
    .value(|c| c.host.to_string());
pub const PORT: Key<u16> = Key::new("port", |t| num(t, 0, u16::MAX)).number().or("8645").restart()
    .value(|c| c.port.to_string());
pub const PATH: Key<Text> = Key::new("path", rules::callback_path).or("/wecom/callback").restart()
    .value(|c| c.path.clone());
pub const METRICS_LISTEN: Key<Option<SocketAddr>> =
    Key::new("metrics_listen", rules::listen_or_off).or("127.0.0.1:9645").restart()
    .value(|c| c.metrics_listen.map_or("off".into(), |a| a.to_string()));
/// `LOG_FORMAT` too, as other tools spell it.
pub const LOG_FORMAT: Key<LogFormat> =
    Key::new("log_format", |t| LogFormat::parse(t).map_err(Invalid::owned)).or("text")
    .fallback("LOG_FORMAT").restart()
    .value(|c| format!("{:?}", c.log_format).to_ascii_lowercase());
pub const API_BASE_URL: Key<HttpUrl> = Key::new("api_base_url", HttpUrl::parse)
    .or(DEFAULT_API_BASE_URL).restart().value(|c| c.api_base_url.clone());
/// With neither allowlist key set, Hermes's gateway-wide variables apply (both, or neither).
pub const ALLOW_ALL_USERS: Key<bool> = Key::new("allow_all_users", rules::boolean).or("false")
    .fallback("GATEWAY_ALLOW_ALL_USERS").value(|c| c.allowlist.allow_all.to_string());
/// `*` in the list means everyone (as in Hermes).
pub const ALLOWED_USERS: Key<Text> = Key::new("allowed_users", |t| Ok(Allowlist::entry(t)?))
    .fallback("GATEWAY_ALLOWED_USERS").value(|c| format!("{:?}", c.allowlist.users));
/// Agent calls wait on the network: many at once.
pub const WORKERS: Key<usize> = Key::new("workers", |t| num(t, 1, 1024)).number().or("64").restart()
    .value(|c| c.workers.to_string());
pub const QUEUE_CAPACITY: Key<usize> = Key::new("queue_capacity", |t| num(t, 1, 1_000_000)).number()
    .or("1024").restart().value(|c| c.queue_capacity.to_string());
pub const MAX_BODY_BYTES: Key<usize> = Key::new("max_body_bytes", |t| num(t, 1024, 16 << 20)).number()
    .or("65536").restart().value(|c| c.max_body_bytes.to_string());
pub const SHUTDOWN_GRACE_SECS: Key<u64> = Key::new("shutdown_grace_secs", |t| num(t, 0, 86_400)).number()
    .or("30").restart().value(|c| c.shutdown_grace_secs.to_string());
pub const REPLAY_WINDOW: Key<Duration> = Key::new("replay_window", |t| secs(t, 0, 604_800)).number()
    .or("300").restart().value(|c| c.replay_window.as_secs().to_string());
pub const HTTP_TIMEOUT_SECS: Key<u64> = Key::new("http_timeout_secs", |t| num(t, 1, 600)).number().or("10")
    .restart().value(|c| c.http_timeout_secs.to_string());
pub const STORE: Key<StoreKind> = Key::new("store", |t| StoreKind::parse(t).map_err(Invalid::owned))
    .or("sqlite").restart().value(|c| match &c.store {
        StoreKind::Sqlite => "sqlite".to_owned(),
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Postgres(url) => url.redacted(),
    });
pub const DATA_DIR: Key<PathBuf> = Key::new("data_dir", |t| Ok(PathBuf::from(t))).or("./data")
    .restart().value(|c| c.data_dir.display().to_string());
pub const RETENTION_DAYS: Key<u64> = Key::new("retention_days", |t| num(t, 1, 3650)).number().or("7")
    .restart().value(|c| c.retention_days.to_string());
pub const MAX_STORE_MB: Key<u64> = Key::new("max_store_mb", |t| num(t, 0, 1 << 30)).number().or("0")
    .restart().value(|c| c.max_store_mb.to_string());
/// Free space kept on data_dir's filesystem for accepted work (SQLite store); `0`: off.
pub const MIN_FREE_MB: Key<u64> = Key::new("min_free_mb", |t| num(t, 0, 1 << 30)).number().or("64")
    .restart().value(|c| c.min_free_mb.to_string());
pub const LEASE_SECS: Key<u64> = Key::new("lease_secs", |t| num(t, 5, 3600)).number().or("30").restart()
    .value(|c| c.lease_secs.to_string());
/// The `agent:` section, whose keys are in `agent.rs`.
pub const AGENT: Key<()> = Key::new("agent", nested)
    .lines(|c, indent| Some(c.agent.redacted(indent)));
/// Text (comma-separated), or a list of tokens and `{token, scopes}` entries.
pub const API_TOKENS: Key<SecretString> = Key::new("api.tokens", rules::secret).value(|c| {
    let broadcast = match c.api_tokens.iter().filter(|t| t.broadcast).count() {
        0 => String::new(),
        n => format!(", {n} with scope broadcast"),
    };
    let off = c.api_tokens.is_empty().then_some(" (the /api endpoints are off)");
    format!("{} configured{broadcast}{}", c.api_tokens.len(), off.unwrap_or_default())
});
/// The older spelling of `api.tokens` (text or a list of tokens), counted there.
pub const API_TOKENS_PLAIN: Key<SecretString> = Key::new("api_tokens", rules::secret);
/// WeCom's own limits by default.
pub const MEMBER_LIMITS: Key<Limit> = Key::new("limits.member", limit).or("30/1m, 1000/1h")
    .restart().value(|c| limits(&c.member_limits));
pub const BOT_LIMITS: Key<Limit> = Key::new("limits.bot", limit).or("20/1m").restart()
    .value(|c| limits(&c.bot_limits));
pub const RETRY_ATTEMPTS: Key<u32> = Key::new("retry.max_attempts", |t| num(t, 1, 100)).number().or("8")
    .restart().value(|c| c.retry.max_attempts.to_string());
pub const RETRY_BASE_MS: Key<Duration> = Key::new("retry.base_ms", |t| millis(t, 3_600_000)).number()
    .or("1000").restart().value(|c| c.retry.base.as_millis().to_string());
/// No wait is shorter than `base_ms`, whatever this says.
pub const RETRY_MAX_MS: Key<Duration> = Key::new("retry.max_ms", |t| millis(t, 86_400_000)).number()
    .or("60000").restart().value(|c| c.retry.max.as_millis().to_string());
/// Directories an agent's `path` may name; none by default, so only `base64` works.
pub const MEDIA_AGENT_DIRS: Key<PathBuf> = Key::new("media.agent_dirs", |t| Ok(PathBuf::from(t)))
    .restart().value(|c| format!("{:?}", c.media.agent_dirs));
/// WeCom's own file limit: 20 MiB.
pub const MEDIA_MAX_BYTES: Key<u64> = Key::new("media.max_bytes", |t| num(t, 1, 1 << 30)).number()
    .or("20971520").restart().value(|c| c.media.max_bytes.to_string());
/// By default, the listener's address.
pub const MEDIA_PUBLIC_URL: Key<HttpUrl> = Key::new("media.public_url", HttpUrl::parse).restart()
    .value(|c| c.media.public_url.as_deref().unwrap_or("(the listener)").to_owned());
pub const MEDIA_INLINE_TEXT_BYTES: Key<u64> =
    Key::new("media.inline_text_bytes", |t| num(t, 0, 16 << 20)).number().or("65536").restart()
    .value(|c| c.media.inline_text_bytes.to_string());
pub const MEDIA_URL_EXPIRES: Key<Duration> =
    Key::new("media.url_expires_secs", |t| secs(t, 60, 604_800)).number().or("3600").restart()
    .value(|c| c.media.url_expires.as_secs().to_string());
pub const BOTS: Key<()> = Key::new("bots", nested)
    .lines(|c, indent| Some(entries(BOT_KEYS, &c.bots, indent)));
/// A list of AI bots; without it, the single bot of the [`SINGLE_AIBOT_KEYS`] at the top level.
/// Connections open at start: a reload does not apply a change.
pub const AIBOTS: Key<()> = Key::new("aibots", nested).restart()
    .value(|c| format!("[{}]", c.aibots.iter().map(aibot_shown).collect::<Vec<_>>().join(", ")));
pub const AIBOT_WS_URL: Key<Text> = Key::new("aibot.ws_url", rules::ws_url).or(DEFAULT_AIBOT_WS_URL)
    .restart().value(|c| c.aibot.ws_url.clone());
/// `off`: no placeholder.
pub const AIBOT_PLACEHOLDER: Key<Text> = Key::new("aibot.placeholder", rules::text).or("思考中…")
    .restart().value(|c| format!("{:?}", c.aibot.placeholder));
/// Not below 50 ms: each update waits for WeCom's answer anyway.
pub const AIBOT_UPDATE_MS: Key<Duration> =
    Key::new("aibot.update_ms", |t| num(t, 50, 60_000).map(Duration::from_millis)).number()
    .or("500").restart().value(|c| c.aibot.update_every.as_millis().to_string());
/// WeCom refuses a stream's updates 6 minutes after its first frame.
pub const AIBOT_STREAM_SECS: Key<Duration> = Key::new("aibot.stream_secs", |t| secs(t, 10, 350))
    .number().or("300").restart().value(|c| c.aibot.stream_for.as_secs().to_string());
/// A list of apps; without it, the single app of the [`APP_KEYS`] at the top level.
pub const APPS: Key<()> = Key::new("apps", nested)
    .lines(|c, indent| Some(entries(APP_KEYS, &c.apps, indent)));

pub const KEYS: &[&dyn About<Config>] = &[
    &HOST, &PORT, &PATH, &METRICS_LISTEN, &LOG_FORMAT, &API_BASE_URL, &ALLOW_ALL_USERS,
    &ALLOWED_USERS, &WORKERS, &QUEUE_CAPACITY, &MAX_BODY_BYTES, &SHUTDOWN_GRACE_SECS,
    &REPLAY_WINDOW, &HTTP_TIMEOUT_SECS, &STORE, &DATA_DIR, &RETENTION_DAYS, &MAX_STORE_MB,
    &MIN_FREE_MB, &LEASE_SECS, &AGENT, &API_TOKENS, &API_TOKENS_PLAIN, &MEMBER_LIMITS,
    &BOT_LIMITS, &RETRY_ATTEMPTS, &RETRY_BASE_MS, &RETRY_MAX_MS, &MEDIA_AGENT_DIRS,
    &MEDIA_MAX_BYTES, &MEDIA_PUBLIC_URL, &MEDIA_INLINE_TEXT_BYTES, &MEDIA_URL_EXPIRES, &BOTS,
    &APPS, &AIBOTS, &AIBOT_WS_URL, &AIBOT_PLACEHOLDER, &AIBOT_UPDATE_MS, &AIBOT_STREAM_SECS,
];

fn limit(text: &str) -> Ruled<Limit> {
    Limit::parse(text).map_err(Invalid::owned)
}
fn limits(l: &[Limit]) -> String {
    format!("[{}]", l.iter().map(Limit::to_string).collect::<Vec<_>>().join(", "))
}
fn millis(text: &str, max: u64) -> Ruled<Duration> {
    num(text, 1, max).map(Duration::from_millis)
}

// ------------------------------------------------------------ an app: an `apps:` entry, or the top

/// `default` for the top level's single app (Hermes's `extra.name`); required in `apps:`.
pub const APP_NAME: Key<Text, AppConfig> = Key::new("name", rules::text).required()
    .value(|a| a.name.clone());
pub const CORP_ID: Key<CorpId, AppConfig> = Key::new("corp_id", CorpId::parse).required()
    .value(|a| a.corp_id.clone());
pub const AGENT_ID: Key<u64, AppConfig> = Key::new("agent_id", |t| {
    t.parse().map_err(|_| Invalid::Must("be the numeric AgentId", t.to_owned()))
}).number().required().value(|a| a.agent_id.to_string());
pub const CORP_SECRET: Key<SecretString, AppConfig> = Key::new("corp_secret", rules::secret)
    .required().secret(|_| true);
pub const TOKEN: Key<SecretString, AppConfig> = Key::new("token", rules::secret).required()
    .secret(|_| true);
pub const ENCODING_AES_KEY: Key<EncodingAesKey, AppConfig> =
    Key::new("encoding_aes_key", EncodingAesKey::parse).required().secret(|_| true);
/// Accepted too during a rotation, until the admin console uses the new values.
pub const PREVIOUS_TOKEN: Key<SecretString, AppConfig> = Key::new("previous_token", rules::secret)
    .secret(|a| a.previous_token.is_some());
pub const PREVIOUS_ENCODING_AES_KEY: Key<EncodingAesKey, AppConfig> =
    Key::new("previous_encoding_aes_key", EncodingAesKey::parse)
    .secret(|a| a.previous_encoding_aes_key.is_some());
/// An app's own agent; its chat settings default to the `agent:` section's.
pub const APP_AGENT: Key<(), AppConfig> = Key::new("agent", nested)
    .lines(|a, indent| Some(a.agent.as_ref()?.redacted(indent)));

pub const APP_KEYS: &[&dyn About<AppConfig>] = &[
    &APP_NAME, &CORP_ID, &AGENT_ID, &CORP_SECRET, &TOKEN, &ENCODING_AES_KEY, &PREVIOUS_TOKEN,
    &PREVIOUS_ENCODING_AES_KEY, &APP_AGENT,
];

// ------------------------------------------------------------ an AI bot: an `aibots:` entry, or the top

/// `aibot` for the top level's single bot; required in `aibots:`.
pub const AIBOT_NAME: Key<Text, AiBotConfig> = Key::new("name", rules::text).required();
pub const AIBOT_BOT_ID: Key<Text, AiBotConfig> = Key::new("bot_id", rules::no_spaces).required();
/// The long connection's Secret (the default way in).
pub const AIBOT_SECRET: Key<SecretString, AiBotConfig> = Key::new("secret", rules::secret);
/// URL mode: the callback's Token and EncodingAESKey instead of the Secret.
pub const AIBOT_TOKEN: Key<SecretString, AiBotConfig> = Key::new("token", rules::secret);
pub const AIBOT_ENCODING_AES_KEY: Key<EncodingAesKey, AiBotConfig> =
    Key::new("encoding_aes_key", EncodingAesKey::parse);
/// The gateway-wide allowlist when absent; `*` is anyone.
pub const AIBOT_ALLOWED_USERS: Key<Text, AiBotConfig> =
    Key::new("allowed_users", |t| Ok(Allowlist::entry(t)?));
/// Group chat ids; `*` is any. None by default: group messages are refused, and logged with the
/// chat id to add.
pub const AIBOT_ALLOWED_CHATS: Key<Text, AiBotConfig> = Key::new("allowed_chats", rules::no_spaces);
pub const AIBOT_GROUP_SESSION: Key<GroupSession, AiBotConfig> =
    Key::new("group_session", |t| match t.to_ascii_lowercase().as_str() {
        "member" => Ok(GroupSession::Member),
        "chat" => Ok(GroupSession::Chat),
        _ => Err(Invalid::Must("be member or chat", t.to_owned())),
    }).or("member");
pub const AIBOT_WELCOME: Key<Text, AiBotConfig> = Key::new("welcome", rules::text);
/// A bot's own agent; its chat settings default to the `agent:` section's.
pub const AIBOT_AGENT: Key<(), AiBotConfig> = Key::new("agent", nested);

pub const AIBOT_KEYS: &[&dyn About<AiBotConfig>] = &[
    &AIBOT_NAME, &AIBOT_BOT_ID, &AIBOT_SECRET, &AIBOT_TOKEN, &AIBOT_ENCODING_AES_KEY,
    &AIBOT_ALLOWED_USERS, &AIBOT_ALLOWED_CHATS, &AIBOT_GROUP_SESSION, &AIBOT_WELCOME, &AIBOT_AGENT,
];

/// The single bot's keys at the top level (`WECOM_CALLBACK_AIBOT_ID`...), as the entry's keys.
pub const SINGLE_AIBOT_ID: Key<Text, AiBotConfig> = Key::new("aibot_id", rules::no_spaces).required();
pub const SINGLE_AIBOT_SECRET: Key<SecretString, AiBotConfig> = Key::new("aibot_secret", rules::secret);
pub const SINGLE_AIBOT_TOKEN: Key<SecretString, AiBotConfig> = Key::new("aibot_token", rules::secret);
pub const SINGLE_AIBOT_ENCODING_AES_KEY: Key<EncodingAesKey, AiBotConfig> =
    Key::new("aibot_encoding_aes_key", EncodingAesKey::parse);
pub const SINGLE_AIBOT_KEYS: &[&dyn About<AiBotConfig>] = &[
    &SINGLE_AIBOT_ID, &SINGLE_AIBOT_SECRET, &SINGLE_AIBOT_TOKEN, &SINGLE_AIBOT_ENCODING_AES_KEY,
];

/// A bot as check-config shows it (and the reload compares): never a secret.
fn aibot_shown(b: &AiBotConfig) -> String {
    let mode = match b.mode {
        Mode::LongConnection { .. } => "long connection, secret '****'",
        Mode::Callback { .. } => "URL callback, token and encoding_aes_key '****'",
    };
    let users = match b.allowlist.allow_all {
        true => "*".to_owned(),
        false => format!("{:?}", b.allowlist.users),
    };
    let chats = match b.chats.all {
        true => "*".to_owned(),
        false => format!("{:?}", b.chats.ids),
    };
    let session = format!("{:?}", b.group_session).to_ascii_lowercase();
    let agent = b.agent.as_ref().map_or("(the agent: section)", crate::agent::AgentConfig::kind_name);
    format!(
        "{{name: {}, bot_id: {}, mode: {mode}, allowed_users: {users}, allowed_chats: {chats}, group_session: {session}, welcome: {}, agent: {agent}}}",
        b.name, b.bot_id, b.welcome.is_some()
    )
}

// ------------------------------------------------------------ a group robot, an API token

pub const BOT_NAME: Key<Text, Bot> = Key::new("name", rules::text).required()
    .value(|b| b.name.clone());
/// Shown with its key hidden: the key is the robot's only credential.
pub const WEBHOOK_URL: Key<WebhookUrl, Bot> = Key::new("webhook_url", WebhookUrl::parse)
    .required().value(|_| REDACTED_WEBHOOK.to_owned());
/// WeCom group robots have no signing secret: warned about, never read.
pub const BOT_SECRET: Key<(), Bot> = Key::new("secret", nested);
pub const BOT_KEYS: &[&dyn About<Bot>] = &[&BOT_NAME, &WEBHOOK_URL, &BOT_SECRET];

pub const TOKEN_VALUE: Key<SecretString, ApiToken> = Key::new("token", rules::secret).required();
/// `broadcast`, the only scope: departments, tags and `@all`.
pub const TOKEN_SCOPES: Key<(), ApiToken> = Key::new("scopes", |t| match t.to_ascii_lowercase() {
    scope if scope == "broadcast" => Ok(()),
    _ => Err(Invalid::Must("be broadcast, the only scope", t.to_owned())),
});
pub const TOKEN_KEYS: &[&dyn About<ApiToken>] = &[&TOKEN_VALUE, &TOKEN_SCOPES];

// ------------------------------------------------------------ what is derived

/// The names of a list of keys, for unknown-key warnings.
pub(crate) fn names<O>(keys: &[&dyn About<O>]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name()).collect()
}

/// Every top-level key and whether a reload applies it: the list the reload report follows.
pub fn keys() -> impl Iterator<Item = (&'static str, Reload)> {
    let top = KEYS.iter().map(|k| (k.name(), k.reload()));
    top.chain(APP_KEYS.iter().map(|k| (k.name(), k.reload())))
}

/// `keys` of `o` as YAML lines under `indent`; a dotted key under its section's line.
fn lines<O>(keys: &[&dyn About<O>], o: &O, indent: &str) -> String {
    let (mut out, mut section) = (String::new(), "");
    for key in keys {
        let (indent, name) = match key.name().split_once('.') {
            Some((s, name)) => {
                if s != section {
                    let _ = writeln!(out, "{indent}{s}:");
                }
                section = s;
                (format!("{indent}  "), name)
            }
            None => (indent.to_owned(), key.name()),
        };
        let _ = match key.show() {
            Show::Within => Ok(()),
            Show::Value(shown) => writeln!(out, "{indent}{name}: {}", shown(o)),
            Show::Secret(set) if set(o) => writeln!(out, "{indent}{name}: '****'"),
            Show::Secret(_) => Ok(()),
            Show::Lines(shown) => match shown(o, &format!("{indent}  ")) {
                Some(lines) => write!(out, "{indent}{name}:\n{lines}"),
                None => Ok(()),
            },
        };
    }
    out
}

/// A list of `items`, each as `- ` and its keys' lines.
fn entries<O>(keys: &[&dyn About<O>], items: &[O], indent: &str) -> String {
    let inner = format!("{indent}  ");
    let entry = |item| {
        let lines = lines(keys, item, &inner);
        format!("{indent}- {}", lines.strip_prefix(&inner).unwrap_or(&lines))
    };
    items.iter().map(entry).collect()
}

impl Default for crate::aibot::settings::AiBotSettings {
    /// The `aibot.*` keys' defaults.
    fn default() -> Self {
        crate::aibot::settings::AiBotSettings {
            ws_url: DEFAULT_AIBOT_WS_URL.to_owned(),
            placeholder: AIBOT_PLACEHOLDER.default_value().unwrap_or_default(),
            update_every: AIBOT_UPDATE_MS.default_value().unwrap_or_default(),
            stream_for: AIBOT_STREAM_SECS.default_value().unwrap_or_default(),
        }
    }
}

impl Default for MediaConfig {
    /// The `media.*` keys' defaults.
    fn default() -> Self {
        MediaConfig {
            agent_dirs: Vec::new(),
            max_bytes: MEDIA_MAX_BYTES.default_value().unwrap_or_default(),
            public_url: None,
            inline_text_bytes: MEDIA_INLINE_TEXT_BYTES.default_value().unwrap_or_default(),
            url_expires: MEDIA_URL_EXPIRES.default_value().unwrap_or_default(),
        }
    }
}

impl Config {
    /// The configuration as YAML with every secret replaced, for `check-config` and logs.
    pub fn redacted(&self) -> String {
        lines(KEYS, self, "")
    }

    /// The keys whose value differs in `new` but that a reload does not apply (it names them as
    /// taking effect at the next start), compared as check-config shows them.
    pub fn not_applied(&self, new: &Config) -> Vec<&'static str> {
        let restart = KEYS.iter().filter(|k| k.reload() == Reload::Restart);
        let shown = |key: &&&dyn About<Config>, c| match key.show() {
            Show::Value(shown) => shown(c),
            _ => String::new(),
        };
        (restart.filter(|k| shown(k, self) != shown(k, new)))
            .map(|k| k.name())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that a reload does not apply is compared by its shown value: it needs one.
    #[test]
    fn every_key_a_reload_does_not_apply_is_shown_by_value() {
        for key in KEYS.iter().filter(|k| k.reload() == Reload::Restart) {
            assert!(matches!(key.show(), Show::Value(_)), "{}", key.name());
        }
    }

    #[test]
    fn every_default_is_valid_by_its_own_rule() {
        for key in KEYS {
            assert!(key.default_is_valid(), "{}", key.name());
        }
        for key in APP_KEYS {
            assert!(key.default_is_valid(), "{}", key.name());
        }
    }

    /// The defaults written here are the ones the modules that own them use.
    #[test]
    fn defaults_match_their_owners() {
        let read = |text: &str| text.split(", ").map(limit).collect::<Result<Vec<_>, _>>();
        for (key, owner) in [
            (MEMBER_LIMITS, crate::outbound::default_member_limits()),
            (BOT_LIMITS, crate::outbound::default_bot_limits()),
        ] {
            let Absent::Default(text) = key.absent else {
                panic!("{} has no default", key.name)
            };
            assert_eq!(read(text).map(|l| limits(&l)).ok(), Some(limits(&owner)));
        }
        let retry = crate::retry::RetryPolicy::default();
        assert_eq!(RETRY_ATTEMPTS.default_value(), Some(retry.max_attempts));
        assert_eq!(RETRY_BASE_MS.default_value(), Some(retry.base));
        assert_eq!(RETRY_MAX_MS.default_value(), Some(retry.max));
    }
}
