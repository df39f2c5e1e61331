//! `[hooks]` (how wsgate calls backends: timeouts, retries, signing, limits) and a hub route's
//! `hooks = { on_connect, on_message, on_disconnect }` (where it calls them).

use serde::Deserialize;

use super::duration::Duration;
use super::secret::Secret;
use super::validate::{Seg, keys};

/// What a client sees when the backend cannot be reached for `on_connect`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailure {
    /// Close the WebSocket with 1011 and a reason naming the backend (fail closed).
    Close,
    /// Let the client in as if there were no hook: the route's group, no user (fail open).
    Accept,
}

/// What a client sees when a forwarded message could not be delivered to the backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageFailure {
    /// Send the client an error message (`{"type":"error","code":502,...}`) and keep it open.
    Error,
    /// Close the WebSocket with 1011 and a reason.
    Close,
}

/// `[hooks]`: settings shared by every route's backend hooks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// Longest one hook request may take, connecting included. Default 5 s.
    pub timeout: Duration,
    /// How many times a failed hook request is tried again: after a refused connection or a
    /// 502/503/504 answer always, after a timeout only for `on_connect` and `on_disconnect` (a
    /// forwarded message that timed out may have been handled). Default 2.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one. Default 100 ms.
    pub retry_backoff: Duration,
    /// When set, every hook request carries `Wsgate-Signature: t=<unix seconds>,v1=<hex
    /// HMAC-SHA256 of "<t>.<body>">` so the backend can tell it came from wsgate. Default: unset.
    pub secret: Option<Secret>,
    /// Forwarded messages of one connection waiting for or at the backend; one more gets an
    /// error message (429) instead of queueing without bound. Default 16.
    pub max_in_flight: usize,
    /// Largest backend answer read, in bytes; a larger one counts as a failed call. Default
    /// 1048576 (1 MiB).
    pub max_response_bytes: usize,
    /// The backend is down at connect time: `"close"` (1011 with a reason) or `"accept"`.
    /// Default "close".
    pub on_connect_failure: ConnectFailure,
    /// A forwarded message could not reach the backend: `"error"` (an error message to the
    /// client) or `"close"` (1011). Default "error".
    pub on_message_failure: MessageFailure,
    /// Idle keep-alive connections to backends are closed after this. Default 60 s.
    pub pool_idle_timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            timeout: Duration::from_secs(5),
            retries: 2,
            retry_backoff: Duration::from_millis(100),
            secret: None,
            max_in_flight: 16,
            max_response_bytes: 1024 * 1024,
            on_connect_failure: ConnectFailure::Close,
            on_message_failure: MessageFailure::Error,
            pool_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Most retries a hook may make.
const MAX_RETRIES: u32 = 10;

impl Hooks {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        if self.timeout.is_zero() {
            report(
                keys(&["hooks", "timeout"]),
                "must be more than 0s, e.g. \"5s\"".into(),
            );
        }
        if self.retries > MAX_RETRIES {
            report(
                keys(&["hooks", "retries"]),
                format!(
                    "{} retries would hold a connecting client for too long; use 0 to {MAX_RETRIES}",
                    self.retries
                ),
            );
        }
        if self.max_in_flight == 0 {
            report(
                keys(&["hooks", "max_in_flight"]),
                "must be at least 1".into(),
            );
        }
        if self.max_response_bytes == 0 {
            report(
                keys(&["hooks", "max_response_bytes"]),
                "must be at least 1".into(),
            );
        }
        if self.secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            report(
                keys(&["hooks", "secret"]),
                "is empty; remove the key to send unsigned requests, or set a secret".into(),
            );
        }
    }
}

/// A hub route's `hooks = { on_connect = URL, on_message = URL, on_disconnect = URL }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteHooks {
    /// POSTed before a client is let in; the answer accepts or rejects it and may name its
    /// groups, user and info.
    pub on_connect: Option<String>,
    /// Where `on_message = "forward"` POSTs each client message.
    pub on_message: Option<String>,
    /// POSTed when a connection ends, with its close code.
    pub on_disconnect: Option<String>,
}

impl RouteHooks {
    /// The URLs set, with their key names.
    pub fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("on_connect", self.on_connect.as_deref()),
            ("on_message", self.on_message.as_deref()),
            ("on_disconnect", self.on_disconnect.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

/// What is wrong with a hook URL: wsgate calls backends over plain HTTP/1.1.
pub fn check_hook_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?} is not an http:// URL; hooks call the backend over plain HTTP, e.g. \"http://127.0.0.1:8000/ws/connect\""
        ));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!(
            "{url:?} has no host; e.g. \"http://127.0.0.1:8000/ws/connect\""
        ));
    }
    url.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("{url:?} is not a valid URL ({e})"))
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    #[test]
    fn hooks_keys_come_from_the_environment_too() {
        let env = vec![
            ("WSGATE_HOOKS__MAX_IN_FLIGHT".to_string(), "3".to_string()),
            ("WSGATE_HOOKS__TIMEOUT".to_string(), "250ms".to_string()),
            (
                "WSGATE_HOOKS__ON_CONNECT_FAILURE".to_string(),
                "accept".to_string(),
            ),
        ];
        let cfg = load_str("t.toml", "", &env).unwrap();
        assert_eq!(cfg.hooks.max_in_flight, 3);
        assert_eq!(cfg.hooks.timeout, super::Duration::from_millis(250));
        assert_eq!(cfg.hooks.on_connect_failure, super::ConnectFailure::Accept);
    }
}
