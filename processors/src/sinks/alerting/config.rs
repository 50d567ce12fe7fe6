//! An alerting sink's settings (`[sinks.NAME]` with `kind = "alerts"`): the
//! rules, the receivers, their defaults and their checks
//! ([`AlertsConfig::problems`]), which the processors' config delegates to.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::event::GUEST_WIFI_TYPES;

/// An alerting sink's settings (`[sinks.NAME]` with `kind = "alerts"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The SQLite state file (applied ids, devices, alerts, outbox).
    pub path: PathBuf,
    /// The rules.
    #[serde(default, deserialize_with = "rules_each")]
    pub rules: Vec<RuleConfig>,
    /// Where notifications go.
    #[serde(default, deserialize_with = "receivers_each")]
    pub receivers: Vec<ReceiverConfig>,
    /// Events that happened longer ago than this (wall clock when applied)
    /// do not touch live state: replays and old backlogs page nobody.
    #[serde(default = "default_max_event_age", with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Events dated more than this past their `received_at` (or past the
    /// wall clock when applied) do not touch live state (counted as
    /// `future`), and a venue's clock never runs past the wall clock plus
    /// this: one event dated years ahead would otherwise expire every
    /// session of its venue, for good. Must be shorter than
    /// `session_timeout`.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// A device not heard of for this long (venue event time) is no longer
    /// counted.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long applied event ids are remembered (the providers' retry
    /// horizon).
    #[serde(default = "default_applied_retention", with = "humantime_serde")]
    pub applied_retention: Duration,
    /// Firing alerts are re-posted to Alertmanager this often.
    #[serde(default = "default_resend_interval", with = "humantime_serde")]
    pub resend_interval: Duration,
    /// `endsAt` of a firing alert is the post time plus this; must exceed
    /// `resend_interval`.
    #[serde(default = "default_alert_ttl", with = "humantime_serde")]
    pub alert_ttl: Duration,
    /// One request to a receiver, connect to last byte.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First pause after a failed delivery (doubling, full jitter).
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest pause between deliveries to a failing receiver.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Most notifications waiting per receiver; past it the oldest go.
    #[serde(default = "default_max_outbox")]
    pub max_outbox: u64,
}

/// One alert rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleConfig {
    /// Devices in a zone over a threshold: `ZoneOverCapacity`.
    ZoneOccupancy {
        /// Name (label `rule`, metrics); default the kind.
        #[serde(default)]
        name: Option<String>,
        /// Raised when the count is above this (at least 1).
        threshold: i64,
        /// Resolved when the count is at or below this (default
        /// `threshold`; lower for hysteresis).
        #[serde(default)]
        clear_at: Option<i64>,
        /// Venues the rule applies to; empty: all.
        #[serde(default)]
        venues: Vec<String>,
        /// Zones the rule applies to; empty: all.
        #[serde(default)]
        zones: Vec<String>,
        /// Label `severity`.
        #[serde(default = "default_warning")]
        severity: String,
        /// Least time between two raises of one (venue, zone).
        #[serde(default = "default_occupancy_cooldown", with = "humantime_serde")]
        cooldown: Duration,
    },
    /// A VIP guest arrives: `VipArrival` (one notification per arrival).
    VipArrival {
        /// Name (label `rule`, metrics); default the kind.
        #[serde(default)]
        name: Option<String>,
        /// Event types that count as an arrival.
        #[serde(default = "default_vip_types")]
        types: Vec<String>,
        /// Venues the rule applies to; empty: all.
        #[serde(default)]
        venues: Vec<String>,
        /// Label `severity`.
        #[serde(default = "default_info")]
        severity: String,
        /// Least time between two notifications for one guest at a venue.
        #[serde(default = "default_long_cooldown", with = "humantime_serde")]
        cooldown: Duration,
    },
    /// A device connected longer than a threshold: `DwellOverThreshold`.
    Dwell {
        /// Name (label `rule`, metrics); default the kind.
        #[serde(default)]
        name: Option<String>,
        /// Raised when a device has been connected longer than this.
        #[serde(with = "humantime_serde")]
        threshold: Duration,
        /// Venues the rule applies to; empty: all.
        #[serde(default)]
        venues: Vec<String>,
        /// Zones (the device's current one) the rule applies to; empty: all.
        #[serde(default)]
        zones: Vec<String>,
        /// Label `severity`.
        #[serde(default = "default_info")]
        severity: String,
        /// Least time between two raises for one device at a venue.
        #[serde(default = "default_long_cooldown", with = "humantime_serde")]
        cooldown: Duration,
    },
}

