//! One partition's pipeline without Kafka: real parsers, reorderer, dedupe
//! store and router; in-memory sinks and side topics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use processors::config::Config;
use processors::event::{Event, Quarantine};
use processors::metrics::Metrics;
use processors::pipeline::dedupe::{DedupeStore, MemoryDedupe};
use processors::pipeline::{PartitionPipeline, RawRecord, Shared, SideTopics, Stopped};
use processors::sinks::basic::MemorySink;
use processors::sinks::{BoxFuture, Outcome, Sink};
use schemas::{Envelope, Verification};
use tokio::sync::watch;

#[derive(Default)]
struct MemorySide {
    quarantined: Mutex<Vec<(i64, String)>>,
    dead: Mutex<Vec<(String, String)>>,
}

impl SideTopics for MemorySide {
    fn quarantine<'a>(
        &'a self,
        record: &'a RawRecord,
        _source: &'a str,
        why: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.quarantined
                .lock()
                .unwrap()
                .push((record.offset, why.reason.to_string()));
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        _record: &'a RawRecord,
        event: &'a Event,
        sink: &'a str,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.dead
                .lock()
                .unwrap()
                .push((event.event_id.clone(), sink.to_string()));
            Ok(())
        })
    }
}

const CONFIG: &str = r#"
    [kafka]
    brokers = "unused:9092"
    [processing]
    gap_timeout = "60s"
    retry_initial = "10ms"
    retry_max = "20ms"
    [dedupe]
    path = "unused"
    [sources.purple]
    parser = "guest_wifi"
    [sources.other]
    parser = "guest_wifi"
    [sinks.out]
    kind = "log"
    [[routes]]
    name = "all"
    sinks = ["out"]
"#;

fn body(id: &str, venue: &str, seq: i64) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"device_connected","sequence":{seq},"occurred_at":"2026-11-22T18:03:11Z","venue":{{"id":"{venue}"}},"device":{{"id":"d1"}}}}"#
    )
    .into_bytes()
}

fn record(offset: i64, id: &str, venue: &str, seq: i64, raw_body: Option<Vec<u8>>) -> RawRecord {
    record_from("purple", offset, id, venue, seq, raw_body)
}

fn record_from(
    source: &str,
    offset: i64,
    id: &str,
    venue: &str,
    seq: i64,
    raw_body: Option<Vec<u8>>,
) -> RawRecord {
    let env = Envelope {
        event_id: id.into(),
        source: source.into(),
        received_at_micros: 1,
        body: raw_body.unwrap_or_else(|| body(id, venue, seq)),
        headers: vec![],
        content_type: None,
        client_addr: None,
        verification: Verification {
            scheme: "hmac".into(),
            secret_id: "a".into(),
        },
        ordering_key: Some(venue.into()),
        sequence: Some(seq),
        request_id: "r".into(),
    };
    RawRecord {
        partition: 0,
        offset,
        key: Some(venue.as_bytes().to_vec()),
        payload: Arc::new(env.encode().unwrap()),
        charge: None,
    }
}

struct Rig {
    pipeline: PartitionPipeline,
    sink: Arc<MemorySink>,
    side: Arc<MemorySide>,
    dedupe: Arc<MemoryDedupe>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
}

fn rig(dedupe: Option<Arc<MemoryDedupe>>) -> Rig {
    rig_with(CONFIG, dedupe)
}

fn rig_with(config: &str, dedupe: Option<Arc<MemoryDedupe>>) -> Rig {
    build_rig(config, dedupe, None)
}

fn build_rig(
    config: &str,
    dedupe: Option<Arc<MemoryDedupe>>,
    state: Option<Arc<processors::state::Stores>>,
) -> Rig {
    let config = Config::from_toml(config).unwrap();
    let sink = Arc::new(MemorySink::new("out"));
    let side = Arc::new(MemorySide::default());
    let dedupe = dedupe.unwrap_or_else(|| Arc::new(MemoryDedupe::new(Duration::from_secs(3600))));
    let metrics = Metrics::new().unwrap();
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        vec![sink.clone() as Arc<dyn Sink>],
        dedupe.clone() as Arc<dyn DedupeStore>,
        side.clone() as Arc<dyn SideTopics>,
        metrics.clone(),
    )
    .unwrap();
    let shared = match state {
        Some(stores) => shared.with_state(stores),
        None => shared,
    };
    let (stop, stop_rx) = watch::channel(false);
    Rig {
        pipeline: PartitionPipeline::new(0, Arc::new(shared), stop_rx),
        sink,
        side,
        dedupe,
        metrics,
        stop,
    }
}

fn accepted(sink: &MemorySink) -> Vec<(String, i64, bool)> {
    sink.accepted
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.event_id.clone(), e.sequence.unwrap(), e.late))
        .collect()
}

#[tokio::test]
async fn out_of_order_and_duplicates_come_out_once_in_order_and_commit_follows() {
    let mut r = rig(None);
    // venue a: 1, 3, 2 (dup of 3 too), 4; venue b: 10, 10 again.
    let batch = vec![
        record(0, "a1", "a", 1, None),
        record(1, "a3", "a", 3, None),
        record(2, "b10", "b", 10, None),
        record(3, "a3", "a", 3, None),
    ];
    r.pipeline.handle(batch).await.unwrap();
    // a3 waits for a2: offsets 1 (and its duplicate 3, dropped) hold the commit.
    assert_eq!(r.pipeline.committable(), Some(1));
    r.pipeline
        .handle(vec![
            record(4, "a2", "a", 2, None),
            record(5, "b10", "b", 10, None),
            record(6, "a4", "a", 4, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![
            ("a1".into(), 1, false),
            ("b10".into(), 10, false),
            ("a2".into(), 2, false),
            ("a3".into(), 3, false),
            ("a4".into(), 4, false),
        ]
    );
    assert_eq!(r.pipeline.committable(), Some(7));
    assert_eq!(r.dedupe.len().unwrap(), 5);
}

#[tokio::test]
async fn a_restart_with_the_same_store_drops_what_was_applied() {
    let mut r = rig(None);
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
        ])
        .await
        .unwrap();
    // A new pipeline (restart) re-reads both plus one new record.
    let mut again = rig(Some(r.dedupe.clone()));
    again
        .pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
            record(2, "a3", "a", 3, None),
        ])
        .await
        .unwrap();
    assert_eq!(accepted(&again.sink), vec![("a3".into(), 3, false)]);
    assert_eq!(again.pipeline.committable(), Some(3));
}

