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
    /// New connections one IP address may open per second (a burst of this many, refilled
    /// continuously); more get 429 (plain HTTP) or are closed before the TLS handshake (TLS).
    /// Loopback peers (a proxy on this machine, local tools) are not limited. Default 200; 0
    /// turns the limit off.
    pub max_handshakes_per_second_per_ip: u32,
    /// `[server.tls]`: serve `https://` and `wss://` with these certificates. Default: plain.
    pub tls: Option<Tls>,
    /// `[server.http2]`: HTTP/2 (and WebSockets over it) next to HTTP/1.1.
    pub http2: Http2,
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
            max_handshakes_per_second_per_ip: 200,
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
        if s.max_connections == 0 {
            report(
                keys(&["server", "max_connections"]),
                "must be at least 1".into(),
            );
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
