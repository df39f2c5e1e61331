//! Typed configuration: defaults, loading from TOML plus `WSGATE_<SECTION>__<KEY>` environment
//! overrides, and the error type that points at `file:line:column`.
//!
//! This module knows nothing about sockets, tokio or the runtime types of other modules; it only
//! describes what the operator asked for. One file per section, each with its own checks
//! (`server.rs`, `websocket.rs`, `api.rs`, `hooks.rs`, `broker.rs`, `proxy.rs`, `route.rs`); `validate.rs`
//! locates a problem in the file, `env.rs` applies environment overrides.

mod addr;
mod admin;
mod api;
mod broker;
mod duration;
mod env;
mod hooks;
mod http2;
mod hub;
mod jwt;
mod log;
mod proxy;
mod risks;
mod route;
mod secret;
mod server;
mod tls;
mod validate;
mod websocket;

use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;

pub use addr::{parse_cidr, parse_listen, parse_server_addr, split_server_scheme};
pub use admin::Admin;
pub use api::Api;
pub use broker::{Broker, BrokerKind, redis_url_problem};
pub use duration::Duration;
pub use hooks::{ConnectFailure, Hooks, MessageFailure, RouteHooks};
pub use http2::Http2;
pub use hub::Hub;
pub use jwt::Jwt;
pub use log::{Log, LogFormat};
pub use proxy::{
    Balance, Proxy, ServerEntry, ServerTable, TunnelIo, Upstream, UpstreamTls, read_certs, read_key,
};
pub use route::{History, OnMessage, Replay, Route, path_params};
pub use secret::Secret;
pub use server::{Runtime, Server};
pub use tls::{SniCert, Tls};
pub use validate::{Error, Problem};
pub use websocket::{Compression, WebSocket};

/// The whole configuration. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    /// `[broker]`: how publications reach other nodes.
    pub broker: Broker,
    /// `[hub]`: what groups keep on this node.
    pub hub: Hub,
    pub websocket: WebSocket,
    pub api: Api,
    /// `[hooks]`: how wsgate calls backends (routes say where).
    pub hooks: Hooks,
    /// `[jwt]`: tokens for hub routes. Absent: no token is asked for.
    pub jwt: Option<Jwt>,
    /// `[admin]`: the operator's listener.
    pub admin: Admin,
    /// `[log]`: log format and access lines.
    pub log: Log,
    /// `[proxy]`: settings shared by every proxy route.
    pub proxy: Proxy,
    /// `[[upstream]]` tables: named groups of servers that proxy routes forward to.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// `[[route]]` tables: hub routes (`path`) and proxy routes (`path_prefix` + `proxy_pass`).
    /// When no route at all is given, one hub route `/room/{room}/` joining `room:{room}` is used.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// Settings that work but are risky, each located like a problem: `check-config` prints
    /// them, `serve` logs them.
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

impl Config {
    /// The hub routes in effect: the configured ones, or the default room route when no route
    /// (hub or proxy) is configured at all.
    pub fn effective_routes(&self) -> Vec<Route> {
        if !self.routes.is_empty() {
            return self
                .routes
                .iter()
                .filter(|r| !r.is_proxy())
                .cloned()
                .collect();
        }
        vec![Route::default_room()]
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
    env::apply_env(&mut cfg, origin, text, env)?;
    let at = Locator::new(origin, text);
    let problems = check(&cfg, &at);
    if !problems.is_empty() {
        return Err(Error { problems });
    }
    let mut warnings = Vec::new();
    risks::check(
        &cfg.proxy,
        &cfg.upstreams,
        &cfg.routes,
        &mut |path, message| {
            warnings.push(at.problem(path, message));
        },
    );
    cfg.warnings = warnings;
    Ok(cfg)
}

/// Points a key path at its place in the config text.
struct Locator<'a> {
    origin: &'a str,
    text: &'a str,
    table: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    fn new(origin: &'a str, text: &'a str) -> Self {
        Locator {
            origin,
            text,
            table: DeTable::parse(text).ok(),
        }
    }

    fn problem(&self, path: Vec<validate::Seg>, message: String) -> Problem {
        let position = self
            .table
            .as_ref()
            .and_then(|t| validate::locate(t.get_ref(), &path))
            .map(|o| validate::line_col(self.text, o));
        Problem {
            origin: self.origin.to_string(),
            position,
            key: Some(validate::render_path(&path)),
            message,
        }
    }
}

/// The `WSGATE_*__*` variables of this process, for [`load`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("WSGATE_") && k.contains("__"))
        .collect()
}

