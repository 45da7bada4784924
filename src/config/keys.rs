//! Every configuration key, defined once: name (and so its `WECOM_CALLBACK_*` variable), rule
//! (and so its type), default, fallback variable, how check-config shows it (which is what hides
//! a secret), and whether a reload applies it. The known-key lists behind unknown-key warnings,
//! check-config's output ([`Config::redacted`]) and the reload report ([`Config::not_applied`])
//! are derived from these lists; `build.rs` reads each key into its field.
//!
//! Must never: show a secret's value (secrets are [`Show::Secret`], or counted), or leave a
//! key a reload does not apply without a shown value to compare (a test checks).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

#[cfg(test)]
use super::read::Absent;
use super::read::{About, Key, Reload, Show};
use super::rules::{self, num, secs, CorpId, EncodingAesKey, HttpUrl, Invalid, WebhookUrl};
use super::types::{Config, MediaConfig};
use crate::allowlist::Allowlist;
use crate::api_token::ApiToken;
use crate::app::AppConfig;
use crate::bots::{Bot, REDACTED_WEBHOOK};
use crate::inbox::StoreKind;
use crate::logging::LogFormat;
use crate::outbound::ratelimit::Limit;

pub const DEFAULT_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";

type Text = String;
const fn value(f: fn(&Config) -> String) -> Show<Config> {
    Show::Value(f)
}
fn limits(l: &[Limit]) -> String {
    let l: Vec<String> = l.iter().map(Limit::to_string).collect();
    format!("[{}]", l.join(", "))
}

// ------------------------------------------------------------ the top level, in check-config order

pub(crate) const HOST: Key<IpAddr> = Key::new("host", rules::ip)
    .or("0.0.0.0")
    .restart()
    .show(value(|c| c.host.to_string()));
pub(crate) const PORT: Key<u16> = Key::new("port", |t| num(t, 0, u16::MAX))
    .or("8645")
    .restart()
    .show(value(|c| c.port.to_string()));
pub(crate) const PATH: Key<Text> = Key::new("path", rules::callback_path)
    .or("/wecom/callback")
    .restart()
    .show(value(|c| c.path.clone()));
pub(crate) const METRICS_LISTEN: Key<Option<SocketAddr>> =
    Key::new("metrics_listen", rules::listen_or_off)
        .or("127.0.0.1:9645")
        .restart()
        .show(value(|c| {
            c.metrics_listen.map_or("off".into(), |a| a.to_string())
        }));
/// `LOG_FORMAT` too, as other tools spell it.
pub(crate) const LOG_FORMAT: Key<LogFormat> = Key::new("log_format", |t| {
    LogFormat::parse(t).map_err(Invalid::owned)
})
.or("text")
.fallback("LOG_FORMAT")
.restart()
.show(value(|c| {
    format!("{:?}", c.log_format).to_ascii_lowercase()
}));
pub(crate) const API_BASE_URL: Key<HttpUrl> = Key::new("api_base_url", HttpUrl::parse)
    .or(DEFAULT_API_BASE_URL)
    .restart()
    .show(value(|c| c.api_base_url.clone()));
/// With neither allowlist key set, Hermes's gateway-wide variables apply (both or neither).
pub(crate) const ALLOW_ALL_USERS: Key<bool> = Key::new("allow_all_users", rules::boolean)
    .or("false")
    .fallback("GATEWAY_ALLOW_ALL_USERS")
    .show(value(|c| c.allowlist.allow_all.to_string()));
/// `*` in the list means everyone (as in Hermes).
pub(crate) const ALLOWED_USERS: Key<Text> = Key::new("allowed_users", |t| Ok(Allowlist::entry(t)?))
    .fallback("GATEWAY_ALLOWED_USERS")
    .show(value(|c| format!("{:?}", c.allowlist.users)));
/// Agent calls wait on the network: many at once.
pub(crate) const WORKERS: Key<usize> = Key::new("workers", |t| num(t, 1, 1024))
    .or("64")
    .restart()
    .show(value(|c| c.workers.to_string()));
pub(crate) const QUEUE_CAPACITY: Key<usize> = Key::new("queue_capacity", |t| num(t, 1, 1_000_000))
    .or("1024")
    .restart()
    .show(value(|c| c.queue_capacity.to_string()));
