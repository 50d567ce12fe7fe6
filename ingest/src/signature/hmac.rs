//! Generic HMAC over the raw body: `header: [prefix]encode(HMAC(secret, body))`.
//! The guest-WiFi platform's `X-Purple-Signature` (hex HMAC-SHA256, no
//! prefix) is one configuration of it; [`super::github`] and
//! [`super::shopify`] are two more.
//!
//! With `timestamp_header` set, the sender signs `{timestamp}.{body}` (the
//! timestamp exactly as sent in that header, Unix seconds) and a timestamp
//! further than `tolerance` from now is refused.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use super::config::{DEFAULT_TOLERANCE, HmacAlgorithm, HmacConfig, SignatureEncoding};
use super::{
    MAX_CANDIDATES, NamedSecret, Scheme, Verified, VerifyError, check_tolerance, leak_label,
    now_unix, parse_timestamp, single_value,
};

/// Longest header value looked at; anything longer is malformed.
const MAX_HEADER_LEN: usize = 1024;

/// A signed timestamp header and how far from now it may be.
#[derive(Debug)]
struct TimestampRule {
    /// Header carrying the timestamp (validated at config load).
    header: HeaderName,
    /// The header's name as configured, for error messages.
    label: &'static str,
    /// Accepted distance from now, either way.
    tolerance: Duration,
}

/// A configured HMAC scheme.
#[derive(Debug)]
pub struct HmacScheme {
    /// Header carrying the signature (validated at config load).
    header: HeaderName,
    /// The header's name as configured, for error messages.
    header_label: &'static str,
    /// Hash function.
    algorithm: HmacAlgorithm,
    /// Text encoding of the signature bytes.
    encoding: SignatureEncoding,
    /// Expected text before the signature, if any.
    prefix: Option<String>,
    /// The signed timestamp, when the sender signs one.
    timestamp: Option<TimestampRule>,
    /// Accepted secrets, tried in order.
    secrets: Vec<NamedSecret>,
}

impl HmacScheme {
    /// Builds the scheme; the header names were validated at config load.
    pub fn new(config: &HmacConfig, secrets: Vec<NamedSecret>) -> Self {
        let header = HeaderName::try_from(config.header.as_str())
            .unwrap_or_else(|_| HeaderName::from_static("x-signature"));
        let timestamp = config.timestamp_header.as_ref().map(|name| TimestampRule {
            header: HeaderName::try_from(name.as_str())
                .unwrap_or_else(|_| HeaderName::from_static("x-signature-timestamp")),
            label: leak_label(name),
            tolerance: config.tolerance.unwrap_or(DEFAULT_TOLERANCE),
        });
        HmacScheme {
            header,
            header_label: leak_label(&config.header),
            algorithm: config.algorithm,
            encoding: config.encoding,
            prefix: config.prefix.clone().filter(|p| !p.is_empty()),
            timestamp,
            secrets,
        }
    }

    /// The guest-WiFi platform: `X-Purple-Signature: hex(HMAC-SHA256(secret,
    /// body))`.
    pub fn purple(secrets: Vec<NamedSecret>) -> Self {
        Self::preset("X-Purple-Signature", SignatureEncoding::Hex, None, secrets)
    }

    /// A fixed HMAC-SHA256 configuration without timestamp, for presets.
    pub(crate) fn preset(
        header: &str,
        encoding: SignatureEncoding,
        prefix: Option<&str>,
        secrets: Vec<NamedSecret>,
    ) -> Self {
        Self::new(
            &HmacConfig {
                header: header.into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding,
                prefix: prefix.map(str::to_owned),
                timestamp_header: None,
                tolerance: None,
                secrets: Vec::new(),
            },
            secrets,
        )
    }

    fn digest_len(&self) -> usize {
        match self.algorithm {
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha512 => 64,
        }
    }

    fn decode(&self, text: &str) -> Result<Vec<u8>, VerifyError> {
        let malformed = |why| VerifyError::Malformed {
            header: self.header_label,
            why,
        };
        let bytes = match self.encoding {
            SignatureEncoding::Hex => {
                hex::decode(text).map_err(|_| malformed("not hexadecimal"))?
            }
            SignatureEncoding::Base64 => {
                STANDARD.decode(text).map_err(|_| malformed("not base64"))?
            }
        };
        if bytes.len() != self.digest_len() {
            return Err(malformed("wrong length for the digest"));
        }
        Ok(bytes)
    }

