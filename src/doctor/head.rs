//! The handshake request doctor sends ([`Sent`]) and the response head it gets back ([`Head`]),
//! parsed from any bytes at all without a panic. The upgrade step and the judgement of answers
//! both read these; this file does no I/O.

use super::target::Target;

/// A parsed response head. Header values are kept as (lossy) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Minor HTTP version: 1 for HTTP/1.1.
    pub minor: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated token of every header with this name, trimmed.
    pub fn tokens(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The head as lines, status line first.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "HTTP/1.{} {} {}",
            self.minor, self.status, self.reason
        )];
        out.extend(self.headers.iter().map(|(k, v)| format!("{k}: {v}")));
        out
    }
}

/// Why bytes from the server are not a usable response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the answer is not HTTP: {0}")]
    NotHttp(String),
    #[error("the response head has more than {0} header lines")]
    TooManyHeaders(usize),
}

const MAX_HEADERS: usize = 100;

/// Parses a response head from the front of `buf`: the head and its length, `None` when more
/// bytes are needed.
///
/// # Errors
/// Bytes that are not an HTTP/1.x response head.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let head = Head {
                minor: r.version.unwrap_or(1),
                status: r.code.unwrap_or(0),
                reason: r.reason.unwrap_or("").to_string(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, n)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders(MAX_HEADERS)),
        Err(_) => Err(HeadError::NotHttp(what_bytes_look_like(buf))),
    }
}

/// A short description of bytes that are not HTTP, naming the usual suspects.
fn what_bytes_look_like(buf: &[u8]) -> String {
    let shown = printable(&buf[..buf.len().min(60)]);
    if buf.len() >= 2 && matches!(buf[0], 0x15 | 0x16) && buf[1] == 0x03 {
        format!("a TLS record ({shown}); the port speaks TLS, so use wss:// or https://")
    } else if buf.starts_with(b"SSH-") {
        format!("an SSH banner ({shown}); the port is an SSH server")
    } else {
        format!("it starts with {shown}")
    }
}

/// Bytes as quoted text with everything unprintable escaped, for one-line messages.
pub fn printable(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// Bytes as lines of text, control characters other than tabs escaped (so a body cannot move
/// the terminal's cursor), trailing blank lines dropped.
pub fn text_lines(b: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(b);
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            l.trim_end_matches('\r')
                .chars()
                .flat_map(|c| {
                    if c.is_control() && c != '\t' {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect()
        })
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// The handshake request doctor sends, and what the answer is checked against.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub origin: Option<String>,
    pub protocols: Vec<String>,
    pub text: String,
}

impl Sent {
    /// The opening handshake for `target` with a fresh `key`.
    pub fn new(target: &Target, key: String, origin: Option<&str>, protocols: &[String]) -> Self {
        let mut text = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            target.path, target.authority
        );
        if let Some(o) = origin {
            text.push_str(&format!("Origin: {o}\r\n"));
        }
        if !protocols.is_empty() {
            text.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        text.push_str(concat!(
            "User-Agent: wsgate-doctor/",
            env!("CARGO_PKG_VERSION"),
            "\r\n\r\n"
        ));
        Sent {
            key,
            origin: origin.map(str::to_string),
            protocols: protocols.to_vec(),
            text,
        }
    }
}

#[cfg(test)]
impl Sent {
    /// The request to `ws://h:1/p` with RFC 6455's sample key, for unit tests.
    pub fn for_test(protocols: &[&str], origin: Option<&str>) -> Sent {
        let protocols: Vec<String> = protocols.iter().map(|s| s.to_string()).collect();
        let t = Target::parse("ws://h:1/p").expect("a valid URL");
        Sent::new(&t, "dGhlIHNhbXBsZSBub25jZQ==".into(), origin, &protocols)
    }
}
