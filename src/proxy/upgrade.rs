//! WebSocket upgrades through the proxy: forward the handshake over HTTP/1.1 with
//! `Connection: Upgrade` and `Upgrade: websocket` put back (they are hop-by-hop, which is why
//! nginx drops them unless configured), check the upstream's 101, and hand both sockets to the
//! [`super::tunnel`].
//!
//! Two entries share one exchange with the upstream ([`exchange`], raw HTTP/1.1 from
//! [`super::h1`]): [`serve_first`] takes an upgrade that is the first request of a connection
//! without hyper on either side (the common case: browsers open a fresh connection per
//! WebSocket), and [`upgrade`] takes one that hyper parsed (a later request on a keep-alive
//! connection).
//!
//! A WebSocket that comes as an HTTP/2 extended CONNECT (RFC 8441) is bridged by [`upgrade`]
//! too: the upstream gets an HTTP/1.1 GET + Upgrade with a key wsgate makes, its 101 is checked
//! against that key and the client gets a 200; the tunnel then runs on the h2 stream (the tokio
//! engine, frame-aware keepalive included).
//!
//! `Sec-WebSocket-Key`, `-Version`, `-Protocol` and `-Extensions` pass through untouched, in both
//! directions (a bridged key is wsgate's own). Passing `Sec-WebSocket-Extensions` (e.g. permessage-deflate) is safe although the
//! tunnel parses frames: it never re-frames, never changes fragmentation and relays payload bytes
//! and RSV bits as they are (RFC 6455 §5.4 only forbids changing what it does not understand);
//! the frames it injects itself are unfragmented control frames, which extensions leave alone.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::balance::Active;
use super::error::Error;
use super::h1::{self, Field, Framing};
use super::headers::Forwarding;
use super::state::Proxy;
use super::tls::Stream;
use super::tunnel::{self, Guard, Hold, TunnelSlot};
use super::uring;
use crate::metrics::METRICS;
use crate::reply::{Body, reply_and_close};
use crate::transport::{Rewind, Transport};
use crate::ws::handshake::accept_key;

/// What an upstream 426 to a forwarded upgrade means; logged and sent as `X-Wsgate-Diagnosis`.
const DIAGNOSIS_426: &str = "the upstream answered 426 Upgrade Required although wsgate forwarded Upgrade: websocket and Connection: Upgrade; \
something between wsgate and the upstream strips them (an nginx without proxy_set_header Upgrade/Connection?), \
or the upstream expects another path, subprotocol or Sec-WebSocket-Version";

static DIAGNOSIS_FIELD: [Field<'static>; 1] = [(b"X-Wsgate-Diagnosis", DIAGNOSIS_426.as_bytes())];

/// Whether a request asks for a WebSocket: `GET` with `websocket` among the `Upgrade` tokens
/// (case-insensitive).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && crate::ws::handshake::has_token(req.headers(), header::UPGRADE, "websocket")
}

/// Whether a request is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441).
pub fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket")
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes in base64) for a bridged handshake.
fn fresh_key() -> String {
    use base64::Engine;
    let mut k = [0u8; 16];
    // The key only proves the upstream read this request (RFC 6455 §10.3 wants it unpredictable
    // for browsers' sake); should the system's generator fail, a constant still does that job.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Checks the upstream's 101 against the request's key; the error says what the upstream got
/// wrong.
pub fn check_101<'a>(
    resp: impl Iterator<Item = Field<'a>> + Clone,
    key: Option<&[u8]>,
) -> Result<(), String> {
    if !h1::has_token(resp.clone(), "upgrade", "websocket") {
        let got = h1::get(resp, "upgrade").map_or("no Upgrade header".to_string(), |v| {
            format!("Upgrade: {}", String::from_utf8_lossy(v))
        });
        return Err(format!(
            "it answered 101 Switching Protocols with {got} instead of Upgrade: websocket"
        ));
    }
    let Some(key) = key else {
        return Err("the client sent no Sec-WebSocket-Key, so the 101 cannot be checked".into());
    };
    let want = accept_key(key);
    match h1::get(resp, "sec-websocket-accept") {
        None => Err("its 101 has no Sec-WebSocket-Accept header".into()),
        Some(v) if v == want.as_bytes() => Ok(()),
        Some(v) => Err(format!(
            "its Sec-WebSocket-Accept {:?} does not match the key (expected {want:?}); is something between wsgate and the upstream rewriting Sec-WebSocket-Key?",
            String::from_utf8_lossy(v)
        )),
    }
}

