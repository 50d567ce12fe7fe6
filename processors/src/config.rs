//! The processors' configuration: a TOML file plus `PROCESSORS_SECTION__KEY`
//! environment overrides, checked as a whole so that every problem is
//! reported at once, each naming its field.
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! group_id = "processors"
//! topic = "webhooks.raw"
//!
//! [processing]
//! gap_timeout = "30s"
//!
//! [dedupe]
//! path = "data/dedupe.redb"
//!
//! [sources.purple]
//! parser = "guest_wifi"
//!
//! [sinks.log]
//! kind = "log"
//!
//! [[routes]]
//! name = "everything"
//! sinks = ["log"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use plumbing::{describe_figment, valid_topic};
use serde::Deserialize;

use crate::pipeline::dedupe::DEFAULT_WINDOW;
use crate::pipeline::reorder::ReorderConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker, group and topics.
    pub kafka: KafkaConfig,
    /// Reorder, batching and retry settings.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// The de-duplication store.
    pub dedupe: DedupeSettings,
    /// Where `/metrics` is served.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// How each source's bodies are parsed, by source name. A source not
    /// listed is parsed as JSON with its type at `/type`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Sinks by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Routing rules; an event goes to the union of the sinks of every rule
    /// it matches.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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

/// Reorder, batching and retry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How long an event waits for a missing predecessor.
    #[serde(default = "default_gap_timeout", with = "humantime_serde")]
    pub gap_timeout: Duration,
    /// Most events waiting per ordering key.
    #[serde(default = "default_per_key")]
    pub max_buffered_per_key: usize,
    /// Most events waiting per partition, across keys.
    #[serde(default = "default_total")]
    pub max_buffered_total: usize,
    /// Most idle ordering keys remembered per partition.
    #[serde(default = "default_keys")]
    pub max_keys: usize,
    /// Most records handled in one batch (one sink call per sink).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Records buffered between the consumer and each partition's worker.
    #[serde(default = "default_channel")]
    pub channel_capacity: usize,
    /// On revocation or shutdown, how long a partition may take to finish
    /// its current batch before its offset is committed as it stands.
    #[serde(default = "default_revoke_timeout", with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// First pause before retrying a sink or side-topic write.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest pause between retries (backoff doubles up to it).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

/// The de-duplication store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    /// The redb file; one per instance (it is locked while open).
    pub path: PathBuf,
    /// How long an applied event id is remembered (providers retry for
    /// up to 72 h).
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// redb page cache, the store's memory bound.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
}

/// Where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address; port 0 picks a free port (printed at start).
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

/// Log output settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
}

pub use plumbing::LogFormat;

/// How one source's bodies are parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The parser.
    pub parser: ParserKind,
    /// Where a `json` source's event type is (default `/type`).
    #[serde(default)]
    pub event_type: Option<Locate>,
}

/// The parsers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParserKind {
    /// The guest-WiFi platform: strictly validated typed events.
    GuestWifi,
    /// Any JSON body: a typed envelope with the event type.
    Json,
}

/// Where a value is found: a JSON pointer into the body or a forwarded
/// request header.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Locate {
    /// RFC 6901 JSON pointer, e.g. `/type`.
    Pointer(String),
    /// Request header (ingest must forward it), e.g. `x-github-event`.
    Header(String),
}

/// One sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Logs each event as one line (for a first look, and for demos).
    Log,
    /// Accepts and discards (benchmarks).
    Null,
    /// The analytics store on PostgreSQL (`events`, `device_sessions`,
    /// `footfall_hourly`; see the README).
    Postgres {
        /// Connection URL without a password, e.g.
        /// `postgres://analytics@db:5432/analytics`.
        #[serde(default)]
        url: Option<String>,
        /// Environment variable holding the URL (use this when it has a
        /// password: secrets never live in the config text).
        #[serde(default)]
        url_env: Option<String>,
    },
    /// The analytics store (the same tables on either engine): PostgreSQL
    /// when `url` or `url_env` is given, else the embedded store in the
    /// file at `path`. So one config serves both: the local stack keeps
    /// `path` and switches to PostgreSQL by setting only `url_env`.
    Analytics {
        /// PostgreSQL connection URL without a password.
        #[serde(default)]
        url: Option<String>,
        /// Environment variable holding the PostgreSQL URL.
        #[serde(default)]
        url_env: Option<String>,
        /// The embedded store's file (SQLite), used when no URL is given.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// Appends each event as one JSON line to a file, once per (source,
    /// event id) even across processes on one host (tests, audits).
    Jsonl {
        /// The file.
        path: PathBuf,
    },
    /// Posts each event to a CRM (contact upsert, journey entry) through a
    /// JSON template, idempotently, with retries, a circuit breaker and a
    /// rate limit (see [`crate::sinks::crm`]).
    Crm(Box<crate::sinks::crm::CrmConfig>),
    /// Live occupancy, VIP arrivals and dwell times raising alerts to
    /// Slack, Alertmanager or the log, once across crashes (see
    /// [`crate::sinks::alerting`]).
    Alerts(Box<crate::sinks::alerting::AlertsConfig>),
}

