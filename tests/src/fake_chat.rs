//! A fake Slack-compatible incoming webhook: an HTTP server on a free
//! loopback port that records every message it was sent and answers from a
//! script, to misbehave on purpose.
//!
//! `POST /services/T0/B0/<token>` with `{"text": ...}`. A message is *posted*
//! (what a channel would show) when it is answered `200`; [`ChatState::posted`]
//! holds those in order with their `Idempotency-Key`, so "each notification
//! once" is every key in it once. A wrong token is answered `404` (as Slack
//! does) and recorded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// The token the fake expects in its URL.
pub const TOKEN: &str = "xoxtest-s3cr3t-webhook-token";

/// One scripted answer, used by the next request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer this status (not posted).
    Status(u16),
    /// `429` with `Retry-After: secs` (not posted).
    TooMany(u64),
    /// Hold the request this long (past the client's timeout), then `503`
    /// (not posted).
    Stall(Duration),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The `Idempotency-Key` header (empty if missing).
    pub key: String,
    /// The message text.
    pub text: String,
    /// The status answered.
    pub status: u16,
}

/// What the fake knows.
#[derive(Debug, Default)]
pub struct ChatState {
    /// Messages answered `200`, in order: (idempotency key, text).
    pub posted: Vec<(String, String)>,
    /// Every request, in arrival order.
    pub requests: Vec<Seen>,
    /// Answers for the next requests; when empty: post, `200`.
    pub script: VecDeque<Reply>,
    /// While set, every request is answered `500` (an outage).
    pub down: bool,
}

/// The running fake; stops when dropped.
pub struct FakeChat {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its record and script.
    pub state: Arc<Mutex<ChatState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeChat {
    /// Starts it on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start() -> FakeChat {
        let state = Arc::new(Mutex::new(ChatState::default()));
        let app = Router::new()
            .route("/services/T0/B0/{token}", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake chat listener");
        let addr = listener.local_addr().expect("fake chat address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeChat { addr, state, task }
    }

    /// The webhook URL (it carries the token: a secret).
    pub fn url(&self) -> String {
        format!("http://{}/services/T0/B0/{TOKEN}", self.addr)
    }

    /// Queues answers for the next requests.
    pub fn script(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().cloned());
    }

    /// Starts or ends an outage.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The messages posted so far.
    pub fn posted(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().posted.clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

impl Drop for FakeChat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<Mutex<ChatState>>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = body["text"].as_str().unwrap_or("").to_string();
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = if token != TOKEN {
            Some(Reply::Status(404))
        } else if s.down {
            Some(Reply::Status(500))
        } else if text.is_empty() {
            Some(Reply::Status(400))
        } else {
            s.script.pop_front()
        };
        let status = match &reply {
            None => {
                s.posted.push((key.clone(), text.clone()));
                200
            }
            Some(Reply::Status(c)) => *c,
            Some(Reply::TooMany(_)) => 429,
            Some(Reply::Stall(_)) => 503,
        };
        s.requests.push(Seen { key, text, status });
        reply
    };
    match reply {
        None => (StatusCode::OK, "ok").into_response(),
        Some(Reply::Status(c)) => (
            StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "no",
        )
            .into_response(),
        Some(Reply::TooMany(secs)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "rate_limited",
        )
            .into_response(),
        Some(Reply::Stall(d)) => {
            tokio::time::sleep(d).await;
            (StatusCode::SERVICE_UNAVAILABLE, "stalled").into_response()
        }
    }
}
