//! The HTTP surface: `POST /webhooks/{source}`, `/healthz`, `/readyz`,
//! `/metrics`.
//!
//! The webhook handler's order is the contract: find the source, resolve
//! the client address and check it against the source's allow-list, take a
//! token from its rate limit, take an in-flight slot, refuse an oversized
//! `Content-Length`, read the body under its cap and the deadline, verify
//! the signature on those exact bytes, answer a configured `url_verification`
//! handshake, else build the envelope, and answer 200 only once the brokers
//! acknowledged the record. Everything up to the in-flight slot happens
//! before a byte of the body is read, so a refused sender costs next to
//! nothing. `GET /webhooks/{source}` is the subscription check where one is
//! configured (after the same address and rate checks), else 405.
//!
//! Every refusal goes through [`AppError`] and one function that logs and
//! counts it (`ingest_refusals_total{source,code}`) and answers
//! `{"error": {"code", "detail"}}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use schemas::EnvelopeRef;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::address::{Cidrs, client_addr};
use crate::durability::{DurabilityConfig, DurabilityState};
use crate::handshake::{self, HandshakeError};
use crate::metrics::{Metrics, SourceMetrics, UNKNOWN_SOURCE};
use crate::producer::{DeliveryError, KafkaProducer};
use crate::rate_limit::retry_after_secs;
use crate::signature::VerifyError;
use crate::source::Source;
use crate::tls::PeerCertificates;

/// Everything a request handler needs, shared: a clone (axum makes one
/// per request) is a single reference count.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// Configured sources by name.
    pub sources: Arc<HashMap<String, Arc<Source>>>,
    /// The raw-topic producer.
    pub producer: Arc<KafkaProducer>,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// Each configured source's per-request series, resolved at start.
    pub source_metrics: HashMap<Arc<str>, SourceMetrics>,
    /// In-flight webhook requests; `try_acquire` so overload is refused,
    /// never queued.
    pub in_flight: Arc<Semaphore>,
    /// Deadline from arrival to acknowledgement.
    pub request_timeout: Duration,
    /// `Retry-After` for 503 answers.
    pub retry_after: Duration,
    /// Peers whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: Arc<Cidrs>,
    /// The last reading of the raw topic's replication, for `/readyz`.
    pub durability: Arc<DurabilityState>,
    /// What that reading must reach (`kafka.durability`).
    pub durability_config: DurabilityConfig,
}

/// The router, `/metrics` included. Tested without a socket through
/// `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    routes(state, true)
}

/// The webhook port's entry point: a POST to `/webhooks/{source}` whose
/// name needs no decoding goes straight to its handler; everything else
/// (other methods and paths, names with `%` escapes) through the router,
/// which answers them as before. The router's path matching, parameter
/// extraction and extension map were about 4 % of ingest's CPU per
/// webhook in the load benchmark's profile; the answers are the same
/// either way (`tests/router.rs` compares them path by path).
#[derive(Clone)]
pub struct Front {
    state: AppState,
    router: Router,
}

/// Where [`Front`] sends one request.
enum Route {
    Webhook(AppState, Option<Arc<Source>>),
    Router(Router),
}

impl Front {
    /// The front of [`router`] (`with_metrics`) or [`public_router`].
    pub fn new(state: AppState, with_metrics: bool) -> Front {
        Front {
            router: routes(state.clone(), with_metrics),
            state,
        }
    }

