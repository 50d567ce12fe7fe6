//! The CRM sink: each routed event becomes one HTTP `POST` of a JSON
//! document built from a template (a contact upsert, a journey entry
//! event), the marketing-automation trigger of `DESIGN.md`.
//!
//! Decisions, in the order a request meets them:
//!
//! - **Template** ([`Template`]): a JSON document whose string values may hold
//!   `{{path}}` placeholders. A string that is exactly one placeholder
//!   becomes the field's JSON value (number, bool, object, or `null` when
//!   missing); placeholders inside longer text are interpolated as text
//!   (missing: empty). Paths are dotted names into the event's [view]
//!   (`event_id`, `venue_id`, `guest.email`, `body.venue.name`, ...); the
//!   root name is checked when the template is loaded, so a typo fails
//!   `check-config`. Nothing is evaluated. Fields named in `required` must be
//!   present and not null, else the event is rejected at once (dead-letter
//!   reason `template: ...`): a contact without an e-mail is not worth a
//!   request.
//! - **Idempotency**: every attempt carries `Idempotency-Key:
//!   <source>:<event_id>`, the same across retries, restarts and instances,
//!   so the CRM applies an event once however often it is offered.
//! - **Auth**: `auth_header` gets the value of the environment variable
//!   `auth_env`, read once at start. The value is marked sensitive, never
//!   logged, never in metrics, and redacted (`[redacted]`) from response
//!   bodies quoted in reasons, before they are clipped: the whole value,
//!   and what a server may echo of it: the bare credential after a scheme
//!   word (`Bearer t` → `t`), the values of `name=value` parameters after
//!   it, for `Basic` the decoded `user:password` and the password, and each
//!   of these with `/` escaped as `\/` (parts under 4 characters are not
//!   redacted on their own). A server echoing it in another form (say URL-
//!   or base64-encoded differently) is not caught.
//! - **Order**: events of one batch are grouped by key: the source and the
//!   event's ordering key (whose events the pipeline releases in order;
//!   for the guest-WiFi platform the venue), else its event id. A key's events go
//!   one after another, in batch order, each only once the one before it
//!   was accepted or rejected; at its first event answered `Retry` the key
//!   stops, and its later events in the batch are answered `Retry` without
//!   a request (reason `after an earlier event of its key: ...`). The
//!   pipeline offers `Retry` events again in order, so a key's events reach
//!   the CRM in order, however the answers go. Keys run concurrently.
//! - **Concurrency and rate**: per sink (one destination), up to
//!   `max_concurrency` keys of a batch at once, a semaphore of
//!   `max_concurrency` requests in flight across every partition, and a
//!   pacer spacing request starts `1/rate_per_second` apart. Outcomes come
//!   back one per event, in batch order.
//! - **Answers**: `2xx` accepted. Every `4xx` but 401, 403, 408, 409, 425
//!   and 429 is an answer about the event that will not change: it is
//!   rejected at once with the status and the clipped body, so the
//!   pipeline dead-letters it and moves on. The rest is transient, retried,
//!   and of one of three kinds, by whose failure it is:
//!   - *about the event*: `409` (its idempotent request still in flight),
//!     `425`;
//!   - *the destination's rate*: `429`;
//!   - *destination-wide*: `5xx`, `401` and `403` (credentials are
//!     destination-wide: a rotation must not dead-letter every event),
//!     `408`, `3xx` (redirects are not followed), timeouts, connection and
//!     other transport errors.
//! - **Retries**: a transient answer is retried within the same call up to
//!   `attempts_per_call` with exponential backoff (`backoff_initial`,
//!   doubling to `backoff_max`) and full jitter; `Retry-After` (seconds) is
//!   honoured, capped at `retry_after_max`, and also pauses the whole
//!   destination for that long. Still failing: the sink answers `Retry`
//!   and the pipeline offers the event again later (the partition waits).
//! - **Attempts that count** towards `max_attempts` (counted per
//!   idempotency key across calls, in a bounded map; if it fills up it is
//!   cleared, which only grants more retries): every answer about the
//!   event; never a `429`, nor an offer answered "circuit open" without a
//!   request; a destination-wide failure only while the destination is
//!   healthy: the request was not a half-open probe, and the destination
//!   accepted or rejected another event (a `2xx` or a permanent `4xx`,
//!   from any partition) since this event's previous answer (for its first
//!   attempt, since its request went). So an outage, however long, costs
//!   no event an attempt (beyond one or two at its edge, where requests
//!   sent before it still succeed), while an event that keeps failing when
//!   others succeed (a poison event the CRM answers `500`) is counted.
//!   Once an event's counted attempts reach `max_attempts`, it is rejected
//!   (`gave up after N attempts; last: <answer>`), dead-lettered, and its
//!   key moves on. The cost: a poison event with no other traffic to the
//!   destination looks like an outage, so it is retried (its partition
//!   waiting) until other events show the destination healthy.
//! - **Circuit breaker** ([`Breaker`]): `breaker_failures` rate-limit or
//!   destination-wide failures in a row open it for `breaker_cooldown`.
//!   While open, events are answered `Retry("circuit open")` without a
//!   request; after the cooldown one probe goes through (half-open): an
//!   answer about an event (`2xx`, any `4xx` but 401, 403, 408 and 429)
//!   closes it, a failure opens it again.
//!
//! Without a TLS feature in this build, only `http://` URLs are accepted
//! (put a TLS-terminating proxy in front, or enable reqwest's `rustls-tls`).

