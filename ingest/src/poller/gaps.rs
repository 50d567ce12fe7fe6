//! Gap-triggered reconciliation: the processors write each sequence gap
//! they skipped to their reconcile topic; [`follow`] reads it and hands
//! each request to its source's poller, which fetches exactly that range
//! from the provider ([`super::SourcePoller`]). A gap the provider cannot
//! fill either is recorded once in the unfillable topic ([`Unfillable`]),
//! which `ingest unfillable` lists.

use std::collections::HashMap;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::KafkaConfig;

/// One skipped gap, as the processors write it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRequest {
    /// The source whose events are missing.
    pub source: String,
    /// The ordering key.
    pub ordering_key: String,
    /// The first missing sequence.
    pub from_sequence: i64,
    /// The last missing sequence.
    pub to_sequence: i64,
}

/// A gap the provider could not fill either, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfillable {
    /// The source.
    pub source: String,
    /// The ordering key.
    pub ordering_key: String,
    /// The gap asked for.
    pub from_sequence: i64,
    /// The gap asked for.
    pub to_sequence: i64,
    /// The sequences of it the provider did not have.
    pub missing: Vec<i64>,
    /// When it was recorded, Unix milliseconds.
    pub recorded_at_ms: i64,
}

impl Unfillable {
    /// The record key: one record per gap, so a gap asked for twice is
    /// listed once.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}-{}",
            self.source, self.ordering_key, self.from_sequence, self.to_sequence
        )
    }
}

/// Reads the reconcile topic (consumer group `ingest-poller-reconcile`)
/// and hands each request to its source's channel until `shutdown`.
/// A request for a source without a channel is logged and dropped.
pub async fn follow(
    kafka: &KafkaConfig,
    topic: &str,
    routes: HashMap<String, mpsc::Sender<GapRequest>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), rdkafka::error::KafkaError> {
    // The brokers, options and [kafka.security] of every other client.
    let mut settings =
        plumbing::kafka::client_config(&kafka.brokers, &kafka.options, &kafka.security)?;
    let consumer: StreamConsumer = settings
        .set("group.id", "ingest-poller-reconcile")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    loop {
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(topic, error = %e, "reading the reconcile topic");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(gap) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<GapRequest>(p).ok())
        else {
            tracing::warn!(
                topic,
                offset = msg.offset(),
                "a reconcile request that is not one: skipped"
            );
            continue;
        };
        match routes.get(&gap.source) {
            Some(tx) => {
                let _ = tx.send(gap).await;
            }
            None => tracing::warn!(
                source = %gap.source,
                ordering_key = %gap.ordering_key,
                "a gap of a source without poll.range_url: not fetched"
            ),
        }
    }
}