/// One receiver of notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReceiverConfig {
    /// A Slack-compatible incoming webhook: `POST {"text": ...}`.
    Slack {
        /// Name (metrics, outbox); default `slack`.
        #[serde(default)]
        name: Option<String>,
        /// Environment variable holding the webhook URL (it carries a
        /// token: never in the config text).
        url_env: String,
    },
    /// Prometheus Alertmanager: `POST {url}/api/v2/alerts`.
    Alertmanager {
        /// Name (metrics, outbox); default `alertmanager`.
        #[serde(default)]
        name: Option<String>,
        /// Base URL, e.g. `http://alertmanager:9093`.
        url: String,
    },
    /// One log line per notification (target `alerts`, level info): the
    /// local stack prints alerts this way.
    Log {
        /// Name (metrics, outbox); default `log`.
        #[serde(default)]
        name: Option<String>,
    },
}

/// Parses a list item by item, so an error names its index (`rules[1]:
/// unknown field ...`): serde alone loses the position inside tagged enums.
pub(super) fn each_named<'de, D, T>(d: D, field: &str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    let items = Vec::<figment::value::Value>::deserialize(d)?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.deserialize::<T>()
                .map_err(|e| D::Error::custom(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

pub(super) fn rules_each<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<RuleConfig>, D::Error> {
    each_named(d, "rules")
}

pub(super) fn receivers_each<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<ReceiverConfig>, D::Error> {
    each_named(d, "receivers")
}

pub(super) fn default_max_event_age() -> Duration {
    Duration::from_secs(15 * 60)
}
pub(super) fn default_max_clock_skew() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_session_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}
pub(super) fn default_applied_retention() -> Duration {
    Duration::from_secs(72 * 3600)
}
pub(super) fn default_resend_interval() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_alert_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
pub(super) const fn default_max_outbox() -> u64 {
    10_000
}
pub(super) fn default_warning() -> String {
    "warning".into()
}
pub(super) fn default_info() -> String {
    "info".into()
}
pub(super) fn default_occupancy_cooldown() -> Duration {
    Duration::from_secs(10 * 60)
}
pub(super) fn default_long_cooldown() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_vip_types() -> Vec<String> {
    vec!["guest_connects".into(), "device_connected".into()]
}

impl RuleConfig {
    /// The rule's kind as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleConfig::ZoneOccupancy { .. } => "zone_occupancy",
            RuleConfig::VipArrival { .. } => "vip_arrival",
            RuleConfig::Dwell { .. } => "dwell",
        }
    }

    /// Its name: the configured one, else the kind.
    pub fn name(&self) -> &str {
        let n = match self {
            RuleConfig::ZoneOccupancy { name, .. }
            | RuleConfig::VipArrival { name, .. }
            | RuleConfig::Dwell { name, .. } => name,
        };
        n.as_deref().unwrap_or(self.kind())
    }

    pub(super) fn cooldown(&self) -> Duration {
        match self {
            RuleConfig::ZoneOccupancy { cooldown, .. }
            | RuleConfig::VipArrival { cooldown, .. }
            | RuleConfig::Dwell { cooldown, .. } => *cooldown,
        }
    }

    pub(super) fn severity(&self) -> &str {
        match self {
            RuleConfig::ZoneOccupancy { severity, .. }
            | RuleConfig::VipArrival { severity, .. }
            | RuleConfig::Dwell { severity, .. } => severity,
        }
    }

    fn venues(&self) -> &[String] {
        match self {
            RuleConfig::ZoneOccupancy { venues, .. }
            | RuleConfig::VipArrival { venues, .. }
            | RuleConfig::Dwell { venues, .. } => venues,
        }
    }

    pub(super) fn applies_to(&self, venue: &str) -> bool {
        self.venues().is_empty() || self.venues().iter().any(|v| v == venue)
    }
}

impl ReceiverConfig {
    /// Its name: the configured one, else the kind.
    pub fn name(&self) -> &str {
        match self {
            ReceiverConfig::Slack { name, .. } => name.as_deref().unwrap_or("slack"),
            ReceiverConfig::Alertmanager { name, .. } => name.as_deref().unwrap_or("alertmanager"),
            ReceiverConfig::Log { name } => name.as_deref().unwrap_or("log"),
        }
    }
}

/// Why a URL is not usable here, or `None`; never quotes the URL.
pub(super) fn url_problem(url: &str) -> Option<&'static str> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.password().is_some() {
                Some("has a password; credentials never live in the config text")
            } else {
                None
            }
        }
        _ => Some("must be an https:// or http:// URL with a host"),
    }
}