    /// Answers one request from the TCP peer `peer` (`None`: unknown,
    /// which an allow-list refuses). Webhooks get the peer directly; the
    /// router's handlers as the `ConnectInfo` extension.
    pub fn call(
        &self,
        mut req: Request,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Response> + Send + use<> {
        let route = match webhook_name(&req) {
            Some(name) => Route::Webhook(self.state.clone(), self.state.sources.get(name).cloned()),
            None => {
                if let Some(peer) = peer {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                Route::Router(self.router.clone())
            }
        };
        async move {
            match route {
                Route::Webhook(state, source) => {
                    with_content_length(receive_for(state, source, req, peer).await)
                }
                Route::Router(router) => match tower::ServiceExt::oneshot(router, req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
            }
        }
    }
}

/// Sets `Content-Length` from the body's exact size, as the router does
/// for every answer it routes.
fn with_content_length(mut resp: Response) -> Response {
    if !resp.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(n) = axum::body::HttpBody::size_hint(resp.body()).exact()
    {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    resp
}

/// The source name of a POST to `/webhooks/{name}` when the name is made
/// of unreserved characters only (RFC 3986 §2.3), so it reads the same
/// decoded or not; `None` for anything the router must see.
fn webhook_name(req: &Request) -> Option<&str> {
    if req.method() != axum::http::Method::POST {
        return None;
    }
    let name = req.uri().path().strip_prefix("/webhooks/")?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    plain.then_some(name)
}

/// The webhook port's router when an admin port serves `/metrics`
/// (`server.admin_listen`): the same without `/metrics`.
pub fn public_router(state: AppState) -> Router {
    routes(state, false)
}

/// The admin port's router: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(state)
}

fn routes(state: AppState, with_metrics: bool) -> Router {
    let mut r = Router::new()
        .route(
            "/webhooks/{source}",
            post(receive).get(subscribe).fallback(method_not_allowed),
        )
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed));
    if with_metrics {
        r = r.route("/metrics", get(metrics).fallback(method_not_allowed));
    }
    r.fallback(not_found).with_state(state)
}

/// A refusal: status, stable code, a detail safe to show the sender.
#[derive(Debug)]
pub enum AppError {
    /// No such source is configured.
    UnknownSource,
    /// Path matches nothing.
    NotFound,
    /// Wrong method for the path.
    MethodNotAllowed,
    /// Body over the source's limit.
    BodyTooLarge(usize),
    /// The body could not be read (client aborted, truncated transfer).
    BodyRead,
    /// The body did not arrive before the deadline.
    BodyTimeout,
    /// An empty body is never an event.
    EmptyBody,
    /// The client address is not in the source's allow-list.
    AddressNotAllowed,
    /// The source requires a client certificate from its CA (`mtls`) and
    /// the connection presented none that chains to it.
    ClientCertificateRequired,
    /// The source's rate limit is exhausted; retry after this many seconds.
    RateLimited(u64),
    /// A challenge handshake that cannot be answered.
    Handshake(HandshakeError),
    /// The signature did not verify.
    Signature(VerifyError),
    /// Too many requests in flight.
    Overloaded,
    /// The brokers did not acknowledge.
    Delivery(DeliveryError),
    /// A defect of ours (never bad input).
    Internal(&'static str),
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::UnknownSource | AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::BodyTooLarge(_) | AppError::Delivery(DeliveryError::TooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AppError::BodyRead | AppError::EmptyBody => StatusCode::BAD_REQUEST,
            AppError::AddressNotAllowed | AppError::ClientCertificateRequired => {
                StatusCode::FORBIDDEN
            }
            AppError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Handshake(
                HandshakeError::ChallengeMissing(_) | HandshakeError::ChallengeInvalid(_),
            ) => StatusCode::BAD_REQUEST,
            AppError::Handshake(_) => StatusCode::UNAUTHORIZED,
            AppError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Signature(_) => StatusCode::UNAUTHORIZED,
            AppError::Overloaded | AppError::Delivery(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::UnknownSource => "unknown_source",
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::BodyTooLarge(_) | AppError::Delivery(DeliveryError::TooLarge) => {
                "body_too_large"
            }
            AppError::BodyRead => "body_read_failed",
            AppError::BodyTimeout => "body_timeout",
            AppError::EmptyBody => "empty_body",
            AppError::AddressNotAllowed => "address_not_allowed",
            AppError::ClientCertificateRequired => "client_certificate_required",
            AppError::RateLimited(_) => "rate_limited",
            AppError::Handshake(e) => e.code(),
            AppError::Signature(e) => e.code(),
            AppError::Overloaded => "overloaded",
            AppError::Delivery(DeliveryError::Timeout) => "delivery_timeout",
            AppError::Delivery(_) => "broker_unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            AppError::UnknownSource => "no source with this name is configured".into(),
            AppError::NotFound => "no such endpoint".into(),
            AppError::MethodNotAllowed => "method not allowed for this endpoint".into(),
            AppError::BodyTooLarge(limit) => {
                format!("body is larger than this source's limit of {limit} bytes")
            }
            AppError::BodyRead => "the request body could not be read in full".into(),
            AppError::BodyTimeout => "the request body did not arrive before the deadline".into(),
            AppError::EmptyBody => "the request body is empty".into(),
            AppError::AddressNotAllowed => {
                "this source does not accept requests from this client address".into()
            }
            AppError::ClientCertificateRequired => {
                "this source requires a valid TLS client certificate from its CA".into()
            }
            AppError::RateLimited(secs) => {
                format!("this source's rate limit is exhausted; retry in {secs} s")
            }
            AppError::Handshake(e) => e.to_string(),
            AppError::Signature(e) => e.to_string(),
            AppError::Overloaded => "too many requests in flight; retry later".into(),
            AppError::Delivery(DeliveryError::TooLarge) => {
                "the event is larger than the broker accepts".into()
            }
            AppError::Delivery(_) => {
                "the event could not be stored durably in time; retry later".into()
            }
            AppError::Internal(_) => "internal error".into(),
        }
    }

    /// The `Retry-After` to send, if any: the rate limit's own wait for
    /// 429, the configured one for 503.
    fn retry_after(&self, configured: Duration) -> Option<u64> {
        match self {
            AppError::RateLimited(secs) => Some((*secs).max(1)),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                Some(configured.as_secs().max(1))
            }
            _ => None,
        }
    }

