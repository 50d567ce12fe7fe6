//! The router without a socket (`tower::ServiceExt::oneshot`) and without a
//! reachable broker: every refusal path answers its documented status and
//! code before anything is produced, and a request that verifies but cannot
//! be delivered gets 503 with `Retry-After` once the deadline passes.
//! Allow-list, rate-limit and handshake tests give each request its TCP
//! peer as `serve` does (`ConnectInfo`); without a broker, a 200 proves a
//! handshake was answered without any attempt to store it.
//! Delivery to a real broker is tested end to end in the `tests` crate.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use ingest::config::Config;
use ingest::server::build_state;
use sha2::Sha256;
use tower::ServiceExt;

const SECRET_ENV: &str = "ROUTER_TEST_PURPLE_SECRET";
const OLD_SECRET_ENV: &str = "ROUTER_TEST_PURPLE_SECRET_OLD";

fn app() -> axum::Router {
    // SAFETY: set once per test binary before any thread reads them; every
    // test sets the same values.
    unsafe {
        std::env::set_var(SECRET_ENV, "current-secret");
        std::env::set_var(OLD_SECRET_ENV, "old-secret");
    }
    let config = Config::from_toml(&format!(
        r#"
        [server]
        request_timeout = "300ms"
        retry_after = "7s"
        [kafka]
        brokers = "127.0.0.1:1"
        [sources.purple]
        max_body_bytes = 1024
        ordering_key = {{ pointer = "/venue/id" }}
        signature = {{ scheme = "purple", secrets = [
            {{ id = "current", env = "{SECRET_ENV}" }},
            {{ id = "old", env = "{OLD_SECRET_ENV}" }},
        ] }}
        "#
    ))
    .unwrap();
    ingest::http::router(build_state(&config).unwrap())
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn call(req: Request<Body>) -> (StatusCode, Option<String>, serde_json::Value) {
    let resp = app().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, retry, json)
}

fn post(path: &str, body: &[u8], sig: Option<&str>) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(s) = sig {
        b = b.header("x-purple-signature", s);
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

const BODY: &[u8] = br#"{"id":"evt_1","type":"device_connected","venue":{"id":"v1"},"sequence":1}"#;

fn code(j: &serde_json::Value) -> &str {
    j["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn missing_wrong_and_malformed_signatures_are_401() {
    let (s, _, j) = call(post("/webhooks/purple", BODY, None)).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::UNAUTHORIZED, "signature_missing")
    );
    let wrong = sign("not-the-secret", BODY);
    let (s, _, j) = call(post("/webhooks/purple", BODY, Some(&wrong))).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::UNAUTHORIZED, "signature_invalid")
    );
    let (s, _, j) = call(post("/webhooks/purple", BODY, Some("xyz"))).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::UNAUTHORIZED, "signature_malformed")
    );
    // A body cut short no longer matches its signature.
    let good = sign("current-secret", BODY);
    let (s, _, j) = call(post(
        "/webhooks/purple",
        &BODY[..BODY.len() - 5],
        Some(&good),
    ))
    .await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::UNAUTHORIZED, "signature_invalid")
    );
    // The detail never echoes the secret or the expected signature.
    assert!(!j.to_string().contains("current-secret"));
    assert!(!j.to_string().contains(&good));
}

