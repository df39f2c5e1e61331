//! The `tls` step for `wss://` and `https://`: the handshake with rustls (ring provider, TLS 1.2
//! and 1.3, ALPN `http/1.1`, or `h2` and `http/1.1` with `--h2`), the certificate chain checked against this machine's roots or the
//! CA given with `--ca`, and what a person needs to hear about it: who it is for, who issued it,
//! how many days it has left, the TLS version and ALPN.
//!
//! A chain that does not verify fails the step, but the handshake is still completed (the
//! server's signature is checked as usual) so that the later steps can say whether the rest of
//! the endpoint works; the report says that a browser would stop here. This file knows nothing
//! about HTTP or WebSocket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::net::secs;
use super::report::{Step, Verdict, ms_since};
use super::target::Target;
use crate::any_cert::AnyCert;

/// A certificate with fewer days left than this gets a warning.
const WARN_DAYS: i64 = 14;

/// Where trust comes from: this machine's root store, or only the CA file given with `--ca`.
#[derive(Debug, Clone)]
pub enum Trust {
    System,
    Ca {
        path: PathBuf,
        roots: Arc<RootCertStore>,
    },
}

/// Why `--ca FILE` cannot be used; each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "--ca {path}: cannot read it ({source}); give the path of a PEM file with the CA certificate"
    )]
    Read {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "--ca {path}: no certificate in it; it must hold at least one -----BEGIN CERTIFICATE----- block"
    )]
    Empty { path: String },
    #[error(
        "--ca {path}: certificate {index} is not a valid CA certificate ({reason}); check that the file is the CA, not a key"
    )]
    Invalid {
        path: String,
        index: usize,
        reason: String,
    },
}

