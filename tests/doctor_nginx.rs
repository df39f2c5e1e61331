//! `wsgate doctor` against a real nginx in front of wsgate, with the story's config before and
//! after the fix. nginx runs in the foreground as a child of the test (its own prefix, pid,
//! logs and temp paths in a temp dir, a free loopback port). A missing nginx fails the test
//! with an install hint: `scripts/install-nginx.sh` (run by `scripts/test-all`) installs it.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::doctor::*;
use support::*;

/// nginx running as a child process; killed (by its own handle) when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx proxying every path to `upstream` with the extra `location` lines, and waits
    /// (bounded) until it accepts connections.
    async fn start(upstream: SocketAddr, location: &str) -> Nginx {
        let found = Command::new("nginx")
            .arg("-v")
            .stderr(Stdio::null())
            .status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "nginx is not installed; run scripts/install-nginx.sh (apt-get install -y nginx-light), \
which scripts/test-all does before the tests"
        );
        let dir = TempDir::new("doctor-nginx");
        let port = free_port();
        let d = dir.0.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n\
    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
            proxy_pass http://{upstream};\n{location}        }}\n    }}\n}}\n"
        );
        std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &format!("{d}/"),
                "-c",
                &format!("{d}/nginx.conf"),
                "-e",
            ])
            .arg(format!("{d}/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { child, port, dir };
        nginx.wait_ready().await;
        nginx
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {} within {WAIT:?}:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

/// The story's nginx: `proxy_pass` only, so nginx drops Upgrade and Connection.
const BROKEN: &str = "";

/// The fix, plus a short read timeout so that the idle cut shows within the test.
const FIXED: &str = "            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_read_timeout 2s;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_upgrade_headers_is_named_with_its_fix_and_after_the_fix_its_read_timeout() {
    let srv = start("").await;

    let nginx = Nginx::start(srv.addr, BROKEN).await;
    let url = format!("ws://127.0.0.1:{}/room/x/", nginx.port);
    let up = &refused_upgrade(&[&url]).await;
    let status = up["facts"]["status"].as_u64().unwrap();
    assert!(status == 426 || status == 400, "{up:#}");
    assert!(
        up["facts"]["server"].as_str().unwrap().starts_with("nginx"),
        "{up:#}"
    );
    assert_has_all(
        text(up, "detail"),
        &[
            "where 101 was expected: the upgrade headers were lost on the way",
            "but wsgate, which answered, got the request without them: nginx in front (by Server: nginx/",
            "answered by nginx (by Server: nginx/",
        ],
    );
    let hint = text(up, "hint");
    assert_has_all(
        hint,
        &[
            "nginx: in the location that proxies to the WebSocket server add",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection \"upgrade\";",
        ],
    );
    assert!(
        !hint.contains("HAProxy"),
        "only nginx's fix once nginx is known: {hint}"
    );
    drop(nginx);

    let nginx = Nginx::start(srv.addr, FIXED).await;
    let url = format!("ws://127.0.0.1:{}/room/x/", nginx.port);
    let (code, report) = doctor_idle(&url, "4s", &[]).await;
    assert_eq!(
        (code, verdicts(&report).as_str()),
        (1, "dns=pass tcp=pass upgrade=pass ping=pass idle=fail"),
        "{report:#}"
    );
    let idle = step(&report, "idle");
    let after = idle["facts"]["ended_after_s"].as_f64().unwrap();
    assert!(
        (1.7..3.2).contains(&after),
        "nginx cut after {after} s; proxy_read_timeout is 2s: {idle:#}"
    );
    assert!(
        text(idle, "detail").contains(&format!("after {after:.1} s without a Close frame")),
        "{idle:#}"
    );
    assert!(
        text(idle, "hint")
            .starts_with("nginx answered the upgrade: its proxy_read_timeout (default 60 s)"),
        "{idle:#}"
    );
    srv.shutdown().await;
}
