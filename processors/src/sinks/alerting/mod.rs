//! The alerting sink (`kind = "alerts"`): live occupancy per venue and zone,
//! evaluated on the ordered, de-duplicated stream, raising and resolving
//! alerts that are delivered to Slack-compatible incoming webhooks,
//! Prometheus Alertmanager (`POST /api/v2/alerts`) and the log.
//!
//! # Rules
//!
//! - `zone_occupancy`: the number of devices connected in a (venue, zone) is
//!   over `threshold` → `ZoneOverCapacity`; it resolves when the count is at
//!   or below `clear_at` (default: the threshold; lower it for hysteresis).
//!   A device is in the zone of its last `device_connected`,
//!   `guest_registered`,
//!   `guest_connects` or `zone_entered` event and leaves the venue with
//!   `device_disconnected` or `venue_left` (its guest left the venue); any
//!   other event naming it (a type the platform added since among them)
//!   only says it is still there; a device not heard of for `session_timeout`
//!   (venue event time) is no longer counted, so a lost disconnect cannot
//!   inflate a zone for ever.
//! - `vip_arrival`: an event of `types` (default `guest_connects`,
//!   `device_connected`) whose guest is VIP → `VipArrival`. One-shot: one
//!   notification per arrival, no resolve message; Alertmanager gets it with
//!   `endsAt = now + alert_ttl`.
//! - `dwell`: a device connected at the venue for longer than `threshold`
//!   → `DwellOverThreshold`, resolved when it disconnects (or its session
//!   expires). Dwell is measured in the venue's event time (the newest
//!   `occurred_at` seen for the venue), so it is checked when the venue's
//!   stream advances: a venue that sends nothing raises nothing new.
//!
//! Each alert has a fingerprint (rule kind, rule name, venue, zone / guest /
//! device). One condition raises one alert: while it is firing, more
//! over-threshold events only update its annotations. `cooldown` (event
//! time) is the least time between two raises of one fingerprint: a
//! condition that clears and comes back inside it is not raised again
//! (counted in `processors_alerts_suppressed_total`); it is raised by the
//! first evaluation after the cooldown if it still holds.
//!
//! # What drives live state
//!
//! Only guest-WiFi events that are neither `late` (their sequence slot was
//! skipped: their state is stale, DESIGN.md) nor older than `max_event_age`
//! (`occurred_at` against the wall clock when applied) nor dated more than
//! `max_clock_skew` (default 5 minutes) ahead of their `received_at` or of
//! the wall clock when applied. A replay of last week therefore pages
//! nobody and leaves the live counters alone. The price: after an outage
//! longer than `max_event_age`, the backlog is skipped and the counts are
//! rebuilt from the new events (sessions left open expire after
//! `session_timeout`). Ignored events are counted in
//! `processors_alerting_events_ignored_total` by reason (`duplicate`,
//! `late`, `stale`, `future`, `not_guest_wifi`); the analytics store keeps
//! future-dated events as received.
//!
//! A venue's clock (its newest `occurred_at`, which drives session expiry
//! and dwell) never passes the wall clock plus `max_clock_skew`: an event
//! dated years ahead would otherwise move it there and expire every
//! session of the venue at once, and every new one after it, for good.
//!
//! # State that follows its partition
//!
//! The live state (devices, venue clocks, alerts with their raise numbers
//! and cooldowns) belongs to the raw-topic partition its venue's events
//! are in, as the dedupe ledger and reorder positions do (see
//! `crate::state`), so whichever instance the group assigns a partition
//! continues it:
//!
//! - Each batch's changes are one record per changed key (a device, a
//!   venue's clock, an alert) in the state changelog, written with the
//!   batch's checkpoint, before its offset may be committed. Devices,
//!   clocks and each touched venue's occupancy for the minute of its
//!   clock (derived from the devices, never restored: the venue view's
//!   live count and last hour) are the venue state
//!   (`schemas::venue_state`, an Avro contract the venue view reads);
//!   alerts are JSON of this sink's own. A resolved
//!   (or one-shot) alert raised longer ago than `applied_retention` or the
//!   longest rule cooldown, whichever is longer, is forgotten by a later
//!   batch of its partition, its record replaced by a tombstone: a VIP
//!   arrival's guest id and name do not stay in the compacted changelog.
//! - The SQLite file (`path`, WAL, `synchronous=FULL`) is a cache of that
//!   changelog, one set of rows per partition. It remembers the changelog
//!   offset its rows of each partition reflect; a partition that comes
//!   back is restored from there. A partition whose rows took a batch the
//!   changelog never acknowledged (a crash, a hand-over in the middle) is
//!   dropped and rebuilt from the changelog on its next restore, as Kafka
//!   Streams wipes a store under exactly-once: the re-read events then
//!   change the rebuilt state, and write their records, again.
//! - A notification is sent only once the changelog acknowledged its
//!   batch. The outbox keeps its rows across a rebuild (their batch may
//!   have reached the changelog just before a crash, and is then not read
//!   again), and a notification raised again by a rebuilt batch is not
//!   queued when one with its key is waiting or was sent (sent keys are
//!   remembered for `applied_retention`).
//! - Each batch is one `BEGIN IMMEDIATE` transaction that also records the
//!   applied (source, event id) pairs (the pipeline's ledger already keeps
//!   applied events from being offered again; this guards the rows
//!   against a batch offered twice on one host) and appends the
//!   notifications to an outbox, one row per receiver. Applied ids are kept
//!   for `applied_retention` (default 72 h, the dedupe window).
//! - Only the partition's owner acts on its alerts: the delivery task
//!   re-posts the firing alerts of the partitions this instance owns, at
//!   once when it takes one over and then every `resend_interval`, under
//!   the same labels and start, so Alertmanager keeps one alert; an
//!   instance that loses a partition stops re-posting its alerts at the
//!   hand-over, and the new owner is the one that resolves them.
//!
//! Without partition state (a replay, or a pipeline run without
//! changelogs) the sink keeps its rows under partition `-1`, per host.
//!
//! A delivery task sends each receiver's outbox rows in order and deletes a
//! row only after the receiver accepted it (`2xx`). Failures are retried
//! per receiver with exponential backoff and jitter (`retry_initial` to
//! `retry_max`; `429` honours `Retry-After`, capped at `retry_max`), while
//! the pipeline goes on: a receiver that is down delays its notifications,
//! never the stream, and the outbox drains when it returns. A `4xx` other
//! than 408 and 429 is permanent: the row is dropped and counted
//! (`status="dropped"`). A receiver's outbox is capped at `max_outbox` rows;
//! past it the oldest are dropped and counted.
//!
//! - Alertmanager is idempotent by label set: a repeat after a crash is
//!   harmless. Firing alerts are re-posted with `endsAt = now +
//!   alert_ttl`, so Alertmanager keeps them while the condition holds, and
//!   lets them expire on its own `alert_ttl` after the processors stop for
//!   good. A resolve is posted with `endsAt` = when it cleared.
//! - Slack has no idempotency: delivery is at-least-once. Each request
//!   carries `Idempotency-Key: alert-<fingerprint hash>-<raise
//!   number>-<firing|resolved>`, the same on every attempt and on every
//!   host, so a proxy can drop repeats. A notification is repeated when a
//!   kill -9 (or a response lost to a timeout) comes between Slack
//!   accepting it and its outbox row's delete, or when its batch is
//!   rebuilt (above) and raises it again.
//! - Receivers are served one after another by one task: a receiver whose
//!   requests time out delays the others' deliveries by up to `timeout`
//!   per round (it then backs off and is skipped until its pause ends).
//! - One file per instance: only the process holding an exclusive `flock`
//!   on `<path>.deliver.lock` delivers, and it sends and re-posts only for
//!   the partitions it owns.
//!
//! The outbox follows its partition too. Each queued notification is a
//! record of the partition's changelog (written with its batch); once a
//! receiver took it, the instance notes it as sent, and the partition's
//! next checkpoint (at most 250 ms later, and always at a hand-over)
//! writes that down. A hand-over first stops the partition's deliveries
//! and waits for the one under way, so the new owner, which restores the
//! notifications still waiting, never sends one the previous owner sent:
//! rebalances, SIGTERM, scale-up and scale-down repeat nothing. Only a
//! `kill -9` between a receiver's `2xx` and that checkpoint can repeat a
//! notification (on another host; the same host remembers what it sent),
//! under the same `Idempotency-Key`.
//!
//! # Secrets
//!
//! A Slack webhook URL carries its token: it is read from the environment
//! variable `url_env` at start, and never logged, never put in a metric or an
//! error (request errors are stripped of their URL). Only `http://` URLs are
//! built in (as for the CRM sink): put a TLS-terminating egress proxy in
//! front of `hooks.slack.com`.

