//! `[proxy]` and `[[upstream]]`: how proxied requests and tunnels behave, and the servers they
//! go to.

use serde::Deserialize;

use super::addr::{parse_cidr, parse_server_addr};
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

/// One server of an upstream: `"host:port"` or `{ addr = "host:port", weight = 2, backup = true }`.
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
    /// `host:port`.
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
        for (k, entry) in u.servers.iter().enumerate() {
            let t = entry.table();
            let here = vec![
                Seg::Key("upstream".into()),
                Seg::Index(i),
                Seg::Key("servers".into()),
                Seg::Index(k),
            ];
            if let Err(m) = parse_server_addr(&t.addr) {
                report(here.clone(), m);
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

/// The upstream names, for a message about a `proxy_pass` that names none of them.
pub(super) fn upstream_names(upstreams: &[Upstream]) -> String {
    if upstreams.is_empty() {
        return "none is defined; add an [[upstream]] table with name and servers".into();
    }
    let names: Vec<String> = upstreams.iter().map(|u| format!("{:?}", u.name)).collect();
    format!("the upstreams are {}", names.join(", "))
}
