//! wsgate: a WebSocket push hub in one binary.
//!
//! Where things live (one module per concept; each says what it must not know about):
//! [`config`] what the operator asked for; [`server`] listeners, HTTP, routing and admission;
//! [`ws`] the WebSocket protocol and sessions; [`hub`] groups and fan-out; [`broker`] publications
//! and reaching other nodes; [`api`] the publish endpoints; [`hooks`] backends told of
//! connects, messages and disconnects over HTTP; [`auth`] API keys and JSON Web Tokens;
//! [`web`] the embedded demo page; [`metrics`] counters and `/metrics`; [`admin`] the
//! operator's listener (admin API, console); [`proxy`] the reverse proxy; [`app`] wiring, start and
//! stop order; [`cli`] the command line; [`bench`] the load generator behind `wsgate bench`.
//! Leaves every module may use: [`access`] (access log lines), [`reply`] (HTTP bodies and replies), [`transport`] (the streams
//! sessions and tunnels run on), [`uri`] (path helpers), [`lifecycle`] (shutdown signal,
//! connection slots).

pub mod access;
pub mod admin;
pub mod any_cert;
pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod hooks;
pub mod hub;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod transport;
pub mod uri;
pub mod web;
pub mod ws;
