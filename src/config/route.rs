//! `[[route]]`: hub routes (a URL pattern whose clients join a group) and proxy routes
//! (`path_prefix` + `proxy_pass`), and the checks that span them (paths used twice, names that
//! point nowhere).

use serde::Deserialize;

use super::duration::Duration;
use super::hooks::{RouteHooks, check_hook_url};
use super::proxy::{Upstream, upstream_names};
use super::validate::{Seg, item};
use super::websocket::{Compression, WebSocket, check_origin};

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
    /// POST it to the route's `hooks.on_message` backend URL; the answer may reply to the
    /// client and publish.
    Forward,
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
    /// Overrides `websocket.compression` ("on" or "off") for this route.
    pub compression: Option<Compression>,
    /// Overrides `websocket.compression_min_bytes` for this route.
    pub compression_min_bytes: Option<usize>,
    /// Keep the group's recent publications: `{ size = 100, ttl = "5m" }` keeps at most `size`,
    /// none older than `ttl`. Every publication of such a group gets a position (epoch, offset),
    /// which is what recovery and replay need. Applies to every group the route's `group`
    /// pattern covers, whoever publishes. Default: none (the default room route keeps 100 for
    /// 5 minutes).
    pub history: Option<History>,
    /// Send a plain WebSocket client joining the group its recent messages first, then live
    /// ones, with no duplicate and no gap at the seam: `{ last = 100, within = "30s" }`. Needs
    /// `history`. Default: off (on for the default room route: a page replaced by a form POST
    /// joins after the backend published, and would otherwise see nothing).
    pub replay: Option<Replay>,
    /// Groups a `wsgate.v1` client of this route may subscribe to, as patterns: `{name}` is
    /// filled from the path, `*` matches any text. Example `["room:{room}", "news:*"]`.
    /// Default: the route's own group.
    pub subscribe: Option<Vec<String>>,
    /// Whether `wsgate.v1` clients may publish to the groups they may subscribe to. Default:
    /// yes when `on_message = "broadcast"`.
    pub client_publish: Option<bool>,
    /// Keep presence (which connections are in the group) for the route's groups. Default true.
    #[serde(default = "default_true")]
    pub presence: bool,
    /// Tell `wsgate.v1` clients that ask (`"events": true` on subscribe) when connections join
    /// and leave the group. Needs `presence`. Default false.
    #[serde(default)]
    pub join_leave: bool,
    /// Backend hooks: `{ on_connect = URL, on_message = URL, on_disconnect = URL }`, each
    /// optional (`on_message` is used with `on_message = "forward"`). Settings shared by all
    /// hooks (timeouts, retries, signing) are in `[hooks]`. Default: none.
    pub hooks: Option<RouteHooks>,
    /// With `[jwt]` set: connections without a token may use this route too (a token that is
    /// given is still checked). Default false: a token is required.
    #[serde(default)]
    pub anonymous: bool,
}

/// `history = { size = 100, ttl = "5m" }`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Most publications kept per group (1 to 100000).
    pub size: usize,
    /// Oldest publication kept.
    pub ttl: Duration,
}

/// `replay = { last = 100, within = "30s" }`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Most messages replayed to a joining client (at most the route's `history.size`).
    pub last: usize,
    /// Only messages this recent are replayed (at most the route's `history.ttl`).
    pub within: Duration,
}

fn default_on_message() -> OnMessage {
    OnMessage::Broadcast
}

fn default_true() -> bool {
    true
}

impl Route {
    /// A hub route at `path` joining `group`, every other setting at its default.
    pub fn hub(path: &str, group: Option<&str>) -> Self {
        Route {
            path: path.into(),
            path_prefix: None,
            proxy_pass: None,
            group: group.map(str::to_string),
            on_message: OnMessage::Broadcast,
            echo_to_sender: true,
            subprotocols: Vec::new(),
            max_message_bytes: None,
            allowed_origins: None,
            compression: None,
            compression_min_bytes: None,
            history: None,
            replay: None,
            subscribe: None,
            client_publish: None,
            presence: true,
            join_leave: false,
            hooks: None,
            anonymous: false,
        }
    }

    /// The route wsgate serves when no route is configured: `/room/{room}/` joining
    /// `room:{room}`, keeping 100 publications for 5 minutes and replaying the last 100 of the
    /// last 30 seconds to a joining page (the form-POST reload of the story).
    pub fn default_room() -> Self {
        Route {
            history: Some(History {
                size: 100,
                ttl: Duration::from_secs(300),
            }),
            replay: Some(Replay {
                last: 100,
                within: Duration::from_secs(30),
            }),
            ..Route::hub("/room/{room}/", Some("room:{room}"))
        }
    }

    /// The groups a `wsgate.v1` client may subscribe to: `subscribe`, or the route's group.
    pub fn subscribe_patterns(&self) -> Vec<String> {
        match &self.subscribe {
            Some(s) => s.clone(),
            None => self.group.iter().cloned().collect(),
        }
    }

