//! Limits per address and per connection, hit and reported: open connections per IP, inbound
//! messages and bytes per second, memory held for partial messages, every request head of a
//! keep-alive connection.

mod support;

use std::time::Duration;

use support::upstream::{WsOptions, ws_echo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A connection that went quiet gives its frame decoder and rate buckets back when a Ping is due
/// (an idle connection holds neither): a message split around that moment still arrives whole,
/// and afterwards the next messages are read and limited as before. One raw client, which gets its
/// own messages back and answers every Ping at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_going_idle_a_connection_reads_and_limits_its_messages_as_before() {
    use wsgate::ws::frame::{OpCode, encode_masked};
    let srv = start(
        "[websocket]\nping_interval = \"200ms\"\npong_timeout = \"300ms\"\nmax_messages_per_second = 10\n",
    )
    .await;
    let mut s = raw_ws(srv.addr, "/room/quiet/").await;
    // Half a message, then silence past ping_interval: the half is kept through the release.
    s.write_all(&encode_masked(OpCode::Text, false, b"par", [9, 8, 7, 6]))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut s).await, (0x9, Vec::new()), "a Ping");
    s.write_all(&client_frame(0xA, b"")).await.unwrap();
    s.write_all(&encode_masked(
        OpCode::Continuation,
        true,
        b"tial",
        [1, 2, 3, 4],
    ))
    .await
    .unwrap();
    assert_eq!(next_text_answering_pings(&mut s).await, "partial");
    // Silent again, between messages: decoder and buckets go, and come back full.
    assert_eq!(next_frame(&mut s).await, (0x9, Vec::new()), "a Ping");
    s.write_all(&client_frame(0xA, b"")).await.unwrap();
    s.write_all(&texts(0..10)).await.unwrap();
    for i in 0..10 {
        assert_eq!(next_text_answering_pings(&mut s).await, format!("m{i}"));
    }
    s.write_all(&texts(10..30)).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("a Close");
    assert_eq!(code, 1008, "{reason}");
    srv.shutdown().await;
}

/// Client text frames "m{i}" for each i of `range`, back to back.
fn texts(range: std::ops::Range<u32>) -> Vec<u8> {
    range
        .flat_map(|i| client_frame(1, format!("m{i}").as_bytes()))
        .collect()
}

/// The next server frame (small, unmasked) as (opcode, payload), within 3 s.
async fn next_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.unwrap();
        let len = usize::from(head[1] & 0x7f);
        assert!(len < 126, "a small frame");
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, payload)
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .expect("a frame within 3 s")
}

