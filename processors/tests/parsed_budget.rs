//! The byte budget charges what a held record really occupies: its
//! envelope and its parsed event, whose JSON tree can be many times the
//! body's size (every value of `[0,0,...]` is a 32-byte node for two bytes
//! of JSON). Measured with an allocator that counts this thread's live
//! bytes, so the figure is the heap the parse left, not an estimate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use processors::config::Config;
use processors::event::{Event, Quarantine};
use processors::metrics::Metrics;
use processors::pipeline::budget::ByteBudget;
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
fn pipeline(config: &Config) -> PartitionPipeline {
    let shared = Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        vec![Arc::new(MemorySink::new("out")) as Arc<dyn Sink>],
        Arc::new(MemoryDedupe::new(Duration::from_secs(3600))) as Arc<dyn DedupeStore>,
        Arc::new(NoSide) as Arc<dyn SideTopics>,
        Metrics::new().unwrap(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    // The pipeline stops when the sender goes: keep it for the process.
    std::mem::forget(stop);
    PartitionPipeline::new(0, Arc::new(shared), stop_rx)
}

/// The live heap bytes the parsed event of `env` holds.
fn parsed_bytes(config: &Config, env: &Envelope) -> usize {
    let before = live();
    let event = processors::event::parse(env, config.sources.get("purple")).expect("parses");
    let held = live() - before;
    drop(event);
    held.max(0) as usize
}

/// Records of one venue, sequence 2 missing: the three after it wait in
/// the reorder buffer, each held with its envelope and parsed event. The
/// budget must count at least what they hold.
async fn held_against_charged(extra: &str) -> (usize, usize, usize) {
    let config = Config::from_toml(CONFIG).unwrap();
    let mut pipeline = pipeline(&config);
    let budget = ByteBudget::new(usize::MAX / 2);
    let mut records = Vec::new();
    let mut real = 0;
    for (offset, seq) in [1, 3, 4, 5].into_iter().enumerate() {
        let env = envelope(&format!("e{seq}"), seq, extra);
        let payload = env.encode().unwrap();
        if seq > 1 {
            real += payload.len() + parsed_bytes(&config, &env);
        }
        records.push(RawRecord {
            partition: 0,
            offset: offset as i64,
            key: Some(b"v".to_vec()),
            charge: Some(Arc::new(budget.charge(payload.len() + 1))),
            payload: Arc::new(payload),
        });
    }
    let body = records[1].payload.len();
    pipeline.handle(records).await.unwrap();
    assert_eq!(
        pipeline.committable(),
        Some(1),
        "the records after the first wait for sequence 2"
    );
    let charged = budget.used();
    eprintln!("3 held records of {body} B: {real} B held, {charged} B charged");
    (real, charged, body)
}

#[tokio::test]
async fn a_body_of_many_small_values_is_charged_what_its_parsed_tree_holds() {
    let zeros = vec!["0"; 20_000].join(",");
    let (real, charged, body) = held_against_charged(&format!(r#","pad":[{zeros}]"#)).await;
    assert!(
        charged >= real,
        "3 held records of {body} B hold {real} B (envelope + parsed event), charged {charged} B"
    );
    assert!(
        charged <= 4 * real,
        "charged {charged} B for {real} B held: the budget would pause far too early"
    );
}

#[tokio::test]
async fn a_body_of_many_small_members_is_charged_what_its_parsed_tree_holds() {
    let members: Vec<String> = (0..5_000).map(|i| format!(r#""k{i:05}":{i}"#)).collect();
    let (real, charged, body) =
        held_against_charged(&format!(r#","pad":{{{}}}"#, members.join(","))).await;
    assert!(
        charged >= real,
        "3 held records of {body} B hold {real} B (envelope + parsed event), charged {charged} B"
    );
    assert!(charged <= 4 * real, "charged {charged} B for {real} B held");
}

#[tokio::test]
async fn an_ordinary_event_is_charged_at_least_what_it_holds() {
    let (real, charged, body) = held_against_charged("").await;
    assert!(
        charged >= real,
        "3 held records of {body} B hold {real} B (envelope + parsed event), charged {charged} B"
    );
    assert!(charged <= 8 * real, "charged {charged} B for {real} B held");
}

/// An event routed to a sink is handed over, not copied: the sink and the
/// batch share one parsed event, so a record's charge covers what its
/// handling holds at its peak.
#[tokio::test]
async fn a_routed_event_is_shared_with_its_sink_not_copied() {
    let config = Config::from_toml(CONFIG).unwrap();
    let mut pipeline = pipeline(&config);
    let zeros = vec!["0"; 20_000].join(",");
    let env = envelope("e1", 1, &format!(r#","pad":[{zeros}]"#));
    let tree = parsed_bytes(&config, &env);
    let record = RawRecord {
        partition: 0,
        offset: 0,
        key: Some(b"v".to_vec()),
        payload: Arc::new(env.encode().unwrap()),
        charge: None,
    };
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
