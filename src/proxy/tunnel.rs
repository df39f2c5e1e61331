//! The WebSocket tunnel between a client and an upstream after a proxied 101.
//!
//! It is frame-aware but copies payloads straight through: it parses each frame header as it
//! passes and relays every byte (header, mask, payload, RSV bits) unchanged, so fragmentation and
//! extensions are never altered. Knowing where frames start lets it do three things a byte pump
//! cannot:
//!
//! - keep idle tunnels alive: a side silent for `proxy.ping_interval` gets a Ping from wsgate
//!   (masked toward the upstream, unmasked toward the client, inserted only between frames)
//!   carrying an 8-byte token, and the matching Pong is swallowed, so neither end ever sees a
//!   Pong it did not ask for;
//! - close properly: upstream lost -> the client gets Close 1014 with a reason; client lost ->
//!   the upstream gets Close 1001 (masked); shutdown, `idle_timeout`, `max_lifetime` -> both get
//!   1001;
//! - never lose bytes: whatever was read from one side is written to the other before its write
//!   half is shut.
//!
//! A tunnel is a hand-written future ([`Tunnel`]) rather than an `async fn`, for the same reason
//! as [`crate::ws::session::Session`]: an idle tunnel is nothing but this struct, so every field
//! counts thousands of times. It holds no buffer while idle: reads land in a per-thread scratch
//! buffer, a pending buffer exists only while the destination is not accepting bytes, and a timer
//! is boxed only while one is armed (closing, or the opt-in `idle_timeout`/`max_lifetime`). Pings
//! come from one timing wheel ([`crate::ws::Heartbeat`]) for all tunnels, not a timer per tunnel;
//! a tunnel's place in it is its [`TunnelEntry`].
//!
//! The tunnel runs on any [`Transport`] on either side; when both are plain TCP and io_uring is
//! available, [`super::uring`] drives the same logic instead.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::lifecycle::Shutdown;
use crate::transport::Transport;
use crate::ws::close::{CloseCode, CloseReason};
use crate::ws::frame::{self, OpCode};
use crate::ws::heartbeat::{Beat, Entry, Heartbeat};

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(64 * 1024 + 64));
}

/// Reads handled per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// Length of the Ping payload wsgate uses to recognise its own Pongs.
const TOKEN_LEN: usize = 8;

/// Longest frame header: 2 + 8 (length) + 4 (mask).
const MAX_HDR: usize = 14;

/// A place among `server.max_connections` tunnels, given back when dropped.
#[derive(Debug)]
pub struct TunnelSlot {
    _slot: crate::lifecycle::Slot,
    /// Whatever the listener wants held while the tunnel lives (the client address's place
    /// under `server.max_connections_per_ip`).
    _held: Option<Hold>,
    /// Whether the tunnel opened (and so counts in the tunnel gauge).
    opened: bool,
}

/// Something a listener hands the proxy to keep for as long as a tunnel it opens lives: the
/// client address's place among its open connections, given back when the tunnel ends rather
/// than when the HTTP connection that asked for it does. Travels in the request's extensions.
#[derive(Clone)]
pub struct Hold(pub Arc<dyn Send + Sync>);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

impl TunnelSlot {
    pub(super) fn new(slot: crate::lifecycle::Slot, held: Option<Hold>) -> Self {
        TunnelSlot {
            _slot: slot,
            _held: held,
            opened: false,
        }
    }

    pub(super) fn open(&mut self) {
        self.opened = true;
        crate::metrics::METRICS.proxy_tunnels.inc();
        crate::metrics::METRICS.proxy_tunnels_total.inc();
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        if self.opened {
            crate::metrics::METRICS.proxy_tunnels.dec();
        }
    }
}

/// What a tunnel holds for its whole life and gives back when it ends: its place among the
/// tunnels and the upstream server's in-flight count. Kept inline (not boxed), so a tunnel
/// handed to an engine leaves no small allocation behind on the tokio worker, where it would
/// pin the pages of the handshake's freed task memory.
#[derive(Debug)]
pub struct Guard {
    pub(super) _slot: TunnelSlot,
    pub(super) _active: super::balance::Active,
}

/// Per-tunnel settings.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub close_timeout: Duration,
    /// `proxy.uring_buffers`: receive buffers per io_uring engine (a power of two).
    pub uring_buffers: u16,
    /// `proxy.tunnel_buffer_bytes`: unsent bytes per direction before an io_uring tunnel
    /// stops reading its source.
    pub high_water: usize,
}

/// What every tunnel shares, whichever engine drives it.
#[derive(Debug)]
pub struct Env {
    /// The heartbeat wheel of tunnels: pings and the registry shutdown walks.
    pub heartbeat: Arc<Heartbeat<TunnelEntry>>,
    pub settings: TunnelSettings,
    pub shutdown: Shutdown,
    /// Shutdown's tunnel grace is over: every tunnel, however late it enrolls, closes now.
    pub closing: std::sync::atomic::AtomicBool,
}

