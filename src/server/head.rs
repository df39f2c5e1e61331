//! Reading the first request head ourselves, before hyper sees the connection, so that the two
//! failures hyper would answer without a word get a status and a sentence: a head over
//! `server.max_header_bytes` (431) and a client that stalls mid-head (408).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

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
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
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
