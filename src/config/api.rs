//! `[api]`: the HTTP publish API.

use serde::Deserialize;

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
    /// When set, publish requests need `Authorization: Bearer <token>`. Default: unset.
    pub token: Option<Secret>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            max_body_bytes: 1024 * 1024,
            max_groups_per_publish: 1000,
            token: None,
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
        if self.token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            report(
                keys(&["api", "token"]),
                "is empty; remove the key to turn auth off, or set a secret".into(),
            );
        }
    }
}
