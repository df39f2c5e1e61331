//! Typed configuration: defaults, loading from TOML plus `WSGATE_<SECTION>__<KEY>` environment
//! overrides, and the error type that points at `file:line:column`.
//!
//! This module knows nothing about sockets, tokio or the runtime types of other modules; it only
//! describes what the operator asked for. Semantic checks live in [`validate`].

mod duration;
mod validate;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use duration::Duration;
pub use validate::{Problem, path_params};

/// The whole configuration. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub websocket: WebSocket,
    pub api: Api,
    /// `[[route]]` tables. When none are given, one hub route `/room/{room}/` joining
    /// `room:{room}` is used.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
}

/// `[server]`: the listener and connection-level limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Worker threads; 0 means one per CPU core. Default 0.
    pub workers: usize,
    /// Most WebSocket connections held at once; the next handshake gets 503. Default 10000.
    pub max_connections: usize,
    /// Time a client has to send a complete request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; larger gets 431. Default 16384.
    pub max_header_bytes: usize,
    /// After SIGTERM/SIGINT, how long clients get to finish the closing handshake. Default 10 s.
    pub shutdown_grace: Duration,
}

/// `[websocket]`: per-connection WebSocket behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    /// Send a Ping after this long without receiving anything. Default 25 s; "0s" disables.
    pub ping_interval: Duration,
    /// Close the connection when nothing arrives this long after a Ping. Default 10 s.
    pub pong_timeout: Duration,
    /// Largest message a client may send (all fragments together); larger closes with 1009.
    /// Default 65536.
    pub max_message_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue; a consumer that falls further
    /// behind is closed with 1013 "slow consumer". Default 1048576 (1 MiB).
    pub send_queue_bytes: usize,
    /// How long to wait for the peer's Close after sending ours. Default 5 s.
    pub close_timeout: Duration,
    /// Path of the built-in echo route used for conformance testing; "" disables it.
    /// Default "/ws/echo".
    pub echo_path: String,
}

/// `[api]`: the HTTP publish API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Largest publish request body in bytes; larger gets 413. Default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// When set, publish requests need `Authorization: Bearer <token>`. Default: unset.
    pub token: Option<String>,
}

/// What a hub route does with messages its clients send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMessage {
    /// Publish the message to the route's group.
    Broadcast,
    /// Send the message back to its sender only.
    Echo,
    /// Ignore it: the socket only receives.
    Drop,
}

/// One `[[route]]` table: a URL pattern whose clients join a group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// URL path pattern; `{name}` matches one path segment. A trailing slash is optional when
    /// matching. Example `/room/{room}/`.
    pub path: String,
    /// Group the client joins, with `{name}` filled from the path. Required unless
    /// `on_message = "echo"`. Example `room:{room}`.
    pub group: Option<String>,
    /// What to do with client messages. Default "broadcast".
    #[serde(default = "default_on_message")]
    pub on_message: OnMessage,
    /// With "broadcast", whether the sender receives its own message too. Default true.
    #[serde(default = "default_true")]
    pub echo_to_sender: bool,
    /// Subprotocols this route speaks, in order of preference; the first one the client also
    /// offers is selected. Default: none.
    #[serde(default)]
    pub subprotocols: Vec<String>,
    /// Overrides `websocket.max_message_bytes` for this route.
    pub max_message_bytes: Option<usize>,
}

fn default_on_message() -> OnMessage {
    OnMessage::Broadcast
}

fn default_true() -> bool {
    true
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            send_queue_bytes: 1024 * 1024,
            close_timeout: Duration::from_secs(5),
            echo_path: "/ws/echo".into(),
        }
    }
}

impl Default for Api {
    fn default() -> Self {
        Api {
            max_body_bytes: 1024 * 1024,
            token: None,
        }
    }
}

impl Config {
    /// The hub routes in effect: the configured ones, or the default room route.
    pub fn effective_routes(&self) -> Vec<Route> {
        if !self.routes.is_empty() {
            return self.routes.clone();
        }
        vec![Route {
            path: "/room/{room}/".into(),
            group: Some("room:{room}".into()),
            on_message: OnMessage::Broadcast,
            echo_to_sender: true,
            subprotocols: Vec::new(),
            max_message_bytes: None,
        }]
    }
}

/// Every problem found while loading a configuration, each with its location.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Error {
    fn one(p: Problem) -> Self {
        Error { problems: vec![p] }
    }
}

/// Loads a config file (or the built-in defaults when `path` is `None`), applies
/// `WSGATE_<SECTION>__<KEY>` variables from `env`, and validates the result.
///
/// # Errors
/// Every problem found, each naming the file and line, or the environment variable, at fault.
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, Error> {
    let (origin, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::one(Problem::plain(
                    p.display().to_string(),
                    format!("cannot read config file: {e}; check the path given to --config"),
                ))
            })?;
            (p.display().to_string(), text)
        }
        None => ("<defaults>".to_string(), String::new()),
    };
    load_str(&origin, &text, env)
}

/// Like [`load`], from text already in memory; `origin` names it in messages.
pub fn load_str(origin: &str, text: &str, env: &[(String, String)]) -> Result<Config, Error> {
    let mut cfg: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(Error::one(validate::from_toml_error(origin, text, &e))),
    };
    validate::apply_env(&mut cfg, origin, text, env)?;
    let problems = validate::check(&cfg, origin, text);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Error { problems })
    }
}

/// The `WSGATE_*__*` variables of this process, for [`load`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("WSGATE_") && k.contains("__"))
        .collect()
}

/// Parses `server.listen`: `host:port` where host is an IP address or `localhost`.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(Ok(p)) = s.strip_prefix("localhost:").map(str::parse::<u16>) {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    }
    Err(format!(
        "{s:?} is not an address; expected ip:port like \"127.0.0.1:8080\" or \"0.0.0.0:8080\""
    ))
}
