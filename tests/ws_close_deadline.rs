//! A Close that is due ends the connection even when the client never reads: the client that
//! stops reading (small receive buffer, group flooded through the API) is dropped within
//! `close_timeout` of its Close being due, after a 1013 "slow consumer" and after a pong timeout
//! alike, and its connection slot comes back.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The hostile probe's settings: pings, pong timeout and close timeout at 2 s, and room for two
/// connections only.
const PROBE: &str = "[server]\nmax_connections = 2\n[websocket]\nping_interval = \"2s\"\npong_timeout = \"2s\"\nclose_timeout = \"2s\"\n";

/// A client with a 4 KiB receive buffer that completes the handshake and then never reads.
async fn stalled_client(srv: &wsgate::app::Running, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(srv.addr).await.unwrap();
    s.write_all(&upgrade_request(path, "")).await.unwrap();
    assert_eq!(read_reply(&mut s).await.status, 101);
    s
}

/// Publishes `n` messages of 60 KB to `group` through the API; returns the last answer's
/// recipient count.
async fn flood(srv: &wsgate::app::Running, group: &str, n: usize) -> u64 {
    let payload = "z".repeat(60_000);
    let mut last = 0;
    for i in 0..n {
        last = publish(srv.addr, group, &format!("{i:05}{payload}")).await;
    }
    last
}

/// The value of a counter on `/metrics`.
async fn counter(srv: &wsgate::app::Running, name: &str) -> u64 {
    let r = raw(
        srv.addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Waits until the server holds no WebSocket; returns how long that took.
async fn slots_freed(srv: &wsgate::app::Running, since: Instant) -> Duration {
    eventually("every stalled client dropped and its slot freed", || {
        srv.open_connections() == 0
    })
    .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_closed_as_slow_consumers_give_their_slots_back() {
    let srv = start(PROBE).await;
    let _a = stalled_client(&srv, "/room/flood").await;
    let _b = stalled_client(&srv, "/room/flood").await;
    eventually("both joined", || srv.member_count("room:flood") == 2).await;
    // Full: a third client is refused while the two hold their slots.
    assert_eq!(
        raw(srv.addr, &upgrade_request("/room/other", ""))
            .await
            .status,
        503
    );
    let slow_before = counter(&srv, "wsgate_ws_slow_consumers_total").await;
    // ~6 MB each: past both the 1 MiB queue limit and whatever the kernel buffers, so the
    // 1013 Close cannot be written to either of them.
    let mut due = Instant::now();
    for round in 0..20 {
        if flood(&srv, "room:flood", 10).await == 0 {
            break;
        }
        due = Instant::now();
        assert!(round < 19, "the flood never made them slow consumers");
    }
    let took = slots_freed(&srv, due).await;
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(1500),
        "dropped {took:?} after the 1013 was due; close_timeout is 2 s"
    );
    assert_eq!(
        counter(&srv, "wsgate_ws_slow_consumers_total").await - slow_before,
        2,
        "two slow clients are two slow consumers, however many messages they missed"
    );
    // The slots are back: new clients get in and talk.
    let mut ws = connect(srv.addr, "/room/after").await;
    assert_eq!(publish(srv.addr, "room:after", "welcome").await, 1);
    assert_eq!(next_text(&mut ws).await, "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_past_its_pong_timeout_gives_its_slot_back() {
    // A queue large enough that the flood does not make it a slow consumer: only the pong
    // timeout can end it, and its Close waits behind megabytes it will never read.
    let srv = start(&format!("{PROBE}send_queue_bytes = 67108864\n")).await;
    let _a = stalled_client(&srv, "/room/mute").await;
    eventually("joined", || srv.member_count("room:mute") == 1).await;
    let closed_before = counter(&srv, "wsgate_ws_close_timeouts_total").await;
    assert_eq!(flood(&srv, "room:mute", 100).await, 1, "still a member");
    let flooded = Instant::now();
    // Ping after 2 s of silence, pong timeout 2 s later, then close_timeout 2 s: ~6 s.
    let took = slots_freed(&srv, flooded).await;
    assert!(
        took >= Duration::from_millis(3500) && took <= Duration::from_secs(8),
        "dropped {took:?} after the flood; expected ping_interval + pong_timeout + close_timeout"
    );
    assert!(
        counter(&srv, "wsgate_ws_close_timeouts_total").await > closed_before,
        "the connection ended at its close deadline"
    );
    let mut ws = connect(srv.addr, "/room/after").await;
    assert_eq!(publish(srv.addr, "room:after", "in").await, 1);
    assert_eq!(next_text(&mut ws).await, "in");
}
