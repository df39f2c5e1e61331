//! TLS toward upstreams (`https://host:port` servers, `[upstream.tls]`), over real sockets: a
//! TLS front made at test time (rcgen certificates, tokio-rustls) decrypts and forwards to the
//! plain test upstreams, so what the upstream saw proves the bytes went through TLS. Plain HTTP
//! and WebSocket echo, every failure a 502 saying what to change (CA, name, expiry, a port that
//! does not speak TLS, a client certificate), SNI and `server_name`, mutual TLS, injected
//! Pings on a TLS tunnel, and active health checks over TLS.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::doctor::TempDir;
use support::upstream::{WsOptions, echo_http, ws_echo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A test CA that signs server and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its key, as rustls and as PEM.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A server certificate for `names`, valid until `days_left` days from now (negative:
    /// expired).
    fn server(&self, names: &[&str], days_left: i64) -> Leaf {
        self.leaf(names, days_left, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self) -> Leaf {
        self.leaf(&["wsgate-client"], 30, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], days_left: i64, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let at = |secs: i64| {
            x509_parser::time::ASN1Time::from_timestamp(secs)
                .unwrap()
                .to_datetime()
        };
        p.not_before = at(now() - 400 * 86_400);
        p.not_after = at(now() + days_left * 86_400);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p.display().to_string()
    }
}

impl Leaf {
    /// Writes `name.pem` and `name.key`; returns their paths.
    fn write(&self, dir: &Path, name: &str) -> (String, String) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// What the TLS front saw.
#[derive(Default)]
struct Front {
    /// Handshakes completed.
    handshakes: AtomicUsize,
    /// The SNI of each completed handshake ("" when none was sent).
    names: Mutex<Vec<String>>,
    /// While set, new connections are dropped before the handshake and open ones are cut (a
    /// server going down).
    refuse: AtomicBool,
}

/// A TLS server with `leaf` (asking for a client certificate issued by `client_ca` when given)
/// that forwards the decrypted bytes to `upstream`.
async fn tls_front(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    upstream: SocketAddr,
) -> (SocketAddr, Arc<Front>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let der =
                <CertificateDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
                    ca.pem.as_bytes(),
                )
                .unwrap();
            roots.add(der).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
    };
    let mut config = b
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let front = Arc::new(Front::default());
    let f = front.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            if f.refuse.load(Ordering::Relaxed) {
                drop(tcp);
                continue;
            }
            let (acceptor, f) = (acceptor.clone(), f.clone());
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await else {
                    return;
                };
                f.handshakes.fetch_add(1, Ordering::Relaxed);
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                f.names.lock().unwrap().push(sni);
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let cut = async {
                    while !f.refuse.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut tls, &mut up) => {}
                    () = cut => {}
                }
            });
        }
    });
    (addr, front)
}

