//! Normalized events and the per-source parsers that make them.
//!
//! A parser turns one [`Envelope`] into an [`Event`], or into a
//! [`Quarantine`] naming why it could not: the processors then write the
//! original envelope to the quarantine topic with that reason and carry on
//! with the next record. A parser never panics and never stops a partition.
//!
//! - `guest_wifi`: the guest-WiFi platform (DESIGN.md), validated into
//!   [`GuestWifi`], whose Avro contract is `schemas/avro/guest_wifi/v2.avsc`.
//!   A type the platform documents ([`GUEST_WIFI_TYPES`]) is validated
//!   strictly; any other type is passed on, never quarantined for its type:
//!   typed where the fields every event has (`/occurred_at`, `/venue/id`,
//!   `/sequence`) are valid, else as a generic event (its type, ordering
//!   key, sequence from the envelope and body, like the `json` parser's).
//!   A source whose payload names the fields differently maps them with
//!   JSON pointers ([`Mapping`], `[sources.NAME.mapping]`); `sample` names
//!   a payload that `check-config` (and start-up) must see map.
//! - `json`: any JSON body, kept as a typed envelope: the event type comes
//!   from a configured pointer or forwarded header (default `/type`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use schemas::Envelope;

mod mapping;

pub use mapping::Mapping;

/// How one source's bodies are parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The parser.
    pub parser: ParserKind,
    /// Where a `json` source's event type is (default `/type`).
    #[serde(default)]
    pub event_type: Option<Locate>,
    /// How each ordering key's events are released: `sequence` (the
    /// default: by the sequence the source sends, `/sequence` required for
    /// `guest_wifi`) or `occurred_at` (a source without one: by event
    /// time, each event held up to `processing.gap_timeout` for earlier
    /// ones; `/sequence` optional).
    #[serde(default)]
    pub order_by: OrderBy,
    /// `guest_wifi` only: where each normalized field is in this source's
    /// payload, as JSON pointers (unset: the platform's own places).
    #[serde(default)]
    pub mapping: Option<Mapping>,
    /// A payload of this source (a JSON file) that must parse into a typed
    /// event with this configuration: checked by `check-config` and at
    /// start-up, which name the field that does not map.
    #[serde(default)]
    pub sample: Option<PathBuf>,
}

/// How a source's events are ordered per ordering key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    /// By the source's sequence (`crate::pipeline::reorder`).
    #[default]
    Sequence,
    /// By `occurred_at`, within a bounded wait
    /// (`crate::pipeline::time_order`).
    OccurredAt,
}

/// The parsers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParserKind {
    /// The guest-WiFi platform: typed events, strictly validated for the
    /// documented types, other types passed on.
    GuestWifi,
    /// Any JSON body: a typed envelope with the event type.
    Json,
}

/// Where a value is found: a JSON pointer into the body or a forwarded
/// request header.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Locate {
    /// RFC 6901 JSON pointer, e.g. `/type`.
    Pointer(String),
    /// Request header (ingest must forward it), e.g. `x-github-event`.
    Header(String),
}

impl SourceConfig {
    /// Every problem, each naming its field under `at` (`sources.NAME`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(Locate::Pointer(ptr)) = &self.event_type
            && !ptr.starts_with('/')
        {
            p.push(format!(
                "{at}.event_type.pointer: {ptr:?} must start with '/'"
            ));
        }
        if self.parser == ParserKind::Json && self.order_by == OrderBy::OccurredAt {
            p.push(format!(
                "{at}.order_by: \"occurred_at\" needs the guest_wifi parser (the json parser reads no occurred_at)"
            ));
        }
        if let Some(m) = &self.mapping {
            if self.parser != ParserKind::GuestWifi {
                p.push(format!(
                    "{at}.mapping: only for the guest_wifi parser (the json parser takes event_type)"
                ));
            }
            p.extend(m.problems(&format!("{at}.mapping")));
        }
        if let Some(Err(e)) = self.check_sample(at.strip_prefix("sources.").unwrap_or(at)) {
            p.push(e);
        }
        if self.parser == ParserKind::GuestWifi && self.event_type.is_some() {
            p.push(format!(
                "{at}.event_type: the guest_wifi parser reads /type itself (mapping.type moves it)"
            ));
        }
        p
    }
}