#[tokio::test]
async fn unknown_source_wrong_method_and_unknown_path() {
    let (s, _, j) = call(post("/webhooks/nope", BODY, None)).await;
    assert_eq!((s, code(&j)), (StatusCode::NOT_FOUND, "unknown_source"));
    let get = Request::get("/webhooks/purple")
        .body(Body::empty())
        .unwrap();
    let (s, _, j) = call(get).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let other = Request::get("/admin").body(Body::empty()).unwrap();
    let (s, _, j) = call(other).await;
    assert_eq!((s, code(&j)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn empty_and_oversized_bodies() {
    let (s, _, j) = call(post(
        "/webhooks/purple",
        b"",
        Some(&sign("current-secret", b"")),
    ))
    .await;
    assert_eq!((s, code(&j)), (StatusCode::BAD_REQUEST, "empty_body"));
    // Refused from Content-Length before reading; the unread body makes
    // the connection unusable, and the response says so.
    let big = vec![b'a'; 2048];
    let resp = app()
        .oneshot(post("/webhooks/purple", &big, None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let (s, _, j) = call(post("/webhooks/purple", &big, None)).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    // No Content-Length: refused while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'a'; 200])).collect();
    let stream = Body::from_stream(futures::stream::iter(chunks));
    let req = Request::post("/webhooks/purple")
        .header("x-purple-signature", sign("current-secret", &[b'a'; 1600]))
        .body(stream)
        .unwrap();
    let (s, _, j) = call(req).await;
    assert_eq!(
        (s, code(&j)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
}

#[tokio::test]
async fn verified_but_undeliverable_is_503_with_retry_after_within_the_deadline() {
    let started = std::time::Instant::now();
    let sig = sign("old-secret", BODY);
    let (s, retry, j) = call(post("/webhooks/purple", BODY, Some(&sig))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        matches!(code(&j), "delivery_timeout" | "broker_unavailable"),
        "{j}"
    );
    assert_eq!(retry.as_deref(), Some("7"));
    // Not a speed check: the handler must give up at its deadline rather
    // than hang; 5 s is far above the 300 ms deadline.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn readyz_is_503_without_a_broker_and_metrics_render() {
    let app = app();
    let resp = app
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = app
        .clone()
        .oneshot(post("/webhooks/purple", BODY, None))
        .await
        .unwrap();
    let resp = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"ingest_requests_total{source="purple",status="401"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"ingest_verification_failures_total{reason="signature_missing",source="purple"} 1"#
    ));
    assert!(text.contains("ingest_in_flight_requests 0"));
}

#[tokio::test]
async fn past_max_in_flight_requests_get_503_overloaded_not_a_queue() {
    // SAFETY: see app().
    unsafe {
        std::env::set_var(SECRET_ENV, "current-secret");
    }
    let config = Config::from_toml(&format!(
        r#"
        [server]
        max_in_flight = 1
        request_timeout = "5s"
        retry_after = "2s"
        [kafka]
        brokers = "127.0.0.1:1"
        [sources.purple]
        signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}
        "#
    ))
    .unwrap();
    let app = ingest::http::router(build_state(&config).unwrap());
    // The first request holds the only slot: its body never finishes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{".to_vec())).await.unwrap();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let slow = Request::post("/webhooks/purple")
        .body(Body::from_stream(stream))
        .unwrap();
    let first = tokio::spawn(app.clone().oneshot(slow));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let resp = app
        .clone()
        .oneshot(post(
            "/webhooks/purple",
            BODY,
            Some(&sign("current-secret", BODY)),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    let j: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(code(&j), "overloaded");
    // Once the first request ends, its slot is free again.
    drop(tx);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    let again = app
        .oneshot(post("/webhooks/purple", BODY, None))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
}

// --- Allow-list, rate limit and handshakes -------------------------------

const SLACK_SECRET_ENV: &str = "ROUTER_TEST_SLACK_SECRET";
const HUB_TOKEN_ENV: &str = "ROUTER_TEST_HUB_TOKEN";

/// One ingest with a source per feature; `trusted_proxies` is 10.0.0.0/8.
fn access_app() -> axum::Router {
    // SAFETY: see app(); every test sets the same values.
    unsafe {
        std::env::set_var(SECRET_ENV, "current-secret");
        std::env::set_var(SLACK_SECRET_ENV, "slack-secret");
        std::env::set_var(HUB_TOKEN_ENV, "hub-token-value");
    }
    let purple = format!(
        r#"signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}"#
    );
    let slack = format!(
        r#"signature = {{ scheme = "slack", secrets = [{{ id = "k", env = "{SLACK_SECRET_ENV}" }}] }}"#
    );
    let config = Config::from_toml(&format!(
        r#"
        [server]
        request_timeout = "300ms"
        trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
        [kafka]
        brokers = "127.0.0.1:1"
        [sources.guarded]
        allow = ["203.0.113.0/24", "2001:db8::/32"]
        {purple}
        [sources.limited]
        rate_limit = {{ per_second = 0.01, burst = 2 }}
        {purple}
        [sources.both]
        allow = ["203.0.113.0/24"]
        rate_limit = {{ per_second = 0.01, burst = 1 }}
        {purple}
        [sources.chat]
        url_verification = true
        {slack}
        [sources.plainchat]
        {slack}
        [sources.hub]
        subscription = {{ verify_token = {{ id = "t", env = "{HUB_TOKEN_ENV}" }} }}
        allow = ["203.0.113.0/24"]
        {purple}
        [sources.open]
        subscription = {{ challenge_param = "challenge" }}
        {purple}
        "#
    ))
    .unwrap();
    ingest::http::router(build_state(&config).unwrap())
}

/// `req` as if it came from `peer` over TCP (what `serve` provides).
fn from(peer: &str, mut req: Request<Body>) -> Request<Body> {
    let ip: std::net::IpAddr = peer.parse().unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::new(ip, 40000)));
    req
}

/// A POST whose body never ends: an answer proves the body was not read.
fn endless_post(path: &str) -> (Request<Body>, tokio::sync::mpsc::Sender<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (Ok::<_, std::io::Error>(item), rx))
    });
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    (req, tx)
}

#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn code(&self) -> String {
        code(&self.json()).to_string()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), app.clone().oneshot(req))
        .await
        .expect("answered without reading the body")
        .unwrap();
    collect(resp).await
}

