//! The bench's own WebSocket client: loopback-only targets (`ws://`, or `wss://` over rustls),
//! the upgrade handshake (the accept key is checked), pre-masked stamped frames and a frame
//! reader over one reusable buffer.
//!
//! It speaks just enough RFC 6455 for benchmarks: unfragmented data frames, Pings answered with
//! Pongs, Close. A fragmented message from the server is reported as a protocol error.
//!
//! With `--h2` a WebSocket is a stream of a shared HTTP/2 connection instead (h2c for `ws://`,
//! h2 by ALPN for `wss://`), opened by an extended CONNECT (RFC 8441) as browsers do; the frames
//! on it are the same.

use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::ws::frame::{OpCode, encode_masked, parse_header};

/// The mask every frame of this client uses. RFC 6455 §5.3 asks for unpredictable masks to
/// protect proxies from cache poisoning; that does not apply to a loopback benchmark, and a
/// fixed mask lets frames be masked once and reused.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Payload bytes 0..8 send time (ns, [`super::stats::now_ns`]), 8..16 sequence number,
/// 16..24 sender id, then a fixed pattern that receivers check.
pub const STAMP_BYTES: usize = 24;

/// A loopback address plus the path and Host header to request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Offer permessage-deflate (RFC 7692) and inflate the compressed messages the server sends.
    pub deflate: bool,
    /// The URL was `wss://`: every connection runs a TLS handshake first.
    pub secure: bool,
    /// How `wss://` connections verify the server (set from `--ca` / `--insecure`).
    pub tls: Option<TlsClient>,
    /// `--h2`: the HTTP/2 connections WebSockets open their streams on.
    pub h2: Option<H2Pool>,
}

/// A fixed number of HTTP/2 connections, each opened when its first stream needs it; streams
/// are spread over them round robin. Clones share the connections.
#[derive(Clone)]
pub struct H2Pool(Arc<H2Slots>);

