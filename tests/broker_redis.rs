//! The broker behaviour suite (`support/broker_suite.rs`) against the Redis broker, each check on
//! a `redis-server` of its own (started on a free port, killed at the end).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::broker_suite::{self, Make};
use support::redis::RedisServer;
use wsgate::broker::Broker;
use wsgate::broker::policy::Policies;
use wsgate::broker::redis::{Redis, Settings, Target};

fn settings(target: Target, policies: Policies) -> Settings {
    Settings {
        target,
        prefix: "suite".into(),
        policies,
        meta_ttl: Duration::from_secs(3600),
        presence_ttl: Duration::from_secs(5),
        timeout: Duration::from_secs(3),
    }
}

/// Connects a Redis broker to `url` and runs its background work on this runtime.
fn make(url: String) -> Box<Make> {
    Box::new(move |policies: Policies| -> Arc<dyn Broker> {
        let s = settings(Target::Single(url.clone()), policies);
        let b = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Redis::connect(s))
        })
        .expect("the broker connects");
        tokio::spawn(b.clone().background().expect("background work"));
        b
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_delivery() {
    let r = RedisServer::start();
    broker_suite::positions_and_delivery(&*make(r.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery() {
    let r = RedisServer::start();
    broker_suite::recovery(&*make(r.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_bounds() {
    let r = RedisServer::start();
    broker_suite::replay_bounds(&*make(r.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_seam() {
    let r = RedisServer::start();
    broker_suite::attach_seam(&*make(r.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence() {
    let r = RedisServer::start();
    broker_suite::presence(&*make(r.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_a_sentence_naming_the_url_and_the_key() {
    let port = support::free_port();
    let s = settings(
        Target::Single(format!("redis://127.0.0.1:{port}")),
        Policies::default(),
    );
    let e = Redis::connect(s).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot reach redis://127.0.0.1:{port}: ")),
        "{e}"
    );
    assert!(e.ends_with("start Redis there or fix broker.url"), "{e}");
}
