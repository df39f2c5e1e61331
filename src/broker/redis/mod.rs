//! The broker for many nodes: every node shares one Redis (`broker.kind = "redis"`) or one
//! Redis Cluster (`"redis-cluster"`, sharded pub/sub), and nothing else.
//!
//! - **Publish**: one Lua script per publication of a group with history assigns its offset,
//!   appends it to the group's list (bounded by the route's size and age) and publishes it on
//!   the group's channel, atomically ([`script::PUBLISH`]); a group without history is a plain
//!   `PUBLISH`. Publications go out in call order through one task that pipelines them, so the
//!   order per publisher holds and a busy node sends many per round trip.
//! - **Subscriptions follow members**: a node subscribes to a group's channel while the group
//!   has members here (the hub says when), in batches, so a node receives no traffic of groups
//!   it does not serve.
//! - **Delivery** comes back over the same connection as RESP3 pushes, also for this node's own
//!   publications, so every node delivers a group's publications in the same (offset) order.
//!   Per group, the node remembers the last position it delivered: a repeat is dropped, a gap
//!   (after a reconnect, a slot move) is filled from history, and when it cannot be (history
//!   gone, Redis restarted empty) the hub is told ([`Handler::lost`]) so clients that track
//!   positions come back and recover by themselves.
//! - **Presence** lives in Redis with an expiry per entry that live nodes push forward every
//!   third of `broker.presence_ttl`: a dead node's entries vanish within the TTL.
//! - **Faults**: while Redis cannot be reached publishes fail at once with
//!   [`Error::Unavailable`] (the API answers 503), [`Broker::readiness`] says why, and a health
//!   check reconnects with backoff; the client library subscribes again by itself, and the node
//!   then catches every group up from history.

mod conn;
mod replay;
mod script;
mod wire;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, oneshot};

use conn::Conn;
pub use conn::Target;
use replay::Read;
use wire::Keys;

use super::policy::{Policies, StreamPolicy};
use super::{
    Attach, BoxFuture, Broker, Error, Handler, HistoryQuery, PresenceEntry, Publication, Published,
    Receipt, Recovery, Replay,
};

/// Most publications sent to Redis in one pipeline.
const BATCH: usize = 512;
/// How often a healthy connection is checked, and how often a lost one is retried.
const CHECK_UP: Duration = Duration::from_secs(1);
const CHECK_DOWN: Duration = Duration::from_millis(200);

/// What the Redis broker needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    /// Prefix of every key and channel (`broker.prefix`).
    pub prefix: String,
    /// Which groups keep a stream, and how much.
    pub policies: Policies,
    /// How long a stream's position outlives its history (`hub.history_meta_ttl`).
    pub meta_ttl: Duration,
    /// `broker.presence_ttl`.
    pub presence_ttl: Duration,
    /// `broker.timeout`: connecting and each command.
    pub timeout: Duration,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {target}: {cause}; start Redis there or fix broker.{key}")]
pub struct ConnectError {
    target: String,
    key: &'static str,
    /// Part of the sentence rather than a `#[source]`, so it is said once.
    cause: redis::RedisError,
}

/// The Redis broker. See the module docs.
pub struct Redis {
    me: Weak<Redis>,
    node: u64,
    settings: Settings,
    conn: Conn,
    handler: OnceLock<Weak<dyn Handler>>,
    jobs: mpsc::UnboundedSender<Job>,
    queues: Mutex<Option<Queues>>,
    subs: Mutex<Subs>,
    subs_wake: Notify,
    /// Per subscribed group with history: the last position delivered here.
    seams: Mutex<HashMap<Arc<str>, Arc<Mutex<Seam>>>>,
    /// This node's presence entries, refreshed in Redis while it lives.
    mine: Mutex<HashMap<Arc<str>, HashMap<u64, String>>>,
    health: Health,
    scripts: Scripts,
    hasher: RandomState,
    epochs: AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("node", &self.node)
            .field("target", &self.settings.target.describe())
            .field("up", &self.health.up.load(Ordering::Relaxed))
            .finish()
    }
}

