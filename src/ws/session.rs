//! One browser connection after the 101: read frames, act on messages, write queued frames,
//! answer pings, and close with the right code.
//!
//! The session is a single task that polls its transport and its [`Outbox`] itself. It runs on
//! any [`Transport`]; on plain TCP that means readiness-based reads and `writev`. It holds no
//! read buffer while idle: a read lands in a per-thread scratch buffer and the decoder keeps only
//! a partial frame header or an unfinished message. Writes are vectored over the queued frames.
//!
//! # Closing
//! From the moment a Close of ours is due (asked for by the wheel, shutdown or the hub, or our
//! answer to the peer's), the peer has `websocket.close_timeout` to take it and answer. A peer
//! that does not even read it by then (its receive window full) is reset, so the connection's
//! slot comes back whatever the client does.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::close::{CloseCode, CloseReason, ProtocolError};
use super::codec::{Compression, RAW};
use super::frame::{self, Decoder, Event, OpCode, PartialBudget};
use super::heartbeat::Heartbeat;
use super::outbox::Outbox;
use super::relay::Extras;
use super::v1::{self, V1};
use crate::broker::{Kind, Publication};
use crate::config::OnMessage;
use crate::hub::Codec;
use crate::hub::Hub;
use crate::lifecycle::Slots;
use crate::metrics::METRICS;
use crate::transport::Transport;

const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

/// Our Ping: no payload (a Pong answering it then allocates nothing either).
const PING: &[u8] = &[0x80 | OpCode::Ping as u8, 0];

/// Most frames written by one `writev`.
const MAX_IOV: usize = 64;
/// Reads handled in one poll before yielding, so one busy client cannot starve the others.
const READS_PER_POLL: usize = 16;
/// How long to drain a peer after our last byte.
const LINGER: Duration = Duration::from_secs(2);

/// Everything a session needs to know about the route it was accepted on.
#[derive(Debug)]
pub struct RouteCtx {
    pub on_message: OnMessage,
    pub echo_to_sender: bool,
    pub max_message_bytes: usize,
    /// This route's open-connections gauge, resolved when the route was built.
    pub open: crate::metrics::Gauge,
    /// How fast a client may send on this route; `None`: as fast as it likes (the echo route).
    pub inbound: Option<Inbound>,
}

/// `websocket.max_messages_per_second` and `max_bytes_per_second` (0: that one is off).
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    pub messages_per_second: u32,
    pub bytes_per_second: usize,
}

/// A connection's two token buckets, each holding one second's worth (the bytes bucket at least
/// one largest message and one read, so a legal message always fits).
#[derive(Debug)]
struct Buckets {
    messages: f64,
    bytes: f64,
    bytes_cap: f64,
    at: std::time::Instant,
    /// A bucket ran dry: the Close that follows is a rate refusal, counted in
    /// `wsgate_ws_inbound_rate_closes_total`, not a protocol error.
    tripped: bool,
}

/// A session's buckets, made full when it has none (first read, or first since it went idle).
fn buckets<'a>(
    slot: &'a mut Option<Box<Buckets>>,
    limit: &Inbound,
    max_message: usize,
) -> &'a mut Buckets {
    slot.get_or_insert_with(|| Box::new(Buckets::new(limit, max_message)))
}

impl Buckets {
    fn new(limit: &Inbound, max_message: usize) -> Self {
        let bytes_cap = limit
            .bytes_per_second
            .max(max_message + frame::SERVER_HEADER_MAX)
            .max(SCRATCH_LEN) as f64;
        Buckets {
            messages: f64::from(limit.messages_per_second),
            bytes: bytes_cap,
            bytes_cap,
            at: std::time::Instant::now(),
            tripped: false,
        }
    }

    fn refill(&mut self, limit: &Inbound) {
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        let m = f64::from(limit.messages_per_second);
        self.messages = (self.messages + secs * m).min(m);
        self.bytes = (self.bytes + secs * limit.bytes_per_second as f64).min(self.bytes_cap);
    }
}

