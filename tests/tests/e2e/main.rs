//! The end-to-end tests: one test binary, one module per area.

mod alerting;
mod analytics;
mod crm;
mod faults;
mod harness;
mod hostile_input;
mod ingest;
mod metrics;
mod monitoring;
mod processors;
mod replay;
mod secrets;
mod slow_clients;
mod sources;
