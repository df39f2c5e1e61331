//! Typed configuration: defaults, loading from TOML plus `WSGATE_<SECTION>__<KEY>` environment
//! overrides, and the error type that points at `file:line:column`.
//!
//! This module knows nothing about sockets, tokio or the runtime types of other modules; it only
//! describes what the operator asked for. Semantic checks live in [`validate`].

mod duration;
mod validate;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use duration::Duration;
pub use validate::{Problem, path_params};

/// The whole configuration. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub websocket: WebSocket,
    pub api: Api,
    /// `[proxy]`: settings shared by every proxy route.
    pub proxy: Proxy,
    /// `[[upstream]]` tables: named groups of servers that proxy routes forward to.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// `[[route]]` tables: hub routes (`path`) and proxy routes (`path_prefix` + `proxy_pass`).
    /// When no route at all is given, one hub route `/room/{room}/` joining `room:{room}` is used.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
}

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

/// `[server]`: the listener and connection-level limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Worker threads; 0 means one per CPU core. Default 0.
    pub workers: usize,
    /// Most WebSocket connections held at once; the next handshake gets 503. Hub connections and
    /// proxy tunnels are limited separately, each by this number. Default 10000.
    pub max_connections: usize,
    /// Time a client has to send a complete request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; larger gets 431. Default 16384.
    pub max_header_bytes: usize,
    /// After SIGTERM/SIGINT, how long clients get to finish the closing handshake. Default 10 s.
    pub shutdown_grace: Duration,
}

/// `[websocket]`: per-connection WebSocket behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    /// Send a Ping after this long without receiving anything. Default 25 s; "0s" disables.
    pub ping_interval: Duration,
    /// Close the connection when nothing arrives this long after a Ping. Default 10 s.
    pub pong_timeout: Duration,
    /// Largest message a client may send (all fragments together); larger closes with 1009.
    /// Default 65536.
    pub max_message_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue; a consumer that falls further
    /// behind is closed with 1013 "slow consumer". Default 1048576 (1 MiB).
    pub send_queue_bytes: usize,
    /// How long to wait for the peer's Close after sending ours. Default 5 s.
    pub close_timeout: Duration,
    /// Path of the built-in echo route used for conformance testing; "" disables it.
    /// Default "/ws/echo".
    pub echo_path: String,
    /// Longest group name, in bytes, from a URL or the publish API; longer gets 400.
    /// Default 255.
    pub max_group_bytes: usize,
    /// Browser origins allowed to open WebSockets on hub routes, e.g. `https://example.com` or
    /// `https://*.example.com`; others get 403, which stops cross-site WebSocket hijacking.
    /// Clients that send no `Origin` (not browsers) are not affected. Default: any origin.
    pub allowed_origins: Vec<String>,
}

/// `[api]`: the HTTP publish API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Largest publish request body in bytes; larger gets 413. Default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// Most groups one `POST /api/publish` may name in `"groups"`; more gets 400. Default 1000.
    pub max_groups_per_publish: usize,
    /// When set, publish requests need `Authorization: Bearer <token>`. Default: unset.
    pub token: Option<String>,
}

/// What a hub route does with messages its clients send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMessage {
    /// Publish the message to the route's group.
    Broadcast,
    /// Send the message back to its sender only.
    Echo,
    /// Ignore it: the socket only receives.
    Drop,
}

/// One `[[route]]` table: either a hub route (a URL pattern whose clients join a group) or a
/// proxy route (`path_prefix` + `proxy_pass`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Hub route: URL path pattern; `{name}` matches one path segment. A trailing slash is
    /// optional when matching. Example `/room/{room}/`.
    #[serde(default)]
    pub path: String,
    /// Proxy route: every request whose path starts with this prefix goes to `proxy_pass`. The
    /// longest matching prefix wins; hub routes (`path`) are matched first. Example `/`.
    pub path_prefix: Option<String>,
    /// Proxy route: the `[[upstream]]` name to forward to, like nginx's `proxy_pass http://NAME`.
    pub proxy_pass: Option<String>,
    /// Group the client joins, with `{name}` filled from the path. Required unless
    /// `on_message = "echo"`. Example `room:{room}`.
    pub group: Option<String>,
    /// What to do with client messages. Default "broadcast".
    #[serde(default = "default_on_message")]
    pub on_message: OnMessage,
    /// With "broadcast", whether the sender receives its own message too. Default true.
    #[serde(default = "default_true")]
    pub echo_to_sender: bool,
    /// Subprotocols this route speaks, in order of preference; the first one the client also
    /// offers is selected. Default: none.
    #[serde(default)]
    pub subprotocols: Vec<String>,
    /// Overrides `websocket.max_message_bytes` for this route.
    pub max_message_bytes: Option<usize>,
    /// Overrides `websocket.allowed_origins` for this route.
    pub allowed_origins: Option<Vec<String>>,
}