#[tokio::test]
async fn malformed_bodies_are_quarantined_and_the_rest_flows() {
    let mut r = rig(None);
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "bad", "a", 2, Some(b"{not json".to_vec())),
            RawRecord {
                partition: 0,
                offset: 2,
                key: None,
                payload: Arc::new(b"garbage".to_vec()),
                charge: None,
            },
            record(3, "a3", "a", 3, None),
        ])
        .await
        .unwrap();
    // The quarantined record held sequence 2: a3 did not wait for it.
    assert_eq!(
        *r.side.quarantined.lock().unwrap(),
        vec![
            (1, "not_json".to_string()),
            (2, "envelope_undecodable".to_string())
        ]
    );
    assert_eq!(
        accepted(&r.sink),
        vec![("a1".into(), 1, false), ("a3".into(), 3, false)]
    );
    assert_eq!(r.pipeline.committable(), Some(4));
}

#[tokio::test]
async fn a_failing_sink_holds_the_offset_and_stop_abandons_the_batch() {
    let mut r = rig(None);
    *r.sink.force.lock().unwrap() = Some(Outcome::Retry("down".into()));
    let stop = r.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop.send(true);
    });
    let out = r.pipeline.handle(vec![record(0, "a1", "a", 1, None)]).await;
    assert_eq!(out, Err(Stopped));
    // Nothing done: the commit stays at the first offset, nothing recorded.
    assert_eq!(r.pipeline.position(), Some(0));
    assert_eq!(r.dedupe.len().unwrap(), 0);
}

#[tokio::test]
async fn a_rejected_event_is_dead_lettered_and_its_offset_moves_on() {
    let mut r = rig(None);
    *r.sink.force.lock().unwrap() = Some(Outcome::Reject("400 bad email".into()));
    r.pipeline
        .handle(vec![record(0, "a1", "a", 1, None)])
        .await
        .unwrap();
    assert_eq!(
        *r.side.dead.lock().unwrap(),
        vec![("a1".to_string(), "out".to_string())]
    );
    assert_eq!(r.pipeline.committable(), Some(1));
}

#[tokio::test]
async fn an_event_after_its_slot_is_flagged_late() {
    let mut r = rig(None);
    r.pipeline
        .handle(vec![
            record(0, "a5", "a", 5, None),
            record(1, "a4", "a", 4, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![("a5".into(), 5, false), ("a4".into(), 4, true)]
    );
}

#[tokio::test]
async fn a_far_ahead_sequence_does_not_make_the_rest_of_the_key_late() {
    let mut r = rig_with(&short_gap(), None);
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
            // A provider bug: one event far ahead of the venue's counter.
            record(2, "bogus", "a", 1_000_000_000, None),
        ])
        .await
        .unwrap();
    // The venue's counter goes on, after the gap timeout.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    r.pipeline
        .handle(vec![
            record(3, "a3", "a", 3, None),
            record(4, "a4", "a", 4, None),
        ])
        .await
        .unwrap();
    // Later events of the venue are not late for ever: live routes see them.
    let late: Vec<_> = accepted(&r.sink)
        .into_iter()
        .filter(|(_, _, late)| *late)
        .collect();
    assert_eq!(late, vec![], "{:?}", accepted(&r.sink));
    let a: Vec<i64> = accepted(&r.sink)
        .into_iter()
        .filter(|(id, _, _)| id != "bogus")
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(a, vec![1, 2, 3, 4]);
    assert_eq!(r.pipeline.committable(), Some(5));
}

