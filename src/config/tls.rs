//! `[server.tls]`: certificates for `wss://` and `https://` on the listener. The two keys `cert`
//! and `key` are fixed names (scripts rely on them); the PEM files themselves are read by
//! `server::tls` at start and on every reload, which is where a bad file is reported.

use serde::Deserialize;

use super::duration::Duration;
use super::validate::Seg;

/// `[server.tls]`: serve TLS on `server.listen`. Absent: plain HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file with the certificate chain (leaf first). Required.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: String,
    /// Application protocols offered in ALPN, in order of preference: "h2" and "http/1.1".
    /// Default `["h2", "http/1.1"]`.
    pub alpn: Vec<String>,
    /// Lowest TLS version accepted: "1.2" or "1.3". Default "1.2".
    pub min_version: String,
    /// How often the PEM files are checked for changes (a change reloads them without dropping
    /// live connections; so does SIGHUP). Default 5 s; "0s" turns the check off.
    pub watch_interval: Duration,
    /// More certificates, chosen by the name the client asks for (SNI), matched against each
    /// certificate's DNS names (`*.example.com` covers one label). `cert`/`key` above serve
    /// every other name and clients that send no SNI.
    pub sni: Vec<SniCert>,
}

/// `[[server.tls.sni]]`: one more certificate and key.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    pub cert: String,
    pub key: String,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: String::new(),
            key: String::new(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            min_version: "1.2".into(),
            watch_interval: Duration::from_secs(5),
            sni: Vec::new(),
        }
    }
}

impl Tls {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        let at = |k: &str| {
            vec![
                Seg::Key("server".into()),
                Seg::Key("tls".into()),
                Seg::Key(k.into()),
            ]
        };
        for (k, v) in [("cert", &self.cert), ("key", &self.key)] {
            if v.trim().is_empty() {
                report(
                    at(k),
                    "is missing; [server.tls] needs both cert = \"cert.pem\" and key = \"key.pem\" (PEM files), or remove the section to serve plain HTTP".into(),
                );
            }
        }
        if self.alpn.is_empty() {
            report(
                at("alpn"),
                "is empty; use [\"h2\", \"http/1.1\"] (the default)".into(),
            );
        }
        for p in &self.alpn {
            if p != "http/1.1" && p != "h2" {
                report(
                    at("alpn"),
                    format!("{p:?} is not served; wsgate speaks \"h2\" and \"http/1.1\""),
                );
            }
        }
        if !matches!(self.min_version.as_str(), "1.2" | "1.3") {
            report(
                at("min_version"),
                format!(
                    "{:?} is not a TLS version wsgate accepts; use \"1.2\" or \"1.3\"",
                    self.min_version
                ),
            );
        }
        if !self.watch_interval.is_zero() && self.watch_interval.get().as_millis() < 100 {
            report(
                at("watch_interval"),
                format!(
                    "{} is too short; use at least \"100ms\", or \"0s\" to rely on SIGHUP alone",
                    self.watch_interval
                ),
            );
        }
        for (i, s) in self.sni.iter().enumerate() {
            for (k, v) in [("cert", &s.cert), ("key", &s.key)] {
                if v.trim().is_empty() {
                    report(
                        vec![
                            Seg::Key("server".into()),
                            Seg::Key("tls".into()),
                            Seg::Key("sni".into()),
                            Seg::Index(i),
                            Seg::Key(k.into()),
                        ],
                        "is missing; each [[server.tls.sni]] needs cert and key".into(),
                    );
                }
            }
        }
    }
}
