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
//! [`redis::Redis`] shares groups between nodes through a Redis or a Redis Cluster.

pub mod memory;
pub mod policy;
pub mod publication;
pub mod redis;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

pub use publication::{Kind, Position, Publication};

/// A future a broker answers with later (or at once, in this process).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Receives the publications a broker delivers to this node: the hub.
pub trait Handler: Send + Sync + Debug {
    /// Delivers `p` to this node's members of its group; returns how many took it.
    fn handle(&self, p: &Publication) -> usize;

    /// Members of `group` on this node now (what a broker that delivers later reports as a
    /// publish's local recipients).
    fn local_members(&self, _group: &str) -> usize {
        0
    }

    /// Publications of `group` may have been lost on their way to this node (the broker was
    /// cut off longer than history covers, or its history was lost): members that track
    /// positions should come back and recover. `reason` says what happened.
    fn lost(&self, _group: &str, _reason: &str) {}
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

    /// Joins something to `group` at a moment when no publication of the group is being
    /// delivered on this node: `attach` gets the history `q` asks for, and every publication
    /// after that moment reaches whatever `attach` joined, live. So a join with history has no
    /// gap and no duplicate at the seam. `attach` runs with the group's delivery held, so it must
    /// not wait on anything; it is not called when the broker cannot answer (the error says
    /// why).
    fn attach(&self, group: &str, q: HistoryQuery, attach: Attach) -> BoxFuture<Result<(), Error>>;

    /// The group's stream as `q` asks for it, without joining anything.
    fn history(&self, group: &str, q: HistoryQuery) -> BoxFuture<Result<Replay, Error>>;

    /// Records that connection `entry` is in `group` (its presence).
    fn presence_add(&self, group: &str, entry: PresenceEntry);

    /// Records that connection `conn` of this node left `group`.
    fn presence_remove(&self, group: &str, conn: u64);

    /// Every connection in `group`, on every node.
    fn presence(&self, group: &str) -> BoxFuture<Result<Vec<PresenceEntry>, Error>>;

    /// Whether the broker can take publishes now; the sentence says why not (`/readyz`).
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// The broker's own background work (expiring history, reconnecting), run for as long as
    /// the process serves; `None` when it has none.
    fn background(self: Arc<Self>) -> Option<BoxFuture<()>>;
}

/// What a join (or a history read) asks of a group's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryQuery {
    /// Nothing: join live (the stream's position is still reported).
    Live,
    /// Recovery: every publication after `since`, all of them (and at most `limit`) or none.
    Since { since: Position, limit: usize },
    /// Replay: the last `last` publications, none older than `within`.
    Last { last: usize, within: Duration },
}

/// Whether a recovery got everything that was missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No position was given.
    NotAsked,
    /// Every publication after the given position is in the replay.
    Recovered,
    /// Something may be missing; the sentence says why. The replay is then empty.
    Lost(String),
}

/// What a group's stream gave a join or a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// In offset order.
    pub publications: Vec<Publication>,
    pub recovery: Recovery,
    /// The stream's position now (its epoch and the last offset given), when the group keeps
    /// a stream.
    pub top: Option<Position>,
}

impl Replay {
    /// A group that keeps no stream.
    pub fn none(recovery: Recovery) -> Self {
        Replay {
            publications: Vec::new(),
            recovery,
            top: None,
        }
    }
}

/// What [`Broker::attach`] runs at the seam between history and live publications.
pub type Attach = Box<dyn FnOnce(&Replay) + Send>;

/// One connection in a group, as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The node the connection is on.
    pub node: u64,
    /// The connection's id on that node.
    pub conn: u64,
    /// The authenticated user, when there is one.
    pub user: Option<Arc<str>>,
    /// What the client said about itself (JSON text), when it did.
    pub info: Option<Arc<str>>,
}

impl PresenceEntry {
    /// The connection's id across nodes, as clients see it.
    pub fn id(&self) -> String {
        format!("{:x}.{}", self.node, self.conn)
    }
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
