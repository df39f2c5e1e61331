//! An HTTP/2 client for the tests: h2c with prior knowledge or h2 over TLS, plain requests, and
//! WebSockets opened with an extended CONNECT (RFC 8441) and spoken by tokio-tungstenite over
//! the upgraded stream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::WAIT;

/// A WebSocket on one stream of an HTTP/2 connection.
pub type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct H2 {
    pub send: SendRequest<Full<Bytes>>,
    /// `scheme://authority` for the request URIs.
    pub base: String,
}

/// Opens an h2c connection (prior knowledge) to `addr`.
pub async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    handshake(TokioIo::new(tcp), format!("http://{addr}")).await
}

/// Opens an h2 connection over TLS (ALPN "h2") to `addr`, trusting `root`, for `localhost`.
pub async fn h2_tls(addr: SocketAddr, root: &CertificateDer<'static>) -> H2 {
    let tls = tls_connect(addr, root, &[b"h2"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server chose h2 in ALPN"
    );
    handshake(
        TokioIo::new(tls),
        format!("https://localhost:{}", addr.port()),
    )
    .await
}

/// A TLS connection to `addr` for `localhost`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

async fn handshake<I>(io: I, base: String) -> H2
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = tokio::time::timeout(
        WAIT,
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(io),
    )
    .await
    .expect("h2 handshake in time")
    .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h = H2 { send, base };
    // The server's SETTINGS arrive after the handshake future resolves: wait for one round
    // trip so `extended_connect` reflects them.
    let _ = h.request(Method::GET, "/healthz", &[], Bytes::new()).await;
    h
}

/// A response read whole.
#[derive(Debug)]
pub struct H2Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    pub body: String,
}

impl H2 {
    /// One request on its own stream; the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> H2Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        self.send.ready().await.expect("connection usable");
        let resp = tokio::time::timeout(WAIT, self.send.send_request(req))
            .await
            .expect("answer in time")
            .expect("answer");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        H2Reply {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> H2Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Sends an extended CONNECT for a WebSocket on `path` with `headers` (add
    /// `sec-websocket-version: 13` yourself, or use [`H2::ws`]); the response, upgradable on
    /// a 2xx.
    pub async fn connect_ws(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<hyper::body::Incoming> {
        let mut b = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(Full::new(Bytes::new())).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        self.send.ready().await.expect("connection usable");
        tokio::time::timeout(WAIT, self.send.send_request(req))
            .await
            .expect("answer in time")
            .expect("answer")
    }

    /// Opens a WebSocket on `path`; panics unless the server answers 200.
    pub async fn ws(&mut self, path: &str) -> H2Ws {
        self.ws_with(path, &[]).await.0
    }

    /// Opens a WebSocket on `path` with more request headers; the WebSocket and the 200's
    /// headers.
    pub async fn ws_with(&mut self, path: &str, extra: &[(&str, &str)]) -> (H2Ws, http::HeaderMap) {
        let mut headers = vec![("sec-websocket-version", "13")];
        headers.extend_from_slice(extra);
        let mut resp = self.connect_ws(path, &headers).await;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            panic!("extended CONNECT to {path}: {status} {body:?}");
        }
        let headers = resp.headers().clone();
        let up = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut resp))
            .await
            .expect("upgrade in time")
            .expect("upgraded stream");
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, None).await;
        (ws, headers)
    }
}

/// What the server's SETTINGS said.
#[derive(Debug)]
pub struct Settings {
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL.
    pub extended_connect: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: usize,
}

/// An h2 connection at the frame level (the `h2` crate): for what hyper's client does not
/// show (the SETTINGS) or do (RST_STREAM on a WebSocket). Returns once a first request got its
/// answer, so the server's SETTINGS are in.
pub async fn raw_h2<I>(io: I, base: &str) -> (h2::client::SendRequest<Bytes>, Settings)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = tokio::time::timeout(WAIT, h2::client::handshake(io))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    let req = Request::get(format!("{base}/healthz")).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let settings = Settings {
        extended_connect: send.is_extended_connect_protocol_enabled(),
        max_streams: send.current_max_send_streams(),
    };
    (send, settings)
}

/// Opens a WebSocket by extended CONNECT at the frame level of the `h2` crate, on a connection
/// from [`raw_h2`]; the stream's two halves.
pub async fn raw_h2_ws(send: &mut h2::client::SendRequest<Bytes>, base: &str, path: &str) -> RawWs {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{base}{path}"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let mut ready = send.clone().ready().await.expect("ready");
    let (resp, tx) = ready.send_request(req, false).expect("send");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK, "extended CONNECT to {path}");
    RawWs {
        tx,
        rx: resp.into_body(),
        buf: Vec::new(),
    }
}

/// A WebSocket on an h2 stream, frames written and read by hand.
pub struct RawWs {
    pub tx: h2::SendStream<Bytes>,
    pub rx: h2::RecvStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends one masked client frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        let f = super::client_frame(opcode, payload);
        self.tx.send_data(Bytes::from(f), false).expect("send");
    }

    /// The next frame from the server (opcode, payload), taking its bytes off the stream's
    /// window as a reading client does; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(h) = wsgate::ws::frame::parse_header(&self.buf) {
                let total = h.size + h.len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[h.size..total].to_vec();
                    self.buf.drain(..total);
                    return Some((h.opcode_raw, payload));
                }
            }
            let data = tokio::time::timeout(WAIT, self.rx.data())
                .await
                .expect("data in time")?;
            let data = data.ok()?;
            let _ = self.rx.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next text message's payload (Pings skipped).
    pub async fn text(&mut self) -> String {
        loop {
            let (op, p) = self.next().await.expect("a frame");
            match op {
                0x1 => return String::from_utf8(p).expect("UTF-8"),
                0x9 | 0xA => continue,
                _ => panic!("expected text, got opcode {op} {p:?}"),
            }
        }
    }
}

/// Reads frames from `s` until a Close; its code (1005 when it has none), or `None` at EOF.
pub async fn close_code<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let mut buf = Vec::new();
    loop {
        let (op, p) = read_frame(s, &mut buf).await?;
        if op == 0x8 {
            return Some(if p.len() >= 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                1005
            });
        }
    }
}

/// Reads one server frame from `s` (opcode, payload); `buf` keeps bytes read beyond it.
pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some(h) = wsgate::ws::frame::parse_header(buf) {
            let total = h.size + h.len as usize;
            if buf.len() >= total {
                let payload = buf[h.size..total].to_vec();
                buf.drain(..total);
                return Some((h.opcode_raw, payload));
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("a frame in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl H2 {
    /// Opens a WebSocket on `path` and returns the raw upgraded stream, for frame-level tests.
    pub async fn raw_ws(&mut self, path: &str) -> TokioIo<Upgraded> {
        let mut resp = self
            .connect_ws(path, &[("sec-websocket-version", "13")])
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "extended CONNECT to {path}");
        let up = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut resp))
            .await
            .expect("upgrade in time")
            .expect("upgraded stream");
        TokioIo::new(up)
    }
}
