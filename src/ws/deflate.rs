//! permessage-deflate (RFC 7692): negotiating it in the handshake, compressing a frame and
//! inflating a client's message with bounded memory.
//!
//! wsgate never keeps a compression context per connection, in either direction. The server
//! compresses each message on its own (`server_no_context_takeover`), which is what lets the
//! fan-out compress a publication once and hand every member the same bytes; and it asks the
//! client to do the same (`client_no_context_takeover`, which a server may add to any
//! acceptance, RFC 7692 §7.1.1.1), so a client's message inflates with a fresh context on a
//! per-thread inflater. An idle connection holds no zlib state at all: the per-socket 64+ KB
//! that context takeover costs is what this design avoids.
//!
//! The deflate engine is flate2 on zlib-rs, chosen by measurement over miniz_oxide (the numbers
//! are in BENCHMARKS.md, "Choosing the deflate crate"): it compresses 1.2-2x and inflates
//! 1.2-8x as fast (most for small messages), and it honours `server_max_window_bits`
//! (miniz_oxide always uses a 32 KB window).

use std::cell::RefCell;

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::{HeaderMap, header};

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// zlib level used for every compression: level 6 compresses JSON of a few KB about twice as
/// well as level 1 (8x against 3.5x for 16 KB), and the fan-out pays it once per publication.
const LEVEL: u32 = 6;

/// The empty stored block that ends a sync flush; RFC 7692 §7.2.1 removes it from the wire and
/// §7.2.2 puts it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The largest LZ77 window our messages may use (`server_max_window_bits`, 8 to 15; 15 when
    /// the client set no limit).
    pub server_window: u8,
    /// Whether the client limited our window (it must then hear the value back).
    server_window_asked: bool,
}

impl Agreed {
    /// An agreement where the client limited our window to `bits`.
    pub fn with_window(bits: u8) -> Self {
        Agreed {
            server_window: bits,
            server_window_asked: true,
        }
    }

    /// The window our compressor uses, or `None` when the client asked for 8 bits: zlib cannot
    /// compress within a 256-byte window, so such a client gets every message uncompressed
    /// (always allowed: only messages with RSV1 set are inflated).
    pub fn compress_window(&self) -> Option<u8> {
        (self.server_window >= 9).then_some(self.server_window)
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response(&self) -> String {
        let mut s = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_asked {
            s.push_str(&format!("; server_max_window_bits={}", self.server_window));
        }
        s
    }
}

/// Splits a header value on `sep`, except inside quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// A window size parameter: a decimal 8 to 15 without leading zeros (RFC 7692 §7.1.2), maybe
/// quoted (§7.1: the value may be a quoted-string).
fn window_bits(v: &str) -> Option<u8> {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Checks one `permessage-deflate` offer's parameters; `None` declines it: an unknown
/// parameter, a parameter twice, or a bad value (RFC 7692 §5.1).
fn accept_offer(params: &[&str]) -> Option<Agreed> {
    let mut seen: Vec<String> = Vec::new();
    let mut agreed = Agreed {
        server_window: 15,
        server_window_asked: false,
    };
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                agreed.server_window = window_bits(v)?;
                agreed.server_window_asked = true;
            }
            // The client can take a limit on its window; our inflater takes any window, so we
            // set none (§7.1.2.2 lets the server leave it out).
            ("client_max_window_bits", v) => {
                if let Some(v) = v {
                    window_bits(v)?;
                }
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreed)
}

/// Picks the first `permessage-deflate` offer this server can accept, in the client's order of
/// preference (RFC 7692 §5); `None` when the client offered none (or none acceptable), and the
/// connection goes on uncompressed.
pub fn negotiate(headers: &HeaderMap) -> Option<Agreed> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| split_outside_quotes(v, ','))
        .find_map(|ext| {
            let mut parts = split_outside_quotes(ext, ';').into_iter();
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            let params: Vec<&str> = parts.filter(|p| !p.trim().is_empty()).collect();
            accept_offer(&params)
        })
}