impl SourceConfig {
    /// `check-config`'s proof that `sample` maps: a line naming what it
    /// parsed into (field names and the type, venue, sequence and time, no
    /// personal value), or the problem naming the field that does not map.
    /// `None` without a sample.
    pub fn check_sample(&self, name: &str) -> Option<Result<String, String>> {
        let path = self.sample.as_ref()?;
        let at = format!("sources.{name}.sample");
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Some(Err(format!("{at}: {shown}: {e}"))),
        };
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            Err(e) => return Some(Err(format!("{at}: {shown} is not JSON: {e}"))),
        };
        let mapped = match &self.mapping {
            Some(m) => m.apply(&body),
            None => body,
        };
        let envelope = Envelope {
            event_id: mapped
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("sample")
                .to_owned(),
            source: name.to_owned(),
            received_at_micros: 0,
            body: bytes,
            headers: Vec::new(),
            content_type: Some("application/json".into()),
            client_addr: None,
            verification: schemas::Verification {
                scheme: "sample".into(),
                secret_id: String::new(),
            },
            ordering_key: None,
            sequence: None,
            request_id: "check-config".into(),
        };
        let explain = |detail: &str| match &self.mapping {
            Some(m) => m.explain(name, detail),
            None => detail.to_owned(),
        };
        let e = match parse(&envelope, Some(self)) {
            Ok(e) => e,
            Err(q) => return Some(Err(format!("{at}: {shown} does not map: {}", q.detail))),
        };
        if self.parser == ParserKind::Json {
            return Some(Ok(format!("{at}: {shown} maps: type {:?}", e.event_type)));
        }
        let Some(w) = &e.guest_wifi else {
            // Passed on generic: say why it is not typed.
            let why = guest_wifi(&mapped, self.order_by)
                .err()
                .map_or_else(String::new, |q| explain(&q.detail));
            return Some(Err(format!(
                "{at}: {shown} does not map to a typed event (it would pass on generic): {why}"
            )));
        };
        let mut present = Vec::new();
        for (field, there) in [
            ("venue_name", w.venue_name.is_some()),
            ("zone", w.zone.is_some()),
            ("device_id", w.device_id.is_some()),
            ("guest_id", w.guest.is_some()),
            (
                "guest_email",
                w.guest.as_ref().is_some_and(|g| g.email.is_some()),
            ),
            (
                "guest_first_name",
                w.guest.as_ref().is_some_and(|g| g.first_name.is_some()),
            ),
            ("guest_vip", w.guest.as_ref().is_some_and(|g| g.vip)),
        ] {
            if there {
                present.push(field);
            }
        }
        Some(Ok(format!(
            "{at}: {shown} maps: type {:?}{}, venue {:?}, sequence {}, occurred_at {}; also {}",
            w.event_type,
            if w.is_documented() {
                ""
            } else {
                " (undocumented)"
            },
            w.venue_id,
            w.sequence
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
            plumbing::utc_text(w.occurred_at_micros),
            if present.is_empty() {
                "nothing else".to_owned()
            } else {
                present.join(", ")
            },
        )))
    }
}

/// Longest event type accepted (it becomes a metric label value only after
/// routing, never raw; this bounds memory and log lines).
const MAX_TYPE_LEN: usize = 128;

/// One event, decoded and normalized, ready for reorder, dedupe and routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The source (`/webhooks/{source}`).
    pub source: String,
    /// The provider's event id (unique per source).
    pub event_id: String,
    /// The event type, e.g. `guest_connects`, `push`.
    pub event_type: String,
    /// The ordering key (for the guest-WiFi platform, the venue id).
    pub ordering_key: Option<String>,
    /// Position in the ordering key's sequence.
    pub sequence: Option<i64>,
    /// When ingest received it, Unix microseconds.
    pub received_at_micros: i64,
    /// When it happened at the provider, Unix microseconds, when known.
    pub occurred_at_micros: Option<i64>,
    /// Its slot in the sequence had already passed when it arrived.
    pub late: bool,
    /// Typed fields of a guest-WiFi event.
    pub guest_wifi: Option<GuestWifi>,
    /// The parsed body.
    pub body: Value,
}

/// The guest-WiFi platform's event, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestWifi {
    /// The type as sent: one of [`GUEST_WIFI_TYPES`], or another the
    /// platform added since (see [`GuestWifi::is_documented`]).
    pub event_type: String,
    /// Increases per venue; `None` from a source ordered by `occurred_at`
    /// that sent none.
    pub sequence: Option<i64>,
    /// When it happened, Unix microseconds.
    pub occurred_at_micros: i64,
    /// The venue id (the ordering key).
    pub venue_id: String,
    /// The venue's display name.
    pub venue_name: Option<String>,
    /// The zone, e.g. `lobby`.
    pub zone: Option<String>,
    /// The device.
    pub device_id: Option<String>,
    /// The guest, when known.
    pub guest: Option<Guest>,
}

/// A guest of the guest-WiFi platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guest {
    /// The platform's guest id.
    pub id: String,
    /// E-mail, when the guest registered.
    pub email: Option<String>,
    /// First name, when given.
    pub first_name: Option<String>,
    /// A VIP guest (alerting).
    pub vip: bool,
}

/// The guest-WiFi platform's documented event types, in the order of the
/// Avro enum's symbols (v2, which adds `other` for any other type).
pub const GUEST_WIFI_TYPES: &[&str] = &[
    "guest_connects",
    "guest_registered",
    "device_connected",
    "device_disconnected",
    "zone_entered",
    // A guest leaving the venue: ends the device's session and presence
    // as `device_disconnected` does.
    "venue_left",
    // Marketing consent given or withdrawn.
    "guest_opted_in",
    "guest_opted_out",
];

/// The guest-WiFi types that end a device's session (analytics) and its
/// presence at the venue (the alerting sink's live state).
pub const SESSION_END_TYPES: &[&str] = &["device_disconnected", "venue_left"];

/// The Avro enum symbol (v2) of a type [`GUEST_WIFI_TYPES`] does not name.
const OTHER_SYMBOL: &str = "other";

impl GuestWifi {
    /// Whether its type is one the platform documents
    /// ([`GUEST_WIFI_TYPES`]); `false` for a type passed on as it came.
    pub fn is_documented(&self) -> bool {
        GUEST_WIFI_TYPES.contains(&self.event_type.as_str())
    }
}

/// The current guest-WiFi event schema (`schemas/avro/guest_wifi`), parsed
/// once.
pub fn guest_wifi_schema() -> &'static apache_avro::Schema {
    static SCHEMA: std::sync::OnceLock<apache_avro::Schema> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let (_, text) =
            schemas::GUEST_WIFI_SCHEMA_VERSIONS[schemas::GUEST_WIFI_SCHEMA_VERSIONS.len() - 1];
        // Compiled in and round-tripped by this module's tests.
        #[allow(clippy::expect_used)]
        apache_avro::Schema::parse_str(text).expect("committed guest-WiFi schema parses")
    })
}

