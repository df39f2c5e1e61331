//! Static files embedded in the binary: the demo page and the admin console. No logic lives
//! here.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::reply::{Body, full, text};

/// The demo page: join a group by name, see messages arrive, send and publish.
pub const DEMO_HTML: &str = include_str!("demo.html");

/// The admin listener's live console: rates, groups, health, publish and disconnect forms.
pub const CONSOLE_HTML: &str = include_str!("console.html");

/// The browser client of the `wsgate.v1` protocol.
pub const WSGATE_JS: &str = include_str!("wsgate.js");

/// Serves the demo page for GET and HEAD.
pub fn demo_page<B>(req: &Request<B>) -> Response<Body> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: the demo page is read with GET.\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    asset(
        DEMO_HTML,
        "text/html; charset=utf-8",
        Some(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
        ),
    )
}

/// One of the built-in files, never cached (it changes with the binary), under its content
/// security policy when it is a page.
fn asset(
    body: &'static str,
    content_type: &'static str,
    csp: Option<&'static str>,
) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(csp) = csp {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
    }
    r
}

/// Serves `wsgate.js` for GET and HEAD.
pub fn script<B>(req: &Request<B>) -> Response<Body> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: /wsgate.js is read with GET.\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    asset(WSGATE_JS, "text/javascript; charset=utf-8", None)
}

/// Serves the admin console for GET and HEAD (the admin listener routes only those here). Its
/// script and styles are inline and it talks only to the listener it came from.
pub fn console_page<B>(_req: &Request<B>) -> Response<Body> {
    asset(
        CONSOLE_HTML,
        "text/html; charset=utf-8",
        Some(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    )
}
