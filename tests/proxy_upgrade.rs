//! WebSockets through the proxy against a tiny upstream that, like node `ws`, answers 426 unless
//! it sees the upgrade headers: the story's config works with only `proxy_pass`, idle tunnels
//! outlive the upstream's idle limit thanks to injected pings, and closes carry the right codes
//! without losing bytes.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::upstream::{WsOptions, dead_addr, read_head, scripted, ws_echo};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TCode;

fn story(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n[[upstream]]\nname = \"websocket\"\nservers = [\"{up}\"]\n\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"websocket\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_upstream_works_through_wsgate_with_only_proxy_pass() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    // Without the upgrade headers the upstream answers 426, as in the story.
    let direct = raw(up, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(direct.status, 426);

    let srv = start(&story(up, "")).await;
    let mut ws = connect(srv.addr, "/ws").await;
    send_text(&mut ws, "hello").await;
    assert_eq!(next_text(&mut ws).await, "hello");
    let big = "x".repeat(200_000);
    send_text(&mut ws, &big).await;
    assert_eq!(next_text(&mut ws).await, big);
    ws.close(None).await.unwrap();

    // The upstream got the handshake with canonical header names.
    let head = seen.heads.lock().unwrap()[1].clone();
    assert_has_all(
        &head,
        &[
            "\r\nUpgrade: websocket\r\n",
            "\r\nConnection: Upgrade\r\n",
            "\r\nSec-WebSocket-Key: ",
            "\r\nSec-WebSocket-Version: 13\r\n",
            "\r\nX-Forwarded-For: 127.0.0.1\r\n",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_426_is_relayed_as_it_is() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    let r = raw(
        srv.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 426);
    assert_eq!(r.body, "Upgrade Required");
}

/// A proxy like the story's nginx: forwards the request head without Upgrade and Connection,
/// then pipes bytes both ways.
async fn stripping_proxy(to: std::net::SocketAddr) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_head(&mut c, &mut buf).await else {
                    return;
                };
                let kept: Vec<&str> = head
                    .split("\r\n")
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        !l.starts_with("upgrade:") && !l.starts_with("connection:")
                    })
                    .collect();
                let mut u = tokio::net::TcpStream::connect(to).await.unwrap();
                u.write_all(kept.join("\r\n").as_bytes()).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_upstream_behind_a_stripping_proxy_is_diagnosed_on_the_426() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let strip = stripping_proxy(up).await;
    let srv = start(&story(strip, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 426, "{r:?}");
    assert_eq!(
        r.body, "Upgrade Required",
        "the upstream's body is relayed as it is"
    );
    let why = r.header("x-wsgate-diagnosis").expect("a diagnosis header");
    assert!(why.contains("strips them"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_a_wrong_accept_is_a_502_that_says_so() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n")
                .await;
        }
    });
    let srv = start(&story(up, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("does not match the key"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_retried_on_the_next_server_when_connect_fails() {
    let dead = dead_addr().await;
    let (up, _) = ws_echo(WsOptions::default()).await;
    let cfg = format!(
        "[[upstream]]\nname = \"websocket\"\nservers = [\"{dead}\", \"{up}\"]\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"websocket\"\n"
    );
    let srv = start(&cfg).await;
    for _ in 0..2 {
        let mut ws = connect(srv.addr, "/ws").await;
        send_text(&mut ws, "hi").await;
        assert_eq!(next_text(&mut ws).await, "hi");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pings_keep_a_tunnel_open_past_the_upstream_idle_limit_and_no_one_sees_a_pong() {
    let (up, seen) = ws_echo(WsOptions {
        idle_limit: Some(Duration::from_millis(500)),
        ..WsOptions::default()
    })
    .await;
    let srv = start(&story(
        up,
        "[proxy]\nping_interval = \"100ms\"\npong_timeout = \"100ms\"\n",
    ))
    .await;
    let mut ws = connect(srv.addr, "/ws").await;
    let mut pings = 0;
    // Stay silent for three times the upstream's idle limit, answering pings as any client does.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Pong(p)))) => panic!("client saw an unsolicited pong {p:?}"),
            Ok(other) => panic!(
                "tunnel broke while idle after {pings} pings to the client and {} to the upstream: {other:?}",
                seen.pings.load(Ordering::Relaxed)
            ),
        }
    }
    assert!(pings >= 3, "client got only {pings} pings");
    assert!(
        seen.pings.load(Ordering::Relaxed) >= 3,
        "upstream was not pinged"
    );
    send_text(&mut ws, "still here").await;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), "still here");
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen.pongs.load(Ordering::Relaxed),
        0,
        "upstream saw a pong it never asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_silent_side_is_pinged_and_the_busy_side_is_not_blamed() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(
        up,
        "[proxy]\nping_interval = \"300ms\"\npong_timeout = \"100ms\"\n",
    ))
    .await;
    let mut ws = connect(srv.addr, "/ws").await;
    // Both sides share one heartbeat entry. First the client talks every 40 ms (Pongs, which
    // the upstream does not answer), so only the upstream goes silent: it must be pinged, the
    // client must not be.
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while tokio::time::Instant::now() < until {
        ws.send(Message::Pong(b"busy".to_vec().into()))
            .await
            .unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(40), ws.next()).await {
            panic!("the client got {m:?} while it was the busy side");
        }
    }
    let upstream_pings = seen.pings.load(Ordering::Relaxed);
    assert!(
        upstream_pings >= 2,
        "the silent upstream got {upstream_pings} pings"
    );
    // Then both go quiet, on schedules 150 ms apart: right after the upstream answers a ping,
    // the client speaks once more. The upstream is due first; when its ping is answered, the
    // client has been quiet since before that ping yet is not due for another 150 ms (longer
    // than pong_timeout). That quiet must not pass for a missed pong.
    while seen.pings.load(Ordering::Relaxed) == upstream_pings {
        ws.send(Message::Pong(b"busy".to_vec().into()))
            .await
            .unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(10), ws.next()).await {
            panic!("the client got {m:?} while it was the busy side");
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    ws.send(Message::Pong(b"last word".to_vec().into()))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("tunnel broke after {pings} pings to the client: {other:?}"),
        }
    }
    assert!(pings >= 3, "the quiet client got only {pings} pings");
    send_text(&mut ws, "still here").await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_tunnel_gives_the_client_1014() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    // Raw frames: tungstenite refuses to surface 1014 (it maps it to 1002).
    let mut s = raw_ws(srv.addr, "/ws").await;
    s.write_all(&client_frame(0x1, b"die")).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("a close frame");
    assert_eq!(code, 1014);
    assert!(reason.contains("upstream"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_messages_before_an_upstream_close_all_arrive() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "[proxy]\nping_interval = \"0s\"\n")).await;
    for _ in 0..20 {
        let mut ws = connect(srv.addr, "/ws").await;
        send_text(&mut ws, "bye").await;
        for i in 1..=3 {
            assert_eq!(next_text(&mut ws).await, format!("last-{i}"));
        }
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, TCode::Normal),
            other => panic!("expected close 1000, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_gives_the_upstream_1001_and_shutdown_closes_both_sides() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    // Client vanishes without a Close frame: the tunnel ends (the upstream got 1001).
    let s = raw_ws(srv.addr, "/ws").await;
    drop(s);
    let proxy = srv.handle();
    eventually("tunnel closed after client vanished", || {
        proxy.open_tunnels() == 0
    })
    .await;

    let mut ws = connect(srv.addr, "/ws").await;
    send_text(&mut ws, "hi").await;
    assert_eq!(next_text(&mut ws).await, "hi");
    let stop = tokio::spawn(srv.shutdown());
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, TCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // Finish the closing handshake as a real client does.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);
    assert!(stop.await.unwrap(), "drain finished in time");
    assert_eq!(*seen.closes.lock().unwrap(), vec![1001, 1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_tunnel_with_1001_even_while_pings_flow() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(
        up,
        "[proxy]\nping_interval = \"50ms\"\npong_timeout = \"50ms\"\nidle_timeout = \"400ms\"\n",
    ))
    .await;
    let mut ws = connect(srv.addr, "/ws").await;
    let started = std::time::Instant::now();
    // The client stays silent except for answering pings (tungstenite does that by itself):
    // neither wsgate's pings nor the pongs it swallows count as activity.
    let mut pings = 0;
    let (code, reason) = loop {
        match next_any(&mut ws).await {
            Message::Ping(_) => pings += 1,
            Message::Close(Some(f)) => break (f.code, f.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, TCode::Away);
    assert!(reason.contains("idle_timeout"), "{reason}");
    assert!(pings >= 2, "only {pings} pings before the idle close");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let s = ws;
    let proxy = srv.handle();
    drop(s);
    eventually("tunnel closed", || proxy.open_tunnels() == 0).await;
    assert_eq!(*seen.closes.lock().unwrap(), vec![1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_closes_a_busy_tunnel_with_1001() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "[proxy]\nmax_lifetime = \"300ms\"\n")).await;
    let mut ws = connect(srv.addr, "/ws").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tunnel outlived max_lifetime"
        );
        send_text(&mut ws, "busy").await;
        match next(&mut ws).await {
            Message::Text(_) => {}
            Message::Close(Some(f)) => {
                assert_eq!(f.code, TCode::Away);
                assert!(f.reason.contains("max_lifetime"), "{}", f.reason);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next message of any kind, pings included.
async fn next_any(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message within the wait limit")
        .expect("stream still open")
        .expect("no protocol error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_tunnels_run_for_the_proxy_grace_then_closes_both_with_1001() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "[proxy]\nshutdown_grace = \"300ms\"\n")).await;
    let mut ws = connect(srv.addr, "/ws").await;
    let started = std::time::Instant::now();
    let stop = tokio::spawn(srv.shutdown());
    // During the grace the tunnel still carries messages.
    send_text(&mut ws, "during grace").await;
    assert_eq!(next_text(&mut ws).await, "during grace");
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, TCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the grace"
    );
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);
    assert!(stop.await.unwrap(), "drain finished in time");
    assert_eq!(*seen.closes.lock().unwrap(), vec![1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_and_extensions_pass_through_and_bytes_sent_with_either_handshake_arrive() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    // A first frame pipelined right behind the client's handshake, and a first message that the
    // upstream sends in the same write as its 101.
    let mut req = upgrade_request(
        "/greet",
        "Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: x-test; a=1\r\n",
    );
    req.extend_from_slice(&client_frame(0x1, b"early"));
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&req).await.unwrap();
    // Read the head ourselves: the bytes after it are binary frames.
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 1024];
        let n =
            tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
                .await
                .expect("a head within the wait limit")
                .unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-protocol: chat\r\n"),
        "{head}"
    );
    buf.drain(..end);
    let texts = read_texts(&mut s, &mut buf, 2).await;
    assert_eq!(texts, vec!["hello", "early"]);
    let head = seen.heads.lock().unwrap()[0].clone();
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: chat, superchat\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nSec-WebSocket-Extensions: x-test; a=1\r\n"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_max_connections() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "[server]\nmax_connections = 2\n")).await;
    let _a = connect(srv.addr, "/ws").await;
    let _b = connect(srv.addr, "/ws").await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("server.max_connections"), "{}", r.body);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_answering_pings_gives_the_client_1014() {
    let (up, seen) = ws_echo(WsOptions {
        ignore_pings: true,
        ..WsOptions::default()
    })
    .await;
    let srv = start(&story(
        up,
        "[proxy]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n",
    ))
    .await;
    let mut s = raw_ws(srv.addr, "/ws").await;
    // A raw client that answers wsgate's pings, so only the upstream side goes quiet.
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    let (code, reason) = 'outer: loop {
        while let Some(h) = wsgate::ws::frame::parse_header(&buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            let payload = buf[h.size..total].to_vec();
            buf.drain(..total);
            match h.opcode_raw {
                0x9 => s.write_all(&client_frame(0xA, &payload)).await.unwrap(),
                0x8 => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    break 'outer (code, String::from_utf8_lossy(&payload[2..]).to_string());
                }
                op => panic!("unexpected opcode {op}"),
            }
        }
        let n =
            tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
                .await
                .expect("a close within the wait limit")
                .unwrap();
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(code, 1014);
    assert!(
        reason.contains("upstream stopped answering pings"),
        "{reason}"
    );
    assert!(seen.pings.load(Ordering::Relaxed) >= 1);
}

