//! How every client of ours reaches the brokers: the typed `kafka.security`
//! section each binary's Kafka section embeds (TLS, SASL), its checks, and
//! [`client_config`], the one function every librdkafka settings builder
//! starts from, so none can forget the security settings.
//!
//! Secrets (SASL password, TLS key password) come only from an environment
//! variable or a file named in the config, never from the config text: the
//! config structs hold the variable's name or the file's path, so their
//! `Debug` and every error name where a secret comes from, never its value.
//! The value is read when a client is built and goes only into librdkafka's
//! settings (whose `Debug` in rdkafka leaves out `sasl.password` and
//! `ssl.key.password`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use serde::Deserialize;

/// Where the security settings sit in every binary's config.
const AT: &str = "kafka.security";

/// TLS and SASL to the brokers (`[kafka.security]`). Absent: plaintext,
/// no authentication.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `plaintext` (default), `ssl` (TLS), `sasl_plaintext` (SASL without
    /// TLS) or `sasl_ssl` (SASL over TLS); librdkafka `security.protocol`.
    #[serde(default)]
    pub protocol: Protocol,
    /// PEM file of the CA certificate(s) the brokers' certificates must
    /// chain to (`ssl.ca.location`). Unset: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for brokers that want mutual TLS
    /// (`ssl.certificate.location`); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (`ssl.key.location`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The environment variable holding the password of an encrypted
    /// `key_file` (`ssl.key.password`).
    #[serde(default)]
    pub key_password_env: Option<String>,
    /// A file holding the password of an encrypted `key_file` (one line).
    #[serde(default)]
    pub key_password_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host connected to
    /// (`ssl.endpoint.identification.algorithm=https`). Default true; turn
    /// it off only for brokers reached by an address their certificate
    /// does not name.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
    /// SASL authentication; required by the `sasl_*` protocols, refused by
    /// the others.
    #[serde(default)]
    pub sasl: Option<Sasl>,
}

const fn yes() -> bool {
    true
}

impl Default for Security {
    /// Plaintext, no SASL (what an absent section means).
    fn default() -> Self {
        Security {
            protocol: Protocol::Plaintext,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password_env: None,
            key_password_file: None,
            verify_hostname: yes(),
            sasl: None,
        }
    }
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS: the password travels in the clear with PLAIN.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl Protocol {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// SASL settings (`[kafka.security.sasl]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` (a user name and a
    /// password) or `OAUTHBEARER` (tokens from an OpenID Connect provider
    /// by the client-credentials grant, fetched and refreshed by librdkafka)
    /// (`sasl.mechanism`).
    pub mechanism: Mechanism,
    /// The user name (`sasl.username`); not a secret. PLAIN and SCRAM.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (its first line; a trailing newline is
    /// not part of it).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OAUTHBEARER: the provider's token endpoint
    /// (`sasl.oauthbearer.token.endpoint.url`), `https://` (or `http://`
    /// on a loopback address, for tests).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// OAUTHBEARER: this client's id at the provider
    /// (`sasl.oauthbearer.client.id`); not a secret.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OAUTHBEARER: the environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// OAUTHBEARER: a file holding the client secret (its first line).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// OAUTHBEARER: the scope asked for (`sasl.oauthbearer.scope`), if the
    /// provider wants one.
    #[serde(default)]
    pub scope: Option<String>,
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Mechanism {
    /// User name and password as they are; use it over TLS only.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens from an OpenID Connect provider.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl Mechanism {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// The librdkafka settings every client of ours starts from: the user's
/// `options` (which [`options_problems`] keeps off security), the brokers,
/// then `security`. A builder adds its own settings after these. Fails,
/// naming the variable or file and never the value, when a secret cannot
/// be read.
pub fn client_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
    security: &Security,
) -> Result<ClientConfig, KafkaError> {
    let mut c = ClientConfig::new();
    for (k, v) in options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers);
    security.apply(&mut c).map_err(KafkaError::ClientCreation)?;
    Ok(c)
}

/// Problems with `kafka.options` keys that belong to `kafka.security`:
/// one line each, naming the key.
pub fn options_problems(options: &BTreeMap<String, String>) -> Vec<String> {
    options
        .keys()
        .filter(|k| security_option(k))
        .map(|k| {
            format!(
                "kafka.options.{k}: TLS and SASL are set with [kafka.security] (secrets from the environment or a file), not options"
            )
        })
        .collect()
}

/// Whether a librdkafka setting is about TLS or SASL.
fn security_option(key: &str) -> bool {
    key == "security.protocol"
        || [
            "ssl.",
            "ssl_",
            "sasl.",
            "enable.ssl.",
            "enable.sasl.",
            "https.",
        ]
        .iter()
        .any(|p| key.starts_with(p))
}

impl Security {
    /// Every problem of the section, one line each naming the field:
    /// combinations that cannot work, files that cannot be read, secrets
    /// that are not there. Reads the files and the environment.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let proto = self.protocol.as_str();
        if self.protocol.tls() {
            for (field, file) in [
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ] {
                if let Some(path) = file
                    && let Err(e) = read_pem(path)
                {
                    p.push(format!("{AT}.{field}: {e}"));
                }
            }
            match (&self.cert_file, &self.key_file) {
                (Some(_), None) => p.push(format!(
                    "{AT}.cert_file: set without key_file; mutual TLS needs both"
                )),
                (None, Some(_)) => p.push(format!(
                    "{AT}.key_file: set without cert_file; mutual TLS needs both"
                )),
                _ => {}
            }
            let has_key_password =
                self.key_password_env.is_some() || self.key_password_file.is_some();
            if has_key_password && self.key_file.is_none() {
                p.push(format!(
                    "{AT}.key_password_env/key_password_file: set without key_file"
                ));
            }
            if let Err(e) = secret(key_password(self)) {
                p.push(e);
            }
        } else {
            for (field, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
                ("key_password_env", self.key_password_env.is_some()),
                ("key_password_file", self.key_password_file.is_some()),
                ("verify_hostname", !self.verify_hostname),
            ] {
                if set {
                    p.push(format!(
                        "{AT}.{field}: a TLS setting, but protocol is {proto} (no TLS); use ssl or sasl_ssl, or remove it"
                    ));
                }
            }
        }
        match (&self.sasl, self.protocol.sasl()) {
            (Some(_), false) => p.push(format!(
                "{AT}.sasl: set, but protocol is {proto} (no SASL); use sasl_plaintext or sasl_ssl, or remove it"
            )),
            (None, true) => p.push(format!(
                "{AT}.protocol: {proto} needs a [kafka.security.sasl] table (mechanism, username, password_env or password_file)"
            )),
            (Some(sasl), true) => p.extend(sasl.problems()),
            (None, false) => {}
        }
        p
    }