/// A label value Alertmanager and Slack take as is: 1-64 of `A-Za-z0-9_-`.
pub(super) fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl AlertsConfig {
    /// Every problem, each naming its field under `at` (`sinks.NAME`).
    /// Reads the environment variables the receivers name.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.path.as_os_str().is_empty() {
            p.push(format!("{at}.path: must not be empty"));
        }
        if self.rules.is_empty() {
            p.push(format!("{at}.rules: give at least one rule"));
        }
        if self.receivers.is_empty() {
            p.push(format!(
                "{at}.receivers: give at least one receiver (slack, alertmanager, log)"
            ));
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let ra = format!("{at}.rules[{i}] ({})", r.name());
            if !names.insert(r.name().to_owned()) {
                p.push(format!(
                    "{ra}.name: another rule has this name; give each a distinct name"
                ));
            }
            if !label_ok(r.name()) {
                p.push(format!("{ra}.name: must be 1-64 of A-Z a-z 0-9 _ -"));
            }
            if !label_ok(r.severity()) {
                p.push(format!("{ra}.severity: must be 1-64 of A-Z a-z 0-9 _ -"));
            }
            match r {
                RuleConfig::ZoneOccupancy {
                    threshold,
                    clear_at,
                    ..
                } => {
                    if *threshold < 1 {
                        p.push(format!(
                            "{ra}.threshold: must be at least 1 (got {threshold})"
                        ));
                    }
                    if let Some(c) = clear_at
                        && (*c < 0 || *c > *threshold)
                    {
                        p.push(format!(
                            "{ra}.clear_at: must be between 0 and the threshold ({threshold}), got {c}"
                        ));
                    }
                }
                RuleConfig::VipArrival { types, .. } => {
                    if types.is_empty() {
                        p.push(format!("{ra}.types: give at least one event type"));
                    }
                    for t in types {
                        if !GUEST_WIFI_TYPES.contains(&t.as_str()) {
                            p.push(format!(
                                "{ra}.types: {t:?} is not a guest-WiFi event type ({})",
                                GUEST_WIFI_TYPES.join(", ")
                            ));
                        }
                    }
                }
                RuleConfig::Dwell { threshold, .. } => {
                    if threshold.is_zero() {
                        p.push(format!("{ra}.threshold: must be above 0"));
                    }
                }
            }
        }
        let mut rnames = BTreeSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let ra = format!("{at}.receivers[{i}] ({})", r.name());
            if !rnames.insert(r.name().to_owned()) {
                p.push(format!(
                    "{ra}.name: another receiver has this name; give each a distinct name"
                ));
            }
            if !label_ok(r.name()) {
                p.push(format!("{ra}.name: must be 1-64 of A-Z a-z 0-9 _ -"));
            }
            match r {
                ReceiverConfig::Slack { url_env, .. } => {
                    if url_env.is_empty() {
                        p.push(format!("{ra}.url_env: must name an environment variable"));
                    } else {
                        match std::env::var(url_env) {
                            Err(_) => p.push(format!(
                                "{ra}.url_env: environment variable {url_env} is not set"
                            )),
                            Ok(v) => {
                                if let Some(why) = url_problem(&v) {
                                    p.push(format!("{ra}.url_env: the value of {url_env} {why}"));
                                }
                            }
                        }
                    }
                }
                ReceiverConfig::Alertmanager { url, .. } => {
                    if let Some(why) = url_problem(url) {
                        p.push(format!("{ra}.url: {why}"));
                    }
                }
                ReceiverConfig::Log { .. } => {}
            }
        }
        if self.max_event_age < Duration::from_secs(1) {
            p.push(format!("{at}.max_event_age: must be at least 1s"));
        }
        if self.session_timeout < Duration::from_secs(1) {
            p.push(format!("{at}.session_timeout: must be at least 1s"));
        }
        if self.max_clock_skew < Duration::from_secs(1) {
            p.push(format!("{at}.max_clock_skew: must be at least 1s"));
        } else if self.max_clock_skew >= self.session_timeout {
            p.push(format!(
                "{at}.max_clock_skew: must be shorter than session_timeout, or a venue clock that far ahead expires sessions heard of just now"
            ));
        }
        if self.applied_retention < Duration::from_secs(60) {
            p.push(format!("{at}.applied_retention: must be at least 1m"));
        }
        if self.resend_interval < Duration::from_secs(1) {
            p.push(format!("{at}.resend_interval: must be at least 1s"));
        }
        if self.alert_ttl <= self.resend_interval {
            p.push(format!(
                "{at}.alert_ttl: must be longer than resend_interval, or Alertmanager resolves firing alerts between posts"
            ));
        }
        if self.timeout.is_zero() {
            p.push(format!("{at}.timeout: must be above 0"));
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            p.push(format!(
                "{at}.retry_initial: must be above 0 and at most retry_max"
            ));
        }
        if self.max_outbox == 0 {
            p.push(format!("{at}.max_outbox: must be at least 1"));
        }
        p
    }
}
