//! `[proxy]` and `[[upstream]]`: how proxied requests and tunnels behave, and the servers they
//! go to.

use serde::Deserialize;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::addr::{parse_cidr, parse_server_addr, split_server_scheme};
use super::duration::Duration;
use super::validate::{Seg, item, keys};

/// `[proxy]`: how proxied requests and WebSocket tunnels behave.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Send the upstream the client's `Host` header (true), or the upstream server's address
    /// (false). Default true.
    pub preserve_host: bool,
    /// Addresses or CIDR ranges (`"10.0.0.0/8"`, `"::1"`) of proxies in front of wsgate. A
    /// request from one of them keeps its `X-Forwarded-*`/`Forwarded` headers and wsgate appends
    /// to them; from anyone else they are replaced. Default: none.
    pub trusted_proxies: Vec<String>,
    /// In a tunnel, send a side that has been silent this long a Ping (and swallow its Pong), so
    /// NATs and other proxies never see an idle connection. Default 25 s; "0s" disables.
    pub ping_interval: Duration,
    /// Close a tunnel side (1011 to the other) that sends nothing this long after a Ping.
    /// Default 10 s.
    pub pong_timeout: Duration,
    /// Close a tunnel in which neither side sent a data frame for this long. Default "0s": never.
    pub idle_timeout: Duration,
    /// Close every tunnel this long after it opened, whatever it is doing. Default "0s": never.
    pub max_lifetime: Duration,
    /// On shutdown, how long tunnels may keep running before both sides get Close 1001.
    /// Default "0s": at once (then `server.shutdown_grace` bounds the closing handshake).
    pub shutdown_grace: Duration,
    /// How tunnels do their I/O once the 101 is through: "io_uring" (one engine thread per
    /// worker; fewer syscalls per message), "epoll" (on the workers, with tokio), or "auto"
    /// (default: io_uring when the kernel allows it, else epoll).
    pub tunnel_io: TunnelIo,
    /// Receive buffers of 16 KiB in each io_uring engine's pool (a power of two, 16 to
    /// 32768): reads in flight at once per engine thread. Memory is reserved per engine as
    /// address space and becomes resident as buffers are used. Default 256 (4 MiB).
    pub uring_buffers: u32,
    /// Bytes one direction of an io_uring tunnel may hold unsent (its destination reads slower
    /// than its source writes) before the tunnel stops reading that source; it reads again
    /// below half of it. Default 262144 (256 KiB); 16384 to 67108864.
    pub tunnel_buffer_bytes: usize,
}

/// `proxy.tunnel_io`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TunnelIo {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            preserve_host: true,
            trusted_proxies: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(0),
            max_lifetime: Duration::from_secs(0),
            shutdown_grace: Duration::from_secs(0),
            tunnel_io: TunnelIo::Auto,
            uring_buffers: 256,
            tunnel_buffer_bytes: 256 * 1024,
        }
    }
}

/// How an upstream picks a server for each request or tunnel.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin (nginx's default).
    #[default]
    RoundRobin,
    /// The server with the fewest requests and tunnels in flight, relative to its weight.
    LeastConn,
    /// The same client address always goes to the same server while it is up.
    IpHash,
}

/// One server of an upstream: `"host:port"` or `{ addr = "host:port", weight = 2, backup = true }`;
/// `"https://host:port"` (or `wss://`) is reached over TLS (see [`UpstreamTls`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ServerEntry {
    Addr(String),
    Table(ServerTable),
}

/// The table form of a server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    /// `host:port`, or `https://host:port` (`wss://` alike) for a server reached over TLS.
    pub addr: String,
    /// Share of requests relative to the other servers. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Used only while every non-backup server is down. Default false.
    #[serde(default)]
    pub backup: bool,
}

impl ServerEntry {
    /// The entry in table form, with defaults filled in.
    pub fn table(&self) -> ServerTable {
        match self {
            ServerEntry::Addr(a) => ServerTable {
                addr: a.clone(),
                weight: 1,
                backup: false,
            },
            ServerEntry::Table(t) => t.clone(),
        }
    }
}

fn default_weight() -> u32 {
    1
}

/// One `[[upstream]]` table, like nginx's `upstream NAME { server ...; }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The name proxy routes use in `proxy_pass`.
    pub name: String,
    /// Servers, each `"host:port"` or `{ addr = "host:port", weight = 2, backup = true }`.
    pub servers: Vec<ServerEntry>,
    /// "round_robin" (default), "least_conn" or "ip_hash".
    #[serde(default)]
    pub balance: Balance,
    /// Failed attempts within `fail_timeout` that take a server out for `fail_timeout`
    /// (nginx `max_fails`). Default 1; 0 never takes a server out.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// The window for `max_fails` and how long a failed server stays out. Default 10 s.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Duration,
    /// Time to establish the TCP connection to a server; past it the next server is tried, or
    /// the client gets 504. Default 5 s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time to wait for the response head (or the 101) after sending the request; past it the
    /// client gets 504. Then, as nginx's `proxy_read_timeout`, the longest wait between two reads
    /// of the response body: a body that stalls longer is cut. Default 60 s. WebSocket tunnels
    /// are not limited by it. For plain HTTP it counts from the moment the request is handed to
    /// the keep-alive pool, so it includes connecting when no pooled connection is free.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Active health check: GET this path on every server each `health_interval`; a server
    /// answering other than 2xx/3xx (or not at all) is out until it answers again.
    /// Default "": only passive checks.
    #[serde(default)]
    pub health_path: String,
    /// How often the active health check runs. Default 5 s.
    #[serde(default = "default_health_interval")]
    pub health_interval: Duration,
    /// `[upstream.tls]`: how the servers are verified (and how wsgate identifies itself) when
    /// they are written `https://host:port`. Absent: the system's roots, each server's own host
    /// name, no client certificate.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// `[upstream.tls]` (or `tls = { ... }` in the `[[upstream]]` table): TLS toward the servers of
