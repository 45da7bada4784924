//! The `wecom-gateway` binary: command-line parsing and process setup only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wecom_gateway::bots::Alert;
use wecom_gateway::config::{Config, ConfigErrors, Loaded, StoreKind};
use wecom_gateway::dispatch::Retried;
use wecom_gateway::logging::LogFormat;
use wecom_gateway::simulate::{self, Simulation};
use wecom_gateway::store::{postgres, FailedId, PostgresStore, SqliteStore, Store};
use wecom_gateway::wecom::{BotMessage, WecomClient};
use wecom_gateway::{shutdown_signal, Application};

/// jemalloc instead of glibc's malloc: requests allocate on the runtime's threads and the store's
/// writer frees (and the other way round), where glibc's arenas cost ~10 µs per stored callback
/// (BENCHMARKS.md, "The callback path against /health").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "wecom-gateway",
    version,
    about = "WeCom (企业微信) callback gateway for AI agents"
)]
struct Cli {
    /// Read variables from this file (as `.env` in the working directory is read by default);
    /// variables already set in the environment win.
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: serve the callback URL and /health, and reply through WeCom's API.
    Serve {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG; without either, environment only).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Probe a running gateway's /health (for Docker HEALTHCHECK); exit 0 when it answers 200.
    Health {
        /// URL to probe (default: http://127.0.0.1:$WECOM_CALLBACK_PORT/health, port 8645).
        #[arg(long)]
        url: Option<String>,
    },
    /// Group robots (群机器人).
    Bot {
        #[command(subcommand)]
        command: BotCommand,
    },
    /// Play a member: send TEXT as a signed, encrypted callback to the gateway run in this process
    /// (memory store, a stand-in for WeCom's API: nothing reaches real members) and print each
    /// message that would go to WeCom, as JSON. With --url, send it to a running gateway instead.
    Simulate {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG; without either, environment only).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The app the member writes to (default: the first).
        #[arg(long)]
        app: Option<String>,
        /// Write to this AI bot (智能机器人) instead: its reply's stream frames are printed.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["app", "url", "image"])]
        aibot: Option<String>,
        /// The member's UserID.
        #[arg(long, default_value = "simulated-user")]
        user: String,
        /// Send this image first, as a member's photo.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Keep a prompt open for a conversation (one message per line; Ctrl-D ends).
        #[arg(long)]
        interactive: bool,
        /// Send to a running gateway's callback URL (e.g. through an ngrok tunnel) instead.
        #[arg(long)]
        url: Option<String>,
        /// With --url: make the URL check the admin console's Save button makes.
        #[arg(long, requires = "url")]
        verify: bool,
        /// Let the member through whatever the configured allowlist says.
        #[arg(long)]
        allow_anyone: bool,
        /// Log at info (the gateway's own lines) instead of warnings only; RUST_LOG wins.
        #[arg(long, short)]
        verbose: bool,
        /// The message text.
        text: Vec<String>,
    },
    /// List work that failed for good (members' messages and pushes), newest first, with the
    /// WeCom errcode and what to check. Safe beside a running gateway.
    Failed {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON, one object per line.
        #[arg(long)]
        json: bool,
    },
    /// Queue failed work again (a message's recorded reply is resent; the agent is not asked
    /// again). IDs as `failed` prints them: job-12, delivery-7.
    Retry {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Every failure `failed` lists.
        #[arg(long)]
        all_failed: bool,
        ids: Vec<String>,
    },
    /// Load and validate the configuration, print it with secrets hidden, and exit.
    CheckConfig {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG; without either, environment only).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BotCommand {
    /// Post "[INFO] wecom-gateway test" to a configured robot and say whether WeCom accepted it.
    Test {
        /// The robot's name in the bots: list.
        name: String,
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<PathBuf>) -> anyhow::Result<(Config, Loaded)> {
    Config::load(path.as_deref(), std::env::vars()).map_err(anyhow::Error::new)
}

/// `.env` in the working directory (if there is one) and `--env-file` (which must exist), before
/// the configuration is read and before any thread starts.
fn read_env_files(explicit: Option<&std::path::Path>) -> anyhow::Result<Vec<String>> {
    let mut set = Vec::new();
    for file in env_files(explicit) {
        set.extend(wecom_gateway::dotenv::load(&file)?);
    }
    Ok(set)
}

/// The `.env` files read, first wins: `--env-file`, then `.env` in the working directory.
fn env_files(explicit: Option<&std::path::Path>) -> Vec<PathBuf> {
    let local = std::path::Path::new(".env");
    let local = (local.is_file() && explicit != Some(local)).then(|| local.to_path_buf());
    explicit
        .map(PathBuf::from)
        .into_iter()
        .chain(local)
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The environment the process was given: it always wins over .env, also at a reload.
    let given: std::collections::HashSet<String> = std::env::vars().map(|(k, _)| k).collect();
    let env_file = cli.env_file.clone();
    let env_files = match read_env_files(cli.env_file.as_deref()) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            return ExitCode::from(1);
        }
    };
    // `serve` logs as its configuration says (log_format); the other commands as the environment says.
    let config = match &cli.command {
        Command::Serve { config } => match load(config.clone()) {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                eprintln!("error: {}", report(&e));
                return ExitCode::from(1);
            }
        },
        _ => None,
    };
    let format = match &config {
        Some((c, _)) => Ok(c.log_format),
        None => LogFormat::from_env(),
    };
    // simulate prints what matters itself; its gateway's info lines would bury it (and a prompt).
    let level = match &cli.command {
        Command::Simulate { verbose: false, .. } => "warn",
        _ => "info",
    };
    wecom_gateway::logging::init(format.clone().unwrap_or_default(), level);
    if let Err(e) = format {
        tracing::warn!("log format: {e}; logging as text");
    }
    if !env_files.is_empty() {
        tracing::info!(variables = ?env_files, "read variables from .env (the environment's own values win)");
    }
    let result = match cli.command {
        Command::Serve { .. } => match config {
            Some(loaded) => serve(loaded, Environment { given, env_file }),
            None => Ok(()),
        },
        Command::CheckConfig { config } => check_config(config),
        Command::Failed { config, json } => failed(config, json),
        Command::Retry {
            config,
            all_failed,
            ids,
        } => retry(config, all_failed, ids),
        Command::Simulate {
            config,
            app,
            aibot,
            user,
            image,
            interactive,
            url,
            verify,
            allow_anyone,
            verbose: _,
            text,
        } => {
            let sim = Simulation {
                app,
                user,
                image,
                text: text.join(" "),
                interactive,
                allow_anyone,
                aibot,
            };
            simulate(config, sim, url, verify)
        }
        Command::Health { url } => health(url),
        Command::Bot {
            command: BotCommand::Test { name, config },
        } => bot_test(&name, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, each said once: the library's messages often name their cause
/// already (so a log line is whole), and `{:#}` would then repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Where a reload reads the environment: the process's own variables as given at start, then the
/// `.env` files again (their values may have changed).
struct Environment {
    given: std::collections::HashSet<String>,
    env_file: Option<PathBuf>,
}

impl Environment {
    fn now(&self) -> Result<Vec<(String, String)>, wecom_gateway::dotenv::DotenvError> {
        let mut env: std::collections::BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| self.given.contains(k))
            .collect();
        for file in env_files(self.env_file.as_deref()) {
            for (key, value) in wecom_gateway::dotenv::read(&file)? {
                env.entry(key).or_insert(value);
            }
        }
        Ok(env.into_iter().collect())
    }
}

fn serve((config, loaded): (Config, Loaded), environment: Environment) -> anyhow::Result<()> {
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    match &loaded.config_file {
        Some(p) => tracing::info!(file = %p.display(), "configuration loaded"),
        None => tracing::info!("configuration loaded from the environment"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = shutdown_signal();
        // SIGHUP reads the same file (and the environment) again.
        let file = loaded.config_file.clone();
        let reload = move || {
            let env = environment
                .now()
                .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
            let (config, loaded) = Config::load(file.as_deref(), env)?;
            for w in &loaded.warnings {
                tracing::warn!("config: {w}");
            }
            Ok(config)
        };
        let app = Application::build(config)
            .await?
            .reload_with(Box::new(reload));
        app.run_until(stop).await?;
        Ok(())
    })
}

fn simulate(
    path: Option<PathBuf>,
    sim: Simulation,
    url: Option<String>,
    verify: bool,
) -> anyhow::Result<()> {
    let (config, _) = load(path)?;
    anyhow::ensure!(
        verify || sim.interactive || !sim.text.is_empty() || sim.image.is_some(),
        "give the message text (or --image, or --interactive)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match url {
            Some(url) => {
                let answer = simulate::remote(&url, &config, &sim, verify).await?;
                println!("{}", answer.said);
                // The answer is on stdout already; the exit code says it was not a success.
                anyhow::ensure!(answer.success, "not a success (the answer above says why)");
            }
            None => match sim.aibot.clone() {
                Some(name) => simulate::aibot::run(config, sim, &name).await?,
                None => simulate::run(config, sim).await?,
            },
        }
        Ok(())
    })
}

