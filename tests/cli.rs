//! The real `flumen` binary: broker processes started and killed, and the CLI's produce
//! and consume, end to end over real sockets and files.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flumen_client::{
    Acks, BlockingConsumer, BlockingProducer, Client, ConsumerConfig, NoListener, ProduceError,
    ProducerConfig, Record,
};
use flumen_protocol::record::BatchBuilder;

const FLUMEN: &str = env!("CARGO_BIN_EXE_flumen");

struct Broker {
    child: Child,
    _config: Option<tempfile::TempPath>,
}

impl Broker {
    fn start(data_dir: &Path, address: SocketAddr) -> Self {
        Self::start_with(data_dir, address, "")
    }

    /// Starts a broker with `extra` appended to its configuration file.
    fn start_with(data_dir: &Path, address: SocketAddr, extra: &str) -> Self {
        // Groups: no wait for more members before the first rebalance, short sessions.
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config
            .write_all(
                b"group_initial_rebalance_delay_ms = 0\ngroup_session_timeout_min_ms = 100\n",
            )
            .unwrap();
        config.write_all(extra.as_bytes()).unwrap();
        let config = config.into_temp_path();
        let child = Command::new(FLUMEN)
            .args(["broker", "--shards", "2", "--listen", &address.to_string()])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("broker starts");
        Self::listening(child, address, Some(config))
    }

    /// Starts a broker with default settings, no configuration file and `args`, under the
    /// shell's `ulimit` with `limit` (such as `-n 128`).
    fn start_limited(data_dir: &Path, address: SocketAddr, limit: &str, args: &str) -> Self {
        let command = format!(
            "ulimit {limit} && exec {FLUMEN} broker --listen {address} --data-dir {} {args}",
            data_dir.display()
        );
        let child = Command::new("sh")
            .args(["-c", &command])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("broker starts");
        Self::listening(child, address, None)
    }

