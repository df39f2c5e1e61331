//! One browser connection after the 101: read frames, act on messages, write queued frames,
//! answer pings, and close with the right code.
//!
//! The session is a single task that polls the socket and its [`Outbox`] itself. It holds no read
//! buffer while idle: a read lands in a per-thread scratch buffer and the decoder keeps only a
//! partial frame header or an unfinished message. Writes are vectored over the queued frames.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::close::CloseCode;
use super::frame::{self, Decoder, Event, OpCode, ProtocolError};
use super::heartbeat::Heartbeat;
use super::outbox::{CloseRequest, Outbox};
use crate::config::OnMessage;
use crate::hub::Hub;
use crate::metrics::METRICS;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// Most frames written by one `writev`.
const MAX_IOV: usize = 64;
/// Reads handled in one poll before yielding, so one busy client cannot starve the others.
const READS_PER_POLL: usize = 16;

/// Everything a session needs to know about the route it was accepted on.
#[derive(Debug)]
pub struct RouteCtx {
    pub on_message: OnMessage,
    pub echo_to_sender: bool,
    pub max_message_bytes: usize,
}

/// What every session shares: one `Arc` per session instead of one per handle.
#[derive(Debug)]
pub struct Env {
    pub hub: Arc<Hub>,
    pub heartbeat: Arc<Heartbeat>,
    /// How long to wait for the peer's Close after sending ours.
    pub close_timeout: Duration,
    /// WebSocket connections open or being upgraded; each session gives its slot back on drop.
    pub open: AtomicUsize,
}

/// A session ready to run: a future that ends when the connection is closed. Dropping it (at
/// the end, or when the runtime shuts down) leaves the group and frees the connection slot.
#[derive(Debug)]
pub struct Session {
    io: TcpStream,
    outbox: Arc<Outbox>,
    route: Arc<RouteCtx>,
    group: Option<Arc<str>>,
    env: Arc<Env>,
    decoder: Decoder,
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    offset: usize,
    /// Index just past the control frames queued ahead of data in `out` (they keep their order).
    ctrl_end: usize,
    close_sent: bool,
    close_received: bool,
    /// Stop reading: the peer broke the protocol or went away.
    read_done: bool,
    /// Leave without waiting for the peer's Close.
    abort: bool,
    /// The extra bytes that arrived with the handshake.
    pending: Option<Bytes>,
    phase: Phase,
}

/// How a session ended, for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    PeerGone,
    Io(io::ErrorKind),
}

impl Session {
    /// Takes over a member already in its group (if any) and a connection slot already counted
    /// in `env.open`; both are given back when the session is dropped.
    pub fn new(
        io: TcpStream,
        leftover: Bytes,
        outbox: Arc<Outbox>,
        route: Arc<RouteCtx>,
        group: Option<Arc<str>>,
        env: Arc<Env>,
    ) -> Self {
        let decoder = Decoder::new(route.max_message_bytes);
        let _ = io.set_nodelay(true);
        METRICS.connections.inc();
        METRICS.connections_total.inc();
        Session {
            io,
            outbox,
            route,
            group,
            env,
            decoder,
            out: VecDeque::new(),
            offset: 0,
            ctrl_end: 0,
            close_sent: false,
            close_received: false,
            read_done: false,
            abort: false,
            pending: (!leftover.is_empty()).then_some(leftover),
            phase: Phase::Open,
        }
    }

    /// After our Close went out, or the connection failed: what to do next.
    fn after_open(&mut self, end: End, cx: &mut Context<'_>) -> Phase {
        tracing::debug!(conn = self.outbox.id, ?end, "websocket closing");
        if self.abort {
            return Phase::Done;
        }
        if end == End::Closed && self.close_sent && !self.close_received {
            // We closed first: give the peer close_timeout to answer before dropping it.
            return Phase::CloseWait(Box::pin(tokio::time::sleep(self.env.close_timeout)));
        }
        self.start_linger(cx)
    }

