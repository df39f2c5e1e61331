//! The proxy's shared state: proxy routes, upstreams and their keep-alive pools, the forwarding
//! rules, tunnel slots and the tunnel engines; and the active health checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::balance::Upstream;
use super::headers::{self, Trusted};
use super::tls::{ClientTls, Connector, SetupError};
use super::tunnel::{self, TunnelSettings};
use super::uring;
use crate::config::Config;
use crate::lifecycle::{Shutdown, Slots};
use crate::ws::Heartbeat;

/// Request body type sent to upstreams.
pub type ReqBody = BoxBody<Bytes, crate::reply::BoxError>;

/// The proxy: routes, upstreams, the HTTP client pool and the tunnel registry.
#[derive(Debug)]
pub struct Proxy {
    /// `(path_prefix, upstream index)`, longest prefix first.
    routes: Vec<(String, usize)>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// One keep-alive pool per upstream (connect timeouts and TLS differ per upstream).
    clients: Vec<Client<Connector, ReqBody>>,
    /// Per upstream: TLS toward its servers, when they are `https://`.
    tls: Vec<Option<Arc<ClientTls>>>,
    pub(super) trusted: Trusted,
    pub(super) preserve_host: bool,
    /// What every tunnel shares: the heartbeat wheel of tunnels (pings and the registry
    /// shutdown walks), the tunnel settings and the shutdown signal.
    pub tunnels: Arc<tunnel::Env>,
    /// Tunnels open or being set up, at most `server.max_connections` (counted apart from hub
    /// connections).
    pub slots: Arc<Slots>,
    /// The io_uring tunnel engines, once started (see [`Proxy::start_engines`]).
    engines: std::sync::OnceLock<uring::Engines>,
}

