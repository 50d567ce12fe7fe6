//! The view: every venue's occupancy and last hour, built from the
//! records of the processors' state changelog (`schemas::changelog`,
//! `schemas::venue_state`), fenced by the writers' epochs as a restore is.
//!
//! Memory is bounded by configuration, not by traffic: at most
//! `max_venues` venues, each with at most `max_zones` zone names of at most
//! [`MAX_ZONE_BYTES`] bytes, and 60 minutes of counts (4 bytes per zone per
//! minute). A record past a bound is refused and counted, never stored.

use std::collections::HashMap;

use schemas::changelog::Change;
use schemas::venue_state::{Entry, Key, VenueState};

/// The longest zone name kept; a minute naming a longer one is refused.
pub const MAX_ZONE_BYTES: usize = 128;
/// The longest venue id kept.
pub const MAX_VENUE_BYTES: usize = 256;
/// A minute, in Unix microseconds.
pub const MINUTE: i64 = 60_000_000;
/// Alerts kept per venue: past it, the oldest resolved one goes.
pub const MAX_ALERTS_PER_VENUE: usize = 64;
/// VIPs listed per venue: past it, a new one is refused (and counted).
pub const MAX_VIPS_PER_VENUE: usize = 64;
/// The longest guest id or name kept.
pub const MAX_GUEST_BYTES: usize = 256;

/// How many venues and zones the view holds at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Venues.
    pub max_venues: usize,
    /// Zone names per venue.
    pub max_zones: usize,
}

/// What [`View::apply`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It changed the view.
    Applied,
    /// A claim: the partition's newest owner.
    Claim,
    /// Written by an owner that had lost the partition: ignored.
    Stale,
    /// Not the venue view's (another kind, sink or key): ignored.
    Ignored,
    /// Not readable (a newer writer, a damaged record): ignored.
    Unreadable,
    /// Past a bound (venues, zones, name lengths): not stored.
    Refused,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Claim => "claim",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
            Outcome::Unreadable => "unreadable",
            Outcome::Refused => "refused",
        }
    }
}

/// One minute of a venue: devices present and per zone, as of the newest
/// event of that minute.
#[derive(Debug, Clone)]
struct Counts {
    /// The minute's start (Unix µs).
    minute: i64,
    /// Devices at the venue.
    devices: u32,
    /// Devices per zone, by the venue's zone index (zones named later are
    /// missing at the end: 0).
    zones: Box<[u32]>,
}

#[derive(Debug)]
struct Venue {
    /// Zone names, in the order first seen.
    zones: Vec<String>,
    /// Minutes by minute of the hour, as the changelog keys them.
    ring: [Option<Counts>; 60],
    /// Alerts by fingerprint.
    alerts: HashMap<String, AlertInfo>,
    /// VIP guests present, by device.
    vips: HashMap<String, VipInfo>,
}

/// A VIP guest present at a venue (personal data: shown only where
/// configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipInfo {
    /// The platform's guest id.
    pub guest: String,
    /// First name, when given.
    pub name: Option<String>,
    /// The zone of the device's newest connect or move.
    pub zone: Option<String>,
    /// When its session started (event time, Unix µs).
    pub since: i64,
}

/// One alert of a venue, as the processors' alerting sink raised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertInfo {
    /// The sink's fingerprint of it.
    pub fingerprint: String,
    /// `ZoneOverCapacity`, `VipArrival`, `DwellOverThreshold`.
    pub name: String,
    /// The zone it is about.
    pub zone: Option<String>,
    /// Firing now.
    pub firing: bool,
    /// When it started (event time, Unix µs).
    pub starts_at: i64,
    /// When it cleared.
    pub ends_at: Option<i64>,
    /// What happened (no guest's name).
    pub summary: String,
    /// The guest it is about (personal data: shown only where configured).
    pub guest: Option<String>,
}

