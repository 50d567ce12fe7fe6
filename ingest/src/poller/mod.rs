//! The poller (`ingest poll`): reads sources' events from the provider's
//! REST history API and produces them to the raw topic as the same
//! envelope a webhook becomes, so the processors de-duplicate a webhook and
//! a polled copy of one event by its id, and nothing downstream needs to
//! know how an event arrived.
//!
//! - [`config`]: `[poller]` and each source's `poll` table, and their checks.
//! - [`cursor`]: each source's feed cursor, kept in a compacted Kafka topic.
//! - [`gaps`]: gap-triggered reconciliation: the processors' reconcile
//!   requests in, unfillable gaps recorded.
//! - [`SourcePoller`]: one source's loop: scheduled polling of the feed
//!   from its cursor and the reconciliation sweep over a recent window,
//!   with conditional requests, `Retry-After`, backoff with jitter and a
//!   request budget.
//!
//! An item becomes an envelope with the exact bytes the API returned for
//! it, the event id, ordering key and sequence taken from those bytes as
//! the source's webhooks are read ([`crate::source::Source::extract`]),
//! `verification.scheme = "polled"` and the poll request's id as
//! `request_id`; it is produced with ingest's producer (`acks=all`,
//! idempotent), and a feed cursor moves only past pages whose every event
//! was acknowledged.

pub mod config;
pub mod cursor;
pub mod gaps;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plumbing::metrics::Catalogue;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{
    ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
};
use schemas::EnvelopeRef;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::poller::config::PollConfig;
use crate::poller::cursor::CursorStore;
use crate::producer::KafkaProducer;
use crate::secret::Secret;
use crate::source::Source;

/// The verification scheme recorded on polled events.
pub const POLLED_SCHEME: &str = "polled";
/// Attempts at one page before the run gives up until its next turn.
const MAX_ATTEMPTS: u32 = 5;
/// First backoff after a failure; doubled per attempt, with jitter.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The budget's window: a minute, and a margin so that the provider,
/// counting arrivals, never sees more than the budget in its own minute.
const BUDGET_WINDOW: Duration = Duration::from_millis(60_500);
/// Largest page body read.
const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;

/// The poller's metrics.
#[derive(Clone)]
pub struct PollMetrics {
    /// The registry `/metrics` renders.
    pub catalogue: Catalogue,
    /// Requests to providers by source and outcome (`200`, `304`, `429`,
    /// `5xx`, `4xx`, `error`).
    pub requests: IntCounterVec,
    /// Events produced to the raw topic by polling, by source and mode
    /// (`poll`, `reconcile`).
    pub events: IntCounterVec,
    /// Pages and items refused, by source and reason (`malformed_page`,
    /// `item_without_id`, `cursor_backwards`, `delivery_failed`,
    /// `cursor_not_stored`).
    pub problems: IntCounterVec,
    /// Requests sent to the source's provider in the last minute.
    pub budget_used: IntGaugeVec,
    /// The source's `max_requests_per_minute`.
    pub budget_limit: IntGaugeVec,
    /// Gaps the processors asked for, by source and outcome
    /// (`requested`, `filled`, `unfillable`, `failed`).
    pub gaps: IntCounterVec,
}

impl PollMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<PollMetrics, prometheus::Error> {
        let catalogue = Catalogue::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ingest_poll_requests_total",
                "Requests the poller sent to providers' APIs, by source and outcome.",
            ),
            &["source", "outcome"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "ingest_poll_events_total",
                "Events the poller produced to the raw topic (the processors drop those they already had), by source and mode.",
            ),
            &["source", "mode"],
        )?;
        let problems = IntCounterVec::new(
            Opts::new(
                "ingest_poll_problems_total",
                "Pages and items the poller refused or could not store, by source and reason.",
            ),
            &["source", "reason"],
        )?;
        let budget_used = IntGaugeVec::new(
            Opts::new(
                "ingest_poll_budget_used_requests",
                "Requests sent to the source's provider in the last minute.",
            ),
            &["source"],
        )?;
        let budget_limit = IntGaugeVec::new(
            Opts::new(
                "ingest_poll_budget_limit_requests",
                "The source's request budget per minute (max_requests_per_minute).",
            ),
            &["source"],
        )?;
        let gaps = IntCounterVec::new(
            Opts::new(
                "ingest_poll_gaps_total",
                "Sequence gaps the processors asked the poller to fetch, by source and outcome.",
            ),
            &["source", "outcome"],
        )?;
        catalogue.add(&gaps)?;
        catalogue.add(&requests)?;
        catalogue.add(&events)?;
        catalogue.add(&problems)?;
        catalogue.add(&budget_used)?;
        catalogue.add(&budget_limit)?;
        Ok(PollMetrics {
            catalogue,
            requests,
            events,
            problems,
            budget_used,
            budget_limit,
            gaps,
        })
    }
}

