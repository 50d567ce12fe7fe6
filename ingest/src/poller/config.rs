//! The poller's configuration: `[poller]` (where its metrics are served,
//! where cursors are kept) and each source's `poll` table, with their
//! checks. Composed into [`crate::config::Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{Secret, SecretError, SecretRef};

/// `[poller]`: settings of `ingest poll` as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    /// Where `/metrics` and `/healthz` of `ingest poll` are served; port 0
    /// picks a free port (printed at start).
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// The compacted topic holding each source's cursor (key: the source
    /// name), so a restarted poller, on this host or another, continues
    /// where the last one stopped.
    #[serde(default = "default_cursor_topic")]
    pub cursor_topic: String,
    /// The processors' reconcile topic (their `kafka.reconcile_topic`):
    /// each skipped sequence gap there is fetched from its source's
    /// `range_url`. Absent: gaps are not asked for.
    #[serde(default)]
    pub reconcile_topic: Option<String>,
    /// The compacted topic where gaps the provider could not fill either
    /// are recorded, once per gap (`ingest unfillable` lists them).
    #[serde(default = "default_unfillable_topic")]
    pub unfillable_topic: String,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            metrics_listen: default_metrics_listen(),
            cursor_topic: default_cursor_topic(),
            reconcile_topic: None,
            unfillable_topic: default_unfillable_topic(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_cursor_topic() -> String {
    plumbing::DEFAULT_POLL_CURSOR_TOPIC.into()
}
fn default_unfillable_topic() -> String {
    plumbing::DEFAULT_UNFILLABLE_TOPIC.into()
}

/// `[sources.NAME.poll]`: read the provider's REST history API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// The provider's event feed, e.g.
    /// `https://api.example.com/api/v1/events`: paged with `cursor` and
    /// `limit`, a time range with `since` and `until`.
    pub url: String,
    /// Environment variable holding the API's bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the API's bearer token (instead of `token_env`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Scheduled polling: follow the feed from the stored cursor this
    /// often. Absent: no scheduled polling (reconciliation only).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Events asked for per page (1-1000).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Requests sent to the provider in any minute, retries included; the
    /// poller waits rather than exceed it.
    #[serde(default = "default_max_requests_per_minute")]
    pub max_requests_per_minute: u32,
    /// The reconciliation sweep: re-read the last `window` of the feed
    /// every `interval`. Absent: no sweep.
    #[serde(default)]
    pub reconcile: Option<ReconcileConfig>,
    /// One ordering key's events by sequence, `{key}` standing for the
    /// ordering key, e.g.
    /// `https://api.example.com/api/v1/venues/{key}/events` (asked with
    /// `from_sequence` and `to_sequence`): where a gap the processors
    /// skipped is fetched. Absent: this source's gaps are not fetched.
    #[serde(default)]
    pub range_url: Option<String>,
    /// Longest wait for one page.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// The reconciliation sweep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// How far back each sweep reads (by when the provider recorded the
    /// event).
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// How often a sweep runs.
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub interval: Duration,
}

const fn default_page_size() -> usize {
    100
}
const fn default_max_requests_per_minute() -> u32 {
    60
}
const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_window() -> Duration {
    Duration::from_secs(6 * 3600)
}
const fn default_reconcile_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Largest `page_size`.
pub const MAX_PAGE_SIZE: usize = 1000;

