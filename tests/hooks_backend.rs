//! Backend hooks against a real HTTP backend written here (tests/support/backend.rs): accept,
//! reject with a reason, groups chosen by the backend, forwarded messages answered with replies
//! and publishes, a backend that is down or slow (each as configured, others unaffected), the
//! in-flight limit, signatures, and the disconnect hook's close code. Also the API's messages to
//! one connection and multipart publishes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::backend::{Backend, Call};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A route with all three hooks at `backend`, messages forwarded; `extra` goes into `[hooks]`.
fn config(backend: &Backend, extra: &str) -> String {
    format!(
        "[hooks]\nretry_backoff = \"20ms\"\n{extra}\n\
[[route]]\npath = \"/hooked/{{room}}/\"\ngroup = \"room:{{room}}\"\non_message = \"forward\"\n\
hooks = {{ on_connect = \"{c}\", on_message = \"{m}\", on_disconnect = \"{d}\" }}\n",
        c = backend.url("/ws/connect"),
        m = backend.url("/ws/message"),
        d = backend.url("/ws/disconnect"),
    )
}

fn ok(v: Value) -> (u16, String) {
    (200, v.to_string())
}

/// A backend accepting everyone into the route's group and answering messages with `{}`.
async fn plain_backend() -> Backend {
    Backend::start(|c: Call| async move {
        match c.path.as_str() {
            "/ws/connect" => ok(json!({"accept": true})),
            _ => ok(json!({})),
        }
    })
    .await
}

/// Opens a raw WebSocket with extra header lines; returns the stream after the 101.
async fn raw_ws_with(addr: std::net::SocketAddr, path: &str, extra: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&upgrade_request(path, extra))
        .await
        .expect("write");
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    s
}

/// Opens a WebSocket that the server closes right after its 101: the Close it got.
async fn closed_at_once(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&upgrade_request(path, ""))
        .await
        .expect("write");
    let (reply, mut rest) = read_head_and_rest(&mut s).await;
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut chunk = [0u8; 512];
    loop {
        if let Some(h) = wsgate::ws::frame::parse_header(&rest)
            && rest.len() >= h.size + h.len as usize
        {
            assert_eq!(h.opcode_raw, 0x8, "the first frame is a Close");
            let p = &rest[h.size..h.size + h.len as usize];
            return Some((
                u16::from_be_bytes([p[0], p[1]]),
                String::from_utf8_lossy(&p[2..]).to_string(),
            ));
        }
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
            .await
            .expect("a Close within the wait limit")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
}

