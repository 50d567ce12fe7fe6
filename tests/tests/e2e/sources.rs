//! Every signature scheme end to end: one source of each runs in one
//! ingest, the provider simulator (`ingest send`, the real binary) sends to
//! all of them at once, and every event lands in Kafka exactly as sent.
//! Then the per-source access rules against the same real broker: challenge
//! handshakes are answered and leave nothing in the topic, a rate-limited
//! source answers 429 with `Retry-After` past its burst, an allow-list
//! refuses loopback with 403, and only what was acknowledged is stored.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use e2e::{Broker, Ingest, binary, purple_event, read_topic, send_purple};
use hmac::{Hmac, Mac};
use ingest::simulator::{Generator, GeneratorConfig};
use schemas::Envelope;
use sha2::Sha256;

/// (source name, scheme, secret, event id taken from)
const SOURCES: &[(&str, &str, &str, &str)] = &[
    ("wifi", "purple", "wifi-secret", "{ pointer = \"/id\" }"),
    (
        "gh",
        "github",
        "gh-secret",
        "{ header = \"X-GitHub-Delivery\" }",
    ),
    (
        "pay",
        "stripe",
        "whsec_stripe-secret",
        "{ pointer = \"/id\" }",
    ),
    (
        "shop",
        "shopify",
        "shop-secret",
        "{ header = \"X-Shopify-Webhook-Id\" }",
    ),
    ("chat", "slack", "slack-secret", "{ pointer = \"/id\" }"),
    (
        "svix",
        "standard",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "{ header = \"webhook-id\" }",
    ),
];
const COUNT: usize = 60;

