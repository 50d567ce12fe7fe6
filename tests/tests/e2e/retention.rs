//! Retention of the analytics store, end to end: a real broker, the real
//! processors binary and PostgreSQL (or the embedded store). Rows stored
//! without a retention are removed by the first sweep once one is set,
//! counted in `processors_retention_removed_total` and logged; recent rows
//! stay; the hourly rollup of a swept hour keeps its counts; and an event
//! older than the horizon offered afterwards (a late or replayed one) is
//! not stored and does not recompute that hour from what is left.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{Broker, Postgres, Processor, metric_sum, produce, purple_envelope, scrape};

/// A processors config for `topic`, routing everything to `sink`.
fn config(brokers: &str, topic: &str, dir: &tempfile::TempDir, sink: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-{topic}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
# The second instance joins after the first left; should the leave be
# lost, the group moves on after 6 s rather than librdkafka's 45 s.
session_timeout = "6s"
instance_id = ""
options = {{ "heartbeat.interval.ms" = "1000" }}
[processing]
gap_timeout = "20s"
retry_initial = "50ms"
retry_max = "1s"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[log]
format = "json"
[sources.purple]
parser = "guest_wifi"
{sink}
[[routes]]
name = "everything"
sinks = ["analytics"]
"#,
        dedupe = dir.path().join(format!("{topic}.redb")).display(),
    )
}

/// Microseconds since the epoch, now.
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A guest-WiFi record of venue `ret-venue`: sequence `seq`, `kind`,
/// `device`, occurred at `micros`.
fn record(seq: u64, kind: &str, device: &str, micros: i64) -> (Vec<u8>, Vec<u8>) {
    let id = format!("ret-{seq}");
    let body = serde_json::json!({
        "id": id,
        "type": kind,
        "sequence": seq,
        "occurred_at": plumbing::utc_text(micros),
        "venue": {"id": "ret-venue"},
        "zone": "lobby",
        "device": {"id": device},
    })
    .to_string()
    .into_bytes();
    (
        b"ret-venue".to_vec(),
        purple_envelope(&id, "ret-venue", seq, Some(body)),
    )
}

/// Two visits of two devices, 40 days ago (sequences 1 to 4, one hour)
/// and two hours ago (5 to 8).
fn visits(old: i64, recent: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (base, at) in [(0, old), (4, recent)] {
        let minute = 60_000_000;
        out.push(record(base + 1, "device_connected", "ret-dev-a", at));
        out.push(record(
            base + 2,
            "device_connected",
            "ret-dev-b",
            at + minute,
        ));
        out.push(record(
            base + 3,
            "device_disconnected",
            "ret-dev-a",
            at + 20 * minute,
        ));
        out.push(record(
            base + 4,
            "device_disconnected",
            "ret-dev-b",
            at + 25 * minute,
        ));
    }
    out
}

/// The store under test, read the same way on both engines.
trait Store {
    /// `select ...` answering one value per line, fields joined by `|`.
    fn query(&self, sql: &str) -> String;
    fn count(&self, table: &str) -> usize {
        self.query(&format!("select count(*) from {table}"))
            .parse()
            .unwrap_or(0)
    }
}

impl Store for Postgres {
    fn query(&self, sql: &str) -> String {
        self.psql(sql)
    }
}

struct Embedded(std::path::PathBuf);

impl Store for Embedded {
    fn query(&self, sql: &str) -> String {
        if !self.0.exists() {
            return String::new();
        }
        let conn = rusqlite::Connection::open_with_flags(
            &self.0,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the embedded store");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = conn.prepare(sql).expect("prepare");
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let mut fields = Vec::with_capacity(n);
                for i in 0..n {
                    let v: rusqlite::types::Value = row.get(i)?;
                    fields.push(match v {
                        rusqlite::types::Value::Null => String::new(),
                        rusqlite::types::Value::Integer(i) => i.to_string(),
                        rusqlite::types::Value::Real(r) => r.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        rusqlite::types::Value::Blob(b) => format!("{b:?}"),
                    });
                }
                Ok(fields.join("|"))
            })
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows.join("\n")
    }
}

