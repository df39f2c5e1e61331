//! One behaviour suite for every broker: each check takes a constructor for the broker under test
//! (given which groups keep history and how much), so the memory broker and any broker for many
//! nodes are held to the same contract (`src/broker/mod.rs`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use wsgate::broker::policy::{GroupPattern, Policies, StreamPolicy};
use wsgate::broker::{
    Broker, Handler, HistoryQuery, Kind, Position, PresenceEntry, Publication, Recovery, Replay,
};

/// Builds the broker under test; `history` says which groups keep a stream.
pub type Make = dyn Fn(Policies) -> Arc<dyn Broker>;

/// A handler that records what the broker delivered, in order.
#[derive(Debug, Default)]
pub struct Recorder(pub Mutex<Vec<Publication>>);

impl Handler for Recorder {
    fn handle(&self, p: &Publication) -> usize {
        self.0.lock().unwrap().push(p.clone());
        1
    }
}

/// `h:*` keeps 5 publications for a minute.
fn policies() -> Policies {
    Policies::new(vec![(
        GroupPattern::new("h:*"),
        StreamPolicy {
            size: 5,
            ttl: Duration::from_secs(60),
        },
    )])
}

/// Subscribes this node to `group` as the hub does for its first member, and waits until the
/// broker is ready to deliver it (a join with nothing to replay answers then).
async fn subscribe(b: &Arc<dyn Broker>, group: &str) {
    b.subscribe(group);
    b.attach(group, HistoryQuery::Live, Box::new(|_| {}))
        .await
        .expect("the broker subscribes");
}

/// Waits (bounded) until the recorder holds `n` publications; a broker across the network
/// delivers after the publish returns.
async fn delivered(rec: &Recorder, n: usize) -> Vec<Publication> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = rec.0.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} publications delivered",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn setup(make: &Make) -> (Arc<dyn Broker>, Arc<Recorder>) {
    let b = make(policies());
    let r = Arc::new(Recorder::default());
    let h: Arc<dyn Handler> = r.clone();
    let weak: Weak<dyn Handler> = Arc::downgrade(&h);
    b.set_handler(weak);
    // The recorder must outlive the broker's weak reference for the whole check.
    std::mem::forget(h);
    (b, r)
}

fn text(group: &str, s: &str) -> Publication {
    let mut p = Publication::new(group, Bytes::copy_from_slice(s.as_bytes()), Kind::Text);
    p.origin = 1;
    p
}

async fn publish(b: &dyn Broker, p: Publication) -> Option<Position> {
    b.publish(p)
        .await
        .expect("the broker takes a publish")
        .position
}

async fn history(b: &dyn Broker, group: &str, q: HistoryQuery) -> Replay {
    b.history(group, q).await.expect("the broker answers")
}

fn offsets(r: &Replay) -> Vec<u64> {
    r.publications
        .iter()
        .map(|p| {
            p.position
                .as_ref()
                .expect("a kept publication has a position")
                .offset
        })
        .collect()
}

/// Publications of a group with history get consecutive offsets in one epoch and are delivered,
/// once each and in order, with them; a group without history gets no position.
pub async fn positions_and_delivery(make: &Make) {
    let (b, rec) = setup(make);
    subscribe(&b, "h:1").await;
    subscribe(&b, "plain").await;
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(publish(&*b, text("h:1", &i.to_string())).await.unwrap());
    }
    assert_eq!(
        got.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(got.iter().all(|p| p.epoch == got[0].epoch));
    assert_eq!(publish(&*b, text("plain", "x")).await, None);
    let seen = delivered(&rec, 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        rec.0.lock().unwrap().len(),
        4,
        "each publication delivered once"
    );
    assert_eq!(
        seen[2].position,
        Some(got[2].clone()),
        "delivered with its position"
    );
    assert_eq!(&seen[0].data[..], b"0");
}

