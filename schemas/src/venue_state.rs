//! The venue state the processors keep per raw-topic partition: the
//! contract of its records, for every component that reads the
//! processors' state changelog (the venue view).
//!
//! The alerting sink writes one record per changed key per batch, as a
//! keyed record of the state changelog (the processors'
//! `state::changelog` docs: the record envelope, the owner's epoch and
//! fencing). Within that envelope, this module owns the sink's key and
//! value:
//!
//! | key (after the envelope's `K`, sink name and `0x1F`) | value |
//! |---|---|
//! | `D`, venue, `0x1F`, device | a [`VenueState`] with a [`Entry::Device`], or none: the device left |
//! | `W`, venue | a [`VenueState`] with a [`Entry::Clock`] |
//!
//! Venue ids hold no `0x1F` (the processors refuse such events from live
//! state); a device id may hold anything, so it comes last. Values are
//! Avro single-object encoded (`C3 01`, the writer schema's CRC-64-AVRO
//! fingerprint, little-endian, then the datum) with a committed version
//! of `avro/venue_state/vN.avsc`, read like the envelope: any committed
//! version decodes.

use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::{Schema, from_avro_datum, to_avro_datum};

use crate::envelope::{
    DecodeError, EncodeError, fingerprint_of, opt, opt_string, single_object, single_object_bytes,
    string, unwrap_union,
};

/// Every committed version of the venue-state schema, oldest first.
pub const VENUE_STATE_SCHEMA_VERSIONS: &[(&str, &str)] =
    &[("v1", include_str!("../avro/venue_state/v1.avsc"))];

const SEP: u8 = 0x1F;
const DEVICE: u8 = b'D';
const CLOCK: u8 = b'W';

/// One key of a venue's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueState {
    /// The venue id.
    pub venue: String,
    /// What the key holds.
    pub entry: Entry,
}

/// What one key of a venue's state holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A device connected at the venue.
    Device {
        /// The device id.
        device: String,
        /// The zone of its last connect or zone move.
        zone: Option<String>,
        /// When its session started (event time, Unix µs).
        connected_at: i64,
        /// Its newest event (event time, Unix µs).
        last_seen: i64,
    },
    /// The venue's clock: its newest event time (Unix µs).
    Clock {
        /// Unix µs.
        clock: i64,
    },
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A device of a venue.
    Device {
        /// The venue id.
        venue: String,
        /// The device id.
        device: String,
    },
    /// A venue's clock.
    Clock {
        /// The venue id.
        venue: String,
    },
}

impl Key {
    /// The key's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Device { venue, device } => {
                let mut k = Vec::with_capacity(2 + venue.len() + device.len());
                k.push(DEVICE);
                k.extend_from_slice(venue.as_bytes());
                k.push(SEP);
                k.extend_from_slice(device.as_bytes());
                k
            }
            Key::Clock { venue } => {
                let mut k = Vec::with_capacity(1 + venue.len());
                k.push(CLOCK);
                k.extend_from_slice(venue.as_bytes());
                k
            }
        }
    }

    /// The key in `bytes`, or `None` if they are not a venue-state key.
    pub fn decode(bytes: &[u8]) -> Option<Key> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            DEVICE => {
                let at = rest.iter().position(|&b| b == SEP)?;
                Some(Key::Device {
                    venue: std::str::from_utf8(&rest[..at]).ok()?.to_owned(),
                    device: std::str::from_utf8(&rest[at + 1..]).ok()?.to_owned(),
                })
            }
            CLOCK => Some(Key::Clock {
                venue: std::str::from_utf8(rest).ok()?.to_owned(),
            }),
            _ => None,
        }
    }
}

/// Each committed version: (name, parsed schema, fingerprint).
fn versions() -> &'static [(&'static str, Schema, u64)] {
    static VERSIONS: OnceLock<Vec<(&'static str, Schema, u64)>> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        VENUE_STATE_SCHEMA_VERSIONS
            .iter()
            .map(|(name, text)| {
                // Compiled in and checked by this crate's tests.
                #[allow(clippy::expect_used)]
                let schema = Schema::parse_str(text).expect("committed venue-state schema parses");
                #[allow(clippy::expect_used)]
                let fp = fingerprint_of(text).expect("committed venue-state schema parses");
                (*name, schema, fp)
            })
            .collect()
    })
}

/// The fingerprint records are written with (the newest version's).
pub fn current_fingerprint() -> u64 {
    let v = versions();
    v[v.len() - 1].2
}

fn micros(v: Value, field: &'static str) -> Result<i64, DecodeError> {
    match unwrap_union(v) {
        Value::TimestampMicros(n) | Value::Long(n) => Ok(n),
        _ => Err(DecodeError::Field(field)),
    }
}

