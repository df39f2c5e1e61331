//! Heartbeats for every connection from one timing wheel, instead of a timer per socket.
//!
//! Each connection sits in exactly one slot of the wheel. A single task ticks through the slots;
//! for each connection it finds there it decides, from two timestamps the session keeps up to
//! date, whether to send a Ping, to give up on a peer that did not answer within `pong_timeout`,
//! or simply to look again later. An idle connection therefore costs one pointer in a slot and
//! one wake-up per `ping_interval`. The wheel is also the registry that shutdown walks to send
//! every client its Close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::close::CloseCode;
use super::outbox::{CloseRequest, Outbox};

/// The wheel and its coarse clock.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch`, advanced by the ticking task.
    now_ms: AtomicU64,
    tick_ms: u64,
    interval_ms: u64,
    pong_timeout_ms: u64,
    wheel: Mutex<Wheel>,
}

#[derive(Debug)]
struct Wheel {
    slots: Vec<Vec<Weak<Outbox>>>,
    cursor: usize,
}

impl Heartbeat {
    /// `interval` zero turns pings off (the wheel still tracks connections for shutdown).
    pub fn new(interval: Duration, pong_timeout: Duration) -> Arc<Self> {
        let interval_ms = interval.as_millis() as u64;
        let pong_timeout_ms = pong_timeout.as_millis() as u64;
        let shortest = if interval_ms == 0 {
            1000
        } else {
            interval_ms.min(pong_timeout_ms.max(1))
        };
        // A quarter of the shortest deadline keeps the error under 25 %, and 1 s is plenty at
        // the default 25 s / 10 s.
        let tick_ms = (shortest / 4).clamp(5, 1000);
        let span = interval_ms.max(pong_timeout_ms);
        let n = (span / tick_ms + 2) as usize;
        Arc::new(Heartbeat {
            epoch: Instant::now(),
            now_ms: AtomicU64::new(1),
            tick_ms,
            interval_ms,
            pong_timeout_ms,
            wheel: Mutex::new(Wheel {
                slots: (0..n.max(2)).map(|_| Vec::new()).collect(),
                cursor: 0,
            }),
        })
    }

    /// The coarse clock: milliseconds since start, at tick resolution.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// How long a connection may stay silent before it is pinged, in ms (0: never).
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a connection.
    pub fn register(&self, conn: &Arc<Outbox>) {
        let ahead = if self.interval_ms == 0 {
            1
        } else {
            self.interval_ms.div_ceil(self.tick_ms) as usize
        };
        let mut w = self.lock();
        let n = w.slots.len();
        let slot = (w.cursor + ahead.clamp(1, n - 1)) % n;
        w.slots[slot].push(Arc::downgrade(conn));
    }

    /// Every live connection, for shutdown.
    pub fn connections(&self) -> Vec<Arc<Outbox>> {
        let w = self.lock();
        w.slots.iter().flatten().filter_map(Weak::upgrade).collect()
    }

    /// Runs the wheel until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.tick();
        }
    }

    fn tick(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.now_ms.store(now, Ordering::Relaxed);
        if self.interval_ms == 0 {
            let mut w = self.lock();
            for slot in w.slots.iter_mut() {
                slot.retain(|c| c.strong_count() > 0);
            }
            return;
        }
        let (due, cursor, n) = {
            let mut w = self.lock();
            w.cursor = (w.cursor + 1) % w.slots.len();
            let c = w.cursor;
            (std::mem::take(&mut w.slots[c]), c, w.slots.len())
        };
        let mut again: Vec<(usize, Weak<Outbox>)> = Vec::new();
        for weak in due {
            let Some(conn) = weak.upgrade() else { continue };
            if let Some(at) = self.visit(&conn, now) {
                let ahead = (at.saturating_sub(now))
                    .div_ceil(self.tick_ms)
                    .clamp(1, n as u64 - 1);
                again.push((((cursor as u64 + ahead) % n as u64) as usize, weak));
            }
        }
        if !again.is_empty() {
            let mut w = self.lock();
            for (slot, weak) in again {
                w.slots[slot].push(weak);
            }
        }
    }

    /// Decides what one connection needs now; returns when to look at it next, or `None` when
    /// it is done for.
    fn visit(&self, conn: &Outbox, now: u64) -> Option<u64> {
        if conn.is_closing() {
            // Keep it listed (shutdown may still need it) but never ping it again.
            return Some(now + self.interval_ms.max(self.tick_ms));
        }
        let last_rx = conn.last_rx.load(Ordering::Relaxed);
        let sent = conn.ping_sent.load(Ordering::Relaxed);
        if sent != 0 {
            if last_rx >= sent {
                conn.ping_sent.store(0, Ordering::Relaxed);
            } else if now >= sent + self.pong_timeout_ms {
                crate::metrics::METRICS.pong_timeouts.inc();
                conn.request_close(CloseRequest {
                    code: CloseCode::INTERNAL_ERROR,
                    reason: "pong timeout: nothing received after a ping",
                    discard_queue: true,
                    abort: true,
                });
                return Some(now + self.interval_ms);
            } else {
                return Some(sent + self.pong_timeout_ms);
            }
        }
        let due = last_rx + self.interval_ms;
        if now >= due {
            conn.ping_sent.store(now, Ordering::Relaxed);
            conn.request_ping();
            Some(now + self.pong_timeout_ms)
        } else {
            Some(due)
        }
    }
}
