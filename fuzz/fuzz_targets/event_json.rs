#![no_main]
//! The processors' `json` parser on an arbitrary body from a verified
//! sender (malformed JSON, wrong types, huge numbers, deep nesting, invalid
//! UTF-8): an event or a quarantine with a reason, never a panic.

use libfuzzer_sys::fuzz_target;
use processors::config::{Locate, ParserKind, SourceConfig};
use schemas::{Envelope, Header, Verification};

fuzz_target!(|data: &[u8]| {
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
    for event_type in [
        None,
        Some(Locate::Pointer("/a/0".into())),
        Some(Locate::Header("x-event-type".into())),
    ] {
        let config = SourceConfig {
            parser: ParserKind::Json,
            event_type,
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
});
