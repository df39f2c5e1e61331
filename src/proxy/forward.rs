//! Plain HTTP proxying: HTTP/1.1 to the upstream over a keep-alive pool, bodies streamed both
//! ways (never buffered whole), trailers dropped, hop-by-hop fields removed both ways, and
//! failures turned into 502/503/504 with a sentence saying what went wrong.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use super::balance::Active;
use super::error::{Error, describe};
use super::headers::{prepare_request, remove_hop_by_hop};
use super::idle::ReadIdle;
use super::state::{Proxy, ReqBody};
use crate::reply::{Body, BoxError};

/// A body passed through frame by frame, without its trailers (wsgate does not forward
/// trailers: they would need `TE: trailers` end to end, which no browser sends). It can hold a
/// server's in-flight count until the body is done.
#[derive(Debug)]
pub struct NoTrailers {
    inner: Incoming,
    _active: Option<Active>,
    /// For an upstream's response: `read_timeout` between two reads (see [`ReadIdle`]).
    idle: Option<ReadIdle>,
}

impl NoTrailers {
    pub fn new(inner: Incoming, active: Option<Active>, idle: Option<ReadIdle>) -> Self {
        NoTrailers {
            inner,
            _active: active,
            idle,
        }
    }
}

impl HttpBody for NoTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        loop {
            match Pin::new(&mut me.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if !f.is_data() => continue,
                Poll::Ready(other) => {
                    if let Some(idle) = &mut me.idle {
                        idle.progress();
                    }
                    return Poll::Ready(other.map(|r| r.map_err(BoxError::from)));
                }
                Poll::Pending => {
                    if let Some(idle) = &mut me.idle
                        && let Err(e) = idle.poll_expired(cx)
                    {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether the request carries no body, so it can be rebuilt for a retry.
fn has_no_body(h: &HeaderMap) -> bool {
    let cl = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    !h.contains_key(http::header::TRANSFER_ENCODING) && matches!(cl, None | Some("0"))
}

/// The `std::io::Error` somewhere in an error's source chain.
pub(super) fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Forwards a non-upgrade request to upstream `ui` and relays its response.
pub async fn forward(
    proxy: &Arc<Proxy>,
    ui: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let up = &proxy.upstreams[ui];
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let (parts, body) = req.into_parts();
    // A failed connect is retried on the next server only when the request can be sent again
    // as it was: idempotent and without a body (the body stream is consumed by the first try).
    let retryable = is_idempotent(&parts.method) && has_no_body(&parts.headers);
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<Error> = None;
    loop {
        let Some(si) = up.pick(peer.ip(), &tried) else {
            let e = last.unwrap_or(Error::NoServer {
                upstream: up.name.clone(),
            });
            return e.into_response(&path);
        };
        tried.push(si);
        let server = &up.servers[si];
        let mut headers = parts.headers.clone();
        headers.remove(http::header::TRAILER);
        prepare_request(
            &mut headers,
            proxy.client(peer),
            proxy.preserve_host,
            &server.addr,
        );
        let req_body: ReqBody = match body.take() {
            Some(b) => NoTrailers::new(b, None, None).boxed(),
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        };
        let mut out = Request::new(req_body);
        *out.method_mut() = parts.method.clone();
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;
        match format!("http://{}{}", server.addr, path_and_query).parse() {
            Ok(uri) => *out.uri_mut() = uri,
            Err(e) => {
                return Error::Exchange {
                    upstream: up.name.clone(),
                    server: server.addr.clone(),
                    reason: format!("cannot build the upstream URI: {e}"),
                }
                .into_response(&path);
            }
        }
        let active = up.begin(si);
        // The pool connects inside `request`, so read_timeout also covers connecting; the
        // connector's own connect_timeout (5 s by default, below read_timeout's 60 s) still
        // reports a hanging connect as such.
        let res = tokio::time::timeout(up.read_timeout, proxy.pool(ui).request(out)).await;
        let err = match res {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                // A switch nobody asked for (RFC 9110 §15.2.2): relaying it would leave the
                // client with a connection in a protocol it never chose.
                up.failed(si);
                return Error::Exchange {
                    upstream: up.name.clone(),
                    server: server.addr.clone(),
                    reason:
                        "it answered 101 Switching Protocols to a request that asked for no upgrade"
                            .into(),
                }
                .into_response(&path);
            }
            Ok(Ok(resp)) => {
                up.succeeded(si);
                let (mut rp, rb) = resp.into_parts();
                remove_hop_by_hop(&mut rp.headers);
                // Trailers are dropped, so announcing them would be a lie.
                rp.headers.remove(http::header::TRAILER);
                rp.version = Version::HTTP_11;
                return Response::from_parts(
                    rp,
                    NoTrailers::new(rb, Some(active), Some(ReadIdle::new(up.read_timeout))).boxed(),
                );
            }
            Ok(Err(e)) if e.is_connect() && super::tls::failure_in(&e).is_some() => {
                let failure = super::tls::failure_in(&e).cloned().expect("checked above");
                Error::Tls {
                    upstream: up.name.clone(),
                    server: server.addr.clone(),
                    sni: proxy
                        .tls(ui)
                        .map_or_else(String::new, |t| t.sni(&server.addr)),
                    failure: Box::new(failure),
                }
            }
            Ok(Err(e)) if e.is_connect() => {
                let timed_out =
                    io_cause(&e).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                if timed_out {
                    Error::ConnectTimeout {
                        upstream: up.name.clone(),
                        server: server.addr.clone(),
                        after: up.connect_timeout,
                    }
                } else {
                    let source = match io_cause(&e) {
                        Some(io) => std::io::Error::new(io.kind(), io.to_string()),
                        None => std::io::Error::other(e.to_string()),
                    };
                    Error::Connect {
                        upstream: up.name.clone(),
                        server: server.addr.clone(),
                        source,
                    }
                }
            }
            Ok(Err(e)) => {
                up.failed(si);
                // With TLS 1.3 a server refuses a client certificate after the client's side
                // of the handshake, so the refusal surfaces here, on the request.
                if let Some(tls) = proxy.tls(ui)
                    && let Some(io) = io_cause(&e)
                {
                    let sni = tls.sni(&server.addr);
                    if let Some(failure) = tls.explain(io, &sni) {
                        tls.count_late(&failure);
                        return Error::Tls {
                            upstream: up.name.clone(),
                            server: server.addr.clone(),
                            sni,
                            failure: Box::new(failure),
                        }
                        .into_response(&path);
                    }
                }
                return Error::Exchange {
                    upstream: up.name.clone(),
                    server: server.addr.clone(),
                    reason: describe(&e),
                }
                .into_response(&path);
            }
            Err(_) => {
                up.failed(si);
                return Error::ResponseTimeout {
                    upstream: up.name.clone(),
                    server: server.addr.clone(),
                    after: up.read_timeout,
                }
                .into_response(&path);
            }
        };
        drop(active);
        if up.failed(si) {
            tracing::warn!(upstream = %up.name, server = %server.addr, "server taken out after max_fails failures");
        }
        tracing::info!(upstream = %up.name, server = %server.addr, error = %err, "connect failed");
        if !retryable {
            return err.into_response(&path);
        }
        last = Some(err);
    }
}
