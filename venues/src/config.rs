//! The venue view's configuration: TOML, overridable by `VENUES_`
//! environment variables (`VENUES_HTTP__LISTEN`), checked as a whole with
//! one line per problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the processors' state changelog is.
    pub kafka: KafkaConfig,
    /// The HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Bounds of the view.
    #[serde(default)]
    pub view: ViewConfig,
    /// Capacity used where a venue names none.
    #[serde(default)]
    pub capacity: CapacityConfig,
    /// Per venue: capacity, zones, time zone.
    #[serde(default)]
    pub venues: BTreeMap<String, VenueConfig>,
    /// Where footfall, arrivals and dwell come from (the analytics store);
    /// none: venue pages show the live numbers and the last hour only.
    #[serde(default)]
    pub history: Option<HistoryConfig>,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
}

/// The changelog to follow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,...`.
    pub brokers: String,
    /// The processors' state changelog (their `state.changelog_topic`,
    /// by default `<their kafka.group_id>-state`).
    pub changelog_topic: String,
    /// The name of the processors' alerting sink, whose venue state the
    /// view reads (the key of its `[sinks.<name>]` table).
    pub sink: String,
    /// This client's id in the brokers' logs.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Extra librdkafka settings; TLS and SASL go in `security`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// TLS and SASL to the brokers, secrets from the environment or files
    /// (see [`plumbing::kafka::Security`]).
    #[serde(default)]
    pub security: plumbing::kafka::Security,
}

fn default_client_id() -> String {
    "venues".into()
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token every `/api`
    /// request must carry; none: the API is open (a trusted network).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The environment variable holding `user:password` that the pages and
    /// the API accept with Basic authentication (what a browser on a wall
    /// screen sends); with `token_env`, either is accepted.
    #[serde(default)]
    pub basic_env: Option<String>,
    /// Live streams (SSE) open at once; more are refused with 503 and
    /// `Retry-After`.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// The kernel's send buffer of each connection, in bytes (`SO_SNDBUF`;
    /// Linux doubles it for its bookkeeping). Bounds what a client that
    /// stopped reading holds in this host's memory, and makes such a
    /// client fall behind the live stream, and be dropped, after this
    /// much rather than after the kernel's autotuned maximum (4 MiB a
    /// connection by default). 0: the kernel's autotuning.
    #[serde(default = "default_send_buffer")]
    pub send_buffer: u32,
}

fn default_send_buffer() -> u32 {
    256 * 1024
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: default_listen(),
            token_env: None,
            basic_env: None,
            max_streams: default_max_streams(),
            send_buffer: default_send_buffer(),
        }
    }
}

fn default_max_streams() -> usize {
    1_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

/// How much the view holds at most (its memory bound).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Venues; records of further venues are refused and counted.
    #[serde(default = "default_max_venues")]
    pub max_venues: usize,
    /// Zones per venue.
    #[serde(default = "default_max_zones")]
    pub max_zones: usize,
    /// Show the guest an alert is about (a VIP's id); off: masked.
    #[serde(default)]
    pub show_guest_names: bool,
    /// The time zone of venues that name none (IANA name): their "today"
    /// and "the same weekday last week".
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".into()
}

impl Default for ViewConfig {
    fn default() -> ViewConfig {
        ViewConfig {
            max_venues: default_max_venues(),
            max_zones: default_max_zones(),
            show_guest_names: false,
            time_zone: default_time_zone(),
        }
    }
}

fn default_max_venues() -> usize {
    20_000
}

fn default_max_zones() -> usize {
    64
}

/// Capacity where a venue names none.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// Devices a zone holds (the processors' `zone_occupancy` threshold is
    /// the usual choice).
    #[serde(default = "default_zone_capacity")]
    pub zone: u32,
    /// The share of capacity from which a zone or venue is "near"
    /// capacity (0 to 1).
    #[serde(default = "default_near")]
    pub near: f64,
}

impl Default for CapacityConfig {
    fn default() -> CapacityConfig {
        CapacityConfig {
            zone: default_zone_capacity(),
            near: default_near(),
        }
    }
}

fn default_zone_capacity() -> u32 {
    50
}

fn default_near() -> f64 {
    0.8
}

/// One venue's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VenueConfig {
    /// A name to show.
    #[serde(default)]
    pub name: Option<String>,
    /// Devices the venue holds; none: the sum of its zones' capacities.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Devices each zone holds; zones not named use `capacity.zone`.
    #[serde(default)]
    pub zones: BTreeMap<String, u32>,
    /// Its time zone (IANA name, `Europe/London`); none: `view.time_zone`.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// The analytics store the venue pages' history is read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// `postgres` (shared by every processor instance) or `sqlite` (the
    /// embedded store of a single host).
    pub kind: HistoryKind,
    /// PostgreSQL: the URL (prefer `url_env`: it may hold a password).
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: the environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// SQLite: the processors' analytics file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How long a venue's history is reused before it is asked again.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: std::time::Duration,
}

