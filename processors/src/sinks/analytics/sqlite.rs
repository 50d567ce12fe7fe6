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
//! - Retention sweeps ([`super`]'s *Retention*) run on a connection of
//!   their own; the horizon and each delete of `retention_batch` rows are
//!   transactions of their own, taking the write lock like a batch, so
//!   writers wait for at most one delete statement.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Retention, RetentionSettings, Row, kept_by, utc_hour_text, utc_text};
use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};

/// How long a batch waits for another process holding the write lock
/// before it answers `Retry`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations 1, 2 and 4 ([`migrate`] applies the third,
/// [`visits_migration`], between them).
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
    // Retention: the horizon a sweep deleted up to, and the indexes its
    // batched deletes walk.
    (
        4,
        r#"
    create table if not exists analytics_retention (
        id integer primary key check (id = 1),
        deleted_before text not null
    );
    create index if not exists events_retention_time
        on events (coalesce(occurred_at, received_at));
    create index if not exists device_sessions_connected on device_sessions (connected_at);
    "#,
    ),
];

/// The horizon as UTC text, or none before the first sweep.
const HORIZON: &str = "select deleted_before from analytics_retention where id = 1";

/// Moves the horizon to `?1` unless it is already later; answers the
/// horizon in force.
const HORIZON_SET: &str = r#"
    insert into analytics_retention (id, deleted_before) values (1, ?1)
    on conflict (id) do update
      set deleted_before = max(deleted_before, excluded.deleted_before)
    returning deleted_before
"#;

const SWEEP_EVENTS: &str = "delete from events where rowid in (
    select rowid from events where coalesce(occurred_at, received_at) < ?1 limit ?2)";

const SWEEP_SESSIONS: &str = "delete from device_sessions where rowid in (
    select rowid from device_sessions where connected_at < ?1 limit ?2)";

const INSERT_EVENT: &str = r#"
    insert into events (source, event_id, event_type, ordering_key, sequence, occurred_at,
                        received_at, late, venue_id, zone, device_id, guest_id, vip, body)
    values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    on conflict (source, event_id) do nothing
"#;

/// Recomputes one (venue, hour) from the sessions that began in it: `?1`
/// venue, `?2` hour start, `?3` hour end (the row is gone when none did).
const FOOTFALL_DELETE: &str = "delete from footfall_hourly where venue_id = ?1 and hour = ?2";
const FOOTFALL_INSERT: &str = r#"
    insert into footfall_hourly (venue_id, hour, connections, unique_devices)
    select venue_id, ?2, count(*), count(distinct device_id)
    from device_sessions
    where venue_id = ?1 and connected_at >= ?2 and connected_at < ?3
    group by venue_id
"#;

/// The hours (Unix seconds of their start) the sessions of one (venue,
/// device) begin in.
const SESSION_HOURS: &str = "select distinct unixepoch(connected_at) / 3600 * 3600
    from device_sessions where venue_id = ?1 and device_id = ?2";

const SESSIONS_DELETE: &str = "delete from device_sessions where venue_id = ?1 and device_id = ?2";

/// Seconds between two times of the fixed text shape, to the microsecond
/// (SQLite's own date functions keep milliseconds only).
const DWELL: &str = "(unixepoch(last_at) - unixepoch(occurred_at)) \
    + (cast(substr(last_at, 21, 6) as integer) - cast(substr(occurred_at, 21, 6) as integer)) / 1e6";

/// The sessions of the events `filter` selects, as `device_sessions` rows:
/// the same visits as on PostgreSQL (`postgres.rs`, `sessions_select`).
fn sessions_select(filter: &str) -> String {
    use super::{ARRIVALS, DEPARTURES};
    format!(
        r#"
    select venue_id, device_id, occurred_at,
           case when last_end = 1 then last_at end,
           case when last_end = 1 then {DWELL} end,
           event_id,
           case when last_end = 1 then last_id end
    from (
        select v.*,
               row_number() over g as pos,
               last_value(is_end) over gf as last_end,
               last_value(occurred_at) over gf as last_at,
               last_value(event_id) over gf as last_id
        from (
            select venue_id, device_id, occurred_at, sequence, event_id,
                   case when event_type in ({DEPARTURES}) then 1 else 0 end as is_end,
                   coalesce(sum(case when event_type in ({DEPARTURES}) then 1 else 0 end)
                       over (partition by venue_id, device_id
                             order by occurred_at, sequence, event_id
                             rows between unbounded preceding and 1 preceding), 0) as visit
            from events
            where {filter} occurred_at is not null and device_id is not null
              and venue_id is not null and event_type in ({ARRIVALS}, {DEPARTURES})
        ) v
        window g as (partition by venue_id, device_id, visit
                     order by occurred_at, sequence, event_id),
               gf as (partition by venue_id, device_id, visit
                      order by occurred_at, sequence, event_id
                      rows between unbounded preceding and unbounded following)
    )
    where pos = 1 and is_end = 0
"#
    )
}

