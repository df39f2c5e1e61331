//! Limits per address and per connection, hit and reported: open connections per IP, inbound
//! messages and bytes per second, memory held for partial messages, every request head of a
//! keep-alive connection.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsgate::metrics::METRICS;

/// Starts wsgate with `toml` on this machine's non-loopback address (loopback is exempt from
/// the per-address limits).
async fn start_outside(toml: &str) -> wsgate::app::Running {
    let mut cfg = wsgate::config::load_str("t.toml", toml, &[]).unwrap();
    cfg.server.listen = format!("{}:0", non_loopback_ip());
    wsgate::app::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_past_max_connections_per_ip_get_429_naming_the_key() {
    let srv = start_outside("[server]\nmax_connections_per_ip = 2\n").await;
    let refused_before = METRICS.per_ip_refused.get();
    // A hub WebSocket holds its place for its whole life, not only during its handshake.
    let ws = raw_ws(srv.addr, "/room/1/").await;
    let mut http = TcpStream::connect(srv.addr).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut http).await.status, 200);

    let r = raw(
        srv.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.body.contains("server.max_connections_per_ip"),
        "{}",
        r.body
    );
    assert!(r.body.contains("2 open connections"), "{}", r.body);
    assert!(METRICS.per_ip_refused.get() > refused_before);

    // Closing the WebSocket gives its place back.
    drop(ws);
    let mut got = 0;
    for _ in 0..100 {
        got = raw(
            srv.addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .status;
        if got == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 200, "the closed WebSocket's place came back");
    drop(http);
    srv.shutdown().await;
}
