//! From the merged sources to a [`Config`]: each key of `keys.rs` read into its field, and the
//! rules that span keys (apps and their duplicates, the allowlist's fallbacks, tokens' two forms).
//!
//! Must never: stop at the first problem; a field that cannot be read is None and every problem is
//! recorded, so the configuration is built only when there are none.

use figment::value::Value;
use secrecy::SecretString;

use super::agent;
use super::keys::*;
use super::read::{At, Reader};
use super::rules::Invalid;
use super::types::{Config, MediaConfig};
use crate::agent::AgentConfig;
use crate::aibot::settings::{AiBotConfig, AiBotSettings, Chats, Mode};
use crate::allowlist::Allowlist;
use crate::api_token::ApiToken;
use crate::app::AppConfig;
use crate::bots::Bot;
use crate::retry::RetryPolicy;

/// The keys that make the single app of the top level (any of them means there is one).
const SINGLE_APP: [&dyn About<AppConfig>; 5] =
    [&CORP_ID, &CORP_SECRET, &AGENT_ID, &TOKEN, &ENCODING_AES_KEY];

/// The configuration of `root`, or None when a problem was recorded. Every key is read before
/// any `?`, so that every problem is.
pub(crate) fn config(r: &mut Reader<'_>, root: &At<'_>) -> Option<Config> {
    // The nested layout's root (`platforms:`) is read through its `extra:` instead.
    r.unknown(
        root,
        &[
            names(KEYS),
            names(APP_KEYS),
            names(SINGLE_AIBOT_KEYS),
            vec!["platforms"],
        ]
        .concat(),
    );
    let agent = agent::global(r, root);
    let apps = apps(r, root, &agent);
    let allowlist = allowlist(r, root);
    let aibots = aibots(r, root, &agent, &allowlist);
    let aibot = aibot_settings(r, root);
    if !apps.is_empty() && !allowlist.allow_all && allowlist.users.is_empty() {
        r.warn(
            ALLOWED_USERS.name,
            "is empty and allow_all_users is false: nobody may talk to the agent (their messages are acknowledged and dropped); list UserIDs, or * for everyone",
        );
    }
    let bots = bots(r, root);
    let mut api_tokens = api_tokens(r, root);
    let plain = r.list(root, &API_TOKENS_PLAIN);
    api_tokens.extend(plain.into_iter().map(ApiToken::from));
    let (host, port, path) = (r.get(root, &HOST), r.get(root, &PORT), r.get(root, &PATH));
    let (metrics_listen, log_format) = (r.get(root, &METRICS_LISTEN), r.get(root, &LOG_FORMAT));
    let api_base_url = r.get(root, &API_BASE_URL);
    let (workers, queue_capacity) = (r.get(root, &WORKERS), r.get(root, &QUEUE_CAPACITY));
    let max_body_bytes = r.get(root, &MAX_BODY_BYTES);
    let shutdown_grace_secs = r.get(root, &SHUTDOWN_GRACE_SECS);
    let replay_window = r.get(root, &REPLAY_WINDOW);
    let http_timeout_secs = r.get(root, &HTTP_TIMEOUT_SECS);
    let (store, data_dir) = (r.get(root, &STORE), r.get(root, &DATA_DIR));
    let retention_days = r.get(root, &RETENTION_DAYS);
    let (max_store_mb, lease_secs) = (r.get(root, &MAX_STORE_MB), r.get(root, &LEASE_SECS));
    let min_free_mb = r.get(root, &MIN_FREE_MB);
    let (member_limits, bot_limits) = (r.list(root, &MEMBER_LIMITS), r.list(root, &BOT_LIMITS));
    let max_attempts = r.get(root, &RETRY_ATTEMPTS);
    let (base, max) = (r.get(root, &RETRY_BASE_MS), r.get(root, &RETRY_MAX_MS));
    let agent_dirs = r.list(root, &MEDIA_AGENT_DIRS);
    let max_bytes = r.get(root, &MEDIA_MAX_BYTES);
    let public_url = r.get(root, &MEDIA_PUBLIC_URL).map(|u| u.base());
    let inline_text_bytes = r.get(root, &MEDIA_INLINE_TEXT_BYTES);
    let url_expires = r.get(root, &MEDIA_URL_EXPIRES);
    Some(Config {
        host: host?,
        port: port?,
        metrics_listen: metrics_listen?,
        log_format: log_format?,
        path: path?,
        apps,
        allowlist,
        api_base_url: api_base_url?.base(),
        workers: workers?,
        queue_capacity: queue_capacity?,
        max_body_bytes: max_body_bytes?,
        shutdown_grace_secs: shutdown_grace_secs?,
        replay_window: replay_window?,
        http_timeout_secs: http_timeout_secs?,
        store: store?,
        data_dir: data_dir?,
        retention_days: retention_days?,
        max_store_mb: max_store_mb?,
        min_free_mb: min_free_mb?,
        lease_secs: lease_secs?,
        agent,
        bots,
        api_tokens,
        member_limits,
        bot_limits,
        retry: RetryPolicy {
            max_attempts: max_attempts?,
            base: base?,
            max: max?.max(base?),
        },
        media: MediaConfig {
            agent_dirs,
            max_bytes: max_bytes?,
            public_url,
            inline_text_bytes: inline_text_bytes?,
            url_expires: url_expires?,
        },
        aibots,
        aibot: aibot?,
    })
}

