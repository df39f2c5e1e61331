//! TLS on the listener (`[server.tls]`): certificates from PEM files, one per name the client
//! asks for (SNI), ALPN, TLS 1.2 at least, and reloads that never touch a live connection.
//!
//! A reload swaps the certificate set behind the resolver; the `ServerConfig` (and with it the
//! session-resumption state) stays, and every connection already set up keeps the keys it
//! agreed on, so nothing is dropped. A reload that fails (a half-written file, a key that does
//! not match) keeps the certificates in use and says why in the log.
//!
//! Once the handshake is done a TLS connection is served like any other, but on the generic
//! [`crate::transport::Transport`] path: io_uring tunnels need a bare socket, so a proxied
//! WebSocket over TLS runs on the tokio tunnel whatever `proxy.tunnel_io` says.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config;
use crate::lifecycle::Shutdown;
use crate::metrics::METRICS;

/// Why a certificate or key could not be used. Each message names the config key and the file,
/// and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{key}: cannot read {path}: {source}; check the path (a relative path starts from the directory wsgate runs in)"
    )]
    Read {
        key: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{key}: {path} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block); give the certificate chain, leaf first"
    )]
    NoCert { key: String, path: String },
    #[error(
        "{key}: {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY); give the key of the certificate"
    )]
    NoKey { key: String, path: String },
    #[error("{key}: {path} is not valid PEM ({why}); re-export the file in PEM format")]
    BadPem {
        key: String,
        path: String,
        why: String,
    },
    #[error(
        "{key}: the key in {path} cannot sign ({why}); use an RSA, ECDSA P-256/P-384 or Ed25519 key"
    )]
    BadKey {
        key: String,
        path: String,
        why: String,
    },
    #[error(
        "server.tls: the key in {key_path} does not belong to the certificate in {cert_path}; give the key the certificate was issued for"
    )]
    Mismatch { cert_path: String, key_path: String },
    #[error("server.tls: {0}")]
    Config(String),
}

/// The certificates in use: the default one and those chosen by name.
#[derive(Debug)]
struct Certs {
    default: Arc<CertifiedKey>,
    /// Lowercased DNS names from the SNI certificates.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(parent)
        {
            return c.clone();
        }
        self.default.clone()
    }
}

/// Picks a certificate by SNI from the set in force; a reload replaces the set.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<Certs>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(certs.pick(hello.server_name()))
    }
}

/// When a watched file was last seen changed: (modified, length), `None` if it was unreadable.
type Stamp = Option<(SystemTime, u64)>;

/// TLS for the listener: the acceptor, and the certificate set it resolves from.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    cfg: config::Tls,
    stamps: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cfg", &self.cfg).finish()
    }
}

impl Tls {
    /// Reads every certificate and key `cfg` names and builds the acceptor.
    ///
    /// # Errors
    /// The first file that cannot be used, and why.
    pub fn new(cfg: &config::Tls) -> Result<Self, TlsError> {
        let certs = load(cfg)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certs)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version.as_str()
        {
            "1.3" => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            stamps: Mutex::new(stamps(cfg)),
            cfg: cfg.clone(),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again and, if every one is usable, serves new handshakes from them.
    /// Connections already open are not touched.
    ///
    /// # Errors
    /// Why the files could not be used; the certificates in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.cfg);
        let certs = load(&self.cfg).inspect_err(|_| METRICS.tls_reload_failures.inc())?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        METRICS.tls_reloads.inc();
        Ok(())
    }

    /// Reloads, logging the outcome; `why` says what asked for it.
    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(why, error = %e, "TLS reload failed; the certificates in use stay")
            }
        }
    }

    /// Whether a watched file changed since the last load.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.cfg)
    }

    /// Checks the files every `watch_interval` and reloads when one changed, until shutdown.
    pub async fn watch(self: Arc<Self>, shutdown: Shutdown) {
        let every = self.cfg.watch_interval.get();
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            if self.changed() {
                self.reload_logged("a certificate or key file changed");
            }
        }
    }
}

fn files(cfg: &config::Tls) -> impl Iterator<Item = &str> {
    [cfg.cert.as_str(), cfg.key.as_str()].into_iter().chain(
        cfg.sni
            .iter()
            .flat_map(|s| [s.cert.as_str(), s.key.as_str()]),
    )
}