impl VenueState {
    /// Avro single-object encoding with the newest schema version.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let all = versions();
        let (_, schema, fp) = &all[all.len() - 1];
        let entry = match &self.entry {
            Entry::Device {
                device,
                zone,
                connected_at,
                last_seen,
            } => Value::Union(
                0,
                Box::new(Value::Record(vec![
                    ("device".into(), Value::String(device.clone())),
                    ("zone".into(), opt_string(zone)),
                    ("connected_at".into(), Value::TimestampMicros(*connected_at)),
                    ("last_seen".into(), Value::TimestampMicros(*last_seen)),
                ])),
            ),
            Entry::Clock { clock } => Value::Union(
                1,
                Box::new(Value::Record(vec![(
                    "clock".into(),
                    Value::TimestampMicros(*clock),
                )])),
            ),
        };
        let value = Value::Record(vec![
            ("venue".into(), Value::String(self.venue.clone())),
            ("entry".into(), entry),
        ]);
        let datum = to_avro_datum(schema, value)?;
        Ok(single_object_bytes(*fp, &datum))
    }

    /// Decodes a value written with any committed version.
    pub fn decode(bytes: &[u8]) -> Result<VenueState, DecodeError> {
        let (fingerprint, datum) = single_object(bytes)?;
        let all = versions();
        let (_, writer, _) = all
            .iter()
            .find(|(_, _, f)| *f == fingerprint)
            .ok_or(DecodeError::UnknownSchema(fingerprint))?;
        let (_, current, _) = &all[all.len() - 1];
        let reader = (!std::ptr::eq(writer, current)).then_some(current);
        let mut rest = datum;
        crate::bounds::check(writer, rest)?;
        let value = from_avro_datum(writer, &mut rest, reader)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        let Value::Record(fields) = value else {
            return Err(DecodeError::Field("<root>"));
        };
        let mut venue = None;
        let mut entry = None;
        for (name, v) in fields {
            match name.as_str() {
                "venue" => venue = Some(string(v, "venue")?),
                "entry" => entry = Some(Self::entry(v)?),
                _ => {}
            }
        }
        Ok(VenueState {
            venue: venue.ok_or(DecodeError::Field("venue"))?,
            entry: entry.ok_or(DecodeError::Field("entry"))?,
        })
    }

    fn entry(v: Value) -> Result<Entry, DecodeError> {
        let (branch, inner) = match v {
            Value::Union(b, inner) => (b, *inner),
            _ => return Err(DecodeError::Field("entry")),
        };
        let Value::Record(fields) = inner else {
            return Err(DecodeError::Field("entry"));
        };
        if branch == 1 {
            let clock = fields
                .into_iter()
                .find(|(n, _)| n == "clock")
                .ok_or(DecodeError::Field("clock"))?;
            return Ok(Entry::Clock {
                clock: micros(clock.1, "clock")?,
            });
        }
        let (mut device, mut zone, mut connected_at, mut last_seen) = (None, None, None, None);
        for (name, v) in fields {
            match name.as_str() {
                "device" => device = Some(string(v, "device")?),
                "zone" => zone = opt(v, "zone")?,
                "connected_at" => connected_at = Some(micros(v, "connected_at")?),
                "last_seen" => last_seen = Some(micros(v, "last_seen")?),
                _ => {}
            }
        }
        Ok(Entry::Device {
            device: device.ok_or(DecodeError::Field("device"))?,
            zone,
            connected_at: connected_at.ok_or(DecodeError::Field("connected_at"))?,
            last_seen: last_seen.ok_or(DecodeError::Field("last_seen"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_state_and_key_reads_back_as_written(
            venue in "[a-z0-9-]{0,12}",
            device in any::<String>(),
            zone in proptest::option::of(any::<String>()),
            a in any::<i64>(),
            b in any::<i64>(),
            clock in any::<bool>(),
        ) {
            let entry = if clock {
                Entry::Clock { clock: a }
            } else {
                Entry::Device { device: device.clone(), zone, connected_at: a, last_seen: b }
            };
            let s = VenueState { venue: venue.clone(), entry };
            prop_assert_eq!(VenueState::decode(&s.encode().unwrap()).unwrap(), s);
            for k in [Key::Device { venue: venue.clone(), device }, Key::Clock { venue }] {
                prop_assert_eq!(Key::decode(&k.encode()), Some(k));
            }
        }
    }

    #[test]
    fn a_value_of_another_schema_or_truncated_is_an_error_naming_it() {
        let s = VenueState {
            venue: "v".into(),
            entry: Entry::Clock { clock: 5 },
        };
        let mut bytes = s.encode().unwrap();
        assert!(matches!(
            VenueState::decode(&bytes[..4]),
            Err(DecodeError::TooShort(4))
        ));
        bytes[3] ^= 0xFF;
        assert!(matches!(
            VenueState::decode(&bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
        assert_eq!(Key::decode(b"Xvenue"), None);
        assert_eq!(Key::decode(b"Dno-separator"), None);
    }
}
