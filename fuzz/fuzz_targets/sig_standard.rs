#![no_main]
//! The Standard Webhooks scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{NOW, request, secrets};

fuzz_target!(|data: &[u8]| {
    let scheme = ingest::signature::standard::StandardScheme::new(std::time::Duration::from_secs(300), secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0"])).expect("valid whsec secrets");
    let (headers, body) = request(data, &["webhook-signature", "webhook-id", "webhook-timestamp"]);
    let verdict = scheme.verify_at(&headers, body, NOW);
    assert!(verdict.is_err(), "an unsigned request verified: {verdict:?}");
});
