//! After a 101: a minimal client side of RFC 6455 over the upgraded stream, and the steps that
//! use it: `ping` (send a Ping, expect its Pong) and `close` (send Close 1000, expect a Close
//! back). The idle hold lives in `idle.rs` on top of the same [`Conn`].
//!
//! [`Conn`] answers every server Ping with a Pong, as a browser does, counts what the server
//! sent, and tells how the connection ended: a Close frame (code and reason), a FIN without a
//! Close, an RST, or a protocol violation. It never sends data frames: doctor changes no state
//! on the server. Frames are encoded and parsed with `crate::ws::frame`; nothing here knows
//! about HTTP or TLS.

use std::io::ErrorKind;
use std::time::Duration;

use rustls::crypto::SecureRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::ws::frame::{OpCode, encode_masked, parse_header};

use super::net::secs;
use super::report::{Step, ms_since};

/// What the server did next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Pong(Vec<u8>),
    /// A Close frame; `code` is `None` when it carried none.
    Close {
        code: Option<u16>,
        reason: String,
    },
    /// The stream ended without a Close frame (TCP FIN; over TLS also without close_notify).
    Fin,
    /// TCP reset.
    Reset,
    /// Another read or write error.
    Broken(String),
    /// The server broke RFC 6455 (a masked frame, reserved bits, a long control frame).
    Violation(String),
}

impl Event {
    /// How the connection ended, in words.
    pub fn describe(&self) -> String {
        match self {
            Event::Pong(_) => "a Pong".into(),
            Event::Close {
                code: Some(c),
                reason,
            } if !reason.is_empty() => {
                format!("Close {c} {reason:?}")
            }
            Event::Close { code: Some(c), .. } => format!("Close {c}"),
            Event::Close { code: None, .. } => "a Close frame without a code".into(),
            Event::Fin => "the connection closed (TCP FIN) without a Close frame".into(),
            Event::Reset => "the connection was reset (TCP RST) without a Close frame".into(),
            Event::Broken(e) => format!("the connection failed ({e})"),
            Event::Violation(v) => format!("a protocol violation: {v}"),
        }
    }

    /// A short machine name for `--json`: `close`, `fin`, `rst`, `error`, `violation`, `pong`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Pong(_) => "pong",
            Event::Close { .. } => "close",
            Event::Fin => "fin",
            Event::Reset => "rst",
            Event::Broken(_) => "error",
            Event::Violation(_) => "violation",
        }
    }
}

/// An upgraded connection, seen from the client.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    /// Payload bytes of a data frame still to discard.
    skip: u64,
    random: &'static dyn SecureRandom,
    /// Server Pings seen (each answered).
    pub pings: u64,
    /// Complete data messages the server sent.
    pub messages: u64,
    /// When the last frame from the server arrived.
    pub last_frame: Instant,
}

/// Largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: u64 = 125;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps an upgraded stream; `leftover` holds bytes that arrived with the 101.
    pub fn new(io: S, leftover: Vec<u8>, random: &'static dyn SecureRandom) -> Self {
        Conn {
            io,
            buf: leftover,
            skip: 0,
            random,
            pings: 0,
            messages: 0,
            last_frame: Instant::now(),
        }
    }

    /// Sends one masked frame with a fresh random mask (RFC 6455 section 5.3).
    pub async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mut mask = [0u8; 4];
        if self.random.fill(&mut mask).is_err() {
            // Masks protect proxies from cache poisoning; a fixed one still frames correctly.
            mask = [0x5a, 0x3c, 0x96, 0xe1];
        }
        let frame = encode_masked(opcode, true, payload, mask);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Random bytes, for Ping payloads.
    pub fn nonce(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        let _ = self.random.fill(&mut b);
        b
    }

    /// The next thing worth reporting, answering Pings on the way; `None` at `deadline`.
    pub async fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            match self.parse_frame() {
                Err(v) => return Some(Event::Violation(v)),
                Ok(Some(Frame::Ping(p))) => {
                    self.pings = self.pings.saturating_add(1);
                    if let Err(e) = self.send(OpCode::Pong, &p).await {
                        return Some(io_event(&e));
                    }
                    continue;
                }
                Ok(Some(Frame::Pong(p))) => return Some(Event::Pong(p)),
                Ok(Some(Frame::Close(code, reason))) => {
                    return Some(Event::Close { code, reason });
                }
                Ok(Some(Frame::Data)) => continue,
                Ok(None) => {}
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) => return Some(Event::Fin),
                Ok(Err(e)) => return Some(io_event(&e)),
                Ok(Ok(n)) => n,
            };
            let mut data = &chunk[..n];
            if self.skip > 0 {
                let take = self.skip.min(data.len() as u64) as usize;
                self.skip -= take as u64;
                data = &data[take..];
            }
            self.buf.extend_from_slice(data);
        }
    }

    /// Takes one frame off the buffer, if a whole one (or a data frame's header) is there.
    fn parse_frame(&mut self) -> Result<Option<Frame>, String> {
        let Some(h) = parse_header(&self.buf) else {
            return Ok(None);
        };
        if h.mask.is_some() {
            return Err("the server sent a masked frame (RFC 6455 section 5.1 forbids it)".into());
        }
        if h.rsv != 0 {
            return Err(format!(
                "the server set reserved bits {:#05b} without a negotiated extension",
                h.rsv
            ));
        }
        let Some(op) = OpCode::from_u8(h.opcode_raw) else {
            return Err(format!(
                "the server sent reserved opcode {:#x}",
                h.opcode_raw
            ));
        };
        if h.len > i64::MAX as u64 {
            return Err("the server sent a frame length with the most significant bit set (RFC 6455 section 5.2)".into());
        }
        if op.is_control() && (h.len > MAX_CONTROL || !h.fin) {
            return Err(format!(
                "the server sent a {op:?} frame of {} bytes{} (control frames are at most 125 bytes, unfragmented)",
                h.len,
                if h.fin { "" } else { ", fragmented" }
            ));
        }
        self.last_frame = Instant::now();
        let total = h.size as u64 + h.len;
        if !op.is_control() {
            if h.fin {
                self.messages = self.messages.saturating_add(1);
            }
            if (self.buf.len() as u64) < total {
                self.skip = total - self.buf.len() as u64;
                self.buf.clear();
            } else {
                self.buf.drain(..total as usize);
            }
            return Ok(Some(Frame::Data));
        }
        let total = total as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[h.size..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(match op {
            OpCode::Ping => Frame::Ping(payload),
            OpCode::Pong => Frame::Pong(payload),
            _ => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                Frame::Close(code, reason)
            }
        }))
    }

    /// Closes the transport (TLS close_notify, then FIN), bounded.
    pub async fn shutdown(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.io.shutdown()).await;
    }
}

enum Frame {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Data,
}

fn io_event(e: &std::io::Error) -> Event {
    match e.kind() {
        ErrorKind::ConnectionReset => Event::Reset,
        // rustls: the peer closed TCP without close_notify.
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => Event::Fin,
        _ => Event::Broken(e.to_string()),
    }
}

/// The `ping` step: one Ping, and its Pong within `timeout`. Returns whether the connection is
/// still usable.
pub async fn ping<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    timeout: Duration,
) -> (Step, bool) {
    let start = Instant::now();
    let mut payload = b"wsgate-doctor ".to_vec();
    payload.extend(
        conn.nonce()
            .iter()
            .map(|b| b"0123456789abcdef"[(b & 15) as usize]),
    );
    if let Err(e) = conn.send(OpCode::Ping, &payload).await {
        let ev = io_event(&e);
        return (
            Step::fail("ping", format!("could not send a Ping: {}", ev.describe()))
                .with_hint(after_upgrade_hint()),
            false,
        );
    }
    let deadline = start + timeout;
    let (mut step, open) = loop {
        match conn.next_event(deadline).await {
            Some(Event::Pong(p)) if p == payload => {
                break (
                    Step::pass("ping", format!("Pong in {:.1} ms", ms_since(start)))
                        .with_fact("rtt_ms", ms_since(start)),
                    true,
                );
            }
            // An unsolicited Pong (a heartbeat) is allowed; keep waiting for ours.
            Some(Event::Pong(_)) => continue,
            None => {
                break (
                    Step::warn(
                        "ping",
                        format!("no Pong within {} s", secs(timeout)),
                    )
                    .with_hint(
                        "RFC 6455 section 5.5.2 requires a Pong for every Ping: the server or a hop that parses \
frames swallows Pings, or a proxy buffers the tunnel; browsers do not send Pings, so pages may still work",
                    ),
                    true,
                );
            }
            Some(ev) => {
                break (
                    Step::fail(
                        "ping",
                        format!(
                            "instead of a Pong: {} right after the upgrade",
                            ev.describe()
                        ),
                    )
                    .with_fact("ended", ev.kind())
                    .with_hint(after_upgrade_hint()),
                    false,
                );
            }
        }
    };
    step = step.with_fact("server_pings", conn.pings);
    step.elapsed_ms = ms_since(start);
    (step, open)
}

