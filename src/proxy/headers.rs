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

/// Whether a field value is visible ASCII (what `HeaderValue::to_str` accepts): forwarding
/// values that are not are dropped rather than forwarded half-understood.
pub(super) fn is_visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Whether `name` is one of the fields that are hop-by-hop whatever `Connection` says.
pub(super) fn is_fixed_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Writes an address in decimal without going through `fmt` (this runs for every proxied
/// request, twice).
pub(super) fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A `Forwarded` node (RFC 7239 §6): IPv6 addresses are bracketed and the whole value quoted.
fn put_forwarded_node(out: &mut Vec<u8>, ip: IpAddr) {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => put_ip(out, v4),
        v6 => {
            out.extend_from_slice(b"\"[");
            put_ip(out, v6);
            out.extend_from_slice(b"]\"");
        }
    }
}

/// A `Forwarded` value: a token as it is, anything else as a quoted-string (RFC 7239 §4).
fn put_forwarded_value(out: &mut Vec<u8>, v: &[u8]) {
    let token = !v.is_empty()
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        out.extend_from_slice(v);
    } else {
        out.push(b'"');
        for &b in v {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}

/// Joins what came in (when trusted and visible ASCII) with what this hop adds, as a
/// `, `-separated list.
fn put_appended<'a>(
    out: &mut Vec<u8>,
    incoming: impl Iterator<Item = &'a [u8]>,
    keep: bool,
    ours: impl FnOnce(&mut Vec<u8>),
) {
    if keep {
        for v in incoming.filter(|v| is_visible(v)) {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    ours(out);
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

/// The forwarding fields for one request, decided once: the rules of [`prepare_request`],
/// written by both the `HeaderMap` path and the raw upgrade head writer.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    /// The peer, IPv4-mapped addresses as IPv4.
    pub peer: IpAddr,
    pub proto: &'static str,
    /// From a trusted peer the incoming forwarding fields are kept and this hop appended; from
    /// anyone else they are replaced, so a client cannot forge its address.
    pub trusted: bool,
}

impl Forwarding {
    pub fn new(client: Client<'_>) -> Self {
        let peer = client.peer.ip();
        Forwarding {
            peer: canonical(peer),
            proto: client.proto,
            trusted: client.trusted.contains(peer),
        }
    }

    /// The `X-Forwarded-For` value.
    pub fn put_xff<'a>(&self, out: &mut Vec<u8>, incoming: impl Iterator<Item = &'a [u8]>) {
        put_appended(out, incoming, self.trusted, |o| put_ip(o, self.peer));
    }

    /// The `Forwarded` value; `host` is the client's `Host`, left out when not visible ASCII.
    pub fn put_forwarded<'a>(
        &self,
        out: &mut Vec<u8>,
        incoming: impl Iterator<Item = &'a [u8]>,
        host: Option<&[u8]>,
    ) {
        put_appended(out, incoming, self.trusted, |o| {
            o.extend_from_slice(b"for=");
            put_forwarded_node(o, self.peer);
            if let Some(host) = host.filter(|h| is_visible(h)) {
                o.extend_from_slice(b";host=");
                put_forwarded_value(o, host);
            }
            o.extend_from_slice(b";proto=");
            o.extend_from_slice(self.proto.as_bytes());
        });
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

/// Replaces field `name` with the value `put` writes.
fn set_built(h: &mut HeaderMap, name: HeaderName, put: impl FnOnce(&HeaderMap, &mut Vec<u8>)) {
    let mut v = Vec::with_capacity(64);
    put(h, &mut v);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
        h.insert(name, v);
    }
}

/// Prepares request headers for the upstream: removes hop-by-hop fields, sets `Host` (kept as
/// the client sent it when `preserve_host`, else `upstream_host`), and adds `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` following [`Forwarding`].
pub fn prepare_request(
    h: &mut HeaderMap,
    client: Client<'_>,
    preserve_host: bool,
    upstream_host: &str,
) {
    remove_hop_by_hop(h);
    let fwd = Forwarding::new(client);
    let host = h.get(header::HOST).cloned();
    let xff = HeaderName::from_static("x-forwarded-for");
    set_built(h, xff.clone(), |h, v| {
        fwd.put_xff(v, h.get_all(&xff).iter().map(HeaderValue::as_bytes))
    });
    keep_or_set(
        h,
        HeaderName::from_static("x-forwarded-proto"),
        Some(&HeaderValue::from_static(client.proto)),
        fwd.trusted,
    );
    keep_or_set(
        h,
        HeaderName::from_static("x-forwarded-host"),
        host.as_ref(),
        fwd.trusted,
    );
    set_built(h, header::FORWARDED, |h, v| {
        fwd.put_forwarded(
            v,
            h.get_all(header::FORWARDED)
                .iter()
                .map(HeaderValue::as_bytes),
            host.as_ref().map(HeaderValue::as_bytes),
        )
    });
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
