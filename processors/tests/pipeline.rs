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
    let env = Envelope {
        event_id: id.into(),
        source: "purple".into(),
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
    }
}

struct Rig {
    pipeline: PartitionPipeline,
    sink: Arc<MemorySink>,
    side: Arc<MemorySide>,
    dedupe: Arc<MemoryDedupe>,
    stop: watch::Sender<bool>,
}

fn rig(dedupe: Option<Arc<MemoryDedupe>>) -> Rig {
    let config = Config::from_toml(CONFIG).unwrap();
    let sink = Arc::new(MemorySink::new("out"));
    let side = Arc::new(MemorySide::default());
    let dedupe = dedupe.unwrap_or_else(|| Arc::new(MemoryDedupe::new(Duration::from_secs(3600))));
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        vec![sink.clone() as Arc<dyn Sink>],
        dedupe.clone() as Arc<dyn DedupeStore>,
        side.clone() as Arc<dyn SideTopics>,
        Metrics::new().unwrap(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    Rig {
        pipeline: PartitionPipeline::new(0, Arc::new(shared), stop_rx),
        sink,
        side,
        dedupe,
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
