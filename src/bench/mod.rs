//! `wsgate bench`: a load generator for WebSocket servers on this machine, modelled on
//! `redis-benchmark` and `nats bench`. It talks to the server only over sockets, so it measures
//! wsgate and any peer (node `ws`, ...) the same way.
//!
//! Modes: `echo` (closed-loop round trips), `room` (every member sends, the server broadcasts to
//! all), `fanout` (HTTP publishes to many subscribers, with loss, duplicate and order checks),
//! `idle` (held connections: server memory and CPU per connection) and `handshake` (connect,
//! upgrade, close cycles per second).
//!
//! Every run is bounded in count and time, prints a progress line on stderr and exactly one
//! JSON object on stdout, and exits 1 when anything was lost or failed, 2 on bad arguments or a
//! target that is not on this machine. Report fields are described in `bench/README.md`.

mod client;
mod echo;
mod fanout;
mod handshake;
mod idle;
mod room;
pub mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

pub use client::{Target, parse_target};

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
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Room => "room",
            Mode::Fanout => "fanout",
            Mode::Idle => "idle",
            Mode::Handshake => "handshake",
        }
    }

    /// The URL used without --url: wsgate's defaults on 127.0.0.1:8080.
    fn default_url(self) -> &'static str {
        match self {
            Mode::Echo | Mode::Handshake | Mode::Idle => "ws://127.0.0.1:8080/ws/echo",
            Mode::Room => "ws://127.0.0.1:8080/room/bench/",
            Mode::Fanout => "ws://127.0.0.1:8080/room/fanout/",
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
  wsgate bench handshake --total 20000 --concurrency 50";

/// `wsgate bench` arguments. Durations are in seconds and may have a fraction.
#[derive(Debug, Clone, clap::Args)]
#[command(long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// WebSocket URL, loopback only (ws://127.x.x.x, ws://[::1], ws://localhost). Default:
    /// wsgate's echo route for echo/idle/handshake, /room/bench/ for room, /room/fanout/ for fanout.
    #[arg(long)]
    pub url: Option<String>,
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

/// Arguments checked and URLs parsed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: Args,
    pub target: Target,
    pub publish: Option<Target>,
}

const MAX_CONNS: usize = 200_000;
const MAX_SECONDS: f64 = 3600.0;

/// Checks the arguments for the chosen mode; the error is a sentence for the user.
pub fn validate(args: &Args) -> Result<Plan, String> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| args.mode.default_url().to_string());
    let target = parse_target(&url, "ws").map_err(|e| format!("--url: {e}"))?;
    let seconds = |name: &str, v: f64, min: f64| -> Result<(), String> {
        if !(v.is_finite() && v >= min && v <= MAX_SECONDS) {
            return Err(format!(
                "--{name} {v}: must be between {min} and {MAX_SECONDS} seconds"
            ));
        }
        Ok(())
    };
    let range = |name: &str, v: u64, min: u64, max: u64| -> Result<(), String> {
        if v < min || v > max {
            return Err(format!("--{name} {v}: must be between {min} and {max}"));
        }
        Ok(())
    };
    range("conns", args.conns as u64, 1, MAX_CONNS as u64)?;
    range(
        "size",
        args.size as u64,
        client::STAMP_BYTES as u64,
        16 << 20,
    )?;
    range("threads", args.threads as u64, 1, 64)?;
    range("concurrency", args.concurrency as u64, 1, 10_000)?;
    seconds("timeout", args.timeout, 0.1)?;
    seconds("progress", args.progress, 0.0)?;
    let mut publish = None;
    match args.mode {
        Mode::Echo => {
            range("inflight", args.inflight as u64, 1, 1024)?;
            seconds("duration", args.duration, 0.1)?;
            seconds("warmup", args.warmup, 0.0)?;
        }
        Mode::Room => {
            range("iterations", args.iterations, 1, 1_000_000)?;
            seconds("settle", args.settle, 0.0)?;
            range("warmup-iterations", args.warmup_iterations, 0, 1_000_000)?;
        }
        Mode::Fanout => {
            range("msgs", args.msgs, 1, 10_000_000)?;
            seconds("settle", args.settle, 0.0)?;
            if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1e6) {
                return Err(format!(
                    "--rate {}: must be more than 0 and at most 1000000 per second",
                    args.rate
                ));
            }
            // One bit per message per subscriber records what arrived.
            if args.msgs.saturating_mul(args.conns as u64) > 8_000_000_000 {
                return Err(format!(
                    "--msgs {} x --conns {} is more than 8e9 deliveries; lower one of them",
                    args.msgs, args.conns
                ));
            }
            let url = match &args.publish_url {
                Some(u) => u.clone(),
                None if args.url.is_none() => {
                    "http://127.0.0.1:8080/api/groups/room:fanout/messages".into()
                }
                None => {
                    return Err(
                        "--publish-url is needed with --url: the URL that publishes to the subscribers' group"
                            .into(),
                    );
                }
            };
            publish = Some(parse_target(&url, "http").map_err(|e| format!("--publish-url: {e}"))?);
        }
        Mode::Idle => seconds("hold", args.hold, 0.0)?,
        Mode::Handshake => {
            range("total", args.total, 1, 100_000_000)?;
            seconds("duration", args.duration, 0.1)?;
        }
    }
    Ok(Plan {
        args: args.clone(),
        target,
        publish,
    })
}

