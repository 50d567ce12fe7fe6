//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, each `v1` an
//! HMAC-SHA256 of `{t}.{body}` keyed with the endpoint's signing secret
//! (`whsec_...`, used as-is: Stripe does not decode it). Any `v1` may match;
//! other keys (`v0`, test-mode signatures) are ignored. The timestamp must
//! be within the source's tolerance.
//!
//! Stripe's event id is the body's `id` (`evt_...`), which the default
//! `event_id` pointer `/id` already takes.

use std::time::Duration;

use axum::http::HeaderMap;

use super::{
    MAX_CANDIDATES, NamedSecret, Scheme, Verified, VerifyError, check_tolerance,
    find_sha256_signer, now_unix, parse_timestamp, single_value,
};

const HEADER: &str = "stripe-signature";
const LABEL: &str = "Stripe-Signature";

/// The `stripe` scheme.
#[derive(Debug)]
pub struct StripeScheme {
    /// Accepted distance between `t` and now, either way.
    tolerance: Duration,
    /// Accepted signing secrets, tried in order.
    secrets: Vec<NamedSecret>,
}

/// What `Stripe-Signature` carries.
struct Parsed<'h> {
    /// `t` exactly as sent (it is signed as text).
    timestamp_text: &'h str,
    /// `t` as Unix seconds.
    timestamp: i64,
    /// Every `v1` signature, decoded.
    signatures: Vec<Vec<u8>>,
}

fn malformed(why: &'static str) -> VerifyError {
    VerifyError::Malformed { header: LABEL, why }
}