mod config;
mod deliver;
mod engine;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::sinks::contract::{
    Accepted, BoxFuture, KeyedChange, Outcome, PartitionSink, Sink, SinkError,
};

pub use config::*;
use deliver::*;
use engine::outbox_key;
pub use engine::*;

/// The alerting sink: applies batches to the state file and wakes the
/// delivery task.
pub struct AlertsSink {
    name: String,
    engine: Engine,
    conn: Arc<Mutex<Connection>>,
    metrics: Metrics,
    wake: Arc<tokio::sync::Notify>,
    /// The partitions this instance owns, with their epochs: only their
    /// firing alerts are re-posted (see [`Owned`]).
    owned: Owned,
    /// How long [`Sink::finish`] waits for the outbox to drain.
    drain_bound: std::time::Duration,
}

/// The partitions whose alerts and notifications this instance acts on,
/// with the epoch of each ownership, shared by the sink and its delivery
/// task. State kept without partitions ([`UNPARTITIONED`]) is always its
/// own.
#[derive(Clone, Default)]
pub struct Owned {
    epochs: Arc<Mutex<HashMap<i32, i64>>>,
    /// Set when a partition was taken over: its firing alerts are
    /// re-posted at once, not at the next `resend_interval`.
    taken_over: Arc<std::sync::atomic::AtomicBool>,
    /// Per partition, the notifications sent since its last checkpoint:
    /// their records are written with the next one (see
    /// [`PartitionSink::pending`]).
    sent: Arc<Mutex<HashMap<i32, Vec<KeyedChange>>>>,
    /// Held by the delivery task while it sends one notification and
    /// records it: a hand-over waits for it, so a notification sent by the
    /// previous owner is always in the changelog as sent.
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Owned {
    fn set(&self, partition: i32, epoch: i64) {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, epoch);
        self.taken_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a partition was taken over since the last call.
    pub fn taken_over(&self) -> bool {
        self.taken_over
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    fn release(&self, partition: i32, epoch: i64) {
        let mut owned = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        if owned.get(&partition) == Some(&epoch) {
            owned.remove(&partition);
        }
    }

    /// Whether alerts of `partition` are this instance's to act on.
    pub fn holds(&self, partition: i32) -> bool {
        partition == UNPARTITIONED
            || self
                .epochs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&partition)
    }

    /// Notes that the notification `key` of `partition` went to
    /// `receiver`: the changelog learns it with the partition's next
    /// checkpoint.
    pub fn sent(&self, partition: i32, receiver: &str, key: &str) {
        if partition == UNPARTITIONED {
            return;
        }
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(partition)
            .or_default()
            .push((outbox_key(receiver, key), None));
    }

    /// The partitions owned now.
    pub fn partitions(&self) -> Vec<i32> {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The lock the delivery task holds for one notification.
    pub fn sending(&self) -> &tokio::sync::Mutex<()> {
        &self.sending
    }
}

impl AlertsSink {
    /// Opens the state file, reads the receivers' secrets and starts the
    /// delivery task (inside a tokio runtime). Errors name the field, never
    /// a secret.
    pub fn start(
        name: &str,
        config: &AlertsConfig,
        metrics: &Metrics,
    ) -> Result<AlertsSink, SinkError> {
        let at = format!("sinks.{name}");
        let problems = config.problems(&at);
        if let Some(first) = problems.into_iter().next() {
            return Err(SinkError::Config(first));
        }
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::Unavailable(format!("{at}.path: {}: {e}", dir.display()))
            })?;
        }
        let conn = open_db(&config.path).map_err(|e| {
            SinkError::Unavailable(format!("{at}.path: {}: {e}", config.path.display()))
        })?;
        let mut receivers = Vec::new();
        for (i, r) in config.receivers.iter().enumerate() {
            let ra = format!("{at}.receivers[{i}]");
            let built = match r {
                ReceiverConfig::Slack { url_env, .. } => Receiver::Slack {
                    url: std::env::var(url_env).map_err(|_| {
                        SinkError::Config(format!(
                            "{ra}.url_env: environment variable {url_env} is not set"
                        ))
                    })?,
                },
                ReceiverConfig::Alertmanager { url, .. } => Receiver::Alertmanager {
                    url: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                },
                ReceiverConfig::Log { .. } => Receiver::Log,
            };
            receivers.push((r.name().to_owned(), built));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SinkError::Config(format!("{at}: HTTP client: {}", e.without_url())))?;
        let engine = Engine::new(config);
        for rule in &engine.rules {
            for c in [&metrics.alerts_raised, &metrics.alerts_resolved] {
                c.with_label_values(&[name, rule.name()]);
            }
        }
        for (r, _) in &receivers {
            for s in ["sent", "failed", "dropped"] {
                metrics.alert_notifications.with_label_values(&[name, r, s]);
            }
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        let owned = Owned::default();
        let deliverer = Deliverer {
            owned: owned.clone(),
            sink: name.into(),
            path: config.path.clone(),
            receivers,
            client,
            config: config.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
        };
        tokio::spawn(deliverer.run());
        Ok(AlertsSink {
            name: name.into(),
            engine,
            conn: Arc::new(Mutex::new(conn)),
            metrics: metrics.clone(),
            wake,
            owned,
            drain_bound: config.timeout * 2,
        })
    }