mod breaker;
mod config;
mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::sinks::contract::{Applied, BoxFuture, Outcome, Sink, SinkError};
use crate::sinks::util::retry_after;

use breaker::Pacer;
pub use breaker::{Breaker, BreakerState};
pub use config::CrmConfig;
use config::load_ca;
use template::lookup;
pub use template::{Template, VIEW_FIELDS, idempotency_key, view};

/// Most characters of a response body quoted in a reason.
const BODY_CLIP: usize = 300;
/// What stands in a quoted body for the credential.
const REDACTED: &str = "[redacted]";
/// Shortest part of a credential redacted on its own (shorter ones would
/// garble bodies, and are no secret worth the name).
const MIN_REDACTED: usize = 4;
/// Most idempotency keys whose attempts are remembered.
const MAX_TRACKED: usize = 100_000;

/// What one attempt came to.
#[derive(Debug)]
enum Answer {
    /// `2xx`: applied.
    Ok,
    /// An answer about this event that will not change: refused for good.
    Permanent(String),
    /// Not now; `blame` says whose failure it was.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        blame: Blame,
    },
}

/// Whose failure a transient answer is, which decides whether it spends
/// the event's `max_attempts` (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// `409`, `425`: an answer about this event; always counted.
    Event,
    /// `429`: the destination's rate limit; never counted.
    Rate,
    /// `3xx`, `401`, `403`, `408`, `5xx`, timeouts, connection and other
    /// transport errors: counted only while the destination is healthy.
    Destination,
}

/// What the sink remembers of an event between attempts and offers.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Attempts counted against `max_attempts`.
    counted: u32,
    /// [`CrmSink::settled`] when this event's last answer came (for its
    /// first attempt: when the request went), so a later failure can tell
    /// whether other events were settled by the destination meanwhile.
    settled_seen: u64,
}

/// The CRM sink (see the module header).
pub struct CrmSink {
    name: String,
    config: CrmConfig,
    template: Template,
    client: reqwest::Client,
    /// Header name and (sensitive) value, when configured.
    auth: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// What to redact from quoted bodies: the credential and the parts of
    /// it a server may echo ([`redactions`]), longest first.
    secrets: Vec<String>,
    breaker: Mutex<Breaker>,
    in_flight: tokio::sync::Semaphore,
    pacer: Pacer,
    /// Per idempotency key, over all offers: attempts counted so far.
    attempts: Mutex<HashMap<String, Tally>>,
    /// Events the destination settled (`2xx` or a permanent `4xx`), ever:
    /// the evidence that it is healthy.
    settled: AtomicU64,
    metrics: Metrics,
}

