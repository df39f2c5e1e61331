//! For the `wsgate doctor` tests: run the real binary and read its JSON report, and the small
//! misbehaving servers and proxies a diagnosis needs (one that strips the upgrade headers, one
//! that cuts idle tunnels, one that answers fixed bytes, a TLS front with test certificates).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::upstream::read_head;
use super::{WAIT, wsgate_command};

/// What one `wsgate doctor` run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` report.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", self.stdout))
    }
}

/// Runs `wsgate doctor ARGS`, bounded by `limit` (the run is killed past it).
pub async fn doctor_within(args: &[&str], limit: Duration) -> Run {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let child = wsgate_command(&all, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the wsgate binary starts");
    let pid = child.id();
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let out = match waited {
        Ok(joined) => joined
            .expect("the waiting thread")
            .expect("wait for doctor"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("wsgate doctor {args:?} ran past {limit:?}");
        }
    };
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `wsgate doctor ARGS`, bounded by the usual wait plus room for doctor's own 10 s step
/// timeout to fire first.
pub async fn doctor(args: &[&str]) -> Run {
    doctor_within(args, WAIT + Duration::from_secs(5)).await
}

/// Runs `wsgate doctor ARGS --json` and returns the exit code and the report.
pub async fn doctor_json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let run = doctor(&all).await;
    (run.code, run.json())
}

/// Runs `wsgate doctor URL --idle-probe HOLD --json ARGS` (HOLD like "3s"), bounded by the
/// usual wait plus the hold; returns the exit code and the report.
pub async fn doctor_idle(url: &str, hold: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec![url, "--idle-probe", hold, "--json"];
    all.extend_from_slice(args);
    let held =
        Duration::from_secs_f64(hold.trim_end_matches('s').parse().expect("HOLD in seconds"));
    let run = doctor_within(&all, WAIT + held).await;
    (run.code, run.json())
}

/// Runs `wsgate doctor ARGS --json` for an endpoint whose upgrade is refused: asserts exit 1
/// and that DNS and TCP passed, and returns the failed `upgrade` step.
pub async fn refused_upgrade(args: &[&str]) -> Value {
    let (code, report) = doctor_json(args).await;
    assert_eq!(
        (code, verdicts(&report).as_str()),
        (1, "dns=pass tcp=pass upgrade=fail"),
        "{report:#}"
    );
    step(&report, "upgrade").clone()
}

/// The step named `name` (the first one), with its fields as JSON.
pub fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name:?} in {report:#}"))
}

/// `name=verdict` for every step, in order: "dns=pass tcp=pass upgrade=fail".
pub fn verdicts(report: &Value) -> String {
    report["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s["name"].as_str().unwrap_or("?"),
                        s["verdict"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A step's text field (detail or hint), empty when null.
pub fn text<'a>(step: &'a Value, field: &str) -> &'a str {
    step[field].as_str().unwrap_or("")
}

/// Relays bytes both ways until either side closes.
async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// A proxy that drops `Upgrade` and `Connection` from each request head (as nginx does
/// without `proxy_set_header`) and relays everything else.
pub async fn strip_proxy(upstream: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut rest = Vec::new();
                let Some(head) = read_head(&mut client, &mut rest).await else {
                    return;
                };
                let kept: Vec<&str> = head
                    .split("\r\n")
                    .filter(|l| {
                        let name = l.split(':').next().unwrap_or("").trim();
                        !name.eq_ignore_ascii_case("upgrade")
                            && !name.eq_ignore_ascii_case("connection")
                    })
                    .collect();
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.write_all(kept.join("\r\n").as_bytes()).await;
                let _ = up.write_all(&rest).await;
                pipe(client, up).await;
            });
        }
    });
    addr
}

/// How [`cutting_proxy`] ends a tunnel that was silent too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Close the TCP connection (FIN) without a Close frame, as nginx's proxy_read_timeout does.
    Fin,
    /// Reset it (RST), as a load balancer that forgot the connection does.
    Rst,
    /// Send Close 1001 "idle" first.
    Close1001,
}

/// A proxy that relays bytes and ends a connection on which nothing crossed for `idle`.
pub async fn cutting_proxy(upstream: SocketAddr, idle: Duration, cut: Cut) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                relay_until_idle(client, up, idle, cut).await;
            });
        }
    });
    addr
}

async fn relay_until_idle(mut client: TcpStream, mut up: TcpStream, idle: Duration, cut: Cut) {
    let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
    loop {
        let quiet = tokio::time::sleep(idle);
        tokio::select! {
            r = client.read(&mut a) => match r {
                Ok(n) if n > 0 => { if up.write_all(&a[..n]).await.is_err() { return; } }
                _ => return,
            },
            r = up.read(&mut b) => match r {
                Ok(n) if n > 0 => { if client.write_all(&b[..n]).await.is_err() { return; } }
                _ => return,
            },
            () = quiet => break,
        }
    }
    match cut {
        Cut::Fin => {
            let _ = client.shutdown().await;
        }
        Cut::Rst => {
            let _ = client.set_zero_linger();
        }
        Cut::Close1001 => {
            let _ = client
                .write_all(&[0x88, 6, 0x03, 0xE9, b'i', b'd', b'l', b'e'])
                .await;
            // Wait (bounded) for the client's Close in reply before closing.
            let _ = tokio::time::timeout(WAIT, client.read(&mut a)).await;
        }
    }
    drop(client);
}

/// A server that answers every request head with `answer` and then waits for the client to go.
pub async fn answering_server(answer: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            let served = served2.clone();
            tokio::spawn(async move {
                let mut rest = Vec::new();
                if read_head(&mut s, &mut rest).await.is_none() {
                    return;
                }
                served.fetch_add(1, Ordering::Relaxed);
                let _ = s.write_all(answer.as_bytes()).await;
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(WAIT, async {
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    (addr, served)
}

/// A test CA and a leaf certificate for `localhost` and `127.0.0.1` that it signed.
pub struct Pki {
    pub ca_pem: String,
    /// The leaf and its key as PEM, for a server that reads them from files.
    pub leaf_pem: String,
    pub key_pem: String,
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl Pki {
    /// A leaf valid from `not_before` to `not_after` (unix seconds).
    pub fn new(not_before: i64, not_after: i64) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let time = |secs: i64| {
            x509_parser::time::ASN1Time::from_timestamp(secs)
                .expect("a representable time")
                .to_datetime()
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wsgate doctor test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.not_before = time(not_before);
        leaf.not_after = time(not_after);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            leaf_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
            chain: vec![leaf_cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        }
    }

    /// A leaf that is valid for `days_left` more days (negative: expired that long ago).
    pub fn with_days_left(days_left: i64) -> Pki {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Pki::new(now - 400 * 86_400, now + days_left * 86_400 + 3600)
    }

    /// Writes the CA certificate to a file in `dir` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path) -> String {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path.display().to_string()
    }

    /// `[server.tls]` for wsgate with this leaf, its files written in `dir`, and `extra` lines.
    pub fn server_tls_toml(&self, dir: &std::path::Path, extra: &str) -> String {
        let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
        std::fs::write(&cert, &self.leaf_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n{extra}",
            cert.display().to_string(),
            key.display().to_string()
        )
    }
}

/// A TLS front (HTTP/1.1 ALPN) with `pki`'s leaf that forwards the decrypted bytes to `upstream`.
pub async fn tls_front(pki: &Pki, upstream: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake; nothing to relay.
                let Ok(Ok(mut tls)) = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
