//! The venue view's memory: the view holding 10,000 venues of 20 zones
//! with every minute of the hour recorded (its worst case: 600,000
//! minute records applied), and live-stream clients held open, measured as
//! the process's resident memory (`/proc/self/statm`) before and after.
//! Also the rate records are applied at.
//!
//! `cargo bench -p pipeline-benches --bench venues`; results on stdout and
//! in `target/bench-results/venues.json`. Measured, never asserted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::changelog::{Change, Keyed};
use schemas::venue_state::{Entry, Key, VenueState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use venues::Shared;
use venues::config::Config;
use venues::metrics::Metrics;

const VENUES: usize = 10_000;
const ZONES: usize = 20;
const MINUTE: i64 = 60_000_000;
const T: i64 = 1_790_000_040 * 1_000_000;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn record(venue: &str, minute: i64, n: i64) -> (Vec<u8>, Vec<u8>) {
    let zones: BTreeMap<String, i64> = (0..ZONES)
        .map(|z| (format!("zone-{z:02}"), n + z as i64))
        .collect();
    let value = VenueState {
        venue: venue.into(),
        entry: Entry::Minute {
            minute,
            devices: zones.values().sum(),
            zones,
        },
    }
    .encode()
    .expect("encode");
    Change::Keyed(Keyed {
        sink: "alerts".into(),
        key: Key::minute(venue, minute).encode(),
        value: Some(value),
    })
    .encode(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let machine = pipeline_benches::machine();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let config = Config::from_toml(&format!(
            "[kafka]\nbrokers = \"b:9092\"\nchangelog_topic = \"p-state\"\nsink = \"alerts\"\n[view]\nmax_venues = {VENUES}\n[http]\nmax_streams = 20000\n"
        ))
        .expect("config");
        let shared = Arc::new(Shared::new(config.clone(), Metrics::new().expect("metrics")));
        // Live: every change summarised and published (a view that has
        // caught up).
        shared.set_ready();
        // Memory: every record made as it is applied, so the process
        // holds nothing but the view (and the stream's bounded buffer).
        let before = rss_mib();
        for m in 0..60 {
            for v in 0..VENUES {
                let (k, val) = record(&format!("venue-{v:05}"), T + m * MINUTE, m);
                shared.apply(0, m * VENUES as i64 + v as i64, &k, &val);
            }
        }
        let held = rss_mib();
        // Rate: records encoded first, then applied (the view's update,
        // the venue's JSON summary, the stream's publish), into the full
        // view.
        let sample: Vec<_> = (0..VENUES * 6)
            .map(|i| record(&format!("venue-{:05}", i % VENUES), T + 60 * MINUTE + (i / VENUES) as i64 * MINUTE, 7))
            .collect();
        let started = Instant::now();
        for (i, (k, v)) in sample.iter().enumerate() {
            shared.apply(0, (VENUES * 60 + i) as i64, k, v);
        }
        let took = started.elapsed();
        let rate = sample.len() as f64 / took.as_secs_f64();
        // Catching up (a replica's start): the same records into a view
        // not yet ready, which publishes nothing.
        let fresh = Shared::new(config, Metrics::new().expect("metrics"));
        let started = Instant::now();
        for (i, (k, v)) in sample.iter().enumerate() {
            fresh.apply(0, i as i64, k, v);
        }
        let catch_up = sample.len() as f64 / started.elapsed().as_secs_f64();
        drop(fresh);
        drop(sample);
        println!(
            "{VENUES} venues x {ZONES} zones x 60 minutes ({} records): resident memory {before:.1} MiB before, {held:.1} MiB after: {:.1} MiB for the view and the stream's buffer",
            VENUES * 60,
            held - before
        );
        println!(
            "applying: {} records in {:.2}s, {rate:.0}/s (each: the view, the venue's JSON summary, the stream's buffer)",
            VENUES * 6,
            took.as_secs_f64()
        );
        println!(
            "catching up (a replica's start, nothing published yet): {catch_up:.0}/s"
        );
        // Live-stream clients: connected, each given its snapshot, then
        // idle; memory per client.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(venues::http::serve(
            listener,
            venues::http::router(shared.clone()),
        256 * 1024,
            shared.stop.subscribe(),
        ));
        let mut clients = Vec::new();
        let mut by_count = Vec::new();
        for target in [100usize, 1000, 2000] {
            while clients.len() < target {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                // One venue's stream: a small snapshot, then changes.
                let v = clients.len() % VENUES;
                s.write_all(
                    format!("GET /api/venues/venue-{v:05}/events HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
                )
                .await
                .expect("request");
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                clients.push(s);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = rss_mib();
            println!("{target} stream clients connected: resident {rss:.1} MiB");
            by_count.push(serde_json::json!({"clients": target, "rss_mib": rss}));
        }
        // A reconnect storm on the all-venues stream: clients that each
        // get the whole view (10,000 venues) as their first event and do
        // not read it. They share one snapshot; what each holds is its
        // socket's buffers (http.send_buffer).
        let storm_before = rss_mib();
        let snapshot_bytes = shared
            .snapshot_frame(None, &venues::stream::parse_id("").unwrap_or_default())
            .len();
        let mut storm = Vec::new();
        for _ in 0..200 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /api/venues/events HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("request");
            storm.push(s);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let storm_mib = rss_mib() - storm_before;
        println!(
            "200 all-venues clients not reading a {:.1} MiB snapshot: +{storm_mib:.1} MiB resident",
            snapshot_bytes as f64 / (1024.0 * 1024.0)
        );
        drop(storm);
        let per_client_kib = match (by_count.first(), by_count.last()) {
            (Some(a), Some(b)) => {
                (b["rss_mib"].as_f64().unwrap_or(0.0) - a["rss_mib"].as_f64().unwrap_or(0.0)) * 1024.0
                    / 1900.0
            }
            _ => 0.0,
        };
        println!("about {per_client_kib:.0} KiB per idle stream client (100 -> 2000)");
        let result = serde_json::json!({
            "benchmark": "venues",
            "unix_time": pipeline_benches::unix_now(),
            "machine": machine,
            "venues": VENUES, "zones": ZONES, "minutes": 60,
            "apply_per_second": rate,
            "catch_up_apply_per_second": catch_up,
            "rss_mib_before": before, "rss_mib_held": held,
            "stream_clients": by_count,
            "kib_per_stream_client": per_client_kib,
            "storm_200_all_venues_clients_mib": storm_mib,
            "snapshot_bytes": snapshot_bytes,
        });
        let path = pipeline_benches::write_results("venues", &result).expect("results");
        println!("results: {}", path.display());
        let _ = shared.stop.send(true);
    });
}
