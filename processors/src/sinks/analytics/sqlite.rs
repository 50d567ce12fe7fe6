//! The embedded analytics store: one SQLite file, no server (see
//! [`super`] for the tables and the semantics both engines share).
//!
//! - WAL journal with `synchronous = FULL`: a committed batch survives a
//!   crash of the process and of the machine, so an offset is never
//!   committed past rows that could still vanish.
//! - Each batch takes the write lock up front (`BEGIN IMMEDIATE`), before
//!   it reads anything: writers are serialised, and each batch's recompute
//!   reads every batch committed before it, so concurrent writers (several
//!   processes on one host, a replay beside the live path) lose nothing
//!   (SQLite's own locking, with a busy timeout); a busy or failing
//!   database answers `Retry`.
//! - SQLite is blocking: batches run on tokio's blocking pool, one at a
//!   time per sink.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Row, utc_hour_text, utc_text};
use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};

/// How long a batch waits for another process holding the write lock
/// before it answers `Retry`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    create table if not exists events (
        source text not null,
        event_id text not null,
        event_type text not null,
        ordering_key text,
        sequence integer,
        occurred_at text,
        received_at text not null,
        late boolean not null,
        venue_id text,
        zone text,
        device_id text,
        guest_id text,
        vip boolean,
        body text not null,
        primary key (source, event_id)
    );
    create index if not exists events_venue_time on events (venue_id, occurred_at);
    create index if not exists events_venue_device on events (venue_id, device_id, occurred_at);
    create table if not exists device_sessions (
        venue_id text not null,
        device_id text not null,
        connected_at text not null,
        disconnected_at text,
        dwell_seconds real,
        connect_event_id text not null,
        disconnect_event_id text,
        primary key (venue_id, device_id, connect_event_id)
    );
    create table if not exists footfall_hourly (
        venue_id text not null,
        hour text not null,
        connections integer not null,
        unique_devices integer not null,
        primary key (venue_id, hour)
    );
    "#,
    ),
    // The venue view's "median dwell today": sessions of a venue that
    // ended in a time range.
    (
        2,
        "create index if not exists device_sessions_venue_end
         on device_sessions (venue_id, disconnected_at)",
    ),
];

const INSERT_EVENT: &str = r#"
    insert into events (source, event_id, event_type, ordering_key, sequence, occurred_at,
                        received_at, late, venue_id, zone, device_id, guest_id, vip, body)
    values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    on conflict (source, event_id) do nothing
"#;

/// Recomputes one (venue, hour): `?1` venue, `?2` hour start, `?3` hour end.
const FOOTFALL: &str = r#"
    insert into footfall_hourly (venue_id, hour, connections, unique_devices)
    select venue_id, ?2, count(*), count(distinct device_id)
    from events
    where venue_id = ?1 and event_type = 'device_connected'
      and occurred_at >= ?2 and occurred_at < ?3
    group by venue_id
    on conflict (venue_id, hour) do update
      set connections = excluded.connections, unique_devices = excluded.unique_devices
"#;

const SESSIONS_DELETE: &str = "delete from device_sessions where venue_id = ?1 and device_id = ?2";

/// Seconds between two times of the fixed text shape, to the microsecond
/// (SQLite's own date functions keep milliseconds only).
const DWELL: &str = "(unixepoch(next_at) - unixepoch(occurred_at)) \
    + (cast(substr(next_at, 21, 6) as integer) - cast(substr(occurred_at, 21, 6) as integer)) / 1e6";

fn sessions_insert() -> String {
    format!(
        r#"
    insert into device_sessions (venue_id, device_id, connected_at, disconnected_at,
                                 dwell_seconds, connect_event_id, disconnect_event_id)
    select venue_id, device_id, occurred_at,
           case when next_type in ('device_disconnected', 'venue_left') then next_at end,
           case when next_type in ('device_disconnected', 'venue_left') then {DWELL} end,
           event_id,
           case when next_type in ('device_disconnected', 'venue_left') then next_id end
    from (
        select venue_id, device_id, event_type, occurred_at, event_id,
               lead(event_type) over w as next_type,
               lead(occurred_at) over w as next_at,
               lead(event_id) over w as next_id
        from events
        where venue_id = ?1 and device_id = ?2 and occurred_at is not null
          and event_type in ('device_connected', 'device_disconnected', 'venue_left')
        window w as (partition by venue_id, device_id
                     order by occurred_at, sequence, event_id)
    )
    where event_type = 'device_connected'
"#
    )
}

/// The embedded analytics sink.
pub struct SqliteSink {
    name: String,
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl SqliteSink {
    /// Opens (creating the file and its folder if needed) and migrates.
    /// Fails if the file cannot be opened or migrated: a misconfiguration
    /// should stop the process at start-up.
    pub async fn open(name: &str, path: &Path) -> Result<Self, SinkError> {
        let owned = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open(&owned))
            .await
            .map_err(|e| format!("open: {e}"))
            .and_then(|r| r)
            .map_err(|e| SinkError::Unavailable(format!("sinks.{name}: {e}")))?;
        Ok(SqliteSink {
            name: name.into(),
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(Some(conn))),
        })
    }

    async fn write(&self, batch: &[Arc<Event>]) -> Result<(), String> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let batch: Vec<Arc<Event>> = batch.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(open(&path)?);
            }
            let Some(c) = guard.as_mut() else {
                return Err("no connection".to_string());
            };
            let result = write_batch(c, &batch);
            if result.is_err() {
                // Re-open on the next attempt: the file may have been
                // replaced, or the connection left in a bad state.
                *guard = None;
            }
            result
        })
        .await
        .map_err(|e| format!("write: {e}"))?
    }
}

