//! `[api]`: the HTTP publish API.

use serde::Deserialize;

use super::duration::Duration;
use super::secret::Secret;
use super::validate::{Seg, keys};

/// `[api]`: the HTTP publish API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Largest publish request body in bytes; larger gets 413. Default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// Most groups one `POST /api/publish` may name in `"groups"`; more gets 400. Default 1000.
    pub max_groups_per_publish: usize,
    /// A key every API endpoint takes as `Authorization: Bearer <key>` (the same as one entry
    /// of `tokens`). Default: unset.
    pub token: Option<Secret>,
    /// Keys for every API endpoint (publish, presence, history, disconnect); any one of them
    /// passes, so keys can be rotated one at a time. Default: none.
    pub tokens: Vec<Secret>,
    /// Keys that may only publish. Default: none.
    ///
    /// With no key at all configured the API answers loopback callers only (others get 403).
    pub publish_tokens: Vec<Secret>,
    /// Time a request body has to arrive in full; a body trickled slower gets 408 and the
    /// connection is closed (slowloris). Default 10 s.
    pub body_timeout: Duration,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            max_body_bytes: 1024 * 1024,
            max_groups_per_publish: 1000,
            token: None,
            tokens: Vec::new(),
            publish_tokens: Vec::new(),
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl Api {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        if self.max_body_bytes == 0 {
            report(
                keys(&["api", "max_body_bytes"]),
                "must be at least 1".into(),
            );
        }
        if self.max_groups_per_publish == 0 {
            report(
                keys(&["api", "max_groups_per_publish"]),
                "must be at least 1".into(),
            );
        }
        if self.body_timeout.get() < std::time::Duration::from_millis(100)
            || self.body_timeout.get() > std::time::Duration::from_secs(3600)
        {
            report(
                keys(&["api", "body_timeout"]),
                format!(
                    "{} is out of range; use 100ms to 1h (default \"10s\")",
                    self.body_timeout
                ),
            );
        }
        if let Some(t) = &self.token {
            check_key(t, keys(&["api", "token"]), report);
        }
        for (name, list) in [
            ("tokens", &self.tokens),
            ("publish_tokens", &self.publish_tokens),
        ] {
            for (i, t) in list.iter().enumerate() {
                check_key(
                    t,
                    vec![Seg::Key("api".into()), Seg::Key(name.into()), Seg::Index(i)],
                    report,
                );
            }
        }
        if self.max_body_bytes > MAX_BODY_BYTES {
            report(
                keys(&["api", "max_body_bytes"]),
                format!(
                    "{} is out of range; use 1 to {MAX_BODY_BYTES} (1 GiB); the default is 1048576",
                    self.max_body_bytes
                ),
            );
        }
        if self.max_groups_per_publish > 100_000 {
            report(
                keys(&["api", "max_groups_per_publish"]),
                format!(
                    "{} is out of range; use 1 to 100000 (default 1000)",
                    self.max_groups_per_publish
                ),
            );
        }
    }
}

/// Largest `api.max_body_bytes` accepted.
const MAX_BODY_BYTES: usize = 1 << 30;

/// A key nobody could send (blank, or with a line break or space inside) locks everyone out.
fn check_key(key: &Secret, at: Vec<Seg>, report: &mut impl FnMut(Vec<Seg>, String)) {
    let k = key.expose();
    if k.trim().is_empty() {
        report(
            at,
            "is blank; remove it to turn the key off, or set a long random key".into(),
        );
    } else if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        report(
            at,
            "holds whitespace or a control character, which no Authorization header can carry; use a key of visible characters (e.g. openssl rand -hex 32)".into(),
        );
    }
}
