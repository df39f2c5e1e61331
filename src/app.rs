//! Wiring and the start/stop order: load, build every part from the config (broker, hub,
//! heartbeat, proxy, API, server), bind, log the address, run, and on SIGTERM/SIGINT stop
//! accepting, send every client Close 1001, drain within `server.shutdown_grace`, exit.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::broker::Broker;
use crate::broker::memory::{self, Memory};
use crate::broker::policy::{GroupPattern, Policies, StreamPolicy};
use crate::config::{BrokerKind, Config};
use crate::hub::Hub;
use crate::lifecycle::{Shutdown, raise_nofile_limit};
use crate::proxy::Proxy;
use crate::server::{Parts, Server, listener, shutdown};
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
    #[error(
        "cannot listen on {addr} for the admin listener: {source}; stop the other process or change admin.listen"
    )]
    AdminBind {
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

/// A running server, for tests and for `serve_blocking`. It derefs to a [`Handle`], whose
/// accessors tell what the server holds.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `[admin] listen` is set.
    pub admin_addr: Option<SocketAddr>,
    handle: Handle,
    accept: JoinHandle<()>,
    /// The heartbeat wheels, the active health checks.
    tasks: Vec<JoinHandle<()>>,
}

/// A cheap handle on a running server that outlives [`Running::shutdown`]: what it holds now.
#[derive(Debug, Clone)]
pub struct Handle(Arc<Server>);

impl Handle {
    /// WebSocket connections open (or being upgraded) on hub routes.
    pub fn open_connections(&self) -> usize {
        self.0.open_connections()
    }

    /// Proxy tunnels open (or being set up).
    pub fn open_tunnels(&self) -> usize {
        self.0.proxy.open_tunnels()
    }

    /// Members of `group` on this node.
    pub fn member_count(&self, group: &str) -> usize {
        self.0.hub.member_count(group)
    }

    /// Groups with at least one member on this node.
    pub fn group_count(&self) -> usize {
        self.0.hub.group_count()
    }

    /// Whether server `server` of upstream `upstream` (indexes in config order) takes traffic.
    pub fn upstream_is_up(&self, upstream: usize, server: usize) -> bool {
        self.0.proxy.upstreams[upstream].is_up(server)
    }

    /// Publishes a text message as the API does; the local members that took it.
    pub async fn publish_text(&self, group: &str, text: &str) -> usize {
        let p = crate::broker::Publication::new(
            group,
            bytes::Bytes::copy_from_slice(text.as_bytes()),
            crate::broker::Kind::Text,
        );
        self.0
            .hub
            .publish(p)
            .await
            .map_or(0, |r| r.local_recipients)
    }
}

impl Running {
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Deref for Running {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

/// Which groups keep history, from the hub routes that ask for it (first route wins).
fn policies(config: &Config) -> Policies {
    Policies::new(
        config
            .effective_routes()
            .iter()
            .filter_map(|r| {
                let h = r.history?;
                let template = r.group.as_deref()?;
                Some((
                    GroupPattern::new(template),
                    StreamPolicy {
                        size: h.size,
                        ttl: h.ttl.get(),
                    },
                ))
            })
            .collect(),
    )
}

/// The broker `config` asks for.
fn broker(config: &Config) -> Arc<dyn Broker> {
    match config.broker.kind {
        BrokerKind::Memory => {
            // In process: up for as long as wsgate is.
            crate::metrics::broker_up(true);
            Arc::new(Memory::new(memory::Settings {
                policies: policies(config),
                max_bytes: config.hub.history_max_bytes,
                meta_ttl: config.hub.history_meta_ttl.get(),
            }))
        }
    }
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
    let shutdown = Shutdown::new();
    let broker = broker(&config);
    let broker_task = broker.clone().background();
    let hub = Hub::new(broker);
    let ws = &config.websocket;
    let heartbeat = Heartbeat::new(ws.ping_interval.get(), ws.pong_timeout.get());
    let proxy = Arc::new(Proxy::new(&config, &shutdown));
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    proxy
        .start_engines(config.proxy.tunnel_io, threads)
        .map_err(StartError::IoUring)?;
    let api = Api::new(hub.clone(), &config);
    let server = Arc::new(Server::new(
        config.clone(),
        Parts {
            hub,
            heartbeat: heartbeat.clone(),
            proxy: proxy.clone(),
            api,
            shutdown,
        },
    ));
    let admin = match admin_listener(&config)? {
        Some(l) => {
            let a = l.local_addr().map_err(|source| StartError::AdminBind {
                addr: config.admin.listen.clone(),
                source,
            })?;
            Some((a, l))
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(a, _)| *a);
    let accept = tokio::spawn(listener::serve(listener, server.clone()));
    let mut tasks = vec![
        tokio::spawn(heartbeat.run()),
        tokio::spawn(proxy.tunnels.heartbeat.clone().run()),
        tokio::spawn(proxy.clone().run_health_checks()),
    ];
    tasks.extend(broker_task.map(tokio::spawn));
    // The admin listener outlives the drain (so `/readyz` answers 503 during it) and stops
    // with the other background tasks.
    if let Some((_, l)) = admin {
        tasks.push(tokio::spawn(
            crate::admin::Admin::new(server.clone()).serve(l),
        ));
    }
    Ok(Running {
        addr,
        admin_addr,
        handle: Handle(server),
        accept,
        tasks,
    })
}

/// The admin listener, bound, when the config asks for one.
fn admin_listener(config: &Config) -> Result<Option<TcpListener>, StartError> {
    if config.admin.listen.is_empty() {
        return Ok(None);
    }
    let bind_err = |source| StartError::AdminBind {
        addr: config.admin.listen.clone(),
        source,
    };
    let addr = crate::config::parse_listen(&config.admin.listen)
        .map_err(|m| bind_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m)))?;
    crate::admin::bind(addr).map(Some).map_err(bind_err)
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
        let server = &self.handle.0;
        server.shutdown.begin();
        let _ = self.accept.await;
        let grace = server.config.server.shutdown_grace.get();
        let clean = shutdown::drain(server, grace).await;
        for t in &self.tasks {
            t.abort();
        }
        clean
    }
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
        if let Some(a) = running.admin_addr {
            tracing::info!("admin listening on http://{a} (console at /, /healthz, /readyz, /metrics)");
        }
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down: no new connections, closing WebSockets with 1001");
        let grace = running.handle.0.config.server.shutdown_grace;
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
