//! The raw envelope: Rust type and Avro single-object encoding.
//!
//! Encoding writes with the current schema. Decoding reads the writer's
//! fingerprint from the record, finds that version among the committed ones
//! and resolves it into the current schema, so a processor reads records
//! written by any earlier ingest.

use std::sync::OnceLock;

#[cfg(test)]
use apache_avro::to_avro_datum;
use apache_avro::types::Value;
use apache_avro::{Schema, from_avro_datum};

use crate::ENVELOPE_SCHEMA_VERSIONS;

mod direct;

/// The two marker bytes that open every Avro single-object encoded record.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// One webhook request as ingest received and verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Provider's event id, else one ingest derived from the source and body
    /// (`body-sha256-...`); with `source`, the dedupe key.
    pub event_id: String,
    /// Configured source name (the `{source}` of the URL).
    pub source: String,
    /// When ingest finished reading the body, microseconds since the Unix epoch.
    pub received_at_micros: i64,
    /// The body exactly as received: the bytes the signature covers.
    pub body: Vec<u8>,
    /// Allow-listed request headers, lower-case names, in received order.
    pub headers: Vec<Header>,
    /// The request's Content-Type, if any.
    pub content_type: Option<String>,
    /// Client IP address as ingest saw it.
    pub client_addr: Option<String>,
    /// Which scheme verified the request and which rotation secret matched.
    pub verification: Verification,
    /// Per-source ordering key (the venue id for the guest-WiFi platform).
    pub ordering_key: Option<String>,
    /// Per-ordering-key sequence number, when the source defines one.
    pub sequence: Option<i64>,
    /// HTTP request id, carried so log lines can be matched across services.
    pub request_id: String,
}

/// One allow-listed request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Lower-case header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// How a request was proven genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Signature scheme name, e.g. `hmac`.
    pub scheme: String,
    /// Configured id (a label, never the value) of the matching secret.
    pub secret_id: String,
}

/// Why an envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The value did not fit the schema (a bug in this crate, not bad input).
    #[error("envelope does not fit the schema: {0}")]
    Avro(#[from] apache_avro::Error),
}

/// Why bytes could not be decoded as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the single-object header.
    #[error("record is {0} bytes, shorter than the 10-byte single-object header")]
    TooShort(usize),
    /// The first two bytes are not `C3 01`.
    #[error("record does not start with the Avro single-object marker C3 01")]
    BadMagic,
    /// The fingerprint names no committed envelope schema version.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownSchema(u64),
    /// The Avro body did not decode with the writer schema.
    #[error("invalid Avro datum: {0}")]
    Avro(#[from] apache_avro::Error),
    /// A declared length or item count does not fit in the record (checked
    /// before decoding, so a crafted count cannot make the decoder reserve
    /// gigabytes).
    #[error("invalid Avro datum: {0}")]
    Bounds(#[from] crate::bounds::BoundsError),
    /// The datum decoded but a field had an unexpected shape.
    #[error("field {0} has an unexpected type")]
    Field(&'static str),
    /// Bytes left over after the datum.
    #[error("{0} trailing bytes after the Avro datum")]
    Trailing(usize),
    /// A string field's bytes are not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    Utf8(&'static str),
}

/// Fingerprints that builds before the fix wrote for a version, still
/// accepted when reading. apache-avro 0.21 fingerprinted its own canonical
/// form, which keeps `received_at` as `{"type":"long"}` where the
/// specification writes `"long"`; ingest wrote that fingerprint until the
/// crate computed the specification's form itself. Drop an entry once no
/// record older than that change is within the raw topic's retention.
pub const LEGACY_FINGERPRINTS: &[(&str, u64)] = &[("v1", 0x53a2_6c09_147b_2ab5)];

/// The version the direct encoder writes and the direct decoder reads.
const DIRECT_VERSION: &str = "v1";

/// A parsed schema version with its fingerprint.
pub struct SchemaVersion {
    /// Version name, e.g. `v1`.
    pub name: &'static str,
    /// The parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO fingerprint of the specification's Parsing Canonical
    /// Form, as a number; written little-endian.
    pub fingerprint: u64,
    /// Other fingerprints records of this version carry: those older
    /// builds wrote ([`LEGACY_FINGERPRINTS`]). Read, never written.
    pub aliases: Vec<u64>,
}

impl SchemaVersion {
    /// Whether a record carrying `fingerprint` was written with this version.
    pub fn is_written_as(&self, fingerprint: u64) -> bool {
        self.fingerprint == fingerprint || self.aliases.contains(&fingerprint)
    }
}

/// All committed envelope schema versions, parsed once, oldest first.
pub fn schema_versions() -> &'static [SchemaVersion] {
    static VERSIONS: OnceLock<Vec<SchemaVersion>> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        ENVELOPE_SCHEMA_VERSIONS
            .iter()
            .map(|(name, text)| {
                // The .avsc files are compiled in and checked by this crate's
                // tests: failing to parse one is a build defect.
                #[allow(clippy::expect_used)]
                let schema = Schema::parse_str(text).expect("committed envelope schema parses");
                #[allow(clippy::expect_used)]
                let fingerprint = fingerprint_of(text).expect("committed envelope schema parses");
                let aliases = LEGACY_FINGERPRINTS
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, fp)| *fp)
                    .collect();
                SchemaVersion {
                    name,
                    schema,
                    fingerprint,
                    aliases,
                }
            })
            .collect()
    })
}

