//! Semantic checks and error locations: every problem is collected (not just the first) and
//! pointed at `file:line:column` of the key at fault, or at the environment variable that set it.

use std::fmt;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::{Config, Error, OnMessage};

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name, `<defaults>`, or the environment variable name.
    pub origin: String,
    /// 1-based line and column, when the problem is in a file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path such as `websocket.ping_interval` or `route[1].group`.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub(super) fn plain(origin: String, message: String) -> Self {
        Problem {
            origin,
            position: None,
            key: None,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// A key path segment.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Finds the innermost key whose key or value span contains `offset`.
fn key_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (k, v) in table.iter() {
        let kspan = k.span();
        let vspan = v.span();
        let inside = kspan.contains(&offset) || vspan.contains(&offset);
        path.push(Seg::Key(k.get_ref().to_string()));
        match v.get_ref() {
            DeValue::Table(t) if key_at(t, offset, path) => return true,
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        path.push(Seg::Index(i));
                        if key_at(t, offset, path) {
                            return true;
                        }
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        if inside {
            return true;
        }
        path.pop();
    }
    false
}

/// Byte offset of the key at `path`, if the text has it.
fn locate(table: &DeTable<'_>, path: &[Seg]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(name) = first else { return None };
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == name)?;
    match rest.split_first() {
        None => Some(k.span().start),
        Some((Seg::Index(i), rest2)) => match v.get_ref() {
            DeValue::Array(items) => {
                let item = items.get(*i)?;
                match (item.get_ref(), rest2.is_empty()) {
                    (DeValue::Table(t), false) => locate(t, rest2).or(Some(item.span().start)),
                    _ => Some(item.span().start),
                }
            }
            _ => Some(k.span().start),
        },
        Some(_) => match v.get_ref() {
            DeValue::Table(t) => locate(t, rest).or(Some(k.span().start)),
            _ => Some(k.span().start),
        },
    }
}

pub(super) fn from_toml_error(origin: &str, text: &str, e: &toml::de::Error) -> Problem {
    let offset = e.span().map(|s| s.start);
    let key = offset.and_then(|off| {
        let table = DeTable::parse(text).ok()?;
        let mut path = Vec::new();
        key_at(table.get_ref(), off, &mut path).then(|| render_path(&path))
    });
    Problem {
        origin: origin.to_string(),
        position: offset.map(|o| line_col(text, o)),
        key: key.filter(|k| !k.is_empty()),
        message: e.message().trim().to_string(),
    }
}

const ENV_SECTIONS: [&str; 4] = ["server", "websocket", "api", "proxy"];

