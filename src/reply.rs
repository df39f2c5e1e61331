//! HTTP bodies and the replies every handler builds: the response body type, plain-text and JSON
//! answers, and a complete reply written straight to a socket when no HTTP library is in charge
//! of the connection (the first request head, the proxy's fast path).
//!
//! A leaf: it knows nothing of routes, groups, frames or upstreams, so the router and the
//! handlers it calls (api, proxy, web) all build on it without importing one another.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Response body type: bodies the server writes itself ([`full`]) and streamed proxy bodies.
pub type Body = BoxBody<Bytes, BoxError>;

/// The error of a streamed body: hyper's, or an upstream socket's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response: `v` and a newline.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).expect("a Value always serializes");
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Writes a complete `Connection: close` text response, with `extra` header fields, and closes
/// the write side.
pub async fn reply_and_close<S>(io: &mut S, status: StatusCode, extra: &[(&str, &str)], body: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut fields = String::new();
    for (n, v) in extra {
        fields.push_str(&format!("{n}: {v}\r\n"));
    }
    let resp = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{fields}Connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.shutdown().await;
    // Drain briefly so the unread part of the request does not turn our answer into a reset.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
