//! End-to-end test harness.
//!
//! Starts real processes on free loopback ports and stops them when dropped
//! (and, through `PR_SET_PDEATHSIG`, when the test process dies). Split by
//! what each module starts; everything is re-exported here, so a test says
//! `e2e::Broker`, `e2e::send_purple`.
//!
//! - [`process`]: what every started process needs: [`binary`] (this
//!   workspace's, from the test's build folder), [`free_port`], dying with
//!   the test process, signals, and [`rss_kib`] (a process's resident
//!   memory).
//! - [`broker`]: [`Broker`], a tansu broker with sqlite storage in a
//!   temporary folder, which can be killed (`SIGKILL`) and restarted on the
//!   same port and data, advertise a TLS proxy's port and require SASL
//!   (with SCRAM users made by `tansu user create`); [`read_topic`] (every
//!   record of a topic, read back with rdkafka; [`read_topic_with`] with
//!   TLS or SASL settings), [`create_topic_at`] and [`produce`] (records
//!   written as ingest would).
//! - [`stunnel`]: [`Stunnel`], Debian's stunnel serving TLS in front of
//!   the broker (tansu 0.6 has none of its own).
//! - [`services`]: this workspace's binaries: [`Ingest`] (a generated
//!   config, plain or TLS; SIGTERM-able), [`Processor`] (`processors run`) and
//!   [`Venues`] (the live venue view),
//!   [`simulate`] (the real provider simulator, `ingest send --json`, its
//!   report parsed), [`run_processors`] (one-shot commands), [`scrape`]
//!   (`/metrics`), [`metric_sum`] (a metric's samples in a scrape) and
//!   [`json_log_lines`] (a binary's JSON log, line by line).
//! - [`fixtures`]: what the tests send and read back: [`purple_event`],
//!   [`purple_signature`] and [`send_purple`] (signed requests as the
//!   guest-WiFi platform sends them), [`purple_envelope`] (and
//!   [`purple_envelope_received`], its receipt time given),
//!   [`guest_wifi_event`] (any event type, dated as asked: what the live
//!   venue view counts), the configs of the binaries ([`purple_config`],
//!   [`processors_config`], [`processors_alerting_config`]: the alerting
//!   sink whose state changelog the venue view follows) and
//!   [`sink_lines`] (a JSON-lines sink's events).
//! - [`postgres`]: [`Postgres`], a PostgreSQL server from Debian's packages
//!   on a free port in a temporary folder, for the analytics sink.
//! - [`alertmanager`]: [`Alertmanager`], the real `prometheus-alertmanager`
//!   from Debian on a free port, clustering off, storage in a temporary
//!   folder.
//! - [`fake_crm::FakeCrm`]: a scripted CRM that records what it applied,
//!   by idempotency key.
//! - [`fake_chat::FakeChat`]: a Slack-compatible incoming webhook that
//!   records the messages posted and can be scripted to fail (500, 429,
//!   stalls past the client's timeout, outages).
//! - [`browser`]: [`Browser`], a headless Debian `chromium` driven over
//!   the DevTools protocol: open a page, evaluate in it, wait for a
//!   condition, take a screenshot.
//! - [`exposition`]: parses a `/metrics` scrape and judges it against the
//!   naming rules; the metric names in a PromQL expression.
//!
//! Each test makes its own broker and topic so tests run in parallel.

pub mod alertmanager;
pub mod broker;
pub mod browser;
pub mod exposition;
pub mod fake_chat;
pub mod fake_crm;
pub mod fixtures;
pub mod postgres;
pub mod process;
pub mod services;
pub mod sse;
pub mod stunnel;

pub use alertmanager::{Alertmanager, alertmanager_binary};
pub use broker::{
    Broker, Record, create_topic_at, produce, read_topic, read_topic_with, tansu_binary,
};
pub use browser::{Browser, chromium_binary};
pub use fixtures::{
    Outcome, guest_wifi_event, processors_alerting_config, processors_config, purple_config,
    purple_envelope, purple_envelope_received, purple_event, purple_signature, send_purple,
    sink_lines,
};
pub use postgres::{Postgres, postgres_bin_dir};
pub use process::{binary, free_port, rss_kib};
pub use services::{
    Finished, Ingest, Processor, SimulatorReport, Venues, json_log_lines, metric_sum,
    run_processors, scrape, simulate,
};
pub use sse::SseClient;
pub use stunnel::Stunnel;
