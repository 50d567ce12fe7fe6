//! `ingest`: the webhook receiver's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ingest::config::Config;
use ingest::source::Source;
use ingest::tls::Tls;

/// mimalloc, not glibc's allocator: each request allocates and frees a few
/// dozen small blocks across two worker threads, and glibc's malloc and
/// free were a quarter of ingest's CPU at saturation (BENCHMARKS.md,
/// "Ingest's CPU").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Poll the sources that have a `poll` table from their providers' REST
    /// history APIs, into the raw topic, until SIGINT/SIGTERM.
    Poll {
        /// The TOML configuration file (the same as `serve`'s).
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
    },
    /// List the sequence gaps the provider could not fill either (the
    /// poller's unfillable topic), one line each.
    Unfillable {
        /// The TOML configuration file (the same as `poll`'s).
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
    },
    /// Simulate the guest-WiFi platform: send signed, realistic traffic and
    /// report what was acknowledged and refused.
    Send(Box<SendArgs>),
    /// Load a configuration and its secrets, report every problem, and exit
    /// non-zero if there is any.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
        /// Check only what this command reads: `serve` does not read the
        /// poll tables' API tokens, `poll` needs a source with a `poll`
        /// table. Default: what either reads.
        #[arg(long = "for", value_enum)]
        command: Option<Checked>,
    },
}

/// The command `check-config --for` checks a configuration for.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Checked {
    /// `ingest serve`.
    Serve,
    /// `ingest poll`.
    Poll,
}

#[derive(clap::Args)]
struct SendArgs {
    /// Target, e.g. http://127.0.0.1:8080/webhooks/purple.
    #[arg(long)]
    url: String,
    /// Signature scheme to sign with.
    #[arg(long, value_enum, default_value = "purple")]
    scheme: ingest::simulator::Signer,
    /// Environment variable holding the signing secret.
    #[arg(long, default_value = "PURPLE_WEBHOOK_SECRET")]
    secret_env: String,
    /// Events to generate (duplicates are sent on top).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Requests per second; 0 = as fast as the concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this long (e.g. 30s), whatever the count.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Number of venues.
    #[arg(long, default_value_t = 5)]
    venues: usize,
    /// Zones per venue (1-6).
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Share of events re-sent with the same id (0-1).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of events delivered out of order (0-1).
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Share of events delivered late, far behind their neighbours (0-1).
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Share of requests sent in bursts (0-1): runs of --burst-size requests
    /// back to back, ignoring --rate, as a provider flushing a backlog.
    #[arg(long, default_value_t = 0.0)]
    bursts: f64,
    /// Requests per burst (1-10000).
    #[arg(long, default_value_t = 20)]
    burst_size: usize,
    /// Random seed, to repeat a run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time of the first event: RFC 3339 (e.g.
    /// 2026-11-22T18:00:00Z) or `now` (live-looking traffic, e.g. for
    /// alerts). Default: a fixed instant, so runs repeat exactly.
    #[arg(long)]
    start: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Share of webhooks lost on purpose, never sent (0-1); the events stay
    /// in the provider's history API.
    #[arg(long, default_value_t = 0.0)]
    lose: f64,
    /// Stop delivering webhooks after this many deliveries, for
    /// --pause-for: every webhook due in that stretch is lost.
    #[arg(long)]
    pause_after: Option<usize>,
    /// How long the stretch without webhooks lasts (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pause_for: std::time::Duration,
    #[command(flatten)]
    api: ApiArgs,
}