/// A venue's occupancy at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupancy {
    /// The minute it is as of (Unix µs), or `None` before any record.
    pub minute: Option<i64>,
    /// Devices at the venue.
    pub devices: u32,
    /// Devices per zone, every zone ever seen at the venue (0 when empty).
    pub zones: Vec<(String, u32)>,
    /// The venue's alerts: firing first, then the newest.
    pub alerts: Vec<AlertInfo>,
    /// VIP guests present: the newest arrival first.
    pub vips: Vec<VipInfo>,
}

/// Every venue's occupancy, from the changelog.
#[derive(Debug)]
pub struct View {
    sink: String,
    limits: Limits,
    /// The newest claim read per partition (its epoch: its offset).
    claims: HashMap<i32, i64>,
    venues: HashMap<String, Venue>,
    /// Each alert's venue, by fingerprint (a tombstone names no venue).
    alert_venues: HashMap<String, String>,
    /// The venue whose newest minute the last record changed.
    changed: Option<String>,
}

impl View {
    /// An empty view of the records of sink `sink` (the alerting sink's
    /// name in the processors' configuration).
    pub fn new(sink: &str, limits: Limits) -> View {
        View {
            sink: sink.to_owned(),
            limits,
            claims: HashMap::new(),
            venues: HashMap::new(),
            alert_venues: HashMap::new(),
            changed: None,
        }
    }

    /// Applies the record at `offset` of changelog partition `partition`
    /// (for a tombstone, `value` is its `state-gone` header's bytes).
    pub fn apply(&mut self, partition: i32, offset: i64, key: &[u8], value: &[u8]) -> Outcome {
        self.apply_changed(partition, offset, key, value).0
    }

    /// [`apply`](Self::apply), also naming the venue whose newest
    /// occupancy the record changed, if it did.
    pub fn apply_changed(
        &mut self,
        partition: i32,
        offset: i64,
        key: &[u8],
        value: &[u8],
    ) -> (Outcome, Option<String>) {
        let outcome = self.apply_record(partition, offset, key, value);
        let changed = self.changed.take();
        (outcome, changed)
    }

    fn apply_record(&mut self, partition: i32, offset: i64, key: &[u8], value: &[u8]) -> Outcome {
        let Ok((epoch, change)) = Change::decode(key, value) else {
            return Outcome::Unreadable;
        };
        let keyed = match change {
            Change::Claim { .. } => {
                self.claims.insert(partition, offset);
                return Outcome::Claim;
            }
            Change::Keyed(k) => k,
            _ => return Outcome::Ignored,
        };
        if keyed.sink != self.sink {
            return Outcome::Ignored;
        }
        if self
            .claims
            .get(&partition)
            .is_some_and(|&claim| epoch < claim)
        {
            return Outcome::Stale;
        }
        let (venue, of_hour) = match Key::decode(&keyed.key) {
            Some(Key::Minute { venue, of_hour }) => (venue, of_hour),
            Some(Key::Alert { fingerprint }) => return self.alert(fingerprint, keyed.value),
            Some(Key::Device { venue, device }) => return self.device(venue, device, keyed.value),
            _ => return Outcome::Ignored,
        };
        let slot = usize::from(of_hour);
        let Some(bytes) = keyed.value else {
            if let Some(v) = self.venues.get_mut(&venue) {
                v.ring[slot] = None;
                self.changed = Some(venue);
            }
            return Outcome::Applied;
        };
        let Ok(VenueState {
            entry:
                Entry::Minute {
                    minute,
                    devices,
                    zones,
                },
            ..
        }) = VenueState::decode(&bytes)
        else {
            return Outcome::Unreadable;
        };
        if venue.len() > MAX_VENUE_BYTES || zones.keys().any(|z| z.len() > MAX_ZONE_BYTES) {
            return Outcome::Refused;
        }
        if !self.venues.contains_key(&venue) && self.venues.len() >= self.limits.max_venues {
            return Outcome::Refused;
        }
        let v = self.venues.entry(venue.clone()).or_insert_with(Venue::new);
        let new_names = zones
            .keys()
            .filter(|z| !v.zones.iter().any(|n| n == *z))
            .count();
        if v.zones.len() + new_names > self.limits.max_zones {
            return Outcome::Refused;
        }
        for z in zones.keys() {
            if !v.zones.iter().any(|n| n == z) {
                v.zones.push(z.clone());
            }
        }
        let mut counts = vec![0u32; v.zones.len()];
        for (z, n) in &zones {
            if let Some(i) = v.zones.iter().position(|name| name == z) {
                counts[i] = clamp(*n);
            }
        }
        let newest = v.ring.iter().flatten().map(|c| c.minute).max();
        v.ring[slot] = Some(Counts {
            minute,
            devices: clamp(devices),
            zones: counts.into_boxed_slice(),
        });
        if newest.is_none_or(|n| minute >= n) {
            self.changed = Some(venue);
        }
        Outcome::Applied
    }

