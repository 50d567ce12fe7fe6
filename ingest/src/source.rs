//! A configured source at run time: its signature scheme with secrets
//! loaded, its body limit, where event id, ordering key and sequence come
//! from, and who may call it how often (allow-list, rate limit) and which
//! challenge handshakes it answers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::address::Cidrs;
use crate::config::{Config, Extract, SourceConfig};
use crate::handshake::Subscription;
use crate::pointer::Pointers;
use crate::rate_limit::TokenBucket;
use crate::signature::{self, Scheme, VerifyError};
use crate::tls::ClientCa;

/// Longest event id or ordering key taken from a request; a longer one is
/// ignored (the event id is then derived from the body).
pub const MAX_ID_LEN: usize = 256;
/// Opens the event id of a request that carried none (see [`body_event_id`]).
pub const BODY_EVENT_ID_PREFIX: &str = "body-sha256-";

/// The event id of a request without a usable one:
/// `body-sha256-` and the first 32 hex digits of SHA-256 over the source
/// name, a zero byte and the exact body bytes. A provider's retry re-sends
/// the same bytes, so it is the same event and the processors drop it as a
/// duplicate; any other body is another event. (Two genuinely distinct
/// events with byte-identical bodies become one: a body without an id or a
/// timestamp cannot tell them apart.)
pub fn body_event_id(source: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(source.as_bytes())
        .chain_update([0u8])
        .chain_update(body)
        .finalize();
    let mut id = String::with_capacity(BODY_EVENT_ID_PREFIX.len() + 32);
    id.push_str(BODY_EVENT_ID_PREFIX);
    id.push_str(&hex::encode(&digest[..16]));
    id
}
/// Most bytes of forwarded header values kept per request.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 8 * 1024;

/// A source ready to serve.
#[derive(Debug)]
pub struct Source {
    /// The configured name, the `{source}` of the URL.
    pub name: Arc<str>,
    /// Verifies signatures.
    pub scheme: Box<dyn Scheme>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Where the event id comes from.
    event_id: Option<Extract>,
    /// Where the ordering key comes from.
    ordering_key: Option<Extract>,
    /// Where the sequence comes from.
    sequence: Option<Extract>,
    /// The body pointers among the three, parsed once.
    pointers: Pointers<3>,
    /// Headers copied into the envelope.
    pub forward_headers: Vec<HeaderName>,
    /// Client addresses accepted; `None` accepts every address.
    pub allow: Option<Cidrs>,
    /// The request rate limit, if any.
    pub rate_limit: Option<TokenBucket>,
    /// Whether Slack's `url_verification` is answered.
    pub url_verification: bool,
    /// The GET subscription check, if configured.
    pub subscription: Option<Subscription>,
    /// The CAs a client certificate must chain to (`mtls`), if any.
    pub client_ca: Option<ClientCa>,
}

/// The headers a source copies into the envelope, lower-cased.
fn forward_headers(config: &SourceConfig) -> Vec<HeaderName> {
    config
        .forward_headers
        .iter()
        .filter_map(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok())
        .collect()
}

/// The scheme of a source built for polling: it holds no secret and
/// verifies nothing.
#[derive(Debug)]
struct NotServed;

impl Scheme for NotServed {
    fn name(&self) -> &'static str {
        "none"
    }

    fn verify(&self, _: &HeaderMap, _: &[u8]) -> Result<crate::signature::Verified, VerifyError> {
        Err(VerifyError::Mismatch)
    }
}

/// What was taken out of one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Event id, if the request carries a usable one.
    pub event_id: Option<String>,
    /// Ordering key, if any.
    pub ordering_key: Option<String>,
    /// Sequence number, if any.
    pub sequence: Option<i64>,
}

