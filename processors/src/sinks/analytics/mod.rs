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
//! - `device_sessions`: per venue and device, each `device_connected` paired
//!   with the next event that ends a session in occurrence order
//!   (`device_disconnected`, or `venue_left`: the guest left the venue;
//!   [`crate::event::SESSION_END_TYPES`]): connected and disconnected
//!   times, dwell in seconds (null while still connected). Any other type,
//!   one the platform added since among them, is kept in `events` only.
//! - `footfall_hourly`: per venue and hour (UTC, of occurrence):
//!   `connections` (device_connected events) and `unique_devices`.
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
//! rollups are not incremented: for every (venue, hour) and (venue, device)
//! the batch touched with a new row, they are recomputed from `events` in
//! the same transaction. A late event, or one that arrives out of order,
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

mod postgres;
mod sqlite;

pub use postgres::PostgresSink;
pub use sqlite::SqliteSink;

use crate::event::Event;
use crate::sinks::contract::SinkError;

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
