//! Known secrets, then everything the pipeline writes is searched for them:
//! one source of every signature scheme receives signed traffic, forged
//! requests and unsigned ones; the processors write to PostgreSQL through a
//! URL holding a password, and see the database go away. No secret may
//! appear in an error body, a log line, a `/metrics` scrape, a Kafka header
//! or an envelope field other than the body the sender signed.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Broker, Ingest, Postgres, Processor, binary, produce, purple_envelope, read_topic};
use schemas::Envelope;

/// (source name, scheme, secret)
const SOURCES: &[(&str, &str, &str)] = &[
    ("wifi", "purple", "wifi-S3CRET-0001"),
    ("gh", "github", "gh-S3CRET-0002"),
    ("pay", "stripe", "whsec_pay-S3CRET-0003"),
    ("shop", "shopify", "shop-S3CRET-0004"),
    ("chat", "slack", "slack-S3CRET-0005"),
    (
        "svix",
        "standard",
        "whsec_c2VjcmV0LVMzQ1JFVC0wMDA2LWJhc2U2NA==",
    ),
];

/// The secrets, as configured and as the bytes a base64 key decodes to.
fn secrets() -> Vec<String> {
    let mut all: Vec<String> = SOURCES.iter().map(|(_, _, s)| s.to_string()).collect();
    // The Standard Webhooks key above is base64 of this.
    all.push("secret-S3CRET-0006-base64".into());
    all
}

