//! Topic settings as code: every topic the pipeline uses, with its
//! partitions, replication factor and topic configs, derived from the
//! processors' configuration (whose `kafka` and `state` sections name every
//! topic: `Config::topic_definitions`) and its `[topics]` table. One source
//! for `processors topics apply|check` (the Kafka side is
//! `crate::kafka::topics`) and for the Strimzi `KafkaTopic` resources
//! (`processors topics strimzi`). No Kafka client here: the definitions,
//! the comparison with what a broker reported, and the YAML.
//!
//! What is fixed by the code, not by settings: the cleanup policy of each
//! topic (the state changelog compacted, every other topic deleted by time),
//! the state topics' partition count (the raw topic's: partition p's state
//! lives in partition p) and the ledger's retention (`dedupe.window` plus a
//! day).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// How long the ledger keeps records past the dedupe window (Kafka Streams
/// keeps windowed changelogs a day past their window too).
pub const LEDGER_PAST_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The `[topics]` table: what an operator chooses about the topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of the raw topic; the state changelog and the ledger
    /// always get the same count. Fix it before the first deployment: the
    /// count cannot change once state exists.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Partitions of the quarantine and dead-letter topics.
    #[serde(default = "default_side_partitions")]
    pub side_partitions: i32,
    /// Replicas of every topic; at most the number of brokers.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic: an `acks=all` write is
    /// acknowledged once this many replicas have it.
    #[serde(default = "default_min_insync_replicas")]
    pub min_insync_replicas: i32,
    /// The raw topic's retention: the replay horizon (how far back
    /// `processors replay` and a rebuilt store can go).
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Retention of the quarantine and dead-letter topics (time to fix a
    /// parser or a sink and re-drive).
    #[serde(default = "default_side_retention", with = "humantime_serde")]
    pub side_retention: Duration,
}

const fn default_partitions() -> i32 {
    12
}
const fn default_side_partitions() -> i32 {
    3
}
const fn default_replication_factor() -> i32 {
    3
}
const fn default_min_insync_replicas() -> i32 {
    2
}
/// The replay horizon: 14 days.
pub const REPLAY_HORIZON: Duration = Duration::from_secs(14 * 24 * 3600);
const fn default_retention() -> Duration {
    REPLAY_HORIZON
}
const fn default_side_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            partitions: default_partitions(),
            side_partitions: default_side_partitions(),
            replication_factor: default_replication_factor(),
            min_insync_replicas: default_min_insync_replicas(),
            retention: default_retention(),
            side_retention: default_side_retention(),
        }
    }
}

/// The shortest retention accepted: less is a typo, not a choice.
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// Kafka's limit on partitions per topic is the cluster's; this one only
/// catches typos.
const MAX_PARTITIONS: i32 = 10_000;

impl TopicsConfig {
    /// Every problem, each naming its field under `topics`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (field, n) in [
            ("partitions", self.partitions),
            ("side_partitions", self.side_partitions),
        ] {
            if !(1..=MAX_PARTITIONS).contains(&n) {
                p.push(format!(
                    "topics.{field}: must be from 1 to {MAX_PARTITIONS} (got {n})"
                ));
            }
        }
        if !(1..=i32::from(i16::MAX)).contains(&self.replication_factor) {
            p.push(format!(
                "topics.replication_factor: must be at least 1 (got {})",
                self.replication_factor
            ));
        }
        if self.min_insync_replicas < 1 {
            p.push(format!(
                "topics.min_insync_replicas: must be at least 1 (got {})",
                self.min_insync_replicas
            ));
        } else if self.min_insync_replicas > self.replication_factor {
            p.push(format!(
                "topics.min_insync_replicas: {} is more than topics.replication_factor ({}): no acks=all write could ever be acknowledged",
                self.min_insync_replicas, self.replication_factor
            ));
        }
        for (field, d) in [
            ("retention", self.retention),
            ("side_retention", self.side_retention),
        ] {
            if d < MIN_RETENTION {
                p.push(format!(
                    "topics.{field}: must be at least {} (got {})",
                    humantime::format_duration(MIN_RETENTION),
                    humantime::format_duration(d)
                ));
            } else if i64::try_from(d.as_millis()).is_err() {
                p.push(format!(
                    "topics.{field}: {} is too long for retention.ms",
                    humantime::format_duration(d)
                ));
            }
        }
        p
    }
}

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The raw topic ingest writes and the processors read.
    Raw,
    /// Bodies that cannot be parsed.
    Quarantine,
    /// Events a sink refused for good.
    DeadLetters,
    /// The processors' partition state, compacted.
    StateChangelog,
    /// The processors' ledger of applied events, deleted by time.
    Ledger,
    /// Requests to fetch a skipped sequence gap from the provider
    /// (`kafka.reconcile_topic`, read by `ingest poll`).
    Reconcile,
    /// Each polled source's cursor (ingest's `poller.cursor_topic`),
    /// compacted.
    PollCursors,
    /// Gaps the provider could not fill (ingest's
    /// `poller.unfillable_topic`), compacted.
    Unfillable,
}

