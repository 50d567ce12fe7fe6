//! The contract between ingest and the processors.
//!
//! - `avro/envelope/vN.avsc`: every committed version of the raw envelope
//!   schema. The highest is current; the older ones stay so records written
//!   by an older ingest still decode, and so a test can prove each change
//!   backward compatible.
//! - [`envelope`]: the Rust [`Envelope`] type and its Avro single-object
//!   encoding (`C3 01`, 8-byte little-endian CRC-64-AVRO fingerprint, Avro
//!   binary), readable by any Avro library that has the `.avsc` file.
//! - [`canonical`]: the specification's Parsing Canonical Form and
//!   CRC-64-AVRO fingerprint of an `.avsc` text, what every other Avro
//!   library puts in a single-object record's header.
//! - [`venue_state`]: the venue state the processors keep per partition
//!   in their state changelog (`avro/venue_state/vN.avsc`), the contract
//!   of the venue view.
//! - [`changelog`]: the records of the processors' state changelog (kinds,
//!   keys, the writer's epoch), the envelope around the venue state.
//! - [`bounds`]: refuses Avro data whose declared lengths or counts exceed
//!   the record, before apache-avro reserves memory for them.
//!
//! This crate depends on no other crate of ours.

pub mod bounds;
pub mod canonical;
pub mod changelog;
pub mod envelope;
pub mod venue_state;

pub use envelope::{DecodeError, EncodeError, Envelope, EnvelopeRef, Header, Verification};

/// Every committed version of the normalized guest-WiFi event schema, oldest
/// first (`avro/guest_wifi/vN.avsc`): what the processors hand to sinks and
/// replay tools that want typed guest-WiFi events.
///
/// v2 reads every v1 record. Its type enum has a default symbol (`other`,
/// Avro 1.9+ enum defaults) and carries the type as sent in `type_name`, so
/// a v2 reader reads a type added by a later version instead of failing;
/// `sequence` is optional (a source without one). A v1 reader reads a v2
/// record only if its type is one of v1's five and it has a sequence:
/// readers move to v2 before writers do.
pub const GUEST_WIFI_SCHEMA_VERSIONS: &[(&str, &str)] = &[
    ("v1", include_str!("../avro/guest_wifi/v1.avsc")),
    ("v2", include_str!("../avro/guest_wifi/v2.avsc")),
];

/// Every committed version of the envelope schema, oldest first. The last
/// one is the schema ingest writes with and the processors read into.
pub const ENVELOPE_SCHEMA_VERSIONS: &[(&str, &str)] =
    &[("v1", include_str!("../avro/envelope/v1.avsc"))];
