//! What every connection of the server shares: the configuration, the matched routes, the hub
//! and the session environment, the proxy, the API, and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::route::Route;
use super::tls::Tls;
use crate::api::Api;
use crate::auth::Jwt;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::lifecycle::{Shutdown, Slots};
use crate::proxy::Proxy;
use crate::ws::heartbeat::Heartbeat;
use crate::ws::outbox::Outbox;
use crate::ws::session::Env;

/// The parts a server is built from (see `app`, which builds each from the config).
#[derive(Debug)]
pub struct Parts {
    pub hub: Arc<Hub>,
    pub heartbeat: Arc<Heartbeat<Outbox>>,
    pub proxy: Arc<Proxy>,
    pub api: Api,
    /// The backend hook client (one keep-alive pool for every route's hooks).
    pub hooks: Arc<Hooks>,
    pub shutdown: Shutdown,
    /// TLS for the listener, when `[server.tls]` is set.
    pub tls: Option<Arc<Tls>>,
    /// Token checks for hub routes, when `[jwt]` is set.
    pub jwt: Option<Arc<Jwt>>,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Server {
    pub config: Arc<Config>,
    /// Hub routes, matched before proxy prefixes.
    pub routes: Vec<Route>,
    /// The built-in echo route: a convenience, so it yields to every configured route, proxy
    /// prefixes included (a `path_prefix = "/"` proxy gets `/ws/echo` too).
    pub echo: Option<Route>,
    pub hub: Arc<Hub>,
    pub heartbeat: Arc<Heartbeat<Outbox>>,
    /// What every session shares, its connection slots included.
    pub sessions: Arc<Env>,
    /// Proxy routes, upstreams and tunnels.
    pub proxy: Arc<Proxy>,
    pub api: Api,
    pub hooks: Arc<Hooks>,
    pub shutdown: Shutdown,
    pub tls: Option<Arc<Tls>>,
    pub jwt: Option<Arc<Jwt>>,
    /// `server.max_handshakes_per_second_per_ip`.
    pub per_ip: super::rate::PerIp,
    /// `server.max_connections_per_ip`.
    pub open_per_ip: Arc<super::rate::OpenPerIp>,
    next_id: AtomicU64,
    /// The main listener's accept loop is running.
    accepting: AtomicBool,
}

impl Server {
    pub fn new(config: Arc<Config>, parts: Parts) -> Self {
        let routes: Vec<Route> = config
            .effective_routes()
            .iter()
            .map(|r| Route::new(r, &config.websocket))
            .collect();
        let echo = (!config.websocket.echo_path.is_empty())
            .then(|| Route::echo(&config.websocket.echo_path, &config.websocket));
        let sessions = Arc::new(Env {
            hub: parts.hub.clone(),
            heartbeat: parts.heartbeat.clone(),
            close_timeout: config.websocket.close_timeout.get(),
            slots: Slots::new(config.server.max_connections),
            partial: crate::ws::frame::PartialBudget::new(config.websocket.max_partial_bytes_total),
        });
        let per_ip = super::rate::PerIp::new(config.server.max_handshakes_per_second_per_ip);
        Server {
            per_ip,
            open_per_ip: super::rate::OpenPerIp::new(config.server.max_connections_per_ip),
            config,
            routes,
            echo,
            hub: parts.hub,
            heartbeat: parts.heartbeat,
            sessions,
            proxy: parts.proxy,
            api: parts.api,
            hooks: parts.hooks,
            shutdown: parts.shutdown,
            tls: parts.tls,
            jwt: parts.jwt,
            next_id: AtomicU64::new(1),
            accepting: AtomicBool::new(false),
        }
    }

    /// WebSocket connections open now (or being upgraded).
    pub fn open_connections(&self) -> usize {
        self.sessions.slots.open()
    }

    /// Whether this node should get traffic: its listener accepts, it is not shutting down, and
    /// its broker can take publishes (`Broker::readiness`). The one
    /// place that decides readiness: every `/readyz` asks it. `Err` says what is not ready.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutdown.is_begun() {
            return Err("shutting down: no new connections are accepted".into());
        }
        if !self.accepting.load(Ordering::Relaxed) {
            return Err("the listener is not accepting connections yet".into());
        }
        self.hub.broker().readiness()?;
        Ok(())
    }

    pub(super) fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::Relaxed);
    }

    /// A connection id, unique for the life of the process.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
