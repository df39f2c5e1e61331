//! The `upgrade` step: write the opening handshake (RFC 6455 section 4.1), read the answer's
//! head with a size and time bound, and judge it: a valid 101 (Upgrade, Connection,
//! Sec-WebSocket-Accept, subprotocol, extensions), or, in plain words, what a 426, 400, 200,
//! 403, 404, 502, 503 or redirect means and which hop to fix.
//!
//! Any bytes at all may come back: a head that is not HTTP, too big, cut short or full of odd
//! values gives a verdict, never a panic. This file knows nothing about DNS, TCP or TLS beyond
//! the stream it is handed, and nothing about frames.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::hops::{Hops, Proxy};
use super::report::{Step, Verdict, ms_since};
use super::target::Target;

/// A response head larger than this is not a WebSocket answer.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes of a refusal kept to show and to read clues from.
const MAX_BODY: usize = 8 * 1024;
/// The longest wait for a refusal's body once its head has arrived.
const BODY_WAIT: Duration = Duration::from_secs(2);

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
fn text_lines(b: &[u8]) -> Vec<String> {
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

/// What the upgrade led to.
#[derive(Debug)]
pub enum Outcome {
    /// A valid 101: frames follow, starting with `leftover` (bytes read past the head).
    Upgraded {
        leftover: Vec<u8>,
        front: Option<Proxy>,
    },
    /// A redirect doctor was asked to follow.
    Follow(Target),
    /// Nothing more to check on this connection.
    Stop,
}

/// Sends the handshake and judges the answer.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
    sent: &Sent,
    follow: bool,
    timeout: Duration,
) -> (Step, Outcome) {
    let start = Instant::now();
    let deadline = start + timeout;
    let (mut step, outcome) = match run(io, target, sent, follow, deadline).await {
        Ok(r) => r,
        Err(step) => (step, Outcome::Stop),
    };
    step.elapsed_ms = ms_since(start);
    (step, outcome)
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
    sent: &Sent,
    follow: bool,
    deadline: Instant,
) -> Result<(Step, Outcome), Step> {
    let request_lines = quote('>', sent.text.trim_end().lines());
    let written = tokio::time::timeout_at(deadline, async {
        io.write_all(sent.text.as_bytes()).await?;
        io.flush().await
    })
    .await;
    match written {
        Err(_) => {
            return Err(Step::fail(
                "upgrade",
                "could not even send the request: the server does not read it",
            )
            .with_hint("the server accepted the connection but reads nothing; check that it is an HTTP server"));
        }
        Ok(Err(e)) => {
            return Err(
                Step::fail("upgrade", format!("sending the request failed: {e}"))
                    .with_hint("the server closed the connection on arrival; check its logs"),
            );
        }
        Ok(Ok(())) => {}
    }
    let (head, head_len, mut buf) = read_head(io, deadline, &request_lines).await?;
    let started = Instant::now();
    if head.status == 101 {
        let leftover = buf.split_off(head_len);
        let hops = Hops::guess(&head, "");
        let detail_tail = format!(
            "{request_lines}\n{}",
            quote('<', head.lines().iter().map(String::as_str))
        );
        return Ok(match check_101(&head, sent) {
            Ok(protocol) => {
                let chosen = protocol
                    .map(|p| format!(", subprotocol {p}"))
                    .unwrap_or_default();
                let step = Step::pass(
                    "upgrade",
                    format!(
                        "101 Switching Protocols{chosen}, Sec-WebSocket-Accept valid\n{detail_tail}"
                    ),
                );
                (
                    facts(step, &head, sent),
                    Outcome::Upgraded {
                        leftover,
                        front: hops.front.map(|f| f.0),
                    },
                )
            }
            Err(problem) => {
                let step = Step::fail(
                    "upgrade",
                    format!(
                        "101 Switching Protocols, but {}\n{detail_tail}",
                        problem.what
                    ),
                )
                .with_hint(problem.fix);
                (facts(step, &head, sent), Outcome::Stop)
            }
        });
    }
    let body = read_body(
        io,
        &head,
        buf.split_off(head_len),
        deadline.min(started + BODY_WAIT),
    )
    .await;
    let body_text = String::from_utf8_lossy(&body.bytes).to_string();
    let hops = Hops::guess(&head, &body_text);
    let refusal = judge_refusal(&head, &body_text, &hops, sent, target, follow);
    let mut detail = format!(
        "{}\nanswered by {}\n{request_lines}\n{}",
        refusal.what,
        hops.who_answered(),
        quote('<', head.lines().iter().map(String::as_str))
    );
    let body_lines = text_lines(&body.bytes);
    if !body_lines.is_empty() {
        detail.push_str("\n<\n");
        detail.push_str(&quote('<', body_lines.iter().take(16).map(String::as_str)));
        if body_lines.len() > 16 || body.truncated {
            detail.push_str("\n< ...");
        }
    }
    let step = Step::new("upgrade", refusal.verdict, detail).with_hint(refusal.fix);
    let mut step = facts(step, &head, sent);
    if let Some(l) = head.header("location") {
        step = step.with_fact("location", l);
    }
    Ok((step, refusal.outcome))
}

