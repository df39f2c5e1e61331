//! Who answered: a guess at the server or proxy behind a response (from `Server`, `Via`,
//! wsgate's `X-Wsgate-Diagnosis` and the body's wording), and the fix for each kind of proxy
//! when the upgrade headers were lost or an idle tunnel was cut.
//!
//! Pure text work over a response head and body; no I/O.

use super::head::Head;

/// The kinds of front server doctor knows the fixes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Nginx,
    Caddy,
    Haproxy,
    Wsgate,
    Envoy,
    Traefik,
}

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Caddy => "Caddy",
            Proxy::Haproxy => "HAProxy",
            Proxy::Wsgate => "wsgate",
            Proxy::Envoy => "Envoy",
            Proxy::Traefik => "Traefik",
        }
    }
}

/// What a response says about the hops it came through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hops {
    /// The server that wrote the response head (the first hop), and the evidence.
    pub front: Option<(Proxy, String)>,
    /// The body reads like wsgate's own explanation (wsgate itself answered, behind any front).
    pub app_is_wsgate: bool,
    /// wsgate in front forwarded the upgrade and says what its upstream did.
    pub wsgate_diagnosis: Option<String>,
    /// `Via` as sent: proxies that announce themselves.
    pub via: Option<String>,
    /// `Server` as sent.
    pub server: Option<String>,
    /// The body says the request arrived over HTTP/1.0 (nginx before 1.29.7 without
    /// `proxy_http_version 1.1`).
    pub saw_http10: bool,
}

impl Hops {
    /// Reads the clues in a response head and body.
    pub fn guess(head: &Head, body: &str) -> Hops {
        let server = head.header("server").map(str::to_string);
        let via = head.header("via").map(str::to_string);
        let wsgate_diagnosis = head.header("x-wsgate-diagnosis").map(str::to_string);
        let lower_body = body.to_ascii_lowercase();
        let s = server.as_deref().unwrap_or("").to_ascii_lowercase();
        let front = if wsgate_diagnosis.is_some() {
            Some((Proxy::Wsgate, "its X-Wsgate-Diagnosis header".to_string()))
        } else if s.starts_with("nginx") || s.starts_with("openresty") {
            Some((
                Proxy::Nginx,
                format!("Server: {}", server.as_deref().unwrap_or("")),
            ))
        } else if s.starts_with("caddy") {
            Some((Proxy::Caddy, "Server: Caddy".to_string()))
        } else if s.starts_with("envoy") || s.starts_with("istio-envoy") {
            Some((
                Proxy::Envoy,
                format!("Server: {}", server.as_deref().unwrap_or("")),
            ))
        } else if s.contains("haproxy")
            || lower_body.contains("no server is available to handle this request")
        {
            Some((Proxy::Haproxy, "its error page".to_string()))
        } else if s.contains("traefik") {
            Some((Proxy::Traefik, "Server: Traefik".to_string()))
        } else if lower_body.contains("<center>nginx") {
            Some((Proxy::Nginx, "its error page".to_string()))
        } else if via
            .as_deref()
            .is_some_and(|v| v.to_ascii_lowercase().contains("caddy"))
        {
            Some((Proxy::Caddy, "Via".to_string()))
        } else {
            None
        };
        let app_is_wsgate = body.contains("is a WebSocket endpoint")
            || body.contains("put wsgate itself in front")
            || lower_body.contains("wsgate");
        Hops {
            front,
            app_is_wsgate: app_is_wsgate && wsgate_diagnosis.is_none(),
            wsgate_diagnosis,
            via,
            server,
            saw_http10: body.contains("HTTP/1.0"),
        }
    }

    /// "nginx (by Server: nginx/1.22.1)", or what is known of the answering server.
    pub fn who_answered(&self) -> String {
        let mut parts = Vec::new();
        if let Some((p, why)) = &self.front {
            parts.push(format!("{} (by {why})", p.name()));
        } else if let Some(s) = &self.server {
            parts.push(format!("a server calling itself {s:?}"));
        }
        if self.app_is_wsgate {
            parts.push("wsgate (by its body)".to_string());
        }
        if let Some(v) = &self.via {
            parts.push(format!("Via: {v}"));
        }
        if parts.is_empty() {
            "a server that does not name itself (no Server or Via header)".to_string()
        } else {
            parts.join(", behind it ")
        }
    }

