//! `[websocket]`: per-connection WebSocket behaviour on hub routes.

use serde::Deserialize;

use super::duration::Duration;
use super::validate::{Seg, keys};

/// Whether a route offers permessage-deflate (RFC 7692) to clients that ask for it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Never: the extension is declined and every frame goes plain.
    Off,
    /// Accept a client's permessage-deflate offer (every browser makes one).
    On,
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
    /// Clients that send no `Origin` (not browsers) are not affected. Default (empty): pages
    /// of the same host as the request's `Host` and of localhost; `["*"]` allows any origin.
    pub allowed_origins: Vec<String>,
    /// Bad `wsgate.v1` commands (malformed JSON, unknown types, forbidden groups, ...) a
    /// connection may send; each gets an error reply, and the one past this closes the
    /// connection with 1008. Default 10.
    pub max_command_errors: u32,
    /// Groups one `wsgate.v1` connection may subscribe to at once; more gets an error reply.
    /// Default 100.
    pub max_subscriptions: usize,
    /// Most publications one recovery (a subscribe with `since`) may replay; a client that
    /// missed more gets `recovered: false`. Default 300.
    pub recovery_max_publications: usize,
    /// permessage-deflate for clients that offer it: "on" or "off". Each publication is
    /// compressed once and the same bytes go to every member that negotiated it; no
    /// connection keeps a compression context, so it costs no memory per connection. Routes
    /// may override it. Default "on".
    pub compression: Compression,
    /// Messages with a payload smaller than this go uncompressed even to clients that
    /// negotiated compression (small messages shrink little and cost CPU to inflate). Routes
    /// may override it. Default 256 bytes; 0 compresses everything.
    pub compression_min_bytes: usize,
    /// Messages one client may send per second on a hub route (a token bucket holding one
    /// second's worth, so a burst of this many passes); past it the connection is closed with
    /// 1008 naming this key. The echo route is not limited (it is for conformance tests).
    /// Default 1000; 0 turns it off.
    pub max_messages_per_second: u32,
    /// Bytes (frames as read, headers included) one client may send per second on a hub route,
    /// likewise; the bucket always holds at least one largest message. Default 1048576 (1 MiB);
    /// 0 turns it off.
    pub max_bytes_per_second: usize,
    /// Memory all connections together may hold for client messages not yet complete (a frame
    /// announcing a large message costs only what has arrived). The connection whose bytes would
    /// pass it is closed with 1009 naming this key. Default 268435456 (256 MiB).
    pub max_partial_bytes_total: usize,
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
            max_command_errors: 10,
            max_subscriptions: 100,
            recovery_max_publications: 300,
            compression: Compression::On,
            compression_min_bytes: 256,
            max_messages_per_second: 1000,
            max_bytes_per_second: 1024 * 1024,
            max_partial_bytes_total: 256 * 1024 * 1024,
        }
    }
}

impl WebSocket {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        let w = self;
        if !w.ping_interval.is_zero() && w.pong_timeout.is_zero() {
            report(
                keys(&["websocket", "pong_timeout"]),
                "must be more than 0s while pings are on (ping_interval > 0)".into(),
            );
        }
        if w.max_message_bytes == 0 {
            report(
                keys(&["websocket", "max_message_bytes"]),
                "must be at least 1".into(),
            );
        }
        if w.send_queue_bytes == 0 {
            report(
                keys(&["websocket", "send_queue_bytes"]),
                "must be at least 1".into(),
            );
        }
        if w.close_timeout.is_zero() {
            report(
                keys(&["websocket", "close_timeout"]),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
        for o in &w.allowed_origins {
            if let Err(m) = check_origin(o) {
                report(keys(&["websocket", "allowed_origins"]), m);
            }
        }
        // The heartbeat wheel costs memory per second of interval (about 24 bytes): a typo like
        // "277777h" would be gigabytes at start.
        for (key, d) in [
            ("ping_interval", w.ping_interval),
            ("pong_timeout", w.pong_timeout),
            ("close_timeout", w.close_timeout),
        ] {
            if d.get() > std::time::Duration::from_secs(3600) {
                report(
                    keys(&["websocket", key]),
                    format!("{d} is more than 1h; use at most \"1h\""),
                );
            } else if !d.is_zero() && d.get() < std::time::Duration::from_millis(1) {
                report(
                    keys(&["websocket", key]),
                    format!(
                        "{:?} is under a millisecond; use at least \"1ms\" (or \"0s\" where it turns the feature off)",
                        d.get()
                    ),
                );
            }
        }
        let reserved = ["/", "/healthz", "/metrics", "/wsgate.js", "/favicon.ico"];
        if reserved.contains(&w.echo_path.as_str())
            || w.echo_path == "/api"
            || w.echo_path.starts_with("/api/")
        {
            report(
                keys(&["websocket", "echo_path"]),
                format!(
                    "{:?} would shadow wsgate's own endpoint; pick another path such as \"/ws/echo\" (or \"\" to turn it off)",
                    w.echo_path
                ),
            );
        }
        if !w.echo_path.is_empty() && !w.echo_path.starts_with('/') {
            report(
                keys(&["websocket", "echo_path"]),
                format!(
                    "{:?} must start with '/' (or be \"\" to turn the echo route off)",
                    w.echo_path
                ),
            );
        }

        for (key, v) in [
            ("max_subscriptions", w.max_subscriptions),
            ("recovery_max_publications", w.recovery_max_publications),
        ] {
            if v == 0 {
                report(keys(&["websocket", key]), "must be at least 1".into());
            }
        }
        if w.max_bytes_per_second != 0 && w.max_bytes_per_second < 1024 {
            report(
                keys(&["websocket", "max_bytes_per_second"]),
                format!(
                    "{} is too low for any client; use at least 1024 (default 1048576), or 0 to turn the limit off",
                    w.max_bytes_per_second
                ),
            );
        }
        if w.max_partial_bytes_total < w.max_message_bytes.max(64 * 1024) {
            report(
                keys(&["websocket", "max_partial_bytes_total"]),
                format!(
                    "{} would refuse a single largest message; use at least websocket.max_message_bytes and 65536 (default 268435456)",
                    w.max_partial_bytes_total
                ),
            );
        }
        if w.max_group_bytes == 0 {
            report(
                keys(&["websocket", "max_group_bytes"]),
                "must be at least 1".into(),
            );
        }
    }
}

/// An allowed origin is what a browser sends in `Origin`: `scheme://host[:port]`, no path; the
/// host may start with `*.` for every subdomain.
pub(super) fn check_origin(o: &str) -> Result<(), String> {
    if o == "*" {
        return Ok(());
    }
    let Some((scheme, authority)) = o.split_once("://") else {
        return Err(format!(
            "{o:?} is not an origin; write it as a browser sends it, e.g. \"https://example.com\""
        ));
    };
    if scheme.is_empty() || authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "{o:?} is not an origin: scheme://host[:port] with no path, e.g. \"https://example.com:8443\""
        ));
    }
    if authority.contains('*')
        && !(authority.starts_with("*.") && authority[2..].find('*').is_none())
    {
        return Err(format!(
            "{o:?}: a wildcard may only stand for subdomains, as in \"https://*.example.com\""
        ));
    }
    Ok(())
}