/// The configured store, opened beside a gateway that may be running on it.
async fn open_store(config: &Config) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    Ok(match &config.store {
        StoreKind::Sqlite => SqliteStore::open_beside(&config.data_dir)?,
        StoreKind::Postgres(url) => {
            let lease = std::time::Duration::from_secs(config.lease_secs);
            PostgresStore::open(url, lease).await?
        }
        StoreKind::Memory => anyhow::bail!("store: memory keeps nothing once the gateway stops"),
    })
}

fn admin<T>(job: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(job)
}

fn failed(path: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let (config, _) = load(path)?;
    admin(async {
        let store = open_store(&config).await?;
        let items = store.failed(1000).await?;
        if items.is_empty() && !json {
            println!("nothing failed");
        }
        for item in &items {
            let report = item.report();
            if json {
                println!("{report}");
                continue;
            }
            let app = item.app.as_deref().unwrap_or("-");
            let errcode = report["errcode"]
                .as_i64()
                .map_or_else(|| "-".into(), |c| c.to_string());
            println!(
                "{}  app={app}  member={:?}  errcode={errcode}",
                item.id, item.member
            );
            println!("    {}", item.error);
            if let Some(hint) = report["hint"].as_str() {
                println!("    check: {hint}");
            }
        }
        Ok(())
    })
}

