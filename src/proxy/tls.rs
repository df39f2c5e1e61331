//! TLS toward upstreams whose servers are written `https://host:port` (or `wss://`): the client
//! configuration of each such upstream (`[upstream.tls]`: the CA, the name checked, a client
//! certificate), the connection to a server ([`Stream`], plain or TLS, which every proxy path
//! and the generic tunnel run on), the connector of the HTTP keep-alive pool, and what a failed
//! handshake means in words an operator can act on.
//!
//! A TLS upstream tunnel never runs on io_uring: rustls works on the bytes in user space, so
//! [`Stream::into_tcp`] refuses and the tokio tunnel (frame-aware, with injected Pings) takes
//! it, exactly as for a client that came in over TLS.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config;
use crate::metrics::METRICS;
use crate::transport::Transport;

/// Why the TLS settings of an upstream cannot be used at start.
#[derive(Debug, thiserror::Error)]
#[error("upstream[{index}] ({upstream:?}) {key}: {why}")]
pub struct SetupError {
    pub index: usize,
    pub upstream: String,
    pub key: &'static str,
    pub why: String,
}

/// What went wrong in a TLS exchange with a server, and what to change. `reason` labels
/// `wsgate_proxy_upstream_tls_failures_total`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}; {fix}")]
pub struct Failure {
    pub reason: &'static str,
    pub what: String,
    pub fix: String,
}