/// The receiving ends the background tasks take.
struct Queues {
    jobs: mpsc::UnboundedReceiver<Job>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

struct Scripts {
    publish: redis::Script,
    read: redis::Script,
    presence_add: redis::Script,
    presence_remove: redis::Script,
    presence_list: redis::Script,
}

/// What goes to Redis, in order, through the one publishing task.
enum Job {
    Publish {
        p: Publication,
        policy: Option<StreamPolicy>,
        local: usize,
        done: oneshot::Sender<Result<Receipt, Error>>,
    },
    PresenceAdd {
        group: Arc<str>,
        field: String,
        entry: String,
    },
    PresenceRemove {
        group: Arc<str>,
        field: String,
    },
    PresenceList {
        group: Arc<str>,
        done: oneshot::Sender<Result<Vec<PresenceEntry>, Error>>,
    },
}

impl Job {
    fn group(&self) -> &str {
        match self {
            Job::Publish { p, .. } => &p.group,
            Job::PresenceAdd { group, .. }
            | Job::PresenceRemove { group, .. }
            | Job::PresenceList { group, .. } => group,
        }
    }
}

#[derive(Debug, Default)]
struct Subs {
    /// Why each group is wanted: the hub's members (1) plus each attach in progress.
    wanted: HashMap<Arc<str>, usize>,
    /// What Redis confirmed.
    active: HashSet<Arc<str>>,
    /// Attaches waiting for their group's subscription.
    waiting: Vec<Waiter>,
    /// Groups whose shard channel moved to another master (cluster): subscribed again where it
    /// went, then caught up from history, since publications made meanwhile reached nobody here.
    moved: HashSet<Arc<str>>,
}

/// An attach waiting for its group's subscription.
type Waiter = (Arc<str>, oneshot::Sender<Result<(), Error>>);

#[derive(Debug, Default)]
struct Seam {
    last: Option<super::Position>,
}

#[derive(Debug, Default)]
struct Health {
    up: AtomicBool,
    /// Why it is down, for 503s and `/readyz`.
    why: Mutex<String>,
    /// A connection was lost: catch every group up once it is back.
    resync: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update under these locks is one step on plain collections: still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Redis {
    /// Connects to Redis (at most `settings.timeout`) and loads the scripts.
    ///
    /// # Errors
    /// Redis cannot be reached, refuses the connection, or is not a Redis Cluster when one was
    /// asked for; the message names the target and the config key to fix.
    pub async fn connect(settings: Settings) -> Result<Arc<Redis>, ConnectError> {
        let key = match settings.target {
            Target::Single(_) => "url",
            Target::Cluster(_) => "nodes",
        };
        let fail = |cause| ConnectError {
            target: settings.target.describe(),
            key,
            cause,
        };
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let conn = Conn::connect(&settings.target, settings.timeout, push_tx)
            .await
            .map_err(fail)?;
        let scripts = Scripts {
            publish: redis::Script::new(script::PUBLISH),
            read: redis::Script::new(script::READ),
            presence_add: redis::Script::new(script::PRESENCE_ADD),
            presence_remove: redis::Script::new(script::PRESENCE_REMOVE),
            presence_list: redis::Script::new(script::PRESENCE_LIST),
        };
        let mut c = conn.clone();
        let load = async {
            redis::cmd("PING").query_async::<()>(&mut c).await?;
            for s in [&scripts.publish, &scripts.presence_add] {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(code_of(&scripts, s))
                    .query_async::<()>(&mut c)
                    .await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(settings.timeout, load).await {
            Ok(r) => r.map_err(fail)?,
            Err(_) => {
                return Err(fail(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer to PING",
                ))));
            }
        }
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let hasher = RandomState::new();
        // Random, so two nodes (and two lives of one) never share an id.
        let node = (hasher.hash_one(std::process::id()) as u32 | 1) as u64;
        Ok(Arc::new_cyclic(|me| Redis {
            me: me.clone(),
            node,
            settings,
            conn,
            handler: OnceLock::new(),
            jobs,
            queues: Mutex::new(Some(Queues {
                jobs: jobs_rx,
                pushes,
            })),
            subs: Mutex::default(),
            subs_wake: Notify::new(),
            seams: Mutex::default(),
            mine: Mutex::default(),
            health: {
                crate::metrics::broker_up(true);
                Health {
                    up: AtomicBool::new(true),
                    ..Health::default()
                }
            },
            scripts,
            hasher,
            epochs: AtomicU64::new(0),
        }))
    }

    fn arc(&self) -> Arc<Redis> {
        self.me
            .upgrade()
            .expect("a broker method runs on a live broker")
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    fn handle(&self, p: &Publication) {
        if let Some(h) = self.handler() {
            h.handle(p);
        }
    }

    fn keys(&self, group: &str) -> Keys {
        Keys::new(&self.settings.prefix, group)
    }

    fn new_epoch(&self) -> String {
        let mut h = self.hasher.build_hasher();
        h.write_u64(self.epochs.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        format!("{:08x}", h.finish() as u32)
    }

    fn unavailable(&self) -> Error {
        Error::Unavailable {
            reason: format!(
                "cannot reach {}: {}",
                self.settings.target.describe(),
                lock(&self.health.why)
            ),
        }
    }

    fn down(&self, why: String) {
        if self.health.up.swap(false, Ordering::Relaxed) {
            crate::metrics::broker_up(false);
            tracing::warn!(broker = %self.settings.target.describe(), error = %why, "the broker is unreachable; publishes answer 503 until it is back");
        }
        *lock(&self.health.why) = why;
        self.health.resync.store(true, Ordering::Relaxed);
    }

    // ---- subscriptions ----

    fn want(&self, group: &str, delta: isize) {
        let mut s = lock(&self.subs);
        let n = s.wanted.entry(Arc::from(group)).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            s.wanted.remove(group);
            s.moved.remove(group);
        }
        drop(s);
        self.subs_wake.notify_one();
    }

    /// Waits until Redis confirmed the group's subscription.
    async fn until_subscribed(&self, group: &Arc<str>) -> Result<(), Error> {
        let rx = {
            let mut s = lock(&self.subs);
            if s.active.contains(group) {
                return Ok(());
            }
            // Down: answer now rather than hold a joining socket for the whole timeout.
            if !self.health.up.load(Ordering::Relaxed) {
                return Err(self.unavailable());
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.push((group.clone(), tx));
            rx
        };
        self.subs_wake.notify_one();
        match tokio::time::timeout(self.settings.timeout, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(self.unavailable()),
        }
    }

    /// The group's seam, when this node still wants the group (else its traffic is stale).
    fn seam_if_wanted(&self, group: &str) -> Option<Arc<Mutex<Seam>>> {
        let subs = lock(&self.subs);
        let (key, _) = subs.wanted.get_key_value(group)?;
        let key = key.clone();
        drop(subs);
        Some(lock(&self.seams).entry(key).or_default().clone())
    }

    async fn run_subscriptions(self: Arc<Self>) {
        loop {
            self.subs_wake.notified().await;
            loop {
                let (add, remove) = {
                    let s = lock(&self.subs);
                    let add: Vec<Arc<str>> = s
                        .wanted
                        .keys()
                        .filter(|g| !s.active.contains(*g))
                        .cloned()
                        .collect();
                    let remove: Vec<Arc<str>> = s
                        .active
                        .iter()
                        .filter(|g| !s.wanted.contains_key(*g))
                        .cloned()
                        .collect();
                    (add, remove)
                };
                if add.is_empty() && remove.is_empty() {
                    self.answer_waiters(None);
                    break;
                }
                let mut conn = self.conn.clone();
                let t = self.settings.timeout;
                let result = async {
                    if !add.is_empty() {
                        let chans: Vec<String> = add.iter().map(|g| self.keys(g).channel).collect();
                        timeout(t, conn.subscribe(&chans)).await?;
                        let moved: Vec<Arc<str>> = {
                            let mut s = lock(&self.subs);
                            s.active.extend(add.iter().cloned());
                            add.iter().filter(|g| s.moved.remove(*g)).cloned().collect()
                        };
                        for g in moved {
                            if let Some(seam) = self.seam_if_wanted(&g) {
                                self.catch_up(&g, &seam, None).await;
                            }
                        }
                    }
                    if !remove.is_empty() {
                        let chans: Vec<String> =
                            remove.iter().map(|g| self.keys(g).channel).collect();
                        timeout(t, conn.unsubscribe(&chans)).await?;
                        let mut s = lock(&self.subs);
                        let mut seams = lock(&self.seams);
                        for g in &remove {
                            s.active.remove(g);
                            if !s.wanted.contains_key(g) {
                                seams.remove(g);
                            }
                        }
                    }
                    Ok::<(), redis::RedisError>(())
                }
                .await;
                if let Err(e) = result {
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        self.down(e.to_string());
                    }
                    self.answer_waiters(Some(self.unavailable_because(&e)));
                    tokio::time::sleep(CHECK_DOWN).await;
                }
            }
        }
    }

    /// Answers attaches whose group is subscribed now (or all of them, with `err`).
    fn answer_waiters(&self, err: Option<Error>) {
        let mut s = lock(&self.subs);
        let waiting = std::mem::take(&mut s.waiting);
        for (g, tx) in waiting {
            if let Some(e) = &err {
                let _ = tx.send(Err(e.clone()));
            } else if s.active.contains(&g) {
                let _ = tx.send(Ok(()));
            } else {
                s.waiting.push((g, tx));
            }
        }
    }

    // ---- delivery ----

    async fn run_pushes(self: Arc<Self>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
        while let Some(push) = pushes.recv().await {
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    let mut data = push.data.into_iter();
                    let (Some(Value::BulkString(ch)), Some(Value::BulkString(msg))) =
                        (data.next(), data.next())
                    else {
                        continue;
                    };
                    let Some(group) = wire::group_of(&self.settings.prefix, &ch) else {
                        continue;
                    };
                    let group: Arc<str> = Arc::from(group);
                    match wire::decode_message(&group, &Bytes::from(msg)) {
                        Some(p) => self.deliver(&group, p).await,
                        None => {
                            tracing::warn!(%group, "a message on a wsgate channel that wsgate did not write; ignored")
                        }
                    }
                }
                PushKind::Disconnection => {
                    if !self.conn.is_sharded() {
                        self.down("the connection was lost".into());
                    }
                    self.health.resync.store(true, Ordering::Relaxed);
                }
                // A slot moved away (cluster), or the answer to our own unsubscribe.
                PushKind::SUnsubscribe => self.slot_moved(push.data),
                _ => {}
            }
        }
    }