/// The schema ingest writes with.
pub fn current_schema() -> &'static SchemaVersion {
    let versions = schema_versions();
    &versions[versions.len() - 1]
}

/// CRC-64-AVRO fingerprint of an `.avsc` text's Parsing Canonical Form, per
/// the specification (see [`crate::canonical`]; not apache-avro's, which
/// differs for logical types).
pub fn fingerprint_of(avsc: &str) -> Result<u64, crate::canonical::CanonicalError> {
    crate::canonical::fingerprint_of(avsc)
}

pub(crate) fn opt_string(v: &Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

/// An envelope's fields, borrowed: what ingest encodes each request from
/// without copying the body or any string into an [`Envelope`] first.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    /// See [`Envelope::event_id`].
    pub event_id: &'a str,
    /// See [`Envelope::source`].
    pub source: &'a str,
    /// See [`Envelope::received_at_micros`].
    pub received_at_micros: i64,
    /// See [`Envelope::body`].
    pub body: &'a [u8],
    /// See [`Envelope::headers`]: `(name, value)` pairs.
    pub headers: &'a [(&'a str, &'a str)],
    /// See [`Envelope::content_type`].
    pub content_type: Option<&'a str>,
    /// See [`Envelope::client_addr`].
    pub client_addr: Option<&'a str>,
    /// See [`Verification::scheme`].
    pub scheme: &'a str,
    /// See [`Verification::secret_id`].
    pub secret_id: &'a str,
    /// See [`Envelope::ordering_key`].
    pub ordering_key: Option<&'a str>,
    /// See [`Envelope::sequence`].
    pub sequence: Option<i64>,
    /// See [`Envelope::request_id`].
    pub request_id: &'a str,
}

/// Bytes of `n` as an Avro `long` (zig-zag, then base-128 varint).
fn long_len(n: i64) -> usize {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes_len(b: &[u8]) -> usize {
    long_len(b.len() as i64) + b.len()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn opt_len(v: Option<&str>) -> usize {
    1 + v.map_or(0, |s| bytes_len(s.as_bytes()))
}

/// A `["null", "string"]` union: branch 0 (null) or 1 then the string.
fn put_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => put_long(out, 0),
        Some(s) => {
            put_long(out, 1);
            put_bytes(out, s.as_bytes());
        }
    }
}

