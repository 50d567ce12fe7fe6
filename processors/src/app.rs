//! The `run` command: [`serve`] wires the configuration into a running
//! process: the dedupe store, the sinks, the consumer-group runtime, the
//! HTTP endpoints (`/metrics`, `/healthz`, `/readyz`) and the background
//! dedupe expiry, then hands the partitions over on SIGINT/SIGTERM.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::Config;
use crate::kafka::consumer as runtime;
use crate::kafka::side::KafkaSide;
use crate::metrics::Metrics;
use crate::pipeline::dedupe::{DedupeConfig, DedupeSettings, DedupeStore, RedbDedupe};
use crate::pipeline::{Shared, SideTopics};
use crate::sinks::{self, Sink};
use crate::state::Stores;
use crate::state::cache::StateCache;

/// Opens the dedupe store (creating its folder).
pub fn open_dedupe(settings: &DedupeSettings) -> anyhow::Result<Arc<dyn DedupeStore>> {
    let dedupe_cfg = DedupeConfig {
        window: settings.window,
        cache_bytes: settings.cache_bytes,
    };
    if let Some(dir) = settings.path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("dedupe.path: {}: {e}", dir.display()))?;
    }
    Ok(Arc::new(
        RedbDedupe::open(&settings.path, &dedupe_cfg)
            .map_err(|e| anyhow::anyhow!("dedupe.path: {}: {e}", settings.path.display()))?,
    ))
}

/// Checks (or creates) the changelog topic and opens the local cache.
pub async fn open_state(config: &Config) -> anyhow::Result<Arc<Stores>> {
    use crate::kafka::changelog::{Cleanup, KafkaChangelog, ensure_topic};
    let topic = config.state.changelog_topic(&config.kafka.group_id);
    ensure_topic(
        &config.kafka,
        &topic,
        "state.changelog_topic",
        Cleanup::Compact,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    // Ledger records expire a day past the dedupe window (Kafka Streams
    // keeps windowed changelogs a day past their window too).
    let ledger_topic = config.state.ledger_topic(&config.kafka.group_id);
    let keep = config.dedupe.window + std::time::Duration::from_secs(24 * 3600);
    ensure_topic(
        &config.kafka,
        &ledger_topic,
        "state.ledger_topic",
        Cleanup::Delete(keep),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let path = config.state.cache_path(&config.dedupe.path);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("state.cache_path: {}: {e}", dir.display()))?;
    }
    let cache = StateCache::open(&path)
        .map_err(|e| anyhow::anyhow!("state.cache_path: {}: {e}", path.display()))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    Ok(Arc::new(Stores {
        changelog: Arc::new(KafkaChangelog::new(&config.kafka, &topic)?),
        ledger: Arc::new(KafkaChangelog::new(&config.kafka, &ledger_topic)?),
        cache: Some(Arc::new(cache)),
        owner: format!("{host}/{}", std::process::id()),
    }))
}

/// What every partition of this process shares, from the config and the
/// built parts.
pub fn shared(
    config: &Config,
    sinks: Vec<Arc<dyn Sink>>,
    dedupe: Arc<dyn DedupeStore>,
    side: Arc<dyn SideTopics>,
    metrics: Metrics,
) -> anyhow::Result<Shared> {
    Shared::new(
        &config.sources,
        &config.routes,
        &config.processing,
        sinks,
        dedupe,
        side,
        metrics,
    )
    .map(|s| s.with_fields(&config.sinks))
    .map_err(|e| anyhow::anyhow!(e))
}

