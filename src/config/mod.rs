//! Configuration: built-in defaults < config.yaml < `WECOM_CALLBACK_*` environment, then validation.
//! Every problem is reported at once, each naming its field and, for an environment value, its
//! variable.
//!
//! This file only declares the parts and re-exports what the rest of the crate uses. Each part
//! imports only the ones before it, never this file: `types` (the shapes), `rules` (text to
//! value, and why not), `keys` (what a key is, and every key once: check-config's output and the
//! reload report derive from it), `read` (the reader over the merged sources), `agent` (the agent
//! section's keys), `build` (keys into a [`Config`]), `load` (the sources).
//!
//! Configuration sits at the top of the crate: it reads types from lower modules (agent, app,
//! bots, crypto, allowlist, api_token, logging, ratelimit, retry, store) and never from http, worker,
//! reload or the crate root, and nothing below it imports it. Must never: print or `Debug` a
//! secret (corp_secret, token, encoding_aes_key, robot keys, API tokens, agent keys), or invent
//! rules WeCom does not have (legacy `wx` corp ids and short tokens are valid).

mod agent;
mod build;
#[rustfmt::skip] // a table, laid out by hand
mod keys;
mod load;
mod read;
mod rules;
mod types;

pub use self::keys::{keys, Reload, DEFAULT_API_BASE_URL, ENV_PREFIX};
pub use self::types::{Config, ConfigErrors, Loaded, MediaConfig};
pub use crate::agent::{
    AgentConfig, AgentKind, CommandAgentConfig, HermesConfig, HttpAgentConfig, OpenAiConfig,
};
pub use crate::allowlist::Allowlist;
pub use crate::api_token::ApiToken;
pub use crate::app::AppConfig;
pub use crate::store::{PostgresUrl, StoreKind};
