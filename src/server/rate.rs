//! New connections per second from one IP address (`server.max_handshakes_per_second_per_ip`):
//! a token bucket per address, refilled continuously, holding at most one second's worth. Only
//! the accept path takes its lock, never a session or a tunnel. Loopback peers are not limited:
//! they are a proxy on this machine (which would put every client in one bucket), health checks
//! or local tools.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
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
}
