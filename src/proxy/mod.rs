//! The reverse proxy: proxy routes (`path_prefix` + `proxy_pass`), upstream server choice and
//! health, HTTP forwarding, and WebSocket upgrades with a frame-aware tunnel.
//!
//! This module does not know about the hub, the broker or the publish API: the server hands it
//! a request that matched a proxy route and gets a response back.

pub mod balance;
pub mod forward;
mod h1;
pub mod headers;
mod idle;
pub mod tunnel;
pub mod upgrade;
pub mod uring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::server::{Body, text};
use crate::ws::Heartbeat;
pub use balance::Upstream;
use headers::Trusted;

/// Request body type sent to upstreams.
pub type ReqBody = BoxBody<Bytes, crate::server::BoxError>;

/// Why a request could not be proxied. Each variant maps to one status in [`Error::status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "every server of upstream {upstream:?} is down (failed recently or failed its health check); retry shortly, or check the servers"
    )]
    NoServer { upstream: String },
    #[error(
        "cannot connect to upstream {upstream:?} server {server}: {source}; is the server running and listening there?"
    )]
    Connect {
        upstream: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "upstream {upstream:?} server {server} did not accept the connection within {after:?} (connect_timeout)"
    )]
    ConnectTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error(
        "upstream {upstream:?} server {server} sent no response head within {after:?} (read_timeout)"
    )]
    ResponseTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error("upstream {upstream:?} server {server} failed during the exchange: {reason}")]
    Exchange {
        upstream: String,
        server: String,
        reason: String,
    },
    #[error("upstream {upstream:?} server {server} answered the WebSocket upgrade wrongly: {what}")]
    BadUpgrade {
        upstream: String,
        server: String,
        what: String,
    },
}

impl Error {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::ConnectTimeout { .. } | Error::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Error::Connect { .. } | Error::Exchange { .. } | Error::BadUpgrade { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Counts and logs the error, and gives the status and short text body the client gets.
    pub fn report(&self, path: &str) -> (StatusCode, String) {
        let status = self.status();
        crate::metrics::METRICS.proxy_errors.inc();
        tracing::warn!(status = status.as_u16(), %path, error = %self, "proxy error");
        let reason = status.canonical_reason().unwrap_or("");
        (status, format!("{} {reason}: {self}\n", status.as_u16()))
    }

    /// The short text response, logged as it is sent.
    pub fn into_response(self, path: &str) -> Response<Body> {
        let (status, body) = self.report(path);
        text(status, body)
    }
}

/// Per-tunnel settings.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub close_timeout: Duration,
}

/// The proxy: routes, upstreams, the HTTP client pool and the tunnel registry.
#[derive(Debug)]
pub struct Proxy {
    /// `(path_prefix, upstream index)`, longest prefix first.
    routes: Vec<(String, usize)>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// One keep-alive pool per upstream (connect timeouts differ per upstream).
    clients: Vec<Client<HttpConnector, ReqBody>>,
    trusted: Trusted,
    preserve_host: bool,
    /// The heartbeat wheel of tunnel sides: pings and the shutdown registry.
    pub heartbeat: Arc<Heartbeat>,
    pub tunnel: TunnelSettings,
    /// Tunnels open now.
    open: AtomicUsize,
    /// `server.max_connections`: tunnels count against it like hub connections.
    max_tunnels: usize,
    pub(crate) shutting_down: AtomicBool,
    /// The io_uring tunnel engines, once started (see [`Proxy::start_engines`]).
    engines: std::sync::OnceLock<uring::Engines>,
}

impl Proxy {
    pub fn new(cfg: &Config) -> Self {
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
        let clients = upstreams
            .iter()
            .map(|u| {
                let mut conn = HttpConnector::new();
                conn.set_connect_timeout(Some(u.connect_timeout));
                conn.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_timer(TokioTimer::new())
                    .http1_title_case_headers(true)
                    .build(conn)
            })
            .collect();
        let p = &cfg.proxy;
        Proxy {
            routes,
            upstreams,
            clients,
            trusted: Trusted::new(&p.trusted_proxies),
            preserve_host: p.preserve_host,
            heartbeat: Heartbeat::new(p.ping_interval.get(), p.pong_timeout.get()),
            tunnel: TunnelSettings {
                idle_timeout: p.idle_timeout.get(),
                max_lifetime: p.max_lifetime.get(),
                close_timeout: cfg.websocket.close_timeout.get(),
            },
            open: AtomicUsize::new(0),
            max_tunnels: cfg.server.max_connections,
            shutting_down: AtomicBool::new(false),
            engines: std::sync::OnceLock::new(),
        }
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
        let env = uring::Env {
            heartbeat: self.heartbeat.clone(),
            settings: self.tunnel.clone(),
        };
        match uring::Engines::start(threads, &env) {
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
        self.open.load(Ordering::Relaxed)
    }

    /// Proxies one request to upstream `upstream`: a WebSocket upgrade or plain HTTP.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        upstream: usize,
        peer: SocketAddr,
    ) -> Response<Body> {
        crate::metrics::METRICS.proxy_requests.inc();
        if upgrade::is_websocket_upgrade(&req) {
            upgrade::upgrade(self, upstream, req, peer).await
        } else {
            forward::forward(self, upstream, req, peer).await
        }
    }

    fn client(&self, peer: SocketAddr) -> headers::Client<'_> {
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
                        tracing::warn!(upstream = %u.name, server = %s.addr, path = %u.health_path, "health check failed; server taken out until it passes");
                    }
                }
            }
        }
    }
}
