//! The load generator as users run it: `--embedded` with the ack-mode matrix, checking
//! that the JSON report has every field with plausible values.

use std::process::Command;

#[test]
fn an_embedded_ack_mode_matrix_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args([
            "--embedded",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--acks",
            "0,1,all",
        ])
        .args(["--message-size", "512", "--partitions", "4", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        table.lines().count(),
        4,
        "a header and one row per ack mode:\n{table}"
    );

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["schema_version"], 1);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    assert_eq!(report["config"]["message_size"], 512);
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
        // Counts add up: the rate is the messages over the measured second, at 512 bytes.
        assert!((rate - messages as f64).abs() < 1.0, "{run}");
        assert!((megabytes - rate * 512.0 / 1e6).abs() < 1e-6, "{run}");
        let latency = &run["publish_latency_us"];
        let percentiles: Vec<u64> = ["p50", "p90", "p99", "p999", "p9999", "max"]
            .iter()
            .map(|key| latency[*key].as_u64().unwrap())
            .collect();
        assert!(percentiles[0] > 0);
        assert!(
            percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
            "{percentiles:?}"
        );
        assert_eq!(run["errors"], 0);
        assert!(run["consumer"].is_null() && run["end_to_end_latency_us"].is_null());
    }
}

#[test]
fn bad_flags_get_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_flumen-loadgen"))
        .args(["--embedded", "--acks", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("--acks takes 0, 1 and all"), "{error}");
}
