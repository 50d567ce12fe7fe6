//! Micro-benchmarks of ingest's per-request CPU work.

use std::hint::black_box;
use std::sync::Arc;

use axum::http::HeaderMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use ingest::config::{HmacAlgorithm, HmacConfig, SignatureEncoding};
use ingest::secret::Secret;
use ingest::signature::hmac::HmacScheme;
use ingest::signature::{NamedSecret, Scheme};
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

fn verification(c: &mut Criterion) {
    let secret = b"bench-secret".to_vec();
    let scheme = HmacScheme::new(
        &HmacConfig {
            header: "X-Purple-Signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: None,
            timestamp_header: None,
            tolerance: None,
            secrets: vec![],
        },
        vec![NamedSecret {
            id: Arc::from("current"),
            secret: Secret::new(secret.clone()),
        }],
    );
    let mut group = c.benchmark_group("verify_purple_hmac_sha256");
    for len in [1024, 16 * 1024] {
        let b = body(len);
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("key");
        mac.update(&b);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-purple-signature",
            hex::encode(mac.finalize().into_bytes())
                .parse()
                .expect("header"),
        );
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{}KiB", len / 1024), |bench| {
            bench.iter(|| {
                scheme
                    .verify(black_box(&headers), black_box(&b))
                    .expect("verifies")
            })
        });
    }
    group.finish();
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

criterion_group!(benches, verification, envelope);
criterion_main!(benches);
