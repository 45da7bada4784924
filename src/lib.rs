//! wecom-gateway: connects WeCom (企业微信) self-built apps to AI agents.
//!
//! `Application::build` assembles the whole service from a [`config::Config`] and binds its port, so
//! the binary and the tests run exactly the same thing.

pub mod agent;
pub mod aibot;
pub mod allowlist;
pub mod api_token;
pub mod app;
pub mod bots;
pub mod config;
pub mod conversation;
pub mod crypto;
pub mod dispatch;
pub mod dotenv;
pub mod http;
pub mod live;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod outbound;
mod prune;
pub mod ratelimit;
pub mod received;
mod reload;
pub mod retry;
pub mod simulate;
pub mod store;
pub mod wecom;
pub mod worker;
mod xml;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::agent::Agent;
use crate::app::Apps;
use crate::config::{Config, StoreKind};
use crate::dispatch::Dispatcher;
use crate::outbound::Outbound;
use crate::received::Received;
use crate::store::{MemoryStore, PostgresStore, Room, SqliteStore, Store};
use crate::wecom::token::SharedTokens;
use crate::wecom::WecomClient;
use crate::worker::{Agents, Worker};

use crate::prune::prune_loop;
pub use crate::reload::Reloader;
use crate::reload::{reload_on_sighup, Reloadable};

