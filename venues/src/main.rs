//! `venues`: the live venue view's command line: `run` and
//! `check-config` (the work is in the `venues` library).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use venues::config::Config;

#[derive(Parser)]
#[command(
    name = "venues",
    version,
    about = "Serves every venue's live occupancy, built from the processors' state changelog."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT/SIGTERM.
    Run {
        /// The TOML configuration file.
        #[arg(short, long, env = "VENUES_CONFIG")]
        config: PathBuf,
    },
    /// Load a configuration, report every problem, exit non-zero if any.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "VENUES_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let (run, path) = match Cli::parse().command {
        Command::Run { config } => (true, config),
        Command::CheckConfig { config } => (false, config),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !run {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    plumbing::init_logs(config.log.format, "VENUES_LOG");
    let rt = match plumbing::runtime::build(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("venues: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(venues::serve(config));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("venues: {e:#}");
            ExitCode::FAILURE
        }
    }
}
