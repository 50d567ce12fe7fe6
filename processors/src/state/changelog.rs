//! How a partition's state is rebuilt from the changelog's records
//! ([`Restore`]). The records themselves (kinds, keys, values, the
//! writer's epoch) are `schemas::changelog`'s, a contract the venue view
//! reads too. No Kafka here: [`super::Changelog`] moves the bytes.
//!
//! # Restore
//!
//! A sink that keeps state per partition (the alerting sink's devices,
//! venue clocks and alerts) writes it as `K` records under its own name:
//! the sink owns the bytes of its keys and values (the venue state's are
//! Avro, a contract other components read: `schemas/avro/venue_state/`);
//! this module owns the fencing.
//!
//! Records are read in offset order. A position, a sequence or a sink's
//! keyed record is applied
//! when its epoch is at least the latest claim read so far; an older epoch
//! is a stale owner's, written after the partition was claimed by another
//! instance, and is ignored (counted). The same rule holds on a compacted
//! changelog, where superseded claims are gone: records of an owner whose
//! claim was compacted away come before the next claim and are applied,
//! which is what happened. Effects are never fenced: each says that a
//! sink outside Kafka applied an event, which stays true whoever wrote it,
//! and remembering it keeps that request from being sent again.
//!
//! A ledger record is taken as applied only once its batch's state is in
//! the state changelog: the position records carry the owner's ledger
//! serial through which that holds, and the ledger topic is read after the
//! state changelog. A ledger record no position of its epoch confirms (a
//! crash between a checkpoint's two writes, a stale owner whose positions
//! were fenced) is skipped, counted as unconfirmed: its events are read
//! and applied again, so a sink keeping partition state (the alerting
//! sink) changes its rebuilt state with them instead of dropping them as
//! duplicates; sinks outside Kafka absorb them by their idempotency and
//! effect records.
//!
//! Re-reading input past the restored position is otherwise harmless: the
//! ledger drops what was applied, the positions mark it late, and both are
//! upserts, so applying a record twice (an uncompacted changelog, a
//! restore that starts before the cache's offset) changes nothing.

use std::collections::HashMap;

pub use schemas::changelog::{Change, DecodeError, Keyed, is_gone};

/// The ledger's "source" under which one sink's effects are remembered:
/// the sink and the source joined by `0x1F`, which no source name holds, so
/// it never meets a whole event's entry.
pub fn effect_source(sink: &str, source: &str) -> String {
    format!("{sink}\u{1f}{source}")
}

/// A reorder key: (source, ordering key).
pub type SeqKey = (String, String);

/// A partition's state being rebuilt from its changelog, record by record.
/// Ledger entries are handed out in chunks ([`Restore::take_applied`]) so
/// a restore of a large window never holds it all in memory.
#[derive(Debug, Default)]
pub struct Restore {
    /// The latest claim read (its offset), or the cache's: records of an
    /// older epoch are a stale owner's.
    pub epoch: Option<i64>,
    /// The latest input position of a current epoch.
    pub position: Option<i64>,
    /// Each reorder key's next sequence.
    pub sequences: HashMap<SeqKey, i64>,
    /// Ledger entries read and not yet taken.
    applied: Vec<(String, String, u64)>,
    /// Sinks' keyed records read and not yet taken.
    keyed: Vec<Keyed>,
    /// Records applied.
    pub records: u64,
    /// Records ignored: written by a stale owner.
    pub stale: u64,
    /// Records ignored: unreadable (counted, logged by the caller).
    pub unreadable: u64,
    /// Ledger entries older than the window, skipped.
    pub expired: u64,
    /// Ledger records whose batch's state never reached the changelog,
    /// skipped (their events are read and applied again).
    pub unconfirmed: u64,
    /// Ledger entries applied before this unix second are skipped.
    pub ledger_since: u64,
    /// Per epoch, the ledger serial through which its batches' state is in
    /// the changelog (from its positions that were not fenced).
    confirmed: HashMap<i64, u64>,
}

impl Restore {
    /// A restore continuing from a cache (or from nothing: all `None` and
    /// empty), keeping ledger entries applied at or after `ledger_since`.
    pub fn new(
        epoch: Option<i64>,
        position: Option<i64>,
        sequences: HashMap<SeqKey, i64>,
        ledger_since: u64,
    ) -> Restore {
        Restore {
            epoch,
            position,
            sequences,
            ledger_since,
            ..Restore::default()
        }
    }