    /// A master said this node no longer hears a shard channel. If the group is still wanted,
    /// its slot moved: subscribe again (the cluster client sends it to the slot's new master)
    /// and, once that is confirmed, catch up from history, so a publication made between the
    /// two (which reached nobody here) is delivered, in order, and the last one of a burst too
    /// (no later publication would reveal its gap).
    fn slot_moved(&self, data: Vec<Value>) {
        let Some(Value::BulkString(ch)) = data.into_iter().next() else {
            return;
        };
        let Some(group) = wire::group_of(&self.settings.prefix, &ch) else {
            return;
        };
        let mut s = lock(&self.subs);
        let Some((group, _)) = s.wanted.get_key_value(group) else {
            return;
        };
        let group = group.clone();
        s.active.remove(&group);
        s.moved.insert(group);
        drop(s);
        self.subs_wake.notify_one();
    }

    /// Delivers one publication from Redis to this node, at most once and in offset order.
    async fn deliver(&self, group: &Arc<str>, p: Publication) {
        let Some(seam) = self.seam_if_wanted(group) else {
            return;
        };
        let Some(pos) = p.position.clone() else {
            self.handle(&p);
            return;
        };
        {
            let mut s = lock(&seam);
            match &s.last {
                Some(l) if l.epoch == pos.epoch && pos.offset <= l.offset => return,
                Some(l) if l.epoch == pos.epoch && pos.offset > l.offset + 1 => {}
                Some(l) if l.epoch != pos.epoch => {
                    let reason = format!(
                        "the group's stream restarted (epoch {:?} became {:?}): Redis lost its history",
                        l.epoch, pos.epoch
                    );
                    self.handle(&p);
                    s.last = Some(pos);
                    drop(s);
                    self.lost(group, &reason);
                    return;
                }
                _ => {
                    self.handle(&p);
                    s.last = Some(pos);
                    return;
                }
            }
        }
        self.catch_up(group, &seam, Some(p)).await;
    }

