//! `--h2`: a WebSocket over HTTP/2 (RFC 8441), checked as a browser opens one.
//!
//! - `alpn` (TLS only): which protocol the server picked of `h2` and `http/1.1`, offered as a
//!   browser offers them, so that a server without HTTP/2 still completes the handshake and can
//!   be told apart from one that does not speak TLS;
//! - `h2`: the connection preface, the server's SETTINGS and a PING acknowledged; over a plain
//!   port this is h2c with prior knowledge (no TLS, so no ALPN to agree on it first);
//! - `settings`: whether the server announced SETTINGS_ENABLE_CONNECT_PROTOCOL = 1;
//! - `connect`: the extended CONNECT (`:protocol websocket`), request and response shown, 200
//!   checked like a 101 is (subprotocol, extensions), anything else explained.
//!
//! The stream then carries frames like an upgraded HTTP/1.1 connection (`h2io::Tunnel`), and
//! the `ping`, `idle` and `close` steps run over it unchanged. HTTP/2 itself is the `h2` crate's;
//! this file only decides what to send and what the answers mean.

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::answer::{Refusal, check_negotiation, judge_refusal};
use super::h2io::{Tap, Tunnel};
use super::head::{Head, Sent, printable, text_lines};
use super::hops::{Hops, Proxy};
use super::net::secs;
use super::report::{Step, Verdict, ms_since};
use super::target::Target;
use super::upgrade::quote;

/// What doctor offers in TLS ALPN with `--h2`: what browsers offer.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Body bytes of a refusal kept to show.
const MAX_BODY: usize = 8 * 1024;
/// The longest wait for a refusal's body once its head has arrived.
const BODY_WAIT: Duration = Duration::from_secs(2);

/// Where WebSockets over HTTP/2 need support, for the hints.
const WHO_SUPPORTS: &str = "wsgate: [server.http2] enabled = true (the default) with \"h2\" in \
server.tls.alpn; nginx: `listen 443 ssl http2` (or `http2 on;`) gives HTTP/2 but nginx has no RFC 8441, so \
its WebSockets stay on HTTP/1.1 whatever you set; HAProxy 2.4 and later support it on the client side; \
Envoy: http2_protocol_options allow_connect: true";

/// The `alpn` step: the server must pick `h2`.
pub fn alpn(chosen: Option<&[u8]>) -> Step {
    let offered = "doctor offered h2 and http/1.1, as browsers do";
    match chosen {
        Some(b"h2") => {
            Step::pass("alpn", format!("the server picked h2 ({offered})")).with_fact("alpn", "h2")
        }
        other => {
            let picked = other.map(|p| String::from_utf8_lossy(p).into_owned());
            let what = match &picked {
                Some(p) => format!("the server picked {p}, not h2 ({offered})"),
                None => format!("the server picked no protocol in ALPN ({offered}): HTTP/1.1"),
            };
            Step::fail(
                "alpn",
                format!("{what}; browsers will open WebSockets here over HTTP/1.1, never HTTP/2"),
            )
            .with_fact("alpn", picked)
            .with_hint(format!(
                "the server, or the hop that terminates TLS in front of it (load balancer, CDN, reverse \
proxy), does not speak HTTP/2. To carry WebSockets over HTTP/2, that hop must offer h2 in ALPN and \
support RFC 8441: {WHO_SUPPORTS}. Without it, check the HTTP/1.1 path: run doctor without --h2"
            ))
        }
    }
}

