//! State and rule evaluation, synchronous, on one SQLite connection: the
//! schema, the applied ids, devices, venue clocks, alerts and the outbox
//! rows each batch's transaction appends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use schemas::venue_state::{Entry, Key, VenueState, VipGuest};

use crate::event::Event;

use super::config::*;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS applied (
    partition INTEGER NOT NULL, source TEXT NOT NULL, event_id TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (partition, source, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_by_time ON applied (applied_at);
CREATE TABLE IF NOT EXISTS devices (
    partition INTEGER NOT NULL, venue TEXT NOT NULL, device TEXT NOT NULL, zone TEXT,
    connected_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    vip_id TEXT, vip_name TEXT,
    PRIMARY KEY (partition, venue, device)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_by_zone ON devices (partition, venue, zone);
CREATE TABLE IF NOT EXISTS venues (
    partition INTEGER NOT NULL, venue TEXT NOT NULL, watermark INTEGER NOT NULL,
    PRIMARY KEY (partition, venue)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    partition INTEGER NOT NULL, fingerprint TEXT NOT NULL, rule TEXT NOT NULL,
    state TEXT NOT NULL, generation INTEGER NOT NULL, last_raised_at INTEGER NOT NULL,
    alert TEXT NOT NULL,
    PRIMARY KEY (partition, fingerprint)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts (state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL,
    notification TEXT NOT NULL, created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    partition INTEGER NOT NULL DEFAULT -1, serial INTEGER NOT NULL DEFAULT 0,
    key TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS outbox_by_receiver ON outbox (receiver, id);
CREATE INDEX IF NOT EXISTS outbox_by_key ON outbox (receiver, key);
CREATE TABLE IF NOT EXISTS sent (
    receiver TEXT NOT NULL, key TEXT NOT NULL, sent_at INTEGER NOT NULL,
    PRIMARY KEY (receiver, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_by_time ON sent (sent_at);
CREATE TABLE IF NOT EXISTS partitions (
    partition INTEGER PRIMARY KEY, serial INTEGER NOT NULL DEFAULT 0,
    checkpointed INTEGER NOT NULL DEFAULT 0, clean_at INTEGER);
PRAGMA user_version = 3;
";

/// Tables of the version 1 file, whose rows had no partition: dropped on
/// upgrade (their state was never in the changelog); the outbox stays,
/// its rows unpartitioned (sent as before).
const DROP_V1: &str = "
DROP TABLE IF EXISTS applied; DROP TABLE IF EXISTS devices;
DROP TABLE IF EXISTS venues; DROP TABLE IF EXISTS alerts;
ALTER TABLE outbox ADD COLUMN partition INTEGER NOT NULL DEFAULT -1;
ALTER TABLE outbox ADD COLUMN serial INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN key TEXT NOT NULL DEFAULT '';
";

/// The partition of state applied without partition state (replay, a
/// pipeline without a changelog): never restored, never written.
pub const UNPARTITIONED: i32 = -1;

/// Opens (creating) the state file with the settings every connection
/// needs.
pub fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 2 {
        // Version 3 keeps each device's VIP guest (the venue view lists
        // the VIPs present); devices of a version 2 file have none until
        // their next event names one.
        c.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE devices ADD COLUMN vip_id TEXT;
             ALTER TABLE devices ADD COLUMN vip_name TEXT;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if version == 1 {
        tracing::warn!(path = %path.display(), "alert state file of version 1 (per host): its live state is dropped and rebuilt from the changelog and new events; undelivered notifications are kept");
        // One transaction with the new schema and its version: a crash in
        // between leaves the version 1 file as it was, to upgrade again.
        c.execute_batch(&format!("BEGIN IMMEDIATE;{DROP_V1}{SCHEMA}COMMIT;"))?;
    }
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

/// An alert as stored and as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDoc {
    /// `ZoneOverCapacity`, `VipArrival`, `DwellOverThreshold`.
    pub alertname: String,
    /// Alertmanager labels (identity): alertname, severity, rule, venue, ...
    pub labels: BTreeMap<String, String>,
    /// `summary` (with the counts).
    pub annotations: BTreeMap<String, String>,
    /// When it started (event time, Unix µs).
    pub starts_at: i64,
    /// When it cleared (event time, Unix µs), once resolved.
    pub ends_at: Option<i64>,
    /// One notification, no resolve (VIP arrivals).
    pub one_shot: bool,
}

impl AlertDoc {
    /// The summary for places that must not name a guest (this process's
    /// log, the venue view): a VIP arrival says who only through the
    /// `guest` label, which these leave out; other alerts name no one.
    pub fn public_summary(&self) -> String {
        if !self.labels.contains_key("guest") {
            return self.annotations.get("summary").cloned().unwrap_or_default();
        }
        let venue = self.labels.get("venue").map_or("", String::as_str);
        match self.labels.get("zone") {
            Some(z) => format!("VIP guest arrived at venue {venue}, zone {z}"),
            None => format!("VIP guest arrived at venue {venue}"),
        }
    }
}

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across attempts: `alert-<hash>-<raise>-<status>`.
    pub key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The alert.
    pub alert: AlertDoc,
}

/// What one batch did, for the metrics (counted after the commit).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchStats {
    /// Raises by rule name.
    pub raised: BTreeMap<String, u64>,
    /// Resolves by rule name.
    pub resolved: BTreeMap<String, u64>,
    /// Raises held back by a cooldown, by rule name.
    pub suppressed: BTreeMap<String, u64>,
    /// Events that did not touch live state, by reason (`duplicate`,
    /// `late`, `stale`, `future`, `not_guest_wifi`).
    pub ignored: BTreeMap<&'static str, u64>,
    /// Notifications added to the outbox.
    pub enqueued: u64,
}

/// The rules and receivers, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The rules, in config order.
    pub rules: Vec<RuleConfig>,
    /// Receiver names (one outbox row per receiver per notification).
    pub receivers: Vec<String>,
    /// See [`AlertsConfig::max_event_age`].
    pub max_event_age: Duration,
    /// See [`AlertsConfig::session_timeout`].
    pub session_timeout: Duration,
    /// See [`AlertsConfig::max_clock_skew`].
    pub max_clock_skew: Duration,
    /// A resolved alert (or a one-shot one) raised longer ago than this is
    /// forgotten, with its changelog record: `applied_retention` or the
    /// longest rule cooldown, whichever is longer (so no cooldown is cut
    /// short). Its labels and summary name guests (VIP arrivals): they do
    /// not stay in the compacted changelog for ever.
    pub alert_retention: Duration,
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Wall clock, Unix µs.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// FNV-1a, 64 bits: a short stable hash of a fingerprint for keys.
pub(super) fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(super) fn fingerprint(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

pub(super) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

pub(super) struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    engine: &'a Engine,
    stats: &'a mut BatchStats,
    now: i64,
    partition: i32,
    /// The batch's serial in its partition (0 unpartitioned).
    serial: i64,
    /// Keys whose rows this batch changed (for the changelog).
    touched: Touched,
}

/// The keys a batch changed: devices (venue, device), venue clocks,
/// alerts (fingerprint).
#[derive(Default)]
struct Touched {
    devices: BTreeSet<(String, String)>,
    venues: BTreeSet<String>,
    alerts: BTreeSet<String>,
    /// Notifications queued: (receiver, key).
    outbox: BTreeSet<(String, String)>,
}

/// What [`Engine::apply_in`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// For the metrics.
    pub stats: BatchStats,
    /// The partition state's changes, one per key (none unpartitioned).
    pub changes: Vec<crate::sinks::KeyedChange>,
    /// The batch's serial in its partition.
    pub serial: u64,
}

/// Key kind of an alert's record (venue-state kinds are in
/// `schemas::venue_state`).
pub(super) const ALERT_KEY: u8 = b'A';
/// Key kind of a notification waiting to be sent: receiver, `0x1F`, the
/// notification's key; the value is the notification (JSON), none once
/// it was sent.
pub(super) const OUTBOX_KEY: u8 = b'O';

/// The changelog key of a waiting notification.
pub(super) fn outbox_key(receiver: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + receiver.len() + key.len());
    k.push(OUTBOX_KEY);
    k.extend_from_slice(receiver.as_bytes());
    k.push(0x1F);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An alert's state as its changelog record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AlertState {
    pub rule: String,
    pub state: String,
    pub generation: i64,
    pub last_raised_at: i64,
    pub alert: AlertDoc,
}

impl Engine {
    /// Builds the engine of a checked config.
    pub fn new(config: &AlertsConfig) -> Engine {
        Engine {
            rules: config.rules.clone(),
            receivers: config
                .receivers
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
            max_event_age: config.max_event_age,
            session_timeout: config.session_timeout,
            max_clock_skew: config.max_clock_skew,
            alert_retention: config
                .rules
                .iter()
                .map(RuleConfig::cooldown)
                .fold(config.applied_retention, Duration::max),
        }
    }

    /// Applies a batch in one transaction, without partition state (see
    /// [`UNPARTITIONED`]).
    pub fn apply(
        &self,
        conn: &mut Connection,
        batch: &[Arc<Event>],
        now: i64,
    ) -> rusqlite::Result<BatchStats> {
        Ok(self.apply_in(conn, UNPARTITIONED, batch, now)?.stats)
    }

    /// Applies a batch of `partition`'s events in one transaction: each
    /// event once, by (source, event id). `now` is the wall clock (Unix
    /// µs) for the age and skew checks. For a partition (not
    /// [`UNPARTITIONED`]) the transaction also counts the batch's serial,
    /// which leaves the partition's store ahead of its changelog until
    /// [`checkpointed`](super::AlertsSink) says the changes are written,
    /// and returns the changes: one record per changed key.
    pub fn apply_in(
        &self,
        conn: &mut Connection,
        partition: i32,
        batch: &[Arc<Event>],
        now: i64,
    ) -> rusqlite::Result<Applied> {
        let mut stats = BatchStats::default();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let serial = if partition == UNPARTITIONED {
            0
        } else {
            tx.query_row(
                "INSERT INTO partitions (partition, serial) VALUES (?1, 1)
                 ON CONFLICT (partition) DO UPDATE SET serial = serial + 1
                 RETURNING serial",
                [partition],
                |r| r.get::<_, i64>(0),
            )?
        };
        let mut touched = Touched::default();
        {
            let mut t = Tx {
                tx: &tx,
                engine: self,
                stats: &mut stats,
                now,
                partition,
                serial,
                touched: Touched::default(),
            };
            for e in batch {
                t.event(e)?;
            }
            std::mem::swap(&mut touched, &mut t.touched);
        }
        let mut out = Applied {
            serial: serial as u64,
            ..Applied::default()
        };
        if partition != UNPARTITIONED {
            // Forget resolved alerts past their retention (a bounded number
            // per batch): their tombstones go out with this batch.
            let before = now.saturating_sub(micros(self.alert_retention));
            let old: Vec<String> = {
                let mut st = tx.prepare_cached(
                    "SELECT fingerprint FROM alerts
                     WHERE partition = ?1 AND state = 'resolved' AND last_raised_at < ?2
                     LIMIT 256",
                )?;
                st.query_map(params![partition, before], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for fp in old {
                tx.execute(
                    "DELETE FROM alerts WHERE partition = ?1 AND fingerprint = ?2",
                    params![partition, fp],
                )?;
                touched.alerts.insert(fp);
            }
            out.changes = changes(&tx, partition, &touched)?;
        }
        tx.commit()?;
        out.stats = stats;
        Ok(out)
    }
}

impl Tx<'_> {
    fn ignore(&mut self, reason: &'static str) {
        *self.stats.ignored.entry(reason).or_default() += 1;
    }

    fn event(&mut self, e: &Event) -> rusqlite::Result<()> {
        let fresh = self.tx.execute(
            "INSERT OR IGNORE INTO applied (partition, source, event_id, applied_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![self.partition, e.source, e.event_id, self.now],
        )?;
        if fresh == 0 {
            self.ignore("duplicate");
            return Ok(());
        }
        let Some(w) = &e.guest_wifi else {
            self.ignore("not_guest_wifi");
            return Ok(());
        };
        if e.late {
            self.ignore("late");
            return Ok(());
        }
        if self.now.saturating_sub(w.occurred_at_micros) > micros(self.engine.max_event_age) {
            self.ignore("stale");
            return Ok(());
        }
        // Dated ahead of when it was received (a provider's clock), or of
        // the wall clock (ingest's): it would move the venue clock there.
        let horizon = self.now.saturating_add(micros(self.engine.max_clock_skew));
        let skew = micros(self.engine.max_clock_skew);
        if w.occurred_at_micros > e.received_at_micros.saturating_add(skew)
            || w.occurred_at_micros > horizon
        {
            self.ignore("future");
            return Ok(());
        }
        let venue = w.venue_id.as_str();
        let at = w.occurred_at_micros;
        let old_wm: Option<i64> = self
            .tx
            .query_row(
                "SELECT watermark FROM venues WHERE partition = ?1 AND venue = ?2",
                params![self.partition, venue],
                |r| r.get(0),
            )
            .optional()?;
        // Never past the wall clock plus the skew, even if a clock stored
        // before this bound existed was.
        let wm = old_wm.map_or(at, |o| o.max(at)).min(horizon);
        if old_wm != Some(wm) {
            self.tx.execute(
                "INSERT INTO venues (partition, venue, watermark) VALUES (?1, ?2, ?3)
                 ON CONFLICT (partition, venue) DO UPDATE SET watermark = excluded.watermark",
                params![self.partition, venue, wm],
            )?;
            self.touched.venues.insert(venue.to_owned());
        }
        // Zones whose count may have changed.
        let mut zones: BTreeSet<String> = BTreeSet::new();
        if let Some(device) = w.device_id.as_deref() {
            let old: Option<(Option<String>, i64)> = self
                .tx
                .query_row(
                    "SELECT zone, connected_at FROM devices
                     WHERE partition = ?1 AND venue = ?2 AND device = ?3",
                    params![self.partition, venue, device],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((Some(z), _)) = &old {
                zones.insert(z.clone());
            }
            self.touched
                .devices
                .insert((venue.to_owned(), device.to_owned()));
            match w.event_type.as_str() {
                // The device left the network, or its guest the venue
                // (`crate::event::SESSION_END_TYPES`).
                "device_disconnected" | "venue_left" => {
                    self.tx.execute(
                        "DELETE FROM devices WHERE partition = ?1 AND venue = ?2 AND device = ?3",
                        params![self.partition, venue, device],
                    )?;
                    self.resolve_dwell(venue, device, at)?;
                }
                "device_connected" | "guest_connects" | "guest_registered" | "zone_entered" => {
                    let zone = w
                        .zone
                        .clone()
                        .or_else(|| old.as_ref().and_then(|(z, _)| z.clone()));
                    let connected_at = old.as_ref().map_or(at, |(_, c)| *c);
                    // The device's VIP follows the newest event that names
                    // a guest; one naming none leaves it as it was.
                    let vip = w.guest.as_ref().filter(|g| g.vip);
                    self.tx.execute(
                        "INSERT INTO devices (partition, venue, device, zone, connected_at, last_seen,
                                              vip_id, vip_name)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (partition, venue, device) DO UPDATE SET
                           zone = excluded.zone, last_seen = max(last_seen, excluded.last_seen),
                           vip_id = CASE WHEN ?9 THEN excluded.vip_id ELSE vip_id END,
                           vip_name = CASE WHEN ?9 THEN excluded.vip_name ELSE vip_name END",
                        params![
                            self.partition,
                            venue,
                            device,
                            zone,
                            connected_at,
                            at,
                            vip.map(|g| g.id.as_str()),
                            vip.and_then(|g| g.first_name.as_deref()),
                            w.guest.is_some()
                        ],
                    )?;
                    if let Some(z) = zone {
                        zones.insert(z);
                    }
                }
                _ => {
                    self.tx.execute(
                        "UPDATE devices SET last_seen = max(last_seen, ?4)
                         WHERE partition = ?1 AND venue = ?2 AND device = ?3",
                        params![self.partition, venue, device, at],
                    )?;
                }
            }
        }
        // Sessions not heard of for session_timeout end here.
        let cutoff = wm.saturating_sub(micros(self.engine.session_timeout));
        let expired: Vec<(String, Option<String>)> = {
            let mut st = self.tx.prepare_cached(
                "SELECT device, zone FROM devices
                 WHERE partition = ?1 AND venue = ?2 AND last_seen < ?3",
            )?;
            st.query_map(params![self.partition, venue, cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        if !expired.is_empty() {
            self.tx.execute(
                "DELETE FROM devices WHERE partition = ?1 AND venue = ?2 AND last_seen < ?3",
                params![self.partition, venue, cutoff],
            )?;
            for (device, zone) in &expired {
                self.touched
                    .devices
                    .insert((venue.to_owned(), device.clone()));
                if let Some(z) = zone {
                    zones.insert(z.clone());
                }
                self.resolve_dwell(venue, device, wm)?;
            }
        }
        for zone in &zones {
            self.occupancy(venue, zone, at)?;
        }
        self.vip(e, at)?;
        self.dwell(venue, wm)?;
        Ok(())
    }

    fn occupancy(&mut self, venue: &str, zone: &str, at: i64) -> rusqlite::Result<()> {
        let count: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM devices WHERE partition = ?1 AND venue = ?2 AND zone = ?3",
            params![self.partition, venue, zone],
            |r| r.get(0),
        )?;
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::ZoneOccupancy {
                threshold,
                clear_at,
                zones,
                ..
            } = rule
            else {
                continue;
            };
            if !rule.applies_to(venue) || !(zones.is_empty() || zones.iter().any(|z| z == zone)) {
                continue;
            }
            let fp = fingerprint(&["zone_occupancy", rule.name(), venue, zone]);
            if count > *threshold {
                let doc = AlertDoc {
                    alertname: "ZoneOverCapacity".into(),
                    labels: labels(rule, venue, Some(zone), &[]),
                    annotations: summary(format!(
                        "{count} devices in zone {zone} at venue {venue} (threshold {threshold})"
                    )),
                    starts_at: at,
                    ends_at: None,
                    one_shot: false,
                };
                self.raise(rule, &fp, doc)?;
            } else if count <= clear_at.unwrap_or(*threshold) {
                self.resolve(rule.name(), &fp, at, |d| {
                    d.annotations = summary(format!(
                        "{count} devices in zone {zone} at venue {venue} (threshold {threshold}): cleared"
                    ));
                })?;
            }
        }
        Ok(())
    }

    fn vip(&mut self, e: &Event, at: i64) -> rusqlite::Result<()> {
        let Some(w) = &e.guest_wifi else {
            return Ok(());
        };
        let Some(g) = w.guest.as_ref().filter(|g| g.vip) else {
            return Ok(());
        };
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::VipArrival { types, .. } = rule else {
                continue;
            };
            if !rule.applies_to(&w.venue_id) || !types.contains(&w.event_type) {
                continue;
            }
            let fp = fingerprint(&["vip_arrival", rule.name(), &w.venue_id, &g.id]);
            let who = g.first_name.as_deref().unwrap_or(&g.id);
            let zone = w.zone.as_deref();
            let doc = AlertDoc {
                alertname: "VipArrival".into(),
                labels: labels(rule, &w.venue_id, zone, &[("guest", &g.id)]),
                annotations: summary(format!(
                    "VIP guest {who} arrived at venue {}{}",
                    w.venue_id,
                    zone.map(|z| format!(", zone {z}")).unwrap_or_default()
                )),
                starts_at: at,
                ends_at: None,
                one_shot: true,
            };
            self.raise(rule, &fp, doc)?;
        }
        Ok(())
    }

    fn dwell(&mut self, venue: &str, wm: i64) -> rusqlite::Result<()> {
        let engine = self.engine;
        for rule in &engine.rules {
            let RuleConfig::Dwell {
                threshold, zones, ..
            } = rule
            else {
                continue;
            };
            if !rule.applies_to(venue) {
                continue;
            }
            let since = wm.saturating_sub(micros(*threshold));
            let long: Vec<(String, Option<String>, i64)> = {
                let mut st = self.tx.prepare_cached(
                    "SELECT device, zone, connected_at FROM devices
                     WHERE partition = ?1 AND venue = ?2 AND connected_at <= ?3",
                )?;
                st.query_map(params![self.partition, venue, since], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            for (device, zone, connected_at) in long {
                if !(zones.is_empty() || zone.as_ref().is_some_and(|z| zones.contains(z))) {
                    continue;
                }
                let fp = fingerprint(&["dwell", rule.name(), venue, &device]);
                // Raised once per session: a firing alert, or one raised
                // since this session began, stands.
                let raised: Option<(String, i64)> = self
                    .tx
                    .query_row(
                        "SELECT state, last_raised_at FROM alerts
                         WHERE partition = ?1 AND fingerprint = ?2",
                        params![self.partition, fp],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((state, last)) = &raised
                    && (state == "firing" || *last >= connected_at)
                {
                    continue;
                }
                let doc = AlertDoc {
                    alertname: "DwellOverThreshold".into(),
                    labels: labels(rule, venue, zone.as_deref(), &[("device", &device)]),
                    annotations: summary(format!(
                        "device {device} at venue {venue}{} for over {}",
                        zone.as_deref()
                            .map(|z| format!(", zone {z},"))
                            .unwrap_or_default(),
                        human(*threshold)
                    )),
                    starts_at: connected_at.saturating_add(micros(*threshold)),
                    ends_at: None,
                    one_shot: false,
                };
                self.raise(rule, &fp, doc)?;
            }
        }
        Ok(())
    }

    fn resolve_dwell(&mut self, venue: &str, device: &str, at: i64) -> rusqlite::Result<()> {
        let engine = self.engine;
        for rule in &engine.rules {
            if let RuleConfig::Dwell { .. } = rule {
                let fp = fingerprint(&["dwell", rule.name(), venue, device]);
                self.resolve(rule.name(), &fp, at, |_| {})?;
            }
        }
        Ok(())
    }

    /// Raises `fp` unless it is firing (then its annotations are updated)
    /// or inside its cooldown (then it is counted as suppressed).
    fn raise(&mut self, rule: &RuleConfig, fp: &str, mut doc: AlertDoc) -> rusqlite::Result<()> {
        // Cooldowns run on the venue's event time; the alert itself never
        // starts after the wall clock at which it is raised (a provider's
        // clock a little ahead), so its firing and its resolution carry the
        // same startsAt whenever each is posted.
        let raised_at = doc.starts_at;
        doc.starts_at = doc.starts_at.min(self.now);
        let existing: Option<(String, i64, i64)> = self
            .tx
            .query_row(
                "SELECT state, generation, last_raised_at FROM alerts
                 WHERE partition = ?1 AND fingerprint = ?2",
                params![self.partition, fp],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let generation = match existing {
            Some((state, _, _)) if state == "firing" => {
                let old: String = self.tx.query_row(
                    "SELECT alert FROM alerts WHERE partition = ?1 AND fingerprint = ?2",
                    params![self.partition, fp],
                    |r| r.get(0),
                )?;
                if let Ok(mut old) = serde_json::from_str::<AlertDoc>(&old)
                    && old.annotations != doc.annotations
                {
                    old.annotations = doc.annotations;
                    self.tx.execute(
                        "UPDATE alerts SET alert = ?3 WHERE partition = ?1 AND fingerprint = ?2",
                        params![self.partition, fp, to_json(&old)],
                    )?;
                    self.touched.alerts.insert(fp.to_owned());
                }
                return Ok(());
            }
            Some((_, _, last)) if raised_at < last.saturating_add(micros(rule.cooldown())) => {
                *self
                    .stats
                    .suppressed
                    .entry(rule.name().to_owned())
                    .or_default() += 1;
                return Ok(());
            }
            Some((_, g, _)) => g + 1,
            None => 1,
        };
        // A one-shot alert is over once notified: stored as resolved, so it
        // is never re-posted, while its cooldown still holds.
        let state = if doc.one_shot { "resolved" } else { "firing" };
        self.tx.execute(
            "INSERT INTO alerts (partition, fingerprint, rule, state, generation, last_raised_at, alert)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (partition, fingerprint) DO UPDATE SET rule = excluded.rule,
               state = excluded.state, generation = excluded.generation,
               last_raised_at = excluded.last_raised_at, alert = excluded.alert",
            params![
                self.partition,
                fp,
                rule.name(),
                state,
                generation,
                raised_at,
                to_json(&doc)
            ],
        )?;
        self.touched.alerts.insert(fp.to_owned());
        *self.stats.raised.entry(rule.name().to_owned()).or_default() += 1;
        self.enqueue(fp, generation, "firing", doc)
    }

    /// Resolves `fp` if it is firing.
    fn resolve(
        &mut self,
        rule: &str,
        fp: &str,
        at: i64,
        edit: impl FnOnce(&mut AlertDoc),
    ) -> rusqlite::Result<()> {
        let existing: Option<(String, i64, String)> = self
            .tx
            .query_row(
                "SELECT state, generation, alert FROM alerts WHERE partition = ?1 AND fingerprint = ?2",
                params![self.partition, fp],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((state, generation, doc)) = existing else {
            return Ok(());
        };
        if state != "firing" {
            return Ok(());
        }
        let Ok(mut doc) = serde_json::from_str::<AlertDoc>(&doc) else {
            return Ok(());
        };
        doc.ends_at = Some(at.max(doc.starts_at));
        edit(&mut doc);
        self.tx.execute(
            "UPDATE alerts SET state = 'resolved', alert = ?3 WHERE partition = ?1 AND fingerprint = ?2",
            params![self.partition, fp, to_json(&doc)],
        )?;
        self.touched.alerts.insert(fp.to_owned());
        *self.stats.resolved.entry(rule.to_owned()).or_default() += 1;
        self.enqueue(fp, generation, "resolved", doc)
    }

    fn enqueue(
        &mut self,
        fp: &str,
        generation: i64,
        status: &str,
        alert: AlertDoc,
    ) -> rusqlite::Result<()> {
        let n = Notification {
            key: format!("alert-{:016x}-{generation}-{status}", fnv(fp)),
            status: status.into(),
            alert,
        };
        let text = to_json(&n);
        for r in &self.engine.receivers {
            // A notification already waiting or sent (its batch rebuilt
            // and read again after a crash) is not queued twice.
            let added = self.tx.execute(
                "INSERT INTO outbox (receiver, notification, created_at, partition, serial, key)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE receiver = ?1 AND key = ?6)
                   AND NOT EXISTS (SELECT 1 FROM sent WHERE receiver = ?1 AND key = ?6)",
                params![r, text, self.now, self.partition, self.serial, n.key],
            )?;
            self.stats.enqueued += added as u64;
            if added > 0 {
                self.touched.outbox.insert((r.clone(), n.key.clone()));
            }
        }
        Ok(())
    }
}

fn encode_error(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// One record per key `touched` names: its row now, or gone.
fn changes(
    tx: &rusqlite::Transaction<'_>,
    partition: i32,
    touched: &Touched,
) -> rusqlite::Result<Vec<crate::sinks::KeyedChange>> {
    let mut out = Vec::with_capacity(
        touched.devices.len() + touched.venues.len() + touched.alerts.len() + touched.outbox.len(),
    );
    let mut waiting = tx.prepare_cached(
        "SELECT notification FROM outbox WHERE partition = ?1 AND receiver = ?2 AND key = ?3",
    )?;
    for (receiver, key) in &touched.outbox {
        let text: Option<String> = waiting
            .query_row(params![partition, receiver, key], |r| r.get(0))
            .optional()?;
        out.push((outbox_key(receiver, key), text.map(String::into_bytes)));
    }
    let mut device = tx.prepare_cached(
        "SELECT zone, connected_at, last_seen, vip_id, vip_name FROM devices
         WHERE partition = ?1 AND venue = ?2 AND device = ?3",
    )?;
    type DeviceRow = (Option<String>, i64, i64, Option<String>, Option<String>);
    for (venue, id) in &touched.devices {
        let row: Option<DeviceRow> = device
            .query_row(params![partition, venue, id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let value = match row {
            Some((zone, connected_at, last_seen, vip_id, vip_name)) => Some(
                VenueState {
                    venue: venue.clone(),
                    entry: Entry::Device {
                        device: id.clone(),
                        zone,
                        connected_at,
                        last_seen,
                        vip: vip_id.map(|id| VipGuest { id, name: vip_name }),
                    },
                }
                .encode()
                .map_err(encode_error)?,
            ),
            None => None,
        };
        let key = Key::Device {
            venue: venue.clone(),
            device: id.clone(),
        };
        out.push((key.encode(), value));
    }
    let mut clock =
        tx.prepare_cached("SELECT watermark FROM venues WHERE partition = ?1 AND venue = ?2")?;
    for venue in &touched.venues {
        let at: Option<i64> = clock
            .query_row(params![partition, venue], |r| r.get(0))
            .optional()?;
        let value = match at {
            Some(clock) => Some(
                VenueState {
                    venue: venue.clone(),
                    entry: Entry::Clock { clock },
                }
                .encode()
                .map_err(encode_error)?,
            ),
            None => None,
        };
        out.push((
            Key::Clock {
                venue: venue.clone(),
            }
            .encode(),
            value,
        ));
    }
    // Every venue whose devices or clock changed: its occupancy for the
    // minute of its clock (the venue view's live count and trend).
    let mut venues: BTreeSet<&str> = touched.venues.iter().map(String::as_str).collect();
    venues.extend(touched.devices.iter().map(|(v, _)| v.as_str()));
    let mut by_zone = tx.prepare_cached(
        "SELECT zone, COUNT(*) FROM devices WHERE partition = ?1 AND venue = ?2 GROUP BY zone",
    )?;
    for venue in venues {
        let Some(at) = clock
            .query_row(params![partition, venue], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            continue;
        };
        let minute = at - at.rem_euclid(60_000_000);
        let mut devices = 0;
        let mut zones = BTreeMap::new();
        let rows = by_zone.query_map(params![partition, venue], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (zone, n) = row?;
            devices += n;
            if let Some(zone) = zone {
                zones.insert(zone, n);
            }
        }
        let value = VenueState {
            venue: venue.to_owned(),
            entry: Entry::Minute {
                minute,
                devices,
                zones,
            },
        }
        .encode()
        .map_err(encode_error)?;
        out.push((Key::minute(venue, minute).encode(), Some(value)));
    }
    let mut alert = tx.prepare_cached(
        "SELECT rule, state, generation, last_raised_at, alert FROM alerts
         WHERE partition = ?1 AND fingerprint = ?2",
    )?;
    for fp in &touched.alerts {
        let row: Option<(String, String, i64, i64, String)> = alert
            .query_row(params![partition, fp], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let (value, view) = match row {
            Some((rule, state, generation, last_raised_at, doc)) => {
                let alert: AlertDoc = serde_json::from_str(&doc).map_err(encode_error)?;
                let view = venue_alert(&alert, state == "firing")
                    .map(|v| v.encode().map_err(encode_error))
                    .transpose()?;
                let value = to_json(&AlertState {
                    rule,
                    state,
                    generation,
                    last_raised_at,
                    alert,
                })
                .into_bytes();
                (Some(value), view)
            }
            None => (None, None),
        };
        let mut key = Vec::with_capacity(1 + fp.len());
        key.push(ALERT_KEY);
        key.extend_from_slice(fp.as_bytes());
        out.push((key, value));
        // The venue view's copy (venue state v3), gone with the alert.
        let view_key = Key::Alert {
            fingerprint: fp.clone(),
        };
        out.push((view_key.encode(), view));
    }
    Ok(out)
}

/// The venue view's record of an alert: its name, zone, state and a
/// summary without a guest's name (a VIP arrival's guest is only named by
/// id, in its own field, which the view masks unless configured).
fn venue_alert(alert: &AlertDoc, firing: bool) -> Option<VenueState> {
    let venue = alert.labels.get("venue")?.clone();
    let zone = alert.labels.get("zone").cloned();
    let guest = alert.labels.get("guest").cloned();
    let summary = alert.public_summary();
    Some(VenueState {
        venue,
        entry: Entry::Alert {
            name: alert.alertname.clone(),
            zone,
            firing,
            starts_at: alert.starts_at,
            ends_at: alert.ends_at,
            summary,
            guest,
        },
    })
}

/// Applies restored records of `partition` in one transaction; returns
/// how many could not be read (skipped: the key keeps its previous state).
pub(super) fn restore_records(
    conn: &mut Connection,
    partition: i32,
    records: &[crate::sinks::KeyedChange],
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut unreadable = 0;
    for (key, value) in records {
        if key.first() == Some(&OUTBOX_KEY) {
            let parts = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|k| k.split_once('\u{1f}'));
            let Some((receiver, nkey)) = parts else {
                unreadable += 1;
                continue;
            };
            match value {
                None => {
                    tx.prepare_cached(
                        "DELETE FROM outbox WHERE partition = ?1 AND receiver = ?2 AND key = ?3",
                    )?
                    .execute(params![partition, receiver, nkey])?;
                }
                Some(text) => {
                    let Ok(text) = std::str::from_utf8(text) else {
                        unreadable += 1;
                        continue;
                    };
                    // Waiting at the previous owner: this instance sends
                    // it (unless it already did, when it owned it before).
                    tx.prepare_cached(
                        "INSERT INTO outbox (receiver, notification, created_at, partition, serial, key)
                         SELECT ?1, ?2, ?3, ?4, 0, ?5
                         WHERE NOT EXISTS (SELECT 1 FROM outbox
                                           WHERE partition = ?4 AND receiver = ?1 AND key = ?5)
                           AND NOT EXISTS (SELECT 1 FROM sent WHERE receiver = ?1 AND key = ?5)",
                        )?
                        .execute(
                        params![receiver, text, now_micros(), partition, nkey],
                    )?;
                }
            }
            continue;
        }
        if key.first() == Some(&ALERT_KEY) {
            let Ok(fp) = std::str::from_utf8(&key[1..]) else {
                unreadable += 1;
                continue;
            };
            match value.as_deref().map(serde_json::from_slice::<AlertState>) {
                None => {
                    tx.prepare_cached(
                        "DELETE FROM alerts WHERE partition = ?1 AND fingerprint = ?2",
                    )?
                    .execute(params![partition, fp])?;
                }
                Some(Ok(a)) => {
                    tx.prepare_cached(
                        "INSERT INTO alerts (partition, fingerprint, rule, state, generation,
                           last_raised_at, alert) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (partition, fingerprint) DO UPDATE SET rule = excluded.rule,
                           state = excluded.state, generation = excluded.generation,
                           last_raised_at = excluded.last_raised_at, alert = excluded.alert",
                    )?
                    .execute(params![
                        partition,
                        fp,
                        a.rule,
                        a.state,
                        a.generation,
                        a.last_raised_at,
                        to_json(&a.alert)
                    ])?;
                }
                Some(Err(_)) => unreadable += 1,
            }
            continue;
        }
        let Some(k) = Key::decode(key) else {
            unreadable += 1;
            continue;
        };
        let state = match value.as_deref().map(VenueState::decode) {
            Some(Err(_)) => {
                unreadable += 1;
                continue;
            }
            Some(Ok(s)) => Some(s),
            None => None,
        };
        match (k, state) {
            (Key::Device { venue, device }, None) => {
                tx.prepare_cached(
                    "DELETE FROM devices WHERE partition = ?1 AND venue = ?2 AND device = ?3",
                )?
                .execute(params![partition, venue, device])?;
            }
            (
                Key::Device { venue, device },
                Some(VenueState {
                    entry:
                        Entry::Device {
                            zone,
                            connected_at,
                            last_seen,
                            vip,
                            ..
                        },
                    ..
                }),
            ) => {
                tx.prepare_cached(
                    "INSERT INTO devices (partition, venue, device, zone, connected_at, last_seen,
                                          vip_id, vip_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (partition, venue, device) DO UPDATE SET zone = excluded.zone,
                       connected_at = excluded.connected_at, last_seen = excluded.last_seen,
                       vip_id = excluded.vip_id, vip_name = excluded.vip_name",
                )?
                .execute(params![
                    partition,
                    venue,
                    device,
                    zone,
                    connected_at,
                    last_seen,
                    vip.as_ref().map(|g| g.id.as_str()),
                    vip.as_ref().and_then(|g| g.name.as_deref())
                ])?;
            }
            // The venue view's occupancy by minute and alerts: derived
            // from the devices and the alerts, nothing to keep.
            (Key::Minute { .. } | Key::Alert { .. }, _) => {}
            (Key::Clock { venue }, None) => {
                tx.prepare_cached("DELETE FROM venues WHERE partition = ?1 AND venue = ?2")?
                    .execute(params![partition, venue])?;
            }
            (
                Key::Clock { venue },
                Some(VenueState {
                    entry: Entry::Clock { clock },
                    ..
                }),
            ) => {
                tx.prepare_cached(
                    "INSERT INTO venues (partition, venue, watermark) VALUES (?1, ?2, ?3)
                     ON CONFLICT (partition, venue) DO UPDATE SET watermark = excluded.watermark",
                )?
                .execute(params![partition, venue, clock])?;
            }
            // A key and a value of different kinds.
            _ => unreadable += 1,
        }
    }
    tx.commit()?;
    Ok(unreadable)
}

/// Drops the partition's rows before a rebuild, its waiting
/// notifications too: those of batches in the changelog come back from
/// it, those of a batch that never reached it are raised again as its
/// events are read again (under the same key, not queued twice).
pub(super) fn forget(conn: &mut Connection, partition: i32) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for table in ["applied", "devices", "venues", "alerts", "outbox"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE partition = ?1"),
            [partition],
        )?;
    }
    tx.execute(
        "INSERT INTO partitions (partition) VALUES (?1)
         ON CONFLICT (partition) DO UPDATE SET checkpointed = serial, clean_at = NULL",
        [partition],
    )?;
    tx.commit()
}

/// The changelog offset the partition's rows reflect, if nothing was
/// applied past it.
pub(super) fn cached_at(conn: &Connection, partition: i32) -> rusqlite::Result<Option<i64>> {
    let row: Option<(i64, i64, Option<i64>)> = conn
        .query_row(
            "SELECT serial, checkpointed, clean_at FROM partitions WHERE partition = ?1",
            [partition],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(row.and_then(|(serial, done, at)| (serial == done).then_some(at).flatten()))
}

/// Marks the batches up to `serial` written, the rows reflecting the
/// changelog below `at` (`None`: unknown).
pub(super) fn checkpointed(
    conn: &Connection,
    partition: i32,
    serial: u64,
    at: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO partitions (partition, serial, checkpointed, clean_at) VALUES (?1, ?2, ?2, ?3)
         ON CONFLICT (partition) DO UPDATE SET
           checkpointed = max(checkpointed, excluded.checkpointed), clean_at = excluded.clean_at",
        params![partition, serial as i64, at],
    )?;
    Ok(())
}

/// A restore ended: the rows reflect the changelog below `at`, no batch
/// pending (a restore either continued a clean store or followed
/// [`forget`]). Serials keep growing across owners: the outbox's rows
/// name theirs.
pub(super) fn restored(conn: &Connection, partition: i32, at: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO partitions (partition, clean_at) VALUES (?1, ?2)
         ON CONFLICT (partition) DO UPDATE SET checkpointed = serial,
           clean_at = excluded.clean_at",
        params![partition, at],
    )?;
    Ok(())
}

pub(super) fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub(super) fn summary(s: String) -> BTreeMap<String, String> {
    BTreeMap::from([("summary".to_owned(), s)])
}

pub(super) fn labels(
    rule: &RuleConfig,
    venue: &str,
    zone: Option<&str>,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let alertname = match rule {
        RuleConfig::ZoneOccupancy { .. } => "ZoneOverCapacity",
        RuleConfig::VipArrival { .. } => "VipArrival",
        RuleConfig::Dwell { .. } => "DwellOverThreshold",
    };
    let mut l = BTreeMap::from([
        ("alertname".to_owned(), alertname.to_owned()),
        ("severity".to_owned(), rule.severity().to_owned()),
        ("rule".to_owned(), rule.name().to_owned()),
        ("venue".to_owned(), venue.to_owned()),
    ]);
    if let Some(z) = zone {
        l.insert("zone".into(), z.into());
    }
    for (k, v) in extra {
        l.insert((*k).into(), (*v).into());
    }
    l
}
