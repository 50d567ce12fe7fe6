//! The HTTP API: `/api/venues`, `/api/venues/{id}` (JSON, read-only,
//! behind the bearer token when one is configured), `/healthz`, `/readyz`
//! and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::Shared;
use crate::summary::{Level, Venue, rfc3339, venue};
use crate::view::MINUTE;

/// The router of the whole service.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/", get(page))
        .route("/venues/{id}", get(page))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/api/venues", get(list))
        .route("/api/venues/events", get(stream_all))
        .route("/api/venues/{id}", get(detail))
        .route("/api/venues/{id}/events", get(stream_venue))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// A JSON error: `{"error": "..."}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The page (board or venue: the script tells them apart), embedded.
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../assets/page.html"),
    )
        .into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/app.js"),
    )
        .into_response()
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if shared.token.is_none() && shared.basic.is_none() {
        return next.run(request).await;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let same = |a: &[u8], b: &str| bool::from(a.ct_eq(b.as_bytes()));
    let ok = match given {
        Some(v) => match (v.strip_prefix("Bearer "), v.strip_prefix("Basic ")) {
            (Some(t), _) => shared
                .token
                .as_deref()
                .is_some_and(|want| same(t.as_bytes(), want)),
            (_, Some(b)) => {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .unwrap_or_default();
                shared
                    .basic
                    .as_deref()
                    .is_some_and(|want| same(&decoded, want))
            }
            _ => false,
        },
        None => false,
    };
    if ok {
        return next.run(request).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        match (&shared.token, &shared.basic) {
            (Some(_), Some(_)) => {
                "credentials are required (Authorization: Bearer <token>, or Basic)"
            }
            (Some(_), None) => "a bearer token is required (Authorization: Bearer <token>)",
            _ => "credentials are required (Authorization: Basic)",
        },
    );
    // A browser asks for a user name and password on a Basic challenge.
    let challenge = if shared.basic.is_some() {
        "Basic realm=\"venues\", charset=\"UTF-8\""
    } else {
        "Bearer"
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let left = shared.metrics.catching_up.get();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("catching up: {left} changelog partitions not read to their end yet"),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.venues.set(shared.venue_count() as i64);
    shared
        .metrics
        .stream_clients
        .set(shared.hub.clients() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.catalogue.render(),
    )
        .into_response()
}

/// `GET /api/venues`: every venue the view holds or the config names.
///
/// Parameters: `sort` = `pressure` (default: the fullest zone or venue
/// first), `name`, `devices`; `level` = `ok`, `near`, `over` (venues whose
/// venue or any zone is at least that full); `q` (the id or name
/// contains it, any case); `limit` (1 to 10,000).
async fn list(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut sort = "pressure";
    let mut at_least = Level::Ok;
    let mut q: Option<String> = None;
    let mut limit = 10_000usize;
    for (k, v) in &params {
        match k.as_str() {
            "sort" => match v.as_str() {
                "pressure" | "name" | "devices" => sort = v,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("sort: {v:?} is not one of pressure, name, devices"),
                    );
                }
            },
            "level" => {
                at_least = match v.as_str() {
                    "ok" => Level::Ok,
                    "near" => Level::Near,
                    "over" => Level::Over,
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("level: {v:?} is not one of ok, near, over"),
                        );
                    }
                }
            }
            "q" => q = Some(v.to_lowercase()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=10_000).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {v:?} is not a number from 1 to 10000"),
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{k}: unknown parameter (sort, level, q, limit)"),
                );
            }
        }
    }
    let mut venues: Vec<Venue> = shared
        .snapshot_all()
        .iter()
        .map(|(id, now)| venue(&shared.config, id, now).0)
        .filter(|v| {
            let worst = [
                v.level,
                if v.zones_near.is_empty() {
                    Level::Ok
                } else {
                    Level::Near
                },
                if v.zones_over.is_empty() {
                    Level::Ok
                } else {
                    Level::Over
                },
            ]
            .into_iter()
            .max()
            .unwrap_or(Level::Ok);
            worst >= at_least
        })
        .filter(|v| {
            q.as_ref().is_none_or(|q| {
                v.id.to_lowercase().contains(q)
                    || v.name
                        .as_ref()
                        .is_some_and(|n| n.to_lowercase().contains(q))
            })
        })
        .collect();
    match sort {
        "name" => venues.sort_by(|a, b| {
            let name = |v: &Venue| v.name.as_ref().unwrap_or(&v.id).to_lowercase();
            name(a).cmp(&name(b)).then_with(|| a.id.cmp(&b.id))
        }),
        "devices" => venues.sort_by(|a, b| b.devices.cmp(&a.devices).then_with(|| a.id.cmp(&b.id))),
        _ => venues.sort_by(|a, b| {
            b.pressure
                .total_cmp(&a.pressure)
                .then_with(|| a.id.cmp(&b.id))
        }),
    }
    let total = venues.len();
    venues.truncate(limit);
    Json(json!({ "total": total, "venues": venues })).into_response()
}