/// Recovery is all or nothing, and says why not.
pub async fn recovery(make: &Make) {
    let (b, _) = setup(make);
    let mut pos = Vec::new();
    for i in 0..8 {
        pos.push(publish(&*b, text("h:r", &i.to_string())).await.unwrap());
    }
    let since = |p: &Position, limit| HistoryQuery::Since {
        since: p.clone(),
        limit,
    };
    let r = history(&*b, "h:r", since(&pos[5], 100)).await;
    assert_eq!(r.recovery, Recovery::Recovered);
    assert_eq!(offsets(&r), vec![7, 8]);
    assert_eq!(r.top.as_ref().unwrap().offset, 8);
    let r = history(&*b, "h:r", since(&pos[7], 100)).await;
    assert_eq!(
        (r.recovery.clone(), offsets(&r)),
        (Recovery::Recovered, vec![])
    );
    // Five kept (4..=8): after offset 1, offsets 2 and 3 are gone.
    let r = history(&*b, "h:r", since(&pos[0], 100)).await;
    assert!(
        matches!(&r.recovery, Recovery::Lost(w) if w.contains("no longer in history")),
        "{r:?}"
    );
    assert!(r.publications.is_empty(), "never a partial recovery");
    let mut other = pos[5].clone();
    other.epoch = Arc::from("not-an-epoch");
    let r = history(&*b, "h:r", since(&other, 100)).await;
    assert!(
        matches!(&r.recovery, Recovery::Lost(w) if w.contains("epoch")),
        "{r:?}"
    );
    let r = history(&*b, "h:r", since(&pos[4], 2)).await;
    assert!(
        matches!(&r.recovery, Recovery::Lost(w) if w.contains("recovery_max_publications")),
        "{r:?}"
    );
    let mut ahead = pos[7].clone();
    ahead.offset = 99;
    let r = history(&*b, "h:r", since(&ahead, 100)).await;
    assert!(
        matches!(&r.recovery, Recovery::Lost(w) if w.contains("ahead")),
        "{r:?}"
    );
    let r = history(&*b, "plain", since(&pos[0], 100)).await;
    assert!(
        matches!(&r.recovery, Recovery::Lost(w) if w.contains("no history")),
        "{r:?}"
    );
}

/// Replay takes the newest, within the count and the age.
pub async fn replay_bounds(make: &Make) {
    let (b, _) = setup(make);
    for i in 0..5 {
        publish(&*b, text("h:p", &i.to_string())).await;
    }
    let r = history(
        &*b,
        "h:p",
        HistoryQuery::Last {
            last: 2,
            within: Duration::from_secs(30),
        },
    )
    .await;
    assert_eq!(offsets(&r), vec![4, 5]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = history(
        &*b,
        "h:p",
        HistoryQuery::Last {
            last: 5,
            within: Duration::from_millis(20),
        },
    )
    .await;
    assert!(r.publications.is_empty(), "older than `within`");
}

/// `attach` runs at a seam: every publication is either in its replay or delivered after it,
/// never both and never neither, however publishes race it.
pub async fn attach_seam(make: &Make) {
    let (b, rec) = setup(make);
    subscribe(&b, "h:s").await;
    let b2 = b.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            publish(&*b2, text("h:s", &i.to_string())).await;
            tokio::task::yield_now().await;
        }
    });
    let mut seams = Vec::new();
    for _ in 0..20 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rec = rec.clone();
        b.attach(
            "h:s",
            HistoryQuery::Last {
                last: 5,
                within: Duration::from_secs(60),
            },
            Box::new(move |r: &Replay| {
                let live_from = rec.0.lock().unwrap().len();
                let _ = tx.send((offsets(r), live_from, r.top.clone()));
            }),
        )
        .await
        .expect("attach");
        seams.push(rx.await.unwrap());
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    let delivered = delivered(&rec, 200).await;
    for (replayed, live_from, top) in seams {
        let top = top.map_or(0, |t| t.offset);
        if let Some(last) = replayed.last() {
            assert_eq!(*last, top, "the replay ends at the stream's top");
        }
        // Everything delivered after the seam comes right after the top.
        if let Some(next) = delivered.get(live_from) {
            assert_eq!(next.position.as_ref().unwrap().offset, top + 1);
        }
    }
}

/// Presence lists who is in a group, and forgets who left.
pub async fn presence(make: &Make) {
    let (b, _) = setup(make);
    for conn in [3, 1, 2] {
        b.presence_add(
            "g",
            PresenceEntry {
                node: 1,
                conn,
                user: (conn == 2).then(|| Arc::from("ann")),
                info: (conn == 1).then(|| Arc::from("{\"seat\":4}")),
            },
        );
    }
    b.presence_remove("g", 3);
    let mut list = b.presence("g").await.unwrap();
    list.sort_by_key(|e| e.conn);
    assert_eq!(list.iter().map(|e| e.conn).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(list[1].user.as_deref(), Some("ann"));
    assert_eq!(list[0].info.as_deref(), Some("{\"seat\":4}"));
    b.presence_remove("g", 1);
    b.presence_remove("g", 2);
    assert!(b.presence("g").await.unwrap().is_empty());
    assert!(b.presence("nobody").await.unwrap().is_empty());
}
