//! RFC 6455 §5 framing: encoding server frames and a streaming decoder for client frames.
//!
//! The decoder is fed whatever bytes a read returned, unmasks them in place, and keeps at most a
//! partial frame header (< 14 bytes) between reads, so an idle connection holds no buffer. Message
//! payloads are gathered into a buffer that already has room for the outgoing header in front,
//! so echoing or broadcasting a message costs no second copy. That buffer grows with the bytes
//! that actually arrive, never with the length a header announces (a header is free to send), and
//! what unfinished messages hold is counted against one process-wide [`PartialBudget`]. Text is validated as UTF-8 as the
//! bytes arrive (fail fast, §8.1), not only when the message completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

use super::close::{self, CloseCode, ProtocolError};
use super::deflate::{self, InflateError};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    pub fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Largest header a server (unmasked) frame needs: 2 bytes plus an 8-byte length.
pub const SERVER_HEADER_MAX: usize = 10;

/// Writes an unmasked frame header for `len` payload bytes at the end of `out`, returning how
/// many bytes it used (2, 4 or 10).
pub(super) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

pub(super) fn write_header(out: &mut [u8], fin: bool, opcode: OpCode, len: usize) {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode as u8;
    match out.len() {
        2 => out[1] = len as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Encodes one complete unmasked frame (header and payload in one allocation).
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let h = header_len(payload.len());
    let mut buf = BytesMut::with_capacity(h + payload.len());
    buf.resize(h, 0);
    write_header(&mut buf[..h], true, opcode, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// `payload` compressed (permessage-deflate, RFC 7692) into one unmasked frame with RSV1 set,
/// using an LZ77 window of `window` bits; `None` when compressing would not make it smaller.
pub fn encode_compressed(opcode: OpCode, payload: &[u8], window: u8) -> Option<Bytes> {
    deflate::compress(payload, window, |body| {
        let h = header_len(body.len());
        let mut buf = BytesMut::with_capacity(h + body.len());
        buf.resize(h, 0);
        write_header(&mut buf[..h], true, opcode, body.len());
        buf[0] |= RSV1;
        buf.put_slice(body);
        buf.freeze()
    })
}

/// The frame header bit permessage-deflate uses to mark a compressed message (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// Encodes a Close frame with a status code and a reason (truncated on a char boundary so the
/// payload stays within the 125 bytes a control frame may carry).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut reason = reason;
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OpCode::Close, &payload)
}

/// XORs `buf` with the 4-byte `mask`, starting at mask position `offset` (0..4).
/// Returns the mask position after the last byte.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) -> usize {
    let mut rotated = [0u8; 4];
    for (i, r) in rotated.iter_mut().enumerate() {
        *r = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated) as u64;
    let wide = word | (word << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("chunk is 8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let tail = chunks.into_remainder();
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
    (offset + buf.len()) % 4
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub rsv: u8,
    pub opcode_raw: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header itself took.
    pub size: usize,
}

/// Parses a frame header from the front of `buf`; `None` when more bytes are needed.
/// Checks nothing beyond the wire format: callers apply the role's rules.
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut size) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                10,
            )
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        if buf.len() < size + 4 {
            return None;
        }
        let m = [buf[size], buf[size + 1], buf[size + 2], buf[size + 3]];
        size += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode_raw: b0 & 0x0F,
        mask,
        len,
        size,
    })
}

/// A complete message from the client, stored behind room for an outgoing header.
#[derive(Debug)]
pub struct Message {
    pub text: bool,
    buf: BytesMut,
}

impl Message {
    pub fn payload(&self) -> &[u8] {
        &self.buf[SERVER_HEADER_MAX..]
    }

