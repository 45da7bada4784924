//! The `agent:` section (and an app's `agent:` override): its keys, defined once, and what makes
//! it valid. An app's override takes its chat settings (ack_*, failure_message, events) from the
//! `agent:` section unless it sets them.
//!
//! Must never: print a header value or an API key (they are secrets).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::keys::{names, About, Key, AGENT};
use super::read::{At, Reader};
use super::rules::{self, num, secs, HttpUrl, Invalid};
use crate::agent::hermes::{self, HermesConfig};
use crate::agent::{
    AgentConfig, AgentKind, CommandAgentConfig, Events, HttpAgentConfig, OpenAiConfig,
};

/// The environment variable the openai agent reads its key from when `api_key_env` is not set.
const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// How long http, command and openai agents may take when `timeout_secs` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

type A<T> = Key<T, AgentConfig>;
type Text = String;

const KIND: A<Text> = Key::new("kind", |t| Ok(t.to_ascii_lowercase())).or("echo");
/// echo only: wait this long before answering (simulates a slow agent).
const DELAY_MS: A<u64> = Key::new("delay_ms", |t| num(t, 0, 86_400_000))
    .number()
    .or("0");
const URL: A<HttpUrl> = Key::new("url", HttpUrl::parse).required();
/// 120 s; hermes 1800 s (its turns take minutes).
const TIMEOUT_SECS: A<Duration> = Key::new("timeout_secs", |t| secs(t, 1, 86_400)).number();
const RETRIES: A<u32> = Key::new("retries", |t| num(t, 0, 10)).number().or("2");
/// Values are secrets (an `Authorization` header).
const HEADERS: A<()> = Key::new("headers", |_| Ok(()));
const PROGRAM: A<Text> = Key::new("program", rules::text).required();
/// A list is kept as given (arguments may hold commas); text is split at whitespace.
const ARGS: A<Text> = Key::new("args", rules::text);
/// The command's variables; values may be secrets (an API key for the script).
const ENV: A<()> = Key::new("env", |_| Ok(()));
const WORKING_DIR: A<PathBuf> = Key::new("working_dir", |t| Ok(PathBuf::from(t)));
/// Required for openai; hermes has its own default.
const BASE_URL: A<HttpUrl> = Key::new("base_url", HttpUrl::parse);
const MODEL: A<Text> = Key::new("model", rules::text);
const API_KEY: A<SecretString> = Key::new("api_key", rules::secret);
/// The variable holding the key, read from the environment given to `load`.
const API_KEY_ENV: A<Text> = Key::new("api_key_env", rules::text);
const SYSTEM_PROMPT: A<Text> = Key::new("system_prompt", rules::text);
const TEMPERATURE: A<f64> = Key::new("temperature", |t| match t.parse() {
    Ok(v) if (0.0..=2.0).contains(&v) => Ok(v),
    _ => Err(Invalid::Must("be a number from 0 to 2", t.to_owned())),
})
.number();
const MAX_TOKENS: A<u32> = Key::new("max_tokens", |t| num(t, 1, 1_000_000)).number();
const HISTORY_TURNS: A<usize> = Key::new("history_turns", |t| num(t, 0, 1000))
    .number()
    .or("10");
const HISTORY_CHARS: A<usize> = Key::new("history_chars", |t| num(t, 0, 10_000_000))
    .number()
    .or("16000");
const VISION: A<bool> = Key::new("vision", rules::boolean).or("false");
/// Seconds, fractional; 0 turns the receipt off. Hermes: 10 s unless set.
const ACK_AFTER: A<Option<Duration>> = Key::new("ack_after", |t| match t.parse::<f64>() {
    Ok(0.0) => Ok(None),
    Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Some(Duration::from_secs_f64(v))),
    _ => Err(Invalid::Must(
        "be seconds from 0 (off) to 3600",
        t.to_owned(),
    )),
})
.number();
const ACK_MESSAGE: A<Text> = Key::new("ack_message", rules::text);
const ACK_RECALL: A<bool> = Key::new("ack_recall", rules::boolean);
const FAILURE_MESSAGE: A<Text> = Key::new("failure_message", rules::text);
/// `all`, `none`, or event names.
const EVENTS: A<Text> = Key::new("events", rules::text);

#[rustfmt::skip]
const AGENT_KEYS: &[&dyn About<AgentConfig>] = &[
    &KIND, &DELAY_MS, &URL, &TIMEOUT_SECS, &RETRIES, &HEADERS, &PROGRAM, &ARGS, &ENV,
    &WORKING_DIR, &BASE_URL, &MODEL, &API_KEY, &API_KEY_ENV, &SYSTEM_PROMPT, &TEMPERATURE,
    &MAX_TOKENS, &HISTORY_TURNS, &HISTORY_CHARS, &VISION, &ACK_AFTER, &ACK_MESSAGE, &ACK_RECALL,
    &FAILURE_MESSAGE, &EVENTS,
];

