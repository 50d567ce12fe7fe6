//! What operators see, after real traffic through ingest, tansu and the
//! processors: every `/metrics` family follows the naming rules (HELP and
//! TYPE, `_total` counters, base units, label names and values of low
//! cardinality, bounded series), the counts match the traffic that was
//! sent, and the request id that ingest answered is on ingest's refusal
//! line and on the processors' quarantine, dead-letter and retry lines.

use std::time::{Duration, Instant};

use e2e::exposition::{self, Scraped};
use e2e::fake_crm::{FakeCrm, Reply};
use e2e::{
    Broker, Ingest, Processor, json_log_lines, purple_config, purple_event, purple_signature,
    scrape, send_purple, sink_lines,
};

const SECRET: &str = "m3tr1cs-s3cr3t-value";
const CRM_TOKEN: &str = "crm-t0ken-never-logged";

/// A guest-WiFi event of type `guest_connects` (routed to the CRM).
fn guest_connects(id: &str, venue: &str, seq: u64) -> Vec<u8> {
    String::from_utf8(purple_event(id, venue, seq))
        .unwrap()
        .replace("device_connected", "guest_connects")
        .into_bytes()
}

fn processors_config(brokers: &str, dir: &std::path::Path, crm_url: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-metrics"
topic = "m-raw"
quarantine_topic = "m-raw.quarantine"
dlq_topic = "m-raw.dlq"

[processing]
gap_timeout = "2s"
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

[sinks.events]
kind = "jsonl"
path = "{sink}"

[sinks.crm]
kind = "crm"
url = "{crm_url}"
auth_header = "Authorization"
auth_env = "METRICS_E2E_CRM_TOKEN"
template_json = '{{"email": "{{{{guest.email}}}}", "venue": "{{{{venue_id}}}}"}}'
attempts_per_call = 1
max_attempts = 5
backoff_initial = "20ms"
backoff_max = "100ms"

[[routes]]
name = "everything"
sinks = ["events"]

[[routes]]
name = "crm"
types = ["guest_connects"]
sinks = ["crm"]
"#,
        dedupe = dir.join("dedupe.redb").display(),
        sink = dir.join("events.jsonl").display(),
    )
}

fn family<'a>(families: &'a [Scraped], name: &str) -> &'a Scraped {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

