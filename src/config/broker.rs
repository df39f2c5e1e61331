//! `[broker]`: where publications travel between nodes and groups' streams are kept.

use serde::Deserialize;

use super::duration::Duration;
use super::validate::{Seg, keys};

/// `[broker]`: where groups' publications travel and their streams are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Broker {
    /// "memory" (default): this process is the whole cluster; nothing leaves it. "redis": every
    /// node shares one Redis (`url`). "redis-cluster": every node shares one Redis Cluster
    /// (`nodes`), with sharded pub/sub.
    pub kind: BrokerKind,
    /// The Redis of `kind = "redis"`, as `redis://[user:password@]host:port[/db]`. Default
    /// "redis://127.0.0.1:6379".
    pub url: String,
    /// Seed nodes of `kind = "redis-cluster"` (at least two, so a node down at start does not
    /// keep wsgate from finding the cluster), each `redis://host:port`.
    pub nodes: Vec<String>,
    /// Prefix of every key and channel wsgate uses in Redis, so several deployments can share
    /// one. Default "wsgate".
    pub prefix: String,
    /// How long a node's presence entries outlive the node: live nodes refresh theirs every
    /// third of it, so a node that dies takes its entries with it within this time. Default 15 s.
    pub presence_ttl: Duration,
    /// How long connecting to Redis, and each command, may take before it counts as down
    /// (publishes then answer 503, `/readyz` is not ready). Default 3 s.
    pub timeout: Duration,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            kind: BrokerKind::Memory,
            url: "redis://127.0.0.1:6379".into(),
            nodes: Vec::new(),
            prefix: "wsgate".into(),
            presence_ttl: Duration::from_secs(15),
            timeout: Duration::from_secs(3),
        }
    }
}

/// `broker.kind`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    #[default]
    Memory,
    Redis,
    RedisCluster,
}

/// Why `url` is not a Redis URL wsgate can use, or `None` when it is.
pub fn redis_url_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!(
            "{url:?} is not a URL; expected redis://host:port, e.g. \"redis://127.0.0.1:6379\""
        ));
    };
    if scheme == "rediss" {
        return Some(format!(
            "{url:?}: TLS to Redis (rediss://) is not supported by this build; use redis:// over a private network or a TLS tunnel"
        ));
    }
    if scheme != "redis" {
        return Some(format!(
            "{url:?} has scheme {scheme:?}; Redis URLs start with redis://, e.g. \"redis://127.0.0.1:6379\""
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Some(format!("{url:?} names no host; expected redis://host:port"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Some(format!(
            "{url:?}: port {p:?} is not a port number (1-65535)"
        ));
    }
    if let Some(db) = rest
        .split_once('/')
        .map(|(_, d)| d.split('?').next().unwrap_or(""))
        && !db.is_empty()
        && db.parse::<u32>().is_err()
    {
        return Some(format!(
            "{url:?}: the path {db:?} is not a database number; use e.g. redis://host:6379/0"
        ));
    }
    None
}

impl Broker {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        match self.kind {
            BrokerKind::Memory => {}
            BrokerKind::Redis => {
                if let Some(m) = redis_url_problem(&self.url) {
                    report(keys(&["broker", "url"]), m);
                }
                if !self.nodes.is_empty() {
                    report(
                        keys(&["broker", "nodes"]),
                        "nodes is for kind = \"redis-cluster\"; a single Redis is given by url"
                            .into(),
                    );
                }
            }
            BrokerKind::RedisCluster => {
                if self.nodes.len() < 2 {
                    report(
                        keys(&["broker", "nodes"]),
                        format!(
                            "a Redis Cluster needs at least two seed nodes here (got {}), e.g. nodes = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]; for a single Redis use kind = \"redis\" with url",
                            self.nodes.len()
                        ),
                    );
                }
                for (i, n) in self.nodes.iter().enumerate() {
                    if let Some(m) = redis_url_problem(n) {
                        report(
                            vec![
                                Seg::Key("broker".into()),
                                Seg::Key("nodes".into()),
                                Seg::Index(i),
                            ],
                            m,
                        );
                    }
                }
            }
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            report(
                keys(&["broker", "prefix"]),
                format!(
                    "{:?} cannot prefix Redis keys; use a non-empty word without braces or spaces, e.g. \"wsgate\"",
                    self.prefix
                ),
            );
        }
        if self.presence_ttl.get() < std::time::Duration::from_secs(1) {
            report(
                keys(&["broker", "presence_ttl"]),
                "must be at least 1s (live nodes refresh their entries every third of it), e.g. \"15s\"".into(),
            );
        }
        if self.timeout.is_zero() {
            report(
                keys(&["broker", "timeout"]),
                "must be more than 0s, e.g. \"3s\"".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_for_scheme_host_port_and_database() {
        assert_eq!(redis_url_problem("redis://127.0.0.1:6379"), None);
        assert_eq!(redis_url_problem("redis://:pw@h:1/2"), None);
        assert_eq!(redis_url_problem("redis://h"), None);
        assert!(redis_url_problem("redis//h").unwrap().contains("not a URL"));
        assert!(
            redis_url_problem("http://h:1")
                .unwrap()
                .contains("scheme \"http\"")
        );
        assert!(redis_url_problem("rediss://h:1").unwrap().contains("TLS"));
        assert!(redis_url_problem("redis://:1").unwrap().contains("no host"));
        assert!(redis_url_problem("redis://h:0").unwrap().contains("port"));
        assert!(
            redis_url_problem("redis://h:1/x")
                .unwrap()
                .contains("database")
        );
    }
}
