//! The analytics store: one row per unique event, device sessions with
//! dwell, hourly footfall per venue. Two engines with the same tables and
//! the same semantics:
//!
//! - [`PostgresSink`] for production (a server shared by every instance);
//! - [`SqliteSink`], the embedded store: one file, no server, for the
//!   zero-setup default (the local stack) and small deployments.
//!
//! # Tables (created and migrated at start-up; `schema_migrations` records
//! the applied versions)
//!
//! - `events`: one row per (source, event id), any source and any type
//!   (a guest-WiFi type the parser does not document too): type, ordering
//!   key, sequence, occurred/received times, the late flag, the guest-WiFi
//!   fields (venue, zone, device, guest, vip) and the parsed body.
//! - `device_sessions`: per venue and device, its visits. A device's
//!   arrivals ([`ARRIVALS`]: `device_connected`, `guest_connects`,
//!   `guest_registered`) and departures ([`DEPARTURES`]:
//!   `device_disconnected`, `venue_left`), in occurrence order, make
//!   visits: an arrival with no visit open begins one (a device that
//!   connects and then logs in as a guest arrives once), the next
//!   departure ends it (a departure with no visit open is ignored). Each
//!   row: the first arrival's time and id, the departure's (null while
//!   still there), dwell in seconds.
//! - `footfall_hourly`: per venue and hour (UTC) in which visits began:
//!   `connections` (visits begun) and `unique_devices` (devices that
//!   began them), from `device_sessions`.
//!
//! Times are `timestamptz` on PostgreSQL and, on the embedded store, UTC
//! text of one fixed shape (`2026-11-22T18:03:11.123000Z`, hours as
//! `2026-11-22T18:00:00.000000Z`), which sorts and compares like the time
//! it names: `where occurred_at >= '2026-11-22T00:00:00Z'` works on both.
//!
//! # Idempotent and order-proof
//!
//! A batch is one transaction. Events are inserted with `ON CONFLICT DO
//! NOTHING`, so a re-delivered or replayed event changes nothing. The
//! rollups are not incremented: the sessions of every (venue, device) the
//! batch added a row for are recomputed from `events`, then the footfall of
//! every hour a session of theirs began in before or after, in the same
//! transaction (a late event can split a visit, or move its start to
//! another hour). A late event, or one that arrives out of order,
//! therefore leaves the same rows as if it had come in order, and a replay
//! into an empty store yields the same tables as the live path.
//!
//! # Concurrent writers
//!
//! Several writers may share a store (instances of the live path, a
//! backfill replay beside them, on the same venues and hours), and the
//! rollups still equal a straight computation over `events`: a recompute
//! runs only once no other transaction that added rows to the same venue
//! can still commit behind it. PostgreSQL takes a transaction-level
//! advisory lock per venue before recomputing ([`PostgresSink`]'s module);
//! the embedded store takes the file's write lock before the batch reads
//! anything (`BEGIN IMMEDIATE`), so its writers run one at a time.
//!
//! A failure (database down or locked, connection lost, disk full) answers
//! `Retry` for the whole batch: the pipeline offers it again with backoff,
//! the partition waits, nothing past it is committed.
//!
//! # Retention
//!
//! With `retention` set, the processors sweep the store every
//! `retention_interval` ([`crate::sinks::Retained`]): the horizon is the
//! start of the UTC hour `retention` ago, and rows of `events` whose time
//! (`occurred_at`, else `received_at`) and of `device_sessions` whose
//! `connected_at` lie before it are deleted, `retention_batch` rows per
//! statement, each statement its own transaction. `footfall_hourly` holds
//! counts per venue and hour, no personal data, and is kept.
//!
//! The store remembers the horizon (`analytics_retention`, one row, only
//! ever moved forward), and a sweep records it before it deletes anything.
//! A writer compares each event with it: an event older than the horizon
//! (late, or replayed from Kafka) is accepted and not stored (counted in
//! `processors_retention_refused_total`), and no rollup of an hour before
//! the horizon is recomputed, so an hour whose events were (partly)
//! deleted keeps the counts it had. The recompute statements read the
//! horizon themselves: a statement that still sees an older horizon sees
//! the hour whole, since the newer horizon was committed before any of its
//! deletes. On PostgreSQL two instances may sweep at once: a batch picks
//! its rows `FOR UPDATE SKIP LOCKED`, so each row is deleted, and counted,
//! by one of them; the horizon is the later of theirs.

mod postgres;
mod sqlite;

use std::time::Duration;

pub use postgres::PostgresSink;
pub use sqlite::SqliteSink;

use crate::event::Event;
use crate::sinks::contract::SinkError;

