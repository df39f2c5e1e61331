//! Heartbeats for every connection from one timing wheel, instead of a timer per socket.
//!
//! Each connection's entry sits in exactly one slot of the wheel. A single task ticks through the
//! slots; for each entry it finds there it decides, from the two timestamps of the entry's
//! [`Beat`], whether to ask for a Ping, to give up on a peer that did not answer within
//! `pong_timeout` ([`CloseReason::PongTimeout`]), or simply to look again later. An idle
//! connection therefore costs one pointer in a slot and one wake-up per `ping_interval`. The
//! wheel is also the registry that shutdown walks to close every connection.
//!
//! The wheel does not send anything itself: an entry ([`Entry`]) is told that a Ping or a Close
//! is wanted, and its owner acts on it. Sessions' entries are their outboxes; proxy tunnels have
//! an entry of their own, for both of their sides.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::close::CloseReason;

/// What the wheel knows of one connection: when its peer last sent anything and whether a Ping
/// is waiting for an answer, both in the wheel's coarse clock ([`Heartbeat::now_ms`]).
#[derive(Debug)]
pub struct Beat {
    /// When the peer last sent anything.
    last_rx: AtomicU64,
    /// When the outstanding Ping was asked for, or 0.
    ping_sent: AtomicU64,
    /// The wheel's slot holding this entry (stale while a tick has it out), so that a
    /// connection that ends can leave the wheel at once ([`Heartbeat::forget`]).
    slot: AtomicU32,
}

impl Beat {
    /// A connection that was just heard from at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Beat {
            last_rx: AtomicU64::new(now_ms),
            ping_sent: AtomicU64::new(0),
            slot: AtomicU32::new(0),
        }
    }

    /// Records that the peer sent something at `now_ms` (any byte answers a Ping).
    pub fn heard(&self, now_ms: u64) {
        self.last_rx.store(now_ms, Ordering::Relaxed);
    }

    /// When the peer last sent anything, on the wheel's clock.
    pub fn last_heard(&self) -> u64 {
        self.last_rx.load(Ordering::Relaxed)
    }

    /// Settles the outstanding Ping, if any, without a new `last_rx` (see the tunnel's entry).
    pub fn settle(&self) {
        if self.ping_sent.load(Ordering::Relaxed) != 0 {
            self.ping_sent.store(0, Ordering::Relaxed);
        }
    }
}

/// A connection the wheel looks after.
pub trait Entry: Send + Sync + 'static {
    fn beat(&self) -> &Beat;
    /// The peer has been silent for `ping_interval`: send it a Ping soon.
    fn request_ping(&self);
    /// Close for `why`; the first request wins.
    fn request_close(&self, why: CloseReason);
    /// A close was requested (or is under way): the wheel stops pinging.
    fn is_closing(&self) -> bool;
}

/// The wheel and its coarse clock.
#[derive(Debug)]
pub struct Heartbeat<E> {
    epoch: Instant,
    /// Milliseconds since `epoch`, advanced by the ticking task.
    now_ms: AtomicU64,
    tick_ms: u64,
    interval_ms: u64,
    pong_timeout_ms: u64,
    wheel: Mutex<Wheel<E>>,
}

#[derive(Debug)]
struct Wheel<E> {
    slots: Vec<Vec<Weak<E>>>,
    cursor: usize,
}