/// an upstream written as `https://host:port`, like nginx's `proxy_ssl_*` directives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM file with the CA certificate(s) the servers' certificates must chain to. Default "":
    /// this machine's root certificates (what `curl` trusts).
    pub ca: String,
    /// The name sent in SNI and checked against the servers' certificates. Default "": the host
    /// of each server's address (an IP address is checked as one).
    pub server_name: String,
    /// PEM file with a client certificate chain, for servers that ask for one (mutual TLS).
    /// Default "": none. Needs `client_key`.
    pub client_cert: String,
    /// PEM file with the private key of `client_cert`.
    pub client_key: String,
    /// Accept any certificate (the handshake signature is still checked). For tests against
    /// self-signed servers only: anyone on the path can impersonate the upstream. Logged as a
    /// warning at start. Default false.
    pub insecure_skip_verify: bool,
}

impl Upstream {
    /// Whether the servers are reached over TLS (all of them are, or none: [`check`] refuses a
    /// mix).
    pub fn is_tls(&self) -> bool {
        self.servers
            .iter()
            .any(|s| split_server_scheme(&s.table().addr).is_ok_and(|(tls, _)| tls))
    }
}

/// Reads the PEM certificates in `path` (a CA bundle or a certificate chain, leaf first).
///
/// # Errors
/// A sentence saying what is wrong with the file and what to give instead.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_problem(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_problem(path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{path} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block); give a PEM certificate file"
        ));
    }
    Ok(certs)
}

/// Reads the PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A sentence saying what is wrong with the file and what to give instead.
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY); give the key of the client certificate"
        ),
        e => pem_problem(path, e),
    })
}

fn pem_problem(path: &str, e: pem::Error) -> String {
    match e {
        pem::Error::Io(io) => format!(
            "cannot read {path}: {io}; check the path (a relative path starts from the directory wsgate runs in)"
        ),
        e => format!("{path} is not valid PEM ({e:?}); re-export the file in PEM format"),
    }
}

fn default_max_fails() -> u32 {
    1
}

fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}

