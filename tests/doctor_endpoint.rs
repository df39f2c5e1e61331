//! `wsgate doctor` against real sockets: wsgate itself, a proxy that strips the upgrade headers,
//! servers that answer a bad 101, a redirect, a 404, refused origins and subprotocols, a closed
//! port, an unknown host and a silent server. The real binary runs; its JSON report is checked
//! step by step, and the human report where the wording matters.

mod support;

use std::time::Duration;

use support::doctor::*;
use support::*;

const ALL_PASS: &str = "dns=pass tcp=pass upgrade=pass ping=pass close=pass";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgate_hub_and_echo_routes_pass_every_step_and_exit_0() {
    let srv = start("").await;
    for path in ["/room/x/", "/ws/echo"] {
        let url = format!("ws://{}{path}", srv.addr);
        let (code, report) = doctor_json(&[&url]).await;
        assert_eq!(verdicts(&report), ALL_PASS, "{report:#}");
        assert_eq!(
            (code, &report["ok"], &report["url"]),
            (0, &true.into(), &url.clone().into())
        );
        for s in report["steps"].as_array().unwrap() {
            for key in wsgate::doctor::STEP_FIELDS {
                assert!(s.get(key).is_some(), "{key} missing in {s}");
            }
            assert_eq!(s["url"], url.as_str());
            assert!(s["hint"].is_null(), "a passing step has no fix: {s}");
        }
        let up = step(&report, "upgrade");
        assert_eq!(up["facts"]["status"], 101);
        assert!(
            text(up, "detail").starts_with("101 Switching Protocols, Sec-WebSocket-Accept valid")
        );
        assert!(text(step(&report, "close"), "detail").contains("the server answered Close 1000"));
    }
    let human = doctor(&[&format!("ws://{}/room/x/", srv.addr)]).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert_has_all(
        &human.stdout,
        &[
            "PASS  dns      127.0.0.1 is an IP address; no lookup needed",
            "PASS  tcp      connected to 127.0.0.1:",
            "PASS  upgrade  101 Switching Protocols",
            "               > GET /room/x/ HTTP/1.1",
            "               < HTTP/1.1 101 Switching Protocols",
            "PASS  ping     Pong in ",
            "\nok: the endpoint works\n",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_strips_upgrade_headers_is_blamed_with_the_nginx_fix() {
    let srv = start("").await;
    let proxy = strip_proxy(srv.addr).await;
    let url = format!("ws://{proxy}/room/x/");
    let up = &refused_upgrade(&[&url]).await;
    assert_eq!(up["facts"]["status"], 426);
    assert_has_all(
        text(up, "detail"),
        &[
            "426 Upgrade Required where 101 was expected: the upgrade headers were lost on the way\n",
            "doctor sent Upgrade: websocket and Connection: Upgrade, but wsgate, which answered, got the request without them",
            "a proxy or load balancer between doctor and it most likely removed them",
            "hop-by-hop headers (RFC 9110 section 7.6.1)",
            "answered by wsgate (by its body)",
            "< 426 Upgrade Required: /room/x/ is a WebSocket endpoint",
        ],
    );
    assert_has_all(
        text(up, "hint"),
        &[
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection \"upgrade\";",
            "Caddy: reverse_proxy passes upgrades by default",
            "timeout tunnel",
            "wsgate: zero config",
        ],
    );
    let human = doctor(&[&url]).await;
    assert_eq!(human.code, 1);
    assert_has_all(
        &human.stdout,
        &[
            "FAIL  upgrade  426 Upgrade Required where 101 was expected: the upgrade headers were lost on the way\n",
            "      fix:     nginx: in the location that proxies to the WebSocket server add",
            "                   proxy_set_header Upgrade $http_upgrade;",
            "\nnot ok: upgrade failed",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgate_in_front_passes_on_what_its_upstream_did_wrong() {
    // wsgate (proxy) -> a hop that strips the upgrade headers -> wsgate (hub), which answers 426.
    let hub = start("").await;
    let stripper = strip_proxy(hub.addr).await;
    let front = start(&format!(
        "[websocket]\necho_path = \"\"\n[[upstream]]\nname = \"app\"\nservers = [\"{stripper}\"]\n\
[[route]]\npath_prefix = \"/\"\nproxy_pass = \"app\"\n"
    ))
    .await;
    let up = &refused_upgrade(&[&format!("ws://{}/room/x/", front.addr)]).await;
    assert_eq!(up["facts"]["status"], 426);
    assert_has_all(
        text(up, "detail"),
        &[
            "wsgate in front forwarded the upgrade with Upgrade and Connection, and says: the upstream answered 426",
            "answered by wsgate (by its X-Wsgate-Diagnosis header)",
        ],
    );
    let hint = text(up, "hint");
    assert!(
        hint.contains("proxy_set_header Upgrade $http_upgrade;"),
        "{hint}"
    );
    assert!(
        !hint.contains("wsgate: zero config"),
        "wsgate is already in front: {hint}"
    );
    front.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_a_wrong_accept_fails_the_upgrade_and_stops_there() {
    let (addr, served) = answering_server(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            .into(),
    )
    .await;
    let up = &refused_upgrade(&[&format!("ws://{addr}/ws")]).await;
    assert_has_all(
        text(up, "detail"),
        &[
            "101 Switching Protocols, but its Sec-WebSocket-Accept is \"AAAAAAAAAAAAAAAAAAAAAAAAAAA=\" where",
        ],
    );
    assert_has_all(
        text(up, "hint"),
        &[
            "browsers drop such a connection",
            "A hop replaced Sec-WebSocket-Key",
        ],
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_says_where_it_points_and_is_followed_with_follow() {
    let srv = start("").await;
    let target = format!("ws://{}/room/x/", srv.addr);
    let (addr, _) = answering_server(format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    let url = format!("ws://{addr}/old/");
    let up = &refused_upgrade(&[&url]).await;
    assert_eq!(up["facts"]["location"], target.as_str());
    assert!(
        text(up, "detail").starts_with(&format!("301 Moved Permanently: redirects to {target}."))
    );
    assert_has_all(
        text(up, "hint"),
        &[
            "browsers do not follow redirects for WebSockets",
            "run doctor with --follow",
        ],
    );

    let (code, report) = doctor_json(&[&url, "--follow"]).await;
    assert_eq!(
        verdicts(&report),
        format!("dns=pass tcp=pass upgrade=fail {ALL_PASS}"),
        "{report:#}"
    );
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps[2]["url"], url.as_str());
    assert_eq!(steps[5]["url"], target.as_str());
    assert!(text(&steps[2], "hint").contains("doctor follows it below"));
    // The URL given still does not work for a browser.
    assert_eq!((code, &report["ok"]), (1, &false.into()));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_stopped() {
    let (addr, served) = answering_server(
        "HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n".into(),
    )
    .await;
    let (code, report) = doctor_json(&[&format!("ws://{addr}/again"), "--follow"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass upgrade=fail redirect=fail"
    );
    assert!(text(step(&report, "redirect"), "detail").contains("a redirect loop"));
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_names_the_path_and_shows_what_the_server_lists() {
    let srv = start("").await;
    let up = &refused_upgrade(&[&format!("ws://{}/chat/1/", srv.addr)]).await;
    assert_eq!(up["facts"]["status"], 404);
    assert_has_all(
        text(up, "detail"),
        &[
            "404 Not Found where 101 was expected: nothing is served at /chat/1/",
            "< WebSocket routes:",
            "<   /room/{room}/  (broadcast to its group)",
        ],
    );
    assert!(text(up, "hint").starts_with("check the path in the URL"));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_refusal_names_the_origin_and_the_setting() {
    let srv = start("[websocket]\nallowed_origins = [\"https://app.example.com\"]\n").await;
    let url = format!("ws://{}/room/x/", srv.addr);
    let up = &refused_upgrade(&[&url, "--origin", "https://evil.example"]).await;
    assert_eq!(up["facts"]["status"], 403);
    assert!(text(up, "detail").starts_with(
        "403 Forbidden where 101 was expected: the server refused the Origin doctor sent (https://evil.example)"
    ));
    assert_has_all(
        text(up, "hint"),
        &[
            "allow https://evil.example on the server",
            "websocket.allowed_origins",
        ],
    );
    assert!(
        up["facts"]["request"]
            .as_str()
            .unwrap()
            .contains("\r\nOrigin: https://evil.example\r\n")
    );

    let (code, report) = doctor_json(&[&url, "--origin", "https://app.example.com"]).await;
    assert_eq!((code, verdicts(&report).as_str()), (0, ALL_PASS));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subprotocol_is_reported_and_an_accepted_one_named() {
    let srv = start(
        "[[route]]\npath = \"/feed/{id}\"\ngroup = \"feed:{id}\"\nsubprotocols = [\"v2.feed\"]\n",
    )
    .await;
    let url = format!("ws://{}/feed/1", srv.addr);
    let up = &refused_upgrade(&[&url, "--subprotocol", "v9.feed"]).await;
    assert!(text(up, "detail").starts_with(
        "101 Switching Protocols, but it chose no subprotocol although doctor offered v9.feed"
    ));
    assert_has_all(
        text(up, "hint"),
        &[
            "subprotocols = [\"v9.feed\"]",
            "Chrome fails such a connection",
        ],
    );

    let (code, report) =
        doctor_json(&[&url, "--subprotocol", "v9.feed", "--subprotocol", "v2.feed"]).await;
    assert_eq!((code, verdicts(&report).as_str()), (0, ALL_PASS));
    assert!(
        text(step(&report, "upgrade"), "detail")
            .starts_with("101 Switching Protocols, subprotocol v2.feed")
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_tcp_and_says_nothing_listens() {
    let addr = upstream::dead_addr().await;
    let (code, report) = doctor_json(&[&format!("ws://{addr}/")]).await;
    assert_eq!((code, verdicts(&report).as_str()), (1, "dns=pass tcp=fail"));
    let tcp = step(&report, "tcp");
    assert_eq!(tcp["facts"]["refused"], true);
    assert!(text(tcp, "detail").contains(&format!("{addr}: connection refused")));
    assert!(
        text(tcp, "hint").starts_with(&format!("nothing listens on port {} there", addr.port()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_fails_dns() {
    let (code, report) = doctor_json(&["wss://no-such-host.doctor.invalid/ws"]).await;
    assert_eq!((code, verdicts(&report).as_str()), (1, "dns=fail"));
    let dns = step(&report, "dns");
    assert!(
        text(dns, "detail").starts_with("cannot resolve no-such-host.doctor.invalid")
            || text(dns, "detail").starts_with("no answer for no-such-host.doctor.invalid"),
        "{dns}"
    );
    assert!(text(dns, "hint").contains("getent hosts NAME"), "{dns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_cut_at_the_step_timeout() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            conns.push(s);
        }
    });
    let started = std::time::Instant::now();
    let up = &refused_upgrade(&[&format!("ws://{addr}/"), "--timeout", "500ms"]).await;
    let took = started.elapsed();
    assert!(text(up, "detail").starts_with("no answer to the upgrade request within the timeout"));
    assert!(text(up, "hint").contains("A TLS port waits silently"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_say_what_to_write() {
    let run = doctor(&["ftp://example.com/"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("use ws://, wss://, http:// or https://"),
        "{}",
        run.stderr
    );
    // --h2 is no usage error: the diagnosis runs, and stops where the endpoint fails.
    let run = doctor(&["ws://127.0.0.1:1/", "--h2"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("FAIL  tcp"), "{}", run.stdout);
    let run = doctor(&["ws://127.0.0.1:1/", "--ca", "/nonexistent/ca.pem"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("--ca /nonexistent/ca.pem: cannot read it"),
        "{}",
        run.stderr
    );
    let run = doctor(&["ws://127.0.0.1:1/", "--idle-probe", "75"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("write \"75s\" for seconds"),
        "{}",
        run.stderr
    );
}
