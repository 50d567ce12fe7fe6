//! Processors: the consumer group that turns the raw topic into ordered,
//! de-duplicated events and delivers them to sinks (see `DESIGN.md`,
//! "Processing semantics"). Laid out by stage:
//!
//! - [`app`]: `run`: wires the config into a running process (dedupe
//!   store, sinks, runtime, `/metrics`, `/healthz`, `/readyz`) and stops it.
//! - [`config`]: the whole configuration, composed of each component's own
//!   config, whose checks it delegates to.
//! - [`metrics`]: the one Prometheus catalogue of the processors.
//! - [`event`]: normalized events, the per-source parsers and their
//!   [`event::SourceConfig`], and quarantine reasons.
//! - [`minimise`]: the guests' personal fields each sink may receive
//!   (`fields`), removed before the sink sees an event.
//! - [`pipeline`]: one partition's processing, with no Kafka in it: decode,
//!   parse, [`pipeline::reorder`] by sequence per key (or
//!   [`pipeline::time_order`] by `occurred_at`, for a source without one),
//!   [`pipeline::dedupe`] by (source, event id), [`pipeline::route`] to
//!   sinks, and [`pipeline::offsets`], which owns "which offset may be
//!   committed": only the prefix of fully handled records.
//! - [`sinks`]: the [`sinks::Sink`] contract and every sink (log, null,
//!   JSON lines, analytics on PostgreSQL or embedded SQLite, CRM, alerting),
//!   each in its own file or folder with its config.
//! - [`kafka`]: the only module of the live path that uses rdkafka: client
//!   settings built in one place, the consumer-group runtime (one worker
//!   per partition, offsets stored only as far as everything was handled,
//!   hand-over on revocation) and the side-topic producer.
//! - [`state`]: partition state that follows its partition to whichever
//!   instance owns it: the state changelog's format, its restore (with
//!   fencing of stale owners) and the local cache; the pipeline writes a
//!   checkpoint after every batch and restores before the first.
//! - [`topics`]: topic settings as code: every topic's partitions,
//!   replication and configs from the configuration's names and `[topics]`
//!   table, compared with what a broker reports, and as Strimzi resources
//!   (`processors topics`; the Kafka side is `kafka::topics`).
//! - [`ops`]: the offline commands, `replay` (a time range of the raw topic
//!   read again into sinks, without touching the live group) and `dlq`
//!   (list and re-drive dead letters); they read Kafka themselves.
//!
//! The order per record: decode, [`pipeline::reorder::Reorderer::push`],
//! [`pipeline::dedupe::DedupeStore::seen`] (drop if seen), route to the
//! sinks, [`pipeline::dedupe::DedupeStore::record`] once they accepted,
//! [`pipeline::offsets::PartitionOffsets::done`], store
//! [`pipeline::offsets::PartitionOffsets::committable`].
//!
//! Dependencies point one way: `app` -> `kafka`, `ops` -> `pipeline` ->
//! `state`, `sinks` -> `event`; `config` composes the components' configs
//! and no component imports it but `app` and `ops`.
//!
//! [`Envelope`] is re-exported from `schemas`: it is what the processors read.

pub mod app;
pub mod config;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod minimise;
pub mod ops;
pub mod pipeline;
pub mod sinks;
pub mod state;
pub mod topics;

pub use schemas::Envelope;
