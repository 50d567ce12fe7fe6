//! What the tests send and read back: guest-WiFi events, their signatures,
//! envelopes and requests; the configs of the binaries; a JSON-lines
//! sink's file.

use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `hex(HMAC-SHA256(secret, body))`, the guest-WiFi platform's signature.
pub fn purple_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A guest-WiFi platform event body, as the platform documents it.
pub fn purple_event(id: &str, venue: &str, sequence: u64) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "type": "device_connected",
        "sequence": sequence,
        "occurred_at": "2026-11-22T18:03:11.123Z",
        "venue": {"id": venue, "name": "Airport Hotel"},
        "zone": "lobby",
        "device": {"id": format!("dev_{sequence}")},
        "guest": {"id": "g_77", "email": "a@example.com", "first_name": "Ana", "vip": sequence % 7 == 0}
    })
    .to_string()
    .into_bytes()
}

/// A guest-WiFi event of type `kind` (`device_connected`, `zone_entered`,
/// `device_disconnected`, ...) for `device` in `zone` of `venue`, dated
/// `at`: what drives the alerting sink's live state (which ignores events
/// dated far from the wall clock), so the venue view counts it.
pub fn guest_wifi_event(
    id: &str,
    kind: &str,
    venue: &str,
    zone: &str,
    device: &str,
    sequence: u64,
    at: SystemTime,
) -> Vec<u8> {
    serde_json::json!({
        "id": id, "type": kind, "sequence": sequence,
        "occurred_at": humantime::format_rfc3339_millis(at).to_string(),
        "venue": {"id": venue}, "zone": zone, "device": {"id": device},
    })
    .to_string()
    .into_bytes()
}

/// An ingest config for one `purple` source signed with secrets read from
/// the named environment variables (`id = env`).
pub fn purple_config(brokers: &str, topic: &str, secrets: &[(&str, &str)], extra: &str) -> String {
    let secrets = secrets
        .iter()
        .map(|(id, env)| format!("{{ id = \"{id}\", env = \"{env}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[kafka]
brokers = "{brokers}"
topic = "{topic}"
# tansu 0.6 cannot take an idempotent epoch bump (see ingest's config).
delivery_timeout = "30s"

[sources.purple]
max_body_bytes = 65536
ordering_key = {{ pointer = "/venue/id" }}
sequence = {{ pointer = "/sequence" }}
signature = {{ scheme = "purple", secrets = [{secrets}] }}
"#
    )
}

/// What one webhook request got back.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status, or 0 when there was no response (connection refused or
    /// reset).
    pub status: u16,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The JSON body.
    pub body: serde_json::Value,
    /// How long the request took.
    pub elapsed: Duration,
}

/// Sends one signed guest-WiFi request.
pub async fn send_purple(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
) -> Outcome {
    let sig = purple_signature(secret, &body);
    let started = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-purple-signature", sig)
        .body(body)
        .send()
        .await;
    match r {
        Err(_) => Outcome {
            status: 0,
            retry_after: None,
            body: serde_json::Value::Null,
            elapsed: started.elapsed(),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.json().await.unwrap_or(serde_json::Value::Null);
            Outcome {
                status,
                retry_after,
                body,
                elapsed: started.elapsed(),
            }
        }
    }
}

/// A processors config: the `purple` source parsed as guest-WiFi, every
/// event routed to a JSON-lines sink at `sink_path`. Static group
/// membership is off (`instance_id = ""`): the tests start several
/// instances of a group on one host, where the host-name default would
/// give them all one identity.
pub fn processors_config(
    brokers: &str,
    topic: &str,
    group: &str,
    dedupe_path: &std::path::Path,
    sink_path: &std::path::Path,
    extra_processing: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"
instance_id = ""

[processing]
retry_initial = "50ms"
retry_max = "1s"
revoke_timeout = "10s"
{extra_processing}

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.test]
kind = "jsonl"
path = "{sink}"

[[routes]]
name = "everything"
sinks = ["test"]
"#,
        dedupe = dedupe_path.display(),
        sink = sink_path.display(),
    )
}

/// A processors config for the live venue view: the `purple` source parsed
/// as guest-WiFi, every live event (not late) routed to the alerting sink
/// `alerts` (its state in `dir`, a `zone_occupancy` rule at `threshold`,
/// the log receiver), whose state changelog (`<group>-state`) the
/// `venues` service follows. The processors' own defaults otherwise
/// (`batch_max` among them).
pub fn processors_alerting_config(
    brokers: &str,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    threshold: u32,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"

[processing]
retry_initial = "50ms"
retry_max = "1s"
revoke_timeout = "10s"

[dedupe]
path = "{dir}/dedupe.redb"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.alerts]
kind = "alerts"
path = "{dir}/alerts.sqlite"

[[sinks.alerts.rules]]
kind = "zone_occupancy"
threshold = {threshold}

[[sinks.alerts.receivers]]
kind = "log"

[[routes]]
name = "live"
sources = ["purple"]
include_late = false
sinks = ["alerts"]
"#,
        dir = dir.display()
    )
}

/// The envelope ingest would write for a guest-WiFi event, received at
/// 2026-11-22T18:03:11Z.
pub fn purple_envelope(id: &str, venue: &str, sequence: u64, body: Option<Vec<u8>>) -> Vec<u8> {
    purple_envelope_received(id, venue, sequence, body, 1_795_370_591_000_000)
}

/// [`purple_envelope`] received at `received_at_micros` (Unix µs): for a
/// sink that compares an event's date with its receipt (the alerting
/// sink ignores events dated more than `max_clock_skew` past it).
pub fn purple_envelope_received(
    id: &str,
    venue: &str,
    sequence: u64,
    body: Option<Vec<u8>>,
    received_at_micros: i64,
) -> Vec<u8> {
    schemas::Envelope {
        event_id: id.into(),
        source: "purple".into(),
        received_at_micros,
        body: body.unwrap_or_else(|| purple_event(id, venue, sequence)),
        headers: vec![],
        content_type: Some("application/json".into()),
        client_addr: Some("127.0.0.1".into()),
        verification: schemas::Verification {
            scheme: "hmac".into(),
            secret_id: "current".into(),
        },
        ordering_key: Some(venue.into()),
        sequence: Some(sequence as i64),
        request_id: format!("req-{id}"),
    }
    .encode()
    .expect("encoding an envelope")
}

/// The events in a JSON-lines sink file, in file order.
pub fn sink_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
