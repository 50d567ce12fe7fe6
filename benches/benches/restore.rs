//! How long a partition's state takes to restore from its changelog on
//! tansu (sqlite) on loopback, by state size: the time a partition that
//! moved to a host that never owned it processes nothing.
//!
//! `cargo bench -p pipeline-benches --bench restore` (release build).
//! For each size N (10k, 100k and 1M ledger entries: events applied within
//! the dedupe window, in ledger records of 500 as the live path writes
//! them, plus one reorder position per 100 events and an input position per
//! record), the two logs' partition is filled once, then restored three times into a fresh redb
//! dedupe store with no local cache (a new host), and once more from the
//! cache the first restore left (the partition back on its host). Then,
//! for N live devices of the alerting sink (keyed records in the state
//! changelog), a restore into a fresh alerting sink (its SQLite file), three
//! times. Prints two tables and writes `target/bench-results/restore.json`.
//! Measured, never asserted (the device count restored is checked).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::Broker;
use processors::kafka::KafkaConfig;
use processors::kafka::changelog::KafkaChangelog;
use processors::pipeline::dedupe::{DedupeConfig, DedupeRecord, DedupeStore, RedbDedupe};
use processors::state::cache::StateCache;
use processors::state::changelog::Change;
use processors::state::{Changelog, LedgerEntries, Stores, restore};

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const WINDOW: Duration = Duration::from_secs(72 * 3600);

/// Fills the state changelog and the ledger as the live path writes them
/// for `n` applied events: one ledger record per batch of 500, one reorder
/// position per 100 events, one input position per batch.
async fn fill(state: &KafkaChangelog, ledger: &KafkaChangelog, n: usize) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claim = Change::Claim {
        owner: "bench".into(),
    }
    .encode(-1);
    let epoch = state.append(0, vec![claim]).await.expect("claim")[0];
    let mut ledger_batch = Vec::new();
    let mut state_batch = Vec::new();
    let mut events = Vec::with_capacity(BATCH);
    for i in 0..n {
        events.push(("purple".to_owned(), format!("evt_01JD5{i:012}")));
        if i % 100 == 0 {
            state_batch.push(
                Change::Sequence {
                    source: "purple".into(),
                    key: format!("venue-{:05}", i / 100),
                    next: i as i64,
                }
                .encode(epoch),
            );
        }
        if events.len() == BATCH || i + 1 == n {
            ledger_batch.push(
                Change::Applied {
                    serial: i as u64,
                    at: now,
                    events: std::mem::take(&mut events),
                }
                .encode(epoch),
            );
            state_batch.push(
                Change::Position {
                    offset: i as i64,
                    ledger_serial: Some(i as u64),
                }
                .encode(epoch),
            );
        }
        if ledger_batch.len() >= 100 || i + 1 == n {
            ledger
                .append(0, std::mem::take(&mut ledger_batch))
                .await
                .expect("ledger");
            state
                .append(0, std::mem::take(&mut state_batch))
                .await
                .expect("state");
        }
    }
}

/// Events per ledger record (the live path's `batch_max` default).
const BATCH: usize = 500;