/// Heap bytes one B-tree node of a JSON object takes (`String` keys,
/// `Value` values, eleven slots, and the child pointers of an internal
/// node), and what each entry beyond the first adds at worst: nodes split
/// half full, and serde_json fills them in document order.
const MAP_NODE_BYTES: usize = 736;
const MAP_ENTRY_BYTES: usize = 136;

/// The heap bytes held below one JSON value (the node itself is counted by
/// whoever holds it): strings and vectors by capacity, maps by their
/// nodes. An upper estimate of what the allocator was asked for, checked
/// against a counting allocator in `tests/parsed_budget.rs`.
fn value_heap_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => {
            a.capacity() * std::mem::size_of::<Value>()
                + a.iter().map(value_heap_bytes).sum::<usize>()
        }
        Value::Object(m) if m.is_empty() => 0,
        Value::Object(m) => {
            MAP_NODE_BYTES
                + (m.len() - 1) * MAP_ENTRY_BYTES
                + m.iter()
                    .map(|(k, v)| k.capacity() + value_heap_bytes(v))
                    .sum::<usize>()
        }
    }
}

fn opt_capacity(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::capacity)
}

impl Event {
    /// What the event holds on the heap, about and not under: the parsed
    /// body's tree (which can be many times the body's size: each value of
    /// `[0,0,...]` is a 32-byte node for two bytes of JSON) and its
    /// strings. The byte budget charges a held record by it.
    pub fn held_bytes(&self) -> usize {
        let typed = self.guest_wifi.as_ref().map_or(0, |g| {
            std::mem::size_of::<GuestWifi>()
                + g.event_type.capacity()
                + g.venue_id.capacity()
                + opt_capacity(&g.venue_name)
                + opt_capacity(&g.zone)
                + opt_capacity(&g.device_id)
                + g.guest.as_ref().map_or(0, |guest| {
                    std::mem::size_of::<Guest>()
                        + guest.id.capacity()
                        + opt_capacity(&guest.email)
                        + opt_capacity(&guest.first_name)
                })
        });
        std::mem::size_of::<Event>()
            + self.source.capacity()
            + self.event_id.capacity()
            + self.event_type.capacity()
            + opt_capacity(&self.ordering_key)
            + typed
            + value_heap_bytes(&self.body)
    }

    /// The event as a guest-WiFi Avro record (Avro binary, current
    /// schema); `None` for events of other parsers.
    pub fn guest_wifi_avro(&self) -> Option<Result<Vec<u8>, apache_avro::Error>> {
        use apache_avro::types::Value as A;
        let w = self.guest_wifi.as_ref()?;
        let opt = |v: &Option<String>| match v {
            None => A::Union(0, Box::new(A::Null)),
            Some(s) => A::Union(1, Box::new(A::String(s.clone()))),
        };
        // A type the schema does not name is `other` (the enum's last
        // symbol); `type_name` keeps it as sent.
        let (symbol, name) = match GUEST_WIFI_TYPES.iter().position(|t| *t == w.event_type) {
            Some(i) => (i, w.event_type.as_str()),
            None => (GUEST_WIFI_TYPES.len(), OTHER_SYMBOL),
        };
        let guest = match &w.guest {
            None => A::Union(0, Box::new(A::Null)),
            Some(g) => A::Union(
                1,
                Box::new(A::Record(vec![
                    ("id".into(), A::String(g.id.clone())),
                    ("email".into(), opt(&g.email)),
                    ("first_name".into(), opt(&g.first_name)),
                    ("vip".into(), A::Boolean(g.vip)),
                ])),
            ),
        };
        let record = A::Record(vec![
            ("event_id".into(), A::String(self.event_id.clone())),
            ("source".into(), A::String(self.source.clone())),
            ("type".into(), A::Enum(symbol as u32, name.to_owned())),
            (
                "type_name".into(),
                A::Union(1, Box::new(A::String(w.event_type.clone()))),
            ),
            (
                "sequence".into(),
                match w.sequence {
                    Some(s) => A::Union(1, Box::new(A::Long(s))),
                    None => A::Union(0, Box::new(A::Null)),
                },
            ),
            (
                "occurred_at".into(),
                A::TimestampMicros(w.occurred_at_micros),
            ),
            (
                "received_at".into(),
                A::TimestampMicros(self.received_at_micros),
            ),
            ("late".into(), A::Boolean(self.late)),
            ("venue_id".into(), A::String(w.venue_id.clone())),
            ("venue_name".into(), opt(&w.venue_name)),
            ("zone".into(), opt(&w.zone)),
            ("device_id".into(), opt(&w.device_id)),
            ("guest".into(), guest),
        ]);
        Some(apache_avro::to_avro_datum(guest_wifi_schema(), record))
    }
}

/// Why a record goes to quarantine: a stable `reason` code (a metric label
/// and a Kafka header) and a detail for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// Stable code: `envelope_undecodable`, `not_json`, `invalid`.
    pub reason: &'static str,
    /// What exactly is wrong, naming the field.
    pub detail: String,
}

impl Quarantine {
    fn invalid(detail: impl Into<String>) -> Self {
        Quarantine {
            reason: "invalid",
            detail: detail.into(),
        }
    }
}

