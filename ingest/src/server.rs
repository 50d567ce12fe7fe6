//! Wiring: builds sources, producer and router from a [`Config`], serves
//! until SIGINT/SIGTERM, then shuts down in order: stop accepting, let
//! in-flight requests finish (their records delivered and answered), flush
//! the producer.
//!
//! The webhook port is served by [`serve_connections`], not
//! `axum::serve`, because the limits on what a client may send before a
//! handler sees its request live in hyper's connection builder:
//! `server.header_read_timeout` (a slowloris sender is disconnected),
//! `server.max_header_bytes` and `server.max_headers` (431, connection
//! closed). The body is bounded by the handler (`request_timeout`: 408).
//! With `server.tls` it also ends TLS there ([`crate::tls`]), the handshake
//! bounded by the same header timeout; the admin port stays plain.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::address::Cidrs;
use crate::config::Config;
use crate::durability::{self, DurabilityState};
use crate::http::{AppState, Front, Shared, admin_router};
use crate::metrics::Metrics;
use crate::producer::KafkaProducer;
use crate::source::Source;
use crate::tls::{PeerCertificates, Tls};

/// Builds the application state: loads secrets, creates the producer.
pub fn build_state(config: &Config) -> anyhow::Result<AppState> {
    let sources = Source::build_all(config)
        .map_err(|problems| anyhow::anyhow!("cannot start:\n  - {}", problems.join("\n  - ")))?;
    let metrics = Metrics::new().context("registering metrics")?;
    let producer = KafkaProducer::new(&config.kafka, &config.server, metrics.clone())
        .context("creating the Kafka producer")?;
    let source_metrics = sources
        .values()
        .map(|s| (s.name.clone(), metrics.source(&s.name)))
        .collect();
    Ok(AppState(Arc::new(Shared {
        sources: Arc::new(sources),
        producer: Arc::new(producer),
        metrics,
        source_metrics,
        in_flight: Arc::new(Semaphore::new(config.server.max_in_flight)),
        request_timeout: config.server.request_timeout,
        retry_after: config.server.retry_after,
        trusted_proxies: Arc::new(
            Cidrs::parse(&config.server.trusted_proxies)
                .map_err(|bad| anyhow::anyhow!("server.trusted_proxies: {bad:?}"))?,
        ),
        durability: Arc::new(DurabilityState::default()),
        durability_config: config.kafka.durability.clone(),
    })))
}

/// The settings of the admin client that reads the raw topic's settings:
/// the brokers, the user's extra options and the security settings,
/// nothing of the producer's.
fn admin_settings(config: &Config) -> Result<rdkafka::ClientConfig, rdkafka::error::KafkaError> {
    let k = &config.kafka;
    let mut c = plumbing::kafka::client_config(&k.brokers, &k.options, &k.security)?;
    c.set("client.id", format!("{}-admin", k.client_id));
    Ok(c)
}

