//! Real provider payloads (issue 22, part 2), end to end: tansu, the
//! `processors` binary, PostgreSQL for the analytics store and the
//! alerting sink's live state. An event type the guest-WiFi parser does
//! not know is passed on, routable by its type and stored by analytics
//! with its body; a guest leaving the venue (`venue_left`) ends the
//! device's session in analytics and its presence in the alerting state;
//! a source that sends no sequence (`order_by = "occurred_at"`) has each
//! venue's events released in time order; a source whose payload names
//! its fields differently maps them by JSON pointers, and `check-config`
//! proves its sample maps.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{
    Broker, Postgres, Processor, processors_config, produce, purple_envelope,
    purple_envelope_received, sink_lines,
};

/// A guest-WiFi event at venue `pl-v1`, happening (and received) at `at`.
fn wifi(id: &str, kind: &str, seq: u64, device: &str, at: SystemTime) -> (Vec<u8>, Vec<u8>) {
    let mut body = serde_json::json!({
        "id": id,
        "type": kind,
        "sequence": seq,
        "occurred_at": humantime::format_rfc3339_micros(at).to_string(),
        "venue": {"id": "pl-v1", "name": "Airport Hotel"},
        "zone": "lobby",
        "device": {"id": device},
    });
    if kind == "guest_feedback" {
        body["rating"] = serde_json::json!(5);
        body["comment"] = serde_json::json!("fast wifi");
    }
    let received = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    (
        b"pl-v1".to_vec(),
        purple_envelope_received(
            id,
            "pl-v1",
            seq,
            Some(body.to_string().into_bytes()),
            received,
        ),
    )
}

/// Processors reading `topic`: the `purple` source parsed as guest-WiFi,
/// every event to the PostgreSQL analytics sink and the alerting sink,
/// and events of type `guest_feedback` also to a JSON-lines sink.
fn config(brokers: &str, topic: &str, dir: &Path, pg: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{topic}-g"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
instance_id = ""

[processing]
retry_initial = "50ms"
retry_max = "1s"

[dedupe]
path = "{dir}/dedupe.redb"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.analytics]
kind = "postgres"
url = "{pg}"

[sinks.alerts]
kind = "alerts"
path = "{dir}/alerts.sqlite"

[[sinks.alerts.rules]]
kind = "zone_occupancy"
threshold = 100

[[sinks.alerts.receivers]]
kind = "log"

[sinks.feedback]
kind = "jsonl"
path = "{dir}/feedback.jsonl"

[[routes]]
name = "everything"
sinks = ["analytics", "alerts"]

[[routes]]
name = "feedback"
types = ["guest_feedback"]
sinks = ["feedback"]
"#,
        dir = dir.display()
    )
}