/// Parses one envelope with its source's parser (`None`: the default `json`
/// parser with the type at `/type`).
pub fn parse(envelope: &Envelope, source: Option<&SourceConfig>) -> Result<Event, Quarantine> {
    let mut body: Value = serde_json::from_slice(&envelope.body).map_err(|e| Quarantine {
        reason: "not_json",
        detail: format!("body is not JSON: {e}"),
    })?;
    let mut event = Event {
        source: envelope.source.clone(),
        event_id: envelope.event_id.clone(),
        event_type: String::new(),
        ordering_key: envelope.ordering_key.clone(),
        sequence: envelope.sequence,
        received_at_micros: envelope.received_at_micros,
        occurred_at_micros: None,
        late: false,
        guest_wifi: None,
        body: Value::Null,
    };
    match source.map_or(ParserKind::Json, |s| s.parser) {
        ParserKind::GuestWifi => {
            let mapping = source.and_then(|s| s.mapping.as_ref());
            // The platform's shape, what sinks see (see [`Mapping`]).
            if let Some(m) = mapping {
                body = m.apply(&body);
            }
            let explain = |q: Quarantine| match mapping {
                Some(m) => Quarantine {
                    reason: q.reason,
                    detail: m.explain(&envelope.source, &q.detail),
                },
                None => q,
            };
            if let Some(id) = body.get("id").and_then(Value::as_str)
                && id != envelope.event_id
            {
                return Err(explain(Quarantine::invalid(format!(
                    "/id {id:?} differs from the envelope's event id {:?}",
                    envelope.event_id
                ))));
            }
            let order_by = source.map_or(OrderBy::Sequence, |s| s.order_by);
            let wifi = match guest_wifi(&body, order_by) {
                Ok(w) => w,
                Err(q) => {
                    // A type the platform added since, without the fields
                    // every event has: passed on as a generic event rather
                    // than quarantined for rules this parser cannot know.
                    let Some(t) = undocumented_type(&body) else {
                        return Err(explain(q));
                    };
                    event.event_type = t.to_owned();
                    event.occurred_at_micros = body
                        .get("occurred_at")
                        .and_then(Value::as_str)
                        .and_then(rfc3339_micros);
                    if event.ordering_key.is_none() {
                        event.ordering_key = body
                            .pointer("/venue/id")
                            .and_then(Value::as_str)
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned);
                    }
                    event.body = body;
                    return Ok(event);
                }
            };
            if let (Some(seq), Some(body_seq)) = (envelope.sequence, wifi.sequence)
                && seq != body_seq
            {
                return Err(explain(Quarantine::invalid(format!(
                    "/sequence {body_seq} differs from the envelope's sequence {seq}"
                ))));
            }
            event.event_type = wifi.event_type.clone();
            event.sequence = wifi.sequence.or(envelope.sequence);
            event.occurred_at_micros = Some(wifi.occurred_at_micros);
            event
                .ordering_key
                .get_or_insert_with(|| wifi.venue_id.clone());
            event.guest_wifi = Some(wifi);
        }
        ParserKind::Json => {
            let locate = source
                .and_then(|s| s.event_type.clone())
                .unwrap_or_else(|| Locate::Pointer("/type".into()));
            let found = match &locate {
                Locate::Pointer(p) => body.pointer(p).and_then(Value::as_str).map(str::to_owned),
                Locate::Header(h) => envelope
                    .headers
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(h))
                    .map(|x| x.value.clone()),
            };
            let Some(t) = found.filter(|t| !t.is_empty()) else {
                let at = match &locate {
                    Locate::Pointer(p) => format!("pointer {p}"),
                    Locate::Header(h) => format!("header {h}"),
                };
                return Err(Quarantine::invalid(format!(
                    "no event type (a non-empty string) at {at}"
                )));
            };
            if t.len() > MAX_TYPE_LEN {
                return Err(Quarantine::invalid(format!(
                    "event type is {} bytes, more than {MAX_TYPE_LEN}",
                    t.len()
                )));
            }
            event.event_type = t;
        }
    }
    event.body = body;
    Ok(event)
}

/// The body's `/type` when it is one the platform does not document and
/// could be an event type ([`is_type_name`]).
fn undocumented_type(body: &Value) -> Option<&str> {
    body.get("type")
        .and_then(Value::as_str)
        .filter(|t| is_type_name(t) && !GUEST_WIFI_TYPES.contains(t))
}

/// What an undocumented guest-WiFi type must look like to be passed on:
/// 1 to [`MAX_TYPE_LEN`] ASCII letters, digits, `_`, `.`, `-` or `:` (the
/// platform's types are identifiers; anything else is a broken body).
fn is_type_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// An RFC 3339 time after 1970 as Unix microseconds.
fn rfc3339_micros(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
}

/// [`Value::pointer`] for pointers without `~` escapes, such as the
/// guest-WiFi parser's own: the same value, without the `String` that
/// serde_json allocates per token to unescape it (those allocations were
/// 40 % of the parser's time in the processors' profile).
fn plain_pointer<'v>(value: &'v Value, ptr: &str) -> Option<&'v Value> {
    if ptr.is_empty() {
        return Some(value);
    }
    debug_assert!(!ptr.contains('~'), "{ptr} has escapes: use Value::pointer");
    ptr.strip_prefix('/')?
        .split('/')
        .try_fold(value, |at, token| match at {
            Value::Object(map) => map.get(token),
            Value::Array(items) => {
                plumbing::json_pointer::array_index(token).and_then(|i| items.get(i))
            }
            _ => None,
        })
}

