//! The `wsgate bench` command line: what to measure and with which settings.

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// N connections, each keeping K messages in flight to an echo endpoint: messages/s, RTT.
    Echo,
    /// N members of one group each send one message per iteration; the server broadcasts each
    /// to all members: deliveries/s and iteration latency.
    Room,
    /// N subscribers; messages published over HTTP at a set rate: publish->deliver latency,
    /// loss, duplicates and order per subscriber.
    Fanout,
    /// N connections held idle (answering pings): server RSS and CPU per connection (--pid).
    Idle,
    /// C workers loop connect + upgrade + close: handshakes/s.
    Handshake,
    /// N `wsgate.v1` clients subscribe, all drop, --missed messages are published, then all
    /// reconnect at once and recover them: recoveries/s and time to recovered.
    Recover,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Room => "room",
            Mode::Fanout => "fanout",
            Mode::Idle => "idle",
            Mode::Handshake => "handshake",
            Mode::Recover => "recover",
        }
    }

    /// The URL used without --url: wsgate's defaults on 127.0.0.1:8080.
    pub(super) fn default_url(self) -> &'static str {
        match self {
            Mode::Echo | Mode::Handshake | Mode::Idle => "ws://127.0.0.1:8080/ws/echo",
            Mode::Room => "ws://127.0.0.1:8080/room/bench/",
            Mode::Fanout => "ws://127.0.0.1:8080/room/fanout/",
            Mode::Recover => "ws://127.0.0.1:8080/room/recover/",
        }
    }
}

const LONG_ABOUT: &str = "\
Measure a WebSocket server on this machine: wsgate or any peer speaking the same protocol.
Prints a progress line on stderr and one JSON object on stdout; exits 1 if anything was lost or
failed, 2 on bad arguments or a target that is not a loopback address.";

const EXAMPLES: &str = "\
Examples (against `wsgate serve` on 127.0.0.1:8080):
  wsgate bench echo --conns 100 --duration 5
  wsgate bench room --conns 1000 --iterations 50
  wsgate bench fanout --conns 10000 --rate 100 --msgs 500 \\
      --publish-url http://127.0.0.1:8080/api/groups/room:fanout/messages
  wsgate bench idle --conns 19000 --hold 30 --pid $(pgrep -n wsgate)
  wsgate bench handshake --total 20000 --concurrency 50
  wsgate bench echo --url wss://localhost:8443/ws/echo --ca cert.pem
  wsgate bench handshake --h2 --total 20000 --concurrency 50
  wsgate bench recover --conns 5000 --missed 20 --group room:recover";

/// `wsgate bench` arguments. Durations are in seconds and may have a fraction.
#[derive(Debug, Clone, clap::Args)]
#[command(long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// WebSocket URL, loopback only (ws:// or wss://; 127.x.x.x, [::1], localhost); wss:// runs
    /// a TLS handshake per connection (see --ca, --insecure; sessions are resumed as browsers
    /// do). Default:
    /// wsgate's echo route for echo/idle/handshake, /room/bench/ for room, /room/fanout/ for fanout.
    #[arg(long)]
    pub url: Option<String>,
    /// More WebSocket URLs (repeatable): connections are spread round robin over --url and
    /// these, e.g. the nodes of a cluster sharing one broker. Loopback only, like --url.
    #[arg(long = "also-url")]
    pub also_url: Vec<String>,
    /// fanout: where to POST each message (HTTP/1.1, one keep-alive connection). Default:
    /// wsgate's publish API for the group of the default fanout URL.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Connections (echo, room, idle) or subscribers (fanout).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub conns: usize,
    /// Message payload size in bytes (at least 24: time, sequence number and sender).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// echo: messages each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// echo: measured seconds (after --warmup); handshake: the most seconds to run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// echo: seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// room: measured iterations (each member sends one message per iteration).
    #[arg(long, default_value_t = 50)]
    pub iterations: u64,
    /// room: iterations run before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_iterations: u64,
    /// fanout: messages to publish.
    #[arg(long, default_value_t = 500)]
    pub msgs: u64,
    /// recover: messages published while every client is away, each client recovers them all.
    #[arg(long, default_value_t = 20)]
    pub missed: u64,
    /// recover: the group the clients subscribe to (the route at --url must allow it). Default:
    /// room:recover, the group of the default URL.
    #[arg(long)]
    pub group: Option<String>,
    /// fanout, room: seconds between the last connection's handshake and the first message, so
    /// the server has joined every connection to its group (wsgate joins after the 101).
    #[arg(long, default_value_t = 0.2)]
    pub settle: f64,
    /// fanout: publishes per second (sequential requests: the rate achieved is also bounded by
    /// the request round trip).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// idle: seconds to hold the connections open after they are all up.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// handshake: connect + upgrade + close cycles in total.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// handshake: parallel workers; idle, room, fanout: handshakes in flight while connecting.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub concurrency: usize,
    /// Server process id: report its CPU (and, for idle, its RSS) over the measurement window.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Offer permessage-deflate as browsers do (the server must agree) and inflate what comes
    /// compressed; reports count the bytes on the wire.
    #[arg(long)]
    pub deflate: bool,
    /// wss:// URLs: PEM file with the CA (or the self-signed certificate) the server's
    /// certificate must chain to. Without it (and without --insecure), this machine's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<String>,
    /// wss:// URLs: accept any server certificate (a self-signed one in a benchmark). Only the
    /// client's check of the certificate is skipped; the server's work is the same.
    #[arg(long)]
    pub insecure: bool,
    /// Open every WebSocket as a stream of an HTTP/2 connection (an extended CONNECT, RFC 8441,
    /// as browsers do when the server allows it): h2c with prior knowledge for ws://, h2 by ALPN
    /// for wss://. The streams are spread over --h2-conns connections.
    #[arg(long)]
    pub h2: bool,
    /// --h2: HTTP/2 connections per URL, each carrying its share of the streams (round robin);
    /// the server's max_concurrent_streams bounds how many each holds at once.
    #[arg(long, default_value_t = 1)]
    pub h2_conns: usize,
    /// Client threads: 1 = a single-threaded runtime (at most one core for the client).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds any single wait may take (a connect, an iteration, the drain after the last
    /// message) before the run is failed.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Seconds between progress lines on stderr; 0 turns them off.
    #[arg(long, default_value_t = 1.0)]
    pub progress: f64,
}
