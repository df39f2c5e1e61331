//! The opening handshake as pure checks over a request head: HTTP/1.1's GET + Upgrade (RFC 6455
//! §4.2) and HTTP/2's extended CONNECT (RFC 8441 §5: `:protocol = websocket`, no key and no
//! accept), and the explained error responses that make a broken proxy in front of wsgate easy to
//! spot.
//!
//! Nothing here does I/O: the server hands in the method, version, `:protocol` and headers, and
//! gets back either what to put in the 101 (or, over HTTP/2, the 200) response or a
//! [`HandshakeError`] that knows its status, headers and body.

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2 step 5.4).
///
/// ```
/// assert_eq!(wsgate::ws::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// True when a comma-separated header (possibly repeated) holds `token`, compared
/// case-insensitively: `Connection: keep-alive, Upgrade` holds `upgrade`.
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// True when the request asks for a WebSocket upgrade at all (so a 426 explanation, rather than a
/// page, is the right answer for a route that only speaks WebSocket).
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// What a successful handshake answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// `Sec-WebSocket-Accept` for an HTTP/1.1 upgrade; `None` for an HTTP/2 extended CONNECT,
    /// which has no key to answer and is accepted with a 200.
    pub accept: Option<String>,
    pub protocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` answer, when an extension was agreed
    /// ([`super::deflate::negotiate`]).
    pub extensions: Option<String>,
}

impl Accept {
    /// The status that accepts: 101 for an HTTP/1.1 upgrade, 200 for an extended CONNECT.
    pub fn status(&self) -> StatusCode {
        match self.accept {
            Some(_) => StatusCode::SWITCHING_PROTOCOLS,
            None => StatusCode::OK,
        }
    }

    /// Headers of the 101 (or 200) response.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(accept) = &self.accept {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(accept).expect("base64 is a valid header value"),
            );
        }
        if let Some(p) = &self.protocol {
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(p).expect("subprotocols are validated tokens"),
            );
        }
        if let Some(e) = &self.extensions
            && let Ok(v) = HeaderValue::from_str(e)
        {
            h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
        h
    }
}

/// Why a handshake was refused. Each variant maps to one status and a body that says what was
/// wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("method {0} is not GET")]
    MethodNotGet(String),
    #[error("HTTP version {0} cannot upgrade")]
    OldHttpVersion(String),
    #[error("missing upgrade headers: {}", .missing.join(", "))]
    MissingUpgradeHeaders {
        /// Human descriptions of what is missing, e.g. `"Upgrade: websocket"`.
        missing: Vec<&'static str>,
        /// The `Upgrade` value the client did send, if any.
        got_upgrade: Option<String>,
    },
    #[error("unsupported Sec-WebSocket-Version {0:?}")]
    UnsupportedVersion(Option<String>),
    #[error("bad Sec-WebSocket-Key {0:?}")]
    BadKey(Option<String>),
    /// An HTTP/2 request that is not an extended CONNECT (HTTP/2 has no Upgrade).
    #[error("method {0} over HTTP/2 is not an extended CONNECT")]
    NotExtendedConnect(String),
    /// An extended CONNECT for another protocol than `websocket`.
    #[error("extended CONNECT for protocol {0:?}")]
    ConnectProtocol(Option<String>),
}

const NGINX_FIX: &str = "Upgrade and Connection are hop-by-hop headers (RFC 9110 section 7.6.1), so a proxy in front of \
wsgate most likely dropped them. With nginx, add these two lines to the location that proxies to wsgate:\n\
\n    proxy_set_header Upgrade $http_upgrade;\n    proxy_set_header Connection \"upgrade\";\n\n\
(and proxy_http_version 1.1; on nginx older than 1.29.7). Or put wsgate itself in front: it needs no upgrade config.\n";

impl HandshakeError {
    /// A short name for metrics and access logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::MethodNotGet(_) => "method",
            HandshakeError::OldHttpVersion(_) => "http_version",
            HandshakeError::MissingUpgradeHeaders { .. } => "upgrade_headers",
            HandshakeError::UnsupportedVersion(_) => "ws_version",
            HandshakeError::BadKey(_) => "bad_key",
            HandshakeError::NotExtendedConnect(_) => "method",
            HandshakeError::ConnectProtocol(_) => "connect_protocol",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::MethodNotGet(_) => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::OldHttpVersion(_)
            | HandshakeError::MissingUpgradeHeaders { .. }
            | HandshakeError::UnsupportedVersion(_) => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::BadKey(_) | HandshakeError::ConnectProtocol(_) => {
                StatusCode::BAD_REQUEST
            }
            HandshakeError::NotExtendedConnect(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Extra response headers the RFCs ask for with this status.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        match self {
            HandshakeError::MethodNotGet(_) => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            HandshakeError::OldHttpVersion(_) | HandshakeError::MissingUpgradeHeaders { .. } => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            }
            HandshakeError::UnsupportedVersion(_) => {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            HandshakeError::NotExtendedConnect(_) => {
                h.insert(header::ALLOW, HeaderValue::from_static("CONNECT"));
            }
            HandshakeError::BadKey(_) | HandshakeError::ConnectProtocol(_) => {}
        }
        h
    }

    /// The plain-text body: what was wrong and what to change.
    pub fn body(&self, path: &str) -> String {
        match self {
            HandshakeError::MethodNotGet(m) => format!(
                "405 Method Not Allowed: {path} is a WebSocket endpoint and a WebSocket handshake is a GET request \
(RFC 6455 section 4.1), but this request used {m}.\n"
            ),
            HandshakeError::OldHttpVersion(v) => format!(
                "426 Upgrade Required: {path} is a WebSocket endpoint, but the request came over {v}, which cannot \
upgrade. Send the handshake over HTTP/1.1.\n{}",
                if v == "HTTP/1.0" {
                    "A proxy that speaks HTTP/1.0 to its upstream (nginx before 1.29.7 by default) causes this: set \
proxy_http_version 1.1;\n"
                } else {
                    ""
                }
            ),
            HandshakeError::MissingUpgradeHeaders {
                missing,
                got_upgrade,
            } => {
                let mut s = format!(
                    "426 Upgrade Required: {path} is a WebSocket endpoint, but the request has no {}.\n",
                    missing
                        .iter()
                        .map(|m| format!("\"{m}\" header"))
                        .collect::<Vec<_>>()
                        .join(" and no ")
                );
                if let Some(u) = got_upgrade {
                    s.push_str(&format!(
                        "It asked to upgrade to {u:?}; only \"websocket\" is served here.\n"
                    ));
                }
                s.push('\n');
                s.push_str(NGINX_FIX);
                s
            }
            HandshakeError::UnsupportedVersion(v) => format!(
                "426 Upgrade Required: this server speaks WebSocket version 13 (RFC 6455) and the request {}. \
Send Sec-WebSocket-Version: 13.\n",
                match v {
                    Some(v) => format!("asked for Sec-WebSocket-Version: {v}"),
                    None => "has no Sec-WebSocket-Version header".to_string(),
                }
            ),
            HandshakeError::BadKey(k) => format!(
                "400 Bad Request: {}. Sec-WebSocket-Key must be 16 random bytes in base64 (24 characters, e.g. \
dGhlIHNhbXBsZSBub25jZQ==), new for every connection (RFC 6455 section 4.1).\n",
                match k {
                    Some(k) => format!("Sec-WebSocket-Key {k:?} is not 16 bytes of base64"),
                    None => "the request has no Sec-WebSocket-Key header".to_string(),
                }
            ),
            HandshakeError::NotExtendedConnect(m) => format!(
                "405 Method Not Allowed: {path} is a WebSocket endpoint. Over HTTP/2 a WebSocket opens with an \
extended CONNECT (RFC 8441: method CONNECT, :protocol websocket, Sec-WebSocket-Version: 13), but this request \
used {m}. Browsers do this by themselves; a client that cannot should connect over HTTP/1.1.\n"
            ),
            HandshakeError::ConnectProtocol(p) => format!(
                "400 Bad Request: {path} is a WebSocket endpoint and this extended CONNECT {}. Send :protocol \
websocket (RFC 8441 section 4).\n",
                match p {
                    Some(p) => format!("asked for the protocol {p:?}"),
                    None => "has no :protocol pseudo-header".to_string(),
                }
            ),
        }
    }
}

/// Checks a handshake request; `protocols` are the route's subprotocols in preference order.
///
/// # Errors
/// The first problem found, in the order method, version, upgrade headers, WebSocket version, key.
pub fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    protocols: &[String],
) -> Result<Accept, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::MethodNotGet(method.to_string()));
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeError::OldHttpVersion(format!("{version:?}")));
    }
    let mut missing = Vec::new();
    let upgrade_ok = has_token(headers, header::UPGRADE, "websocket");
    if !upgrade_ok {
        missing.push("Upgrade: websocket");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        missing.push("Connection: Upgrade");
    }
    if !missing.is_empty() {
        let got_upgrade = if upgrade_ok {
            None
        } else {
            headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        return Err(HandshakeError::MissingUpgradeHeaders {
            missing,
            got_upgrade,
        });
    }
    let version_hdr = headers.get(header::SEC_WEBSOCKET_VERSION);
    if version_hdr.map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion(
            version_hdr.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        ));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let key_ok = key.is_some_and(|k| {
        let k = k.as_bytes();
        k.len() == 24
            && base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|d| d.len() == 16)
    });
    if !key_ok || headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count() > 1 {
        return Err(HandshakeError::BadKey(
            key.map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned()),
        ));
    }
    let key = key.expect("checked above");
    Ok(Accept {
        accept: Some(accept_key(key.as_bytes())),
        protocol: select_protocol(headers, protocols),
        extensions: None,
    })
}

/// Checks a request that came over HTTP/2 (RFC 8441 §5): an extended CONNECT whose `:protocol`
/// (`protocol`) is `websocket`, with `Sec-WebSocket-Version: 13`. There is no key, so the
/// [`Accept`] has no `accept` and the answer is a 200.
///
/// # Errors
/// The first problem found, in the order method, `:protocol`, WebSocket version.
pub fn check_extended_connect(
    method: &Method,
    protocol: Option<&str>,
    headers: &HeaderMap,
    protocols: &[String],
) -> Result<Accept, HandshakeError> {
    if method != Method::CONNECT {
        return Err(HandshakeError::NotExtendedConnect(method.to_string()));
    }
    if protocol != Some("websocket") {
        return Err(HandshakeError::ConnectProtocol(
            protocol.map(str::to_string),
        ));
    }
    let version_hdr = headers.get(header::SEC_WEBSOCKET_VERSION);
    if version_hdr.map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion(
            version_hdr.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        ));
    }
    Ok(Accept {
        accept: None,
        protocol: select_protocol(headers, protocols),
        extensions: None,
    })
}

/// The first of the route's protocols that the client also offered.
fn select_protocol(headers: &HeaderMap, protocols: &[String]) -> Option<String> {
    if protocols.is_empty() {
        return None;
    }
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .collect();
    protocols
        .iter()
        .find(|p| offered.iter().any(|o| o == p))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
    }

    #[test]
    fn accepts_the_rfc_example() {
        let a = check(&Method::GET, Version::HTTP_11, &req(&good()), &[]).unwrap();
        assert_eq!(a.accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(a.protocol, None);
        assert_eq!(a.status(), StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn an_extended_connect_is_accepted_with_a_200_and_no_upgrade_fields() {
        let h = req(&[
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "chat, wsgate.v1"),
        ]);
        let protos = vec!["wsgate.v1".to_string()];
        let a = check_extended_connect(&Method::CONNECT, Some("websocket"), &h, &protos).unwrap();
        assert_eq!((a.accept.as_ref(), a.status()), (None, StatusCode::OK));
        assert_eq!(a.protocol.as_deref(), Some("wsgate.v1"));
        let out = a.response_headers();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out["sec-websocket-protocol"], "wsgate.v1");
    }

    #[test]
    fn an_h2_request_that_is_not_a_websocket_connect_is_explained() {
        let h = req(&[("Sec-WebSocket-Version", "13")]);
        let e = check_extended_connect(&Method::GET, None, &h, &[]).unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.headers()["allow"], "CONNECT");
        assert!(e.body("/x").contains("RFC 8441"), "{}", e.body("/x"));
        let e = check_extended_connect(&Method::CONNECT, Some("mqtt"), &h, &[]).unwrap_err();
        assert_eq!(
            (e.status(), e.reason()),
            (StatusCode::BAD_REQUEST, "connect_protocol")
        );
        assert!(e.body("/x").contains("\"mqtt\""), "{}", e.body("/x"));
        let e = check_extended_connect(&Method::CONNECT, None, &h, &[]).unwrap_err();
        assert!(e.body("/x").contains("no :protocol"), "{}", e.body("/x"));
        let e = check_extended_connect(&Method::CONNECT, Some("websocket"), &req(&[]), &[])
            .unwrap_err();
        assert_eq!(e.reason(), "ws_version");
    }

    #[test]
    fn connection_tokens_are_case_insensitive_and_list_aware() {
        let mut h = good();
        h[1] = ("Connection", "keep-alive, UPGRADE");
        h[0] = ("Upgrade", "WebSocket");
        assert!(check(&Method::GET, Version::HTTP_11, &req(&h), &[]).is_ok());
    }

    #[test]
    fn missing_upgrade_headers_name_both_and_give_the_nginx_fix() {
        let h = req(&good()[2..]);
        let e = check(&Method::GET, Version::HTTP_11, &h, &[]).unwrap_err();
        assert_eq!(e.status(), StatusCode::UPGRADE_REQUIRED);
        let body = e.body("/room/1/");
        assert!(body.contains("\"Upgrade: websocket\" header"), "{body}");
        assert!(body.contains("\"Connection: Upgrade\""), "{body}");
        assert!(
            body.contains("proxy_set_header Upgrade $http_upgrade;"),
            "{body}"
        );
        assert!(
            body.contains("proxy_set_header Connection \"upgrade\";"),
            "{body}"
        );
        assert_eq!(e.headers()["upgrade"], "websocket");
    }

    #[test]
    fn each_failure_has_its_status() {
        let e = check(&Method::POST, Version::HTTP_11, &req(&good()), &[]).unwrap_err();
        assert_eq!(
            (e.status(), e.headers()["allow"].to_str().unwrap()),
            (StatusCode::METHOD_NOT_ALLOWED, "GET")
        );
        let mut h = good();
        h[2] = ("Sec-WebSocket-Version", "8");
        let e = check(&Method::GET, Version::HTTP_11, &req(&h), &[]).unwrap_err();
        assert_eq!(e.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(e.headers()["sec-websocket-version"], "13");
        let mut h = good();
        h[3] = ("Sec-WebSocket-Key", "short");
        let e = check(&Method::GET, Version::HTTP_11, &req(&h), &[]).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = check(&Method::GET, Version::HTTP_10, &req(&good()), &[]).unwrap_err();
        assert!(e.body("/x").contains("proxy_http_version 1.1"));
    }

    #[test]
    fn selects_the_routes_preferred_protocol_among_those_offered() {
        let mut h = good();
        h.push(("Sec-WebSocket-Protocol", "v1.chat, v2.chat"));
        let protos = vec!["v2.chat".to_string(), "v1.chat".to_string()];
        let a = check(&Method::GET, Version::HTTP_11, &req(&h), &protos).unwrap();
        assert_eq!(a.protocol.as_deref(), Some("v2.chat"));
        let a = check(
            &Method::GET,
            Version::HTTP_11,
            &req(&h),
            &["mqtt".to_string()],
        )
        .unwrap();
        assert_eq!(a.protocol, None);
    }
}
