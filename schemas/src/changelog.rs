//! The records of the processors' state changelog and ledger topic: the
//! processors write and restore them (`processors::state`), the venue view
//! reads the state changelog's sink records. A contract like the envelope:
//! a reader of an older build must keep reading what a newer one writes.
//!
//! Every record's key starts with one byte naming its kind; every value
//! starts with the format version (1) and the writer's epoch (i64 big
//! endian), then the kind's fields:
//!
//! | kind | key after the kind byte | value after version and epoch |
//! |---|---|---|
//! | `C` claim | nothing | the owner's name (UTF-8) |
//! | `P` input position | the epoch (i64 BE) | the raw-topic offset below which every record is reflected (i64 BE), then the owner's ledger serial through which its batches are in this changelog (u64 BE; absent in records of the first writers) |
//! | `L` a batch's ledger entries | the epoch and the owner's batch serial (i64 BE, u64 BE) | when they were applied (unix seconds, u64 BE), their count (u32 BE), then per event its source and its id, each as a length (u32 BE) and UTF-8 bytes |
//! | `S` reorder position | source, `0x1F`, ordering key | the next sequence the key releases (i64 BE) |
//! | `E` one sink's effect | sink, `0x1F`, source, `0x1F`, event id | when it was applied (unix seconds, u64 BE) |
//! | `K` a sink's keyed state | sink, `0x1F`, the sink's key (bytes) | `1` then the sink's value (bytes), or `0` alone: the key is gone |
//!
//! Sink and source names are configuration names, which hold no `0x1F`;
//! an event id may hold anything, so it comes last.
//!
//! Claims, positions, sequences and sinks' keyed state go to the
//! compacted state changelog. Ledger batches and effects are facts about a
//! window of time and go to the ledger topic, where they expire with the
//! window (`cleanup.policy=delete`, the retention of Kafka Streams'
//! windowed stores): one record per batch instead of one per event, so the
//! broker stores a few records per batch and a restore reads a few per
//! batch.
//!
//! A claim's epoch field is unused: the claim's epoch is its own offset in
//! the changelog partition, which the writer learns from the broker's
//! acknowledgement and puts in every record it writes afterwards. Offsets
//! grow, so a later claim always has the higher epoch, and two owners that
//! claim at once (a stale one that has not noticed yet) are told apart by
//! the log itself, with no coordination.
//!
//! The position's key carries its epoch so that compaction keeps one per
//! owner: a stale owner's late position cannot replace the current owner's
//! only copy.
//!
//!
//! # Fencing, for readers
//!
//! A reader that follows the state changelog (the venue view) takes a
//! record whose epoch is at least the latest claim read before it in the
//! partition, and ignores an older one: it was written by an owner that had
//! lost the partition by then. A gone key is a Kafka tombstone whose value
//! bytes (version, epoch, `0`) are in its `state-gone` header
//! ([`GONE_HEADER`], [`is_gone`]).

/// The Kafka header of a tombstone that holds its record's value bytes
/// (version, epoch, `0`), so that a reader can fence it like any record.
pub const GONE_HEADER: &str = "state-gone";

/// A changelog message's value as readers fence it: its payload, or, for a
/// tombstone (no payload), the bytes of its [`GONE_HEADER`].
pub fn message_value<'a>(payload: Option<&'a [u8]>, gone_header: Option<&'a [u8]>) -> &'a [u8] {
    match (payload, gone_header) {
        (None | Some([]), Some(bytes)) => bytes,
        (payload, _) => payload.unwrap_or_default(),
    }
}

/// The format version every value starts with.
const VERSION: u8 = 1;
/// Separates the source from the event id or ordering key in a key.
const SEP: u8 = 0x1F;