/// The next text message, answering the Pings that come first.
async fn next_text_answering_pings(s: &mut TcpStream) -> String {
    loop {
        match next_frame(s).await {
            (0x9, _) => s.write_all(&client_frame(0xA, b"")).await.unwrap(),
            (0x1, text) => return String::from_utf8(text).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_max_messages_per_second_is_closed_with_1008_naming_the_key() {
    let srv = start("[websocket]\nmax_messages_per_second = 10\n").await;
    let closes_before = METRICS.inbound_rate_closes.get();
    let mut listener = connect(srv.addr, "/room/r/").await;
    let mut s = raw_ws(srv.addr, "/room/r/").await;
    // Ten messages are the burst the bucket holds: they pass.
    s.write_all(&texts(0..10)).await.unwrap();
    for i in 0..10 {
        assert_eq!(next_text(&mut listener).await, format!("m{i}"));
    }
    // Twenty more at once: the eleventh has no token left.
    s.write_all(&texts(10..30)).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("a Close");
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.contains("websocket.max_messages_per_second"),
        "{reason}"
    );
    assert!(METRICS.inbound_rate_closes.get() > closes_before);
    // Nothing past the limit was published: the next message the listener gets is a publish.
    assert_eq!(publish(srv.addr, "room:r", "after").await, 1);
    assert_eq!(next_text(&mut listener).await, "after");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_max_bytes_per_second_is_closed_with_1008_naming_the_key() {
    let srv = start("[websocket]\nmax_bytes_per_second = 2048\nmax_message_bytes = 1024\n").await;
    let mut s = raw_ws(srv.addr, "/room/b/").await;
    // The bucket holds at least one read's worth (64 KiB); 100 KB at once empties it.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.extend(client_frame(2, &[0u8; 1000]));
    }
    // The server may close while this is still being written.
    let _ = s.write_all(&flood).await;
    let (code, reason) = read_until_close(&mut s).await.expect("a Close");
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.contains("websocket.max_bytes_per_second"),
        "{reason}"
    );
    // The echo route is a conformance tool: not limited.
    let mut e = raw_ws(srv.addr, "/ws/echo").await;
    e.write_all(&flood[..flood.len() / 2]).await.unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    tokio::time::timeout(WAIT, async {
        while got < 50 * 1004 {
            let n = e.read(&mut buf).await.unwrap();
            assert!(n > 0, "the echo route closed");
            got += n;
        }
    })
    .await
    .expect("every echo within the wait limit");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_past_max_partial_bytes_total_close_the_one_that_passes_it_with_1009() {
    let srv = start(
        "[websocket]\nmax_message_bytes = 200000\nmax_partial_bytes_total = 262144\nmax_bytes_per_second = 0\n",
    )
    .await;
    let mut listener = connect(srv.addr, "/room/p/").await;
    let whole = wsgate::ws::frame::encode_masked(
        wsgate::ws::frame::OpCode::Binary,
        true,
        &[5u8; 200_000],
        [1, 2, 3, 4],
    );
    // A holds 150 KB of its 200 KB message; B's 100 KB would pass the 256 KiB total.
    let mut a = raw_ws(srv.addr, "/room/p/").await;
    a.write_all(&whole[..150_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = raw_ws(srv.addr, "/room/p/").await;
    let _ = b.write_all(&whole[..100_000]).await;
    let (code, reason) = read_until_close(&mut b).await.expect("a Close");
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains("websocket.max_partial_bytes_total"),
        "{reason}"
    );
    // A is unharmed: its message completes and is delivered.
    a.write_all(&whole[150_000..]).await.unwrap();
    match next(&mut listener).await {
        tokio_tungstenite::tungstenite::Message::Binary(m) => assert_eq!(m.len(), 200_000),
        other => panic!("{other:?}"),
    }
    srv.shutdown().await;
}

/// Sends `bytes` on one connection and reads everything until the server closes it.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(bytes).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer[i + 9..i + 12].parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_request_with_a_20kb_header_gets_431_not_101() {
    let srv = start("").await;
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    req.extend(upgrade_request("/room/1/", &big));
    let answer = exchange(srv.addr, &req).await;
    assert_eq!(statuses(&answer), vec![200, 431], "{answer}");
    assert!(answer.contains("server.max_header_bytes"), "{answer}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_keep_alive_connection_gets_its_head_checked_with_a_sentence() {
    let srv = start("").await;
    let ok = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    // (second request, status, words the answer must hold)
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
            431,
            "server.max_headers",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".into(),
            400,
            "NUL byte",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n".into(),
            400,
            "folded",
        ),
        (
            "GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n".into(),
            505,
            "HTTP/1.2",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(70 * 1024)),
            414,
            "server.max_header_bytes",
        ),
        (
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            400,
            "smuggle",
        ),
    ];
    for (second, status, words) in &cases {
        // Each bad head also alone, as a first request (read by wsgate before hyper).
        let alone = exchange(srv.addr, second.as_bytes()).await;
        assert_eq!(statuses(&alone), vec![*status], "{alone}");
        assert!(alone.contains(words), "{words}: {alone}");
        let answer = exchange(srv.addr, format!("{ok}{second}").as_bytes()).await;
        assert_eq!(statuses(&answer), vec![200, *status], "{answer}");
        assert!(answer.contains(words), "{words}: {answer}");
    }
    // Bodies are followed to find the next head: a fixed length, then a chunked one.
    let publish = "POST /api/groups/g/messages HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n";
    let seq = format!(
        "{publish}Content-Length: 5\r\n\r\nhello{publish}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{}",
        cases[1].0
    );
    let answer = exchange(srv.addr, seq.as_bytes()).await;
    assert_eq!(statuses(&answer), vec![200, 200, 400], "{answer}");
    assert!(answer.contains("NUL byte"), "{answer}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_answered_without_switching_the_next_head_is_checked_too() {
    let srv = start("").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // An origin the default policy refuses: 403, and the connection keeps serving HTTP/1.1.
    s.write_all(&upgrade_request(
        "/room/1/",
        "Origin: https://elsewhere.example\r\n",
    ))
    .await
    .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 403, "{r:?}");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.status, 200);
    // Then another refused upgrade, and a head over server.max_headers: refused by wsgate
    // with its sentence, not by hyper with an empty body.
    s.write_all(&upgrade_request(
        "/room/1/",
        "Origin: https://elsewhere.example\r\n",
    ))
    .await
    .unwrap();
    assert_eq!(read_reply(&mut s).await.status, 403);
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.contains("server.max_headers"), "{r:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_tunnels_hold_their_place_under_max_connections_per_ip() {
    let (up, _) = ws_echo(WsOptions::default()).await;
    let srv = start_outside(&format!(
        "[server]\nmax_connections_per_ip = 2\n[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n\
[[route]]\npath_prefix = \"/ws\"\nproxy_pass = \"app\"\n"
    ))
    .await;
    // One tunnel on the fast path (the connection's first request), one through hyper (after a
    // first request on the same connection).
    let mut fast = TcpStream::connect(srv.addr).await.unwrap();
    fast.write_all(&upgrade_request("/ws", "")).await.unwrap();
    assert_eq!(read_reply(&mut fast).await.status, 101);
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut slow).await.status, 200);
    slow.write_all(&upgrade_request("/ws", "")).await.unwrap();
    assert_eq!(read_reply(&mut slow).await.status, 101);
    // Both tunnels are open: a third connection from the same address is refused.
    let third = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let r = raw(srv.addr, third).await;
    assert_eq!(r.status, 429, "{r:?}");
    // Closing one tunnel gives its place back.
    drop(fast);
    let mut got = 0;
    for _ in 0..100 {
        got = raw(srv.addr, third).await.status;
        if got == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 200, "the closed tunnel's place came back");
    drop(slow);
    srv.shutdown().await;
}