fn env_var(name: &str) -> String {
    format!("E2E_SRC_{}", name.to_uppercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_of_each_scheme_receives_the_simulator_at_once() {
    let broker = Broker::start();
    broker.create_topic("raw-sources", 3).await;
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"raw-sources\"\ndelivery_timeout = \"30s\"\n",
        broker.brokers()
    );
    for (name, scheme, _, event_id) in SOURCES {
        config.push_str(&format!(
            "[sources.{name}]\nevent_id = {event_id}\nordering_key = {{ pointer = \"/venue/id\" }}\nsequence = {{ pointer = \"/sequence\" }}\nsignature = {{ scheme = \"{scheme}\", secrets = [{{ id = \"k1\", env = \"{}\" }}] }}\n",
            env_var(name)
        ));
    }
    let env: Vec<(String, String)> = SOURCES
        .iter()
        .map(|(name, _, secret, _)| (env_var(name), secret.to_string()))
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ingest = Ingest::start(&config, &env_refs);
    ingest.wait_ready().await;

    // All six simulators at once, each with its own seed.
    let mut children = Vec::new();
    for (i, (name, scheme, secret, _)) in SOURCES.iter().enumerate() {
        let child = Command::new(binary("ingest"))
            .args(["send", "--url", &ingest.url(&format!("/webhooks/{name}"))])
            .args(["--scheme", scheme, "--secret-env", "SIM_SECRET"])
            .args(["--count", &COUNT.to_string(), "--concurrency", "4"])
            .args(["--seed", &(100 + i).to_string(), "--json"])
            .env("SIM_SECRET", secret)
            .output();
        children.push((name, child));
    }
    for (name, out) in children {
        let out = out.expect("running ingest send");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(report["sent"], COUNT, "{name}: {report}\n{}", ingest.log());
        assert_eq!(
            report["acknowledged"],
            COUNT,
            "{name}: {report}\n{}",
            ingest.log()
        );
    }

    let mut by_source: HashMap<String, Vec<Envelope>> = HashMap::new();
    for r in read_topic(&broker.brokers(), "raw-sources").await {
        let env = Envelope::decode(&r.value).unwrap();
        assert_eq!(r.header("source").as_deref(), Some(env.source.as_str()));
        by_source.entry(env.source.clone()).or_default().push(env);
    }
    for (i, (name, scheme, _, _)) in SOURCES.iter().enumerate() {
        let mut generator = Generator::new(GeneratorConfig {
            seed: 100 + i as u64,
            ..GeneratorConfig::default()
        });
        let expected: BTreeSet<(String, Vec<u8>)> = (0..COUNT)
            .map(|_| {
                let e = generator.next_event();
                (e.id, e.body)
            })
            .collect();
        let stored = by_source.remove(*name).unwrap_or_default();
        // `purple` is a configuration of the generic `hmac` scheme.
        let recorded = if *scheme == "purple" { "hmac" } else { scheme };
        for env in &stored {
            assert_eq!(env.verification.scheme, recorded);
            assert_eq!(env.verification.secret_id, "k1");
        }
        let got: BTreeSet<(String, Vec<u8>)> =
            stored.into_iter().map(|e| (e.event_id, e.body)).collect();
        assert_eq!(got.len(), COUNT, "{name}: {} records", got.len());
        assert_eq!(
            got, expected,
            "{name}: stored events differ from those sent"
        );
    }
    assert!(by_source.is_empty(), "records from unexpected sources");
}

fn slack_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts)
        .header(
            "x-slack-signature",
            format!("v0={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_rate_limits_and_allow_lists_leave_only_acknowledged_events() {
    const TOPIC: &str = "raw-access";
    const SECRET: &str = "access-secret";
    const SLACK: &str = "access-slack-secret";
    const TOKEN: &str = "access-verify-token";
    const BURST: u64 = 3;
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1).await;
    let purple = r#"signature = { scheme = "purple", secrets = [{ id = "k1", env = "E2E_ACCESS_SECRET" }] }"#;
    // Loopback is our "proxy": without X-Forwarded-For the client is
    // loopback itself, which the allow-list below refuses.
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.0/8"]
[kafka]
brokers = "{brokers}"
topic = "{TOPIC}"
delivery_timeout = "30s"
[sources.chat]
event_id = {{ pointer = "/event_id" }}
url_verification = true
signature = {{ scheme = "slack", secrets = [{{ id = "k1", env = "E2E_ACCESS_SLACK" }}] }}
[sources.limited]
rate_limit = {{ per_second = 0.001, burst = {BURST} }}
{purple}
[sources.guarded]
allow = ["203.0.113.0/24"]
{purple}
[sources.hub]
subscription = {{ verify_token = {{ id = "hub", env = "E2E_ACCESS_TOKEN" }} }}
{purple}
"#,
        brokers = broker.brokers()
    );
    let ingest = Ingest::start(
        &config,
        &[
            ("E2E_ACCESS_SECRET", SECRET),
            ("E2E_ACCESS_SLACK", SLACK),
            ("E2E_ACCESS_TOKEN", TOKEN),
        ],
    );
    ingest.wait_ready().await;
    let client = reqwest::Client::new();

    // Slack's url_verification: verified, answered with its challenge.
    let handshake = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let r = slack_signed(&client, &ingest.url("/webhooks/chat"), SLACK, handshake)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", ingest.log());
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    // A forged one is refused like any request.
    let r = slack_signed(&client, &ingest.url("/webhooks/chat"), "forged", handshake)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An ordinary Slack event on the same source is stored.
    let event = br#"{"type":"event_callback","event_id":"Ev0001","event":{"type":"message"}}"#;
    let r = slack_signed(&client, &ingest.url("/webhooks/chat"), SLACK, event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", ingest.log());

    // The GET subscription check, with and without the right token.
    let hub = ingest.url("/webhooks/hub");
    let r = client
        .get(format!(
            "{hub}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={TOKEN}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1158201444");
    // Each handshake's log line names its source and kind.
    let log = ingest.log();
    for (source, kind) in [("chat", "url_verification"), ("hub", "subscription")] {
        assert!(
            log.lines()
                .any(|l| l.contains("challenge handshake answered")
                    && l.contains(&format!("source={source}"))
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.contains("request_id=")),
            "no handshake line for {source}:\n{log}"
        );
    }
    let r = client
        .get(format!("{hub}?hub.challenge=1&hub.verify_token=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The rate-limited source, hit by the simulator with one burst of ten:
    // the first BURST are stored, the rest refused with 429.
    let out = Command::new(binary("ingest"))
        .args(["send", "--url", &ingest.url("/webhooks/limited")])
        .args(["--scheme", "purple", "--secret-env", "SIM_SECRET"])
        .args(["--count", "10", "--concurrency", "4", "--seed", "7"])
        .args(["--bursts", "1", "--burst-size", "10", "--json"])
        .env("SIM_SECRET", SECRET)
        .output()
        .expect("running ingest send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], 10, "{report}");
    assert_eq!(report["bursts"], 1, "{report}");
    assert_eq!(report["burst_requests"], 10, "{report}");
    assert_eq!(report["acknowledged"], BURST, "{report}\n{}", ingest.log());
    assert_eq!(report["refused"]["429"], 10 - BURST, "{report}");
    let mut generator = Generator::new(GeneratorConfig {
        seed: 7,
        ..GeneratorConfig::default()
    });
    let simulated: BTreeSet<String> = (0..10).map(|_| generator.next_event().id).collect();
    // One more, signed: 429 with a Retry-After of up to 1000 s (0.001/s).
    let o = send_purple(
        &client,
        &ingest.url("/webhooks/limited"),
        SECRET,
        purple_event("evt_limited_extra", "venue-1", 99),
    )
    .await;
    assert_eq!(o.status, 429, "{o:?}");
    assert_eq!(o.body["error"]["code"], "rate_limited");
    let retry: u64 = o.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&retry), "Retry-After {retry}");

    // The allow-listed source: loopback is refused before its body is read;
    // through our (loopback) proxy for an allowed client it is stored, with
    // the client's address in the envelope.
    let guarded = ingest.url("/webhooks/guarded");
    let o = send_purple(
        &client,
        &guarded,
        SECRET,
        purple_event("evt_guarded_loopback", "venue-1", 1),
    )
    .await;
    assert_eq!(o.status, 403, "{o:?}");
    assert_eq!(o.body["error"]["code"], "address_not_allowed");
    // Its log line says which source and which request it was about.
    let body = purple_event("evt_guarded_loopback_2", "venue-1", 3);
    let r = client
        .post(&guarded)
        .header("x-request-id", "guarded-req-0001")
        .header("x-purple-signature", e2e::purple_signature(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let log = ingest.log();
    let line = log
        .lines()
        .find(|l| l.contains("not in the allow-list") && l.contains("guarded-req-0001"))
        .unwrap_or_else(|| panic!("no allow-list line for the request id:\n{log}"));
    assert!(line.contains("source=guarded"), "{line}");
    let body = purple_event("evt_guarded_proxied", "venue-1", 2);
    let r = client
        .post(&guarded)
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .header("x-purple-signature", e2e::purple_signature(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", ingest.log());

    // The topic holds exactly what was acknowledged.
    let records = read_topic(&broker.brokers(), TOPIC).await;
    let envelopes: Vec<Envelope> = records
        .iter()
        .map(|r| Envelope::decode(&r.value).unwrap())
        .collect();
    let mut by_source: HashMap<&str, Vec<&Envelope>> = HashMap::new();
    for e in &envelopes {
        by_source.entry(e.source.as_str()).or_default().push(e);
    }
    let chat = &by_source["chat"];
    assert_eq!(chat.len(), 1, "only the event, not the handshake");
    assert_eq!(chat[0].event_id, "Ev0001");
    assert_eq!(chat[0].body, event);
    let limited = &by_source["limited"];
    assert_eq!(limited.len() as u64, BURST);
    for e in limited {
        assert!(simulated.contains(&e.event_id), "{}", e.event_id);
    }
    let guarded = &by_source["guarded"];
    assert_eq!(guarded.len(), 1);
    assert_eq!(guarded[0].event_id, "evt_guarded_proxied");
    assert_eq!(guarded[0].client_addr.as_deref(), Some("203.0.113.7"));
    assert!(!by_source.contains_key("hub"));
    assert_eq!(envelopes.len() as u64, 2 + BURST);

    let metrics = client
        .get(ingest.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ingest_handshakes_total{kind="url_verification",source="chat"} 1"#,
        r#"ingest_handshakes_total{kind="subscription",source="hub"} 1"#,
        r#"ingest_refusals_total{code="address_not_allowed",source="guarded"} 2"#,
        r#"ingest_refusals_total{code="rate_limited",source="limited"} 8"#,
        r#"ingest_refusals_total{code="verify_token_invalid",source="hub"} 1"#,
        r#"ingest_requests_total{source="limited",status="429"} 8"#,
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    // The verify token and the secrets appear nowhere.
    for secret in [SECRET, SLACK, TOKEN] {
        assert!(!metrics.contains(secret));
        assert!(!ingest.log().contains(secret));
    }
}