/// wsgate proxying every path to upstream "app" at `server` with `tls` as its `[upstream.tls]`
/// table body; `extra` goes in the `[[upstream]]` table.
fn config(server: &str, tls: &str, extra: &str, top: &str) -> String {
    format!(
        "{top}\n[websocket]\necho_path = \"\"\n[[upstream]]\nname = \"app\"\nservers = [\"{server}\"]\n{extra}\n\
[upstream.tls]\n{tls}\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"app\"\n"
    )
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

async fn upgrade(addr: SocketAddr, path: &str) -> Reply {
    raw(addr, &upgrade_request(path, "")).await
}

/// The 502 names the upstream, the server, what failed and the key to change.
fn assert_502(r: &Reply, server: SocketAddr, wants: &[&str]) {
    assert_eq!(r.status, 502, "{r:?}");
    let mut all = vec!["upstream \"app\"", "over TLS"];
    let server = server.to_string();
    all.push(&server);
    all.extend_from_slice(wants);
    assert_has_all(&r.body, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_websocket_go_over_tls_to_an_https_upstream() {
    let d = TempDir::new("up-tls-ok");
    let ca = Ca::new("up CA");
    let (http_up, http_seen) = echo_http().await;
    let (ws_up, _) = ws_echo(WsOptions::default()).await;
    let leaf = ca.server(&["localhost", "127.0.0.1"], 30);
    let (hf, hfront) = tls_front(&leaf, None, http_up).await;
    let (wf, wfront) = tls_front(&leaf, None, ws_up).await;
    let ca_path = ca.write(&d.0, "ca.pem");
    let tls = format!("ca = {ca_path:?}");
    let h = start(&config(&format!("https://{hf}"), &tls, "", "")).await;
    let r = get(h.addr, "/thing?x=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /thing?x=1 HTTP/1.1"), "{}", r.body);
    assert_eq!(http_seen.heads.lock().unwrap().len(), 1);
    assert!(hfront.handshakes.load(Ordering::Relaxed) >= 1);
    // An IP address is checked as one (and sent as no SNI, as RFC 6066 says).
    assert_eq!(hfront.names.lock().unwrap()[0], "");
    // wss:// is the same thing written for WebSocket people.
    let w = start(&config(
        &format!("wss://localhost:{}", wf.port()),
        &tls,
        "",
        "",
    ))
    .await;
    let mut ws = connect(w.addr, "/ws").await;
    send_text(&mut ws, "over tls").await;
    assert_eq!(next_text(&mut ws).await, "over tls");
    assert_eq!(wfront.names.lock().unwrap()[0], "localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_a_502_that_says_to_set_tls_ca() {
    let d = TempDir::new("up-tls-ca");
    let (ca, other) = (Ca::new("up CA"), Ca::new("other CA"));
    let (up, seen) = echo_http().await;
    let (front, _) = tls_front(&ca.server(&["127.0.0.1"], 30), None, up).await;
    let tls = format!("ca = {:?}", other.write(&d.0, "other.pem"));
    let srv = start(&config(
        &format!("https://{front}"),
        &tls,
        "max_fails = 0",
        "",
    ))
    .await;
    let r = get(srv.addr, "/x").await;
    assert_502(
        &r,
        front,
        &[
            "not issued by a CA wsgate trusts",
            "other.pem",
            "set tls.ca in [[upstream]] \"app\"",
        ],
    );
    let r = upgrade(srv.addr, "/ws").await;
    assert_502(&r, front, &["not issued by a CA wsgate trusts", "tls.ca"]);
    assert!(
        seen.heads.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    // The route's "/" prefix covers /metrics too; the registry is this process's.
    let m = wsgate::metrics::METRICS.render();
    assert!(
        m.contains(
            "wsgate_proxy_upstream_tls_failures_total{upstream=\"app\",reason=\"untrusted\"} 2"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_mismatch_says_to_set_server_name_and_server_name_fixes_it() {
    let d = TempDir::new("up-tls-name");
    let ca = Ca::new("up CA");
    let (up, _) = ws_echo(WsOptions::default()).await;
    let (front, seen) = tls_front(&ca.server(&["app.internal"], 30), None, up).await;
    let ca_path = ca.write(&d.0, "ca.pem");
    let server = format!("https://{front}");
    let srv = start(&config(
        &server,
        &format!("ca = {ca_path:?}"),
        "max_fails = 0",
        "",
    ))
    .await;
    let r = upgrade(srv.addr, "/ws").await;
    assert_502(
        &r,
        front,
        &[
            "not valid for the name \"127.0.0.1\"",
            "app.internal",
            "set tls.server_name",
        ],
    );
    let tls = format!("ca = {ca_path:?}\nserver_name = \"app.internal\"");
    let srv = start(&config(&server, &tls, "", "")).await;
    let mut ws = connect(srv.addr, "/ws").await;
    send_text(&mut ws, "named").await;
    assert_eq!(next_text(&mut ws).await, "named");
    assert_eq!(
        seen.names.lock().unwrap().last().unwrap(),
        "app.internal",
        "the SNI sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_a_502_that_says_to_renew_it() {
    let d = TempDir::new("up-tls-exp");
    let ca = Ca::new("up CA");
    let (up, _) = echo_http().await;
    let (front, _) = tls_front(&ca.server(&["127.0.0.1"], -2), None, up).await;
    let tls = format!("ca = {:?}", ca.write(&d.0, "ca.pem"));
    let srv = start(&config(&format!("https://{front}"), &tls, "", "")).await;
    let r = get(srv.addr, "/").await;
    assert_502(
        &r,
        front,
        &[
            "certificate has expired",
            "renew the upstream server's certificate",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_does_not_speak_tls_is_a_502_that_says_to_drop_https() {
    // A plain HTTP server that answers garbage with 400 at once (as nginx does).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let srv = start(&config(
        &format!("https://{plain}"),
        "insecure_skip_verify = true",
        "",
        "",
    ))
    .await;
    let r = get(srv.addr, "/").await;
    assert_502(&r, plain, &["does not answer in TLS", "without https://"]);
    // One that waits silently for a request: the handshake times out within connect_timeout.
    let silent = support::upstream::silent().await;
    let srv = start(&config(
        &format!("https://{silent}"),
        "insecure_skip_verify = true",
        "connect_timeout = \"300ms\"",
        "",
    ))
    .await;
    let started = std::time::Instant::now();
    let r = upgrade(srv.addr, "/ws").await;
    assert_502(
        &r,
        silent,
        &[
            "did not complete the TLS handshake within 300ms (connect_timeout)",
            "plain HTTP",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    let d = TempDir::new("up-tls-mtls");
    let (ca, client_ca) = (Ca::new("up CA"), Ca::new("client CA"));
    let (up, _) = ws_echo(WsOptions::default()).await;
    let (http_up, _) = echo_http().await;
    let leaf = ca.server(&["127.0.0.1"], 30);
    let (front, _) = tls_front(&leaf, Some(&client_ca), up).await;
    let (hfront, _) = tls_front(&leaf, Some(&client_ca), http_up).await;
    let ca_path = ca.write(&d.0, "ca.pem");
    let without = format!("ca = {ca_path:?}");
    for (server, is_ws) in [(front, true), (hfront, false)] {
        let srv = start(&config(
            &format!("https://{server}"),
            &without,
            "max_fails = 0",
            "",
        ))
        .await;
        let r = if is_ws {
            upgrade(srv.addr, "/ws").await
        } else {
            get(srv.addr, "/").await
        };
        assert_502(
            &r,
            server,
            &[
                "requires a client certificate and none is configured",
                "set tls.client_cert and tls.client_key",
            ],
        );
    }
    let (cert, key) = client_ca.client().write(&d.0, "client");
    let with = format!("ca = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}");
    let srv = start(&config(&format!("https://{front}"), &with, "", "")).await;
    let mut ws = connect(srv.addr, "/ws").await;
    send_text(&mut ws, "mutual").await;
    assert_eq!(next_text(&mut ws).await, "mutual");
    let srv = start(&config(&format!("https://{hfront}"), &with, "", "")).await;
    assert_eq!(get(srv.addr, "/").await.status, 200);
    // A client certificate from a CA the upstream does not trust is refused, and said so.
    let (cert, key) = Ca::new("stranger").client().write(&d.0, "stranger");
    let wrong = format!("ca = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}");
    let srv = start(&config(&format!("https://{front}"), &wrong, "", "")).await;
    let r = upgrade(srv.addr, "/ws").await;
    assert_502(
        &r,
        front,
        &["refused wsgate's client certificate", "tls.client_cert"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pings_keep_a_tls_tunnel_open_past_the_upstream_idle_limit() {
    let d = TempDir::new("up-tls-ping");
    let ca = Ca::new("up CA");
    let (up, seen) = ws_echo(WsOptions {
        idle_limit: Some(Duration::from_millis(500)),
        ..WsOptions::default()
    })
    .await;
    let (front, _) = tls_front(&ca.server(&["127.0.0.1"], 30), None, up).await;
    let tls = format!("ca = {:?}", ca.write(&d.0, "ca.pem"));
    let srv = start(&config(
        &format!("https://{front}"),
        &tls,
        "",
        "[proxy]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n",
    ))
    .await;
    let mut ws = connect(srv.addr, "/ws").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Pong(p)))) => panic!("client saw an unsolicited pong {p:?}"),
            Ok(other) => panic!(
                "TLS tunnel broke while idle after {pings} pings to the client and {} to the upstream: {other:?}",
                seen.pings.load(Ordering::Relaxed)
            ),
        }
    }
    assert!(pings >= 3, "client got only {pings} pings");
    assert!(
        seen.pings.load(Ordering::Relaxed) >= 3,
        "the upstream behind TLS was not pinged"
    );
    send_text(&mut ws, "still here").await;
    assert_eq!(next_text(&mut ws).await, "still here");
    assert_eq!(
        seen.pongs.load(Ordering::Relaxed),
        0,
        "upstream saw a pong it never asked for"
    );
    assert_eq!(srv.open_tunnels(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_goes_over_tls_and_marks_the_server_down_and_up() {
    let d = TempDir::new("up-tls-health");
    let ca = Ca::new("up CA");
    let (up, seen) = echo_http().await;
    let (front, f) = tls_front(&ca.server(&["127.0.0.1"], 30), None, up).await;
    let tls = format!("ca = {:?}", ca.write(&d.0, "ca.pem"));
    // max_fails = 0: only the active check can take the server out.
    let srv = start(&config(
        &format!("https://{front}"),
        &tls,
        "max_fails = 0\nhealth_path = \"/health\"\nhealth_interval = \"100ms\"",
        "",
    ))
    .await;
    let checked = || {
        seen.heads
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("GET /health HTTP/1.1"))
    };
    eventually("a health check over TLS", checked).await;
    assert_eq!(get(srv.addr, "/").await.status, 200);
    // The server goes down: open connections are cut, new handshakes fail.
    f.refuse.store(true, Ordering::Relaxed);
    eventually("the health check takes the server out", || {
        !srv.upstream_is_up(0, 0)
    })
    .await;
    let r = get(srv.addr, "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("every server of upstream \"app\" is down"),
        "{}",
        r.body
    );
    f.refuse.store(false, Ordering::Relaxed);
    eventually("the health check brings the server back", || {
        srv.upstream_is_up(0, 0)
    })
    .await;
    assert_eq!(get(srv.addr, "/").await.status, 200);
}