    /// Constant-time check of `expected` against HMAC(secret, parts).
    fn matches(&self, secret: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
        match self.algorithm {
            HmacAlgorithm::Sha256 => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                for p in parts {
                    mac.update(p);
                }
                mac.verify_slice(expected).is_ok()
            }
            HmacAlgorithm::Sha512 => {
                let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(secret) else {
                    return false;
                };
                for p in parts {
                    mac.update(p);
                }
                mac.verify_slice(expected).is_ok()
            }
        }
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let malformed = |why| VerifyError::Malformed {
            header: self.header_label,
            why,
        };
        let mut values = headers.get_all(&self.header).iter().peekable();
        if values.peek().is_none() {
            return Err(VerifyError::Missing(self.header_label));
        }
        // Several values (a repeated header) are each tried: a sender that
        // signs with two secrets during a rotation may send both.
        let mut candidates = Vec::new();
        for v in values {
            if candidates.len() == MAX_CANDIDATES {
                return Err(malformed("more than 16 signatures"));
            }
            if v.len() > MAX_HEADER_LEN {
                return Err(malformed("longer than 1024 bytes"));
            }
            let text = v.to_str().map_err(|_| malformed("not ASCII"))?.trim();
            if text.is_empty() {
                return Err(malformed("empty"));
            }
            let text = match &self.prefix {
                Some(p) => text
                    .strip_prefix(p.as_str())
                    .ok_or_else(|| malformed("missing the expected prefix"))?,
                None => text,
            };
            candidates.push(self.decode(text)?);
        }
        // With a timestamp, the signed content is `{timestamp}.{body}`.
        let signed_at = match &self.timestamp {
            Some(rule) => {
                let text = single_value(headers, &rule.header, rule.label)?;
                Some((text, parse_timestamp(text, rule.label)?, rule))
            }
            None => None,
        };
        let parts: Vec<&[u8]> = match &signed_at {
            Some((text, _, _)) => vec![text.as_bytes(), b".", body],
            None => vec![body],
        };
        for secret in &self.secrets {
            for expected in &candidates {
                if self.matches(secret.secret.expose(), &parts, expected) {
                    if let Some((_, ts, rule)) = signed_at {
                        check_tolerance(ts, now_unix, rule.tolerance, rule.label)?;
                    }
                    return Ok(Verified {
                        scheme: self.name(),
                        secret_id: secret.id.clone(),
                    });
                }
            }
        }
        Err(VerifyError::Mismatch)
    }
}

impl Scheme for HmacScheme {
    fn name(&self) -> &'static str {
        "hmac"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::signature::test_support;
    use std::sync::Arc;

