//! Header rules for proxying, in one place: which fields are hop-by-hop and never forwarded
//! (RFC 9110 §7.6.1), which `Host` the upstream sees, and the `X-Forwarded-*` / RFC 7239
//! `Forwarded` fields that tell the upstream who the client is.
//!
//! Everything here is a pure function over a [`HeaderMap`], used for requests and responses alike.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Fields that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive` that old clients still send).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes every hop-by-hop field: the fixed list above and every field named in `Connection`
/// (tokens compared case-insensitively, repeated `Connection` fields all count).
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
}

/// The proxies whose forwarding headers wsgate believes (`proxy.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<(IpAddr, u8)>);

impl Trusted {
    /// Builds the list from validated config entries; entries that do not parse are skipped
    /// (validation has already reported them).
    pub fn new(entries: &[String]) -> Self {
        Trusted(
            entries
                .iter()
                .filter_map(|e| crate::config::parse_cidr(e).ok())
                .collect(),
        )
    }

    /// Whether `ip` is inside one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|(net, bits)| in_range(ip, canonical(*net), *bits))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// A `Forwarded` node (RFC 7239 §6): IPv6 addresses are bracketed and the whole value quoted.
fn forwarded_node(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A `Forwarded` value: a token as it is, anything else as a quoted-string (RFC 7239 §4).
fn forwarded_value(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        v.to_string()
    } else {
        let escaped: String = v
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// Joins what came in (when trusted) with what this hop adds, as `, `-separated lists.
fn append(h: &mut HeaderMap, name: HeaderName, ours: &str, keep: bool) {
    let mut parts: Vec<String> = Vec::new();
    if keep {
        parts.extend(
            h.get_all(&name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string),
        );
    }
    parts.push(ours.to_string());
    match HeaderValue::from_str(&parts.join(", ")) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => {
            // What came in was not visible ASCII; drop it rather than forward half of it.
            if let Ok(v) = HeaderValue::from_str(ours) {
                h.insert(name, v);
            }
        }
    }
}

/// Sets one field to what came in (when trusted and present) or to `ours`.
fn keep_or_set(h: &mut HeaderMap, name: HeaderName, ours: Option<&HeaderValue>, keep: bool) {
    if keep && h.contains_key(&name) {
        return;
    }
    h.remove(&name);
    if let Some(v) = ours {
        h.insert(name, v.clone());
    }
}

/// What the upstream should learn about the client.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The TCP peer of this connection.
    pub peer: SocketAddr,
    /// The scheme the client used to reach wsgate ("http"; "https" once TLS exists).
    pub proto: &'static str,
    /// The proxies whose forwarding headers are kept and appended to.
    pub trusted: &'a Trusted,
}

/// Prepares request headers for the upstream: removes hop-by-hop fields, sets `Host` (kept as
/// the client sent it when `preserve_host`, else `upstream_host`), and adds `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`. From a trusted peer the incoming
/// forwarding fields are kept and this hop is appended; from anyone else they are replaced, so a
/// client cannot forge its address.
pub fn prepare_request(
    h: &mut HeaderMap,
    client: Client<'_>,
    preserve_host: bool,
    upstream_host: &str,
) {
    remove_hop_by_hop(h);
    let trusted = client.trusted.contains(client.peer.ip());
    let host = h.get(header::HOST).cloned();
    let peer = canonical(client.peer.ip());

    append(
        h,
        HeaderName::from_static("x-forwarded-for"),
        &peer.to_string(),
        trusted,
    );
    keep_or_set(
        h,
        HeaderName::from_static("x-forwarded-proto"),
        Some(&HeaderValue::from_static(client.proto)),
        trusted,
    );
    keep_or_set(
        h,
        HeaderName::from_static("x-forwarded-host"),
        host.as_ref(),
        trusted,
    );

    let mut element = format!("for={}", forwarded_node(peer));
    if let Some(host) = host.as_ref().and_then(|v| v.to_str().ok()) {
        element.push_str(&format!(";host={}", forwarded_value(host)));
    }
    element.push_str(&format!(";proto={}", client.proto));
    append(h, header::FORWARDED, &element, trusted);

    if (!preserve_host || host.is_none())
        && let Ok(v) = HeaderValue::from_str(upstream_host)
    {
        h.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn each_fixed_hop_by_hop_field_is_removed() {
        for name in HOP_BY_HOP {
            let mut h = map(&[(name, "x"), ("content-type", "text/plain")]);
            remove_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} survived");
            assert!(
                h.contains_key("content-type"),
                "{name}: end-to-end field lost"
            );
        }
    }

    #[test]
    fn fields_named_in_connection_are_removed_case_insensitively() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-baz", "3"),
        ]);
        remove_hop_by_hop(&mut h);
        assert!(!h.contains_key("x-foo"));
        assert!(!h.contains_key("x-bar"));
        assert_eq!(h.get("x-baz").unwrap(), "3");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn end_to_end_fields_survive() {
        let keep = [
            ("host", "example.com"),
            ("cookie", "a=b"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("authorization", "Bearer t"),
            ("content-length", "3"),
        ];
        let mut h = map(&keep);
        remove_hop_by_hop(&mut h);
        for (k, v) in keep {
            assert_eq!(h.get(k).unwrap(), v, "{k}");
        }
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_client_forwarding_fields_are_replaced() {
        let trusted = Trusted::new(&["10.0.0.0/8".into()]);
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let c = Client {
            peer: peer("192.0.2.7:5000"),
            proto: "http",
            trusted: &trusted,
        };
        prepare_request(&mut h, c, true, "127.0.0.1:8010");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.7;host=example.com;proto=http"
        );
        assert_eq!(h.get("host").unwrap(), "example.com");
    }

    #[test]
    fn trusted_proxy_forwarding_fields_are_kept_and_appended() {
        let trusted = Trusted::new(&["10.0.0.0/8".into()]);
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.1;proto=https"),
        ]);
        let c = Client {
            peer: peer("10.1.2.3:5000"),
            proto: "http",
            trusted: &trusted,
        };
        prepare_request(&mut h, c, true, "127.0.0.1:8010");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.1, 10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=198.51.100.1;proto=https, for=10.1.2.3;host=example.com;proto=http"
        );
    }

    #[test]
    fn ipv6_peers_are_bracketed_and_quoted_in_forwarded() {
        let trusted = Trusted::default();
        let mut h = map(&[("host", "[::1]:8080")]);
        let c = Client {
            peer: peer("[2001:db8::7]:5000"),
            proto: "http",
            trusted: &trusted,
        };
        prepare_request(&mut h, c, true, "u:1");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=\"[2001:db8::7]\";host=\"[::1]:8080\";proto=http"
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::7");
    }

    #[test]
    fn host_is_replaced_only_without_preserve_host() {
        let trusted = Trusted::default();
        let c = Client {
            peer: peer("127.0.0.1:1"),
            proto: "http",
            trusted: &trusted,
        };
        let mut h = map(&[("host", "example.com")]);
        prepare_request(&mut h, c, false, "10.0.0.5:8010");
        assert_eq!(h.get("host").unwrap(), "10.0.0.5:8010");
        let mut h = HeaderMap::new();
        prepare_request(&mut h, c, true, "10.0.0.5:8010");
        assert_eq!(h.get("host").unwrap(), "10.0.0.5:8010");
    }

    #[test]
    fn trusted_ranges_match_v4_v6_and_mapped_addresses() {
        let t = Trusted::new(&["10.0.0.0/8".into(), "::1".into(), "0.0.0.0/0".into()]);
        assert!(t.contains("10.255.0.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:192.0.2.1".parse().unwrap()));
        let t = Trusted::new(&["10.0.0.0/8".into()]);
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!t.contains("::2".parse().unwrap()));
    }
}
