//! Sinks: where routed events go.
//!
//! - [`contract`]: the [`Sink`] trait, [`Outcome`] and [`SinkError`], the
//!   whole surface the pipeline sees;
//! - [`basic`]: the log, null and in-memory sinks;
//! - [`jsonl`]: one JSON line per event in a file, once per event;
//! - [`analytics`]: the analytics store, on PostgreSQL or embedded (SQLite);
//! - [`crm`]: templated JSON to a CRM, idempotent, with retries, a circuit
//!   breaker and a rate limit;
//! - [`alerting`]: live occupancy, VIP arrivals and dwell, alerts to Slack,
//!   Alertmanager and the log through an outbox;
//! - [`util`]: what more than one sink needs (`Retry-After`, file locks).
//!
//! This module owns [`SinkConfig`], each sink's `[sinks.NAME]` section,
//! whose checks delegate to the sink's own config, and [`build`], which
//! turns the configured sinks into [`Sink`]s. Adding a sink touches this
//! file and the sink's own folder, nothing else.

pub mod alerting;
pub mod analytics;
pub mod basic;
pub mod contract;
pub mod crm;
pub mod jsonl;
pub mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use contract::{
    Accepted, Applied, BoxFuture, KeyedChange, Occupancy, Outcome, PartitionSink, Retained, Sink,
    SinkError,
};

use crate::metrics::Metrics;
use crate::minimise::{self, Minimise};

/// One `[sinks.NAME]` section: the sink, and the guests' personal fields
/// it may receive (see [`crate::minimise`]).
#[derive(Debug, Clone)]
pub struct SinkSection {
    /// The sink (`kind` and its settings).
    pub sink: SinkConfig,
    /// `fields = [...]`: the `guest.*` and `device.*` members this sink
    /// may receive; unset, its kind's default.
    pub fields: Option<Vec<String>>,
}

impl std::ops::Deref for SinkSection {
    type Target = SinkConfig;

    fn deref(&self) -> &SinkConfig {
        &self.sink
    }
}

impl From<SinkConfig> for SinkSection {
    fn from(sink: SinkConfig) -> SinkSection {
        SinkSection { sink, fields: None }
    }
}

/// `fields` is taken out first, and the rest is the sink's own section,
/// which still refuses unknown keys.
impl<'de> Deserialize<'de> for SinkSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SinkSection, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let fields = match table.remove("fields") {
            None => None,
            Some(v) => Some(
                Vec::<String>::deserialize(v)
                    .map_err(|e| D::Error::custom(format!("fields: {e}")))?,
            ),
        };
        let sink = SinkConfig::deserialize(serde_json::Value::Object(table))
            .map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(SinkSection { sink, fields })
    }
}

impl SinkSection {
    /// Every problem of the section, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = self.sink.problems(at);
        if let Some(fields) = &self.fields {
            p.extend(minimise::problems(&format!("{at}.fields"), fields));
        }
        // A CRM template or required path naming a personal field this sink
        // may not receive would send it empty: say so now.
        if let (SinkConfig::Crm(crm), Some(_)) = (&self.sink, &self.fields)
            && let Ok(template) = crm.load_template()
        {
            let m = self.minimise();
            let named = template
                .paths()
                .into_iter()
                .map(|path| ("template", path))
                .chain(crm.required.iter().map(|r| ("required", r.clone())));
            for (field, path) in named {
                if let Some(personal) = personal_field(&path)
                    && !m.allows(&personal)
                {
                    p.push(format!(
                        "{at}.{field}: {path} is {personal}, which {at}.fields does not allow; add it to fields or take it out"
                    ));
                }
            }
        }
        p
    }

    /// What this sink may receive of the guests' personal data: its
    /// `fields`, else its kind's default.
    pub fn minimise(&self) -> Minimise {
        match (&self.fields, self.sink.default_fields()) {
            (Some(f), _) => Minimise::only(f),
            (None, Some(f)) => Minimise::only(f),
            (None, None) => Minimise::everything(),
        }
    }
}

