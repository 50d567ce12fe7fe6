#![no_main]
//! The Slack scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{request, secrets};

fuzz_target!(|data: &[u8]| {
    // Built once: a scheme leaks its header labels by design (once per
    // configured source at start-up), which LeakSanitizer would report.
    static SCHEME: std::sync::OnceLock<Box<dyn ingest::signature::Scheme>> =
        std::sync::OnceLock::new();
    let scheme = SCHEME.get_or_init(|| {
        Box::new(ingest::signature::slack::SlackScheme::new(
            std::time::Duration::from_secs(300),
            secrets(&["fuzz-secret", "old-secret"]),
        ))
    });
    let (headers, body) = request(data, &["x-slack-signature", "x-slack-request-timestamp"]);
    let verdict = scheme.verify(&headers, body);
    assert!(
        verdict.is_err(),
        "an unsigned request verified: {verdict:?}"
    );
});
