//! The only code that talks to Kafka through rdkafka (besides the offline
//! commands in `ops/`): the client settings built in one place, the
//! consumer-group runtime and the side-topic producer.
//!
//! - [`KafkaConfig`]: brokers, group, topics and extra librdkafka settings,
//!   with the settings the runtime relies on refused;
//! - [`consumer`]: the group runtime, one worker per partition, offsets
//!   stored only as far as everything was handled;
//! - [`side`]: the producer of the quarantine and dead-letter topics;
//! - [`changelog`]: the state changelog topic (see [`crate::state`]).

pub mod changelog;
pub mod consumer;
pub mod side;

use std::collections::BTreeMap;
use std::time::Duration;

use plumbing::valid_topic;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;

/// How long a side-topic write may take before it is retried.
pub(crate) const SIDE_TIMEOUT: Duration = Duration::from_secs(30);

/// The librdkafka consumer settings: the guarantees last, so they win.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &kafka.options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("client.id", &kafka.client_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "max.poll.interval.ms",
            kafka.max_poll_interval.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    c
}

/// The side-topic producer settings: durable like ingest's.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &kafka.options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("{}-side", kafka.client_id))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", SIDE_TIMEOUT.as_millis().to_string());
    c
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated `host:port`.
    pub brokers: String,
    /// Consumer group: run more instances with the same group to scale.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// The raw topic ingest writes.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Where bodies that cannot be parsed go, with the reason.
    #[serde(default = "default_quarantine")]
    pub quarantine_topic: String,
    /// Where events a sink refused for good go, with the sink and reason.
    #[serde(default = "default_dlq")]
    pub dlq_topic: String,
    /// Client id shown in broker logs.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// How long the consumer may go without polling before the group
    /// considers it dead (librdkafka `max.poll.interval.ms`). A partition
    /// blocked on a failing sink is paused and the consumer keeps polling,
    /// so a sink outage of any length causes no rebalance; this only
    /// catches a consumer that is really stuck.
    #[serde(default = "default_max_poll_interval", with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Extra librdkafka settings (TLS, SASL). Settings the runtime relies on
    /// (offset storage, commit, group id) are refused.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_group() -> String {
    "processors".into()
}
fn default_topic() -> String {
    "webhooks.raw".into()
}
fn default_quarantine() -> String {
    "webhooks.quarantine".into()
}
fn default_dlq() -> String {
    "webhooks.dlq".into()
}
fn default_client_id() -> String {
    "processors".into()
}
const fn default_max_poll_interval() -> Duration {
    Duration::from_secs(300)
}

/// librdkafka settings the runtime sets itself; a user value would break
/// "commit only what the sinks accepted".
pub const RESERVED_KAFKA_OPTIONS: &[&str] = &[
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "isolation.level",
    "max.poll.interval.ms",
    "acks",
    "enable.idempotence",
];

/// Why an assignment setting is refused, if it is: the runtime hands a
/// partition over on the eager protocol's "revoke everything, then
/// assign" (it drops the records it holds and re-reads from the committed
/// offset on every assignment). An incremental (cooperative) rebalance
/// keeps partitions across a generation, so held records would be dropped
/// while the fetch position moved past them, and the commit would pass
/// records nobody handled.
fn eager_only(key: &str, value: &str) -> Option<String> {
    match key {
        "partition.assignment.strategy" => {
            let bad: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !matches!(*s, "range" | "roundrobin"))
                .collect();
            (!bad.is_empty()).then(|| {
                format!(
                    "{} is not supported: only the eager assignors range and roundrobin keep the hand-over exact",
                    bad.join(", ")
                )
            })
        }
        "group.protocol" if value.trim() != "classic" => Some(format!(
            "{value:?} is not supported: the incremental consumer protocol (KIP-848) would move partitions without the hand-over the runtime relies on; use classic"
        )),
        _ => None,
    }
}

impl KafkaConfig {
    /// Every problem, each naming its field under `kafka`.
    pub fn problems(&self) -> Vec<String> {
        let k = self;
        let mut p = Vec::new();
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty".into());
        }
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        for (field, topic) in [
            ("topic", &k.topic),
            ("quarantine_topic", &k.quarantine_topic),
            ("dlq_topic", &k.dlq_topic),
        ] {
            if !valid_topic(topic) {
                p.push(format!(
                    "kafka.{field}: {topic:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        if k.quarantine_topic == k.topic || k.dlq_topic == k.topic {
            p.push(
                "kafka: the quarantine and dead-letter topics must differ from the raw topic"
                    .into(),
            );
        }
        if k.max_poll_interval < Duration::from_secs(10) {
            p.push("kafka.max_poll_interval: must be at least 10s".into());
        }
        for key in k.options.keys() {
            if let Some(why) = eager_only(key, &k.options[key]) {
                p.push(format!("kafka.options.{key}: {why}"));
            }
            if RESERVED_KAFKA_OPTIONS.contains(&key.as_str()) {
                p.push(format!(
                    "kafka.options.{key}: set by the processors to keep their guarantees; remove it"
                ));
            }
        }
        p
    }
}

/// librdkafka callbacks for the one-shot commands: its log lines go through
/// `tracing` like the live path's, and its errors (every failed connection
/// attempt) at debug, so an unreachable broker ends in one line naming the
/// problem rather than a screen of retries.
pub struct QuietCtx;

impl ClientContext for QuietCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        plumbing::route_librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for QuietCtx {}

/// A consumer of the one-shot commands.
pub type Reader = StreamConsumer<QuietCtx>;

/// The librdkafka settings of a reader that assigns partitions itself and
/// never commits (replay, `dlq list`); `group` is only its name.
pub fn reader_config(kafka: &KafkaConfig, group: &str, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &kafka.options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("client.id", format!("{}-{role}", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(options: &[(&str, &str)]) -> KafkaConfig {
        let text = format!(
            "brokers = \"127.0.0.1:9092\"\n[options]\n{}",
            options
                .iter()
                .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
                .collect::<String>()
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn an_incremental_assignor_is_refused_naming_the_option() {
        let p = with(&[("partition.assignment.strategy", "cooperative-sticky")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "kafka.options.partition.assignment.strategy: cooperative-sticky is not supported"
            ),
            "{p:?}"
        );
        let p = with(&[("group.protocol", "consumer")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("kafka.options.group.protocol: "), "{p:?}");
        let p = with(&[("partition.assignment.strategy", "range, cooperative-sticky")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn eager_assignors_and_other_options_pass() {
        let ok = with(&[
            ("partition.assignment.strategy", "roundrobin,range"),
            ("group.protocol", "classic"),
            ("security.protocol", "ssl"),
        ]);
        assert_eq!(ok.problems(), Vec::<String>::new());
    }
}