const CLAIM: u8 = b'C';
const POSITION: u8 = b'P';
const LEDGER: u8 = b'L';
const SEQUENCE: u8 = b'S';
const EFFECT: u8 = b'E';
const KEYED: u8 = b'K';

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An instance takes the partition over; its epoch is this record's
    /// offset.
    Claim {
        /// Who claimed (an instance name, for the logs).
        owner: String,
    },
    /// Every raw-topic record below `offset` is reflected in the state.
    Position {
        /// The raw-topic offset to read from next.
        offset: i64,
        /// The writer's ledger serial through which its batches' state
        /// records are written: its ledger records up to it are confirmed
        /// (see `processors::state::changelog::Restore`). `None` in records written before it existed
        /// (every ledger record of that epoch is then taken as confirmed).
        ledger_serial: Option<u64>,
    },
    /// A batch's events were applied (every routed sink accepted them).
    Applied {
        /// The owner's count of its ledger records, so that each has a key
        /// of its own.
        serial: u64,
        /// When (unix seconds): the ledger forgets them a window later.
        at: u64,
        /// (source, event id) of each.
        events: Vec<(String, String)>,
    },
    /// One sink applied an event (written as it happens, before the
    /// batch's `Applied`): the event is not offered to that sink again.
    Effect {
        /// The sink's name.
        sink: String,
        /// The event's source.
        source: String,
        /// The event's id.
        event_id: String,
        /// When (unix seconds).
        at: u64,
    },
    /// A sink's state under one of its keys, per partition (see
    /// `processors::sinks::PartitionSink`).
    Keyed(Keyed),
    /// A reorder key's next sequence.
    Sequence {
        /// The event's source.
        source: String,
        /// The ordering key within it.
        key: String,
        /// The next sequence it releases in order.
        next: i64,
    },
}

/// One key of a sink's partition state: its value, or `None` once the
/// key is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The sink's name.
    pub sink: String,
    /// The sink's key.
    pub key: Vec<u8>,
    /// The sink's value; `None`: the key is gone.
    pub value: Option<Vec<u8>>,
}

/// A record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value is shorter than its kind's fields.
    #[error("a {0} record is truncated")]
    Truncated(&'static str),
    /// A format this version does not know (a newer writer).
    #[error("format version {0} is unknown (this reader knows 1)")]
    Version(u8),
    /// The key's first byte names no kind.
    #[error("unknown record kind {0:#04x}")]
    Kind(u8),
    /// A name is not UTF-8 or lacks its separator.
    #[error("a {0} record's key is malformed")]
    Key(&'static str),
}

impl Change {
    /// Key and value of this change, written by the owner of `epoch`.
    pub fn encode(&self, epoch: i64) -> (Vec<u8>, Vec<u8>) {
        let mut value = Vec::with_capacity(32);
        value.push(VERSION);
        value.extend_from_slice(&epoch.to_be_bytes());
        let key = match self {
            Change::Claim { owner } => {
                value.extend_from_slice(owner.as_bytes());
                vec![CLAIM]
            }
            Change::Position {
                offset,
                ledger_serial,
            } => {
                value.extend_from_slice(&offset.to_be_bytes());
                if let Some(serial) = ledger_serial {
                    value.extend_from_slice(&serial.to_be_bytes());
                }
                let mut k = vec![POSITION];
                k.extend_from_slice(&epoch.to_be_bytes());
                k
            }
            Change::Applied { serial, at, events } => {
                value.extend_from_slice(&at.to_be_bytes());
                value.extend_from_slice(&(events.len() as u32).to_be_bytes());
                for (source, event_id) in events {
                    for part in [source, event_id] {
                        value.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        value.extend_from_slice(part.as_bytes());
                    }
                }
                let mut k = vec![LEDGER];
                k.extend_from_slice(&epoch.to_be_bytes());
                k.extend_from_slice(&serial.to_be_bytes());
                k
            }
            Change::Sequence { source, key, next } => {
                value.extend_from_slice(&next.to_be_bytes());
                pair_key(SEQUENCE, source, key)
            }
            Change::Effect {
                sink,
                source,
                event_id,
                at,
            } => {
                value.extend_from_slice(&at.to_be_bytes());
                let mut k = pair_key(EFFECT, sink, source);
                k.push(SEP);
                k.extend_from_slice(event_id.as_bytes());
                k
            }
            Change::Keyed(Keyed {
                sink,
                key,
                value: v,
            }) => {
                match v {
                    Some(bytes) => {
                        value.push(1);
                        value.extend_from_slice(bytes);
                    }
                    None => value.push(0),
                }
                let mut k = Vec::with_capacity(2 + sink.len() + key.len());
                k.push(KEYED);
                k.extend_from_slice(sink.as_bytes());
                k.push(SEP);
                k.extend_from_slice(key);
                k
            }
        };
        (key, value)
    }

    /// The change in a record, with the epoch of its writer.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<(i64, Change), DecodeError> {
        let (&kind, rest) = key.split_first().ok_or(DecodeError::Kind(0))?;
        let name = match kind {
            CLAIM => "claim",
            POSITION => "position",
            LEDGER => "ledger",
            SEQUENCE => "sequence",
            EFFECT => "effect",
            KEYED => "keyed",
            other => return Err(DecodeError::Kind(other)),
        };
        let (&version, value) = value.split_first().ok_or(DecodeError::Truncated(name))?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let epoch = be_i64(value, name)?;
        let body = &value[8..];
        let change = match kind {
            CLAIM => Change::Claim {
                owner: String::from_utf8_lossy(body).into_owned(),
            },
            POSITION => Change::Position {
                offset: be_i64(body, name)?,
                ledger_serial: match body.get(8..) {
                    Some([]) | None => None,
                    Some(rest) => Some(be_i64(rest, name)? as u64),
                },
            },
            LEDGER => {
                let serial = be_i64(rest.get(8..).unwrap_or_default(), name)? as u64;
                let at = be_i64(body, name)? as u64;
                let mut cursor = body.get(8..).unwrap_or_default();
                let count = take_u32(&mut cursor, name)? as usize;
                // Each entry holds at least two lengths: a count the record
                // cannot hold is refused before anything is reserved.
                if count > cursor.len() / 8 {
                    return Err(DecodeError::Truncated(name));
                }
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    let source = take_str(&mut cursor, name)?;
                    let event_id = take_str(&mut cursor, name)?;
                    events.push((source, event_id));
                }
                Change::Applied { serial, at, events }
            }
            EFFECT => {
                let (sink, rest) = split_pair(rest, name)?;
                let (source, event_id) = split_pair(rest.as_bytes(), name)?;
                Change::Effect {
                    sink,
                    source,
                    event_id,
                    at: be_i64(body, name)? as u64,
                }
            }
            KEYED => {
                let at = rest
                    .iter()
                    .position(|&b| b == SEP)
                    .ok_or(DecodeError::Key(name))?;
                let sink = std::str::from_utf8(&rest[..at]).map_err(|_| DecodeError::Key(name))?;
                let value = match body.split_first() {
                    Some((1, bytes)) => Some(bytes.to_vec()),
                    Some((0, [])) => None,
                    _ => return Err(DecodeError::Truncated(name)),
                };
                Change::Keyed(Keyed {
                    sink: sink.to_owned(),
                    key: rest[at + 1..].to_vec(),
                    value,
                })
            }
            _ => {
                let (source, key) = split_pair(rest, name)?;
                Change::Sequence {
                    source,
                    key,
                    next: be_i64(body, name)?,
                }
            }
        };
        Ok((epoch, change))
    }
}

