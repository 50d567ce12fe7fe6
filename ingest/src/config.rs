//! Ingest configuration.
//!
//! Layers, later wins: built-in defaults, the TOML file, then environment
//! variables prefixed `INGEST_` with `__` between levels
//! (`INGEST_KAFKA__BROKERS=host:9092`). Secret values are never in the file:
//! a source names the variable or file that holds each one.
//!
//! [`Config::load`] returns every problem it finds at once, each naming the
//! file, the source and the field, and never panics.
//!
//! A source's signature settings are the signature component's own
//! ([`crate::signature::config`]); this module composes them into
//! [`SourceConfig`] and delegates their checks to
//! [`SignatureConfig::problems`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use plumbing::{describe_figment, valid_topic};
use serde::Deserialize;

use crate::address::Cidrs;
use crate::durability::DurabilityConfig;
use crate::poller::config::{PollConfig, PollerConfig};
use crate::rate_limit::{MAX_BURST, RATE_RANGE};
use crate::secret::{SecretRef, valid_secret_id};
use crate::signature::config::SignatureConfig;
use crate::tls::{MtlsConfig, TlsConfig};

/// The whole ingest configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Kafka producer settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Log output settings.
    #[serde(default)]
    pub log: LogConfig,
    /// The webhook sources, by name: `POST /webhooks/{name}`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// `ingest poll` as a whole: its metrics address and cursor topic.
    #[serde(default)]
    pub poller: PollerConfig,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:8080`. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Deadline for one webhook request, from its arrival to the broker's
    /// acknowledgement; past it the answer is 503. Keep it below the
    /// shortest sender timeout (Slack gives up after 3 s, Shopify after 5 s).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Webhook requests handled at once; past it the answer is 503 with
    /// `Retry-After`, so memory stays bounded under any load.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The `Retry-After` sent with 503 answers.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before the server stops waiting for them.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Proxies in front of ingest (CIDR blocks, e.g. `10.0.0.0/8`). Only a
    /// request whose TCP peer is one of them has its `X-Forwarded-For`
    /// read, right to left, skipping these; the first other address is the
    /// client. Empty (the default): the peer is the client and the header is
    /// ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// An admin address (e.g. `10.0.0.5:9090`) for `/metrics`, `/healthz`
    /// and `/readyz`, apart from the webhook port that faces the
    /// providers. Set, `/metrics` is served there only; unset (the
    /// default), on `listen`.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// How long a client may take to send a request's line and headers,
    /// from the first byte (or, on a kept-alive connection, from the end of
    /// the previous answer); past it the connection is closed without an
    /// answer, so a slowloris sender cannot pin it. The body is bounded by
    /// `request_timeout` (408 `body_timeout`, connection closed).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes, at least
    /// 8192; a larger one is answered 431 and the connection closed.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request; more is answered 431 and the
    /// connection closed.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// HTTP/2 only: most requests (streams) open at once on one
    /// connection, advertised to the client in its SETTINGS; a stream past
    /// it is refused. Each stream's headers are bounded by
    /// `max_header_bytes`, and a connection buffers at most 1 MiB of bodies
    /// not yet read (its flow-control window).
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// Serve the webhook port over TLS: `{ cert_file, key_file }` (PEM),
    /// reloaded when they change. Absent: plain HTTP, e.g. behind a load
    /// balancer that ends TLS. The admin port stays plain either way.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Threads running the webhook server (tokio's workers), 1 to 256.
    /// Unset: `TOKIO_WORKER_THREADS` if set, else one per CPU this process
    /// may use (its affinity and its cgroup's CPU quota). One worker costs
    /// the least CPU per webhook (fewer wake-ups between threads, see
    /// BENCHMARKS.md) and serves one core's worth; scale out with more
    /// instances rather than more workers.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// Kafka producer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// The raw topic every verified event is written to.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Client id shown in broker logs.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// How long the producer waits to batch records (librdkafka `linger.ms`).
    /// 5 ms by default: more records per produce request, so fewer requests
    /// and thread wake-ups per webhook. Chosen by a sweep from 2 to 20 ms
    /// (BENCHMARKS.md, "Earlier figures"), taken while the unpatched
    /// librdkafka still busy-polled during its linger; the patched one
    /// (`vendor/rdkafka-sys/PATCHES.md`) no longer does.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// How long the producer keeps retrying a record (librdkafka
    /// `message.timeout.ms`). Unset, it is `server.request_timeout`: the
    /// Kafka contract bounds delivery by the request deadline, so a record
    /// whose request answered 503 does not land minutes later.
    ///
    /// Set it longer (e.g. 30s) against tansu 0.6: when an in-flight record
    /// times out, librdkafka bumps the idempotent producer's epoch, and
    /// tansu 0.6 panics on an epoch it did not hand out. A longer timeout
    /// rides out a broker restart without any timeout; requests still
    /// answer 503 at their deadline, and a record that lands after its 503
    /// is a duplicate the processors drop by event id.
    #[serde(default, with = "humantime_serde")]
    pub delivery_timeout: Option<Duration>,
    /// Largest record the brokers accept (librdkafka `message.max.bytes`);
    /// every source's body limit must fit in it.
    #[serde(default = "default_message_max_bytes")]
    pub message_max_bytes: usize,
    /// Extra librdkafka settings. Settings that would weaken delivery
    /// guarantees (`acks`, `enable.idempotence`, timeouts) are refused at
    /// start-up, and so are TLS and SASL settings: they go in `security`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// TLS and SASL to the brokers, secrets from the environment or files
    /// (see [`plumbing::kafka::Security`]).
    #[serde(default)]
    pub security: plumbing::kafka::Security,
    /// The least replication the raw topic must have for a `2xx` to mean
    /// what it says (see [`crate::durability`]).
    #[serde(default)]
    pub durability: DurabilityConfig,
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
}

pub use plumbing::LogFormat;

/// One webhook source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// How the sender signs its requests.
    pub signature: SignatureConfig,
    /// Largest body accepted, in bytes; refused with 413 from
    /// `Content-Length` before reading, or while reading.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Where the event id comes from; when absent from a request, the id is
    /// `body-sha256-` and a hash of the source name and the exact body, so
    /// a provider's retry of the same bytes is the same event.
    #[serde(default = "default_event_id")]
    pub event_id: Option<Extract>,
    /// Where the ordering key comes from (the Kafka record key); without one
    /// the event id is the key.
    #[serde(default)]
    pub ordering_key: Option<Extract>,
    /// Where the per-key sequence number comes from.
    #[serde(default)]
    pub sequence: Option<Extract>,
    /// Request headers kept in the envelope (case-insensitive). Credentials
    /// (`Authorization`, cookies) are refused.
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
    /// Client addresses accepted (CIDR blocks or single addresses, IPv4 and
    /// IPv6), e.g. the provider's published ranges; any other is refused
    /// with 403 before the body is read. Absent: every address.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Requests accepted per second, with bursts; past it 429 with
    /// `Retry-After`, before the body is read. Absent: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Answer Slack's `url_verification` handshake (a signed POST whose body
    /// is `{"type": "url_verification", "challenge": ...}`) with its
    /// challenge, after verifying it, instead of storing it as an event.
    #[serde(default)]
    pub url_verification: bool,
    /// Answer a GET subscription check (`?hub.mode=subscribe&hub.challenge=
    /// ...&hub.verify_token=...`) with its challenge. Absent: GET is 405.
    #[serde(default)]
    pub subscription: Option<SubscriptionConfig>,
    /// Require a client certificate that chains to `ca_file` (PEM): a
    /// request without one is refused with 403
    /// `client_certificate_required` before the body is read. Needs
    /// `server.tls`. Absent: no client certificate asked of this source.
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
    /// Read this source's events from the provider's REST history API too
    /// (`ingest poll`): scheduled polling, a reconciliation sweep, or both.
    /// Absent: webhooks only.
    #[serde(default)]
    pub poll: Option<PollConfig>,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second (0.001 to 1000000), e.g. `50.0`.
    pub per_second: f64,
    /// Requests accepted at once after a quiet spell (1 to 1000000).
    pub burst: u32,
}

