//! Several wsgate nodes sharing groups through one real `redis-server` (started on a free port
//! by each test and killed at its end): exactly-once delivery across nodes, Redis going away and
//! coming back, a node dying, a client moving to another node, and the config errors.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::v1::{V1Client, connect_v1};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A node on `url` with the default room route (history, replay) plus a presence route.
fn node_toml(url: &str, prefix: &str) -> String {
    format!(
        r#"
[broker]
kind = "redis"
url = "{url}"
prefix = "{prefix}"
presence_ttl = "2s"
timeout = "5s"

[[route]]
path = "/room/{{room}}/"
group = "room:{{room}}"
history = {{ size = 100, ttl = "5m" }}

[[route]]
path = "/here/{{room}}/"
group = "here:{{room}}"
presence = true
"#
    )
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

async fn publish_status(addr: SocketAddr, group: &str, text: &str) -> Reply {
    post(
        addr,
        &format!("/api/groups/{group}/messages"),
        Some("text/plain"),
        text.as_bytes(),
        "",
    )
    .await
}

/// The next publication a v1 client gets: (offset, epoch, data).
async fn next_pub(c: &mut V1Client) -> (u64, String, String) {
    let v = c.next_event().await;
    assert_eq!(v["type"], "pub", "{v}");
    (
        v["offset"].as_u64().expect("an offset"),
        v["epoch"].as_str().expect("an epoch").to_string(),
        v["data"].as_str().expect("text data").to_string(),
    )
}

async fn subscribe_since(c: &mut V1Client, group: &str, epoch: &str, offset: u64) -> Value {
    c.command(json!({
        "type": "subscribe",
        "group": group,
        "since": { "epoch": epoch, "offset": offset }
    }))
    .await
}

/// Opens `n` WebSockets to `path`, spread over `addrs`, at most 64 handshakes at a time.
async fn connect_many(addrs: &[SocketAddr], path: &str, n: usize) -> Vec<Ws> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (addr, sem, path) = (addrs[i % addrs.len()], sem.clone(), path.to_string());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("open semaphore");
            connect(addr, &path).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("connect task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_publish_to_1500_clients_once_in_publisher_order() {
    let redis = RedisServer::start();
    let toml = node_toml(&redis.url(), "n3");
    let nodes = [start(&toml).await, start(&toml).await, start(&toml).await];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    const CLIENTS: usize = 1500;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 50;
    let clients = connect_many(&addrs, "/room/all/", CLIENTS).await;
    let members: usize = nodes.iter().map(|n| n.member_count("room:all")).sum();
    assert_eq!(members, CLIENTS);

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(PUBLISHERS * EACH);
                while got.len() < PUBLISHERS * EACH {
                    got.push(next_text(&mut ws).await);
                }
                // Nothing more may come: each publication exactly once.
                let extra = tokio::time::timeout(Duration::from_millis(300), next(&mut ws)).await;
                (got, extra.ok())
            })
        })
        .collect();

    // Each publisher publishes in sequence (waiting for each answer), through a node chosen at
    // random each time; the publishers run at the same time.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|k| {
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut seed = 0x9e37_79b9_u64.wrapping_mul(k as u64 + 1);
                for seq in 0..EACH {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let addr = addrs[(seed >> 33) as usize % addrs.len()];
                    let r = publish_status(addr, "room:all", &format!("p{k}-{seq:03}")).await;
                    assert_eq!(r.status, 200, "{r:?}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    for r in readers {
        let (got, extra) = r.await.expect("reader");
        assert!(extra.is_none(), "a message after the 200th: {extra:?}");
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), PUBLISHERS * EACH, "each publication once");
        for k in 0..PUBLISHERS {
            let prefix = format!("p{k}-");
            let seqs: Vec<&String> = got.iter().filter(|m| m.starts_with(&prefix)).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "publisher {k} out of order: {seqs:?}"
            );
        }
    }
}

