#![no_main]
//! The Stripe scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{NOW, request, secrets};

fuzz_target!(|data: &[u8]| {
    let scheme = ingest::signature::stripe::StripeScheme::new(std::time::Duration::from_secs(300), secrets(&["whsec_fuzz", "whsec_old"]));
    let (headers, body) = request(data, &["stripe-signature"]);
    let verdict = scheme.verify_at(&headers, body, NOW);
    assert!(verdict.is_err(), "an unsigned request verified: {verdict:?}");
});