impl Role {
    /// The configuration field that names the topic.
    pub fn field(self) -> &'static str {
        match self {
            Role::Raw => "kafka.topic",
            Role::Quarantine => "kafka.quarantine_topic",
            Role::DeadLetters => "kafka.dlq_topic",
            Role::StateChangelog => "state.changelog_topic",
            Role::Ledger => "state.ledger_topic",
            Role::Reconcile => "kafka.reconcile_topic",
            Role::PollCursors => "ingest's poller.cursor_topic",
            Role::Unfillable => "ingest's poller.unfillable_topic",
        }
    }

    /// One line on the topic, for the Strimzi resources' comments.
    fn about(self) -> &'static str {
        match self {
            Role::Raw => {
                "The raw topic (kafka.topic): ingest writes it, the processors read it. Its retention is the replay horizon."
            }
            Role::Quarantine => {
                "Bodies that cannot be parsed (kafka.quarantine_topic), to re-produce once a parser is fixed."
            }
            Role::DeadLetters => {
                "Events a sink refused for good (kafka.dlq_topic): processors dlq list|redrive."
            }
            Role::StateChangelog => {
                "The processors' state changelog (state.changelog_topic): compacted, never deleted by time, the raw topic's partitions."
            }
            Role::Ledger => {
                "The processors' ledger (state.ledger_topic): deleted a day past dedupe.window, the raw topic's partitions."
            }
            Role::Reconcile => {
                "Gap reconciliation requests (kafka.reconcile_topic): the processors write them, ingest poll fetches the ranges."
            }
            Role::PollCursors => {
                "Each polled source's cursor (ingest's poller.cursor_topic): compacted, one partition; a restarted ingest poll continues from it."
            }
            Role::Unfillable => {
                "Gaps the provider could not fill (ingest's poller.unfillable_topic): compacted, once per gap; ingest unfillable lists them."
            }
        }
    }
}

/// One topic as the pipeline wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// What it is for.
    pub role: Role,
    /// Its name, from the configuration.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: i32,
    /// Topic configs (`cleanup.policy`, `retention.ms`,
    /// `min.insync.replicas`), as Kafka spells them.
    pub configs: BTreeMap<String, String>,
}

/// The names of the pipeline's topics, as the configuration gives them
/// (`Config::topic_definitions` fills them in).
#[derive(Debug, Clone)]
pub struct TopicNames {
    /// `kafka.topic`.
    pub raw: String,
    /// `kafka.quarantine_topic`.
    pub quarantine: String,
    /// `kafka.dlq_topic`.
    pub dlq: String,
    /// `state.changelog_topic` (or its default).
    pub changelog: String,
    /// `state.ledger_topic` (or its default).
    pub ledger: String,
    /// `kafka.reconcile_topic`, when gaps are reconciled.
    pub reconcile: Option<String>,
}