    /// Readiness, not timing: waits (bounded) until the port accepts connections.
    fn listening(
        mut child: Child,
        address: SocketAddr,
        config: Option<tempfile::TempPath>,
    ) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "the broker exited");
            assert!(Instant::now() < deadline, "broker did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            _config: config,
        }
    }

    fn stop(mut self) {
        // SIGTERM: graceful shutdown.
        signal(self.pid(), libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "graceful shutdown exits cleanly: {status}"
        );
    }

    /// Stops the broker process (SIGSTOP) until the returned guard is dropped (SIGCONT):
    /// its sockets stay open and nothing answers. Returns once every thread is stopped.
    fn pause(&self) -> Paused {
        let pid = self.pid();
        signal(pid, libc::SIGSTOP);
        let all_stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .all(|task| {
                    let stat = std::fs::read_to_string(task.unwrap().path().join("stat"));
                    // The state follows the parenthesised command name.
                    stat.is_ok_and(|stat| {
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with('T'))
                    })
                })
        };
        wait_until("the broker stopped", all_stopped);
        Paused(pid)
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// Sends `signal` to the broker process `pid`, which must take it.
fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: signals a child the test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// A stopped broker process, continued (SIGCONT) when dropped.
struct Paused(libc::pid_t);

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: signals a child the test started and has not reaped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests of this file run one at a time: each picks fixed ports for its broker (a
/// restarted broker must come back on the same ones), and two picking at once could
/// collide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the tests of this file to one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The killed broker's io_uring rings are torn down asynchronously by the kernel and can
/// keep its listening sockets open a moment after the process is gone; a connection made
/// then is reset. Waits (bounded) until the old listeners are gone.
fn wait_until_port_released(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the killed broker's port was never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_address() -> SocketAddr {
    // Three consecutive free ports: the shared one and one per shard.
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 65_000
            && (1..=2).all(|offset| TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

/// Every record of `topic`'s partition 0 from `offset` to its end: (offset, value).
fn fetch_all(client: &mut Client, topic: &str, mut offset: u64) -> Vec<(u64, String)> {
    let mut records = Vec::new();
    loop {
        let fetched = client.fetch(topic, 0, offset, 1 << 20, 0).unwrap();
        let batches = fetched.batches().unwrap();
        if batches.is_empty() {
            return records;
        }
        for batch in batches {
            for record in batch.records() {
                let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
                records.push((record.offset(), value));
                offset = record.offset() + 1;
            }
        }
    }
}

fn cli(address: SocketAddr, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(FLUMEN)
        .arg("--bootstrap")
        .arg(address.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_hundred_thousand_keyed_messages_through_the_cli_survive_a_restart() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let (ok, _, stderr) = cli(
        address,
        &["topic", "create", "events", "--partitions", "4"],
        None,
    );
    assert!(ok, "{stderr}");
    let total = 100_000;
    let input: String = (0..total)
        .map(|index| format!("key{}:value-{index}\n", index % 1000))
        .collect();
    let (ok, _, stderr) = cli(
        address,
        &["produce", "events", "--key-separator", ":"],
        Some(input.as_bytes()),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("acknowledged {total} records")),
        "{stderr}"
    );
    broker.stop();

    let broker = Broker::start(dir.path(), address);
    let max = total.to_string();
    let args = [
        "consume",
        "events",
        "--from-beginning",
        "--max-messages",
        &max,
        "--format",
        r"%p %o %k %s\n",
    ];
    let (ok, stdout, stderr) = cli(address, &args, None);
    assert!(ok, "{stderr}");
    let mut partitions_of_key: HashMap<String, u32> = HashMap::new();
    let mut last_in_partition: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut seen = vec![false; total];
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (partition, offset): (u32, u64) =
            (fields[0].parse().unwrap(), fields[1].parse().unwrap());
        let index: usize = fields[3].strip_prefix("value-").unwrap().parse().unwrap();
        assert_eq!(
            fields[2],
            format!("key{}", index % 1000),
            "key and value travel together"
        );
        assert!(!seen[index], "value {index} seen twice");
        seen[index] = true;
        let owner = *partitions_of_key
            .entry(fields[2].to_owned())
            .or_insert(partition);
        assert_eq!(owner, partition, "same key, same partition");
        if let Some((last_offset, last_index)) = last_in_partition.get(&partition) {
            assert_eq!(
                offset,
                last_offset + 1,
                "dense offsets in partition {partition}"
            );
            assert!(
                index > *last_index as usize,
                "input order kept within a partition"
            );
        }
        last_in_partition.insert(partition, (offset, index as u64));
    }
    assert!(seen.iter().all(|&found| found), "every message came back");
    assert_eq!(
        last_in_partition.len(),
        4,
        "keys spread over all partitions"
    );
    broker.stop();
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let mut client = Client::connect(address).unwrap();
    client.create_topic("durable", 1, &[]).unwrap();
    // Idempotent batches: after the restart, the partition must still recognise a retry.
    let (producer_id, epoch) = client.init_producer_id().unwrap();
    let idempotent_batch = |index: u64| {
        let value = format!("message-{index}");
        let mut builder = BatchBuilder::new(0);
        builder.push(index as i64, None, Some(value.as_bytes()), &[]);
        builder.producer(producer_id, epoch, index as i32);
        (builder.build().unwrap(), value)
    };
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    let mut broker = Some(broker);
    let mut killer = None;
    for index in 0..100_000u64 {
        let (batch, value) = idempotent_batch(index);
        match client.produce("durable", 0, &[batch.as_bytes()], Acks::All) {
            Ok(result) => acknowledged.push((result.base_offset, value)),
            Err(_) => break,
        }
        if index == 300 {
            // Kill mid-stream from another thread while this one keeps producing.
            let victim = broker.take().unwrap();
            killer = Some(std::thread::spawn(move || victim.kill_9()));
        }
    }
    killer.expect("the broker was killed").join().unwrap();
    assert!(acknowledged.len() > 300);
    wait_until_port_released(address);
    let broker = Broker::start(dir.path(), address);
    let mut client = Client::connect(address).unwrap();
    let records = fetch_all(&mut client, "durable", 0);
    let offset = records.last().map_or(0, |(last, _)| last + 1);
    let stored: HashMap<u64, String> = records.into_iter().collect();
    for (offset, value) in &acknowledged {
        assert_eq!(
            stored.get(offset),
            Some(value),
            "acknowledged offset {offset} lost or changed"
        );
    }
    // Producer state was rebuilt from the log (no clean-shutdown snapshot): a retry of the
    // last acknowledged batch is a duplicate, answered with its original offset.
    let last = acknowledged.len() as u64 - 1;
    let (retry, _) = idempotent_batch(last);
    let answer = client
        .produce("durable", 0, &[retry.as_bytes()], Acks::All)
        .unwrap();
    assert_eq!(
        flumen_protocol::wire::ErrorCode::from_u16(answer.outcome.error_code),
        flumen_protocol::wire::ErrorCode::DuplicateSequence
    );
    assert_eq!(answer.base_offset, acknowledged[last as usize].0);
    let log_end = client
        .list_offsets("durable", 0, flumen_client::LATEST_TIMESTAMP)
        .unwrap()
        .offset;
    assert_eq!(log_end, offset, "the duplicate was not appended");
    broker.stop();
}

/// Retention recycles deleted segments as the next ones (`recycle_segments`, on by
/// default), so the files hold old records after the new ones' end. A broker killed
/// with kill -9 while producing into recycled files comes back with every acknowledged
/// record from its log start on, offsets dense, and none of the deleted ones.
#[test]
fn acknowledged_messages_survive_kill_9_while_retention_recycles_segments() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start_with(dir.path(), address, "retention_check_interval_ms = 20\n");
    let mut client = Client::connect(address).unwrap();
    let configs = [
        ("segment.bytes", "1048576"),
        ("retention.bytes", "2097152"),
        ("max.message.bytes", "65536"),
    ];
    client.create_topic("recycled", 1, &configs).unwrap();
    let spare = dir.path().join("recycled").join("0").join("next.log.spare");
    // A recycled spare holds a deleted segment's records (an empty one made ahead of a
    // roll holds none, and is a 4 MiB preallocation).
    let recycled_spare = || {
        std::fs::read(&spare)
            .is_ok_and(|bytes| bytes.len() <= 1 << 20 && bytes.iter().any(|&byte| byte != 0))
    };
    let value = |index: u64| format!("{index:08}:{}", "r".repeat(8_000));
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let (mut broker, mut killer, mut kill_at) = (Some(broker), None, None);
    for index in 0..100_000u64 {
        let mut builder = BatchBuilder::new(0);
        builder.push(index as i64, None, Some(value(index).as_bytes()), &[]);
        let batch = builder.build().unwrap();
        match client.produce("recycled", 0, &[batch.as_bytes()], Acks::All) {
            Ok(result) => acknowledged.insert(result.base_offset, value(index)),
            Err(_) => break,
        };
        // Once a recycled spare is seen, write two segments more (the rolls take
        // recycled spares), then kill mid-stream from another thread.
        if kill_at.is_none() && recycled_spare() {
            kill_at = Some(index + 300);
        }
        if Some(index) == kill_at {
            let victim = broker.take().unwrap();
            killer = Some(std::thread::spawn(move || victim.kill_9()));
        }
    }
    assert!(kill_at.is_some(), "retention never recycled a segment");
    killer.expect("the broker was killed").join().unwrap();
    wait_until_port_released(address);
    let broker = Broker::start(dir.path(), address);
    let mut client = Client::connect(address).unwrap();
    let start = client
        .list_offsets("recycled", 0, flumen_client::EARLIEST_TIMESTAMP)
        .unwrap()
        .offset;
    assert!(start > 0, "retention deleted the first segments");
    let mut offset = start;
    for (at, stored) in fetch_all(&mut client, "recycled", start) {
        assert_eq!(at, offset, "offsets are dense");
        if let Some(expected) = acknowledged.get(&offset) {
            assert_eq!(&stored, expected, "offset {offset} changed");
        } else {
            assert!(
                offset > *acknowledged.keys().next_back().unwrap(),
                "offset {offset} was never acknowledged yet is stored: {}",
                &stored[..8]
            );
        }
        offset += 1;
    }
    let lost: Vec<_> = acknowledged
        .range(start..)
        .filter(|(at, _)| **at >= offset)
        .collect();
    assert!(lost.is_empty(), "acknowledged offsets lost: {}", lost.len());
    broker.stop();
}

#[test]
fn start_up_problems_get_one_clear_line_and_a_non_zero_exit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let second = Command::new(FLUMEN)
        .args(["broker", "--shards", "1", "--listen", &address.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("already in use"), "{message}");
    broker.stop();

    let broker = Broker::start(dir.path(), address);
    let same_dir = Command::new(FLUMEN)
        .args([
            "broker",
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!same_dir.status.success());
    let message = String::from_utf8_lossy(&same_dir.stderr);
    assert!(message.contains("in use by another broker"), "{message}");
    broker.stop();

    // A locked-memory limit below what the shards' io_uring buffers need.
    let low_memlock = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 64 && exec {FLUMEN} broker --shards 2 --listen 127.0.0.1:0 --data-dir {}",
            dir.path().join("memlock").display()
        ))
        .output()
        .unwrap();
    assert!(!low_memlock.status.success());
    let message = String::from_utf8_lossy(&low_memlock.stderr);
    assert!(message.contains("locked memory limit"), "{message}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let output = Command::new(FLUMEN)
        .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not writable"));

    let (ok, _, stderr) = cli(address, &["topic", "list"], None);
    assert!(!ok && stderr.contains("cannot reach a broker"), "{stderr}");
}

/// Parses `group describe` rows into `(partition, committed, log end, lag)`.
fn described(output: &str) -> Vec<(u32, u64, u64, u64)> {
    output
        .lines()
        .filter(|line| line.starts_with("events"))
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(4)
                .map(|field| field.parse().unwrap())
                .collect();
            (fields[0] as u32, fields[1], fields[2], fields[3])
        })
        .collect()
}