    /// Turns the message into a ready-to-send unmasked frame without copying the payload.
    pub fn into_frame(mut self) -> Bytes {
        let len = self.buf.len() - SERVER_HEADER_MAX;
        let h = header_len(len);
        let start = SERVER_HEADER_MAX - h;
        let op = if self.text {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        write_header(&mut self.buf[start..SERVER_HEADER_MAX], true, op, len);
        let _ = self.buf.split_to(start);
        self.buf.freeze()
    }
}

/// What the decoder found in the bytes it was fed.
#[derive(Debug)]
pub enum Event {
    Message(Message),
    Ping(Bytes),
    Pong,
    /// The peer's Close: its code (if any) and reason.
    Close(Option<u16>, String),
}

#[derive(Debug, Clone, Copy)]
struct Current {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Where in the mask the next byte is (0..4).
    mask_pos: u8,
    remaining: u64,
}

/// Memory every decoder sharing it may hold for messages not yet complete
/// (`websocket.max_partial_bytes_total`), counted by buffer capacity.
#[derive(Debug)]
pub struct PartialBudget {
    held: AtomicUsize,
    max: usize,
}

impl PartialBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PartialBudget {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Streaming decoder for frames a client sends (masked; permessage-deflate when negotiated).
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a message as compressed.
    deflate: bool,
    /// The message being assembled is compressed (inflated once it is complete).
    compressed: bool,
    header: [u8; 14],
    header_len: u8,
    current: Option<Current>,
    /// Opcode of the data message being assembled, if one is open.
    message_opcode: Option<OpCode>,
    message: BytesMut,
    utf8_checked: usize,
    /// A control frame's payload while it arrives; released once the frame is handled, so an
    /// idle connection holds none. Boxed on purpose: 8 bytes instead of a `Vec`'s 24 in every
    /// idle session, for one more allocation per control frame.
    #[allow(clippy::box_collection)]
    control: Option<Box<Vec<u8>>>,
    /// Where what `message` holds is counted, and how much of it is counted now.
    budget: Option<Arc<PartialBudget>>,
    counted: usize,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.message = BytesMut::new();
        let _ = self.account();
    }
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            deflate: false,
            compressed: false,
            header: [0; 14],
            header_len: 0,
            current: None,
            message_opcode: None,
            message: BytesMut::new(),
            utf8_checked: 0,
            control: None,
            budget: None,
            counted: 0,
        }
    }

    /// Counts what unfinished messages hold against `budget`; a feed that takes it past its
    /// maximum fails with 1009.
    pub fn budgeted(mut self, budget: Arc<PartialBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Brings the budget up to date with what `message` holds now (nothing once a message was
    /// handed out), and says whether the budget is exceeded.
    fn account(&mut self) -> Result<(), ProtocolError> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        let now = self.message.capacity();
        if now == self.counted {
            return Ok(());
        }
        let metric = &crate::metrics::METRICS.partial_bytes;
        if now < self.counted {
            let freed = self.counted - now;
            b.held.fetch_sub(freed, Ordering::Relaxed);
            metric.sub(freed as u64);
            self.counted = now;
            return Ok(());
        }
        let grown = now - self.counted;
        let total = b.held.fetch_add(grown, Ordering::Relaxed) + grown;
        metric.add(grown as u64);
        self.counted = now;
        if total > b.max {
            crate::metrics::METRICS.partial_bytes_closes.inc();
            return Err(ProtocolError::new(
                CloseCode::MESSAGE_TOO_BIG,
                format!(
                    "server busy: unfinished messages hold over {} bytes (websocket.max_partial_bytes_total); retry later",
                    b.max
                ),
            ));
        }
        Ok(())
    }

    /// Accepts messages compressed with permessage-deflate (negotiated for this connection).
    /// The message limit applies to the inflated size; the compressed bytes of one message
    /// may take up to an eighth more, as incompressible data can grow a little.
    pub fn inflating(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Most compressed bytes one message may gather before it is inflated.
    fn compressed_limit(&self) -> usize {
        self.max_message
            .saturating_add(self.max_message / 8)
            .saturating_add(1024)
    }

    /// True when nothing is buffered (no partial header, frame or message).
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.current.is_none() && self.message_opcode.is_none()
    }

    /// Feeds bytes from the socket; `on_event` is called for every complete event in order.
    /// Stops at the first protocol error, which the caller must answer with a Close.
    pub fn feed(
        &mut self,
        data: &mut [u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        let fed = self.feed_frames(data, on_event);
        let counted = self.account();
        fed.and(counted)
    }

    fn feed_frames(
        &mut self,
        mut data: &mut [u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        while !data.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                // Collect a header; at most 14 bytes are held between reads.
                let held = usize::from(self.header_len);
                let want = (14 - held).min(data.len());
                self.header[held..held + want].copy_from_slice(&data[..want]);
                let avail = held + want;
                match parse_header(&self.header[..avail]) {
                    None => {
                        // At most 14: fits.
                        self.header_len = avail as u8;
                        return Ok(());
                    }
                    Some(h) => {
                        let used_from_data = h.size - held;
                        data = &mut data[used_from_data..];
                        self.header_len = 0;
                        self.start_frame(h)?;
                        if self.current.is_some_and(|c| c.remaining == 0) {
                            self.finish_frame(on_event)?;
                        }
                        continue;
                    }
                }
            };
            let n = (cur.remaining.min(data.len() as u64)) as usize;
            let (chunk, rest) = std::mem::take(&mut data).split_at_mut(n);
            data = rest;
            cur.mask_pos = apply_mask(chunk, cur.mask, usize::from(cur.mask_pos)) as u8;
            cur.remaining -= n as u64;
            let opcode = cur.opcode;
            let done = cur.remaining == 0;
            // What the message still announces, when this is its last frame.
            let cur_left = cur.fin.then_some(cur.remaining as usize);
            if opcode.is_control() {
                self.control
                    .get_or_insert_with(Default::default)
                    .extend_from_slice(chunk);
            } else {
                self.make_room(chunk.len(), cur_left);
                self.message.extend_from_slice(chunk);
                // A compressed message is checked once inflated.
                if self.message_opcode == Some(OpCode::Text) && !self.compressed {
                    self.check_utf8(false)?;
                }
            }
            if done {
                self.finish_frame(on_event)?;
            }
        }
        Ok(())
    }

    /// Room in `message` for `n` more bytes, with `left` more announced after them when this is
    /// the message's last frame. The first bytes get room for a header in front and for what
    /// arrived (exact when the whole message came in one read, the usual case); later growth
    /// doubles what is held (so many fragments cost no quadratic copying), but never past the
    /// message's announced end or its limit: a buffer holds at most twice what arrived.
    fn make_room(&mut self, n: usize, left: Option<usize>) {
        if self.message.is_empty() {
            self.message = BytesMut::with_capacity(SERVER_HEADER_MAX + n);
            self.message.resize(SERVER_HEADER_MAX, 0);
            return;
        }
        let len = self.message.len();
        if self.message.capacity() - len >= n {
            return;
        }
        let end = left.map_or(SERVER_HEADER_MAX + self.compressed_limit(), |l| len + n + l);
        let target = (len + n).max((2 * len).min(end));
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.message);
        self.message = grown;
    }

    fn start_frame(&mut self, h: Header) -> Result<(), ProtocolError> {
        use CloseCode as C;
        let rsv1 = h.rsv & 0x4 != 0;
        if h.rsv & 0x3 != 0 || (rsv1 && !self.deflate) {
            return Err(ProtocolError::new(
                C::PROTOCOL_ERROR,
                "reserved bits set but no extension was negotiated",
            ));
        }
        let Some(opcode) = OpCode::from_u8(h.opcode_raw) else {
            return Err(ProtocolError::new(
                C::PROTOCOL_ERROR,
                format!("reserved opcode {:#x}", h.opcode_raw),
            ));
        };
        if rsv1 && (opcode.is_control() || opcode == OpCode::Continuation) {
            // RFC 7692 §6.1: only the first frame of a data message carries the bit.
            return Err(ProtocolError::new(
                C::PROTOCOL_ERROR,
                "RSV1 set on a control or continuation frame (permessage-deflate marks only a message's first frame)",
            ));
        }
        let Some(mask) = h.mask else {
            return Err(ProtocolError::new(
                C::PROTOCOL_ERROR,
                "client frames must be masked (RFC 6455 section 5.1)",
            ));
        };
        if h.len > i64::MAX as u64 {
            return Err(ProtocolError::new(
                C::PROTOCOL_ERROR,
                "frame length has its top bit set",
            ));
        }
        if opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::new(
                    C::PROTOCOL_ERROR,
                    "fragmented control frame",
                ));
            }
            if h.len > 125 {
                return Err(ProtocolError::new(
                    C::PROTOCOL_ERROR,
                    "control frame payload over 125 bytes",
                ));
            }
            self.control = None;
        } else {
            match (opcode, self.message_opcode) {
                (OpCode::Continuation, None) => {
                    return Err(ProtocolError::new(
                        C::PROTOCOL_ERROR,
                        "continuation frame without a message to continue",
                    ));
                }
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(ProtocolError::new(
                        C::PROTOCOL_ERROR,
                        "new message started before the previous one finished",
                    ));
                }
                (OpCode::Continuation, Some(_)) => {}
                (op, _) => {
                    self.message_opcode = Some(op);
                    self.compressed = rsv1;
                    self.utf8_checked = 0;
                    self.message = BytesMut::new();
                }
            }
            let so_far = self.message.len().saturating_sub(SERVER_HEADER_MAX) as u64;
            let limit = if self.compressed {
                self.compressed_limit()
            } else {
                self.max_message
            };
            if so_far + h.len > limit as u64 {
                return Err(ProtocolError::new(
                    C::MESSAGE_TOO_BIG,
                    format!("message over the {} byte limit", self.max_message),
                ));
            }
        }
        self.current = Some(Current {
            opcode,
            fin: h.fin,
            mask,
            mask_pos: 0,
            remaining: h.len,
        });
        Ok(())
    }

    /// Replaces the gathered compressed message with its inflated form (behind the same room
    /// for a header), bounded by the message limit.
    fn inflate(&mut self) -> Result<(), ProtocolError> {
        let mut out = BytesMut::new();
        out.resize(SERVER_HEADER_MAX, 0);
        let inflated = deflate::inflate(
            &self.message[SERVER_HEADER_MAX..],
            self.max_message,
            &mut out,
        );
        self.message = BytesMut::new();
        match inflated {
            Ok(()) => {
                crate::metrics::METRICS.deflate_inflated.inc();
                self.message = out;
                self.utf8_checked = 0;
                Ok(())
            }
            Err(InflateError::TooBig) => Err(ProtocolError::new(
                CloseCode::MESSAGE_TOO_BIG,
                format!(
                    "message over the {} byte limit once inflated",
                    self.max_message
                ),
            )),
            Err(InflateError::Malformed(why)) => Err(ProtocolError::new(
                CloseCode::INVALID_PAYLOAD,
                format!("compressed message is not valid DEFLATE data ({why})"),
            )),
        }
    }

    /// Validates the UTF-8 gathered so far; `complete` means no more bytes will follow.
    fn check_utf8(&mut self, complete: bool) -> Result<(), ProtocolError> {
        let body = &self.message[SERVER_HEADER_MAX..];
        match std::str::from_utf8(&body[self.utf8_checked..]) {
            Ok(_) => {
                self.utf8_checked = body.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !complete => {
                self.utf8_checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(ProtocolError::new(
                CloseCode::INVALID_PAYLOAD,
                "text message is not valid UTF-8",
            )),
        }
    }

    fn finish_frame(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<(), ProtocolError> {
        let cur = self.current.take().expect("a frame is in progress");
        match cur.opcode {
            OpCode::Ping => {
                let payload = self.control.take().map_or_else(Vec::new, |b| *b);
                on_event(Event::Ping(Bytes::from(payload)));
            }
            OpCode::Pong => {
                self.control = None;
                on_event(Event::Pong);
            }
            OpCode::Close => {
                let payload = self.control.take().map_or_else(Vec::new, |b| *b);
                let (code, reason) = close::parse_payload(&payload)?;
                on_event(Event::Close(code, reason));
            }
            _ => {
                if cur.fin {
                    let op = self.message_opcode.take().expect("message is open");
                    if self.message.is_empty() {
                        self.message.resize(SERVER_HEADER_MAX, 0);
                    }
                    if std::mem::take(&mut self.compressed) {
                        self.inflate()?;
                    }
                    if op == OpCode::Text {
                        self.check_utf8(true)?;
                    }
                    let buf = std::mem::take(&mut self.message);
                    on_event(Event::Message(Message {
                        text: op == OpCode::Text,
                        buf,
                    }));
                }
            }
        }
        Ok(())
    }
}

/// Encodes a masked client frame (used by the built-in client: doctor, bench and tests).
pub fn encode_masked(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let h = header_len(payload.len());
    let mut out = vec![0u8; h];
    write_header(&mut out, fin, opcode, payload.len());
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn decode_all(bytes: &[u8], max: usize) -> (Vec<Event>, Option<ProtocolError>) {
        let mut d = Decoder::new(max);
        let mut events = Vec::new();
        let mut data = bytes.to_vec();
        let err = d.feed(&mut data, &mut |e| events.push(e)).err();
        (events, err)
    }

    /// Feeds one byte at a time, as the slowest network would.
    fn decode_bytewise(bytes: &[u8], max: usize) -> (Vec<Event>, Option<ProtocolError>) {
        let mut d = Decoder::new(max);
        let mut events = Vec::new();
        for b in bytes {
            let mut one = [*b];
            if let Err(e) = d.feed(&mut one, &mut |e| events.push(e)) {
                return (events, Some(e));
            }
        }
        (events, None)
    }

    #[test]
    fn encodes_each_length_form() {
        assert_eq!(&encode(OpCode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = encode(OpCode::Binary, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = encode(OpCode::Binary, &vec![0u8; 70_000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn mask_round_trips_at_any_offset() {
        let orig: Vec<u8> = (0..=255).collect();
        for off in 0..4 {
            let mut v = orig.clone();
            let (a, b) = v.split_at_mut(37);
            let p = apply_mask(a, MASK, off);
            apply_mask(b, MASK, p);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, orig[i] ^ MASK[(off + i) % 4]);
            }
        }
    }

    #[test]
    fn decodes_a_message_split_across_every_byte_boundary() {
        let mut wire = encode_masked(OpCode::Text, false, "héllo ".as_bytes(), MASK);
        wire.extend(encode_masked(OpCode::Ping, true, b"p", MASK));
        wire.extend(encode_masked(
            OpCode::Continuation,
            true,
            "wörld".as_bytes(),
            MASK,
        ));
        let (events, err) = decode_bytewise(&wire, 1024);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], Event::Ping(p) if &p[..] == b"p"));
        let Event::Message(m) = &events[1] else {
            panic!("{events:?}")
        };
        assert!(m.text);
        assert_eq!(m.payload(), "héllo wörld".as_bytes());
    }

    #[test]
    fn message_becomes_a_server_frame_without_copying() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload = vec![7u8; len];
            let wire = encode_masked(OpCode::Binary, true, &payload, MASK);
            let (mut events, err) = decode_all(&wire, 1 << 20);
            assert!(err.is_none());
            let Event::Message(m) = events.remove(0) else {
                panic!()
            };
            assert_eq!(
                m.into_frame(),
                encode(OpCode::Binary, &payload),
                "len {len}"
            );
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_an_unfinished_frame() {
        // 0xF4 0x90 starts a code point above U+10FFFF: invalid before the frame ends.
        let mut payload = b"ok".to_vec();
        payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"more");
        let wire = encode_masked(OpCode::Text, true, &payload, MASK);
        let mut d = Decoder::new(1024);
        let mut first = wire[..wire.len() - 4].to_vec();
        let err = d.feed(&mut first, &mut |_| {}).unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn incomplete_utf8_at_message_end_is_invalid() {
        let wire = encode_masked(OpCode::Text, true, &[b'a', 0xE2, 0x82], MASK);
        assert_eq!(
            decode_all(&wire, 1024).1.unwrap().code,
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn protocol_violations_get_1002() {
        let cases: Vec<Vec<u8>> = vec![
            {
                let mut f = encode_masked(OpCode::Text, true, b"x", MASK);
                f[0] |= 0x40; // RSV1
                f
            },
            {
                let mut f = encode_masked(OpCode::Text, true, b"x", MASK);
                f[0] = (f[0] & 0xF0) | 0x3; // reserved opcode
                f
            },
            encode(OpCode::Text, b"unmasked").to_vec(),
            encode_masked(OpCode::Ping, false, b"x", MASK),
            encode_masked(OpCode::Ping, true, &[0u8; 126], MASK),
            encode_masked(OpCode::Continuation, true, b"x", MASK),
            {
                let mut f = encode_masked(OpCode::Text, false, b"a", MASK);
                f.extend(encode_masked(OpCode::Text, true, b"b", MASK));
                f
            },
        ];
        for (i, wire) in cases.iter().enumerate() {
            let err = decode_all(wire, 1024)
                .1
                .unwrap_or_else(|| panic!("case {i} accepted"));
            assert_eq!(err.code, CloseCode::PROTOCOL_ERROR, "case {i}: {err:?}");
        }
    }

    #[test]
    fn oversize_message_gets_1009_from_the_header_alone() {
        let wire = encode_masked(OpCode::Binary, true, &[0u8; 2000], MASK);
        let err = decode_all(&wire[..8], 1000).1.unwrap();
        assert_eq!(err.code, CloseCode::MESSAGE_TOO_BIG);
        let mut two = encode_masked(OpCode::Binary, false, &[0u8; 600], MASK);
        two.extend(encode_masked(OpCode::Continuation, true, &[0u8; 600], MASK));
        assert_eq!(
            decode_all(&two, 1000).1.unwrap().code,
            CloseCode::MESSAGE_TOO_BIG
        );
    }

    #[test]
    fn an_announced_length_reserves_nothing_and_partial_bytes_are_budgeted() {
        let budget = PartialBudget::new(100_000);
        let wire = encode_masked(OpCode::Binary, true, &[7u8; 65536], MASK);
        let mut d = Decoder::new(1 << 20).budgeted(budget.clone());
        // The header and 100 bytes of a 64 KiB message: what is held follows what came.
        let mut part = wire[..14 + 100].to_vec();
        d.feed(&mut part, &mut |_| {}).unwrap();
        assert!(budget.held() < 1024, "held {} bytes", budget.held());
        // A second decoder passing the budget is refused with 1009 naming the key.
        let mut e = Decoder::new(1 << 20).budgeted(budget.clone());
        let mut big = wire[..14 + 60_000].to_vec();
        e.feed(&mut big, &mut |_| {}).unwrap();
        let mut more = wire[14 + 60_000..].to_vec();
        let mut d2 = Decoder::new(1 << 20).budgeted(budget.clone());
        let mut big2 = wire[..14 + 60_000].to_vec();
        let err = d2.feed(&mut big2, &mut |_| {}).unwrap_err();
        assert_eq!(err.code, CloseCode::MESSAGE_TOO_BIG);
        assert!(
            err.reason.contains("websocket.max_partial_bytes_total"),
            "{}",
            err.reason
        );
        drop(d2);
        // A message that completes gives its bytes back; so does a dropped decoder.
        let mut got = 0;
        e.feed(&mut more, &mut |ev| {
            if let Event::Message(m) = ev {
                got = m.payload().len();
            }
        })
        .unwrap();
        assert_eq!(got, 65536);
        drop(d);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let f = encode_close(1000, &"é".repeat(100));
        assert!(f.len() <= 2 + 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