fn open(path: &Path) -> Result<Connection, String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let mut conn = Connection::open(path).map_err(|e| format!("open {shown}: {e}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("open {shown}: {e}"))?;
    conn.pragma_update(None, "journal_mode", "wal")
        .map_err(|e| format!("open {shown}: journal_mode: {e}"))?;
    conn.pragma_update(None, "synchronous", "full")
        .map_err(|e| format!("open {shown}: synchronous: {e}"))?;
    migrate(&mut conn).map_err(|e| format!("migrate {shown}: {e}"))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "create table if not exists schema_migrations (
            version integer primary key,
            applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    )?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_row(
                "select 1 from schema_migrations where version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "insert into schema_migrations (version) values (?1)",
                [version],
            )?;
            tracing::info!(version, "embedded analytics schema migrated");
        }
    }
    tx.commit()
}

fn write_batch(conn: &mut Connection, batch: &[Arc<Event>]) -> Result<(), String> {
    let err = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("begin"))?;
    let mut hours: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(err("prepare"))?;
        for e in batch {
            let r = Row::of(e);
            let inserted = insert
                .execute(params![
                    r.source,
                    r.event_id,
                    r.event_type,
                    r.ordering_key,
                    r.sequence,
                    r.occurred_micros.map(utc_text),
                    utc_text(r.received_micros),
                    r.late,
                    r.venue,
                    r.zone,
                    r.device,
                    r.guest,
                    r.vip,
                    r.body,
                ])
                .map_err(err("insert events"))?;
            if inserted == 0 {
                continue;
            }
            if let Some(venue) = r.venue {
                if let Some(t) = r.occurred_micros {
                    hours.insert((venue.to_string(), t - t.rem_euclid(3_600_000_000)));
                    if let Some(device) = r.device {
                        devices.insert((venue.to_string(), device.to_string()));
                    }
                }
            }
        }
    }
    if !hours.is_empty() {
        let mut footfall = tx.prepare_cached(FOOTFALL).map_err(err("prepare"))?;
        for (venue, start) in &hours {
            footfall
                .execute(params![
                    venue,
                    utc_hour_text(*start),
                    utc_text(start + 3_600_000_000)
                ])
                .map_err(err("footfall"))?;
        }
    }
    if !devices.is_empty() {
        let mut delete = tx.prepare_cached(SESSIONS_DELETE).map_err(err("prepare"))?;
        let mut insert = tx
            .prepare_cached(&sessions_insert())
            .map_err(err("prepare"))?;
        for (venue, device) in &devices {
            delete
                .execute(params![venue, device])
                .map_err(err("sessions"))?;
            insert
                .execute(params![venue, device])
                .map_err(err("sessions"))?;
        }
    }
    tx.commit().map_err(err("commit"))
}

impl Sink for SqliteSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            match self.write(batch).await {
                Ok(()) => vec![Outcome::Accepted; batch.len()],
                Err(e) => vec![Outcome::Retry(e); batch.len()],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{GuestWifi, SESSION_END_TYPES};

    fn wifi(id: &str, kind: &str, seq: i64, device: &str, minute: i64) -> Arc<Event> {
        let at = 1_795_370_400_000_000 + minute * 60_000_000;
        Arc::new(Event {
            source: "purple".into(),
            event_id: id.into(),
            event_type: kind.into(),
            ordering_key: Some("v".into()),
            sequence: Some(seq),
            received_at_micros: at,
            occurred_at_micros: Some(at),
            late: false,
            guest_wifi: Some(GuestWifi {
                event_type: kind.into(),
                sequence: Some(seq),
                occurred_at_micros: at,
                venue_id: "v".into(),
                venue_name: None,
                zone: Some("lobby".into()),
                device_id: Some(device.into()),
                guest: None,
            }),
            body: serde_json::json!({"id": id, "type": kind}),
        })
    }

    /// Every type that ends a session ends it here; a type the platform
    /// added since is stored with its body and ends nothing.
    #[test]
    fn a_session_ends_with_each_session_end_type_and_not_with_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("a.sqlite")).unwrap();
        let mut batch = Vec::new();
        for (i, end) in SESSION_END_TYPES.iter().enumerate() {
            let d = format!("d{i}");
            batch.push(wifi(
                &format!("c{i}"),
                "device_connected",
                10 * i as i64,
                &d,
                0,
            ));
            batch.push(wifi(
                &format!("x{i}"),
                "guest_feedback",
                10 * i as i64 + 1,
                &d,
                3,
            ));
            batch.push(wifi(&format!("e{i}"), end, 10 * i as i64 + 2, &d, 8));
        }
        write_batch(&mut conn, &batch).unwrap();
        let sessions: Vec<(String, Option<String>, Option<f64>)> = conn
            .prepare(
                "select device_id, disconnect_event_id, dwell_seconds from device_sessions
                 order by device_id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(String, Option<String>, Option<f64>)> = (0..SESSION_END_TYPES.len())
            .map(|i| (format!("d{i}"), Some(format!("e{i}")), Some(480.0)))
            .collect();
        assert_eq!(sessions, want);
        let feedback: String = conn
            .query_row("select body from events where event_id = 'x0'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(feedback.contains("guest_feedback"), "{feedback}");
    }
}
