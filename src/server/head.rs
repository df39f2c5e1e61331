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

/// Where the head ends (after its blank line), searching from `from`: CRLF CRLF, or a bare LF
/// line ending anywhere in it (RFC 9112 §2.2 lets a recipient take a bare LF as a line end, and
/// hyper behind does).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
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
            if let Some(end) = head_end(&buf, scan_from) {
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

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn a_head_ends_at_its_blank_line_whatever_the_line_endings() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nrest", 0), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\r\n", 0), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }
}
