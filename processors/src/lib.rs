//! Processors: consumer runtime, per-source parsers, reorder, dedupe, router
//! and sinks (see `DESIGN.md`, "Processing semantics").
//!
//! - [`runtime`]: the rdkafka consumer group, one worker per partition,
//!   offsets stored only as far as everything was handled, hand-over on
//!   revocation.
//! - [`pipeline`]: one partition's processing, independent of Kafka: decode,
//!   parse, reorder, dedupe, route, deliver, quarantine, dead-letter.
//! - [`event`]: normalized events and the per-source parsers.
//! - [`route`]: routing rules from the config.
//! - [`sink`]: the sink trait and the log, JSON-lines and null sinks.
//! - [`analytics`]: the analytics store, on PostgreSQL or embedded (SQLite).
//! - [`crm`]: the CRM sink: templated JSON over HTTP, idempotency keys,
//!   retries with backoff, a circuit breaker and a rate limit per sink.
//! - [`alerting`]: the alerting sink: live occupancy, VIP arrivals and
//!   dwell rules on a SQLite state file, with an outbox delivered to Slack,
//!   Alertmanager and the log; effect once across kill -9.
//! - [`offsets`]: per-partition offset tracking. Owns "which offset may be
//!   committed": only the prefix of fully handled records, whatever order
//!   they finish in.
//! - [`reorder`]: per ordering key, releases items in sequence order. Owns the
//!   gap timeout, late and duplicate-sequence flags, and the buffer and key
//!   bounds.
//! - [`dedupe`]: exact de-duplication by (source, event id) over a window of
//!   at least 72 h. Owns the [`dedupe::DedupeStore`] contract, the persistent
//!   redb store (one file per instance, memory bounded by its page cache) and
//!   an in-memory store for tests.
//! - [`replay`]: `processors replay`: a time range of the raw topic read
//!   again with its own consumer (no group offsets, no live dedupe store)
//!   through the same pipeline, routes and sinks; start and end offsets by
//!   timestamp, progress, dry run.
//! - [`dlq`]: `processors dlq list|redrive`: the dead-letter topic as a
//!   queue whose head is a dedicated group's committed offset; letters leave
//!   it only once their sink accepted them.
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.
//!
//! The order per record: decode, [`reorder::Reorderer::push`],
//! [`dedupe::DedupeStore::seen`] (drop if seen), route to the sinks,
//! [`dedupe::DedupeStore::record`] once they accepted,
//! [`offsets::PartitionOffsets::done`], store
//! [`offsets::PartitionOffsets::committable`].
//!
//! [`Envelope`] is re-exported from `schemas`: it is what the processors read.

pub mod config;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod sinks;

pub use schemas::Envelope;