/// `GET /api/venues/{id}`: the venue, its zones and the last hour.
///
/// Parameter: `minutes` (1 to 60, default 60): the trend's length, one
/// point a minute ending with the current minute (or the venue's newest,
/// when its event clock is ahead).
async fn detail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut minutes = 60usize;
    for (k, v) in &params {
        match k.as_str() {
            "minutes" => match v.parse::<usize>() {
                Ok(n) if (1..=60).contains(&n) => minutes = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("minutes: {v:?} is not a number from 1 to 60"),
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{k}: unknown parameter (minutes)"),
                );
            }
        }
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    // The trend ends with the current minute, or with the venue's newest
    // one when its clock (event time) runs ahead of this host's.
    let now_micros = shared.newest_minute(&id).map_or(wall, |m| m.max(wall));
    let Some((now, trend)) = shared.snapshot(&id, now_micros, minutes) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("venue {id:?} is not known (no occupancy recorded and none configured)"),
        );
    };
    let (v, mut zones) = venue(&shared.config, &id, &now);
    for z in &mut zones {
        z.trend = Some(
            trend
                .iter()
                .map(|o| {
                    o.zones
                        .iter()
                        .find(|(n, _)| *n == z.zone)
                        .map_or(0, |(_, c)| *c)
                })
                .collect(),
        );
    }
    let from = now_micros - now_micros.rem_euclid(MINUTE) - (minutes as i64 - 1) * MINUTE;
    let history = match &shared.history {
        None => serde_json::Value::Null,
        Some(h) => match h.venue(&id, jiff::Timestamp::now()).await {
            Ok(h) => json!(*h),
            Err(e) => json!({ "error": e.to_string() }),
        },
    };
    Json(json!({
        "venue": v,
        "zones": zones,
        "alerts": crate::summary::alerts(&shared.config, &now),
        "vips": crate::summary::vips(&shared.config, &now),
        "trend": {
            "from": rfc3339(from),
            "step_seconds": 60,
            "devices": trend.iter().map(|o| o.devices).collect::<Vec<_>>(),
        },
        "history": history,
    }))
    .into_response()
}

/// Closes the connection a request came on, even when its client reads
/// nothing (see [`serve`]).
#[derive(Clone)]
pub struct Kill(pub Arc<tokio::sync::Notify>);

/// Serves `app` on `listener` until `stop`, each connection in its own
/// task that ends (closing the socket) when a handler asks through the
/// request's [`Kill`]: a live stream whose client fell too far behind is
/// closed at once, whether or not its client reads. At `stop`, live
/// streams end and open connections get five seconds to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    send_buffer: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if send_buffer > 0 {
            let sock = socket2::SockRef::from(&stream);
            if let Err(e) = sock.set_send_buffer_size(send_buffer as usize) {
                tracing::warn!(error = %e, "http.send_buffer: not set on a connection");
            }
        }
        let kill = Arc::new(tokio::sync::Notify::new());
        let app = app.clone();
        let handle = Kill(kill.clone());
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(handle.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = kill.notified() => tracing::debug!("connection of a dropped live-stream client closed"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 5 s after the stop: closed");
    }
    Ok(())
}