/// TLS toward the servers of one upstream.
pub struct ClientTls {
    upstream: String,
    connector: TlsConnector,
    /// `tls.server_name`, when set: sent and checked instead of each server's host.
    name: Option<ServerName<'static>>,
    /// What the certificates are checked against, for messages.
    trust: String,
    client_cert: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("upstream", &self.upstream)
            .field("name", &self.name)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The TLS settings of upstream `index`, or `None` when its servers are plain.
    ///
    /// # Errors
    /// The key whose file or value cannot be used, and why.
    pub fn new(index: usize, u: &config::Upstream) -> Result<Option<Arc<Self>>, SetupError> {
        if !u.is_tls() {
            return Ok(None);
        }
        let cfg = u.tls.clone().unwrap_or_default();
        let fail = |key: &'static str, why: String| SetupError {
            index,
            upstream: u.name.clone(),
            key,
            why,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("tls", format!("cannot set up TLS: {e}")))?;
        let (builder, trust) = if cfg.insecure_skip_verify {
            tracing::warn!(
                upstream = %u.name,
                "INSECURE: tls.insecure_skip_verify = true, so the certificates of upstream {:?} are NOT verified; anyone on the path can impersonate it. Set tls.ca to its CA instead",
                u.name
            );
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(crate::any_cert::AnyCert(provider))),
                "nothing (insecure_skip_verify)".to_string(),
            )
        } else {
            let mut roots = RootCertStore::empty();
            let trust = if cfg.ca.is_empty() {
                let loaded = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(loaded.certs);
                if added == 0 {
                    return Err(fail(
                        "tls.ca",
                        "this machine has no root certificates to check the servers against; set tls.ca to the PEM file of the CA that issued the servers' certificates".into(),
                    ));
                }
                format!("this machine's {added} root certificates")
            } else {
                for c in config::read_certs(&cfg.ca).map_err(|m| fail("tls.ca", m))? {
                    roots.add(c).map_err(|e| {
                        fail(
                            "tls.ca",
                            format!(
                                "{} holds a certificate that cannot be a CA ({e}); give the CA certificate in PEM",
                                cfg.ca
                            ),
                        )
                    })?;
                }
                format!("the CA in {}", cfg.ca)
            };
            (builder.with_root_certificates(roots), trust)
        };
        let mut client = if cfg.client_cert.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain =
                config::read_certs(&cfg.client_cert).map_err(|m| fail("tls.client_cert", m))?;
            let key = config::read_key(&cfg.client_key).map_err(|m| fail("tls.client_key", m))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                fail(
                    "tls.client_key",
                    format!(
                        "{} cannot be used with {} ({e}); give the key the client certificate was issued for (RSA, ECDSA or Ed25519)",
                        cfg.client_key, cfg.client_cert
                    ),
                )
            })?
        };
        // Upgrades and plain requests are both HTTP/1.1 on these connections.
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = if cfg.server_name.is_empty() {
            None
        } else {
            Some(
                ServerName::try_from(cfg.server_name.clone())
                    .map_err(|e| fail("tls.server_name", format!("{e}")))?,
            )
        };
        Ok(Some(Arc::new(ClientTls {
            upstream: u.name.clone(),
            connector: TlsConnector::from(Arc::new(client)),
            name,
            trust,
            client_cert: !cfg.client_cert.is_empty(),
        })))
    }

    /// The name sent and checked for the server at `host_port`.
    fn name_for(&self, host_port: &str) -> Result<ServerName<'static>, Failure> {
        if let Some(n) = &self.name {
            return Ok(n.clone());
        }
        let host = match host_port.rsplit_once(':') {
            Some((h, _)) => h,
            None => host_port,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| Failure {
            reason: "server_name",
            what: format!("{host:?} cannot be a TLS server name ({e})"),
            fix: format!(
                "set tls.server_name in [[upstream]] {:?} to the name the certificate is issued for",
                self.upstream
            ),
        })
    }

    /// Runs the TLS handshake with the server at `host_port` over `tcp`, within `timeout`
    /// (the upstream's `connect_timeout`, as nginx bounds its SSL handshake).
    ///
    /// # Errors
    /// What failed and what to change; counted in the metrics.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host_port: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let name = self.name_for(host_port).inspect_err(|f| self.count(f))?;
        let shown = name.to_str().into_owned();
        let res = tokio::time::timeout(timeout, self.connector.connect(name, tcp)).await;
        let f = match res {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => self.explain(&e, &shown).unwrap_or_else(|| Failure {
                reason: "io",
                what: format!("the TLS handshake failed: {e}"),
                fix: "check that the server serves TLS on this port".into(),
            }),
            Err(_) => Failure {
                reason: "timeout",
                what: format!(
                    "it did not complete the TLS handshake within {timeout:?} (connect_timeout)"
                ),
                fix: "it may speak plain HTTP and be waiting for a request: write the server as host:port without https://, or give the port it serves TLS on".into(),
            },
        };
        self.count(&f);
        Err(f)
    }

    fn count(&self, f: &Failure) {
        METRICS.proxy_upstream_tls_failure(&self.upstream, f.reason);
    }

    /// What an I/O error on a TLS connection to this upstream means, when TLS caused it (a
    /// failed handshake, or an alert after it: with TLS 1.3 a server refuses a client
    /// certificate only after the client's side of the handshake is done). `sni` is the name
    /// that was sent.
    pub fn explain(&self, e: &io::Error, sni: &str) -> Option<Failure> {
        let up = &self.upstream;
        let not_tls = || {
            "it may speak plain HTTP: write the server as host:port without https://, or give the port it serves TLS on".to_string()
        };
        let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Some(Failure {
                    reason: "closed",
                    what: "it closed the connection during the TLS handshake".into(),
                    fix: format!(
                        "check that it serves TLS on this port ({}), and that it accepts the name {sni:?} (tls.server_name in [[upstream]] {up:?})",
                        not_tls()
                    ),
                }),
                _ => None,
            };
        };
        let cert = |reason, what: String, fix: String| Some(Failure { reason, what, fix });
        match r {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => cert(
                    "untrusted",
                    format!(
                        "its certificate is not issued by a CA wsgate trusts (checked against {})",
                        self.trust
                    ),
                    format!(
                        "set tls.ca in [[upstream]] {up:?} to the PEM file of the CA that issued it"
                    ),
                ),
                CertificateError::NotValidForName => cert(
                    "name",
                    format!("its certificate is not valid for the name {sni:?}"),
                    format!(
                        "set tls.server_name in [[upstream]] {up:?} to a name the certificate holds, or address the server by that name"
                    ),
                ),
                CertificateError::NotValidForNameContext { presented, .. } => cert(
                    "name",
                    format!(
                        "its certificate is not valid for the name {sni:?} (it holds {})",
                        presented.join(", ")
                    ),
                    format!(
                        "set tls.server_name in [[upstream]] {up:?} to a name the certificate holds, or address the server by that name"
                    ),
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => cert(
                    "expired",
                    format!("its certificate has expired ({c})"),
                    "renew the upstream server's certificate (or check the clocks of both machines)"
                        .into(),
                ),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    cert(
                        "not_yet_valid",
                        format!("its certificate is not valid yet ({c})"),
                        "check the clocks of both machines, or the certificate's start date"
                            .into(),
                    )
                }
                other => cert(
                    "certificate",
                    format!("its certificate was refused ({other})"),
                    format!(
                        "check the certificate it sends (openssl s_client -connect HOST:PORT -showcerts) against tls.ca in [[upstream]] {up:?}"
                    ),
                ),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => cert(
                "not_tls",
                format!("it does not answer in TLS ({r})"),
                not_tls(),
            ),
            rustls::Error::AlertReceived(a) => {
                let client_auth = matches!(
                    a,
                    AlertDescription::CertificateRequired
                        | AlertDescription::BadCertificate
                        | AlertDescription::UnknownCA
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::AccessDenied
                        | AlertDescription::CertificateExpired
                        | AlertDescription::UnsupportedCertificate
                );
                if *a == AlertDescription::UnrecognisedName {
                    cert(
                        "name",
                        format!("it has no certificate for the name {sni:?} (alert {a:?})"),
                        format!(
                            "set tls.server_name in [[upstream]] {up:?} to a name the server serves"
                        ),
                    )
                } else if client_auth && !self.client_cert {
                    cert(
                        "client_cert",
                        format!("it requires a client certificate and none is configured (alert {a:?})"),
                        format!(
                            "set tls.client_cert and tls.client_key in [[upstream]] {up:?} to a certificate the server accepts"
                        ),
                    )
                } else if client_auth {
                    cert(
                        "client_cert",
                        format!("it refused wsgate's client certificate (alert {a:?})"),
                        format!(
                            "give tls.client_cert in [[upstream]] {up:?} a certificate issued by a CA the server trusts, and still valid"
                        ),
                    )
                } else {
                    cert(
                        "refused",
                        format!("it refused the TLS handshake (alert {a:?})"),
                        if self.client_cert {
                            "check the server's TLS settings: it and wsgate share no TLS version (1.2, 1.3) or cipher suite".into()
                        } else {
                            format!(
                                "it may require a client certificate (tls.client_cert and tls.client_key in [[upstream]] {up:?}), or share no TLS version (1.2, 1.3) or cipher suite with wsgate"
                            )
                        },
                    )
                }
            }
            rustls::Error::PeerIncompatible(p) => cert(
                "incompatible",
                format!("it speaks no TLS version or cipher suite wsgate offers ({p:?})"),
                "enable TLS 1.2 or 1.3 with modern cipher suites on the server".into(),
            ),
            other => cert(
                "other",
                format!("TLS failed: {other}"),
                "check the server's TLS settings (openssl s_client -connect HOST:PORT shows what it offers)".into(),
            ),
        }
    }

    /// The name sent in SNI to the server at `host_port`, for messages.
    pub fn sni(&self, host_port: &str) -> String {
        self.name_for(host_port)
            .map_or_else(|_| host_port.to_string(), |n| n.to_str().into_owned())
    }

    /// Counts a failure found after the handshake (see [`ClientTls::explain`]).
    pub fn count_late(&self, f: &Failure) {
        self.count(f);
    }
}

