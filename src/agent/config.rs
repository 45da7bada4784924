//! Agent configuration: the `agent:` section (and `apps[i].agent:` overrides) as given, and what
//! makes it valid.
//!
//! Must never: print a header value or API key (they are secrets).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::agent::hermes::{self, HermesConfig};
use crate::agent::{
    AgentConfig, AgentKind, CommandAgentConfig, Events, HttpAgentConfig, OpenAiConfig,
};
use crate::config::{boolean, num, secs, text, Check, Field, HttpUrl, List, Text, Unknown};

/// The environment variable the openai agent reads its key from when `api_key_env` is not set.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// How long http, command and openai agents may take when `timeout_secs` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent section's keys, for suggestions when one is misspelt.
#[rustfmt::skip]
const AGENT_KEYS: &[&str] = &[
    "kind", "delay_ms", "url", "timeout_secs", "retries", "headers", "program", "args", "env",
    "working_dir", "base_url", "model", "api_key", "api_key_env", "system_prompt", "temperature",
    "max_tokens", "history_turns", "history_chars", "vision", "ack_after", "ack_message",
    "ack_recall", "failure_message", "events",
];

/// An agent section as given; [`validate`] reads the keys its kind uses.
#[derive(Deserialize)]
pub(crate) struct AgentSettings {
    kind: Option<Text>,
    delay_ms: Option<Text>,
    url: Option<Text>,
    timeout_secs: Option<Text>,
    retries: Option<Text>,
    headers: Option<Field<BTreeMap<String, Text>>>,
    program: Option<Text>,
    args: Option<List>,
    env: Option<Field<BTreeMap<String, Text>>>,
    working_dir: Option<Text>,
    base_url: Option<Text>,
    model: Option<Text>,
    api_key: Option<Text>,
    api_key_env: Option<Text>,
    system_prompt: Option<Text>,
    temperature: Option<Text>,
    max_tokens: Option<Text>,
    history_turns: Option<Text>,
    history_chars: Option<Text>,
    vision: Option<Text>,
    ack_after: Option<Text>,
    ack_message: Option<Text>,
    ack_recall: Option<Text>,
    failure_message: Option<Text>,
    events: Option<List>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Validate an agent section. `prefix` names it in errors (`agent`, `apps[1].agent`); `base` is the
/// global agent an app's override inherits its chat settings from.
pub(crate) fn validate(
    c: &mut Check<'_>,
    prefix: &str,
    section: Option<Field<AgentSettings>>,
    base: Option<&AgentConfig>,
) -> AgentConfig {
    let inherited = base.cloned().unwrap_or_default();
    let s = match section.map(|s| s.0) {
        None => return inherited,
        Some(Ok(s)) => s,
        Some(Err(kind)) => {
            c.err(
                prefix,
                format!("must be a mapping such as {{kind: echo}}, got {kind}"),
            );
            return inherited;
        }
    };
    c.unknown_near(&format!("{prefix}."), &s.unknown, AGENT_KEYS);
    let f = |key: &str| format!("{prefix}.{key}");
    // Read by the kinds that use it, so an echo agent's stray timeout_secs stays harmless.
    let timeout =
        |c: &mut Check<'_>, v| c.get(&f("timeout_secs"), v, DEFAULT_TIMEOUT, secs(1, 86_400));
    let kind = c.opt(&f("kind"), s.kind, |k| Ok(k.to_ascii_lowercase()));
    let kind = match kind.as_deref().unwrap_or("echo") {
        "echo" => AgentKind::Echo,
        "http" => AgentKind::Http(HttpAgentConfig {
            url: c
                .req(&f("url"), s.url, HttpUrl::parse)
                .map(|u| u.0)
                .unwrap_or_default(),
            timeout: timeout(c, s.timeout_secs),
            retries: c.get(&f("retries"), s.retries, 2, num(0, 10)),
            headers: (pairs(c, &f("headers"), s.headers).into_iter())
                .map(|(name, value)| (name, SecretString::from(value)))
                .collect(),
        }),
        "command" => AgentKind::Command(CommandAgentConfig {
            program: c.req(&f("program"), s.program, text).unwrap_or_default(),
            // A list is kept as given (arguments may hold commas); text is split at whitespace.
            args: c.list(
                &f("args"),
                s.args,
                |t| t.split_whitespace().map(Into::into).collect(),
                text,
            ),
            timeout: timeout(c, s.timeout_secs),
            env: pairs(c, &f("env"), s.env),
            working_dir: c.opt(&f("working_dir"), s.working_dir, |d| Ok(PathBuf::from(d))),
        }),
        "hermes" => AgentKind::Hermes(HermesConfig {
            base_url: (c.opt(&f("base_url"), s.base_url, HttpUrl::parse))
                .map_or_else(|| hermes::DEFAULT_BASE_URL.into(), HttpUrl::base),
            model: (c.opt(&f("model"), s.model, text)).unwrap_or_else(|| "hermes-agent".into()),
            api_key: api_key(c, &f, s.api_key, s.api_key_env, hermes::DEFAULT_API_KEY_ENV),
            timeout: c.get(
                &f("timeout_secs"),
                s.timeout_secs,
                hermes::DEFAULT_TIMEOUT,
                secs(1, 86_400),
            ),
        }),
        "openai" => {
            let api_key = api_key(c, &f, s.api_key, s.api_key_env, DEFAULT_API_KEY_ENV);
            let temperature = |t: &str| match t.parse() {
                Ok(v) if (0.0..=2.0).contains(&v) => Ok(v),
                _ => Err(format!("must be a number from 0 to 2, got {t:?}")),
            };
            AgentKind::Openai(OpenAiConfig {
                base_url: (c.req(&f("base_url"), s.base_url, HttpUrl::parse))
                    .map(HttpUrl::base)
                    .unwrap_or_default(),
                model: c.req(&f("model"), s.model, text).unwrap_or_default(),
                api_key,
                system_prompt: c.opt(&f("system_prompt"), s.system_prompt, text),
                temperature: c.opt(&f("temperature"), s.temperature, temperature),
                max_tokens: c.opt(&f("max_tokens"), s.max_tokens, num(1, 1_000_000)),
                timeout: timeout(c, s.timeout_secs),
                history_turns: c.get(&f("history_turns"), s.history_turns, 10, num(0, 1000)),
                history_chars: c.get(
                    &f("history_chars"),
                    s.history_chars,
                    16_000,
                    num(0, 10_000_000),
                ),
                vision: c.get(&f("vision"), s.vision, false, boolean),
            })
        }
        other => {
            let reason = format!("must be echo, http, command, openai or hermes, got {other:?}");
            c.err(&f("kind"), reason);
            AgentKind::Echo
        }
    };
    // Hermes turns take minutes: a receipt after 10 s unless one is configured.
    let ack_default = match (&kind, inherited.ack_after) {
        (AgentKind::Hermes(_), None) => Some(hermes::DEFAULT_ACK_AFTER),
        (_, inherited) => inherited,
    };
    // Seconds, fractional; 0 turns the receipt off.
    let ack_after = |t: &str| match t.parse::<f64>() {
        Ok(0.0) => Ok(None),
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Some(Duration::from_secs_f64(v))),
        _ => Err(format!("must be seconds from 0 (off) to 3600, got {t:?}")),
    };
    AgentConfig {
        kind,
        delay_ms: c.get(&f("delay_ms"), s.delay_ms, 0, num(0, 86_400_000)),
        ack_after: c.get(&f("ack_after"), s.ack_after, ack_default, ack_after),
        ack_message: c.get(
            &f("ack_message"),
            s.ack_message,
            inherited.ack_message,
            text,
        ),
        ack_recall: c.get(
            &f("ack_recall"),
            s.ack_recall,
            inherited.ack_recall,
            boolean,
        ),
        failure_message: c.get(
            &f("failure_message"),
            s.failure_message,
            inherited.failure_message,
            text,
        ),
        events: events(c, &f("events"), s.events).unwrap_or(inherited.events),
    }
}

