//! The reverse proxy: proxy routes (`path_prefix` + `proxy_pass`), upstream server choice and
//! health, HTTP forwarding, and WebSocket upgrades with a frame-aware tunnel.
//!
//! This module does not know about the hub, the broker or the publish API: the server hands it
//! a request that matched a proxy route and gets a response back.

pub mod headers;