    /// Whether `wsgate.v1` clients may publish.
    pub fn allows_client_publish(&self) -> bool {
        self.client_publish
            .unwrap_or(self.on_message == OnMessage::Broadcast)
    }

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
            || norm == "/readyz"
            || norm == "/wsgate.js"
        {
            report(
                at("path"),
                format!(
                    "{:?} is reserved for the demo page, wsgate.js, the API or metrics; choose another path",
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
        check_stream(r, &params, &at, report);
        check_hooks(r, &at, report);
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

/// Most publications a group may keep.
const MAX_HISTORY_SIZE: usize = 100_000;
/// Longest a publication may be kept.
const MAX_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// `history`, `replay`, `subscribe` and `join_leave` of a hub route with path parameters
/// `params`.
fn check_stream(
    r: &Route,
    params: &[String],
    at: &dyn Fn(&str) -> Vec<Seg>,
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    if let Some(h) = &r.history {
        if h.size == 0 || h.size > MAX_HISTORY_SIZE {
            report(
                at("history"),
                format!(
                    "size {} is out of range; use 1 to {MAX_HISTORY_SIZE}",
                    h.size
                ),
            );
        }
        if h.ttl.is_zero() || h.ttl.get() > MAX_HISTORY_TTL {
            report(
                at("history"),
                format!(
                    "ttl {} is out of range; use more than 0s and at most 7 days",
                    h.ttl
                ),
            );
        }
        if r.group.is_none() {
            report(
                at("history"),
                "keeps a group's publications, but this route has no group; add group = \"...\""
                    .into(),
            );
        }
    }
    if let Some(p) = &r.replay {
        match &r.history {
            None => report(
                at("replay"),
                "needs history on this route, e.g. history = { size = 100, ttl = \"5m\" }: replay sends what history kept".into(),
            ),
            Some(h) => {
                if p.last == 0 || p.last > h.size {
                    report(
                        at("replay"),
                        format!(
                            "last = {} is out of range; use 1 to history.size ({})",
                            p.last, h.size
                        ),
                    );
                }
                if p.within.is_zero() || p.within.get() > h.ttl.get() {
                    report(
                        at("replay"),
                        format!(
                            "within = {} is out of range; use more than 0s and at most history.ttl ({})",
                            p.within, h.ttl
                        ),
                    );
                }
            }
        }
    }
    for pattern in r.subscribe.iter().flatten() {
        if let Err(m) = group_pattern_params(pattern)
            .and_then(|used| match used.iter().find(|u| !params.contains(u)) {
                Some(u) => Err(format!(
                    "{pattern:?} uses {{{u}}} but the path {:?} has no such placeholder; use * for any text",
                    r.path
                )),
                None => Ok(()),
            })
        {
            report(at("subscribe"), m);
        }
    }
    if r.join_leave && !r.presence {
        report(
            at("join_leave"),
            "needs presence = true: join and leave events are changes of presence".into(),
        );
    }
}

/// `hooks` and `on_message = "forward"` of a hub route.
fn check_hooks(
    r: &Route,
    at: &dyn Fn(&str) -> Vec<Seg>,
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    let forward_url = r.hooks.as_ref().and_then(|h| h.on_message.as_ref());
    if r.on_message == OnMessage::Forward && forward_url.is_none() {
        report(
            at("on_message"),
            "\"forward\" needs the backend URL: add hooks = { on_message = \"http://127.0.0.1:8000/ws/message\" } to this route".into(),
        );
    }
    if r.on_message != OnMessage::Forward && forward_url.is_some() {
        report(
            at("hooks"),
            "on_message has a URL but the route's on_message is not \"forward\"; set on_message = \"forward\" or remove the URL".into(),
        );
    }
    for (_, url) in r.hooks.iter().flat_map(RouteHooks::urls) {
        if let Err(m) = check_hook_url(url) {
            report(at("hooks"), m);
        }
    }
}

/// Placeholders of a group pattern (`room:{room}`, `news:*`), or what is wrong with it.
fn group_pattern_params(pattern: &str) -> Result<Vec<String>, String> {
    if pattern.is_empty() {
        return Err("an empty pattern matches no group".into());
    }
    template_params(pattern)
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
        || r.history.is_some()
        || r.replay.is_some()
        || r.subscribe.is_some()
        || r.client_publish.is_some()
        || r.join_leave
        || r.hooks.is_some()
        || r.anonymous
        || r.allowed_origins.is_some()
        || !r.subprotocols.is_empty()
        || r.max_message_bytes.is_some()
        || r.compression.is_some()
        || r.compression_min_bytes.is_some()
        || r.on_message != OnMessage::Broadcast
        || !r.echo_to_sender;
    if hub_only {
        report(
            at("proxy_pass"),
            "group, on_message, echo_to_sender, subprotocols, max_message_bytes, allowed_origins, compression, compression_min_bytes, history, replay, subscribe, client_publish, join_leave, hooks and anonymous apply to hub routes only; the upstream decides these for a proxy route (compression is negotiated end to end between client and upstream)".into(),
        );
    }
}
