//! How published messages reach the other nodes of a cluster.
//!
//! The broker deals only in group names and encoded messages; it never sees a connection or a
//! member. Delivery between nodes is at most once: a node that is disconnected from the broker
//! misses what was published meanwhile.
//!
//! Only the in-memory broker exists today: this process is the whole cluster, so there is no
//! other node to forward to and local delivery (done by the hub) is all there is.

use std::fmt::Debug;

use bytes::Bytes;

/// Carries messages between nodes.
pub trait Broker: Send + Sync + Debug {
    /// Sends a message published on this node to the other nodes.
    fn publish(&self, group: &str, message: &Bytes);
}

/// The single-node broker: nothing leaves this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory;

impl Broker for Memory {
    fn publish(&self, _group: &str, _message: &Bytes) {}
}