async fn wait_until(what: &str, p: &Processor, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole story on one engine: `sink(retention)` is the `[sinks.analytics]`
/// section with that extra text.
async fn old_rows_go_recent_rows_stay(
    topic: &str,
    store: &dyn Store,
    sink: impl Fn(&str) -> String,
    footfall_sql: &str,
) {
    let broker = Broker::start();
    broker.create_topic(topic, 2).await;
    broker.create_topic(&format!("{topic}.quarantine"), 1).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000_000;
    let now = now_micros();
    let old = now - 40 * 24 * hour;
    let old = old - old.rem_euclid(hour) + 5 * 60_000_000;
    let recent = now - 2 * hour;

    // Stored without a retention: all eight events, four sessions.
    let mut first = Processor::start(&config(&broker.brokers(), topic, &dir, &sink("")));
    produce(&broker.brokers(), topic, &visits(old, recent)).await;
    wait_until("eight events stored", &first, async || {
        store.count("events") == 8
    })
    .await;
    assert_eq!(store.count("device_sessions"), 4);
    let old_hour = store.query(footfall_sql);
    assert!(old_hour.contains("|2|2"), "{old_hour}");
    first.stop(Duration::from_secs(20));

    // 30 days, swept every second: the old visit goes, the recent stays.
    let second = Processor::start(&config(
        &broker.brokers(),
        topic,
        &dir,
        &sink("retention = \"30d\"\nretention_interval = \"1s\"\nretention_batch = 3\n"),
    ));
    wait_until("the old rows swept and counted", &second, async || {
        second.metric("processors_retention_removed_total").await >= 6.0
    })
    .await;
    let s = scrape(second.metrics_addr).await;
    let removed = |table| {
        metric_sum(
            &s,
            "processors_retention_removed_total",
            &[("store", "analytics"), ("table", table)],
        )
    };
    assert_eq!(removed("events"), 4.0, "{s}");
    assert_eq!(removed("device_sessions"), 2.0, "{s}");
    assert_eq!(
        store.query("select event_id from events order by event_id"),
        "ret-5\nret-6\nret-7\nret-8"
    );
    assert_eq!(
        store.query("select connect_event_id from device_sessions order by 1"),
        "ret-5\nret-6"
    );
    // The rollup of the swept hour is kept as it was.
    assert_eq!(store.query(footfall_sql), old_hour);
    // One log line per sweep, naming the store and the counts, no row.
    let log = second.log();
    let sweeps: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("retention sweep"))
        .collect();
    assert!(
        sweeps.iter().any(|l| l.contains("events=4")),
        "no sweep line with the count:\n{log}"
    );
    assert!(
        sweeps
            .iter()
            .all(|l| !l.contains("ret-dev") && !l.contains("ret-venue")),
        "{sweeps:?}"
    );

    // A late event older than the horizon (a replay, a provider's late
    // retry of last month) is not stored, and its hour is not recomputed
    // from the rows left; a recent one is.
    produce(
        &broker.brokers(),
        topic,
        &[
            record(9, "device_connected", "ret-dev-c", old + 60_000_000),
            record(
                10,
                "device_connected",
                "ret-dev-c",
                recent + 40 * 60_000_000,
            ),
        ],
    )
    .await;
    wait_until("the recent event stored", &second, async || {
        store.count("events") == 5
    })
    .await;
    wait_until("the old event refused and counted", &second, async || {
        second.metric("processors_retention_refused_total").await == 1.0
    })
    .await;
    assert_eq!(
        store.query("select count(*) from events where event_id = 'ret-9'"),
        "0"
    );
    assert_eq!(
        store.query(footfall_sql).lines().next(),
        old_hour.lines().next()
    );
}

/// `footfall_hourly` rows as `hour|connections|unique_devices`, oldest first.
const PG_FOOTFALL: &str = "select to_char(hour at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24') \
     || '|' || connections || '|' || unique_devices from footfall_hourly order by hour";
