//! Every metric in one place, and their Prometheus text rendering at `GET /metrics`.
//!
//! Other modules only increment; this module never calls back into them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The process-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub handshake_failures: Counter,
    pub connections_refused: Counter,
    pub messages_received: Counter,
    pub publishes: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub pong_timeouts: Counter,
    pub close_timeouts: Counter,
    pub protocol_errors: Counter,
    pub api_errors: Counter,
    pub proxy_requests: Counter,
    pub proxy_errors: Counter,
    pub proxy_tunnels: Gauge,
    pub proxy_tunnels_total: Counter,
    pub proxy_pongs_swallowed: Counter,
    pub history_bytes: Gauge,
    pub command_errors: Counter,
    pub replayed: Counter,
    pub recoveries_failed: Counter,
    pub hook_calls: Counter,
    pub hook_failures: Counter,
    pub hook_forward_refused: Counter,
    pub recoveries: Counter,
    pub history_evictions: Counter,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    pub rate_limited: Counter,
    pub deflate_connections: Gauge,
    pub deflate_compressed: Counter,
    pub deflate_bytes_in: Counter,
    pub deflate_bytes_out: Counter,
    pub deflate_deliveries: Counter,
    pub deflate_inflated: Counter,
}

pub static METRICS: Metrics = Metrics {
    connections: Gauge::new(),
    connections_total: Counter::new(),
    handshake_failures: Counter::new(),
    connections_refused: Counter::new(),
    messages_received: Counter::new(),
    publishes: Counter::new(),
    deliveries: Counter::new(),
    slow_consumers: Counter::new(),
    pong_timeouts: Counter::new(),
    close_timeouts: Counter::new(),
    protocol_errors: Counter::new(),
    api_errors: Counter::new(),
    proxy_requests: Counter::new(),
    proxy_errors: Counter::new(),
    proxy_tunnels: Gauge::new(),
    proxy_tunnels_total: Counter::new(),
    proxy_pongs_swallowed: Counter::new(),
    history_bytes: Gauge::new(),
    command_errors: Counter::new(),
    replayed: Counter::new(),
    recoveries_failed: Counter::new(),
    hook_calls: Counter::new(),
    hook_failures: Counter::new(),
    hook_forward_refused: Counter::new(),
    recoveries: Counter::new(),
    history_evictions: Counter::new(),
    tls_handshakes: Counter::new(),
    tls_handshake_failures: Counter::new(),
    tls_reloads: Counter::new(),
    tls_reload_failures: Counter::new(),
    rate_limited: Counter::new(),
    deflate_connections: Gauge::new(),
    deflate_compressed: Counter::new(),
    deflate_bytes_in: Counter::new(),
    deflate_bytes_out: Counter::new(),
    deflate_deliveries: Counter::new(),
    deflate_inflated: Counter::new(),
};