    fn purple(secrets: &[(&str, &str)]) -> HmacScheme {
        HmacScheme::purple(test_support::secrets(secrets))
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::try_from(name).unwrap(), value.parse().unwrap());
        h
    }

    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    const RFC4231_SHA256: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    const RFC4231_SHA512: &str = "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737";
    const RFC4231_DATA: &[u8] = b"what do ya want for nothing?";

    #[test]
    fn accepts_the_rfc4231_vector() {
        let s = purple(&[("current", "Jefe")]);
        let v = s
            .verify(&headers("x-purple-signature", RFC4231_SHA256), RFC4231_DATA)
            .unwrap();
        assert_eq!(&*v.secret_id, "current");
        // Upper-case hex is the same signature.
        let upper = RFC4231_SHA256.to_uppercase();
        assert!(
            s.verify(&headers("x-purple-signature", &upper), RFC4231_DATA)
                .is_ok()
        );
    }

    #[test]
    fn sha512_with_prefix_and_base64() {
        let hex512 = hex::decode(RFC4231_SHA512).unwrap();
        let b64 = STANDARD.encode(&hex512);
        let s = HmacScheme::new(
            &HmacConfig {
                header: "X-Sig".into(),
                algorithm: HmacAlgorithm::Sha512,
                encoding: SignatureEncoding::Base64,
                prefix: Some("sha512=".into()),
                timestamp_header: None,
                tolerance: None,
                secrets: vec![],
            },
            vec![NamedSecret {
                id: Arc::from("k"),
                secret: Secret::new(b"Jefe".to_vec()),
            }],
        );
        let ok = format!("sha512={b64}");
        assert!(s.verify(&headers("x-sig", &ok), RFC4231_DATA).is_ok());
        assert_eq!(
            s.verify(&headers("x-sig", &b64), RFC4231_DATA)
                .unwrap_err()
                .code(),
            "signature_malformed"
        );
    }

    #[test]
    fn rotation_reports_which_secret_matched() {
        let s = purple(&[("new", "other"), ("old", "Jefe")]);
        let v = s
            .verify(&headers("x-purple-signature", RFC4231_SHA256), RFC4231_DATA)
            .unwrap();
        assert_eq!(&*v.secret_id, "old");
        let removed = purple(&[("new", "other")]);
        assert_eq!(
            removed.verify(&headers("x-purple-signature", RFC4231_SHA256), RFC4231_DATA),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn negative_cases_have_distinct_codes() {
        let s = purple(&[("current", "Jefe")]);
        let code = |h: &HeaderMap, body: &[u8]| s.verify(h, body).unwrap_err().code();
        assert_eq!(code(&HeaderMap::new(), RFC4231_DATA), "signature_missing");
        assert_eq!(
            code(&headers("x-purple-signature", ""), RFC4231_DATA),
            "signature_malformed"
        );
        assert_eq!(
            code(&headers("x-purple-signature", "zz"), RFC4231_DATA),
            "signature_malformed"
        );
        assert_eq!(
            code(&headers("x-purple-signature", "abcd"), RFC4231_DATA),
            "signature_malformed"
        );
        let huge = "a".repeat(4096);
        assert_eq!(
            code(&headers("x-purple-signature", &huge), RFC4231_DATA),
            "signature_malformed"
        );
        // Tampered body, tampered signature.
        assert_eq!(
            code(
                &headers("x-purple-signature", RFC4231_SHA256),
                b"what do ya want for nothing!"
            ),
            "signature_invalid"
        );
        let mut flipped = RFC4231_SHA256.to_string();
        flipped.replace_range(0..1, "6");
        assert_eq!(
            code(&headers("x-purple-signature", &flipped), RFC4231_DATA),
            "signature_invalid"
        );
    }

    #[test]
    fn purple_reports_the_hmac_scheme() {
        let v = purple(&[("current", "Jefe")])
            .verify(&headers("x-purple-signature", RFC4231_SHA256), RFC4231_DATA)
            .unwrap();
        assert_eq!(v.scheme, "hmac");
    }

    #[test]
    fn too_many_repeated_signatures_are_malformed() {
        let s = purple(&[("current", "Jefe")]);
        let mut h = HeaderMap::new();
        for _ in 0..=MAX_CANDIDATES {
            h.append("x-purple-signature", RFC4231_SHA256.parse().unwrap());
        }
        assert_eq!(
            s.verify(&h, RFC4231_DATA).unwrap_err().code(),
            "signature_malformed"
        );
    }

    // HMAC-SHA256("Jefe", "1700000000.what do ya want for nothing?"),
    // computed independently with Python's hmac module:
    //   hmac.new(b"Jefe", b"1700000000." + data, hashlib.sha256).hexdigest()
    const TS: i64 = 1_700_000_000;
    const TS_SIGNED: &str = "1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e";

    fn timed(secrets: &[(&str, &str)]) -> HmacScheme {
        HmacScheme::new(
            &HmacConfig {
                header: "X-Sig".into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SignatureEncoding::Hex,
                prefix: None,
                timestamp_header: Some("X-Sig-Timestamp".into()),
                tolerance: Some(Duration::from_secs(300)),
                secrets: vec![],
            },
            test_support::secrets(secrets),
        )
    }

    fn timed_headers(sig: &str, ts: &str) -> HeaderMap {
        test_support::headers(&[("x-sig", sig), ("x-sig-timestamp", ts)])
    }

    #[test]
    fn timestamp_is_signed_and_within_tolerance() {
        let s = timed(&[("k", "Jefe")]);
        let h = timed_headers(TS_SIGNED, "1700000000");
        let v = s.verify_at(&h, RFC4231_DATA, TS + 300).unwrap();
        assert_eq!((v.scheme, &*v.secret_id), ("hmac", "k"));
        assert!(s.verify_at(&h, RFC4231_DATA, TS - 300).is_ok());
        // Stale and future.
        for now in [TS + 301, TS - 301] {
            assert_eq!(
                test_support::code(s.verify_at(&h, RFC4231_DATA, now)),
                "timestamp_out_of_tolerance"
            );
        }
        // The body-only signature does not verify once a timestamp is signed.
        let body_only = timed_headers(RFC4231_SHA256, "1700000000");
        assert_eq!(
            s.verify_at(&body_only, RFC4231_DATA, TS),
            Err(VerifyError::Mismatch)
        );
        // A tampered timestamp no longer matches.
        let moved = timed_headers(TS_SIGNED, "1700000001");
        assert_eq!(
            s.verify_at(&moved, RFC4231_DATA, TS),
            Err(VerifyError::Mismatch)
        );
        // Tampered body.
        assert_eq!(
            s.verify_at(&h, b"what do ya want for nothing!", TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn timestamp_header_problems() {
        let s = timed(&[("k", "Jefe")]);
        let only_sig = test_support::headers(&[("x-sig", TS_SIGNED)]);
        assert_eq!(
            s.verify_at(&only_sig, RFC4231_DATA, TS),
            Err(VerifyError::Missing("X-Sig-Timestamp"))
        );
        for bad in ["soon", "-1", "1700000000.5", ""] {
            assert_eq!(
                test_support::code(s.verify_at(&timed_headers(TS_SIGNED, bad), RFC4231_DATA, TS)),
                "signature_malformed",
                "{bad:?}"
            );
        }
        let huge = "1".repeat(5000);
        assert_eq!(
            test_support::code(s.verify_at(&timed_headers(TS_SIGNED, &huge), RFC4231_DATA, TS)),
            "signature_malformed"
        );
    }

    #[test]
    fn timestamp_rotation() {
        let s = timed(&[("new", "other"), ("old", "Jefe")]);
        let h = timed_headers(TS_SIGNED, "1700000000");
        assert_eq!(
            &*s.verify_at(&h, RFC4231_DATA, TS).unwrap().secret_id,
            "old"
        );
        let removed = timed(&[("new", "other")]);
        assert_eq!(
            removed.verify_at(&h, RFC4231_DATA, TS),
            Err(VerifyError::Mismatch)
        );
    }
}
