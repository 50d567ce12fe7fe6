//! The live stream: every change of the view as Server-Sent Events, with
//! resume, heartbeats and a bounded queue per client.
//!
//! # Ids and resume
//!
//! An event's `id:` is the view's position after it: the changelog offset
//! applied last in each partition (`0:812,1:790,2:1024`). Offsets are the
//! changelog's, not this replica's, so a client that reconnects to another
//! replica resumes where it stood. On a reconnect with `Last-Event-ID`, the
//! replica sends the changes it still holds past that position (the last
//! [`RECENT_EVENTS`] changes, at most [`RECENT_BYTES`]); when it no longer
//! holds them all (a long absence, a replica that started since), it sends
//! a `snapshot` of the whole state instead, which the client puts in place
//! of its own: the state is never wrong, only the intermediate changes are
//! skipped. A new client (no id) starts with a `snapshot`.
//!
//! # Slow clients
//!
//! Changes reach clients through one shared, bounded buffer
//! ([`BROADCAST`] changes). A client that falls that far behind (it does
//! not read, or reads too slowly) is dropped: its stream ends with an
//! `error` event naming why, and its connection is closed even when it
//! reads nothing at all (see `http::serve`). The others never wait for it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Changes the shared buffer holds: how far a client may fall behind.
pub const BROADCAST: usize = 1024;
/// Changes kept for resuming clients.
pub const RECENT_EVENTS: usize = 10_000;
/// Bytes of changes kept for resuming clients.
pub const RECENT_BYTES: usize = 8 << 20;

/// One change of the view, ready to send.
#[derive(Debug, Clone)]
pub struct Change {
    /// The changelog partition and offset it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The venue it is about.
    pub venue: String,
    /// The SSE `event:` name (`occupancy`).
    pub kind: &'static str,
    /// The whole SSE event (`event:`, `id:`, one `data:` line of JSON),
    /// made once and shared by every client that sends it.
    pub frame: bytes::Bytes,
    /// The view's position after it (its SSE `id:`).
    pub id: String,
    /// Its number among the hub's changes (from 1).
    pub seq: u64,
}

/// A position: the newest offset seen per partition.
pub type Position = BTreeMap<i32, i64>;

