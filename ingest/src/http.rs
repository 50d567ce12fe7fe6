//! The HTTP surface: `POST /webhooks/{source}`, `/healthz`, `/readyz`,
//! `/metrics`.
//!
//! The webhook handler's order is the contract: find the source, take an
//! in-flight slot, refuse an oversized `Content-Length`, read the body under
//! its cap and the deadline, verify the signature on those exact bytes,
//! build the envelope, and answer 200 only once the brokers acknowledged the
//! record. Every refusal goes through [`AppError`], which logs and counts it
//! in one place and answers `{"error": {"code", "detail"}}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use schemas::{Envelope, Verification};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::{Metrics, UNKNOWN_SOURCE};
use crate::producer::{DeliveryError, KafkaProducer};
use crate::signature::VerifyError;
use crate::source::Source;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configured sources by name.
    pub sources: Arc<HashMap<String, Arc<Source>>>,
    /// The raw-topic producer.
    pub producer: Arc<KafkaProducer>,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// In-flight webhook requests; `try_acquire` so overload is refused,
    /// never queued.
    pub in_flight: Arc<Semaphore>,
    /// Deadline from arrival to acknowledgement.
    pub request_timeout: Duration,
    /// `Retry-After` for 503 answers.
    pub retry_after: Duration,
}

/// The router. Tested without a socket through `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/webhooks/{source}",
            post(receive).fallback(method_not_allowed),
        )
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(state)
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

    fn retry_after(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
            || self.status() == StatusCode::TOO_MANY_REQUESTS
    }

    /// Whether the refusal leaves part of the body unread on the
    /// connection: the connection cannot be reused, so say so (RFC 9112
    /// §9.6) rather than let the sender's next request on it fail.
    fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            AppError::BodyTooLarge(_) | AppError::BodyRead | AppError::BodyTimeout
        )
    }

    fn into_response_with(self, retry_after: Duration) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": { "code": self.code(), "detail": self.detail() }
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if self.retry_after() {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
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
    if state.producer.is_ready() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "not_ready",
                "detail": "brokers unreachable or raw topic missing"
            })),
        )
            .into_response()
    }
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

/// The request id: the sender's `X-Request-Id` when it is short and plain,
/// else a fresh UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
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

async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let deadline = started + state.request_timeout;
    let rid = request_id(req.headers());
    let source = state.sources.get(&name).cloned();
    let label = source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| Arc::from(UNKNOWN_SOURCE));
    let span = tracing::info_span!("webhook", source = %label, request_id = %rid);
    respond(state, source, label, rid, req, started, deadline)
        .instrument(span)
        .await
}

async fn respond(
    state: AppState,
    source: Option<Arc<Source>>,
    label: Arc<str>,
    rid: String,
    req: Request,
    started: Instant,
    deadline: Instant,
) -> Response {
    let result = match source {
        None => Err(AppError::UnknownSource),
        Some(source) => match state.in_flight.clone().try_acquire_owned() {
            Err(_) => Err(AppError::Overloaded),
            Ok(_permit) => {
                state.metrics.in_flight.inc();
                let _guard = InFlight(state.metrics.clone());
                accept(&state, &source, req, &rid, deadline).await
            }
        },
    };

    let mut resp = match result {
        Ok(accepted) => {
            state
                .metrics
                .ack_latency
                .with_label_values(&[&label])
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(event_id = %accepted.event_id, partition = accepted.partition, offset = accepted.offset, "accepted");
            axum::Json(serde_json::json!({
                "event_id": accepted.event_id,
                "request_id": rid,
            }))
            .into_response()
        }
        Err(e) => {
            if let AppError::Signature(v) = &e {
                state
                    .metrics
                    .verification_failures
                    .with_label_values(&[&label, v.code()])
                    .inc();
            }
            let status = e.status();
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), code = e.code(), reason = ?e, "refused");
            } else {
                tracing::info!(status = status.as_u16(), code = e.code(), "refused");
            }
            e.into_response_with(state.retry_after)
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[&label, resp.status().as_str()])
        .inc();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
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
    rid: &str,
    deadline: Instant,
) -> Result<Accepted, AppError> {
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, source.max_body_bytes, deadline).await?;
    state
        .metrics
        .body_bytes
        .with_label_values(&[&source.name])
        .observe(body.len() as f64);
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
    let extracted = source.extract(&parts.headers, &body);
    let event_id = extracted
        .event_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let received_at_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let envelope = Envelope {
        event_id,
        source: source.name.to_string(),
        received_at_micros,
        headers: source.forwarded(&parts.headers),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        client_addr,
        verification: Verification {
            scheme: verified.scheme.to_string(),
            secret_id: verified.secret_id.to_string(),
        },
        ordering_key: extracted.ordering_key,
        sequence: extracted.sequence,
        request_id: rid.to_string(),
        body: body.to_vec(),
    };
    let payload = envelope.encode().map_err(|e| {
        tracing::error!(error = %e, "envelope encoding failed");
        AppError::Internal("envelope encoding failed")
    })?;
    let key = envelope
        .ordering_key
        .as_deref()
        .unwrap_or(&envelope.event_id);
    let delivered = state
        .producer
        .deliver(
            key.as_bytes(),
            &payload,
            &envelope.source,
            &envelope.event_id,
            deadline,
        )
        .await
        .map_err(AppError::Delivery)?;
    Ok(Accepted {
        event_id: envelope.event_id,
        partition: delivered.partition,
        offset: delivered.offset,
    })
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
    let mut buf = bytes::BytesMut::with_capacity(capacity);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(AppError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(AppError::BodyRead),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(AppError::BodyTooLarge(limit));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(buf.freeze())
}
