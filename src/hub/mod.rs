//! Groups and their members, and local fan-out.
//!
//! A publish is encoded once by the caller into a `Bytes` frame; the hub hands a reference-counted
//! clone of it to every member of the group, so 10,000 recipients cost 10,000 pointer copies, not
//! 10,000 encodings. The hub knows nothing of HTTP, sockets or frames: members are anything that
//! implements [`Member`].
//!
//! # Slow consumers
//! Delivery never blocks. Each member has a bounded queue; when a member cannot take a message
//! (its queue passed its byte limit) it is closed with 1013 "slow consumer" by its own session,
//! the message is not counted as delivered to it, and every other member still gets it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::broker::Broker;
use crate::metrics::METRICS;

/// Something that can receive published messages.
pub trait Member: Send + Sync + Debug {
    /// Unique for the life of the process.
    fn id(&self) -> u64;
    /// Queues a message; false when the member is closing or just turned out too slow.
    fn deliver(&self, message: &Bytes) -> bool;
}

#[derive(Debug, Default)]
struct Members {
    list: Vec<Arc<dyn Member>>,
    index: HashMap<u64, usize>,
}

type Shard = RwLock<HashMap<Arc<str>, Arc<RwLock<Members>>>>;

/// All groups of this node.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
}

const SHARDS: usize = 64;

impl Hub {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            broker,
        }
    }

    fn shard(&self, group: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(group) as usize) % SHARDS]
    }

    fn find(&self, group: &str) -> Option<Arc<RwLock<Members>>> {
        read(self.shard(group)).get(group).cloned()
    }

    /// Adds a member to a group, creating the group on first use.
    pub fn join(&self, group: &str, member: Arc<dyn Member>) {
        let g = {
            let mut shard = write(self.shard(group));
            shard.entry(Arc::from(group)).or_default().clone()
        };
        let mut m = write(&g);
        let id = member.id();
        if m.index.contains_key(&id) {
            return;
        }
        let pos = m.list.len();
        m.index.insert(id, pos);
        m.list.push(member);
    }

    /// Removes a member; the group disappears with its last member.
    pub fn leave(&self, group: &str, id: u64) {
        let shard = self.shard(group);
        let Some(g) = self.find(group) else { return };
        let now_empty = {
            let mut m = write(&g);
            if let Some(pos) = m.index.remove(&id) {
                m.list.swap_remove(pos);
                if let Some(moved) = m.list.get(pos).map(|x| x.id()) {
                    m.index.insert(moved, pos);
                }
            }
            m.list.is_empty()
        };
        if now_empty {
            let mut s = write(shard);
            // Re-check under the shard lock: someone may have joined meanwhile.
            if s.get(group).is_some_and(|g| read(g).list.is_empty()) {
                s.remove(group);
            }
        }
    }

    /// Delivers an encoded message to every local member of `group` (but `except`, if given) and
    /// forwards it to other nodes through the broker. Returns the number of local members that
    /// took it. Publishing to a group with no members is not an error: it returns 0.
    pub fn publish(&self, group: &str, message: &Bytes, except: Option<u64>) -> usize {
        METRICS.publishes.inc();
        self.broker.publish(group, message);
        self.deliver_local(group, message, except)
    }

    /// Delivers to local members only (the broker calls this for messages from other nodes).
    pub fn deliver_local(&self, group: &str, message: &Bytes, except: Option<u64>) -> usize {
        let Some(g) = self.find(group) else { return 0 };
        let m = read(&g);
        // Without `except` no member's id is read: that is a dynamic call and a cache miss per
        // member, a measurable share of a 10,000-member fan-out.
        let n = match except {
            None => m.list.iter().filter(|mb| mb.deliver(message)).count(),
            Some(ex) => m
                .list
                .iter()
                .filter(|mb| mb.id() != ex && mb.deliver(message))
                .count(),
        };
        METRICS.deliveries.add(n as u64);
        n
    }

    /// Members of a group on this node.
    pub fn member_count(&self, group: &str) -> usize {
        self.find(group).map_or(0, |g| read(&g).list.len())
    }

    /// Groups with at least one member on this node.
    pub fn group_count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

// The hub's locks guard plain collections updated in single steps, so a panic elsewhere cannot
// leave them half-changed: a poisoned lock is still safe to use.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Probe {
        id: u64,
        got: Mutex<Vec<Bytes>>,
        accept: bool,
    }

    impl Member for Probe {
        fn id(&self) -> u64 {
            self.id
        }
        fn deliver(&self, m: &Bytes) -> bool {
            self.got.lock().unwrap().push(m.clone());
            self.accept
        }
    }

    fn probe(id: u64, accept: bool) -> Arc<Probe> {
        Arc::new(Probe {
            id,
            got: Mutex::default(),
            accept,
        })
    }

    fn hub() -> Hub {
        Hub::new(Arc::new(crate::broker::Memory))
    }

    #[test]
    fn publish_reaches_members_of_that_group_only() {
        let h = hub();
        let (a, b, c) = (probe(1, true), probe(2, true), probe(3, true));
        h.join("room:1", a.clone());
        h.join("room:1", b.clone());
        h.join("room:2", c.clone());
        let msg = Bytes::from_static(b"hello");
        assert_eq!(h.publish("room:1", &msg, None), 2);
        assert_eq!(a.got.lock().unwrap().len(), 1);
        assert_eq!(c.got.lock().unwrap().len(), 0);
        // The very same allocation went to both members: encoded once.
        assert_eq!(
            a.got.lock().unwrap()[0].as_ptr(),
            b.got.lock().unwrap()[0].as_ptr()
        );
    }

    #[test]
    fn except_skips_the_sender_and_refusals_are_not_counted() {
        let h = hub();
        h.join("g", probe(1, true));
        h.join("g", probe(2, false));
        h.join("g", probe(3, true));
        assert_eq!(h.publish("g", &Bytes::from_static(b"x"), Some(1)), 1);
        assert_eq!(h.publish("empty", &Bytes::from_static(b"x"), None), 0);
    }

    #[test]
    fn leaving_keeps_the_index_consistent_and_drops_empty_groups() {
        let h = hub();
        for id in 1..=5 {
            h.join("g", probe(id, true));
        }
        h.leave("g", 2);
        h.leave("g", 5);
        h.leave("g", 42);
        assert_eq!(h.member_count("g"), 3);
        for id in [1, 3, 4] {
            h.leave("g", id);
        }
        assert_eq!(h.group_count(), 0);
    }
}