const SESSIONS_COLUMNS: &str = "insert into device_sessions (venue_id, device_id, connected_at,
    disconnected_at, dwell_seconds, connect_event_id, disconnect_event_id)";

fn sessions_insert() -> String {
    format!(
        "{SESSIONS_COLUMNS} {}",
        sessions_select(
            "venue_id = ?1 and device_id = ?2 and occurred_at >= coalesce(
               (select deleted_before from analytics_retention where id = 1), '') and"
        )
    )
}

/// Migration 3: the sessions and footfall of every arrival type, ended by
/// `venue_left` too, recomputed from `events` once (see `postgres.rs`).
fn visits_migration() -> String {
    format!(
        "create index if not exists device_sessions_venue_start
           on device_sessions (venue_id, connected_at);
         delete from device_sessions;
         {SESSIONS_COLUMNS} {};
         delete from footfall_hourly;
         insert into footfall_hourly (venue_id, hour, connections, unique_devices)
         select venue_id, strftime('%Y-%m-%dT%H:00:00.000000Z', connected_at), count(*),
                count(distinct device_id)
         from device_sessions group by 1, 2;",
        sessions_select("")
    )
}

/// The embedded analytics sink.
pub struct SqliteSink {
    name: String,
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
    /// The retention in force, if `retention` is set.
    retention: Option<Retention>,
    /// The sweeps' own connection, apart from the write path's.
    sweeper: Arc<Mutex<Option<Connection>>>,
    /// Counts events older than the horizon, not stored.
    refused: Option<prometheus::IntCounter>,
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
            retention: None,
            sweeper: Arc::new(Mutex::new(None)),
            refused: None,
        })
    }

    /// Sweeps past `settings`' retention, if it sets one, counting in
    /// `metrics`.
    pub fn with_retention(
        mut self,
        settings: Option<RetentionSettings>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        self.retention = Retention::of(settings);
        self.refused = Some(metrics.retention_refused.with_label_values(&[&self.name]));
        self
    }

    /// Answers the number of events refused as older than the horizon.
    async fn write(&self, batch: &[Arc<Event>]) -> Result<u64, String> {
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
    let visits = visits_migration();
    let (before, after) = MIGRATIONS.split_at(2);
    let all = before
        .iter()
        .copied()
        .chain(std::iter::once((3, visits.as_str())))
        .chain(after.iter().copied());
    for (version, sql) in all {
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

/// One sweep: moves the horizon to `horizon` (or keeps a later one), then
/// deletes what lies before it, `batch` rows per transaction.
fn sweep(conn: &mut Connection, horizon: i64, batch: u32) -> Result<(u64, u64), String> {
    let err = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("begin"))?;
    let horizon: String = tx
        .query_row(HORIZON_SET, [utc_text(horizon)], |r| r.get(0))
        .map_err(err("retention horizon"))?;
    tx.commit().map_err(err("commit"))?;
    let mut removed = [0u64; 2];
    for (i, sql) in [SWEEP_EVENTS, SWEEP_SESSIONS].into_iter().enumerate() {
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err("begin"))?;
            let n = tx
                .execute(sql, params![horizon, batch])
                .map_err(err("retention delete"))?;
            tx.commit().map_err(err("commit"))?;
            removed[i] += n as u64;
            if n == 0 {
                break;
            }
        }
    }
    Ok((removed[0], removed[1]))
}