    /// Delivers what this node missed of the group since its last position, from history,
    /// then `next`; tells the hub when history no longer covers the gap.
    async fn catch_up(&self, group: &Arc<str>, seam: &Arc<Mutex<Seam>>, next: Option<Publication>) {
        let Some(policy) = self.settings.policies.for_group(group) else {
            return;
        };
        let Some(from) = lock(seam).last.clone() else {
            if let Some(p) = next {
                self.handle(&p);
                lock(seam).last = p.position;
            }
            return;
        };
        let read = self.read(group, from.offset, 0, &policy).await;
        let mut s = lock(seam);
        let cur = s.last.clone().unwrap_or(from);
        let mut lost = None;
        match read {
            Ok(r) => {
                if r.epoch != cur.epoch {
                    lost = Some(format!(
                        "the group's stream restarted (epoch {:?} became {:?}): Redis lost its history",
                        cur.epoch, r.epoch
                    ));
                    for e in &r.entries {
                        self.handle(&r.publication(group, e));
                    }
                    s.last = Some(r.top());
                } else if r.top > cur.offset {
                    lost = self.fill(group, &r, cur.offset);
                    s.last = Some(r.top());
                }
            }
            Err(e) => {
                lost = Some(format!("this node could not read the group's history: {e}"));
                self.health.resync.store(true, Ordering::Relaxed);
            }
        }
        if let Some(p) = next
            && let Some(pos) = &p.position
        {
            let after = s
                .last
                .as_ref()
                .is_none_or(|l| l.epoch != pos.epoch || pos.offset > l.offset);
            if after {
                self.handle(&p);
                s.last = p.position.clone();
            }
        }
        drop(s);
        if let Some(reason) = lost {
            self.lost(group, &reason);
        }
    }

    /// Delivers the read's entries after offset `from` (the group's seam held); says what is
    /// missing when the read no longer starts right after `from`.
    fn fill(&self, group: &Arc<str>, r: &Read, from: u64) -> Option<String> {
        let first = r.entries.first().map_or(r.top + 1, |e| e.offset);
        for e in r.entries.iter().filter(|e| e.offset > from) {
            self.handle(&r.publication(group, e));
        }
        (first > from + 1).then(|| {
            format!(
                "this node missed offsets {} to {} of the group and history no longer has them",
                from + 1,
                first - 1
            )
        })
    }

    fn lost(&self, group: &str, reason: &str) {
        tracing::warn!(%group, reason, "publications of a group may be missing on this node; clients that track positions are asked to recover");
        if let Some(h) = self.handler() {
            h.lost(group, reason);
        }
    }

    /// Catches every subscribed group up after a reconnect.
    async fn resync(&self) {
        let seams: Vec<(Arc<str>, Arc<Mutex<Seam>>)> = lock(&self.seams)
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect();
        for (g, s) in seams {
            self.catch_up(&g, &s, None).await;
        }
    }

    // ---- reads ----

