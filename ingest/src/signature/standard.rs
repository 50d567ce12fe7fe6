//! Standard Webhooks (<https://www.standardwebhooks.com>), what Svix sends:
//! headers `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64> [v1,<base64> ...]` (space separated; other versions, such as
//! the asymmetric `v1a`, are ignored). Each `v1` is the HMAC-SHA256 of
//! `{id}.{timestamp}.{body}`. Svix's own `svix-id`, `svix-timestamp` and
//! `svix-signature` names are accepted when the `webhook-` one is absent.
//!
//! Secrets are configured as `whsec_<base64>`; the key is the decoded part
//! after the prefix. A secret in any other form is refused when the scheme
//! is built, naming the secret's id (never its value).
//!
//! The message id is the same on every retry: take it as the event id with
//! `event_id = { header = "webhook-id" }` (or `svix-id`).

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{
    BuildError, MAX_CANDIDATES, NamedSecret, Scheme, Verified, VerifyError, check_tolerance,
    find_sha256_signer, now_unix, parse_timestamp, single_value,
};
use crate::secret::Secret;

/// Each header: (standard name, Svix fallback, label for errors).
const ID: (&str, &str, &str) = ("webhook-id", "svix-id", "webhook-id");
const TIMESTAMP: (&str, &str, &str) = ("webhook-timestamp", "svix-timestamp", "webhook-timestamp");
const SIGNATURE: (&str, &str, &str) = ("webhook-signature", "svix-signature", "webhook-signature");
/// Prefix of every Standard Webhooks secret.
const SECRET_PREFIX: &[u8] = b"whsec_";

/// The `standard` scheme.
#[derive(Debug)]
pub struct StandardScheme {
    /// Accepted distance between `webhook-timestamp` and now.
    tolerance: Duration,
    /// Accepted secrets, already base64-decoded to their key bytes.
    secrets: Vec<NamedSecret>,
}

/// The HMAC key of a `whsec_<base64>` secret.
fn decode_secret(s: &NamedSecret) -> Result<NamedSecret, BuildError> {
    let invalid = |why| BuildError::InvalidSecret {
        id: s.id.to_string(),
        why,
    };
    let encoded = s
        .secret
        .expose()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| invalid("a Standard Webhooks secret must start with whsec_"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| invalid("the part after whsec_ is not valid base64"))?;
    if key.is_empty() {
        return Err(invalid("the part after whsec_ is empty"));
    }
    Ok(NamedSecret {
        id: s.id.clone(),
        secret: Secret::new(key),
    })
}

/// The value of the standard header, or of its Svix fallback when the
/// standard one is absent.
fn value<'h>(
    headers: &'h HeaderMap,
    (name, fallback, label): (&str, &str, &'static str),
) -> Result<&'h str, VerifyError> {
    if headers.contains_key(name) {
        single_value(headers, name, label)
    } else {
        single_value(headers, fallback, label)
    }
}

/// Every `v1` signature of a `webhook-signature` value, decoded.
fn parse_signatures(text: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let malformed = |why| VerifyError::Malformed {
        header: SIGNATURE.2,
        why,
    };
    let mut out = Vec::new();
    for (i, entry) in text.split_ascii_whitespace().enumerate() {
        if i == MAX_CANDIDATES {
            return Err(malformed("more than 16 signatures"));
        }
        let (version, sig) = entry
            .split_once(',')
            .ok_or_else(|| malformed("an entry is not version,signature"))?;
        if version != "v1" {
            continue;
        }
        let bytes = STANDARD
            .decode(sig)
            .map_err(|_| malformed("a v1 signature is not base64"))?;
        if bytes.len() != 32 {
            return Err(malformed("a v1 signature is not a SHA-256 digest"));
        }
        out.push(bytes);
    }
    if out.is_empty() {
        return Err(malformed("no v1 signature"));
    }
    Ok(out)
}

impl StandardScheme {
    /// Builds the scheme, decoding every `whsec_` secret; refuses a secret
    /// in any other form.
    pub fn new(tolerance: Duration, secrets: Vec<NamedSecret>) -> Result<Self, BuildError> {
        let secrets = secrets
            .iter()
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StandardScheme { tolerance, secrets })
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let signatures = parse_signatures(value(headers, SIGNATURE)?)?;
        let id = value(headers, ID)?;
        let timestamp_text = value(headers, TIMESTAMP)?;
        let timestamp = parse_timestamp(timestamp_text, TIMESTAMP.2)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp_text.as_bytes(), b".", body];
        let secret_id =
            find_sha256_signer(&self.secrets, &parts, &signatures).ok_or(VerifyError::Mismatch)?;
        check_tolerance(timestamp, now_unix, self.tolerance, TIMESTAMP.2)?;
        Ok(Verified {
            scheme: self.name(),
            secret_id,
        })
    }
}

impl Scheme for StandardScheme {
    fn name(&self) -> &'static str {
        "standard"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::test_support::{code, headers, secrets};

    // Published by Standard Webhooks and Svix: the reference libraries'
    // signing test (standard-webhooks/standard-webhooks,
    // libraries/go/webhook_test.go `TestWebhookSign`) and Svix's
    // verification example (https://docs.svix.com/receiving/verifying-payloads/how).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP_TEXT: &str = "1614265330";
    const T: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // A well-formed v1 that matches nothing (from the same libraries' tests).
    const OTHER_SIG: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn scheme(pairs: &[(&str, &str)]) -> StandardScheme {
        StandardScheme::new(FIVE_MIN, secrets(pairs)).unwrap()
    }

