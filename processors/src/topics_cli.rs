//! `processors topics apply|check|strimzi`: the topic definitions
//! (`processors::topics`) against the brokers (`processors::kafka::topics`),
//! printed one line per topic and finding. Exit codes: 0 every topic exists
//! as defined; 1 a topic differs, or is missing (`check`) or was not
//! created (`apply`); 2 bad configuration or arguments, or a replication
//! factor above the broker count; 3 the brokers could not be asked or a
//! creation failed; 4 nothing differs but the brokers did not report some
//! setting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use processors::config::Config;
use processors::kafka::topics as broker;
use processors::topics::{self, Standing, TopicSpec};

/// `processors topics ...`.
#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic as defined; report how each existing
    /// topic differs, and change none.
    Apply(BrokerArgs),
    /// Report how each topic differs from its definition; change nothing.
    Check(BrokerArgs),
    /// Print the Strimzi KafkaTopic resources of the definitions.
    Strimzi {
        /// The TOML configuration file.
        #[arg(short, long, env = "PROCESSORS_CONFIG")]
        config: PathBuf,
        /// The Strimzi Kafka cluster (the `strimzi.io/cluster` label).
        #[arg(long, default_value = "pipeline")]
        cluster: String,
        #[command(flatten)]
        ingest: IngestArg,
    },
}

/// Ingest's configuration, for the topics `ingest poll` uses.
#[derive(Args)]
pub struct IngestArg {
    /// Ingest's TOML configuration: adds the poller's cursor and
    /// unfillable-gap topics when it polls, and checks that it writes the
    /// raw topic the processors read.
    #[arg(long, env = "INGEST_CONFIG")]
    ingest_config: Option<PathBuf>,
}

/// Every topic definition: the processors' `config`, then what ingest's
/// file adds; or every problem, one line each.
fn definitions(config: &Config, ingest: &IngestArg) -> Result<Vec<TopicSpec>, Vec<String>> {
    let mut specs = config.topic_definitions();
    let Some(path) = &ingest.ingest_config else {
        return Ok(specs);
    };
    let shown = path.display().to_string();
    let ingest: topics::IngestTopics = plumbing::load_config(path, "INGEST_").map_err(|p| {
        p.into_iter()
            .map(|l| format!("{shown}: {l}"))
            .collect::<Vec<_>>()
    })?;
    let problems = ingest.problems(
        &shown,
        &config.kafka.topic,
        config.kafka.reconcile_topic.as_deref(),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    specs.extend(ingest.definitions(&config.topics));
    Ok(specs)
}

/// The arguments of the commands that ask the brokers.
#[derive(Args)]
pub struct BrokerArgs {
    /// The TOML configuration file (the one `run` uses).
    #[arg(short, long, env = "PROCESSORS_CONFIG")]
    config: PathBuf,
    /// Longest wait for each broker answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    ingest: IngestArg,
}

/// Runs one `topics` subcommand.
pub fn topics(command: TopicsCommand) -> ExitCode {
    let (args, apply) = match command {
        TopicsCommand::Strimzi {
            config,
            cluster,
            ingest,
        } => {
            let specs = match Config::load_for_topics(&config) {
                Ok(c) => definitions(&c, &ingest),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            return match specs {
                Ok(specs) => {
                    let mut source = config.display().to_string();
                    if let Some(i) = &ingest.ingest_config {
                        source = format!("{source} --ingest-config {}", i.display());
                    }
                    print!("{}", topics::strimzi_yaml(&specs, &cluster, &source));
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    ExitCode::from(2)
                }
            };
        }
        TopicsCommand::Apply(args) => (args, true),
        TopicsCommand::Check(args) => (args, false),
    };
    let config = match Config::load_for_topics(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    plumbing::init_logs(config.log.format, "PROCESSORS_LOG");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let specs = match definitions(&config, &args.ingest) {
        Ok(s) => s,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(run(&config, specs, apply, args.timeout));
    rt.shutdown_timeout(Duration::from_millis(200));
    ExitCode::from(code)
}

async fn run(config: &Config, specs: Vec<TopicSpec>, apply: bool, timeout: Duration) -> u8 {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let cluster = match broker::observe(&config.kafka, &names, timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kafka.brokers {:?}: {e}", config.kafka.brokers);
            return 3;
        }
    };
    let standings = topics::compare(&specs, &cluster.topics);
    let missing: Vec<&TopicSpec> = standings
        .iter()
        .filter(|(_, s)| *s == Standing::Missing)
        .map(|(t, _)| t)
        .collect();
    if !missing.is_empty()
        && let Some(problem) = topics::cluster_problem(&config.topics, cluster.brokers)
    {
        eprintln!(
            "{problem}: {} cannot be created as defined{}",
            missing
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if apply { "; nothing was created" } else { "" }
        );
        return 2;
    }
    let created = if apply {
        broker::create(&config.kafka, &missing, timeout).await
    } else {
        Vec::new()
    };
    let (mut ok, mut differ, mut unverified, mut failed) = (0, 0, 0, 0);
    for (spec, standing) in &standings {
        let at = format!("{} ({})", spec.name, spec.role.field());
        match standing {
            Standing::Exists(findings) if findings.is_empty() => {
                ok += 1;
                println!("{at}: ok");
            }
            Standing::Exists(findings) => {
                let differs = findings.iter().any(topics::Finding::differs);
                if differs {
                    differ += 1;
                    println!("{at}: differs, left as it is:");
                } else {
                    unverified += 1;
                    println!("{at}: no difference seen, but not every setting was reported:");
                }
                for f in findings {
                    println!("  {f}");
                }
            }
            Standing::Missing if !apply => {
                differ += 1;
                println!(
                    "{at}: missing (apply creates it: {})",
                    topics::summary(spec)
                );
            }
            Standing::Missing => match created.iter().find(|(n, _)| *n == spec.name) {
                Some((_, Ok(()))) => {
                    ok += 1;
                    println!("{at}: created: {}", topics::summary(spec));
                }
                Some((_, Err(e))) => {
                    failed += 1;
                    println!("{at}: not created: {e}");
                }
                None => {
                    failed += 1;
                    println!("{at}: not created");
                }
            },
            Standing::Blocked(why) => {
                differ += 1;
                println!("{at}: missing, not created: {why}");
            }
        }
    }
    println!(
        "{} topics: {ok} as defined, {differ} differing or missing, {unverified} not fully reported, {failed} failed",
        standings.len()
    );
    if failed > 0 {
        3
    } else if differ > 0 {
        1
    } else if unverified > 0 {
        4
    } else {
        0
    }
}
