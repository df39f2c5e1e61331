//! `fanout`: N subscribers; M messages published over HTTP at R per second on one keep-alive
//! HTTP/1.1 connection (message i is due at t0 + i/R; a late publisher sends at once and never
//! skips). Each subscriber keeps one bit per message: a repeat is a duplicate, a message after a
//! higher sequence number is out of order, and a message published with a 2xx answer that never
//! arrived is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::client::{Conn, Status, Target, read_stamp, stamped_payload};
use super::plan::Plan;
use super::shared::{Counters, Errors, Outcome, Run};
use super::stats::{CpuWindow, Percentiles, micros_between, now_ns, round2};

const PUBLISHING: u8 = 0;
const PUBLISHED: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug)]
struct Shared {
    size: usize,
    msgs: u64,
    /// PUBLISHING, PUBLISHED or STOP; `changed` wakes the subscribers when it moves.
    state: AtomicU8,
    changed: Notify,
    published_ok: AtomicU64,
    complete: AtomicU64,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
}

impl Shared {
    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct SubResult {
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
    disconnected: bool,
    last_ns: u64,
    latencies: Vec<u32>,
    /// Bytes of the data frames it received, as on the wire (compressed when agreed).
    wire_bytes: u64,
}

pub async fn run(plan: &Plan) -> Outcome {
    let a = &plan.args;
    let publish = plan.publish.clone().expect("validate sets the publish URL");
    let published = Arc::new(AtomicU64::new(0));
    let p2 = published.clone();
    let run = Run::start(plan, move || {
        format!(" published {}", p2.load(Ordering::Relaxed))
    });
    let (counters, errors, timeout) = (run.counters.clone(), run.errors.clone(), run.timeout);
    let conns = run.connect(plan, 4096).await;
    let connected = conns.len();
    let shared = Arc::new(Shared {
        size: a.size,
        msgs: a.msgs,
        state: AtomicU8::new(PUBLISHING),
        changed: Notify::new(),
        published_ok: AtomicU64::new(0),
        complete: AtomicU64::new(0),
        counters: counters.clone(),
        errors: errors.clone(),
    });
    let mut set = tokio::task::JoinSet::new();
    for (_, conn) in conns {
        set.spawn(subscriber(conn, shared.clone()));
    }
    // Let the server finish joining the members to the group before the first publish.
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;

    let cpu = CpuWindow::start(a.pid);
    let first_ns = now_ns();
    let pubs = publish_all(
        &publish, a.msgs, a.rate, a.size, timeout, &published, &errors,
    )
    .await;
    let ok_count = pubs.ok.iter().filter(|&&b| b).count() as u64;
    shared.published_ok.store(ok_count, Ordering::SeqCst);
    shared.set_state(PUBLISHED);
    let drain_deadline = tokio::time::Instant::now() + timeout;
    while shared.complete.load(Ordering::SeqCst) < connected as u64
        && tokio::time::Instant::now() < drain_deadline
        && !set.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.set_state(STOP);
    let cpu = cpu.finish();

    let mut total = SubResult::default();
    let (mut lost, mut subs_with_loss, mut disconnected) = (0u64, 0u64, 0u64);
    while let Some(r) = set.join_next().await {
        let mut r = match r {
            Ok(r) => r,
            Err(e) => {
                errors.record("task_panicked", e);
                continue;
            }
        };
        let missing = (0..a.msgs as usize)
            .filter(|&i| pubs.ok[i] && r.seen[i / 64] & (1 << (i % 64)) == 0)
            .count() as u64;
        lost += missing;
        subs_with_loss += (missing > 0) as u64;
        disconnected += r.disconnected as u64;
        total.unique += r.unique;
        total.duplicates += r.duplicates;
        total.out_of_order += r.out_of_order;
        total.corrupt += r.corrupt;
        total.last_ns = total.last_ns.max(r.last_ns);
        total.wire_bytes += r.wire_bytes;
        total.latencies.append(&mut r.latencies);
    }
    let failed = a.msgs - ok_count;
    let span_s = total.last_ns.saturating_sub(first_ns) as f64 / 1e9;
    let ok = connected == a.conns
        && failed == 0
        && lost == 0
        && total.duplicates == 0
        && total.out_of_order == 0
        && total.corrupt == 0
        && disconnected == 0
        && errors.total() == 0;
    let publish_span_s = pubs.last_ns.saturating_sub(first_ns) as f64 / 1e9;
    let mut request_us = pubs.request_us;
    Outcome {
        report: json!({
            "subs": a.conns,
            "connected": connected,
            "msgs": a.msgs,
            "rate": a.rate,
            "settle_s": a.settle,
            "publish": {
                "ok": ok_count,
                "failed": failed,
                "achieved_rate": if publish_span_s > 0.0 { round2((ok_count.max(1) - 1) as f64 / publish_span_s) } else { 0.0 },
                "max_schedule_lag_us": pubs.max_lag_us,
                "request_latency_us": Percentiles::of(&mut request_us),
            },
            "expected_deliveries": ok_count * connected as u64,
            "deliveries": total.unique,
            "wire_bytes": total.wire_bytes,
            "wire_bytes_per_delivery": round2(total.wire_bytes as f64 / total.unique.max(1) as f64),
            "deliveries_per_s": if span_s > 0.0 { round2(total.unique as f64 / span_s) } else { 0.0 },
            "latency_us": Percentiles::of(&mut total.latencies),
            "lost": lost,
            "subs_with_loss": subs_with_loss,
            "duplicates": total.duplicates,
            "out_of_order": total.out_of_order,
            "corrupt": total.corrupt,
            "subs_disconnected": disconnected,
            "errors": errors.to_json(),
            "cpu": cpu,
        }),
        ok,
    }
}

async fn subscriber(mut conn: Conn, s: Arc<Shared>) -> SubResult {
    let mut r = SubResult {
        seen: vec![0u64; (s.msgs as usize).div_ceil(64)],
        latencies: Vec::with_capacity(s.msgs as usize),
        ..SubResult::default()
    };
    let mut out = Vec::new();
    let mut max_seq: Option<u64> = None;
    let mut complete = false;
    // One registration for the whole run, renewed only when it fires: registering a fresh
    // wake-up per read cost this single client thread more than the read did, at 1 M reads/s.
    let s2 = s.clone();
    let mut changed = std::pin::pin!(s2.changed.notified());
    changed.as_mut().enable();
    loop {
        let state = s.state.load(Ordering::SeqCst);
        if state >= PUBLISHED && r.unique >= s.published_ok.load(Ordering::SeqCst) {
            complete = true;
            s.complete.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if state == STOP {
            break;
        }
        let n = tokio::select! {
            biased;
            n = conn.read() => n,
            _ = changed.as_mut() => {
                changed.set(s2.changed.notified());
                changed.as_mut().enable();
                continue;
            }
        };
        match n {
            Ok(0) | Err(_) => {
                r.disconnected = true;
                s.errors
                    .record("disconnected", "a subscriber's connection ended early");
                break;
            }
            Ok(_) => {}
        }
        let now = now_ns();
        let before = r.unique;
        let status = conn.frames(&mut out, |payload, _| {
            let Some(st) = read_stamp(payload, s.size) else {
                r.corrupt += 1;
                return;
            };
            if st.seq >= s.msgs {
                r.corrupt += 1;
                return;
            }
            let (w, b) = ((st.seq / 64) as usize, 1u64 << (st.seq % 64));
            if r.seen[w] & b != 0 {
                r.duplicates += 1;
                return;
            }
            r.seen[w] |= b;
            r.unique += 1;
            if max_seq.is_some_and(|m| st.seq < m) {
                r.out_of_order += 1;
            }
            max_seq = Some(max_seq.map_or(st.seq, |m| m.max(st.seq)));
            r.latencies.push(micros_between(st.ts, now));
            r.last_ns = now;
        });
        Counters::add(&s.counters.recv, r.unique - before);
        match status {
            Err(e) => {
                s.errors.record("protocol", e);
                r.disconnected = true;
                break;
            }
            Ok(Status::Closed(code)) => {
                s.errors
                    .record("server_close", format!("the server closed with {code}"));
                r.disconnected = true;
                break;
            }
            Ok(Status::Open) => {}
        }
        if !out.is_empty() {
            let _ = conn.stream.write_all(&out).await;
            out.clear();
        }
    }
    r.wire_bytes = conn.wire_bytes;
    if complete {
        conn.close(Duration::from_secs(1)).await;
    }
    r
}

#[derive(Debug, Default)]
pub(super) struct PublishStats {
    pub(super) ok: Vec<bool>,
    request_us: Vec<u32>,
    max_lag_us: u32,
    last_ns: u64,
}

/// Publishes `msgs` stamped messages on one keep-alive connection, reconnecting after an error
/// or a `Connection: close`.
pub(super) async fn publish_all(
    t: &Target,
    msgs: u64,
    rate: f64,
    size: usize,
    timeout: Duration,
    published: &AtomicU64,
    errors: &Errors,
) -> PublishStats {
    let mut st = PublishStats {
        ok: vec![false; msgs as usize],
        ..PublishStats::default()
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    let t0 = tokio::time::Instant::now();
    for i in 0..msgs {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let lag = tokio::time::Instant::now().saturating_duration_since(due);
        st.max_lag_us = st
            .max_lag_us
            .max(lag.as_micros().min(u32::MAX as u128) as u32);
        let started = now_ns();
        let r = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                let s = TcpStream::connect(t.addr).await.map_err(|e| {
                    format!("connect to {}: {e}", t.addr)
                })?;
                let _ = s.set_nodelay(true);
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected above");
            let body = stamped_payload(size, i, 0);
            let mut req = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                t.path,
                t.host,
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
            read_response(s, &mut buf).await
        })
        .await
        .unwrap_or_else(|_| Err("no answer within --timeout".into()));
        st.last_ns = now_ns();
        match r {
            Ok((status, keep_alive)) => {
                st.request_us.push(micros_between(started, st.last_ns));
                if (200..300).contains(&status) {
                    st.ok[i as usize] = true;
                    published.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.record(
                        "publish_status",
                        format!("the publish URL answered {status}"),
                    );
                }
                if !keep_alive {
                    conn = None;
                }
            }
            Err(e) => {
                errors.record("publish", e);
                conn = None;
            }
        }
    }
    st
}

/// Reads one response with a Content-Length body; returns the status and whether the
/// connection stays open.
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> Result<(u16, bool), String> {
    let mut end = 0;
    loop {
        if end == buf.len() {
            return Err("response head larger than 4 KiB".into());
        }
        let n = s
            .read(&mut buf[end..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection before answering".into());
        }
        end += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&buf[..end]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(h)) => h,
            Err(e) => return Err(format!("bad response: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        if header("transfer-encoding").is_some() {
            return Err("chunked responses are not supported; answer with Content-Length".into());
        }
        let len: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or("the response has no Content-Length")?;
        let keep_alive = !header("connection").is_some_and(|v| v.contains("close"));
        let mut have = end - head;
        while have < len {
            let n = s.read(buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection inside a response body".into());
            }
            have += n;
        }
        if have > len {
            return Err("bytes after the response (pipelining is not used)".into());
        }
        return Ok((status, keep_alive));
    }
}
