//! Each source's feed cursor, kept in a compacted Kafka topic keyed by the
//! source name (`poller.cursor_topic`): written after the events of a page
//! are acknowledged by the brokers, read back in full at start. Kafka holds
//! it, so a poller restarted on any host continues where the last one
//! stopped; a cursor that is older than the events already produced only
//! means duplicates, which the processors drop by event id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;

/// The record value: the cursor and when it was stored.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The provider's opaque cursor.
    cursor: String,
    /// When it was stored, Unix milliseconds.
    stored_at_ms: i64,
}

/// Why cursors could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// A Kafka client error.
    #[error("cursor topic {topic}: {source}")]
    Kafka {
        /// The cursor topic.
        topic: String,
        /// What the client said.
        source: rdkafka::error::KafkaError,
    },
    /// The topic does not exist or has no partitions.
    #[error("cursor topic {0} does not exist (create it compacted, keyed by source)")]
    Missing(String),
    /// Reading to the end took too long.
    #[error("cursor topic {0}: not read to its end within {1:?}")]
    Timeout(String, Duration),
}

/// Reads and writes the cursor topic.
pub struct CursorStore {
    /// Writes cursors (`acks=all`).
    producer: FutureProducer,
    /// The compacted topic.
    topic: String,
    /// Settings to read the topic with.
    settings: ClientConfig,
}

impl CursorStore {
    /// A store on `topic`, with the brokers and options of `kafka`.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<CursorStore, CursorError> {
        // The brokers, options and [kafka.security] of every other client.
        let mut settings =
            plumbing::kafka::client_config(&kafka.brokers, &kafka.options, &kafka.security)
                .map_err(|source| CursorError::Kafka {
                    topic: topic.into(),
                    source,
                })?;
        settings.set("client.id", format!("{}-poller", kafka.client_id));
        let producer = settings
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|source| CursorError::Kafka {
                topic: topic.into(),
                source,
            })?;
        Ok(CursorStore {
            producer,
            topic: topic.to_string(),
            settings,
        })
    }

    /// Every source's last cursor, reading the topic from its start to its
    /// end as it is now (blocking; run it on a blocking thread).
    pub fn load_all(&self, within: Duration) -> Result<HashMap<String, String>, CursorError> {
        Ok(self
            .read_latest(&self.topic, within)?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice::<Stored>(&v).ok()?.cursor)))
            .collect())
    }

    /// The last value of every key of `topic`, read from its start to its
    /// end as it is now (blocking).
    pub fn read_latest(
        &self,
        topic: &str,
        within: Duration,
    ) -> Result<HashMap<String, Vec<u8>>, CursorError> {
        let kafka = |source| CursorError::Kafka {
            topic: topic.to_string(),
            source,
        };
        let consumer: BaseConsumer = self
            .settings
            .clone()
            .set("group.id", "ingest-poller-cursors")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka)?;
        let started = Instant::now();
        let md = consumer
            .fetch_metadata(Some(topic), within)
            .map_err(kafka)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(CursorError::Missing(topic.to_string()));
        }
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, within).map_err(kafka)?;
            if high > low {
                ends.insert(p, high);
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(kafka)?;
            }
        }
        let mut cursors = HashMap::new();
        if ends.is_empty() {
            return Ok(cursors);
        }
        consumer.assign(&tpl).map_err(kafka)?;
        while !ends.is_empty() {
            if started.elapsed() > within {
                return Err(CursorError::Timeout(topic.to_string(), within));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.map_err(kafka)?;
            if let (Some(key), Some(value)) = (msg.key(), msg.payload())
                && let Ok(key) = std::str::from_utf8(key)
            {
                cursors.insert(key.to_string(), value.to_vec());
            }
            if ends
                .get(&msg.partition())
                .is_some_and(|end| msg.offset() + 1 >= *end)
            {
                ends.remove(&msg.partition());
            }
        }
        Ok(cursors)
    }

    /// Writes `value` under `key` to `topic`, waiting for `acks=all`.
    pub async fn write(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), CursorError> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(source, _)| CursorError::Kafka {
                topic: topic.to_string(),
                source,
            })
    }

    /// Stores `cursor` as `source`'s, waiting for the brokers' `acks=all`.
    pub async fn store(&self, source: &str, cursor: &str) -> Result<(), CursorError> {
        let value = serde_json::to_vec(&Stored {
            cursor: cursor.to_string(),
            stored_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        })
        .unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(source).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(source, _)| CursorError::Kafka {
                topic: self.topic.clone(),
                source,
            })
    }
}