/// Turns an environment value into TOML: numbers and booleans as such, anything else a string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            Some(v @ toml::Value::Array(_)) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `WSGATE_<SECTION>__<KEY>=value` overrides on top of the file text.
pub(super) fn apply_env(
    cfg: &mut Config,
    origin: &str,
    text: &str,
    env: &[(String, String)],
) -> Result<(), Error> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("WSGATE_") && k.contains("__"))
        .collect();
    if vars.is_empty() {
        return Ok(());
    }
    vars.sort();
    let mut table: toml::Table = toml::from_str(text).map_err(|e| Error {
        problems: vec![from_toml_error(origin, text, &e)],
    })?;
    let mut problems = Vec::new();
    for (name, raw) in vars {
        let rest = &name["WSGATE_".len()..];
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !ENV_SECTIONS.contains(&section.as_str()) {
            problems.push(Problem::plain(
                name.clone(),
                format!(
                    "unknown section {section:?}; environment overrides exist for {}",
                    ENV_SECTIONS.join(", ")
                ),
            ));
            continue;
        }
        let mut candidate = table.clone();
        let entry = candidate
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sec) = entry else {
            continue;
        };
        sec.insert(key.clone(), env_value(raw));
        match Config::deserialize(toml::Value::Table(candidate.clone())) {
            Ok(_) => table = candidate,
            Err(e) => problems.push(Problem {
                origin: name.clone(),
                position: None,
                key: Some(format!("{section}.{key}")),
                message: e.message().trim().to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(Error { problems });
    }
    *cfg = Config::deserialize(toml::Value::Table(table)).map_err(|e| Error {
        problems: vec![Problem::plain(origin.to_string(), e.message().to_string())],
    })?;
    Ok(())
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

/// Semantic checks over a config that parsed; returns every problem found.
pub(super) fn check(cfg: &Config, origin: &str, text: &str) -> Vec<Problem> {
    let table = DeTable::parse(text).ok();
    let mut problems = Vec::new();
    let mut report = |path: Vec<Seg>, message: String| {
        let position = table
            .as_ref()
            .and_then(|t| locate(t.get_ref(), &path))
            .map(|o| line_col(text, o));
        problems.push(Problem {
            origin: origin.to_string(),
            position,
            key: Some(render_path(&path)),
            message,
        });
    };
    let key =
        |parts: &[&str]| -> Vec<Seg> { parts.iter().map(|p| Seg::Key(p.to_string())).collect() };

    let s = &cfg.server;
    if let Err(m) = crate::config::parse_listen(&s.listen) {
        report(key(&["server", "listen"]), m);
    }
    if s.max_connections == 0 {
        report(
            key(&["server", "max_connections"]),
            "must be at least 1".into(),
        );
    }
    if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
        report(
            key(&["server", "max_header_bytes"]),
            format!(
                "{} is out of range; use 1024 to 1048576 (default 16384)",
                s.max_header_bytes
            ),
        );
    }
    if s.handshake_timeout.is_zero() {
        report(
            key(&["server", "handshake_timeout"]),
            "must be more than 0s, e.g. \"10s\"".into(),
        );
    }
    if s.workers > 1024 {
        report(
            key(&["server", "workers"]),
            "more than 1024 workers; use 0 for one per core".into(),
        );
    }

    let w = &cfg.websocket;
    if !w.ping_interval.is_zero() && w.pong_timeout.is_zero() {
        report(
            key(&["websocket", "pong_timeout"]),
            "must be more than 0s while pings are on (ping_interval > 0)".into(),
        );
    }
    if w.max_message_bytes == 0 {
        report(
            key(&["websocket", "max_message_bytes"]),
            "must be at least 1".into(),
        );
    }
    if w.send_queue_bytes == 0 {
        report(
            key(&["websocket", "send_queue_bytes"]),
            "must be at least 1".into(),
        );
    }
    if w.close_timeout.is_zero() {
        report(
            key(&["websocket", "close_timeout"]),
            "must be more than 0s, e.g. \"5s\"".into(),
        );
    }
    for o in &w.allowed_origins {
        if let Err(m) = check_origin(o) {
            report(key(&["websocket", "allowed_origins"]), m);
        }
    }
    if !w.echo_path.is_empty() && !w.echo_path.starts_with('/') {
        report(
            key(&["websocket", "echo_path"]),
            format!(
                "{:?} must start with '/' (or be \"\" to turn the echo route off)",
                w.echo_path
            ),
        );
    }

    if w.max_group_bytes == 0 {
        report(
            key(&["websocket", "max_group_bytes"]),
            "must be at least 1".into(),
        );
    }

    if cfg.api.max_body_bytes == 0 {
        report(key(&["api", "max_body_bytes"]), "must be at least 1".into());
    }
    if cfg.api.max_groups_per_publish == 0 {
        report(
            key(&["api", "max_groups_per_publish"]),
            "must be at least 1".into(),
        );
    }
    if cfg.api.token.as_deref() == Some("") {
        report(
            key(&["api", "token"]),
            "is empty; remove the key to turn auth off, or set a secret".into(),
        );
    }

    let mut seen: Vec<(String, usize)> = Vec::new();
    if !w.echo_path.is_empty() {
        seen.push((normalized(&w.echo_path).to_string(), usize::MAX));
    }
    check_proxy(cfg, &mut report);

    let mut prefixes: Vec<(String, usize)> = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = |field: &str| {
            vec![
                Seg::Key("route".into()),
                Seg::Index(i),
                Seg::Key(field.into()),
            ]
        };
        if r.is_proxy() {
            check_proxy_route(cfg, r, i, &mut prefixes, &mut report);
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
    problems
}

/// An allowed origin is what a browser sends in `Origin`: `scheme://host[:port]`, no path; the
/// host may start with `*.` for every subdomain.
fn check_origin(o: &str) -> Result<(), String> {
    let Some((scheme, authority)) = o.split_once("://") else {
        return Err(format!(
            "{o:?} is not an origin; write it as a browser sends it, e.g. \"https://example.com\""
        ));
    };
    if scheme.is_empty() || authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "{o:?} is not an origin: scheme://host[:port] with no path, e.g. \"https://example.com:8443\""
        ));
    }
    if authority.contains('*')
        && !(authority.starts_with("*.") && authority[2..].find('*').is_none())
    {
        return Err(format!(
            "{o:?}: a wildcard may only stand for subdomains, as in \"https://*.example.com\""
        ));
    }
    Ok(())
}

fn upstream_names(cfg: &Config) -> String {
    if cfg.upstreams.is_empty() {
        return "none is defined; add an [[upstream]] table with name and servers".into();
    }
    let names: Vec<String> = cfg
        .upstreams
        .iter()
        .map(|u| format!("{:?}", u.name))
        .collect();
    format!("the upstreams are {}", names.join(", "))
}

