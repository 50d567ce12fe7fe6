//! Every metric the processors export, in one registry per process.
//!
//! Labels are low-cardinality only: partition numbers, source names (ingest
//! only writes configured ones), sink names and reason codes. Never event
//! ids, ordering keys or event types.
//!
//! Register every metric through the [`Catalogue`] (the `counter` and
//! `gauge` helpers, or `r.add(&metric)`): it lists each family even before
//! it has a series, and `tests/tests/e2e/metrics.rs` checks the names, types and
//! labels, and that the alert rules and the Grafana dashboard only use
//! names declared here.

use std::time::Duration;

use plumbing::metrics::{Catalogue, Family};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// The processors' metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The same registry, with the list of declared families.
    pub catalogue: Catalogue,
    /// Records read from the raw topic, by partition.
    pub consumed: IntCounterVec,
    /// Records decoded and parsed into events, by source.
    pub decoded: IntCounterVec,
    /// Records sent to the quarantine topic, by source and reason.
    pub quarantined: IntCounterVec,
    /// Events waiting in the reorder buffer, by partition.
    pub reorder_buffered: IntGaugeVec,
    /// Gap timeouts (missing sequence numbers given up on), by partition.
    pub gaps: IntCounterVec,
    /// Sequence numbers skipped by gap timeouts, bounds and hand-overs.
    pub skipped_sequences: IntCounterVec,
    /// Releases forced early by a buffer bound, by partition and bound.
    pub forced: IntCounterVec,
    /// Events of sources ordered by `occurred_at` (`order_by`), released
    /// by the time-order buffer, by source and reason (`in_order`, `late`,
    /// `forced`, `drained`).
    pub time_ordered: IntCounterVec,
    /// Reorder keys reset because a sequence jumped beyond
    /// `processing.max_sequence_jump`, by source and reason
    /// (`jump_forward`, `jump_backward`).
    pub key_resets: IntCounterVec,
    /// Late events (their slot had passed), by source.
    pub late: IntCounterVec,
    /// Duplicates dropped (same source and event id), by source.
    pub duplicates: IntCounterVec,
    /// Events first known through polling (`verification.scheme =
    /// "polled"`) and applied: lost webhooks the poller recovered, by
    /// source.
    pub recovered: IntCounterVec,
    /// Events delivered and accepted, by sink.
    pub routed: IntCounterVec,
    /// Events no route matched, by source.
    pub unrouted: IntCounterVec,
    /// Events a matching route did not take, by route and reason
    /// (`too_old`: older than its `max_event_age`). Count through
    /// [`Metrics::route_skipped`], which logs the same skip.
    pub routes_skipped: IntCounterVec,
    /// Events a sink asked to retry, by sink.
    pub sink_retries: IntCounterVec,
    /// Events a sink's retries held past the `max_event_age` of the routes
    /// that sent them there: dropped for that sink, never sent late.
    pub sink_expired: IntCounterVec,
    /// Events a sink refused for good (dead-lettered), by sink.
    pub dead_lettered: IntCounterVec,
    /// One sink call, by sink.
    pub sink_latency: HistogramVec,
    /// Records read but not yet committable, by partition: held by the
    /// reorder buffer or a slow sink.
    pub commit_lag: IntGaugeVec,
    /// The broker's high watermark minus the consumer's position, by
    /// partition (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Offset stores and commits that failed, by kind (`store`, `commit`,
    /// `broker`).
    pub commit_failures: IntCounterVec,
    /// From an offset stored as committable to the brokers confirming its
    /// commit.
    pub commit_latency: Histogram,
    /// Partitions assigned to this instance now.
    pub assigned_partitions: IntGauge,
    /// Partitions paused now because their worker stopped taking records.
    pub paused_partitions: IntGauge,
    /// Events remembered by the dedupe store.
    pub dedupe_entries: IntGauge,
    /// CRM requests by sink and status (HTTP code, `timeout`, `connect`,
    /// `error`).
    pub crm_requests: IntCounterVec,
    /// 1 while a CRM sink's circuit is open (or half-open), by sink.
    pub crm_breaker_open: IntGaugeVec,
    /// Alerts raised, by sink and rule.
    pub alerts_raised: IntCounterVec,
    /// Alerts resolved, by sink and rule.
    pub alerts_resolved: IntCounterVec,
    /// Raises held back by a rule's cooldown, by sink and rule.
    pub alerts_suppressed: IntCounterVec,
    /// Events that did not drive live alert state, by sink and reason
    /// (`duplicate`, `late`, `stale`, `not_guest_wifi`).
    pub alerting_ignored: IntCounterVec,
    /// Alert notifications by sink, receiver and status (`sent`, `failed`
    /// attempts, `dropped` for good).
    pub alert_notifications: IntCounterVec,
    /// Firing alerts re-posted to Alertmanager, by sink and receiver.
    pub alert_refreshes: IntCounterVec,
    /// Notifications waiting in the outbox, by sink and receiver.
    pub alert_outbox_depth: IntGaugeVec,
    /// `replay`: records of the range handed to the pipeline, by partition.
    pub replay_records: IntCounterVec,
    /// `replay`: share of the range read, by partition (0 to 1).
    pub replay_progress: GaugeVec,
    /// `dlq redrive`: dead letters by sink and outcome.
    pub dlq_redriven: IntCounterVec,
    /// Partition workers that ended unexpectedly (a panic) and were
    /// restarted from their last stored position, by partition.
    pub worker_restarts: IntCounterVec,
    /// Bytes of records the instance holds now (its byte budget's use).
    pub buffered_bytes: IntGauge,
    /// Times the byte budget was used up and every partition paused.
    pub budget_pauses: IntCounter,
    /// Time to restore a partition's state from its changelog.
    pub state_restore_seconds: Histogram,
    /// Changelog records read by restores, by outcome (applied, stale,
    /// unreadable, expired).
    pub state_restored_records: IntCounterVec,
    /// Partitions restoring their state now (not processing yet).
    pub state_restoring: IntGauge,
    /// A batch checkpoint's steps (ledger and changelog appends until
    /// acknowledged, the dedupe store's commit) and the time a partition
    /// waited for the previous checkpoint before it could write the next.
    pub state_checkpoint_seconds: HistogramVec,
    /// Changelog records written, by kind (ledger, sequence, position,
    /// claim).
    pub state_changelog_records: IntCounterVec,
    /// Raw-topic records skipped at a partition's start because its
    /// restored state already reflects them.
    pub state_skipped_records: IntCounter,
    /// Events not offered to a sink again because its effect was recorded
    /// in the partition's state (before a crash or a hand-over), by sink.
    pub effects_already_applied: IntCounterVec,
    /// Rows a store removed because they were past its retention, by
    /// store (the sink's name, or `dedupe`) and table. Count through
    /// [`Metrics::retention_swept`], which logs the same sweep.
    pub retention_removed: IntCounterVec,
    /// Events a store did not keep because they were older than its
    /// retention horizon when offered (late, or replayed), by store.
    pub retention_refused: IntCounterVec,
    /// Partitions this instance stopped acting on because another
    /// instance claimed them while the group still had them here (a broker
    /// that gave one partition to two members), by partition.
    pub state_superseded: IntCounterVec,
    /// Retention sweeps that failed, by store.
    pub retention_sweep_failures: IntCounterVec,
    /// 1 while a store's latest retention sweep failed (rows past the
    /// retention, guests' data among them, are kept until one succeeds).
    pub retention_sweep_failing: IntGaugeVec,
}

