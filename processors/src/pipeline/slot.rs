//! What holds a place in a key's sequence ([`Slot`]): an event to deliver
//! ([`Pending`]), one waiting without its parsed form ([`Held`]), or a
//! quarantined record; and a record on its way to quarantine.
//!
//! An event that waits, in the reorder buffer or the time-order window,
//! keeps only the record it was read as.
//!
//! A parsed body can take many times its text (a guest-WiFi event of 1 KiB
//! holds about 6.6 KB parsed; a 40 KB JSON array of zeros 1.1 MB), and an
//! event can wait up to `gap_timeout` for a missing sequence, behind which
//! a whole key's later events wait too; every event of a source ordered by
//! `occurred_at` waits that long in its window. So when an event goes in,
//! its parsed form is dropped and its share of the byte budget lowered to
//! the record's; when it leaves, its envelope is decoded and its body
//! parsed again (about 4 µs for 1 KiB), with the same source
//! configuration, into the same event (`processors/tests/parsed_budget.rs`
//! checks the events that waited against a direct parse). The ids the
//! buffer compares and logs stay.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemas::Envelope;

use super::budget;
use super::record::RawRecord;
use crate::event::{self, Event, Quarantine, SourceConfig};

/// A parsed event waiting in, or leaving, the reorder buffer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) record: RawRecord,
    /// Shared with the sinks it is routed to, not copied: a parsed body can
    /// be many times its text.
    pub(super) event: Arc<Event>,
    /// Ingest's request id (from the envelope), on every log line about
    /// this event, so it can be followed from the HTTP request on.
    pub(super) request_id: String,
    /// It came from `ingest poll`, not from a webhook.
    pub(super) polled: bool,
}

/// The envelope's `verification.scheme` of an event `ingest poll` fetched.
pub(super) const POLLED: &str = "polled";

/// A record on its way to the quarantine topic.
pub(super) struct ToQuarantine {
    pub(super) record: RawRecord,
    /// The envelope's source, `_unknown` when it did not decode.
    pub(super) source: String,
    /// Ingest's request id, when the envelope decoded.
    pub(super) request_id: Option<String>,
    pub(super) why: Quarantine,
}

/// What holds a place in a key's sequence.
#[derive(Debug)]
pub(super) enum Slot {
    /// An event to deliver (boxed: the placeholder is far smaller).
    Event(Box<Pending>),
    /// An event waiting for a missing sequence or in the time-order
    /// window, without its parsed form ([`Held`]): parsed again when it
    /// leaves.
    Held(Box<Held>),
    /// A quarantined record whose envelope named its key and sequence: it
    /// fills its slot so the key's next events need not wait the gap
    /// timeout for it. Already handled; released, it is ignored.
    Quarantined,
}

/// An event waiting for its turn, without its parsed form.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) record: RawRecord,
    /// The event's source and id: a second event with the same sequence is
    /// a duplicate when both match.
    pub(super) source: String,
    pub(super) event_id: String,
    /// Ingest's request id, for log lines about it while it waits.
    pub(super) request_id: String,
}

/// The buffers' hook ([`super::reorder::Reorderer::push_with`],
/// [`super::time_order::TimeOrder::push_with`]): a parsed event about to
/// wait is replaced by its record.
pub(super) fn hold(slot: &mut Slot) {
    let Slot::Event(pending) = std::mem::replace(slot, Slot::Quarantined) else {
        return;
    };
    let Pending {
        record,
        event,
        request_id,
        polled: _,
    } = *pending;
    let held = Held {
        source: event.source.clone(),
        event_id: event.event_id.clone(),
        request_id,
        record,
    };
    drop(event);
    if let Some(charge) = &held.record.charge {
        charge.set(held.bytes());
    }
    *slot = Slot::Held(Box::new(held));
}

impl Held {
    /// What it holds, for the byte budget.
    fn bytes(&self) -> usize {
        self.record.payload.len()
            + self.record.key.as_ref().map_or(0, Vec::len)
            + self.source.len()
            + self.event_id.len()
            + self.request_id.len()
            + budget::RECORD_OVERHEAD
    }

    /// The event again, parsed from its record as it was when it arrived;
    /// its budget charge raised back to what the parsed event holds. A
    /// record that no longer decodes or parses (it did with this same
    /// configuration when it was read, so this is a defect, not bad input)
    /// goes to quarantine with the reason.
    pub(super) fn release(
        self,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<Pending, Box<ToQuarantine>> {
        let Held {
            record,
            source,
            request_id,
            ..
        } = self;
        let parsed = Envelope::decode(&record.payload)
            .map_err(|e| Quarantine {
                reason: "envelope_undecodable",
                detail: e.to_string(),
            })
            .and_then(|envelope| {
                let event = event::parse(&envelope, sources.get(&envelope.source))?;
                Ok((envelope.verification.scheme == POLLED, event))
            });
        match parsed {
            Ok((polled, event)) => {
                charge_parsed(&record, &event);
                Ok(Pending {
                    record,
                    event: Arc::new(event),
                    request_id,
                    polled,
                })
            }
            Err(why) => Err(Box::new(ToQuarantine {
                record,
                source,
                request_id: Some(request_id),
                why,
            })),
        }
    }
}

/// Raises `record`'s budget charge to what it holds once `event` is parsed
/// from it: the envelope, the key, the parsed event.
pub(super) fn charge_parsed(record: &RawRecord, event: &Event) {
    if let Some(charge) = &record.charge {
        charge.at_least(
            record.payload.len()
                + record.key.as_ref().map_or(0, Vec::len)
                + event.held_bytes()
                + budget::RECORD_OVERHEAD,
        );
    }
}