#[tokio::test]
async fn a_provider_counter_reset_starts_the_key_again() {
    let mut r = rig(None);
    r.pipeline
        .handle(vec![
            record(0, "a50041", "a", 50_041, None),
            record(1, "a50042", "a", 50_042, None),
            // The provider lost its counter: the venue starts again at 1.
            record(2, "n1", "a", 1, None),
            record(3, "n2", "a", 2, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![
            ("a50041".into(), 50_041, false),
            ("a50042".into(), 50_042, false),
            ("n1".into(), 1, false),
            ("n2".into(), 2, false),
        ]
    );
}

#[tokio::test]
async fn a_re_delivered_far_ahead_event_is_a_duplicate_and_resets_nothing() {
    let mut r = rig(None);
    let resets = |r: &Rig| {
        ["jump_forward", "jump_backward"].map(|reason| {
            r.metrics
                .key_resets
                .with_label_values(&["purple", reason])
                .get()
        })
    };
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "bogus", "a", 1_000_000_000, None),
            record(2, "a2", "a", 2, None),
            // The provider retries the bogus event within the batch...
            record(3, "bogus", "a", 1_000_000_000, None),
            record(4, "a3", "a", 3, None),
        ])
        .await
        .unwrap();
    // ...and after it was applied.
    r.pipeline
        .handle(vec![
            record(5, "bogus", "a", 1_000_000_000, None),
            record(6, "a4", "a", 4, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![
            ("a1".into(), 1, false),
            ("bogus".into(), 1_000_000_000, false),
            ("a2".into(), 2, false),
            ("a3".into(), 3, false),
            ("a4".into(), 4, false),
        ]
    );
    // Once there and once back: the re-deliveries moved nothing.
    assert_eq!(resets(&r), [1, 1]);
    assert_eq!(r.metrics.duplicates.with_label_values(&["purple"]).get(), 2);
    assert_eq!(r.pipeline.committable(), Some(7));
}

#[tokio::test]
async fn two_sources_with_the_same_venue_id_keep_their_own_sequences() {
    let mut r = rig(None);
    r.pipeline
        .handle(vec![
            record_from("purple", 0, "p100", "v", 100, None),
            record_from("other", 1, "o1", "v", 1, None),
            record_from("other", 2, "o2", "v", 2, None),
            record_from("purple", 3, "p101", "v", 101, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![
            ("p100".into(), 100, false),
            ("o1".into(), 1, false),
            ("o2".into(), 2, false),
            ("p101".into(), 101, false),
        ]
    );
}

/// `CONFIG` with a gap timeout short enough to outlast in a test.
fn short_gap() -> String {
    CONFIG.replace("gap_timeout = \"60s\"", "gap_timeout = \"1s\"")
}

#[tokio::test]
async fn a_sink_stall_longer_than_the_gap_timeout_does_not_make_the_predecessor_late() {
    let mut r = rig_with(&short_gap(), None);
    // a1 goes to the sink, a3 waits for a2, which is in the next batch. The
    // sink asks to retry for longer than the gap timeout: the partition
    // cannot take a2 meanwhile, so a3's wait must not run out.
    *r.sink.force.lock().unwrap() = Some(Outcome::Retry("down".into()));
    let sink = r.sink.clone();
    let heal = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        *sink.force.lock().unwrap() = None;
    });
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a3", "a", 3, None),
        ])
        .await
        .unwrap();
    heal.await.unwrap();
    // The stall did not count: a3 still has most of its wait ahead.
    assert!(
        r.pipeline
            .next_deadline()
            .is_some_and(|d| d > std::time::Instant::now()),
        "a3's gap timeout ran during the stall"
    );
    r.pipeline
        .handle(vec![record(2, "a2", "a", 2, None)])
        .await
        .unwrap();
    assert_eq!(
        accepted(&r.sink),
        vec![
            ("a1".into(), 1, false),
            ("a2".into(), 2, false),
            ("a3".into(), 3, false),
        ]
    );
    assert_eq!(r.pipeline.committable(), Some(3));
}

/// The state changelog and the ledger topic, in memory.
type Logs = (
    Arc<processors::state::MemoryChangelog>,
    Arc<processors::state::MemoryChangelog>,
);

/// A pipeline "on its own host" (its own dedupe store and sink) keeping
/// its state in `logs`.
fn rig_on(logs: &Logs) -> Rig {
    let stores = processors::state::Stores {
        changelog: logs.0.clone(),
        ledger: logs.1.clone(),
        cache: None,
        owner: "test".into(),
    };
    build_rig(CONFIG, None, Some(Arc::new(stores)))
}

#[tokio::test]
async fn the_offset_moves_only_once_the_changelog_acknowledged_the_batch() {
    use processors::state::changelog::Change;
    let log: Logs = (Arc::default(), Arc::default());
    let mut r = rig_on(&log);
    r.pipeline.restore().await.unwrap();
    // The ledger refuses the next two writes (a broker away).
    log.1
        .fail_appends
        .store(2, std::sync::atomic::Ordering::Relaxed);
    r.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
        ])
        .await
        .unwrap();
    // The batch's checkpoint is written while the next batch could be
    // handled: the position moves once it is acknowledged.
    assert_eq!(r.pipeline.committable(), None, "nothing acknowledged yet");
    r.pipeline.settle().await.unwrap();
    assert_eq!(r.pipeline.committable(), Some(2));
    let changes: Vec<Change> = log.0.changes(0).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        changes,
        [
            Change::Claim {
                owner: "test".into()
            },
            Change::Sequence {
                source: "purple".into(),
                key: "a".into(),
                next: 3,
            },
            Change::Position {
                offset: 2,
                ledger_serial: Some(1),
            },
        ]
    );
    let ledger: Vec<Change> = log.1.changes(0).into_iter().map(|(_, c)| c).collect();
    let [Change::Applied { events, .. }] = ledger.as_slice() else {
        panic!("one ledger record: {ledger:?}");
    };
    assert_eq!(
        events,
        &[
            ("purple".to_string(), "a1".to_string()),
            ("purple".to_string(), "a2".to_string())
        ]
    );
    // A stop while the changelog is down abandons the batch's checkpoint:
    // its offset does not move, whatever the sinks did.
    log.1
        .fail_appends
        .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
    r.pipeline
        .handle(vec![record(2, "a3", "a", 3, None)])
        .await
        .unwrap();
    let stop = r.stop.clone();
    let settle = r.pipeline.settle();
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(true);
    };
    let (result, ()) = tokio::join!(settle, stopper);
    assert_eq!(result, Err(Stopped));
    assert_eq!(r.pipeline.committable(), None, "the offset stays at 2");
    assert_eq!(log.0.changes(0).len(), 3, "nothing of a3 was written");
    assert_eq!(log.1.changes(0).len(), 1, "nothing of a3 was written");
}

/// A sink with effects outside Kafka (as the CRM): counts what it applied.
struct EffectSink(Mutex<Vec<String>>);

impl EffectSink {
    fn new() -> Arc<EffectSink> {
        Arc::new(EffectSink(Mutex::default()))
    }
}

