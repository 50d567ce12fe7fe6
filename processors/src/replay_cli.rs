//! The `replay` and `dlq` subcommands: argument parsing, one-line errors
//! with exit codes, the sinks built as `run` builds them, and the printed
//! summaries. The work is in the library (`processors::ops::replay`,
//! `processors::ops::dlq`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use processors::config::Config;
use processors::kafka::side::KafkaSide;
use processors::metrics::Metrics;
use processors::ops::dlq::{self, RedriveOptions};
use processors::ops::replay::{self, ReplayError, ReplayOptions};
use processors::pipeline::SideTopics;

/// `processors replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The TOML configuration file (the one `run` uses).
    #[arg(short, long, env = "PROCESSORS_CONFIG")]
    config: PathBuf,
    /// Range start, inclusive: RFC 3339 (e.g. 2026-11-22T00:00:00Z), by
    /// Kafka record timestamp (= the envelope's received_at).
    #[arg(long)]
    from: String,
    /// Range end, exclusive: RFC 3339, or `now`.
    #[arg(long)]
    to: String,
    /// Only events of this source (repeatable); default all.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Only these sinks (repeatable), whatever their kind; default every
    /// sink that is safe to rebuild (analytics, postgres, jsonl, log, null),
    /// leaving out the ones with external side effects (crm, alerts).
    #[arg(long = "sink")]
    sinks: Vec<String>,
    /// Count what would be replayed per source and type; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Longest wait for each broker answer before giving up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Event ids remembered to drop duplicates within the replay (memory
    /// bound, ~100 bytes each); older duplicates are absorbed by the sinks.
    #[arg(long, default_value_t = 1_000_000)]
    dedupe_capacity: usize,
}

/// `processors dlq ...`.
#[derive(Subcommand)]
pub enum DlqCommand {
    /// Pending dead letters by sink and reason, with count and ages.
    List {
        /// The TOML configuration file.
        #[arg(short, long, env = "PROCESSORS_CONFIG")]
        config: PathBuf,
        /// Longest wait for each broker answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Offer pending dead letters to their sink again; a letter leaves the
    /// queue only once its sink accepted it.
    Redrive {
        /// The TOML configuration file.
        #[arg(short, long, env = "PROCESSORS_CONFIG")]
        config: PathBuf,
        /// Only letters of this sink.
        #[arg(long)]
        sink: Option<String>,
        /// Only letters dead-lettered longer ago than this (e.g. 1h).
        #[arg(long)]
        older_than: Option<String>,
        /// How long to keep offering to a sink that asks to retry before
        /// re-queueing its letters.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        retry_for: Duration,
        /// Longest wait for each broker answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn fail(e: &ReplayError) -> ExitCode {
    eprintln!("processors: {e}");
    ExitCode::from(match e {
        ReplayError::Usage(_) => 2,
        ReplayError::Empty { .. } => 3,
        _ => 1,
    })
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    plumbing::runtime::build(None).map_err(|e| {
        eprintln!("processors: {e}");
        ExitCode::FAILURE
    })
}

/// A stop signal raised on SIGINT/SIGTERM.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
        tracing::info!("stopping");
        let _ = tx.send(true);
    });
    rx
}

/// Runs `processors replay`.
pub fn replay(args: ReplayArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let parsed = replay::parse_time("--from", &args.from)
        .and_then(|f| replay::parse_time("--to", &args.to).map(|t| (f, t)));
    let (from_ms, to_ms) = match parsed {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let opts = ReplayOptions {
        from_ms,
        to_ms,
        from_text: args.from.clone(),
        to_text: args.to.clone(),
        sources: args.sources.clone(),
        dry_run: args.dry_run,
        timeout: args.timeout,
        dedupe_capacity: args.dedupe_capacity,
        bars: None,
    };
    if let Err(e) = opts.check() {
        return fail(&e);
    }
    let config = match replay::choose(&config, &args.sinks) {
        Ok(chosen) => {
            if let Some(notice) = chosen.notice() {
                eprintln!("processors: {notice}");
            }
            chosen.config
        }
        Err(e) => return fail(&e),
    };
    plumbing::init_logs(config.log.format, "PROCESSORS_LOG");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let metrics = Metrics::new().map_err(|e| ReplayError::Kafka(e.to_string()))?;
        replay::probe(&config.kafka, &config.kafka.topic, opts.timeout).await?;
        let (sinks, dlq) = if opts.dry_run {
            (Vec::new(), None)
        } else {
            let sinks = processors::sinks::build(&config.sinks, &metrics)
                .await
                .map_err(|e| ReplayError::Setup(format!("{e:#}")))?;
            let side: Arc<dyn SideTopics> = Arc::new(KafkaSide::new(&config.kafka)?);
            (sinks, Some(side))
        };
        replay::replay(&config, &opts, sinks, dlq, metrics, stop_on_signal()).await
    });
    match result {
        Ok(summary) => {
            print!("{}", replay::report(&summary, &opts, &config.kafka.topic));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `processors dlq list|redrive`.
pub fn dlq(command: DlqCommand) -> ExitCode {
    match command {
        DlqCommand::List { config, timeout } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            plumbing::init_logs(config.log.format, "PROCESSORS_LOG");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(dlq::list(&config, timeout)) {
                Ok(r) => {
                    print!("{}", dlq::render_list(&r));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        DlqCommand::Redrive {
            config,
            sink,
            older_than,
            retry_for,
            timeout,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let older_than = match older_than.as_deref().map(humantime::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(_)) => {
                    return fail(&ReplayError::Usage(format!(
                        "--older-than: {:?} is not a duration (like 30m or 2h)",
                        older_than.unwrap_or_default()
                    )));
                }
            };
            let only: Vec<String> = sink.iter().cloned().collect();
            let restricted = match replay::restrict(&config, &only) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            plumbing::init_logs(config.log.format, "PROCESSORS_LOG");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let opts = RedriveOptions {
                sink,
                older_than,
                retry_for,
                timeout,
            };
            let result = rt.block_on(async {
                let metrics = Metrics::new().map_err(|e| ReplayError::Kafka(e.to_string()))?;
                if let Err(e @ ReplayError::Unreachable { .. }) =
                    replay::probe(&config.kafka, &config.kafka.dlq_topic, opts.timeout).await
                {
                    return Err(e);
                }
                let sinks = processors::sinks::build(&restricted.sinks, &metrics)
                    .await
                    .map_err(|e| ReplayError::Setup(format!("{e:#}")))?;
                dlq::redrive(&config, &opts, sinks, &metrics, stop_on_signal()).await
            });
            match result {
                Ok(r) => {
                    print!("{}", dlq::render_redrive(&r, &config.kafka.dlq_topic));
                    if r.complete {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail(&e),
            }
        }
    }
}