    /// An alert's record: stored under its venue, or removed (a
    /// tombstone).
    fn alert(&mut self, fingerprint: String, value: Option<Vec<u8>>) -> Outcome {
        let Some(bytes) = value else {
            if let Some(venue) = self.alert_venues.remove(&fingerprint) {
                if let Some(v) = self.venues.get_mut(&venue) {
                    v.alerts.remove(&fingerprint);
                }
                self.changed = Some(venue);
            }
            return Outcome::Applied;
        };
        let Ok(VenueState {
            venue,
            entry:
                Entry::Alert {
                    name,
                    zone,
                    firing,
                    starts_at,
                    ends_at,
                    summary,
                    guest,
                },
        }) = VenueState::decode(&bytes)
        else {
            return Outcome::Unreadable;
        };
        if venue.len() > MAX_VENUE_BYTES
            || (!self.venues.contains_key(&venue) && self.venues.len() >= self.limits.max_venues)
        {
            return Outcome::Refused;
        }
        let v = self.venues.entry(venue.clone()).or_insert_with(Venue::new);
        if !v.alerts.contains_key(&fingerprint) && v.alerts.len() >= MAX_ALERTS_PER_VENUE {
            // Room for it: the oldest resolved alert goes; all firing: refused.
            let oldest = v
                .alerts
                .values()
                .filter(|a| !a.firing)
                .min_by_key(|a| a.starts_at)
                .map(|a| a.fingerprint.clone());
            match oldest {
                Some(fp) => {
                    v.alerts.remove(&fp);
                    self.alert_venues.remove(&fp);
                }
                None => return Outcome::Refused,
            }
        }
        v.alerts.insert(
            fingerprint.clone(),
            AlertInfo {
                fingerprint: fingerprint.clone(),
                name,
                zone,
                firing,
                starts_at,
                ends_at,
                summary,
                guest,
            },
        );
        self.alert_venues.insert(fingerprint, venue.clone());
        self.changed = Some(venue);
        Outcome::Applied
    }