    /// Half-closes and then drains what the peer still sends (bounded), so unread input does not
    /// turn our final Close into a reset (RFC 6455 §7.1.1: the server closes TCP first).
    fn start_linger(&mut self, cx: &mut Context<'_>) -> Phase {
        use tokio::io::AsyncWrite;
        // A TCP shutdown(SHUT_WR) completes at once; anything but Ready(Ok) means the socket is gone.
        if !matches!(
            Pin::new(&mut self.io).poll_shutdown(cx),
            Poll::Ready(Ok(()))
        ) {
            return Phase::Done;
        }
        Phase::Linger(Box::pin(tokio::time::sleep(LINGER)))
    }

    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READS_PER_POLL {
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let r = SCRATCH.with(|s| self.io.try_read(&mut s.borrow_mut()));
            match r {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn enqueue_own(&mut self, frame: Bytes) {
        self.outbox.add_own(frame.len());
        self.out.push_back(frame);
    }

    /// Queues a control frame ahead of data, behind earlier control frames, and never inside a
    /// partly written frame (RFC 6455 §5.4 allows control frames between fragments, not inside).
    fn enqueue_control(&mut self, frame: Bytes) {
        self.outbox.add_own(frame.len());
        let at = self
            .ctrl_end
            .max(usize::from(self.offset > 0))
            .min(self.out.len());
        self.out.insert(at, frame);
        self.ctrl_end = at + 1;
    }

    /// Queues our Close behind everything already queued (nothing may follow a Close, RFC 6455
    /// §5.5.1), or behind only the frame being written, with `discard`.
    fn send_close(&mut self, code: u16, reason: &str, discard: bool) {
        if !self.close_sent {
            self.close_sent = true;
            if discard {
                let keep = usize::from(self.offset > 0);
                let dropped: usize = self.out.iter().skip(keep).map(Bytes::len).sum();
                self.out.truncate(keep);
                self.ctrl_end = self.ctrl_end.min(self.out.len());
                self.outbox.sent(dropped);
            }
            self.outbox.seal(&mut self.out, discard);
            self.enqueue_own(frame::encode_close(code, reason));
        }
    }

    fn fail(&mut self, e: ProtocolError) {
        METRICS.protocol_errors.inc();
        tracing::debug!(conn = self.outbox.id, code = e.code.0, reason = %e.reason, "protocol error");
        self.send_close(e.code.0, &e.reason, false);
        self.read_done = true;
        // RFC 6455 §7.1.7: after failing the connection there is nothing to wait for.
        self.close_received = true;
    }

    fn on_event(&mut self, ev: Event) {
        if self.close_sent && !matches!(ev, Event::Close(..)) {
            // After our Close, data is discarded (§5.5.1) while we wait for the peer's Close.
            return;
        }
        match ev {
            Event::Message(m) => {
                METRICS.messages_received.inc();
                match self.route.on_message {
                    OnMessage::Drop => {}
                    OnMessage::Echo => self.enqueue_own(m.into_frame()),
                    OnMessage::Broadcast => {
                        if let Some(g) = &self.group {
                            let except = (!self.route.echo_to_sender).then_some(self.outbox.id);
                            self.env.hub.publish(g, &m.into_frame(), except);
                        }
                    }
                }
            }
            Event::Ping(p) => self.enqueue_control(frame::encode(OpCode::Pong, &p)),
            Event::Pong => {}
            Event::Close(code, _reason) => {
                self.close_received = true;
                self.read_done = true;
                // Answer with the peer's code, or 1000 when it gave none.
                self.send_close(code.unwrap_or(1000), "", false);
            }
        }
    }

    fn take_signals(&mut self, cx: &mut Context<'_>) {
        let sig = self.outbox.take(&mut self.out, cx.waker());
        if sig.ping && !self.close_sent {
            self.enqueue_control(frame::encode(OpCode::Ping, b""));
        }
        if let Some(req) = sig.close.filter(|_| !self.close_sent) {
            self.close_for(req);
        }
    }

    fn close_for(&mut self, req: CloseRequest) {
        if req.abort {
            self.abort = true;
            self.read_done = true;
        }
        tracing::debug!(
            conn = self.outbox.id,
            code = req.code.0,
            reason = req.reason,
            "closing"
        );
        self.send_close(req.code.0, req.reason, req.discard_queue);
    }

    /// Writes queued frames until the socket would block or nothing is left.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        let mut progressed = false;
        while !self.out.is_empty() {
            if self.io.poll_write_ready(cx).is_pending() {
                return Ok(progressed);
            }
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, b) in self.out.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                n_iov += 1;
            }
            match self.io.try_write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    progressed = true;
                    self.outbox.sent(n);
                    while n > 0 {
                        let left = self.out[0].len() - self.offset;
                        if n >= left {
                            n -= left;
                            self.offset = 0;
                            self.out.pop_front();
                            self.ctrl_end = self.ctrl_end.saturating_sub(1);
                        } else {
                            self.offset += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.capacity() > 1024 {
            self.out.shrink_to(64);
        }
        Ok(progressed)
    }

    /// Reads and handles whatever is available; returns whether anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        // Back-pressure: while our own queue is over its limit, stop reading (an echo client that
        // does not read its echoes is slowed down by TCP, not buffered without bound).
        if self.outbox.queued_bytes() > self.outbox.limit() {
            return Ok(false);
        }
        let mut events = Vec::new();
        let result = loop {
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Err(e)) => return Err(End::Io(e.kind())),
                Poll::Ready(Ok(())) => {}
            }
            let res = SCRATCH.with(|s| {
                let mut buf = s.borrow_mut();
                match read_clearing(&self.io, &mut buf) {
                    Ok(0) => Err(End::PeerGone),
                    Ok(n) => {
                        self.outbox
                            .last_rx
                            .store(self.env.heartbeat.now_ms(), Ordering::Relaxed);
                        Ok(Some(
                            self.decoder.feed(&mut buf[..n], &mut |e| events.push(e)),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(End::Io(e.kind())),
                }
            })?;
            // On WouldBlock the readiness was cleared but no waker is registered yet: poll the
            // readiness again so it is, or we would sleep until the next heartbeat.
            if let Some(r) = res {
                break r;
            }
        };
        for ev in events {
            self.on_event(ev);
        }
        if let Err(e) = result {
            self.fail(e);
        }
        Ok(true)
    }

    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Some(mut first) = self.pending.take().map(|b| b.to_vec()) {
            let mut events = Vec::new();
            let r = self.decoder.feed(&mut first, &mut |e| events.push(e));
            for ev in events {
                self.on_event(ev);
            }
            if let Err(e) = r {
                self.fail(e);
            }
        }
        for _ in 0..READS_PER_POLL {
            self.take_signals(cx);
            let wrote = match self.poll_write(cx) {
                Ok(w) => w,
                Err(e) => return Poll::Ready(End::Io(e.kind())),
            };
            if self.close_sent && self.out.is_empty() {
                // Our Close is out; `run` waits (bounded) for the peer's answer if it is owed.
                return Poll::Ready(End::Closed);
            }
            let read = if self.read_done {
                false
            } else {
                match self.poll_read(cx) {
                    Ok(r) => r,
                    Err(e) => return Poll::Ready(e),
                }
            };
            if !wrote && !read {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After our Close went out: read (discarding data) until the peer's Close or EOF.
    fn poll_close_wait(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..READS_PER_POLL {
            if self.close_received {
                return Poll::Ready(End::Closed);
            }
            match self.poll_read(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(End::PeerGone) => return Poll::Ready(End::Closed),
                Err(e) => return Poll::Ready(e),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Reads once; a short read also clears the socket's read readiness, as tokio's own
/// `poll_read` does on unix, so the next poll parks instead of paying for a `recv` that can only
/// return EAGAIN. Data that arrives meanwhile raises a new readiness event, so nothing is missed.
fn read_clearing(io: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let cap = buf.len();
    let mut got = 0;
    let r = io.try_io(Interest::READABLE, || {
        let n = io.try_read(buf)?;
        got = n;
        if n > 0 && n < cap {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Where a session is in its life.
#[derive(Debug)]
enum Phase {
    Open,
    /// Our Close is out; waiting (bounded) for the peer's.
    CloseWait(Pin<Box<Sleep>>),
    /// Write side shut; draining the peer's last bytes (bounded).
    Linger(Pin<Box<Sleep>>),
    Done,
}

/// How long to drain a peer after our last byte.
const LINGER: Duration = Duration::from_secs(2);

impl Future for Session {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let next = match &mut this.phase {
                Phase::Open => match this.poll_open(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(end) => this.after_open(end, cx),
                },
                Phase::CloseWait(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.start_linger(cx)
                    } else {
                        match this.poll_close_wait(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(_) => this.start_linger(cx),
                        }
                    }
                }
                Phase::Linger(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        Phase::Done
                    } else {
                        match this.poll_linger(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(()) => Phase::Done,
                        }
                    }
                }
                Phase::Done => return Poll::Ready(()),
            };
            this.phase = next;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(g) = &self.group {
            self.env.hub.leave(g, self.outbox.id);
        }
        METRICS.connections.dec();
        self.env.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Close code used when the server shuts down.
pub const SHUTDOWN: CloseRequest = CloseRequest {
    code: CloseCode::GOING_AWAY,
    reason: "server shutting down",
    discard_queue: false,
    abort: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The session is the whole state of an idle connection's task: keeping it small is what
    /// keeps 19,000 idle sockets under 2 KB each (BENCHMARKS.md). Timers and drain buffers are
    /// boxed only while closing for this reason.
    #[test]
    fn an_idle_session_stays_small() {
        let size = std::mem::size_of::<Session>();
        assert!(size <= 384, "Session grew to {size} bytes");
    }
}