struct H2Slots {
    slots: Vec<tokio::sync::OnceCell<SendRequest<Empty<Bytes>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl H2Pool {
    pub fn new(conns: usize) -> H2Pool {
        H2Pool(Arc::new(H2Slots {
            slots: (0..conns.max(1))
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// The connections opened so far.
    pub fn opened(&self) -> usize {
        self.0.slots.iter().filter(|s| s.initialized()).count()
    }

    /// The next connection in turn, opened (TCP, TLS with ALPN "h2", the HTTP/2 handshake) if it
    /// is not yet.
    async fn sender(&self, t: &Target) -> Result<SendRequest<Empty<Bytes>>, ConnectError> {
        use std::sync::atomic::Ordering;
        let i = self.0.next.fetch_add(1, Ordering::Relaxed) % self.0.slots.len();
        self.0.slots[i]
            .get_or_try_init(|| h2_handshake(t))
            .await
            .cloned()
    }
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("conns", &self.0.slots.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for H2Pool {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for H2Pool {}

/// Opens one HTTP/2 connection to `t` and waits for the server's SETTINGS, which must allow
/// extended CONNECT before the first WebSocket stream is sent.
async fn h2_handshake(t: &Target) -> Result<SendRequest<Empty<Bytes>>, ConnectError> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|source| ConnectError::Connect {
            addr: t.addr,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let io = match &t.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let s = tls
                .connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(ConnectError::Tls)?;
            if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ConnectError::BadHandshake(
                    "--h2: the server did not choose \"h2\" in ALPN; does it serve HTTP/2 (server.tls.alpn)?".into(),
                ));
            }
            Stream::Tls(Box::new(s))
        }
    };
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::BadHandshake(format!("--h2: HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // The server's SETTINGS come after the handshake future resolves; any answer to a first
    // request means they have been read.
    let req = http::Request::get(format!("{}/", t.origin()))
        .body(Empty::new())
        .expect("a valid request");
    send.ready()
        .await
        .map_err(|e| ConnectError::BadHandshake(format!("--h2: {e}")))?;
    send.send_request(req)
        .await
        .map_err(|e| ConnectError::BadHandshake(format!("--h2: first request: {e}")))?;
    Ok(send)
}

/// TLS for `wss://` targets: the connector and the name sent and checked.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TlsClient {}

impl TlsClient {
    /// A client for `host` that trusts the CA certificates in `ca` (PEM), or any certificate
    /// when `insecure`, or this machine's roots when neither is given, offering "h2" in ALPN
    /// when `h2` and "http/1.1" otherwise. Sessions are resumed as browsers do. The error is a
    /// sentence for the user.
    pub fn new(
        host: &str,
        ca: Option<&str>,
        insecure: bool,
        h2: bool,
    ) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let builder = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::any_cert::AnyCert(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match ca {
                Some(path) => {
                    use rustls::pki_types::CertificateDer;
                    use rustls::pki_types::pem::PemObject;
                    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                        .and_then(|i| i.collect())
                        .map_err(|e| format!("--ca {path}: cannot read a PEM certificate from it ({e}); give the CA (or the self-signed certificate) the server uses"))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(format!(
                            "--ca {path}: holds no usable CA certificate; give the CA (or the self-signed certificate) in PEM"
                        ));
                    }
                }
                None => {
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// A bench connection: plain TCP, or TLS over it for `wss://`, or (`--h2`) one stream of an
/// HTTP/2 connection.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    H2(Box<TokioIo<Upgraded>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::H2(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::H2(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::H2(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::H2(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::H2(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Parses `ws://host[:port]/path` or `wss://...` (or `http://` when `scheme` is "http") and
/// refuses anything that is not on this machine. The error is a sentence for the user.
pub fn parse_target(url: &str, scheme: &str) -> Result<Target, String> {
    let secure_scheme = format!("{scheme}s://");
    let (secure, rest) = match url.strip_prefix(&secure_scheme) {
        Some(r) if scheme == "ws" => (true, r),
        _ => (
            false,
            url.strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
                .ok_or_else(|| {
                    if scheme == "ws" {
                        format!("{url:?} is not a ws:// or wss:// URL; expected e.g. ws://127.0.0.1:8080/path")
                    } else {
                        format!("{url:?} is not a {scheme}:// URL; expected e.g. {scheme}://127.0.0.1:8080/path (TLS is not supported here)")
                    }
                })?,
        ),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("{url:?}: port {p:?} is not a number from 1 to 65535"))?,
        None if secure => 443,
        None => 80,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| not_loopback(host))?
    };
    if !ip.is_loopback() {
        return Err(not_loopback(host));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        path: path.to_string(),
        deflate: false,
        secure,
        tls: None,
        h2: None,
    })
}

impl Target {
    /// `http://host` or `https://host`: the scheme and authority of HTTP/2 request URIs.
    fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.secure { "https" } else { "http" },
            self.host
        )
    }
}

fn not_loopback(host: &str) -> String {
    format!(
        "{host} is not a loopback address; wsgate bench only drives servers on this machine, so use 127.0.0.1, [::1] or localhost"
    )
}

/// Why a connection attempt failed; `kind` names it in the report.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Io(#[source] std::io::Error),
    #[error("the server answered {status} instead of 101")]
    Status { status: u16 },
    #[error("bad handshake: {0}")]
    BadHandshake(String),
    #[error("timed out")]
    Timeout,
}

impl ConnectError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Connect { .. } => "connect",
            ConnectError::Tls(_) => "tls",
            ConnectError::Io(_) => "handshake_io",
            ConnectError::Status { .. } => "http_status",
            ConnectError::BadHandshake(_) => "bad_handshake",
            ConnectError::Timeout => "connect_timeout",
        }
    }
}

/// A 16-byte nonce in base64 for Sec-WebSocket-Key, from a per-process xorshift generator.
fn new_key() -> String {
    use base64::Engine;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ super::stats::now_ns()
        ^ 0xD1B5_4A32_D192_ED03;
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An open WebSocket with its read buffer.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Pings the server sent (each answered with a Pong).
    pub pings: u64,
    /// The server agreed to permessage-deflate: RSV1 marks a compressed message.
    inflate: bool,
    /// Bytes of the data frames received (headers included), as they crossed the wire.
    pub wire_bytes: u64,
}

/// What the server did besides sending data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    /// The server sent Close with this code (1005 when it had none).
    Closed(u16),
}

impl Conn {
    /// Connects and upgrades; `read_buf` is the read buffer size (it grows for larger frames).
    pub async fn connect(t: &Target, read_buf: usize) -> Result<Conn, ConnectError> {
        Conn::connect_with(t, read_buf, None).await
    }

