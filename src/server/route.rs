//! Matching request paths to WebSocket routes and filling in group names, and what a route
//! gives the connections it admits (replay, presence, the `wsgate.v1` permissions).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::HistoryQuery;
use crate::broker::policy::GroupPattern;
use crate::config::{self, OnMessage};
use crate::hub::group::check_name;
use crate::uri::percent_decode;
use crate::ws::codec::{Codecs, Compression};
use crate::ws::deflate::Agreed;
use crate::ws::session::RouteCtx;
use crate::ws::v1;

/// A route ready for matching.
#[derive(Debug)]
pub struct Route {
    /// The pattern as configured, for messages.
    pub pattern: String,
    segments: Vec<Segment>,
    group: Option<String>,
    /// What the route speaks, in order of preference (`wsgate.v1` last, on routes with groups).
    pub subprotocols: Vec<String>,
    max_group_bytes: usize,
    /// Lowercased; empty: the same host as the request, and localhost.
    origins: Vec<String>,
    pub ctx: Arc<RouteCtx>,
    /// What a joining plain client is replayed: `(last, within)`.
    replay: Option<(usize, Duration)>,
    /// Whether the route's groups keep presence, and announce joins and leaves.
    pub presence: bool,
    pub join_leave: bool,
    /// `wsgate.v1` group patterns as configured (placeholders filled per connection).
    subscribe: Vec<String>,
    client_publish: bool,
    /// The `[websocket]` limits a v1 connection follows.
    v1_limits: (u32, usize, usize),
    /// Backend hook URLs (checked by the config).
    pub hooks: Option<HookUrls>,
    /// With `[jwt]`: whether connections without a token may use the route.
    pub anonymous: bool,
    /// What a client that negotiated permessage-deflate is sent, by the window it allowed us
    /// (index: bits - 8); `None` when the route has compression off.
    compression: Option<[&'static Compression; 8]>,
}

/// A route's backend hook URLs.
#[derive(Debug, Clone, Default)]
pub struct HookUrls {
    pub on_connect: Option<http::Uri>,
    pub on_message: Option<http::Uri>,
    pub on_disconnect: Option<http::Uri>,
}

impl HookUrls {
    fn new(h: &config::RouteHooks) -> Self {
        let parse = |u: &Option<String>| u.as_deref().and_then(|u| u.parse().ok());
        HookUrls {
            on_connect: parse(&h.on_connect),
            on_message: parse(&h.on_message),
            on_disconnect: parse(&h.on_disconnect),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
}

impl Route {
    /// A hub route; `ws` gives the defaults the route does not override.
    pub fn new(r: &config::Route, ws: &config::WebSocket) -> Self {
        let segments = split(&r.path)
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Literal(s.to_string()),
                },
            )
            .collect();
        let subscribe = r.subscribe_patterns();
        let mut subprotocols = r.subprotocols.clone();
        if !subscribe.is_empty() && !subprotocols.iter().any(|p| p == v1::PROTOCOL) {
            subprotocols.push(v1::PROTOCOL.to_string());
        }
        Route {
            pattern: r.path.clone(),
            segments,
            group: r.group.clone(),
            subprotocols,
            max_group_bytes: ws.max_group_bytes,
            origins: r
                .allowed_origins
                .as_ref()
                .unwrap_or(&ws.allowed_origins)
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            ctx: Arc::new(RouteCtx {
                on_message: r.on_message,
                echo_to_sender: r.echo_to_sender,
                max_message_bytes: r.max_message_bytes.unwrap_or(ws.max_message_bytes),
                open: crate::metrics::METRICS.route_connections(&r.path),
                inbound: (ws.max_messages_per_second > 0 || ws.max_bytes_per_second > 0).then_some(
                    crate::ws::session::Inbound {
                        messages_per_second: ws.max_messages_per_second,
                        bytes_per_second: ws.max_bytes_per_second,
                    },
                ),
            }),
            replay: r.replay.map(|p| (p.last, p.within.get())),
            presence: r.presence,
            join_leave: r.join_leave && r.presence,
            subscribe,
            client_publish: r.allows_client_publish(),
            v1_limits: (
                ws.max_command_errors,
                ws.max_subscriptions,
                ws.recovery_max_publications,
            ),
            hooks: r.hooks.as_ref().map(HookUrls::new),
            anonymous: r.anonymous,
            compression: (r.compression.unwrap_or(ws.compression) == config::Compression::On).then(
                || {
                    let min = r.compression_min_bytes.unwrap_or(ws.compression_min_bytes);
                    std::array::from_fn(|i| {
                        let agreed = Agreed::with_window(8 + i as u8);
                        Compression::get(min, agreed.compress_window())
                    })
                },
            ),
        }
    }

