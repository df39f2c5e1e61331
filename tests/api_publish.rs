//! The publish API: raw and JSON publishes, and every refusal with its status and sentence.

mod support;

use support::*;
use tokio_tungstenite::tungstenite::Message;

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bodies_become_text_or_binary_by_content_type() {
    let srv = start("").await;
    let mut ws = connect(srv.addr, "/room/t").await;
    eventually("joined", || srv.member_count("room:t") == 1).await;
    let r = post(
        srv.addr,
        "/api/groups/room%3At/messages",
        Some("application/json"),
        br#"{"p":1}"#,
        "",
    )
    .await;
    assert_eq!((r.status, json(&r)["recipients"].as_u64()), (200, Some(1)));
    assert_eq!(next(&mut ws).await, Message::text(r#"{"p":1}"#));
    post(
        srv.addr,
        "/api/groups/room:t/messages",
        Some("application/octet-stream"),
        &[0, 159, 146, 150],
        "",
    )
    .await;
    assert_eq!(
        next(&mut ws).await,
        Message::binary(vec![0u8, 159, 146, 150])
    );
    post(
        srv.addr,
        "/api/groups/room:t/messages",
        None,
        b"no type",
        "",
    )
    .await;
    assert_eq!(next(&mut ws).await, Message::binary(b"no type".to_vec()));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_publish_to_one_or_many_groups_with_text_or_base64() {
    let srv = start("").await;
    let mut a = connect(srv.addr, "/room/a").await;
    let mut b = connect(srv.addr, "/room/b").await;
    eventually("joined", || srv.group_count() == 2).await;
    let r = post(
        srv.addr,
        "/api/publish",
        Some("application/json"),
        br#"{"group":"room:a","data":{"type":"progress","percent":10}}"#,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        next_text(&mut a).await,
        r#"{"percent":10,"type":"progress"}"#
    );
    let r = post(
        srv.addr,
        "/api/publish",
        Some("application/json"),
        br#"{"groups":["room:a","room:b","room:none"],"data":"hello"}"#,
        "",
    )
    .await;
    let v = json(&r);
    assert_eq!(v["recipients"], 2);
    assert_eq!(v["groups"]["room:none"], 0);
    assert_eq!(next_text(&mut a).await, "hello");
    assert_eq!(next_text(&mut b).await, "hello");
    let r = post(
        srv.addr,
        "/api/publish",
        Some("application/json"),
        br#"{"group":"room:b","b64data":"AAEC"}"#,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(next(&mut b).await, Message::binary(vec![0u8, 1, 2]));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_an_empty_group_is_not_an_error() {
    let srv = start("").await;
    assert_eq!(publish(srv.addr, "room:nobody", "anyone?").await, 0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_a_status_and_a_sentence() {
    let srv = start("[api]\nmax_body_bytes = 100\n").await;
    let a = srv.addr;
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            post(
                a,
                "/api/publish",
                Some("application/json"),
                b"{not json",
                "",
            )
            .await,
            400,
            "not valid JSON",
        ),
        (
            post(
                a,
                "/api/publish",
                Some("application/json"),
                br#"{"data":1}"#,
                "",
            )
            .await,
            400,
            "missing \"group\"",
        ),
        (
            post(
                a,
                "/api/publish",
                Some("application/json"),
                br#"{"group":"g"}"#,
                "",
            )
            .await,
            400,
            "missing \"data\"",
        ),
        (
            post(
                a,
                "/api/publish",
                Some("application/json"),
                br#"{"group":"g","data":1,"extra":2}"#,
                "",
            )
            .await,
            400,
            "unknown field \"extra\"",
        ),
        (
            post(
                a,
                "/api/publish",
                Some("application/json"),
                br#"{"groups":[],"data":1}"#,
                "",
            )
            .await,
            400,
            "\"groups\" is empty",
        ),
        (
            post(a, "/api/publish", Some("text/plain"), b"x", "").await,
            415,
            "application/json",
        ),
        (
            post(
                a,
                "/api/groups/g/messages",
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.xlsx\"\r\n\r\nPK\r\n--x--\r\n",
                "",
            )
            .await,
            415,
            "publish progress text or a reference to it",
        ),
        (
            post(
                a,
                "/api/groups/g/messages",
                Some("text/plain; charset=latin1"),
                b"x",
                "",
            )
            .await,
            415,
            "charset latin1",
        ),
        (
            post(
                a,
                "/api/groups/g/messages",
                Some("text/plain"),
                &[0xff, 0xfe],
                "",
            )
            .await,
            400,
            "not valid UTF-8",
        ),
        (
            post(
                a,
                "/api/groups/g/messages",
                Some("text/plain"),
                &[b'a'; 101],
                "",
            )
            .await,
            413,
            "100 byte limit (api.max_body_bytes)",
        ),
        (
            post(a, "/api/nope", Some("text/plain"), b"x", "").await,
            404,
            "no API endpoint",
        ),
        (
            raw(
                a,
                b"GET /api/publish HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await,
            405,
            "takes POST",
        ),
    ];
    for (r, status, needle) in cases {
        assert_eq!(r.status, status, "{r:?}");
        let msg = json(&r)["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(needle),
            "{status}: {msg:?} should mention {needle:?}"
        );
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413() {
    let srv = start("[api]\nmax_body_bytes = 10\n").await;
    let req = b"POST /api/groups/g/messages HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n";
    let r = raw(srv.addr, req).await;
    assert_eq!(r.status, 413, "{r:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protects_the_api_when_configured() {
    let srv = start("[api]\ntoken = \"s3cret\"\n").await;
    let r = post(
        srv.addr,
        "/api/groups/g/messages",
        Some("text/plain"),
        b"x",
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    let r = post(
        srv.addr,
        "/api/groups/g/messages",
        Some("text/plain"),
        b"x",
        "Authorization: Bearer wrong\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = post(
        srv.addr,
        "/api/groups/g/messages",
        Some("text/plain"),
        b"x",
        "Authorization: Bearer s3cret\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_and_deliveries() {
    let srv = start("").await;
    let _ws = connect(srv.addr, "/room/m").await;
    eventually("joined", || srv.member_count("room:m") == 1).await;
    publish(srv.addr, "room:m", "x").await;
    let r = raw(
        srv.addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    for name in [
        "wsgate_ws_connections ",
        "wsgate_hub_deliveries_total ",
        "wsgate_ws_slow_consumers_total ",
    ] {
        assert!(r.body.contains(name), "{name} missing from {}", r.body);
    }
    let delivered: u64 = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_hub_deliveries_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(delivered >= 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_is_served_at_the_root() {
    let srv = start("").await;
    let r = raw(
        srv.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("id=\"messages\""));
    srv.shutdown().await;
}

/// The group limits have config keys, and their 400s name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_limits_are_configurable_and_named_in_the_400() {
    let srv = start("[api]\nmax_groups_per_publish = 2\n[websocket]\nmax_group_bytes = 8\n").await;
    let a = srv.addr;
    let ok = post(
        a,
        "/api/publish",
        Some("application/json"),
        br#"{"groups":["a","b"],"data":1}"#,
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let r = post(
        a,
        "/api/publish",
        Some("application/json"),
        br#"{"groups":["a","b","c"],"data":1}"#,
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("api.max_groups_per_publish"), "{}", r.body);
    let r = post(
        a,
        "/api/groups/123456789/messages",
        Some("text/plain"),
        b"x",
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("websocket.max_group_bytes"), "{}", r.body);
    // The default route's group is "room:{room}": 5 + 3 bytes fit, 5 + 4 do not.
    let r = raw(a, &upgrade_request("/room/abc/", "")).await;
    assert_eq!(r.status, 101, "{r:?}");
    let r = raw(a, &upgrade_request("/room/abcd/", "")).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("websocket.max_group_bytes"), "{}", r.body);
    srv.shutdown().await;
}