/// Adds the handshake's figures to a step.
fn facts(step: Step, head: &Head, sent: &Sent) -> Step {
    step.with_fact("status", head.status)
        .with_fact("request", sent.text.clone())
        .with_fact("response_head", head.lines().join("\r\n"))
        .with_fact("server", head.header("server"))
}

/// Lines prefixed with `> ` or `< `.
fn quote<'a>(mark: char, lines: impl Iterator<Item = &'a str>) -> String {
    lines
        .map(|l| format!("{mark} {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads until a complete head; the step's failure says what came instead.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Instant,
    request_lines: &str,
) -> Result<(Head, usize, Vec<u8>), Step> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match parse_head(&buf) {
            Ok(Some((head, n))) => return Ok((head, n, buf)),
            Ok(None) if buf.len() > MAX_HEAD => {
                return Err(Step::fail(
                    "upgrade",
                    format!(
                        "no end of the response head after {} bytes\n{request_lines}",
                        buf.len()
                    ),
                )
                .with_hint(
                    "the server is not answering with HTTP/1.1; check what listens on this port",
                ));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Step::fail("upgrade", format!("{e}\n{request_lines}"))
                    .with_hint(not_http_hint(&e)));
            }
        }
        let read = tokio::time::timeout_at(deadline, io.read(&mut chunk)).await;
        let n = match read {
            Err(_) => {
                let what = if buf.is_empty() {
                    "no answer".to_string()
                } else {
                    format!("only part of an answer ({} bytes)", buf.len())
                };
                return Err(Step::fail("upgrade", format!("{what} to the upgrade request within the timeout\n{request_lines}"))
                    .with_hint("the server accepted the connection but does not answer: is it an HTTP server? A TLS \
port waits silently for a TLS handshake (use wss://); a proxy may be waiting for its upstream (check its \
connect timeout and the upstream)"));
            }
            Ok(Err(e)) => {
                return Err(Step::fail(
                    "upgrade",
                    format!("reading the answer failed: {e}\n{request_lines}"),
                )
                .with_hint(closed_hint()));
            }
            Ok(Ok(0)) => {
                let what = if buf.is_empty() {
                    "the server closed the connection without answering".to_string()
                } else {
                    format!(
                        "the server closed the connection in the middle of the answer ({})",
                        printable(&buf[..buf.len().min(200)])
                    )
                };
                return Err(Step::fail("upgrade", format!("{what}\n{request_lines}"))
                    .with_hint(closed_hint()));
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn closed_hint() -> &'static str {
    "a server that hangs up on a request usually does not speak HTTP on this port (a TLS port? try wss://), \
or a proxy in front refused the connection: check the server's and the proxy's error logs"
}

fn not_http_hint(e: &HeadError) -> &'static str {
    match e {
        HeadError::NotHttp(what) if what.contains("TLS record") => {
            "this port expects TLS: use wss:// (or https://) in the URL"
        }
        HeadError::NotHttp(_) => {
            "something other than an HTTP server listens on this port; check the port in the URL"
        }
        HeadError::TooManyHeaders(_) => {
            "the server sends an unusually large head; check what listens on this port"
        }
    }
}

/// A refusal's body as far as it came.
struct Body {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads a refusal's body: by Content-Length, to the end of a chunked body, or to EOF, at most
/// [`MAX_BODY`] bytes and until `deadline`.
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    head: &Head,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Body {
    let length = head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = head.has_token("transfer-encoding", "chunked");
    let done = |buf: &[u8]| match length {
        Some(n) => buf.len() >= n,
        None if chunked => buf.ends_with(b"0\r\n\r\n"),
        None => false,
    };
    let mut chunk = [0u8; 4096];
    while !done(&buf) && buf.len() < MAX_BODY {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let truncated = buf.len() > MAX_BODY || !done(&buf) && (length.is_some() || chunked);
    buf.truncate(MAX_BODY);
    if let Some(n) = length {
        buf.truncate(n);
    }
    if chunked {
        buf = dechunk(&buf);
    }
    Body {
        bytes: buf,
        truncated,
    }
}

/// The data of a chunked body, as far as it is well formed.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return out };
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        let take = size.min(b.len());
        out.extend_from_slice(&b[..take]);
        b = &b[take..];
        b = b.strip_prefix(b"\r\n").unwrap_or(b);
        if take < size {
            return out;
        }
    }
}

/// What is wrong with a 101 and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Checks a 101 against the request (RFC 6455 section 4.1, the client's checks); `Ok` carries
/// the chosen subprotocol.
///
/// # Errors
/// The first thing a browser would fail the connection for.
pub fn check_101(head: &Head, sent: &Sent) -> Result<Option<String>, Problem> {
    let upgrade = head.header("upgrade");
    if !head.has_token("upgrade", "websocket") {
        return Err(Problem {
            what: match upgrade {
                None => "it has no Upgrade header".into(),
                Some(u) => format!("it switches to Upgrade: {u}, not websocket"),
            },
            fix: "a 101 for a WebSocket must say Upgrade: websocket (RFC 6455 section 4.1; RFC 9110 section 7.8); \
the server (or a hop that rewrites the answer) is switching to another protocol. Check the server's \
WebSocket setup and any proxy that edits response headers"
                .into(),
        });
    }
    if !head.has_token("connection", "upgrade") {
        return Err(Problem {
            what: match head.header("connection") {
                None => "it has no Connection header".into(),
                Some(c) => format!("its Connection header is {c:?}, without the upgrade token"),
            },
            fix: "the 101 must carry Connection: Upgrade (RFC 6455 section 4.1), and browsers fail without it; \
a proxy that rewrites Connection on responses (e.g. to keep-alive or close) drops it: let it pass \
the 101's Connection header"
                .into(),
        });
    }
    let expected = crate::ws::accept_key(sent.key.as_bytes());
    match head.header("sec-websocket-accept") {
        None => {
            return Err(Problem {
                what: format!("it has no Sec-WebSocket-Accept header (expected {expected})"),
                fix: "the server must answer the Sec-WebSocket-Key with Sec-WebSocket-Accept = \
base64(SHA-1(key + \"258EAFA5-E914-47DA-95CA-C5AB0DC85B11\")) (RFC 6455 section 4.2.2); a proxy may be \
dropping the header, or the server is not a WebSocket server"
                    .into(),
            });
        }
        Some(got) if got != expected => {
            return Err(Problem {
                what: format!(
                    "its Sec-WebSocket-Accept is {got:?} where {expected:?} was expected for the key doctor sent"
                ),
                fix: "browsers drop such a connection at once. A hop replaced Sec-WebSocket-Key on the way in \
(or the 101 on the way back), or the server computes the accept wrongly: it must be \
base64(SHA-1(key + \"258EAFA5-E914-47DA-95CA-C5AB0DC85B11\")) (RFC 6455 section 4.2.2)"
                    .into(),
            });
        }
        Some(_) => {}
    }
    let chosen: Vec<&str> = head.tokens("sec-websocket-protocol");
    match (sent.protocols.is_empty(), chosen.as_slice()) {
        (true, []) => {}
        (false, [one]) if sent.protocols.iter().any(|p| p == one) => {}
        (false, []) => {
            return Err(Problem {
                what: format!(
                    "it chose no subprotocol although doctor offered {}",
                    sent.protocols.join(", ")
                ),
                fix: format!(
                    "the server does not speak {} on this path, so it refused the subprotocol. Chrome fails such a \
connection (\"Sent non-empty 'Sec-WebSocket-Protocol' header but no response was received\"). Add it to \
the server's list (wsgate: subprotocols = [\"{}\"] on the [[route]]), or offer one it speaks",
                    sent.protocols.join(" or "),
                    sent.protocols[0]
                ),
            });
        }
        (_, got) => {
            return Err(Problem {
                what: format!(
                    "it chose subprotocol {:?}, which doctor did not offer (offered: {})",
                    got.join(", "),
                    if sent.protocols.is_empty() {
                        "none".to_string()
                    } else {
                        sent.protocols.join(", ")
                    }
                ),
                fix: "a server may only pick one of the offered subprotocols, or none (RFC 6455 section 4.2.2); \
browsers fail the connection. Fix the server's subprotocol selection"
                    .into(),
            });
        }
    }
    if let Some(ext) = head.header("sec-websocket-extensions") {
        return Err(Problem {
            what: format!("it accepts extensions doctor did not offer (Sec-WebSocket-Extensions: {ext})"),
            fix: "a server must not list extensions the client did not offer (RFC 6455 section 4.2.2); fix the \
server, or the proxy that adds the header"
                .into(),
        });
    }
    Ok(chosen.first().map(|s| s.to_string()))
}

/// The verdict on an answer other than 101.
#[derive(Debug)]
struct Refusal {
    verdict: Verdict,
    what: String,
    fix: String,
    outcome: Outcome,
}

fn refusal(what: String, fix: String) -> Refusal {
    Refusal {
        verdict: Verdict::Fail,
        what,
        fix,
        outcome: Outcome::Stop,
    }
}

/// True when a body talks about the upgrade headers (the wording of wsgate, Spring, gorilla,
/// Tornado and ws when they are missing).
fn mentions_upgrade(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("upgrade") || b.contains("connection") || b.contains("websocket")
}

fn judge_refusal(
    head: &Head,
    body: &str,
    hops: &Hops,
    sent: &Sent,
    target: &Target,
    follow: bool,
) -> Refusal {
    let status = head.status;
    let line = format!("{status} {}", head.reason.trim());
    let expected = format!("{line} where 101 was expected");
    match status {
        300..=399 if status != 304 => redirect(head, target, follow, &line),
        426 if head.header("sec-websocket-version").is_some_and(|v| !v.split(',').any(|t| t.trim() == "13")) => {
            let versions = head.header("sec-websocket-version").unwrap_or("");
            refusal(
                format!("{expected}: the server wants WebSocket version {versions}, doctor speaks 13 (RFC 6455)"),
                "the server speaks an old draft of the WebSocket protocol; upgrade it to RFC 6455".into(),
            )
        }
        426 | 400 if status == 426 || mentions_upgrade(body) => refusal(
            format!("{expected}: the upgrade headers were lost on the way\n{}", hops.stripped_story()),
            hops.upgrade_fix(),
        ),
        400 => refusal(
            format!("{expected}: the server found the handshake malformed"),
            "compare the request above with what the server says in its body; a hop may have changed \
Host, Sec-WebSocket-Key or Sec-WebSocket-Version on the way"
                .into(),
        ),
        200..=299 => refusal(
            format!(
                "{expected}: the server answered the handshake like a plain HTTP request. Either nothing \
speaks WebSocket at {}, or a hop removed Upgrade and Connection and the server served a page",
                target.path
            ),
            format!(
                "check that the path is the WebSocket endpoint; if it is, a proxy dropped the upgrade headers:\n{}",
                hops.upgrade_fix()
            ),
        ),
        401 => refusal(
            format!(
                "{expected}: the server wants authentication{}",
                head.header("www-authenticate")
                    .map(|w| format!(" (WWW-Authenticate: {w})"))
                    .unwrap_or_default()
            ),
            "browsers cannot set an Authorization header on a WebSocket: authenticate with a cookie, or \
a token in the URL's query, that the server checks"
                .into(),
        ),
        403 => match &sent.origin {
            Some(o) => refusal(
                format!("{expected}: the server refused the Origin doctor sent ({o})"),
                format!(
                    "allow {o} on the server (wsgate: websocket.allowed_origins or the route's \
allowed_origins), or run doctor with the Origin your page really has; a server that refuses other sites' \
pages protects against cross-site WebSocket hijacking, so allow only your own origins"
                ),
            ),
            None => refusal(
                format!("{expected}: the server or a proxy in front forbids this request"),
                "look for IP or authentication rules on this path; Envoy answers 403 to upgrades it was not told \
to allow (upgrade_configs: websocket); a server that checks Origin may want one: try --origin https://your.site"
                    .into(),
            ),
        },
        404 => refusal(
            format!(
                "{expected}: nothing is served at {} on the server that answered",
                target.path
            ),
            "check the path in the URL; behind a proxy, check that its route for this path points at the \
WebSocket server (nginx location, Caddy handle/handle_path, wsgate [[route]] path or path_prefix); the body \
above may list what is served"
                .into(),
        ),
        405 => refusal(
            format!("{expected}: the server does not allow GET here ({})", head.header("allow").unwrap_or("no Allow header")),
            "the path is not a WebSocket endpoint on this server; check the path".into(),
        ),
        502 => refusal(
            format!(
                "{expected}: a proxy ({}) could not get a valid answer from its upstream",
                front_name(hops)
            ),
            "check that the upstream server runs and listens where the proxy points (nginx: error.log says \
why; wsgate's 502 body names the upstream and the error); a 502 only for upgrades means the upstream's \
101 was refused (wsgate checks Upgrade and Sec-WebSocket-Accept)"
                .into(),
        ),
        503 => refusal(
            format!(
                "{expected}: no server behind {} can take the request{}",
                front_name(hops),
                head.header("retry-after")
                    .map(|r| format!(" (Retry-After: {r})"))
                    .unwrap_or_default()
            ),
            "check the upstreams' health (HAProxy: \"No server is available\" means every server is down); \
wsgate answers 503 at server.max_connections or when every upstream is down"
                .into(),
        ),
        504 => refusal(
            format!("{expected}: the upstream of {} did not answer in time", front_name(hops)),
            "check that the upstream is up and not overloaded; nginx: proxy_connect_timeout/proxy_read_timeout, \
wsgate: the upstream's connect_timeout/read_timeout"
                .into(),
        ),
        _ => refusal(
            expected,
            "read the body above for the server's reason; a WebSocket endpoint answers the handshake with 101"
                .into(),
        ),
    }
}

fn front_name(hops: &Hops) -> String {
    hops.front
        .as_ref()
        .map(|(p, _)| p.name().to_string())
        .unwrap_or_else(|| "the front server".into())
}

fn redirect(head: &Head, target: &Target, follow: bool, line: &str) -> Refusal {
    let Some(location) = head.header("location") else {
        return refusal(
            format!("{line}: a redirect without a Location header"),
            "the server must say where to go; check its redirect rules".into(),
        );
    };
    let browsers =
        "browsers do not follow redirects for WebSockets (the Fetch standard fails them)";
    match target.join(location) {
        Err(e) => refusal(
            format!(
                "{line}: redirects to {location:?}, which doctor cannot check ({})",
                e.why
            ),
            format!("{browsers}; point the client at the WebSocket URL itself"),
        ),
        Ok(next) => {
            let tls = if next.secure && !target.secure {
                " The server wants TLS: use the wss:// URL."
            } else {
                ""
            };
            let next_ws = format!("{}://{}{}", next.ws_scheme(), next.authority, next.path);
            let mut r = refusal(
                format!("{line}: redirects to {location}.{tls}"),
                if follow {
                    format!("{browsers}; use {next_ws} in the client (doctor follows it below)")
                } else {
                    format!(
                        "{browsers}; use {next_ws} in the client, or run doctor with --follow to check that URL"
                    )
                },
            );
            if follow {
                r.outcome = Outcome::Follow(next);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(protocols: &[&str], origin: Option<&str>) -> Sent {
        let t = Target::parse("ws://h:1/p").unwrap();
        let protocols: Vec<String> = protocols.iter().map(|s| s.to_string()).collect();
        Sent::new(&t, "dGhlIHNhbXBsZSBub25jZQ==".into(), origin, &protocols)
    }

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    #[test]
    fn the_request_is_a_valid_rfc_6455_handshake() {
        let s = sent(&["v1", "v2"], Some("https://a.example"));
        assert!(s.text.starts_with(
            "GET /p HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        ));
        assert!(s.text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(s.text.contains("Origin: https://a.example\r\n"));
        assert!(s.text.contains("Sec-WebSocket-Protocol: v1, v2\r\n"));
        assert!(s.text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_valid_101_passes_with_tokens_in_any_case() {
        assert_eq!(
            check_101(&head(&format!("{GOOD}\r\n")), &sent(&[], None)),
            Ok(None)
        );
        let h = head(&format!("{GOOD}Sec-WebSocket-Protocol: v2\r\n\r\n"));
        assert_eq!(
            check_101(&h, &sent(&["v1", "v2"], None)),
            Ok(Some("v2".into()))
        );
    }

    #[test]
    fn a_101_is_checked_like_a_browser_would() {
        let cases = [
            (
                "HTTP/1.1 101 S\r\nConnection: Upgrade\r\n\r\n",
                &[][..],
                "no Upgrade header",
            ),
            (
                "HTTP/1.1 101 S\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                &[],
                "Upgrade: h2c",
            ),
            (
                "HTTP/1.1 101 S\r\nUpgrade: websocket\r\n\r\n",
                &[],
                "no Connection header",
            ),
            (
                "HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                &[],
                "no Sec-WebSocket-Accept",
            ),
            (
                "HTTP/1.1 101 S\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bad=\r\n\r\n",
                &[],
                "\"bad=\" where \"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\" was expected",
            ),
        ];
        for (raw, protocols, want) in cases {
            let p = check_101(&head(raw), &sent(protocols, None)).unwrap_err();
            assert!(p.what.contains(want), "{raw}: {p:?}");
        }
        let p = check_101(&head(&format!("{GOOD}\r\n")), &sent(&["chat"], None)).unwrap_err();
        assert!(
            p.what
                .contains("chose no subprotocol although doctor offered chat"),
            "{p:?}"
        );
        assert!(p.fix.contains("subprotocols = [\"chat\"]"), "{p:?}");
        let p = check_101(
            &head(&format!("{GOOD}Sec-WebSocket-Protocol: other\r\n\r\n")),
            &sent(&["chat"], None),
        )
        .unwrap_err();
        assert!(
            p.what.contains("\"other\", which doctor did not offer"),
            "{p:?}"
        );
        let p = check_101(
            &head(&format!(
                "{GOOD}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            )),
            &sent(&[], None),
        )
        .unwrap_err();
        assert!(p.what.contains("extensions"), "{p:?}");
    }

    #[test]
    fn any_bytes_give_a_verdict_and_never_a_panic() {
        assert!(
            matches!(parse_head(b"\x15\x03\x03\x00\x02\x02\x46"), Err(HeadError::NotHttp(w)) if w.contains("TLS record"))
        );
        assert!(
            matches!(parse_head(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(HeadError::NotHttp(w)) if w.contains("SSH"))
        );
        assert_eq!(parse_head(b"HTTP/1.1 101 Swi"), Ok(None));
        let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse_head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()),
            Err(HeadError::TooManyHeaders(_))
        ));
        // A deterministic stream of random heads: every one parses, waits, or is refused.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut b = b"HTTP/1.1 ".to_vec();
            for _ in 0..(x % 80) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push((x >> 24) as u8);
            }
            b.extend_from_slice(b"\r\n\r\n");
            if let Ok(Some((h, _))) = parse_head(&b) {
                let s = sent(&["a"], Some("o"));
                let t = Target::parse("ws://h/").unwrap();
                let _ = check_101(&h, &s);
                let _ = judge_refusal(&h, "", &Hops::guess(&h, ""), &s, &t, true);
            }
        }
    }

    #[test]
    fn a_body_cannot_move_the_terminal_cursor() {
        assert_eq!(
            text_lines(b"a\r\n\x1b[2Jb\tc\r\n\r\n"),
            ["a", "\\u{1b}[2Jb\tc"]
        );
    }

    #[test]
    fn a_chunked_body_is_decoded_as_far_as_it_goes() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"5\r\nhel"), b"hel");
        assert_eq!(dechunk(b"zz\r\nhello"), b"");
    }

    #[test]
    fn refusals_are_explained() {
        let t = Target::parse("ws://h/room/x/").unwrap();
        let s = sent(&[], None);
        let judge = |raw: &str, body: &str, follow: bool| {
            let h = head(raw);
            judge_refusal(&h, body, &Hops::guess(&h, body), &s, &t, follow)
        };
        let r = judge(
            "HTTP/1.1 426 Upgrade Required\r\nServer: nginx/1.22.1\r\n\r\n",
            "",
            false,
        );
        assert!(r.what.contains("nginx in front"), "{}", r.what);
        assert!(r.fix.contains("proxy_http_version 1.1;"), "{}", r.fix);
        let r = judge(
            "HTTP/1.1 400 Bad Request\r\n\r\n",
            "Can \"Upgrade\" only to \"WebSocket\".",
            false,
        );
        assert!(r.what.contains("hop-by-hop"), "{}", r.what);
        let r = judge("HTTP/1.1 200 OK\r\n\r\n", "<html>", false);
        assert!(r.what.contains("like a plain HTTP request"), "{}", r.what);
        let r = judge(
            "HTTP/1.1 301 Moved\r\nLocation: wss://h/room/x/\r\n\r\n",
            "",
            false,
        );
        assert!(
            r.what
                .contains("redirects to wss://h/room/x/. The server wants TLS"),
            "{}",
            r.what
        );
        assert!(r.fix.contains("--follow"), "{}", r.fix);
        assert!(matches!(r.outcome, Outcome::Stop));
        let r = judge("HTTP/1.1 302 Found\r\nLocation: /other\r\n\r\n", "", true);
        assert!(matches!(r.outcome, Outcome::Follow(ref n) if n.url == "ws://h/other"));
        let r = judge(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n",
            "",
            false,
        );
        assert!(r.what.contains("Retry-After: 5"), "{}", r.what);
        let r = judge(
            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "",
            false,
        );
        assert!(r.what.contains("version 8"), "{}", r.what);
    }
}
