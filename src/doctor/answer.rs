//! What the answer to the handshake means: the client's checks on a 101 (RFC 6455 section 4.1:
//! Upgrade, Connection, Sec-WebSocket-Accept, subprotocol, extensions), and, for any other
//! answer, the status in plain words with the hop to blame and its fix (426, 400, 200, 401, 403,
//! 404, 405, 502, 503, 504, redirects).
//!
//! Pure judgement over a parsed head and body; the reading and writing is in `upgrade.rs`.

use super::head::{Head, Sent};
use super::hops::Hops;
use super::report::Verdict;
use super::target::Target;

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
    check_negotiation(head, sent)
}

/// Checks what the server chose of what doctor offered (subprotocol, extensions), as a browser
/// does after a 101 or, over HTTP/2, a 200 to the extended CONNECT; `Ok` carries the chosen
/// subprotocol.
///
/// # Errors
/// A subprotocol refused or not offered, or extensions doctor did not offer.
pub fn check_negotiation(head: &Head, sent: &Sent) -> Result<Option<String>, Problem> {
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
pub struct Refusal {
    pub verdict: Verdict,
    /// What happened, first line a summary.
    pub what: String,
    pub fix: String,
    /// Where a redirect leads, when doctor was asked to follow it.
    pub follow: Option<Target>,
}

fn refusal(what: String, fix: String) -> Refusal {
    Refusal {
        verdict: Verdict::Fail,
        what,
        fix,
        follow: None,
    }
}

/// True when a body talks about the upgrade headers (the wording of wsgate, Spring, gorilla,
/// Tornado and ws when they are missing).
fn mentions_upgrade(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("upgrade") || b.contains("connection") || b.contains("websocket")
}

/// Explains an answer other than 101: the status in plain words, the hop to blame and its fix.
pub fn judge_refusal(
    head: &Head,
    body: &str,
    hops: &Hops,
    sent: &Sent,
    target: &Target,
    follow: bool,
    wanted: u16,
) -> Refusal {
    let status = head.status;
    let line = format!("{status} {}", head.reason.trim());
    let expected = format!("{line} where {wanted} was expected");
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
                r.follow = Some(next);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::head::parse_head;

    fn sent(protocols: &[&str], origin: Option<&str>) -> Sent {
        Sent::for_test(protocols, origin)
    }

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

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
    fn refusals_are_explained() {
        let t = Target::parse("ws://h/room/x/").unwrap();
        let s = sent(&[], None);
        let judge = |raw: &str, body: &str, follow: bool| {
            let h = head(raw);
            judge_refusal(&h, body, &Hops::guess(&h, body), &s, &t, follow, 101)
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
        assert!(r.follow.is_none());
        let r = judge("HTTP/1.1 302 Found\r\nLocation: /other\r\n\r\n", "", true);
        assert_eq!(r.follow.map(|n| n.url).as_deref(), Some("ws://h/other"));
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
