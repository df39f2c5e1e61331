//! HTTP/2 connections: h2 over TLS (ALPN chose "h2") and h2c with prior knowledge (a plain
//! connection that opens with the HTTP/2 preface). Every stream is one request to the same
//! router as HTTP/1.1; a WebSocket is a stream opened by an extended CONNECT (RFC 8441), which
//! this listener announces with SETTINGS_ENABLE_CONNECT_PROTOCOL because every route that takes
//! WebSockets (hub routes, the echo route, proxy routes) accepts it.
//!
//! Streams have their own flow-control windows, and the connection's window covers all of them
//! at once: a WebSocket whose reader stalls holds at most its own stream window and never
//! the others' share, so its neighbours on the connection go on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::router;
use super::state::Server;
use crate::metrics::METRICS;

/// What a client sends first on an HTTP/2 connection with prior knowledge (RFC 9113 §3.4);
/// the request-line-shaped part is enough to tell it from any HTTP/1.1 request.
const PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether the first bytes of a plain connection are the HTTP/2 preface.
pub fn is_preface(first: &[u8]) -> bool {
    first.starts_with(PREFACE_LINE)
}

/// A stream's receive window: the RFC's default, enough for WebSocket messages.
const STREAM_WINDOW: u32 = 64 * 1024;

/// Serves one HTTP/2 connection until it closes, or until shutdown has asked it to (GOAWAY)
/// and its streams, WebSockets included, have ended.
pub async fn serve<I>(io: I, peer: SocketAddr, server: Arc<Server>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &server.config.server;
    let streams = cfg.http2.max_concurrent_streams;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(STREAM_WINDOW)
        // Every stream may fill its window without starving the rest (capped: past that, a
        // connection whose streams all stall is the client's problem, not its neighbours').
        .initial_connection_window_size(
            STREAM_WINDOW
                .saturating_mul(streams)
                .clamp(1024 * 1024, 16 * 1024 * 1024),
        );
    if takes_websockets(&server) {
        builder.enable_connect_protocol();
    }
    let svc_server = server.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let server = svc_server.clone();
        async move {
            // Each WebSocket on the connection is a handshake of its own for the per-address
            // rate, as a new HTTP/1.1 connection would be.
            if crate::proxy::upgrade::is_extended_connect(&req) && !server.per_ip.allow(peer.ip()) {
                METRICS.rate_limited.inc();
                let max = server.config.server.max_handshakes_per_second_per_ip;
                tracing::info!(%peer, max, "WebSocket stream refused: server.max_handshakes_per_second_per_ip");
                let mut r = crate::reply::text(
                    StatusCode::TOO_MANY_REQUESTS,
                    super::rate::handshake_rate_refusal(peer.ip(), max),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            }
            let req = with_host(req);
            Ok::<_, Infallible>(router::handle(req, peer, server).await)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http/2 connection ended with an error");
            }
            return;
        }
        _ = server.shutdown.wait() => {}
    }
    // GOAWAY: no new streams; the WebSockets on this connection get their 1001 from the drain
    // and the connection ends with its last stream.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Whether any route takes WebSockets: only then is extended CONNECT announced (a browser
/// takes the setting as a promise and would not fall back to HTTP/1.1).
fn takes_websockets(server: &Server) -> bool {
    !server.routes.is_empty() || server.echo.is_some() || server.proxy.prefixes().next().is_some()
}

/// HTTP/2 carries the host in `:authority` (hyper puts it in the URI) and forbids nothing but
/// does not need `Host`; everything behind the router (origin checks, the proxy's `Host` and
/// forwarding fields, the demo page's URLs) reads `Host`, so it is set from the authority.
fn with_host(mut req: Request<Incoming>) -> Request<Incoming> {
    if req.version() == Version::HTTP_2
        && !req.headers().contains_key(header::HOST)
        && let Some(auth) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(auth.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::is_preface;

    #[test]
    fn the_preface_is_told_from_http1_requests() {
        assert!(is_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(is_preface(b"PRI * HTTP/2.0\r\n\r\n"));
        assert!(!is_preface(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_preface(b"PRI / HTTP/1.1\r\n\r\n"));
    }
}
