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
    /// Member id -> flags (high 16 bits), list (next 16) and position in that list (low 32).
    index: HashMap<u64, u64>,
}

/// What a member's join added besides membership, undone when it leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Flags {
    /// Its presence entry was added.
    pub(super) presence: bool,
    /// Its join was announced (so its leave is too).
    pub(super) events: bool,
}

impl Flags {
    fn bits(self) -> u64 {
        (u64::from(self.presence) << 48) | (u64::from(self.events) << 49)
    }

    fn from_bits(at: u64) -> Self {
        Flags {
            presence: at & (1 << 48) != 0,
            events: at & (1 << 49) != 0,
        }
    }
}

fn slot(flags: Flags, list: usize, pos: usize) -> u64 {
    flags.bits() | ((list as u64) << 32) | pos as u64
}

impl Members {
    /// Adds a member speaking `codec`; false when it already is one.
    pub(super) fn insert(
        &mut self,
        member: Arc<dyn Member>,
        codec: &'static dyn Codec,
        flags: Flags,
    ) -> bool {
        let id = member.id();
        if self.index.contains_key(&id) {
            return false;
        }
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
        self.index.insert(id, slot(flags, li, list.len()));
        list.push(member);
        true
    }

    /// Removes a member; what its join added, or `None` when it was no member.
    pub(super) fn remove(&mut self, id: u64) -> Option<Flags> {
        let at = self.index.remove(&id)?;
        let (li, pos) = (((at >> 32) & 0xffff) as usize, (at & 0xffff_ffff) as usize);
        let list = &mut self.lists[li].members;
        list.swap_remove(pos);
        if let Some(moved) = list.get(pos).map(|m| m.id())
            && let Some(m) = self.index.get_mut(&moved)
        {
            *m = (*m & !0xffff_ffff) | pos as u64;
        }
        Some(Flags::from_bits(at))
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
    if let Some(c) = group.chars().find(|&c| c.is_control() || is_format(c)) {
        // The name itself is not echoed: the character is what would make it misleading.
        return Err(format!(
            "the group name holds U+{:04X}, a {} character, which group names may not hold (it could make one name look like another in answers and logs)",
            c as u32,
            if c.is_control() {
                "control"
            } else {
                "bidirectional or invisible formatting"
            }
        ));
    }
    Ok(())
}

/// Bidirectional overrides and marks, and invisible joiners and spaces (Trojan Source, CVE-2021-42574).
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn format_and_control_characters_are_refused_by_code_point() {
        let e = check_name("room:\u{202E}1", 255).unwrap_err();
        assert!(e.contains("U+202E"), "{e}");
        assert!(!e.contains("room:"), "the name is not echoed: {e}");
        assert!(check_name("a\nb", 255).unwrap_err().contains("U+000A"));
        assert!(check_name("a\u{200B}b", 255).is_err());
        assert!(check_name("room:café", 255).is_ok());
    }
}
