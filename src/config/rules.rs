//! Rules: how one setting's text (trimmed, not empty) becomes a value, and why it may not.
//!
//! Owns: each rule once, and the wording of every reason. Must never: put a secret's text into a
//! reason (the rules for secrets never fail, or name only a length or the characters allowed).

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use crate::allowlist::InvalidEntry;
use crate::bots::{webhook_key, WebhookUrlError};
use crate::crypto::{AesKey, CryptoError};

/// Why a value (or the lack of one) is refused; the field is named by whoever reports it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    /// `must be true or false, got "maybe"`: what is allowed, then the text given.
    #[error("must {0}, got {1:?}")]
    Must(&'static str, String),
    #[error("must be a whole number from {min} to {max}, got {got:?}")]
    Range {
        min: String,
        max: String,
        got: String,
    },
    /// A list or mapping where another shape belongs; the kind found, never the value.
    #[error("must be {0}, got {1}")]
    Shape(&'static str, &'static str),
    #[error("expected a text value, got {0}")]
    NotText(&'static str),
    #[error("is required")]
    Required,
    #[error("must not be empty")]
    Empty,
    #[error("must not contain spaces")]
    Spaces,
    #[error("must not be /health, which the gateway serves itself")]
    Health,
    #[error("the environment variable {0} is not set")]
    Unset(String),
    #[error("{0:?} is already used by {1}")]
    Taken(String, String),
    #[error("corp {corp} agent {agent} is already configured as {other}")]
    SameApp {
        corp: String,
        agent: u64,
        other: String,
    },
    #[error("no WeCom app configured: set {0}, or an apps: list in config.yaml")]
    NoApp(String),
    #[error("is empty: list at least one app or remove the key")]
    NoApps,
    #[error(transparent)]
    Entry(#[from] InvalidEntry),
    #[error(transparent)]
    Webhook(#[from] WebhookUrlError),
    /// The reason given by the module that owns a rule (a limit, the store URL, the log format).
    #[error("{0}")]
    Owned(String),
}

impl Invalid {
    pub(crate) fn owned(reason: impl Display) -> Self {
        Invalid::Owned(reason.to_string())
    }
}

/// What a rule returns.
pub(crate) type Ruled<T> = Result<T, Invalid>;

/// A whole number from `min` to `max`.
pub(crate) fn num<T: FromStr + PartialOrd + Display>(text: &str, min: T, max: T) -> Ruled<T> {
    match text.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(Invalid::Range {
            min: min.to_string(),
            max: max.to_string(),
            got: text.to_owned(),
        }),
    }
}

/// Whole seconds from `min` to `max`.
pub(crate) fn secs(text: &str, min: u64, max: u64) -> Ruled<Duration> {
    num(text, min, max).map(Duration::from_secs)
}

pub(crate) fn text(text: &str) -> Ruled<String> {
    Ok(text.to_owned())
}

pub(crate) fn secret(text: &str) -> Ruled<SecretString> {
    Ok(SecretString::from(text))
}

pub(crate) fn boolean(text: &str) -> Ruled<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Invalid::Must("be true or false", text.to_owned())),
    }
}

pub(crate) fn ip(text: &str) -> Ruled<IpAddr> {
    (text.parse()).map_err(|_| Invalid::Must("be an IP address such as 0.0.0.0 or ::", text.into()))
}

/// `ADDRESS:PORT`, or off.
pub(crate) fn listen_or_off(text: &str) -> Ruled<Option<SocketAddr>> {
    match text.to_ascii_lowercase().as_str() {
        "off" | "none" | "false" => Ok(None),
        _ => text.parse().map(Some).map_err(|_| {
            let must = "be ADDRESS:PORT such as 127.0.0.1:9645 or 0.0.0.0:9645, or off";
            Invalid::Must(must, text.to_owned())
        }),
    }
}

pub(crate) fn callback_path(text: &str) -> Ruled<String> {
    match text {
        "/health" => Err(Invalid::Health),
        p if p.starts_with('/') && !p.contains(['?', '#', ' ']) => Ok(p.to_owned()),
        p => Err(Invalid::Must(
            "start with / and contain no ?, # or spaces",
            p.to_owned(),
        )),
    }
}

/// An absolute http:// or https:// URL, as given.
pub(crate) struct HttpUrl(pub(crate) String);

impl HttpUrl {
    pub(crate) fn parse(text: &str) -> Ruled<Self> {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(HttpUrl(text.to_owned())),
            _ => Err(Invalid::Must("be an http:// or https:// URL", text.into())),
        }
    }
    /// Without a trailing `/`: paths are appended to a base.
    pub(crate) fn base(self) -> String {
        self.0.trim_end_matches('/').to_owned()
    }
}

/// A ws:// or wss:// URL (a WebSocket endpoint), as given.
pub(crate) fn ws_url(text: &str) -> Ruled<String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "ws" | "wss") => Ok(text.to_owned()),
        _ => Err(Invalid::Must("be a ws:// or wss:// URL", text.into())),
    }
}

/// Text without spaces (an id).
pub(crate) fn no_spaces(text: &str) -> Ruled<String> {
    match text.contains(char::is_whitespace) {
        true => Err(Invalid::Spaces),
        false => Ok(text.to_owned()),
    }
}

/// A corp id (`ww…`, or a legacy `wx…`): any text without spaces.
pub(crate) struct CorpId(pub(crate) String);

impl CorpId {
    pub(crate) fn parse(text: &str) -> Ruled<Self> {
        match text.contains(char::is_whitespace) {
            true => Err(Invalid::Spaces),
            false => Ok(CorpId(text.to_owned())),
        }
    }
}

/// A callback EncodingAESKey, decoded once here to check it (the crypto module owns the rule).
pub(crate) struct EncodingAesKey(pub(crate) SecretString);

impl EncodingAesKey {
    pub(crate) fn parse(text: &str) -> Ruled<Self> {
        match AesKey::from_encoding_aes_key(text) {
            Ok(_) => Ok(EncodingAesKey(SecretString::from(text))),
            // The reason without the WXBizMsgCrypt code, which means nothing in a config file.
            Err(CryptoError::IllegalAesKey(reason)) => Err(Invalid::Owned(reason)),
            Err(other) => Err(Invalid::owned(other)),
        }
    }
}

/// A group robot's webhook URL, kept as its key: the robot's only credential, never echoed.
pub(crate) struct WebhookUrl(pub(crate) SecretString);

impl WebhookUrl {
    pub(crate) fn parse(text: &str) -> Ruled<Self> {
        Ok(WebhookUrl(SecretString::from(webhook_key(text)?)))
    }
}