impl Source {
    /// Builds a source, loading its secrets. Every problem is reported,
    /// each naming the source and the field (never a secret value).
    pub fn build(name: &str, config: &SourceConfig) -> Result<Source, Vec<String>> {
        let at = format!("sources.{name}");
        let mut problems = Vec::new();
        // Each secret on its own first, so every unset variable or unreadable
        // file is named, not just the first.
        for (i, r) in config.signature.secrets().iter().enumerate() {
            if let Err(e) = r.load() {
                problems.push(format!("{at}.signature.secrets[{i}]: {e}"));
            }
        }
        let subscription = match &config.subscription {
            None => None,
            Some(sub) => {
                let verify_token = match sub.verify_token.as_ref().map(|r| r.load()) {
                    None => None,
                    Some(Ok(token)) => Some(token),
                    Some(Err(e)) => {
                        problems.push(format!("{at}.subscription.verify_token: {e}"));
                        None
                    }
                };
                Some(Subscription {
                    challenge_param: signature::leak_label(&sub.challenge_param),
                    token_param: signature::leak_label(&sub.token_param),
                    verify_token,
                })
            }
        };
        let allow = match config.allow.as_deref().map(Cidrs::parse) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(bad)) => {
                problems.extend(
                    bad.into_iter()
                        .map(|(i, why)| format!("{at}.allow[{i}]: {why}")),
                );
                None
            }
        };
        let client_ca = match config
            .mtls
            .as_ref()
            .map(|m| ClientCa::load(m, &format!("{at}.mtls")))
        {
            None => None,
            Some(Ok(ca)) => Some(ca),
            Some(Err(e)) => {
                problems.push(e);
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let scheme = signature::build(&config.signature)
            .map_err(|e| vec![format!("{at}.signature.secrets: {e}")])?;
        Ok(Source {
            name: Arc::from(name),
            scheme,
            max_body_bytes: config.max_body_bytes,
            event_id: config.event_id.clone(),
            ordering_key: config.ordering_key.clone(),
            sequence: config.sequence.clone(),
            pointers: pointers(config),
            forward_headers: forward_headers(config),
            allow,
            rate_limit: config
                .rate_limit
                .as_ref()
                .map(|r| TokenBucket::new(r.per_second, r.burst, std::time::Instant::now())),
            url_verification: config.url_verification,
            subscription,
            client_ca,
        })
    }

    /// The source as `ingest poll` needs it: how an event's id, ordering
    /// key and sequence are read, the headers kept, the body limit. None of
    /// what verifies a webhook is loaded (signing secrets, the subscription
    /// token, the mTLS CA, the address list), so the poller is never given
    /// a webhook secret; its `scheme` refuses every signature.
    pub fn for_polling(name: &str, config: &SourceConfig) -> Source {
        Source {
            name: Arc::from(name),
            scheme: Box::new(NotServed),
            max_body_bytes: config.max_body_bytes,
            event_id: config.event_id.clone(),
            ordering_key: config.ordering_key.clone(),
            sequence: config.sequence.clone(),
            pointers: pointers(config),
            forward_headers: forward_headers(config),
            allow: None,
            rate_limit: None,
            url_verification: false,
            subscription: None,
            client_ca: None,
        }
    }

    /// Builds every configured source, reporting every failure at once.
    pub fn build_all(config: &Config) -> Result<HashMap<String, Arc<Source>>, Vec<String>> {
        let mut out = HashMap::new();
        let mut problems = Vec::new();
        for (name, sc) in &config.sources {
            match Source::build(name, sc) {
                Ok(s) => {
                    out.insert(name.clone(), Arc::new(s));
                }
                Err(e) => problems.extend(e),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    fn needs_json(&self) -> bool {
        [&self.event_id, &self.ordering_key, &self.sequence]
            .iter()
            .any(|e| matches!(e, Some(Extract::Pointer(_))))
    }

    /// Takes event id, ordering key and sequence from the headers and body.
    /// A body that is not JSON is not an error here: it is stored raw and the
    /// processors quarantine it with a reason.
    pub fn extract(&self, headers: &HeaderMap, body: &[u8]) -> Extracted {
        let fields = [&self.event_id, &self.ordering_key, &self.sequence];
        let raw = if self.needs_json() {
            self.pointers.raw_values(body)
        } else {
            None
        };
        let get = |i: usize| -> Option<Value> {
            match fields[i].as_ref()? {
                Extract::Pointer(_) => serde_json::from_str(raw.as_ref()?[i]?.get()).ok(),
                Extract::Header(h) => headers
                    .get(h.as_str())?
                    .to_str()
                    .ok()
                    .map(|s| Value::String(s.trim().to_string())),
            }
        };
        let as_id = |v: Value| -> Option<String> {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            (!s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control))
                .then_some(s)
        };
        Extracted {
            event_id: get(0).and_then(as_id),
            ordering_key: get(1).and_then(as_id),
            sequence: get(2).and_then(|v| match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
        }
    }

    /// The allow-listed headers, in the order received, bounded in size.
    pub fn forwarded<'a>(&'a self, headers: &'a HeaderMap) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        let mut budget = MAX_FORWARDED_HEADER_BYTES;
        for name in &self.forward_headers {
            for v in headers.get_all(name) {
                let Ok(value) = v.to_str() else { continue };
                let cost = name.as_str().len() + value.len();
                if cost > budget {
                    return out;
                }
                budget -= cost;
                out.push((name.as_str(), value));
            }
        }
        out
    }
}

/// The JSON pointers among a source's event id, ordering key and
/// sequence, in that order.
fn pointers(config: &SourceConfig) -> Pointers<3> {
    Pointers::new(
        [&config.event_id, &config.ordering_key, &config.sequence].map(|e| match e {
            Some(Extract::Pointer(p)) => Some(p.as_str()),
            _ => None,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        let config = Config::from_toml(
            r#"
            [sources.purple]
            signature = { scheme = "purple", secrets = [{ id = "a", env = "PATH" }] }
            ordering_key = { pointer = "/venue/id" }
            sequence = { pointer = "/sequence" }
            forward_headers = ["User-Agent", "X-Trace"]
            "#,
        )
        .unwrap();
        Source::build("purple", &config.sources["purple"]).unwrap()
    }

    #[test]
    fn a_source_for_polling_needs_no_webhook_secret_and_reads_events_alike() {
        let config = Config::from_toml(
            r#"
            [sources.purple]
            signature = { scheme = "purple", secrets = [{ id = "a", env = "INGEST_TEST_SURELY_UNSET_SECRET" }] }
            ordering_key = { pointer = "/venue/id" }
            sequence = { pointer = "/sequence" }
            forward_headers = ["User-Agent"]
            "#,
        )
        .unwrap();
        let sc = &config.sources["purple"];
        let err = Source::build("purple", sc).err().unwrap().join("; ");
        assert!(
            err.contains("INGEST_TEST_SURELY_UNSET_SECRET"),
            "serving needs the secret: {err}"
        );
        let polled = Source::for_polling("purple", sc);
        let body = br#"{"id":"evt_1","sequence":7,"venue":{"id":"venue-017"}}"#;
        assert_eq!(
            polled.extract(&HeaderMap::new(), body),
            source().extract(&HeaderMap::new(), body)
        );
        assert_eq!(polled.forward_headers, ["user-agent"]);
        assert!(polled.scheme.verify(&HeaderMap::new(), body).is_err());
    }

    #[test]
    fn extracts_from_the_documented_payload() {
        let body = br#"{"id":"evt_01JD5","type":"device_connected","sequence":1042,
            "venue":{"id":"venue-017","name":"Airport Hotel"}}"#;
        let e = source().extract(&HeaderMap::new(), body);
        assert_eq!(
            e,
            Extracted {
                event_id: Some("evt_01JD5".into()),
                ordering_key: Some("venue-017".into()),
                sequence: Some(1042),
            }
        );
    }

    /// A provider's retry of a body without an id re-sends the same bytes:
    /// it must get the same id, so the processors drop it as a duplicate.
    #[test]
    fn a_body_without_an_id_gets_an_id_from_its_source_and_bytes() {
        let body = br#"{"type":"device_connected","venue":{"id":"venue-017"}}"#;
        assert_eq!(source().extract(&HeaderMap::new(), body).event_id, None);
        let id = body_event_id("purple", body);
        // hex(SHA-256("purple" 0x00 body))[..32], computed with Python's hashlib.
        assert_eq!(id, "body-sha256-298650ac2ae67816bff99d7c3b8b4d4e");
        assert_eq!(body_event_id("purple", body), id);
        assert_ne!(body_event_id("purple", &body[..body.len() - 1]), id);
        assert_ne!(body_event_id("purple2", body), id);
        assert!(id.len() <= MAX_ID_LEN);
    }

    #[test]
    fn unusable_values_are_left_out() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let body = format!(r#"{{"id":"{long}","sequence":"nope","venue":{{"id":["a"]}}}}"#);
        assert_eq!(
            source().extract(&HeaderMap::new(), body.as_bytes()),
            Extracted::default()
        );
        assert_eq!(
            source().extract(&HeaderMap::new(), b"not json at all"),
            Extracted::default()
        );
        let deep = "[".repeat(10_000);
        assert_eq!(
            source().extract(&HeaderMap::new(), deep.as_bytes()),
            Extracted::default()
        );
    }

    #[test]
    fn build_names_every_unreadable_secret_and_bad_block() {
        let config = Config::from_toml(
            r#"
            [sources.hub]
            subscription = { verify_token = { id = "t", env = "SOURCE_TEST_UNSET_TOKEN" } }
            signature = { scheme = "purple", secrets = [
                { id = "a", env = "SOURCE_TEST_UNSET_A" },
                { id = "b", env = "PATH" },
                { id = "c", file = "/nonexistent/secret" },
            ] }
            "#,
        )
        .unwrap();
        let problems = Source::build("hub", &config.sources["hub"]).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("sources.hub.signature.secrets[0]: "));
        assert!(problems[0].contains("SOURCE_TEST_UNSET_A is not set"));
        assert!(problems[1].starts_with("sources.hub.signature.secrets[2]: "));
        assert!(problems[2].starts_with("sources.hub.subscription.verify_token: "));
        assert!(problems[2].contains("SOURCE_TEST_UNSET_TOKEN is not set"));
    }

    #[test]
    fn build_wires_allow_list_rate_limit_and_handshakes() {
        let config = Config::from_toml(
            r#"
            [sources.s]
            allow = ["203.0.113.0/24"]
            rate_limit = { per_second = 1.0, burst = 2 }
            url_verification = true
            subscription = { challenge_param = "challenge" }
            signature = { scheme = "purple", secrets = [{ id = "a", env = "PATH" }] }
            "#,
        )
        .unwrap();
        let s = Source::build("s", &config.sources["s"]).unwrap();
        let allow = s.allow.as_ref().unwrap();
        assert!(allow.contains("203.0.113.9".parse().unwrap()));
        assert!(!allow.contains("127.0.0.1".parse().unwrap()));
        let bucket = s.rate_limit.as_ref().unwrap();
        assert!(bucket.try_acquire().is_ok() && bucket.try_acquire().is_ok());
        assert!(bucket.try_acquire().is_err());
        assert!(s.url_verification);
        let sub = s.subscription.as_ref().unwrap();
        assert_eq!(sub.challenge_param, "challenge");
        assert!(sub.verify_token.is_none());
    }

    #[test]
    fn forwards_only_allow_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", "P/1".parse().unwrap());
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("x-trace", "t1".parse().unwrap());
        let s = source();
        let f = s.forwarded(&h);
        let names: Vec<_> = f.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["user-agent", "x-trace"]);
    }
}