/// A connection to an upstream server: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    // Boxed: a TLS session is ~1 KiB, and most upstream connections are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

impl Transport for Stream {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_recv(cx, buf),
            Stream::Tls(s) => {
                let mut rb = ReadBuf::new(buf);
                std::task::ready!(Pin::new(&mut **s).poll_read(cx, &mut rb))?;
                Poll::Ready(Ok(rb.filled().len()))
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_send(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn set_nodelay(&self) {
        let _ = self.tcp().set_nodelay(true);
    }

    fn abort(&mut self) {
        crate::transport::reset_on_close(self.tcp().as_fd());
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        match self {
            Stream::Plain(s) => Ok(s),
            tls => Err(tls),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        self.tcp().connected()
    }
}

/// The connector of an upstream's keep-alive pool: TCP (with the upstream's connect timeout),
/// then TLS when the upstream's servers are `https://`.
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<ClientTls>>,
    handshake_timeout: Duration,
}

impl Connector {
    pub fn new(tls: Option<Arc<ClientTls>>, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        Connector {
            http,
            tls,
            handshake_timeout: connect_timeout,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host_port = uri
            .authority()
            .map_or_else(String::new, |a| a.as_str().to_string());
        let tcp = self.http.call(uri);
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            match tls {
                None => Ok(TokioIo::new(Stream::Plain(tcp))),
                Some(t) => match t.connect(tcp, &host_port, timeout).await {
                    Ok(s) => Ok(TokioIo::new(Stream::Tls(Box::new(s)))),
                    Err(f) => Err(Box::new(f) as BoxError),
                },
            }
        })
    }
}

/// The [`Failure`] somewhere in an error's source chain (a pool connect that failed in TLS).
pub fn failure_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Failure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<Failure>() {
            return Some(f);
        }
        cur = err.source();
    }
    None
}