    /// Applies the record at `offset`. An unreadable record is counted and
    /// returned as an error; the restore goes on.
    pub fn apply(&mut self, offset: i64, key: &[u8], value: &[u8]) -> Result<(), DecodeError> {
        let (epoch, change) = match Change::decode(key, value) {
            Ok(c) => c,
            Err(e) => {
                self.unreadable += 1;
                return Err(e);
            }
        };
        if let Change::Claim { .. } = change {
            self.epoch = Some(self.epoch.map_or(offset, |e| e.max(offset)));
            self.records += 1;
            return Ok(());
        }
        let fact = matches!(change, Change::Applied { .. } | Change::Effect { .. });
        if !fact && self.epoch.is_some_and(|current| epoch < current) {
            self.stale += 1;
            return Ok(());
        }
        self.records += 1;
        match change {
            Change::Claim { .. } => {}
            Change::Position {
                offset,
                ledger_serial,
            } => {
                self.position = Some(offset);
                let through = ledger_serial.unwrap_or(u64::MAX);
                let c = self.confirmed.entry(epoch).or_default();
                *c = (*c).max(through);
            }
            Change::Applied { at, events, serial } => {
                // A batch is applied once its sinks' state is in the
                // changelog too: its ledger record comes first, and a
                // crash (or a fenced stale owner) can leave it alone.
                // Unconfirmed, its events are read and applied again.
                if self.confirmed.get(&epoch).is_some_and(|c| *c >= serial) {
                    for (source, event_id) in events {
                        self.remember(source, event_id, at);
                    }
                } else {
                    self.unconfirmed += 1;
                    self.records -= 1;
                }
            }
            Change::Sequence { source, key, next } => {
                self.sequences.insert((source, key), next);
            }
            Change::Keyed(k) => self.keyed.push(k),
            Change::Effect {
                sink,
                source,
                event_id,
                at,
            } => self.remember(effect_source(&sink, &source), event_id, at),
        }
        Ok(())
    }

    /// Keeps a ledger entry unless it is older than the window.
    fn remember(&mut self, source: String, event_id: String, at: u64) {
        if at < self.ledger_since {
            self.expired += 1;
        } else {
            self.applied.push((source, event_id, at));
        }
    }

    /// Ledger entries read since the last call.
    pub fn take_applied(&mut self) -> Vec<(String, String, u64)> {
        std::mem::take(&mut self.applied)
    }

    /// Ledger entries waiting to be taken.
    pub fn applied_waiting(&self) -> usize {
        self.applied.len()
    }

    /// Sinks' keyed records read since the last call, in offset order.
    pub fn take_keyed(&mut self) -> Vec<Keyed> {
        std::mem::take(&mut self.keyed)
    }

