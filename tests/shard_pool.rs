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

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// A shard that cannot start (here, pinned to a CPU that does not exist) fails the
/// pool's start, and the shards that did start do not stay waiting for it: the start
/// waits for them, and their threads end.
#[test]
fn a_shard_that_cannot_start_does_not_leave_the_others_waiting() {
    let config = ShardPoolConfig {
        shards: 2,
        cpus: vec![available_cpus()[0], 4_000],
        io_memory_bytes: 512 << 10,
        mesh_channel_capacity: 4,
        name: "doomed".into(),
    };
    let started = ShardPool::start::<(), _, _>(&config, |_| async {});
    let failed = match started {
        Err(_) => true,
        Ok(pool) => pool.join().is_err(),
    };
    assert!(failed, "a shard on a CPU that does not exist started");
    // The started shard gave up and was waited for; its executor's helper threads
    // (the blocking pool) end on their own: a bounded wait for them (left waiting, the
    // shard would have kept them for good).
    for _ in 0..500 {
        if threads_named("doomed-") == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        threads_named("doomed-"),
        0,
        "the started shard's threads are left"
    );
}
