//! `wsgate bench`: a load generator for WebSocket servers on this machine, modelled on
//! `redis-benchmark` and `nats bench`. It talks to the server only over sockets, so it measures
//! wsgate and any peer (node `ws`, ...) the same way.
//!
//! Modes: `echo` (closed-loop round trips), `room` (every member sends, the server broadcasts to
//! all), `fanout` (HTTP publishes to many subscribers, with loss, duplicate and order checks),
//! `idle` (held connections: server memory and CPU per connection), `handshake` (connect,
//! upgrade, close cycles per second) and `recover` (a reconnect storm of `wsgate.v1` clients
//! recovering what they missed).
//!
//! Every run is bounded in count and time, prints a progress line on stderr and exactly one
//! JSON object on stdout, and exits 1 when anything was lost or failed, 2 on bad arguments or a
//! target that is not on this machine. Report fields are described in `bench/README.md`.

mod args;
mod client;
mod echo;
mod fanout;
mod handshake;
mod idle;
mod plan;
mod recover;
mod room;
mod shared;
pub mod stats;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

pub use args::{Args, Mode};
pub use client::{Target, parse_target};
pub use plan::{Plan, validate};
pub use shared::Outcome;

/// Runs `wsgate bench` and returns the process exit code.
pub fn run(args: Args) -> ExitCode {
    let plan = match validate(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wsgate bench: {e}");
            return ExitCode::from(2);
        }
    };
    let nofile = crate::lifecycle::raise_nofile_limit();
    let mut rt = if plan.args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(plan.args.threads);
        b
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run_plan(plan.clone(), nofile));
    rt.shutdown_timeout(Duration::from_millis(100));
    println!("{}", outcome.report);
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a checked plan on the current runtime (tests call this directly).
pub async fn run_plan(plan: Plan, nofile: u64) -> Outcome {
    stats::now_ns();
    let a = &plan.args;
    let mut out = match a.mode {
        Mode::Echo => echo::run(&plan).await,
        Mode::Room => room::run(&plan).await,
        Mode::Fanout => fanout::run(&plan).await,
        Mode::Idle => idle::run(&plan).await,
        Mode::Handshake => handshake::run(&plan).await,
        Mode::Recover => recover::run(&plan).await,
    };
    if let Value::Object(m) = &mut out.report {
        let mut head = serde_json::Map::new();
        head.insert("mode".into(), json!(a.mode.name()));
        head.insert("ok".into(), json!(out.ok));
        head.insert(
            "url".into(),
            json!(format!(
                "{}://{}{}",
                if plan.target.secure { "wss" } else { "ws" },
                plan.target.host,
                plan.target.path
            )),
        );
        if let Some(p) = &plan.publish {
            head.insert(
                "publish_url".into(),
                json!(format!("http://{}{}", p.host, p.path)),
            );
        }
        if let Some(pool) = &plan.target.h2 {
            // The HTTP/2 connections the WebSockets ran on (per URL).
            head.insert(
                "http2".into(),
                json!({ "conns": a.h2_conns, "opened": pool.opened() }),
            );
        }
        head.insert("size".into(), json!(a.size));
        head.insert("client_threads".into(), json!(a.threads));
        head.insert("nofile_limit".into(), json!(nofile));
        head.append(m);
        out.report = Value::Object(head);
    }
    out
}