thread_local! {
    /// One compressor per window size used on this thread (index: bits - 9), made on first use.
    /// Reset before every message, so nothing of one message reaches the next.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    /// Compressed output of the message being compressed (kept for the thread's next message).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The inflater for clients' messages: every client was told `client_no_context_takeover`,
    /// so one inflater per thread, reset per message, serves every connection.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compresses `payload` as one message (a fresh context, sync flush, the 4-byte tail removed,
/// RFC 7692 §7.2.1) with an LZ77 window of `window` bits (9 to 15), and hands the compressed
/// bytes to `f` (they live in a per-thread buffer). `None` when compressing does not make the
/// message smaller: sending it plain is then the better choice.
pub fn compress<R>(payload: &[u8], window: u8, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let window = window.clamp(9, 15);
    COMPRESSORS.with(|cs| {
        SCRATCH.with(|scratch| {
            let mut cs = cs.borrow_mut();
            let c = cs[usize::from(window - 9)].get_or_insert_with(|| {
                Compress::new_with_window_bits(Compression::new(LEVEL), false, window)
            });
            let mut out = scratch.borrow_mut();
            out.clear();
            c.reset();
            // The 64 bytes cover block headers and the flush's empty block.
            out.reserve(payload.len() + 64);
            loop {
                let done = c.total_in() as usize;
                if c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
                    .is_err()
                {
                    return None;
                }
                // Finished once every byte went in and the flush had room to complete.
                if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(1024);
            }
            if !out.ends_with(&TAIL) {
                return None;
            }
            let body = &out[..out.len() - TAIL.len()];
            if body.len() >= payload.len() {
                return None;
            }
            let r = f(body);
            // A huge message leaves a huge buffer; do not keep it for the thread's next one.
            if out.capacity() > 256 * 1024 {
                *out = Vec::new();
            }
            Some(r)
        })
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (a deflate bomb, or just too big): 1009.
    TooBig,
    /// Not a valid DEFLATE stream: 1007.
    Malformed(String),
}

/// Inflates one message (its frames' payloads together, without the removed tail) and appends
/// it to `out`, stopping as soon as it passes `max` bytes: memory stays bounded by the limit
/// whatever the ratio.
pub fn inflate(compressed: &[u8], max: usize, out: &mut BytesMut) -> Result<(), InflateError> {
    INFLATER.with(|slot| {
        let mut slot = slot.borrow_mut();
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let start = out.len();
        // Output grows in steps, so a small message costs a small buffer and a bomb stops one
        // byte past the limit instead of at its claimed size.
        let mut step = (compressed.len() * 4).clamp(256, 64 * 1024);
        for input in [compressed, &TAIL[..]] {
            let mut fed = 0;
            loop {
                let produced = out.len() - start;
                let room = (max + 1 - produced).min(step);
                let at = out.len();
                out.resize(at + room, 0);
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d.decompress(&input[fed..], &mut out[at..], FlushDecompress::Sync);
                let wrote = (d.total_out() - out0) as usize;
                let took = (d.total_in() - in0) as usize;
                out.truncate(at + wrote);
                let status = status.map_err(|e| InflateError::Malformed(e.to_string()))?;
                fed += took;
                if out.len() - start > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    return Ok(());
                }
                // Done with this input once it is all in and the output was not the limit.
                if (fed == input.len() && wrote < room) || (wrote == 0 && took == 0) {
                    break;
                }
                step = (step * 2).min(1 << 20);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offer(values: &[&str]) -> Option<Agreed> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        negotiate(&h)
    }

    fn response(values: &[&str]) -> Option<String> {
        offer(values).map(|a| a.response())
    }

    #[test]
    fn accepts_a_plain_offer_without_context_takeover_either_way() {
        assert_eq!(
            response(&["permessage-deflate"]).unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // What Chromium and Firefox send.
        assert_eq!(
            response(&["permessage-deflate; client_max_window_bits"]).unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn a_limit_on_our_window_is_answered_and_honoured() {
        let a = offer(&["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(a.compress_window(), Some(10));
        assert!(a.response().ends_with("; server_max_window_bits=10"));
        let a = offer(&["permessage-deflate; server_max_window_bits=\"8\""]).unwrap();
        assert_eq!(a.compress_window(), None, "8 bits: sent uncompressed");
        assert!(a.response().ends_with("; server_max_window_bits=8"));
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery_param",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
        // Several offers in one header or several: the first acceptable one wins.
        let a = offer(&[
            "permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=12",
        ])
        .unwrap();
        assert_eq!(a.server_window, 12);
        let a = offer(&[
            "foo, permessage-deflate; bogus",
            "permessage-deflate; client_max_window_bits=9; server_max_window_bits=11",
        ])
        .unwrap();
        assert_eq!(a.server_window, 11);
        assert_eq!(offer(&[]), None);
    }

    fn deflated(payload: &[u8], window: u8) -> Option<Vec<u8>> {
        compress(payload, window, <[u8]>::to_vec)
    }

    #[test]
    fn a_message_compresses_and_inflates_back_in_every_window() {
        let text = "{\"type\":\"progress\",\"percent\":40}".repeat(40);
        for window in 9..=15 {
            let body = deflated(text.as_bytes(), window).unwrap();
            assert!(body.len() < text.len() / 5, "{} bytes", body.len());
            let mut out = BytesMut::new();
            inflate(&body, 1 << 20, &mut out).unwrap();
            assert_eq!(&out[..], text.as_bytes());
        }
    }

    #[test]
    fn incompressible_payloads_stay_plain() {
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(deflated(&noise, 15), None);
        assert_eq!(deflated(b"", 15), None);
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let body = deflated(&vec![0u8; 10 << 20], 15).unwrap();
        assert!(body.len() < 20_000, "{} bytes", body.len());
        let mut out = BytesMut::new();
        assert_eq!(
            inflate(&body, 64 * 1024, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() < 2 * 64 * 1024 + 4096, "{}", out.capacity());
        // The same inflater is clean for the next message.
        let ok = deflated(&[7u8; 1000], 15).unwrap();
        let mut out = BytesMut::new();
        inflate(&ok, 1000, &mut out).unwrap();
        assert_eq!(&out[..], &[7u8; 1000][..]);
    }

    #[test]
    fn a_malformed_stream_is_reported() {
        // BTYPE 11 is reserved (RFC 1951 §3.2.3).
        let mut out = BytesMut::new();
        assert!(matches!(
            inflate(&[0xff, 0xff, 0xff], 1024, &mut out),
            Err(InflateError::Malformed(_))
        ));
    }
}
