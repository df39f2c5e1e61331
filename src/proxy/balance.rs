//! Choosing a server of an upstream and keeping track of its health.
//!
//! Balancing follows nginx: smooth weighted round robin by default, `least_conn` (fewest
//! requests and tunnels in flight relative to weight), `ip_hash` (a client address sticks to one
//! server while it is up). Backup servers are chosen only while no primary server is up. Health is
//! passive as in nginx (`max_fails` failures within `fail_timeout` take a server out for
//! `fail_timeout`) plus an optional active check that marks a server down until it answers again.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{self, Balance};

/// One server of an upstream.
#[derive(Debug)]
pub struct Server {
    /// `host:port` as configured (without the `https://` of a TLS server).
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    /// Requests and tunnels in flight, for `least_conn`.
    active: AtomicUsize,
    /// Set by the active health check while the server does not answer it.
    check_failed: AtomicBool,
    fails: Mutex<Fails>,
}

#[derive(Debug, Default)]
struct Fails {
    count: u32,
    first: Option<Instant>,
    down_until: Option<Instant>,
}

/// An upstream ready for use: its servers and the balancing state.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<Server>,
    balance: Balance,
    max_fails: u32,
    fail_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_path: String,
    pub health_interval: Duration,
    /// Smooth weighted round robin: each server's current weight.
    current: Mutex<Vec<i64>>,
}