/// What a mode hands back: its figures and whether the run was clean.
#[derive(Debug)]
pub struct Outcome {
    pub report: Value,
    pub ok: bool,
}

/// Runs `wsgate bench` and returns the process exit code.
pub fn run(args: Args) -> ExitCode {
    let plan = match validate(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wsgate bench: {e}");
            return ExitCode::from(2);
        }
    };
    let nofile = crate::app::raise_nofile_limit();
    let mut rt = if plan.args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(plan.args.threads);
        b
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run_plan(plan.clone(), nofile));
    rt.shutdown_timeout(Duration::from_millis(100));
    println!("{}", outcome.report);
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a checked plan on the current runtime (tests call this directly).
pub async fn run_plan(plan: Plan, nofile: u64) -> Outcome {
    stats::now_ns();
    let a = &plan.args;
    let mut out = match a.mode {
        Mode::Echo => echo::run(&plan).await,
        Mode::Room => room::run(&plan).await,
        Mode::Fanout => fanout::run(&plan).await,
        Mode::Idle => idle::run(&plan).await,
        Mode::Handshake => handshake::run(&plan).await,
    };
    if let Value::Object(m) = &mut out.report {
        let mut head = serde_json::Map::new();
        head.insert("mode".into(), json!(a.mode.name()));
        head.insert("ok".into(), json!(out.ok));
        head.insert(
            "url".into(),
            json!(format!("ws://{}{}", plan.target.host, plan.target.path)),
        );
        if let Some(p) = &plan.publish {
            head.insert(
                "publish_url".into(),
                json!(format!("http://{}{}", p.host, p.path)),
            );
        }
        head.insert("size".into(), json!(a.size));
        head.insert("client_threads".into(), json!(a.threads));
        head.insert("nofile_limit".into(), json!(nofile));
        head.append(m);
        out.report = Value::Object(head);
    }
    out
}

