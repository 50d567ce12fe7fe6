//! The Kafka producer.
//!
//! - [`client_config`] builds every librdkafka setting in one place:
//!   `acks=all`, idempotence, and a message timeout equal to the request
//!   deadline unless `kafka.delivery_timeout` extends it (needed against
//!   tansu 0.6, see that setting).
//! - [`KafkaProducer::deliver`] hands one record over and waits for the
//!   brokers' acknowledgement or the deadline, whichever comes first. Only an
//!   acknowledgement is success; a full queue is retried until the deadline.
//! - [`KafkaProducer::supervise`] probes the brokers for `/readyz`, and
//!   replaces the producer if librdkafka reports a fatal error (an idempotent
//!   producer that lost its sequence state cannot recover by itself).
//!
//! Delivery reports are served on the tokio side, not by a thread of their
//! own: librdkafka calls [`queue_became_non_empty`] when its main queue goes
//! from empty to non-empty, which wakes one task that drains the queue and
//! completes each waiting request's [`Answer`] from a tokio worker. rdkafka's
//! `FutureProducer` instead keeps a thread blocked on that queue, so every
//! batch of reports woke that thread and then, from it, the workers: two
//! cross-thread wake-ups per batch where this takes one (BENCHMARKS.md,
//! "Ingest's CPU").
//!
//! Records are produced through a topic handle made once per producer
//! ([`Generation::produce`]), not by topic name as rdkafka's `send` does.

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::util::IntoOpaque;
use rdkafka::{Message, bindings};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{KafkaConfig, ServerConfig};
use crate::metrics::Metrics;

/// How often the brokers are probed and the producer checked.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before re-offering a record to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// What the producers' callbacks tell the supervisor.
#[derive(Default)]
struct Signals {
    /// Generation of the last producer that reported all brokers down.
    down_generation: AtomicU64,
    /// Wakes the supervisor at once on such a report.
    wake: Notify,
}

/// librdkafka callbacks: logs routed to `tracing`, and "all brokers down"
/// reported to the supervisor.
pub struct Context {
    /// Which producer generation this context belongs to.
    generation: u64,
    /// Shared with the supervisor.
    signals: Arc<Signals>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        plumbing::route_librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.signals
                .down_generation
                .store(self.generation, Ordering::SeqCst);
            self.signals.wake.notify_one();
        }
        // Broker-down errors repeat while the broker is away; readiness and
        // the 503 counters carry that signal, so keep this at warn.
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

/// What a delivery report answers a waiting request.
type Outcome = Result<Delivered, DeliveryError>;

impl ProducerContext for Context {
    type DeliveryOpaque = Reply;

    /// Runs on the tokio worker that drains the main queue
    /// ([`serve_reports`]); the request may have given up (deadline), in
    /// which case nobody listens and the outcome is dropped.
    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(classify(e)),
        };
        reply.send(outcome);
    }
}

/// The answer to one waiting request, shared by the request and its
/// record's delivery report: one allocation per record, where a oneshot
/// channel boxed as librdkafka's opaque took two. It also owns the record's
/// payload, which librdkafka reads in place instead of copying: the
/// report's reference keeps it alive for as long as librdkafka holds the
/// record, whether or not the request still waits.
struct Answer {
    /// The record's value, as handed to librdkafka.
    payload: Vec<u8>,
    /// Set once, by the delivery report (or by the report's drop).
    outcome: OnceLock<Outcome>,
    /// Wakes the request once the outcome is set.
    ready: Notify,
}

impl Answer {
    fn new(payload: Vec<u8>) -> Arc<Answer> {
        Arc::new(Answer {
            payload,
            outcome: OnceLock::new(),
            ready: Notify::new(),
        })
    }

    /// Waits until the outcome is set. `notify_one` stores a permit when
    /// nobody waits yet, so an outcome set between the check and the wait
    /// is not missed.
    async fn wait(&self) -> Outcome {
        loop {
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone();
            }
            self.ready.notified().await;
        }
    }
}

