//! The brokers' side of `processors topics`: what exists (metadata for
//! partitions and replicas, DescribeConfigs for topic configs) and the
//! creation of missing topics. The definitions and the comparison are in
//! `crate::topics`; nothing here changes an existing topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{KafkaConfig, QuietCtx, admin_config};
use crate::topics::{Observed, TopicSpec};

/// The cluster as far as the topics are concerned.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Brokers in the metadata.
    pub brokers: usize,
    /// The asked-for topics that exist, by name.
    pub topics: BTreeMap<String, Observed>,
}

/// Reads the metadata and the configs of `names` (those that exist).
pub async fn observe(
    kafka: &KafkaConfig,
    names: &[String],
    timeout: Duration,
) -> Result<Cluster, String> {
    let config = admin_config(kafka).map_err(|e| e.to_string())?;
    let wanted = names.to_vec();
    let (brokers, mut found) = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer<QuietCtx> = config
            .create_with_context(QuietCtx)
            .map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(None, timeout)
            .map_err(|e| format!("reading the cluster's metadata: {e}"))?;
        let mut found = BTreeMap::new();
        for t in md.topics() {
            if !wanted.iter().any(|w| w == t.name())
                || t.error().is_some()
                || t.partitions().is_empty()
            {
                continue;
            }
            let replicas = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len() as i32)
                .min()
                .unwrap_or(0);
            found.insert(
                t.name().to_string(),
                Observed {
                    partitions: t.partitions().len() as i32,
                    replication_factor: replicas,
                    configs: BTreeMap::new(),
                },
            );
        }
        Ok::<_, String>((md.brokers().len(), found))
    })
    .await
    .map_err(|e| e.to_string())??;
    if !found.is_empty() {
        let admin: AdminClient<DefaultClientContext> = admin_config(kafka)
            .and_then(|c| c.create())
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = found.keys().cloned().collect();
        let specifiers: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let results = admin
            .describe_configs(
                &specifiers,
                &AdminOptions::new().request_timeout(Some(timeout)),
            )
            .await
            .map_err(|e| format!("reading the topics' configs (DescribeConfigs): {e}"))?;
        for (name, result) in names.iter().zip(results) {
            let resource = result
                .map_err(|e| format!("{name}: reading its configs (DescribeConfigs): {e}"))?;
            if let Some(o) = found.get_mut(name) {
                o.configs = resource
                    .entries
                    .into_iter()
                    .map(|e| (e.name, e.value))
                    .collect();
            }
        }
    }
    Ok(Cluster {
        brokers,
        topics: found,
    })
}

/// Creates `specs` (none of which should exist), then waits until the
/// metadata shows each with its partitions. One result per topic, in
/// order; a topic that exists by then is an error naming it.
pub async fn create(
    kafka: &KafkaConfig,
    specs: &[&TopicSpec],
    timeout: Duration,
) -> Vec<(String, Result<(), String>)> {
    if specs.is_empty() {
        return Vec::new();
    }
    let admin: AdminClient<DefaultClientContext> =
        match admin_config(kafka).and_then(|c| c.create()) {
            Ok(a) => a,
            Err(e) => {
                return specs
                    .iter()
                    .map(|s| (s.name.clone(), Err(e.to_string())))
                    .collect();
            }
        };
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = match admin.create_topics(&new, &options).await {
        Ok(r) => r,
        Err(e) => {
            return specs
                .iter()
                .map(|s| (s.name.clone(), Err(format!("CreateTopics: {e}"))))
                .collect();
        }
    };
    let mut out = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        let r = match r {
            Ok(_) => wait_for(kafka, &spec.name, spec.partitions, timeout).await,
            Err((_, code)) => Err(format!("CreateTopics: {code}")),
        };
        out.push((spec.name.clone(), r));
    }
    out
}

/// Waits until the metadata shows `topic` with `partitions` partitions.
async fn wait_for(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = observe_partitions(kafka, topic, timeout).await?;
        if seen == Some(partitions) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "created, but the metadata did not show its {partitions} partitions within {}",
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn observe_partitions(
    kafka: &KafkaConfig,
    name: &str,
    timeout: Duration,
) -> Result<Option<i32>, String> {
    let config = admin_config(kafka).map_err(|e| e.to_string())?;
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer<QuietCtx> = config
            .create_with_context(QuietCtx)
            .map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(Some(&name), timeout)
            .map_err(|e| format!("reading the metadata of {name:?}: {e}"))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    })
    .await
    .map_err(|e| e.to_string())?
}