/// Counters the progress line shows, updated by every connection task.
#[derive(Debug, Default)]
pub struct Counters {
    pub conns: AtomicU64,
    pub sent: AtomicU64,
    pub recv: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Errors by kind, with the first message of each kind as an example.
#[derive(Debug, Default)]
pub struct Errors(Mutex<BTreeMap<&'static str, (u64, String)>>);

impl Errors {
    pub fn record(&self, kind: &'static str, message: impl std::fmt::Display) {
        let mut m = self.0.lock().expect("error map lock is never poisoned");
        let e = m.entry(kind).or_insert_with(|| (0, message.to_string()));
        e.0 += 1;
    }

    pub fn total(&self) -> u64 {
        let m = self.0.lock().expect("error map lock is never poisoned");
        m.values().map(|(n, _)| n).sum()
    }

    pub fn to_json(&self) -> Value {
        let m = self.0.lock().expect("error map lock is never poisoned");
        Value::Object(
            m.iter()
                .map(|(k, (n, first))| ((*k).to_string(), json!({"count": n, "first": first})))
                .collect(),
        )
    }
}

/// Prints a progress line on stderr every `every` seconds until dropped.
#[derive(Debug)]
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    pub fn start(
        mode: Mode,
        every: f64,
        counters: std::sync::Arc<Counters>,
        extra: impl Fn() -> String + Send + 'static,
    ) -> Self {
        if every <= 0.0 {
            return Progress(None);
        }
        let started = std::time::Instant::now();
        Progress(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let c = &counters;
                eprintln!(
                    "[bench {}] {:6.1}s conns {} sent {} received {} errors {}{}",
                    mode.name(),
                    started.elapsed().as_secs_f64(),
                    c.conns.load(Ordering::Relaxed),
                    c.sent.load(Ordering::Relaxed),
                    c.recv.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed),
                    extra(),
                );
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// What every mode starts with: the shared counters, the error log, the per-step timeout and the
/// progress line (which stops when this is dropped).
#[derive(Debug)]
pub struct Run {
    pub counters: std::sync::Arc<Counters>,
    pub errors: std::sync::Arc<Errors>,
    pub timeout: Duration,
    _progress: Progress,
}

impl Run {
    /// Starts the progress line; `extra` adds mode-specific figures to it.
    pub fn start(plan: &Plan, extra: impl Fn() -> String + Send + 'static) -> Self {
        let a = &plan.args;
        let counters = std::sync::Arc::new(Counters::default());
        Run {
            _progress: Progress::start(a.mode, a.progress, counters.clone(), extra),
            counters,
            errors: std::sync::Arc::new(Errors::default()),
            timeout: Duration::from_secs_f64(a.timeout),
        }
    }

    /// Connects `args.conns` clients to the plan's target (see [`connect_many`]).
    pub async fn connect(&self, plan: &Plan, read_buf: usize) -> Vec<(usize, client::Conn)> {
        let a = &plan.args;
        connect_many(
            &plan.target,
            a.conns,
            a.concurrency,
            read_buf,
            self.timeout,
            &self.counters,
            &self.errors,
        )
        .await
    }
}

/// Connects `n` clients with at most `concurrency` handshakes in flight, each bounded by
/// `timeout`; failures are recorded and skipped. Returns the connections with their index.
pub async fn connect_many(
    target: &Target,
    n: usize,
    concurrency: usize,
    read_buf: usize,
    timeout: Duration,
    counters: &std::sync::Arc<Counters>,
    errors: &std::sync::Arc<Errors>,
) -> Vec<(usize, client::Conn)> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let target = target.clone();
        let counters = counters.clone();
        let errors = errors.clone();
        set.spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(timeout, client::Conn::connect(&target, read_buf))
                .await
                .unwrap_or(Err(client::ConnectError::Timeout));
            match r {
                Ok(c) => {
                    Counters::add(&counters.conns, 1);
                    Some((i, c))
                }
                Err(e) => {
                    Counters::add(&counters.errors, 1);
                    errors.record(e.kind(), &e);
                    None
                }
            }
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        if let Ok(Some(c)) = r {
            conns.push(c);
        }
    }
    conns.sort_by_key(|(i, _)| *i);
    conns
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &str) -> Result<Plan, String> {
        let t = T::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .map_err(|e| e.to_string())?;
        validate(&t.args)
    }

    #[test]
    fn defaults_point_at_wsgate_on_8080() {
        let p = parse("echo").unwrap();
        assert_eq!(p.target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.target.path, "/ws/echo");
        let p = parse("fanout").unwrap();
        assert_eq!(p.publish.unwrap().path, "/api/groups/room:fanout/messages");
    }

    #[test]
    fn refuses_a_remote_target() {
        let e = parse("echo --url ws://192.168.1.5:8080/").unwrap_err();
        assert!(
            e.starts_with("--url: 192.168.1.5 is not a loopback address"),
            "{e}"
        );
        let e = parse("fanout --url ws://127.0.0.1:1/ --publish-url http://8.8.8.8/p").unwrap_err();
        assert!(e.starts_with("--publish-url: 8.8.8.8"), "{e}");
    }

    #[test]
    fn fanout_with_its_own_url_needs_a_publish_url() {
        let e = parse("fanout --url ws://127.0.0.1:9000/").unwrap_err();
        assert!(e.contains("--publish-url is needed"), "{e}");
        assert!(
            parse("fanout --url ws://127.0.0.1:9000/ --publish-url http://127.0.0.1:9000/publish")
                .is_ok()
        );
    }

    #[test]
    fn every_run_is_bounded() {
        for (line, flag) in [
            ("echo --duration 0", "--duration"),
            ("echo --duration 100000", "--duration"),
            ("echo --duration NaN", "--duration"),
            ("echo --inflight 0", "--inflight"),
            ("room --iterations 0", "--iterations"),
            ("fanout --rate 0", "--rate"),
            ("fanout --msgs 0", "--msgs"),
            ("idle --hold=-1", "--hold"),
            ("handshake --total 0", "--total"),
            ("echo --conns 0", "--conns"),
            ("echo --size 8", "--size"),
            ("echo --timeout 0", "--timeout"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(flag), "{line}: {e}");
        }
        let e = parse("fanout --conns 100000 --msgs 10000000").unwrap_err();
        assert!(e.contains("8e9"), "{e}");
    }

    #[test]
    fn unknown_modes_are_a_usage_error() {
        assert!(parse("pingpong").is_err());
    }
}
