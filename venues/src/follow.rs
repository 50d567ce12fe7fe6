//! Follows the processors' state changelog: every partition from its
//! start, for as long as the service runs, into the [`View`].
//!
//! No consumer group and no committed offsets: each replica reads the whole
//! changelog itself (it is compacted: about one record per key), so any
//! number of replicas each hold the complete view, and a restart rebuilds
//! it. A replica is ready once it has read every partition up to the end
//! it had when the replica started.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::changelog::GONE_HEADER;
use tokio::sync::watch;

use crate::Shared;
use crate::config::KafkaConfig;

/// librdkafka's logs through `tracing`; reaching a partition's end is how
/// catching up is noticed, not an error.
struct Ctx;

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        plumbing::route_librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::debug!(target: "librdkafka", "{reason}");
        } else {
            tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

impl ConsumerContext for Ctx {}

/// The reader's settings: a fetch waits at most 100 ms when there is
/// nothing new (librdkafka's default is 500 ms), so a change reaches the
/// page soon on any broker; `kafka.options` may change it.
fn client_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaError> {
    let mut options = kafka.options.clone();
    options
        .entry("fetch.wait.max.ms".into())
        .or_insert_with(|| "100".into());
    plumbing::reader_config(
        &kafka.brokers,
        &options,
        &kafka.security,
        &format!("{}-reader", kafka.client_id),
        &kafka.client_id,
    )
}

/// Each partition's high watermark now, `None` while the topic does not
/// exist.
fn ends(kafka: &KafkaConfig) -> Result<Option<Vec<(i32, i64)>>, String> {
    let c: BaseConsumer = client_config(kafka)
        .and_then(|c| c.create())
        .map_err(|e| e.to_string())?;
    let topic = &kafka.changelog_topic;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("reading the metadata of {topic:?}: {e}"))?;
    let Some(t) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for p in t.partitions() {
        let (_, high) = c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| format!("{topic} partition {}: high watermark: {e}", p.id()))?;
        out.push((p.id(), high));
    }
    Ok(Some(out))
}

/// Reads the changelog into `shared.view` until `stop`.
pub async fn follow(
    kafka: KafkaConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let m = &shared.metrics;
    // Wait for the topic: the processors create it at their start.
    let ends = loop {
        let k = kafka.clone();
        match tokio::task::spawn_blocking(move || ends(&k)).await? {
            Ok(Some(ends)) => break ends,
            Ok(None) => tracing::warn!(
                topic = kafka.changelog_topic,
                "the state changelog does not exist yet (the processors create it when they start with state): waiting"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the state changelog's end: retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    let consumer: StreamConsumer<Ctx> = client_config(&kafka)?.create_with_context(Ctx)?;
    let mut tpl = TopicPartitionList::new();
    let mut behind: HashSet<i32> = HashSet::new();
    let mut targets = std::collections::HashMap::new();
    for (p, high) in &ends {
        tpl.add_partition_offset(&kafka.changelog_topic, *p, Offset::Offset(0))?;
        if *high > 0 {
            behind.insert(*p);
            targets.insert(*p, *high);
        }
    }
    consumer.assign(&tpl)?;
    m.catching_up.set(behind.len() as i64);
    if behind.is_empty() {
        shared.set_ready();
    }
    tracing::info!(
        topic = kafka.changelog_topic,
        partitions = ends.len(),
        "following the state changelog"
    );
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return Ok(()),
            msg = consumer.recv() => msg,
        };
        let m_ = match msg {
            Ok(m_) => m_,
            Err(KafkaError::PartitionEOF(p)) => {
                if behind.remove(&p) {
                    m.catching_up.set(behind.len() as i64);
                    if behind.is_empty() {
                        shared.set_ready();
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the state changelog");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let key = m_.key().unwrap_or_default();
        // A tombstone carries its fencing bytes in a header.
        let gone = m_
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == GONE_HEADER))
            .and_then(|h| h.value);
        let value = schemas::changelog::message_value(m_.payload(), gone);
        let (p, offset) = (m_.partition(), m_.offset());
        let outcome = shared.apply(p, offset, key, value);
        m.records.with_label_values(&[outcome.as_str()]).inc();
        if let Some(ms) = m_.timestamp().to_millis() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            m.lag.set((now - ms).max(0) as f64 / 1000.0);
        }
        if targets.get(&p).is_some_and(|&t| offset + 1 >= t) && behind.remove(&p) {
            m.catching_up.set(behind.len() as i64);
            if behind.is_empty() {
                shared.set_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_waits_100_ms_when_idle_unless_the_options_say_otherwise() {
        let config = |extra: &str| {
            crate::config::Config::from_toml(&format!(
                "[kafka]\nbrokers = \"b:9092\"\nchangelog_topic = \"p-state\"\nsink = \"alerts\"\n{extra}"
            ))
            .unwrap()
            .kafka
        };
        assert_eq!(
            client_config(&config("")).unwrap().get("fetch.wait.max.ms"),
            Some("100")
        );
        let slow = config("options = { \"fetch.wait.max.ms\" = \"500\" }\n");
        assert_eq!(
            client_config(&slow).unwrap().get("fetch.wait.max.ms"),
            Some("500")
        );
    }
}