/// The event types that mean a device is at the venue: an arrival begins
/// a visit unless one is already open (a device that connects and then
/// logs in as a guest arrives once), as SQL literals.
pub(crate) const ARRIVALS: &str = "'device_connected', 'guest_connects', 'guest_registered'";
/// The event types that end a visit (the device left the WiFi, or the
/// platform says the guest left the venue), as SQL literals.
pub(crate) const DEPARTURES: &str = "'device_disconnected', 'venue_left'";

/// The PostgreSQL analytics sink, its URL given or read from the
/// environment variable `url_env` (never logged: it may hold a password).
pub async fn connect_postgres(
    name: &str,
    url: Option<&str>,
    url_env: Option<&str>,
) -> Result<PostgresSink, SinkError> {
    let url = match (url, url_env) {
        (Some(u), _) => u.to_string(),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| SinkError::Config(format!("sinks.{name}.url_env: {var} is not set")))?,
        (None, None) => return Err(SinkError::Config(format!("sinks.{name}: no url"))),
    };
    PostgresSink::connect(name, &url).await
}

/// What is wrong with a PostgreSQL sink's `url` / `url_env`.
pub fn url_problems(at: &str, url: &Option<String>, url_env: &Option<String>) -> Vec<String> {
    let mut p = Vec::new();
    match (url, url_env) {
        (Some(_), Some(_)) | (None, None) => {
            p.push(format!("{at}: give exactly one of url and url_env"))
        }
        (Some(u), None) if url_has_password(u) => p.push(format!(
            "{at}.url: has a password; put the URL in an environment variable and name it in url_env"
        )),
        (Some(u), None) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
            p.push(format!("{at}.url: must start with postgres://"))
        }
        (None, Some(var)) if std::env::var_os(var).is_none() => p.push(format!(
            "{at}.url_env: environment variable {var} is not set"
        )),
        _ => {}
    }
    p
}

/// Whether a URL's user-info part carries a password (`user:pw@`).
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The `events` columns of one event, as both engines store them.
struct Row<'a> {
    source: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    ordering_key: Option<&'a str>,
    sequence: Option<i64>,
    occurred_micros: Option<i64>,
    received_micros: i64,
    late: bool,
    venue: Option<&'a str>,
    zone: Option<&'a str>,
    device: Option<&'a str>,
    guest: Option<&'a str>,
    vip: Option<bool>,
    body: String,
}

impl<'a> Row<'a> {
    fn of(e: &'a Event) -> Self {
        let w = e.guest_wifi.as_ref();
        Row {
            source: &e.source,
            event_id: &e.event_id,
            event_type: &e.event_type,
            ordering_key: e.ordering_key.as_deref(),
            sequence: e.sequence,
            occurred_micros: e.occurred_at_micros,
            received_micros: e.received_at_micros,
            late: e.late,
            venue: w.map(|w| w.venue_id.as_str()),
            zone: w.and_then(|w| w.zone.as_deref()),
            device: w.and_then(|w| w.device_id.as_deref()),
            guest: w.and_then(|w| w.guest.as_ref().map(|g| g.id.as_str())),
            vip: w.and_then(|w| w.guest.as_ref().map(|g| g.vip)),
            body: e.body.to_string(),
        }
    }
}

/// An analytics sink's `retention`, `retention_interval` and
/// `retention_batch`, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `retention`: how long rows are kept; `None`: no limit.
    pub keep: Option<Duration>,
    /// `retention_interval`: time between two sweeps.
    pub interval: Duration,
    /// `retention_batch`: rows per delete statement.
    pub batch: u32,
}

/// Default `retention_interval`: hourly (the horizon moves by the hour).
pub const fn default_sweep_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Default `retention_batch`: small enough that a delete holds its locks
/// for milliseconds, large enough to keep up with any ingest rate.
pub const fn default_sweep_batch() -> u32 {
    1000
}

/// The shortest `retention` accepted: less is a typo, not a choice.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

impl RetentionSettings {
    /// Every problem of the settings, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let mut p = Vec::new();
        match self.keep {
            Some(keep) if keep < MIN_RETENTION => p.push(format!(
                "{at}.retention: must be at least 1h (got {})",
                show(keep)
            )),
            Some(keep) if i64::try_from(keep.as_micros()).is_err() => {
                p.push(format!("{at}.retention: {} is too long", show(keep)))
            }
            Some(_) => {}
            None => {
                if self.interval != default_sweep_interval() {
                    p.push(format!(
                        "{at}.retention_interval: set without retention (nothing is swept)"
                    ));
                }
                if self.batch != default_sweep_batch() {
                    p.push(format!(
                        "{at}.retention_batch: set without retention (nothing is swept)"
                    ));
                }
            }
        }
        if self.interval < Duration::from_secs(1) {
            p.push(format!(
                "{at}.retention_interval: must be at least 1s (got {})",
                show(self.interval)
            ));
        }
        if !(1..=100_000).contains(&self.batch) {
            p.push(format!(
                "{at}.retention_batch: must be 1 to 100000 (got {})",
                self.batch
            ));
        }
        p
    }
}