impl CrmSink {
    /// Builds the sink from checked settings; reads the template and the
    /// credential (`auth_env`) now. Errors name the field, never the value.
    pub fn new(name: &str, config: &CrmConfig, metrics: &Metrics) -> Result<CrmSink, SinkError> {
        Self::build(name, config, metrics).map_err(SinkError::Config)
    }

    fn build(name: &str, config: &CrmConfig, metrics: &Metrics) -> Result<CrmSink, String> {
        let at = format!("sinks.{name}");
        let template = config.load_template().map_err(|e| format!("{at}.{e}"))?;
        let (auth, secrets) = match (&config.auth_header, &config.auth_env) {
            (Some(h), Some(var)) => {
                let value = std::env::var(var)
                    .map_err(|_| format!("{at}.auth_env: environment variable {var} is not set"))?;
                let hn = reqwest::header::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{at}.auth_header: {h:?} is not a valid header name"))?;
                let mut hv = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    format!("{at}.auth_env: the value of {var} is not a valid header value")
                })?;
                hv.set_sensitive(true);
                (Some((hn, hv)), redactions(&value))
            }
            _ => (None, Vec::new()),
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(config.url.starts_with("https:"));
        if let Some(f) = &config.ca_file {
            for ca in load_ca(f).map_err(|e| format!("{at}.ca_file: {e}"))? {
                builder = builder.add_root_certificate(ca);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("{at}: HTTP client: {e}"))?;
        let interval = Duration::from_secs_f64(1.0 / config.rate_per_second.max(1e-3));
        metrics.crm_breaker_open.with_label_values(&[name]).set(0);
        Ok(CrmSink {
            name: name.into(),
            template,
            client,
            auth,
            secrets,
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_cooldown,
            )),
            in_flight: tokio::sync::Semaphore::new(config.max_concurrency.max(1)),
            pacer: Pacer {
                interval,
                next: Mutex::new(Instant::now()),
            },
            attempts: Mutex::new(HashMap::new()),
            settled: AtomicU64::new(0),
            metrics: metrics.clone(),
            config: config.clone(),
        })
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> Option<T> {
        let mut b = self.breaker.lock().ok()?;
        let was_open = b.is_open();
        let out = f(&mut b);
        let open = b.is_open();
        if open != was_open {
            self.metrics
                .crm_breaker_open
                .with_label_values(&[&self.name])
                .set(i64::from(open));
            if open {
                tracing::warn!(sink = %self.name, cooldown = ?self.config.breaker_cooldown, "CRM circuit opened");
            } else {
                tracing::info!(sink = %self.name, "CRM circuit closed");
            }
        }
        Some(out)
    }

    /// Records a transient failure of `key`'s attempt that went when
    /// [`settled`](Self::settled) read `sent_at`; counts it against
    /// `max_attempts` when the answer was about the event, or when the
    /// destination was healthy: the attempt was not a half-open probe and
    /// the destination settled another event since this one's previous
    /// answer (since this request went, for a first attempt). Answers the
    /// attempts counted so far.
    fn count_attempt(&self, key: &str, blame: Blame, probe: bool, sent_at: u64) -> u32 {
        let now = self.settled.load(Ordering::SeqCst);
        let Ok(mut m) = self.attempts.lock() else {
            return 0;
        };
        if m.len() >= MAX_TRACKED && !m.contains_key(key) {
            m.clear();
        }
        let t = m.entry(key.to_owned()).or_insert(Tally {
            counted: 0,
            settled_seen: sent_at,
        });
        let healthy = !probe && now > t.settled_seen;
        let counts = match blame {
            Blame::Event => true,
            Blame::Rate => false,
            Blame::Destination => healthy,
        };
        if counts {
            t.counted += 1;
        }
        t.settled_seen = now;
        t.counted
    }

    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.attempts.lock() {
            m.remove(key);
        }
    }

    /// A response body fit for a reason: no credential (redacted before
    /// clipping, so the clip cannot leave a piece of it), clipped, one
    /// line.
    fn quote(&self, body: &str) -> String {
        // The whole body: redacting shortens it, which can bring text from
        // past any window into the clip.
        let mut s = body.to_owned();
        for secret in &self.secrets {
            s = s.replace(secret.as_str(), REDACTED);
        }
        s.chars()
            .take(BODY_CLIP)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    async fn attempt(&self, key: &str, body: &[u8]) -> Answer {
        let mut req = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_vec());
        if let Some((h, v)) = &self.auth {
            req = req.header(h.clone(), v.clone());
        }
        let (label, answer) = match req.send().await {
            Err(e) => {
                let label = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "error"
                };
                let reason = format!("{label}: {}", e.without_url());
                (
                    label.to_string(),
                    Answer::Transient {
                        reason,
                        retry_after: None,
                        blame: Blame::Destination,
                    },
                )
            }
            Ok(resp) => {
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                let text = match resp.text().await {
                    Ok(t) => t,
                    Err(e) if e.is_timeout() => {
                        return Answer::Transient {
                            reason: format!("timeout reading the answer to {status}"),
                            retry_after: None,
                            blame: Blame::Destination,
                        };
                    }
                    Err(_) => String::new(),
                };
                let reason = format!("HTTP {}: {}", status.as_u16(), self.quote(&text));
                let transient = |blame| Answer::Transient {
                    reason: reason.clone(),
                    retry_after,
                    blame,
                };
                let answer = match status.as_u16() {
                    200..=299 => Answer::Ok,
                    409 | 425 => transient(Blame::Event),
                    429 => transient(Blame::Rate),
                    401 | 403 | 408 => transient(Blame::Destination),
                    400..=499 => Answer::Permanent(reason.clone()),
                    _ => transient(Blame::Destination),
                };
                (status.as_u16().to_string(), answer)
            }
        };
        self.metrics
            .crm_requests
            .with_label_values(&[self.name.as_str(), label.as_str()])
            .inc();
        answer
    }

    /// Delivers one event; `tracked` (the hook and the event's index in
    /// its batch) is told of a `2xx` before the request's concurrency slot
    /// is given back.
    async fn deliver(&self, e: &Event, tracked: Option<(&dyn Applied, usize)>) -> Outcome {
        let key = idempotency_key(e);
        let view = view(e);
        for r in &self.config.required {
            if lookup(&view, r).is_none_or(Value::is_null) {
                return Outcome::Reject(format!("template: required field {r} is missing"));
            }
        }
        let body = match serde_json::to_vec(&self.template.render(&view)) {
            Ok(b) => b,
            Err(err) => return Outcome::Reject(format!("template: {err}")),
        };
        let mut backoff = self.config.backoff_initial;
        for attempt in 1..=self.config.attempts_per_call {
            // Whether a request may go, and whether it is the half-open
            // probe (whose failure proves nothing about this event).
            let pass = self
                .with_breaker(|b| {
                    let allowed = b.allow(Instant::now());
                    (allowed, allowed && b.is_open())
                })
                .unwrap_or((true, false));
            let (true, probe) = pass else {
                return Outcome::Retry(
                    "circuit open (or Retry-After pause): not sending to the CRM now".into(),
                );
            };
            self.pacer.wait().await;
            let (answer, sent_at) = {
                let Ok(_permit) = self.in_flight.acquire().await else {
                    return Outcome::Retry("sink closed".into());
                };
                if tracked.is_some_and(|(hook, _)| hook.handing_over()) {
                    return Outcome::Retry(HANDING_OVER.into());
                }
                let sent_at = self.settled.load(Ordering::SeqCst);
                let answer = self.attempt(&key, &body).await;
                if let (Answer::Ok, Some((hook, index))) = (&answer, tracked) {
                    // Recorded while the slot is held: a crash can then
                    // repeat at most the requests in flight.
                    hook.applied(index).await;
                }
                (answer, sent_at)
            };
            match answer {
                Answer::Ok => {
                    self.settled.fetch_add(1, Ordering::SeqCst);
                    self.with_breaker(Breaker::success);
                    self.forget(&key);
                    return Outcome::Accepted;
                }
                Answer::Permanent(reason) => {
                    self.settled.fetch_add(1, Ordering::SeqCst);
                    self.with_breaker(Breaker::success);
                    self.forget(&key);
                    return Outcome::Reject(reason);
                }
                Answer::Transient {
                    reason,
                    retry_after,
                    blame,
                } => {
                    let now = Instant::now();
                    let retry_after = retry_after.map(|d| d.min(self.config.retry_after_max));
                    self.with_breaker(|b| {
                        if blame == Blame::Event {
                            // The destination answered about the event.
                            b.success();
                        } else {
                            b.failure(now);
                        }
                        if let Some(d) = retry_after {
                            b.pause(now + d);
                        }
                    });
                    let total = self.count_attempt(&key, blame, probe, sent_at);
                    if total >= self.config.max_attempts {
                        self.forget(&key);
                        return Outcome::Reject(format!(
                            "gave up after {total} attempts; last: {reason}"
                        ));
                    }
                    if attempt == self.config.attempts_per_call {
                        return Outcome::Retry(reason);
                    }
                    let wait = retry_after
                        .unwrap_or_else(|| backoff.mul_f64(rand::random_range(0.0..=1.0)));
                    backoff = (backoff * 2).min(self.config.backoff_max);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Outcome::Retry("no attempt left in this call".into())
    }

    /// Delivers one key's events (`positions` into `batch`) one after
    /// another; from its first `Retry` on, the key's later events are
    /// answered `Retry` without a request, so a re-offer keeps their order.
    async fn deliver_in_order(
        &self,
        batch: &[Arc<Event>],
        positions: Vec<usize>,
        tracked: Option<&dyn Applied>,
    ) -> Vec<(usize, Outcome)> {
        let mut out = Vec::with_capacity(positions.len());
        let mut waiting: Option<String> = None;
        for i in positions {
            let Some(e) = batch.get(i) else { continue };
            let outcome = match &waiting {
                Some(why) => Outcome::Retry(format!("after an earlier event of its key: {why}")),
                None => self.deliver(e, tracked.map(|hook| (hook, i))).await,
            };
            if let (None, Outcome::Retry(why)) = (&waiting, &outcome) {
                waiting = Some(why.clone());
            }
            out.push((i, outcome));
        }
        out
    }
}

impl Sink for CrmSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accept<'a>(&'a self, batch: &'a [Arc<Event>]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.accept_with(batch, None))
    }

    fn tracks_effects(&self) -> bool {
        true
    }

    fn accept_tracked<'a>(
        &'a self,
        batch: &'a [Arc<Event>],
        applied: &'a dyn Applied,
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.accept_with(batch, Some(applied)))
    }
}

