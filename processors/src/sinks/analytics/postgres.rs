//! The analytics store on PostgreSQL (see [`super`] for the tables and
//! the semantics both engines share). Batches go in as arrays through
//! `UNNEST`, one round trip for all the events of a batch.
//!
//! # Concurrent writers
//!
//! Several transactions may write one venue at once: the live path of
//! another instance, a backfill replay beside it. The rollups are
//! recomputed from `events`, and a recompute that ran before another
//! writer's new events were committed, and was then written over that
//! writer's, lost them. So after inserting its events, a batch takes a
//! transaction-level advisory lock per venue it added rows to
//! (`pg_advisory_xact_lock(VENUE_LOCK_CLASS, hash of the venue)`, in
//! ascending key order so two batches never wait on each other in a
//! circle), and only then recomputes, at `READ COMMITTED`: each recompute
//! statement reads every event committed before the lock was granted, and
//! a writer whose events it could not see yet recomputes again after it.
//! Locks are released by the commit or rollback. Event inserts wait for
//! no advisory lock, so a duplicate (source, event id) from a writer still
//! in flight never waits in a circle with them either.
//!
//! # Retention sweeps
//!
//! A sweep ([`super`]'s *Retention*) runs on a connection of its own, so
//! it never holds up the write path: it moves the horizon forward
//! (`greatest`, so an instance whose horizon is behind never moves it
//! back), commits, then deletes in statements of `retention_batch` rows,
//! each picking its rows `FOR UPDATE SKIP LOCKED`: two instances sweeping
//! at once delete disjoint rows and never wait on each other, and a
//! writer recomputing a device's sessions keeps its rows locked from the
//! sweep until it commits.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use super::{Retention, Row, kept_by};
use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};

/// Schema migrations, applied in order, each once.
fn migrations() -> [(i32, &'static str); 4] {
    let [a, b, d] = MIGRATIONS;
    [a, b, (3, VISITS_MIGRATION.as_str()), d]
}

/// Schema migrations 1, 2 and 4 ([`migrations`] adds the third, built from
/// the session query).
const MIGRATIONS: [(i32, &str); 3] = [
    (
        1,
        r#"
    create table if not exists events (
        source text not null,
        event_id text not null,
        event_type text not null,
        ordering_key text,
        sequence bigint,
        occurred_at timestamptz,
        received_at timestamptz not null,
        late boolean not null,
        venue_id text,
        zone text,
        device_id text,
        guest_id text,
        vip boolean,
        body jsonb not null,
        primary key (source, event_id)
    );
    create index if not exists events_venue_time on events (venue_id, occurred_at);
    create index if not exists events_venue_device on events (venue_id, device_id, occurred_at);
    create table if not exists device_sessions (
        venue_id text not null,
        device_id text not null,
        connected_at timestamptz not null,
        disconnected_at timestamptz,
        dwell_seconds double precision,
        connect_event_id text not null,
        disconnect_event_id text,
        primary key (venue_id, device_id, connect_event_id)
    );
    create table if not exists footfall_hourly (
        venue_id text not null,
        hour timestamptz not null,
        connections bigint not null,
        unique_devices bigint not null,
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
        id int primary key check (id = 1),
        deleted_before timestamptz not null
    );
    create index if not exists events_retention_time
        on events ((coalesce(occurred_at, received_at)));
    create index if not exists device_sessions_connected on device_sessions (connected_at);
    "#,
    ),
];

/// The horizon in microseconds, or none before the first sweep.
const HORIZON: &str = "select (extract(epoch from deleted_before) * 1000000)::int8
    from analytics_retention where id = 1";

/// The horizon as a `timestamptz` expression inside a statement (so the
/// statement reads it in its own snapshot); `-infinity` before any sweep.
const HORIZON_EXPR: &str =
    "coalesce((select deleted_before from analytics_retention where id = 1), '-infinity')";

/// Moves the horizon to `$1` (microseconds) unless it is already later;
/// answers the horizon in force.
const HORIZON_SET: &str = r#"
    insert into analytics_retention (id, deleted_before)
    values (1, timestamptz 'epoch' + $1::int8 * interval '1 microsecond')
    on conflict (id) do update
      set deleted_before = greatest(analytics_retention.deleted_before, excluded.deleted_before)
    returning (extract(epoch from deleted_before) * 1000000)::int8
"#;

const SWEEP_EVENTS: &str = r#"
    delete from events where (source, event_id) in (
        select source, event_id from events
        where coalesce(occurred_at, received_at) < timestamptz 'epoch' + $1::int8 * interval '1 microsecond'
        limit $2::int8
        for update skip locked)
"#;

const SWEEP_SESSIONS: &str = r#"
    delete from device_sessions where (venue_id, device_id, connect_event_id) in (
        select venue_id, device_id, connect_event_id from device_sessions
        where connected_at < timestamptz 'epoch' + $1::int8 * interval '1 microsecond'
        limit $2::int8
        for update skip locked)
"#;

const INSERT_EVENTS: &str = r#"
    insert into events (source, event_id, event_type, ordering_key, sequence, occurred_at,
                        received_at, late, venue_id, zone, device_id, guest_id, vip, body)
    select source, event_id, event_type, ordering_key, sequence,
           timestamptz 'epoch' + occurred * interval '1 microsecond',
           timestamptz 'epoch' + received * interval '1 microsecond',
           late, venue_id, zone, device_id, guest_id, vip, body::jsonb
    from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                $7::int8[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::bool[], $14::text[])
         as t(source, event_id, event_type, ordering_key, sequence, occurred,
              received, late, venue_id, zone, device_id, guest_id, vip, body)
    on conflict (source, event_id) do nothing
    returning venue_id, device_id
"#;

/// Deletes the footfall rows of the (venue, hour text) keys `$1`, `$2`,
/// none before the retention horizon (an hour a sweep deleted from keeps
/// its counts); [`FOOTFALL_INSERT`] then writes them again from the
/// sessions.
static FOOTFALL_DELETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "delete from footfall_hourly f
         using unnest($1::text[], $2::text[]) as k(venue_id, hour)
         where f.venue_id = k.venue_id and f.hour = k.hour::timestamptz
           and k.hour::timestamptz >= {HORIZON_EXPR}"
    )
});

