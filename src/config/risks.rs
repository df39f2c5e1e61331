//! Settings that work but are risky: `check-config` prints them as warnings (and exits 0), and
//! `serve` logs them at start. Each names the key and what to change.

use super::addr::parse_cidr;
use super::proxy::{Proxy, Upstream};
use super::route::Route;
use super::validate::{Seg, item};

/// wsgate's own paths on the main listener, which a proxy route with a prefix over them hides.
const OWN_PATHS: [&str; 4] = ["/api/", "/metrics", "/healthz", "/readyz"];

/// Reports every risky setting of `cfg`.
pub(super) fn check(
    proxy: &Proxy,
    upstreams: &[Upstream],
    routes: &[Route],
    report: &mut impl FnMut(Vec<Seg>, String),
) {
    for (i, t) in proxy.trusted_proxies.iter().enumerate() {
        if let Ok((ip, 0)) = parse_cidr(t) {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            report(
                vec![
                    Seg::Key("proxy".into()),
                    Seg::Key("trusted_proxies".into()),
                    Seg::Index(i),
                ],
                format!(
                    "{t:?} trusts the X-Forwarded-For and Forwarded headers of every {family} client, so any client can claim any address (access logs and per-address limits believe it); list only the addresses of the proxies in front of wsgate"
                ),
            );
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let Some(prefix) = &r.path_prefix else {
            continue;
        };
        let hidden: Vec<&str> = OWN_PATHS
            .iter()
            .copied()
            .filter(|own| own.starts_with(prefix.as_str()) || prefix.starts_with(own))
            .collect();
        if hidden.is_empty() {
            continue;
        }
        let upstream = r.proxy_pass.as_deref().unwrap_or("?");
        report(
            item("route", i, "path_prefix"),
            format!(
                "{prefix:?} covers wsgate's own {} on this listener: those requests go to upstream {upstream:?} instead. Use the admin listener ([admin] listen) for the API and metrics, or give this route a narrower prefix",
                hidden.join(", ")
            ),
        );
    }
    for (i, u) in upstreams.iter().enumerate() {
        if u.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            report(
                item("upstream", i, "tls"),
                format!(
                    "insecure_skip_verify = true: the certificates of upstream {:?} are not verified, so anyone on the path can impersonate it; set tls.ca to its CA instead",
                    u.name
                ),
            );
        }
    }
}
