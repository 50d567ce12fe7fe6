//! Signature schemes.
//!
//! A scheme looks at the request headers and the exact bytes received and
//! says which secret of the rotation signed them, or why none did. Adding a
//! scheme is local: a config variant in [`config::SignatureConfig`], a type
//! implementing [`Scheme`] in its own file here, and one arm in [`build`].
//!
//! - [`config`]: the schemes' configuration, its defaults and its checks.
//! - [`hmac`]: generic HMAC of the body, optionally with a signed timestamp;
//!   the guest-WiFi platform's `X-Purple-Signature` is one configuration.
//! - [`github`]: GitHub's `X-Hub-Signature-256`.
//! - [`stripe`]: Stripe's `Stripe-Signature` (`t=`, `v1=`), with a timestamp.
//! - [`shopify`]: Shopify's `X-Shopify-Hmac-Sha256` (base64).
//! - [`slack`]: Slack's `X-Slack-Signature` over `v0:{timestamp}:{body}`.
//! - [`standard`]: Standard Webhooks (`webhook-*` headers, what Svix sends
//!   as `svix-*`), with `whsec_` secrets.
//!
//! Every scheme compares in constant time (`Mac::verify_slice`), tries every
//! secret against every candidate signature, caps header lengths and the
//! number of candidates, and, where the sender signs a timestamp, refuses
//! one outside the configured tolerance. The tolerance is checked after the
//! signature, so `timestamp_out_of_tolerance` is only ever said about a
//! request that was genuinely signed (a replay, or a skewed clock).

pub mod config;
pub mod github;
pub mod hmac;
pub mod shopify;
pub mod slack;
pub mod standard;
pub mod stripe;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::hmac::{Hmac, Mac};
use axum::http::HeaderMap;
use axum::http::header::AsHeaderName;
use sha2::Sha256;

use self::config::SignatureConfig;
use crate::secret::{Secret, SecretError};

/// Longest header value looked at; anything longer is malformed.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most candidate signatures tried for one request; more is malformed.
pub const MAX_CANDIDATES: usize = 16;

/// A secret of a rotation with its label.
#[derive(Debug, Clone)]
pub struct NamedSecret {
    /// The configured label, recorded in the envelope and in metrics.
    pub id: Arc<str>,
    /// The value.
    pub secret: Secret,
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Which scheme verified the request.
    pub scheme: &'static str,
    /// Label of the matching secret.
    pub secret_id: Arc<str>,
}

/// Why a request is not genuine. Each maps to a stable error code; none
/// carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature header is absent.
    #[error("signature header {0} is missing")]
    Missing(&'static str),
    /// The header is present but cannot be parsed.
    #[error("signature header {header} is malformed: {why}")]
    Malformed {
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Well-formed, but no secret produces it over this body.
    #[error("signature does not match the body with any configured secret")]
    Mismatch,
    /// Correctly signed, but the signed timestamp is further from now than
    /// the source's tolerance: a replay, or a clock out of step.
    #[error("timestamp in {header} is outside the accepted tolerance")]
    TimestampOutOfTolerance {
        /// The header carrying the timestamp.
        header: &'static str,
    },
}

impl VerifyError {
    /// Stable error code for the HTTP body and the metrics `reason` label.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "signature_missing",
            VerifyError::Malformed { .. } => "signature_malformed",
            VerifyError::Mismatch => "signature_invalid",
            VerifyError::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
        }
    }
}

/// Why a scheme could not be built. Never contains a secret value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A secret was read but is not in the form the scheme needs.
    #[error("secret {id:?}: {why}")]
    InvalidSecret {
        /// The secret's configured label.
        id: String,
        /// What is wrong with it (never the value).
        why: &'static str,
    },
}

/// A signature scheme, configured for one source.
pub trait Scheme: Send + Sync + std::fmt::Debug {
    /// Name recorded in the envelope, e.g. `hmac`.
    fn name(&self) -> &'static str;
    /// Verifies the exact bytes received against every secret.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError>;
}

