//! What a session hands its client's messages to when its route forwards them to a backend
//! (`on_message = "forward"`), and what it tells it when the connection ends. The session only
//! hands over: whoever implements [`Relay`] does the slow part on its own task, so a slow
//! backend never holds up this connection's reads or anyone else's frames.

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;

/// Takes a connection's messages to a backend, in order.
pub trait Relay: Send + Sync + Debug {
    /// Hands one client message on without waiting for the backend.
    ///
    /// # Errors
    /// A sentence for the client when the message cannot be taken now (too many of this
    /// connection's messages are still waiting for the backend); the message is not sent.
    fn forward(&self, text: bool, payload: Bytes) -> Result<(), String>;
    /// The connection ended with close `code` (1006 when it went without a Close); called once,
    /// after every message handed over.
    fn closed(&self, code: u16);
}

/// What a session has beyond its route's group when a backend chose its groups or hears its
/// messages; boxed, so a session without hooks carries one pointer of it.
#[derive(Debug, Default)]
pub struct Extras {
    /// Groups joined besides the session's own (named by the backend), left when it ends.
    pub groups: Vec<Arc<str>>,
    /// Where client messages go on a forwarding route, and who hears about the close.
    pub relay: Option<Arc<dyn Relay>>,
    /// The connection's close code, once known: the first Close sent (ours, or our answer to
    /// the peer's).
    pub(super) code: Option<u16>,
    /// The extra bytes that arrived with the handshake (a client that did not wait for the
    /// 101): rare, so kept here rather than in every session.
    pub(super) pending: Option<Box<[u8]>>,
    /// Whatever the session's starter needs kept until it ends (`Session::keeping`).
    pub(super) keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// What was agreed for permessage-deflate, when the client negotiated it (shared by every
    /// such connection of the route: no per-connection compression state).
    pub(super) compression: Option<&'static super::codec::Compression>,
    /// The closing phase's deadline: armed when our Close becomes due, then reset for the
    /// linger; only a closing session has one.
    pub(super) timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Extras {
    /// Groups joined besides the session's own, and the relay, if any.
    pub fn new(groups: Vec<Arc<str>>, relay: Option<Arc<dyn Relay>>) -> Self {
        Extras {
            groups,
            relay,
            ..Extras::default()
        }
    }

    /// Nothing left in it: the session may drop it.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.relay.is_none()
            && self.code.is_none()
            && self.pending.is_none()
            && self.keep.is_none()
            && self.compression.is_none()
            && self.timer.is_none()
    }
}