impl Env {
    pub fn new(
        heartbeat: Arc<Heartbeat<TunnelEntry>>,
        settings: TunnelSettings,
        shutdown: Shutdown,
    ) -> Self {
        Env {
            heartbeat,
            settings,
            shutdown,
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Ends shutdown's grace for tunnels: every tunnel gets Close 1001 on both sides, and so
    /// does any that enrolls from now on.
    pub fn close_all(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.heartbeat.connections() {
            t.request_close(CloseReason::Shutdown);
        }
    }
}

/// A tunnel's one place in the heartbeat wheel, for both of its sides: its beat's `last_rx` is
/// the quieter side's, so the wheel asks for a Ping when either side is due, and the tunnel pings
/// only the side(s) that are (see [`TunnelEntry::heard`]). Shutdown reaches it too.
#[derive(Debug)]
pub struct TunnelEntry {
    beat: Beat,
    signals: Mutex<Signals>,
}

/// What the wheel and shutdown asked of a tunnel since it last looked.
#[derive(Debug, Default)]
pub(super) struct Signals {
    pub(super) ping: bool,
    pub(super) close: Option<CloseReason>,
    waker: Option<Waker>,
}

impl TunnelEntry {
    fn new(now_ms: u64) -> Self {
        TunnelEntry {
            beat: Beat::new(now_ms),
            signals: Mutex::new(Signals::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Signals> {
        // Plain flags set in single steps: a poisoned lock is still consistent.
        self.signals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the pending Ping request and the close request (which stays set), and registers
    /// `waker` for the next signal.
    pub(super) fn take(&self, waker: &Waker) -> Signals {
        let mut s = self.lock();
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
        Signals {
            ping: std::mem::take(&mut s.ping),
            close: s.close.clone(),
            waker: None,
        }
    }

    fn signal(&self, f: impl FnOnce(&mut Signals)) {
        let waker = {
            let mut s = self.lock();
            f(&mut s);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Records what the tunnel heard: `last_rx` is when the quieter of its two sides last sent
    /// anything, and `answered` says that no Ping the tunnel sent is still unanswered. The
    /// tunnel pings only the side that is due, so the other side may have stayed quiet since the
    /// wheel's Ping request; `answered` settles that request anyway, or the wheel would take the
    /// unpinged side's silence for a pong timeout.
    pub(super) fn heard(&self, last_rx: u64, answered: bool) {
        self.beat.heard(last_rx);
        // A request raised while the tunnel is mid-poll may be cleared before the tunnel sees
        // it. The tunnel still sends that Ping, and the wheel, finding the side silent on its
        // next visit, raises a new request: the pong timeout comes one visit late, no Ping is
        // lost and no live tunnel is closed.
        if answered {
            self.beat.settle();
        }
    }
}

impl Entry for TunnelEntry {
    fn beat(&self) -> &Beat {
        &self.beat
    }

    fn request_ping(&self) {
        self.signal(|s| s.ping = true);
    }

    fn request_close(&self, why: CloseReason) {
        self.signal(|s| {
            s.close.get_or_insert(why);
        });
    }

    fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }
}

/// One direction of the tunnel: what is known about the frame passing through it. Small
/// integers and flat arrays instead of `usize`s and `Option`s: two of these are most of an idle
/// tunnel.
#[derive(Debug)]
pub(super) struct Dir {
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Heartbeat time (ms) this direction's source last sent anything.
    pub(super) heard: u64,
    /// Output not yet accepted by the destination (only while it pushes back).
    pub(super) pending: Vec<u8>,
    pending_off: u32,
    /// The payload of the Pings wsgate sends to this direction's source: a Pong from the source
    /// carrying it answers one of them and is swallowed.
    pub(super) token: [u8; TOKEN_LEN],
    /// Header bytes of the current frame seen so far.
    hdr: [u8; MAX_HDR],
    /// While a frame passes, its header size.
    hdr_len: u8,
    /// A Pong that may be ours is being held back until complete (its header is in `hdr`;
    /// `TOKEN_LEN - remaining` of its payload is in `hold_buf`).
    holding: bool,
    /// The held Pong's payload as it came (still masked if it was).
    hold_buf: [u8; TOKEN_LEN],
    /// The held Pong's mask (only a masked source's Pong is held, so `masked` says if it is set).
    hold_mask: [u8; 4],
    /// Frames from this source are masked (client to upstream).
    masked: bool,
    /// The source reached EOF (or failed).
    pub(super) src_done: bool,
    /// The destination's write half was shut.
    pub(super) dst_shut: bool,
    /// A Close frame from the source passed through.
    close_passed: bool,
    /// A Ping to the destination is wanted at the next frame boundary.
    want_ping: bool,
    /// The source was sent a Ping (in the opposite direction) and has sent nothing since.
    pub(super) pinged: bool,
}

impl Dir {
    pub(super) fn new(masked: bool, now_ms: u64) -> Self {
        Dir {
            remaining: 0,
            heard: now_ms,
            pending: Vec::new(),
            pending_off: 0,
            token: token(),
            hdr: [0; MAX_HDR],
            hdr_len: 0,
            holding: false,
            hold_buf: [0; TOKEN_LEN],
            hold_mask: [0; 4],
            masked,
            src_done: false,
            dst_shut: false,
            close_passed: false,
            want_ping: false,
            pinged: false,
        }
    }

    /// Between two frames: a frame of our own may go to the destination now.
    pub(super) fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0 && !self.holding
    }

    /// Passes `data` through, appending what the destination should get to `out`. Pongs that
    /// carry `self.token` are dropped.
    pub(super) fn process(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                if self.holding {
                    let f = TOKEN_LEN - self.remaining as usize;
                    self.hold_buf[f..f + n].copy_from_slice(&data[..n]);
                } else {
                    out.extend_from_slice(&data[..n]);
                }
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.end_frame(out);
                }
                continue;
            }
            let old = usize::from(self.hdr_len);
            let take = (MAX_HDR - old).min(data.len());
            self.hdr[old..old + take].copy_from_slice(&data[..take]);
            let seen = old + take;
            let Some(h) = frame::parse_header(&self.hdr[..seen]) else {
                self.hdr_len = seen as u8;
                data = &data[take..];
                continue;
            };
            // Only the header's own bytes were consumed; the rest goes back to `data`.
            data = &data[h.size - old..];
            self.hdr_len = h.size as u8;
            if h.opcode_raw == OpCode::Close as u8 {
                self.close_passed = true;
            }
            let maybe_ours = h.opcode_raw == OpCode::Pong as u8
                && h.fin
                && h.len == TOKEN_LEN as u64
                && h.mask.is_some() == self.masked;
            if maybe_ours {
                self.holding = true;
                self.hold_mask = h.mask.unwrap_or_default();
            } else {
                out.extend_from_slice(&self.hdr[..h.size]);
            }
            self.remaining = h.len;
            if h.len == 0 {
                self.end_frame(out);
            }
        }
    }

    fn end_frame(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.holding) {
            let mut plain = self.hold_buf;
            if self.masked {
                frame::apply_mask(&mut plain, self.hold_mask, 0);
            }
            if plain == self.token {
                crate::metrics::METRICS.proxy_pongs_swallowed.inc();
            } else {
                out.extend_from_slice(&self.hdr[..usize::from(self.hdr_len)]);
                out.extend_from_slice(&self.hold_buf);
            }
        }
        self.hdr_len = 0;
    }

    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// wsgate's Ping to this direction's destination, carrying `token` (the opposite
    /// direction's, whose source is that destination): masked when it goes to the upstream.
    fn queue_ping(&mut self, token: &[u8; TOKEN_LEN]) {
        if self.masked {
            let mask = [token[0], token[3], token[5], token[7]];
            self.queue(&frame::encode_masked(OpCode::Ping, true, token, mask));
        } else {
            self.queue(&frame::encode(OpCode::Ping, token));
        }
    }

    /// Queues the Ping the wheel asked for once this direction is between frames.
    pub(super) fn ping_if_wanted(&mut self, token: &[u8; TOKEN_LEN], discard: bool) {
        if self.want_ping && self.at_boundary() && !self.dst_shut && !discard {
            self.want_ping = false;
            self.queue_ping(token);
        }
    }

    /// Passes bytes read from the source into `pending`, for the destination.
    pub(super) fn take_in(&mut self, data: &[u8]) {
        let mut out = std::mem::take(&mut self.pending);
        self.process(data, &mut out);
        self.pending = out;
    }
}

/// Which side of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

/// Why the tunnel is ending, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed (normally, or after our Close frames).
    Closed,
    /// A close deadline passed.
    CloseTimeout,
}

/// Writes as much of `buf` as the transport takes now; returns the count, or an error.
fn write_now<T: Transport>(io: &mut T, cx: &mut Context<'_>, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match Pin::new(&mut *io).poll_write(cx, &buf[done..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => done += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(done)
}

/// What a pump round found.
#[derive(Debug, Default)]
struct Pumped {
    /// The source ended (EOF or error).
    src_ended: bool,
    /// Writing to the destination failed.
    dst_failed: bool,
    /// Bytes were forwarded (for `idle_timeout`; wsgate's own Pings and the Pongs it swallows do
    /// not count, or pings would keep every tunnel busy).
    active: bool,
}

/// The result of one read-and-forward step.
enum Step {
    Blocked,
    SrcEnded,
    DstFailed,
    /// Bytes were read; `true` when some were forwarded.
    Moved(bool),
}

/// Moves bytes from `src` to `dst` until one of them would block. `ping` is the token for a
/// Ping to `dst`; reads are dated with heartbeat time `now_ms`.
#[allow(clippy::too_many_arguments)]
fn pump<S: Transport, D: Transport>(
    src: &mut S,
    dst: &mut D,
    d: &mut Dir,
    ping: &[u8; TOKEN_LEN],
    now_ms: u64,
    discard: bool,
    cx: &mut Context<'_>,
) -> Pumped {
    let mut res = Pumped::default();
    for _ in 0..READS_PER_POLL {
        d.ping_if_wanted(ping, discard);
        while (d.pending_off as usize) < d.pending.len() {
            match write_now(dst, cx, &d.pending[d.pending_off as usize..]) {
                Ok(0) => return res,
                Ok(n) => d.pending_off += n as u32,
                Err(_) => {
                    res.dst_failed = true;
                    return res;
                }
            }
        }
        if !d.pending.is_empty() {
            // Drop the buffer: an idle tunnel keeps none.
            d.pending = Vec::new();
            d.pending_off = 0;
        }
        if d.src_done {
            return res;
        }
        let outcome = SCRATCH.with(|s| {
            OUT.with(|o| {
                let mut scratch = s.borrow_mut();
                let mut out = o.borrow_mut();
                out.clear();
                let n = match src.poll_recv(cx, &mut scratch[..]) {
                    Poll::Pending => return Step::Blocked,
                    Poll::Ready(Err(_)) => 0,
                    Poll::Ready(Ok(n)) => n,
                };
                if n == 0 {
                    return Step::SrcEnded;
                }
                // Any byte answers a Ping, as it does for the hub's own connections.
                d.heard = now_ms;
                d.pinged = false;
                if discard {
                    return Step::Moved(false);
                }
                d.process(&scratch[..n], &mut out);
                if out.is_empty() {
                    return Step::Moved(false);
                }
                match write_now(dst, cx, &out) {
                    Ok(w) => {
                        if w < out.len() {
                            // A pending buffer never grows past one read's output (it is
                            // written out before the next read), so u32 offsets suffice.
                            d.pending.extend_from_slice(&out[w..]);
                        }
                        Step::Moved(true)
                    }
                    Err(_) => Step::DstFailed,
                }
            })
        });
        match outcome {
            Step::Blocked => return res,
            Step::SrcEnded => {
                d.src_done = true;
                res.src_ended = true;
                return res;
            }
            Step::DstFailed => {
                res.dst_failed = true;
                return res;
            }
            Step::Moved(forwarded) => res.active |= forwarded,
        }
    }
    // Read budget used up: let other tasks run, then continue.
    cx.waker().wake_by_ref();
    res
}

/// The opt-in limits' clocks, boxed so that tunnels without `idle_timeout`/`max_lifetime` (the
/// default) carry neither.
#[derive(Debug)]
pub(super) struct Limits {
    started: Instant,
    pub(super) last_data: Instant,
}

impl Limits {
    /// The clocks, when `idle_timeout` or `max_lifetime` is set.
    pub(super) fn for_settings(settings: &TunnelSettings) -> Option<Box<Limits>> {
        (!settings.idle_timeout.is_zero() || !settings.max_lifetime.is_zero()).then(|| {
            let now = Instant::now();
            Box::new(Limits {
                started: now,
                last_data: now,
            })
        })
    }

