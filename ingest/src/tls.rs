//! TLS on the webhook port (`server.tls`).
//!
//! The certificate chain and private key are read from two PEM files at
//! start, and checked: a file missing or unreadable, no certificate, a
//! certificate that is not X.509, expired or not yet valid, no private key,
//! or a key that does not match the certificate is refused, naming the
//! field, before anything listens. What is served: TLS 1.3 and 1.2 only,
//! rustls' default cipher suites (AEAD with forward secrecy), ALPN `h2` and
//! `http/1.1`.
//!
//! [`Tls::watch`] reads the two files again every `reload_interval`. A
//! changed pair is used once it has stayed the same for one more interval
//! (so a rotation that writes the two files one after the other is not
//! taken half-way), and only if it passes the start-up checks: new
//! connections then get it, open ones keep theirs. A bad pair is refused
//! with a warning and the previous one stays in use. Both outcomes count
//! in `ingest_tls_reloads_total{outcome}`.
//!
//! The key's bytes are never logged: messages about the key file name the
//! field and the path only.
//!
//! Client certificates (a source's `mtls = { ca_file }`): when any source
//! has one, the handshake asks every client for a certificate but requires
//! none, and checks only that the client holds the key of the one it
//! presents ([`RequestClientCert`]). The chain goes with each request
//! ([`PeerCertificates`]), and a source with `mtls` checks it against its
//! own CA ([`ClientCa`]) before the body is read: one CA cannot open
//! another source.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// `server.tls`: serve the webhook port over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1). Its content is never logged.
    pub key_file: PathBuf,
    /// How often the two files are read for a new pair (a reload takes
    /// effect within two intervals).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

const fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// A source's `mtls`: its requests must come with a client certificate
/// that chains to one of these CAs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// PEM file with the CA certificates the source's client certificates
    /// must chain to. Read at start.
    pub ca_file: PathBuf,
}

/// The certificate chain the client presented on this request's
/// connection (end entity first), put in each request's extensions by the
/// connection loop. Only proof of the key was checked at the handshake.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// One source's client CAs: checks a presented chain.
#[derive(Debug)]
pub struct ClientCa {
    /// webpki's verifier over these CAs only.
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Reads and checks `mtls.ca_file`; `at` is where the table is
    /// (`sources.NAME.mtls`).
    pub fn load(config: &MtlsConfig, at: &str) -> Result<ClientCa, String> {
        let at = format!("{at}.ca_file");
        let path = config.ca_file.display();
        let pem =
            std::fs::read(&config.ca_file).map_err(|e| format!("{at}: cannot read {path}: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{at}: {path} is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{at}: no PEM certificate in {path}"));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "{at}: certificate {} in {path} is not a usable CA: {e}",
                    i + 1
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("{at}: {path}: {e}"))?;
        Ok(ClientCa { verifier })
    }

    /// Whether `chain` (end entity first) is valid now and chains to
    /// these CAs for client authentication.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// Asks each client for a certificate, requires none, and at the
/// handshake checks only that the client holds the key of the certificate
/// it presents: whether the chain is good is each source's question
/// ([`ClientCa`]), so a request to a source without `mtls` is not refused
/// for a certificate it never asked for.
#[derive(Debug)]
pub struct RequestClientCert {
    /// The signature algorithms accepted for that proof.
    algorithms: WebPkiSupportedAlgorithms,
}

impl RequestClientCert {
    fn new() -> RequestClientCert {
        RequestClientCert {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl TlsConfig {
    /// The checks that need no file; `at` is where this table is
    /// (`server.tls`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        for (field, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                p.push(format!("{at}.{field}: must name a PEM file"));
            }
        }
        if self.reload_interval < Duration::from_millis(100)
            || self.reload_interval > Duration::from_secs(3600)
        {
            p.push(format!(
                "{at}.reload_interval: must be between 100ms and 1h"
            ));
        }
        p
    }
}

/// The webhook port's TLS: the settings new connections get, and what is
/// needed to reload them.
#[derive(Clone)]
pub struct Tls {
    /// The settings now; a reload swaps them, a connection takes a copy of
    /// the reference at accept.
    current: Arc<ArcSwap<ServerConfig>>,
    /// The files and the reload interval.
    config: TlsConfig,
    /// Where the table is in the configuration, for messages.
    at: String,
    /// A digest of the two files' contents in use now.
    in_use: [u8; 32],
    /// Whether clients are asked for a certificate (some source has
    /// `mtls`).
    ask_client_cert: bool,
}

