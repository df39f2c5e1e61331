//! One accepted connection: its first request head (read here, so the two failures hyper would
//! answer without a word get a status and a sentence), the proxy's hyper-free fast path for a
//! first request that is an upgrade, and hyper for everything else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::head::{self, HeadError};
use super::router::{self, Target};
use super::state::Server;
use crate::reply::reply_and_close;
use crate::transport::Rewind;

/// Serves one connection until it closes (or shutdown ends it).
pub async fn serve(mut stream: TcpStream, peer: SocketAddr, server: Arc<Server>) {
    let cfg = &server.config.server;
    let first = match head::read_head(
        &mut stream,
        cfg.max_header_bytes,
        cfg.handshake_timeout.get(),
    )
    .await
    {
        Ok(b) => b,
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge(n)) => {
            let body = format!(
                "431 Request Header Fields Too Large: the request head is at least {n} bytes and the limit is {} \
(server.max_header_bytes). Send fewer or smaller headers (large cookies are the usual cause), or raise the limit.\n",
                cfg.max_header_bytes
            );
            reply_and_close(
                &mut stream,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &[],
                &body,
            )
            .await;
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
    // The usual WebSocket through the proxy (a fresh connection whose first request is the
    // upgrade) skips hyper on both sides; everything else is hyper's.
    let proxy = server.proxy.clone();
    let to_proxy = |path: &str| match server.route(path) {
        Target::Proxy(upstream) => Some(upstream),
        _ => None,
    };
    let stream =
        match crate::proxy::upgrade::serve_first(&proxy, stream, &first, peer, to_proxy).await {
            Ok(()) => return,
            Err(back) => back,
        };
    let io = TokioIo::new(Rewind::new(first.freeze(), stream));
    let svc_server = server.clone();
    let service = service_fn(move |req| {
        let server = svc_server.clone();
        async move { Ok::<_, Infallible>(router::handle(req, peer, server).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.handshake_timeout.get())
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