impl EnvelopeRef<'_> {
    /// Encodes with the current schema (v1) in Avro single-object encoding,
    /// writing the datum directly: one allocation of the exact size, no
    /// generic `Value` tree, no schema resolution per record. Byte-identical
    /// to apache-avro's encoding of the same envelope (a property test in
    /// this module checks it on arbitrary envelopes), so it must change
    /// with the schema: the test fails when `v1.avsc` is no longer the
    /// current version.
    pub fn encode(&self) -> Vec<u8> {
        let current = current_schema();
        let headers_len = if self.headers.is_empty() {
            1
        } else {
            long_len(self.headers.len() as i64)
                + self
                    .headers
                    .iter()
                    .map(|(n, v)| bytes_len(n.as_bytes()) + bytes_len(v.as_bytes()))
                    .sum::<usize>()
                + 1
        };
        let len = HEADER_LEN
            + bytes_len(self.event_id.as_bytes())
            + bytes_len(self.source.as_bytes())
            + long_len(self.received_at_micros)
            + bytes_len(self.body)
            + headers_len
            + opt_len(self.content_type)
            + opt_len(self.client_addr)
            + bytes_len(self.scheme.as_bytes())
            + bytes_len(self.secret_id.as_bytes())
            + opt_len(self.ordering_key)
            + 1
            + self.sequence.map_or(0, long_len)
            + bytes_len(self.request_id.as_bytes());
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&current.fingerprint.to_le_bytes());
        put_bytes(&mut out, self.event_id.as_bytes());
        put_bytes(&mut out, self.source.as_bytes());
        put_long(&mut out, self.received_at_micros);
        put_bytes(&mut out, self.body);
        // An array is blocks of (count, items), ended by a count of 0; one
        // block holds every header.
        if !self.headers.is_empty() {
            put_long(&mut out, self.headers.len() as i64);
            for (name, value) in self.headers {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, value.as_bytes());
            }
        }
        put_long(&mut out, 0);
        put_opt(&mut out, self.content_type);
        put_opt(&mut out, self.client_addr);
        put_bytes(&mut out, self.scheme.as_bytes());
        put_bytes(&mut out, self.secret_id.as_bytes());
        put_opt(&mut out, self.ordering_key);
        match self.sequence {
            None => put_long(&mut out, 0),
            Some(n) => {
                put_long(&mut out, 1);
                put_long(&mut out, n);
            }
        }
        put_bytes(&mut out, self.request_id.as_bytes());
        debug_assert_eq!(out.len(), len);
        out
    }
}

