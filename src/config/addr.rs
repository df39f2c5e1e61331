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
