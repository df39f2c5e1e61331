//! The `upgrade` step: write the opening handshake (RFC 6455 section 4.1), read the answer's
//! head with a size and time bound (and a refusal's body), and report it with the judgement of
//! `answer.rs`: a valid 101, or what a 426, 400, 200, 403, 404, 502, 503 or redirect means and
//! which hop to fix.
//!
//! Any bytes at all may come back: a head that is not HTTP, too big, cut short or full of odd
//! values gives a verdict, never a panic. This file knows nothing about DNS, TCP or TLS beyond
//! the stream it is handed, and nothing about frames.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::answer::{check_101, judge_refusal};
use super::head::{Head, HeadError, Sent, parse_head, printable, text_lines};
use super::hops::{Hops, Proxy};
use super::report::{Step, ms_since};
use super::target::Target;

/// A response head larger than this is not a WebSocket answer.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes of a refusal kept to show and to read clues from.
const MAX_BODY: usize = 8 * 1024;
/// The longest wait for a refusal's body once its head has arrived.
const BODY_WAIT: Duration = Duration::from_secs(2);

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
    let refusal = judge_refusal(&head, &body_text, &hops, sent, target, follow, 101);
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
    let outcome = refusal.follow.map_or(Outcome::Stop, Outcome::Follow);
    Ok((step, outcome))
}

/// Adds the handshake's figures to a step.
fn facts(step: Step, head: &Head, sent: &Sent) -> Step {
    step.with_fact("status", head.status)
        .with_fact("request", sent.text.clone())
        .with_fact("response_head", head.lines().join("\r\n"))
        .with_fact("server", head.header("server"))
}

/// Lines prefixed with `> ` or `< `.
pub(super) fn quote<'a>(mark: char, lines: impl Iterator<Item = &'a str>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(protocols: &[&str], origin: Option<&str>) -> Sent {
        Sent::for_test(protocols, origin)
    }

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
                let _ = judge_refusal(&h, "", &Hops::guess(&h, ""), &s, &t, true, 101);
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
}