impl Sink for EffectSink {
    fn name(&self) -> &str {
        "out"
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut seen = self.0.lock().unwrap();
            seen.extend(batch.iter().map(|e| e.event_id.clone()));
            vec![Outcome::Accepted; batch.len()]
        })
    }

    fn tracks_effects(&self) -> bool {
        true
    }

    fn accept_tracked<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
        applied: &'a dyn processors::sinks::Applied,
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (i, e) in batch.iter().enumerate() {
                if applied.handing_over() {
                    out.push(Outcome::Retry("handing over".into()));
                    continue;
                }
                self.0.lock().unwrap().push(e.event_id.clone());
                applied.applied(i).await;
                out.push(Outcome::Accepted);
            }
            out
        })
    }
}

/// One host's pipeline on partition 0 of the shared `log`, its effects
/// going to `sink`.
fn effect_host(
    log: &Logs,
    owner: &str,
    sink: Arc<EffectSink>,
) -> (PartitionPipeline, watch::Sender<bool>) {
    let config = Config::from_toml(CONFIG).unwrap();
    let stores = processors::state::Stores {
        changelog: log.0.clone(),
        ledger: log.1.clone(),
        cache: None,
        owner: owner.into(),
    };
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        vec![sink as Arc<dyn Sink>],
        Arc::new(MemoryDedupe::new(Duration::from_secs(3600))) as Arc<dyn DedupeStore>,
        Arc::new(MemorySide::default()) as Arc<dyn SideTopics>,
        Metrics::new().unwrap(),
    )
    .unwrap()
    .with_state(Arc::new(stores));
    let (stop, stop_rx) = watch::channel(false);
    (PartitionPipeline::new(0, Arc::new(shared), stop_rx), stop)
}

/// Seen in the four-instance test (tansu gave one partition to two
/// members for 14 s; 25 CRM requests sent twice): the stale owner's
/// checkpoint, begun before the new owner's claim, was written after it,
/// and the stale owner took the records up to its own last one for its
/// own, the claim among them. Its next check then read nothing and it
/// went on applying effects beside the new owner.
#[tokio::test]
async fn an_owner_whose_checkpoint_lands_after_another_instances_claim_still_stops() {
    let (log, sink_a, sink_b) = (Logs::default(), EffectSink::new(), EffectSink::new());
    let (mut a, _stop_a) = effect_host(&log, "a", sink_a.clone());
    a.restore().await.unwrap();
    a.handle(vec![record(0, "e1", "v", 1, None)]).await.unwrap();
    a.settle().await.unwrap();
    // A applies e2 as the owner; its checkpoint's first append fails, so
    // it is retried, and lands after B's claim.
    log.1
        .fail_appends
        .store(1, std::sync::atomic::Ordering::Relaxed);
    a.handle(vec![record(1, "e2", "v", 2, None)]).await.unwrap();
    let (mut b, _stop_b) = effect_host(&log, "b", sink_b.clone());
    b.restore().await.unwrap();
    a.settle().await.unwrap();
    let out = a.handle(vec![record(2, "e3", "v", 3, None)]).await;
    assert_eq!(
        *sink_a.0.lock().unwrap(),
        ["e1", "e2"],
        "A applied e3 after B's claim"
    );
    assert_eq!(out, Err(Stopped), "A stops at B's claim");
    assert!(a.fenced());
}

#[tokio::test]
async fn an_owner_whose_partition_another_instance_claimed_applies_no_more_effects() {
    let (log, sink_a, sink_b) = (Logs::default(), EffectSink::new(), EffectSink::new());
    let (mut a, _stop_a) = effect_host(&log, "a", sink_a.clone());
    a.restore().await.unwrap();
    let reads = || log.0.reads.load(std::sync::atomic::Ordering::Relaxed);
    let restored = reads();
    // Two batches, the second checked while the first's checkpoint is
    // still in hand: A's own records are not taken for another writer's,
    // and nothing is read.
    a.handle(vec![record(0, "e1", "v", 1, None)]).await.unwrap();
    // Its checkpoint acknowledged, not yet settled.
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.handle(vec![record(1, "e1b", "w", 1, None)])
        .await
        .unwrap();
    a.settle().await.unwrap();
    assert_eq!(reads(), restored, "no changelog read while A is the owner");
    // The brokers give the partition to B as well, and A is never told.
    let (mut b, _stop_b) = effect_host(&log, "b", sink_b.clone());
    b.restore().await.unwrap();
    let out = a.handle(vec![record(2, "e2", "v", 2, None)]).await;
    assert_eq!(out, Err(Stopped), "A stops at B's claim");
    assert!(a.fenced());
    assert_eq!(
        *sink_a.0.lock().unwrap(),
        ["e1", "e1b"],
        "A applied nothing after B's claim"
    );
    // B, the owner now, applies e2 once.
    b.handle(vec![record(2, "e2", "v", 2, None)]).await.unwrap();
    b.settle().await.unwrap();
    assert_eq!(*sink_b.0.lock().unwrap(), ["e2"]);
    assert!(!b.fenced());
}