/// The GET subscription check (WebSub-style `hub.challenge`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Query parameter whose value is echoed back.
    #[serde(default = "default_challenge_param")]
    pub challenge_param: String,
    /// Query parameter carrying the verify token.
    #[serde(default = "default_token_param")]
    pub token_param: String,
    /// The token the provider was given (from env or a file, like every
    /// secret); a check without it is refused with 401. Absent: any caller
    /// gets the challenge echoed (nothing is stored either way).
    #[serde(default)]
    pub verify_token: Option<SecretRef>,
}

/// Where a value is taken from in a request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Extract {
    /// A JSON pointer into the body, e.g. `/venue/id`.
    Pointer(String),
    /// A request header, e.g. `X-GitHub-Delivery`.
    Header(String),
}

const fn default_max_in_flight() -> usize {
    1024
}
const fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_http2_max_streams() -> u32 {
    100
}

const fn default_max_header_bytes() -> usize {
    16 * 1024
}
const fn default_max_headers() -> usize {
    64
}
const fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}
const fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}
const fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_linger() -> Duration {
    Duration::from_millis(5)
}
const fn default_message_max_bytes() -> usize {
    1_000_000
}
const fn default_max_body_bytes() -> usize {
    256 * 1024
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic() -> String {
    "webhooks.raw".into()
}
fn default_client_id() -> String {
    "ingest".into()
}
fn default_event_id() -> Option<Extract> {
    Some(Extract::Pointer("/id".into()))
}
fn default_challenge_param() -> String {
    "hub.challenge".into()
}
fn default_token_param() -> String {
    "hub.verify_token".into()
}
fn default_forward_headers() -> Vec<String> {
    vec!["user-agent".into(), "x-request-id".into()]
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            request_timeout: default_request_timeout(),
            max_in_flight: default_max_in_flight(),
            retry_after: default_retry_after(),
            shutdown_timeout: default_shutdown_timeout(),
            trusted_proxies: Vec::new(),
            admin_listen: None,
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            http2_max_streams: default_http2_max_streams(),
            tls: None,
            worker_threads: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            topic: default_topic(),
            client_id: default_client_id(),
            linger: default_linger(),
            delivery_timeout: None,
            message_max_bytes: default_message_max_bytes(),
            options: BTreeMap::new(),
            security: plumbing::kafka::Security::default(),
            durability: DurabilityConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
        }
    }
}

