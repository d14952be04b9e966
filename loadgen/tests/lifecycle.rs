//! What a run leaves behind: the topics it made are deleted when it ends (unless
//! `--keep-topics`), and Ctrl-C stops it cleanly: a partial report marked as such, exit
//! status 130, and no embedded broker data left on the disk. Waits are for events
//! (a progress line, the process's exit), never for time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

use flumen::EmbeddedBroker;
use flumen_client::Client;
use serde_json::Value;

fn topics_of(broker: &EmbeddedBroker) -> Vec<String> {
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let mut names: Vec<String> = client
        .metadata(None)
        .unwrap()
        .topics
        .into_iter()
        .filter(|topic| !topic.internal)
        .map(|topic| topic.name)
        .collect();
    names.sort();
    names
}

fn run_against(broker: &EmbeddedBroker, extra: &[&str]) {
    let bootstrap = broker.bootstrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args([
            "--bootstrap",
            &bootstrap,
            "--acks",
            "1,all",
            "--duration",
            "1",
        ])
        .args([
            "--warmup",
            "0",
            "--partitions",
            "2",
            "--message-size",
            "128",
        ])
        .args(["--quiet"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn runs_delete_their_topics_unless_told_to_keep_them() {
    let broker = EmbeddedBroker::start().unwrap();
    run_against(&broker, &["--topic", "deleted"]);
    assert_eq!(topics_of(&broker), Vec::<String>::new());

    run_against(&broker, &["--topic", "kept", "--keep-topics"]);
    let kept = topics_of(&broker);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].starts_with("kept-acks1-"), "{kept:?}");
    assert!(kept[1].starts_with("kept-acksall-"), "{kept:?}");
}

/// A temporary directory with a `data` directory for the embedded broker and the path
/// of the report in it.
fn run_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let json = dir.path().join("report.json");
    (dir, data, json)
}

/// An embedded open-loop run with its data in `data` and its report in `json`, read
/// until its first measured second is reported.
fn start_embedded_run(data: &Path, json: &Path) -> (Child, BufReader<ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args(["--embedded", "--data-dir", data.to_str().unwrap()])
        .args(["--acks", "1,all", "--duration", "600", "--warmup", "0.2"])
        .args(["--partitions", "2", "--message-size", "256"])
        .args(["--rate", "20000", "--json", json.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, |line| {
        line.starts_with("acks=1") && line.contains("produced") && !line.contains("warm-up")
    });
    (child, stderr)
}

/// Reads lines until one matches; panics if the output ends first.
fn read_until(stderr: &mut BufReader<ChildStderr>, matches: impl Fn(&str) -> bool) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "output ended");
        if matches(&line) {
            return;
        }
    }
}

/// Sends `signal` to the child.
fn send(child: &Child, signal: libc::c_int) {
    // SAFETY: signals a child this test started and has not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// Sends `SIGINT`, as a terminal's Ctrl-C would.
fn interrupt(child: &Child) {
    send(child, libc::SIGINT);
}

/// What is left in the data directory the embedded broker was given.
fn left_in(data: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(data)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn ctrl_c_stops_the_run_reports_what_ran_and_removes_the_broker_data() {
    let (_dir, data, json) = run_dirs();
    let (mut child, mut stderr) = start_embedded_run(&data, &json);
    interrupt(&child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "acks=all was never reached: {runs:?}");
    assert_eq!(runs[0]["acks"], "1");
    assert!(runs[0]["messages"].as_u64().unwrap() > 0);
    assert!(runs[0]["producer"]["msgs_per_s"].as_f64().unwrap() > 0.0);
    // The embedded broker's data directory went with it.
    let left = left_in(&data);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_second_signal_quits_at_once_and_still_removes_the_broker_data() {
    let (_dir, data, json) = run_dirs();
    let (mut child, mut stderr) = start_embedded_run(&data, &json);
    // Both signals wait while the process is stopped (two of one kind would merge into
    // one), so they reach it together: the second comes long before the run could
    // wind down after the first.
    send(&child, libc::SIGSTOP);
    interrupt(&child);
    send(&child, libc::SIGTERM);
    send(&child, libc::SIGCONT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("stopped: a second signal"), "{rest}");
    assert!(!json.exists(), "no report: the run did not finish");
    let left = left_in(&data);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_embedded_drain_larger_than_the_disk_is_refused_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args(["--embedded", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--scenario", "drain", "--backlog", "1000000GB", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--backlog 1000000GB does not fit"),
        "{stderr}"
    );
    let left = left_in(dir.path());
    assert!(left.is_empty(), "{left:?}");
}