#[test]
fn a_group_resumes_where_it_committed_across_a_kill_9_and_can_be_reset_and_deleted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    // One partition: which records a --max-messages read takes is then fixed.
    let (ok, _, error) = cli(
        address,
        &["topic", "create", "events", "--partitions", "1"],
        None,
    );
    assert!(ok, "{error}");
    let lines: String = (0..10).map(|index| format!("event-{index}\n")).collect();
    let (ok, _, error) = cli(address, &["produce", "events"], Some(lines.as_bytes()));
    assert!(ok, "{error}");

    let read = |args: &[&str]| {
        let mut all = vec!["consume", "events", "--group", "g", "--timeout-ms", "3000"];
        all.extend_from_slice(args);
        let (ok, out, error) = cli(address, &all, None);
        assert!(ok, "{error}");
        out.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let first = read(&["--from-beginning", "--max-messages", "4"]);
    assert_eq!(first.len(), 4);
    let (ok, out, _) = cli(address, &["group", "describe", "g"], None);
    assert!(ok);
    let rows = described(&out);
    assert_eq!(rows.iter().map(|row| row.1).sum::<u64>(), 4, "{out}");
    assert_eq!(rows.iter().map(|row| row.3).sum::<u64>(), 6, "{out}");

    // Crash and restart: the committed positions come back from __consumer_offsets.
    broker.kill_9();
    wait_until_port_released(address);
    let broker = Broker::start(dir.path(), address);
    let (ok, out_after, _) = cli(address, &["group", "describe", "g"], None);
    assert!(ok);
    assert_eq!(
        described(&out_after),
        rows,
        "same positions and lag after kill -9"
    );

    // The group goes on where it stopped: together, every record exactly once.
    let rest = read(&["--from-beginning"]);
    let mut everything: Vec<String> = first.into_iter().chain(rest).collect();
    everything.sort();
    let mut expected: Vec<String> = (0..10).map(|index| format!("event-{index}")).collect();
    expected.sort();
    assert_eq!(everything, expected);

    let (ok, out, _) = cli(address, &["group", "list"], None);
    assert!(ok && out.lines().any(|line| line == "g"), "{out}");
    let reset = [
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "events",
        "--to-earliest",
    ];
    let (ok, out, _) = cli(address, &[&reset[..], &["--dry-run"]].concat(), None);
    assert!(ok && out.contains("NEW"), "{out}");
    let (_, out, _) = cli(address, &["group", "describe", "g"], None);
    assert!(
        described(&out).iter().all(|row| row.3 == 0),
        "a dry run commits nothing"
    );
    let (ok, _, error) = cli(address, &reset, None);
    assert!(ok, "{error}");
    let (_, out, _) = cli(address, &["group", "describe", "g"], None);
    assert_eq!(described(&out).iter().map(|row| row.3).sum::<u64>(), 10);

    let (ok, _, error) = cli(address, &["group", "delete", "g"], None);
    assert!(ok, "{error}");
    let (ok, _, error) = cli(address, &["group", "describe", "g"], None);
    assert!(
        !ok && error.contains("no committed positions and no members"),
        "{error}"
    );
    let (ok, _, error) = cli(address, &["group", "delete", "nobody"], None);
    assert!(!ok && error.contains("GroupIdNotFound"), "{error}");
    broker.stop();
}