/// Kills Redis under two nodes mid-stream and brings it back: 503 (with a sentence) and
/// `/readyz` not ready while it is down, connected clients stay, nothing is delivered twice.
/// With `aof`, Redis comes back with its data: the stream goes on, and a client away during
/// the outage recovers (`recovered: true`). Without, the history is gone: v1 clients are asked
/// to come back (1012) and learn `recovered: false`; plain clients just go on.
async fn redis_restart_mid_stream(aof: bool) {
    let mut redis = if aof {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    } else {
        RedisServer::start()
    };
    let toml = node_toml(&redis.url(), "rs");
    let (a, b) = (start(&toml).await, start(&toml).await);
    let group = "room:r";
    let mut watcher = connect_v1(b.addr, "/room/r/").await;
    watcher.subscribe(group).await;
    let mut away = connect_v1(b.addr, "/room/r/").await;
    away.subscribe(group).await;
    let mut plain = connect(b.addr, "/room/r/").await;
    for i in 1..=5 {
        let r = publish_status(a.addr, group, &format!("m{i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let mut seen = Vec::new();
    for _ in 1..=5 {
        seen.push(next_pub(&mut watcher).await);
        assert_eq!(next_text(&mut plain).await, format!("m{}", seen.len()));
    }
    let (_, epoch, _) = seen[4].clone();
    for _ in 1..=5 {
        next_pub(&mut away).await;
    }
    drop(away);

    redis.kill();
    let r = publish_status(a.addr, group, "lost").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("cannot reach redis://127.0.0.1:")
            && r.body.contains("nothing was published"),
        "{}",
        r.body
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = get(b.addr, "/readyz").await;
        if ready.status == 503 {
            assert!(
                ready.body.contains("not ready: the broker is unavailable"),
                "{}",
                ready.body
            );
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(b.addr, "/healthz").await.status,
        200,
        "alive while not ready"
    );

    redis.restart();
    for n in [&a, &b] {
        let deadline = Instant::now() + WAIT;
        while get(n.addr, "/readyz").await.status != 200 {
            assert!(Instant::now() < deadline, "not ready again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for i in 6..=10 {
        let r = publish_status(a.addr, group, &format!("m{i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    for i in 6..=10 {
        assert_eq!(
            next_text(&mut plain).await,
            format!("m{i}"),
            "the plain client stays"
        );
    }
    if aof {
        for i in 6..=10u64 {
            let (offset, e, data) = next_pub(&mut watcher).await;
            assert_eq!(
                (offset, e.as_str(), data),
                (i, epoch.as_str(), format!("m{i}"))
            );
        }
        let mut back = connect_v1(a.addr, "/room/r/").await;
        let r = subscribe_since(&mut back, group, &epoch, 5).await;
        assert_eq!(r["recovered"], true, "{r}");
        for i in 6..=10u64 {
            assert_eq!(next_pub(&mut back).await.0, i);
        }
    } else {
        // The watcher is asked to come back; it resubscribes from where it was.
        let close = loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut watcher.ws))
                .await
                .expect("a close within the wait limit")
            {
                Some(Ok(Message::Close(c))) => break c,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_ne!(v["offset"].as_u64(), Some(5), "nothing twice: {v}");
                }
                Some(Ok(_)) => {}
                other => panic!("expected a Close, got {other:?}"),
            }
        };
        let close = close.expect("a close code");
        assert_eq!(u16::from(close.code), 1012, "{close:?}");
        let mut back = connect_v1(b.addr, "/room/r/").await;
        let r = subscribe_since(&mut back, group, &epoch, 5).await;
        assert_eq!(r["recovered"], false, "{r}");
        assert!(r["reason"].as_str().unwrap().contains("epoch"), "{r}");
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), next(&mut plain)).await;
    assert!(extra.is_err(), "nothing delivered twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_data_the_stream_goes_on_and_clients_recover() {
    redis_restart_mid_stream(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_tells_v1_clients_their_history_is_gone() {
    redis_restart_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_to_another_node_recovers_from_its_position() {
    let redis = RedisServer::start();
    let toml = node_toml(&redis.url(), "mv");
    let (a, b) = (start(&toml).await, start(&toml).await);
    let mut c = connect_v1(a.addr, "/room/m/").await;
    c.subscribe("room:m").await;
    for i in 1..=3 {
        assert_eq!(
            publish_status(b.addr, "room:m", &format!("m{i}"))
                .await
                .status,
            200
        );
    }
    let mut last = None;
    for _ in 1..=3 {
        last = Some(next_pub(&mut c).await);
    }
    let (offset, epoch, _) = last.unwrap();
    drop(c);
    for i in 4..=6 {
        assert_eq!(
            publish_status(a.addr, "room:m", &format!("m{i}"))
                .await
                .status,
            200
        );
    }
    let mut c = connect_v1(b.addr, "/room/m/").await;
    let r = subscribe_since(&mut c, "room:m", &epoch, offset).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 6, "{r}");
    for i in 4..=6u64 {
        let (o, _, data) = next_pub(&mut c).await;
        assert_eq!((o, data), (i, format!("m{i}")));
    }
}

/// Two nodes as conformance/browser/nodes.sh starts them: one room route with history,
/// presence and join/leave events.
fn events_toml(url: &str, prefix: &str) -> String {
    format!(
        r#"
[broker]
kind = "redis"
url = "{url}"
prefix = "{prefix}"

[[route]]
path = "/room/{{room}}/"
group = "room:{{room}}"
history = {{ size = 100, ttl = "5m" }}
presence = true
join_leave = true
"#
    )
}

/// The next publication (join and leave events skipped): (offset, data).
async fn next_message(c: &mut V1Client) -> (u64, String) {
    loop {
        let v = c.next_event().await;
        match v["type"].as_str() {
            Some("join" | "leave") => continue,
            Some("pub") => {
                return (
                    v["offset"].as_u64().expect("an offset"),
                    v["data"].as_str().expect("text data").to_string(),
                );
            }
            _ => panic!("expected a publication, got {v}"),
        }
    }
}

async fn subscribe_with_events(c: &mut V1Client, group: &str, name: &str) -> Value {
    c.command(json!({
        "type": "subscribe",
        "group": group,
        "events": true,
        "info": { "name": name }
    }))
    .await
}

async fn v1_publish(c: &mut V1Client, group: &str, data: &str) -> Value {
    c.command(json!({ "type": "publish", "group": group, "data": data }))
        .await
}

/// The two-node browser test's run, repeated: a fresh group, a member on each node, then the
/// first publication at once. Each member gets it once (the publisher too: echo is on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_publication_of_a_fresh_group_reaches_members_on_both_nodes() {
    let redis = RedisServer::start();
    let toml = events_toml(&redis.url(), "fp");
    let (na, nb) = (start(&toml).await, start(&toml).await);
    for round in 0..30 {
        let group = format!("room:first-{round}");
        let path = format!("/room/first-{round}/");
        let mut a = connect_v1(na.addr, &path).await;
        let mut b = connect_v1(nb.addr, &path).await;
        let ra = subscribe_with_events(&mut a, &group, "a").await;
        assert_eq!(
            (ra["type"].as_str(), ra["offset"].as_u64()),
            (Some("ok"), Some(0)),
            "{ra}"
        );
        let rb = subscribe_with_events(&mut b, &group, "b").await;
        assert_eq!(
            (rb["type"].as_str(), rb["offset"].as_u64()),
            (Some("ok"), Some(0)),
            "{rb}"
        );
        let r = v1_publish(&mut a, &group, "hello from a").await;
        assert_eq!(
            (r["type"].as_str(), r["offset"].as_u64()),
            (Some("ok"), Some(1)),
            "round {round}: {r}"
        );
        for c in [&mut a, &mut b] {
            assert_eq!(
                next_message(c).await,
                (1, "hello from a".to_string()),
                "round {round}"
            );
        }
        let r = v1_publish(&mut b, &group, "hello from b").await;
        assert_eq!(r["offset"].as_u64(), Some(2), "round {round}: {r}");
        for c in [&mut a, &mut b] {
            assert_eq!(
                next_message(c).await,
                (2, "hello from b".to_string()),
                "round {round}"
            );
        }
    }
}

/// A publication made while a member on another node is still subscribing is either before the
/// position its subscribe reply gives (not owed to it) or delivered to it: never lost between
/// the two. Whoever awaits the reply gets everything published after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_racing_a_subscribe_on_another_node_is_before_its_position_or_delivered() {
    let redis = RedisServer::start();
    let toml = events_toml(&redis.url(), "fr");
    let (na, nb) = (start(&toml).await, start(&toml).await);
    let (mut before, mut after) = (0, 0);
    for round in 0..30 {
        let group = format!("room:race-{round}");
        let path = format!("/room/race-{round}/");
        let mut a = connect_v1(na.addr, &path).await;
        let mut b = connect_v1(nb.addr, &path).await;
        subscribe_with_events(&mut a, &group, "a").await;
        let (rb, ra) = tokio::join!(
            subscribe_with_events(&mut b, &group, "b"),
            v1_publish(&mut a, &group, "racing")
        );
        assert_eq!(ra["offset"].as_u64(), Some(1), "round {round}: {ra}");
        let from = rb["offset"]
            .as_u64()
            .expect("a position in the subscribe reply");
        assert!(from <= 1, "round {round}: {rb}");
        let r = v1_publish(&mut a, &group, "after").await;
        assert_eq!(r["offset"].as_u64(), Some(2), "round {round}: {r}");
        assert_eq!(next_message(&mut a).await, (1, "racing".to_string()));
        assert_eq!(next_message(&mut a).await, (2, "after".to_string()));
        if from == 0 {
            after += 1;
            assert_eq!(
                next_message(&mut b).await,
                (1, "racing".to_string()),
                "round {round}"
            );
        } else {
            before += 1;
        }
        assert_eq!(
            next_message(&mut b).await,
            (2, "after".to_string()),
            "round {round}"
        );
    }
    eprintln!(
        "the racing publication came before the subscribe {before} times, after it {after} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_presence_vanishes_within_the_ttl_and_the_others_go_on() {
    let redis = RedisServer::start();
    let toml = node_toml(&redis.url(), "pd");
    let dir = std::env::temp_dir().join(format!("wsgate-pd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, &toml).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_wsgate(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        &[],
        port,
    );
    let dead: SocketAddr = listen.parse().unwrap();
    let b = start(&toml).await;
    let _on_dead = connect(dead, "/here/p/").await;
    let mut on_b = connect(b.addr, "/here/p/").await;
    let count = |r: &Reply| -> u64 {
        let v: Value = serde_json::from_str(&r.body).expect("JSON");
        v["count"].as_u64().expect("count")
    };
    let deadline = Instant::now() + WAIT;
    while count(&get(b.addr, "/api/groups/here:p/presence").await) != 2 {
        assert!(Instant::now() < deadline, "both connections in presence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let killed = Instant::now();
    loop {
        let r = get(b.addr, "/api/groups/here:p/presence").await;
        if count(&r) == 1 {
            assert!(r.body.contains(&format!("\"{:x}.", b.node())), "{}", r.body);
            break;
        }
        // presence_ttl is 2 s; a little slack for a busy machine.
        assert!(
            killed.elapsed() < Duration::from_millis(3500),
            "still listed: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publish(b.addr, "here:p", "still here").await, 1);
    assert_eq!(next_text(&mut on_b).await, "still here");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_and_check_config_stop_with_a_sentence_when_redis_cannot_be_reached() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let env = [
        ("WSGATE_BROKER__KIND", "redis"),
        ("WSGATE_BROKER__URL", url.as_str()),
    ];
    let out = wsgate_command(&["check-config", "wsgate.example.toml"], &env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "wsgate.example.toml: broker: cannot reach {url}: "
        )) && err.contains("start Redis there or fix broker.url"),
        "{err}"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let out = wsgate_command(&["serve", "--listen", &listen], &env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("wsgate: cannot reach {url}: ")),
        "{err}"
    );
}