/// The personal field a CRM template path reads, if any: `guest.email`
/// and `body.guest.email` read `guest.email`, `device_id` and
/// `body.device.id` read `device.id`; a whole `guest` or `device` object is
/// read as its id.
fn personal_field(path: &str) -> Option<String> {
    let path = path.strip_prefix("body.").unwrap_or(path);
    if path == "device_id" {
        return Some("device.id".into());
    }
    let mut parts = path.splitn(3, '.');
    let object = parts.next()?;
    if !matches!(object, "guest" | "device") {
        return None;
    }
    let member = parts.next().unwrap_or("id");
    Some(format!("{object}.{member}"))
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
        /// How long rows of `events` and `device_sessions` are kept, by
        /// the time they name (`occurred_at`, else `received_at`), e.g.
        /// `"400d"`. Unset: no limit. `footfall_hourly` (counts per venue
        /// and hour, no personal data) is kept.
        #[serde(default, with = "humantime_serde")]
        retention: Option<Duration>,
        /// Time between two retention sweeps (default 1h).
        #[serde(
            default = "analytics::default_sweep_interval",
            with = "humantime_serde"
        )]
        retention_interval: Duration,
        /// Rows removed per delete statement (default 1000).
        #[serde(default = "analytics::default_sweep_batch")]
        retention_batch: u32,
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
        /// How long rows of `events` and `device_sessions` are kept, by
        /// the time they name (`occurred_at`, else `received_at`), e.g.
        /// `"400d"`. Unset: no limit. `footfall_hourly` (counts per venue
        /// and hour, no personal data) is kept.
        #[serde(default, with = "humantime_serde")]
        retention: Option<Duration>,
        /// Time between two retention sweeps (default 1h).
        #[serde(
            default = "analytics::default_sweep_interval",
            with = "humantime_serde"
        )]
        retention_interval: Duration,
        /// Rows removed per delete statement (default 1000).
        #[serde(default = "analytics::default_sweep_batch")]
        retention_batch: u32,
    },
    /// Appends each event as one JSON line to a file, once per (source,
    /// event id) even across processes on one host (tests, audits).
    Jsonl {
        /// The file.
        path: PathBuf,
        /// How long lines are kept, by their event's time (`occurred_at`,
        /// else `received_at`), e.g. `"30d"`. Unset: no limit.
        #[serde(default, with = "humantime_serde")]
        retention: Option<Duration>,
        /// Time between two sweeps, which rewrite the file without the
        /// lines past the retention (default 1h).
        #[serde(default = "jsonl::default_sweep_interval", with = "humantime_serde")]
        retention_interval: Duration,
    },
    /// Posts each event to a CRM (contact upsert, journey entry) through a
    /// JSON template, idempotently, with retries, a circuit breaker and a
    /// rate limit (see [`crate::sinks::crm`]).
    Crm(Box<crm::CrmConfig>),
    /// Live occupancy, VIP arrivals and dwell times raising alerts to
    /// Slack, Alertmanager or the log, once across crashes (see
    /// [`crate::sinks::alerting`]).
    Alerts(Box<alerting::AlertsConfig>),
}

impl SinkConfig {
    /// The `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Log => "log",
            SinkConfig::Null => "null",
            SinkConfig::Postgres { .. } => "postgres",
            SinkConfig::Analytics { .. } => "analytics",
            SinkConfig::Jsonl { .. } => "jsonl",
            SinkConfig::Crm(_) => "crm",
            SinkConfig::Alerts(_) => "alerts",
        }
    }

    /// What this sink does outside the pipeline, which offering an event
    /// again would repeat (a replay leaves such sinks out unless named);
    /// `None` for a sink whose contents Kafka rebuilds (it is idempotent by
    /// source and event id, or writes only to the log).
    pub fn side_effect(&self) -> Option<&'static str> {
        match self {
            SinkConfig::Crm(_) => Some("requests to the CRM, which may e-mail guests"),
            SinkConfig::Alerts(_) => Some("live alert state and notifications"),
            SinkConfig::Log
            | SinkConfig::Null
            | SinkConfig::Postgres { .. }
            | SinkConfig::Analytics { .. }
            | SinkConfig::Jsonl { .. } => None,
        }
    }

    /// The guests' personal fields a sink of this kind gets when its
    /// section sets no `fields` (`None`: everything). Alerting gets enough
    /// to track presence and VIPs and nothing to contact or name anyone
    /// with: Slack and Alertmanager name a VIP by guest id.
    pub fn default_fields(&self) -> Option<&'static [&'static str]> {
        match self {
            SinkConfig::Alerts(_) => Some(&["guest.id", "guest.vip", "device.id"]),
            _ => None,
        }
    }

    /// Every problem of this sink's settings, each naming its field under
    /// `at` (`sinks.NAME`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        match self {
            SinkConfig::Crm(crm) => crm.problems(at),
            SinkConfig::Alerts(alerts) => alerts.problems(at),
            SinkConfig::Postgres { url, url_env, .. } => {
                let mut p = analytics::url_problems(at, url, url_env);
                p.extend(self.analytics_retention_problems(at));
                p
            }
            SinkConfig::Analytics {
                url, url_env, path, ..
            } => {
                let mut p = if url.is_some() || url_env.is_some() {
                    analytics::url_problems(at, url, url_env)
                } else if path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                    vec![format!(
                        "{at}: give path (the embedded store's file) or url/url_env (PostgreSQL)"
                    )]
                } else {
                    Vec::new()
                };
                p.extend(self.analytics_retention_problems(at));
                p
            }
            SinkConfig::Jsonl {
                retention,
                retention_interval,
                ..
            } => jsonl::retention_problems(at, *retention, *retention_interval),
            SinkConfig::Log | SinkConfig::Null => Vec::new(),
        }
    }
}

