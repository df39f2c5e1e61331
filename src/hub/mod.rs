//! Groups and their members on this node, and local fan-out.
//!
//! A publish goes through the broker ([`Hub::publish`] -> [`Broker::publish`]), which gives it
//! its position and hands it to every node's hub as a [`Handler`]; the hub then delivers it to
//! the group's local members ([`fanout`]), encoded once per client protocol. The hub knows
//! nothing of HTTP, sockets or frames: members are anything that implements [`Member`], and
//! their [`Codec`] does the encoding.
//!
//! # Slow consumers
//! Delivery never blocks. Each member has a bounded queue; when a member cannot take a message
//! (its queue passed its byte limit) it is closed with 1013 "slow consumer" by its own session,
//! the message is not counted as delivered to it, and every other member still gets it.

mod fanout;
pub mod group;
pub mod member;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, Weak};

use crate::broker::{Broker, Handler, Published, publication::Publication};
use crate::metrics::METRICS;
use group::Members;
pub use member::{Codec, Member};

type Shard = RwLock<HashMap<Arc<str>, Arc<RwLock<Members>>>>;

/// All groups of this node.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
    node: u64,
}

const SHARDS: usize = 64;

impl Hub {
    /// A hub whose publications go through `broker`, which delivers them back to it.
    pub fn new(broker: Arc<dyn Broker>) -> Arc<Self> {
        let hub = Arc::new(Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            node: broker.node(),
            broker,
        });
        let handler: Weak<dyn Handler> = Arc::downgrade(&hub) as Weak<dyn Handler>;
        hub.broker.set_handler(handler);
        hub
    }

    fn shard(&self, group: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(group) as usize) % SHARDS]
    }

    fn find(&self, group: &str) -> Option<Arc<RwLock<Members>>> {
        read(self.shard(group)).get(group).cloned()
    }

    /// Adds a member to a group, creating the group on first use. Returns whether it is the
    /// group's first member on this node (the broker is then told to subscribe).
    pub fn join(&self, group: &str, member: Arc<dyn Member>) -> bool {
        let g = {
            let mut shard = write(self.shard(group));
            shard.entry(Arc::from(group)).or_default().clone()
        };
        let mut m = write(&g);
        let first = m.insert(member) && m.len() == 1;
        if first {
            // Under the group's lock, so subscribe and unsubscribe reach the broker in the
            // order membership changed.
            self.broker.subscribe(group);
        }
        first
    }

    /// Removes a member; the group disappears with its last member. Returns whether that was
    /// the group's last member on this node (the broker is then told to unsubscribe).
    pub fn leave(&self, group: &str, id: u64) -> bool {
        let shard = self.shard(group);
        let Some(g) = self.find(group) else {
            return false;
        };
        let last = {
            let mut m = write(&g);
            let last = m.remove(id) && m.len() == 0;
            if last {
                self.broker.unsubscribe(group);
            }
            last
        };
        if last {
            let mut s = write(shard);
            // Re-check under the shard lock: someone may have joined meanwhile.
            if s.get(group).is_some_and(|g| read(g).len() == 0) {
                s.remove(group);
            }
        }
        last
    }

    /// Publishes to every member of the group, on every node, through the broker. Publishing to
    /// a group with no members is not an error: the receipt says 0 local recipients.
    pub fn publish(&self, mut p: Publication) -> Published {
        METRICS.publishes.inc();
        p.origin = self.node;
        self.broker.publish(p)
    }

    /// Members of a group on this node.
    pub fn member_count(&self, group: &str) -> usize {
        self.find(group).map_or(0, |g| read(&g).len())
    }

    /// Groups with at least one member on this node.
    pub fn group_count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

