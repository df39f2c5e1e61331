//! WebSocket upgrades through the proxy: forward the handshake over HTTP/1.1 with
//! `Connection: Upgrade` and `Upgrade: websocket` put back (they are hop-by-hop, which is why
//! nginx drops them unless configured), check the upstream's 101, and hand both sockets to the
//! [`super::tunnel`].
//!
//! `Sec-WebSocket-Key`, `-Version`, `-Protocol` and `-Extensions` pass through untouched, in both
//! directions. Passing `Sec-WebSocket-Extensions` (e.g. permessage-deflate) is safe although the
//! tunnel parses frames: it never re-frames, never changes fragmentation and relays payload bytes
//! and RSV bits as they are (RFC 6455 §5.4 only forbids changing what it does not understand);
//! the frames it injects itself are unfragmented control frames, which extensions leave alone.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::case::CaseIo;
use super::forward::NoTrailers;
use super::headers::{prepare_request, remove_hop_by_hop};
use super::{Error, Proxy, ReqBody};
use crate::server::{Body, Rewind, full};
use crate::ws::handshake::{accept_key, has_token};

/// What an upstream 426 to a forwarded upgrade means; logged and sent as `X-Wsgate-Diagnosis`.
const DIAGNOSIS_426: &str = "the upstream answered 426 Upgrade Required although wsgate forwarded Upgrade: websocket and Connection: Upgrade; \
something between wsgate and the upstream strips them (an nginx without proxy_set_header Upgrade/Connection?), \
or the upstream expects another path, subprotocol or Sec-WebSocket-Version";

/// Whether a request asks for a WebSocket: `GET` with `websocket` among the `Upgrade` tokens
/// (case-insensitive).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && has_token(req.headers(), header::UPGRADE, "websocket")
}

/// Checks the upstream's 101 against the request; the error says what the upstream got wrong.
pub fn check_101(resp: &http::HeaderMap, key: Option<&HeaderValue>) -> Result<(), String> {
    if !has_token(resp, header::UPGRADE, "websocket") {
        let got = resp
            .get(header::UPGRADE)
            .map_or("no Upgrade header".to_string(), |v| {
                format!("Upgrade: {}", String::from_utf8_lossy(v.as_bytes()))
            });
        return Err(format!(
            "it answered 101 Switching Protocols with {got} instead of Upgrade: websocket"
        ));
    }
    let Some(key) = key else {
        return Err("the client sent no Sec-WebSocket-Key, so the 101 cannot be checked".into());
    };
    let want = accept_key(key.as_bytes());
    match resp.get(header::SEC_WEBSOCKET_ACCEPT) {
        None => Err("its 101 has no Sec-WebSocket-Accept header".into()),
        Some(v) if v.as_bytes() == want.as_bytes() => Ok(()),
        Some(v) => Err(format!(
            "its Sec-WebSocket-Accept {:?} does not match the key (expected {want:?}); is something between wsgate and the upstream rewriting Sec-WebSocket-Key?",
            String::from_utf8_lossy(v.as_bytes())
        )),
    }
}