async fn wait_until<F, Fut>(what: &str, within: Duration, p: &Processor, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live occupancy the processor serves, as `venue|zone|devices` lines.
async fn occupancy(p: &Processor) -> String {
    let rows: Vec<serde_json::Value> =
        reqwest::get(format!("http://{}/state/occupancy", p.metrics_addr))
            .await
            .expect("GET /state/occupancy")
            .json()
            .await
            .expect("occupancy JSON");
    rows.iter()
        .map(|r| format!("{}|{}|{}", r["venue"], r["zone"], r["devices"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A time `minutes` before now, on a whole second.
fn minutes_ago(minutes: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(now - minutes * 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_reaches_analytics_with_its_body_and_is_routed_by_its_type() {
    let pg = Postgres::start();
    let broker = Broker::start();
    broker.create_topic("pl-unknown", 1).await;
    broker.create_topic("pl-unknown.quarantine", 1).await;
    broker.create_topic("pl-unknown.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Processor::start(&config(
        &broker.brokers(),
        "pl-unknown",
        dir.path(),
        &pg.url(),
    ));
    produce(
        &broker.brokers(),
        "pl-unknown",
        &[
            wifi("u1", "device_connected", 1, "d1", minutes_ago(5)),
            wifi("u2", "guest_feedback", 2, "d1", minutes_ago(4)),
        ],
    )
    .await;
    wait_until(
        "both events in analytics",
        Duration::from_secs(60),
        &p,
        || async { pg.psql("select count(*) from events") == "2" },
    )
    .await;
    assert_eq!(
        pg.psql(
            "select event_type, sequence, venue_id, zone, device_id, body->>'rating', body->>'comment' \
             from events where event_id = 'u2'"
        ),
        "guest_feedback|2|pl-v1|lobby|d1|5|fast wifi"
    );
    // Routed by its type: only it reached the `feedback` route's sink.
    wait_until("the feedback sink", Duration::from_secs(30), &p, || async {
        !sink_lines(&dir.path().join("feedback.jsonl")).is_empty()
    })
    .await;
    let lines = sink_lines(&dir.path().join("feedback.jsonl"));
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["guest_feedback"], "{lines:?}");
    assert_eq!(p.metric("processors_quarantined_total").await, 0.0);
    // A type it does not know neither opens nor ends a session.
    assert_eq!(
        pg.psql("select device_id, coalesce(disconnect_event_id, '-') from device_sessions"),
        "d1|-"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_leaving_the_venue_ends_the_session_in_analytics_and_the_presence_in_alerting() {
    let pg = Postgres::start();
    let broker = Broker::start();
    broker.create_topic("pl-left", 1).await;
    broker.create_topic("pl-left.quarantine", 1).await;
    broker.create_topic("pl-left.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Processor::start(&config(&broker.brokers(), "pl-left", dir.path(), &pg.url()));
    let start = minutes_ago(10);
    produce(
        &broker.brokers(),
        "pl-left",
        &[
            wifi("l1", "device_connected", 1, "d1", start),
            wifi("l2", "device_connected", 2, "d2", start),
        ],
    )
    .await;
    wait_until(
        "two devices in the lobby",
        Duration::from_secs(60),
        &p,
        || async { occupancy(&p).await == r#""pl-v1"|"lobby"|2"# },
    )
    .await;
    produce(
        &broker.brokers(),
        "pl-left",
        &[wifi(
            "l3",
            "venue_left",
            3,
            "d1",
            start + Duration::from_secs(8 * 60),
        )],
    )
    .await;
    wait_until(
        "the leave in analytics",
        Duration::from_secs(60),
        &p,
        || async { pg.psql("select count(*) from events") == "3" },
    )
    .await;
    assert_eq!(
        pg.psql(
            "select device_id, coalesce(disconnect_event_id, '-'), coalesce(dwell_seconds::bigint::text, '-') \
             from device_sessions order by device_id"
        ),
        "d1|l3|480\nd2|-|-"
    );
    wait_until(
        "one device left in the lobby",
        Duration::from_secs(30),
        &p,
        || async { occupancy(&p).await == r#""pl-v1"|"lobby"|1"# },
    )
    .await;
    assert_eq!(p.metric("processors_quarantined_total").await, 0.0);
}

/// A guest-WiFi event without a sequence (in the body or the envelope, as
/// ingest writes it for a source whose config names none), occurring
/// `second` seconds into 2026-11-22T18:00Z.
fn unsequenced(id: &str, venue: &str, second: u32) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::json!({
        "id": id,
        "type": "device_connected",
        "occurred_at": format!("2026-11-22T18:00:{second:02}Z"),
        "venue": {"id": venue},
        "zone": "lobby",
        "device": {"id": format!("d-{id}")},
    });
    let envelope = schemas::Envelope {
        event_id: id.into(),
        source: "purple".into(),
        received_at_micros: 1_795_370_591_000_000,
        body: body.to_string().into_bytes(),
        headers: vec![],
        content_type: Some("application/json".into()),
        client_addr: Some("127.0.0.1".into()),
        verification: schemas::Verification {
            scheme: "purple".into(),
            secret_id: "current".into(),
        },
        ordering_key: Some(venue.into()),
        sequence: None,
        request_id: format!("req-{id}"),
    };
    (
        venue.as_bytes().to_vec(),
        envelope.encode().expect("encoding an envelope"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_without_sequence_is_ordered_by_time() {
    let broker = Broker::start();
    broker.create_topic("pl-time", 1).await;
    broker.create_topic("pl-time.quarantine", 1).await;
    broker.create_topic("pl-time.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let config = processors_config(
        &broker.brokers(),
        "pl-time",
        "pl-time-g",
        &dir.path().join("dedupe.redb"),
        &sink,
        "gap_timeout = \"3s\"",
    )
    .replace(
        "parser = \"guest_wifi\"\n",
        "parser = \"guest_wifi\"\norder_by = \"occurred_at\"\n",
    );
    assert!(config.contains("order_by"), "{config}");
    let p = Processor::start(&config);
    // Two venues, each delivered out of time order, in one go.
    produce(
        &broker.brokers(),
        "pl-time",
        &[
            unsequenced("a3", "t-a", 30),
            unsequenced("b2", "t-b", 20),
            unsequenced("a1", "t-a", 10),
            unsequenced("a2", "t-a", 20),
            unsequenced("b1", "t-b", 10),
        ],
    )
    .await;
    wait_until(
        "five events in the sink",
        Duration::from_secs(60),
        &p,
        || async { sink_lines(&sink).len() == 5 },
    )
    .await;
    let lines = sink_lines(&sink);
    let of = |venue: &str| -> Vec<(String, bool)> {
        lines
            .iter()
            .filter(|l| l["ordering_key"] == venue)
            .map(|l| {
                (
                    l["event_id"].as_str().unwrap_or("").to_string(),
                    l["late"].as_bool().unwrap_or(true),
                )
            })
            .collect()
    };
    let not_late = |ids: &[&str]| -> Vec<(String, bool)> {
        ids.iter().map(|i| (i.to_string(), false)).collect()
    };
    assert_eq!(of("t-a"), not_late(&["a1", "a2", "a3"]), "{lines:?}");
    assert_eq!(of("t-b"), not_late(&["b1", "b2"]), "{lines:?}");
    assert!(lines.iter().all(|l| l["sequence"].is_null()), "{lines:?}");
    // Older than what its venue already released: late, at once.
    produce(&broker.brokers(), "pl-time", &[unsequenced("a0", "t-a", 5)]).await;
    wait_until("the late event", Duration::from_secs(30), &p, || async {
        sink_lines(&sink).len() == 6
    })
    .await;
    let last = &sink_lines(&sink)[5];
    assert_eq!(last["event_id"], "a0");
    assert_eq!(last["late"], true);
    // Counted by reason; nothing quarantined for the missing sequence.
    let scrape = reqwest::get(format!("http://{}/metrics", p.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |reason: &str| {
        e2e::metric_sum(
            &scrape,
            "processors_reorder_by_occurrence_total",
            &[("source", "purple"), ("reason", reason)],
        )
    };
    assert_eq!((count("in_order"), count("late")), (5.0, 1.0), "{scrape}");
    assert_eq!(p.metric("processors_quarantined_total").await, 0.0);
}

/// A payload of a platform that names the fields its own way.
fn acme_body(id: &str, seq: u64, site: &str) -> String {
    serde_json::json!({
        "event_id": id, "kind": "device_connected", "seq": seq,
        "ts": "2026-11-22T18:03:11.123Z", "site": {"code": site, "label": "Airport"},
        "area": "lobby", "client": {"mac": format!("mac-{id}")},
        "user": {"id": "u1", "mail": "a@example.com", "phone": "+15550100"}
    })
    .to_string()
}

const ACME_MAPPING: &str = r#"
[sources.purple.mapping]
id = "/event_id"
type = "/kind"
sequence = "/seq"
occurred_at = "/ts"
venue_id = "/site/code"
venue_name = "/site/label"
zone = "/area"
device_id = "/client/mac"
guest_id = "/user/id"
guest_email = "/user/mail"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_source_proves_its_sample_in_check_config_and_its_events_flow_typed() {
    let broker = Broker::start();
    broker.create_topic("pl-map", 1).await;
    broker.create_topic("pl-map.quarantine", 1).await;
    broker.create_topic("pl-map.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let sample = dir.path().join("acme-sample.json");
    std::fs::write(&sample, acme_body("s1", 1, "venue-017")).unwrap();
    let with = |sample: &Path| {
        processors_config(
            &broker.brokers(),
            "pl-map",
            "pl-map-g",
            &dir.path().join("dedupe.redb"),
            &sink,
            "",
        )
        .replace(
            "parser = \"guest_wifi\"\n",
            &format!(
                "parser = \"guest_wifi\"\nsample = \"{}\"\n{ACME_MAPPING}",
                sample.display()
            ),
        )
    };
    let check = |config: &str| {
        let file = dir.path().join("check.toml");
        std::fs::write(&file, config).unwrap();
        let out = std::process::Command::new(e2e::binary("processors"))
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .expect("running check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The sample maps: check-config says into what (no personal value).
    let config = with(&sample);
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "sources.purple.sample: {} maps: type \"device_connected\", venue \"venue-017\", \
             sequence 1, occurred_at 2026-11-22T18:03:11.123000Z; also venue_name, zone, \
             device_id, guest_id, guest_email",
            sample.display()
        )) && stdout.ends_with(": ok\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("a@example.com") && !stdout.contains("mac-s1"));
    // A sample whose venue is elsewhere: refused, naming the mapping.
    let moved = dir.path().join("moved.json");
    std::fs::write(
        &moved,
        acme_body("s2", 2, "v").replace("\"site\"", "\"place\""),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&with(&moved));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "sources.purple.sample: {} does not map: /venue/id is missing (sources.purple.mapping.venue_id = \"/site/code\")",
            moved.display()
        )),
        "{stderr}"
    );
    // Its events flow typed, in the platform's shape, and an unmapped
    // member (the phone number) is not passed on.
    let p = Processor::start(&config);
    produce(
        &broker.brokers(),
        "pl-map",
        &[(
            b"m-v".to_vec(),
            purple_envelope("m1", "m-v", 1, Some(acme_body("m1", 1, "m-v").into_bytes())),
        )],
    )
    .await;
    wait_until("the mapped event", Duration::from_secs(60), &p, || async {
        !sink_lines(&sink).is_empty()
    })
    .await;
    let line = &sink_lines(&sink)[0];
    assert_eq!(line["event_type"], "device_connected");
    assert_eq!(line["guest_wifi"]["venue_id"], "m-v");
    assert_eq!(line["guest_wifi"]["zone"], "lobby");
    assert_eq!(line["guest_wifi"]["device_id"], "mac-m1");
    assert_eq!(line["body"]["guest"]["email"], "a@example.com");
    assert!(!line.to_string().contains("+15550100"), "{line}");
    assert_eq!(p.metric("processors_quarantined_total").await, 0.0);
}