    /// Why the answering server did not see the upgrade, in plain words.
    pub fn stripped_story(&self) -> String {
        if let Some(d) = &self.wsgate_diagnosis {
            return format!(
                "wsgate in front forwarded the upgrade with Upgrade and Connection, and says: {d}"
            );
        }
        let app = if self.app_is_wsgate {
            "wsgate, which answered,"
        } else {
            "the server that answered"
        };
        let hop = match &self.front {
            Some((p, why)) if !(self.app_is_wsgate && *p == Proxy::Wsgate) => {
                format!("{} in front (by {why})", p.name())
            }
            _ => "a proxy or load balancer between doctor and it".to_string(),
        };
        let downgraded = if self.saw_http10 {
            " (and passed it on over HTTP/1.0, which cannot upgrade)"
        } else {
            ""
        };
        format!(
            "doctor sent Upgrade: websocket and Connection: Upgrade, but {app} got the request without \
them: {hop} most likely removed them{downgraded}.\nThey are hop-by-hop headers (RFC 9110 section 7.6.1), which \
every proxy drops unless it is told to pass the upgrade on"
        )
    }

    /// The fix for the proxy that most likely lost the upgrade headers; every known fix when the
    /// proxy is not known.
    pub fn upgrade_fix(&self) -> String {
        match (&self.front, &self.wsgate_diagnosis) {
            // wsgate passes upgrades; the culprit is behind it, and unknown.
            (_, Some(_)) => [Proxy::Nginx, Proxy::Caddy, Proxy::Haproxy]
                .map(fix_for)
                .join("\n"),
            (Some((p, _)), None) => fix_for(*p),
            (None, None) => [Proxy::Nginx, Proxy::Caddy, Proxy::Haproxy, Proxy::Wsgate]
                .map(fix_for)
                .join("\n"),
        }
    }
}

/// How to make one kind of proxy pass WebSocket upgrades.
pub fn fix_for(p: Proxy) -> String {
    match p {
        Proxy::Nginx => "nginx: in the location that proxies to the WebSocket server add
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection \"upgrade\";
  (and raise proxy_read_timeout above your longest silence, default 60s)"
            .into(),
        Proxy::Caddy => "Caddy: reverse_proxy passes upgrades by default; look for a header_up that \
removes or overwrites Connection or Upgrade, or a handler in front that answers instead"
            .into(),
        Proxy::Haproxy => "HAProxy: mode http passes upgrades by itself; look for http-request del-header or \
set-header on Connection/Upgrade, and set `timeout tunnel 1h` (without it timeout client/server cut idle \
WebSockets); option http-server-close does not break upgrades, mode tcp forwards everything untouched"
            .into(),
        Proxy::Wsgate => "wsgate: zero config: a [[route]] with path_prefix = \"/\" and proxy_pass = \"<upstream>\" \
passes upgrades as they are"
            .into(),
        Proxy::Envoy => "Envoy: upgrades are off until enabled: add upgrade_configs: [{upgrade_type: websocket}] \
to the HTTP connection manager (or the route)"
            .into(),
        Proxy::Traefik => "Traefik: passes WebSockets by default; look for a middleware that rewrites \
Connection or Upgrade"
            .into(),
    }
}

/// Known idle limits of proxies: seconds, and the setting that causes them.
const IDLE_LIMITS: [(f64, &str); 4] = [
    (
        60.0,
        "nginx's proxy_read_timeout (default 60 s; also Traefik's readTimeout and many load balancers)",
    ),
    (
        50.0,
        "HAProxy's timeout client/server from the sample configs (50 s) when timeout tunnel is not set",
    ),
    (180.0, "Traefik's idleTimeout (default 180 s)"),
    (300.0, "Envoy's stream_idle_timeout (default 5 min)"),
];

