//! Three wsgate nodes on a real three-master Redis Cluster (started on free ports by the test,
//! killed at its end), sharded pub/sub: every client gets its group's publications once and in
//! order while one group's slot moves to another master mid-stream.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;

use support::redis::{RedisCluster, cli};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_once_and_in_order_while_a_slot_moves() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .expect("the cluster starts");
    let nodes_list = cluster
        .urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "[broker]\nkind = \"redis-cluster\"\nnodes = [{nodes_list}]\nprefix = \"cl\"\n\n[[route]]\npath = \"/room/{{room}}/\"\ngroup = \"room:{{room}}\"\nhistory = {{ size = 100, ttl = \"5m\" }}\n"
    );
    let nodes = [start(&toml).await, start(&toml).await, start(&toml).await];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    const GROUPS: usize = 4;
    const PER_GROUP: usize = 60;
    const EACH: usize = 50;
    // Shorter than next_text's own limit, so a missing publication is reported with its group.
    const SLOW: std::time::Duration = std::time::Duration::from_secs(8);
    let mut readers = Vec::new();
    for g in 0..GROUPS {
        for i in 0..PER_GROUP {
            let mut ws = connect(addrs[(g + i) % 3], &format!("/room/c{g}/")).await;
            let node = (g + i) % 3;
            readers.push(tokio::spawn(async move {
                let mut got = Vec::with_capacity(EACH);
                while got.len() < EACH {
                    match tokio::time::timeout(SLOW, next_text(&mut ws)).await {
                        Ok(m) => got.push(m),
                        Err(_) => panic!(
                            "room:c{g}, a member on node {node}: {} of {EACH} publications within {SLOW:?}: {got:?}",
                            got.len()
                        ),
                    }
                }
                let extra =
                    tokio::time::timeout(std::time::Duration::from_millis(300), next(&mut ws))
                        .await;
                (g, got, extra.ok())
            }));
        }
    }

    // The slot of room:c0's keys and channel, and a master that does not own it.
    let slot: u16 = cli(
        cluster.nodes[0].port,
        &["cluster", "keyslot", "cl:{room:c0}"],
    )
    .trim()
    .parse()
    .expect("a slot number");
    let owner = cluster.owner(slot);
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != owner)
        .expect("another master");
    let (moving_tx, moving_rx) = tokio::sync::oneshot::channel::<()>();
    let mut moving_tx = Some(moving_tx);
    let publishers: Vec<_> = (0..GROUPS)
        .map(|g| {
            let addrs = addrs.clone();
            let tx = if g == 0 { moving_tx.take() } else { None };
            tokio::spawn(async move {
                let mut tx = tx;
                let mut seed = 0x5851_f42d_u64.wrapping_mul(g as u64 + 1);
                for seq in 0..EACH {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let addr = addrs[(seed >> 33) as usize % addrs.len()];
                    let r = post(
                        addr,
                        &format!("/api/groups/room:c{g}/messages"),
                        Some("text/plain"),
                        format!("{seq:03}").as_bytes(),
                        "",
                    )
                    .await;
                    assert_eq!(r.status, 200, "publish {seq} to room:c{g}: {r:?}");
                    if seq == 15
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(());
                    }
                    if g == 0 {
                        // Spread room:c0's publications over the migration.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    moving_rx.await.expect("publisher 0 got going");
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.migrate_slot(slot, to);
        cluster
    })
    .await
    .expect("the slot moves");
    assert_eq!(cluster.owner(slot), to, "the slot moved");
    for p in publishers {
        p.await.expect("publisher");
    }
    for r in readers {
        let (g, got, extra) = r.await.expect("reader");
        assert!(
            extra.is_none(),
            "room:c{g}: a message after the last: {extra:?}"
        );
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(
            unique.len(),
            EACH,
            "room:c{g}: each publication once: {got:?}"
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "room:c{g}: out of order: {got:?}"
        );
    }
}
