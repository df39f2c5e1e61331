//! A kernel that refuses io_uring: `proxy.tunnel_io = "io_uring"` stops wsgate at start with a
//! message that says what to change, and `"auto"` carries tunnels on epoll instead.
//!
//! The refusal is real: `kernel.io_uring_disabled = 2` makes every `io_uring_setup` fail with
//! EPERM, for the whole machine, so this is its own test binary (cargo runs test binaries one
//! at a time) and the setting is put back when the test ends, pass or fail.

mod support;

use std::process::Stdio;

use support::upstream::{WsOptions, ws_echo};
use support::*;
use tokio::io::AsyncWriteExt;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        std::fs::write(SYSCTL, &self.0).expect("kernel.io_uring_disabled is put back");
    }
}

fn proxy_config(up: std::net::SocketAddr, port: u16, io: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wsgate-uring-refused-{port}.toml"));
    let toml = proxy_toml(up, port, &format!("[proxy]\ntunnel_io = \"{io}\"\n"));
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_refuses_io_uring_stops_an_explicit_choice_and_auto_falls_back_to_epoll() {
    let before = std::fs::read_to_string(SYSCTL)
        .expect("this kernel has kernel.io_uring_disabled (Linux 6.6+)");
    std::fs::write(SYSCTL, "2").expect("root may set kernel.io_uring_disabled");
    let _restore = Restore(before);
    let (up, _seen) = ws_echo(WsOptions::default()).await;

    // Asked for explicitly: no start, exit 1, and the reason with what to change.
    let port = free_port();
    let cfg = proxy_config(up, port, "io_uring");
    let out = wsgate_command(&["serve", "--config", cfg.to_str().unwrap()], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_has_all(
        &err,
        &[
            "proxy.tunnel_io = \"io_uring\" but this kernel refuses io_uring",
            "set proxy.tunnel_io to \"auto\" or \"epoll\"",
            "kernel.io_uring_disabled",
        ],
    );

    // "auto": starts, says why tunnels are on epoll, and a tunnel works.
    let port = free_port();
    let cfg = proxy_config(up, port, "auto");
    let mut child = Reaped(
        wsgate_command(&["serve", "--config", cfg.to_str().unwrap()], &[])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = stderr_lines(&mut child);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("listening on")) {
        lines.push(
            rx.recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("wsgate starts; it said {lines:?}")),
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("proxy tunnels use epoll")),
        "the fallback is logged: {lines:?}"
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&upgrade_request("/ws", "")).await.unwrap();
    let (r, _) = read_head_and_rest(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    s.write_all(&client_frame(0x1, b"on epoll")).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_texts(&mut s, &mut buf, 1).await, ["on epoll"]);
    let _ = child.kill();
    let _ = child.wait();
}
