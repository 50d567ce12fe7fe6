#![no_main]
//! The Standard Webhooks scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{request, secrets};

fuzz_target!(|data: &[u8]| {
    // Built once: a scheme leaks its header labels by design (once per
    // configured source at start-up), which LeakSanitizer would report.
    static SCHEME: std::sync::OnceLock<Box<dyn ingest::signature::Scheme>> =
        std::sync::OnceLock::new();
    let scheme = SCHEME.get_or_init(|| {
        Box::new(
            ingest::signature::standard::StandardScheme::new(
                std::time::Duration::from_secs(300),
                secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0"]),
            )
            .expect("valid whsec secrets"),
        )
    });
    let (headers, body) = request(
        data,
        &["webhook-signature", "webhook-id", "webhook-timestamp"],
    );
    let verdict = scheme.verify(&headers, body);
    assert!(
        verdict.is_err(),
        "an unsigned request verified: {verdict:?}"
    );
});