#[tokio::test]
async fn a_second_host_restored_from_the_changelog_continues_each_key_and_drops_retries() {
    let log: Logs = (Arc::default(), Arc::default());
    let mut a = rig_on(&log);
    a.pipeline.restore().await.unwrap();
    // a1, a2 applied; a4 waits for a3 when the partition moves.
    a.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
            record(2, "a4", "a", 4, None),
        ])
        .await
        .unwrap();
    a.pipeline.settle().await.unwrap();
    assert_eq!(a.pipeline.committable(), Some(2));
    drop(a);

    let mut b = rig_on(&log);
    b.pipeline.restore().await.unwrap();
    // B reads from the committed offset the group had (0, say: older than
    // the state), then the retry of a2 and the missing a3.
    b.pipeline
        .handle(vec![
            record(0, "a1", "a", 1, None),
            record(1, "a2", "a", 2, None),
            record(2, "a4", "a", 4, None),
            record(3, "a2", "a", 2, None),
            record(4, "a3", "a", 3, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        accepted(&b.sink),
        [("a3".into(), 3, false), ("a4".into(), 4, false)],
        "B: a3 then a4 in order; a1, a2 skipped as restored, the retry of a2 dropped"
    );
    b.pipeline.settle().await.unwrap();
    assert_eq!(b.pipeline.committable(), Some(5));
    assert_eq!(b.metrics.state_skipped_records.get(), 2);
    assert!(b.dedupe.seen("purple", "a1").unwrap());
}

/// A guest-WiFi event of `kind` for `device` in `zone`, happening now
/// (the alerting sink ignores events older than its `max_event_age`).
fn wifi(offset: i64, id: &str, kind: &str, zone: &str, device: &str, seq: i64) -> RawRecord {
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let body = format!(
        r#"{{"id":"{id}","type":"{kind}","sequence":{seq},"occurred_at":"{at}","venue":{{"id":"v"}},"zone":"{zone}","device":{{"id":"{device}"}}}}"#
    );
    let mut r = record(offset, id, "v", seq, Some(body.into_bytes()));
    let mut env = Envelope::decode(&r.payload).unwrap();
    env.received_at_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    r.payload = Arc::new(env.encode().unwrap());
    r
}

const ALERTS: &str = r#"
    [kafka]
    brokers = "unused:9092"
    [processing]
    gap_timeout = "60s"
    retry_initial = "10ms"
    retry_max = "20ms"
    [dedupe]
    path = "unused"
    [sources.purple]
    parser = "guest_wifi"
    [sinks.alerts]
    kind = "alerts"
    path = "unused"
    [[sinks.alerts.rules]]
    kind = "zone_occupancy"
    threshold = 2
    [[sinks.alerts.receivers]]
    kind = "log"
    [[routes]]
    name = "all"
    sinks = ["alerts"]
"#;

/// A pipeline on its own host: its own alert state file in `dir`, its
/// state in `logs`.
fn alerts_host(
    logs: &Logs,
    dir: &std::path::Path,
    owner: &str,
) -> (
    PartitionPipeline,
    Arc<processors::sinks::alerting::AlertsSink>,
    watch::Sender<bool>,
    Metrics,
) {
    alerts_host_cached(logs, dir, owner, None, None)
}

/// What an alerts host returns: its pipeline, its sink, its stop and its
/// metrics.
type AlertsHost = (
    PartitionPipeline,
    Arc<processors::sinks::alerting::AlertsSink>,
    watch::Sender<bool>,
    Metrics,
);

fn alerts_host_cached(
    logs: &Logs,
    dir: &std::path::Path,
    owner: &str,
    cache: Option<Arc<processors::state::cache::StateCache>>,
    dedupe: Option<Arc<MemoryDedupe>>,
) -> AlertsHost {
    alerts_host_with(ALERTS, logs, dir, owner, cache, dedupe)
}

fn alerts_host_with(
    config: &str,
    logs: &Logs,
    dir: &std::path::Path,
    owner: &str,
    cache: Option<Arc<processors::state::cache::StateCache>>,
    dedupe: Option<Arc<MemoryDedupe>>,
) -> AlertsHost {
    alerts_host_beside(config, logs, dir, owner, cache, dedupe, Vec::new())
}

/// An alerts host whose pipeline has `others` too (sinks the config
/// names after `alerts`).
fn alerts_host_beside(
    config: &str,
    logs: &Logs,
    dir: &std::path::Path,
    owner: &str,
    cache: Option<Arc<processors::state::cache::StateCache>>,
    dedupe: Option<Arc<MemoryDedupe>>,
    others: Vec<Arc<dyn Sink>>,
) -> AlertsHost {
    let config = Config::from_toml(config).unwrap();
    let processors::sinks::SinkConfig::Alerts(mut alerts) = config.sinks["alerts"].sink.clone()
    else {
        panic!("an alerts sink");
    };
    alerts.path = dir.join("alerts.sqlite");
    let metrics = Metrics::new().unwrap();
    let sink = Arc::new(
        processors::sinks::alerting::AlertsSink::start("alerts", &alerts, &metrics).unwrap(),
    );
    let stores = processors::state::Stores {
        changelog: logs.0.clone(),
        ledger: logs.1.clone(),
        cache,
        owner: owner.into(),
    };
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        std::iter::once(sink.clone() as Arc<dyn Sink>)
            .chain(others)
            .collect(),
        dedupe.unwrap_or_else(|| Arc::new(MemoryDedupe::new(Duration::from_secs(3600))))
            as Arc<dyn DedupeStore>,
        Arc::new(MemorySide::default()) as Arc<dyn SideTopics>,
        metrics.clone(),
    )
    .unwrap()
    .with_state(Arc::new(stores));
    let (stop, stop_rx) = watch::channel(false);
    (
        PartitionPipeline::new(0, Arc::new(shared), stop_rx),
        sink,
        stop,
        metrics,
    )
}

fn lobby(n: i64) -> std::collections::BTreeMap<(String, String), i64> {
    std::collections::BTreeMap::from([(("v".to_string(), "lobby".to_string()), n)])
}