    /// Connects and upgrades offering subprotocol `protocol`, when given.
    pub async fn connect_with(
        t: &Target,
        read_buf: usize,
        protocol: Option<&str>,
    ) -> Result<Conn, ConnectError> {
        if let Some(pool) = &t.h2 {
            return Conn::connect_h2(pool, t, read_buf, protocol).await;
        }
        let stream = TcpStream::connect(t.addr)
            .await
            .map_err(|source| ConnectError::Connect {
                addr: t.addr,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let stream = match &t.tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::Tls(Box::new(
                tls.connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(ConnectError::Tls)?,
            )),
        };
        Conn::upgrade(stream, t, read_buf, protocol).await
    }

    /// A WebSocket on a new stream of one of the pool's HTTP/2 connections: an extended
    /// CONNECT (`:protocol = websocket`, no key) answered 200 (RFC 8441 §5).
    async fn connect_h2(
        pool: &H2Pool,
        t: &Target,
        read_buf: usize,
        protocol: Option<&str>,
    ) -> Result<Conn, ConnectError> {
        let mut send = pool.sender(t).await?;
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("{}{}", t.origin(), t.path))
            .header("sec-websocket-version", "13");
        if let Some(p) = protocol {
            req = req.header("sec-websocket-protocol", p);
        }
        if t.deflate {
            req = req.header(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            );
        }
        let mut req = req
            .body(Empty::new())
            .map_err(|e| ConnectError::BadHandshake(format!("{e}")))?;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let stream_err = |e: hyper::Error| ConnectError::Io(std::io::Error::other(e));
        send.ready().await.map_err(stream_err)?;
        let mut resp = send.send_request(req).await.map_err(stream_err)?;
        if resp.status() != http::StatusCode::OK {
            return Err(ConnectError::Status {
                status: resp.status().as_u16(),
            });
        }
        let inflate = resp
            .headers()
            .get_all("sec-websocket-extensions")
            .iter()
            .any(|v| v.as_bytes().starts_with(b"permessage-deflate"));
        if t.deflate && !inflate {
            return Err(ConnectError::BadHandshake(
                "--deflate: the server did not agree to permessage-deflate".into(),
            ));
        }
        let up = hyper::upgrade::on(&mut resp).await.map_err(stream_err)?;
        Ok(Conn {
            stream: Stream::H2(Box::new(TokioIo::new(up))),
            buf: vec![0u8; read_buf.max(1024)],
            start: 0,
            end: 0,
            pings: 0,
            inflate,
            wire_bytes: 0,
        })
    }

