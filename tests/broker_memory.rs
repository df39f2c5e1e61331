//! The broker behaviour suite (`support/broker_suite.rs`) against the in-memory broker.

mod support;

use std::sync::Arc;

use support::broker_suite::{self, Make};
use wsgate::broker::Broker;
use wsgate::broker::memory::{Memory, Settings};
use wsgate::broker::policy::Policies;

fn make() -> Box<Make> {
    Box::new(|policies: Policies| -> Arc<dyn Broker> {
        Arc::new(Memory::new(Settings {
            policies,
            ..Settings::default()
        }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_delivery() {
    broker_suite::positions_and_delivery(&*make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery() {
    broker_suite::recovery(&*make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_bounds() {
    broker_suite::replay_bounds(&*make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_seam() {
    broker_suite::attach_seam(&*make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence() {
    broker_suite::presence(&*make()).await;
}
