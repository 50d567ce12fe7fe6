#![no_main]
//! The generic `hmac` scheme on hostile headers and bodies, in two
//! configurations (SHA-512 base64 with a prefix and a signed timestamp;
//! SHA-256 hex without): never a panic, nothing unsigned verifies, and a
//! body signed the way the scheme expects always verifies, whatever bytes
//! it holds.

use hmac::{Hmac, Mac};
use ingest::signature::config::{HmacAlgorithm, HmacConfig, SignatureEncoding};
use ingest::signature::hmac::HmacScheme;
use libfuzzer_sys::fuzz_target;
use pipeline_fuzz::{NOW, request, secrets};
use sha2::Sha256;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let timed = pick & 1 == 1;
    #[allow(clippy::items_after_statements)]
    fn config_for(timed: bool) -> HmacConfig {
        HmacConfig {
            header: "X-Signature".into(),
            algorithm: if timed {
                HmacAlgorithm::Sha512
            } else {
                HmacAlgorithm::Sha256
            },
            encoding: if timed {
                SignatureEncoding::Base64
            } else {
                SignatureEncoding::Hex
            },
            prefix: timed.then(|| "sha512=".into()),
            timestamp_header: timed.then(|| "X-Signature-Timestamp".into()),
            tolerance: None,
            secrets: vec![],
        }
    }
    // Built once: a scheme leaks its header labels by design (once per
    // configured source at start-up), which LeakSanitizer would report.
    static SCHEMES: OnceLock<[HmacScheme; 2]> = OnceLock::new();
    let schemes = SCHEMES.get_or_init(|| {
        [false, true].map(|timed| {
            HmacScheme::new(&config_for(timed), secrets(&["fuzz-secret", "old-secret"]))
        })
    });
    let scheme = &schemes[usize::from(timed)];
    let (headers, body) = request(data, &["x-signature", "x-signature-timestamp"]);
    let verdict = scheme.verify_at(&headers, body, NOW);
    assert!(
        verdict.is_err(),
        "an unsigned request verified: {verdict:?}"
    );

    if !timed {
        // The oracle: the right signature over these exact bytes verifies.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"old-secret").unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let mut signed = http::HeaderMap::new();
        signed.insert("x-signature", sig.parse().unwrap());
        let ok = scheme
            .verify_at(&signed, body, NOW)
            .expect("a signed body verifies");
        assert_eq!(&*ok.secret_id, "s1");
    }
});
