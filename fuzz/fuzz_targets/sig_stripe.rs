#![no_main]
//! The Stripe scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{request, secrets};

fuzz_target!(|data: &[u8]| {
    // Built once: a scheme leaks its header labels by design (once per
    // configured source at start-up), which LeakSanitizer would report.
    static SCHEME: std::sync::OnceLock<Box<dyn ingest::signature::Scheme>> =
        std::sync::OnceLock::new();
    let scheme = SCHEME.get_or_init(|| {
        Box::new(ingest::signature::stripe::StripeScheme::new(
            std::time::Duration::from_secs(300),
            secrets(&["whsec_fuzz", "whsec_old"]),
        ))
    });
    let (headers, body) = request(data, &["stripe-signature"]);
    let verdict = scheme.verify(&headers, body);
    assert!(
        verdict.is_err(),
        "an unsigned request verified: {verdict:?}"
    );
});