    /// The group's stream: entries after `after`, at most the newest `tail` (0: all). A group
    /// without a stream gets one (a new epoch at offset 0), as the memory broker does.
    async fn read(
        &self,
        group: &str,
        after: u64,
        tail: usize,
        policy: &StreamPolicy,
    ) -> Result<Read, Error> {
        let k = self.keys(group);
        let mut conn = self.conn.clone();
        let v: Value = timeout(
            self.settings.timeout,
            self.scripts
                .read
                .key(&k.history)
                .key(&k.meta)
                .arg(after)
                .arg(tail)
                .arg(self.new_epoch())
                .arg(self.meta_ttl_ms(policy))
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.down(e.to_string());
            }
            self.unavailable_because(&e)
        })?;
        Read::parse(v).ok_or_else(|| Error::Unavailable {
            reason: "Redis answered the history read with something else than wsgate wrote; is another program using the same broker.prefix?".into(),
        })
    }

    /// Why a command failed: Redis could not be reached (the connection failed, was refused or
    /// timed out), or it answered with an error.
    fn unavailable_because(&self, e: &redis::RedisError) -> Error {
        let target = self.settings.target.describe();
        let unreachable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal();
        Error::Unavailable {
            reason: if unreachable {
                format!("cannot reach {target}: {e}")
            } else {
                format!("{target} answered: {e}")
            },
        }
    }

    fn meta_ttl_ms(&self, policy: &StreamPolicy) -> u64 {
        (policy.ttl + self.settings.meta_ttl).as_millis() as u64
    }

    async fn attach_held(
        &self,
        group: &Arc<str>,
        q: HistoryQuery,
        attach: Attach,
    ) -> Result<(), Error> {
        self.until_subscribed(group).await?;
        let Some(policy) = self.settings.policies.for_group(group) else {
            let recovery = match q {
                HistoryQuery::Since { .. } => Recovery::Lost(
                    "the group keeps no history (the route that covers it has no history setting)"
                        .into(),
                ),
                _ => Recovery::NotAsked,
            };
            attach(&Replay::none(recovery));
            return Ok(());
        };
        let Some(seam) = self.seam_if_wanted(group) else {
            return Err(Error::Unavailable {
                reason: "the group was left while joining".into(),
            });
        };
        let mut attach = Some(attach);
        for _ in 0..8 {
            let snap = lock(&seam).last.clone();
            let (mut after, mut tail) = replay::wants(&q);
            if let Some(s) = &snap {
                after = after.min(s.offset);
                tail = 0;
            }
            let r = self.read(group, after, tail, &policy).await?;
            let mut s = lock(&seam);
            let mut lost = None;
            match s.last.clone() {
                // Live delivery is ahead of this read: read again.
                Some(l) if l.epoch == r.epoch && l.offset > r.top => continue,
                // What live delivery has not brought yet goes to the members here now from
                // history, so the seam is at the read's top for everyone.
                Some(l) if l.epoch == r.epoch && r.top > l.offset => {
                    lost = self.fill(group, &r, l.offset);
                }
                Some(l) if l.epoch == r.epoch => {}
                Some(l) => {
                    lost = Some(format!(
                        "the group's stream restarted (epoch {:?} became {:?}): Redis lost its history",
                        l.epoch, r.epoch
                    ));
                }
                None => {}
            }
            s.last = Some(r.top());
            let replay = r.replay(group, &q, &policy);
            if let Some(f) = attach.take() {
                f(&replay);
            }
            drop(s);
            if let Some(reason) = lost {
                self.lost(group, &reason);
            }
            return Ok(());
        }
        Err(Error::Unavailable {
            reason: "the group is published to faster than this node could read its history; retry"
                .into(),
        })
    }

    // ---- the publishing task ----

    async fn run_jobs(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(j) = jobs.recv().await {
            batch.push(j);
            while batch.len() < BATCH {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut batch)).await;
        }
    }

    /// Sends a batch: as one pipeline to one Redis; to a cluster as one pipeline per slot, at
    /// once (a pipeline may not cross slots), keeping each slot's order.
    async fn send(self: &Arc<Self>, batch: Vec<Job>) {
        if !self.conn.is_sharded() {
            return self.send_pipeline(batch).await;
        }
        let mut by_slot: HashMap<redis::cluster_routing::Slot, Vec<Job>> = HashMap::new();
        for j in batch {
            let channel = self.keys(j.group()).channel;
            by_slot
                .entry(redis::cluster_routing::Slot::for_key(channel))
                .or_default()
                .push(j);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, jobs) in by_slot {
            let this = self.clone();
            tasks.spawn(async move { this.send_each(jobs).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The command that carries `job`: a script by its hash, or by its body when Redis lost it.
    fn command(&self, job: &Job, by_body: bool) -> redis::Cmd {
        let script = |s: &redis::Script| {
            if by_body {
                let mut c = redis::cmd("EVAL");
                c.arg(code_of(&self.scripts, s));
                c
            } else {
                let mut c = redis::cmd("EVALSHA");
                c.arg(s.get_hash());
                c
            }
        };
        match job {
            Job::Publish { p, policy, .. } => {
                let k = self.keys(&p.group);
                match policy {
                    Some(policy) => {
                        let mut c = script(&self.scripts.publish);
                        c.arg(2)
                            .arg(&k.history)
                            .arg(&k.meta)
                            .arg(&k.channel)
                            .arg(policy.size)
                            .arg(policy.ttl.as_millis() as u64)
                            .arg(self.settings.meta_ttl.as_millis() as u64)
                            .arg(self.new_epoch())
                            .arg(wire::tail_head(p))
                            .arg(&p.data[..])
                            .arg(self.conn.publish_command());
                        c
                    }
                    None => {
                        let mut msg = wire::plain_head(p).into_bytes();
                        msg.extend_from_slice(&p.data);
                        let mut c = redis::cmd(self.conn.publish_command());
                        c.arg(&k.channel).arg(msg);
                        c
                    }
                }
            }
            Job::PresenceAdd {
                group,
                field,
                entry,
            } => {
                let k = self.keys(group);
                let mut c = script(&self.scripts.presence_add);
                c.arg(2)
                    .arg(&k.presence)
                    .arg(&k.presence_expiry)
                    .arg(field)
                    .arg(entry)
                    .arg(self.settings.presence_ttl.as_millis() as u64);
                c
            }
            Job::PresenceRemove { group, field } => {
                let k = self.keys(group);
                let mut c = script(&self.scripts.presence_remove);
                c.arg(2).arg(&k.presence).arg(&k.presence_expiry).arg(field);
                c
            }
            Job::PresenceList { group, .. } => {
                let k = self.keys(group);
                let mut c = script(&self.scripts.presence_list);
                c.arg(2).arg(&k.presence).arg(&k.presence_expiry);
                c
            }
        }
    }

    /// One slot's jobs on a cluster, each its own command (the cluster client follows MOVED and
    /// ASK for single commands while slots move), all sent at once in order.
    async fn send_each(&self, jobs: Vec<Job>) {
        // Numbered, so jobs sent again keep their first order.
        let mut pending: Vec<(usize, Job)> = jobs.into_iter().enumerate().collect();
        let mut by_body = false;
        // While a slot moves, the masters' views disagree for a moment and the client's own
        // redirects can run out. A redirect means the command did not run, so it is sent again
        // after a pause, until the broker's timeout: a publish is never lost or doubled to a
        // migration, and still fails plainly when the cluster does not settle.
        let settle_by = tokio::time::Instant::now() + self.settings.timeout;
        let mut pause = Duration::from_millis(20);
        while !pending.is_empty() {
            let cmds: Vec<redis::Cmd> = pending
                .iter()
                .map(|(_, j)| self.command(j, by_body))
                .collect();
            let futures: Vec<_> = cmds
                .iter()
                .map(|c| {
                    let mut conn = self.conn.clone();
                    async move {
                        timeout(self.settings.timeout, c.query_async::<Value>(&mut conn)).await
                    }
                })
                .collect();
            let results = futures_util::future::join_all(futures).await;
            let (mut again, mut redirected) = (Vec::new(), Vec::new());
            for ((n, j), r) in pending.drain(..).zip(results) {
                match r {
                    Ok(v) => self.answer(j, v),
                    Err(e) if e.code() == Some("NOSCRIPT") && !by_body => again.push((n, j)),
                    Err(e)
                        if e.is_cluster_error()
                            && tokio::time::Instant::now() + pause < settle_by =>
                    {
                        redirected.push((n, j))
                    }
                    Err(e) => {
                        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                            self.down(e.to_string());
                        }
                        fail(j, &self.unavailable_because(&e));
                    }
                }
            }
            if !again.is_empty() {
                by_body = true;
            }
            if !redirected.is_empty() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
                // In their first order: a slot's publications keep their sequence.
                again.extend(redirected);
                again.sort_by_key(|(n, _)| *n);
            }
            pending = again;
        }
    }

    /// Sends a batch as one pipeline and answers each job; jobs whose script Redis no longer
    /// has (it restarted) go again with the script's body.
    async fn send_pipeline(&self, mut batch: Vec<Job>) {
        let mut by_body = false;
        let mut rewritten = false;
        while !batch.is_empty() {
            if !self.health.up.load(Ordering::Relaxed) {
                let e = self.unavailable();
                for j in batch.drain(..) {
                    fail(j, &e);
                }
                return;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for j in batch.iter() {
                pipe.add_command(self.command(j, by_body));
            }
            let mut conn = self.conn.clone();
            let values: Vec<Value> =
                match timeout(self.settings.timeout, pipe.query_async(&mut conn)).await {
                    Ok(v) => v,
                    // Written to a socket Redis had already closed (it restarted): none of it
                    // reached Redis, and the client library is connecting again; once more.
                    Err(e) if is_broken_pipe(&e) && !rewritten => {
                        rewritten = true;
                        continue;
                    }
                    Err(e) => {
                        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                            self.down(e.to_string());
                        } else {
                            tracing::warn!(error = %e, "Redis refused a pipeline");
                        }
                        let e = self.unavailable_because(&e);
                        for j in batch.drain(..) {
                            fail(j, &e);
                        }
                        return;
                    }
                };
            let mut again = Vec::new();
            for (j, v) in batch.drain(..).zip(values) {
                match v {
                    Value::ServerError(e) if e.code() == "NOSCRIPT" && !by_body => again.push(j),
                    v => self.answer(j, v),
                }
            }
            batch = again;
            by_body = true;
        }
    }

    fn answer(&self, job: Job, v: Value) {
        match job {
            Job::Publish { local, done, .. } => {
                let r = match v {
                    Value::Array(a) => match (a.first(), a.get(1)) {
                        (Some(Value::BulkString(e)), Some(Value::Int(o))) => Ok(Receipt {
                            position: Some(super::Position {
                                epoch: Arc::from(String::from_utf8_lossy(e).as_ref()),
                                offset: *o as u64,
                            }),
                            local_recipients: local,
                        }),
                        _ => Err(odd(&a)),
                    },
                    Value::Int(_) => Ok(Receipt {
                        position: None,
                        local_recipients: local,
                    }),
                    Value::ServerError(e) => Err(Error::Unavailable {
                        reason: format!("Redis refused the publish: {e}"),
                    }),
                    other => Err(odd(&other)),
                };
                let _ = done.send(r);
            }
            Job::PresenceList { done, .. } => {
                let r = match v {
                    Value::Array(flat) | Value::Set(flat) => Ok(presence_list(flat)),
                    Value::Map(pairs) => Ok(presence_list(
                        pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    )),
                    other => Err(odd(&other)),
                };
                let _ = done.send(r);
            }
            Job::PresenceAdd { .. } | Job::PresenceRemove { .. } => {
                if let Value::ServerError(e) = v {
                    tracing::warn!(error = %e, "Redis refused a presence update");
                }
            }
        }
    }

    // ---- health and presence refresh ----

    async fn run_health(self: Arc<Self>) {
        let refresh_every = self.settings.presence_ttl / 3;
        let mut last_refresh = tokio::time::Instant::now();
        loop {
            let up = self.health.up.load(Ordering::Relaxed);
            tokio::time::sleep(if up { CHECK_UP } else { CHECK_DOWN }.min(refresh_every)).await;
            let mut conn = self.conn.clone();
            let ping = timeout(
                self.settings.timeout,
                redis::cmd("PING").query_async::<()>(&mut conn),
            )
            .await;
            match ping {
                Ok(()) => {
                    if !self.health.up.swap(true, Ordering::Relaxed) {
                        crate::metrics::broker_up(true);
                        crate::metrics::broker_reconnect();
                        tracing::info!(broker = %self.settings.target.describe(), "the broker is reachable again");
                    }
                    self.subs_wake.notify_one();
                    if self.health.resync.swap(false, Ordering::Relaxed) {
                        self.resync().await;
                    }
                }
                Err(e) => self.down(e.to_string()),
            }
            if last_refresh.elapsed() >= refresh_every {
                last_refresh = tokio::time::Instant::now();
                self.refresh_presence();
            }
        }
    }

    fn refresh_presence(&self) {
        let mine = lock(&self.mine);
        for (group, conns) in mine.iter() {
            for (conn, entry) in conns {
                let _ = self.jobs.send(Job::PresenceAdd {
                    group: group.clone(),
                    field: wire::presence_field(self.node, *conn),
                    entry: entry.clone(),
                });
            }
        }
    }
}

/// The body of one of the scripts, for `SCRIPT LOAD` and `EVAL`.
fn code_of(s: &Scripts, which: &redis::Script) -> &'static str {
    let all = [
        (&s.publish, script::PUBLISH),
        (&s.read, script::READ),
        (&s.presence_add, script::PRESENCE_ADD),
        (&s.presence_remove, script::PRESENCE_REMOVE),
        (&s.presence_list, script::PRESENCE_LIST),
    ];
    all.iter()
        .find(|(x, _)| x.get_hash() == which.get_hash())
        .map_or("", |(_, c)| c)
}

