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
pub mod inspect;
pub mod member;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;

use crate::broker::{
    Attach, BoxFuture, Broker, Error, Handler, HistoryQuery, Kind, Position, PresenceEntry,
    Published, Recovery, publication::Publication,
};
use crate::metrics::METRICS;
use group::{Flags, Members};
pub use member::{Codec, Member, MemberStats};

type Shard = RwLock<HashMap<Arc<str>, Arc<RwLock<Members>>>>;
/// Connections by id, one shard of them.
type Registry = RwLock<HashMap<u64, Weak<dyn Member>>>;

/// All groups of this node, and every connection that can be a member (by id).
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    connections: Box<[Registry]>,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
    node: u64,
}

const SHARDS: usize = 64;

/// How a member joins a group.
#[derive(Debug, Clone)]
pub struct Join {
    /// How the group's publications are encoded for it.
    pub codec: &'static dyn Codec,
    /// Its presence entry (user, info), when the group keeps presence.
    pub presence: Option<Presence>,
    /// Announce its join and leave to members that asked for such events.
    pub events: bool,
}

impl Join {
    /// A member speaking `codec`, with no presence.
    pub fn plain(codec: &'static dyn Codec) -> Self {
        Join {
            codec,
            presence: None,
            events: false,
        }
    }
}

/// What presence shows of a member besides its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    pub user: Option<Arc<str>>,
    /// JSON text the client gave about itself.
    pub info: Option<Arc<str>>,
}

/// Builds the first frame a member gets when it attaches (a protocol's reply saying whether the
/// recovery worked), before any replayed publication.
pub type FirstFrame = Box<dyn FnOnce(&Recovery, Option<&Position>) -> Option<Bytes> + Send>;

