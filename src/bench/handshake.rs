//! `handshake`: C workers each loop TCP connect, upgrade (the accept key is checked), Close
//! 1000, then wait for the server's Close and FIN so the TIME_WAIT lands on the server side.
//! Stops after --total cycles or --duration seconds, whichever comes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Conn, ConnectError};
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Progress};
use super::stats::{CpuWindow, Percentiles, micros_between, now_ns, round2};

#[derive(Debug, Default)]
struct WorkerResult {
    handshake_us: Vec<u32>,
    cycle_us: Vec<u32>,
    clean_closes: u64,
    failed: u64,
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(Errors::default());
    let _progress = Progress::start(a.mode, a.progress, counters.clone(), String::new);
    let claimed = Arc::new(AtomicU64::new(0));
    let timeout = Duration::from_secs_f64(a.timeout);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let cpu = CpuWindow::start(a.pid);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (target, claimed, counters, errors) = (
            plan.target.clone(),
            claimed.clone(),
            counters.clone(),
            errors.clone(),
        );
        let total = a.total;
        set.spawn(async move {
            let mut r = WorkerResult::default();
            while claimed.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let t0 = now_ns();
                let conn = tokio::time::timeout(timeout, Conn::connect(&target, 1024))
                    .await
                    .unwrap_or(Err(ConnectError::Timeout));
                match conn {
                    Ok(conn) => {
                        r.handshake_us.push(micros_between(t0, now_ns()));
                        Counters::add(&counters.conns, 1);
                        if conn.close(Duration::from_secs(2)).await {
                            r.clean_closes += 1;
                        }
                        r.cycle_us.push(micros_between(t0, now_ns()));
                    }
                    Err(e) => {
                        r.failed += 1;
                        Counters::add(&counters.errors, 1);
                        errors.record(e.kind(), &e);
                    }
                }
            }
            r
        });
    }
    let mut total = WorkerResult::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(mut r) => {
                total.handshake_us.append(&mut r.handshake_us);
                total.cycle_us.append(&mut r.cycle_us);
                total.clean_closes += r.clean_closes;
                total.failed += r.failed;
            }
            Err(e) => errors.record("task_panicked", e),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    let completed = total.cycle_us.len() as u64;
    let ok = total.failed == 0 && errors.total() == 0;
    let per = |cpu_s: f64| round2(cpu_s * 1e6 / completed.max(1) as f64);
    Outcome {
        report: json!({
            "total": a.total,
            "concurrency": a.concurrency,
            "completed": completed,
            "failed": total.failed,
            "stopped_by": if completed + total.failed >= a.total { "total" } else { "duration" },
            "clean_closes": total.clean_closes,
            "elapsed_s": round2(elapsed),
            "handshakes_per_s": round2(completed as f64 / elapsed.max(1e-9)),
            "handshake_latency_us": Percentiles::of(&mut total.handshake_us),
            "cycle_latency_us": Percentiles::of(&mut total.cycle_us),
            "server_cpu_us_per_handshake": cpu.server_cpu_s.map(per),
            "errors": errors.to_json(),
            "cpu": cpu,
        }),
        ok,
    }
}
