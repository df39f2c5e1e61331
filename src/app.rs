//! Wiring and the start/stop order: load, bind, log the address, run, and on SIGTERM/SIGINT stop
//! accepting, send every client Close 1001, drain within `server.shutdown_grace`, exit.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::hub::Hub;
use crate::server::{self, Shared};
use crate::ws::Heartbeat;

/// Failures that stop wsgate from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}; stop the other process or change server.listen")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "proxy.tunnel_io = \"io_uring\" but this kernel refuses io_uring ({0}); set proxy.tunnel_io to \"auto\" or \"epoll\", or allow io_uring (sysctl kernel.io_uring_disabled, the container's seccomp profile)"
    )]
    IoUring(#[source] std::io::Error),
}

/// A running server, for tests and for `serve_blocking`.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    /// The tunnel heartbeat wheel and the active health checks.
    proxy_tasks: Vec<JoinHandle<()>>,
}

/// Binds and starts serving; returns once the listener is bound.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let addr =
        crate::config::parse_listen(&config.server.listen).map_err(|m| StartError::Bind {
            addr: config.server.listen.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
        })?;
    let listener = bind(addr).map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let hub = Arc::new(Hub::new(Arc::new(crate::broker::Memory)));
    let heartbeat = Heartbeat::new(
        config.websocket.ping_interval.get(),
        config.websocket.pong_timeout.get(),
    );
    let shared = Arc::new(Shared::new(config, hub, heartbeat.clone()));
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    shared
        .proxy
        .start_engines(shared.config.proxy.tunnel_io, threads)
        .map_err(StartError::IoUring)?;
    let (stop, stop_rx) = watch::channel(false);
    let accept = tokio::spawn(server::serve(listener, shared.clone(), stop_rx));
    let heartbeat = tokio::spawn(heartbeat.run());
    let proxy_tasks = vec![
        tokio::spawn(shared.proxy.heartbeat.clone().run()),
        tokio::spawn(shared.proxy.clone().run_health_checks()),
    ];
    Ok(Running {
        addr,
        shared,
        stop,
        accept,
        heartbeat,
        proxy_tasks,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    // The kernel caps this at net.core.somaxconn; a deep queue absorbs connection bursts.
    sock.listen(4096)
}

impl Running {
    /// Stops accepting, closes every WebSocket with 1001 and waits up to the grace period.
    /// Returns whether every connection finished in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        let grace = self.shared.config.server.shutdown_grace.get();
        let clean = server::drain(&self.shared, grace).await;
        self.heartbeat.abort();
        for t in &self.proxy_tasks {
            t.abort();
        }
        clean
    }
}

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Runs the server until SIGTERM or SIGINT, then drains. Used by `wsgate serve`.
pub fn serve_blocking(config: Config) -> Result<(), StartError> {
    let nofile = raise_nofile_limit();
    let needed = config.server.max_connections as u64 + 64;
    if nofile > 0 && nofile < needed {
        tracing::warn!(
            nofile,
            max_connections = config.server.max_connections,
            "the open files limit is below server.max_connections + 64; connections past it will fail to accept. Raise `ulimit -n` or lower server.max_connections"
        );
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        rt.worker_threads(config.server.workers);
    }
    let rt = rt.enable_all().build().map_err(StartError::Runtime)?;
    rt.block_on(async move {
        let running = start(config).await?;
        tracing::info!(
            "wsgate listening on http://{} (demo page at /, publish with POST /api/groups/{{group}}/messages)",
            running.addr
        );
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down: no new connections, closing WebSockets with 1001");
        let grace = running.shared.config.server.shutdown_grace;
        if running.shutdown().await {
            tracing::info!("all connections closed; bye");
        } else {
            tracing::warn!(%grace, "some connections were still open after server.shutdown_grace; exiting anyway");
        }
        Ok::<(), StartError>(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail on unix");
    let mut int =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail on unix");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