    /// Whether the refusal leaves part of the body unread on the
    /// connection: the connection cannot be reused, so say so (RFC 9112
    /// §9.6) rather than let the sender's next request on it fail.
    fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            AppError::BodyTooLarge(_)
                | AppError::BodyRead
                | AppError::BodyTimeout
                | AppError::AddressNotAllowed
                | AppError::ClientCertificateRequired
                | AppError::RateLimited(_)
        )
    }

    fn into_response_with(self, retry_after: Duration) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": { "code": self.code(), "detail": self.detail() }
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after(retry_after) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.leaves_body_unread() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.into_response_with(Duration::from_secs(1))
    }
}

async fn not_found() -> Response {
    AppError::NotFound.into_response()
}

async fn method_not_allowed() -> Response {
    AppError::MethodNotAllowed.into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let reading = state.durability.get();
    let shortfalls = reading
        .as_ref()
        .map(|d| d.shortfalls(&state.durability_config));
    let raw_topic = serde_json::json!({
        "replication_factor": reading.as_ref().and_then(|d| d.replication_factor),
        "min_insync_replicas": reading.as_ref().and_then(|d| d.min_insync_replicas),
        "shortfalls": shortfalls.clone().unwrap_or_else(|| vec!["not read yet".into()]),
        "required": state.durability_config.require,
    });
    let durable_enough =
        !state.durability_config.require || shortfalls.as_ref().is_some_and(|s| s.is_empty());
    if !state.producer.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "not_ready",
                "detail": "brokers unreachable or raw topic missing",
                "raw_topic": raw_topic,
            })),
        )
            .into_response();
    }
    if !durable_enough {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "not_ready",
                "detail": "the raw topic is below kafka.durability, which is required",
                "raw_topic": raw_topic,
            })),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "status": "ready", "raw_topic": raw_topic })).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .producer_queue_depth
        .set(i64::from(state.producer.queue_depth()));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Decrements the in-flight gauge however the handler ends (also when the
/// client goes away and the future is dropped).
struct InFlight(Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The request id's header, in and out; parsed once, at compile time.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id: the sender's `X-Request-Id` when it is short and plain,
/// else a fresh UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// `POST /webhooks/{source}` through the router (names with escapes).
async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let source = state.sources.get(&name).cloned();
    let peer = connect_info(&req);
    receive_for(state, source, req, peer).await
}

/// The TCP peer the router's caller put in the request, if any.
fn connect_info(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// `POST /webhooks/{source}`, its source looked up.
async fn receive_for(
    state: AppState,
    source: Option<Arc<Source>>,
    req: Request,
    peer: Option<SocketAddr>,
) -> Response {
    let started = Instant::now();
    let rid = request_id(req.headers());
    let label = source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| Arc::from(UNKNOWN_SOURCE));
    // No span per request: entering and formatting one cost more than the
    // rest of the request's logging; the lines this path writes carry
    // `source` and `request_id` themselves.
    respond(state, source, label, rid, req, peer, started).await
}

async fn respond(
    state: AppState,
    source: Option<Arc<Source>>,
    label: Arc<str>,
    rid: String,
    req: Request,
    peer: Option<SocketAddr>,
    started: Instant,
) -> Response {
    let deadline = started + state.request_timeout;
    let result = match source {
        None => Err(AppError::UnknownSource),
        Some(source) => match admit(&state, &source, &rid, &req, peer) {
            Err(e) => Err(e),
            Ok(client) => match state.in_flight.clone().try_acquire_owned() {
                Err(_) => Err(AppError::Overloaded),
                Ok(_permit) => {
                    state.metrics.in_flight.inc();
                    let _guard = InFlight(state.metrics.clone());
                    accept(&state, &source, req, client, &rid, deadline).await
                }
            },
        },
    };

    let resp = match result {
        Ok(Outcome::Delivered(accepted)) => {
            if let Some(m) = state.source_metrics.get(&label) {
                m.ack_latency.observe(started.elapsed().as_secs_f64());
            }
            tracing::debug!(
                event_id = accepted.event_id.as_str(),
                partition = accepted.partition,
                offset = accepted.offset,
                "accepted"
            );
            accepted_body(&accepted.event_id, &rid)
        }
        Ok(Outcome::Challenge(challenge)) => {
            handshake_answered(&state, &label, &rid, "url_verification");
            challenge_response(
                HeaderValue::from_static("application/json"),
                serde_json::json!({ "challenge": challenge }).to_string(),
            )
        }
        Err(e) => refuse(&state, &label, &rid, e),
    };
    finish(&state, &label, &rid, resp)
}

/// `GET /webhooks/{source}`: the subscription check, where configured.
async fn subscribe(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let rid = request_id(req.headers());
    let source = state.sources.get(&name).cloned();
    let label = source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| Arc::from(UNKNOWN_SOURCE));
    let result = match &source {
        None => Err(AppError::UnknownSource),
        Some(source) => match &source.subscription {
            None => Err(AppError::MethodNotAllowed),
            Some(sub) => admit(&state, source, &rid, &req, connect_info(&req))
                .and_then(|_| sub.answer(req.uri()).map_err(AppError::Handshake)),
        },
    };
    let resp = match result {
        Ok(challenge) => {
            handshake_answered(&state, &label, &rid, "subscription");
            challenge_response(
                HeaderValue::from_static("text/plain; charset=utf-8"),
                challenge,
            )
        }
        Err(e) => refuse(&state, &label, &rid, e),
    };
    finish(&state, &label, &rid, resp)
}

