//! What the hub delivers to: members, and the codecs that turn a publication into the bytes a
//! member's client protocol puts on the wire.

use std::fmt::Debug;

use bytes::Bytes;

use crate::broker::Publication;

/// Something that can receive publications: a WebSocket connection's outbox.
pub trait Member: Send + Sync + Debug {
    /// Unique for the life of the process.
    fn id(&self) -> u64;
    /// How publications are encoded for this member; read once, when it joins.
    fn codec(&self) -> &'static dyn Codec;
    /// Queues an encoded publication; false when the member is closing or just turned out too
    /// slow.
    fn deliver(&self, frame: &Bytes) -> bool;
}

/// Encodes publications for one client protocol. The fan-out calls it at most once per
/// publication and hands every member speaking that protocol the same bytes.
pub trait Codec: Send + Sync + Debug {
    /// Names the protocol (two codecs with the same name are the same codec).
    fn name(&self) -> &'static str;
    fn encode(&self, p: &Publication) -> Bytes;
}
