//! Plain HTTP through the proxy, against real upstream sockets: the hop-by-hop matrix, forwarding
//! headers with and without trusted proxies, and the 502/503/504 answers, retries and passive
//! health.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use support::upstream::{dead_addr, echo_http, read_head, silent};
use support::*;

fn proxy_config(servers: &str, extra_upstream: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[upstream]]\nname = \"app\"\nservers = {servers}\n{extra_upstream}\n\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"app\"\n"
    )
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_end_to_end_ones_survive() {
    let (up, seen) = echo_http().await;
    let srv = start(&proxy_config(&format!("[\"{up}\"]"), "", "")).await;
    let r = raw(
        srv.addr,
        b"GET /page?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Foo\r\nX-Foo: drop-me\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n\
Proxy-Authorization: Basic eDp5\r\nCookie: a=b\r\nX-Custom: keep-me\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = seen.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /page?q=1 http/1.1\r\n"), "{head}");
    for gone in [
        "x-foo:",
        "keep-alive:",
        "proxy-connection:",
        "te:",
        "upgrade:",
        "proxy-authorization:",
    ] {
        assert!(
            !head.contains(&format!("\r\n{gone}")),
            "{gone} reached the upstream:\n{head}"
        );
    }
    assert!(head.contains("\r\ncookie: a=b\r\n"), "{head}");
    assert!(head.contains("\r\nx-custom: keep-me\r\n"), "{head}");
    assert!(
        head.contains("\r\nhost: example.com\r\n"),
        "Host is preserved: {head}"
    );
    // The response lost its own hop-by-hop fields, and kept the rest.
    assert_eq!(r.header("x-end-to-end").as_deref(), Some("kept"));
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the client: {}",
            r.head
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let (up, seen) = echo_http().await;
    let srv = start(&proxy_config(&format!("[\"{up}\"]"), "", "")).await;
    let r = get(
        srv.addr,
        "/",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let head = seen.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: example.com\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nforwarded: for=127.0.0.1;host=example.com;proto=http\r\n"),
        "{head}"
    );
    assert!(!head.contains("6.6.6.6"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_appended() {
    let (up, seen) = echo_http().await;
    let srv = start(&proxy_config(
        &format!("[\"{up}\"]"),
        "",
        "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\npreserve_host = false\n",
    ))
    .await;
    let r = get(
        srv.addr,
        "/",
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nForwarded: for=198.51.100.1;proto=https\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let head = seen.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.contains("\r\nx-forwarded-for: 198.51.100.1, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: https\r\n"), "{head}");
    assert!(
        head.contains("\r\nforwarded: for=198.51.100.1;proto=https, for=127.0.0.1;host=example.com;proto=http\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nhost: {up}\r\n")),
        "preserve_host = false: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_pooled_upstream_connections_and_bodies_pass() {
    let (up, seen) = echo_http().await;
    let srv = start(&proxy_config(&format!("[\"{up}\"]"), "", "")).await;
    for i in 0..5 {
        let body = format!("body-{i}");
        let r = post(srv.addr, "/submit", Some("text/plain"), body.as_bytes(), "").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.to_ascii_lowercase().contains("content-length: 6"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        seen.connections.load(Ordering::Relaxed),
        1,
        "keep-alive pool reused one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_gets_502_naming_it_then_503_once_it_is_out() {
    let dead = dead_addr().await;
    let srv = start(&proxy_config(
        &format!("[\"{dead}\"]"),
        "max_fails = 1\nfail_timeout = \"1h\"",
        "",
    ))
    .await;
    let r = get(srv.addr, "/x", "").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("upstream \"app\""), "{}", r.body);
    assert!(r.body.contains(&dead.to_string()), "{}", r.body);
    assert!(
        r.body.to_lowercase().contains("refused"),
        "the OS error is named: {}",
        r.body
    );
    let r = get(srv.addr, "/x", "").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("every server of upstream \"app\" is down"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504() {
    let up = silent().await;
    let srv = start(&proxy_config(
        &format!("[\"{up}\"]"),
        "read_timeout = \"200ms\"",
        "",
    ))
    .await;
    let r = get(srv.addr, "/slow", "").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("read_timeout"), "{}", r.body);
}

/// A listener whose accept queue is full and never drained: the kernel drops further SYNs, so
/// a connect to it hangs, as to a firewalled host. The returned sockets keep the queue full.
async fn unanswering() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // With a backlog of 0 the queue holds one connection; a second may complete while the first
    // is being queued, so try a few and keep the ones that connected.
    for _ in 0..3 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(s);
        }
    }
    (addr, listener, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_gets_504_naming_connect_timeout() {
    let (up, _listener, _held) = unanswering().await;
    let srv = start(&proxy_config(
        &format!("[\"{up}\"]"),
        "connect_timeout = \"300ms\"\nmax_fails = 10",
        "",
    ))
    .await;
    let started = std::time::Instant::now();
    let r = get(srv.addr, "/", "").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body.contains("connect_timeout") && r.body.contains(&up.to_string()),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "answered after the connect timeout, not after the kernel's own"
    );
    // The same for a WebSocket upgrade: nothing was sent, so it is a 504 too.
    let r = raw(srv.addr, &upgrade_request("/ws", "")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("connect_timeout"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_the_next_server_and_the_dead_one_is_left_out() {
    let dead = dead_addr().await;
    let (up, seen) = echo_http().await;
    let srv = start(&proxy_config(
        &format!("[\"{dead}\", \"{up}\"]"),
        "max_fails = 1\nfail_timeout = \"1h\"",
        "",
    ))
    .await;
    for _ in 0..4 {
        let r = get(srv.addr, "/", "").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(seen.heads.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_routes_win_over_a_root_proxy_prefix_and_longest_prefix_wins() {
    let (a, seen_a) = echo_http().await;
    let (b, seen_b) = echo_http().await;
    let cfg = format!(
        "[[upstream]]\nname = \"a\"\nservers = [\"{a}\"]\n[[upstream]]\nname = \"b\"\nservers = [\"{b}\"]\n\
[[route]]\npath_prefix = \"/\"\nproxy_pass = \"a\"\n[[route]]\npath_prefix = \"/api/v2/\"\nproxy_pass = \"b\"\n\
[[route]]\npath = \"/chat/{{room}}\"\ngroup = \"chat:{{room}}\"\n"
    );
    let srv = start(&cfg).await;
    assert_eq!(get(srv.addr, "/api/v2/x", "").await.status, 200);
    assert_eq!(get(srv.addr, "/other", "").await.status, 200);
    let mut ws = connect(srv.addr, "/chat/1").await;
    assert_eq!(srv.publish_text("chat:1", "x").await, 1);
    drop(ws.close(None).await);
    assert_eq!(seen_b.heads.lock().unwrap().len(), 1);
    assert_eq!(seen_a.heads.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_echo_route_yields_to_a_configured_proxy_prefix() {
    let (a, seen_a) = echo_http().await;
    let cfg = format!(
        "[[upstream]]\nname = \"a\"\nservers = [\"{a}\"]\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"a\"\n"
    );
    let srv = start(&cfg).await;
    // Without the proxy this path is the built-in echo route (a plain GET would get 426).
    assert_eq!(get(srv.addr, "/ws/echo", "").await.status, 200);
    assert_eq!(seen_a.heads.lock().unwrap().len(), 1);
}

/// An upstream whose `/health` answers 200 or 500 as `healthy` says; other paths answer 200 and
/// are counted.
async fn health_toggled(
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let healthy = healthy.clone();
            let served = served2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let status = if head.starts_with("GET /health ") {
                            if healthy.load(Ordering::Relaxed) {
                                "200 OK"
                            } else {
                                "500 Internal Server Error"
                            }
                        } else {
                            served.fetch_add(1, Ordering::Relaxed);
                            "200 OK"
                        };
                        let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_server_out_and_bring_it_back() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let a_ok = Arc::new(AtomicBool::new(true));
    let b_ok = Arc::new(AtomicBool::new(false));
    let (a, served_a) = health_toggled(a_ok).await;
    let (b, served_b) = health_toggled(b_ok.clone()).await;
    let srv = start(&proxy_config(
        &format!("[\"{a}\", \"{b}\"]"),
        "health_path = \"/health\"\nhealth_interval = \"50ms\"",
        "",
    ))
    .await;
    eventually("b is taken out", || !srv.upstream_is_up(0, 1)).await;
    for _ in 0..4 {
        assert_eq!(get(srv.addr, "/", "").await.status, 200);
    }
    assert_eq!(served_a.load(Ordering::Relaxed), 4);
    assert_eq!(served_b.load(Ordering::Relaxed), 0);
    b_ok.store(true, Ordering::Relaxed);
    eventually("b is back", || srv.upstream_is_up(0, 1)).await;
    for _ in 0..4 {
        assert_eq!(get(srv.addr, "/", "").await.status, 200);
    }
    assert!(
        served_b.load(Ordering::Relaxed) >= 1,
        "b gets traffic again"
    );
}

/// An upstream that reads a chunked request body to its end, then answers with a chunked body
/// that carries a trailer: the raw chunked bytes it received, in two chunks.
async fn chunked_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                let mut body = Vec::new();
                let Some(head) = read_head(&mut s, &mut body).await else {
                    return;
                };
                let head = head.to_lowercase();
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                while !body.ends_with(b"0\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let half = body.len() / 2;
                let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n".to_vec();
                for part in [&body[..half], &body[half..]] {
                    resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    resp.extend_from_slice(part);
                    resp.extend_from_slice(b"\r\n");
                }
                resp.extend_from_slice(b"0\r\nX-Checksum: abc\r\n\r\n");
                let _ = s.write_all(&resp).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_both_ways_and_trailers_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = chunked_upstream().await;
    let srv = start(&proxy_config(&format!("[\"{up}\"]"), "", "")).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\nX-Client-Trailer: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw_reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw_reply))
        .await
        .expect("reply within the wait limit")
        .unwrap();
    let text = String::from_utf8_lossy(&raw_reply).to_string();
    let lower = text.to_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked"), "{text}");
    // The upstream got the client's bytes (re-chunked by wsgate, without the client's trailer)
    // and sent them back; the response trailer and its announcement are gone.
    assert!(text.contains("hello"), "{text}");
    assert!(text.contains(" world"), "{text}");
    assert!(
        !lower.contains("x-client-trailer"),
        "request trailer forwarded: {text}"
    );
    assert!(
        !lower.contains("x-checksum"),
        "response trailer forwarded: {text}"
    );
    assert!(
        !lower.contains("\r\ntrailer:"),
        "Trailer header kept: {text}"
    );
    assert!(text.ends_with("0\r\n\r\n"), "{text:?}");
}

/// nginx's `proxy_read_timeout` holds between two reads of the body too: an upstream that stalls
/// in the middle of a body is cut after `read_timeout`, so the client gets a short body (never a
/// complete-looking one) and its connection back, instead of waiting forever. Plain HTTP with
/// either framing, and a non-101 answer to an upgrade (the raw fast path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_after_read_timeout() {
    let plain = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    let cases: [(&str, &str, Vec<u8>); 3] = [
        (
            "content-length",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello",
            plain.clone(),
        ),
        (
            "chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            plain,
        ),
        (
            "upgrade answered 426",
            "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 100\r\n\r\nhello",
            upgrade_request("/ws", ""),
        ),
    ];
    for (what, answer, request) in cases {
        let (up, _) = support::upstream::scripted(move |_| answer.as_bytes().to_vec(), false).await;
        let srv = start(&proxy_config(
            &format!("[\"{up}\"]"),
            "read_timeout = \"300ms\"",
            "",
        ))
        .await;
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &request)
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the proxy never closed the stalled response"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 "), "{what}: {text}");
        assert!(
            text.contains("hello"),
            "{what}: the bytes that came are relayed: {text}"
        );
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{what}: a cut body must not look complete: {text}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{what}: cut after read_timeout, not later"
        );
        srv.shutdown().await;
    }
}
