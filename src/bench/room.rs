//! `room`: N members of one group (uWebSockets' `broadcast_test`). Per iteration every member
//! sends one message and the server must deliver each to every member, the sender included.
//! The iteration ends when every member has all N; the next starts at once.
//!
//! Delivery latency is sampled from member 0's messages only (N samples per iteration), so a
//! 1000-member run does not store a million samples per iteration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use super::client::{Conn, FrameTemplate, Status, read_stamp};
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Run};
use super::stats::{CpuWindow, Percentiles, micros_between, now_ns, round2};

const STOP: u64 = u64::MAX;

#[derive(Debug)]
struct Shared {
    size: usize,
    members: usize,
    template: FrameTemplate,
    timeout: Duration,
    done: AtomicUsize,
    dead: AtomicUsize,
    notify: Notify,
    extra: AtomicU64,
    unexpected: AtomicU64,
    corrupt: AtomicU64,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let iteration = Arc::new(AtomicU64::new(0));
    let it2 = iteration.clone();
    let run = Run::start(plan, move || {
        format!(" iteration {}", it2.load(Ordering::Relaxed))
    });
    let (counters, errors, timeout) = (run.counters.clone(), run.errors.clone(), run.timeout);
    let conns = run.connect(plan, 16 * 1024).await;
    let connected = conns.len();
    let shared = Arc::new(Shared {
        size: a.size,
        members: connected,
        template: FrameTemplate::new(a.size),
        timeout,
        done: AtomicUsize::new(0),
        dead: AtomicUsize::new(0),
        notify: Notify::new(),
        extra: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        counters: counters.clone(),
        errors: errors.clone(),
    });
    let (tx, rx) = watch::channel(0u64);
    let mut set = tokio::task::JoinSet::new();
    for (id, conn) in conns {
        set.spawn(member(id as u64, conn, shared.clone(), rx.clone()));
    }

    let mut iteration_us: Vec<u32> = Vec::new();
    let mut failure = serde_json::Value::Null;
    let mut cpu = None;
    let mut measured_start: Option<Instant> = None;
    let mut measured_end = Instant::now();
    if connected == a.conns {
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        for it in 1..=a.warmup_iterations + a.iterations {
            iteration.store(it, Ordering::Relaxed);
            let measured = it > a.warmup_iterations;
            if measured && measured_start.is_none() {
                cpu = Some(CpuWindow::start(a.pid));
                measured_start = Some(Instant::now());
            }
            shared.done.store(0, Ordering::SeqCst);
            let t0 = now_ns();
            let _ = tx.send(it);
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let done = shared.done.load(Ordering::SeqCst);
                let dead = shared.dead.load(Ordering::SeqCst);
                if done + dead >= connected {
                    break;
                }
                if tokio::time::timeout_at(deadline, shared.notify.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let done = shared.done.load(Ordering::SeqCst);
            let dead = shared.dead.load(Ordering::SeqCst);
            if done < connected {
                failure = json!({
                    "iteration": it,
                    "members_incomplete": connected - done - dead,
                    "members_dead": dead,
                    "reason": if dead > 0 { "a member's connection failed" } else { "the iteration did not complete within --timeout" },
                });
                break;
            }
            if measured {
                iteration_us.push(micros_between(t0, now_ns()));
                measured_end = Instant::now();
            }
        }
    }
    let _ = tx.send(STOP);
    let cpu = cpu.map(|c| c.finish());
    let elapsed = measured_start
        .map(|s| (measured_end - s).as_secs_f64())
        .unwrap_or(0.0);
    let mut delivery_us = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(mut v) => delivery_us.append(&mut v),
            Err(e) => errors.record("task_panicked", e),
        }
    }
    let iterations = iteration_us.len() as u64;
    let deliveries = iterations * (connected * connected) as u64;
    let extra = shared.extra.load(Ordering::Relaxed);
    let unexpected = shared.unexpected.load(Ordering::Relaxed);
    let corrupt = shared.corrupt.load(Ordering::Relaxed);
    let ok = failure.is_null()
        && connected == a.conns
        && errors.total() == 0
        && extra == 0
        && unexpected == 0
        && corrupt == 0;
    let per_s = |x: u64| {
        if elapsed > 0.0 {
            round2(x as f64 / elapsed)
        } else {
            0.0
        }
    };
    Outcome {
        report: json!({
            "conns": a.conns,
            "connected": connected,
            "warmup_iterations": a.warmup_iterations,
            "iterations": iterations,
            "elapsed_s": round2(elapsed),
            "iterations_per_s": per_s(iterations),
            "deliveries": deliveries,
            "deliveries_per_s": per_s(deliveries),
            "iteration_latency_us": Percentiles::of(&mut iteration_us),
            "delivery_latency_us": Percentiles::of(&mut delivery_us),
            "extra_deliveries": extra,
            "unexpected": unexpected,
            "corrupt": corrupt,
            "failure": failure,
            "errors": errors.to_json(),
            "cpu": cpu,
        }),
        ok,
    }
}