/// Status, headers and body of one answer.
async fn collect(resp: axum::response::Response) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn metrics_text(app: &axum::Router) -> String {
    let a = answer(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    String::from_utf8(a.body).unwrap()
}

#[tokio::test]
async fn addresses_outside_the_allow_list_get_403_before_the_body_is_read() {
    let app = access_app();
    for peer in [
        "198.51.100.1",
        "127.0.0.1",
        "::1",
        "2001:db9::1",
        "10.0.0.1",
    ] {
        let (req, _tx) = endless_post("/webhooks/guarded");
        let a = answer(&app, from(peer, req)).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::FORBIDDEN, "address_not_allowed"),
            "{peer}"
        );
        assert_eq!(a.header("connection"), Some("close"), "{peer}");
        assert!(
            !a.json().to_string().contains(peer),
            "the detail names no address"
        );
    }
    // No known peer at all: refused, not waved through.
    let (req, _tx) = endless_post("/webhooks/guarded");
    assert_eq!(answer(&app, req).await.status, StatusCode::FORBIDDEN);
    // Inside the list (IPv4, IPv6, IPv4-mapped): on to the signature check.
    for peer in ["203.0.113.5", "2001:db8::1", "::ffff:203.0.113.5"] {
        let a = answer(&app, from(peer, post("/webhooks/guarded", BODY, None))).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::UNAUTHORIZED, "signature_missing"),
            "{peer}"
        );
    }
    // A source without a list takes any address.
    let a = answer(
        &app,
        from("198.51.100.1", post("/webhooks/limited", BODY, None)),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let text = metrics_text(&app).await;
    assert!(
        text.contains(r#"ingest_refusals_total{code="address_not_allowed",source="guarded"} 6"#),
        "{text}"
    );
    assert!(text.contains(r#"ingest_requests_total{source="guarded",status="403"} 6"#));
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_trusted_proxies() {
    let app = access_app();
    let via = |peer: &str, xff: &str| {
        let mut req = post("/webhooks/guarded", BODY, None);
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        from(peer, req)
    };
    // Through our proxies (right to left, skipping trusted hops): allowed.
    for (peer, xff) in [
        ("10.0.0.1", "203.0.113.5"),
        ("10.0.0.1", "198.51.100.1, 203.0.113.5, 10.2.2.2"),
        ("fd00::1", "2001:db8::7"),
    ] {
        let a = answer(&app, via(peer, xff)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{peer} {xff}");
    }
    // The real client is outside the list, whatever it wrote to the left.
    let a = answer(&app, via("10.0.0.1", "203.0.113.5, 198.51.100.1")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A spoofed header from an untrusted peer is ignored.
    let a = answer(&app, via("198.51.100.1", "203.0.113.5")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A malformed chain stops at our proxy, which is not in the list.
    let a = answer(&app, via("10.0.0.1", "203.0.113.5, not-an-ip")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn past_the_burst_requests_get_429_with_retry_after_before_the_body_is_read() {
    let app = access_app();
    // The burst of 2: these reach the signature check.
    for _ in 0..2 {
        let a = answer(
            &app,
            from("198.51.100.1", post("/webhooks/limited", BODY, None)),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // The third waits for a token: at 0.01/s that is up to 100 s.
    let (req, _tx) = endless_post("/webhooks/limited");
    let a = answer(&app, from("198.51.100.1", req)).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((90..=100).contains(&retry), "Retry-After {retry}");
    assert_eq!(a.header("connection"), Some("close"));
    // A correctly signed request is limited all the same.
    let signed = post(
        "/webhooks/limited",
        BODY,
        Some(&sign("current-secret", BODY)),
    );
    let a = answer(&app, from("198.51.100.1", signed)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let text = metrics_text(&app).await;
    assert!(
        text.contains(r#"ingest_refusals_total{code="rate_limited",source="limited"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn refused_addresses_do_not_use_up_the_rate_limit() {
    let app = access_app();
    for _ in 0..5 {
        let a = answer(
            &app,
            from("198.51.100.1", post("/webhooks/both", BODY, None)),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    }
    let a = answer(
        &app,
        from("203.0.113.5", post("/webhooks/both", BODY, None)),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "the one token is still there"
    );
    let a = answer(
        &app,
        from("203.0.113.5", post("/webhooks/both", BODY, None)),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
}

fn slack_post(path: &str, body: &[u8], secret: Option<&str>) -> Request<Body> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(secret) = secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        b = b
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig);
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

const URL_VERIFICATION: &[u8] =
    br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;

#[tokio::test]
async fn slack_url_verification_is_answered_after_verification_without_kafka() {
    let app = access_app();
    // Verified: the challenge comes back at once. There is no broker here,
    // so any attempt to store it would end in 503 at the deadline.
    let a = answer(
        &app,
        slack_post("/webhooks/chat", URL_VERIFICATION, Some("slack-secret")),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.json(),
        serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    // Unsigned or signed with another secret: refused like any request.
    let a = answer(&app, slack_post("/webhooks/chat", URL_VERIFICATION, None)).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "signature_missing")
    );
    let a = answer(
        &app,
        slack_post("/webhooks/chat", URL_VERIFICATION, Some("forged")),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "signature_invalid")
    );
    assert!(!String::from_utf8_lossy(&a.body).contains("3eZbrw1a"));
    // A verified handshake whose challenge cannot be echoed.
    let bad = br#"{"type":"url_verification","challenge":"<b>hi</b> there"}"#;
    let a = answer(
        &app,
        slack_post("/webhooks/chat", bad, Some("slack-secret")),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "challenge_invalid")
    );
    let none = br#"{"type":"url_verification"}"#;
    let a = answer(
        &app,
        slack_post("/webhooks/chat", none, Some("slack-secret")),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "challenge_missing")
    );
    // Ordinary events of the same source still go to Kafka (here: 503).
    let event = br#"{"type":"event_callback","event_id":"Ev1"}"#;
    let a = answer(
        &app,
        slack_post("/webhooks/chat", event, Some("slack-secret")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // Off by default: the handshake is an ordinary event.
    let a = answer(
        &app,
        slack_post(
            "/webhooks/plainchat",
            URL_VERIFICATION,
            Some("slack-secret"),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = metrics_text(&app).await;
    assert!(
        text.contains(r#"ingest_handshakes_total{kind="url_verification",source="chat"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn get_subscription_checks_echo_the_challenge_as_plain_text() {
    let app = access_app();
    let get = |peer: &str, query: &str| {
        from(
            peer,
            Request::get(format!("/webhooks/hub?{query}"))
                .body(Body::empty())
                .unwrap(),
        )
    };
    let ok = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=hub-token-value";
    let a = answer(&app, get("203.0.113.5", ok)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, b"1158201444");
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    for (query, status, code) in [
        (
            "hub.challenge=1&hub.verify_token=wrong",
            StatusCode::UNAUTHORIZED,
            "verify_token_invalid",
        ),
        (
            "hub.challenge=1",
            StatusCode::UNAUTHORIZED,
            "verify_token_missing",
        ),
        (
            "hub.verify_token=hub-token-value",
            StatusCode::BAD_REQUEST,
            "challenge_missing",
        ),
        (
            "hub.verify_token=hub-token-value&hub.challenge=%3Cscript%3E%20x",
            StatusCode::BAD_REQUEST,
            "challenge_invalid",
        ),
    ] {
        let a = answer(&app, get("203.0.113.5", query)).await;
        assert_eq!((a.status, a.code().as_str()), (status, code), "{query}");
        assert!(!String::from_utf8_lossy(&a.body).contains("hub-token-value"));
    }
    // The allow-list applies to the check too.
    let a = answer(&app, get("198.51.100.1", ok)).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::FORBIDDEN, "address_not_allowed")
    );
    // Without a verify token, with another parameter name.
    let open = Request::get("/webhooks/open?challenge=abc")
        .body(Body::empty())
        .unwrap();
    let a = answer(&app, open).await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"abc"[..]));
    // Not configured: GET stays 405; unknown source: 404.
    let a = answer(
        &app,
        Request::get("/webhooks/guarded?hub.challenge=1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let a = answer(
        &app,
        Request::get("/webhooks/nope?hub.challenge=1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::NOT_FOUND, "unknown_source")
    );
    let text = metrics_text(&app).await;
    assert!(
        text.contains(r#"ingest_handshakes_total{kind="subscription",source="hub"} 1"#),
        "{text}"
    );
    assert!(!text.contains("hub-token-value"));
}

#[tokio::test]
async fn with_an_admin_port_metrics_leave_the_webhook_port() {
    let _ = app(); // sets the secrets' variables
    let config = Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [kafka]
        brokers = "127.0.0.1:1"
        [sources.purple]
        signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}
        "#
    ))
    .unwrap();
    let state = build_state(&config).unwrap();
    let public = ingest::http::public_router(state.clone());
    let admin = ingest::http::admin_router(state);
    let a = answer(&public, post("/webhooks/purple", BODY, None)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = answer(
        &public,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let text = metrics_text(&admin).await;
    assert!(
        text.contains(r#"ingest_requests_total{source="purple",status="401"} 1"#),
        "{text}"
    );
    let a = answer(&admin, post("/webhooks/purple", BODY, None)).await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "no webhooks on the admin port"
    );

    let same = Config::from_toml(
        r#"
        [server]
        listen = "127.0.0.1:8080"
        admin_listen = "127.0.0.1:8080"
        "#,
    )
    .unwrap_err();
    assert!(
        same.problems
            .iter()
            .any(|p| p == "server.admin_listen: must differ from server.listen"),
        "{:?}",
        same.problems
    );
}

/// A CA that signs client certificates: its PEM, and the DER of one
/// client certificate it signed.
fn client_ca_and_cert() -> (String, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["sender.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.der().to_vec())
}

fn with_chain(der: &[u8], mut req: Request<Body>) -> Request<Body> {
    let chain = vec![rustls::pki_types::CertificateDer::from(der.to_vec())];
    req.extensions_mut()
        .insert(ingest::tls::PeerCertificates(chain.into()));
    req
}

#[tokio::test]
async fn a_source_with_mtls_refuses_requests_without_a_client_certificate_from_its_ca_before_the_body()
 {
    // SAFETY: see app(); every test sets the same values.
    unsafe {
        std::env::set_var(SECRET_ENV, "current-secret");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, client) = client_ca_and_cert();
    let (_, stranger) = client_ca_and_cert();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let purple = format!(
        r#"signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}"#
    );
    // server.tls is only read by `serve`: the router needs no files.
    let config = Config::from_toml(&format!(
        r#"
        [server]
        request_timeout = "300ms"
        tls = {{ cert_file = "unused.crt", key_file = "unused.key" }}
        [kafka]
        brokers = "127.0.0.1:1"
        [sources.secure]
        mtls = {{ ca_file = {ca_path:?} }}
        {purple}
        [sources.open]
        {purple}
        "#
    ))
    .unwrap();
    let app = ingest::http::router(build_state(&config).unwrap());

    // No certificate, or one from another CA: 403 before the body is read,
    // and the connection closed.
    let (req, _tx) = endless_post("/webhooks/secure");
    let no_cert = answer(&app, from("127.0.0.1", req)).await;
    let (req, _tx2) = endless_post("/webhooks/secure");
    let wrong_ca = answer(&app, from("127.0.0.1", with_chain(&stranger, req))).await;
    for a in [&no_cert, &wrong_ca] {
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::FORBIDDEN, "client_certificate_required")
        );
        assert_eq!(a.header("connection"), Some("close"));
    }
    // From its CA: on to the signature check.
    let a = answer(
        &app,
        from(
            "127.0.0.1",
            with_chain(&client, post("/webhooks/secure", BODY, None)),
        ),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "signature_missing")
    );
    // A source without mtls asks nothing of the client.
    let a = answer(&app, from("127.0.0.1", post("/webhooks/open", BODY, None))).await;
    assert_eq!(a.code(), "signature_missing");
    let text = metrics_text(&app).await;
    assert!(
        text.contains(
            r#"ingest_refusals_total{code="client_certificate_required",source="secure"} 2"#
        ),
        "{text}"
    );
}

/// The webhook port's front takes signed POSTs to `/webhooks/{source}`
/// straight to the handler and everything else to the router: for every
/// method on paths that are webhook routes, near misses of them, names
/// the router decodes (`%70`) and the other endpoints, both answer alike.
#[tokio::test]
async fn the_front_answers_every_method_and_path_as_the_router_does() {
    let state = {
        // Sets the secrets' variables.
        let _ = app();
        let config = Config::from_toml(&format!(
            r#"
            [server]
            request_timeout = "200ms"
            retry_after = "7s"
            [kafka]
            brokers = "127.0.0.1:1"
            [sources.purple]
            max_body_bytes = 1024
            signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}
            [sources.v2_hooks-1]
            signature = {{ scheme = "purple", secrets = [{{ id = "current", env = "{SECRET_ENV}" }}] }}
            "#
        ))
        .unwrap();
        build_state(&config).unwrap()
    };
    let router = ingest::http::router(state.clone());
    let front = ingest::http::Front::new(state, true);
    let paths = [
        "/webhooks/purple",
        "/webhooks/v2_hooks-1",
        "/webhooks/v2.hooks",
        "/webhooks/pur%70le",
        "/webhooks/nope",
        "/webhooks/purple/",
        "/webhooks/purple/extra",
        "/webhooks//purple",
        "/webhooks/",
        "/webhooks",
        "/Webhooks/purple",
        "/webhooks/purple?x=1",
        "/webhooks/%2e%2e",
        "/webhooks/pur~ple",
        "/healthz",
        "/readyz",
        "/",
    ];
    let methods = ["POST", "GET", "PUT", "DELETE", "HEAD"];
    let body = BODY.to_vec();
    let sig = sign("current-secret", &body);
    for path in paths {
        for method in methods {
            let request = || {
                Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", "application/json")
                    .header("x-request-id", "front-compare-1")
                    .header("x-purple-signature", &sig)
                    .body(Body::from(body.clone()))
                    .unwrap()
            };
            let by_router = collect(router.clone().oneshot(request()).await.unwrap()).await;
            let by_front = collect(front.call(request(), None).await).await;
            assert_eq!(by_front, by_router, "{method} {path}");
        }
    }
    // The signed POSTs did reach the handler both ways: no broker, so 503.
    let a = collect(
        front
            .call(post("/webhooks/purple", BODY, Some(&sig)), None)
            .await,
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // Three of the paths name purple (one through `%70`, one with a
    // query): each reached its handler both ways, and once more above.
    let text = metrics_text(&router).await;
    assert!(
        text.contains(r#"ingest_requests_total{source="purple",status="503"} 7"#),
        "{text}"
    );
}
