//! The load generator as users run it, against its embedded broker: the ack-mode
//! matrix, an open-loop run, the backlog drain and the idle-cost scenario, checking
//! that the reports hold every field with plausible values and counts that add up.
//! Nothing here depends on how fast the machine is.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args(args)
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn percentiles(latency: &Value) -> Vec<u64> {
    ["p50", "p90", "p99", "p999", "p9999", "max"]
        .iter()
        .map(|key| {
            latency[*key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key}: {latency}"))
        })
        .collect()
}

fn assert_ordered(latency: &Value) {
    let values = percentiles(latency);
    assert!(values[0] > 0, "{latency}");
    assert!(
        values.windows(2).all(|pair| pair[0] <= pair[1]),
        "{values:?}"
    );
}

/// Sum over a run's time series of `rate × window`: the records the windows saw.
fn series_total(run: &Value, rate: &str) -> f64 {
    run["time_series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point[rate].as_f64().unwrap() * point["window_s"].as_f64().unwrap())
        .sum()
}

#[test]
fn a_five_second_embedded_ack_mode_matrix_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let plot = dir.path().join("plot.svg");
    let logs = dir.path().join("hlog");
    let output = loadgen(&[
        "--embedded",
        "--duration",
        "5",
        "--warmup",
        "0.5",
        "--acks",
        "0,1,all",
        "--message-size",
        "512",
        "--partitions",
        "4",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--hdr-log",
        logs.to_str().unwrap(),
    ]);
    let table = succeeded(&output);
    for mode in ["0 ", "1 ", "all "] {
        assert_eq!(
            table.lines().filter(|line| line.starts_with(mode)).count(),
            1,
            "one row for acks={mode}:\n{table}"
        );
    }
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(
        progress.contains("acks=all") && progress.contains("msg/s"),
        "a progress line while running:\n{progress}"
    );

    let report = read_json(&json);
    assert_eq!(report["schema_version"], 1);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    assert!(report["machine"]["memory_bytes"].as_u64().unwrap() > 0);
    assert!(!report["machine"]["disk"]["filesystem"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(report["broker"]["embedded"], true);
    assert!(report["broker"]["fsync_policy"]
        .as_str()
        .unwrap()
        .contains("fdatasync"));
    assert_eq!(report["config"]["message_size"], "512");
    assert_eq!(report["config"]["mode"], "max-rate");
    let runs = report["runs"].as_array().unwrap();
    let modes: Vec<&str> = runs
        .iter()
        .map(|run| run["acks"].as_str().unwrap())
        .collect();
    assert_eq!(modes, vec!["0", "1", "all"]);
    for run in runs {
        let messages = run["messages"].as_u64().unwrap();
        let rate = run["producer"]["msgs_per_s"].as_f64().unwrap();
        let megabytes = run["producer"]["mb_per_s"].as_f64().unwrap();
        assert!(messages > 0 && rate > 0.0, "{run}");
        // Counts add up: the rate is the messages over the 5 measured seconds, at 512
        // bytes each.
        assert!((rate * 5.0 - messages as f64).abs() < 1.0, "{run}");
        assert!((megabytes - rate * 512.0 / 1e6).abs() < 1e-6, "{run}");
        assert!(
            run["consumer"]["msgs_per_s"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        assert_ordered(&run["publish_latency_us"]);
        assert_ordered(&run["end_to_end_latency_us"]);
        assert!(run["send_slip_us"].is_null(), "closed loop has no schedule");
        // The hiccup meter slept 1 ms at a time through the 5 measured seconds: each
        // sleep took at least a microsecond longer than asked (the floor recorded).
        assert_ordered(&run["hiccups_us"]);
        assert_eq!(run["errors"], 0);
        assert_eq!(run["unconsumed"], 0, "every record produced was consumed");
        // The time series saw every record produced (warm-up included), and consumers
        // read every one of them.
        let produced = series_total(run, "producer_msgs_per_s");
        let consumed = series_total(run, "consumer_msgs_per_s");
        assert!(produced >= messages as f64 - 1.0, "{produced} < {messages}");
        assert!(
            (produced - consumed).abs() < 1.0,
            "{produced} vs {consumed}"
        );
        let series = run["time_series"].as_array().unwrap();
        assert!(series.len() >= 5, "a point a second: {}", series.len());
        assert_eq!(series[0]["warmup"], true);
        assert!(series.iter().all(|point| point["hiccup_max_us"].is_u64()));
        // One interval log per ack mode and kind, an interval a second.
        for kind in ["publish", "end-to-end"] {
            let log = logs.join(format!(
                "acks-{}.{kind}.hlog",
                run["acks"].as_str().unwrap()
            ));
            let text = std::fs::read_to_string(&log).unwrap();
            let intervals = text.lines().filter(|line| line.starts_with("Tag=")).count();
            assert_eq!(intervals, series.len(), "{}", log.display());
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    // Three publish and three end-to-end curves, three produced and three consumed.
    assert_eq!(svg.matches("<polyline").count(), 12);
}

/// At a target rate the schedule fixes how many records are sent in the measured
/// period, whatever the machine: exactly rate × duration.
#[test]
fn an_open_loop_run_sends_exactly_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = loadgen(&[
        "--embedded",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--acks",
        "1",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--topics",
        "2",
        "--threads",
        "2",
        "--keys",
        "100",
        "--key-distribution",
        "zipf",
        "--message-size",
        "uniform:64-256",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = succeeded(&output);
    assert!(table.contains("slipped behind schedule"), "{table}");
    let report = read_json(&json);
    assert_eq!(report["config"]["mode"], "open-loop");
    assert_eq!(report["config"]["target_rate_msgs_per_s"], 2000.0);
    let run = &report["runs"][0];
    assert_eq!(run["messages"], 4_000, "{run}");
    // The schedule's 4,000 records over the 2 s period, or over the longer time their
    // acknowledgements took: never more than the target.
    let rate = run["producer"]["msgs_per_s"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 2_000.0, "{rate}");
    let megabytes = run["producer"]["mb_per_s"].as_f64().unwrap();
    // Values of 64 to 256 bytes, 160 on average.
    let average = megabytes * 1e6 / rate;
    assert!((125.0..195.0).contains(&average), "{average}");
    assert_ordered(&run["publish_latency_us"]);
    assert_ordered(&run["end_to_end_latency_us"]);
    let slip = percentiles(&run["send_slip_us"]);
    assert!(slip.windows(2).all(|pair| pair[0] <= pair[1]), "{slip:?}");
    assert_eq!(run["unconsumed"], 0);
}

#[test]
fn the_backlog_drain_reads_back_everything_it_built() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = loadgen(&[
        "--embedded",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--scenario",
        "drain",
        "--broker-cpus",
        "0",
        "--cpus",
        "0",
        "--backlog",
        "16MB",
        "--acks",
        "1",
        "--consumers",
        "2",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = succeeded(&output);
    assert!(table.contains("drained at"), "{table}");
    let report = read_json(&json);
    let drain = &report["backlog_drain"];
    let bytes = drain["backlog_bytes"].as_u64().unwrap();
    assert!(
        (16_000_000..16_000_000 + 1024 * 64).contains(&bytes),
        "{drain}"
    );
    assert_eq!(drain["messages"].as_u64().unwrap(), bytes / 1024);
    assert!(drain["drain"]["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(drain["build"]["mb_per_s"].as_f64().unwrap() > 0.0);
    let run = &report["runs"][0];
    assert_eq!(run["unconsumed"], 0, "{run}");
    assert_eq!(run["messages"], drain["messages"]);
    assert_eq!(
        report["broker"]["cpus"],
        serde_json::json!([0]),
        "pinned shards"
    );
    assert_eq!(report["config"]["cpus"], "0");
    // The broker's data directory was made inside --data-dir, and removed at the end.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .filter(|name| name.to_string_lossy().starts_with("flumen-embedded-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(report["machine"]["disk"]["path"]
        .as_str()
        .unwrap()
        .starts_with(dir.path().canonicalize().unwrap().to_str().unwrap()));
}

#[test]
fn the_idle_scenario_measures_memory_per_partition_and_connection() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = loadgen(&[
        "--embedded",
        "--scenario",
        "idle",
        "--idle-partitions",
        "200",
        "--idle-connections",
        "50",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = succeeded(&output);
    assert!(
        table.contains("200 partitions") && table.contains("50 connections"),
        "{table}"
    );
    let report = read_json(&json);
    let idle = &report["idle"];
    assert_eq!(idle["partitions"], 200);
    assert_eq!(idle["connections"], 50);
    assert_eq!(idle["broker_pid"], report["idle"]["broker_pid"]);
    assert!(idle["rss_before_bytes"].as_u64().unwrap() > 0);
    assert!(idle["bytes_per_partition"].is_f64());
    assert!(report["runs"].as_array().unwrap().is_empty());
}

#[test]
fn bad_flags_get_one_clear_line() {
    for (args, expected) in [
        (
            &["--embedded", "--acks", "2"][..],
            "--acks takes 0, 1 and all",
        ),
        (&["--embedded", "--rate", "fast"][..], "--rate takes"),
        (
            &["--embedded", "--message-size", "4"][..],
            "--message-size must stay",
        ),
        (
            &["--scenario", "idle"][..],
            "needs --embedded or --broker-pid",
        ),
        (
            &["--embedded", "--broker-cpus", "x"][..],
            "is not a CPU list",
        ),
        (
            &["--embedded", "--topic-config", "retention"][..],
            "KEY=VALUE",
        ),
        (
            &["--embedded", "--max-in-flight", "0"][..],
            "--max-in-flight must be at least 1",
        ),
        (
            &["--embedded", "--topic-config", "retention.bytes=lots"][..],
            "cannot create topic",
        ),
    ] {
        let output = loadgen(args);
        assert!(!output.status.success(), "{args:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(expected), "{args:?}: {error}");
        assert_eq!(
            error
                .lines()
                .filter(|line| line.starts_with("error: "))
                .count(),
            1,
            "{error}"
        );
    }
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let output = loadgen(&["--bootstrap", "127.0.0.1:1", "--duration", "1", "--quiet"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("cannot reach the broker at 127.0.0.1:1"),
        "{error}"
    );
}