/// The value of a counter in a Prometheus text exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_rate_close_is_counted_once_and_not_as_a_protocol_error() {
    // Its own process, so that no other test's closes reach the counters read here.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _child = spawn_wsgate(
        &["serve", "--listen", &listen],
        &[("WSGATE_WEBSOCKET__MAX_MESSAGES_PER_SECOND", "5")],
        port,
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let mut s = raw_ws(addr, "/room/r/").await;
    let mut flood = Vec::new();
    for i in 0..20 {
        flood.extend(client_frame(1, format!("m{i}").as_bytes()));
    }
    s.write_all(&flood).await.unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("a Close");
    assert_eq!(code, 1008, "{reason}");
    let m = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(counter(&m.body, "wsgate_ws_inbound_rate_closes_total"), 1.0);
    assert_eq!(counter(&m.body, "wsgate_ws_protocol_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_half_open_handshakes_do_not_slow_a_normal_client() {
    let srv = start("[server]\nhandshake_timeout = \"3s\"\n").await;
    // 500 connections that send part of an upgrade request and then nothing (from loopback,
    // which the per-address limits exempt, so only the head deadline stops them).
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /room/1/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // A normal client connects, upgrades and exchanges a message, five times; the typical
    // one (the median) must take under 100 ms.
    let mut took = Vec::new();
    for i in 0..5 {
        let t = std::time::Instant::now();
        let mut ws = connect(srv.addr, "/ws/echo").await;
        send_text(&mut ws, &format!("hello {i}")).await;
        assert_eq!(next_text(&mut ws).await, format!("hello {i}"));
        took.push(t.elapsed());
    }
    took.sort();
    assert!(
        took[2] < Duration::from_millis(100),
        "a normal client's handshake and echo took {took:?} beside 500 stalled heads"
    );
    // The stalled ones are answered 408 and closed once server.handshake_timeout passes.
    let mut s = stalled.pop().unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("closed within the head deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&all);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.handshake_timeout"), "{answer}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_what_server_listen_backlog_says() {
    let srv = start("[server]\nlisten_backlog = 37\n").await;
    // For a listening socket, ss shows the backlog in the Send-Q column.
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", srv.addr.port())])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, vec!["37"], "{text}");
    srv.shutdown().await;
}