async fn presence(addr: std::net::SocketAddr, group: &str) -> Value {
    let r = raw(
        addr,
        format!(
            "GET /api/groups/{group}/presence HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).expect("JSON")
}

#[tokio::test]
async fn on_connect_tells_the_backend_who_knocks_and_the_backend_chooses_groups_user_and_info() {
    let backend = Backend::start(|c: Call| async move {
        if c.path == "/ws/connect" {
            ok(json!({"accept": true, "groups": ["room:a", "user:7"], "user": "7", "info": {"name": "ann"}}))
        } else {
            ok(json!({}))
        }
    })
    .await;
    let s = start(&config(&backend, "")).await;
    let addr = s.addr;
    let mut ws = raw_ws_with(
        addr,
        "/hooked/123/?token=abc",
        "Cookie: sessionid=s1; csrftoken=c2\r\nX-Custom: yes\r\n",
    )
    .await;
    let knock = backend.events("connect");
    assert_eq!(knock.len(), 1);
    let k = &knock[0].json;
    assert_eq!(k["path"], "/hooked/123/");
    assert_eq!(k["route"], "/hooked/{room}/");
    assert_eq!(k["query"], "token=abc");
    assert_eq!(k["params"]["room"], "123");
    assert_eq!(k["group"], "room:123");
    assert_eq!(k["cookies"]["sessionid"], "s1");
    assert_eq!(k["headers"]["x-custom"], "yes");
    assert!(k["conn"].as_str().is_some_and(|c| c.contains('.')), "{k}");
    assert!(
        k["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    // In the groups the backend chose, not in the route's own.
    assert_eq!(publish(addr, "user:7", "for user 7").await, 1);
    assert_eq!(publish(addr, "room:a", "for room a").await, 1);
    assert_eq!(publish(addr, "room:123", "nobody").await, 0);
    let mut buf = Vec::new();
    assert_eq!(
        read_texts(&mut ws, &mut buf, 2).await,
        vec!["for user 7", "for room a"]
    );
    let p = presence(addr, "user:7").await;
    assert_eq!(p["connections"][0]["user"], "7", "{p}");
    assert_eq!(p["connections"][0]["info"]["name"], "ann", "{p}");
    assert_eq!(p["connections"][0]["id"], k["conn"], "{p}");
}

#[tokio::test]
async fn on_connect_rejects_with_a_close_code_and_the_backends_reason() {
    let backend = Backend::start(|_c: Call| async move {
        ok(json!({"accept": false, "status": 401, "reason": "log in first"}))
    })
    .await;
    let s = start(&config(&backend, "")).await;
    assert_eq!(
        closed_at_once(s.addr, "/hooked/1/").await,
        Some((4401, "log in first".to_string()))
    );
    eventually("the refused client holds no slot", || {
        s.handle().open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_is_down_at_connect_closes_the_client_with_1011_after_the_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let backend = Backend::start(move |_c: Call| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { (503, "{}".to_string()) }
    })
    .await;
    let s = start(&config(&backend, "retries = 2")).await;
    let started = Instant::now();
    let (code, reason) = closed_at_once(s.addr, "/hooked/1/").await.expect("a Close");
    let took = started.elapsed();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call and two retries");
    // Backoff 20 ms then 40 ms between the three calls.
    assert!(took >= Duration::from_millis(60), "retried after {took:?}");
    assert_eq!(code, 1011);
    assert!(reason.contains("the backend failed"), "{reason}");

    // Nothing listening at all: unreachable, and said so.
    let port = free_port();
    let toml = format!(
        "[hooks]\nretries = 0\n[[route]]\npath = \"/h/{{x}}\"\ngroup = \"h:{{x}}\"\nhooks = {{ on_connect = \"http://127.0.0.1:{port}/c\" }}\n"
    );
    let s = start(&toml).await;
    assert_eq!(
        closed_at_once(s.addr, "/h/1").await,
        Some((
            1011,
            "the backend could not be reached; try again later".to_string()
        ))
    );
}

#[tokio::test]
async fn with_on_connect_failure_accept_a_down_backend_lets_clients_into_the_routes_group() {
    let port = free_port();
    let toml = format!(
        "[hooks]\nretries = 0\non_connect_failure = \"accept\"\n[[route]]\npath = \"/h/{{x}}\"\ngroup = \"h:{{x}}\"\nhooks = {{ on_connect = \"http://127.0.0.1:{port}/c\" }}\n"
    );
    let s = start(&toml).await;
    let mut ws = connect(s.addr, "/h/1").await;
    assert_eq!(publish(s.addr, "h:1", "in anyway").await, 1);
    assert_eq!(next_text(&mut ws).await, "in anyway");
}

#[tokio::test]
async fn a_backend_slower_than_the_timeout_closes_a_connecting_client_and_retries_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let backend = Backend::start(move |_c: Call| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(json!({"accept": true}))
        }
    })
    .await;
    let s = start(&config(&backend, "timeout = \"150ms\"\nretries = 1")).await;
    assert_eq!(
        closed_at_once(s.addr, "/hooked/1/").await,
        Some((
            1011,
            "the backend did not answer in time; try again later".to_string()
        ))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a connect is retried after a timeout"
    );
}

#[tokio::test]
async fn a_forwarded_message_is_answered_with_a_reply_and_a_publish() {
    let backend = Backend::start(|c: Call| async move {
        match c.path.as_str() {
            "/ws/connect" => ok(json!({"accept": true, "user": "u1"})),
            "/ws/message" => {
                let said = c.json["data"].as_str().unwrap_or("").to_string();
                ok(json!({
                    "messages": [format!("got: {said}"), {"n": 1}],
                    "publish": [{"group": "room:x", "data": format!("{said} (to all)")}],
                }))
            }
            _ => ok(json!({})),
        }
    })
    .await;
    let s = start(&config(&backend, "")).await;
    let mut a = connect(s.addr, "/hooked/x/").await;
    let mut b = connect(s.addr, "/hooked/x/").await;
    send_text(&mut a, "hi").await;
    assert_eq!(next_text(&mut a).await, "got: hi");
    assert_eq!(next_text(&mut a).await, "{\"n\":1}");
    assert_eq!(next_text(&mut a).await, "hi (to all)");
    assert_eq!(
        next_text(&mut b).await,
        "hi (to all)",
        "b got only the publish"
    );
    let m = &backend.events("message")[0].json;
    assert_eq!(m["data"], "hi");
    assert_eq!(m["user"], "u1");
    assert_eq!(m["groups"], json!(["room:x"]));
    assert_eq!(m["conn"], backend.events("connect")[0].json["conn"]);

    // A binary message goes as base64.
    a.send(Message::binary(vec![0u8, 255])).await.unwrap();
    assert_eq!(next_text(&mut a).await, "got: ");
    eventually("the binary message reached the backend", || {
        backend.events("message").len() == 2
    })
    .await;
    assert_eq!(backend.events("message")[1].json["b64data"], "AP8=");
}

#[tokio::test]
async fn a_slow_backend_keeps_one_connections_messages_in_order_and_delays_nobody_else() {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let backend = Backend::start(move |c: Call| {
        let held = held.clone();
        async move {
            match c.path.as_str() {
                "/ws/connect" => ok(json!({"accept": true})),
                "/ws/message" => {
                    let said = c.json["data"].as_str().unwrap_or("").to_string();
                    if said.starts_with("slow") {
                        held.notified().await;
                    }
                    ok(json!({"messages": [format!("re: {said}")]}))
                }
                _ => ok(json!({})),
            }
        }
    })
    .await;
    let s = start(&config(&backend, "")).await;
    let mut a = connect(s.addr, "/hooked/a/").await;
    let mut b = connect(s.addr, "/hooked/b/").await;
    for i in 0..5 {
        send_text(&mut a, &format!("slow {i}")).await;
    }
    eventually("a's first message is at the backend", || {
        backend.events("message").len() == 1
    })
    .await;
    // While a's message is held: b is answered, and a's own session still delivers.
    send_text(&mut b, "quick").await;
    assert_eq!(next_text(&mut b).await, "re: quick");
    assert_eq!(publish(s.addr, "room:a", "live while waiting").await, 1);
    assert_eq!(next_text(&mut a).await, "live while waiting");
    // Only one of a's messages is at the backend at a time: order is kept.
    assert_eq!(
        backend
            .events("message")
            .iter()
            .filter(|c| c.json["data"].as_str().unwrap().starts_with("slow"))
            .count(),
        1
    );
    for i in 0..5 {
        // Notify wakes the one waiter there is, or lets the next one through at once.
        release.notify_one();
        assert_eq!(next_text(&mut a).await, format!("re: slow {i}"));
    }
    let order: Vec<String> = backend
        .events("message")
        .iter()
        .map(|c| c.json["data"].as_str().unwrap().to_string())
        .filter(|d| d.starts_with("slow"))
        .collect();
    assert_eq!(
        order,
        (0..5).map(|i| format!("slow {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn past_max_in_flight_a_message_is_refused_with_an_error_not_queued() {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let backend = Backend::start(move |c: Call| {
        let held = held.clone();
        async move {
            if c.path == "/ws/message" {
                held.notified().await;
                let said = c.json["data"].as_str().unwrap_or("").to_string();
                return ok(json!({"messages": [format!("re: {said}")]}));
            }
            ok(json!({"accept": true}))
        }
    })
    .await;
    let s = start(&config(&backend, "max_in_flight = 2")).await;
    let mut a = connect(s.addr, "/hooked/a/").await;
    for m in ["one", "two", "three"] {
        send_text(&mut a, m).await;
    }
    let e: Value = serde_json::from_str(&next_text(&mut a).await).unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], 429);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("hooks.max_in_flight"),
        "{e}"
    );
    release.notify_one();
    assert_eq!(next_text(&mut a).await, "re: one");
    release.notify_one();
    assert_eq!(next_text(&mut a).await, "re: two");
    // Room again: the next message goes through.
    send_text(&mut a, "four").await;
    release.notify_one();
    assert_eq!(next_text(&mut a).await, "re: four");
    assert_eq!(backend.events("message").len(), 3, "three was never sent");
}