impl Proxy {
    /// The proxy `cfg` describes; `shutdown` is the process's shutdown signal.
    ///
    /// # Errors
    /// The TLS settings of an upstream that cannot be used (a CA or client key file).
    pub fn new(cfg: &Config, shutdown: &Shutdown) -> Result<Self, SetupError> {
        let upstreams: Vec<Arc<Upstream>> = cfg
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let mut routes: Vec<(String, usize)> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let prefix = r.path_prefix.clone()?;
                let name = r.proxy_pass.as_ref()?;
                let i = upstreams.iter().position(|u| &u.name == name)?;
                Some((prefix, i))
            })
            .collect();
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let tls = check_tls(&cfg.upstreams)?;
        let clients = upstreams
            .iter()
            .zip(&tls)
            .map(|(u, tls)| {
                let conn = Connector::new(tls.clone(), u.connect_timeout);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_timer(TokioTimer::new())
                    .http1_title_case_headers(true)
                    .build(conn)
            })
            .collect();
        let p = &cfg.proxy;
        Ok(Proxy {
            routes,
            upstreams,
            clients,
            tls,
            trusted: Trusted::new(&p.trusted_proxies),
            preserve_host: p.preserve_host,
            tunnels: Arc::new(tunnel::Env::new(
                Heartbeat::new(p.ping_interval.get(), p.pong_timeout.get()),
                TunnelSettings {
                    idle_timeout: p.idle_timeout.get(),
                    max_lifetime: p.max_lifetime.get(),
                    close_timeout: cfg.websocket.close_timeout.get(),
                    // Bounded to 16..=32768 by the config check.
                    uring_buffers: u16::try_from(p.uring_buffers).unwrap_or(256),
                    high_water: p.tunnel_buffer_bytes,
                },
                shutdown.clone(),
            )),
            slots: Slots::new(cfg.server.max_connections),
            engines: std::sync::OnceLock::new(),
        })
    }

    /// The upstream serving `path`: the longest matching `path_prefix`.
    pub fn route(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }

    /// The configured prefixes, for the 404 page.
    pub fn prefixes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes
            .iter()
            .map(|(p, i)| (p.as_str(), self.upstreams[*i].name.as_str()))
    }

    /// Starts the io_uring tunnel engines (`proxy.tunnel_io`), `threads` of them, when there
    /// are proxy routes. With "auto" a kernel that refuses io_uring means epoll, said once in
    /// the log; with "io_uring" it is an error.
    pub fn start_engines(
        &self,
        io: crate::config::TunnelIo,
        threads: usize,
    ) -> std::io::Result<()> {
        use crate::config::TunnelIo;
        if self.routes.is_empty() || io == TunnelIo::Epoll || self.engines.get().is_some() {
            return Ok(());
        }
        match uring::Engines::start(threads, &self.tunnels) {
            Ok(e) => {
                let _ = self.engines.set(e);
                tracing::debug!(threads, "proxy tunnels use io_uring");
                Ok(())
            }
            Err(e) if io == TunnelIo::Auto => {
                tracing::info!(error = %e, "io_uring is not available here; proxy tunnels use epoll (proxy.tunnel_io = \"auto\")");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The io_uring engines, when tunnels use them.
    pub(crate) fn engines(&self) -> Option<&uring::Engines> {
        self.engines.get()
    }

    /// Tunnels open now.
    pub fn open_tunnels(&self) -> usize {
        self.slots.open()
    }

    /// The keep-alive pool of upstream `ui`.
    pub(super) fn pool(&self, ui: usize) -> &Client<Connector, ReqBody> {
        &self.clients[ui]
    }

    /// TLS toward the servers of upstream `ui`, when they are `https://`.
    pub(super) fn tls(&self, ui: usize) -> Option<&Arc<ClientTls>> {
        self.tls[ui].as_ref()
    }

    /// How a request from `peer` is described to upstreams.
    pub(super) fn client(&self, peer: SocketAddr) -> headers::Client<'_> {
        headers::Client {
            peer,
            proto: "http",
            trusted: &self.trusted,
        }
    }

    /// Runs the active health checks of every upstream that has a `health_path`.
    pub async fn run_health_checks(self: Arc<Self>) {
        let mut tasks = Vec::new();
        for (ui, u) in self.upstreams.iter().enumerate() {
            if u.health_path.is_empty() {
                continue;
            }
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.check_loop(ui).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn check_loop(&self, ui: usize) {
        let u = &self.upstreams[ui];
        let mut tick = tokio::time::interval(u.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (si, s) in u.servers.iter().enumerate() {
                let uri = format!("http://{}{}", s.addr, u.health_path);
                let Ok(req) = Request::get(uri).body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed(),
                ) else {
                    continue;
                };
                let res = tokio::time::timeout(
                    u.connect_timeout + u.read_timeout,
                    self.clients[ui].request(req),
                )
                .await;
                let ok = matches!(&res, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection());
                if u.set_check_result(si, ok) {
                    if ok {
                        tracing::info!(upstream = %u.name, server = %s.addr, "health check passes again; server is back");
                    } else {
                        let why = match &res {
                            Ok(Ok(r)) => format!("it answered {}", r.status()),
                            Ok(Err(e)) => match super::tls::failure_in(e) {
                                Some(f) => format!("TLS: {f}"),
                                None => super::error::describe(e),
                            },
                            Err(_) => "no answer within connect_timeout + read_timeout".into(),
                        };
                        tracing::warn!(upstream = %u.name, server = %s.addr, path = %u.health_path, %why, "health check failed; server taken out until it passes");
                    }
                }
            }
        }
    }
}

/// The TLS settings of every upstream (`None` for plain ones), read as `serve` reads them; also
/// what `check-config` runs, so it refuses what would stop `serve`.
///
/// # Errors
/// The first upstream whose TLS settings cannot be used.
pub fn check_tls(
    upstreams: &[crate::config::Upstream],
) -> Result<Vec<Option<Arc<ClientTls>>>, SetupError> {
    upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| ClientTls::new(i, u))
        .collect()
}
