//! `processors topics apply|check` against a real tansu broker, through
//! the real binary:
//!
//! - `check` on an empty broker names every topic missing; `apply` creates
//!   each as defined (partitions, replication factor and configs read back
//!   with rdkafka's AdminClient, not through the command); `check` is then
//!   clean;
//! - a topic created outside with another partition count and cleanup
//!   policy is reported by `check` and `apply` (exit 1), and `apply` leaves
//!   it as it was;
//! - a topic whose configs the broker does not report (tansu reports only
//!   what was set at creation) is not claimed to match (exit 4);
//! - a replication factor above the broker count, an unreachable broker and
//!   a bad retention each give one line naming the problem, and create
//!   nothing;
//! - against a broker that requires SCRAM, the admin client takes
//!   `[kafka.security]` like every other client: a wrong password ends in
//!   exit 3 and is never printed, the right one creates and checks.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{Broker, run_processors};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const RUN_FOR: Duration = Duration::from_secs(60);

/// A processors config naming the topics `{p}.raw`, `{p}.quarantine`,
/// `{p}.dlq`, `{p}-state` and `{p}-ledger`, with `topics` as its
/// `[topics]` table.
fn config(dir: &tempfile::TempDir, brokers: &str, p: &str, topics: &str) -> String {
    let path = dir.path().join("processors.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{p}"
topic = "{p}.raw"
quarantine_topic = "{p}.quarantine"
dlq_topic = "{p}.dlq"

[topics]
{topics}

[dedupe]
path = "{dir}/dedupe.redb"
window = "72h"

[sinks.log]
kind = "log"

[[routes]]
name = "all"
sinks = ["log"]
"#,
            dir = dir.path().display()
        ),
    )
    .expect("writing the config");
    path.display().to_string()
}

/// A topic as the broker describes it to an independent client:
/// (partitions, replicas of partition 0, reported configs).
type Described = (usize, usize, BTreeMap<String, Option<String>>);

async fn describe(brokers: &str, topic: &str) -> Option<Described> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let (partitions, replicas) = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .expect("metadata client");
        let md = c
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .expect("metadata");
        md.topics()
            .iter()
            .find(|x| x.name() == t && x.error().is_none() && !x.partitions().is_empty())
            .map(|x| (x.partitions().len(), x.partitions()[0].replicas().len()))
            .unzip()
    })
    .await
    .expect("metadata thread");
    let (partitions, replicas) = (partitions?, replicas?);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("DescribeConfigs")
        .remove(0)
        .expect("the topic's configs")
        .entries
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    Some((partitions, replicas, configs))
}

fn config_of(d: &Described, key: &str) -> Option<String> {
    d.2.get(key).cloned().flatten()
}