/// A `flumen consume --group` process whose printed `partition offset` lines are
/// collected by a reader thread.
struct GroupMember {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn group_member(
    address: SocketAddr,
    seen: &std::sync::Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
) -> GroupMember {
    use std::io::BufRead;
    let mut child = Command::new(FLUMEN)
        .arg("--bootstrap")
        .arg(address.to_string())
        .args(["consume", "jobs", "--group", "workers", "--from-beginning"])
        .args(["--session-timeout-ms", "1000", "--format", r"%p %o\n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::clone(seen);
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut fields = line.split(' ');
            let partition = fields.next().unwrap().parse().unwrap();
            let offset = fields.next().unwrap().parse().unwrap();
            seen.lock().unwrap().push((partition, offset));
        }
    });
    GroupMember {
        child,
        reader: Some(reader),
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// `group describe` rows: `(members, owned partitions listed)`.
fn group_members(address: SocketAddr) -> (usize, usize) {
    let (ok, out, _) = cli(address, &["group", "describe", "workers"], None);
    if !ok {
        return (0, 0);
    }
    let members: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("  member "))
        .collect();
    let owned = members
        .iter()
        .map(|line| line.rsplit(": ").next().unwrap_or(""))
        .flat_map(|list| list.split(',').filter(|part| !part.is_empty()))
        .count();
    (members.len(), owned)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_consumer_processes_share_a_topic_and_one_killed_with_kill_9_loses_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let (ok, _, error) = cli(
        address,
        &["topic", "create", "jobs", "--partitions", "12"],
        None,
    );
    assert!(ok, "{error}");
    let produce = |range: std::ops::Range<u32>| {
        let lines: String = range
            .map(|index| format!("k{}:job-{index}\n", index % 97))
            .collect();
        let (ok, _, error) = cli(
            address,
            &["produce", "jobs", "--key-separator", ":"],
            Some(lines.as_bytes()),
        );
        assert!(ok, "{error}");
    };
    produce(0..1_200);

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut members: Vec<GroupMember> = (0..3).map(|_| group_member(address, &seen)).collect();
    wait_until("three members share all 12 partitions", || {
        group_members(address) == (3, 12)
    });
    // Positions of a group with active members cannot be reset from outside.
    let (ok, _, error) = cli(
        address,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
        None,
    );
    assert!(!ok && error.contains("active members"), "{error}");
    wait_until("the first 1,200 records are read", || {
        let seen = seen.lock().unwrap();
        seen.iter().collect::<std::collections::BTreeSet<_>>().len() >= 1_200
    });

    // kill -9 one member: after its session expires the other two take its partitions.
    let victim = members.remove(0);
    drop(victim); // SIGKILL, then reap
    produce(1_200..2_400);
    wait_until("two members share all 12 partitions", || {
        group_members(address) == (2, 12)
    });
    wait_until("all 2,400 records are read", || {
        let seen = seen.lock().unwrap();
        seen.iter().collect::<std::collections::BTreeSet<_>>().len() >= 2_400
    });
    let seen = seen.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 2_400, "nothing lost");
    // Committed after every poll: only what the killed member printed but had not yet
    // committed can be read twice.
    assert!(
        seen.len() - distinct.len() <= 12 * 500,
        "{} duplicates",
        seen.len() - distinct.len()
    );
    drop(members);
    broker.stop();
}

