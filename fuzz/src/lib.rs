//! Helpers shared by the fuzz targets: turning one fuzz input into the
//! header values and body a sender controls, and the fixed secrets and
//! clock the schemes are checked with.

use http::{HeaderMap, HeaderName, HeaderValue};
use ingest::secret::Secret;
use ingest::signature::NamedSecret;
use std::sync::Arc;

/// The clock every target verifies at (2023-11-14T22:13:20Z).
pub const NOW: i64 = 1_700_000_000;

/// A rotation of two secrets, as a source would have.
pub fn secrets(values: &[&str]) -> Vec<NamedSecret> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| NamedSecret {
            id: Arc::from(format!("s{i}").as_str()),
            secret: Secret::new(v.as_bytes().to_vec()),
        })
        .collect()
}

/// Splits a fuzz input into header values and a body: everything before
/// the first `0xFF` byte is header lines (split on `\n`), the rest the
/// body. Line `i` becomes a value of `names[i % names.len()]`, so inputs
/// with more lines than names repeat headers, as a hostile sender may.
/// Lines that are not valid header values (hyper refuses those before any
/// handler sees them) are skipped.
pub fn request<'a>(data: &'a [u8], names: &[&'static str]) -> (HeaderMap, &'a [u8]) {
    let (head, body) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if head.is_empty() {
        return (headers, body);
    }
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        let name = HeaderName::from_static(names[i % names.len()]);
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(name, value);
        }
    }
    (headers, body)
}

/// One arbitrary body from a verified sender through a processors parser,
/// with each way of locating the event type: an event (whose guest-WiFi
/// record, if any, encodes) or a quarantine with a reason, never a panic.
pub fn check_parser(parser: processors::event::ParserKind, data: &[u8]) {
    use processors::event::{Locate, OrderBy, SourceConfig};
    use schemas::{Envelope, Header, Verification};
    let envelope = Envelope {
        event_id: "evt_1".into(),
        source: "fuzz".into(),
        received_at_micros: 1_700_000_000_000_000,
        body: data.to_vec(),
        headers: vec![Header {
            name: "x-event-type".into(),
            value: "t".into(),
        }],
        content_type: Some("application/json".into()),
        client_addr: None,
        verification: Verification {
            scheme: "hmac".into(),
            secret_id: "a".into(),
        },
        ordering_key: None,
        sequence: data.first().map(|&b| i64::from(b)),
        request_id: "req".into(),
    };
    for (event_type, order_by) in [
        (None, OrderBy::Sequence),
        (None, OrderBy::OccurredAt),
        (Some(Locate::Pointer("/a/0".into())), OrderBy::Sequence),
        (Some(Locate::Header("x-event-type".into())), OrderBy::Sequence),
    ] {
        let config = SourceConfig {
            parser,
            event_type,
            order_by,
            mapping: None,
            sample: None,
        };
        match processors::event::parse(&envelope, Some(&config)) {
            Ok(event) => {
                if let Some(avro) = event.guest_wifi_avro() {
                    avro.expect("a parsed guest-WiFi event encodes");
                }
            }
            Err(q) => assert!(!q.reason.is_empty() && !q.detail.is_empty()),
        }
    }
}