/// What every session shares: one `Arc` per session instead of one per handle.
#[derive(Debug)]
pub struct Env {
    pub hub: Arc<Hub>,
    pub heartbeat: Arc<Heartbeat<Outbox>>,
    /// How long the peer has to take and answer our Close once it is due.
    pub close_timeout: Duration,
    /// WebSocket connections open or being upgraded; each session gives its place back when
    /// dropped.
    pub slots: Arc<Slots>,
    /// `websocket.max_partial_bytes_total`, shared by every session's decoder.
    pub partial: Arc<PartialBudget>,
}

/// A session ready to run: a future that ends when the connection is closed. Dropping it (at
/// the end, or when the runtime shuts down) leaves the group and frees the connection slot.
#[derive(Debug)]
pub struct Session<S = TcpStream> {
    io: S,
    outbox: Arc<Outbox>,
    route: Arc<RouteCtx>,
    group: Option<Arc<str>>,
    env: Arc<Env>,
    /// Built on the first read and dropped with the queue buffers once idle (between messages
    /// when a Ping is due): 8 bytes in an idle session instead of the decoder's 112, which is
    /// what brings the session's task down to 256 bytes.
    decoder: Option<Box<Decoder>>,
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    offset: usize,
    /// Index just past the control frames queued ahead of data in `out` (they keep their order).
    ctrl_end: u32,
    /// Our Close is queued, the peer's arrived, reading is over, ... (`Flags`).
    flags: Flags,
    phase: Phase,
    /// The `wsgate.v1` state, when the client speaks it (a plain client has none).
    v1: Option<Box<V1>>,
    /// What few sessions have: backend hooks' groups and relay, bytes that came with the
    /// handshake, a per-address place to keep (none for a plain client on loopback),
    /// permessage-deflate's settings, the closing deadline.
    extras: Option<Box<Extras>>,
    /// Inbound rate buckets, on routes that limit it: made by the first read that counts and
    /// dropped with the queue buffers once idle (a bucket left for `ping_interval` would have
    /// refilled anyway), so an idle connection holds none.
    buckets: Option<Box<Buckets>>,
}

/// A session's yes/no state in one byte: five `bool`s would take five bytes of every idle
/// session's task, and a few bytes decide which allocation size its task gets.
#[derive(Debug, Clone, Copy, Default)]
struct Flags(u8);

impl Flags {
    /// Our Close is queued (nothing may follow it).
    const CLOSE_SENT: u8 = 1;
    /// The peer's Close arrived.
    const CLOSE_RECEIVED: u8 = 1 << 1;
    /// Stop reading: the peer broke the protocol or went away.
    const READ_DONE: u8 = 1 << 2;
    /// Leave once our Close is out, without waiting for the peer's.
    const NO_WAIT: u8 = 1 << 3;
    /// A Ping was asked for (the peer was silent for `ping_interval`): once the queue is written
    /// out, give its buffers back, so a connection that went idle after a burst holds none.
    const RELEASE: u8 = 1 << 4;

    fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }

    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.0 |= f;
        } else {
            self.0 &= !f;
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Our Close is out; waiting (until the close deadline) for the peer's.
    CloseWait,
    /// Write side shut; draining the peer's last bytes (bounded).
    Linger,
    Done,
}

/// How the open phase ended, for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    PeerGone,
    Io(io::ErrorKind),
}

