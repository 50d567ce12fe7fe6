//! Every metric ingest exports, in one registry per process.
//!
//! Labels are low-cardinality only: configured source names (or `_unknown`
//! for a path that names no source), status codes, reasons and configured
//! secret ids. Never event ids, addresses or raw paths.
//!
//! Every metric is registered through a [`Catalogue`], which lists it even
//! before it has a series: `tests/tests/e2e/metrics.rs` checks the names, types
//! and labels, and that the alert rules and the Grafana dashboard only use
//! names declared here.

use std::ops::Deref;
use std::sync::Arc;

use plumbing::metrics::{Catalogue, Family};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Label used for requests to a source that is not configured.
pub const UNKNOWN_SOURCE: &str = "_unknown";

/// Ingest's metrics: one shared set, so a clone (one per request) is a
/// single reference count.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// One source's series of the per-request metrics, resolved once at start:
/// the hot path counts without hashing label values and locking the vector
/// for each request.
#[derive(Clone)]
pub struct SourceMetrics {
    /// `ingest_requests_total{source, status="200"}`.
    pub accepted: IntCounter,
    /// `ingest_ack_latency_seconds{source}`.
    pub ack_latency: Histogram,
    /// `ingest_body_bytes{source}`.
    pub body_bytes: Histogram,
}

/// Every metric ingest exports.
pub struct MetricSet {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The same registry, with the list of declared families.
    pub catalogue: Catalogue,
    /// Webhook requests answered, by source and HTTP status.
    pub requests: IntCounterVec,
    /// Signature verification failures, by source and reason code.
    pub verification_failures: IntCounterVec,
    /// Every refused webhook request, by source and error code
    /// (`address_not_allowed`, `rate_limited`, `signature_invalid`, ...).
    pub refusals: IntCounterVec,
    /// Challenge handshakes answered, by source and kind
    /// (`url_verification`, `subscription`).
    pub handshakes: IntCounterVec,
    /// Successful verifications by source and the rotation secret that matched.
    pub secret_matches: IntCounterVec,
    /// Arrival to 2xx answer of accepted requests, by source.
    pub ack_latency: HistogramVec,
    /// Hand-over to the producer until the broker's acknowledgement.
    pub produce_latency: Histogram,
    /// Body sizes of requests that were read in full, by source.
    pub body_bytes: HistogramVec,
    /// Webhook requests being handled now.
    pub in_flight: IntGauge,
    /// Records handed to the producer and not yet acknowledged.
    pub producer_queue_depth: IntGauge,
    /// Producer failures by kind (`timeout`, `queue_full`, `broker`, `fatal`, ...).
    pub broker_errors: IntCounterVec,
    /// 1 when the last broker probe succeeded.
    pub broker_up: IntGauge,
    /// Changed TLS certificate and key files read while serving, by
    /// outcome (`ok`: in use for new connections; `refused`: the previous
    /// pair kept).
    pub tls_reloads: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let catalogue = Catalogue::new();
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let requests = IntCounterVec::new(
            Opts::new(
                "ingest_requests_total",
                "Webhook requests answered, by source and HTTP status.",
            ),
            &["source", "status"],
        )?;
        let verification_failures = IntCounterVec::new(
            Opts::new(
                "ingest_verification_failures_total",
                "Requests refused because their signature did not verify, by source and reason.",
            ),
            &["source", "reason"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "ingest_refusals_total",
                "Webhook requests refused, by source and error code.",
            ),
            &["source", "code"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "ingest_handshakes_total",
                "Challenge handshakes answered (nothing written to Kafka), by source and kind.",
            ),
            &["source", "kind"],
        )?;
        let secret_matches = IntCounterVec::new(
            Opts::new(
                "ingest_signature_secret_matches_total",
                "Verified requests by the rotation secret that matched: when an old secret stays at zero it can be removed.",
            ),
            &["source", "secret"],
        )?;
        let ack_latency = HistogramVec::new(
            HistogramOpts::new(
                "ingest_ack_latency_seconds",
                "From a request's arrival to its 2xx answer (the event is in Kafka), by source.",
            )
            .buckets(latency_buckets.clone()),
            &["source"],
        )?;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ingest_produce_latency_seconds",
                "From handing a record to the producer to the brokers' acknowledgement.",
            )
            .buckets(latency_buckets),
        )?;
        let body_bytes = HistogramVec::new(
            HistogramOpts::new(
                "ingest_body_bytes",
                "Sizes of request bodies read in full, by source.",
            )
            .buckets(prometheus::exponential_buckets(256.0, 4.0, 8)?),
            &["source"],
        )?;
        let in_flight = IntGauge::new(
            "ingest_in_flight_requests",
            "Webhook requests being handled now.",
        )?;
        let producer_queue_depth = IntGauge::new(
            "ingest_producer_queue_depth",
            "Records handed to the producer and not yet acknowledged by the brokers.",
        )?;
        let broker_errors = IntCounterVec::new(
            Opts::new(
                "ingest_broker_errors_total",
                "Records the producer could not deliver in time, by kind.",
            ),
            &["kind"],
        )?;
        let broker_up = IntGauge::new(
            "ingest_broker_up",
            "1 when the last metadata request to the brokers for the raw topic succeeded.",
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "ingest_tls_reloads_total",
                "Changed TLS certificate and key files read while serving, by outcome (ok: in use for new connections; refused: the previous pair kept).",
            ),
            &["outcome"],
        )?;
        for outcome in ["ok", "refused"] {
            tls_reloads.with_label_values(&[outcome]);
        }
        catalogue.add(&requests)?;
        catalogue.add(&verification_failures)?;
        catalogue.add(&refusals)?;
        catalogue.add(&handshakes)?;
        catalogue.add(&secret_matches)?;
        catalogue.add(&ack_latency)?;
        catalogue.add(&produce_latency)?;
        catalogue.add(&body_bytes)?;
        catalogue.add(&in_flight)?;
        catalogue.add(&producer_queue_depth)?;
        catalogue.add(&broker_errors)?;
        catalogue.add(&broker_up)?;
        catalogue.add(&tls_reloads)?;
        Ok(Metrics(Arc::new(MetricSet {
            registry: catalogue.registry().clone(),
            catalogue,
            requests,
            verification_failures,
            refusals,
            handshakes,
            secret_matches,
            ack_latency,
            produce_latency,
            body_bytes,
            in_flight,
            producer_queue_depth,
            broker_errors,
            broker_up,
            tls_reloads,
        })))
    }

    /// `source`'s series of the per-request metrics.
    pub fn source(&self, source: &str) -> SourceMetrics {
        SourceMetrics {
            accepted: self.requests.with_label_values(&[source, "200"]),
            ack_latency: self.ack_latency.with_label_values(&[source]),
            body_bytes: self.body_bytes.with_label_values(&[source]),
        }
    }
}

impl MetricSet {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.catalogue.render()
    }

    /// Every metric family ingest declares (whether or not it has a series
    /// yet).
    pub fn families(&self) -> Vec<Family> {
        self.catalogue.families()
    }
}