const SQLITE_FOOTFALL: &str = "select substr(hour, 1, 13) || '|' || connections || '|' || unique_devices \
     from footfall_hourly order by hour";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_the_postgres_retention_are_removed_and_counted() {
    let pg = Postgres::start();
    let url = pg.url();
    old_rows_go_recent_rows_stay(
        "ret-pg",
        &pg,
        |extra| format!("[sinks.analytics]\nkind = \"analytics\"\nurl = \"{url}\"\n{extra}"),
        PG_FOOTFALL,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_the_embedded_retention_are_removed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.sqlite");
    let store = Embedded(path.clone());
    old_rows_go_recent_rows_stay(
        "ret-emb",
        &store,
        |extra| {
            format!(
                "[sinks.analytics]\nkind = \"analytics\"\npath = \"{}\"\n{extra}",
                path.display()
            )
        },
        SQLITE_FOOTFALL,
    )
    .await;
}

/// Two instances sweeping one PostgreSQL store at once (a rolling restart,
/// two replicas with the same config): every old row is deleted and
/// counted once in all, none waits on the other, and recent rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sweeping_one_postgres_store_at_once_count_each_row_once() {
    use processors::sinks::Sink;
    use processors::sinks::analytics::{PostgresSink, RetentionSettings};
    let pg = Postgres::start();
    let url = pg.url();
    let settings = Some(RetentionSettings {
        keep: Some(Duration::from_secs(30 * 86_400)),
        interval: Duration::from_secs(1),
        batch: 50,
    });
    let metrics = processors::metrics::Metrics::new().unwrap();
    let a = PostgresSink::connect("analytics", &url)
        .await
        .unwrap()
        .with_retention(settings, &metrics);
    let b = PostgresSink::connect("analytics", &url)
        .await
        .unwrap()
        .with_retention(settings, &metrics);
    // 4,000 events 40 days old over 20 venues and 200 devices, with their
    // sessions and hourly rows, and 100 recent ones.
    pg.psql(
        "insert into events (source, event_id, event_type, occurred_at, received_at, late, venue_id, device_id, body)
         select 'purple', 'old-' || i, 'device_connected', now() - interval '40 days' + i * interval '1 second',
                now(), false, 'v' || (i % 20), 'd' || (i % 200), '{}'::jsonb
         from generate_series(1, 4000) i;
         insert into events (source, event_id, event_type, occurred_at, received_at, late, venue_id, device_id, body)
         select 'purple', 'new-' || i, 'device_connected', now() - interval '1 hour',
                now(), false, 'v' || (i % 20), 'd' || (i % 200), '{}'::jsonb
         from generate_series(1, 100) i;
         insert into device_sessions (venue_id, device_id, connected_at, connect_event_id)
         select venue_id, device_id, occurred_at, event_id from events;",
    );
    let (ra, rb) = tokio::join!(a.retained().unwrap().sweep(), b.retained().unwrap().sweep());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    eprintln!("the two sweeps removed {ra:?} and {rb:?}");
    let total = |table: &str| -> u64 {
        ra.iter()
            .chain(rb.iter())
            .filter(|(t, _)| *t == table)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(total("events"), 4000, "{ra:?} {rb:?}");
    assert_eq!(total("device_sessions"), 4000, "{ra:?} {rb:?}");
    assert_eq!(pg.psql("select count(*) from events"), "100");
    assert_eq!(pg.psql("select count(*) from device_sessions"), "100");
    assert_eq!(
        pg.psql("select count(*) from events where event_id like 'old-%'"),
        "0"
    );
}

/// The JSON-lines file: lines written before a retention was set and older
/// than it are gone after the first sweep, counted; recent ones stay, and
/// an old event offered afterwards is not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_older_than_the_jsonl_retention_are_removed_and_counted() {
    let broker = Broker::start();
    let topic = "ret-jsonl";
    broker.create_topic(topic, 2).await;
    broker.create_topic(&format!("{topic}.quarantine"), 1).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let sink = |extra: &str| {
        format!(
            "[sinks.analytics]\nkind = \"jsonl\"\npath = \"{}\"\n{extra}",
            path.display()
        )
    };
    let ids = || -> Vec<String> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let hour = 3_600_000_000;
    let now = now_micros();
    let (old, recent) = (now - 40 * 24 * hour, now - 2 * hour);
    let mut first = Processor::start(&config(&broker.brokers(), topic, &dir, &sink("")));
    produce(&broker.brokers(), topic, &visits(old, recent)).await;
    wait_until("eight lines written", &first, async || ids().len() == 8).await;
    first.stop(Duration::from_secs(20));

    let second = Processor::start(&config(
        &broker.brokers(),
        topic,
        &dir,
        &sink("retention = \"30d\"\nretention_interval = \"1s\"\n"),
    ));
    wait_until("the old lines swept and counted", &second, async || {
        second.metric("processors_retention_removed_total").await >= 4.0
    })
    .await;
    assert_eq!(ids(), ["ret-5", "ret-6", "ret-7", "ret-8"]);
    let s = scrape(second.metrics_addr).await;
    assert_eq!(
        metric_sum(
            &s,
            "processors_retention_removed_total",
            &[("store", "analytics"), ("table", "lines")]
        ),
        4.0,
        "{s}"
    );
    produce(
        &broker.brokers(),
        topic,
        &[
            record(9, "device_connected", "ret-dev-c", old),
            record(10, "device_connected", "ret-dev-c", recent),
        ],
    )
    .await;
    wait_until("the recent event written", &second, async || {
        ids().len() == 5
    })
    .await;
    assert_eq!(ids()[4], "ret-10");
    assert_eq!(
        second.metric("processors_retention_refused_total").await,
        1.0
    );
}
