//! Generic HMAC over the raw body: `header: [prefix]encode(HMAC(secret, body))`.
//! The guest-WiFi platform's `X-Purple-Signature` (hex HMAC-SHA256, no
//! prefix) is one configuration of it.

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use super::{NamedSecret, Scheme, Verified, VerifyError};
use crate::config::{HmacAlgorithm, HmacConfig, SignatureEncoding};

/// Longest header value looked at; anything longer is malformed.
const MAX_HEADER_LEN: usize = 1024;

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
    /// Accepted secrets, tried in order.
    secrets: Vec<NamedSecret>,
}

impl HmacScheme {
    /// Builds the scheme; the header name was validated at config load.
    pub fn new(config: &HmacConfig, secrets: Vec<NamedSecret>) -> Self {
        let header = HeaderName::try_from(config.header.as_str())
            .unwrap_or_else(|_| HeaderName::from_static("x-signature"));
        HmacScheme {
            header,
            // Leaked once per configured source at start-up: a handful of
            // bytes that live as long as the process anyway.
            header_label: Box::leak(config.header.clone().into_boxed_str()),
            algorithm: config.algorithm,
            encoding: config.encoding,
            prefix: config.prefix.clone().filter(|p| !p.is_empty()),
            secrets,
        }
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

    /// Constant-time check of `expected` against HMAC(secret, body).
    fn matches(&self, secret: &[u8], body: &[u8], expected: &[u8]) -> bool {
        match self.algorithm {
            HmacAlgorithm::Sha256 => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(body);
                mac.verify_slice(expected).is_ok()
            }
            HmacAlgorithm::Sha512 => {
                let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(body);
                mac.verify_slice(expected).is_ok()
            }
        }
    }
}

impl Scheme for HmacScheme {
    fn name(&self) -> &'static str {
        "hmac"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
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
        for secret in &self.secrets {
            for expected in &candidates {
                if self.matches(secret.secret.expose(), body, expected) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::sync::Arc;

    fn purple(secrets: &[(&str, &str)]) -> HmacScheme {
        HmacScheme::new(
            &HmacConfig {
                header: "X-Purple-Signature".into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SignatureEncoding::Hex,
                prefix: None,
                secrets: vec![],
            },
            secrets
                .iter()
                .map(|(id, v)| NamedSecret {
                    id: Arc::from(*id),
                    secret: Secret::new(v.as_bytes().to_vec()),
                })
                .collect(),
        )
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
}