/// One routing rule: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name, for metrics and logs.
    pub name: String,
    /// Sources matched (any of them); empty or absent: every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Event types matched (any of them); empty or absent: every type.
    #[serde(default)]
    pub types: Vec<String>,
    /// Payload fields that must equal the given JSON values, by pointer,
    /// e.g. `{ "/guest/vip" = true }`.
    #[serde(default, rename = "where")]
    pub where_: BTreeMap<String, serde_json::Value>,
    /// Whether late events (their slot in the sequence already passed) are
    /// routed too. Analytics wants them (flagged); live state does not.
    #[serde(default = "default_true")]
    pub include_late: bool,
    /// Sinks the matching events go to.
    pub sinks: Vec<String>,
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
const fn default_gap_timeout() -> Duration {
    ReorderConfig::DEFAULT_GAP_TIMEOUT
}
const fn default_per_key() -> usize {
    ReorderConfig::new().max_buffered_per_key
}
const fn default_total() -> usize {
    ReorderConfig::new().max_buffered_total
}
const fn default_keys() -> usize {
    ReorderConfig::new().max_keys
}
const fn default_batch() -> usize {
    500
}
const fn default_channel() -> usize {
    2_000
}
const fn default_revoke_timeout() -> Duration {
    Duration::from_secs(20)
}
const fn default_retry_initial() -> Duration {
    Duration::from_millis(200)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
const fn default_window() -> Duration {
    DEFAULT_WINDOW
}
const fn default_cache_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
const fn default_true() -> bool {
    true
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            gap_timeout: default_gap_timeout(),
            max_buffered_per_key: default_per_key(),
            max_buffered_total: default_total(),
            max_keys: default_keys(),
            batch_max: default_batch(),
            channel_capacity: default_channel(),
            revoke_timeout: default_revoke_timeout(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

impl ProcessingConfig {
    /// The reorder limits.
    pub fn reorder(&self) -> ReorderConfig {
        ReorderConfig {
            gap_timeout: self.gap_timeout,
            max_buffered_per_key: self.max_buffered_per_key,
            max_buffered_total: self.max_buffered_total,
            max_keys: self.max_keys,
        }
    }
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

/// Every problem found in a configuration, each naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The file that was loaded.
    pub path: PathBuf,
    /// One line per problem, naming the field.
    pub problems: Vec<String>,
}

impl Config {
    /// Loads the file, applies `PROCESSORS_SECTION__KEY` environment
    /// overrides and checks the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        if !path.is_file() {
            return Err(fail(vec!["file not found or not a regular file".into()]));
        }
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(
            Env::prefixed("PROCESSORS_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        Self::checked(figment, fail)
    }

    /// Parses TOML text with no environment layer (tests, examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: PathBuf::from("<inline>"),
            problems,
        };
        Self::checked(Figment::new().merge(Toml::string(text)), fail)
    }

    fn checked(
        figment: Figment,
        fail: impl Fn(Vec<String>) -> ConfigError,
    ) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| fail(e.into_iter().map(|e| describe_figment(&e)).collect()))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Cross-field checks; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let k = &self.kafka;
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
            if RESERVED_KAFKA_OPTIONS.contains(&key.as_str()) {
                p.push(format!(
                    "kafka.options.{key}: set by the processors to keep their guarantees; remove it"
                ));
            }
        }
        let s = &self.processing;
        if s.gap_timeout.is_zero() || s.gap_timeout > Duration::from_secs(3600) {
            p.push("processing.gap_timeout: must be between 1ms and 1h".into());
        }
        for (field, v) in [
            ("max_buffered_per_key", s.max_buffered_per_key),
            ("max_buffered_total", s.max_buffered_total),
            ("max_keys", s.max_keys),
            ("batch_max", s.batch_max),
            ("channel_capacity", s.channel_capacity),
        ] {
            if v == 0 {
                p.push(format!("processing.{field}: must be at least 1"));
            }
        }
        if s.retry_initial.is_zero() || s.retry_initial > s.retry_max {
            p.push("processing.retry_initial: must be above 0 and at most retry_max".into());
        }
        if self.dedupe.window < Duration::from_secs(60) {
            p.push("dedupe.window: must be at least 1m (providers retry for up to 72h)".into());
        }
        if self.dedupe.path.as_os_str().is_empty() {
            p.push("dedupe.path: must not be empty".into());
        }
        for (name, source) in &self.sources {
            if let Some(Locate::Pointer(ptr)) = &source.event_type
                && !ptr.starts_with('/')
            {
                p.push(format!(
                    "sources.{name}.event_type.pointer: {ptr:?} must start with '/'"
                ));
            }
            if source.parser == ParserKind::GuestWifi && source.event_type.is_some() {
                p.push(format!(
                    "sources.{name}.event_type: the guest_wifi parser reads /type itself"
                ));
            }
        }
        for (name, sink) in &self.sinks {
            if let SinkConfig::Crm(crm) = sink {
                p.extend(crm.problems(&format!("sinks.{name}")));
            }
            match sink {
                SinkConfig::Alerts(alerts) => {
                    p.extend(alerts.problems(&format!("sinks.{name}")));
                }
                SinkConfig::Postgres { url, url_env } => {
                    p.extend(postgres_url_problems(name, url, url_env));
                }
                SinkConfig::Analytics { url, url_env, path } => {
                    if url.is_some() || url_env.is_some() {
                        p.extend(postgres_url_problems(name, url, url_env));
                    } else if path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                        p.push(format!(
                            "sinks.{name}: give path (the embedded store's file) or url/url_env (PostgreSQL)"
                        ));
                    }
                }
                _ => {}
            }
        }
        if self.routes.is_empty() {
            p.push("routes: at least one route is needed, or every event is dropped".into());
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}] ({})", route.name);
            if route.sinks.is_empty() {
                p.push(format!("{at}.sinks: must name at least one sink"));
            }
            for sink in &route.sinks {
                if !self.sinks.contains_key(sink) {
                    p.push(format!("{at}.sinks: no sink named {sink:?} in [sinks]"));
                }
            }
            for ptr in route.where_.keys() {
                if !ptr.starts_with('/') {
                    p.push(format!(
                        "{at}.where: {ptr:?} is not a JSON pointer (must start with '/')"
                    ));
                }
            }
        }
        p
    }
}