/// Smallest `server.max_header_bytes`: hyper's read buffer cannot be
/// smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest `server.max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Room kept in a Kafka record for the envelope around the body.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Headers that carry credentials: never copied into the envelope.
pub const FORBIDDEN_FORWARD_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// librdkafka settings ingest owns because they carry its guarantees.
pub const RESERVED_KAFKA_OPTIONS: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "transactional.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "message.max.bytes",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
];

/// Every problem found in a configuration, each naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {}:\n  - {}", path.display(), problems.join("\n  - "))]
pub struct ConfigError {
    /// The file that was loaded.
    pub path: PathBuf,
    /// One line per problem, naming source and field.
    pub problems: Vec<String>,
}

impl Config {
    /// Loads the file, applies `INGEST_` environment overrides and checks
    /// the result. Does not read secret values (see [`crate::source`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        if !path.is_file() {
            return Err(fail(vec![
                "file not found or not a regular file".to_string(),
            ]));
        }
        let config: Config = Self::figment(path)
            .extract()
            .map_err(|e| fail(e.into_iter().map(|e| describe_figment(&e)).collect()))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// The file and the environment, layered.
    fn figment(path: &Path) -> Figment {
        Figment::new()
            .merge(Toml::file_exact(path))
            // Only nested keys (`INGEST_KAFKA__BROKERS`): every setting lives in
            // a section, and this leaves INGEST_CONFIG and INGEST_LOG (the log
            // filter) to the command line.
            .merge(
                Env::prefixed("INGEST_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
    }

    /// For `ingest check-config`: loads like [`Config::load`] but does not
    /// stop at the first section that fails to parse. Each section and each
    /// source is parsed on its own, so one unknown field does not hide the
    /// problems of the others. Returns what parsed (failed sections take
    /// their defaults, failed sources are left out) and every problem found;
    /// secrets are not read here (see [`crate::source::Source::build_all`]).
    pub fn check(path: &Path) -> (Option<Config>, Vec<String>) {
        if !path.is_file() {
            return (
                None,
                vec!["file not found or not a regular file".to_string()],
            );
        }
        let figment = Self::figment(path);
        let whole = match figment.extract::<Config>() {
            Ok(config) => {
                let problems = config.problems();
                return (Some(config), problems);
            }
            Err(e) => e,
        };
        let root: BTreeMap<String, figment::value::Value> = match figment.extract() {
            Ok(r) => r,
            Err(e) => return (None, e.into_iter().map(|e| describe_figment(&e)).collect()),
        };
        let mut p = Vec::new();
        let mut config = Config {
            server: ServerConfig::default(),
            kafka: KafkaConfig::default(),
            log: LogConfig::default(),
            sources: BTreeMap::new(),
            poller: PollerConfig::default(),
        };
        fn section<T: serde::de::DeserializeOwned>(
            at: &str,
            v: &figment::value::Value,
            p: &mut Vec<String>,
        ) -> Option<T> {
            v.deserialize::<T>()
                .map_err(|e| {
                    p.extend(e.into_iter().map(|e| {
                        let path = e.path.join(".");
                        let at = if path.is_empty() {
                            at.to_string()
                        } else {
                            format!("{at}.{path}")
                        };
                        format!("{at}: {}", e.kind)
                    }))
                })
                .ok()
        }
        let mut failed_sources = false;
        for (key, value) in &root {
            match key.as_str() {
                "server" => config.server = section(key, value, &mut p).unwrap_or_default(),
                "kafka" => config.kafka = section(key, value, &mut p).unwrap_or_default(),
                "log" => config.log = section(key, value, &mut p).unwrap_or_default(),
                "poller" => config.poller = section(key, value, &mut p).unwrap_or_default(),
                "sources" => {
                    let all: BTreeMap<String, figment::value::Value> =
                        section(key, value, &mut p).unwrap_or_default();
                    for (name, v) in &all {
                        match section::<SourceConfig>(&format!("sources.{name}"), v, &mut p) {
                            Some(src) => {
                                config.sources.insert(name.clone(), src);
                            }
                            None => failed_sources = true,
                        }
                    }
                }
                other => p.push(format!(
                    "{other}: unknown field `{other}`, expected one of `server`, `kafka`, `log`, `sources`, `poller`"
                )),
            }
        }
        if p.is_empty() {
            // Parsed section by section after all: say what the whole did.
            p.extend(whole.into_iter().map(|e| describe_figment(&e)));
        }
        p.extend(config.problems().into_iter().filter(|line| {
            // Sources that did not parse are reported already.
            !(failed_sources && line.starts_with("sources: no source configured"))
        }));
        (Some(config), p)
    }

    /// Parses TOML text with no environment layer (tests, examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: PathBuf::from("<inline>"),
            problems,
        };
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| fail(e.into_iter().map(|e| describe_figment(&e)).collect()))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Whether the TLS handshake asks clients for a certificate: some
    /// source has `mtls`.
    pub fn asks_client_certificates(&self) -> bool {
        self.sources.values().any(|s| s.mtls.is_some())
    }

    /// Cross-field checks; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        p.extend(self.kafka.durability.problems());
        let s = &self.server;
        if s.request_timeout < Duration::from_millis(100)
            || s.request_timeout > Duration::from_secs(60)
        {
            p.push("server.request_timeout: must be between 100ms and 60s".into());
        }
        if s.max_in_flight == 0 {
            p.push("server.max_in_flight: must be at least 1".into());
        }
        if s.header_read_timeout < Duration::from_millis(100)
            || s.header_read_timeout > Duration::from_secs(300)
        {
            p.push("server.header_read_timeout: must be between 100ms and 5m".into());
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&s.max_header_bytes) {
            p.push(format!(
                "server.max_header_bytes: must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"
            ));
        }
        if !(8..=1000).contains(&s.max_headers) {
            p.push("server.max_headers: must be between 8 and 1000".into());
        }
        if !(1..=1000).contains(&s.http2_max_streams) {
            p.push("server.http2_max_streams: must be between 1 and 1000".into());
        }
        if let Some(n) = s.worker_threads
            && !(1..=plumbing::runtime::MAX_WORKER_THREADS).contains(&n)
        {
            p.push(format!(
                "server.worker_threads: must be between 1 and {}",
                plumbing::runtime::MAX_WORKER_THREADS
            ));
        }
        if s.retry_after.as_secs() == 0 {
            p.push("server.retry_after: must be at least 1s".into());
        }
        if let Some(admin) = self.server.admin_listen
            && admin.port() != 0
            && admin == self.server.listen
        {
            p.push("server.admin_listen: must differ from server.listen".into());
        }
        if let Some(tls) = &s.tls {
            p.extend(tls.problems("server.tls"));
        }
        if let Err(bad) = Cidrs::parse(&s.trusted_proxies) {
            for (i, why) in bad {
                p.push(format!("server.trusted_proxies[{i}]: {why}"));
            }
        }
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty".into());
        }
        if !valid_topic(&k.topic) {
            p.push(format!(
                "kafka.topic: {:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)",
                k.topic
            ));
        }
        if k.linger >= s.request_timeout {
            p.push("kafka.linger: must be shorter than server.request_timeout".into());
        }
        if let Some(t) = k.delivery_timeout
            && (t < s.request_timeout || t > Duration::from_secs(900))
        {
            p.push("kafka.delivery_timeout: must be between server.request_timeout and 15m".into());
        }
        if k.message_max_bytes < ENVELOPE_OVERHEAD_BYTES * 2 {
            p.push(format!(
                "kafka.message_max_bytes: must be at least {}",
                ENVELOPE_OVERHEAD_BYTES * 2
            ));
        }
        for key in k.options.keys() {
            if RESERVED_KAFKA_OPTIONS.contains(&key.as_str()) {
                p.push(format!(
                    "kafka.options.{key}: set by ingest to keep its delivery guarantees; remove it"
                ));
            }
        }
        p.extend(plumbing::kafka::options_problems(&k.options));
        p.extend(k.security.problems());
        for (field, topic) in [
            ("cursor_topic", Some(&self.poller.cursor_topic)),
            ("unfillable_topic", Some(&self.poller.unfillable_topic)),
            ("reconcile_topic", self.poller.reconcile_topic.as_ref()),
        ] {
            if let Some(t) = topic
                && !valid_topic(t)
            {
                p.push(format!(
                    "poller.{field}: {t:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        if self.sources.is_empty() {
            p.push("sources: no source configured; add a [sources.NAME] table".into());
        }
        for (name, src) in &self.sources {
            let at = format!("sources.{name}");
            if !valid_source_name(name) {
                p.push(format!(
                    "{at}: source names are 1-64 of a-z 0-9 _ - and start with a letter or digit"
                ));
            }
            if src.max_body_bytes == 0 {
                p.push(format!("{at}.max_body_bytes: must be at least 1"));
            }
            let max_body = k.message_max_bytes.saturating_sub(ENVELOPE_OVERHEAD_BYTES);
            if src.max_body_bytes > max_body {
                p.push(format!(
                    "{at}.max_body_bytes: {} does not fit in a Kafka record (kafka.message_max_bytes {} less {} for the envelope)",
                    src.max_body_bytes, k.message_max_bytes, ENVELOPE_OVERHEAD_BYTES
                ));
            }
            for (field, ex) in [
                ("event_id", &src.event_id),
                ("ordering_key", &src.ordering_key),
                ("sequence", &src.sequence),
            ] {
                match ex {
                    Some(Extract::Pointer(ptr)) if !ptr.starts_with('/') => p.push(format!(
                        "{at}.{field}.pointer: {ptr:?} is not a JSON pointer (it must start with /)"
                    )),
                    Some(Extract::Header(h))
                        if axum::http::HeaderName::try_from(h.as_str()).is_err() =>
                    {
                        p.push(format!(
                            "{at}.{field}.header: {h:?} is not a valid header name"
                        ))
                    }
                    _ => {}
                }
            }
            for h in &src.forward_headers {
                let lower = h.to_ascii_lowercase();
                if FORBIDDEN_FORWARD_HEADERS.contains(&lower.as_str()) {
                    p.push(format!(
                        "{at}.forward_headers: {h:?} carries credentials and is never stored"
                    ));
                } else if axum::http::HeaderName::try_from(h.as_str()).is_err() {
                    p.push(format!(
                        "{at}.forward_headers: {h:?} is not a valid header name"
                    ));
                }
            }
            p.extend(src.signature.problems(&format!("{at}.signature")));
            if src.mtls.is_some() && s.tls.is_none() {
                p.push(format!(
                    "{at}.mtls: client certificates come with TLS: set server.tls"
                ));
            }
            access_problems(&at, src, &mut p);
            if let Some(poll) = &src.poll {
                p.extend(poll.problems(&format!("{at}.poll")));
            }
        }
        p
    }
}

/// The checks of a source's allow-list, rate limit and handshakes.
fn access_problems(at: &str, src: &SourceConfig, p: &mut Vec<String>) {
    match &src.allow {
        Some(list) if list.is_empty() => p.push(format!(
            "{at}.allow: an empty list refuses every address; remove `allow` to accept any"
        )),
        Some(list) => {
            if let Err(bad) = Cidrs::parse(list) {
                for (i, why) in bad {
                    p.push(format!("{at}.allow[{i}]: {why}"));
                }
            }
        }
        None => {}
    }
    if let Some(r) = &src.rate_limit {
        let (min, max) = RATE_RANGE;
        if !(r.per_second.is_finite() && r.per_second >= min && r.per_second <= max) {
            p.push(format!(
                "{at}.rate_limit.per_second: {} must be between {min} and {max}",
                r.per_second
            ));
        }
        if r.burst == 0 || r.burst > MAX_BURST {
            p.push(format!(
                "{at}.rate_limit.burst: {} must be between 1 and {MAX_BURST}",
                r.burst
            ));
        }
    }
    if let Some(sub) = &src.subscription {
        for (field, param) in [
            ("challenge_param", &sub.challenge_param),
            ("token_param", &sub.token_param),
        ] {
            if !valid_query_param(param) {
                p.push(format!(
                    "{at}.subscription.{field}: {param:?} must be 1-64 visible ASCII characters, none of & = # ? + %"
                ));
            }
        }
        if sub.challenge_param == sub.token_param {
            p.push(format!(
                "{at}.subscription.token_param: must differ from challenge_param"
            ));
        }
        if let Some(t) = &sub.verify_token {
            let tat = format!("{at}.subscription.verify_token");
            if !valid_secret_id(&t.id) {
                p.push(format!(
                    "{tat}.id: {:?} must be 1-64 of a-z A-Z 0-9 . _ -",
                    t.id
                ));
            }
            if t.env.is_some() == t.file.is_some() {
                p.push(format!("{tat}: name exactly one of `env` or `file`"));
            }
        }
    }
}

fn valid_query_param(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#' | b'?' | b'+' | b'%'))
}

/// Source names appear in URLs, metric labels and Kafka headers.
pub fn valid_source_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        request_timeout = "1500ms"

        [kafka]
        brokers = "127.0.0.1:9092"

        [sources.purple]
        signature = { scheme = "purple", secrets = [{ id = "current", env = "PURPLE_SECRET" }] }
        ordering_key = { pointer = "/venue/id" }
        sequence = { pointer = "/sequence" }
    "#;

    #[test]
    fn loads_a_good_config_with_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.server.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.server.max_in_flight, 1024);
        assert_eq!(c.kafka.topic, "webhooks.raw");
        let s = &c.sources["purple"];
        assert_eq!(s.event_id, Some(Extract::Pointer("/id".into())));
        assert_eq!(s.ordering_key, Some(Extract::Pointer("/venue/id".into())));
        assert_eq!(s.max_body_bytes, 256 * 1024);
    }

    #[test]
    fn client_limits_have_defaults_and_bounds() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_header_bytes, 16 * 1024);
        assert_eq!(c.server.max_headers, 64);
        // Below hyper's smallest read buffer would panic at start-up.
        let text = GOOD.replace(
            "[server]",
            "[server]\nheader_read_timeout = \"0s\"\nmax_header_bytes = 100\nmax_headers = 0",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        for field in ["header_read_timeout", "max_header_bytes", "max_headers"] {
            assert!(all.contains(&format!("server.{field}")), "{all}");
        }
    }

    #[test]
    fn worker_threads_is_unset_by_default_and_bounded() {
        assert_eq!(Config::from_toml(GOOD).unwrap().server.worker_threads, None);
        let one = GOOD.replace("[server]", "[server]\nworker_threads = 1");
        assert_eq!(
            Config::from_toml(&one).unwrap().server.worker_threads,
            Some(1)
        );
        for bad in ["0", "257"] {
            let text = GOOD.replace("[server]", &format!("[server]\nworker_threads = {bad}"));
            let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
            assert!(
                all.contains("server.worker_threads: must be between 1 and 256"),
                "{bad}: {all}"
            );
        }
        let text = GOOD.replace("[server]", "[server]\nworker_threads = -1");
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(all.contains("server.worker_threads"), "{all}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = GOOD.replace("request_timeout", "request_timout");
        let e = Config::from_toml(&text).unwrap_err();
        let all = e.problems.join("\n");
        assert!(all.contains("request_timout"), "{all}");
    }

    #[test]
    fn tls_parses_with_defaults_and_refuses_unknown_keys() {
        let text = GOOD.replace(
            "[server]",
            "[server]\ntls = { cert_file = \"/etc/ingest/tls.crt\", key_file = \"/etc/ingest/tls.key\" }",
        );
        let c = Config::from_toml(&text).unwrap();
        let tls = c.server.tls.expect("server.tls");
        assert_eq!(tls.cert_file, PathBuf::from("/etc/ingest/tls.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/etc/ingest/tls.key"));
        assert_eq!(tls.reload_interval, Duration::from_secs(5));
        assert!(Config::from_toml(GOOD).unwrap().server.tls.is_none());

        let text = GOOD.replace(
            "[server]",
            "[server]\ntls = { cert_file = \"a.crt\", key_file = \"a.key\", ciphers = \"ALL\" }",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(all.contains("ciphers"), "{all}");

        let text = GOOD.replace("[server]", "[server]\ntls = { cert_file = \"a.crt\" }");
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(all.contains("key_file"), "{all}");

        let text = GOOD.replace(
            "[server]",
            "[server]\ntls = { cert_file = \"\", key_file = \"a.key\", reload_interval = \"1ms\" }",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(
            all.contains("server.tls.cert_file: must name a PEM file"),
            "{all}"
        );
        assert!(all.contains("server.tls.reload_interval"), "{all}");
    }

    #[test]
    fn mtls_needs_server_tls_and_refuses_unknown_keys() {
        let mtls = GOOD.replace(
            "[sources.purple]",
            "[sources.purple]\nmtls = { ca_file = \"/etc/ingest/purple-ca.pem\" }",
        );
        let all = Config::from_toml(&mtls).unwrap_err().problems.join("\n");
        assert!(
            all.contains("sources.purple.mtls: client certificates come with TLS"),
            "{all}"
        );
        let with_tls = mtls.replace(
            "[server]",
            "[server]\ntls = { cert_file = \"a.crt\", key_file = \"a.key\" }",
        );
        let c = Config::from_toml(&with_tls).unwrap();
        assert!(c.asks_client_certificates());
        assert_eq!(
            c.sources["purple"].mtls.as_ref().unwrap().ca_file,
            PathBuf::from("/etc/ingest/purple-ca.pem")
        );
        let unknown = with_tls.replace("ca_file =", "required = true, ca_file =");
        let all = Config::from_toml(&unknown).unwrap_err().problems.join("\n");
        assert!(all.contains("required"), "{all}");
        assert!(!Config::from_toml(GOOD).unwrap().asks_client_certificates());
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let text = GOOD.replace("scheme = \"purple\"", "scheme = \"rot13\"");
        let e = Config::from_toml(&text).unwrap_err();
        assert!(e.problems.join("\n").contains("rot13"), "{e}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
            [kafka]
            topic = "bad topic"
            options = { "acks" = "1" }

            [sources.BadName]
            signature = { scheme = "purple", secrets = [] }

            [sources.ok]
            max_body_bytes = 5000000
            forward_headers = ["Authorization"]
            ordering_key = { pointer = "venue" }
            signature = { scheme = "purple", secrets = [{ id = "a", env = "X", file = "/y" }, { id = "a", env = "Z" }] }
        "#;
        let e = Config::from_toml(text).unwrap_err();
        let all = e.problems.join("\n");
        for needle in [
            "kafka.topic",
            "kafka.options.acks",
            "sources.BadName:",
            "sources.BadName.signature.secrets: at least one",
            "sources.ok.max_body_bytes",
            "sources.ok.forward_headers",
            "sources.ok.ordering_key.pointer",
            "sources.ok.signature.secrets[0]: name exactly one",
            "sources.ok.signature.secrets[1].id: \"a\" is used twice",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn delivery_timeout_defaults_to_the_deadline_and_never_shorter() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.kafka.delivery_timeout, None);
        let text = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\ndelivery_timeout = \"1s\"",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(all.contains("kafka.delivery_timeout"), "{all}");
        let text = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\ndelivery_timeout = \"30s\"",
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.kafka.delivery_timeout, Some(Duration::from_secs(30)));
    }

    fn with_signature(signature: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("[sources.s]\nsignature = {{ {signature} }}\n"))
    }

    #[test]
    fn every_scheme_parses() {
        let five = Some(Duration::from_secs(300));
        for (text, name, tolerance) in [
            (
                r#"scheme = "github", secrets = [{ id = "a", env = "GH_SECRET" }]"#,
                "github",
                None,
            ),
            (
                r#"scheme = "stripe", tolerance = "5m", secrets = [{ id = "a", env = "STRIPE_SECRET" }]"#,
                "stripe",
                five,
            ),
            (
                r#"scheme = "shopify", secrets = [{ id = "a", env = "SHOPIFY_SECRET" }]"#,
                "shopify",
                None,
            ),
            (
                r#"scheme = "slack", tolerance = "5m", secrets = [{ id = "a", env = "SLACK_SECRET" }]"#,
                "slack",
                five,
            ),
            (
                r#"scheme = "standard", tolerance = "5m", secrets = [{ id = "a", env = "SVIX_SECRET" }]"#,
                "standard",
                five,
            ),
            (
                r#"scheme = "hmac", header = "X-Sig", timestamp_header = "X-Sig-Timestamp", tolerance = "5m", secrets = [{ id = "a", env = "SIG_SECRET" }, { id = "b", file = "/run/secrets/sig" }]"#,
                "hmac",
                five,
            ),
        ] {
            let c = with_signature(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let sig = &c.sources["s"].signature;
            let parsed = match sig {
                SignatureConfig::Purple(_) => "purple",
                SignatureConfig::Hmac(_) => "hmac",
                SignatureConfig::Github(_) => "github",
                SignatureConfig::Stripe(_) => "stripe",
                SignatureConfig::Shopify(_) => "shopify",
                SignatureConfig::Slack(_) => "slack",
                SignatureConfig::Standard(_) => "standard",
            };
            assert_eq!(parsed, name);
            assert_eq!(sig.tolerance(), tolerance, "{name}");
            assert_eq!(sig.secrets()[0].id, "a");
        }
        let SignatureConfig::Hmac(h) = &with_signature(
            r#"scheme = "hmac", header = "X-Sig", timestamp_header = "X-Sig-Timestamp", tolerance = "90s", secrets = [{ id = "a", env = "S" }]"#,
        )
        .unwrap()
        .sources["s"]
            .signature
        else {
            panic!("not hmac");
        };
        assert_eq!(h.timestamp_header.as_deref(), Some("X-Sig-Timestamp"));
        assert_eq!(h.tolerance, Some(Duration::from_secs(90)));
    }

    #[test]
    fn tolerance_defaults_to_five_minutes() {
        for text in [
            r#"scheme = "stripe", secrets = [{ id = "a", env = "S" }]"#,
            r#"scheme = "slack", secrets = [{ id = "a", env = "S" }]"#,
            r#"scheme = "standard", secrets = [{ id = "a", env = "S" }]"#,
            r#"scheme = "hmac", header = "X-Sig", timestamp_header = "X-Ts", secrets = [{ id = "a", env = "S" }]"#,
        ] {
            let c = with_signature(text).unwrap();
            assert_eq!(
                c.sources["s"].signature.tolerance(),
                Some(Duration::from_secs(300)),
                "{text}"
            );
        }
        let plain = with_signature(
            r#"scheme = "hmac", header = "X-Sig", secrets = [{ id = "a", env = "S" }]"#,
        )
        .unwrap();
        assert_eq!(plain.sources["s"].signature.tolerance(), None);
    }

    #[test]
    fn signature_problems_are_named() {
        let problem = |text: &str| with_signature(text).unwrap_err().problems.join("\n");
        for (text, needle) in [
            (
                r#"scheme = "stripe", tolerance = "0s", secrets = [{ id = "a", env = "S" }]"#,
                "sources.s.signature.tolerance: must be between 1s and 1h",
            ),
            (
                r#"scheme = "slack", tolerance = "2h", secrets = [{ id = "a", env = "S" }]"#,
                "sources.s.signature.tolerance: must be between 1s and 1h",
            ),
            (
                r#"scheme = "standard", tolerance = "soon", secrets = [{ id = "a", env = "S" }]"#,
                "sources.s.signature: invalid value string \"soon\", expected a duration",
            ),
            (
                r#"scheme = "github", tolerance = "5m", secrets = [{ id = "a", env = "S" }]"#,
                "tolerance",
            ),
            (
                r#"scheme = "shopify", header = "X-Other", secrets = [{ id = "a", env = "S" }]"#,
                "header",
            ),
            (
                r#"scheme = "standard", secrets = []"#,
                "sources.s.signature.secrets: at least one",
            ),
            (
                r#"scheme = "hmac", header = "X-Sig", timestamp_header = "bad header", secrets = [{ id = "a", env = "S" }]"#,
                "sources.s.signature.timestamp_header",
            ),
            (
                r#"scheme = "hmac", header = "X-Sig", timestamp_header = "x-sig", secrets = [{ id = "a", env = "S" }]"#,
                "must differ from signature.header",
            ),
            (
                r#"scheme = "hmac", header = "X-Sig", tolerance = "5m", secrets = [{ id = "a", env = "S" }]"#,
                "sources.s.signature.tolerance: has no effect without timestamp_header",
            ),
        ] {
            let all = problem(text);
            assert!(
                all.contains(needle),
                "{text}: missing {needle:?} in:\n{all}"
            );
        }
    }

    #[test]
    fn access_and_handshake_keys_parse_with_defaults() {
        let text = GOOD.replace(
            "request_timeout = \"1500ms\"",
            "request_timeout = \"1500ms\"\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]",
        ) + r#"
            allow = ["203.0.113.0/24", "2001:db8::/32", "192.0.2.7"]
            rate_limit = { per_second = 50.0, burst = 100 }
            url_verification = true
            subscription = { verify_token = { id = "t1", env = "HUB_TOKEN" } }
        "#;
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "fd00::/8"]);
        let s = &c.sources["purple"];
        assert_eq!(s.allow.as_ref().map(Vec::len), Some(3));
        assert_eq!(
            s.rate_limit,
            Some(RateLimitConfig {
                per_second: 50.0,
                burst: 100
            })
        );
        assert!(s.url_verification);
        let sub = s.subscription.as_ref().unwrap();
        assert_eq!(sub.challenge_param, "hub.challenge");
        assert_eq!(sub.token_param, "hub.verify_token");
        assert_eq!(sub.verify_token.as_ref().unwrap().id, "t1");
        // Off by default.
        let plain = &Config::from_toml(GOOD).unwrap().sources["purple"];
        assert!(plain.allow.is_none() && plain.rate_limit.is_none());
        assert!(!plain.url_verification && plain.subscription.is_none());
    }

    #[test]
    fn access_and_handshake_problems_are_named() {
        let with = |extra: &str| {
            Config::from_toml(&format!("{GOOD}\n{extra}\n"))
                .unwrap_err()
                .problems
                .join("\n")
        };
        for (extra, needle) in [
            (
                r#"allow = ["10.0.0.0/8", "10.0.0/8"]"#,
                "sources.purple.allow[1]: \"10.0.0/8\" is not a CIDR",
            ),
            (
                r#"allow = ["10.0.0.1/8"]"#,
                "sources.purple.allow[0]: \"10.0.0.1/8\" has bits set past its prefix",
            ),
            (
                "allow = []",
                "sources.purple.allow: an empty list refuses every address",
            ),
            (
                "rate_limit = { per_second = 0.0, burst = 10 }",
                "sources.purple.rate_limit.per_second: 0 must be between",
            ),
            (
                "rate_limit = { per_second = 5.0, burst = 0 }",
                "sources.purple.rate_limit.burst: 0 must be between 1 and 1000000",
            ),
            (
                "rate_limit = { per_second = 5.0 }",
                "sources.purple.rate_limit: missing field `burst`",
            ),
            (
                "rate_limit = { per_second = 5.0, burst = 1, window = \"1s\" }",
                "window",
            ),
            (
                r#"subscription = { challenge_param = "a&b" }"#,
                "sources.purple.subscription.challenge_param: \"a&b\" must be",
            ),
            (
                r#"subscription = { token_param = "hub.challenge" }"#,
                "sources.purple.subscription.token_param: must differ from challenge_param",
            ),
            (
                r#"subscription = { verify_token = { id = "t", env = "A", file = "/b" } }"#,
                "sources.purple.subscription.verify_token: name exactly one of `env` or `file`",
            ),
            (
                r#"subscription = { verify_token = { id = "", env = "A" } }"#,
                "sources.purple.subscription.verify_token.id",
            ),
            ("url_verification = \"yes\"", "url_verification"),
        ] {
            let all = with(extra);
            assert!(
                all.contains(needle),
                "{extra}: missing {needle:?} in:\n{all}"
            );
        }
        let text = GOOD.replace(
            "[kafka]",
            "trusted_proxies = [\"10.0.0.0/8\", \"proxy.internal\"]\n[kafka]",
        );
        let all = Config::from_toml(&text).unwrap_err().problems.join("\n");
        assert!(
            all.contains("server.trusted_proxies[1]: \"proxy.internal\" is not a CIDR"),
            "{all}"
        );
    }

    #[test]
    fn check_reports_the_problems_of_every_section_at_once() {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(
            br#"
            [server]
            listen = "not an address"
            [sources.typo]
            alow = ["10.0.0.0/8"]
            signature = { scheme = "purple", secrets = [{ id = "a", env = "X" }] }
            [sources.rot]
            signature = { scheme = "rot13", secrets = [{ id = "a", env = "X" }] }
            [sources.ok]
            allow = ["10.0.0/8"]
            event_id = { pointer = "id" }
            signature = { scheme = "purple", secrets = [{ id = "a", env = "X" }] }
            [extra]
            "#,
        )
        .unwrap();
        let (config, problems) = Config::check(f.path());
        let all = problems.join("\n");
        for needle in [
            "server.listen:",
            "sources.typo.alow: unknown field",
            "sources.rot.signature",
            "rot13",
            "sources.ok.allow[0]: \"10.0.0/8\" is not a CIDR",
            "sources.ok.event_id.pointer",
            "extra: unknown field `extra`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // What parsed is returned, so its secrets can be checked too.
        let config = config.unwrap();
        assert_eq!(config.sources.keys().collect::<Vec<_>>(), ["ok"]);
        // A good file: no problems, and the same config as `load`.
        let mut g = tempfile::NamedTempFile::new().unwrap();
        g.write_all(GOOD.as_bytes()).unwrap();
        let (config, problems) = Config::check(g.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert!(config.unwrap().sources.contains_key("purple"));
        let (none, problems) = Config::check(Path::new("/nonexistent/ingest.toml"));
        assert!(none.is_none() && problems.len() == 1);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let e = Config::load(Path::new("/nonexistent/ingest.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ingest.toml"));
    }

    #[test]
    fn kafka_security_problems_are_reported_with_the_field() {
        let wrong = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\noptions = { \"sasl.password\" = \"in-the-text\" }\nsecurity = { protocol = \"sasl_ssl\", ca_file = \"/nonexistent/ca.pem\" }",
        );
        let e = Config::from_toml(&wrong).unwrap_err();
        let all = e.problems.join("\n");
        for needle in [
            "kafka.options.sasl.password: TLS and SASL are set with [kafka.security]",
            "kafka.security.ca_file: /nonexistent/ca.pem cannot be read",
            "kafka.security.protocol: sasl_ssl needs a [kafka.security.sasl] table",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("in-the-text"), "{all}");
        let plain = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nsecurity = { protocol = \"plaintext\", sasl = { mechanism = \"SCRAM-SHA-512\", username = \"ingest\", password_env = \"INGEST_TEST_UNSET_PW\" } }",
        );
        let all = Config::from_toml(&plain).unwrap_err().problems.join("\n");
        assert!(
            all.contains("kafka.security.sasl: set, but protocol is plaintext (no SASL)"),
            "{all}"
        );
    }
}