/// The sliding-window request budget of one source.
#[derive(Debug)]
pub struct Budget {
    /// Most requests in any window.
    limit: usize,
    /// When the requests of the current window were sent.
    sent: VecDeque<Instant>,
}

impl Budget {
    /// A budget of `limit` requests per minute.
    pub fn new(limit: u32) -> Budget {
        Budget {
            limit: limit.max(1) as usize,
            sent: VecDeque::new(),
        }
    }

    /// When the next request may be sent (now or later).
    pub fn next_free(&mut self, now: Instant) -> Instant {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= BUDGET_WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit {
            now
        } else {
            self.sent[self.sent.len() - self.limit] + BUDGET_WINDOW
        }
    }

    /// Records a request sent at `now`.
    pub fn spend(&mut self, now: Instant) {
        self.sent.push_back(now);
    }

    /// Requests in the current window.
    pub fn used(&self) -> usize {
        self.sent.len()
    }
}

/// The delay before attempt `attempt + 1` after a failure: exponential,
/// capped, with "equal jitter" (between half and all of it).
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let full = BACKOFF_INITIAL
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = full / 2;
    half + full.saturating_sub(half).mul_f64(rng.random::<f64>())
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One page of the API.
#[derive(Debug, serde::Deserialize)]
struct Page<'a> {
    /// The events, each as the exact text the API returned.
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
    /// Where the next page starts.
    #[serde(default)]
    next_cursor: Option<String>,
    /// Whether more events follow now.
    #[serde(default)]
    has_more: bool,
}

/// How one request ended.
enum Fetched {
    /// A page: its body and the request id.
    Page(bytes::Bytes, String),
    /// `304`: nothing changed since the last answer to this URL.
    NotModified,
    /// Gave up for this run (logged and counted).
    Failed,
}

/// Why a run stopped early (already logged and counted).
#[derive(Debug)]
struct Stopped;

/// One source's poller.
pub struct SourcePoller {
    /// The source: name and where id, key and sequence come from.
    source: Arc<Source>,
    /// Its `poll` table.
    poll: PollConfig,
    /// The API's bearer token.
    token: Secret,
    /// HTTP client for the API.
    client: reqwest::Client,
    /// The raw-topic producer (ingest's).
    producer: Arc<KafkaProducer>,
    /// Where the feed cursor is kept.
    cursors: Arc<CursorStore>,
    /// How long one record may take to be acknowledged.
    delivery_timeout: Duration,
    /// Metrics.
    metrics: PollMetrics,
    /// The request budget.
    budget: Budget,
    /// No request before this (`Retry-After`, backoff).
    not_before: Instant,
    /// Validators of the last 200 per URL: `ETag`, `Last-Modified`.
    validators: HashMap<String, (Option<String>, Option<String>)>,
    /// The feed cursor.
    cursor: Option<String>,
    /// Gaps to fetch (from the reconcile topic), if any.
    gap_requests: Option<tokio::sync::mpsc::Receiver<gaps::GapRequest>>,
    /// Where unfillable gaps are recorded.
    unfillable_topic: String,
}