/// The `h2` step: the preface, the server's SETTINGS, a PING and its acknowledgement. The
/// connection task runs in the background from here on.
pub async fn open<S>(
    io: S,
    target: &Target,
    timeout: Duration,
) -> (Step, Option<SendRequest<Bytes>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let how = if target.secure {
        "HTTP/2 over TLS (ALPN h2)"
    } else {
        "h2c with prior knowledge (no TLS, so no ALPN to agree on HTTP/2 first: doctor opened with the \
HTTP/2 preface; browsers never do this, they use HTTP/2 only over TLS)"
    };
    let tap = Tap::new(io);
    let seen = tap.seen();
    let builder = h2::client::Builder::new();
    let result = tokio::time::timeout_at(deadline, async {
        let (send, mut conn) = builder.handshake::<_, Bytes>(tap).await?;
        let pings = conn.ping_pong();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // The server's SETTINGS come before its answer to this PING, so once it is back the
        // SETTINGS are applied.
        if let Some(mut p) = pings {
            p.ping(h2::Ping::opaque()).await?;
        }
        Ok::<_, h2::Error>(send)
    })
    .await;
    let answer = || {
        let bytes = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        describe_answer(&bytes)
    };
    let mut step = match result {
        Ok(Ok(send)) => {
            let mut step = Step::pass(
                "h2",
                format!(
                    "{how}; the server sent its SETTINGS and acknowledged a PING in {:.1} ms",
                    ms_since(start)
                ),
            )
            .with_fact("transport", if target.secure { "h2" } else { "h2c" })
            .with_fact("max_concurrent_streams", send.current_max_send_streams());
            step.elapsed_ms = ms_since(start);
            return (step, Some(send));
        }
        Ok(Err(e)) => {
            let answer = answer();
            // An HTTP/1.1 answer says it all; the h2 error it caused would only add noise.
            let error = if answer.contains("in HTTP/1.1") {
                String::new()
            } else {
                format!("; {}", h2_error(&e))
            };
            Step::fail("h2", format!("{how}\n{answer}{error}"))
        }
        Err(_) => Step::fail(
            "h2",
            format!(
                "{how}\nno SETTINGS and PING acknowledgement within {} s; {}",
                secs(timeout),
                answer()
            ),
        ),
    };
    step = step.with_hint(if target.secure {
        "the server agreed on h2 in ALPN and then did not speak it: a bug in the server or in the hop \
that terminates TLS; check its HTTP/2 configuration and logs"
            .to_string()
    } else {
        "this port does not take HTTP/2 without TLS (h2c). That alone does not hurt browsers, which \
use HTTP/2 only over TLS: check the wss:// URL with --h2. wsgate serves h2c next to HTTP/1.1 when \
[server.http2] enabled = true (the default)"
            .to_string()
    });
    step.elapsed_ms = ms_since(start);
    (step, None)
}

/// What came back on the connection, for a failed `h2` step.
fn describe_answer(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the server sent nothing".into();
    }
    if bytes.starts_with(b"HTTP/1.") {
        let line = text_lines(bytes).into_iter().next().unwrap_or_default();
        let body = text_lines(bytes)
            .into_iter()
            .skip_while(|l| !l.is_empty())
            .find(|l| !l.trim().is_empty());
        let body = body.map(|b| format!(", saying {b:?}")).unwrap_or_default();
        return format!(
            "the server answered in HTTP/1.1 ({line}{body}): it does not speak HTTP/2 here"
        );
    }
    format!(
        "the server answered with bytes that are not HTTP/2: {}",
        printable(&bytes[..bytes.len().min(60)])
    )
}

/// An `h2` error in words.
fn h2_error(e: &h2::Error) -> String {
    let reason = e.reason().map(|r| format!(" {r:?}")).unwrap_or_default();
    if e.is_go_away() {
        let who = if e.is_remote() {
            "the server"
        } else {
            "doctor"
        };
        format!("{who} ended the connection with GOAWAY{reason}")
    } else if e.is_reset() {
        let who = if e.is_remote() {
            "the server"
        } else {
            "doctor"
        };
        format!("{who} reset the stream (RST_STREAM{reason})")
    } else if let Some(io) = e.get_io() {
        format!("the connection failed ({io})")
    } else {
        format!("HTTP/2 error ({e})")
    }
}

/// The `settings` step: SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 section 3).
pub fn settings(send: &SendRequest<Bytes>) -> Step {
    let streams = send.current_max_send_streams();
    let step = if send.is_extended_connect_protocol_enabled() {
        Step::pass(
            "settings",
            format!(
                "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1: the server takes WebSockets over HTTP/2 (RFC 8441 \
extended CONNECT); up to {streams} streams at once"
            ),
        )
    } else {
        Step::fail(
            "settings",
            format!(
                "the server speaks HTTP/2 but did not announce SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 \
section 3), so no WebSocket can be opened over this connection; browsers open theirs on a separate \
HTTP/1.1 connection instead (up to {streams} streams at once)"
            ),
        )
        .with_hint(format!(
            "WebSockets over HTTP/2 need RFC 8441 in the HTTP/2 server (the hop that terminates TLS): \
{WHO_SUPPORTS}. Check the HTTP/1.1 path that browsers fall back to: run doctor without --h2"
        ))
    };
    step.with_fact(
        "enable_connect_protocol",
        send.is_extended_connect_protocol_enabled(),
    )
    .with_fact("max_concurrent_streams", streams)
}