/// The first JSON log line whose `fields.message` is `message` and whose
/// `fields.<field>` contains `value`.
fn log_line(
    lines: &[serde_json::Value],
    message: &str,
    field: &str,
    value: &str,
) -> Option<serde_json::Value> {
    lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == message
                && l["fields"][field]
                    .as_str()
                    .is_some_and(|v| v.contains(value))
        })
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_follows_the_rules_counts_the_traffic_and_logs_carry_the_request_id() {
    let broker = Broker::start();
    broker.create_topic("m-raw", 2).await;
    broker.create_topic("m-raw.quarantine", 1).await;
    broker.create_topic("m-raw.dlq", 1).await;
    let crm = FakeCrm::start().await;
    crm.script("purple:m-dead", &[Reply::Always(400)]);
    crm.script("purple:m-retry", &[Reply::Status(500)]);

    // Ingest serves /metrics on an admin port, apart from the webhooks.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", e2e::free_port()).parse().unwrap();
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "m-raw",
            &[("current", "METRICS_E2E_SECRET")],
            &format!("admin_listen = \"{admin}\"\n[log]\nformat = \"json\""),
        ),
        &[("METRICS_E2E_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before the child starts; only the child reads it.
    unsafe { std::env::set_var("METRICS_E2E_CRM_TOKEN", CRM_TOKEN) };
    let processor = Processor::start(&processors_config(
        &broker.brokers(),
        dir.path(),
        &crm.url(),
    ));

    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");
    let mut never: Vec<String> = vec![SECRET.into(), CRM_TOKEN.into(), "127.0.0.1".into()];
    let request_id = |o: &e2e::Outcome, never: &mut Vec<String>| {
        let rid = o.body["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!rid.is_empty(), "a 200 names its request id: {:?}", o.body);
        never.push(rid.clone());
        rid
    };

    // 20 good events over two venues, then 2 provider retries of them.
    let mut accepted = 0;
    for i in 1..=20u64 {
        let id = format!("m-ok-{i}");
        never.push(id.clone());
        let venue = if i % 2 == 0 { "m-venue-a" } else { "m-venue-b" };
        let o = send_purple(
            &client,
            &url,
            SECRET,
            purple_event(&id, venue, i.div_ceil(2)),
        )
        .await;
        assert_eq!(o.status, 200, "{:?}", o.body);
        accepted += 1;
    }
    for i in [3u64, 4] {
        let venue = if i % 2 == 0 { "m-venue-a" } else { "m-venue-b" };
        let body = purple_event(&format!("m-ok-{i}"), venue, i.div_ceil(2));
        assert_eq!(send_purple(&client, &url, SECRET, body).await.status, 200);
        accepted += 1;
    }
    // Two guests for the CRM: one it refuses for good, one it fails once.
    let dead = send_purple(
        &client,
        &url,
        SECRET,
        guest_connects("m-dead", "m-venue-c", 1),
    )
    .await;
    assert_eq!(dead.status, 200);
    let dead_rid = request_id(&dead, &mut never);
    let retry = send_purple(
        &client,
        &url,
        SECRET,
        guest_connects("m-retry", "m-venue-c", 2),
    )
    .await;
    assert_eq!(retry.status, 200);
    let retry_rid = request_id(&retry, &mut never);
    accepted += 2;
    // Correctly signed, not JSON: accepted by ingest, quarantined later.
    let not_json = send_purple(&client, &url, SECRET, b"BODY-MARKER not json".to_vec()).await;
    assert_eq!(not_json.status, 200);
    let not_json_rid = request_id(&not_json, &mut never);
    accepted += 1;
    // Forged: refused with 401, logged with its request id.
    let forged = send_purple(
        &client,
        &url,
        "wrong-secret",
        purple_event("m-forged", "v", 1),
    )
    .await;
    assert_eq!(forged.status, 401);
    let forged_rid = forged
        .body
        .get("request_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    assert!(forged_rid.is_none(), "error bodies carry no request id");
    // The request id of a refusal is in its `x-request-id` header: send one.
    let forged_rid = "m-forged-request-7";
    let body = b"FORGED-BODY-MARKER".to_vec();
    let r = client
        .post(&url)
        .header("x-request-id", forged_rid)
        .header(
            "x-purple-signature",
            purple_signature("wrong-secret", &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], forged_rid);
    never.push(forged_rid.into());
    // An unconfigured source.
    let r = client
        .post(ingest.url("/webhooks/m-nope-0193a0f2"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Wait for the processors: 20 distinct good events and the CRM pair in
    // the JSON-lines sink, one dead letter, one quarantined record, and the
    // consumer lag reported (librdkafka statistics, every 5 s).
    let sink = dir.path().join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = sink_lines(&sink).len();
        let dead = processor.metric("processors_dead_lettered_total").await;
        let quarantined = processor.metric("processors_quarantined_total").await;
        let applied = crm.state.lock().unwrap().applied.len();
        let lag_reported = scrape(processor.metrics_addr)
            .await
            .contains("processors_consumer_lag{");
        if lines >= 22 && dead >= 1.0 && quarantined >= 1.0 && applied >= 1 && lag_reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sink {lines}, dead-lettered {dead}, quarantined {quarantined}, CRM applied {applied}, lag reported {lag_reported}:\n{}",
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The scrapes follow the rules, and hold no id, address or secret.
    let on_webhook_port = client.get(ingest.url("/metrics")).send().await.unwrap();
    assert_eq!(
        on_webhook_port.status(),
        404,
        "/metrics is on the admin port only"
    );
    let ingest_text = scrape(admin).await;
    let processors_text = scrape(processor.metrics_addr).await;
    let declared = exposition::declared();
    let declared_names: std::collections::BTreeMap<_, _> =
        declared.iter().map(|f| (f.name.clone(), f)).collect();
    let problems = exposition::declared_problems(&declared);
    assert!(problems.is_empty(), "declared metrics: {problems:#?}");
    for (who, text) in [("ingest", &ingest_text), ("processors", &processors_text)] {
        let families = exposition::parse(text).unwrap_or_else(|e| panic!("{who}: {e}"));
        let problems = exposition::scrape_problems(&families, &never);
        assert!(problems.is_empty(), "{who}'s /metrics: {problems:#?}");
        for f in &families {
            let d = declared_names.get(&f.name).unwrap_or_else(|| {
                panic!(
                    "{who} exports {} but does not declare it: register it with Catalogue::add",
                    f.name
                )
            });
            assert_eq!(f.kind.as_deref(), Some(d.kind.as_str()), "{}", f.name);
            assert_eq!(f.help.as_deref(), Some(d.help.as_str()), "{}", f.name);
            for s in &f.samples {
                let mut labels: Vec<&String> = s.labels.keys().filter(|k| *k != "le").collect();
                labels.sort();
                let mut want: Vec<&String> = d.labels.iter().collect();
                want.sort();
                assert_eq!(labels, want, "{}", s.name);
            }
        }
        let total: usize = families.iter().map(|f| f.samples.len()).sum();
        assert!(total < 2000, "{who} exports {total} samples");
    }

    // The counts match the traffic.
    let ing = exposition::parse(&ingest_text).unwrap();
    let requests = family(&ing, "ingest_requests_total");
    let ok = [("source", "purple"), ("status", "200")];
    assert_eq!(requests.sum("ingest_requests_total", &ok), accepted as f64);
    let forged_401 = [("source", "purple"), ("status", "401")];
    assert_eq!(requests.sum("ingest_requests_total", &forged_401), 2.0);
    let unknown = [("source", "_unknown"), ("status", "404")];
    assert_eq!(requests.sum("ingest_requests_total", &unknown), 1.0);
    let failures = family(&ing, "ingest_verification_failures_total");
    let invalid = [("source", "purple"), ("reason", "signature_invalid")];
    assert_eq!(
        failures.sum("ingest_verification_failures_total", &invalid),
        2.0
    );
    let secrets = family(&ing, "ingest_signature_secret_matches_total");
    let current = [("source", "purple"), ("secret", "current")];
    assert_eq!(
        secrets.sum("ingest_signature_secret_matches_total", &current),
        accepted as f64
    );
    let ack = family(&ing, "ingest_ack_latency_seconds");
    assert_eq!(
        ack.sum("ingest_ack_latency_seconds_count", &[("source", "purple")]),
        accepted as f64
    );
    let produce = family(&ing, "ingest_produce_latency_seconds");
    assert_eq!(
        produce.sum("ingest_produce_latency_seconds_count", &[]),
        accepted as f64
    );
    assert_eq!(
        family(&ing, "ingest_broker_up").sum("ingest_broker_up", &[]),
        1.0
    );

    let pro = exposition::parse(&processors_text).unwrap();
    assert_eq!(
        family(&pro, "processors_consumed_total").sum("processors_consumed_total", &[]),
        accepted as f64
    );
    assert_eq!(
        family(&pro, "processors_duplicates_dropped_total").sum(
            "processors_duplicates_dropped_total",
            &[("source", "purple")]
        ),
        2.0
    );
    assert_eq!(
        family(&pro, "processors_quarantined_total").sum(
            "processors_quarantined_total",
            &[("source", "purple"), ("reason", "not_json")]
        ),
        1.0
    );
    assert_eq!(
        family(&pro, "processors_dead_lettered_total")
            .sum("processors_dead_lettered_total", &[("sink", "crm")]),
        1.0
    );
    assert!(
        family(&pro, "processors_sink_retries_total")
            .sum("processors_sink_retries_total", &[("sink", "crm")])
            >= 1.0
    );
    assert_eq!(
        family(&pro, "processors_routed_total")
            .sum("processors_routed_total", &[("sink", "events")]),
        22.0
    );
    assert_eq!(
        family(&pro, "processors_crm_breaker_open")
            .sum("processors_crm_breaker_open", &[("sink", "crm")]),
        0.0
    );
    let lag = family(&pro, "processors_consumer_lag");
    let partitions: std::collections::BTreeSet<&str> = lag
        .samples
        .iter()
        .map(|s| s.labels["partition"].as_str())
        .collect();
    assert!(!partitions.is_empty() && partitions.iter().all(|p| ["0", "1"].contains(p)));
    assert!(
        family(&pro, "processors_sink_latency_seconds")
            .sum("processors_sink_latency_seconds_count", &[("sink", "crm")])
            >= 2.0
    );

    // Ingest: one line per refusal, with source, status, reason and
    // request id; never the secret or the body.
    let ingest_log = ingest.log();
    let lines = json_log_lines(&ingest_log);
    assert!(!lines.is_empty(), "ingest logs JSON:\n{ingest_log}");
    let refused = log_line(&lines, "refused", "request_id", forged_rid)
        .unwrap_or_else(|| panic!("no refusal line for {forged_rid}:\n{ingest_log}"));
    assert_eq!(refused["fields"]["source"], "purple");
    assert_eq!(refused["fields"]["status"], 401);
    assert_eq!(refused["fields"]["reason"], "signature_invalid");
    let refusals = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "refused")
        .count();
    assert_eq!(refusals, 3, "two forged, one unknown source");
    for secret in [SECRET, "FORGED-BODY-MARKER", "BODY-MARKER", "wrong-secret"] {
        assert!(
            !ingest_log.contains(secret),
            "ingest's log holds {secret:?}"
        );
    }

    // Processors: the request id ingest answered is on the line about its
    // event.
    let plog = processor.log();
    let plines = json_log_lines(&plog);
    let q = log_line(&plines, "record quarantined", "request_id", &not_json_rid)
        .unwrap_or_else(|| panic!("no quarantine line for {not_json_rid}:\n{plog}"));
    assert_eq!(q["fields"]["reason"], "not_json");
    let d = log_line(&plines, "dead-lettered", "request_id", &dead_rid)
        .unwrap_or_else(|| panic!("no dead-letter line for {dead_rid}:\n{plog}"));
    assert_eq!(d["fields"]["event_id"], "m-dead");
    assert_eq!(d["fields"]["sink"], "crm");
    log_line(&plines, "sink asked to retry", "request_ids", &retry_rid)
        .unwrap_or_else(|| panic!("no retry line for {retry_rid}:\n{plog}"));
    for secret in [SECRET, CRM_TOKEN, "BODY-MARKER"] {
        assert!(
            !plog.contains(secret),
            "the processors' log holds {secret:?}"
        );
    }
}
