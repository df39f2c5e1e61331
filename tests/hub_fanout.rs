//! Publish -> receive over real sockets: isolation, order at scale, slow consumers.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_the_browser_in_the_room_as_text() {
    let srv = start("").await;
    let mut ws = connect(srv.addr, "/room/123/").await;
    eventually("member joined", || srv.member_count("room:123") == 1).await;
    assert_eq!(publish(srv.addr, "room:123", "upload 40%").await, 1);
    assert_eq!(next_text(&mut ws).await, "upload 40%");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_isolated_from_each_other() {
    let srv = start("").await;
    let mut a = connect(srv.addr, "/room/a").await;
    let mut b = connect(srv.addr, "/room/b").await;
    eventually("both joined", || {
        srv.member_count("room:a") == 1 && srv.member_count("room:b") == 1
    })
    .await;
    assert_eq!(publish(srv.addr, "room:a", "for a").await, 1);
    assert_eq!(publish(srv.addr, "room:b", "for b").await, 1);
    assert_eq!(next_text(&mut a).await, "for a");
    assert_eq!(next_text(&mut b).await, "for b");
    // Nothing else is waiting for either of them.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.next())
            .await
            .is_err()
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_messages_are_broadcast_and_echo_to_sender_is_configurable() {
    let srv = start(
        "[[route]]\npath = \"/room/{room}/\"\ngroup = \"room:{room}\"\n\
[[route]]\npath = \"/quiet/{room}\"\ngroup = \"quiet:{room}\"\necho_to_sender = false\n\
[[route]]\npath = \"/listen/{room}\"\ngroup = \"quiet:{room}\"\non_message = \"drop\"\n",
    )
    .await;
    let mut a = connect(srv.addr, "/room/1").await;
    let mut b = connect(srv.addr, "/room/1").await;
    eventually("joined", || srv.member_count("room:1") == 2).await;
    send_text(&mut a, "hi from a").await;
    assert_eq!(next_text(&mut a).await, "hi from a");
    assert_eq!(next_text(&mut b).await, "hi from a");

    let mut q = connect(srv.addr, "/quiet/1").await;
    let mut l = connect(srv.addr, "/listen/1").await;
    eventually("joined", || srv.member_count("quiet:1") == 2).await;
    send_text(&mut l, "listeners cannot talk").await;
    send_text(&mut q, "not to myself").await;
    assert_eq!(next_text(&mut l).await, "not to myself");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), q.next())
            .await
            .is_err(),
        "sender got its own message"
    );
    srv.shutdown().await;
}

/// `server.runtime = "per_core"`: two listening sockets on one port (SO_REUSEPORT), clients
/// spread over both workers, and every publication and client message still reaches every
/// member, in order, across the workers; shutdown closes them all with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_share_the_port_and_deliver_to_every_member_in_order() {
    let srv = start("[server]\nruntime = \"per_core\"\nworkers = 2\n").await;
    assert_eq!(
        listening_sockets(srv.addr.port()),
        2,
        "one listening socket per worker"
    );
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(connect(srv.addr, "/room/cores").await);
    }
    eventually("all joined", || srv.member_count("room:cores") == 40).await;
    for i in 0..50 {
        assert_eq!(publish(srv.addr, "room:cores", &format!("m{i}")).await, 40);
    }
    send_text(&mut clients[7], "from a member").await;
    for c in &mut clients {
        for i in 0..50 {
            assert_eq!(next_text(c).await, format!("m{i}"));
        }
        assert_eq!(next_text(c).await, "from a member");
    }
    let closing = tokio::spawn(srv.shutdown());
    for c in &mut clients {
        match next(c).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    drop(clients);
    assert!(closing.await.unwrap(), "the drain finished in time");
}

