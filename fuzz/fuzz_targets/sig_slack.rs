#![no_main]
//! The Slack scheme's header parsing and verification on hostile headers
//! and bodies: never a panic, and nothing unsigned ever verifies.

use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{NOW, request, secrets};

fuzz_target!(|data: &[u8]| {
    let scheme = ingest::signature::slack::SlackScheme::new(std::time::Duration::from_secs(300), secrets(&["fuzz-secret", "old-secret"]));
    let (headers, body) = request(data, &["x-slack-signature", "x-slack-request-timestamp"]);
    let verdict = scheme.verify_at(&headers, body, NOW);
    assert!(verdict.is_err(), "an unsigned request verified: {verdict:?}");
});
