//! `mctc-console`: see `console/README.md`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mctc_console::error::ConsoleError;
use mctc_console::{Config, server, shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "mctc-console",
    version,
    about = "mctc fleet console (web proof surfaces)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the console.
    Run {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check the configuration: parse it, load the TLS files, open both
    /// databases read-only.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { config } => check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mctc-console: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path) -> Result<(), ConsoleError> {
    mctc_service::logging::init();
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ConsoleError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    runtime.block_on(async move {
        let (trigger, signal) = shutdown::channel();
        let stop = tokio::spawn(async move {
            wait_for_signal().await;
            trigger.fire();
        });
        let result = server::run(config, signal).await;
        stop.abort();
        result
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

fn check(path: &std::path::Path) -> Result<(), ConsoleError> {
    let config = Config::load(path)?;
    server::tls_config(&config.tls)?;
    if let Some(broker) = &config.broker {
        mctc_service::tls::client_config(broker)?;
        broker.endpoint()?;
    }
    mctc_authority::store::sqlite::SqliteStore::open_read_only(&config.stores.authority).map_err(
        |e| ConsoleError::Store {
            store: "authority",
            reason: e.to_string(),
        },
    )?;
    mctc_collector::store::sqlite::SqliteStore::open_read_only(&config.stores.collector).map_err(
        |e| ConsoleError::Store {
            store: "collector",
            reason: e.to_string(),
        },
    )?;
    println!("{}: ok", path.display());
    Ok(())
}
