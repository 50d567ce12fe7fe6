//! What a record held by the processors occupies, and what the byte budget
//! charges for it. A parsed JSON tree can be many times the body's size
//! (every value of `[0,0,...]` is a 32-byte node for two bytes of JSON):
//! an event waiting in the reorder buffer keeps only its record, and the
//! budget charges at least what is held. Measured with an allocator that
//! counts this thread's live bytes, so the figures are the heap the
//! pipeline holds, not estimates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use processors::config::Config;
use processors::event::{Event, Quarantine};
use processors::metrics::Metrics;
use processors::pipeline::budget::{ByteBudget, Charge};
use processors::pipeline::dedupe::{DedupeStore, MemoryDedupe};
use processors::pipeline::{PartitionPipeline, RawRecord, Shared, SideTopics};
use processors::sinks::basic::MemorySink;
use processors::sinks::{BoxFuture, Sink};
use schemas::{Envelope, Verification};
use tokio::sync::watch;

/// The system allocator, counting the live bytes each thread allocated
/// (and freed) itself.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn moved(by: isize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + by;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counters are const-initialised thread-local cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        moved(layout.size() as isize);
        // SAFETY: as the caller promised.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        moved(-(layout.size() as isize));
        // SAFETY: as the caller promised.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        moved(new_size as isize - layout.size() as isize);
        // SAFETY: as the caller promised.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Starts a new peak from the live bytes of now.
