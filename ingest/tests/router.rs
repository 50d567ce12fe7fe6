//! The router without a socket (`tower::ServiceExt::oneshot`) and without a
//! reachable broker: every refusal path answers its documented status and
//! code before anything is produced, and a request that verifies but cannot
//! be delivered gets 503 with `Retry-After` once the deadline passes.
//! Delivery to a real broker is tested end to end in the `tests` crate.

use axum::body::Body;
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
