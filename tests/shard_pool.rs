//! The shard pool: pinned executors exchanging owned messages over the bounded mesh.

use std::sync::mpsc;

use flumen::shard::{available_cpus, shard_for_partition, ShardPool, ShardPoolConfig};

#[test]
fn every_shard_reaches_every_other_over_the_mesh() {
    let shards = 3;
    let config = ShardPoolConfig {
        shards,
        cpus: available_cpus(),
        io_memory_bytes: 512 << 10,
        mesh_channel_capacity: 4,
        name: "test-shard".into(),
    };
    let (report, reports) = mpsc::channel::<(u32, u32, u64)>();
    let pool = ShardPool::start::<(u32, u64), _, _>(&config, move |mut context| {
        let report = report.clone();
        async move {
            let mesh = context.mesh();
            let inboxes = context.take_inboxes();
            assert_eq!(inboxes.len(), context.shards as usize - 1);
            // More messages than a channel holds: senders must wait for the receivers.
            let sending = glommio::spawn_local(async move {
                for peer in (0..context.shards).filter(|&peer| peer != context.shard) {
                    for sequence in 0..20u64 {
                        mesh.send(peer, (context.shard, sequence)).await.unwrap();
                    }
                }
            });
            for inbox in &inboxes {
                for expected in 0..20u64 {
                    let (from, sequence) = inbox.recv().await.unwrap();
                    assert_eq!(from, inbox.from_shard);
                    assert_eq!(sequence, expected, "per-channel order");
                    report.send((context.shard, from, sequence)).unwrap();
                }
            }
            sending.await;
        }
    })
    .unwrap();
    pool.join().unwrap();
    let received: Vec<_> = reports.try_iter().collect();
    assert_eq!(received.len(), shards * (shards - 1) * 20);
    for to in 0..shards as u32 {
        for from in (0..shards as u32).filter(|&from| from != to) {
            let count = received
                .iter()
                .filter(|(t, f, _)| *t == to && *f == from)
                .count();
            assert_eq!(count, 20, "{from} -> {to}");
        }
    }
}

#[test]
fn placement_is_shared_by_everyone_who_knows_the_shard_count() {
    let owners: Vec<u32> = (0..4)
        .map(|partition| shard_for_partition("orders", partition, 2))
        .collect();
    assert_eq!(owners.iter().filter(|&&shard| shard == 0).count(), 2);
    assert_eq!(owners.iter().filter(|&&shard| shard == 1).count(), 2);
}