/// Which analytics store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// PostgreSQL.
    Postgres,
    /// The embedded SQLite file.
    Sqlite,
}

fn default_refresh() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

impl HistoryConfig {
    /// The PostgreSQL URL, from `url` or the variable `url_env` names.
    pub fn postgres_url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => Err("history: give url or url_env, not both".into()),
            (Some(u), None) => Ok(u.clone()),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| format!("history.url_env: {var} is not set"))
            }
            (None, None) => Err("history: kind = \"postgres\" needs url or url_env".into()),
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.kind {
            HistoryKind::Postgres => {
                if let Err(e) = self.postgres_url() {
                    p.push(e);
                }
                if self.path.is_some() {
                    p.push("history.path: only for kind = \"sqlite\"".into());
                }
            }
            HistoryKind::Sqlite => {
                match &self.path {
                    None => p.push("history.path: kind = \"sqlite\" needs the file".into()),
                    Some(path) if !path.is_file() => p.push(format!(
                        "history.path: {} is not a file (the processors' analytics store)",
                        path.display()
                    )),
                    Some(_) => {}
                }
                if self.url.is_some() || self.url_env.is_some() {
                    p.push("history.url: only for kind = \"postgres\"".into());
                }
            }
        }
        if self.refresh.is_zero() {
            p.push("history.refresh: must be more than zero".into());
        }
        p
    }
}

/// Logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: plumbing::LogFormat,
}

/// A configuration that cannot be used: every problem, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", path.display(), problems.join("; "))]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, each naming its field.
    pub problems: Vec<String>,
}

