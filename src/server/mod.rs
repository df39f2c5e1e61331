//! The listener and connections (HTTP/1.1 and HTTP/2): reading the first request head, handing
//! the connection to hyper, routing each request to a WebSocket route, the proxy, the API,
//! metrics or the demo page, admitting WebSockets, and draining everything on shutdown.
//!
//! This module does not know how groups are stored or how frames are parsed: it checks the
//! handshake with [`crate::ws::handshake`], then gives the upgraded connection to a
//! [`crate::ws::Session`].
//!
//! Files by job: [`listener`] accepts, [`cores`] runs a listener per worker thread, [`conn`] serves one connection (first head, fast path,
//! hyper), [`h2`] serves an HTTP/2 one, [`router`] decides what serves a path, [`admit`] admits a
//! WebSocket, [`shutdown`] drains, [`state`] holds what they share, [`route`] matches hub route
//! patterns, [`tls`] holds the certificates and reloads them.

pub mod admit;
pub mod conn;
pub mod cores;
mod h2;
mod head;
pub mod listener;
pub mod rate;
pub mod route;
pub mod router;
pub mod shutdown;
pub mod state;
pub mod tls;

pub use router::Target;
pub use state::{Parts, Server};