fn stamps(cfg: &config::Tls) -> Vec<Stamp> {
    files(cfg)
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn load(cfg: &config::Tls) -> Result<Certs, TlsError> {
    let default = certified(&cfg.cert, "server.tls.cert", &cfg.key, "server.tls.key")?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (i, s) in cfg.sni.iter().enumerate() {
        let ck_key = format!("server.tls.sni[{i}].cert");
        let ck = Arc::new(certified(
            &s.cert,
            &ck_key,
            &s.key,
            &format!("server.tls.sni[{i}].key"),
        )?);
        let names = dns_names(&ck.cert[0]).map_err(|why| TlsError::BadPem {
            key: ck_key.clone(),
            path: s.cert.clone(),
            why,
        })?;
        if names.is_empty() {
            return Err(TlsError::Config(format!(
                "the certificate in {} (sni[{i}]) names no DNS host, so no client could ask for it; issue it with a subjectAltName",
                s.cert
            )));
        }
        for n in names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(n),
            }
            .or_insert_with(|| ck.clone());
        }
    }
    Ok(Certs {
        default: Arc::new(default),
        exact,
        wildcard,
    })
}

fn read(path: &str, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsError::Read {
        key: key.into(),
        path: path.into(),
        source,
    })
}

fn certified(
    cert_path: &str,
    cert_key: &str,
    key_path: &str,
    key_key: &str,
) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path, cert_key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            key: cert_key.into(),
            path: cert_path.into(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            key: cert_key.into(),
            path: cert_path.into(),
        });
    }
    let key_pem = read(key_path, key_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            key: key_key.into(),
            path: key_path.into(),
        },
        e => TlsError::BadPem {
            key: key_key.into(),
            path: key_path.into(),
            why: e.to_string(),
        },
    })?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
            key: key_key.into(),
            path: key_path.into(),
            why: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::Mismatch {
                cert_path: cert_path.into(),
                key_path: key_path.into(),
            });
        }
    }
    Ok(ck)
}

/// The DNS names a certificate is for (subjectAltName), lowercased.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write_pair(dir: &Path, name: &str, hosts: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wsgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cfg(cert: &str, key: &str) -> config::Tls {
        config::Tls {
            cert: cert.into(),
            key: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_file_names_the_key_the_file_and_what_to_do() {
        let e = Tls::new(&cfg("/nonexistent/cert.pem", "/nonexistent/key.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server.tls.cert: cannot read /nonexistent/cert.pem:"),
            "{e}"
        );
        assert!(e.contains("check the path"), "{e}");
    }

    #[test]
    fn a_file_without_pem_blocks_or_with_the_wrong_key_is_explained() {
        let d = tmp("bad");
        let (c, k) = write_pair(&d, "a", &["a.test"]);
        let (_, k2) = write_pair(&d, "b", &["b.test"]);
        let junk = d.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let junk = junk.display().to_string();
        let e = Tls::new(&cfg(&junk, &k)).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = Tls::new(&cfg(&c, &junk)).unwrap_err().to_string();
        assert!(
            e.starts_with("server.tls.key:") && e.contains("holds no PEM private key"),
            "{e}"
        );
        let e = Tls::new(&cfg(&c, &k2)).unwrap_err().to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert!(Tls::new(&cfg(&c, &k)).is_ok());
    }

    #[test]
    fn sni_picks_by_exact_name_then_wildcard_then_the_default() {
        let d = tmp("sni");
        let (c, k) = write_pair(&d, "default", &["default.test"]);
        let (c1, k1) = write_pair(&d, "one", &["one.test"]);
        let (c2, k2) = write_pair(&d, "wild", &["*.wild.test"]);
        let mut t = cfg(&c, &k);
        t.sni = vec![
            config::SniCert { cert: c1, key: k1 },
            config::SniCert { cert: c2, key: k2 },
        ];
        let certs = load(&t).unwrap();
        let leaf = |name: Option<&str>| {
            dns_names(&certs.pick(name).cert[0])
                .unwrap()
                .first()
                .cloned()
                .unwrap()
        };
        assert_eq!(leaf(Some("ONE.test")), "one.test");
        assert_eq!(leaf(Some("a.wild.test")), "*.wild.test");
        assert_eq!(
            leaf(Some("a.b.wild.test")),
            "default.test",
            "a wildcard covers one label"
        );
        assert_eq!(leaf(None), "default.test");
        assert_eq!(leaf(Some("other.test")), "default.test");
    }

    #[test]
    fn a_failed_reload_keeps_the_certificates_in_force() {
        let d = tmp("reload");
        let (c, k) = write_pair(&d, "a", &["a.test"]);
        let tls = Tls::new(&cfg(&c, &k)).unwrap();
        assert!(!tls.changed());
        std::fs::write(&c, "garbage").unwrap();
        assert!(tls.changed());
        assert!(tls.reload().is_err());
        assert!(
            !tls.changed(),
            "a failed file is not retried until it changes again"
        );
        let in_force = tls.resolver.current.read().unwrap().clone();
        assert_eq!(dns_names(&in_force.default.cert[0]).unwrap(), ["a.test"]);
    }
}