/// With no shard count chosen, the broker starts one shard per CPU as far as the
/// locked-memory limit allows, instead of refusing to start (a machine with many CPUs
/// and the usual 8 MiB limit): under 1 MiB of it, one shard of 1 MiB.
#[test]
fn the_default_shard_count_fits_the_locked_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start_limited(dir.path(), address, "-l 1024", "");
    let metadata = Client::connect(address).unwrap().metadata(None).unwrap();
    assert_eq!(metadata.brokers[0].shards.len(), 1);
    broker.stop();
}

/// A topic some of whose partitions cannot be opened (here: out of file descriptors) is
/// not created: the creator gets an error saying why, and the broker keeps serving, with
/// the descriptors back for a smaller topic, and the name free for a retry.
#[test]
fn a_topic_whose_partitions_cannot_all_be_opened_is_not_created() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start_limited(dir.path(), address, "-n 128", "--shards 1");
    let mut client = Client::connect(address).unwrap();
    let error = client
        .create_topic("big", 200, &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Too many open files") && error.contains("the topic was not created"),
        "{error}"
    );
    let topics = client.metadata(None).unwrap().topics;
    assert!(topics.iter().all(|topic| topic.name != "big"), "{topics:?}");
    assert!(
        !dir.path().join("big").exists(),
        "the topic's files are removed"
    );

    client.create_topic("big", 8, &[]).unwrap();
    let (ok, stdout, stderr) = cli(
        address,
        &["produce", "big", "--partition", "7"],
        Some(b"x\n"),
    );
    assert!(
        ok && stderr.contains("acknowledged 1 record "),
        "{stdout}{stderr}"
    );
    let fetched = client.fetch("big", 7, 0, 1 << 20, 0).unwrap();
    assert_eq!(fetched.batches().unwrap().len(), 1);
    broker.stop();
}

