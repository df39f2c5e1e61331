//! `/metrics` through prometheus-client: the names the README lists, labels by route, outcome
//! and upstream, histograms with buckets, and values that move with traffic. One test in this
//! binary, because the metrics are process-wide and other tests would move them too.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use support::*;

/// Every sample on `/metrics`, by its full name with labels.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let mut out = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a sample: {line}"));
        let family = name.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| family.strip_suffix(s))
            .filter(|b| typed.contains(*b))
            .unwrap_or(family);
        assert!(typed.contains(base), "a sample without # TYPE: {line}");
        assert!(base.starts_with("wsgate_"), "{line}");
        out.insert(name.to_string(), value);
    }
    out
}

fn v(m: &HashMap<String, f64>, k: &str) -> f64 {
    *m.get(k)
        .unwrap_or_else(|| panic!("{k} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

fn delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>, k: &str) -> f64 {
    v(b, k) - a.get(k).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_handshakes_messages_publishes_and_proxied_requests() {
    let (upstream, _seen) = upstream::echo_http().await;
    let srv = start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\
[[route]]\npath = \"/room/{{room}}/\"\ngroup = \"room:{{room}}\"\n\
[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n"
    ))
    .await;
    let before = scrape(srv.addr).await;
    for name in [
        "wsgate_ws_connections",
        "wsgate_ws_connections_total",
        "wsgate_ws_messages_received_total",
        "wsgate_ws_received_bytes_total",
        "wsgate_ws_sent_bytes_total",
        "wsgate_hub_publishes_total",
        "wsgate_hub_deliveries_total",
        "wsgate_ws_slow_consumers_total",
        "wsgate_hub_publish_duration_seconds_count",
        "wsgate_ws_send_queue_frames_count",
        "wsgate_proxy_tunnels",
        "wsgate_proxy_tunnels_total",
        "wsgate_broker_up",
        "wsgate_broker_reconnects_total",
        "wsgate_server_listen_backlog",
        "wsgate_proxy_tunnel_read_pauses_total",
        "wsgate_proxy_uring_buffer_waits_total",
    ] {
        v(&before, name);
    }
    assert_eq!(v(&before, "wsgate_broker_up"), 1.0);

    // Two members of one room, one bad handshake, one from a page whose origin is fine.
    let mut a = connect(srv.addr, "/room/m/").await;
    let _b = connect(srv.addr, "/room/m/").await;
    eventually("joined", || srv.member_count("room:m") == 2).await;
    let bad = raw(
        srv.addr,
        b"GET /room/m/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status, 400);
    send_text(&mut a, "hello room").await;
    publish(srv.addr, "room:m", "from the api").await;
    let mut got = 0;
    while got < 2 {
        next_text(&mut a).await;
        got += 1;
    }
    let proxied = raw(
        srv.addr,
        b"GET /app/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(proxied.status, 200);

    let after = scrape(srv.addr).await;
    assert_eq!(
        delta(
            &before,
            &after,
            "wsgate_ws_handshakes_total{outcome=\"101\"}"
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "wsgate_ws_handshakes_total{outcome=\"bad_key\"}"
        ),
        1.0
    );
    assert_eq!(
        v(
            &after,
            "wsgate_ws_route_connections{route=\"/room/{room}/\"}"
        ),
        2.0
    );
    assert_eq!(delta(&before, &after, "wsgate_ws_connections_total"), 2.0);
    assert_eq!(
        delta(&before, &after, "wsgate_ws_messages_received_total"),
        1.0
    );
    assert!(delta(&before, &after, "wsgate_ws_received_bytes_total") >= 16.0);
    // Two messages to two members (the sender hears its own), framed.
    assert!(delta(&before, &after, "wsgate_ws_sent_bytes_total") >= 4.0 * 12.0);
    assert_eq!(delta(&before, &after, "wsgate_hub_publishes_total"), 2.0);
    assert_eq!(delta(&before, &after, "wsgate_hub_deliveries_total"), 4.0);
    assert_eq!(
        delta(&before, &after, "wsgate_hub_publish_duration_seconds_count"),
        2.0
    );
    assert!(
        delta(
            &before,
            &after,
            "wsgate_hub_publish_duration_seconds_bucket{le=\"+Inf\"}"
        ) == 2.0
    );
    assert!(delta(&before, &after, "wsgate_ws_send_queue_frames_count") >= 2.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "wsgate_proxy_responses_total{upstream=\"app\",code=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "wsgate_proxy_request_duration_seconds_count{upstream=\"app\"}"
        ),
        1.0
    );
    // Buckets are cumulative: +Inf holds them all.
    assert_eq!(
        v(
            &after,
            "wsgate_proxy_request_duration_seconds_bucket{upstream=\"app\",le=\"+Inf\"}"
        ),
        v(
            &after,
            "wsgate_proxy_request_duration_seconds_count{upstream=\"app\"}"
        )
    );
    srv.shutdown().await;
}