#[tokio::test]
async fn a_forwarded_message_that_times_out_gets_an_error_message_and_is_not_repeated() {
    let backend = Backend::start(|c: Call| async move {
        if c.path == "/ws/message" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        ok(json!({"accept": true}))
    })
    .await;
    let s = start(&config(&backend, "timeout = \"150ms\"\nretries = 3")).await;
    let mut a = connect(s.addr, "/hooked/a/").await;
    send_text(&mut a, "hello").await;
    let e: Value = serde_json::from_str(&next_text(&mut a).await).unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], 504, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{e}"
    );
    assert_eq!(
        backend.events("message").len(),
        1,
        "a message that may have been handled is not sent twice"
    );
    // The connection stays open and usable.
    assert_eq!(publish(s.addr, "room:a", "still here").await, 1);
    assert_eq!(next_text(&mut a).await, "still here");
}

#[tokio::test]
async fn with_on_message_failure_close_an_unreachable_backend_closes_the_client_with_1011() {
    let backend = plain_backend().await;
    let port = free_port();
    let toml = format!(
        "[hooks]\nretries = 0\non_message_failure = \"close\"\n[[route]]\npath = \"/f/{{x}}\"\ngroup = \"f:{{x}}\"\non_message = \"forward\"\nhooks = {{ on_connect = \"{}\", on_message = \"http://127.0.0.1:{port}/m\" }}\n",
        backend.url("/ws/connect")
    );
    let s = start(&toml).await;
    let mut ws = raw_ws(s.addr, "/f/1").await;
    ws.write_all(&client_frame(1, b"hello")).await.unwrap();
    assert_eq!(
        read_until_close(&mut ws).await,
        Some((
            1011,
            "the backend could not be reached; try again later".to_string()
        ))
    );
}