/// Footfall of the (venue, hour) keys at or after the horizon: the visits
/// that began in the hour and the distinct devices that began them, from
/// `device_sessions`.
static FOOTFALL_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "insert into footfall_hourly (venue_id, hour, connections, unique_devices)
         select s.venue_id, k.hour::timestamptz, count(*), count(distinct s.device_id)
         from unnest($1::text[], $2::text[]) as k(venue_id, hour)
         join device_sessions s
           on s.venue_id = k.venue_id
          and s.connected_at >= k.hour::timestamptz
          and s.connected_at < k.hour::timestamptz + interval '1 hour'
         where k.hour::timestamptz >= {HORIZON_EXPR}
         group by s.venue_id, k.hour"
    )
});

/// Deletes the sessions of the (venue, device) keys `$1`, `$2`, answering
/// the hours they began in (their footfall must be recomputed).
const SESSIONS_DELETE: &str = r#"
    delete from device_sessions s
    using unnest($1::text[], $2::text[]) as k(venue_id, device_id)
    where s.venue_id = k.venue_id and s.device_id = k.device_id
    returning s.venue_id, date_trunc('hour', s.connected_at)::text
"#;

/// The sessions of every device `join` selects from `events e`, as rows of
/// `device_sessions`. A device's arrival and departure events, in
/// occurrence order, fall into visits, each closed by a departure: a visit
/// that holds an arrival is a session, from its first arrival to its
/// departure (none yet: still there). A departure with no arrival before
/// it in its visit makes no session. `horizon`: only events at or after
/// the retention horizon (what a sweep leaves).
fn sessions_select(join: &str, horizon: bool) -> String {
    use super::{ARRIVALS, DEPARTURES};
    let horizon = if horizon {
        format!("and coalesce(e.occurred_at, e.received_at) >= {HORIZON_EXPR}")
    } else {
        String::new()
    };
    format!(
        r#"
    select venue_id, device_id, occurred_at,
           case when last_end = 1 then last_at end,
           case when last_end = 1 then extract(epoch from last_at - occurred_at)::float8 end,
           event_id,
           case when last_end = 1 then last_id end
    from (
        select v.*,
               row_number() over g as pos,
               last_value(is_end) over gf as last_end,
               last_value(occurred_at) over gf as last_at,
               last_value(event_id) over gf as last_id
        from (
            select e.venue_id, e.device_id, e.occurred_at, e.sequence, e.event_id,
                   case when e.event_type in ({DEPARTURES}) then 1 else 0 end as is_end,
                   coalesce(sum(case when e.event_type in ({DEPARTURES}) then 1 else 0 end)
                       over (partition by e.venue_id, e.device_id
                             order by e.occurred_at, e.sequence, e.event_id
                             rows between unbounded preceding and 1 preceding), 0) as visit
            from events e
            {join}
            where e.occurred_at is not null and e.device_id is not null and e.venue_id is not null
              and e.event_type in ({ARRIVALS}, {DEPARTURES})
              {horizon}
        ) v
        window g as (partition by venue_id, device_id, visit
                     order by occurred_at, sequence, event_id),
               gf as (partition by venue_id, device_id, visit
                      order by occurred_at, sequence, event_id
                      rows between unbounded preceding and unbounded following)
    ) x
    where pos = 1 and is_end = 0
"#
    )
}