impl SourcePoller {
    /// A poller for `source`, starting from `cursor`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: Arc<Source>,
        poll: PollConfig,
        token: Secret,
        producer: Arc<KafkaProducer>,
        cursors: Arc<CursorStore>,
        delivery_timeout: Duration,
        metrics: PollMetrics,
        cursor: Option<String>,
    ) -> Result<SourcePoller, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(poll.request_timeout)
            .user_agent(concat!("ingest-poller/", env!("CARGO_PKG_VERSION")))
            .build()?;
        metrics
            .budget_limit
            .with_label_values(&[&source.name])
            .set(i64::from(poll.max_requests_per_minute));
        Ok(SourcePoller {
            budget: Budget::new(poll.max_requests_per_minute),
            source,
            poll,
            token,
            client,
            producer,
            cursors,
            delivery_timeout,
            metrics,
            not_before: Instant::now(),
            validators: HashMap::new(),
            cursor,
            gap_requests: None,
            unfillable_topic: String::new(),
        })
    }

    /// The source's name.
    pub fn source_name(&self) -> &str {
        &self.source.name
    }

    /// Fetches the gaps that arrive on `requests` from `poll.range_url`,
    /// recording those the provider cannot fill in `unfillable_topic`.
    pub fn with_gaps(
        mut self,
        requests: tokio::sync::mpsc::Receiver<gaps::GapRequest>,
        unfillable_topic: &str,
    ) -> SourcePoller {
        self.gap_requests = Some(requests);
        self.unfillable_topic = unfillable_topic.to_string();
        self
    }

    /// Polls and reconciles on schedule until `shutdown` changes.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let start = Instant::now();
        let mut next_poll = self.poll.interval.map(|_| start);
        let mut next_sweep = self.poll.reconcile.as_ref().map(|_| start);
        tracing::info!(source = %self.source.name, cursor = ?self.cursor, "polling");
        loop {
            // With neither, only gap requests wake the loop.
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            let due = match (next_poll, next_sweep) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) if self.gap_requests.is_some() => far,
                (None, None) => return,
            };
            let gap = {
                let requests = self.gap_requests.as_mut();
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => None,
                    Some(g) = async { match requests { Some(r) => r.recv().await, None => None } } => Some(g),
                    _ = shutdown.changed() => return,
                }
            };
            if let Some(gap) = gap {
                let work = self.fill_gap(gap);
                tokio::select! {
                    _ = work => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if next_poll.is_some_and(|t| t <= Instant::now()) {
                let work = self.follow_feed();
                tokio::select! {
                    _ = work => {}
                    _ = shutdown.changed() => return,
                }
                next_poll = self.poll.interval.map(|i| Instant::now() + i);
            }
            if next_sweep.is_some_and(|t| t <= Instant::now()) {
                let work = self.sweep();
                tokio::select! {
                    _ = work => {}
                    _ = shutdown.changed() => return,
                }
                next_sweep = self
                    .poll
                    .reconcile
                    .as_ref()
                    .map(|r| Instant::now() + r.interval);
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .requests
            .with_label_values(&[&self.source.name, outcome])
            .inc();
    }

    fn problem(&self, reason: &str) {
        self.metrics
            .problems
            .with_label_values(&[&self.source.name, reason])
            .inc();
    }

    /// Scheduled polling: the feed from the stored cursor to its end.
    async fn follow_feed(&mut self) {
        let mut used: HashSet<Option<String>> = HashSet::new();
        loop {
            let cursor = self.cursor.clone();
            used.insert(cursor.clone());
            let url = self.url(&[
                ("cursor", cursor.as_deref()),
                ("limit", Some(&self.poll.page_size.to_string())),
            ]);
            let Ok((count, next, has_more)) = self.page(&url, true, "poll", &used).await else {
                return;
            };
            let Some(next) = next else { return };
            if Some(&next) != cursor.as_ref() {
                self.cursor = Some(next.clone());
                if let Err(e) = self.cursors.store(&self.source.name, &next).await {
                    self.problem("cursor_not_stored");
                    tracing::warn!(source = %self.source.name, error = %e, "cursor not stored: a restart re-reads from an older cursor");
                }
            }
            if count == 0 || !has_more {
                return;
            }
        }
    }

    /// The reconciliation sweep: every event recorded in the last window.
    async fn sweep(&mut self) {
        let Some(window) = self.poll.reconcile.as_ref().map(|r| r.window) else {
            return;
        };
        let now = SystemTime::now();
        let since = humantime::format_rfc3339_millis(now - window).to_string();
        let until = humantime::format_rfc3339_millis(now).to_string();
        let mut used: HashSet<Option<String>> = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut total = 0;
        loop {
            used.insert(cursor.clone());
            let url = self.url(&[
                ("since", Some(&since)),
                ("until", Some(&until)),
                ("cursor", cursor.as_deref()),
                ("limit", Some(&self.poll.page_size.to_string())),
            ]);
            let Ok((count, next, has_more)) = self.page(&url, false, "reconcile", &used).await
            else {
                return;
            };
            total += count;
            if count == 0 || !has_more || next.is_none() {
                break;
            }
            cursor = next;
        }
        tracing::info!(source = %self.source.name, events = total, since, until, "reconciliation sweep done");
    }

    /// The feed URL with `params` added to its query.
    fn url(&self, params: &[(&str, Option<&str>)]) -> String {
        with_query(&self.poll.url, params)
    }

    /// Fetches one page and produces its events. Answers the number of
    /// events, the next cursor and whether more follow; a 304 is an empty
    /// page that keeps the cursor.
    async fn page(
        &mut self,
        url: &str,
        conditional: bool,
        mode: &str,
        used: &HashSet<Option<String>>,
    ) -> Result<(usize, Option<String>, bool), Stopped> {
        self.page_with(url, conditional, mode, used)
            .await
            .map(|(n, next, more, _)| (n, next, more))
    }

    /// [`Self::page`], also answering the (ordering key, sequence) of each
    /// event produced.
    async fn page_with(
        &mut self,
        url: &str,
        conditional: bool,
        mode: &str,
        used: &HashSet<Option<String>>,
    ) -> Result<PageOutcome, Stopped> {
        let (body, rid) = match self.fetch(url, conditional).await {
            Fetched::NotModified => return Ok((0, None, false, Vec::new())),
            Fetched::Failed => return Err(Stopped),
            Fetched::Page(body, rid) => (body, rid),
        };
        let page: Page = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                self.problem("malformed_page");
                tracing::warn!(source = %self.source.name, request_id = %rid, error = %e, bytes = body.len(), "malformed page: not the API's JSON; retried next turn");
                return Err(Stopped);
            }
        };
        if !page.items.is_empty() && page.next_cursor.is_some() && used.contains(&page.next_cursor)
        {
            self.problem("cursor_backwards");
            tracing::warn!(source = %self.source.name, request_id = %rid, "the API's next cursor goes back to one already read: page dropped, retried next turn");
            return Err(Stopped);
        }
        let produced = self.produce(&page.items, &rid, mode).await?;
        Ok((produced.len(), page.next_cursor, page.has_more, produced))
    }

    /// Fetches exactly the gap's range from `poll.range_url`, produces what
    /// the provider has, and records the rest as unfillable (once).
    async fn fill_gap(&mut self, gap: gaps::GapRequest) {
        let name = self.source.name.clone();
        let gaps_metric = self.metrics.gaps.clone();
        let count = |outcome: &str| {
            gaps_metric.with_label_values(&[&name, outcome]).inc();
        };
        count("requested");
        let Some(template) = self.poll.range_url.clone() else {
            count("failed");
            tracing::warn!(source = %name, ordering_key = %gap.ordering_key, "a gap asked for, but the source has no poll.range_url");
            return;
        };
        let key: String = url_component(&gap.ordering_key);
        let base = template.replace("{key}", &key);
        let (from, to) = (gap.from_sequence.to_string(), gap.to_sequence.to_string());
        let mut used: HashSet<Option<String>> = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut found: HashSet<i64> = HashSet::new();
        loop {
            used.insert(cursor.clone());
            let url = with_query(
                &base,
                &[
                    ("from_sequence", Some(&from)),
                    ("to_sequence", Some(&to)),
                    ("cursor", cursor.as_deref()),
                    ("limit", Some(&self.poll.page_size.to_string())),
                ],
            );
            let Ok((n, next, has_more, produced)) = self.page_with(&url, false, "gap", &used).await
            else {
                count("failed");
                tracing::warn!(source = %name, ordering_key = %gap.ordering_key, from_sequence = gap.from_sequence, to_sequence = gap.to_sequence, "gap not fetched (the reconciliation sweep may still find it)");
                return;
            };
            found.extend(
                produced
                    .into_iter()
                    .filter(|(k, _)| k.as_deref() == Some(gap.ordering_key.as_str()))
                    .filter_map(|(_, s)| s),
            );
            if n == 0 || !has_more || next.is_none() {
                break;
            }
            cursor = next;
        }
        let missing: Vec<i64> = (gap.from_sequence..=gap.to_sequence)
            .filter(|s| !found.contains(s))
            .collect();
        if missing.is_empty() {
            count("filled");
            tracing::info!(source = %name, ordering_key = %gap.ordering_key, from_sequence = gap.from_sequence, to_sequence = gap.to_sequence, "gap filled from the provider");
            return;
        }
        let record = gaps::Unfillable {
            source: gap.source.clone(),
            ordering_key: gap.ordering_key.clone(),
            from_sequence: gap.from_sequence,
            to_sequence: gap.to_sequence,
            missing,
            recorded_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        count("unfillable");
        tracing::warn!(source = %name, ordering_key = %gap.ordering_key, from_sequence = gap.from_sequence, to_sequence = gap.to_sequence, missing = ?record.missing, "gap the provider cannot fill either: recorded as unfillable");
        let value = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(e) = self
            .cursors
            .write(&self.unfillable_topic, &record.key(), &value)
            .await
        {
            tracing::warn!(source = %name, error = %e, "unfillable gap not recorded");
        }
    }

    /// Produces a page's items; fails if any record was not acknowledged.
    async fn produce(
        &self,
        items: &[&RawValue],
        rid: &str,
        mode: &str,
    ) -> Result<Vec<(Option<String>, Option<i64>)>, Stopped> {
        let received_at_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let deadline = Instant::now() + self.delivery_timeout;
        let empty = HeaderMap::new();
        let mut records = Vec::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            let body = item.get().as_bytes();
            let extracted = self.source.extract(&empty, body);
            let Some(event_id) = extracted.event_id else {
                self.problem("item_without_id");
                tracing::warn!(source = %self.source.name, request_id = %rid, bytes = body.len(), "item without an id skipped");
                continue;
            };
            let envelope = EnvelopeRef {
                event_id: &event_id,
                source: &self.source.name,
                received_at_micros,
                body,
                headers: &[],
                content_type: Some("application/json"),
                client_addr: None,
                scheme: POLLED_SCHEME,
                secret_id: "poll-token",
                ordering_key: extracted.ordering_key.as_deref(),
                sequence: extracted.sequence,
                request_id: rid,
            };
            let payload = envelope.encode();
            let key = extracted
                .ordering_key
                .clone()
                .unwrap_or_else(|| event_id.clone());
            records.push((key, payload, event_id));
            keys.push((extracted.ordering_key, extracted.sequence));
        }
        let count = records.len();
        let deliveries = records.into_iter().map(|(key, payload, id)| async move {
            self.producer
                .deliver(
                    key.as_bytes(),
                    payload,
                    &self.source.name,
                    &id,
                    received_at_micros / 1000,
                    deadline,
                )
                .await
        });
        let outcomes = futures::future::join_all(deliveries).await;
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        if failed > 0 {
            self.problem("delivery_failed");
            tracing::warn!(source = %self.source.name, request_id = %rid, failed, "events not acknowledged by the brokers: the cursor stays, retried next turn");
            return Err(Stopped);
        }
        self.metrics
            .events
            .with_label_values(&[&self.source.name, mode])
            .inc_by(count as u64);
        Ok(keys)
    }

    /// Sends one GET, within the budget and after any `Retry-After`, with
    /// the validators of the last answer to this URL; retries 429, 5xx and
    /// transport errors up to [`MAX_ATTEMPTS`] times.
    async fn fetch(&mut self, url: &str, conditional: bool) -> Fetched {
        let name = self.source.name.clone();
        for attempt in 0..MAX_ATTEMPTS {
            tokio::time::sleep_until(self.not_before).await;
            let free = self.budget.next_free(Instant::now());
            tokio::time::sleep_until(free).await;
            let now = Instant::now();
            let _ = self.budget.next_free(now);
            self.budget.spend(now);
            self.metrics
                .budget_used
                .with_label_values(&[&name])
                .set(self.budget.used() as i64);
            let rid = uuid::Uuid::now_v7().to_string();
            let mut req = self
                .client
                .get(url)
                .header("authorization", {
                    let mut v = b"Bearer ".to_vec();
                    v.extend_from_slice(self.token.expose());
                    let mut v = reqwest::header::HeaderValue::from_bytes(&v)
                        .unwrap_or(reqwest::header::HeaderValue::from_static(""));
                    v.set_sensitive(true);
                    v
                })
                .header("x-request-id", &rid);
            if conditional && let Some((etag, modified)) = self.validators.get(url) {
                if let Some(e) = etag {
                    req = req.header(IF_NONE_MATCH, e);
                }
                if let Some(m) = modified {
                    req = req.header(IF_MODIFIED_SINCE, m);
                }
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.count("error");
                    let wait = backoff(attempt, &mut rand::rng());
                    tracing::warn!(source = %name, request_id = %rid, error = %e, ?wait, "poll request failed");
                    self.not_before = Instant::now() + wait;
                    continue;
                }
            };
            let status = resp.status();
            match status {
                StatusCode::OK => {
                    let validators = (
                        header_text(resp.headers(), ETAG),
                        header_text(resp.headers(), LAST_MODIFIED),
                    );
                    match read_capped(resp).await {
                        Ok(body) => {
                            self.count("200");
                            self.validators.insert(url.to_string(), validators);
                            return Fetched::Page(body, rid);
                        }
                        Err(e) => {
                            self.count("error");
                            let wait = backoff(attempt, &mut rand::rng());
                            tracing::warn!(source = %name, request_id = %rid, error = %e, ?wait, "reading a page failed");
                            self.not_before = Instant::now() + wait;
                        }
                    }
                }
                StatusCode::NOT_MODIFIED => {
                    self.count("304");
                    return Fetched::NotModified;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.count("429");
                    let wait = header_text(resp.headers(), RETRY_AFTER)
                        .and_then(|v| retry_after(&v, SystemTime::now()))
                        .unwrap_or_else(|| backoff(attempt, &mut rand::rng()));
                    tracing::info!(source = %name, request_id = %rid, ?wait, "rate limited by the provider: waiting as told");
                    self.not_before = Instant::now() + wait;
                }
                s if s.is_server_error() => {
                    self.count("5xx");
                    let wait = backoff(attempt, &mut rand::rng());
                    tracing::warn!(source = %name, request_id = %rid, status = s.as_u16(), ?wait, "provider error");
                    self.not_before = Instant::now() + wait;
                }
                s => {
                    self.count("4xx");
                    tracing::error!(source = %name, request_id = %rid, status = s.as_u16(), "the provider refused the poll request (check url and token): retried next turn");
                    return Fetched::Failed;
                }
            }
        }
        tracing::warn!(source = %name, attempts = MAX_ATTEMPTS, "giving up on this page until the next turn");
        Fetched::Failed
    }
}