/// `produce` sends each line's bytes as they are, UTF-8 or not, splitting keys on the
/// separator's bytes and dropping `\n` or `\r\n`.
#[test]
fn produce_sends_lines_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let (ok, _, stderr) = cli(
        address,
        &["topic", "create", "raw", "--partitions", "1"],
        None,
    );
    assert!(ok, "{stderr}");
    let input = b"a\n\xff\xfe\nk:\xc3v\r\nlast";
    let (ok, _, stderr) = cli(
        address,
        &["produce", "raw", "--key-separator", ":", "--partition", "0"],
        Some(input),
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("acknowledged 4 records"), "{stderr}");
    let mut client = Client::connect(address).unwrap();
    let fetched = client.fetch("raw", 0, 0, 1 << 20, 0).unwrap();
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = fetched
        .batches()
        .unwrap()
        .iter()
        .flat_map(|batch| batch.records())
        .map(|record| {
            (
                record.key().map(<[u8]>::to_vec),
                record.value().unwrap().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        records,
        vec![
            (None, b"a".to_vec()),
            (None, b"\xff\xfe".to_vec()),
            (Some(b"k".to_vec()), b"\xc3v".to_vec()),
            (None, b"last".to_vec()),
        ]
    );
    broker.stop();
}

/// A broker that stops answering (its process stopped with SIGSTOP, its sockets still
/// open) costs a group consumer a bounded wait per call, not a hang: `poll`
/// reports the timeout, and once the broker runs again the consumer joins on fresh
/// connections (the old ones still owe answers to abandoned requests) and reads.
#[test]
fn a_consumer_reports_a_broker_that_stopped_answering_and_goes_on_once_it_answers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    let mut client = Client::connect(address).unwrap();
    client.create_topic("frozen", 1, &[]).unwrap();
    let (ok, _, stderr) = cli(address, &["produce", "frozen"], Some(b"before\n"));
    assert!(ok, "{stderr}");

    let mut config = ConsumerConfig::new(address.to_string());
    config.group_id = Some("thawed".into());
    config.request_timeout = Duration::from_millis(500);
    // A join is given the rebalance's time on top of the request's (the broker holds it
    // until the group has settled): this bounds it.
    config.max_poll_interval = Duration::from_secs(1);
    let consumer = BlockingConsumer::new(config).unwrap();
    consumer.subscribe(&["frozen"], NoListener).unwrap();
    let stopped = broker.pause();
    let stalled = consumer.poll(Duration::from_secs(60));
    drop(stopped);
    let error = stalled.expect_err("no answer is an error").to_string();
    assert!(error.contains("no answer within 1.5s"), "{error}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut values = Vec::new();
    while values.is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing read after the broker resumed"
        );
        // Errors while the group settles are retried by the next poll.
        if let Ok(records) = consumer.poll(Duration::from_millis(200)) {
            values.extend(
                records
                    .iter()
                    .map(|record| record.value().map(<[u8]>::to_vec)),
            );
        }
    }
    assert_eq!(values, vec![Some(b"before".to_vec())]);
    drop(consumer);
    broker.stop();
}