fn counter(
    r: &Catalogue,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.add(&c)?;
    Ok(c)
}

fn gauge(
    r: &Catalogue,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.add(&g)?;
    Ok(g)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Catalogue::new();
        let sink_latency = HistogramVec::new(
            HistogramOpts::new(
                "processors_sink_latency_seconds",
                "One batch offered to a sink until it answered, by sink.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["sink"],
        )?;
        r.add(&sink_latency)?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "processors_commit_latency_seconds",
                "From an offset stored as committable to the brokers confirming its commit.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        r.add(&commit_latency)?;
        let assigned_partitions = IntGauge::new(
            "processors_assigned_partitions",
            "Partitions of the raw topic assigned to this instance.",
        )?;
        r.add(&assigned_partitions)?;
        let paused_partitions = IntGauge::new(
            "processors_paused_partitions",
            "Partitions paused because their worker stopped taking records (a sink failing); the consumer keeps polling.",
        )?;
        r.add(&paused_partitions)?;
        let dedupe_entries = IntGauge::new(
            "processors_dedupe_entries",
            "Applied (source, event id) pairs remembered by the dedupe store.",
        )?;
        r.add(&dedupe_entries)?;
        Ok(Metrics {
            consumed: counter(
                &r,
                "processors_consumed_total",
                "Records read from the raw topic, by partition.",
                &["partition"],
            )?,
            decoded: counter(
                &r,
                "processors_decoded_total",
                "Records decoded and parsed into events, by source.",
                &["source"],
            )?,
            quarantined: counter(
                &r,
                "processors_quarantined_total",
                "Records written to the quarantine topic, by source and reason.",
                &["source", "reason"],
            )?,
            reorder_buffered: gauge(
                &r,
                "processors_reorder_buffered",
                "Events waiting in the reorder buffer, by partition.",
                &["partition"],
            )?,
            gaps: counter(
                &r,
                "processors_reorder_gaps_total",
                "Gap timeouts: missing sequence numbers given up on, by partition.",
                &["partition"],
            )?,
            skipped_sequences: counter(
                &r,
                "processors_reorder_skipped_sequences_total",
                "Sequence numbers skipped (gap timeout, buffer bound), by partition.",
                &["partition"],
            )?,
            forced: counter(
                &r,
                "processors_reorder_forced_total",
                "Events released early because a buffer bound was hit, by partition and bound.",
                &["partition", "bound"],
            )?,
            time_ordered: counter(
                &r,
                "processors_reorder_by_occurrence_total",
                "Events of sources ordered by occurred_at, released by source and reason (in_order, late, forced, drained).",
                &["source", "reason"],
            )?,
            key_resets: counter(
                &r,
                "processors_reorder_key_resets_total",
                "Reorder keys started again because a sequence jumped beyond max_sequence_jump, by source and reason (jump_forward, jump_backward).",
                &["source", "reason"],
            )?,
            late: counter(
                &r,
                "processors_late_events_total",
                "Events that arrived after their sequence slot passed, by source.",
                &["source"],
            )?,
            duplicates: counter(
                &r,
                "processors_duplicates_dropped_total",
                "Duplicates (same source and event id) dropped, by source.",
                &["source"],
            )?,
            recovered: counter(
                &r,
                "processors_recovered_events_total",
                "Events the poller produced that no webhook had delivered, applied, by source.",
                &["source"],
            )?,
            routed: counter(
                &r,
                "processors_routed_total",
                "Events accepted by a sink, by sink.",
                &["sink"],
            )?,
            unrouted: counter(
                &r,
                "processors_unrouted_total",
                "Events no route matched, by source.",
                &["source"],
            )?,
            routes_skipped: counter(
                &r,
                "processors_route_skipped_total",
                "Events a matching route did not take, by route and reason (too_old: occurred_at older than the route's max_event_age when routed).",
                &["route", "reason"],
            )?,
            sink_retries: counter(
                &r,
                "processors_sink_retries_total",
                "Events a sink asked to offer again later, by sink.",
                &["sink"],
            )?,
            sink_expired: counter(
                &r,
                "processors_sink_expired_total",
                "Events a sink's retries held past the max_event_age of the routes that sent them there: dropped for that sink, not sent late.",
                &["sink"],
            )?,
            dead_lettered: counter(
                &r,
                "processors_dead_lettered_total",
                "Events a sink refused for good, written to the dead-letter topic, by sink.",
                &["sink"],
            )?,
            sink_latency,
            commit_latency,
            commit_lag: gauge(
                &r,
                "processors_commit_lag",
                "Records read but not yet committable (reorder buffer, sinks), by partition.",
                &["partition"],
            )?,
            consumer_lag: gauge(
                &r,
                "processors_consumer_lag",
                "High watermark minus the consumer position, by partition.",
                &["partition"],
            )?,
            commit_failures: counter(
                &r,
                "processors_commit_failures_total",
                "Offset stores and commits that failed, by kind: store (offset not stored, expected right after a revocation), commit (the hand-over commit), broker (a commit the brokers refused).",
                &["kind"],
            )?,
            crm_requests: counter(
                &r,
                "processors_crm_requests_total",
                "CRM requests by sink and status (HTTP code, timeout, connect, error).",
                &["sink", "status"],
            )?,
            crm_breaker_open: gauge(
                &r,
                "processors_crm_breaker_open",
                "1 while a CRM sink's circuit breaker is open or half-open, by sink.",
                &["sink"],
            )?,
            alerts_raised: counter(
                &r,
                "processors_alerts_raised_total",
                "Alerts raised, by sink and rule.",
                &["sink", "rule"],
            )?,
            alerts_resolved: counter(
                &r,
                "processors_alerts_resolved_total",
                "Alerts resolved, by sink and rule.",
                &["sink", "rule"],
            )?,
            alerts_suppressed: counter(
                &r,
                "processors_alerts_suppressed_total",
                "Alert raises held back by the rule's cooldown, by sink and rule.",
                &["sink", "rule"],
            )?,
            alerting_ignored: counter(
                &r,
                "processors_alerting_events_ignored_total",
                "Events that did not drive live alert state, by sink and reason (duplicate, late, stale, future, not_guest_wifi).",
                &["sink", "reason"],
            )?,
            alert_notifications: counter(
                &r,
                "processors_alert_notifications_total",
                "Alert notifications by sink, receiver and status (sent, failed attempt, dropped).",
                &["sink", "receiver", "status"],
            )?,
            alert_refreshes: counter(
                &r,
                "processors_alert_refreshes_total",
                "Firing alerts re-posted to Alertmanager, by sink and receiver.",
                &["sink", "receiver"],
            )?,
            alert_outbox_depth: gauge(
                &r,
                "processors_alert_outbox_depth",
                "Alert notifications waiting to be delivered, by sink and receiver.",
                &["sink", "receiver"],
            )?,
            replay_records: counter(
                &r,
                "processors_replay_records_total",
                "Records of the replayed range handed to the pipeline, by partition.",
                &["partition"],
            )?,
            replay_progress: {
                let g = GaugeVec::new(
                    Opts::new(
                        "processors_replay_progress_ratio",
                        "Share of the replayed range read, by partition (0 to 1).",
                    ),
                    &["partition"],
                )?;
                r.add(&g)?;
                g
            },
            buffered_bytes: {
                let g = IntGauge::new(
                    "processors_buffered_bytes",
                    "Bytes of records held between the consumer and the sinks (channels, held records, reorder buffers, batches), against processing.max_buffered_bytes.",
                )?;
                r.add(&g)?;
                g
            },
            budget_pauses: {
                let c = IntCounter::new(
                    "processors_budget_pauses_total",
                    "Times the byte budget (processing.max_buffered_bytes) was used up and every partition paused until use fell to three quarters.",
                )?;
                r.add(&c)?;
                c
            },
            state_restore_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "processors_state_restore_seconds",
                        "Time to restore a partition's state from its changelog before it processes records.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
                )?;
                r.add(&h)?;
                h
            },
            state_restored_records: counter(
                &r,
                "processors_state_restored_records_total",
                "Changelog records read while restoring partitions, by outcome (applied, stale: a previous owner's after the next claim, unreadable, expired, unconfirmed: a ledger record whose batch's state never reached the changelog).",
                &["outcome"],
            )?,
            state_restoring: {
                let g = IntGauge::new(
                    "processors_state_restoring_partitions",
                    "Partitions restoring their state from the changelog now; they process nothing until restored.",
                )?;
                r.add(&g)?;
                g
            },
            state_checkpoint_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "processors_state_checkpoint_seconds",
                        "A batch checkpoint's steps, by step: ledger and changelog (append until acknowledged), dedupe (the store's commit), waited (a partition waiting for its previous checkpoint before it writes the next).",
                    )
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
                    &["step"],
                )?;
                r.add(&h)?;
                h
            },
            state_changelog_records: counter(
                &r,
                "processors_state_changelog_records_total",
                "Records written to the state changelog, by kind (ledger, sequence, position, claim, effect).",
                &["kind"],
            )?,
            state_skipped_records: {
                let c = IntCounter::new(
                    "processors_state_skipped_records_total",
                    "Raw-topic records skipped at a partition's start because its restored state already reflects them.",
                )?;
                r.add(&c)?;
                c
            },
            effects_already_applied: counter(
                &r,
                "processors_effects_already_applied_total",
                "Events not offered to a sink again because the partition's state records that the sink applied them (before a crash or a hand-over), by sink.",
                &["sink"],
            )?,
            worker_restarts: counter(
                &r,
                "processors_worker_restarts_total",
                "Partition workers that ended unexpectedly (a panic) and were restarted from their last stored position, by partition.",
                &["partition"],
            )?,
            retention_removed: counter(
                &r,
                "processors_retention_removed_total",
                "Rows a store removed because they were older than its retention, by store (sink name, or dedupe) and table.",
                &["store", "table"],
            )?,
            retention_refused: counter(
                &r,
                "processors_retention_refused_total",
                "Events a store accepted without keeping them because they were older than its retention horizon (late or replayed), by store.",
                &["store"],
            )?,
            state_superseded: counter(
                &r,
                "processors_state_superseded_total",
                "Times a partition's worker found another instance's newer claim in the state changelog while the group still gave it the partition, and stopped acting on it, by partition.",
                &["partition"],
            )?,
            retention_sweep_failures: counter(
                &r,
                "processors_retention_sweep_failures_total",
                "Retention sweeps that failed, by store (each is tried again at the next interval).",
                &["store"],
            )?,
            retention_sweep_failing: gauge(
                &r,
                "processors_retention_sweep_failing",
                "1 while a store's latest retention sweep failed: rows past its retention are kept until a sweep succeeds, by store.",
                &["store"],
            )?,
            dlq_redriven: counter(
                &r,
                "processors_dlq_redriven_total",
                "Dead letters re-driven, by sink and outcome (accepted, failing, left, expired).",
                &["sink", "outcome"],
            )?,
            assigned_partitions,
            paused_partitions,
            dedupe_entries,
            registry: r.registry().clone(),
            catalogue: r,
        })
    }

    /// A route skipped `event`: counted by route and reason, and logged
    /// (with the request id, so the event can be followed), here in one
    /// place so the two cannot drift.
    pub fn route_skipped(
        &self,
        skip: &crate::pipeline::route::Skip<'_>,
        event: &crate::event::Event,
        request_id: &str,
    ) {
        self.routes_skipped
            .with_label_values(&[skip.route, skip.reason])
            .inc();
        tracing::info!(
            route = skip.route,
            reason = skip.reason,
            age = %humantime::format_duration(Duration::from_secs(skip.age.as_secs())),
            source = %event.source,
            event_id = %event.event_id,
            request_id,
            "route skipped the event"
        );
    }

    /// A retention sweep of `store` removed `removed` rows (by table):
    /// counted and logged here in one place, so the two cannot drift. The
    /// line names the store, the tables and the counts, never a row.
    pub fn retention_swept(&self, store: &str, removed: &[(&str, u64)], took: Duration) {
        for (table, n) in removed {
            self.retention_removed
                .with_label_values(&[store, table])
                .inc_by(*n);
        }
        let total: u64 = removed.iter().map(|(_, n)| n).sum();
        let tables = removed
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            store,
            removed = total,
            tables = %tables,
            took_ms = took.as_millis() as u64,
            "retention sweep"
        );
    }

    /// Drops the per-partition gauges of a partition this instance no
    /// longer owns (counters stay: they only add up).
    pub fn forget_partition(&self, partition: i32) {
        let p = partition.to_string();
        for g in [&self.consumer_lag, &self.commit_lag, &self.reorder_buffered] {
            // Absent when the partition never reported: nothing to drop.
            let _ = g.remove_label_values(&[&p]);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.catalogue.render()
    }

    /// Every metric family the processors declare (whether or not it has a
    /// series yet).
    pub fn families(&self) -> Vec<Family> {
        self.catalogue.families()
    }
}
