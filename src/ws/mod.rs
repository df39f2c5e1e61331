//! The WebSocket protocol: handshake checks, framing, close codes, and the per-connection session
//! with its send queue and heartbeats.
//!
//! This module does not know how groups are stored or where published messages come from: the
//! session hands client messages to [`crate::hub::Hub`] and receives encoded frames through its
//! [`Outbox`].

pub mod close;
pub mod frame;
pub mod handshake;
pub mod heartbeat;
pub mod outbox;
pub mod session;

pub use close::CloseCode;
pub use handshake::{HandshakeError, accept_key};
pub use heartbeat::Heartbeat;
pub use outbox::Outbox;
pub use session::Session;
