//! Ingest end to end: the real binary against a real tansu broker.
//!
//! The promise under test: a 2xx means the event is in Kafka, byte for byte;
//! a refusal leaves no trace; a broker outage or a shutdown never turns into
//! a 2xx for an event that is not stored.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{
    Broker, Ingest, Outcome, purple_config, purple_event, purple_signature, read_topic, send_purple,
};
use schemas::Envelope;
use tokio::sync::Mutex;

const SECRET: &str = "e2e-current-secret";
const OLD_SECRET: &str = "e2e-old-secret";

fn secrets_env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_SECRET", SECRET), ("E2E_OLD_SECRET", OLD_SECRET)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_signed_requests_land_byte_for_byte_with_their_keys() {
    let broker = Broker::start();
    broker.create_topic("raw-thousand", 3).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-thousand",
            &[("current", "E2E_SECRET"), ("old", "E2E_OLD_SECRET")],
            "",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");

    // 1,000 events over 10 venues: the first 100 one at a time, the rest 25
    // at a time; a tenth signed with the older secret of the rotation.
    let mut sent: HashMap<String, (Vec<u8>, String)> = HashMap::new();
    let mut bodies = Vec::new();
    for i in 0..1000u64 {
        let id = format!("evt_{i:05}");
        let venue = format!("venue-{:03}", i % 10);
        let body = purple_event(&id, &venue, i / 10);
        sent.insert(id.clone(), (body.clone(), venue));
        bodies.push((id, body, if i % 10 == 3 { OLD_SECRET } else { SECRET }));
    }
    let mut outcomes = Vec::new();
    for (id, body, secret) in bodies.drain(..100) {
        outcomes.push((id, send_purple(&client, &url, secret, body).await));
    }
    for chunk in bodies.chunks(25) {
        let mut tasks = Vec::new();
        for (id, body, secret) in chunk.iter().cloned() {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                (id, send_purple(&client, &url, secret, body).await)
            }));
        }
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
    }
    for (id, o) in &outcomes {
        assert_eq!(o.status, 200, "{id}: {o:?}\n{}", ingest.log());
        assert_eq!(o.body["event_id"], id.as_str());
    }

    let records = read_topic(&broker.brokers(), "raw-thousand").await;
    assert_eq!(records.len(), 1000);
    let mut seen = HashSet::new();
    for r in &records {
        let env = Envelope::decode(&r.value).expect("every record is an envelope");
        let (body, venue) = &sent[&env.event_id];
        assert!(seen.insert(env.event_id.clone()), "{} twice", env.event_id);
        assert_eq!(&env.body, body, "body of {} changed", env.event_id);
        assert_eq!(r.key.as_deref(), Some(venue.as_bytes()));
        assert_eq!(env.ordering_key.as_deref(), Some(venue.as_str()));
        assert_eq!(r.header("source").as_deref(), Some("purple"));
        assert_eq!(r.header("event-id").as_deref(), Some(env.event_id.as_str()));
        assert_eq!(env.source, "purple");
        assert_eq!(env.verification.scheme, "hmac");
        let n: u64 = env.event_id[4..].parse().unwrap();
        let expected_secret = if n % 10 == 3 { "old" } else { "current" };
        assert_eq!(env.verification.secret_id, expected_secret);
        assert_eq!(env.sequence, Some((n / 10) as i64));
        assert_eq!(env.content_type.as_deref(), Some("application/json"));
        assert_eq!(env.client_addr.as_deref(), Some("127.0.0.1"));
        // The record timestamp is the received-at: replay ranges use it.
        assert_eq!(r.timestamp_ms, Some(env.received_at_micros / 1000));
    }
    // One venue's events share a partition, so their order is kept.
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for r in &records {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(*partition_of.entry(key).or_insert(r.partition), r.partition);
    }
}