    /// Whether the route offers permessage-deflate.
    pub fn compresses(&self) -> bool {
        self.compression.is_some()
    }

    /// What a client that agreed to `agreed` is sent on this route.
    pub fn compression_for(&self, agreed: &Agreed) -> Option<&'static Compression> {
        let table = self.compression.as_ref()?;
        Some(table[usize::from(agreed.server_window.clamp(8, 15) - 8)])
    }

    /// What a plain client joining this route's group gets from its history first.
    pub fn replay(&self) -> HistoryQuery {
        match self.replay {
            Some((last, within)) => HistoryQuery::Last { last, within },
            None => HistoryQuery::Live,
        }
    }

    /// What a `wsgate.v1` client connected at `path` may do: the route's subscribe patterns
    /// with the path's values filled in (literally).
    pub fn v1_settings(&self, path: &str, codecs: Codecs) -> v1::Settings {
        let params = self.params(path).unwrap_or_default();
        let values: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (max_errors, max_subscriptions, recovery_limit) = self.v1_limits;
        v1::Settings {
            allowed: self
                .subscribe
                .iter()
                .map(|t| GroupPattern::from_template(t, &values))
                .collect(),
            allowed_text: self.subscribe.iter().map(|t| fill(t, &values)).collect(),
            client_publish: self.client_publish,
            echo_to_sender: self.ctx.echo_to_sender,
            presence: self.presence,
            join_leave: self.join_leave,
            max_errors,
            max_subscriptions,
            recovery_limit,
            max_group_bytes: self.max_group_bytes,
            user: None,
            grant: None,
            codecs,
        }
    }

    /// The built-in echo route at `path`.
    pub fn echo(path: &str, ws: &config::WebSocket) -> Self {
        let mut route = Route::new(
            &config::Route {
                on_message: OnMessage::Echo,
                ..config::Route::hub(path, None)
            },
            ws,
        );
        // A conformance tool: test suites send as fast as they can, so no inbound rate here.
        if let Some(ctx) = Arc::get_mut(&mut route.ctx) {
            ctx.inbound = None;
        }
        route
    }

    /// Whether a browser from `origin` may connect to a request for `host` (its `Host`
    /// field). A request without `Origin` is not from a browser page (CLI tools and servers do
    /// not send it), so the check does not apply: what it prevents is another site's page using
    /// a visitor's cookies (RFC 6455 §10.2). With no `allowed_origins` configured only pages of
    /// the same host (any scheme, the port as in `Host`) and of localhost may connect; `"*"`
    /// among them lets any page in.
    pub fn allows_origin(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = String::from_utf8_lossy(origin).to_ascii_lowercase();
        if self.origins.is_empty() {
            return is_same_host_or_local(&origin, host);
        }
        self.origins
            .iter()
            .any(|allowed| match allowed.split_once("://*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|o| o.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(domain))
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => allowed == "*" || origin == *allowed,
            })
    }

