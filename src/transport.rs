//! The byte streams sessions and tunnels run on: the [`Transport`] trait, implemented for plain
//! TCP (the fast path), for any upgraded hyper connection and for in-memory pipes, and
//! [`Rewind`], a stream that first replays bytes already read from it.
//!
//! Plain TCP keeps its readiness-based reads and vectored writes (one `recv` or `writev` per
//! step, readiness cleared on a short read so an idle socket costs no extra syscall); any other
//! stream (TLS, an HTTP/2 stream, a test pipe) goes through `AsyncRead`/`AsyncWrite`. io_uring
//! takes a connection only when it is plain TCP on both sides ([`Transport::into_tcp`]).
//!
//! A leaf: nothing about HTTP routes, frames or groups lives here.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A connection a WebSocket session or a proxy tunnel can run on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Reads what is available into `buf`; `Ready(Ok(0))` is the end of the stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(self).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    /// Writes from `bufs` in order; returns how many bytes were taken.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, bufs)
    }

    /// WebSocket frames are small and latency-bound: no Nagle delay where there is one.
    fn set_nodelay(&self) {}

    /// The connection is being given up with data still unsent (a peer that stopped reading):
    /// make the close a reset, so the kernel frees the buffers at once instead of retrying.
    fn abort(&mut self) {}

    /// The plain TCP socket, when this transport is nothing more (io_uring needs a bare fd).
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl Transport for TcpStream {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            match read_clearing(self, buf) {
                // The readiness was cleared but no waker is registered yet: poll it again so it
                // is, or the task would sleep until something else woke it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }

    fn abort(&mut self) {
        reset_on_close(self.as_fd());
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl Transport for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

impl Transport for tokio::io::DuplexStream {}

/// A TLS connection from the listener: no io_uring (rustls works on the bytes in user space),
/// but the socket's options still apply.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn set_nodelay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }

    fn abort(&mut self) {
        reset_on_close(self.get_ref().0.as_fd());
    }
}

/// Makes closing `sock` a reset (SO_LINGER 0): the kernel drops what is unsent at once. A
/// failure only means the close stays graceful.
pub fn reset_on_close(sock: BorrowedFd<'_>) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` (a live local of the size passed) on a descriptor the
    // caller keeps open for the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
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

/// What an [`Inspect`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep showing it what is read.
    More,
    /// It has stepped aside: bytes pass untouched from now on.
    Done,
    /// The stream ends after what it gave out.
    End,
}

/// Sees the bytes read through a [`Rewind`] before its reader does, and decides what the
/// reader gets: it may hold bytes back, replace them, or end the stream.
pub trait Inspect: Send + std::fmt::Debug {
    /// Takes bytes just read; appends to `out` what the reader may have now.
    fn inspect(&mut self, input: &[u8], out: &mut BytesMut) -> Flow;
}

/// A stream that first replays bytes already read from it, optionally through an [`Inspect`].
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
    inspect: Option<Box<dyn Inspect>>,
    ended: bool,
    /// After an [`Flow::End`]: how long a close may drain what the peer still sends, so that
    /// unread input does not turn the last answer into a reset.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a stream ended by its [`Inspect`] drains the peer when closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind {
            prefix,
            inner,
            inspect: None,
            ended: false,
            linger: None,
        }
    }

    /// Like [`Rewind::new`], with every byte (the prefix first) going through `inspect`.
    pub fn inspected(prefix: &[u8], inner: S, mut inspect: Box<dyn Inspect>) -> Self {
        let mut out = BytesMut::new();
        let flow = inspect.inspect(prefix, &mut out);
        let mut r = Rewind::new(out.freeze(), inner);
        r.follow(flow, inspect);
        r
    }

    fn follow(&mut self, flow: Flow, inspect: Box<dyn Inspect>) {
        match flow {
            Flow::More => self.inspect = Some(inspect),
            Flow::Done => self.inspect = None,
            Flow::End => {
                self.inspect = None;
                self.ended = true;
            }
        }
    }

    /// The stream and whatever of the prefix was not consumed.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.prefix.is_empty() {
                let n = self.prefix.len().min(buf.remaining());
                buf.put_slice(&self.prefix[..n]);
                self.prefix.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                // Not an end of stream: hyper would close at once and drop what it buffered
                // (the stand-in its refusal answers). The last request it got says
                // `Connection: close`, so it reads no more; closing drains the peer.
                return Poll::Pending;
            }
            let Some(mut inspect) = self.inspect.take() else {
                return Pin::new(&mut self.inner).poll_read(cx, buf);
            };
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            let read = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            match read {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let mut out = BytesMut::new();
                    let flow = inspect.inspect(rb.filled(), &mut out);
                    self.prefix = out.freeze();
                    self.follow(flow, inspect);
                }
                other => {
                    self.inspect = Some(inspect);
                    return other;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        if self.linger.is_none() {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        // Drain until the peer closes too, or the linger passes.
        loop {
            if self
                .linger
                .as_mut()
                .is_some_and(|l| l.as_mut().poll(cx).is_ready())
            {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => {}
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_its_prefix_before_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), a);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }

    #[tokio::test]
    async fn an_aborted_tcp_stream_resets_its_peer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        Transport::abort(&mut s);
        drop(s);
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
    }
}