/// The delivery report's side of an [`Answer`], carried through librdkafka
/// as the record's opaque pointer.
pub struct Reply(Arc<Answer>);

impl Reply {
    fn send(self, outcome: Outcome) {
        let _ = self.0.outcome.set(outcome);
        self.0.ready.notify_one();
    }
}

impl Drop for Reply {
    /// A record whose report never came (its producer went away) still
    /// answers its request, at once rather than at the deadline.
    fn drop(&mut self) {
        if self.0.outcome.get().is_none() {
            let _ = self
                .0
                .outcome
                .set(Err(DeliveryError::Broker("producer was replaced".into())));
            self.0.ready.notify_one();
        }
    }
}

impl IntoOpaque for Reply {
    fn into_ptr(self) -> *mut c_void {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so its reference count moves into
        // the pointer unchanged.
        let answer = unsafe { std::ptr::read(&me.0) };
        Arc::into_raw(answer) as *mut c_void
    }

    unsafe fn from_ptr(ptr: *mut c_void) -> Reply {
        // SAFETY: the caller passes a pointer made by `into_ptr`, once.
        Reply(unsafe { Arc::from_raw(ptr as *const Answer) })
    }
}

/// A producer's handle on the raw topic, released on drop.
struct Topic(*mut bindings::rd_kafka_topic_t);

// SAFETY: librdkafka's topic handles may be used from any thread.
unsafe impl Send for Topic {}
// SAFETY: as above.
unsafe impl Sync for Topic {}

impl Drop for Topic {
    fn drop(&mut self) {
        // SAFETY: our own reference, released once, before the producer's
        // destruction (field order of `Generation`).
        unsafe { bindings::rd_kafka_topic_destroy(self.0) }
    }
}

/// One producer instance and its generation number.
///
/// Field order is drop order, and it matters: the main-queue reference must
/// be released before the producer is destroyed (librdkafka waits for every
/// queue reference), and the wake-up must outlive the producer whose
/// callback points at it.
struct Generation {
    /// Counts up from 1 with each replacement.
    id: u64,
    /// Set when a newer generation replaced this one: its report task ends
    /// once every record it held has been reported.
    retired: AtomicBool,
    /// librdkafka's main queue (delivery reports, errors, logs).
    main_queue: MainQueue,
    /// The raw topic's handle, through which records are produced.
    topic: Topic,
    /// The librdkafka producer.
    producer: BaseProducer<Context>,
    /// Woken by librdkafka when the main queue becomes non-empty.
    wake: Arc<Notify>,
}

impl Generation {
    /// Hands one record to librdkafka through the topic handle: no look-up
    /// of the topic by name, for which librdkafka takes its client's write
    /// lock, and no copy of the name per record (rdkafka's `send` makes a
    /// `CString` of it). On failure the reply comes back with the error.
    fn produce(&self, record: &Record<'_>, reply: Reply) -> Result<(), (RDKafkaErrorCode, Reply)> {
        use bindings::rd_kafka_vtype_t::*;
        // No `RD_KAFKA_MSG_F_COPY`: librdkafka reads the payload where it
        // is, in the reply's answer, until the record's delivery report.
        // A copy inside its record allocation made that allocation larger
        // than glibc's per-thread cache takes (BENCHMARKS.md, step 15).
        let payload = &reply.0.payload;
        let (payload_ptr, payload_len) = (payload.as_ptr() as *mut c_void, payload.len());
        // SAFETY: every pointer passed is valid for the call; librdkafka
        // copies the key, and takes the headers only on success (destroyed
        // here otherwise). The payload is not copied and stays valid while
        // librdkafka may read it: it lives in the answer, whose reference
        // the opaque carries; that reference is turned back into the reply
        // on failure, and by the delivery report ([`Context::delivery`])
        // on success, once librdkafka is done with the record. A record
        // that is never reported (its producer destroyed with it) leaks its
        // reference, and so its payload is never freed under librdkafka.
        // librdkafka never writes to a payload it does not own.
        unsafe {
            let headers = bindings::rd_kafka_headers_new(2);
            for (name, value) in [("source", record.source), ("event-id", record.event_id)] {
                bindings::rd_kafka_header_add(
                    headers,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                );
            }
            let opaque = reply.into_ptr();
            let err = bindings::rd_kafka_producev(
                self.producer.client().native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                self.topic.0,
                RD_KAFKA_VTYPE_PARTITION,
                -1i32,
                RD_KAFKA_VTYPE_MSGFLAGS,
                0,
                RD_KAFKA_VTYPE_VALUE,
                payload_ptr,
                payload_len,
                RD_KAFKA_VTYPE_KEY,
                record.key.as_ptr() as *mut c_void,
                record.key.len(),
                RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                RD_KAFKA_VTYPE_TIMESTAMP,
                record.timestamp_ms,
                RD_KAFKA_VTYPE_HEADERS,
                headers,
                RD_KAFKA_VTYPE_END,
            );
            if err == bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                Ok(())
            } else {
                bindings::rd_kafka_headers_destroy(headers);
                Err((err.into(), Reply::from_ptr(opaque)))
            }
        }
    }
}