fn env_var(name: &str) -> String {
    format!("E2E_SECRETS_{}", name.to_uppercase())
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what} holds the secret {s:?}");
    }
    assert!(
        !text.contains("S3CRET"),
        "{what} holds part of a secret:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ingest_secret_reaches_error_bodies_logs_metrics_or_kafka() {
    let broker = Broker::start();
    broker.create_topic("raw-secrets", 2).await;
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"raw-secrets\"\ndelivery_timeout = \"30s\"\n[log]\nformat = \"json\"\n",
        broker.brokers()
    );
    for (name, scheme, _) in SOURCES {
        config.push_str(&format!(
            "[sources.{name}]\nevent_id = {{ pointer = \"/id\" }}\nsignature = {{ scheme = \"{scheme}\", secrets = [{{ id = \"k1\", env = \"{}\" }}] }}\n",
            env_var(name)
        ));
    }
    let env: Vec<(String, String)> = SOURCES
        .iter()
        .map(|(name, _, secret)| (env_var(name), secret.to_string()))
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ingest = Ingest::start(&config, &env_refs);
    ingest.wait_ready().await;
    let secrets = secrets();

    // Genuine traffic from the simulator, signed with each source's secret.
    for (i, (name, scheme, secret)) in SOURCES.iter().enumerate() {
        let out = Command::new(binary("ingest"))
            .args(["send", "--url", &ingest.url(&format!("/webhooks/{name}"))])
            .args(["--scheme", scheme, "--secret-env", "SIM_SECRET"])
            .args(["--count", "5", "--concurrency", "2", "--json"])
            .args(["--seed", &(300 + i).to_string()])
            .env("SIM_SECRET", secret)
            .output()
            .expect("running ingest send");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["acknowledged"], 5, "{name}: {report}");
    }

    // Forged with a wrong secret (the simulator signs with it), unsigned,
    // and a source that does not exist: each answer's body is searched.
    let client = reqwest::Client::new();
    let mut bodies = String::new();
    for (i, (name, scheme, _)) in SOURCES.iter().enumerate() {
        let forged = Command::new(binary("ingest"))
            .args(["send", "--url", &ingest.url(&format!("/webhooks/{name}"))])
            .args(["--scheme", scheme, "--secret-env", "SIM_SECRET"])
            .args(["--count", "2", "--json", "--seed", &(400 + i).to_string()])
            .env(
                "SIM_SECRET",
                if *scheme == "standard" {
                    "whsec_d3Jvbmcta2V5LXdyb25nLWtleQ=="
                } else {
                    "wrong-key"
                },
            )
            .output()
            .expect("running ingest send");
        let report: serde_json::Value = serde_json::from_slice(&forged.stdout).unwrap();
        assert_eq!(
            report["acknowledged"], 0,
            "{name}: forged accepted: {report}"
        );
        let r = client
            .post(ingest.url(&format!("/webhooks/{name}")))
            .header("content-type", "application/json")
            .header("authorization", "Bearer not-for-logs")
            .body(r#"{"id":"unsigned-1"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{name}: unsigned");
        bodies.push_str(&r.text().await.unwrap());
    }
    let r = client
        .post(ingest.url("/webhooks/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    bodies.push_str(&r.text().await.unwrap());
    assert!(bodies.contains("signature_missing"), "{bodies}");
    assert_clean("an error body", &bodies, &secrets);

    // The log, the scrape, and every Kafka record but its signed body.
    let log = ingest.log();
    assert!(log.contains("refused"), "no refusal logged:\n{log}");
    assert_clean("ingest's log", &log, &secrets);
    assert!(
        !log.contains("not-for-logs"),
        "the Authorization header was logged"
    );
    let metrics = reqwest::get(ingest.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ingest_requests_total"));
    assert_clean("ingest's /metrics", &metrics, &secrets);
    let records = read_topic(&broker.brokers(), "raw-secrets").await;
    assert_eq!(records.len(), 5 * SOURCES.len());
    for r in &records {
        let headers: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(v)))
            .collect();
        assert_clean("a Kafka header", &headers, &secrets);
        let env = Envelope::decode(&r.value).expect("envelope");
        let mut fields = format!(
            "{} {} {:?} {:?} {} {} {:?}",
            env.event_id,
            env.source,
            env.content_type,
            env.client_addr,
            env.verification.scheme,
            env.verification.secret_id,
            env.ordering_key
        );
        for h in &env.headers {
            fields.push_str(&format!("\n{}={}", h.name, h.value));
        }
        assert_eq!(env.verification.secret_id, "k1");
        assert!(!fields.contains("not-for-logs"));
        assert_clean("an envelope field", &fields, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_stays_out_of_the_processors_logs_and_metrics() {
    const PASSWORD: &str = "pg-PASSW0RD-S3CRET";
    let mut pg = Postgres::start();
    let broker = Broker::start();
    broker.create_topic("sec", 1).await;
    broker.create_topic("sec.quarantine", 1).await;
    broker.create_topic("sec.dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    // The harness's server trusts loopback, so any password connects; the
    // sink still holds it in its URL the whole time.
    let url = pg
        .url()
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-sec"
topic = "sec"
quarantine_topic = "sec.quarantine"
dlq_topic = "sec.dlq"
[processing]
retry_initial = "50ms"
retry_max = "200ms"
[dedupe]
path = "{dedupe}"
[metrics]
listen = "127.0.0.1:0"
[sources.purple]
parser = "guest_wifi"
[sinks.analytics]
kind = "analytics"
url_env = "E2E_SECRETS_PG_URL"
[[routes]]
name = "all"
sinks = ["analytics"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
    );
    let processor = Processor::start_with_env(&config, &[("E2E_SECRETS_PG_URL", &url)]);
    let record = |i: u64| {
        let id = format!("sec-{i}");
        (
            b"v-sec".to_vec(),
            purple_envelope(&id, "v-sec", i, Some(e2e::purple_event(&id, "v-sec", i))),
        )
    };
    produce(&broker.brokers(), "sec", &[record(1), record(2)]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.psql("select count(*) from events") != "2" {
        assert!(
            Instant::now() < deadline,
            "not stored:\n{}",
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The database goes away: connection errors are logged and retried.
    pg.stop();
    produce(&broker.brokers(), "sec", &[record(3)]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while processor.metric("processors_sink_retries_total").await < 2.0 {
        assert!(Instant::now() < deadline, "no retry:\n{}", processor.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.psql("select count(*) from events") != "3" {
        assert!(
            Instant::now() < deadline,
            "not drained:\n{}",
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = processor.log();
    assert!(
        log.contains("retry"),
        "the outage left no line in the log:\n{log}"
    );
    let secrets = vec![PASSWORD.to_string()];
    assert_clean("the processors' log", &log, &secrets);
    let scrape = reqwest::get(format!("http://{}/metrics", processor.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_clean("the processors' /metrics", &scrape, &secrets);
    for topic in ["sec.quarantine", "sec.dlq"] {
        for r in read_topic(&broker.brokers(), topic).await {
            let headers: String = r
                .headers
                .iter()
                .map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(v)))
                .collect();
            assert_clean("a side-topic header", &headers, &secrets);
        }
    }
}