    /// Sets the security settings on `c`: what [`Security::problems`]
    /// allows, secrets read now.
    fn apply(&self, c: &mut ClientConfig) -> Result<(), String> {
        c.set("security.protocol", self.protocol.as_str());
        if self.protocol.tls() {
            if let Some(f) = &self.ca_file {
                c.set("ssl.ca.location", path_text(f));
            }
            if let Some(f) = &self.cert_file {
                c.set("ssl.certificate.location", path_text(f));
            }
            if let Some(f) = &self.key_file {
                c.set("ssl.key.location", path_text(f));
            }
            if let Some(pw) = secret(key_password(self))? {
                c.set("ssl.key.password", pw);
            }
            c.set(
                "ssl.endpoint.identification.algorithm",
                if self.verify_hostname {
                    "https"
                } else {
                    "none"
                },
            );
        }
        if let (true, Some(sasl)) = (self.protocol.sasl(), &self.sasl) {
            c.set("sasl.mechanism", sasl.mechanism.as_str());
            if sasl.mechanism == Mechanism::OAuthBearer {
                let secret = secret(client_secret(sasl))?.ok_or_else(|| {
                    format!("{AT}.sasl: OAUTHBEARER needs client_secret_env or client_secret_file")
                })?;
                c.set("sasl.oauthbearer.method", "oidc")
                    .set(
                        "sasl.oauthbearer.token.endpoint.url",
                        sasl.token_endpoint.as_deref().unwrap_or(""),
                    )
                    .set(
                        "sasl.oauthbearer.client.id",
                        sasl.client_id.as_deref().unwrap_or(""),
                    )
                    .set("sasl.oauthbearer.client.secret", secret);
                if let Some(scope) = &sasl.scope {
                    c.set("sasl.oauthbearer.scope", scope);
                }
                return Ok(());
            }
            c.set("sasl.username", sasl.username.as_deref().unwrap_or(""));
            match secret(sasl_password(sasl))? {
                Some(pw) => c.set("sasl.password", pw),
                None => {
                    return Err(format!(
                        "{AT}.sasl: {} needs password_env or password_file",
                        sasl.mechanism.as_str()
                    ));
                }
            };
        }
        Ok(())
    }
}