/// Builds a scheme from its configuration, reading its secrets.
pub fn build(config: &SignatureConfig) -> Result<Box<dyn Scheme>, BuildError> {
    let secrets = config
        .secrets()
        .iter()
        .map(|r| {
            Ok(NamedSecret {
                id: Arc::from(r.id.as_str()),
                secret: r.load()?,
            })
        })
        .collect::<Result<Vec<_>, SecretError>>()?;
    Ok(match config {
        SignatureConfig::Purple(_) => Box::new(hmac::HmacScheme::purple(secrets)),
        SignatureConfig::Hmac(h) => Box::new(hmac::HmacScheme::new(h, secrets)),
        SignatureConfig::Github(_) => Box::new(github::GithubScheme::new(secrets)),
        SignatureConfig::Stripe(c) => Box::new(stripe::StripeScheme::new(c.tolerance, secrets)),
        SignatureConfig::Shopify(_) => Box::new(shopify::ShopifyScheme::new(secrets)),
        SignatureConfig::Slack(c) => Box::new(slack::SlackScheme::new(c.tolerance, secrets)),
        SignatureConfig::Standard(c) => {
            Box::new(standard::StandardScheme::new(c.tolerance, secrets)?)
        }
    })
}

/// Seconds since the Unix epoch by the system clock (0 before it).
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A header's name as `'static` text for error messages. Leaked once per
/// configured header at start-up: a handful of bytes that live as long as
/// the process anyway.
pub(crate) fn leak_label(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

/// The one value of a header: `Missing` when absent; `Malformed` when
/// repeated, longer than [`MAX_HEADER_LEN`], not visible ASCII or empty.
/// Surrounding whitespace is trimmed.
pub(crate) fn single_value<'h, K: AsHeaderName>(
    headers: &'h HeaderMap,
    name: K,
    label: &'static str,
) -> Result<&'h str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(VerifyError::Missing(label));
    };
    let malformed = |why| VerifyError::Malformed { header: label, why };
    if values.next().is_some() {
        return Err(malformed("sent more than once"));
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(malformed("longer than 4096 bytes"));
    }
    let text = value.to_str().map_err(|_| malformed("not ASCII"))?.trim();
    if text.is_empty() {
        return Err(malformed("empty"));
    }
    Ok(text)
}

/// Parses a Unix timestamp in seconds: 1 to 12 ASCII digits, nothing else
/// (no sign, no fraction), which covers every date until the year 33658.
pub(crate) fn parse_timestamp(text: &str, label: &'static str) -> Result<i64, VerifyError> {
    let malformed = |why| VerifyError::Malformed { header: label, why };
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("timestamp is not a Unix time in seconds"));
    }
    text.parse::<i64>()
        .map_err(|_| malformed("timestamp is not a Unix time in seconds"))
}

/// Refuses a timestamp further than `tolerance` from `now`, either way.
pub(crate) fn check_tolerance(
    timestamp: i64,
    now: i64,
    tolerance: Duration,
    label: &'static str,
) -> Result<(), VerifyError> {
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        Err(VerifyError::TimestampOutOfTolerance { header: label })
    } else {
        Ok(())
    }
}

/// Constant-time check of `expected` against HMAC-SHA256(key, concat(parts)).
pub(crate) fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

/// The first secret, in configured order, for which one of `candidates` is
/// the HMAC-SHA256 of `parts`. Every pair is tried until one matches.
pub(crate) fn find_sha256_signer(
    secrets: &[NamedSecret],
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Option<Arc<str>> {
    secrets.iter().find_map(|s| {
        candidates
            .iter()
            .any(|c| hmac_sha256_matches(s.secret.expose(), parts, c))
            .then(|| s.id.clone())
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the schemes' unit tests.

    use super::*;

    /// Named secrets from `(id, value)` pairs.
    pub fn secrets(pairs: &[(&str, &str)]) -> Vec<NamedSecret> {
        pairs
            .iter()
            .map(|(id, v)| NamedSecret {
                id: Arc::from(*id),
                secret: Secret::new(v.as_bytes().to_vec()),
            })
            .collect()
    }

    /// A header map from `(name, value)` pairs (repeats allowed).
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                axum::http::HeaderName::try_from(*name).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    /// The error code of a failed verification.
    pub fn code(r: Result<Verified, VerifyError>) -> &'static str {
        r.unwrap_err().code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;
    use crate::signature::config::{
        DEFAULT_TOLERANCE, HmacAlgorithm, HmacConfig, PresetConfig, SignatureEncoding,
        TimedPresetConfig,
    };

    #[test]
    fn timestamps_parse_strictly() {
        assert_eq!(parse_timestamp("1531420618", "t"), Ok(1_531_420_618));
        for bad in ["", "-1", "+1", "1.5", " 1", "abc", "1e9", "1234567890123"] {
            assert_eq!(
                parse_timestamp(bad, "t").unwrap_err().code(),
                "signature_malformed",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tolerance_is_inclusive_and_symmetric() {
        let tol = Duration::from_secs(300);
        assert!(check_tolerance(1000, 1300, tol, "t").is_ok());
        assert!(check_tolerance(1300, 1000, tol, "t").is_ok());
        assert_eq!(
            check_tolerance(1000, 1301, tol, "t").unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
        assert_eq!(
            check_tolerance(1301, 1000, tol, "t").unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
        // Extremes do not overflow.
        assert!(check_tolerance(0, i64::MAX, tol, "t").is_err());
    }

    #[test]
    fn single_value_refuses_repeats_and_oversize() {
        use test_support::headers;
        let name = "x-a";
        let h = headers(&[("x-a", "1"), ("x-a", "2")]);
        assert_eq!(
            single_value(&h, name, "X-A").unwrap_err().code(),
            "signature_malformed"
        );
        let huge = "a".repeat(MAX_HEADER_LEN + 1);
        let h = headers(&[("x-a", &huge)]);
        assert_eq!(
            single_value(&h, name, "X-A").unwrap_err().code(),
            "signature_malformed"
        );
        assert_eq!(
            single_value(&HeaderMap::new(), name, "X-A"),
            Err(VerifyError::Missing("X-A"))
        );
        let h = headers(&[("x-a", " v ")]);
        assert_eq!(single_value(&h, name, "X-A"), Ok("v"));
    }

    fn file_secret(id: &str, value: &str) -> (tempfile::NamedTempFile, SecretRef) {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(value.as_bytes()).unwrap();
        let r = SecretRef {
            id: id.into(),
            env: None,
            file: Some(f.path().to_path_buf()),
        };
        (f, r)
    }

    #[test]
    fn build_wires_every_scheme_to_its_name() {
        let (_f, r) = file_secret("a", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let preset = || PresetConfig {
            secrets: vec![r.clone()],
        };
        let timed = || TimedPresetConfig {
            tolerance: DEFAULT_TOLERANCE,
            secrets: vec![r.clone()],
        };
        let hmac = HmacConfig {
            header: "X-Sig".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: None,
            timestamp_header: Some("X-Sig-Timestamp".into()),
            tolerance: None,
            secrets: vec![r.clone()],
        };
        for (config, name) in [
            (SignatureConfig::Purple(preset()), "hmac"),
            (SignatureConfig::Hmac(hmac), "hmac"),
            (SignatureConfig::Github(preset()), "github"),
            (SignatureConfig::Stripe(timed()), "stripe"),
            (SignatureConfig::Shopify(preset()), "shopify"),
            (SignatureConfig::Slack(timed()), "slack"),
            (SignatureConfig::Standard(timed()), "standard"),
        ] {
            assert_eq!(build(&config).unwrap().name(), name);
        }
    }

    #[test]
    fn build_refuses_a_standard_secret_without_whsec() {
        let (_f, r) = file_secret("rot-2", "c2VjcmV0");
        let config = SignatureConfig::Standard(TimedPresetConfig {
            tolerance: DEFAULT_TOLERANCE,
            secrets: vec![r],
        });
        let e = build(&config).unwrap_err();
        assert_eq!(
            e,
            BuildError::InvalidSecret {
                id: "rot-2".into(),
                why: "a Standard Webhooks secret must start with whsec_",
            }
        );
        assert!(!e.to_string().contains("c2VjcmV0"));
        // The other schemes take any secret bytes.
        let (_g, r) = file_secret("rot-2", "c2VjcmV0");
        let stripe = SignatureConfig::Stripe(TimedPresetConfig {
            tolerance: DEFAULT_TOLERANCE,
            secrets: vec![r],
        });
        assert!(build(&stripe).is_ok());
    }

    #[test]
    fn build_error_names_the_secret_not_the_value() {
        let e = BuildError::InvalidSecret {
            id: "2026-11".into(),
            why: "must start with whsec_",
        };
        assert_eq!(e.to_string(), "secret \"2026-11\": must start with whsec_");
    }
}
