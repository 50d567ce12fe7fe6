//! Delivery: one task sends each receiver's outbox rows in order (Slack,
//! Alertmanager, the log), deletes a row only after a `2xx`, backs off per
//! receiver, and re-posts firing alerts to Alertmanager.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{Connection, params};

use crate::metrics::Metrics;

use super::config::*;
use super::engine::*;
use crate::sinks::util::{retry_after, try_flock};

/// Rows read from one receiver's outbox per round.
pub(super) const DELIVER_CHUNK: usize = 50;
/// Firing alerts per re-post request to Alertmanager.
pub(super) const REFRESH_CHUNK: usize = 500;

/// A receiver ready to send.
pub(super) enum Receiver {
    Slack { url: String },
    Alertmanager { url: String },
    Log,
}

/// How one delivery attempt went.
#[derive(Debug)]
pub(super) enum Sent {
    Ok,
    /// Try again after at least this long (`Retry-After`), or the backoff.
    Transient(String, Option<Duration>),
    Permanent(String),
}

pub(super) fn rfc3339(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The Alertmanager v2 body for some notifications; `now` for `endsAt`.
pub(super) fn alertmanager_body(
    items: &[&Notification],
    now: i64,
    ttl: Duration,
) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = items
        .iter()
        .map(|n| {
            let a = &n.alert;
            let starts = a.starts_at.min(now);
            let ends = if n.status == "resolved" {
                a.ends_at.unwrap_or(now).min(now).max(starts)
            } else {
                now.saturating_add(micros(ttl))
            };
            serde_json::json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(starts),
                "endsAt": rfc3339(ends),
            })
        })
        .collect();
    serde_json::Value::Array(alerts)
}

/// Slack mrkdwn escaping of text that came from payloads.
pub(super) fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack message for a notification.
pub fn slack_text(n: &Notification) -> String {
    let a = &n.alert;
    let summary = a.annotations.get("summary").map_or("", String::as_str);
    let (icon, word) = match (n.status.as_str(), a.one_shot) {
        ("resolved", _) => (":white_check_mark:", "RESOLVED"),
        (_, true) => (":star:", "ALERT"),
        _ => (":rotating_light:", "FIRING"),
    };
    let severity = a.labels.get("severity").map_or("", String::as_str);
    slack_escape(&format!(
        "{icon} [{word}] {} ({severity}): {summary}",
        a.alertname
    ))
}

pub(super) async fn post(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> Sent {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    match req.send().await {
        // Never the URL: a Slack webhook URL carries its token.
        Err(e) if e.is_timeout() => Sent::Transient("timeout".into(), None),
        Err(e) if e.is_connect() => Sent::Transient("connect".into(), None),
        Err(e) => Sent::Transient(format!("request: {}", e.without_url()), None),
        Ok(r) => {
            let status = r.status().as_u16();
            let after = retry_after(r.headers());
            match status {
                200..=299 => Sent::Ok,
                408 | 429 => Sent::Transient(format!("HTTP {status}"), after),
                400..=499 => Sent::Permanent(format!("HTTP {status}")),
                _ => Sent::Transient(format!("HTTP {status}"), after),
            }
        }
    }
}

impl Receiver {
    async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
        ttl: Duration,
        sink: &str,
        receiver: &str,
    ) -> Sent {
        match self {
            Receiver::Slack { url } => {
                let body = serde_json::json!({ "text": slack_text(n) });
                post(client, url, Some(&n.key), to_json(&body).into_bytes()).await
            }
            Receiver::Alertmanager { url } => {
                let body = alertmanager_body(&[n], now_micros(), ttl);
                post(client, url, None, to_json(&body).into_bytes()).await
            }
            Receiver::Log => {
                let a = &n.alert;
                tracing::info!(
                    target: "alerts",
                    sink = %sink,
                    receiver = %receiver,
                    status = %n.status,
                    alertname = %a.alertname,
                    venue = a.labels.get("venue").map_or("", String::as_str),
                    zone = a.labels.get("zone").map_or("", String::as_str),
                    severity = a.labels.get("severity").map_or("", String::as_str),
                    key = n.key.as_str(),
                    // Never a guest's name in this process's log.
                    "{}",
                    a.public_summary()
                );
                Sent::Ok
            }
        }
    }
}

