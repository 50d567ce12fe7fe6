//! The provider's REST history API, as the simulator serves it beside its
//! webhooks (`ingest send --api-listen`): every event the simulator
//! generated, whether its webhook was delivered or lost, readable the way
//! a real platform offers its history.
//!
//! - `GET /api/v1/events?cursor=C&limit=N`: the feed, in the order the
//!   provider recorded the events; `since` and `until` (RFC 3339) keep only
//!   the events recorded in that wall-clock range (the reconciliation
//!   sweep's window).
//! - `GET /api/v1/venues/{venue}/events?from_sequence=A&to_sequence=B`:
//!   one venue's events by sequence (both ends included), same paging.
//!
//! A page is `{"items": [...], "next_cursor": "...", "has_more": bool}`;
//! each item is the exact JSON the webhook carried (or would have). The
//! cursor is opaque to clients; an empty page answers the cursor it was
//! asked with, so a repeat poll asks the same URL again. Every page has an
//! `ETag` (a hash of the page) and a `Last-Modified` (when its newest event
//! was recorded); `If-None-Match` (or, without it, `If-Modified-Since`)
//! that still matches is answered `304` with no body. Requests need
//! `Authorization: Bearer TOKEN`.
//!
//! Misbehaviour, configured per run ([`ApiFaults`]): a rate limit answered
//! `429` with `Retry-After`, a share of `503`, slow pages, malformed pages,
//! items without `id`, and a `next_cursor` that goes back to the page's
//! own start. Every
//! request is recorded with its arrival time and status and listed at
//! `GET /_sim/stats`, so tests can check a client's manners from the
//! provider's side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Largest page the API serves; a larger `limit` is cut to it.
pub const MAX_PAGE: usize = 1000;

/// How the API misbehaves.
#[derive(Debug, Clone, Default)]
pub struct ApiFaults {
    /// Requests accepted in any 60 s; past it `429` (absent: no limit).
    pub limit_per_minute: Option<u32>,
    /// The `Retry-After` of a `429`, whole seconds.
    pub retry_after: Duration,
    /// Share of requests answered `503` (0-1).
    pub errors: f64,
    /// Share of pages answered after [`ApiFaults::slow_delay`] (0-1).
    pub slow: f64,
    /// How long a slow page takes.
    pub slow_delay: Duration,
    /// Share of pages that are not valid JSON (0-1).
    pub malformed: f64,
    /// Share of items served without their `id` (0-1).
    pub missing_id: f64,
    /// Share of non-empty pages whose `next_cursor` goes back to the
    /// page's own start: a client that follows it reads the same page
    /// forever (0-1).
    pub cursor_back: f64,
}

/// One event as the provider recorded it.
#[derive(Debug, Clone)]
struct Recorded {
    /// Venue (ordering key).
    venue: String,
    /// Per-venue sequence.
    sequence: u64,
    /// When the provider recorded it, Unix milliseconds (wall clock).
    at_ms: i64,
    /// The exact JSON of the event.
    body: Vec<u8>,
    /// The event id.
    id: String,
    /// Not in the history at all (`--api-forget`): a gap nobody can fill.
    forgotten: bool,
}

/// One request the API received.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// Arrival, Unix milliseconds.
    pub at_ms: i64,
    /// Status answered.
    pub status: u16,
    /// Path and query.
    pub uri: String,
}

/// The history and what the API has seen, shared with the sender.
pub struct History {
    /// Events in the order recorded; the position is the cursor.
    events: Mutex<Vec<Recorded>>,
    /// Requests received, in order.
    seen: Mutex<Vec<Seen>>,
    /// Arrivals of the requests counted against the rate limit, last 60 s.
    window: Mutex<VecDeque<std::time::Instant>>,
    /// Webhooks lost on purpose so far.
    pub lost: std::sync::atomic::AtomicU64,
    /// Their event ids.
    lost_ids: Mutex<Vec<String>>,
    /// Lost events the history forgot too.
    forgotten_ids: Mutex<Vec<String>>,
    /// Set when the sender has generated everything.
    pub done: std::sync::atomic::AtomicBool,
    /// The fault dice.
    rng: Mutex<StdRng>,
    /// Misbehaviour.
    faults: ApiFaults,
    /// The bearer token clients must present.
    token: String,
}

