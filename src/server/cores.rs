//! Per-core workers (`server.runtime = "per_core"`): one thread per worker, each
//! running a single-threaded tokio runtime and accepting on its own listening socket, all bound
//! to the server's address with `SO_REUSEPORT`. The kernel spreads new connections over the
//! sockets; a connection then lives on the thread that accepted it, so its reads, its writes,
//! its timers and the wake-ups of its own frames never cross threads and no run queue is shared
//! or stolen from. A publication made on another worker still reaches it: the member's waker
//! posts the task to this worker's runtime and wakes its thread.
//!
//! Measured next to tokio's work-stealing runtime, the default (BENCHMARKS.md, "Per core or work
//! stealing"): as many handshakes per second or more, but a fan-out to thousands runs at a quarter of the
//! rate: the publisher's own request waits on its worker's queue behind every member it woke
//! there (a single-threaded runtime runs its tasks in order, and nobody else may take them).
//!
//! This module knows how to bind and run the workers, not what a connection does: each worker
//! runs [`super::listener::serve`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::listener;
use super::state::Server;

/// The running workers. Dropping this stops them: each runtime ends, and with it every task
/// still on it.
#[derive(Debug)]
pub struct Cores {
    stop: watch::Sender<bool>,
    accepting: Vec<oneshot::Receiver<()>>,
}

/// `n` listening sockets on `addr` (port 0: the port the first one got), each with
/// `SO_REUSEPORT` so the kernel spreads connections over them.
///
/// # Errors
/// The first socket that could not be made, bound or set listening.
pub fn bind(addr: SocketAddr, backlog: u32, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let at = match out.first() {
            Some(first) => first.local_addr()?,
            None => addr,
        };
        let sock = socket(at)?;
        sock.set_reuseport(true)?;
        sock.bind(at)?;
        // tokio's `listen` would register the socket with the calling thread's runtime; the
        // worker that accepts on it registers it with its own.
        // SAFETY: a valid socket descriptor owned by `sock` for the duration of the call.
        if unsafe { libc::listen(sock.as_raw_fd(), backlog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is moved out of `sock`, which no longer closes it.
        out.push(unsafe { std::net::TcpListener::from_raw_fd(sock.into_raw_fd()) });
    }
    Ok(out)
}

/// A TCP socket for listening on `addr` (its family), with `SO_REUSEADDR` so a restart can bind
/// while old connections are in TIME_WAIT.
///
/// # Errors
/// The socket could not be made or set.
pub fn socket(addr: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    Ok(sock)
}

impl Cores {
    /// Starts one worker thread per listener, each accepting on its own.
    ///
    /// # Errors
    /// A runtime or thread that could not be started (the ones started are stopped again).
    pub fn start(listeners: Vec<std::net::TcpListener>, server: &Arc<Server>) -> io::Result<Cores> {
        let (stop, stopped) = watch::channel(false);
        let mut cores = Cores {
            stop,
            accepting: Vec::with_capacity(listeners.len()),
        };
        for (i, l) in listeners.into_iter().enumerate() {
            // Built here so a failure stops the start instead of one silent worker.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (accepted, accepting) = oneshot::channel();
            cores.accepting.push(accepting);
            let (server, mut stopped) = (server.clone(), stopped.clone());
            std::thread::Builder::new()
                .name(format!("wsgate-worker-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        match l
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpListener::from_std(l))
                        {
                            Ok(l) => listener::serve(l, server).await,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "a worker could not take its listening socket; the others go on accepting");
                            }
                        }
                        let _ = accepted.send(());
                        // The connections accepted here live on this runtime: it runs until
                        // the server is stopped, not just until accepting ends.
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                })?;
        }
        Ok(cores)
    }

    /// Resolves once every worker stopped accepting (shutdown began).
    pub async fn stopped_accepting(&mut self) {
        for a in std::mem::take(&mut self.accepting) {
            let _ = a.await;
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
