#![no_main]
//! The guest-WiFi platform (purple) scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{NOW, request, secrets};

fuzz_target!(|data: &[u8]| {
    let scheme = ingest::signature::hmac::HmacScheme::purple(secrets(&["fuzz-secret", "old-secret"]));
    let (headers, body) = request(data, &["x-purple-signature"]);
    let verdict = scheme.verify_at(&headers, body, NOW);
    assert!(verdict.is_err(), "an unsigned request verified: {verdict:?}");
});
