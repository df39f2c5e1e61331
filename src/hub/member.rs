//! What the hub delivers to: members, and the codecs that turn a publication into the bytes a
//! member's client protocol puts on the wire.

use std::fmt::Debug;

use bytes::Bytes;

use crate::broker::{Kind, Publication};

/// Something that can receive publications: a WebSocket connection's outbox.
pub trait Member: Send + Sync + Debug {
    /// Unique for the life of the process.
    fn id(&self) -> u64;
    /// Queues an encoded publication; false when the member is closing or just turned out too
    /// slow.
    fn deliver(&self, frame: &Bytes) -> bool;
    /// Bytes a replay may queue at once without making the member a slow consumer.
    fn budget(&self) -> usize;
    /// Closes the member's connection with `code` and `reason` (its queue goes out first).
    fn disconnect(&self, code: u16, reason: &str);
    /// Queues a message meant for this connection alone (not a group's publication), encoded
    /// the way its client protocol carries such messages; false when it cannot take it.
    fn send(&self, data: &[u8], kind: Kind) -> bool;
    /// Its queue and liveness, for an operator.
    fn stats(&self) -> MemberStats {
        MemberStats::default()
    }
}

/// What an operator sees of a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Bytes queued and not yet written.
    pub queued_bytes: usize,
    /// The queue's limit (past it, the member is a slow consumer).
    pub limit: usize,
    /// When its peer last sent anything, on the heartbeat clock (ms); 0 when unknown.
    pub last_heard_ms: u64,
    /// A Close is due or under way.
    pub closing: bool,
}

/// Encodes publications for one client protocol. The fan-out calls it at most once per
/// publication and hands every member speaking that protocol the same bytes.
pub trait Codec: Send + Sync + Debug {
    /// Names the protocol (two codecs with the same name are the same codec).
    fn name(&self) -> &'static str;
    /// The bytes for `p`, or `None` when this protocol does not carry it (a presence event to
    /// a client that did not ask for them).
    fn encode(&self, p: &Publication) -> Option<Bytes>;
    /// Told once per publication how many members took `frame` (its encoding of it), for the
    /// codec's own metrics. Default: nothing.
    fn delivered(&self, _frame: &Bytes, _members: usize) {}
    /// Whether its clients remember stream positions and recover from them when they come
    /// back (so the hub asks them to come back when publications may have been lost).
    fn tracks_positions(&self) -> bool {
        false
    }
}