/// Reads the raw topic's replication now, then every
/// [`durability::RECHECK`]; logs a warning when it falls short and again
/// whenever the reading changes.
async fn watch_durability(
    settings: rdkafka::ClientConfig,
    topic: String,
    want: durability::DurabilityConfig,
    state: Arc<DurabilityState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match durability::inspect(&settings, &topic, Duration::from_secs(5)).await {
            Ok(reading) => {
                let shortfalls = reading.shortfalls(&want);
                if state.set(reading.clone()) {
                    if shortfalls.is_empty() {
                        tracing::info!(topic = %topic, ?reading, "raw topic replication meets kafka.durability");
                    } else {
                        tracing::warn!(
                            topic = %topic,
                            required = want.require,
                            "raw topic is below kafka.durability: {}",
                            shortfalls.join("; ")
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "raw topic settings not readable now"),
        }
        tokio::select! {
            _ = tokio::time::sleep(durability::RECHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Serves until `shutdown` resolves, then drains and flushes. With `tls`
/// (loaded and checked by [`Tls::load`]), the webhook port is served over
/// TLS and its files are watched for a new pair.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(&config)?;
    let producer = state.producer.clone();
    let admin = admin_settings(&config)?;
    if config.kafka.durability.require {
        // Refuse to take webhooks a topic cannot keep. Brokers that cannot
        // be asked now do not stop the start: `/readyz` says 503 until a
        // reading shows the topic is good.
        if let Ok(reading) =
            durability::inspect(&admin, &config.kafka.topic, Duration::from_secs(5)).await
        {
            let shortfalls = reading.shortfalls(&config.kafka.durability);
            if !shortfalls.is_empty() {
                anyhow::bail!(
                    "kafka.durability.require: the raw topic {} falls short: {}",
                    config.kafka.topic,
                    shortfalls.join("; ")
                );
            }
            state.durability.set(reading);
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(producer.clone().supervise(stop_rx.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(state.metrics.clone(), stop_rx.clone()));
    }
    tokio::spawn(watch_durability(
        admin,
        config.kafka.topic.clone(),
        config.kafka.durability.clone(),
        state.durability.clone(),
        stop_rx,
    ));

    // One signal starts the graceful drain and the clock on it.
    let (drain_tx, mut drain_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    });
    let mut graceful_rx = drain_rx.clone();
    let app = match config.server.admin_listen {
        None => Front::new(state, true),
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
            Front::new(state, false)
        }
    };
    let limits = ConnLimits::from(&config.server);
    let server = serve_connections(listener, app, limits, tls, async move {
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

/// HTTP/2: bodies a connection may have in flight before they are read.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// HTTP/2: the same per stream.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2: streams the client may reset before ingest took them up, at
/// once; past it the connection is closed (CVE-2023-44487, rapid reset).
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: streams ingest may reset for the client's errors on one
/// connection; past it the connection is closed.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// What a client may send before the handler sees its request.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest wait for a complete request head (`server.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (`server.max_header_bytes`, >= 8192).
    pub max_header_bytes: usize,
    /// Most header fields (`server.max_headers`).
    pub max_headers: usize,
    /// Most concurrent HTTP/2 streams per connection
    /// (`server.http2_max_streams`).
    pub http2_max_streams: u32,
}

impl From<&crate::config::ServerConfig> for ConnLimits {
    fn from(s: &crate::config::ServerConfig) -> Self {
        ConnLimits {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes.max(crate::config::MIN_HEADER_BYTES),
            max_headers: s.max_headers,
            http2_max_streams: s.http2_max_streams,
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1, and HTTP/2 with prior knowledge,
/// or over TLS with ALPN when `tls` is given) under `limits`, each request
/// handed to `front` with its TCP peer, until `stop` resolves;
/// then stops accepting and waits for open connections to finish their
/// requests and close.
///
/// Before hyper sees a connection, its first bytes must tell HTTP/1 from
/// HTTP/2 within the header timeout; with TLS, the handshake counts in that
/// same time, so a slow handshake cannot pin a connection either. Each TLS
/// connection takes the settings of [`Tls`] at accept: a reload changes
/// later connections only.
///
/// HTTP/1.1: a request head not complete within the header timeout (on a
/// kept-alive connection, counted from the end of the previous answer)
/// closes the connection without an answer; a head over `max_header_bytes`
/// or with more than `max_headers` fields is answered 431 and the
/// connection closed, by hyper, before any handler runs. HTTP/2: header
/// lists are capped at `max_header_bytes`, streams per connection at
/// `http2_max_streams`, the bodies a connection buffers unread at its
/// 1 MiB window (256 KiB per stream); a client that resets streams faster
/// than they are served (the "rapid reset" attack) or keeps making the
/// server reset them is sent GOAWAY and disconnected.
pub async fn serve_connections(
    listener: TcpListener,
    front: Front,
    limits: ConnLimits,
    tls: Option<Tls>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Half-close allowed: a sender that shuts down its writing side once
    // the request is sent still gets its answer. It also spares a read per
    // request: without it, hyper keeps reading the socket while the
    // handler runs, to notice the end of the stream, and reserves a fresh
    // read buffer for that each time (most of the allocator's slow path in
    // the load benchmark's profile). A sender that goes away altogether is
    // noticed when the answer is written; its request runs to its deadline,
    // bounded by `max_in_flight` like any other.
    builder
        .http1()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_streams)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather
                    // than spin; the connections already open go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = Conn {
            front: front.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        let header_timeout = limits.header_read_timeout;
        let acceptor = tls.as_ref().map(Tls::acceptor);
        tokio::spawn(async move {
            match acceptor {
                None => {
                    // hyper's header timeout starts once the protocol is
                    // known; until then, bound the wait for the first
                    // bytes here.
                    if protocol_known_within(&stream, header_timeout).await {
                        conn.serve(stream, None).await;
                    }
                }
                Some(acceptor) => {
                    if let Some((io, certs)) =
                        tls_within(acceptor, stream, header_timeout, peer).await
                    {
                        conn.serve(io, certs).await;
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What serving one accepted connection needs.
struct Conn {
    /// The webhook port's handlers.
    front: Front,
    /// hyper's connection builder, with the limits.
    builder: auto::Builder<TokioExecutor>,
    /// Keeps the graceful shutdown waiting for this connection.
    watcher: hyper_util::server::graceful::Watcher,
    /// The TCP peer, handed to the front with each request.
    peer: SocketAddr,
}

impl Conn {
    /// Serves HTTP on `io` until the connection closes or the graceful
    /// shutdown ends it; each request carries the client's certificate
    /// chain, when it presented one.
    async fn serve<I>(self, io: I, certs: Option<PeerCertificates>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            front,
            builder,
            watcher,
            peer,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The peer is handed over, not put in the request's extensions:
            // their map is three allocations per request when first used.
            if let Some(certs) = &certs {
                req.extensions_mut().insert(certs.clone());
            }
            // Boxed: hyper moves each request's future into its slot, and
            // the webhook path's is about 3 KiB, copied on every move; a box
            // moves as a pointer (BENCHMARKS.md, step 15).
            let answer = Box::pin(front.call(req.map(Body::new), Some(peer)));
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes of a connection tell HTTP/1 from HTTP/2: a
/// byte off the HTTP/2 preface, or all of it.
fn protocol_known(first: &[u8]) -> bool {
    first.len() >= H2_PREFACE.len() || first != &H2_PREFACE[..first.len()]
}

/// Waits, at most `timeout`, until the first bytes of `stream` tell
/// HTTP/1 from HTTP/2 (a byte off the HTTP/2 preface, or all of it), so a
/// connection that sends nothing, or the preface a byte at a time, is
/// closed like a slow request head. Only peeks: hyper reads the bytes.
async fn protocol_known_within(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut seen = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if protocol_known(&buf[..n]) {
                return true;
            }
            if n == seen {
                // A prefix of the preface and nothing new: peek would
                // answer at once again, so pause instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}

/// Completes the TLS handshake on `stream` and reads the first bytes of
/// HTTP inside it until they tell HTTP/1 from HTTP/2, all within
/// `timeout`; answers the stream with those bytes put back in front and
/// the client's certificate chain if it presented one, or `None` (the
/// connection is dropped) when the handshake fails, the client closes or
/// the time runs out.
async fn tls_within(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<(
    Replay<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    Option<PeerCertificates>,
)> {
    let wait = async {
        let mut tls = match acceptor.accept(stream).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                return None;
            }
        };
        let mut first = [0u8; H2_PREFACE.len()];
        let mut seen = 0;
        while !protocol_known(&first[..seen]) {
            match tls.read(&mut first[seen..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen += n,
            }
        }
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .filter(|c| !c.is_empty())
            .map(|c| PeerCertificates(c.to_vec().into()));
        let io = Replay {
            first: first[..seen].to_vec(),
            at: 0,
            inner: tls,
        };
        Some((io, certs))
    };
    tokio::time::timeout(timeout, wait).await.ok().flatten()
}

/// A stream whose first bytes were read already: reads give them back
/// first, then go on with the stream.
struct Replay<S> {
    /// The bytes read already.
    first: Vec<u8>,
    /// How many of them were given back.
    at: usize,
    /// The stream.
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(left) = this.first.get(this.at..).filter(|l| !l.is_empty()) {
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    plumbing::shutdown_signal().await
}