// --- The fast path: a first-request upgrade handled without hyper on either side. Its answers
// are written by wsgate itself, so they carry no `date` field (hyper adds one to every response)
// and keep the upstream's spelling of field names (hyper writes them lower-case); the tests tell
// the two paths apart by that.

fn assert_fast(r: &Reply) {
    assert!(
        r.header("date").is_none(),
        "answered by hyper, not the fast path:\n{}",
        r.head
    );
}

fn assert_hyper(r: &Reply) {
    assert!(
        r.header("date").is_some(),
        "answered by the fast path, not hyper:\n{}",
        r.head
    );
}

fn answer_101(head: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        support::upstream::accept_for(head)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_sends_canonical_names_and_the_101_as_the_upstream_spelled_it() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"GET /ws?room=1 HTTP/1.1\r\nhost: example.com\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n\
sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-PROTOCOL: chat\r\n\
x-custom-thing: Value Case Kept\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_fast(&r);
    assert!(
        r.head
            .contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        r.head
    );
    let head = seen.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /ws?room=1 HTTP/1.1\r\n"), "{head}");
    assert_has_all(
        &head,
        &[
            "\r\nHost: example.com\r\n",
            "\r\nSec-WebSocket-Version: 13\r\n",
            "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "\r\nSec-WebSocket-Protocol: chat\r\n",
            "\r\nX-Custom-Thing: Value Case Kept\r\n",
            "\r\nConnection: Upgrade\r\n",
            "\r\nUpgrade: websocket\r\n",
        ],
    );
    // The tunnel works.
    s.write_all(&client_frame(0x1, b"fast")).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], &[0x81, 4, b'f', b'a', b's', b't']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_removes_hop_by_hop_fields_both_ways() {
    let (up, seen) = scripted(
        |head| {
            answer_101(
                head,
                "Connection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End-To-End: kept\r\n",
            )
        },
        false,
    )
    .await;
    let srv = start(&story(up, "")).await;
    let r = raw(
        srv.addr,
        &upgrade_request(
            "/ws",
            "Connection: X-Foo, x-bar\r\nX-Foo: drop-me\r\nX-Bar: drop-me-too\r\nKeep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nCookie: a=b\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_fast(&r);
    let head = seen.heads.lock().unwrap()[0].clone();
    let lower = head.to_ascii_lowercase();
    for gone in [
        "x-foo:",
        "x-bar:",
        "keep-alive:",
        "proxy-connection:",
        "te:",
        "proxy-authorization:",
    ] {
        assert!(
            !lower.contains(&format!("\r\n{gone}")),
            "{gone} reached the upstream:\n{head}"
        );
    }
    assert_eq!(lower.matches("\r\nconnection:").count(), 1, "{head}");
    assert_eq!(lower.matches("\r\nupgrade:").count(), 1, "{head}");
    assert!(head.contains("\r\nConnection: Upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nCookie: a=b\r\n"), "{head}");
    // The 101 lost the upstream's hop-by-hop fields and says Upgrade itself.
    assert_eq!(r.header("x-end-to-end").as_deref(), Some("kept"));
    assert!(r.header("x-resp-hop").is_none(), "{}", r.head);
    assert!(r.header("keep-alive").is_none(), "{}", r.head);
    assert_eq!(r.header("connection").as_deref(), Some("Upgrade"));
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_replaces_forwarding_fields_from_an_untrusted_client() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    let r = raw(
        srv.addr,
        &upgrade_request(
            "/ws",
            "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_fast(&r);
    let head = seen.heads.lock().unwrap()[0].clone();
    assert_has_all(
        &head,
        &[
            "\r\nHost: test\r\n",
            "\r\nX-Forwarded-For: 127.0.0.1\r\n",
            "\r\nX-Forwarded-Proto: http\r\n",
            "\r\nX-Forwarded-Host: test\r\n",
            "\r\nForwarded: for=127.0.0.1;host=test;proto=http\r\n",
        ],
    );
    assert!(
        !head.contains("6.6.6.6") && !head.contains("evil"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_appends_to_forwarding_fields_from_a_trusted_proxy() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(
        up,
        "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\npreserve_host = false\n",
    ))
    .await;
    let r = raw(
        srv.addr,
        &upgrade_request(
            "/ws",
            "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nForwarded: for=198.51.100.1;proto=https\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_fast(&r);
    let head = seen.heads.lock().unwrap()[0].clone();
    for want in [
        format!("\r\nHost: {up}\r\n"),
        "\r\nX-Forwarded-For: 198.51.100.1, 127.0.0.1\r\n".into(),
        "\r\nX-Forwarded-Proto: https\r\n".into(),
        "\r\nX-Forwarded-Host: test\r\n".into(),
        "\r\nForwarded: for=198.51.100.1;proto=https, for=127.0.0.1;host=test;proto=http\r\n"
            .into(),
    ] {
        assert!(head.contains(&want), "{want:?} missing in:\n{head}");
    }
    assert_eq!(head.matches("X-Forwarded-Proto").count(), 1, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_relays_a_426_with_its_body_and_the_diagnosis() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let strip = stripping_proxy(up).await;
    let srv = start(&story(strip, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 426, "{r:?}");
    assert_fast(&r);
    assert_eq!(r.body, "Upgrade Required");
    assert_eq!(r.header("content-length").as_deref(), Some("16"));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let why = r.header("x-wsgate-diagnosis").expect("a diagnosis header");
    assert!(why.contains("strips them"), "{why}");
}

/// Decodes a chunked body (the test side of re-framing).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("a chunk-size line");
        let n = usize::from_str_radix(size, 16).expect("hex size");
        if n == 0 {
            assert_eq!(rest, "\r\n", "the body ends with the last chunk");
            return out;
        }
        out.push_str(&rest[..n]);
        assert_eq!(&rest[n..n + 2], "\r\n");
        s = &rest[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_relays_chunked_and_close_delimited_bodies() {
    let (up, _) = scripted(
        |_| {
            b"HTTP/1.1 404 Not Here\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
4\r\nno s\r\n9;ext=1\r\nuch route\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec()
        },
        false,
    )
    .await;
    let srv = start(&story(up, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_fast(&r);
    assert!(
        r.head.starts_with("HTTP/1.1 404 Not Here\r\n"),
        "{}",
        r.head
    );
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(dechunk(&r.body), "no such route");

    let (up, _) = scripted(
        |_| b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
        true,
    )
    .await;
    let srv = start(&story(up, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_fast(&r);
    assert!(r.header("content-length").is_none(), "{}", r.head);
    assert_eq!(r.body, "until the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_a_wrong_accept_with_a_502_that_says_so() {
    let (up, _) = scripted(
        |_| b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n".to_vec(),
        false,
    )
    .await;
    let srv = start(&story(up, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_fast(&r);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(
        r.body
            .starts_with("502 Bad Gateway: upstream \"websocket\" server "),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("\"wrong\" does not match the key"),
        "{}",
        r.body
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string()),
        "a complete response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_a_refused_connect_with_a_502_naming_the_server() {
    let dead = dead_addr().await;
    let srv = start(&story(dead, "")).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_fast(&r);
    assert!(
        r.body.contains(&format!(
            "cannot connect to upstream \"websocket\" server {dead}"
        )),
        "{}",
        r.body
    );
    assert!(r.body.contains("refused"), "the OS error: {}", r.body);
    assert!(r.body.contains("is the server running"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_a_silent_upstream_with_a_504() {
    let up = support::upstream::silent().await;
    let cfg = format!(
        "[[upstream]]\nname = \"websocket\"\nservers = [\"{up}\"]\nread_timeout = \"200ms\"\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"websocket\"\n"
    );
    let srv = start(&cfg).await;
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_fast(&r);
    assert!(r.body.contains("read_timeout"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_passes_a_pipelined_frame_and_one_sent_with_the_101() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    let mut req = upgrade_request("/greet", "");
    req.extend_from_slice(&client_frame(0x1, b"early"));
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&req).await.unwrap();
    let (r, mut buf) = read_head_and_rest(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_fast(&r);
    let texts = read_texts(&mut s, &mut buf, 2).await;
    assert_eq!(texts, vec!["hello", "early"]);
    assert_eq!(seen.heads.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_as_the_second_request_of_a_connection_goes_through_hyper_and_works() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let cfg = format!(
        "[[upstream]]\nname = \"websocket\"\nservers = [\"{up}\"]\n[[route]]\npath_prefix = \"/ws\"\nproxy_pass = \"websocket\"\n"
    );
    let srv = start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let mut req = upgrade_request("/ws", "x-custom-thing: 1\r\n");
    req.extend_from_slice(&client_frame(0x1, b"second"));
    s.write_all(&req).await.unwrap();
    let (r, mut buf) = read_head_and_rest(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_hyper(&r);
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    while buf.len() < 8 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&buf[..8], b"\x81\x06second");
    // The hyper path writes the same upstream head as the fast path.
    let head = seen.heads.lock().unwrap()[0].clone();
    assert_has_all(
        &head,
        &[
            "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "\r\nX-Custom-Thing: 1\r\n",
            "\r\nConnection: Upgrade\r\n",
            "\r\nUpgrade: websocket\r\n",
            "\r\nX-Forwarded-For: 127.0.0.1\r\n",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_426_to_a_second_request_upgrade_is_relayed_by_hyper_with_its_body() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let strip = stripping_proxy(up).await;
    let (chunky, _) = scripted(
        |_| b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec(),
        false,
    )
    .await;
    let cfg = format!(
        "[[upstream]]\nname = \"strip\"\nservers = [\"{strip}\"]\n[[upstream]]\nname = \"chunky\"\nservers = [\"{chunky}\"]\n\
[[route]]\npath_prefix = \"/ws\"\nproxy_pass = \"strip\"\n[[route]]\npath_prefix = \"/chunky\"\nproxy_pass = \"chunky\"\n"
    );
    let srv = start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.status, 200);
    s.write_all(&upgrade_request("/ws", "")).await.unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 426, "{r:?}");
    assert_hyper(&r);
    assert_eq!(r.body, "Upgrade Required");
    assert!(
        r.header("x-wsgate-diagnosis")
            .is_some_and(|d| d.contains("strips them")),
        "{}",
        r.head
    );
    // The same connection still serves requests, and a chunked body comes through whole.
    s.write_all(&upgrade_request("/chunky", "Connection: close\r\n"))
        .await
        .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 426, "{r:?}");
    assert_hyper(&r);
    assert_eq!(dechunk(&r.body), "abcde");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_more_fields_than_the_fast_path_takes_goes_through_hyper() {
    let (up, seen) = ws_echo(WsOptions::default()).await;
    let srv = start(&story(up, "")).await;
    let extra: String = (0..60).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let r = raw(srv.addr, &upgrade_request("/ws", &extra)).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_hyper(&r);
    let head = seen.heads.lock().unwrap()[0].clone();
    for i in 0..60 {
        assert!(
            head.contains(&format!("\r\nX-Field-{i}: {i}\r\n")),
            "{head}"
        );
    }
}