/// Runs the consumer group until SIGINT/SIGTERM: opens the dedupe store,
/// builds the sinks, starts the runtime and the HTTP endpoints, expires
/// dedupe entries every minute, and on a signal hands every partition over
/// before it returns. A consumer that ends by itself (fenced by the
/// brokers) ends it too, with that error.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let dedupe = open_dedupe(&config.dedupe)?;
    let side = Arc::new(KafkaSide::new(&config.kafka)?);
    let sinks = sinks::build(&config.sinks, &metrics).await?;
    let stores = open_state(&config).await?;
    let shared = Arc::new(
        shared(
            &config,
            sinks.clone(),
            dedupe.clone(),
            side,
            metrics.clone(),
        )?
        .with_state(stores),
    );

    let listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", config.metrics.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = runtime::start(
        &config.kafka,
        &config.processing,
        shared,
        tokio::runtime::Handle::current(),
        stop_rx.clone(),
    )?;
    let state = HttpState {
        metrics: metrics.clone(),
        ready: running.ready.clone(),
        sinks: sinks.clone(),
    };
    let app = router(state);
    println!("metrics on http://{addr}");
    tracing::info!(%addr, topic = %config.kafka.topic, group = %config.kafka.group_id, "processors started");
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                crate::pipeline::stopped(&mut http_stop).await;
            })
            .await
    });
    // Expire old dedupe entries every minute: the dedupe store's
    // retention is its window.
    let mut expiry_stop = stop_rx.clone();
    let expiry_metrics = metrics.clone();
    expiry_metrics
        .retention_removed
        .with_label_values(&["dedupe", "seen"]);
    let expiry = tokio::spawn(async move {
        loop {
            let d = dedupe.clone();
            let started = std::time::Instant::now();
            let res = tokio::task::spawn_blocking(move || {
                let removed = d.expire(std::time::SystemTime::now())?;
                Ok::<_, crate::pipeline::dedupe::DedupeError>((removed, d.len()?))
            })
            .await;
            match res {
                Ok(Ok((removed, len))) => {
                    expiry_metrics.dedupe_entries.set(len as i64);
                    if removed > 0 {
                        expiry_metrics.retention_swept(
                            "dedupe",
                            &[("seen", removed)],
                            started.elapsed(),
                        );
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "dedupe expiry failed"),
                Err(e) => tracing::warn!(error = %e, "dedupe expiry task failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                _ = crate::pipeline::stopped(&mut expiry_stop) => break,
            }
        }
    });

    let sweepers = sweep_retention(&sinks, &metrics, &stop_rx);

    tokio::select! {
        _ = plumbing::shutdown_signal() => {
            tracing::info!("stopping: handing partitions over");
        }
        // A fenced consumer (or one failed for good) ends by itself, after
        // its own hand-over: the process stops too and reports why, rather
        // than stay up consuming nothing.
        _ = running.ended() => {
            tracing::error!("the consumer ended by itself: stopping");
        }
    }
    let _ = stop_tx.send(true);
    // The hand-over talks to the brokers (final commit, leaving the group);
    // with the brokers gone or stalled librdkafka would retry it for
    // minutes. The process ends within its bound whatever their state:
    // what it could not commit, the next owner reads again.
    let bound = config.processing.revoke_timeout + SHUTDOWN_GRACE;
    let joined =
        tokio::time::timeout(bound, tokio::task::spawn_blocking(move || running.join())).await;
    let _ = http.await;
    let _ = expiry.await;
    for s in sweepers {
        let _ = s.await;
    }
    // Every partition handed over: what the sinks still hold goes out.
    for sink in &sinks {
        sink.finish().await;
    }
    match joined {
        Ok(Ok(Ok(()))) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(anyhow::anyhow!(e)),
        Ok(Err(e)) => Err(anyhow::anyhow!("consumer thread: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "the consumer did not stop within {} (revoke_timeout + {}): the brokers are unreachable or not answering; exiting without the final commit, so the next owner of these partitions reads again from the last committed offset",
            humantime::format_duration(bound),
            humantime::format_duration(SHUTDOWN_GRACE),
        )),
    }
}

/// Sweeps each sink that has a retention ([`Sink::retained`]) at once and
/// then every its `sweep_interval`, until `stop`; each sweep is counted
/// and logged by [`Metrics::retention_swept`]. A failed sweep is logged
/// and tried again at the next interval: what it left is removed then.
fn sweep_retention(
    sinks: &[Arc<dyn Sink>],
    metrics: &Metrics,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for sink in sinks.iter().filter(|s| s.retained().is_some()) {
        let sink = sink.clone();
        let metrics = metrics.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let Some(retained) = sink.retained() else {
                return;
            };
            let interval = retained.sweep_interval();
            loop {
                let started = std::time::Instant::now();
                tokio::select! {
                    swept = retained.sweep() => swept_once(sink.name(), swept, started, &metrics),
                    _ = crate::pipeline::stopped(&mut stop) => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = crate::pipeline::stopped(&mut stop) => break,
                }
            }
        }));
    }
    tasks
}