/// Every topic, raw topic first: `names` with the settings of `t`; the
/// ledger keeps `dedupe_window` plus [`LEDGER_PAST_WINDOW`].
pub fn definitions(
    names: &TopicNames,
    dedupe_window: Duration,
    t: &TopicsConfig,
) -> Vec<TopicSpec> {
    let isr = t.min_insync_replicas.to_string();
    let spec = |role, name: &String, partitions, cleanup: &str, retention: Option<Duration>| {
        let mut configs = BTreeMap::from([
            ("cleanup.policy".to_string(), cleanup.to_string()),
            ("min.insync.replicas".to_string(), isr.clone()),
        ]);
        if let Some(r) = retention {
            configs.insert("retention.ms".into(), r.as_millis().to_string());
        }
        TopicSpec {
            role,
            name: name.clone(),
            partitions,
            replication_factor: t.replication_factor,
            configs,
        }
    };
    [
        spec(
            Role::Raw,
            &names.raw,
            t.partitions,
            "delete",
            Some(t.retention),
        ),
        spec(
            Role::Quarantine,
            &names.quarantine,
            t.side_partitions,
            "delete",
            Some(t.side_retention),
        ),
        spec(
            Role::DeadLetters,
            &names.dlq,
            t.side_partitions,
            "delete",
            Some(t.side_retention),
        ),
        spec(
            Role::StateChangelog,
            &names.changelog,
            t.partitions,
            "compact",
            None,
        ),
        spec(
            Role::Ledger,
            &names.ledger,
            t.partitions,
            "delete",
            Some(dedupe_window + LEDGER_PAST_WINDOW),
        ),
    ]
    .into_iter()
    .chain(names.reconcile.as_ref().map(|name| {
        spec(
            Role::Reconcile,
            name,
            t.side_partitions,
            "delete",
            Some(t.side_retention),
        )
    }))
    .collect()
}

/// What the topics commands read of ingest's configuration
/// (`--ingest-config`): the raw topic it writes and what `ingest poll`
/// uses. Read leniently (ingest's own `check-config` judges the rest of
/// its file), with ingest's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IngestTopics {
    #[serde(default)]
    kafka: IngestKafka,
    #[serde(default)]
    poller: Option<IngestPoller>,
    #[serde(default)]
    sources: BTreeMap<String, IngestSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IngestKafka {
    topic: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IngestPoller {
    cursor_topic: Option<String>,
    unfillable_topic: Option<String>,
    reconcile_topic: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IngestSource {
    poll: Option<serde::de::IgnoredAny>,
}

impl IngestTopics {
    /// Whether `ingest poll` has work: a `[poller]` table or a source with
    /// a `poll` table.
    pub fn polls(&self) -> bool {
        self.poller.is_some() || self.sources.values().any(|s| s.poll.is_some())
    }

    /// The poller's cursor and unfillable-gap topics, when it polls:
    /// compacted, one partition (a record per source or per gap), the
    /// cluster's replication.
    pub fn definitions(&self, t: &TopicsConfig) -> Vec<TopicSpec> {
        if !self.polls() {
            return Vec::new();
        }
        let poller = self.poller.clone().unwrap_or_default();
        let cursors = poller
            .cursor_topic
            .unwrap_or_else(|| plumbing::DEFAULT_POLL_CURSOR_TOPIC.into());
        let unfillable = poller
            .unfillable_topic
            .unwrap_or_else(|| plumbing::DEFAULT_UNFILLABLE_TOPIC.into());
        [(Role::PollCursors, cursors), (Role::Unfillable, unfillable)]
            .into_iter()
            .map(|(role, name)| TopicSpec {
                role,
                name,
                partitions: 1,
                replication_factor: t.replication_factor,
                configs: BTreeMap::from([
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    (
                        "min.insync.replicas".to_string(),
                        t.min_insync_replicas.to_string(),
                    ),
                ]),
            })
            .collect()
    }

    /// Where ingest's file and the processors' disagree on a topic both
    /// name: the raw topic (`raw`, their `kafka.topic`) and the reconcile
    /// topic (`reconcile`, their `kafka.reconcile_topic`). `path` names
    /// ingest's file in each line.
    pub fn problems(&self, path: &str, raw: &str, reconcile: Option<&str>) -> Vec<String> {
        let mut p = Vec::new();
        let ingest_raw = self.kafka.topic.as_deref().unwrap_or_default();
        if ingest_raw != raw {
            p.push(format!(
                "{path}: kafka.topic {ingest_raw:?} is not the processors' kafka.topic {raw:?}: ingest would write where no processor reads"
            ));
        }
        let asked = self
            .poller
            .as_ref()
            .and_then(|p| p.reconcile_topic.as_deref());
        match (asked, reconcile) {
            (Some(a), Some(r)) if a != r => p.push(format!(
                "{path}: poller.reconcile_topic {a:?} is not the processors' kafka.reconcile_topic {r:?}: no gap they skip would be fetched"
            )),
            (Some(a), None) => p.push(format!(
                "{path}: poller.reconcile_topic {a:?} is set but the processors' kafka.reconcile_topic is not: they would never ask for a gap"
            )),
            _ => {}
        }
        for spec in self.definitions(&TopicsConfig::default()) {
            if !plumbing::valid_topic(&spec.name) {
                let field = spec.role.field().trim_start_matches("ingest's ");
                p.push(format!(
                    "{path}: {field}: {:?} is not a valid topic name",
                    spec.name
                ));
            }
        }
        p
    }
}

/// An existing topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Partition count (metadata).
    pub partitions: i32,
    /// The fewest replicas any partition has (metadata).
    pub replication_factor: i32,
    /// The topic configs the broker reported (DescribeConfigs); a key it
    /// did not report is absent, a key it reported without a value is
    /// `None`.
    pub configs: BTreeMap<String, Option<String>>,
}

/// One way an existing topic is not as defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Another partition count.
    Partitions {
        /// What the broker has.
        have: i32,
        /// What the definitions say.
        want: i32,
    },
    /// Another replication factor.
    ReplicationFactor {
        /// What the broker has.
        have: i32,
        /// What the definitions say.
        want: i32,
    },
    /// A topic config with another value.
    Config {
        /// The config's name.
        key: String,
        /// What the broker reported.
        have: String,
        /// What the definitions say.
        want: String,
    },
    /// A topic config the broker did not report: neither a match nor a
    /// difference can be claimed.
    NotReported {
        /// The config's name.
        key: String,
        /// What the definitions say.
        want: String,
    },
}

