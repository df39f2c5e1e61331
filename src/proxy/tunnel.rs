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
//! An idle tunnel holds no buffer: reads land in a per-thread scratch buffer, and a pending
//! buffer exists only while the destination is not accepting bytes. Pings come from one timing
//! wheel ([`crate::ws::Heartbeat`]) for all tunnels, not a timer per tunnel.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Proxy;
use crate::ws::close::CloseCode;
use crate::ws::frame::{self, OpCode};
use crate::ws::outbox::Outbox;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(64 * 1024 + 64));
}

/// Reads handled per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// Length of the Ping payload wsgate uses to recognise its own Pongs.
const TOKEN_LEN: usize = 8;

/// One direction of the tunnel: what is known about the frame passing through it.
#[derive(Debug)]
struct Dir {
    /// Frames from this source are masked (client to upstream).
    masked: bool,
    /// Header bytes of the current frame seen so far.
    hdr: [u8; 14],
    hdr_len: usize,
    /// Header size once parsed.
    hdr_size: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// A Pong that may be ours, held back until complete: mask and payload so far.
    hold: Option<(Option<[u8; 4]>, [u8; TOKEN_LEN], usize)>,
    /// Bytes that arrived with the handshake, processed before the socket is read.
    pre: Option<Bytes>,
    /// Output not yet accepted by the destination (only while it pushes back).
    pending: Vec<u8>,
    pending_off: usize,
    /// The source reached EOF (or failed).
    src_done: bool,
    /// The destination's write half was shut.
    dst_shut: bool,
    /// A Close frame from the source passed through.
    close_passed: bool,
    /// A Ping to the destination is wanted at the next frame boundary.
    want_ping: bool,
    /// Pongs swallowed, for tests and logs.
    swallowed: u64,
}

impl Dir {
    fn new(masked: bool, pre: Bytes) -> Self {
        Dir {
            masked,
            hdr: [0; 14],
            hdr_len: 0,
            hdr_size: 0,
            remaining: 0,
            hold: None,
            pre: (!pre.is_empty()).then_some(pre),
            pending: Vec::new(),
            pending_off: 0,
            src_done: false,
            dst_shut: false,
            close_passed: false,
            want_ping: false,
            swallowed: 0,
        }
    }

