//! Close codes for bad input and dead peers: 1009, 1007, 1002, pong timeout, shutdown 1001.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_closed_with_1009() {
    let srv = start("[websocket]\nmax_message_bytes = 1000\n").await;
    let mut s = raw_ws(srv.addr, "/ws/echo").await;
    s.write_all(&client_frame(2, &[0u8; 1001])).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("close frame");
    assert_eq!(code, 1009);
    assert!(reason.contains("1000 byte limit"), "{reason}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_raise_its_own_message_limit() {
    let srv = start("[websocket]\nmax_message_bytes = 100\n[[route]]\npath = \"/big/{x}\"\ngroup = \"big:{x}\"\nmax_message_bytes = 5000\n").await;
    let mut ws = connect(srv.addr, "/big/1").await;
    let long = "y".repeat(4000);
    send_text(&mut ws, &long).await;
    assert_eq!(next_text(&mut ws).await, long);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_is_closed_with_1007() {
    let srv = start("").await;
    let mut s = raw_ws(srv.addr, "/ws/echo").await;
    s.write_all(&client_frame(1, &[b'o', b'k', 0xC3, 0x28]))
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await.expect("close").0, 1007);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_frame_is_a_protocol_error_1002() {
    let srv = start("").await;
    let mut s = raw_ws(srv.addr, "/ws/echo").await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("close");
    assert_eq!(code, 1002);
    assert!(reason.contains("masked"), "{reason}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_pings_is_dropped_after_the_pong_timeout() {
    let srv = start("[websocket]\nping_interval = \"200ms\"\npong_timeout = \"300ms\"\n").await;
    let started = Instant::now();
    let mut s = raw_ws(srv.addr, "/room/p").await;
    // Read (without answering) until the server gives up: a Ping first, then the close.
    let mut saw_ping = false;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let closed_at = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("server acts in time")
            .unwrap_or(0);
        if n == 0 {
            break started.elapsed();
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(h) = wsgate::ws::frame::parse_header(&buf) {
            if buf.len() < h.size + h.len as usize {
                break;
            }
            saw_ping |= h.opcode_raw == 0x9;
            buf.drain(..h.size + h.len as usize);
        }
    };
    assert!(saw_ping, "the server pinged first");
    assert!(
        closed_at >= Duration::from_millis(450),
        "closed too early: {closed_at:?}"
    );
    assert!(
        closed_at < Duration::from_secs(3),
        "closed too late: {closed_at:?}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_pings_stays_connected() {
    let srv = start("[websocket]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n").await;
    let mut ws = connect(srv.addr, "/room/alive").await;
    // tungstenite answers pings while we wait for messages.
    let waited = tokio::time::timeout(Duration::from_millis(900), next(&mut ws)).await;
    assert!(waited.is_err(), "nothing but pings should have arrived");
    assert_eq!(publish(srv.addr, "room:alive", "still here").await, 1);
    assert_eq!(next_text(&mut ws).await, "still here");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_1001_to_every_client() {
    let srv = start("[server]\nshutdown_grace = \"3s\"\n").await;
    let mut socks = Vec::new();
    for i in 0..20 {
        socks.push(raw_ws(srv.addr, &format!("/room/{}", i % 3)).await);
    }
    eventually("all joined", || srv.open_connections() == 20).await;
    let closer = tokio::spawn(srv.shutdown());
    for s in &mut socks {
        let (code, reason) = read_until_close(s).await.expect("close frame");
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        // Answer the close, as a browser would.
        s.write_all(&client_frame(8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
    }
    assert!(
        closer.await.unwrap(),
        "every connection finished within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_our_close_is_dropped_after_close_timeout() {
    let srv =
        start("[websocket]\nclose_timeout = \"300ms\"\n[server]\nshutdown_grace = \"5s\"\n").await;
    let mut s = raw_ws(srv.addr, "/room/mute").await;
    eventually("joined", || srv.open_connections() == 1).await;
    let started = Instant::now();
    let closer = tokio::spawn(srv.shutdown());
    assert_eq!(read_until_close(&mut s).await.expect("close").0, 1001);
    // No answer from us: the server must give up on its own, well before the grace period.
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut rest))
        .await
        .expect("EOF in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    assert!(closer.await.unwrap(), "drained within the grace period");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period() {
    let srv =
        start("[websocket]\nclose_timeout = \"10s\"\n[server]\nshutdown_grace = \"300ms\"\n").await;
    let mut s = raw_ws(srv.addr, "/room/mute").await;
    eventually("joined", || srv.open_connections() == 1).await;
    let started = Instant::now();
    let closer = tokio::spawn(srv.shutdown());
    assert_eq!(read_until_close(&mut s).await.expect("close").0, 1001);
    assert!(
        !closer.await.unwrap(),
        "a silent client outlives a 300ms grace"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
