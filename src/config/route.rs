//! `[[route]]`: hub routes (a URL pattern whose clients join a group) and proxy routes
//! (`path_prefix` + `proxy_pass`), and the checks that span them (paths used twice, names that
//! point nowhere).

use serde::Deserialize;

use super::proxy::{Upstream, upstream_names};
use super::validate::{Seg, item};
use super::websocket::{WebSocket, check_origin};

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

/// One `[[route]]` table: either a hub route (a URL pattern whose clients join a group) or a
/// proxy route (`path_prefix` + `proxy_pass`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Hub route: URL path pattern; `{name}` matches one path segment. A trailing slash is
    /// optional when matching. Example `/room/{room}/`.
    #[serde(default)]
    pub path: String,
    /// Proxy route: every request whose path starts with this prefix goes to `proxy_pass`. The
    /// longest matching prefix wins; hub routes (`path`) are matched first. Example `/`.
    pub path_prefix: Option<String>,
    /// Proxy route: the `[[upstream]]` name to forward to, like nginx's `proxy_pass http://NAME`.
    pub proxy_pass: Option<String>,
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
    /// Overrides `websocket.allowed_origins` for this route.
    pub allowed_origins: Option<Vec<String>>,
}

fn default_on_message() -> OnMessage {
    OnMessage::Broadcast
}

fn default_true() -> bool {
    true
}

impl Route {
    /// Whether this is a proxy route (it has `proxy_pass` or `path_prefix`).
    pub fn is_proxy(&self) -> bool {
        self.proxy_pass.is_some() || self.path_prefix.is_some()
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Placeholder names in a path pattern, or a sentence saying what is wrong with it.
pub fn path_params(pattern: &str) -> Result<Vec<String>, String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} must start with '/'"));
    }
    let mut names = Vec::new();
    for seg in pattern.split('/') {
        let opens = seg.matches('{').count();
        let closes = seg.matches('}').count();
        if opens == 0 && closes == 0 {
            continue;
        }
        let name = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|n| opens == 1 && closes == 1 && !n.is_empty());
        let Some(name) = name else {
            return Err(format!(
                "segment {seg:?} of {pattern:?} is not a placeholder; a placeholder is a whole segment like {{room}}"
            ));
        };
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "placeholder {{{name}}} may only use letters, digits and '_'"
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!(
                "placeholder {{{name}}} appears twice in {pattern:?}"
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Placeholder names used in a group template.
fn template_params(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("{template:?} has an unclosed '{{'"));
        };
        out.push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{template:?} has a '}}' without '{{'"));
    }
    Ok(out)
}

fn normalized(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Reports what is wrong with the routes, given the `[websocket]` section (its echo path is a
/// route too) and the upstreams proxy routes may name.
pub(super) fn check(
    routes: &[Route],
    w: &WebSocket,
    upstreams: &[Upstream],
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    if !w.echo_path.is_empty() {
        seen.push((normalized(&w.echo_path).to_string(), usize::MAX));
    }

    let mut prefixes: Vec<(String, usize)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let at = |field: &str| item("route", i, field);
        if r.is_proxy() {
            check_proxy_route(upstreams, r, i, &mut prefixes, report);
            continue;
        }
        if r.path.is_empty() {
            report(
                vec![Seg::Key("route".into()), Seg::Index(i)],
                "has neither path (a hub route) nor path_prefix + proxy_pass (a proxy route); add one of them".into(),
            );
            continue;
        }
        let params = match path_params(&r.path) {
            Ok(p) => p,
            Err(m) => {
                report(at("path"), m);
                continue;
            }
        };
        let norm = normalized(&r.path).to_string();
        if norm == "/"
            || norm == "/api"
            || norm.starts_with("/api/")
            || norm == "/metrics"
            || norm == "/healthz"
        {
            report(
                at("path"),
                format!(
                    "{:?} is reserved for the demo page, the API or metrics; choose another path",
                    r.path
                ),
            );
        }
        if let Some((_, j)) = seen.iter().find(|(p, _)| *p == norm) {
            let other = if *j == usize::MAX {
                "websocket.echo_path".to_string()
            } else {
                format!("route[{j}]")
            };
            report(
                at("path"),
                format!("{:?} is already used by {other}", r.path),
            );
        }
        seen.push((norm, i));
        match (&r.group, r.on_message) {
            (None, OnMessage::Echo) => {}
            (None, _) => report(
                at("path"),
                "has no group; add group = \"...\" (e.g. \"room:{room}\") or set on_message = \"echo\"".into(),
            ),
            (Some(g), _) => match template_params(g) {
                Err(m) => report(at("group"), m),
                Ok(used) => {
                    if g.is_empty() {
                        report(at("group"), "is empty".into());
                    }
                    for u in used.iter().filter(|u| !params.contains(u)) {
                        report(
                            at("group"),
                            format!("uses {{{u}}} but the path {:?} has no such placeholder", r.path),
                        );
                    }
                }
            },
        }
        for p in &r.subprotocols {
            if !is_token(p) {
                report(
                    at("subprotocols"),
                    format!("{p:?} is not a valid subprotocol token"),
                );
            }
        }
        if r.max_message_bytes == Some(0) {
            report(at("max_message_bytes"), "must be at least 1".into());
        }
        for o in r.allowed_origins.iter().flatten() {
            if let Err(m) = check_origin(o) {
                report(at("allowed_origins"), m);
            }
        }
    }
}

fn check_proxy_route(
    upstreams: &[Upstream],
    r: &Route,
    i: usize,
    prefixes: &mut Vec<(String, usize)>,
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    let at = |field: &str| item("route", i, field);
    match &r.proxy_pass {
        None => report(
            at("path_prefix"),
            "has no proxy_pass; add proxy_pass = \"NAME\" naming an [[upstream]]".into(),
        ),
        Some(name) => {
            if !upstreams.iter().any(|u| &u.name == name) {
                report(
                    at("proxy_pass"),
                    format!(
                        "no upstream is named {name:?}; {}",
                        upstream_names(upstreams)
                    ),
                );
            }
        }
    }
    match &r.path_prefix {
        None => report(
            at("proxy_pass"),
            "has no path_prefix; add path_prefix = \"/\" to proxy every path".into(),
        ),
        Some(p) if !p.starts_with('/') => {
            report(at("path_prefix"), format!("{p:?} must start with '/'"))
        }
        Some(p) => {
            if let Some((_, j)) = prefixes.iter().find(|(q, _)| q == p) {
                report(
                    at("path_prefix"),
                    format!("{p:?} is already used by route[{j}]"),
                );
            }
            prefixes.push((p.clone(), i));
        }
    }
    if !r.path.is_empty() {
        report(
            at("path"),
            "a proxy route uses path_prefix, not path; remove one of them".into(),
        );
    }
    let hub_only = r.group.is_some()
        || r.allowed_origins.is_some()
        || !r.subprotocols.is_empty()
        || r.max_message_bytes.is_some()
        || r.on_message != OnMessage::Broadcast
        || !r.echo_to_sender;
    if hub_only {
        report(
            at("proxy_pass"),
            "group, on_message, echo_to_sender, subprotocols, max_message_bytes and allowed_origins apply to hub routes only; the upstream decides these for a proxy route".into(),
        );
    }
}