/// How long a callback may wait for room in a full store before it is answered 503 (WeCom waits 5 s).
const PUSH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source, *hermes))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        /// The agent is Hermes, whose own wecom_callback listener is then the likely holder.
        hermes: bool,
    },
    #[error("cannot set up the WeCom API client: {0}")]
    Client(#[source] wecom::ApiError),
    #[error("app setup failed: {0}")]
    Keys(#[source] crypto::CryptoError),
    #[error("app setup failed: {0}")]
    Agent(#[source] agent::SetupError),
    #[error("{0}")]
    Store(#[source] store::StoreError),
    #[error("cannot open the PostgreSQL store {url}: {source}")]
    Postgres {
        url: String,
        source: store::StoreError,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What to do about a port that cannot be bound.
fn bind_hint(e: &std::io::Error, hermes: bool) -> &'static str {
    match e.kind() {
        // Hermes starts its own wecom_callback listener on this port whenever the WeCom variables
        // are in its environment (a shared .env), and takes the port back every 30 s.
        std::io::ErrorKind::AddrInUse if hermes => " (another process uses this port; with the hermes agent it is most likely Hermes's own wecom_callback listener, which Hermes starts whenever WECOM_CALLBACK_CORP_ID and WECOM_CALLBACK_CORP_SECRET are in its environment: move the WECOM_CALLBACK_* lines out of Hermes's .env into the gateway's own .env (or --env-file) and restart Hermes; otherwise stop the other process, or choose another port with `port` / WECOM_CALLBACK_PORT)",
        std::io::ErrorKind::AddrInUse => " (another process uses this port: stop it, or choose another with `port` / WECOM_CALLBACK_PORT)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: choose another with `port` / WECOM_CALLBACK_PORT)",
        std::io::ErrorKind::AddrNotAvailable => " (this host has no such address: check `host` / WECOM_CALLBACK_HOST)",
        _ => "",
    }
}

/// Whether any app talks to Hermes (the `agent:` section's kind, or an app's own).
fn uses_hermes(config: &Config) -> bool {
    let hermes = |a: &agent::AgentConfig| matches!(a.kind, agent::AgentKind::Hermes(_));
    hermes(&config.agent)
        || config
            .apps
            .iter()
            .filter_map(|a| a.agent.as_ref())
            .any(hermes)
}

/// Keep an AI bot connected while this process holds its lease (always, without replicas), and
/// take in what it receives. Not for a bot in URL mode, which WeCom reaches over HTTP.
async fn connect_aibot(
    bot: Arc<aibot::Bot>,
    store: Arc<dyn Store>,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    let aibot::settings::Mode::LongConnection { secret } = &bot.config.mode else {
        return;
    };
    let creds = aibot::link::Credentials {
        ws_url: bot.settings.ws_url.clone(),
        bot_id: bot.config.bot_id.clone(),
        secret: secret.clone(),
    };
    let (pushes, received) = tokio::sync::mpsc::channel(256);
    let receiver = tokio::spawn(aibot::receive::run(bot.clone(), store.clone(), received));
    let _receiver = AbortOnDrop(receiver);
    loop {
        if !*held.borrow_and_update() {
            bot.link.standby();
            tracing::info!(aibot = %bot.config.name, "another replica holds the AI bot's connection; this one takes over if it stops");
            if held.wait_for(|h| *h).await.is_err() {
                return;
            }
        }
        aibot::link::run(bot.link.clone(), &creds, pushes.clone(), held.clone()).await;
    }
}

/// A task that ends with its owner.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The assembled service, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    apps: Apps,
    store: Arc<dyn Store>,
    worker: Worker,
    outbound: Arc<Outbound>,
    dispatcher: Arc<Dispatcher>,
    /// Where `/metrics` is served, if on.
    metrics: Option<TcpListener>,
    /// With a PostgreSQL store, the lock on this replica's own data_dir (SQLite's store holds
    /// its own): one process per directory, whichever store.
    data_dir_lock: Option<std::fs::File>,
    /// The agent given to `build_with_agent`, kept across reloads.
    given: Option<Arc<dyn Agent>>,
    shared_tokens: Option<Arc<dyn SharedTokens>>,
    /// Set by `reload_with`: SIGHUP reads the configuration again.
    reloader: Option<Reloader>,
}

impl Application {
    /// Build with the agents the configuration names (the `agent:` section, and each app's own).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        Self::build_inner(config, None).await
    }

    /// Build with one given agent for every app (for embedding, and for tests that need a slow or
    /// scripted agent). The `agent:` section's chat settings (receipt, failure message) still apply.
    pub async fn build_with_agent(
        config: Config,
        agent: Arc<dyn Agent>,
    ) -> Result<Self, StartupError> {
        Self::build_inner(config, Some(agent)).await
    }

    async fn build_inner(
        config: Config,
        given: Option<Arc<dyn Agent>>,
    ) -> Result<Self, StartupError> {
        let client = WecomClient::new(
            &config.api_base_url,
            Duration::from_secs(config.http_timeout_secs),
        )
        .map_err(StartupError::Client)?;
        let mut data_dir_lock = None;
        let (store, shared): (Arc<dyn Store>, Option<Arc<PostgresStore>>) = match &config.store {
            StoreKind::Memory => (
                Arc::new(MemoryStore::new(config.queue_capacity, PUSH_WAIT)),
                None,
            ),
            StoreKind::Sqlite => {
                let room = Room::new(config.max_store_mb, config.min_free_mb, &config.data_dir);
                let store = SqliteStore::open(&config.data_dir, config.queue_capacity, room)
                    .map_err(StartupError::Store)?;
                let recovered = store.recovered();
                tracing::info!(path = %store.path().display(), resumed = recovered.resumed, given_up = recovered.given_up, "message store open");
                if recovered.given_up > 0 {
                    tracing::warn!(given_up = recovered.given_up, "some messages were given up: the gateway stopped while handling each of them {} times", store::sqlite::MAX_ATTEMPTS);
                }
                (store, None)
            }
            StoreKind::Postgres(url) => {
                data_dir_lock = Some(
                    store::sqlite::lock_data_dir(&config.data_dir).map_err(StartupError::Store)?,
                );
                let lease = Duration::from_secs(config.lease_secs);
                let store = PostgresStore::open(url, lease).await.map_err(|source| {
                    StartupError::Postgres {
                        url: url.to_string(),
                        source,
                    }
                })?;
                tracing::info!(store = %url, lease_secs = config.lease_secs, "message store open (PostgreSQL, shared by replicas)");
                (store.clone(), Some(store))
            }
        };
        let shared_tokens = shared.clone().map(|s| s as Arc<dyn SharedTokens>);
        let apps = Apps::new(&config.apps, shared_tokens.clone()).map_err(StartupError::Keys)?;
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr,
                source,
                hermes: uses_hermes(&config),
            })?;
        let local_addr = listener.local_addr().map_err(StartupError::Serve)?;
        // A second gateway on the host must still start: without metrics, said loudly.
        let metrics = match config.metrics_listen {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(e) => {
                    tracing::error!(%addr, "cannot listen for /metrics on {addr}: {e}; metrics are off (set metrics_listen / WECOM_CALLBACK_METRICS_LISTEN to another address, or off)");
                    None
                }
            },
        };
        let mut outbound = Outbound::new(
            client,
            config.retry,
            config.member_limits.clone(),
            config.bot_limits.clone(),
        )
        .with_agent_dirs(config.media.agent_dirs.clone());
        if let Some(shared) = &shared {
            outbound = outbound.with_shared_windows(shared.clone());
        }
        let outbound = Arc::new(outbound);
        let bots = config
            .bots
            .iter()
            .map(|b| (b.name.clone(), b.clone()))
            .collect();
        let dispatcher = Arc::new(Dispatcher::new(
            outbound.clone(),
            store.clone(),
            apps.clone(),
            live::Live::new(bots),
        ));
        let agents = Agents::build(&config, given.clone(), &store).map_err(StartupError::Agent)?;
        let public_url =
            (config.media.public_url.clone()).unwrap_or_else(|| default_public_url(local_addr));
        let received = Arc::new(Received::new(
            &config.data_dir,
            store.clone(),
            config.media.max_bytes,
            public_url,
            config.media.url_expires,
        ));
        let worker = Worker {
            store: store.clone(),
            agents: live::Live::new(agents),
            outbound: outbound.clone(),
            apps: apps.clone(),
            aibots: aibot::Bots::new(&config.aibots, &config.aibot, received.clone()),
            received,
        };
        Ok(Application {
            listener,
            local_addr,
            config,
            apps,
            store,
            worker,
            outbound,
            dispatcher,
            metrics,
            data_dir_lock,
            given,
            shared_tokens,
            reloader: None,
        })
    }

    /// Reload on SIGHUP with `load` (the binary: the same file and environment as at start).
    pub fn reload_with(mut self, load: Reloader) -> Self {
        self.reloader = Some(load);
        self
    }

    /// The store (for embedding, and the simulator, which waits until it is empty).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The address actually bound (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` resolves, then stop taking callbacks and give queued and in-flight
    /// messages up to `shutdown_grace_secs` to finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Application {
            listener,
            local_addr,
            config,
            apps,
            store,
            worker,
            outbound,
            dispatcher,
            metrics,
            // Held until the gateway has stopped.
            data_dir_lock: _data_dir_lock,
            given,
            shared_tokens,
            reloader,
        } = self;
        // Long-connection bots' leases are asked for before any worker takes a job: with
        // replicas, only the holder takes a bot's jobs.
        let leases: Vec<_> = (worker.aibots.iter())
            .filter(|b| matches!(b.config.mode, aibot::settings::Mode::LongConnection { .. }))
            .map(|b| (b.clone(), store.hold_bot(&b.config.name, &b.config.bot_id)))
            .collect();
        let mut workers = JoinSet::new();
        for _ in 0..config.workers {
            workers.spawn(worker.clone().run());
        }
        let feeder = store.clone();
        workers.spawn(async move { feeder.feed().await });
        // Background chores end with the application, however it ends (dropping a JoinSet aborts it).
        let mut background = JoinSet::new();
        background.spawn(prune_loop(
            store.clone(),
            worker.received.clone(),
            config.retention_days,
        ));
        let state = Arc::new(http::Handlers {
            apps: apps.clone(),
            store: store.clone(),
            allowlist: live::Live::new(config.allowlist.clone()),
            dispatcher: dispatcher.clone(),
            api_tokens: live::Live::new(config.api_tokens.clone()),
            agent_ids: Arc::default(),
            received: worker.received.clone(),
            replay_window: config.replay_window,
            recent: Default::default(),
            aibots: worker.aibots.clone(),
        });
        for (bot, held) in leases {
            background.spawn(connect_aibot(bot, store.clone(), held));
        }
        if let Some(load) = reloader {
            background.spawn(reload_on_sighup(
                load,
                Reloadable {
                    running: config.clone(),
                    given,
                    store: store.clone(),
                    shared: shared_tokens,
                    apps: apps.clone(),
                    state: state.clone(),
                    worker: worker.clone(),
                    dispatcher: dispatcher.clone(),
                },
            ));
        }
        match dispatcher.resume().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "resuming stored deliveries"),
            Err(e) => {
                tracing::error!(error = %e, "cannot read stored deliveries; they are retried at the next start")
            }
        }
        if let StoreKind::Postgres(_) = config.store {
            // Deliveries a replica stored and then died with are taken over once their lease lapses.
            let (dispatcher, every) = (dispatcher.clone(), Duration::from_secs(config.lease_secs));
            background.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match dispatcher.resume().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deliveries = n, "taking over deliveries another replica left"),
                        Err(e) => tracing::warn!(error = %e, "cannot look for deliveries other replicas left"),
                    }
                }
            });
        }
        if let Some(listener) = metrics {
            let addr = listener.local_addr().map_err(StartupError::Serve)?;
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            let scraped = store.clone();
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let store = scraped.clone();
                    async move { scrape(&*store) }
                }),
            );
            background.spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let router = http::router(state, &config.path, config.max_body_bytes);
        let names: Vec<String> = apps.iter().map(|a| a.config.name.clone()).collect();
        tracing::info!(%local_addr, path = %config.path, apps = ?names, workers = config.workers, "wecom-gateway listening on {local_addr}");
        for app in apps.iter() {
            let c = &app.config;
            tracing::info!(app = %c.name, corp_id = %c.corp_id, agent_id = c.agent_id,
                "app {:?}: in the WeCom admin console (应用管理 > the app with AgentId {} > 接收消息 > 设置API接收), set the URL to http://<this server's public address>:{}{} (the gateway serves plain HTTP; https:// only through a TLS proxy or tunnel in front of it)",
                c.name, c.agent_id, local_addr.port(), config.path);
        }
        for bot in worker.aibots.iter() {
            let c = &bot.config;
            match c.mode {
                aibot::settings::Mode::LongConnection { .. } => {
                    tracing::info!(aibot = %c.name, bot_id = %c.bot_id, ws_url = %config.aibot.ws_url, "AI bot {:?}: connecting to WeCom (long connection: no public URL needed)", c.name)
                }
                aibot::settings::Mode::Callback { .. } => {
                    tracing::info!(aibot = %c.name, bot_id = %c.bot_id, "AI bot {:?}: in the WeCom admin console (the bot > API mode > URL), set the URL to http://<this server's public address>:{}/wecom/aibot/{}", c.name, local_addr.port(), c.name)
                }
            }
        }
        if apps.iter().next().is_none() && worker.aibots.is_empty() {
            tracing::info!("no WeCom app configured: serving group robots and the push API only");
        }

        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(StartupError::Serve)?;

        background.shutdown().await;
        store.close();
        // Replies and pushes in progress share one grace period. A send that WeCom's rate limit
        // (or a retry's backoff) would hold past it gives up at once and stays stored, so the
        // stop takes only as long as something can still progress.
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        outbound.stop_by(tokio::time::Instant::now() + grace);
        let pending = store.len();
        if pending > 0 {
            tracing::info!(
                pending,
                grace_secs = config.shutdown_grace_secs,
                "shutting down: letting messages in progress finish"
            );
        }
        let (drained, waiting_targets) = tokio::join!(
            tokio::time::timeout(grace, async {
                while workers.join_next().await.is_some() {}
            }),
            dispatcher.close(grace),
        );
        let kept = match config.store {
            StoreKind::Sqlite => "stay in the store and are taken up at the next start",
            StoreKind::Postgres(_) => {
                "stay in the store and are taken up by a replica (or this one's next start)"
            }
            StoreKind::Memory => "are lost (store: memory)",
        };
        if drained.is_err() {
            let left = store.len();
            workers.abort_all();
            tracing::warn!(
                unfinished = left,
                "grace period over: {left} message(s) still in progress {kept}"
            );
        }
        if waiting_targets > 0 {
            tracing::warn!(targets = waiting_targets, "pushes to {waiting_targets} recipient(s) were still waiting to be sent: they {kept}");
        }
        tracing::info!("wecom-gateway stopped");
        Ok(())
    }
}

/// Where agents reach the gateway when `media.public_url` is not set: the listener, with the
/// loopback address in place of "every address".
fn default_public_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// `/metrics`: the registry, with the store gauges read now.
fn scrape(store: &dyn Store) -> String {
    let in_progress = worker::IN_PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge(metrics::INBOX_IN_PROGRESS, in_progress as f64);
    let waiting = store.len().saturating_sub(in_progress);
    metrics::gauge(metrics::INBOX_WAITING, waiting as f64);
    metrics::render()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (docker stop).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    // Registered now, not when first polled: a SIGTERM that arrives between "listening" and the
    // server's first poll must stop the gateway gracefully, not kill it.
    #[cfg(unix)]
    let (int, term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => tracing::info!("SIGINT received"),
                () = wait(term) => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