/// A producer whose broker stops answering (SIGSTOP: its sockets stay open) fails the
/// records it holds once their delivery timeout passes, instead of waiting forever, and
/// delivers again on fresh connections once the broker runs.
#[test]
fn a_producer_fails_records_a_stopped_broker_never_answers_and_delivers_once_it_runs() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let broker = Broker::start(dir.path(), address);
    Client::connect(address)
        .unwrap()
        .create_topic("frozen", 1, &[])
        .unwrap();
    let mut config = ProducerConfig::new(address.to_string());
    config.delivery_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_millis(500);
    let producer = BlockingProducer::start(config).unwrap();
    let first = producer
        .send(Record::new("frozen", b"first".to_vec()))
        .wait();
    assert_eq!(first.expect("delivered").offset, Some(0));

    let stopped = broker.pause();
    let stalled = producer
        .send(Record::new("frozen", b"lost".to_vec()))
        .wait();
    drop(stopped);
    assert!(
        matches!(stalled, Err(ProduceError::TimedOut(_))),
        "{stalled:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let offset = loop {
        assert!(
            Instant::now() < deadline,
            "nothing delivered after the broker resumed"
        );
        if let Ok(delivery) = producer
            .send(Record::new("frozen", b"after".to_vec()))
            .wait()
        {
            break delivery.offset.expect("an offset");
        }
    };
    let mut client = Client::connect(address).unwrap();
    let values: Vec<String> = fetch_all(&mut client, "frozen", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values.first().map(String::as_str), Some("first"));
    assert_eq!(values.last().map(String::as_str), Some("after"));
    assert_eq!(offset as usize, values.len() - 1);
    producer.close();
    broker.stop();
}
