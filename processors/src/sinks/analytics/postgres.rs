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

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use super::Row;
use crate::event::Event;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
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
];

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
    returning venue_id, device_id, date_trunc('hour', occurred_at)::text
"#;

const FOOTFALL: &str = r#"
    insert into footfall_hourly (venue_id, hour, connections, unique_devices)
    select e.venue_id, date_trunc('hour', e.occurred_at), count(*), count(distinct e.device_id)
    from events e
    join unnest($1::text[], $2::text[]) as k(venue_id, hour)
      on e.venue_id = k.venue_id and date_trunc('hour', e.occurred_at) = k.hour::timestamptz
    where e.event_type = 'device_connected'
    group by 1, 2
    on conflict (venue_id, hour) do update
      set connections = excluded.connections, unique_devices = excluded.unique_devices
"#;

const SESSIONS_DELETE: &str = r#"
    delete from device_sessions s
    using unnest($1::text[], $2::text[]) as k(venue_id, device_id)
    where s.venue_id = k.venue_id and s.device_id = k.device_id
"#;

const SESSIONS_INSERT: &str = r#"
    insert into device_sessions (venue_id, device_id, connected_at, disconnected_at,
                                 dwell_seconds, connect_event_id, disconnect_event_id)
    select venue_id, device_id, occurred_at,
           case when next_type in ('device_disconnected', 'venue_left') then next_at end,
           case when next_type in ('device_disconnected', 'venue_left')
                then extract(epoch from next_at - occurred_at)::float8 end,
           event_id,
           case when next_type in ('device_disconnected', 'venue_left') then next_id end
    from (
        select e.venue_id, e.device_id, e.event_type, e.occurred_at, e.event_id,
               lead(e.event_type) over w as next_type,
               lead(e.occurred_at) over w as next_at,
               lead(e.event_id) over w as next_id
        from events e
        join unnest($1::text[], $2::text[]) as k(venue_id, device_id)
          on e.venue_id = k.venue_id and e.device_id = k.device_id
        where e.event_type in ('device_connected', 'device_disconnected', 'venue_left')
        window w as (partition by e.venue_id, e.device_id
                     order by e.occurred_at, e.sequence, e.event_id)
    ) x
    where event_type = 'device_connected'
"#;

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
}

impl PostgresSink {
    /// Connects and applies migrations. Fails if the database cannot be
    /// reached at start-up (a misconfiguration should stop the process).
    pub async fn connect(name: &str, url: &str) -> Result<Self, SinkError> {
        let sink = PostgresSink {
            name: name.into(),
            url: url.into(),
            client: Arc::new(Mutex::new(None)),
        };
        let mut guard = sink.client.lock().await;
        let client = open(url)
            .await
            .map_err(|e| SinkError::Unavailable(format!("sinks.{name}: {e}")))?;
        *guard = Some(client);
        drop(guard);
        Ok(sink)
    }

    async fn write(&self, batch: &[Arc<Event>]) -> Result<(), String> {
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
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "select 1 from schema_migrations where version = $1",
                &[version],
            )
            .await
            .map_err(e)?
            .is_some();
        if !done {
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute(
                "insert into schema_migrations (version) values ($1)",
                &[version],
            )
            .await
            .map_err(e)?;
            tracing::info!(version, "analytics schema migrated");
        }
    }
    tx.commit().await.map_err(e)
}

async fn write_batch(client: &mut Client, batch: &[Arc<Event>]) -> Result<(), String> {
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
    for e in batch {
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
    let err =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(err("begin"))?;
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
    let mut hours: BTreeSet<(String, String)> = BTreeSet::new();
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    let mut locks: BTreeSet<i32> = BTreeSet::new();
    for row in &rows {
        let venue: Option<String> = row.get(0);
        let device: Option<String> = row.get(1);
        let hour: Option<String> = row.get(2);
        if let Some(v) = venue {
            locks.insert(venue_lock_key(&v));
            if let Some(h) = hour {
                hours.insert((v.clone(), h));
            }
            if let Some(d) = device {
                devices.insert((v, d));
            }
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
    if !hours.is_empty() {
        let (v, h): (Vec<String>, Vec<String>) = hours.into_iter().unzip();
        tx.execute(FOOTFALL, &[&v, &h])
            .await
            .map_err(err("footfall"))?;
    }
    if !devices.is_empty() {
        let (v, d): (Vec<String>, Vec<String>) = devices.into_iter().unzip();
        tx.execute(SESSIONS_DELETE, &[&v, &d])
            .await
            .map_err(err("sessions"))?;
        tx.execute(SESSIONS_INSERT, &[&v, &d])
            .await
            .map_err(err("sessions"))?;
    }
    tx.commit().await.map_err(err("commit"))
}

impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
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
                self.write(&storable).await
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