fn lines_of(out: &str, topic: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with(&format!("{topic} (")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_every_topic_as_defined_check_is_then_clean_and_a_topic_changed_outside_is_reported_and_left_alone()
 {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temporary folder");
    let brokers = broker.brokers();
    let cfg = config(
        &dir,
        &brokers,
        "tp",
        "partitions = 4\nside_partitions = 2\nreplication_factor = 1\nmin_insync_replicas = 1\nretention = \"14d\"\nside_retention = \"30d\"",
    );
    let names = ["tp.raw", "tp.quarantine", "tp.dlq", "tp-state", "tp-ledger"];

    let check = run_processors(&["topics", "check", "--config", &cfg], &[], RUN_FOR);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    for n in names {
        let l = lines_of(&check.stdout, n);
        assert!(
            l.len() == 1 && l[0].contains(": missing (apply creates it: "),
            "{n}: {check:?}"
        );
        assert!(describe(&brokers, n).await.is_none(), "check created {n}");
    }

    let apply = run_processors(&["topics", "apply", "--config", &cfg], &[], RUN_FOR);
    assert_eq!(apply.status.code(), Some(0), "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("tp.raw (kafka.topic): created: 4 partitions, replication factor 1, cleanup.policy=delete, min.insync.replicas=1, retention.ms=1209600000\n"),
        "{apply:?}"
    );
    // Read back with a client of the test's own.
    for (n, partitions, cleanup, retention) in [
        ("tp.raw", 4, "delete", Some("1209600000")),
        ("tp.quarantine", 2, "delete", Some("2592000000")),
        ("tp.dlq", 2, "delete", Some("2592000000")),
        ("tp-state", 4, "compact", None),
        // dedupe.window 72h + a day.
        ("tp-ledger", 4, "delete", Some("345600000")),
    ] {
        let d = describe(&brokers, n)
            .await
            .unwrap_or_else(|| panic!("{n} was not created: {apply:?}"));
        assert_eq!((d.0, d.1), (partitions, 1), "{n}: {d:?}");
        assert_eq!(
            config_of(&d, "cleanup.policy").as_deref(),
            Some(cleanup),
            "{n}: {d:?}"
        );
        assert_eq!(
            config_of(&d, "retention.ms").as_deref(),
            retention,
            "{n}: {d:?}"
        );
        assert_eq!(
            config_of(&d, "min.insync.replicas").as_deref(),
            Some("1"),
            "{n}: {d:?}"
        );
    }

    let check = run_processors(&["topics", "check", "--config", &cfg], &[], RUN_FOR);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    for n in names {
        assert_eq!(lines_of(&check.stdout, n).len(), 1, "{check:?}");
        assert!(lines_of(&check.stdout, n)[0].ends_with(": ok"), "{check:?}");
    }

    // Changed outside: the dead-letter topic created by someone else, with
    // five partitions and compaction.
    broker
        .create_topic_with("tp.dlq2", 5, &[("cleanup.policy", "compact")])
        .await;
    let env = [("PROCESSORS_KAFKA__DLQ_TOPIC", "tp.dlq2")];
    let wanted = [
        "tp.dlq2 (kafka.dlq_topic): differs, left as it is:",
        "  partitions: 5, wanted 2",
        "  cleanup.policy: compact, wanted delete",
        "  min.insync.replicas: not reported by the broker, wanted 1",
        "  retention.ms: not reported by the broker, wanted 2592000000",
    ]
    .join("\n");
    for command in ["check", "apply"] {
        let out = run_processors(&["topics", command, "--config", &cfg], &env, RUN_FOR);
        assert_eq!(out.status.code(), Some(1), "{command}: {out:?}");
        assert!(out.stdout.contains(&wanted), "{command}: {out:?}");
        assert!(
            out.stdout.contains("tp.raw (kafka.topic): ok\n"),
            "{command}: {out:?}"
        );
    }
    let d = describe(&brokers, "tp.dlq2").await.expect("tp.dlq2");
    assert_eq!(d.0, 5, "apply changed the partitions: {d:?}");
    assert_eq!(
        config_of(&d, "cleanup.policy").as_deref(),
        Some("compact"),
        "{d:?}"
    );
    assert_eq!(config_of(&d, "retention.ms"), None, "{d:?}");

    // As defined in every way the broker reports, but it reports no
    // config: not a match.
    broker.create_topic("tp.quarantine2", 2).await;
    let env = [("PROCESSORS_KAFKA__QUARANTINE_TOPIC", "tp.quarantine2")];
    let out = run_processors(&["topics", "check", "--config", &cfg], &env, RUN_FOR);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        out.stdout.contains(
            "tp.quarantine2 (kafka.quarantine_topic): no difference seen, but not every setting was reported:\n  cleanup.policy: not reported by the broker, wanted delete\n"
        ),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_settings_and_an_unreachable_broker_are_named_and_nothing_is_created() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temporary folder");
    let brokers = broker.brokers();
    // The defaults: 3 replicas, on a cluster of one broker.
    let cfg = config(&dir, &brokers, "ti", "");
    let out = run_processors(&["topics", "apply", "--config", &cfg], &[], RUN_FOR);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(
            "topics.replication_factor: 3 is more than the 1 broker(s) the cluster has: ti.raw, ti.quarantine, ti.dlq, ti-state, ti-ledger cannot be created as defined; nothing was created"
        ),
        "{out:?}"
    );
    assert!(describe(&brokers, "ti.raw").await.is_none());

    let out = run_processors(
        &["topics", "check", "--config", &cfg],
        &[("PROCESSORS_TOPICS__RETENTION", "0s")],
        RUN_FOR,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("topics.retention: must be at least 1h (got 0s)"),
        "{out:?}"
    );

    let out = run_processors(
        &["topics", "check", "--config", &cfg, "--timeout", "2s"],
        &[("PROCESSORS_KAFKA__BROKERS", "127.0.0.1:1")],
        RUN_FOR,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        out.stderr
            .starts_with("kafka.brokers \"127.0.0.1:1\": reading the cluster's metadata: "),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_check_reach_a_broker_that_requires_scram_through_kafka_security() {
    let mut broker = Broker::start();
    let password = "topics-e2e-Pa55word";
    broker.create_scram_user("pipeline", password, "scram256");
    broker.require_authentication();
    let dir = tempfile::tempdir().expect("temporary folder");
    let brokers = broker.brokers();
    let cfg = config(
        &dir,
        &brokers,
        "ts",
        "partitions = 2\nside_partitions = 1\nreplication_factor = 1\nmin_insync_replicas = 1",
    );
    let text = std::fs::read_to_string(&cfg).expect("the config");
    std::fs::write(
        &cfg,
        text.replacen(
            "dlq_topic = \"ts.dlq\"",
            "dlq_topic = \"ts.dlq\"\nsecurity = { protocol = \"sasl_plaintext\", sasl = { mechanism = \"SCRAM-SHA-256\", username = \"pipeline\", password_env = \"E2E_KAFKA_PASSWORD\" } }",
            1,
        ),
    )
    .expect("writing the config");

    let wrong = "Wr0ng-topics-Pa55";
    let out = run_processors(
        &["topics", "apply", "--config", &cfg, "--timeout", "5s"],
        &[("E2E_KAFKA_PASSWORD", wrong)],
        RUN_FOR,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("kafka.brokers {brokers:?}: ")),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(wrong) && !out.stderr.contains(wrong),
        "{out:?}"
    );

    let env = [("E2E_KAFKA_PASSWORD", password)];
    let apply = run_processors(&["topics", "apply", "--config", &cfg], &env, RUN_FOR);
    assert_eq!(apply.status.code(), Some(0), "{apply:?}");
    assert_eq!(apply.stdout.matches(": created: ").count(), 5, "{apply:?}");
    let check = run_processors(&["topics", "check", "--config", &cfg], &env, RUN_FOR);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        check.stdout.ends_with(
            "5 topics: 5 as defined, 0 differing or missing, 0 not fully reported, 0 failed\n"
        ),
        "{check:?}"
    );
    for out in [&apply, &check] {
        assert!(
            !out.stdout.contains(password) && !out.stderr.contains(password),
            "{out:?}"
        );
    }
}