/// The provider's REST history API (`ingest send --api-listen`).
#[derive(clap::Args)]
struct ApiArgs {
    /// Serve the provider's history API here (e.g. 127.0.0.1:0); the first
    /// stdout line is then `api on http://ADDR`.
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// Environment variable holding the API's bearer token.
    #[arg(long, default_value = "PURPLE_API_TOKEN")]
    api_token_env: String,
    /// Keep serving the API this long after the last webhook (or until
    /// SIGINT/SIGTERM).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    api_linger: std::time::Duration,
    /// Requests the API accepts in any 60 s; past it 429 with Retry-After.
    #[arg(long)]
    api_limit_per_minute: Option<u32>,
    /// The Retry-After of a 429 (whole seconds).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    api_retry_after: std::time::Duration,
    /// Share of API requests answered 503 (0-1).
    #[arg(long, default_value_t = 0.0)]
    api_errors: f64,
    /// Share of pages served slowly (0-1), after --api-slow-delay.
    #[arg(long, default_value_t = 0.0)]
    api_slow: f64,
    /// How long a slow page takes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    api_slow_delay: std::time::Duration,
    /// Share of pages that are not valid JSON (0-1).
    #[arg(long, default_value_t = 0.0)]
    api_malformed: f64,
    /// Share of items served without their id (0-1).
    #[arg(long, default_value_t = 0.0)]
    api_missing_id: f64,
    /// Share of the lost webhooks whose events the API forgets too (0-1):
    /// gaps nobody can fill.
    #[arg(long, default_value_t = 0.0)]
    api_forget: f64,
    /// Share of pages whose next_cursor goes back to the page's own start
    /// (0-1): a client that follows it loops.
    #[arg(long, default_value_t = 0.0)]
    api_cursor_back: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, command } => check_config(&config, command),
        Command::Serve { config } => serve(&config),
        Command::Poll { config } => poll(&config),
        Command::Unfillable { config } => unfillable(&config),
        Command::Send(args) => send(*args),
    }
}