/// Counts a request or tunnel in flight on a server until dropped.
#[derive(Debug)]
pub struct Active(Arc<Upstream>, usize);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.servers[self.1]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    pub fn new(u: &config::Upstream) -> Self {
        let servers: Vec<Server> = u
            .servers
            .iter()
            .map(|s| {
                let t = s.table();
                Server {
                    addr: config::split_server_scheme(&t.addr).map_or(t.addr, |(_, a)| a),
                    weight: t.weight.max(1),
                    backup: t.backup,
                    active: AtomicUsize::new(0),
                    check_failed: AtomicBool::new(false),
                    fails: Mutex::new(Fails::default()),
                }
            })
            .collect();
        let n = servers.len();
        Upstream {
            name: u.name.clone(),
            servers,
            balance: u.balance,
            max_fails: u.max_fails,
            fail_timeout: u.fail_timeout.get(),
            connect_timeout: u.connect_timeout.get(),
            read_timeout: u.read_timeout.get(),
            health_path: u.health_path.clone(),
            health_interval: u.health_interval.get(),
            current: Mutex::new(vec![0; n]),
        }
    }

    /// Whether server `i` may get traffic now.
    pub fn is_up(&self, i: usize) -> bool {
        let s = &self.servers[i];
        if s.check_failed.load(Ordering::Relaxed) {
            return false;
        }
        let f = s.fails.lock().unwrap_or_else(|p| p.into_inner());
        f.down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Picks a server for a client, skipping `tried`. `None` when every server is down (or was
    /// tried already).
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let usable = |i: usize| !tried.contains(&i) && self.is_up(i);
        let primaries: Vec<usize> = (0..self.servers.len())
            .filter(|&i| !self.servers[i].backup && usable(i))
            .collect();
        let candidates = if primaries.is_empty() {
            (0..self.servers.len())
                .filter(|&i| self.servers[i].backup && usable(i))
                .collect()
        } else {
            primaries
        };
        if candidates.is_empty() {
            return None;
        }
        Some(match self.balance {
            Balance::RoundRobin => self.round_robin(&candidates),
            Balance::LeastConn => *candidates
                .iter()
                .min_by_key(|&&i| {
                    let s = &self.servers[i];
                    // Compare active/weight without floats: scale by the largest weight.
                    (s.active.load(Ordering::Relaxed) as u64 * 1000) / u64::from(s.weight)
                })
                .expect("candidates is not empty"),
            Balance::IpHash => {
                // nginx hashes the first three octets of an IPv4 address (a /24 sticks together);
                // hashing the whole address keeps NATed clients spread more evenly.
                let h = ip_hash(client);
                let n = self.servers.len();
                let mut pick = candidates[0];
                for k in 0..n {
                    let i = ((h as usize).wrapping_add(k)) % n;
                    if candidates.contains(&i) {
                        pick = i;
                        break;
                    }
                }
                pick
            }
        })
    }

    fn round_robin(&self, candidates: &[usize]) -> usize {
        // nginx's smooth weighted round robin: every candidate gains its weight, the largest
        // wins and pays back the total, so weights 5,1,1 give a a b a c a a rather than aaaaabc.
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best = candidates[0];
        for &i in candidates {
            let w = i64::from(self.servers[i].weight);
            cur[i] += w;
            total += w;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }

    /// Marks the start of a request or tunnel on server `i`.
    pub fn begin(self: &Arc<Self>, i: usize) -> Active {
        self.servers[i].active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone(), i)
    }

    /// Records a failed attempt (connect error, timeout, broken response). Returns true when
    /// this failure took the server out.
    pub fn failed(&self, i: usize) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        let now = Instant::now();
        let mut f = self.servers[i]
            .fails
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if f.first
            .is_none_or(|t| now.duration_since(t) > self.fail_timeout)
        {
            f.count = 0;
            f.first = Some(now);
        }
        f.count += 1;
        if f.count >= self.max_fails {
            f.down_until = Some(now + self.fail_timeout);
            f.count = 0;
            f.first = None;
            return true;
        }
        false
    }

    /// Records a successful exchange: the failure count starts again.
    pub fn succeeded(&self, i: usize) {
        let mut f = self.servers[i]
            .fails
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f.count = 0;
        f.first = None;
    }

    /// Records the result of an active health check; returns whether the state changed.
    pub fn set_check_result(&self, i: usize, ok: bool) -> bool {
        let was = self.servers[i].check_failed.swap(!ok, Ordering::Relaxed);
        was == ok
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    // FNV-1a: stable across runs and processes, so every wsgate node maps a client the same way.
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(toml_servers: &str, extra: &str) -> Upstream {
        let text = format!("[[upstream]]\nname = \"u\"\nservers = {toml_servers}\n{extra}\n");
        let cfg = crate::config::load_str("t.toml", &text, &[]).unwrap();
        Upstream::new(&cfg.upstreams[0])
    }

    fn arc(u: Upstream) -> Arc<Upstream> {
        Arc::new(u)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let u = upstream("[{ addr = \"a:1\", weight = 5 }, \"b:1\", \"c:1\"]", "");
        let picks: Vec<usize> = (0..7).map(|_| u.pick(IP, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn backups_are_used_only_while_every_primary_is_down() {
        let u = upstream(
            "[\"a:1\", { addr = \"b:1\", backup = true }]",
            "max_fails = 1",
        );
        assert_eq!(u.pick(IP, &[]), Some(0));
        assert_eq!(u.pick(IP, &[]), Some(0));
        assert!(u.failed(0));
        assert_eq!(u.pick(IP, &[]), Some(1));
        assert!(u.failed(1));
        assert_eq!(u.pick(IP, &[]), None);
    }

    #[test]
    fn max_fails_within_fail_timeout_takes_a_server_out() {
        let u = upstream("[\"a:1\", \"b:1\"]", "max_fails = 2\nfail_timeout = \"1h\"");
        assert!(!u.failed(0));
        assert!(u.is_up(0));
        assert!(u.failed(0));
        assert!(!u.is_up(0));
        for _ in 0..4 {
            assert_eq!(u.pick(IP, &[]), Some(1));
        }
    }

    #[test]
    fn least_conn_prefers_the_server_with_fewer_in_flight() {
        let u = arc(upstream("[\"a:1\", \"b:1\"]", "balance = \"least_conn\""));
        let _busy = u.begin(0);
        assert_eq!(u.pick(IP, &[]), Some(1));
        assert_eq!(u.pick(IP, &[1]), Some(0));
    }

    #[test]
    fn ip_hash_sticks_and_moves_only_when_its_server_is_down() {
        let u = upstream("[\"a:1\", \"b:1\", \"c:1\"]", "balance = \"ip_hash\"");
        let ip: IpAddr = "192.0.2.44".parse().unwrap();
        let first = u.pick(ip, &[]).unwrap();
        for _ in 0..5 {
            assert_eq!(u.pick(ip, &[]), Some(first));
        }
        u.failed(first);
        let other = u.pick(ip, &[]).unwrap();
        assert_ne!(other, first);
    }
}