/// Recomputes the sessions of the (venue, device) keys `$1`, `$2`,
/// answering the hours they begin in.
static SESSIONS_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "insert into device_sessions (venue_id, device_id, connected_at, disconnected_at,
                                      dwell_seconds, connect_event_id, disconnect_event_id)
         {}
         returning venue_id, date_trunc('hour', connected_at)::text",
        sessions_select(
            "join unnest($1::text[], $2::text[]) as k(venue_id, device_id)
               on e.venue_id = k.venue_id and e.device_id = k.device_id",
            true
        )
    )
});

/// Migration 3: visits from every arrival type (`guest_connects` and
/// `guest_registered` too), ended by `venue_left` too: every session and
/// footfall row recomputed from `events` once.
static VISITS_MIGRATION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "create index if not exists device_sessions_venue_start
           on device_sessions (venue_id, connected_at);
         delete from device_sessions;
         insert into device_sessions (venue_id, device_id, connected_at, disconnected_at,
                                      dwell_seconds, connect_event_id, disconnect_event_id)
         {};
         delete from footfall_hourly;
         insert into footfall_hourly (venue_id, hour, connections, unique_devices)
         select venue_id, date_trunc('hour', connected_at), count(*), count(distinct device_id)
         from device_sessions group by 1, 2;",
        // Before any sweep (retention's table comes in migration 4).
        sessions_select("", false)
    )
});

/// The first key of the per-venue advisory locks (two-key form, a key
/// space apart from the migration lock's single key): "anlv".
const VENUE_LOCK_CLASS: i32 = 0x616e_6c76;

/// The second key of a venue's advisory lock: FNV-1a of its id, 32 bits.
/// Two venues that share a key only wait for each other.
fn venue_lock_key(venue: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in venue.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// The PostgreSQL analytics sink.
pub struct PostgresSink {
    name: String,
    url: String,
    client: Arc<Mutex<Option<Client>>>,
    /// The retention in force, if `retention` is set.
    retention: Option<Retention>,
    /// The sweeps' own connection, apart from the write path's.
    sweeper: Mutex<Option<Client>>,
    /// Counts events older than the horizon, not stored (whichever
    /// instance swept the store).
    refused: Option<prometheus::IntCounter>,
}

impl PostgresSink {
    /// Connects and applies migrations. Fails if the database cannot be
    /// reached at start-up (a misconfiguration should stop the process).
    pub async fn connect(name: &str, url: &str) -> Result<Self, SinkError> {
        let sink = PostgresSink {
            name: name.into(),
            url: url.into(),
            client: Arc::new(Mutex::new(None)),
            retention: None,
            sweeper: Mutex::new(None),
            refused: None,
        };
        let mut guard = sink.client.lock().await;
        let client = open(url)
            .await
            .map_err(|e| SinkError::Unavailable(format!("sinks.{name}: {e}")))?;
        *guard = Some(client);
        drop(guard);
        Ok(sink)
    }

    /// Sweeps past `settings`' retention, if it sets one, counting in
    /// `metrics`.
    pub fn with_retention(
        mut self,
        settings: Option<super::RetentionSettings>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        self.retention = Retention::of(settings);
        self.refused = Some(metrics.retention_refused.with_label_values(&[&self.name]));
        self
    }

    /// Answers the number of events refused as older than the horizon.
    async fn write(&self, batch: &[Arc<Event>]) -> Result<u64, String> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(open(&self.url).await?);
        }
        let Some(client) = guard.as_mut() else {
            return Err("no connection".into());
        };
        let result = write_batch(client, batch).await;
        if result.is_err() && client.is_closed() {
            *guard = None;
        }
        result
    }
}

async fn open(url: &str) -> Result<Client, String> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "analytics database connection ended");
        }
    });
    migrate(&mut client).await?;
    Ok(client)
}

/// The server's message and SQLSTATE where there is one (the plain
/// `Display` says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

