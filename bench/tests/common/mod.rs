//! Checks shared by the baseline tests (`etcd_baseline.rs`,
//! `postgres_baseline.rs`): a result measured five running servers, and
//! they are gone afterwards.

use serde_json::Value;

/// `v` is a baseline's result for `count` operations: CPU for five
/// servers, over the run, per operation; memory and disk for each; and
/// none of their pids runs the program named `comm` any more.
pub fn five_measured_then_stopped(v: &Value, count: u64, comm: &str) {
    let cpu = &v["node_cpu"];
    assert_eq!(
        cpu["by_node_ms"].as_object().map(|m| m.len()),
        Some(5),
        "{v}"
    );
    assert!(cpu["total_ms"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_eq!(cpu["ops"].as_u64(), Some(count), "{v}");
    let nodes = v["usage"]["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 5, "{v}");
    for n in &nodes {
        assert!(n["rss_bytes"].as_u64().unwrap_or(0) > 0, "{n}");
        assert!(n["disk_bytes"].as_u64().unwrap_or(0) > 0, "{n}");
    }
    for n in &nodes {
        let pid = n["pid"].as_u64().unwrap_or(0);
        let running = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(running.trim(), comm, "server {pid} still runs");
    }
}