/// Sockets listening on `port` (IPv4), from /proc/net/tcp.
fn listening_sockets(port: u16) -> usize {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_members_each_receive_every_one_of_100_publishes_in_order() {
    let srv = start("").await;
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(connect(srv.addr, "/room/big").await);
    }
    eventually("all joined", || srv.member_count("room:big") == 1000).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for i in 0..100 {
                    assert_eq!(next_text(&mut ws).await, format!("msg {i}"));
                }
                ws
            })
        })
        .collect();
    for i in 0..100 {
        assert_eq!(
            publish(srv.addr, "room:big", &format!("msg {i}")).await,
            1000
        );
    }
    for r in readers {
        r.await.expect("every member got all 100 in order");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_1013_while_others_keep_receiving() {
    let srv =
        start("[websocket]\nsend_queue_bytes = 262144\n[api]\nmax_body_bytes = 65536\n").await;
    let mut slow = raw_ws(srv.addr, "/room/s").await;
    let mut fast = connect(srv.addr, "/room/s").await;
    eventually("joined", || srv.member_count("room:s") == 2).await;
    let payload = "x".repeat(60_000);
    let fast_reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match next(&mut fast).await {
                Message::Text(t) if t.as_str() == "done" => return n,
                Message::Text(t) => {
                    assert!(t.starts_with(&format!("{n}:")), "out of order at {n}");
                    n += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    // Publish until the slow member (which never reads) is dropped from the count.
    let mut sent = 0u64;
    let mut dropped = false;
    while sent < 3000 {
        let n = publish(srv.addr, "room:s", &format!("{sent}:{payload}")).await;
        sent += 1;
        if n == 1 {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the slow consumer was never dropped after {sent} messages"
    );
    for _ in 0..20 {
        publish(srv.addr, "room:s", &format!("{sent}:{payload}")).await;
        sent += 1;
    }
    publish(srv.addr, "room:s", "done").await;
    assert_eq!(
        fast_reader.await.unwrap(),
        sent,
        "the fast member got every message"
    );
    // The slow one finds a 1013 after the frames that were already in flight.
    let (code, reason) = read_until_close(&mut slow).await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    let _ = slow.shutdown().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_the_101_is_not_missed() {
    let srv = start("").await;
    for i in 0..20 {
        let mut s = raw_ws(srv.addr, &format!("/room/early{i}")).await;
        // No waiting: the member must already be in the group when the 101 arrives.
        assert_eq!(srv.member_count(&format!("room:early{i}")), 1);
        assert_eq!(
            publish(srv.addr, &format!("room:early{i}"), "first").await,
            1
        );
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        while !buf.windows(5).any(|w| w == b"first") {
            let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
                .await
                .expect("the message arrives")
                .unwrap();
            assert!(n > 0, "closed before the message");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    srv.shutdown().await;
}

/// RFC 6455 §5.5.1: nothing may follow a Close. On shutdown the Close is queued behind messages
/// still waiting in the member's queue (shutdown delivers them first), not ahead of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_queued_messages_go_out_before_the_close_and_nothing_after_it() {
    let srv = start(
        "[websocket]\nsend_queue_bytes = 67108864\n[api]\nmax_body_bytes = 65536\n[server]\nshutdown_grace = \"20s\"\n",
    )
    .await;
    // A tiny receive window and no reading: the socket buffers fill and the rest of the
    // messages wait in the member's queue when shutdown starts.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(srv.addr).await.unwrap();
    s.write_all(&upgrade_request("/room/q", "")).await.unwrap();
    assert_eq!(read_reply(&mut s).await.status, 101);
    eventually("joined", || srv.member_count("room:q") == 1).await;
    let payload = "y".repeat(60_000);
    const N: usize = 150;
    for i in 0..N {
        assert_eq!(
            publish(srv.addr, "room:q", &format!("{i:05}{payload}")).await,
            1
        );
    }
    let shared = srv.handle();
    let stopping = tokio::spawn(srv.shutdown());
    eventually("shutdown started", || shared.open_connections() == 1).await;

    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut texts = 0usize;
    let mut close = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(h) = wsgate::ws::frame::parse_header(&buf) {
            let total = h.size + h.len as usize;
            if buf.len() < total {
                break;
            }
            assert!(
                close.is_none(),
                "a frame (opcode {:#x}) came after the Close",
                h.opcode_raw
            );
            if h.opcode_raw == 0x8 {
                let p = &buf[h.size..total];
                close = Some(u16::from_be_bytes([p[0], p[1]]));
                s.write_all(&client_frame(0x8, &1001u16.to_be_bytes()))
                    .await
                    .unwrap();
            } else {
                assert_eq!(h.opcode_raw, 0x1);
                let n: usize = std::str::from_utf8(&buf[h.size..h.size + 5])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(n, texts, "messages in order, none lost");
                texts += 1;
            }
            buf.drain(..total);
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("the server finishes within the wait")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(close, Some(1001), "a Close 1001 ends the stream");
    assert_eq!(texts, N, "every queued message went out before the Close");
    assert!(stopping.await.unwrap(), "shutdown finished cleanly");
}