/// A body without the configured event id (here the default `/id`): a
/// provider's retry re-sends the same bytes, so it must be the same event
/// (the processors drop the retry by event id), and a different body a
/// different one. Every verified body is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_an_event_id_keeps_one_id_across_retries() {
    let broker = Broker::start();
    broker.create_topic("raw-no-id", 1).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-no-id",
            &[("current", "E2E_SECRET")],
            "",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");
    let without_id = |sequence: u64| {
        let mut event: serde_json::Value =
            serde_json::from_slice(&purple_event("x", "venue-001", sequence)).unwrap();
        event.as_object_mut().unwrap().remove("id");
        serde_json::to_vec(&event).unwrap()
    };
    let first = send_purple(&client, &url, SECRET, without_id(7)).await;
    let retry = send_purple(&client, &url, SECRET, without_id(7)).await;
    let other = send_purple(&client, &url, SECRET, without_id(8)).await;
    for o in [&first, &retry, &other] {
        assert_eq!(o.status, 200, "{o:?}\n{}", ingest.log());
    }
    let id = first.body["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        retry.body["event_id"], first.body["event_id"],
        "a retry of the same bytes became another event"
    );
    assert_ne!(
        other.body["event_id"], first.body["event_id"],
        "two different bodies got one event id"
    );

    let records = read_topic(&broker.brokers(), "raw-no-id").await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| Envelope::decode(&r.value).unwrap().event_id)
        .collect();
    assert_eq!(ids.len(), 3, "every verified body is stored: {ids:?}");
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 2, "{ids:?}");
}