impl Trust {
    /// Loads every certificate of a PEM file as a trust anchor.
    ///
    /// # Errors
    /// An unreadable file, no certificate in it, or one that is not a usable anchor.
    pub fn from_ca_file(path: &Path) -> Result<Trust, CaError> {
        let shown = path.display().to_string();
        let read = |source| CaError::Read {
            path: shown.clone(),
            source,
        };
        let mut roots = RootCertStore::empty();
        for (index, cert) in CertificateDer::pem_file_iter(path)
            .map_err(read)?
            .enumerate()
        {
            let cert = cert.map_err(read)?;
            roots.add(cert).map_err(|e| CaError::Invalid {
                path: shown.clone(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(CaError::Empty { path: shown });
        }
        Ok(Trust::Ca {
            path: path.to_path_buf(),
            roots: Arc::new(roots),
        })
    }

    /// The roots to verify against, and how to name them in the report.
    fn roots(&self) -> (Arc<RootCertStore>, String) {
        match self {
            Trust::Ca { path, roots } => (roots.clone(), format!("the CA in {}", path.display())),
            Trust::System => {
                let loaded = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(loaded.certs);
                (
                    Arc::new(roots),
                    format!("this machine's {added} root certificate(s)"),
                )
            }
        }
    }
}

/// What the verifier saw: the chain the server sent and whether it verified.
#[derive(Debug, Clone)]
struct Seen {
    chain: Vec<CertificateDer<'static>>,
    verified: Result<(), rustls::Error>,
}

/// A verifier that checks the chain with webpki, records the outcome for the report, and lets
/// the handshake go on either way. Handshake signatures are always checked.
#[derive(Debug)]
struct Recorder {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Checks the handshake's signatures (the chain is judged above, whatever it is).
    signatures: AnyCert,
    seen: Mutex<Option<Seen>>,
}

impl Recorder {
    fn take(&self) -> Option<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen { chain, verified });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// Runs the TLS handshake over `tcp` and judges the certificate.
pub async fn handshake(
    tcp: TcpStream,
    target: &Target,
    trust: &Trust,
    provider: &Arc<CryptoProvider>,
    alpn: &[&[u8]],
    timeout: Duration,
) -> (Step, Option<TlsStream<TcpStream>>) {
    let start = Instant::now();
    let (roots, roots_name) = trust.roots();
    let webpki = if roots.is_empty() {
        None
    } else {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .ok()
    };
    let recorder = Arc::new(Recorder {
        webpki,
        signatures: AnyCert(provider.clone()),
        seen: Mutex::new(None),
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => {
            let mut c = b
                .dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            c
        }
        Err(e) => {
            return (
                Step::fail("tls", format!("cannot set up TLS: {e}"))
                    .with_hint("this build of wsgate lacks TLS support; report it as a bug"),
                None,
            );
        }
    };
    let name = match ServerName::try_from(target.host.clone()) {
        Ok(n) => n,
        Err(e) => {
            return (
                Step::fail(
                    "tls",
                    format!("{:?} cannot be a TLS server name: {e}", target.host),
                )
                .with_hint("use the host name the certificate was issued for"),
                None,
            );
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let result = tokio::time::timeout(timeout, connector.connect(name, tcp)).await;
    let seen = recorder.take();
    let mut step = match result {
        Err(_) => Step::fail(
            "tls",
            format!("no TLS answer within {} s", secs(timeout)),
        )
        .with_hint(
            "the port may speak plain HTTP, which waits silently for a request: try ws:// (or http://), \
or the port the server serves TLS on (usually 443)",
        ),
        Ok(Err(e)) => {
            let (detail, hint) = explain_handshake_error(&e, target);
            let mut s = Step::fail("tls", detail).with_hint(hint);
            if let Some(seen) = &seen {
                s.detail.push('\n');
                s.detail.push_str(&describe_chain(&seen.chain));
            }
            s
        }
        Ok(Ok(stream)) => {
            let mut step = judge(&stream, seen, target, &roots_name, alpn);
            step.elapsed_ms = ms_since(start);
            return (step, Some(stream));
        }
    };
    step.elapsed_ms = ms_since(start);
    (step, None)
}

/// The verdict on a completed handshake.
fn judge(
    stream: &TlsStream<TcpStream>,
    seen: Option<Seen>,
    target: &Target,
    roots_name: &str,
    offered: &[&[u8]],
) -> Step {
    let (_, conn) = stream.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS (version unknown)".to_string(),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let alpn_text = match &alpn {
        Some(p) => format!("ALPN {p}"),
        None => "no ALPN (the server chose none; HTTP/1.1 is assumed)".to_string(),
    };
    let lines = vec![format!("{version} ({suite}), {alpn_text}")];
    let Some(seen) = seen else {
        return Step::fail("tls", lines.join("\n"))
            .with_hint("the server sent no certificate; configure one on the server");
    };
    let mut step = judge_chain(&seen, target, roots_name, lines)
        .with_fact("tls_version", version)
        .with_fact("cipher_suite", suite)
        .with_fact("alpn", alpn.clone());
    if matches!(conn.alpn_protocol(), Some(p) if !offered.contains(&p)) {
        step.verdict = Verdict::Fail;
        step.hint = Some(
            "the server picked an ALPN protocol doctor did not offer; fix its TLS config".into(),
        );
    }
    step
}

/// The verdict on the certificate chain: verification, and the leaf's expiry. Both problems are
/// named when both are there.
fn judge_chain(seen: &Seen, target: &Target, roots_name: &str, mut lines: Vec<String>) -> Step {
    let mut verdict = Verdict::Pass;
    let mut hints = Vec::new();
    let leaf = Cert::parse(seen.chain.first());
    lines.push(describe_chain(&seen.chain));
    if let Some(leaf) = &leaf {
        if leaf.days_left < 0 {
            verdict = Verdict::Fail;
            hints.push(format!(
                "renew the certificate (certbot renew, or your ACME client) and reload the server; it \
expired on {}",
                leaf.not_after
            ));
        } else if leaf.days_left < WARN_DAYS {
            verdict = Verdict::Warn;
            hints.push(format!(
                "renew the certificate before {}; check that automatic renewal runs",
                leaf.not_after
            ));
        }
    }
    match &seen.verified {
        Ok(()) => lines.push(format!("chain verified against {roots_name}")),
        Err(e) => {
            let (what, fix) = explain_certificate_error(e, target, roots_name);
            lines.push(format!(
                "chain NOT verified: {what}; a browser stops here (doctor went on without trusting it, \
to check the rest)"
            ));
            verdict = Verdict::Fail;
            let expiry = matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            );
            // The expiry hint above already says it, with the date.
            if !(expiry && leaf.is_some()) {
                hints.push(fix);
            }
        }
    }
    let mut step =
        Step::new("tls", verdict, lines.join("\n")).with_fact("verified", seen.verified.is_ok());
    if let Some(leaf) = &leaf {
        step = step
            .with_fact("days_left", leaf.days_left)
            .with_fact("not_after", leaf.not_after.clone());
    }
    step.hint = (!hints.is_empty()).then(|| hints.join("\n"));
    step
}

/// The facts of one certificate the report shows.
#[derive(Debug, Clone)]
struct Cert {
    subject: String,
    issuer: String,
    names: Vec<String>,
    not_before: String,
    not_after: String,
    /// Whole days until `not_after`; negative once expired.
    days_left: i64,
    not_yet_valid: bool,
}

impl Cert {
    fn parse(der: Option<&CertificateDer<'_>>) -> Option<Cert> {
        let (_, c) = x509_parser::parse_x509_certificate(der?.as_ref()).ok()?;
        let now = UnixTime::now().as_secs() as i64;
        let validity = c.validity();
        let after = validity.not_after.timestamp();
        let names = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(b) => ip_text(b),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Cert {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            names,
            not_before: validity.not_before.to_datetime().date().to_string(),
            not_after: validity.not_after.to_datetime().date().to_string(),
            days_left: (after - now).div_euclid(86_400),
            not_yet_valid: validity.not_before.timestamp() > now,
        })
    }
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}

/// Lines describing the leaf and the rest of the chain as the server sent it.
fn describe_chain(chain: &[CertificateDer<'_>]) -> String {
    let mut lines = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let Some(c) = Cert::parse(Some(der)) else {
            lines.push(format!("certificate {i}: cannot be parsed as X.509"));
            continue;
        };
        let validity = if c.not_yet_valid {
            format!("not valid before {}", c.not_before)
        } else if c.days_left < 0 {
            format!("EXPIRED on {} ({} day(s) ago)", c.not_after, -c.days_left)
        } else {
            format!("valid until {} ({} day(s) left)", c.not_after, c.days_left)
        };
        if i == 0 {
            let names = if c.names.is_empty() {
                "no subject alternative names".to_string()
            } else {
                c.names.join(", ")
            };
            lines.push(format!(
                "certificate for {names} (subject {}), {validity}",
                or_empty(&c.subject)
            ));
            lines.push(format!("issued by {}", or_empty(&c.issuer)));
        } else {
            lines.push(format!(
                "chain {i}: {} issued by {}, {validity}",
                or_empty(&c.subject),
                or_empty(&c.issuer)
            ));
        }
    }
    if chain.len() == 1 {
        lines.push("the server sent only this certificate (no intermediates)".to_string());
    }
    lines.join("\n")
}

fn or_empty(s: &str) -> &str {
    if s.is_empty() { "(empty)" } else { s }
}

/// A certificate error in plain words, and what to do about it.
fn explain_certificate_error(
    e: &rustls::Error,
    target: &Target,
    roots_name: &str,
) -> (String, String) {
    use CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = e else {
        return (
            e.to_string(),
            "check the server's certificate configuration".into(),
        );
    };
    match c {
        C::UnknownIssuer => (
            format!("not issued by a CA in {roots_name} (unknown issuer)"),
            "if the server uses a private CA, pass --ca FILE with that CA's certificate (PEM); if it uses \
a public CA, the server probably sends only its own certificate: configure the full chain \
(fullchain.pem, leaf then intermediates)"
                .into(),
        ),
        C::Expired | C::ExpiredContext { .. } => (
            "the certificate has expired".into(),
            "renew the certificate (certbot renew, or your ACME client) and reload the server".into(),
        ),
        C::NotValidYet | C::NotValidYetContext { .. } => (
            "the certificate is not valid yet".into(),
            "check the clocks of the server and of this machine, or wait until the certificate's start date".into(),
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            let presented = match c {
                C::NotValidForNameContext { presented, .. } => presented.join(", "),
                _ => "other names".into(),
            };
            (
                format!("the certificate is for {presented}, not {}", target.host),
                format!(
                    "use a URL with one of the certificate's names, or get a certificate that includes {}",
                    target.host
                ),
            )
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
            "the certificate is not meant for TLS servers (extended key usage)".into(),
            "issue a certificate with the serverAuth extended key usage".into(),
        ),
        C::Revoked => (
            "the certificate was revoked".into(),
            "get a new certificate".into(),
        ),
        other => (
            format!("{other:?}"),
            "check the server's certificate and chain (openssl s_client -showcerts shows them)".into(),
        ),
    }
}

/// A failed handshake in plain words, and what to do about it.
fn explain_handshake_error(e: &io::Error, target: &Target) -> (String, String) {
    let not_tls = format!(
        "port {} does not speak TLS here: use ws:// (or http://) for it, or the port that serves TLS \
(usually 443)",
        target.port
    );
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match r {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                format!("the server did not answer with TLS ({r})"),
                not_tls,
            ),
            rustls::Error::AlertReceived(a) => (
                format!("the server refused the TLS handshake with alert {a:?}"),
                match a {
                    rustls::AlertDescription::UnrecognisedName => format!(
                        "the server has no certificate for the name {} (SNI); check the server's name \
configuration",
                        target.host
                    ),
                    _ => "the server and doctor share no TLS version or cipher suite (doctor offers TLS 1.3 \
and 1.2 with modern suites): enable TLS 1.2 or 1.3 on the server"
                        .into(),
                },
            ),
            rustls::Error::PeerIncompatible(p) => (
                format!("the server speaks no TLS version or cipher suite doctor offers ({p:?})"),
                "enable TLS 1.2 or 1.3 with modern cipher suites on the server".into(),
            ),
            other => (
                format!("TLS handshake failed: {other}"),
                "check the server's TLS configuration (openssl s_client -connect HOST:PORT shows what it \
offers)"
                    .into(),
            ),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => (
            "the server closed the connection during the TLS handshake".into(),
            format!(
                "{not_tls}; or the server refuses the name {} (SNI)",
                target.host
            ),
        ),
        io::ErrorKind::ConnectionReset => (
            "the server reset the connection during the TLS handshake".into(),
            not_tls,
        ),
        _ => (format!("TLS handshake failed: {e}"), not_tls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_a_usage_error_that_says_what_to_pass() {
        let e = Trust::from_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("--ca /nonexistent/ca.pem: cannot read it"),
            "{text}"
        );
        assert!(
            text.ends_with("give the path of a PEM file with the CA certificate"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("doctor-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = Trust::from_ca_file(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(e, CaError::Empty { .. }), "{e}");
    }

    #[test]
    fn garbage_is_no_certificate_and_no_panic() {
        assert!(Cert::parse(Some(&CertificateDer::from(vec![0x30, 0x82, 0xff]))).is_none());
        assert!(Cert::parse(None).is_none());
        assert_eq!(ip_text(&[127, 0, 0, 1]).as_deref(), Some("127.0.0.1"));
        assert_eq!(ip_text(&[1, 2, 3]), None);
    }
}
