//! The three core modules composed the way the consumer runtime will use
//! them, with a synchronous in-memory "sink": for any interleaving of
//! re-deliveries and reorderings within the gap timeout, the sink sees the
//! de-duplicated input sorted by sequence per key, each event exactly once,
//! and the committed offset never passes a record that was not handled.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use processors::pipeline::dedupe::{DEFAULT_WINDOW, DedupeRecord, DedupeStore, MemoryDedupe};
use processors::pipeline::offsets::PartitionOffsets;
use processors::pipeline::reorder::{Reason, ReorderConfig, Reorderer};
use proptest::prelude::*;

/// A record as read from one partition.
#[derive(Debug, Clone)]
struct Record {
    /// Its offset in the partition.
    offset: i64,
    /// The ordering key (a venue).
    venue: String,
    /// The provider's sequence for that venue.
    seq: i64,
    /// The provider's event id; re-deliveries repeat it.
    event_id: String,
}

/// Per venue a contiguous run of sequences, some events delivered twice or
/// three times, shuffled; each venue's first delivery is its lowest sequence
/// (a key starts at its first item).
fn deliveries() -> impl Strategy<Value = Vec<Record>> {
    let venues = prop::collection::vec((0i64..1_000, 1usize..30), 1..5);
    let redeliveries = prop::collection::vec(any::<prop::sample::Index>(), 0..20);
    (venues, redeliveries)
        .prop_flat_map(|(venues, redeliveries)| {
            let mut events: Vec<(usize, i64)> = Vec::new();
            for (v, (start, len)) in venues.iter().enumerate() {
                events.extend((*start..*start + *len as i64).map(|s| (v, s)));
            }
            let copies: Vec<_> = redeliveries.iter().map(|i| *i.get(&events)).collect();
            events.extend(copies);
            Just(events).prop_shuffle()
        })
        .prop_map(|mut events| {
            let mut started = HashSet::new();
            for i in 0..events.len() {
                let venue = events[i].0;
                if started.insert(venue) {
                    let lowest = (i..events.len())
                        .filter(|&j| events[j].0 == venue)
                        .min_by_key(|&j| events[j].1)
                        .unwrap_or(i);
                    events.swap(i, lowest);
                }
            }
            events
                .into_iter()
                .enumerate()
                .map(|(offset, (v, seq))| Record {
                    offset: 100 + offset as i64,
                    venue: format!("venue-{v:03}"),
                    seq,
                    event_id: format!("evt_{v}_{seq}"),
                })
                .collect()
        })
}

proptest! {
    #[test]
    fn sink_sees_each_event_once_in_order_and_commits_stay_behind(records in deliveries()) {
        let t0 = Instant::now();
        let mut reorder: Reorderer<Record> = Reorderer::new(ReorderConfig::default());
        let dedupe = MemoryDedupe::new(DEFAULT_WINDOW);
        let mut offsets = PartitionOffsets::new();
        let mut sink: Vec<Record> = Vec::new();
        let mut handled: HashSet<i64> = HashSet::new();
        let mut committed: Option<i64> = None;

        for (i, record) in records.iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            offsets.track(record.offset).unwrap();
            let released =
                reorder.push(record.venue.clone(), Some(record.seq), record.clone(), now);
            for r in released {
                let rec = r.item;
                let redelivery = match r.reason {
                    // The kept copy still waits: compare event ids.
                    Reason::DuplicateSeq => reorder
                        .peek(&r.key, rec.seq)
                        .is_some_and(|kept| kept.event_id == rec.event_id),
                    _ => false,
                };
                if !redelivery && !dedupe.seen("purple", &rec.event_id).unwrap() {
                    sink.push(rec.clone());
                    dedupe
                        .record(&[DedupeRecord {
                            source: "purple",
                            event_id: &rec.event_id,
                            at: SystemTime::now(),
                        }])
                        .unwrap();
                }
                prop_assert!(offsets.done(rec.offset));
                handled.insert(rec.offset);
            }
            if let Some(c) = offsets.committable() {
                for r in &records[..=i] {
                    prop_assert!(
                        r.offset >= c || handled.contains(&r.offset),
                        "commit {} passes unhandled offset {}", c, r.offset
                    );
                }
                committed = Some(c);
            }
        }

        // Contiguous runs within the timeout leave nothing waiting.
        prop_assert_eq!(reorder.buffered(), 0);
        prop_assert!(reorder.tick(t0 + Duration::from_secs(3600)).is_empty());
        prop_assert_eq!(reorder.stats().gaps, 0);

        let mut expected: HashMap<&str, Vec<i64>> = HashMap::new();
        for r in &records {
            expected.entry(&r.venue).or_default().push(r.seq);
        }
        let mut got: HashMap<&str, Vec<i64>> = HashMap::new();
        for r in &sink {
            got.entry(&r.venue).or_default().push(r.seq);
        }
        for seqs in expected.values_mut() {
            seqs.sort_unstable();
            seqs.dedup();
        }
        prop_assert_eq!(got, expected);

        let last = records.last().map(|r| r.offset);
        prop_assert_eq!(committed, last.map(|o| o + 1));
        prop_assert_eq!(offsets.outstanding(), 0);
    }
}