/// The checks made before the body is read: the client certificate (for
/// a source with `mtls`), the client address against the source's
/// allow-list, then a token of its rate limit. Returns the client address
/// (`None` when the connection's peer is unknown, which an allow-list
/// refuses).
fn admit(
    state: &AppState,
    source: &Source,
    rid: &str,
    req: &Request,
    peer: Option<SocketAddr>,
) -> Result<Option<IpAddr>, AppError> {
    if let Some(ca) = &source.client_ca {
        let chain = req.extensions().get::<PeerCertificates>();
        if !chain.is_some_and(|c| ca.verifies(&c.0)) {
            tracing::info!(
                source = %source.name,
                request_id = %rid,
                presented = chain.is_some(),
                "no client certificate that chains to the source's CA"
            );
            return Err(AppError::ClientCertificateRequired);
        }
    }
    let peer = peer.map(|p| p.ip());
    let client = peer.map(|p| client_addr(p, req.headers(), &state.trusted_proxies));
    if let Some(allow) = &source.allow
        && !client.is_some_and(|c| allow.contains(c))
    {
        tracing::info!(
            source = %source.name,
            request_id = %rid,
            client = ?client,
            "client address not in the allow-list"
        );
        return Err(AppError::AddressNotAllowed);
    }
    if let Some(bucket) = &source.rate_limit
        && let Err(wait) = bucket.try_acquire()
    {
        return Err(AppError::RateLimited(retry_after_secs(wait)));
    }
    Ok(client)
}