/// A sink's retention in force: the settings and the counters.
#[derive(Clone)]
pub(crate) struct Retention {
    /// How long rows are kept.
    keep: Duration,
    /// Time between two sweeps.
    interval: Duration,
    /// Rows per delete statement.
    batch: u32,
}

impl Retention {
    /// The retention in force for `store`, if `settings` set one.
    pub(crate) fn of(settings: Option<RetentionSettings>) -> Option<Retention> {
        let s = settings?;
        Some(Retention {
            keep: s.keep?,
            interval: s.interval,
            batch: s.batch,
        })
    }

    /// The horizon of a sweep now: the start of the UTC hour `keep` ago.
    fn horizon_now(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        horizon(now, self.keep)
    }
}

/// The start of the UTC hour `keep` before `now` (microseconds): rows
/// older than it are past the retention. Whole hours, so that a sweep
/// deletes whole hours of `footfall_hourly`'s events and never recomputes
/// one it cut in two.
pub(crate) fn horizon(now_micros: i64, keep: Duration) -> i64 {
    let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
    let t = now_micros.saturating_sub(keep);
    t - t.rem_euclid(3_600_000_000)
}

/// The time an `events` row is kept by: `occurred_at`, else `received_at`.
fn kept_by(e: &Event) -> i64 {
    e.occurred_at_micros.unwrap_or(e.received_at_micros)
}

/// `micros` as the store's UTC text ([`plumbing::utc_text`]).
pub(crate) use plumbing::utc_text;

/// The hour `micros` falls in, as [`utc_text`].
pub(crate) fn utc_hour_text(micros: i64) -> String {
    utc_text(micros - micros.rem_euclid(3_600_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_hour_text_truncates_to_the_hour() {
        assert_eq!(
            utc_hour_text(1_795_370_591_123_456),
            "2026-11-22T18:00:00.000000Z"
        );
        assert_eq!(utc_hour_text(-1), "1969-12-31T23:00:00.000000Z");
    }

    #[test]
    fn the_horizon_is_the_start_of_the_hour_the_retention_ago() {
        let now = 1_795_370_591_123_456; // 2026-11-22T18:03:11.123456Z
        let day = Duration::from_secs(86_400);
        assert_eq!(utc_text(horizon(now, day)), "2026-11-21T18:00:00.000000Z");
        assert_eq!(
            utc_text(horizon(now, Duration::from_secs(90 * 60))),
            "2026-11-22T16:00:00.000000Z"
        );
        assert!(horizon(now, Duration::MAX) < 0, "no overflow");
    }

    #[test]
    fn retention_settings_are_checked_naming_the_field() {
        let ok = RetentionSettings {
            keep: Some(Duration::from_secs(400 * 86_400)),
            interval: default_sweep_interval(),
            batch: default_sweep_batch(),
        };
        assert_eq!(ok.problems("sinks.a"), Vec::<String>::new());
        let unset = RetentionSettings { keep: None, ..ok };
        assert_eq!(unset.problems("sinks.a"), Vec::<String>::new());
        let short = RetentionSettings {
            keep: Some(Duration::from_secs(600)),
            interval: Duration::from_millis(10),
            batch: 0,
        };
        assert_eq!(
            short.problems("sinks.a"),
            [
                "sinks.a.retention: must be at least 1h (got 10m)",
                "sinks.a.retention_interval: must be at least 1s (got 10ms)",
                "sinks.a.retention_batch: must be 1 to 100000 (got 0)",
            ]
        );
        let orphan = RetentionSettings {
            keep: None,
            interval: Duration::from_secs(5),
            batch: 10,
        };
        assert_eq!(
            orphan.problems("sinks.a"),
            [
                "sinks.a.retention_interval: set without retention (nothing is swept)",
                "sinks.a.retention_batch: set without retention (nothing is swept)",
            ]
        );
    }

    #[test]
    fn text_order_is_time_order() {
        let times = [
            -86_400_000_000i64,
            -1,
            0,
            1,
            999_999,
            1_000_000,
            1_795_370_591_123_456,
        ];
        for w in times.windows(2) {
            assert!(utc_text(w[0]) < utc_text(w[1]), "{} vs {}", w[0], w[1]);
        }
    }
}