/// Counts and logs one sweep of store `name`: a failure sets
/// `processors_retention_sweep_failing` until a sweep succeeds (the
/// `RetentionSweepFailing` alert), since the rows it should have removed,
/// guests' data among them, stay until then.
fn swept_once(
    name: &str,
    swept: Result<Vec<(&'static str, u64)>, String>,
    started: std::time::Instant,
    metrics: &Metrics,
) {
    let failing = metrics.retention_sweep_failing.with_label_values(&[name]);
    match swept {
        Ok(removed) => {
            failing.set(0);
            metrics.retention_swept(name, &removed, started.elapsed());
        }
        Err(e) => {
            failing.set(1);
            metrics
                .retention_sweep_failures
                .with_label_values(&[name])
                .inc();
            tracing::warn!(store = name, error = %e, "retention sweep failed; tried again at the next interval");
        }
    }
}

/// How long, past `revoke_timeout`, a stopping process waits for the
/// consumer to commit and leave the group before it exits anyway.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The HTTP endpoints: `/metrics`, `/healthz`, and `/readyz` (200 once in
/// the group with no partition restoring its state).
fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/state/occupancy", get(occupancy))
        .with_state(state)
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct HttpState {
    /// The process's metrics, rendered at `/metrics`.
    metrics: Metrics,
    /// Set once the consumer joined the group (`/readyz`).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// The sinks, for the read-only state views.
    sinks: Vec<Arc<dyn Sink>>,
}

async fn render_metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// `GET /state/occupancy`: devices per (venue, zone) in the partitions
/// this instance owns, from each sink that keeps live occupancy (counts
/// only: no device or guest id). A JSON array of `{"sink", "venue",
/// "zone", "devices"}` sorted by sink, venue and zone; 503 naming the sink
/// when its state cannot be read.
async fn occupancy(State(s): State<HttpState>) -> axum::response::Response {
    let mut rows = Vec::new();
    for sink in &s.sinks {
        match sink.occupancy() {
            None => {}
            Some(Ok(counts)) => {
                for ((venue, zone), devices) in counts {
                    rows.push(serde_json::json!({
                        "sink": sink.name(),
                        "venue": venue,
                        "zone": zone,
                        "devices": devices,
                    }));
                }
            }
            Some(Err(e)) => {
                tracing::warn!(sink = sink.name(), error = %e, "occupancy cannot be read");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("sink {}: state cannot be read", sink.name()),
                )
                    .into_response();
            }
        }
    }
    axum::Json(rows).into_response()
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let restoring = s.metrics.state_restoring.get();
    if !s.ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet in the consumer group".to_owned(),
        )
    } else if restoring > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("restoring the state of {restoring} partition(s)"),
        )
    } else {
        (StatusCode::OK, "ready".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_failing_retention_sweep_is_flagged_until_one_succeeds() {
        use crate::sinks::Retained;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // One line far past the retention, so the sweep rewrites the file.
        std::fs::write(
            &path,
            "{\"event_id\":\"e1\",\"source\":\"purple\",\"received_at_micros\":1000000}\n",
        )
        .unwrap();
        let metrics = Metrics::new().unwrap();
        let sink = crate::sinks::jsonl::JsonlSink::open("lines", &path)
            .unwrap()
            .with_retention(
                Some(std::time::Duration::from_secs(86_400)),
                std::time::Duration::from_secs(3600),
                &metrics,
            );
        let failing = || {
            metrics
                .retention_sweep_failing
                .with_label_values(&["lines"])
                .get()
        };
        let failures = || {
            metrics
                .retention_sweep_failures
                .with_label_values(&["lines"])
                .get()
        };
        // The sweep's temporary file cannot be created: a directory holds
        // its name.
        let blocker = dir.path().join("events.jsonl.sweep");
        std::fs::create_dir(&blocker).unwrap();
        for round in 1..=2 {
            let started = std::time::Instant::now();
            swept_once("lines", sink.sweep().await, started, &metrics);
            assert_eq!((failing(), failures()), (1, round));
        }
        std::fs::remove_dir(&blocker).unwrap();
        swept_once(
            "lines",
            sink.sweep().await,
            std::time::Instant::now(),
            &metrics,
        );
        assert_eq!((failing(), failures()), (0, 2));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(
            metrics
                .retention_removed
                .with_label_values(&["lines", "lines"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn readyz_is_ready_only_in_the_group_with_no_partition_restoring() {
        let metrics = Metrics::new().unwrap();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = router(HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            sinks: Vec::new(),
        });
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not yet in the consumer group".into()
            )
        );
        ready.store(true, Ordering::Relaxed);
        metrics.state_restoring.inc();
        metrics.state_restoring.inc();
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "restoring the state of 2 partition(s)".into()
            )
        );
        metrics.state_restoring.sub(2);
        assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ready".into()));
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn occupancy_lists_devices_per_venue_and_zone_of_the_alerting_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "path = {:?}\n[[rules]]\nkind = \"zone_occupancy\"\nthreshold = 5\n[[receivers]]\nkind = \"log\"\n",
            dir.path().join("a.sqlite")
        );
        let config: crate::sinks::alerting::AlertsConfig = toml::from_str(&text).unwrap();
        let metrics = Metrics::new().unwrap();
        let alerts =
            crate::sinks::alerting::AlertsSink::start("alerts", &config, &metrics).unwrap();
        let now = crate::sinks::alerting::now_micros();
        let event = |id: &str, zone: &str, device: &str| {
            Arc::new(crate::event::Event {
                source: "purple".into(),
                event_id: id.into(),
                event_type: "device_connected".into(),
                ordering_key: Some("v1".into()),
                sequence: Some(1),
                received_at_micros: now,
                occurred_at_micros: Some(now),
                late: false,
                guest_wifi: Some(crate::event::GuestWifi {
                    event_type: "device_connected".into(),
                    sequence: Some(1),
                    occurred_at_micros: now,
                    venue_id: "v1".into(),
                    venue_name: None,
                    zone: Some(zone.into()),
                    device_id: Some(device.into()),
                    guest: None,
                }),
                body: serde_json::json!({}),
            })
        };
        let batch = [
            event("a", "lobby", "d1"),
            event("b", "lobby", "d2"),
            event("c", "bar", "d3"),
        ];
        assert!(
            alerts
                .accept(&batch)
                .await
                .iter()
                .all(|o| *o == crate::sinks::Outcome::Accepted)
        );
        let app = router(HttpState {
            metrics,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            sinks: vec![
                Arc::new(crate::sinks::basic::NullSink::new("n")),
                Arc::new(alerts),
            ],
        });
        let (status, body) = get(&app, "/state/occupancy").await;
        assert_eq!(status, StatusCode::OK);
        let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([
                {"sink": "alerts", "venue": "v1", "zone": "bar", "devices": 1},
                {"sink": "alerts", "venue": "v1", "zone": "lobby", "devices": 2},
            ])
        );
    }
}