fn write_batch(conn: &mut Connection, batch: &[Arc<Event>]) -> Result<u64, String> {
    let err = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("begin"))?;
    // Events older than the horizon are not stored (late, or replayed),
    // and no hour before it is recomputed: it keeps its counts as swept.
    let horizon: Option<String> = tx
        .query_row(HORIZON, [], |r| r.get(0))
        .optional()
        .map_err(err("retention horizon"))?;
    let mut refused = 0u64;
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(err("prepare"))?;
        for e in batch {
            if horizon.as_ref().is_some_and(|h| utc_text(kept_by(e)) < *h) {
                refused += 1;
                continue;
            }
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
            if let (Some(venue), Some(device), Some(_)) = (r.venue, r.device, r.occurred_micros) {
                devices.insert((venue.to_string(), device.to_string()));
            }
        }
    }
    // The touched devices' sessions, then the footfall of every hour a
    // session of theirs began in, before or after (a late event can move
    // a visit's start to another hour, or split one visit in two).
    let mut hours: BTreeSet<(String, i64)> = BTreeSet::new();
    if !devices.is_empty() {
        let mut started = tx.prepare_cached(SESSION_HOURS).map_err(err("prepare"))?;
        let mut delete = tx.prepare_cached(SESSIONS_DELETE).map_err(err("prepare"))?;
        let mut insert = tx
            .prepare_cached(&sessions_insert())
            .map_err(err("prepare"))?;
        for (venue, device) in &devices {
            let mut collect = |hours: &mut BTreeSet<(String, i64)>| -> Result<(), String> {
                let found = started
                    .query_map(params![venue, device], |r| r.get::<_, i64>(0))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
                    .map_err(err("sessions"))?;
                hours.extend(found.into_iter().map(|h| (venue.clone(), h * 1_000_000)));
                Ok(())
            };
            collect(&mut hours)?;
            delete
                .execute(params![venue, device])
                .map_err(err("sessions"))?;
            insert
                .execute(params![venue, device])
                .map_err(err("sessions"))?;
            collect(&mut hours)?;
        }
    }
    if !hours.is_empty() {
        let mut delete = tx.prepare_cached(FOOTFALL_DELETE).map_err(err("prepare"))?;
        let mut insert = tx.prepare_cached(FOOTFALL_INSERT).map_err(err("prepare"))?;
        for (venue, start) in &hours {
            let hour = utc_hour_text(*start);
            // No hour before the horizon: it keeps its counts as swept.
            if horizon.as_ref().is_some_and(|h| hour < *h) {
                continue;
            }
            delete
                .execute(params![venue, hour])
                .map_err(err("footfall"))?;
            insert
                .execute(params![venue, hour, utc_text(start + 3_600_000_000)])
                .map_err(err("footfall"))?;
        }
    }
    tx.commit().map_err(err("commit"))?;
    Ok(refused)
}

impl crate::sinks::Retained for SqliteSink {
    fn sweep_interval(&self) -> Duration {
        self.retention
            .as_ref()
            .map_or(super::default_sweep_interval(), |r| r.interval)
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, String>> {
        Box::pin(async move {
            let Some(retention) = self.retention.clone() else {
                return Ok(Vec::new());
            };
            let conn = self.sweeper.clone();
            let path = self.path.clone();
            let (events, sessions) = tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    *guard = Some(open(&path)?);
                }
                let Some(c) = guard.as_mut() else {
                    return Err("no connection".to_string());
                };
                let result = sweep(c, retention.horizon_now(), retention.batch);
                if result.is_err() {
                    *guard = None;
                }
                result
            })
            .await
            .map_err(|e| format!("sweep: {e}"))??;
            Ok(vec![("events", events), ("device_sessions", sessions)])
        })
    }
}