pub(crate) const MAX_BODY_BYTES: Key<usize> =
    Key::new("max_body_bytes", |t| num(t, 1024, 16 << 20))
        .or("65536")
        .restart()
        .show(value(|c| c.max_body_bytes.to_string()));
pub(crate) const SHUTDOWN_GRACE_SECS: Key<u64> =
    Key::new("shutdown_grace_secs", |t| num(t, 0, 86_400))
        .or("30")
        .restart()
        .show(value(|c| c.shutdown_grace_secs.to_string()));
pub(crate) const REPLAY_WINDOW: Key<Duration> = Key::new("replay_window", |t| secs(t, 0, 604_800))
    .or("300")
    .restart()
    .show(value(|c| c.replay_window.as_secs().to_string()));
pub(crate) const HTTP_TIMEOUT_SECS: Key<u64> = Key::new("http_timeout_secs", |t| num(t, 1, 600))
    .or("10")
    .restart()
    .show(value(|c| c.http_timeout_secs.to_string()));
pub(crate) const STORE: Key<StoreKind> =
    Key::new("store", |t| StoreKind::parse(t).map_err(Invalid::owned))
        .or("sqlite")
        .restart()
        .show(value(|c| match &c.store {
            StoreKind::Sqlite => "sqlite".to_owned(),
            StoreKind::Memory => "memory".to_owned(),
            StoreKind::Postgres(url) => url.redacted(),
        }));
pub(crate) const DATA_DIR: Key<PathBuf> = Key::new("data_dir", |t| Ok(PathBuf::from(t)))
    .or("./data")
    .restart()
    .show(value(|c| c.data_dir.display().to_string()));
pub(crate) const RETENTION_DAYS: Key<u64> = Key::new("retention_days", |t| num(t, 1, 3650))
    .or("7")
    .restart()
    .show(value(|c| c.retention_days.to_string()));
pub(crate) const MAX_STORE_MB: Key<u64> = Key::new("max_store_mb", |t| num(t, 0, 1 << 30))
    .or("0")
    .restart()
    .show(value(|c| c.max_store_mb.to_string()));
pub(crate) const LEASE_SECS: Key<u64> = Key::new("lease_secs", |t| num(t, 5, 3600))
    .or("30")
    .restart()
    .show(value(|c| c.lease_secs.to_string()));
/// The `agent:` section: its own keys are in `agent.rs`.
pub(crate) const AGENT: Key<()> =
    Key::new("agent", |_| Ok(())).show(Show::Lines(|c, indent| Some(c.agent.redacted(indent))));
/// Text (comma-separated), or a list of tokens and `{token, scopes}` entries.
pub(crate) const API_TOKENS: Key<SecretString> =
    Key::new("api.tokens", rules::secret).show(value(|c| {
        let broadcast = match c.api_tokens.iter().filter(|t| t.broadcast).count() {
            0 => String::new(),
            n => format!(", {n} with scope broadcast"),
        };
        let off = c
            .api_tokens
            .is_empty()
            .then_some(" (the /api endpoints are off)");
        let n = c.api_tokens.len();
        format!("{n} configured{broadcast}{}", off.unwrap_or_default())
    }));
/// The older spelling of `api.tokens` (text or a list of tokens), shown there.
pub(crate) const API_TOKENS_PLAIN: Key<SecretString> = Key::new("api_tokens", rules::secret);
/// WeCom's own limits when none are given.
pub(crate) const MEMBER_LIMITS: Key<Limit> = Key::new("limits.member", limit)
    .or("30/1m, 1000/1h")
    .restart()
    .show(value(|c| limits(&c.member_limits)));
pub(crate) const BOT_LIMITS: Key<Limit> = Key::new("limits.bot", limit)
    .or("20/1m")
    .restart()
    .show(value(|c| limits(&c.bot_limits)));
pub(crate) const RETRY_ATTEMPTS: Key<u32> = Key::new("retry.max_attempts", |t| num(t, 1, 100))
    .or("8")
    .restart()
    .show(value(|c| c.retry.max_attempts.to_string()));