    /// When the nearer limit runs out.
    fn deadline(&self, settings: &TunnelSettings) -> Option<Instant> {
        let mut at = None::<Instant>;
        if !settings.max_lifetime.is_zero() {
            at = Some(self.started + settings.max_lifetime);
        }
        if !settings.idle_timeout.is_zero() {
            let i = self.last_data + settings.idle_timeout;
            at = Some(at.map_or(i, |x| x.min(i)));
        }
        at
    }
}

/// What the wheel (a Ping due, a pong timeout), shutdown and the opt-in limits ask of a tunnel
/// now. Pings due are marked on the directions; `Some((code, reason))` means both sides get a
/// Close (see [`queue_closes`]) and the tunnel then discards what it reads.
pub(super) fn requested_close(
    sig: &Signals,
    limits: Option<&Limits>,
    env: &Env,
    c2u: &mut Dir,
    u2c: &mut Dir,
    discard: bool,
) -> Option<(u16, &'static str)> {
    let (settings, hb) = (&env.settings, &env.heartbeat);
    if sig.ping {
        ping_due(hb.now_ms(), hb.interval_ms(), c2u, u2c);
    }
    if discard {
        return None;
    }
    let mut close = sig.close.as_ref().map(|why| match why {
        CloseReason::Shutdown => (1001, "wsgate is shutting down"),
        CloseReason::PongTimeout if silent_side(c2u, u2c) == Side::Client => {
            (1001, "client stopped answering pings")
        }
        CloseReason::PongTimeout => (1014, "upstream stopped answering pings"),
        // A tunnel has no queue of its own to overflow; a slow side only slows its source.
        CloseReason::SlowConsumer => (1013, "slow consumer"),
        CloseReason::Disconnected { .. } => (1001, "closed by the server"),
    });
    if let Some(l) = limits {
        let t = Instant::now();
        if !settings.max_lifetime.is_zero() && t >= l.started + settings.max_lifetime {
            close = Some((1001, "tunnel reached proxy.max_lifetime"));
        } else if !settings.idle_timeout.is_zero() && t >= l.last_data + settings.idle_timeout {
            close = Some((1001, "tunnel idle for proxy.idle_timeout"));
        }
    }
    close
}

/// Tells the wheel what the tunnel heard: when the quieter side last sent anything, and whether
/// every Ping the tunnel sent is answered (see [`TunnelEntry::heard`]).
pub(super) fn report_heard(beat: &TunnelEntry, c2u: &Dir, u2c: &Dir) {
    beat.heard(c2u.heard.min(u2c.heard), !c2u.pinged && !u2c.pinged);
}

/// Queues a Close toward each side that can take one now; a side that already got its peer's
/// Close must not get a second one.
pub(super) fn queue_closes(code: u16, reason: &str, c2u: &mut Dir, u2c: &mut Dir) {
    if u2c.at_boundary() && !u2c.dst_shut && !u2c.close_passed {
        u2c.queue(&frame::encode_close(code, reason));
    }
    if c2u.at_boundary() && !c2u.dst_shut && !c2u.close_passed {
        c2u.queue(&masked_close(
            if code == 1014 { 1001 } else { code },
            reason,
        ));
    }
}

/// How a side was lost: its read ended without a Close frame, or writing to it failed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Lost {
    pub(super) client: bool,
    pub(super) upstream: bool,
    /// Writing to the client failed (so it gets no Close either).
    pub(super) to_client_failed: bool,
    /// Writing to the upstream failed.
    pub(super) to_upstream_failed: bool,
}