    /// The path's placeholder values (percent-decoded), when `path` matches this route.
    /// The path's placeholders and their values (none when the path does not match).
    pub fn params(&self, path: &str) -> Option<Vec<(&str, String)>> {
        let mut params: Vec<(&str, String)> = Vec::new();
        let mut parts = split(path);
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) => {
                    if l != part {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((name, percent_decode(part))),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// Matches a request path (already without its query); a trailing slash is optional.
    /// Returns the group the client joins (`Some(None)` for a route without a group).
    pub fn matches(&self, path: &str) -> Option<Result<Option<String>, String>> {
        let params = self.params(path)?;
        // One canonical form: escapes that spell no text are refused, not kept as written.
        for (seg, part) in self.segments.iter().zip(split(path)) {
            if let (Segment::Param(_), Err(why)) = (seg, crate::uri::decode_name(part)) {
                return Some(Err(why));
            }
        }
        let Some(template) = &self.group else {
            return Some(Ok(None));
        };
        let values: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let group = fill(template, &values);
        Some(check_name(&group, self.max_group_bytes).map(|()| Some(group)))
    }
}

/// `template` with every `{name}` that has a value replaced by it, in one pass (a value that
/// looks like a placeholder stays as it is).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let value = after.find('}').and_then(|close| {
            let name = &after[1..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close + 1))
        });
        match value {
            Some((v, len)) => {
                out.push_str(v);
                rest = &after[len..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The default origin rule: the page's host and port are the request's `Host` (a default
/// port may be left out on either side), or the page is served from this machine.
fn is_same_host_or_local(origin: &str, host: Option<&[u8]>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return false,
    };
    let suffix = format!(":{default_port}");
    let without_default = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(&suffix) {
            Some(h) => h.to_string(),
            None => a,
        }
    };
    let page = without_default(authority);
    let page_host = match page.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
        None => page.split(':').next().unwrap_or_default().to_string(),
    };
    if matches!(page_host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
        || page_host.ends_with(".localhost")
    {
        return true;
    }
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    page == without_default(host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Route {
        Route::new(
            &crate::config::Config::default().effective_routes()[0],
            &crate::config::WebSocket {
                max_message_bytes: 1024,
                max_group_bytes: 16,
                allowed_origins: vec![
                    "https://Example.com".into(),
                    "https://*.example.org:8443".into(),
                ],
                ..Default::default()
            },
        )
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_and_a_missing_origin_passes() {
        let r = room();
        let ok = |o: &str| r.allows_origin(Some(o.as_bytes()), Some(b"example.com"));
        assert!(ok("https://example.com"));
        assert!(ok("HTTPS://EXAMPLE.COM"));
        assert!(
            !ok("http://example.com"),
            "another scheme is another origin"
        );
        assert!(!ok("https://example.com:8443"));
        assert!(!ok("https://evil-example.com"));
        assert!(ok("https://a.example.org:8443"));
        assert!(ok("https://a.b.example.org:8443"));
        assert!(!ok("https://example.org:8443"), "*. covers subdomains only");
        assert!(
            !ok("https://a.example.org"),
            "the port is part of the origin"
        );
        assert!(!ok("https://aexample.org:8443"));
        assert!(!ok("null"));
        assert!(r.allows_origin(None, None));
    }

    #[test]
    fn by_default_only_the_same_host_and_localhost_may_connect() {
        let r = Route::new(
            &crate::config::Config::default().effective_routes()[0],
            &crate::config::WebSocket::default(),
        );
        let ok = |o: &str, h: &str| r.allows_origin(Some(o.as_bytes()), Some(h.as_bytes()));
        assert!(ok("https://chat.example.com", "chat.example.com"));
        assert!(ok("https://chat.example.com", "Chat.Example.com:443"));
        assert!(ok("http://chat.example.com:8080", "chat.example.com:8080"));
        assert!(!ok("http://chat.example.com:8081", "chat.example.com:8080"));
        assert!(!ok("https://evil.example", "chat.example.com"));
        assert!(!ok(
            "https://chat.example.com.evil.example",
            "chat.example.com"
        ));
        assert!(ok("http://localhost:3000", "chat.example.com"));
        assert!(ok("http://127.0.0.1:5173", "chat.example.com"));
        assert!(ok("http://[::1]:8000", "chat.example.com"));
        assert!(ok("http://app.localhost", "chat.example.com"));
        assert!(!ok("http://localhost.evil.example", "chat.example.com"));
        assert!(!ok("null", "chat.example.com"));
        assert!(!r.allows_origin(Some(b"https://a.example"), None));
        assert!(r.allows_origin(None, Some(b"chat.example.com")));
    }

    #[test]
    fn a_star_lets_any_page_in() {
        let r = Route::new(
            &crate::config::Config::default().effective_routes()[0],
            &crate::config::WebSocket {
                allowed_origins: vec!["*".into()],
                ..Default::default()
            },
        );
        assert!(r.allows_origin(Some(b"https://anything.example"), Some(b"h")));
    }

    #[test]
    fn a_group_over_max_group_bytes_is_refused_naming_the_key() {
        assert_eq!(
            room().matches("/room/0123456789"),
            Some(Ok(Some("room:0123456789".into())))
        );
        let err = room().matches("/room/0123456789ab").unwrap().unwrap_err();
        assert!(err.contains("websocket.max_group_bytes"), "{err}");
    }

    #[test]
    fn trailing_slash_is_optional_and_group_is_filled() {
        let r = room();
        assert_eq!(r.matches("/room/123/"), Some(Ok(Some("room:123".into()))));
        assert_eq!(r.matches("/room/123"), Some(Ok(Some("room:123".into()))));
        assert_eq!(r.matches("/room/"), None);
        assert_eq!(r.matches("/room/1/2"), None);
        assert_eq!(r.matches("/other/1"), None);
    }

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(
            room().matches("/room/caf%C3%A9"),
            Some(Ok(Some("room:café".into())))
        );
    }

    #[test]
    fn control_characters_in_a_group_are_refused() {
        assert!(room().matches("/room/a%0Ab").unwrap().is_err());
    }
}