/// `aibot:`, the settings every AI bot shares.
fn aibot_settings(r: &mut Reader<'_>, root: &At<'_>) -> Option<AiBotSettings> {
    let (ws_url, placeholder) = (r.get(root, &AIBOT_WS_URL), r.get(root, &AIBOT_PLACEHOLDER));
    let (update, stream) = (
        r.get(root, &AIBOT_UPDATE_MS),
        r.get(root, &AIBOT_STREAM_SECS),
    );
    let placeholder = placeholder?;
    Some(AiBotSettings {
        ws_url: ws_url?,
        placeholder: if placeholder.eq_ignore_ascii_case("off") {
            String::new()
        } else {
            placeholder
        },
        update_every: update?,
        stream_for: stream?,
    })
}

/// The `aibots:` list, or the single bot of the top-level `aibot_*` keys, or none.
fn aibots(
    r: &mut Reader<'_>,
    root: &At<'_>,
    global: &AgentConfig,
    allowlist: &Allowlist,
) -> Vec<AiBotConfig> {
    let single = SINGLE_AIBOT_KEYS
        .iter()
        .any(|k| root.value(k.name()).is_some());
    // Each with its index in the list, to name it in errors.
    let mut bots: Vec<(usize, AiBotConfig)> = Vec::new();
    match root.value(AIBOTS.name) {
        None if single => {
            let id = r.get(root, &SINGLE_AIBOT_ID);
            let secret = r.get(root, &SINGLE_AIBOT_SECRET);
            let token = r.get(root, &SINGLE_AIBOT_TOKEN);
            let key = r.get(root, &SINGLE_AIBOT_ENCODING_AES_KEY).map(|k| k.0);
            let names = [
                SINGLE_AIBOT_SECRET.name,
                SINGLE_AIBOT_TOKEN.name,
                SINGLE_AIBOT_ENCODING_AES_KEY.name,
            ];
            let mode = aibot_mode(r, "", names, (secret, token, key));
            if let (Some(bot_id), Some(mode)) = (id, mode) {
                bots.push((
                    0,
                    AiBotConfig {
                        name: "aibot".to_owned(),
                        bot_id,
                        mode,
                        allowlist: allowlist.clone(),
                        chats: Chats::default(),
                        group_session: AIBOT_GROUP_SESSION
                            .default_value()
                            .unwrap_or(crate::aibot::settings::GroupSession::Member),
                        welcome: None,
                        agent: None,
                    },
                ));
            }
        }
        None => {}
        Some(_) => {
            if single {
                r.warn(
                    AIBOTS.name,
                    "is set, so the single-bot keys (aibot_id, aibot_secret...) are ignored",
                );
            }
            for (i, entry) in r
                .entries(root, &AIBOTS, &names(AIBOT_KEYS))
                .iter()
                .enumerate()
            {
                bots.extend(aibot(r, entry, global, allowlist).map(|b| (i, b)));
            }
        }
    }
    for (k, (i, bot)) in bots.iter().enumerate() {
        for (j, earlier) in &bots[..k] {
            if bot.name == earlier.name {
                let taken = Invalid::Taken(bot.name.clone(), format!("aibots[{j}]"));
                r.err(&format!("aibots[{i}].name"), taken);
            }
            if bot.bot_id == earlier.bot_id {
                let taken = Invalid::Taken(bot.bot_id.clone(), format!("aibots[{j}]"));
                r.err(&format!("aibots[{i}].bot_id"), taken);
            }
        }
    }
    bots.into_iter().map(|(_, bot)| bot).collect()
}