impl Lost {
    /// From what the two directions saw: `c_*` of client-to-upstream, `u_*` of the other.
    pub(super) fn from_ends(
        c_src_ended: bool,
        c_dst_failed: bool,
        u_src_ended: bool,
        u_dst_failed: bool,
        c2u: &Dir,
        u2c: &Dir,
    ) -> Lost {
        Lost {
            client: (c_src_ended && !c2u.close_passed) || u_dst_failed,
            upstream: (u_src_ended && !u2c.close_passed) || c_dst_failed,
            to_client_failed: u_dst_failed,
            to_upstream_failed: c_dst_failed,
        }
    }

    pub(super) fn any(&self) -> bool {
        self.client || self.upstream
    }

    /// The survivor learns why: upstream lost -> the client gets 1014; client lost -> the
    /// upstream gets 1001. The lost side's direction is over; the caller then discards input.
    pub(super) fn tell(&self, c2u: &mut Dir, u2c: &mut Dir) {
        if self.upstream
            && !self.to_client_failed
            && !u2c.dst_shut
            && !u2c.close_passed
            && u2c.at_boundary()
        {
            u2c.queue(&frame::encode_close(
                CloseCode::BAD_GATEWAY.0,
                "upstream closed the connection without a close frame",
            ));
        }
        if self.client
            && !self.to_upstream_failed
            && !c2u.dst_shut
            && !c2u.close_passed
            && c2u.at_boundary()
        {
            c2u.queue(&masked_close(1001, "client went away"));
        }
        if self.upstream {
            u2c.src_done = true;
        }
        if self.client {
            c2u.src_done = true;
        }
    }
}

