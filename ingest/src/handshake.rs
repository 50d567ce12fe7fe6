//! Challenge handshakes: how a provider checks that an endpoint is ours
//! before it sends events. Each is off unless configured for the source,
//! and neither ever writes to Kafka.
//!
//! - Slack's `url_verification`: a signed POST whose JSON body is
//!   `{"type": "url_verification", "challenge": "..."}`. It is verified like
//!   any other request (Slack signs it), then answered with the challenge.
//! - A subscription check (WebSub's `hub.challenge`, Meta's and others'
//!   `hub.mode=subscribe&hub.challenge=...&hub.verify_token=...`): a GET
//!   answered with the challenge as `text/plain`. It carries no signature;
//!   when a verify token is configured, the request must carry it (compared
//!   in constant time).
//!
//! The challenge is echoed to whoever asked, so it is bounded
//! ([`MAX_CHALLENGE_LEN`]), must be visible ASCII, and is only ever sent
//! back as JSON or `text/plain` with `nosniff`, never as HTML.

use axum::http::Uri;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Longest challenge echoed back.
pub const MAX_CHALLENGE_LEN: usize = 512;

/// Why a handshake was refused. Never carries the token or the challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No challenge to echo.
    #[error("the challenge ({0}) is missing")]
    ChallengeMissing(&'static str),
    /// A challenge that is too long, not visible ASCII, or given twice.
    #[error("the challenge ({0}) must be 1-512 visible ASCII characters, given once")]
    ChallengeInvalid(&'static str),
    /// A verify token is configured and the request has none.
    #[error("the verify token ({0}) is missing")]
    TokenMissing(&'static str),
    /// The request's verify token is not the configured one.
    #[error("the verify token ({0}) does not match")]
    TokenInvalid(&'static str),
}

impl HandshakeError {
    /// Stable error code for the HTTP body and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::ChallengeMissing(_) => "challenge_missing",
            HandshakeError::ChallengeInvalid(_) => "challenge_invalid",
            HandshakeError::TokenMissing(_) => "verify_token_missing",
            HandshakeError::TokenInvalid(_) => "verify_token_invalid",
        }
    }
}

fn valid_challenge(c: &str) -> bool {
    !c.is_empty() && c.len() <= MAX_CHALLENGE_LEN && c.bytes().all(|b| b.is_ascii_graphic())
}

/// Slack's `url_verification` body, as much of it as is needed.
#[derive(Deserialize)]
struct SlackBody {
    /// `url_verification` for the handshake; event callbacks say otherwise.
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    /// The value to echo.
    challenge: Option<serde_json::Value>,
}

/// For a verified body: `None` when it is not a `url_verification`
/// request (deliver it as an event), else the challenge to echo or why it
/// cannot be.
pub fn slack_url_verification(body: &[u8]) -> Option<Result<String, HandshakeError>> {
    // Cheap pre-check: every other request skips the JSON parse.
    if !body.windows(16).any(|w| w == b"url_verification") {
        return None;
    }
    let parsed: SlackBody = serde_json::from_slice(body).ok()?;
    if parsed.kind.as_ref()?.as_str()? != "url_verification" {
        return None;
    }
    Some(match parsed.challenge {
        None | Some(serde_json::Value::Null) => Err(HandshakeError::ChallengeMissing("challenge")),
        Some(serde_json::Value::String(c)) if valid_challenge(&c) => Ok(c),
        Some(_) => Err(HandshakeError::ChallengeInvalid("challenge")),
    })
}

/// A configured GET subscription check.
#[derive(Debug)]
pub struct Subscription {
    /// Query parameter carrying the challenge, e.g. `hub.challenge`.
    pub challenge_param: &'static str,
    /// Query parameter carrying the verify token, e.g. `hub.verify_token`.
    pub token_param: &'static str,
    /// The expected token, if one is configured.
    pub verify_token: Option<Secret>,
}

impl Subscription {
    /// The challenge to echo for a GET to `uri`, or why not. The token is
    /// checked first, so a caller without it learns nothing else.
    pub fn answer(&self, uri: &Uri) -> Result<String, HandshakeError> {
        let pairs: Vec<(String, String)> = uri
            .query()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        let values = |name: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        if let Some(expected) = &self.verify_token {
            let tokens = values(self.token_param);
            let [token] = tokens.as_slice() else {
                return Err(if tokens.is_empty() {
                    HandshakeError::TokenMissing(self.token_param)
                } else {
                    HandshakeError::TokenInvalid(self.token_param)
                });
            };
            if !tokens_equal(token.as_bytes(), expected.expose()) {
                return Err(HandshakeError::TokenInvalid(self.token_param));
            }
        }
        match values(self.challenge_param).as_slice() {
            [] => Err(HandshakeError::ChallengeMissing(self.challenge_param)),
            [c] if valid_challenge(c) => Ok((*c).to_string()),
            _ => Err(HandshakeError::ChallengeInvalid(self.challenge_param)),
        }
    }
}

/// Constant-time equality that does not leak the length either: both sides
/// are hashed to 32 bytes first.
fn tokens_equal(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_slacks_url_verification() {
        // The example from Slack's Events API documentation.
        let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        assert_eq!(
            slack_url_verification(body),
            Some(Ok(
                "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
            ))
        );
    }

    #[test]
    fn other_bodies_are_events() {
        for body in [
            &br#"{"type":"event_callback","event":{"text":"url_verification"}}"#[..],
            br#"{"type":"event_callback","challenge":"x"}"#,
            b"token=x&text=url_verification",
            br#"["url_verification"]"#,
            br#"{"type":["url_verification"],"challenge":"x"}"#,
            b"",
        ] {
            assert_eq!(
                slack_url_verification(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bad_slack_challenges_are_refused() {
        let long = "a".repeat(MAX_CHALLENGE_LEN + 1);
        for (body, code) in [
            (
                r#"{"type":"url_verification"}"#.to_string(),
                "challenge_missing",
            ),
            (
                r#"{"type":"url_verification","challenge":null}"#.to_string(),
                "challenge_missing",
            ),
            (
                r#"{"type":"url_verification","challenge":""}"#.to_string(),
                "challenge_invalid",
            ),
            (
                r#"{"type":"url_verification","challenge":42}"#.to_string(),
                "challenge_invalid",
            ),
            (
                r#"{"type":"url_verification","challenge":"<script>alert(1)</script> x"}"#
                    .to_string(),
                "challenge_invalid",
            ),
            (
                format!(r#"{{"type":"url_verification","challenge":"{long}"}}"#),
                "challenge_invalid",
            ),
        ] {
            let got = slack_url_verification(body.as_bytes());
            assert_eq!(got.map(|r| r.unwrap_err().code()), Some(code), "{body}");
        }
        let max = "a".repeat(MAX_CHALLENGE_LEN);
        let body = format!(r#"{{"type":"url_verification","challenge":"{max}"}}"#);
        assert_eq!(slack_url_verification(body.as_bytes()), Some(Ok(max)));
    }

    fn sub(token: Option<&str>) -> Subscription {
        Subscription {
            challenge_param: "hub.challenge",
            token_param: "hub.verify_token",
            verify_token: token.map(|t| Secret::new(t.as_bytes().to_vec())),
        }
    }

    fn answer(s: &Subscription, query: &str) -> Result<String, &'static str> {
        let uri: Uri = format!("/webhooks/x?{query}").parse().unwrap();
        s.answer(&uri).map_err(|e| e.code())
    }

    #[test]
    fn subscription_echoes_the_decoded_challenge_with_the_right_token() {
        let s = sub(Some("tok-1"));
        assert_eq!(
            answer(
                &s,
                "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=tok-1"
            ),
            Ok("1158201444".into())
        );
        assert_eq!(
            answer(&s, "hub.challenge=a%2Bb%3Dc&hub.verify_token=tok%2D1"),
            Ok("a+b=c".into())
        );
        let open = sub(None);
        assert_eq!(answer(&open, "hub.challenge=xyz"), Ok("xyz".into()));
        let custom = Subscription {
            challenge_param: "challenge",
            ..sub(None)
        };
        assert_eq!(answer(&custom, "challenge=xyz"), Ok("xyz".into()));
        assert_eq!(
            answer(&custom, "hub.challenge=xyz"),
            Err("challenge_missing")
        );
    }

    #[test]
    fn subscription_refusals() {
        let s = sub(Some("tok-1"));
        for (query, code) in [
            ("hub.challenge=x", "verify_token_missing"),
            (
                "hub.challenge=x&hub.verify_token=tok-2",
                "verify_token_invalid",
            ),
            (
                "hub.challenge=x&hub.verify_token=tok-1x",
                "verify_token_invalid",
            ),
            ("hub.challenge=x&hub.verify_token=", "verify_token_invalid"),
            (
                "hub.challenge=x&hub.verify_token=tok-1&hub.verify_token=tok-1",
                "verify_token_invalid",
            ),
            // The token is checked before the challenge.
            ("hub.verify_token=nope", "verify_token_invalid"),
            ("hub.verify_token=tok-1", "challenge_missing"),
            ("hub.verify_token=tok-1&hub.challenge=", "challenge_invalid"),
            (
                "hub.verify_token=tok-1&hub.challenge=a&hub.challenge=b",
                "challenge_invalid",
            ),
            (
                "hub.verify_token=tok-1&hub.challenge=%3Chtml%3E%0A",
                "challenge_invalid",
            ),
            (
                "hub.verify_token=tok-1&hub.challenge=a%20b",
                "challenge_invalid",
            ),
        ] {
            assert_eq!(answer(&s, query), Err(code), "{query}");
        }
        let long = "a".repeat(MAX_CHALLENGE_LEN + 1);
        assert_eq!(
            answer(&s, &format!("hub.verify_token=tok-1&hub.challenge={long}")),
            Err("challenge_invalid")
        );
        let no_query: Uri = "/webhooks/x".parse().unwrap();
        assert_eq!(
            sub(None).answer(&no_query).map_err(|e| e.code()),
            Err("challenge_missing")
        );
    }

    #[test]
    fn errors_never_show_the_token() {
        let s = sub(Some("tok-secret"));
        let uri: Uri = "/w?hub.challenge=x&hub.verify_token=tok-secreT"
            .parse()
            .unwrap();
        let e = s.answer(&uri).unwrap_err();
        assert!(!e.to_string().contains("tok-secre"), "{e}");
        assert!(!format!("{e:?}").contains("tok-secre"));
    }
}