#[tokio::test]
async fn hook_requests_are_signed_and_the_signature_verifies() {
    let backend = plain_backend().await;
    let s = start(&config(&backend, "secret = \"s3cret\"")).await;
    let mut a = connect(s.addr, "/hooked/a/").await;
    send_text(&mut a, "signed").await;
    eventually("the message reached the backend", || {
        backend.events("message").len() == 1
    })
    .await;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for call in backend.calls() {
        let sig = call
            .headers
            .get("wsgate-signature")
            .and_then(|v| v.to_str().ok())
            .expect("a signature header")
            .to_string();
        let (t, mac) = sig
            .strip_prefix("t=")
            .and_then(|r| r.split_once(",v1="))
            .expect("t=...,v1=...");
        let t: u64 = t.parse().unwrap();
        assert!(now.abs_diff(t) < 60, "t={t} now={now}");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&call.raw);
        let want: String = ring::hmac::sign(&key, &signed)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(mac, want, "signature of {}", call.path);
        // Another secret does not verify.
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
        assert!(ring::hmac::verify(&other, &signed, &hex(mac)).is_err());
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn the_disconnect_hook_gets_the_close_code_after_the_last_forwarded_message() {
    let backend = plain_backend().await;
    let s = start(&config(&backend, "")).await;
    let mut a = connect(s.addr, "/hooked/a/").await;
    send_text(&mut a, "last words").await;
    a.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    eventually("the disconnect hook was called", || {
        !backend.events("disconnect").is_empty()
    })
    .await;
    let calls = backend.calls();
    let events: Vec<&str> = calls
        .iter()
        .map(|c| c.json["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["connect", "message", "disconnect"]);
    let d = &calls[2].json;
    assert_eq!(d["code"], 4001);
    assert_eq!(d["conn"], calls[0].json["conn"]);
    assert_eq!(d["groups"], json!(["room:a"]));
    // No group_discard to forget: a closed connection is in no group.
    assert_eq!(presence(s.addr, "room:a").await["count"], 0);

    // Closed by the API: the hook hears the API's code.
    let _b = connect(s.addr, "/hooked/b/").await;
    eventually("b's connect hook", || backend.events("connect").len() == 2).await;
    let id = backend.events("connect")[1].json["conn"]
        .as_str()
        .unwrap()
        .to_string();
    let r = raw(
        s.addr,
        format!("DELETE /api/connections/{id}?code=4002&reason=kicked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    eventually("b's disconnect hook", || {
        backend.events("disconnect").len() == 2
    })
    .await;
    assert_eq!(backend.events("disconnect")[1].json["code"], 4002);

    // A client that just vanishes: 1006.
    let c = raw_ws(s.addr, "/hooked/c/").await;
    drop(c);
    eventually("c's disconnect hook", || {
        backend.events("disconnect").len() == 3
    })
    .await;
    assert_eq!(backend.events("disconnect")[2].json["code"], 1006);
}

#[tokio::test]
async fn a_message_posted_to_a_connection_reaches_it_alone() {
    let backend = plain_backend().await;
    let s = start(&config(&backend, "")).await;
    let mut a = connect(s.addr, "/hooked/r/").await;
    let mut b = connect(s.addr, "/hooked/r/").await;
    let id = backend.events("connect")[0].json["conn"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(
        s.addr,
        &format!("/api/connections/{id}/messages"),
        Some("text/plain"),
        "只给你".as_bytes(),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(next_text(&mut a).await, "只给你");
    assert_eq!(publish(s.addr, "room:r", "for both").await, 2);
    assert_eq!(
        next_text(&mut b).await,
        "for both",
        "b never got a's message"
    );
    assert_eq!(next_text(&mut a).await, "for both");

    let r = post(
        s.addr,
        "/api/connections/1.999999/messages",
        Some("text/plain"),
        b"x",
        "",
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no connection 1.999999"), "{r:?}");
    let r = post(
        s.addr,
        "/api/connections/nope/messages",
        Some("text/plain"),
        b"x",
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("ids look like"), "{r:?}");
}

#[tokio::test]
async fn a_message_posted_to_a_v1_connection_comes_in_an_envelope() {
    let s = start("").await;
    let mut c = support::v1::connect_v1(s.addr, "/room/v/").await;
    let r = c
        .command(json!({"type": "subscribe", "group": "room:v"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let p = presence(s.addr, "room:v").await;
    let id = p["connections"][0]["id"].as_str().unwrap().to_string();
    let r = post(
        s.addr,
        &format!("/api/connections/{id}/messages"),
        Some("application/json"),
        br#"{"percent":40}"#,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        c.read().await,
        json!({"type": "message", "data": {"percent": 40}})
    );
}

#[tokio::test]
async fn a_multipart_form_publishes_its_text_fields_in_order_and_refuses_files() {
    let s = start("").await;
    let mut ws = connect(s.addr, "/room/form/").await;
    let body = "--B\r\nContent-Disposition: form-data; name=\"line\"\r\n\r\n正在打开数据...\r\n\
--B\r\nContent-Disposition: form-data; name=\"line\"\r\n\r\nrow 1 of 2\r\n--B--\r\n";
    let r = post(
        s.addr,
        "/api/groups/room:form/messages",
        Some("multipart/form-data; boundary=B"),
        body.as_bytes(),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, json!({"recipients": 2, "messages": 2}));
    assert_eq!(next_text(&mut ws).await, "正在打开数据...");
    assert_eq!(next_text(&mut ws).await, "row 1 of 2");

    let upload = "--B\r\nContent-Disposition: form-data; name=\"line\"\r\n\r\nbefore\r\n\
--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.xlsx\"\r\nContent-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\r\n\r\nPK\x03\x04\r\n--B--\r\n";
    let r = post(
        s.addr,
        "/api/groups/room:form/messages",
        Some("multipart/form-data; boundary=B"),
        upload.as_bytes(),
        "",
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.body.contains("file \\\"data.xlsx\\\""), "{r:?}");
    assert!(r.body.contains("not uploads"), "{r:?}");
    // Nothing of the refused form was published.
    assert_eq!(publish(s.addr, "room:form", "after").await, 1);
    assert_eq!(next_text(&mut ws).await, "after");
}

#[tokio::test]
async fn an_answer_over_max_response_bytes_counts_as_a_failed_call() {
    let backend = Backend::start(|_c: Call| async move {
        let pad = "x".repeat(2000);
        ok(json!({"accept": true, "info": {"pad": pad}}))
    })
    .await;
    let s = start(&config(&backend, "max_response_bytes = 1000")).await;
    assert_eq!(
        closed_at_once(s.addr, "/hooked/1/").await,
        Some((1011, "the backend's answer was not understood".to_string()))
    );
    assert_eq!(
        backend.events("connect").len(),
        1,
        "a bad answer is not retried"
    );
}

#[tokio::test]
async fn hook_calls_reuse_a_connection_until_pool_idle_timeout() {
    let backend = plain_backend().await;
    let s = start(&config(&backend, "pool_idle_timeout = \"300ms\"")).await;
    let mut a = connect(s.addr, "/hooked/p/").await;
    for i in 0..5 {
        send_text(&mut a, &format!("m{i}")).await;
    }
    eventually("five messages at the backend", || {
        backend.events("message").len() == 5
    })
    .await;
    assert_eq!(
        backend.connections(),
        1,
        "connect and five messages over one connection"
    );
    // Idle past the pool's timeout: the next call opens a new connection.
    tokio::time::sleep(Duration::from_millis(900)).await;
    send_text(&mut a, "later").await;
    eventually("the sixth message", || backend.events("message").len() == 6).await;
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn a_forward_route_without_a_url_is_a_config_error_naming_the_key() {
    let e = wsgate::config::load_str(
        "t.toml",
        "[[route]]\npath = \"/f/{x}\"\ngroup = \"f:{x}\"\non_message = \"forward\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.toml:4:1: route[0].on_message: \"forward\" needs the backend URL"),
        "{e}"
    );
    let e = wsgate::config::load_str(
        "t.toml",
        "[[route]]\npath = \"/f/{x}\"\ngroup = \"f:{x}\"\nhooks = { on_connect = \"https://x/c\" }\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not an http:// URL"), "{e}");
}