    /// Sinks' keyed records waiting to be taken.
    pub fn keyed_waiting(&self) -> usize {
        self.keyed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn applied(source: &str, id: &str, at: u64) -> Change {
        applied_serial(source, id, at, 1)
    }

    fn applied_serial(source: &str, id: &str, at: u64, serial: u64) -> Change {
        Change::Applied {
            serial,
            at,
            events: vec![(source.into(), id.into())],
        }
    }

    fn seq(key: &str, next: i64) -> Change {
        Change::Sequence {
            source: "wifi".into(),
            key: key.into(),
            next,
        }
    }

    fn pos(offset: i64, serial: u64) -> Change {
        Change::Position {
            offset,
            ledger_serial: Some(serial),
        }
    }

    /// Whether `change` goes to the ledger topic (read after the state
    /// changelog) rather than to the state changelog.
    fn in_ledger(change: &Change) -> bool {
        matches!(change, Change::Applied { .. } | Change::Effect { .. })
    }

    /// Restores `log`, a list of (epoch, change) whose offsets are the
    /// indexes (a claim's epoch is its own offset) standing for both
    /// topics: as a restore does, the state changelog's records first,
    /// then the ledger's.
    fn restore_twice_from(r: &mut Restore, log: &[(i64, Change)]) -> Vec<(String, String, u64)> {
        let mut taken = Vec::new();
        for ledger in [false, true] {
            for (offset, (epoch, change)) in log.iter().enumerate() {
                if in_ledger(change) != ledger {
                    continue;
                }
                let (k, v) = change.encode(*epoch);
                r.apply(offset as i64, &k, &v).unwrap();
                taken.extend(r.take_applied());
            }
        }
        taken
    }

    fn replay(log: &[(i64, Change)]) -> Restore {
        let mut r = Restore::default();
        r.applied = restore_twice_from(&mut r, log);
        r
    }

    #[test]
    fn every_change_reads_back_as_written() {
        for change in [
            Change::Claim {
                owner: "host-a/4711".into(),
            },
            Change::Position {
                offset: 1 << 40,
                ledger_serial: Some(7),
            },
            Change::Position {
                offset: 3,
                ledger_serial: None,
            },
            applied("wifi", "evt_1", 1_790_000_000),
            seq("venue-1", 42),
            applied("", "", 0),
            Change::Applied {
                serial: u64::MAX,
                at: 9,
                events: vec![
                    ("wifi".into(), "a".into()),
                    ("other".into(), "\u{1f}b".into()),
                ],
            },
            Change::Applied {
                serial: 2,
                at: 9,
                events: vec![],
            },
            Change::Effect {
                sink: "crm".into(),
                source: "wifi".into(),
                event_id: "evt\u{1f}odd".into(),
                at: 7,
            },
            Change::Keyed(Keyed {
                sink: "alerts".into(),
                key: b"D\x1fvenue\x1f\x00\xff".to_vec(),
                value: Some(vec![0, 1, 2]),
            }),
            Change::Keyed(Keyed {
                sink: "alerts".into(),
                key: Vec::new(),
                value: Some(Vec::new()),
            }),
            Change::Keyed(Keyed {
                sink: "alerts".into(),
                key: b"gone".to_vec(),
                value: None,
            }),
        ] {
            let (k, v) = change.encode(-7);
            assert_eq!(Change::decode(&k, &v), Ok((-7, change)));
        }
    }

    #[test]
    fn malformed_records_are_errors_naming_what_is_wrong() {
        let (k, mut v) = seq("v", 1).encode(3);
        assert_eq!(
            Change::decode(&k, &v[..10]),
            Err(DecodeError::Truncated("sequence"))
        );
        v[0] = 2;
        assert_eq!(Change::decode(&k, &v), Err(DecodeError::Version(2)));
        assert_eq!(Change::decode(b"X", &v), Err(DecodeError::Kind(b'X')));
        assert_eq!(Change::decode(b"", &v), Err(DecodeError::Kind(0)));
        let (_, v) = seq("v", 1).encode(3);
        assert_eq!(
            Change::decode(b"Snoseparator", &v),
            Err(DecodeError::Key("sequence"))
        );
        let mut r = Restore::default();
        assert!(r.apply(0, b"X", &v).is_err());
        assert_eq!(r.unreadable, 1);
    }

    #[test]
    fn a_stale_owner_writing_after_the_next_claim_is_ignored_with_its_ledger() {
        // A claims at 0; B claims at 4; A, not knowing yet, writes on: its
        // state records are fenced, so its ledger record is not confirmed
        // and the events it lists are read and applied again by B (the
        // sinks' idempotency and effect records cover what A did).
        let log = vec![
            (0, Change::Claim { owner: "a".into() }),
            (0, seq("v", 5)),
            (0, applied("wifi", "early-a", 100)),
            (0, pos(10, 1)),
            (0, Change::Claim { owner: "b".into() }),
            (0, seq("v", 9)),
            (0, applied_serial("wifi", "late-a", 100, 2)),
            (0, pos(20, 2)),
            (4, seq("v", 6)),
            (4, pos(12, 0)),
        ];
        let r = replay(&log);
        assert_eq!(r.epoch, Some(4));
        assert_eq!(r.position, Some(12));
        assert_eq!(r.sequences[&("wifi".to_string(), "v".to_string())], 6);
        assert_eq!(r.applied, [("wifi".into(), "early-a".into(), 100)]);
        assert_eq!((r.stale, r.unconfirmed), (2, 1));
    }

    #[test]
    fn a_ledger_record_whose_state_records_never_came_is_not_taken_as_applied() {
        // A crash between the two writes of a checkpoint: the ledger has
        // batch 2, the state changelog only batch 1.
        let log = vec![
            (0, Change::Claim { owner: "a".into() }),
            (0, applied("wifi", "e1", 100)),
            (0, pos(10, 1)),
            (0, applied_serial("wifi", "e2", 100, 2)),
        ];
        let r = replay(&log);
        assert_eq!(r.position, Some(10));
        assert_eq!(r.applied, [("wifi".into(), "e1".into(), 100)]);
        assert_eq!(r.unconfirmed, 1);
    }

    #[test]
    fn records_of_an_owner_whose_claim_was_compacted_away_are_applied() {
        // Compaction kept only the last claim: A's records come first.
        let log = vec![
            (0, applied("wifi", "e1", 100)),
            (0, pos(4, 1)),
            (2, Change::Claim { owner: "b".into() }),
            (2, applied("wifi", "e2", 101)),
            (2, pos(5, 1)),
        ];
        let r = replay(&log);
        assert_eq!(r.position, Some(5));
        assert_eq!(r.applied.len(), 2);
        assert_eq!(r.stale, 0);
    }

    #[test]
    fn ledger_entries_older_than_the_window_are_skipped() {
        let mut r = Restore::new(None, None, HashMap::new(), 1000);
        let (k, v) = pos(0, 1).encode(0);
        r.apply(9, &k, &v).unwrap();
        for (o, at) in [(0, 999), (1, 1000), (2, 5000)] {
            let (k, v) = applied("wifi", &format!("e{o}"), at).encode(0);
            r.apply(o, &k, &v).unwrap();
        }
        assert_eq!(r.take_applied().len(), 2);
        assert_eq!(r.expired, 1);
    }

    proptest! {
        /// However the owners' writes interleave, and whether or not every
        /// record is read twice (an uncompacted log read again from an
        /// earlier offset), a restore ends with exactly what the last
        /// claimant and the owners before its claim wrote.
        #[test]
        fn restore_keeps_only_what_current_owners_wrote(
            ops in proptest::collection::vec((0u8..3, 0u8..6, 0i64..100), 1..60),
            twice in any::<bool>(),
        ) {
            // op: (writer, kind, value). Writer w claims when it first
            // writes; its epoch is the offset of its own latest claim.
            let mut log: Vec<(i64, Change)> = Vec::new();
            let mut claims: HashMap<u8, i64> = HashMap::new();
            for (w, kind, v) in ops {
                if kind == 0 || !claims.contains_key(&w) {
                    claims.insert(w, log.len() as i64);
                    log.push((0, Change::Claim { owner: w.to_string() }));
                    continue;
                }
                let e = claims[&w];
                let c = match kind {
                    1 => pos(v, (v % 3) as u64),
                    2 => seq("k", v),
                    3 => applied_serial("wifi", &format!("{w}-{v}"), 10, (v % 3) as u64),
                    4 => Change::Keyed(Keyed {
                        sink: "alerts".into(),
                        key: b"k".to_vec(),
                        value: (v % 3 != 0).then(|| v.to_be_bytes().to_vec()),
                    }),
                    _ => Change::Effect {
                        sink: "crm".into(),
                        source: "wifi".into(),
                        event_id: format!("{w}-{v}"),
                        at: 10,
                    },
                };
                log.push((e, c));
            }
            // The expected state: walk the log remembering the latest claim.
            let mut latest = None::<i64>;
            let mut position = None;
            let mut next = None;
            let mut keyed: Option<Option<Vec<u8>>> = None;
            let mut ids = std::collections::BTreeSet::new();
            // Per epoch, the ledger serial its positions (not fenced) confirm.
            let mut confirmed: HashMap<i64, u64> = HashMap::new();
            for (o, (e, c)) in log.iter().enumerate() {
                match c {
                    Change::Claim { .. } => latest = Some(o as i64),
                    Change::Applied { .. } | Change::Effect { .. } => {}
                    _ if latest.is_some_and(|l| *e < l) => {}
                    Change::Position { offset, ledger_serial } => {
                        position = Some(*offset);
                        let c = confirmed.entry(*e).or_default();
                        *c = (*c).max(ledger_serial.unwrap_or(u64::MAX));
                    }
                    Change::Sequence { next: n, .. } => next = Some(*n),
                    Change::Keyed(k) => keyed = Some(k.value.clone()),
                }
            }
            // The ledger, read after: a batch counts once its state is in.
            for (e, c) in &log {
                match c {
                    Change::Applied { events, serial, .. }
                        if confirmed.get(e).is_some_and(|c| c >= serial) =>
                    {
                        ids.extend(events.iter().map(|(_, id)| id.clone()));
                    }
                    Change::Effect { event_id, .. } => { ids.insert(format!("effect {event_id}")); }
                    _ => {}
                }
            }
            let mut r = replay(&log);
            let mut folded = r.take_keyed().last().map(|k| k.value.clone());
            if twice {
                // Read again from the start, as after a restart that lost
                // its cache: idempotent.
                let first = r.take_applied();
                let mut again = Restore::new(r.epoch, r.position, r.sequences.clone(), 0);
                let more = restore_twice_from(&mut again, &log);
                let mut all = first;
                all.extend(more);
                // Read again, a key ends as its last current record says.
                if let Some(last) = again.take_keyed().last() {
                    folded = Some(last.value.clone());
                }
                r = again;
                r.applied = all;
            }
            prop_assert_eq!(r.epoch, latest);
            prop_assert_eq!(r.position, position);
            prop_assert_eq!(r.sequences.get(&("wifi".to_string(), "k".to_string())).copied(), next);
            prop_assert_eq!(folded, keyed);
            let got: std::collections::BTreeSet<String> = r
                .applied
                .iter()
                .map(|(source, id, _)| {
                    if *source == effect_source("crm", "wifi") {
                        format!("effect {id}")
                    } else {
                        id.clone()
                    }
                })
                .collect();
            prop_assert_eq!(got, ids);
        }
    }
}
