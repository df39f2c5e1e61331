//! Addresses in the configuration: the listen address, upstream servers, trusted proxy ranges.

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

/// Parses an upstream server address: `host:port` with an IP address or a host name.
pub fn parse_server_addr(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{s:?} is not a server address; expected host:port like \"127.0.0.1:8010\" or \"app.internal:8010\""
        )
    };
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok { Ok(()) } else { Err(bad()) }
}

/// Splits an upstream server address into whether it is reached over TLS and its `host:port`:
/// `https://host[:port]` and `wss://host[:port]` are TLS (port 443 by default), `http://` and
/// `ws://` plain (port 80 by default), and a bare `host:port` is plain. A path after the address
/// is refused: the proxy route decides the path.
pub fn split_server_scheme(s: &str) -> Result<(bool, String), String> {
    let (tls, rest) = match s.split_once("://") {
        None => return Ok((false, s.to_string())),
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "https" | "wss" => (true, rest),
            "http" | "ws" => (false, rest),
            _ => {
                return Err(format!(
                    "{s:?} has the scheme {scheme:?}; use https:// (or wss://) for a TLS upstream, or host:port for plain HTTP"
                ));
            }
        },
    };
    let rest = match rest.find('/') {
        Some(i) if &rest[i..] != "/" => {
            return Err(format!(
                "{s:?} has a path; give the server as scheme://host:port only (the proxy route's path is forwarded as it is)"
            ));
        }
        Some(i) => &rest[..i],
        None => rest,
    };
    let has_port = match rest.rsplit_once(':') {
        // An IPv6 literal without a port is "[::1]"; with one, "[::1]:443".
        Some((h, _)) => !rest.starts_with('[') || h.ends_with(']'),
        None => false,
    };
    let port = if tls { 443 } else { 80 };
    Ok((
        tls,
        if has_port {
            rest.to_string()
        } else {
            format!("{rest}:{port}")
        },
    ))
}

/// Parses a trusted proxy entry: an IP address or a CIDR range like `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP address or CIDR range; write e.g. \"10.0.0.0/8\" or \"::1\"")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => match b.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?} has a bad prefix length; use 0 to {max}")),
        },
    };
    Ok((ip, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_scheme_says_tls_and_fills_in_the_port() {
        let ok = |s: &str| split_server_scheme(s).unwrap();
        assert_eq!(ok("10.0.0.1:8010"), (false, "10.0.0.1:8010".into()));
        assert_eq!(
            ok("https://app.internal"),
            (true, "app.internal:443".into())
        );
        assert_eq!(
            ok("wss://app.internal:8443/"),
            (true, "app.internal:8443".into())
        );
        assert_eq!(ok("HTTPS://[::1]"), (true, "[::1]:443".into()));
        assert_eq!(ok("https://[::1]:9443"), (true, "[::1]:9443".into()));
        assert_eq!(ok("http://app"), (false, "app:80".into()));
        assert!(
            split_server_scheme("ftp://a:1")
                .unwrap_err()
                .contains("https://")
        );
        assert!(
            split_server_scheme("https://a:1/x")
                .unwrap_err()
                .contains("has a path")
        );
    }
}
