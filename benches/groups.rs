//! Consumer-group costs on one broker: how long a group of 10 members takes to share
//! 100 partitions (first rebalance) and to absorb an 11th member, and how many offset
//! commits per second the coordinator makes durable. The broker runs in-process
//! (`EmbeddedBroker`, one shard) with the load; `scripts/bench-groups.sh` pins the
//! process. Run: `cargo bench --bench groups -- run`. Prints `name=value` lines.

use std::time::{Duration, Instant};

use flumen::EmbeddedBroker;
use flumen_client::{AsyncClient, Client, Consumer, ConsumerConfig, NoListener};

const PARTITIONS: u32 = 100;
const MEMBERS: usize = 10;

/// Waits until the group is stable with `members` members owning all partitions.
fn wait_stable(client: &mut Client, group: &str, members: usize) {
    loop {
        if let Ok(described) = client.describe_group(group) {
            let owned: usize = described
                .members
                .iter()
                .map(|member| {
                    flumen_client::assignor::decode_partitions(&member.assignment)
                        .map_or(0, |partitions| partitions.len())
                })
                .sum();
            if described.state == "Stable"
                && described.members.len() == members
                && owned == PARTITIONS as usize
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn start_member(bootstrap: String, assignor: &str) -> tokio::task::JoinHandle<()> {
    let mut config = ConsumerConfig::new(bootstrap);
    config.group_id = Some(format!("bench-{assignor}"));
    config.assignors = vec![assignor.to_owned()];
    config.heartbeat_interval = Duration::from_millis(100);
    tokio::spawn(async move {
        let mut consumer = Consumer::new(config);
        consumer.subscribe(&["bench"], NoListener).await.unwrap();
        loop {
            let _ = consumer.poll(Duration::from_millis(20)).await;
        }
    })
}

fn main() {
    if !std::env::args().any(|arg| arg == "run") {
        eprintln!("usage: groups run (see scripts/bench-groups.sh)");
        return;
    }
    let broker = EmbeddedBroker::start_with(|config| {
        config.shards = 1;
        config.group_initial_rebalance_delay_ms = 0;
    })
    .expect("broker starts");
    let bootstrap = broker.bootstrap().to_string();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("bench", PARTITIONS, &[])
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for assignor in ["range", "cooperative-sticky"] {
            let group = format!("bench-{assignor}");
            let watcher = {
                let address = broker.bootstrap();
                let group = group.clone();
                tokio::task::spawn_blocking(move || {
                    let mut client = Client::connect(address).unwrap();
                    let start = Instant::now();
                    wait_stable(&mut client, &group, MEMBERS);
                    (client, start.elapsed())
                })
            };
            let mut members: Vec<_> = (0..MEMBERS)
                .map(|_| start_member(bootstrap.clone(), assignor))
                .collect();
            let (mut client, first) = watcher.await.unwrap();
            println!(
                "rebalance_first_{assignor}_ms={:.1}",
                first.as_secs_f64() * 1e3
            );
            let group_for_join = group.clone();
            let watcher = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                wait_stable(&mut client, &group_for_join, MEMBERS + 1);
                start.elapsed()
            });
            members.push(start_member(bootstrap.clone(), assignor));
            let join = watcher.await.unwrap();
            println!(
                "rebalance_join_{assignor}_ms={:.1}",
                join.as_secs_f64() * 1e3
            );
            for member in members {
                member.abort();
            }
        }

        // Commits: each commit is one durable append to the group's offsets partition.
        for clients in [1usize, 8] {
            let deadline = Instant::now() + Duration::from_secs(5);
            let tasks: Vec<_> = (0..clients)
                .map(|index| {
                    let bootstrap = bootstrap.clone();
                    tokio::spawn(async move {
                        let mut client = AsyncClient::connect(bootstrap.as_str()).await.unwrap();
                        let mut commits = 0u64;
                        while Instant::now() < deadline {
                            let partition = (commits as u32 + index as u32) % PARTITIONS;
                            let outcomes = client
                                .commit_offsets(
                                    "bench-commits",
                                    &[("bench", partition, commits, None)],
                                )
                                .await
                                .unwrap();
                            assert!(outcomes.iter().all(Result::is_ok));
                            commits += 1;
                        }
                        commits
                    })
                })
                .collect();
            let start = Instant::now();
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            let rate = total as f64 / start.elapsed().as_secs_f64();
            println!("commits_per_s_{clients}_clients={rate:.0}");
        }
    });
    drop(broker);
}