impl PollConfig {
    /// Every problem, each naming its field under `at` (`sources.NAME.poll`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => p.push(format!(
                "{at}.url: {:?} must be an http or https URL",
                self.url
            )),
            Err(e) => p.push(format!("{at}.url: {:?} is not a URL ({e})", self.url)),
        }
        if self.token_env.is_some() == self.token_file.is_some() {
            p.push(format!(
                "{at}: name exactly one of `token_env` or `token_file` (the API's bearer token)"
            ));
        }
        if let Some(i) = self.interval
            && i < Duration::from_millis(100)
        {
            p.push(format!("{at}.interval: must be at least 100ms"));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            p.push(format!(
                "{at}.page_size: {} must be between 1 and {MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if !(1..=100_000).contains(&self.max_requests_per_minute) {
            p.push(format!(
                "{at}.max_requests_per_minute: {} must be between 1 and 100000",
                self.max_requests_per_minute
            ));
        }
        if self.request_timeout < Duration::from_millis(100)
            || self.request_timeout > Duration::from_secs(300)
        {
            p.push(format!(
                "{at}.request_timeout: must be between 100ms and 5m"
            ));
        }
        if let Some(r) = &self.reconcile {
            if r.window < Duration::from_secs(1) {
                p.push(format!("{at}.reconcile.window: must be at least 1s"));
            }
            if r.interval < Duration::from_millis(100) {
                p.push(format!("{at}.reconcile.interval: must be at least 100ms"));
            }
        }
        if let Some(r) = &self.range_url {
            let sample = r.replace("{key}", "k");
            if !r.contains("{key}") {
                p.push(format!(
                    "{at}.range_url: {r:?} must contain {{key}} (the ordering key)"
                ));
            } else if !reqwest::Url::parse(&sample)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            {
                p.push(format!(
                    "{at}.range_url: {r:?} must be an http or https URL"
                ));
            }
        }
        if self.interval.is_none() && self.reconcile.is_none() && self.range_url.is_none() {
            p.push(format!(
                "{at}: set `interval` (scheduled polling), `reconcile` (the sweep), `range_url` (gaps), or several"
            ));
        }
        p
    }

    /// Reads the bearer token from the environment or the file.
    pub fn token(&self) -> Result<Secret, SecretError> {
        SecretRef {
            id: "poll-token".into(),
            env: self.token_env.clone(),
            file: self.token_file.clone(),
        }
        .load()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SIG: &str =
        r#"signature = { scheme = "purple", secrets = [{ id = "a", env = "PATH" }] }"#;

    #[test]
    fn defaults_and_a_good_poll_table() {
        let c = Config::from_toml(&format!(
            "[sources.p]\n{SIG}\npoll = {{ url = \"http://127.0.0.1:9/api/v1/events\", token_env = \"T\", interval = \"10s\", reconcile = {{}} }}\n"
        ))
        .unwrap();
        let poll = c.sources["p"].poll.as_ref().unwrap();
        assert_eq!(poll.page_size, 100);
        assert_eq!(poll.max_requests_per_minute, 60);
        let r = poll.reconcile.as_ref().unwrap();
        assert_eq!(r.window.as_secs(), 6 * 3600);
        assert_eq!(r.interval.as_secs(), 3600);
        assert_eq!(c.poller.cursor_topic, "webhooks.poll-cursors");
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = Config::from_toml(&format!(
            "[poller]\ncursor_topic = \"bad topic\"\n[sources.p]\n{SIG}\npoll = {{ url = \"ftp:/x\", token_env = \"T\", token_file = \"/t\", page_size = 0, max_requests_per_minute = 0 }}\n"
        ))
        .unwrap_err();
        let all = e.problems.join("\n");
        for want in [
            "poller.cursor_topic: \"bad topic\" is not a valid topic name",
            "sources.p.poll.url: \"ftp:/x\" must be an http or https URL",
            "sources.p.poll: name exactly one of `token_env` or `token_file`",
            "sources.p.poll.page_size: 0 must be between 1 and 1000",
            "sources.p.poll.max_requests_per_minute: 0 must be between 1 and 100000",
            "sources.p.poll: set `interval` (scheduled polling), `reconcile` (the sweep), `range_url` (gaps), or several",
        ] {
            assert!(all.contains(want), "{want:?} not in:\n{all}");
        }
        let e = Config::from_toml(&format!(
            "[sources.p]\n{SIG}\npoll = {{ url = \"http://x\", token_env = \"T\", interval = \"5m\", every = \"1s\" }}\n"
        ))
        .unwrap_err();
        assert!(e.problems.join("\n").contains("every"), "{e}");
    }
}
