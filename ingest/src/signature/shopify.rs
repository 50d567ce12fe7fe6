//! Shopify: `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(secret, body))`,
//! keyed with the app's client secret.
//!
//! Shopify signs no timestamp. Its delivery id is in `X-Shopify-Webhook-Id`
//! (the same on retries): set `event_id = { header = "X-Shopify-Webhook-Id" }`
//! on the source so retries are de-duplicated.

use axum::http::HeaderMap;

use super::config::SignatureEncoding;
use super::hmac::HmacScheme;
use super::{NamedSecret, Scheme, Verified, VerifyError, now_unix};

/// The `shopify` scheme: a fixed configuration of [`HmacScheme`].
#[derive(Debug)]
pub struct ShopifyScheme {
    /// `X-Shopify-Hmac-Sha256`, no prefix, standard base64.
    inner: HmacScheme,
}

impl ShopifyScheme {
    /// Builds the scheme with its secrets (tried in order).
    pub fn new(secrets: Vec<NamedSecret>) -> Self {
        ShopifyScheme {
            inner: HmacScheme::preset(
                "X-Shopify-Hmac-Sha256",
                SignatureEncoding::Base64,
                None,
                secrets,
            ),
        }
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds (unused:
    /// Shopify signs no timestamp; kept so every scheme tests alike).
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        self.inner
            .verify_at(headers, body, now_unix)
            .map(|v| Verified {
                scheme: self.name(),
                ..v
            })
    }
}

impl Scheme for ShopifyScheme {
    fn name(&self) -> &'static str {
        "shopify"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::test_support::{code, headers, secrets};

    // Shopify's documentation describes the scheme but publishes no complete
    // secret/body/signature example, so this vector was computed
    // independently with Python's hmac module, not with this code:
    //   base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest())
    const SECRET: &str = "shpss_example_secret";
    const BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    const SIGNATURE: &str = "35DGSCsYGhssCXikM1rFvRtvLrHjZ3LG9BTZ5lYDs7g=";
    const NOW: i64 = 1_700_000_000;

    fn sig(value: &str) -> HeaderMap {
        headers(&[("x-shopify-hmac-sha256", value)])
    }

    #[test]
    fn accepts_an_independently_computed_vector() {
        let s = ShopifyScheme::new(secrets(&[("a", SECRET)]));
        let v = s.verify_at(&sig(SIGNATURE), BODY, NOW).unwrap();
        assert_eq!((v.scheme, &*v.secret_id), ("shopify", "a"));
        assert!(s.verify(&sig(SIGNATURE), BODY).is_ok());
    }

    #[test]
    fn rotation() {
        let s = ShopifyScheme::new(secrets(&[("new", "not it"), ("old", SECRET)]));
        assert_eq!(
            &*s.verify_at(&sig(SIGNATURE), BODY, NOW).unwrap().secret_id,
            "old"
        );
        let removed = ShopifyScheme::new(secrets(&[("new", "not it")]));
        assert_eq!(
            removed.verify_at(&sig(SIGNATURE), BODY, NOW),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn negative_cases() {
        let s = ShopifyScheme::new(secrets(&[("a", SECRET)]));
        let check = |h: &HeaderMap, body: &[u8]| code(s.verify_at(h, body, NOW));
        let tampered_body = br#"{"id":820982911946154509,"email":"jon@example.com"}"#;
        assert_eq!(check(&sig(SIGNATURE), tampered_body), "signature_invalid");
        let flipped = SIGNATURE.replacen('3', "4", 1);
        assert_eq!(check(&sig(&flipped), BODY), "signature_invalid");
        assert_eq!(check(&HeaderMap::new(), BODY), "signature_missing");
        let hex = hex::encode([0u8; 32]);
        let huge = "A".repeat(5000);
        for bad in [
            "",
            "not base64!",
            "35DGSCsYGhss",
            hex.as_str(),
            huge.as_str(),
        ] {
            assert_eq!(check(&sig(bad), BODY), "signature_malformed", "{bad:?}");
        }
    }
}