pub(crate) const RETRY_BASE_MS: Key<Duration> = Key::new("retry.base_ms", |t| millis(t, 3_600_000))
    .or("1000")
    .restart()
    .show(value(|c| c.retry.base.as_millis().to_string()));
/// No wait is shorter than `base_ms`, whatever this says.
pub(crate) const RETRY_MAX_MS: Key<Duration> = Key::new("retry.max_ms", |t| millis(t, 86_400_000))
    .or("60000")
    .restart()
    .show(value(|c| c.retry.max.as_millis().to_string()));
/// Directories an agent's `path` may name; none by default.
pub(crate) const MEDIA_AGENT_DIRS: Key<PathBuf> =
    Key::new("media.agent_dirs", |t| Ok(PathBuf::from(t)))
        .restart()
        .show(value(|c| format!("{:?}", c.media.agent_dirs)));
/// WeCom's own file limit: 20 MiB.
pub(crate) const MEDIA_MAX_BYTES: Key<u64> = Key::new("media.max_bytes", |t| num(t, 1, 1 << 30))
    .or("20971520")
    .restart()
    .show(value(|c| c.media.max_bytes.to_string()));
pub(crate) const MEDIA_PUBLIC_URL: Key<HttpUrl> = Key::new("media.public_url", HttpUrl::parse)
    .restart()
    .show(value(|c| {
        let url = c.media.public_url.as_deref();
        url.unwrap_or("(the listener)").to_owned()
    }));
pub(crate) const MEDIA_INLINE_TEXT_BYTES: Key<u64> =
    Key::new("media.inline_text_bytes", |t| num(t, 0, 16 << 20))
        .or("65536")
        .restart()
        .show(value(|c| c.media.inline_text_bytes.to_string()));
pub(crate) const MEDIA_URL_EXPIRES: Key<Duration> =
    Key::new("media.url_expires_secs", |t| secs(t, 60, 604_800))
        .or("3600")
        .restart()
        .show(value(|c| c.media.url_expires.as_secs().to_string()));
pub(crate) const BOTS: Key<()> = Key::new("bots", |_| Ok(())).show(Show::Lines(|c, indent| {
    Some(entries(BOT_KEYS, &c.bots, indent))
}));
/// A list of apps; without it, the single app of the [`APP_KEYS`] at the top level.
pub(crate) const APPS: Key<()> = Key::new("apps", |_| Ok(())).show(Show::Lines(|c, indent| {
    Some(entries(APP_KEYS, &c.apps, indent))
}));

fn limit(text: &str) -> Result<Limit, Invalid> {
    Limit::parse(text).map_err(Invalid::owned)
}
fn millis(text: &str, max: u64) -> Result<Duration, Invalid> {
    num(text, 1, max).map(Duration::from_millis)
}

#[rustfmt::skip]
pub(crate) const KEYS: &[&dyn About<Config>] = &[
    &HOST, &PORT, &PATH, &METRICS_LISTEN, &LOG_FORMAT, &API_BASE_URL, &ALLOW_ALL_USERS,
    &ALLOWED_USERS, &WORKERS, &QUEUE_CAPACITY, &MAX_BODY_BYTES, &SHUTDOWN_GRACE_SECS,
    &REPLAY_WINDOW, &HTTP_TIMEOUT_SECS, &STORE, &DATA_DIR, &RETENTION_DAYS, &MAX_STORE_MB,
    &LEASE_SECS, &AGENT, &API_TOKENS, &API_TOKENS_PLAIN, &MEMBER_LIMITS, &BOT_LIMITS,
    &RETRY_ATTEMPTS, &RETRY_BASE_MS, &RETRY_MAX_MS, &MEDIA_AGENT_DIRS, &MEDIA_MAX_BYTES,
    &MEDIA_PUBLIC_URL, &MEDIA_INLINE_TEXT_BYTES, &MEDIA_URL_EXPIRES, &BOTS, &APPS,
];

// ------------------------------------------------------------ an app: an `apps:` entry, or the top level

/// `default` for the single app of the top level (Hermes's `extra.name`); required in `apps:`.
pub(crate) const APP_NAME: Key<Text, AppConfig> = Key::new("name", rules::text)
    .required()
    .show(Show::Value(|a| a.name.clone()));