    /// A device's record: only VIPs are kept, so a device's record adds,
    /// updates or removes it from its venue's VIPs present (any other
    /// device's record is ignored).
    fn device(&mut self, venue: String, device: String, value: Option<Vec<u8>>) -> Outcome {
        let vip = match value {
            None => None,
            Some(bytes) => match VenueState::decode(&bytes) {
                Ok(VenueState {
                    entry:
                        Entry::Device {
                            zone,
                            connected_at,
                            vip,
                            ..
                        },
                    ..
                }) => vip.map(|g| VipInfo {
                    guest: g.id,
                    name: g.name,
                    zone,
                    since: connected_at,
                }),
                _ => return Outcome::Unreadable,
            },
        };
        let Some(vip) = vip else {
            let removed = self
                .venues
                .get_mut(&venue)
                .is_some_and(|v| v.vips.remove(&device).is_some());
            if !removed {
                // Not a VIP's: nothing of the view's.
                return Outcome::Ignored;
            }
            self.changed = Some(venue);
            return Outcome::Applied;
        };
        let too_long = |t: &str| t.len() > MAX_GUEST_BYTES;
        if venue.len() > MAX_VENUE_BYTES
            || device.len() > MAX_GUEST_BYTES
            || too_long(&vip.guest)
            || vip.name.as_deref().is_some_and(too_long)
            || vip
                .zone
                .as_deref()
                .is_some_and(|z| z.len() > MAX_ZONE_BYTES)
            || (!self.venues.contains_key(&venue) && self.venues.len() >= self.limits.max_venues)
        {
            return Outcome::Refused;
        }
        let v = self.venues.entry(venue.clone()).or_insert_with(Venue::new);
        if !v.vips.contains_key(&device) && v.vips.len() >= MAX_VIPS_PER_VENUE {
            return Outcome::Refused;
        }
        if v.vips.get(&device) != Some(&vip) {
            v.vips.insert(device, vip);
            self.changed = Some(venue);
        }
        Outcome::Applied
    }

    /// The venue ids, in no order.
    pub fn venue_ids(&self) -> impl Iterator<Item = &str> {
        self.venues.keys().map(String::as_str)
    }

    /// How many venues the view holds.
    pub fn len(&self) -> usize {
        self.venues.len()
    }

    /// Whether the view holds no venue.
    pub fn is_empty(&self) -> bool {
        self.venues.is_empty()
    }

    /// `venue`'s occupancy as of its newest minute, `None` for a venue
    /// the view does not hold.
    pub fn now(&self, venue: &str) -> Option<Occupancy> {
        let v = self.venues.get(venue)?;
        let newest = v.ring.iter().flatten().max_by_key(|c| c.minute);
        Some(occupancy(v, newest))
    }

    /// `venue`'s occupancy at each of the `points` minutes ending with the
    /// one that holds `until` (Unix µs), oldest first: each minute's count
    /// is the newest record at or before it (a minute without a record had
    /// no change). `None` for a venue the view does not hold.
    pub fn trend(&self, venue: &str, until: i64, points: usize) -> Option<Vec<Occupancy>> {
        let v = self.venues.get(venue)?;
        let last = until - until.rem_euclid(MINUTE);
        let mut out = Vec::with_capacity(points);
        for i in (0..points as i64).rev() {
            let at = last - i * MINUTE;
            let newest = v
                .ring
                .iter()
                .flatten()
                .filter(|c| c.minute <= at)
                .max_by_key(|c| c.minute);
            let mut o = occupancy(v, newest);
            o.minute = Some(at);
            o.alerts = Vec::new();
            o.vips = Vec::new();
            out.push(o);
        }
        Some(out)
    }
}

impl Venue {
    fn new() -> Venue {
        Venue {
            zones: Vec::new(),
            ring: std::array::from_fn(|_| None),
            alerts: HashMap::new(),
            vips: HashMap::new(),
        }
    }
}

