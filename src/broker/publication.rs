//! What flows from publishers (the API, sessions) through the broker to every node's hub: a
//! [`Publication`], and its place in its group's stream ([`Position`]).

use std::sync::Arc;

use bytes::Bytes;

/// What a publication carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text (checked by whoever made it).
    Text,
    /// UTF-8 text that is one JSON value (checked by whoever made it): clients of the
    /// `wsgate.v1` protocol get it as that value rather than as a string.
    Json,
    Binary,
    /// A connection joined the group: `data` is its presence entry as JSON. Not kept in the
    /// stream, and only protocols that ask for such events encode it.
    Join,
    /// A connection left the group (same `data` as `Join`).
    Leave,
}

impl Kind {
    /// Whether this is a message (kept in the stream) rather than a presence event.
    pub fn is_message(self) -> bool {
        matches!(self, Kind::Text | Kind::Json | Kind::Binary)
    }
}

/// Where a publication sits in its group's stream. Offsets grow by one per publication of the
/// group; the epoch names one life of the stream: when the stream is lost (a restart, history
/// evicted), the epoch changes, so a client that remembers an old position can tell "nothing
/// missed" from "history gone".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// One message published to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub group: Arc<str>,
    /// The message as published (not framed, not encoded for any client protocol).
    pub data: Bytes,
    pub kind: Kind,
    /// Set by the broker when the group keeps a stream.
    pub position: Option<Position>,
    /// The node it was published on (see [`crate::broker::Broker::node`]); 0 until the hub
    /// stamps it.
    pub origin: u64,
    /// The connection on the origin node that published it and must not get it back (a route
    /// with `echo_to_sender = false`), if any.
    pub sender: Option<u64>,
    /// One encoding made for free by whoever created the publication, as (codec name, bytes):
    /// a client's message arrives with room for its frame header, so it is already framed for
    /// plain clients. The fan-out uses it instead of encoding again for that codec. It never
    /// leaves this node.
    pub encoded: Option<(&'static str, Bytes)>,
}

impl Publication {
    pub fn new(group: impl Into<Arc<str>>, data: Bytes, kind: Kind) -> Self {
        Publication {
            group: group.into(),
            data,
            kind,
            position: None,
            origin: 0,
            sender: None,
            encoded: None,
        }
    }

    /// The same, with `bytes` as its encoding for codec `codec` (see [`Publication::encoded`]).
    pub fn with_encoding(mut self, codec: &'static str, bytes: Bytes) -> Self {
        self.encoded = Some((codec, bytes));
        self
    }

    /// The same, but not delivered back to connection `sender` of this node.
    pub fn except(mut self, sender: u64) -> Self {
        self.sender = Some(sender);
        self
    }
}
