//! How a source's sender signs its requests, as configured: one
//! [`SignatureConfig`] variant per scheme, its secrets (named, never their
//! values) and its replay tolerance, with the checks of these settings.
//!
//! The top-level [`crate::config`] holds a [`SignatureConfig`] per source
//! and delegates its checks to [`SignatureConfig::problems`]; the schemes
//! beside this file are built from it by [`super::build`].

use std::time::Duration;

use axum::http::HeaderName;
use serde::Deserialize;

use crate::secret::{SecretRef, valid_secret_id};

/// Default accepted distance between a signed timestamp and now.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A signature scheme and its secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase")]
pub enum SignatureConfig {
    /// The guest-WiFi platform: `X-Purple-Signature: hex(HMAC-SHA256(secret,
    /// body))`. A preset of `hmac`.
    Purple(PresetConfig),
    /// Generic HMAC of the raw body, optionally with a signed timestamp.
    Hmac(HmacConfig),
    /// GitHub: `X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))`.
    /// GitHub's payloads have no top-level `id`: its delivery id is the
    /// `X-GitHub-Delivery` header, the same on redeliveries, so set
    /// `event_id = { header = "X-GitHub-Delivery" }` on the source.
    Github(PresetConfig),
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]` over
    /// `{t}.{body}`, with the endpoint's `whsec_...` signing secret as is.
    /// The event id is the body's `id`, which the default `event_id` takes.
    Stripe(TimedPresetConfig),
    /// Shopify: `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(secret, body))`.
    /// Set `event_id = { header = "X-Shopify-Webhook-Id" }` on the source.
    Shopify(PresetConfig),
    /// Slack: `X-Slack-Signature: v0=hex(HMAC-SHA256(secret,
    /// "v0:{X-Slack-Request-Timestamp}:{body}"))`. Events API bodies carry
    /// `/event_id`; slash commands carry no id (it is derived from the body).
    Slack(TimedPresetConfig),
    /// Standard Webhooks, what Svix sends: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64> ...` over `{id}.{timestamp}.{body}`
    /// (the `svix-*` header names are accepted too). Secrets are
    /// `whsec_<base64>`. Set `event_id = { header = "webhook-id" }` (or
    /// `svix-id`) on the source.
    Standard(TimedPresetConfig),
}

/// A preset scheme: only its secrets are configurable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    /// Accepted secrets, all at once (rotation): a request signed with any
    /// of them is genuine.
    pub secrets: Vec<SecretRef>,
}

/// A preset scheme whose sender signs a timestamp: its secrets and how far
/// that timestamp may be from now.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedPresetConfig {
    /// Replay protection: a signed timestamp older or newer than now by
    /// more than this is refused (401 `timestamp_out_of_tolerance`), e.g.
    /// `5m`. Keep the clocks in sync (NTP).
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// Accepted secrets, all at once (rotation).
    pub secrets: Vec<SecretRef>,
}

/// Generic HMAC over the raw body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// Header carrying the signature.
    pub header: String,
    /// Hash function.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// How the signature bytes are written in the header.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Header carrying a Unix timestamp (seconds) that the sender signs
    /// with the body: the signed content is then `{timestamp}.{body}`, and
    /// a timestamp outside `tolerance` is refused.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// With `timestamp_header`: how far the timestamp may be from now,
    /// either way (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
    /// Accepted secrets, all at once (rotation).
    pub secrets: Vec<SecretRef>,
}

/// HMAC hash function.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How signature bytes are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl SignatureConfig {
    /// The secrets of whichever scheme this is.
    pub fn secrets(&self) -> &[SecretRef] {
        match self {
            SignatureConfig::Purple(p)
            | SignatureConfig::Github(p)
            | SignatureConfig::Shopify(p) => &p.secrets,
            SignatureConfig::Hmac(h) => &h.secrets,
            SignatureConfig::Stripe(t)
            | SignatureConfig::Slack(t)
            | SignatureConfig::Standard(t) => &t.secrets,
        }
    }

    /// The replay tolerance, for schemes that sign a timestamp.
    pub fn tolerance(&self) -> Option<Duration> {
        match self {
            SignatureConfig::Purple(_)
            | SignatureConfig::Github(_)
            | SignatureConfig::Shopify(_) => None,
            SignatureConfig::Hmac(h) => h
                .timestamp_header
                .as_ref()
                .map(|_| h.tolerance.unwrap_or(DEFAULT_TOLERANCE)),
            SignatureConfig::Stripe(t)
            | SignatureConfig::Slack(t)
            | SignatureConfig::Standard(t) => Some(t.tolerance),
        }
    }

    /// The checks of this scheme's settings and secrets, one line per
    /// problem; `at` names where it is configured (`sources.NAME.signature`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        let secrets = self.secrets();
        if secrets.is_empty() {
            p.push(format!("{at}.secrets: at least one secret is needed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, sr) in secrets.iter().enumerate() {
            let sat = format!("{at}.secrets[{i}]");
            if !valid_secret_id(&sr.id) {
                p.push(format!(
                    "{sat}.id: {:?} must be 1-64 of a-z A-Z 0-9 . _ -",
                    sr.id
                ));
            }
            if !seen.insert(sr.id.as_str()) {
                p.push(format!("{sat}.id: {:?} is used twice", sr.id));
            }
            if sr.env.is_some() == sr.file.is_some() {
                p.push(format!("{sat}: name exactly one of `env` or `file`"));
            }
        }
        if let SignatureConfig::Hmac(h) = self {
            if HeaderName::try_from(h.header.as_str()).is_err() {
                p.push(format!(
                    "{at}.header: {:?} is not a valid header name",
                    h.header
                ));
            }
            match &h.timestamp_header {
                Some(t) if HeaderName::try_from(t.as_str()).is_err() => {
                    p.push(format!(
                        "{at}.timestamp_header: {t:?} is not a valid header name"
                    ));
                }
                Some(t) if t.eq_ignore_ascii_case(&h.header) => p.push(format!(
                    "{at}.timestamp_header: must differ from signature.header"
                )),
                None if h.tolerance.is_some() => p.push(format!(
                    "{at}.tolerance: has no effect without timestamp_header"
                )),
                _ => {}
            }
        }
        if let Some(t) = self.tolerance() {
            let (min, max) = TOLERANCE_RANGE;
            if t < min || t > max {
                p.push(format!("{at}.tolerance: must be between 1s and 1h"));
            }
        }
        p
    }
}

/// Smallest and largest accepted replay tolerance.
pub const TOLERANCE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60 * 60));

const fn default_tolerance() -> Duration {
    DEFAULT_TOLERANCE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_named_from_where_the_scheme_is_configured() {
        let config = SignatureConfig::Hmac(HmacConfig {
            header: "bad header".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: None,
            timestamp_header: None,
            tolerance: Some(Duration::from_secs(60)),
            secrets: Vec::new(),
        });
        assert_eq!(
            config.problems("sources.s.signature"),
            [
                "sources.s.signature.secrets: at least one secret is needed",
                "sources.s.signature.header: \"bad header\" is not a valid header name",
                "sources.s.signature.tolerance: has no effect without timestamp_header",
            ]
        );
    }
}
