//! The state changelog on Kafka (see [`crate::state`]): appends with an
//! idempotent `acks=all` producer, reads one partition with a short-lived
//! assigned consumer (no group, nothing committed), and checks the topic
//! at start.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConfig, QuietCtx, Reader, admin_config, producer_config, reader_config};
use crate::sinks::BoxFuture;
use crate::state::{Changelog, EachRecord};

/// How long a restore waits for the next changelog record before it gives
/// up (and is retried).
const READ_IDLE: Duration = Duration::from_secs(30);
/// Pause before offering a record again to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// A changelog topic (the state changelog or the ledger).
pub struct KafkaChangelog {
    producer: FutureProducer,
    topic: String,
    kafka: KafkaConfig,
    /// Asks the brokers for high watermarks (no group, never polled for
    /// records).
    watermarks: Arc<BaseConsumer>,
}

impl KafkaChangelog {
    /// Creates the producer (does not contact the brokers yet).
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<KafkaChangelog, KafkaError> {
        let mut settings = producer_config(kafka)?;
        settings.set("client.id", format!("{}-state", kafka.client_id));
        if !kafka.options.contains_key("linger.ms") {
            // A worker waits for each batch's changelog write: send it at
            // once rather than after librdkafka's default 5 ms.
            settings.set("linger.ms", "1");
        }
        Ok(KafkaChangelog {
            producer: settings.create()?,
            topic: topic.to_owned(),
            kafka: kafka.clone(),
            watermarks: Arc::new(admin_config(kafka)?.create()?),
        })
    }
}

use schemas::changelog::GONE_HEADER;

impl Changelog for KafkaChangelog {
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<Vec<i64>, String>> {
        Box::pin(async move {
            let mut pending = Vec::with_capacity(records.len());
            for (key, value) in &records {
                let mut record = FutureRecord::to(&self.topic)
                    .partition(partition)
                    .key(key.as_slice());
                if crate::state::changelog::is_gone(key, value) {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: GONE_HEADER,
                        value: Some(value.as_slice()),
                    }));
                } else {
                    record = record.payload(value.as_slice());
                }
                let future = loop {
                    match self.producer.send_result(record) {
                        Ok(f) => break f,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                        }
                        Err((e, _)) => return Err(format!("{}: {e}", self.topic)),
                    }
                };
                pending.push(future);
            }
            let mut offsets = Vec::with_capacity(pending.len());
            for f in pending {
                match f.await {
                    Ok(Ok(d)) => offsets.push(d.offset),
                    Ok(Err((e, _))) => return Err(format!("{}: {e}", self.topic)),
                    Err(_) => return Err(format!("{}: the producer was dropped", self.topic)),
                }
            }
            Ok(offsets)
        })
    }

    fn read<'a>(
        &'a self,
        partition: i32,
        from: i64,
        until: i64,
        each: &'a mut EachRecord<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if from > until {
                return Ok(());
            }
            let group = format!("{}-restore", self.kafka.group_id);
            let reader: Reader = reader_config(&self.kafka, &group, "restore")
                .and_then(|c| c.create_with_context(QuietCtx))
                .map_err(|e| e.to_string())?;
            let mut tpl = TopicPartitionList::new();
            // An explicit offset, even for the log's start: against tansu
            // the logical beginning cost about half a second more per read
            // (measured with the processors benchmark). A start that
            // retention removed is reset to the earliest record left.
            let start = Offset::Offset(from.max(0));
            tpl.add_partition_offset(&self.topic, partition, start)
                .map_err(|e| e.to_string())?;
            reader.assign(&tpl).map_err(|e| e.to_string())?;
            loop {
                let m = match tokio::time::timeout(READ_IDLE, reader.recv()).await {
                    Err(_) => {
                        return Err(format!(
                            "{} partition {partition}: no record for {READ_IDLE:?} before offset {until}",
                            self.topic
                        ));
                    }
                    Ok(Err(KafkaError::PartitionEOF(_))) => continue,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "changelog read");
                        continue;
                    }
                    Ok(Ok(m)) => m,
                };
                let offset = m.offset();
                if offset > until {
                    return Ok(());
                }
                // A tombstone carries its fencing bytes in a header.
                let gone = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == GONE_HEADER))
                    .and_then(|h| h.value);
                let value = schemas::changelog::message_value(m.payload(), gone);
                each(offset, m.key().unwrap_or_default(), value)?;
                if offset >= until {
                    return Ok(());
                }
            }
        })
    }

    fn bounds(&self, partition: i32) -> BoxFuture<'_, Result<(i64, i64), String>> {
        let consumer = self.watermarks.clone();
        let topic = self.topic.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .map_err(|e| format!("{topic} partition {partition}: high watermark: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// How a state topic is cleaned up.
#[derive(Debug, Clone, Copy)]
pub enum Cleanup {
    /// Compacted: keyed state, the latest value per key kept.
    Compact,
    /// Deleted past a retention: facts of a time window.
    Delete(Duration),
}

/// Checks a state topic (`field` names it in errors) against the raw
/// topic, creating it with `cleanup` and the raw topic's partition count
/// when it is missing. The raw topic must exist: its partition count
/// decides the state topics'.
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    changelog: &str,
    field: &str,
    cleanup: Cleanup,
) -> Result<(), String> {
    let raw = partitions(kafka, &kafka.topic).await?;
    let Some(raw) = raw else {
        return Err(format!(
            "kafka.topic: the raw topic {:?} does not exist (create it first; its partition count decides the state changelog's)",
            kafka.topic
        ));
    };
    match partitions(kafka, changelog).await? {
        Some(n) if n == raw => check_cleanup(kafka, changelog, field, cleanup).await,
        Some(n) => Err(format!(
            "{field}: {changelog:?} has {n} partitions, the raw topic {:?} has {raw}: they must be equal (partition p's state lives in changelog partition p)",
            kafka.topic
        )),
        None => {
            let admin: AdminClient<DefaultClientContext> = admin_config(kafka)
                .and_then(|c| c.create())
                .map_err(|e| e.to_string())?;
            let retention;
            let topic = NewTopic::new(changelog, raw, TopicReplication::Fixed(-1));
            let topic = match cleanup {
                Cleanup::Compact => topic.set("cleanup.policy", "compact"),
                Cleanup::Delete(keep) => {
                    retention = keep.as_millis().to_string();
                    topic
                        .set("cleanup.policy", "delete")
                        .set("retention.ms", &retention)
                }
            };
            let results = admin
                .create_topics(&[topic], &AdminOptions::new())
                .await
                .map_err(|e| format!("{field}: creating {changelog:?}: {e}"))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, e)) => {
                        return Err(format!("{field}: creating {changelog:?}: {e}"));
                    }
                }
            }
            tracing::info!(
                topic = changelog,
                partitions = raw,
                "state changelog topic created"
            );
            // Wait for the metadata to show it, so the first restore finds it.
            for _ in 0..100 {
                if partitions(kafka, changelog).await? == Some(raw) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!(
                "{field}: {changelog:?} was created but its {raw} partitions did not show in the metadata within 10s"
            ))
        }
    }
}

