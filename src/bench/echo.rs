//! `echo`: N connections, each keeping K messages in flight (closed loop: every echo sends the
//! next message). Echoes must come back in order; a skipped sequence number counts as lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::client::{Conn, FrameTemplate, Status, read_stamp};
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Run};
use super::stats::{CpuWindow, Percentiles, micros_between, now_ns, round2};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug, Default)]
struct ConnResult {
    latencies: Vec<u32>,
    measured: u64,
    lost: u64,
    corrupt: u64,
    unexpected: u64,
}

#[derive(Debug)]
struct Shared {
    size: usize,
    inflight: u64,
    template: FrameTemplate,
    phase: AtomicU8,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
    /// No read may wait past this (end of the run plus --timeout).
    deadline: tokio::time::Instant,
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let run = Run::start(plan, String::new);
    let (counters, errors, timeout) = (run.counters.clone(), run.errors.clone(), run.timeout);
    let conns = run.connect(plan, 16 * 1024).await;
    let connected = conns.len();
    let shared = Arc::new(Shared {
        size: a.size,
        inflight: a.inflight as u64,
        template: FrameTemplate::new(a.size),
        phase: AtomicU8::new(WARMUP),
        counters: counters.clone(),
        errors: errors.clone(),
        deadline: tokio::time::Instant::now()
            + Duration::from_secs_f64(a.warmup + a.duration)
            + timeout,
    });
    let mut set = tokio::task::JoinSet::new();
    for (id, conn) in conns {
        set.spawn(conn_loop(id as u64, conn, shared.clone()));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    shared.phase.store(MEASURE, Ordering::SeqCst);
    let cpu = CpuWindow::start(a.pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    shared.phase.store(STOP, Ordering::SeqCst);
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu.finish();

    let mut total = ConnResult::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(mut r) => {
                total.latencies.append(&mut r.latencies);
                total.measured += r.measured;
                total.lost += r.lost;
                total.corrupt += r.corrupt;
                total.unexpected += r.unexpected;
            }
            Err(e) => errors.record("task_panicked", e),
        }
    }
    let lat = Percentiles::of(&mut total.latencies);
    let ok = errors.total() == 0
        && total.lost == 0
        && total.corrupt == 0
        && total.unexpected == 0
        && connected == a.conns;
    let per_msg = |cpu_s: f64| round2(cpu_s * 1e6 / total.measured.max(1) as f64);
    let client_cpu_s = cpu.client_pct_of_core / 100.0 * cpu.window_s;
    Outcome {
        report: json!({
            "conns": a.conns,
            "connected": connected,
            "inflight": a.inflight,
            "warmup_s": a.warmup,
            "duration_s": round2(window),
            "messages": total.measured,
            "msgs_per_s": round2(total.measured as f64 / window),
            "latency_us": lat,
            "lost": total.lost,
            "corrupt": total.corrupt,
            "unexpected": total.unexpected,
            "errors": errors.to_json(),
            "server_cpu_us_per_msg": cpu.server_cpu_s.map(per_msg),
            "client_cpu_us_per_msg": per_msg(client_cpu_s),
            "cpu": cpu,
        }),
        ok,
    }
}

async fn conn_loop(id: u64, mut conn: Conn, s: Arc<Shared>) -> ConnResult {
    let mut r = ConnResult::default();
    let mut out = Vec::with_capacity(4096);
    let (mut next_seq, mut expect) = (0u64, 0u64);
    for _ in 0..s.inflight {
        s.template.push(&mut out, next_seq, id);
        next_seq += 1;
    }
    let mut clean = false;
    if let Err(e) = conn.stream.write_all(&out).await {
        s.errors.record("write", e);
    } else {
        Counters::add(&s.counters.sent, s.inflight);
        out.clear();
        loop {
            let n = match tokio::time::timeout_at(s.deadline, conn.read()).await {
                Err(_) => {
                    s.errors.record(
                        "timeout",
                        "echoes still missing --timeout seconds after the run ended",
                    );
                    break;
                }
                Ok(Err(e)) => {
                    s.errors.record("read", e);
                    break;
                }
                Ok(Ok(0)) => {
                    s.errors
                        .record("eof", "the server closed the connection without a Close");
                    break;
                }
                Ok(Ok(n)) => n,
            };
            debug_assert!(n > 0);
            let now = now_ns();
            let phase = s.phase.load(Ordering::Relaxed);
            let mut replies = 0u64;
            let status = conn.frames(&mut out, |payload, _| {
                let Some(st) = read_stamp(payload, s.size) else {
                    r.corrupt += 1;
                    return;
                };
                if st.seq < expect || st.seq >= next_seq || st.sender != id {
                    r.unexpected += 1;
                    return;
                }
                r.lost += st.seq - expect;
                expect = st.seq + 1;
                replies += 1;
                if phase == MEASURE {
                    r.latencies.push(micros_between(st.ts, now));
                    r.measured += 1;
                }
            });
            match status {
                Err(e) => {
                    s.errors.record("protocol", e);
                    break;
                }
                Ok(Status::Closed(code)) => {
                    s.errors
                        .record("server_close", format!("the server closed with {code}"));
                    break;
                }
                Ok(Status::Open) => {}
            }
            Counters::add(&s.counters.recv, replies);
            let mut sent = 0;
            if phase != STOP {
                while next_seq - expect < s.inflight {
                    s.template.push(&mut out, next_seq, id);
                    next_seq += 1;
                    sent += 1;
                }
            }
            if !out.is_empty() {
                if let Err(e) = conn.stream.write_all(&out).await {
                    s.errors.record("write", e);
                    break;
                }
                out.clear();
                Counters::add(&s.counters.sent, sent);
            }
            if phase == STOP && next_seq == expect {
                clean = true;
                break;
            }
        }
    }
    if clean {
        conn.close(Duration::from_secs(1)).await;
    } else {
        r.lost += next_seq - expect;
        Counters::add(&s.counters.errors, 1);
    }
    r
}