/// The task that drains the outbox (see the module header).
pub(super) struct Deliverer {
    /// The sink's name, for metrics and logs.
    pub(super) sink: String,
    /// The state file whose outbox it drains.
    pub(super) path: PathBuf,
    /// Each receiver by its outbox name.
    pub(super) receivers: Vec<(String, Receiver)>,
    /// One HTTP client for every receiver (timeouts from the config).
    pub(super) client: reqwest::Client,
    /// Backoff, resend and outbox settings.
    pub(super) config: AlertsConfig,
    /// Delivery counters.
    pub(super) metrics: Metrics,
    /// Woken by the sink after a batch appended to the outbox.
    pub(super) wake: Arc<tokio::sync::Notify>,
    /// The partitions whose firing alerts this instance re-posts.
    pub(super) owned: super::Owned,
}

/// Per-receiver backoff.
pub(super) struct Backoff {
    failures: u32,
    until: tokio::time::Instant,
}

impl Deliverer {
    async fn db<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| "alert state connection poisoned".to_string())?;
            f(&mut c).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    pub(super) async fn run(self) {
        // One deliverer per state file.
        let lock_path = PathBuf::from(format!("{}.deliver.lock", self.path.display()));
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(sink = %self.sink, path = %lock_path.display(), error = %e, "alert delivery lock cannot be opened; no delivery from this process");
                return;
            }
        };
        let mut waited = false;
        while !try_flock(&lock) {
            if !waited {
                tracing::info!(sink = %self.sink, "another process delivers this alert state; waiting for its lock");
                waited = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let path = self.path.clone();
        let conn = match tokio::task::spawn_blocking(move || open_db(&path)).await {
            Ok(Ok(c)) => Arc::new(Mutex::new(c)),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.sink, error = %e, "alert state cannot be opened for delivery");
                return;
            }
            Err(e) => {
                tracing::error!(sink = %self.sink, error = %e, "alert delivery task failed");
                return;
            }
        };
        let mut backoff: HashMap<String, Backoff> = HashMap::new();
        let mut next_refresh = tokio::time::Instant::now();
        let mut next_prune = tokio::time::Instant::now();
        loop {
            for (name, receiver) in &self.receivers {
                if backoff
                    .get(name)
                    .is_some_and(|b| b.until > tokio::time::Instant::now())
                {
                    continue;
                }
                self.drain(&conn, name, receiver, &mut backoff).await;
            }
            if self.owned.taken_over() || tokio::time::Instant::now() >= next_refresh {
                self.refresh(&conn, &mut backoff).await;
                next_refresh = tokio::time::Instant::now() + self.config.resend_interval;
            }
            if tokio::time::Instant::now() >= next_prune {
                self.prune(&conn).await;
                next_prune = tokio::time::Instant::now() + Duration::from_secs(60);
            }
            // Sleep until woken by a batch, the next backoff ends, or a tick.
            let mut wait = Duration::from_secs(1);
            let now = tokio::time::Instant::now();
            for b in backoff.values() {
                if b.until > now {
                    wait = wait.min(b.until - now);
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn fail(&self, backoff: &mut HashMap<String, Backoff>, name: &str, after: Option<Duration>) {
        let b = backoff.entry(name.to_owned()).or_insert(Backoff {
            failures: 0,
            until: tokio::time::Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let cap = self.config.retry_max;
        let exp = self
            .config
            .retry_initial
            .saturating_mul(1u32 << b.failures.min(16).saturating_sub(1))
            .min(cap);
        let jittered = exp.mul_f64(rand::random::<f64>().max(0.1));
        let pause = after.map_or(jittered, |a| a.min(cap).max(jittered));
        b.until = tokio::time::Instant::now() + pause;
    }

    async fn drain(
        &self,
        conn: &Arc<Mutex<Connection>>,
        name: &str,
        receiver: &Receiver,
        backoff: &mut HashMap<String, Backoff>,
    ) {
        let counter = |status: &str| {
            self.metrics
                .alert_notifications
                .with_label_values(&[&self.sink, name, status])
        };
        loop {
            let r = name.to_owned();
            // Only the partitions this instance owns (their previous owner
            // stopped sending at the hand-over; their waiting notifications
            // came with the state).
            let owned: Vec<String> = self.owned.partitions().iter().map(i32::to_string).collect();
            let rows = Self::db(conn, move |c| {
                let sql = format!(
                    // Only notifications whose batch the changelog holds:
                    // one rebuilt after a crash is raised again instead.
                    "SELECT id, notification, partition, key FROM outbox o WHERE receiver = ?1
                       AND partition IN (-1{}{})
                       AND (partition = -1 OR serial <= coalesce(
                         (SELECT checkpointed FROM partitions p WHERE p.partition = o.partition), 0))
                     ORDER BY id LIMIT ?2",
                    if owned.is_empty() { "" } else { ", " },
                    owned.join(", ")
                );
                let mut st = c.prepare(&sql)?;
                st.query_map(params![r, DELIVER_CHUNK as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i32>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(sink = %self.sink, receiver = %name, error = %e, "reading the alert outbox failed");
                    return;
                }
            };
            if rows.is_empty() {
                self.set_depth(conn, name).await;
                return;
            }
            let full = rows.len() == DELIVER_CHUNK;
            for (id, text, partition, key) in rows {
                // Held until the row is recorded as sent: a hand-over
                // waits for it (see `Owned::sending`).
                let _sending = self.owned.sending().lock().await;
                if !self.owned.holds(partition) {
                    break;
                }
                let sent = match serde_json::from_str::<Notification>(&text) {
                    Ok(n) => {
                        receiver
                            .send(&self.client, &n, self.config.alert_ttl, &self.sink, name)
                            .await
                    }
                    Err(e) => Sent::Permanent(format!("unreadable outbox row: {e}")),
                };
                match sent {
                    Sent::Ok => {
                        counter("sent").inc();
                        backoff.remove(name);
                    }
                    Sent::Permanent(why) => {
                        counter("dropped").inc();
                        tracing::error!(sink = %self.sink, receiver = %name, reason = why.as_str(), "alert notification refused for good; dropped");
                    }
                    Sent::Transient(why, after) => {
                        counter("failed").inc();
                        let _ = Self::db(conn, move |c| {
                            c.execute(
                                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1",
                                [id],
                            )
                        })
                        .await;
                        self.fail(backoff, name, after);
                        tracing::warn!(sink = %self.sink, receiver = %name, reason = why.as_str(), "alert notification failed; will retry");
                        self.set_depth(conn, name).await;
                        return;
                    }
                }
                // Remembered as sent (for `applied_retention`), so a
                // rebuilt batch that raises it again does not queue it.
                if let Err(e) = Self::db(conn, move |c| {
                    let tx = c.transaction()?;
                    tx.execute(
                        "INSERT OR IGNORE INTO sent (receiver, key, sent_at)
                         SELECT receiver, key, ?2 FROM outbox WHERE id = ?1 AND key != ''",
                        params![id, now_micros()],
                    )?;
                    tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
                    tx.commit()
                })
                .await
                {
                    tracing::warn!(sink = %self.sink, receiver = %name, error = %e, "marking an alert notification sent failed; it may be sent again");
                    return;
                }
                self.owned.sent(partition, name, &key);
            }
            if !full {
                self.set_depth(conn, name).await;
                return;
            }
        }
    }

    async fn set_depth(&self, conn: &Arc<Mutex<Connection>>, name: &str) {
        let r = name.to_owned();
        if let Ok(n) = Self::db(conn, move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE receiver = ?1",
                [r],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        {
            self.metrics
                .alert_outbox_depth
                .with_label_values(&[&self.sink, name])
                .set(n);
        }
    }

    /// Re-posts every firing alert of the partitions this instance owns
    /// to each Alertmanager receiver: a partition's new owner takes its
    /// alerts over under the same labels and start, so Alertmanager keeps
    /// one alert; the previous owner stopped at its revoke.
    async fn refresh(&self, conn: &Arc<Mutex<Connection>>, backoff: &mut HashMap<String, Backoff>) {
        let docs = Self::db(conn, |c| {
            let mut st =
                c.prepare_cached("SELECT partition, alert FROM alerts WHERE state = 'firing'")?;
            st.query_map([], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
        let Ok(docs) = docs else {
            return;
        };
        let notes: Vec<Notification> = docs
            .iter()
            .filter(|(partition, _)| self.owned.holds(*partition))
            .filter_map(|(_, d)| serde_json::from_str::<AlertDoc>(d).ok())
            .map(|alert| Notification {
                key: String::new(),
                status: "firing".into(),
                alert,
            })
            .collect();
        if notes.is_empty() {
            return;
        }
        let refs: Vec<&Notification> = notes.iter().collect();
        'receivers: for (name, receiver) in &self.receivers {
            let Receiver::Alertmanager { url } = receiver else {
                continue;
            };
            for chunk in refs.chunks(REFRESH_CHUNK) {
                let body = alertmanager_body(chunk, now_micros(), self.config.alert_ttl);
                match post(&self.client, url, None, to_json(&body).into_bytes()).await {
                    Sent::Ok => {
                        self.metrics
                            .alert_refreshes
                            .with_label_values(&[&self.sink, name])
                            .inc_by(chunk.len() as u64);
                    }
                    Sent::Transient(why, after) => {
                        self.fail(backoff, name, after);
                        tracing::warn!(sink = %self.sink, receiver = %name, reason = why.as_str(), "re-posting firing alerts failed");
                        continue 'receivers;
                    }
                    Sent::Permanent(why) => {
                        tracing::error!(sink = %self.sink, receiver = %name, reason = why.as_str(), "Alertmanager refused the firing alerts");
                    }
                }
            }
        }
    }

    /// Forgets applied ids past their retention; caps each outbox.
    async fn prune(&self, conn: &Arc<Mutex<Connection>>) {
        let cutoff = now_micros().saturating_sub(micros(self.config.applied_retention));
        let max = i64::try_from(self.config.max_outbox).unwrap_or(i64::MAX);
        let names: Vec<String> = self.receivers.iter().map(|(n, _)| n.clone()).collect();
        let started = std::time::Instant::now();
        let res = Self::db(conn, move |c| {
            let applied = c.execute("DELETE FROM applied WHERE applied_at < ?1", [cutoff])?;
            let sent = c.execute("DELETE FROM sent WHERE sent_at < ?1", [cutoff])?;
            let mut dropped = Vec::new();
            for n in names {
                let d = c.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE receiver = ?1
                     ORDER BY id DESC LIMIT -1 OFFSET ?2)",
                    params![n, max],
                )?;
                dropped.push((n, d));
            }
            Ok((applied as u64, sent as u64, dropped))
        })
        .await;
        match res {
            Ok((applied, sent, dropped)) => {
                // The state's retention: applied ids and sent keys past
                // `applied_retention`.
                if applied + sent > 0 {
                    self.metrics.retention_swept(
                        &self.sink,
                        &[("applied", applied), ("sent", sent)],
                        started.elapsed(),
                    );
                }
                for (n, d) in dropped {
                    if d > 0 {
                        self.metrics
                            .alert_notifications
                            .with_label_values(&[&self.sink, &n, "dropped"])
                            .inc_by(d as u64);
                        tracing::error!(sink = %self.sink, receiver = %n, dropped = d, "alert outbox over max_outbox; oldest notifications dropped");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sink = %self.sink, error = %e, "pruning the alert state failed")
            }
        }
    }
}