fn guest_wifi(body: &Value, order_by: OrderBy) -> Result<GuestWifi, Quarantine> {
    let Some(obj) = body.as_object() else {
        return Err(Quarantine::invalid("body is not a JSON object"));
    };
    let string = |ptr: &str| -> Result<Option<String>, Quarantine> {
        match plain_pointer(body, ptr) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(Quarantine::invalid(format!(
                "{ptr} must be a non-empty string"
            ))),
        }
    };
    let required = |ptr: &str| -> Result<String, Quarantine> {
        string(ptr)?.ok_or_else(|| Quarantine::invalid(format!("{ptr} is missing")))
    };
    let event_type = required("/type")?;
    if event_type.len() > MAX_TYPE_LEN {
        return Err(Quarantine::invalid(format!(
            "/type is {} bytes, more than {MAX_TYPE_LEN}",
            event_type.len()
        )));
    }
    // The type-specific rules below hold for the documented types only.
    let documented = GUEST_WIFI_TYPES.contains(&event_type.as_str());
    if !documented && !is_type_name(&event_type) {
        return Err(Quarantine::invalid(format!(
            "/type {event_type:?} is neither a documented type nor a type name \
             (letters, digits, _ . - :)"
        )));
    }
    let sequence = match obj.get("sequence") {
        Some(v) => Some(
            v.as_i64()
                .filter(|s| *s >= 0)
                .ok_or_else(|| Quarantine::invalid("/sequence must be a non-negative integer"))?,
        ),
        None if order_by == OrderBy::OccurredAt => None,
        None => {
            return Err(Quarantine::invalid(
                "/sequence is missing (a source that sends none sets order_by = \"occurred_at\")",
            ));
        }
    };
    let occurred = required("/occurred_at")?;
    let occurred_at_micros = rfc3339_micros(&occurred).ok_or_else(|| {
        Quarantine::invalid(format!(
            "/occurred_at {occurred:?} is not an RFC 3339 time after 1970"
        ))
    })?;
    let venue_id = required("/venue/id")?;
    let device_id = string("/device/id")?;
    if documented
        && (event_type.starts_with("device_") || event_type == "venue_left")
        && device_id.is_none()
    {
        return Err(Quarantine::invalid(format!(
            "/device/id is missing (required for {event_type})"
        )));
    }
    let guest = match body.get("guest") {
        None | Some(Value::Null) => None,
        Some(Value::Object(_)) => Some(Guest {
            id: required("/guest/id")?,
            email: string("/guest/email")?,
            first_name: string("/guest/first_name")?,
            vip: match plain_pointer(body, "/guest/vip") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Quarantine::invalid("/guest/vip must be a boolean")),
            },
        }),
        Some(_) => return Err(Quarantine::invalid("/guest must be an object")),
    };
    if documented && event_type.starts_with("guest_") && guest.is_none() {
        return Err(Quarantine::invalid(format!(
            "/guest is missing (required for {event_type})"
        )));
    }
    Ok(GuestWifi {
        event_type,
        sequence,
        occurred_at_micros,
        venue_id,
        venue_name: string("/venue/name")?,
        zone: string("/zone")?,
        device_id,
        guest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Header, Verification};

    mod plain_pointer {
        use super::super::plain_pointer;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Small JSON values whose keys and indexes the pointers below can
        /// name: objects keyed `a`, `b`, `0`, `1`, `01`, `+1`, `` and arrays.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i32>().prop_map(Value::from),
                "[a-z]{0,3}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 40, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("a"),
                            Just("b"),
                            Just("0"),
                            Just("1"),
                            Just("01"),
                            Just("+1"),
                            Just("")
                        ]
                        .prop_map(str::to_owned),
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// The same value as serde_json's `pointer` for every pointer
            /// without escapes, including array indexes, the tokens RFC
            /// 6901 refuses as indexes (`01`, `+1`), empty tokens and the
            /// empty pointer.
            #[test]
            fn finds_what_serde_json_finds(
                value in json(),
                tokens in proptest::collection::vec(
                    prop_oneof![Just("a"), Just("b"), Just("0"), Just("1"), Just("01"), Just("+1"), Just("")],
                    0..5,
                ),
                slash in any::<bool>(),
            ) {
                let mut ptr: String = tokens.iter().map(|t| format!("/{t}")).collect();
                if !slash && !ptr.is_empty() {
                    ptr.remove(0);
                }
                prop_assert_eq!(plain_pointer(&value, &ptr), value.pointer(&ptr), "{}", ptr);
            }
        }
    }

    fn envelope(body: &str) -> Envelope {
        Envelope {
            event_id: "evt_1".into(),
            source: "purple".into(),
            received_at_micros: 1_700_000_000_000_000,
            body: body.as_bytes().to_vec(),
            headers: vec![Header {
                name: "x-github-event".into(),
                value: "push".into(),
            }],
            content_type: Some("application/json".into()),
            client_addr: None,
            verification: Verification {
                scheme: "hmac".into(),
                secret_id: "current".into(),
            },
            ordering_key: Some("venue-017".into()),
            sequence: Some(1042),
            request_id: "r1".into(),
        }
    }

    fn wifi_cfg() -> SourceConfig {
        SourceConfig {
            parser: ParserKind::GuestWifi,
            event_type: None,
            order_by: OrderBy::Sequence,
            mapping: None,
            sample: None,
        }
    }

    const GOOD: &str = r#"{"id": "evt_1", "type": "guest_connects", "sequence": 1042,
        "occurred_at": "2026-11-22T18:03:11.123Z",
        "venue": {"id": "venue-017", "name": "Airport Hotel"}, "zone": "lobby",
        "device": {"id": "dev_9f2c"},
        "guest": {"id": "g_77", "email": "a@example.com", "first_name": "Ana", "vip": true}}"#;

    #[test]
    fn the_design_example_parses_into_typed_fields() {
        let e = parse(&envelope(GOOD), Some(&wifi_cfg())).unwrap();
        assert_eq!(e.event_type, "guest_connects");
        assert_eq!(e.sequence, Some(1042));
        assert_eq!(e.ordering_key.as_deref(), Some("venue-017"));
        assert_eq!(e.occurred_at_micros, Some(1_795_370_591_123_000));
        let w = e.guest_wifi.unwrap();
        assert_eq!(w.zone.as_deref(), Some("lobby"));
        let g = w.guest.unwrap();
        assert!(g.vip);
        assert_eq!(g.first_name.as_deref(), Some("Ana"));
    }

    #[test]
    fn each_invalid_body_names_its_field() {
        for (body, needle, reason) in [
            ("not json", "not JSON", "not_json"),
            ("[1]", "not a JSON object", "invalid"),
            (&GOOD.replace("\"guest_connects\"", "7"), "/type", "invalid"),
            (
                &GOOD.replace("guest_connects", "guest connects"),
                "/type",
                "invalid",
            ),
            (
                &GOOD.replace("guest_connects", "guest\\u0000connects"),
                "/type",
                "invalid",
            ),
            (
                &GOOD.replace("guest_connects", &"x".repeat(MAX_TYPE_LEN + 1)),
                "/type",
                "invalid",
            ),
            (
                &GOOD
                    .replace("guest_connects", "venue_left")
                    .replace("dev_9f2c", ""),
                "/device/id",
                "invalid",
            ),
            (&GOOD.replace("1042", "-3"), "/sequence", "invalid"),
            (&GOOD.replace("1042", "1043"), "differs", "invalid"),
            (
                &GOOD.replace("2026-11-22T18:03:11.123Z", "yesterday"),
                "/occurred_at",
                "invalid",
            ),
            (&GOOD.replace("\"venue-017\"", "17"), "/venue/id", "invalid"),
            (
                &GOOD.replace("\"vip\": true", "\"vip\": \"yes\""),
                "/guest/vip",
                "invalid",
            ),
            (&GOOD.replace("\"evt_1\"", "\"evt_2\""), "/id", "invalid"),
        ] {
            let q = parse(&envelope(body), Some(&wifi_cfg())).unwrap_err();
            assert_eq!(q.reason, reason, "{body}: {q:?}");
            assert!(q.detail.contains(needle), "{body}: {q:?}");
        }
    }

    #[test]
    fn a_guest_wifi_event_encodes_with_the_committed_schema_and_reads_back() {
        let e = parse(&envelope(GOOD), Some(&wifi_cfg())).unwrap();
        let bytes = e.guest_wifi_avro().unwrap().unwrap();
        // Read with only the .avsc text, as any Avro library would.
        let (name, text) =
            schemas::GUEST_WIFI_SCHEMA_VERSIONS[schemas::GUEST_WIFI_SCHEMA_VERSIONS.len() - 1];
        assert_eq!(name, "v2");
        let schema = apache_avro::Schema::parse_str(text).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("not a record: {value:?}");
        };
        let get = |n: &str| {
            fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        use apache_avro::types::Value as A;
        assert_eq!(get("type"), A::Enum(0, "guest_connects".into()));
        assert_eq!(
            get("type_name"),
            A::Union(1, Box::new(A::String("guest_connects".into())))
        );
        assert_eq!(get("sequence"), A::Union(1, Box::new(A::Long(1042))));
        assert_eq!(get("venue_id"), A::String("venue-017".into()));
        assert_eq!(
            get("occurred_at"),
            A::TimestampMicros(1_795_370_591_123_000)
        );
        let A::Union(1, guest) = get("guest") else {
            panic!("no guest")
        };
        let A::Record(g) = *guest else {
            panic!("guest not a record")
        };
        assert!(g.contains(&("vip".to_string(), A::Boolean(true))));
        // Events of other parsers have no guest-WiFi form.
        assert!(
            parse(&envelope(r#"{"type": "x"}"#), None)
                .unwrap()
                .guest_wifi_avro()
                .is_none()
        );
    }

    /// Reads the current schema's record of `e`: (`type` symbol,
    /// `type_name`).
    fn avro_type(e: &Event) -> (String, String) {
        use apache_avro::types::Value as A;
        let bytes = e.guest_wifi_avro().unwrap().unwrap();
        let value =
            apache_avro::from_avro_datum(guest_wifi_schema(), &mut bytes.as_slice(), None).unwrap();
        let A::Record(fields) = value else {
            panic!("not a record")
        };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        let (A::Enum(_, symbol), A::Union(1, name)) = (get("type"), get("type_name")) else {
            panic!("type and type_name: {fields:?}")
        };
        let A::String(name) = *name else {
            panic!("type_name not a string")
        };
        (symbol, name)
    }

    #[test]
    fn a_guest_leaving_the_venue_is_a_documented_type_with_its_device() {
        let body = GOOD.replace("guest_connects", "venue_left");
        let e = parse(&envelope(&body), Some(&wifi_cfg())).unwrap();
        assert_eq!(e.event_type, "venue_left");
        let w = e.guest_wifi.as_ref().unwrap();
        assert!(w.is_documented());
        assert_eq!(w.device_id.as_deref(), Some("dev_9f2c"));
        assert!(SESSION_END_TYPES.contains(&"venue_left"));
        assert_eq!(avro_type(&e), ("venue_left".into(), "venue_left".into()));
        // Consent changes name their guest, as every guest_* type does.
        let no_guest = GOOD
            .replace("guest_connects", "guest_opted_out")
            .replace(r#""guest": {"id": "g_77", "email": "a@example.com", "first_name": "Ana", "vip": true}"#, r#""guest": null"#);
        let q = parse(&envelope(&no_guest), Some(&wifi_cfg())).unwrap_err();
        assert!(q.detail.contains("/guest is missing"), "{q:?}");
    }

    #[test]
    fn an_undocumented_type_is_passed_on_typed_with_its_body() {
        // Every field an event has, and an unknown member: typed, the
        // type-specific rules (device, guest) not applied.
        let body = GOOD
            .replace("guest_connects", "guest_feedback")
            .replace(r#""device": {"id": "dev_9f2c"},"#, r#""rating": 5,"#);
        let e = parse(&envelope(&body), Some(&wifi_cfg())).unwrap();
        assert_eq!(e.event_type, "guest_feedback");
        assert_eq!(e.sequence, Some(1042));
        assert_eq!(e.body["rating"], 5);
        let w = e.guest_wifi.as_ref().unwrap();
        assert!(!w.is_documented());
        assert_eq!(w.venue_id, "venue-017");
        assert_eq!(w.device_id, None);
        // Its Avro record says `other` and keeps the type as sent.
        assert_eq!(avro_type(&e), ("other".into(), "guest_feedback".into()));
        // A device_* type it does not know needs no device either.
        let e = parse(
            &envelope(
                &GOOD
                    .replace("guest_connects", "device_roamed")
                    .replace("dev_9f2c", ""),
            ),
            Some(&wifi_cfg()),
        );
        assert!(e.is_ok(), "{e:?}");
    }

    #[test]
    fn an_undocumented_type_without_the_common_fields_is_passed_on_generic() {
        // No venue, no sequence, an occurred_at: a platform-wide event.
        let body = r#"{"id": "evt_1", "type": "account_updated",
            "occurred_at": "2026-11-22T18:03:11.123Z", "plan": "pro"}"#;
        let mut env = envelope(body);
        env.ordering_key = None;
        env.sequence = None;
        let e = parse(&env, Some(&wifi_cfg())).unwrap();
        assert_eq!(e.event_type, "account_updated");
        assert_eq!(e.guest_wifi, None);
        assert_eq!(e.ordering_key, None);
        assert_eq!(e.sequence, None);
        assert_eq!(e.occurred_at_micros, Some(1_795_370_591_123_000));
        assert_eq!(e.body["plan"], "pro");
        assert!(e.guest_wifi_avro().is_none());
        // The venue from the body when the envelope has no ordering key.
        let mut env = envelope(r#"{"type": "x_y", "venue": {"id": "v9"}, "sequence": "n"}"#);
        env.ordering_key = None;
        let e = parse(&env, Some(&wifi_cfg())).unwrap();
        assert_eq!(e.ordering_key.as_deref(), Some("v9"));
        assert_eq!(e.sequence, Some(1042), "the envelope's sequence");
        // Still quarantined: no type at all, or an id that is not the
        // envelope's.
        for bad in [
            r#"{"venue": {"id": "v9"}}"#,
            r#"{"id": "evt_2", "type": "x"}"#,
        ] {
            assert_eq!(
                parse(&envelope(bad), Some(&wifi_cfg())).unwrap_err().reason,
                "invalid",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_source_ordered_by_time_needs_no_sequence_and_says_so_in_its_config() {
        let body = GOOD.replace(r#""sequence": 1042,"#, "");
        let mut env = envelope(&body);
        env.sequence = None;
        // Ordered by sequence (the default): the missing field is named,
        // with the setting for a source that sends none.
        let q = parse(&env, Some(&wifi_cfg())).unwrap_err();
        assert!(
            q.detail.contains("/sequence is missing") && q.detail.contains("occurred_at"),
            "{q:?}"
        );
        let by_time = SourceConfig {
            order_by: OrderBy::OccurredAt,
            ..wifi_cfg()
        };
        let e = parse(&env, Some(&by_time)).unwrap();
        assert_eq!(e.sequence, None);
        assert_eq!(e.guest_wifi.as_ref().unwrap().sequence, None);
        assert_eq!(e.occurred_at_micros, Some(1_795_370_591_123_000));
        // The Avro record has a null sequence.
        use apache_avro::types::Value as A;
        let bytes = e.guest_wifi_avro().unwrap().unwrap();
        let A::Record(fields) =
            apache_avro::from_avro_datum(guest_wifi_schema(), &mut bytes.as_slice(), None).unwrap()
        else {
            panic!("not a record")
        };
        assert!(fields.contains(&("sequence".into(), A::Union(0, Box::new(A::Null)))));
        // A sequence it does send is still checked and kept.
        assert_eq!(
            parse(&envelope(GOOD), Some(&by_time)).unwrap().sequence,
            Some(1042)
        );
        let cfg: SourceConfig =
            toml::from_str("parser = \"guest_wifi\"\norder_by = \"occurred_at\"").unwrap();
        assert_eq!(cfg.order_by, OrderBy::OccurredAt);
        assert!(cfg.problems("sources.p").is_empty());
        let cfg: SourceConfig =
            toml::from_str("parser = \"json\"\norder_by = \"occurred_at\"").unwrap();
        assert_eq!(
            cfg.problems("sources.j"),
            [
                "sources.j.order_by: \"occurred_at\" needs the guest_wifi parser (the json parser reads no occurred_at)"
            ]
        );
    }

    /// A source whose payload names the fields differently.
    const ACME_MAPPING: &str = r#"
        parser = "guest_wifi"
        [mapping]
        id = "/event_id"
        type = "/kind"
        sequence = "/seq"
        occurred_at = "/ts"
        venue_id = "/site/code"
        device_id = "/client/mac"
        guest_id = "/user/id"
        guest_email = "/user/mail"
    "#;
    const ACME: &str = r#"{"event_id": "evt_1", "kind": "device_connected", "seq": 1042,
        "ts": "2026-11-22T18:03:11.123Z", "site": {"code": "venue-017"}, "zone": "lobby",
        "client": {"mac": "aa:bb"}, "user": {"id": "u1", "mail": "a@example.com", "phone": "+1"}}"#;

    #[test]
    fn a_mapped_source_parses_into_the_same_event_and_sinks_see_the_platforms_shape() {
        let cfg: SourceConfig = toml::from_str(ACME_MAPPING).unwrap();
        assert!(cfg.problems("sources.acme").is_empty());
        let mut env = envelope(ACME);
        env.source = "acme".into();
        let e = parse(&env, Some(&cfg)).unwrap();
        assert_eq!(e.event_type, "device_connected");
        assert_eq!(e.sequence, Some(1042));
        let w = e.guest_wifi.as_ref().unwrap();
        assert_eq!(w.venue_id, "venue-017");
        assert_eq!(w.device_id.as_deref(), Some("aa:bb"));
        assert_eq!(
            w.guest.as_ref().unwrap().email.as_deref(),
            Some("a@example.com")
        );
        // The body in the platform's shape: `fields` minimisation finds
        // the guest there, and the unmapped phone number is not passed on.
        assert_eq!(e.body["guest"]["email"], "a@example.com");
        assert_eq!(e.body["device"]["id"], "aa:bb");
        assert!(!e.body.to_string().contains("+1"), "{}", e.body);
        // A field missing names the configured pointer too.
        let q = parse(
            &envelope(&ACME.replace("\"site\"", "\"place\"")),
            Some(&cfg),
        )
        .unwrap_err();
        assert_eq!(
            q.detail,
            "/venue/id is missing (sources.purple.mapping.venue_id = \"/site/code\")"
        );
    }

    #[test]
    fn a_sample_proves_the_mapping_or_names_what_does_not_map() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("acme.json");
        std::fs::write(&good, ACME).unwrap();
        let mut cfg: SourceConfig = toml::from_str(ACME_MAPPING).unwrap();
        cfg.sample = Some(good.clone());
        let line = cfg.check_sample("acme").unwrap().unwrap();
        assert_eq!(
            line,
            format!(
                "sources.acme.sample: {} maps: type \"device_connected\", venue \"venue-017\", \
                 sequence 1042, occurred_at 2026-11-22T18:03:11.123000Z; also zone, device_id, \
                 guest_id, guest_email",
                good.display()
            )
        );
        assert!(!line.contains("a@example.com") && !line.contains("aa:bb"));
        assert!(cfg.problems("sources.acme").is_empty());
        // The type at another place than mapped: a documented type cannot
        // be found, so the sample would not even be typed.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, ACME.replace("\"kind\"", "\"event_type\"")).unwrap();
        cfg.sample = Some(bad.clone());
        assert_eq!(
            cfg.problems("sources.acme"),
            [format!(
                "sources.acme.sample: {} does not map: /type is missing (sources.acme.mapping.type = \"/kind\")",
                bad.display()
            )]
        );
        // An undocumented type without a venue would pass on generic.
        std::fs::write(
            &bad,
            ACME.replace("device_connected", "tap")
                .replace("\"site\"", "\"x\""),
        )
        .unwrap();
        let p = cfg.problems("sources.acme");
        assert!(
            p.len() == 1
                && p[0].contains("would pass on generic")
                && p[0].contains("/venue/id is missing (sources.acme.mapping.venue_id"),
            "{p:?}"
        );
        cfg.sample = Some(dir.path().join("absent.json"));
        assert!(cfg.problems("sources.acme")[0].starts_with("sources.acme.sample: "));
        // A mapping on a json source, and a pointer that is not one.
        let cfg: SourceConfig =
            toml::from_str("parser = \"json\"\n[mapping]\nzone = \"area\"").unwrap();
        assert_eq!(
            cfg.problems("sources.j").len(),
            2,
            "{:?}",
            cfg.problems("sources.j")
        );
    }

    #[test]
    fn json_sources_take_their_type_from_pointer_or_header() {
        let e = parse(&envelope(r#"{"type": "charge.succeeded"}"#), None).unwrap();
        assert_eq!(e.event_type, "charge.succeeded");
        let cfg = SourceConfig {
            parser: ParserKind::Json,
            event_type: Some(Locate::Header("X-GitHub-Event".into())),
            order_by: OrderBy::Sequence,
            mapping: None,
            sample: None,
        };
        let e = parse(&envelope(r#"{"zen": "hi"}"#), Some(&cfg)).unwrap();
        assert_eq!(e.event_type, "push");
        let q = parse(&envelope(r#"{"kind": 1}"#), None).unwrap_err();
        assert!(q.detail.contains("/type"), "{q:?}");
    }
}
