//! `[broker]`: where publications travel between nodes and groups' streams are kept.

use serde::Deserialize;

/// `[broker]`: where groups' publications travel and their streams are kept.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Broker {
    /// "memory" (default): this process is the whole cluster; nothing leaves it.
    pub kind: BrokerKind,
}

/// `broker.kind`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    #[default]
    Memory,
}
