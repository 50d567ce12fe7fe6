//! `ingest`: the webhook receiver's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ingest::config::{Config, LogFormat};
use ingest::source::Source;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "ingest",
    version,
    about = "Verifies signed webhooks and makes them durable in Kafka before answering."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks until SIGINT/SIGTERM.
    Serve {
        /// The TOML configuration file.
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
    },
    /// Load a configuration and its secrets, report every problem, and exit
    /// non-zero if there is any.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("INGEST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => serve(&config),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let mut problems = match Config::load(path) {
        Ok(config) => match Source::build_all(&config) {
            Ok(_) => Vec::new(),
            Err(p) => p,
        },
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if problems.is_empty() {
        println!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        problems.sort();
        eprintln!(
            "invalid configuration {}:\n  - {}",
            path.display(),
            problems.join("\n  - ")
        );
        ExitCode::FAILURE
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    init_logs(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, sources = config.sources.len(), topic = %config.kafka.topic, "listening");
        // One machine-readable line on stdout for scripts and test harnesses.
        println!("listening on http://{addr}");
        ingest::server::serve(config, listener, ingest::server::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
