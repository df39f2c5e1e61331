//! HTTP/2 on the listener, end to end over real sockets: h2c with prior knowledge and h2 over
//! TLS (ALPN), the publish API, health, metrics and proxied requests over it, and WebSockets on
//! extended CONNECT (RFC 8441): many on one connection, to hub routes and bridged to an
//! HTTP/1.1 upstream, closes, resets, a stalled stream beside live ones, and the framing cases
//! of the WebSocket codec over an h2 stream.

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use support::h2::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;

struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

/// A self-signed certificate for localhost, written to a fresh directory.
fn pair(name: &str) -> Pair {
    let d = std::env::temp_dir().join(format!("wsgate-h2-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Pair {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}

fn tls_toml(p: &Pair, extra: &str) -> String {
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n{extra}",
        p.cert.display().to_string(),
        p.key.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_health_and_metrics_answer_over_h2c() {
    let srv = start("").await;
    let mut h = h2c(srv.addr).await;
    let r = h.get("/healthz").await;
    assert_eq!(
        (r.status, r.version, r.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "ok\n")
    );

    let mut ws = connect(srv.addr, "/room/h2api").await;
    eventually("joined", || srv.member_count("room:h2api") == 1).await;
    let r = h
        .request(
            Method::POST,
            "/api/groups/room:h2api/messages",
            &[("content-type", "text/plain")],
            Bytes::from_static(b"over h2"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.contains("\"recipients\":1"), "{r:?}");
    assert_eq!(next_text(&mut ws).await, "over h2");

    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("wsgate_ws_handshakes_total"), "{}", r.body);
    // Many requests share the connection, one stream each.
    for _ in 0..20 {
        assert_eq!(h.get("/readyz").await.status, StatusCode::OK);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_chooses_h2_by_default_and_http11_still_works() {
    let p = pair("alpn");
    let srv = start(&tls_toml(&p, "")).await;
    let mut h = h2_tls(srv.addr, &p.der).await;
    let r = h.get("/healthz").await;
    assert_eq!((r.status, r.version), (StatusCode::OK, Version::HTTP_2));
    let tls = tls_connect(srv.addr, &p.der, &[b"h2"]).await;
    let (_, settings) = raw_h2(tls, &h.base).await;
    assert!(
        settings.extended_connect,
        "SETTINGS_ENABLE_CONNECT_PROTOCOL over TLS"
    );
    let s = tls_connect(srv.addr, &p.der, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(s);
    // A client that offers no ALPN at all gets HTTP/1.1.
    let mut s = tls_connect(srv.addr, &p.der, &[]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_without_h2_serves_http11_only() {
    let p = pair("noh2");
    let srv = start(&tls_toml(&p, "alpn = [\"http/1.1\"]\n")).await;
    let s = tls_connect(srv.addr, &p.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_h2_is_proxied_to_the_http11_upstream_with_host_from_authority() {
    let (up, seen) = upstream::echo_http().await;
    let srv = start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n"
    ))
    .await;
    let mut h = h2c(srv.addr).await;
    let r = h
        .request(
            Method::POST,
            "/app/x?y=1",
            &[("content-type", "text/plain"), ("x-custom", "kept")],
            Bytes::from_static(b"payload"),
        )
        .await;
    assert_eq!(
        (r.status, r.version),
        (StatusCode::OK, Version::HTTP_2),
        "{r:?}"
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("POST /app/x?y=1 HTTP/1.1\r\n"), "{head}");
    let authority = format!("127.0.0.1:{}", srv.addr.port());
    // preserve_host (the default) keeps the client's host, which over h2 is :authority.
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("\r\nhost: {authority}\r\n")),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nx-custom: kept\r\n"),
        "{head}"
    );
    assert_eq!(r.body, head, "the upstream's answer is relayed");
    assert_eq!(r.headers.get("x-end-to-end").unwrap(), "kept");
    assert!(r.headers.get("x-resp-hop").is_none());
    srv.shutdown().await;
}

/// `wsgate_ws_opened_total` for `via` over HTTP/2, read over h2 itself.
async fn opened_h2(h: &mut H2, via: &str) -> u64 {
    let m = h.get("/metrics").await.body;
    let want = format!("wsgate_ws_opened_total{{via=\"{via}\",http_version=\"2\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_websockets_share_one_h2c_connection_to_a_hub_route() {
    let srv = start("").await;
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (_, settings) = raw_h2(tcp, &format!("http://{}", srv.addr)).await;
    assert!(
        settings.extended_connect,
        "SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    assert_eq!(
        settings.max_streams, 256,
        "server.http2.max_concurrent_streams"
    );

    let mut h = h2c(srv.addr).await;
    let before = opened_h2(&mut h, "hub").await;
    let mut socks = Vec::new();
    for _ in 0..100 {
        socks.push(h.ws("/room/h2many").await);
    }
    eventually("100 members", || srv.member_count("room:h2many") == 100).await;
    assert_eq!(srv.open_connections(), 100);
    assert!(opened_h2(&mut h, "hub").await >= before + 100);
    // Server to clients: one publish reaches every stream.
    let r = h
        .request(
            Method::POST,
            "/api/groups/room:h2many/messages",
            &[("content-type", "text/plain")],
            Bytes::from_static(b"to all"),
        )
        .await;
    assert!(r.body.contains("\"recipients\":100"), "{r:?}");
    for ws in &mut socks {
        assert_eq!(next_h2_text(ws).await, "to all");
    }
    // Clients to server: the default room route broadcasts what a member sends.
    use futures_util::SinkExt;
    socks[7].send(Message::text("from 7")).await.unwrap();
    for ws in &mut socks {
        assert_eq!(next_h2_text(ws).await, "from 7");
    }
    // Half of them close; the others stay.
    for mut ws in socks.drain(..50) {
        // The server may answer and end the stream (RST_STREAM NO_ERROR, RFC 9113 §8.1) before
        // this flush returns: its Close is still there to read.
        let _ = ws.close(None).await;
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws)).await {
                Ok(Some(Ok(Message::Close(c)))) => {
                    assert_eq!(c.map(|c| u16::from(c.code)), Some(1000));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected the server's Close, got {other:?}"),
            }
        }
    }
    eventually("50 members left", || srv.member_count("room:h2many") == 50).await;
    eventually("50 slots", || srv.open_connections() == 50).await;
    // Shutdown: GOAWAY for the connection, 1001 for every WebSocket still on it.
    let stop = tokio::spawn(async move { srv.shutdown().await });
    for ws in &mut socks {
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws)).await {
                Ok(Some(Ok(Message::Close(c)))) => {
                    assert_eq!(c.map(|c| u16::from(c.code)), Some(1001));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected 1001, got {other:?}"),
            }
        }
    }
    drop(socks);
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap();
}

async fn next_h2_text(ws: &mut H2Ws) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws))
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_frees_its_websocket_and_spares_the_others() {
    let srv = start("").await;
    let base = format!("http://{}", srv.addr);
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (mut send, _) = raw_h2(tcp, &base).await;
    let mut gone = raw_h2_ws(&mut send, &base, "/room/rst").await;
    let mut kept = raw_h2_ws(&mut send, &base, "/room/rst").await;
    eventually("2 members", || srv.member_count("room:rst") == 2).await;
    gone.tx.send_reset(::h2::Reason::CANCEL);
    eventually("the reset one left", || srv.member_count("room:rst") == 1).await;
    eventually("its slot is back", || srv.open_connections() == 1).await;
    assert_eq!(publish(srv.addr, "room:rst", "still here").await, 1);
    assert_eq!(kept.text().await, "still here");
    // A client message on the kept stream still goes round (the route broadcasts).
    kept.send(0x1, b"me too");
    assert_eq!(kept.text().await, "me too");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_websocket_does_not_stall_its_neighbours_on_the_connection() {
    let srv = start("").await;
    let base = format!("http://{}", srv.addr);
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    // Small windows on the client, so the stalled stream fills its own at once.
    let (send, conn) = ::h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(256 * 1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut stalled = raw_h2_ws(&mut send, &base, "/room/stall").await;
    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(raw_h2_ws(&mut send, &base, "/room/stall").await);
    }
    eventually("6 members", || srv.member_count("room:stall") == 6).await;
    // 400 KiB to every member: far past the stalled stream's 16 KiB window, and past the
    // connection's 256 KiB were the stalled stream allowed to hold it.
    let msg = "x".repeat(1024);
    for i in 0..400 {
        let n = srv
            .publish_text("room:stall", &format!("{i:04}{msg}"))
            .await;
        assert!(n >= 5, "publish {i} reached {n}");
    }
    for ws in &mut live {
        for i in 0..400 {
            let t = ws.text().await;
            assert_eq!(&t[..4], format!("{i:04}"), "in order");
        }
    }
    // The stalled one got what its window allowed, no more.
    let mut got = 0;
    while let Some(Ok(d)) = futures_util::FutureExt::now_or_never(stalled.rx.data()).flatten() {
        got += d.len();
    }
    assert!(got <= 16 * 1024, "{got} bytes past a 16 KiB window");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ws_codec_cases_hold_over_an_h2_stream() {
    use tokio::io::AsyncWriteExt;
    let srv = start("[websocket]\nmax_message_bytes = 1024\n").await;
    let mut h = h2c(srv.addr).await;

    // A fragmented message is echoed whole; a Ping gets its Pong with the same payload.
    let mut s = h.raw_ws("/ws/echo").await;
    let mut f = wsgate::ws::frame::encode_masked(
        wsgate::ws::frame::OpCode::Text,
        false,
        b"hel",
        [9, 8, 7, 6],
    );
    f.extend(wsgate::ws::frame::encode_masked(
        wsgate::ws::frame::OpCode::Continuation,
        true,
        b"lo",
        [1, 1, 1, 1],
    ));
    s.write_all(&f).await.unwrap();
    s.write_all(&client_frame(0x9, b"pp")).await.unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(read_frame(&mut s, &mut buf).await.expect("a frame"));
    }
    got.sort();
    assert_eq!(got, vec![(0x1, b"hello".to_vec()), (0xA, b"pp".to_vec())]);

    // Bad UTF-8 in a text message: 1007.
    let mut s = h.raw_ws("/ws/echo").await;
    s.write_all(&client_frame(0x1, &[0xC3, 0x28]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut s).await, Some(1007));

    // Over max_message_bytes: 1009.
    let mut s = h.raw_ws("/ws/echo").await;
    s.write_all(&client_frame(0x2, &[0u8; 2048])).await.unwrap();
    assert_eq!(close_code(&mut s).await, Some(1009));

    // The connection outlived all three.
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_handshakes_are_checked_like_http11_ones() {
    let srv = start("").await;
    let mut h = h2c(srv.addr).await;
    // A plain GET to a WebSocket route over h2 is told about extended CONNECT.
    let r = h.get("/room/x").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
    assert_eq!(r.headers["allow"], "CONNECT");
    assert!(r.body.contains("RFC 8441"), "{}", r.body);
    // No version: 426 saying which.
    let resp = h.connect_ws("/room/x", &[]).await;
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    // Another site's page: 403, as over HTTP/1.1 (the host being :authority).
    let resp = h
        .connect_ws(
            "/room/x",
            &[
                ("sec-websocket-version", "13"),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The page's own origin (same host as :authority) is let in, and the subprotocol is chosen.
    let origin = format!("http://127.0.0.1:{}", srv.addr.port());
    let (_ws, headers) = h.ws_with("/room/x", &[("origin", origin.as_str())]).await;
    assert!(!headers.contains_key("sec-websocket-accept"));
    let srv2 =
        start("[[route]]\npath = \"/v1\"\non_message = \"echo\"\nsubprotocols = [\"wsgate.v1\"]\n")
            .await;
    let mut h2 = h2c(srv2.addr).await;
    let (_ws, headers) = h2
        .ws_with("/v1", &[("sec-websocket-protocol", "other, wsgate.v1")])
        .await;
    assert_eq!(headers["sec-websocket-protocol"], "wsgate.v1");
    srv.shutdown().await;
    srv2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_h2_with_tls() {
    let p = pair("ws");
    let srv = start(&tls_toml(&p, "")).await;
    let mut h = h2_tls(srv.addr, &p.der).await;
    let mut socks = Vec::new();
    for _ in 0..10 {
        socks.push(h.ws("/ws/echo").await);
    }
    use futures_util::SinkExt;
    for (i, ws) in socks.iter_mut().enumerate() {
        ws.send(Message::text(format!("tls {i}"))).await.unwrap();
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        assert_eq!(next_h2_text(ws).await, format!("tls {i}"));
    }
    srv.shutdown().await;
}

fn proxy_config(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[websocket]\necho_path = \"\"\n{extra}\n[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n\
[[route]]\npath_prefix = \"/ws\"\nproxy_pass = \"app\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_h2_websockets_are_bridged_to_an_http11_upstream() {
    use futures_util::SinkExt;
    use std::sync::atomic::Ordering;
    let (up, seen) = upstream::ws_echo(upstream::WsOptions::default()).await;
    let srv = start(&proxy_config(up, "")).await;
    let mut h = h2c(srv.addr).await;
    let before = opened_h2(&mut h, "proxy").await;
    let mut socks = Vec::new();
    for _ in 0..100 {
        socks.push(
            h.ws_with("/ws/echo", &[("sec-websocket-protocol", "chat")])
                .await,
        );
    }
    eventually("100 tunnels", || srv.open_tunnels() == 100).await;
    assert_eq!(seen.connections.load(Ordering::Relaxed), 100);
    assert!(opened_h2(&mut h, "proxy").await >= before + 100);
    {
        let heads = seen.heads.lock().unwrap();
        for head in heads.iter() {
            // HTTP/1.1 GET + Upgrade toward the upstream, with a key wsgate made.
            assert!(head.starts_with("GET /ws/echo HTTP/1.1\r\n"), "{head}");
            assert!(
                header_in(head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
                "{head}"
            );
            let key = header_in(head, "sec-websocket-key").expect("a key");
            assert_eq!(base64_len(key), 16, "{head}");
            assert_eq!(
                header_in(head, "sec-websocket-protocol"),
                Some("chat"),
                "{head}"
            );
        }
        let keys: std::collections::HashSet<_> = heads
            .iter()
            .map(|h| header_in(h, "sec-websocket-key").unwrap().to_string())
            .collect();
        assert_eq!(keys.len(), 100, "a fresh key per handshake");
    }
    for (ws, headers) in &socks {
        let _ = ws;
        assert!(!headers.contains_key("sec-websocket-accept"), "{headers:?}");
        assert!(!headers.contains_key("upgrade"), "{headers:?}");
    }
    for (i, (ws, _)) in socks.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for (i, (ws, _)) in socks.iter_mut().enumerate() {
        assert_eq!(next_h2_text(ws).await, format!("m{i}"));
    }
    // The upstream closes one ("bye": three messages and a Close 1000); the others go on.
    let (ws, _) = &mut socks[3];
    ws.send(Message::text("bye")).await.unwrap();
    for n in 1..=3 {
        assert_eq!(next_h2_text(ws).await, format!("last-{n}"));
    }
    match tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws)).await {
        Ok(Some(Ok(Message::Close(c)))) => assert_eq!(c.map(|c| u16::from(c.code)), Some(1000)),
        other => panic!("expected the upstream's Close, got {other:?}"),
    }
    eventually("99 tunnels", || srv.open_tunnels() == 99).await;
    let (ws, _) = &mut socks[4];
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next_h2_text(ws).await, "after");
    srv.shutdown().await;
}

fn base64_len(k: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(k)
        .map_or(0, |d| d.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_tunnel_gets_injected_pings_and_a_reset_stream_ends_it() {
    use std::sync::atomic::Ordering;
    let (up, seen) = upstream::ws_echo(upstream::WsOptions {
        idle_limit: Some(std::time::Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let srv = start(&proxy_config(
        up,
        "[proxy]\nping_interval = \"100ms\"\npong_timeout = \"100ms\"\n",
    ))
    .await;
    let base = format!("http://{}", srv.addr);
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (mut send, _) = raw_h2(tcp, &base).await;
    let mut ws = raw_h2_ws(&mut send, &base, "/ws/a").await;
    // Silent past the upstream's idle limit: wsgate's Pings keep both sides busy; the client
    // answers its own as any client does.
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut pings = 0;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some((0x9, p))) => {
                pings += 1;
                ws.send(0xA, &p);
            }
            Ok(f) => panic!("unexpected {f:?}"),
        }
    }
    assert!(pings >= 3, "the client side got {pings} pings");
    assert!(
        seen.pings.load(Ordering::Relaxed) >= 3,
        "the upstream was not pinged"
    );
    ws.send(0x1, b"alive");
    assert_eq!(ws.text().await, "alive");
    // A reset from the client ends its tunnel; its neighbour goes on.
    let mut other = raw_h2_ws(&mut send, &base, "/ws/b").await;
    eventually("two tunnels", || srv.open_tunnels() == 2).await;
    ws.tx.send_reset(::h2::Reason::CANCEL);
    eventually("one tunnel left", || srv.open_tunnels() == 1).await;
    other.send(0x1, b"still");
    assert_eq!(other.text().await, "still");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_101_with_a_wrong_accept_is_a_502_over_h2() {
    let (up, _) = upstream::scripted(
        |_| b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n".to_vec(),
        false,
    )
    .await;
    let srv = start(&proxy_config(up, "")).await;
    let mut h = h2c(srv.addr).await;
    let resp = h
        .connect_ws("/ws", &[("sec-websocket-version", "13")])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(srv.open_tunnels(), 0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_websocket_stream_counts_against_the_per_address_handshake_rate() {
    // Loopback is exempt from the per-address limits: listen on another local address.
    let mut cfg = wsgate::config::load_str(
        "t.toml",
        "[server]\nmax_handshakes_per_second_per_ip = 3\n",
        &[],
    )
    .unwrap();
    cfg.server.listen = format!("{}:0", non_loopback_ip());
    let srv = wsgate::app::start(cfg).await.unwrap();
    // The connection takes one token of three, each WebSocket on it one more.
    let mut h = h2c(srv.addr).await;
    let _a = h.ws("/room/1/").await;
    let _b = h.ws("/room/1/").await;
    let resp = h
        .connect_ws("/room/1/", &[("sec-websocket-version", "13")])
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("server.max_handshakes_per_second_per_ip"),
        "{body}"
    );
    // Ordinary requests on the connection are not handshakes.
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    srv.shutdown().await;
}
