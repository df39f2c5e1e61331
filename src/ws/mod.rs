//! The WebSocket protocol: handshake checks, framing, close codes, and the per-connection session
//! with its send queue and heartbeats.
//!
//! This module does not know how groups are stored or how publications travel between nodes:
//! the session hands client messages to [`crate::hub::Hub`], receives encoded frames through its
//! [`Outbox`], and [`codec`] says how a publication looks on the wire for each client protocol.

pub mod close;
pub mod codec;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod heartbeat;
pub mod outbox;
pub mod relay;
pub mod session;
pub mod v1;

pub use close::{CloseCode, CloseReason};
pub use handshake::{HandshakeError, accept_key};
pub use heartbeat::{Beat, Entry, Heartbeat};
pub use outbox::Outbox;
pub use relay::{Extras, Relay};
pub use session::Session;