/// Why an upgrade is refused before any upstream is asked.
#[derive(Debug)]
enum Refusal {
    ShuttingDown,
    Full { max: usize },
}

impl Refusal {
    fn body(&self) -> String {
        match self {
            Refusal::ShuttingDown => {
                "503 Service Unavailable: wsgate is shutting down; reconnect in a moment.\n".into()
            }
            Refusal::Full { max } => format!(
                "503 Service Unavailable: this server holds its maximum of {max} proxied WebSocket tunnels \
(server.max_connections). Retry with backoff, or raise the limit.\n"
            ),
        }
    }

    /// `Retry-After` for a full server: a moment is enough for tunnels to end.
    fn extra(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::ShuttingDown => &[],
            Refusal::Full { .. } => &[("Retry-After", "5")],
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut r = crate::reply::text(StatusCode::SERVICE_UNAVAILABLE, self.body());
        for (n, v) in self.extra() {
            r.headers_mut().insert(*n, HeaderValue::from_static(v));
        }
        r
    }

    async fn reply<S: Transport>(self, client: &mut S) {
        reply_and_close(
            client,
            StatusCode::SERVICE_UNAVAILABLE,
            self.extra(),
            &self.body(),
        )
        .await;
    }
}

/// Takes a place among `server.max_connections` tunnels before the upstream is asked (so
/// concurrent handshakes cannot overshoot the limit); it is given back when dropped.
fn take_slot(proxy: &Proxy, peer: SocketAddr, held: Option<Hold>) -> Result<TunnelSlot, Refusal> {
    if proxy.tunnels.shutdown.is_begun() {
        return Err(Refusal::ShuttingDown);
    }
    match proxy.slots.take() {
        Ok(slot) => Ok(TunnelSlot::new(slot, held)),
        Err(full) => {
            tracing::warn!(%peer, max = full.max, "tunnel refused: server.max_connections reached");
            Err(Refusal::Full { max: full.max })
        }
    }
}

thread_local! {
    /// Head buffers, reused across handshakes on a worker thread.
    static BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A cleared head buffer from this thread's pool.
fn pooled() -> Vec<u8> {
    BUFS.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(2048))
}

/// Gives a buffer back to the pool, unless it grew large (a huge head must not stay resident).
fn unpool(mut buf: Vec<u8>) {
    if buf.capacity() <= 16 * 1024 {
        buf.clear();
        BUFS.with_borrow_mut(|b| {
            if b.len() < 8 {
                b.push(buf);
            }
        });
    }
}

