//! Test support: start wsgate in-process on 127.0.0.1:0, talk raw HTTP, open WebSockets.
#![allow(dead_code)]

pub mod backend;
pub mod broker_suite;
pub mod doctor;
pub mod h2;
pub mod redis;
pub mod upstream;
pub mod v1;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::app::Running;
use wsgate::config::Config;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts wsgate with `toml` (on top of the defaults) listening on a free port.
pub async fn start(toml: &str) -> Running {
    // scripts/test-all runs the proxy suites once per tunnel engine, choosing it with this
    // variable; no other override reaches the tests.
    let env: Vec<(String, String)> = wsgate::config::process_env()
        .into_iter()
        .filter(|(k, _)| k == "WSGATE_PROXY__TUNNEL_IO")
        .collect();
    let mut cfg: Config =
        wsgate::config::load_str("test.toml", toml, &env).expect("test config is valid");
    cfg.server.listen = "127.0.0.1:0".into();
    wsgate::lifecycle::raise_nofile_limit();
    wsgate::app::start(cfg).await.expect("server starts")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name).map(str::to_string)
    }

    /// The reply whose head ends at `end` in `buf` (before its blank line), with `body`.
    fn from_head(buf: &[u8], end: usize, body: String) -> Self {
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = status_of(&head).expect("status code");
        Reply { status, head, body }
    }
}

/// A field of a request or response head (the first line is skipped), trimmed.
pub fn header_in<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The status code of a response head.
fn status_of(head: &str) -> Option<u16> {
    head.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// Sends raw bytes and reads the whole response (the server closes, or Content-Length ends it).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_reply(&mut s).await
}

/// Reads one response from a stream.
pub async fn read_reply(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]);
                let len = header_in(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
                if status_of(&head) == Some(101) || len.is_some_and(|n| buf.len() >= end + 4 + n) {
                    break;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("response within the wait limit");
    let end = find(&buf, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&buf)));
    let body = String::from_utf8_lossy(&buf[end + 4..]).to_string();
    Reply::from_head(&buf, end, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A valid handshake request for `path`, plus `extra` header lines.
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// POSTs a body to a path and returns the reply.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    extra: &str,
) -> Reply {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{ct}Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req).await
}

/// Publishes a text message to a group and returns the number of recipients.
pub async fn publish(addr: SocketAddr, group: &str, text: &str) -> u64 {
    let r = post(
        addr,
        &format!("/api/groups/{group}/messages"),
        Some("text/plain"),
        text.as_bytes(),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "publish failed: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON answer");
    v["recipients"].as_u64().expect("recipients")
}

/// Opens a WebSocket to `path`.
pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect within the wait limit")
        .expect("handshake succeeds");
    ws
}

/// Next data or close message, skipping pings.
pub async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait limit")
            .expect("stream still open")
            .expect("no protocol error");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// Next text message.
pub async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

pub async fn send_text(ws: &mut Ws, t: &str) {
    ws.send(Message::text(t)).await.expect("send");
}

/// Waits until `cond` holds, polling; panics after the wait limit.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads raw frames from a socket after a handshake until a Close arrives; returns its code
/// and reason, or None on EOF without a Close.
pub async fn read_until_close(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(h) = wsgate::ws::frame::parse_header(&buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            if h.opcode_raw == 0x8 {
                let p = &buf[h.size..total];
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).to_string();
                return Some((code, reason));
            }
            buf.drain(..total);
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("a close within the wait limit")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens a raw WebSocket (handshake done, response consumed) for frame-level tests.
pub async fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&upgrade_request(path, ""))
        .await
        .expect("write");
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    s
}

/// This machine's address on its default route (no packet is sent: a UDP "connect" only picks
/// the source address).
pub fn non_loopback_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .expect("a route to the outside: the per-IP limit exempts loopback, so this test needs another local address");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let op = wsgate::ws::frame::OpCode::from_u8(opcode).expect("valid opcode");
    wsgate::ws::frame::encode_masked(op, true, payload, [1, 2, 3, 4])
}

/// A loopback port that was free a moment ago, for a `wsgate` process that binds it itself.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("bound address").port()
}

/// The real binary with `args` and `env`. The engine choice of scripts/test-all
/// (`WSGATE_PROXY__TUNNEL_IO`) reaches the child only when passed in `env`.
pub fn wsgate_command(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"));
    c.args(args)
        .env_remove("WSGATE_PROXY__TUNNEL_IO")
        .envs(env.iter().copied());
    c
}

/// The lines a child writes to its (piped) stderr, drained on a thread so that the child never
/// blocks on it.
pub fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A child process that is killed and reaped when dropped, so that a test that fails (panics)
/// half way leaves no server running behind it.
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// Starts the real binary with `args` and `env`, listening on `port`, and waits (bounded) for
/// its "listening on" log line, which must come first.
pub fn spawn_wsgate(args: &[&str], env: &[(&str, &str)], port: u16) -> Reaped {
    let mut child = Reaped(
        wsgate_command(args, env)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the wsgate binary starts"),
    );
    let line = stderr_lines(&mut child)
        .recv_timeout(WAIT)
        .expect("wsgate logs its address");
    assert!(
        line.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{line}"
    );
    child
}

/// A config for a wsgate proxy on `port` with one worker that sends every path to `upstream`
/// (upstream "app"), its own echo route off; `extra` is added after `[websocket]`.
pub fn proxy_toml(upstream: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n[websocket]\necho_path = \"\"\n{extra}\n\
[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"app\"\n"
    )
}

/// Reads a response head and returns it parsed, with the raw bytes read beyond it (binary
/// frames after a 101, which a `String` body would mangle).
pub async fn read_head_and_rest(s: &mut TcpStream) -> (Reply, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                return end;
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head within the wait limit");
    let rest = buf[end + 4..].to_vec();
    (Reply::from_head(&buf, end, String::new()), rest)
}

/// Asserts that `text` (a head as the other side saw it) contains every one of `wants`.
pub fn assert_has_all(text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
}

/// Reads frames from `s`, after those already in `buf`, until `n` have arrived; returns their
/// payloads as text (lossy).
pub async fn read_texts(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(h) = wsgate::ws::frame::parse_header(buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            texts.push(String::from_utf8_lossy(&buf[h.size..total]).to_string());
            buf.drain(..total);
        }
        if texts.len() >= n {
            return texts;
        }
        let mut chunk = [0u8; 1024];
        let got = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("frames within the wait limit")
            .unwrap_or(0);
        assert!(got > 0, "closed early; got {texts:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}