/// Formats a position as an SSE id.
pub fn format_id(p: &Position) -> String {
    p.iter()
        .map(|(partition, offset)| format!("{partition}:{offset}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses an SSE id; `None` when it is not one of ours.
pub fn parse_id(id: &str) -> Option<Position> {
    let mut p = Position::new();
    if id.trim().is_empty() {
        return Some(p);
    }
    for part in id.split(',') {
        let (partition, offset) = part.trim().split_once(':')?;
        p.insert(partition.parse().ok()?, offset.parse().ok()?);
    }
    Some(p)
}

/// Whether `c` comes after position `p`.
pub fn after(c: &Change, p: &Position) -> bool {
    p.get(&c.partition).is_none_or(|&o| c.offset > o)
}

#[derive(Default)]
struct Recent {
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
    /// Per partition, the newest offset evicted: a client at or past it
    /// can still be served from what is kept.
    evicted: Position,
    /// The view's position.
    position: Position,
}

/// Where the follower publishes changes and clients subscribe.
pub struct Hub {
    tx: broadcast::Sender<Arc<Change>>,
    published: std::sync::atomic::AtomicU64,
    recent: Mutex<Recent>,
    clients: AtomicUsize,
}

/// What a client gets to start with.
pub enum Start {
    /// The changes past its position, in order.
    Changes(Vec<Arc<Change>>),
    /// More than is kept: it must take the whole state.
    Snapshot,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::channel(BROADCAST).0,
            published: std::sync::atomic::AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            clients: AtomicUsize::new(0),
        }
    }

    /// Moves the position past a record that changed nothing to send, so
    /// that ids stay comparable.
    pub fn advance(&self, partition: i32, offset: i64) {
        let mut r = self.lock();
        r.position.insert(partition, offset);
    }

    /// Moves the position past a change that is not kept (the view was
    /// catching up: no client was served yet, and summarising every
    /// record of a long changelog would slow the catch-up several times):
    /// a client resuming from before it gets a snapshot, as if the
    /// change had been evicted.
    pub fn skip(&self, partition: i32, offset: i64) {
        let mut r = self.lock();
        r.position.insert(partition, offset);
        let gone = r.evicted.entry(partition).or_insert(offset);
        *gone = (*gone).max(offset);
    }

    /// Publishes a change of `venue` from the record at `offset` of
    /// `partition`.
    pub fn publish(
        &self,
        partition: i32,
        offset: i64,
        venue: &str,
        kind: &'static str,
        data: String,
    ) {
        let change = {
            let mut r = self.lock();
            r.position.insert(partition, offset);
            let seq = self.published.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format_id(&r.position);
            let change = Arc::new(Change {
                seq,
                partition,
                offset,
                venue: venue.to_owned(),
                kind,
                frame: frame(kind, &id, &data),
                id,
            });
            r.bytes += size(&change);
            r.changes.push_back(change.clone());
            while r.changes.len() > RECENT_EVENTS || r.bytes > RECENT_BYTES {
                let Some(old) = r.changes.pop_front() else {
                    break;
                };
                r.bytes -= size(&old);
                r.evicted.insert(old.partition, old.offset);
            }
            change
        };
        // No receiver: nobody to tell.
        let _ = self.tx.send(change);
    }

    /// Subscribes to what comes next, and says how a client at `from`
    /// (`None`: a new client) catches up to it. The subscription is taken
    /// first, so nothing falls between the catch-up and the live changes
    /// (the client skips live changes it already got).
    pub fn subscribe(
        &self,
        from: Option<&Position>,
    ) -> (broadcast::Receiver<Arc<Change>>, Start, Position) {
        let rx = self.tx.subscribe();
        let r = self.lock();
        let start = match from {
            None => Start::Snapshot,
            Some(p) => {
                let gap = r
                    .evicted
                    .iter()
                    .any(|(partition, &gone)| p.get(partition).is_none_or(|&o| o < gone));
                if gap {
                    Start::Snapshot
                } else {
                    Start::Changes(r.changes.iter().filter(|c| after(c, p)).cloned().collect())
                }
            }
        };
        (rx, start, r.position.clone())
    }

    /// Counts a client in; `None` when `max` are connected already.
    pub fn join(self: &Arc<Self>, max: usize) -> Option<ClientGuard> {
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        if n >= max {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientGuard(self.clone()))
    }

    /// Changes published so far: a client whose last change received is
    /// more than [`BROADCAST`] behind this is too slow.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connected client; counted out when dropped.
pub struct ClientGuard(Arc<Hub>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn size(c: &Change) -> usize {
    c.frame.len() + c.id.len() + c.venue.len() + 64
}

/// One SSE event: `event:`, `id:` (when given) and `data:`. `data` is one
/// line (JSON as serde_json writes it has no raw line break; any other
/// line break is split into `data:` lines, as SSE wants).
pub fn frame(kind: &str, id: &str, data: &str) -> bytes::Bytes {
    let mut out = String::with_capacity(data.len() + id.len() + kind.len() + 24);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if !id.is_empty() {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_one_sse_event_whatever_its_data_holds() {
        assert_eq!(
            &frame("occupancy", "0:3", "{\"a\":1}")[..],
            b"event: occupancy\nid: 0:3\ndata: {\"a\":1}\n\n"
        );
        // A line break in the data cannot end the event or forge a field.
        assert_eq!(
            &frame("error", "", "x\r\nid: 9:9\n")[..],
            b"event: error\ndata: x\ndata: id: 9:9\ndata: \n\n"
        );
    }

    #[test]
    fn ids_are_positions_and_read_back() {
        let p: Position = [(0, 812), (2, 7)].into_iter().collect();
        assert_eq!(format_id(&p), "0:812,2:7");
        assert_eq!(parse_id("0:812,2:7"), Some(p));
        assert_eq!(parse_id(""), Some(Position::new()));
        assert_eq!(parse_id("nonsense"), None);
        assert_eq!(parse_id("0:x"), None);
    }

    #[test]
    fn a_client_resumes_with_what_came_after_its_id_or_a_snapshot_past_the_kept_window() {
        let hub = Hub::new();
        for i in 0..5 {
            hub.publish(0, i, "v", "occupancy", format!("{{\"n\":{i}}}"));
        }
        hub.publish(1, 0, "w", "occupancy", "{}".into());
        let at_2: Position = [(0, 2)].into_iter().collect();
        let (_, start, position) = hub.subscribe(Some(&at_2));
        let Start::Changes(changes) = start else {
            panic!("all kept")
        };
        let got: Vec<(i32, i64)> = changes.iter().map(|c| (c.partition, c.offset)).collect();
        assert_eq!(got, [(0, 3), (0, 4), (1, 0)]);
        assert_eq!(format_id(&position), "0:4,1:0");
        assert_eq!(
            changes[1].id, "0:4",
            "each change's id is the position after it"
        );
        assert!(matches!(hub.subscribe(None).1, Start::Snapshot));
        // Past the kept window: a snapshot.
        for i in 5..(5 + RECENT_EVENTS as i64) {
            hub.publish(0, i, "v", "occupancy", "{}".into());
        }
        assert!(matches!(hub.subscribe(Some(&at_2)).1, Start::Snapshot));
        let recent: Position = [(0, RECENT_EVENTS as i64), (1, 0)].into_iter().collect();
        let Start::Changes(changes) = hub.subscribe(Some(&recent)).1 else {
            panic!("still kept")
        };
        assert_eq!(changes.len(), 4);
    }

    #[test]
    fn clients_past_the_maximum_are_refused_and_counted_out_when_gone() {
        let hub = Arc::new(Hub::new());
        let a = hub.join(2).unwrap();
        let _b = hub.join(2).unwrap();
        assert!(hub.join(2).is_none());
        assert_eq!(hub.clients(), 2);
        drop(a);
        assert!(hub.join(2).is_some());
    }
}