impl Finding {
    /// Whether this is a known difference (not just unverified).
    pub fn differs(&self) -> bool {
        !matches!(self, Finding::NotReported { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Partitions { have, want } => write!(f, "partitions: {have}, wanted {want}"),
            Finding::ReplicationFactor { have, want } => {
                write!(f, "replication factor: {have}, wanted {want}")
            }
            Finding::Config { key, have, want } => write!(f, "{key}: {have}, wanted {want}"),
            Finding::NotReported { key, want } => {
                write!(f, "{key}: not reported by the broker, wanted {want}")
            }
        }
    }
}

/// How `have` differs from `spec`, in a fixed order: partitions,
/// replication factor, then each config by name.
pub fn diff(spec: &TopicSpec, have: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    if have.partitions != spec.partitions {
        out.push(Finding::Partitions {
            have: have.partitions,
            want: spec.partitions,
        });
    }
    if have.replication_factor != spec.replication_factor {
        out.push(Finding::ReplicationFactor {
            have: have.replication_factor,
            want: spec.replication_factor,
        });
    }
    for (key, want) in &spec.configs {
        match have.configs.get(key) {
            None | Some(None) => out.push(Finding::NotReported {
                key: key.clone(),
                want: want.clone(),
            }),
            Some(Some(v)) if same_value(key, v, want) => {}
            Some(Some(v)) => out.push(Finding::Config {
                key: key.clone(),
                have: v.clone(),
                want: want.clone(),
            }),
        }
    }
    out
}

/// Whether a reported config value means the wanted one: `cleanup.policy`
/// as a set of policies, numbers as numbers, anything else as text.
fn same_value(key: &str, have: &str, want: &str) -> bool {
    if key == "cleanup.policy" {
        let set = |v: &str| {
            v.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect::<std::collections::BTreeSet<_>>()
        };
        return set(have) == set(want);
    }
    match (have.trim().parse::<i64>(), want.trim().parse::<i64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => have.trim() == want.trim(),
    }
}

/// How one defined topic stands on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Exists; the findings are empty when it is exactly as defined.
    Exists(Vec<Finding>),
    /// Does not exist and may be created as defined.
    Missing,
    /// Does not exist and must not be created as defined, for this reason.
    Blocked(String),
}