/// `GET /api/venues/events`: every venue's changes.
async fn stream_all(
    State(shared): State<Arc<Shared>>,
    kill: Option<axum::Extension<Kill>>,
    headers: HeaderMap,
) -> Response {
    live(shared, None, kill.map(|k| k.0), &headers)
}

/// `GET /api/venues/{id}/events`: one venue's changes.
async fn stream_venue(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    kill: Option<axum::Extension<Kill>>,
    headers: HeaderMap,
) -> Response {
    if !shared.knows(&id) {
        return error(
            StatusCode::NOT_FOUND,
            format!("venue {id:?} is not known (no occupancy recorded and none configured)"),
        );
    }
    live(shared, Some(id), kill.map(|k| k.0), &headers)
}

/// What one live-stream client has to go through.
struct Client {
    shared: Arc<Shared>,
    first: std::collections::VecDeque<bytes::Bytes>,
    /// When to send a heartbeat if nothing else was sent.
    next_beat: tokio::time::Instant,
    rx: tokio::sync::broadcast::Receiver<Arc<crate::stream::Change>>,
    position: crate::stream::Position,
    venue: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    gone: Arc<std::sync::atomic::AtomicBool>,
    kill: Option<Kill>,
    dropped: bool,
    _guard: crate::stream::ClientGuard,
}

/// The text of the last event a dropped client gets.
fn dropped_message() -> String {
    json!({
        "error": format!(
            "dropped: more than {} changes behind (a client that does not read fast enough); reconnect with Last-Event-ID to resume",
            crate::stream::BROADCAST
        )
    })
    .to_string()
}