async fn restore_once(stores: &Stores, dir: &std::path::Path) -> (f64, u64) {
    let dedupe = RedbDedupe::open(dir.join("dedupe.redb"), &DedupeConfig::new()).expect("redb");
    let mut ledger = |entries: LedgerEntries| {
        let batch: Vec<DedupeRecord<'_>> = entries
            .iter()
            .map(|(source, event_id, at)| DedupeRecord {
                source,
                event_id,
                at: UNIX_EPOCH + Duration::from_secs(*at),
            })
            .collect();
        dedupe.record(&batch).map_err(|e| e.to_string())
    };
    let started = Instant::now();
    let r = restore(stores, 0, WINDOW, &[], &mut ledger)
        .await
        .expect("restore");
    let seconds = started.elapsed().as_secs_f64();
    (seconds, r.counts.applied)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let machine = pipeline_benches::machine();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let broker = Broker::start();
        let kafka: KafkaConfig = toml_kafka(&broker.brokers());
        let mut rows = Vec::new();
        println!(
            "{:>10} {:>14} {:>12} {:>14} {:>16}",
            "entries", "records read", "new host s", "records/s", "back on host s"
        );
        for n in SIZES {
            let topic = format!("restore-{n}");
            broker.create_topic(&topic, 1).await;
            let ledger_topic = format!("restore-{n}-ledger");
            broker.create_topic(&ledger_topic, 1).await;
            let log = Arc::new(KafkaChangelog::new(&kafka, &topic).expect("producer"));
            let ledger = Arc::new(KafkaChangelog::new(&kafka, &ledger_topic).expect("producer"));
            let filled = Instant::now();
            fill(&log, &ledger, n).await;
            let fill_s = filled.elapsed().as_secs_f64();
            let mut fresh = Vec::new();
            let mut read = 0;
            for _ in 0..3 {
                let dir = tempfile::tempdir().expect("tempdir");
                let stores = Stores {
                    changelog: log.clone(),
                    ledger: ledger.clone(),
                    cache: None,
                    owner: "bench".into(),
                };
                let (s, records) = restore_once(&stores, dir.path()).await;
                fresh.push(s);
                read = records;
            }
            // Back on a host that owned it: restore once to fill a cache,
            // then again from that cache.
            let dir = tempfile::tempdir().expect("tempdir");
            let cache = Arc::new(StateCache::open(dir.path().join("state.redb")).expect("cache"));
            let stores = Stores {
                changelog: log.clone(),
                ledger: ledger.clone(),
                cache: Some(cache),
                owner: "bench".into(),
            };
            restore_once(&stores, dir.path()).await;
            let (cached, _) = restore_once(&stores, dir.path()).await;
            fresh.sort_by(f64::total_cmp);
            let median = fresh[1];
            println!(
                "{n:>10} {read:>14} {median:>12.2} {:>14.0} {cached:>16.3}",
                read as f64 / median
            );
            rows.push(serde_json::json!({
                "ledger_entries": n, "records_read": read, "fill_seconds": fill_s,
                "new_host_seconds_median": median, "new_host_seconds": fresh,
                "back_on_host_seconds": cached,
            }));
        }
        println!(
            "\n{:>10} {:>14} {:>12} {:>14}",
            "devices", "records read", "new host s", "devices/s"
        );
        let mut device_rows = Vec::new();
        for n in SIZES {
            let (median, fresh, read) = devices(&broker, &kafka, n).await;
            println!(
                "{n:>10} {read:>14} {median:>12.2} {:>14.0}",
                n as f64 / median
            );
            device_rows.push(serde_json::json!({
                "live_devices": n, "records_read": read,
                "new_host_seconds_median": median, "new_host_seconds": fresh,
            }));
        }
        let result = serde_json::json!({
            "benchmark": "restore",
            "unix_time": pipeline_benches::unix_now(),
            "machine": machine,
            "rows": rows,
            "device_rows": device_rows,
        });
        let path = pipeline_benches::write_results("restore", &result).expect("results file");
        println!("results: {}", path.display());
    });
}