/// Each definition's standing against the topics that exist. A missing
/// state topic is blocked while the raw topic exists with another
/// partition count than defined: created as defined, it would not match
/// the raw topic, and the processors would refuse to start.
pub fn compare(
    specs: &[TopicSpec],
    existing: &BTreeMap<String, Observed>,
) -> Vec<(TopicSpec, Standing)> {
    let raw = specs.iter().find(|s| s.role == Role::Raw);
    let raw_mismatch = raw.and_then(|r| {
        existing
            .get(&r.name)
            .filter(|o| o.partitions != r.partitions)
            .map(|o| (r, o.partitions))
    });
    specs
        .iter()
        .map(|spec| {
            let standing = match existing.get(&spec.name) {
                Some(have) => Standing::Exists(diff(spec, have)),
                None => match raw_mismatch {
                    Some((r, n)) if matches!(spec.role, Role::StateChangelog | Role::Ledger) => {
                        Standing::Blocked(format!(
                            "the raw topic {:?} has {n} partitions, not the {} defined, and a state topic must have the raw topic's count",
                            r.name, r.partitions
                        ))
                    }
                    _ => Standing::Missing,
                },
            };
            (spec.clone(), standing)
        })
        .collect()
}

/// Why the definitions cannot be applied to a cluster of `brokers`
/// brokers, if they cannot.
pub fn cluster_problem(topics: &TopicsConfig, brokers: usize) -> Option<String> {
    let n = i64::try_from(brokers).unwrap_or(i64::MAX);
    (i64::from(topics.replication_factor) > n).then(|| {
        format!(
            "topics.replication_factor: {} is more than the {brokers} broker(s) the cluster has",
            topics.replication_factor
        )
    })
}

/// A topic's settings in one line: `12 partitions, replication factor 3,
/// cleanup.policy=delete, ...`.
pub fn summary(spec: &TopicSpec) -> String {
    let mut s = format!(
        "{} partition{}, replication factor {}",
        spec.partitions,
        if spec.partitions == 1 { "" } else { "s" },
        spec.replication_factor
    );
    for (k, v) in &spec.configs {
        s.push_str(&format!(", {k}={v}"));
    }
    s
}