    fn req(id: &str, ts: &str, sig: &str) -> HeaderMap {
        headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ])
    }

    fn svix(id: &str, ts: &str, sig: &str) -> HeaderMap {
        headers(&[
            ("svix-id", id),
            ("svix-timestamp", ts),
            ("svix-signature", sig),
        ])
    }

    #[test]
    fn accepts_the_published_vector_under_both_header_names() {
        let s = scheme(&[("a", SECRET)]);
        let v = s
            .verify_at(&req(MSG_ID, TIMESTAMP_TEXT, SIG), BODY, T)
            .unwrap();
        assert_eq!((v.scheme, &*v.secret_id), ("standard", "a"));
        let v = s
            .verify_at(&svix(MSG_ID, TIMESTAMP_TEXT, SIG), BODY, T)
            .unwrap();
        assert_eq!(v.scheme, "standard");
    }

    #[test]
    fn any_v1_may_match_and_other_versions_are_ignored() {
        let s = scheme(&[("a", SECRET)]);
        let many = format!(
            "{OTHER_SIG} v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIG} {OTHER_SIG}"
        );
        assert!(
            s.verify_at(&req(MSG_ID, TIMESTAMP_TEXT, &many), BODY, T)
                .is_ok()
        );
        let asym = format!("v1a,c29tZXRoaW5n {SIG}");
        assert!(
            s.verify_at(&req(MSG_ID, TIMESTAMP_TEXT, &asym), BODY, T)
                .is_ok()
        );
    }

    #[test]
    fn tolerance() {
        let s = scheme(&[("a", SECRET)]);
        let h = req(MSG_ID, TIMESTAMP_TEXT, SIG);
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
        assert_eq!(code(s.verify(&h, BODY)), "timestamp_out_of_tolerance");
    }

    #[test]
    fn rotation() {
        let other = "whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHM=";
        let s = scheme(&[("new", other), ("old", SECRET)]);
        let h = req(MSG_ID, TIMESTAMP_TEXT, SIG);
        assert_eq!(&*s.verify_at(&h, BODY, T).unwrap().secret_id, "old");
        let removed = scheme(&[("new", other)]);
        assert_eq!(removed.verify_at(&h, BODY, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        let refused = |value: &str| {
            StandardScheme::new(FIVE_MIN, secrets(&[("ok", SECRET), ("rot-2", value)]))
                .unwrap_err()
                .to_string()
        };
        let e = refused("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(e.contains("\"rot-2\"") && e.contains("whsec_"), "{e}");
        assert!(!e.contains("MfKQ9r8G"), "{e}");
        let e = refused("whsec_not*base64!");
        assert!(e.contains("\"rot-2\"") && e.contains("base64"), "{e}");
        assert!(!e.contains("not*base64"), "{e}");
        let e = refused("whsec_");
        assert!(e.contains("\"rot-2\""), "{e}");
    }

    #[test]
    fn negative_cases() {
        let s = scheme(&[("a", SECRET)]);
        let check = |h: &HeaderMap, body: &[u8]| code(s.verify_at(h, body, T));
        assert_eq!(
            check(
                &req(MSG_ID, TIMESTAMP_TEXT, SIG),
                br#"{"test": 2432232315}"#
            ),
            "signature_invalid"
        );
        // The id and the timestamp are signed.
        assert_eq!(
            check(
                &req("msg_p5jXN8AQM9LWM0D4loKWxJeK", TIMESTAMP_TEXT, SIG),
                BODY
            ),
            "signature_invalid"
        );
        assert_eq!(
            check(&req(MSG_ID, "1614265331", SIG), BODY),
            "signature_invalid"
        );
        assert_eq!(
            check(&req(MSG_ID, TIMESTAMP_TEXT, OTHER_SIG), BODY),
            "signature_invalid"
        );
        // Missing headers, each named.
        assert_eq!(
            s.verify_at(&HeaderMap::new(), BODY, T),
            Err(VerifyError::Missing("webhook-signature"))
        );
        let no_id = headers(&[
            ("webhook-timestamp", TIMESTAMP_TEXT),
            ("webhook-signature", SIG),
        ]);
        assert_eq!(
            s.verify_at(&no_id, BODY, T),
            Err(VerifyError::Missing("webhook-id"))
        );
        let no_ts = headers(&[("webhook-id", MSG_ID), ("webhook-signature", SIG)]);
        assert_eq!(
            s.verify_at(&no_ts, BODY, T),
            Err(VerifyError::Missing("webhook-timestamp"))
        );
        // Malformed signatures and timestamps.
        let too_many = [OTHER_SIG; 17].join(" ");
        let huge = format!("v1,{}", "A".repeat(5000));
        for bad in [
            "",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,not*base64",
            "v1,g0hM9SsE",
            too_many.as_str(),
            huge.as_str(),
        ] {
            assert_eq!(
                check(&req(MSG_ID, TIMESTAMP_TEXT, bad), BODY),
                "signature_malformed",
                "{bad:?}"
            );
        }
        for bad_ts in ["", "now", "1614265330.0", "-5"] {
            assert_eq!(
                check(&req(MSG_ID, bad_ts, SIG), BODY),
                "signature_malformed",
                "{bad_ts:?}"
            );
        }
        assert_eq!(
            check(&req("", TIMESTAMP_TEXT, SIG), BODY),
            "signature_malformed"
        );
    }
}
