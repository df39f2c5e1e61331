//! `[server]`: the listener and connection-level limits.

use serde::Deserialize;

use super::addr::parse_listen;
use super::duration::Duration;
use super::http2::Http2;
use super::tls::Tls;
use super::validate::{Seg, keys};

/// `[server]`: the listener and connection-level limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Worker threads; 0 means one per CPU core less one, at least one (a core is left to the
    /// kernel's network work and to the processes beside wsgate). Default 0.
    pub workers: usize,
    /// How connections are spread over the workers. "work_stealing" (default): one tokio
    /// multi-threaded runtime whose idle workers take tasks from busy ones. "per_core": each
    /// worker is a thread with its own single-threaded runtime and its own listening socket on
    /// the same address (`SO_REUSEPORT`); a connection stays on the worker that accepted it
    /// (handshakes per second 0.95-1.39x work stealing's over four runs here; a fan-out to
    /// thousands at a quarter of the rate, since a publisher's request then waits behind every
    /// member it woke on its worker: BENCHMARKS.md).
    pub runtime: Runtime,
    /// Most WebSocket connections held at once; the next handshake gets 503. Hub connections and
    /// proxy tunnels are limited separately, each by this number. Default 0: the open-files
    /// limit (raised to its hard limit at start) less a reserve of 5% (at least 256), stated in
    /// the start log and exported as `wsgate_server_max_connections`.
    pub max_connections: usize,
    /// Time a client has to send a complete request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; larger gets 431. Default 16384.
    pub max_header_bytes: usize,
    /// Most header fields one request may have, on every request of a connection; more gets
    /// 431 naming this key. Default 100.
    pub max_headers: usize,
    /// After SIGTERM/SIGINT, how long clients get to finish the closing handshake. Default 10 s.
    pub shutdown_grace: Duration,
    /// New connections one IP address may open per second (a burst of this many, refilled
    /// continuously); more get 429 (plain HTTP) or are closed before the TLS handshake (TLS).
    /// Loopback peers (a proxy on this machine, local tools) are not limited. Default 200; 0
    /// turns the limit off.
    pub max_handshakes_per_second_per_ip: u32,
    /// Connections one IP address may hold open at once (HTTP connections, and hub WebSockets
    /// for their whole life); the next gets 429 (plain HTTP) or is closed before the TLS
    /// handshake (TLS). Loopback peers are not limited, for the same reason as above (a proxy
    /// on this machine puts every client behind 127.0.0.1). Default 256; 0 turns it off.
    pub max_connections_per_ip: u32,
    /// Connections the kernel may hold accepted but not yet taken by wsgate (the listen
    /// backlog; Linux caps it at `net.core.somaxconn`). Past it, new connections wait in SYN
    /// retries. Default 4096.
    pub listen_backlog: u32,
    /// `[server.tls]`: serve `https://` and `wss://` with these certificates. Default: plain.
    pub tls: Option<Tls>,
    /// `[server.http2]`: HTTP/2 (and WebSockets over it) next to HTTP/1.1.
    pub http2: Http2,
}

/// `server.runtime`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    #[default]
    WorkStealing,
    PerCore,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            runtime: Runtime::WorkStealing,
            max_connections: 0,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(10),
            max_handshakes_per_second_per_ip: 200,
            max_connections_per_ip: 256,
            listen_backlog: 4096,
            tls: None,
            http2: Http2::default(),
        }
    }
}

impl Server {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        let s = self;
        if let Err(m) = parse_listen(&s.listen) {
            report(keys(&["server", "listen"]), m);
        }
        if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
            report(
                keys(&["server", "max_header_bytes"]),
                format!(
                    "{} is out of range; use 1024 to 1048576 (default 16384)",
                    s.max_header_bytes
                ),
            );
        }
        if !(1..=1024).contains(&s.max_headers) {
            report(
                keys(&["server", "max_headers"]),
                format!(
                    "{} is out of range; use 1 to 1024 (default 100)",
                    s.max_headers
                ),
            );
        }
        if !(1..=65_535).contains(&s.listen_backlog) {
            report(
                keys(&["server", "listen_backlog"]),
                format!(
                    "{} is out of range; use 1 to 65535 (default 4096)",
                    s.listen_backlog
                ),
            );
        }
        if s.handshake_timeout.is_zero() {
            report(
                keys(&["server", "handshake_timeout"]),
                "must be more than 0s, e.g. \"10s\"".into(),
            );
        }
        if let Some(tls) = &s.tls {
            tls.check(report);
            if !s.http2.enabled && tls.alpn.iter().any(|p| p == "h2") {
                report(
                    keys(&["server", "tls", "alpn"]),
                    "offers \"h2\" but server.http2.enabled is false; remove \"h2\" or enable HTTP/2".into(),
                );
            }
        }
        s.http2.check(report);
        if s.workers > 1024 {
            report(
                keys(&["server", "workers"]),
                "more than 1024 workers; use 0 for one per core".into(),
            );
        }
    }
}