impl<E: Entry> Heartbeat<E> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Wheel<E>> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a connection.
    pub fn register(&self, conn: &Arc<E>) {
        let ahead = if self.interval_ms == 0 {
            1
        } else {
            self.interval_ms.div_ceil(self.tick_ms) as usize
        };
        let mut w = self.lock();
        let n = w.slots.len();
        let slot = (w.cursor + ahead.clamp(1, n - 1)) % n;
        conn.beat().slot.store(slot as u32, Ordering::Relaxed);
        w.slots[slot].push(Arc::downgrade(conn));
    }

    /// Stops tracking a connection that ended. Without this its entry would stay in the wheel
    /// until its slot comes round (up to `ping_interval`), and with it the allocation its weak
    /// reference keeps: under connect/close churn, a few MB per 10,000 connections.
    pub fn forget(&self, conn: &E) {
        let at = conn.beat().slot.load(Ordering::Relaxed) as usize;
        let mut w = self.lock();
        if let Some(slot) = w.slots.get_mut(at)
            && let Some(i) = slot.iter().position(|x| std::ptr::eq(x.as_ptr(), conn))
        {
            slot.swap_remove(i);
            if slot.is_empty() {
                // After a burst of closes the wheel keeps no capacity for them.
                *slot = Vec::new();
            }
        }
        // Not found: a tick has it out now, and drops it when it finds it gone.
    }

    /// Every live connection, for shutdown.
    pub fn connections(&self) -> Vec<Arc<E>> {
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
        let mut again: Vec<(usize, Weak<E>)> = Vec::new();
        for weak in due {
            let Some(conn) = weak.upgrade() else { continue };
            if let Some(at) = self.visit(&*conn, now) {
                let ahead = (at.saturating_sub(now))
                    .div_ceil(self.tick_ms)
                    .clamp(1, n as u64 - 1);
                let slot = ((cursor as u64 + ahead) % n as u64) as usize;
                conn.beat().slot.store(slot as u32, Ordering::Relaxed);
                again.push((slot, weak));
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
    fn visit(&self, conn: &E, now: u64) -> Option<u64> {
        if conn.is_closing() {
            // Keep it listed (shutdown may still need it) but never ping it again.
            return Some(now + self.interval_ms.max(self.tick_ms));
        }
        let beat = conn.beat();
        let last_rx = beat.last_rx.load(Ordering::Relaxed);
        let sent = beat.ping_sent.load(Ordering::Relaxed);
        if sent != 0 {
            if last_rx >= sent {
                beat.ping_sent.store(0, Ordering::Relaxed);
            } else if now >= sent + self.pong_timeout_ms {
                crate::metrics::METRICS.pong_timeouts.inc();
                conn.request_close(CloseReason::PongTimeout);
                return Some(now + self.interval_ms);
            } else {
                return Some(sent + self.pong_timeout_ms);
            }
        }
        let due = last_rx + self.interval_ms;
        if now >= due {
            beat.ping_sent.store(now, Ordering::Relaxed);
            conn.request_ping();
            Some(now + self.pong_timeout_ms)
        } else {
            Some(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[derive(Default)]
    struct Probe {
        beat: Option<Beat>,
        pings: AtomicU32,
        closed: Mutex<Option<CloseReason>>,
    }

    impl Entry for Probe {
        fn beat(&self) -> &Beat {
            self.beat.as_ref().expect("set")
        }
        fn request_ping(&self) {
            self.pings.fetch_add(1, Ordering::Relaxed);
        }
        fn request_close(&self, why: CloseReason) {
            self.closed.lock().unwrap().get_or_insert(why);
        }
        fn is_closing(&self) -> bool {
            self.closed.lock().unwrap().is_some()
        }
    }

    #[test]
    fn a_forgotten_entry_leaves_the_wheel_at_once() {
        let hb: Arc<Heartbeat<Probe>> =
            Heartbeat::new(Duration::from_secs(25), Duration::from_secs(10));
        let probes: Vec<Arc<Probe>> = (0..3)
            .map(|_| {
                Arc::new(Probe {
                    beat: Some(Beat::new(0)),
                    ..Default::default()
                })
            })
            .collect();
        for p in &probes {
            hb.register(p);
        }
        hb.forget(&probes[1]);
        let left = hb.connections();
        assert_eq!(
            left.len(),
            2,
            "the forgotten entry is gone while still alive"
        );
        assert!(left.iter().all(|c| !Arc::ptr_eq(c, &probes[1])));
        assert_eq!(
            Arc::weak_count(&probes[1]),
            0,
            "the wheel keeps no reference to it"
        );
    }

    #[test]
    fn a_silent_entry_gets_a_ping_then_a_pong_timeout_and_an_answering_one_does_not() {
        let hb: Arc<Heartbeat<Probe>> =
            Heartbeat::new(Duration::from_millis(100), Duration::from_millis(100));
        let quiet = Probe {
            beat: Some(Beat::new(0)),
            ..Default::default()
        };
        let chatty = Probe {
            beat: Some(Beat::new(0)),
            ..Default::default()
        };
        assert_eq!(hb.visit(&quiet, 50), Some(100), "not due yet");
        assert_eq!(
            hb.visit(&quiet, 100),
            Some(200),
            "due: a ping, then the timeout"
        );
        assert_eq!(quiet.pings.load(Ordering::Relaxed), 1);
        hb.visit(&chatty, 100);
        chatty.beat().heard(150);
        hb.visit(&chatty, 200);
        assert!(!chatty.is_closing(), "an answer settles the ping");
        hb.visit(&quiet, 200);
        assert_eq!(
            *quiet.closed.lock().unwrap(),
            Some(CloseReason::PongTimeout)
        );
    }
}
