//! Real `redis-server` processes for the tests: one Redis, or a Redis Cluster of several
//! masters, on free loopback ports, killed when dropped (also when a test panics). A missing
//! `redis-server` fails the test with the install command, never skips it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

fn binary(name: &str) -> &str {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is not installed; install it with `sudo apt-get install -y redis-server redis-tools` (scripts/test-all does)"
    );
    name
}

impl RedisServer {
    /// A fresh Redis (no persistence) on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A fresh Redis with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("wsgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir for redis");
        let mut r = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary("redis-server"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("warning")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        wait_ping(self.port);
    }

    /// Kills the server (SIGKILL: nothing is saved on the way out).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (with its data if it keeps an append-only file).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One command through `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args...`; its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Waits until a Redis answers PING on `port`.
pub fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok()
                && let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"+PONG")
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis on port {port} did not answer PING within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Redis Cluster of `masters` masters (no replicas), every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new(binary("redis-cli"))
            .args(&args)
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c
            .nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach state ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node id of the node on `port`.
    pub fn id_of(&self, port: u16) -> String {
        cli(port, &["cluster", "myid"]).trim().to_string()
    }

    /// The port of the master that owns `slot`.
    pub fn owner(&self, slot: u16) -> u16 {
        let text = self.nodes[0].cli(&["cluster", "nodes"]);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    let port: u16 = f[1]
                        .split('@')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                        .expect("a port in cluster nodes");
                    return port;
                }
            }
        }
        panic!("no master owns slot {slot}: {text}")
    }

    /// Moves `slot` (with its keys) from its owner to the master on `to`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, MIGRATE the keys, then NODE.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let s = slot.to_string();
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        cli(to, &["cluster", "setslot", &s, "importing", &from_id]);
        cli(from, &["cluster", "setslot", &s, "migrating", &to_id]);
        loop {
            let keys = cli(from, &["cluster", "getkeysinslot", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let port = to.to_string();
            args.push(&port);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            cli(from, &args);
        }
        for n in &self.nodes {
            cli(n.port, &["cluster", "setslot", &s, "node", &to_id]);
        }
    }
}
