//! Slow and oversized clients against the real ingest binary: a sender
//! that trickles its headers (slowloris) or its body is disconnected within
//! the configured bound while normal requests keep being served, and a
//! request head with too many or too large headers is answered 431.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{Broker, Ingest, purple_config, purple_event, purple_signature, send_purple};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "slow-client-secret";

/// How a trickling connection ended.
#[derive(Debug)]
struct Ended {
    /// From the first byte sent to the connection's end (EOF or reset).
    after: Duration,
    /// What the server answered before closing, if anything.
    answer: String,
    /// Whether the server closed it (false: the sender ran out of bytes first).
    closed_by_server: bool,
}

/// Sends `head` at once, then `trickle` one byte every `every`, reading
/// what comes back, until the server closes the connection or `trickle`
/// is used up.
async fn trickle(addr: SocketAddr, head: Vec<u8>, trickle: Vec<u8>, every: Duration) -> Ended {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    let mut closed_by_server = false;
    if wr.write_all(&head).await.is_err() {
        closed_by_server = true;
    }
    for b in trickle {
        if closed_by_server || reader.is_finished() {
            closed_by_server = true;
            break;
        }
        tokio::time::sleep(every).await;
        if wr.write_all(&[b]).await.is_err() {
            closed_by_server = true;
        }
    }
    if !closed_by_server {
        // Used up without being cut off; give the reader a moment.
        closed_by_server = tokio::time::timeout(Duration::from_secs(1), async {
            while !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
    }
    let (after, answer) = if reader.is_finished() {
        reader.await.expect("reader")
    } else {
        reader.abort();
        (started.elapsed(), String::new())
    };
    Ended {
        after,
        answer,
        closed_by_server,
    }
}

/// Sends a whole request and reads the answer until the server closes.
async fn raw(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(&request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_header_and_slow_body_senders_are_cut_off_while_others_are_served() {
    let broker = Broker::start();
    broker.create_topic("raw-slow", 1).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-slow",
            &[("a", "SLOW_SECRET")],
            "header_read_timeout = \"1s\"\nrequest_timeout = \"2s\"",
        ),
        &[("SLOW_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let addr = ingest.addr;
    let every = Duration::from_millis(250);

    // 20 slowloris senders: a request line, then a header one byte at a
    // time, 40 bytes over 10 s if nobody stops them.
    let mut slow_heads = Vec::new();
    for _ in 0..20 {
        slow_heads.push(tokio::spawn(trickle(
            addr,
            b"POST /webhooks/purple HTTP/1.1\r\nhost: ingest\r\n".to_vec(),
            b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
            every,
        )));
    }
    // 5 slow-body senders: a signed request whose 40-byte body comes one
    // byte at a time.
    let body = vec![b'x'; 40];
    let head = format!(
        "POST /webhooks/purple HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n\
         x-purple-signature: {}\r\ncontent-length: {}\r\n\r\n",
        purple_signature(SECRET, &body),
        body.len()
    );
    let mut slow_bodies = Vec::new();
    for _ in 0..5 {
        slow_bodies.push(tokio::spawn(trickle(
            addr,
            head.clone().into_bytes(),
            body.clone(),
            every,
        )));
    }

    // Meanwhile, normal senders are served.
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");
    for i in 0..20u64 {
        let id = format!("evt_slow_{i}");
        let o = send_purple(&client, &url, SECRET, purple_event(&id, "venue-1", i)).await;
        assert_eq!(o.status, 200, "{o:?}\n{}", ingest.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both kinds were cut off well before their 10 s of trickle: the header
    // timeout (1 s) without an answer, the body at the request deadline
    // (2 s) with 408 body_timeout and the connection closed.
    for t in slow_heads {
        let ended = t.await.unwrap();
        assert!(
            ended.closed_by_server,
            "slow header sender not cut off: {ended:?}"
        );
        assert!(ended.after < Duration::from_secs(6), "{ended:?}");
        assert!(
            !ended.answer.contains("200 OK"),
            "a slow header sender was served: {ended:?}"
        );
    }
    for t in slow_bodies {
        let ended = t.await.unwrap();
        assert!(
            ended.closed_by_server,
            "slow body sender not cut off: {ended:?}"
        );
        assert!(ended.after < Duration::from_secs(6), "{ended:?}");
        assert!(
            status_line(&ended.answer).starts_with("HTTP/1.1 408"),
            "{ended:?}"
        );
        let lower = ended.answer.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{ended:?}");
        assert!(lower.contains("\"body_timeout\""), "{ended:?}");
    }

    // An idle connection that never sends a byte is closed too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open after 10 s: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));

    // And ingest is still serving.
    let o = send_purple(
        &client,
        &url,
        SECRET,
        purple_event("evt_after", "venue-1", 99),
    )
    .await;
    assert_eq!(o.status, 200, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431() {
    let broker = Broker::start();
    broker.create_topic("raw-431", 1).await;
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "raw-431",
            &[("a", "BIG_SECRET")],
            "max_headers = 32\nmax_header_bytes = 16384",
        ),
        &[("BIG_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let addr = ingest.addr;
    let body = purple_event("evt_431", "venue-1", 1);
    let request = |extra: &str| {
        let mut r = format!(
            "POST /webhooks/purple HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n\
             x-purple-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
            purple_signature(SECRET, &body),
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    };
    let headers = |n: usize, len: usize| -> String {
        (0..n)
            .map(|i| format!("x-h{i}: {}\r\n", "v".repeat(len)))
            .collect()
    };

    // Within the limits (25 + 5 headers, ~6 KiB): served.
    let ok = raw(addr, request(&headers(25, 200))).await;
    assert!(status_line(&ok).starts_with("HTTP/1.1 200"), "{ok}");

    // One header more than max_headers.
    let many = raw(addr, request(&headers(28, 4))).await;
    assert!(status_line(&many).starts_with("HTTP/1.1 431"), "{many}");
    // One header of 20 KiB: the head is over max_header_bytes.
    let large = raw(addr, request(&headers(1, 20 * 1024))).await;
    assert!(status_line(&large).starts_with("HTTP/1.1 431"), "{large}");
    // Many medium headers that add up past it.
    let sum = raw(addr, request(&headers(20, 1024))).await;
    assert!(status_line(&sum).starts_with("HTTP/1.1 431"), "{sum}");

    // Still serving after all that.
    let again = raw(addr, request("")).await;
    assert!(status_line(&again).starts_with("HTTP/1.1 200"), "{again}");
}
