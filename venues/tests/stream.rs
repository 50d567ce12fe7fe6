//! The live stream over a real socket: a new client's snapshot, changes
//! as they happen, `Last-Event-ID` resume, the connection limit, and a
//! client that never reads dropped while another keeps receiving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::SseClient;
use schemas::changelog::{Change, Keyed};
use schemas::venue_state::{Entry, Key, VenueState};
use venues::Shared;
use venues::config::Config;
use venues::metrics::Metrics;

const MINUTE: i64 = 60_000_000;
const T: i64 = 1_790_000_040 * 1_000_000;

/// A view caught up with its (empty) changelog, serving on loopback.
async fn start(extra: &str) -> (Arc<Shared>, std::net::SocketAddr) {
    let (shared, addr) = start_catching_up(extra).await;
    shared.set_ready();
    (shared, addr)
}

/// A view still catching up, serving on loopback.
async fn start_catching_up(extra: &str) -> (Arc<Shared>, std::net::SocketAddr) {
    let text = format!(
        "[kafka]\nbrokers = \"b:9092\"\nchangelog_topic = \"p-state\"\nsink = \"alerts\"\n{extra}"
    );
    let shared = Arc::new(Shared::new(
        Config::from_toml(&text).unwrap(),
        Metrics::new().unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shared.stop.subscribe();
    tokio::spawn(venues::http::serve(
        listener,
        venues::http::router(shared.clone()),
        256 * 1024,
        stop,
    ));
    (shared, addr)
}

/// Applies a minute record of `venue` with `lobby` devices in the lobby
/// and one in each of `pad` more zones.
fn record(s: &Shared, offset: i64, venue: &str, lobby: i64, pad: usize) {
    let mut zones = BTreeMap::from([("lobby".to_string(), lobby)]);
    // `pad` zones with long names: a big change (about 100 bytes each).
    for z in 0..pad {
        zones.insert(format!("{z:03}-{}", "z".repeat(90)), 1);
    }
    let value = VenueState {
        venue: venue.into(),
        entry: Entry::Minute {
            minute: T + offset * MINUTE,
            devices: zones.values().sum(),
            zones,
        },
    }
    .encode()
    .unwrap();
    let (k, v) = Change::Keyed(Keyed {
        sink: "alerts".into(),
        key: Key::minute(venue, T + offset * MINUTE).encode(),
        value: Some(value),
    })
    .encode(0);
    s.apply(0, offset, &k, &v);
}

fn json(data: &str) -> serde_json::Value {
    serde_json::from_str(data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_catching_up_streams_wait_and_a_resume_from_before_the_catch_up_gets_a_snapshot() {
    let (s, addr) = start_catching_up("").await;
    let (code, _) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    assert_eq!(code, 503, "no stream of a partial view");
    // The catch-up: applied, not published.
    for offset in 0..3 {
        record(&s, offset, "v", offset + 1, 0);
    }
    assert_eq!(s.hub.published(), 0);
    s.set_ready();
    record(&s, 3, "v", 9, 0);
    assert_eq!(s.hub.published(), 1);
    // From before the catch-up's changes: they are not held, so a
    // snapshot (the whole view as it is), never a silent gap.
    let (code, mut early) = SseClient::open(addr, "/api/venues/events", Some("0:0"), &[]).await;
    assert_eq!(code, 200);
    let (event, id, data) = early.next().await;
    assert_eq!((event.as_str(), id.as_str()), ("snapshot", "0:3"));
    assert_eq!(json(&data)["venues"][0]["zones"][0]["devices"], 9);
    // From the catch-up's last change: the one after it.
    let (_, mut late) = SseClient::open(addr, "/api/venues/events", Some("0:2"), &[]).await;
    let (event, id, _) = late.next().await;
    assert_eq!((event.as_str(), id.as_str()), ("occupancy", "0:3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_the_state_then_each_change_and_resumes_where_it_stood() {
    let (s, addr) = start("").await;
    record(&s, 0, "v", 2, 0);
    let (code, mut c) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    assert_eq!(code, 200);
    let (event, id, data) = c.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(id, "0:0");
    assert_eq!(json(&data)["venues"][0]["venue"]["devices"], 2);
    record(&s, 1, "v", 5, 0);
    let (event, id, data) = c.next().await;
    assert_eq!((event.as_str(), id.as_str()), ("occupancy", "0:1"));
    assert_eq!(json(&data)["zones"][0]["devices"], 5);
    // The client goes away; two changes happen; it comes back with its id.
    drop(c);
    record(&s, 2, "w", 1, 0);
    record(&s, 3, "v", 7, 0);
    let (_, mut c) = SseClient::open(addr, "/api/venues/events", Some("0:1"), &[]).await;
    let got = [c.next().await, c.next().await];
    let ids: Vec<&str> = got.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, ["0:2", "0:3"], "nothing lost, nothing twice");
    // One venue's stream carries only its changes.
    let (_, mut only_w) = SseClient::open(addr, "/api/venues/w/events", Some("0:1"), &[]).await;
    let (_, id, data) = only_w.next().await;
    assert_eq!(
        (id.as_str(), json(&data)["venue"]["id"].as_str()),
        ("0:2", Some("w"))
    );
    let (code, _) = SseClient::open(addr, "/api/venues/nowhere/events", None, &[]).await;
    assert_eq!(code, 404);
    let (code, _) = SseClient::open(addr, "/api/venues/events", Some("garbage"), &[]).await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_with_retry_after() {
    let (_s, addr) = start("[http]\nmax_streams = 1\n").await;
    let (code, _first) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    assert_eq!(code, 200);
    let (code, _) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    assert_eq!(code, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_while_another_receives_everything() {
    let (s, addr) = start("").await;
    record(&s, 0, "v", 1, 0);
    let (_, mut reading) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    assert_eq!(reading.next().await.0, "snapshot");
    let (_, stuck) = SseClient::open(addr, "/api/venues/events", None, &[]).await;
    let n = 3 * venues::stream::BROADCAST as i64;
    let reader = tokio::spawn(async move {
        let mut last = String::new();
        for _ in 0..n {
            let (event, id, _) = reading.next().await;
            assert_eq!(event, "occupancy");
            last = id;
        }
        last
    });
    for i in 1..=n {
        // Big changes fill the stuck client's socket buffers.
        record(&s, i, "v", i, 60);
        if i % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        reader.await.unwrap(),
        format!("0:{n}"),
        "the reading client got every change"
    );
    // The stuck client's connection is closed by the server: draining it
    // reaches the end.
    assert!(
        stuck.closed_within(Duration::from_secs(10)).await,
        "the stuck client's connection was not closed"
    );
    assert_eq!(s.metrics.stream_dropped.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_starting_together_share_one_snapshot_until_the_next_change() {
    let (s, _) = start("").await;
    record(&s, 0, "v", 2, 0);
    let at = |id: &str| venues::stream::parse_id(id).unwrap();
    let a = s.snapshot_frame(None, &at("0:0"));
    let b = s.snapshot_frame(None, &at("0:0"));
    assert_eq!(a.as_ptr(), b.as_ptr(), "one snapshot, shared");
    assert!(String::from_utf8_lossy(&a).starts_with("event: snapshot\nid: 0:0\ndata: {"));
    record(&s, 1, "v", 3, 0);
    let c = s.snapshot_frame(None, &at("0:1"));
    assert_ne!(a, c, "a change makes a new one");
    assert!(String::from_utf8_lossy(&c).contains("id: 0:1\n"));
}
