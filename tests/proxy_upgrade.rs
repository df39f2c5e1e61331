//! WebSockets through the proxy against a tiny upstream that, like node `ws`, answers 426 unless
//! it sees the upgrade headers: the story's config works with only `proxy_pass`, idle tunnels
//! outlive the upstream's idle limit thanks to injected pings, and closes carry the right codes
//! without losing bytes.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::upstream::{WsOptions, dead_addr, read_head, ws_echo};
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
    for want in [
        "\r\nUpgrade: websocket\r\n",
        "\r\nConnection: Upgrade\r\n",
        "\r\nSec-WebSocket-Key: ",
        "\r\nSec-WebSocket-Version: 13\r\n",
        "\r\nX-Forwarded-For: 127.0.0.1\r\n",
    ] {
        assert!(head.contains(want), "{want:?} missing in:\n{head}");
    }
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
    let proxy = srv.shared.proxy.clone();
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
    let proxy = srv.shared.proxy.clone();
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
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while texts.len() < 2 {
        while let Some(h) = wsgate::ws::frame::parse_header(&buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            texts.push(String::from_utf8_lossy(&buf[h.size..total]).to_string());
            buf.drain(..total);
        }
        if texts.len() >= 2 {
            break;
        }
        let mut chunk = [0u8; 1024];
        let n =
            tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
                .await
                .expect("frames within the wait limit")
                .unwrap();
        assert!(n > 0, "closed early; got {texts:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
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