impl SinkConfig {
    /// An analytics sink's retention settings, as they were written (the
    /// default interval and batch when unset); `None` for other kinds.
    pub fn analytics_retention(&self) -> Option<analytics::RetentionSettings> {
        match self {
            SinkConfig::Postgres {
                retention,
                retention_interval,
                retention_batch,
                ..
            }
            | SinkConfig::Analytics {
                retention,
                retention_interval,
                retention_batch,
                ..
            } => Some(analytics::RetentionSettings {
                keep: *retention,
                interval: *retention_interval,
                batch: *retention_batch,
            }),
            _ => None,
        }
    }

    fn analytics_retention_problems(&self, at: &str) -> Vec<String> {
        self.analytics_retention()
            .map(|r| r.problems(at))
            .unwrap_or_default()
    }
}

/// Builds every configured sink, in name order; the first that cannot be
/// built stops the start (its error names the field).
pub async fn build(
    sinks: &BTreeMap<String, SinkSection>,
    metrics: &Metrics,
) -> Result<Vec<Arc<dyn Sink>>, SinkError> {
    let mut built: Vec<Arc<dyn Sink>> = Vec::new();
    for (name, s) in sinks {
        let sink: Arc<dyn Sink> = match &s.sink {
            SinkConfig::Log => Arc::new(basic::LogSink::new(name)),
            SinkConfig::Null => Arc::new(basic::NullSink::new(name)),
            SinkConfig::Postgres { url, url_env, .. } => Arc::new(
                analytics::connect_postgres(name, url.as_deref(), url_env.as_deref())
                    .await?
                    .with_retention(s.sink.analytics_retention(), metrics),
            ),
            SinkConfig::Analytics {
                url, url_env, path, ..
            } => match (url, url_env, path) {
                (None, None, Some(path)) => {
                    tracing::info!(sink = %name, path = %path.display(), "analytics: embedded store");
                    Arc::new(
                        analytics::SqliteSink::open(name, path)
                            .await?
                            .with_retention(s.sink.analytics_retention(), metrics),
                    )
                }
                _ => {
                    tracing::info!(sink = %name, "analytics: PostgreSQL");
                    Arc::new(
                        analytics::connect_postgres(name, url.as_deref(), url_env.as_deref())
                            .await?
                            .with_retention(s.sink.analytics_retention(), metrics),
                    )
                }
            },
            SinkConfig::Jsonl {
                path,
                retention,
                retention_interval,
            } => Arc::new(jsonl::JsonlSink::open(name, path)?.with_retention(
                *retention,
                *retention_interval,
                metrics,
            )),
            SinkConfig::Crm(crm) => Arc::new(crm::CrmSink::new(name, crm, metrics)?),
            SinkConfig::Alerts(alerts) => {
                Arc::new(alerting::AlertsSink::start(name, alerts, metrics)?)
            }
        };
        built.push(sink);
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crm_template_naming_a_field_its_sink_may_not_receive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("t.json");
        std::fs::write(
            &template,
            r#"{"email": "{{guest.email}}", "name": "{{ body.guest.first_name }}", "id": "{{guest.id}}", "dev": "{{device_id}}", "zone": "{{zone}}"}"#,
        )
        .unwrap();
        let section = |fields: &str| -> SinkSection {
            toml::from_str(&format!(
                "kind = \"crm\"\nurl = \"https://crm.example.com/x\"\ntemplate = {:?}\nrequired = [\"guest.email\"]\n{fields}",
                template.display()
            ))
            .unwrap()
        };
        assert_eq!(
            section("").problems("sinks.crm"),
            Vec::<String>::new(),
            "no fields: all"
        );
        let all =
            section(r#"fields = ["guest.id", "guest.email", "guest.first_name", "device.id"]"#);
        assert_eq!(all.problems("sinks.crm"), Vec::<String>::new());
        let p = section(r#"fields = ["guest.id"]"#).problems("sinks.crm");
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p.iter().any(|l| l.starts_with("sinks.crm.template: guest.email is guest.email, which sinks.crm.fields does not allow")), "{p:?}");
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("sinks.crm.template: body.guest.first_name is guest.first_name")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("sinks.crm.template: device_id is device.id")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("sinks.crm.required: guest.email")),
            "{p:?}"
        );
    }

    #[test]
    fn alerting_gets_no_email_and_no_name_by_default() {
        let section = |text: &str| -> SinkSection { toml::from_str(text).unwrap() };
        let alerts = section("kind = \"alerts\"\npath = \"a.sqlite\"");
        let m = alerts.minimise();
        assert!(!m.allows("guest.email") && !m.allows("guest.first_name"));
        assert!(m.allows("guest.vip") && m.allows("device.id"));
        assert_eq!(section("kind = \"log\"").minimise(), Minimise::everything());
        let named = section(
            "kind = \"alerts\"\npath = \"a.sqlite\"\nfields = [\"guest.id\", \"guest.first_name\"]",
        );
        assert!(named.minimise().allows("guest.first_name"));
        assert!(
            !named.minimise().allows("guest.vip"),
            "fields replace the default"
        );
    }

    #[test]
    fn check_config_reads_an_analytics_retention_and_names_a_bad_one() {
        let text = |extra: &str| {
            format!(
                r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
topic = "t"
[dedupe]
path = "d.redb"
[sinks.db]
kind = "analytics"
path = "a.sqlite"
{extra}
[[routes]]
name = "r"
sinks = ["db"]
"#
            )
        };
        let ok = crate::config::Config::from_toml(&text(
            "retention = \"400d\"\nretention_interval = \"10m\"",
        ))
        .unwrap();
        assert_eq!(
            ok.sinks["db"].analytics_retention(),
            Some(analytics::RetentionSettings {
                keep: Some(Duration::from_secs(400 * 86_400)),
                interval: Duration::from_secs(600),
                batch: 1000,
            })
        );
        let none = crate::config::Config::from_toml(&text("")).unwrap();
        assert_eq!(none.sinks["db"].analytics_retention().unwrap().keep, None);
        let err = crate::config::Config::from_toml(&text("retention = \"5m\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.db.retention: must be at least 1h (got 5m)"),
            "{err}"
        );
        let err = crate::config::Config::from_toml(&text("retention_interval = \"5m\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.db.retention_interval: set without retention"),
            "{err}"
        );
        let err = crate::config::Config::from_toml(&text("retention = \"a year\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.db") && err.contains("expected a duration"),
            "{err}"
        );
    }

    #[test]
    fn check_config_names_a_bad_fields_entry_and_its_sink() {
        let text = |fields: &str| {
            format!(
                r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
topic = "t"
[dedupe]
path = "d.redb"
[sinks.db]
kind = "analytics"
path = "a.sqlite"
{fields}
[[routes]]
name = "r"
sinks = ["db"]
"#
            )
        };
        let ok = crate::config::Config::from_toml(&text(r#"fields = ["guest.id", "device.id"]"#))
            .unwrap();
        assert!(!ok.sinks["db"].minimise().allows("guest.email"));
        let err = crate::config::Config::from_toml(&text(r#"fields = ["guest.id", "email"]"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.db.fields: \"email\""), "{err}");
        let err = crate::config::Config::from_toml(&text("fields = \"guest.id\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fields"), "{err}");
    }
}
