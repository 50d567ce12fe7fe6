//! Replay and dead-letter re-drive against a real tansu broker, a real
//! PostgreSQL and the fake CRM, through the real `processors` binary:
//!
//! - a live run into PostgreSQL, the tables emptied, the whole range
//!   replayed: the same rows, column by column; replayed again: unchanged;
//!   the live group's committed offsets never move;
//! - a sub-range touches only its events; a dry run writes nothing;
//! - letters dead-lettered while the CRM was down are re-driven once it is
//!   back, each applied exactly once; one it still refuses stays pending;
//! - reversed ranges, unparsable times, unknown sinks, empty ranges and an
//!   unreachable broker each give one line naming the problem.

use std::time::{Duration, Instant, SystemTime};

use e2e::fake_crm::{FakeCrm, Reply};
use e2e::{
    Broker, Postgres, Processor, produce, purple_envelope, read_topic, run_processors, sink_lines,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A raw record: (key, value).
type Rec = (Vec<u8>, Vec<u8>);

/// A guest-WiFi record: (key, envelope).
fn record(
    id: &str,
    venue: &str,
    seq: u64,
    kind: &str,
    minute: u32,
    device: &str,
) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::json!({
        "id": id,
        "type": kind,
        "sequence": seq,
        "occurred_at": format!("2026-11-22T{:02}:{:02}:00Z", minute / 60, minute % 60),
        "venue": {"id": venue},
        "zone": "lobby",
        "device": {"id": device},
        "guest": {"id": format!("g-{device}"), "email": format!("{device}@example.com"), "vip": seq % 5 == 0},
    })
    .to_string()
    .into_bytes();
    (
        venue.as_bytes().to_vec(),
        purple_envelope(id, venue, seq, Some(body)),
    )
}

/// A stream at `venues` venues, devices connecting and leaving, delivered
/// with every fourth event swapped with its venue's next one (so some venues
/// start out of order: their first event then comes late, live and in the
/// replay alike) and every seventh sent twice.
fn stream(prefix: &str, venues: usize, per_venue: u64) -> (Vec<Rec>, usize) {
    let mut per: Vec<Vec<Rec>> = Vec::new();
    for v in 0..venues {
        let venue = format!("{prefix}-venue-{v}");
        let mut evs = Vec::new();
        for s in 1..=per_venue {
            let device = format!("{prefix}-dev-{v}-{}", (s - 1) / 2 % 5);
            let kind = if s % 2 == 1 {
                "device_connected"
            } else {
                "device_disconnected"
            };
            let minute = 360 + (s as u32) * 7 + v as u32;
            evs.push(record(
                &format!("{venue}-{s}"),
                &venue,
                s,
                kind,
                minute,
                &device,
            ));
        }
        for i in (0..evs.len().saturating_sub(1)).step_by(4) {
            evs.swap(i, i + 1);
        }
        per.push(evs);
    }
    let distinct = venues * per_venue as usize;
    let mut out = Vec::new();
    let mut k = 0;
    for i in 0..per_venue as usize {
        for evs in &per {
            out.push(evs[i].clone());
            if k % 7 == 3 {
                out.push(evs[i].clone());
            }
            k += 1;
        }
    }
    (out, distinct)
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn analytics_config(
    brokers: &str,
    topic: &str,
    group: &str,
    dir: &tempfile::TempDir,
    url: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
[processing]
gap_timeout = "20s"
retry_initial = "50ms"
retry_max = "1s"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[sources.purple]
parser = "guest_wifi"
[sinks.analytics]
kind = "postgres"
url = "{url}"
[sinks.audit]
kind = "jsonl"
path = "{audit}"
[[routes]]
name = "everything"
sinks = ["analytics"]
[[routes]]
name = "vip"
where = {{ "/guest/vip" = true }}
sinks = ["audit"]
"#,
        dedupe = dir.path().join(format!("{group}.redb")).display(),
        audit = dir.path().join("audit.jsonl").display(),
    )
}

/// Every row of the three analytics tables, every column as text.
fn tables(pg: &Postgres) -> [String; 3] {
    [
        pg.psql("select e::text from events e order by source, event_id"),
        pg.psql(
            "select s::text from device_sessions s order by venue_id, device_id, connect_event_id",
        ),
        pg.psql("select f::text from footfall_hourly f order by venue_id, hour"),
    ]
}

fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect()
}

async fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_into_emptied_tables_gives_the_live_rows_and_again_changes_nothing() {
    let pg = Postgres::start();
    let broker = Broker::start();
    broker.create_topic("rp", 3).await;
    broker.create_topic("rp.quarantine", 1).await;
    broker.create_topic("rp.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = analytics_config(&broker.brokers(), "rp", "g-rp", &dir, &pg.url());
    let config = write_config(&dir, "p.toml", &text);
    let from = rfc3339(SystemTime::now() - Duration::from_secs(60));
    let (records, distinct) = stream("rp", 4, 30);
    let mut live = Processor::start(&text);
    produce(&broker.brokers(), "rp", &records).await;
    let total = distinct.to_string();
    wait_for(
        "the live path stored every event",
        Duration::from_secs(60),
        || pg.psql("select count(*) from events") == total,
        &|| live.log(),
    )
    .await;
    // Let the last offsets be committed, then stop the live path.
    tokio::time::sleep(Duration::from_secs(2)).await;
    live.stop(Duration::from_secs(30));
    let to = rfc3339(SystemTime::now() + Duration::from_secs(60));
    let before = tables(&pg);
    let late: usize = pg
        .psql("select count(*) from events where late")
        .parse()
        .unwrap();
    assert!(
        late > 0 && late < distinct,
        "the stream should make the live path flag some events late ({late}), not all"
    );
    assert!(!before[1].is_empty() && !before[2].is_empty());
    let audit = dir.path().join("audit.jsonl");
    let vip_lines = sink_lines(&audit).len();
    assert!(vip_lines > 0);
    let offsets = committed(&broker.brokers(), "g-rp", "rp", 3);

    pg.psql("truncate events, device_sessions, footfall_hourly");
    let args = ["replay", "--config", &config, "--from", &from, "--to", &to];
    let first = run_processors(&args, &[], Duration::from_secs(120));
    assert!(first.status.success(), "{first:?}");
    assert!(
        first
            .stdout
            .contains(&format!("{} records in range", records.len())),
        "{}",
        first.stdout
    );
    assert_eq!(tables(&pg), before, "the replay changed the tables");
    // The jsonl sink is idempotent too: the VIP events are not appended twice.
    assert_eq!(sink_lines(&audit).len(), vip_lines);

    let again = run_processors(&args, &[], Duration::from_secs(120));
    assert!(again.status.success(), "{again:?}");
    assert_eq!(tables(&pg), before, "a second replay changed the tables");
    assert_eq!(
        committed(&broker.brokers(), "g-rp", "rp", 3),
        offsets,
        "replay moved the live group's offsets"
    );

    // --sink restricts the replay: into analytics only, the audit file is
    // not even opened.
    pg.psql("truncate events, device_sessions, footfall_hourly");
    std::fs::remove_file(&audit).unwrap();
    let only = run_processors(
        &[
            "replay",
            "--config",
            &config,
            "--from",
            &from,
            "--to",
            &to,
            "--sink",
            "analytics",
        ],
        &[],
        Duration::from_secs(120),
    );
    assert!(only.status.success(), "{only:?}");
    assert_eq!(tables(&pg), before);
    assert!(!audit.exists(), "a sink that was not chosen was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_range_touches_only_its_events_and_a_dry_run_nothing() {
    let broker = Broker::start();
    broker.create_topic("sub", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("out.jsonl");
    let text = e2e::processors_config(
        &broker.brokers(),
        "sub",
        "g-sub",
        &dir.path().join("d.redb"),
        &sink,
        "",
    );
    let config = write_config(&dir, "p.toml", &text);
    let batch = |name: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        (1..=10)
            .map(|s| {
                record(
                    &format!("{name}-{s}"),
                    &format!("sub-venue-{}", s % 3),
                    s,
                    if s % 2 == 0 {
                        "device_disconnected"
                    } else {
                        "device_connected"
                    },
                    400 + s as u32,
                    "d",
                )
            })
            .collect()
    };
    let t0 = SystemTime::now() - Duration::from_secs(1);
    produce(&broker.brokers(), "sub", &batch("a")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t1 = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(&broker.brokers(), "sub", &batch("b")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t2 = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce(&broker.brokers(), "sub", &batch("c")).await;

    let (from, to) = (rfc3339(t1), rfc3339(t2));
    let dry = run_processors(
        &[
            "replay",
            "--config",
            &config,
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(dry.status.success(), "{dry:?}");
    assert!(!sink.exists(), "a dry run wrote to a sink");
    assert!(
        dry.stdout.contains("dry run, nothing written"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("purple       device_connected                5")
            && dry
                .stdout
                .contains("purple       device_disconnected             5"),
        "{}",
        dry.stdout
    );

    // --source picks by source: none of these records is from github.
    let other = run_processors(
        &[
            "replay", "--config", &config, "--from", &from, "--to", &to, "--source", "github",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(other.status.code(), Some(3), "{other:?}");
    assert!(
        sink_lines(&sink).is_empty(),
        "a replay of another source wrote"
    );

    let done = run_processors(
        &["replay", "--config", &config, "--from", &from, "--to", &to],
        &[],
        Duration::from_secs(60),
    );
    assert!(done.status.success(), "{done:?}");
    let mut ids: Vec<String> = sink_lines(&sink)
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (1..=10).map(|s| format!("b-{s}")).collect();
    want.sort();
    assert_eq!(ids, want, "the sub-range replayed other events");
    // Per venue in sequence order.
    let lines = sink_lines(&sink);
    for v in 0..3 {
        let seqs: Vec<i64> = lines
            .iter()
            .filter(|l| l["ordering_key"] == format!("sub-venue-{v}"))
            .map(|l| l["sequence"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "venue {v}: {seqs:?}");
    }
    // And the whole range gives all three batches.
    let all = run_processors(
        &[
            "replay",
            "--config",
            &config,
            "--from",
            &rfc3339(t0),
            "--to",
            &rfc3339(SystemTime::now()),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(all.status.success(), "{all:?}");
    assert_eq!(sink_lines(&sink).len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_a_down_crm_are_redriven_once_it_recovers_each_applied_once() {
    let broker = Broker::start();
    broker.create_topic("dl", 1).await;
    broker.create_topic("dl.quarantine", 1).await;
    broker.create_topic("dl.dlq", 1).await;
    let crm = FakeCrm::start().await;
    // Down in the way that dead-letters: the CRM refuses every event for
    // good (422, say a field it briefly required). An outage answering
    // 503 would not: it costs no event an attempt, the partition waits.
    crm.set_outage(Some(422));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-dl"
topic = "dl"
quarantine_topic = "dl.quarantine"
dlq_topic = "dl.dlq"
[processing]
retry_initial = "50ms"
retry_max = "500ms"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[sources.purple]
parser = "guest_wifi"
[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "CRM_REPLAY_TOKEN"
template = "{template}"
timeout = "500ms"
attempts_per_call = 1
max_attempts = 2
backoff_initial = "10ms"
backoff_max = "20ms"
breaker_failures = 1000
# No e-mail address for this CRM: neither the live path nor a re-drive
# (which goes past the routes) may send one, though its template sends
# the whole body.
fields = ["guest.id", "guest.vip"]
[sinks.log]
kind = "null"
[[routes]]
name = "crm"
types = ["guest_connects"]
sinks = ["crm"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("d.redb").display(),
        url = crm.url(),
        template = write_config(
            &dir,
            "journey.json",
            r#"{"ContactKey": "{{guest.id}}", "VIP": "{{guest.vip}}", "Event": "{{body}}"}"#
        ),
    );
    let config = write_config(&dir, "p.toml", &text);
    let env = [("CRM_REPLAY_TOKEN", "Bearer test-token")];
    // SAFETY: set before the child starts; only the child reads it.
    unsafe { std::env::set_var("CRM_REPLAY_TOKEN", "Bearer test-token") };
    let live = Processor::start(&text);
    let n = 6;
    let records: Vec<_> = (1..=n)
        .map(|s| {
            record(
                &format!("dl{s}"),
                "v-dl",
                s,
                "guest_connects",
                500,
                &format!("d{s}"),
            )
        })
        .collect();
    produce(&broker.brokers(), "dl", &records).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.metric("processors_dead_lettered_total").await < n as f64 {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered:\n{}",
            live.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(live);
    assert_eq!(crm.state.lock().unwrap().applied.len(), 0);

    let list = run_processors(
        &["dlq", "list", "--config", &config],
        &env,
        Duration::from_secs(60),
    );
    assert!(list.status.success(), "{list:?}");
    assert!(
        list.stdout
            .starts_with(&format!("{n} pending dead letters in dl.dlq")),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains("HTTP 422"), "{}", list.stdout);

    // A filter on another sink leaves every letter pending.
    let other = run_processors(
        &["dlq", "redrive", "--config", &config, "--sink", "log"],
        &env,
        Duration::from_secs(60),
    );
    assert!(other.status.success(), "{other:?}");
    assert!(
        other.stdout.contains(&format!(
            "0 accepted, 0 still failing (re-queued with their new reason), {n} left"
        )),
        "{}",
        other.stdout
    );
    assert_eq!(
        crm.requests(),
        n as usize,
        "a filtered re-drive reached the CRM"
    );

    // Nor does one on letters older than they are.
    let young = run_processors(
        &["dlq", "redrive", "--config", &config, "--older-than", "1h"],
        &env,
        Duration::from_secs(60),
    );
    assert!(
        young.stdout.contains(&format!(
            "0 accepted, 0 still failing (re-queued with their new reason), {n} left"
        )),
        "{}",
        young.stdout
    );
    assert_eq!(
        crm.requests(),
        n as usize,
        "a filtered re-drive reached the CRM"
    );

    // The CRM is back, but refuses dl3 for good.
    crm.set_down(false);
    crm.script("purple:dl3", &[Reply::Always(400)]);
    let redrive = run_processors(
        &["dlq", "redrive", "--config", &config, "--sink", "crm"],
        &env,
        Duration::from_secs(60),
    );
    assert!(redrive.status.success(), "{redrive:?}");
    assert!(
        redrive
            .stdout
            .contains(&format!("{} accepted, 1 still failing", n - 1)),
        "{}",
        redrive.stdout
    );
    {
        let s = crm.state.lock().unwrap();
        for i in (1..=n).filter(|i| *i != 3) {
            assert_eq!(s.applied_count(&format!("purple:dl{i}")), 1, "dl{i}");
        }
        assert_eq!(s.applied_count("purple:dl3"), 0);
        assert!(
            s.repeats.is_empty(),
            "an event was sent again: {:?}",
            s.repeats
        );
        // The sink's `fields` held on the live path and on the re-drive.
        assert!(s.requests.len() > n as usize, "{}", s.requests.len());
        for seen in &s.requests {
            assert!(
                !seen.body.to_string().contains("example.com"),
                "an e-mail address reached the CRM: {}",
                seen.body
            );
        }
    }
    let list = run_processors(
        &["dlq", "list", "--config", &config],
        &env,
        Duration::from_secs(60),
    );
    assert!(
        list.stdout.starts_with("1 pending dead letters in dl.dlq"),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains("HTTP 400"), "{}", list.stdout);

    // Again: only dl3 is offered (and refused again); nothing is re-sent.
    let again = run_processors(
        &["dlq", "redrive", "--config", &config],
        &env,
        Duration::from_secs(60),
    );
    assert!(
        again.stdout.contains("0 accepted, 1 still failing"),
        "{}",
        again.stdout
    );
    {
        let s = crm.state.lock().unwrap();
        assert_eq!(s.applied.len(), n as usize - 1);
        assert!(
            s.repeats.is_empty(),
            "an event was sent again: {:?}",
            s.repeats
        );
    }
    // The re-queued letter keeps its event and counts its attempts.
    let dlq = read_topic(&broker.brokers(), "dl.dlq").await;
    let last = dlq.last().unwrap();
    assert_eq!(last.header("event-id").as_deref(), Some("dl3"));
    assert_eq!(last.header("redrive-attempts").as_deref(), Some("2"));

    // With a max_event_age on the route (the events are from 2026-11-22),
    // dl3 is no longer worth sending: removed, and the CRM hears nothing.
    let aged = write_config(
        &dir,
        "aged.toml",
        &text.replace(
            "types = [\"guest_connects\"]\nsinks = [\"crm\"]",
            "types = [\"guest_connects\"]\nmax_event_age = \"1d\"\nsinks = [\"crm\"]",
        ),
    );
    let before = crm.requests();
    let expired = run_processors(
        &["dlq", "redrive", "--config", &aged],
        &env,
        Duration::from_secs(60),
    );
    assert!(expired.status.success(), "{expired:?}");
    assert!(
        expired.stdout.contains("0 accepted, 0 still failing")
            && expired.stdout.contains("1 expired"),
        "{}",
        expired.stdout
    );
    assert_eq!(crm.requests(), before, "an expired letter reached the CRM");
    let list = run_processors(
        &["dlq", "list", "--config", &aged],
        &env,
        Duration::from_secs(60),
    );
    assert!(
        list.stdout.starts_with("no pending dead letters"),
        "{}",
        list.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_sinks_and_brokers_get_one_line_errors() {
    let broker = Broker::start();
    broker.create_topic("er", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("out.jsonl");
    let config = write_config(
        &dir,
        "p.toml",
        &e2e::processors_config(
            &broker.brokers(),
            "er",
            "g-er",
            &dir.path().join("d.redb"),
            &sink,
            "",
        ),
    );
    produce(
        &broker.brokers(),
        "er",
        &[record("er1", "v", 1, "device_connected", 400, "d")],
    )
    .await;
    let now = rfc3339(SystemTime::now() + Duration::from_secs(60));
    let one_line = |f: &e2e::Finished, code: i32, needle: &str| {
        assert_eq!(f.status.code(), Some(code), "{f:?}");
        let lines: Vec<&str> = f.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {f:?}");
        assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    };
    let replay = |from: &str, to: &str, extra: &[&str]| {
        let mut args = vec!["replay", "--config", &config, "--from", from, "--to", to];
        args.extend_from_slice(extra);
        run_processors(&args, &[], Duration::from_secs(60))
    };
    one_line(
        &replay(&now, "2020-01-01T00:00:00Z", &[]),
        2,
        "is not before --to 2020-01-01T00:00:00Z",
    );
    one_line(
        &replay("yesterday", &now, &[]),
        2,
        "--from: \"yesterday\" is not an RFC 3339 time",
    );
    one_line(
        &replay("2020-01-01T00:00:00Z", &now, &["--sink", "nope"]),
        2,
        "--sink nope: no sink named \"nope\" in the config (it has: test)",
    );
    one_line(
        &replay("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", &[]),
        3,
        "no records in er from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z",
    );
    assert!(sink_lines(&sink).is_empty(), "an empty range wrote events");
    // An unreachable broker: a bounded wait, then one line.
    let closed = e2e::free_port();
    let dead = write_config(
        &dir,
        "dead.toml",
        &e2e::processors_config(
            &format!("127.0.0.1:{closed}"),
            "er",
            "g-er",
            &dir.path().join("d2.redb"),
            &sink,
            "",
        ),
    );
    let f = run_processors(
        &[
            "replay",
            "--config",
            &dead,
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            &now,
            "--timeout",
            "2s",
        ],
        &[],
        Duration::from_secs(60),
    );
    one_line(
        &f,
        1,
        &format!("cannot reach the brokers at 127.0.0.1:{closed} within 2s"),
    );
    let f = run_processors(
        &["dlq", "list", "--config", &dead, "--timeout", "2s"],
        &[],
        Duration::from_secs(60),
    );
    one_line(&f, 1, "cannot reach the brokers");
}

/// A config with a CRM, an alerting sink and a JSON-lines audit file,
/// `welcome_age` (a `max_event_age = ...` line, or nothing) on the CRM route.
fn side_effect_config(
    brokers: &str,
    topic: &str,
    dir: &tempfile::TempDir,
    crm_url: &str,
    welcome_age: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-{topic}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
[processing]
retry_initial = "50ms"
retry_max = "500ms"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[sources.purple]
parser = "guest_wifi"
[sinks.audit]
kind = "jsonl"
path = "{audit}"
[sinks.crm]
kind = "crm"
url = "{crm_url}"
auth_header = "Authorization"
auth_env = "CRM_SIDE_TOKEN"
template = "{template}"
timeout = "2s"
[sinks.alerts]
kind = "alerts"
path = "{alerts}"
rules = [{{ kind = "vip_arrival" }}]
receivers = [{{ kind = "log" }}]
[[routes]]
name = "everything"
sinks = ["audit"]
[[routes]]
name = "welcome"
types = ["guest_connects"]
{welcome_age}
sinks = ["crm"]
[[routes]]
name = "live"
include_late = false
sinks = ["alerts"]
"#,
        dedupe = dir.path().join("d.redb").display(),
        audit = dir.path().join("audit.jsonl").display(),
        alerts = dir.path().join("alerts.sqlite").display(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_without_sink_leaves_the_crm_and_alerts_out_and_says_so() {
    let broker = Broker::start();
    broker.create_topic("rs", 1).await;
    broker.create_topic("rs.dlq", 1).await;
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = side_effect_config(&broker.brokers(), "rs", &dir, &crm.url(), "");
    let config = write_config(&dir, "p.toml", &text);
    let env = [("CRM_SIDE_TOKEN", "Bearer side-token")];
    let from = rfc3339(SystemTime::now() - Duration::from_secs(60));
    // A week-old backlog of arrivals (occurred_at 2026-11-22).
    let n = 4;
    let records: Vec<_> = (1..=n)
        .map(|s| {
            record(
                &format!("rs{s}"),
                "v-rs",
                s,
                "guest_connects",
                600,
                &format!("d{s}"),
            )
        })
        .collect();
    produce(&broker.brokers(), "rs", &records).await;
    let to = rfc3339(SystemTime::now() + Duration::from_secs(60));
    let audit = dir.path().join("audit.jsonl");
    let alerts = dir.path().join("alerts.sqlite");

    // No --sink: the sinks that are safe to rebuild, and only those.
    let args = ["replay", "--config", &config, "--from", &from, "--to", &to];
    let plain = run_processors(&args, &env, Duration::from_secs(60));
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(sink_lines(&audit).len(), n as usize, "{plain:?}");
    assert_eq!(
        crm.requests(),
        0,
        "a replay without --sink reached the CRM: {plain:?}"
    );
    assert!(
        !alerts.exists(),
        "a replay without --sink opened the alerting sink"
    );
    assert!(
        plain.stderr.contains(
            "left out alerts (alerts), crm (crm): they have effects outside the pipeline"
        ) && plain.stderr.contains("--sink"),
        "no word on the sinks left out: {plain:?}"
    );
    // A dry run says the same and counts only what would be replayed.
    let dry = run_processors(
        &[&args[..], &["--dry-run"]].concat(),
        &env,
        Duration::from_secs(60),
    );
    assert!(dry.status.success(), "{dry:?}");
    assert!(dry.stderr.contains("crm (crm)"), "{dry:?}");
    assert!(!dry.stdout.contains("crm"), "{}", dry.stdout);

    // Named explicitly, the CRM is replayed into (its route has no
    // max_event_age here), each event once by its idempotency key.
    let named = run_processors(
        &[&args[..], &["--sink", "crm"]].concat(),
        &env,
        Duration::from_secs(60),
    );
    assert!(named.status.success(), "{named:?}");
    assert!(!named.stderr.contains("left out"), "{named:?}");
    {
        let s = crm.state.lock().unwrap();
        assert_eq!(s.applied.len(), n as usize, "{named:?}");
    }

    // With max_event_age on the CRM route, even a replay that names the CRM
    // sends nothing for a week-old backlog: the route skips each event.
    let aged = write_config(
        &dir,
        "aged.toml",
        &side_effect_config(
            &broker.brokers(),
            "rs",
            &dir,
            &crm.url(),
            "max_event_age = \"15m\"",
        ),
    );
    let before = crm.requests();
    let skipped = run_processors(
        &[
            "replay", "--config", &aged, "--from", &from, "--to", &to, "--sink", "crm",
        ],
        &env,
        Duration::from_secs(60),
    );
    assert!(skipped.status.success(), "{skipped:?}");
    assert_eq!(crm.requests(), before, "a week-old event reached the CRM");
    assert!(
        skipped.stdout.contains("skipped as too old, by route:")
            && skipped.stdout.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w == ["welcome", &n.to_string()]
            }),
        "{}",
        skipped.stdout
    );
}