/// The agent section of `at` (the top level, or an app), read over `base`: the global agent an
/// app's override inherits its chat settings from. Absent: `base` (or the default agent).
pub(crate) fn read<T, O>(
    r: &mut Reader<'_>,
    at: &At<'_>,
    key: &Key<T, O>,
    base: Option<&AgentConfig>,
) -> Option<AgentConfig> {
    let inherited = base.cloned().unwrap_or_default();
    let Some(s) = r.section(at, key, "a mapping such as {kind: echo}") else {
        return at.given(key).then_some(inherited);
    };
    r.unknown(&s, &names(AGENT_KEYS));
    // Read by the kinds that use it, so an echo agent's stray timeout_secs stays harmless.
    let timeout = |r: &mut Reader<'_>, default| r.get(&s, &TIMEOUT_SECS).unwrap_or(default);
    let kind = match r.get(&s, &KIND).as_deref().unwrap_or("echo") {
        "echo" => AgentKind::Echo,
        "http" => AgentKind::Http(HttpAgentConfig {
            url: r.get(&s, &URL).map(|u| u.0).unwrap_or_default(),
            timeout: timeout(r, DEFAULT_TIMEOUT),
            retries: r.get(&s, &RETRIES).unwrap_or_default(),
            headers: (r.pairs(&s, &HEADERS).into_iter())
                .map(|(name, value)| (name, SecretString::from(value)))
                .collect(),
        }),
        "command" => AgentKind::Command(CommandAgentConfig {
            program: r.get(&s, &PROGRAM).unwrap_or_default(),
            args: r.list_by(&s, &ARGS, |t| {
                t.split_whitespace().map(Into::into).collect()
            }),
            timeout: timeout(r, DEFAULT_TIMEOUT),
            env: r.pairs(&s, &ENV),
            working_dir: r.get(&s, &WORKING_DIR),
        }),
        "hermes" => AgentKind::Hermes(HermesConfig {
            base_url: (r.get(&s, &BASE_URL))
                .map_or_else(|| hermes::DEFAULT_BASE_URL.into(), HttpUrl::base),
            model: r.get(&s, &MODEL).unwrap_or_else(|| "hermes-agent".into()),
            api_key: api_key(r, &s, hermes::DEFAULT_API_KEY_ENV),
            timeout: timeout(r, hermes::DEFAULT_TIMEOUT),
        }),
        "openai" => AgentKind::Openai(OpenAiConfig {
            base_url: (r.get(&s, &BASE_URL.required()))
                .map(HttpUrl::base)
                .unwrap_or_default(),
            model: r.get(&s, &MODEL.required()).unwrap_or_default(),
            api_key: api_key(r, &s, DEFAULT_API_KEY_ENV),
            system_prompt: r.get(&s, &SYSTEM_PROMPT),
            temperature: r.get(&s, &TEMPERATURE),
            max_tokens: r.get(&s, &MAX_TOKENS),
            timeout: timeout(r, DEFAULT_TIMEOUT),
            history_turns: r.get(&s, &HISTORY_TURNS).unwrap_or_default(),
            history_chars: r.get(&s, &HISTORY_CHARS).unwrap_or_default(),
            vision: r.get(&s, &VISION).unwrap_or_default(),
        }),
        other => {
            let must = "be echo, http, command, openai or hermes";
            r.err(
                &format!("{}kind", s.prefix),
                Invalid::Must(must, other.to_owned()),
            );
            AgentKind::Echo
        }
    };
    let ack_default = match (&kind, inherited.ack_after) {
        (AgentKind::Hermes(_), None) => Some(hermes::DEFAULT_ACK_AFTER),
        (_, inherited) => inherited,
    };
    let events = r.list(&s, &EVENTS);
    let events = match events.as_slice() {
        [] if !s.given(&EVENTS) => inherited.events,
        [one] if one.eq_ignore_ascii_case("all") => Events::All,
        [one] if one.eq_ignore_ascii_case("none") => Events::Only(Vec::new()),
        _ => Events::Only(events),
    };
    Some(AgentConfig {
        kind,
        delay_ms: r.get(&s, &DELAY_MS).unwrap_or_default(),
        ack_after: r.get(&s, &ACK_AFTER).unwrap_or(ack_default),
        ack_message: r.get(&s, &ACK_MESSAGE).unwrap_or(inherited.ack_message),
        ack_recall: r.get(&s, &ACK_RECALL).unwrap_or(inherited.ack_recall),
        failure_message: r
            .get(&s, &FAILURE_MESSAGE)
            .unwrap_or(inherited.failure_message),
        events,
    })
}

/// An API key: `api_key` itself, else the variable `api_key_env` names, else `default_env`.
fn api_key(r: &mut Reader<'_>, s: &At<'_>, default_env: &str) -> Option<SecretString> {
    let env = r.env;
    let from_env = |var: &str| env.get(var).filter(|v| !v.is_empty()).cloned();
    if let Some(key) = r.get(s, &API_KEY) {
        return Some(key);
    }
    if let Some(var) = r.get(s, &API_KEY_ENV) {
        let key = from_env(&var);
        let field = format!("{}{}", s.prefix, API_KEY_ENV.name);
        match &key {
            Some(key) => r.placeholder(&field, key),
            None => r.err(&field, Invalid::Unset(var)),
        }
        return key.map(SecretString::from);
    }
    let key = from_env(default_env);
    if let Some(key) = &key {
        r.placeholder(default_env, key);
    }
    key.map(SecretString::from)
}

/// The global `agent:` section of the top level.
pub(crate) fn global(r: &mut Reader<'_>, root: &At<'_>) -> AgentConfig {
    read(r, root, &AGENT, None).unwrap_or_default()
}
