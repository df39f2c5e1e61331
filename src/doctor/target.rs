//! The URL under diagnosis: `ws://`, `wss://`, `http://` or `https://`, split into what each
//! step needs (host to resolve, port, TLS or not, request target, `Host` header), and the
//! resolution of a redirect's `Location` against it.
//!
//! Pure parsing: no lookups, no sockets.

use std::net::IpAddr;

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (or as a redirect named it).
    pub url: String,
    /// `wss://` or `https://`.
    pub secure: bool,
    /// Host name or address, without brackets, lowercased.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header: the host (bracketed if IPv6) and the port when it is not the default.
    pub authority: String,
}

/// Why a URL cannot be diagnosed; the message ends with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

fn bad(url: &str, why: impl Into<String>) -> UrlError {
    UrlError {
        url: url.to_string(),
        why: why.into(),
    }
}

impl Target {
    /// Parses an absolute URL with one of the four schemes (case-insensitive).
    ///
    /// # Errors
    /// Another scheme, a missing host, a bad port, credentials or a fragment in the URL.
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(
                url,
                "not an absolute URL; write it like ws://host:port/path or wss://host/path",
            )
        })?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            other => {
                return Err(bad(
                    url,
                    format!(
                        "scheme {other:?} is not one doctor checks; use ws://, wss://, http:// or https://"
                    ),
                ));
            }
        };
        if rest.contains('#') {
            return Err(bad(
                url,
                "WebSocket URLs cannot have a #fragment (RFC 6455 section 3); remove it",
            ));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(bad(
                url,
                "credentials in the URL are not supported; remove the user:password@ part",
            ));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad(
                url,
                "the path has spaces or control characters; percent-encode them (%20)",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|why| bad(url, why))?;
        if host.is_empty() {
            return Err(bad(url, "no host; write it like ws://127.0.0.1:8080/path"));
        }
        let default_port = if secure { 443 } else { 80 };
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(bad(
                        url,
                        format!("port {p:?} is not a number from 1 to 65535"),
                    ));
                }
            },
        };
        let host = host.to_ascii_lowercase();
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        Ok(Target {
            url: url.to_string(),
            secure,
            host,
            port,
            path,
            authority,
        })
    }

    /// The host as an IP address, when the URL names one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The scheme as doctor speaks it: `ws` or `wss`.
    pub fn ws_scheme(&self) -> &'static str {
        if self.secure { "wss" } else { "ws" }
    }

    /// Resolves a redirect's `Location` against this URL: absolute (any of the four schemes),
    /// scheme-relative (`//host/p`), absolute path (`/p`) or relative to the current path.
    ///
    /// # Errors
    /// A Location that is not a URL doctor can check (e.g. `ftp://`).
    pub fn join(&self, location: &str) -> Result<Target, UrlError> {
        let location = location.trim();
        if location.contains("://") {
            return Target::parse(location);
        }
        let scheme = if self.secure { "wss" } else { "ws" };
        if let Some(rest) = location.strip_prefix("//") {
            return Target::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let current = self.path.split('?').next().unwrap_or("/");
            let dir = &current[..current.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Target::parse(&format!("{scheme}://{}{path}", self.authority))
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host must be closed with ']', like ws://[::1]:8080/")?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("expected ':' and a port after the IPv6 host")?,
            ),
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{h:?} is not an IPv6 address"));
        }
        return Ok((h, port));
    }
    match authority.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => {
            Err("an IPv6 host needs brackets, like ws://[::1]:8080/".into())
        }
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((authority, None)),
    }
}

/// clap's value parser for the URL argument.
pub fn parse_arg(url: &str) -> Result<Target, String> {
    Target::parse(url).map_err(|e| e.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_schemes_with_default_ports() {
        let t = Target::parse("ws://Example.COM/room/1/?a=b").unwrap();
        assert_eq!(
            (
                t.secure,
                t.host.as_str(),
                t.port,
                t.path.as_str(),
                t.authority.as_str()
            ),
            (false, "example.com", 80, "/room/1/?a=b", "example.com")
        );
        let t = Target::parse("https://h:8443").unwrap();
        assert_eq!(
            (t.secure, t.port, t.path.as_str(), t.authority.as_str()),
            (true, 8443, "/", "h:8443")
        );
        let t = Target::parse("WSS://h:443/x").unwrap();
        assert_eq!(t.authority, "h");
        let t = Target::parse("ws://[::1]:9000?x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.authority.as_str()),
            ("::1", "/?x", "[::1]:9000")
        );
        assert_eq!(t.ip(), Some("::1".parse().unwrap()));
    }

    #[test]
    fn refuses_what_it_cannot_check_and_says_what_to_write() {
        for (url, want) in [
            ("ftp://h/", "use ws://"),
            ("h:80/x", "not an absolute URL"),
            ("ws://h/#frag", "fragment"),
            ("ws://u:p@h/", "credentials"),
            ("ws://h:0/", "port \"0\""),
            ("ws://h:99999/", "port"),
            ("ws://:80/", "no host"),
            ("ws://::1:80/", "brackets"),
            ("ws://[::1/", "closed with ']'"),
            ("ws://[zz]/", "not an IPv6"),
            ("ws://h/a b", "percent-encode"),
        ] {
            let e = Target::parse(url).unwrap_err();
            assert!(e.to_string().contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn joins_every_kind_of_location() {
        let t = Target::parse("ws://h:8080/a/b?q").unwrap();
        assert_eq!(t.join("wss://x/y").unwrap().url, "wss://x/y");
        assert_eq!(t.join("https://x/y").unwrap().url, "https://x/y");
        assert_eq!(t.join("//x:1/y").unwrap().url, "ws://x:1/y");
        assert_eq!(t.join("/c").unwrap().url, "ws://h:8080/c");
        assert_eq!(t.join("c/d").unwrap().url, "ws://h:8080/a/c/d");
        assert!(t.join("ftp://x/").is_err());
    }
}
