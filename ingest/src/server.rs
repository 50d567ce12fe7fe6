//! Wiring: builds sources, producer and router from a [`Config`], serves
//! until SIGINT/SIGTERM, then shuts down in order: stop accepting, let
//! in-flight requests finish (their records delivered and answered), flush
//! the producer.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::address::Cidrs;
use crate::config::Config;
use crate::http::{AppState, admin_router, public_router, router};
use crate::metrics::Metrics;
use crate::producer::KafkaProducer;
use crate::source::Source;

/// Builds the application state: loads secrets, creates the producer.
pub fn build_state(config: &Config) -> anyhow::Result<AppState> {
    let sources = Source::build_all(config)
        .map_err(|problems| anyhow::anyhow!("cannot start:\n  - {}", problems.join("\n  - ")))?;
    let metrics = Metrics::new().context("registering metrics")?;
    let producer = KafkaProducer::new(&config.kafka, &config.server, metrics.clone())
        .context("creating the Kafka producer")?;
    Ok(AppState {
        sources: Arc::new(sources),
        producer: Arc::new(producer),
        metrics,
        in_flight: Arc::new(Semaphore::new(config.server.max_in_flight)),
        request_timeout: config.server.request_timeout,
        retry_after: config.server.retry_after,
        trusted_proxies: Arc::new(
            Cidrs::parse(&config.server.trusted_proxies)
                .map_err(|bad| anyhow::anyhow!("server.trusted_proxies: {bad:?}"))?,
        ),
    })
}

/// Serves until `shutdown` resolves, then drains and flushes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(&config)?;
    let producer = state.producer.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(producer.clone().supervise(stop_rx));

    // One signal starts the graceful drain and the clock on it.
    let (drain_tx, mut drain_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    });
    let mut graceful_rx = drain_rx.clone();
    let app = match config.server.admin_listen {
        None => router(state),
        Some(at) => {
            let admin = TcpListener::bind(at)
                .await
                .with_context(|| format!("server.admin_listen: cannot listen on {at}"))?;
            tracing::info!(addr = %admin.local_addr()?, "admin port: /metrics, /healthz, /readyz");
            let admin_app = admin_router(state.clone());
            // Scrapes go on while webhooks drain; it ends with the process.
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, admin_app).await {
                    tracing::warn!(error = %e, "admin port stopped");
                }
            });
            public_router(state)
        }
    }
    .into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|v| *v).await;
        tracing::info!("shutdown requested: no new connections, draining in-flight requests");
    });
    let grace = config.server.shutdown_timeout;
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        _ = async {
            let _ = drain_rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the shutdown timeout");
        }
    }
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    let flush_for = config
        .server
        .request_timeout
        .max(std::time::Duration::from_secs(1));
    let flushed = tokio::task::spawn_blocking(move || producer.flush(flush_for)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed; bye"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "producer flush incomplete (no request waiting on it got a 2xx)")
        }
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
    Ok(())
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    plumbing::shutdown_signal().await
}