impl History {
    /// An empty history served with `faults`, seeded.
    pub fn new(faults: ApiFaults, token: String, seed: u64) -> Arc<History> {
        Arc::new(History {
            events: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            window: Mutex::new(VecDeque::new()),
            lost: Default::default(),
            lost_ids: Default::default(),
            forgotten_ids: Default::default(),
            done: Default::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xa91)),
            faults,
            token,
        })
    }

    /// Records one generated event (at generation, before its webhook is
    /// sent or lost).
    pub fn record(&self, venue: &str, sequence: u64, body: &[u8]) {
        let mut events = lock(&self.events);
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        events.push(Recorded {
            venue: venue.to_string(),
            sequence,
            at_ms: now_ms(),
            body: body.to_vec(),
            id,
            forgotten: false,
        });
    }

    /// Notes that the webhook of event `id` was lost; with `forget`, the
    /// event leaves the history too (the API never serves it).
    pub fn lose(&self, id: &str, forget: bool) {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.lost_ids).push(id.to_string());
        if forget {
            let mut events = lock(&self.events);
            if let Some(e) = events.iter_mut().rev().find(|e| e.id == id) {
                e.forgotten = true;
            }
            lock(&self.forgotten_ids).push(id.to_string());
        }
    }

    fn roll(&self, share: f64) -> bool {
        share > 0.0 && lock(&self.rng).random::<f64>() < share
    }

    fn note(&self, at_ms: i64, status: u16, uri: String) {
        lock(&self.seen).push(Seen { at_ms, status, uri });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The API's routes.
pub fn router(history: Arc<History>) -> Router {
    Router::new()
        .route("/api/v1/events", get(feed))
        .route("/api/v1/venues/{venue}/events", get(venue_events))
        .route("/_sim/stats", get(stats))
        .with_state(history)
}

/// Query parameters of both listings.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    since: Option<String>,
    until: Option<String>,
    from_sequence: Option<u64>,
    to_sequence: Option<u64>,
}

/// Which events a listing covers.
struct Filter {
    venue: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    from_sequence: Option<u64>,
    to_sequence: Option<u64>,
}

impl Filter {
    fn keeps(&self, e: &Recorded) -> bool {
        !e.forgotten
            && self.venue.as_ref().is_none_or(|v| *v == e.venue)
            && self.since_ms.is_none_or(|s| e.at_ms >= s)
            && self.until_ms.is_none_or(|u| e.at_ms < u)
            && self.from_sequence.is_none_or(|f| e.sequence >= f)
            && self.to_sequence.is_none_or(|t| e.sequence <= t)
    }
}

async fn feed(
    State(h): State<Arc<History>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<PageQuery>,
) -> Response {
    serve_page(&h, &headers, uri, q, None).await
}

async fn venue_events(
    State(h): State<Arc<History>>,
    Path(venue): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<PageQuery>,
) -> Response {
    serve_page(&h, &headers, uri, q, Some(venue)).await
}

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "detail": detail}})),
    )
        .into_response()
}

