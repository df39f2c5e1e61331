//! `recover`: a reconnect storm of `wsgate.v1` clients. N clients subscribe to one group and
//! note their position, all drop at once, `--missed` messages are published, then all reconnect
//! at once (at most `--concurrency` handshakes in flight) and subscribe with their position.
//! Each must get `"recovered": true` and exactly the missed messages, in order. Reported:
//! recoveries/s over the storm and the time from a client's reconnect to its last recovered
//! message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::client::{Conn, MASK, Status, Target};
use super::fanout::publish_all;
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Run};
use super::stats::{CpuWindow, Percentiles, micros_between, now_ns, round2};
use crate::ws::frame::{OpCode, encode_masked};

const PROTOCOL: &str = "wsgate.v1";

/// What one reconnecting client saw.
#[derive(Debug, Default)]
struct Recovered {
    ok: bool,
    /// Connect start to the last recovered message, µs.
    latency_us: u32,
    finished_ns: u64,
}

/// Sends one command.
async fn send(conn: &mut Conn, cmd: &Value) -> Result<(), String> {
    let frame = encode_masked(OpCode::Text, true, cmd.to_string().as_bytes(), MASK);
    conn.stream
        .write_all(&frame)
        .await
        .map_err(|e| format!("write: {e}"))
}

/// Reads JSON messages until `done` says so (or the connection ends).
async fn read_until(
    conn: &mut Conn,
    timeout: Duration,
    mut done: impl FnMut(Value) -> Result<bool, String>,
) -> Result<(), String> {
    let mut out = Vec::new();
    tokio::time::timeout(timeout, async {
        loop {
            let mut msgs = Vec::new();
            let status = conn.frames(&mut out, |payload, _| {
                msgs.push(serde_json::from_slice::<Value>(payload));
            })?;
            if !out.is_empty() {
                let _ = conn.stream.write_all(&out).await;
                out.clear();
            }
            for m in msgs {
                let m =
                    m.map_err(|e| format!("the server sent something that is not JSON: {e}"))?;
                if done(m)? {
                    return Ok(());
                }
            }
            if let Status::Closed(code) = status {
                return Err(format!("the server closed with {code}"));
            }
            match conn.read().await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await
    .map_err(|_| "no answer within --timeout".to_string())?
}

/// Connects, subscribes to `group` and returns the position in the reply.
async fn first_visit(t: &Target, group: &str, timeout: Duration) -> Result<Value, String> {
    let mut conn = Conn::connect_with(t, 4096, Some(PROTOCOL))
        .await
        .map_err(|e| e.to_string())?;
    send(
        &mut conn,
        &json!({"id": 1, "type": "subscribe", "group": group}),
    )
    .await?;
    let mut position = None;
    read_until(&mut conn, timeout, |m| {
        if m["id"] == 1 {
            if m["type"] != "ok" {
                return Err(format!("subscribe was refused: {m}"));
            }
            position = Some(json!({"epoch": m["epoch"], "offset": m["offset"]}));
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    // Dropped without a Close: the client just goes away, as a phone losing its network does.
    let p = position.expect("set before done");
    if p["epoch"].is_null() {
        return Err(format!(
            "group {group} keeps no history (no epoch in the subscribe reply); give its route history"
        ));
    }
    Ok(p)
}

/// Reconnects with `since` and reads until every missed message is back.
async fn come_back(
    t: &Target,
    group: &str,
    since: Value,
    missed: u64,
    timeout: Duration,
) -> Result<Recovered, String> {
    let started = now_ns();
    let mut conn = Conn::connect_with(t, 4096, Some(PROTOCOL))
        .await
        .map_err(|e| e.to_string())?;
    send(
        &mut conn,
        &json!({"id": 1, "type": "subscribe", "group": group, "since": since}),
    )
    .await?;
    let mut next = since["offset"].as_u64().unwrap_or(0) + 1;
    let mut got = 0u64;
    let mut replied = false;
    read_until(&mut conn, timeout, |m| {
        if m["id"] == 1 {
            if m["type"] != "ok" || m["recovered"] != true {
                return Err(format!("not recovered: {m}"));
            }
            replied = true;
        } else if m["type"] == "pub" {
            if !replied {
                return Err("a publication came before the subscribe reply".into());
            }
            if m["offset"] != next {
                return Err(format!("expected offset {next}, got {m}"));
            }
            next += 1;
            got += 1;
        }
        Ok(replied && got == missed)
    })
    .await?;
    let finished = now_ns();
    Ok(Recovered {
        ok: true,
        latency_us: micros_between(started, finished),
        finished_ns: finished,
    })
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let group = a.group.clone().unwrap_or_else(|| "room:recover".into());
    let publish = plan.publish.clone().expect("validate sets the publish URL");
    let recovered = Arc::new(AtomicU64::new(0));
    let r2 = recovered.clone();
    let run = Run::start(plan, move || {
        format!(" recovered {}", r2.load(Ordering::Relaxed))
    });
    let (counters, errors, timeout) = (run.counters.clone(), run.errors.clone(), run.timeout);

    // 1. Everyone subscribes and notes where the stream is.
    let positions = visit_all(plan, &group, &counters, &errors).await;
    // 2. They are all gone; 3. the missed messages are published.
    let published = AtomicU64::new(0);
    let pubs = publish_all(
        &publish, a.missed, 1e6, a.size, timeout, &published, &errors,
    )
    .await;
    let published_ok = pubs.ok.iter().filter(|&&b| b).count() as u64;
    // 4. Everyone comes back at once.
    let cpu = CpuWindow::start(a.pid);
    let storm_ns = now_ns();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for since in positions {
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        let (t, g, errors, counters, recovered) = (
            plan.target.clone(),
            group.clone(),
            errors.clone(),
            counters.clone(),
            recovered.clone(),
        );
        let missed = a.missed;
        set.spawn(async move {
            let _permit = permit;
            match come_back(&t, &g, since, missed, timeout).await {
                Ok(r) => {
                    recovered.fetch_add(1, Ordering::Relaxed);
                    Counters::add(&counters.recv, missed);
                    r
                }
                Err(e) => {
                    Counters::add(&counters.errors, 1);
                    errors.record("not_recovered", e);
                    Recovered::default()
                }
            }
        });
    }
    let mut latencies = Vec::new();
    let (mut ok_count, mut last_ns) = (0u64, storm_ns);
    while let Some(r) = set.join_next().await {
        let r = r.unwrap_or_default();
        if r.ok {
            ok_count += 1;
            latencies.push(r.latency_us);
            last_ns = last_ns.max(r.finished_ns);
        }
    }
    let cpu = cpu.finish();
    let span_s = last_ns.saturating_sub(storm_ns) as f64 / 1e9;
    let ok = ok_count == a.conns as u64 && published_ok == a.missed && errors.total() == 0;
    Outcome {
        report: json!({
            "conns": a.conns,
            "group": group,
            "missed": a.missed,
            "published": published_ok,
            "recovered": ok_count,
            "not_recovered": a.conns as u64 - ok_count,
            "storm_seconds": round2(span_s),
            "recoveries_per_s": round2(if span_s > 0.0 { ok_count as f64 / span_s } else { 0.0 }),
            "time_to_recovered_us": Percentiles::of(&mut latencies),
            "server_cpu_us_per_recovery": cpu.server_cpu_s.map(|s| round2(s * 1e6 / ok_count.max(1) as f64)),
            "errors": errors.to_json(),
            "cpu": cpu,
        }),
        ok,
    }
}

/// Subscribes every client once, concurrently; their positions, in no particular order.
async fn visit_all(
    plan: &Plan,
    group: &str,
    counters: &Arc<Counters>,
    errors: &Arc<Errors>,
) -> Vec<Value> {
    let a = &plan.args;
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.conns {
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        let (t, g, counters, errors) = (
            plan.target.clone(),
            group.to_string(),
            counters.clone(),
            errors.clone(),
        );
        let timeout = Duration::from_secs_f64(a.timeout);
        set.spawn(async move {
            let _permit = permit;
            match first_visit(&t, &g, timeout).await {
                Ok(p) => {
                    Counters::add(&counters.conns, 1);
                    Some(p)
                }
                Err(e) => {
                    Counters::add(&counters.errors, 1);
                    errors.record("subscribe", e);
                    None
                }
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(p)) = r {
            out.push(p);
        }
    }
    out
}