fn parse(text: &str) -> Result<Parsed<'_>, VerifyError> {
    let mut timestamp_text = None;
    let mut signatures = Vec::new();
    for item in text.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| malformed("an element is not key=value"))?;
        match key.trim() {
            "t" if timestamp_text.is_some() => return Err(malformed("more than one t=")),
            "t" => timestamp_text = Some(value.trim()),
            "v1" => {
                if signatures.len() == MAX_CANDIDATES {
                    return Err(malformed("more than 16 v1 signatures"));
                }
                let bytes =
                    hex::decode(value.trim()).map_err(|_| malformed("v1 is not hexadecimal"))?;
                if bytes.len() != 32 {
                    return Err(malformed("v1 is not a SHA-256 digest"));
                }
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp_text.ok_or_else(|| malformed("no t= timestamp"))?;
    let timestamp = parse_timestamp(timestamp_text, LABEL)?;
    if signatures.is_empty() {
        return Err(malformed("no v1 signature"));
    }
    Ok(Parsed {
        timestamp_text,
        timestamp,
        signatures,
    })
}

impl StripeScheme {
    /// Builds the scheme with its tolerance and secrets.
    pub fn new(tolerance: Duration, secrets: Vec<NamedSecret>) -> Self {
        StripeScheme { tolerance, secrets }
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let p = parse(single_value(headers, HEADER, LABEL)?)?;
        let parts: [&[u8]; 3] = [p.timestamp_text.as_bytes(), b".", body];
        let secret_id = find_sha256_signer(&self.secrets, &parts, &p.signatures)
            .ok_or(VerifyError::Mismatch)?;
        check_tolerance(p.timestamp, now_unix, self.tolerance, LABEL)?;
        Ok(Verified {
            scheme: self.name(),
            secret_id,
        })
    }
}

impl Scheme for StripeScheme {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::test_support::{code, headers, secrets};

    // Stripe's documentation shows the header's shape but publishes no
    // complete secret/body/signature example, so these vectors were computed
    // independently with Python's hmac module, not with this code:
    //   hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    const SECRET: &str = "whsec_test_secret";
    const OTHER_SECRET: &str = "whsec_next_secret";
    const BODY: &[u8] = br#"{"id": "evt_test_webhook", "object": "event"}"#;
    const T: i64 = 1_700_000_000;
    const V1: &str = "aafb6f8becb4b5db5da0da34d6fb419de5f0866d738651a835f821a8a96cf1f3";
    const V1_OTHER: &str = "38006600e64c6a520f009692e38c22b1ac9c1eb9644b1c21907fe29f02fca9b3";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn sig(value: &str) -> HeaderMap {
        headers(&[("stripe-signature", value)])
    }

    fn scheme(pairs: &[(&str, &str)]) -> StripeScheme {
        StripeScheme::new(FIVE_MIN, secrets(pairs))
    }

    #[test]
    fn accepts_an_independently_computed_vector() {
        let s = scheme(&[("a", SECRET)]);
        let h = sig(&format!("t=1700000000,v1={V1}"));
        let v = s.verify_at(&h, BODY, T).unwrap();
        assert_eq!((v.scheme, &*v.secret_id), ("stripe", "a"));
        // v0 and unknown keys are ignored; any v1 may match; spaces allowed.
        let h = sig(&format!(
            "t=1700000000, v1={V1_OTHER}, v1={V1}, v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39, x=y"
        ));
        assert!(s.verify_at(&h, BODY, T).is_ok());
    }

    #[test]
    fn rotation() {
        // Stripe sends one v1 per active secret while a secret is rolled.
        let both = sig(&format!("t=1700000000,v1={V1_OTHER},v1={V1}"));
        let s = scheme(&[("next", OTHER_SECRET), ("current", SECRET)]);
        assert_eq!(&*s.verify_at(&both, BODY, T).unwrap().secret_id, "next");
        let old_only = sig(&format!("t=1700000000,v1={V1}"));
        assert_eq!(
            &*s.verify_at(&old_only, BODY, T).unwrap().secret_id,
            "current"
        );
        let removed = scheme(&[("next", OTHER_SECRET)]);
        assert_eq!(
            removed.verify_at(&old_only, BODY, T),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn tolerance() {
        let s = scheme(&[("a", SECRET)]);
        let h = sig(&format!("t=1700000000,v1={V1}"));
        assert!(s.verify_at(&h, BODY, T + 300).is_ok());
        assert!(s.verify_at(&h, BODY, T - 300).is_ok());
        assert_eq!(
            code(s.verify_at(&h, BODY, T + 301)),
            "timestamp_out_of_tolerance"
        );
        assert_eq!(
            code(s.verify_at(&h, BODY, T - 301)),
            "timestamp_out_of_tolerance"
        );
        // A wider tolerance accepts the same request later.
        let wide = StripeScheme::new(Duration::from_secs(3600), secrets(&[("a", SECRET)]));
        assert!(wide.verify_at(&h, BODY, T + 3000).is_ok());
    }

    #[test]
    fn negative_cases() {
        let s = scheme(&[("a", SECRET)]);
        let check = |h: &HeaderMap, body: &[u8]| code(s.verify_at(h, body, T));
        let good = format!("t=1700000000,v1={V1}");
        assert_eq!(
            check(
                &sig(&good),
                br#"{"id": "evt_test_webhook", "object": "Event"}"#
            ),
            "signature_invalid"
        );
        // Moving the timestamp breaks the signature.
        assert_eq!(
            check(&sig(&format!("t=1700000001,v1={V1}")), BODY),
            "signature_invalid"
        );
        assert_eq!(
            check(&sig(&format!("t=1700000000,v1={V1_OTHER}")), BODY),
            "signature_invalid"
        );
        assert_eq!(check(&HeaderMap::new(), BODY), "signature_missing");
        let too_many = format!("t=1700000000{}", format!(",v1={V1_OTHER}").repeat(17));
        let huge = format!("t=1700000000,v1={V1},x={}", "a".repeat(5000));
        for bad in [
            String::new(),
            format!("v1={V1}"),
            "t=1700000000".to_string(),
            format!("t=1700000000,v0={V1}"),
            format!("t=soon,v1={V1}"),
            format!("t=1700000000,t=1700000000,v1={V1}"),
            format!("t=1700000000,v1={V1},garbage"),
            "t=1700000000,v1=nothex".to_string(),
            "t=1700000000,v1=abcd".to_string(),
            too_many,
            huge,
        ] {
            assert_eq!(check(&sig(&bad), BODY), "signature_malformed", "{bad:?}");
        }
        let twice = headers(&[("stripe-signature", &good), ("stripe-signature", &good)]);
        assert_eq!(check(&twice, BODY), "signature_malformed");
    }
}