/// Connects to a server of upstream `ui` (and runs the TLS handshake with an `https://` one),
/// trying the next one while connecting fails (nothing has been sent yet, so a retry is always
/// safe).
async fn connect(proxy: &Proxy, ui: usize, peer: SocketAddr) -> Result<(usize, Stream), Error> {
    let up = &proxy.upstreams[ui];
    let mut tried = Vec::new();
    let mut last = None;
    loop {
        let Some(si) = up.pick(peer.ip(), &tried) else {
            return Err(last.unwrap_or(Error::NoServer {
                upstream: up.name.clone(),
            }));
        };
        tried.push(si);
        let addr = &up.servers[si].addr;
        let err = match tokio::time::timeout(up.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let Some(tls) = proxy.tls(ui) else {
                    return Ok((si, Stream::Plain(s)));
                };
                match tls.connect(s, addr, up.connect_timeout).await {
                    Ok(s) => return Ok((si, Stream::Tls(Box::new(s)))),
                    Err(failure) => Error::Tls {
                        upstream: up.name.clone(),
                        server: addr.clone(),
                        sni: tls.sni(addr),
                        failure: Box::new(failure),
                    },
                }
            }
            Ok(Err(source)) => Error::Connect {
                upstream: up.name.clone(),
                server: addr.clone(),
                source,
            },
            Err(_) => Error::ConnectTimeout {
                upstream: up.name.clone(),
                server: addr.clone(),
                after: up.connect_timeout,
            },
        };
        if up.failed(si) {
            tracing::warn!(upstream = %up.name, server = %addr, "server taken out after max_fails failures");
        }
        tracing::info!(upstream = %up.name, server = %addr, error = %err, "connect failed; trying the next server");
        last = Some(err);
    }
}

/// What the upstream answered: a checked 101 or another final response. Its head is
/// `buf[..head_len]`; the rest of `buf` came after it (tunnel bytes or the start of a body).
struct Answer {
    stream: Stream,
    buf: Vec<u8>,
    head_len: usize,
    status: u16,
    si: usize,
    active: Active,
    /// The upstream's `read_timeout`, for reading a body after the head.
    read_timeout: Duration,
}

impl Answer {
    /// For a non-101 answer: the socket, a reader for the body that follows the head (framed
    /// as `framing`, each wait bounded by `read_timeout`), and the server's in-flight count.
    fn into_body(self, framing: Framing) -> (Stream, h1::BodyReader, Active) {
        let reader = h1::BodyReader::new(
            framing,
            BytesMut::from(&self.buf[self.head_len..]),
            self.read_timeout,
        );
        unpool(self.buf);
        (self.stream, reader, self.active)
    }

    /// The bytes after the head, copied: the head buffer goes back to the pool and must not
    /// live as long as the tunnel.
    fn rest(&self) -> Bytes {
        Bytes::copy_from_slice(&self.buf[self.head_len..])
    }
}

/// The upstream's response head, read so far.
enum Head {
    /// A final response of `len` bytes with `status`; for a 101, whether it checked out.
    Final {
        len: usize,
        status: u16,
        check: Result<(), String>,
    },
    /// An interim 1xx (other than 101) of `len` bytes, which is skipped as hyper does.
    Interim(usize),
}

/// Parses what `buf` holds of a response head; `None` when more is needed.
fn parse_head(buf: &[u8], key: Option<&[u8]>) -> Result<Option<Head>, String> {
    let mut hs = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut r = httparse::Response::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("its response head is malformed ({e})")),
    };
    let status = r.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Some(Head::Interim(len)));
    }
    let check = if status == 101 {
        check_101(h1::fields(r.headers), key)
    } else {
        Ok(())
    };
    Ok(Some(Head::Final { len, status, check }))
}