/// The `KafkaTopic` resources (Strimzi `kafka.strimzi.io/v1beta2`) of
/// `topics` for the Kafka cluster `cluster`, as one YAML text. `source`
/// names the configuration they came from, in the header.
pub fn strimzi_yaml(topics: &[TopicSpec], cluster: &str, source: &str) -> String {
    let mut out = format!(
        "# Generated from the topic definitions `processors topics apply|check` use:\n\
         #   processors topics strimzi --config {source}\n\
         # Change [topics] (or the topic names) there and generate again; do not\n\
         # edit by hand (tests/tests/e2e/deploy.rs checks this file, and every\n\
         # overlay's topics against its own configuration's definitions).\n\
         # The KafkaTopic resources of the Kafka cluster `{cluster}` (its Topic\n\
         # Operator must watch this namespace).\n"
    );
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        for line in wrap(t.role.about(), 76) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str("apiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\nmetadata:\n");
        out.push_str(&format!("  name: {}\n", resource_name(&t.name)));
        out.push_str(&format!(
            "  labels:\n    strimzi.io/cluster: {cluster}\nspec:\n"
        ));
        out.push_str(&format!("  topicName: {}\n", t.name));
        out.push_str(&format!("  partitions: {}\n", t.partitions));
        out.push_str(&format!("  replicas: {}\n", t.replication_factor));
        out.push_str("  config:\n");
        for (k, v) in &t.configs {
            out.push_str(&format!("    {k}: {v}"));
            if k == "retention.ms"
                && let Ok(ms) = v.parse::<u64>()
            {
                out.push_str(&format!(
                    "  # {}",
                    humantime::format_duration(Duration::from_millis(ms))
                ));
            }
            out.push('\n');
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.len() + 1 + word.len() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// A Kubernetes resource name for a topic: lower case, `_` as `-`
/// (Strimzi's `topicName` keeps the real name).
fn resource_name(topic: &str) -> String {
    topic.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        group_id = "pg"
        [dedupe]
        path = "/tmp/d.redb"
        window = "48h"
        [sinks.log]
        kind = "log"
        [[routes]]
        name = "all"
        sinks = ["log"]
    "#;

    fn config(extra: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}\n{extra}")).map_err(|e| e.problems.join("\n"))
    }

    fn by_name(specs: &[TopicSpec], name: &str) -> TopicSpec {
        specs
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {specs:?}"))
            .clone()
    }

    #[test]
    fn the_defaults_name_every_topic_with_the_code_s_cleanup_and_a_14_day_replay_horizon() {
        let specs = config("").unwrap().topic_definitions();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "webhooks.raw",
                "webhooks.quarantine",
                "webhooks.dlq",
                "pg-state",
                "pg-ledger"
            ]
        );
        let raw = by_name(&specs, "webhooks.raw");
        assert_eq!((raw.partitions, raw.replication_factor), (12, 3));
        assert_eq!(raw.configs["retention.ms"], "1209600000");
        assert_eq!(raw.configs["cleanup.policy"], "delete");
        assert_eq!(raw.configs["min.insync.replicas"], "2");
        let state = by_name(&specs, "pg-state");
        assert_eq!(state.partitions, 12);
        assert_eq!(state.configs["cleanup.policy"], "compact");
        assert!(!state.configs.contains_key("retention.ms"), "{state:?}");
        let ledger = by_name(&specs, "pg-ledger");
        // 48h window + a day.
        assert_eq!(ledger.configs["retention.ms"], (72 * 3_600_000).to_string());
        assert_eq!(ledger.configs["cleanup.policy"], "delete");
        let dlq = by_name(&specs, "webhooks.dlq");
        assert_eq!(dlq.partitions, 3);
        assert_eq!(
            dlq.configs["retention.ms"],
            (30 * 86_400_000u64).to_string()
        );
    }

    #[test]
    fn a_reconcile_topic_is_defined_when_gaps_are_reconciled() {
        let none = config("").unwrap().topic_definitions();
        assert!(none.iter().all(|s| s.role != Role::Reconcile));
        let mut c = config("").unwrap();
        c.kafka.reconcile_topic = Some("webhooks.reconcile".into());
        let specs = c.topic_definitions();
        let r = by_name(&specs, "webhooks.reconcile");
        assert_eq!(r.role, Role::Reconcile);
        assert_eq!((r.partitions, r.replication_factor), (3, 3));
        assert_eq!(r.configs["cleanup.policy"], "delete");
        assert_eq!(r.configs["retention.ms"], (30 * 86_400_000u64).to_string());
        assert_eq!(specs[0].role, Role::Raw, "raw topic first");
    }

    fn ingest(text: &str) -> IngestTopics {
        plumbing::parse_config(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const POLLED: &str = r#"
        [kafka]
        brokers = "b:9092"
        topic = "webhooks.raw"
        [server]
        listen = "0.0.0.0:8080"
        [sources.purple]
        ordering_key = { pointer = "/venue/id" }
        poll = { url = "https://api.example.com/v1/events", token_env = "T", interval = "1m" }
    "#;

    #[test]
    fn a_polling_ingest_adds_its_cursor_and_unfillable_topics_compacted_with_one_partition() {
        let t = TopicsConfig {
            replication_factor: 2,
            min_insync_replicas: 2,
            ..TopicsConfig::default()
        };
        let specs = ingest(POLLED).definitions(&t);
        let names: Vec<(&str, Role)> = specs.iter().map(|s| (s.name.as_str(), s.role)).collect();
        assert_eq!(
            names,
            [
                ("webhooks.poll-cursors", Role::PollCursors),
                ("webhooks.unfillable-gaps", Role::Unfillable)
            ]
        );
        for s in &specs {
            assert_eq!((s.partitions, s.replication_factor), (1, 2), "{s:?}");
            assert_eq!(s.configs["cleanup.policy"], "compact");
            assert_eq!(s.configs["min.insync.replicas"], "2");
            assert!(!s.configs.contains_key("retention.ms"), "{s:?}");
        }
        // Names from its [poller] table.
        let named = ingest(&format!(
            "{POLLED}\n[poller]\ncursor_topic = \"c\"\nunfillable_topic = \"u\""
        ));
        let names: Vec<String> = named.definitions(&t).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["c", "u"]);
        // An ingest that only receives needs neither.
        let receives = ingest(&POLLED.replace("poll = ", "# poll = "));
        assert!(!receives.polls());
        assert!(receives.definitions(&t).is_empty());
    }

    #[test]
    fn ingest_and_processors_disagreeing_on_a_topic_is_named() {
        let i = ingest(POLLED);
        assert_eq!(
            i.problems("i.toml", "webhooks.raw", None),
            Vec::<String>::new()
        );
        let raw = i.problems("i.toml", "events.raw", None);
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert!(
            raw[0].starts_with(r#"i.toml: kafka.topic "webhooks.raw" is not the processors' kafka.topic "events.raw""#),
            "{raw:?}"
        );
        let asks = ingest(&format!("{POLLED}\n[poller]\nreconcile_topic = \"r1\""));
        assert!(
            asks.problems("i.toml", "webhooks.raw", Some("r1"))
                .is_empty()
        );
        let other = asks.problems("i.toml", "webhooks.raw", Some("r2"));
        assert!(
            other[0].contains(
                r#"poller.reconcile_topic "r1" is not the processors' kafka.reconcile_topic "r2""#
            ),
            "{other:?}"
        );
        let unset = asks.problems("i.toml", "webhooks.raw", None);
        assert!(
            unset[0].contains("the processors' kafka.reconcile_topic is not"),
            "{unset:?}"
        );
        let bad = ingest(&format!("{POLLED}\n[poller]\ncursor_topic = \"a b\""));
        let bad = bad.problems("i.toml", "webhooks.raw", None);
        assert_eq!(
            bad,
            [r#"i.toml: poller.cursor_topic: "a b" is not a valid topic name"#]
        );
    }

    #[test]
    fn the_topics_table_sets_counts_replication_and_retention_and_state_topics_follow_the_raw_topic()
     {
        let c = config(
            "[topics]\npartitions = 4\nside_partitions = 1\nreplication_factor = 1\nmin_insync_replicas = 1\nretention = \"7d\"\nside_retention = \"2d\"\n[state]\nchangelog_topic = \"s\"",
        )
        .unwrap();
        let specs = c.topic_definitions();
        let raw = by_name(&specs, "webhooks.raw");
        assert_eq!((raw.partitions, raw.replication_factor), (4, 1));
        assert_eq!(raw.configs["retention.ms"], (7 * 86_400_000u64).to_string());
        assert_eq!(raw.configs["min.insync.replicas"], "1");
        assert_eq!(by_name(&specs, "s").partitions, 4);
        assert_eq!(by_name(&specs, "pg-ledger").partitions, 4);
        let q = by_name(&specs, "webhooks.quarantine");
        assert_eq!(q.partitions, 1);
        assert_eq!(q.configs["retention.ms"], (2 * 86_400_000u64).to_string());
    }

    #[test]
    fn bad_topic_settings_are_named() {
        let all = config(
            "[topics]\npartitions = 0\nreplication_factor = 2\nmin_insync_replicas = 3\nretention = \"10m\"\nside_partitions = -1",
        )
        .unwrap_err();
        for needle in [
            "topics.partitions: must be from 1 to 10000 (got 0)",
            "topics.side_partitions: must be from 1 to 10000 (got -1)",
            "topics.min_insync_replicas: 3 is more than topics.replication_factor (2)",
            "topics.retention: must be at least 1h (got 10m)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let all = config("[topics]\nretention = \"a fortnight\"").unwrap_err();
        assert!(all.contains("retention"), "{all}");
        let all = config("[topics]\nreplicas = 3").unwrap_err();
        assert!(all.contains("replicas"), "{all}");
    }

    fn observed(spec: &TopicSpec) -> Observed {
        Observed {
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            configs: spec
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        }
    }

    #[test]
    fn a_topic_as_defined_has_no_finding_and_equal_values_in_other_spellings_match() {
        let raw = config("").unwrap().topic_definitions().remove(0);
        assert_eq!(diff(&raw, &observed(&raw)), []);
        let mut have = observed(&raw);
        have.configs
            .insert("cleanup.policy".into(), Some(" delete".into()));
        have.configs
            .insert("retention.ms".into(), Some("01209600000".into()));
        // Configs the definitions do not name are not compared.
        have.configs
            .insert("segment.bytes".into(), Some("1073741824".into()));
        assert_eq!(diff(&raw, &have), []);
    }

    #[test]
    fn every_difference_is_reported_and_an_unreported_config_is_not_a_match() {
        let raw = config("").unwrap().topic_definitions().remove(0);
        let mut have = observed(&raw);
        have.partitions = 3;
        have.replication_factor = 1;
        have.configs
            .insert("cleanup.policy".into(), Some("compact,delete".into()));
        have.configs.remove("retention.ms");
        have.configs.insert("min.insync.replicas".into(), None);
        let found = diff(&raw, &have);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "partitions: 3, wanted 12",
                "replication factor: 1, wanted 3",
                "cleanup.policy: compact,delete, wanted delete",
                "min.insync.replicas: not reported by the broker, wanted 2",
                "retention.ms: not reported by the broker, wanted 1209600000",
            ]
        );
        assert_eq!(found.iter().filter(|f| f.differs()).count(), 3);
    }

    #[test]
    fn missing_topics_are_creatable_unless_the_raw_topic_has_another_partition_count() {
        let specs = config("").unwrap().topic_definitions();
        let mut existing = BTreeMap::new();
        let standings = compare(&specs, &existing);
        assert!(
            standings.iter().all(|(_, s)| *s == Standing::Missing),
            "{standings:?}"
        );
        let mut raw = observed(&specs[0]);
        existing.insert(specs[0].name.clone(), raw.clone());
        let standings = compare(&specs, &existing);
        assert_eq!(standings[0].1, Standing::Exists(vec![]));
        assert!(standings[1..].iter().all(|(_, s)| *s == Standing::Missing));
        raw.partitions = 3;
        existing.insert(specs[0].name.clone(), raw);
        let standings = compare(&specs, &existing);
        assert_eq!(
            standings[0].1,
            Standing::Exists(vec![Finding::Partitions { have: 3, want: 12 }])
        );
        assert_eq!(standings[1].1, Standing::Missing, "quarantine");
        assert_eq!(standings[2].1, Standing::Missing, "dead letters");
        for (spec, s) in &standings[3..] {
            assert!(
                matches!(s, Standing::Blocked(why) if why.contains("has 3 partitions, not the 12 defined")),
                "{}: {s:?}",
                spec.name
            );
        }
    }

    #[test]
    fn a_replication_factor_above_the_broker_count_is_named() {
        let t = TopicsConfig::default();
        assert_eq!(
            cluster_problem(&t, 1).as_deref(),
            Some("topics.replication_factor: 3 is more than the 1 broker(s) the cluster has")
        );
        assert_eq!(cluster_problem(&t, 3), None);
    }

    #[test]
    fn the_strimzi_resources_carry_every_definition() {
        let specs = config("").unwrap().topic_definitions();
        let yaml = strimzi_yaml(&specs, "pipeline", "x.toml");
        assert_eq!(yaml.matches("kind: KafkaTopic").count(), 5, "{yaml}");
        assert!(
            yaml.contains(
                "  name: pg-state\n  labels:\n    strimzi.io/cluster: pipeline\nspec:\n  topicName: pg-state\n  partitions: 12\n  replicas: 3\n  config:\n    cleanup.policy: compact\n    min.insync.replicas: 2\n"
            ),
            "{yaml}"
        );
        assert!(
            yaml.contains("    retention.ms: 1209600000  # 14days\n"),
            "{yaml}"
        );
        assert_eq!(resource_name("Orders_v2"), "orders-v2");
    }
}