fn default_on_message() -> OnMessage {
    OnMessage::Broadcast
}

fn default_true() -> bool {
    true
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            send_queue_bytes: 1024 * 1024,
            close_timeout: Duration::from_secs(5),
            echo_path: "/ws/echo".into(),
            max_group_bytes: 255,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for Api {
    fn default() -> Self {
        Api {
            max_body_bytes: 1024 * 1024,
            max_groups_per_publish: 1000,
            token: None,
        }
    }
}

impl Config {
    /// The hub routes in effect: the configured ones, or the default room route when no route
    /// (hub or proxy) is configured at all.
    pub fn effective_routes(&self) -> Vec<Route> {
        if !self.routes.is_empty() {
            return self
                .routes
                .iter()
                .filter(|r| !r.is_proxy())
                .cloned()
                .collect();
        }
        vec![Route {
            path: "/room/{room}/".into(),
            path_prefix: None,
            proxy_pass: None,
            group: Some("room:{room}".into()),
            on_message: OnMessage::Broadcast,
            echo_to_sender: true,
            subprotocols: Vec::new(),
            max_message_bytes: None,
            allowed_origins: None,
        }]
    }
}

impl Route {
    /// Whether this is a proxy route (it has `proxy_pass` or `path_prefix`).
    pub fn is_proxy(&self) -> bool {
        self.proxy_pass.is_some() || self.path_prefix.is_some()
    }
}

/// Every problem found while loading a configuration, each with its location.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Error {
    fn one(p: Problem) -> Self {
        Error { problems: vec![p] }
    }
}

/// Loads a config file (or the built-in defaults when `path` is `None`), applies
/// `WSGATE_<SECTION>__<KEY>` variables from `env`, and validates the result.
///
/// # Errors
/// Every problem found, each naming the file and line, or the environment variable, at fault.
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, Error> {
    let (origin, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::one(Problem::plain(
                    p.display().to_string(),
                    format!("cannot read config file: {e}; check the path given to --config"),
                ))
            })?;
            (p.display().to_string(), text)
        }
        None => ("<defaults>".to_string(), String::new()),
    };
    load_str(&origin, &text, env)
}

/// Like [`load`], from text already in memory; `origin` names it in messages.
pub fn load_str(origin: &str, text: &str, env: &[(String, String)]) -> Result<Config, Error> {
    let mut cfg: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(Error::one(validate::from_toml_error(origin, text, &e))),
    };
    validate::apply_env(&mut cfg, origin, text, env)?;
    let problems = validate::check(&cfg, origin, text);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Error { problems })
    }
}

/// The `WSGATE_*__*` variables of this process, for [`load`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("WSGATE_") && k.contains("__"))
        .collect()
}

/// Parses `server.listen`: `host:port` where host is an IP address or `localhost`.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(Ok(p)) = s.strip_prefix("localhost:").map(str::parse::<u16>) {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    }
    Err(format!(
        "{s:?} is not an address; expected ip:port like \"127.0.0.1:8080\" or \"0.0.0.0:8080\""
    ))
}

/// Parses an upstream server address: `host:port` with an IP address or a host name.
pub fn parse_server_addr(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{s:?} is not a server address; expected host:port like \"127.0.0.1:8010\" or \"app.internal:8010\""
        )
    };
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok { Ok(()) } else { Err(bad()) }
}

/// Parses a trusted proxy entry: an IP address or a CIDR range like `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP address or CIDR range; write e.g. \"10.0.0.0/8\" or \"::1\"")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => match b.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?} has a bad prefix length; use 0 to {max}")),
        },
    };
    Ok((ip, bits))
}
