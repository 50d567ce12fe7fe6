//! TLS in ingest (`server.tls`), end to end: the real binary and a real
//! tansu broker, a test CA and server certificates made here (rcgen).
//!
//! What is promised: signed webhooks are accepted over TLS with HTTP/1.1
//! and HTTP/2 (ALPN), from Rust clients and from curl; plain HTTP on the
//! TLS port gets nothing accepted; a certificate rotated on disk is picked
//! up for new connections while requests flow, none of them failing and
//! open connections kept; a bad new pair is refused and the old one kept;
//! an expired certificate or a key that does not match stops the start
//! with a message naming the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    Broker, Ingest, binary, free_port, metric_sum, purple_config, purple_event, purple_signature,
    read_topic, scrape,
};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;

const SECRET: &str = "tls-e2e-secret";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_SECRET", SECRET)]
}

/// A test CA that signs server certificates for `localhost` and
/// `127.0.0.1`, and the folder their files are written to.
struct Pki {
    /// Signs the server certificates.
    ca: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what the clients trust.
    ca_pem: String,
    /// Holds the PEM files.
    dir: tempfile::TempDir,
}

/// One server certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    /// The certificate's DER, to compare with what a client was shown.
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "ingest e2e test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    /// A server certificate valid from `days_from_now.0` to
    /// `days_from_now.1` days from now.
    fn leaf(&self, name: &str, days_from_now: (i64, i64)) -> Leaf {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, name);
        let now = rcgen::date_time_ymd(2000, 1, 1)
            + (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                - Duration::from_secs(946_684_800));
        let shift = |days: i64| {
            let by = Duration::from_secs(days.unsigned_abs() * 86_400);
            if days < 0 { now - by } else { now + by }
        };
        params.not_before = shift(days_from_now.0);
        params.not_after = shift(days_from_now.1);
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("server certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client certificate (for TLS client authentication), PEM, with its
    /// key after it: what reqwest's `Identity::from_pem` and curl's
    /// `--cert` take.
    fn client(&self, name: &str) -> String {
        let key = KeyPair::generate().expect("client key");
        let mut params =
            CertificateParams::new(vec![format!("{name}.example")]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the pair where ingest reads it: the certificate, then the
    /// key, each in place (not renamed in), as a careless rotation would.
    fn install(&self, leaf: &Leaf) {
        std::fs::write(self.path("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(self.path("tls.key"), &leaf.key_pem).unwrap();
    }

    fn ca_path(&self) -> PathBuf {
        let p = self.path("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// The `[server]` lines that turn TLS on with these files.
    fn server_lines(&self, admin_port: u16) -> String {
        format!(
            "admin_listen = \"127.0.0.1:{admin_port}\"\ntls = {{ cert_file = {:?}, key_file = {:?}, reload_interval = \"200ms\" }}",
            self.path("tls.crt"),
            self.path("tls.key"),
        )
    }
}

/// A reqwest client over HTTP/1.1 that trusts only the test CA, opening a
/// new connection for each request when `fresh`.
fn h1_client(pki: &Pki, fresh: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .http1_only()
        .timeout(Duration::from_secs(10));
    if fresh {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().expect("TLS client")
}

/// What one request over TLS got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    version: String,
    /// The server certificate the connection was shown (DER).
    peer: Vec<u8>,
    error: Option<String>,
}

async fn post_h1(client: &reqwest::Client, url: &str, id: &str) -> Answer {
    let body = purple_event(id, "venue-tls", 1);
    let sig = purple_signature(SECRET, &body);
    match client
        .post(url)
        .header("content-type", "application/json")
        .header("x-purple-signature", sig)
        .body(body)
        .send()
        .await
    {
        Ok(r) => Answer {
            status: r.status().as_u16(),
            version: format!("{:?}", r.version()),
            peer: r
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate())
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            error: None,
        },
        Err(e) => Answer {
            status: 0,
            version: String::new(),
            peer: Vec::new(),
            error: Some(format!("{e:?}")),
        },
    }
}

/// A tokio-rustls connector that trusts only the test CA and offers
/// `alpn`.
fn connector(pki: &Pki, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One signed webhook over HTTP/2 (ALPN `h2`), with tokio-rustls and the
/// h2 crate: answers the status, the ALPN protocol and the peer
/// certificate.
async fn post_h2(pki: &Pki, addr: std::net::SocketAddr, id: &str) -> Answer {
    let connector = connector(pki, b"h2");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    let version = String::from_utf8_lossy(conn.alpn_protocol().unwrap_or_default()).into_owned();
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (client, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 connection ready");
    let body = purple_event(id, "venue-tls", 1);
    let request = http::Request::post(format!("https://localhost:{}/webhooks/purple", addr.port()))
        .header("content-type", "application/json")
        .header("x-purple-signature", purple_signature(SECRET, &body))
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(bytes::Bytes::from(body), true).unwrap();
    let response = response.await.expect("h2 response");
    Answer {
        status: response.status().as_u16(),
        version,
        peer,
        error: None,
    }
}

/// One signed webhook with curl (`--http1.1` or `--http2`): answers the
/// status and the HTTP version curl reports.
fn post_curl(pki: &Pki, url: &str, id: &str, version_flag: &str) -> (String, String) {
    let body = purple_event(id, "venue-tls", 1);
    let body_path = pki.path(&format!("{id}.json"));
    std::fs::write(&body_path, &body).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(pki.ca_path())
        .arg(version_flag)
        .args(["-H", "content-type: application/json"])
        .arg("-H")
        .arg(format!(
            "x-purple-signature: {}",
            purple_signature(SECRET, &body)
        ))
        .arg("--data-binary")
        .arg(format!("@{}", body_path.display()))
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, version) = text.split_once(' ').unwrap_or((&text, ""));
    assert!(
        out.status.success(),
        "curl {version_flag}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code.to_string(), version.to_string())
}

fn start(broker: &Broker, topic: &str, pki: &Pki, admin: u16) -> Ingest {
    Ingest::start_tls(
        &purple_config(
            &broker.brokers(),
            topic,
            &[("current", "E2E_SECRET")],
            &pki.server_lines(admin),
        ),
        &env(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_are_accepted_over_tls_with_http1_http2_and_curl_and_not_over_plain_http() {
    let broker = Broker::start();
    broker.create_topic("tls-raw", 1).await;
    let pki = Pki::new();
    let leaf = pki.leaf("ingest-a", (-1, 30));
    pki.install(&leaf);
    let ingest = start(&broker, "tls-raw", &pki, free_port());
    let client = h1_client(&pki, false);
    ingest.wait_ready_with(&client).await;
    let url = ingest.url("/webhooks/purple");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let h1 = post_h1(&client, &url, "evt_tls_h1").await;
    assert_eq!(h1.status, 200, "{h1:?}\n{}", ingest.log());
    assert_eq!(h1.version, "HTTP/1.1");
    assert_eq!(
        h1.peer, leaf.der,
        "the client was shown the installed certificate"
    );

    let h2 = post_h2(&pki, ingest.addr, "evt_tls_h2").await;
    assert_eq!(h2.status, 200, "{h2:?}\n{}", ingest.log());
    assert_eq!(h2.version, "h2", "ALPN chose HTTP/2");
    assert_eq!(h2.peer, leaf.der);

    assert_eq!(
        post_curl(&pki, &url, "evt_tls_curl1", "--http1.1"),
        ("200".to_string(), "1.1".to_string())
    );
    assert_eq!(
        post_curl(&pki, &url, "evt_tls_curl2", "--http2"),
        ("200".to_string(), "2".to_string())
    );

    // Plain HTTP to the TLS port: no answer a sender could take for an
    // acknowledgement, and nothing stored.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let plain_url = format!("http://{}/webhooks/purple", ingest.addr);
    let answer = post_h1(&plain, &plain_url, "evt_tls_plain").await;
    assert_ne!(answer.status, 200, "{answer:?}");
    assert!(
        answer.status == 0 || answer.status >= 400,
        "plain HTTP got {answer:?}"
    );

    let mut ids: Vec<String> = read_topic(&broker.brokers(), "tls-raw")
        .await
        .iter()
        .filter_map(|r| r.header("event-id"))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["evt_tls_curl1", "evt_tls_curl2", "evt_tls_h1", "evt_tls_h2"],
        "exactly the webhooks sent over TLS are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_mtls_takes_only_client_certificates_from_its_ca() {
    let broker = Broker::start();
    broker.create_topic("tls-mtls", 1).await;
    let pki = Pki::new();
    pki.install(&pki.leaf("ingest-mtls", (-1, 30)));
    let senders = Pki::new();
    let ca_file = senders.ca_path();
    let config = format!(
        "{}\n[sources.secure]\nmtls = {{ ca_file = {ca_file:?} }}\nsignature = {{ scheme = \"purple\", secrets = [{{ id = \"current\", env = \"E2E_SECRET\" }}] }}\n",
        purple_config(
            &broker.brokers(),
            "tls-mtls",
            &[("current", "E2E_SECRET")],
            &pki.server_lines(free_port()),
        )
    );
    let ingest = Ingest::start_tls(&config, &env());
    let anonymous = h1_client(&pki, false);
    ingest.wait_ready_with(&anonymous).await;
    let with_identity = |pem: &str| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity"))
            .build()
            .unwrap()
    };
    let trusted = with_identity(&senders.client("sender"));
    // Signed by a CA the source does not trust (the server's own).
    let stranger = with_identity(&pki.client("stranger"));
    let secure = ingest.url("/webhooks/secure");

    for (who, client) in [("no certificate", &anonymous), ("another CA", &stranger)] {
        let body = purple_event(&format!("evt_mtls_{}", who.len()), "venue-tls", 1);
        let r = client
            .post(&secure)
            .header("x-purple-signature", purple_signature(SECRET, &body))
            .body(body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 403, "{who}");
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            json["error"]["code"], "client_certificate_required",
            "{who}"
        );
    }
    let ok = post_h1(&trusted, &secure, "evt_mtls_trusted").await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", ingest.log());
    // curl with the sender's certificate and key.
    let identity = senders.path("sender.pem");
    std::fs::write(&identity, senders.client("curl-sender")).unwrap();
    let body = purple_event("evt_mtls_curl", "venue-tls", 1);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(pki.ca_path())
        .arg("--cert")
        .arg(&identity)
        .arg("-H")
        .arg(format!(
            "x-purple-signature: {}",
            purple_signature(SECRET, &body)
        ))
        .arg("--data-binary")
        .arg(String::from_utf8(body).unwrap())
        .arg(&secure)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // A source without mtls asks nothing of the client.
    let open = post_h1(&anonymous, &ingest.url("/webhooks/purple"), "evt_mtls_open").await;
    assert_eq!(open.status, 200, "{open:?}");

    let mut ids: Vec<String> = read_topic(&broker.brokers(), "tls-mtls")
        .await
        .iter()
        .filter_map(|r| r.header("event-id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["evt_mtls_curl", "evt_mtls_open", "evt_mtls_trusted"]);
}

/// Whether the server closed `s` within 10 s (the header timeout is 1 s).
async fn closed_by_server(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_stalled_handshake_is_closed_within_the_header_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let broker = Broker::start();
    broker.create_topic("tls-slow", 1).await;
    let pki = Pki::new();
    pki.install(&pki.leaf("ingest-slow", (-1, 30)));
    let ingest = Ingest::start_tls(
        &purple_config(
            &broker.brokers(),
            "tls-slow",
            &[("current", "E2E_SECRET")],
            &format!(
                "header_read_timeout = \"1s\"\n{}",
                pki.server_lines(free_port())
            ),
        ),
        &env(),
    );
    let client = h1_client(&pki, false);
    ingest.wait_ready_with(&client).await;

    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    // The first bytes of a ClientHello, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // A complete handshake, then no request.
    let tcp = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut idle = connector(&pki, b"http/1.1")
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert!(
        closed_by_server(&mut silent).await,
        "silent connection kept"
    );
    assert!(
        closed_by_server(&mut stalled).await,
        "stalled handshake kept"
    );
    assert!(
        closed_by_server(&mut idle).await,
        "idle TLS connection kept"
    );

    // And ingest still serves.
    let ok = post_h1(&client, &ingest.url("/webhooks/purple"), "evt_slow_after").await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

/// Waits until `ingest_tls_reloads_total{outcome}` on the admin port
/// reaches `want`.
async fn wait_reloads(ingest: &Ingest, admin: u16, outcome: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(([127, 0, 0, 1], admin).into()).await;
        let got = metric_sum(&text, "ingest_tls_reloads_total", &[("outcome", outcome)]);
        if got >= want {
            assert_eq!(got, want, "{text}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome} reload:\n{text}\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_while_requests_flow_and_a_bad_one_is_refused()
{
    let broker = Broker::start();
    broker.create_topic("tls-rotate", 1).await;
    let pki = Pki::new();
    let old = pki.leaf("ingest-old", (-1, 30));
    pki.install(&old);
    let admin = free_port();
    let ingest = start(&broker, "tls-rotate", &pki, admin);
    let kept_alive = h1_client(&pki, false);
    ingest.wait_ready_with(&kept_alive).await;
    let url = ingest.url("/webhooks/purple");

    // The stream: two senders opening a new connection (and handshake)
    // for every request, and one sending on a single kept-alive
    // connection, all until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (n, fresh) in [(0, true), (1, true), (2, false)] {
        let client = if fresh {
            h1_client(&pki, true)
        } else {
            kept_alive.clone()
        };
        let (url, stop) = (url.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                answers.push(post_h1(&client, &url, &format!("evt_rot_{n}_{i:05}")).await);
                i += 1;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = pki.leaf("ingest-new", (-1, 60));
    pki.install(&new);
    wait_reloads(&ingest, admin, "ok", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A bad pair: the new key with a certificate it does not match.
    let other = pki.leaf("ingest-other", (-1, 60));
    std::fs::write(pki.path("tls.crt"), &other.cert_pem).unwrap();
    wait_reloads(&ingest, admin, "refused", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for s in senders {
        all.push(s.await.unwrap());
    }
    for (n, answers) in all.iter().enumerate() {
        assert!(answers.len() > 5, "sender {n} sent {}", answers.len());
        for a in answers {
            assert_eq!(
                a.status,
                200,
                "sender {n}: {:?} {a:?}\n{}",
                a.error,
                ingest.log()
            );
        }
    }
    let fresh_peers: Vec<&Vec<u8>> = all[..2].iter().flatten().map(|a| &a.peer).collect();
    assert!(fresh_peers.iter().all(|p| **p == old.der || **p == new.der));
    assert_eq!(
        *fresh_peers[0], old.der,
        "the first connections saw the old pair"
    );
    assert_eq!(
        **fresh_peers.last().unwrap(),
        new.der,
        "connections after the reload see the new pair, and still after the refused one"
    );
    // The kept-alive connection was opened before the rotation and never
    // dropped: every answer on it came with the old certificate.
    assert!(
        all[2].iter().all(|a| a.peer == old.der),
        "kept-alive connection was replaced"
    );

    // A new client now: the new certificate, still.
    let later = post_h1(&h1_client(&pki, true), &url, "evt_rot_later").await;
    assert_eq!(later.status, 200, "{later:?}");
    assert_eq!(later.peer, new.der);

    let log = ingest.log();
    assert!(
        log.contains("server.tls.key_file"),
        "the refusal names the field:\n{log}"
    );
    for key in [&old.key_pem, &new.key_pem, &other.key_pem] {
        let body_line = key.lines().nth(1).unwrap();
        assert!(!log.contains(body_line), "a key reached the log");
    }
}

/// Runs `ingest SUBCOMMAND --config FILE` to its end (at most 20 s):
/// answers whether it succeeded and its stderr.
fn run_ingest(subcommand: &str, config: &Path) -> (bool, String) {
    let mut child = Command::new(binary("ingest"))
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .envs(env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ingest");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ingest {subcommand} did not exit: it started with a bad pair");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_expired_certificate_or_a_key_that_does_not_match_stops_the_start_naming_the_field() {
    let pki = Pki::new();
    let config = pki.path("ingest.toml");
    // No broker: ingest must stop before it needs one.
    std::fs::write(
        &config,
        purple_config(
            "127.0.0.1:9",
            "tls-never",
            &[("current", "E2E_SECRET")],
            &pki.server_lines(free_port()),
        ),
    )
    .unwrap();

    let expired = pki.leaf("ingest-expired", (-30, -1));
    pki.install(&expired);
    for subcommand in ["serve", "check-config"] {
        let (ok, err) = run_ingest(subcommand, &config);
        assert!(!ok, "{subcommand} accepted an expired certificate");
        assert!(
            err.contains("server.tls.cert_file") && err.contains("expired at"),
            "{subcommand}: {err}"
        );
    }

    let good = pki.leaf("ingest-good", (-1, 30));
    let stranger = KeyPair::generate().unwrap();
    std::fs::write(pki.path("tls.crt"), &good.cert_pem).unwrap();
    std::fs::write(pki.path("tls.key"), stranger.serialize_pem()).unwrap();
    for subcommand in ["serve", "check-config"] {
        let (ok, err) = run_ingest(subcommand, &config);
        assert!(!ok, "{subcommand} accepted a key that does not match");
        assert!(
            err.contains("server.tls.key_file") && err.contains("does not match"),
            "{subcommand}: {err}"
        );
        assert!(
            !err.contains(stranger.serialize_pem().lines().nth(1).unwrap()),
            "the key was printed"
        );
    }

    std::fs::remove_file(pki.path("tls.key")).unwrap();
    let (ok, err) = run_ingest("serve", &config);
    assert!(!ok);
    assert!(err.contains("server.tls.key_file: cannot read"), "{err}");
}
