//! The end-to-end tests: one test binary (one link of rdkafka, SQLite and
//! tokio-postgres), one module per area, each starting its own broker,
//! database and binaries on free ports so the tests run in parallel. The
//! harness they share is the `e2e` library (`tests/src/`). One module
//! starts nothing: `layout` checks the crates' source for import circles
//! and rdkafka outside the processors' Kafka edge.
//!
//! Run one area with a filter on the module: `cargo nextest run -p e2e
//! --test e2e faults::`.

mod alerting;
mod analytics;
mod crm;
mod deploy;
mod faults;
mod harness;
mod hostile_input;
mod http2;
mod ingest;
mod kafka_tls;
mod layout;
mod local_stack;
mod membership;
mod metrics;
mod monitoring;
mod payloads;
mod polling;
mod processors;
mod producer_patch;
mod replay;
mod retention;
mod runtime;
mod scale;
mod secrets;
mod slow_clients;
mod sources;
mod state;
mod tls;
mod topics;
mod venue_day;
mod venues;
