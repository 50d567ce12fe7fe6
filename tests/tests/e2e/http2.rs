//! HTTP/2 in ingest holds the same hostile-input line as HTTP/1.1: the
//! real binary over cleartext HTTP/2 (prior knowledge; over TLS it is the
//! same server behind ALPN, see `tls.rs`) and a real tansu broker.
//!
//! What is promised (README, "Hostile input"): streams per connection are
//! capped at `server.http2_max_streams` and the cap is advertised; a stream
//! whose headers exceed `server.max_header_bytes` is refused without
//! harming the connection's other work; a client that opens and resets
//! streams as fast as it can (the rapid-reset attack) is disconnected with
//! GOAWAY, and ingest keeps answering everyone else.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{Broker, Ingest, purple_config, purple_event, purple_signature, read_topic};

const SECRET: &str = "h2-e2e-secret";

fn start(broker: &Broker, topic: &str, extra: &str) -> Ingest {
    Ingest::start(
        &purple_config(
            &broker.brokers(),
            topic,
            &[("current", "E2E_SECRET")],
            extra,
        ),
        &[("E2E_SECRET", SECRET)],
    )
}

/// An HTTP/2 connection with prior knowledge to `ingest`.
async fn connect(ingest: &Ingest) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.expect("h2 connection ready")
}

fn signed(ingest: &Ingest, id: &str) -> (http::Request<()>, Bytes) {
    let body = purple_event(id, "venue-h2", 1);
    let request = http::Request::post(format!(
        "http://127.0.0.1:{}/webhooks/purple",
        ingest.addr.port()
    ))
    .header("content-type", "application/json")
    .header("x-purple-signature", purple_signature(SECRET, &body))
    .body(())
    .unwrap();
    (request, Bytes::from(body))
}

/// Sends one signed webhook on `client`; answers its status.
async fn post(client: &mut h2::client::SendRequest<Bytes>, ingest: &Ingest, id: &str) -> u16 {
    let (request, body) = signed(ingest, id);
    let mut client = client.clone().ready().await.expect("ready");
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(body, true).unwrap();
    response.await.expect("h2 response").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_and_oversized_headers_refused_without_harm_to_the_connection() {
    let broker = Broker::start();
    broker.create_topic("h2-raw", 1).await;
    let ingest = start(&broker, "h2-raw", "http2_max_streams = 4");
    let mut client = connect(&ingest).await;
    assert_eq!(post(&mut client, &ingest, "evt_h2_1").await, 200);
    // The cap, as the server advertised it in its SETTINGS.
    assert_eq!(
        client.current_max_send_streams(),
        4,
        "server.http2_max_streams advertised"
    );

    // Headers over max_header_bytes (16 KiB by default) on one stream: that
    // stream is refused, and the next request on the same connection is
    // served.
    let (mut request, _) = signed(&ingest, "evt_h2_big");
    request
        .headers_mut()
        .insert("x-padding", "a".repeat(20 * 1024).parse().unwrap());
    let mut ready = client.clone().ready().await.expect("ready");
    let (response, _stream) = ready.send_request(request, true).unwrap();
    match response.await {
        Ok(r) => assert_eq!(r.status().as_u16(), 431, "oversized headers"),
        Err(e) => assert!(
            e.reason().is_some(),
            "the stream, not the connection, is refused: {e}"
        ),
    }
    assert_eq!(
        post(&mut client, &ingest, "evt_h2_2").await,
        200,
        "{}",
        ingest.log()
    );

    let ids: Vec<String> = read_topic(&broker.brokers(), "h2-raw")
        .await
        .iter()
        .map(|r| r.header("event-id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["evt_h2_1", "evt_h2_2"], "only the served requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_disconnected_and_ingest_keeps_serving() {
    let broker = Broker::start();
    broker.create_topic("h2-reset", 1).await;
    let ingest = start(&broker, "h2-reset", "");
    let attacker = connect(&ingest).await;

    // Open a stream and reset it at once, as fast as the connection lets
    // us (CVE-2023-44487): each costs the attacker two frames and the
    // server a request to set up and tear down.
    let started = Instant::now();
    let mut sent = 0u32;
    let mut cut_off = None;
    while sent < 20_000 && started.elapsed() < Duration::from_secs(20) {
        let (request, _) = signed(&ingest, &format!("evt_reset_{sent}"));
        let ready = match attacker.clone().ready().await {
            Ok(r) => r,
            Err(e) => {
                cut_off = Some(e);
                break;
            }
        };
        let mut ready = ready;
        match ready.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                cut_off = Some(e);
                break;
            }
        }
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let cut_off = cut_off.unwrap_or_else(|| {
        panic!(
            "{sent} streams opened and reset in {:?} and the connection is still open\n{}",
            started.elapsed(),
            ingest.log()
        )
    });
    assert!(
        cut_off.is_go_away() || cut_off.is_io() || cut_off.reason().is_some(),
        "cut off how? {cut_off}"
    );

    // Everyone else is still served, at once.
    let mut honest = connect(&ingest).await;
    let t = Instant::now();
    assert_eq!(post(&mut honest, &ingest, "evt_after_flood").await, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let ids: Vec<String> = read_topic(&broker.brokers(), "h2-reset")
        .await
        .iter()
        .map(|r| r.header("event-id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["evt_after_flood"],
        "no reset stream's request was kept"
    );
}
