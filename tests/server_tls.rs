//! TLS on the listener, end to end over real sockets: wss:// and https:// with certificates made
//! at test time (rcgen), ALPN, SNI, the minimum version, plain HTTP sent to a TLS port, bad PEM
//! files at start, and a certificate reload under 1,000 live connections that drops none.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wsgate-tls-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for `hosts` written as `name.pem` / `name.key` in `dir`.
fn pair(dir: &Path, name: &str, hosts: &[&str]) -> Pair {
    let ck =
        rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Pair {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}

fn tls_toml(p: &Pair, extra: &str) -> String {
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n{extra}",
        p.cert.display().to_string(),
        p.key.display().to_string()
    )
}

/// A client trusting `roots`, offering ALPN http/1.1.
fn connector(
    roots: &[&CertificateDer<'static>],
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ));
    let b = match versions {
        Some(v) => b.with_protocol_versions(v).unwrap(),
        None => b.with_safe_default_protocol_versions().unwrap(),
    };
    let mut cfg = b.with_root_certificates(store).with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

async fn tls(
    c: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    c.connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

async fn wss(c: &TlsConnector, addr: SocketAddr, path: &str) -> Wss {
    let s = tls(c, addr, "localhost").await.expect("TLS handshake");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://localhost{path}"), s),
    )
    .await
    .expect("in time")
    .expect("WebSocket handshake over TLS");
    ws
}