impl Sasl {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let m = self.mechanism.as_str();
        let oauth_fields = [
            ("token_endpoint", self.token_endpoint.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("scope", self.scope.is_some()),
        ];
        if self.mechanism == Mechanism::OAuthBearer {
            for (field, set) in [
                ("username", self.username.is_some()),
                ("password_env", self.password_env.is_some()),
                ("password_file", self.password_file.is_some()),
            ] {
                if set {
                    p.push(format!(
                        "{AT}.sasl.{field}: OAUTHBEARER takes no user name or password; it uses token_endpoint, client_id and client_secret_env or client_secret_file"
                    ));
                }
            }
            match self.token_endpoint.as_deref() {
                None | Some("") => p.push(format!(
                    "{AT}.sasl.token_endpoint: OAUTHBEARER needs the provider's token endpoint (https://...)"
                )),
                Some(url) if !token_endpoint_ok(url) => p.push(format!(
                    "{AT}.sasl.token_endpoint: {url:?} must be an https:// URL (http:// only to a loopback address)"
                )),
                Some(_) => {}
            }
            if self.client_id.as_deref().is_none_or(str::is_empty) {
                p.push(format!(
                    "{AT}.sasl.client_id: OAUTHBEARER needs the client's id"
                ));
            }
            match secret(client_secret(self)) {
                Ok(Some(_)) => {}
                Ok(None) => p.push(format!(
                    "{AT}.sasl: OAUTHBEARER needs a client secret: set client_secret_env (an environment variable's name) or client_secret_file"
                )),
                Err(e) => p.push(e),
            }
            return p;
        }
        for (field, set) in oauth_fields {
            if set {
                p.push(format!(
                    "{AT}.sasl.{field}: an OAUTHBEARER setting, but the mechanism is {m}"
                ));
            }
        }
        if self.username.as_deref().is_none_or(str::is_empty) {
            p.push(format!("{AT}.sasl.username: {m} needs a user name"));
        }
        match secret(sasl_password(self)) {
            Ok(Some(_)) => {}
            Ok(None) => p.push(format!(
                "{AT}.sasl: {m} needs a password: set password_env (an environment variable's name) or password_file"
            )),
            Err(e) => p.push(e),
        }
        p
    }
}

/// `https://`, or `http://` to a loopback address (a token endpoint in a
/// test): a client secret never crosses a network in the clear.
fn token_endpoint_ok(url: &str) -> bool {
    if url.starts_with("https://") {
        return url.len() > "https://".len();
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where one secret comes from: the fields' names and what they hold.
struct SecretAt<'a> {
    /// The field naming the environment variable, e.g. `sasl.password_env`.
    env_field: &'a str,
    /// The field naming the file.
    file_field: &'a str,
    env: &'a Option<String>,
    file: &'a Option<PathBuf>,
}

/// The SASL password's fields.
fn sasl_password(s: &Sasl) -> SecretAt<'_> {
    SecretAt {
        env_field: "sasl.password_env",
        file_field: "sasl.password_file",
        env: &s.password_env,
        file: &s.password_file,
    }
}

/// The OAUTHBEARER client secret's fields.
fn client_secret(s: &Sasl) -> SecretAt<'_> {
    SecretAt {
        env_field: "sasl.client_secret_env",
        file_field: "sasl.client_secret_file",
        env: &s.client_secret_env,
        file: &s.client_secret_file,
    }
}

/// The TLS key password's fields.
fn key_password(s: &Security) -> SecretAt<'_> {
    SecretAt {
        env_field: "key_password_env",
        file_field: "key_password_file",
        env: &s.key_password_env,
        file: &s.key_password_file,
    }
}

/// A secret from its environment variable or its file (at most one of
/// them): `None` when neither is set. Errors name the field and the
/// variable or file, never the value.
fn secret(at: SecretAt<'_>) -> Result<Option<String>, String> {
    match (at.env, at.file) {
        (Some(_), Some(_)) => Err(format!(
            "{AT}.{}: set {} or {}, not both",
            at.env_field, at.env_field, at.file_field
        )),
        (Some(var), None) => {
            let f = at.env_field;
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                Ok(_) => Err(format!("{AT}.{f}: the environment variable {var} is empty")),
                Err(std::env::VarError::NotPresent) => Err(format!(
                    "{AT}.{f}: the environment variable {var} is not set"
                )),
                Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                    "{AT}.{f}: the environment variable {var} is not UTF-8"
                )),
            }
        }
        (None, Some(path)) => {
            let f = at.file_field;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{AT}.{f}: {} cannot be read: {e}", path.display()))?;
            let line = text.lines().next().unwrap_or("");
            if line.is_empty() {
                Err(format!("{AT}.{f}: {} is empty", path.display()))
            } else {
                Ok(Some(line.to_owned()))
            }
        }
        (None, None) => Ok(None),
    }
}

