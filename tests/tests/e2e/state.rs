//! Partition state that follows its partition to another host: each
//! instance has its own data folder and its own sink file, as on two hosts
//! that share nothing but the brokers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::{Broker, Processor, processors_config, produce, purple_envelope, sink_lines};

/// One instance "on its own host": its data folder and its sink file.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    fn sink(&self) -> std::path::PathBuf {
        self.dir.path().join("sink.jsonl")
    }

    fn config(&self, broker: &Broker, topic: &str, extra: &str) -> String {
        processors_config(
            &broker.brokers(),
            topic,
            &format!("g-{topic}"),
            &self.dir.path().join("data/dedupe.redb"),
            &self.sink(),
            extra,
        )
    }

    /// (event id, sequence, late) of each line of its sink, in order.
    fn applied(&self) -> Vec<(String, i64, bool)> {
        sink_lines(&self.sink())
            .iter()
            .map(|l| {
                (
                    l["event_id"].as_str().unwrap_or_default().to_owned(),
                    l["sequence"].as_i64().unwrap_or(-1),
                    l["late"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }
}

async fn wait_until(what: &str, within: Duration, logs: &[&Processor], done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!("{what}: not within {within:?}\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn record(venue: &str, id: &str, seq: u64) -> (Vec<u8>, Vec<u8>) {
    (
        venue.as_bytes().to_vec(),
        purple_envelope(id, venue, seq, None),
    )
}

/// Host A applies a venue's events 1 to 5 and holds 7 (6 is missing) when
/// it stops; host B, with nothing of A's files, takes the partition over.
/// The provider then re-sends 3 (already applied on A) and sends 6. B must
/// know what A applied and where the venue's sequence stood: it drops the
/// retry, and applies 6 then 7, in order and not late. Without the state
/// B would start the venue at 7, apply 3 again, and take 6 as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_to_another_host_keeps_its_ledger_and_sequence() {
    let broker = Broker::start();
    for (t, n) in [("s-move", 1), ("s-move.quarantine", 1), ("s-move.dlq", 1)] {
        broker.create_topic(t, n).await;
    }
    let (host_a, host_b) = (Host::new(), Host::new());
    let extra = "gap_timeout = \"60s\"";
    let v = "venue-move";
    let mut a = Processor::start(&host_a.config(&broker, "s-move", extra));
    let first: Vec<_> = (1..=5)
        .map(|s| record(v, &format!("mv-{s}"), s))
        .chain([record(v, "mv-7", 7)])
        .collect();
    produce(&broker.brokers(), "s-move", &first).await;
    wait_until(
        "host A applied 1 to 5",
        Duration::from_secs(30),
        &[&a],
        || host_a.applied().len() >= 5,
    )
    .await;
    // 7 waits for 6 on A; let A write its state, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.stop(Duration::from_secs(20)).success(), "{}", a.log());
    assert_eq!(
        host_a
            .applied()
            .iter()
            .map(|(id, ..)| id.as_str())
            .collect::<Vec<_>>(),
        ["mv-1", "mv-2", "mv-3", "mv-4", "mv-5"],
        "host A applies 1 to 5 and holds 7"
    );

    let b = Processor::start(&host_b.config(&broker, "s-move", extra));
    produce(
        &broker.brokers(),
        "s-move",
        &[record(v, "mv-3", 3), record(v, "mv-6", 6)],
    )
    .await;
    wait_until(
        "host B applied 6 and 7",
        Duration::from_secs(30),
        &[&b],
        || host_b.applied().len() >= 2,
    )
    .await;
    // Anything more (the retry of 3) would come right after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        host_b.applied(),
        [("mv-6".to_owned(), 6, false), ("mv-7".to_owned(), 7, false)],
        "host B: 6 then 7 in order, the retry of 3 dropped\n{}",
        b.log()
    );
    let restored = b.metric("processors_state_restored_records_total").await;
    assert!(restored >= 3.0, "B restored {restored} records");
}

/// Two instances on two "hosts" share a 4-partition topic while a second
/// instance joins and leaves (partitions move there and back), and the
/// provider re-sends events that were already applied, after each move.
/// Across both hosts' sinks, every event is applied exactly once, each
/// venue in order and none late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_partitions_move_between_hosts_are_applied_nowhere_again() {
    let broker = Broker::start();
    for (t, n) in [("s-join", 4), ("s-join.quarantine", 1), ("s-join.dlq", 1)] {
        broker.create_topic(t, n).await;
    }
    let (host_a, host_b) = (Host::new(), Host::new());
    let extra = "gap_timeout = \"60s\"\nbatch_max = 20";
    let venues: Vec<String> = (0..8).map(|i| format!("venue-j{i}")).collect();
    let batch = |from: u64, to: u64| -> Vec<(Vec<u8>, Vec<u8>)> {
        (from..=to)
            .flat_map(|s| {
                venues
                    .iter()
                    .map(move |v| record(v, &format!("{v}-{s}"), s))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let all = |n: usize| {
        let a = host_a.applied();
        let b = host_b.applied();
        a.len() + b.len() >= n
    };
    let a = Processor::start(&host_a.config(&broker, "s-join", extra));
    produce(&broker.brokers(), "s-join", &batch(1, 10)).await;
    wait_until(
        "A applied the first 80",
        Duration::from_secs(30),
        &[&a],
        || all(80),
    )
    .await;
    // B joins: about half the partitions move to it. The provider then
    // re-sends 1 to 10 and sends 11 to 20.
    let mut b = Processor::start(&host_b.config(&broker, "s-join", extra));
    wait_until(
        "B got partitions",
        Duration::from_secs(30),
        &[&a, &b],
        || b.log().contains("partitions assigned"),
    )
    .await;
    produce(&broker.brokers(), "s-join", &batch(1, 20)).await;
    wait_until("160 applied", Duration::from_secs(60), &[&a, &b], || {
        all(160)
    })
    .await;
    // B leaves: its partitions come back to A, which must know what B
    // applied. Re-sent again: 1 to 20, and new: 21 to 30.
    let dropped_b = b.metric("processors_duplicates_dropped_total").await;
    assert!(b.stop(Duration::from_secs(20)).success(), "{}", b.log());
    produce(&broker.brokers(), "s-join", &batch(1, 30)).await;
    wait_until("240 applied", Duration::from_secs(60), &[&a], || all(240)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    // Per venue, order holds within each host's file and across the moves:
    // a venue's events on B come between those on A, so compare each
    // host's sequence per venue separately and the union for once-ness.
    for host in [&host_a, &host_b] {
        last.clear();
        for (id, seq, late) in host.applied() {
            assert!(seen.insert(id.clone()), "{id} applied twice");
            assert!(!late, "{id} late");
            let venue = id.rsplit_once('-').map(|(v, _)| v.to_owned()).unwrap();
            if let Some(prev) = last.insert(venue.clone(), seq) {
                assert!(seq > prev, "{venue}: {seq} after {prev}");
            }
        }
    }
    assert_eq!(seen.len(), 240, "every event once across both hosts");
    let dropped_a = a.metric("processors_duplicates_dropped_total").await;
    assert_eq!(
        dropped_a + dropped_b,
        240.0,
        "the 240 re-sent events were dropped as duplicates"
    );
    eprintln!(
        "480 records (240 events, 240 provider retries re-sent after the moves): host A applied {}, host B {}; duplicates dropped: A {dropped_a}, B {dropped_b}",
        host_a.applied().len(),
        host_b.applied().len()
    );
}

/// A state topic that does not match the raw topic (another partition
/// count: its partitions would not line up with the raw topic's) stops the
/// start with one line naming the field, the topic and both counts; a
/// missing raw topic does too. Nothing is created or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_topics_that_do_not_match_the_raw_topic_stop_the_start_naming_both_counts() {
    let broker = Broker::start();
    for (t, n) in [
        ("s-bad", 2),
        ("s-bad.quarantine", 1),
        ("s-bad.dlq", 1),
        ("g-s-bad-state", 3),
    ] {
        broker.create_topic(t, n).await;
    }
    let host = Host::new();
    let dir = tempfile::tempdir().unwrap();
    let run = |topic: &str| {
        let path = dir.path().join(format!("{topic}.toml"));
        std::fs::write(&path, host.config(&broker, topic, "")).unwrap();
        let path = path.display().to_string();
        // Every config names its group after the topic ("g-<topic>").
        e2e::run_processors(&["run", "--config", &path], &[], Duration::from_secs(60))
    };
    let done = run("s-bad");
    assert!(!done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr.contains(
            "state.changelog_topic: \"g-s-bad-state\" has 3 partitions, the raw topic \"s-bad\" has 2"
        ),
        "{}",
        done.stderr
    );
    // A compacted ledger would keep every batch for ever; a changelog
    // deleted by time would lose a quiet venue's sequence.
    for (t, n) in [
        ("s-policy", 1),
        ("s-policy.quarantine", 1),
        ("s-policy.dlq", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    broker
        .create_topic_with("g-s-policy-ledger", 1, &[("cleanup.policy", "compact")])
        .await;
    let done = run("s-policy");
    assert!(!done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr.contains(
            "state.ledger_topic: \"g-s-policy-ledger\" has cleanup.policy=compact, it must be delete"
        ),
        "{}",
        done.stderr
    );
    let done = run("s-missing");
    assert!(!done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("kafka.topic: the raw topic \"s-missing\" does not exist"),
        "{}",
        done.stderr
    );
}

/// A sink's key that is gone (a device that left) is written as a Kafka
/// tombstone, so a compacting broker removes the key (a device id) after
/// `delete.retention.ms`; its fencing bytes ride in a header, and a
/// restore reads it back exactly as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_key_is_a_kafka_tombstone_read_back_as_written() {
    use processors::state::Changelog;
    use processors::state::changelog::{Change, Keyed};
    let broker = Broker::start();
    broker.create_topic("s-gone", 1).await;
    let host = Host::new();
    let config = processors::config::Config::from_toml(&host.config(&broker, "s-gone-raw", ""))
        .expect("config");
    let log = processors::kafka::changelog::KafkaChangelog::new(&config.kafka, "s-gone")
        .expect("changelog");
    let keyed = |value: Option<Vec<u8>>| {
        Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: b"Dvenue-1\x1fdev_0001".to_vec(),
            value,
        })
        .encode(5)
    };
    let written = vec![keyed(Some(b"present".to_vec())), keyed(None)];
    let offsets = log.append(0, written.clone()).await.expect("append");
    assert_eq!(offsets, [0, 1]);
    let mut read = Vec::new();
    let mut each = |_: i64, k: &[u8], v: &[u8]| {
        read.push((k.to_vec(), v.to_vec()));
        Ok(())
    };
    log.read(0, 0, 1, &mut each).await.expect("read");
    assert_eq!(read, written, "read back as written");
    let raw = e2e::read_topic(&broker.brokers(), "s-gone").await;
    assert!(!raw[0].value.is_empty());
    assert!(raw[1].value.is_empty(), "no value: a tombstone");
    assert_eq!(
        raw[1]
            .headers
            .iter()
            .find(|(k, _)| k == "state-gone")
            .map(|(_, v)| v.clone()),
        Some(written[1].1.clone())
    );
}