async fn migrate(client: &mut Client) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| format!("migrate: {}", describe(&e));
    let tx = client.transaction().await.map_err(e)?;
    // One migrator at a time across instances.
    tx.execute("select pg_advisory_xact_lock(7461626)", &[])
        .await
        .map_err(e)?;
    tx.batch_execute(
        "create table if not exists schema_migrations (
            version int primary key, applied_at timestamptz not null default now())",
    )
    .await
    .map_err(e)?;
    for (version, sql) in migrations() {
        let done = tx
            .query_opt(
                "select 1 from schema_migrations where version = $1",
                &[&version],
            )
            .await
            .map_err(e)?
            .is_some();
        if !done {
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute(
                "insert into schema_migrations (version) values ($1)",
                &[&version],
            )
            .await
            .map_err(e)?;
            tracing::info!(version, "analytics schema migrated");
        }
    }
    tx.commit().await.map_err(e)
}

/// One sweep: moves the horizon to `horizon` (or keeps a later one), then
/// deletes what lies before it, `batch` rows per statement.
async fn sweep(client: &Client, horizon: i64, batch: u32) -> Result<(u64, u64), String> {
    let err =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    let horizon: i64 = client
        .query_one(HORIZON_SET, &[&horizon])
        .await
        .map_err(err("retention horizon"))?
        .get(0);
    let batch = i64::from(batch);
    let mut removed = [0u64; 2];
    for (i, sql) in [SWEEP_EVENTS, SWEEP_SESSIONS].into_iter().enumerate() {
        loop {
            let n = client
                .execute(sql, &[&horizon, &batch])
                .await
                .map_err(err("retention delete"))?;
            removed[i] += n;
            if n == 0 {
                break;
            }
        }
    }
    Ok((removed[0], removed[1]))
}

async fn write_batch(client: &mut Client, batch: &[Arc<Event>]) -> Result<u64, String> {
    let err =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(err("begin"))?;
    // Events older than the horizon are not stored (late, or replayed):
    // their hours' rollups are kept as they were when swept.
    let horizon: Option<i64> = tx
        .query_opt(HORIZON, &[])
        .await
        .map_err(err("retention horizon"))?
        .map(|r| r.get(0));
    let (batch, refused): (Vec<&Arc<Event>>, Vec<&Arc<Event>>) = batch
        .iter()
        .partition(|e| horizon.is_none_or(|h| kept_by(e) >= h));
    let refused = refused.len() as u64;
    if batch.is_empty() {
        tx.commit().await.map_err(err("commit"))?;
        return Ok(refused);
    }
    let n = batch.len();
    let mut source = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut ordering_key: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut sequence: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut occurred: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    let mut late = Vec::with_capacity(n);
    let mut venue: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut zone: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut device: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut guest: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut vip: Vec<Option<bool>> = Vec::with_capacity(n);
    let mut body = Vec::with_capacity(n);
    for e in &batch {
        let r = Row::of(e);
        source.push(r.source);
        event_id.push(r.event_id);
        event_type.push(r.event_type);
        ordering_key.push(r.ordering_key);
        sequence.push(r.sequence);
        occurred.push(r.occurred_micros);
        received.push(r.received_micros);
        late.push(r.late);
        venue.push(r.venue);
        zone.push(r.zone);
        device.push(r.device);
        guest.push(r.guest);
        vip.push(r.vip);
        body.push(r.body);
    }
    let rows = tx
        .query(
            INSERT_EVENTS,
            &[
                &source,
                &event_id,
                &event_type,
                &ordering_key,
                &sequence,
                &occurred,
                &received,
                &late,
                &venue,
                &zone,
                &device,
                &guest,
                &vip,
                &body,
            ],
        )
        .await
        .map_err(err("insert events"))?;
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    let mut locks: BTreeSet<i32> = BTreeSet::new();
    for row in &rows {
        let venue: Option<String> = row.get(0);
        let device: Option<String> = row.get(1);
        if let (Some(v), Some(d)) = (venue, device) {
            locks.insert(venue_lock_key(&v));
            devices.insert((v, d));
        }
    }
    // One writer at a time per venue from here to the commit (module
    // header): ascending keys, so no two batches wait in a circle.
    for key in locks {
        tx.execute(
            "select pg_advisory_xact_lock($1, $2)",
            &[&VENUE_LOCK_CLASS, &key],
        )
        .await
        .map_err(err("venue lock"))?;
    }
    // The touched devices' sessions, then the footfall of every hour a
    // session of theirs began in, before or after (a late event can move
    // a visit's start to another hour, or split one visit in two).
    if !devices.is_empty() {
        let (v, d): (Vec<String>, Vec<String>) = devices.into_iter().unzip();
        let mut hours: BTreeSet<(String, String)> = BTreeSet::new();
        for statement in [SESSIONS_DELETE, SESSIONS_INSERT.as_str()] {
            let rows = tx
                .query(statement, &[&v, &d])
                .await
                .map_err(err("sessions"))?;
            hours.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
        }
        if !hours.is_empty() {
            let (v, h): (Vec<String>, Vec<String>) = hours.into_iter().unzip();
            for statement in [FOOTFALL_DELETE.as_str(), FOOTFALL_INSERT.as_str()] {
                tx.execute(statement, &[&v, &h])
                    .await
                    .map_err(err("footfall"))?;
            }
        }
    }
    tx.commit().await.map_err(err("commit"))?;
    Ok(refused)
}

