//! Allocations on the request path, counted, not timed: reading a guest-WiFi
//! webhook's event id, ordering key and sequence (three JSON pointers of
//! the default source) allocates only for the two strings it returns. The
//! load benchmark's allocation profile found this step making about half of
//! ingest's 51 allocations per request (BENCHMARKS.md, "Ingest's CPU").
//!
//! Its own test binary: the counting allocator below is this file's global
//! allocator, and it counts on the calling thread only.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is a thread-local `Cell` of a `Copy` type, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

const CONFIG: &str = r#"
[sources.purple]
signature = { scheme = "purple", secrets = [{ id = "current", env = "ALLOCATIONS_TEST_SECRET" }] }
ordering_key = { pointer = "/venue/id" }
sequence = { pointer = "/sequence" }
"#;

/// A guest-WiFi webhook as the load benchmark sends it: the three fields
/// among a guest's profile, padded to about 1 KiB.
fn body() -> Vec<u8> {
    let padding = "x".repeat(600);
    format!(
        r#"{{"type":"guest.connected","id":"evt-0001-4b1d","sequence":4711,"occurred_at":"2026-12-02T10:00:00Z","venue":{{"id":"venue-042","name":"Lobby Hotel"}},"zone":{{"id":"lobby","name":"Lobby"}},"guest":{{"email":"guest@example.com","first_name":"Ada","last_name":"Lovelace","mac":"aa:bb:cc:dd:ee:ff","marketing_opt_in":true}},"note":"{padding}"}}"#
    )
    .into_bytes()
}

#[test]
fn reading_the_three_fields_allocates_only_for_the_strings_it_returns() {
    let config = ingest::config::Config::from_toml(CONFIG).unwrap();
    let source = ingest::source::Source::for_polling("purple", &config.sources["purple"]);
    let headers = axum::http::HeaderMap::new();
    let body = body();
    // Once to warm up whatever is lazily initialised.
    let _ = source.extract(&headers, &body);
    let (n, got) = allocations(|| source.extract(&headers, &body));
    assert_eq!(got.event_id.as_deref(), Some("evt-0001-4b1d"));
    assert_eq!(got.ordering_key.as_deref(), Some("venue-042"));
    assert_eq!(got.sequence, Some(4711));
    // The event id and the ordering key are returned as owned strings: two.
    assert!(n <= 2, "{n} allocations to read three fields");
}

#[test]
fn finding_the_values_allocates_nothing() {
    let body = body();
    let pointers =
        ingest::pointer::Pointers::new([Some("/id"), Some("/venue/id"), Some("/sequence")]);
    let (n, raw) = allocations(|| pointers.raw_values(&body));
    let raw = raw.expect("the body is JSON");
    assert_eq!(
        raw.map(|r| r.map(|r| r.get())),
        [
            Some("\"evt-0001-4b1d\""),
            Some("\"venue-042\""),
            Some("4711")
        ]
    );
    assert_eq!(n, 0, "{n} allocations to find three values");
}

/// Handing a record to the producer: what the request path allocates on its
/// own thread (librdkafka's own C allocations are not counted here). The
/// record cannot be acknowledged (no broker listens on port 1) and its
/// deadline is now, so `deliver` queues it and answers a timeout.
#[test]
fn handing_a_record_over_allocates_once() {
    let (runtime, producer) = common::unreachable_producer();
    // The payload is handed over: made before counting, as the request
    // path's envelope is.
    let deliver = |payload: Vec<u8>| {
        runtime.block_on(producer.deliver(
            b"venue-042",
            payload,
            "purple",
            "evt-0001-4b1d",
            0,
            tokio::time::Instant::now(),
        ))
    };
    // Once to warm up the metric label and the runtime's timer.
    let _ = deliver(body());
    let payload = body();
    let (n, outcome) = allocations(|| deliver(payload));
    assert_eq!(
        outcome,
        Err(ingest::producer::DeliveryError::Timeout),
        "the record was not queued"
    );
    // The answer's slot, shared with the delivery report: one allocation.
    assert!(n <= 1, "{n} allocations to hand one record over");
}