/// One page's outcome: events produced, the next cursor, whether more
/// follow, and each produced event's (ordering key, sequence).
type PageOutcome = (
    usize,
    Option<String>,
    bool,
    Vec<(Option<String>, Option<i64>)>,
);

/// `base` with `params` added to its query.
fn with_query(base: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut url = match reqwest::Url::parse(base) {
        Ok(u) => u,
        // Checked at load.
        Err(_) => return base.to_string(),
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    url.to_string()
}

/// `s` percent-encoded for one path segment.
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn header_text(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

async fn read_capped(mut resp: reqwest::Response) -> Result<bytes::Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if buf.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(format!("page larger than {MAX_PAGE_BYTES} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_budget_never_allows_more_than_its_limit_in_a_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(3);
        let mut sent = Vec::new();
        let mut now = t0;
        for _ in 0..10 {
            now = b.next_free(now).max(now);
            b.spend(now);
            sent.push(now);
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < BUDGET_WINDOW)
                .count();
            assert!(in_window <= 3, "{in_window} requests in a window");
        }
        // The first three at once, then one window later.
        assert_eq!(sent[2], t0);
        assert_eq!(sent[3], t0 + BUDGET_WINDOW);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for attempt in 0..20 {
            let full = BACKOFF_INITIAL
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            let d = backoff(attempt, &mut rng);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let a: Vec<_> = (0..5).map(|_| backoff(3, &mut rng)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "no jitter: {a:?}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_after("5", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("soon", now), None);
    }
}
