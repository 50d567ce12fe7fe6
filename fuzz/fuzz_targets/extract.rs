#![no_main]
//! Ingest's event id / ordering key / sequence extraction (JSON pointers
//! into a hostile body, or header values) never panics, and what it keeps
//! is within the documented bounds: ids non-empty, at most 256 bytes, no
//! control characters.

use ingest::config::Extract;
use ingest::signature::hmac::HmacScheme;
use ingest::source::{MAX_ID_LEN, Source};
use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::request;
use std::sync::{Arc, OnceLock};

fn sources() -> &'static [Source; 2] {
    static S: OnceLock<[Source; 2]> = OnceLock::new();
    S.get_or_init(|| {
        let source = |event_id, ordering_key, sequence| Source {
            name: Arc::from("fuzz"),
            scheme: Box::new(HmacScheme::purple(vec![])),
            max_body_bytes: 1 << 20,
            event_id: Some(event_id),
            ordering_key: Some(ordering_key),
            sequence: Some(sequence),
            forward_headers: vec![],
            allow: None,
            rate_limit: None,
            url_verification: false,
            subscription: None,
            client_ca: None,
        };
        [
            source(
                Extract::Pointer("/id".into()),
                Extract::Pointer("/venue/id".into()),
                Extract::Pointer("/sequence".into()),
            ),
            source(
                Extract::Header("x-event-id".into()),
                Extract::Pointer("/a~1b/0/~0c".into()),
                Extract::Header("x-sequence".into()),
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = request(data, &["x-event-id", "x-sequence"]);
    for source in sources() {
        let got = source.extract(&headers, body);
        for id in [&got.event_id, &got.ordering_key].into_iter().flatten() {
            assert!(!id.is_empty() && id.len() <= MAX_ID_LEN, "{id:?}");
            assert!(!id.chars().any(char::is_control), "{id:?}");
        }
    }
});
