//! `wsgate bench` against wsgate started in-process: every mode runs briefly with tiny counts,
//! loses nothing and reports sane figures; bad targets are refused.

mod support;

use clap::Parser;
use serde_json::Value;
use support::{eventually, start};
use wsgate::bench::{Outcome, run_plan, validate};
use wsgate::cli::{Cli, Command};

/// Parses `wsgate bench ARGS` exactly as the binary would and runs it on this runtime.
async fn bench(line: &str) -> Outcome {
    let cli = Cli::try_parse_from(
        ["wsgate", "bench"]
            .into_iter()
            .chain(line.split_whitespace())
            .chain(["--progress", "0"]),
    )
    .expect("arguments parse");
    let Some(Command::Bench(args)) = cli.command else {
        panic!("not a bench command")
    };
    let plan = validate(&args).expect("arguments are valid");
    run_plan(plan, 0).await
}

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

fn pid() -> String {
    std::process::id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_every_message_in_order() {
    let srv = start("").await;
    let out = bench(&format!(
        "echo --url ws://{}/ws/echo --conns 4 --inflight 3 --warmup 0.1 --duration 0.4 --pid {}",
        srv.addr,
        pid()
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(r["mode"], "echo");
    assert_eq!(num(r, "connected"), 4.0);
    assert!(num(r, "messages") > 0.0, "{r}");
    assert!(num(r, "msgs_per_s") > 0.0, "{r}");
    assert_eq!(
        num(r, "lost") + num(r, "corrupt") + num(r, "unexpected"),
        0.0
    );
    assert_eq!(num(r, "latency_us.count"), num(r, "messages"));
    assert!(num(r, "latency_us.p50") <= num(r, "latency_us.p99"));
    assert!(num(r, "latency_us.p99") <= num(r, "latency_us.max"));
    assert!(num(r, "cpu.server_pct_of_core") >= 0.0);
    assert!(num(r, "cpu.window_s") >= 0.4);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivers_every_message_to_every_member() {
    let srv = start("").await;
    let out = bench(&format!(
        "room --url ws://{}/room/b/ --conns 5 --iterations 4 --warmup-iterations 1",
        srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "iterations"), 4.0);
    assert_eq!(num(r, "deliveries"), 4.0 * 5.0 * 5.0);
    assert_eq!(num(r, "extra_deliveries"), 0.0);
    // Member 0's message is sampled at every member, every iteration (warm-up included).
    assert_eq!(num(r, "delivery_latency_us.count"), 5.0 * 5.0);
    assert!(r["failure"].is_null());
    assert!(num(r, "deliveries_per_s") > 0.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_every_publish_at_every_subscriber() {
    let srv = start("").await;
    let out = bench(&format!(
        "fanout --url ws://{a}/room/f/ --publish-url http://{a}/api/groups/room:f/messages \
         --conns 20 --msgs 30 --rate 300 --settle 1",
        a = srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "publish.ok"), 30.0);
    assert_eq!(num(r, "expected_deliveries"), 600.0);
    assert_eq!(num(r, "deliveries"), 600.0);
    assert_eq!(num(r, "latency_us.count"), 600.0);
    for k in [
        "lost",
        "duplicates",
        "out_of_order",
        "corrupt",
        "subs_disconnected",
    ] {
        assert_eq!(num(r, k), 0.0, "{k} in {r}");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reports_failed_publishes_as_not_ok() {
    let srv = start("").await;
    // The group name is too long, so every publish is refused.
    let group = "x".repeat(300);
    let out = bench(&format!(
        "fanout --url ws://{a}/room/f/ --publish-url http://{a}/api/groups/{group}/messages \
         --conns 2 --msgs 3 --rate 100 --timeout 2",
        a = srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(!out.ok, "{r}");
    assert_eq!(num(r, "publish.failed"), 3.0, "{r}");
    assert!(
        r["errors"]["publish_status"]["count"].as_u64() == Some(3),
        "{r}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_answers_pings_and_measures_the_server() {
    let srv = start("[websocket]\nping_interval = \"100ms\"\npong_timeout = \"1s\"\n").await;
    let out = bench(&format!(
        "idle --url ws://{}/ws/echo --conns 10 --hold 0.6 --pid {}",
        srv.addr,
        pid()
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "connected"), 10.0);
    assert_eq!(num(r, "hold.closed_by_server"), 0.0);
    assert!(num(r, "hold.server_pings") >= 10.0, "{r}");
    assert!(num(r, "server_rss.before") > 0.0, "{r}");
    assert!(r["server_cpu_us_per_conn_s"].is_number(), "{r}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_cycles_close_cleanly() {
    let srv = start("").await;
    let out = bench(&format!(
        "handshake --url ws://{}/ws/echo --total 40 --concurrency 4",
        srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "completed"), 40.0);
    assert_eq!(num(r, "clean_closes"), 40.0);
    assert_eq!(r["stopped_by"], "total");
    assert!(num(r, "handshakes_per_s") > 0.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_gone_is_a_failed_run() {
    let srv = start("").await;
    let addr = srv.addr;
    srv.shutdown().await;
    let out = bench(&format!(
        "echo --url ws://{addr}/ws/echo --conns 2 --duration 0.1 --warmup 0"
    ))
    .await;
    assert!(!out.ok, "{}", out.report);
    assert_eq!(num(&out.report, "connected"), 0.0);
    assert_eq!(out.report["errors"]["connect"]["count"], 2);
}

#[test]
fn the_binary_refuses_a_remote_target_with_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["bench", "echo", "--url", "ws://10.1.2.3:80/"])
        .output()
        .expect("wsgate runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.1.2.3 is not a loopback address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_brings_every_client_its_missed_messages() {
    let srv = start("").await;
    let out = bench(&format!(
        "recover --url ws://{a}/room/r/ --publish-url http://{a}/api/groups/room:r/messages \
         --group room:r --conns 12 --missed 7 --timeout 5 --pid {p}",
        a = srv.addr,
        p = pid()
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "published"), 7.0);
    assert_eq!(num(r, "recovered"), 12.0);
    assert_eq!(num(r, "not_recovered"), 0.0);
    assert_eq!(num(r, "time_to_recovered_us.count"), 12.0);
    assert!(num(r, "recoveries_per_s") > 0.0, "{r}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_history_is_not_ok() {
    // A route that keeps no history cannot recover anyone: the bench must say so, not pass.
    let srv = start("[[route]]\npath = \"/nohist/{r}/\"\ngroup = \"nohist:{r}\"\n").await;
    let out = bench(&format!(
        "recover --url ws://{a}/nohist/r/ --publish-url http://{a}/api/groups/nohist:r/messages \
         --group nohist:r --conns 3 --missed 2 --timeout 3",
        a = srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(!out.ok, "{r}");
    assert_eq!(num(r, "recovered"), 0.0, "{r}");
    assert_eq!(num(r, "not_recovered"), 3.0, "{r}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_handshake_run_over_wss_trusting_the_ca_given() {
    let dir = support::doctor::TempDir::new("bench-wss");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let srv = start(&format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await;
    let url = format!("wss://localhost:{}/ws/echo", srv.addr.port());
    let ca = cert.display().to_string();
    let out = bench(&format!(
        "echo --url {url} --ca {ca} --conns 2 --inflight 2 --warmup 0 --duration 0.3"
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(r["url"], url.as_str());
    assert!(num(r, "messages") > 0.0, "{r}");
    assert_eq!(num(r, "lost") + num(r, "corrupt"), 0.0);
    let out = bench(&format!(
        "handshake --url {url} --ca {ca} --total 20 --concurrency 2"
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "completed"), 20.0);
    // --insecure takes the self-signed certificate without its CA; without either the
    // certificate is checked against this machine's roots and every handshake fails.
    let out = bench(&format!(
        "handshake --url {url} --insecure --total 5 --concurrency 1"
    ))
    .await;
    assert!(out.ok, "{}", out.report);
    let out = bench(&format!(
        "handshake --url {url} --total 3 --concurrency 1 --timeout 2"
    ))
    .await;
    assert!(!out.ok, "{}", out.report);
    assert!(out.report.to_string().contains("tls"), "{}", out.report);
    srv.shutdown().await;
}

/// `wsgate_ws_opened_total{via="hub"}` over `http_version`, from /metrics.
async fn opened(addr: std::net::SocketAddr, http_version: &str) -> u64 {
    let r = support::raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let want = format!("wsgate_ws_opened_total{{via=\"hub\",http_version=\"{http_version}\"}} ");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_h2_every_websocket_is_a_stream_of_the_shared_connections() {
    let srv = start("[websocket]\nping_interval = \"100ms\"\npong_timeout = \"1s\"\n").await;
    // 20 idle WebSockets on one h2c connection answer the server's Pings like any others.
    let out = bench(&format!(
        "idle --h2 --url ws://{}/room/h2idle/ --conns 20 --hold 0.5 --pid {}",
        srv.addr,
        pid()
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "connected"), 20.0);
    assert_eq!((num(r, "http2.conns"), num(r, "http2.opened")), (1.0, 1.0));
    assert!(num(r, "hold.server_pings") >= 20.0, "{r}");
    assert_eq!(num(r, "hold.closed_by_server"), 0.0);
    // The metrics are the process's, shared with tests running beside this one: at least.
    assert!(opened(srv.addr, "2").await >= 20);

    // Handshake cycles open and close a stream each; --h2-conns spreads them.
    let out = bench(&format!(
        "handshake --h2 --h2-conns 3 --url ws://{}/room/h2hs/ --total 40 --concurrency 4",
        srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!(num(r, "completed"), 40.0);
    assert_eq!(num(r, "clean_closes"), 40.0);
    assert_eq!(num(r, "http2.opened"), 3.0);
    assert!(opened(srv.addr, "2").await >= 60);
    eventually("every stream's socket closed", || {
        srv.open_connections() == 0
    })
    .await;

    // Echo over a stream: every message comes back in order.
    let out = bench(&format!(
        "echo --h2 --url ws://{}/ws/echo --conns 3 --inflight 2 --warmup 0 --duration 0.3",
        srv.addr
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert!(num(r, "messages") > 0.0, "{r}");
    assert_eq!(num(r, "lost") + num(r, "corrupt"), 0.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_h2_over_tls_the_server_must_take_h2_in_alpn() {
    let dir = support::doctor::TempDir::new("bench-h2");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let ca = cert.display().to_string();
    let srv = start(&tls).await;
    let url = format!("wss://localhost:{}/ws/echo", srv.addr.port());
    let out = bench(&format!(
        "handshake --h2 --url {url} --ca {ca} --total 20 --concurrency 4"
    ))
    .await;
    let r = &out.report;
    assert!(out.ok, "{r}");
    assert_eq!((num(r, "completed"), num(r, "http2.opened")), (20.0, 1.0));
    srv.shutdown().await;

    // A server that serves only HTTP/1.1 refuses the TLS handshake that offers only "h2"
    // (RFC 7301 no_application_protocol): a failed run that says so.
    let srv = start(&format!("{tls}alpn = [\"http/1.1\"]\n")).await;
    let url = format!("wss://localhost:{}/ws/echo", srv.addr.port());
    let out = bench(&format!(
        "handshake --h2 --url {url} --ca {ca} --total 2 --concurrency 1 --timeout 2"
    ))
    .await;
    assert!(!out.ok, "{}", out.report);
    assert_eq!(num(&out.report, "errors.tls.count"), 2.0, "{}", out.report);
    assert!(
        out.report.to_string().contains("NoApplicationProtocol"),
        "{}",
        out.report
    );
    srv.shutdown().await;
}

#[test]
fn h2_conns_needs_h2() {
    let cli = Cli::try_parse_from(["wsgate", "bench", "idle", "--h2-conns", "2"]).unwrap();
    let Some(Command::Bench(args)) = cli.command else {
        panic!("not a bench command")
    };
    let e = validate(&args).unwrap_err();
    assert!(e.contains("add --h2"), "{e}");
}
