//! Whether the raw topic can keep the promise behind a `2xx`.
//!
//! `acks=all` means "every in-sync replica has the record", which is only
//! as strong as the topic's settings: with replication factor 1, or
//! `min.insync.replicas` 1, one disk loss can take an acknowledged webhook
//! with it. Ingest reads both from the brokers ([`inspect`]: the replica
//! count of every partition from metadata, `min.insync.replicas` from
//! DescribeConfigs) at start and then every [`RECHECK`], and compares them
//! with `kafka.durability` ([`DurabilityConfig`]). A setting the broker does
//! not report is unknown, never assumed good. Below the minimum, ingest
//! logs a warning and `/readyz` names the shortfall; with `require = true`
//! it refuses to start and `/readyz` answers 503 until the topic is fixed.
//! Creating topics with the right settings is the topics command's job;
//! this only checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

/// How often the topic's settings are read again.
pub const RECHECK: Duration = Duration::from_secs(60);

/// `kafka.durability`: the least the raw topic must have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurabilityConfig {
    /// Least replicas per partition (production: 3).
    #[serde(default = "default_replication_factor")]
    pub min_replication_factor: i32,
    /// Least `min.insync.replicas` of the topic (production: 2), so that
    /// `acks=all` means at least two copies.
    #[serde(default = "default_min_insync")]
    pub min_insync_replicas: i32,
    /// Refuse to start, and answer 503 on `/readyz`, while the topic is
    /// below these or a setting is unknown. Off by default so that a
    /// single-broker development stack (replication factor 1) runs, with a
    /// warning.
    #[serde(default)]
    pub require: bool,
}

const fn default_replication_factor() -> i32 {
    3
}
const fn default_min_insync() -> i32 {
    2
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            min_replication_factor: default_replication_factor(),
            min_insync_replicas: default_min_insync(),
            require: false,
        }
    }
}

impl DurabilityConfig {
    /// Every problem, each naming its field under `kafka.durability`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.min_replication_factor < 1 {
            p.push("kafka.durability.min_replication_factor: must be at least 1".into());
        }
        if self.min_insync_replicas < 1 {
            p.push("kafka.durability.min_insync_replicas: must be at least 1".into());
        }
        if self.min_insync_replicas > self.min_replication_factor {
            p.push(
                "kafka.durability.min_insync_replicas: must not exceed min_replication_factor"
                    .into(),
            );
        }
        p
    }
}

/// What the brokers said of the raw topic; `None` is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDurability {
    /// The fewest replicas any partition has.
    pub replication_factor: Option<i32>,
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: Option<i32>,
}

impl TopicDurability {
    /// What falls short of `want`, one line each; empty when it holds.
    pub fn shortfalls(&self, want: &DurabilityConfig) -> Vec<String> {
        let mut s = Vec::new();
        match self.replication_factor {
            Some(rf) if rf < want.min_replication_factor => s.push(format!(
                "replication factor {rf} is below {} (an acknowledged record may live on fewer disks than promised)",
                want.min_replication_factor
            )),
            Some(_) => {}
            None => s.push("replication factor unknown (the brokers did not report the topic's replicas)".into()),
        }
        match self.min_insync_replicas {
            Some(m) if m < want.min_insync_replicas => s.push(format!(
                "min.insync.replicas {m} is below {} (acks=all may mean a single copy)",
                want.min_insync_replicas
            )),
            Some(_) => {}
            None => s.push("min.insync.replicas unknown (the brokers did not report it)".into()),
        }
        s
    }
}

/// The last verdict, shared with `/readyz`.
#[derive(Debug, Default)]
pub struct DurabilityState {
    last: Mutex<Option<TopicDurability>>,
}

impl DurabilityState {
    /// Records a new reading; answers whether it changed.
    pub fn set(&self, d: TopicDurability) -> bool {
        match self.last.lock() {
            Ok(mut last) => {
                let changed = last.as_ref() != Some(&d);
                *last = Some(d);
                changed
            }
            Err(_) => false,
        }
    }