/// What the extended CONNECT led to.
pub enum Outcome {
    /// 200: frames follow on the stream.
    Open {
        tunnel: Tunnel,
        front: Option<Proxy>,
    },
    /// A redirect doctor was asked to follow.
    Follow(Target),
    /// Nothing more to check.
    Stop,
}

/// The request doctor sends: pseudo-headers first, as the `h2` crate writes them.
pub fn request_text(target: &Target, origin: Option<&str>, protocols: &[String]) -> Sent {
    let scheme = if target.secure { "https" } else { "http" };
    let mut lines = vec![
        ":method: CONNECT".to_string(),
        ":protocol: websocket".to_string(),
        format!(":scheme: {scheme}"),
        format!(":authority: {}", target.authority),
        format!(":path: {}", target.path),
        "sec-websocket-version: 13".to_string(),
    ];
    if let Some(o) = origin {
        lines.push(format!("origin: {o}"));
    }
    if !protocols.is_empty() {
        lines.push(format!("sec-websocket-protocol: {}", protocols.join(", ")));
    }
    lines.push(format!("user-agent: {}", user_agent()));
    Sent {
        key: String::new(),
        origin: origin.map(str::to_string),
        protocols: protocols.to_vec(),
        text: lines.join("\n"),
    }
}

fn user_agent() -> &'static str {
    concat!("wsgate-doctor/", env!("CARGO_PKG_VERSION"))
}

/// The `connect` step: the extended CONNECT and its answer.
pub async fn connect(
    send: &SendRequest<Bytes>,
    target: &Target,
    sent: &Sent,
    follow: bool,
    timeout: Duration,
) -> (Step, Outcome) {
    let start = Instant::now();
    let (mut step, outcome) = match exchange(send, target, sent, follow, start + timeout).await {
        Ok(r) => r,
        Err(step) => (step, Outcome::Stop),
    };
    step.elapsed_ms = ms_since(start);
    (step, outcome)
}

