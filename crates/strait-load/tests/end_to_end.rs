//! The whole harness at tiny scale: the real `strait` binary, simulated proxies over SotW and
//! Delta, churn, and the JSON report.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The `strait` binary cargo built into the same target directory.
fn strait_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRAIT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("strait");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p strait` first (same target directory)",
        bin.display()
    );
    bin
}

fn run(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_strait-load"))
        .args([
            "--services",
            "5",
            "--proxies",
            "20",
            "--namespaces",
            "3",
            "--churn-rate",
            "4",
            "--duration",
            "3",
            "--idle-seconds",
            "1",
            "--change-timeout",
            "8",
            "--sync-timeout",
            "20",
        ])
        .args(extra)
        // The harness sets it for itself (and reports it) when it is not set.
        .env_remove("MIMALLOC_PURGE_DELAY")
        .arg("--strait-bin")
        .arg(strait_bin())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("strait-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "strait-load failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("convergence p50/p90/p99/max"), "{stdout}");
    let text = std::fs::read_to_string(&out).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

fn assert_healthy_run(r: &Value, delta: bool) {
    assert_eq!(r["delta"], Value::Bool(delta));
    assert_eq!(num(r, &["proxies"]), 20.0);
    assert_eq!(num(r, &["proxies_synced"]), 20.0, "every proxy configured");
    assert!(num(r, &["initial_sync_seconds"]) > 0.0);
    assert_eq!(num(r, &["initial_sync_per_proxy_ms", "count"]), 20.0);
    // 12 changes, of which endpoint changes and new services are measured.
    assert_eq!(num(r, &["changes", "written"]), 12.0);
    assert!(num(r, &["convergence_ms", "count"]) > 0.0, "{r:#}");
    assert_eq!(num(r, &["changes", "timed_out"]), 0.0, "{r:#}");
    assert!(num(r, &["convergence_ms", "p50"]) > 0.0);
    assert!(num(r, &["convergence_ms", "max"]) < 8000.0);
    // For each change the first ACK comes no later than half the proxies', and that no
    // later than the last; so do their medians.
    let first = num(r, &["endpoint_first_ack_ms", "p50"]);
    let half = num(r, &["endpoint_half_ack_ms", "p50"]);
    let last = num(r, &["endpoint_convergence_ms", "p50"]);
    assert!(0.0 < first && first <= half && half <= last, "{r:#}");
    // The harness keeps the memory it frees.
    assert_eq!(r["load_mimalloc_purge_delay"], "-1");
    assert_eq!(num(r, &["errors"]), 0.0, "{r:#}");
    assert_eq!(num(r, &["reconnects"]), 0.0);
    // strait measured from /proc.
    assert!(num(r, &["strait_peak_rss_mb"]) > 0.0);
    assert!(num(r, &["strait_rss_connected_mb"]) > 0.0);
    assert!(num(r, &["strait_cpu_seconds"]) > 0.0);
    assert!(r["strait_steady_cpu_seconds"].is_number());
    // Every type arrived; payload bytes are counted per type.
    for t in ["CDS", "EDS", "LDS", "RDS"] {
        assert!(num(r, &["responses", t]) >= 20.0, "{t}");
        assert!(num(r, &["bytes_sent", t]) > 0.0, "{t}");
    }
    assert!(num(r, &["responses_per_change", "EDS"]) > 0.0);
    // What the proxies counted matches what strait counted.
    assert!(num(r, &["strait_churn_metrics", "pushes"]) > 0.0);
    let strait_eds = num(r, &["strait_churn_metrics", "responses", "EDS"]);
    let ours = num(r, &["responses_per_change", "EDS"]) * 12.0;
    assert!(
        (strait_eds - ours).abs() < 1.0,
        "strait {strait_eds}, proxies {ours}"
    );
}

#[test]
fn state_of_the_world_end_to_end() {
    let r = run(&[]);
    assert_healthy_run(&r, false);
    assert_eq!(num(&r, &["nacks_sent"]), 0.0);
    assert_eq!(num(&r, &["strait_churn_metrics", "nacks"]), 0.0);
}

#[test]
fn delta_end_to_end() {
    let r = run(&["--delta"]);
    assert_healthy_run(&r, true);
    assert_eq!(num(&r, &["nacks_sent"]), 0.0);
    assert_eq!(num(&r, &["strait_churn_metrics", "nacks"]), 0.0);
}

#[test]
fn nacks_are_sent_and_counted_by_strait() {
    let r = run(&["--nack-fraction", "0.3", "--with-routing", "--seed", "5"]);
    let nacks = num(&r, &["nacks_sent"]);
    assert!(nacks > 0.0, "{r:#}");
    assert_eq!(num(&r, &["strait_churn_metrics", "nacks"]), nacks);
    assert_eq!(num(&r, &["proxies_synced"]), 20.0);
    assert!(num(&r, &["convergence_ms", "count"]) > 0.0);
}
