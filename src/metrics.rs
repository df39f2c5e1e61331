//! Every metric in one place, registered with a `prometheus_client` [`Registry`] and rendered
//! by it at `GET /metrics` (Prometheus text format 0.0.4).
//!
//! Other modules only count, through the handles on [`METRICS`]; this module never calls back
//! into them. A labelled series is looked up once, when its route, outcome or upstream is first
//! named (a route's gauge when the route is built, the `101` outcome at start), never per
//! message: on the hot paths a count is one relaxed atomic add (for bytes and histograms, to the
//! calling thread's own cache line). Counters are registered without
//! their `_total` suffix, which the encoder appends; units (`_seconds`, `_bytes`) likewise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(prometheus_client::metrics::gauge::Gauge);

impl Gauge {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn dec(&self) {
        self.0.dec();
    }
    pub fn set(&self, v: u64) {
        self.0.set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn sub(&self, n: u64) {
        self.0.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn get(&self) -> u64 {
        u64::try_from(self.0.get()).unwrap_or(0)
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Per-thread slots of a hot metric. A counter bumped by every worker on every write would
/// bounce one cache line between cores; each thread instead adds to its own line (picked once
/// per thread) and a scrape sums the lines.
const SHARDS: usize = 8;

/// One cache line of slots: a histogram's buckets and sum, or a counter in slot 0.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Line([AtomicU64; 16]);

fn shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A counter on a hot path (bytes in and out): one relaxed add to this thread's own line.
#[derive(Debug, Clone, Default)]
pub struct HotCounter(Arc<[Line; SHARDS]>);

impl HotCounter {
    pub fn add(&self, n: u64) {
        self.0[shard()].0[0].fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.iter().map(|l| l.0[0].load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for HotCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for HotCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A distribution in fixed buckets (a Prometheus histogram, not a summary), without a lock:
/// `prometheus_client`'s own histogram takes a mutex per observation, which the publish path
/// must not. Values are integers in the histogram's own unit (nanoseconds, frames); `scale`
/// turns them into the exported unit (seconds) when rendered. Observations go to the calling
/// thread's line (see [`HotCounter`]).
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds, ascending, in the recorded unit; a last, implicit `+Inf` bucket follows.
    bounds: &'static [u64],
    scale: f64,
    /// Per thread: one count per bucket (not cumulative), `bounds.len() + 1` of them, then the
    /// sum in the last slot.
    lines: [Line; SHARDS],
}

/// Most bounds a histogram may have: its buckets, `+Inf` and the sum share one line.
const MAX_BOUNDS: usize = 14;

impl Histogram {
    pub fn new(bounds: &'static [u64], scale: f64) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "at most {MAX_BOUNDS} buckets");
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram(Arc::new(Buckets {
            bounds,
            scale,
            lines: Default::default(),
        }))
    }

    /// Durations, kept in nanoseconds and exported in seconds.
    pub fn seconds(bounds_ns: &'static [u64]) -> Self {
        Histogram::new(bounds_ns, 1e-9)
    }

    pub fn observe(&self, v: u64) {
        let b = &self.0;
        // `le` is inclusive: v lands in the first bucket whose bound is >= v.
        let i = b.bounds.partition_point(|&bound| bound < v);
        let line = &b.lines[shard()].0;
        line[i].fetch_add(1, Ordering::Relaxed);
        line[15].fetch_add(v, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations in bucket `i` (the last is `+Inf`), all threads together.
    fn bucket(&self, i: usize) -> u64 {
        self.0
            .lines
            .iter()
            .map(|l| l.0[i].load(Ordering::Relaxed))
            .sum()
    }

    fn sum(&self) -> u64 {
        self.0
            .lines
            .iter()
            .map(|l| l.0[15].load(Ordering::Relaxed))
            .sum()
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        (0..=self.0.bounds.len()).map(|i| self.bucket(i)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(b.bounds.len() + 1);
        let mut count = 0;
        for i in 0..=b.bounds.len() {
            let c = self.bucket(i);
            count += c;
            let le = b
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&v| v as f64 * b.scale);
            buckets.push((le, c));
        }
        let sum = self.sum() as f64 * b.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// From 10 µs (a publish to a few local members) to 1 s (a stalled broker).
static PUBLISH_BUCKETS: [u64; 12] = [
    10 * US,
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    500 * US,
    MS,
    5 * MS,
    10 * MS,
    50 * MS,
    250 * MS,
    1000 * MS,
];

/// From 1 ms to 30 s: an upstream's answer, or a tunnel's setup.
static PROXY_BUCKETS: [u64; 12] = [
    MS,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    10_000 * MS,
    30_000 * MS,
];

/// Frames a session found queued when it woke to write: 1 for a member keeping up, tens to
/// hundreds for one falling behind a burst.
static QUEUE_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 512, 2048];

fn proxy_histogram() -> Histogram {
    Histogram::seconds(&PROXY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenedLabel {
    via: &'static str,
    http_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReason {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamCode {
    upstream: String,
    code: u16,
}

/// The process-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    route_connections: Family<RouteLabel, Gauge>,
    handshakes: Family<OutcomeLabel, Counter>,
    /// `wsgate_ws_handshakes_total{outcome="101"}`.
    pub handshakes_accepted: Counter,
    /// `wsgate_ws_handshakes_total{outcome="max_connections"}`.
    pub connections_refused: Counter,
    opened: Family<OpenedLabel, Counter>,
    pub messages_received: Counter,
    pub received_bytes: HotCounter,
    pub sent_bytes: HotCounter,
    pub publishes: Counter,
    pub deliveries: Counter,
    pub publish_duration: Histogram,
    pub send_queue_frames: Histogram,
    pub slow_consumers: Counter,
    pub pong_timeouts: Counter,
    pub close_timeouts: Counter,
    pub protocol_errors: Counter,
    pub api_errors: Counter,
    pub proxy_requests: Counter,
    pub proxy_errors: Counter,
    proxy_responses: Family<UpstreamCode, Counter>,
    proxy_durations: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    proxy_upstream_tls_failures: Family<UpstreamReason, Counter>,
    pub proxy_tunnels: Gauge,
    pub proxy_tunnels_total: Counter,
    pub proxy_pongs_swallowed: Counter,
    pub history_bytes: Gauge,
    pub command_errors: Counter,
    pub replayed: Counter,
    pub recoveries_failed: Counter,
    pub recoveries: Counter,
    pub history_evictions: Counter,
    pub broker_up: Gauge,
    pub broker_reconnects: Counter,
    pub hook_calls: Counter,
    pub hook_failures: Counter,
    pub hook_forward_refused: Counter,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    pub rate_limited: Counter,
    pub per_ip_refused: Counter,
    pub inbound_rate_closes: Counter,
    pub partial_bytes: Gauge,
    pub partial_bytes_closes: Counter,
    pub head_refusals: Counter,
    pub max_connections_limit: Gauge,
    pub listen_backlog: Gauge,
    pub tunnel_read_pauses: Counter,
    pub uring_buffer_waits: Counter,
    pub nofile_limit: Gauge,
    pub deflate_connections: Gauge,
    pub deflate_compressed: Counter,
    pub deflate_bytes_in: Counter,
    pub deflate_bytes_out: Counter,
    pub deflate_deliveries: Counter,
    pub deflate_inflated: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Registers metrics as they are made, so a field cannot be declared and forgotten.
struct Reg(Registry);

impl Reg {
    fn counter(&mut self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.0.register(name, help, c.clone());
        c
    }
    fn bytes(&mut self, name: &str, help: &str) -> HotCounter {
        let c = HotCounter::default();
        self.0
            .register_with_unit(name, help, Unit::Bytes, c.clone());
        c
    }
    fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.0.register(name, help, g.clone());
        g
    }
    fn seconds(&mut self, name: &str, help: &str, h: Histogram) -> Histogram {
        self.0
            .register_with_unit(name, help, Unit::Seconds, h.clone());
        h
    }
    fn histogram(&mut self, name: &str, help: &str, h: Histogram) -> Histogram {
        self.0.register(name, help, h.clone());
        h
    }
}

impl Metrics {
    fn new() -> Self {
        let mut r = Reg(Registry::default());
        let route_connections = Family::<RouteLabel, Gauge>::default();
        r.0.register(
            "wsgate_ws_route_connections",
            "WebSocket connections open now, by hub route",
            route_connections.clone(),
        );
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        r.0.register(
            "wsgate_ws_handshakes",
            "WebSocket handshakes on hub routes by outcome: 101, or the refusal's reason",
            handshakes.clone(),
        );
        let outcome = |o| handshakes.get_or_create_owned(&OutcomeLabel { outcome: o });
        let handshakes_accepted = outcome("101");
        let connections_refused = outcome("max_connections");
        let opened = Family::<OpenedLabel, Counter>::default();
        r.0.register(
            "wsgate_ws_opened",
            "WebSockets opened, by where (hub route or proxy tunnel) and the HTTP version of the handshake: \
1.1 (GET + Upgrade) or 2 (extended CONNECT, RFC 8441)",
            opened.clone(),
        );
        let proxy_responses = Family::<UpstreamCode, Counter>::default();
        r.0.register(
            "wsgate_proxy_responses",
            "Proxied requests by upstream and the status the client got (101 for a tunnel)",
            proxy_responses.clone(),
        );
        let proxy_durations: Family<UpstreamLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(proxy_histogram);
        r.0.register_with_unit(
            "wsgate_proxy_request_duration",
            "Time from a proxied request to its response head (for an upgrade: to the 101), by upstream",
            Unit::Seconds,
            proxy_durations.clone(),
        );
        let proxy_upstream_tls_failures = Family::<UpstreamReason, Counter>::default();
        r.0.register(
            "wsgate_proxy_upstream_tls_failures",
            "TLS failures toward https:// upstream servers, by upstream and reason (untrusted, name, expired, not_tls, client_cert, timeout, ...)",
            proxy_upstream_tls_failures.clone(),
        );
        Metrics {
            connections: r.gauge("wsgate_ws_connections", "WebSocket connections open now"),
            connections_total: r.counter("wsgate_ws_connections", "WebSocket connections accepted"),
            route_connections,
            handshakes,
            handshakes_accepted,
            connections_refused,
            opened,
            messages_received: r.counter(
                "wsgate_ws_messages_received",
                "Messages received from clients",
            ),
            received_bytes: r.bytes(
                "wsgate_ws_received",
                "Bytes read from WebSocket clients (frames, headers included)",
            ),
            sent_bytes: r.bytes(
                "wsgate_ws_sent",
                "Bytes written to WebSocket clients (frames, headers included)",
            ),
            publishes: r.counter("wsgate_hub_publishes", "Messages published to a group"),
            deliveries: r.counter(
                "wsgate_hub_deliveries",
                "Messages queued to a member (messages out)",
            ),
            publish_duration: r.seconds(
                "wsgate_hub_publish_duration",
                "Time to publish one message: through the broker and queued to every local member",
                Histogram::seconds(&PUBLISH_BUCKETS),
            ),
            send_queue_frames: r.histogram(
                "wsgate_ws_send_queue_frames",
                "Frames a session found queued each time it woke to write (queue depth)",
                Histogram::new(&QUEUE_BUCKETS, 1.0),
            ),
            slow_consumers: r.counter(
                "wsgate_ws_slow_consumers",
                "Connections closed with 1013 slow consumer",
            ),
            pong_timeouts: r.counter(
                "wsgate_ws_pong_timeouts",
                "Connections closed for not answering a ping",
            ),
            close_timeouts: r.counter(
                "wsgate_ws_close_timeouts",
                "Connections reset because their peer did not take our Close within close_timeout",
            ),
            protocol_errors: r.counter(
                "wsgate_ws_protocol_errors",
                "Connections failed for a protocol error",
            ),
            api_errors: r.counter(
                "wsgate_api_errors",
                "Publish API requests answered with an error",
            ),
            proxy_requests: r.counter(
                "wsgate_proxy_requests",
                "Requests (plain and upgrades) sent to a proxy route",
            ),
            proxy_errors: r.counter(
                "wsgate_proxy_errors",
                "Proxy requests answered with 502, 503 or 504",
            ),
            proxy_responses,
            proxy_durations,
            proxy_upstream_tls_failures,
            proxy_tunnels: r.gauge("wsgate_proxy_tunnels", "Proxied WebSocket tunnels open now"),
            proxy_tunnels_total: r
                .counter("wsgate_proxy_tunnels", "Proxied WebSocket tunnels opened"),
            proxy_pongs_swallowed: r.counter(
                "wsgate_proxy_pongs_swallowed",
                "Pongs answering wsgate's own tunnel pings, not forwarded",
            ),
            history_bytes: r.gauge(
                "wsgate_hub_history_bytes",
                "Bytes groups' history holds (payload + 64 per publication)",
            ),
            history_evictions: r.counter(
                "wsgate_hub_history_evictions",
                "Groups whose history was dropped to stay under hub.history_max_bytes",
            ),
            recoveries: r.counter(
                "wsgate_ws_recoveries",
                "wsgate.v1 subscribes that recovered everything missed",
            ),
            recoveries_failed: r.counter(
                "wsgate_ws_recoveries_failed",
                "wsgate.v1 subscribes that could not recover (recovered: false)",
            ),
            replayed: r.counter(
                "wsgate_hub_replayed",
                "Publications replayed to joining clients (replay and recovery)",
            ),
            command_errors: r.counter(
                "wsgate_ws_command_errors",
                "wsgate.v1 commands answered with an error",
            ),
            broker_up: r.gauge(
                "wsgate_broker_up",
                "1 while the broker is reachable (always 1 for the in-process broker)",
            ),
            broker_reconnects: r.counter(
                "wsgate_broker_reconnects",
                "Times the broker connection was re-established after a loss",
            ),
            hook_calls: r.counter(
                "wsgate_hooks_calls",
                "Backend hook requests made (each retry counts)",
            ),
            hook_failures: r.counter(
                "wsgate_hooks_failures",
                "Backend hook requests that failed (unreachable, timeout, non-200, bad answer)",
            ),
            hook_forward_refused: r.counter(
                "wsgate_hooks_forward_refused",
                "Client messages refused because hooks.max_in_flight were waiting for the backend",
            ),
            tls_handshakes: r.counter(
                "wsgate_server_tls_handshakes",
                "TLS handshakes completed on the listener",
            ),
            tls_handshake_failures: r.counter(
                "wsgate_server_tls_handshake_failures",
                "TLS handshakes that failed or timed out (server.handshake_timeout)",
            ),
            tls_reloads: r.counter(
                "wsgate_server_tls_reloads",
                "Certificate reloads (SIGHUP or a changed file) that took effect",
            ),
            tls_reload_failures: r.counter(
                "wsgate_server_tls_reload_failures",
                "Certificate reloads refused (the certificates in use stayed)",
            ),
            rate_limited: r.counter(
                "wsgate_server_rate_limited",
                "Connections refused by server.max_handshakes_per_second_per_ip",
            ),
            per_ip_refused: r.counter(
                "wsgate_server_connections_per_ip_refused",
                "Connections refused by server.max_connections_per_ip (that address held its maximum)",
            ),
            inbound_rate_closes: r.counter(
                "wsgate_ws_inbound_rate_closes",
                "WebSocket connections closed with 1008 for sending faster than websocket.max_messages_per_second or max_bytes_per_second",
            ),
            partial_bytes: r.gauge(
                "wsgate_ws_partial_bytes",
                "Bytes held now for client messages not yet complete, all connections together",
            ),
            partial_bytes_closes: r.counter(
                "wsgate_ws_partial_bytes_closes",
                "WebSocket connections closed with 1009 because websocket.max_partial_bytes_total was reached",
            ),
            head_refusals: r.counter(
                "wsgate_server_head_refusals",
                "Requests refused for their head (too large, too many fields, malformed) before routing",
            ),
            max_connections_limit: r.gauge(
                "wsgate_server_max_connections",
                "server.max_connections in force (by default derived from the open files limit)",
            ),
            listen_backlog: r.gauge(
                "wsgate_server_listen_backlog",
                "server.listen_backlog in force (the kernel caps it at net.core.somaxconn)",
            ),
            tunnel_read_pauses: r.counter(
                "wsgate_proxy_tunnel_read_pauses",
                "Times an io_uring tunnel direction stopped reading its source because proxy.tunnel_buffer_bytes were unsent to the other side",
            ),
            uring_buffer_waits: r.counter(
                "wsgate_proxy_uring_buffer_waits",
                "Times a tunnel read waited because its io_uring engine's receive pool (proxy.uring_buffers) was empty",
            ),
            nofile_limit: r.gauge(
                "wsgate_process_open_files_limit",
                "The soft open files limit (RLIMIT_NOFILE) after raising it to the hard limit at start",
            ),
            deflate_connections: r.gauge(
                "wsgate_ws_deflate_connections",
                "WebSocket connections open now that negotiated permessage-deflate",
            ),
            deflate_compressed: r.counter(
                "wsgate_ws_deflate_compressed",
                "Messages compressed (once per publication and protocol, once per echo)",
            ),
            deflate_bytes_in: r.counter(
                "wsgate_ws_deflate_bytes_in",
                "Payload bytes of the messages compressed, before compression",
            ),
            deflate_bytes_out: r.counter(
                "wsgate_ws_deflate_bytes_out",
                "Payload bytes of the messages compressed, after compression",
            ),
            deflate_deliveries: r.counter(
                "wsgate_ws_deflate_deliveries",
                "Compressed frames queued to connections (RSV1 set)",
            ),
            deflate_inflated: r.counter(
                "wsgate_ws_deflate_inflated",
                "Compressed messages from clients inflated",
            ),
            registry: r.0,
        }
    }

    /// The open-connections gauge of one hub route; resolve it once, when the route is built.
    pub fn route_connections(&self, route: &str) -> Gauge {
        self.route_connections.get_or_create_owned(&RouteLabel {
            route: route.to_string(),
        })
    }

    /// Counts a handshake refused for `reason` (a short snake_case word: `origin`,
    /// `bad_key`, ...). Refusals are rare enough for a label lookup; the `101`s are counted
    /// through [`Metrics::handshakes_accepted`].
    pub fn handshake_refused(&self, reason: &'static str) {
        self.handshakes
            .get_or_create(&OutcomeLabel { outcome: reason })
            .inc();
    }

    /// Counts a TLS failure toward a server of `upstream`.
    pub fn proxy_upstream_tls_failure(&self, upstream: &str, reason: &'static str) {
        self.proxy_upstream_tls_failures
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts a WebSocket opened `via` "hub" or "proxy" over `http_version` ("1.1" or "2").
    pub fn websocket_opened(&self, via: &'static str, http_version: &'static str) {
        self.opened
            .get_or_create(&OpenedLabel { via, http_version })
            .inc();
    }

    /// Counts a proxied request's answer (`code` as the client got it) and how long the upstream
    /// took to give its head.
    pub fn proxy_response(&self, upstream: &str, code: u16, took: Duration) {
        let upstream = upstream.to_string();
        self.proxy_durations
            .get_or_create(&UpstreamLabel {
                upstream: upstream.clone(),
            })
            .observe_duration(took);
        self.proxy_responses
            .get_or_create(&UpstreamCode { upstream, code })
            .inc();
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The broker says whether it can reach its server (the Redis broker on each connect and loss).
pub fn broker_up(up: bool) {
    METRICS.broker_up.set(u64::from(up));
}

/// The broker's connection came back after a loss.
pub fn broker_reconnect() {
    METRICS.broker_reconnects.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(prefix))
    }

    #[test]
    fn a_value_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        static B: [u64; 3] = [10, 20, 30];
        let h = Histogram::new(&B, 1.0);
        for v in [0, 10, 11, 20, 31, 1000] {
            h.observe(v);
        }
        let counts: Vec<u64> = (0..4).map(|i| h.bucket(i)).collect();
        assert_eq!(counts, [2, 2, 0, 2]);
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), 1072);
    }

    #[test]
    fn threads_count_on_their_own_lines_and_a_scrape_sums_them() {
        static B: [u64; 2] = [1, 2];
        let (c, h) = (HotCounter::default(), Histogram::new(&B, 1.0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(2);
                        h.observe(2);
                    }
                });
            }
        });
        assert_eq!(c.get(), 8000);
        assert_eq!(h.count(), 4000);
        assert_eq!(h.bucket(1), 4000);
        assert_eq!(h.sum(), 8000);
    }

    #[test]
    fn histograms_render_cumulative_buckets_in_seconds() {
        let m = Metrics::new();
        m.publish_duration
            .observe_duration(Duration::from_micros(30));
        m.publish_duration
            .observe_duration(Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains("# TYPE wsgate_hub_publish_duration_seconds histogram"));
        assert_eq!(
            line(
                &text,
                "wsgate_hub_publish_duration_seconds_bucket{le=\"5e-05\"} "
            ),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            line(
                &text,
                "wsgate_hub_publish_duration_seconds_bucket{le=\"+Inf\"} "
            ),
            Some("2")
        );
        assert_eq!(
            line(&text, "wsgate_hub_publish_duration_seconds_count "),
            Some("2")
        );
        let sum: f64 = line(&text, "wsgate_hub_publish_duration_seconds_sum ")
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 0.00203).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn counters_get_their_total_suffix_and_labelled_series_their_labels() {
        let m = Metrics::new();
        m.handshakes_accepted.add(3);
        m.handshake_refused("origin");
        m.route_connections("/ws/{group}").inc();
        m.proxy_response("app", 502, Duration::from_millis(3));
        m.received_bytes.add(7);
        let text = m.render();
        assert_eq!(
            line(&text, "wsgate_ws_handshakes_total{outcome=\"101\"} "),
            Some("3")
        );
        assert_eq!(
            line(&text, "wsgate_ws_handshakes_total{outcome=\"origin\"} "),
            Some("1")
        );
        assert_eq!(
            line(&text, "wsgate_ws_route_connections{route=\"/ws/{group}\"} "),
            Some("1")
        );
        assert_eq!(
            line(
                &text,
                "wsgate_proxy_responses_total{upstream=\"app\",code=\"502\"} "
            ),
            Some("1")
        );
        assert_eq!(
            line(
                &text,
                "wsgate_proxy_request_duration_seconds_bucket{upstream=\"app\",le=\"0.005\"} "
            ),
            Some("1")
        );
        assert_eq!(line(&text, "wsgate_ws_received_bytes_total "), Some("7"));
        assert_eq!(line(&text, "wsgate_ws_connections "), Some("0"));
        assert_eq!(line(&text, "wsgate_ws_connections_total "), Some("0"));
        assert!(text.contains("# TYPE wsgate_broker_reconnects_total counter"));
    }
}
