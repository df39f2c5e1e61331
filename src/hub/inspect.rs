//! What an operator may look at: this node's groups and their sizes, a group's members, and one
//! connection's state. Each call walks the shards under their read locks once; none of it is on
//! a delivery path.

use std::sync::{Arc, Weak};

use super::member::{Member, MemberStats};
use super::{Hub, read};

/// One member of a group, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    /// The client protocol it speaks (its codec's name).
    pub protocol: &'static str,
}

impl Hub {
    /// Every group with members on this node and how many, sorted by name.
    pub fn groups(&self) -> Vec<(Arc<str>, usize)> {
        let mut all: Vec<(Arc<str>, usize)> = self
            .shards
            .iter()
            .flat_map(|s| {
                read(s)
                    .iter()
                    .map(|(name, m)| (name.clone(), read(m).len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The members of `group` on this node, by id; `None` when the group has none here.
    pub fn group_members(&self, group: &str) -> Option<Vec<Listed>> {
        let g = self.find(group)?;
        let m = read(&g);
        let mut out: Vec<Listed> = m
            .lists
            .iter()
            .flat_map(|l| {
                l.members.iter().map(|x| Listed {
                    id: x.id(),
                    protocol: l.codec.name(),
                })
            })
            .collect();
        out.sort_by_key(|l| l.id);
        Some(out)
    }

    /// The groups connection `id` is a member of on this node, sorted.
    pub fn groups_of(&self, id: u64) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .shards
            .iter()
            .flat_map(|s| {
                read(s)
                    .iter()
                    .filter(|(_, m)| {
                        read(m)
                            .lists
                            .iter()
                            .any(|l| l.members.iter().any(|x| x.id() == id))
                    })
                    .map(|(name, _)| name.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Connection `id`'s queue and liveness, when it is registered on this node.
    pub fn connection_stats(&self, id: u64) -> Option<MemberStats> {
        let m: Arc<dyn Member> = read(self.connections_of(id))
            .get(&id)
            .and_then(Weak::upgrade)?;
        Some(m.stats())
    }

    /// Ids of every connection registered on this node, ascending.
    pub fn connection_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .connections
            .iter()
            .flat_map(|s| read(s).keys().copied().collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids
    }
}
