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
//!   `guest_connects` or `zone_entered` event and leaves the venue with
//!   `device_disconnected`; a device not heard of for `session_timeout`
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
//! # Effect once across kill -9 and restarts
//!
//! All state lives in one SQLite file (`path`, WAL, `synchronous=FULL`).
//! Each batch is one `BEGIN IMMEDIATE` transaction that records the applied
//! (source, event id) pairs, updates devices, venue clocks and alerts, and
//! appends the notifications to an outbox, one row per receiver. The sink
//! answers `Accepted` only after the commit; an event offered again (the
//! crash came before the offset commit, a duplicate) finds its id applied
//! and changes nothing. Applied ids are kept for `applied_retention`
//! (default 72 h, the dedupe window).
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
//!   harmless. Firing alerts are also re-posted every `resend_interval`
//!   with `endsAt = now + alert_ttl`, so Alertmanager keeps them while the
//!   condition holds, and lets them expire on its own `alert_ttl` after the
//!   processors stop for good. A resolve is posted with `endsAt` = when it
//!   cleared.
//! - Slack has no idempotency: delivery is at-least-once. The window for a
//!   duplicate is one request: between Slack accepting a message and the
//!   outbox row's delete committing (a kill -9 then, or a response lost to a
//!   timeout, sends it again). Each request carries `Idempotency-Key:
//!   alert-<fingerprint hash>-<raise number>-<firing|resolved>`, the same on
//!   every attempt, so a proxy can drop such repeats.
//! - Receivers are served one after another by one task: a receiver whose
//!   requests time out delays the others' deliveries by up to `timeout`
//!   per round (it then backs off and is skipped until its pause ends).
//! - Two processes on one host may share the file: SQLite's own locks
//!   serialise the batch transactions (`busy_timeout`), and only the process
//!   holding an exclusive `flock` on `<path>.deliver.lock` delivers, so one
//!   row is never sent by two processes at once.
//!
//! Known limit: the state is per host (the dedupe ledger and the reorder
//! positions follow their partition through `crate::state`; this file does
//! not yet). When a partition moves to an instance on another host, that
//! instance starts from its own file; run the alerting sink where the venues' partitions
//! stay, or accept that occupancy is rebuilt there.
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

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::sinks::contract::{BoxFuture, Outcome, Sink, SinkError};

pub use config::*;
use deliver::*;
pub use engine::*;

/// The alerting sink: applies batches to the state file and wakes the
/// delivery task.
pub struct AlertsSink {
    name: String,
    engine: Engine,
    conn: Arc<Mutex<Connection>>,
    metrics: Metrics,
    wake: Arc<tokio::sync::Notify>,
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
        let deliverer = Deliverer {
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
        })
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
        Box::pin(async move {
            let events: Vec<Arc<Event>> = batch.to_vec();
            let engine = self.engine.clone();
            let conn = self.conn.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut c = conn
                    .lock()
                    .map_err(|_| "alert state connection poisoned".to_string())?;
                engine
                    .apply(&mut c, &events, now_micros())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match done {
                Ok(stats) => {
                    self.count(&stats);
                    if stats.enqueued > 0 {
                        self.wake.notify_one();
                    }
                    vec![Outcome::Accepted; batch.len()]
                }
                Err(e) => vec![Outcome::Retry(format!("alert state: {e}")); batch.len()],
            }
        })
    }
}