/// The `Retry` reason of an event not sent because its partition is being
/// handed over.
pub const HANDING_OVER: &str = "not sent: the partition is being handed over to its next owner";

impl CrmSink {
    async fn accept_with(
        &self,
        batch: &[Arc<Event>],
        tracked: Option<&dyn Applied>,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let runs = by_key(batch)
            .into_iter()
            .map(|events| self.deliver_in_order(batch, events, tracked));
        let mut done =
            futures::stream::iter(runs).buffer_unordered(self.config.max_concurrency.max(1));
        while let Some(run) = done.next().await {
            for (i, o) in run {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(o);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not offered".into())))
            .collect()
    }
}

/// What to redact from quoted bodies for the credential header value
/// `value`, longest first: the value itself; after a scheme word
/// (`Bearer t`, `Token t`), the bare credential `t`; its `name=value`
/// parameters' values (`Token token="t"`); for `Basic`, the decoded
/// `user:password` and the password; and each of these with `/` written
/// `\/` as JSON may escape it. Parts shorter than [`MIN_REDACTED`] are
/// left out (the whole value never is).
fn redactions(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut out = vec![value.to_owned()];
    let mut parts = Vec::new();
    if let Some((scheme, rest)) = value.trim().split_once(char::is_whitespace) {
        let rest = rest.trim();
        parts.push(rest.to_owned());
        for param in rest.split(',') {
            if let Some((_, v)) = param.split_once('=') {
                parts.push(v.trim().trim_matches('"').to_owned());
            }
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some(pair) = decoded {
                if let Some((_, password)) = pair.split_once(':') {
                    parts.push(password.to_owned());
                }
                parts.push(pair);
            }
        }
    }
    out.extend(parts.into_iter().filter(|p| p.len() >= MIN_REDACTED));
    let escaped: Vec<String> = out
        .iter()
        .filter(|s| s.contains('/'))
        .map(|s| s.replace('/', "\\/"))
        .collect();
    out.extend(escaped);
    out.retain(|s| !s.is_empty());
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// The batch's positions grouped by ordering key (the source and the
/// event's ordering key, else its event id), each group in batch order,
/// the groups in order of first appearance.
fn by_key(batch: &[Arc<Event>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        let key = e.ordering_key.as_deref().unwrap_or(e.event_id.as_str());
        let g = *index.entry((e.source.as_str(), key)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Guest, GuestWifi};

    fn event(id: &str, guest: Option<Guest>) -> Event {
        Event {
            source: "purple".into(),
            event_id: id.into(),
            event_type: "guest_connects".into(),
            ordering_key: Some("venue-1".into()),
            sequence: Some(7),
            received_at_micros: 1_000_000,
            occurred_at_micros: Some(0),
            late: false,
            guest_wifi: Some(GuestWifi {
                event_type: "guest_connects".into(),
                sequence: Some(7),
                occurred_at_micros: 0,
                venue_id: "venue-1".into(),
                venue_name: Some("Airport".into()),
                zone: None,
                device_id: Some("dev".into()),
                guest,
            }),
            body: serde_json::json!({"venue": {"name": "Airport"}, "tags": ["a", "b"]}),
        }
    }

    fn ana() -> Option<Guest> {
        Some(Guest {
            id: "g_1".into(),
            email: Some("ana@example.com".into()),
            first_name: Some("Ana".into()),
            vip: true,
        })
    }

    #[test]
    fn template_replaces_whole_values_and_interpolates_text() {
        let t = Template::parse(
            r#"{"key": "{{idempotency_key}}", "email": "{{ guest.email }}", "vip": "{{guest.vip}}",
                "seq": "{{sequence}}", "zone": "{{zone}}", "hello": "Hi {{guest.first_name}} at {{body.venue.name}}{{zone}}",
                "tag": "{{body.tags.1}}", "when": "{{occurred_at}}", "list": [1, "{{venue_id}}"], "fixed": true}"#,
        )
        .unwrap();
        let out = t.render(&view(&event("e1", ana())));
        assert_eq!(
            out,
            serde_json::json!({"key": "purple:e1", "email": "ana@example.com", "vip": true,
                "seq": 7, "zone": null, "hello": "Hi Ana at Airport", "tag": "b",
                "when": "1970-01-01T00:00:00.000Z", "list": [1, "venue-1"], "fixed": true})
        );
        let out = t.render(&view(&event("e2", None)));
        assert_eq!(out["email"], Value::Null);
        assert_eq!(out["hello"], "Hi  at Airport");
    }

    #[test]
    fn template_errors_name_the_problem() {
        assert!(Template::parse("{").unwrap_err().contains("not JSON"));
        let e = Template::parse(r#"{"a": "{{gest.email}}"}"#).unwrap_err();
        assert!(e.contains("unknown field \"gest\""), "{e}");
        let e = Template::parse(r#"{"a": "{{guest.email"}"#).unwrap_err();
        assert!(e.contains("without"), "{e}");
        let e = Template::parse(r#"{"a": "{{guest..email}}"}"#).unwrap_err();
        assert!(e.contains("dotted path"), "{e}");
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crm");
        for f in ["salesforce-journey.json", "hubspot-contact.json"] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            let t = Template::parse(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
            let out = t.render(&view(&event("e1", ana())));
            assert!(out.to_string().contains("ana@example.com"), "{f}: {out}");
        }
    }

    #[test]
    fn breaker_opens_after_failures_in_a_row_and_probes_once() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(3, cool);
        assert!(b.allow(t0));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "third failure in a row opens");
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        // After the cooldown: one probe, the others wait for it.
        let t1 = t0 + cool;
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        assert!(!b.allow(t1 + Duration::from_secs(1)));
        // The probe fails: open again for a full cooldown.
        assert!(b.failure(t1 + Duration::from_secs(1)));
        assert!(!b.allow(t1 + Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(11);
        assert!(b.allow(t2));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(t2) && b.allow(t2));
    }

    #[test]
    fn breaker_replaces_a_lost_probe_and_honours_pauses() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(5);
        let mut b = Breaker::new(1, cool);
        assert!(b.failure(t0));
        assert!(b.allow(t0 + cool));
        // The probe's caller vanished: after another cooldown, a new probe.
        assert!(!b.allow(t0 + cool + Duration::from_secs(4)));
        assert!(b.allow(t0 + cool * 2));
        b.success();
        b.pause(t0 + Duration::from_secs(100));
        assert!(!b.allow(t0 + Duration::from_secs(99)));
        assert!(b.allow(t0 + Duration::from_secs(100)));
    }

    fn config(extra: &str) -> CrmConfig {
        let text = format!(
            "url = \"http://127.0.0.1:1/x\"\ntemplate_json = '{{\"id\": \"{{{{event_id}}}}\"}}'\n{extra}"
        );
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(&text))
            .extract()
            .unwrap()
    }

    #[test]
    fn config_problems_name_their_fields() {
        assert!(config("").problems("sinks.crm").is_empty());
        let mut c = config(
            "auth_header = \"Authorization\"\nmax_concurrency = 0\nrequired = [\"guest.mail\", \"nope\"]",
        );
        c.url = "ftp://crm.example.com".into();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        c.max_attempts = 1;
        let all = c.problems("sinks.crm").join("\n");
        for needle in [
            "sinks.crm.url: must be an https:// or http:// URL",
            "sinks.crm.ca_file: /nonexistent/ca.pem",
            "sinks.crm.auth_header, sinks.crm.auth_env",
            "sinks.crm.max_concurrency",
            "sinks.crm.required: \"nope\"",
            "sinks.crm.max_attempts",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let mut c = config("");
        c.template = Some("/nonexistent/t.json".into());
        let all = c.problems("sinks.crm").join("\n");
        assert!(
            all.contains("template, template_json: give exactly one"),
            "{all}"
        );
        c.template_json = None;
        let all = c.problems("sinks.crm").join("\n");
        assert!(
            all.contains("sinks.crm.template: /nonexistent/t.json"),
            "{all}"
        );
    }

    #[test]
    fn only_answers_about_the_event_or_on_a_healthy_destination_count() {
        let sink = CrmSink::new("crm", &config(""), &Metrics::new().unwrap()).unwrap();
        let settle = || sink.settled.fetch_add(1, Ordering::SeqCst);
        let sent = sink.settled.load(Ordering::SeqCst);
        // An outage: nothing settled meanwhile, nothing counted.
        for _ in 0..100 {
            assert_eq!(sink.count_attempt("k", Blame::Destination, false, sent), 0);
        }
        // Another event settled, but this attempt was the half-open probe.
        settle();
        assert_eq!(sink.count_attempt("k", Blame::Destination, true, sent), 0);
        // Another settled since its last answer: the destination is healthy.
        settle();
        assert_eq!(sink.count_attempt("k", Blame::Destination, false, sent), 1);
        // Nothing settled since that answer: not counted again.
        assert_eq!(sink.count_attempt("k", Blame::Destination, false, sent), 1);
        // A rate limit never counts, an answer about the event always does.
        settle();
        assert_eq!(sink.count_attempt("k", Blame::Rate, false, sent), 1);
        assert_eq!(sink.count_attempt("k", Blame::Event, true, sent), 2);
        // A first attempt looks from when its request went.
        let sent = sink.settled.load(Ordering::SeqCst);
        assert_eq!(sink.count_attempt("j", Blame::Destination, false, sent), 0);
        settle();
        assert_eq!(sink.count_attempt("i", Blame::Destination, false, sent), 1);
        sink.forget("k");
        assert_eq!(sink.count_attempt("k", Blame::Destination, false, sent), 1);
    }

    #[test]
    fn redactions_cover_what_a_server_may_echo_of_the_credential() {
        use base64::Engine as _;
        let r = redactions("Bearer s3cr3t/tok");
        for want in [
            "Bearer s3cr3t/tok",
            "s3cr3t/tok",
            "Bearer s3cr3t\\/tok",
            "s3cr3t\\/tok",
        ] {
            assert!(r.iter().any(|x| x == want), "{want} not in {r:?}");
        }
        assert!(r.windows(2).all(|w| w[0].len() >= w[1].len()), "{r:?}");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ana:hunter22")
        );
        let r = redactions(&basic);
        for want in ["ana:hunter22", "hunter22"] {
            assert!(r.iter().any(|x| x == want), "{want} not in {r:?}");
        }
        let r = redactions(r#"Token token="abcdef1", realm="x""#);
        assert!(r.iter().any(|x| x == "abcdef1"), "{r:?}");
        assert!(!r.iter().any(|x| x == "x"), "{r:?}");
        assert_eq!(redactions("plain-api-key"), ["plain-api-key"]);
        assert_eq!(redactions("abc"), ["abc"]);
    }

    #[test]
    fn quoted_bodies_are_redacted_before_they_are_clipped() {
        let mut sink = CrmSink::new("crm", &config(""), &Metrics::new().unwrap()).unwrap();
        sink.secrets = redactions("Bearer s3cr3t-token-value");
        let token = "s3cr3t-token-value";
        // Echoes at every place around the clip, and after an earlier one
        // whose redaction shortens the text.
        for pad in 250..=320 {
            let body = format!("{token} {}{token}\n{token}", "x".repeat(pad));
            let q = sink.quote(&body);
            assert!(!q.contains("s3"), "{pad}: {q}");
            assert!(!q.contains('\n'), "{pad}: {q}");
            assert!(q.starts_with("[redacted] xx"), "{pad}: {q}");
            assert!(q.chars().count() <= BODY_CLIP, "{pad}");
        }
    }

    #[test]
    fn a_missing_credential_is_named_without_its_value() {
        let c = config("auth_header = \"Authorization\"\nauth_env = \"CRM_TEST_UNSET_VAR_1\"");
        let m = Metrics::new().unwrap();
        let e = CrmSink::new("crm", &c, &m).err().unwrap();
        assert!(
            e.to_string().contains("CRM_TEST_UNSET_VAR_1 is not set"),
            "{e}"
        );
    }
}