/// Checks that `path` is a readable PEM file.
fn read_pem(path: &Path) -> Result<(), String> {
    let text =
        std::fs::read(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{} is not PEM (no -----BEGIN line)",
            path.display()
        ));
    }
    Ok(())
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linked librdkafka has what `[kafka.security]` offers: TLS, SASL
    /// (SCRAM, OAUTHBEARER) and OIDC token requests over HTTP. librdkafka's
    /// build leaves out what its machine lacks (OpenSSL's and libcurl's
    /// headers) without failing, and such a binary refuses those settings
    /// only at start, with an error that repeats the refused setting's
    /// value: a secret. `vendor/rdkafka-sys/build.rs` now stops such a
    /// build; this checks the library that was linked.
    #[test]
    fn librdkafka_is_built_with_tls_sasl_and_oidc() {
        let required = "ssl,sasl,sasl_plain,sasl_scram,sasl_oauthbearer,http,oidc";
        let mut c = ClientConfig::new();
        c.set("builtin.features", required);
        if let Err(e) = c.create_native_config() {
            panic!("librdkafka lacks a feature [kafka.security] needs: {e}");
        }
    }

    fn parse(text: &str) -> Security {
        crate::parse_config::<Security>(text).expect("parses")
    }

    /// A temporary PEM file and a path inside the same folder that is not
    /// there.
    fn pem() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        (dir, p)
    }

    #[test]
    fn no_section_is_plaintext_and_sets_nothing_else() {
        let s = Security::default();
        assert!(s.problems().is_empty());
        let c = client_config("b:9092", &BTreeMap::new(), &s).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("ssl.ca.location"), None);
        assert_eq!(c.get("sasl.mechanism"), None);
    }

    #[test]
    fn ssl_with_a_ca_sets_the_ca_and_hostname_checks() {
        let (_d, ca) = pem();
        let s = parse(&format!(
            "protocol = \"ssl\"\nca_file = {:?}",
            ca.display().to_string()
        ));
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let c = client_config("b:9093", &BTreeMap::new(), &s).unwrap();
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("ssl.ca.location"), ca.to_str());
        assert_eq!(
            c.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
    }

    #[test]
    fn a_missing_or_non_pem_tls_file_is_named() {
        let (d, ca) = pem();
        let gone = d.path().join("gone.pem");
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let s = Security {
            protocol: Protocol::Ssl,
            ca_file: Some(gone.clone()),
            cert_file: Some(junk),
            key_file: Some(ca),
            ..Security::default()
        };
        let p = s.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("kafka.security.ca_file: ")
                && p[0].contains("gone.pem cannot be read"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("kafka.security.cert_file: ") && p[1].contains("is not PEM"),
            "{p:?}"
        );
    }

    #[test]
    fn a_certificate_needs_its_key_and_a_key_password_needs_the_key() {
        let (_d, ca) = pem();
        let s = Security {
            protocol: Protocol::Ssl,
            cert_file: Some(ca),
            key_password_env: Some("PLUMBING_TEST_KEY_PW_UNSET".into()),
            ..Security::default()
        };
        let p = s.problems();
        assert!(
            p.iter()
                .any(|l| l
                    == "kafka.security.cert_file: set without key_file; mutual TLS needs both"),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l.starts_with(
                "kafka.security.key_password_env/key_password_file: set without key_file"
            )),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l == "kafka.security.key_password_env: the environment variable PLUMBING_TEST_KEY_PW_UNSET is not set"), "{p:?}");
    }

    #[test]
    fn tls_settings_without_tls_are_refused() {
        let (_d, ca) = pem();
        for proto in ["plaintext", "sasl_plaintext"] {
            let s = Security {
                protocol: if proto == "plaintext" {
                    Protocol::Plaintext
                } else {
                    Protocol::SaslPlaintext
                },
                ca_file: Some(ca.clone()),
                verify_hostname: false,
                ..Security::default()
            };
            let p = s.problems();
            assert!(
                p.iter().any(|l| l.starts_with(&format!(
                    "kafka.security.ca_file: a TLS setting, but protocol is {proto} (no TLS)"
                ))),
                "{p:?}"
            );
            assert!(
                p.iter()
                    .any(|l| l.starts_with("kafka.security.verify_hostname: a TLS setting")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_sasl_protocol_needs_a_sasl_table_and_the_others_refuse_one() {
        let p = parse("protocol = \"sasl_ssl\"").problems();
        assert_eq!(
            p,
            [
                "kafka.security.protocol: sasl_ssl needs a [kafka.security.sasl] table (mechanism, username, password_env or password_file)"
            ]
        );
        for proto in ["plaintext", "ssl"] {
            let p = parse(&format!(
                "protocol = \"{proto}\"\nsasl = {{ mechanism = \"PLAIN\", username = \"u\", password_env = \"X\" }}"
            ))
            .problems();
            assert_eq!(
                p,
                [format!(
                    "kafka.security.sasl: set, but protocol is {proto} (no SASL); use sasl_plaintext or sasl_ssl, or remove it"
                )]
            );
        }
    }

    #[test]
    fn a_mechanism_without_credentials_is_refused() {
        let p = parse("protocol = \"sasl_plaintext\"\nsasl = { mechanism = \"SCRAM-SHA-512\" }")
            .problems();
        assert_eq!(
            p,
            [
                "kafka.security.sasl.username: SCRAM-SHA-512 needs a user name",
                "kafka.security.sasl: SCRAM-SHA-512 needs a password: set password_env (an environment variable's name) or password_file",
            ]
        );
        let s = parse(
            "protocol = \"sasl_plaintext\"\nsasl = { mechanism = \"PLAIN\", username = \"u\" }",
        );
        let e = client_config("b:1", &BTreeMap::new(), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.security.sasl: PLAIN needs password_env or password_file"),
            "{e}"
        );
    }

    #[test]
    fn a_password_comes_from_its_file_or_variable_and_is_never_printed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cret-from-file\n").unwrap();
        let s = parse(&format!(
            "protocol = \"sasl_plaintext\"\nsasl = {{ mechanism = \"SCRAM-SHA-256\", username = \"ingest\", password_file = {:?} }}",
            f.display().to_string()
        ));
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let c = client_config("b:1", &BTreeMap::new(), &s).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-file"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.username"), Some("ingest"));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");

        // SAFETY: this test's own variable; no other test reads it.
        unsafe { std::env::set_var("PLUMBING_TEST_SASL_PW", "s3cret-from-env") };
        let s = parse(
            "protocol = \"sasl_ssl\"\nsasl = { mechanism = \"PLAIN\", username = \"u\", password_env = \"PLUMBING_TEST_SASL_PW\" }",
        );
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let c = client_config("b:1", &BTreeMap::new(), &s).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-env"));
        assert!(!format!("{s:?}{c:?}").contains("s3cret"));
    }

    #[test]
    fn an_unreadable_secret_names_its_source_not_a_value() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let cases = [
            (
                "password_env = \"PLUMBING_TEST_PW_NOT_SET\"".to_string(),
                "kafka.security.sasl.password_env: the environment variable PLUMBING_TEST_PW_NOT_SET is not set".to_string(),
            ),
            (
                format!("password_file = {:?}", d.path().join("nope").display().to_string()),
                format!("kafka.security.sasl.password_file: {} cannot be read", d.path().join("nope").display()),
            ),
            (
                format!("password_file = {:?}", empty.display().to_string()),
                format!("kafka.security.sasl.password_file: {} is empty", empty.display()),
            ),
            (
                format!("password_env = \"X\", password_file = {:?}", empty.display().to_string()),
                "kafka.security.sasl.password_env: set sasl.password_env or sasl.password_file, not both".to_string(),
            ),
        ];
        for (field, want) in cases {
            let s = parse(&format!(
                "protocol = \"sasl_plaintext\"\nsasl = {{ mechanism = \"PLAIN\", username = \"u\", {field} }}"
            ));
            let p = s.problems();
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with(&want), "{p:?} / {want}");
            let e = client_config("b:1", &BTreeMap::new(), &s)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&want), "{e}");
        }
    }

    #[test]
    fn oauthbearer_needs_an_https_endpoint_a_client_id_and_a_secret() {
        let s = parse("protocol = \"sasl_ssl\"\nsasl = { mechanism = \"OAUTHBEARER\" }");
        let p = s.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("kafka.security.sasl.token_endpoint: OAUTHBEARER needs"));
        assert!(p[1].starts_with("kafka.security.sasl.client_id:"));
        assert!(p[2].contains("client_secret_env"));
        assert!(client_config("b:1", &BTreeMap::new(), &s).is_err());

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, "s3cr3t-client\n").unwrap();
        let good = |endpoint: &str| {
            parse(&format!(
                "protocol = \"sasl_ssl\"\nsasl = {{ mechanism = \"OAUTHBEARER\", token_endpoint = \"{endpoint}\", client_id = \"pipeline\", client_secret_file = {:?}, scope = \"kafka\" }}",
                secret.display()
            ))
        };
        let s = good("https://login.example.com/oauth2/token");
        assert_eq!(s.problems(), Vec::<String>::new());
        let c = client_config("b:1", &BTreeMap::new(), &s).unwrap();
        assert_eq!(c.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(c.get("sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(c.get("sasl.oauthbearer.client.id"), Some("pipeline"));
        assert_eq!(
            c.get("sasl.oauthbearer.client.secret"),
            Some("s3cr3t-client")
        );
        assert_eq!(c.get("sasl.oauthbearer.scope"), Some("kafka"));
        assert_eq!(
            c.get("sasl.oauthbearer.token.endpoint.url"),
            Some("https://login.example.com/oauth2/token")
        );
        assert_eq!(c.get("sasl.password"), None);
        assert!(!format!("{s:?}").contains("s3cr3t"), "the secret in Debug");

        // The client secret never crosses a network in the clear.
        for (url, ok) in [
            ("http://login.example.com/token", false),
            ("http://10.0.0.1:8080/token", false),
            ("ftp://x/token", false),
            ("https://", false),
            ("http://127.0.0.1:4000/token", true),
            ("http://localhost/token", true),
            ("http://[::1]:80/t", true),
        ] {
            let p = good(url).problems();
            assert_eq!(p.is_empty(), ok, "{url}: {p:?}");
        }

        // Each mechanism's fields only with that mechanism.
        let mixed = parse(&format!(
            "protocol = \"sasl_ssl\"\nsasl = {{ mechanism = \"OAUTHBEARER\", token_endpoint = \"https://x/t\", client_id = \"c\", client_secret_file = {:?}, username = \"u\" }}",
            secret.display()
        ));
        let p = mixed.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("kafka.security.sasl.username: OAUTHBEARER takes no"));
        let scram = parse(
            "protocol = \"sasl_ssl\"\nsasl = { mechanism = \"SCRAM-SHA-512\", username = \"u\", password_env = \"PATH\", client_id = \"c\" }",
        );
        let p = scram.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("kafka.security.sasl.client_id: an OAUTHBEARER setting"));
    }

    #[test]
    fn an_unknown_protocol_or_mechanism_is_a_config_error() {
        let e = crate::parse_config::<Security>("protocol = \"tls\"").unwrap_err();
        assert!(e[0].starts_with("protocol: "), "{e:?}");
        let e = crate::parse_config::<Security>(
            "protocol = \"sasl_ssl\"\nsasl = { mechanism = \"GSSAPI\" }",
        )
        .unwrap_err();
        assert!(e[0].starts_with("sasl.mechanism: "), "{e:?}");
        let e = crate::parse_config::<Security>("password = \"x\"").unwrap_err();
        assert!(e[0].contains("password"), "{e:?}");
    }

    #[test]
    fn security_settings_in_options_are_refused_and_others_pass() {
        let options: BTreeMap<String, String> = [
            ("security.protocol", "ssl"),
            ("sasl.password", "x"),
            ("ssl.ca.location", "/ca.pem"),
            ("enable.ssl.certificate.verification", "false"),
            ("linger.ms", "5"),
            ("fetch.wait.max.ms", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let p = options_problems(&options);
        let keys: Vec<&str> = p.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "kafka.options.enable.ssl.certificate.verification",
                "kafka.options.sasl.password",
                "kafka.options.security.protocol",
                "kafka.options.ssl.ca.location",
            ]
        );
        assert!(!p.iter().any(|l| l.contains("\"x\"")));
    }

    #[test]
    fn the_security_settings_win_over_options() {
        // Refused at load; should one get through, the typed section still
        // decides.
        let options = BTreeMap::from([("security.protocol".to_owned(), "ssl".to_owned())]);
        let c = client_config("b:1", &options, &Security::default()).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
    }
}
