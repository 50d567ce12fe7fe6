//! The quarantine and dead-letter topics on Kafka: [`KafkaSide`] writes the
//! original record with headers saying why (`acks=all`, idempotent), so the
//! pipeline moves past a record only once it is durably set aside.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{KafkaConfig, SIDE_TIMEOUT, producer_config};
use crate::event::{Event, Quarantine};
use crate::pipeline::{RawRecord, SideTopics};
use crate::sinks::BoxFuture;

/// Longest header value copied from a quarantine reason.
const MAX_DETAIL: usize = 1024;

/// Quarantine and dead-letter topics on Kafka.
pub struct KafkaSide {
    producer: FutureProducer,
    quarantine_topic: String,
    dlq_topic: String,
}

impl KafkaSide {
    /// Creates the producer (does not contact the brokers yet).
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(KafkaSide {
            producer: producer_config(kafka)?.create()?,
            quarantine_topic: kafka.quarantine_topic.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
        })
    }

    async fn write(
        &self,
        topic: &str,
        record: &RawRecord,
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: "original-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "original-offset",
                value: Some(&offset),
            });
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r = FutureRecord::to(topic)
            .payload(record.payload.as_slice())
            .headers(h);
        if let Some(k) = &record.key {
            r = r.key(k.as_slice());
        }
        self.producer
            .send(r, SIDE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("{topic}: {e}"))
    }
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_DETAIL {
        return s;
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl SideTopics for KafkaSide {
    fn quarantine<'a>(
        &'a self,
        record: &'a RawRecord,
        source: &'a str,
        why: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let headers = [
                ("source", source),
                ("reason", why.reason),
                ("detail", clip(&why.detail)),
            ];
            self.write(&self.quarantine_topic, record, &headers).await
        })
    }

    fn dead_letter<'a>(
        &'a self,
        record: &'a RawRecord,
        event: &'a Event,
        sink: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let headers = [
                ("source", event.source.as_str()),
                ("event-id", event.event_id.as_str()),
                ("sink", sink),
                ("reason", clip(reason)),
            ];
            self.write(&self.dlq_topic, record, &headers).await
        })
    }
}
