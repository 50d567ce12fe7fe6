#![no_main]
//! Ingest's event id / ordering key / sequence extraction (JSON pointers
//! into a hostile body, or header values) never panics, and what it keeps
//! is within the documented bounds: ids non-empty, at most 256 bytes, no
//! control characters.

use ingest::config::Config;
use ingest::source::{MAX_ID_LEN, Source};
use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::request;
use std::sync::OnceLock;

/// Two sources: every field from the body, and a mix of headers and an
/// escaped pointer into an array.
const CONFIG: &str = r#"
[sources.body]
signature = { scheme = "purple", secrets = [{ id = "a", env = "FUZZ_UNUSED_SECRET" }] }
event_id = { pointer = "/id" }
ordering_key = { pointer = "/venue/id" }
sequence = { pointer = "/sequence" }

[sources.mixed]
signature = { scheme = "purple", secrets = [{ id = "a", env = "FUZZ_UNUSED_SECRET" }] }
event_id = { header = "x-event-id" }
ordering_key = { pointer = "/a~1b/0/~0c" }
sequence = { header = "x-sequence" }
"#;

fn sources() -> &'static [Source; 2] {
    static S: OnceLock<[Source; 2]> = OnceLock::new();
    S.get_or_init(|| {
        let config = Config::from_toml(CONFIG).expect("the fuzz sources' config loads");
        ["body", "mixed"].map(|name| Source::for_polling(name, &config.sources[name]))
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