/// One record to produce, borrowed from the request; its payload travels
/// in the [`Reply`].
struct Record<'a> {
    key: &'a [u8],
    source: &'a str,
    event_id: &'a str,
    timestamp_ms: i64,
}

/// A reference to a producer's main queue, released on drop.
struct MainQueue(*mut bindings::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles are thread-safe (its documentation:
// every queue operation takes the queue's lock).
unsafe impl Send for MainQueue {}
// SAFETY: as above.
unsafe impl Sync for MainQueue {}

impl MainQueue {
    fn len(&self) -> usize {
        // SAFETY: the pointer is a live queue reference until drop.
        unsafe { bindings::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: our own reference, released once.
        unsafe { bindings::rd_kafka_queue_destroy(self.0) }
    }
}

/// librdkafka's queue event callback: called on one of its threads, with
/// the queue's lock held, each time the main queue goes from empty to
/// non-empty. It only wakes the report task.
unsafe extern "C" fn queue_became_non_empty(
    _rk: *mut bindings::rd_kafka_t,
    opaque: *mut std::ffi::c_void,
) {
    // SAFETY: `opaque` is `Arc::as_ptr` of the generation's `wake`, which
    // outlives the producer (field order of `Generation`).
    let wake = unsafe { &*(opaque as *const Notify) };
    wake.notify_one();
}

/// Serves one generation's delivery reports until it is retired and has
/// nothing left to report, then destroys it off the workers.
async fn serve_reports(generation: Arc<Generation>) {
    loop {
        // Drain to empty: the callback fires only on the empty-to-non-empty
        // transition, and a permit stored by `notify_one` while we drain
        // just makes the next wait return at once.
        while generation.main_queue.len() > 0 {
            generation.producer.poll(Duration::ZERO);
        }
        if generation.retired.load(Ordering::Acquire) && generation.producer.in_flight_count() == 0
        {
            break;
        }
        // Bounded wait: a retired generation is re-checked even if its last
        // records leave without a report (purged before they were queued).
        let _ = tokio::time::timeout(PROBE_INTERVAL, generation.wake.notified()).await;
    }
    tokio::task::spawn_blocking(move || drop(generation));
}

/// Why a record was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The deadline passed before the brokers acknowledged.
    #[error("the brokers did not acknowledge before the request deadline")]
    Timeout,
    /// The producer queue stayed full until the deadline.
    #[error("the producer queue stayed full until the request deadline")]
    QueueFull,
    /// The record is larger than the brokers accept.
    #[error("the record is larger than the brokers accept")]
    TooLarge,
    /// Any other producer or broker error.
    #[error("the brokers refused or could not be reached: {0}")]
    Broker(String),
}

impl DeliveryError {
    /// Metric label for `ingest_broker_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryError::Timeout => "timeout",
            DeliveryError::QueueFull => "queue_full",
            DeliveryError::TooLarge => "too_large",
            DeliveryError::Broker(_) => "broker",
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition of the raw topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
}

/// Builds the librdkafka settings: the user's options and the security
/// settings ([`plumbing::kafka::client_config`]), then the guarantees
/// (config load already refused options that fight a guarantee). Fails
/// when a secret cannot be read.
pub fn client_config(
    kafka: &KafkaConfig,
    server: &ServerConfig,
) -> Result<ClientConfig, KafkaError> {
    let mut c = plumbing::kafka::client_config(&kafka.brokers, &kafka.options, &kafka.security)?;
    let timeout_ms = kafka
        .delivery_timeout
        .unwrap_or(server.request_timeout)
        .max(server.request_timeout)
        .as_millis()
        .max(1)
        .to_string();
    // Enough room for every in-flight request plus records whose request
    // already answered 503 and that are still being retried; past it, sends
    // fail fast with a full queue (503), so memory stays bounded.
    let queue_max = (server.max_in_flight.saturating_mul(2) + 128).to_string();
    c.set("client.id", &kafka.client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", &timeout_ms)
        .set("linger.ms", kafka.linger.as_millis().to_string())
        .set("message.max.bytes", kafka.message_max_bytes.to_string())
        .set("queue.buffering.max.messages", &queue_max)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.keepalive.enable", "true");
    Ok(c)
}

/// The raw-topic producer, replaceable after a fatal error.
pub struct KafkaProducer {
    /// Settings to build a replacement producer with.
    settings: ClientConfig,
    /// The raw topic.
    topic: String,
    /// The live producer.
    current: ArcSwap<Generation>,
    /// Generation of the last producer that got an acknowledgement.
    used_generation: AtomicU64,
    /// Reports from the producers' callbacks.
    signals: Arc<Signals>,
    /// Set when the last probe reached the brokers and found the topic.
    ready: AtomicBool,
    /// Where delivery outcomes are counted.
    metrics: Metrics,
}

impl KafkaProducer {
    /// Creates the producer. Does not contact the brokers: ingest starts
    /// (and answers 503) while they are away.
    pub fn new(
        kafka: &KafkaConfig,
        server: &ServerConfig,
        metrics: Metrics,
    ) -> Result<KafkaProducer, KafkaError> {
        let settings = client_config(kafka, server)?;
        let signals = Arc::new(Signals::default());
        let first = create(&settings, &kafka.topic, 1, &signals)?;
        Ok(KafkaProducer {
            settings,
            topic: kafka.topic.clone(),
            current: ArcSwap::new(first),
            used_generation: AtomicU64::new(0),
            signals,
            ready: AtomicBool::new(false),
            metrics,
        })
    }

    /// The raw topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the last probe reached the brokers and found the raw topic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records handed over and not yet acknowledged.
    pub fn queue_depth(&self) -> i32 {
        self.current.load().producer.in_flight_count()
    }

    /// Hands a record to the producer and waits until the brokers
    /// acknowledged it (`acks=all`) or `deadline` passed. `timestamp_ms` is
    /// the record timestamp: the envelope's received-at, so that the time
    /// ranges of `processors replay` (which go by record timestamp) and the
    /// envelope agree. The payload is handed over, not copied: it is freed
    /// once the request and the record's delivery report are both done.
    pub async fn deliver(
        &self,
        key: &[u8],
        payload: Vec<u8>,
        source: &str,
        event_id: &str,
        timestamp_ms: i64,
        deadline: Instant,
    ) -> Result<Delivered, DeliveryError> {
        let started = Instant::now();
        let generation = self.current.load_full();
        let record = Record {
            key,
            source,
            event_id,
            timestamp_ms,
        };
        let answer = Answer::new(payload);
        let mut reply = Reply(answer.clone());
        loop {
            match generation.produce(&record, reply) {
                Ok(()) => break,
                Err((RDKafkaErrorCode::QueueFull, r)) => {
                    if Instant::now() + QUEUE_FULL_BACKOFF >= deadline {
                        return Err(self.failed(DeliveryError::QueueFull));
                    }
                    reply = r;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((code, _)) => {
                    return Err(self.failed(classify(&KafkaError::MessageProduction(code))));
                }
            }
        }
        // Giving up at the deadline does not withdraw the record: it may
        // still be delivered. The sender got a non-2xx and retries; the
        // processors drop the duplicate by event id.
        let outcome = tokio::time::timeout_at(deadline, answer.wait())
            .await
            .unwrap_or(Err(DeliveryError::Timeout));
        match outcome {
            Ok(d) => {
                self.used_generation
                    .fetch_max(generation.id, Ordering::Relaxed);
                self.metrics
                    .produce_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(d)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: DeliveryError) -> DeliveryError {
        self.metrics
            .broker_errors
            .with_label_values(&[e.kind()])
            .inc();
        e
    }

    /// Probes the brokers, and replaces the producer when it hit a fatal
    /// error or lost every broker, until `shutdown` resolves.
    ///
    /// Why replace on "all brokers down": an idempotent producer keeps its
    /// producer id and sequence numbers across reconnects, and a broker that
    /// restarted without that state (tansu, see DESIGN.md) refuses or even
    /// fails on them. A fresh producer registers a new id when the brokers
    /// return. The records the old one still held are purged, so their
    /// requests answer 503 and the senders retry: nothing acknowledged is
    /// touched.
    pub async fn supervise(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.check()).await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = self.signals.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn replace(&self, current: &Generation, why: &str) {
        let next = current.id + 1;
        match create(&self.settings, &self.topic, next, &self.signals) {
            Ok(fresh) => {
                tracing::warn!(generation = next, "{why}: replacing the producer");
                self.current.store(fresh);
                current.retired.store(true, Ordering::Release);
                // Its records fail now (their requests answer 503) rather
                // than reach a broker under the old producer id.
                current
                    .producer
                    .purge(PurgeConfig::default().queue().inflight());
                current.wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "could not create a replacement producer"),
        }
    }

    /// One supervision round (blocking: librdkafka calls).
    fn check(&self) {
        let current = self.current.load_full();
        if let Some((code, reason)) = current.producer.client().fatal_error() {
            tracing::error!(%code, %reason, "producer hit a fatal error");
            self.metrics
                .broker_errors
                .with_label_values(&["fatal"])
                .inc();
            self.replace(&current, "fatal producer error");
        } else if self.signals.down_generation.load(Ordering::SeqCst) == current.id
            && self.used_generation.load(Ordering::Relaxed) == current.id
        {
            self.ready.store(false, Ordering::Relaxed);
            self.metrics.broker_up.set(0);
            self.replace(&current, "all brokers down");
            return;
        }
        let current = self.current.load_full();
        let up = match current
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_millis(1500))
        {
            Ok(md) => md.topics().iter().any(|t| {
                t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()
            }),
            Err(_) => false,
        };
        let was = self.ready.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(topic = %self.topic, "brokers reachable, raw topic present");
            } else {
                tracing::warn!(topic = %self.topic, "brokers unreachable or raw topic missing");
            }
        }
        self.metrics.broker_up.set(i64::from(up));
        self.metrics
            .producer_queue_depth
            .set(i64::from(current.producer.in_flight_count()));
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current.load().producer.flush(timeout)
    }
}

/// Creates generation `id` and starts its report task (which must run on a
/// tokio runtime).
fn create(
    settings: &ClientConfig,
    topic: &str,
    id: u64,
    signals: &Arc<Signals>,
) -> Result<Arc<Generation>, KafkaError> {
    let producer: BaseProducer<Context> = settings.create_with_context(Context {
        generation: id,
        signals: signals.clone(),
    })?;
    let wake = Arc::new(Notify::new());
    let rk = producer.client().native_ptr();
    let name = CString::new(topic).map_err(|_| {
        KafkaError::ClientCreation(format!("topic {topic:?} contains a NUL character"))
    })?;
    // SAFETY: `rk` is the live client and `name` a C string; the handle is
    // released by `Topic`'s drop, before the producer's (field order).
    let topic = unsafe { bindings::rd_kafka_topic_new(rk, name.as_ptr(), std::ptr::null_mut()) };
    if topic.is_null() {
        // SAFETY: reads the calling thread's last librdkafka error.
        let code = RDKafkaErrorCode::from(unsafe { bindings::rd_kafka_last_error() });
        return Err(KafkaError::ClientCreation(format!(
            "topic {name:?}: {code}"
        )));
    }
    let topic = Topic(topic);
    // SAFETY: `rk` is the live client; the queue reference is released by
    // `MainQueue`'s drop, before the producer's (field order); the opaque
    // points at `wake`, which outlives the producer.
    let main_queue = unsafe {
        let q = bindings::rd_kafka_queue_get_main(rk);
        bindings::rd_kafka_queue_cb_event_enable(
            q,
            Some(queue_became_non_empty),
            Arc::as_ptr(&wake) as *mut std::ffi::c_void,
        );
        MainQueue(q)
    };
    let generation = Arc::new(Generation {
        id,
        retired: AtomicBool::new(false),
        main_queue,
        topic,
        producer,
        wake,
    });
    tokio::spawn(serve_reports(generation.clone()));
    Ok(generation)
}

fn classify(e: &KafkaError) -> DeliveryError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => DeliveryError::Timeout,
        Some(RDKafkaErrorCode::QueueFull) => DeliveryError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
        | Some(RDKafkaErrorCode::MessageBatchTooLarge) => DeliveryError::TooLarge,
        _ => DeliveryError::Broker(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    /// A producer whose brokers never answer (nothing listens on port 1),
    /// whose records outlive their requests (`delivery_timeout` 60 s, as
    /// against tansu), with the smallest queue: `max_in_flight = 1`, so
    /// `2 × 1 + 128 = 130` records.
    fn stuck_producer() -> KafkaProducer {
        let kafka = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            delivery_timeout: Some(Duration::from_secs(60)),
            ..KafkaConfig::default()
        };
        let server = ServerConfig {
            max_in_flight: 1,
            ..ServerConfig::default()
        };
        KafkaProducer::new(&kafka, &server, Metrics::new().unwrap()).unwrap()
    }

    /// Hands over records whose requests give up at once (deadline now)
    /// until the queue refuses one; answers how many it took.
    async fn fill(p: &KafkaProducer) -> usize {
        let mut queued = 0;
        loop {
            match p
                .deliver(b"k", b"v".to_vec(), "s", "e", 0, Instant::now())
                .await
            {
                Err(DeliveryError::Timeout) => queued += 1,
                Err(DeliveryError::QueueFull) => return queued,
                other => panic!("after {queued} records: {other:?}"),
            }
        }
    }

    /// The chosen queue-full behaviour (BENCHMARKS.md, "Producer queue
    /// full"): a request that meets a full queue waits for room until its
    /// deadline rather than being refused at once; room that frees before
    /// the deadline is used; at the deadline the answer is a 503 with
    /// Retry-After.
    #[tokio::test]
    async fn a_full_queue_is_waited_on_until_the_deadline_then_503() {
        let p = stuck_producer();
        assert_eq!(
            fill(&p).await,
            130,
            "the queue holds 2 × max_in_flight + 128"
        );

        // Still full at the deadline: refused then, not before.
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = p
            .deliver(b"k", b"v".to_vec(), "s", "e", 0, deadline)
            .await
            .unwrap_err();
        assert_eq!(err, DeliveryError::QueueFull);
        assert!(
            Instant::now() + QUEUE_FULL_BACKOFF >= deadline,
            "refused before its deadline"
        );
        let resp = crate::http::AppError::Delivery(err).into_response();
        assert_eq!(resp.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));

        // Room frees while a request waits (here: the queued records are
        // purged, as acknowledgements would remove them): it gets its record
        // in, and then waits for the brokers like any other.
        let deadline = Instant::now() + Duration::from_secs(1);
        let waiting = p.deliver(b"k", b"v".to_vec(), "s", "e", 0, deadline);
        let purge = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            p.current
                .load()
                .producer
                .purge(PurgeConfig::default().queue());
        };
        let (outcome, ()) = tokio::join!(waiting, purge);
        assert_eq!(
            outcome,
            Err(DeliveryError::Timeout),
            "the freed room was not used"
        );
        assert_eq!(
            p.queue_depth(),
            1,
            "only the waiting request's record is queued"
        );
    }

    /// A replaced generation's records are answered (purged: 503), its
    /// report task ends, and the producer is destroyed: a broker that keeps
    /// failing must not leave one live librdkafka client (and its threads)
    /// behind per replacement.
    #[tokio::test]
    async fn a_replaced_generation_answers_its_records_and_is_destroyed() {
        let p = Arc::new(stuck_producer());
        let old = Arc::downgrade(&p.current.load_full());
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move {
                p.deliver(
                    b"k",
                    b"v".to_vec(),
                    "s",
                    "e",
                    0,
                    Instant::now() + Duration::from_secs(10),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current = p.current.load_full();
        p.replace(&current, "test");
        drop(current);
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the purged record's request was never answered")
            .unwrap();
        assert!(
            matches!(outcome, Err(DeliveryError::Broker(_))),
            "purged record: {outcome:?}"
        );
        let gone = async {
            while old.upgrade().is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the replaced generation was never destroyed");
        assert_eq!(p.current.load().id, 2);
    }

    /// The answer reaches its request whether the report comes before or
    /// after the request waits, and a report dropped unsent (its producer
    /// destroyed) answers at once instead of leaving the request to its
    /// deadline.
    #[tokio::test]
    async fn an_answer_arrives_once_sent_or_dropped() {
        let delivered = Ok(Delivered {
            partition: 3,
            offset: 42,
        });
        let early = Answer::new(Vec::new());
        Reply(early.clone()).send(delivered.clone());
        assert_eq!(early.wait().await, delivered);

        let late = Answer::new(Vec::new());
        let reply = Reply(late.clone());
        let waiting = tokio::spawn({
            let late = late.clone();
            async move { late.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "answered before the report");
        // Through librdkafka's opaque pointer and back, as a report does.
        // SAFETY: a pointer made by `into_ptr`, turned back once.
        let reply = unsafe { Reply::from_ptr(reply.into_ptr()) };
        reply.send(delivered.clone());
        assert_eq!(waiting.await.unwrap(), delivered);
        assert_eq!(Arc::strong_count(&late), 1, "the report's reference leaked");

        let orphan = Answer::new(Vec::new());
        drop(Reply(orphan.clone()));
        let outcome = tokio::time::timeout(Duration::from_secs(1), orphan.wait())
            .await
            .expect("a dropped report left its request waiting");
        assert!(
            matches!(outcome, Err(DeliveryError::Broker(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn guarantees_win_over_user_options() {
        let mut kafka = KafkaConfig::default();
        kafka
            .options
            .insert("compression.type".into(), "lz4".into());
        let server = ServerConfig::default();
        let c = client_config(&kafka, &server).unwrap();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("message.timeout.ms"), Some("2000"));
        kafka.delivery_timeout = Some(Duration::from_secs(30));
        let c = client_config(&kafka, &server).unwrap();
        assert_eq!(c.get("message.timeout.ms"), Some("30000"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
    }
}
