//! API keys (`Authorization: Bearer <key>`): several may be configured, each for every endpoint
//! (`api.tokens`, `api.token`) or for publishing only (`api.publish_tokens`). Keys are compared
//! as SHA-256 digests in constant time, every configured key each time, so neither the time
//! taken nor the length of a guess tells anything about a key.
//!
//! With no key configured the API answers loopback callers only: a fresh install is not an open
//! publish endpoint on the internet.

use std::net::IpAddr;

use ring::digest::{SHA256, digest};

use crate::config;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Publishing a message.
    Publish,
    /// Everything else: presence, history, disconnecting a connection.
    Admin,
}

/// Why a caller was refused; the message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no API key is configured, so the API answers only callers on this machine (loopback) and {0} is not one; set api.tokens = [\"<a long random key>\"] (or WSGATE_API__TOKENS) and send Authorization: Bearer <key>"
    )]
    NotLoopback(IpAddr),
    #[error("this API needs a key: send Authorization: Bearer <key>, a key from api.tokens")]
    Missing,
    #[error("the bearer key is not one of api.tokens (or api.publish_tokens); check the key sent")]
    Wrong,
    #[error(
        "this key may only publish (api.publish_tokens); presence, history and disconnect need a key from api.tokens"
    )]
    PublishOnly,
}

impl KeyError {
    /// 403 when knowing a key would not help or the key is known but not enough; 401 otherwise.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, KeyError::NotLoopback(_) | KeyError::PublishOnly)
    }
}

type Digest = [u8; 32];

fn hash(b: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

/// The configured keys, as digests.
#[derive(Clone)]
pub struct Keys {
    full: Vec<Digest>,
    publish: Vec<Digest>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("full", &self.full.len())
            .field("publish", &self.publish.len())
            .finish()
    }
}

impl Keys {
    pub fn new(api: &config::Api) -> Self {
        Keys {
            full: api
                .token
                .iter()
                .chain(&api.tokens)
                .map(|k| hash(k.expose().as_bytes()))
                .collect(),
            publish: api
                .publish_tokens
                .iter()
                .map(|k| hash(k.expose().as_bytes()))
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.publish.is_empty()
    }

    /// Checks a caller from `peer` with the `Authorization` field `authorization` for `need`.
    ///
    /// # Errors
    /// Why the caller may not; the message says what to do.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        peer: IpAddr,
        need: Access,
    ) -> Result<(), KeyError> {
        if self.is_empty() {
            return if is_loopback(peer) {
                Ok(())
            } else {
                Err(KeyError::NotLoopback(peer))
            };
        }
        let Some(given) = authorization.and_then(bearer) else {
            return Err(KeyError::Missing);
        };
        let given = hash(given);
        let full = matches_any(&self.full, &given);
        let publish = matches_any(&self.publish, &given);
        match (full, publish, need) {
            (true, _, _) | (false, true, Access::Publish) => Ok(()),
            (false, true, Access::Admin) => Err(KeyError::PublishOnly),
            (false, false, _) => Err(KeyError::Wrong),
        }
    }
}

/// The key of `Bearer <key>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares against every key, without stopping at the first match.
fn matches_any(keys: &[Digest], given: &Digest) -> bool {
    let mut found = 0u8;
    for k in keys {
        let diff = k.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= u8::from(diff == 0);
    }
    found == 1
}

/// IPv4 and IPv6 loopback, and IPv4 loopback mapped into IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(full: &[&str], publish: &[&str]) -> Keys {
        Keys::new(&config::Api {
            tokens: full.iter().map(|k| Secret::new(*k)).collect(),
            publish_tokens: publish.iter().map(|k| Secret::new(*k)).collect(),
            ..Default::default()
        })
    }

    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn without_keys_only_loopback_callers_pass() {
        let k = keys(&[], &[]);
        assert_eq!(k.check(None, LOCAL, Access::Admin), Ok(()));
        assert_eq!(k.check(None, "::1".parse().unwrap(), Access::Admin), Ok(()));
        assert_eq!(
            k.check(None, "::ffff:127.0.0.1".parse().unwrap(), Access::Admin),
            Ok(())
        );
        let e = k
            .check(Some(b"Bearer x"), REMOTE, Access::Publish)
            .unwrap_err();
        assert!(e.is_forbidden());
        assert!(e.to_string().contains("api.tokens"), "{e}");
        assert!(e.to_string().contains("203.0.113.9"), "{e}");
    }

    #[test]
    fn any_configured_key_passes_and_others_do_not() {
        let k = keys(&["first-key", "second-key"], &["pub-key"]);
        for (auth, need, want) in [
            (&b"Bearer first-key"[..], Access::Admin, Ok(())),
            (b"bearer second-key", Access::Admin, Ok(())),
            (b"BEARER  second-key ", Access::Publish, Ok(())),
            (b"Bearer pub-key", Access::Publish, Ok(())),
            (b"Bearer pub-key", Access::Admin, Err(KeyError::PublishOnly)),
            (b"Bearer first-ke", Access::Publish, Err(KeyError::Wrong)),
            (b"Bearer first-keyX", Access::Publish, Err(KeyError::Wrong)),
            (
                b"Basic Zmlyc3Qta2V5",
                Access::Publish,
                Err(KeyError::Missing),
            ),
            (b"Bearer", Access::Publish, Err(KeyError::Missing)),
        ] {
            assert_eq!(
                k.check(Some(auth), REMOTE, need),
                want,
                "{}",
                String::from_utf8_lossy(auth)
            );
        }
        assert_eq!(
            k.check(None, LOCAL, Access::Publish),
            Err(KeyError::Missing),
            "with keys configured loopback needs one too"
        );
    }
}
