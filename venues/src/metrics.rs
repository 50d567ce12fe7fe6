//! The view's metrics (`/metrics`).

use plumbing::metrics::Catalogue;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts};

/// Every metric of the view.
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` renders.
    pub catalogue: Catalogue,
    /// Changelog records read, by outcome.
    pub records: IntCounterVec,
    /// Venues the view holds.
    pub venues: IntGauge,
    /// Changelog partitions not caught up yet since the start.
    pub catching_up: IntGauge,
    /// Seconds between the newest record's append to the changelog and
    /// its application here.
    pub lag: Gauge,
    /// Live-stream clients connected now.
    pub stream_clients: IntGauge,
    /// Live-stream clients dropped for falling too far behind.
    pub stream_dropped: IntCounter,
}

impl Metrics {
    /// Registers every metric in a new catalogue.
    pub fn new() -> prometheus::Result<Metrics> {
        let catalogue = Catalogue::new();
        let records = IntCounterVec::new(
            Opts::new(
                "venues_changelog_records_total",
                "State changelog records read, by outcome: applied, claim, stale (a previous owner's, written after the next claim), ignored (not the view's), unreadable, refused (past view.max_venues, view.max_zones or a name length).",
            ),
            &["outcome"],
        )?;
        catalogue.add(&records)?;
        let venues = IntGauge::new("venues_view_venues", "Venues the view holds.")?;
        catalogue.add(&venues)?;
        let catching_up = IntGauge::new(
            "venues_catching_up_partitions",
            "Changelog partitions not read to the end they had at the start yet; /readyz is 503 until 0.",
        )?;
        catalogue.add(&catching_up)?;
        let lag = Gauge::new(
            "venues_view_lag_seconds",
            "Seconds between the newest applied record's append to the changelog (its Kafka timestamp) and its application in the view.",
        )?;
        catalogue.add(&lag)?;
        let stream_clients = IntGauge::new(
            "venues_stream_clients",
            "Live-stream (SSE) clients connected now.",
        )?;
        catalogue.add(&stream_clients)?;
        let stream_dropped = IntCounter::new(
            "venues_stream_dropped_total",
            "Live-stream clients dropped (their connection closed) because they fell more than the shared buffer behind.",
        )?;
        catalogue.add(&stream_dropped)?;
        Ok(Metrics {
            stream_clients,
            stream_dropped,
            catalogue,
            records,
            venues,
            catching_up,
            lag,
        })
    }
}
