//! Publish -> receive over real sockets: isolation, order at scale, slow consumers.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_the_browser_in_the_room_as_text() {
    let srv = start("").await;
    let mut ws = connect(srv.addr, "/room/123/").await;
    eventually("member joined", || {
        srv.shared.hub.member_count("room:123") == 1
    })
    .await;
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
        srv.shared.hub.member_count("room:a") == 1 && srv.shared.hub.member_count("room:b") == 1
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
    eventually("joined", || srv.shared.hub.member_count("room:1") == 2).await;
    send_text(&mut a, "hi from a").await;
    assert_eq!(next_text(&mut a).await, "hi from a");
    assert_eq!(next_text(&mut b).await, "hi from a");

    let mut q = connect(srv.addr, "/quiet/1").await;
    let mut l = connect(srv.addr, "/listen/1").await;
    eventually("joined", || srv.shared.hub.member_count("quiet:1") == 2).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_members_each_receive_every_one_of_100_publishes_in_order() {
    let srv = start("").await;
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(connect(srv.addr, "/room/big").await);
    }
    eventually("all joined", || {
        srv.shared.hub.member_count("room:big") == 1000
    })
    .await;
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
    eventually("joined", || srv.shared.hub.member_count("room:s") == 2).await;
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
        assert_eq!(srv.shared.hub.member_count(&format!("room:early{i}")), 1);
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