/// Why the exchange with the upstream failed: a sentence, or an I/O error (which TLS may
/// explain).
enum Failed {
    Said(String),
    Io(&'static str, std::io::Error),
}

impl From<String> for Failed {
    fn from(s: String) -> Self {
        Failed::Said(s)
    }
}

/// Reads the upstream's final response head into `buf`.
async fn read_head(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    key: Option<&[u8]>,
) -> Result<(usize, u16, Result<(), String>), Failed> {
    loop {
        match parse_head(buf, key)? {
            Some(Head::Final { len, status, check }) => return Ok((len, status, check)),
            Some(Head::Interim(n)) => {
                buf.drain(..n);
                continue;
            }
            None => {}
        }
        if buf.len() >= h1::MAX_RESPONSE_HEAD {
            return Err(Failed::Said(format!(
                "its response head is larger than {} KiB",
                h1::MAX_RESPONSE_HEAD / 1024
            )));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err(Failed::Said(
                    "it closed the connection before sending a response".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Failed::Io("reading its response failed", e)),
        }
    }
}

/// Sends the upgrade to a server of upstream `ui` and reads its answer; a 101 is checked
/// against `key`. Passive health is updated as for plain HTTP.
async fn exchange<'a, I>(
    proxy: &Proxy,
    ui: usize,
    peer: SocketAddr,
    target: &[u8],
    fields: I,
    key: Option<&[u8]>,
) -> Result<Answer, Error>
where
    I: Iterator<Item = Field<'a>> + Clone,
{
    let up = &proxy.upstreams[ui];
    let (si, mut stream) = connect(proxy, ui, peer).await?;
    let server = &up.servers[si].addr;
    let mut buf = pooled();
    h1::put_upgrade_request(
        &mut buf,
        target,
        fields,
        &Forwarding::new(proxy.client(peer)),
        h1::HostRule {
            preserve: proxy.preserve_host,
            upstream: server,
        },
    );
    let active = up.begin(si);
    let res = tokio::time::timeout(up.read_timeout, async {
        if let Err(e) = stream.write_all(&buf).await {
            return Err(Failed::Io("sending the request failed", e));
        }
        buf.clear();
        read_head(&mut stream, &mut buf, key).await
    })
    .await;
    let fail = |e: Error, buf: Vec<u8>| {
        up.failed(si);
        unpool(buf);
        Err(e)
    };
    let (head_len, status, check) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(failed)) => {
            // With TLS 1.3 a server refuses a client certificate after the client's side of
            // the handshake, so the refusal surfaces on the first read.
            if let Failed::Io(_, e) = &failed
                && let Some(tls) = proxy.tls(ui)
            {
                let sni = tls.sni(server);
                if let Some(failure) = tls.explain(e, &sni) {
                    tls.count_late(&failure);
                    return fail(
                        Error::Tls {
                            upstream: up.name.clone(),
                            server: server.clone(),
                            sni,
                            failure: Box::new(failure),
                        },
                        buf,
                    );
                }
            }
            let reason = match failed {
                Failed::Said(s) => s,
                Failed::Io(what, e) => format!("{what}: {e}"),
            };
            return fail(
                Error::Exchange {
                    upstream: up.name.clone(),
                    server: server.clone(),
                    reason,
                },
                buf,
            );
        }
        Err(_) => {
            return fail(
                Error::ResponseTimeout {
                    upstream: up.name.clone(),
                    server: server.clone(),
                    after: up.read_timeout,
                },
                buf,
            );
        }
    };
    up.succeeded(si);
    if let Err(what) = check {
        unpool(buf);
        return Err(Error::BadUpgrade {
            upstream: up.name.clone(),
            server: server.clone(),
            what,
        });
    }
    Ok(Answer {
        stream,
        buf,
        head_len,
        status,
        si,
        active,
        read_timeout: up.read_timeout,
    })
}