fn reset_peak() {
    let now = live();
    PEAK.with(|p| p.set(now));
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

const CONFIG: &str = r#"
    [kafka]
    brokers = "unused:9092"
    [processing]
    gap_timeout = "60s"
    [dedupe]
    path = "unused"
    [sources.purple]
    parser = "guest_wifi"
    [sources.timed]
    parser = "guest_wifi"
    order_by = "occurred_at"
    [sinks.out]
    kind = "log"
    [[routes]]
    name = "all"
    sinks = ["out"]
"#;

struct NoSide;

impl SideTopics for NoSide {
    fn quarantine<'a>(
        &'a self,
        _: &'a RawRecord,
        _: &'a str,
        _: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(
        &'a self,
        _: &'a RawRecord,
        _: &'a Event,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A guest-WiFi event of venue `v` at `seq` with `extra` JSON members
/// appended to its body.
fn envelope(id: &str, seq: i64, extra: &str) -> Envelope {
    let body = format!(
        r#"{{"id":"{id}","type":"device_connected","sequence":{seq},"occurred_at":"2026-11-22T18:03:11Z","venue":{{"id":"v"}},"device":{{"id":"d1"}}{extra}}}"#
    );
    Envelope {
        event_id: id.into(),
        source: "purple".into(),
        received_at_micros: 1,
        body: body.into_bytes(),
        headers: vec![],
        content_type: None,
        client_addr: None,
        verification: Verification {
            scheme: "hmac".into(),
            secret_id: "a".into(),
        },
        ordering_key: Some("v".into()),
        sequence: Some(seq),
        request_id: "r".into(),
    }
}

/// A partition's pipeline with one sink that keeps what it is given.
fn pipeline(config: &Config) -> (PartitionPipeline, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new("out"));
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        vec![sink.clone() as Arc<dyn Sink>],
        Arc::new(MemoryDedupe::new(Duration::from_secs(3600))) as Arc<dyn DedupeStore>,
        Arc::new(NoSide) as Arc<dyn SideTopics>,
        Metrics::new().unwrap(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    // The pipeline stops when the sender goes: keep it for the process.
    std::mem::forget(stop);
    (PartitionPipeline::new(0, Arc::new(shared), stop_rx), sink)
}

/// The events `sink` accepted, in order.
fn accepted(sink: &MemorySink) -> Vec<Event> {
    let events = sink.accepted.lock().unwrap();
    events.iter().map(|e| (**e).clone()).collect()
}

/// The live heap bytes the parsed event of `env` holds.
fn parsed_bytes(config: &Config, env: &Envelope) -> usize {
    let before = live();
    let event = processors::event::parse(env, config.sources.get("purple")).expect("parses");
    let held = live() - before;
    drop(event);
    held.max(0) as usize
}

/// What three records waiting in the reorder buffer hold and are charged.
struct Waiting {
    /// The heap they hold, measured: the records and whatever the pipeline
    /// keeps for them.
    held: usize,
    /// What the byte budget charges for them.
    charged: usize,
    /// One record's size.
    record: usize,
    /// One event's parsed tree, had it been kept.
    tree: usize,
}

/// Sequence 1 of one venue is handled, then 3, 4 and 5 arrive and wait
/// for 2; then 2 arrives and all four go to the sink, which must receive
/// exactly the events a direct parse of their envelopes gives.
async fn waiting(extra: &str) -> Waiting {
    let config = Config::from_toml(CONFIG).unwrap();
    let (mut pipeline, sink) = pipeline(&config);
    let budget = ByteBudget::new(usize::MAX / 2);
    let record = |offset: i64, seq: i64| {
        let payload = envelope(&format!("e{seq}"), seq, extra).encode().unwrap();
        RawRecord {
            partition: 0,
            offset,
            key: Some(b"v".to_vec()),
            charge: Some(Arc::new(budget.charge(payload.len() + 1))),
            payload: Arc::new(payload),
        }
    };
    pipeline.handle(vec![record(0, 1)]).await.unwrap();
    assert_eq!(pipeline.position(), Some(1), "sequence 1 is handled");
    let (start, charged_before) = (live(), budget.used());
    let records: Vec<RawRecord> = [3, 4, 5]
        .into_iter()
        .enumerate()
        .map(|(i, seq)| record(i as i64 + 1, seq))
        .collect();
    let size = records[0].payload.len();
    pipeline.handle(records).await.unwrap();
    assert_eq!(
        pipeline.position(),
        Some(1),
        "the records after the first wait for sequence 2"
    );
    let held = (live() - start).max(0) as usize;
    let charged = budget.used() - charged_before;
    let tree = parsed_bytes(&config, &envelope("e3", 3, extra));
    eprintln!(
        "3 records of {size} B (parsed tree {tree} B) waiting: {held} B held, {charged} B charged"
    );

    pipeline.handle(vec![record(4, 2)]).await.unwrap();
    assert_eq!(pipeline.position(), Some(5), "all handled once 2 came");
    let got = accepted(&sink);
    let want: Vec<Event> = [1, 2, 3, 4, 5]
        .into_iter()
        .map(|seq| {
            processors::event::parse(
                &envelope(&format!("e{seq}"), seq, extra),
                config.sources.get("purple"),
            )
            .unwrap()
        })
        .collect();
    assert!(
        got == want,
        "the sink got other events than a direct parse gives"
    );
    assert_eq!(budget.used(), 0, "every charge given back");
    Waiting {
        held,
        charged,
        record: size,
        tree,
    }
}

/// An event that waits for a missing sequence holds its record, not its
/// parsed tree, which for a body of many small values is about 27 times
/// the record (a 40 KB array of zeros parses into 1.1 MB). Before, three
/// such waiting records held 3.3 MB.
#[tokio::test]
async fn an_event_waiting_for_its_sequence_holds_its_record_not_its_parsed_tree() {
    let zeros = vec!["0"; 20_000].join(",");
    let w = waiting(&format!(r#","pad":[{zeros}]"#)).await;
    assert!(
        w.held < 3 * (w.record + 8 * 1024),
        "3 waiting records of {} B hold {} B (a parsed tree is {} B)",
        w.record,
        w.held,
        w.tree
    );
}

impl Waiting {
    /// The budget counts at least what is held, and at most `times` that.
    fn charged_within(&self, times: usize) {
        let (held, charged) = (self.held, self.charged);
        assert!(charged >= held, "{held} B held, {charged} B charged");
        assert!(
            charged <= times * held,
            "charged {charged} B for {held} B held: the budget would pause far too early"
        );
    }
}

#[tokio::test]
async fn a_body_of_many_small_values_is_charged_at_least_what_it_holds() {
    let zeros = vec!["0"; 20_000].join(",");
    waiting(&format!(r#","pad":[{zeros}]"#))
        .await
        .charged_within(4);
}

#[tokio::test]
async fn a_body_of_many_small_members_is_charged_at_least_what_it_holds() {
    let members: Vec<String> = (0..5_000).map(|i| format!(r#""k{i:05}":{i}"#)).collect();
    waiting(&format!(r#","pad":{{{}}}"#, members.join(",")))
        .await
        .charged_within(4);
}

#[tokio::test]
async fn an_ordinary_event_is_charged_at_least_what_it_holds() {
    waiting("").await.charged_within(8);
}

/// Events of a source ordered by `occurred_at` wait in the time-order
/// window (here its 60 s) whatever their order: each keeps only its record
/// there, and comes out of it as a direct parse gives it.
#[tokio::test]
async fn an_event_waiting_in_the_time_order_window_holds_its_record_not_its_parsed_tree() {
    let config = Config::from_toml(CONFIG).unwrap();
    let (mut pipeline, sink) = pipeline(&config);
    let zeros = vec!["0"; 20_000].join(",");
    let timed = |seq: i64| Envelope {
        source: "timed".into(),
        ..envelope(&format!("t{seq}"), seq, &format!(r#","pad":[{zeros}]"#))
    };
    let tree = parsed_bytes(&config, &envelope("t1", 1, &format!(r#","pad":[{zeros}]"#)));
    // The first record sets up what the pipeline keeps for the source and
    // the key (metrics, the window's key); the three after it are measured.
    pipeline
        .handle(vec![raw(0, &timed(0), None)])
        .await
        .unwrap();
    let start = live();
    let records: Vec<RawRecord> = (1..=3).map(|seq| raw(seq, &timed(seq), None)).collect();
    let size = records[0].payload.len();
    pipeline.handle(records).await.unwrap();
    let held = (live() - start).max(0) as usize;
    eprintln!("3 records of {size} B (parsed tree {tree} B) in the window: {held} B held");
    assert_eq!(pipeline.position(), Some(0), "all wait in the window");
    assert!(
        held < 3 * (size + 8 * 1024),
        "3 records of {size} B waiting hold {held} B (a parsed tree is {tree} B)"
    );
    pipeline.finish().await.unwrap();
    assert_eq!(pipeline.position(), Some(4));
    let got = accepted(&sink);
    let want: Vec<Event> = (0..=3)
        .map(|seq| processors::event::parse(&timed(seq), config.sources.get("timed")).unwrap())
        .collect();
    assert!(
        got == want,
        "the sink got other events than a direct parse gives"
    );
}

/// A record of venue `v` at `offset`, charged to `charge` if given.
fn raw(offset: i64, env: &Envelope, charge: Option<Arc<Charge>>) -> RawRecord {
    RawRecord {
        partition: 0,
        offset,
        key: Some(b"v".to_vec()),
        charge,
        payload: Arc::new(env.encode().unwrap()),
    }
}

/// A released event's charge is raised again to what its parsed event
/// holds (checked directly on the budget: the charge follows the record).
#[tokio::test]
async fn an_event_released_after_waiting_is_charged_its_parsed_tree_again() {
    let config = Config::from_toml(CONFIG).unwrap();
    let zeros = vec!["0"; 20_000].join(",");
    let env = envelope("e3", 3, &format!(r#","pad":[{zeros}]"#));
    let tree = parsed_bytes(&config, &env);
    let budget = ByteBudget::new(usize::MAX / 2);
    let (mut pipeline, _sink) = pipeline(&config);
    let charge = Arc::new(budget.charge(env.body.len()));
    let first = raw(0, &envelope("e1", 1, ""), None);
    let waiting = raw(1, &env, Some(charge.clone()));
    pipeline.handle(vec![first, waiting]).await.unwrap();
    let while_waiting = charge.bytes();
    assert!(while_waiting < tree / 4, "waiting: {while_waiting} B");
    let second = raw(2, &envelope("e2", 2, ""), None);
    pipeline.handle(vec![second]).await.unwrap();
    assert_eq!(pipeline.position(), Some(3));
    assert!(
        charge.bytes() >= tree,
        "released: charged {} B (waiting {while_waiting} B) for a {tree} B tree",
        charge.bytes()
    );
}

/// An event routed to a sink is handed over, not copied: the sink and the
/// batch share one parsed event, so a record's charge covers what its
/// handling holds at its peak.
#[tokio::test]
async fn a_routed_event_is_shared_with_its_sink_not_copied() {
    let config = Config::from_toml(CONFIG).unwrap();
    let (mut pipeline, _sink) = pipeline(&config);
    let zeros = vec!["0"; 20_000].join(",");
    let env = envelope("e1", 1, &format!(r#","pad":[{zeros}]"#));
    let tree = parsed_bytes(&config, &env);
    let record = raw(0, &env, None);
    reset_peak();
    let start = live();
    pipeline.handle(vec![record]).await.unwrap();
    assert_eq!(pipeline.committable(), Some(1), "handled");
    let rise = (peak() - start) as usize;
    eprintln!("one event whose parsed tree holds {tree} B: the heap rose by {rise} B at most");
    assert!(
        rise < tree + tree / 2,
        "handling one event of a {tree} B tree rose the heap by {rise} B: a copy of it"
    );
}
