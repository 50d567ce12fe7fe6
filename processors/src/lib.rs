//! Processors: consumer runtime, per-source parsers, reorder, dedupe, router
//! and sinks (see `DESIGN.md`, "Processing semantics").
//!
//! This crate holds so far the pure, Kafka-independent core; the consumer
//! runtime wires it to rdkafka. No module here reads a clock, spawns a task
//! or touches the network.
//!
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
//!
//! The intended order per record: decode, [`reorder::Reorderer::push`],
//! [`dedupe::DedupeStore::seen`] (drop if seen), route to the sinks,
//! [`dedupe::DedupeStore::record`] once they accepted,
//! [`offsets::PartitionOffsets::done`], commit
//! [`offsets::PartitionOffsets::committable`].
//!
//! [`Envelope`] is re-exported from `schemas`: it is what the processors read.

pub mod dedupe;
pub mod offsets;
pub mod reorder;

pub use schemas::Envelope;