impl Tls {
    /// Reads and checks the two files; `at` is where the table is
    /// (`server.tls`). Every problem is returned, one line each naming the
    /// field. With `ask_client_cert` (some source has `mtls`), clients are
    /// asked for a certificate (see [`RequestClientCert`]).
    pub fn load(config: &TlsConfig, at: &str, ask_client_cert: bool) -> Result<Tls, Vec<String>> {
        let (cert, key) = read_files(config, at)?;
        let server = server_config(config, at, &cert, &key, ask_client_cert, SystemTime::now())?;
        Ok(Tls {
            current: Arc::new(ArcSwap::from_pointee(server)),
            config: config.clone(),
            at: at.to_string(),
            in_use: digest(&cert, &key),
            ask_client_cert,
        })
    }

    /// An acceptor with the settings now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reads the files every `reload_interval` until `stop` changes and
    /// swaps in a changed pair that passes the checks (see the module
    /// docs).
    pub async fn watch(self, metrics: Metrics, mut stop: watch::Receiver<bool>) {
        let mut in_use = self.in_use;
        // The contents seen changed at the last reading, not used yet.
        let mut settling: Option<[u8; 32]> = None;
        // The last contents refused: not tried (nor counted) again.
        let mut refused: Option<[u8; 32]> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.reload_interval) => {}
                _ = stop.changed() => return,
            }
            let read = read_files(&self.config, &self.at);
            let seen = match &read {
                Ok((cert, key)) => digest(cert, key),
                Err(problems) => digest(problems.join("\n").as_bytes(), b"unreadable"),
            };
            if seen == in_use {
                settling = None;
                continue;
            }
            if settling != Some(seen) {
                settling = Some(seen);
                continue;
            }
            if refused == Some(seen) {
                continue;
            }
            let built = read.and_then(|(cert, key)| {
                server_config(
                    &self.config,
                    &self.at,
                    &cert,
                    &key,
                    self.ask_client_cert,
                    SystemTime::now(),
                )
            });
            match built {
                Ok(server) => {
                    self.current.store(Arc::new(server));
                    in_use = seen;
                    settling = None;
                    reloaded(&metrics, &self.at, Ok(()));
                }
                Err(problems) => {
                    refused = Some(seen);
                    reloaded(&metrics, &self.at, Err(&problems));
                }
            }
        }
    }
}

/// Counts and logs one reload's outcome, from one place.
fn reloaded(metrics: &Metrics, at: &str, outcome: Result<(), &[String]>) {
    match outcome {
        Ok(()) => {
            metrics.tls_reloads.with_label_values(&["ok"]).inc();
            tracing::info!("{at}: new certificate and key in use for new connections");
        }
        Err(problems) => {
            metrics.tls_reloads.with_label_values(&["refused"]).inc();
            tracing::warn!(
                "{at}: new certificate and key refused, the previous ones stay in use: {}",
                problems.join("; ")
            );
        }
    }
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// The two files' bytes, or why they cannot be read.
fn read_files(config: &TlsConfig, at: &str) -> Result<(Vec<u8>, Vec<u8>), Vec<String>> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| format!("{at}.{field}: cannot read {}: {e}", path.display()))
    };
    match (
        read("cert_file", &config.cert_file),
        read("key_file", &config.key_file),
    ) {
        (Ok(cert), Ok(key)) => Ok((cert, key)),
        (cert, key) => Err([cert.err(), key.err()].into_iter().flatten().collect()),
    }
}

/// Builds the rustls settings from the files' contents, checked as of
/// `now`.
fn server_config(
    config: &TlsConfig,
    at: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
    ask_client_cert: bool,
    now: SystemTime,
) -> Result<ServerConfig, Vec<String>> {
    let cert_at = format!("{at}.cert_file");
    let key_at = format!("{at}.key_file");
    let cert_path = config.cert_file.display();
    let key_path = config.key_file.display();
    let mut p = Vec::new();
    let certs = match CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => {
            p.push(format!("{cert_at}: no PEM certificate in {cert_path}"));
            certs
        }
        Ok(certs) => certs,
        Err(e) => {
            p.push(format!("{cert_at}: {cert_path} is not valid PEM: {e}"));
            Vec::new()
        }
    };
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (i, cert) in certs.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("certificate {} (an intermediate)", i + 1)
        };
        match validity(cert) {
            None => p.push(format!(
                "{cert_at}: {which} in {cert_path} is not an X.509 certificate"
            )),
            Some((_, not_after)) if not_after < now_secs => p.push(format!(
                "{cert_at}: {which} in {cert_path} expired at {}",
                rfc3339(not_after)
            )),
            Some((not_before, _)) if not_before > now_secs => p.push(format!(
                "{cert_at}: {which} in {cert_path} is not valid before {}",
                rfc3339(not_before)
            )),
            Some(_) => {}
        }
    }
    // The key's own parse errors may quote its lines: say what is wrong
    // without them.
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => Some(key),
        Err(pem::Error::NoItemsFound) => {
            p.push(format!(
                "{key_at}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in {key_path}"
            ));
            None
        }
        Err(_) => {
            p.push(format!("{key_at}: {key_path} is not valid PEM"));
            None
        }
    };
    let Some(key) = key else { return Err(p) };
    if !p.is_empty() {
        return Err(p);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![format!("{at}: the TLS settings cannot be built: {e}")])?;
    let builder = if ask_client_cert {
        builder.with_client_cert_verifier(Arc::new(RequestClientCert::new()))
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        vec![match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{key_at}: the private key in {key_path} does not match the certificate in {cert_at} ({cert_path})"
            ),
            rustls::Error::InvalidCertificate(e) => {
                format!("{cert_at}: the certificate in {cert_path} is not usable: {e}")
            }
            _ => format!(
                "{key_at}: the private key in {key_path} is not usable (RSA, ECDSA or Ed25519 expected)"
            ),
        }]
    })?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(server)
}

