//! A CRM sink's settings (`[sinks.NAME]` with `kind = "crm"`), their
//! defaults and their checks ([`CrmConfig::problems`]), which the
//! processors' config delegates to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::template::{Template, check_path};

/// A CRM sink's settings (`[sinks.NAME]` with `kind = "crm"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// Where each event is `POST`ed: `https://host/path` (TLS, rustls,
    /// verified against the Mozilla roots, plus `ca_file` if given) or
    /// `http://host:port/path` (a proxy on the same network).
    pub url: String,
    /// Extra trusted certificate authorities (PEM), e.g. a corporate CA
    /// in front of the CRM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Request header carrying the credential, e.g. `Authorization`.
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Environment variable holding that header's value (e.g.
    /// `Bearer ...`), read at start; never in the config text.
    #[serde(default)]
    pub auth_env: Option<String>,
    /// Path to the JSON template file (give this or `template_json`).
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// The JSON template inline (give this or `template`).
    #[serde(default)]
    pub template_json: Option<String>,
    /// Template paths that must be present and not null, else the event is
    /// dead-lettered without a request, e.g. `["guest.email"]`.
    #[serde(default)]
    pub required: Vec<String>,
    /// One request, connect to last byte.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most requests in flight to this destination.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Most request starts per second to this destination.
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// Attempts within one offer of a batch before answering `Retry`.
    #[serde(default = "default_attempts_per_call")]
    pub attempts_per_call: u32,
    /// Attempts per event over all offers before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First pause between attempts (full jitter, doubling).
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured.
    #[serde(default = "default_retry_after_max", with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Transient failures in a row that open the circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe.
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

const fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_concurrency() -> usize {
    8
}
const fn default_rate() -> f64 {
    50.0
}
const fn default_attempts_per_call() -> u32 {
    3
}
const fn default_max_attempts() -> u32 {
    10
}
const fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
const fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
const fn default_retry_after_max() -> Duration {
    Duration::from_secs(30)
}
const fn default_breaker_failures() -> u32 {
    5
}
const fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(10)
}

/// The certificates of a PEM file (at least one).
pub(super) fn load_ca(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

impl CrmConfig {
    /// Every problem, each naming its field under `at` (`sinks.NAME`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => p.push(format!(
                "{at}.url: must be an https:// or http:// URL with a host"
            )),
        }
        if let Some(f) = &self.ca_file {
            if let Err(e) = load_ca(f) {
                p.push(format!("{at}.ca_file: {e}"));
            }
        }
        match (&self.auth_header, &self.auth_env) {
            (Some(h), Some(e)) => {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    p.push(format!("{at}.auth_header: {h:?} is not a valid header name"));
                }
                if e.is_empty() {
                    p.push(format!("{at}.auth_env: must name an environment variable"));
                }
            }
            (None, None) => {}
            _ => p.push(format!(
                "{at}.auth_header, {at}.auth_env: give both (header name, variable holding its value) or neither"
            )),
        }
        match self.load_template() {
            Ok(t) => {
                for r in &self.required {
                    if let Err(e) = check_path(r) {
                        p.push(format!("{at}.required: {e}"));
                    }
                }
                let _ = t;
            }
            Err(e) => p.push(format!("{at}.{e}")),
        }
        if self.timeout.is_zero() {
            p.push(format!("{at}.timeout: must be above 0"));
        }
        if self.max_concurrency == 0 {
            p.push(format!("{at}.max_concurrency: must be at least 1"));
        }
        if !(self.rate_per_second.is_finite() && self.rate_per_second > 0.0) {
            p.push(format!("{at}.rate_per_second: must be above 0"));
        }
        if self.attempts_per_call == 0 {
            p.push(format!("{at}.attempts_per_call: must be at least 1"));
        }
        if self.max_attempts < self.attempts_per_call {
            p.push(format!(
                "{at}.max_attempts: must be at least attempts_per_call ({})",
                self.attempts_per_call
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            p.push(format!(
                "{at}.backoff_initial: must be above 0 and at most backoff_max"
            ));
        }
        if self.breaker_failures == 0 {
            p.push(format!("{at}.breaker_failures: must be at least 1"));
        }
        if self.breaker_cooldown.is_zero() {
            p.push(format!("{at}.breaker_cooldown: must be above 0"));
        }
        p
    }

    /// Reads and checks the template; the error names the field.
    pub fn load_template(&self) -> Result<Template, String> {
        let text = match (&self.template, &self.template_json) {
            (Some(path), None) => std::fs::read_to_string(path)
                .map_err(|e| format!("template: {}: {e}", path.display()))?,
            (None, Some(text)) => text.clone(),
            _ => return Err("template, template_json: give exactly one".into()),
        };
        let field = if self.template.is_some() {
            "template"
        } else {
            "template_json"
        };
        Template::parse(&text).map_err(|e| format!("{field}: {e}"))
    }
}
