//! `wsgate doctor --idle-probe`: a silent connection held through test proxies that cut idle
//! tunnels (FIN without a Close frame, RST, Close 1001), and through nothing at all to a wsgate
//! that pings. The measured cut time is checked against the proxy's limit.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::doctor::*;
use support::*;

/// The test proxies' idle limit.
const CUT: Duration = Duration::from_millis(1500);

/// Runs doctor with `--idle-probe 3s` through a proxy that cuts after [`CUT`] as `cut` says.
async fn probe_through(cut: Cut) -> (i32, Value, String) {
    let srv = start("").await;
    let proxy = cutting_proxy(srv.addr, CUT, cut).await;
    let url = format!("ws://{proxy}/ws/echo");
    let (code, report) = doctor_idle(&url, "3s", &[]).await;
    assert_eq!(
        verdicts(&report),
        "dns=pass tcp=pass upgrade=pass ping=pass idle=fail",
        "{report:#}"
    );
    assert_eq!((code, &report["ok"]), (1, &false.into()));
    let idle = step(&report, "idle").clone();
    let after = idle["facts"]["ended_after_s"].as_f64().unwrap();
    assert!(
        (1.3..2.5).contains(&after),
        "cut after {after} s, the proxy cuts after {CUT:?}: {idle:#}"
    );
    srv.shutdown().await;
    (code, idle, format!("{after:.1}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_read_timeout_cut_is_reported_without_a_close_frame() {
    let (_, idle, after) = probe_through(Cut::Fin).await;
    assert_eq!(idle["facts"]["ended"], "fin");
    assert_eq!(idle["facts"]["server_pings"], 0);
    assert!(
        text(&idle, "detail").starts_with(&format!(
            "closed after {after} s without a Close frame; the server sent nothing"
        )),
        "{idle:#}"
    );
    assert_has_all(
        text(&idle, "hint"),
        &[
            "a proxy read timeout such as nginx's proxy_read_timeout (default 60 s)",
            "raise it, or let the server send pings",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_told_apart_from_a_fin() {
    let (_, idle, after) = probe_through(Cut::Rst).await;
    assert_eq!(idle["facts"]["ended"], "rst");
    assert!(
        text(&idle, "detail").starts_with(&format!(
            "reset (TCP RST) after {after} s without a Close frame"
        )),
        "{idle:#}"
    );
    assert!(
        text(&idle, "hint").contains("proxy_read_timeout"),
        "{idle:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_1001_is_reported_with_its_code_and_reason() {
    let (_, idle, after) = probe_through(Cut::Close1001).await;
    assert_eq!(idle["facts"]["ended"], "close");
    assert_eq!(idle["facts"]["close_code"], 1001);
    assert_eq!(idle["facts"]["close_reason"], "idle");
    assert!(
        text(&idle, "detail")
            .starts_with(&format!("closed with Close 1001 \"idle\" after {after} s")),
        "{idle:#}"
    );
    assert!(
        text(&idle, "hint").starts_with("1001 Going Away"),
        "{idle:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_pings_keeps_the_silent_connection_open() {
    // wsgate looks at a pinged connection again only after pong_timeout, so pings come about
    // every 0.5 s here.
    let srv = start("[websocket]\nping_interval = \"250ms\"\npong_timeout = \"500ms\"\n").await;
    let url = format!("ws://{}/room/idle/", srv.addr);
    let run = doctor_within(&[&url, "--idle-probe", "2s"], WAIT + Duration::from_secs(2)).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_has_all(
        &run.stdout,
        &[
            "(holding the connection silent for 2.0 s)",
            "PASS  idle     still open after 2.0 s of silence from doctor; the server sent ",
            "PASS  close    sent Close 1000",
        ],
    );
    let (code, report) = doctor_idle(&url, "2s", &[]).await;
    assert_eq!(
        (code, verdicts(&report).as_str()),
        (
            0,
            "dns=pass tcp=pass upgrade=pass ping=pass idle=pass close=pass"
        )
    );
    let idle = step(&report, "idle");
    assert_eq!(idle["facts"]["ended"], "open");
    let pings = idle["facts"]["server_pings"].as_u64().unwrap();
    assert!((2..=10).contains(&pings), "{pings} pings in 2 s");
    assert!(text(idle, "detail").contains(&format!("the server sent {pings} ping(s)")));
    assert!(idle["hint"].is_null());
    // wsgate got a Pong for each of its pings: it did not close the connection with 1011.
    assert!(text(step(&report, "close"), "detail").contains("answered Close 1000"));
    srv.shutdown().await;
}
