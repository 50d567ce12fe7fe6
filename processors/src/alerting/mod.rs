//! The alerting sink (`kind = "alerts"`): live occupancy per venue and zone,
//! evaluated on the ordered, de-duplicated stream, raising and resolving
//! alerts that are delivered to Slack-compatible incoming webhooks,
//! Prometheus Alertmanager (`POST /api/v2/alerts`) and the log.
//!
//! # Rules
//!
//! - `zone_occupancy`: the number of devices connected in a (venue, zone) is
//!   over `threshold` → `ZoneOverCapacity`; it resolves when the count is at
//!   or below `clear_at` (default: the threshold; lower it for hysteresis).
//!   A device is in the zone of its last `device_connected`,
//!   `guest_connects` or `zone_entered` event and leaves the venue with
//!   `device_disconnected`; a device not heard of for `session_timeout`
//!   (venue event time) is no longer counted, so a lost disconnect cannot
//!   inflate a zone for ever.
//! - `vip_arrival`: an event of `types` (default `guest_connects`,
//!   `device_connected`) whose guest is VIP → `VipArrival`. One-shot: one
//!   notification per arrival, no resolve message; Alertmanager gets it with
//!   `endsAt = now + alert_ttl`.
//! - `dwell`: a device connected at the venue for longer than `threshold`
//!   → `DwellOverThreshold`, resolved when it disconnects (or its session
//!   expires). Dwell is measured in the venue's event time (the newest
//!   `occurred_at` seen for the venue), so it is checked when the venue's
//!   stream advances: a venue that sends nothing raises nothing new.
//!
//! Each alert has a fingerprint (rule kind, rule name, venue, zone / guest /
//! device). One condition raises one alert: while it is firing, more
//! over-threshold events only update its annotations. `cooldown` (event
//! time) is the least time between two raises of one fingerprint: a
//! condition that clears and comes back inside it is not raised again
//! (counted in `processors_alerts_suppressed_total`); it is raised by the
//! first evaluation after the cooldown if it still holds.
//!
//! # What drives live state
//!
//! Only guest-WiFi events that are neither `late` (their sequence slot was
//! skipped: their state is stale, DESIGN.md) nor older than `max_event_age`
//! (`occurred_at` against the wall clock when applied). A replay of last
//! week therefore pages nobody and leaves the live counters alone. The
//! price: after an outage longer than `max_event_age`, the backlog is
//! skipped and the counts are rebuilt from the new events (sessions left
//! open expire after `session_timeout`). Ignored events are counted in
//! `processors_alerting_events_ignored_total` by reason.
//!
//! # Effect once across kill -9 and restarts
//!
//! All state lives in one SQLite file (`path`, WAL, `synchronous=FULL`).
//! Each batch is one `BEGIN IMMEDIATE` transaction that records the applied
//! (source, event id) pairs, updates devices, venue clocks and alerts, and
//! appends the notifications to an outbox, one row per receiver. The sink
//! answers `Accepted` only after the commit; an event offered again (the
//! crash came before the offset commit, a duplicate) finds its id applied
//! and changes nothing. Applied ids are kept for `applied_retention`
//! (default 72 h, the dedupe window).
//!
//! A delivery task sends each receiver's outbox rows in order and deletes a
//! row only after the receiver accepted it (`2xx`). Failures are retried
//! per receiver with exponential backoff and jitter (`retry_initial` to
//! `retry_max`; `429` honours `Retry-After`, capped at `retry_max`), while
//! the pipeline goes on: a receiver that is down delays its notifications,
//! never the stream, and the outbox drains when it returns. A `4xx` other
//! than 408 and 429 is permanent: the row is dropped and counted
//! (`status="dropped"`). A receiver's outbox is capped at `max_outbox` rows;
//! past it the oldest are dropped and counted.
//!
//! - Alertmanager is idempotent by label set: a repeat after a crash is
//!   harmless. Firing alerts are also re-posted every `resend_interval`
//!   with `endsAt = now + alert_ttl`, so Alertmanager keeps them while the
//!   condition holds, and lets them expire on its own `alert_ttl` after the
//!   processors stop for good. A resolve is posted with `endsAt` = when it
//!   cleared.
//! - Slack has no idempotency: delivery is at-least-once. The window for a
//!   duplicate is one request: between Slack accepting a message and the
//!   outbox row's delete committing (a kill -9 then, or a response lost to a
//!   timeout, sends it again). Each request carries `Idempotency-Key:
//!   alert-<fingerprint hash>-<raise number>-<firing|resolved>`, the same on
//!   every attempt, so a proxy can drop such repeats.
//! - Receivers are served one after another by one task: a receiver whose
//!   requests time out delays the others' deliveries by up to `timeout`
//!   per round (it then backs off and is skipped until its pause ends).
//! - Two processes on one host may share the file: SQLite's own locks
//!   serialise the batch transactions (`busy_timeout`), and only the process
//!   holding an exclusive `flock` on `<path>.deliver.lock` delivers, so one
//!   row is never sent by two processes at once.
//!
//! Known limit: the state is per host. When a partition moves to an
//! instance on another host, that instance starts from its own file (as the
//! dedupe store does); run the alerting sink where the venues' partitions
//! stay, or accept that occupancy is rebuilt there.
//!
//! # Secrets
//!
//! A Slack webhook URL carries its token: it is read from the environment
//! variable `url_env` at start, and never logged, never put in a metric or an
//! error (request errors are stripped of their URL). Only `http://` URLs are
//! built in (as for the CRM sink): put a TLS-terminating egress proxy in
//! front of `hooks.slack.com`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::event::{Event, GUEST_WIFI_TYPES};
use crate::metrics::Metrics;
use crate::sink::{BoxFuture, Outcome, Sink};

/// Rows read from one receiver's outbox per round.
const DELIVER_CHUNK: usize = 50;
/// Firing alerts per re-post request to Alertmanager.
const REFRESH_CHUNK: usize = 500;

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
fn each_named<'de, D, T>(d: D, field: &str) -> Result<Vec<T>, D::Error>
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

fn rules_each<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RuleConfig>, D::Error> {
    each_named(d, "rules")
}

fn receivers_each<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ReceiverConfig>, D::Error> {
    each_named(d, "receivers")
}