    /// Devices connected per (venue, zone) in the partitions this instance
    /// owns (and in state kept without partitions): the live occupancy
    /// its rules see. Devices without a zone are counted under `""`.
    pub fn occupancy(&self) -> Result<crate::sinks::Occupancy, String> {
        let rows = self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT partition, venue, coalesce(zone, ''), COUNT(*) FROM devices
                 GROUP BY partition, venue, zone",
            )?;
            st.query_map([], |r| {
                Ok((
                    r.get::<_, i32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut out = std::collections::BTreeMap::new();
        for (partition, venue, zone, n) in rows {
            if self.owned.holds(partition) {
                *out.entry((venue, zone)).or_default() += n;
            }
        }
        Ok(out)
    }

    /// Whether this instance acts on `partition`'s alerts (it owns it).
    pub fn owns(&self, partition: i32) -> bool {
        self.owned.holds(partition)
    }

    /// Applies `batch` of `partition` in one transaction on the blocking
    /// pool: every event accepted with the changes, or every event to
    /// retry.
    async fn apply_batch(&self, partition: i32, batch: &[Arc<Event>]) -> Accepted {
        let events: Vec<Arc<Event>> = batch.to_vec();
        let engine = self.engine.clone();
        let conn = self.conn.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| "alert state connection poisoned".to_string())?;
            engine
                .apply_in(&mut c, partition, &events, now_micros())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match done {
            Ok(applied) => {
                self.count(&applied.stats);
                if applied.stats.enqueued > 0 {
                    self.wake.notify_one();
                }
                Accepted {
                    outcomes: vec![Outcome::Accepted; batch.len()],
                    changes: applied.changes,
                    serial: applied.serial,
                }
            }
            Err(e) => Accepted {
                outcomes: vec![Outcome::Retry(format!("alert state: {e}")); batch.len()],
                changes: Vec::new(),
                serial: 0,
            },
        }
    }

    /// Runs `f` on the state connection (a short blocking call).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| "alert state connection poisoned".to_string())?;
        f(&mut c).map_err(|e| format!("alert state: {e}"))
    }

    fn count(&self, stats: &BatchStats) {
        let m = &self.metrics;
        for (rule, n) in &stats.raised {
            m.alerts_raised
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (rule, n) in &stats.resolved {
            m.alerts_resolved
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (rule, n) in &stats.suppressed {
            m.alerts_suppressed
                .with_label_values(&[&self.name, rule])
                .inc_by(*n);
        }
        for (reason, n) in &stats.ignored {
            m.alerting_ignored
                .with_label_values(&[self.name.as_str(), reason])
                .inc_by(*n);
        }
    }
}

impl Sink for AlertsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move { self.apply_batch(UNPARTITIONED, batch).await.outcomes })
    }