/// The fields the client gets from an upstream response: its end-to-end fields (hop-by-hop and
/// `Trailer` removed; `Content-Length` too when the body is not length-delimited, since the
/// hop toward the client frames it anew), then the ones wsgate adds.
fn client_fields<'a>(
    status: u16,
    fields: impl Iterator<Item = Field<'a>> + Clone,
    framing: Framing,
) -> impl Iterator<Item = Field<'a>> {
    let all = fields.clone();
    let keep_length = !matches!(framing, Framing::Chunked | Framing::Eof);
    let added: &'static [Field<'static>] = match status {
        101 => &[(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
        // The body stays the upstream's; this header tells whoever looks at the response
        // (curl -i, browser devtools) that wsgate did forward the upgrade.
        426 => &DIAGNOSIS_FIELD,
        _ => &[],
    };
    fields
        .filter(move |(n, _)| {
            !h1::is_hop_by_hop(n, all.clone())
                && !n.eq_ignore_ascii_case(b"trailer")
                && (keep_length || !n.eq_ignore_ascii_case(b"content-length"))
        })
        .chain(added.iter().copied())
}

/// Logs what a non-101 answer to an upgrade means.
fn note_refusal(proxy: &Proxy, ui: usize, a: &Answer, path: &str) {
    if a.status == 426 {
        let up = &proxy.upstreams[ui];
        let server = &up.servers[a.si].addr;
        tracing::warn!(upstream = %up.name, %server, %path, "{DIAGNOSIS_426}");
    }
}

/// Starts the tunnel between `client` and `upstream`; `head`, when given, is the 101 to write
/// to the client first. Both on plain TCP with io_uring started: an engine relays it; otherwise
/// a tokio task does.
#[allow(clippy::too_many_arguments)]
fn spawn_tunnel<C: Transport>(
    proxy: &Arc<Proxy>,
    mut slot: TunnelSlot,
    active: Active,
    mut client: C,
    c_pre: Bytes,
    upstream: Stream,
    u_pre: Bytes,
    head: Option<Vec<u8>>,
) {
    slot.open();
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let mut _slot = slot;
        let _active = active;
        // Tunnel frames are small and latency-bound, whichever engine relays them (the
        // upstream side got this at connect).
        client.set_nodelay();
        // The 101 goes out from this task, right before the tunnel registers itself: a tunnel
        // registered after shutdown began closes at once, so a client that got its 101 just
        // before a shutdown must not wait for a task switch first (it would lose the grace).
        if let Some(head) = head {
            let sent = client.write_all(&head).await;
            unpool(head);
            if let Err(e) = sent {
                tracing::debug!(error = %e, "client went away before its 101");
                return;
            }
        }
        let env = proxy.tunnels.clone();
        // Decided here, right after the 101, whichever engine enrolls the tunnel (the io_uring
        // engine does so a moment later).
        let late = tunnel::late_for_shutdown(&env);
        let client = match proxy.engines() {
            None => client,
            // Not plain TCP: the tokio tunnel below takes any transport.
            Some(engines) => match client.into_tcp() {
                Err(other) => other,
                Ok(tcp) => {
                    match upstream.into_tcp() {
                        Ok(upstream) => match (into_fd(tcp), into_fd(upstream)) {
                            (Ok(client), Ok(upstream)) => engines.hand_over(uring::Handoff {
                                client,
                                client_leftover: c_pre,
                                upstream,
                                upstream_leftover: u_pre,
                                guard: Guard { _slot, _active },
                                late,
                            }),
                            (Err(e), _) | (_, Err(e)) => {
                                tracing::warn!(error = %e, "could not hand a tunnel to io_uring; closed it");
                            }
                        },
                        // A TLS upstream: rustls needs the bytes in user space, so the tokio
                        // tunnel relays it, as it does a client that came in over TLS.
                        Err(tls) => tunnel::run(tcp, c_pre, tls, u_pre, &env).await,
                    }
                    return;
                }
            },
        };
        // Plain TCP keeps its own instance of the tunnel (readiness reads, writev); only a TLS
        // upstream goes through the stream's dispatch.
        match upstream {
            Stream::Plain(tcp) => tunnel::run(client, c_pre, tcp, u_pre, &env).await,
            tls => tunnel::run(client, c_pre, tls, u_pre, &env).await,
        }
    });
}

/// Takes a socket out of tokio (deregistering it) for the io_uring engine.
fn into_fd(s: TcpStream) -> std::io::Result<std::os::fd::OwnedFd> {
    Ok(s.into_std()?.into())
}

