//! Tiny upstream servers for proxy tests, written on raw sockets so that every byte they get and
//! send is under the test's control.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgate::ws::frame::{self, OpCode};

/// What an upstream saw, for assertions.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every request head received, raw.
    pub heads: Mutex<Vec<String>>,
    /// Pong frames received (this upstream never sends a Ping, so each is unsolicited).
    pub pongs: AtomicUsize,
    /// Ping frames received (from wsgate's keepalive).
    pub pings: AtomicUsize,
    pub connections: AtomicUsize,
    /// Close codes received, in order.
    pub closes: Mutex<Vec<u16>>,
}

/// How the WebSocket upstream behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsOptions {
    /// Close the socket (no Close frame) when nothing arrives for this long, like a server or
    /// NAT with an idle limit.
    pub idle_limit: Option<Duration>,
    /// Never answer a Ping (a hung upstream whose socket stays open).
    pub ignore_pings: bool,
}

/// A port nobody listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Reads one request head (through the blank line) from `s`, keeping any bytes after it in `buf`.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            return Some(head);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn has_token(head: &str, name: &str, token: &str) -> bool {
    head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case(name)
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// An HTTP/1.1 keep-alive server that answers every request with 200 and the raw request head
/// as the body, plus a set of hop-by-hop response headers that a proxy must remove.
pub async fn echo_http() -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen2.connections.fetch_add(1, Ordering::Relaxed);
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_head(&mut s, &mut buf).await {
                    seen.heads.lock().unwrap().push(head.clone());
                    let len: usize = super::header_in(&head, "content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..len);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\n\
Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-End-To-End: kept\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A server that accepts connections and never answers.
pub async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A WebSocket echo server that, like node `ws`, answers 426 to a request without the upgrade
/// headers. Text "bye" makes it send "last-1".."last-3" and a Close 1000 in one write and close
/// the socket at once; text "die" makes it drop the socket without a Close frame.
pub async fn ws_echo(opts: WsOptions) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen2.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(ws_conn(s, seen2.clone(), opts));
        }
    });
    (addr, seen)
}

async fn ws_conn(mut s: TcpStream, seen: Arc<Seen>, opts: WsOptions) {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut s, &mut buf).await else {
        return;
    };
    seen.heads.lock().unwrap().push(head.clone());
    let upgrade =
        has_token(&head, "upgrade", "websocket") && has_token(&head, "connection", "upgrade");
    let key = super::header_in(&head, "sec-websocket-key");
    let (true, Some(key)) = (upgrade, key) else {
        let _ = s
            .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nUpgrade Required")
            .await;
        return;
    };
    // Selects the first offered subprotocol; on /greet, sends a first message in the same write
    // as the 101 (so it arrives with the handshake).
    let protocol = super::header_in(&head, "sec-websocket-protocol")
        .and_then(|v| v.split(',').next())
        .map(|p| format!("Sec-WebSocket-Protocol: {}\r\n", p.trim()))
        .unwrap_or_default();
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        wsgate::ws::accept_key(key.as_bytes())
    )
    .into_bytes();
    if head.starts_with("GET /greet ") {
        resp.extend_from_slice(&frame::encode(OpCode::Text, b"hello"));
    }
    if s.write_all(&resp).await.is_err() {
        return;
    }
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(h) = frame::parse_header(&buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            let mut payload = buf[h.size..total].to_vec();
            if let Some(m) = h.mask {
                frame::apply_mask(&mut payload, m, 0);
            }
            buf.drain(..total);
            let reply = match h.opcode_raw {
                0x9 => {
                    seen.pings.fetch_add(1, Ordering::Relaxed);
                    if opts.ignore_pings {
                        continue;
                    }
                    frame::encode(OpCode::Pong, &payload).to_vec()
                }
                0xA => {
                    seen.pongs.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1000
                    };
                    seen.closes.lock().unwrap().push(code);
                    let _ = s.write_all(&frame::encode_close(code, "")).await;
                    return;
                }
                0x1 if payload == b"bye" => {
                    let mut out = Vec::new();
                    for i in 1..=3 {
                        out.extend_from_slice(&frame::encode(
                            OpCode::Text,
                            format!("last-{i}").as_bytes(),
                        ));
                    }
                    out.extend_from_slice(&frame::encode_close(1000, "bye"));
                    let _ = s.write_all(&out).await;
                    return;
                }
                0x1 if payload == b"die" => return,
                op => {
                    let mut f = vec![(if h.fin { 0x80 } else { 0 }) | op];
                    let len = payload.len();
                    if len < 126 {
                        f.push(len as u8);
                    } else if len < 65536 {
                        f.push(126);
                        f.extend_from_slice(&(len as u16).to_be_bytes());
                    } else {
                        f.push(127);
                        f.extend_from_slice(&(len as u64).to_be_bytes());
                    }
                    f.extend_from_slice(&payload);
                    f
                }
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
        let read = s.read(&mut chunk);
        let n = match opts.idle_limit {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(r) => r,
                Err(_) => return, // idle limit: drop the connection without a word
            },
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server that reads one request head per connection, records it, and writes what `answer`
/// makes of it (the head is passed in). With `close`, it closes right after; otherwise it holds
/// the connection until the peer closes, echoing nothing.
pub async fn scripted(
    answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    close: bool,
) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen2.connections.fetch_add(1, Ordering::Relaxed);
            let seen = seen2.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_head(&mut s, &mut buf).await else {
                    return;
                };
                seen.heads.lock().unwrap().push(head.clone());
                if s.write_all(&answer(&head)).await.is_err() || close {
                    return;
                }
                let mut chunk = [0u8; 1024];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The `Sec-WebSocket-Accept` a correct upstream answers to `head`.
pub fn accept_for(head: &str) -> String {
    let key = super::header_in(head, "sec-websocket-key").expect("a Sec-WebSocket-Key");
    wsgate::ws::accept_key(key.as_bytes())
}
