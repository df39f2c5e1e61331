//! `wsgate doctor --h2`: WebSockets over HTTP/2 (RFC 8441) against wsgate over h2c and over
//! TLS (a test CA passed with --ca), wsgate with HTTP/2 off, a TLS front that only speaks
//! http/1.1 in ALPN, an HTTP/2 server that does not announce extended CONNECT (a hyper server
//! started here), and a path that is not served. The real binary runs; its JSON report is
//! checked step by step, and the human report where the wording matters.

mod support;

use std::convert::Infallible;

use support::doctor::*;
use support::*;

const H2C_PASS: &str = "dns=pass tcp=pass h2=pass settings=pass connect=pass ping=pass close=pass";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_wsgate_passes_every_step_and_exits_0() {
    let srv = start("").await;
    for path in ["/room/x/", "/ws/echo"] {
        let url = format!("ws://{}{path}", srv.addr);
        let (code, report) = doctor_json(&[&url, "--h2"]).await;
        assert_eq!(verdicts(&report), H2C_PASS, "{report:#}");
        assert_eq!((code, &report["ok"]), (0, &true.into()));
        for s in report["steps"].as_array().unwrap() {
            for key in wsgate::doctor::STEP_FIELDS {
                assert!(s.get(key).is_some(), "{key} missing in {s}");
            }
        }
        let h2 = step(&report, "h2");
        assert!(
            text(h2, "detail").starts_with("h2c with prior knowledge (no TLS, so no ALPN"),
            "{h2:#}"
        );
        assert_eq!(h2["facts"]["transport"], "h2c");
        let settings = step(&report, "settings");
        assert_eq!(settings["facts"]["enable_connect_protocol"], true);
        let connect = step(&report, "connect");
        assert_eq!(connect["facts"]["status"], 200);
        assert_has_all(
            connect["facts"]["request"].as_str().unwrap(),
            &[
                ":method: CONNECT\n:protocol: websocket\n:scheme: http\n",
                &format!(":authority: {}\n:path: {path}\n", srv.addr),
                "sec-websocket-version: 13\n",
            ],
        );
        assert!(text(step(&report, "close"), "detail").contains("the server answered Close 1000"));
    }
    // The idle hold runs over the HTTP/2 stream too.
    let url = format!("ws://{}/room/x/", srv.addr);
    let (code, report) = doctor_idle(&url, "1s", &["--h2"]).await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass h2=pass settings=pass connect=pass ping=pass idle=pass close=pass",
        "{report:#}"
    );
    assert_eq!(code, 0);
    assert_eq!(step(&report, "idle")["facts"]["ended"], "open");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_to_wsgate_passes_with_alpn_h2_and_the_test_ca() {
    let pki = Pki::with_days_left(90);
    let dir = TempDir::new("doctor-h2");
    let ca = pki.write_ca(&dir.0);
    let srv = start(&pki.server_tls_toml(&dir.0, "")).await;
    let url = format!("wss://localhost:{}/room/x/", srv.addr.port());
    let (code, report) = doctor_json(&[&url, "--h2", "--ca", &ca]).await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass tls=pass alpn=pass h2=pass settings=pass connect=pass ping=pass close=pass",
        "{report:#}"
    );
    assert_eq!(code, 0);
    assert_eq!(step(&report, "tls")["facts"]["alpn"], "h2");
    assert_eq!(step(&report, "h2")["facts"]["transport"], "h2");
    assert!(
        step(&report, "connect")["facts"]["request"]
            .as_str()
            .unwrap()
            .contains(":scheme: https\n")
    );
    let human = doctor(&[&url, "--h2", "--ca", &ca]).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert_has_all(
        &human.stdout,
        &[
            "PASS  tls      TLS 1.3 (",
            "ALPN h2",
            "PASS  alpn     the server picked h2 (doctor offered h2 and http/1.1, as browsers do)",
            "PASS  h2       HTTP/2 over TLS (ALPN h2); the server sent its SETTINGS",
            "PASS  settings SETTINGS_ENABLE_CONNECT_PROTOCOL = 1",
            "PASS  connect  200: the server opened the WebSocket over HTTP/2",
            "               > :protocol: websocket",
            "               < :status: 200",
            "PASS  ping     Pong in ",
            "\nok: the endpoint works\n",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgate_with_http2_off_fails_at_the_h2_step_with_its_http1_answer() {
    let srv = start("[server.http2]\nenabled = false\n").await;
    let (code, report) = doctor_json(&[&format!("ws://{}/room/x/", srv.addr), "--h2"]).await;
    assert_eq!(verdicts(&report), "dns=pass tcp=pass h2=fail", "{report:#}");
    assert_eq!((code, &report["ok"]), (1, &false.into()));
    let h2 = step(&report, "h2");
    assert_has_all(
        text(h2, "detail"),
        &[
            "h2c with prior knowledge",
            "the server answered in HTTP/1.1 (HTTP/1.1 ",
            "it does not speak HTTP/2 here",
        ],
    );
    assert_has_all(
        text(h2, "hint"),
        &[
            "this port does not take HTTP/2 without TLS (h2c)",
            "check the wss:// URL with --h2",
            "[server.http2] enabled = true",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_front_with_only_http11_in_alpn_fails_at_the_alpn_step() {
    let srv = start("").await;
    let pki = Pki::with_days_left(90);
    let dir = TempDir::new("doctor-h2-alpn");
    let ca = pki.write_ca(&dir.0);
    let front = tls_front(&pki, srv.addr).await;
    let (code, report) = doctor_json(&[
        &format!("wss://localhost:{}/room/x/", front.port()),
        "--h2",
        "--ca",
        &ca,
    ])
    .await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass tls=pass alpn=fail",
        "{report:#}"
    );
    assert_eq!(code, 1);
    let alpn = step(&report, "alpn");
    assert_eq!(alpn["facts"]["alpn"], "http/1.1");
    assert_has_all(
        text(alpn, "detail"),
        &[
            "the server picked http/1.1, not h2",
            "browsers will open WebSockets here over HTTP/1.1, never HTTP/2",
        ],
    );
    assert_has_all(
        text(alpn, "hint"),
        &[
            "the hop that terminates TLS",
            "server.tls.alpn",
            "`listen 443 ssl http2`",
            "nginx has no RFC 8441",
            "run doctor without --h2",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_server_without_extended_connect_fails_at_the_settings_step() {
    let addr = plain_h2c_server().await;
    let (code, report) = doctor_json(&[&format!("ws://{addr}/ws"), "--h2"]).await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass h2=pass settings=fail",
        "{report:#}"
    );
    assert_eq!(code, 1);
    let settings = step(&report, "settings");
    assert_eq!(settings["facts"]["enable_connect_protocol"], false);
    assert_has_all(
        text(settings, "detail"),
        &[
            "did not announce SETTINGS_ENABLE_CONNECT_PROTOCOL = 1",
            "browsers open theirs on a separate HTTP/1.1 connection instead",
        ],
    );
    assert!(text(settings, "hint").contains("run doctor without --h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_not_served_over_h2_is_diagnosed_as_a_404_with_its_body() {
    let srv = start("").await;
    let (code, report) = doctor_json(&[&format!("ws://{}/nope", srv.addr), "--h2"]).await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass h2=pass settings=pass connect=fail",
        "{report:#}"
    );
    assert_eq!(code, 1);
    let connect = step(&report, "connect");
    assert_eq!(connect["facts"]["status"], 404);
    assert_has_all(
        text(connect, "detail"),
        &[
            "404 Not Found where 200 was expected: nothing is served at /nope",
            "> :path: /nope",
            "< :status: 404",
            "< 404 Not Found: nothing is served at /nope.",
        ],
    );
    assert!(text(connect, "hint").contains("check the path in the URL"));
    srv.shutdown().await;
}

/// An h2c server (hyper) that answers every request with 200 and does not enable extended
/// CONNECT, as an HTTP/2 server without RFC 8441 does.
async fn plain_h2c_server() -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("hello\n"))))
                });
                let _ = tokio::time::timeout(
                    WAIT,
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc),
                )
                .await;
            });
        }
    });
    addr
}