    fn partition_state(&self) -> Option<&dyn PartitionSink> {
        Some(self)
    }

    fn occupancy(&self) -> Option<Result<crate::sinks::Occupancy, String>> {
        Some(AlertsSink::occupancy(self))
    }

    /// Waits (up to twice the receivers' `timeout`) until the
    /// notifications kept without partitions (a replay's) are sent: a
    /// partition's went with its state to its next owner at the hand-over.
    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.drain_bound;
            loop {
                let left = self.with_conn(|c| {
                    c.query_row(
                        // A partition's notifications went with its
                        // state to the next owner: only those kept
                        // without partitions are this instance's alone.
                        "SELECT COUNT(*) FROM outbox WHERE partition = -1",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                });
                match left {
                    Ok(0) => return,
                    Ok(n) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(sink = %self.name, notifications = n, "stopping with notifications not yet sent: this instance sends them when it starts again");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(sink = %self.name, error = %e, "outbox cannot be read at shutdown");
                        return;
                    }
                }
                self.wake.notify_one();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    }
}

impl PartitionSink for AlertsSink {
    fn cached_at(&self, partition: i32) -> Result<Option<i64>, String> {
        self.with_conn(|c| engine::cached_at(c, partition))
    }

    fn forget(&self, partition: i32) -> Result<(), String> {
        self.with_conn(|c| engine::forget(c, partition))
    }

