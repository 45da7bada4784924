//! The configured WeCom apps at run time: crypto parameters and token cache per app, and how a
//! callback finds its app.
//!
//! Must never: hold or expose secrets beyond what `AppConfig` and `MsgCrypt` already guard.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::agent::AgentConfig;
use crate::crypto::{CryptoError, MsgCrypt};
use crate::live::Live;
use crate::wecom::client::AppAccess;
use crate::wecom::token::SharedTokens;
use crate::wecom::token::TokenCache;

/// One WeCom self-built application (自建应用).
#[derive(Clone)]
pub struct AppConfig {
    pub name: String,
    pub corp_id: String,
    pub corp_secret: SecretString,
    pub agent_id: u64,
    pub token: SecretString,
    pub encoding_aes_key: SecretString,
    /// While the console switches to a new token or key: callbacks signed with the previous set
    /// (each left out means unchanged) are accepted too.
    pub previous_token: Option<SecretString>,
    pub previous_encoding_aes_key: Option<SecretString>,
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
            .field(
                "previous_token",
                &self.previous_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "previous_encoding_aes_key",
                &self
                    .previous_encoding_aes_key
                    .as_ref()
                    .map(|_| "[redacted]"),
            )
            .field("agent", &self.agent.as_ref().map(AgentConfig::kind_name))
            .finish()
    }
}

impl AppConfig {
    /// Whether `other` names the same app with the same credentials and keys (its agent may differ).
    pub fn same_keys(&self, other: &AppConfig) -> bool {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        (
            &self.corp_id,
            self.agent_id,
            self.corp_secret(),
            self.token(),
            self.encoding_aes_key(),
        ) == (
            &other.corp_id,
            other.agent_id,
            other.corp_secret(),
            other.token(),
            other.encoding_aes_key(),
        ) && secret(&self.previous_token) == secret(&other.previous_token)
            && secret(&self.previous_encoding_aes_key) == secret(&other.previous_encoding_aes_key)
    }

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

/// One self-built app, ready to verify callbacks and send messages.
#[derive(Debug)]
pub struct App {
    pub config: AppConfig,
    pub crypt: MsgCrypt,
    /// The previous token and key, during a rotation.
    pub previous: Option<MsgCrypt>,
    /// Which sets callbacks verified with so far during a rotation: [current, previous].
    verified: [std::sync::atomic::AtomicBool; 2],
    pub tokens: TokenCache,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

impl App {
    /// `shared`: where replicas share access tokens, if there are several.
    pub fn new(
        config: AppConfig,
        shared: Option<Arc<dyn SharedTokens>>,
    ) -> Result<Self, CryptoError> {
        let crypt = MsgCrypt::new(config.token(), config.encoding_aes_key(), &config.corp_id)?;
        let previous = match (&config.previous_token, &config.previous_encoding_aes_key) {
            (None, None) => None,
            (token, key) => Some(MsgCrypt::new(
                token.as_ref().map_or(config.token(), |t| t.expose_secret()),
                key.as_ref()
                    .map_or(config.encoding_aes_key(), |k| k.expose_secret()),
                &config.corp_id,
            )?),
        };
        // The corp and AgentId name the app the same way on every replica.
        let key = format!("{}:{}", config.corp_id, config.agent_id);
        let tokens = shared.map_or_else(TokenCache::default, |s| TokenCache::shared(s, key));
        Ok(App {
            config,
            crypt,
            previous,
            verified: Default::default(),
            tokens,
        })
    }
}

impl AppAccess for App {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn corp_id(&self) -> &str {
        &self.config.corp_id
    }
    fn corp_secret(&self) -> &str {
        self.config.corp_secret()
    }
    fn agent_id(&self) -> u64 {
        self.config.agent_id
    }
    fn tokens(&self) -> &TokenCache {
        &self.tokens
    }
}

impl App {
    /// A callback verified with the current set or (`previous`) the previous one. During a
    /// rotation, the first of each is logged, so the operator sees when the console switched and
    /// the previous set can go; the rest at debug.
    pub fn verified_with(&self, previous: bool) {
        if self.previous.is_none() {
            return;
        }
        let set = if previous { "previous" } else { "current" };
        crate::metrics::count(
            crate::metrics::KEY_SET,
            &[("app", &self.config.name), ("set", set)],
        );
        let first = !self.verified[usize::from(previous)].swap(true, Ordering::Relaxed);
        let (set, advice) = match previous {
            true => ("previous", "WeCom still uses it; keep previous_* for now"),
            false => (
                "new",
                "once WeCom's console has saved the new values, remove previous_*",
            ),
        };
        if first {
            tracing::info!(app = %self.config.name, key_set = set, "a callback verified with the {set} token/key: {advice}");
        } else {
            tracing::debug!(app = %self.config.name, key_set = set, "callback verified with the {set} token/key");
        }
    }
}

/// All apps served on this port; replaced as a whole by a reload (an app whose settings did not
/// change keeps its token cache).
#[derive(Debug, Clone)]
pub struct Apps(Live<Vec<Arc<App>>>);

impl Apps {
    pub fn new(
        configs: &[AppConfig],
        shared: Option<Arc<dyn SharedTokens>>,
    ) -> Result<Self, CryptoError> {
        let apps = configs
            .iter()
            .map(|c| App::new(c.clone(), shared.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Apps(Live::new(apps)))
    }

    /// Serve `configs` from now on. An app configured exactly as before is kept as it is (its
    /// access token stays cached); the others are new.
    pub fn reload(
        &self,
        configs: &[AppConfig],
        shared: Option<Arc<dyn SharedTokens>>,
    ) -> Result<(), CryptoError> {
        let old = self.0.get();
        let mut apps = Vec::with_capacity(configs.len());
        for config in configs {
            let same = old.iter().find(|a| a.config.same_keys(config));
            apps.push(match same {
                Some(app) if app.config.name == config.name => app.clone(),
                _ => Arc::new(App::new(config.clone(), shared.clone())?),
            });
        }
        self.0.set(apps);
        Ok(())
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<App>> {
        self.0.get().iter().find(|a| a.config.name == name).cloned()
    }

    /// Apps to try for a callback, best guess first: those whose corp id and agent id match the
    /// envelope, then the rest (an envelope may lack AgentID; the signature then decides).
    pub fn candidates(&self, corp_id: Option<&str>, agent_id: Option<&str>) -> Vec<Arc<App>> {
        let agent_id = agent_id.and_then(|id| id.trim().parse::<u64>().ok());
        let score = |a: &App| {
            let corp = corp_id.is_some_and(|c| c == a.config.corp_id);
            let agent = agent_id == Some(a.config.agent_id);
            u8::from(corp) * 2 + u8::from(agent)
        };
        let mut list: Vec<Arc<App>> = self.0.get().to_vec();
        // Stable: among equals, the configured order.
        list.sort_by_key(|a| std::cmp::Reverse(score(a)));
        list
    }

    /// The apps as they are now.
    pub fn iter(&self) -> std::vec::IntoIter<Arc<App>> {
        self.0.get().to_vec().into_iter()
    }
}
