//! Groups that remember: positions, recovery after a gap, replay for plain clients, presence,
//! and the `wsgate.v1` commands, over real sockets.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::v1::{V1Client, connect_v1};
use support::*;

/// A route keeping history (and replaying it to plain clients) for groups `h:{x}`.
const HISTORY: &str = "[[route]]\npath = \"/h/{x}\"\ngroup = \"h:{x}\"\nhistory = { size = 1000, ttl = \"5m\" }\nreplay = { last = 100, within = \"30s\" }\njoin_leave = true\n\
[[route]]\npath = \"/small/{x}\"\ngroup = \"small:{x}\"\nhistory = { size = 10, ttl = \"5m\" }\n\
[[route]]\npath = \"/bounded/{x}\"\ngroup = \"bounded:{x}\"\nhistory = { size = 100, ttl = \"5m\" }\nreplay = { last = 3, within = \"500ms\" }\n\
[[route]]\npath = \"/quiet/{x}\"\ngroup = \"quiet:{x}\"\nclient_publish = false\npresence = false\n\
[[route]]\npath = \"/plain/{x}\"\ngroup = \"plain:{x}\"\n";

fn offset(v: &Value) -> u64 {
    v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {v}"))
}

/// Publishes `text` and returns the answer's JSON.
async fn publish_json(addr: std::net::SocketAddr, group: &str, text: &str) -> Value {
    let r = post(
        addr,
        &format!("/api/groups/{group}/messages"),
        Some("text/plain"),
        text.as_bytes(),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_for_half_a_second_at_50_per_second_recovers_every_message_once_in_order()
 {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/race").await;
    let first = c.subscribe("h:race").await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    // A publisher at 50 messages per second for 2 s.
    let addr = srv.addr;
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..100 {
            tick.tick().await;
            publish_json(addr, "h:race", &format!("m{i}")).await;
        }
    });
    // Read live for a while, remembering the position.
    let mut got: Vec<String> = Vec::new();
    let mut last = 0;
    while got.len() < 20 {
        let e = c.next_event().await;
        assert_eq!(e["type"], "pub");
        last = offset(&e);
        got.push(e["data"].as_str().unwrap().to_string());
    }
    // The socket goes away for half a second.
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = connect_v1(srv.addr, "/h/race").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "h:race", "since": { "epoch": epoch, "offset": last } }))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    publisher.await.unwrap();
    while got.len() < 100 {
        let e = c.next_event().await;
        assert_eq!(offset(&e), last + 1, "offsets follow each other: {e}");
        last = offset(&e);
        got.push(e["data"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every message exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_history_is_reported_as_not_recovered() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/small/x").await;
    let r = c.subscribe("small:x").await;
    let (epoch, at) = (r["epoch"].clone(), offset(&r));
    drop(c);
    for i in 0..25 {
        publish_json(srv.addr, "small:x", &format!("n{i}")).await;
    }
    let mut c = connect_v1(srv.addr, "/small/x").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "small:x", "since": { "epoch": epoch, "offset": at } }))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("no longer in history"), "{reason}");
    assert_eq!(offset(&r), 25, "the reply says where the stream is now");
    // Nothing partial was sent; the next thing is live.
    publish_json(srv.addr, "small:x", "live").await;
    let e = c.next_event().await;
    assert_eq!((e["data"].as_str(), offset(&e)), (Some("live"), 26));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_epoch_changes_and_an_old_position_is_not_recovered() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/restart").await;
    c.subscribe("h:restart").await;
    publish_json(srv.addr, "h:restart", "before").await;
    let e = c.next_event().await;
    let (old_epoch, at) = (e["epoch"].as_str().unwrap().to_string(), offset(&e));
    drop(c);
    srv.shutdown().await;

    let srv = start(HISTORY).await;
    publish_json(srv.addr, "h:restart", "after").await;
    let mut c = connect_v1(srv.addr, "/h/restart").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "h:restart", "since": { "epoch": old_epoch, "offset": at } }))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("epoch"), "{r}");
    assert_ne!(
        r["epoch"].as_str().unwrap(),
        old_epoch,
        "a new life, a new epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_joining_after_five_publishes_gets_all_five_then_live_ones() {
    let srv = start(HISTORY).await;
    for i in 1..=5 {
        publish_json(srv.addr, "h:replay", &format!("p{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = connect(srv.addr, "/h/replay").await;
    for i in 1..=5 {
        assert_eq!(next_text(&mut ws).await, format!("p{i}"));
    }
    assert_eq!(publish(srv.addr, "h:replay", "live").await, 1);
    assert_eq!(next_text(&mut ws).await, "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_to_its_count_and_age_bounds() {
    let srv = start(HISTORY).await;
    for i in 1..=5 {
        publish_json(srv.addr, "bounded:b", &format!("b{i}")).await;
    }
    let mut ws = connect(srv.addr, "/bounded/b").await;
    for i in 3..=5 {
        assert_eq!(next_text(&mut ws).await, format!("b{i}"), "the last 3 only");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut late = connect(srv.addr, "/bounded/b").await;
    assert_eq!(publish(srv.addr, "bounded:b", "fresh").await, 2);
    assert_eq!(
        next_text(&mut late).await,
        "fresh",
        "older than 500 ms: nothing replayed"
    );
    assert_eq!(next_text(&mut ws).await, "fresh");
}

/// Clients join while a publisher races them: each client's messages are a gap-free,
/// duplicate-free run that ends at the last publication (the seam between replayed and live
/// is exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_and_no_gap_at_the_seam_when_publishes_race_the_joins() {
    let srv = start(HISTORY).await;
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let addr = srv.addr;
    let (d, s) = (done.clone(), sent.clone());
    let publisher = tokio::spawn(async move {
        let mut i = 0u64;
        while !d.load(Ordering::Relaxed) && i < 900 {
            publish_json(addr, "h:seam", &i.to_string()).await;
            i += 1;
            s.store(i, Ordering::Relaxed);
        }
    });
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect(srv.addr, "/h/seam").await);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    done.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 20, "only {total} published");
    assert_eq!(publish(srv.addr, "h:seam", "end").await, 12);
    for (n, ws) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        loop {
            let t = next_text(ws).await;
            if t == "end" {
                break;
            }
            got.push(t.parse::<u64>().unwrap());
        }
        assert!(!got.is_empty(), "client {n} got nothing");
        let first = got[0];
        let want: Vec<u64> = (first..total).collect();
        assert_eq!(got, want, "client {n}: a gap or a duplicate at the seam");
    }
}

async fn presence_count(addr: std::net::SocketAddr, group: &str) -> u64 {
    let r = raw(
        addr,
        format!(
            "GET /api/groups/{group}/presence HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["connections"].as_array().unwrap().len() as u64,
        v["count"].as_u64().unwrap()
    );
    v["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_right_as_clients_come_and_go_abruptly_or_not() {
    let srv = start(HISTORY).await;
    let mut clean = Vec::new();
    for _ in 0..3 {
        clean.push(connect(srv.addr, "/plain/p").await);
    }
    let mut abrupt = Vec::new();
    for _ in 0..2 {
        abrupt.push(raw_ws(srv.addr, "/plain/p").await);
    }
    let mut v1 = connect_v1(srv.addr, "/plain/p").await;
    v1.command(json!({ "type": "subscribe", "group": "plain:p", "info": { "name": "ann" } }))
        .await;
    assert_eq!(presence_count(srv.addr, "plain:p").await, 6);
    let r = v1
        .command(json!({ "type": "presence", "group": "plain:p" }))
        .await;
    assert_eq!(r["count"], 6, "{r}");
    assert!(
        r["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["info"]["name"] == "ann"),
        "{r}"
    );
    // Two leave with a Close, two vanish without one.
    for mut ws in clean.drain(..2) {
        ws.close(None).await.unwrap();
    }
    abrupt.clear();
    let addr = srv.addr;
    let deadline = Instant::now() + WAIT;
    loop {
        let n = presence_count(addr, "plain:p").await;
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "presence stuck at {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = v1
        .command(json!({ "type": "unsubscribe", "group": "plain:p" }))
        .await;
    assert_eq!(r["type"], "ok");
    assert_eq!(presence_count(srv.addr, "plain:p").await, 1);
    // A route with presence off lists nobody.
    let _q = connect(srv.addr, "/quiet/q").await;
    assert_eq!(presence_count(srv.addr, "quiet:q").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_clients_publish_read_history_and_see_joins_and_leaves_when_they_ask() {
    let srv = start(HISTORY).await;
    let mut a = connect_v1(srv.addr, "/h/talk").await;
    let r = a
        .command(json!({ "type": "subscribe", "group": "h:talk", "events": true }))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let mut b = connect_v1(srv.addr, "/h/talk").await;
    b.subscribe("h:talk").await;
    let joined = a.next_event().await;
    assert_eq!(joined["type"], "join", "{joined}");
    let r = b
        .command(json!({ "type": "publish", "group": "h:talk", "data": { "percent": 40 } }))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let at = offset(&r);
    let e = a.next_event().await;
    assert_eq!(
        (e["type"].clone(), e["data"].clone()),
        (json!("pub"), json!({ "percent": 40 }))
    );
    assert_eq!(offset(&e), at);
    let r = b
        .command(json!({ "type": "publish", "group": "h:talk", "b64data": "AP8=" }))
        .await;
    assert_eq!(r["type"], "ok");
    assert_eq!(a.next_event().await["b64data"], "AP8=");
    let h = a
        .command(json!({ "type": "history", "group": "h:talk", "limit": 10 }))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    let pubs = h["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2);
    assert_eq!(pubs[0]["data"], json!({ "percent": 40 }));
    drop(b);
    let left = a.next_event().await;
    assert_eq!(left["type"], "leave", "{left}");
}

/// Sends `text` and returns the error reply (asserting it is one, with `code`).
async fn expect_error(c: &mut V1Client, text: &str, code: u64) -> String {
    c.send_raw(text).await;
    let v = c.read().await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    v["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_an_error_and_the_connection_stays_open() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/bad").await;
    let m = expect_error(&mut c, "{not json", 400).await;
    assert!(m.contains("not JSON"), "{m}");
    c.subscribe("h:bad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_command_gets_an_error_naming_the_commands() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/bad").await;
    c.send_raw(r#"{"id":7,"type":"subscribe-all"}"#).await;
    let v = c.read().await;
    assert_eq!((v["id"].clone(), v["code"].clone()), (json!(7), json!(400)));
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("subscribe-all") && m.contains("unsubscribe"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_without_a_numeric_id_is_refused() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/bad").await;
    let m = expect_error(&mut c, r#"{"type":"subscribe","group":"h:bad"}"#, 400).await;
    assert!(m.contains("\"id\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_group_the_route_does_not_allow_names_the_rule() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/mine").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "h:other" }))
        .await;
    assert_eq!(
        (r["type"].clone(), r["code"].clone()),
        (json!("error"), json!(403)),
        "{r}"
    );
    let m = r["message"].as_str().unwrap();
    assert!(m.contains("\"h:mine\"") && m.contains("subscribe"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_epoch_gets_recovered_false_with_the_reason() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/ep").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "h:ep", "since": { "epoch": "nope", "offset": 3 } }))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert_eq!(r["recovered"], false);
    assert!(r["reason"].as_str().unwrap().contains("epoch"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_not_a_command() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/h/bin").await;
    use futures_util::SinkExt;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2,
    ]))
    .await
    .unwrap();
    let v = c.read().await;
    assert_eq!(v["code"], 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("JSON text frames"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_twice_unsubscribing_from_nothing_and_too_many_groups_are_refused() {
    let srv = start(&format!("{HISTORY}[websocket]\nmax_subscriptions = 1\n")).await;
    let mut c = connect_v1(srv.addr, "/h/twice").await;
    c.subscribe("h:twice").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "h:twice" }))
        .await;
    assert_eq!(r["code"], 409, "{r}");
    let r = c
        .command(json!({ "type": "unsubscribe", "group": "h:never" }))
        .await;
    assert_eq!(r["code"], 403, "not even allowed: {r}");
    let srv2 = start(&format!(
        "{HISTORY}[websocket]\nmax_subscriptions = 1\n[[route]]\npath = \"/multi/{{x}}\"\ngroup = \"multi:{{x}}\"\nsubscribe = [\"multi:*\"]\n"
    ))
    .await;
    let mut c = connect_v1(srv2.addr, "/multi/1").await;
    c.subscribe("multi:1").await;
    let r = c
        .command(json!({ "type": "subscribe", "group": "multi:2" }))
        .await;
    assert_eq!(r["code"], 429, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("websocket.max_subscriptions")
    );
    let r = c
        .command(json!({ "type": "unsubscribe", "group": "multi:2" }))
        .await;
    assert_eq!(r["code"], 404, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_client_publish_refuses_v1_publishes() {
    let srv = start(HISTORY).await;
    let mut c = connect_v1(srv.addr, "/quiet/q").await;
    c.subscribe("quiet:q").await;
    let r = c
        .command(json!({ "type": "publish", "group": "quiet:q", "data": "hi" }))
        .await;
    assert_eq!(r["code"], 403, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("client_publish"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_bad_commands_close_the_connection_with_1008() {
    let srv = start(&format!("{HISTORY}[websocket]\nmax_command_errors = 2\n")).await;
    let mut c = connect_v1(srv.addr, "/h/noisy").await;
    for _ in 0..2 {
        expect_error(&mut c, "nope", 400).await;
    }
    c.send_raw("nope").await;
    let v = c.read().await;
    assert_eq!(v["type"], "error", "the third still gets its answer: {v}");
    use futures_util::StreamExt;
    let close = loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a close")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("expected a Close, got {other:?}"),
        }
    };
    let f = close.expect("a close frame with a code");
    assert_eq!(u16::from(f.code), 1008);
    assert!(f.reason.contains("max_command_errors"), "{}", f.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reads_history_and_presence_and_closes_a_connection() {
    let srv = start(HISTORY).await;
    let mut ws = connect(srv.addr, "/h/api").await;
    publish_json(srv.addr, "h:api", "one").await;
    assert_eq!(next_text(&mut ws).await, "one");
    let r = raw(
        srv.addr,
        b"GET /api/groups/h:api/history?limit=5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["publications"][0]["data"], "one", "{v}");
    let p = raw(
        srv.addr,
        b"GET /api/groups/h:api/presence HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let v: Value = serde_json::from_str(&p.body).unwrap();
    let id = v["connections"][0]["id"].as_str().unwrap().to_string();
    let r = raw(
        srv.addr,
        format!("DELETE /api/connections/{id}?code=4000&reason=bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    use futures_util::StreamExt;
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "bye"));
        }
        other => panic!("expected Close 4000, got {other:?}"),
    }
    drop(ws);
    let addr = srv.addr;
    let deadline = Instant::now() + WAIT;
    while presence_count(addr, "h:api").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection stays in presence"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = raw(
        srv.addr,
        format!("DELETE /api/connections/{id} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no connection"), "{}", r.body);
}

/// A raw body sent as `application/json` reaches a wsgate.v1 client as a JSON value (not a
/// string holding JSON) and a raw client as the same text; a body that is not JSON is refused
/// with 400 before anything is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_published_to_a_group_is_a_json_value_for_v1_clients() {
    let srv = start(HISTORY).await;
    let mut v1 = connect_v1(srv.addr, "/h/js").await;
    v1.subscribe("h:js").await;
    let mut raw = connect(srv.addr, "/plain/js").await;
    eventually("joined", || srv.member_count("plain:js") == 1).await;
    for group in ["h:js", "plain:js"] {
        let r = post(
            srv.addr,
            &format!("/api/groups/{group}/messages"),
            Some("application/json; charset=utf-8"),
            br#"{"percent": 40}"#,
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let e = v1.next_event().await;
    assert_eq!(
        (e["type"].clone(), e["data"].clone()),
        (json!("pub"), json!({ "percent": 40 })),
        "{e}"
    );
    assert_eq!(next_text(&mut raw).await, r#"{"percent": 40}"#);
    let r = post(
        srv.addr,
        "/api/groups/h:js/messages",
        Some("application/json"),
        b"{not json",
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("not valid JSON"), "{}", r.body);
    // Nothing went out for the refused body: the next publication is the next publish.
    publish(srv.addr, "h:js", "after").await;
    let e = v1.next_event().await;
    assert_eq!(e["data"], json!("after"), "{e}");
}
