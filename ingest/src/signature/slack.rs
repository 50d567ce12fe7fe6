//! Slack: `X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret,
//! "v0:{X-Slack-Request-Timestamp}:{body}"))`, the timestamp within the
//! source's tolerance.
//!
//! Slack's Events API body carries `event_id` (`event_id = { pointer =
//! "/event_id" }`); slash commands and interactivity are form-encoded and
//! carry none, so ingest generates one.

use std::time::Duration;

use axum::http::HeaderMap;

use super::{
    NamedSecret, Scheme, Verified, VerifyError, check_tolerance, find_sha256_signer, now_unix,
    parse_timestamp, single_value,
};

const SIGNATURE: &str = "x-slack-signature";
const SIGNATURE_LABEL: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";
const TIMESTAMP_LABEL: &str = "X-Slack-Request-Timestamp";

/// The `slack` scheme.
#[derive(Debug)]
pub struct SlackScheme {
    /// Accepted distance between the request timestamp and now.
    tolerance: Duration,
    /// Accepted signing secrets, tried in order.
    secrets: Vec<NamedSecret>,
}

impl SlackScheme {
    /// Builds the scheme with its tolerance and secrets.
    pub fn new(tolerance: Duration, secrets: Vec<NamedSecret>) -> Self {
        SlackScheme { tolerance, secrets }
    }

    /// [`Scheme::verify`] with the clock given, in Unix seconds.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, VerifyError> {
        let malformed = |why| VerifyError::Malformed {
            header: SIGNATURE_LABEL,
            why,
        };
        let signature = single_value(headers, SIGNATURE, SIGNATURE_LABEL)?;
        let hex_digest = signature
            .strip_prefix("v0=")
            .ok_or_else(|| malformed("does not start with v0="))?;
        let expected = hex::decode(hex_digest).map_err(|_| malformed("not hexadecimal"))?;
        if expected.len() != 32 {
            return Err(malformed("not a SHA-256 digest"));
        }
        let timestamp_text = single_value(headers, TIMESTAMP, TIMESTAMP_LABEL)?;
        let timestamp = parse_timestamp(timestamp_text, TIMESTAMP_LABEL)?;
        let parts: [&[u8]; 4] = [b"v0:", timestamp_text.as_bytes(), b":", body];
        let secret_id =
            find_sha256_signer(&self.secrets, &parts, &[expected]).ok_or(VerifyError::Mismatch)?;
        check_tolerance(timestamp, now_unix, self.tolerance, TIMESTAMP_LABEL)?;
        Ok(Verified {
            scheme: self.name(),
            secret_id,
        })
    }
}

impl Scheme for SlackScheme {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::test_support::{code, headers, secrets};

    // Published by Slack, "Verifying requests from Slack", the slash-command
    // walk-through: https://docs.slack.dev/authentication/verifying-requests-from-slack
    // (also pinned by Slack's own SDK test,
    // slackapi/python-slack-sdk tests/slack_sdk/signature/test_signature_verifier.py).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP_TEXT: &str = "1531420618";
    const T: i64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn req(sig: &str, ts: &str) -> HeaderMap {
        headers(&[
            ("x-slack-signature", sig),
            ("x-slack-request-timestamp", ts),
        ])
    }

    fn scheme(pairs: &[(&str, &str)]) -> SlackScheme {
        SlackScheme::new(FIVE_MIN, secrets(pairs))
    }

    #[test]
    fn accepts_slacks_published_vector() {
        let s = scheme(&[("a", SECRET)]);
        let v = s.verify_at(&req(SIG, TIMESTAMP_TEXT), BODY, T).unwrap();
        assert_eq!((v.scheme, &*v.secret_id), ("slack", "a"));
    }

    #[test]
    fn tolerance() {
        let s = scheme(&[("a", SECRET)]);
        let h = req(SIG, TIMESTAMP_TEXT);
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
        // The real clock is years past 2018: the published request is stale.
        assert_eq!(code(s.verify(&h, BODY)), "timestamp_out_of_tolerance");
    }

    #[test]
    fn rotation() {
        let s = scheme(&[("new", "not it"), ("old", SECRET)]);
        let h = req(SIG, TIMESTAMP_TEXT);
        assert_eq!(&*s.verify_at(&h, BODY, T).unwrap().secret_id, "old");
        let removed = scheme(&[("new", "not it")]);
        assert_eq!(removed.verify_at(&h, BODY, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn negative_cases() {
        let s = scheme(&[("a", SECRET)]);
        let check = |h: &HeaderMap, body: &[u8]| code(s.verify_at(h, body, T));
        let mut tampered = BODY.to_vec();
        tampered[6] ^= 1;
        assert_eq!(
            check(&req(SIG, TIMESTAMP_TEXT), &tampered),
            "signature_invalid"
        );
        // A timestamp moved by a second breaks the signature.
        assert_eq!(check(&req(SIG, "1531420619"), BODY), "signature_invalid");
        let flipped = SIG.replace("v0=a2", "v0=b2");
        assert_eq!(
            check(&req(&flipped, TIMESTAMP_TEXT), BODY),
            "signature_invalid"
        );
        assert_eq!(check(&HeaderMap::new(), BODY), "signature_missing");
        let no_ts = headers(&[("x-slack-signature", SIG)]);
        assert_eq!(
            s.verify_at(&no_ts, BODY, T),
            Err(VerifyError::Missing("X-Slack-Request-Timestamp"))
        );
        let bare = SIG.trim_start_matches("v0=");
        let huge = format!("v0={}", "a".repeat(5000));
        for bad in [
            "",
            bare,
            "v0=",
            "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "v0=zz114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "v0=a2114d57",
            huge.as_str(),
        ] {
            assert_eq!(
                check(&req(bad, TIMESTAMP_TEXT), BODY),
                "signature_malformed",
                "{bad:?}"
            );
        }
        for bad_ts in ["", "yesterday", "1531420618.5", "-1531420618"] {
            assert_eq!(
                check(&req(SIG, bad_ts), BODY),
                "signature_malformed",
                "{bad_ts:?}"
            );
        }
    }
}
