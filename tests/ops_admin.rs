//! The admin listener: health and readiness, groups, a group's connections, one connection's
//! details, disconnecting one with a code, publishing, health of upstreams, the key.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn get(addr: SocketAddr, path: &str, auth: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

fn json(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n[[route]]\npath = \"/room/{room}/\"\ngroup = \"room:{room}\"\npresence = true\n[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n";

#[tokio::test]
async fn healthz_and_readyz_answer_and_readyz_turns_503_during_the_drain() {
    let srv = start(&format!(
        "{ADMIN}[server]\nshutdown_grace = \"5s\"\n[websocket]\nclose_timeout = \"4s\"\n"
    ))
    .await;
    let admin = srv.admin_addr.expect("an admin listener");
    let h = get(admin, "/healthz", "").await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(json(&h)["status"], "ok");
    let r = get(admin, "/readyz", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["ready"], true);
    // A client that never answers our Close keeps the drain going for close_timeout.
    let _silent = raw_ws(srv.addr, "/room/drain/").await;
    eventually("a member", || srv.member_count("room:drain") == 1).await;
    let stop = tokio::spawn(srv.shutdown());
    let mut during = None;
    for _ in 0..100 {
        let r = get(admin, "/readyz", "").await;
        if r.status == 503 {
            during = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let during = during.expect("/readyz turns 503 once shutdown begins");
    assert!(
        json(&during)["reason"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{}",
        during.body
    );
    assert_eq!(
        get(admin, "/healthz", "").await.status,
        200,
        "alive while draining"
    );
    let _ = stop.await;
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(closed, "the admin listener stops with the server");
}

#[tokio::test]
async fn groups_members_details_and_disconnect_with_a_code() {
    let srv = start(ADMIN).await;
    let admin = srv.admin_addr.unwrap();
    let mut a = connect(srv.addr, "/room/lobby/").await;
    let _b = connect(srv.addr, "/room/lobby/").await;
    let _c = connect(srv.addr, "/room/other/").await;
    eventually("three members", || srv.member_count("room:lobby") == 2).await;

    let g = json(&get(admin, "/api/groups", "").await);
    assert_eq!(g["count"], 2, "{g}");
    assert_eq!(g["groups"][0]["group"], "room:lobby");
    assert_eq!(g["groups"][0]["members"], 2);
    assert_eq!(g["groups"][1]["group"], "room:other");
    assert_eq!(g["groups"][1]["members"], 1);

    let lobby = json(&get(admin, "/api/groups/room:lobby", "").await);
    assert_eq!(lobby["members"], 2, "{lobby}");
    assert_eq!(lobby["presence"].as_array().unwrap().len(), 2, "{lobby}");
    let id = lobby["connections"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(lobby["connections"][0]["protocol"], "raw");

    let d = get(admin, &format!("/api/connections/{id}"), "").await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = json(&d);
    assert_eq!(d["groups"], serde_json::json!(["room:lobby"]));
    assert_eq!(d["closing"], false);
    assert!(d["send_queue_bytes"].as_u64().unwrap() > 0);

    let missing = get(admin, "/api/groups/room:nobody", "").await;
    assert_eq!(missing.status, 404);
    assert!(
        json(&missing)["error"]
            .as_str()
            .unwrap()
            .contains("no members")
    );

    // Disconnect the first member of the lobby with 4001; whichever socket it is gets it.
    let del = format!(
        "DELETE /api/connections/{id}?code=4001&reason=bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let r = raw(admin, del.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["code"], 4001);
    eventually("one lobby member left", || {
        srv.member_count("room:lobby") == 1
    })
    .await;
    // The publish API's rules apply: a bad code is refused with a sentence.
    let bad = format!(
        "DELETE /api/connections/{id}?code=99 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let r = raw(admin, bad.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Publishing through the admin API reaches the remaining member(s).
    let body = r#"{"group": "room:lobby", "data": "from the console"}"#;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(admin, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["local_recipients"], 1);
    let _ = &mut a;
}

#[tokio::test]
async fn the_disconnected_client_gets_the_code_and_reason() {
    let srv = start(ADMIN).await;
    let admin = srv.admin_addr.unwrap();
    let mut ws = connect(srv.addr, "/room/solo/").await;
    eventually("a member", || srv.member_count("room:solo") == 1).await;
    let lobby = json(&get(admin, "/api/groups/room:solo", "").await);
    let id = lobby["connections"][0]["id"].as_str().unwrap().to_string();
    let del = format!(
        "DELETE /api/connections/{id}?code=4003&reason=maintenance HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(admin, del.as_bytes()).await.status, 200);
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4003);
            assert_eq!(f.reason.as_str(), "maintenance");
        }
        other => panic!("expected a Close, got {other:?}"),
    }
}

#[tokio::test]
async fn health_lists_the_broker_and_every_upstream_server() {
    let srv = start(ADMIN).await;
    let admin = srv.admin_addr.unwrap();
    let h = json(&get(admin, "/api/health", "").await);
    assert_eq!(h["broker"]["kind"], "memory");
    assert_eq!(h["broker"]["up"], true);
    assert_eq!(h["ready"], true);
    assert_eq!(h["upstreams"][0]["name"], "app");
    assert_eq!(h["upstreams"][0]["servers"][0]["addr"], "127.0.0.1:9");
    let stats = json(&get(admin, "/api/stats", "").await);
    assert!(stats["uptime_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(stats["connections"], 0);
    let m = get(admin, "/metrics", "").await;
    assert!(m.body.contains("wsgate_ws_handshakes_total"), "{}", m.body);
    let nf = get(admin, "/nope", "").await;
    assert_eq!(nf.status, 404);
    assert!(json(&nf)["error"].as_str().unwrap().contains("/api/groups"));
}

#[tokio::test]
async fn with_a_key_the_api_needs_the_bearer_but_probes_and_the_page_do_not() {
    let srv = start("[admin]\nlisten = \"127.0.0.1:0\"\napi_key = \"s3cret\"\n").await;
    let admin = srv.admin_addr.unwrap();
    let none = get(admin, "/api/groups", "").await;
    assert_eq!(none.status, 401);
    assert!(
        none.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    assert!(json(&none)["error"].as_str().unwrap().contains("Bearer"));
    let wrong = get(admin, "/api/groups", "Authorization: Bearer nope\r\n").await;
    assert_eq!(wrong.status, 401);
    let ok = get(admin, "/api/groups", "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(get(admin, "/healthz", "").await.status, 200);
    assert_eq!(get(admin, "/readyz", "").await.status, 200);
    let page = get(admin, "/", "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("wsgate console"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
}

#[test]
fn a_public_admin_listener_without_a_key_is_a_config_error() {
    let e = wsgate::config::load_str("t.toml", "[admin]\nlisten = \"0.0.0.0:9090\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("t.toml:2:"), "{e}");
    assert!(e.contains("admin.api_key"), "{e}");
    wsgate::config::load_str(
        "t.toml",
        "[admin]\nlisten = \"0.0.0.0:9090\"\napi_key = \"k\"\n",
        &[],
    )
    .expect("a key makes it valid");
    wsgate::config::load_str("t.toml", "[admin]\nlisten = \"127.0.0.1:9090\"\n", &[])
        .expect("loopback needs no key");
}
