//! `processors`: the consumer group's command line and its exit codes:
//! `run` (the work is in `processors::app`), `check-config`, `replay` and
//! `dlq list|redrive` (their arguments and summaries in `replay_cli.rs`,
//! the work in `processors::ops`) and `topics apply|check|strimzi`
//! (`topics_cli.rs`).

mod replay_cli;
mod topics_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use processors::config::Config;

#[derive(Parser)]
#[command(
    name = "processors",
    version,
    about = "Consumes the raw webhook topic: decodes, reorders, de-duplicates and routes events to sinks."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume until SIGINT/SIGTERM.
    Run {
        /// The TOML configuration file.
        #[arg(short, long, env = "PROCESSORS_CONFIG")]
        config: PathBuf,
    },
    /// Load a configuration, report every problem, exit non-zero if any.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "PROCESSORS_CONFIG")]
        config: PathBuf,
    },
    /// Read a time range of the raw topic again and offer its events to
    /// sinks (backfill), without touching the live group's offsets or its
    /// de-duplication store. Exit 0 done, 1 failure, 2 bad input, 3 no
    /// records in the range.
    Replay(replay_cli::ReplayArgs),
    /// Dead letters: list them, re-drive them.
    Dlq {
        #[command(subcommand)]
        command: replay_cli::DlqCommand,
    },
    /// Topic settings as code: create missing topics, report how existing
    /// ones differ (never changing them), print the Strimzi resources.
    /// Exit 0 as defined, 1 a difference, 2 bad input, 3 broker error, 4
    /// some setting not reported by the brokers.
    Topics {
        #[command(subcommand)]
        command: topics_cli::TopicsCommand,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                for note in c.notes() {
                    println!("{}: {note}", config.display());
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run(&config),
        Command::Replay(args) => replay_cli::replay(args),
        Command::Dlq { command } => replay_cli::dlq(command),
        Command::Topics { command } => topics_cli::topics(command),
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    plumbing::init_logs(config.log.format, "PROCESSORS_LOG");
    let rt = match plumbing::runtime::build(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("processors: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(processors::app::serve(config));
    // A consumer thread still blocked in librdkafka (brokers gone) must not
    // hold the exit: `serve` already waited as long as it may.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("processors: {e:#}");
            ExitCode::FAILURE
        }
    }
}
