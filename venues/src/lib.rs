//! The live venue view for venue operations: every venue's and zone's
//! occupancy now and over the last hour, built from Kafka alone.
//!
//! # Design
//!
//! The processors' alerting sink keeps each venue's live state per
//! raw-topic partition and writes, with every batch's checkpoint, the
//! occupancy of each venue it touched for the minute of the venue's clock
//! (`schemas::venue_state`, a `Minute` record keyed by the minute of the
//! hour, so the compacted changelog holds each venue's last hour in 60
//! keys). This service follows that changelog ([`follow`]): every
//! partition, from its start, with no consumer group, so each replica holds
//! the whole view and a restart rebuilds it; the counts are correct with
//! any number of processor instances because they come from whichever
//! instance owns each partition, fenced by the writers' epochs as the
//! processors' own restore is (a record of an owner that had lost the
//! partition is ignored). This is the shape of a Kafka Streams global
//! table / interactive query over a changelog, with the aggregation done
//! where the state is authoritative and the view a bounded projection.
//!
//! The view ([`view::View`]) keeps per venue its zone names and 60
//! minutes of counts; its size is bounded by `view.max_venues` and
//! `view.max_zones`, never by traffic. Capacities come from the
//! configuration ([`config`]).
//!
//! Every change of a venue's newest minute is published to the live
//! stream ([`stream`]); ids are changelog positions, so a client resumes
//! on any replica.
//!
//! A venue's day (arrivals, dwell, footfall by local hour against the
//! same weekday last week) is the analytics store's ([`history`]), read
//! when a venue page asks and cached briefly.

pub mod config;
pub mod follow;
pub mod history;
pub mod http;
pub mod metrics;
pub mod stream;
pub mod summary;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::view::{Limits, Occupancy, Outcome, View};