fn check_proxy_route(
    cfg: &Config,
    r: &super::Route,
    i: usize,
    prefixes: &mut Vec<(String, usize)>,
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    let at = |field: &str| {
        vec![
            Seg::Key("route".into()),
            Seg::Index(i),
            Seg::Key(field.into()),
        ]
    };
    match &r.proxy_pass {
        None => report(
            at("path_prefix"),
            "has no proxy_pass; add proxy_pass = \"NAME\" naming an [[upstream]]".into(),
        ),
        Some(name) => {
            if !cfg.upstreams.iter().any(|u| &u.name == name) {
                report(
                    at("proxy_pass"),
                    format!("no upstream is named {name:?}; {}", upstream_names(cfg)),
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

fn check_proxy(cfg: &Config, report: &mut impl FnMut(Vec<Seg>, String)) {
    let key =
        |parts: &[&str]| -> Vec<Seg> { parts.iter().map(|p| Seg::Key(p.to_string())).collect() };
    let p = &cfg.proxy;
    if !p.ping_interval.is_zero() && p.pong_timeout.is_zero() {
        report(
            key(&["proxy", "pong_timeout"]),
            "must be more than 0s while tunnel pings are on (proxy.ping_interval > 0)".into(),
        );
    }
    for (i, t) in p.trusted_proxies.iter().enumerate() {
        if let Err(m) = super::parse_cidr(t) {
            report(
                vec![
                    Seg::Key("proxy".into()),
                    Seg::Key("trusted_proxies".into()),
                    Seg::Index(i),
                ],
                m,
            );
        }
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let at = |field: &str| {
            vec![
                Seg::Key("upstream".into()),
                Seg::Index(i),
                Seg::Key(field.into()),
            ]
        };
        if u.name.is_empty()
            || !u
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            report(
                at("name"),
                format!(
                    "{:?} is not a valid name; use letters, digits, '-', '_' and '.'",
                    u.name
                ),
            );
        }
        if let Some(j) = cfg.upstreams[..i].iter().position(|o| o.name == u.name) {
            report(
                at("name"),
                format!("{:?} is already the name of upstream[{j}]", u.name),
            );
        }
        if u.servers.is_empty() {
            report(
                at("servers"),
                "is empty; list at least one \"host:port\"".into(),
            );
        }
        for (k, entry) in u.servers.iter().enumerate() {
            let t = entry.table();
            let here = vec![
                Seg::Key("upstream".into()),
                Seg::Index(i),
                Seg::Key("servers".into()),
                Seg::Index(k),
            ];
            if let Err(m) = super::parse_server_addr(&t.addr) {
                report(here.clone(), m);
            }
            if t.weight == 0 || t.weight > 1000 {
                report(
                    here,
                    format!(
                        "weight {} is out of range; use 1 to 1000 (default 1)",
                        t.weight
                    ),
                );
            }
        }
        if !u.servers.is_empty() && u.servers.iter().all(|s| s.table().backup) {
            report(
                at("servers"),
                "every server is a backup; backups are used only while a non-backup server exists and is down".into(),
            );
        }
        if u.balance == super::Balance::IpHash && u.servers.iter().any(|s| s.table().backup) {
            report(
                at("balance"),
                "ip_hash cannot be combined with backup servers (as in nginx); remove backup or pick another balance".into(),
            );
        }
        if u.max_fails > 0 && u.fail_timeout.is_zero() {
            report(
                at("fail_timeout"),
                "must be more than 0s while max_fails > 0, e.g. \"10s\"".into(),
            );
        }
        if u.connect_timeout.is_zero() {
            report(
                at("connect_timeout"),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
        if u.read_timeout.is_zero() {
            report(
                at("read_timeout"),
                "must be more than 0s, e.g. \"60s\"".into(),
            );
        }
        if !u.health_path.is_empty() && !u.health_path.starts_with('/') {
            report(
                at("health_path"),
                format!(
                    "{:?} must start with '/' (or be \"\" to turn active checks off)",
                    u.health_path
                ),
            );
        }
        if !u.health_path.is_empty() && u.health_interval.is_zero() {
            report(
                at("health_interval"),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
    }
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
        let text = "[server]\nlisten = \"nope\"\nmax_connections = 0\n\n[[route]]\npath = \"room/{id}\"\ngroup = \"g\"\n\n[[route]]\npath = \"/chat/{id}\"\ngroup = \"chat:{room}\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("t.toml:2:1: server.listen:"), "{}", p[0]);
        assert!(
            p[1].starts_with("t.toml:3:1: server.max_connections:"),
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
        assert_eq!(
            cfg.websocket.ping_interval,
            super::super::Duration::from_secs(2)
        );

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