async fn next_wss(ws: &mut Wss) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// One HTTP/1.1 request over TLS; the raw answer.
async fn https(c: &TlsConnector, addr: SocketAddr, req: &str) -> String {
    let mut s = tls(c, addr, "localhost").await.expect("TLS handshake");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_work_end_to_end_with_alpn_http11() {
    let d = dir("e2e");
    let p = pair(&d, "srv", &["localhost"]);
    let srv = start(&tls_toml(&p, "")).await;
    let c = connector(&[&p.der], None);

    let s = tls(&c, srv.addr, "localhost").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(s);

    let mut ws = wss(&c, srv.addr, "/room/tls/").await;
    eventually("member joined", || srv.member_count("room:tls") == 1).await;
    let answer = https(
        &c,
        srv.addr,
        "POST /api/groups/room:tls/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"recipients\":1"), "{answer}");
    assert_eq!(next_wss(&mut ws).await, "hello");

    // A message from the client goes through the session over TLS too (the echo route).
    let mut echo = wss(&c, srv.addr, "/ws/echo").await;
    echo.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_wss(&mut echo).await, "over tls");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_port_is_told_to_use_https() {
    let d = dir("plain");
    let p = pair(&d, "srv", &["localhost"]);
    let srv = start(&tls_toml(&p, "")).await;
    let r = raw(srv.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("this port speaks TLS"), "{}", r.body);
    assert!(r.body.contains("https://"), "{}", r.body);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_for_the_name_asked() {
    let d = dir("sni");
    let main = pair(&d, "main", &["localhost"]);
    let a = pair(&d, "a", &["a.test"]);
    let b = pair(&d, "b", &["*.b.test"]);
    let extra = format!(
        "[[server.tls.sni]]\ncert = {:?}\nkey = {:?}\n[[server.tls.sni]]\ncert = {:?}\nkey = {:?}\n",
        a.cert.display().to_string(),
        a.key.display().to_string(),
        b.cert.display().to_string(),
        b.key.display().to_string()
    );
    let srv = start(&tls_toml(&main, &extra)).await;
    let c = connector(&[&main.der, &a.der, &b.der], None);
    for (name, want) in [
        ("a.test", &a.der),
        ("x.b.test", &b.der),
        ("localhost", &main.der),
    ] {
        let s = tls(&c, srv.addr, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(&got, want, "{name}");
    }
    // A client trusting only the main certificate cannot be served a.test's by mistake.
    let only_main = connector(&[&main.der], None);
    assert!(tls(&only_main, srv.addr, "a.test").await.is_err());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_a_tls12_client() {
    let d = dir("minver");
    let p = pair(&d, "srv", &["localhost"]);
    let srv = start(&tls_toml(&p, "min_version = \"1.3\"\n")).await;
    let tls12 = connector(&[&p.der], Some(&[&rustls::version::TLS12]));
    assert!(tls(&tls12, srv.addr, "localhost").await.is_err());
    let tls13 = connector(&[&p.der], Some(&[&rustls::version::TLS13]));
    assert!(tls(&tls13, srv.addr, "localhost").await.is_ok());
    srv.shutdown().await;

    // The default (1.2) takes a TLS 1.2 client.
    let srv = start(&tls_toml(&p, "")).await;
    assert!(tls(&tls12, srv.addr, "localhost").await.is_ok());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_pem_stops_the_start_naming_the_file_and_the_fix() {
    let d = dir("badpem");
    let p = pair(&d, "srv", &["localhost"]);
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let start_err = |toml: String| async move {
        let mut cfg = wsgate::config::load_str("t.toml", &toml, &[]).expect("config parses");
        cfg.server.listen = "127.0.0.1:0".into();
        wsgate::app::start(cfg).await.unwrap_err().to_string()
    };
    let e = start_err(format!(
        "[server.tls]\ncert = \"{}/missing.pem\"\nkey = {:?}\n",
        d.display(),
        p.key.display().to_string()
    ))
    .await;
    assert!(
        e.contains("server.tls.cert: cannot read") && e.contains("missing.pem"),
        "{e}"
    );
    let e = start_err(format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        p.cert.display().to_string(),
        junk.display().to_string()
    ))
    .await;
    assert!(
        e.contains("server.tls.key") && e.contains("junk.pem") && e.contains("no PEM private key"),
        "{e}"
    );
}

/// 1,000 wss:// connections stay up across a certificate change picked up from the files; new
/// handshakes get the new certificate, and every old connection still gets messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_under_1000_live_connections_drops_none() {
    const N: usize = 1000;
    let d = dir("reload");
    let old = pair(&d, "srv", &["localhost"]);
    let srv = start(&tls_toml(&old, "watch_interval = \"100ms\"\n")).await;
    let c = Arc::new(connector(&[&old.der], None));
    let addr = srv.addr;
    let mut tasks = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(50));
    for _ in 0..N {
        let (c, sem) = (c.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            wss(&c, addr, "/room/reload/").await
        }));
    }
    let mut conns = Vec::with_capacity(N);
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    eventually("all members joined", || {
        srv.member_count("room:reload") == N
    })
    .await;

    // New files in place of the old ones (a renewal): the watcher reloads them.
    let renewed = pair(&d, "renewed", &["localhost"]);
    std::fs::copy(&renewed.cert, &old.cert).unwrap();
    std::fs::copy(&renewed.key, &old.key).unwrap();
    let trusts_new = connector(&[&renewed.der], None);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tls(&trusts_new, addr, "localhost").await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An explicit reload (what SIGHUP does) works as well and keeps the new pair.
    srv.reload_tls().expect("reload");

    assert_eq!(srv.open_connections(), N, "no connection dropped");
    assert_eq!(srv.publish_text("room:reload", "after").await, N);
    for ws in conns.iter_mut() {
        assert_eq!(next_wss(ws).await, "after");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_websocket_runs_over_a_tls_listener() {
    let d = dir("proxy");
    let p = pair(&d, "srv", &["localhost"]);
    let (up, _) = support::upstream::ws_echo(Default::default()).await;
    let toml = format!(
        "{}[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n",
        tls_toml(&p, "")
    );
    let srv = start(&toml).await;
    let c = connector(&[&p.der], None);
    let mut ws = wss(&c, srv.addr, "/app/echo").await;
    ws.send(Message::text("through")).await.unwrap();
    assert_eq!(next_wss(&mut ws).await, "through");
    assert_eq!(srv.open_tunnels(), 1);
    srv.shutdown().await;
}
