//! The single-node broker: this process is the whole cluster, so publishing is handing the
//! publication to this node's handler, synchronously, on the publisher's thread.
//!
//! Groups a route keeps history for have a stream here: an epoch (new for every stream, so a
//! restart or an eviction is visible), offsets handed out under the stream's lock, and the
//! bounded list of recent publications. Delivery of a group's publication happens under that
//! same lock, so delivery order is offset order and [`Broker::attach`] finds a true seam.
//! Groups without history take no lock of the broker's at all.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::policy::{Policies, StreamPolicy};
use super::publication::{Kind, Position, Publication};
use super::{
    Attach, BoxFuture, Broker, Error, Handler, HistoryQuery, PresenceEntry, Published, Receipt,
    Recovery, Replay,
};
use crate::metrics::METRICS;

/// What a kept publication costs beyond its payload (offset, time, kind, the list's slot and
/// the allocator's share), counted against `hub.history_max_bytes`.
pub const ENTRY_OVERHEAD: usize = 64;
/// What a stream costs without entries (epoch, counters, the map's slot).
const STREAM_OVERHEAD: usize = 160;
const SHARDS: usize = 64;

/// Bounds of the memory broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which groups keep a stream, and how much.
    pub policies: Policies,
    /// Memory all streams may take (`hub.history_max_bytes`).
    pub max_bytes: usize,
    /// How long a stream whose history expired keeps its position (`hub.history_meta_ttl`).
    pub meta_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policies: Policies::default(),
            max_bytes: 64 * 1024 * 1024,
            meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The in-memory broker.
#[derive(Debug)]
pub struct Memory {
    handler: OnceLock<Weak<dyn Handler>>,
    settings: Settings,
    streams: Box<[StreamShard]>,
    presence: Box<[PresenceShard]>,
    hasher: RandomState,
    /// Bytes all streams hold, as counted by [`ENTRY_OVERHEAD`] and [`STREAM_OVERHEAD`].
    bytes: AtomicUsize,
    clock: Instant,
    epochs: AtomicU64,
    /// Publications to streams so far (see `Stream::last_seq`).
    seq: AtomicU64,
}

/// What presence keeps of a connection beyond its id.
type Extra = Option<Box<(Option<Arc<str>>, Option<Arc<str>>)>>;
/// Groups' streams, one shard of them.
type StreamShard = Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>;
/// Groups' presence (connection id -> what it said), one shard of them.
type PresenceShard = Mutex<HashMap<Arc<str>, HashMap<u64, Extra>>>;

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    /// The offset the next publication gets; offsets start at 1.
    next: u64,
    entries: VecDeque<Entry>,
    /// What this stream counts in `Memory::bytes`.
    bytes: usize,
    policy: StreamPolicy,
    /// Clock (ms) of the last publication, or of the stream's creation.
    last_ms: u64,
    /// When it was last published to, as a count of the broker's publications (orders streams
    /// for eviction where the clock's milliseconds are too coarse).
    last_seq: u64,
    /// Removed from the map: whoever still holds it must look the group up again.
    gone: bool,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    at_ms: u64,
    kind: Kind,
    /// An exact-size copy: a slice of a larger buffer would keep all of it alive.
    data: Box<[u8]>,
}