impl Metrics {
    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, u64); 37] = [
            (
                "wsgate_ws_connections",
                "gauge",
                "WebSocket connections open now",
                self.connections.get(),
            ),
            (
                "wsgate_ws_connections_total",
                "counter",
                "WebSocket connections accepted",
                self.connections_total.get(),
            ),
            (
                "wsgate_ws_handshake_failures_total",
                "counter",
                "Handshakes refused with 4xx",
                self.handshake_failures.get(),
            ),
            (
                "wsgate_ws_connections_refused_total",
                "counter",
                "Handshakes refused at server.max_connections",
                self.connections_refused.get(),
            ),
            (
                "wsgate_ws_messages_received_total",
                "counter",
                "Messages received from clients",
                self.messages_received.get(),
            ),
            (
                "wsgate_hub_publishes_total",
                "counter",
                "Messages published to a group",
                self.publishes.get(),
            ),
            (
                "wsgate_hub_deliveries_total",
                "counter",
                "Messages queued to a member",
                self.deliveries.get(),
            ),
            (
                "wsgate_ws_slow_consumers_total",
                "counter",
                "Connections closed with 1013 slow consumer",
                self.slow_consumers.get(),
            ),
            (
                "wsgate_ws_pong_timeouts_total",
                "counter",
                "Connections closed for not answering a ping",
                self.pong_timeouts.get(),
            ),
            (
                "wsgate_ws_close_timeouts_total",
                "counter",
                "Connections reset because their peer did not take our Close within close_timeout",
                self.close_timeouts.get(),
            ),
            (
                "wsgate_ws_protocol_errors_total",
                "counter",
                "Connections failed for a protocol error",
                self.protocol_errors.get(),
            ),
            (
                "wsgate_api_errors_total",
                "counter",
                "Publish API requests answered with an error",
                self.api_errors.get(),
            ),
            (
                "wsgate_proxy_requests_total",
                "counter",
                "Requests (plain and upgrades) sent to a proxy route",
                self.proxy_requests.get(),
            ),
            (
                "wsgate_proxy_errors_total",
                "counter",
                "Proxy requests answered with 502, 503 or 504",
                self.proxy_errors.get(),
            ),
            (
                "wsgate_proxy_tunnels",
                "gauge",
                "Proxied WebSocket tunnels open now",
                self.proxy_tunnels.get(),
            ),
            (
                "wsgate_proxy_tunnels_total",
                "counter",
                "Proxied WebSocket tunnels opened",
                self.proxy_tunnels_total.get(),
            ),
            (
                "wsgate_proxy_pongs_swallowed_total",
                "counter",
                "Pongs answering wsgate's own tunnel pings, not forwarded",
                self.proxy_pongs_swallowed.get(),
            ),
            (
                "wsgate_hub_history_bytes",
                "gauge",
                "Bytes groups' history holds (payload + 64 per publication)",
                self.history_bytes.get(),
            ),
            (
                "wsgate_hub_history_evictions_total",
                "counter",
                "Groups whose history was dropped to stay under hub.history_max_bytes",
                self.history_evictions.get(),
            ),
            (
                "wsgate_ws_recoveries_total",
                "counter",
                "wsgate.v1 subscribes that recovered everything missed",
                self.recoveries.get(),
            ),
            (
                "wsgate_ws_recoveries_failed_total",
                "counter",
                "wsgate.v1 subscribes that could not recover (recovered: false)",
                self.recoveries_failed.get(),
            ),
            (
                "wsgate_hooks_calls_total",
                "counter",
                "Backend hook requests made (each retry counts)",
                self.hook_calls.get(),
            ),
            (
                "wsgate_hooks_failures_total",
                "counter",
                "Backend hook requests that failed (unreachable, timeout, non-200, bad answer)",
                self.hook_failures.get(),
            ),
            (
                "wsgate_hooks_forward_refused_total",
                "counter",
                "Client messages refused because hooks.max_in_flight were waiting for the backend",
                self.hook_forward_refused.get(),
            ),
            (
                "wsgate_hub_replayed_total",
                "counter",
                "Publications replayed to joining clients (replay and recovery)",
                self.replayed.get(),
            ),
            (
                "wsgate_ws_command_errors_total",
                "counter",
                "wsgate.v1 commands answered with an error",
                self.command_errors.get(),
            ),
            (
                "wsgate_server_tls_handshakes_total",
                "counter",
                "TLS handshakes completed on the listener",
                self.tls_handshakes.get(),
            ),
            (
                "wsgate_server_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out (server.handshake_timeout)",
                self.tls_handshake_failures.get(),
            ),
            (
                "wsgate_server_tls_reloads_total",
                "counter",
                "Certificate reloads (SIGHUP or a changed file) that took effect",
                self.tls_reloads.get(),
            ),
            (
                "wsgate_server_tls_reload_failures_total",
                "counter",
                "Certificate reloads refused (the certificates in use stayed)",
                self.tls_reload_failures.get(),
            ),
            (
                "wsgate_server_rate_limited_total",
                "counter",
                "Connections refused by server.max_handshakes_per_second_per_ip",
                self.rate_limited.get(),
            ),
            (
                "wsgate_ws_deflate_connections",
                "gauge",
                "WebSocket connections open now that negotiated permessage-deflate",
                self.deflate_connections.get(),
            ),
            (
                "wsgate_ws_deflate_compressed_total",
                "counter",
                "Messages compressed (once per publication and protocol, once per echo)",
                self.deflate_compressed.get(),
            ),
            (
                "wsgate_ws_deflate_bytes_in_total",
                "counter",
                "Payload bytes of the messages compressed, before compression",
                self.deflate_bytes_in.get(),
            ),
            (
                "wsgate_ws_deflate_bytes_out_total",
                "counter",
                "Payload bytes of the messages compressed, after compression",
                self.deflate_bytes_out.get(),
            ),
            (
                "wsgate_ws_deflate_deliveries_total",
                "counter",
                "Compressed frames queued to connections (RSV1 set)",
                self.deflate_deliveries.get(),
            ),
            (
                "wsgate_ws_deflate_inflated_total",
                "counter",
                "Compressed messages from clients inflated",
                self.deflate_inflated.get(),
            ),
        ];
        let mut out = String::with_capacity(2048);
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