/// What an idle cut after `secs` seconds most likely was, given who answered the upgrade.
pub fn idle_cut_cause(secs: f64, front: Option<Proxy>) -> String {
    let known = IDLE_LIMITS
        .iter()
        .find(|(limit, _)| (secs - limit).abs() <= 2.0)
        .map(|(_, what)| format!("; the time matches {what}"))
        .unwrap_or_default();
    let who = match front {
        Some(Proxy::Nginx) => {
            "nginx answered the upgrade: its proxy_read_timeout (default 60 s) closes a tunnel in which \
the server sent nothing for that long; raise it (proxy_read_timeout 3600s;) or let the server send pings"
        }
        Some(Proxy::Haproxy) => {
            "HAProxy answered the upgrade: set `timeout tunnel 1h` (otherwise timeout client/server apply), \
or let the server send pings"
        }
        Some(Proxy::Envoy) => {
            "Envoy answered the upgrade: raise stream_idle_timeout, or let the server send pings"
        }
        Some(Proxy::Wsgate) => {
            "wsgate answered the upgrade: check proxy.idle_timeout (off by default) in its config"
        }
        _ => {
            "a proxy read timeout such as nginx's proxy_read_timeout (default 60 s), HAProxy's timeout \
tunnel or a load balancer's idle timeout; raise it, or let the server send pings (wsgate: \
websocket.ping_interval, 25 s by default) so the tunnel is never silent that long"
        }
    };
    format!("{who}{known}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &str) -> Head {
        let raw = format!("HTTP/1.1 426 Upgrade Required\r\n{lines}\r\n");
        super::super::head::parse_head(raw.as_bytes())
            .expect("valid head")
            .expect("complete head")
            .0
    }

    #[test]
    fn names_nginx_from_its_server_header_and_gives_only_its_fix() {
        let h = Hops::guess(
            &head("Server: nginx/1.22.1\r\n"),
            "426 Upgrade Required: /x is a WebSocket endpoint",
        );
        assert_eq!(h.front.as_ref().map(|f| f.0), Some(Proxy::Nginx));
        assert!(h.app_is_wsgate);
        assert!(
            h.stripped_story()
                .contains("nginx in front (by Server: nginx/1.22.1)"),
            "{}",
            h.stripped_story()
        );
        let fix = h.upgrade_fix();
        assert!(
            fix.contains("proxy_set_header Upgrade $http_upgrade;"),
            "{fix}"
        );
        assert!(!fix.contains("HAProxy"), "{fix}");
    }

    #[test]
    fn an_unknown_hop_gets_every_fix() {
        let h = Hops::guess(&head(""), "");
        assert_eq!(h.front, None);
        let fix = h.upgrade_fix();
        for want in ["nginx:", "Caddy:", "HAProxy:", "wsgate: zero config"] {
            assert!(fix.contains(want), "{want} missing in {fix}");
        }
        assert!(h.who_answered().contains("does not name itself"));
    }

    #[test]
    fn wsgate_in_front_points_behind_itself() {
        let h = Hops::guess(
            &head("X-Wsgate-Diagnosis: the upstream answered 426\r\n"),
            "",
        );
        assert_eq!(h.front.as_ref().map(|f| f.0), Some(Proxy::Wsgate));
        assert!(
            h.stripped_story()
                .starts_with("wsgate in front forwarded the upgrade")
        );
        assert!(h.upgrade_fix().contains("nginx:"));
        assert!(!h.upgrade_fix().contains("wsgate: zero config"));
    }

    #[test]
    fn haproxy_is_known_by_its_error_page() {
        let h = Hops::guess(
            &head(""),
            "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>",
        );
        assert_eq!(h.front.as_ref().map(|f| f.0), Some(Proxy::Haproxy));
    }

    #[test]
    fn an_idle_cut_near_sixty_seconds_is_named() {
        let t = idle_cut_cause(60.4, None);
        assert!(
            t.contains("; the time matches nginx's proxy_read_timeout"),
            "{t}"
        );
        let t = idle_cut_cause(2.0, Some(Proxy::Nginx));
        assert!(
            t.starts_with("nginx answered the upgrade: its proxy_read_timeout"),
            "{t}"
        );
        assert!(!t.contains("matches"), "{t}");
    }
}
