//! The handshake matrix over real sockets: every refusal with its exact status, headers and body.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_on_a_room_gets_426_naming_both_headers_and_the_nginx_fix() {
    let srv = start("").await;
    let r = raw(
        srv.addr,
        b"GET /room/123/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    let conn = r.header("connection").unwrap_or_default();
    assert!(
        conn.split(',').any(|t| t.trim() == "Upgrade"),
        "Connection: {conn}"
    );
    assert!(
        r.body
            .contains("no \"Upgrade: websocket\" header and no \"Connection: Upgrade\" header"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("proxy_set_header Upgrade $http_upgrade;"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("proxy_set_header Connection \"upgrade\";"),
        "{}",
        r.body
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_connection_token_names_only_connection() {
    let srv = start("").await;
    let req = b"GET /room/1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw(srv.addr, req).await;
    assert_eq!(r.status, 426);
    assert!(
        r.body.contains("no \"Connection: Upgrade\" header."),
        "{}",
        r.body
    );
    assert!(!r.body.contains("no \"Upgrade: websocket\""), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_style_connection_list_and_mixed_case_are_accepted() {
    let srv = start("").await;
    let req = b"GET /room/1/ HTTP/1.1\r\nHost: t\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw(srv.addr, req).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_gets_405_with_allow_get() {
    let srv = start("").await;
    let r = raw(
        srv.addr,
        b"POST /room/1/ HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    assert!(r.body.contains("this request used POST"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_key_gets_400() {
    let srv = start("").await;
    for key_line in ["Sec-WebSocket-Key: not-base64!\r\n", ""] {
        let req = format!(
            "GET /room/1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key_line}Connection: close\r\n\r\n"
        );
        let r = raw(srv.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("16 random bytes in base64"), "{}", r.body);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_gets_426_with_version_13() {
    let srv = start("").await;
    let req = b"GET /room/1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw(srv.addr, req).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version").as_deref(), Some("13"));
    assert!(
        r.body.contains("asked for Sec-WebSocket-Version: 8"),
        "{}",
        r.body
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_gets_404_listing_the_routes() {
    let srv = start("[[route]]\npath = \"/chat/{id}\"\ngroup = \"chat:{id}\"\n").await;
    let r = raw(
        srv.addr,
        &upgrade_request("/nowhere", "Connection: close\r\n"),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/chat/{id}"), "{}", r.body);
    assert!(r.body.contains("/ws/echo"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431_with_a_sentence() {
    let srv = start("[server]\nmax_header_bytes = 2048\n").await;
    let big = format!("X-Big: {}\r\n", "a".repeat(4000));
    let r = raw(srv.addr, &upgrade_request("/room/1", &big)).await;
    assert_eq!(r.status, 431);
    assert!(r.body.contains("server.max_header_bytes"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_gets_408_after_the_handshake_timeout() {
    let srv = start("[server]\nhandshake_timeout = \"300ms\"\n").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /room/1 HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 408);
    assert!(r.body.contains("server.handshake_timeout"), "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(250));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_maximum_get_503_with_a_body() {
    let srv = start("[server]\nmax_connections = 2\n").await;
    let _a = connect(srv.addr, "/room/x").await;
    let _b = connect(srv.addr, "/room/x").await;
    let r = raw(srv.addr, &upgrade_request("/room/x", "")).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("maximum of 2 WebSocket connections (server.max_connections)"),
        "{}",
        r.body
    );
    drop(_a);
    // The slot is released once the first connection is gone.
    let addr = srv.addr;
    let mut ok = false;
    for _ in 0..200 {
        if raw(addr, &upgrade_request("/room/x", "")).await.status == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "a slot frees up after a client leaves");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_pipelined_with_the_handshake_is_not_lost() {
    let srv = start("").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut bytes = upgrade_request("/ws/echo", "");
    bytes.extend(client_frame(1, b"early bird"));
    s.write_all(&bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.windows(10).any(|w| w == b"early bird") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("echo arrives")
            .unwrap();
        assert!(n > 0, "connection closed before the echo");
        got.extend_from_slice(&buf[..n]);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_is_negotiated_by_route_preference() {
    let srv = start("[[route]]\npath = \"/feed/{id}\"\ngroup = \"feed:{id}\"\nsubprotocols = [\"v2.feed\", \"v1.feed\"]\n").await;
    let r = raw(
        srv.addr,
        &upgrade_request("/feed/1", "Sec-WebSocket-Protocol: v1.feed, v2.feed\r\n"),
    )
    .await;
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-protocol").as_deref(),
        Some("v2.feed")
    );
    let r = raw(
        srv.addr,
        &upgrade_request("/feed/1", "Sec-WebSocket-Protocol: mqtt\r\n"),
    )
    .await;
    assert_eq!(r.status, 101);
    assert_eq!(r.header("sec-websocket-protocol"), None);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_from_the_path_gets_400() {
    let srv = start("").await;
    let long = "a".repeat(300);
    let r = raw(srv.addr, &upgrade_request(&format!("/room/{long}"), "")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("the limit is 255"), "{}", r.body);
    srv.shutdown().await;
}

/// Cross-site WebSocket hijacking: another site's page must not join a room with the visitor's
/// cookies. Pages from listed origins connect, others get 403 naming the key; clients that send
/// no Origin (servers, CLI tools) are not browsers and pass; a route's own list wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_allowed_origins_get_403_naming_the_key() {
    let srv = start(
        "[websocket]\nallowed_origins = [\"https://app.example.com\"]\n\n\
[[route]]\npath = \"/room/{room}/\"\ngroup = \"room:{room}\"\n\n\
[[route]]\npath = \"/embed/{room}\"\ngroup = \"room:{room}\"\nallowed_origins = [\"https://*.partner.net\"]\n",
    )
    .await;
    let a = srv.addr;
    let r = raw(
        a,
        &upgrade_request("/room/1/", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    let r = raw(
        a,
        &upgrade_request("/room/1/", "Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("https://evil.example") && r.body.contains("allowed_origins"),
        "{}",
        r.body
    );
    let r = raw(a, &upgrade_request("/room/1/", "")).await;
    assert_eq!(r.status, 101, "no Origin: not a browser page: {r:?}");
    let r = raw(
        a,
        &upgrade_request("/embed/1", "Origin: https://shop.partner.net\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    let r = raw(
        a,
        &upgrade_request("/embed/1", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "the route's list replaces the default: {r:?}"
    );
    srv.shutdown().await;
}
