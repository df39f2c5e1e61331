//! `[hub]`: what the hub keeps for groups on this node (history's memory bound).

use serde::Deserialize;

use super::duration::Duration;
use super::validate::{Seg, keys};

/// `[hub]`: groups' history and its memory.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Hub {
    /// Memory all groups' history may take in this process, in bytes (each kept publication
    /// counts its payload plus 64 bytes). Past it, the groups published to least recently lose
    /// their history first (their epoch changes, so clients learn that it is gone). Default
    /// 67108864 (64 MiB).
    pub history_max_bytes: usize,
    /// How long a group's stream position (epoch and offset) is kept after its last publication
    /// once its history has expired: a client coming back within it with nothing missed still
    /// recovers. Default 24 h.
    pub history_meta_ttl: Duration,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            history_max_bytes: 64 * 1024 * 1024,
            history_meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl Hub {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        if self.history_max_bytes < 64 * 1024 {
            report(
                keys(&["hub", "history_max_bytes"]),
                format!(
                    "{} is too small to keep any history; use at least 65536",
                    self.history_max_bytes
                ),
            );
        }
        if self.history_meta_ttl.is_zero() {
            report(
                keys(&["hub", "history_meta_ttl"]),
                "must be more than 0s, e.g. \"24h\"".into(),
            );
        }
    }
}
