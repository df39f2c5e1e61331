//! The per-connection outbound queue and the signals other tasks send to a session.
//!
//! Publishers push already-encoded frames (`Bytes`, shared by every recipient) and wake the
//! session only when it was idle; the session swaps the whole queue out under the lock and writes
//! it with vectored writes. A queue that grows past its byte limit marks the consumer slow: the
//! session then drops what is queued and closes with 1013, and nobody else waits for it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Waker;

use bytes::Bytes;

use super::close::CloseReason;
use super::heartbeat::{Beat, Entry};
use crate::broker::Kind;
use crate::hub::Member;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// The session's waker: a close or Ping request always uses it; a push only while `idle`.
    waker: Option<Waker>,
    /// The session found nothing queued when it last looked: a push must wake it. While it is
    /// busy writing (or blocked on a full socket) pushes just queue, without a wake-up each.
    idle: bool,
    ping: bool,
    /// Boxed: only a closing connection has one, and every idle one carries this field.
    close: Option<Box<CloseReason>>,
    /// The session queued its Close: nothing may follow it on the wire.
    sealed: bool,
}

/// The size of the queue's locked state, for the session's size test.
#[cfg(test)]
pub(super) const STATE_SIZE: usize = std::mem::size_of::<Mutex<State>>();

/// Shared between a session and everyone who sends to it (hub, heartbeat, shutdown).
#[derive(Debug)]
pub struct Outbox {
    pub id: u64,
    state: Mutex<State>,
    /// Bytes queued or not yet written by the session.
    queued: AtomicUsize,
    limit: usize,
    /// The client speaks `wsgate.v1`: messages for it alone come in an envelope.
    v1: bool,
    /// The connection's heartbeat state (this outbox is its entry in the wheel).
    pub(super) beat: Beat,
}

/// What the session found in its outbox.
#[derive(Debug, Default)]
pub struct Signals {
    pub ping: bool,
    pub close: Option<CloseReason>,
}

impl Outbox {
    /// The outbox of connection `id`, holding at most `limit` queued bytes, heard from at
    /// heartbeat time `now_ms`.
    pub fn new(id: u64, limit: usize, now_ms: u64) -> Self {
        Outbox {
            id,
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            limit,
            v1: false,
            beat: Beat::new(now_ms),
        }
    }

    /// The same outbox, for a client speaking `wsgate.v1`.
    pub fn speaking_v1(mut self, v1: bool) -> Self {
        self.v1 = v1;
        self
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
            // Counted once per connection, not once per message it could not take.
            if self.request_close(CloseReason::SlowConsumer) {
                crate::metrics::METRICS.slow_consumers.inc();
            }
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
            if std::mem::take(&mut st.idle) {
                st.waker.take()
            } else {
                None
            }
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

    /// Asks the session to close; the first request wins. Returns whether this one did.
    pub fn request_close(&self, why: CloseReason) -> bool {
        let waker = {
            let mut st = self.lock();
            if st.close.is_some() {
                return false;
            }
            st.close = Some(Box::new(why));
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn request_ping(&self) {
        let waker = {
            let mut st = self.lock();
            st.ping = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves queued frames to `out`, takes pending signals and registers `waker`: the next
    /// close or Ping request wakes the session whatever it is doing (a session blocked on a peer
    /// that stopped reading must still learn that its Close is due), and the next push wakes it
    /// when there was nothing to take.
    pub(crate) fn take(&self, out: &mut VecDeque<Bytes>, waker: &Waker) -> Signals {
        let mut st = self.lock();
        let signals = Signals {
            ping: std::mem::take(&mut st.ping),
            close: st.close.as_deref().cloned(),
        };
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            st.waker = Some(waker.clone());
        }
        st.idle = st.queue.is_empty();
        if out.is_empty() {
            std::mem::swap(out, &mut st.queue);
        } else {
            out.extend(st.queue.drain(..));
        }
        signals
    }

    /// Gives back the queue's buffer when nothing is queued (see the session's `release`).
    pub(crate) fn release_idle(&self) {
        let mut st = self.lock();
        if st.queue.is_empty() {
            st.queue = VecDeque::new();
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

impl Member for Outbox {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, frame: &Bytes) -> bool {
        self.push(frame)
    }

    /// Half the queue: a replay must leave room for live messages.
    fn budget(&self) -> usize {
        self.limit / 2
    }

    fn disconnect(&self, code: u16, reason: &str) {
        let _ = self.request_close(CloseReason::Disconnected {
            code,
            reason: std::sync::Arc::from(reason),
        });
    }

    fn send(&self, data: &[u8], kind: Kind) -> bool {
        self.push(&super::codec::direct(self.v1, data, kind))
    }

    fn stats(&self) -> crate::hub::MemberStats {
        crate::hub::MemberStats {
            queued_bytes: self.queued_bytes(),
            limit: self.limit,
            last_heard_ms: self.beat.last_heard(),
            closing: self.is_closing(),
        }
    }
}

impl Entry for Outbox {
    fn beat(&self) -> &Beat {
        &self.beat
    }

    fn request_ping(&self) {
        Outbox::request_ping(self);
    }

    fn request_close(&self, why: CloseReason) {
        let _ = Outbox::request_close(self, why);
    }

    fn is_closing(&self) -> bool {
        Outbox::is_closing(self)
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
        assert_eq!(sig.close, Some(CloseReason::SlowConsumer));
        assert!(!o.push(&frame), "a closing connection takes nothing more");
    }

    #[test]
    fn one_large_message_fits_an_empty_queue() {
        let o = Outbox::new(1, 100, 0);
        assert!(o.push(&Bytes::from(vec![0u8; 1000])));
        assert!(!o.is_closing());
    }
}