impl Stream {
    fn position(&self, offset: u64) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset,
        }
    }

    /// The position of the last publication (offset 0 before the first).
    fn top(&self) -> Position {
        self.position(self.next - 1)
    }

    /// Drops what `policy` no longer keeps at `now_ms`; returns the bytes freed.
    fn prune(&mut self, now_ms: u64) -> usize {
        let oldest = now_ms.saturating_sub(self.policy.ttl.as_millis() as u64);
        let mut freed = 0;
        while let Some(e) = self.entries.front() {
            if self.entries.len() <= self.policy.size && e.at_ms >= oldest {
                break;
            }
            freed += e.data.len() + ENTRY_OVERHEAD;
            self.entries.pop_front();
        }
        self.bytes -= freed;
        freed
    }

    fn publication(&self, group: &Arc<str>, e: &Entry) -> Publication {
        Publication {
            group: group.clone(),
            data: Bytes::copy_from_slice(&e.data),
            kind: e.kind,
            position: Some(self.position(e.offset)),
            origin: 0,
            sender: None,
            encoded: None,
        }
    }

    /// What `q` asks of this stream at `now_ms` (already pruned).
    fn replay(&self, group: &Arc<str>, q: &HistoryQuery, now_ms: u64) -> Replay {
        let top = Some(self.top());
        let (picked, recovery): (Vec<&Entry>, Recovery) = match q {
            HistoryQuery::Live => (Vec::new(), Recovery::NotAsked),
            HistoryQuery::Last { last, within } => {
                let oldest = now_ms.saturating_sub(within.as_millis() as u64);
                let fresh: Vec<&Entry> =
                    self.entries.iter().filter(|e| e.at_ms >= oldest).collect();
                let skip = fresh.len().saturating_sub(*last);
                (fresh[skip..].to_vec(), Recovery::NotAsked)
            }
            HistoryQuery::Since { since, limit } => match self.recover(since, *limit) {
                Ok(from) => (
                    self.entries.iter().filter(|e| e.offset > from).collect(),
                    Recovery::Recovered,
                ),
                Err(why) => (Vec::new(), Recovery::Lost(why)),
            },
        };
        Replay {
            publications: picked.iter().map(|e| self.publication(group, e)).collect(),
            recovery,
            top,
        }
    }

    /// Whether everything after `since` is still here: the offset to replay from, or why not.
    fn recover(&self, since: &Position, limit: usize) -> Result<u64, String> {
        if since.epoch != self.epoch {
            return Err(format!(
                "the group's history was lost since epoch {:?} (a restart or an eviction); its epoch is now {:?}",
                since.epoch, self.epoch
            ));
        }
        let last = self.next - 1;
        if since.offset > last {
            return Err(format!(
                "offset {} is ahead of the group's stream, which is at {last}",
                since.offset
            ));
        }
        let first_kept = self.entries.front().map_or(self.next, |e| e.offset);
        if since.offset + 1 < first_kept {
            return Err(format!(
                "publications after offset {} are no longer in history (it starts at {first_kept}): the client was away longer than history keeps",
                since.offset
            ));
        }
        let missed = last - since.offset;
        if missed as usize > limit {
            return Err(format!(
                "{missed} publications were missed; at most {limit} are recovered (websocket.recovery_max_publications)"
            ));
        }
        Ok(since.offset)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single step on plain collections: a poisoned lock is
    // still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Memory {
    pub fn new(settings: Settings) -> Self {
        Memory {
            handler: OnceLock::new(),
            settings,
            streams: (0..SHARDS).map(|_| Mutex::default()).collect(),
            presence: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            bytes: AtomicUsize::new(0),
            clock: Instant::now(),
            epochs: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }
    }

    fn shard(&self, group: &str) -> usize {
        (self.hasher.hash_one(group) as usize) % SHARDS
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// A name for a new stream: never the same twice in this process, unpredictable across
    /// processes (so a restart shows as a new epoch).
    fn new_epoch(&self) -> Arc<str> {
        let mut h = self.hasher.build_hasher();
        h.write_u64(self.epochs.fetch_add(1, Ordering::Relaxed));
        Arc::from(format!("{:08x}", h.finish() as u32))
    }

    /// The group's stream, created (with a new epoch) when it has none.
    fn stream(&self, group: &str, policy: StreamPolicy) -> (Arc<str>, Arc<Mutex<Stream>>) {
        let mut map = lock(&self.streams[self.shard(group)]);
        if let Some((k, s)) = map.get_key_value(group) {
            return (k.clone(), s.clone());
        }
        let key: Arc<str> = Arc::from(group);
        let s = Arc::new(Mutex::new(Stream {
            epoch: self.new_epoch(),
            next: 1,
            entries: VecDeque::new(),
            bytes: STREAM_OVERHEAD,
            policy,
            last_ms: self.now_ms(),
            last_seq: self.seq.fetch_add(1, Ordering::Relaxed),
            gone: false,
        }));
        self.bytes.fetch_add(STREAM_OVERHEAD, Ordering::Relaxed);
        map.insert(key.clone(), s.clone());
        (key, s)
    }

    /// Runs `f` on the group's stream, locked; looks again if it was evicted meanwhile.
    fn with_stream<T>(
        &self,
        group: &str,
        policy: StreamPolicy,
        mut f: impl FnMut(&Arc<str>, &mut Stream) -> T,
    ) -> T {
        loop {
            let (key, s) = self.stream(group, policy);
            let mut st = lock(&s);
            if st.gone {
                continue;
            }
            let freed = st.prune(self.now_ms());
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            return f(&key, &mut st);
        }
    }

    fn handle(&self, p: &Publication) -> usize {
        self.handler
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |h| h.handle(p))
    }

    /// Removes the stream of `group` (its epoch ends with it).
    fn remove(&self, group: &str) {
        let removed = lock(&self.streams[self.shard(group)]).remove(group);
        if let Some(s) = removed {
            let mut st = lock(&s);
            st.gone = true;
            self.bytes.fetch_sub(st.bytes, Ordering::Relaxed);
        }
    }

    /// Past `history_max_bytes`: drops the streams published to least recently until the total
    /// is under 90 % of it (so a busy box does not scan on every publish).
    fn enforce_cap(&self) {
        let max = self.settings.max_bytes;
        if self.bytes.load(Ordering::Relaxed) <= max {
            return;
        }
        let mut all: Vec<(u64, Arc<str>)> = Vec::new();
        for shard in self.streams.iter() {
            for (k, s) in lock(shard).iter() {
                all.push((lock(s).last_seq, k.clone()));
            }
        }
        all.sort_unstable();
        for (_, group) in all {
            if self.bytes.load(Ordering::Relaxed) <= max / 10 * 9 {
                break;
            }
            self.remove(&group);
            METRICS.history_evictions.inc();
        }
        METRICS
            .history_bytes
            .set(self.bytes.load(Ordering::Relaxed) as u64);
    }

    /// Drops expired publications everywhere, and streams that kept only their position for
    /// longer than `history_meta_ttl`.
    pub fn prune(&self) {
        let now = self.now_ms();
        let meta_ttl = self.settings.meta_ttl.as_millis() as u64;
        let mut stale = Vec::new();
        for shard in self.streams.iter() {
            let streams: Vec<(Arc<str>, Arc<Mutex<Stream>>)> = lock(shard)
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            for (k, s) in streams {
                let mut st = lock(&s);
                let freed = st.prune(now);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                if st.entries.is_empty() && now.saturating_sub(st.last_ms) > meta_ttl {
                    stale.push(k);
                }
            }
        }
        for g in stale {
            self.remove(&g);
        }
        METRICS
            .history_bytes
            .set(self.bytes.load(Ordering::Relaxed) as u64);
    }

    /// Bytes all streams hold now.
    pub fn history_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new(Settings::default())
    }
}

