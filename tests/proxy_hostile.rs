//! The proxy against a hostile probe (issue 14's defects list), over real sockets: paths that
//! climb out of the exposed prefix, an HTTP/1.0 upgrade, an upstream switching protocols
//! unasked, and heads with bare LF line endings.

mod support;

use support::upstream::{echo_http, scripted, ws_echo};
use support::*;

fn app(up: std::net::SocketAddr) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n"
    )
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_matching_and_forwarding() {
    let (up, seen) = echo_http().await;
    let srv = start(&app(up)).await;
    // Climbing out of /app/ ends outside the prefix: wsgate's own 404, the upstream sees nothing.
    for p in ["/app/../secret", "/app/%2e%2e/secret", "/app/%2E./secret"] {
        let r = raw(srv.addr, &get(p)).await;
        assert_eq!(r.status, 404, "{p}: {r:?}");
    }
    assert!(
        seen.heads.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    // Inside the prefix, the upstream gets the normalised path (query kept).
    let r = raw(srv.addr, &get("/app/a/./b/../c%7e?q=%2e%2e")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        head.starts_with("GET /app/a/c~?q=%2e%2e HTTP/1.1"),
        "{head}"
    );
    // What cannot be normalised safely is refused at once, saying why.
    for (p, why) in [
        ("/app/..%2fsecret", "encoded '/'"),
        ("/app/%zz", "malformed percent escape"),
        ("/app/x/%00", "NUL"),
        ("/app/%2E%2E/%2e%2e/secret", "climbs above the root"),
    ] {
        let r = raw(srv.addr, &get(p)).await;
        assert_eq!(r.status, 400, "{p}: {r:?}");
        assert!(r.body.contains(why), "{p}: {}", r.body);
    }
    assert_eq!(seen.heads.lock().unwrap().len(), 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_on_a_dotted_path_is_matched_normalised() {
    let (up, seen) = ws_echo(Default::default()).await;
    let srv = start(&app(up)).await;
    let r = raw(srv.addr, &upgrade_request("/app/%2e%2e/secret", "")).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = raw(srv.addr, &upgrade_request("/app/x/../echo", "")).await;
    assert_eq!(r.status, 101, "{r:?}");
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("GET /app/echo HTTP/1.1"), "{head}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upgrade_through_the_proxy_gets_426_before_the_upstream_is_asked() {
    let (up, seen) = ws_echo(Default::default()).await;
    let srv = start(&app(up)).await;
    let req = b"GET /app/echo HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw(srv.addr, req).await;
    assert_eq!(r.status, 426, "{r:?}");
    assert!(r.body.contains("needs HTTP/1.1"), "{}", r.body);
    assert!(seen.heads.lock().unwrap().is_empty());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_101_to_a_plain_request_is_a_502_naming_the_upstream() {
    let (up, _) = scripted(
        |_| {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec()
        },
        false,
    )
    .await;
    let srv = start(&app(up)).await;
    let r = raw(srv.addr, &get("/app/plain")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("\"app\""), "{}", r.body);
    assert!(r.body.contains("asked for no upgrade"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_bare_lf_line_endings_is_answered_at_once() {
    // The head timeout is longer than the test's wait: only a head recognised at once passes.
    let srv = start("[server]\nhandshake_timeout = \"60s\"\n").await;
    let r = raw(
        srv.addr,
        b"GET /healthz HTTP/1.1\nHost: t\nConnection: close\n\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    srv.shutdown().await;
}
