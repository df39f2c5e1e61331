//! Matching request paths to WebSocket routes and filling in group names.

use std::sync::Arc;

use crate::config::{self, OnMessage};
use crate::hub::group::check_name;
use crate::uri::percent_decode;
use crate::ws::session::RouteCtx;

/// A route ready for matching.
#[derive(Debug)]
pub struct Route {
    /// The pattern as configured, for messages.
    pub pattern: String,
    segments: Vec<Segment>,
    group: Option<String>,
    pub subprotocols: Vec<String>,
    max_group_bytes: usize,
    /// Lowercased; empty: any origin.
    origins: Vec<String>,
    pub ctx: Arc<RouteCtx>,
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
        Route {
            pattern: r.path.clone(),
            segments,
            group: r.group.clone(),
            subprotocols: r.subprotocols.clone(),
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
            }),
        }
    }

    /// The built-in echo route at `path`.
    pub fn echo(path: &str, ws: &config::WebSocket) -> Self {
        Route::new(
            &config::Route {
                path: path.to_string(),
                path_prefix: None,
                proxy_pass: None,
                group: None,
                on_message: OnMessage::Echo,
                echo_to_sender: true,
                subprotocols: Vec::new(),
                max_message_bytes: None,
                allowed_origins: None,
            },
            ws,
        )
    }

    /// Whether a browser from `origin` may connect. A request without `Origin` is not from a
    /// browser page (CLI tools and servers do not send it), so the check does not apply: what
    /// it prevents is another site's page using a visitor's cookies (RFC 6455 §10.2).
    pub fn allows_origin(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else { return true };
        if self.origins.is_empty() {
            return true;
        }
        let origin = String::from_utf8_lossy(origin).to_ascii_lowercase();
        self.origins
            .iter()
            .any(|allowed| match allowed.split_once("://*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|o| o.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(domain))
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => origin == *allowed,
            })
    }

    /// Matches a request path (already without its query); a trailing slash is optional.
    /// Returns the group the client joins (`Some(None)` for a route without a group).
    pub fn matches(&self, path: &str) -> Option<Result<Option<String>, String>> {
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
        let Some(template) = &self.group else {
            return Some(Ok(None));
        };
        let mut group = template.clone();
        for (name, value) in &params {
            group = group.replace(&format!("{{{name}}}"), value);
        }
        Some(check_name(&group, self.max_group_bytes).map(|()| Some(group)))
    }
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
        let ok = |o: &str| r.allows_origin(Some(o.as_bytes()));
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
        assert!(r.allows_origin(None));
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