/// Reports what is wrong with `[proxy]` and the `[[upstream]]` tables.
pub(super) fn check(p: &Proxy, upstreams: &[Upstream], report: &mut impl FnMut(Vec<Seg>, String)) {
    if !(16..=32_768).contains(&p.uring_buffers) || !p.uring_buffers.is_power_of_two() {
        report(
            keys(&["proxy", "uring_buffers"]),
            format!(
                "{} is not a power of two from 16 to 32768 (default 256)",
                p.uring_buffers
            ),
        );
    }
    if !(16 * 1024..=64 * 1024 * 1024).contains(&p.tunnel_buffer_bytes) {
        report(
            keys(&["proxy", "tunnel_buffer_bytes"]),
            format!(
                "{} is out of range; use 16384 to 67108864 (default 262144)",
                p.tunnel_buffer_bytes
            ),
        );
    }
    if !p.ping_interval.is_zero() && p.pong_timeout.is_zero() {
        report(
            keys(&["proxy", "pong_timeout"]),
            "must be more than 0s while tunnel pings are on (proxy.ping_interval > 0)".into(),
        );
    }
    for (i, t) in p.trusted_proxies.iter().enumerate() {
        if let Err(m) = parse_cidr(t) {
            report(
                vec![
                    Seg::Key("proxy".into()),
                    Seg::Key("trusted_proxies".into()),
                    Seg::Index(i),
                ],
                m,
            );
        }
    }
    for (i, u) in upstreams.iter().enumerate() {
        let at = |field: &str| item("upstream", i, field);
        if u.name.is_empty()
            || !u
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            report(
                at("name"),
                format!(
                    "{:?} is not a valid name; use letters, digits, '-', '_' and '.'",
                    u.name
                ),
            );
        }
        if let Some(j) = upstreams[..i].iter().position(|o| o.name == u.name) {
            report(
                at("name"),
                format!("{:?} is already the name of upstream[{j}]", u.name),
            );
        }
        if u.servers.is_empty() {
            report(
                at("servers"),
                "is empty; list at least one \"host:port\"".into(),
            );
        }
        let mut schemes = (0, 0);
        for (k, entry) in u.servers.iter().enumerate() {
            let t = entry.table();
            let here = vec![
                Seg::Key("upstream".into()),
                Seg::Index(i),
                Seg::Key("servers".into()),
                Seg::Index(k),
            ];
            match split_server_scheme(&t.addr) {
                Ok((tls, host_port)) => {
                    if tls {
                        schemes.1 += 1;
                    } else {
                        schemes.0 += 1;
                    }
                    if let Err(m) = parse_server_addr(&host_port) {
                        report(here.clone(), m);
                    }
                }
                Err(m) => report(here.clone(), m),
            }
            if t.weight == 0 || t.weight > 1000 {
                report(
                    here,
                    format!(
                        "weight {} is out of range; use 1 to 1000 (default 1)",
                        t.weight
                    ),
                );
            }
        }
        if schemes.0 > 0 && schemes.1 > 0 {
            report(
                at("servers"),
                "mixes https:// servers with plain ones; the servers of one upstream are all TLS or all plain, so split them into two upstreams".into(),
            );
        }
        if let Some(tls) = &u.tls {
            check_tls(tls, i, schemes.1 > 0, report);
        }
        if !u.servers.is_empty() && u.servers.iter().all(|s| s.table().backup) {
            report(
                at("servers"),
                "every server is a backup; backups are used only while a non-backup server exists and is down".into(),
            );
        }
        if u.balance == Balance::IpHash && u.servers.iter().any(|s| s.table().backup) {
            report(
                at("balance"),
                "ip_hash cannot be combined with backup servers (as in nginx); remove backup or pick another balance".into(),
            );
        }
        if u.max_fails > 0 && u.fail_timeout.is_zero() {
            report(
                at("fail_timeout"),
                "must be more than 0s while max_fails > 0, e.g. \"10s\"".into(),
            );
        }
        if u.connect_timeout.is_zero() {
            report(
                at("connect_timeout"),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
        if u.read_timeout.is_zero() {
            report(
                at("read_timeout"),
                "must be more than 0s, e.g. \"60s\"".into(),
            );
        }
        if !u.health_path.is_empty() && !u.health_path.starts_with('/') {
            report(
                at("health_path"),
                format!(
                    "{:?} must start with '/' (or be \"\" to turn active checks off)",
                    u.health_path
                ),
            );
        }
        if !u.health_path.is_empty() && u.health_interval.is_zero() {
            report(
                at("health_interval"),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
    }
}

/// Checks `[upstream.tls]` of upstream `i`, reading the PEM files it names as `serve` would.
fn check_tls(
    tls: &UpstreamTls,
    i: usize,
    servers_tls: bool,
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    let at = |k: &str| {
        vec![
            Seg::Key("upstream".into()),
            Seg::Index(i),
            Seg::Key("tls".into()),
            Seg::Key(k.into()),
        ]
    };
    if !servers_tls {
        report(
            vec![
                Seg::Key("upstream".into()),
                Seg::Index(i),
                Seg::Key("tls".into()),
            ],
            "is set but the servers are plain; write them as \"https://host:port\" to reach them over TLS, or remove [upstream.tls]".into(),
        );
    }
    if !tls.ca.is_empty()
        && let Err(m) = read_certs(&tls.ca)
    {
        report(at("ca"), m);
    }
    if !tls.server_name.is_empty()
        && rustls_pki_types::ServerName::try_from(tls.server_name.as_str()).is_err()
    {
        report(
            at("server_name"),
            format!(
                "{:?} is not a DNS name or IP address; give the name the servers' certificates are issued for",
                tls.server_name
            ),
        );
    }
    match (tls.client_cert.is_empty(), tls.client_key.is_empty()) {
        // Reported at the key that is there, so the message has a line to point at.
        (false, true) => report(
            at("client_cert"),
            "has no client_key; add the key it was issued for (client_key = \"client.key\")".into(),
        ),
        (true, false) => report(
            at("client_key"),
            "has no client_cert; add the certificate it belongs to (client_cert = \"client.pem\")"
                .into(),
        ),
        _ => {}
    }
    if !tls.client_cert.is_empty()
        && let Err(m) = read_certs(&tls.client_cert)
    {
        report(at("client_cert"), m);
    }
    if !tls.client_key.is_empty()
        && let Err(m) = read_key(&tls.client_key)
    {
        report(at("client_key"), m);
    }
    if tls.insecure_skip_verify && !tls.ca.is_empty() {
        report(
            at("insecure_skip_verify"),
            "is true while ca is set, so the CA would be ignored; remove one of them".into(),
        );
    }
}

/// The upstream names, for a message about a `proxy_pass` that names none of them.
pub(super) fn upstream_names(upstreams: &[Upstream]) -> String {
    if upstreams.is_empty() {
        return "none is defined; add an [[upstream]] table with name and servers".into();
    }
    let names: Vec<String> = upstreams.iter().map(|u| format!("{:?}", u.name)).collect();
    format!("the upstreams are {}", names.join(", "))
}