/// The alerting sink's live state of `n` connected devices (1,000 venues,
/// three zones), one keyed record each as the live path writes them, in a
/// partition of its own; restored three times into a fresh alerting sink
/// (its SQLite file in a new folder: a host that never owned it). Returns
/// the median and each time, and the records read.
async fn devices(broker: &Broker, kafka: &KafkaConfig, n: usize) -> (f64, Vec<f64>, u64) {
    use processors::sinks::alerting::AlertsSink;
    use processors::state::changelog::Keyed;
    use schemas::venue_state::{Entry, Key, VenueState};
    let topic = format!("restore-devices-{n}");
    broker.create_topic(&topic, 1).await;
    let ledger_topic = format!("restore-devices-{n}-ledger");
    broker.create_topic(&ledger_topic, 1).await;
    let log = Arc::new(KafkaChangelog::new(kafka, &topic).expect("producer"));
    let ledger = Arc::new(KafkaChangelog::new(kafka, &ledger_topic).expect("producer"));
    let claim = Change::Claim {
        owner: "bench".into(),
    }
    .encode(-1);
    let epoch = log.append(0, vec![claim]).await.expect("claim")[0];
    let now = 1_790_000_000_000_000i64;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let venue = format!("venue-{:04}", i % 1000);
        let device = format!("dev_{i:08x}");
        let value = VenueState {
            venue: venue.clone(),
            entry: Entry::Device {
                device: device.clone(),
                zone: Some(["lobby", "bar", "pool"][i % 3].into()),
                connected_at: now,
                last_seen: now,
                vip: None,
            },
        }
        .encode()
        .expect("venue state");
        batch.push(
            Change::Keyed(Keyed {
                sink: "alerts".into(),
                key: Key::Device { venue, device }.encode(),
                value: Some(value),
            })
            .encode(epoch),
        );
        if batch.len() == 10_000 || i + 1 == n {
            log.append(0, std::mem::take(&mut batch))
                .await
                .expect("devices");
        }
    }
    let metrics = processors::metrics::Metrics::new().expect("metrics");
    let mut fresh = Vec::new();
    let mut read = 0;
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = alerts_config(&dir.path().join("alerts.sqlite"));
        let sink = AlertsSink::start("alerts", &config, &metrics).expect("alerts sink");
        let stores = Stores {
            changelog: log.clone(),
            ledger: ledger.clone(),
            cache: None,
            owner: "bench".into(),
        };
        let dedupe =
            RedbDedupe::open(dir.path().join("dedupe.redb"), &DedupeConfig::new()).expect("redb");
        let mut entries = |e: LedgerEntries| {
            let batch: Vec<DedupeRecord<'_>> = e
                .iter()
                .map(|(source, event_id, at)| DedupeRecord {
                    source,
                    event_id,
                    at: UNIX_EPOCH + Duration::from_secs(*at),
                })
                .collect();
            dedupe.record(&batch).map_err(|e| e.to_string())
        };
        let sinks: [processors::state::NamedSink<'_>; 1] = [("alerts", &sink)];
        let started = Instant::now();
        let r = restore(&stores, 0, WINDOW, &sinks, &mut entries)
            .await
            .expect("restore");
        fresh.push(started.elapsed().as_secs_f64());
        read = r.counts.applied;
        let counted: i64 = sink.occupancy().expect("occupancy").values().sum();
        assert_eq!(counted as usize, n, "every device restored");
    }
    let mut sorted = fresh.clone();
    sorted.sort_by(f64::total_cmp);
    (sorted[1], fresh, read)
}

/// An alerting sink's settings with its file at `path`.
fn alerts_config(path: &std::path::Path) -> processors::sinks::alerting::AlertsConfig {
    let config = processors::config::Config::from_toml(&format!(
        r#"
        [kafka]
        brokers = "unused:9092"
        [dedupe]
        path = "unused"
        [sources.purple]
        parser = "guest_wifi"
        [sinks.alerts]
        kind = "alerts"
        path = {path:?}
        [[sinks.alerts.rules]]
        kind = "zone_occupancy"
        threshold = 100
        [[sinks.alerts.receivers]]
        kind = "log"
        [[routes]]
        name = "all"
        sinks = ["alerts"]
        "#
    ))
    .expect("alerts config");
    match config.sinks.get("alerts") {
        Some(processors::sinks::SinkSection {
            sink: processors::sinks::SinkConfig::Alerts(a),
            ..
        }) => (**a).clone(),
        _ => panic!("an alerts sink"),
    }
}

fn toml_kafka(brokers: &str) -> KafkaConfig {
    let config = processors::config::Config::from_toml(&format!(
        r#"
        [kafka]
        brokers = "{brokers}"
        group_id = "bench-restore"
        [dedupe]
        path = "unused"
        [sources.purple]
        parser = "guest_wifi"
        [sinks.out]
        kind = "null"
        [[routes]]
        name = "all"
        sinks = ["out"]
        "#
    ))
    .expect("config");
    config.kafka
}
