//! The contract between ingest and the processors.
//!
//! - `avro/envelope/vN.avsc`: every committed version of the raw envelope
//!   schema. The highest is current; the older ones stay so records written
//!   by an older ingest still decode, and so a test can prove each change
//!   backward compatible.
//! - [`envelope`]: the Rust [`Envelope`] type and its Avro single-object
//!   encoding (`C3 01`, 8-byte little-endian CRC-64-AVRO fingerprint, Avro
//!   binary), readable by any Avro library that has the `.avsc` file.
//!
//! This crate depends on no other crate of ours.

pub mod envelope;

pub use envelope::{DecodeError, EncodeError, Envelope, Header, Verification};

/// Every committed version of the envelope schema, oldest first. The last
/// one is the schema ingest writes with and the processors read into.
pub const ENVELOPE_SCHEMA_VERSIONS: &[(&str, &str)] =
    &[("v1", include_str!("../avro/envelope/v1.avsc"))];
