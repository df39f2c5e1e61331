//! What every bench mode shares: its outcome, the counters behind the progress line, error
//! tallies, and connecting many clients at once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::args::Mode;
use super::client::{self, Target};
use super::plan::Plan;

/// What a mode hands back: its figures and whether the run was clean.
#[derive(Debug)]
pub struct Outcome {
    pub report: Value,
    pub ok: bool,
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
            &plan.targets(),
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

/// Connects `n` clients, spread round robin over `targets`, with at most `concurrency`
/// handshakes in flight, each bounded by `timeout`; failures are recorded and skipped. Returns
/// the connections with their index.
pub async fn connect_many(
    targets: &[Target],
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
        let target = targets[i % targets.len()].clone();
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