fn after_upgrade_hint() -> &'static str {
    "the server accepted the upgrade and then dropped the connection: check its logs (an error in the \
connect handler, authentication done after the upgrade, a limit); a proxy that does not support upgrades \
may also pass the 101 and then close"
}

/// The `close` step: Close 1000, and the server's Close in reply.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    timeout: Duration,
) -> Step {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut step = if let Err(e) = conn
        .send(OpCode::Close, &close_payload(1000, "doctor done"))
        .await
    {
        Step::warn(
            "close",
            format!("could not send Close 1000: {}", io_event(&e).describe()),
        )
    } else {
        loop {
            match conn.next_event(deadline).await {
                Some(Event::Pong(_)) => continue,
                Some(Event::Close { code, reason }) => {
                    let ev = Event::Close { code, reason };
                    break Step::pass(
                        "close",
                        format!(
                            "sent Close 1000; the server answered {} in {:.1} ms",
                            ev.describe(),
                            ms_since(start)
                        ),
                    )
                    .with_fact("close_code", code);
                }
                None => {
                    break Step::warn(
                        "close",
                        format!("sent Close 1000; no Close came back within {} s", secs(timeout)),
                    )
                    .with_hint(
                        "a server must answer a Close with a Close (RFC 6455 section 5.5.1); clients then wait \
for it before giving up, so closing is slow",
                    );
                }
                Some(ev) => {
                    break Step::warn(
                        "close",
                        format!("sent Close 1000; instead of a Close: {}", ev.describe()),
                    )
                    .with_hint(
                        "a server must answer a Close with a Close (RFC 6455 section 5.5.1) before closing the \
TCP connection; browsers report such an end as code 1006",
                    );
                }
            }
        }
    };
    conn.shutdown(Duration::from_millis(500)).await;
    step.elapsed_ms = ms_since(start);
    step
}

/// A Close frame payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn random() -> &'static dyn SecureRandom {
        rustls::crypto::ring::default_provider().secure_random
    }

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | op, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn pings_are_answered_and_data_skipped_until_a_close() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(client, server_frame(0x9, b"hb"), random());
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(70_000u64).to_be_bytes());
        server.write_all(&big).await.unwrap();
        server.write_all(&vec![7u8; 70_000]).await.unwrap();
        server.write_all(&server_frame(0x1, b"hi")).await.unwrap();
        server
            .write_all(&server_frame(0x8, b"\x03\xe9bye"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ev = conn.next_event(deadline).await;
        assert_eq!(
            ev,
            Some(Event::Close {
                code: Some(1001),
                reason: "bye".into()
            })
        );
        assert_eq!((conn.pings, conn.messages), (1, 2));
        // The Pong went out masked with the Ping's payload.
        let mut got = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(got[0], 0x8A);
        assert_eq!(got[1], 0x80 | 2);
    }

    #[tokio::test]
    async fn a_masked_or_oversized_control_frame_is_a_violation() {
        for bad in [
            vec![0x89, 0x80, 1, 2, 3, 4],
            vec![0x89, 126, 0, 200],
            vec![0xC1, 0],
        ] {
            let (client, _server) = tokio::io::duplex(1024);
            let mut conn = Conn::new(client, bad.clone(), random());
            let ev = conn
                .next_event(Instant::now() + Duration::from_secs(1))
                .await;
            assert!(matches!(ev, Some(Event::Violation(_))), "{bad:?}: {ev:?}");
        }
    }

    #[tokio::test]
    async fn eof_is_a_fin_and_silence_is_none() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(client, Vec::new(), random());
        let ev = conn
            .next_event(Instant::now() + Duration::from_millis(20))
            .await;
        assert_eq!(ev, None);
        drop(server);
        let ev = conn
            .next_event(Instant::now() + Duration::from_secs(1))
            .await;
        assert_eq!(ev, Some(Event::Fin));
    }
}