fn take_u32(cursor: &mut &[u8], name: &'static str) -> Result<u32, DecodeError> {
    let (head, rest) = cursor
        .split_first_chunk::<4>()
        .ok_or(DecodeError::Truncated(name))?;
    *cursor = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(cursor: &mut &[u8], name: &'static str) -> Result<String, DecodeError> {
    let len = take_u32(cursor, name)? as usize;
    if len > cursor.len() {
        return Err(DecodeError::Truncated(name));
    }
    let (bytes, rest) = cursor.split_at(len);
    *cursor = rest;
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Key(name))?;
    Ok(s.to_owned())
}

fn pair_key(kind: u8, a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + a.len() + b.len());
    k.push(kind);
    k.extend_from_slice(a.as_bytes());
    k.push(SEP);
    k.extend_from_slice(b.as_bytes());
    k
}

fn split_pair(rest: &[u8], name: &'static str) -> Result<(String, String), DecodeError> {
    let at = rest
        .iter()
        .position(|&b| b == SEP)
        .ok_or(DecodeError::Key(name))?;
    let a = std::str::from_utf8(&rest[..at]).map_err(|_| DecodeError::Key(name))?;
    let b = std::str::from_utf8(&rest[at + 1..]).map_err(|_| DecodeError::Key(name))?;
    Ok((a.to_owned(), b.to_owned()))
}

fn be_i64(b: &[u8], name: &'static str) -> Result<i64, DecodeError> {
    let bytes: [u8; 8] = b
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated(name))?;
    Ok(i64::from_be_bytes(bytes))
}

/// Whether (`key`, `value`) says that a sink's key is gone: the Kafka
/// changelog writes it as a tombstone (no value, so compaction removes the
/// key, and with it whatever the key names, after `delete.retention.ms`),
/// its value bytes (version, epoch, `0`) in a header for fencing.
pub fn is_gone(key: &[u8], value: &[u8]) -> bool {
    key.first() == Some(&KEYED) && value.len() == 10 && value[9] == 0
}