    /// Between two frames: a frame of our own may go to the destination now.
    fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0 && self.hold.is_none()
    }

    /// Passes `data` through, appending what the destination should get to `out`. Pongs that
    /// carry `token` are dropped.
    fn process(&mut self, mut data: &[u8], token: &[u8; TOKEN_LEN], out: &mut Vec<u8>) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                match &mut self.hold {
                    Some((_, buf, filled)) => {
                        buf[*filled..*filled + n].copy_from_slice(&data[..n]);
                        *filled += n;
                    }
                    None => out.extend_from_slice(&data[..n]),
                }
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.end_frame(token, out);
                }
                continue;
            }
            let take = (self.hdr.len() - self.hdr_len).min(data.len());
            let old = self.hdr_len;
            self.hdr[old..old + take].copy_from_slice(&data[..take]);
            self.hdr_len += take;
            let Some(h) = frame::parse_header(&self.hdr[..self.hdr_len]) else {
                data = &data[take..];
                continue;
            };
            // Only the header's own bytes were consumed; the rest goes back to `data`.
            data = &data[h.size - old..];
            self.hdr_len = h.size;
            self.hdr_size = h.size;
            if h.opcode_raw == OpCode::Close as u8 {
                self.close_passed = true;
            }
            let maybe_ours = h.opcode_raw == OpCode::Pong as u8
                && h.fin
                && h.len == TOKEN_LEN as u64
                && h.mask.is_some() == self.masked;
            if maybe_ours {
                self.hold = Some((h.mask, [0; TOKEN_LEN], 0));
            } else {
                out.extend_from_slice(&self.hdr[..h.size]);
            }
            self.remaining = h.len;
            if h.len == 0 {
                self.end_frame(token, out);
            }
        }
    }

    fn end_frame(&mut self, token: &[u8; TOKEN_LEN], out: &mut Vec<u8>) {
        if let Some((mask, buf, _)) = self.hold.take() {
            let mut plain = buf;
            if let Some(m) = mask {
                frame::apply_mask(&mut plain, m, 0);
            }
            if &plain == token {
                self.swallowed += 1;
            } else {
                out.extend_from_slice(&self.hdr[..self.hdr_size]);
                out.extend_from_slice(&buf);
            }
        }
        self.hdr_len = 0;
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
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

/// Writes as much of `buf` as the socket takes now; returns the count, or an error.
fn write_now(io: &mut TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> io::Result<usize> {
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

/// Moves bytes from `src` to `dst` until one of them would block.
#[allow(clippy::too_many_arguments)]
fn pump(
    src: &mut TcpStream,
    dst: &mut TcpStream,
    d: &mut Dir,
    token: &[u8; TOKEN_LEN],
    ping: &[u8],
    touch: &dyn Fn(),
    discard: bool,
    cx: &mut Context<'_>,
) -> Pumped {
    let mut res = Pumped::default();
    for _ in 0..READS_PER_POLL {
        if d.want_ping && d.at_boundary() && !d.dst_shut && !discard {
            d.want_ping = false;
            d.queue(ping);
        }
        while d.pending_off < d.pending.len() {
            match write_now(dst, cx, &d.pending[d.pending_off..]) {
                Ok(0) => return res,
                Ok(n) => d.pending_off += n,
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
                let n = if let Some(pre) = d.pre.take() {
                    let n = pre.len().min(scratch.len());
                    scratch[..n].copy_from_slice(&pre[..n]);
                    if n < pre.len() {
                        d.pre = Some(pre.slice(n..));
                    }
                    n
                } else {
                    let mut rb = ReadBuf::new(&mut scratch[..]);
                    match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                        Poll::Pending => return Step::Blocked,
                        Poll::Ready(Err(_)) => 0,
                        Poll::Ready(Ok(())) => rb.filled().len(),
                    }
                };
                if n == 0 {
                    return Step::SrcEnded;
                }
                touch();
                if discard {
                    return Step::Moved(false);
                }
                d.process(&scratch[..n], token, &mut out);
                if out.is_empty() {
                    return Step::Moved(false);
                }
                match write_now(dst, cx, &out) {
                    Ok(w) => {
                        if w < out.len() {
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

/// Runs a tunnel until both sides are closed; `c_pre`/`u_pre` are bytes that already arrived
/// from each side with the handshake.
pub async fn run(
    mut client: TcpStream,
    c_pre: Bytes,
    mut upstream: TcpStream,
    u_pre: Bytes,
    proxy: &Arc<Proxy>,
) {
    let _ = client.set_nodelay(true);
    let hb = &proxy.heartbeat;
    let now = hb.now_ms();
    let oc = Arc::new(Outbox::new(0, usize::MAX, now));
    let ou = Arc::new(Outbox::new(0, usize::MAX, now));
    hb.register(&oc);
    hb.register(&ou);
    if proxy
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        oc.request_close(crate::ws::session::SHUTDOWN);
    }
    let token_c = token();
    let token_u = token();
    let ping_c = frame::encode(OpCode::Ping, &token_c);
    let mask = [token_u[0], token_u[3], token_u[5], token_u[7]];
    let ping_u = frame::encode_masked(OpCode::Ping, true, &token_u, mask);
    // Client-to-upstream frames are masked; upstream-to-client are not.
    let mut c2u = Dir::new(true, c_pre);
    let mut u2c = Dir::new(false, u_pre);
    let settings = proxy.tunnel.clone();
    let started = tokio::time::Instant::now();
    let mut last_data = started;
    let mut closing_since: Option<tokio::time::Instant> = None;
    // Only tunnels that opted into a limit carry a timer.
    let limits = !settings.idle_timeout.is_zero() || !settings.max_lifetime.is_zero();
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut discard = false;
    let mut queue = std::collections::VecDeque::new();

    let end = poll_fn(|cx| {
        let now_ms = hb.now_ms();
        // Signals from the wheel and from shutdown.
        let mut close_both: Option<(u16, &'static str)> = None;
        for (side, ob) in [(Side::Client, &oc), (Side::Upstream, &ou)] {
            let sig = ob.take(&mut queue, cx.waker());
            if sig.ping {
                match side {
                    Side::Client => u2c.want_ping = true,
                    Side::Upstream => c2u.want_ping = true,
                }
            }
            if let Some(req) = sig.close
                && !discard
            {
                close_both = Some(if req.code == CloseCode::GOING_AWAY {
                    (1001, "wsgate is shutting down")
                } else if side == Side::Client {
                    (1001, "client stopped answering pings")
                } else {
                    (1014, "upstream stopped answering pings")
                });
            }
        }
        if limits && !discard {
            let t = tokio::time::Instant::now();
            if !settings.max_lifetime.is_zero() && t >= started + settings.max_lifetime {
                close_both = Some((1001, "tunnel reached proxy.max_lifetime"));
            } else if !settings.idle_timeout.is_zero() && t >= last_data + settings.idle_timeout {
                close_both = Some((1001, "tunnel idle for proxy.idle_timeout"));
            }
        }
        if let Some((code, reason)) = close_both {
            let to_client = frame::encode_close(code, reason);
            let to_upstream = masked_close(if code == 1014 { 1001 } else { code }, reason);
            // A side that already got a Close (its peer's) must not get a second one.
            if u2c.at_boundary() && !u2c.dst_shut && !u2c.close_passed {
                u2c.queue(&to_client);
            }
            if c2u.at_boundary() && !c2u.dst_shut && !c2u.close_passed {
                c2u.queue(&to_upstream);
            }
            discard = true;
        }

        let c = pump(
            &mut client,
            &mut upstream,
            &mut c2u,
            &token_c,
            &ping_u,
            &|| oc.touch(now_ms),
            discard,
            cx,
        );
        let u = pump(
            &mut upstream,
            &mut client,
            &mut u2c,
            &token_u,
            &ping_c,
            &|| ou.touch(now_ms),
            discard,
            cx,
        );
        if c.active || u.active {
            last_data = tokio::time::Instant::now();
        }
        // A side is lost when its read ends without a Close frame, or writing to it fails.
        let client_lost = (c.src_ended && !c2u.close_passed) || u.dst_failed;
        let upstream_lost = (u.src_ended && !u2c.close_passed) || c.dst_failed;
        if !discard && (client_lost || upstream_lost) {
            if upstream_lost
                && !u.dst_failed
                && !u2c.dst_shut
                && !u2c.close_passed
                && u2c.at_boundary()
            {
                u2c.queue(&frame::encode_close(
                    CloseCode::BAD_GATEWAY.0,
                    "upstream closed the connection without a close frame",
                ));
            }
            if client_lost
                && !c.dst_failed
                && !c2u.dst_shut
                && !c2u.close_passed
                && c2u.at_boundary()
            {
                c2u.queue(&masked_close(1001, "client went away"));
            }
            discard = true;
            if upstream_lost {
                u2c.src_done = true;
            }
            if client_lost {
                c2u.src_done = true;
            }
            cx.waker().wake_by_ref();
        }
        // Once a direction's source is done and its output flushed, pass the EOF on.
        for (d, dst) in [(&mut c2u, &mut upstream), (&mut u2c, &mut client)] {
            if d.src_done && d.pending.is_empty() && !d.dst_shut {
                let _ = Pin::new(dst).poll_shutdown(cx);
                d.dst_shut = true;
            }
        }
        if c2u.src_done && u2c.src_done && c2u.dst_shut && u2c.dst_shut {
            return Poll::Ready(End::Closed);
        }
        if (c2u.src_done || u2c.src_done || discard) && closing_since.is_none() {
            closing_since = Some(tokio::time::Instant::now());
        }
        // One timer at most: the close deadline, or the opted-in limits.
        let deadline = match closing_since {
            Some(t) => Some(t + settings.close_timeout),
            None if limits => {
                let mut d = None::<tokio::time::Instant>;
                if !settings.max_lifetime.is_zero() {
                    d = Some(started + settings.max_lifetime);
                }
                if !settings.idle_timeout.is_zero() {
                    let i = last_data + settings.idle_timeout;
                    d = Some(d.map_or(i, |x| x.min(i)));
                }
                d
            }
            None => None,
        };
        if let Some(at) = deadline {
            if tokio::time::Instant::now() >= at && closing_since.is_some() {
                return Poll::Ready(End::CloseTimeout);
            }
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if t.deadline() != at {
                t.as_mut().reset(at);
            }
            if t.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    })
    .await;
    crate::metrics::METRICS
        .proxy_pongs_swallowed
        .add(c2u.swallowed + u2c.swallowed);
    tracing::debug!(
        ?end,
        pongs_swallowed = c2u.swallowed + u2c.swallowed,
        "tunnel closed"
    );
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

    fn run_dir(masked: bool, input: &[u8], chunk: usize) -> (Vec<u8>, u64) {
        let mut d = Dir::new(masked, Bytes::new());
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            d.process(c, &TOKEN, &mut out);
        }
        assert!(d.at_boundary());
        (out, d.swallowed)
    }

    #[test]
    fn frames_pass_unchanged_whatever_the_read_sizes() {
        let mut input = Vec::new();
        input.extend(frame::encode_masked(
            OpCode::Text,
            false,
            b"hel",
            [1, 2, 3, 4],
        ));
        input.extend(frame::encode_masked(
            OpCode::Ping,
            true,
            b"app ping",
            [5, 6, 7, 8],
        ));
        input.extend(frame::encode_masked(
            OpCode::Continuation,
            true,
            &[7u8; 300],
            [9, 9, 9, 9],
        ));
        input.extend(frame::encode_masked(
            OpCode::Pong,
            true,
            b"notours!",
            [1, 1, 1, 1],
        ));
        input.extend(frame::encode_masked(
            OpCode::Binary,
            true,
            &[1u8; 70_000],
            [2, 2, 2, 2],
        ));
        for chunk in [1, 2, 3, 7, 64, 1000, 100_000] {
            let (out, swallowed) = run_dir(true, &input, chunk);
            assert_eq!(out, input, "chunk {chunk}");
            assert_eq!(swallowed, 0);
        }
    }

    #[test]
    fn our_pong_is_swallowed_and_everything_around_it_kept() {
        let before = frame::encode(OpCode::Text, b"a");
        let pong = frame::encode(OpCode::Pong, &TOKEN);
        let after = frame::encode(OpCode::Text, b"b");
        let mut input = before.to_vec();
        input.extend_from_slice(&pong);
        input.extend_from_slice(&after);
        for chunk in [1, 3, 100] {
            let (out, swallowed) = run_dir(false, &input, chunk);
            assert_eq!(out, [&before[..], &after[..]].concat(), "chunk {chunk}");
            assert_eq!(swallowed, 1);
        }
        let masked = frame::encode_masked(OpCode::Pong, true, &TOKEN, [3, 1, 4, 1]);
        let (out, swallowed) = run_dir(true, &masked, 2);
        assert!(out.is_empty());
        assert_eq!(swallowed, 1);
    }

    #[test]
    fn rsv_bits_and_unknown_opcodes_pass_untouched() {
        let mut f = frame::encode(OpCode::Text, b"compressed?").to_vec();
        f[0] |= 0x40; // RSV1, as permessage-deflate sets it
        let (out, _) = run_dir(false, &f, 4);
        assert_eq!(out, f);
    }
}
