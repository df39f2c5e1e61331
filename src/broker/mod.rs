//! How publications reach every node that has members of their group, and where a group's stream
//! (positions, later history and presence) is kept.
//!
//! The broker deals only in group names and [`Publication`]s; it never sees a connection or a
//! member. Every publication goes through it, on the same road whether it was published on this
//! node or another: [`Broker::publish`] takes it, gives it its position, and hands it to the
//! [`Handler`] of every node subscribed to the group (this node's included), which delivers it
//! to local members. So nothing is delivered twice, and a position is attached before anyone
//! sees the message.
//!
//! # Contract for implementations
//! - **At most once between nodes.** A node that is cut off from the broker misses what is
//!   published meanwhile; the handler never gets a publication twice.
//! - **Ordered per publisher.** Publications made by one caller, in the order of its `publish`
//!   calls, reach each handler in that order (so a session need not wait for one publish before
//!   the next).
//! - **Position and history are atomic per group.** The offset a publication gets and its place
//!   in the group's stream never disagree, and offsets of a group are handed out without gaps.
//! - **Subscriptions follow members.** The hub calls [`Broker::subscribe`] when a group gets its
//!   first member on this node and [`Broker::unsubscribe`] when it loses its last, in that order
//!   for any one group; a broker for many nodes forwards a group's traffic only to subscribed
//!   nodes.
//!
//! [`memory::Memory`] is the single-node broker: this process is the whole cluster.

pub mod memory;
pub mod publication;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

pub use publication::{Kind, Position, Publication};

/// Receives the publications a broker delivers to this node: the hub.
pub trait Handler: Send + Sync + Debug {
    /// Delivers `p` to this node's members of its group; returns how many took it.
    fn handle(&self, p: &Publication) -> usize;
}

/// Carries publications between nodes and keeps groups' streams. See the module docs for the
/// contract every implementation keeps.
pub trait Broker: Send + Sync + Debug {
    /// This node's id, stamped on the publications it makes (`Publication::origin`).
    fn node(&self) -> u64;

    /// Sets the handler that gets every publication for this node. Called once, by the hub.
    fn set_handler(&self, handler: Weak<dyn Handler>);

    /// Publishes `p` to every node with members of its group, this one included.
    ///
    /// Usually this is not what a publisher calls: `Hub::publish` stamps the origin and counts
    /// the publish first. The returned future resolves with the position given and the local
    /// deliveries; dropping it does not cancel the publish (its order is fixed by this call).
    fn publish(&self, p: Publication) -> Published;

    /// The group got its first member on this node: forward its publications here.
    fn subscribe(&self, group: &str);

    /// The group lost its last member on this node.
    fn unsubscribe(&self, group: &str);
}

/// What a publish achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The publication's place in its group's stream, when the group keeps one.
    pub position: Option<Position>,
    /// Members of this node that took it (for a broker that delivers asynchronously: the
    /// members this node had when it was published).
    pub local_recipients: usize,
}

/// Why a publish did not reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The broker cannot be reached; nothing was published.
    #[error("the broker is unavailable ({reason}); nothing was published, retry shortly")]
    Unavailable { reason: String },
}

/// The outcome of [`Broker::publish`]: ready at once for a broker in this process, later for one
/// across the network.
#[derive(Debug)]
#[must_use = "a publish's outcome says whether it reached the broker"]
pub struct Published(State);

#[derive(Debug)]
enum State {
    Ready(Option<Result<Receipt, Error>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Receipt, Error>>),
}

impl Published {
    pub fn ready(r: Result<Receipt, Error>) -> Self {
        Published(State::Ready(Some(r)))
    }

    /// An outcome the broker will send on `rx` (a dropped sender means the broker went away).
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<Receipt, Error>>) -> Self {
        Published(State::Waiting(rx))
    }

    /// The outcome, when it is known without waiting.
    pub fn now(self) -> Option<Result<Receipt, Error>> {
        match self.0 {
            State::Ready(r) => r,
            State::Waiting(mut rx) => rx.try_recv().ok(),
        }
    }
}

impl Future for Published {
    type Output = Result<Receipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Ready(r) => Poll::Ready(r.take().expect("polled after completion")),
            State::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(Error::Unavailable {
                        reason: "the broker stopped before answering".into(),
                    })
                })
            }),
        }
    }
}
