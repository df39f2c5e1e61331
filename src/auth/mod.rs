//! Who may do what: API keys for the publish and admin endpoints ([`keys`]) and JSON Web
//! Tokens for hub routes ([`jwt`]). Pure checks over bytes and headers: this module knows
//! nothing about connections, groups or frames; the server and the API ask it and act on the
//! answer.

pub mod jwt;
pub mod keys;

pub use jwt::{Claims, Grant, Jwt, JwtError};
pub use keys::{Access, KeyError, Keys};