async fn exchange(
    send: &SendRequest<Bytes>,
    target: &Target,
    sent: &Sent,
    follow: bool,
    deadline: Instant,
) -> Result<(Step, Outcome), Step> {
    let request_lines = quote('>', sent.text.lines());
    let stream_failed = |what: String| {
        Step::fail("connect", format!("{what}\n{request_lines}")).with_hint(
            "the server dropped the WebSocket's stream before answering: check its logs; REFUSED_STREAM \
means it has too many streams open on this connection",
        )
    };
    let req = build_request(target, sent)
        .map_err(|e| Step::fail("connect", format!("cannot build the request: {e}")))?;
    let ready = tokio::time::timeout_at(deadline, send.clone().ready()).await;
    let mut ready = match ready {
        Err(_) => return Err(stream_failed("no room for a new stream in time".into())),
        Ok(Err(e)) => {
            return Err(stream_failed(format!(
                "the connection ended: {}",
                h2_error(&e)
            )));
        }
        Ok(Ok(r)) => r,
    };
    let (response, mut body_tx) = ready
        .send_request(req, false)
        .map_err(|e| stream_failed(format!("the request could not be sent: {}", h2_error(&e))))?;
    let response = match tokio::time::timeout_at(deadline, response).await {
        Err(_) => {
            body_tx.send_reset(h2::Reason::CANCEL);
            return Err(Step::fail(
                "connect",
                format!("no answer to the extended CONNECT in time\n{request_lines}"),
            )
            .with_hint(
                "the server accepted the stream and said nothing: it may hold extended CONNECTs it cannot \
route (check its logs), or a hop in front buffers the request",
            ));
        }
        Ok(Err(e)) => return Err(stream_failed(format!("no answer: {}", h2_error(&e)))),
        Ok(Ok(r)) => r,
    };
    let (parts, mut body) = response.into_parts();
    let head = as_head(parts.status, &parts.headers);
    let response_lines = quote('<', response_lines(&head).iter().map(String::as_str));
    let shown = format!("{request_lines}\n{response_lines}");
    if parts.status == StatusCode::OK {
        let front = Hops::guess(&head, "").front.map(|f| f.0);
        return Ok(match check_negotiation(&head, sent) {
            Ok(protocol) => {
                let chosen = protocol
                    .map(|p| format!(", subprotocol {p}"))
                    .unwrap_or_default();
                let step = Step::pass(
                    "connect",
                    format!("200: the server opened the WebSocket over HTTP/2{chosen}\n{shown}"),
                );
                (
                    facts(step, &head, sent),
                    Outcome::Open {
                        tunnel: Tunnel::new(body_tx, body),
                        front,
                    },
                )
            }
            Err(problem) => {
                body_tx.send_reset(h2::Reason::CANCEL);
                let step = Step::fail("connect", format!("200, but {}\n{shown}", problem.what))
                    .with_hint(problem.fix);
                (facts(step, &head, sent), Outcome::Stop)
            }
        });
    }
    let (bytes, truncated) = read_body(&mut body, deadline.min(Instant::now() + BODY_WAIT)).await;
    body_tx.send_reset(h2::Reason::CANCEL);
    let body_text = String::from_utf8_lossy(&bytes).into_owned();
    let refusal = judge(&head, &body_text, sent, target, follow);
    let mut detail = format!("{}\n{shown}", refusal.what);
    let body_lines = text_lines(&bytes);
    if !body_lines.is_empty() {
        detail.push_str("\n<\n");
        detail.push_str(&quote('<', body_lines.iter().take(16).map(String::as_str)));
        if body_lines.len() > 16 || truncated {
            detail.push_str("\n< ...");
        }
    }
    let mut step = facts(
        Step::new("connect", refusal.verdict, detail).with_hint(refusal.fix),
        &head,
        sent,
    )
    .with_fact("body", body_text);
    if let Some(l) = head.header("location") {
        step = step.with_fact("location", l);
    }
    Ok((step, refusal.follow.map_or(Outcome::Stop, Outcome::Follow)))
}

fn build_request(target: &Target, sent: &Sent) -> Result<Request<()>, http::Error> {
    let scheme = if target.secure { "https" } else { "http" };
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{scheme}://{}{}", target.authority, target.path))
        .header("sec-websocket-version", "13")
        .header("user-agent", user_agent());
    if let Some(o) = &sent.origin {
        b = b.header("origin", o);
    }
    if !sent.protocols.is_empty() {
        b = b.header("sec-websocket-protocol", sent.protocols.join(", "));
    }
    let mut req = b.body(())?;
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    Ok(req)
}

