//! Static group membership (`kafka.instance_id`, Kafka's
//! `group.instance.id`, KIP-345) against the real broker: one of two
//! instances restarted with SIGTERM under the same id gets its partitions
//! back and the other sees no rebalance; the same restart with static
//! membership off moves partitions (so the first test can fail).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{
    Broker, Processor, json_log_lines, processors_config, produce, purple_envelope, sink_lines,
};

/// The partitions of each "partitions assigned" line of a JSON log, in
/// order.
fn assignments(log: &str) -> Vec<Vec<i32>> {
    json_log_lines(log)
        .iter()
        .filter(|l| l["fields"]["message"] == "partitions assigned")
        .map(|l| {
            l["fields"]["assigned"]
                .as_str()
                .unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
        .collect()
}

/// How many "partitions revoked" lines a JSON log has.
fn revocations(log: &str) -> usize {
    json_log_lines(log)
        .iter()
        .filter(|l| l["fields"]["message"] == "partitions revoked: handing over")
        .count()
}

/// The rebalance lines of a log (assigned and revoked), as text, for
/// failure messages and the before/after comparison.
fn rebalance_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("partitions assigned") || l.contains("partitions revoked"))
        .map(str::to_owned)
        .collect()
}

/// An instance's config: its own dedupe file and sink in `dir/<name>/`,
/// `instance_id` as given, JSON logs (the assigned partitions are read
/// from them).
fn config(broker: &Broker, topic: &str, dir: &Path, name: &str, instance_id: &str) -> String {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).expect("instance folder");
    let text = processors_config(
        &broker.brokers(),
        topic,
        &format!("{topic}-group"),
        &own.join("dedupe.redb"),
        &own.join("sink.jsonl"),
        "",
    );
    assert!(text.contains("instance_id = \"\""), "{text}");
    format!(
        "{}\n[log]\nformat = \"json\"\n",
        text.replace(
            "instance_id = \"\"",
            &format!("instance_id = {instance_id:?}")
        )
    )
}

