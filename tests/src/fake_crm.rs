//! A fake CRM: an HTTP server on a free loopback port that records what it
//! was sent and answers from a script, per idempotency key.
//!
//! It applies an event the first time a request with its `Idempotency-Key`
//! succeeds and counts later ones with the same key as repeats (answered
//! `200`, as a real idempotent API does), so "applied exactly once" is
//! `applied` holding each key once. A scripted `Hang` applies the event and
//! then answers late (past the client's timeout): the answer is lost, the
//! client retries, and the retry must carry the same key.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer this status (not applied).
    Status(u16),
    /// `429` with `Retry-After: secs` (not applied).
    TooMany(u64),
    /// Apply, then answer `200` only after this long.
    Hang(Duration),
    /// Answer this status to every request for the key, for ever.
    Always(u16),
    /// Answer this status (not applied) with a body that echoes the bare
    /// credential of the `Authorization` header (the part after its scheme
    /// word) after `pad` characters of padding, as a careless CRM's
    /// "invalid token ..." error does.
    EchoToken {
        /// The status.
        status: u16,
        /// Characters before the echo (to place it across a clip).
        pad: usize,
    },
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The `Idempotency-Key` header (empty if missing).
    pub key: String,
    /// The `Authorization` header (empty if missing).
    pub auth: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
}

/// What the fake knows.
#[derive(Debug, Default)]
pub struct CrmState {
    /// First application per key, in order.
    pub applied: Vec<(String, serde_json::Value)>,
    /// Requests for an already applied key, by key.
    pub repeats: HashMap<String, u32>,
    /// Every request, in arrival order.
    pub requests: Vec<Seen>,
    /// Answers still to give, by key; when none is left: apply, `200`.
    pub script: HashMap<String, VecDeque<Reply>>,
    /// While set, every request is answered this status (an outage:
    /// `503`, or e.g. `401` while a credential is rotated).
    pub down: Option<u16>,
    /// Requests being handled now.
    pub in_flight: usize,
    /// The most requests ever handled at once.
    pub max_in_flight: usize,
}

impl CrmState {
    /// How many times `key` was applied (0 or 1 unless the fake is broken).
    pub fn applied_count(&self, key: &str) -> usize {
        self.applied.iter().filter(|(k, _)| k == key).count()
    }
}

/// The running fake; stops when dropped.
pub struct FakeCrm {
    /// `https` when started with [`FakeCrm::start_tls`].
    scheme: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its record and script.
    pub state: Arc<Mutex<CrmState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCrm {
    /// Starts it on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start() -> FakeCrm {
        let state = Arc::new(Mutex::new(CrmState::default()));
        let app = Router::new()
            .route("/crm", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake CRM listener");
        let addr = listener.local_addr().expect("fake CRM address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeCrm {
            scheme: "http",
            addr,
            state,
            task,
        }
    }

    /// The same fake behind TLS, with a certificate for `127.0.0.1`
    /// issued by a throw-away CA; answers the CA's PEM path with it (in
    /// `dir`), for the client to trust.
    pub async fn start_tls(dir: &std::path::Path) -> (FakeCrm, std::path::PathBuf) {
        let (ca, chain, key) = test_pki(dir);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        let state = Arc::new(Mutex::new(CrmState::default()));
        let app = Router::new()
            .route("/crm", post(handle))
            .with_state(state.clone());
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("fake CRM listener"),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let addr = listener.tcp.local_addr().expect("fake CRM address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (
            FakeCrm {
                scheme: "https",
                addr,
                state,
                task,
            },
            ca,
        )
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("{}://{}/crm", self.scheme, self.addr)
    }

    /// Scripts the answers for `key`.
    pub fn script(&self, key: &str, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .insert(key.into(), replies.iter().cloned().collect());
    }

    /// Starts or ends an outage (every request answered `503`).
    pub fn set_down(&self, down: bool) {
        self.set_outage(down.then_some(503));
    }

    /// Starts an outage answering `status` to every request, or ends it.
    pub fn set_outage(&self, status: Option<u16>) {
        self.state.lock().unwrap().down = status;
    }

    /// Every request so far, grouped by the string at `pointer` (a JSON
    /// pointer into the body, e.g. the venue a template put there), each
    /// group in arrival order: (idempotency key, status answered, applied
    /// by this request).
    pub fn arrivals_by(&self, pointer: &str) -> HashMap<String, Vec<(String, u16, bool)>> {
        let s = self.state.lock().unwrap();
        let mut applied = std::collections::HashSet::new();
        let mut out: HashMap<String, Vec<(String, u16, bool)>> = HashMap::new();
        for r in &s.requests {
            let first = r.status == 200 && applied.insert(r.key.clone());
            let group = r
                .body
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            out.entry(group)
                .or_default()
                .push((r.key.clone(), r.status, first));
        }
        out
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

impl Drop for FakeCrm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<Mutex<CrmState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let key = header("idempotency-key");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (reply, status) = {
        let mut s = state.lock().unwrap();
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        let reply = if let Some(c) = s.down {
            Some(Reply::Status(c))
        } else {
            match s.script.get_mut(&key) {
                Some(q) => match q.front() {
                    Some(Reply::Always(c)) => Some(Reply::Status(*c)),
                    Some(_) => q.pop_front(),
                    None => None,
                },
                None => None,
            }
        };
        let status = match &reply {
            Some(Reply::Status(c))
            | Some(Reply::Always(c))
            | Some(Reply::EchoToken { status: c, .. }) => *c,
            Some(Reply::TooMany(_)) => 429,
            Some(Reply::Hang(_)) | None => {
                if s.applied.iter().any(|(k, _)| *k == key) {
                    *s.repeats.entry(key.clone()).or_insert(0) += 1;
                } else {
                    s.applied.push((key.clone(), body.clone()));
                }
                200
            }
        };
        s.requests.push(Seen {
            key,
            auth: header("authorization"),
            body,
            at: Instant::now(),
            status,
        });
        (reply, status)
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = match reply {
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            (code, "{\"ok\":true}").into_response()
        }
        Some(Reply::TooMany(secs)) => (
            code,
            [("retry-after", secs.to_string())],
            "{\"error\":\"slow down\"}",
        )
            .into_response(),
        Some(Reply::EchoToken { pad, .. }) => {
            let auth = header("authorization");
            let bare = auth
                .split_once(' ')
                .map_or(auth.as_str(), |(_, t)| t.trim());
            let body = format!("{}invalid token {bare}", "x".repeat(pad));
            (code, body).into_response()
        }
        Some(_) if status == 400 => (code, "{\"error\":\"invalid email address\"}").into_response(),
        Some(_) => (code, "{\"error\":\"internal\"}").into_response(),
        None => (code, "{\"ok\":true}").into_response(),
    };
    state.lock().unwrap().in_flight -= 1;
    response
}

/// A TCP listener that completes a TLS handshake before handing the
/// connection to axum; failed handshakes (an untrusting client) are
/// dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

type Chain = Vec<rustls::pki_types::CertificateDer<'static>>;

/// A CA and a server certificate for 127.0.0.1 it signed, made with the
/// `openssl` command in `dir`: (CA PEM path, server chain, server key).
fn test_pki(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    Chain,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=fake-crm-test-ca",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key"))
        .expect("server key PEM");
    (dir.join("ca.pem"), chain, key)
}
