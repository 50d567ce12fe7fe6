//! `processors`: the consumer group's command line: `run`, `check-config`,
//! `replay` and `dlq list|redrive` (those two in `replay_cli.rs`).

mod replay_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, Subcommand};
use processors::config::{Config, SinkConfig};
use processors::kafka::consumer::{self as runtime, KafkaSide};
use processors::metrics::Metrics;
use processors::pipeline::Shared;
use processors::pipeline::dedupe::{DedupeConfig, DedupeStore, RedbDedupe};
use processors::sinks::analytics::{PostgresSink, SqliteSink};
use processors::sinks::{JsonlSink, LogSink, NullSink, Sink};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
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
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("processors: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn build_sinks(config: &Config, metrics: &Metrics) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    for (name, s) in &config.sinks {
        let sink: Arc<dyn Sink> = match s {
            SinkConfig::Log => Arc::new(LogSink::new(name)),
            SinkConfig::Null => Arc::new(NullSink::new(name)),
            SinkConfig::Postgres { url, url_env } => {
                postgres_sink(name, url.as_deref(), url_env.as_deref()).await?
            }
            SinkConfig::Analytics { url, url_env, path } => match (url, url_env, path) {
                (None, None, Some(path)) => {
                    tracing::info!(sink = %name, path = %path.display(), "analytics: embedded store");
                    Arc::new(
                        SqliteSink::open(name, path)
                            .await
                            .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?,
                    )
                }
                _ => {
                    tracing::info!(sink = %name, "analytics: PostgreSQL");
                    postgres_sink(name, url.as_deref(), url_env.as_deref()).await?
                }
            },
            SinkConfig::Jsonl { path } => Arc::new(
                JsonlSink::open(name, path)
                    .map_err(|e| anyhow::anyhow!("sinks.{name}: {}: {e}", path.display()))?,
            ),
            SinkConfig::Crm(crm) => Arc::new(
                processors::sinks::crm::CrmSink::new(name, crm, metrics)
                    .map_err(|e| anyhow::anyhow!(e))?,
            ),
            SinkConfig::Alerts(alerts) => Arc::new(
                processors::sinks::alerting::AlertsSink::start(name, alerts, metrics)
                    .map_err(|e| anyhow::anyhow!(e))?,
            ),
        };
        sinks.push(sink);
    }
    Ok(sinks)
}

/// The PostgreSQL analytics sink, its URL given or read from the
/// environment (never logged: it may hold a password).
async fn postgres_sink(
    name: &str,
    url: Option<&str>,
    url_env: Option<&str>,
) -> anyhow::Result<Arc<dyn Sink>> {
    let url = match (url, url_env) {
        (Some(u), _) => u.to_string(),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| anyhow::anyhow!("sinks.{name}.url_env: {var} is not set"))?,
        (None, None) => anyhow::bail!("sinks.{name}: no url"),
    };
    Ok(Arc::new(
        PostgresSink::connect(name, &url)
            .await
            .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?,
    ))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let dedupe_cfg = DedupeConfig {
        window: config.dedupe.window,
        cache_bytes: config.dedupe.cache_bytes,
    };
    if let Some(dir) = config.dedupe.path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("dedupe.path: {}: {e}", dir.display()))?;
    }
    let dedupe: Arc<dyn DedupeStore> = Arc::new(
        RedbDedupe::open(&config.dedupe.path, &dedupe_cfg)
            .map_err(|e| anyhow::anyhow!("dedupe.path: {}: {e}", config.dedupe.path.display()))?,
    );
    let side = Arc::new(KafkaSide::new(&config.kafka)?);
    let sinks = build_sinks(&config, &metrics).await?;
    let shared = Arc::new(
        Shared::new(&config, sinks, dedupe.clone(), side, metrics.clone())
            .map_err(|e| anyhow::anyhow!(e))?,
    );

    let listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", config.metrics.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = runtime::start(
        &config.kafka,
        &config.processing,
        shared,
        tokio::runtime::Handle::current(),
        stop_rx.clone(),
    )?;
    let state = HttpState {
        metrics: metrics.clone(),
        ready: running.ready.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    println!("metrics on http://{addr}");
    tracing::info!(%addr, topic = %config.kafka.topic, group = %config.kafka.group_id, "processors started");
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                processors::pipeline::stopped(&mut http_stop).await;
            })
            .await
    });
    // Expire old dedupe entries every minute.
    let mut expiry_stop = stop_rx.clone();
    let expiry_metrics = metrics.clone();
    let expiry = tokio::spawn(async move {
        loop {
            let d = dedupe.clone();
            let res = tokio::task::spawn_blocking(move || {
                let removed = d.expire(std::time::SystemTime::now())?;
                Ok::<_, processors::pipeline::dedupe::DedupeError>((removed, d.len()?))
            })
            .await;
            match res {
                Ok(Ok((removed, len))) => {
                    expiry_metrics.dedupe_entries.set(len as i64);
                    if removed > 0 {
                        tracing::info!(removed, "dedupe entries expired");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "dedupe expiry failed"),
                Err(e) => tracing::warn!(error = %e, "dedupe expiry task failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                _ = processors::pipeline::stopped(&mut expiry_stop) => break,
            }
        }
    });

    plumbing::shutdown_signal().await;
    tracing::info!("stopping: handing partitions over");
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || running.join()).await;
    let _ = http.await;
    let _ = expiry.await;
    match joined {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::anyhow!(e)),
        Err(e) => Err(anyhow::anyhow!("consumer thread: {e}")),
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

async fn render_metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet in the consumer group",
        )
    }
}