fn is_broken_pipe(e: &redis::RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    // The redis crate keeps the I/O error behind an `Arc<dyn Error>` and hands out the `Arc`
    // itself as the source, which does not downcast to `io::Error` directly.
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<Shared>()
            .and_then(|a| a.downcast_ref::<std::io::Error>())
    });
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn fail(job: Job, e: &Error) {
    match job {
        Job::Publish { done, .. } => {
            let _ = done.send(Err(e.clone()));
        }
        Job::PresenceList { done, .. } => {
            let _ = done.send(Err(e.clone()));
        }
        // Refreshed from `mine` once Redis is back.
        Job::PresenceAdd { .. } | Job::PresenceRemove { .. } => {}
    }
}

fn odd(v: &impl std::fmt::Debug) -> Error {
    Error::Unavailable {
        reason: format!(
            "Redis answered {v:?}, not what wsgate's script returns; is another program using the same broker.prefix?"
        ),
    }
}

fn presence_list(flat: Vec<Value>) -> Vec<PresenceEntry> {
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(Value::BulkString(f)), Some(Value::BulkString(e))) = (it.next(), it.next()) {
        if let Some((node, conn)) = wire::parse_presence_field(&f) {
            let (user, info) = wire::decode_presence(&e);
            out.push(PresenceEntry {
                node,
                conn,
                user,
                info,
            });
        }
    }
    out.sort_by_key(|e| (e.node, e.conn));
    out
}

