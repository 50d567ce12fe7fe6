//! Hostile input from a verified sender, end to end through the real
//! ingest, tansu and processors:
//!
//! - garbage bodies (malformed JSON, wrong types, huge numbers, deep
//!   nesting, invalid UTF-8, not JSON at all) are answered 200 and stored
//!   raw, byte for byte, by ingest, then quarantined by the processors with
//!   a reason, while the events after them flow;
//! - strings built to break SQL, templates and logs (quotes, `'; drop table
//!   events; --`, `{{guest.email}}`, newlines forging a log line, ANSI
//!   escapes, U+2028, tabs, backslashes) are stored verbatim in PostgreSQL,
//!   the embedded SQLite store and at the CRM (as JSON), and every log line
//!   of both binaries stays one well-formed JSON line;
//! - U+0000 (`\u0000`, which JSON allows and PostgreSQL cannot store) is
//!   stored verbatim in SQLite and dead-lettered by the PostgreSQL sink
//!   with its reason instead of stalling the partition.

use std::time::{Duration, Instant};

use e2e::fake_crm::FakeCrm;
use e2e::{
    Broker, Ingest, Postgres, Processor, json_log_lines, purple_config, purple_signature,
    read_topic, sink_lines,
};
use schemas::Envelope;

const SECRET: &str = "h0stile-purple-secret";
const CRM_TOKEN: &str = "h0stile-crm-token";

/// Names stored in the guest's first name, zone and venue name.
const FIRST_NAME: &str = "O'Brien\"; drop table events; --\n{\"timestamp\":\"2026-01-01T00:00:00Z\",\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}";
const EMAIL: &str = "{{guest.email}}@example.com";
const ZONE: &str = "\u{1b}[31mlobby\u{1b}[0m\u{2028}\ttab\\back\r\nINFO forged: line";

fn guest_event(id: &str, seq: u64, zone: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id, "type": "guest_connects", "sequence": seq,
        "occurred_at": "2026-11-22T18:03:11.123Z",
        "venue": {"id": "venue-h", "name": "Bar \"Quote\" & <Tag>"},
        "zone": zone,
        "device": {"id": format!("dev_{seq}")},
        "guest": {"id": format!("g_{seq}"), "email": EMAIL, "first_name": FIRST_NAME, "vip": false}
    })
    .to_string()
    .into_bytes()
}

