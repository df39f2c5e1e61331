//! `read_timeout` between two reads of an upstream's response body, as nginx's
//! `proxy_read_timeout` ("set only between two successive read operations"): a body that stalls
//! longer is cut with an error, so the client sees a broken response (no final chunk, or fewer
//! bytes than `Content-Length`) and its connection is freed, instead of hanging forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct ReadIdle {
    limit: Duration,
    /// Armed at the first wait, then moved on at each progress: one timer per body, not one
    /// per read.
    timer: Option<Pin<Box<Sleep>>>,
}

impl ReadIdle {
    pub fn new(limit: Duration) -> Self {
        ReadIdle { limit, timer: None }
    }

    /// Bytes arrived: the next wait is measured from now.
    pub fn progress(&mut self) {
        if let Some(t) = &mut self.timer {
            t.as_mut().reset(Instant::now() + self.limit);
        }
    }

    /// The read is waiting: an error once `limit` has passed without progress, else the waker
    /// is registered for the deadline too.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let limit = self.limit;
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if t.as_mut().poll(cx).is_ready() {
            tracing::warn!(
                ?limit,
                "upstream stalled in the middle of a response body; cutting it (read_timeout)"
            );
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the upstream sent nothing for {limit:?} in the middle of the body (read_timeout)"
                ),
            ));
        }
        Ok(())
    }
}