impl Broker for Memory {
    fn node(&self) -> u64 {
        // One node: any constant names it.
        1
    }

    fn set_handler(&self, handler: Weak<dyn Handler>) {
        let _ = self.handler.set(handler);
    }

    fn publish(&self, mut p: Publication) -> Published {
        let policy = p
            .kind
            .is_message()
            .then(|| self.settings.policies.for_group(&p.group))
            .flatten();
        let Some(policy) = policy else {
            let local_recipients = self.handle(&p);
            return Published::ready(Ok(Receipt {
                position: None,
                local_recipients,
            }));
        };
        let now = self.now_ms();
        let group = p.group.clone();
        let (position, local_recipients) = self.with_stream(&group, policy, |_, st| {
            let offset = st.next;
            st.next += 1;
            st.last_ms = now;
            st.last_seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let cost = p.data.len() + ENTRY_OVERHEAD;
            st.entries.push_back(Entry {
                offset,
                at_ms: now,
                kind: p.kind,
                data: p.data.to_vec().into_boxed_slice(),
            });
            st.bytes += cost;
            self.bytes.fetch_add(cost, Ordering::Relaxed);
            let freed = st.prune(now);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            p.position = Some(st.position(offset));
            // Under the stream's lock: delivery order is offset order, and attach sees a seam.
            (p.position.clone(), self.handle(&p))
        });
        self.enforce_cap();
        Published::ready(Ok(Receipt {
            position,
            local_recipients,
        }))
    }

    fn subscribe(&self, _group: &str) {}

    fn unsubscribe(&self, _group: &str) {}