fn parse_time(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Position encoded in a cursor: `p` and a decimal number.
fn parse_cursor(c: &str) -> Option<usize> {
    c.strip_prefix('p')?.parse().ok()
}

/// `Last-Modified` in IMF-fixdate.
fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

async fn serve_page(
    h: &History,
    headers: &HeaderMap,
    uri: axum::http::Uri,
    q: PageQuery,
    venue: Option<String>,
) -> Response {
    let arrived = now_ms();
    let uri = uri.to_string();
    let (status, response) = answer(h, headers, q, venue).await;
    h.note(arrived, status.as_u16(), uri);
    response
}

async fn answer(
    h: &History,
    headers: &HeaderMap,
    q: PageQuery,
    venue: Option<String>,
) -> (StatusCode, Response) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(h.token.as_str()) {
        let s = StatusCode::UNAUTHORIZED;
        return (
            s,
            error(s, "unauthorized", "a valid bearer token is needed"),
        );
    }
    if let Some(limit) = h.faults.limit_per_minute {
        let now = std::time::Instant::now();
        let mut w = lock(&h.window);
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            w.pop_front();
        }
        if w.len() >= limit as usize {
            let s = StatusCode::TOO_MANY_REQUESTS;
            let mut r = error(s, "rate_limited", "too many requests");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(h.faults.retry_after.as_secs()),
            );
            return (s, r);
        }
        w.push_back(now);
    }
    if h.roll(h.faults.errors) {
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return (s, error(s, "unavailable", "try again"));
    }
    let bad = |detail: &str| {
        let s = StatusCode::BAD_REQUEST;
        (s, error(s, "bad_request", detail))
    };
    let start = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => match parse_cursor(c) {
            Some(p) => p,
            None => return bad("unknown cursor"),
        },
    };
    let since_ms = match q.since.as_deref().map(parse_time) {
        Some(None) => return bad("since is not RFC 3339"),
        other => other.flatten(),
    };
    let until_ms = match q.until.as_deref().map(parse_time) {
        Some(None) => return bad("until is not RFC 3339"),
        other => other.flatten(),
    };
    let filter = Filter {
        venue,
        since_ms,
        until_ms,
        from_sequence: q.from_sequence,
        to_sequence: q.to_sequence,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    // The page: matching events from the cursor on, and whether more follow.
    let (items, next, has_more, last_modified) = {
        let events = lock(&h.events);
        let mut items = Vec::new();
        let mut next = start.min(events.len());
        let mut has_more = false;
        let mut newest = events[..start.min(events.len())]
            .iter()
            .rev()
            .find(|e| filter.keeps(e))
            .map_or(0, |e| e.at_ms);
        for (pos, e) in events.iter().enumerate().skip(start) {
            if !filter.keeps(e) {
                continue;
            }
            if items.len() == limit {
                has_more = true;
                break;
            }
            items.push(e.body.clone());
            newest = newest.max(e.at_ms);
            next = pos + 1;
        }
        if !has_more {
            // Nothing further matches now: the cursor moves past what was
            // scanned, so the next poll starts from the end.
            next = next.max(if items.is_empty() {
                start
            } else {
                events.len()
            });
        }
        (items, next, has_more, newest)
    };
    let mut next_cursor = format!("p{next}");
    if !items.is_empty() && h.roll(h.faults.cursor_back) {
        next_cursor = format!("p{start}");
    }
    let mut body = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if h.roll(h.faults.missing_id) {
            body.extend_from_slice(&without_id(item));
        } else {
            body.extend_from_slice(item);
        }
    }
    body.extend_from_slice(
        format!("],\"next_cursor\":\"{next_cursor}\",\"has_more\":{has_more}}}").as_bytes(),
    );
    if h.roll(h.faults.malformed) {
        body.truncate(body.len() / 2);
    }
    let etag = {
        use sha2::{Digest, Sha256};
        format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..12]))
    };
    let modified = http_date(last_modified);
    let not_modified = match headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        Some(tags) => tags.split(',').any(|t| t.trim() == etag),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|t| last_modified / 1000 <= t.as_secs() as i64),
    };
    if h.roll(h.faults.slow) {
        tokio::time::sleep(h.faults.slow_delay).await;
    }
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&modified) {
        response.headers_mut().insert(header::LAST_MODIFIED, v);
    }
    (response.status(), response)
}

/// The item with its top-level `id` member removed (re-serialised: such an
/// item is broken anyway).
fn without_id(item: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(item) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("id");
            serde_json::Value::Object(m).to_string().into_bytes()
        }
        _ => item.to_vec(),
    }
}

/// What `/_sim/stats` answers.
#[derive(Debug, Serialize)]
struct Stats<'a> {
    /// Events generated (and recorded in the history).
    recorded: usize,
    /// Webhooks lost on purpose.
    lost: u64,
    /// Whether the sender has generated everything.
    done: bool,
    /// The ids of the lost webhooks' events.
    lost_ids: &'a [String],
    /// Those the history forgot too.
    forgotten_ids: &'a [String],
    /// Every API request so far (this endpoint excluded).
    requests: &'a [Seen],
}

