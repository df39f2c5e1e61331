//! One accepted connection: the TLS handshake when `[server.tls]` is on, its first request head
//! (read here, so the two failures hyper would answer without a word get a status and a
//! sentence), the proxy's hyper-free fast path for a first request that is an upgrade, and hyper
//! for everything else: HTTP/2 ([`super::h2`]) when ALPN chose "h2" or the connection opens with
//! the HTTP/2 preface, HTTP/1.1 otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::head::{self, HeadError};
use super::rate::IpSlot;
use super::router::{self, Target};
use super::state::Server;
use crate::metrics::METRICS;
use crate::reply::reply_and_close;
use crate::transport::{Rewind, Transport};

/// Serves one accepted connection until it closes (or shutdown ends it): over TLS when the
/// server has it, plain otherwise.
pub async fn serve(mut stream: TcpStream, peer: SocketAddr, server: Arc<Server>) {
    if !server.per_ip.allow(peer.ip()) {
        METRICS.rate_limited.inc();
        let max = server.config.server.max_handshakes_per_second_per_ip;
        tracing::info!(%peer, max, "connection refused: server.max_handshakes_per_second_per_ip");
        if server.tls.is_none() {
            let body = super::rate::handshake_rate_refusal(peer.ip(), max);
            reply_and_close(
                &mut stream,
                StatusCode::TOO_MANY_REQUESTS,
                &[("Retry-After", "1")],
                &body,
            )
            .await;
        }
        // Over TLS a refusal would cost the handshake the limit is there to save: the
        // connection is closed, counted in wsgate_server_rate_limited_total and logged.
        return;
    }
    let Some(ip_slot) = server.open_per_ip.take(peer.ip()) else {
        METRICS.per_ip_refused.inc();
        let max = server.open_per_ip.max();
        tracing::info!(%peer, max, "connection refused: server.max_connections_per_ip");
        if server.tls.is_none() {
            let body = format!(
                "429 Too Many Requests: {} already holds {max} open connections (server.max_connections_per_ip). \
Close some before opening more, or raise the limit.\n",
                peer.ip()
            );
            reply_and_close(
                &mut stream,
                StatusCode::TOO_MANY_REQUESTS,
                &[("Retry-After", "5")],
                &body,
            )
            .await;
        }
        return;
    };
    // Held by this connection and, when it becomes a hub WebSocket, by its session.
    let ip_slot = Arc::new(ip_slot);
    let Some(tls) = server.tls.clone() else {
        return serve_on(stream, peer, server, ip_slot).await;
    };
    // The handshake's flights, the session tickets and the 101 are small writes in a row: with
    // Nagle on, each waits for the client's delayed ACK (tens of ms per handshake).
    let _ = stream.set_nodelay(true);
    let timeout = server.config.server.handshake_timeout.get();
    let accepted = tokio::time::timeout(timeout, async {
        let mut stream = stream;
        if is_plain_http(&stream).await {
            // A browser or curl sent http:// to a TLS port: rustls would answer with an alert
            // nobody reads. Say it in plain HTTP instead.
            reply_and_close(
                &mut stream,
                StatusCode::BAD_REQUEST,
                &[],
                "400 Bad Request: this port speaks TLS (server.tls is set); use https:// or wss://.\n",
            )
            .await;
            return None;
        }
        Some(tls.acceptor().accept(stream).await)
    })
    .await;
    match accepted {
        Ok(Some(Ok(s))) => {
            METRICS.tls_handshakes.inc();
            serve_on(s, peer, server, ip_slot).await;
        }
        Ok(None) => METRICS.tls_handshake_failures.inc(),
        Ok(Some(Err(e))) => {
            METRICS.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            METRICS.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake did not finish within server.handshake_timeout");
        }
    }
}

/// Whether the first byte is an HTTP method's letter rather than a TLS record (0x16).
async fn is_plain_http(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(stream.peek(&mut b).await, Ok(1) if b[0].is_ascii_uppercase())
}

/// Serves one connection, plain or already through its TLS handshake.
async fn serve_on<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    server: Arc<Server>,
    ip_slot: Arc<IpSlot>,
) {
    let cfg = &server.config.server;
    let limits = head::Limits {
        max_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
    };
    let first = match head::read_head(
        &mut stream,
        cfg.max_header_bytes,
        cfg.handshake_timeout.get(),
    )
    .await
    {
        Ok(b) => b,
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge(seen)) => {
            let r = head::too_large(&seen, &limits);
            reply_and_close(&mut stream, r.status, &[], &r.body).await;
            return;
        }
        Err(HeadError::Timeout) => {
            let body = format!(
                "408 Request Timeout: the request head did not arrive within {} (server.handshake_timeout).\n",
                cfg.handshake_timeout
            );
            reply_and_close(&mut stream, StatusCode::REQUEST_TIMEOUT, &[], &body).await;
            return;
        }
    };
    if cfg.http2.enabled && super::h2::is_preface(&first) {
        // h2c with prior knowledge: hyper reads the preface again from the replayed bytes.
        let io = Rewind::new(first.freeze(), stream);
        return super::h2::serve(io, peer, server).await;
    }
    if let Err(r) = head::check(&first[..head::head_len(&first)], &limits) {
        reply_and_close(&mut stream, r.status, &[], &r.body).await;
        return;
    }
    // The usual WebSocket through the proxy (a fresh connection whose first request is the
    // upgrade) skips hyper on both sides; everything else is hyper's.
    let proxy = server.proxy.clone();
    let to_proxy = |path: &str| match server.route(path) {
        Target::Proxy(upstream) => Some(upstream),
        _ => None,
    };
    // A tunnel keeps the client's place under server.max_connections_per_ip while it lives.
    let held = Some(crate::proxy::Hold(ip_slot.clone()));
    let stream = match crate::proxy::upgrade::serve_first(
        &proxy, stream, &first, peer, held, to_proxy,
    )
    .await
    {
        Ok(()) => return,
        Err(back) => back,
    };
    // Every later head is checked too, before hyper reads it; a refused one reaches the
    // service as a stand-in request, answered with the refusal in its turn.
    let refusal = Arc::new(head::Refusal::default());
    let watch = head::Watch::new(limits, refusal.clone());
    let io = TokioIo::new(Rewind::inspected(&first, stream, Box::new(watch)));
    let svc_server = server.clone();
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let server = svc_server.clone();
        req.extensions_mut().insert(ip_slot.clone());
        req.extensions_mut()
            .insert(crate::proxy::Hold(ip_slot.clone()));
        let n = requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refused = refusal.take(n);
        let refusal = refusal.clone();
        async move {
            if let Some(r) = refused {
                let mut resp = crate::reply::text(r.status, r.body);
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Ok::<_, Infallible>(resp);
            }
            let resp = router::handle(req, peer, server).await;
            // After an upgrade that was not switched the connection stays HTTP/1.1 (RFC 9110
            // §7.8) and keeps serving: the head watch checks the next head again.
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                refusal.answered_without_switching(n);
            }
            Ok(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.handshake_timeout.get())
        .max_headers(cfg.max_headers)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            return;
        }
        _ = server.shutdown.wait() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