impl<S: Transport> Session<S> {
    /// Takes over a member already in its group (if any) and a connection slot already taken
    /// from `env.slots` (and kept); both are given back when the session is dropped. With
    /// `v1`, the client speaks `wsgate.v1`: its messages are commands.
    pub fn new(
        io: S,
        leftover: Bytes,
        outbox: Arc<Outbox>,
        route: Arc<RouteCtx>,
        group: Option<Arc<str>>,
        env: Arc<Env>,
        v1: Option<v1::Settings>,
    ) -> Self {
        io.set_nodelay();
        METRICS.connections.inc();
        METRICS.connections_total.inc();
        route.open.inc();
        Session {
            io,
            outbox,
            route,
            group,
            env,
            decoder: None,
            out: VecDeque::new(),
            offset: 0,
            ctrl_end: 0,
            flags: Flags::default(),
            phase: Phase::Open,
            v1: v1.map(|s| Box::new(V1::new(s))),
            extras: None,
            buckets: None,
        }
        .with_pending(leftover)
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Default::default)
    }

    fn with_pending(mut self, leftover: Bytes) -> Self {
        if !leftover.is_empty() {
            self.extras_mut().pending = Some(Vec::from(leftover).into_boxed_slice());
        }
        self
    }

    /// The same session, keeping `keep` alive until it ends (held by the session rather than
    /// by a wrapping future: the session is the whole task, and every byte of it is paid per
    /// idle connection).
    pub fn keeping(mut self, keep: Option<Arc<dyn std::any::Any + Send + Sync>>) -> Self {
        if keep.is_some() {
            self.extras_mut().keep = keep;
        }
        self
    }

    /// The same session with what backend hooks added: groups already joined (left when it
    /// ends) and the relay that takes its messages and hears of its close.
    pub fn with_extras(mut self, extras: Option<Box<Extras>>) -> Self {
        if let Some(mut x) = extras {
            if let Some(old) = self.extras.take() {
                x.pending = old.pending;
                x.keep = old.keep;
                x.compression = old.compression;
                x.timer = old.timer;
            }
            self.extras = Some(x);
        }
        self
    }

    /// The client negotiated permessage-deflate: its compressed messages are inflated, and
    /// its echoes compressed as `compression` says (publications are compressed by the
    /// fan-out, once for every such member).
    pub fn compressing(mut self, compression: Option<&'static Compression>) -> Self {
        if let Some(c) = compression {
            METRICS.deflate_connections.inc();
            self.extras_mut().compression = Some(c);
        }
        self
    }

    /// The decoder, built when a read first needs it (and again after an idle release).
    fn decoder(&mut self) -> &mut Decoder {
        let deflate = self.compression().is_some();
        let (route, env) = (&self.route, &self.env);
        self.decoder.get_or_insert_with(|| {
            Box::new(
                Decoder::new(route.max_message_bytes)
                    .inflating(deflate)
                    .budgeted(env.partial.clone()),
            )
        })
    }

    fn compression(&self) -> Option<&'static Compression> {
        self.extras.as_ref().and_then(|x| x.compression)
    }

    /// Sets the closing phase's deadline `after` from now.
    fn arm(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        let timer = &mut self.extras_mut().timer;
        match timer {
            Some(t) => t.as_mut().reset(at),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Whether the closing deadline has passed (registering for it when it has not).
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.extras
            .as_mut()
            .and_then(|x| x.timer.as_mut())
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// After the open phase ended: what to do next.
    fn after_open(&mut self, end: End, cx: &mut Context<'_>) -> Phase {
        tracing::debug!(conn = self.outbox.id, ?end, "websocket closing");
        if self.flags.has(Flags::NO_WAIT) {
            return Phase::Done;
        }
        if end == End::Closed
            && self.flags.has(Flags::CLOSE_SENT)
            && !self.flags.has(Flags::CLOSE_RECEIVED)
        {
            // We closed first: the peer answers within the close deadline, already running.
            return Phase::CloseWait;
        }
        self.start_linger(cx)
    }

    /// Half-closes and then drains what the peer still sends (bounded), so unread input does not
    /// turn our final Close into a reset (RFC 6455 §7.1.1: the server closes TCP first).
    fn start_linger(&mut self, cx: &mut Context<'_>) -> Phase {
        // A TCP shutdown(SHUT_WR) completes at once; anything but Ready(Ok) means the socket is
        // gone (or, on another transport, cannot close cleanly now: then there is nothing to
        // linger for either).
        if !matches!(
            Pin::new(&mut self.io).poll_shutdown(cx),
            Poll::Ready(Ok(()))
        ) {
            return Phase::Done;
        }
        self.arm(LINGER);
        Phase::Linger
    }

    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READS_PER_POLL {
            let r = SCRATCH.with(|s| self.io.poll_recv(cx, &mut s.borrow_mut()));
            match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
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
        let at = (self.ctrl_end as usize)
            .max(usize::from(self.offset > 0))
            .min(self.out.len());
        self.out.insert(at, frame);
        // The queue is bounded by the send queue limit, far below 4 billion frames.
        self.ctrl_end = u32::try_from(at + 1).unwrap_or(u32::MAX);
    }

    /// Queues our Close behind everything already queued (nothing may follow a Close, RFC 6455
    /// §5.5.1), or behind only the frame being written, with `discard`; the close deadline
    /// starts now.
    fn send_close(&mut self, code: u16, reason: &str, discard: bool) {
        if self.flags.has(Flags::CLOSE_SENT) {
            return;
        }
        self.flags.set(Flags::CLOSE_SENT, true);
        if let Some(x) = self.extras.as_mut() {
            x.code.get_or_insert(code);
        }
        if discard {
            let keep = usize::from(self.offset > 0);
            let dropped: usize = self.out.iter().skip(keep).map(Bytes::len).sum();
            self.out.truncate(keep);
            self.ctrl_end = self
                .ctrl_end
                .min(u32::try_from(self.out.len()).unwrap_or(u32::MAX));
            self.outbox.sent(dropped);
        }
        self.outbox.seal(&mut self.out, discard);
        self.enqueue_own(frame::encode_close(code, reason));
        self.arm(self.env.close_timeout);
    }

    fn fail(&mut self, e: ProtocolError) {
        if !self.buckets.as_ref().is_some_and(|b| b.tripped) {
            METRICS.protocol_errors.inc();
        }
        tracing::debug!(conn = self.outbox.id, code = e.code.0, reason = %e.reason, "protocol error");
        self.send_close(e.code.0, &e.reason, false);
        self.flags.set(Flags::READ_DONE, true);
        // RFC 6455 §7.1.7: after failing the connection there is nothing to wait for.
        self.flags.set(Flags::CLOSE_RECEIVED, true);
    }

    fn on_event(&mut self, ev: Event, cx: &mut Context<'_>) {
        if self.flags.has(Flags::CLOSE_SENT) && !matches!(ev, Event::Close(..)) {
            // After our Close, data is discarded (§5.5.1) while we wait for the peer's Close.
            return;
        }
        match ev {
            Event::Message(m) if self.v1.is_some() => {
                METRICS.messages_received.inc();
                let v1 = self.v1.as_mut().expect("checked by the guard");
                let verdict = v1.on_message(m.text, m.payload(), &self.env.hub, &self.outbox, cx);
                if let v1::Verdict::Close(e) = verdict {
                    self.fail(e);
                }
            }
            Event::Message(m) => {
                METRICS.messages_received.inc();
                match self.route.on_message {
                    OnMessage::Drop => {}
                    OnMessage::Echo => {
                        let frame = match self.compression() {
                            Some(c) => c.frame(m.into_frame()),
                            None => m.into_frame(),
                        };
                        if frame[0] & frame::RSV1 != 0 {
                            METRICS.deflate_deliveries.inc();
                        }
                        self.enqueue_own(frame);
                    }
                    OnMessage::Broadcast => self.publish(m),
                    OnMessage::Forward => self.forward(m),
                }
            }
            Event::Ping(p) => self.enqueue_control(frame::encode(OpCode::Pong, &p)),
            Event::Pong => {}
            Event::Close(code, _reason) => {
                self.flags.set(Flags::CLOSE_RECEIVED, true);
                self.flags.set(Flags::READ_DONE, true);
                // Answer with the peer's code, or 1000 when it gave none.
                self.send_close(code.unwrap_or(1000), "", false);
            }
        }
    }

    /// Publishes a client's message to the route's group.
    fn publish(&mut self, m: frame::Message) {
        let Some(g) = &self.group else { return };
        let kind = if m.text { Kind::Text } else { Kind::Binary };
        // The message has room for its frame header in front: framing it for plain clients
        // costs no copy, and the payload is a view into the same bytes.
        let framed = m.into_frame();
        let header = frame::parse_header(&framed).map_or(0, |h| h.size);
        let payload = framed.slice(header..);
        let mut p = Publication::new(g.clone(), payload, kind).with_encoding(RAW.name(), framed);
        if !self.route.echo_to_sender {
            p = p.except(self.outbox.id);
        }
        // The broker keeps this session's publishes in call order; only a failure matters here.
        if let Some(Err(e)) = self.env.hub.publish(p).now() {
            tracing::warn!(conn = self.outbox.id, group = %g, error = %e, "a client's message was not published");
        }
    }

    /// Hands a client's message to the route's backend relay; the client hears at once when
    /// it cannot be taken (never a silent drop).
    fn forward(&mut self, m: frame::Message) {
        let Some(relay) = self.extras.as_ref().and_then(|x| x.relay.clone()) else {
            return;
        };
        let text = m.text;
        let framed = m.into_frame();
        let header = frame::parse_header(&framed).map_or(0, |h| h.size);
        if let Err(why) = relay.forward(text, framed.slice(header..)) {
            let body = serde_json::json!({"type": "error", "code": 429, "message": why});
            self.enqueue_own(frame::encode(OpCode::Text, body.to_string().as_bytes()));
        }
    }

    fn take_signals(&mut self, cx: &mut Context<'_>) {
        let sig = self.outbox.take(&mut self.out, cx.waker());
        if !self.out.is_empty() {
            METRICS.send_queue_frames.observe(self.out.len() as u64);
        }
        if sig.ping && !self.flags.has(Flags::CLOSE_SENT) {
            self.enqueue_control(Bytes::from_static(PING));
            self.flags.set(Flags::RELEASE, true);
        }
        if let Some(why) = sig.close.filter(|_| !self.flags.has(Flags::CLOSE_SENT)) {
            self.close_for(why);
        }
    }

    fn close_for(&mut self, why: CloseReason) {
        if !why.waits_for_peer() {
            self.flags.set(Flags::NO_WAIT, true);
            self.flags.set(Flags::READ_DONE, true);
        }
        tracing::debug!(conn = self.outbox.id, reason = ?why, "closing");
        self.send_close(why.code().0, why.text(), why.discards_queue());
    }

    /// Writes queued frames until the transport would block or nothing is left.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        let mut progressed = false;
        while !self.out.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, b) in self.out.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                n_iov += 1;
            }
            match self.io.poll_send(cx, &iov[..n_iov]) {
                Poll::Pending => return Ok(progressed),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(mut n)) => {
                    progressed = true;
                    self.outbox.sent(n);
                    METRICS.sent_bytes.add(n as u64);
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
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
        if self.out.capacity() > 1024 {
            self.out.shrink_to(64);
        }
        if self.flags.has(Flags::RELEASE) && self.out.is_empty() {
            // Idle: nothing queued either side. A busy connection is asked at most once per
            // ping interval, so the buffers it gets back cost one allocation per interval.
            self.flags.set(Flags::RELEASE, false);
            self.out = VecDeque::new();
            if self.decoder.as_ref().is_some_and(|d| d.is_idle()) {
                self.decoder = None;
            }
            if self.buckets.as_ref().is_some_and(|b| !b.tripped) {
                self.buckets = None;
            }
            self.outbox.release_idle();
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
        let fed = SCRATCH.with(|s| {
            let mut buf = s.borrow_mut();
            match self.io.poll_recv(cx, &mut buf) {
                Poll::Pending => Ok(None),
                Poll::Ready(Ok(0)) => Err(End::PeerGone),
                Poll::Ready(Ok(n)) => {
                    METRICS.received_bytes.add(n as u64);
                    self.outbox.beat.heard(self.env.heartbeat.now_ms());
                    if let Some(e) = self.over_bytes(n) {
                        return Ok(Some(Err(e)));
                    }
                    Ok(Some(
                        self.decoder().feed(&mut buf[..n], &mut |e| events.push(e)),
                    ))
                }
                Poll::Ready(Err(e)) => Err(End::Io(e.kind())),
            }
        })?;
        let Some(mut result) = fed else {
            return Ok(false);
        };
        if let Some((allowed, e)) = self.over_messages(&events) {
            // The messages past the limit are not acted on; the Close says why.
            events.truncate(allowed);
            result = Err(e);
        }
        for ev in events {
            self.on_event(ev, cx);
        }
        if let Err(e) = result {
            self.fail(e);
        }
        Ok(true)
    }

    /// Takes `n` read bytes from the bytes bucket; the Close when it runs dry.
    fn over_bytes(&mut self, n: usize) -> Option<ProtocolError> {
        let limit = self.route.inbound.as_ref()?;
        if limit.bytes_per_second == 0 || self.flags.has(Flags::CLOSE_SENT) {
            return None;
        }
        let b = buckets(&mut self.buckets, limit, self.route.max_message_bytes);
        b.refill(limit);
        b.bytes -= n as f64;
        (b.bytes < 0.0).then(|| {
            b.tripped = true;
            METRICS.inbound_rate_closes.inc();
            ProtocolError::new(
                CloseCode::POLICY_VIOLATION,
                format!(
                    "over {} bytes a second (websocket.max_bytes_per_second)",
                    limit.bytes_per_second
                ),
            )
        })
    }

    /// Takes the messages among `events` from the messages bucket; when it runs dry, how many
    /// events may still be handled and the Close.
    fn over_messages(&mut self, events: &[Event]) -> Option<(usize, ProtocolError)> {
        let limit = self.route.inbound.as_ref()?;
        if limit.messages_per_second == 0 || self.flags.has(Flags::CLOSE_SENT) {
            return None;
        }
        let b = buckets(&mut self.buckets, limit, self.route.max_message_bytes);
        let mut refilled = false;
        for (i, ev) in events.iter().enumerate() {
            if !matches!(ev, Event::Message(_)) {
                continue;
            }
            if !refilled {
                b.refill(limit);
                refilled = true;
            }
            b.messages -= 1.0;
            if b.messages < 0.0 {
                b.tripped = true;
                METRICS.inbound_rate_closes.inc();
                let e = ProtocolError::new(
                    CloseCode::POLICY_VIOLATION,
                    format!(
                        "over {} messages a second (websocket.max_messages_per_second)",
                        limit.messages_per_second
                    ),
                );
                return Some((i, e));
            }
        }
        None
    }

    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Some(mut first) = self.extras.as_mut().and_then(|x| x.pending.take()) {
            if self.extras.as_ref().is_some_and(|x| x.is_empty()) {
                self.extras = None;
            }
            let mut events = Vec::new();
            let r = self.decoder().feed(&mut first, &mut |e| events.push(e));
            for ev in events {
                self.on_event(ev, cx);
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
            if self.flags.has(Flags::CLOSE_SENT) && self.out.is_empty() {
                // Our Close is out; the peer's answer is waited for (bounded) if it is owed.
                return Poll::Ready(End::Closed);
            }
            // A v1 command waiting on the broker holds the next ones back (they keep order).
            let busy = match self.v1.as_mut() {
                Some(v1) if v1.is_busy() && !self.flags.has(Flags::CLOSE_SENT) => {
                    if let v1::Verdict::Close(e) = v1.poll_pending(&self.env.hub, &self.outbox, cx)
                    {
                        self.fail(e);
                    }
                    self.v1.as_ref().is_some_and(|v| v.is_busy())
                }
                _ => false,
            };
            let read = if self.flags.has(Flags::READ_DONE) || busy {
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
    fn poll_close_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READS_PER_POLL {
            if self.flags.has(Flags::CLOSE_RECEIVED) {
                return Poll::Ready(());
            }
            match self.poll_read(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(_) => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Our Close is due but the peer did not take it in time: give the connection up.
    fn give_up(&mut self) -> Phase {
        METRICS.close_timeouts.inc();
        tracing::debug!(
            conn = self.outbox.id,
            unsent = self.outbox.queued_bytes(),
            "close deadline passed before our Close went out; resetting the connection"
        );
        self.io.abort();
        Phase::Done
    }
}

impl<S: Transport> Future for Session<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let next = match this.phase {
                Phase::Open => match this.poll_open(cx) {
                    Poll::Ready(end) => this.after_open(end, cx),
                    Poll::Pending
                        if this.flags.has(Flags::CLOSE_SENT) && this.deadline_passed(cx) =>
                    {
                        this.give_up()
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Phase::CloseWait => {
                    if this.deadline_passed(cx) {
                        this.start_linger(cx)
                    } else {
                        match this.poll_close_wait(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(()) => this.start_linger(cx),
                        }
                    }
                }
                Phase::Linger => {
                    if this.deadline_passed(cx) {
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

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        if self
            .extras
            .as_ref()
            .is_some_and(|x| x.compression.is_some())
        {
            METRICS.deflate_connections.dec();
        }
        self.env.heartbeat.forget(&self.outbox);
        self.env.hub.unregister(self.outbox.id);
        if let Some(g) = &self.group {
            self.env.hub.leave(g, self.outbox.id);
        }
        if let Some(v1) = self.v1.as_mut() {
            v1.leave_all(&self.env.hub, self.outbox.id);
        }
        if let Some(x) = self.extras.take() {
            for g in &x.groups {
                self.env.hub.leave(g, self.outbox.id);
            }
            if let Some(relay) = &x.relay {
                relay.closed(x.code.unwrap_or(1006));
            }
        }
        METRICS.connections.dec();
        self.route.open.dec();
        self.env.slots.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::Memory;
    use crate::hub::Join;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// The session is the whole state of an idle connection's task: keeping it small is what
    /// keeps 19,000 idle sockets under 2 KB each (BENCHMARKS.md). Timers and drain buffers are
    /// boxed only while closing for this reason.
    #[test]
    fn an_idle_session_stays_small() {
        let size = std::mem::size_of::<Session>();
        assert!(size <= 152, "Session grew to {size} bytes");
    }

    /// What an idle connection's task allocation is: tokio's task cell (a 32-byte header, the
    /// scheduler handle and task id, the stage, a 48-byte trailer) rounded up to its 128-byte
    /// alignment. `Stage` mirrors tokio's, which is `#[repr(C)]` (a tag before the future, no
    /// niche). A session of 152 bytes or less makes a 256-byte task, one more byte a 384-byte
    /// one (BENCHMARKS.md, "What an idle connection holds").
    #[test]
    fn an_idle_sessions_task_fits_256_bytes() {
        #[allow(dead_code)]
        #[repr(C)]
        enum Stage<T> {
            Running(T),
            Finished(Result<(), (Option<Box<dyn std::any::Any + Send>>, std::num::NonZeroU64)>),
            Consumed,
        }
        let stage = std::mem::size_of::<Stage<Session>>();
        let cell = (32 + 16 + stage + 48).next_multiple_of(128);
        println!(
            "sizes: Session {} (Decoder {}, TcpStream {}), task stage {stage}, task cell {cell}, \
             Outbox {} (+16 Arc counts), outbox State {}, CloseReason {}",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Decoder>(),
            std::mem::size_of::<TcpStream>(),
            std::mem::size_of::<Outbox>(),
            super::super::outbox::STATE_SIZE,
            std::mem::size_of::<CloseReason>(),
        );
        assert!(
            cell <= 256,
            "an idle session's task is {cell} bytes (stage {stage})"
        );
    }

    fn env(close_timeout: Duration) -> Arc<Env> {
        Arc::new(Env {
            hub: Hub::new(Arc::new(Memory::default())),
            heartbeat: Heartbeat::new(Duration::from_secs(25), Duration::from_secs(10)),
            close_timeout,
            slots: Slots::new(10),
            partial: crate::ws::frame::PartialBudget::new(1 << 20),
        })
    }

    /// A session on one end of an in-memory pipe of `capacity` bytes; returns the other end.
    fn start(
        env: &Arc<Env>,
        on_message: OnMessage,
        group: Option<&str>,
        capacity: usize,
    ) -> (DuplexStream, Arc<Outbox>, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(capacity);
        let outbox = Arc::new(Outbox::new(1, 1 << 20, 0));
        env.heartbeat.register(&outbox);
        let group: Option<Arc<str>> = group.map(Arc::from);
        if let Some(g) = &group {
            env.hub.join(g, outbox.clone(), Join::plain(&RAW));
        }
        env.slots.take().unwrap().keep();
        let route = Arc::new(RouteCtx {
            on_message,
            echo_to_sender: true,
            max_message_bytes: 1024,
            open: Default::default(),
            inbound: None,
        });
        let s = Session::new(
            server,
            Bytes::new(),
            outbox.clone(),
            route,
            group,
            env.clone(),
            None,
        );
        (client, outbox, tokio::spawn(s))
    }

    async fn read_frame(c: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut buf = Vec::new();
        loop {
            if let Some(h) = frame::parse_header(&buf)
                && buf.len() >= h.size + h.len as usize
            {
                return (h.opcode_raw, buf[h.size..h.size + h.len as usize].to_vec());
            }
            let mut b = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .expect("a frame within 5 s")
                .unwrap();
            assert!(n > 0, "closed before a whole frame");
            buf.extend_from_slice(&b[..n]);
        }
    }

    #[tokio::test]
    async fn a_session_runs_over_an_in_memory_stream() {
        let env = env(Duration::from_secs(5));
        let (mut c, _, task) = start(&env, OnMessage::Echo, None, 4096);
        c.write_all(&frame::encode_masked(
            OpCode::Text,
            true,
            b"hello",
            [1, 2, 3, 4],
        ))
        .await
        .unwrap();
        assert_eq!(read_frame(&mut c).await, (1, b"hello".to_vec()));
        c.write_all(&frame::encode_masked(
            OpCode::Close,
            true,
            &1000u16.to_be_bytes(),
            [9, 9, 9, 9],
        ))
        .await
        .unwrap();
        assert_eq!(
            read_frame(&mut c).await,
            (8, 1000u16.to_be_bytes().to_vec())
        );
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the session ends after the closing handshake")
            .unwrap();
        assert_eq!(env.slots.open(), 0, "the slot came back");
    }

    #[tokio::test]
    async fn publications_reach_a_member_over_an_in_memory_stream() {
        let env = env(Duration::from_secs(5));
        let (mut c, _, _task) = start(&env, OnMessage::Broadcast, Some("g"), 4096);
        let p = Publication::new("g", Bytes::from_static(b"news"), Kind::Text);
        let r = env.hub.publish(p).now().unwrap().unwrap();
        assert_eq!(r.local_recipients, 1);
        assert_eq!(read_frame(&mut c).await, (1, b"news".to_vec()));
        // A client message on a broadcast route goes through the hub and back to the sender.
        c.write_all(&frame::encode_masked(
            OpCode::Text,
            true,
            b"mine",
            [5, 6, 7, 8],
        ))
        .await
        .unwrap();
        assert_eq!(read_frame(&mut c).await, (1, b"mine".to_vec()));
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_is_dropped_at_the_close_deadline() {
        let env = env(Duration::from_millis(300));
        // 1 KiB of pipe and a client that never reads: our Close cannot go out.
        let (c, outbox, task) = start(&env, OnMessage::Drop, Some("g"), 1024);
        for _ in 0..8 {
            let p = Publication::new("g", Bytes::from(vec![b'x'; 1000]), Kind::Text);
            drop(env.hub.publish(p));
        }
        let due = tokio::time::Instant::now();
        outbox.request_close(CloseReason::Shutdown);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the session gives up at the close deadline")
            .unwrap();
        let took = due.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "ended {took:?} after the close was due"
        );
        assert_eq!(env.slots.open(), 0, "the slot came back");
        assert_eq!(env.hub.member_count("g"), 0, "it left its group");
        drop(c);
    }
}