pub(crate) const CORP_ID: Key<CorpId, AppConfig> = Key::new("corp_id", CorpId::parse)
    .required()
    .show(Show::Value(|a| a.corp_id.clone()));
pub(crate) const AGENT_ID: Key<u64, AppConfig> = Key::new("agent_id", |t| {
    (t.parse()).map_err(|_| Invalid::Must("be the numeric AgentId", t.to_owned()))
})
.required()
.show(Show::Value(|a| a.agent_id.to_string()));
pub(crate) const CORP_SECRET: Key<SecretString, AppConfig> = Key::new("corp_secret", rules::secret)
    .required()
    .show(Show::Secret(|_| true));
pub(crate) const TOKEN: Key<SecretString, AppConfig> = Key::new("token", rules::secret)
    .required()
    .show(Show::Secret(|_| true));
pub(crate) const ENCODING_AES_KEY: Key<EncodingAesKey, AppConfig> =
    Key::new("encoding_aes_key", EncodingAesKey::parse)
        .required()
        .show(Show::Secret(|_| true));
/// Accepted too during a rotation, until the admin console uses the new values.
pub(crate) const PREVIOUS_TOKEN: Key<SecretString, AppConfig> =
    Key::new("previous_token", rules::secret).show(Show::Secret(|a| a.previous_token.is_some()));
pub(crate) const PREVIOUS_ENCODING_AES_KEY: Key<EncodingAesKey, AppConfig> =
    Key::new("previous_encoding_aes_key", EncodingAesKey::parse)
        .show(Show::Secret(|a| a.previous_encoding_aes_key.is_some()));
/// An app's own agent; its chat settings default to the `agent:` section's.
pub(crate) const APP_AGENT: Key<(), AppConfig> =
    Key::new("agent", |_| Ok(())).show(Show::Lines(|a, indent| {
        Some(a.agent.as_ref()?.redacted(indent))
    }));

#[rustfmt::skip]
pub(crate) const APP_KEYS: &[&dyn About<AppConfig>] = &[
    &APP_NAME, &CORP_ID, &AGENT_ID, &CORP_SECRET, &TOKEN, &ENCODING_AES_KEY, &PREVIOUS_TOKEN,
    &PREVIOUS_ENCODING_AES_KEY, &APP_AGENT,
];

// ------------------------------------------------------------ a group robot, an API token

pub(crate) const BOT_NAME: Key<Text, Bot> = Key::new("name", rules::text)
    .required()
    .show(Show::Value(|b| b.name.clone()));
/// Shown with its key hidden: the key is the robot's only credential.
pub(crate) const WEBHOOK_URL: Key<WebhookUrl, Bot> = Key::new("webhook_url", WebhookUrl::parse)
    .required()
    .show(Show::Value(|_| REDACTED_WEBHOOK.to_owned()));
/// WeCom group robots have no signing secret: warned about, never read.
pub(crate) const BOT_SECRET: Key<(), Bot> = Key::new("secret", |_| Ok(()));
pub(crate) const BOT_KEYS: &[&dyn About<Bot>] = &[&BOT_NAME, &WEBHOOK_URL, &BOT_SECRET];

pub(crate) const TOKEN_VALUE: Key<SecretString, ApiToken> =
    Key::new("token", rules::secret).required();
/// `broadcast`, the only scope: departments, tags and `@all`.
pub(crate) const TOKEN_SCOPES: Key<(), ApiToken> =
    Key::new("scopes", |t| match t.eq_ignore_ascii_case("broadcast") {
        true => Ok(()),
        false => Err(Invalid::Must("be broadcast, the only scope", t.to_owned())),
    });
pub(crate) const TOKEN_KEYS: &[&dyn About<ApiToken>] = &[&TOKEN_VALUE, &TOKEN_SCOPES];

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
        let retry = crate::outbound::retry::RetryPolicy::default();
        assert_eq!(RETRY_ATTEMPTS.default_value(), Some(retry.max_attempts));
        assert_eq!(RETRY_BASE_MS.default_value(), Some(retry.base));
        assert_eq!(RETRY_MAX_MS.default_value(), Some(retry.max));
    }
}