/// Takes a connection whose first request head starts `first` (read by the server, with any
/// pipelined bytes after it) when that request is a WebSocket upgrade that `route` sends to a
/// proxy upstream, and proxies it without hyper on either side. Anything else gives the
/// connection back untouched for hyper to serve.
pub async fn serve_first<S: Transport>(
    proxy: &Arc<Proxy>,
    client: S,
    first: &[u8],
    peer: SocketAddr,
    held: Option<Hold>,
    route: impl FnOnce(&str) -> Option<usize>,
) -> Result<(), S> {
    let mut hs = [const { MaybeUninit::uninit() }; h1::MAX_FAST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Ok(httparse::Status::Complete(head_len)) = req.parse_with_uninit_headers(first, &mut hs)
    else {
        return Err(client);
    };
    let fields = h1::fields(req.headers);
    let target = req.path.unwrap_or_default();
    // Only what the fast path answers exactly as hyper would: an HTTP/1.1 GET in origin form,
    // asking this hop for the upgrade, with no body to deal with.
    let fast = req.method == Some("GET")
        && req.version == Some(1)
        && target.starts_with('/')
        && h1::has_token(fields.clone(), "upgrade", "websocket")
        && h1::has_token(fields.clone(), "connection", "upgrade")
        && h1::get(fields.clone(), "transfer-encoding").is_none()
        && h1::get(fields.clone(), "content-length").is_none_or(|v| v.trim_ascii() == b"0");
    let path = target.split('?').next().unwrap_or_default();
    // A path not in normal form (dot segments, escapes) is left to hyper's path, which
    // normalises it (or refuses it) before matching.
    let normal = matches!(
        crate::uri::normalize_path(path),
        Ok(std::borrow::Cow::Borrowed(_))
    );
    let Some(ui) = (fast && normal).then(|| route(path)).flatten() else {
        return Err(client);
    };
    let started = std::time::Instant::now();
    let code = upgrade_raw(
        proxy,
        ui,
        client,
        &first[head_len..],
        target,
        fields,
        path,
        peer,
        held,
    )
    .await;
    let (name, took) = (&proxy.upstreams[ui].name, started.elapsed());
    if code == 101 {
        METRICS.websocket_opened("proxy", "1.1");
    }
    METRICS.proxy_response(name, code, took);
    crate::access::proxied(peer, "GET", path, name, code, took, None);
    Ok(())
}

/// The fast path: the client's head is parsed (`fields`); `after` is what came behind it.
/// Returns the status the client got.
#[allow(clippy::too_many_arguments)]
async fn upgrade_raw<'a, S: Transport>(
    proxy: &Arc<Proxy>,
    ui: usize,
    mut client: S,
    after: &[u8],
    target: &str,
    fields: impl Iterator<Item = Field<'a>> + Clone,
    path: &str,
    peer: SocketAddr,
    held: Option<Hold>,
) -> u16 {
    METRICS.proxy_requests.inc();
    let slot = match take_slot(proxy, peer, held) {
        Ok(s) => s,
        Err(r) => {
            r.reply(&mut client).await;
            return StatusCode::SERVICE_UNAVAILABLE.as_u16();
        }
    };
    let key = h1::get(fields.clone(), "sec-websocket-key");
    let answer = match exchange(proxy, ui, peer, target.as_bytes(), fields, key).await {
        Ok(a) => a,
        Err(e) => {
            let (status, body) = e.report(path);
            reply_and_close(&mut client, status, &[], &body).await;
            return status.as_u16();
        }
    };
    if answer.status != 101 {
        // No tunnel: the answer's body does not count against the tunnel limit.
        drop(slot);
        note_refusal(proxy, ui, &answer, path);
        let code = answer.status;
        relay_raw(client, answer).await;
        return code;
    }
    let mut out = pooled();
    {
        let mut hs = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let mut r = httparse::Response::new(&mut hs);
        let _ = r.parse(&answer.buf[..answer.head_len]);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (n, v) in client_fields(101, h1::fields(r.headers), Framing::Empty) {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    let u_pre = answer.rest();
    let c_pre = Bytes::copy_from_slice(after);
    let Answer {
        stream,
        buf,
        active,
        ..
    } = answer;
    unpool(buf);
    spawn_tunnel(proxy, slot, active, client, c_pre, stream, u_pre, Some(out));
    101
}

/// Relays a non-101 answer to the client on the fast path, then closes: the status and
/// end-to-end fields as they are, the body re-framed for this hop (chunked stays chunked).
async fn relay_raw<S: Transport>(mut client: S, answer: Answer) {
    let mut out = pooled();
    let framing = {
        let mut hs = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let mut r = httparse::Response::new(&mut hs);
        let _ = r.parse(&answer.buf[..answer.head_len]);
        let status = r.code.unwrap_or(0);
        let framing = match h1::response_framing(status, h1::fields(r.headers)) {
            Ok(f) => f,
            Err(_) => Framing::Eof,
        };
        out.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
        let reason = r.reason.filter(|r| !r.is_empty()).or_else(|| {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
        });
        out.extend_from_slice(reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in client_fields(status, h1::fields(r.headers), framing) {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        framing
    };
    let (mut stream, mut reader, _active) = answer.into_body(framing);
    let res: std::io::Result<()> = async {
        client.write_all(&out).await?;
        loop {
            let chunk = std::future::poll_fn(|cx| reader.poll_chunk(cx, &mut stream)).await?;
            let Some(chunk) = chunk else { break };
            if framing == Framing::Chunked {
                client
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                client.write_all(&chunk).await?;
                client.write_all(b"\r\n").await?;
            } else {
                client.write_all(&chunk).await?;
            }
        }
        if framing == Framing::Chunked {
            client.write_all(b"0\r\n\r\n").await?;
        }
        client.shutdown().await
    }
    .await;
    unpool(out);
    if let Err(e) = res {
        // The client sees the connection end early: a short or unterminated body.
        tracing::debug!(error = %e, "relaying the upstream's answer to an upgrade failed");
    }
}

/// Proxies a WebSocket handshake that hyper parsed to upstream `ui`; on a valid 101 the tunnel
/// starts once hyper has sent our 101 to the client. An HTTP/2 extended CONNECT is bridged:
/// the upstream gets a GET + Upgrade with our own key, the client a 200.
pub async fn upgrade(
    proxy: &Arc<Proxy>,
    ui: usize,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let held = req.extensions().get::<Hold>().cloned();
    let slot = match take_slot(proxy, peer, held) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let path = req.uri().path();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let bridged = is_extended_connect(&req).then(fresh_key);
    let mut fields: Vec<Field<'_>> = req
        .headers()
        .iter()
        .filter(|(n, _)| bridged.is_none() || *n != header::SEC_WEBSOCKET_KEY)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    let key = match &bridged {
        Some(k) => {
            fields.push((b"sec-websocket-key", k.as_bytes()));
            Some(k.as_bytes())
        }
        None => req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .map(HeaderValue::as_bytes),
    };
    let answer = match exchange(proxy, ui, peer, target.as_bytes(), fields.into_iter(), key).await {
        Ok(a) => a,
        Err(e) => return e.into_response(path),
    };
    let mut hs = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut r = httparse::Response::new(&mut hs);
    let _ = r.parse(&answer.buf[..answer.head_len]);
    let framing = if answer.status == 101 {
        Framing::Empty
    } else {
        h1::response_framing(answer.status, h1::fields(r.headers)).unwrap_or(Framing::Eof)
    };
    let mut resp = Response::new(crate::reply::full(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    // Bridged: the 101 becomes a 200, without the fields that answer an HTTP/1.1 upgrade.
    let bridged_101 = bridged.is_some() && answer.status == 101;
    if bridged_101 {
        *resp.status_mut() = StatusCode::OK;
    }
    let h1_only = |n: &[u8]| {
        bridged_101
            && [&b"upgrade"[..], b"connection", b"sec-websocket-accept"]
                .iter()
                .any(|h| n.eq_ignore_ascii_case(h))
    };
    for (n, v) in client_fields(answer.status, h1::fields(r.headers), framing) {
        if h1_only(n) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            resp.headers_mut().append(n, v);
        }
    }
    if let Some(reason) = r.reason.filter(|_| !bridged_101)
        && Some(reason) != resp.status().canonical_reason()
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes())
    {
        resp.extensions_mut().insert(reason);
    }
    if answer.status != 101 {
        note_refusal(proxy, ui, &answer, path);
        let (stream, reader, active) = answer.into_body(framing);
        *resp.body_mut() = h1::UpstreamBody::new(stream, reader, active)
            .map_err(Into::into)
            .boxed();
        return resp;
    }
    let u_pre = answer.rest();
    let Answer {
        stream: upstream,
        buf,
        active,
        ..
    } = answer;
    unpool(buf);
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let client = match client_upgrade.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade did not complete");
                return;
            }
        };
        match client.downcast::<TokioIo<Rewind<TcpStream>>>() {
            Ok(c) => {
                // Plain TCP underneath: copy the bytes that came with the handshake and let go
                // of everything else now: the `Bytes` handed back point into hyper's and the
                // head reader's read buffers (several KiB each), which would otherwise live as
                // long as the tunnel.
                let (cs, c_pre) = {
                    let (cs, unread) = c.io.into_inner().into_parts();
                    let mut pre = BytesMut::with_capacity(unread.len() + c.read_buf.len());
                    pre.extend_from_slice(&unread);
                    pre.extend_from_slice(&c.read_buf);
                    (cs, pre.freeze())
                };
                drop(c.read_buf);
                spawn_tunnel(&proxy, slot, active, cs, c_pre, upstream, u_pre, None);
            }
            // Any other connection (TLS, ...): the upgraded stream replays what it buffered.
            Err(upgraded) => spawn_tunnel(
                &proxy,
                slot,
                active,
                TokioIo::new(upgraded),
                Bytes::new(),
                upstream,
                u_pre,
                None,
            ),
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = Field<'a>> + Clone {
        pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn a_correct_101_passes() {
        let h = [
            ("upgrade", "WebSocket"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert_eq!(check_101(fields(&h), Some(KEY)), Ok(()));
    }

    #[test]
    fn a_101_with_a_wrong_accept_or_upgrade_is_explained() {
        let h = [("upgrade", "websocket"), ("sec-websocket-accept", "nope")];
        assert!(
            check_101(fields(&h), Some(KEY))
                .unwrap_err()
                .contains("does not match the key")
        );
        let h = [("upgrade", "h2c")];
        assert!(
            check_101(fields(&h), Some(KEY))
                .unwrap_err()
                .contains("Upgrade: h2c")
        );
        let h = [("upgrade", "websocket")];
        assert!(
            check_101(fields(&h), Some(KEY))
                .unwrap_err()
                .contains("no Sec-WebSocket-Accept")
        );
    }

    #[test]
    fn upgrade_tokens_are_case_insensitive_and_need_get() {
        let r = Request::get("/")
            .header("upgrade", "WebSocket")
            .body(())
            .unwrap();
        assert!(is_websocket_upgrade(&r));
        let r = Request::post("/")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_websocket_upgrade(&r));
        let r = Request::get("/").header("upgrade", "h2c").body(()).unwrap();
        assert!(!is_websocket_upgrade(&r));
    }

    #[test]
    fn client_fields_drop_hop_by_hop_and_add_this_hops_own() {
        let h = [
            ("Connection", "Upgrade, X-Hop"),
            ("Upgrade", "WebSocket"),
            ("X-Hop", "1"),
            ("Keep-Alive", "5"),
            ("Sec-WebSocket-Accept", "a"),
            ("Content-Length", "3"),
            ("Trailer", "X-T"),
        ];
        let got: Vec<_> = client_fields(101, fields(&h), Framing::Empty)
            .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect();
        let got: Vec<(&str, &str)> = got.iter().map(|(n, v)| (&**n, &**v)).collect();
        assert_eq!(
            got,
            [
                ("Sec-WebSocket-Accept", "a"),
                ("Content-Length", "3"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
            ]
        );
        let n = client_fields(426, fields(&h), Framing::Chunked)
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .count();
        assert_eq!(n, 0, "a re-framed body loses its Content-Length");
    }
}