impl Handler for Hub {
    /// Delivers to this node's members; the broker calls it for every publication, this node's
    /// own included. Usually this is not what a publisher wants: see [`Hub::publish`].
    fn handle(&self, p: &Publication) -> usize {
        let Some(g) = self.find(&p.group) else {
            return 0;
        };
        let m = read(&g);
        let except = p.sender.filter(|_| p.origin == self.node);
        let n = fanout::deliver(&m, p, except);
        METRICS.deliveries.add(n as u64);
        n
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
    use crate::broker::memory::Memory;
    use crate::broker::{Kind, Receipt};
    use bytes::Bytes;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A codec that counts its encodings and tags the bytes with its name.
    #[derive(Debug)]
    struct Tagged(&'static str, AtomicUsize);

    impl Codec for Tagged {
        fn name(&self) -> &'static str {
            self.0
        }
        fn encode(&self, p: &Publication) -> Bytes {
            self.1.fetch_add(1, Ordering::Relaxed);
            Bytes::from([self.0.as_bytes(), b":", &p.data].concat())
        }
    }

    /// A codec of this test's own (tests run in parallel; each counts its own encodings).
    fn codec(name: &'static str) -> &'static Tagged {
        Box::leak(Box::new(Tagged(name, AtomicUsize::new(0))))
    }

    fn encodings(c: &Tagged) -> usize {
        c.1.load(Ordering::Relaxed)
    }

    #[derive(Debug)]
    struct Probe {
        id: u64,
        codec: &'static Tagged,
        got: Mutex<Vec<Bytes>>,
        accept: bool,
    }

    impl Member for Probe {
        fn id(&self) -> u64 {
            self.id
        }
        fn codec(&self) -> &'static dyn Codec {
            self.codec
        }
        fn deliver(&self, m: &Bytes) -> bool {
            self.got.lock().unwrap().push(m.clone());
            self.accept
        }
    }

    fn probe_with(id: u64, accept: bool, codec: &'static Tagged) -> Arc<Probe> {
        Arc::new(Probe {
            id,
            codec,
            got: Mutex::default(),
            accept,
        })
    }

    fn probe(id: u64, accept: bool) -> Arc<Probe> {
        probe_with(id, accept, codec("a"))
    }

    /// A broker that counts what goes through it and what it was told, around a real one.
    #[derive(Debug, Default)]
    struct Counting {
        inner: Memory,
        published: AtomicUsize,
        calls: Mutex<Vec<String>>,
    }

    impl Broker for Counting {
        fn node(&self) -> u64 {
            7
        }
        fn set_handler(&self, h: Weak<dyn Handler>) {
            self.inner.set_handler(h)
        }
        fn publish(&self, p: Publication) -> Published {
            self.published.fetch_add(1, Ordering::Relaxed);
            assert_eq!(p.origin, 7, "the hub stamps its node");
            self.inner.publish(p)
        }
        fn subscribe(&self, g: &str) {
            self.calls.lock().unwrap().push(format!("+{g}"));
        }
        fn unsubscribe(&self, g: &str) {
            self.calls.lock().unwrap().push(format!("-{g}"));
        }
    }

    fn hub() -> Arc<Hub> {
        Hub::new(Arc::new(Memory::new()))
    }

    fn text(group: &str, s: &'static str) -> Publication {
        Publication::new(group, Bytes::from_static(s.as_bytes()), Kind::Text)
    }

    fn recipients(h: &Hub, p: Publication) -> usize {
        h.publish(p)
            .now()
            .expect("memory is immediate")
            .unwrap()
            .local_recipients
    }

    #[test]
    fn publish_reaches_members_of_that_group_only_encoded_once() {
        let h = hub();
        let a_codec = codec("a");
        let (a, b) = (probe_with(1, true, a_codec), probe_with(2, true, a_codec));
        let c = probe(3, true);
        h.join("room:1", a.clone());
        h.join("room:1", b.clone());
        h.join("room:2", c.clone());
        assert_eq!(recipients(&h, text("room:1", "hello")), 2);
        assert_eq!(encodings(a_codec), 1, "one encoding");
        assert_eq!(a.got.lock().unwrap()[0], Bytes::from_static(b"a:hello"));
        assert_eq!(c.got.lock().unwrap().len(), 0);
        // The very same allocation went to both members.
        assert_eq!(
            a.got.lock().unwrap()[0].as_ptr(),
            b.got.lock().unwrap()[0].as_ptr()
        );
    }

    #[test]
    fn each_protocol_present_gets_one_encoding_and_absent_ones_none() {
        let h = hub();
        let (ca, cb) = (codec("a"), codec("b"));
        let (a1, a2, b1) = (
            probe_with(1, true, ca),
            probe_with(2, true, ca),
            probe_with(3, true, cb),
        );
        h.join("g", a1.clone());
        h.join("g", a2.clone());
        h.join("g", b1.clone());
        assert_eq!(recipients(&h, text("g", "x")), 3);
        assert_eq!((encodings(ca), encodings(cb)), (1, 1));
        assert_eq!(b1.got.lock().unwrap()[0], Bytes::from_static(b"b:x"));
        h.leave("g", 3);
        assert_eq!(recipients(&h, text("g", "y")), 2);
        assert_eq!(encodings(cb), 1, "no member of b: not encoded");
    }

    #[test]
    fn the_sender_is_skipped_on_its_own_node_and_refusals_are_not_counted() {
        let h = hub();
        h.join("g", probe(1, true));
        h.join("g", probe(2, false));
        h.join("g", probe(3, true));
        assert_eq!(recipients(&h, text("g", "x").except(1)), 1);
        assert_eq!(recipients(&h, text("empty", "x")), 0);
        // From another node, connection 1 there is not connection 1 here.
        let mut other = text("g", "x").except(1);
        other.origin = 99;
        assert_eq!(h.handle(&other), 2);
    }

    #[test]
    fn every_publish_goes_through_the_broker_once_and_is_delivered_once() {
        let broker = Arc::new(Counting::default());
        let h = Hub::new(broker.clone());
        let a = probe(1, true);
        h.join("g", a.clone());
        let r = h.publish(text("g", "once")).now().unwrap().unwrap();
        assert_eq!(
            r,
            Receipt {
                position: None,
                local_recipients: 1
            }
        );
        assert_eq!(broker.published.load(Ordering::Relaxed), 1);
        assert_eq!(a.got.lock().unwrap().len(), 1, "not delivered twice");
    }

    #[test]
    fn join_and_leave_say_first_and_last_and_drive_subscriptions() {
        let broker = Arc::new(Counting::default());
        let h = Hub::new(broker.clone());
        assert!(h.join("g", probe(1, true)), "first");
        assert!(!h.join("g", probe(2, true)));
        assert!(!h.join("g", probe(2, true)), "already a member");
        assert!(!h.leave("g", 1));
        assert!(!h.leave("g", 42), "never a member");
        assert!(h.leave("g", 2), "last");
        assert!(!h.leave("g", 2), "gone already");
        assert!(h.join("g", probe(3, true)), "first again");
        assert_eq!(*broker.calls.lock().unwrap(), vec!["+g", "-g", "+g"]);
    }

    #[test]
    fn leaving_keeps_the_index_consistent_and_drops_empty_groups() {
        let h = hub();
        for id in 1..=5 {
            h.join("g", probe(id, true));
        }
        h.join("g", probe_with(6, true, codec("b")));
        h.leave("g", 2);
        h.leave("g", 5);
        h.leave("g", 42);
        assert_eq!(h.member_count("g"), 4);
        assert_eq!(recipients(&h, text("g", "x")), 4);
        for id in [1, 3, 4, 6] {
            h.leave("g", id);
        }
        assert_eq!(h.group_count(), 0);
    }
}