/// One `aibots:` entry.
fn aibot(
    r: &mut Reader<'_>,
    at: &At<'_>,
    global: &AgentConfig,
    gateway_wide: &Allowlist,
) -> Option<AiBotConfig> {
    let (name, bot_id) = (r.get(at, &AIBOT_NAME), r.get(at, &AIBOT_BOT_ID));
    let (secret, token) = (r.get(at, &AIBOT_SECRET), r.get(at, &AIBOT_TOKEN));
    let key = r.get(at, &AIBOT_ENCODING_AES_KEY).map(|k| k.0);
    let names = [
        AIBOT_SECRET.name,
        AIBOT_TOKEN.name,
        AIBOT_ENCODING_AES_KEY.name,
    ];
    let mode = aibot_mode(r, &at.prefix, names, (secret, token, key));
    let mut allowlist = match at.given(&AIBOT_ALLOWED_USERS) {
        true => Allowlist {
            allow_all: false,
            users: r.list(at, &AIBOT_ALLOWED_USERS),
        },
        false => gateway_wide.clone(),
    };
    if allowlist.users.iter().any(|u| u == "*") {
        allowlist.allow_all = true;
        allowlist.users.retain(|u| u != "*");
    }
    let mut chats = Chats {
        all: false,
        ids: r.list(at, &AIBOT_ALLOWED_CHATS),
    };
    if chats.ids.iter().any(|c| c == "*") {
        chats.all = true;
        chats.ids.retain(|c| c != "*");
    }
    let group_session = r.get(at, &AIBOT_GROUP_SESSION);
    let welcome = r.get(at, &AIBOT_WELCOME);
    let agent = agent::read(r, at, &AIBOT_AGENT, Some(global));
    Some(AiBotConfig {
        name: name?,
        bot_id: bot_id?,
        mode: mode?,
        allowlist,
        chats,
        group_session: group_session?,
        welcome,
        agent,
    })
}

/// The way in: the Secret (long connection), or the token and key (URL callback), not both.
fn aibot_mode(
    r: &mut Reader<'_>,
    prefix: &str,
    [secret_key, token_key, aes_key]: [&str; 3],
    given: (
        Option<SecretString>,
        Option<SecretString>,
        Option<SecretString>,
    ),
) -> Option<Mode> {
    match given {
        (Some(secret), None, None) => Some(Mode::LongConnection { secret }),
        (None, Some(token), Some(encoding_aes_key)) => Some(Mode::Callback {
            token,
            encoding_aes_key,
        }),
        (Some(_), _, _) => {
            let why = format!("is set with {token_key}/{aes_key}: give the Secret for the long connection, or the token and key for URL mode, not both");
            r.err(&format!("{prefix}{secret_key}"), why);
            None
        }
        (None, Some(_), None) => {
            r.err(
                &format!("{prefix}{aes_key}"),
                format!("is required with {token_key} (URL mode)"),
            );
            None
        }
        (None, None, Some(_)) => {
            r.err(
                &format!("{prefix}{token_key}"),
                format!("is required with {aes_key} (URL mode)"),
            );
            None
        }
        (None, None, None) => {
            let why = format!("is required: the bot's Secret (long connection), or {token_key} and {aes_key} for URL mode");
            r.err(&format!("{prefix}{secret_key}"), why);
            None
        }
    }
}