async fn timeout<T>(
    t: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {t:?}"),
        ))),
    }
}

impl Broker for Redis {
    fn node(&self) -> u64 {
        self.node
    }

    fn set_handler(&self, handler: Weak<dyn Handler>) {
        let _ = self.handler.set(handler);
    }

    fn publish(&self, p: Publication) -> Published {
        if !self.health.up.load(Ordering::Relaxed) {
            return Published::ready(Err(self.unavailable()));
        }
        let policy = p
            .kind
            .is_message()
            .then(|| self.settings.policies.for_group(&p.group))
            .flatten();
        let local = self.handler().map_or(0, |h| h.local_members(&p.group));
        let (done, rx) = oneshot::channel();
        let job = Job::Publish {
            p,
            policy,
            local,
            done,
        };
        if self.jobs.send(job).is_err() {
            return Published::ready(Err(Error::Unavailable {
                reason: "the broker stopped".into(),
            }));
        }
        Published::waiting(rx)
    }

    fn subscribe(&self, group: &str) {
        self.want(group, 1);
    }

    fn unsubscribe(&self, group: &str) {
        self.want(group, -1);
    }

    fn attach(&self, group: &str, q: HistoryQuery, attach: Attach) -> BoxFuture<Result<(), Error>> {
        let this = self.arc();
        let group: Arc<str> = Arc::from(group);
        Box::pin(async move {
            this.want(&group, 1);
            let r = this.attach_held(&group, q, attach).await;
            this.want(&group, -1);
            r
        })
    }