impl Envelope {
    /// Encodes with the current schema in Avro single-object encoding (see
    /// [`EnvelopeRef::encode`]).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        Ok(self.borrowed(&headers).encode())
    }

    /// This envelope's fields, borrowed, with `headers` its headers.
    pub fn borrowed<'a>(&'a self, headers: &'a [(&'a str, &'a str)]) -> EnvelopeRef<'a> {
        EnvelopeRef {
            event_id: &self.event_id,
            source: &self.source,
            received_at_micros: self.received_at_micros,
            body: &self.body,
            headers,
            content_type: self.content_type.as_deref(),
            client_addr: self.client_addr.as_deref(),
            scheme: &self.verification.scheme,
            secret_id: &self.verification.secret_id,
            ordering_key: self.ordering_key.as_deref(),
            sequence: self.sequence,
            request_id: &self.request_id,
        }
    }

    /// Encodes through apache-avro's generic `Value` (the encoder before
    /// [`EnvelopeRef::encode`]): what the direct encoder is checked against.
    #[cfg(test)]
    fn encode_with_apache_avro(&self) -> Result<Vec<u8>, EncodeError> {
        let current = current_schema();
        let headers = self
            .headers
            .iter()
            .map(|h| {
                Value::Record(vec![
                    ("name".into(), Value::String(h.name.clone())),
                    ("value".into(), Value::String(h.value.clone())),
                ])
            })
            .collect();
        let value = Value::Record(vec![
            ("event_id".into(), Value::String(self.event_id.clone())),
            ("source".into(), Value::String(self.source.clone())),
            (
                "received_at".into(),
                Value::TimestampMicros(self.received_at_micros),
            ),
            ("body".into(), Value::Bytes(self.body.clone())),
            ("headers".into(), Value::Array(headers)),
            ("content_type".into(), opt_string(&self.content_type)),
            ("client_addr".into(), opt_string(&self.client_addr)),
            (
                "verification".into(),
                Value::Record(vec![
                    (
                        "scheme".into(),
                        Value::String(self.verification.scheme.clone()),
                    ),
                    (
                        "secret_id".into(),
                        Value::String(self.verification.secret_id.clone()),
                    ),
                ]),
            ),
            ("ordering_key".into(), opt_string(&self.ordering_key)),
            (
                "sequence".into(),
                match self.sequence {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(n) => Value::Union(1, Box::new(Value::Long(n))),
                },
            ),
            ("request_id".into(), Value::String(self.request_id.clone())),
        ]);
        let datum = to_avro_datum(&current.schema, value)?;
        Ok(single_object_bytes(current.fingerprint, &datum))
    }

    /// Decodes a single-object encoded record written with any committed
    /// schema version. Records of the current version, v1, are read
    /// directly ([`direct`]); others through apache-avro's schema
    /// resolution.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let (writer, datum) = writer_and_datum(bytes)?;
        if writer.name == DIRECT_VERSION && current_schema().name == DIRECT_VERSION {
            return direct::decode_v1(datum);
        }
        Self::decode_resolved(writer, datum)
    }

    /// Decodes with apache-avro's generic path: what [`Envelope::decode`]
    /// does for versions the direct reader does not know, and what it is
    /// compared with (tests, the `envelope_decode` fuzz target).
    #[doc(hidden)]
    pub fn decode_with_apache_avro(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let (writer, datum) = writer_and_datum(bytes)?;
        Self::decode_resolved(writer, datum)
    }

    fn decode_resolved(writer: &SchemaVersion, datum: &[u8]) -> Result<Envelope, DecodeError> {
        let current = current_schema();
        let reader_schema = if writer.name == current.name {
            None
        } else {
            Some(&current.schema)
        };
        let mut rest = datum;
        // Before the library reserves memory for what the data declares.
        crate::bounds::check(&writer.schema, rest)?;
        let value = from_avro_datum(&writer.schema, &mut rest, reader_schema)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Envelope::from_value(value)
    }

    fn from_value(value: Value) -> Result<Envelope, DecodeError> {
        let Value::Record(fields) = value else {
            return Err(DecodeError::Field("<root>"));
        };
        let mut env = Envelope {
            event_id: String::new(),
            source: String::new(),
            received_at_micros: 0,
            body: Vec::new(),
            headers: Vec::new(),
            content_type: None,
            client_addr: None,
            verification: Verification {
                scheme: String::new(),
                secret_id: String::new(),
            },
            ordering_key: None,
            sequence: None,
            request_id: String::new(),
        };
        for (name, v) in fields {
            match name.as_str() {
                "event_id" => env.event_id = string(v, "event_id")?,
                "source" => env.source = string(v, "source")?,
                "received_at" => {
                    env.received_at_micros = match v {
                        Value::TimestampMicros(n) | Value::Long(n) => n,
                        _ => return Err(DecodeError::Field("received_at")),
                    }
                }
                "body" => {
                    env.body = match v {
                        Value::Bytes(b) => b,
                        _ => return Err(DecodeError::Field("body")),
                    }
                }
                "headers" => {
                    let Value::Array(items) = v else {
                        return Err(DecodeError::Field("headers"));
                    };
                    for item in items {
                        let Value::Record(hf) = item else {
                            return Err(DecodeError::Field("headers"));
                        };
                        let mut h = Header {
                            name: String::new(),
                            value: String::new(),
                        };
                        for (n, hv) in hf {
                            match n.as_str() {
                                "name" => h.name = string(hv, "headers.name")?,
                                "value" => h.value = string(hv, "headers.value")?,
                                _ => {}
                            }
                        }
                        env.headers.push(h);
                    }
                }
                "content_type" => env.content_type = opt(v, "content_type")?,
                "client_addr" => env.client_addr = opt(v, "client_addr")?,
                "verification" => {
                    let Value::Record(vf) = v else {
                        return Err(DecodeError::Field("verification"));
                    };
                    for (n, vv) in vf {
                        match n.as_str() {
                            "scheme" => {
                                env.verification.scheme = string(vv, "verification.scheme")?
                            }
                            "secret_id" => {
                                env.verification.secret_id = string(vv, "verification.secret_id")?
                            }
                            _ => {}
                        }
                    }
                }
                "ordering_key" => env.ordering_key = opt(v, "ordering_key")?,
                "sequence" => {
                    env.sequence = match unwrap_union(v) {
                        Value::Null => None,
                        Value::Long(n) => Some(n),
                        Value::Int(n) => Some(i64::from(n)),
                        _ => return Err(DecodeError::Field("sequence")),
                    }
                }
                "request_id" => env.request_id = string(v, "request_id")?,
                // Fields added by a later schema version that this build does
                // not know yet are ignored.
                _ => {}
            }
        }
        Ok(env)
    }
}

