//! Per IP address limits taken at accept: new connections per second
//! (`server.max_handshakes_per_second_per_ip`, a token bucket per address, refilled
//! continuously, holding at most one second's worth) and connections open at once
//! (`server.max_connections_per_ip`, a count per address given back when the connection ends).
//! Only the accept path and a connection's end take their locks, never a session's reads or
//! writes. Loopback peers are not limited: they are a proxy on this machine (which would put every
//! client behind one address), health checks or local tools.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Addresses kept before idle ones are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub struct PerIp {
    /// Tokens per second (and the bucket's size); 0 turns the limit off.
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PerIp {
    pub fn new(per_second: u32) -> Self {
        PerIp {
            rate: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may open one more connection now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 || ip.is_loopback() {
            return true;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_TRACKED {
            // A full bucket is the same as no entry: forget those.
            let rate = self.rate;
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = b.entry(ip).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connections open at once per address (`server.max_connections_per_ip`).
#[derive(Debug)]
pub struct OpenPerIp {
    /// 0 turns the limit off.
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One counted connection of an address, given back when dropped (whoever holds it last: the
/// HTTP connection, or the WebSocket session it became).
#[derive(Debug)]
pub struct IpSlot(Option<(Arc<OpenPerIp>, IpAddr)>);

impl OpenPerIp {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(OpenPerIp {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max == 0 || ip.is_loopback() {
            return Some(IpSlot(None));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((self.clone(), ip))))
    }

    /// Connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl IpSlot {
    /// Whether this place is counted (a limited, non-loopback address): one that is not needs
    /// no keeping.
    pub fn counts(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((limit, ip)) = self.0.take() {
            let mut open = limit.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Forgotten at once: the map holds only addresses with connections open.
                    open.remove(&ip);
                }
            }
        }
    }
}

/// The sentence of a 429 for `server.max_handshakes_per_second_per_ip` (a new connection, or a
/// WebSocket stream on an HTTP/2 connection).
pub fn handshake_rate_refusal(ip: std::net::IpAddr, max: u32) -> String {
    format!(
        "429 Too Many Requests: {ip} opened more than {max} connections or WebSockets in a second (server.max_handshakes_per_second_per_ip). Retry with backoff.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_past_the_rate_is_refused_and_refilled_over_time() {
        let l = PerIp::new(3);
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let other: IpAddr = "203.0.113.2".parse().unwrap();
        let t = Instant::now();
        assert!((0..3).all(|_| l.allow_at(ip, t)));
        assert!(!l.allow_at(ip, t), "the 4th in the same instant");
        assert!(l.allow_at(other, t), "another address has its own bucket");
        assert!(!l.allow_at(ip, t + Duration::from_millis(200)));
        assert!(
            l.allow_at(ip, t + Duration::from_millis(400)),
            "a third of a second refills one"
        );
        assert!(PerIp::new(0).allow_at(ip, t), "0 turns the limit off");
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            (0..10).all(|_| l.allow_at(lo, t)),
            "loopback is not limited"
        );
    }

    #[test]
    fn open_connections_per_ip_are_counted_and_given_back() {
        let l = OpenPerIp::new(2);
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let other: IpAddr = "203.0.113.2".parse().unwrap();
        let a = l.take(ip).unwrap();
        let _b = l.take(ip).unwrap();
        assert!(l.take(ip).is_none(), "the third from one address");
        assert!(l.take(other).is_some(), "another address counts apart");
        drop(a);
        assert_eq!(l.open(ip), 1);
        assert!(
            l.take(ip).is_some(),
            "a closed connection gives its place back"
        );
        let lo: IpAddr = "::1".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| l.take(lo)).collect();
        assert!(held.iter().all(Option::is_some), "loopback is not limited");
        assert!(
            OpenPerIp::new(0).take(ip).is_some(),
            "0 turns the limit off"
        );
    }
}
