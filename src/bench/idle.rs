//! `idle`: N connections opened (at most --concurrency handshakes at a time) and held for
//! --hold seconds, answering the server's Pings and sending nothing else. With --pid, the
//! server's RSS is sampled before, after connecting and after a 1 s settle, and its CPU over
//! the hold gives CPU per connection-second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::client::{Conn, Status};
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Progress, connect_many};
use super::stats::{CpuWindow, round2, rss_bytes};

#[derive(Debug, Default)]
struct Hold {
    pings: AtomicU64,
    closed: AtomicU64,
    close_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Hold {
    fn closed(&self, kind: String) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        *self
            .close_kinds
            .lock()
            .expect("close map lock is never poisoned")
            .entry(kind)
            .or_default() += 1;
    }
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(Errors::default());
    let hold = Arc::new(Hold::default());
    let h2 = hold.clone();
    let _progress = Progress::start(a.mode, a.progress, counters.clone(), move || {
        format!(
            " server pings {} closed by server {}",
            h2.pings.load(Ordering::Relaxed),
            h2.closed.load(Ordering::Relaxed)
        )
    });
    let rss = || a.pid.and_then(rss_bytes);
    let rss_before = rss();
    let started = Instant::now();
    let conns = connect_many(
        &plan.targets(),
        a.conns,
        a.concurrency,
        1024,
        Duration::from_secs_f64(a.timeout),
        &counters,
        &errors,
    )
    .await;
    let connect_s = started.elapsed().as_secs_f64();
    let connected = conns.len();
    let rss_connected = rss();
    let (tx, rx) = watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    for (_, conn) in conns {
        set.spawn(hold_one(conn, hold.clone(), rx.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_settled = rss();
    let cpu = CpuWindow::start(a.pid);
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let cpu = cpu.finish();
    let rss_end = rss();
    let closed_during_hold = hold.closed.load(Ordering::SeqCst);
    let _ = tx.send(true);
    while set.join_next().await.is_some() {}

    let per_conn = |r: Option<u64>| match (r, rss_before) {
        (Some(r), Some(b)) if connected > 0 => {
            Some(round2((r as f64 - b as f64) / connected as f64))
        }
        _ => None,
    };
    let conn_seconds = connected as f64 * cpu.window_s;
    let cpu_per_conn_s = cpu
        .server_cpu_s
        .filter(|_| conn_seconds > 0.0)
        .map(|s| (s * 1e6 / conn_seconds * 1000.0).round() / 1000.0);
    let ok = connected == a.conns && closed_during_hold == 0 && errors.total() == 0;
    let close_kinds = hold
        .close_kinds
        .lock()
        .expect("close map lock is never poisoned")
        .clone();
    Outcome {
        report: json!({
            "conns": a.conns,
            "connected": connected,
            "connect": {
                "seconds": round2(connect_s),
                "handshakes_per_s": round2(connected as f64 / connect_s.max(1e-9)),
                "concurrency": a.concurrency,
            },
            "server_rss": {
                "before": rss_before,
                "connected": rss_connected,
                "settled": rss_settled,
                "end_of_hold": rss_end,
                "bytes_per_conn": per_conn(rss_settled),
                "bytes_per_conn_end_of_hold": per_conn(rss_end),
            },
            "hold": {
                "seconds": cpu.window_s,
                "server_pings": hold.pings.load(Ordering::SeqCst),
                "closed_by_server": closed_during_hold,
                "close_kinds": close_kinds,
            },
            "server_cpu_us_per_conn_s": cpu_per_conn_s,
            "errors": errors.to_json(),
            "cpu": cpu,
        }),
        ok,
    }
}

/// Holds one connection until told to stop, answering Pings.
async fn hold_one(mut conn: Conn, hold: Arc<Hold>, mut stop: watch::Receiver<bool>) {
    let mut out = Vec::new();
    loop {
        let n = tokio::select! {
            n = conn.read() => n,
            _ = stop.changed() => {
                conn.close(Duration::from_secs(2)).await;
                return;
            }
        };
        match n {
            Ok(0) => return hold.closed("eof_without_close".into()),
            Err(_) => return hold.closed("reset".into()),
            Ok(_) => {}
        }
        let pings = conn.pings;
        let status = conn.frames(&mut out, |_, _| {});
        hold.pings.fetch_add(conn.pings - pings, Ordering::Relaxed);
        match status {
            Ok(Status::Open) => {}
            Ok(Status::Closed(code)) => return hold.closed(format!("close_{code}")),
            Err(_) => return hold.closed("protocol_error".into()),
        }
        if !out.is_empty() {
            let _ = conn.stream.write_all(&out).await;
            out.clear();
        }
    }
}