fn handshake_answered(state: &AppState, label: &str, rid: &str, kind: &str) {
    state
        .metrics
        .handshakes
        .with_label_values(&[label, kind])
        .inc();
    tracing::info!(
        source = %label,
        request_id = %rid,
        kind,
        "challenge handshake answered"
    );
}

/// A challenge echoed back: never sniffed as HTML, never cached.
fn challenge_response(content_type: HeaderValue, body: String) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Logs and counts a refusal, and answers it: one log line per refused
/// request, with its source, status, reason code and request id (never the
/// body, a header value or a secret).
fn refuse(state: &AppState, label: &str, rid: &str, e: AppError) -> Response {
    if let AppError::Signature(v) = &e {
        state
            .metrics
            .verification_failures
            .with_label_values(&[label, v.code()])
            .inc();
    }
    state
        .metrics
        .refusals
        .with_label_values(&[label, e.code()])
        .inc();
    let status = e.status();
    let (status_code, reason) = (status.as_u16(), e.code());
    if status.is_server_error() {
        tracing::warn!(source = label, status = status_code, reason, request_id = rid, cause = ?e, "refused");
    } else {
        tracing::info!(
            source = label,
            status = status_code,
            reason,
            request_id = rid,
            "refused"
        );
    }
    e.into_response_with(state.retry_after)
}

