#![no_main]
//! Slack's `url_verification` body parser: never a panic, and a challenge
//! it echoes is only ever 1-512 visible ASCII characters.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(challenge)) = ingest::handshake::slack_url_verification(data) {
        assert!((1..=512).contains(&challenge.len()), "{challenge:?}");
        assert!(
            challenge.bytes().all(|b| b.is_ascii_graphic()),
            "{challenge:?}"
        );
    }
});