/// Bodies a verified sender may send that no parser can use, each with the
/// reason the processors must give.
fn garbage() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut deep = "[".repeat(30_000).into_bytes();
    deep.extend("]".repeat(30_000).bytes());
    vec![
        ("malformed", br#"{"id": "evt_bad", "type": "#.to_vec(), "not_json"),
        ("not json", b"hello=world&type=guest_connects".to_vec(), "not_json"),
        ("invalid utf-8", b"{\"id\": \"evt_\xff\xfe\", \"type\": \"x\"}".to_vec(), "not_json"),
        ("deep nesting", deep, "not_json"),
        (
            "wrong types",
            br#"{"id": "evt_types", "type": "guest_connects", "sequence": "seven", "occurred_at": 5, "venue": {"id": 17}}"#.to_vec(),
            "invalid",
        ),
        (
            "huge number",
            br#"{"id": "evt_huge", "type": "device_connected", "sequence": 1000000000000000000000000000000, "occurred_at": "2026-11-22T18:03:11Z", "venue": {"id": "v"}, "device": {"id": "d"}}"#.to_vec(),
            "invalid",
        ),
        (
            "number past f64",
            format!(r#"{{"id": "evt_inf", "type": "x", "sequence": 1{}}}"#, "0".repeat(400)).into_bytes(),
            "not_json",
        ),
        ("top-level array", b"[1, 2, 3]".to_vec(), "invalid"),
        ("nul in type", br#"{"id": "evt_nul_t", "type": "guest\u0000connects"}"#.to_vec(), "invalid"),
    ]
}

async fn send(client: &reqwest::Client, url: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-purple-signature", purple_signature(SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .expect("ingest answers");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_from_a_verified_sender_is_stored_raw_quarantined_or_kept_verbatim() {
    let broker = Broker::start();
    for t in ["h-raw", "h-raw.quarantine", "h-raw.dlq"] {
        broker.create_topic(t, 1).await;
    }
    let pg = Postgres::start();
    let crm = FakeCrm::start().await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "h-raw",
            &[("a", "HOSTILE_SECRET")],
            "[log]\nformat = \"json\"",
        ),
        &[("HOSTILE_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");

    // Garbage first, then the hostile-but-valid events; every one is 200.
    let mut sent = Vec::new();
    for (what, body, reason) in garbage() {
        let (status, answer) = send(&client, &url, &body).await;
        assert_eq!(status, 200, "{what}: {answer}\n{}", ingest.log());
        sent.push((
            answer["event_id"].as_str().unwrap().to_string(),
            body,
            Some(reason),
        ));
    }
    let valid = [
        ("evt_h1", guest_event("evt_h1", 1, ZONE)),
        ("evt_h2", guest_event("evt_h2", 2, "lob\u{0}by")),
        ("evt_h3", guest_event("evt_h3", 3, ZONE)),
    ];
    for (id, body) in &valid {
        let (status, answer) = send(&client, &url, body).await;
        assert_eq!(status, 200, "{id}: {answer}");
        sent.push((id.to_string(), body.clone(), None));
    }

    // Ingest stored every body byte for byte.
    let raw = read_topic(&broker.brokers(), "h-raw").await;
    assert_eq!(raw.len(), sent.len());
    for (r, (id, body, _)) in raw.iter().zip(&sent) {
        let env = Envelope::decode(&r.value).unwrap();
        assert_eq!(&env.event_id, id);
        assert_eq!(&env.body, body, "{id}: body not stored verbatim");
    }

    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("events.jsonl");
    let sqlite = dir.path().join("analytics.sqlite");
    let processors = Processor::start_with_env(
        &format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "g-hostile"
topic = "h-raw"
quarantine_topic = "h-raw.quarantine"
dlq_topic = "h-raw.dlq"
[processing]
retry_initial = "50ms"
retry_max = "500ms"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[log]
format = "json"
[sources.purple]
parser = "guest_wifi"
[sinks.lines]
kind = "jsonl"
path = "{jsonl}"
[sinks.embedded]
kind = "analytics"
path = "{sqlite}"
[sinks.analytics]
kind = "postgres"
url = "{pg}"
[sinks.crm]
kind = "crm"
url = "{crm}"
auth_header = "Authorization"
auth_env = "HOSTILE_CRM_TOKEN"
template_json = '{{"name": "{{{{guest.first_name}}}}", "email": "{{{{guest.email}}}}", "zone": "{{{{zone}}}}"}}'
max_attempts = 3
backoff_initial = "20ms"
backoff_max = "100ms"
[sinks.log]
kind = "log"
[[routes]]
name = "everything"
sinks = ["lines", "embedded", "analytics", "crm", "log"]
"#,
            brokers = broker.brokers(),
            dedupe = dir.path().join("dedupe.redb").display(),
            jsonl = jsonl.display(),
            sqlite = sqlite.display(),
            pg = pg.url(),
            crm = crm.url(),
        ),
        &[
            ("HOSTILE_CRM_TOKEN", CRM_TOKEN),
            // The log sink's lines too (the harness mutes them by default).
            ("PROCESSORS_LOG", "info,librdkafka=error"),
        ],
    );

    // The last valid event reaching PostgreSQL proves nothing stalled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = pg.psql("select count(*) from events where event_id = 'evt_h3'");
        if n.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "evt_h3 never reached PostgreSQL:\n{}",
            processors.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every garbage body is in quarantine, raw, with its reason.
    let quarantined = read_topic(&broker.brokers(), "h-raw.quarantine").await;
    let garbage_sent: Vec<_> = sent.iter().filter(|s| s.2.is_some()).collect();
    assert_eq!(quarantined.len(), garbage_sent.len(), "{quarantined:?}");
    for (q, (id, body, reason)) in quarantined.iter().zip(garbage_sent) {
        let env = Envelope::decode(&q.value).unwrap();
        assert_eq!(&env.event_id, id);
        assert_eq!(&env.body, body);
        assert_eq!(
            q.header("reason").as_deref(),
            *reason,
            "{id}: {:?}",
            q.header("detail")
        );
        assert!(q.header("detail").is_some_and(|d| !d.is_empty()));
    }

    // PostgreSQL holds the hostile strings verbatim (compared as bytes);
    // the U+0000 event was dead-lettered by that sink, with its reason.
    let hex = |s: &str| hex::encode(s.as_bytes());
    for id in ["evt_h1", "evt_h3"] {
        let got = pg.psql(&format!(
            "select encode(convert_to(body->'guest'->>'first_name', 'UTF8'), 'hex') || '|' || \
             encode(convert_to(body->'guest'->>'email', 'UTF8'), 'hex') || '|' || \
             encode(convert_to(zone, 'UTF8'), 'hex') from events where event_id = '{id}'"
        ));
        assert_eq!(
            got.trim(),
            format!("{}|{}|{}", hex(FIRST_NAME), hex(EMAIL), hex(ZONE)),
            "{id}"
        );
    }
    assert_eq!(
        pg.psql("select count(*) from events").trim(),
        "2",
        "only the events PostgreSQL can hold"
    );
    let dlq = read_topic(&broker.brokers(), "h-raw.dlq").await;
    let nul_dead: Vec<_> = dlq
        .iter()
        .filter(|r| r.header("event-id").as_deref() == Some("evt_h2"))
        .collect();
    assert!(!nul_dead.is_empty(), "evt_h2 not dead-lettered: {dlq:?}");
    assert!(
        nul_dead
            .iter()
            .all(|r| r.header("sink").as_deref() == Some("analytics")),
        "{nul_dead:?}"
    );
    assert!(
        dlq.iter()
            .all(|r| r.header("event-id").as_deref() == Some("evt_h2")),
        "only evt_h2 is dead-lettered: {dlq:?}"
    );

    // The embedded store and the JSON lines keep all three, NUL included.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink_lines(&jsonl).len() < 3 {
        assert!(Instant::now() < deadline, "{}", processors.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conn =
        rusqlite::Connection::open_with_flags(&sqlite, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    for (id, zone) in [("evt_h1", ZONE), ("evt_h2", "lob\u{0}by"), ("evt_h3", ZONE)] {
        let body: String = conn
            .query_row("select body from events where event_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("{id} not in SQLite: {e}"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["zone"], zone, "{id}");
        assert_eq!(body["guest"]["first_name"], FIRST_NAME, "{id}");
        assert_eq!(body["guest"]["email"], EMAIL, "{id}");
    }

    // The CRM received the values correctly JSON-escaped, the template's
    // placeholders in values left alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = crm.state.lock().unwrap().applied.clone();
        if applied.len() >= 3 {
            for (_, body) in &applied {
                assert_eq!(body["name"], FIRST_NAME, "{body}");
                assert_eq!(body["email"], EMAIL, "{body}");
                assert!(
                    body["zone"] == ZONE || body["zone"] == "lob\u{0}by",
                    "{body}"
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "CRM got {applied:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Logs: every line of both binaries is one JSON object (a newline in a
    // value did not forge a line), with no raw control byte in it, and no
    // secret anywhere.
    std::thread::sleep(Duration::from_millis(300));
    for (who, log) in [("ingest", ingest.log()), ("processors", processors.log())] {
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            json_log_lines(&log).len(),
            lines.len(),
            "{who}: a line is not JSON:\n{log}"
        );
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_ne!(
                v["fields"]["message"], "forged",
                "{who}: forged line {line}"
            );
            assert!(
                !line.bytes().any(|b| b < 0x20 && b != b'\t'),
                "{who}: raw control byte in {line:?}"
            );
        }
        for secret in [SECRET, CRM_TOKEN] {
            assert!(!log.contains(secret), "{who} logged a secret");
        }
    }
    assert!(
        json_log_lines(&processors.log())
            .iter()
            .any(|l| l["target"] == "sink" && l["fields"]["event_id"] == "evt_h1"),
        "the log sink logged the hostile events"
    );
}
