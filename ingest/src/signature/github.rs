//! GitHub: `X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))`.
//!
//! GitHub signs no timestamp, so there is no replay window to enforce; a
//! replayed delivery keeps its `X-GitHub-Delivery` id and is dropped by the
//! processors' de-duplication when the source takes its event id from that
//! header (`event_id = { header = "X-GitHub-Delivery" }`). The legacy SHA-1
//! `X-Hub-Signature` header is ignored.

use axum::http::HeaderMap;

use super::config::SignatureEncoding;
use super::hmac::HmacScheme;
use super::{NamedSecret, Scheme, Verified, VerifyError, now_unix};

/// The `github` scheme: a fixed configuration of [`HmacScheme`].
#[derive(Debug)]
pub struct GithubScheme {
    /// `X-Hub-Signature-256`, `sha256=` prefix, hex.
    inner: HmacScheme,
}

impl GithubScheme {
    /// Builds the scheme with its secrets (tried in order).
    pub fn new(secrets: Vec<NamedSecret>) -> Self {
        GithubScheme {
            inner: HmacScheme::preset(
                "X-Hub-Signature-256",
                SignatureEncoding::Hex,
                Some("sha256="),
                secrets,
            ),
        }
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds (unused:
    /// GitHub signs no timestamp; kept so every scheme tests alike).
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

impl Scheme for GithubScheme {
    fn name(&self) -> &'static str {
        "github"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::test_support::{code, headers, secrets};

    // Published by GitHub, "Validating webhook deliveries", section
    // "Testing the webhook payload validation":
    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    const SECRET: &str = "It's a Secret to Everybody";
    const PAYLOAD: &[u8] = b"Hello, World!";
    const HEADER: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const NOW: i64 = 1_700_000_000;

    fn sig(value: &str) -> HeaderMap {
        headers(&[("x-hub-signature-256", value)])
    }

    #[test]
    fn accepts_githubs_published_vector() {
        let s = GithubScheme::new(secrets(&[("a", SECRET)]));
        let v = s.verify_at(&sig(HEADER), PAYLOAD, NOW).unwrap();
        assert_eq!(v.scheme, "github");
        assert_eq!(&*v.secret_id, "a");
        // Header names are case-insensitive; through the public entry too.
        assert!(s.verify(&sig(HEADER), PAYLOAD).is_ok());
    }

    #[test]
    fn rotation() {
        let s = GithubScheme::new(secrets(&[("new", "not it"), ("old", SECRET)]));
        assert_eq!(
            &*s.verify_at(&sig(HEADER), PAYLOAD, NOW).unwrap().secret_id,
            "old"
        );
        let removed = GithubScheme::new(secrets(&[("new", "not it")]));
        assert_eq!(
            removed.verify_at(&sig(HEADER), PAYLOAD, NOW),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn negative_cases() {
        let s = GithubScheme::new(secrets(&[("a", SECRET)]));
        let check = |h: &HeaderMap, body: &[u8]| code(s.verify_at(h, body, NOW));
        assert_eq!(check(&sig(HEADER), b"Hello, World?"), "signature_invalid");
        let flipped = HEADER.replace("sha256=7", "sha256=8");
        assert_eq!(check(&sig(&flipped), PAYLOAD), "signature_invalid");
        assert_eq!(check(&HeaderMap::new(), PAYLOAD), "signature_missing");
        // The legacy SHA-1 header alone is not enough.
        let legacy = headers(&[("x-hub-signature", "sha1=0123")]);
        assert_eq!(check(&legacy, PAYLOAD), "signature_missing");
        let bare = HEADER.trim_start_matches("sha256=");
        let huge = format!("sha256={}", "a".repeat(5000));
        for bad in [
            "",
            bare,
            "sha256=",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea",
            huge.as_str(),
        ] {
            assert_eq!(check(&sig(bad), PAYLOAD), "signature_malformed", "{bad:?}");
        }
    }
}
