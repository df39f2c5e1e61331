//! One group's members on this node, kept in one list per client protocol so the fan-out
//! encodes each publication once per protocol and never asks a member which one it speaks; and
//! the rules a group name follows.

use std::collections::HashMap;
use std::sync::Arc;

use super::member::{Codec, Member};

/// The members speaking one protocol.
#[derive(Debug)]
pub(super) struct List {
    pub(super) codec: &'static dyn Codec,
    pub(super) members: Vec<Arc<dyn Member>>,
}

/// A group's members.
#[derive(Debug, Default)]
pub(super) struct Members {
    pub(super) lists: Vec<List>,
    /// Member id -> (list << 32) | position in that list.
    index: HashMap<u64, u64>,
}

impl Members {
    /// Adds a member; false when it already is one.
    pub(super) fn insert(&mut self, member: Arc<dyn Member>) -> bool {
        let id = member.id();
        if self.index.contains_key(&id) {
            return false;
        }
        let codec = member.codec();
        let li = match self
            .lists
            .iter()
            .position(|l| l.codec.name() == codec.name())
        {
            Some(i) => i,
            None => {
                self.lists.push(List {
                    codec,
                    members: Vec::new(),
                });
                self.lists.len() - 1
            }
        };
        let list = &mut self.lists[li].members;
        self.index
            .insert(id, ((li as u64) << 32) | list.len() as u64);
        list.push(member);
        true
    }

    /// Removes a member; false when it was none.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.index.remove(&id) else {
            return false;
        };
        let (li, pos) = ((at >> 32) as usize, (at & 0xffff_ffff) as usize);
        let list = &mut self.lists[li].members;
        list.swap_remove(pos);
        if let Some(moved) = list.get(pos).map(|m| m.id()) {
            self.index.insert(moved, ((li as u64) << 32) | pos as u64);
        }
        true
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }
}

/// Checks a group name (from a URL or the publish API); the error says what is wrong with it.
pub fn check_name(group: &str, max_bytes: usize) -> Result<(), String> {
    if group.is_empty() {
        return Err("the group name is empty".into());
    }
    if group.len() > max_bytes {
        return Err(format!(
            "the group name is {} bytes long; the limit is {max_bytes} (websocket.max_group_bytes)",
            group.len()
        ));
    }
    if group.chars().any(char::is_control) {
        return Err("the group name contains control characters".into());
    }
    Ok(())
}