#[tokio::test]
async fn a_partition_moved_to_another_host_keeps_its_devices_and_its_alert() {
    let log: Logs = (Arc::default(), Arc::default());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, sink_a, _stop_a, _) = alerts_host(&log, dir_a.path(), "a");
    a.restore().await.unwrap();
    three_in_the_lobby(&mut a).await;
    assert_eq!(
        sink_a.occupancy().unwrap(),
        lobby(3),
        "A: over the threshold"
    );
    assert!(sink_a.owns(0));
    // A sends the raise, then hands the partition over as the consumer
    // does: stop acting, write what was sent, settle.
    wait_for_empty_outbox(&dir_a.path().join("alerts.sqlite")).await;
    hand_over(&mut a).await;
    drop(a);
    assert!(!sink_a.owns(0), "A stops acting on the partition's alerts");

    // B, on another host: nothing of A's file, everything of the partition.
    let (mut b, sink_b, _stop_b, _) = alerts_host(&log, dir_b.path(), "b");
    b.restore().await.unwrap();
    assert_eq!(
        sink_b.occupancy().unwrap(),
        lobby(3),
        "B restored A's devices"
    );
    b.handle(vec![wifi(3, "x1", "device_disconnected", "lobby", "d1", 4)])
        .await
        .unwrap();
    b.settle().await.unwrap();
    assert_eq!(sink_b.occupancy().unwrap(), lobby(2));
    // B resolved the alert A raised: the same raise (generation 1); the
    // raise, sent by A, is not sent again.
    assert_eq!(
        outbox_keys(&dir_b.path().join("alerts.sqlite")),
        ["alert-resolved-1"]
    );
}

/// Connects d1, d2 and d3 in the lobby (over the threshold of 2) and
/// waits for the checkpoint.
async fn three_in_the_lobby(p: &mut PartitionPipeline) {
    p.handle(vec![
        wifi(0, "c1", "device_connected", "lobby", "d1", 1),
        wifi(1, "c2", "device_connected", "lobby", "d2", 2),
        wifi(2, "c3", "device_connected", "lobby", "d3", 3),
    ])
    .await
    .unwrap();
    p.settle().await.unwrap();
}

/// Hands the partition over as the consumer does: the sinks stop acting
/// for it, what they did is written, the last checkpoint settles.
async fn hand_over(p: &mut PartitionPipeline) {
    p.release().await;
    p.flush().await.unwrap();
    p.settle().await.unwrap();
}

/// Waits (up to 5 s) until the alert file's outbox is empty.
async fn wait_for_empty_outbox(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        if n == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} notifications not sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_notification_the_old_owner_could_not_send_is_sent_by_the_new_owner_once() {
    // An Alertmanager that refuses everything until told otherwise, and
    // counts what it accepts.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (u, n) = (up.clone(), accepted.clone());
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move || {
            let (u, n) = (u.clone(), n.clone());
            async move {
                if u.load(std::sync::atomic::Ordering::SeqCst) {
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = ALERTS
        .replace(
            "path = \"unused\"\n    [[sinks.alerts.rules]]",
            "path = \"unused\"\nresend_interval = \"1h\"\nalert_ttl = \"2h\"\n\
             retry_initial = \"10ms\"\nretry_max = \"50ms\"\n[[sinks.alerts.rules]]",
        )
        .replace(
            "[[sinks.alerts.receivers]]\n    kind = \"log\"",
            &format!(
                "[[sinks.alerts.receivers]]\nkind = \"alertmanager\"\nurl = \"http://{addr}\""
            ),
        );
    let log: Logs = (Arc::default(), Arc::default());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, _sink_a, _stop_a, _) =
        alerts_host_with(&config, &log, dir_a.path(), "a", None, None);
    a.restore().await.unwrap();
    three_in_the_lobby(&mut a).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    hand_over(&mut a).await;
    drop(a);
    // Alertmanager comes back: A no longer owns the partition and sends
    // nothing; B, which took the raise over with the partition, sends it.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "A sent nothing"
    );
    let (mut b, _sink_b, _stop_b, _) =
        alerts_host_with(&config, &log, dir_b.path(), "b", None, None);
    b.restore().await.unwrap();
    wait_for_empty_outbox(&dir_b.path().join("alerts.sqlite")).await;
    // B's take-over also re-posts the firing alert (its refresh).
    let sent = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&sent), "{sent}");
    assert_eq!(
        outbox_keys(&dir_b.path().join("alerts.sqlite")),
        ["alert-firing-1"]
    );
    // B hands it back to A, having sent it: A does not send it again.
    hand_over(&mut b).await;
    drop(b);
    let (mut a, _sink_a, _stop_a, _) =
        alerts_host_with(&config, &log, dir_a.path(), "a", None, None);
    a.restore().await.unwrap();
    let n: i64 = rusqlite::Connection::open(dir_a.path().join("alerts.sqlite"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "A's old row is gone: B sent it");
}

