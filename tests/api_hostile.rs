//! The publish API against a hostile probe: a body trickled byte by byte (slowloris) and a
//! group listed twice in one publish.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_after_api_body_timeout() {
    let srv = start("[api]\nbody_timeout = \"300ms\"\n").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /api/groups/g/messages HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\na")
        .await
        .unwrap();
    // One byte now and then, as slowloris does; the deadline covers the whole body.
    let writer = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if s.write_all(b"b").await.is_err() {
                break;
            }
        }
        s
    });
    let mut s = writer.await.unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(r.body.contains("api.body_timeout"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_listed_twice_in_one_publish_is_refused() {
    let srv = start("").await;
    let mut ws = connect(srv.addr, "/room/1/").await;
    let r = post(
        srv.addr,
        "/api/publish",
        Some("application/json"),
        br#"{"groups": ["room:1", "room:1"], "data": "x"}"#,
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("twice"), "{}", r.body);
    // Nothing was delivered: the next message the member gets is the next publish.
    assert_eq!(publish(srv.addr, "room:1", "next").await, 1);
    assert_eq!(next_text(&mut ws).await, "next");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_rate_get_429_naming_the_key() {
    let ip = non_loopback_ip();
    let mut cfg = wsgate::config::load_str(
        "t.toml",
        "[server]\nmax_handshakes_per_second_per_ip = 3\n",
        &[],
    )
    .unwrap();
    cfg.server.listen = format!("{}:0", ip);
    let srv = wsgate::app::start(cfg).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = raw(
            srv.addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status == 429 {
            assert!(
                r.body.contains("server.max_handshakes_per_second_per_ip"),
                "{}",
                r.body
            );
            assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    srv.shutdown().await;
}
