//! Canonical header-name casing on the wire toward upstreams: hyper writes header names in
//! lower case (or, with title case, `Sec-Websocket-Key`), and some WebSocket servers compare
//! names case-sensitively. [`CaseIo`] rewrites the names of the first request head it writes to
//! `Sec-WebSocket-Key` style while keeping every length, so hyper's byte counts stay right
//! (Caddy PR #6621 and Traefik normalise for the same reason).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where the rewriter is in the request head.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    done: bool,
    in_name: bool,
    /// Position within the current `-`-separated part of a name.
    seg_pos: u8,
    /// The first three bytes of the part, lower-cased (to spot "websocket").
    seg: [u8; 3],
    /// The last four bytes, to find the end of the head.
    tail: [u8; 4],
}

impl State {
    /// Rewrites one byte and advances.
    fn step(&mut self, b: u8) -> u8 {
        if self.done {
            return b;
        }
        self.tail = [self.tail[1], self.tail[2], self.tail[3], b];
        if &self.tail == b"\r\n\r\n" {
            self.done = true;
            return b;
        }
        let mut out = b;
        if b == b'\n' {
            self.in_name = true;
            self.seg_pos = 0;
        } else if self.in_name {
            if b == b':' || b == b'\r' {
                self.in_name = false;
            } else if b == b'-' {
                self.seg_pos = 0;
            } else {
                let lower = b.to_ascii_lowercase();
                out = if self.seg_pos == 0 {
                    b.to_ascii_uppercase()
                } else if self.seg_pos == 3 && &self.seg == b"web" && lower == b's' {
                    // The "S" of "WebSocket".
                    b'S'
                } else {
                    lower
                };
                if (self.seg_pos as usize) < 3 {
                    self.seg[self.seg_pos as usize] = lower;
                }
                self.seg_pos = self.seg_pos.saturating_add(1);
            }
        }
        out
    }
}

/// A TCP stream whose first request head is written with canonical header-name casing.
#[derive(Debug)]
pub struct CaseIo {
    pub inner: TcpStream,
    state: State,
}

impl CaseIo {
    pub fn new(inner: TcpStream) -> Self {
        CaseIo {
            inner,
            state: State::default(),
        }
    }
}

/// Rewrites a whole head (for tests and the doc).
#[cfg(test)]
fn canonical_head(head: &[u8]) -> Vec<u8> {
    let mut s = State::default();
    head.iter().map(|b| s.step(*b)).collect()
}

impl AsyncRead for CaseIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CaseIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.done {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        // Rewrite a copy with a copy of the state; only the bytes actually written advance it.
        let mut trial = self.state;
        let rewritten: Vec<u8> = buf.iter().map(|b| trial.step(*b)).collect();
        let res = Pin::new(&mut self.inner).poll_write(cx, &rewritten);
        if let Poll::Ready(Ok(n)) = res {
            for b in &buf[..n] {
                self.state.step(*b);
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_get_canonical_case_and_values_stay() {
        let head = b"GET /chat?x=websocket HTTP/1.1\r\nhost: a\r\nsec-websocket-key: abc\r\nsec-websocket-version: 13\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-forwarded-for: 1.2.3.4\r\n\r\nbody-bytes: stay";
        let out = String::from_utf8(canonical_head(head)).unwrap();
        assert_eq!(
            out,
            "GET /chat?x=websocket HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nbody-bytes: stay"
        );
    }

    #[test]
    fn rewriting_is_the_same_when_split_across_writes() {
        let head = b"GET / HTTP/1.1\r\nsec-websocket-protocol: chat\r\n\r\n";
        let whole = canonical_head(head);
        let mut s = State::default();
        let mut parts = Vec::new();
        for chunk in head.chunks(3) {
            parts.extend(chunk.iter().map(|b| s.step(*b)));
        }
        assert_eq!(parts, whole);
    }
}