/// What the HTTP handlers and the follower share.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The bearer token the API and pages accept, if any.
    pub token: Option<String>,
    /// The `user:password` they accept with Basic authentication, if any
    /// (what a browser sends).
    pub basic: Option<String>,
    /// The metrics.
    pub metrics: Metrics,
    /// The live stream's changes.
    pub hub: Arc<stream::Hub>,
    /// The analytics store's history, when configured.
    pub history: Option<history::History>,
    view: RwLock<View>,
    ready: AtomicBool,
    /// The all-venues snapshot event and the published count it is of.
    snapshot_cache: std::sync::Mutex<Option<(u64, bytes::Bytes)>>,
    /// Raised at shutdown: live streams end.
    pub stop: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// An empty view for `config` (its token read from the environment).
    pub fn new(config: Config, metrics: Metrics) -> Shared {
        let token = config
            .http
            .token_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok());
        let basic = config
            .http
            .basic_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok());
        let limits = Limits {
            max_venues: config.view.max_venues,
            max_zones: config.view.max_zones,
        };
        let history = config.history.as_ref().and_then(|h| {
            let zones = config
                .venues
                .iter()
                .filter_map(|(id, v)| Some((id.clone(), v.time_zone.clone()?)))
                .collect();
            history::History::new(h, &config.view.time_zone, zones)
                .map_err(|e| tracing::error!(error = %e, "history: not served"))
                .ok()
        });
        Shared {
            history,
            view: RwLock::new(View::new(&config.kafka.sink, limits)),
            token,
            basic,
            metrics,
            config,
            hub: Arc::new(stream::Hub::new()),
            ready: AtomicBool::new(false),
            snapshot_cache: std::sync::Mutex::new(None),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    /// Applies one changelog record, and publishes the venue's new
    /// occupancy to the live stream when it changed (once the view has
    /// caught up: see [`stream::Hub::skip`]).
    pub fn apply(&self, partition: i32, offset: i64, key: &[u8], value: &[u8]) -> Outcome {
        let (outcome, changed) = {
            let mut view = self
                .view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (outcome, venue) = view.apply_changed(partition, offset, key, value);
            let changed = venue.and_then(|v| view.now(&v).map(|now| (v, now)));
            (outcome, changed)
        };
        match changed {
            // Catching up: no stream is open yet (they wait for ready), so
            // the change is not summarised; a resume from before it gets
            // a snapshot.
            Some(_) if !self.is_ready() => self.hub.skip(partition, offset),
            Some((venue, now)) => {
                let data = self.occupancy_json(&venue, &now).to_string();
                self.hub
                    .publish(partition, offset, &venue, "occupancy", data);
            }
            None => self.hub.advance(partition, offset),
        }
        outcome
    }

    /// A venue's occupancy event: `{"venue": ..., "zones": [...],
    /// "alerts": [...], "vips": [...]}`.
    pub fn occupancy_json(&self, venue: &str, now: &Occupancy) -> serde_json::Value {
        let (v, zones) = summary::venue(&self.config, venue, now);
        let alerts = summary::alerts(&self.config, now);
        let vips = summary::vips(&self.config, now);
        serde_json::json!({ "venue": v, "zones": zones, "alerts": alerts, "vips": vips })
    }

    /// The whole state as a `snapshot` event's data: `{"venues": [...]}`,
    /// each as an occupancy event's; only `venue` when given.
    pub fn snapshot_json(&self, venue: Option<&str>) -> serde_json::Value {
        let venues: Vec<serde_json::Value> = self
            .snapshot_all()
            .iter()
            .filter(|(id, _)| venue.is_none_or(|v| v == id))
            .map(|(id, now)| self.occupancy_json(id, now))
            .collect();
        serde_json::json!({ "venues": venues })
    }

    /// A `snapshot` event at `position` (the stream's position when the
    /// client subscribed): of `venue`, or of every venue. The all-venues
    /// one is made once per published change and shared by every client
    /// that starts meanwhile (a reconnect storm costs one snapshot, not
    /// one per client); its `id:` may then be an earlier position with no
    /// change between.
    pub fn snapshot_frame(&self, venue: Option<&str>, position: &stream::Position) -> bytes::Bytes {
        let id = stream::format_id(position);
        if venue.is_some() {
            return stream::frame("snapshot", &id, &self.snapshot_json(venue).to_string());
        }
        let mut cache = self
            .snapshot_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let published = self.hub.published();
        if let Some((_, frame)) = cache.as_ref().filter(|(at, _)| *at == published) {
            return frame.clone();
        }
        let frame = stream::frame("snapshot", &id, &self.snapshot_json(None).to_string());
        *cache = Some((published, frame.clone()));
        frame
    }

    /// Every venue the view holds or the config names, with its occupancy.
    pub fn snapshot_all(&self) -> Vec<(String, Occupancy)> {
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(String, Occupancy)> = view
            .venue_ids()
            .filter_map(|id| Some((id.to_owned(), view.now(id)?)))
            .collect();
        for id in self.config.venues.keys() {
            if view.now(id).is_none() {
                out.push((id.clone(), empty()));
            }
        }
        out
    }

    /// `venue`'s occupancy and its `points` minutes ending with the one
    /// holding `until`; `None` for a venue neither held nor configured.
    pub fn snapshot(
        &self,
        venue: &str,
        until: i64,
        points: usize,
    ) -> Option<(Occupancy, Vec<Occupancy>)> {
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (view.now(venue), view.trend(venue, until, points)) {
            (Some(now), Some(trend)) => Some((now, trend)),
            _ if self.config.venues.contains_key(venue) => Some((empty(), vec![empty(); points])),
            _ => None,
        }
    }

    /// The minute `venue`'s newest record is as of.
    pub fn newest_minute(&self, venue: &str) -> Option<i64> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .now(venue)?
            .minute
    }

    /// Whether `venue` is held or configured.
    pub fn knows(&self, venue: &str) -> bool {
        self.config.venues.contains_key(venue)
            || self
                .view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .now(venue)
                .is_some()
    }

    /// Venues held.
    pub fn venue_count(&self) -> usize {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Marks the view caught up with the changelog.
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("caught up with the state changelog: ready");
        }
    }

    /// Whether the view has caught up with the changelog since the start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn empty() -> Occupancy {
    Occupancy {
        minute: None,
        devices: 0,
        zones: Vec::new(),
        alerts: Vec::new(),
        vips: Vec::new(),
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let listen = config.http.listen;
    let kafka = config.kafka.clone();
    let shared = Arc::new(Shared::new(config, metrics));
    let stop_tx = shared.stop.clone();
    let stop_rx = stop_tx.subscribe();
    let follower = tokio::spawn(follow::follow(kafka, shared.clone(), stop_rx.clone()));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "venue view listening");
    // The first stdout line, for scripts and tests that start the service.
    println!("listening on http://{bound}");
    let send_buffer = shared.config.http.send_buffer;
    let mut server = tokio::spawn(http::serve(
        listener,
        http::router(shared),
        send_buffer,
        stop_rx,
    ));
    tokio::select! {
        served = &mut server => served??,
        () = plumbing::shutdown_signal() => {
            tracing::info!("stopping: live streams end, connections get 5 s");
            let _ = stop_tx.send(true);
            server.await??;
        }
    }
    follower.abort();
    Ok(())
}