/// An HTTP/2 response head in the shape the judgement of `answer.rs` reads.
fn as_head(status: StatusCode, headers: &HeaderMap) -> Head {
    Head {
        minor: 0,
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

/// The response as HTTP/2 shows it: `:status`, then the headers.
fn response_lines(head: &Head) -> Vec<String> {
    std::iter::once(format!(":status: {}", head.status))
        .chain(head.headers.iter().map(|(k, v)| format!("{k}: {v}")))
        .collect()
}

fn facts(step: Step, head: &Head, sent: &Sent) -> Step {
    step.with_fact("status", head.status)
        .with_fact("request", sent.text.clone())
        .with_fact("response_head", response_lines(head).join("\n"))
        .with_fact("server", head.header("server"))
}

/// A refusal's body, at most [`MAX_BODY`] bytes, until `deadline`; and whether it was cut.
async fn read_body(body: &mut RecvStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Ok(Some(Ok(data))) = tokio::time::timeout_at(deadline, body.data()).await {
        let _ = body.flow_control().release_capacity(data.len());
        let room = MAX_BODY - out.len();
        out.extend_from_slice(&data[..data.len().min(room)]);
        if out.len() >= MAX_BODY {
            return (out, true);
        }
    }
    (out, false)
}

/// What an answer other than 200 to the extended CONNECT means. The statuses that mean the same
/// over both versions (401, 403, 404, 502, ...) are judged as for HTTP/1.1.
fn judge(head: &Head, body: &str, sent: &Sent, target: &Target, follow: bool) -> Refusal {
    let line = format!("{} {}", head.status, head.reason.trim());
    let expected = format!("{line} where 200 was expected");
    let refuses_here = "a server that announces SETTINGS_ENABLE_CONNECT_PROTOCOL and then refuses the \
CONNECT breaks browsers, which do not retry over HTTP/1.1";
    let fail = |what: String, fix: String| Refusal {
        verdict: Verdict::Fail,
        what,
        fix,
        follow: None,
    };
    match head.status {
        400 => fail(
            format!(
                "{expected}: the server found the extended CONNECT malformed or unsupported here"
            ),
            format!(
                "the request above is what RFC 8441 section 4 asks for; read the body for the header the \
server names. A server that does not route extended CONNECT to its WebSocket handler answers 400 too: \
{refuses_here}"
            ),
        ),
        405 | 501 => fail(
            format!(
                "{expected}: the server does not take CONNECT with :protocol websocket at {}",
                target.path
            ),
            format!(
                "route the path to the WebSocket handler over HTTP/2 as well (wsgate: a [[route]] with a \
hub, echo or proxy target takes it); {refuses_here}"
            ),
        ),
        426 => fail(
            format!(
                "{expected}: the server wants an HTTP/1.1 Upgrade at {} and refuses WebSockets over HTTP/2 there",
                target.path
            ),
            format!(
                "let the WebSocket handler take the extended CONNECT too, or stop announcing \
SETTINGS_ENABLE_CONNECT_PROTOCOL; {refuses_here}"
            ),
        ),
        201..=299 => fail(
            format!("{expected}: browsers open a WebSocket over HTTP/2 only on 200"),
            "answer the extended CONNECT with 200 (RFC 8441 section 5)".into(),
        ),
        _ => judge_refusal(
            head,
            body,
            &Hops::guess(head, body),
            sent,
            target,
            follow,
            200,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16) -> Head {
        as_head(StatusCode::from_u16(status).unwrap(), &HeaderMap::new())
    }

    #[test]
    fn alpn_passes_only_on_h2_and_names_the_fix() {
        assert_eq!(alpn(Some(&b"h2"[..])).verdict, Verdict::Pass);
        for picked in [Some(&b"http/1.1"[..]), None] {
            let s = alpn(picked);
            assert_eq!(s.verdict, Verdict::Fail);
            assert!(
                s.detail.contains("over HTTP/1.1, never HTTP/2"),
                "{}",
                s.detail
            );
            let hint = s.hint.unwrap();
            assert!(hint.contains("server.tls.alpn") && hint.contains("nginx has no RFC 8441"));
        }
    }

    #[test]
    fn refusals_are_explained_against_200() {
        let t = Target::parse("wss://h/ws").unwrap();
        let sent = request_text(&t, Some("https://a.b"), &[]);
        assert!(
            sent.text
                .starts_with(":method: CONNECT\n:protocol: websocket\n:scheme: https\n")
        );
        for (status, want) in [
            (
                404,
                "404 Not Found where 200 was expected: nothing is served at /ws",
            ),
            (403, "refused the Origin doctor sent (https://a.b)"),
            (501, "does not take CONNECT with :protocol websocket at /ws"),
            (426, "wants an HTTP/1.1 Upgrade at /ws"),
            (400, "malformed or unsupported"),
        ] {
            let r = judge(&head(status), "", &sent, &t, false);
            assert!(r.what.contains(want), "{status}: {}", r.what);
        }
    }

    #[test]
    fn an_http1_answer_to_the_preface_is_named() {
        let got = describe_answer(
            b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 9\r\n\r\nuse 1.1\n",
        );
        assert!(
            got.contains(
                "answered in HTTP/1.1 (HTTP/1.1 505 HTTP Version Not Supported, saying \"use 1.1\")"
            ),
            "{got}"
        );
        assert_eq!(describe_answer(b""), "the server sent nothing");
    }
}
