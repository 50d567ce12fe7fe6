//! Every signature scheme end to end: one source of each runs in one
//! ingest, the provider simulator (`ingest send`, the real binary) sends to
//! all of them at once, and every event lands in Kafka exactly as sent.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use e2e::{Broker, Ingest, binary, read_topic};
use ingest::simulator::{Generator, GeneratorConfig};
use schemas::Envelope;

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
