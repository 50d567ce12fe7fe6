//! A Server-Sent-Events client over a raw socket, for the venue view's
//! live stream: it sees the response's status and every event with its
//! id, and can be made slow on purpose (a small receive buffer and no
//! reading), which a library client would hide.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One event: (event, id, data).
pub type Event = (String, String, String);

/// An open stream.
pub struct SseClient {
    /// The socket past the response head.
    pub reader: BufReader<TcpStream>,
    buffer: String,
}

impl SseClient {
    /// `GET path` with `headers` (`name: value` lines) and, when given,
    /// `Last-Event-ID`; returns the status and the stream past the head.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        last_id: Option<&str>,
        headers: &[String],
    ) -> (u16, SseClient) {
        Self::open_with(addr, path, last_id, headers, None).await
    }

    /// [`SseClient::open`] with the socket's receive buffer set to
    /// `recv_buffer` bytes (a client on a slow link; the kernel keeps at
    /// least a few KiB).
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        last_id: Option<&str>,
        headers: &[String],
        recv_buffer: Option<u32>,
    ) -> (u16, SseClient) {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let mut s = socket.connect(addr).await.expect("connect");
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("last-event-id: {id}\r\n"));
        }
        for h in headers {
            req.push_str(&format!("{h}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("request");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).await.expect("status line");
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status:?}"));
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        (
            code,
            SseClient {
                reader,
                buffer: String::new(),
            },
        )
    }

    /// The next event (heartbeat comments skipped), within `within`;
    /// `None` when the stream ended or nothing came.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut event, mut id, mut data) =
                        (String::new(), String::new(), String::new());
                    for line in block.lines() {
                        let field = |name: &str| {
                            line.strip_prefix(name)
                                .map(|v| v.strip_prefix(' ').unwrap_or(v).to_string())
                        };
                        if let Some(v) = field("event:") {
                            event = v;
                        } else if let Some(v) = field("id:") {
                            id = v;
                        } else if let Some(v) = field("data:") {
                            data.push_str(&v);
                        }
                    }
                    if !event.is_empty() || !data.is_empty() {
                        return Some((event, id, data));
                    }
                    continue;
                }
                // Chunked transfer: a size line, the bytes, CRLF.
                let mut size = String::new();
                self.reader.read_line(&mut size).await.ok()?;
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                if n == 0 {
                    return None;
                }
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).await.ok()?;
                self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event within 10 s; panics without one.
    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// Whether the server closes the connection within `within`, reading
    /// (and dropping) whatever is still buffered.
    pub async fn closed_within(self, within: Duration) -> bool {
        let mut raw = self.reader.into_inner();
        let mut sink = vec![0u8; 1 << 16];
        tokio::time::timeout(within, async {
            loop {
                match raw.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}