/// Who may talk to the agent. With neither key set, Hermes's gateway-wide variables
/// (`GATEWAY_ALLOWED_USERS`, `GATEWAY_ALLOW_ALL_USERS`) apply, together or not at all.
fn allowlist(r: &mut Reader<'_>, root: &At<'_>) -> Allowlist {
    let own = root.given(&ALLOWED_USERS) || root.given(&ALLOW_ALL_USERS);
    let (users, all) = match own {
        true => (
            ALLOWED_USERS.without_fallback(),
            ALLOW_ALL_USERS.without_fallback(),
        ),
        false => (ALLOWED_USERS, ALLOW_ALL_USERS),
    };
    let mut list = Allowlist {
        allow_all: r.get(root, &all).unwrap_or_default(),
        users: r.list(root, &users),
    };
    if list.users.iter().any(|u| u == "*") {
        list.allow_all = true;
        list.users.retain(|u| u != "*");
    }
    list
}

/// The `apps:` list, or else the single app of the top-level keys; no app at all is an error,
/// unless group robots or the push API are configured (they work without one).
fn apps(r: &mut Reader<'_>, root: &At<'_>, global: &AgentConfig) -> Vec<AppConfig> {
    let given = |name: &str| root.value(name.split('.').next().unwrap_or(name)).is_some();
    let single = SINGLE_APP.iter().any(|k| given(k.name()));
    let robots_only = [BOTS.name, API_TOKENS.name, API_TOKENS_PLAIN.name].map(given);
    let aibots = given(AIBOTS.name) || SINGLE_AIBOT_KEYS.iter().any(|k| given(k.name()));
    let mut apps = Vec::new();
    match root.value(APPS.name) {
        None if single => {
            let name = r.get(root, &APP_NAME.or("default"));
            apps.extend(app(r, root, name, None));
        }
        None if aibots => {}
        None if robots_only.contains(&true) => r.warn(
            APPS.name,
            "no WeCom app configured: running for group robots and the push API only (callbacks are refused)",
        ),
        None => {
            let mut vars: Vec<String> = SINGLE_APP.iter().map(|k| env_var(k.name())).collect();
            let last = vars.pop().unwrap_or_default();
            let set = format!("{} and {last}", vars.join(", "));
            r.err(APPS.name, Invalid::NoApp(set));
        }
        Some(Value::Array(_, list)) if list.is_empty() => r.err(APPS.name, Invalid::NoApps),
        Some(_) => {
            if single {
                let keys: Vec<&str> = SINGLE_APP.iter().map(|k| k.name()).collect();
                let keys = keys.join(", ");
                let reason = format!("is set, so the single-app keys ({keys}) are ignored");
                r.warn(APPS.name, reason);
            }
            let entries = r.entries(root, &APPS, &names(APP_KEYS));
            for entry in entries {
                let name = r.get(&entry, &APP_NAME);
                let agent = agent::read(r, &entry, &APP_AGENT, Some(global));
                apps.extend(app(r, &entry, name, agent));
            }
        }
    }
    for (i, app) in apps.iter().enumerate() {
        for (j, earlier) in apps[..i].iter().enumerate() {
            let other = format!("apps[{j}]");
            if app.name == earlier.name {
                let taken = Invalid::Taken(app.name.clone(), other.clone());
                r.err(&format!("apps[{i}].name"), taken);
            }
            if (&app.corp_id, app.agent_id) == (&earlier.corp_id, earlier.agent_id) {
                let (corp, agent) = (app.corp_id.clone(), app.agent_id);
                let same = Invalid::SameApp { corp, agent, other };
                r.err(&format!("apps[{i}].agent_id"), same);
            }
        }
    }
    apps
}