fn retry(path: Option<PathBuf>, all: bool, ids: Vec<String>) -> anyhow::Result<()> {
    let (config, _) = load(path)?;
    anyhow::ensure!(
        all || !ids.is_empty(),
        "name the IDs to retry (as `failed` prints them), or --all-failed"
    );
    let mut which = Vec::new();
    for id in &ids {
        which.push(FailedId::parse(id).map_err(anyhow::Error::msg)?);
    }
    admin(async {
        let store = open_store(&config).await?;
        if all {
            for item in store.failed(1000).await? {
                which.push(FailedId::parse(&item.id).map_err(anyhow::Error::msg)?);
            }
        }
        let mut missing = Vec::new();
        for id in which {
            // The command line is the operator: it may retry a broadcast.
            match wecom_gateway::dispatch::retry(&*store, None, id, true).await? {
                Retried::Queued(new) => println!("{id} queued again as {new}"),
                _ => missing.push(id.to_string()),
            }
        }
        if matches!(config.store, StoreKind::Sqlite) {
            println!("# a running gateway takes retried messages up within seconds, and retried pushes at its next start");
        }
        anyhow::ensure!(
            missing.is_empty(),
            "not failed (or retried already): {}",
            missing.join(", ")
        );
        Ok(())
    })
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, loaded) = load(path)?;
    for w in &loaded.warnings {
        println!("# warning: {w}");
    }
    print!("{}", config.redacted());
    // What would fail at the first message, found now.
    let agents = std::iter::once(("agent".to_owned(), &config.agent)).chain(
        (config.apps.iter().enumerate())
            .filter_map(|(i, a)| a.agent.as_ref().map(|g| (format!("apps[{i}].agent"), g))),
    );
    let problems: Vec<String> = agents
        .flat_map(|(field, agent)| {
            agent
                .problems()
                .into_iter()
                .map(move |p| format!("{field}: {p}"))
        })
        .collect();
    if !problems.is_empty() {
        anyhow::bail!("the agent would fail:\n  {}", problems.join("\n  "));
    }
    println!("# configuration is valid");
    if let StoreKind::Postgres(url) = &config.store {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let found = runtime
            .block_on(postgres::check(url))
            .with_context(|| format!("cannot reach the PostgreSQL store {url}"))?;
        let want = postgres::SCHEMA_VERSION;
        match found {
            0 => println!("# PostgreSQL store reachable; empty: the schema (version {want}) is created at the first start"),
            v if v == want => println!("# PostgreSQL store reachable; schema version {v}"),
            v if v < want => println!("# PostgreSQL store reachable; schema version {v}, migrated to {want} at the next start"),
            v => println!("# warning: the PostgreSQL store has schema version {v}, newer than this build's {want}: a newer wecom-gateway has run on it; upgrade this one"),
        }
    }
    Ok(())
}

fn health(url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("WECOM_CALLBACK_PORT").unwrap_or_else(|_| "8645".into());
        format!("http://127.0.0.1:{port}/health")
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await
            .with_context(|| format!("{url} did not answer"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url} answered {}",
            response.status()
        );
        println!("ok");
        Ok(())
    })
}

fn bot_test(name: &str, path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, _) = load(path)?;
    let Some(bot) = config.bots.iter().find(|b| b.name == name) else {
        let names: Vec<&str> = config.bots.iter().map(|b| b.name.as_str()).collect();
        anyhow::bail!("no robot named {name:?} in bots: (configured: {names:?})");
    };
    let client = WecomClient::new(
        &config.api_base_url,
        std::time::Duration::from_secs(config.http_timeout_secs),
    )?;
    let message = BotMessage::Text {
        content: Alert {
            subject: "wecom-gateway test".into(),
            ..Alert::default()
        }
        .text(),
        mentioned_list: Vec::new(),
        mentioned_mobile_list: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(client.send_bot(bot.key(), &message)) {
        Ok(()) => {
            println!("robot {name}: accepted by WeCom (errcode 0)");
            Ok(())
        }
        // The error's text carries WeCom's errcode, errmsg and a hint; never the webhook URL.
        Err(e) => anyhow::bail!("robot {name}: not delivered: {e}"),
    }
}