    async fn upgrade(
        mut stream: Stream,
        t: &Target,
        read_buf: usize,
        protocol: Option<&str>,
    ) -> Result<Conn, ConnectError> {
        let key = new_key();
        let mut offer = protocol.map_or(String::new(), |p| {
            format!("Sec-WebSocket-Protocol: {p}\r\n")
        });
        if t.deflate {
            // What browsers send.
            offer.push_str(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            );
        }
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n",
            t.path, t.host
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(ConnectError::Io)?;
        let mut buf = vec![0u8; read_buf.max(1024)];
        let mut end = 0;
        loop {
            if end == buf.len() {
                return Err(ConnectError::BadHandshake(
                    "response head larger than the read buffer".into(),
                ));
            }
            let n = stream
                .read(&mut buf[end..])
                .await
                .map_err(ConnectError::Io)?;
            if n == 0 {
                return Err(ConnectError::BadHandshake(
                    "the server closed the connection during the handshake".into(),
                ));
            }
            end += n;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf[..end]) {
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(ConnectError::BadHandshake(format!("{e}"))),
                Ok(httparse::Status::Complete(head)) => {
                    let status = resp.code.unwrap_or(0);
                    if status != 101 {
                        return Err(ConnectError::Status { status });
                    }
                    let accept = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                        .map(|h| h.value);
                    let want = crate::ws::accept_key(key.as_bytes());
                    if accept != Some(want.as_bytes()) {
                        return Err(ConnectError::BadHandshake(
                            "Sec-WebSocket-Accept is missing or wrong".into(),
                        ));
                    }
                    let inflate = resp.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("sec-websocket-extensions")
                            && h.value.starts_with(b"permessage-deflate")
                    });
                    if t.deflate && !inflate {
                        return Err(ConnectError::BadHandshake(
                            "--deflate: the server did not agree to permessage-deflate".into(),
                        ));
                    }
                    return Ok(Conn {
                        stream,
                        buf,
                        start: head,
                        end,
                        pings: 0,
                        inflate,
                        wire_bytes: 0,
                    });
                }
            }
        }
    }

    /// Reads more bytes; Ok(0) is EOF.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Handles every complete frame in the buffer: data payloads go to `on_data(payload, text)`,
    /// Pings get a Pong appended to `out`, a Close ends processing.
    pub fn frames(
        &mut self,
        out: &mut Vec<u8>,
        mut on_data: impl FnMut(&[u8], bool),
    ) -> Result<Status, String> {
        while let Some(h) = parse_header(&self.buf[self.start..self.end]) {
            let total = h.size as u64 + h.len;
            if ((self.end - self.start) as u64) < total {
                break;
            }
            let total = total as usize;
            let payload = &self.buf[self.start + h.size..self.start + total];
            let compressed = self.inflate && h.rsv == 0x4;
            if h.mask.is_some() || (h.rsv != 0 && !compressed) {
                return Err("the server sent a masked frame or RSV bits".into());
            }
            match OpCode::from_u8(h.opcode_raw) {
                Some(OpCode::Text | OpCode::Binary) if h.fin && compressed => {
                    self.wire_bytes += total as u64;
                    let mut plain = bytes::BytesMut::new();
                    crate::ws::deflate::inflate(payload, usize::MAX / 2, &mut plain)
                        .map_err(|e| format!("a compressed message does not inflate: {e:?}"))?;
                    on_data(&plain, h.opcode_raw == 1)
                }
                Some(OpCode::Text | OpCode::Binary) if h.fin => {
                    self.wire_bytes += total as u64;
                    on_data(payload, h.opcode_raw == 1)
                }
                Some(OpCode::Ping) => {
                    self.pings += 1;
                    out.extend_from_slice(&encode_masked(OpCode::Pong, true, payload, MASK));
                }
                Some(OpCode::Pong) => {}
                Some(OpCode::Close) => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    self.start += total;
                    return Ok(Status::Closed(code));
                }
                _ => return Err(format!("unsupported frame (opcode {})", h.opcode_raw)),
            }
            self.start += total;
        }
        Ok(Status::Open)
    }

    /// Sends Close 1000 and waits (at most `wait`) for the server's Close or EOF.
    /// Returns whether the closing handshake completed.
    pub async fn close(mut self, wait: std::time::Duration) -> bool {
        let close = encode_masked(OpCode::Close, true, &1000u16.to_be_bytes(), MASK);
        if self.stream.write_all(&close).await.is_err() {
            return false;
        }
        let mut sink = Vec::new();
        let clean = tokio::time::timeout(wait, async {
            let mut got_close = false;
            loop {
                match self.frames(&mut sink, |_, _| {}) {
                    Ok(Status::Closed(_)) => got_close = true,
                    Ok(Status::Open) => {}
                    Err(_) => return false,
                }
                match self.read().await {
                    Ok(0) => return got_close,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        // An HTTP/2 stream ends our half with END_STREAM (dropped open, it would be reset).
        if matches!(self.stream, Stream::H2(_)) {
            let _ = self.stream.shutdown().await;
        }
        clean
    }
}

/// A masked binary frame of `size` payload bytes whose stamp is patched per message, so the
/// payload is masked once and each message costs a copy plus 24 XORs.
#[derive(Debug, Clone)]
pub struct FrameTemplate {
    frame: Vec<u8>,
    header: usize,
}

impl FrameTemplate {
    pub fn new(size: usize) -> Self {
        let payload = pattern_payload(size);
        let frame = encode_masked(OpCode::Binary, true, &payload, MASK);
        FrameTemplate {
            header: frame.len() - size,
            frame,
        }
    }

    /// Appends one frame stamped with the current time, `seq` and `sender` to `out`.
    pub fn push(&self, out: &mut Vec<u8>, seq: u64, sender: u64) {
        let at = out.len() + self.header;
        out.extend_from_slice(&self.frame);
        let stamp = stamp(super::stats::now_ns(), seq, sender);
        for (i, b) in stamp.iter().enumerate() {
            out[at + i] = b ^ MASK[i % 4];
        }
    }
}

/// The unmasked payload for a message: stamp then pattern.
pub fn stamped_payload(size: usize, seq: u64, sender: u64) -> Vec<u8> {
    let mut p = pattern_payload(size);
    p[..STAMP_BYTES].copy_from_slice(&stamp(super::stats::now_ns(), seq, sender));
    p
}

fn stamp(ts: u64, seq: u64, sender: u64) -> [u8; STAMP_BYTES] {
    let mut s = [0u8; STAMP_BYTES];
    s[..8].copy_from_slice(&ts.to_le_bytes());
    s[8..16].copy_from_slice(&seq.to_le_bytes());
    s[16..].copy_from_slice(&sender.to_le_bytes());
    s
}

/// The filler after the stamp: JSON text of the kind a backend publishes (4 KB before it
/// repeats), so compressed runs see the ratio real messages get, not that of a short cycle.
fn pattern_byte(i: usize) -> u8 {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        let words = [
            "progress", "upload", "user", "alice", "bob", "message", "room", "hello", "build",
            "finished", "step", "compile", "status", "running", "queued", "deploy",
        ];
        let mut s = String::from("[");
        let mut k = 0u64;
        while s.len() < 4096 {
            let w = |j: u64| words[((j.wrapping_mul(2654435761)) >> 7) as usize % words.len()];
            s.push_str(&format!(
                "{{\"id\":{},\"type\":\"{}\",\"user\":\"{}\",\"text\":\"{} {} {}\",\"percent\":{}}},",
                1000 + k * 7,
                w(k),
                w(k + 1),
                w(k + 2),
                w(k + 3),
                w(k + 5),
                (k * 13) % 100
            ));
            k += 1;
        }
        s.into_bytes()
    });
    text[i % text.len()]
}

fn pattern_payload(size: usize) -> Vec<u8> {
    (0..size).map(pattern_byte).collect()
}

/// A received payload's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ts: u64,
    pub seq: u64,
    pub sender: u64,
}

