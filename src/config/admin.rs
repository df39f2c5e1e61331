//! `[admin]`: the operator's listener (admin API, live console, health and readiness).

use serde::Deserialize;

use super::addr::parse_listen;
use super::secret::Secret;
use super::validate::{Seg, keys};

/// `[admin]`: the operator's listener.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin listener, e.g. `"127.0.0.1:9090"`. Default: empty, no admin
    /// listener (two wsgates on one host must not fight over a fixed port). A non-loopback
    /// address needs `api_key`.
    pub listen: String,
    /// When set, admin requests need `Authorization: Bearer <api_key>` (`/healthz`, `/readyz`
    /// and the console page itself excepted). Required when `listen` is not loopback.
    pub api_key: Option<Secret>,
}

impl Admin {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        if self.api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
            report(
                keys(&["admin", "api_key"]),
                "is empty; remove the key (loopback only) or set a secret".into(),
            );
        }
        if self.listen.is_empty() {
            return;
        }
        match parse_listen(&self.listen) {
            Err(m) => report(keys(&["admin", "listen"]), m),
            Ok(addr) if !addr.ip().is_loopback() && self.api_key.is_none() => report(
                keys(&["admin", "listen"]),
                format!(
                    "{addr} is reachable from other hosts, so the admin API needs a key: set admin.api_key \
(clients send Authorization: Bearer <key>), or listen on 127.0.0.1"
                ),
            ),
            Ok(_) => {}
        }
    }
}
