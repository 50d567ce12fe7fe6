//! Micro-benchmarks of the per-event CPU work: ingest's signature schemes
//! (every one, 1 KiB and 16 KiB bodies) and envelope encoding; the
//! processors' envelope decoding, guest-WiFi normalisation, reordering,
//! de-duplication lookups and inserts (redb on disk) and offset tracking.
//!
//! `cargo bench -p pipeline-benches --bench micro`; figures in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use ingest::secret::Secret;
use ingest::signature::NamedSecret;
use ingest::signature::config::{HmacAlgorithm, HmacConfig, SignatureEncoding};
use ingest::signature::github::GithubScheme;
use ingest::signature::hmac::HmacScheme;
use ingest::signature::shopify::ShopifyScheme;
use ingest::signature::slack::SlackScheme;
use ingest::signature::standard::StandardScheme;
use ingest::signature::stripe::StripeScheme;
use pipeline_benches::guest_wifi_body;
use processors::event::parse;
use processors::event::{ParserKind, SourceConfig};
use processors::pipeline::dedupe::{DedupeConfig, DedupeRecord, DedupeStore, RedbDedupe};
use processors::pipeline::offsets::PartitionOffsets;
use processors::pipeline::reorder::{ReorderConfig, Reorderer};
use schemas::{Envelope, Header, Verification};
use sha2::Sha256;

fn body(len: usize) -> Vec<u8> {
    let mut b =
        br#"{"id":"evt_01JD5","type":"device_connected","venue":{"id":"venue-017"},"pad":""#
            .to_vec();
    while b.len() + 2 < len {
        b.push(b'x');
    }
    b.extend_from_slice(b"\"}");
    b
}

/// Fixed clock for the schemes with a signed timestamp: `verify_at` takes
/// it, so the benchmark never depends on the wall clock.
const NOW: i64 = 1_795_370_591;

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn secrets(secret: &[u8]) -> Vec<NamedSecret> {
    vec![NamedSecret {
        id: Arc::from("current"),
        secret: Secret::new(secret.to_vec()),
    }]
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().expect("header value"));
    }
    h
}

/// One scheme, its headers for a body, and how it verifies.
type Verify = Box<dyn Fn(&HeaderMap, &[u8]) -> bool>;
type Sign = Box<dyn Fn(&[u8]) -> HeaderMap>;

fn schemes() -> Vec<(&'static str, Sign, Verify)> {
    let secret: &'static [u8] = b"bench-secret";
    let ts = NOW.to_string();
    let mut out: Vec<(&'static str, Sign, Verify)> = Vec::new();

    let purple = HmacScheme::purple(secrets(secret));
    out.push((
        "purple",
        Box::new(move |b| headers(&[("x-purple-signature", hex::encode(hmac256(secret, &[b])))])),
        Box::new(move |h, b| purple.verify_at(h, b, NOW).is_ok()),
    ));

    let generic = HmacScheme::new(
        &HmacConfig {
            header: "X-Signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Base64,
            prefix: Some("sha256=".into()),
            timestamp_header: Some("X-Signature-Timestamp".into()),
            tolerance: None,
            secrets: vec![],
        },
        secrets(secret),
    );
    let t = ts.clone();
    out.push((
        "generic_hmac_ts_base64",
        Box::new(move |b| {
            let sig = STANDARD.encode(hmac256(secret, &[t.as_bytes(), b".", b]));
            headers(&[
                ("x-signature", format!("sha256={sig}")),
                ("x-signature-timestamp", t.clone()),
            ])
        }),
        Box::new(move |h, b| generic.verify_at(h, b, NOW).is_ok()),
    ));

    let github = GithubScheme::new(secrets(secret));
    out.push((
        "github",
        Box::new(move |b| {
            headers(&[(
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(hmac256(secret, &[b]))),
            )])
        }),
        Box::new(move |h, b| github.verify_at(h, b, NOW).is_ok()),
    ));

    let shopify = ShopifyScheme::new(secrets(secret));
    out.push((
        "shopify",
        Box::new(move |b| {
            headers(&[(
                "x-shopify-hmac-sha256",
                STANDARD.encode(hmac256(secret, &[b])),
            )])
        }),
        Box::new(move |h, b| shopify.verify_at(h, b, NOW).is_ok()),
    ));

    let stripe = StripeScheme::new(Duration::from_secs(300), secrets(secret));
    let t = ts.clone();
    out.push((
        "stripe",
        Box::new(move |b| {
            let sig = hex::encode(hmac256(secret, &[t.as_bytes(), b".", b]));
            headers(&[("stripe-signature", format!("t={t},v1={sig}"))])
        }),
        Box::new(move |h, b| stripe.verify_at(h, b, NOW).is_ok()),
    ));

    let slack = SlackScheme::new(Duration::from_secs(300), secrets(secret));
    let t = ts.clone();
    out.push((
        "slack",
        Box::new(move |b| {
            let sig = hex::encode(hmac256(secret, &[b"v0:", t.as_bytes(), b":", b]));
            headers(&[
                ("x-slack-signature", format!("v0={sig}")),
                ("x-slack-request-timestamp", t.clone()),
            ])
        }),
        Box::new(move |h, b| slack.verify_at(h, b, NOW).is_ok()),
    ));

    let key = b"standard-webhooks-key-32-bytes!!";
    let whsec = format!("whsec_{}", STANDARD.encode(key));
    let standard = StandardScheme::new(Duration::from_secs(300), secrets(whsec.as_bytes()))
        .expect("whsec secret");
    let t = ts;
    out.push((
        "standard_webhooks",
        Box::new(move |b| {
            let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
            let sig = STANDARD.encode(hmac256(key, &[id.as_bytes(), b".", t.as_bytes(), b".", b]));
            headers(&[
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", format!("v1,{sig}")),
            ])
        }),
        Box::new(move |h, b| standard.verify_at(h, b, NOW).is_ok()),
    ));
    out
}