/// Reads the stamp of a payload of the expected size; None when the length or the pattern is
/// wrong (a corrupt message).
pub fn read_stamp(payload: &[u8], size: usize) -> Option<Stamp> {
    if payload.len() != size || size < STAMP_BYTES {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    if !payload[STAMP_BYTES..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i + STAMP_BYTES))
    {
        return None;
    }
    Some(Stamp {
        ts: word(0),
        seq: word(8),
        sender: word(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_targets() {
        let t = parse_target("ws://127.0.0.1:8080/ws/echo", "ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws/echo");
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = parse_target("ws://localhost:9/", "ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        let t = parse_target("ws://[::1]:9", "ws").unwrap();
        assert_eq!((t.addr, t.path.as_str()), ("[::1]:9".parse().unwrap(), "/"));
        let t = parse_target("http://127.3.4.5/api", "http").unwrap();
        assert_eq!(t.addr.port(), 80);
    }

    #[test]
    fn refuses_targets_off_this_machine_with_a_sentence() {
        for url in [
            "ws://10.0.0.1:80/",
            "ws://example.com/",
            "ws://[2001:db8::1]:80/",
        ] {
            let e = parse_target(url, "ws").unwrap_err();
            assert!(e.contains("is not a loopback address"), "{url}: {e}");
        }
        let t = parse_target("wss://localhost/x", "ws").unwrap();
        assert!(t.secure);
        assert_eq!(t.addr.port(), 443);
        let e = parse_target("https://127.0.0.1/", "ws").unwrap_err();
        assert!(e.contains("not a ws:// or wss:// URL"), "{e}");
        let e = parse_target("https://127.0.0.1/", "http").unwrap_err();
        assert!(e.contains("not a http:// URL"), "{e}");
        let e = parse_target("ws://127.0.0.1:99999/", "ws").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn a_stamped_frame_unmasks_to_its_stamp_and_pattern() {
        let t = FrameTemplate::new(64);
        let mut out = vec![0xAA];
        t.push(&mut out, 42, 7);
        let h = parse_header(&out[1..]).unwrap();
        assert_eq!((h.len, h.mask), (64, Some(MASK)));
        let mut payload = out[1 + h.size..].to_vec();
        crate::ws::frame::apply_mask(&mut payload, MASK, 0);
        let s = read_stamp(&payload, 64).unwrap();
        assert_eq!((s.seq, s.sender), (42, 7));
        assert_eq!(read_stamp(&payload, 65), None);
        payload[40] ^= 1;
        assert_eq!(read_stamp(&payload, 64), None);
    }
}