fn occupancy(v: &Venue, counts: Option<&Counts>) -> Occupancy {
    let mut alerts: Vec<AlertInfo> = v.alerts.values().cloned().collect();
    alerts.sort_by(|a, b| {
        b.firing
            .cmp(&a.firing)
            .then(b.starts_at.cmp(&a.starts_at))
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    let mut vips: Vec<VipInfo> = v.vips.values().cloned().collect();
    vips.sort_by(|a, b| b.since.cmp(&a.since).then_with(|| a.guest.cmp(&b.guest)));
    Occupancy {
        alerts,
        vips,
        minute: counts.map(|c| c.minute),
        devices: counts.map_or(0, |c| c.devices),
        zones: v
            .zones
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = counts.and_then(|c| c.zones.get(i)).copied().unwrap_or(0);
                (name.clone(), n)
            })
            .collect(),
    }
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use schemas::changelog::Keyed;

    use super::*;

    const T: i64 = 1_790_000_040 * 1_000_000; // a minute's start

    fn limits() -> Limits {
        Limits {
            max_venues: 10,
            max_zones: 4,
        }
    }

    fn minute(venue: &str, at: i64, zones: &[(&str, i64)], epoch: i64) -> (Vec<u8>, Vec<u8>) {
        let zones: BTreeMap<String, i64> = zones.iter().map(|(z, n)| (z.to_string(), *n)).collect();
        let value = VenueState {
            venue: venue.into(),
            entry: Entry::Minute {
                minute: at,
                devices: zones.values().sum::<i64>() + 1,
                zones,
            },
        }
        .encode()
        .unwrap();
        Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: Key::minute(venue, at).encode(),
            value: Some(value),
        })
        .encode(epoch)
    }

    fn device(venue: &str, device: &str, vip: Option<&str>, epoch: i64) -> (Vec<u8>, Vec<u8>) {
        let value = VenueState {
            venue: venue.into(),
            entry: Entry::Device {
                device: device.into(),
                zone: Some("lobby".into()),
                connected_at: T,
                last_seen: T,
                vip: vip.map(|name| schemas::venue_state::VipGuest {
                    id: format!("g-{name}"),
                    name: Some(name.into()),
                }),
            },
        }
        .encode()
        .unwrap();
        Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: Key::Device {
                venue: venue.into(),
                device: device.into(),
            }
            .encode(),
            value: Some(value),
        })
        .encode(epoch)
    }

    #[test]
    fn a_vips_device_is_listed_until_it_leaves_or_its_guest_is_no_vip() {
        let mut view = View::new("alerts", limits());
        let names = |view: &View| -> Vec<String> {
            view.now("v")
                .map(|o| o.vips.iter().filter_map(|v| v.name.clone()).collect())
                .unwrap_or_default()
        };
        let (k, v) = device("v", "d1", Some("Ana"), 0);
        assert_eq!(
            view.apply_changed(0, 0, &k, &v),
            (Outcome::Applied, Some("v".into()))
        );
        let (k, v) = device("v", "d2", Some("Bo"), 0);
        view.apply(0, 1, &k, &v);
        let (k, v) = device("v", "d3", None, 0);
        assert_eq!(
            view.apply_changed(0, 2, &k, &v),
            (Outcome::Ignored, None),
            "no VIP: no change"
        );
        let mut got = names(&view);
        got.sort();
        assert_eq!(got, ["Ana", "Bo"]);
        let mut ids: Vec<String> = view
            .now("v")
            .unwrap()
            .vips
            .into_iter()
            .map(|v| v.guest)
            .collect();
        ids.sort();
        assert_eq!(ids, ["g-Ana", "g-Bo"]);
        // d1's guest is no VIP any more; d2 leaves (its tombstone).
        let (k, v) = device("v", "d1", None, 0);
        assert_eq!(view.apply_changed(0, 3, &k, &v).1, Some("v".into()));
        let (k2, v2) = Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: Key::Device {
                venue: "v".into(),
                device: "d2".into(),
            }
            .encode(),
            value: None,
        })
        .encode(0);
        assert_eq!(view.apply_changed(0, 4, &k2, &v2).1, Some("v".into()));
        assert!(names(&view).is_empty());
        // A device record of an owner that had lost the partition: stale.
        let (k, v) = claim();
        view.apply(0, 5, &k, &v);
        let (k, v) = device("v", "d9", Some("Cy"), 4);
        assert_eq!(view.apply(0, 6, &k, &v), Outcome::Stale);
        assert!(names(&view).is_empty());
    }

    fn claim() -> (Vec<u8>, Vec<u8>) {
        Change::Claim { owner: "x".into() }.encode(-1)
    }

    #[test]
    fn the_newest_minute_is_the_venue_now_and_the_trend_carries_counts_forward() {
        let mut view = View::new("alerts", limits());
        let (k, v) = claim();
        assert_eq!(view.apply(0, 0, &k, &v), Outcome::Claim);
        let (k, v) = minute("v", T, &[("lobby", 2)], 0);
        assert_eq!(view.apply(0, 1, &k, &v), Outcome::Applied);
        let (k, v) = minute("v", T + 3 * MINUTE, &[("bar", 1), ("lobby", 4)], 0);
        assert_eq!(view.apply(0, 2, &k, &v), Outcome::Applied);
        let now = view.now("v").unwrap();
        assert_eq!(now.minute, Some(T + 3 * MINUTE));
        assert_eq!(now.devices, 6);
        assert_eq!(now.zones, [("lobby".into(), 4), ("bar".into(), 1)]);
        let trend = view.trend("v", T + 4 * MINUTE + 5, 6).unwrap();
        let devices: Vec<u32> = trend.iter().map(|o| o.devices).collect();
        assert_eq!(devices, [0, 3, 3, 3, 6, 6]);
        assert_eq!(trend[0].minute, Some(T - MINUTE));
        assert_eq!(trend[5].minute, Some(T + 4 * MINUTE));
        assert_eq!(trend[1].zones, [("lobby".into(), 2), ("bar".into(), 0)]);
        assert_eq!(view.now("unknown"), None);
    }

    #[test]
    fn a_previous_owner_writing_after_the_next_claim_is_ignored() {
        let mut view = View::new("alerts", limits());
        let (k, v) = claim();
        view.apply(0, 0, &k, &v);
        let (k, v) = minute("v", T, &[("lobby", 2)], 0);
        view.apply(0, 1, &k, &v);
        // Another instance claims at offset 2; the first writes on.
        let (k, v) = claim();
        view.apply(0, 2, &k, &v);
        let (k, v) = minute("v", T + MINUTE, &[("lobby", 9)], 0);
        assert_eq!(view.apply(0, 3, &k, &v), Outcome::Stale);
        let (k, v) = minute("v", T + MINUTE, &[("lobby", 3)], 2);
        assert_eq!(view.apply(0, 4, &k, &v), Outcome::Applied);
        assert_eq!(view.now("v").unwrap().zones, [("lobby".into(), 3)]);
        // Claims are per partition: partition 1 knows none.
        let (k, v) = minute("w", T, &[("lobby", 1)], 0);
        assert_eq!(view.apply(1, 0, &k, &v), Outcome::Applied);
    }

    #[test]
    fn other_sinks_kinds_and_damaged_records_leave_the_view_alone() {
        let mut view = View::new("alerts", limits());
        let (k, mut v) = minute("v", T, &[("lobby", 2)], 0);
        let mut other = k.clone();
        other[1] = b'b'; // another sink's name
        assert_eq!(view.apply(0, 0, &other, &v), Outcome::Ignored);
        let (k2, v2) = Change::Sequence {
            source: "s".into(),
            key: "v".into(),
            next: 3,
        }
        .encode(0);
        assert_eq!(view.apply(0, 1, &k2, &v2), Outcome::Ignored);
        let device = Key::Device {
            venue: "v".into(),
            device: "d".into(),
        };
        let (k3, v3) = Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: device.encode(),
            value: None,
        })
        .encode(0);
        assert_eq!(view.apply(0, 2, &k3, &v3), Outcome::Ignored);
        let last = v.len() - 1;
        v[last] ^= 0xFF;
        v.truncate(v.len() - 3);
        assert_eq!(view.apply(0, 3, &k, &v), Outcome::Unreadable);
        assert_eq!(view.apply(0, 4, b"", b""), Outcome::Unreadable);
        assert!(view.is_empty());
    }

    #[test]
    fn venues_and_zones_past_their_limits_are_refused_not_stored() {
        let mut view = View::new(
            "alerts",
            Limits {
                max_venues: 2,
                max_zones: 2,
            },
        );
        for (i, venue) in ["a", "b", "c"].iter().enumerate() {
            let (k, v) = minute(venue, T, &[("lobby", 1)], 0);
            let expected = if i < 2 {
                Outcome::Applied
            } else {
                Outcome::Refused
            };
            assert_eq!(view.apply(0, i as i64, &k, &v), expected, "{venue}");
        }
        assert_eq!(view.len(), 2);
        let (k, v) = minute("a", T + MINUTE, &[("x", 1), ("y", 1)], 0);
        assert_eq!(view.apply(0, 9, &k, &v), Outcome::Refused, "a third zone");
        let long = "z".repeat(MAX_ZONE_BYTES + 1);
        let (k, v) = minute("a", T + MINUTE, &[(long.as_str(), 1)], 0);
        assert_eq!(view.apply(0, 10, &k, &v), Outcome::Refused);
        assert_eq!(view.now("a").unwrap().minute, Some(T));
    }

    fn alert(fp: &str, venue: &str, firing: bool, at: i64) -> (Vec<u8>, Option<Vec<u8>>) {
        let value = VenueState {
            venue: venue.into(),
            entry: Entry::Alert {
                name: "ZoneOverCapacity".into(),
                zone: Some("lobby".into()),
                firing,
                starts_at: at,
                ends_at: None,
                summary: "6 devices".into(),
                guest: None,
            },
        }
        .encode()
        .unwrap();
        (
            Key::Alert {
                fingerprint: fp.into(),
            }
            .encode(),
            Some(value),
        )
    }

    fn keyed(key: Vec<u8>, value: Option<Vec<u8>>, epoch: i64) -> (Vec<u8>, Vec<u8>) {
        Change::Keyed(Keyed {
            sink: "alerts".into(),
            key,
            value,
        })
        .encode(epoch)
    }

    #[test]
    fn alerts_are_kept_per_venue_firing_first_and_go_with_their_tombstone() {
        let mut view = View::new("alerts", limits());
        let (k, v) = alert("a1", "v", false, T);
        let (k, v) = keyed(k, v, 0);
        assert_eq!(
            view.apply_changed(0, 0, &k, &v),
            (Outcome::Applied, Some("v".into()))
        );
        let (k, v) = alert("a2", "v", true, T - MINUTE);
        let (k, v) = keyed(k, v, 0);
        view.apply(0, 1, &k, &v);
        let fps: Vec<String> = view
            .now("v")
            .unwrap()
            .alerts
            .iter()
            .map(|a| a.fingerprint.clone())
            .collect();
        assert_eq!(fps, ["a2", "a1"], "firing first");
        let (k, v) = keyed(
            Key::Alert {
                fingerprint: "a2".into(),
            }
            .encode(),
            None,
            0,
        );
        assert_eq!(
            view.apply_changed(0, 2, &k, &v),
            (Outcome::Applied, Some("v".into()))
        );
        assert_eq!(view.now("v").unwrap().alerts.len(), 1);
        // Past the bound the oldest resolved alert makes room.
        for i in 0..MAX_ALERTS_PER_VENUE {
            let (k, v) = alert(&format!("b{i}"), "v", false, T + 1 + i as i64);
            let (k, v) = keyed(k, v, 0);
            view.apply(0, 10 + i as i64, &k, &v);
        }
        let alerts = view.now("v").unwrap().alerts;
        assert_eq!(alerts.len(), MAX_ALERTS_PER_VENUE);
        assert!(
            !alerts.iter().any(|a| a.fingerprint == "a1"),
            "the oldest went"
        );
    }

    #[test]
    fn a_minute_tombstone_clears_its_slot() {
        let mut view = View::new("alerts", limits());
        let (k, v) = minute("v", T, &[("lobby", 2)], 0);
        view.apply(0, 0, &k, &v);
        let (k, v) = Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: Key::minute("v", T).encode(),
            value: None,
        })
        .encode(0);
        assert_eq!(view.apply(0, 1, &k, &v), Outcome::Applied);
        assert_eq!(view.now("v").unwrap().minute, None);
    }
}