/// `{"event_id": ..., "request_id": ...}`, written directly.
fn accepted_body(event_id: &str, rid: &str) -> Response {
    let mut body = Vec::with_capacity(32 + event_id.len() + rid.len());
    body.extend_from_slice(b"{\"event_id\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, event_id);
    body.extend_from_slice(b",\"request_id\":");
    let _ = serde_json::to_writer(&mut body, rid);
    body.push(b'}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Counts the answer and adds the request id.
fn finish(state: &AppState, label: &str, rid: &str, mut resp: Response) -> Response {
    match state.source_metrics.get(label) {
        Some(m) if resp.status() == StatusCode::OK => m.accepted.inc(),
        _ => state
            .metrics
            .requests
            .with_label_values(&[label, resp.status().as_str()])
            .inc(),
    }
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// How an accepted request ends.
enum Outcome {
    /// Stored in Kafka.
    Delivered(Accepted),
    /// A `url_verification` handshake: its challenge, nothing stored.
    Challenge(String),
}

struct Accepted {
    event_id: String,
    partition: i32,
    offset: i64,
}

async fn accept(
    state: &AppState,
    source: &Source,
    req: Request,
    client: Option<IpAddr>,
    rid: &str,
    deadline: Instant,
) -> Result<Outcome, AppError> {
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, source.max_body_bytes, deadline).await?;
    if let Some(m) = state.source_metrics.get(&source.name) {
        m.body_bytes.observe(body.len() as f64);
    }
    if body.is_empty() {
        return Err(AppError::EmptyBody);
    }
    let verified = source
        .scheme
        .verify(&parts.headers, &body)
        .map_err(AppError::Signature)?;
    state
        .metrics
        .secret_matches
        .with_label_values(&[&source.name, &verified.secret_id])
        .inc();
    if source.url_verification
        && let Some(answer) = handshake::slack_url_verification(&body)
    {
        return answer.map(Outcome::Challenge).map_err(AppError::Handshake);
    }
    let extracted = source.extract(&parts.headers, &body);
    // Never random: a retry of a body without an id must be the same event.
    let event_id = extracted
        .event_id
        .unwrap_or_else(|| crate::source::body_event_id(&source.name, &body));
    let received_at_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let headers = source.forwarded(&parts.headers);
    let client_addr = client.map(|c| c.to_string());
    let envelope = EnvelopeRef {
        event_id: &event_id,
        source: &source.name,
        received_at_micros,
        headers: &headers,
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        client_addr: client_addr.as_deref(),
        scheme: verified.scheme,
        secret_id: &verified.secret_id,
        ordering_key: extracted.ordering_key.as_deref(),
        sequence: extracted.sequence,
        request_id: rid,
        body: &body,
    };
    let payload = envelope.encode();
    let key = envelope.ordering_key.unwrap_or(&event_id);
    let delivered = state
        .producer
        .deliver(
            key.as_bytes(),
            payload,
            &source.name,
            &event_id,
            received_at_micros / 1000,
            deadline,
        )
        .await
        .map_err(AppError::Delivery)?;
    Ok(Outcome::Delivered(Accepted {
        event_id,
        partition: delivered.partition,
        offset: delivered.offset,
    }))
}

/// Reads the body under the cap and the deadline: an oversized
/// `Content-Length` is refused before reading a byte.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: Instant,
) -> Result<bytes::Bytes, AppError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(AppError::BodyTooLarge(limit));
    }
    let capacity = declared.map_or(8 * 1024, |n| n as usize).min(limit);
    // A body that arrives in one frame (hyper's whole `Content-Length` body
    // when it was read with the head) is kept as that frame: no buffer and
    // no copy. A second frame starts the buffer.
    let mut first: Option<bytes::Bytes> = None;
    let mut buf: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(AppError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(AppError::BodyRead),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if len + data.len() > limit {
                    return Err(AppError::BodyTooLarge(limit));
                }
                len += data.len();
                if let Some(buf) = &mut buf {
                    buf.extend_from_slice(&data);
                } else if let Some(kept) = first.take() {
                    let mut joined = bytes::BytesMut::with_capacity(capacity.max(len));
                    joined.extend_from_slice(&kept);
                    joined.extend_from_slice(&data);
                    buf = Some(joined);
                } else {
                    first = Some(data);
                }
            }
        }
    }
    Ok(match (buf, first) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(kept)) => kept,
        (None, None) => bytes::Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_one_frame_is_kept_not_copied() {
        let sent = bytes::Bytes::from(vec![b'x'; 1024]);
        let got = read_body(Body::from(sent.clone()), &HeaderMap::new(), 4096, far())
            .await
            .expect("read");
        assert_eq!(got, sent);
        assert_eq!(got.as_ptr(), sent.as_ptr(), "the frame's bytes, not a copy");
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_joined_and_capped() {
        let frames = || {
            futures::stream::iter(["ab", "cd", "ef"].map(|s| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(s)))
            }))
        };
        let body = Body::new(http_body_util::StreamBody::new(frames()));
        let got = read_body(body, &HeaderMap::new(), 6, far())
            .await
            .expect("read");
        assert_eq!(&got[..], b"abcdef");
        let body = Body::new(http_body_util::StreamBody::new(frames()));
        let err = read_body(body, &HeaderMap::new(), 5, far())
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::BodyTooLarge(5)), "{err:?}");
        let empty = read_body(Body::empty(), &HeaderMap::new(), 5, far())
            .await
            .expect("read");
        assert!(empty.is_empty());
    }
}