/// A running tunnel: a future that ends once both sides are closed (or a close deadline
/// passed). Dropping it closes both sockets and leaves the heartbeat wheel.
#[derive(Debug)]
#[must_use = "a tunnel relays nothing unless it is awaited or spawned"]
pub struct Tunnel<C = TcpStream, U = TcpStream> {
    client: C,
    upstream: U,
    env: Arc<Env>,
    /// The tunnel's one place in the heartbeat wheel, for both sides.
    beat: Arc<TunnelEntry>,
    /// Client to upstream: its frames are masked.
    c2u: Dir,
    /// Upstream to client.
    u2c: Dir,
    limits: Option<Box<Limits>>,
    /// The one armed deadline, if any: the close deadline once closing, else the nearest limit.
    timer: Option<Pin<Box<Sleep>>>,
    /// The tunnel is being closed by wsgate: further input is read and dropped.
    discard: bool,
    /// A side ended or wsgate is closing: `timer` holds the close deadline.
    closing: bool,
}

/// A new tunnel's place in the heartbeat wheel, which is also the registry shutdown walks.
/// `late` says that shutdown had already begun when the tunnel's 101 went out (see
/// [`late_for_shutdown`]): such a tunnel gets no grace and is asked to close at once, as is
/// every tunnel enrolling after the grace ended ([`Env::close_all`]). A tunnel whose 101 went
/// out before shutdown began gets the grace however long its hand-over to an engine takes.
pub(super) fn enroll(env: &Env, late: bool) -> Arc<TunnelEntry> {
    let hb = &env.heartbeat;
    let beat = Arc::new(TunnelEntry::new(hb.now_ms()));
    hb.register(&beat);
    // After registering: a `close_all` that walked the wheel before this tunnel was in it set
    // `closing` first.
    if late || env.closing.load(std::sync::atomic::Ordering::SeqCst) {
        beat.request_close(CloseReason::Shutdown);
    }
    beat
}

