//! wsgate: a WebSocket push hub in one binary.
//!
//! Where things live (one module per concept; each says what it must not know about):
//! [`config`] what the operator asked for; [`server`] listeners, HTTP and routing;
//! [`ws`] the WebSocket protocol and sessions; [`hub`] groups and fan-out; [`broker`] reaching
//! other nodes; [`api`] the publish endpoints; [`web`] the embedded demo page; [`metrics`]
//! counters and `/metrics`; [`proxy`] the reverse proxy; [`app`] start and stop order;
//! [`cli`] the command line; [`bench`] the load generator behind `wsgate bench`.

pub mod api;
pub mod app;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod hub;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod web;
pub mod ws;
