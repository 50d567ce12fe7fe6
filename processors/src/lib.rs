//! Processors: consumer runtime, per-source parsers, reorder, dedupe, router
//! and sinks. Built in its own issue; for now this crate only names the
//! envelope contract it will read, so the workspace layout is complete.

pub use schemas::Envelope;