/// The notifications sent or waiting in the outbox, as
/// `alert-<status>-<raise>`, sorted (the log receiver sends them as soon
/// as their batch is in the changelog).
fn outbox_keys(path: &std::path::Path) -> Vec<String> {
    let outbox = rusqlite::Connection::open(path).unwrap();
    let mut st = outbox
        .prepare("SELECT key FROM outbox UNION ALL SELECT key FROM sent")
        .unwrap();
    let mut keys: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|key| {
            // alert-<hash>-<raise>-<status>
            let key = key.unwrap();
            let parts: Vec<&str> = key.split('-').collect();
            format!("alert-{}-{}", parts[3], parts[2])
        })
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_hand_over_after_a_batch_another_sink_left_unfinished_does_not_pass_it_off_as_written() {
    // The alerts sink beside one that keeps asking to retry (a CRM left
    // for the next owner at a hand-over).
    let config = ALERTS
        .replace(
            "[[routes]]",
            "[sinks.out]\n    kind = \"log\"\n    [[routes]]",
        )
        .replace("sinks = [\"alerts\"]", "sinks = [\"alerts\", \"out\"]");
    let log: Logs = (Arc::default(), Arc::default());
    let dir_a = tempfile::tempdir().unwrap();
    let out = Arc::new(MemorySink::new("out"));
    let host = |dir: &std::path::Path, owner: &str| {
        alerts_host_beside(
            &config,
            &log,
            dir,
            owner,
            None,
            None,
            vec![out.clone() as Arc<dyn Sink>],
        )
    };
    let (mut a, sink_a, stop_a, _) = host(dir_a.path(), "a");
    a.restore().await.unwrap();
    // Three in the lobby raise an alert; once its batch is written the
    // log receiver sends it, so a notification waits for A's next
    // checkpoint.
    three_in_the_lobby(&mut a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // d4's batch: the alerts sink applies it, the other sink asks to
    // retry until the hand-over stops the batch.
    *out.force.lock().unwrap() = Some(Outcome::Retry("down".into()));
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop_a.send(true);
    };
    let (handled, ()) = tokio::join!(
        a.handle(vec![wifi(3, "c4", "device_connected", "lobby", "d4", 4)]),
        stopper
    );
    assert_eq!(handled, Err(Stopped));
    assert_eq!(sink_a.occupancy().unwrap(), lobby(4), "applied to A's file");
    // The hand-over's last checkpoint writes the sent notification; it
    // must not mark d4's batch as written, nor d4's sequence as passed.
    hand_over(&mut a).await;
    drop(a);
    assert_eq!(
        sink_a.partition_state().unwrap().cached_at(0),
        Ok(None),
        "A's file holds a batch the changelog does not: not a clean cache"
    );
    *out.force.lock().unwrap() = None;

    // A takes the partition again on the same file and reads d4 again:
    // its file is not taken as clean, d4 is applied and written, and a
    // host restoring from the changelog alone then has all four.
    let (mut a, _sink_a, _stop, _) = host(dir_a.path(), "a");
    a.restore().await.unwrap();
    a.handle(vec![wifi(3, "c4", "device_connected", "lobby", "d4", 4)])
        .await
        .unwrap();
    a.settle().await.unwrap();
    drop(a);
    let dir_b = tempfile::tempdir().unwrap();
    let (mut b, sink_b, _stop_b, _) = host(dir_b.path(), "b");
    b.restore().await.unwrap();
    assert_eq!(sink_b.occupancy().unwrap(), lobby(4), "B has d1 to d4");
}

#[tokio::test]
async fn an_alert_state_applied_past_its_changelog_is_rebuilt_so_the_next_host_misses_nothing() {
    let log: Logs = (Arc::default(), Arc::default());
    let dir_a = tempfile::tempdir().unwrap();
    let (mut a, _sink_a, stop_a, _) = alerts_host(&log, dir_a.path(), "a");
    a.restore().await.unwrap();
    a.handle(vec![wifi(0, "c1", "device_connected", "lobby", "d1", 1)])
        .await
        .unwrap();
    a.settle().await.unwrap();
    // d2's batch is applied to A's file, but its checkpoint never reaches
    // the changelog (the brokers away, then the process stops).
    log.1
        .fail_appends
        .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
    a.handle(vec![
        wifi(1, "c2", "device_connected", "lobby", "d2", 2),
        wifi(2, "c3", "device_connected", "lobby", "d3", 3),
    ])
    .await
    .unwrap();
    let _ = stop_a.send(true);
    assert_eq!(a.settle().await, Err(Stopped));
    drop(a);
    log.1
        .fail_appends
        .store(0, std::sync::atomic::Ordering::Relaxed);

    // A starts again on the same file and reads d2's record again: its
    // file is rebuilt from the changelog first, so d2 is applied (and
    // written) again instead of being taken for a duplicate.
    let (mut a, sink_a, _stop, _) = alerts_host(&log, dir_a.path(), "a");
    a.restore().await.unwrap();
    assert_eq!(sink_a.occupancy().unwrap(), lobby(1), "rebuilt: d1 only");
    a.handle(vec![
        wifi(1, "c2", "device_connected", "lobby", "d2", 2),
        wifi(2, "c3", "device_connected", "lobby", "d3", 3),
    ])
    .await
    .unwrap();
    a.settle().await.unwrap();
    assert_eq!(sink_a.occupancy().unwrap(), lobby(3));
    // The raise of the unacknowledged batch was never sent (its batch was
    // not in the changelog) and was dropped with it: raised again, it is
    // in the outbox once.
    assert_eq!(
        outbox_keys(&dir_a.path().join("alerts.sqlite")),
        ["alert-firing-1"]
    );
    drop(a);
    let dir_b = tempfile::tempdir().unwrap();
    let (mut b, sink_b, _stop_b, _) = alerts_host(&log, dir_b.path(), "b");
    b.restore().await.unwrap();
    assert_eq!(sink_b.occupancy().unwrap(), lobby(3), "B has d1, d2 and d3");
}