/// Whether shutdown had begun by now, right after a tunnel's 101 went out.
pub(super) fn late_for_shutdown(env: &Env) -> bool {
    env.shutdown.is_begun()
}

/// Starts a tunnel between `client` and `upstream`; `client_leftover`/`upstream_leftover` are
/// bytes that already arrived from each side with the handshake (both sockets with TCP_NODELAY
/// set). Await the result, or spawn it.
pub fn run<C: Transport, U: Transport>(
    client: C,
    client_leftover: Bytes,
    upstream: U,
    upstream_leftover: Bytes,
    env: &Arc<Env>,
) -> Tunnel<C, U> {
    let beat = enroll(env, late_for_shutdown(env));
    let now = env.heartbeat.now_ms();
    // The leftovers go through the frame parser now, straight into the pending output, so the
    // tunnel keeps neither them nor a slot for them.
    let mut c2u = Dir::new(true, now);
    let mut u2c = Dir::new(false, now);
    let mut pre = Vec::new();
    c2u.process(&client_leftover, &mut pre);
    c2u.pending = pre;
    let mut pre = Vec::new();
    u2c.process(&upstream_leftover, &mut pre);
    u2c.pending = pre;
    let limits = Limits::for_settings(&env.settings);
    Tunnel {
        client,
        upstream,
        env: env.clone(),
        beat,
        c2u,
        u2c,
        limits,
        timer: None,
        discard: false,
        closing: false,
    }
}

impl<C: Transport, U: Transport> Future for Tunnel<C, U> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let end = std::task::ready!(this.poll_relay(cx));
        tracing::debug!(?end, "tunnel closed");
        if end == End::CloseTimeout {
            // Whatever is still unsent will not be taken: drop it now rather than let the
            // kernel retry it for minutes.
            this.client.abort();
            this.upstream.abort();
        }
        Poll::Ready(())
    }
}