/// Waits (bounded) until `done` holds, polling every 100 ms.
async fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl AsyncFnMut() -> bool,
    logs: &[&Processor],
) {
    let deadline = Instant::now() + within;
    while !done().await {
        if Instant::now() > deadline {
            let logs: Vec<String> = logs
                .iter()
                .map(|p| rebalance_lines(&p.log()).join("\n"))
                .collect();
            panic!(
                "{what}: not within {within:?}; rebalance lines:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records to produce, `(key, value)`.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Waits (bounded) until neither instance has logged a rebalance line for
/// two of librdkafka's 3 s heartbeats (a rebalance under way reaches each
/// member at its next heartbeat) and each owns two partitions.
async fn settle(a: &Processor, b: &Processor) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lines = rebalance_lines(&a.log()).len() + rebalance_lines(&b.log()).len();
        tokio::time::sleep(Duration::from_secs(7)).await;
        let now = rebalance_lines(&a.log()).len() + rebalance_lines(&b.log()).len();
        if now == lines
            && a.metric("processors_assigned_partitions").await == 2.0
            && b.metric("processors_assigned_partitions").await == 2.0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle:\nA:\n{}\nB:\n{}",
            rebalance_lines(&a.log()).join("\n"),
            rebalance_lines(&b.log()).join("\n")
        );
    }
}

/// Events on 8 venues (so on every one of 4 partitions), ids `tag-N`,
/// each venue's sequence going on from `round * n / 8`.
fn events(tag: &str, n: u64, round: u64) -> (Records, HashSet<String>) {
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    for i in 0..n {
        let venue = format!("venue-{}", i % 8);
        let id = format!("{tag}-{i}");
        records.push((
            venue.clone().into_bytes(),
            purple_envelope(&id, &venue, round * n / 8 + i / 8 + 1, None),
        ));
        ids.insert(id);
    }
    (records, ids)
}

/// The event ids in both instances' sinks, each counted.
fn sunk(dir: &Path) -> Vec<String> {
    ["a", "b"]
        .iter()
        .flat_map(|name| sink_lines(&dir.join(name).join("sink.jsonl")))
        .filter_map(|l| l["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// What one restart of instance A, beside instance B, did.
struct Restart {
    /// A's partitions before it stopped.
    a_before: Vec<i32>,
    /// Every assignment the restarted A logged.
    a_after: Vec<Vec<i32>>,
    /// B's rebalance log lines after A was told to stop.
    b_after: Vec<String>,
    /// B's revocations after A was told to stop.
    b_revocations: usize,
    /// B's partitions at the end (`processors_assigned_partitions`).
    b_partitions: f64,
}

/// Two instances (`ids`: A's and B's `kafka.instance_id`) share a
/// 4-partition topic; A is stopped with SIGTERM and started again with
/// the same config while events flow. Answers what A and B saw.
async fn restart_a_beside_b(topic: &str, ids: [&str; 2]) -> Restart {
    let broker = Broker::start();
    broker.create_topic(topic, 4).await;
    broker.create_topic(&format!("{topic}.quarantine"), 1).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let config_a = config(&broker, topic, dir.path(), "a", ids[0]);
    let config_b = config(&broker, topic, dir.path(), "b", ids[1]);

    let mut a = Processor::start(&config_a);
    let b = Processor::start(&config_b);
    wait_until(
        "each instance owns two partitions",
        Duration::from_secs(90),
        async || {
            a.metric("processors_assigned_partitions").await == 2.0
                && b.metric("processors_assigned_partitions").await == 2.0
        },
        &[&a, &b],
    )
    .await;
    let (first, mut ids_all) = events("before", 64, 0);
    produce(&broker.brokers(), topic, &first).await;
    wait_until(
        "the first events handled",
        Duration::from_secs(60),
        async || sunk(dir.path()).len() >= first.len(),
        &[&a, &b],
    )
    .await;
    settle(&a, &b).await;
    // The last assignments of both cover the topic once.
    let a_before = assignments(&a.log()).pop().expect("A was assigned");
    let b_before = assignments(&b.log()).pop().expect("B was assigned");
    let mut all: Vec<i32> = a_before.iter().chain(&b_before).copied().collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3], "A {a_before:?}, B {b_before:?}");
    let b_lines_before = rebalance_lines(&b.log()).len();
    let b_revocations_before = revocations(&b.log());

    let status = a.stop(Duration::from_secs(30));
    assert!(status.success(), "A exited {status}:\n{}", a.log());
    let a2 = Processor::start(&config_a);
    wait_until(
        "the restarted A owns partitions again",
        Duration::from_secs(40),
        async || a2.metric("processors_assigned_partitions").await > 0.0,
        &[&a2, &b],
    )
    .await;
    let (second, more) = events("after", 64, 1);
    ids_all.extend(more);
    produce(&broker.brokers(), topic, &second).await;
    wait_until(
        "every event handled",
        Duration::from_secs(90),
        async || sunk(dir.path()).len() >= ids_all.len(),
        &[&a2, &b],
    )
    .await;
    // Two of librdkafka's 3 s heartbeats: a rebalance A's return caused
    // would have reached B by then.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let got = sunk(dir.path());
    let distinct: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(distinct, ids_all, "every event reached a sink");
    assert_eq!(got.len(), distinct.len(), "no event twice");
    let b_log = b.log();
    Restart {
        a_before,
        a_after: assignments(&a2.log()),
        b_after: rebalance_lines(&b_log)[b_lines_before..].to_vec(),
        b_revocations: revocations(&b_log) - b_revocations_before,
        b_partitions: b.metric("processors_assigned_partitions").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_within_the_session_timeout_keeps_its_partitions_and_the_other_sees_no_rebalance()
 {
    let r = restart_a_beside_b("sm-static", ["proc-a", "proc-b"]).await;
    assert!(
        r.b_after.is_empty(),
        "B saw a rebalance when A restarted:\n{}",
        r.b_after.join("\n")
    );
    assert_eq!(r.b_partitions, 2.0);
    assert_eq!(
        r.a_after,
        std::slice::from_ref(&r.a_before),
        "the restarted A got its own partitions back, in one assignment"
    );
    eprintln!(
        "A owned {:?}, restarted, got {:?}; B: no rebalance line",
        r.a_before, r.a_after
    );
}

/// The control: with static membership off, A's stop sends LeaveGroup
/// and the group rebalances, so B revokes (stops) its partitions and is
/// assigned again; the test above would see that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_static_membership_the_same_restart_rebalances_the_other_instance() {
    let r = restart_a_beside_b("sm-dynamic", ["", ""]).await;
    assert!(
        r.b_revocations >= 1,
        "B saw no rebalance with static membership off:\n{}",
        r.b_after.join("\n")
    );
    eprintln!(
        "A owned {:?}; B after A's stop and restart:\n{}",
        r.a_before,
        r.b_after.join("\n")
    );
}

/// What KIP-345 promises for an instance that does not come back: after
/// `session_timeout` its partitions go to the others. tansu 0.6 does not
/// do it (seen with this test: B rejoins 45 s after A's stop and gets only
/// its own two partitions back; A's two stay unassigned for as long as
/// one waits, and A coming back under its id then leaves both instances
/// with nothing). Run it with `--run-ignored only` against a broker that
/// expires static members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6 keeps a departed static member's assignment after the session timeout: the survivor rejoins with only its own partitions"]
async fn a_static_member_gone_longer_than_the_session_timeout_hands_its_partitions_to_the_other() {
    let topic = "sm-gone";
    let broker = Broker::start();
    broker.create_topic(topic, 4).await;
    broker.create_topic(&format!("{topic}.quarantine"), 1).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut a = Processor::start(&config(&broker, topic, dir.path(), "a", "proc-a"));
    let b = Processor::start(&config(&broker, topic, dir.path(), "b", "proc-b"));
    wait_until(
        "each instance owns two partitions",
        Duration::from_secs(90),
        async || {
            a.metric("processors_assigned_partitions").await == 2.0
                && b.metric("processors_assigned_partitions").await == 2.0
        },
        &[&a, &b],
    )
    .await;
    let status = a.stop(Duration::from_secs(30));
    assert!(status.success(), "A exited {status}:\n{}", a.log());
    // The default session timeout is 45 s; B hears of it at its next
    // heartbeat and rejoins.
    wait_until(
        "B owns all four partitions after A's session timed out",
        Duration::from_secs(90),
        async || b.metric("processors_assigned_partitions").await == 4.0,
        &[&b],
    )
    .await;
    let (records, ids) = events("late", 64, 0);
    produce(&broker.brokers(), topic, &records).await;
    wait_until(
        "B handled the events of every partition",
        Duration::from_secs(60),
        async || sunk(dir.path()).len() >= ids.len(),
        &[&b],
    )
    .await;
}
