//! The `wecom-gateway` binary: command-line parsing and process setup only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wecom_gateway::config::{Config, Loaded};
use wecom_gateway::{shutdown_signal, Application};

#[derive(Parser)]
#[command(
    name = "wecom-gateway",
    version,
    about = "WeCom (企业微信) callback gateway for AI agents"
)]
struct Cli {
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
    /// Load and validate the configuration, print it with secrets hidden, and exit.
    CheckConfig {
        /// config.yaml to read (default: $WECOM_CALLBACK_CONFIG; without either, environment only).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<PathBuf>) -> anyhow::Result<(Config, Loaded)> {
    Config::load(path.as_deref(), std::env::vars()).map_err(anyhow::Error::new)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Health { url } => health(url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, loaded) = load(path)?;
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
        let app = Application::build(config).await?;
        app.run_until(shutdown_signal()).await?;
        Ok(())
    })
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, loaded) = load(path)?;
    for w in &loaded.warnings {
        println!("# warning: {w}");
    }
    print!("{}", config.redacted());
    println!("# configuration is valid");
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
