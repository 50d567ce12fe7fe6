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
    /// Simulate the guest-WiFi platform: send signed, realistic traffic and
    /// report what was acknowledged and refused.
    Send(SendArgs),
    /// Load a configuration and its secrets, report every problem, and exit
    /// non-zero if there is any.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(short, long, env = "INGEST_CONFIG")]
        config: PathBuf,
    },
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => serve(&config),
        Command::Send(args) => send(args),
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
    if let Err(e) = share("bursts", args.bursts) {
        eprintln!("ingest send: {e}");
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
    };
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
    match runtime.block_on(ingest::simulator::run(config)) {
        Ok(report) => {
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
/// checks, and every secret (read, never printed). Exit 1 on any problem.
fn check_config(path: &std::path::Path) -> ExitCode {
    let (config, mut problems) = Config::check(path);
    if let Some(config) = config {
        if let Err(p) = Source::build_all(&config) {
            problems.extend(p);
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

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
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
        Some(Err(problems)) => {
            let e = ingest::config::ConfigError {
                path: path.to_path_buf(),
                problems,
            };
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    plumbing::init_logs(config.log.format, "INGEST_LOG");
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