impl crate::sinks::Retained for PostgresSink {
    fn sweep_interval(&self) -> std::time::Duration {
        self.retention
            .as_ref()
            .map_or(super::default_sweep_interval(), |r| r.interval)
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Vec<(&'static str, u64)>, String>> {
        Box::pin(async move {
            let Some(retention) = &self.retention else {
                return Ok(Vec::new());
            };
            let mut guard = self.sweeper.lock().await;
            if guard.as_ref().is_none_or(Client::is_closed) {
                *guard = Some(open(&self.url).await?);
            }
            let Some(client) = guard.as_ref() else {
                return Err("no connection".into());
            };
            let result = sweep(client, retention.horizon_now(), retention.batch).await;
            if result.is_err() && client.is_closed() {
                *guard = None;
            }
            let (events, sessions) = result?;
            Ok(vec![("events", events), ("device_sessions", sessions)])
        })
    }
}

impl Sink for PostgresSink {
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
            // PostgreSQL text and jsonb cannot hold U+0000, which JSON
            // allows (`\u0000`): such an event would fail its batch on
            // every retry and stall the partition. It is refused on its
            // own (dead-lettered with this reason); the rest is written.
            let storable: Vec<Arc<Event>> =
                batch.iter().filter(|e| !holds_nul(e)).cloned().collect();
            let written = if storable.is_empty() {
                Ok(())
            } else {
                self.write(&storable).await.map(|refused| {
                    if let Some(c) = &self.refused {
                        c.inc_by(refused);
                    }
                })
            };
            batch
                .iter()
                .map(|e| match (&written, holds_nul(e)) {
                    (_, true) => Outcome::Reject(NUL_REFUSED.into()),
                    (Ok(()), false) => Outcome::Accepted,
                    (Err(why), false) => Outcome::Retry(why.clone()),
                })
                .collect()
        })
    }
}

/// Why an event holding U+0000 is refused by this sink.
pub const NUL_REFUSED: &str = "a string holds U+0000, which PostgreSQL text and jsonb cannot store";

/// Whether any string of the event (typed fields, body values or keys)
/// holds U+0000.
pub fn holds_nul(event: &Event) -> bool {
    fn in_value(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(in_value),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || in_value(v)),
            _ => false,
        }
    }
    [
        Some(event.source.as_str()),
        Some(event.event_id.as_str()),
        Some(event.event_type.as_str()),
        event.ordering_key.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|s| s.contains('\0'))
        || in_value(&event.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: serde_json::Value) -> Event {
        Event {
            source: "purple".into(),
            event_id: "evt_1".into(),
            event_type: "t".into(),
            ordering_key: None,
            sequence: None,
            received_at_micros: 0,
            occurred_at_micros: None,
            late: false,
            guest_wifi: None,
            body,
        }
    }

    #[test]
    fn venue_lock_keys_are_stable_across_builds_and_hosts() {
        // Every writer, whatever its version, must lock a venue by the
        // same key: these values are FNV-1a 32 and must never change.
        assert_eq!(venue_lock_key(""), 0x811c_9dc5_u32 as i32);
        assert_eq!(venue_lock_key("a"), 0xe40c_292c_u32 as i32);
        assert_ne!(venue_lock_key("venue-017"), venue_lock_key("venue-018"));
    }

    #[test]
    fn nul_anywhere_in_a_string_is_found_and_nothing_else_is() {
        // Regression: one `\u0000` failed the whole batch on every retry.
        for body in [
            serde_json::json!({"zone": "lob\u{0}by"}),
            serde_json::json!({"a": [1, {"b": ["\u{0}"]}]}),
            serde_json::json!({"k\u{0}ey": 1}),
        ] {
            assert!(holds_nul(&event(body.clone())), "{body}");
        }
        for body in [
            serde_json::json!({"zone": "\\u0000 is text here", "n": 0, "s": "'; drop table events; --"}),
            serde_json::json!({"ansi": "\u{1b}[31m", "sep": "\u{2028}", "t": "{{guest.email}}"}),
        ] {
            assert!(!holds_nul(&event(body.clone())), "{body}");
        }
        let mut e = event(serde_json::json!({}));
        e.event_type = "a\u{0}".into();
        assert!(holds_nul(&e));
    }
}
