//! `wsgate doctor` over TLS: a test CA and leaf made with rcgen, a tokio-rustls front written
//! here that terminates TLS and forwards to wsgate. Verified with `--ca`, refused without it
//! (unknown issuer), expired, expiring soon, and TLS spoken to a plain port.

mod support;

use support::doctor::*;
use support::*;
use wsgate::app::Running;

/// wsgate behind a TLS front whose leaf has `days_left` days left, and the test CA written to
/// a file (in the returned dir).
struct Setup {
    srv: Running,
    front: std::net::SocketAddr,
    ca: String,
    _dir: TempDir,
}

async fn setup(days_left: i64) -> Setup {
    let srv = start("").await;
    let pki = Pki::with_days_left(days_left);
    let dir = TempDir::new("doctor-tls");
    let ca = pki.write_ca(&dir.0);
    let front = tls_front(&pki, srv.addr).await;
    Setup {
        srv,
        front,
        ca,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_passes_with_the_test_ca() {
    let Setup {
        srv,
        front,
        ca,
        _dir,
    } = setup(90).await;
    for host in ["127.0.0.1".to_string(), "localhost".to_string()] {
        let url = format!("wss://{host}:{}/room/x/", front.port());
        let (code, report) = doctor_json(&[&url, "--ca", &ca]).await;
        assert_eq!(
            verdicts(&report),
            "dns=pass tcp=pass tls=pass upgrade=pass ping=pass close=pass",
            "{report:#}"
        );
        assert_eq!(code, 0);
        let tls = step(&report, "tls");
        assert_eq!(tls["facts"]["tls_version"], "TLS 1.3");
        assert_eq!(tls["facts"]["alpn"], "http/1.1");
        assert_eq!(tls["facts"]["verified"], true);
        assert_eq!(tls["facts"]["days_left"], 90);
        assert_has_all(
            text(tls, "detail"),
            &[
                "TLS 1.3 (TLS13_",
                "ALPN http/1.1",
                "certificate for localhost, 127.0.0.1 (subject CN=localhost), valid until ",
                "(90 day(s) left)",
                "issued by CN=wsgate doctor test CA",
                &format!("chain verified against the CA in {ca}"),
            ],
        );
        let up = step(&report, "upgrade");
        assert!(
            up["facts"]["request"]
                .as_str()
                .unwrap()
                .contains(&format!("\r\nHost: {host}:{}\r\n", front.port()))
        );
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_chain_fails_as_an_unknown_issuer_with_a_hint() {
    let Setup { srv, front, .. } = setup(90).await;
    let (code, report) = doctor_json(&[&format!("wss://127.0.0.1:{}/room/x/", front.port())]).await;
    // A browser stops at the certificate; doctor goes on to say the rest works.
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass tls=fail upgrade=pass ping=pass close=pass",
        "{report:#}"
    );
    assert_eq!((code, &report["ok"]), (1, &false.into()));
    let tls = step(&report, "tls");
    assert_eq!(tls["facts"]["verified"], false);
    assert_has_all(
        text(tls, "detail"),
        &[
            "chain NOT verified: not issued by a CA in this machine's",
            "(unknown issuer); a browser stops here",
        ],
    );
    assert_has_all(
        text(tls, "hint"),
        &[
            "pass --ca FILE with that CA's certificate",
            "configure the full chain",
        ],
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_reported_as_expired() {
    let Setup {
        srv,
        front,
        ca,
        _dir,
    } = setup(-3).await;
    let (code, report) = doctor_json(&[
        &format!("wss://localhost:{}/room/x/", front.port()),
        "--ca",
        &ca,
    ])
    .await;
    assert_eq!(code, 1);
    let tls = step(&report, "tls");
    assert_eq!(tls["verdict"], "fail", "{tls:#}");
    assert_eq!(tls["facts"]["days_left"], -3);
    assert_has_all(
        text(tls, "detail"),
        &[
            "EXPIRED on ",
            "(3 day(s) ago)",
            "chain NOT verified: the certificate has expired",
        ],
    );
    assert!(
        text(tls, "hint").starts_with("renew the certificate"),
        "{tls:#}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_soon_is_a_warning() {
    let Setup {
        srv,
        front,
        ca,
        _dir,
    } = setup(5).await;
    let (code, report) = doctor_json(&[
        &format!("wss://127.0.0.1:{}/room/x/", front.port()),
        "--ca",
        &ca,
    ])
    .await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass tls=warn upgrade=pass ping=pass close=pass"
    );
    assert_eq!(code, 0);
    assert!(text(step(&report, "tls"), "hint").starts_with("renew the certificate before "));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_port_says_to_use_ws() {
    // wsgate waits (silently, up to its handshake_timeout) for a request head that a ClientHello
    // never completes, so the TLS step runs into doctor's timeout.
    let srv = start("").await;
    let (code, report) =
        doctor_json(&[&format!("wss://{}/room/x/", srv.addr), "--timeout", "1s"]).await;
    assert_eq!(
        (code, verdicts(&report).as_str()),
        (1, "dns=pass tcp=pass tls=fail")
    );
    let tls = step(&report, "tls");
    assert_eq!(text(tls, "detail"), "no TLS answer within 1.0 s");
    assert!(
        text(tls, "hint").starts_with(
            "the port may speak plain HTTP, which waits silently for a request: try ws://"
        ),
        "{tls:#}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_port_that_answers_plain_http_says_to_use_ws() {
    // An HTTP server that answers a garbled request head (the ClientHello) with 400 at once.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let (code, report) = doctor_json(&[&format!("wss://{addr}/")]).await;
    assert_eq!(
        (code, verdicts(&report).as_str()),
        (1, "dns=pass tcp=pass tls=fail")
    );
    let tls = step(&report, "tls");
    assert!(
        text(tls, "detail").starts_with("the server did not answer with TLS"),
        "{tls:#}"
    );
    assert!(
        text(tls, "hint").starts_with(&format!(
            "port {} does not speak TLS here: use ws://",
            addr.port()
        )),
        "{tls:#}"
    );
}
