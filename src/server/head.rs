//! Reading the first request head ourselves, before hyper sees the connection, so that the two
//! failures hyper would answer without a word get a status and a sentence: a head over
//! `server.max_header_bytes` (431) and a client that stalls mid-head (408).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Why no request head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed (or sent nothing before the timeout): nothing to answer.
    Gone,
    TooLarge(usize),
    Timeout,
}

/// Reads until the end of the first request head; returns every byte read (the head and
/// anything pipelined after it), to be replayed to hyper.
pub async fn read_head(
    io: &mut TcpStream,
    max: usize,
    timeout: Duration,
) -> Result<BytesMut, HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    let res = tokio::time::timeout(timeout, async {
        loop {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buf.capacity().max(1024));
            }
            let scan_from = buf.len().saturating_sub(3);
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(HeadError::Gone),
                Ok(_) => {}
            }
            if buf[scan_from..].windows(4).any(|w| w == b"\r\n\r\n") {
                let end = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("found above")
                    + 4;
                if end > max {
                    return Err(HeadError::TooLarge(end));
                }
                return Ok(());
            }
            if buf.len() > max {
                return Err(HeadError::TooLarge(buf.len()));
            }
        }
    })
    .await;
    match res {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) if buf.is_empty() => Err(HeadError::Gone),
        Err(_) => Err(HeadError::Timeout),
    }
}

/// Writes a complete `Connection: close` text response, with `extra` header fields, and closes
/// the write side.
pub async fn reply_and_close(
    io: &mut TcpStream,
    status: http::StatusCode,
    extra: &[(&str, &str)],
    body: &str,
) {
    let mut fields = String::new();
    for (n, v) in extra {
        fields.push_str(&format!("{n}: {v}\r\n"));
    }
    let resp = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{fields}Connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.shutdown().await;
    // Drain briefly so the unread part of the request does not turn our answer into a reset.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A TCP stream that first replays bytes already read from it.
#[derive(Debug)]
pub struct Rewind {
    prefix: Bytes,
    pub inner: TcpStream,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Rewind { prefix, inner }
    }

    /// The stream and whatever of the prefix was not consumed.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.inner, self.prefix)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