fn verification(c: &mut Criterion) {
    for (name, sign, verify) in schemes() {
        let mut group = c.benchmark_group(format!("verify_{name}"));
        for len in [1024, 16 * 1024] {
            let b = body(len);
            let h = sign(&b);
            // A benchmark of a failing path would measure nothing useful.
            assert!(
                verify(&h, &b),
                "{name}: the benchmark's own signature does not verify"
            );
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(format!("{}KiB", len / 1024), |bench| {
                bench.iter(|| verify(black_box(&h), black_box(&b)))
            });
        }
        group.finish();
    }
}

fn envelope(c: &mut Criterion) {
    let env = Envelope {
        event_id: "evt_01JD5K3Z9Q".into(),
        source: "purple".into(),
        received_at_micros: 1_763_834_591_123_456,
        body: body(1024),
        headers: vec![Header {
            name: "user-agent".into(),
            value: "Purple-Webhooks/1.0".into(),
        }],
        content_type: Some("application/json".into()),
        client_addr: Some("203.0.113.7".into()),
        verification: Verification {
            scheme: "hmac".into(),
            secret_id: "current".into(),
        },
        ordering_key: Some("venue-017".into()),
        sequence: Some(1042),
        request_id: "01a20d85-9679-7304-b865-31d93285b9da".into(),
    };
    let bytes = env.encode().expect("encodes");
    let mut group = c.benchmark_group("envelope_1KiB");
    group.bench_function("encode", |b| {
        b.iter(|| black_box(&env).encode().expect("encodes"))
    });
    group.bench_function("decode", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

fn normalize(c: &mut Criterion) {
    let body = guest_wifi_body("evt-1", "venue-17", 42, 1024);
    let env = Envelope {
        event_id: "evt-1".into(),
        source: "purple".into(),
        received_at_micros: 1_795_370_591_000_000,
        body,
        headers: vec![],
        content_type: Some("application/json".into()),
        client_addr: Some("127.0.0.1".into()),
        verification: Verification {
            scheme: "hmac".into(),
            secret_id: "current".into(),
        },
        ordering_key: Some("venue-17".into()),
        sequence: Some(42),
        request_id: "req-1".into(),
    };
    let source = SourceConfig {
        parser: ParserKind::GuestWifi,
        event_type: None,
        order_by: Default::default(),
        mapping: None,
        sample: None,
    };
    let bytes = env.encode().expect("encodes");
    assert!(
        parse(&env, Some(&source)).is_ok(),
        "the benchmark event must parse"
    );
    let mut group = c.benchmark_group("normalize_guest_wifi_1KiB");
    group.bench_function("parse", |b| {
        b.iter(|| parse(black_box(&env), Some(&source)).expect("parses"))
    });
    group.bench_function("decode_and_parse", |b| {
        b.iter(|| {
            let env = Envelope::decode(black_box(&bytes)).expect("decodes");
            parse(&env, Some(&source)).expect("parses")
        })
    });
    // What the byte budget adds per record: the walk over the parsed
    // event that sizes its charge.
    let event = parse(&env, Some(&source)).expect("parses");
    group.bench_function("held_bytes", |b| b.iter(|| black_box(&event).held_bytes()));
    group.finish();
}

fn reorder(c: &mut Criterion) {
    const KEYS: u64 = 1_000;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("venue-{k}")).collect();
    let mut group = c.benchmark_group("reorder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_in_order_1000_keys", |b| {
        let mut r: Reorderer<u64> = Reorderer::new(ReorderConfig::new());
        let now = Instant::now();
        let mut n = 0u64;
        b.iter(|| {
            let key = keys[(n % KEYS) as usize].clone();
            let out = r.push(key, Some((n / KEYS) as i64), n, now);
            n += 1;
            black_box(out)
        })
    });
    // Every pair arrives swapped: the first waits, the second releases both.
    group.throughput(Throughput::Elements(2));
    group.bench_function("push_swapped_pairs_1000_keys", |b| {
        let mut r: Reorderer<u64> = Reorderer::new(ReorderConfig::new());
        let now = Instant::now();
        let mut n = 0u64;
        b.iter(|| {
            let key = &keys[(n % KEYS) as usize];
            let seq = 2 * (n / KEYS) as i64;
            let a = r.push(key.clone(), Some(seq + 1), n, now);
            let b2 = r.push(key.clone(), Some(seq), n, now);
            n += 1;
            black_box((a, b2))
        })
    });
    group.finish();
}

fn dedupe(c: &mut Criterion) {
    const STORED: u64 = 100_000;
    const BATCH: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbDedupe::open(dir.path().join("dedupe.redb"), &DedupeConfig::new())
        .expect("dedupe store");
    let ids: Vec<String> = (0..STORED).map(|i| format!("evt-{i:08}")).collect();
    let at = SystemTime::now();
    for chunk in ids.chunks(BATCH) {
        let batch: Vec<DedupeRecord<'_>> = chunk
            .iter()
            .map(|id| DedupeRecord {
                source: "purple",
                event_id: id,
                at,
            })
            .collect();
        store.record(&batch).expect("record");
    }
    let mut group = c.benchmark_group("dedupe_redb_100k_stored");
    group.throughput(Throughput::Elements(1));
    let mut n = 0usize;
    group.bench_function("seen_hit", |b| {
        b.iter(|| {
            n = (n + 7919) % ids.len();
            assert!(store.seen("purple", black_box(&ids[n])).expect("seen"));
        })
    });
    group.bench_function("seen_miss", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("new-{n}");
            assert!(!store.seen("purple", black_box(&id)).expect("seen"));
        })
    });
    // One write transaction per batch, as the pipeline records a batch once
    // its sinks accepted it.
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut next = STORED;
    group.bench_function("record_batch_of_500", |b| {
        b.iter_batched(
            || {
                let ids: Vec<String> = (next..next + BATCH as u64)
                    .map(|i| format!("evt-{i:08}"))
                    .collect();
                next += BATCH as u64;
                ids
            },
            |ids| {
                let batch: Vec<DedupeRecord<'_>> = ids
                    .iter()
                    .map(|id| DedupeRecord {
                        source: "purple",
                        event_id: id,
                        at,
                    })
                    .collect();
                store.record(&batch).expect("record")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn offsets(c: &mut Criterion) {
    let mut group = c.benchmark_group("offsets");
    group.throughput(Throughput::Elements(1));
    // Track one, finish the one 64 behind, in shuffled order within the
    // window, and ask what may be committed: one record's bookkeeping.
    group.bench_function("track_done_committable_window_64", |b| {
        let mut o = PartitionOffsets::new();
        let mut next = 0i64;
        b.iter(|| {
            o.track(next).expect("increasing");
            if next >= 64 {
                // Finish out of order: reverse the low 6 bits.
                let base = next - 64;
                let done = (base & !63) | (63 - (base & 63));
                o.done(done);
            }
            next += 1;
            black_box(o.committable())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    verification,
    envelope,
    normalize,
    reorder,
    dedupe,
    offsets
);
criterion_main!(benches);