async fn stats(State(h): State<Arc<History>>) -> Response {
    let recorded = lock(&h.events).len();
    let seen = lock(&h.seen);
    let lost_ids = lock(&h.lost_ids);
    let forgotten_ids = lock(&h.forgotten_ids);
    axum::Json(Stats {
        recorded,
        lost: h.lost.load(std::sync::atomic::Ordering::Relaxed),
        done: h.done.load(std::sync::atomic::Ordering::Relaxed),
        lost_ids: &lost_ids,
        forgotten_ids: &forgotten_ids,
        requests: &seen,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn history(faults: ApiFaults) -> Arc<History> {
        let h = History::new(faults, "tok".into(), 1);
        for (v, s) in [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)] {
            h.record(
                v,
                s,
                format!(r#"{{"id":"{v}{s}","sequence":{s}}}"#).as_bytes(),
            );
        }
        h
    }

    async fn get(
        h: &Arc<History>,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(uri).header("authorization", "Bearer tok");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let r = router(h.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_and_a_repeat_with_the_etag_is_304() {
        let h = history(ApiFaults::default());
        let (s, _, body) = get(&h, "/api/v1/events?limit=2", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"items":[{"id":"a1","sequence":1},{"id":"b1","sequence":1}],"next_cursor":"p2","has_more":true}"#
        );
        let (_, _, body) = get(&h, "/api/v1/events?limit=5&cursor=p2", &[]).await;
        assert!(
            body.ends_with(r#""next_cursor":"p5","has_more":false}"#),
            "{body}"
        );
        // At the end: an empty page that names the same cursor.
        let (s, headers, body) = get(&h, "/api/v1/events?cursor=p5", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, r#"{"items":[],"next_cursor":"p5","has_more":false}"#);
        let etag = headers["etag"].to_str().unwrap().to_string();
        let (s, _, body) = get(&h, "/api/v1/events?cursor=p5", &[("if-none-match", &etag)]).await;
        assert_eq!((s, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
        // Something new: the same request is a 200 with it.
        h.record("b", 3, br#"{"id":"b3"}"#);
        let (s, _, body) = get(&h, "/api/v1/events?cursor=p5", &[("if-none-match", &etag)]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("b3"), "{body}");
    }

    #[tokio::test]
    async fn a_venue_by_sequence_range() {
        let h = history(ApiFaults::default());
        let (_, _, body) = get(
            &h,
            "/api/v1/venues/a/events?from_sequence=2&to_sequence=3",
            &[],
        )
        .await;
        assert_eq!(
            body,
            r#"{"items":[{"id":"a2","sequence":2},{"id":"a3","sequence":3}],"next_cursor":"p5","has_more":false}"#
        );
        let (_, _, body) = get(
            &h,
            "/api/v1/events?since=2000-01-01T00:00:00Z&until=2001-01-01T00:00:00Z",
            &[],
        )
        .await;
        assert_eq!(body, r#"{"items":[],"next_cursor":"p0","has_more":false}"#);
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after_and_bad_tokens_401() {
        let h = history(ApiFaults {
            limit_per_minute: Some(2),
            retry_after: Duration::from_secs(5),
            ..ApiFaults::default()
        });
        for _ in 0..2 {
            assert_eq!(get(&h, "/api/v1/events", &[]).await.0, StatusCode::OK);
        }
        let (s, headers, _) = get(&h, "/api/v1/events", &[]).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "5");
        let r = router(h.clone())
            .oneshot(
                Request::get("/api/v1/events")
                    .header("authorization", "Bearer nope")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let seen: Vec<u16> = lock(&h.seen).iter().map(|s| s.status).collect();
        assert_eq!(seen, [200, 200, 429, 401]);
    }

    #[tokio::test]
    async fn faults_break_pages_items_and_cursors() {
        let h = history(ApiFaults {
            malformed: 1.0,
            ..ApiFaults::default()
        });
        let (_, _, body) = get(&h, "/api/v1/events", &[]).await;
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
        let h = history(ApiFaults {
            missing_id: 1.0,
            cursor_back: 1.0,
            ..ApiFaults::default()
        });
        let (_, _, body) = get(&h, "/api/v1/events?cursor=p2&limit=1", &[]).await;
        assert_eq!(
            body,
            r#"{"items":[{"sequence":2}],"next_cursor":"p2","has_more":true}"#
        );
    }
}