/// One member: waits for each iteration, sends its message, reads until it has every member's
/// message of that iteration. Returns delivery latencies of member 0's messages.
async fn member(id: u64, mut conn: Conn, s: Arc<Shared>, mut rx: watch::Receiver<u64>) -> Vec<u32> {
    let mut samples = Vec::new();
    let mut seen = vec![0u64; s.members.div_ceil(64)];
    let mut out = Vec::with_capacity(256);
    let mut ok = true;
    'iterations: loop {
        if rx.changed().await.is_err() {
            break;
        }
        let it = *rx.borrow_and_update();
        if it == STOP {
            break;
        }
        out.clear();
        s.template.push(&mut out, it, id);
        if let Err(e) = conn.stream.write_all(&out).await {
            s.errors.record("write", e);
            ok = false;
            break;
        }
        out.clear();
        Counters::add(&s.counters.sent, 1);
        seen.fill(0);
        let mut got = 0usize;
        while got < s.members {
            match tokio::time::timeout(s.timeout, conn.read()).await {
                Err(_) => {
                    // The coordinator reports the incomplete iteration.
                    ok = false;
                    break 'iterations;
                }
                Ok(Err(e)) => {
                    s.errors.record("read", e);
                    ok = false;
                    break 'iterations;
                }
                Ok(Ok(0)) => {
                    s.errors
                        .record("eof", "the server closed the connection without a Close");
                    ok = false;
                    break 'iterations;
                }
                Ok(Ok(_)) => {}
            }
            let now = now_ns();
            let before = got;
            let status = conn.frames(&mut out, |payload, _| {
                let Some(st) = read_stamp(payload, s.size) else {
                    s.corrupt.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let sender = st.sender as usize;
                if st.seq != it || sender >= s.members {
                    s.unexpected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let (w, b) = (sender / 64, 1u64 << (sender % 64));
                if seen[w] & b != 0 {
                    s.extra.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                seen[w] |= b;
                got += 1;
                if sender == 0 {
                    samples.push(micros_between(st.ts, now));
                }
            });
            Counters::add(&s.counters.recv, (got - before) as u64);
            match status {
                Err(e) => {
                    s.errors.record("protocol", e);
                    ok = false;
                    break 'iterations;
                }
                Ok(Status::Closed(code)) => {
                    s.errors
                        .record("server_close", format!("the server closed with {code}"));
                    ok = false;
                    break 'iterations;
                }
                Ok(Status::Open) => {}
            }
            if !out.is_empty() {
                let _ = conn.stream.write_all(&out).await;
                out.clear();
            }
        }
        if s.done.fetch_add(1, Ordering::SeqCst) + 1 == s.members {
            s.notify.notify_one();
        }
    }
    if ok {
        conn.close(Duration::from_secs(1)).await;
    } else {
        Counters::add(&s.counters.errors, 1);
        s.dead.fetch_add(1, Ordering::SeqCst);
        s.notify.notify_one();
    }
    samples
}