fn send(args: SendArgs) -> ExitCode {
    let share = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(format!("--{name} must be between 0 and 1, got {v}"))
        }
    };
    let faults = match (
        share("duplicates", args.duplicates),
        share("out-of-order", args.out_of_order),
        share("late", args.late),
    ) {
        (Ok(duplicates), Ok(out_of_order), Ok(late)) if out_of_order + late <= 1.0 => {
            ingest::simulator::Faults {
                duplicates,
                out_of_order,
                late,
            }
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("ingest send: {e}");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("ingest send: --out-of-order plus --late must not exceed 1");
            return ExitCode::from(2);
        }
    };
    for (name, v) in [
        ("bursts", args.bursts),
        ("lose", args.lose),
        ("api-errors", args.api.api_errors),
        ("api-slow", args.api.api_slow),
        ("api-malformed", args.api.api_malformed),
        ("api-missing-id", args.api.api_missing_id),
        ("api-cursor-back", args.api.api_cursor_back),
        ("api-forget", args.api.api_forget),
    ] {
        if let Err(e) = share(name, v) {
            eprintln!("ingest send: {e}");
            return ExitCode::from(2);
        }
    }
    if args.api.api_limit_per_minute == Some(0) {
        eprintln!("ingest send: --api-limit-per-minute must be at least 1");
        return ExitCode::from(2);
    }
    if !(1..=10_000).contains(&args.burst_size) {
        eprintln!("ingest send: --burst-size must be between 1 and 10000");
        return ExitCode::from(2);
    }
    if args.rate < 0.0 || !args.rate.is_finite() {
        eprintln!("ingest send: --rate must be 0 or more");
        return ExitCode::from(2);
    }
    let start_ms = match args.start.as_deref() {
        None => ingest::simulator::GeneratorConfig::default().start_ms,
        Some(text) => {
            let at = if text == "now" {
                Ok(std::time::SystemTime::now())
            } else {
                humantime::parse_rfc3339_weak(text)
            };
            match at.map(|t| t.duration_since(std::time::UNIX_EPOCH)) {
                Ok(Ok(d)) => d.as_millis() as i64,
                _ => {
                    eprintln!(
                        "ingest send: --start {text:?} is neither RFC 3339 (2026-11-22T18:00:00Z) nor now"
                    );
                    return ExitCode::from(2);
                }
            }
        }
    };
    let Some(secret) = std::env::var_os(&args.secret_env) else {
        eprintln!(
            "ingest send: environment variable {} (the signing secret) is not set",
            args.secret_env
        );
        return ExitCode::from(2);
    };
    let config = ingest::simulator::SendConfig {
        url: args.url,
        secret: secret.into_encoded_bytes(),
        signer: args.scheme,
        count: args.count,
        rate: args.rate,
        concurrency: args.concurrency.max(1),
        duration: args.duration,
        generator: ingest::simulator::GeneratorConfig {
            venues: args.venues.max(1),
            zones: args.zones,
            seed: args.seed,
            start_ms,
        },
        faults,
        bursts: args.bursts,
        burst_size: args.burst_size,
        timeout: args.timeout,
        lose: args.lose,
        pause_after: args.pause_after,
        pause_for: args.pause_for,
        forget: args.api.api_forget,
    };
    let api = match &args.api.api_listen {
        None => None,
        Some(addr) => {
            let Some(token) = std::env::var(&args.api.api_token_env)
                .ok()
                .filter(|t| !t.is_empty())
            else {
                eprintln!(
                    "ingest send: environment variable {} (the API's bearer token) is not set",
                    args.api.api_token_env
                );
                return ExitCode::from(2);
            };
            let faults = ingest::provider_api::ApiFaults {
                limit_per_minute: args.api.api_limit_per_minute,
                retry_after: args.api.api_retry_after,
                errors: args.api.api_errors,
                slow: args.api.api_slow,
                slow_delay: args.api.api_slow_delay,
                malformed: args.api.api_malformed,
                missing_id: args.api.api_missing_id,
                cursor_back: args.api.api_cursor_back,
            };
            Some((
                *addr,
                ingest::provider_api::History::new(faults, token, args.seed),
            ))
        }
    };
    let linger = args.api.api_linger;
    let runtime = match runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        let Some((addr, history)) = api else {
            return ingest::simulator::run(config).await.map(|r| (r, None));
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        println!("api on http://{}", listener.local_addr()?);
        let app = ingest::provider_api::router(history.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let report = ingest::simulator::run_with(config, Some(history)).await?;
        Ok((report, Some(server)))
    });
    match outcome {
        Ok((report, server)) => {
            if args.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                let bursts = if report.bursts > 0 {
                    format!(
                        " ({} of them in {} bursts)",
                        report.burst_requests, report.bursts
                    )
                } else {
                    String::new()
                };
                println!(
                    "sent {}{bursts} in {:.1}s ({:.0}/s): {} acknowledged ({} distinct events), refused {:?}",
                    report.sent,
                    report.seconds,
                    report.sent as f64 / report.seconds.max(1e-9),
                    report.acknowledged,
                    report.distinct_acknowledged,
                    report.refused
                );
                if report.lost > 0 {
                    println!("lost on purpose: {} webhooks", report.lost);
                }
            }
            if let Some(server) = server {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                runtime.block_on(async {
                    tokio::select! {
                        _ = tokio::time::sleep(linger) => {}
                        _ = ingest::server::shutdown_signal() => {}
                    }
                    server.abort();
                });
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ingest send: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every problem of the file at once, one line each naming the file, then
/// the source and field: parse errors section by section, cross-field
/// checks, and every secret `command` reads (read, never printed; both
/// commands' when `None`). Exit 1 on any problem.
fn check_config(path: &std::path::Path, command: Option<Checked>) -> ExitCode {
    let (config, mut problems) = Config::check(path);
    if let Some(config) = config {
        // The poller reads no webhook secret (see `Source::for_polling`).
        if command != Some(Checked::Poll)
            && let Err(p) = Source::build_all(&config)
        {
            problems.extend(p);
        }
        if command == Some(Checked::Poll) && config.sources.values().all(|s| s.poll.is_none()) {
            problems.push("sources: no source has a `poll` table; nothing to poll".into());
        }
        for (name, src) in &config.sources {
            if command != Some(Checked::Serve)
                && let Some(poll) = &src.poll
                && let Err(e) = poll.token()
            {
                let field = if poll.token_env.is_some() {
                    "token_env"
                } else {
                    "token_file"
                };
                problems.push(format!("sources.{name}.poll.{field}: {e}"));
            }
        }
        if let Some(tls) = &config.server.tls
            && let Err(p) = Tls::load(tls, "server.tls", config.asks_client_certificates())
        {
            problems.extend(p);
        }
    }
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    problems.sort();
    problems.dedup();
    for p in &problems {
        eprintln!("{}: {p}", path.display());
    }
    eprintln!(
        "{}: {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

/// The configuration at `path`, or its problems printed (naming the file)
/// and the exit code to return.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// Prints `problems` of the file at `path`, one line each; the exit code.
fn config_failure(path: &std::path::Path, problems: Vec<String>) -> ExitCode {
    let e = ingest::config::ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    eprintln!("{e}");
    ExitCode::FAILURE
}

/// A multi-threaded tokio runtime with `workers` workers (unset: from
/// `TOKIO_WORKER_THREADS`, else one per CPU this process may use), or the
/// reason printed and the exit code.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    plumbing::runtime::build(workers).map_err(|e| {
        eprintln!("ingest: {e}");
        ExitCode::FAILURE
    })
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The certificate and key are checked before anything listens.
    let tls = match config
        .server
        .tls
        .as_ref()
        .map(|t| Tls::load(t, "server.tls", config.asks_client_certificates()))
    {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(problems)) => return config_failure(path, problems),
    };
    plumbing::init_logs(config.log.format, "INGEST_LOG");
    let runtime = match runtime(config.server.worker_threads) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let workers = runtime.metrics().num_workers();
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, workers, sources = config.sources.len(), topic = %config.kafka.topic, "listening");
        // One machine-readable line on stdout for scripts and test harnesses.
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        ingest::server::serve(config, listener, tls, ingest::server::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ingest poll`: one task per source with a `poll` table, the raw-topic
/// producer and the cursor topic shared, `/metrics` on
/// `poller.metrics_listen`.
fn poll(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // No webhook secret is read: the poller verifies no webhook.
    let sources: std::collections::HashMap<String, std::sync::Arc<Source>> = config
        .sources
        .iter()
        .map(|(name, sc)| {
            (
                name.clone(),
                std::sync::Arc::new(Source::for_polling(name, sc)),
            )
        })
        .collect();
    let mut polled = Vec::new();
    let mut problems = Vec::new();
    for (name, src) in &config.sources {
        if let Some(poll) = &src.poll {
            match poll.token() {
                Ok(token) => polled.push((sources[name].clone(), poll.clone(), token)),
                Err(e) => problems.push(format!("sources.{name}.poll: {e}")),
            }
        }
    }
    if polled.is_empty() {
        problems.push("sources: no source has a `poll` table; nothing to poll".into());
    }
    if !problems.is_empty() {
        return config_failure(path, problems);
    }
    plumbing::init_logs(config.log.format, "INGEST_LOG");
    let runtime = match runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(run_poller(config, polled));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest poll: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn poller_name(p: &ingest::poller::SourcePoller) -> String {
    p.source_name().to_string()
}

/// `ingest unfillable`: every gap the provider could not fill, one line
/// each, from the unfillable topic.
fn unfillable(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match ingest::poller::cursor::CursorStore::new(
        &config.kafka,
        &config.poller.cursor_topic,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ingest unfillable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let topic = &config.poller.unfillable_topic;
    match store.read_latest(topic, std::time::Duration::from_secs(30)) {
        Ok(records) => {
            let mut gaps: Vec<ingest::poller::gaps::Unfillable> = records
                .values()
                .filter_map(|v| serde_json::from_slice(v).ok())
                .collect();
            gaps.sort_by(|a, b| {
                (&a.source, &a.ordering_key, a.from_sequence).cmp(&(
                    &b.source,
                    &b.ordering_key,
                    b.from_sequence,
                ))
            });
            for g in &gaps {
                let missing: Vec<String> = g.missing.iter().map(i64::to_string).collect();
                println!(
                    "{} {} sequences {}-{}: missing {}",
                    g.source,
                    g.ordering_key,
                    g.from_sequence,
                    g.to_sequence,
                    missing.join(",")
                );
            }
            println!("{} unfillable gaps", gaps.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ingest unfillable: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The poller's `/readyz`: 200 while its last probe reached the brokers
/// and found the raw topic (what it polls can be written), else 503.
fn poller_ready(
    producer: &ingest::producer::KafkaProducer,
) -> (axum::http::StatusCode, &'static str) {
    if producer.is_ready() {
        (axum::http::StatusCode::OK, "ready")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the brokers are unreachable or the raw topic is missing",
        )
    }
}

async fn run_poller(
    config: Config,
    polled: Vec<(
        std::sync::Arc<Source>,
        ingest::poller::config::PollConfig,
        ingest::secret::Secret,
    )>,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    let metrics = ingest::poller::PollMetrics::new()?;
    let producer = Arc::new(ingest::producer::KafkaProducer::new(
        &config.kafka,
        &config.server,
        ingest::metrics::Metrics::new()?,
    )?);
    let cursors = Arc::new(ingest::poller::cursor::CursorStore::new(
        &config.kafka,
        &config.poller.cursor_topic,
    )?);
    let loader = cursors.clone();
    let mut stored =
        tokio::task::spawn_blocking(move || loader.load_all(std::time::Duration::from_secs(30)))
            .await??;
    let listener = tokio::net::TcpListener::bind(config.poller.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.poller.metrics_listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(producer.clone().supervise(stop_rx.clone()));
    let catalogue = metrics.catalogue.clone();
    let ready = producer.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let c = catalogue.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        c.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || async move { poller_ready(&ready) }),
        );
    let mut stop_metrics = stop_rx.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_metrics.changed().await;
            })
            .await;
    });
    let delivery_timeout = config
        .kafka
        .delivery_timeout
        .unwrap_or(config.server.request_timeout);
    let mut tasks = tokio::task::JoinSet::new();
    let mut routes = std::collections::HashMap::new();
    for (source, poll, token) in polled {
        let cursor = stored.remove(&*source.name);
        let wants_gaps = config.poller.reconcile_topic.is_some() && poll.range_url.is_some();
        let poller = ingest::poller::SourcePoller::new(
            source,
            poll,
            token,
            producer.clone(),
            cursors.clone(),
            delivery_timeout,
            metrics.clone(),
            cursor,
        )?;
        let poller = if wants_gaps {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            routes.insert(poller_name(&poller), tx);
            poller.with_gaps(rx, &config.poller.unfillable_topic)
        } else {
            poller
        };
        tasks.spawn(poller.run(stop_rx.clone()));
    }
    if let Some(topic) = config.poller.reconcile_topic.clone() {
        let kafka = config.kafka.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = ingest::poller::gaps::follow(&kafka, &topic, routes, stop).await {
                tracing::error!(%topic, error = %e, "cannot read the reconcile topic: gaps are not fetched");
            }
        });
    }
    tracing::info!(%addr, sources = tasks.len(), "poller started");
    // One machine-readable line on stdout for scripts and test harnesses.
    println!("poller metrics on http://{addr}");
    ingest::server::shutdown_signal().await;
    tracing::info!("shutting down: a page cut short is read again after a restart");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let p = producer.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush(std::time::Duration::from_secs(10))).await;
    Ok(())
}