    /// The last reading, if any was made.
    pub fn get(&self) -> Option<TopicDurability> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// Reads the topic's replica count and `min.insync.replicas`. An error
/// means the brokers could not be asked at all.
///
/// The admin client is created and dropped on the blocking pool: both
/// block (its threads are started, then joined, and the join waits out the
/// client's 100 ms queue poll). On a runtime worker that stalled every
/// request the worker served, once a minute, long enough for a sender's
/// new connections to overflow the listen queue and wait a second for
/// their SYN to be sent again.
pub async fn inspect(
    settings: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<TopicDurability, rdkafka::error::KafkaError> {
    let blocking_failed =
        |_| rdkafka::error::KafkaError::AdminOp(rdkafka::types::RDKafkaErrorCode::Fail);
    let settings = settings.clone();
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        tokio::task::spawn_blocking(move || settings.create())
            .await
            .map_err(blocking_failed)??,
    );
    let reading = read_with(&admin, topic, timeout).await;
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    reading
}

async fn read_with(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
    timeout: Duration,
) -> Result<TopicDurability, rdkafka::error::KafkaError> {
    let probe = admin.clone();
    let name = topic.to_owned();
    let replication_factor = tokio::task::spawn_blocking(move || {
        probe
            .inner()
            .fetch_metadata(Some(&name), timeout)
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .and_then(|t| t.partitions().iter().map(|p| p.replicas().len()).min())
                    .and_then(|n| i32::try_from(n).ok())
            })
    })
    .await
    .map_err(|_| rdkafka::error::KafkaError::AdminOp(rdkafka::types::RDKafkaErrorCode::Fail))
    .and_then(|r| r)?;
    let min_insync_replicas = match admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await
    {
        Ok(results) => results
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|r| r.entries)
            .find(|e| e.name == "min.insync.replicas")
            .and_then(|e| e.value)
            .and_then(|v| v.trim().parse::<i32>().ok()),
        Err(e) => {
            tracing::debug!(error = %e, "describe configs of the raw topic failed");
            None
        }
    };
    Ok(TopicDurability {
        replication_factor,
        min_insync_replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one runtime thread (as a pod limited to one core runs), a task
    /// that ticks every 5 ms must never wait long while readings run; the
    /// admin client's creation and drop on the worker stalled it 100 ms.
    /// No broker is needed: the drop blocks either way.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reading_never_blocks_the_runtime() {
        let mut settings = ClientConfig::new();
        settings.set("bootstrap.servers", "127.0.0.1:1");
        let ticker = tokio::spawn(async {
            let mut worst = Duration::ZERO;
            let mut last = std::time::Instant::now();
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                worst = worst.max(last.elapsed());
                last = std::time::Instant::now();
            }
            worst
        });
        for _ in 0..3 {
            let _ = inspect(&settings, "raw", Duration::from_millis(200)).await;
        }
        let worst = ticker.await.unwrap();
        assert!(
            worst < Duration::from_millis(50),
            "the runtime's only thread was blocked for {worst:?}"
        );
    }

    #[test]
    fn shortfalls_name_each_setting_and_unknown_is_not_good() {
        let want = DurabilityConfig::default();
        let good = TopicDurability {
            replication_factor: Some(3),
            min_insync_replicas: Some(2),
        };
        assert!(good.shortfalls(&want).is_empty());
        let dev = TopicDurability {
            replication_factor: Some(1),
            min_insync_replicas: Some(1),
        };
        let s = dev.shortfalls(&want);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].starts_with("replication factor 1 is below 3"), "{s:?}");
        assert!(
            s[1].starts_with("min.insync.replicas 1 is below 2"),
            "{s:?}"
        );
        let unknown = TopicDurability {
            replication_factor: Some(3),
            min_insync_replicas: None,
        };
        assert_eq!(
            unknown.shortfalls(&want),
            vec!["min.insync.replicas unknown (the brokers did not report it)".to_string()]
        );
    }

    #[test]
    fn the_config_refuses_impossible_minimums() {
        let bad = DurabilityConfig {
            min_replication_factor: 1,
            min_insync_replicas: 2,
            require: true,
        };
        assert_eq!(bad.problems().len(), 1);
        assert!(DurabilityConfig::default().problems().is_empty());
    }
}