fn rfc3339(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(s) => humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .to_string(),
        Err(_) => format!("{secs} seconds after 1970"),
    }
}

/// A certificate's validity, (not before, not after) in seconds since
/// 1970, read from its DER; `None` when it does not parse that far. Only
/// the fields before the validity are walked: the rest is rustls' and
/// webpki's to check.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (cert, _) = der_take(der, 0x30)?;
    let (tbs, _) = der_take(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_take(rest, 0xa0)?.1; // [0] version
    }
    let (_, rest) = der_take(rest, 0x02)?; // serialNumber
    let (_, rest) = der_take(rest, 0x30)?; // signature algorithm
    let (_, rest) = der_take(rest, 0x30)?; // issuer
    let (validity, _) = der_take(rest, 0x30)?;
    let (not_before, rest) = der_time(validity)?;
    let (not_after, _) = der_time(rest)?;
    Some((not_before, not_after))
}

/// Splits one DER element tagged `tag` off `input`: its content and what
/// follows it.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len, rest) = rest.split_at(n);
        (
            len.iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`),
/// as X.509 requires them (RFC 5280 §4.1.2.5), in seconds since 1970.
fn der_time(input: &[u8]) -> Option<(i64, &[u8])> {
    let tag = *input.first()?;
    let (text, rest) = der_take(input, tag)?;
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, digits) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| digits[i..i + 2].parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    /// A self-signed certificate for `localhost` valid from the first to
    /// the second year (1 January each): its PEM, its key's PEM, its DER.
    fn self_signed(from: i32, to: i32) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsConfig {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        TlsConfig {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            reload_interval: Duration::from_millis(100),
        }
    }

    fn problems(config: &TlsConfig) -> String {
        match Tls::load(config, "server.tls", false) {
            Ok(_) => String::new(),
            Err(p) => p.join("\n"),
        }
    }

    #[test]
    fn a_good_pair_loads_with_alpn_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = self_signed(2020, 2200);
        let tls = Tls::load(&files(dir.path(), &cert, &key), "server.tls", false).unwrap();
        let server = tls.current.load_full();
        assert_eq!(
            server.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn every_problem_names_its_field_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = self_signed(2020, 2200);
        let good = files(dir.path(), &cert, &key);

        let missing = TlsConfig {
            cert_file: dir.path().join("absent.crt"),
            key_file: dir.path().join("absent.key"),
            ..good.clone()
        };
        let all = problems(&missing);
        assert!(all.contains("server.tls.cert_file: cannot read"), "{all}");
        assert!(all.contains("server.tls.key_file: cannot read"), "{all}");

        let all = problems(&files(dir.path(), "hello", &key));
        assert!(
            all.contains("server.tls.cert_file: no PEM certificate"),
            "{all}"
        );

        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let all = problems(&files(dir.path(), not_x509, &key));
        assert!(
            all.contains("server.tls.cert_file: the certificate"),
            "{all}"
        );
        assert!(all.contains("is not an X.509 certificate"), "{all}");

        let (expired, expired_key, _) = self_signed(2020, 2021);
        let all = problems(&files(dir.path(), &expired, &expired_key));
        assert!(
            all.contains("server.tls.cert_file: the certificate")
                && all.contains("expired at 2021-01-01T00:00:00Z"),
            "{all}"
        );

        let (early, early_key, _) = self_signed(2090, 2091);
        let all = problems(&files(dir.path(), &early, &early_key));
        assert!(
            all.contains("is not valid before 2090-01-01T00:00:00Z"),
            "{all}"
        );

        let all = problems(&files(dir.path(), &cert, &cert));
        assert!(
            all.contains("server.tls.key_file: no PEM private key"),
            "{all}"
        );

        let (_, other_key, _) = self_signed(2020, 2200);
        let all = problems(&files(dir.path(), &cert, &other_key));
        assert!(
            all.contains("server.tls.key_file: the private key in")
                && all.contains("does not match the certificate in server.tls.cert_file"),
            "{all}"
        );
        let secret_line = other_key.lines().nth(1).unwrap();
        assert!(!all.contains(secret_line), "{all}");

        // A key PEM cut short: its lines are not quoted back.
        let cut = &key[..key.len() / 2];
        let all = problems(&files(dir.path(), &cert, cut));
        assert!(all.contains("server.tls.key_file"), "{all}");
        assert!(!all.contains(key.lines().nth(1).unwrap()), "{all}");
    }

    #[test]
    fn validity_is_read_from_the_der_and_garbage_never_panics() {
        let (_, _, der) = self_signed(2020, 2021);
        assert_eq!(validity(&der), Some((1_577_836_800, 1_609_459_200)));
        // After 2049, X.509 dates are GeneralizedTime.
        let (_, _, der) = self_signed(2049, 2090);
        assert_eq!(validity(&der), Some((2_493_072_000, 3_786_912_000)));
        for n in 0..der.len() {
            let _ = validity(&der[..n]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = validity(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    /// A CA, and a client certificate it signed valid from `from` to `to`
    /// (1 January each): the CA's PEM and the client's DER.
    fn client_chain(from: i32, to: i32) -> (String, Vec<u8>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["sender.example".to_string()]).unwrap();
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.der().to_vec())
    }

    #[test]
    fn a_client_ca_takes_only_chains_to_itself_valid_now() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, client) = client_chain(2020, 2200);
        let (other_ca_pem, other_client) = client_chain(2020, 2200);
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let config = MtlsConfig {
            ca_file: dir.path().join("ca.pem"),
        };
        let ca = ClientCa::load(&config, "sources.s.mtls").unwrap();
        let chain = |der: &[u8]| vec![CertificateDer::from(der.to_vec())];
        assert!(ca.verifies(&chain(&client)));
        assert!(!ca.verifies(&chain(&other_client)), "another CA's client");
        assert!(!ca.verifies(&[]), "no certificate");
        let (_, _, self_signed_der) = self_signed(2020, 2200);
        assert!(!ca.verifies(&chain(&self_signed_der)));
        let _ = other_ca_pem;

        // Expired, from the right CA: refused too.
        let (ca_pem, expired) = client_chain(2020, 2021);
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let ca = ClientCa::load(&config, "sources.s.mtls").unwrap();
        assert!(!ca.verifies(&chain(&expired)));
    }

    #[test]
    fn client_ca_file_problems_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let config = MtlsConfig {
            ca_file: dir.path().join("absent.pem"),
        };
        let e = ClientCa::load(&config, "sources.s.mtls").unwrap_err();
        assert!(e.starts_with("sources.s.mtls.ca_file: cannot read"), "{e}");
        std::fs::write(dir.path().join("absent.pem"), "not pem").unwrap();
        let e = ClientCa::load(&config, "sources.s.mtls").unwrap_err();
        assert!(
            e.starts_with("sources.s.mtls.ca_file: no PEM certificate"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_changed_pair_is_swapped_in_and_a_bad_one_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = self_signed(2020, 2200);
        let config = files(dir.path(), &cert, &key);
        let tls = Tls::load(&config, "server.tls", false).unwrap();
        let metrics = Metrics::new().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = tokio::spawn(tls.clone().watch(metrics.clone(), stop_rx));
        let count = |outcome: &str| metrics.tls_reloads.with_label_values(&[outcome]).get();
        let first = tls.current.load_full();

        async fn until(what: impl Fn() -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !what() {
                assert!(tokio::time::Instant::now() < deadline, "timed out");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let (cert2, key2, _) = self_signed(2020, 2200);
        files(dir.path(), &cert2, &key2);
        until(|| count("ok") == 1).await;
        let second = tls.current.load_full();
        assert!(!Arc::ptr_eq(&first, &second));

        // A certificate its key does not match: refused once, the second
        // pair kept.
        let (cert3, _, _) = self_signed(2020, 2200);
        files(dir.path(), &cert3, &key2);
        until(|| count("refused") == 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            count("refused"),
            1,
            "the same bad pair is not counted again"
        );
        assert_eq!(count("ok"), 1);
        assert!(Arc::ptr_eq(&second, &tls.current.load_full()));

        stop_tx.send(true).unwrap();
        watcher.await.unwrap();
    }
}
