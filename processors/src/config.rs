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

use serde::Deserialize;

use crate::event::SourceConfig;
use crate::kafka::KafkaConfig;
use crate::pipeline::ProcessingConfig;
use crate::pipeline::dedupe::DedupeSettings;
use crate::pipeline::route::RouteConfig;
use crate::sinks::SinkSection;
use crate::state::StateConfig;
use crate::topics::{TopicNames, TopicSpec, TopicsConfig};

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
    /// Where partition state is kept: the changelog topic and the local
    /// cache.
    #[serde(default)]
    pub state: StateConfig,
    /// Partitions, replication and retention of every topic
    /// (`processors topics apply|check|strimzi`).
    #[serde(default)]
    pub topics: TopicsConfig,
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
    pub sinks: BTreeMap<String, SinkSection>,
    /// Routing rules; an event goes to the union of the sinks of every rule
    /// it matches.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

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
        Self::checked(plumbing::load_config(path, "PROCESSORS_"), path)
    }

    /// Parses TOML text with no environment layer (tests, examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::checked(plumbing::parse_config(text), Path::new("<inline>"))
    }

    fn checked(loaded: Result<Config, Vec<String>>, path: &Path) -> Result<Config, ConfigError> {
        plumbing::checked(loaded, Config::problems).map_err(|problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Loads the file and environment overrides as [`Config::load`] does,
    /// checking only what the topic definitions use (`kafka`, `dedupe`,
    /// `state`, `topics`): `processors topics` needs no sink's secrets.
    pub fn load_for_topics(path: &Path) -> Result<Config, ConfigError> {
        plumbing::checked(
            plumbing::load_config(path, "PROCESSORS_"),
            Config::topic_problems,
        )
        .map_err(|problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// What `check-config` says beside "ok": each source's `sample` and
    /// what it maps to (a sample that does not map is a problem instead).
    pub fn notes(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|(name, s)| s.check_sample(name)?.ok())
            .collect()
    }

    /// Cross-field checks; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.topic_problems();
        p.extend(self.processing.problems());
        for (name, source) in &self.sources {
            p.extend(source.problems(&format!("sources.{name}")));
        }
        for (name, sink) in &self.sinks {
            p.extend(sink.problems(&format!("sinks.{name}")));
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
            p.extend(route.problems(&at, self.processing.gap_timeout));
        }
        p
    }

    /// Every topic this configuration uses, as it wants them
    /// (`processors topics`).
    pub fn topic_definitions(&self) -> Vec<TopicSpec> {
        let group = &self.kafka.group_id;
        let names = TopicNames {
            raw: self.kafka.topic.clone(),
            quarantine: self.kafka.quarantine_topic.clone(),
            dlq: self.kafka.dlq_topic.clone(),
            changelog: self.state.changelog_topic(group),
            ledger: self.state.ledger_topic(group),
            reconcile: self.kafka.reconcile_topic.clone(),
        };
        crate::topics::definitions(&names, self.dedupe.window, &self.topics)
    }

    /// The checks of what names and shapes the topics: `kafka`, `dedupe`
    /// (the ledger's retention), `state` and `topics`.
    pub fn topic_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        p.extend(self.kafka.problems());
        p.extend(self.dedupe.problems());
        p.extend(self.state.problems());
        p.extend(self.topics.problems());
        for (field, topic) in [
            (
                "changelog_topic",
                self.state.changelog_topic(&self.kafka.group_id),
            ),
            (
                "ledger_topic",
                self.state.ledger_topic(&self.kafka.group_id),
            ),
        ] {
            if [
                &self.kafka.topic,
                &self.kafka.quarantine_topic,
                &self.kafka.dlq_topic,
            ]
            .contains(&&topic)
            {
                p.push(format!(
                    "state.{field}: {topic:?} must differ from the raw, quarantine and dead-letter topics"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::Locate;

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
        // Static membership under the host name unless set; 45 s sessions.
        assert_eq!(c.kafka.instance_id, None);
        assert_eq!(c.kafka.session_timeout, Duration::from_secs(45));
        assert_eq!(c.processing.gap_timeout, Duration::from_secs(30));
        assert_eq!(c.processing.max_sequence_jump, 10_000);
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
            .replace(
                "[sources.purple]",
                "[processing]\nbatch_max = 0\nmax_sequence_jump = 999\n[sources.purple]",
            );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for needle in [
            "routes[1] (vip).sinks: no sink named \"nowhere\"",
            "routes[1] (vip).where: \"guest/vip\"",
            "kafka.quarantine_topic",
            "kafka.options.enable.auto.commit",
            "processing.batch_max",
            "processing.max_sequence_jump: must be at least max_buffered_per_key (1000)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn state_topics_and_cache_are_checked_naming_the_field() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(
            c.state.changelog_topic(&c.kafka.group_id),
            "processors-state"
        );
        assert_eq!(c.state.ledger_topic(&c.kafka.group_id), "processors-ledger");
        assert_eq!(
            c.state.cache_path(std::path::Path::new("data/dedupe.redb")),
            std::path::PathBuf::from("data/dedupe.state.redb")
        );
        let text = GOOD.replace(
            "[sources.purple]",
            "[state]\nchangelog_topic = \"bad topic\"\nledger_topic = \"webhooks.raw\"\ncache_path = \"\"\n[sources.purple]",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for needle in [
            "state.changelog_topic: \"bad topic\" is not a valid topic name",
            "state.ledger_topic: \"webhooks.raw\" must differ from the raw, quarantine and dead-letter topics",
            "state.cache_path: must not be empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let text = GOOD.replace(
            "[sources.purple]",
            "[state]\nchangelog = \"x\"\n[sources.purple]",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(all.contains("changelog"), "{all}");
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
    fn a_routes_max_event_age_is_read_in_human_units_and_checked() {
        let with = |age: &str| {
            GOOD.replace(
                "include_late = false",
                &format!("include_late = false\n        max_event_age = {age}"),
            )
        };
        let c = Config::from_toml(&with("\"15m\"")).unwrap_or_else(|e| panic!("{e}"));
        // No limit unless set; set: in human units.
        assert!(
            format!("{:?}", c.routes[0]).contains("max_event_age: None"),
            "{:?}",
            c.routes[0]
        );
        assert!(
            format!("{:?}", c.routes[1]).contains("max_event_age: Some(900s)"),
            "{:?}",
            c.routes[1]
        );
        let problems = |age: &str| {
            Config::from_toml(&with(age))
                .unwrap_err()
                .problems
                .join("\n")
        };
        let all = problems("\"0s\"");
        assert!(
            all.contains("routes[1] (vip).max_event_age: must be at least 1s (got 0s)"),
            "{all}"
        );
        // Not longer than the gap timeout: every event held back for a
        // missing predecessor would skip the route.
        let all = problems("\"20s\"");
        assert!(
            all.contains(
                "routes[1] (vip).max_event_age: 20s is not longer than processing.gap_timeout (30s)"
            ),
            "{all}"
        );
        let all = problems("\"a fortnight\"");
        assert!(all.contains("max_event_age"), "{all}");
    }

    #[test]
    fn the_topics_load_needs_no_sink_secret_but_checks_what_shapes_the_topics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let with_secret = GOOD.replace(
            "[sinks.log]",
            "[sinks.db]\nkind = \"postgres\"\nurl_env = \"NO_SUCH_VARIABLE_FOR_TOPICS_TESTS\"\n[sinks.log]",
        );
        std::fs::write(&path, &with_secret).unwrap();
        let all = Config::load(&path).unwrap_err().problems.join("\n");
        assert!(
            all.contains("NO_SUCH_VARIABLE_FOR_TOPICS_TESTS is not set"),
            "{all}"
        );
        let c = Config::load_for_topics(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.topic_definitions().len(), 5);
        std::fs::write(
            &path,
            with_secret.replace("[dedupe]", "[topics]\nreplication_factor = 0\n[dedupe]"),
        )
        .unwrap();
        let all = Config::load_for_topics(&path)
            .unwrap_err()
            .problems
            .join("\n");
        assert!(
            all.contains("topics.replication_factor: must be at least 1 (got 0)"),
            "{all}"
        );
        assert!(!all.contains("NO_SUCH_VARIABLE"), "{all}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/p.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/p.toml: "), "{e}");
    }

    #[test]
    fn kafka_security_problems_are_reported_with_the_field() {
        let text = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\noptions = { \"security.protocol\" = \"ssl\" }\nsecurity = { protocol = \"sasl_plaintext\", sasl = { mechanism = \"PLAIN\", username = \"p\", password_env = \"PROCESSORS_TEST_UNSET_PW\" } }",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for needle in [
            "kafka.options.security.protocol: TLS and SASL are set with [kafka.security]",
            "kafka.security.sasl.password_env: the environment variable PROCESSORS_TEST_UNSET_PW is not set",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }
}
