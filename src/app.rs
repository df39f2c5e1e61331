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
use crate::broker::redis;
use crate::config::{BrokerKind, Config, Runtime};
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::lifecycle::{Shutdown, raise_nofile_limit};
use crate::metrics::METRICS;
use crate::proxy::Proxy;
use crate::server::tls::Tls;
use crate::server::{Parts, Server, cores, listener, shutdown};
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
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(transparent)]
    Jwt(#[from] crate::auth::JwtError),
    #[error(transparent)]
    UpstreamTls(#[from] crate::proxy::tls::SetupError),
    #[error(transparent)]
    Broker(#[from] crate::broker::redis::ConnectError),
}

/// A running server, for tests and for `serve_blocking`. It derefs to a [`Handle`], whose
/// accessors tell what the server holds.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `[admin] listen` is set.
    pub admin_addr: Option<SocketAddr>,
    handle: Handle,
    accept: Accept,
    /// The heartbeat wheels, the active health checks.
    tasks: Vec<JoinHandle<()>>,
}

/// Who accepts: one task on the caller's runtime (`work_stealing`) or a thread per worker.
#[derive(Debug)]
enum Accept {
    Task(JoinHandle<()>),
    Cores(crate::server::cores::Cores),
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

    /// This node's id (the first part of the connection ids presence shows).
    pub fn node(&self) -> u64 {
        self.0.hub.node()
    }

    /// Groups with at least one member on this node.
    pub fn group_count(&self) -> usize {
        self.0.hub.group_count()
    }

    /// Whether server `server` of upstream `upstream` (indexes in config order) takes traffic.
    pub fn upstream_is_up(&self, upstream: usize, server: usize) -> bool {
        self.0.proxy.upstreams[upstream].is_up(server)
    }

    /// Reads the TLS certificate and key files again (what SIGHUP does); live connections stay.
    ///
    /// # Errors
    /// Why the files could not be used (the certificates in use stay), or that TLS is off.
    pub fn reload_tls(&self) -> Result<(), crate::server::tls::TlsError> {
        match &self.0.tls {
            Some(t) => t.reload(),
            None => Err(crate::server::tls::TlsError::Config(
                "TLS is off; nothing to reload".into(),
            )),
        }
    }

    /// `https` with `[server.tls]`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.0.tls.is_some() {
            "https"
        } else {
            "http"
        }
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

/// The broker `config` asks for; a Redis broker is connected (and must answer) before wsgate
/// serves.
async fn broker(config: &Config) -> Result<Arc<dyn Broker>, StartError> {
    let redis = |target| redis::Settings {
        target,
        prefix: config.broker.prefix.clone(),
        policies: policies(config),
        meta_ttl: config.hub.history_meta_ttl.get(),
        presence_ttl: config.broker.presence_ttl.get(),
        timeout: config.broker.timeout.get(),
    };
    Ok(match config.broker.kind {
        BrokerKind::Memory => {
            // In process: up for as long as wsgate is.
            crate::metrics::broker_up(true);
            Arc::new(Memory::new(memory::Settings {
                policies: policies(config),
                max_bytes: config.hub.history_max_bytes,
                meta_ttl: config.hub.history_meta_ttl.get(),
            }))
        }
        BrokerKind::Redis => {
            redis::Redis::connect(redis(redis::Target::Single(config.broker.url.clone()))).await?
        }
        BrokerKind::RedisCluster => {
            redis::Redis::connect(redis(redis::Target::Cluster(config.broker.nodes.clone())))
                .await?
        }
    })
}

/// Whether the broker `config` names can be reached now (for `check-config`): connects once,
/// within `broker.timeout`, and lets go.
///
/// # Errors
/// The sentence `serve` would stop with.
pub fn reach_broker(config: &Config) -> Result<(), String> {
    if config.broker.kind == BrokerKind::Memory {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to reach the broker: {e}"))?;
    rt.block_on(async { broker(config).await.map(drop).map_err(|e| e.to_string()) })
}

/// Checks what the config names outside itself and `serve` would read (the TLS certificate and
/// key files, the upstreams' CA and client certificates), so `check-config` refuses what would stop `serve`.
///
/// # Errors
/// The first file that cannot be used.
pub fn check_files(config: &Config) -> Result<(), StartError> {
    if let Some(t) = &config.server.tls {
        Tls::new(t)?;
    }
    if let Some(j) = &config.jwt {
        crate::auth::Jwt::new(j)?;
    }
    crate::proxy::state::check_tls(&config.upstreams)?;
    Ok(())
}

/// Binds and starts serving; returns once the listener is bound.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // One crypto provider for the process, installed before anything speaks TLS; a second
    // start in the same process (tests) finds it installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = config;
    resolve_max_connections(&mut config);
    // Resolved once, like max_connections: the runtime, the io_uring engines and the start line
    // read the same count.
    config.server.workers = workers(&config);
    let config = Arc::new(config);
    // Certificates are read before the port is bound: a bad file stops the start with its name.
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(Tls::new(t)?)),
        None => None,
    };
    let jwt = match &config.jwt {
        Some(j) => Some(Arc::new(crate::auth::Jwt::new(j)?)),
        None => None,
    };
    let addr =
        crate::config::parse_listen(&config.server.listen).map_err(|m| StartError::Bind {
            addr: config.server.listen.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
        })?;
    // The kernel caps this at net.core.somaxconn; a deep queue absorbs connection bursts.
    METRICS
        .listen_backlog
        .set(u64::from(config.server.listen_backlog));
    let bind_err = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    };
    let workers = config.server.workers;
    let listeners = match config.server.runtime {
        Runtime::PerCore => Listeners::PerCore(
            cores::bind(addr, config.server.listen_backlog, workers).map_err(bind_err)?,
        ),
        Runtime::WorkStealing => {
            Listeners::One(bind(addr, config.server.listen_backlog).map_err(bind_err)?)
        }
    };
    let addr = match &listeners {
        Listeners::PerCore(l) => l[0].local_addr(),
        Listeners::One(l) => l.local_addr(),
    }
    .map_err(bind_err)?;
    let shutdown = Shutdown::new();
    let broker = broker(&config).await?;
    let broker_task = broker.clone().background();
    let hub = Hub::new(broker);
    let ws = &config.websocket;
    let heartbeat = Heartbeat::new(ws.ping_interval.get(), ws.pong_timeout.get());
    let proxy = Arc::new(Proxy::new(&config, &shutdown)?);
    proxy
        .start_engines(config.proxy.tunnel_io, workers)
        .map_err(StartError::IoUring)?;
    let api = Api::new(hub.clone(), &config);
    let hooks = Hooks::new(&config, hub.clone());
    let server = Arc::new(Server::new(
        config.clone(),
        Parts {
            hub,
            heartbeat: heartbeat.clone(),
            proxy: proxy.clone(),
            api,
            hooks,
            shutdown,
            tls: tls.clone(),
            jwt,
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
    let accept = match listeners {
        Listeners::One(l) => Accept::Task(tokio::spawn(listener::serve(l, server.clone()))),
        Listeners::PerCore(l) => {
            Accept::Cores(cores::Cores::start(l, &server).map_err(StartError::Runtime)?)
        }
    };
    let mut tasks = vec![
        tokio::spawn(heartbeat.run()),
        tokio::spawn(proxy.tunnels.heartbeat.clone().run()),
        tokio::spawn(proxy.clone().run_health_checks()),
    ];
    tasks.extend(broker_task.map(tokio::spawn));
    if let Some(t) = tls {
        tasks.push(tokio::spawn(t.watch(server.shutdown.clone())));
    }
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
    // A few operators, not a crowd: a short accept queue.
    bind(addr, 128).map(Some).map_err(bind_err)
}

/// The listening sockets: one for the work-stealing runtime, one per worker for per-core ones.
enum Listeners {
    One(TcpListener),
    PerCore(Vec<std::net::TcpListener>),
}

/// `server.workers`, with 0 meaning one per core less one (at least one): the core left over
/// does the kernel's share of the network work and runs what shares the machine (the backend, a
/// load generator) without preempting a worker in the middle of its connections. On 2 cores one
/// worker beat two in every figure (BENCHMARKS.md, "Workers, the echo tail and the last idle
/// bytes"); cores the process may not use (a cpuset, taskset) are not counted.
fn workers(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .saturating_sub(1)
            .max(1),
        n => n,
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = cores::socket(addr)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

impl Running {
    /// Stops accepting, closes every WebSocket with 1001 and waits up to the grace period.
    /// Returns whether every connection finished in time.
    pub async fn shutdown(mut self) -> bool {
        let server = &self.handle.0;
        server.shutdown.begin();
        match &mut self.accept {
            Accept::Task(t) => {
                let _ = t.await;
            }
            Accept::Cores(c) => c.stopped_accepting().await,
        }
        let grace = server.config.server.shutdown_grace.get();
        let clean = shutdown::drain(server, grace).await;
        for t in &self.tasks {
            t.abort();
        }
        clean
    }
}

/// `server.max_connections = 0` (the default) becomes the open-files limit less a reserve for
/// listeners, upstreams, Redis and logs; an explicit value above what the limit allows is
/// logged. Both numbers are exported in `/metrics`.
fn resolve_max_connections(config: &mut Config) {
    let nofile = raise_nofile_limit();
    METRICS.nofile_limit.set(nofile);
    let s = &mut config.server;
    if s.max_connections == 0 {
        // Stated in the "listening on" line, which must stay the first.
        s.max_connections = crate::lifecycle::max_connections_for(nofile);
    } else if nofile > 0 && nofile < s.max_connections as u64 + 64 {
        tracing::warn!(
            nofile,
            max_connections = s.max_connections,
            "the open files limit is below server.max_connections + 64; connections past it will fail to accept. Raise `ulimit -n` or lower server.max_connections"
        );
    }
    METRICS.max_connections_limit.set(s.max_connections as u64);
}

/// Runs the server until SIGTERM or SIGINT, then drains. Used by `wsgate serve`.
pub fn serve_blocking(mut config: Config) -> Result<(), StartError> {
    config.server.workers = workers(&config);
    // Per core, connections live on the workers' own runtimes and this one keeps only the
    // background tasks (heartbeat wheels, health checks, broker, admin): one thread is plenty.
    let mut rt = match config.server.runtime {
        Runtime::PerCore => tokio::runtime::Builder::new_current_thread(),
        Runtime::WorkStealing => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(config.server.workers);
            b
        }
    };
    let rt = rt.enable_all().build().map_err(StartError::Runtime)?;
    rt.block_on(async move {
        let running = start(config).await?;
        tracing::info!(
            max_connections = running.handle.0.config.server.max_connections,
            open_files_limit = METRICS.nofile_limit.get(),
            workers = running.handle.0.config.server.workers,
            "wsgate listening on {}://{} (demo page at /, publish with POST /api/groups/{{group}}/messages)",
            running.scheme(),
            running.addr
        );
        if let Some(a) = running.admin_addr {
            tracing::info!("admin listening on http://{a} (console at /, /healthz, /readyz, /metrics)");
        }
        for w in &running.handle.0.config.warnings {
            tracing::warn!("risky setting: {w}");
        }
        let signal = wait_for_signal(&running.handle).await;
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

/// Waits for SIGTERM or SIGINT; SIGHUP meanwhile reloads the TLS certificates.
async fn wait_for_signal(handle: &Handle) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail on unix");
    let mut int =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail on unix");
    let mut hup =
        signal(SignalKind::hangup()).expect("installing a SIGHUP handler cannot fail on unix");
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => match &handle.0.tls {
                Some(t) => t.reload_logged("SIGHUP"),
                None => tracing::info!("SIGHUP: nothing to reload (server.tls is off)"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_default_to_one_per_core_less_one_and_an_explicit_count_is_kept() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut config = Config::default();
        assert_eq!(workers(&config), cores.saturating_sub(1).max(1));
        assert!(workers(&config) >= 1);
        config.server.workers = 3;
        assert_eq!(workers(&config), 3);
    }
}