impl<C: Transport, U: Transport> Tunnel<C, U> {
    /// Handles the wheel's signals and the limits, pumps both directions, and decides when the
    /// tunnel is over.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let Tunnel {
            client,
            upstream,
            env,
            beat,
            c2u,
            u2c,
            limits,
            timer,
            discard,
            closing,
        } = self;
        let settings = &env.settings;
        let now_ms = env.heartbeat.now_ms();
        let sig = beat.take(cx.waker());
        let asked = requested_close(&sig, limits.as_deref(), env, c2u, u2c, *discard);
        if let Some((code, reason)) = asked {
            queue_closes(code, reason, c2u, u2c);
            *discard = true;
        }

        let ping_u = u2c.token;
        let c = pump(client, upstream, c2u, &ping_u, now_ms, *discard, cx);
        let ping_c = c2u.token;
        let u = pump(upstream, client, u2c, &ping_c, now_ms, *discard, cx);
        report_heard(beat, c2u, u2c);
        if (c.active || u.active)
            && let Some(l) = limits.as_deref_mut()
        {
            l.last_data = Instant::now();
        }
        let lost = Lost::from_ends(
            c.src_ended,
            c.dst_failed,
            u.src_ended,
            u.dst_failed,
            c2u,
            u2c,
        );
        if !*discard && lost.any() {
            lost.tell(c2u, u2c);
            *discard = true;
            cx.waker().wake_by_ref();
        }
        // Both ways finished and flushed: dropping the sockets sends each side its FIN, so a
        // shutdown first would only cost a syscall per socket (one per proxied handshake).
        if c2u.src_done && u2c.src_done && c2u.pending.is_empty() && u2c.pending.is_empty() {
            return Poll::Ready(End::Closed);
        }
        // Once a direction's source is done and its output flushed, pass the EOF on: the other
        // direction may still be carrying data, so this is a half-close.
        if c2u.src_done && c2u.pending.is_empty() && !c2u.dst_shut {
            let _ = Pin::new(&mut *upstream).poll_shutdown(cx);
            c2u.dst_shut = true;
        }
        if u2c.src_done && u2c.pending.is_empty() && !u2c.dst_shut {
            let _ = Pin::new(&mut *client).poll_shutdown(cx);
            u2c.dst_shut = true;
        }
        if c2u.src_done && u2c.src_done && c2u.dst_shut && u2c.dst_shut {
            return Poll::Ready(End::Closed);
        }
        if (c2u.src_done || u2c.src_done || *discard) && !*closing {
            *closing = true;
            let at = Instant::now() + settings.close_timeout;
            match timer {
                Some(t) => t.as_mut().reset(at),
                None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        if *closing {
            let t = timer.as_mut().expect("armed when closing began");
            if Instant::now() >= t.deadline() {
                return Poll::Ready(End::CloseTimeout);
            }
            if t.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        } else if let Some(at) = limits.as_deref().and_then(|l| l.deadline(settings)) {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if t.deadline() != at {
                t.as_mut().reset(at);
            }
            if t.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

/// The wheel asked for a Ping: each side silent for `interval_ms` and not already waiting for
/// an answer gets one. The Ping to a side travels in the direction toward it, and the answer
/// comes back in the direction from it (whose `heard`/`pinged` describe that side).
fn ping_due(now_ms: u64, interval_ms: u64, c2u: &mut Dir, u2c: &mut Dir) {
    if !c2u.pinged && now_ms >= c2u.heard + interval_ms {
        c2u.pinged = true;
        u2c.want_ping = true;
    }
    if !u2c.pinged && now_ms >= u2c.heard + interval_ms {
        u2c.pinged = true;
        c2u.want_ping = true;
    }
}

/// The side a pong timeout is about: the one still owing an answer (the upstream first, so the
/// client learns that its upstream is gone), else the one silent longer.
fn silent_side(c2u: &Dir, u2c: &Dir) -> Side {
    if u2c.pinged || (!c2u.pinged && u2c.heard < c2u.heard) {
        Side::Upstream
    } else {
        Side::Client
    }
}

/// A masked Close frame toward the upstream.
fn masked_close(code: u16, reason: &str) -> Vec<u8> {
    let unmasked = frame::encode_close(code, reason);
    let h = frame::parse_header(&unmasked).expect("we just encoded it");
    let t = token();
    frame::encode_masked(
        OpCode::Close,
        true,
        &unmasked[h.size..],
        [t[0], t[1], t[2], t[3]],
    )
}

/// A fresh 8-byte token (also used for masks): unpredictable enough that no peer payload
/// matches it by accident.
fn token() -> [u8; TOKEN_LEN] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish().to_ne_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = *b"wsgate!!";

    /// Frames as one side sends them, `(opcode, fin, payload)` each: masked like a client's
    /// (a different mask per frame, so a mask mix-up shows) or unmasked like a server's.
    fn frames(masked: bool, list: &[(OpCode, bool, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &(op, fin, payload)) in list.iter().enumerate() {
            if masked {
                let m = i as u8 + 1;
                out.extend(frame::encode_masked(op, fin, payload, [m, m ^ 0x5a, 3, m]));
            } else {
                let mut f = frame::encode(op, payload).to_vec();
                if !fin {
                    f[0] &= 0x7f;
                }
                out.extend(f);
            }
        }
        out
    }

    /// Feeds `input` to a direction in reads of `chunk` bytes; returns what it passes on.
    fn run_dir(masked: bool, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut d = Dir::new(masked, 0);
        d.token = TOKEN;
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            d.process(c, &mut out);
        }
        assert!(d.at_boundary());
        out
    }

    #[test]
    fn frames_pass_unchanged_whatever_the_read_sizes() {
        let big = [1u8; 70_000];
        for masked in [true, false] {
            let input = frames(
                masked,
                &[
                    (OpCode::Text, false, b"hel"),
                    (OpCode::Ping, true, b"app ping"),
                    (OpCode::Continuation, true, &[7u8; 300]),
                    (OpCode::Pong, true, b"notours!"),
                    (OpCode::Binary, true, &big),
                ],
            );
            for chunk in [1, 2, 3, 7, 64, 1000, 100_000] {
                let out = run_dir(masked, &input, chunk);
                assert_eq!(out, input, "masked {masked}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn our_pong_is_swallowed_and_everything_around_it_kept() {
        for masked in [true, false] {
            let a = frames(masked, &[(OpCode::Text, true, b"a")]);
            let pong = frames(masked, &[(OpCode::Pong, true, &TOKEN)]);
            let b = frames(masked, &[(OpCode::Text, true, b"b")]);
            let input = [&a[..], &pong, &b].concat();
            let expected = [a, b].concat();
            for chunk in [1, 3, 100] {
                let out = run_dir(masked, &input, chunk);
                assert_eq!(out, expected, "masked {masked}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_pong_that_is_not_ours_passes_whole() {
        // Right length but wrong token, wrong length, unfinished, or masked the wrong way.
        let mut other = TOKEN;
        other[7] ^= 1;
        let cases: [(bool, Vec<u8>); 4] = [
            (false, frames(false, &[(OpCode::Pong, true, &other)])),
            (false, frames(false, &[(OpCode::Pong, true, b"wsgate!")])),
            (false, frames(false, &[(OpCode::Pong, false, &TOKEN)])),
            (false, frames(true, &[(OpCode::Pong, true, &TOKEN)])),
        ];
        for (masked, input) in cases {
            for chunk in [1, 5, 100] {
                let out = run_dir(masked, &input, chunk);
                assert_eq!(out, input, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn rsv_bits_and_unknown_opcodes_pass_untouched() {
        let mut f = frames(false, &[(OpCode::Text, true, b"compressed?")]);
        f[0] |= 0x40; // RSV1, as permessage-deflate sets it
        let mut odd = frames(false, &[(OpCode::Binary, true, b"x")]);
        odd[0] = (odd[0] & 0xf0) | 0x3; // reserved opcode 3
        f.extend(odd);
        let out = run_dir(false, &f, 4);
        assert_eq!(out, f);
    }

    #[test]
    fn only_a_side_silent_for_the_interval_is_pinged_and_only_once() {
        let (mut c2u, mut u2c) = (Dir::new(true, 1_000), Dir::new(false, 20_000));
        // The wheel asks because the client is due; the upstream spoke 5 s ago.
        ping_due(26_000, 25_000, &mut c2u, &mut u2c);
        assert!(c2u.pinged && u2c.want_ping, "the client gets a Ping");
        assert!(!u2c.pinged && !c2u.want_ping, "the upstream is not due");
        u2c.want_ping = false;
        ping_due(27_000, 25_000, &mut c2u, &mut u2c);
        assert!(!u2c.want_ping, "one Ping at a time to a side");
        // Both silent: both pinged.
        let (mut c2u, mut u2c) = (Dir::new(true, 0), Dir::new(false, 0));
        ping_due(25_000, 25_000, &mut c2u, &mut u2c);
        assert!(c2u.pinged && u2c.pinged && c2u.want_ping && u2c.want_ping);
    }

    #[test]
    fn a_pong_timeout_is_blamed_on_the_side_that_owes_an_answer() {
        let (mut c2u, mut u2c) = (Dir::new(true, 5), Dir::new(false, 1));
        c2u.pinged = true;
        assert_eq!(silent_side(&c2u, &u2c), Side::Client, "owing beats older");
        u2c.pinged = true;
        assert_eq!(
            silent_side(&c2u, &u2c),
            Side::Upstream,
            "both owe: upstream"
        );
        c2u.pinged = false;
        u2c.pinged = false;
        assert_eq!(
            silent_side(&c2u, &u2c),
            Side::Upstream,
            "neither owes: the quieter"
        );
    }

    #[tokio::test]
    async fn a_tunnel_runs_over_in_memory_streams() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let env = Arc::new(Env::new(
            Heartbeat::new(Duration::from_secs(25), Duration::from_secs(10)),
            TunnelSettings {
                idle_timeout: Duration::ZERO,
                max_lifetime: Duration::ZERO,
                close_timeout: Duration::from_secs(5),
                uring_buffers: 256,
                high_water: 256 * 1024,
            },
            Shutdown::new(),
        ));
        let (mut client, c_end) = tokio::io::duplex(4096);
        let (u_end, mut upstream) = tokio::io::duplex(4096);
        let task = tokio::spawn(run(c_end, Bytes::new(), u_end, Bytes::new(), &env));
        let from_client = frames(true, &[(OpCode::Text, true, b"up")]);
        client.write_all(&from_client).await.unwrap();
        let mut got = vec![0u8; from_client.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, from_client, "masked frames pass unchanged");
        let from_upstream = frames(false, &[(OpCode::Binary, true, b"down")]);
        upstream.write_all(&from_upstream).await.unwrap();
        let mut got = vec![0u8; from_upstream.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, from_upstream);
        // The upstream vanishes without a Close: the client learns why, with 1014.
        drop(upstream);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let h = frame::parse_header(&rest).expect("a close frame");
        assert_eq!(h.opcode_raw, OpCode::Close as u8);
        assert_eq!(&rest[h.size..h.size + 2], &1014u16.to_be_bytes());
        // The client goes too, as a browser does after a Close: the tunnel is over.
        drop(client);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the tunnel ends")
            .unwrap();
    }

    /// An idle tunnel's memory is its task, two socket registrations (256 bytes each, tokio's)
    /// and one heartbeat entry: keeping this struct small is what keeps an idle tunnel under 4 KB
    /// (BENCHMARKS.md, issue 4). Two sockets (2 x 32), two directions (2 x 88: frame header,
    /// held Pong, pending buffer, ping state) and a few pointers come to 280 bytes. That is also
    /// the budget: tokio aligns a task to 128 bytes, and the task `upgrade` spawns around this
    /// future (256 bytes more) fits 640 bytes at 280 but takes 768 past it (heaptrack, 2,000
    /// idle tunnels). A `Sleep` (over 100 bytes) or a buffer inline would break it: those are
    /// boxed, and only while needed.
    #[test]
    fn an_idle_tunnel_stays_small() {
        let size = std::mem::size_of::<Tunnel>();
        assert!(size <= 280, "Tunnel grew to {size} bytes");
    }
}