    fn history(&self, group: &str, q: HistoryQuery) -> BoxFuture<Result<Replay, Error>> {
        let this = self.arc();
        let group: Arc<str> = Arc::from(group);
        Box::pin(async move {
            let Some(policy) = this.settings.policies.for_group(&group) else {
                return Ok(Replay::none(Recovery::Lost(
                    "the group keeps no history (the route that covers it has no history setting)"
                        .into(),
                )));
            };
            let (after, tail) = replay::wants(&q);
            let r = this.read(&group, after, tail, &policy).await?;
            Ok(r.replay(&group, &q, &policy))
        })
    }

    fn presence_add(&self, group: &str, entry: PresenceEntry) {
        let stored = wire::encode_presence(entry.user.as_deref(), entry.info.as_deref());
        let group: Arc<str> = Arc::from(group);
        lock(&self.mine)
            .entry(group.clone())
            .or_default()
            .insert(entry.conn, stored.clone());
        let _ = self.jobs.send(Job::PresenceAdd {
            group,
            field: wire::presence_field(self.node, entry.conn),
            entry: stored,
        });
    }

    fn presence_remove(&self, group: &str, conn: u64) {
        let mut mine = lock(&self.mine);
        if let Some(m) = mine.get_mut(group) {
            m.remove(&conn);
            if m.is_empty() {
                mine.remove(group);
            }
        }
        drop(mine);
        let _ = self.jobs.send(Job::PresenceRemove {
            group: Arc::from(group),
            field: wire::presence_field(self.node, conn),
        });
    }

    fn presence(&self, group: &str) -> BoxFuture<Result<Vec<PresenceEntry>, Error>> {
        if !self.health.up.load(Ordering::Relaxed) {
            return Box::pin(std::future::ready(Err(self.unavailable())));
        }
        let (done, rx) = oneshot::channel();
        let sent = self.jobs.send(Job::PresenceList {
            group: Arc::from(group),
            done,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(Error::Unavailable {
                    reason: "the broker stopped".into(),
                });
            }
            rx.await.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    reason: "the broker stopped before answering".into(),
                })
            })
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.health.up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self.unavailable().to_string())
        }
    }

    fn background(self: Arc<Self>) -> Option<BoxFuture<()>> {
        let queues = lock(&self.queues).take()?;
        Some(Box::pin(async move {
            tokio::join!(
                self.clone().run_jobs(queues.jobs),
                self.clone().run_pushes(queues.pushes),
                self.clone().run_subscriptions(),
                self.clone().run_health(),
            );
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::is_broken_pipe;

    #[test]
    fn a_write_to_a_closed_connection_is_told_from_other_failures() {
        let io = |k| redis::RedisError::from(std::io::Error::new(k, "x"));
        assert!(is_broken_pipe(&io(std::io::ErrorKind::BrokenPipe)));
        // A reset or an early end may come after Redis ran the commands: not sent again.
        assert!(!is_broken_pipe(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(!is_broken_pipe(&io(std::io::ErrorKind::UnexpectedEof)));
    }
}
