//! Signature schemes.
//!
//! A scheme looks at the request headers and the exact bytes received and
//! says which secret of the rotation signed them, or why none did. Adding a
//! scheme is local: a config variant in [`crate::config::SignatureConfig`],
//! a type implementing [`Scheme`] in its own file here, and one arm in
//! [`build`].

pub mod hmac;

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::config::{HmacAlgorithm, HmacConfig, SignatureConfig, SignatureEncoding};
use crate::secret::{Secret, SecretError};

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
}

impl VerifyError {
    /// Stable error code for the HTTP body and the metrics `reason` label.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "signature_missing",
            VerifyError::Malformed { .. } => "signature_malformed",
            VerifyError::Mismatch => "signature_invalid",
        }
    }
}

/// A signature scheme, configured for one source.
pub trait Scheme: Send + Sync + std::fmt::Debug {
    /// Name recorded in the envelope, e.g. `hmac`.
    fn name(&self) -> &'static str;
    /// Verifies the exact bytes received against every secret.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError>;
}

/// Builds a scheme from its configuration, reading its secrets.
pub fn build(config: &SignatureConfig) -> Result<Box<dyn Scheme>, SecretError> {
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
        SignatureConfig::Purple(_) => Box::new(hmac::HmacScheme::new(
            &HmacConfig {
                header: "X-Purple-Signature".into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SignatureEncoding::Hex,
                prefix: None,
                secrets: Vec::new(),
            },
            secrets,
        )),
        SignatureConfig::Hmac(h) => Box::new(hmac::HmacScheme::new(h, secrets)),
    })
}
