//! The real binary's operations surface: `genconfig` output that `check-config` accepts, human
//! and JSON logs (flag and config key), and one access line per handshake and proxied request.

mod support;

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

#[test]
fn genconfig_prints_a_commented_config_that_check_config_accepts() {
    let out = std::process::Command::new(BIN)
        .arg("genconfig")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for section in [
        "[server]",
        "[websocket]",
        "[api]",
        "[admin]",
        "[log]",
        "[proxy]",
    ] {
        assert!(text.contains(section), "{section} missing");
    }
    let comments = text.lines().filter(|l| l.starts_with('#')).count();
    assert!(comments > 50, "only {comments} comment lines");
    let dir = std::env::temp_dir().join(format!("wsgate-genconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsgate.toml");
    std::fs::write(&file, &text).unwrap();
    let check = std::process::Command::new(BIN)
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A wsgate process on a free port with `config` (written to a file) and `args`; its stderr.
struct Proc {
    child: std::process::Child,
    lines: Receiver<String>,
    port: u16,
    seen: Vec<String>,
    dir: std::path::PathBuf,
}

impl Proc {
    fn start(config: &str, args: &[&str]) -> Proc {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wsgate-logs-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("wsgate.toml");
        std::fs::write(
            &file,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n{config}"),
        )
        .unwrap();
        let mut all = vec!["serve", "--config", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut child = wsgate_command(&all, &[])
            .env_remove("RUST_LOG")
            .env_remove("WSGATE_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = stderr_lines(&mut child);
        let mut p = Proc {
            child,
            lines,
            port,
            seen: Vec::new(),
            dir,
        };
        p.wait_for(|l| l.contains("listening on http://127.0.0.1"));
        p
    }

    /// The first line (from the start) that `pred` accepts, waiting for more as they come.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|_| panic!("no such line; saw:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

const HUB_AND_PROXY: &str = "[[route]]\npath = \"/room/{room}/\"\ngroup = \"room:{room}\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_access_line_per_handshake_and_proxied_request() {
    let (upstream, _seen) = upstream::echo_http().await;
    let config = format!(
        "{HUB_AND_PROXY}[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n[[route]]\npath_prefix = \"/app/\"\nproxy_pass = \"app\"\n"
    );
    let mut p = Proc::start(&config, &["--log-format", "json"]);
    let first = parse(&p.seen[0].clone());
    assert_eq!(first["level"], "INFO");
    assert!(first["message"].as_str().unwrap().contains("listening on"));

    let _ws = connect(p.addr(), "/room/a/").await;
    let bad = raw(
        p.addr(),
        b"GET /room/a/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status, 426);
    let proxied = raw(
        p.addr(),
        b"GET /app/thing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(proxied.status, 200);

    let is_access = |l: &str, kind: &str, status: u64| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["target"] == "wsgate::access" && v["kind"] == kind && v["status"] == status
        })
    };
    let ok = parse(&p.wait_for(|l| is_access(l, "handshake", 101)));
    assert_eq!(ok["path"], "/room/a/");
    assert_eq!(ok["refusal"], "-");
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = parse(&p.wait_for(|l| is_access(l, "handshake", 426)));
    assert_eq!(refused["refusal"], "ws_version");
    assert!(refused["bytes"].as_u64().unwrap() > 0);
    let prox = parse(&p.wait_for(|l| is_access(l, "proxy", 200)));
    assert_eq!(prox["upstream"], "app");
    assert_eq!(prox["path"], "/app/thing");
    assert_eq!(prox["method"], "GET");
    assert!(prox["bytes"].as_i64().unwrap() > 0, "{prox}");
    // Every line is JSON, access or not.
    for l in &p.seen {
        parse(l);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_human_by_default_and_json_from_the_config_key() {
    let mut human = Proc::start(HUB_AND_PROXY, &[]);
    assert!(serde_json::from_str::<Value>(&human.seen[0]).is_err());
    assert!(human.seen[0].contains(" INFO "), "{}", human.seen[0]);
    let _ws = connect(human.addr(), "/room/h/").await;
    let line = human.wait_for(|l| l.contains("wsgate::access"));
    assert!(line.contains("status=101"), "{line}");
    assert!(
        line.contains("path=\"/room/h/\"") || line.contains("path=/room/h/"),
        "{line}"
    );

    let json = Proc::start(&format!("{HUB_AND_PROXY}[log]\nformat = \"json\"\n"), &[]);
    parse(&json.seen[0]);
    // The flag wins over the key.
    let flagged = Proc::start(
        &format!("{HUB_AND_PROXY}[log]\nformat = \"json\"\n"),
        &["--log-format", "human"],
    );
    assert!(serde_json::from_str::<Value>(&flagged.seen[0]).is_err());
}

/// The unit and the container recipe are not run here (no systemd, no image builds in tests);
/// this checks that they say what the README promises and that the commands they run exist.
#[test]
fn the_systemd_unit_and_containerfile_are_sensible() {
    let unit = std::fs::read_to_string("packaging/wsgate.service").unwrap();
    let keys: HashMap<&str, &str> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    for (k, v) in [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(keys.get(k), Some(&v), "{k}");
    }
    let nofile: u64 = keys["LimitNOFILE"].parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section}");
    }
    // The commands it runs are real subcommands with real flags.
    for line in ["ExecStart", "ExecStartPre"] {
        let cmd = keys[line];
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        assert_eq!(args.last(), Some(&"/etc/wsgate/wsgate.toml"), "{cmd}");
        let mut help = vec![args[0], "--help"];
        help.retain(|a| !a.is_empty());
        let out = std::process::Command::new(BIN)
            .args(&help)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
    }

    let cf = std::fs::read_to_string("packaging/Containerfile").unwrap();
    let froms: Vec<&str> = cf.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a multi-stage build: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{}", froms[0]);
    assert!(cf.contains("COPY --from=build /src/target/release/wsgate /usr/local/bin/wsgate"));
    assert!(cf.contains("USER wsgate"));
    let cmd = cf.lines().find_map(|l| l.strip_prefix("CMD ")).unwrap();
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(args[0], "serve");
    // The image rewrites the generated config's listen line; it must be there to rewrite.
    let out = std::process::Command::new(BIN)
        .arg("genconfig")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\nlisten = \"127.0.0.1:8080\"\n"));
}