    fn restore(&self, partition: i32, records: &[KeyedChange]) -> Result<(), String> {
        let unreadable = self.with_conn(|c| engine::restore_records(c, partition, records))?;
        if unreadable > 0 {
            tracing::error!(
                sink = %self.name,
                partition,
                unreadable,
                "unreadable alert state records skipped while restoring: those keys keep their previous state"
            );
        }
        Ok(())
    }

    fn restored(&self, partition: i32, epoch: i64, next_offset: i64) -> Result<(), String> {
        self.with_conn(|c| engine::restored(c, partition, next_offset))?;
        self.owned.set(partition, epoch);
        // Take the partition's firing alerts over now (Alertmanager
        // keeps them one alert; see the deliverer's refresh).
        self.wake.notify_one();
        Ok(())
    }

    fn accept_partition<'a>(
        &'a self,
        partition: i32,
        batch: &'a [Arc<Event>],
    ) -> BoxFuture<'a, Accepted> {
        Box::pin(self.apply_batch(partition, batch))
    }

    fn checkpointed(&self, partition: i32, serial: u64, next_offset: Option<i64>) {
        if let Err(e) = self.with_conn(|c| engine::checkpointed(c, partition, serial, next_offset))
        {
            // Left unmarked, the partition is rebuilt from the changelog
            // on its next restore: slower, never wrong.
            tracing::warn!(sink = %self.name, partition, error = %e, "alert state checkpoint not recorded");
        }
        // Its notifications may go now.
        self.wake.notify_one();
    }

    fn revoked(&self, partition: i32, epoch: i64) {
        self.owned.release(partition, epoch);
    }

    fn releasing(&self, partition: i32, epoch: i64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.owned.release(partition, epoch);
            // A notification of it being sent now finishes (and is noted
            // as sent) before the hand-over's last checkpoint.
            drop(self.owned.sending().lock().await);
        })
    }

    fn pending(&self, partition: i32) -> Option<(Vec<KeyedChange>, u64)> {
        let sent = self
            .owned
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition)?;
        // The last batch the pipeline checkpointed, not the last applied:
        // a batch applied here and then left unfinished (another sink still
        // retrying at a hand-over) is not in the changelog, and reporting
        // its serial would mark this file clean with it: the next owner
        // here would skip its events and the changelog never get them.
        // The pipeline settles every batch's checkpoint before it asks.
        let serial = self
            .with_conn(|c| {
                c.query_row(
                    "SELECT checkpointed FROM partitions WHERE partition = ?1",
                    [partition],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0);
        Some((sent, serial as u64))
    }
}
