//! Plumbing shared by the `ingest` and `processors` binaries, kept in one
//! place so they log, stop and report configuration problems alike:
//!
//! - [`LogFormat`] and [`init_logs`]: `text` or `json` lines on stderr,
//!   filtered by an environment variable;
//! - [`shutdown_signal`]: SIGINT or SIGTERM;
//! - [`load_config`], [`parse_config`]: a TOML config with environment
//!   overrides, every problem as a line naming its field;
//! - [`describe_figment`]: one line per configuration error, naming the
//!   field;
//! - [`valid_topic`]: Kafka's topic-name rule;
//! - [`route_librdkafka_log`]: librdkafka's log lines into `tracing`;
//! - [`kafka`]: TLS and SASL to the brokers (`[kafka.security]`) and
//!   [`kafka::client_config`], where every librdkafka client's settings
//!   start;
//! - [`runtime::build`]: the tokio runtime, its worker count from the
//!   binary's setting, `TOKIO_WORKER_THREADS` or the CPUs it may use;
//! - [`metrics::Catalogue`]: one Prometheus registry per process that also
//!   lists what was declared in it (for the naming and dashboard checks);
//! - [`json_pointer::array_index`]: RFC 6901's array index rule, for the
//!   JSON pointer walks of both binaries.
//!
//! It holds no business logic and depends on no other crate of ours.

pub mod json_pointer;
pub mod kafka;
pub mod metrics;
pub mod runtime;

use rdkafka::config::RDKafkaLogLevel;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `format` lines on stderr, filtered by
/// the environment variable `filter_env` (default `info,librdkafka=warn`).
pub fn init_logs(format: LogFormat, filter_env: &str) {
    let filter = EnvFilter::try_from_env(filter_env)
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn"));
    // Colour only for a person at a terminal: a log collector (kubectl
    // logs, Loki, a file) gets plain `key=value` text it can search.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Reads the TOML file `path` with environment overrides
/// `PREFIX_SECTION__KEY` (`env_prefix` is `PREFIX_`) into `T`; every
/// problem as a line naming its field. Cross-field checks are the
/// caller's.
pub fn load_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    env_prefix: &str,
) -> Result<T, Vec<String>> {
    use figment::providers::{Env, Format, Toml};
    if !path.is_file() {
        return Err(vec!["file not found or not a regular file".into()]);
    }
    figment::Figment::new()
        .merge(Toml::file_exact(path))
        .merge(
            Env::prefixed(env_prefix)
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        )
        .extract()
        .map_err(|e| e.into_iter().map(|e| describe_figment(&e)).collect())
}

/// A loaded configuration once its cross-field `problems` are checked
/// too: the configuration, or every problem (of loading, else of the
/// checks), one line each.
pub fn checked<T>(
    loaded: Result<T, Vec<String>>,
    problems: impl FnOnce(&T) -> Vec<String>,
) -> Result<T, Vec<String>> {
    let config = loaded?;
    let found = problems(&config);
    if found.is_empty() {
        Ok(config)
    } else {
        Err(found)
    }
}

/// [`load_config`] from TOML text, with no environment layer (tests,
/// examples).
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Vec<String>> {
    use figment::providers::{Format, Toml};
    figment::Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| e.into_iter().map(|e| describe_figment(&e)).collect())
}

/// One configuration error as a line: `field.path: what (from origin)`.
pub fn describe_figment(e: &figment::Error) -> String {
    let path = e.path.join(".");
    let origin = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    let what = e.kind.to_string();
    match (path.is_empty(), origin.is_empty()) {
        (true, true) => what,
        (true, false) => format!("{what} (from {origin})"),
        (false, true) => format!("{path}: {what}"),
        (false, false) => format!("{path}: {what} (from {origin})"),
    }
}

/// The default of ingest's `poller.cursor_topic`: each polled source's
/// cursor, compacted (ingest reads it; `processors topics` creates it).
pub const DEFAULT_POLL_CURSOR_TOPIC: &str = "webhooks.poll-cursors";
/// The default of ingest's `poller.unfillable_topic`: gaps the provider
/// could not fill, once each, compacted.
pub const DEFAULT_UNFILLABLE_TOPIC: &str = "webhooks.unfillable-gaps";

/// Kafka's rule for topic names: 1-249 of `a-z A-Z 0-9 . _ -`, not `.` or
/// `..`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The librdkafka settings of a reader that assigns partitions itself and
/// never commits (replay, `dlq list`, state restores, the venue view):
/// [`kafka::client_config`], then what such a reader needs; `group` is
/// only its name, required by librdkafka.
pub fn reader_config(
    brokers: &str,
    options: &std::collections::BTreeMap<String, String>,
    security: &kafka::Security,
    group: &str,
    client_id: &str,
) -> Result<rdkafka::ClientConfig, rdkafka::error::KafkaError> {
    let mut c = kafka::client_config(brokers, options, security)?;
    c.set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    Ok(c)
}

/// Routes one librdkafka log line to `tracing` (target `librdkafka`) at the
/// matching level; call it from a `ClientContext::log`.
pub fn route_librdkafka_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{log_message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
    }
}

/// `micros` since the Unix epoch as UTC text of one fixed shape,
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: the embedded analytics store's times,
/// which sort and compare like the times they name (written by the
/// processors, queried by the venue view). Any year 0000 to 9999; outside
/// that, the year is clamped: such times are nonsense and must not break
/// a batch.
pub fn utc_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Proleptic Gregorian date of a day number (days since 1970-01-01);
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for ok in ["webhooks.raw", "a", "A-b_c.9", &"x".repeat(249)] {
            assert!(valid_topic(ok), "{ok}");
        }
        for bad in ["", ".", "..", "with space", "é", &"x".repeat(250)] {
            assert!(!valid_topic(bad), "{bad}");
        }
    }

    #[test]
    fn a_config_error_names_its_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct C {
            n: u32,
        }
        use figment::providers::{Format, Toml};
        let e = figment::Figment::new()
            .merge(Toml::string("n = \"x\""))
            .extract::<C>()
            .unwrap_err();
        let line = e.into_iter().map(|e| describe_figment(&e)).next().unwrap();
        assert!(line.starts_with("n: "), "{line}");
    }

    #[test]
    fn utc_text_matches_known_instants() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-22T18:03:11.123456Z
        assert_eq!(
            utc_text(1_795_370_591_123_456),
            "2026-11-22T18:03:11.123456Z"
        );
        assert_eq!(utc_text(-1), "1969-12-31T23:59:59.999999Z");
        // 2024-02-29 (leap day) 12:00:00
        assert_eq!(
            utc_text(1_709_208_000_000_000),
            "2024-02-29T12:00:00.000000Z"
        );
        assert_eq!(utc_text(i64::MAX).len(), 27);
        assert_eq!(utc_text(i64::MIN).len(), 27);
    }
}