    fn attach(&self, group: &str, q: HistoryQuery, attach: Attach) -> BoxFuture<Result<(), Error>> {
        match self.settings.policies.for_group(group) {
            Some(policy) => {
                let now = self.now_ms();
                let mut attach = Some(attach);
                self.with_stream(group, policy, |key, st| {
                    let replay = st.replay(key, &q, now);
                    if let Some(f) = attach.take() {
                        f(&replay);
                    }
                });
            }
            None => {
                let recovery = match q {
                    HistoryQuery::Since { .. } => Recovery::Lost(
                        "the group keeps no history (the route that covers it has no history setting)".into(),
                    ),
                    _ => Recovery::NotAsked,
                };
                attach(&Replay::none(recovery));
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn history(&self, group: &str, q: HistoryQuery) -> BoxFuture<Result<Replay, Error>> {
        let replay = match self.settings.policies.for_group(group) {
            Some(policy) => {
                let now = self.now_ms();
                self.with_stream(group, policy, |key, st| st.replay(key, &q, now))
            }
            None => Replay::none(Recovery::Lost(
                "the group keeps no history (the route that covers it has no history setting)"
                    .into(),
            )),
        };
        Box::pin(std::future::ready(Ok(replay)))
    }

    fn presence_add(&self, group: &str, entry: PresenceEntry) {
        let extra = (entry.user.is_some() || entry.info.is_some())
            .then(|| Box::new((entry.user, entry.info)));
        lock(&self.presence[self.shard(group)])
            .entry(Arc::from(group))
            .or_default()
            .insert(entry.conn, extra);
    }

    fn presence_remove(&self, group: &str, conn: u64) {
        let mut map = lock(&self.presence[self.shard(group)]);
        if let Some(members) = map.get_mut(group) {
            members.remove(&conn);
            if members.is_empty() {
                map.remove(group);
            }
        }
    }

    fn presence(&self, group: &str) -> BoxFuture<Result<Vec<PresenceEntry>, Error>> {
        let node = self.node();
        let mut list: Vec<PresenceEntry> = lock(&self.presence[self.shard(group)])
            .get(group)
            .map(|m| {
                m.iter()
                    .map(|(conn, extra)| {
                        let (user, info) = extra.as_deref().cloned().unwrap_or((None, None));
                        PresenceEntry {
                            node,
                            conn: *conn,
                            user,
                            info,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by_key(|e| e.conn);
        Box::pin(std::future::ready(Ok(list)))
    }

    fn background(self: Arc<Self>) -> Option<BoxFuture<()>> {
        if self.settings.policies.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.prune();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::policy::GroupPattern;

    /// A handler that records what it was given, in order.
    #[derive(Debug, Default)]
    struct Record(Mutex<Vec<Publication>>);

    impl Handler for Record {
        fn handle(&self, p: &Publication) -> usize {
            self.0.lock().unwrap().push(p.clone());
            1
        }
    }

    fn broker(size: usize, ttl: Duration, max_bytes: usize) -> (Arc<Memory>, Arc<Record>) {
        let m = Arc::new(Memory::new(Settings {
            policies: Policies::new(vec![(
                GroupPattern::new("room:{r}"),
                StreamPolicy { size, ttl },
            )]),
            max_bytes,
            meta_ttl: Duration::from_secs(3600),
        }));
        let r = Arc::new(Record::default());
        let h: Arc<dyn Handler> = r.clone();
        m.set_handler(Arc::downgrade(&h));
        std::mem::forget(h);
        (m, r)
    }

    fn text(group: &str, s: &str) -> Publication {
        Publication::new(group, Bytes::copy_from_slice(s.as_bytes()), Kind::Text)
    }

    fn publish(m: &Memory, p: Publication) -> Receipt {
        m.publish(p).now().unwrap().unwrap()
    }

    #[test]
    fn the_memory_cap_evicts_the_group_published_to_least_recently_and_its_epoch_ends() {
        let (m, _) = broker(1000, Duration::from_secs(60), 64 * 1024);
        let first = publish(&m, text("room:old", "x")).position.unwrap();
        let evictions = METRICS.history_evictions.get();
        let big = "y".repeat(1000);
        for _ in 0..100 {
            publish(&m, text("room:new", &big));
        }
        assert!(
            m.history_bytes() <= 64 * 1024,
            "{} bytes kept",
            m.history_bytes()
        );
        assert!(METRICS.history_evictions.get() > evictions);
        let again = publish(&m, text("room:old", "z")).position.unwrap();
        assert_ne!(
            again.epoch, first.epoch,
            "evicted: a new stream, a new epoch"
        );
        assert_eq!(again.offset, 1);
    }

    #[test]
    fn a_kept_publication_costs_its_payload_plus_the_overhead() {
        let (m, _) = broker(1000, Duration::from_secs(60), 1 << 30);
        let before = m.history_bytes();
        publish(&m, text("room:1", "first"));
        let one = m.history_bytes() - before;
        for _ in 0..99 {
            publish(&m, text("room:1", &"p".repeat(100)));
        }
        let per = (m.history_bytes() - before - one) / 99;
        assert_eq!(per, 100 + ENTRY_OVERHEAD);
    }
}