/// The writer's fingerprint and the datum of a single-object encoded
/// record.
pub(crate) fn single_object(bytes: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok((u64::from_le_bytes(fp), &bytes[HEADER_LEN..]))
}

/// The committed version a single-object record was written with, and
/// its datum.
fn writer_and_datum(bytes: &[u8]) -> Result<(&'static SchemaVersion, &[u8]), DecodeError> {
    let (fingerprint, datum) = single_object(bytes)?;
    let writer = schema_versions()
        .iter()
        .find(|v| v.is_written_as(fingerprint))
        .ok_or(DecodeError::UnknownSchema(fingerprint))?;
    Ok((writer, datum))
}

/// `fingerprint` then `datum`: a single-object encoded record.
pub(crate) fn single_object_bytes(fingerprint: u64, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(datum);
    out
}

pub(crate) fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

pub(crate) fn string(v: Value, field: &'static str) -> Result<String, DecodeError> {
    match unwrap_union(v) {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::Field(field)),
    }
}

pub(crate) fn opt(v: Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match unwrap_union(v) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(DecodeError::Field(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Envelope {
        Envelope {
            event_id: "evt_01JD5".into(),
            source: "purple".into(),
            received_at_micros: 1_763_834_591_123_456,
            body: br#"{"id":"evt_01JD5","type":"device_connected"}"#.to_vec(),
            headers: vec![Header {
                name: "user-agent".into(),
                value: "Purple-Webhooks/1.0".into(),
            }],
            content_type: Some("application/json".into()),
            client_addr: Some("203.0.113.7".into()),
            verification: Verification {
                scheme: "hmac".into(),
                secret_id: "2026-11".into(),
            },
            ordering_key: Some("venue-017".into()),
            sequence: Some(1042),
            request_id: "req-1".into(),
        }
    }

    /// An envelope with every optional field empty.
    fn bare_sample() -> Envelope {
        Envelope {
            event_id: "0193a4e2-7c1d-7000-8000-000000000001".into(),
            source: "generic".into(),
            received_at_micros: 0,
            body: Vec::new(),
            headers: Vec::new(),
            content_type: None,
            client_addr: None,
            verification: Verification {
                scheme: "standard".into(),
                secret_id: "current".into(),
            },
            ordering_key: None,
            sequence: None,
            request_id: String::new(),
        }
    }

    /// `fuzz/corpus/envelope_decode` holds real envelopes for the fuzz
    /// target to start from; were they stale, the fuzzer would only explore
    /// the decoder's rejections. `WRITE_FUZZ_SEEDS=1` rewrites them after a
    /// schema change.
    #[test]
    fn the_fuzz_seeds_are_envelopes_the_decoder_accepts() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/envelope_decode/"
        );
        for (name, envelope) in [("seed-full", sample()), ("seed-bare", bare_sample())] {
            let path = format!("{dir}{name}");
            if std::env::var_os("WRITE_FUZZ_SEEDS").is_some() {
                std::fs::write(&path, envelope.encode().unwrap()).unwrap();
            }
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(Envelope::decode(&bytes).unwrap(), envelope, "{name}");
        }
    }

    /// Found by the `envelope_decode` fuzz target: 106 bytes whose header
    /// array declares tens of millions of items. apache-avro reserved 2.7 GB
    /// for them before reading one; the bounds check refuses the record.
    #[test]
    fn a_crafted_item_count_is_refused_before_the_decoder_reserves_memory() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/envelope_decode/regression-oom-array-count"
        );
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len(), 106);
        let err = Envelope::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Bounds(_)), "{err:?}");
    }

    /// Avro lets a writer split an array into blocks and give a block's
    /// size in bytes after a negative count (Java's encoder does, for
    /// skipping): the direct decoder reads such a `headers` array as
    /// apache-avro does.
    #[test]
    fn headers_written_in_sized_blocks_decode_as_apache_avro_reads_them() {
        let env = sample();
        let plain = env.encode().unwrap();
        // `sample()` has one header: count 1 (zig-zag 0x02), its two
        // strings, then the closing 0. Rewrite it as a block of count -1
        // (0x01) with its byte size, then a second block of one more header.
        let item = b"\x14user-agent\x26Purple-Webhooks/1.0";
        let at = plain.windows(item.len()).position(|w| w == item).unwrap() - 1;
        assert_eq!(plain[at], 0x02);
        let second = b"\x02x\x02y";
        let mut bytes = plain[..at].to_vec();
        bytes.push(0x01);
        bytes.push((item.len() as u8) << 1);
        bytes.extend_from_slice(item);
        bytes.push(0x02);
        bytes.extend_from_slice(second);
        bytes.extend_from_slice(&plain[at + 1 + item.len()..]);
        let direct = Envelope::decode(&bytes).unwrap();
        assert_eq!(direct, Envelope::decode_with_apache_avro(&bytes).unwrap());
        let names: Vec<&str> = direct.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["user-agent", "x"]);
        assert_eq!(
            Envelope {
                headers: direct.headers.clone(),
                ..env
            },
            direct
        );
    }

    /// A string field that is not UTF-8 is refused, naming the field.
    #[test]
    fn a_string_that_is_not_utf8_is_refused_naming_its_field() {
        let bytes = Envelope {
            request_id: "req-\u{e9}".into(),
            ..sample()
        }
        .encode()
        .unwrap();
        let mut broken = bytes.clone();
        // The last byte is the second of `é`'s two; a lone 0xC3 is not UTF-8.
        let last = broken.len() - 1;
        broken[last] = b'!';
        let err = Envelope::decode(&broken).unwrap_err();
        assert_eq!(err.to_string(), "field request_id is not valid UTF-8");
        assert!(Envelope::decode_with_apache_avro(&broken).is_err());
        assert!(Envelope::decode(&bytes).is_ok());
    }

    #[test]
    fn round_trips() {
        let env = sample();
        let bytes = env.encode().unwrap();
        assert_eq!(&bytes[..2], &SINGLE_OBJECT_MAGIC);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn decodes_with_only_the_avsc_file() {
        // A consumer in another language has nothing but the .avsc file: read
        // it from disk, check the header as a conforming library does (the
        // fingerprint Java and fastavro compute from this file), and decode
        // the datum with the library's generic reader. (apache-avro 0.21's
        // `GenericSingleObjectReader` checks its own, non-conforming
        // fingerprint instead, so it refuses these records; see README.)
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/envelope/");
        let latest = ENVELOPE_SCHEMA_VERSIONS.last().unwrap().0;
        let text = std::fs::read_to_string(format!("{path}{latest}.avsc")).unwrap();
        let schema = Schema::parse_str(&text).unwrap();
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &0x81e6_67fd_9984_ac96u64.to_le_bytes());
        let value = from_avro_datum(&schema, &mut &bytes[10..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("event_id"), Value::String("evt_01JD5".into()));
        assert_eq!(get("body"), Value::Bytes(sample().body));
        assert_eq!(
            get("received_at"),
            Value::TimestampMicros(1_763_834_591_123_456)
        );
        assert_eq!(
            get("sequence"),
            Value::Union(1, Box::new(Value::Long(1042)))
        );
    }

    /// CRC-64-AVRO written from the Avro specification's reference code, to
    /// check the fingerprint bytes independently of the crate's table.
    fn spec_fingerprint(canonical: &[u8]) -> u64 {
        const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
        let mut fp = EMPTY;
        for b in canonical {
            fp ^= u64::from(*b);
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            }
        }
        fp
    }

    #[test]
    fn fingerprint_matches_the_specification() {
        // The spec's published vector: fingerprint64("int") = 0x7275d51a3f395c8f.
        assert_eq!(spec_fingerprint(br#""int""#), 0x7275_d51a_3f39_5c8f);
        let current = current_schema();
        let text = ENVELOPE_SCHEMA_VERSIONS.last().unwrap().1;
        let canonical = crate::canonical::parsing_canonical_form(text).unwrap();
        assert_eq!(current.fingerprint, spec_fingerprint(canonical.as_bytes()));
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[2..10], &current.fingerprint.to_le_bytes());
    }

    /// What a JVM consumer (`SchemaNormalization.parsingFingerprint64`,
    /// `BinaryMessageDecoder`) and fastavro compute from `v1.avsc`: the
    /// record must carry it, or they refuse it as an unknown schema.
    #[test]
    fn records_carry_the_fingerprint_other_avro_libraries_compute() {
        let bytes = sample().encode().unwrap();
        assert_eq!(
            u64::from_le_bytes(bytes[2..10].try_into().unwrap()),
            0x81e6_67fd_9984_ac96,
            "fingerprint bytes {:02x?}",
            &bytes[2..10]
        );
    }

    /// Records ingest wrote before the fix carry apache-avro's fingerprint
    /// (`b5 2a 7b 14 09 6c a2 53`): they stay in the raw topic for its
    /// retention and must still decode.
    #[test]
    fn a_record_with_the_fingerprint_older_builds_wrote_still_decodes() {
        let mut old = sample().encode().unwrap();
        old[2..10].copy_from_slice(&[0xb5, 0x2a, 0x7b, 0x14, 0x09, 0x6c, 0xa2, 0x53]);
        assert_eq!(Envelope::decode(&old).unwrap(), sample());
        let v1 = &schema_versions()[0];
        assert!(v1.is_written_as(0x53a2_6c09_147b_2ab5));
        assert!(v1.is_written_as(0x81e6_67fd_9984_ac96));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(matches!(
            Envelope::decode(b"C3"),
            Err(DecodeError::TooShort(2))
        ));
        assert!(matches!(
            Envelope::decode(b"{\"not\":\"avro\"}"),
            Err(DecodeError::BadMagic)
        ));
        let mut bytes = sample().encode().unwrap();
        bytes[2] ^= 0xff;
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
        let bytes = sample().encode().unwrap();
        assert!(Envelope::decode(&bytes[..bytes.len() - 3]).is_err());
        let mut long = sample().encode().unwrap();
        long.push(0);
        assert!(matches!(
            Envelope::decode(&long),
            Err(DecodeError::Trailing(1))
        ));
    }

    /// Reading with serde_avro_fast, an Avro implementation that shares no
    /// code with apache-avro: it checks the single-object header against
    /// the fingerprint it computes itself from `v1.avsc`.
    mod independent {
        use super::super::{Envelope, Header, Verification};

        #[derive(serde::Deserialize)]
        struct Env<'a> {
            event_id: String,
            source: String,
            received_at: i64,
            body: &'a [u8],
            headers: Vec<Head>,
            content_type: Option<String>,
            client_addr: Option<String>,
            verification: Verif,
            ordering_key: Option<String>,
            sequence: Option<i64>,
            request_id: String,
        }

        #[derive(serde::Deserialize)]
        struct Head {
            name: String,
            value: String,
        }

        #[derive(serde::Deserialize)]
        struct Verif {
            scheme: String,
            secret_id: String,
        }

        pub fn decode(bytes: &[u8]) -> Envelope {
            let text = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/avro/envelope/v1.avsc"
            ))
            .unwrap();
            let schema: serde_avro_fast::Schema = text.parse().unwrap();
            let e: Env = serde_avro_fast::from_single_object_slice(bytes, &schema).unwrap();
            Envelope {
                event_id: e.event_id,
                source: e.source,
                received_at_micros: e.received_at,
                body: e.body.to_vec(),
                headers: e
                    .headers
                    .into_iter()
                    .map(|h| Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                content_type: e.content_type,
                client_addr: e.client_addr,
                verification: Verification {
                    scheme: e.verification.scheme,
                    secret_id: e.verification.secret_id,
                },
                ordering_key: e.ordering_key,
                sequence: e.sequence,
                request_id: e.request_id,
            }
        }
    }

    proptest! {
        #[test]
        fn any_envelope_round_trips(
            event_id in ".{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            key in proptest::option::of("[a-z0-9-]{1,20}"),
            sequence in proptest::option::of(any::<i64>()),
            at in any::<i64>(),
            headers in proptest::collection::vec(("[a-z-]{1,12}", ".{0,30}"), 0..4),
        ) {
            let env = Envelope {
                event_id,
                body,
                ordering_key: key,
                sequence,
                received_at_micros: at,
                headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
                ..sample()
            };
            let bytes = env.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }

        /// The direct encoder writes exactly apache-avro's bytes, for
        /// arbitrary envelopes (every field, unicode, empty and long
        /// values, negative and extreme longs), and both apache-avro and an
        /// independent implementation decode them.
        #[test]
        fn the_direct_encoder_writes_apache_avros_bytes(
            event_id in ".{0,80}",
            source in "[a-z_]{0,20}",
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            headers in proptest::collection::vec((".{0,12}", ".{0,200}"), 0..70),
            content_type in proptest::option::of(".{0,30}"),
            client_addr in proptest::option::of("[0-9a-f:.]{0,39}"),
            scheme in ".{0,10}",
            secret_id in ".{0,20}",
            key in proptest::option::of(".{0,70}"),
            sequence in proptest::option::of(any::<i64>()),
            at in any::<i64>(),
            request_id in ".{0,130}",
        ) {
            let env = Envelope {
                event_id,
                source,
                received_at_micros: at,
                body,
                headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
                content_type,
                client_addr,
                verification: Verification { scheme, secret_id },
                ordering_key: key,
                sequence,
                request_id,
            };
            let direct = env.encode().unwrap();
            prop_assert_eq!(&direct, &env.encode_with_apache_avro().unwrap());
            prop_assert_eq!(Envelope::decode(&direct).unwrap(), env.clone());
            prop_assert_eq!(independent::decode(&direct), env);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::decode(&bytes);
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The direct decoder and apache-avro's path agree on arbitrary
        /// envelopes, and on the same records damaged: bytes overwritten,
        /// cut short, inserted. The envelopes are small and the bytes
        /// written are often small numbers (a union branch, a length, a
        /// block count), so damage lands on every field's structure.
        #[test]
        fn the_direct_decoder_reads_what_apache_avro_reads(
            event_id in ".{0,8}",
            body in proptest::collection::vec(any::<u8>(), 0..16),
            headers in proptest::collection::vec((".{0,4}", ".{0,8}"), 0..3),
            content_type in proptest::option::of(".{0,6}"),
            key in proptest::option::of(".{0,6}"),
            sequence in proptest::option::of(any::<i64>()),
            at in any::<i64>(),
            damage in proptest::collection::vec(
                (any::<prop::sample::Index>(), prop_oneof![0u8..8, Just(0x80u8), Just(0xffu8), any::<u8>()], 0u8..4),
                0..4,
            ),
        ) {
            let env = Envelope {
                event_id,
                body,
                headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
                content_type,
                ordering_key: key,
                sequence,
                received_at_micros: at,
                ..sample()
            };
            let mut bytes = env.encode().unwrap();
            for (at, byte, how) in damage {
                let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
                match how {
                    0 | 1 => bytes[i] = byte,
                    2 => bytes.truncate(i),
                    _ => bytes.insert(i, byte),
                }
                if bytes.len() <= HEADER_LEN {
                    break;
                }
            }
            let direct = Envelope::decode(&bytes);
            let generic = Envelope::decode_with_apache_avro(&bytes);
            prop_assert_eq!(direct.is_ok(), generic.is_ok(), "direct {:?}, apache-avro {:?}", direct, generic);
            if let (Ok(d), Ok(g)) = (direct, generic) {
                prop_assert_eq!(d, g);
            }
        }

        /// The same on datums of arbitrary bytes behind a v1 header, which
        /// are nearly all refused: both refuse the same ones.
        #[test]
        fn the_direct_decoder_refuses_what_apache_avro_refuses(
            datum in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let bytes = single_object_bytes(current_schema().fingerprint, &datum);
            let direct = Envelope::decode(&bytes);
            let generic = Envelope::decode_with_apache_avro(&bytes);
            prop_assert_eq!(direct.is_ok(), generic.is_ok(), "direct {:?}, apache-avro {:?}", direct, generic);
            if let (Ok(d), Ok(g)) = (direct, generic) {
                prop_assert_eq!(d, g);
            }
        }
    }
}