/// A raw HTTP/1.1 exchange, for requests a well-behaved client won't send.
///
/// The server may answer and close before it has read everything (a body
/// refused while streaming is the point of some of these requests), so a
/// failed write or half-close is expected; what counts is the answer read
/// back, kept even when the read ends in a reset.
fn raw_request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A sender that shuts down its side of the connection once its request is
/// written (some HTTP clients and proxies do) still waits for the answer:
/// the request is stored and answered 200, not dropped when the read side
/// ends while the record is on its way to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_half_closes_after_its_request_still_gets_its_answer() {
    let broker = Broker::start();
    broker.create_topic("raw-half-close", 1).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-half-close",
            &[("current", "E2E_SECRET")],
            "",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let body = purple_event("evt_half_close", "venue-1", 1);
    let mut request = format!(
        "POST /webhooks/purple HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-purple-signature: {}\r\ncontent-length: {}\r\n\r\n",
        purple_signature(SECRET, &body),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let addr = ingest.addr;
    let answer = tokio::task::spawn_blocking(move || raw_request(addr, &request))
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a half-closing sender got no answer: {answer:?}\n{}",
        ingest.log()
    );
    assert!(answer.contains("evt_half_close"), "{answer}");
    let records = read_topic(&broker.brokers(), "raw-half-close").await;
    assert_eq!(records.len(), 1, "the answered request is stored once");
    assert_eq!(Envelope::decode(&records[0].value).unwrap().body, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_code_and_leaves_no_trace() {
    let broker = Broker::start();
    broker.create_topic("raw-bad", 1).await;
    // The old secret was removed from the rotation: only "current" is left.
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-bad",
            &[("current", "E2E_SECRET")],
            "",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");
    let body = purple_event("evt_bad", "venue-1", 1);

    let post = |b: Vec<u8>, sig: Option<String>| {
        let mut r = client.post(&url).header("content-type", "application/json");
        if let Some(s) = sig {
            r = r.header("x-purple-signature", s);
        }
        r.body(b).send()
    };
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let j: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(j["error"]["code"], code, "{j}");
        assert!(!j["error"]["detail"].as_str().unwrap().is_empty());
    };

    // Wrong signature, missing signature, old secret no longer accepted.
    check(
        post(body.clone(), Some(purple_signature("wrong", &body)))
            .await
            .unwrap(),
        401,
        "signature_invalid",
    )
    .await;
    check(
        post(body.clone(), None).await.unwrap(),
        401,
        "signature_missing",
    )
    .await;
    check(
        post(body.clone(), Some(purple_signature(OLD_SECRET, &body)))
            .await
            .unwrap(),
        401,
        "signature_invalid",
    )
    .await;
    // Truncated body: signed in full, only part sent.
    let sig = purple_signature(SECRET, &body);
    check(
        post(body[..body.len() / 2].to_vec(), Some(sig.clone()))
            .await
            .unwrap(),
        401,
        "signature_invalid",
    )
    .await;
    // Empty body.
    check(
        post(Vec::new(), Some(purple_signature(SECRET, b"")))
            .await
            .unwrap(),
        400,
        "empty_body",
    )
    .await;
    // Oversized: over the source's 64 KiB limit.
    let big = vec![b' '; 70_000];
    check(
        post(big.clone(), Some(purple_signature(SECRET, &big)))
            .await
            .unwrap(),
        413,
        "body_too_large",
    )
    .await;
    // Unknown source.
    check(
        client
            .post(ingest.url("/webhooks/nope"))
            .body(body.clone())
            .send()
            .await
            .unwrap(),
        404,
        "unknown_source",
    )
    .await;
    // Wrong method.
    check(
        client.get(&url).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    // A transfer cut off mid-body: Content-Length promises more than arrives.
    let head = format!(
        "POST /webhooks/purple HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-purple-signature: {sig}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut partial = head.into_bytes();
    partial.extend_from_slice(&body[..body.len() - 10]);
    let answer = raw_request(ingest.addr, &partial);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "a cut-off body must never be accepted: {answer}"
    );
    // Chunked, no Content-Length, over the limit: refused while streaming.
    let mut chunked = b"POST /webhooks/purple HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-purple-signature: 00\r\n\r\n".to_vec();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'a'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(ingest.addr, &chunked);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // Then one good request, so the topic's content proves the bad ones
    // left nothing behind.
    let ok = post(body.clone(), Some(sig)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let records = read_topic(&broker.brokers(), "raw-bad").await;
    assert_eq!(records.len(), 1, "only the good request may be in Kafka");
    assert_eq!(Envelope::decode(&records[0].value).unwrap().body, body);

    let metrics = client
        .get(ingest.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ingest_requests_total{source="purple",status="401"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ingest_requests_total{source="_unknown",status="404"} 1"#),
        "{metrics}"
    );
    // Secrets never reach logs or metrics.
    for secret in [SECRET, OLD_SECRET] {
        assert!(!metrics.contains(secret));
        assert!(!ingest.log().contains(secret));
    }
}

/// Sends signed events at a steady pace from `workers` tasks until `stop`,
/// recording every outcome by event id.
async fn steady_load(
    url: String,
    workers: usize,
    pace: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    prefix: &'static str,
) -> Vec<(String, Outcome)> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, stop, results) =
            (client.clone(), url.clone(), stop.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("{prefix}-{w}-{i}");
                let body = purple_event(&id, &format!("venue-{w}"), i);
                let o = send_purple(&client, &url, SECRET, body).await;
                results.lock().await.push((id, o));
                i += 1;
                tokio::time::sleep(pace).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(results).unwrap().into_inner()
}

// The outage (4 s) is shorter than kafka.delivery_timeout (30 s in the harness config), as
// in a broker restart: the producer must not time records out and bump its
// epoch, which tansu 0.6 cannot handle (see producer.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_answers_503_in_time_and_recovers_without_restart() {
    let mut broker = Broker::start();
    broker.create_topic("raw-outage", 2).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-outage",
            &[("current", "E2E_SECRET")],
            "request_timeout = \"1s\"\nretry_after = \"3s\"",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(
        ingest.url("/webhooks/purple"),
        4,
        Duration::from_millis(20),
        stop.clone(),
        "outage",
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart();
    // Wait (bounded) for 200s to resume, then keep the load a little longer.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = send_purple(
            &client,
            &ingest.url("/webhooks/purple"),
            SECRET,
            purple_event(
                &format!("probe-{}", killed_at.elapsed().as_millis()),
                "venue-p",
                0,
            ),
        )
        .await;
        if o.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "200s never resumed:\n{}\nbroker:\n{}",
            ingest.log(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = load.await.unwrap();

    let mut ok = HashSet::new();
    let (mut refused, mut after_restart_ok) = (0, 0);
    for (id, o) in &outcomes {
        match o.status {
            200 => {
                ok.insert(id.clone());
            }
            503 => {
                refused += 1;
                assert_eq!(o.retry_after.as_deref(), Some("3"), "{id}: {o:?}");
                assert!(
                    matches!(
                        o.body["error"]["code"].as_str(),
                        Some("delivery_timeout" | "broker_unavailable")
                    ),
                    "{o:?}"
                );
            }
            other => panic!("{id}: unexpected status {other}: {o:?}"),
        }
        // No request hangs past its 1 s deadline (generous margin for a
        // loaded 2-core machine; a hang would be tens of seconds).
        assert!(
            o.elapsed < Duration::from_secs(4),
            "{id} took {:?}",
            o.elapsed
        );
    }
    // The load ran 2 s past the first 200 after the restart: its last
    // requests were accepted again.
    for (_, o) in outcomes.iter().rev().take(8) {
        if o.status == 200 {
            after_restart_ok += 1;
        }
    }
    assert!(refused > 0, "the outage was not noticed");
    assert!(after_restart_ok > 0, "no 200 after the broker came back");
    let stored: HashSet<String> = read_topic(&broker.brokers(), "raw-outage")
        .await
        .iter()
        .map(|r| Envelope::decode(&r.value).unwrap().event_id)
        .collect();
    let missing: Vec<_> = ok.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but not in Kafka: {missing:?}"
    );
    eprintln!(
        "outage: {} requests, {} answered 200 (all stored), {} answered 503",
        outcomes.len(),
        ok.len(),
        refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let broker = Broker::start();
    broker.create_topic("raw-sigterm", 2).await;
    let mut ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-sigterm",
            &[("current", "E2E_SECRET")],
            "",
        ),
        &secrets_env(),
    );
    ingest.wait_ready().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(
        ingest.url("/webhooks/purple"),
        16,
        Duration::from_millis(1),
        stop.clone(),
        "term",
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ingest.terminate();
    let status = tokio::task::block_in_place(|| ingest.wait(Duration::from_secs(30)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    assert!(
        status.success(),
        "ingest exited with {status}:\n{}",
        ingest.log()
    );

    let ok: HashSet<String> = outcomes
        .iter()
        .filter(|(_, o)| o.status == 200)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(ok.len() > 10, "too little load to prove anything");
    for (id, o) in &outcomes {
        assert!(matches!(o.status, 200 | 503 | 0), "{id}: unexpected {o:?}");
    }
    let stored: HashSet<String> = read_topic(&broker.brokers(), "raw-sigterm")
        .await
        .iter()
        .map(|r| Envelope::decode(&r.value).unwrap().event_id)
        .collect();
    let missing: Vec<_> = ok.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but not in Kafka: {missing:?}"
    );
    assert!(
        ingest.log().contains("producer flushed"),
        "{}",
        ingest.log()
    );
    let count = |s: u16| outcomes.iter().filter(|(_, o)| o.status == s).count();
    eprintln!(
        "sigterm under load: {} requests, {} answered 200 (all stored), {} answered 503, \
         {} got no answer (refused or closed once it stopped listening); exit 0",
        outcomes.len(),
        ok.len(),
        count(503),
        count(0)
    );
}

/// Issue 17, defect 13: "in Kafka" is only as strong as the raw topic's
/// replication. Ingest reads the topic's replica count and
/// `min.insync.replicas` from the brokers, says on `/readyz` and in its log
/// where they fall short of `kafka.durability`, never takes an unreported
/// setting as good, and with `require = true` refuses to start on a topic
/// that cannot keep an acknowledged record (tansu here: one replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_topics_replication_is_checked_and_can_be_required() {
    let broker = Broker::start();
    broker.create_topic("i-durable", 2).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "i-durable",
            &[("current", "E2E_DURABLE_SECRET")],
            "",
        ),
        &[("E2E_DURABLE_SECRET", "s")],
    );
    ingest.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let body: serde_json::Value = reqwest::get(ingest.url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["raw_topic"]["replication_factor"].is_number() {
            break body;
        }
        assert!(Instant::now() < deadline, "never read the topic: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("readyz on tansu: {body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["raw_topic"]["replication_factor"], 1, "{body}");
    let shortfalls = body["raw_topic"]["shortfalls"].to_string();
    assert!(
        shortfalls.contains("replication factor 1 is below 3"),
        "{body}"
    );
    assert!(
        shortfalls.contains("min.insync.replicas"),
        "a min.insync.replicas of 1, or an unreported one, is a shortfall too: {body}"
    );
    assert!(
        ingest.log().contains("raw topic is below kafka.durability"),
        "{}",
        ingest.log()
    );

    // Required: the same topic stops the start, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        purple_config(
            &broker.brokers(),
            "i-durable",
            &[("current", "E2E_DURABLE_SECRET")],
            "",
        )
        .replace(
            "[sources.purple]",
            "[kafka.durability]\nrequire = true\n\n[sources.purple]",
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(e2e::binary("ingest"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("E2E_DURABLE_SECRET", "s")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a one-replica topic:\n{stderr}"
    );
    assert!(
        stderr.contains("kafka.durability.require: the raw topic i-durable falls short: replication factor 1 is below 3"),
        "{stderr}"
    );
}
