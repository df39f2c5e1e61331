//! Byte streams for the HTTP/2 steps: [`Tunnel`] turns one HTTP/2 stream (an extended CONNECT's
//! request and response bodies) into `AsyncRead + AsyncWrite`, so that the frame steps of
//! `session.rs` and `idle.rs` run over it unchanged; [`Tap`] keeps the first bytes a connection
//! received, so that an answer that is not HTTP/2 (an HTTP/1.1 error to the preface) can be
//! shown as it came.
//!
//! Flow control follows the `h2` crate's rules: received bytes are released as they are read
//! (so the server's window reopens as doctor consumes), and writes wait for send capacity.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One HTTP/2 stream as a byte stream: reads are the response body's DATA, writes are the
/// request body's DATA, shutdown ends the request body (END_STREAM).
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// DATA received and not read yet.
    pending: Bytes,
}

impl Tunnel {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Tunnel {
            send,
            recv,
            pending: Bytes::new(),
        }
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

/// An `h2` error as an I/O error that `session.rs` can describe: a reset stream or a GOAWAY
/// keep their HTTP/2 names, since TCP itself may be fine.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_reset() || e.is_go_away() {
        let what = if e.is_reset() { "RST_STREAM" } else { "GOAWAY" };
        let who = if e.is_remote() {
            "the server sent"
        } else {
            "doctor sent"
        };
        let reason = e.reason().map(|r| format!(" {r:?}")).unwrap_or_default();
        return io::Error::other(format!("{who} HTTP/2 {what}{reason}"));
    }
    match e.into_io() {
        Some(io) => io,
        None => io::Error::other("HTTP/2 protocol error"),
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                // END_STREAM: the server ended its side, as a FIN would.
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                Some(Ok(data)) => {
                    // Released now: the bytes are doctor's, and the window reopens for more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) => {
                let n = n.min(buf.len());
                match self
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(e) => Poll::Ready(Err(io_error(e))),
                }
            }
            Some(Err(e)) => Poll::Ready(Err(io_error(e))),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes what `send_data` queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Ending an already ended stream is no news worth an error.
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// Bytes kept from the start of a connection.
const TAPPED: usize = 256;

/// A connection that remembers the first bytes it read; see [`Tap::seen`].
#[derive(Debug)]
pub struct Tap<S> {
    io: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S> Tap<S> {
    pub fn new(io: S) -> Self {
        Tap {
            io,
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A handle on the first bytes read, still readable after the connection moved into the
    /// HTTP/2 connection task.
    pub fn seen(&self) -> Arc<Mutex<Vec<u8>>> {
        self.seen.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let room = TAPPED.saturating_sub(seen.len());
        let new = &buf.filled()[before..];
        seen.extend_from_slice(&new[..new.len().min(room)]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
