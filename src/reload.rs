//! Reloading the configuration on SIGHUP: what a reload replaces while the gateway runs (apps,
//! robots, the allowlist, agents, API tokens) and the names of the settings it does not apply.
//!
//! Must never: stop or slow work in progress (it keeps the settings it started with), or apply
//! half of a configuration (one that fails validation or setup is refused whole).

use std::sync::Arc;

use crate::agent::Agent;
use crate::app::Apps;
use crate::config::{self, Config};
use crate::dispatch::Dispatcher;
use crate::http;
use crate::store::Store;
use crate::worker::{Agents, Worker};

/// Reads the configuration again, for a reload (the binary passes `Config::load` with the same
/// file and the process environment).
pub type Reloader = Box<dyn Fn() -> Result<config::Config, config::ConfigErrors> + Send + Sync>;

/// Why a configuration that validated could not be applied (the running one is kept).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("app setup failed: {0}")]
    Agent(#[from] crate::agent::SetupError),
    #[error("app setup failed: {0}")]
    Keys(#[from] crate::crypto::CryptoError),
}

/// What a reload replaces while the gateway runs.
pub(crate) struct Reloadable {
    pub(crate) running: Config,
    pub(crate) given: Option<Arc<dyn Agent>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shared: Option<Arc<dyn crate::wecom::token::SharedTokens>>,
    pub(crate) apps: Apps,
    pub(crate) state: http::AppState,
    pub(crate) worker: Worker,
    pub(crate) dispatcher: Arc<Dispatcher>,
}

impl Reloadable {
    /// Apply a new configuration: apps, robots, the allowlist, agents and API tokens are replaced;
    /// work in progress keeps what it started with. Settings of the process itself (address,
    /// store, workers...) are reported as taking effect at the next start.
    fn apply(&mut self, new: Config) -> Result<(), ReloadError> {
        let agents = Agents::build(&new, self.given.clone(), &self.store)?;
        self.apps.reload(&new.apps, self.shared.clone())?;
        self.state.allowlist.set(new.allowlist.clone());
        self.state.api_tokens.set(new.api_tokens.clone());
        let bots = new
            .bots
            .iter()
            .map(|b| (b.name.clone(), b.clone()))
            .collect();
        self.dispatcher.set_bots(bots);
        self.worker.agents.set(agents);
        // The keys defined as taking effect at the next start (config's key list), if changed.
        for key in self.running.not_applied(&new) {
            tracing::warn!(key, "{key} changed: it takes effect at the next start");
        }
        let names: Vec<String> = new.apps.iter().map(|a| a.name.clone()).collect();
        tracing::info!(apps = ?names, bots = new.bots.len(), api_tokens = new.api_tokens.len(), "configuration reloaded");
        self.running = new;
        Ok(())
    }
}

/// On SIGHUP, read the configuration again and apply it; one that fails validation is refused
/// with its errors and the running one is kept.
pub(crate) async fn reload_on_sighup(load: Reloader, mut live: Reloadable) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reloading is off");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reading the configuration again");
            match load() {
                Err(errors) => tracing::error!(
                    "configuration not reloaded, the running one is kept: {}",
                    errors.0.join("; ")
                ),
                Ok(config) => {
                    if let Err(e) = live.apply(config) {
                        tracing::error!("configuration not reloaded, the running one is kept: {e}");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (load, live);
    }
}