/// An API key: `api_key` itself, else the variable `api_key_env` names, else `default_env`.
fn api_key(
    c: &mut Check<'_>,
    f: &dyn Fn(&str) -> String,
    key: Option<Text>,
    key_env: Option<Text>,
    default_env: &str,
) -> Option<SecretString> {
    let env = c.env;
    let from_env = |var: &str| env.get(var).filter(|v| !v.is_empty()).cloned();
    let unset = |var: &str| format!("the environment variable {var} is not set");
    let key = (c.opt(&f("api_key"), key, text))
        .or_else(|| {
            c.opt(&f("api_key_env"), key_env, |v| {
                from_env(v).ok_or_else(|| unset(v))
            })
        })
        .or_else(|| from_env(default_env));
    key.map(SecretString::from)
}

/// `all`, `none`, or event names (a list, or comma-separated text).
fn events(c: &mut Check<'_>, field: &str, v: Option<List>) -> Option<Events> {
    let names = c.names(field, Some(v?), text);
    Some(match names.as_slice() {
        [one] if one.eq_ignore_ascii_case("all") => Events::All,
        [one] if one.eq_ignore_ascii_case("none") => Events::Only(Vec::new()),
        _ => Events::Only(names),
    })
}

/// A mapping of names to text values (headers, environment variables).
fn pairs(
    c: &mut Check<'_>,
    field: &str,
    v: Option<Field<BTreeMap<String, Text>>>,
) -> Vec<(String, String)> {
    let map = c.mapping(field, v).unwrap_or_default();
    // Empty values are kept: an empty variable or header may be meant.
    (map.into_iter())
        .filter_map(|(name, v)| Some((c.text(&format!("{field}.{name}"), v)?, name)))
        .map(|(value, name)| (name, value))
        .collect()
}
