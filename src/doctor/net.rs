//! The first two steps: resolve the host (`dns`) and open a TCP connection to one of its
//! addresses (`tcp`), each bounded by the step timeout.
//!
//! Nothing here knows about TLS, HTTP or WebSocket; it hands back a connected `TcpStream`.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::report::{Step, ms_since};
use super::target::Target;

/// Resolves the target's host; an IP address needs no lookup.
pub async fn resolve(target: &Target, timeout: Duration) -> (Step, Vec<SocketAddr>) {
    let start = Instant::now();
    if let Some(ip) = target.ip() {
        let step = Step::pass(
            "dns",
            format!("{} is an IP address; no lookup needed", target.host),
        )
        .with_fact("addresses", vec![ip.to_string()]);
        return (step, vec![SocketAddr::new(ip, target.port)]);
    }
    let host = target.host.clone();
    let looked = tokio::time::timeout(timeout, tokio::net::lookup_host((host, target.port))).await;
    let mut step = match looked {
        Err(_) => (
            Step::fail(
                "dns",
                format!(
                    "no answer for {} within {} s",
                    target.host,
                    secs(timeout)
                ),
            )
            .with_hint(
                "the resolver does not answer: check /etc/resolv.conf and that its DNS server is reachable \
(`getent hosts NAME` asks the same resolver doctor does)",
            ),
            Vec::new(),
        ),
        Ok(Err(e)) => (
            Step::fail("dns", format!("cannot resolve {}: {e}", target.host)).with_hint(
                "check the host name in the URL for typos; `getent hosts NAME` shows what this machine \
resolves, and a name that only exists inside a cluster or VPN resolves only there",
            ),
            Vec::new(),
        ),
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.dedup();
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            let step = if addrs.is_empty() {
                Step::fail("dns", format!("{} resolves to no address", target.host))
                    .with_hint("add an A or AAAA record for the name")
            } else {
                Step::pass("dns", format!("{} -> {}", target.host, list.join(", ")))
            };
            (step.with_fact("addresses", list), addrs)
        }
    };
    step.0.elapsed_ms = ms_since(start);
    step
}

/// Connects to the first address that accepts, trying them in the resolver's order; the step
/// timeout is shared among the addresses still to try.
pub async fn connect(
    target: &Target,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> (Step, Option<TcpStream>) {
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut refused = 0;
    for (i, addr) in addrs.iter().enumerate() {
        let left = timeout.saturating_sub(start.elapsed());
        let share = left / (addrs.len() - i) as u32;
        let attempt = Instant::now();
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let mut detail = format!("connected to {addr} in {:.1} ms", ms_since(attempt));
                if !failures.is_empty() {
                    detail.push_str(&format!(" (after {})", failures.join("; ")));
                }
                let mut step = Step::pass("tcp", detail).with_fact("peer", addr.to_string());
                step.elapsed_ms = ms_since(start);
                return (step, Some(s));
            }
            Ok(Err(e)) => {
                if e.kind() == ErrorKind::ConnectionRefused {
                    refused += 1;
                    failures.push(format!("{addr}: connection refused"));
                } else {
                    failures.push(format!("{addr}: {e}"));
                }
            }
            Err(_) => failures.push(format!("{addr}: no answer within {} s", secs(share))),
        }
    }
    let hint = if refused == addrs.len() {
        format!(
            "nothing listens on port {} there: start the server, check the port in the URL, and check \
that the server listens on this address (a server bound to 127.0.0.1 is not reachable from elsewhere)",
            target.port
        )
    } else {
        "packets are dropped or the host is down: check firewalls and security groups between here and \
the host, and that the port is the one the server listens on"
            .to_string()
    };
    let mut step = Step::fail("tcp", format!("cannot connect: {}", failures.join("; ")))
        .with_hint(hint)
        .with_fact("refused", refused == addrs.len());
    step.elapsed_ms = ms_since(start);
    (step, None)
}

/// Seconds with one decimal, for messages.
pub fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}