/// What is wrong with a PostgreSQL sink's `url` / `url_env`.
fn postgres_url_problems(
    name: &str,
    url: &Option<String>,
    url_env: &Option<String>,
) -> Vec<String> {
    let mut p = Vec::new();
    match (url, url_env) {
        (Some(_), Some(_)) | (None, None) => {
            p.push(format!("sinks.{name}: give exactly one of url and url_env"))
        }
        (Some(u), None) if url_has_password(u) => p.push(format!(
            "sinks.{name}.url: has a password; put the URL in an environment variable and name it in url_env"
        )),
        (Some(u), None) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
            p.push(format!("sinks.{name}.url: must start with postgres://"))
        }
        (None, Some(var)) if std::env::var_os(var).is_none() => p.push(format!(
            "sinks.{name}.url_env: environment variable {var} is not set"
        )),
        _ => {}
    }
    p
}

/// Whether a URL's user-info part carries a password (`user:pw@`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"

        [dedupe]
        path = "/tmp/d.redb"

        [sources.purple]
        parser = "guest_wifi"

        [sources.github]
        parser = "json"
        event_type = { header = "x-github-event" }

        [sinks.log]
        kind = "log"

        [sinks.audit]
        kind = "jsonl"
        path = "/tmp/audit.jsonl"

        [[routes]]
        name = "all"
        sinks = ["log"]

        [[routes]]
        name = "vip"
        sources = ["purple"]
        types = ["guest_connects"]
        where = { "/guest/vip" = true }
        include_late = false
        sinks = ["audit"]
    "#;

    #[test]
    fn loads_a_good_config_with_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.kafka.topic, "webhooks.raw");
        assert_eq!(c.kafka.group_id, "processors");
        assert_eq!(c.processing.gap_timeout, Duration::from_secs(30));
        assert_eq!(c.dedupe.window, Duration::from_secs(72 * 3600));
        assert_eq!(c.routes.len(), 2);
        assert!(!c.routes[1].include_late);
        assert_eq!(
            c.sources["github"].event_type,
            Some(Locate::Header("x-github-event".into()))
        );
    }

    #[test]
    fn reports_every_problem_at_once_naming_the_field() {
        let text = GOOD
            .replace("sinks = [\"audit\"]", "sinks = [\"nowhere\"]")
            .replace("\"/guest/vip\"", "\"guest/vip\"")
            .replace(
                "brokers = \"127.0.0.1:9092\"",
                "brokers = \"127.0.0.1:9092\"\nquarantine_topic = \"bad topic\"\noptions = { \"enable.auto.commit\" = \"true\" }",
            )
            .replace("[sources.purple]", "[processing]\nbatch_max = 0\n[sources.purple]");
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for needle in [
            "routes[1] (vip).sinks: no sink named \"nowhere\"",
            "routes[1] (vip).where: \"guest/vip\"",
            "kafka.quarantine_topic",
            "kafka.options.enable.auto.commit",
            "processing.batch_max",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_and_kinds_are_named() {
        let all = Config::from_toml(&GOOD.replace("kind = \"log\"", "kind = \"fax\""))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(all.contains("fax"), "{all}");
        let all = Config::from_toml(&GOOD.replace("include_late", "include_lat"))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(all.contains("include_lat"), "{all}");
    }

    #[test]
    fn postgres_sinks_keep_passwords_out_of_the_config() {
        let with = |sink: &str| {
            GOOD.replace(
                "[sinks.log]\n        kind = \"log\"",
                &format!("[sinks.log]\n        kind = \"log\"\n        [sinks.db]\n        {sink}"),
            )
        };
        let ok = with("kind = \"postgres\"\nurl = \"postgres://analytics@db:5432/a\"");
        assert!(Config::from_toml(&ok).is_ok());
        let pw = with("kind = \"postgres\"\nurl = \"postgres://analytics:hunter2@db/a\"");
        let all = Config::from_toml(&pw).unwrap_err().problems.join("\n");
        assert!(all.contains("sinks.db.url: has a password"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
        let unset = with("kind = \"postgres\"\nurl_env = \"NO_SUCH_VARIABLE_FOR_TESTS\"");
        let all = Config::from_toml(&unset).unwrap_err().problems.join("\n");
        assert!(
            all.contains("NO_SUCH_VARIABLE_FOR_TESTS is not set"),
            "{all}"
        );
    }

    #[test]
    fn the_analytics_sink_is_embedded_unless_a_url_is_given() {
        let with = |sink: &str| {
            GOOD.replace(
                "[sinks.log]\n        kind = \"log\"",
                &format!("[sinks.log]\n        kind = \"log\"\n        [sinks.db]\n        {sink}"),
            )
        };
        let embedded = with("kind = \"analytics\"\npath = \"/var/lib/p/analytics.db\"");
        assert!(Config::from_toml(&embedded).is_ok());
        let pg = with("kind = \"analytics\"\npath = \"a.db\"\nurl = \"postgres://a@db/a\"");
        assert!(Config::from_toml(&pg).is_ok());
        let neither = Config::from_toml(&with("kind = \"analytics\""))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(
            neither.contains("sinks.db: give path (the embedded store's file) or url/url_env"),
            "{neither}"
        );
        let pw = with("kind = \"analytics\"\nurl = \"postgres://a:hunter2@db/a\"");
        let all = Config::from_toml(&pw).unwrap_err().problems.join("\n");
        assert!(all.contains("sinks.db.url: has a password"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
    }

    #[test]
    fn alerting_sinks_are_checked_with_the_rest() {
        let text = GOOD.replace(
            "[sinks.log]\n        kind = \"log\"",
            "[sinks.log]\n        kind = \"log\"\n        [sinks.al]\n        kind = \"alerts\"\n        path = \"/tmp/al.sqlite\"\n        rules = [{ kind = \"zone_occupancy\", threshold = 0 }]\n        receivers = [{ kind = \"log\" }]",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(
            all.contains("sinks.al.rules[0] (zone_occupancy).threshold: must be at least 1"),
            "{all}"
        );
        let ok = text.replace("threshold = 0", "threshold = 40");
        assert!(Config::from_toml(&ok).is_ok());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/p.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/p.toml: "), "{e}");
    }
}