/// One app from the [`APP_KEYS`] of `at` (an `apps:` entry, or the top level).
fn app(
    r: &mut Reader<'_>,
    at: &At<'_>,
    name: Option<String>,
    agent: Option<AgentConfig>,
) -> Option<AppConfig> {
    let (corp_id, corp_secret) = (r.get(at, &CORP_ID), r.get(at, &CORP_SECRET));
    let (agent_id, token) = (r.get(at, &AGENT_ID), r.get(at, &TOKEN));
    let key = r.get(at, &ENCODING_AES_KEY);
    let previous_token = r.get(at, &PREVIOUS_TOKEN);
    let previous_key = r.get(at, &PREVIOUS_ENCODING_AES_KEY).map(|k| k.0);
    let which = match (&previous_token, &previous_key) {
        (Some(_), Some(_)) => Some("previous_token and previous_encoding_aes_key"),
        (Some(_), None) => Some(PREVIOUS_TOKEN.name),
        (None, Some(_)) => Some(PREVIOUS_ENCODING_AES_KEY.name),
        (None, None) => None,
    };
    if let Some(which) = which {
        let field = format!("{}{}", at.prefix, which.split(' ').next().unwrap_or(which));
        r.warn(&field, format!("callbacks signed with the previous set are accepted too, for a key rotation: remove {which} once the admin console uses the new values"));
    }
    Some(AppConfig {
        name: name?,
        corp_id: corp_id?.0,
        corp_secret: corp_secret?,
        agent_id: agent_id?,
        token: token?,
        encoding_aes_key: key?.0,
        previous_token,
        previous_encoding_aes_key: previous_key,
        agent,
    })
}

fn bots(r: &mut Reader<'_>, root: &At<'_>) -> Vec<Bot> {
    let mut bots: Vec<Bot> = Vec::new();
    for entry in r.entries(root, &BOTS, &names(BOT_KEYS)) {
        if entry.given(&BOT_SECRET) {
            let reason = "WeCom group robots have no signing secret; the field is ignored";
            r.warn(&format!("{}{}", entry.prefix, BOT_SECRET.name), reason);
        }
        let (name, key) = (r.get(&entry, &BOT_NAME), r.get(&entry, &WEBHOOK_URL));
        if let (Some(name), Some(key)) = (name, key) {
            if let Some(j) = bots.iter().position(|b| b.name == name) {
                let taken = Invalid::Taken(name.clone(), format!("bots[{j}]"));
                r.err(&format!("{}{}", entry.prefix, BOT_NAME.name), taken);
            }
            bots.push(Bot::new(name, key.0));
        }
    }
    bots
}

/// `api.tokens`: comma-separated text (the environment's form), or a list whose items are
/// tokens or `{token, scopes: [broadcast]}`.
fn api_tokens(r: &mut Reader<'_>, root: &At<'_>) -> Vec<ApiToken> {
    let Some(Value::Array(_, items)) = root.value(API_TOKENS.name) else {
        return r
            .list(root, &API_TOKENS)
            .into_iter()
            .map(ApiToken::from)
            .collect();
    };
    let mut tokens = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("{}[{i}]", API_TOKENS.name);
        let Value::Dict(_, dict) = item else {
            tokens.extend(r.read(&field, Some(item), &TOKEN_VALUE).map(ApiToken::from));
            continue;
        };
        let entry = At {
            dict,
            prefix: format!("{field}."),
        };
        r.unknown(&entry, &names(TOKEN_KEYS));
        let token: Option<SecretString> = r.get(&entry, &TOKEN_VALUE);
        let scopes = r.list(&entry, &TOKEN_SCOPES);
        tokens.extend(token.map(|token| ApiToken {
            token,
            broadcast: !scopes.is_empty(),
        }));
    }
    tokens
}