impl Config {
    /// Loads `path` with the `VENUES_` environment layer.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::checked(plumbing::load_config(path, "VENUES_"), path)
    }

    /// Parses TOML text with no environment layer (tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::checked(plumbing::parse_config(text), Path::new("<inline>"))
    }

    fn checked(loaded: Result<Config, Vec<String>>, path: &Path) -> Result<Config, ConfigError> {
        plumbing::checked(loaded, Config::problems).map_err(|problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Cross-field checks; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            p.push("kafka.brokers: empty".into());
        }
        p.extend(plumbing::kafka::options_problems(&self.kafka.options));
        p.extend(self.kafka.security.problems());
        if !plumbing::valid_topic(&self.kafka.changelog_topic) {
            p.push(format!(
                "kafka.changelog_topic: {:?} is not a valid topic name",
                self.kafka.changelog_topic
            ));
        }
        if self.kafka.sink.is_empty() || self.kafka.sink.contains('\u{1f}') {
            p.push("kafka.sink: must name the processors' alerting sink".into());
        }
        if self.view.max_venues == 0 {
            p.push("view.max_venues: must be at least 1".into());
        }
        if self.http.max_streams == 0 {
            p.push("http.max_streams: must be at least 1".into());
        }
        if self.view.max_zones == 0 {
            p.push("view.max_zones: must be at least 1".into());
        }
        if self.capacity.zone == 0 {
            p.push("capacity.zone: must be at least 1".into());
        }
        if !(self.capacity.near > 0.0 && self.capacity.near <= 1.0) {
            p.push(format!(
                "capacity.near: {} is not a share between 0 (excluded) and 1",
                self.capacity.near
            ));
        }
        if jiff::tz::TimeZone::get(&self.view.time_zone).is_err() {
            p.push(format!(
                "view.time_zone: {:?} is not a known time zone (an IANA name such as Europe/London)",
                self.view.time_zone
            ));
        }
        if let Some(h) = &self.history {
            p.extend(h.problems());
        }
        for (id, v) in &self.venues {
            if let Some(tz) = v
                .time_zone
                .as_ref()
                .filter(|tz| jiff::tz::TimeZone::get(tz).is_err())
            {
                p.push(format!(
                    "venues.{id}.time_zone: {tz:?} is not a known time zone (an IANA name such as Europe/London)"
                ));
            }
            if v.capacity == Some(0) {
                p.push(format!("venues.{id}.capacity: must be at least 1"));
            }
            for (zone, n) in &v.zones {
                if *n == 0 {
                    p.push(format!("venues.{id}.zones.{zone}: must be at least 1"));
                }
            }
        }
        if let Some(var) = &self.http.basic_env {
            match std::env::var(var) {
                Ok(t) if t.split_once(':').is_some_and(|(u, p)| !u.is_empty() && p.len() >= 12) => {}
                Ok(_) => p.push(format!(
                    "http.basic_env: {var} must hold user:password, the password 12 characters or more"
                )),
                Err(_) => p.push(format!("http.basic_env: {var} is not set")),
            }
        }
        if let Some(var) = &self.http.token_env {
            match std::env::var(var) {
                Ok(t) if t.len() >= 16 => {}
                Ok(_) => p.push(format!(
                    "http.token_env: the token in {var} is shorter than 16 characters"
                )),
                Err(_) => p.push(format!("http.token_env: {var} is not set")),
            }
        }
        p
    }

    /// `venue`'s time zone name.
    pub fn time_zone(&self, venue: &str) -> &str {
        self.venues
            .get(venue)
            .and_then(|v| v.time_zone.as_deref())
            .unwrap_or(&self.view.time_zone)
    }

    /// The capacity of `zone` at `venue`.
    pub fn zone_capacity(&self, venue: &str, zone: &str) -> u32 {
        self.venues
            .get(venue)
            .and_then(|v| v.zones.get(zone))
            .copied()
            .unwrap_or(self.capacity.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\nchangelog_topic = \"p-state\"\nsink = \"alerts\"\n";

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.http.listen.port(), 8090);
        assert_eq!(c.capacity.zone, 50);
        assert_eq!(c.zone_capacity("v", "lobby"), 50);
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let text = format!(
            "{MINIMAL}[capacity]\nzone = 0\nnear = 1.5\n[view]\nmax_venues = 0\n[venues.v]\ncapacity = 0\nzones = {{ lobby = 0 }}\ntime_zone = \"Mars/Olympus\"\n[http]\ntoken_env = \"VENUES_TEST_TOKEN_THAT_IS_NOT_SET\"\n[history]\nkind = \"sqlite\"\npath = \"/nonexistent/analytics.db\"\nrefresh = \"0s\"\n"
        );
        let e = Config::from_toml(&text).unwrap_err();
        let all = e.problems.join("\n");
        for field in [
            "capacity.zone",
            "capacity.near: 1.5",
            "view.max_venues",
            "venues.v.capacity",
            "venues.v.zones.lobby",
            "http.token_env: VENUES_TEST_TOKEN_THAT_IS_NOT_SET is not set",
            "venues.v.time_zone: \"Mars/Olympus\" is not a known time zone",
            "history.path: /nonexistent/analytics.db is not a file",
            "history.refresh",
        ] {
            assert!(all.contains(field), "{field} in {all}");
        }
        let e = Config::from_toml("[kafka]\nbrokers = \"b\"\n").unwrap_err();
        assert!(e.problems.join(" ").contains("changelog_topic"), "{e}");
        let e = Config::from_toml(&format!("{MINIMAL}[http]\nlisten = \"nowhere\"\n")).unwrap_err();
        assert!(e.problems.join(" ").contains("listen"), "{e}");
        let e =
            Config::from_toml(&format!("{MINIMAL}[history]\nkind = \"postgres\"\n")).unwrap_err();
        assert!(e.problems.join(" ").contains("needs url or url_env"), "{e}");
        let e =
            Config::from_toml(&format!("{MINIMAL}[view]\ntime_zone = \"Nowhere\"\n")).unwrap_err();
        assert!(e.problems.join(" ").contains("view.time_zone"), "{e}");
    }

    #[test]
    fn a_venue_takes_its_own_time_zone_or_the_views() {
        let c = Config::from_toml(&format!(
            "{MINIMAL}[view]\ntime_zone = \"Europe/London\"\n[venues.ny]\ntime_zone = \"America/New_York\"\n"
        ))
        .unwrap();
        assert_eq!(c.time_zone("ny"), "America/New_York");
        assert_eq!(c.time_zone("other"), "Europe/London");
        assert_eq!(Config::from_toml(MINIMAL).unwrap().time_zone("x"), "UTC");
    }

    #[test]
    fn kafka_security_problems_are_reported_with_the_field() {
        let text = format!(
            "{MINIMAL}options = {{ \"ssl.ca.location\" = \"/ca.pem\" }}\n[kafka.security]\nprotocol = \"ssl\"\ncert_file = \"/nonexistent/client.pem\"\n[kafka.security.sasl]\nmechanism = \"OAUTHBEARER\"\n"
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for needle in [
            "kafka.options.ssl.ca.location: TLS and SASL are set with [kafka.security]",
            "kafka.security.cert_file: /nonexistent/client.pem cannot be read",
            "kafka.security.cert_file: set without key_file",
            "kafka.security.sasl: set, but protocol is ssl (no SASL)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }
}
