//! Ingest: the webhook receiver.
//!
//! A request is answered 2xx only after its raw event is acknowledged by the
//! Kafka brokers (`acks=all`, idempotent producer). Everything before that
//! can refuse it, and a refusal leaves no trace in Kafka.
//!
//! - [`config`]: the typed TOML configuration, layered with `INGEST_`
//!   environment variables, and its start-up checks.
//! - [`secret`]: secret values read from the environment or files, never
//!   printable.
//! - [`signature`]: signature schemes; each verifies the exact bytes
//!   received, in constant time, against every secret of a rotation. Their
//!   configuration and its checks live beside them (`signature::config`).
//! - [`source`]: a configured source at run time: its scheme, body limit,
//!   where its event id, ordering key and sequence come from, its
//!   allow-list, rate limit and handshakes.
//! - [`address`]: CIDR blocks, and the client address of a request behind
//!   trusted proxies (`X-Forwarded-For`).
//! - [`rate_limit`]: the per-source token bucket.
//! - [`handshake`]: challenge handshakes (Slack's `url_verification`, GET
//!   subscription checks) answered without writing to Kafka.
//! - [`producer`]: the Kafka producer: librdkafka settings built in one
//!   place, delivery with a deadline, recovery from fatal errors, readiness.
//! - [`metrics`]: the Prometheus registry and every metric ingest exports.
//! - [`http`]: the axum router, the webhook handler and the error mapping
//!   to status codes and stable error codes.
//! - [`server`]: wiring, the connection loop (plain or TLS), signals and
//!   graceful shutdown.
//! - [`tls`]: the webhook port's TLS: the certificate and key files,
//!   their checks, and their reload while serving.
//! - [`simulator`]: the provider simulator behind `ingest send`.
//! - [`poller`]: `ingest poll`: reads sources' events from providers'
//!   REST history APIs (scheduled polling, reconciliation sweeps) into the
//!   raw topic as the same envelope; its config, cursors and metrics.
//! - [`provider_api`]: the provider's REST history API the simulator
//!   serves beside its webhooks (paged, conditional, rate limited, and
//!   misbehaving on request).

pub mod address;
pub mod config;
pub mod durability;
pub mod handshake;
pub mod http;
pub mod metrics;
pub mod pointer;
pub mod poller;
pub mod producer;
pub mod provider_api;
pub mod rate_limit;
pub mod secret;
pub mod server;
pub mod signature;
pub mod simulator;
pub mod source;
pub mod tls;
