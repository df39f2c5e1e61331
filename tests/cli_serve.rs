//! The real binary: check-config exit codes and messages, env overrides, SIGTERM drain.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

fn check_config(path: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check-config", path])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_is_valid() {
    let (code, out, err) = check_config("wsgate.example.toml", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn every_config_under_examples_is_valid() {
    let mut found = 0;
    for dir in std::fs::read_dir("examples").expect("examples/ exists") {
        let p = dir.expect("an entry").path().join("wsgate.toml");
        if p.exists() {
            found += 1;
            let (code, out, err) = check_config(p.to_str().expect("a UTF-8 path"), &[]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
        }
    }
    assert!(found >= 1, "no examples/*/wsgate.toml found");
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_message() {
    let dir = std::path::Path::new("tests/config/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (code, _, err) = check_config(path.to_str().unwrap(), &[]);
        assert_eq!(code, 1, "{}: {err}", path.display());
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                err.contains(line),
                "{}: expected {line:?} in:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} fixtures found");
}

#[test]
fn env_variables_override_and_are_checked() {
    let (code, out, _) = check_config(
        "wsgate.example.toml",
        &[("WSGATE_SERVER__LISTEN", "127.0.0.1:9911")],
    );
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1:9911"), "{out}");
    let (code, _, err) = check_config(
        "wsgate.example.toml",
        &[("WSGATE_WEBSOCKET__PING_INTERVAL", "soon")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("WSGATE_WEBSOCKET__PING_INTERVAL: websocket.ping_interval:"),
        "{err}"
    );
}

#[test]
fn help_shows_examples_and_version_prints() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wsgate "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    sigterm_drains("work_stealing").await;
}

/// The same with a runtime per worker: the connections live on the workers' threads, which
/// must stay up through the drain and then let the process exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_per_core_workers_too() {
    sigterm_drains("per_core").await;
}

async fn sigterm_drains(runtime: &str) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_wsgate(
        &["serve", "--listen", &listen],
        &[
            ("WSGATE_SERVER__SHUTDOWN_GRACE", "5s"),
            ("WSGATE_SERVER__RUNTIME", runtime),
            ("WSGATE_SERVER__WORKERS", "2"),
        ],
        port,
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut socks = Vec::new();
    for i in 0..10 {
        socks.push(raw_ws(addr, &format!("/room/{i}")).await);
    }
    unsafe_kill(child.id());
    for s in &mut socks {
        let (code, _) = read_until_close(s).await.expect("a close frame");
        assert_eq!(code, 1001);
        use tokio::io::AsyncWriteExt;
        s.write_all(&client_frame(8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wsgate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn unsafe_kill(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn risky_settings_are_warned_about_with_their_line_and_the_config_still_passes() {
    let (code, out, err) = check_config("tests/config/risky.toml", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
    for want in [
        "warning: tests/config/risky.toml:3:20: proxy.trusted_proxies[0]: \"0.0.0.0/0\" trusts the X-Forwarded-For and Forwarded headers of every IPv4 client",
        "warning: tests/config/risky.toml:3:33: proxy.trusted_proxies[1]: \"::/0\" trusts the X-Forwarded-For and Forwarded headers of every IPv6 client",
        "warning: tests/config/risky.toml:10:1: route[0].path_prefix: \"/\" covers wsgate's own /api/, /metrics, /healthz, /readyz on this listener: those requests go to upstream \"app\"",
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    assert!(!err.contains("trusted_proxies[2]"), "{err}");
    assert_eq!(err.matches("warning:").count(), 3, "{err}");
    // The example config (its proxy route is under /app/) has nothing to warn about.
    let (_, _, err) = check_config("wsgate.example.toml", &[]);
    assert!(!err.contains("warning:"), "{err}");
}
