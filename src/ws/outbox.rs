//! The per-connection outbound queue and the signals other tasks send to a session.
//!
//! Publishers push already-encoded frames (`Bytes`, shared by every recipient) and wake the
//! session only when it was idle; the session swaps the whole queue out under the lock and writes
//! it with vectored writes. A queue that grows past its byte limit marks the consumer slow: the
//! session then drops what is queued and closes with 1013, and nobody else waits for it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;

use bytes::Bytes;

use super::close::CloseCode;

/// Why a session was asked to close by someone other than its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: CloseCode,
    pub reason: &'static str,
    /// Drop queued messages instead of delivering them first (slow consumer, dead peer).
    pub discard_queue: bool,
    /// Do not wait for the peer's Close (it is not answering anyway).
    pub abort: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    waker: Option<Waker>,
    ping: bool,
    close: Option<CloseRequest>,
    /// The session queued its Close: nothing may follow it on the wire.
    sealed: bool,
}

/// Shared between a session and everyone who sends to it (hub, heartbeat, shutdown).
#[derive(Debug)]
pub struct Outbox {
    pub id: u64,
    state: Mutex<State>,
    /// Bytes queued or not yet written by the session.
    queued: AtomicUsize,
    limit: usize,
    /// Heartbeat clock (ms) of the last byte received from the peer.
    pub(super) last_rx: AtomicU64,
    /// Heartbeat clock (ms) of the outstanding Ping, or 0.
    pub(super) ping_sent: AtomicU64,
}

/// What the session found in its outbox.
#[derive(Debug, Default)]
pub struct Signals {
    pub ping: bool,
    pub close: Option<CloseRequest>,
}

impl Outbox {
    pub fn new(id: u64, limit: usize, now_ms: u64) -> Self {
        Outbox {
            id,
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            limit,
            last_rx: AtomicU64::new(now_ms),
            ping_sent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update is a
        // single push or swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an encoded frame. Returns false when the connection is closing or has just been
    /// found too slow (in which case it is told to close with 1013).
    pub fn push(&self, frame: &Bytes) -> bool {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        // One message always fits an empty queue, so a single large message is never "slow".
        if before > 0 && before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            crate::metrics::METRICS.slow_consumers.inc();
            self.request_close(CloseRequest {
                code: CloseCode::TRY_AGAIN_LATER,
                reason: "slow consumer",
                discard_queue: true,
                abort: false,
            });
            return false;
        }
        let waker = {
            let mut st = self.lock();
            if st.close.is_some() || st.sealed {
                drop(st);
                self.queued.fetch_sub(len, Ordering::Relaxed);
                return false;
            }
            st.queue.push_back(frame.clone());
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The session is about to queue its Close: refuse everything from now on, and move what
    /// is queued to `out` so it leaves before the Close (or drop it, with `discard`).
    pub(crate) fn seal(&self, out: &mut VecDeque<Bytes>, discard: bool) {
        let mut st = self.lock();
        st.sealed = true;
        if discard {
            let dropped: usize = st.queue.drain(..).map(|b| b.len()).sum();
            self.sent(dropped);
        } else {
            out.extend(st.queue.drain(..));
        }
    }

    /// Asks the session to close; the first request wins.
    pub fn request_close(&self, req: CloseRequest) {
        let waker = {
            let mut st = self.lock();
            if st.close.is_some() {
                return;
            }
            st.close = Some(req);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(super) fn request_ping(&self) {
        let waker = {
            let mut st = self.lock();
            st.ping = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves queued frames to `out` and takes pending signals; registers `waker` when there was
    /// nothing to take, so the next push wakes the session.
    pub(crate) fn take(&self, out: &mut VecDeque<Bytes>, waker: &Waker) -> Signals {
        let mut st = self.lock();
        let signals = Signals {
            ping: std::mem::take(&mut st.ping),
            close: st.close.clone(),
        };
        if st.queue.is_empty() {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                st.waker = Some(waker.clone());
            }
        } else if out.is_empty() {
            std::mem::swap(out, &mut st.queue);
        } else {
            out.extend(st.queue.drain(..));
        }
        signals
    }

    /// Records what a proxy tunnel heard: `last_rx` is when the quieter of its two sides last
    /// sent anything, and `answered` says that no Ping the tunnel sent is still unanswered. The
    /// tunnel pings only the side that is due, so the other side may have stayed quiet since the
    /// wheel's Ping request; `answered` settles that request anyway, or the wheel would take the
    /// unpinged side's silence for a pong timeout.
    pub fn heard(&self, last_rx: u64, answered: bool) {
        self.last_rx.store(last_rx, Ordering::Relaxed);
        // A request raised while the tunnel is mid-poll may be cleared before the tunnel sees
        // it. The tunnel still sends that Ping, and the wheel, finding the side silent on its
        // next visit, raises a new request: the pong timeout comes one visit late, no Ping is
        // lost and no live tunnel is closed.
        if answered && self.ping_sent.load(Ordering::Relaxed) != 0 {
            self.ping_sent.store(0, Ordering::Relaxed);
        }
    }

    /// Records that `n` queued bytes were written (or discarded).
    pub(super) fn sent(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records bytes the session queued for itself (echo, pong), so the limit covers them.
    pub(super) fn add_own(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }
}

impl crate::hub::Member for Outbox {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, message: &Bytes) -> bool {
        self.push(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_consumer_past_its_limit_is_told_to_close_with_1013() {
        let o = Outbox::new(1, 100, 0);
        let frame = Bytes::from(vec![0u8; 60]);
        assert!(o.push(&frame));
        assert!(!o.push(&frame), "120 bytes exceed the 100 byte limit");
        let mut out = VecDeque::new();
        let sig = o.take(&mut out, Waker::noop());
        assert_eq!(sig.close.unwrap().code, CloseCode::TRY_AGAIN_LATER);
        assert!(!o.push(&frame), "a closing connection takes nothing more");
    }

    #[test]
    fn one_large_message_fits_an_empty_queue() {
        let o = Outbox::new(1, 100, 0);
        assert!(o.push(&Bytes::from(vec![0u8; 1000])));
        assert!(!o.is_closing());
    }
}