fn default_max_event_age() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_applied_retention() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_resend_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_alert_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_outbox() -> u64 {
    10_000
}
fn default_warning() -> String {
    "warning".into()
}
fn default_info() -> String {
    "info".into()
}
fn default_occupancy_cooldown() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_long_cooldown() -> Duration {
    Duration::from_secs(3600)
}
fn default_vip_types() -> Vec<String> {
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

    fn cooldown(&self) -> Duration {
        match self {
            RuleConfig::ZoneOccupancy { cooldown, .. }
            | RuleConfig::VipArrival { cooldown, .. }
            | RuleConfig::Dwell { cooldown, .. } => *cooldown,
        }
    }

    fn severity(&self) -> &str {
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

    fn applies_to(&self, venue: &str) -> bool {
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
fn url_problem(url: &str) -> Option<&'static str> {
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
fn label_ok(s: &str) -> bool {
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

// ---------------------------------------------------------------------------
// State and rule evaluation (synchronous, on one SQLite connection)
// ---------------------------------------------------------------------------

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS applied (
    source TEXT NOT NULL, event_id TEXT NOT NULL, applied_at INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_by_time ON applied (applied_at);
CREATE TABLE IF NOT EXISTS devices (
    venue TEXT NOT NULL, device TEXT NOT NULL, zone TEXT,
    connected_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (venue, device)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_by_zone ON devices (venue, zone);
CREATE TABLE IF NOT EXISTS venues (
    venue TEXT PRIMARY KEY, watermark INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY, rule TEXT NOT NULL, state TEXT NOT NULL,
    generation INTEGER NOT NULL, last_raised_at INTEGER NOT NULL,
    alert TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts (state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL,
    notification TEXT NOT NULL, created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_by_receiver ON outbox (receiver, id);
PRAGMA user_version = 1;
";

/// Opens (creating) the state file with the settings every connection
/// needs.
pub fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

/// An alert as stored and as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDoc {
    /// `ZoneOverCapacity`, `VipArrival`, `DwellOverThreshold`.
    pub alertname: String,
    /// Alertmanager labels (identity): alertname, severity, rule, venue, ...
    pub labels: BTreeMap<String, String>,
    /// `summary` (with the counts).
    pub annotations: BTreeMap<String, String>,
    /// When it started (event time, Unix µs).
    pub starts_at: i64,
    /// When it cleared (event time, Unix µs), once resolved.
    pub ends_at: Option<i64>,
    /// One notification, no resolve (VIP arrivals).
    pub one_shot: bool,
}

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across attempts: `alert-<hash>-<raise>-<status>`.
    pub key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The alert.
    pub alert: AlertDoc,
}

/// What one batch did, for the metrics (counted after the commit).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchStats {
    /// Raises by rule name.
    pub raised: BTreeMap<String, u64>,
    /// Resolves by rule name.
    pub resolved: BTreeMap<String, u64>,
    /// Raises held back by a cooldown, by rule name.
    pub suppressed: BTreeMap<String, u64>,
    /// Events that did not touch live state, by reason (`duplicate`,
    /// `late`, `stale`, `not_guest_wifi`).
    pub ignored: BTreeMap<&'static str, u64>,
    /// Notifications added to the outbox.
    pub enqueued: u64,
}

/// The rules and receivers, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The rules, in config order.
    pub rules: Vec<RuleConfig>,
    /// Receiver names (one outbox row per receiver per notification).
    pub receivers: Vec<String>,
    /// See [`AlertsConfig::max_event_age`].
    pub max_event_age: Duration,
    /// See [`AlertsConfig::session_timeout`].
    pub session_timeout: Duration,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Wall clock, Unix µs.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// FNV-1a, 64 bits: a short stable hash of a fingerprint for keys.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn fingerprint(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    engine: &'a Engine,
    stats: &'a mut BatchStats,
    now: i64,
}

impl Engine {
    /// Builds the engine of a checked config.
    pub fn new(config: &AlertsConfig) -> Engine {
        Engine {
            rules: config.rules.clone(),
            receivers: config
                .receivers
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
            max_event_age: config.max_event_age,
            session_timeout: config.session_timeout,
        }
    }

    /// Applies a batch in one transaction: each event once, by (source,
    /// event id). `now` is the wall clock (Unix µs) for the age check.
    pub fn apply(
        &self,
        conn: &mut Connection,
        batch: &[Arc<Event>],
        now: i64,
    ) -> rusqlite::Result<BatchStats> {
        let mut stats = BatchStats::default();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut t = Tx {
                tx: &tx,
                engine: self,
                stats: &mut stats,
                now,
            };
            for e in batch {
                t.event(e)?;
            }
        }
        tx.commit()?;
        Ok(stats)
    }
}

impl Tx<'_> {
    fn ignore(&mut self, reason: &'static str) {
        *self.stats.ignored.entry(reason).or_default() += 1;
    }

    fn event(&mut self, e: &Event) -> rusqlite::Result<()> {
        let fresh = self.tx.execute(
            "INSERT OR IGNORE INTO applied (source, event_id, applied_at) VALUES (?1, ?2, ?3)",
            params![e.source, e.event_id, self.now],
        )?;
        if fresh == 0 {
            self.ignore("duplicate");
            return Ok(());
        }
        let Some(w) = &e.guest_wifi else {
            self.ignore("not_guest_wifi");
            return Ok(());
        };
        if e.late {
            self.ignore("late");
            return Ok(());
        }
        if self.now.saturating_sub(w.occurred_at_micros) > micros(self.engine.max_event_age) {
            self.ignore("stale");
            return Ok(());
        }
        let venue = w.venue_id.as_str();
        let at = w.occurred_at_micros;
        let old_wm: Option<i64> = self
            .tx
            .query_row(
                "SELECT watermark FROM venues WHERE venue = ?1",
                [venue],
                |r| r.get(0),
            )
            .optional()?;
        let wm = old_wm.map_or(at, |o| o.max(at));
        self.tx.execute(
            "INSERT INTO venues (venue, watermark) VALUES (?1, ?2)
             ON CONFLICT (venue) DO UPDATE SET watermark = excluded.watermark",
            params![venue, wm],
        )?;
        // Zones whose count may have changed.
        let mut zones: BTreeSet<String> = BTreeSet::new();
        if let Some(device) = w.device_id.as_deref() {
            let old: Option<(Option<String>, i64)> = self
                .tx
                .query_row(
                    "SELECT zone, connected_at FROM devices WHERE venue = ?1 AND device = ?2",
                    [venue, device],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((Some(z), _)) = &old {
                zones.insert(z.clone());
            }
            match w.event_type.as_str() {
                "device_disconnected" => {
                    self.tx.execute(
                        "DELETE FROM devices WHERE venue = ?1 AND device = ?2",
                        [venue, device],
                    )?;
                    self.resolve_dwell(venue, device, at)?;
                }
                "device_connected" | "guest_connects" | "zone_entered" => {
                    let zone = w
                        .zone
                        .clone()
                        .or_else(|| old.as_ref().and_then(|(z, _)| z.clone()));
                    let connected_at = old.as_ref().map_or(at, |(_, c)| *c);
                    self.tx.execute(
                        "INSERT INTO devices (venue, device, zone, connected_at, last_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (venue, device) DO UPDATE SET
                           zone = excluded.zone, last_seen = max(last_seen, excluded.last_seen)",
                        params![venue, device, zone, connected_at, at],
                    )?;
                    if let Some(z) = zone {
                        zones.insert(z);
                    }
                }
                _ => {
                    self.tx.execute(
                        "UPDATE devices SET last_seen = max(last_seen, ?3)
                         WHERE venue = ?1 AND device = ?2",
                        params![venue, device, at],
                    )?;
                }
            }
        }
        // Sessions not heard of for session_timeout end here.
        let cutoff = wm.saturating_sub(micros(self.engine.session_timeout));
        let expired: Vec<(String, Option<String>)> = {
            let mut st = self.tx.prepare_cached(
                "SELECT device, zone FROM devices WHERE venue = ?1 AND last_seen < ?2",
            )?;
            st.query_map(params![venue, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        if !expired.is_empty() {
            self.tx.execute(
                "DELETE FROM devices WHERE venue = ?1 AND last_seen < ?2",
                params![venue, cutoff],
            )?;
            for (device, zone) in &expired {
                if let Some(z) = zone {
                    zones.insert(z.clone());
                }
                self.resolve_dwell(venue, device, wm)?;
            }
        }
        for zone in &zones {
            self.occupancy(venue, zone, at)?;
        }
        self.vip(e, at)?;
        self.dwell(venue, wm)?;
        Ok(())
    }

    fn occupancy(&mut self, venue: &str, zone: &str, at: i64) -> rusqlite::Result<()> {
        let count: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM devices WHERE venue = ?1 AND zone = ?2",
            [venue, zone],
            |r| r.get(0),
        )?;
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::ZoneOccupancy {
                threshold,
                clear_at,
                zones,
                ..
            } = rule
            else {
                continue;
            };
            if !rule.applies_to(venue) || !(zones.is_empty() || zones.iter().any(|z| z == zone)) {
                continue;
            }
            let fp = fingerprint(&["zone_occupancy", rule.name(), venue, zone]);
            if count > *threshold {
                let doc = AlertDoc {
                    alertname: "ZoneOverCapacity".into(),
                    labels: labels(rule, venue, Some(zone), &[]),
                    annotations: summary(format!(
                        "{count} devices in zone {zone} at venue {venue} (threshold {threshold})"
                    )),
                    starts_at: at,
                    ends_at: None,
                    one_shot: false,
                };
                self.raise(rule, &fp, doc)?;
            } else if count <= clear_at.unwrap_or(*threshold) {
                self.resolve(rule.name(), &fp, at, |d| {
                    d.annotations = summary(format!(
                        "{count} devices in zone {zone} at venue {venue} (threshold {threshold}): cleared"
                    ));
                })?;
            }
        }
        Ok(())
    }

    fn vip(&mut self, e: &Event, at: i64) -> rusqlite::Result<()> {
        let Some(w) = &e.guest_wifi else {
            return Ok(());
        };
        let Some(g) = w.guest.as_ref().filter(|g| g.vip) else {
            return Ok(());
        };
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::VipArrival { types, .. } = rule else {
                continue;
            };
            if !rule.applies_to(&w.venue_id) || !types.contains(&w.event_type) {
                continue;
            }
            let fp = fingerprint(&["vip_arrival", rule.name(), &w.venue_id, &g.id]);
            let who = g.first_name.as_deref().unwrap_or(&g.id);
            let zone = w.zone.as_deref();
            let doc = AlertDoc {
                alertname: "VipArrival".into(),
                labels: labels(rule, &w.venue_id, zone, &[("guest", &g.id)]),
                annotations: summary(format!(
                    "VIP guest {who} arrived at venue {}{}",
                    w.venue_id,
                    zone.map(|z| format!(", zone {z}")).unwrap_or_default()
                )),
                starts_at: at,
                ends_at: None,
                one_shot: true,
            };
            self.raise(rule, &fp, doc)?;
        }
        Ok(())
    }

    fn dwell(&mut self, venue: &str, wm: i64) -> rusqlite::Result<()> {
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::Dwell {
                threshold, zones, ..
            } = rule
            else {
                continue;
            };
            if !rule.applies_to(venue) {
                continue;
            }
            let since = wm.saturating_sub(micros(*threshold));
            let long: Vec<(String, Option<String>, i64)> = {
                let mut st = self.tx.prepare_cached(
                    "SELECT device, zone, connected_at FROM devices
                     WHERE venue = ?1 AND connected_at <= ?2",
                )?;
                st.query_map(params![venue, since], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            for (device, zone, connected_at) in long {
                if !(zones.is_empty() || zone.as_ref().is_some_and(|z| zones.contains(z))) {
                    continue;
                }
                let fp = fingerprint(&["dwell", rule.name(), venue, &device]);
                // Raised once per session: a firing alert, or one raised
                // since this session began, stands.
                let raised: Option<(String, i64)> = self
                    .tx
                    .query_row(
                        "SELECT state, last_raised_at FROM alerts WHERE fingerprint = ?1",
                        [&fp],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((state, last)) = &raised
                    && (state == "firing" || *last >= connected_at)
                {
                    continue;
                }
                let doc = AlertDoc {
                    alertname: "DwellOverThreshold".into(),
                    labels: labels(rule, venue, zone.as_deref(), &[("device", &device)]),
                    annotations: summary(format!(
                        "device {device} at venue {venue}{} for over {}",
                        zone.as_deref()
                            .map(|z| format!(", zone {z},"))
                            .unwrap_or_default(),
                        human(*threshold)
                    )),
                    starts_at: connected_at.saturating_add(micros(*threshold)),
                    ends_at: None,
                    one_shot: false,
                };
                self.raise(rule, &fp, doc)?;
            }
        }
        Ok(())
    }

    fn resolve_dwell(&mut self, venue: &str, device: &str, at: i64) -> rusqlite::Result<()> {
        let engine = self.engine;
        for rule in &engine.rules {
            if let RuleConfig::Dwell { .. } = rule {
                let fp = fingerprint(&["dwell", rule.name(), venue, device]);
                self.resolve(rule.name(), &fp, at, |_| {})?;
            }
        }
        Ok(())
    }

    /// Raises `fp` unless it is firing (then its annotations are updated)
    /// or inside its cooldown (then it is counted as suppressed).
    fn raise(&mut self, rule: &RuleConfig, fp: &str, doc: AlertDoc) -> rusqlite::Result<()> {
        let existing: Option<(String, i64, i64)> = self
            .tx
            .query_row(
                "SELECT state, generation, last_raised_at FROM alerts WHERE fingerprint = ?1",
                [fp],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let generation = match existing {
            Some((state, _, _)) if state == "firing" => {
                let old: String = self.tx.query_row(
                    "SELECT alert FROM alerts WHERE fingerprint = ?1",
                    [fp],
                    |r| r.get(0),
                )?;
                if let Ok(mut old) = serde_json::from_str::<AlertDoc>(&old)
                    && old.annotations != doc.annotations
                {
                    old.annotations = doc.annotations;
                    self.tx.execute(
                        "UPDATE alerts SET alert = ?2 WHERE fingerprint = ?1",
                        params![fp, to_json(&old)],
                    )?;
                }
                return Ok(());
            }
            Some((_, _, last)) if doc.starts_at < last.saturating_add(micros(rule.cooldown())) => {
                *self
                    .stats
                    .suppressed
                    .entry(rule.name().to_owned())
                    .or_default() += 1;
                return Ok(());
            }
            Some((_, g, _)) => g + 1,
            None => 1,
        };
        // A one-shot alert is over once notified: stored as resolved, so it
        // is never re-posted, while its cooldown still holds.
        let state = if doc.one_shot { "resolved" } else { "firing" };
        self.tx.execute(
            "INSERT INTO alerts (fingerprint, rule, state, generation, last_raised_at, alert)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (fingerprint) DO UPDATE SET rule = excluded.rule, state = excluded.state,
               generation = excluded.generation, last_raised_at = excluded.last_raised_at,
               alert = excluded.alert",
            params![
                fp,
                rule.name(),
                state,
                generation,
                doc.starts_at,
                to_json(&doc)
            ],
        )?;
        *self.stats.raised.entry(rule.name().to_owned()).or_default() += 1;
        self.enqueue(fp, generation, "firing", doc)
    }

    /// Resolves `fp` if it is firing.
    fn resolve(
        &mut self,
        rule: &str,
        fp: &str,
        at: i64,
        edit: impl FnOnce(&mut AlertDoc),
    ) -> rusqlite::Result<()> {
        let existing: Option<(String, i64, String)> = self
            .tx
            .query_row(
                "SELECT state, generation, alert FROM alerts WHERE fingerprint = ?1",
                [fp],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((state, generation, doc)) = existing else {
            return Ok(());
        };
        if state != "firing" {
            return Ok(());
        }
        let Ok(mut doc) = serde_json::from_str::<AlertDoc>(&doc) else {
            return Ok(());
        };
        doc.ends_at = Some(at.max(doc.starts_at));
        edit(&mut doc);
        self.tx.execute(
            "UPDATE alerts SET state = 'resolved', alert = ?2 WHERE fingerprint = ?1",
            params![fp, to_json(&doc)],
        )?;
        *self.stats.resolved.entry(rule.to_owned()).or_default() += 1;
        self.enqueue(fp, generation, "resolved", doc)
    }

    fn enqueue(
        &mut self,
        fp: &str,
        generation: i64,
        status: &str,
        alert: AlertDoc,
    ) -> rusqlite::Result<()> {
        let n = Notification {
            key: format!("alert-{:016x}-{generation}-{status}", fnv(fp)),
            status: status.into(),
            alert,
        };
        let text = to_json(&n);
        for r in &self.engine.receivers {
            self.tx.execute(
                "INSERT INTO outbox (receiver, notification, created_at) VALUES (?1, ?2, ?3)",
                params![r, text, self.now],
            )?;
            self.stats.enqueued += 1;
        }
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn summary(s: String) -> BTreeMap<String, String> {
    BTreeMap::from([("summary".to_owned(), s)])
}

fn labels(
    rule: &RuleConfig,
    venue: &str,
    zone: Option<&str>,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let alertname = match rule {
        RuleConfig::ZoneOccupancy { .. } => "ZoneOverCapacity",
        RuleConfig::VipArrival { .. } => "VipArrival",
        RuleConfig::Dwell { .. } => "DwellOverThreshold",
    };
    let mut l = BTreeMap::from([
        ("alertname".to_owned(), alertname.to_owned()),
        ("severity".to_owned(), rule.severity().to_owned()),
        ("rule".to_owned(), rule.name().to_owned()),
        ("venue".to_owned(), venue.to_owned()),
    ]);
    if let Some(z) = zone {
        l.insert("zone".into(), z.into());
    }
    for (k, v) in extra {
        l.insert((*k).into(), (*v).into());
    }
    l
}

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------

/// A receiver ready to send.
enum Receiver {
    Slack { url: String },
    Alertmanager { url: String },
    Log,
}

/// How one delivery attempt went.
#[derive(Debug)]
enum Sent {
    Ok,
    /// Try again after at least this long (`Retry-After`), or the backoff.
    Transient(String, Option<Duration>),
    Permanent(String),
}

fn rfc3339(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The Alertmanager v2 body for some notifications; `now` for `endsAt`.
fn alertmanager_body(items: &[&Notification], now: i64, ttl: Duration) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = items
        .iter()
        .map(|n| {
            let a = &n.alert;
            let starts = a.starts_at.min(now);
            let ends = if n.status == "resolved" {
                a.ends_at.unwrap_or(now).min(now).max(starts)
            } else {
                now.saturating_add(micros(ttl))
            };
            serde_json::json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(starts),
                "endsAt": rfc3339(ends),
            })
        })
        .collect();
    serde_json::Value::Array(alerts)
}

/// Slack mrkdwn escaping of text that came from payloads.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack message for a notification.
pub fn slack_text(n: &Notification) -> String {
    let a = &n.alert;
    let summary = a.annotations.get("summary").map_or("", String::as_str);
    let (icon, word) = match (n.status.as_str(), a.one_shot) {
        ("resolved", _) => (":white_check_mark:", "RESOLVED"),
        (_, true) => (":star:", "ALERT"),
        _ => (":rotating_light:", "FIRING"),
    };
    let severity = a.labels.get("severity").map_or("", String::as_str);
    slack_escape(&format!(
        "{icon} [{word}] {} ({severity}): {summary}",
        a.alertname
    ))
}

/// `Retry-After` in seconds, when present and sane.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

async fn post(client: &reqwest::Client, url: &str, key: Option<&str>, body: Vec<u8>) -> Sent {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    match req.send().await {
        // Never the URL: a Slack webhook URL carries its token.
        Err(e) if e.is_timeout() => Sent::Transient("timeout".into(), None),
        Err(e) if e.is_connect() => Sent::Transient("connect".into(), None),
        Err(e) => Sent::Transient(format!("request: {}", e.without_url()), None),
        Ok(r) => {
            let status = r.status().as_u16();
            let after = retry_after(r.headers());
            match status {
                200..=299 => Sent::Ok,
                408 | 429 => Sent::Transient(format!("HTTP {status}"), after),
                400..=499 => Sent::Permanent(format!("HTTP {status}")),
                _ => Sent::Transient(format!("HTTP {status}"), after),
            }
        }
    }
}

impl Receiver {
    async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
        ttl: Duration,
        sink: &str,
        receiver: &str,
    ) -> Sent {
        match self {
            Receiver::Slack { url } => {
                let body = serde_json::json!({ "text": slack_text(n) });
                post(client, url, Some(&n.key), to_json(&body).into_bytes()).await
            }
            Receiver::Alertmanager { url } => {
                let body = alertmanager_body(&[n], now_micros(), ttl);
                post(client, url, None, to_json(&body).into_bytes()).await
            }
            Receiver::Log => {
                let a = &n.alert;
                tracing::info!(
                    target: "alerts",
                    sink = %sink,
                    receiver = %receiver,
                    status = %n.status,
                    alertname = %a.alertname,
                    venue = a.labels.get("venue").map_or("", String::as_str),
                    zone = a.labels.get("zone").map_or("", String::as_str),
                    severity = a.labels.get("severity").map_or("", String::as_str),
                    key = n.key.as_str(),
                    "{}",
                    a.annotations.get("summary").map_or("", String::as_str)
                );
                Sent::Ok
            }
        }
    }
}

/// An exclusive, non-blocking `flock`; kept for the life of the process
/// (released by the kernel when it dies).
fn try_flock(file: &File) -> bool {
    // SAFETY: flock on a valid, open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

struct Deliverer {
    sink: String,
    path: PathBuf,
    receivers: Vec<(String, Receiver)>,
    client: reqwest::Client,
    config: AlertsConfig,
    metrics: Metrics,
    wake: Arc<tokio::sync::Notify>,
}

/// Per-receiver backoff.
struct Backoff {
    failures: u32,
    until: tokio::time::Instant,
}

impl Deliverer {
    async fn db<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| "alert state connection poisoned".to_string())?;
            f(&mut c).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn run(self) {
        // One deliverer per state file.
        let lock_path = PathBuf::from(format!("{}.deliver.lock", self.path.display()));
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(sink = %self.sink, path = %lock_path.display(), error = %e, "alert delivery lock cannot be opened; no delivery from this process");
                return;
            }
        };
        let mut waited = false;
        while !try_flock(&lock) {
            if !waited {
                tracing::info!(sink = %self.sink, "another process delivers this alert state; waiting for its lock");
                waited = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let path = self.path.clone();
        let conn = match tokio::task::spawn_blocking(move || open_db(&path)).await {
            Ok(Ok(c)) => Arc::new(Mutex::new(c)),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.sink, error = %e, "alert state cannot be opened for delivery");
                return;
            }
            Err(e) => {
                tracing::error!(sink = %self.sink, error = %e, "alert delivery task failed");
                return;
            }
        };
        let mut backoff: HashMap<String, Backoff> = HashMap::new();
        let mut next_refresh = tokio::time::Instant::now();
        let mut next_prune = tokio::time::Instant::now();
        loop {
            for (name, receiver) in &self.receivers {
                if backoff
                    .get(name)
                    .is_some_and(|b| b.until > tokio::time::Instant::now())
                {
                    continue;
                }
                self.drain(&conn, name, receiver, &mut backoff).await;
            }
            if tokio::time::Instant::now() >= next_refresh {
                self.refresh(&conn, &mut backoff).await;
                next_refresh = tokio::time::Instant::now() + self.config.resend_interval;
            }
            if tokio::time::Instant::now() >= next_prune {
                self.prune(&conn).await;
                next_prune = tokio::time::Instant::now() + Duration::from_secs(60);
            }
            // Sleep until woken by a batch, the next backoff ends, or a tick.
            let mut wait = Duration::from_secs(1);
            let now = tokio::time::Instant::now();
            for b in backoff.values() {
                if b.until > now {
                    wait = wait.min(b.until - now);
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn fail(&self, backoff: &mut HashMap<String, Backoff>, name: &str, after: Option<Duration>) {
        let b = backoff.entry(name.to_owned()).or_insert(Backoff {
            failures: 0,
            until: tokio::time::Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let cap = self.config.retry_max;
        let exp = self
            .config
            .retry_initial
            .saturating_mul(1u32 << b.failures.min(16).saturating_sub(1))
            .min(cap);
        let jittered = exp.mul_f64(rand::random::<f64>().max(0.1));
        let pause = after.map_or(jittered, |a| a.min(cap).max(jittered));
        b.until = tokio::time::Instant::now() + pause;
    }

    async fn drain(
        &self,
        conn: &Arc<Mutex<Connection>>,
        name: &str,
        receiver: &Receiver,
        backoff: &mut HashMap<String, Backoff>,
    ) {
        let counter = |status: &str| {
            self.metrics
                .alert_notifications
                .with_label_values(&[&self.sink, name, status])
        };
        loop {
            let r = name.to_owned();
            let rows = Self::db(conn, move |c| {
                let mut st = c.prepare_cached(
                    "SELECT id, notification FROM outbox WHERE receiver = ?1 ORDER BY id LIMIT ?2",
                )?;
                st.query_map(params![r, DELIVER_CHUNK as i64], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(sink = %self.sink, receiver = %name, error = %e, "reading the alert outbox failed");
                    return;
                }
            };
            if rows.is_empty() {
                self.set_depth(conn, name).await;
                return;
            }
            let full = rows.len() == DELIVER_CHUNK;
            for (id, text) in rows {
                let sent = match serde_json::from_str::<Notification>(&text) {
                    Ok(n) => {
                        receiver
                            .send(&self.client, &n, self.config.alert_ttl, &self.sink, name)
                            .await
                    }
                    Err(e) => Sent::Permanent(format!("unreadable outbox row: {e}")),
                };
                match sent {
                    Sent::Ok => {
                        counter("sent").inc();
                        backoff.remove(name);
                    }
                    Sent::Permanent(why) => {
                        counter("dropped").inc();
                        tracing::error!(sink = %self.sink, receiver = %name, reason = why.as_str(), "alert notification refused for good; dropped");
                    }
                    Sent::Transient(why, after) => {
                        counter("failed").inc();
                        let _ = Self::db(conn, move |c| {
                            c.execute(
                                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1",
                                [id],
                            )
                        })
                        .await;
                        self.fail(backoff, name, after);
                        tracing::warn!(sink = %self.sink, receiver = %name, reason = why.as_str(), "alert notification failed; will retry");
                        self.set_depth(conn, name).await;
                        return;
                    }
                }
                if let Err(e) = Self::db(conn, move |c| {
                    c.execute("DELETE FROM outbox WHERE id = ?1", [id])
                })
                .await
                {
                    tracing::warn!(sink = %self.sink, receiver = %name, error = %e, "marking an alert notification sent failed; it may be sent again");
                    return;
                }
            }
            if !full {
                self.set_depth(conn, name).await;
                return;
            }
        }
    }

    async fn set_depth(&self, conn: &Arc<Mutex<Connection>>, name: &str) {
        let r = name.to_owned();
        if let Ok(n) = Self::db(conn, move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE receiver = ?1",
                [r],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        {
            self.metrics
                .alert_outbox_depth
                .with_label_values(&[&self.sink, name])
                .set(n);
        }
    }

    /// Re-posts every firing alert to each Alertmanager receiver.
    async fn refresh(&self, conn: &Arc<Mutex<Connection>>, backoff: &mut HashMap<String, Backoff>) {
        let docs = Self::db(conn, |c| {
            let mut st = c.prepare_cached("SELECT alert FROM alerts WHERE state = 'firing'")?;
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
        let Ok(docs) = docs else {
            return;
        };
        let notes: Vec<Notification> = docs
            .iter()
            .filter_map(|d| serde_json::from_str::<AlertDoc>(d).ok())
            .map(|alert| Notification {
                key: String::new(),
                status: "firing".into(),
                alert,
            })
            .collect();
        if notes.is_empty() {
            return;
        }
        let refs: Vec<&Notification> = notes.iter().collect();
        'receivers: for (name, receiver) in &self.receivers {
            let Receiver::Alertmanager { url } = receiver else {
                continue;
            };
            for chunk in refs.chunks(REFRESH_CHUNK) {
                let body = alertmanager_body(chunk, now_micros(), self.config.alert_ttl);
                match post(&self.client, url, None, to_json(&body).into_bytes()).await {
                    Sent::Ok => {
                        self.metrics
                            .alert_refreshes
                            .with_label_values(&[&self.sink, name])
                            .inc_by(chunk.len() as u64);
                    }
                    Sent::Transient(why, after) => {
                        self.fail(backoff, name, after);
                        tracing::warn!(sink = %self.sink, receiver = %name, reason = why.as_str(), "re-posting firing alerts failed");
                        continue 'receivers;
                    }
                    Sent::Permanent(why) => {
                        tracing::error!(sink = %self.sink, receiver = %name, reason = why.as_str(), "Alertmanager refused the firing alerts");
                    }
                }
            }
        }
    }

    /// Forgets applied ids past their retention; caps each outbox.
    async fn prune(&self, conn: &Arc<Mutex<Connection>>) {
        let cutoff = now_micros().saturating_sub(micros(self.config.applied_retention));
        let max = i64::try_from(self.config.max_outbox).unwrap_or(i64::MAX);
        let names: Vec<String> = self.receivers.iter().map(|(n, _)| n.clone()).collect();
        let res = Self::db(conn, move |c| {
            c.execute("DELETE FROM applied WHERE applied_at < ?1", [cutoff])?;
            let mut dropped = Vec::new();
            for n in names {
                let d = c.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE receiver = ?1
                     ORDER BY id DESC LIMIT -1 OFFSET ?2)",
                    params![n, max],
                )?;
                dropped.push((n, d));
            }
            Ok(dropped)
        })
        .await;
        match res {
            Ok(dropped) => {
                for (n, d) in dropped {
                    if d > 0 {
                        self.metrics
                            .alert_notifications
                            .with_label_values(&[&self.sink, &n, "dropped"])
                            .inc_by(d as u64);
                        tracing::error!(sink = %self.sink, receiver = %n, dropped = d, "alert outbox over max_outbox; oldest notifications dropped");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sink = %self.sink, error = %e, "pruning the alert state failed")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The sink
// ---------------------------------------------------------------------------

/// The alerting sink: applies batches to the state file and wakes the
/// delivery task.
pub struct AlertsSink {
    name: String,
    engine: Engine,
    conn: Arc<Mutex<Connection>>,
    metrics: Metrics,
    wake: Arc<tokio::sync::Notify>,
}

impl AlertsSink {
    /// Opens the state file, reads the receivers' secrets and starts the
    /// delivery task (inside a tokio runtime). Errors name the field, never
    /// a secret.
    pub fn start(
        name: &str,
        config: &AlertsConfig,
        metrics: &Metrics,
    ) -> Result<AlertsSink, String> {
        let at = format!("sinks.{name}");
        let problems = config.problems(&at);
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{at}.path: {}: {e}", dir.display()))?;
        }
        let conn = open_db(&config.path)
            .map_err(|e| format!("{at}.path: {}: {e}", config.path.display()))?;
        let mut receivers = Vec::new();
        for (i, r) in config.receivers.iter().enumerate() {
            let ra = format!("{at}.receivers[{i}]");
            let built = match r {
                ReceiverConfig::Slack { url_env, .. } => Receiver::Slack {
                    url: std::env::var(url_env).map_err(|_| {
                        format!("{ra}.url_env: environment variable {url_env} is not set")
                    })?,
                },
                ReceiverConfig::Alertmanager { url, .. } => Receiver::Alertmanager {
                    url: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                },
                ReceiverConfig::Log { .. } => Receiver::Log,
            };
            receivers.push((r.name().to_owned(), built));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("{at}: HTTP client: {}", e.without_url()))?;
        let engine = Engine::new(config);
        for rule in &engine.rules {
            for c in [&metrics.alerts_raised, &metrics.alerts_resolved] {
                c.with_label_values(&[name, rule.name()]);
            }
        }
        for (r, _) in &receivers {
            for s in ["sent", "failed", "dropped"] {
                metrics.alert_notifications.with_label_values(&[name, r, s]);
            }
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        let deliverer = Deliverer {
            sink: name.into(),
            path: config.path.clone(),
            receivers,
            client,
            config: config.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
        };
        tokio::spawn(deliverer.run());
        Ok(AlertsSink {
            name: name.into(),
            engine,
            conn: Arc::new(Mutex::new(conn)),
            metrics: metrics.clone(),
            wake,
        })
    }

    fn count(&self, stats: &BatchStats) {
        let m = &self.metrics;
        for (rule, n) in &stats.raised {
            m.alerts_raised
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (rule, n) in &stats.resolved {
            m.alerts_resolved
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (rule, n) in &stats.suppressed {
            m.alerts_suppressed
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (reason, n) in &stats.ignored {
            m.alerting_ignored
                .with_label_values(&[self.name.as_str(), reason])
                .inc_by(*n);
        }
    }
}

impl Sink for AlertsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let events: Vec<Arc<Event>> = batch.to_vec();
            let engine = self.engine.clone();
            let conn = self.conn.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut c = conn
                    .lock()
                    .map_err(|_| "alert state connection poisoned".to_string())?;
                engine
                    .apply(&mut c, &events, now_micros())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match done {
                Ok(stats) => {
                    self.count(&stats);
                    if stats.enqueued > 0 {
                        self.wake.notify_one();
                    }
                    vec![Outcome::Accepted; batch.len()]
                }
                Err(e) => vec![Outcome::Retry(format!("alert state: {e}")); batch.len()],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Guest, GuestWifi};

    const MIN: i64 = 60_000_000;

    fn engine(rules: &str) -> Engine {
        let text = format!(
            "path = \"/tmp/unused.sqlite\"\n{rules}\n[[receivers]]\nkind = \"log\"\n[[receivers]]\nkind = \"alertmanager\"\nurl = \"http://am:9093\"\n"
        );
        let c: AlertsConfig = toml::from_str(&text).unwrap();
        assert_eq!(c.problems("sinks.a"), Vec::<String>::new());
        Engine::new(&c)
    }

    fn ev(id: &str, kind: &str, venue: &str, zone: &str, device: &str, at: i64) -> Arc<Event> {
        ev_full(id, kind, venue, zone, device, at, false, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn ev_full(
        id: &str,
        kind: &str,
        venue: &str,
        zone: &str,
        device: &str,
        at: i64,
        vip: bool,
        late: bool,
    ) -> Arc<Event> {
        Arc::new(Event {
            source: "purple".into(),
            event_id: id.into(),
            event_type: kind.into(),
            ordering_key: Some(venue.into()),
            sequence: Some(1),
            received_at_micros: at,
            occurred_at_micros: Some(at),
            late,
            guest_wifi: Some(GuestWifi {
                event_type: kind.into(),
                sequence: 1,
                occurred_at_micros: at,
                venue_id: venue.into(),
                venue_name: None,
                zone: Some(zone.into()),
                device_id: Some(device.into()),
                guest: Some(Guest {
                    id: format!("g-{device}"),
                    email: None,
                    first_name: Some("Ana".into()),
                    vip,
                }),
            }),
            body: serde_json::json!({}),
        })
    }

    fn outbox(c: &Connection, receiver: &str) -> Vec<Notification> {
        let mut st = c
            .prepare("SELECT notification FROM outbox WHERE receiver = ?1 ORDER BY id")
            .unwrap();
        st.query_map([receiver], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|s| serde_json::from_str(&s.unwrap()).unwrap())
            .collect()
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    const OCC: &str = "[[rules]]\nkind = \"zone_occupancy\"\nthreshold = 2\ncooldown = \"10m\"\n";

    #[test]
    fn occupancy_raises_once_holds_and_resolves_with_a_cooldown() {
        let e = engine(OCC);
        let mut c = db();
        let t0 = now_micros();
        let con =
            |i: usize, d: &str| ev(&format!("c{i}"), "device_connected", "v1", "lobby", d, t0);
        let dis = |i: usize, d: &str| {
            ev(
                &format!("d{i}"),
                "device_disconnected",
                "v1",
                "lobby",
                d,
                t0 + MIN,
            )
        };
        // 1, 2: at the threshold, nothing. 3: over. 4: still over, no repeat.
        let s = e
            .apply(
                &mut c,
                &[con(1, "a"), con(2, "b"), con(3, "c"), con(4, "d")],
                t0,
            )
            .unwrap();
        assert_eq!(s.raised.get("zone_occupancy"), Some(&1));
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].status, "firing");
        assert_eq!(o[0].alert.alertname, "ZoneOverCapacity");
        assert_eq!(o[0].alert.labels["zone"], "lobby");
        assert!(
            o[0].alert.annotations["summary"].contains("3 devices"),
            "{o:?}"
        );
        // The alertmanager receiver got its own row.
        assert_eq!(outbox(&c, "alertmanager").len(), 1);
        // Down to 3 (still over), then 2: resolved.
        e.apply(&mut c, &[dis(1, "a")], t0).unwrap();
        assert_eq!(outbox(&c, "log").len(), 1);
        let s = e.apply(&mut c, &[dis(2, "b")], t0).unwrap();
        assert_eq!(s.resolved.get("zone_occupancy"), Some(&1));
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].status, "resolved");
        assert_eq!(o[1].alert.ends_at, Some(t0 + MIN));
        assert_ne!(o[0].key, o[1].key);
        // Over again 2 minutes later: inside the cooldown, suppressed.
        let back = ev("c5", "device_connected", "v1", "lobby", "e", t0 + 2 * MIN);
        let s = e.apply(&mut c, &[back], t0).unwrap();
        assert_eq!(s.suppressed.get("zone_occupancy"), Some(&1));
        assert_eq!(outbox(&c, "log").len(), 2);
        // Still over after the cooldown: raised again, a new key.
        let later = ev("c6", "zone_entered", "v1", "lobby", "e", t0 + 11 * MIN);
        let s = e.apply(&mut c, &[later], t0 + 11 * MIN).unwrap();
        assert_eq!(s.raised.get("zone_occupancy"), Some(&1));
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 3);
        assert!(o[2].key.ends_with("-2-firing"), "{}", o[2].key);
    }

    #[test]
    fn a_batch_offered_again_changes_nothing() {
        let e = engine(OCC);
        let mut c = db();
        let t0 = now_micros();
        let batch: Vec<_> = (0..5)
            .map(|i| {
                ev(
                    &format!("c{i}"),
                    "device_connected",
                    "v1",
                    "lobby",
                    &format!("d{i}"),
                    t0,
                )
            })
            .collect();
        e.apply(&mut c, &batch, t0).unwrap();
        let before = outbox(&c, "log");
        let s = e.apply(&mut c, &batch, t0).unwrap();
        assert_eq!(s.ignored.get("duplicate"), Some(&5));
        assert_eq!(s.enqueued, 0);
        assert_eq!(outbox(&c, "log"), before);
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn late_and_stale_events_do_not_drive_live_state() {
        let e = engine(&format!("{OCC}[[rules]]\nkind = \"vip_arrival\"\n"));
        let mut c = db();
        let now = now_micros();
        let week_ago = now - 7 * 24 * 60 * MIN;
        let mut batch = Vec::new();
        for i in 0..5 {
            // A replay of last week: VIP guests, over the threshold.
            batch.push(ev_full(
                &format!("old{i}"),
                "guest_connects",
                "v1",
                "lobby",
                &format!("d{i}"),
                week_ago,
                true,
                false,
            ));
            // Late events of now.
            batch.push(ev_full(
                &format!("late{i}"),
                "guest_connects",
                "v1",
                "lobby",
                &format!("l{i}"),
                now,
                true,
                true,
            ));
        }
        let s = e.apply(&mut c, &batch, now).unwrap();
        assert_eq!(s.ignored.get("stale"), Some(&5));
        assert_eq!(s.ignored.get("late"), Some(&5));
        assert!(outbox(&c, "log").is_empty());
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn vip_arrivals_notify_once_per_cooldown_and_never_resolve() {
        let e = engine("[[rules]]\nkind = \"vip_arrival\"\ncooldown = \"1h\"\n");
        let mut c = db();
        let t0 = now_micros();
        let vip =
            |id: &str, at: i64| ev_full(id, "guest_connects", "v1", "bar", "x", at, true, false);
        let plain = ev_full("p", "guest_connects", "v1", "bar", "y", t0, false, false);
        e.apply(&mut c, &[vip("a", t0), plain, vip("b", t0 + MIN)], t0)
            .unwrap();
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 1);
        assert!(o[0].alert.one_shot);
        assert_eq!(o[0].alert.labels["guest"], "g-x");
        assert_eq!(o[0].alert.labels["alertname"], "VipArrival");
        // Disconnect: no resolve for a one-shot.
        e.apply(
            &mut c,
            &[ev(
                "d",
                "device_disconnected",
                "v1",
                "bar",
                "x",
                t0 + 2 * MIN,
            )],
            t0,
        )
        .unwrap();
        assert_eq!(outbox(&c, "log").len(), 1);
        // Past the cooldown: a new arrival notifies again.
        e.apply(&mut c, &[vip("c", t0 + 61 * MIN)], t0 + 61 * MIN)
            .unwrap();
        assert_eq!(outbox(&c, "log").len(), 2);
    }

    #[test]
    fn dwell_raises_as_the_venue_clock_passes_the_threshold_and_resolves_on_leave() {
        let e = engine("[[rules]]\nkind = \"dwell\"\nthreshold = \"30m\"\n");
        let mut c = db();
        let t0 = now_micros() - 40 * MIN;
        let now = now_micros();
        let big = Duration::from_secs(3600);
        let e = Engine {
            max_event_age: big,
            ..e
        };
        e.apply(
            &mut c,
            &[ev("a", "device_connected", "v1", "pool", "x", t0)],
            now,
        )
        .unwrap();
        e.apply(
            &mut c,
            &[ev(
                "b",
                "device_connected",
                "v1",
                "pool",
                "y",
                t0 + 20 * MIN,
            )],
            now,
        )
        .unwrap();
        assert!(outbox(&c, "log").is_empty());
        // Another device's event moves the venue clock past x's threshold.
        e.apply(
            &mut c,
            &[ev(
                "c",
                "device_connected",
                "v1",
                "pool",
                "z",
                t0 + 31 * MIN,
            )],
            now,
        )
        .unwrap();
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].alert.labels["device"], "x");
        assert_eq!(o[0].alert.starts_at, t0 + 30 * MIN);
        // More events: no repeat.
        e.apply(
            &mut c,
            &[ev(
                "d",
                "guest_registered",
                "v1",
                "pool",
                "z",
                t0 + 32 * MIN,
            )],
            now,
        )
        .unwrap();
        assert_eq!(outbox(&c, "log").len(), 1);
        e.apply(
            &mut c,
            &[ev(
                "e",
                "device_disconnected",
                "v1",
                "pool",
                "x",
                t0 + 33 * MIN,
            )],
            now,
        )
        .unwrap();
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].status, "resolved");
    }

    #[test]
    fn sessions_not_heard_of_expire_and_stop_counting() {
        let e = engine(OCC);
        let e = Engine {
            session_timeout: Duration::from_secs(600),
            max_event_age: Duration::from_secs(3600),
            ..e
        };
        let mut c = db();
        let now = now_micros();
        let t0 = now - 30 * MIN;
        let batch: Vec<_> = (0..3)
            .map(|i| {
                ev(
                    &format!("c{i}"),
                    "device_connected",
                    "v1",
                    "lobby",
                    &format!("d{i}"),
                    t0,
                )
            })
            .collect();
        e.apply(&mut c, &batch, now).unwrap();
        assert_eq!(outbox(&c, "log").len(), 1);
        // 20 minutes later another zone's event: the three sessions expire.
        e.apply(
            &mut c,
            &[ev("x", "device_connected", "v1", "bar", "q", t0 + 20 * MIN)],
            now,
        )
        .unwrap();
        let o = outbox(&c, "log");
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(o[1].status, "resolved");
    }

    #[test]
    fn check_names_bad_fields_without_quoting_secrets() {
        // SAFETY: single-threaded use of a variable only this test reads.
        unsafe {
            std::env::set_var(
                "ALERTS_TEST_SLACK_URL",
                "ftp://hooks.example/T000/B000/s3cr3t",
            );
        }
        let text = r#"
            path = "/tmp/x.sqlite"
            alert_ttl = "30s"
            [[rules]]
            kind = "zone_occupancy"
            threshold = 0
            [[rules]]
            kind = "zone_occupancy"
            threshold = -3
            [[rules]]
            kind = "dwell"
            name = "long stay"
            threshold = "0s"
            [[rules]]
            kind = "vip_arrival"
            types = ["guest_arrives"]
            [[receivers]]
            kind = "slack"
            url_env = "ALERTS_TEST_SLACK_URL"
            [[receivers]]
            kind = "slack"
            name = "ops"
            url_env = "ALERTS_TEST_UNSET_VARIABLE"
            [[receivers]]
            kind = "alertmanager"
            url = "am:9093"
        "#;
        let c: AlertsConfig = toml::from_str(text).unwrap();
        let all = c.problems("sinks.alerts").join("\n");
        for needle in [
            "sinks.alerts.rules[0] (zone_occupancy).threshold: must be at least 1 (got 0)",
            "sinks.alerts.rules[1] (zone_occupancy).name: another rule has this name",
            "threshold: must be at least 1 (got -3)",
            "sinks.alerts.rules[2] (long stay).name: must be 1-64",
            "sinks.alerts.rules[2] (long stay).threshold: must be above 0",
            "\"guest_arrives\" is not a guest-WiFi event type",
            "sinks.alerts.receivers[0] (slack).url_env: the value of ALERTS_TEST_SLACK_URL must be an https:// or http:// URL",
            "sinks.alerts.receivers[1] (ops).url_env: environment variable ALERTS_TEST_UNSET_VARIABLE is not set",
            "sinks.alerts.receivers[2] (alertmanager).url: must be an https:// or http:// URL",
            "sinks.alerts.alert_ttl: must be longer than resend_interval",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("s3cr3t"), "{all}");
        let bad: Result<AlertsConfig, _> =
            toml::from_str("path = \"x\"\n[[rules]]\nkind = \"zone_temperature\"\n");
        let bad = bad.unwrap_err().to_string();
        assert!(
            bad.contains("rules[0]") && bad.contains("zone_temperature"),
            "{bad}"
        );
    }

    #[test]
    fn alertmanager_bodies_carry_labels_and_times() {
        let doc = AlertDoc {
            alertname: "ZoneOverCapacity".into(),
            labels: BTreeMap::from([("alertname".into(), "ZoneOverCapacity".into())]),
            annotations: summary("3 devices".into()),
            starts_at: 1_000_000,
            ends_at: Some(61_000_000),
            one_shot: false,
        };
        let firing = Notification {
            key: "k".into(),
            status: "firing".into(),
            alert: doc.clone(),
        };
        let resolved = Notification {
            status: "resolved".into(),
            ..firing.clone()
        };
        let now = 3_600_000_000;
        let b = alertmanager_body(&[&firing, &resolved], now, Duration::from_secs(300));
        assert_eq!(b[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        assert_eq!(b[0]["endsAt"], "1970-01-01T01:05:00.000Z");
        assert_eq!(b[1]["endsAt"], "1970-01-01T00:01:01.000Z");
        assert_eq!(b[0]["labels"]["alertname"], "ZoneOverCapacity");
        assert!(slack_text(&firing).contains("FIRING"));
        let sneaky = Notification {
            alert: AlertDoc {
                annotations: summary("<!channel> & co".into()),
                ..doc
            },
            ..firing
        };
        assert!(slack_text(&sneaky).contains("&lt;!channel&gt; &amp; co"));
    }
}