#[tokio::test]
async fn a_partition_back_on_its_host_reads_only_what_the_other_host_wrote_and_ignores_a_stale_owner()
 {
    let log: Logs = (Arc::default(), Arc::default());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = Arc::new(
        processors::state::cache::StateCache::open(dir_a.path().join("state.redb")).unwrap(),
    );
    let (mut a, _sink_a, _stop_a, _) =
        alerts_host_cached(&log, dir_a.path(), "a", Some(cache.clone()), None);
    a.restore().await.unwrap();
    a.handle(vec![
        wifi(0, "c1", "device_connected", "lobby", "d1", 1),
        wifi(1, "c2", "device_connected", "lobby", "d2", 2),
    ])
    .await
    .unwrap();
    a.settle().await.unwrap();
    drop(a);
    let (mut b, _sink_b, _stop_b, _) = alerts_host(&log, dir_b.path(), "b");
    b.restore().await.unwrap();
    b.handle(vec![
        wifi(2, "x1", "device_disconnected", "lobby", "d1", 3),
        wifi(3, "c3", "zone_entered", "bar", "d3", 4),
    ])
    .await
    .unwrap();
    b.settle().await.unwrap();
    // Back on A: its file is kept (it reflects the changelog up to its
    // last batch) and only B's records are read on top.
    let (mut a, sink_a, _stop_a, metrics) =
        alerts_host_cached(&log, dir_a.path(), "a", Some(cache), None);
    a.restore().await.unwrap();
    let expected = std::collections::BTreeMap::from([
        (("v".to_string(), "bar".to_string()), 1),
        (("v".to_string(), "lobby".to_string()), 1),
    ]);
    assert_eq!(sink_a.occupancy().unwrap(), expected);
    // Read: B's claim, B's keys (d1 gone, d3, the venue's minute, its
    // clock when a new second began), sequence and position, A's new
    // claim, and B's ledger record: not A's own records again.
    let read = metrics
        .state_restored_records
        .with_label_values(&["applied"])
        .get();
    let changes = log.0.changes(0);
    let since_b = changes
        .iter()
        .position(|(_, c)| matches!(c, processors::state::changelog::Change::Claim { owner } if owner == "b"))
        .expect("B's claim");
    assert_eq!(read, (changes.len() - since_b + 1) as u64, "{changes:?}");
    assert!(since_b >= 6, "A's own records came first: {changes:?}");
    // B, not knowing yet that A claimed it back, writes on: a later
    // restore ignores it.
    b.handle(vec![wifi(
        4,
        "c4",
        "device_connected",
        "lobby",
        "zombie",
        5,
    )])
    .await
    .unwrap();
    b.settle().await.unwrap();
    drop(a);
    let dir_c = tempfile::tempdir().unwrap();
    let (mut c, sink_c, _stop_c, _) = alerts_host(&log, dir_c.path(), "c");
    c.restore().await.unwrap();
    assert_eq!(sink_c.occupancy().unwrap(), expected, "no zombie device");
}

#[tokio::test]
async fn a_crash_after_the_changelog_acknowledged_a_batch_loses_none_of_its_notifications() {
    let log: Logs = (Arc::default(), Arc::default());
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _sink, _stop, _) = alerts_host(&log, dir.path(), "a");
    a.restore().await.unwrap();
    three_in_the_lobby(&mut a).await;
    drop(a);
    // The process died after the changelog acknowledged the batch and
    // before the file recorded it: the file looks ahead of its changelog.
    rusqlite::Connection::open(dir.path().join("alerts.sqlite"))
        .unwrap()
        .execute("UPDATE partitions SET checkpointed = checkpointed - 1", [])
        .unwrap();
    let (mut a, sink, _stop, _) = alerts_host(&log, dir.path(), "a");
    a.restore().await.unwrap();
    assert_eq!(
        sink.occupancy().unwrap(),
        lobby(3),
        "rebuilt from the changelog"
    );
    // Nothing is read again (the position is past the batch): its raise
    // must still be sent, once.
    assert_eq!(
        outbox_keys(&dir.path().join("alerts.sqlite")),
        ["alert-firing-1"]
    );
}

#[tokio::test]
async fn a_batch_in_the_ledger_whose_state_never_came_is_applied_again_on_the_same_host() {
    let log: Logs = (Arc::default(), Arc::default());
    let dir = tempfile::tempdir().unwrap();
    let dedupe = Arc::new(MemoryDedupe::new(Duration::from_secs(3600)));
    let (mut a, _sink, stop, _) =
        alerts_host_cached(&log, dir.path(), "a", None, Some(dedupe.clone()));
    a.restore().await.unwrap();
    a.handle(vec![wifi(0, "c1", "device_connected", "lobby", "d1", 1)])
        .await
        .unwrap();
    a.settle().await.unwrap();
    // The next batch's ledger record is written, its state records are
    // not (the process dies between the two writes).
    log.0
        .fail_appends
        .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
    a.handle(vec![wifi(1, "c2", "device_connected", "lobby", "d2", 2)])
        .await
        .unwrap();
    let _ = stop.send(true);
    assert_eq!(a.settle().await, Err(Stopped));
    drop(a);
    log.0
        .fail_appends
        .store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(log.1.changes(0).len(), 2, "both batches in the ledger");

    // The same host, the same dedupe store: d2's event is read again and
    // must change the rebuilt state, not be dropped as a duplicate.
    let (mut a, sink, _stop, metrics) =
        alerts_host_cached(&log, dir.path(), "a", None, Some(dedupe.clone()));
    a.restore().await.unwrap();
    a.handle(vec![wifi(1, "c2", "device_connected", "lobby", "d2", 2)])
        .await
        .unwrap();
    a.settle().await.unwrap();
    assert_eq!(sink.occupancy().unwrap(), lobby(2));
    assert_eq!(
        metrics
            .state_restored_records
            .with_label_values(&["unconfirmed"])
            .get(),
        1
    );
    // And on another host, from the changelog alone.
    let dir_b = tempfile::tempdir().unwrap();
    let (mut b, sink_b, _stop_b, _) = alerts_host(&log, dir_b.path(), "b");
    b.restore().await.unwrap();
    assert_eq!(sink_b.occupancy().unwrap(), lobby(2));
}
