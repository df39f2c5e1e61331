//! Who may connect and call, over real sockets: the JWT matrix at the handshake (valid,
//! expired, wrong signature, wrong group, none; header, cookie and query; HS256, RS256 from a
//! PEM file, ES256 from a JWKS file), expiry while connected (4001 unless refreshed), the origin
//! matrix of the default rule, and the API key matrix.

mod support;

use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::v1::connect_v1;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, exp_in: i64, groups: &[&str]) -> Value {
    json!({ "sub": sub, "exp": (now() as i64 + exp_in) as u64, "groups": groups })
}

const HS_CONFIG: &str = "[jwt]\nsecret = \"a-test-secret-of-32-bytes-length\"\n\n\
[[route]]\npath = \"/room/{room}/\"\ngroup = \"room:{room}\"\nsubscribe = [\"room:*\"]\n\n\
[[route]]\npath = \"/open/{room}\"\ngroup = \"open:{room}\"\nanonymous = true\n";

async fn handshake(addr: std::net::SocketAddr, path: &str, extra: &str) -> Reply {
    raw(addr, &upgrade_request(path, extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_matrix_at_the_handshake() {
    let srv = start(HS_CONFIG).await;
    let ok = hs(claims("ann", 60, &["room:*"]));
    for (what, extra, path) in [
        (
            "header",
            format!("Authorization: Bearer {ok}\r\n"),
            "/room/1/".to_string(),
        ),
        (
            "cookie",
            format!("Cookie: a=b; wsgate_token={ok}\r\n"),
            "/room/1/".to_string(),
        ),
        ("query", String::new(), format!("/room/1/?token={ok}")),
    ] {
        let r = handshake(srv.addr, &path, &extra).await;
        assert_eq!(r.status, 101, "{what}: {r:?}");
    }
    let refusals = [
        (
            "none",
            String::new(),
            "no token: send one in Authorization: Bearer <token>, the cookie wsgate_token or ?token=<token>",
        ),
        (
            "expired",
            format!(
                "Authorization: Bearer {}\r\n",
                hs(claims("ann", -120, &["room:*"]))
            ),
            "token expired at",
        ),
        (
            "wrong signature",
            format!(
                "Authorization: Bearer {}\r\n",
                encode(
                    &Header::new(Algorithm::HS256),
                    &claims("ann", 60, &["room:*"]),
                    &EncodingKey::from_secret(b"another-secret-of-32-bytes-long!"),
                )
                .unwrap()
            ),
            "bad signature",
        ),
        (
            "wrong group",
            format!(
                "Authorization: Bearer {}\r\n",
                hs(claims("ann", 60, &["chat:*"]))
            ),
            "group \"room:1\" not allowed: the token allows \"chat:*\"",
        ),
        (
            "garbage",
            "Authorization: Bearer not.a.jwt\r\n".to_string(),
            "the token is malformed",
        ),
        (
            "no sub",
            format!(
                "Authorization: Bearer {}\r\n",
                hs(json!({ "exp": now() + 60, "groups": ["room:*"] }))
            ),
            "sub",
        ),
    ];
    for (what, extra, want) in refusals {
        let r = handshake(srv.addr, "/room/1/", &extra).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert!(
            r.body.starts_with("401 Unauthorized: "),
            "{what}: {}",
            r.body
        );
        assert!(r.body.contains(want), "{what}: {}", r.body);
        assert!(r.header("www-authenticate").is_some(), "{what}");
    }
    // The anonymous route takes connections without a token, but not a bad one.
    assert_eq!(handshake(srv.addr, "/open/1", "").await.status, 101);
    let r = handshake(srv.addr, "/open/1", "Authorization: Bearer not.a.jwt\r\n").await;
    assert_eq!(r.status, 401);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_user_is_shown_in_presence_and_bounds_v1_groups() {
    let srv = start(HS_CONFIG).await;
    let token = hs(claims("ann", 60, &["room:1", "room:2"]));
    let mut c = connect_v1(srv.addr, &format!("/room/1/?token={token}")).await;
    let r = c.subscribe("room:1").await;
    assert_eq!(r["type"], "ok", "{r}");
    let r = c
        .command(json!({"type": "subscribe", "group": "room:3"}))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], 403, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("the token allows \"room:1\", \"room:2\""),
        "{r}"
    );
    let p = c
        .command(json!({"type": "presence", "group": "room:1"}))
        .await;
    assert_eq!(p["connections"][0]["user"], "ann", "{p}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_from_a_pem_file_and_es256_from_a_jwks_file() {
    let dir = std::env::temp_dir().join(format!("wsgate-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    // ES256: a P-256 key made now, published as a JWK with a key id.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = ec.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();

    let srv = start(&format!(
        "[jwt]\npublic_key = \"{fixtures}/rsa.pub\"\njwks = {:?}\n",
        jwks_path.display().to_string()
    ))
    .await;
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims("rsa-user", 60, &["room:*"]),
        &EncodingKey::from_rsa_pem(&std::fs::read(format!("{fixtures}/rsa.key")).unwrap()).unwrap(),
    )
    .unwrap();
    let r = handshake(
        srv.addr,
        "/room/1/",
        &format!("Authorization: Bearer {rs}\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "RS256: {r:?}");

    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let es_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let es = encode(&h, &claims("ec-user", 60, &["room:*"]), &es_key).unwrap();
    let r = handshake(
        srv.addr,
        "/room/1/",
        &format!("Authorization: Bearer {es}\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "ES256 from JWKS: {r:?}");

    h.kid = Some("k2".into());
    let unknown = encode(&h, &claims("ec-user", 60, &["room:*"]), &es_key).unwrap();
    let r = handshake(
        srv.addr,
        "/room/1/",
        &format!("Authorization: Bearer {unknown}\r\n"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("key id \"k2\""), "{}", r.body);

    // HS256 is not configured here: a token signed with a secret is refused, saying what is.
    let r = handshake(
        srv.addr,
        "/room/1/",
        &format!(
            "Authorization: Bearer {}\r\n",
            hs(claims("x", 60, &["room:*"]))
        ),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.body.contains("HS256") && r.body.contains("RS256, ES256"),
        "{}",
        r.body
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_with_4001_unless_refreshed() {
    let srv = start(HS_CONFIG).await;
    let short = hs(claims("ann", 2, &["room:*"]));
    let mut plain = connect(srv.addr, &format!("/room/1/?token={short}")).await;
    let mut v1 = connect_v1(srv.addr, &format!("/room/2/?token={short}")).await;
    let fresh = hs(claims("ann", 120, &["room:*"]));
    let r = v1.command(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(r["type"], "ok", "{r}");
    assert!(r["exp"].as_u64().unwrap() > now() + 60, "{r}");
    // Another user's token is not a refresh.
    let other = hs(claims("bob", 120, &["room:*"]));
    let r = v1.command(json!({"type": "refresh", "token": other})).await;
    assert_eq!(r["code"], 401, "{r}");

    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match plain.next().await {
                Some(Ok(Message::Close(Some(f)))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("expected a Close, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed when the token expired");
    assert_eq!(closed.code, CloseCode::from(4001));
    assert_eq!(closed.reason.as_str(), "token expired");
    // The refreshed connection is still served.
    let r = v1.subscribe("room:2").await;
    assert_eq!(r["type"], "ok", "{r}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_matrix_of_the_default_rule() {
    let srv = start("").await;
    let host = format!("{}", srv.addr);
    let req = |origin: Option<&str>| {
        let o = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!(
            "GET /room/1/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{o}\r\n"
        )
    };
    for (origin, want) in [
        (Some(format!("http://{host}")), 101),
        (Some("http://localhost:3000".to_string()), 101),
        (Some("https://evil.example".to_string()), 403),
        (Some("null".to_string()), 403),
        (None, 101),
    ] {
        let r = raw(srv.addr, req(origin.as_deref()).as_bytes()).await;
        assert_eq!(r.status, want, "{origin:?}: {r:?}");
        if want == 403 {
            let o = origin.unwrap();
            assert!(r.body.contains(&format!("{o:?}")), "{}", r.body);
            assert!(r.body.contains("websocket.allowed_origins"), "{}", r.body);
        }
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_matrix() {
    // No key configured: loopback callers pass; a caller relayed by a proxy is not loopback.
    let srv = start("").await;
    let r = post(
        srv.addr,
        "/api/groups/g/messages",
        Some("text/plain"),
        b"x",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post(
        srv.addr,
        "/api/groups/g/messages",
        Some("text/plain"),
        b"x",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("203.0.113.7") && r.body.contains("api.tokens"),
        "{}",
        r.body
    );
    srv.shutdown().await;

    let srv =
        start("[api]\ntokens = [\"key-one\", \"key-two\"]\npublish_tokens = [\"pub-only\"]\n")
            .await;
    for (auth, path, method, want) in [
        ("", "/api/groups/g/messages", "POST", 401),
        (
            "Authorization: Bearer wrong\r\n",
            "/api/groups/g/messages",
            "POST",
            401,
        ),
        (
            "Authorization: Bearer key-one\r\n",
            "/api/groups/g/messages",
            "POST",
            200,
        ),
        (
            "Authorization: Bearer key-two\r\n",
            "/api/groups/g/presence",
            "GET",
            200,
        ),
        (
            "Authorization: Bearer pub-only\r\n",
            "/api/groups/g/messages",
            "POST",
            200,
        ),
        (
            "Authorization: Bearer pub-only\r\n",
            "/api/groups/g/presence",
            "GET",
            403,
        ),
    ] {
        let r = if method == "POST" {
            post(srv.addr, path, Some("text/plain"), b"x", auth).await
        } else {
            raw(
                srv.addr,
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n")
                    .as_bytes(),
            )
            .await
        };
        assert_eq!(r.status, want, "{auth:?} {path}: {r:?}");
        if want != 200 {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            assert!(!v["error"].as_str().unwrap().is_empty());
        }
    }
    srv.shutdown().await;
}