fn live(
    shared: Arc<Shared>,
    venue: Option<String>,
    kill: Option<Kill>,
    headers: &HeaderMap,
) -> Response {
    use std::sync::atomic::Ordering;
    let from = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match crate::stream::parse_id(text) {
            Some(p) => Some(p),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: not an id of this stream (partition:offset,...)",
                );
            }
        },
        Some(Err(_)) => {
            return error(StatusCode::BAD_REQUEST, "Last-Event-ID: not visible ASCII");
        }
    };
    if !shared.is_ready() {
        // Changes are not published while the view catches up: a stream
        // opened now would show a partial view that does not move.
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the view is catching up with the state changelog (see /readyz): retry shortly",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return r;
    }
    let Some(guard) = shared.hub.join(shared.config.http.max_streams) else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} live streams are open already (http.max_streams): retry later",
                shared.config.http.max_streams
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(shared.hub.published()));
    // Set by whichever notices first that the client fell behind (the
    // watchdog or its own stream): it is dropped, and counted, once.
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rx, start, position) = shared.hub.subscribe(from.as_ref());
    let mut first = std::collections::VecDeque::new();
    match start {
        crate::stream::Start::Snapshot => {
            first.push_back(shared.snapshot_frame(venue.as_deref(), &position));
        }
        crate::stream::Start::Changes(changes) => {
            for c in changes
                .iter()
                .filter(|c| venue.as_ref().is_none_or(|v| *v == c.venue))
            {
                first.push_back(c.frame.clone());
            }
        }
    }
    // A client that never reads never takes its next change either: a
    // watchdog drops it once it is as far behind as the buffer holds.
    if let Some(k) = &kill {
        let (hub, seen, k, dropped, gone) = (
            shared.hub.clone(),
            seen.clone(),
            k.clone(),
            shared.metrics.stream_dropped.clone(),
            gone.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                // The client's stream holds the other reference.
                if Arc::strong_count(&seen) == 1 {
                    return;
                }
                let behind = hub.published().saturating_sub(seen.load(Ordering::Relaxed));
                if behind > crate::stream::BROADCAST as u64 {
                    if !gone.swap(true, Ordering::Relaxed) {
                        dropped.inc();
                    }
                    tracing::info!(
                        behind,
                        "a live-stream client that does not read was dropped"
                    );
                    k.0.notify_one();
                    return;
                }
            }
        });
    }
    let client = Client {
        next_beat: tokio::time::Instant::now() + shared_heartbeat(),
        stop: shared.stop.subscribe(),
        shared,
        first,
        rx,
        position,
        venue,
        seen,
        gone,
        kill,
        dropped: false,
        _guard: guard,
    };
    let events = futures::stream::unfold(client, |mut c| async move {
        if c.dropped {
            return None;
        }
        if let Some(e) = c.first.pop_front() {
            c.next_beat = tokio::time::Instant::now() + shared_heartbeat();
            return Some((Ok::<_, std::convert::Infallible>(e), c));
        }
        loop {
            let received = tokio::select! {
                _ = c.stop.changed() => return None,
                () = tokio::time::sleep_until(c.next_beat) => {
                    // Keeps an idle stream open through proxies.
                    c.next_beat = tokio::time::Instant::now() + shared_heartbeat();
                    return Some((Ok(bytes::Bytes::from_static(b":\n\n")), c));
                }
                r = c.rx.recv() => r,
            };
            match received {
                Ok(change) => {
                    c.seen.store(change.seq, Ordering::Relaxed);
                    if !crate::stream::after(&change, &c.position) {
                        continue;
                    }
                    c.position.insert(change.partition, change.offset);
                    if c.venue.as_ref().is_some_and(|v| *v != change.venue) {
                        continue;
                    }
                    c.next_beat = tokio::time::Instant::now() + shared_heartbeat();
                    return Some((Ok(change.frame.clone()), c));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    c.dropped = true;
                    if !c.gone.swap(true, Ordering::Relaxed) {
                        c.shared.metrics.stream_dropped.inc();
                    }
                    if let Some(k) = &c.kill {
                        // Once this last event is written.
                        let k = k.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            k.0.notify_one();
                        });
                    }
                    let e = crate::stream::frame("error", "", &dropped_message());
                    return Some((Ok(e), c));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // The events are written as they are: a change's frame is made once
    // and shared by every client sending it.
    let mut r = axum::body::Body::from_stream(events).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Heartbeats (SSE comments) keep idle streams open through proxies.
fn shared_heartbeat() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::Request;
    use schemas::changelog::{Change, Keyed};
    use schemas::venue_state::{Entry, Key, VenueState};
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn shared(extra: &str) -> Arc<Shared> {
        let text = format!(
            "[kafka]\nbrokers = \"b:9092\"\nchangelog_topic = \"p-state\"\nsink = \"alerts\"\n[capacity]\nzone = 10\n{extra}"
        );
        let s = Shared::new(Config::from_toml(&text).unwrap(), Metrics::new().unwrap());
        Arc::new(s)
    }

    fn record(s: &Shared, offset: i64, venue: &str, at: i64, zones: &[(&str, i64)]) {
        let zones: BTreeMap<String, i64> = zones.iter().map(|(z, n)| (z.to_string(), *n)).collect();
        let value = VenueState {
            venue: venue.into(),
            entry: Entry::Minute {
                minute: at - at.rem_euclid(MINUTE),
                devices: zones.values().sum(),
                zones,
            },
        }
        .encode()
        .unwrap();
        let (k, v) = Change::Keyed(Keyed {
            sink: "alerts".into(),
            key: Key::minute(venue, at).encode(),
            value: Some(value),
        })
        .encode(0);
        s.apply(0, offset, &k, &v);
    }

    async fn get(
        s: &Arc<Shared>,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut r = Request::get(uri);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let resp = router(s.clone())
            .oneshot(r.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    }

    #[tokio::test]
    async fn the_board_lists_every_venue_fullest_first_with_its_zones_levels() {
        let s = shared("[venues.quiet]\nname = \"Quiet Hall\"\n");
        let t = now();
        record(&s, 0, "calm", t, &[("lobby", 2)]);
        record(&s, 1, "busy", t, &[("lobby", 9), ("bar", 11)]);
        let (status, body) = get(&s, "/api/venues", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<&str> = body["venues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["busy", "calm", "quiet"]);
        let busy = &body["venues"][0];
        assert_eq!(busy["devices"], 20);
        assert_eq!(busy["capacity"], 20);
        assert_eq!(busy["level"], "over");
        assert_eq!(busy["zones_over"], serde_json::json!(["bar"]));
        assert_eq!(busy["zones_near"], serde_json::json!(["lobby"]));
        assert_eq!(body["venues"][2]["name"], "Quiet Hall");
        assert_eq!(body["venues"][2]["devices"], 0);
        let (_, over) = get(&s, "/api/venues?level=over", None).await;
        assert_eq!(over["total"], 1);
        let (_, named) = get(&s, "/api/venues?sort=name&q=AL", None).await;
        let ids: Vec<&str> = named["venues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["calm", "quiet"], "by name: calm, Quiet Hall");
    }

    #[tokio::test]
    async fn a_venue_shows_its_zones_and_the_last_hour_minute_by_minute() {
        let s = shared("[venues.v]\nzones = { lobby = 4, terrace = 5 }\n");
        let t = now();
        let minute = t - t.rem_euclid(MINUTE);
        record(&s, 0, "v", minute - 10 * MINUTE, &[("lobby", 1)]);
        record(&s, 1, "v", minute - 2 * MINUTE, &[("lobby", 3), ("bar", 2)]);
        let (status, body) = get(&s, "/api/venues/v?minutes=12", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["venue"]["devices"], 5);
        let zones = body["zones"].as_array().unwrap();
        let names: Vec<&str> = zones.iter().map(|z| z["zone"].as_str().unwrap()).collect();
        assert_eq!(names, ["bar", "lobby", "terrace"]);
        assert_eq!(zones[1]["capacity"], 4);
        assert_eq!(zones[1]["level"], "ok", "75 % is under near (80 %)");
        assert_eq!(zones[1]["percent"], 75.0);
        assert_eq!(
            zones[1]["trend"],
            serde_json::json!([0, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3])
        );
        assert_eq!(zones[2]["trend"], serde_json::json!(vec![0; 12]));
        assert_eq!(
            body["trend"]["devices"],
            serde_json::json!([0, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5])
        );
    }

    #[tokio::test]
    async fn a_venue_whose_clock_runs_ahead_ends_its_trend_at_its_newest_minute() {
        let s = shared("");
        let ahead = now() + 5 * MINUTE;
        record(&s, 0, "v", now(), &[("lobby", 1)]);
        record(&s, 1, "v", ahead, &[("lobby", 7)]);
        let (_, body) = get(&s, "/api/venues/v?minutes=6", None).await;
        assert_eq!(body["venue"]["devices"], 7);
        assert_eq!(
            body["trend"]["devices"],
            serde_json::json!([1, 1, 1, 1, 1, 7]),
            "the last point is the venue's now"
        );
    }

    #[tokio::test]
    async fn the_page_is_served_and_a_browser_gets_a_basic_challenge_when_configured() {
        use base64::Engine;
        // SAFETY: this test alone sets this variable.
        unsafe { std::env::set_var("VENUES_TEST_BASIC_HTTP", "duty:manager-secret-1") };
        let s = shared("[http]\nbasic_env = \"VENUES_TEST_BASIC_HTTP\"\n");
        let call = |uri: &'static str, auth: Option<String>| {
            let s = s.clone();
            async move {
                let mut r = Request::get(uri);
                if let Some(a) = auth {
                    r = r.header("authorization", a);
                }
                router(s)
                    .oneshot(r.body(Body::empty()).unwrap())
                    .await
                    .unwrap()
            }
        };
        let denied = call("/", None).await;
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert!(
            denied.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic realm=")
        );
        let good = base64::engine::general_purpose::STANDARD.encode("duty:manager-secret-1");
        let bad = base64::engine::general_purpose::STANDARD.encode("duty:guess");
        let wrong = call("/api/venues", Some(format!("Basic {bad}"))).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        for uri in [
            "/",
            "/venues/v",
            "/assets/app.js",
            "/assets/app.css",
            "/api/venues",
        ] {
            let r = call(uri, Some(format!("Basic {good}"))).await;
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
        }
        let page = call("/", Some(format!("Basic {good}"))).await;
        assert!(
            page.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }

    fn alerts(s: &Shared) {
        for (i, (fp, name, firing, guest)) in [
            ("f1", "VipArrival", false, Some("g-42")),
            ("f2", "ZoneOverCapacity", true, None),
        ]
        .into_iter()
        .enumerate()
        {
            let value = VenueState {
                venue: "v".into(),
                entry: Entry::Alert {
                    name: name.into(),
                    zone: Some("lobby".into()),
                    firing,
                    starts_at: now(),
                    ends_at: None,
                    summary: "what happened".into(),
                    guest: guest.map(str::to_owned),
                },
            }
            .encode()
            .unwrap();
            let (k, v) = Change::Keyed(Keyed {
                sink: "alerts".into(),
                key: Key::Alert {
                    fingerprint: fp.into(),
                }
                .encode(),
                value: Some(value),
            })
            .encode(0);
            s.apply(0, 1 + i as i64, &k, &v);
        }
    }

    #[tokio::test]
    async fn a_venues_alerts_are_listed_firing_first_with_the_guest_masked_unless_configured() {
        let s = shared("");
        record(&s, 0, "v", now(), &[("lobby", 3)]);
        alerts(&s);
        let (_, list) = get(&s, "/api/venues", None).await;
        assert_eq!(list["venues"][0]["alerts_firing"], 1);
        let (_, detail) = get(&s, "/api/venues/v", None).await;
        let found = detail["alerts"].as_array().unwrap();
        assert_eq!(found[0]["name"], "ZoneOverCapacity");
        assert_eq!(found[0]["status"], "firing");
        assert_eq!(found[1]["status"], "resolved");
        assert_eq!(found[1]["guest"], "(masked)");
        assert!(!detail.to_string().contains("g-42"), "the guest is masked");
        let shown = shared("[view]\nshow_guest_names = true\n");
        alerts(&shown);
        let (_, detail) = get(&shown, "/api/venues/v", None).await;
        assert_eq!(detail["alerts"][1]["guest"], "g-42");
    }

    #[tokio::test]
    async fn bad_input_is_refused_naming_what_is_wrong() {
        let s = shared("");
        for (uri, status, names) in [
            ("/api/venues/nowhere", StatusCode::NOT_FOUND, "\"nowhere\""),
            ("/api/venues?sort=loud", StatusCode::BAD_REQUEST, "sort"),
            ("/api/venues?level=red", StatusCode::BAD_REQUEST, "level"),
            ("/api/venues?limit=0", StatusCode::BAD_REQUEST, "limit"),
            ("/api/venues?colour=1", StatusCode::BAD_REQUEST, "colour"),
            (
                "/api/venues/v?minutes=61",
                StatusCode::BAD_REQUEST,
                "minutes",
            ),
        ] {
            let (got, body) = get(&s, uri, None).await;
            assert_eq!(got, status, "{uri}: {body}");
            let message = body["error"].as_str().unwrap_or_default();
            assert!(message.contains(names), "{uri}: {message}");
        }
    }

    #[tokio::test]
    async fn with_a_token_configured_the_api_wants_it_and_health_does_not() {
        // SAFETY: this test alone sets this variable.
        unsafe { std::env::set_var("VENUES_TEST_TOKEN_HTTP", "0123456789abcdef-token") };
        let s = shared("[http]\ntoken_env = \"VENUES_TEST_TOKEN_HTTP\"\n");
        let (status, body) = get(&s, "/api/venues", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
        let (status, _) = get(&s, "/api/venues", Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = get(&s, "/api/venues", Some("0123456789abcdef-token")).await;
        assert_eq!(status, StatusCode::OK);
        let r = router(s.clone())
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = router(s)
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "not caught up");
    }
}