impl Hub {
    /// A hub whose publications go through `broker`, which delivers them back to it.
    pub fn new(broker: Arc<dyn Broker>) -> Arc<Self> {
        let hub = Arc::new(Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            connections: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            node: broker.node(),
            broker,
        });
        let handler: Weak<dyn Handler> = Arc::downgrade(&hub) as Weak<dyn Handler>;
        hub.broker.set_handler(handler);
        hub
    }

    /// The broker publications go through.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// This node's id (the first part of connection ids clients see).
    pub fn node(&self) -> u64 {
        self.node
    }

    fn connections_of(&self, id: u64) -> &Registry {
        &self.connections[(id as usize) % SHARDS]
    }

    /// Makes a connection reachable by its id (see [`Hub::disconnect`]) until it unregisters.
    pub fn register(&self, member: &Arc<dyn Member>) {
        write(self.connections_of(member.id())).insert(member.id(), Arc::downgrade(member));
    }

    pub fn unregister(&self, id: u64) {
        write(self.connections_of(id)).remove(&id);
    }

    /// Closes connection `id` of this node with `code` and `reason`; false when there is none.
    pub fn disconnect(&self, id: u64, code: u16, reason: &str) -> bool {
        let m = read(self.connections_of(id))
            .get(&id)
            .and_then(Weak::upgrade);
        m.map(|m| m.disconnect(code, reason)).is_some()
    }

    /// Sends a message to connection `id` of this node alone: `None` when there is no such
    /// connection, else whether it took the message (it does not while closing or when its
    /// queue is full).
    pub fn send_to(&self, id: u64, data: &[u8], kind: Kind) -> Option<bool> {
        let m = read(self.connections_of(id))
            .get(&id)
            .and_then(Weak::upgrade)?;
        Some(m.send(data, kind))
    }

    /// Connections registered on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.iter().map(|s| read(s).len()).sum()
    }

    fn shard(&self, group: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(group) as usize) % SHARDS]
    }

    fn find(&self, group: &str) -> Option<Arc<RwLock<Members>>> {
        read(self.shard(group)).get(group).cloned()
    }

    /// Adds a member to a group, creating the group on first use. Returns whether it is the
    /// group's first member on this node (the broker is then told to subscribe).
    pub fn join(&self, group: &str, member: Arc<dyn Member>, how: Join) -> bool {
        let id = member.id();
        let g = {
            let mut shard = write(self.shard(group));
            shard.entry(Arc::from(group)).or_default().clone()
        };
        let flags = Flags {
            presence: how.presence.is_some(),
            events: how.events && how.presence.is_some(),
        };
        let (added, first) = {
            let mut m = write(&g);
            let added = m.insert(member, how.codec, flags);
            let first = added && m.len() == 1;
            if first {
                // Under the group's lock, so subscribe and unsubscribe reach the broker in the
                // order membership changed.
                self.broker.subscribe(group);
            }
            (added, first)
        };
        if added && let Some(p) = how.presence {
            let entry = PresenceEntry {
                node: self.node,
                conn: id,
                user: p.user,
                info: p.info,
            };
            if flags.events {
                self.announce(group, Kind::Join, &entry);
            }
            self.broker.presence_add(group, entry);
        }
        first
    }

    /// Joins `member` to `group` at the seam between the group's history and its live
    /// publications: `first` (a reply), then what `q` asks of the history, then every later
    /// publication, with no gap and no duplicate. A replay that would not fit the member's
    /// queue keeps its newest publications; a recovery that would not fit is reported as lost.
    pub fn attach(
        self: &Arc<Self>,
        group: &str,
        member: Arc<dyn Member>,
        how: Join,
        q: HistoryQuery,
        first: Option<FirstFrame>,
    ) -> BoxFuture<Result<(), Error>> {
        let hub = self.clone();
        let g: Arc<str> = Arc::from(group);
        let attach: Attach = Box::new(move |replay| {
            let mut frames: Vec<Bytes> = replay
                .publications
                .iter()
                .filter_map(|p| how.codec.encode(p))
                .collect();
            let mut recovery = replay.recovery.clone();
            let budget = member.budget();
            let total: usize = frames.iter().map(Bytes::len).sum();
            if total > budget {
                if recovery == Recovery::Recovered {
                    frames.clear();
                    recovery = Recovery::Lost(format!(
                        "the missed publications take {total} bytes, more than this connection may queue at once ({budget}; websocket.send_queue_bytes / 2)"
                    ));
                } else {
                    let mut sum = 0;
                    let keep = frames
                        .iter()
                        .rev()
                        .take_while(|f| {
                            sum += f.len();
                            sum <= budget
                        })
                        .count();
                    frames.drain(..frames.len() - keep);
                }
            }
            match &recovery {
                Recovery::Recovered => METRICS.recoveries.inc(),
                Recovery::Lost(_) => METRICS.recoveries_failed.inc(),
                Recovery::NotAsked => {}
            }
            if let Some(first) = first.and_then(|f| f(&recovery, replay.top.as_ref())) {
                member.deliver(&first);
            }
            METRICS.replayed.add(frames.len() as u64);
            for f in &frames {
                member.deliver(f);
            }
            hub.join(&g, member, how);
        });
        self.broker.attach(group, q, attach)
    }

    /// Removes a member; the group disappears with its last member. Returns whether that was
    /// the group's last member on this node (the broker is then told to unsubscribe).
    pub fn leave(&self, group: &str, id: u64) -> bool {
        let shard = self.shard(group);
        let Some(g) = self.find(group) else {
            return false;
        };
        let (flags, last) = {
            let mut m = write(&g);
            let flags = m.remove(id);
            let last = flags.is_some() && m.len() == 0;
            if last {
                self.broker.unsubscribe(group);
            }
            (flags, last)
        };
        if let Some(f) = flags
            && f.presence
        {
            self.broker.presence_remove(group, id);
            if f.events {
                let entry = PresenceEntry {
                    node: self.node,
                    conn: id,
                    user: None,
                    info: None,
                };
                self.announce(group, Kind::Leave, &entry);
            }
        }
        if last {
            let mut s = write(shard);
            // Re-check under the shard lock: someone may have joined meanwhile.
            if s.get(group).is_some_and(|g| read(g).len() == 0) {
                s.remove(group);
            }
        }
        last
    }

    /// Tells the group's members (those whose protocol carries such events) that `entry` came
    /// or went.
    fn announce(&self, group: &str, kind: Kind, entry: &PresenceEntry) {
        let data = presence_json(entry);
        // Not to the connection it is about: it knows it joined.
        let mut p = Publication::new(group, Bytes::from(data), kind).except(entry.conn);
        p.origin = self.node;
        drop(self.broker.publish(p));
    }

    /// Publishes to every member of the group, on every node, through the broker. Publishing to
    /// a group with no members is not an error: the receipt says 0 local recipients.
    pub fn publish(&self, mut p: Publication) -> Published {
        METRICS.publishes.inc();
        p.origin = self.node;
        let started = std::time::Instant::now();
        let published = self.broker.publish(p);
        METRICS.publish_duration.observe_duration(started.elapsed());
        published
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

/// A presence entry as JSON: `{"id": "...", "user": ..., "info": ...}`.
pub fn presence_json(e: &PresenceEntry) -> String {
    let user = e.user.as_deref().map_or("null".to_string(), |u| {
        serde_json::Value::from(u).to_string()
    });
    let info = e.info.as_deref().unwrap_or("null");
    format!(
        "{{\"id\":{},\"user\":{user},\"info\":{info}}}",
        serde_json::Value::from(e.id())
    )
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

    fn local_members(&self, group: &str) -> usize {
        self.member_count(group)
    }

    /// Closes members whose protocol recovers from a position with 1012 (come back): they
    /// resubscribe with their last position and learn whether history still covers the gap.
    /// Others stay: a plain client has no position to recover from.
    fn lost(&self, group: &str, reason: &str) {
        let Some(g) = self.find(group) else {
            return;
        };
        let members: Vec<Arc<dyn Member>> = read(&g)
            .lists
            .iter()
            .filter(|l| l.codec.tracks_positions())
            .flat_map(|l| l.members.iter().cloned())
            .collect();
        let mut why = format!("publications may be missing: {reason}");
        if why.len() > 123 {
            let mut end = 120;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
            why.push_str("...");
        }
        for m in members {
            m.disconnect(1012, &why);
        }
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
        fn encode(&self, p: &Publication) -> Option<Bytes> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Some(Bytes::from([self.0.as_bytes(), b":", &p.data].concat()))
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
        fn budget(&self) -> usize {
            1 << 20
        }
        fn disconnect(&self, _code: u16, _reason: &str) {}
        fn deliver(&self, m: &Bytes) -> bool {
            self.got.lock().unwrap().push(m.clone());
            self.accept
        }
        fn send(&self, data: &[u8], _kind: Kind) -> bool {
            self.deliver(&Bytes::copy_from_slice(data))
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

    fn join(h: &Hub, group: &str, p: Arc<Probe>) -> bool {
        let c: &'static dyn Codec = p.codec;
        h.join(group, p, Join::plain(c))
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
        fn attach(&self, g: &str, q: HistoryQuery, a: Attach) -> BoxFuture<Result<(), Error>> {
            self.inner.attach(g, q, a)
        }
        fn history(
            &self,
            g: &str,
            q: HistoryQuery,
        ) -> BoxFuture<Result<crate::broker::Replay, Error>> {
            self.inner.history(g, q)
        }
        fn presence_add(&self, g: &str, e: PresenceEntry) {
            self.calls.lock().unwrap().push(format!("presence+{g}"));
            self.inner.presence_add(g, e)
        }
        fn presence_remove(&self, g: &str, c: u64) {
            self.calls.lock().unwrap().push(format!("presence-{g}"));
            self.inner.presence_remove(g, c)
        }
        fn presence(&self, g: &str) -> BoxFuture<Result<Vec<PresenceEntry>, Error>> {
            self.inner.presence(g)
        }
        fn background(self: Arc<Self>) -> Option<BoxFuture<()>> {
            None
        }
    }

    fn hub() -> Arc<Hub> {
        Hub::new(Arc::new(Memory::default()))
    }

    fn text(group: &str, s: &str) -> Publication {
        Publication::new(group, Bytes::copy_from_slice(s.as_bytes()), Kind::Text)
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
        join(&h, "room:1", a.clone());
        join(&h, "room:1", b.clone());
        join(&h, "room:2", c.clone());
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
        join(&h, "g", a1.clone());
        join(&h, "g", a2.clone());
        join(&h, "g", b1.clone());
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
        join(&h, "g", probe(1, true));
        join(&h, "g", probe(2, false));
        join(&h, "g", probe(3, true));
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
        join(&h, "g", a.clone());
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
        assert!(join(&h, "g", probe(1, true)), "first");
        assert!(!join(&h, "g", probe(2, true)));
        assert!(!join(&h, "g", probe(2, true)), "already a member");
        assert!(!h.leave("g", 1));
        assert!(!h.leave("g", 42), "never a member");
        assert!(h.leave("g", 2), "last");
        assert!(!h.leave("g", 2), "gone already");
        assert!(join(&h, "g", probe(3, true)), "first again");
        assert_eq!(*broker.calls.lock().unwrap(), vec!["+g", "-g", "+g"]);
    }

    /// A hub over a memory broker keeping history for `room:*`.
    fn hub_with_history() -> Arc<Hub> {
        use crate::broker::memory::Settings;
        use crate::broker::policy::{GroupPattern, Policies, StreamPolicy};
        Hub::new(Arc::new(Memory::new(Settings {
            policies: Policies::new(vec![(
                GroupPattern::new("room:*"),
                StreamPolicy {
                    size: 100,
                    ttl: std::time::Duration::from_secs(60),
                },
            )]),
            ..Settings::default()
        })))
    }

    fn now<T>(mut f: BoxFuture<T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the memory broker answers at once"),
        }
    }

    #[test]
    fn attach_replays_history_before_live_publications_with_the_first_frame_first() {
        let h = hub_with_history();
        for i in 0..5 {
            recipients(&h, text("room:1", ["a", "b", "c", "d", "e"][i]));
        }
        let c = codec("raw");
        let m = probe_with(9, true, c);
        let first: FirstFrame = Box::new(|r: &Recovery, top: Option<&Position>| {
            assert_eq!(*r, Recovery::NotAsked);
            Some(Bytes::from(format!("hello at {}", top.unwrap().offset)))
        });
        now(h.attach(
            "room:1",
            m.clone(),
            Join::plain(c),
            HistoryQuery::Last {
                last: 3,
                within: std::time::Duration::from_secs(60),
            },
            Some(first),
        ))
        .unwrap();
        recipients(&h, text("room:1", "live"));
        let got: Vec<Bytes> = m.got.lock().unwrap().clone();
        let want: Vec<&[u8]> = vec![b"hello at 5", b"raw:c", b"raw:d", b"raw:e", b"raw:live"];
        assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_replay_larger_than_the_members_budget_keeps_the_newest() {
        #[derive(Debug)]
        struct Small(Probe);
        impl Member for Small {
            fn id(&self) -> u64 {
                self.0.id
            }
            fn deliver(&self, m: &Bytes) -> bool {
                self.0.deliver(m)
            }
            fn budget(&self) -> usize {
                30
            }
            fn disconnect(&self, _code: u16, _reason: &str) {}
            fn send(&self, data: &[u8], kind: Kind) -> bool {
                self.0.send(data, kind)
            }
        }
        let h = hub_with_history();
        for i in 0..10 {
            recipients(&h, text("room:1", &format!("message {i}")));
        }
        let c = codec("raw");
        let m = Arc::new(Small(Probe {
            id: 1,
            codec: c,
            got: Mutex::default(),
            accept: true,
        }));
        now(h.attach(
            "room:1",
            m.clone(),
            Join::plain(c),
            HistoryQuery::Last {
                last: 10,
                within: std::time::Duration::from_secs(60),
            },
            None,
        ))
        .unwrap();
        let got = m.0.got.lock().unwrap();
        assert_eq!(got.len(), 2, "two 13-byte frames fit 30 bytes");
        assert_eq!(&got[1][..], b"raw:message 9");
    }

    #[test]
    fn presence_follows_members_and_join_leave_events_reach_those_who_asked() {
        let broker = Arc::new(Counting::default());
        let h = Hub::new(broker.clone());
        let events = codec("events");
        let watcher = probe_with(1, true, events);
        join(&h, "g", watcher.clone());
        let quiet = codec("quiet");
        h.join(
            "g",
            probe_with(2, true, quiet),
            Join {
                codec: quiet,
                presence: Some(Presence {
                    user: Some(Arc::from("ann")),
                    info: Some(Arc::from("{\"seat\":3}")),
                }),
                events: true,
            },
        );
        let list = now(h.broker().presence("g")).unwrap();
        assert_eq!(list.len(), 1, "only the member with presence is listed");
        assert_eq!(list[0].user.as_deref(), Some("ann"));
        h.leave("g", 2);
        assert!(now(h.broker().presence("g")).unwrap().is_empty());
        let got = watcher.got.lock().unwrap();
        assert_eq!(got.len(), 2, "a join and a leave: {got:?}");
        assert_eq!(
            &got[0][..],
            br#"events:{"id":"7.2","user":"ann","info":{"seat":3}}"#
        );
        assert!(
            broker
                .calls
                .lock()
                .unwrap()
                .contains(&"presence-g".to_string())
        );
    }

    #[test]
    fn leaving_keeps_the_index_consistent_and_drops_empty_groups() {
        let h = hub();
        for id in 1..=5 {
            join(&h, "g", probe(id, true));
        }
        join(&h, "g", probe_with(6, true, codec("b")));
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