/// Checks an existing state topic's `cleanup.policy`: the state changelog
/// must be compacted and never deleted by time (a quiet venue's sequence or
/// the input position would vanish); the ledger must be deleted by time
/// (compaction alone would keep every batch for ever). Brokers that do not
/// answer the question are let through with a warning.
async fn check_cleanup(
    kafka: &KafkaConfig,
    topic: &str,
    field: &str,
    cleanup: Cleanup,
) -> Result<(), String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = admin_config(kafka)
        .and_then(|c| c.create())
        .map_err(|e| e.to_string())?;
    let policy = match admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
    {
        Ok(results) => results
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|r| r.entries)
            .find(|e| e.name == "cleanup.policy")
            .and_then(|e| e.value),
        Err(e) => {
            tracing::warn!(topic, error = %e, "could not read the state topic's cleanup.policy; not checked");
            return Ok(());
        }
    };
    let Some(policy) = policy else {
        tracing::warn!(
            topic,
            "the brokers did not report the state topic's cleanup.policy; not checked"
        );
        return Ok(());
    };
    let has = |p: &str| policy.split(',').any(|x| x.trim() == p);
    let problem = match cleanup {
        Cleanup::Compact if !has("compact") || has("delete") => Some("compact"),
        Cleanup::Delete(_) if !has("delete") => {
            Some("delete (with retention.ms past the dedupe window)")
        }
        _ => None,
    };
    match problem {
        None => Ok(()),
        Some(want) => Err(format!(
            "{field}: {topic:?} has cleanup.policy={policy}, it must be {want}"
        )),
    }
}

/// The partition count of `topic`, `None` when it does not exist.
async fn partitions(kafka: &KafkaConfig, topic: &str) -> Result<Option<i32>, String> {
    let config = admin_config(kafka).map_err(|e| e.to_string())?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| format!("reading the metadata of {topic:?}: {e}"))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    })
    .await
    .map_err(|e| e.to_string())?
}