/// Semantic checks over a config that parsed; returns every problem found, each located.
fn check(cfg: &Config, at: &Locator<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut report = |path: Vec<validate::Seg>, message: String| {
        problems.push(at.problem(path, message));
    };
    cfg.server.check(&mut report);
    cfg.websocket.check(&mut report);
    cfg.api.check(&mut report);
    cfg.hooks.check(&mut report);
    if let Some(j) = &cfg.jwt {
        j.check(&mut report);
    }
    cfg.admin.check(&mut report);
    cfg.hub.check(&mut report);
    cfg.broker.check(&mut report);
    proxy::check(&cfg.proxy, &cfg.upstreams, &mut report);
    route::check(&cfg.routes, &cfg.websocket, &cfg.upstreams, &mut report);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn the_story_config_is_valid() {
        let cfg = load_str(
            "t.toml",
            "[[upstream]]\nname = \"websocket\"\nservers = [\"192.168.100.10:8010\", { addr = \"10.0.0.2:8010\", weight = 2, backup = true }]\n\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"websocket\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.upstreams[0].servers.len(), 2);
        assert!(cfg.upstreams[0].servers[1].table().backup);
        assert!(cfg.effective_routes().is_empty());
    }

    #[test]
    fn unknown_upstream_in_proxy_pass_names_the_ones_that_exist() {
        let p = problems(
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n[[route]]\npath_prefix = \"/\"\nproxy_pass = \"c\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:9:1: route[0].proxy_pass: no upstream is named \"c\"; the upstreams are \"a\", \"b\""),
            "{}",
            p[0]
        );
    }

    #[test]
    fn bad_server_address_and_weight_point_at_the_entry() {
        let p = problems(
            "[[upstream]]\nname = \"a\"\nservers = [\"nope\", { addr = \"127.0.0.1:2\", weight = 0 }]\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:3:12: upstream[0].servers[0]:"),
            "{}",
            p[0]
        );
        assert!(p[1].contains("weight 0 is out of range"), "{}", p[1]);
    }

    fn problems(text: &str) -> Vec<String> {
        match load_str("t.toml", text, &[]) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(load_str("t.toml", "", &[]).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_points_at_its_line_and_column() {
        let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:3:1: server.lisen: unknown field `lisen`"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = problems("[websocket]\nmax_message_bytes = \"big\"\n");
        assert!(p[0].starts_with("t.toml:2:"), "{}", p[0]);
        assert!(p[0].contains("websocket.max_message_bytes"), "{}", p[0]);
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let p = problems("[websocket]\nping_interval = \"25\"\n");
        assert!(p[0].contains("\"25s\""), "{}", p[0]);
        assert!(p[0].starts_with("t.toml:2:"), "{}", p[0]);
    }

    #[test]
    fn collects_every_semantic_problem_with_positions() {
        let text = "[server]\nlisten = \"nope\"\nmax_headers = 0\n\n[[route]]\npath = \"room/{id}\"\ngroup = \"g\"\n\n[[route]]\npath = \"/chat/{id}\"\ngroup = \"chat:{room}\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("t.toml:2:1: server.listen:"), "{}", p[0]);
        assert!(
            p[1].starts_with("t.toml:3:1: server.max_headers:"),
            "{}",
            p[1]
        );
        assert!(p[2].starts_with("t.toml:6:1: route[0].path:"), "{}", p[2]);
        assert!(
            p[3].starts_with("t.toml:11:1: route[1].group: uses {room}"),
            "{}",
            p[3]
        );
    }

    #[test]
    fn duplicate_route_paths_are_refused_even_with_trailing_slash_difference() {
        let p = problems(
            "[[route]]\npath = \"/a/{x}/\"\ngroup = \"{x}\"\n[[route]]\npath = \"/a/{x}\"\ngroup = \"{x}\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("already used by route[0]"), "{}", p[0]);
    }

    #[test]
    fn env_overrides_apply_and_bad_ones_name_the_variable() {
        let env = vec![
            (
                "WSGATE_SERVER__LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            (
                "WSGATE_WEBSOCKET__MAX_MESSAGE_BYTES".to_string(),
                "100".to_string(),
            ),
            (
                "WSGATE_WEBSOCKET__PING_INTERVAL".to_string(),
                "2s".to_string(),
            ),
        ];
        let cfg = load_str("t.toml", "[server]\nlisten = \"127.0.0.1:1\"\n", &env).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:9999");
        assert_eq!(cfg.websocket.max_message_bytes, 100);
        assert_eq!(cfg.websocket.ping_interval, super::Duration::from_secs(2));

        let bad = vec![(
            "WSGATE_WEBSOCKET__MAX_MESAGE_BYTES".to_string(),
            "1".to_string(),
        )];
        let e = load_str("t.toml", "", &bad).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "WSGATE_WEBSOCKET__MAX_MESAGE_BYTES: websocket.max_mesage_bytes: unknown field"
            ),
            "{e}"
        );
        let bad = vec![("WSGATE_NOPE__X".to_string(), "1".to_string())];
        assert!(
            load_str("t.toml", "", &bad)
                .unwrap_err()
                .to_string()
                .contains("unknown section")
        );
    }

    #[test]
    fn path_params_rejects_partial_placeholders() {
        assert_eq!(path_params("/room/{room}/").unwrap(), vec!["room"]);
        assert!(path_params("/room/x{room}").is_err());
        assert!(path_params("/room/{a}/{a}").is_err());
        assert!(path_params("/room/{a-b}").is_err());
    }
}
