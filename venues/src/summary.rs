//! A venue's summary as the API and the live stream show it: devices,
//! capacity, how full (the level) per venue and zone, from the view's
//! occupancy and the configured capacities.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::view::Occupancy;

/// How full a zone or venue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Under `capacity.near`.
    Ok,
    /// From `capacity.near` of capacity.
    Near,
    /// At or over capacity.
    Over,
}

pub fn level(devices: u32, capacity: u32, near: f64) -> Level {
    let share = f64::from(devices) / f64::from(capacity.max(1));
    if share >= 1.0 {
        Level::Over
    } else if share >= near {
        Level::Near
    } else {
        Level::Ok
    }
}

pub fn percent(devices: u32, capacity: u32) -> f64 {
    (f64::from(devices) * 1000.0 / f64::from(capacity.max(1))).round() / 10.0
}

pub fn rfc3339(micros: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct Zone {
    /// The zone.
    pub zone: String,
    /// Devices present.
    pub devices: u32,
    /// Devices it holds.
    pub capacity: u32,
    /// Devices over capacity, in per cent (one decimal).
    pub percent: f64,
    /// How full.
    pub level: Level,
    /// Devices a minute over the trend's span (the venue page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Venue {
    /// The venue id.
    pub id: String,
    /// Its configured name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Devices present.
    pub devices: u32,
    /// Devices it holds.
    pub capacity: u32,
    /// Devices over capacity, in per cent (one decimal).
    pub percent: f64,
    /// How full the venue as a whole is.
    pub level: Level,
    /// The minute of the venue's clock the counts are as of.
    pub as_of: Option<String>,
    /// Zones near capacity.
    pub zones_near: Vec<String>,
    /// Zones at or over capacity.
    pub zones_over: Vec<String>,
    /// Alerts firing now (the processors' alerting sink's).
    pub alerts_firing: usize,
    /// VIP guests present.
    pub vips_present: usize,
    /// The fullest of the venue and its zones (0 to 1 and beyond): the
    /// board's order.
    #[serde(skip)]
    pub pressure: f64,
}

/// A venue's summary and its zones' (sorted by name), from its
/// occupancy and the capacities of `c`.
pub fn venue(c: &Config, id: &str, now: &Occupancy) -> (Venue, Vec<Zone>) {
    let near = c.capacity.near;
    let mut zones: Vec<(String, u32)> = now.zones.clone();
    // Configured zones show even before a device was seen in them.
    if let Some(v) = c.venues.get(id) {
        for z in v.zones.keys() {
            if !zones.iter().any(|(n, _)| n == z) {
                zones.push((z.clone(), 0));
            }
        }
    }
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    let zones: Vec<Zone> = zones
        .into_iter()
        .map(|(zone, devices)| {
            let capacity = c.zone_capacity(id, &zone);
            Zone {
                devices,
                capacity,
                percent: percent(devices, capacity),
                level: level(devices, capacity, near),
                zone,
                trend: None,
            }
        })
        .collect();
    let configured = c.venues.get(id);
    let capacity = configured
        .and_then(|v| v.capacity)
        .unwrap_or_else(|| zones.iter().map(|z| z.capacity).sum::<u32>())
        .max(1);
    let pressure = zones
        .iter()
        .map(|z| f64::from(z.devices) / f64::from(z.capacity.max(1)))
        .fold(f64::from(now.devices) / f64::from(capacity), f64::max);
    let v = Venue {
        id: id.to_owned(),
        name: configured.and_then(|v| v.name.clone()),
        devices: now.devices,
        capacity,
        percent: percent(now.devices, capacity),
        level: level(now.devices, capacity, near),
        as_of: now.minute.map(rfc3339),
        zones_near: zones
            .iter()
            .filter(|z| z.level == Level::Near)
            .map(|z| z.zone.clone())
            .collect(),
        zones_over: zones
            .iter()
            .filter(|z| z.level == Level::Over)
            .map(|z| z.zone.clone())
            .collect(),
        alerts_firing: now.alerts.iter().filter(|a| a.firing).count(),
        vips_present: now.vips.len(),
        pressure,
    };
    (v, zones)
}

/// An alert as the API and the stream show it.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `ZoneOverCapacity`, `VipArrival`, `DwellOverThreshold`.
    pub name: String,
    /// The zone it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `firing` or `resolved` (a VIP arrival is a notice: `resolved`).
    pub status: &'static str,
    /// When it started (event time).
    pub since: String,
    /// When it cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// What happened.
    pub summary: String,
    /// The guest it is about: shown with `view.show_guest_names`, else
    /// masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
}

/// The venue's alerts (firing first), guests masked unless configured.
pub fn alerts(c: &Config, now: &Occupancy) -> Vec<Alert> {
    now.alerts
        .iter()
        .map(|a| Alert {
            name: a.name.clone(),
            zone: a.zone.clone(),
            status: if a.firing { "firing" } else { "resolved" },
            since: rfc3339(a.starts_at),
            ended: a.ends_at.map(rfc3339),
            summary: a.summary.clone(),
            guest: a.guest.as_ref().map(|g| {
                if c.view.show_guest_names {
                    g.clone()
                } else {
                    "(masked)".to_owned()
                }
            }),
        })
        .collect()
}

/// A VIP guest present, as the API and the stream show them.
#[derive(Debug, Clone, Serialize)]
pub struct Vip {
    /// The guest's first name (else id) with `view.show_guest_names`,
    /// else `(masked)`.
    pub guest: String,
    /// The zone they are in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// When they arrived (event time).
    pub since: String,
}

/// The venue's VIPs present (the newest arrival first), masked unless
/// configured.
pub fn vips(c: &Config, now: &Occupancy) -> Vec<Vip> {
    now.vips
        .iter()
        .map(|v| Vip {
            guest: if c.view.show_guest_names {
                v.name.clone().unwrap_or_else(|| v.guest.clone())
            } else {
                "(masked)".to_owned()
            },
            zone: v.zone.clone(),
            since: rfc3339(v.since),
        })
        .collect()
}