impl Sink for SqliteSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn retained(&self) -> Option<&dyn crate::sinks::Retained> {
        self.retention
            .as_ref()
            .map(|_| self as &dyn crate::sinks::Retained)
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            match self.write(batch).await {
                Ok(refused) => {
                    if let Some(c) = &self.refused {
                        c.inc_by(refused);
                    }
                    vec![Outcome::Accepted; batch.len()]
                }
                Err(e) => vec![Outcome::Retry(e); batch.len()],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{GuestWifi, SESSION_END_TYPES};

    const HOUR: i64 = 3_600_000_000;

    fn event(id: &str, kind: &str, device: &str, at: i64) -> Arc<Event> {
        Arc::new(Event {
            source: "purple".into(),
            event_id: id.into(),
            event_type: kind.into(),
            ordering_key: Some("v".into()),
            sequence: None,
            received_at_micros: at,
            occurred_at_micros: Some(at),
            late: false,
            guest_wifi: Some(GuestWifi {
                event_type: kind.into(),
                sequence: None,
                occurred_at_micros: at,
                venue_id: "v".into(),
                venue_name: None,
                zone: None,
                device_id: Some(device.into()),
                guest: None,
            }),
            body: serde_json::json!({}),
        })
    }

    fn rows(path: &Path, sql: &str) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    const FOOTFALL_ROWS: &str = "select hour || ' ' || connections || ' ' || unique_devices from footfall_hourly order by hour";

    #[tokio::test]
    async fn a_sweep_removes_old_rows_in_batches_keeps_the_rollup_and_later_refuses_old_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let metrics = crate::metrics::Metrics::new().unwrap();
        let settings = RetentionSettings {
            keep: Some(Duration::from_secs(30 * 86_400)),
            interval: Duration::from_secs(1),
            batch: 2,
        };
        let sink = SqliteSink::open("a", &path)
            .await
            .unwrap()
            .with_retention(Some(settings), &metrics);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let old = now - 40 * 24 * HOUR;
        let old = old - old.rem_euclid(HOUR) + 60_000_000;
        let recent = now - 2 * HOUR;
        let mut batch = Vec::new();
        for (n, at) in [(0, old), (4, recent)] {
            batch.push(event(&format!("e{}", n + 1), "device_connected", "a", at));
            batch.push(event(
                &format!("e{}", n + 2),
                "device_connected",
                "b",
                at + 1,
            ));
            batch.push(event(
                &format!("e{}", n + 3),
                "device_disconnected",
                "a",
                at + 2,
            ));
            batch.push(event(
                &format!("e{}", n + 4),
                "device_disconnected",
                "b",
                at + 3,
            ));
        }
        assert_eq!(sink.accept(&batch).await, vec![Outcome::Accepted; 8]);
        let footfall = rows(&path, FOOTFALL_ROWS);
        assert_eq!(footfall.len(), 2, "{footfall:?}");
        assert!(footfall[0].ends_with(" 2 2"), "{footfall:?}");

        // Five events and two sessions past the retention, two rows per
        // delete: several batches, every row counted once.
        let removed = sink.retained().unwrap().sweep().await.unwrap();
        assert_eq!(removed, vec![("events", 4), ("device_sessions", 2)]);
        assert_eq!(
            rows(&path, "select event_id from events order by event_id"),
            ["e5", "e6", "e7", "e8"]
        );
        assert_eq!(
            rows(
                &path,
                "select connect_event_id from device_sessions order by 1"
            ),
            ["e5", "e6"]
        );
        assert_eq!(rows(&path, FOOTFALL_ROWS), footfall, "the rollup is kept");
        let again = sink.retained().unwrap().sweep().await.unwrap();
        assert_eq!(again, vec![("events", 0), ("device_sessions", 0)]);

        // An old event offered now (late, replayed): accepted, not stored,
        // and its swept hour is not recomputed from what is left.
        let late = [
            event("e9", "device_connected", "c", old + 5),
            event("e10", "device_connected", "c", recent + 4),
        ];
        assert_eq!(sink.accept(&late).await, vec![Outcome::Accepted; 2]);
        assert_eq!(
            rows(&path, "select event_id from events order by event_id"),
            ["e10", "e5", "e6", "e7", "e8"]
        );
        assert_eq!(rows(&path, FOOTFALL_ROWS)[0], footfall[0]);
        assert_eq!(metrics.retention_refused.with_label_values(&["a"]).get(), 1);
    }

    #[tokio::test]
    async fn the_horizon_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let mut conn = open(&path).unwrap();
        sweep(&mut conn, 10 * HOUR, 100).unwrap();
        sweep(&mut conn, 5 * HOUR, 100).unwrap();
        assert_eq!(
            rows(&path, "select deleted_before from analytics_retention"),
            [utc_text(10 * HOUR)]
        );
    }

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