/// Connects to a server of upstream `ui`, trying the next one while connecting fails (nothing
/// has been sent yet, so a retry is always safe).
async fn connect(proxy: &Proxy, ui: usize, peer: SocketAddr) -> Result<(usize, TcpStream), Error> {
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
                return Ok((si, s));
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

/// Proxies a WebSocket handshake to upstream `ui`; on a valid 101 the tunnel starts once hyper
/// has sent our 101 to the client.
pub async fn upgrade(
    proxy: &Arc<Proxy>,
    ui: usize,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let up = proxy.upstreams[ui].clone();
    let path = req.uri().path().to_string();
    if proxy
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return crate::server::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: wsgate is shutting down; reconnect in a moment.\n",
        );
    }
    let max = proxy.max_tunnels;
    if proxy.open_tunnels() >= max {
        tracing::warn!(%peer, max, "tunnel refused: server.max_connections reached");
        let mut r = crate::server::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "503 Service Unavailable: this server holds its maximum of {max} proxied WebSocket tunnels \
(server.max_connections). Retry with backoff, or raise the limit.\n"
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (si, stream) = match connect(proxy, ui, peer).await {
        Ok(x) => x,
        Err(e) => return e.into_response(&path),
    };
    let server = up.servers[si].addr.clone();
    let exchange = |reason: String| Error::Exchange {
        upstream: up.name.clone(),
        server: server.clone(),
        reason,
    };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, ReqBody>(TokioIo::new(CaseIo::new(stream)))
        .await
    {
        Ok(x) => x,
        Err(e) => return exchange(e.to_string()).into_response(&path),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });

    let (parts, _body) = req.into_parts();
    let mut headers = parts.headers;
    prepare_request(
        &mut headers,
        proxy.client(peer),
        proxy.preserve_host,
        &server,
    );
    // Hop-by-hop fields are gone; put back the two that ask this hop for the upgrade.
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut out = Request::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *out.method_mut() = Method::GET;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    *out.uri_mut() = match parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
    {
        Ok(u) => u,
        Err(e) => {
            return exchange(format!("cannot build the upstream URI: {e}")).into_response(&path);
        }
    };
    let active = up.begin(si);
    let mut resp = match tokio::time::timeout(up.read_timeout, sender.send_request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            up.failed(si);
            return exchange(e.to_string()).into_response(&path);
        }
        Err(_) => {
            up.failed(si);
            return Error::ResponseTimeout {
                upstream: up.name.clone(),
                server,
                after: up.read_timeout,
            }
            .into_response(&path);
        }
    };
    up.succeeded(si);

    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        if resp.status() == StatusCode::UPGRADE_REQUIRED {
            tracing::warn!(upstream = %up.name, %server, %path, "{DIAGNOSIS_426}");
        }
        let upgrade_required = resp.status() == StatusCode::UPGRADE_REQUIRED;
        let (mut rp, rb) = resp.into_parts();
        remove_hop_by_hop(&mut rp.headers);
        rp.headers.remove(header::TRAILER);
        rp.version = Version::HTTP_11;
        if upgrade_required {
            // The body stays the upstream's; this header tells whoever looks at the response
            // (curl -i, browser devtools) that wsgate did forward the upgrade.
            rp.headers.insert(
                http::HeaderName::from_static("x-wsgate-diagnosis"),
                HeaderValue::from_static(DIAGNOSIS_426),
            );
        }
        return Response::from_parts(rp, NoTrailers::new(rb, Some(active)).boxed());
    }
    if let Err(what) = check_101(resp.headers(), key.as_ref()) {
        return Error::BadUpgrade {
            upstream: up.name.clone(),
            server,
            what,
        }
        .into_response(&path);
    }

    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let mut answer = Response::new(full(Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut h = resp.headers().clone();
    remove_hop_by_hop(&mut h);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    *answer.headers_mut() = h;

    let proxy = proxy.clone();
    proxy.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    crate::metrics::METRICS.proxy_tunnels.inc();
    crate::metrics::METRICS.proxy_tunnels_total.inc();
    tokio::spawn(async move {
        let _open = OpenTunnel(proxy.clone());
        let _active = active;
        let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade did not complete");
                return;
            }
        };
        let Ok(c) = client.downcast::<TokioIo<Rewind>>() else {
            tracing::error!("client connection has an unexpected type; this is a bug");
            return;
        };
        let Ok(u) = upstream.downcast::<TokioIo<CaseIo>>() else {
            tracing::error!("upstream connection has an unexpected type; this is a bug");
            return;
        };
        // Copy the bytes that came with the handshakes and let go of everything else now: the
        // `Bytes` handed back point into hyper's and the head reader's read buffers (several
        // KiB each), which would otherwise live as long as the tunnel.
        let (cs, c_pre) = {
            let (cs, unread) = c.io.into_inner().into_parts();
            let mut pre = BytesMut::with_capacity(unread.len() + c.read_buf.len());
            pre.extend_from_slice(&unread);
            pre.extend_from_slice(&c.read_buf);
            (cs, pre.freeze())
        };
        let us = u.io.into_inner().inner;
        let u_pre = Bytes::copy_from_slice(&u.read_buf);
        drop(u.read_buf);
        drop(c.read_buf);
        super::tunnel::run(cs, c_pre, us, u_pre, &proxy).await;
    });
    answer
}

/// Counts an open tunnel until dropped.
struct OpenTunnel(Arc<Proxy>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn a_correct_101_passes() {
        let h = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(check_101(&h, Some(&HeaderValue::from_static(KEY))), Ok(()));
    }

    #[test]
    fn a_101_with_a_wrong_accept_or_upgrade_is_explained() {
        let key = HeaderValue::from_static(KEY);
        let h = headers(&[("upgrade", "websocket"), ("sec-websocket-accept", "nope")]);
        assert!(
            check_101(&h, Some(&key))
                .unwrap_err()
                .contains("does not match the key")
        );
        let h = headers(&[("upgrade", "h2c")]);
        assert!(
            check_101(&h, Some(&key))
                .unwrap_err()
                .contains("Upgrade: h2c")
        );
        let h = headers(&[("upgrade", "websocket")]);
        assert!(
            check_101(&h, Some(&key))
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
}
